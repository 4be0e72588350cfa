//! What a `rest` run does (durations, concurrency, rounds, tenants, generator, backends), and
//! the command line that reproduces it for the report.

use std::fmt::Write as _;

use keyward_tests::Database;

use super::Generator;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds of load per target and round.
    pub seconds: u64,
    /// Seconds of unmeasured load before each measurement.
    pub warmup_seconds: u64,
    /// Open connections (wrk `-c`).
    pub connections: usize,
    /// Generator threads (wrk `-t`).
    pub threads: usize,
    /// Rounds over all targets.
    pub rounds: usize,
    /// Tenants (each with a host and a token) in each database.
    pub tenants: usize,
    pub generator: Generator,
    pub backends: Vec<Database>,
    /// Smoke mode: timings meaningless, only the machinery is checked.
    pub smoke: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seconds: 10,
            warmup_seconds: 2,
            connections: 32,
            threads: 2,
            rounds: 3,
            tenants: 20,
            generator: Generator::Wrk,
            backends: vec![Database::Sqlite, Database::Postgres],
            smoke: false,
        }
    }
}

impl Options {
    /// The test suite's version: one second per target, the built-in client, 4 connections.
    pub fn smoke() -> Self {
        Self {
            seconds: 1,
            warmup_seconds: 0,
            connections: 4,
            threads: 1,
            rounds: 1,
            tenants: 2,
            generator: Generator::Builtin,
            smoke: true,
            ..Self::default()
        }
    }

    /// The command line that reproduces this run.
    pub fn command(&self, write: Option<&std::path::Path>) -> String {
        let mut c = String::from("cargo run --release -p keyward-bench -- rest");
        if self.smoke {
            c.push_str(" --smoke");
        } else {
            let d = Self::default();
            if self.seconds != d.seconds {
                let _ = write!(c, " --seconds {}", self.seconds);
            }
            if self.rounds != d.rounds {
                let _ = write!(c, " --rounds {}", self.rounds);
            }
            if self.connections != d.connections {
                let _ = write!(c, " --connections {}", self.connections);
            }
            if self.threads != d.threads {
                let _ = write!(c, " --threads {}", self.threads);
            }
            if self.tenants != d.tenants {
                let _ = write!(c, " --tenants {}", self.tenants);
            }
            if self.generator != d.generator {
                let _ = write!(c, " --generator {}", self.generator.name());
            }
        }
        if let Some(path) = write {
            let _ = write!(c, " --write {}", path.display());
        }
        c
    }
}
