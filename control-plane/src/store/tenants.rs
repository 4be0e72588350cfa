//! Tenants: the VPSs the platform registered, one row each.

use chrono::{DateTime, Utc};
use keyward_common::{TenantId, UnixUser};
use sqlx::any::AnyRow;

use super::times::{text, time};
use super::{Store, StoreError, WriteTx, get, parse, query_error};

/// A tenant's VPS as the platform registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub tenant_id: TenantId,
    pub vps_ip: String,
    pub ssh_port: u16,
    pub tenant_user: UnixUser,
    pub admin_user: UnixUser,
    pub created_at: DateTime<Utc>,
}

impl Store {
    pub async fn tenant(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        sqlx::query("SELECT * FROM tenants WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a tenant"))?
            .map(|row| tenant_from_row(&row))
            .transpose()
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        sqlx::query("SELECT * FROM tenants ORDER BY tenant_id")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("listing tenants"))?
            .iter()
            .map(tenant_from_row)
            .collect()
    }
}

impl WriteTx {
    pub async fn insert_tenant(&mut self, t: &TenantRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenants (tenant_id, vps_ip, ssh_port, tenant_user, admin_user, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(t.tenant_id.as_str())
        .bind(&t.vps_ip)
        .bind(i64::from(t.ssh_port))
        .bind(t.tenant_user.as_str())
        .bind(t.admin_user.as_str())
        .bind(text(t.created_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("tenant"))?;
        Ok(())
    }
}

pub(super) fn tenant_from_row(row: &AnyRow) -> Result<TenantRecord, StoreError> {
    tenant_from_columns(
        row,
        [
            "tenant_id",
            "vps_ip",
            "ssh_port",
            "tenant_user",
            "admin_user",
            "created_at",
        ],
    )
}

/// A tenant from a row that names its columns otherwise (a join): `tenant_id`, `vps_ip`,
/// `ssh_port`, `tenant_user`, `admin_user` and `created_at`, in that order.
pub(super) fn tenant_from_columns(
    row: &AnyRow,
    [
        tenant_id,
        vps_ip,
        ssh_port,
        tenant_user,
        admin_user,
        created_at,
    ]: [&'static str; 6],
) -> Result<TenantRecord, StoreError> {
    let port: i64 = get(row, ssh_port)?;
    Ok(TenantRecord {
        tenant_id: parse(row, tenant_id)?,
        vps_ip: get(row, vps_ip)?,
        ssh_port: u16::try_from(port).map_err(|e| StoreError::Corrupt {
            what: "ssh_port",
            detail: e.to_string(),
        })?,
        tenant_user: parse(row, tenant_user)?,
        admin_user: parse(row, admin_user)?,
        created_at: time(row, created_at)?,
    })
}
