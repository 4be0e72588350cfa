//! The audit chain's signed head: truncation and rewrites told, not only edits.
//!
//! The hash chain (`store::audit`) shows an edited, inserted or deleted event, but not events cut
//! off its end, nor a chain rewritten whole by someone who recomputed every hash. So, every
//! `audit_signing.interval` (and at each start), a replica:
//!
//! 1. reads the **checkpoint** in Vault (`{mount}/_keyward/audit_head`, KV v2): the newest signed
//!    head, out of reach of whoever holds only the database;
//! 2. checks that the chain in SQL still reaches it — as long or longer, with the checkpoint's
//!    hash at its event. If not, the log was cut or rewritten since: it signs nothing, appends an
//!    `audit.head.mismatch` failure and raises `keyward_audit_head_mismatch`, until an operator
//!    has looked and re-anchored (`keyward-server audit reset-checkpoint`, audited);
//! 3. signs the current head (`seq`, `hash`, time) with an Ed25519 key of Vault's transit engine
//!    that never leaves Vault, appends the signed head to the chain as an `audit.head.signed`
//!    event (so that it reaches the SIEM and every bundle), and moves the checkpoint to it with
//!    check-and-set (replicas never move it back).
//!
//! `audit verify` (and `GET /api/v1/admin/audit/verify`) then checks every signed head in the
//! chain against the transit key's public keys and the chain's hashes, and the checkpoint against
//! the chain's end: `truncated` (the chain ends before it), `rewritten` (another hash there),
//! `invalid` (a signature that does not verify), `stale` (no replica signed for two intervals).
//! `audit verify-bundle --keys` checks the signed heads inside a bundle offline.
//!
//! What it cannot tell: events appended after the newest checkpoint and cut off before the next
//! (at most one interval's worth); and anyone holding the control plane's Vault token can sign.

mod check;
mod signed;
mod signer;
#[cfg(test)]
mod tests;
mod verify;

pub use check::{HeadChecker, HeadProblem, SignedHeads};
#[cfg(test)]
pub(crate) use signed::tests as signed_tests;
pub use signed::{HeadKeys, HeadKeysFile, SignedHead, message};
pub use signer::{AuditHeadSigner, HeadError};
pub use verify::{AuditVerdict, HeadVerdict, combine};

/// The event that carries a signed head.
pub const SIGNED_ACTION: &str = "audit.head.signed";
/// The event appended when the chain no longer reaches the checkpoint.
pub const MISMATCH_ACTION: &str = "audit.head.mismatch";
/// The event of an operator's re-anchoring after a restore.
pub const RESET_ACTION: &str = "audit.head.reset";
