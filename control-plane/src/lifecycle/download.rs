//! The one-time download of a private key: the version SQL knows, checked against its
//! fingerprint, claimed in SQL once, every attempt audited.

use keyward_common::keys::public_key_fingerprint;
use keyward_common::{KeyKind, TenantId};
use serde_json::json;
use zeroize::Zeroizing;

use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::store::{KeySetRecord, KeyState};
use crate::vault::{KeySetSecret, VaultError};

impl KeyLifecycle {
    /// Hands out the private key of the current generation, once. Every attempt is audited.
    pub async fn download(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<(KeySetRecord, Zeroizing<String>), DomainError> {
        let result = self.download_locked(caller, tenant, kind).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        metrics::counter!("keyward_key_operations_total", "operation" => "key.download", "outcome" => outcome).increment(1);
        if let Err(e) = &result {
            let action = if matches!(
                e,
                DomainError::AlreadyDownloaded { .. } | DomainError::KeyRevoked
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
    ) -> Result<(KeySetRecord, Zeroizing<String>), DomainError> {
        let _guard = self.locks.lock(tenant).await;
        let ks = self.key_set_or_404(tenant, kind).await?;
        if ks.state == KeyState::Revoked {
            return Err(DomainError::KeyRevoked);
        }
        if ks.downloaded_at.is_some() {
            return Err(DomainError::AlreadyDownloaded {
                generation: ks.generation,
            });
        }
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
                operation: format!("read {tenant}/{}", kind.secret_name()),
                reason: "the stored key does not match the recorded fingerprint".into(),
            }));
        }
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx.claim_download(tenant, kind, ks.generation, at).await? {
            return Err(DomainError::AlreadyDownloaded {
                generation: ks.generation,
            });
        }
        let detail =
            json!({ "kind": kind, "generation": ks.generation, "fingerprint": ks.fingerprint });
        tx.append_audit(&self.event(caller, "key.download", Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant, %kind, generation = ks.generation, "private key downloaded");
        let KeySetSecret { private_key, .. } = stored.secret;
        Ok((
            KeySetRecord {
                downloaded_at: Some(at),
                ..ks
            },
            private_key,
        ))
    }
}
