//! Just-in-time access: someone with a key of their own asks to enter a tenant's VPS as one of its
//! managed users, for a while, saying why; once the approvals the policy asks for are given,
//! keyward has the CA certify their key for exactly that window ([`super::certificates`]).
//!
//! Which approvals a request needs:
//! - a tenant's own request (its user): none, it is the tenant's VPS;
//! - a platform admin's: the tenant's, when the tenant's policy says `approval` (otherwise the
//!   tenant is only shown it: every grant on its VPSs is listed to it, with who, when and why);
//!   and another admin's (not the requester's token) for the admin user, when the deployment
//!   says so (`access.second_admin_for_admin_user`).
//!
//! A request not decided within `access.decide_within` lapses. A grant can be revoked early
//! (its certificate is revoked: refused at the next login, its sessions ended); when its window
//! closes, new logins fail (the certificate expired) and, with `access.end_sessions_at_expiry`,
//! the sweep ([`KeyLifecycle::close_grants`]) revokes the certificate so that the agents end the
//! sessions it opened.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyward_common::{KeyKind, TenantId};
use serde_json::json;

use super::certificates::CertificateAsk;
use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::changes::Change;
use crate::clock::iso8601;
use crate::store::{CertificateRecord, GrantRecord, GrantStatus, Role};
use crate::vault::MIN_VALIDITY;

/// Requests of one tenant's VPSs that may wait for a decision at once.
const MAX_PENDING: i64 = 100;

/// What a requester asks for.
#[derive(Debug, Clone)]
pub struct AccessAsk {
    pub tenant: TenantId,
    pub kind: KeyKind,
    /// The requester's own public key, OpenSSH form.
    pub public_key: String,
    pub duration: Duration,
    pub reason: String,
}

/// What a decision says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

/// A grant, and its certificate once it has one.
#[derive(Debug, Clone)]
pub struct Grant {
    pub record: GrantRecord,
    pub certificate: Option<CertificateRecord>,
}

fn not_found(grant_id: &str) -> DomainError {
    DomainError::GrantNotFound(grant_id.chars().take(40).collect())
}

impl KeyLifecycle {
    /// Records a request; one that needs no approval is granted at once.
    pub async fn request_access(
        &self,
        caller: &Caller,
        ask: AccessAsk,
    ) -> Result<Grant, DomainError> {
        let ca = self.ssh_ca()?;
        let fingerprint = self
            .certifiable(&ask.tenant, ask.kind, &ask.public_key)
            .await?;
        let max = ca.max_validity;
        if !(MIN_VALIDITY..=max).contains(&ask.duration) {
            return Err(DomainError::UserCertificateRefused(format!(
                "durationSeconds must be {} to {}",
                MIN_VALIDITY.as_secs(),
                max.as_secs()
            )));
        }
        let (role, needs_tenant, needs_admin) = match &caller.role {
            Some(Role::Tenant(own)) if *own == ask.tenant && ask.kind == KeyKind::Tenant => {
                ("tenant", false, false)
            }
            Some(Role::Admin) => (
                "admin",
                self.store
                    .platform_access_needs_approval(&ask.tenant)
                    .await?
                    .ok_or_else(|| DomainError::TenantNotFound(ask.tenant.clone()))?,
                ask.kind == KeyKind::Admin && ca.access.second_admin_for_admin_user,
            ),
            _ => return Err(DomainError::TenantNotFound(ask.tenant.clone())),
        };
        if self.store.pending_grants(&ask.tenant).await? >= MAX_PENDING {
            return Err(DomainError::Quota {
                what: "access requests waiting for a decision",
                max: MAX_PENDING as u32,
            });
        }
        let now = self.clock.now();
        let record = GrantRecord {
            grant_id: format!("ag-{:016x}", rand::random::<u64>()),
            tenant_id: ask.tenant.clone(),
            kind: ask.kind,
            requested_by: caller.token_id.clone().unwrap_or_default(),
            requester_role: role.to_owned(),
            public_key: ask.public_key.trim().to_owned(),
            key_fingerprint: fingerprint,
            duration_seconds: i64::try_from(ask.duration.as_secs())
                .map_err(|_| DomainError::Internal)?,
            reason: ask.reason,
            status: GrantStatus::Pending,
            needs_tenant,
            needs_admin,
            tenant_approved_by: None,
            admin_approved_by: None,
            decided_at: None,
            ended_by: None,
            requested_at: now,
            decide_by: now
                + chrono::TimeDelta::from_std(ca.access.decide_within)
                    .map_err(|_| DomainError::Internal)?,
            certificate_number: None,
            ends_at: None,
        };
        let mut tx = self.store.begin().await?;
        tx.insert_grant(&record).await?;
        let detail = json!({
            "grantId": record.grant_id,
            "kind": record.kind,
            "keyFingerprint": record.key_fingerprint,
            "durationSeconds": record.duration_seconds,
            "reason": record.reason,
            "needsTenant": needs_tenant,
            "needsAdmin": needs_admin,
        });
        tx.append_audit(&self.event(
            caller,
            "access.request",
            Some(&ask.tenant),
            "success",
            detail,
        ))
        .await?;
        tx.commit().await?;
        if record.approved() {
            // Granted at once: if the certificate cannot be had (Vault away), the request is
            // withdrawn rather than left pending with every approval it needs and no way on.
            return match self.activate(caller, record.clone()).await {
                Ok(grant) => Ok(grant),
                Err(e) => {
                    let id = record.grant_id.clone();
                    if let Err(closing) = self
                        .close_grant(&Caller::system(), record, GrantStatus::Revoked)
                        .await
                    {
                        tracing::warn!(grant = %id, error = %closing, "a failed grant stays pending");
                    }
                    Err(e)
                }
            };
        }
        Ok(Grant {
            record,
            certificate: None,
        })
    }

