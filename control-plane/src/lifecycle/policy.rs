//! Rotation policies: how often a tenant's key sets are replaced, how long a replaced key keeps
//! working, and which algorithm new keys use. A tenant without a policy of its own follows the
//! configured default (`[keys]`). Setting a policy reschedules the tenant's key sets at once
//! (`next_rotation = last_rotated + interval`) and wakes the scheduler, since they may now be due.
//!
//! Vault's `rotation_policy` field is written with each new key version, so it names the policy
//! under which that version was made; SQL's names the current one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyward_common::{KeyAlgorithm, TenantId};
use serde_json::json;

use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::config::{KeysConfig, rotation_policy_name};
use crate::store::RotationPolicyRecord;

/// Shortest interval a policy may have (as `keys.rotation_interval`).
pub const MIN_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest interval a policy may have: ten years.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3650 * 86_400);

/// Where a tenant's policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The configured default (`[keys]`).
    Default,
    /// Set for this tenant over the API.
    Tenant,
}

/// The policy that applies to a tenant's key sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPolicy {
    /// `"90_days"`: what Vault's `rotation_policy` field and the key sets' metadata say.
    pub name: String,
    pub interval: Duration,
    pub grace_period: Duration,
    pub algorithm: KeyAlgorithm,
    pub source: PolicySource,
    pub updated_at: Option<DateTime<Utc>>,
}

impl RotationPolicy {
    pub fn default_of(keys: &KeysConfig) -> Self {
        Self {
            name: keys.rotation_policy_name(),
            interval: keys.rotation_interval,
            grace_period: keys.grace_period,
            algorithm: keys.algorithm,
            source: PolicySource::Default,
            updated_at: None,
        }
    }

    fn from_record(record: &RotationPolicyRecord) -> Self {
        let interval = Duration::from_secs(record.interval_secs.unsigned_abs());
        Self {
            name: rotation_policy_name(interval),
            interval,
            grace_period: Duration::from_secs(record.grace_secs.unsigned_abs()),
            algorithm: record.algorithm,
            source: PolicySource::Tenant,
            updated_at: Some(record.updated_at),
        }
    }

    /// Checks a policy an admin asks for; the message is the 400 answer.
    pub fn validate(interval: Duration, grace_period: Duration) -> Result<(), String> {
        if interval < MIN_INTERVAL {
            return Err("interval must be at least 1h".into());
        }
        if interval > MAX_INTERVAL {
            return Err("interval must be at most 3650 days".into());
        }
        if interval.subsec_nanos() != 0 || grace_period.subsec_nanos() != 0 {
            return Err("interval and gracePeriod are whole seconds".into());
        }
        if grace_period >= interval {
            return Err("gracePeriod must be shorter than interval".into());
        }
        Ok(())
    }

    /// When a key made at `from` falls due.
    pub fn next_rotation(&self, from: DateTime<Utc>) -> DateTime<Utc> {
        from + chrono::Duration::from_std(self.interval).unwrap_or(chrono::Duration::days(90))
    }

    /// Until when the key replaced at `from` keeps working.
    pub fn grace_until(&self, from: DateTime<Utc>) -> DateTime<Utc> {
        from + chrono::Duration::from_std(self.grace_period).unwrap_or(chrono::Duration::hours(24))
    }
}

impl KeyLifecycle {
    /// The policy that applies to `tenant` (its own, or the default).
    pub async fn rotation_policy(&self, tenant: &TenantId) -> Result<RotationPolicy, DomainError> {
        Ok(match self.store.rotation_policy(tenant).await? {
            Some(record) => RotationPolicy::from_record(&record),
            None => RotationPolicy::default_of(&self.keys),
        })
    }

    /// Sets the tenant's own policy (`Some`) or returns it to the default (`None`), reschedules
    /// its key sets, and wakes the scheduler. Audited as `policy.set` or `policy.reset`.
    pub async fn set_rotation_policy(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        policy: Option<(Duration, Duration, KeyAlgorithm)>,
    ) -> Result<RotationPolicy, DomainError> {
        if let Some((interval, grace, _)) = policy {
            RotationPolicy::validate(interval, grace).map_err(DomainError::PolicyInvalid)?;
        }
        let action = if policy.is_some() {
            "policy.set"
        } else {
            "policy.reset"
        };
        let result = self
            .set_rotation_policy_locked(caller, tenant, policy, action)
            .await;
        if result.is_ok() {
            self.schedule_changed.notify_one();
        }
        self.failure_audited(caller, action, tenant, result).await
    }

    async fn set_rotation_policy_locked(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        policy: Option<(Duration, Duration, KeyAlgorithm)>,
        action: &'static str,
    ) -> Result<RotationPolicy, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        if self.store.tenant(tenant).await?.is_none() {
            return Err(DomainError::TenantNotFound(tenant.clone()));
        }
        let at = self.clock.now();
        let secs = |d: Duration| i64::try_from(d.as_secs()).map_err(|_| DomainError::Internal);
        let mut tx = self.store.begin().await?;
        let applied = match policy {
            Some((interval, grace_period, algorithm)) => {
                let record = RotationPolicyRecord {
                    tenant_id: tenant.clone(),
                    interval_secs: secs(interval)?,
                    grace_secs: secs(grace_period)?,
                    algorithm,
                    updated_at: at,
                };
                tx.put_rotation_policy(&record).await?;
                RotationPolicy::from_record(&record)
            }
            None => {
                tx.delete_rotation_policy(tenant).await?;
                RotationPolicy::default_of(&self.keys)
            }
        };
        let mut schedule = serde_json::Map::new();
        for (kind, last_rotated) in tx.key_set_rotations(tenant).await? {
            let next = applied.next_rotation(last_rotated);
            tx.reschedule_key_set(tenant, kind, next, &applied.name)
                .await?;
            schedule.insert(kind.as_str().to_owned(), iso8601(next).into());
        }
        let detail = json!({
            "rotationPolicy": applied.name,
            "intervalSeconds": applied.interval.as_secs(),
            "gracePeriodSeconds": applied.grace_period.as_secs(),
            "algorithm": applied.algorithm,
            "nextRotation": schedule,
        });
        tx.append_audit(&self.event(caller, action, Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant, policy = %applied.name, algorithm = %applied.algorithm, action, "rotation policy changed");
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_validated() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert!(RotationPolicy::validate(h(24 * 30), h(24)).is_ok());
        assert!(RotationPolicy::validate(h(1), Duration::ZERO).is_ok());
        assert!(RotationPolicy::validate(Duration::from_secs(3599), Duration::ZERO).is_err());
        assert!(
            RotationPolicy::validate(h(24), h(24)).is_err(),
            "grace = interval"
        );
        assert!(RotationPolicy::validate(h(24 * 3651), h(1)).is_err());
        assert!(RotationPolicy::validate(Duration::from_millis(7_200_500), h(1)).is_err());
    }

    #[test]
    fn the_default_policy_is_the_configured_one() {
        let policy = RotationPolicy::default_of(&KeysConfig::default());
        assert_eq!(policy.name, "90_days");
        assert_eq!(policy.source, PolicySource::Default);
        let from = crate::clock::parse_iso8601("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(iso8601(policy.next_rotation(from)), "2026-04-01T00:00:00Z");
        assert_eq!(iso8601(policy.grace_until(from)), "2026-01-02T00:00:00Z");
    }
}
