//! SSH user certificates: issued to a public key the caller brings (keyward never makes a private
//! key for them), signed by the Vault SSH CA, revoked live.
//!
//! Issuing numbers the certificate first (its key id `keyward:{tenant}:{kind}:{n}`, in a
//! transaction of its own), has Vault sign it, then records it with its audit event. A signing
//! that fails leaves a gap in the numbers and an audited failure, no record: what Vault may have
//! signed reached nobody. The certificate carries one principal, `keyward:{tenant}:{kind}`, which
//! the tenant's hosts map to the kind's managed user (`agents::sshd_files`): it logs in as that
//! user on that tenant's VPSs and nowhere else.
//!
//! Revoking marks the record, raises the tenant's hosts' generation and the kind's session epoch
//! in one transaction with its audit event, and announces the tenant: each host's next state
//! carries the certificate's key id and serial in its revocation list (sshd refuses the next
//! login) and in the user's revoked certificate ids (the agent ends the sessions it opened).

use std::sync::Arc;
use std::time::Duration;

use keyward_common::{CertificateId, Fingerprint, KeyKind, Principal, TenantId};
use serde_json::json;
use ssh_key::{Algorithm, PublicKey};

use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::changes::Change;
use crate::clock::iso8601;
use crate::store::{CertificateRecord, KeyState, WriteTx};
use crate::vault::{CertificateAuthority, Extension, UserCertificateRequest, VaultError};

/// The CA and the deployment's policy for what it signs.
#[derive(Debug, Clone)]
pub struct SshCertificates {
    pub authority: Arc<dyn CertificateAuthority>,
    /// The engine role keyward signs with (`vault.ssh_user_role`).
    pub role: String,
    pub default_validity: Duration,
    pub max_validity: Duration,
    /// Certificates one tenant may hold valid at once.
    pub max_valid_per_tenant: u32,
    /// Just-in-time access ([`super::grants`]).
    pub access: crate::config::AccessConfig,
}

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct CertificateAsk {
    pub tenant: TenantId,
    pub kind: KeyKind,
    /// OpenSSH form, as the caller gave it.
    pub public_key: String,
    /// `None`: the deployment's default.
    pub validity: Option<Duration>,
    /// Why, in the caller's words (bounded by the transport).
    pub reason: String,
}

/// The smallest RSA modulus certified, in bits (what NIST and OpenSSH's own defaults point at).
const MIN_RSA_BITS: usize = 3072;
/// What runs in the transaction that records a certificate ([`KeyLifecycle::issue_recorded`]).
pub(super) type AlsoFuture<'t> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DomainError>> + Send + 't>>;

/// The largest: OpenSSH's own limit (`SSH_RSA_MAXIMUM_MODULUS_SIZE`); sshd refuses larger keys.
const MAX_RSA_BITS: usize = 16_384;

/// Why a public key is not certified; the text is the caller's.
fn check_key(text: &str) -> Result<PublicKey, DomainError> {
    let refuse = |why: String| DomainError::UserCertificateRefused(why);
    let key = PublicKey::from_openssh(text.trim())
        .map_err(|e| refuse(format!("publicKey is not an OpenSSH public key: {e}")))?;
    match key.algorithm() {
        Algorithm::Dsa => Err(refuse("DSA keys are not certified".into())),
        Algorithm::Rsa { .. } => {
            let bits = key
                .key_data()
                .rsa()
                .and_then(|rsa| rsa.n.as_positive_bytes())
                .map_or(0, |n| {
                    n.len() * 8 - n.first().map_or(0, |b| b.leading_zeros() as usize)
                });
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                Err(refuse(format!(
                    "RSA keys need {MIN_RSA_BITS} to {MAX_RSA_BITS} bits; this one has {bits}"
                )))
            } else {
                Ok(key)
            }
        }
        Algorithm::Other(name) => Err(refuse(format!("{} keys are not certified", name.as_str()))),
        _ => Ok(key),
    }
}

impl KeyLifecycle {
    /// Has Vault sign a user certificate for `ask`, and records it: a tenant for its own user, a
    /// platform admin where no approval is asked for (the tenant's policy is `notify`, and the
    /// admin user needs no second admin); otherwise an access request is the way
    /// ([`super::grants`]).
    pub async fn issue_certificate(
        &self,
        caller: &Caller,
        ask: CertificateAsk,
    ) -> Result<CertificateRecord, DomainError> {
        if matches!(caller.role, Some(crate::store::Role::Admin)) {
            let ca = self.ssh_ca()?;
            let tenant_approval = self
                .store
                .platform_access_needs_approval(&ask.tenant)
                .await?
                .ok_or_else(|| DomainError::TenantNotFound(ask.tenant.clone()))?;
            if tenant_approval
                || (ask.kind == KeyKind::Admin && ca.access.second_admin_for_admin_user)
            {
                return Err(DomainError::ApprovalRequired);
            }
        }
        self.issue_recorded(caller, ask, |_, _| Box::pin(async { Ok(()) }))
            .await
    }

