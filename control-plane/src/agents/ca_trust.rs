//! The SSH certificate authority's public keys that every host's sshd is told to trust
//! (`TrustedUserCAKeys`, in the desired state's `sshd` files).
//!
//! They live in Vault's SSH engine (every issuer's key: the current CA and, during a rotation,
//! the next one). Each replica reads them at start and every `vault.ssh_ca_refresh` (60 s by
//! default; a CA rotation adds the next issuer and waits at least that long, so that every host
//! trusts both, before making it the default); when they change, the first replica to see it
//! raises every host's generation (`KeyLifecycle::record_ca_keys`, once for the deployment, with
//! an audit event), and every stream of the replica sends its host's state again (with the new
//! generation, so that a host counts as in sync only once it applied the new keys). When Vault cannot be read the last keys are kept: a host must not
//! stop trusting its CA because Vault is away. No CA (no `ssh` mount, or HashiCorp Vault without
//! issuers) is an empty list: no certificate is trusted and no principal is sent.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::hub::Hub;
use crate::lifecycle::KeyLifecycle;
use crate::vault::CertificateAuthority;

/// The CA keys, as last read.
#[derive(Debug, Default)]
pub struct CaTrust {
    keys: RwLock<Arc<Vec<String>>>,
}

impl CaTrust {
    /// The keys to trust now (OpenSSH form, the default issuer first).
    pub fn keys(&self) -> Arc<Vec<String>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the keys from `ca`; returns whether they changed. On an error the old keys stay.
    pub async fn refresh(&self, ca: &dyn CertificateAuthority) -> bool {
        self.read(ca).await.unwrap_or(false)
    }

    /// [`CaTrust::refresh`], saying `None` when Vault could not be read.
    async fn read(&self, ca: &dyn CertificateAuthority) -> Option<bool> {
        let mut read = match ca.ca_public_keys().await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the SSH CA's keys; keeping the last ones");
                return None;
            }
        };
        // The default issuer first, then by issuer id: the same keys always in the same order.
        read.sort_by(|a, b| {
            b.is_default
                .cmp(&a.is_default)
                .then_with(|| a.issuer_id.cmp(&b.issuer_id))
        });
        let keys: Vec<String> = read.into_iter().map(|k| k.public_key).collect();
        Some(self.set(keys))
    }

    fn set(&self, keys: Vec<String>) -> bool {
        let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if **current == keys {
            return false;
        }
        tracing::info!(keys = keys.len(), "the SSH CA's keys changed");
        *current = Arc::new(keys);
        true
    }

    /// The first read, at start: from Vault, recorded as the deployment's when they changed; when
    /// Vault cannot be read, the keys the deployment last recorded, so that no host stops
    /// trusting its CA because Vault was away when a replica started.
    pub async fn start(&self, ca: &dyn CertificateAuthority, lifecycle: &KeyLifecycle) {
        match self.read(ca).await {
            Some(true) => {
                self.record(lifecycle).await;
            }
            Some(false) => {}
            None => match lifecycle.recorded_ca_keys().await {
                Ok(Some(keys)) => {
                    tracing::info!(
                        keys = keys.len(),
                        "trusting the SSH CA keys last recorded until Vault answers"
                    );
                    self.set(keys);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the recorded SSH CA keys"),
            },
        }
    }

    /// Records the keys as the deployment's (see the module docs); retried at the next
    /// refresh while the database fails.
    pub async fn record(&self, lifecycle: &KeyLifecycle) -> bool {
        match lifecycle.record_ca_keys(&self.keys()).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the SSH CA's keys; trying again");
                false
            }
        }
    }

    /// Refreshes every `every` for ever; a change raises the hosts' generations and makes every
    /// stream of `hub` send its state again.
    pub async fn run(
        self: Arc<Self>,
        ca: Arc<dyn CertificateAuthority>,
        hub: Arc<Hub>,
        lifecycle: Arc<KeyLifecycle>,
        every: Duration,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut recorded = true;
        loop {
            tick.tick().await;
            if self.refresh(ca.as_ref()).await || !recorded {
                recorded = self.record(&lifecycle).await;
                hub.resync();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::vault::{CaPublicKey, SignedCertificate, UserCertificateRequest, VaultError};

    #[derive(Debug, Default)]
    struct FakeCa {
        answer: Mutex<Option<Vec<CaPublicKey>>>,
    }

    #[async_trait]
    impl CertificateAuthority for FakeCa {
        async fn sign_user_certificate(
            &self,
            _: &UserCertificateRequest,
        ) -> Result<SignedCertificate, VaultError> {
            Err(VaultError::Config("not in this test".into()))
        }

        async fn ca_public_keys(&self) -> Result<Vec<CaPublicKey>, VaultError> {
            self.answer
                .lock()
                .unwrap()
                .clone()
                .ok_or(VaultError::Sealed)
        }
    }

    fn key(id: &str, is_default: bool) -> CaPublicKey {
        CaPublicKey {
            issuer_id: id.into(),
            issuer_name: None,
            is_default,
            public_key: format!("ssh-ed25519 {id}"),
        }
    }

    #[tokio::test]
    async fn keys_are_kept_when_vault_is_away_and_ordered_default_first() {
        let ca = FakeCa::default();
        let trust = CaTrust::default();
        assert!(trust.keys().is_empty());
        *ca.answer.lock().unwrap() = Some(vec![key("b", false), key("a", false), key("c", true)]);
        assert!(trust.refresh(&ca).await);
        assert_eq!(
            *trust.keys(),
            ["ssh-ed25519 c", "ssh-ed25519 a", "ssh-ed25519 b"]
        );
        assert!(!trust.refresh(&ca).await, "the same keys are no change");
        *ca.answer.lock().unwrap() = None;
        assert!(!trust.refresh(&ca).await);
        assert_eq!(trust.keys().len(), 3, "kept while Vault is away");
        *ca.answer.lock().unwrap() = Some(vec![]);
        assert!(trust.refresh(&ca).await);
        assert!(
            trust.keys().is_empty(),
            "a CA removed in Vault is trusted no more"
        );
    }
}
