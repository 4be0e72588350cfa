//! keyward's per-host agent (`keyward-agent`).
//!
//! - [`writer`]: writes a user's `~/.ssh/authorized_keys` safely as root in a home the user
//!   controls (no symlink or hard link a user plants is ever followed).
//! - [`sessions`]: ends a user's live SSH sessions.
//! - [`watch`]: notices outside edits of managed files.

pub mod sessions;
pub mod watch;
pub mod writer;
