//! The web UI's OpenID Connect sign-ins in progress (`oidc_logins`) and its signed-in sessions
//! (`web_sessions`), shared by every replica.
//!
//! Neither the state of a sign-in nor the id of a session is stored: rows are keyed by their
//! SHA-256. A sign-in is taken once: the `DELETE` whose row count is 1 is the request that
//! finishes it, on whichever replica.

use chrono::{DateTime, Utc};
use keyward_common::TenantId;
use sqlx::any::AnyRow;

use super::times::{optional_text, optional_time, text, time};
use super::{Role, Store, StoreError, WriteTx, get, query_error};

/// A sign-in waiting for the provider's callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLoginRecord {
    pub state_hash: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A signed-in browser session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSessionRecord {
    pub session_hash: String,
    /// `oidc:{issuer hash}:{sub}`.
    pub principal: String,
    pub display_name: String,
    pub role: Role,
    /// When the provider authenticated the user with MFA (its `auth_time`), if it did.
    pub idp_mfa_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

fn session_from_row(row: &AnyRow) -> Result<WebSessionRecord, StoreError> {
    let role: String = get(row, "role")?;
    let tenant: Option<String> = get(row, "tenant_id")?;
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "web_sessions.role",
        detail,
    };
    let role = match (role.as_str(), tenant) {
        ("admin", None) => Role::Admin,
        ("tenant", Some(t)) => Role::Tenant(
            t.parse::<TenantId>()
                .map_err(|e| corrupt(format!("tenant id: {e}")))?,
        ),
        (other, _) => return Err(corrupt(other.chars().take(20).collect())),
    };
    Ok(WebSessionRecord {
        session_hash: get(row, "session_hash")?,
        principal: get(row, "principal")?,
        display_name: get(row, "display_name")?,
        role,
        idp_mfa_at: optional_time(row, "idp_mfa_at")?,
        created_at: time(row, "created_at")?,
        last_seen_at: time(row, "last_seen_at")?,
        expires_at: time(row, "expires_at")?,
    })
}

impl Store {
    pub async fn insert_pending_login(&self, login: &PendingLoginRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oidc_logins (state_hash, nonce, pkce_verifier, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&login.state_hash)
        .bind(&login.nonce)
        .bind(&login.pkce_verifier)
        .bind(text(login.created_at))
        .bind(text(login.expires_at))
        .execute(&self.pool)
        .await
        .map_err(query_error("recording a sign-in"))?;
        // Sign-ins never finished are dropped as new ones begin.
        sqlx::query("DELETE FROM oidc_logins WHERE expires_at < $1")
            .bind(text(login.created_at))
            .execute(&self.pool)
            .await
            .map_err(query_error("dropping expired sign-ins"))?;
        Ok(())
    }

    /// The web session whose id hashes to `session_hash`, whether expired or not.
    pub async fn web_session(
        &self,
        session_hash: &str,
    ) -> Result<Option<WebSessionRecord>, StoreError> {
        sqlx::query(
            "SELECT session_hash, principal, display_name, role, tenant_id, idp_mfa_at, \
             created_at, last_seen_at, expires_at FROM web_sessions WHERE session_hash = $1",
        )
        .bind(session_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a web session"))?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    /// Notes that the session was used at `at`.
    pub async fn touch_web_session(
        &self,
        session_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE web_sessions SET last_seen_at = $1 WHERE session_hash = $2")
            .bind(text(at))
            .bind(session_hash)
            .execute(&self.pool)
            .await
            .map_err(query_error("noting a web session's use"))?;
        Ok(())
    }
}

impl WriteTx {
    /// Takes the sign-in of `state_hash` if it is there and not expired at `at`: the one request
    /// that gets `Some` finishes it.
    pub async fn take_pending_login(
        &mut self,
        state_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<PendingLoginRecord>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT state_hash, nonce, pkce_verifier, created_at, expires_at \
             FROM oidc_logins WHERE state_hash = $1",
        )
        .bind(state_hash)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query_error("reading a sign-in"))?
        else {
            return Ok(None);
        };
        let login = PendingLoginRecord {
            state_hash: get(&row, "state_hash")?,
            nonce: get(&row, "nonce")?,
            pkce_verifier: get(&row, "pkce_verifier")?,
            created_at: time(&row, "created_at")?,
            expires_at: time(&row, "expires_at")?,
        };
        let taken = sqlx::query("DELETE FROM oidc_logins WHERE state_hash = $1")
            .bind(state_hash)
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("taking a sign-in"))?
            .rows_affected()
            == 1;
        Ok((taken && login.expires_at > at).then_some(login))
    }

    pub async fn insert_web_session(&mut self, s: &WebSessionRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO web_sessions (session_hash, principal, display_name, role, tenant_id, \
             idp_mfa_at, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&s.session_hash)
        .bind(&s.principal)
        .bind(&s.display_name)
        .bind(s.role.name())
        .bind(s.role.tenant().map(|t| t.as_str().to_owned()))
        .bind(optional_text(s.idp_mfa_at))
        .bind(text(s.created_at))
        .bind(text(s.last_seen_at))
        .bind(text(s.expires_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a web session"))?;
        sqlx::query("DELETE FROM web_sessions WHERE expires_at < $1")
            .bind(text(s.created_at))
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("dropping expired web sessions"))?;
        Ok(())
    }

    /// Ends a session; false when there was none (already signed out, or expired and dropped).
    pub async fn delete_web_session(&mut self, session_hash: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("DELETE FROM web_sessions WHERE session_hash = $1")
                .bind(session_hash)
                .execute(&mut *self.tx)
                .await
                .map_err(query_error("ending a web session"))?
                .rows_affected()
                == 1,
        )
    }
}
