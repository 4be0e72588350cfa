//! Changes other than key operations, each with its audit event in the same transaction:
//! host enrollment, audited reads, and any change a caller hands in ([`KeyLifecycle::audited`]).

use keyward_common::TenantId;
use serde_json::json;

use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::store::WriteTx;

/// What enrollment records of the certificate issued to a host: the agent CA's certificate
/// (`agents::ca::Issued`), named here by what the domain needs of it.
pub trait IssuedCertificate {
    /// Hex, lower case.
    fn serial(&self) -> &str;
    fn not_after(&self) -> chrono::DateTime<chrono::Utc>;
}

impl KeyLifecycle {
    /// Enrolls the host whose one-time token hashes to `token_hash`, with a certificate from
    /// `issue`. Refusals are audited with the caller's address.
    pub async fn enroll_host<I, F>(
        &self,
        caller: &Caller,
        token_hash: &str,
        now: chrono::DateTime<chrono::Utc>,
        issue: F,
    ) -> Result<(keyward_common::HostId, TenantId, I), DomainError>
    where
        I: IssuedCertificate,
        F: FnOnce(&keyward_common::HostId) -> Result<I, DomainError>,
    {
        // A refusal is not audited here: an anonymous caller could multiply the rows. The
        // handler counts refusals per source and audits them in aggregate
        // (`audit_enroll_refusals`).
        let Some(host) = self.store.pending_host_by_token(token_hash, now).await? else {
            return Err(DomainError::EnrollmentTokenInvalid);
        };
        let issued = issue(&host.host_id)?;
        let (serial, not_after) = (issued.serial().to_owned(), issued.not_after());
        let mut tx = self.store.begin().await?;
        if !tx
            .enroll_host(&host.host_id, token_hash, now, &serial, not_after)
            .await?
        {
            return Err(DomainError::EnrollmentTokenInvalid);
        }
        let detail =
            json!({ "hostId": host.host_id, "serial": serial, "notAfter": iso8601(not_after) });
        tx.append_audit(&self.event(
            caller,
            "host.enroll",
            Some(&host.tenant_id),
            "success",
            detail,
        ))
        .await?;
        tx.commit().await?;
        tracing::info!(host = %host.host_id, tenant = %host.tenant_id, "host enrolled");
        self.changes
            .changed(crate::changes::Change::Host(host.host_id.clone()));
        Ok((host.host_id, host.tenant_id, issued))
    }

    /// One audit event for `attempts` refused enrollments from the caller's address since
    /// `since` (at most one per source and minute, see `api::throttle`).
    pub async fn audit_enroll_refusals(&self, caller: &Caller, attempts: u64, since: &str) {
        self.audit_outside(self.event(
            caller,
            "host.enroll",
            None,
            "refused",
            json!({ "code": "enrollment_token_invalid", "attempts": attempts, "since": since }),
        ))
        .await;
    }

    /// Records an audited read (an admin looking at a tenant's secrets' metadata).
    pub async fn audit_read(
        &self,
        caller: &Caller,
        action: &'static str,
        tenant: &TenantId,
    ) -> Result<(), DomainError> {
        let mut tx = self.store.begin().await?;
        tx.append_audit(&self.event(caller, action, Some(tenant), "success", json!({})))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs `change` and its audit event in one transaction.
    pub async fn audited<T, F>(
        &self,
        caller: &Caller,
        action: &'static str,
        tenant: Option<&TenantId>,
        change: F,
    ) -> Result<T, DomainError>
    where
        F: for<'t> FnOnce(
            &'t mut WriteTx,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = Result<(T, serde_json::Value), DomainError>> + Send + 't>,
        >,
    {
        let mut tx = self.store.begin().await?;
        let (value, detail) = change(&mut tx).await?;
        tx.append_audit(&self.event(caller, action, tenant, "success", detail))
            .await?;
        tx.commit().await?;
        Ok(value)
    }
}
