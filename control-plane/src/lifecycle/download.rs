//! The one-time download of a private key: the version SQL knows, checked against its
//! fingerprint, encrypted with the caller's passphrase when one is given or the download policy
//! requires one, claimed in SQL once, every attempt audited. Where the step-up policy names
//! `download`, only with a fresh second factor (`mfa`).
//!
//! The passphrase lives in a [`Passphrase`] (zeroized when dropped, never printed by `Debug`)
//! and goes nowhere but into the key's encryption: not into SQL, a log line, a trace or an
//! audit event, which records only whether the key was handed out `encrypted`. A refusal's
//! text names the policy's bounds, never what was sent.

use std::fmt;

use chrono::{DateTime, Utc};
use keyward_common::keys::public_key_fingerprint;
use keyward_common::{KeyKind, TenantId};
use serde_json::json;
use zeroize::Zeroizing;

use super::{DomainError, KeyLifecycle, MfaProof, PolicySource};
use crate::caller::Caller;
use crate::config::{DownloadConfig, MAX_PASSPHRASE_BYTES, SensitiveOperation};
use crate::store::{DownloadPolicyRecord, KeySetRecord, KeyState};
use crate::vault::{KeySetSecret, VaultError};

/// A passphrase to encrypt a downloaded private key with: zeroized when dropped, never printed.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(text: Zeroizing<String>) -> Self {
        Self(text)
    }

    /// Within what any policy takes: at most [`MAX_PASSPHRASE_BYTES`] bytes, and no NUL, CR or
    /// LF (OpenSSH's passphrase prompt ends a passphrase at a newline: one holding it could
    /// never be typed), and at least `min` characters.
    fn check(&self, min: u32) -> Result<(), DomainError> {
        if self.0.len() > MAX_PASSPHRASE_BYTES {
            return Err(DomainError::PassphraseInvalid(
                "the passphrase must be at most 1024 bytes (UTF-8)",
            ));
        }
        if self.0.contains(['\0', '\r', '\n']) {
            return Err(DomainError::PassphraseInvalid(
                "the passphrase must not contain NUL, CR or LF",
            ));
        }
        if self.0.chars().count() < min as usize {
            return Err(DomainError::PassphraseTooShort { min });
        }
        Ok(())
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Whether a tenant's private key is handed out only encrypted, and how long a passphrase must
/// be: the tenant's own policy (set by an admin) or the deployment's (`[download]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPolicy {
    pub require_passphrase: bool,
    /// In characters; applies to every passphrase given, required or not.
    pub min_passphrase_length: u32,
    pub source: PolicySource,
    pub updated_at: Option<DateTime<Utc>>,
}

impl DownloadPolicy {
    pub fn default_of(config: &DownloadConfig) -> Self {
        Self {
            require_passphrase: config.require_passphrase,
            min_passphrase_length: config.min_passphrase_length,
            source: PolicySource::Default,
            updated_at: None,
        }
    }

    fn from_record(record: &DownloadPolicyRecord) -> Self {
        Self {
            require_passphrase: record.require_passphrase,
            min_passphrase_length: u32::try_from(record.min_passphrase_length).unwrap_or(u32::MAX),
            source: PolicySource::Tenant,
            updated_at: Some(record.updated_at),
        }
    }

    /// Checks a policy an admin asks for; the message is the 400 answer.
    pub fn validate(min_passphrase_length: u32) -> Result<(), String> {
        if !(1..=MAX_PASSPHRASE_BYTES).contains(&(min_passphrase_length as usize)) {
            return Err("minPassphraseLength must be 1 to 1024".into());
        }
        Ok(())
    }

    /// Whether this download may go ahead with `passphrase`.
    fn admits(&self, passphrase: Option<&Passphrase>) -> Result<(), DomainError> {
        match passphrase {
            Some(p) => p.check(self.min_passphrase_length),
            None if self.require_passphrase => Err(DomainError::PassphraseRequired {
                min: self.min_passphrase_length,
            }),
            None => Ok(()),
        }
    }
}

