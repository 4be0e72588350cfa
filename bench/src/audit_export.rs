//! `keyward-bench audit-export`: audit events delivered per second to each kind of sink, and
//! what three sinks (one of them down) add to a key operation, side by side in one run.
//!
//! 1. **Throughput.** A control plane in this process (SQLite, its own OpenBao dev server) gets
//!    `events` audit events appended straight to its store. Then, one sink at a time, an
//!    [`AuditExport`] with that one sink (a new name, so its cursor starts at 0) is started over
//!    the same store and timed until the sink has confirmed the last event. Receivers are real:
//!    Debian's rsyslogd over TLS (`rsyslog-gnutls`), an HTTPS endpoint checking the HMAC
//!    signature, a file on the state directory's disk.
//! 2. **Added latency.** Two control planes, alike but that one has three sinks configured — a
//!    file, the HTTPS endpoint, and syslog over TLS to a port where nothing listens (down the
//!    whole run). Rounds of one tenant rotate call (Ed25519) to each, alternating which goes
//!    first; each call from sending to reading the answer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use keyward_server::audit_export::AuditExport;
use keyward_server::clock::SystemClock;
use keyward_server::config::{
    AuditExportConfig, AuditFormat, AuditSinkConfig, SinkTarget, SyslogTransport,
};
use keyward_server::store::{NewAuditEvent, Store};
use keyward_tests::control_plane::TestTls;
use keyward_tests::siem::{RsyslogTls, WebhookReceiver};
use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::cluster::{Cluster, ClusterOptions};
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::stats::Summary;

const ROTATE: &str = "/api/v1/tenant/infrastructure/ssh-credentials/rotate";
const HMAC_KEY: &[u8] = b"keyward-bench-audit-export-hmac-key-0123456789";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Audit events each sink is timed delivering.
    pub events: usize,
    /// Rotate calls timed on each control plane.
    pub rotations: usize,
}

impl Options {
    pub fn new() -> Self {
        Self {
            events: 20_000,
            rotations: 200,
        }
    }