    /// Approves or denies a pending request as `caller` may: the tenant for its own VPS when
    /// its approval is needed, another admin when an admin's is. An approval that completes the
    /// request grants it; approving again a request whose granting failed tries again.
    pub async fn decide_access(
        &self,
        caller: &Caller,
        grant_id: &str,
        decision: Decision,
    ) -> Result<Grant, DomainError> {
        let old = self
            .store
            .grant(grant_id)
            .await?
            .ok_or_else(|| not_found(grant_id))?;
        let token = caller.token_id.clone().unwrap_or_default();
        let as_tenant = matches!(&caller.role, Some(Role::Tenant(t)) if *t == old.tenant_id);
        let as_admin = matches!(&caller.role, Some(Role::Admin));
        if !(as_tenant || as_admin) {
            return Err(not_found(grant_id));
        }
        if old.status != GrantStatus::Pending {
            return Err(DomainError::GrantClosed {
                status: old.status.as_str(),
            });
        }
        let now = self.clock.now();
        if old.decide_by <= now {
            self.close_grant(&Caller::system(), old, GrantStatus::Lapsed)
                .await?;
            return Err(DomainError::GrantClosed { status: "lapsed" });
        }
        let mut new = old.clone();
        let may = if as_tenant {
            old.needs_tenant
        } else {
            old.needs_admin && token != old.requested_by
        };
        if !may {
            return Err(DomainError::NotYourDecision(if as_tenant {
                "this request does not ask for the tenant's approval"
            } else if old.needs_admin {
                "another admin than the requester must approve it"
            } else {
                "this request does not ask for an admin's approval"
            }));
        }
        let action = match decision {
            Decision::Deny => {
                new.status = GrantStatus::Denied;
                new.ended_by = Some(token.clone());
                new.decided_at = Some(now);
                "access.deny"
            }
            Decision::Approve => {
                if as_tenant {
                    new.tenant_approved_by.get_or_insert(token.clone());
                } else {
                    new.admin_approved_by.get_or_insert(token.clone());
                }
                "access.approve"
            }
        };
        if new != old {
            let mut tx = self.store.begin().await?;
            if !tx.update_grant(&new, GrantStatus::Pending).await? {
                return Err(DomainError::ConcurrentModification);
            }
            let detail = json!({ "grantId": grant_id, "kind": old.kind, "as": if as_tenant { "tenant" } else { "admin" } });
            tx.append_audit(&self.event(caller, action, Some(&old.tenant_id), "success", detail))
                .await?;
            tx.commit().await?;
        }
        if decision == Decision::Approve && new.approved() {
            return self.activate(caller, new).await;
        }
        Ok(Grant {
            record: new,
            certificate: None,
        })
    }

