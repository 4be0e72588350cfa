//! The live hosts view under load (issue #13): the control plane with N hosts reporting over
//! real mTLS agent streams and M admins watching `GET /api/v1/admin/events/hosts`, while hosts
//! change at a fixed rate.
//!
//! The control plane runs in a process of its own ([`Cluster::spawn`], SQLite, its own OpenBao),
//! so that `/proc/PID` counts it alone. The hosts are bare protocol clients in this process (the
//! agent's own TLS and gRPC client, [`keyward_agent::client::connect`], each with its own key,
//! enrolled through `POST /api/v1/agent/enroll`): each says hello, acknowledges every state it is
//! sent as an agent does, and sends what the benchmark tells it to. The admins are HTTP/1.1
//! clients that count the body bytes of their stream.
//!
//! Per fleet size (the smaller first; the fleet then grows to the next size in the same control
//! plane, its admin streams closed while it grows), each round runs these cases for `window`
//! seconds each, plus a second for the last deltas to arrive:
//!
//! - **idle**: nothing sent;
//! - **noise**: each host sends one message a minute that changes nothing an admin sees (an
//!   empty login batch), `fleet / 60` a second spread evenly over the second: the hub's change
//!   signal fires, nothing is sent;
//! - **k changes/s** (`k` = 1 and 100): the noise, and at the start of every second `k` hosts (round-robin)
//!   report an applied state whose per-user error differs from their last one (their status goes
//!   `degraded` ↔ `in_sync`), so each is one host whose view changed.
//!
//! Measured: the control plane's CPU (`utime + stime`) over the case, its `VmRSS` after it and
//! its `VmHWM`; the body bytes each admin stream received over the case, per host change; the
//! host views one stream received (it parses its deltas); and a tenant's `GET
//! /api/v1/tenant/infrastructure/ssh-credentials` every 50 ms (p50/p99, failures) during the case,
//! against the same with no admin stream open and nothing sent ("quiet").
//!
//! With `--before-exe`, the same runs against the control plane of another `keyward-bench`
//! binary (its `control-plane-child`) first, and the report sets the two side by side.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use keyward_common::proto::{
    AgentMessage, Applied, Hello, LoginBatch, UserResult, agent_message, control_message,
};
use prost::Message as _;
use serde_json::json;
use tokio::sync::mpsc;

use crate::benchmark::Benchmark;
use crate::cluster::{Cluster, string_field};
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::report::bytes;
use crate::stats::Summary;
use crate::sys;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fleet sizes, ascending: the fleet grows from one to the next in the same control plane.
    pub fleets: Vec<usize>,
    /// Admin SSE streams open during the cases.
    pub admin_streams: usize,
    /// Host changes a second of the two churn cases.
    pub changes: [usize; 2],
    /// Length of each case.
    pub window: Duration,
    /// How long a case waits after its last change for the last deltas (coalesced over 250 ms).
    pub drain: Duration,
    pub rounds: usize,
    /// Hosts per tenant.
    pub hosts_per_tenant: usize,
    /// How often the tenant's request is made during a case.
    pub tenant_every: Duration,
    /// Another `keyward-bench` binary whose control plane is measured first (the code before).
    pub before_exe: Option<PathBuf>,
    /// What the other binary is (for the report).
    pub before_label: String,
    /// The `keyward-bench` binary whose control plane is "this build"; this process's own
    /// binary when `None` (a test binary names it: it is not `keyward-bench` itself).
    pub control_plane_exe: Option<PathBuf>,
    pub smoke: bool,
}

impl Options {
    /// 1,000 and 10,000 hosts, 500 admin streams, 1 and 100 changes a second, 10 s cases, 3
    /// rounds.
    pub fn new() -> Self {
        Self {
            fleets: vec![1000, 10_000],
            admin_streams: 500,
            changes: [1, 100],
            window: Duration::from_secs(10),
            drain: Duration::from_secs(1),
            rounds: 3,
            hosts_per_tenant: 100,
            tenant_every: Duration::from_millis(50),
            before_exe: None,
            before_label: "before".into(),
            control_plane_exe: None,
            smoke: false,
        }
    }

    /// The test suite's version: 3 and 6 hosts, 3 admin streams, 1 and 2 changes a second, 0.5 s
    /// cases, 1 round.
    pub fn smoke() -> Self {
        Self {
            fleets: vec![3, 6],
            admin_streams: 3,
            changes: [1, 2],
            window: Duration::from_millis(500),
            drain: Duration::from_millis(400),
            rounds: 1,
            hosts_per_tenant: 3,
            smoke: true,
            ..Self::new()
        }
    }

