//! Which operations need a step-up: a tenant's own list (set by an admin,
//! `mfa_policies`) or the deployment's `[mfa] require_for`. A tenant's tokens follow the
//! tenant's; admins' requests follow the deployment's.

use chrono::{DateTime, Utc};
use keyward_common::TenantId;
use serde_json::json;

use super::super::{DomainError, KeyLifecycle, PolicySource};
use crate::caller::Caller;
use crate::config::SensitiveOperation;
use crate::store::MfaPolicyRecord;

/// The operations that need a fresh second factor, and where that list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaPolicy {
    pub require_for: Vec<SensitiveOperation>,
    pub source: PolicySource,
    pub updated_at: Option<DateTime<Utc>>,
}

impl MfaPolicy {
    fn default_of(config: &crate::config::MfaConfig) -> Self {
        Self {
            require_for: normal(config.require_for.clone()),
            source: PolicySource::Default,
            updated_at: None,
        }
    }
}

/// Sorted, without repeats.
fn normal(mut ops: Vec<SensitiveOperation>) -> Vec<SensitiveOperation> {
    ops.sort_unstable();
    ops.dedup();
    ops
}

impl KeyLifecycle {
    /// The step-up policy of `tenant`'s tokens (its own, or the deployment's).
    pub async fn mfa_policy(&self, tenant: &TenantId) -> Result<MfaPolicy, DomainError> {
        let Some(record) = self.store.mfa_policy(tenant).await? else {
            return Ok(MfaPolicy::default_of(&self.mfa));
        };
        let require_for = serde_json::from_value(record.require_for).map_err(|e| {
            tracing::error!(tenant = %tenant, error = %e, "a stored step-up policy names an unknown operation");
            DomainError::Internal
        })?;
        Ok(MfaPolicy {
            require_for: normal(require_for),
            source: PolicySource::Tenant,
            updated_at: Some(record.updated_at),
        })
    }

    /// The deployment's step-up policy (`[mfa]`), which admins' requests follow.
    pub fn deployment_mfa_policy(&self) -> MfaPolicy {
        MfaPolicy::default_of(&self.mfa)
    }

    /// Sets the tenant's own step-up policy (`Some`) or returns it to the deployment's
    /// (`None`). Audited as `mfa_policy.set` or `mfa_policy.reset`.
    pub async fn set_mfa_policy(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        require_for: Option<Vec<SensitiveOperation>>,
    ) -> Result<MfaPolicy, DomainError> {
        let action = if require_for.is_some() {
            "mfa_policy.set"
        } else {
            "mfa_policy.reset"
        };
        let result = self
            .set_mfa_policy_locked(caller, tenant, require_for, action)
            .await;
        self.failure_audited(caller, action, tenant, result).await
    }

    async fn set_mfa_policy_locked(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        require_for: Option<Vec<SensitiveOperation>>,
        action: &'static str,
    ) -> Result<MfaPolicy, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        if self.store.tenant(tenant).await?.is_none() {
            return Err(DomainError::TenantNotFound(tenant.clone()));
        }
        let mut tx = self.store.begin().await?;
        let applied = match require_for {
            Some(ops) => {
                let ops = normal(ops);
                let record = MfaPolicyRecord {
                    tenant_id: tenant.clone(),
                    require_for: json!(ops),
                    updated_at: self.clock.now(),
                };
                tx.put_mfa_policy(&record).await?;
                MfaPolicy {
                    require_for: ops,
                    source: PolicySource::Tenant,
                    updated_at: Some(record.updated_at),
                }
            }
            None => {
                tx.delete_mfa_policy(tenant).await?;
                MfaPolicy::default_of(&self.mfa)
            }
        };
        let detail = json!({ "requireFor": applied.require_for });
        tx.append_audit(&self.event(caller, action, Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant, require_for = ?applied.require_for, action, "step-up policy changed");
        Ok(applied)
    }
}