impl KeyLifecycle {
    /// Hands out the private key of the current generation, once, encrypted with `passphrase`
    /// when one is given. Every attempt is audited.
    pub async fn download(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
        passphrase: Option<Passphrase>,
        mfa: Option<&MfaProof>,
    ) -> Result<(KeySetRecord, Zeroizing<String>), DomainError> {
        let result = self
            .download_locked(caller, tenant, kind, passphrase, mfa)
            .await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        metrics::counter!("keyward_key_operations_total", "operation" => "key.download", "outcome" => outcome).increment(1);
        if let Err(e) = &result {
            let action = if matches!(
                e,
                DomainError::AlreadyDownloaded { .. }
                    | DomainError::KeyRevoked
                    | DomainError::KeyRegistered
                    | DomainError::PassphraseRequired { .. }
                    | DomainError::PassphraseTooShort { .. }
                    | DomainError::PassphraseInvalid(_)
                    | DomainError::MfaRequired { .. }
                    | DomainError::MfaInvalid
                    | DomainError::MfaReplayed
                    | DomainError::MfaNotEnrolled { .. }
                    | DomainError::MfaLocked { .. }
            ) {
                "key.download_refused"
            } else {
                "key.download"
            };
            if !matches!(e, DomainError::TenantNotFound(_)) {
                self.audit_failure(caller, action, tenant, e).await;
            }
        }
        result
    }