    pub fn command(&self, write: Option<&Path>) -> String {
        let mut c = String::from("cargo run --release -p keyward-bench -- live-hosts");
        if self.smoke {
            c.push_str(" --smoke");
        } else {
            let defaults = Self::new();
            if self.rounds != defaults.rounds {
                let _ = write!(c, " --rounds {}", self.rounds);
            }
            if self.window != defaults.window {
                let _ = write!(c, " --window-secs {}", self.window.as_secs());
            }
            if self.fleets != defaults.fleets {
                let fleets: Vec<String> = self.fleets.iter().map(usize::to_string).collect();
                let _ = write!(c, " --fleets {}", fleets.join(","));
            }
            if self.admin_streams != defaults.admin_streams {
                let _ = write!(c, " --admin-streams {}", self.admin_streams);
            }
        }
        if let Some(exe) = &self.before_exe {
            let _ = write!(
                c,
                " --before-exe {} --before-label '{}'",
                exe.display(),
                self.before_label
            );
        }
        if let Some(path) = write {
            let _ = write!(c, " --write {}", path.display());
        }
        c
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

/// The cases of a round, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Idle,
    Noise,
    Changes(usize),
}

impl Case {
    pub fn name(self) -> String {
        match self {
            Case::Idle => "idle".into(),
            Case::Noise => "noise only".into(),
            Case::Changes(k) => format!("{k} change{}/s", if k == 1 { "" } else { "s" }),
        }
    }
}

/// One case of one round.
#[derive(Debug, Clone)]
pub struct Sample {
    pub case: Case,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub rss: u64,
    /// Host changes driven, and messages that change nothing.
    pub changes: u64,
    pub noise: u64,
    /// Body bytes each open admin stream received over the case.
    pub stream_bytes: Vec<u64>,
    /// Host views (and removals) in the deltas the parsing stream received.
    pub views_received: u64,
    pub deltas_received: u64,
    /// The tenant's request, milliseconds (a failure counts as its timeout).
    pub tenant_ms: Vec<f64>,
    pub tenant_failures: usize,
}

impl Sample {
    pub fn cpu_percent(&self) -> f64 {
        if self.seconds > 0.0 {
            100.0 * self.cpu_seconds / self.seconds
        } else {
            0.0
        }
    }

    /// Bytes per stream per host change: (mean, p99) over the streams.
    pub fn bytes_per_change(&self) -> Option<(f64, f64)> {
        if self.changes == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let per: Vec<f64> = self
            .stream_bytes
            .iter()
            .map(|b| *b as f64 / self.changes as f64)
            .collect();
        let s = Summary::of(&per)?;
        Some((s.mean, s.p99))
    }

    /// Mean bytes a stream received over the case.
    pub fn mean_stream_bytes(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        Summary::of(
            &self
                .stream_bytes
                .iter()
                .map(|b| *b as f64)
                .collect::<Vec<_>>(),
        )
        .map_or(0.0, |s| s.mean)
    }
}

/// One fleet size in one control plane.
#[derive(Debug, Clone)]
pub struct FleetRun {
    pub hosts: usize,
    pub connected: usize,
    pub provision_s: f64,
    pub connect_s: f64,
    /// `VmRSS` with the fleet connected, before any admin stream; and with the streams open.
    pub rss_no_streams: u64,
    pub rss_streams: u64,
    /// `VmHWM` at the end of this fleet's cases.
    pub rss_peak: u64,
    /// Bytes of one stream's snapshot.
    pub snapshot_bytes: u64,
    pub streams_open: usize,
    /// Streams that ended (lag, budget) during the cases.
    pub streams_ended: usize,
    /// The tenant's request with no stream open and nothing sent.
    pub quiet: Sample,
    pub samples: Vec<Sample>,
}

impl FleetRun {
    fn of(&self, case: Case) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.case == case)
    }

    /// The median and the range over the rounds of `f` of `case`.
    pub fn spread(&self, case: Case, f: impl Fn(&Sample) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.of(case).filter_map(f).collect())
    }

    /// Every tenant request of the case's rounds.
    pub fn tenant(&self, case: Case) -> Option<Summary> {
        let all: Vec<f64> = self
            .of(case)
            .flat_map(|s| s.tenant_ms.iter().copied())
            .collect();
        Summary::of(&all)
    }

    pub fn tenant_failures(&self, case: Case) -> usize {
        self.of(case).map(|s| s.tenant_failures).sum()
    }
}

