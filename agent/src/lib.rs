//! keyward's per-host agent (`keyward-agent`).
//!
//! - [`writer`]: writes a user's `~/.ssh/authorized_keys` safely as root in a home the user
//!   controls (no symlink or hard link a user plants is ever followed).
//! - [`sessions`]: finds and ends a user's live SSH sessions; [`sessions::revoke`] decides which
//!   of them a revocation ends.
//! - [`procs`]: one read of `/proc` (processes, the real sshd's sockets, the TCP tables).
//! - [`watch`]: notices outside edits of managed files.
//! - [`config`], [`state_dir`]: the configuration file and the state directory.
//! - [`enroll`]: `keyward-agent enroll` (one-time token and CSR for a client certificate).
//! - [`runtime`]: `keyward-agent run` (cached state at start, then the control plane's stream);
//!   [`runtime::run_with`] runs an agent in-process with a chosen [`apply::Applier`].
//! - [`tls`], [`client`], `link`: the mTLS gRPC connection and its reconnect schedule.
//! - [`apply`]: the seam between the stream logic and the writer and sessions.
//! - [`host_keys`], [`sd_notify`]: SSH host keys for Hello; systemd readiness and watchdog.
//! - [`logins`]: the SSH login audit (sshd's log to the control plane) and the evidence a
//!   revocation decides on.
//!
//! Layers: no two modules import each other, directly or through others (`make lint` runs
//! `scripts/check-layers agent/src`). The runtime uses everything; the login audit uses
//! sessions, procs and the state directory; sessions use procs; the writer uses nothing of the
//! crate.

pub mod procs;
pub mod sessions;
pub mod watch;
pub mod writer;

pub mod apply;
pub mod client;
pub mod config;
pub mod endpoints;
pub mod enroll;
pub mod host_keys;
mod link;
pub mod logins;
pub mod recordings;
pub mod runtime;
/// Moved to `keyward_common::sd_notify` (the control plane uses it too); re-exported here.
///
/// **Why not the `sd-notify` crate** (or the `systemd` crate's `daemon::notify`): both take the
/// socket from this process's environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`) when they send,
/// while the runtime is handed a [`sd_notify::Notifier`] with an explicit address
/// ([`sd_notify::Notifier::from_vars`]), so that the in-process tests and the many-agents
/// benchmark give each agent its own socket in one process (an environment variable is one per
/// process). What remains of the hand-written code then is one `sendto` of a datagram (with an
/// abstract-address case); the `systemd` crate would also tie readiness to libsystemd, which an
/// agent built without the `journald` feature does not link.
pub use keyward_common::sd_notify;
pub mod state_dir;
pub mod tls;

pub use config::{AgentConfig, BastionConfig, UserConfig, UserMode};
pub use runtime::{AgentStatus, RuntimeDeps, RuntimeError, run, run_with};
