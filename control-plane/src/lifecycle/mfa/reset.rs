//! An admin's reset of a tenant's second factors (the "lost phone" case): every TOTP factor and
//! security key of the tenant, their recovery codes, its pending WebAuthn ceremonies and its
//! count of failed step-ups go in one audited transaction; the tenant then enrols again as if it
//! never had a factor. The admin's own step-up (`reset_mfa` in the deployment's `[mfa]
//! require_for`) is the API's to check before this runs, as for every sensitive operation.

use keyward_common::TenantId;
use serde_json::json;

use super::super::{DomainError, KeyLifecycle};
use super::MfaOwner;
use crate::caller::Caller;

/// The audit action of a reset.
const ACTION: &str = "mfa.reset";

impl KeyLifecycle {
    /// Removes every second factor of `tenant` (and its recovery codes, ceremonies and lockout
    /// state); how many factors there were. Audited (`mfa.reset`, on the tenant's chain, with
    /// the count: never a secret), refusals too.
    pub async fn reset_tenant_mfa(
        &self,
        caller: &Caller,
        tenant: &TenantId,
    ) -> Result<u64, DomainError> {
        let result = self.reset_tenant_mfa_locked(caller, tenant).await;
        self.failure_audited(caller, ACTION, tenant, result).await
    }

    async fn reset_tenant_mfa_locked(
        &self,
        caller: &Caller,
        tenant: &TenantId,
    ) -> Result<u64, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        if self.store.tenant(tenant).await?.is_none() {
            return Err(DomainError::TenantNotFound(tenant.clone()));
        }
        let owner = MfaOwner::Tenant(tenant.clone()).key();
        let mut tx = self.store.begin().await?;
        let removed = tx.delete_owner_mfa(&owner).await?;
        let detail = json!({ "removed": removed });
        tx.append_audit(&self.event(caller, ACTION, Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant, removed, "second factors reset by an admin");
        Ok(removed)
    }
}
