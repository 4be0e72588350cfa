//! What a `rest` run measured: per round and target, the rate, latency and errors; the Vault
//! calls seen under load; the body sizes.

use std::collections::BTreeMap;

use keyward_tests::Database;

use super::Options;
use crate::machine::{Load, Machine};

/// One target measured once.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub requests: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers other than 200, and socket errors.
    pub errors: u64,
    /// Bytes per answer, headers included (wrk), or body only (builtin).
    pub bytes_per_answer: f64,
}

/// What is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    OpenBao,
    Keyward(Backend),
}

/// A keyward backend (the harness's `Database`, orderable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl From<Database> for Backend {
    fn from(database: Database) -> Self {
        match database {
            Database::Sqlite => Backend::Sqlite,
            Database::Postgres => Backend::Postgres,
        }
    }
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::OpenBao => "OpenBao KV v2 read",
            Target::Keyward(Backend::Sqlite) => "keyward, SQLite",
            Target::Keyward(Backend::Postgres) => "keyward, PostgreSQL",
        }
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct RestReport {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub build: &'static str,
    pub bao_version: String,
    pub wrk_version: Option<String>,
    pub load_before: Load,
    pub load_after: Load,
    /// Per round, per target.
    pub rounds: Vec<BTreeMap<Target, Measurement>>,
    /// Vault requests the control planes sent while under load, per backend: (count, distinct
    /// request lines).
    pub vault_calls_under_load: BTreeMap<Backend, (u64, Vec<String>)>,
    /// Bytes of keyward's answer body and of OpenBao's.
    pub body_bytes: BTreeMap<Target, usize>,
}

impl RestReport {
    /// Per target: the measurements of every round.
    pub fn of(&self, target: Target) -> Vec<&Measurement> {
        self.rounds.iter().filter_map(|r| r.get(&target)).collect()
    }

    /// The targets measured, OpenBao first.
    pub fn targets(&self) -> Vec<Target> {
        let mut t: Vec<Target> = self.rounds.iter().flat_map(|r| r.keys().copied()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// Per round, keyward's rate over OpenBao's.
    pub fn ratios(&self, backend: Backend) -> Vec<f64> {
        self.rounds
            .iter()
            .filter_map(|r| {
                let k = r.get(&Target::Keyward(backend))?;
                let b = r.get(&Target::OpenBao)?;
                (b.per_second > 0.0).then(|| k.per_second / b.per_second)
            })
            .collect()
    }
}