    /// [`KeyLifecycle::issue_certificate`] without the approval check: what a granted access
    /// request gets. `also` runs in the transaction that records the certificate (a grant's
    /// activation): if it fails, nothing is recorded and the certificate, signed but never
    /// handed out, is lost with its number.
    pub(super) async fn issue_recorded<F>(
        &self,
        caller: &Caller,
        ask: CertificateAsk,
        also: F,
    ) -> Result<CertificateRecord, DomainError>
    where
        F: for<'t> FnOnce(&'t mut WriteTx, &'t CertificateRecord) -> AlsoFuture<'t>,
    {
        let result = self.sign_and_record(caller, &ask, also).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        metrics::counter!("keyward_certificate_operations_total", "operation" => "certificate.issue", "outcome" => outcome).increment(1);
        if let Err(e) = &result
            && !matches!(e, DomainError::TenantNotFound(_))
        {
            self.audit_failure(caller, "certificate.issue", &ask.tenant, e)
                .await;
        }
        result
    }

    /// The CA, when this deployment has one.
    pub(super) fn ssh_ca(&self) -> Result<&SshCertificates, DomainError> {
        self.ssh_certificates
            .as_ref()
            .ok_or(DomainError::CertificatesNotConfigured)
    }

    /// Whether `public_key` may be certified for `kind`'s user of `tenant`: a sound key, not one
    /// keyward denied, for a user whose key set is not revoked. Its fingerprint.
    pub(super) async fn certifiable(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        public_key: &str,
    ) -> Result<Fingerprint, DomainError> {
        let key = check_key(public_key)?;
        let key_set = self.key_set_or_404(tenant, kind).await?;
        if key_set.state == KeyState::Revoked {
            return Err(DomainError::KeyRevoked);
        }
        let fingerprint: Fingerprint = key
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string()
            .parse()
            .map_err(|_| DomainError::Internal)?;
        // A key keyward denied stays denied: sshd refuses it, certified or not (the hosts' KRL).
        for kind in KeyKind::ALL {
            if let Some(ks) = self.store.key_set(tenant, kind).await?
                && (ks.denied_fingerprints.contains(&fingerprint)
                    || ks.previous_fingerprint.as_ref() == Some(&fingerprint))
            {
                return Err(DomainError::KeyDenied);
            }
        }
        Ok(fingerprint)
    }

