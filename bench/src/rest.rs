//! REST read throughput: `GET /api/v1/tenant/infrastructure/ssh-credentials` under concurrent
//! load, on SQLite and on PostgreSQL, beside OpenBao's own KV v2 read of a secret, driven in the
//! same run by the same load generator with the same concurrency.
//!
//! - One OpenBao dev server (a child process) and one control plane per backend (tasks of this
//!   process, release build when the benchmark is): REST on 127.0.0.1:0, Ed25519 keys (key
//!   generation is not on the measured path), `--tenants` tenants each with one registered host
//!   and a tenant token; the load uses one of them.
//! - The control planes reach OpenBao through a counting proxy in this process, which records
//!   the request line of every HTTP request they send to Vault: the number sent while keyward is
//!   under load shows whether the path calls Vault (it must not).
//! - OpenBao is read with `GET /v1/vps/data/rest-bench` and the root token: a KV v2 secret holding
//!   the same JSON document keyward answers with.
//! - Targets are measured in interleaved rounds (OpenBao, keyward on SQLite, keyward on
//!   PostgreSQL, then again), so drift from other load on the machine reaches all of them alike;
//!   each keyward figure is also given as a ratio to the OpenBao figure of the same round.
//! - The load generator is `wrk` (Debian package `wrk`, `scripts/install-bench-deps`), a
//!   separate process, `-t2 -c32 --latency` by default; or, for the smoke mode and where wrk is
//!   missing and `--generator builtin` is asked for, a small closed-loop client in this process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keyward_common::KeyAlgorithm;
use keyward_server::config::{Config, KeysConfig};
use keyward_server::server::{self, RunningServer};
use keyward_tests::{Database, OpenBao, PgSchema};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::benchmark::Benchmark;
use crate::machine::{Load, Machine};
use crate::report::Publication;

/// The path measured.
pub const PATH: &str = "/api/v1/tenant/infrastructure/ssh-credentials";
/// The OpenBao secret read for comparison (KV v2 at `vps`).
const BAO_SECRET: &str = "rest-bench";

/// Which load generator drives the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// `wrk` (a separate process, C, epoll).
    Wrk,
    /// A closed-loop client on this process's runtime (reqwest): shares the CPUs and the runtime
    /// with the control plane, so it understates keyward; for the smoke mode.
    Builtin,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Generator::Wrk => "wrk",
            Generator::Builtin => "builtin",
        }
    }
}

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

/// The median (the mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

// ---------------------------------------------------------------------------------------------
// The counting Vault proxy.

/// Forwards TCP connections to OpenBao and records the request line of every HTTP/1.1 request
/// passing towards it.
#[derive(Debug)]
struct VaultProxy {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl VaultProxy {
    async fn start(upstream: &str) -> anyhow::Result<Self> {
        let upstream = upstream
            .strip_prefix("http://")
            .context("OpenBao's address is not http://")?
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (upstream, seen) = (upstream.clone(), Arc::clone(&seen));
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&upstream).await {
                            let _ = relay(client, server, seen).await;
                        }
                    });
                }
            }
        });
        Ok(Self { addr, seen, task })
    }

    fn count(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn since(&self, from: usize) -> Vec<String> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)[from..].to_vec()
    }
}

impl Drop for VaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const METHODS: [&str; 6] = ["GET ", "POST ", "PUT ", "DELETE ", "LIST ", "PATCH "];

async fn relay(
    client: TcpStream,
    server: TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let upward = async move {
        let mut buf = vec![0u8; 16 * 1024];
        // The tail of the previous read, so a request line split across reads is still seen.
        let mut carry = String::new();
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                sw.shutdown().await?;
                return Ok::<_, std::io::Error>(());
            }
            let text = format!("{carry}{}", String::from_utf8_lossy(&buf[..n]));
            for line in text.split("\r\n") {
                if line.ends_with(" HTTP/1.1") && METHODS.iter().any(|m| line.starts_with(m)) {
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line.to_owned());
                }
            }
            carry = text
                .rsplit_once("\r\n")
                .map_or_else(|| text.clone(), |(_, tail)| tail.to_owned());
            if carry.len() > 4096 {
                carry.clear();
            }
            sw.write_all(&buf[..n]).await?;
        }
    };
    let downward = async move {
        tokio::io::copy(&mut sr, &mut cw).await?;
        cw.shutdown().await
    };
    let _ = tokio::try_join!(upward, downward);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The control planes.

