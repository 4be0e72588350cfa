//! The bounds of a desired state's sshd files (`DesiredState.sshd` and `ManagedUser.principals`
//! in the agent protocol), shared by the control plane, which never sends more, and the agent,
//! which refuses more.

/// The most CA keys sshd is told to trust at once: the current CA and the next during a
/// rotation need two; the rest is headroom for several purposes' CAs.
pub const MAX_USER_CA_KEYS: usize = 16;

/// The most principals one managed user may have.
pub const MAX_PRINCIPALS_PER_USER: usize = 256;

/// The most jump principals a bastion's jump user may have: two per tenant (its admin and tenant
/// users) for 25,000 tenants. About 60 bytes each in the state (3 MB, within
/// [`MAX_STATE_MESSAGE_BYTES`] beside the largest revocation list) and 100 a line in the
/// principals file, which sshd reads at every certificate login of the jump user.
pub const MAX_JUMP_PRINCIPALS: usize = 50_000;

/// The most destinations one jump principal may forward to.
pub const MAX_PERMIT_OPEN_PER_PRINCIPAL: usize = 64;

/// The largest revocation list: 100,000 revoked keys by SHA-256 take 3.2 MB, serials far less.
/// A bound, not a size to aim at: sshd (OpenSSH 9.2) reads the whole list at every
/// authentication in a time that grows with the square of its size — about 30 ms per login at
/// 400 KiB, 1.6 s at 3.5 MiB (`keyward-bench certificates`, BENCHMARKS.md). keyward's lists are
/// per host (that host's users' denied keys), a few kilobytes.
pub const MAX_REVOKED_KEYS_BYTES: usize = 8 << 20;

/// The largest control-plane message the agent decodes: a desired state with the largest
/// revocation list and room for the users' keys (tonic's default is 4 MiB). The agent's own
/// messages are bounded by the control plane's, far smaller.
pub const MAX_STATE_MESSAGE_BYTES: usize = 16 << 20;

/// What an OpenSSH binary key revocation list starts with (`PROTOCOL.krl`).
pub const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
