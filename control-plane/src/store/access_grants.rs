//! Just-in-time access grants: who asked to enter which tenant's VPS as which user, for how long
//! and why; who approved; which certificate it got.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use keyward_common::{Fingerprint, KeyKind, TenantId};
use sqlx::any::AnyRow;

use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, parse, query_error};

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantStatus {
    /// Waiting for the approvals it needs.
    Pending,
    /// Approved: its certificate is valid until `ends_at`.
    Active,
    Denied,
    /// Not decided before `decide_by`.
    Lapsed,
    /// Ended early.
    Revoked,
    /// Its window closed.
    Expired,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Denied => "denied",
            Self::Lapsed => "lapsed",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GrantStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "denied" => Self::Denied,
            "lapsed" => Self::Lapsed,
            "revoked" => Self::Revoked,
            "expired" => Self::Expired,
            other => return Err(format!("unknown grant status {other:?}")),
        })
    }
}

/// One access grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub grant_id: String,
    pub tenant_id: TenantId,
    pub kind: KeyKind,
    pub requested_by: String,
    /// `admin` or `tenant`.
    pub requester_role: String,
    pub public_key: String,
    pub key_fingerprint: Fingerprint,
    pub duration_seconds: i64,
    pub reason: String,
    pub status: GrantStatus,
    /// The tenant must approve (its policy says so for the platform's admins).
    pub needs_tenant: bool,
    /// Another admin must approve (the admin user, when the deployment says so).
    pub needs_admin: bool,
    pub tenant_approved_by: Option<String>,
    pub admin_approved_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub ended_by: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub decide_by: DateTime<Utc>,
    pub certificate_number: Option<u64>,
    pub ends_at: Option<DateTime<Utc>>,
}

impl GrantRecord {
    /// Every approval it needs is there.
    pub fn approved(&self) -> bool {
        (!self.needs_tenant || self.tenant_approved_by.is_some())
            && (!self.needs_admin || self.admin_approved_by.is_some())
    }
}

/// Most grants one listing answers.
pub const GRANTS_LISTED: i64 = 500;

impl Store {
    pub async fn grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StoreError> {
        sqlx::query("SELECT * FROM access_grants WHERE grant_id = $1")
            .bind(grant_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading an access grant"))?
            .map(|row| grant_from_row(&row))
            .transpose()
    }

    /// Grants of one tenant (or all), of one status (or any), newest first.
    pub async fn grants(
        &self,
        tenant: Option<&TenantId>,
        status: Option<GrantStatus>,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM access_grants WHERE ($1 = '' OR tenant_id = $1) \
             AND ($2 = '' OR status = $2) ORDER BY requested_at DESC, grant_id LIMIT $3",
        )
        .bind(tenant.map_or("", TenantId::as_str))
        .bind(status.map_or("", GrantStatus::as_str))
        .bind(GRANTS_LISTED)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing access grants"))?;
        rows.iter().map(grant_from_row).collect()
    }

    /// How many of the tenant's requests wait for a decision.
    pub async fn pending_grants(&self, tenant: &TenantId) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM access_grants WHERE tenant_id = $1 AND status = 'pending'",
        )
        .bind(tenant.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("counting access requests"))?;
        get(&row, "n")
    }

    /// Grants due to close at `now`: pending ones past `decide_by`, active ones past `ends_at`.
    pub async fn grants_to_close(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM access_grants WHERE (status = 'pending' AND decide_by <= $1) \
             OR (status = 'active' AND ends_at <= $1) ORDER BY requested_at LIMIT 1000",
        )
        .bind(text(now))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("finding grants to close"))?;
        rows.iter().map(grant_from_row).collect()
    }
}

