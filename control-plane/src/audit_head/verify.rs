//! `audit verify` with signed heads: the chain, every signed head in it, and Vault's checkpoint
//! against the chain's end.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{AuditHeadSigner, HeadChecker, HeadError, HeadProblem, SignedHead};
use crate::clock::parse_iso8601;
use crate::store::{ChainVerdict, GENESIS_HASH};

/// `GET /api/v1/admin/audit/verify`, `keyward-server audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditVerdict {
    /// The chain holds and, where the head is signed, so do its signed heads and checkpoint.
    pub ok: bool,
    pub checked: i64,
    /// The first event whose stored hash or link does not match.
    pub first_broken_seq: Option<i64>,
    pub reason: Option<String>,
    /// The signed heads; absent where `audit_signing.key` is not set.
    pub head: Option<HeadVerdict>,
}

/// What the signed heads and the checkpoint say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadVerdict {
    /// `ok`; `truncated` (the chain ends before the checkpoint: events were cut off);
    /// `rewritten` (another hash at the checkpoint's event); `invalid` (a signed head or the
    /// checkpoint does not verify, or vouches for another hash than the chain's); `stale` (no
    /// replica has signed for two intervals: keyward stopped, or cannot reach Vault);
    /// `unsigned` (no checkpoint yet).
    pub status: &'static str,
    pub reason: Option<String>,
    /// `audit.head.signed` events in the chain, each checked.
    pub signed_heads: u64,
    /// The `audit.head.signed` event that does not hold, for `invalid`.
    pub invalid_seq: Option<i64>,
    /// The newest signed head in the chain.
    pub newest: Option<SignedHead>,
    /// The checkpoint in Vault.
    pub checkpoint: Option<SignedHead>,
}

impl AuditHeadSigner {
    /// Verifies the whole chain with its signed heads and the checkpoint, at `now`.
    pub async fn verify(&self, now: DateTime<Utc>) -> Result<AuditVerdict, HeadError> {
        let store = self.store();
        let keys = self.keys().await?;
        let checkpoint = self.checkpoint().await?;
        let mut checker = HeadChecker::new(Some(&keys), 0, GENESIS_HASH);
        let mut problem: Option<HeadProblem> = None;
        let chain = store
            .verify_audit_chain_with(&mut |event, detail| {
                if problem.is_none()
                    && let Err(p) = checker.observe(event.seq, &event.action, detail, &event.hash)
                {
                    problem = Some(p);
                }
            })
            .await?;
        let found = checker.finish();
        let verdict = |status: &'static str, reason: Option<String>, invalid_seq| HeadVerdict {
            status,
            reason,
            signed_heads: found.signed_heads,
            invalid_seq,
            newest: found.newest.clone(),
            checkpoint: checkpoint.as_ref().map(|(head, _)| head.clone()),
        };
        let head = if let Some(p) = problem {
            verdict("invalid", Some(p.reason), Some(p.seq))
        } else if let Some((cp, _)) = &checkpoint {
            let head_seq = store.audit_head().await?.map_or(0, |(seq, _)| seq);
            if let Err(why) = cp.verify(&keys) {
                verdict("invalid", Some(format!("the checkpoint: {why}")), None)
            } else if let Err(why) = self.reaches(cp, head_seq).await? {
                let status = if head_seq < cp.seq {
                    "truncated"
                } else {
                    "rewritten"
                };
                verdict(status, Some(why), None)
            } else if parse_iso8601(&cp.signed_at).is_none_or(|at| {
                (now - at).to_std().unwrap_or_default() > self.config().stale_after()
            }) {
                let why = format!(
                    "the newest signed head is from {}: no replica has signed since (keyward \
                     stopped, or cannot reach Vault's transit key)",
                    cp.signed_at
                );
                verdict("stale", Some(why), None)
            } else {
                verdict("ok", None, None)
            }
        } else {
            let why = "Vault holds no checkpoint yet: no replica has signed the head".to_owned();
            verdict("unsigned", Some(why), None)
        };
        Ok(combine(chain, Some(head)))
    }
}

/// The verdict of a chain walk and, when the head is signed, of its signed heads.
pub fn combine(chain: ChainVerdict, head: Option<HeadVerdict>) -> AuditVerdict {
    AuditVerdict {
        ok: chain.ok && head.as_ref().is_none_or(|h| h.status == "ok"),
        checked: chain.checked,
        first_broken_seq: chain.first_broken_seq,
        reason: chain.reason,
        head,
    }
}
