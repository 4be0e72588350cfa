//! Signing the head on a schedule, and re-anchoring the checkpoint after a restore.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::{HeadKeys, MISMATCH_ACTION, RESET_ACTION, SIGNED_ACTION, SignedHead, message};
use crate::caller::Caller;
use crate::clock::{iso8601, parse_iso8601};
use crate::config::AuditSigningConfig;
use crate::lifecycle::{DomainError, KeyLifecycle};
use crate::store::{GENESIS_HASH, StoreError};
use crate::vault::{AuditHeadVault, StoredCheckpoint, VaultError};

/// Why a head could not be signed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the checkpoint in Vault is not a signed head: {0}")]
    BadCheckpoint(String),
    #[error("the transit key: {0}")]
    BadKeys(String),
    /// The chain in SQL no longer reaches the checkpoint.
    #[error("{0}")]
    Mismatch(String),
}

/// Signs the audit chain's head (see the module's documentation).
#[derive(Debug)]
pub struct AuditHeadSigner {
    lifecycle: Arc<KeyLifecycle>,
    vault: Arc<dyn AuditHeadVault>,
    config: AuditSigningConfig,
    /// The checkpoint version whose mismatch this process has already audited.
    mismatch_audited: Mutex<Option<u64>>,
}

impl AuditHeadSigner {
    pub fn new(
        lifecycle: Arc<KeyLifecycle>,
        vault: Arc<dyn AuditHeadVault>,
        config: AuditSigningConfig,
    ) -> Self {
        Self {
            lifecycle,
            vault,
            config,
            mismatch_audited: Mutex::new(None),
        }
    }

    pub(super) fn store(&self) -> &crate::store::Store {
        self.lifecycle.store()
    }

    #[cfg(test)]
    pub(super) fn lifecycle(&self) -> &KeyLifecycle {
        &self.lifecycle
    }

    pub fn config(&self) -> &AuditSigningConfig {
        &self.config
    }

    /// The transit key's public keys.
    pub async fn keys(&self) -> Result<HeadKeys, HeadError> {
        HeadKeys::from_raw(&self.vault.public_keys().await?).map_err(HeadError::BadKeys)
    }

    /// Where the key is (`{transit}/keys/{key}`).
    pub fn key_path(&self) -> String {
        self.vault.key_path()
    }

    /// The checkpoint and its KV version, if there is one.
    pub async fn checkpoint(&self) -> Result<Option<(SignedHead, u64)>, HeadError> {
        let Some(StoredCheckpoint { value, version }) = self.vault.read_checkpoint().await? else {
            return Ok(None);
        };
        let head =
            serde_json::from_value(value).map_err(|e| HeadError::BadCheckpoint(e.to_string()))?;
        Ok(Some((head, version)))
    }