impl WriteTx {
    pub async fn insert_grant(&mut self, g: &GrantRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_grants (grant_id, tenant_id, kind, requested_by, requester_role, \
             public_key, key_fingerprint, duration_seconds, reason, status, needs_tenant, \
             needs_admin, requested_at, decide_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&g.grant_id)
        .bind(g.tenant_id.as_str())
        .bind(g.kind.as_str())
        .bind(&g.requested_by)
        .bind(&g.requester_role)
        .bind(&g.public_key)
        .bind(g.key_fingerprint.as_str())
        .bind(g.duration_seconds)
        .bind(&g.reason)
        .bind(g.status.as_str())
        .bind(i64::from(g.needs_tenant))
        .bind(i64::from(g.needs_admin))
        .bind(text(g.requested_at))
        .bind(text(g.decide_by))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording an access request"))?;
        Ok(())
    }

    /// Writes a grant's decision fields if it is still `expected`; false when another writer
    /// moved it first. An approval already recorded is kept (two approvers at once both count).
    pub async fn update_grant(
        &mut self,
        g: &GrantRecord,
        expected: GrantStatus,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE access_grants SET status = $1, \
             tenant_approved_by = COALESCE(tenant_approved_by, $2), \
             admin_approved_by = COALESCE(admin_approved_by, $3), decided_at = $4, ended_by = $5, \
             certificate_number = $6, ends_at = $7 WHERE grant_id = $8 AND status = $9",
        )
        .bind(g.status.as_str())
        .bind(g.tenant_approved_by.clone())
        .bind(g.admin_approved_by.clone())
        .bind(g.decided_at.map(text))
        .bind(g.ended_by.clone())
        .bind(
            g.certificate_number
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        )
        .bind(g.ends_at.map(text))
        .bind(&g.grant_id)
        .bind(expected.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("deciding an access request"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends every pending or active grant of (tenant, kind) as revoked (the user's key set was
    /// revoked; their certificates are revoked with it); returns how many.
    pub async fn revoke_grants_of(
        &mut self,
        tenant: &TenantId,
        kind: KeyKind,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE access_grants SET status = 'revoked', ended_by = $1, \
             decided_at = COALESCE(decided_at, $2) \
             WHERE tenant_id = $3 AND kind = $4 AND status IN ('pending', 'active')",
        )
        .bind(by)
        .bind(text(at))
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("revoking access grants"))?;
        Ok(done.rows_affected())
    }

    /// Sets the tenant's policy for the platform's admins: `approval` or `notify`.
    pub async fn set_platform_access(
        &mut self,
        tenant: &TenantId,
        needs_approval: bool,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE tenants SET platform_access = $1 WHERE tenant_id = $2")
            .bind(if needs_approval { "approval" } else { "notify" })
            .bind(tenant.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("setting a tenant's access policy"))?;
        Ok(done.rows_affected() == 1)
    }
}

impl Store {
    /// Whether the platform's admins need the tenant's approval to enter its VPSs; `None` for an
    /// unknown tenant.
    pub async fn platform_access_needs_approval(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query("SELECT platform_access FROM tenants WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a tenant's access policy"))?;
        row.map(|row| Ok(get::<String>(&row, "platform_access")? == "approval"))
            .transpose()
    }
}

fn grant_from_row(row: &AnyRow) -> Result<GrantRecord, StoreError> {
    let number: Option<i64> = get(row, "certificate_number")?;
    Ok(GrantRecord {
        grant_id: get(row, "grant_id")?,
        tenant_id: parse(row, "tenant_id")?,
        kind: parse(row, "kind")?,
        requested_by: get(row, "requested_by")?,
        requester_role: get(row, "requester_role")?,
        public_key: get(row, "public_key")?,
        key_fingerprint: parse(row, "key_fingerprint")?,
        duration_seconds: get(row, "duration_seconds")?,
        reason: get(row, "reason")?,
        status: parse(row, "status")?,
        needs_tenant: get::<i64>(row, "needs_tenant")? != 0,
        needs_admin: get::<i64>(row, "needs_admin")? != 0,
        tenant_approved_by: get(row, "tenant_approved_by")?,
        admin_approved_by: get(row, "admin_approved_by")?,
        decided_at: optional_time(row, "decided_at")?,
        ended_by: get(row, "ended_by")?,
        requested_at: time(row, "requested_at")?,
        decide_by: time(row, "decide_by")?,
        certificate_number: number.and_then(|n| u64::try_from(n).ok()),
        ends_at: optional_time(row, "ends_at")?,
    })
}
