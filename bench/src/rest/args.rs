//! `keyward-bench rest`'s flags, and the run they ask for.

use std::path::Path;

use keyward_tests::Database;

use super::{Generator, Options, SECTION, markdown, run};
use crate::benchmark::Benchmark;
use crate::report::Publication;

/// `keyward-bench rest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of measured load per target and round.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rounds over all targets (interleaved).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Open connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Load generator threads (wrk -t).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Tenants in each database (each with a host and a token).
    #[arg(long, default_value_t = 20)]
    pub tenants: usize,
    /// `wrk` (needs `apt-get install wrk`: scripts/install-bench-deps) or `builtin`.
    #[arg(long, default_value = "wrk", value_parser = ["wrk", "builtin"])]
    pub generator: String,
    /// SQLite only.
    #[arg(long)]
    pub sqlite_only: bool,
    /// The test suite's version: 1 s per target, built-in client, 4 connections.
    #[arg(long)]
    pub smoke: bool,
}

impl Args {
    pub fn options(&self) -> Options {
        let mut o = if self.smoke {
            Options::smoke()
        } else {
            Options {
                seconds: self.seconds,
                rounds: self.rounds,
                connections: self.connections,
                threads: self.threads,
                tenants: self.tenants,
                generator: if self.generator == "builtin" {
                    Generator::Builtin
                } else {
                    Generator::Wrk
                },
                ..Options::default()
            }
        };
        if self.sqlite_only {
            o.backends = vec![Database::Sqlite];
        }
        o
    }
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `rest-ssh-credentials` section is replaced";

    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        let options = self.options();
        let report = run(&options).await?;
        let text = markdown(&report, &options.command(write));
        Ok(Publication::section(SECTION, text))
    }
}