    pub fn smoke() -> Self {
        Self {
            events: 300,
            rotations: 5,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

/// One sink's throughput.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkRun {
    pub sink: String,
    pub events: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditExportResult {
    pub options: Options,
    pub machine: Machine,
    pub started_at: String,
    pub load_before: Load,
    pub load_after: Load,
    pub sinks: Vec<SinkRun>,
    /// Milliseconds per rotate call.
    pub without_sinks: Vec<f64>,
    pub with_sinks: Vec<f64>,
}

/// The receivers, running for the whole benchmark.
struct Receivers {
    dir: tempfile::TempDir,
    rsyslog: RsyslogTls,
    webhook: WebhookReceiver,
    ca_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
}

impl Receivers {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keyward-bench-siem-")
            .tempdir()?;
        let tls = TestTls::generate();
        let rsyslog = RsyslogTls::start(&dir.path().join("rsyslog"), &tls).await;
        let webhook = WebhookReceiver::start(&tls, HMAC_KEY).await;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &tls.ca_pem)?;
        let key_file = dir.path().join("hmac.key");
        std::fs::write(&key_file, HMAC_KEY)?;
        Ok(Self {
            dir,
            rsyslog,
            webhook,
            ca_file,
            key_file,
        })
    }

    fn syslog(&self, name: &str, port: u16) -> AuditSinkConfig {
        AuditSinkConfig {
            name: name.into(),
            format: AuditFormat::Keyward,
            to: SinkTarget::Syslog {
                transport: SyslogTransport::Tls,
                address: format!("127.0.0.1:{port}"),
                server_name: Some("localhost".into()),
                ca_file: Some(self.ca_file.clone()),
                client_cert: None,
                client_key: None,
                facility: "authpriv".into(),
            },
        }
    }

    fn webhook(&self, name: &str) -> AuditSinkConfig {
        AuditSinkConfig {
            name: name.into(),
            format: AuditFormat::Ocsf,
            to: SinkTarget::Webhook {
                url: self.webhook.url(),
                hmac_key_file: self.key_file.clone(),
                ca_file: Some(self.ca_file.clone()),
            },
        }
    }

    fn file(&self, name: &str, format: AuditFormat) -> AuditSinkConfig {
        AuditSinkConfig {
            name: name.into(),
            format,
            to: SinkTarget::File {
                path: self.dir.path().join(format!("{name}.jsonl")),
            },
        }
    }
}

async fn append_events(store: &Store, events: usize) -> anyhow::Result<()> {
    const PER_TX: usize = 500;
    let mut done = 0;
    while done < events {
        let mut tx = store.begin().await?;
        for i in done..(done + PER_TX).min(events) {
            tx.append_audit(&NewAuditEvent {
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                actor_token_id: Some(format!("bench-token-{}", i % 7)),
                actor_role: "admin".into(),
                action: if i % 2 == 0 { "key.rotate" } else { "token.issue" },
                tenant_id: Some(format!("bench-{}", i % 100).parse()?),
                outcome: "success",
                source_addr: Some("192.0.2.10:50000".into()),
                detail: serde_json::json!({ "kind": "tenant", "generation": i, "newKeyFingerprint": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }),
            })
            .await?;
        }
        tx.commit().await?;
        done = (done + PER_TX).min(events);
    }
    Ok(())
}

/// Starts `sink` alone over `store` and times it delivering everything up to the head.
async fn time_sink(store: &Store, sink: AuditSinkConfig) -> anyhow::Result<SinkRun> {
    let name = sink.name.clone();
    let config = AuditExportConfig {
        sinks: vec![sink],
        poll_interval: Duration::from_millis(20),
        ..AuditExportConfig::default()
    };
    let export = Arc::new(AuditExport::new(
        &config,
        store.clone(),
        Arc::new(SystemClock),
        &format!("bench-{name}"),
    )?);
    let head = store.audit_head().await?.map_or(0, |(seq, _)| seq);
    let started = Instant::now();
    let tasks = export.spawn();
    let deadline = started + Duration::from_secs(600);
    loop {
        let status = export.status().await?;
        if status.first().is_some_and(|s| s.delivered_seq >= head) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sink {name} did not catch up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    for task in tasks {
        task.abort();
    }
    export.release().await;
    Ok(SinkRun {
        sink: name,
        events: usize::try_from(head)?,
        seconds,
    })
}

async fn rotate_ms(cluster: &Cluster, token: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    cluster.post(ROTATE, token, None, 200).await?;
    Ok(1000.0 * started.elapsed().as_secs_f64())
}

pub async fn run(options: &Options) -> anyhow::Result<AuditExportResult> {
    let machine = Machine::detect();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = Load::now();
    let receivers = Receivers::start().await?;

    // 1. Throughput.
    let source = Cluster::start(&ClusterOptions::default()).await?;
    let store = source
        .lifecycle()
        .context("the control plane runs in this process")?
        .store()
        .clone();
    append_events(&store, options.events).await?;
    eprintln!(
        "audit-export: {} events appended; timing each sink",
        options.events
    );
    let mut sinks = Vec::new();
    for sink in [
        receivers.file("file-keyward", AuditFormat::Keyward),
        receivers.file("file-ocsf", AuditFormat::Ocsf),
        receivers.webhook("webhook-ocsf"),
        receivers.syslog("syslog-tls-keyward", receivers.rsyslog.port),
    ] {
        let run = time_sink(&store, sink).await?;
        eprintln!(
            "audit-export: {} {:.0} events/s",
            run.sink,
            run.events as f64 / run.seconds
        );
        sinks.push(run);
    }
    source.shutdown().await?;

    // 2. Added latency.
    // A port nothing listens on: bound, read and closed.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let three = AuditExportConfig {
        sinks: vec![
            receivers.file("latency-file", AuditFormat::Keyward),
            receivers.webhook("latency-webhook"),
            receivers.syslog("latency-down", dead_port),
        ],
        ..AuditExportConfig::default()
    };
    let plain = Cluster::start(&ClusterOptions::default()).await?;
    let exporting = Cluster::start(&ClusterOptions {
        audit_export: Some(three),
        ..ClusterOptions::default()
    })
    .await?;
    let mut tokens = Vec::new();
    for cluster in [&plain, &exporting] {
        cluster
            .create_tenant("latency", "tenant", "kwadmin")
            .await?;
        tokens.push(cluster.tenant_token("latency").await?);
    }
    let mut without_sinks = Vec::with_capacity(options.rotations);
    let mut with_sinks = Vec::with_capacity(options.rotations);
    for i in 0..options.rotations {
        for exported in [i % 2 == 0, i % 2 != 0] {
            if exported {
                with_sinks.push(rotate_ms(&exporting, &tokens[1]).await?);
            } else {
                without_sinks.push(rotate_ms(&plain, &tokens[0]).await?);
            }
        }
    }
    plain.shutdown().await?;
    exporting.shutdown().await?;
    let load_after = Load::now();
    drop(receivers);
    Ok(AuditExportResult {
        options: options.clone(),
        machine,
        started_at,
        load_before,
        load_after,
        sinks,
        without_sinks,
        with_sinks,
    })
}

pub fn command_line(options: &Options, write: Option<&Path>) -> String {
    let mut cmd = String::from("cargo run --release -p keyward-bench -- audit-export");
    if *options == Options::smoke() {
        cmd.push_str(" --smoke");
    } else if *options != Options::new() {
        cmd.push_str(&format!(
            " --events {} --rotations {}",
            options.events, options.rotations
        ));
    }
    if let Some(path) = write {
        cmd.push_str(&format!(" --write {}", path.display()));
    }
    cmd
}

pub const SECTION: &str = "audit-export";

pub fn markdown(result: &AuditExportResult, write: Option<&Path>) -> String {
    use std::fmt::Write;
    let o = &result.options;
    let mut out = String::new();
    let _ = write!(
        out,
        "## Audit export: events per second to each sink, and what three sinks add to a key operation\n\n\
         Command: `{command}`\n\n\
         Machine: {machine}. Started {started} (load average {before} before, {after} after).\n\n\
         Method: **throughput** — {events} audit events appended to a control plane's SQLite \
         store, then each sink started alone over it (its cursor at 0, `audit_export.batch` \
         200) and timed until it confirmed the last event. Receivers are real: Debian's \
         rsyslogd over TLS (rsyslog-gnutls, one TLS connection per batch, delivered once \
         rsyslogd read to its end), an HTTPS endpoint in this process checking each body's \
         HMAC-SHA256, a file (written and fsynced per batch). **Added latency** — two control \
         planes alike (SQLite, their own OpenBao dev servers, Ed25519), one with three sinks: a \
         file, the HTTPS endpoint and syslog over TLS to a port where nothing listens (down the \
         whole run, retried with backoff); {rotations} rounds of one tenant rotate call to \
         each, alternating which goes first, from sending to reading the answer.\n\n\
         | sink (format) | events | seconds | **events/s** |\n|---|---:|---:|---:|\n",
        command = command_line(o, write),
        machine = result.machine.describe(),
        started = result.started_at,
        before = result.load_before,
        after = result.load_after,
        events = o.events,
        rotations = o.rotations,
    );
    for s in &result.sinks {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | **{:.0}** |",
            s.sink,
            s.events,
            s.seconds,
            s.events as f64 / s.seconds
        );
    }
    let _ = writeln!(
        out,
        "\n| rotate call (Ed25519) | calls | min ms | **p50 ms** | **p99 ms** | max ms | mean ms |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    let without = Summary::of(&result.without_sinks);
    let with = Summary::of(&result.with_sinks);
    for (name, s) in [("no sink", &without), ("three sinks, syslog down", &with)] {
        if let Some(s) = s {
            let _ = writeln!(
                out,
                "| {name} | {} | {:.2} | **{:.2}** | **{:.2}** | {:.2} | {:.2} |",
                s.n, s.min, s.p50, s.p99, s.max, s.mean
            );
        }
    }
    if let (Some(a), Some(b)) = (without, with) {
        let _ = writeln!(
            out,
            "\nWith the three sinks ÷ without: p50 {:.2}x, p99 {:.2}x (target: no measurable change).",
            b.p50 / a.p50,
            b.p99 / a.p99
        );
    }
    out
}

/// `keyward-bench audit-export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Audit events each sink is timed delivering.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Rotate calls timed on each control plane.
    #[arg(long, default_value_t = 200)]
    pub rotations: usize,
    /// The test suite's version: 300 events, 5 rotations each.
    #[arg(long)]
    pub smoke: bool,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `audit-export` section is replaced";

    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        let options = if self.smoke {
            Options::smoke()
        } else {
            Options {
                events: self.events,
                rotations: self.rotations,
            }
        };
        let result = run(&options).await?;
        Ok(Publication::section(SECTION, markdown(&result, write)))
    }
}
