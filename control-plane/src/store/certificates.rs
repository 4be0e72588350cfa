//! SSH user certificates keyward had signed: their numbers, their records, their revocation.
//! The certificate itself is public (what the holder presents); the private key was never
//! keyward's.

use chrono::{DateTime, Utc};
use keyward_common::{CertificateId, Fingerprint, KeyKind, TenantId};
use sqlx::any::AnyRow;

use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, json_column, parse, query_error};

/// One signed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub id: CertificateId,
    /// The CA's serial.
    pub serial: u64,
    pub issuer_id: String,
    /// The CA key that signed it, OpenSSH form.
    pub ca_public_key: String,
    /// The certified key's.
    pub key_fingerprint: Fingerprint,
    /// OpenSSH form (`ssh-ed25519-cert-v01@openssh.com AAAA...`).
    pub certificate: String,
    pub principals: Vec<String>,
    pub valid_after: DateTime<Utc>,
    pub valid_before: DateTime<Utc>,
    pub issued_at: DateTime<Utc>,
    /// The API token that asked for it.
    pub issued_by: String,
    pub reason: String,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The API token that revoked it.
    pub revoked_by: Option<String>,
}

/// What a host's state needs of a revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    pub id: CertificateId,
    pub serial: u64,
    pub ca_public_key: String,
    pub valid_before: DateTime<Utc>,
}

impl Store {
    pub async fn certificate(
        &self,
        id: &CertificateId,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM ssh_certificates WHERE tenant_id = $1 AND kind = $2 AND number = $3",
        )
        .bind(id.tenant.as_str())
        .bind(id.kind.as_str())
        .bind(number(id)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a certificate"))?
        .map(|row| certificate_from_row(&row))
        .transpose()
    }

    /// The tenant's certificates (of one kind, or both), newest first, at most `limit`.
    pub async fn certificates(
        &self,
        tenant: &TenantId,
        kind: Option<KeyKind>,
        limit: i64,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM ssh_certificates WHERE tenant_id = $1 AND ($2 = '' OR kind = $2) \
             ORDER BY issued_at DESC, number DESC LIMIT $3",
        )
        .bind(tenant.as_str())
        .bind(kind.map_or("", KeyKind::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing certificates"))?;
        rows.iter().map(certificate_from_row).collect()
    }

    /// How many of the tenant's certificates are within their validity at `at`, revoked ones
    /// included (each stays in its hosts' revocation list until then).
    pub async fn valid_certificates(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM ssh_certificates \
             WHERE tenant_id = $1 AND valid_before > $2",
        )
        .bind(tenant.as_str())
        .bind(text(at))
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("counting certificates"))?;
        get(&row, "n")
    }

    /// The tenant's revoked certificates (every tenant's: `None`, for a bastion) that are still
    /// valid at `valid_at` or were revoked after `revoked_after`, oldest first: what its hosts'
    /// states name (the revocation list while they could log in, the agents' revoked ids while
    /// sessions they opened may live).
    pub async fn revoked_certificates(
        &self,
        tenant: Option<&TenantId>,
        valid_at: DateTime<Utc>,
        revoked_after: DateTime<Utc>,
    ) -> Result<Vec<RevokedCertificate>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, kind, number, serial, ca_public_key, valid_before \
             FROM ssh_certificates WHERE (CAST($1 AS TEXT) IS NULL OR tenant_id = $1) AND revoked_at IS NOT NULL \
             AND (valid_before > $2 OR revoked_at > $3) ORDER BY tenant_id, kind, number",
        )
        .bind(tenant.map(TenantId::as_str))
        .bind(text(valid_at))
        .bind(text(revoked_after))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing revoked certificates"))?;
        rows.iter()
            .map(|row| {
                Ok(RevokedCertificate {
                    id: id_from_row(row)?,
                    serial: parse(row, "serial")?,
                    ca_public_key: get(row, "ca_public_key")?,
                    valid_before: time(row, "valid_before")?,
                })
            })
            .collect()
    }
}