    async fn sign_and_record<F>(
        &self,
        caller: &Caller,
        ask: &CertificateAsk,
        also: F,
    ) -> Result<CertificateRecord, DomainError>
    where
        F: for<'t> FnOnce(&'t mut WriteTx, &'t CertificateRecord) -> AlsoFuture<'t>,
    {
        let ca = self.ssh_ca()?;
        let fingerprint = self
            .certifiable(&ask.tenant, ask.kind, &ask.public_key)
            .await?;
        let validity = ask.validity.unwrap_or(ca.default_validity);
        let principal = Principal::of_key_set(&ask.tenant, ask.kind);
        let request = |key_id: &str| {
            UserCertificateRequest::new(
                &ca.role,
                &ask.public_key,
                key_id,
                [principal.as_str()],
                validity,
            )
            // A shell (pty) and forwarding: what a jump through a bastion needs (its principals
            // file confines the forwarding to the tenant's VPS).
            .map(|r| r.with_extension(Extension::PermitPortForwarding))
            .and_then(|r| r.within(ca.max_validity))
            .map_err(|e| DomainError::UserCertificateRefused(e.to_string()))
        };
        // Checked in full before a number is spent on it.
        request("keyward")?;
        let valid = self
            .store
            .valid_certificates(&ask.tenant, self.clock.now())
            .await?;
        if valid >= i64::from(ca.max_valid_per_tenant) {
            return Err(DomainError::Quota {
                what: "valid SSH certificates",
                max: ca.max_valid_per_tenant,
            });
        }
        let number = {
            let mut tx = self.store.begin_unaudited().await?;
            let n = tx
                .next_certificate_number(&ask.tenant)
                .await?
                .ok_or_else(|| DomainError::TenantNotFound(ask.tenant.clone()))?;
            tx.commit().await?;
            n
        };
        let id = CertificateId {
            tenant: ask.tenant.clone(),
            kind: ask.kind,
            number,
        };
        let request = request(&id.to_string())?;
        let signed = match ca.authority.sign_user_certificate(&request).await {
            Ok(signed) => signed,
            // No such engine mount or role: the operator has not set the CA up.
            Err(VaultError::Failed { status: 404, .. }) => {
                tracing::warn!(role = %ca.role, "the Vault SSH CA's mount or role is missing (packaging/vault/README.md)");
                return Err(DomainError::CertificatesNotConfigured);
            }
            Err(e) => return Err(e.into()),
        };
        let at = |unix: u64| {
            i64::try_from(unix)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .ok_or(DomainError::Internal)
        };
        let record = CertificateRecord {
            id,
            serial: signed.serial,
            issuer_id: signed.issuer_id,
            ca_public_key: signed.ca_public_key,
            key_fingerprint: fingerprint,
            certificate: signed.certificate,
            principals: signed.principals,
            valid_after: at(signed.valid_after)?,
            valid_before: at(signed.valid_before)?,
            issued_at: self.clock.now(),
            issued_by: caller.token_id.clone().unwrap_or_default(),
            reason: ask.reason.clone(),
            revoked_at: None,
            revoked_by: None,
        };
        let mut tx = self.store.begin().await?;
        tx.insert_certificate(&record).await?;
        let detail = json!({
            "certificateId": record.id,
            "serial": record.serial.to_string(),
            "kind": ask.kind,
            "keyFingerprint": record.key_fingerprint,
            "principals": record.principals,
            "validAfter": iso8601(record.valid_after),
            "validBefore": iso8601(record.valid_before),
            "issuerId": record.issuer_id,
            "reason": record.reason,
        });
        tx.append_audit(&self.event(
            caller,
            "certificate.issue",
            Some(&ask.tenant),
            "success",
            detail,
        ))
        .await?;
        also(&mut tx, &record).await?;
        tx.commit().await?;
        tracing::info!(certificate = %record.id, serial = record.serial, "SSH user certificate issued");
        Ok(record)
    }

    /// Revokes a certificate: the tenant's hosts refuse it from their next state on and end the
    /// sessions it opened. Revoking a revoked certificate is a no-op that still succeeds.
    pub async fn revoke_certificate(
        &self,
        caller: &Caller,
        id: &CertificateId,
    ) -> Result<CertificateRecord, DomainError> {
        let tenant = &id.tenant;
        let _guard = self.locks.lock(tenant).await;
        let old = self
            .store
            .certificate(id)
            .await?
            .ok_or_else(|| DomainError::CertificateNotFound(id.to_string()))?;
        if old.revoked_at.is_some() {
            return Ok(old);
        }
        let now = self.clock.now();
        let by = caller.token_id.clone().unwrap_or_default();
        let mut tx = self.store.begin().await?;
        if !tx.revoke_certificate(id, now, &by).await? {
            return Err(DomainError::ConcurrentModification);
        }
        tx.bump_tenant_hosts(tenant).await?;
        tx.raise_session_epoch(tenant, id.kind).await?;
        let detail = json!({
            "certificateId": id,
            "serial": old.serial.to_string(),
            "kind": id.kind,
            "keyFingerprint": old.key_fingerprint,
            "validBefore": iso8601(old.valid_before),
            "expired": old.valid_before <= now,
        });
        tx.append_audit(&self.event(
            caller,
            "certificate.revoke",
            Some(tenant),
            "success",
            detail,
        ))
        .await?;
        tx.commit().await?;
        self.changes.changed(Change::Tenant(tenant.clone()));
        metrics::counter!("keyward_certificate_operations_total", "operation" => "certificate.revoke", "outcome" => "success").increment(1);
        tracing::info!(certificate = %id, "SSH user certificate revoked");
        Ok(CertificateRecord {
            revoked_at: Some(now),
            revoked_by: Some(by),
            ..old
        })
    }
}

