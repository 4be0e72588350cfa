//! Tenants' own policies for registered keys (`key_registration_policies`): whether a registered
//! key must be a FIDO2 security key, and whether its line carries `verify-required`. A tenant
//! without a row takes any accepted key type without `verify-required`. Also what follows from a
//! policy change on the key sets already registered (their `verify_required`), and which
//! registered key sets are overdue.

use chrono::{DateTime, Utc};
use keyward_common::{KeyKind, TenantId};
use sqlx::any::AnyRow;

use super::times::{text, time};
use super::{Store, StoreError, WriteTx, get, parse, query_error};

/// A tenant's own key registration policy, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRegistrationPolicyRecord {
    pub tenant_id: TenantId,
    pub require_fido2: bool,
    pub verify_required: bool,
    pub updated_at: DateTime<Utc>,
}

fn from_row(row: &AnyRow) -> Result<KeyRegistrationPolicyRecord, StoreError> {
    Ok(KeyRegistrationPolicyRecord {
        tenant_id: parse(row, "tenant_id")?,
        require_fido2: get::<i64>(row, "require_fido2")? != 0,
        verify_required: get::<i64>(row, "verify_required")? != 0,
        updated_at: time(row, "updated_at")?,
    })
}

impl Store {
    pub async fn key_registration_policy(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<KeyRegistrationPolicyRecord>, StoreError> {
        sqlx::query(
            "SELECT tenant_id, require_fido2, verify_required, updated_at \
             FROM key_registration_policies WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a key registration policy"))?
        .map(|row| from_row(&row))
        .transpose()
    }

    /// Active registered key sets whose rotation time has passed and whose generation was not
    /// reminded yet, oldest due first, at most `limit`.
    pub async fn unreminded_overdue_key_sets(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(TenantId, KeyKind)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, kind FROM key_sets WHERE origin = 'registered' \
             AND state = 'active' AND next_rotation <= $1 AND reminded_generation < generation \
             ORDER BY next_rotation, tenant_id, kind LIMIT $2",
        )
        .bind(text(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing overdue registered keys"))?;
        rows.iter()
            .map(|row| Ok((parse(row, "tenant_id")?, parse(row, "kind")?)))
            .collect()
    }
}

impl WriteTx {
    /// Sets (`Some`) or removes (`None`) a tenant's own policy.
    pub async fn put_key_registration_policy(
        &mut self,
        tenant: &TenantId,
        policy: Option<&KeyRegistrationPolicyRecord>,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM key_registration_policies WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("replacing a key registration policy"))?;
        let Some(p) = policy else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO key_registration_policies \
             (tenant_id, require_fido2, verify_required, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(p.tenant_id.as_str())
        .bind(i64::from(p.require_fido2))
        .bind(i64::from(p.verify_required))
        .bind(text(p.updated_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a key registration policy"))?;
        Ok(())
    }

    /// Sets `verify_required` on the tenant's registered key sets; how many changed.
    pub async fn set_registered_verify_required(
        &mut self,
        tenant: &TenantId,
        verify_required: bool,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE key_sets SET verify_required = $1 WHERE tenant_id = $2 \
             AND origin = 'registered' AND verify_required <> $1",
        )
        .bind(i64::from(verify_required))
        .bind(tenant.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("updating registered keys' verify-required"))?;
        Ok(done.rows_affected())
    }

    /// Records that the overdue rotation of `generation` was reminded. False when the key set
    /// moved on (or was reminded) meanwhile.
    pub async fn mark_reminded(
        &mut self,
        tenant: &TenantId,
        kind: KeyKind,
        generation: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE key_sets SET reminded_generation = generation WHERE tenant_id = $1 \
             AND kind = $2 AND generation = $3 AND reminded_generation < generation",
        )
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .bind(generation)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a rotation reminder"))?;
        Ok(done.rows_affected() == 1)
    }
}
