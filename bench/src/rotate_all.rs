//! Bulk rotation end to end against the pure key-generation rate on the same cores, and the
//! latency of one rotation with and without key generation on its path.
//!
//! One process: an OpenBao dev server (a child process, [`keyward_tests::OpenBao`]), the SQL
//! store on SQLite in a temporary directory, and the control plane's [`KeyLifecycle`] and
//! [`BulkRotations`], exactly as `POST /api/v1/admin/secrets/rotate-all` runs them. Measured:
//!
//! 1. the pure rate: 2 × TENANTS RSA-4096 keys made by `GeneratedKey::generate` on one thread per
//!    core and nothing else, half before the job and half after it (so that load which comes and
//!    goes during the run weighs on both sides alike);
//! 2. a bulk `ssh` job over every tenant: both key sets each, so 2 × TENANTS RSA-4096 keys as
//!    the default policy says, each written to Vault with check-and-set, recorded in SQL with
//!    its audit event and pushed to the hub;
//! 3. bulk `smtp` and `dkim` (RSA-2048) jobs, for scale;
//! 4. single rotations (`KeyLifecycle::replace_key`) one at a time, alternating between an
//!    RSA-4096 rotation (generation on the path, as today) and an Ed25519 one (generation takes
//!    about 0.1 ms: what a rotation served from a pool of pre-generated keys would cost).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use keyward_common::{GeneratedKey, KeyAlgorithm, KeyKind, TenantId};
use keyward_server::agents::hub::Hub;
use keyward_server::caller::Caller;
use keyward_server::clock::SystemClock;
use keyward_server::config::{KeysConfig, RotationConfig, VaultConfig};
use keyward_server::lifecycle::{KeyLifecycle, NewTenant, Replace};
use keyward_server::rotation::{BulkRotations, SecretType};
use keyward_server::store::Store;
use keyward_server::vault::VaultStore;
use keyward_tests::OpenBao;
use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::keygen::Spread;
use crate::machine::{Load, Machine};
use crate::report::Publication;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Tenants (each has two key sets, so twice as many RSA-4096 keys per job).
    pub tenants: usize,
    /// Single rotations of each kind (RSA-4096 and Ed25519) for the latency figures.
    pub single_rotations: usize,
}

impl Options {
    /// The target: 200 tenants (4 to 6 minutes on 2 cores).
    pub fn new() -> Self {
        Self {
            tenants: 200,
            single_rotations: 10,
        }
    }

    /// The test suite's tiny version: 2 tenants, 1 single rotation of each kind.
    pub fn smoke() -> Self {
        Self {
            tenants: 2,
            single_rotations: 1,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

/// A bulk job's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub elapsed: Duration,
    pub rotated: i64,
    pub failed: i64,
}

/// The benchmark's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateAllResult {
    pub options: Options,
    pub machine: Machine,
    /// Generation threads and the bulk job's generation slots: `available_parallelism()`.
    pub cores: usize,
    pub started_at: String,
    pub load_before: Load,
    pub load_after: Load,
    pub bao_version: String,
    pub onboarding: Duration,
    /// Keys made by the pure-rate runs (before and after the job together), and their time.
    pub pure_keys: usize,
    pub pure_elapsed: Duration,
    /// CPU seconds (this process and its children, OpenBao) the pure runs used.
    pub pure_cpu: f64,
    /// CPU seconds (this process and OpenBao) the `ssh` job used.
    pub ssh_cpu: f64,
    pub ssh: Job,
    pub smtp: Job,
    pub dkim: Job,
    /// Seconds per single rotation with RSA-4096 generation on the path.
    pub rotate_rsa: Vec<f64>,
    /// Seconds per single rotation with an Ed25519 key (a pool hit's cost, near enough).
    pub rotate_ed25519: Vec<f64>,
}

impl RotateAllResult {
    /// Pure generation: keys per second on all cores.
    pub fn pure_rate(&self) -> f64 {
        rate(self.pure_keys, self.pure_elapsed)
    }

    /// The `ssh` job: RSA-4096 keys rotated per second.
    pub fn ssh_rate(&self) -> f64 {
        rate(2 * self.options.tenants, self.ssh.elapsed)
    }

    /// The job's rate as a share of the pure rate (the target is 0.8 or more).
    pub fn share(&self) -> f64 {
        self.ssh_rate() / self.pure_rate()
    }

