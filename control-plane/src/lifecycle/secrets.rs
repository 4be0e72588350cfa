//! A tenant's SMTP credentials and DKIM key, kept in Vault at `{mount}/{tenant_id}/smtp` and
//! `{mount}/{tenant_id}/dkim`. Each rotation follows the order of every key operation: under the
//! tenant's lock, make the secret (the DKIM key off the async runtime) and write it to Vault with
//! check-and-set; then, in one SQL transaction (a bulk job's shared with other tenants', see
//! [`GroupCommit`]), record the metadata over the generation read and the audit event. SQL keeps
//! only what may be shown: the SMTP user name, the DKIM selector and DNS record; never the
//! password or private key.
//!
//! The first rotation creates the secret. Hosts are not told: neither secret is on a VPS.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use keyward_common::TenantId;
use rand::Rng;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::{DomainError, GroupCommit, KeyLifecycle, Trigger};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::store::{TenantSecretRecord, WriteTx};
use crate::vault::{SecretFields, VaultError};

/// Length of a generated SMTP password: 32 alphanumerics, about 190 bits.
const SMTP_PASSWORD_LEN: usize = 32;
/// DKIM keys are RSA-2048, the size every verifier accepts and a TXT record holds.
const DKIM_BITS: usize = 2048;

/// A tenant secret other than the SSH key sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantSecretKind {
    Smtp,
    Dkim,
}

impl TenantSecretKind {
    /// The last segment of its Vault path, and its name in SQL.
    pub fn name(self) -> &'static str {
        match self {
            TenantSecretKind::Smtp => "smtp",
            TenantSecretKind::Dkim => "dkim",
        }
    }

    fn action(self) -> &'static str {
        match self {
            TenantSecretKind::Smtp => "smtp.rotate",
            TenantSecretKind::Dkim => "dkim.rotate",
        }
    }
}

/// The selector of a new DKIM key: `kw{YYYYMM}`, or `kw{YYYYMM}g{generation}` when the previous
/// key's selector is of the same month, so that the previous DNS record can stay published for
/// mail signed with it while the new one takes over.
pub fn dkim_selector(now: DateTime<Utc>, previous: Option<&str>, generation: i64) -> String {
    let month = format!("kw{}", now.format("%Y%m"));
    if previous.is_some_and(|p| p.starts_with(&month)) {
        format!("{month}g{generation}")
    } else {
        month
    }
}

/// A new DKIM key: the private key (PKCS#8 PEM) and the DNS TXT record value with the public key.
fn dkim_key() -> Result<(Zeroizing<String>, String), String> {
    let private =
        rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, DKIM_BITS).map_err(|e| e.to_string())?;
    let pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| e.to_string())?;
    let spki = rsa::RsaPublicKey::from(&private)
        .to_public_key_der()
        .map_err(|e| e.to_string())?;
    let record = format!("v=DKIM1; k=rsa; p={}", STANDARD.encode(spki.as_bytes()));
    Ok((pem, record))
}

fn smtp_password() -> Zeroizing<String> {
    let mut rng = rand::rngs::OsRng;
    Zeroizing::new(
        (0..SMTP_PASSWORD_LEN)
            .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
            .collect(),
    )
}

/// A tenant secret written to Vault, waiting for its SQL record (which the caller writes while
/// it holds the tenant's lock).
#[derive(Debug)]
pub(super) struct SecretReplacement {
    kind: TenantSecretKind,
    /// The generation SQL held when the secret was made (`None`: the first).
    previous: Option<i64>,
    record: TenantSecretRecord,
}

impl KeyLifecycle {
    /// Replaces (or first creates) the tenant's SMTP credentials or DKIM key. Audited as
    /// `smtp.rotate` or `dkim.rotate`, failures too.
    pub async fn rotate_secret(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: TenantSecretKind,
        trigger: &Trigger,
    ) -> Result<TenantSecretRecord, DomainError> {
        let result = async {
            let _guard = self.locks.lock(tenant).await;
            let replacement = self.prepare_secret(tenant, kind).await?;
            let mut tx = self.store.begin().await?;
            self.apply_secret(&mut tx, caller, &replacement, trigger)
                .await?;
            tx.commit().await?;
            Ok(self.secret_replaced(replacement))
        }
        .await;
        self.secret_done(caller, tenant, kind, result).await
    }

    /// [`KeyLifecycle::rotate_secret`] with the SQL part committed by `group`, in one
    /// transaction with the other tenants' rotations ready at the same time (a bulk job's).
    pub async fn rotate_secret_grouped(
        &self,
        group: &GroupCommit,
        caller: &Caller,
        tenant: &TenantId,
        kind: TenantSecretKind,
        trigger: &Trigger,
    ) -> Result<TenantSecretRecord, DomainError> {
        let result = async {
            let _guard = self.locks.lock(tenant).await;
            let replacement = self.prepare_secret(tenant, kind).await?;
            group.commit_secret(replacement, caller, trigger).await
        }
        .await;
        self.secret_done(caller, tenant, kind, result).await
    }

    /// Counts a rotation's outcome and audits its failure (in a transaction of its own: the
    /// rotation's was rolled back).
    async fn secret_done(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: TenantSecretKind,
        result: Result<TenantSecretRecord, DomainError>,
    ) -> Result<TenantSecretRecord, DomainError> {
        self.key_operation_done(caller, kind.action(), tenant, result)
            .await
    }

