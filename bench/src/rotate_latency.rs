//! `keyward-bench rotate-latency`: how long one interactive rotate call takes with RSA-4096 keys,
//! with the key pool off and on, side by side in one run.
//!
//! Two control planes in this process (REST on loopback, SQLite, each with its own OpenBao dev
//! server), both issuing RSA-4096 keys: one with `rotation.key_pool_size = 0`, one with the pool.
//! Each has one tenant; the call timed is the tenant's own `POST .../ssh-credentials/rotate`
//! (token check, key, Vault check-and-set write, SQL transaction with its audit event, the hub),
//! from sending the request to reading the answer.
//!
//! 1. Steady state: rounds of one call to each control plane, which goes first alternating.
//!    Before every call the benchmark waits until the pool is full again, so each call with
//!    the pool is served from it (a hit) and no refill runs during any timed call.
//! 2. Burst: then `burst` calls back to back on the pooled control plane, starting with a full
//!    pool and not waiting for it: the first calls are hits, the later ones wait for a key to be
//!    generated inline while the refill competes for the same cores.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use keyward_common::KeyAlgorithm;
use keyward_server::lifecycle::KeyPool;
use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::cluster::{Cluster, ClusterOptions};
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::stats::Summary;

const ROTATE: &str = "/api/v1/tenant/infrastructure/ssh-credentials/rotate";

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Steady-state rotations on each control plane.
    pub rotations: usize,
    /// Keys the pooled control plane holds (`rotation.key_pool_size`).
    pub pool_size: usize,
    /// Back-to-back rotations on the pooled control plane after the steady state.
    pub burst: usize,
}

impl Options {
    pub fn new() -> Self {
        Self {
            rotations: 40,
            pool_size: 16,
            burst: 32,
        }
    }

    /// The test suite's tiny version.
    pub fn smoke() -> Self {
        Self {
            rotations: 2,
            pool_size: 2,
            burst: 3,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

/// One timed call: milliseconds, and whether its key came from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub ms: f64,
    pub from_pool: bool,
}

/// The benchmark's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateLatency {
    pub options: Options,
    pub machine: Machine,
    pub started_at: String,
    pub load_before: Load,
    pub load_after: Load,
    pub bao_version: String,
    /// Seconds the pool took to fill at start (`pool_size` RSA-4096 keys, one at a time).
    pub fill: Duration,
    pub without_pool: Vec<Call>,
    pub with_pool: Vec<Call>,
    pub burst: Vec<Call>,
}

/// A control plane with one RSA-4096 tenant, and that tenant's token.
struct Target {
    cluster: Cluster,
    token: String,
}

impl Target {
    async fn start(pool_size: usize) -> anyhow::Result<Self> {
        let cluster = Cluster::start(&ClusterOptions {
            algorithm: KeyAlgorithm::Rsa4096,
            key_pool_size: Some(pool_size),
            ..ClusterOptions::default()
        })
        .await?;
        cluster
            .create_tenant("latency", "tenant", "kwadmin")
            .await?;
        let token = cluster.tenant_token("latency").await?;
        Ok(Self { cluster, token })
    }

    fn pool(&self) -> anyhow::Result<&KeyPool> {
        Ok(self
            .cluster
            .lifecycle()
            .context("the control plane runs in this process")?
            .key_pool())
    }

