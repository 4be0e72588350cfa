//! The test harness: real OpenBao, real PostgreSQL, a real control plane on a loopback port.
//!
//! Tests read as the story they check:
//! `let bao = OpenBao::start().await; let cp = ControlPlane::start(&bao).await;`
//! Every part that is missing makes the test fail with the command that installs it.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::missing_panics_doc)]

pub mod agent;
pub mod browser;
pub mod control_plane;
pub mod deployment;
pub mod openbao;
pub mod postgres;
pub mod raw_agent;
pub mod sshd;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use agent::Agent;
pub use browser::Browser;
pub use control_plane::{ControlPlane, Database, Reply};
pub use deployment::Deployment;
pub use openbao::OpenBao;
pub use postgres::PgSchema;
pub use raw_agent::{RawIdentity, RawStream};
pub use sshd::{KeyFile, Sshd, TestUser};

/// The workspace root (where `.tools/` is installed by `make test-deps`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Polls `check` until it returns `Some`, for at most `timeout`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A fresh, valid, unique tenant id.
pub fn unique_tenant(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Finds a program on PATH or fails the test with how to install it.
pub fn require_program(name: &str, install_hint: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} is not installed: {install_hint}"))
}
