//! The web UI's sign-in with OpenID Connect and its sessions (issue #17): what the provider's
//! verified claims mean for keyward (the admin role, a tenant, or nothing), the sessions that
//! sign-in opens, their idle and absolute timeouts, and sign-out. Sign-ins, refusals and
//! sign-outs are audited.
//!
//! Claims to role: the admin role when `admin_claim` (a string or an array of strings) holds one
//! of `admin_values`; else the tenant `tenant_claim` names, when it is a valid tenant id of an
//! existing tenant; else the sign-in is refused (`403 sign_in_no_role`, audited
//! `web.sign_in` refused). The provider's MFA counts for keyward's step-up when its `acr` is one
//! of `mfa_acr_values` or its `amr` holds one of `mfa_amr_values`, for `mfa_max_age` after its
//! `auth_time`.
//!
//! Nothing secret reaches SQL in clear: a sign-in's state and a session's id are stored as their
//! SHA-256; the session id is in the browser's cookie only.

use base64::Engine;
use chrono::{DateTime, Utc};
use keyward_common::TenantId;
use serde_json::json;
use zeroize::Zeroizing;

use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::config::OidcConfig;
use crate::oidc::{Authorization, OidcError, RelyingParty, VerifiedIdentity};
use crate::store::{PendingLoginRecord, Role, WebSessionRecord, hash_token};

/// How long a sign-in may take at the provider.
pub const SIGN_IN_TTL: chrono::Duration = chrono::Duration::minutes(10);

/// A signed-in session, as the transport sees it.
#[derive(Debug, Clone)]
pub struct WebSession {
    pub principal: String,
    pub display_name: String,
    pub role: Role,
    /// The provider's MFA stands for keyward's step-up now.
    pub idp_mfa: bool,
    pub created_at: DateTime<Utc>,
    /// When the session ends unless used before: last use + idle timeout (capped by
    /// `expires_at`).
    pub idle_expires_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl WebSession {
    /// The caller its requests act as.
    pub fn caller(&self, source_addr: Option<String>) -> Caller {
        Caller {
            token_id: Some(self.principal.clone()),
            role: Some(self.role.clone()),
            source_addr,
            idp_mfa: self.idp_mfa,
        }
    }
}

/// A new session: the id for the browser's cookie (shown once) and the session.
#[derive(Debug)]
pub struct SignedIn {
    pub session_id: Zeroizing<String>,
    pub session: WebSession,
}

fn duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The role the claims give, or why none.
pub fn role_of(config: &OidcConfig, identity: &VerifiedIdentity) -> Option<RoleClaim> {
    let admin = identity
        .other
        .get(&config.admin_claim)
        .is_some_and(|value| match value {
            serde_json::Value::String(s) => config.admin_values.contains(s),
            serde_json::Value::Array(values) => values.iter().any(|v| {
                v.as_str()
                    .is_some_and(|s| config.admin_values.iter().any(|a| a == s))
            }),
            _ => false,
        });
    if admin {
        return Some(RoleClaim::Admin);
    }
    match identity.other.get(&config.tenant_claim) {
        Some(serde_json::Value::String(raw)) => Some(
            raw.parse::<TenantId>()
                .map_or(RoleClaim::InvalidTenant, RoleClaim::Tenant),
        ),
        Some(_) => Some(RoleClaim::InvalidTenant),
        None => None,
    }
}

/// What the claims say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleClaim {
    Admin,
    Tenant(TenantId),
    /// The tenant claim is there but is no tenant id.
    InvalidTenant,
}

/// When the provider did MFA by the claims (its `auth_time`, or now without one), if it did.
pub fn idp_mfa_at(
    config: &OidcConfig,
    identity: &VerifiedIdentity,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let by_acr = identity
        .acr
        .as_ref()
        .is_some_and(|acr| config.mfa_acr_values.contains(acr));
    let by_amr = identity
        .amr
        .iter()
        .any(|m| config.mfa_amr_values.contains(m));
    (by_acr || by_amr).then(|| identity.auth_time.unwrap_or(now))
}

/// A subject keyward records: printable ASCII, at most 255 characters (OIDC Core's bound).
fn valid_subject(sub: &str) -> bool {
    !sub.is_empty() && sub.len() <= 255 && sub.bytes().all(|b| b.is_ascii_graphic())
}

impl KeyLifecycle {
    /// Starts a sign-in: the provider's authorization URL; the state (hashed), nonce and PKCE
    /// verifier are kept in SQL for [`SIGN_IN_TTL`], for whichever replica the callback reaches.
    pub async fn begin_sign_in(&self, rp: &RelyingParty) -> Result<Authorization, DomainError> {
        let authorization = rp.authorize().await.map_err(|e| {
            tracing::warn!(error = %e, "OIDC sign-in could not start");
            DomainError::IdentityProviderUnavailable
        })?;
        let now = self.clock.now();
        self.store
            .insert_pending_login(&PendingLoginRecord {
                state_hash: hash_token(&authorization.state),
                nonce: authorization.nonce.to_string(),
                pkce_verifier: authorization.pkce_verifier.to_string(),
                created_at: now,
                expires_at: now + SIGN_IN_TTL,
            })
            .await?;
        Ok(authorization)
    }