    /// Waits (up to 10 minutes) until the pool is full.
    async fn pool_full(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let pool = self.pool()?;
            if pool.len() >= pool.capacity() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the key pool did not fill");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn rotate(&self) -> anyhow::Result<Call> {
        let hits = self.pool()?.hits();
        let started = Instant::now();
        self.cluster.post(ROTATE, &self.token, None, 200).await?;
        let ms = 1000.0 * started.elapsed().as_secs_f64();
        Ok(Call {
            ms,
            from_pool: self.pool()?.hits() > hits,
        })
    }
}

/// Runs the benchmark.
pub async fn run(options: &Options) -> anyhow::Result<RotateLatency> {
    anyhow::ensure!(options.pool_size > 0, "--pool-size must be at least 1");
    let machine = Machine::detect();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = Load::now();
    let without = Target::start(0).await?;
    let filling = Instant::now();
    let with = Target::start(options.pool_size).await?;
    with.pool_full().await?;
    let fill = filling.elapsed();
    let bao_version = with.cluster.bao_version.clone();
    eprintln!(
        "rotate-latency: pool of {} filled in {:.1} s; {} steady-state rotations each",
        options.pool_size,
        fill.as_secs_f64(),
        options.rotations
    );
    let mut without_pool = Vec::with_capacity(options.rotations);
    let mut with_pool = Vec::with_capacity(options.rotations);
    for i in 0..options.rotations {
        for pooled in [i % 2 == 0, i % 2 != 0] {
            with.pool_full().await?;
            if pooled {
                with_pool.push(with.rotate().await?);
            } else {
                without_pool.push(without.rotate().await?);
            }
        }
    }
    eprintln!("rotate-latency: a burst of {} rotations", options.burst);
    with.pool_full().await?;
    let mut burst = Vec::with_capacity(options.burst);
    for _ in 0..options.burst {
        burst.push(with.rotate().await?);
    }
    let load_after = Load::now();
    without.cluster.shutdown().await?;
    with.cluster.shutdown().await?;
    Ok(RotateLatency {
        options: options.clone(),
        machine,
        started_at,
        load_before,
        load_after,
        bao_version,
        fill,
        without_pool,
        with_pool,
        burst,
    })
}

/// The command line that reproduces `options`.
pub fn command_line(options: &Options, write: Option<&Path>) -> String {
    let mut cmd = String::from("cargo run --release -p keyward-bench -- rotate-latency");
    if *options == Options::smoke() {
        cmd.push_str(" --smoke");
    } else if *options != Options::new() {
        cmd.push_str(&format!(
            " --rotations {} --pool-size {} --burst {}",
            options.rotations, options.pool_size, options.burst
        ));
    }
    if let Some(path) = write {
        cmd.push_str(&format!(" --write {}", path.display()));
    }
    cmd
}

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "rotate-latency";

/// The results as a `BENCHMARKS.md` section.
pub fn markdown(result: &RotateLatency, write: Option<&Path>) -> String {
    use std::fmt::Write;
    let o = &result.options;
    let mut out = String::new();
    let _ = write!(
        out,
        "## Rotate latency: one RSA-4096 rotate call with the key pool off and on\n\n\
         Command: `{command}`\n\n\
         Machine: {machine}. {bao}. Started {started} (load average {before} before, {after} \
         after).\n\n\
         Method: two control planes in the benchmark's process, each on SQLite with its own \
         OpenBao dev server and one tenant, both issuing RSA-4096 keys: one with \
         `rotation.key_pool_size = 0`, one with a pool of {pool} keys (filled in {fill:.1} s at \
         start). Timed: the tenant's `POST /api/v1/tenant/infrastructure/ssh-credentials/rotate` \
         over HTTP on loopback, from sending it to reading the answer. **Steady state**: {n} \
         rounds of one call to each, alternating which goes first, and before every call the \
         benchmark waits until the pool is full again, so that every pooled call finds a key \
         and no refill runs during a timed call. **Burst**: then {burst} calls back to back on \
         the pooled control plane, starting with a full pool and never waiting: the first ones \
         find a key, the later ones generate theirs while the refill takes one of the cores. \
         Percentiles are nearest-rank over the calls of the row (with {n} calls, p99 is the \
         slowest); RSA generation time is random, so the rows without the pool vary from run \
         to run.\n\n\
         | rotate call (RSA-4096) | calls | served from the pool | min ms | **p50 ms** | **p99 ms** | max ms | mean ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        command = command_line(o, write),
        machine = result.machine.describe(),
        bao = if result.bao_version.is_empty() {
            "OpenBao (version unknown)".to_owned()
        } else {
            result.bao_version.clone()
        },
        started = result.started_at,
        before = result.load_before,
        after = result.load_after,
        pool = o.pool_size,
        fill = result.fill.as_secs_f64(),
        n = o.rotations,
        burst = o.burst,
    );
    let burst_name = format!("pool of {}, burst of {} back to back", o.pool_size, o.burst);
    for (name, calls) in [
        ("pool off: generated on the path", &result.without_pool),
        ("pool on, steady state", &result.with_pool),
        (burst_name.as_str(), &result.burst),
    ] {
        let ms: Vec<f64> = calls.iter().map(|c| c.ms).collect();
        let hits = calls.iter().filter(|c| c.from_pool).count();
        if let Some(s) = Summary::of(&ms) {
            let _ = writeln!(
                out,
                "| {name} | {} | {hits} | {:.1} | **{:.1}** | **{:.1}** | {:.1} | {:.1} |",
                s.n, s.min, s.p50, s.p99, s.max, s.mean
            );
        }
    }
    let off = Summary::of(&result.without_pool.iter().map(|c| c.ms).collect::<Vec<_>>());
    let on = Summary::of(&result.with_pool.iter().map(|c| c.ms).collect::<Vec<_>>());
    if let (Some(off), Some(on)) = (off, on) {
        let _ = writeln!(
            out,
            "\nSteady state: p50 {:.1} ms → {:.1} ms ({:.0}x), p99 {:.1} ms → {:.1} ms ({:.0}x).",
            off.p50,
            on.p50,
            off.p50 / on.p50,
            off.p99,
            on.p99,
            off.p99 / on.p99,
        );
    }
    out
}

/// `keyward-bench rotate-latency`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Steady-state rotations on each control plane (pool off, pool on).
    #[arg(long, default_value_t = 40)]
    pub rotations: usize,
    /// The pooled control plane's `rotation.key_pool_size`.
    #[arg(long, default_value_t = 16)]
    pub pool_size: usize,
    /// Back-to-back rotations on the pooled control plane after the steady state.
    #[arg(long, default_value_t = 32)]
    pub burst: usize,
    /// The test suite's version: 2 rotations each, a pool of 2, a burst of 3.
    #[arg(long)]
    pub smoke: bool,
}

impl Args {
    pub fn options(&self) -> Options {
        if self.smoke {
            Options::smoke()
        } else {
            Options {
                rotations: self.rotations,
                pool_size: self.pool_size,
                burst: self.burst,
            }
        }
    }
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `rotate-latency` section is replaced";

    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        let options = self.options();
        let result = run(&options).await?;
        Ok(Publication::section(SECTION, markdown(&result, write)))
    }
}