struct Keyward {
    backend: Backend,
    url: String,
    admin_token: String,
    tenant_token: String,
    body: Value,
    server: Option<RunningServer>,
    http: reqwest::Client,
    _state_dir: tempfile::TempDir,
    _schema: Option<PgSchema>,
}

impl std::fmt::Debug for Keyward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyward")
            .field("backend", &self.backend)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Keyward {
    async fn start(backend: Backend, vault: &str, tenants: usize) -> anyhow::Result<Self> {
        let state_dir = tempfile::Builder::new()
            .prefix("keyward-bench-rest-")
            .tempdir()?;
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgSchema::create().await),
        };
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse()?;
        config.server.state_dir = state_dir.path().to_path_buf();
        config.agent_api.listen = "127.0.0.1:0".parse()?;
        config.database.url = schema.as_ref().map(PgSchema::url);
        config.vault.address = vault.to_owned();
        config.vault.token = Some(keyward_tests::openbao::ROOT_TOKEN.into());
        config.keys = KeysConfig {
            algorithm: KeyAlgorithm::Ed25519,
            ..KeysConfig::default()
        };
        let token_path = config.bootstrap_token_path();
        let server = server::start(config)
            .await
            .context("starting the control plane")?;
        let admin_token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading {}", token_path.display()))?
            .trim()
            .to_owned();
        let mut kw = Self {
            backend,
            url: server.url(),
            admin_token,
            tenant_token: String::new(),
            body: Value::Null,
            server: Some(server),
            http: reqwest::Client::new(),
            _state_dir: state_dir,
            _schema: schema,
        };
        for i in 0..tenants.max(1) {
            let tenant = format!("rest-{i:04}");
            kw.admin_post(
                "/api/v1/admin/tenants",
                json!({
                    "tenantId": tenant,
                    "vpsIp": "192.0.2.10",
                    "sshPort": 22,
                    "sshUsername": "tenant",
                    "adminUsername": "kwadmin",
                }),
            )
            .await?;
            kw.admin_post("/api/v1/admin/hosts", json!({ "tenantId": tenant }))
                .await?;
            let token = kw
                .admin_post(
                    "/api/v1/admin/tokens",
                    json!({ "role": "tenant", "tenantId": tenant, "label": "keyward-bench" }),
                )
                .await?;
            if i == 0 {
                kw.tenant_token = crate::cluster::string_field(&token, "token")?;
            }
        }
        let answer = kw
            .http
            .get(format!("{}{PATH}", kw.url))
            .bearer_auth(&kw.tenant_token)
            .send()
            .await?;
        anyhow::ensure!(
            answer.status() == 200,
            "GET {PATH} answered {}",
            answer.status()
        );
        kw.body = answer.json().await?;
        Ok(kw)
    }

    async fn admin_post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let answer = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = answer.status();
        let text = answer.text().await?;
        if status != 201 {
            bail!("POST {path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server.shutdown().await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Load generators.

/// A GET with its headers.
#[derive(Debug, Clone)]
struct Request {
    url: String,
    headers: Vec<(String, String)>,
}

/// `wrk --version`, or `None` when wrk is not installed.
pub fn wrk_version() -> Option<String> {
    let out = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .ok()?;
    // wrk prints its version and usage, and exits 1.
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .next()
        .map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_owned())
}

async fn load(
    options: &Options,
    request: &Request,
    seconds: u64,
) -> anyhow::Result<Option<Measurement>> {
    if seconds == 0 {
        return Ok(None);
    }
    match options.generator {
        Generator::Wrk => run_wrk(options, request, seconds).await.map(Some),
        Generator::Builtin => run_builtin(options.connections, request, seconds)
            .await
            .map(Some),
    }
}

async fn run_wrk(
    options: &Options,
    request: &Request,
    seconds: u64,
) -> anyhow::Result<Measurement> {
    let mut command = tokio::process::Command::new("wrk");
    command.args([
        format!("-t{}", options.threads),
        format!("-c{}", options.connections),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
        "--timeout".to_owned(),
        "10s".to_owned(),
    ]);
    for (name, value) in &request.headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    command.arg(&request.url);
    let out = command.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "wrk is not installed: run `scripts/install-bench-deps` (apt-get install wrk), \
                 or pass --generator builtin"
            )
        } else {
            anyhow::Error::from(e).context("running wrk")
        }
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// `3.29ms` → 3.29; `850.00us` → 0.85; `1.20s` → 1200.
fn wrk_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

