//! API tokens and hosts: who may call, and which VPSs may receive states. Each change is audited
//! in its own transaction and announced after its commit (a revoked token's live views end, a
//! revoked host's stream is cut, a registered host shows in the live view).

use keyward_common::{HostId, TenantId};
use serde_json::json;
use zeroize::Zeroizing;

use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::changes::Change;
use crate::clock::iso8601;
use crate::store::{HostRecord, HostRole, Role, StoreError, TokenRecord, WriteTx, hash_token};
use crate::tokens::new_token;

/// `tenant_offboarding` when an offboarding of `tenant` started before `tx`: read in the
/// transaction, which the audit log's lock orders with the offboarding's start.
async fn refuse_in(tx: &mut WriteTx, tenant: Option<&TenantId>) -> Result<(), DomainError> {
    match tenant {
        Some(t) if tx.tenant_offboarded(t).await? => Err(DomainError::TenantOffboarded(t.clone())),
        _ => Ok(()),
    }
}

/// A host registered and the one time its enrollment token is shown.
#[derive(Debug)]
pub struct Registered {
    pub host: HostId,
    pub enrollment_token: Zeroizing<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl KeyLifecycle {
    /// The tenant exists and is not being offboarded (`tenant_offboarding`).
    async fn tenant_exists(&self, tenant: &TenantId) -> Result<(), DomainError> {
        match self.store.tenant(tenant).await? {
            Some(_) => self.refuse_offboarded(tenant).await,
            None => Err(DomainError::TenantNotFound(tenant.clone())),
        }
    }

    /// Issues an API token for `role` (a tenant's must exist): its record, and the token, shown
    /// this once. Audited as `token.issue`.
    pub async fn issue_token(
        &self,
        caller: &Caller,
        role: Role,
        label: String,
    ) -> Result<(TokenRecord, Zeroizing<String>), DomainError> {
        if let Some(tenant) = role.tenant() {
            self.tenant_exists(tenant).await?;
        }
        let (token_id, token) = new_token();
        let record = TokenRecord {
            token_id,
            role,
            label,
            created_at: self.now(),
            revoked_at: None,
        };
        let hash = hash_token(&token);
        let tenant = record.role.tenant().cloned();
        let stored = record.clone();
        self.audited(caller, "token.issue", tenant.as_ref(), move |tx| {
            Box::pin(async move {
                refuse_in(tx, stored.role.tenant()).await?;
                tx.insert_token(&stored, &hash).await?;
                let detail = json!({ "tokenId": stored.token_id, "role": stored.role.name(), "label": stored.label });
                Ok(((), detail))
            })
        })
        .await?;
        Ok((record, token))
    }

    /// Revokes an API token at once: its open live views end. `token_not_found` for an unknown
    /// or already revoked token. Audited as `token.revoke`.
    pub async fn revoke_token(&self, caller: &Caller, token_id: &str) -> Result<(), DomainError> {
        let not_found = || DomainError::TokenNotFound(token_id.chars().take(40).collect());
        let valid = token_id.len() == 20
            && token_id.starts_with("tok_")
            && token_id[4..].chars().all(|c| c.is_ascii_hexdigit());
        if !valid {
            return Err(not_found());
        }
        let record = self.store.token(token_id).await?.ok_or_else(not_found)?;
        let at = self.now();
        let tenant = record.role.tenant().cloned();
        let id = token_id.to_owned();
        let revoked = self
            .audited(caller, "token.revoke", tenant.as_ref(), move |tx| {
                Box::pin(async move {
                    let revoked = tx.revoke_token(&id, at).await?;
                    Ok((revoked, json!({ "tokenId": id, "wasActive": revoked })))
                })
            })
            .await?;
        if !revoked {
            return Err(not_found());
        }
        // The token's open live streams end now, not at their next look at the token.
        self.changes.changed(Change::TokenRevoked(record.token_id));
        Ok(())
    }

    /// Registers `host` for `tenant`, as `role`, with a one-time enrollment token valid for
    /// `ttl`. Audited as `host.register`; `host_exists` when the id is taken (revoked hosts
    /// included). A tenant's first VPS gives it routes through the bastions: they are woken.
    pub async fn register_host(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        host: HostId,
        role: HostRole,
        ttl: std::time::Duration,
    ) -> Result<Registered, DomainError> {
        self.tenant_exists(tenant).await?;
        let (_, token) = new_token();
        let enrollment_token = Zeroizing::new(token.replacen("kw_", "kwe_", 1));
        let now = self.now();
        let ttl = chrono::Duration::from_std(ttl).map_err(|_| DomainError::Internal)?;
        let expires_at = now + ttl;
        let (h, t, hash) = (host.clone(), tenant.clone(), hash_token(&enrollment_token));
        self.audited(caller, "host.register", Some(tenant), move |tx| {
            Box::pin(async move {
                refuse_in(tx, Some(&t)).await?;
                tx.insert_host(&h, &t, role, now, &hash, expires_at)
                    .await
                    .map_err(|e| match e {
                        StoreError::Duplicate { .. } => DomainError::HostExists(h.clone()),
                        other => other.into(),
                    })?;
                Ok((
                    (),
                    json!({ "hostId": h, "role": role, "enrollmentExpiresAt": iso8601(expires_at) }),
                ))
            })
        })
        .await?;
        self.changes.changed(Change::Host(host.clone()));
        self.changes.changed(Change::Tenant(tenant.clone()));
        Ok(Registered {
            host,
            enrollment_token,
            expires_at,
        })
    }

    /// Revokes a host: its stream is cut at once and its certificate refused from then on.
    /// Audited as `host.revoke`; returns the host as it is now.
    pub async fn revoke_host(
        &self,
        caller: &Caller,
        host: &HostId,
    ) -> Result<HostRecord, DomainError> {
        let not_found = || DomainError::HostNotFound(host.clone());
        let record = self.store.host(host).await?.ok_or_else(not_found)?;
        let at = self.now();
        let h = host.clone();
        self.audited(caller, "host.revoke", Some(&record.tenant_id), move |tx| {
            Box::pin(async move {
                let revoked = tx.revoke_host(&h, at).await?;
                Ok(((), json!({ "hostId": h, "wasActive": revoked })))
            })
        })
        .await?;
        self.changes.changed(Change::HostRevoked(host.clone()));
        // The bastions drop the tenant's route when this was its last VPS.
        self.changes
            .changed(Change::Tenant(record.tenant_id.clone()));
        self.store.host(host).await?.ok_or_else(not_found)
    }
}