/// A median with the smallest and largest value (over the rounds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }

    fn show(self, digits: usize) -> String {
        format!(
            "**{:.digits$}** ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// One control plane: every fleet size.
#[derive(Debug, Clone)]
pub struct Run {
    /// `before` or `after`, as labelled.
    pub label: String,
    pub exe: PathBuf,
    pub fleets: Vec<FleetRun>,
    pub stopped_by: Option<String>,
}

/// The result.
#[derive(Debug, Clone)]
pub struct LiveReport {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub build: String,
    pub load_before: Load,
    pub load_after: Load,
    pub fd_limit: sys::FdLimit,
    pub runs: Vec<Run>,
}

/// Enrollments at once: the control plane takes one of the source address's failed-enrollment
/// allowance (a burst of 10) per enrollment in flight, and gives it back when it succeeds.
const ENROLL_CONCURRENCY: usize = 8;

/// A host's generation before it was sent any state.
const NO_STATE: u64 = u64::MAX;

/// A host: its stream's sender, and the generation it was last sent.
struct RawHost {
    tx: mpsc::Sender<AgentMessage>,
    generation: Arc<AtomicU64>,
    alive: Arc<AtomicBool>,
    degraded: bool,
}

/// An enrolled host, not yet connected.
struct Enrolled {
    grpc_url: String,
    tls: Arc<rustls::ClientConfig>,
}

fn message(msg: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(msg) }
}

/// Registers a host for `tenant` and enrolls it with a fresh key.
async fn enroll(
    cluster: &Cluster,
    http: &reqwest::Client,
    tenant: &str,
) -> anyhow::Result<Enrolled> {
    let (_, token) = cluster.register_host(tenant).await?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let response = http
        .post(format!("{}/api/v1/agent/enroll", cluster.url))
        .json(&json!({ "token": token, "csrPem": csr }))
        .send()
        .await
        .context("POST /api/v1/agent/enroll")?;
    let status = response.status();
    let body = response.text().await?;
    anyhow::ensure!(status.as_u16() == 200, "enroll answered {status}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let tls = keyward_agent::tls::client_config(
        &string_field(&answer, "caCertificatePem")?,
        &string_field(&answer, "certificatePem")?,
        &key.serialize_pem(),
    )?;
    Ok(Enrolled {
        grpc_url: string_field(&answer, "grpcUrl")?,
        tls,
    })
}

/// Opens the host's stream: hello, then every state sent acknowledged as applied.
async fn connect(enrolled: Enrolled) -> anyhow::Result<RawHost> {
    let mut client = keyward_agent::client::connect(&enrolled.grpc_url, enrolled.tls).await?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(message(agent_message::Msg::Hello(Hello {
        agent_version: "keyward-bench".into(),
        ..Hello::default()
    })))
    .await?;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let generation = Arc::new(AtomicU64::new(NO_STATE));
    let alive = Arc::new(AtomicBool::new(true));
    let (g, a, ack) = (generation.clone(), alive.clone(), tx.clone());
    tokio::spawn(async move {
        let _client = client;
        while let Ok(Some(control)) = inbound.message().await {
            if let Some(control_message::Msg::State(signed)) = control.msg
                && let Ok(state) =
                    keyward_common::proto::DesiredState::decode(signed.state.as_slice())
            {
                g.store(state.generation, Ordering::Relaxed);
                let applied = Applied {
                    generation: state.generation,
                    users: Vec::new(),
                    sshd: None,
                };
                if ack
                    .send(message(agent_message::Msg::Applied(applied)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        a.store(false, Ordering::Relaxed);
    });
    Ok(RawHost {
        tx,
        generation,
        alive,
        degraded: false,
    })
}

/// The hosts, and the tenants they belong to.
struct RawFleet {
    hosts: Vec<RawHost>,
    tenants: usize,
    /// Round-robin cursors of the changing hosts and of the noise.
    next_change: usize,
    next_noise: usize,
    changes_sent: u64,
}

impl RawFleet {
    fn tenant(i: usize) -> String {
        format!("live-{i:05}")
    }

    /// Grows the fleet to `count` hosts: tenants, then hosts enrolled and connected.
    async fn grow(
        &mut self,
        cluster: &Cluster,
        count: usize,
        per_tenant: usize,
        progress: bool,
    ) -> anyhow::Result<(f64, f64)> {
        let started = Instant::now();
        let have = self.hosts.len();
        let tenants_needed = count.div_ceil(per_tenant.max(1));
        while self.tenants < tenants_needed {
            cluster
                .create_tenant(&Self::tenant(self.tenants), "tenant", "kwadmin")
                .await?;
            self.tenants += 1;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let mut enrolled = Vec::with_capacity(count - have);
        {
            let mut results = futures::stream::iter(have..count)
                .map(|i| {
                    let http = &http;
                    async move { enroll(cluster, http, &Self::tenant(i / per_tenant.max(1))).await }
                })
                .buffer_unordered(ENROLL_CONCURRENCY);
            while let Some(result) = results.next().await {
                enrolled.push(result.context("enrolling a host")?);
                if progress && (have + enrolled.len()).is_multiple_of(1000) {
                    eprintln!("  enrolled {}/{count} hosts", have + enrolled.len());
                }
            }
        }
        let provision_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut connects = futures::stream::iter(enrolled)
            .map(connect)
            .buffer_unordered(64);
        while let Some(host) = connects.next().await {
            self.hosts.push(host.context("opening a host's stream")?);
        }
        // Every host acknowledged its first state.
        let deadline = Instant::now() + Duration::from_secs(120);
        while self
            .hosts
            .iter()
            .any(|h| h.generation.load(Ordering::Relaxed) == NO_STATE)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((provision_s, started.elapsed().as_secs_f64()))
    }

    fn alive(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.alive.load(Ordering::Relaxed))
            .count()
    }

    /// `k` hosts (round-robin) report an applied state with a per-user error other than their
    /// last: `degraded` ↔ `in_sync`.
    fn change(&mut self, k: usize) -> u64 {
        let n = self.hosts.len();
        let mut sent = 0;
        for _ in 0..k.min(n) {
            let host = &mut self.hosts[self.next_change % n];
            self.next_change += 1;
            host.degraded = !host.degraded;
            self.changes_sent += 1;
            let error = if host.degraded {
                format!("keyward-bench change {}", self.changes_sent)
            } else {
                String::new()
            };
            let applied = Applied {
                generation: match host.generation.load(Ordering::Relaxed) {
                    NO_STATE => 0,
                    g => g,
                },
                users: vec![UserResult {
                    user: "tenant".into(),
                    error,
                    ..UserResult::default()
                }],
                sshd: None,
            };
            if host
                .tx
                .try_send(message(agent_message::Msg::Applied(applied)))
                .is_ok()
            {
                sent += 1;
            }
        }
        sent
    }

    /// `k` hosts (round-robin, from the other end) send an empty login batch: a message that
    /// changes nothing an admin sees.
    fn noise(&mut self, k: usize) -> u64 {
        let n = self.hosts.len();
        let mut sent = 0;
        for _ in 0..k.min(n) {
            let host = &self.hosts[n - 1 - self.next_noise % n];
            self.next_noise += 1;
            if host
                .tx
                .try_send(message(agent_message::Msg::Logins(LoginBatch::default())))
                .is_ok()
            {
                sent += 1;
            }
        }
        sent
    }
}

/// An admin's hosts stream: body bytes after the snapshot; one stream also parses its deltas.
struct AdminStream {
    bytes: Arc<AtomicU64>,
    snapshot: Arc<AtomicU64>,
    views: Arc<AtomicU64>,
    deltas: Arc<AtomicU64>,
    ended: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminStream {
    fn open(http: &reqwest::Client, cluster: &Cluster, parse: bool) -> Self {
        let request = http
            .get(format!("{}/api/v1/admin/events/hosts", cluster.url))
            .bearer_auth(&cluster.admin_token)
            .header("accept", "text/event-stream");
        let bytes = Arc::new(AtomicU64::new(0));
        let snapshot = Arc::new(AtomicU64::new(0));
        let views = Arc::new(AtomicU64::new(0));
        let deltas = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicBool::new(false));
        let (b, s, v, d, e) = (
            bytes.clone(),
            snapshot.clone(),
            views.clone(),
            deltas.clone(),
            ended.clone(),
        );
        let task = tokio::spawn(async move {
            let Ok(mut response) = request.send().await else {
                e.store(true, Ordering::Relaxed);
                return;
            };
            if !response.status().is_success() {
                e.store(true, Ordering::Relaxed);
                return;
            }
            // Until the snapshot's end (its blank line), and the deltas of a parsing stream.
            let mut pending = String::new();
            let mut in_snapshot = true;
            while let Ok(Some(chunk)) = response.chunk().await {
                if !in_snapshot && !parse {
                    b.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    continue;
                }
                pending.push_str(&String::from_utf8_lossy(&chunk));
                if in_snapshot {
                    let Some(end) = pending.find("\n\n") else {
                        continue;
                    };
                    s.store(end as u64 + 2, Ordering::Relaxed);
                    in_snapshot = false;
                    pending.drain(..end + 2);
                    b.fetch_add(pending.len() as u64, Ordering::Relaxed);
                } else {
                    b.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                if !parse {
                    pending.clear();
                    continue;
                }
                while let Some(end) = pending.find("\n\n") {
                    let event: String = pending.drain(..end + 2).collect();
                    if !event.lines().any(|l| l == "event: delta") {
                        continue;
                    }
                    let data: String = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(|l| l.strip_prefix(' ').unwrap_or(l))
                        .collect::<Vec<_>>()
                        .join("\n");
                    if let Ok(delta) = serde_json::from_str::<serde_json::Value>(&data) {
                        let n = delta["hosts"].as_array().map_or(0, Vec::len)
                            + delta["removed"].as_array().map_or(0, Vec::len);
                        v.fetch_add(n as u64, Ordering::Relaxed);
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            e.store(true, Ordering::Relaxed);
        });
        Self {
            bytes,
            snapshot,
            views,
            deltas,
            ended,
            task,
        }
    }
}

/// Opens `n` admin streams and waits (at most 120 s) for every snapshot.
async fn open_streams(cluster: &Cluster, n: usize) -> anyhow::Result<Vec<AdminStream>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let streams: Vec<AdminStream> = (0..n)
        .map(|i| AdminStream::open(&http, cluster, i == 0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let waiting = streams
            .iter()
            .filter(|s| s.snapshot.load(Ordering::Relaxed) == 0 && !s.ended.load(Ordering::Relaxed))
            .count();
        if waiting == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{waiting} of {n} admin streams had no snapshot within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(streams)
}

/// The tenant's request every `every` until `stop`: milliseconds, failures.
async fn tenant_requests(
    url: String,
    token: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> (Vec<f64>, usize) {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let Ok(http) = reqwest::Client::builder().timeout(TIMEOUT).build() else {
        return (Vec::new(), 0);
    };
    let path = format!("{url}{}", crate::rest::PATH);
    let (mut samples, mut failures) = (Vec::new(), 0);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t0 = Instant::now();
        let ok = match http.get(&path).bearer_auth(&token).send().await {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        } else {
            failures += 1;
            samples.push(t0.elapsed().as_secs_f64().max(TIMEOUT.as_secs_f64()) * 1000.0);
        }
    }
    (samples, failures)
}

/// Parts of a second the noise is spread over.
const NOISE_TICKS: usize = 10;
const NOISE_TICK: Duration = Duration::from_millis(100);

/// Runs one case: churn (if any) every second for `window`, then `drain` for the last deltas.
async fn case(
    case: Case,
    options: &Options,
    pid: u32,
    fleet: &mut RawFleet,
    streams: &[AdminStream],
    tenant: (&str, &str),
) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let requests = tokio::spawn(tenant_requests(
        tenant.0.to_owned(),
        tenant.1.to_owned(),
        options.tenant_every,
        stop.clone(),
    ));
    let bytes0: Vec<u64> = streams
        .iter()
        .map(|s| s.bytes.load(Ordering::Relaxed))
        .collect();
    let (views0, deltas0) = streams.first().map_or((0, 0), |s| {
        (
            s.views.load(Ordering::Relaxed),
            s.deltas.load(Ordering::Relaxed),
        )
    });
    let pid_s = pid.to_string();
    let cpu0 = sys::cpu_seconds_of(&pid_s).unwrap_or(0.0);
    let t0 = Instant::now();
    // The noise spread evenly over each second (as 10,000 agents' messages would come), the
    // changes at the start of each second.
    let noise_per_second = fleet.hosts.len().div_ceil(60);
    let (mut changes, mut noise) = (0, 0);
    let seconds = options.window.as_secs().max(1);
    let mut tick = tokio::time::interval(NOISE_TICK);
    for _ in 0..seconds {
        for part in 0..NOISE_TICKS {
            tick.tick().await;
            let noise_now =
                noise_per_second * (part + 1) / NOISE_TICKS - noise_per_second * part / NOISE_TICKS;
            match case {
                Case::Idle => {}
                Case::Noise => noise += fleet.noise(noise_now),
                Case::Changes(k) => {
                    noise += fleet.noise(noise_now);
                    if part == 0 {
                        changes += fleet.change(k);
                    }
                }
            }
        }
    }
    tokio::time::sleep_until((t0 + options.window).into()).await;
    tokio::time::sleep(options.drain).await;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = sys::cpu_seconds_of(&pid_s).unwrap_or(0.0) - cpu0;
    stop.store(true, Ordering::Relaxed);
    let (tenant_ms, tenant_failures) = requests.await.unwrap_or_default();
    let stream_bytes = streams
        .iter()
        .zip(bytes0)
        .filter(|(s, _)| !s.ended.load(Ordering::Relaxed))
        .map(|(s, b0)| s.bytes.load(Ordering::Relaxed) - b0)
        .collect();
    let (views_received, deltas_received) = streams.first().map_or((0, 0), |s| {
        (
            s.views.load(Ordering::Relaxed) - views0,
            s.deltas.load(Ordering::Relaxed) - deltas0,
        )
    });
    Sample {
        case,
        seconds,
        cpu_seconds,
        rss: sys::rss_bytes_of(pid),
        changes,
        noise,
        stream_bytes,
        views_received,
        deltas_received,
        tenant_ms,
        tenant_failures,
    }
}

/// The cases of one round.
fn cases(options: &Options) -> Vec<Case> {
    vec![
        Case::Idle,
        Case::Noise,
        Case::Changes(options.changes[0]),
        Case::Changes(options.changes[1]),
    ]
}

/// Every fleet size against one control plane.
async fn run_one(
    options: &Options,
    label: &str,
    exe: Option<&Path>,
    progress: bool,
) -> anyhow::Result<Run> {
    let say = |line: String| {
        if progress {
            eprintln!("{line}");
        }
    };
    let exe_path = match exe {
        Some(exe) => exe.to_owned(),
        None => std::env::current_exe()?,
    };
    say(format!("live-hosts [{label}]: {}", exe_path.display()));
    let cluster = Cluster::spawn(exe).await?;
    let pid = cluster.pid();
    // The tenant whose request is timed: a tenant of its own, with no host.
    cluster
        .create_tenant("live-reader", "tenant", "kwadmin")
        .await?;
    let tenant_token = cluster.tenant_token("live-reader").await?;
    let mut fleet = RawFleet {
        hosts: Vec::new(),
        tenants: 0,
        next_change: 0,
        next_noise: 0,
        changes_sent: 0,
    };
    let mut run = Run {
        label: label.to_owned(),
        exe: exe_path,
        fleets: Vec::new(),
        stopped_by: None,
    };
    for &size in &options.fleets {
        let grown = fleet
            .grow(&cluster, size, options.hosts_per_tenant, progress)
            .await;
        let (provision_s, connect_s) = match grown {
            Ok(times) => times,
            Err(e) => {
                let limit = sys::limit_behind(&e).map(|l| format!(" (limit: {l})"));
                run.stopped_by = Some(format!("{e:#}{}", limit.unwrap_or_default()));
                break;
            }
        };
        say(format!(
            "  [{label}] {} hosts: enrolled in {provision_s:.1} s, connected in {connect_s:.1} s",
            fleet.hosts.len()
        ));
        // Settle: the acknowledgements recorded.
        tokio::time::sleep(options.drain * 3).await;
        let rss_no_streams = sys::rss_bytes_of(pid);
        let quiet = case(
            Case::Idle,
            options,
            pid,
            &mut fleet,
            &[],
            (&cluster.url, &tenant_token),
        )
        .await;
        let streams = open_streams(&cluster, options.admin_streams).await?;
        let snapshot_bytes = streams
            .first()
            .map_or(0, |s| s.snapshot.load(Ordering::Relaxed));
        let streams_open = streams
            .iter()
            .filter(|s| !s.ended.load(Ordering::Relaxed))
            .count();
        tokio::time::sleep(options.drain).await;
        let rss_streams = sys::rss_bytes_of(pid);
        say(format!(
            "  [{label}] {streams_open} admin streams open (snapshot {snapshot_bytes} bytes); RSS {} → {}",
            bytes(rss_no_streams),
            bytes(rss_streams)
        ));
        let mut samples = Vec::new();
        for round in 1..=options.rounds {
            for c in cases(options) {
                let s = case(
                    c,
                    options,
                    pid,
                    &mut fleet,
                    &streams,
                    (&cluster.url, &tenant_token),
                )
                .await;
                say(format!(
                    "  [{label}] {size} hosts, round {round}/{}, {}: CPU {:.1}% of a core, RSS {}, {} changes, {} no-op messages, {:.0} bytes/stream, {} views in {} deltas on stream 0, tenant p50 {:.1} ms ({} failed)",
                    options.rounds,
                    c.name(),
                    s.cpu_percent(),
                    bytes(s.rss),
                    s.changes,
                    s.noise,
                    s.mean_stream_bytes(),
                    s.views_received,
                    s.deltas_received,
                    Summary::of(&s.tenant_ms).map_or(0.0, |t| t.p50),
                    s.tenant_failures
                ));
                samples.push(s);
            }
        }
        let streams_ended = streams
            .iter()
            .filter(|s| s.ended.load(Ordering::Relaxed))
            .count();
        for s in &streams {
            s.task.abort();
        }
        drop(streams);
        let connected = fleet.alive();
        run.fleets.push(FleetRun {
            hosts: fleet.hosts.len(),
            connected,
            provision_s,
            connect_s,
            rss_no_streams,
            rss_streams,
            rss_peak: sys::peak_rss_bytes_of(pid),
            snapshot_bytes,
            streams_open,
            streams_ended,
            quiet,
            samples,
        });
        // The streams closed: let the feed see it before the fleet grows.
        tokio::time::sleep(options.drain).await;
    }
    drop(fleet);
    cluster.shutdown().await?;
    Ok(run)
}

/// Runs the benchmark: the `--before-exe` control plane first (if any), then this binary's.
pub async fn run(options: &Options, progress: bool) -> anyhow::Result<LiveReport> {
    let fd_limit = sys::raise_fd_limit();
    let load_before = Load::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut runs = Vec::new();
    if let Some(before) = &options.before_exe {
        runs.push(run_one(options, &options.before_label, Some(before), progress).await?);
    }
    runs.push(
        run_one(
            options,
            "this build",
            options.control_plane_exe.as_deref(),
            progress,
        )
        .await?,
    );
    Ok(LiveReport {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        build: crate::machine::BUILD.into(),
        load_before,
        load_after: Load::now(),
        fd_limit,
        runs,
    })
}

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "live-hosts";

fn ratio(a: Option<Spread>, b: Option<Spread>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.median > 0.0 => format!("{:.2}×", b.median / a.median),
        _ => "–".into(),
    }
}

fn show(s: Option<Spread>, digits: usize) -> String {
    s.map_or_else(|| "–".into(), |s| s.show(digits))
}

fn tenant_cell(s: Option<Summary>, failures: usize) -> String {
    s.map_or_else(
        || "–".into(),
        |s| {
            format!(
                "{:.1} / {:.1}{}",
                s.p50,
                s.p99,
                if failures > 0 {
                    format!(" (**{failures} failed**)")
                } else {
                    String::new()
                }
            )
        },
    )
}

#[allow(clippy::cast_precision_loss)]
fn mib(n: u64) -> f64 {
    n as f64 / f64::from(1u32 << 20)
}

/// The report as a `BENCHMARKS.md` section.
pub fn markdown(report: &LiveReport, command: &str) -> String {
    let o = &report.options;
    let mut out = String::from("## Live hosts view under load (issue #13)\n\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. Build: {}. Started {}; load average {} before, {} after. Other engineers' \
         builds share the machine's two cores, so absolute CPU figures are noisy: compare the \
         ratios, measured side by side in one run. {}.\n",
        report.machine.describe(),
        report.build,
        report.started_at,
        report.load_before,
        report.load_after,
        report.fd_limit.describe(),
    );
    let _ = writeln!(
        out,
        "Method: the control plane (SQLite, its own OpenBao dev server) in a child process; the \
         hosts are bare protocol clients in the benchmark's process (the agent's TLS and gRPC \
         client, one mTLS HTTP/2 connection and key each, {} hosts per tenant, enrolled through \
         `POST /api/v1/agent/enroll`), each acknowledging every state it is sent as an agent \
         does; {} admins hold `GET /api/v1/admin/events/hosts` (HTTP/1.1, body bytes counted \
         per stream after the snapshot; stream 0 parses its deltas). Per fleet size (the fleet \
         grows from one size to the next in the same control plane, the admin streams closed \
         meanwhile), {} round(s) of {:.1} s cases (+{:.1} s for the last deltas): **idle**; **noise \
         only**: fleet/60 hosts a second, spread evenly over the second, send an empty login \
         batch (each host one message a minute that changes nothing an admin sees, but signals \
         the hosts view); **k \
         changes/s**: the noise, and k hosts a second (round-robin) report an applied state \
         whose user error differs from their last (`degraded` ↔ `in_sync`: one host view \
         changed each). CPU is `utime + stime` of the control plane's process over the case, \
         in % of one core; RSS its `VmRSS` after the case, peak its `VmHWM`. Bytes per change \
         = a stream's bytes over the case ÷ the host changes driven (mean and p99 over the \
         streams). The tenant's `GET /api/v1/tenant/infrastructure/ssh-credentials` runs every \
         {} ms during each case (p50 / p99 ms over every request of the case's rounds; a \
         failure or timeout counts as 5000 ms); **quiet** is the same with no admin stream open \
         and nothing sent. Cells: **median** (min–max) over the rounds.\n",
        o.hosts_per_tenant,
        o.admin_streams,
        o.rounds,
        o.window.as_secs_f64(),
        o.drain.as_secs_f64(),
        o.tenant_every.as_millis(),
    );
    let cases = cases(o);
    for run in &report.runs {
        let _ = writeln!(out, "### {} (`{}`)\n", run.label, run.exe.display());
        out.push_str(
            "| hosts (connected) | case | CP CPU % of a core | CP RSS MiB | changes / no-op msgs per case | bytes per stream per case | **bytes per stream per host change** (mean / p99) | views received by stream 0 | tenant GET p50 / p99 ms |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for f in &run.fleets {
            let _ = writeln!(
                out,
                "| {} ({}) | quiet (no stream) | {:.1} | {:.0} | – | – | – | – | {} |",
                f.hosts,
                f.connected,
                f.quiet.cpu_percent(),
                mib(f.quiet.rss),
                tenant_cell(Summary::of(&f.quiet.tenant_ms), f.quiet.tenant_failures),
            );
            for &c in &cases {
                let per = f.spread(c, |s| s.bytes_per_change().map(|b| b.0));
                let p99 = f.spread(c, |s| s.bytes_per_change().map(|b| b.1));
                let changes = f.spread(c, |s| {
                    #[allow(clippy::cast_precision_loss)]
                    Some(s.changes as f64)
                });
                let noise = f.spread(c, |s| {
                    #[allow(clippy::cast_precision_loss)]
                    Some(s.noise as f64)
                });
                let _ = writeln!(
                    out,
                    "| {} ({}) | {} | {} | {} | {:.0} / {:.0} | {} | {} / {} | {} | {} |",
                    f.hosts,
                    f.connected,
                    c.name(),
                    show(f.spread(c, |s| Some(s.cpu_percent())), 1),
                    show(f.spread(c, |s| Some(mib(s.rss))), 0),
                    changes.map_or(0.0, |s| s.median),
                    noise.map_or(0.0, |s| s.median),
                    show(f.spread(c, |s| Some(s.mean_stream_bytes())), 0),
                    show(per, 0),
                    p99.map_or_else(|| "–".into(), |s| format!("{:.0}", s.median)),
                    show(
                        f.spread(c, |s| {
                            #[allow(clippy::cast_precision_loss)]
                            Some(s.views_received as f64)
                        }),
                        0
                    ),
                    tenant_cell(f.tenant(c), f.tenant_failures(c)),
                );
            }
        }
        out.push('\n');
        for f in &run.fleets {
            let _ = writeln!(
                out,
                "- {} hosts: enrolled in {:.1} s, connected in {:.1} s; {} of {} admin streams \
                 open, {} ended during the cases; snapshot {} bytes; control plane RSS {:.0} MiB \
                 without streams, {:.0} MiB with them, peak (`VmHWM`) {:.0} MiB.",
                f.hosts,
                f.provision_s,
                f.connect_s,
                f.streams_open,
                o.admin_streams,
                f.streams_ended,
                f.snapshot_bytes,
                mib(f.rss_no_streams),
                mib(f.rss_streams),
                mib(f.rss_peak),
            );
        }
        if let Some(why) = &run.stopped_by {
            let _ = writeln!(out, "- **stopped by:** {why}");
        }
        out.push('\n');
        // Ratios within this control plane.
        let [small, large] = o.changes;
        let (lo, hi) = (Case::Changes(small), Case::Changes(large));
        out.push_str("| ratio (medians) | value | expected when proportional to the change |\n|---|---|---|\n");
        if let Some(f) = run.fleets.last() {
            let _ = writeln!(
                out,
                "| {} hosts: bytes per stream per case, {} ÷ {} | {} | ~{}× |",
                f.hosts,
                hi.name(),
                lo.name(),
                ratio(
                    f.spread(lo, |s| Some(s.mean_stream_bytes())),
                    f.spread(hi, |s| Some(s.mean_stream_bytes()))
                ),
                large / small.max(1),
            );
            let _ = writeln!(
                out,
                "| {} hosts: bytes per stream per host change, {} ÷ {} | {} | ~1× |",
                f.hosts,
                hi.name(),
                lo.name(),
                ratio(
                    f.spread(lo, |s| s.bytes_per_change().map(|b| b.0)),
                    f.spread(hi, |s| s.bytes_per_change().map(|b| b.0))
                ),
            );
        }
        if let (Some(a), Some(b)) = (run.fleets.first(), run.fleets.last())
            && a.hosts != b.hosts
        {
            for c in [lo, hi] {
                let _ = writeln!(
                    out,
                    "| {}: bytes per stream per host change, {} ÷ {} hosts | {} | ~1× |",
                    c.name(),
                    b.hosts,
                    a.hosts,
                    ratio(
                        a.spread(c, |s| s.bytes_per_change().map(|x| x.0)),
                        b.spread(c, |s| s.bytes_per_change().map(|x| x.0))
                    ),
                );
            }
            for c in [Case::Noise, lo, hi] {
                let _ = writeln!(
                    out,
                    "| {}: control plane CPU, {} ÷ {} hosts | {} | ~1× (but the noise is fleet/60 a second: it grows with the fleet) |",
                    c.name(),
                    b.hosts,
                    a.hosts,
                    ratio(
                        a.spread(c, |s| Some(s.cpu_percent())),
                        b.spread(c, |s| Some(s.cpu_percent()))
                    ),
                );
            }
        }
        out.push('\n');
    }
    // Before and after, side by side.
    if let [before, after] = &report.runs[..] {
        let _ = writeln!(
            out,
            "### {} → {}: control plane CPU, side by side\n",
            before.label, after.label
        );
        out.push_str("| hosts | case | CPU % before | CPU % after | **after ÷ before** | tenant p99 ms before → after |\n|---|---|---|---|---|---|\n");
        for (fb, fa) in before.fleets.iter().zip(&after.fleets) {
            for &c in &cases {
                let (b, a) = (
                    fb.spread(c, |s| Some(s.cpu_percent())),
                    fa.spread(c, |s| Some(s.cpu_percent())),
                );
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | **{}** | {} → {} |",
                    fa.hosts,
                    c.name(),
                    show(b, 1),
                    show(a, 1),
                    ratio(b, a),
                    fb.tenant(c)
                        .map_or_else(|| "–".into(), |s| format!("{:.1}", s.p99)),
                    fa.tenant(c)
                        .map_or_else(|| "–".into(), |s| format!("{:.1}", s.p99)),
                );
            }
        }
        out.push('\n');
    }
    out
}

/// `keyward-bench live-hosts`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds of the cases per fleet size.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of each case.
    #[arg(long, default_value_t = 10)]
    pub window_secs: u64,
    /// Fleet sizes, ascending, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10_000])]
    pub fleets: Vec<usize>,
    /// Admin SSE streams.
    #[arg(long, default_value_t = 500)]
    pub admin_streams: usize,
    /// Another keyward-bench binary (the code before a change): its control plane is measured
    /// first, in the same run.
    #[arg(long, value_name = "FILE")]
    pub before_exe: Option<PathBuf>,
    /// What --before-exe is, for the report.
    #[arg(long, default_value = "before")]
    pub before_label: String,
    /// The test suite's version: 3 and 6 hosts, 3 streams, 0.5 s cases, 1 round.
    #[arg(long)]
    pub smoke: bool,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `live-hosts` section is replaced";

    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        let mut options = if self.smoke {
            Options::smoke()
        } else {
            let mut fleets = self.fleets;
            fleets.sort_unstable();
            fleets.dedup();
            anyhow::ensure!(!fleets.is_empty(), "--fleets names no size");
            Options {
                rounds: self.rounds.max(1),
                window: Duration::from_secs(self.window_secs.max(1)),
                fleets,
                admin_streams: self.admin_streams.max(1),
                ..Options::new()
            }
        };
        options.before_exe = self.before_exe;
        options.before_label = self.before_label;
        let report = run(&options, true).await?;
        let text = markdown(&report, &options.command(write));
        Ok(Publication::section(SECTION, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_bytes_per_change() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]).unwrap_or_else(|| unreachable!());
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let even = Spread::of(vec![1.0, 4.0]).unwrap_or_else(|| unreachable!());
        assert!((even.median - 2.5).abs() < 1e-9);
        assert_eq!(Spread::of(Vec::new()), None);
        let sample = Sample {
            case: Case::Changes(10),
            seconds: 2.0,
            cpu_seconds: 0.5,
            rss: 0,
            changes: 10,
            noise: 0,
            stream_bytes: vec![1000, 2000],
            views_received: 10,
            deltas_received: 2,
            tenant_ms: vec![1.0],
            tenant_failures: 0,
        };
        assert!((sample.cpu_percent() - 25.0).abs() < 1e-9);
        assert_eq!(sample.bytes_per_change(), Some((150.0, 200.0)));
        assert!((sample.mean_stream_bytes() - 1500.0).abs() < 1e-9);
        assert_eq!(
            Sample {
                changes: 0,
                ..sample
            }
            .bytes_per_change(),
            None
        );
        assert_eq!(Case::Changes(1).name(), "1 change/s");
        assert_eq!(Case::Changes(100).name(), "100 changes/s");
        assert!(
            Options::smoke()
                .command(None)
                .ends_with("live-hosts --smoke")
        );
        assert_eq!(
            Options {
                rounds: 2,
                ..Options::new()
            }
            .command(None),
            "cargo run --release -p keyward-bench -- live-hosts --rounds 2"
        );
    }
}
