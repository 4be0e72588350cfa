//! Tenant offboarding: one row per tenant being (or having been) offboarded, and each of its
//! hosts with the generation its agent must acknowledge. The rows are the offboarding's whole
//! state, so any replica's worker resumes it after a restart.

use chrono::{DateTime, Utc};
use keyward_common::{HostId, TenantId};
use sqlx::any::AnyRow;

use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, json_column, parse, query_error};

/// Where an offboarding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OffboardingStep {
    /// The tenant's agents are removing the managed keys and ending the sessions.
    RemovingKeys,
    /// Every host is revoked; the tenant's Vault secrets are being destroyed.
    DestroyingSecrets,
    Completed,
}

impl OffboardingStep {
    pub fn name(self) -> &'static str {
        match self {
            OffboardingStep::RemovingKeys => "removing_keys",
            OffboardingStep::DestroyingSecrets => "destroying_secrets",
            OffboardingStep::Completed => "completed",
        }
    }
}

impl std::str::FromStr for OffboardingStep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "removing_keys" => OffboardingStep::RemovingKeys,
            "destroying_secrets" => OffboardingStep::DestroyingSecrets,
            "completed" => OffboardingStep::Completed,
            other => return Err(format!("unknown offboarding status {other:?}")),
        })
    }
}

/// A tenant's offboarding as SQL holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffboardingRecord {
    pub tenant_id: TenantId,
    pub step: OffboardingStep,
    pub requested_at: DateTime<Utc>,
    pub requested_by: Option<String>,
    pub agent_wait_until: DateTime<Utc>,
    pub tokens_revoked: i64,
    pub vault_destroyed: Vec<String>,
    pub vault_destroyed_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// One host of an offboarded tenant, with its agent's progress (read with the host's row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffboardingHost {
    pub host_id: HostId,
    pub target_generation: i64,
    pub applied_generation: i64,
    pub enrolled: bool,
    /// Revoked by anyone (an admin may have revoked it first).
    pub host_revoked: bool,
    /// `None` while waiting: `acknowledged`, `timed_out`, `never_enrolled`, `already_revoked`.
    pub outcome: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Store {
    pub async fn offboarding(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<OffboardingRecord>, StoreError> {
        sqlx::query("SELECT * FROM tenant_offboardings WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading an offboarding"))?
            .map(|row| offboarding_from_row(&row))
            .transpose()
    }

    /// The tenant's hosts as its offboarding found them, by id.
    pub async fn offboarding_hosts(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<OffboardingHost>, StoreError> {
        sqlx::query(
            "SELECT o.host_id, o.target_generation, o.outcome, o.revoked_at, \
                    h.applied_generation, h.enrolled_at, h.revoked_at AS host_revoked_at \
             FROM tenant_offboarding_hosts o JOIN hosts h ON h.host_id = o.host_id \
             WHERE o.tenant_id = $1 ORDER BY o.host_id",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading an offboarding's hosts"))?
        .iter()
        .map(|row| {
            Ok(OffboardingHost {
                host_id: parse(row, "host_id")?,
                target_generation: get(row, "target_generation")?,
                applied_generation: get(row, "applied_generation")?,
                enrolled: get::<Option<String>>(row, "enrolled_at")?.is_some(),
                host_revoked: get::<Option<String>>(row, "host_revoked_at")?.is_some(),
                outcome: get(row, "outcome")?,
                revoked_at: optional_time(row, "revoked_at")?,
            })
        })
        .collect()
    }

    /// Tenants whose offboarding has not completed, oldest first.
    pub async fn open_offboardings(&self) -> Result<Vec<TenantId>, StoreError> {
        sqlx::query(
            "SELECT tenant_id FROM tenant_offboardings WHERE status <> 'completed' \
             ORDER BY requested_at, tenant_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing open offboardings"))?
        .iter()
        .map(|row| parse(row, "tenant_id"))
        .collect()
    }

    /// Records why the current step failed this time (no audit event: it is retried, and the
    /// status shows it).
    pub async fn record_offboarding_error(
        &self,
        tenant: &TenantId,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE tenant_offboardings SET last_error = $1 WHERE tenant_id = $2")
            .bind(error)
            .bind(tenant.as_str())
            .execute(&self.pool)
            .await
            .map_err(query_error("recording an offboarding's error"))?;
        Ok(())
    }
}

impl WriteTx {
    /// Whether the tenant is being or was offboarded: read in the transaction that would add
    /// a key, token or host, which the audit log's lock orders with the offboarding's own.
    pub async fn tenant_offboarded(&mut self, tenant: &TenantId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT tenant_id FROM tenant_offboardings WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query_error("reading an offboarding"))?;
        Ok(row.is_some())
    }

    /// Starts an offboarding; false when the tenant already has one.
    pub async fn insert_offboarding(&mut self, o: &OffboardingRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO tenant_offboardings \
             (tenant_id, status, requested_at, requested_by, agent_wait_until, tokens_revoked) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(o.tenant_id.as_str())
        .bind(o.step.name())
        .bind(text(o.requested_at))
        .bind(o.requested_by.clone())
        .bind(text(o.agent_wait_until))
        .bind(o.tokens_revoked)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("starting an offboarding"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Names every live host of the tenant in its offboarding, with the generation it has to
    /// acknowledge (its desired generation now: call after the change that raised it).
    pub async fn record_offboarding_hosts(&mut self, tenant: &TenantId) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "INSERT INTO tenant_offboarding_hosts (tenant_id, host_id, target_generation) \
             SELECT tenant_id, host_id, desired_generation FROM hosts \
             WHERE tenant_id = $1 AND revoked_at IS NULL",
        )
        .bind(tenant.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording an offboarding's hosts"))?;
        Ok(done.rows_affected())
    }

    /// Revokes every active API token of the tenant; their ids.
    pub async fn revoke_tenant_tokens(
        &mut self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let ids = sqlx::query(
            "SELECT token_id FROM api_tokens WHERE tenant_id = $1 AND revoked_at IS NULL \
             ORDER BY token_id",
        )
        .bind(tenant.as_str())
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query_error("listing a tenant's tokens"))?
        .iter()
        .map(|row| get::<String>(row, "token_id"))
        .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE tenant_id = $2 AND revoked_at IS NULL",
        )
        .bind(text(at))
        .bind(tenant.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("revoking a tenant's tokens"))?;
        Ok(ids)
    }

    /// Records how a host of the offboarding was let go; false when it already was.
    pub async fn release_offboarding_host(
        &mut self,
        tenant: &TenantId,
        host: &HostId,
        outcome: &'static str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tenant_offboarding_hosts SET outcome = $1, revoked_at = $2 \
             WHERE tenant_id = $3 AND host_id = $4 AND outcome IS NULL",
        )
        .bind(outcome)
        .bind(text(at))
        .bind(tenant.as_str())
        .bind(host.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("releasing an offboarding's host"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves the offboarding from `from` to `to`; false when it was not at `from` (another
    /// replica moved it first).
    pub async fn advance_offboarding(
        &mut self,
        tenant: &TenantId,
        from: OffboardingStep,
        to: OffboardingStep,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let completed_at = (to == OffboardingStep::Completed).then(|| text(at));
        let done = sqlx::query(
            "UPDATE tenant_offboardings SET status = $1, completed_at = $2, last_error = NULL \
             WHERE tenant_id = $3 AND status = $4",
        )
        .bind(to.name())
        .bind(completed_at)
        .bind(tenant.as_str())
        .bind(from.name())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("advancing an offboarding"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records what was destroyed in Vault, and when the last of it was (`None` while some
    /// may be left).
    pub async fn record_vault_destroyed(
        &mut self,
        tenant: &TenantId,
        names: &[String],
        at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let names = serde_json::to_string(names).map_err(|e| StoreError::Corrupt {
            what: "vault_destroyed",
            detail: e.to_string(),
        })?;
        sqlx::query(
            "UPDATE tenant_offboardings SET vault_destroyed = $1, vault_destroyed_at = $2 \
             WHERE tenant_id = $3",
        )
        .bind(names)
        .bind(at.map(text))
        .bind(tenant.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording an offboarding's Vault step"))?;
        Ok(())
    }
}

fn offboarding_from_row(row: &AnyRow) -> Result<OffboardingRecord, StoreError> {
    Ok(OffboardingRecord {
        tenant_id: parse(row, "tenant_id")?,
        step: parse(row, "status")?,
        requested_at: time(row, "requested_at")?,
        requested_by: get(row, "requested_by")?,
        agent_wait_until: time(row, "agent_wait_until")?,
        tokens_revoked: get(row, "tokens_revoked")?,
        vault_destroyed: json_column(row, "vault_destroyed")?,
        vault_destroyed_at: optional_time(row, "vault_destroyed_at")?,
        last_error: get(row, "last_error")?,
        completed_at: optional_time(row, "completed_at")?,
    })
}
