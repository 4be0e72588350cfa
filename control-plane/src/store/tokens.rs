//! API tokens: who may call what. A token's secret is only ever held as its SHA-256 hash.

use chrono::{DateTime, Utc};
use keyward_common::TenantId;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, query_error};

/// Who may call what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    Tenant(TenantId),
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tenant(_) => "tenant",
        }
    }

    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Role::Admin => None,
            Role::Tenant(t) => Some(t),
        }
    }
}

/// An API token's metadata (its secret is only ever held as a SHA-256 hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    pub role: Role,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Store {
    /// The active token with this hash, if any.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("looking up a token"))?
            .map(|row| token_from_row(&row))
            .transpose()
    }

    pub async fn token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM api_tokens WHERE token_id = $1")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a token"))?
            .map(|row| token_from_row(&row))
            .transpose()
    }

    /// Tokens of one tenant, or the admin tokens when `tenant` is `None`.
    pub async fn tokens(&self, tenant: Option<&TenantId>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows =
            match tenant {
                Some(t) => sqlx::query(
                    "SELECT * FROM api_tokens WHERE tenant_id = $1 ORDER BY created_at, token_id",
                )
                .bind(t.as_str())
                .fetch_all(&self.pool)
                .await,
                None => sqlx::query(
                    "SELECT * FROM api_tokens WHERE role = 'admin' ORDER BY created_at, token_id",
                )
                .fetch_all(&self.pool)
                .await,
            }
            .map_err(query_error("listing tokens"))?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn has_active_admin_token(&self) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("counting admin tokens"))?;
        let n: i64 = row
            .try_get("n")
            .map_err(query_error("counting admin tokens"))?;
        Ok(n > 0)
    }
}

impl WriteTx {
    pub async fn insert_token(
        &mut self,
        token: &TokenRecord,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (token_id, token_hash, role, tenant_id, label, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&token.token_id)
        .bind(token_hash)
        .bind(token.role.name())
        .bind(token.role.tenant().map(|t| t.as_str().to_owned()))
        .bind(&token.label)
        .bind(text(token.created_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("token"))?;
        Ok(())
    }

    /// Revokes a token; returns false when it was unknown or already revoked.
    pub async fn revoke_token(
        &mut self,
        token_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL",
        )
        .bind(text(at))
        .bind(token_id)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("revoking a token"))?;
        Ok(done.rows_affected() == 1)
    }
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        token_id: get(row, "token_id")?,
        role: role_from_row(row, "role", "tenant_id")?,
        label: get(row, "label")?,
        created_at: time(row, "created_at")?,
        revoked_at: optional_time(row, "revoked_at")?,
    })
}

/// A token's role from its `role` and `tenant_id` columns (named `role` and `tenant` in `row`).
pub(super) fn role_from_row(
    row: &AnyRow,
    role: &'static str,
    tenant: &'static str,
) -> Result<Role, StoreError> {
    let role: String = get(row, role)?;
    let tenant: Option<String> = get(row, tenant)?;
    Ok(match (role.as_str(), tenant) {
        ("admin", None) => Role::Admin,
        ("tenant", Some(t)) => {
            Role::Tenant(
                t.parse()
                    .map_err(|e: keyward_common::IdError| StoreError::Corrupt {
                        what: "tenant_id",
                        detail: e.to_string(),
                    })?,
            )
        }
        (other, _) => {
            return Err(StoreError::Corrupt {
                what: "role",
                detail: other.to_owned(),
            });
        }
    })
}

/// SHA-256 of a token, hex: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