    /// The same share in CPU time: CPU seconds per key of the pure runs over those of the job
    /// (Vault included). Unlike wall time it does not move with other processes' load.
    pub fn cpu_share(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let (pure, job) = (self.pure_keys as f64, (2 * self.options.tenants) as f64);
        (self.pure_cpu / pure) / (self.ssh_cpu / job)
    }
}

fn rate(count: usize, took: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let count = count as f64;
    count / took.as_secs_f64()
}

/// CPU seconds used so far by this process and every process below it (OpenBao, whether it
/// was started directly or through a wrapper).
fn cpu_with_children() -> f64 {
    let me = std::process::id();
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Field 4, after the command name in parentheses and the state.
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut family = vec![me];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    family
        .iter()
        .filter_map(|pid| crate::sys::cpu_seconds_of(&pid.to_string()))
        .sum()
}

/// `count` RSA-4096 keys on `threads` threads, nothing else: how long they took.
fn pure(count: usize, threads: usize) -> anyhow::Result<Duration> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        GeneratedKey::generate(KeyAlgorithm::Rsa4096, "bench")?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a generation thread panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(started.elapsed())
}

async fn pure_async(count: usize, threads: usize) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || pure(count, threads))
        .await
        .context("the pure generation run panicked")?
}

async fn bulk(rotations: &Arc<BulkRotations>, secret_type: SecretType) -> anyhow::Result<Job> {
    let started = Instant::now();
    let mut progress = rotations
        .start(&Caller::system(), secret_type)
        .await
        .map_err(|e| anyhow::anyhow!("starting the {} job: {e}", secret_type.as_str()))?;
    let done = progress
        .wait_for(|s| !s.running())
        .await
        .context("the job's progress channel closed")?
        .job
        .clone();
    Ok(Job {
        elapsed: started.elapsed(),
        rotated: done.rotated,
        failed: done.failed,
    })
}

