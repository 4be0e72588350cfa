//! keyward's benchmarks (`keyward-bench`). Benchmarks, not tests: nothing here asserts a
//! timing; the test suite only runs a small smoke version so the benchmarks keep working.
//!
//! - [`propagation`]: from the REST rotate call returning to the rotated key's file renamed on
//!   the host, with 1 and with 1,000 connected agents.
//! - [`cluster`]: OpenBao and the control plane on loopback ports, and the REST calls.
//! - [`fleet`]: simulated hosts, each a tenant with an enrolled agent running in this process.
//! - [`stats`], [`report`]: summaries, Markdown tables and the sections of `BENCHMARKS.md`.
//! - [`machine`], [`sys`]: what the numbers were measured on, and the process's limits.

pub mod cluster;
pub mod fleet;
pub mod ingest;
pub mod machine;
pub mod propagation;
pub mod report;
pub mod stats;
pub mod sys;
