//! The signer and `verify` over a fake transit key and checkpoint and a real SQLite chain: signed
//! on schedule, and a chain cut short or rewritten in SQL is told.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::Value;

use super::{AuditHeadSigner, HeadError, MISMATCH_ACTION, SIGNED_ACTION};
use crate::caller::Caller;
use crate::config::AuditSigningConfig;
use crate::lifecycle::tests::{Fixture, fixture, new_tenant};
use crate::store::AuditFilter;
use crate::vault::{AuditHeadVault, StoredCheckpoint, TransitSignature, VaultError};

#[derive(Debug)]
struct FakeTransit {
    key: SigningKey,
    checkpoint: Mutex<Option<StoredCheckpoint>>,
}

#[async_trait]
impl AuditHeadVault for FakeTransit {
    async fn sign(&self, message: &[u8]) -> Result<TransitSignature, VaultError> {
        Ok(TransitSignature {
            key_version: 1,
            signature: self.key.sign(message).to_bytes().to_vec(),
        })
    }

    async fn public_keys(&self) -> Result<BTreeMap<u32, [u8; 32]>, VaultError> {
        Ok(BTreeMap::from([(1, self.key.verifying_key().to_bytes())]))
    }

    async fn read_checkpoint(&self) -> Result<Option<StoredCheckpoint>, VaultError> {
        Ok(self.checkpoint.lock().unwrap().clone())
    }

    async fn write_checkpoint(&self, value: &Value, cas: u64) -> Result<bool, VaultError> {
        let mut stored = self.checkpoint.lock().unwrap();
        let current = stored.as_ref().map_or(0, |c| c.version);
        if current != cas {
            return Ok(false);
        }
        *stored = Some(StoredCheckpoint {
            value: value.clone(),
            version: current + 1,
        });
        Ok(true)
    }

    fn key_path(&self) -> String {
        "transit/keys/keyward-audit".into()
    }
}

/// The fixture's clock and database directory, beside the signer that took its lifecycle.
struct Setup {
    clock: Arc<crate::clock::ManualClock>,
    dir: tempfile::TempDir,
}

async fn signer() -> (Setup, Arc<AuditHeadSigner>, Arc<FakeTransit>) {
    let Fixture {
        lifecycle,
        clock,
        dir,
        ..
    } = fixture().await;
    let transit = Arc::new(FakeTransit {
        key: SigningKey::from_bytes(&[8; 32]),
        checkpoint: Mutex::new(None),
    });
    let config = AuditSigningConfig {
        key: Some("keyward-audit".into()),
        interval: Duration::from_secs(600),
        ..AuditSigningConfig::default()
    };
    let signer = AuditHeadSigner::new(Arc::new(lifecycle), transit.clone(), config);
    (Setup { clock, dir }, Arc::new(signer), transit)
}