    /// Everything of a rotation before SQL: makes the secret and writes it to Vault with
    /// check-and-set. The caller holds the tenant's lock, which the offboarding's start takes
    /// too: a secret is never written to Vault after the offboarding began (it would outlive the
    /// erasure). Vault first, as for the key sets: a version SQL never names is superseded by
    /// the next one, and the SQL transaction is not held across Vault's round trips.
    pub(super) async fn prepare_secret(
        &self,
        tenant: &TenantId,
        kind: TenantSecretKind,
    ) -> Result<SecretReplacement, DomainError> {
        if self.store.tenant(tenant).await?.is_none() {
            return Err(DomainError::TenantNotFound(tenant.clone()));
        }
        self.refuse_offboarded(tenant).await?;
        let old = self.store.tenant_secret(tenant, kind.name()).await?;
        let generation = old.as_ref().map_or(1, |o| o.generation + 1);
        let now = self.clock.now();
        let created_at = old.as_ref().map_or(now, |o| o.created_at);
        let (fields, public_info) = match kind {
            TenantSecretKind::Smtp => {
                let username = format!("tenant-{tenant}");
                let fields = SecretFields::new()
                    .with("username", username.clone())
                    .with("password", smtp_password().as_str());
                (fields, json!({ "username": username }))
            }
            TenantSecretKind::Dkim => {
                let previous = old
                    .as_ref()
                    .and_then(|o| o.public_info["selector"].as_str().map(str::to_owned));
                let selector = dkim_selector(now, previous.as_deref(), generation);
                let (private_key, dns_record) = self.cpu(dkim_key).await?.map_err(|e| {
                    tracing::error!(error = %e, "DKIM key generation failed");
                    DomainError::KeyGeneration
                })?;
                let fields = SecretFields::new()
                    .with("private_key", private_key.as_str())
                    .with("selector", selector.clone())
                    .with("dns_record", dns_record.clone());
                let info = json!({
                    "selector": selector,
                    "dnsName": format!("{selector}._domainkey"),
                    "dnsRecord": dns_record,
                    "previousSelector": previous,
                });
                (fields, info)
            }
        };
        let fields = fields
            .with("created_at", iso8601(created_at))
            .with("last_rotated", iso8601(now));
        let cas = self
            .vault
            .secret_versions(tenant, kind.name())
            .await?
            .map_or(0, |v| v.current_version);
        let vault_version = match self
            .vault
            .write_secret(tenant, kind.name(), &fields, cas)
            .await
        {
            Ok(version) => i64::try_from(version).map_err(|_| DomainError::Internal)?,
            Err(VaultError::CasMismatch { .. }) => return Err(DomainError::ConcurrentModification),
            Err(e) => return Err(e.into()),
        };
        Ok(SecretReplacement {
            kind,
            previous: old.map(|o| o.generation),
            record: TenantSecretRecord {
                tenant_id: tenant.clone(),
                name: kind.name().to_owned(),
                generation,
                vault_version,
                created_at,
                last_rotated: now,
                public_info,
            },
        })
    }

    /// Records a rotation written to Vault in `tx`: the secret's metadata (only over the
    /// generation read: a rotation that committed meanwhile, on another replica, makes this one
    /// a conflict, not a lost update), the job's progress and the audit event. On an error the
    /// caller rolls back what this wrote.
    pub(super) async fn apply_secret(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        replacement: &SecretReplacement,
        trigger: &Trigger,
    ) -> Result<(), DomainError> {
        let SecretReplacement {
            kind,
            previous,
            record,
        } = replacement;
        let tenant = &record.tenant_id;
        if !tx.replace_tenant_secret(*previous, record).await? {
            return Err(DomainError::ConcurrentModification);
        }
        trigger.record(tx, tenant, kind.name()).await?;
        let (trigger_name, job_id) = trigger.detail();
        let mut detail = json!({
            "secret": kind.name(),
            "generation": record.generation,
            "vaultVersion": record.vault_version,
            "trigger": trigger_name,
            "jobId": job_id,
        });
        for public in ["username", "selector"] {
            if let Some(value) = record.public_info.get(public) {
                detail[public] = value.clone();
            }
        }
        tx.append_audit(&self.event(caller, kind.action(), Some(tenant), "success", detail))
            .await?;
        Ok(())
    }

    /// After a rotation committed: its record. Hosts are not told (neither secret is on a VPS).
    pub(super) fn secret_replaced(&self, replacement: SecretReplacement) -> TenantSecretRecord {
        let SecretReplacement { kind, record, .. } = replacement;
        tracing::info!(tenant = %record.tenant_id, secret = kind.name(), generation = record.generation, "tenant secret rotated");
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rsa::traits::PublicKeyParts;

    #[test]
    fn selectors_are_monthly_and_never_repeat_the_previous() {
        let jan = crate::clock::parse_iso8601("2026-01-15T10:00:00Z").unwrap();
        assert_eq!(dkim_selector(jan, None, 1), "kw202601");
        assert_eq!(dkim_selector(jan, Some("kw202512"), 2), "kw202601");
        assert_eq!(dkim_selector(jan, Some("kw202601"), 2), "kw202601g2");
        assert_eq!(dkim_selector(jan, Some("kw202601g2"), 3), "kw202601g3");
    }

    #[test]
    fn the_dkim_record_carries_the_public_half_of_the_stored_key() {
        let (pem, record) = dkim_key().unwrap();
        let b64 = record.strip_prefix("v=DKIM1; k=rsa; p=").unwrap();
        let public =
            rsa::RsaPublicKey::from_public_key_der(&STANDARD.decode(b64).unwrap()).unwrap();
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(public, rsa::RsaPublicKey::from(&private));
        assert_eq!(public.size() * 8, DKIM_BITS);
    }

    #[test]
    fn passwords_are_long_random_alphanumerics() {
        let (a, b) = (smtp_password(), smtp_password());
        assert_eq!(a.len(), SMTP_PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
