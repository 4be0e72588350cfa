//! Tenants' own download policies (`download_policies`): whether a private key download must be
//! encrypted with a passphrase, and its minimum length. A tenant without a row follows the
//! deployment's `[download]` settings.

use chrono::{DateTime, Utc};
use keyward_common::TenantId;
use sqlx::any::AnyRow;

use super::times::{text, time};
use super::{Store, StoreError, WriteTx, get, parse, query_error};

/// A tenant's own download policy, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPolicyRecord {
    pub tenant_id: TenantId,
    pub require_passphrase: bool,
    pub min_passphrase_length: i64,
    pub updated_at: DateTime<Utc>,
}

fn from_row(row: &AnyRow) -> Result<DownloadPolicyRecord, StoreError> {
    Ok(DownloadPolicyRecord {
        tenant_id: parse(row, "tenant_id")?,
        require_passphrase: get::<i64>(row, "require_passphrase")? != 0,
        min_passphrase_length: get(row, "min_passphrase_length")?,
        updated_at: time(row, "updated_at")?,
    })
}

impl Store {
    pub async fn download_policy(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<DownloadPolicyRecord>, StoreError> {
        sqlx::query(
            "SELECT tenant_id, require_passphrase, min_passphrase_length, updated_at \
             FROM download_policies WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a download policy"))?
        .map(|row| from_row(&row))
        .transpose()
    }
}

impl WriteTx {
    pub async fn put_download_policy(
        &mut self,
        p: &DownloadPolicyRecord,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM download_policies WHERE tenant_id = $1")
            .bind(p.tenant_id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("replacing a download policy"))?;
        sqlx::query(
            "INSERT INTO download_policies \
             (tenant_id, require_passphrase, min_passphrase_length, updated_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(p.tenant_id.as_str())
        .bind(i64::from(p.require_passphrase))
        .bind(p.min_passphrase_length)
        .bind(text(p.updated_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a download policy"))?;
        Ok(())
    }

    /// Removes a tenant's own policy (it follows the deployment's again).
    pub async fn delete_download_policy(&mut self, tenant: &TenantId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM download_policies WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("deleting a download policy"))?;
        Ok(())
    }
}