impl WriteTx {
    /// The tenant's next certificate number (from 1), never given before; `None` for an unknown
    /// tenant.
    pub async fn next_certificate_number(
        &mut self,
        tenant: &TenantId,
    ) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(
            "UPDATE tenants SET certificates_numbered = certificates_numbered + 1 \
             WHERE tenant_id = $1 RETURNING certificates_numbered",
        )
        .bind(tenant.as_str())
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query_error("numbering a certificate"))?;
        row.map(|row| {
            let n: i64 = get(&row, "certificates_numbered")?;
            u64::try_from(n).map_err(|_| StoreError::Corrupt {
                what: "certificates_numbered",
                detail: n.to_string(),
            })
        })
        .transpose()
    }

    pub async fn insert_certificate(&mut self, c: &CertificateRecord) -> Result<(), StoreError> {
        let principals = serde_json::to_string(&c.principals).map_err(|e| StoreError::Corrupt {
            what: "principals",
            detail: e.to_string(),
        })?;
        sqlx::query(
            "INSERT INTO ssh_certificates (tenant_id, kind, number, serial, issuer_id, \
             ca_public_key, key_fingerprint, certificate, principals, valid_after, valid_before, \
             issued_at, issued_by, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(c.id.tenant.as_str())
        .bind(c.id.kind.as_str())
        .bind(number(&c.id)?)
        .bind(c.serial.to_string())
        .bind(&c.issuer_id)
        .bind(&c.ca_public_key)
        .bind(c.key_fingerprint.as_str())
        .bind(&c.certificate)
        .bind(principals)
        .bind(text(c.valid_after))
        .bind(text(c.valid_before))
        .bind(text(c.issued_at))
        .bind(&c.issued_by)
        .bind(&c.reason)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a certificate"))?;
        Ok(())
    }

    /// Marks every certificate of (tenant, kind) still within its validity revoked (the user's
    /// key set was revoked); returns how many.
    pub async fn revoke_certificates_of(
        &mut self,
        tenant: &TenantId,
        kind: KeyKind,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE ssh_certificates SET revoked_at = $1, revoked_by = $2 \
             WHERE tenant_id = $3 AND kind = $4 AND revoked_at IS NULL AND valid_before > $1",
        )
        .bind(text(at))
        .bind(by)
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("revoking certificates"))?;
        Ok(done.rows_affected())
    }

    /// Marks a certificate revoked; false when it was unknown or already revoked.
    pub async fn revoke_certificate(
        &mut self,
        id: &CertificateId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE ssh_certificates SET revoked_at = $1, revoked_by = $2 \
             WHERE tenant_id = $3 AND kind = $4 AND number = $5 AND revoked_at IS NULL",
        )
        .bind(text(at))
        .bind(by)
        .bind(id.tenant.as_str())
        .bind(id.kind.as_str())
        .bind(number(id)?)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("revoking a certificate"))?;
        Ok(done.rows_affected() == 1)
    }
}

/// The number as the column holds it (a signed 64-bit integer).
fn number(id: &CertificateId) -> Result<i64, StoreError> {
    i64::try_from(id.number).map_err(|_| StoreError::Corrupt {
        what: "number",
        detail: id.number.to_string(),
    })
}

fn id_from_row(row: &AnyRow) -> Result<CertificateId, StoreError> {
    let n: i64 = get(row, "number")?;
    Ok(CertificateId {
        tenant: parse(row, "tenant_id")?,
        kind: parse(row, "kind")?,
        number: u64::try_from(n).map_err(|_| StoreError::Corrupt {
            what: "number",
            detail: n.to_string(),
        })?,
    })
}

fn certificate_from_row(row: &AnyRow) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        id: id_from_row(row)?,
        serial: parse(row, "serial")?,
        issuer_id: get(row, "issuer_id")?,
        ca_public_key: get(row, "ca_public_key")?,
        key_fingerprint: parse(row, "key_fingerprint")?,
        certificate: get(row, "certificate")?,
        principals: json_column(row, "principals")?,
        valid_after: time(row, "valid_after")?,
        valid_before: time(row, "valid_before")?,
        issued_at: time(row, "issued_at")?,
        issued_by: get(row, "issued_by")?,
        reason: get(row, "reason")?,
        revoked_at: optional_time(row, "revoked_at")?,
        revoked_by: get(row, "revoked_by")?,
    })
}