/// `45.12MB` → bytes.
fn wrk_bytes(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    let k = 1024.0;
    Some(match unit {
        "B" => n,
        "KB" => n * k,
        "MB" => n * k * k,
        "GB" => n * k * k * k,
        "TB" => n * k * k * k * k,
        _ => return None,
    })
}

/// Reads the summary `wrk --latency` prints.
fn parse_wrk(text: &str) -> anyhow::Result<Measurement> {
    let mut percentiles = BTreeMap::new();
    let (mut requests, mut seconds, mut read, mut errors) = (None, None, None, 0u64);
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        let fields: Vec<&str> = t.split_whitespace().collect();
        if in_distribution {
            if let [p, v] = fields.as_slice()
                && let Some(p) = p.strip_suffix('%')
            {
                percentiles.insert(p.to_owned(), wrk_ms(v).context("a latency")?);
                continue;
            }
            in_distribution = false;
        }
        // "99934 requests in 10.00s, 45.12MB read"
        if let [n, "requests", "in", s, b, "read"] = fields.as_slice() {
            requests = Some(n.parse::<u64>()?);
            seconds = Some(wrk_ms(s.trim_end_matches(',')).context("a duration")? / 1000.0);
            read = Some(wrk_bytes(b).context("a size")?);
        }
        if let Some(n) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>()?;
        }
        // "Socket errors: connect 0, read 0, write 0, timeout 0"
        if let Some(rest) = t.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    errors += n.parse::<u64>()?;
                }
            }
        }
    }
    let (requests, seconds) = (
        requests.context("no request count")?,
        seconds.context("no duration")?,
    );
    Ok(Measurement {
        requests,
        seconds,
        per_second: requests as f64 / seconds,
        p50_ms: *percentiles.get("50").context("no p50")?,
        p99_ms: *percentiles.get("99").context("no p99")?,
        errors,
        bytes_per_answer: read.unwrap_or(0.0) / requests.max(1) as f64,
    })
}

/// `connections` tasks, each sending the next request as soon as the previous answer is read.
async fn run_builtin(
    connections: usize,
    request: &Request,
    seconds: u64,
) -> anyhow::Result<Measurement> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes())?,
            reqwest::header::HeaderValue::from_str(value)?,
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let (http, url) = (http.clone(), request.url.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut bytes) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                match http.get(&url).send().await {
                    Ok(answer) => {
                        let ok = answer.status() == 200;
                        match answer.bytes().await {
                            Ok(body) if ok => {
                                bytes += body.len() as u64;
                                latencies.push(sent.elapsed());
                            }
                            _ => errors += 1,
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors, bytes)
        }));
    }
    let (mut latencies, mut errors, mut bytes) = (Vec::new(), 0u64, 0u64);
    for task in tasks {
        let (l, e, b) = task.await?;
        latencies.extend(l);
        errors += e;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let rank = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let requests = latencies.len() as u64;
    Ok(Measurement {
        requests,
        seconds,
        per_second: requests as f64 / seconds,
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        errors,
        bytes_per_answer: bytes as f64 / requests.max(1) as f64,
    })
}

// ---------------------------------------------------------------------------------------------
// The run.

fn backend_of(database: Database) -> Backend {
    match database {
        Database::Sqlite => Backend::Sqlite,
        Database::Postgres => Backend::Postgres,
    }
}

