//! The test harness: real OpenBao, real PostgreSQL, a real control plane on a loopback port.
//!
//! Tests read as the story they check:
//! `let bao = OpenBao::start().await; let cp = ControlPlane::start(&bao).await;`
//! Every part that is missing makes the test fail with the command that installs it.
//! [`demo`] builds the quickstart's deployment (`make quickstart`) from the same parts.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::missing_panics_doc)]

pub mod agent;
pub mod browser;
pub mod cluster;
pub mod control_plane;
pub mod demo;
pub mod deployment;
pub mod haproxy;
pub mod oidc_provider;
pub mod openbao;
pub mod openbao_cluster;
pub mod own_key;
pub mod pg_server;
pub mod postgres;
pub mod raw_agent;
pub mod server_cli;
pub mod siem;
pub mod sql_backup;
pub mod sse;

pub use agent::Agent;
pub use browser::Browser;
pub use control_plane::{ControlPlane, Database, Reply};
pub use deployment::Deployment;
pub use haproxy::HaProxy;
pub use oidc_provider::{HttpSignIn, IdpUser, OidcProvider};
pub use openbao::OpenBao;
pub use openbao_cluster::OpenBaoCluster;
pub use own_key::OwnKey;
pub use postgres::{PgDatabase, PgSchema};
pub use raw_agent::{RawIdentity, RawStream};
// Users, sshd, polling and `require_program` are shared with the agent's tests.
pub use keyward_test_support::{
    KeyFile, Sshd, SshdOptions, TestUser, eventually, free_port, require_program, workspace_root,
};

/// A fresh, valid, unique tenant id.
pub fn unique_tenant(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}