    async fn download_locked(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
        passphrase: Option<Passphrase>,
        mfa: Option<&MfaProof>,
    ) -> Result<(KeySetRecord, Zeroizing<String>), DomainError> {
        let _guard = self.locks.lock(tenant).await;
        let ks = self.key_set_or_404(tenant, kind).await?;
        super::registration::refuse_registered(&ks)?;
        if ks.state == KeyState::Revoked {
            return Err(DomainError::KeyRevoked);
        }
        if ks.downloaded_at.is_some() {
            return Err(DomainError::AlreadyDownloaded {
                generation: ks.generation,
            });
        }
        // Refused before Vault is asked, and before the one download is spent.
        self.download_policy(tenant)
            .await?
            .admits(passphrase.as_ref())?;
        // Last of the refusals, so that a code is not spent on a request refused otherwise.
        self.step_up(caller, SensitiveOperation::Download, mfa)
            .await?;
        let version = u64::try_from(ks.vault_version).map_err(|_| DomainError::Internal)?;
        let stored = self
            .vault
            .read_key_set(tenant, kind, version)
            .await?
            .ok_or_else(|| {
                DomainError::Vault(VaultError::BadResponse {
                    operation: format!("read {tenant}/{} version {version}", kind.secret_name()),
                    reason: "the version is missing or deleted".into(),
                })
            })?;
        // The key handed out must be the one SQL (and so every host) knows.
        let matches =
            public_key_fingerprint(&stored.secret.public_key).is_ok_and(|f| f == ks.fingerprint);
        if !matches {
            return Err(DomainError::Vault(VaultError::BadResponse {
                operation: format!("read {tenant}/{} version {version}", kind.secret_name()),
                reason: "the stored key does not match the recorded fingerprint".into(),
            }));
        }
        let KeySetSecret { private_key, .. } = stored.secret;
        let encrypted = passphrase.is_some();
        // Encrypted before the download is claimed: a key that could not be encrypted is not
        // spent. bcrypt-pbkdf is CPU-bound on purpose: off the async runtime.
        let private_key = match passphrase {
            Some(passphrase) => self
                .cpu(move || {
                    keyward_common::keys::encrypt_private_key(&private_key, passphrase.0.as_bytes())
                })
                .await?
                .map_err(|e| {
                    tracing::error!(tenant = %tenant, %kind, error = %e, "encrypting a private key failed");
                    DomainError::Internal
                })?,
            None => private_key,
        };
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx.claim_download(tenant, kind, ks.generation, at).await? {
            return Err(DomainError::AlreadyDownloaded {
                generation: ks.generation,
            });
        }
        let detail = json!({
            "kind": kind,
            "generation": ks.generation,
            "fingerprint": ks.fingerprint,
            "encrypted": encrypted,
        });
        tx.append_audit(&self.event(caller, "key.download", Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant, %kind, generation = ks.generation, encrypted, "private key downloaded");
        Ok((
            KeySetRecord {
                downloaded_at: Some(at),
                ..ks
            },
            private_key,
        ))
    }

    /// The download policy that applies to `tenant` (its own, or the deployment's).
    pub async fn download_policy(&self, tenant: &TenantId) -> Result<DownloadPolicy, DomainError> {
        Ok(match self.store.download_policy(tenant).await? {
            Some(record) => DownloadPolicy::from_record(&record),
            None => DownloadPolicy::default_of(&self.download),
        })
    }

    /// Sets the tenant's own download policy (`Some((require_passphrase,
    /// min_passphrase_length))`) or returns it to the deployment's (`None`). Audited as
    /// `download_policy.set` or `download_policy.reset`.
    pub async fn set_download_policy(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        policy: Option<(bool, u32)>,
    ) -> Result<DownloadPolicy, DomainError> {
        if let Some((_, min)) = policy {
            DownloadPolicy::validate(min).map_err(DomainError::PolicyInvalid)?;
        }
        let action = if policy.is_some() {
            "download_policy.set"
        } else {
            "download_policy.reset"
        };
        let result = self
            .set_download_policy_locked(caller, tenant, policy, action)
            .await;
        self.failure_audited(caller, action, tenant, result).await
    }

    async fn set_download_policy_locked(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        policy: Option<(bool, u32)>,
        action: &'static str,
    ) -> Result<DownloadPolicy, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        if self.store.tenant(tenant).await?.is_none() {
            return Err(DomainError::TenantNotFound(tenant.clone()));
        }
        let mut tx = self.store.begin().await?;
        let applied = match policy {
            Some((require_passphrase, min)) => {
                let record = DownloadPolicyRecord {
                    tenant_id: tenant.clone(),
                    require_passphrase,
                    min_passphrase_length: i64::from(min),
                    updated_at: self.clock.now(),
                };
                tx.put_download_policy(&record).await?;
                DownloadPolicy::from_record(&record)
            }
            None => {
                tx.delete_download_policy(tenant).await?;
                DownloadPolicy::default_of(&self.download)
            }
        };
        let detail = json!({
            "requirePassphrase": applied.require_passphrase,
            "minPassphraseLength": applied.min_passphrase_length,
        });
        tx.append_audit(&self.event(caller, action, Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant, require_passphrase = applied.require_passphrase, min_passphrase_length = applied.min_passphrase_length, action, "download policy changed");
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passphrase(text: &str) -> Passphrase {
        Passphrase::new(Zeroizing::new(text.to_owned()))
    }

    fn policy(require_passphrase: bool, min: u32) -> DownloadPolicy {
        DownloadPolicy {
            require_passphrase,
            min_passphrase_length: min,
            source: PolicySource::Default,
            updated_at: None,
        }
    }

    #[test]
    fn the_policy_admits_what_it_says_and_names_no_passphrase() {
        let required = policy(true, 12);
        assert!(matches!(
            required.admits(None),
            Err(DomainError::PassphraseRequired { min: 12 })
        ));
        assert!(required.admits(Some(&passphrase("twelve chars"))).is_ok());
        let short = required
            .admits(Some(&passphrase("eleven char")))
            .unwrap_err();
        assert_eq!(short.code(), "passphrase_too_short");
        assert!(!short.to_string().contains("eleven char"), "{short}");
        // Characters, not bytes: twelve of them, 36 bytes.
        assert!(required.admits(Some(&passphrase(&"ü".repeat(12)))).is_ok());
        let optional = policy(false, 12);
        assert!(optional.admits(None).is_ok());
        // A passphrase given is held to the minimum even when none is required.
        assert!(optional.admits(Some(&passphrase("short"))).is_err());
        for bad in [
            "a".repeat(1025),
            format!("{}\0", "a".repeat(20)),
            format!("{}\n", "a".repeat(20)),
            format!("{}\r", "a".repeat(20)),
        ] {
            let refused = optional.admits(Some(&passphrase(&bad))).unwrap_err();
            assert_eq!(refused.code(), "passphrase_invalid");
            assert!(refused.is_refusal());
        }
        assert!(
            optional
                .admits(Some(&passphrase(&"a".repeat(1024))))
                .is_ok()
        );
    }

    #[test]
    fn a_passphrase_is_never_printed() {
        let secret = "do not print me";
        assert!(!format!("{:?}", passphrase(secret)).contains(secret));
        assert!(!format!("{:?}", Some(passphrase(secret))).contains(secret));
    }

    #[test]
    fn policies_are_validated() {
        assert!(DownloadPolicy::validate(0).is_err());
        assert!(DownloadPolicy::validate(1).is_ok());
        assert!(DownloadPolicy::validate(1024).is_ok());
        assert!(DownloadPolicy::validate(1025).is_err());
    }
}