/// Runs the benchmark. `progress` lines go to stderr.
pub async fn run(options: &Options) -> anyhow::Result<RestReport> {
    let wrk_version = wrk_version();
    if options.generator == Generator::Wrk && wrk_version.is_none() {
        bail!(
            "wrk is not installed: run `scripts/install-bench-deps` (apt-get install wrk), or pass \
             --generator builtin"
        );
    }
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut bao = OpenBao::start().await;
    let bao_version = tokio::process::Command::new(keyward_tests::openbao::bao_binary())
        .arg("version")
        .output()
        .await
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let proxy = VaultProxy::start(&bao.addr).await?;
    let mut keywards = Vec::new();
    for database in &options.backends {
        keywards.push(Keyward::start(backend_of(*database), &proxy.addr, options.tenants).await?);
    }
    let document = keywards
        .first()
        .map_or_else(|| json!({"sshHost": "192.0.2.10"}), |k| k.body.clone());
    // The secret OpenBao serves: the same document keyward answers with.
    bao.root(
        reqwest::Method::POST,
        &format!("vps/data/{BAO_SECRET}"),
        Some(json!({ "data": document })),
    )
    .await;
    let bao_request = Request {
        url: format!("{}/v1/vps/data/{BAO_SECRET}", bao.addr),
        headers: vec![(
            "X-Vault-Token".into(),
            keyward_tests::openbao::ROOT_TOKEN.into(),
        )],
    };
    let mut body_bytes = BTreeMap::new();
    let bao_body = reqwest::Client::new()
        .get(&bao_request.url)
        .header("X-Vault-Token", keyward_tests::openbao::ROOT_TOKEN)
        .send()
        .await?
        .bytes()
        .await?;
    body_bytes.insert(Target::OpenBao, bao_body.len());
    for kw in &keywards {
        body_bytes.insert(Target::Keyward(kw.backend), kw.body.to_string().len());
    }

    let load_before = Load::now();
    let mut rounds = Vec::new();
    let mut vault_calls: BTreeMap<Backend, (u64, Vec<String>)> = BTreeMap::new();
    for round in 1..=options.rounds.max(1) {
        let mut results = BTreeMap::new();
        eprintln!("rest: round {round}: {}", Target::OpenBao.name());
        load(options, &bao_request, options.warmup_seconds).await?;
        if let Some(m) = load(options, &bao_request, options.seconds).await? {
            results.insert(Target::OpenBao, m);
        }
        for kw in &keywards {
            let target = Target::Keyward(kw.backend);
            eprintln!("rest: round {round}: {}", target.name());
            let request = Request {
                url: format!("{}{PATH}", kw.url),
                headers: vec![(
                    "Authorization".into(),
                    format!("Bearer {}", kw.tenant_token),
                )],
            };
            load(options, &request, options.warmup_seconds).await?;
            let before = proxy.count();
            if let Some(m) = load(options, &request, options.seconds).await? {
                results.insert(target, m);
            }
            let calls = proxy.since(before);
            let entry = vault_calls.entry(kw.backend).or_default();
            entry.0 += calls.len() as u64;
            for c in calls {
                if !entry.1.contains(&c) {
                    entry.1.push(c);
                }
            }
        }
        rounds.push(results);
    }
    let load_after = Load::now();
    for kw in keywards {
        kw.shutdown().await?;
    }
    drop(proxy);
    bao.stop().await;
    Ok(RestReport {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        bao_version,
        wrk_version,
        load_before,
        load_after,
        rounds,
        vault_calls_under_load: vault_calls,
        body_bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// Markdown.

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "rest-ssh-credentials";

fn spread(values: &[f64], digits: usize) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.digits$} – {max:.digits$}")
}

/// The report as a `BENCHMARKS.md` section (also what is printed).
pub fn markdown(report: &RestReport, command: &str) -> String {
    let o = &report.options;
    let mut out = String::from("## REST: `GET /api/v1/tenant/infrastructure/ssh-credentials`\n\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let generator = match o.generator {
        Generator::Wrk => format!(
            "`wrk -t{} -c{} -d{}s --latency` ({}), a separate process",
            o.threads,
            o.connections,
            o.seconds,
            report.wrk_version.as_deref().unwrap_or("wrk")
        ),
        Generator::Builtin => format!(
            "the built-in closed-loop client (reqwest, {} connections, in the benchmark's own \
             process and runtime, so it competes with the control plane for the CPUs), {} s",
            o.connections, o.seconds
        ),
    };
    let _ = writeln!(
        out,
        "Machine: {}. Build: {}. {}. Started {}; load average {} before, {} after.\n",
        report.machine.describe(),
        report.build,
        report.bao_version,
        report.started_at,
        report.load_before,
        report.load_after
    );
    let _ = writeln!(
        out,
        "Method: load generator {generator}, {} s of unmeasured warm-up before each \
         measurement; {} interleaved round(s) of: OpenBao (dev server, in-memory storage, root \
         token) reading the KV v2 secret `vps/{BAO_SECRET}`, then keyward's endpoint on each \
         backend with a tenant token (the control plane in the benchmark's process, {} tenants \
         each with a registered host and a token). OpenBao's secret holds the same JSON document \
         keyward answers with ({} bytes of body from keyward, {} from OpenBao, which wraps it in \
         its KV v2 envelope). Rate is answers per second over the measured window; latency \
         percentiles are the load generator's ({}). Ratio is keyward's rate over OpenBao's in \
         the same round.\n",
        o.warmup_seconds,
        o.rounds,
        o.tenants,
        report
            .body_bytes
            .iter()
            .find(|(t, _)| matches!(t, Target::Keyward(_)))
            .map_or(0, |(_, b)| *b),
        report
            .body_bytes
            .get(&Target::OpenBao)
            .copied()
            .unwrap_or(0),
        match o.generator {
            Generator::Wrk => "wrk's histogram, no coordinated-omission correction",
            Generator::Builtin => "nearest rank over every answer",
        },
    );
    out.push_str(
        "| target | rounds | **req/s median** | req/s spread | p50 ms median | **p99 ms median** | p99 ms spread | errors | **ratio to OpenBao (median, spread)** |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for target in report.targets() {
        let ms = report.of(target);
        let rps: Vec<f64> = ms.iter().map(|m| m.per_second).collect();
        let p50: Vec<f64> = ms.iter().map(|m| m.p50_ms).collect();
        let p99: Vec<f64> = ms.iter().map(|m| m.p99_ms).collect();
        let errors: u64 = ms.iter().map(|m| m.errors).sum();
        let ratio = match target {
            Target::OpenBao => "1 (reference)".to_owned(),
            Target::Keyward(b) => {
                let r = report.ratios(b);
                format!("**{:.2}x** ({})", median(&r), spread(&r, 2))
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | **{:.0}** | {} | {:.2} | **{:.2}** | {} | {} | {} |",
            target.name(),
            ms.len(),
            median(&rps),
            spread(&rps, 0),
            median(&p50),
            median(&p99),
            spread(&p99, 2),
            errors,
            ratio
        );
    }
    out.push_str("\nEvery measurement, in the order taken:\n\n");
    out.push_str("| round | target | requests | seconds | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|---|\n");
    for (i, round) in report.rounds.iter().enumerate() {
        for (target, m) in round {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {} |",
                i + 1,
                target.name(),
                m.requests,
                m.seconds,
                m.per_second,
                m.p50_ms,
                m.p99_ms,
                m.errors
            );
        }
    }
    out.push_str("\nVault calls on the path: ");
    let mut parts = Vec::new();
    for (backend, (n, lines)) in &report.vault_calls_under_load {
        let name = Target::Keyward(*backend).name();
        if *n == 0 {
            parts.push(format!(
                "{name}: none (0 HTTP requests from the control plane reached OpenBao while it was under load)"
            ));
        } else {
            parts.push(format!(
                "{name}: **{n} HTTP requests reached OpenBao while under load** ({})",
                lines.join("; ")
            ));
        }
    }
    out.push_str(&parts.join("; "));
    out.push_str(
        ". The control planes reach OpenBao only through a proxy in the benchmark that records \
         every request line.\n",
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The subcommand.

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

    async fn run(self, write: Option<&std::path::Path>) -> anyhow::Result<Publication> {
        let options = self.options();
        let report = run(&options).await?;
        let text = markdown(&report, &options.command(write));
        Ok(Publication::section(SECTION, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:8200/v1/vps/data/x\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     3.29ms    2.20ms  45.67ms   84.03%\n    Req/Sec     5.01k   519.70     6.01k    71.00%\n  Latency Distribution\n     50%  850.00us\n     75%    3.95ms\n     90%    5.43ms\n     99%    1.15s\n  99934 requests in 10.00s, 45.12MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 12\nRequests/sec:   9993.40\nTransfer/sec:      4.51MB\n";
        let m = parse_wrk(text).unwrap();
        assert_eq!(m.requests, 99_934);
        assert!((m.seconds - 10.0).abs() < 1e-9);
        assert!((m.p50_ms - 0.85).abs() < 1e-9);
        assert!((m.p99_ms - 1150.0).abs() < 1e-6);
        assert_eq!(m.errors, 15);
        assert!(m.bytes_per_answer > 470.0 && m.bytes_per_answer < 480.0);
    }

    #[test]
    fn medians() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
    }
}