async fn rotate_once(lifecycle: &KeyLifecycle, tenant: &TenantId) -> anyhow::Result<f64> {
    let started = Instant::now();
    lifecycle
        .replace_key(&Caller::system(), tenant, KeyKind::Tenant, Replace::Rotate)
        .await
        .map_err(|e| anyhow::anyhow!("rotating {tenant}: {e}"))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Runs the benchmark.
pub async fn run(options: &Options) -> anyhow::Result<RotateAllResult> {
    anyhow::ensure!(options.tenants > 0, "--tenants must be at least 1");
    let tenants = options.tenants;
    let machine = Machine::detect();
    let cores = machine.nproc;
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = Load::now();
    let bao = OpenBao::start().await;
    let bao_version = crate::machine::bao_version().await;
    let dir = tempfile::Builder::new()
        .prefix("keyward-bench-rotate-all-")
        .tempdir()
        .context("creating the SQLite directory")?;
    let store = Store::connect(
        &format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
        None,
    )
    .await?;
    let vault = VaultStore::connect(&VaultConfig {
        address: Some(bao.addr.clone()),
        token: Some(keyward_tests::openbao::ROOT_TOKEN.into()),
        ..VaultConfig::default()
    })
    .await?;

    // Onboarding with Ed25519 keys (quick); the ssh job then follows the RSA-4096 default policy.
    let ed25519 = Arc::new(KeyLifecycle::new(
        vault.clone(),
        store.clone(),
        Arc::new(SystemClock),
        KeysConfig {
            algorithm: KeyAlgorithm::Ed25519,
            ..KeysConfig::default()
        },
        Arc::new(Hub::default()),
    ));
    let started = Instant::now();
    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| format!("bench-{i:04}").parse())
        .collect::<Result<_, _>>()?;
    let created: Vec<_> = futures::stream::iter(ids.iter().cloned())
        .map(|tenant_id| {
            let lifecycle = ed25519.clone();
            async move {
                let new = NewTenant {
                    tenant_id,
                    vps_ip: "192.0.2.10".into(),
                    ssh_port: 22,
                    tenant_user: "tenant".parse()?,
                    admin_user: "kwadmin".parse()?,
                };
                lifecycle
                    .create_tenant(&Caller::system(), new)
                    .await
                    .map_err(|e| anyhow::anyhow!("onboarding: {e}"))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for result in created {
        result?;
    }
    let onboarding = started.elapsed();
    eprintln!(
        "rotate-all: onboarded {tenants} tenants in {:.1} s",
        onboarding.as_secs_f64()
    );
    let rsa = Arc::new(KeyLifecycle::new(
        vault,
        store,
        Arc::new(SystemClock),
        KeysConfig::default(),
        Arc::new(Hub::default()),
    ));
    let rotations = Arc::new(BulkRotations::new(rsa.clone(), &RotationConfig::default()));

    let keys = 2 * tenants;
    let (before, after) = (keys / 2, keys - keys / 2);
    eprintln!("rotate-all: pure generation, {before} RSA-4096 keys on {cores} threads");
    let cpu0 = cpu_with_children();
    let mut pure_elapsed = pure_async(before, cores).await?;
    let cpu1 = cpu_with_children();
    eprintln!("rotate-all: ssh job, {tenants} tenants ({keys} RSA-4096 keys)");
    let ssh = bulk(&rotations, SecretType::Ssh).await?;
    let cpu2 = cpu_with_children();
    anyhow::ensure!(
        (ssh.rotated, ssh.failed) == (i64::try_from(tenants)?, 0),
        "the ssh job rotated {} and failed {} of {tenants}",
        ssh.rotated,
        ssh.failed
    );
    eprintln!("rotate-all: pure generation, {after} RSA-4096 keys on {cores} threads");
    pure_elapsed += pure_async(after, cores).await?;
    let cpu3 = cpu_with_children();
    eprintln!("rotate-all: smtp and dkim jobs");
    let smtp = bulk(&rotations, SecretType::Smtp).await?;
    let dkim = bulk(&rotations, SecretType::Dkim).await?;

    eprintln!(
        "rotate-all: {} single rotations of each kind",
        options.single_rotations
    );
    let mut rotate_rsa = Vec::with_capacity(options.single_rotations);
    let mut rotate_ed25519 = Vec::with_capacity(options.single_rotations);
    for i in 0..options.single_rotations {
        let tenant = &ids[i % ids.len()];
        // Alternate which goes first.
        if i % 2 == 0 {
            rotate_rsa.push(rotate_once(&rsa, tenant).await?);
            rotate_ed25519.push(rotate_once(&ed25519, tenant).await?);
        } else {
            rotate_ed25519.push(rotate_once(&ed25519, tenant).await?);
            rotate_rsa.push(rotate_once(&rsa, tenant).await?);
        }
    }
    Ok(RotateAllResult {
        options: options.clone(),
        machine,
        cores,
        started_at,
        load_before,
        load_after: Load::now(),
        bao_version,
        onboarding,
        pure_keys: keys,
        pure_elapsed,
        pure_cpu: (cpu1 - cpu0) + (cpu3 - cpu2),
        ssh_cpu: cpu2 - cpu1,
        ssh,
        smtp,
        dkim,
        rotate_rsa,
        rotate_ed25519,
    })
}

/// The command line that reproduces `options`.
pub fn command_line(options: &Options, write: Option<&Path>) -> String {
    let mut cmd = String::from("cargo run --release -p keyward-bench -- rotate-all");
    if *options == Options::smoke() {
        cmd.push_str(" --smoke");
    } else if *options != Options::new() {
        cmd.push_str(&format!(
            " --tenants {} --single-rotations {}",
            options.tenants, options.single_rotations
        ));
    }
    if let Some(path) = write {
        cmd.push_str(&format!(" --write {}", path.display()));
    }
    cmd
}

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "rotate-all";

/// The results as a `BENCHMARKS.md` section.
pub fn markdown(result: &RotateAllResult) -> String {
    use std::fmt::Write;
    let tenants = result.options.tenants;
    let keys = 2 * tenants;
    let cores = result.cores;
    let mut out = String::new();
    let _ = write!(
        out,
        "## rotate-all: {tenants} RSA-4096 tenants against the pure key-generation rate\n\n\
         Command: `{command}`\n\n\
         Machine: {machine}. {bao}, in-memory storage, on loopback; SQLite (WAL) in a temporary \
         directory. Started {started} (load average {before} before, {after} after).{busy}\n\n\
         Method: one process runs the control plane's `KeyLifecycle` and `BulkRotations` as \
         `POST /api/v1/admin/secrets/rotate-all` runs them. {tenants} tenants are onboarded with \
         Ed25519 keys (quick; {onboarding:.1} s). The `ssh` job then rotates both key sets of \
         every tenant under the default policy: {keys} RSA-4096 keys, each written to Vault with \
         check-and-set, recorded in SQL with its audit event and pushed to the hub, with \
         {cores} generation slots (one per core). The pure rate is {keys} RSA-4096 keys made by \
         `GeneratedKey::generate` on {cores} threads doing nothing else, half just before the \
         job and half just after it. RSA generation time is random, so two runs differ by \
         several percent: compare the rows of one run.\n\n\
         | measurement ({cores} cores, {tenants} tenants) | time | rate | CPU s (keyward + OpenBao) |\n\
         |---|---:|---:|---:|\n",
        command = command_line(&result.options, Some(Path::new("BENCHMARKS.md"))),
        machine = result.machine.describe(),
        bao = if result.bao_version.is_empty() {
            "OpenBao (version unknown) dev server".to_owned()
        } else {
            format!("{} dev server", result.bao_version)
        },
        started = result.started_at,
        before = result.load_before,
        after = result.load_after,
        busy = if result.load_before.0 >= 0.5 * (result.machine.nproc as f64) {
            " Other load was present (other engineers' builds and tests), so absolute times \
             include waiting for a CPU; it weighs on both rows."
        } else {
            ""
        },
        onboarding = result.onboarding.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "| pure RSA-4096 generation, {} keys, {cores} threads | {:.1} s | {:.2} keys/s | {:.1} |",
        result.pure_keys,
        result.pure_elapsed.as_secs_f64(),
        result.pure_rate(),
        result.pure_cpu,
    );
    let _ = writeln!(
        out,
        "| rotate-all `ssh`, {keys} RSA-4096 key sets | {:.1} s | {:.2} keys/s ({:.2} tenants/s) | {:.1} |",
        result.ssh.elapsed.as_secs_f64(),
        result.ssh_rate(),
        rate(tenants, result.ssh.elapsed),
        result.ssh_cpu,
    );
    let _ = writeln!(
        out,
        "| rotate-all `smtp` | {:.2} s | {:.0} tenants/s | |",
        result.smtp.elapsed.as_secs_f64(),
        rate(tenants, result.smtp.elapsed),
    );
    let _ = writeln!(
        out,
        "| rotate-all `dkim` (RSA-2048) | {:.1} s | {:.1} tenants/s | |",
        result.dkim.elapsed.as_secs_f64(),
        rate(tenants, result.dkim.elapsed),
    );
    let verdict = if result.share() >= 0.8 {
        "the target, 80 %, is met"
    } else {
        "the target, 80 %, is missed"
    };
    let _ = writeln!(
        out,
        "\n**rotate-all `ssh` ran at {:.0} % of the pure key-generation rate** ({verdict}). \
         In CPU time (CPU seconds per key of the pure runs over those of the job, OpenBao's \
         included), which other processes' load does not move: {:.0} %.",
        100.0 * result.share(),
        100.0 * result.cpu_share(),
    );
    let rsa = Spread::of(&result.rotate_rsa);
    let ed = Spread::of(&result.rotate_ed25519);
    if let (Some(rsa), Some(ed)) = (rsa, ed) {
        let ms = |x: f64| format!("{:.1}", 1000.0 * x);
        let _ = write!(
            out,
            "\nOne rotation at a time (`KeyLifecycle::replace_key`, the tenant key set; {} of \
             each, alternating): with RSA-4096 generation on the path as today, and with an \
             Ed25519 key, whose generation takes about 0.1 ms, which is what a rotation served \
             from a pool of pre-generated keys would cost (the Vault write of an RSA key is a \
             few KB larger).\n\n\
             | rotation | min ms | p10 ms | **p50 ms** | p90 ms | max ms | mean ms |\n\
             |---|---|---|---|---|---|---|\n",
            rsa.n
        );
        for (name, sp) in [
            ("RSA-4096 generated on the path (no pool)", rsa),
            ("Ed25519: a pool hit, estimated", ed),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | **{}** | {} | {} | {} |",
                ms(sp.min),
                ms(sp.p10),
                ms(sp.p50),
                ms(sp.p90),
                ms(sp.max),
                ms(sp.mean),
            );
        }
    }
    out
}

/// `keyward-bench rotate-all`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tenants (two RSA-4096 key sets each).
    #[arg(long, default_value_t = 200)]
    pub tenants: usize,
    /// Single rotations of each kind (RSA-4096 and Ed25519) for the latency table.
    #[arg(long, default_value_t = 10)]
    pub single_rotations: usize,
    /// The test suite's version: 2 tenants, 1 single rotation of each kind.
    #[arg(long)]
    pub smoke: bool,
}

impl Args {
    pub fn options(&self) -> Options {
        if self.smoke {
            Options::smoke()
        } else {
            Options {
                tenants: self.tenants,
                single_rotations: self.single_rotations,
            }
        }
    }
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `rotate-all` section is replaced";

    // The section's command line always ends `--write BENCHMARKS.md` (see `markdown`).
    async fn run(self, _write: Option<&Path>) -> anyhow::Result<Publication> {
        let result = run(&self.options()).await?;
        Ok(Publication::section(SECTION, markdown(&result)))
    }
}
