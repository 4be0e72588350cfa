//! The test support every keyward crate's tests share (issue #14): real Unix users removed again
//! on drop, Debian's sshd on a free loopback port, the KEX-injection client, process guards,
//! bounded polling (sync and async), loopback ports, and loud failures when a needed program is missing.
//!
//! One idea per module; the useful names are re-exported at the root. Test code: a failed
//! unwrap is a failed test.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod kex;
pub mod poll;
pub mod port;
pub mod proc;
pub mod require;
pub mod sshd;
pub mod user;

use std::path::PathBuf;

pub use kex::inject_kex_line;
pub use poll::{eventually, wait_for};
pub use port::{free_port, port_is_free, preferred_or_free};
pub use proc::{Group, Proc};
pub use require::{require, require_program, require_root};
pub use sshd::{KeyFile, Sshd, SshdOptions};
pub use user::{TestUser, homes_dir, useradd};

/// The workspace root (where `.tools/` is installed by `make test-deps`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