impl KeyLifecycle {
    /// Records the SSH CA keys hosts are to trust. When they differ from what any replica
    /// recorded last, every live host gets a new generation (so that a host counts as in sync
    /// only once it applied them) and the change is audited; returns whether they differed.
    pub async fn record_ca_keys(&self, keys: &[String]) -> Result<bool, DomainError> {
        let value = serde_json::to_string(keys).map_err(|_| DomainError::Internal)?;
        let mut tx = self.store.begin().await?;
        if !tx.set_deployment_setting(CA_KEYS_SETTING, &value).await? {
            return Ok(false);
        }
        let hosts = tx.bump_all_hosts().await?;
        let detail = json!({ "caKeys": keys, "hosts": hosts });
        tx.append_audit(&self.event(&Caller::system(), "ssh_ca.trust", None, "success", detail))
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The SSH CA keys any replica recorded last.
    pub async fn recorded_ca_keys(&self) -> Result<Option<Vec<String>>, DomainError> {
        let Some(value) = self.store.deployment_setting(CA_KEYS_SETTING).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_str(&value).ok())
    }
}

/// The deployment setting that holds the SSH CA keys hosts trust (a JSON list).
const CA_KEYS_SETTING: &str = "ssh_ca_keys";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_and_foreign_keys_are_not_certified() {
        let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKpEHp269E+4ixcICHqfs5XWIoLHIo1uUdUfrhJBcKh8 me@laptop";
        assert!(check_key(ed).is_ok());
        for bad in ["", "ssh-ed25519 !!", "hello"] {
            let err = check_key(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_body", "{bad:?}");
        }
        let rsa = |bits: &str| format!("ssh-rsa {bits}");
        let small = check_key(&rsa("AAAAB3NzaC1yc2EAAAADAQABAAABAQC9Flzq3bFa2K4QDxHzDWXD2KLWCKhutgHAoVWlyVIWJo542xKfztCWUQo2jpiRQOFoLgmiEV4msJdrTsjZ/8gCOXioKdE+gaOJcRzXG25XPw9cSgUDIgGw2eq81eQ+RxuuHLhShjVpJrhbrW9uXmKh3mPag+M48AQ8CB3smQ6y8/l5exVAy4xfg7ISDq/qlmeQFOseQsEwp7UuEt1oS0oeIZunmyf1uFEiKr7jEZbrlcZ9nDLV6MUEnsLJcF9ReLYr1Hqo6AzYw/LdSkVbu9yauP6k2Cp2DZzQAmiQXL5fqYrbMdzP8DR8uh29MxdUl3vBwSfe+V88xvVjY9riOt7n")).unwrap_err();
        assert!(small.to_string().contains("this one has 2048"), "{small}");
        assert!(check_key(&rsa("AAAAB3NzaC1yc2EAAAADAQABAAABgQDHEmppJx4OksBpi9mR/90DuqcHj5BLytOFnZJVW2rWdi+cbl5EqjfuOrRBQy2SHsVcTl0lu1WgkNi6SRer33uhi5Yn/1ipNAwXbmuAC/7WCpM+Q9essRZx//AfjuaN432XLrsGQzPXcE5zUoObCHDPV9RnaiIGyeb/PJxuAujHlSF3GLvKY7RSaMYE7qHrPbRbj4/IURgJlOUq/FqlYU1QGFwDt1sNVk9dhJz8xk6tLnO0eYMMNlvlD1WNRvU+1qO3VHaTf4/DHyY7jbm40kG10dZii5e7nhbtUdLrX2BHG3KTQVJVeWbcMCc7oPt/QGGnPXFJgTFD037Mw1TPHoEqziLdAlnvTzEdJmbUyujFExVGqJqRcLbEB1QVpC4D2CvC6td4POl3a3n6AOHLqlY/+pkV8YWJZbihV7BwMYsak0hn/kbp0J7eq2I9JBCGEcA0Ml4YLzQewAJuleEqW3I/ks1Fj6RFMN10q2RSDoikJzxefhF1u2Q3gb9UNL/eKnc=")).is_ok());
        // Past OpenSSH's largest modulus: sshd would refuse it anyway.
        let huge = |bits: usize| {
            let mut blob = Vec::new();
            let mut put = |bytes: &[u8]| {
                blob.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
                blob.extend_from_slice(bytes);
            };
            put(b"ssh-rsa");
            put(&[1, 0, 1]);
            let mut n = vec![0u8];
            n.extend(std::iter::repeat_n(0xc5, bits / 8));
            put(&n);
            use base64::Engine as _;
            rsa(&base64::engine::general_purpose::STANDARD.encode(blob))
        };
        assert!(check_key(&huge(16_384)).is_ok());
        let err = check_key(&huge(16_392)).unwrap_err();
        assert!(err.to_string().contains("3072 to 16384 bits"), "{err}");
    }
}
