//! keyward's benchmarks (`keyward-bench`). Benchmarks, not tests: nothing here asserts a
//! timing; the test suite only runs a small smoke version so the benchmarks keep working.
//!
//! - [`propagation`]: from the REST rotate call returning to the rotated key's file renamed on
//!   the host, with 1 and with 1,000 connected agents.
//! - [`keygen`]: RSA-4096 keys per second on one core, keyward's generator beside `ssh-keygen`.
//! - [`rotate_all`]: a bulk RSA-4096 rotation against pure key generation on all cores.
//! - [`audit_export`]: audit events per second to each SIEM sink, and what sinks add to a key
//!   operation.
//! - [`rotate_latency`]: one RSA-4096 rotate call with the key pool off and on.
//! - [`cluster`]: OpenBao and the control plane on loopback ports, and the REST calls.
//! - [`streams`]: the control plane (in a child process) holding N agent streams: memory per
//!   agent and idle CPU.
//! - [`fanout`]: rotate-all of N Ed25519 tenants, from the call to every host's acknowledgement.
//! - [`revocation`]: revoke → key gone from the file and its session ended, plain and with a
//!   tenant stalling the agent; the agent's CPU under a tenant's chmod loop.
//! - [`live_hosts`]: the live hosts view with 10,000 hosts reporting and 500 admins watching:
//!   control plane CPU and memory, bytes per stream per host change, a tenant's request latency.
//! - [`recording`]: session recording's cost on the host: the agent's CPU and the stream's bytes
//!   a minute of a busy and a flooding session, and the login latency it adds.
//! - [`replicas`]: three control-plane replicas on one PostgreSQL database: propagation across
//!   replicas, and the reconnection storm when one of them is killed.
//! - [`agent_warnings`]: the in-process agents' warnings, counted by message.
//! - [`renames`]: waiting for a rotated key to be in a simulated host's file.
//! - [`certificates`]: SSH user certificates signed through OpenBao beside its KV write; KRL
//!   size, encode, apply and read time with 100,000 revocations; sshd's login time with it.
//! - [`certificate_revocation`]: REST revoke of a certificate → its new logins refused by a real
//!   sshd, with 1 and 1,000 agents of the tenant connected.
//! - [`fleet`]: simulated hosts, each a tenant with an enrolled agent running in this process.
//! - [`benchmark`], [`flags`]: the interface every benchmark subcommand implements, and the
//!   flags several share.
//! - [`stats`], [`report`]: summaries, Markdown tables and the sections of `BENCHMARKS.md`.
//! - [`machine`], [`sys`]: what the numbers were measured on, and the process's limits.

pub mod agent_idle;
pub mod agent_warnings;
pub mod audit_export;
pub mod benchmark;
pub mod certificate_revocation;
pub mod certificates;
pub mod cluster;
pub mod fanout;
pub mod flags;
pub mod fleet;
pub mod ingest;
pub mod keygen;
pub mod live_hosts;
pub mod machine;
pub mod propagation;
pub mod recording;
pub mod renames;
pub mod replicas;
pub mod report;
pub mod rest;
pub mod revocation;
pub mod rotate_all;
pub mod rotate_latency;
pub mod stats;
pub mod streams;
pub mod suite;
pub mod sys;