async fn sql(f: &Setup, statement: &str) {
    let url = format!("sqlite://{}/k.db", f.dir.path().display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(statement).execute(&pool).await.unwrap();
    pool.close().await;
}

async fn actions(signer: &AuditHeadSigner) -> Vec<String> {
    let page = signer
        .store()
        .audit_events(&AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    page.events.into_iter().rev().map(|e| e.action).collect()
}

#[tokio::test]
async fn heads_are_signed_on_schedule_and_verify() {
    let (f, signer, transit) = signer().await;
    let lifecycle = signer.lifecycle();
    lifecycle
        .create_tenant(&Caller::system(), new_tenant())
        .await
        .unwrap();
    let first = signer.sign_if_due(true).await.unwrap().unwrap();
    assert_eq!(
        first.seq, 1,
        "the head when it was signed: the tenant's creation"
    );
    assert_eq!(actions(&signer).await.last().unwrap(), SIGNED_ACTION);
    assert_eq!(
        transit.checkpoint.lock().unwrap().as_ref().unwrap().version,
        1
    );

    // Not due within the interval; due after it.
    f.clock.advance(chrono::Duration::seconds(599));
    assert!(signer.sign_if_due(false).await.unwrap().is_none());
    f.clock.advance(chrono::Duration::seconds(2));
    let second = signer.sign_if_due(false).await.unwrap().unwrap();
    assert_eq!(second.seq, 2, "the first signed head's own event");

    let verdict = signer.verify(lifecycle.now()).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    let head = verdict.head.unwrap();
    assert_eq!((head.status, head.signed_heads), ("ok", 2));
    assert_eq!(head.checkpoint, Some(second.clone()));

    // Two intervals and a minute later with no signing: stale.
    f.clock.advance(chrono::Duration::seconds(1261));
    let verdict = signer.verify(lifecycle.now()).await.unwrap();
    assert!(!verdict.ok);
    assert_eq!(verdict.head.unwrap().status, "stale");
}

#[tokio::test]
async fn a_chain_cut_short_or_rewritten_is_told_and_never_signed_over() {
    let (f, signer, _transit) = signer().await;
    let lifecycle = signer.lifecycle();
    lifecycle
        .create_tenant(&Caller::system(), new_tenant())
        .await
        .unwrap();
    signer.sign_if_due(true).await.unwrap().unwrap();
    // Events 1 (tenant) and 2 (its signed head); the checkpoint vouches for 1. Cut 1 and 2 off.
    sql(&f, "DELETE FROM audit_events WHERE seq >= 1").await;
    let verdict = signer.verify(lifecycle.now()).await.unwrap();
    assert!(!verdict.ok && verdict.checked == 0, "{verdict:?}");
    let head = verdict.head.unwrap();
    assert_eq!(head.status, "truncated", "{head:?}");
    assert!(head.reason.unwrap().contains("cut off"));

    // The signer refuses to sign over it, and audits that once.
    let refused = signer.sign_if_due(true).await.unwrap_err();
    assert!(matches!(refused, HeadError::Mismatch(_)), "{refused}");
    assert!(signer.sign_if_due(true).await.is_err());
    assert_eq!(actions(&signer).await, [MISMATCH_ACTION]);

    // Events appended since reach past the checkpoint's event, with another hash there.
    lifecycle
        .create_tenant(&Caller::system(), {
            let mut t = new_tenant();
            t.tenant_id = "t2".parse().unwrap();
            t
        })
        .await
        .unwrap();
    let head = signer.verify(lifecycle.now()).await.unwrap().head.unwrap();
    assert_eq!(head.status, "rewritten", "{head:?}");

    // An operator re-anchors after looking; then all is well again.
    let reset = signer
        .reset(&Caller::system(), "test restore")
        .await
        .unwrap();
    assert_eq!(reset.seq, 2);
    let verdict = signer.verify(lifecycle.now()).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert!(signer.sign_if_due(true).await.unwrap().is_some());
}

#[tokio::test]
async fn a_forged_signed_head_in_the_chain_is_invalid() {
    let (f, signer, _transit) = signer().await;
    let lifecycle = signer.lifecycle();
    signer.sign_if_due(true).await.unwrap().unwrap();
    // Someone with the database swaps the signature and recomputes the event's hash: the chain
    // holds, the signature does not.
    let forged = serde_json::to_string(&crate::audit_head::signed_tests::signed(
        &SigningKey::from_bytes(&[9; 32]),
        0,
        crate::store::GENESIS_HASH,
        "2026-01-01T12:00:00Z",
    ))
    .unwrap();
    let event = signer
        .store()
        .audit_events_from(1, 1, 1)
        .await
        .unwrap()
        .remove(0)
        .0;
    let hash = crate::store::expected_hash(&event, &forged);
    sql(
        &f,
        &format!("UPDATE audit_events SET detail = '{forged}', hash = '{hash}' WHERE seq = 1"),
    )
    .await;
    let verdict = signer.verify(lifecycle.now()).await.unwrap();
    assert_eq!(verdict.first_broken_seq, None, "the chain itself holds");
    let head = verdict.head.unwrap();
    assert_eq!((head.status, head.invalid_seq), ("invalid", Some(1)));
}