    /// Has the CA certify the requester's key for the grant's window, and marks it active in the
    /// transaction that records the certificate: a grant is never active without its
    /// certificate recorded (so revocable), nor a certificate recorded for a grant that is not.
    async fn activate(&self, caller: &Caller, grant: GrantRecord) -> Result<Grant, DomainError> {
        let ask = CertificateAsk {
            tenant: grant.tenant_id.clone(),
            kind: grant.kind,
            public_key: grant.public_key.clone(),
            validity: Some(Duration::from_secs(
                u64::try_from(grant.duration_seconds).map_err(|_| DomainError::Internal)?,
            )),
            reason: format!("access grant {}: {}", grant.grant_id, grant.reason),
        };
        let decided_at = self.clock.now();
        let pending = grant.clone();
        let mut event = self.event(
            caller,
            "access.grant",
            Some(&grant.tenant_id),
            "success",
            serde_json::Value::Null,
        );
        let certificate = self
            .issue_recorded(caller, ask, move |tx, certificate| {
                Box::pin(async move {
                    let new = GrantRecord {
                        status: GrantStatus::Active,
                        decided_at: Some(decided_at),
                        certificate_number: Some(certificate.id.number),
                        ends_at: Some(certificate.valid_before),
                        ..pending
                    };
                    // Decided otherwise meanwhile (denied, revoked): nothing is recorded.
                    if !tx.update_grant(&new, GrantStatus::Pending).await? {
                        return Err(DomainError::ConcurrentModification);
                    }
                    event.detail = json!({
                        "grantId": new.grant_id,
                        "kind": new.kind,
                        "certificateId": certificate.id,
                        "endsAt": new.ends_at.map(iso8601),
                        "requestedBy": new.requested_by,
                    });
                    tx.append_audit(&event).await?;
                    Ok(())
                })
            })
            .await?;
        let new = GrantRecord {
            status: GrantStatus::Active,
            decided_at: Some(decided_at),
            certificate_number: Some(certificate.id.number),
            ends_at: Some(certificate.valid_before),
            ..grant
        };
        tracing::info!(grant = %new.grant_id, certificate = %certificate.id, "access granted");
        Ok(Grant {
            record: new,
            certificate: Some(certificate),
        })
    }

    /// Ends a grant early: a pending one is withdrawn, an active one's certificate is revoked
    /// (refused at the next login, its sessions ended). The requester, the tenant of the VPS and
    /// admins may.
    pub async fn revoke_access(
        &self,
        caller: &Caller,
        grant_id: &str,
    ) -> Result<Grant, DomainError> {
        let old = self
            .store
            .grant(grant_id)
            .await?
            .ok_or_else(|| not_found(grant_id))?;
        let allowed = match &caller.role {
            Some(Role::Admin) => true,
            Some(Role::Tenant(t)) => *t == old.tenant_id,
            None => false,
        };
        if !allowed {
            return Err(not_found(grant_id));
        }
        match old.status {
            GrantStatus::Pending | GrantStatus::Active => {}
            GrantStatus::Revoked => return self.with_certificate(old).await,
            other => {
                return Err(DomainError::GrantClosed {
                    status: other.as_str(),
                });
            }
        }
        let grant = self.close_grant(caller, old, GrantStatus::Revoked).await?;
        self.with_certificate(grant).await
    }

