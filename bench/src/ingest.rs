//! Login-event ingest: how many events per second the control plane stores, attributed and
//! de-duplicated, into SQLite and into PostgreSQL.
//!
//! The batches go straight into the control plane's ingest (`agents::logins::ingest`, the code
//! the gRPC stream calls for each `LoginBatch`): attribution against the key history, the
//! insert with de-duplication by (host, cursor), and one hash-chained audit event per batch.

use std::path::Path;
use std::time::{Duration, Instant};

use keyward_common::HostId;
use keyward_common::proto::{LoginBatch, LoginEvent, LoginMethod, LoginOutcome};
use keyward_tests::{ControlPlane, Database, OpenBao, RawIdentity};

use crate::benchmark::Benchmark;
use crate::report::Publication;

/// One backend's figures.
#[derive(Debug, Clone)]
pub struct IngestResult {
    pub backend: &'static str,
    pub events: usize,
    pub batch: usize,
    pub elapsed: Duration,
}

impl IngestResult {
    pub fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

fn event(cursor: u64, fingerprint: &str) -> LoginEvent {
    // A realistic mix: most logins succeed with the managed key, some fail, some are scans.
    let (outcome, method, fingerprint) = match cursor % 10 {
        0 => (
            LoginOutcome::InvalidUser,
            LoginMethod::Password,
            String::new(),
        ),
        1 | 2 => (
            LoginOutcome::Failed,
            LoginMethod::Publickey,
            fingerprint.to_owned(),
        ),
        _ => (
            LoginOutcome::Accepted,
            LoginMethod::Publickey,
            fingerprint.to_owned(),
        ),
    };
    LoginEvent {
        cursor,
        at: "2026-11-28T10:00:00Z".into(),
        outcome: outcome.into(),
        method: method.into(),
        user: "tenant".into(),
        source_ip: "192.0.2.7".into(),
        source_port: 40_000 + (cursor % 20_000) as u32,
        key_type: if fingerprint.is_empty() {
            String::new()
        } else {
            "ED25519".into()
        },
        fingerprint,
        sshd_pid: 1000 + (cursor % 30_000) as u32,
        verified: true,
        ..LoginEvent::default()
    }
}

/// Stores `events` login events in batches of `batch` for one host on `database`.
pub async fn run(database: Database, events: usize, batch: usize) -> anyhow::Result<IngestResult> {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, database).await;
    let created = cp.create_tenant("ingest").await;
    let fingerprint = created["sshKeys"]["tenantSsh"]["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let identity = RawIdentity::enroll(&cp, "ingest").await;
    let host: HostId = identity.host_id.parse()?;
    let tenant = "ingest".parse()?;
    let lifecycle = cp.server().lifecycle.clone();
    let batches: Vec<LoginBatch> = (0..events)
        .collect::<Vec<_>>()
        .chunks(batch.max(1))
        .map(|chunk| LoginBatch {
            events: chunk
                .iter()
                .map(|&i| event(i as u64 + 1, &fingerprint))
                .collect(),
            dropped: 0,
        })
        .collect();
    let started = Instant::now();
    for b in &batches {
        keyward_server::agents::logins::ingest(&lifecycle, &host, &tenant, b)
            .await
            .map_err(|e| anyhow::anyhow!("ingest failed: {e}"))?;
    }
    let elapsed = started.elapsed();
    let stored = cp
        .admin_get("/api/v1/admin/audit/logins?tenantId=ingest&limit=1")
        .await
        .json();
    anyhow::ensure!(
        stored["events"][0]["cursor"] == events as u64,
        "the last event was not stored: {stored}"
    );
    Ok(IngestResult {
        backend: match database {
            Database::Sqlite => "SQLite",
            Database::Postgres => "PostgreSQL",
        },
        events,
        batch,
        elapsed,
    })
}

/// The results as a Markdown table.
pub fn markdown(results: &[IngestResult]) -> String {
    let mut out = String::from(
        "| backend | events | batch size | seconds | events/s |\n|---|---|---|---|---|\n",
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | **{:.0}** |\n",
            r.backend,
            r.events,
            r.batch,
            r.elapsed.as_secs_f64(),
            r.per_second()
        ));
    }
    out
}

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "login-ingest";

/// `keyward-bench ingest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events to store per backend.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Events per batch (the agent sends up to 500).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `login-ingest` section is replaced";

    /// Prints the table; the section adds the command and what was measured.
    async fn run(self, _write: Option<&Path>) -> anyhow::Result<Publication> {
        let mut results = Vec::new();
        for database in [Database::Sqlite, Database::Postgres] {
            results.push(run(database, self.events, self.batch).await?);
        }
        let table = markdown(&results);
        let section = format!(
            "### Login-event ingest\n\nCommand: `cargo run --release -p keyward-bench -- ingest --events {} --batch {}`. \
             Batches as an agent sends them, through the control plane's ingest path (attribution, \
             de-duplication, one audit event per batch), into each backend.\n\n{table}",
            self.events, self.batch
        );
        Ok(Publication {
            stdout: table,
            sections: vec![(SECTION.to_owned(), section)],
        })
    }
}
