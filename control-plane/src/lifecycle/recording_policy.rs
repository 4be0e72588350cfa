//! A tenant's session recording policy: which of its VPS's managed users are recorded, and
//! whether keystrokes are. Set by admins (audited, `recording_policy.set`); every host of the
//! tenant gets a new state with the policy in its users' `recording`.

use keyward_common::TenantId;
use serde_json::json;

use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::changes::Change;
use crate::store::RecordingPolicy;

impl KeyLifecycle {
    /// Replaces a tenant's recording policy and sends its hosts the new state.
    pub async fn set_recording_policy(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        policy: RecordingPolicy,
    ) -> Result<RecordingPolicy, DomainError> {
        let action = "recording_policy.set";
        let result = async {
            let _guard = self.locks.lock(tenant).await;
            if self.store.tenant(tenant).await?.is_none() {
                return Err(DomainError::TenantNotFound(tenant.clone()));
            }
            let mut tx = self.store.begin().await?;
            tx.put_recording_policy(tenant, policy, self.clock.now())
                .await?;
            tx.bump_tenant_hosts(tenant).await?;
            let detail = json!({
                "recordAdmin": policy.record_admin,
                "recordTenant": policy.record_tenant,
                "recordInput": policy.record_input,
            });
            tx.append_audit(&self.event(caller, action, Some(tenant), "success", detail))
                .await?;
            tx.commit().await?;
            Ok(policy)
        }
        .await;
        if result.is_ok() {
            self.changes.changed(Change::Tenant(tenant.clone()));
        }
        self.failure_audited(caller, action, tenant, result).await
    }
}