    /// Closes a grant (`Revoked`, `Expired`, `Lapsed`), revoking its certificate when it has one
    /// and the close calls for it.
    async fn close_grant(
        &self,
        caller: &Caller,
        old: GrantRecord,
        status: GrantStatus,
    ) -> Result<GrantRecord, DomainError> {
        let expected = old.status;
        let end_sessions = match status {
            GrantStatus::Revoked => true,
            GrantStatus::Expired => self.ssh_ca()?.access.end_sessions_at_expiry,
            _ => false,
        };
        let new = GrantRecord {
            status,
            ended_by: caller.token_id.clone().or(old.ended_by.clone()),
            decided_at: old.decided_at.or(Some(self.clock.now())),
            ..old
        };
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx.update_grant(&new, expected).await? {
            return Err(DomainError::ConcurrentModification);
        }
        // The certificate is revoked in the same transaction: a grant never ends while its
        // certificate stays valid.
        let certificate = new
            .certificate_number
            .filter(|_| end_sessions)
            .map(|number| keyward_common::CertificateId {
                tenant: new.tenant_id.clone(),
                kind: new.kind,
                number,
            });
        if let Some(id) = &certificate {
            let by = caller.token_id.clone().unwrap_or_default();
            if tx.revoke_certificate(id, now, &by).await? {
                tx.bump_tenant_hosts(&new.tenant_id).await?;
                tx.raise_session_epoch(&new.tenant_id, new.kind).await?;
                let detail = json!({ "certificateId": id, "grantId": new.grant_id });
                tx.append_audit(&self.event(
                    caller,
                    "certificate.revoke",
                    Some(&new.tenant_id),
                    "success",
                    detail,
                ))
                .await?;
            }
        }
        let action = match status {
            GrantStatus::Revoked => "access.revoke",
            GrantStatus::Expired => "access.expire",
            _ => "access.lapse",
        };
        let detail = json!({ "grantId": new.grant_id, "kind": new.kind, "was": expected.as_str() });
        tx.append_audit(&self.event(caller, action, Some(&new.tenant_id), "success", detail))
            .await?;
        tx.commit().await?;
        if certificate.is_some() {
            self.changes.changed(Change::Tenant(new.tenant_id.clone()));
        }
        Ok(new)
    }

    /// Lapses undecided requests and expires grants whose window closed (see the module docs).
    /// Returns how many it closed.
    pub async fn close_grants(&self, now: DateTime<Utc>) -> Result<usize, DomainError> {
        let due = self.store.grants_to_close(now).await?;
        let mut closed = 0;
        for grant in due {
            let status = if grant.status == GrantStatus::Pending {
                GrantStatus::Lapsed
            } else {
                GrantStatus::Expired
            };
            match self.close_grant(&Caller::system(), grant, status).await {
                Ok(_) => closed += 1,
                // Another replica closed it first.
                Err(DomainError::ConcurrentModification) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(closed)
    }

    /// A grant with its certificate record, when it has one.
    pub async fn with_certificate(&self, record: GrantRecord) -> Result<Grant, DomainError> {
        let certificate = match record.certificate_number {
            Some(number) => {
                self.store
                    .certificate(&keyward_common::CertificateId {
                        tenant: record.tenant_id.clone(),
                        kind: record.kind,
                        number,
                    })
                    .await?
            }
            None => None,
        };
        Ok(Grant {
            record,
            certificate,
        })
    }

    /// Sets whether the platform's admins need the tenant's approval to enter its VPSs.
    pub async fn set_platform_access(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        needs_approval: bool,
    ) -> Result<(), DomainError> {
        let mut tx = self.store.begin().await?;
        if !tx.set_platform_access(tenant, needs_approval).await? {
            return Err(DomainError::TenantNotFound(tenant.clone()));
        }
        let detail =
            json!({ "platformAccess": if needs_approval { "approval" } else { "notify" } });
        tx.append_audit(&self.event(caller, "access.policy", Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs [`KeyLifecycle::close_grants`] every `access.sweep_interval` (nothing without a CA).
    pub async fn sweep_grants(self: std::sync::Arc<Self>) {
        let Ok(ca) = self.ssh_ca() else { return };
        let mut every = tokio::time::interval(ca.access.sweep_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = self.close_grants(self.clock.now()).await {
                tracing::warn!(error = %e, "closing access grants failed; trying again");
            }
        }
    }
}