    /// Signs at start, then whenever the checkpoint is an interval old; never returns.
    pub async fn run(self: Arc<Self>) {
        let tick =
            (self.config.interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut at_start = true;
        loop {
            match self.sign_if_due(at_start).await {
                Ok(_) => at_start = false,
                Err(e) => tracing::error!(error = %e, "cannot sign the audit chain's head"),
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// Signs the head and moves the checkpoint to it, when `force`d or when the checkpoint is at
    /// least an interval old. Returns what it signed.
    pub async fn sign_if_due(&self, force: bool) -> Result<Option<SignedHead>, HeadError> {
        let result = self.sign_round(force).await;
        if let Err(e) = &result
            && !matches!(e, HeadError::Mismatch(_))
        {
            metrics::counter!("keyward_audit_head_errors_total").increment(1);
        }
        result
    }

    async fn sign_round(&self, force: bool) -> Result<Option<SignedHead>, HeadError> {
        let now = self.lifecycle.now();
        let checkpoint = self.checkpoint().await?;
        if !force
            && let Some((head, _)) = &checkpoint
            && let Some(signed_at) = parse_iso8601(&head.signed_at)
            && (now - signed_at).to_std().unwrap_or_default() < self.config.interval
        {
            return Ok(None);
        }
        let (seq, hash) = self.chain_head().await?;
        if let Some((head, version)) = &checkpoint
            && let Err(why) = self.reaches(head, seq).await?
        {
            metrics::gauge!("keyward_audit_head_mismatch").set(1.0);
            self.audit_mismatch(head, *version, seq, &why).await;
            return Err(HeadError::Mismatch(why));
        }
        let signed = self.sign(seq, &hash, &iso8601(now)).await?;
        let detail =
            serde_json::to_value(&signed).map_err(|e| HeadError::BadKeys(e.to_string()))?;
        self.lifecycle
            .audited(&Caller::system(), SIGNED_ACTION, None, {
                let detail = detail.clone();
                move |_| Box::pin(async move { Ok(((), detail)) })
            })
            .await?;
        let cas = checkpoint.as_ref().map_or(0, |(_, version)| *version);
        if !self.vault.write_checkpoint(&detail, cas).await? {
            tracing::debug!("another replica moved the audit checkpoint first");
        }
        metrics::gauge!("keyward_audit_head_mismatch").set(0.0);
        metrics::gauge!("keyward_audit_head_signed_seq").set(signed.seq as f64);
        metrics::gauge!("keyward_audit_head_signed_timestamp_seconds").set(now.timestamp() as f64);
        *self.lock_mismatch() = None;
        Ok(Some(signed))
    }

    /// After a restore (an older database, a Vault snapshot from another time), the checkpoint
    /// may lie past the chain: this signs the chain's head as it is now, records the old
    /// checkpoint, the new head and the operator's `reason` in an `audit.head.reset` event by
    /// `caller`, and moves the checkpoint there whatever it was.
    pub async fn reset(&self, caller: &Caller, reason: &str) -> Result<SignedHead, HeadError> {
        // A checkpoint that does not even read is replaced all the same: that is the point.
        let previous = self.vault.read_checkpoint().await?;
        let (seq, hash) = self.chain_head().await?;
        let signed = self
            .sign(seq, &hash, &iso8601(self.lifecycle.now()))
            .await?;
        let value = serde_json::to_value(&signed).map_err(|e| HeadError::BadKeys(e.to_string()))?;
        let detail = json!({
            "previous": previous.as_ref().map(|p| p.value.clone()),
            "head": value,
            "reason": reason,
        });
        self.lifecycle
            .audited(caller, RESET_ACTION, None, move |_| {
                Box::pin(async move { Ok(((), detail)) })
            })
            .await?;
        let cas = previous.map_or(0, |p| p.version);
        if !self.vault.write_checkpoint(&value, cas).await? {
            return Err(HeadError::Mismatch(
                "another replica moved the checkpoint meanwhile: run it again".into(),
            ));
        }
        *self.lock_mismatch() = None;
        Ok(signed)
    }

    async fn chain_head(&self) -> Result<(i64, String), HeadError> {
        Ok(self
            .lifecycle
            .store()
            .audit_head()
            .await?
            .unwrap_or_else(|| (0, GENESIS_HASH.to_owned())))
    }

    /// Whether the chain, whose head is `head_seq`, still reaches the signed `head`: `Err` says
    /// how it does not.
    pub(super) async fn reaches(
        &self,
        head: &SignedHead,
        head_seq: i64,
    ) -> Result<Result<(), String>, HeadError> {
        if head_seq < head.seq {
            return Ok(Err(format!(
                "the audit chain ends at event {head_seq}, but Vault's checkpoint vouches for \
                 event {} (signed {}): events were cut off its end",
                head.seq, head.signed_at
            )));
        }
        let hash = if head.seq == 0 {
            Some(GENESIS_HASH.to_owned())
        } else {
            self.lifecycle
                .store()
                .audit_events_from(head.seq, head.seq, 1)
                .await?
                .pop()
                .map(|(event, _)| event.hash)
        };
        Ok(if hash.as_deref() == Some(head.hash.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "event {} of the audit chain does not have the hash Vault's checkpoint vouches for \
                 (signed {}): the chain was rewritten",
                head.seq, head.signed_at
            ))
        })
    }

    async fn sign(&self, seq: i64, hash: &str, signed_at: &str) -> Result<SignedHead, HeadError> {
        let signature = self.vault.sign(&message(seq, hash, signed_at)).await?;
        Ok(SignedHead {
            seq,
            hash: hash.to_owned(),
            signed_at: signed_at.to_owned(),
            key_version: signature.key_version,
            signature: STANDARD.encode(&signature.signature),
        })
    }

    /// One `audit.head.mismatch` event per checkpoint (and process), not one a round.
    async fn audit_mismatch(&self, head: &SignedHead, version: u64, head_seq: i64, why: &str) {
        tracing::error!(checkpoint_seq = head.seq, head_seq, "{why}");
        if self.lock_mismatch().replace(version) == Some(version) {
            return;
        }
        self.lifecycle
            .audit_system_failure(
                MISMATCH_ACTION,
                json!({ "checkpoint": head, "chainHeadSeq": head_seq, "reason": why }),
            )
            .await;
    }

    fn lock_mismatch(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.mismatch_audited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