    /// Finishes a sign-in from the provider's callback: takes the sign-in of `state` (once),
    /// exchanges `code`, verifies the ID token, maps its claims to a role and opens a session.
    /// `bound`: the browser that brings the callback is the one that started the sign-in (its
    /// cookie holds `state`); otherwise the sign-in is taken and refused.
    pub async fn finish_sign_in(
        &self,
        rp: &RelyingParty,
        state: &str,
        code: &str,
        bound: bool,
        source_addr: Option<String>,
    ) -> Result<SignedIn, DomainError> {
        let config = rp.config();
        let anonymous = Caller {
            source_addr: source_addr.clone(),
            ..Caller::system()
        };
        let now = self.clock.now();
        let mut tx = self.store.begin_unaudited().await?;
        let pending = tx.take_pending_login(&hash_token(state), now).await?;
        tx.commit().await?;
        let Some(pending) = pending else {
            return Err(self
                .refuse_sign_in(&anonymous, "unknown, expired or used state")
                .await);
        };
        if !bound {
            return Err(self
                .refuse_sign_in(&anonymous, "started in another browser")
                .await);
        }
        let identity = match rp
            .finish(code, &pending.pkce_verifier, &pending.nonce)
            .await
        {
            Ok(identity) => identity,
            Err(OidcError::Discovery(e)) => {
                tracing::warn!(error = %e, "OIDC provider unavailable at sign-in");
                return Err(DomainError::IdentityProviderUnavailable);
            }
            Err(e) => {
                tracing::warn!(error = %e, "OIDC sign-in refused");
                let reason = match e {
                    OidcError::IdToken(_) | OidcError::NoIdToken => "ID token not valid",
                    _ => "code refused by the provider",
                };
                return Err(self.refuse_sign_in(&anonymous, reason).await);
            }
        };
        if !valid_subject(&identity.subject) {
            return Err(self.refuse_sign_in(&anonymous, "subject not usable").await);
        }
        let principal = identity.principal();
        let who = Caller {
            token_id: Some(principal.clone()),
            ..anonymous.clone()
        };
        let role = match role_of(config, &identity) {
            Some(RoleClaim::Admin) => Role::Admin,
            Some(RoleClaim::Tenant(tenant)) if self.store.tenant(&tenant).await?.is_some() => {
                Role::Tenant(tenant)
            }
            claim => {
                let detail = json!({
                    "reason": match claim {
                        Some(RoleClaim::Tenant(_)) => "no such tenant",
                        Some(RoleClaim::InvalidTenant) => "tenant claim is not a tenant id",
                        _ => "no admin or tenant claim",
                    },
                    "displayName": identity.display_name.chars().take(100).collect::<String>(),
                });
                self.audit_outside(self.event(&who, "web.sign_in", None, "refused", detail))
                    .await;
                metrics::counter!("keyward_web_sign_ins_total", "outcome" => "no_role")
                    .increment(1);
                return Err(DomainError::SignInNoRole);
            }
        };
        let idp_mfa_at = idp_mfa_at(config, &identity, now);
        let session_id = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
        );
        let record = WebSessionRecord {
            session_hash: hash_token(&session_id),
            principal: principal.clone(),
            display_name: identity.display_name.chars().take(200).collect(),
            role: role.clone(),
            idp_mfa_at,
            created_at: now,
            last_seen_at: now,
            expires_at: now + duration(config.absolute_timeout),
        };
        let caller = Caller {
            role: Some(role.clone()),
            ..who
        };
        let mut tx = self.store.begin().await?;
        tx.insert_web_session(&record).await?;
        let detail = json!({
            "displayName": record.display_name,
            "idpMfa": idp_mfa_at.is_some(),
            "expiresAt": crate::clock::iso8601(record.expires_at),
        });
        tx.append_audit(&self.event(&caller, "web.sign_in", role.tenant(), "success", detail))
            .await?;
        tx.commit().await?;
        metrics::counter!("keyward_web_sign_ins_total", "outcome" => "success").increment(1);
        tracing::info!(principal = %principal, role = role.name(), "signed in to the web UI");
        Ok(SignedIn {
            session: self.session_view(config, &record, now),
            session_id,
        })
    }

    async fn refuse_sign_in(&self, caller: &Caller, reason: &'static str) -> DomainError {
        self.audit_outside(self.event(
            caller,
            "web.sign_in",
            None,
            "refused",
            json!({ "reason": reason }),
        ))
        .await;
        metrics::counter!("keyward_web_sign_ins_total", "outcome" => "refused").increment(1);
        DomainError::SignInFailed(reason)
    }

    fn session_view(
        &self,
        config: &OidcConfig,
        record: &WebSessionRecord,
        now: DateTime<Utc>,
    ) -> WebSession {
        let idp_mfa = record
            .idp_mfa_at
            .is_some_and(|at| now - at <= duration(config.mfa_max_age));
        WebSession {
            principal: record.principal.clone(),
            display_name: record.display_name.clone(),
            role: record.role.clone(),
            idp_mfa,
            created_at: record.created_at,
            idle_expires_at: (record.last_seen_at + duration(config.idle_timeout))
                .min(record.expires_at),
            expires_at: record.expires_at,
        }
    }

    /// The live session of `session_id`, noting its use; `None` when there is none, it was
    /// ended, or it passed its idle or absolute timeout.
    pub async fn web_session(
        &self,
        config: &OidcConfig,
        session_id: &str,
    ) -> Result<Option<WebSession>, DomainError> {
        let hash = hash_token(session_id);
        let Some(mut record) = self.store.web_session(&hash).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let idle = duration(config.idle_timeout);
        if now >= record.expires_at || now >= record.last_seen_at + idle {
            return Ok(None);
        }
        // One write per tenth of the idle timeout at most: a busy page does not write per call.
        if now - record.last_seen_at >= idle / 10 {
            self.store.touch_web_session(&hash, now).await?;
            record.last_seen_at = now;
        }
        Ok(Some(self.session_view(config, &record, now)))
    }

    /// Ends the session of `session_id` server-side (its cookie stops working everywhere).
    pub async fn sign_out(&self, caller: &Caller, session_id: &str) -> Result<(), DomainError> {
        let mut tx = self.store.begin().await?;
        let ended = tx.delete_web_session(&hash_token(session_id)).await?;
        if ended {
            let tenant = caller.role.as_ref().and_then(Role::tenant);
            tx.append_audit(&self.event(caller, "web.sign_out", tenant, "success", json!({})))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(other: serde_json::Value, amr: &[&str]) -> VerifiedIdentity {
        VerifiedIdentity {
            issuer: "https://idp.example.com".into(),
            subject: "user-1".into(),
            display_name: "User One".into(),
            acr: None,
            amr: amr.iter().map(|s| (*s).to_owned()).collect(),
            auth_time: None,
            other: other.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn claims_map_to_admin_a_tenant_or_nothing() {
        let config = OidcConfig::default();
        let admin = identity(json!({"groups": ["staff", "keyward-admins"]}), &[]);
        assert_eq!(role_of(&config, &admin), Some(RoleClaim::Admin));
        let admin = identity(json!({"groups": "keyward-admins"}), &[]);
        assert_eq!(role_of(&config, &admin), Some(RoleClaim::Admin));
        let tenant = identity(json!({"groups": ["staff"], "keyward_tenant": "acme"}), &[]);
        assert_eq!(
            role_of(&config, &tenant),
            Some(RoleClaim::Tenant("acme".parse().unwrap()))
        );
        let bad = identity(json!({"keyward_tenant": "../etc"}), &[]);
        assert_eq!(role_of(&config, &bad), Some(RoleClaim::InvalidTenant));
        let bad = identity(json!({"keyward_tenant": 7}), &[]);
        assert_eq!(role_of(&config, &bad), Some(RoleClaim::InvalidTenant));
        assert_eq!(
            role_of(&config, &identity(json!({"groups": ["staff"]}), &[])),
            None
        );
    }

    #[test]
    fn the_providers_mfa_counts_only_when_its_claims_say_so() {
        let config = OidcConfig::default();
        let now = Utc::now();
        assert!(idp_mfa_at(&config, &identity(json!({}), &["pwd", "otp"]), now).is_some());
        assert!(idp_mfa_at(&config, &identity(json!({}), &["pwd"]), now).is_none());
        let mut by_acr = identity(json!({}), &[]);
        by_acr.acr = Some("urn:example:mfa".into());
        assert!(idp_mfa_at(&config, &by_acr, now).is_none());
        let config = OidcConfig {
            mfa_acr_values: vec!["urn:example:mfa".into()],
            ..OidcConfig::default()
        };
        assert!(idp_mfa_at(&config, &by_acr, now).is_some());
    }

    #[test]
    fn principals_name_the_issuer_and_subject() {
        let id = identity(json!({}), &[]);
        let principal = id.principal();
        assert!(principal.starts_with("oidc:") && principal.ends_with(":user-1"));
        assert_eq!(principal.len(), "oidc:".len() + 16 + 1 + "user-1".len());
        assert!(valid_subject("user-1") && !valid_subject("a b") && !valid_subject(""));
    }
}
