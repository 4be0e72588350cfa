//! Checking the signed heads a walk along the chain meets (`audit verify`, `verify-bundle`):
//! each `audit.head.signed` event must carry a signature that verifies and vouch for the hash the
//! chain really has at the event it names.

use std::collections::VecDeque;

use serde::Serialize;

use super::{SIGNED_ACTION, SignedHead};
use crate::audit_head::HeadKeys;

/// How many recent events' hashes a walk keeps to check the heads signed after them: a head is
/// signed a few events before its event is appended, far fewer than this.
const WINDOW: usize = 65_536;

/// What a walk found of the signed heads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedHeads {
    /// `audit.head.signed` events met.
    pub signed_heads: u64,
    /// Of them, the ones whose signature was checked (all, when public keys were given).
    pub signatures_checked: u64,
    /// The newest signed head met.
    pub newest: Option<SignedHead>,
}

/// A signed head that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadProblem {
    /// The `audit.head.signed` event.
    pub seq: i64,
    pub reason: String,
}

/// Follows a walk along the chain, in order, from `anchor` on.
#[derive(Debug)]
pub struct HeadChecker<'k> {
    keys: Option<&'k HeadKeys>,
    /// `(seq, hash)` of the anchor and the latest events, oldest first.
    recent: VecDeque<(i64, String)>,
    found: SignedHeads,
}

impl<'k> HeadChecker<'k> {
    /// A walk that starts after event `anchor_seq` (0 for the whole chain) whose hash is
    /// `anchor_hash`; signatures are checked when `keys` are given.
    pub fn new(keys: Option<&'k HeadKeys>, anchor_seq: i64, anchor_hash: &str) -> Self {
        Self {
            keys,
            recent: VecDeque::from([(anchor_seq, anchor_hash.to_owned())]),
            found: SignedHeads::default(),
        }
    }

    /// The next event of the walk, whose hash and link already hold; `detail` is its exact
    /// stored text.
    pub fn observe(
        &mut self,
        seq: i64,
        action: &str,
        detail: &str,
        hash: &str,
    ) -> Result<(), HeadProblem> {
        if action == SIGNED_ACTION {
            self.check(seq, detail)?;
        }
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, hash.to_owned()));
        Ok(())
    }

    fn check(&mut self, seq: i64, detail: &str) -> Result<(), HeadProblem> {
        let problem = |reason: String| HeadProblem { seq, reason };
        let head: SignedHead =
            serde_json::from_str(detail).map_err(|e| problem(format!("not a signed head: {e}")))?;
        if head.seq >= seq {
            return Err(problem(format!(
                "signs event {}, which is not before it",
                head.seq
            )));
        }
        // Outside the window (older than the anchor of a bundle, or than the window) the hash
        // cannot be compared here; the signature still is.
        if let Some(front) = self.recent.front()
            && head.seq >= front.0
        {
            let at = usize::try_from(head.seq - front.0).unwrap_or(usize::MAX);
            match self.recent.get(at) {
                Some((_, hash)) if *hash == head.hash => {}
                _ => {
                    return Err(problem(format!(
                        "vouches for hash {} at event {}, but the chain has another there",
                        head.hash, head.seq
                    )));
                }
            }
        }
        if let Some(keys) = self.keys {
            head.verify(keys)
                .map_err(|why| problem(format!("the head of event {}: {why}", head.seq)))?;
            self.found.signatures_checked += 1;
        }
        self.found.signed_heads += 1;
        self.found.newest = Some(head);
        Ok(())
    }

    pub fn finish(self) -> SignedHeads {
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit_head::signed::tests::{keys_of, signed};
    use crate::store::GENESIS_HASH;
    use ed25519_dalek::SigningKey;

    fn detail(head: &SignedHead) -> String {
        serde_json::to_string(head).unwrap()
    }

    #[test]
    fn signed_heads_must_verify_and_match_the_chain() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let keys = keys_of(&key);
        let at = "2026-12-07T10:00:00Z";

        let mut walk = HeadChecker::new(Some(&keys), 0, GENESIS_HASH);
        walk.observe(1, "tenant.create", "{}", "h1").unwrap();
        walk.observe(2, "key.create", "{}", "h2").unwrap();
        let good = signed(&key, 2, "h2", at);
        walk.observe(3, SIGNED_ACTION, &detail(&good), "h3")
            .unwrap();
        let of_genesis = signed(&key, 0, GENESIS_HASH, at);
        walk.observe(4, SIGNED_ACTION, &detail(&of_genesis), "h4")
            .unwrap();
        let found = walk.finish();
        assert_eq!((found.signed_heads, found.signatures_checked), (2, 2));
        assert_eq!(found.newest, Some(of_genesis));

        // The chain has another hash at the signed event (rewritten since).
        let mut walk = HeadChecker::new(Some(&keys), 0, GENESIS_HASH);
        walk.observe(1, "tenant.create", "{}", "h1-rewritten")
            .unwrap();
        let problem = walk
            .observe(2, SIGNED_ACTION, &detail(&signed(&key, 1, "h1", at)), "h2")
            .unwrap_err();
        assert_eq!(problem.seq, 2);
        assert!(problem.reason.contains("another"), "{problem:?}");

        // A forged signature; a head of itself or later; a detail that is no head.
        let mut forged = signed(&key, 1, "h1", at);
        forged.signature = signed(&SigningKey::from_bytes(&[2; 32]), 1, "h1", at).signature;
        for (detail, why) in [
            (detail(&forged), "does not verify"),
            (detail(&signed(&key, 2, "h2", at)), "not before"),
            ("{\"seq\":1}".to_owned(), "not a signed head"),
        ] {
            let mut walk = HeadChecker::new(Some(&keys), 0, GENESIS_HASH);
            walk.observe(1, "tenant.create", "{}", "h1").unwrap();
            let problem = walk.observe(2, SIGNED_ACTION, &detail, "h2").unwrap_err();
            assert!(problem.reason.contains(why), "{why}: {problem:?}");
        }

        // Without keys, the links are still compared and the signatures counted as unchecked.
        let mut walk = HeadChecker::new(None, 10, "h10");
        walk.observe(11, SIGNED_ACTION, &detail(&forged), "h11")
            .unwrap();
        let found = walk.finish();
        assert_eq!((found.signed_heads, found.signatures_checked), (1, 0));
        let mut walk = HeadChecker::new(None, 10, "h10");
        let older = signed(&key, 5, "h5", at);
        walk.observe(11, SIGNED_ACTION, &detail(&older), "h11")
            .unwrap();
    }
}
