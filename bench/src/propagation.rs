//! Propagation: the time from the REST rotate call returning to the rotated key's file renamed
//! into place on the host, with N connected agents.
//!
//! One process holds the control plane and N in-process agents (OpenBao is a child process).
//! Rotations are sequential: each picks a random connected tenant, calls
//! `POST /api/v1/tenant/infrastructure/ssh-credentials/rotate` with that tenant's API token, and
//! takes t0 when the answer (with the new key's fingerprint) has been read; t1 is the instant the
//! tenant user's `authorized_keys` holding that fingerprint was renamed into place, taken by
//! [`crate::fleet::TimingApplier`] right after the agent's writer returned. Key generation, the
//! Vault write and the SQL commit happen before the answer, so they are not part of t1 - t0; the
//! control plane wakes the host's stream when the transaction commits, before the answer is
//! written, so t1 can precede t0 (a negative sample) when the agent is quicker than the HTTP
//! answer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::cluster::{Cluster, ClusterOptions};
use crate::flags::HostsDir;
use crate::fleet::Fleet;
use crate::machine::{Load, Machine, filesystem_of};
use crate::renames::Renames;
use crate::report::{self, Publication};
use crate::stats::Summary;
use crate::stats::{millis, signed_ms};
use crate::sys::{self, FdLimit};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Agents (tenants, one host each) to connect.
    pub agents: usize,
    /// Sequential rotations to time.
    pub rotations: usize,
    /// Where the simulated hosts' files go (a new temporary directory inside it); the system's
    /// temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Tenants provisioned concurrently during setup.
    pub provision_concurrency: usize,
    /// Agents started at once; the next wave starts when this one is connected.
    pub connect_wave: usize,
    /// How long one wave may take to connect before the run goes on with what connected.
    pub connect_timeout: Duration,
    /// How long one rotation may take to reach its host before it counts as lost.
    pub propagation_timeout: Duration,
    /// Before the next rotation, wait until the control plane has recorded the previous one as
    /// applied (the host is `in_sync`), so every rotation reaches an idle host. Without it,
    /// rotations are back to back and one may queue behind the previous one's acknowledgement.
    pub settle: bool,
    /// Progress lines on stderr.
    pub progress: bool,
    /// Run the control plane in a child process ([`Cluster::spawn`]). `None`: when both ends
    /// of every connection would not fit this process's descriptor limit (10,000 agents need
    /// more than 20,000 descriptors in one process).
    #[serde(default)]
    pub separate_control_plane: Option<bool>,
    /// The `keyward-bench` binary that runs a separate control plane (this one when `None`).
    #[serde(skip)]
    pub control_plane_exe: Option<PathBuf>,
}

impl Options {
    /// `agents` agents and `rotations` rotations, with the defaults for the rest.
    pub fn new(agents: usize, rotations: usize) -> Self {
        Self {
            agents,
            rotations,
            dir: None,
            provision_concurrency: 8,
            connect_wave: 100,
            connect_timeout: Duration::from_secs(60),
            propagation_timeout: Duration::from_secs(30),
            settle: true,
            progress: true,
            separate_control_plane: None,
            control_plane_exe: None,
        }
    }

    /// The test suite's version: 2 agents, 5 rotations, quiet.
    pub fn smoke() -> Self {
        Self {
            progress: false,
            ..Self::new(2, 5)
        }
    }
}

/// Setup phases, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SetupTimes {
    /// OpenBao and the control plane started.
    pub services: f64,
    /// Tenants, tokens and hosts created, agents enrolled.
    pub provision: f64,
    /// Agents connected and their first state applied.
    pub connect: f64,
    pub total: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub options: Options,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub machine: Machine,
    /// `release` or `debug`.
    pub build: String,
    pub bao_version: String,
    /// The filesystem the hosts' files were written on.
    pub hosts_filesystem: String,
    pub load_before: Load,
    pub load_after: Load,
    pub fd_limit: FdLimit,
    pub agents_provisioned: usize,
    pub agents_connected: usize,
    /// Why fewer agents than asked for ran: the limit or error that stopped the setup.
    pub stopped_by: Option<String>,
    pub setup: SetupTimes,
    /// t1 - t0 per rotation, in milliseconds (negative: renamed before the answer was read).
    pub propagation_ms: Vec<f64>,
    /// Of each sample, the time spent in the writer (temporary file, fsync, rename, directory
    /// fsync), in milliseconds.
    pub write_ms: Vec<f64>,
    /// How long each rotate call took, from sending the request to reading the answer.
    pub rotate_call_ms: Vec<f64>,
    /// Rotations whose key did not reach the host within the timeout.
    pub lost: usize,
    /// The control plane ran in a child process (the RSS figures are then the agents' alone).
    #[serde(default)]
    pub separate_control_plane: bool,
    /// Resident memory of the whole process (control plane and agents), in bytes.
    pub rss_before_agents: u64,
    pub rss_after_agents: u64,
    pub rss_after_rotations: u64,
    pub open_fds_with_agents: u64,
    pub threads_with_agents: u64,
}

impl Report {
    pub fn propagation(&self) -> Option<Summary> {
        Summary::of(&self.propagation_ms)
    }

    pub fn write(&self) -> Option<Summary> {
        Summary::of(&self.write_ms)
    }

    pub fn rotate_call(&self) -> Option<Summary> {
        Summary::of(&self.rotate_call_ms)
    }

    /// Resident memory per connected agent (control plane and agent sides together).
    pub fn rss_per_agent(&self) -> Option<u64> {
        let n = u64::try_from(self.agents_connected)
            .ok()
            .filter(|n| *n > 0)?;
        Some(self.rss_after_agents.saturating_sub(self.rss_before_agents) / n)
    }
}

/// Runs the benchmark: setup, rotations, teardown.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let say = |line: String| {
        if options.progress {
            eprintln!("{line}");
        }
    };
    let fd_limit = sys::raise_fd_limit();
    let load_before = Load::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let setup_start = Instant::now();

    say(format!(
        "propagation: {} agents, {} rotations",
        options.agents, options.rotations
    ));
    // Both ends of each connection, the hosts' files, SQLite and the HTTP clients.
    let descriptors_needed = 2 * options.agents as u64 + 256;
    let separate_control_plane = options
        .separate_control_plane
        .unwrap_or(descriptors_needed > fd_limit.soft);
    let cluster = if separate_control_plane {
        Cluster::spawn(options.control_plane_exe.as_deref()).await?
    } else {
        Cluster::start(&ClusterOptions::default()).await?
    };
    let services = setup_start.elapsed();
    say(format!(
        "  OpenBao and the control plane started in {services:.1?}"
    ));

    let (mut fleet, renamed) = Fleet::new(options.dir.as_deref())?;
    let mut renames = Renames::new(renamed);
    let hosts_filesystem = filesystem_of(fleet.root());
    let provision_start = Instant::now();
    let mut stopped_by = fleet
        .provision_all(
            &cluster,
            options.agents,
            options.provision_concurrency,
            options.progress,
        )
        .await
        .map(|e| describe_stop("provisioning", fleet.hosts.len(), &e));
    let provision = provision_start.elapsed();
    say(format!(
        "  {} tenants and hosts provisioned and enrolled in {provision:.1?}",
        fleet.hosts.len()
    ));

    let rss_before_agents = sys::rss_bytes();
    let connect_start = Instant::now();
    if stopped_by.is_none() {
        stopped_by = fleet
            .connect_all(
                options.connect_wave,
                options.connect_timeout,
                options.progress,
                |_| {},
            )
            .await;
    }
    let connected = fleet.connected();
    if options.settle {
        // The last acknowledgements of the connection states are written before rotating.
        for &i in &connected {
            cluster
                .wait_in_sync(&fleet.hosts[i].host_id, options.connect_timeout)
                .await?;
        }
    }
    let connect = connect_start.elapsed();
    // The first states written at connection are not rotations.
    renames.clear();
    let rss_after_agents = sys::rss_bytes();
    let open_fds_with_agents = sys::open_fds();
    let threads_with_agents = sys::threads();
    let setup = SetupTimes {
        services: services.as_secs_f64(),
        provision: provision.as_secs_f64(),
        connect: connect.as_secs_f64(),
        total: setup_start.elapsed().as_secs_f64(),
    };
    say(format!(
        "  {} agents connected in {connect:.1?} (setup {:.1} s); rotating",
        connected.len(),
        setup.total
    ));

    let mut rotations = Rotations {
        cluster: &cluster,
        fleet: &fleet,
        renames: &mut renames,
        timeout: options.propagation_timeout,
        settle: options.settle,
    };
    // Teardown happens whatever the rotations did.
    let samples = rotations.run(options, &connected).await;
    let rss_after_rotations = sys::rss_bytes();
    let load_after = Load::now();

    fleet.stop().await;
    let bao_version = cluster.bao_version.clone();
    cluster.shutdown().await?;
    let samples = samples?;
    Ok(Report {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        build: crate::machine::BUILD.into(),
        bao_version,
        hosts_filesystem,
        load_before,
        load_after,
        fd_limit,
        agents_provisioned: fleet.hosts.len(),
        agents_connected: connected.len(),
        stopped_by,
        setup,
        propagation_ms: samples.propagation_ms,
        write_ms: samples.write_ms,
        rotate_call_ms: samples.rotate_call_ms,
        lost: samples.lost,
        separate_control_plane,
        rss_before_agents,
        rss_after_agents,
        rss_after_rotations,
        open_fds_with_agents,
        threads_with_agents,
    })
}

/// The reason provisioning stopped, with the limit behind it when one is recognisable.
pub(crate) fn describe_stop(phase: &str, done: usize, error: &anyhow::Error) -> String {
    let limit = sys::limit_behind(error)
        .map(|l| format!("limit: {l}; "))
        .unwrap_or_default();
    format!(
        "{phase} stopped after {done} hosts: {limit}{error:#} (open descriptors {}, threads {}, RSS {})",
        sys::open_fds(),
        sys::threads(),
        crate::report::bytes(sys::rss_bytes())
    )
}

struct Rotations<'a> {
    cluster: &'a Cluster,
    fleet: &'a Fleet,
    renames: &'a mut Renames,
    timeout: Duration,
    settle: bool,
}

/// What the rotations measured.
#[derive(Debug, Default)]
struct Samples {
    propagation_ms: Vec<f64>,
    write_ms: Vec<f64>,
    rotate_call_ms: Vec<f64>,
    lost: usize,
}

struct Timed {
    call_ms: f64,
    /// t1 - t0 and the writer's share of it; `None` when the key did not arrive in time.
    renamed: Option<(f64, f64)>,
}

impl Rotations<'_> {
    /// `options.rotations` sequential rotations, each of a random connected tenant.
    async fn run(&mut self, options: &Options, connected: &[usize]) -> anyhow::Result<Samples> {
        let mut samples = Samples::default();
        if connected.is_empty() {
            return Ok(samples);
        }
        for n in 0..options.rotations {
            let live = self.fleet.connected();
            let pick = *live
                .choose(&mut rand::thread_rng())
                .or_else(|| connected.first())
                .context("no connected agent")?;
            let timed = self.rotate_once(pick).await?;
            samples.rotate_call_ms.push(timed.call_ms);
            match timed.renamed {
                Some((propagation, write)) => {
                    samples.propagation_ms.push(propagation);
                    samples.write_ms.push(write);
                }
                None => samples.lost += 1,
            }
            if options.progress && (n + 1) % 50 == 0 {
                eprintln!("  {}/{} rotations", n + 1, options.rotations);
            }
        }
        Ok(samples)
    }

    /// Rotates host `i`'s tenant key and waits for the new key's file on that host.
    async fn rotate_once(&mut self, i: usize) -> anyhow::Result<Timed> {
        let host = &self.fleet.hosts[i];
        let sent = Instant::now();
        let fingerprint = self
            .cluster
            .rotate_tenant(&host.tenant_token)
            .await
            .with_context(|| format!("rotating {}", host.tenant))?;
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let t1 = self
            .renames
            .wait(host.index, &fingerprint, deadline)
            .await?;
        if self.settle {
            // Not timed: the acknowledgement and its SQL write, before the next rotation.
            let synced = self
                .cluster
                .wait_in_sync(&host.host_id, self.timeout)
                .await?;
            if !synced {
                tracing::warn!(host = %host.host_id, "the host did not acknowledge in time");
            }
        }
        Ok(Timed {
            call_ms: millis(t0 - sent),
            renamed: t1.map(|(started, t1)| (signed_ms(t0, t1), millis(t1 - started))),
        })
    }
}

/// `keyward-bench propagation`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connected agents (tenants with one host each).
    #[arg(long, default_value_t = 1)]
    pub agents: usize,
    /// Sequential rotations to time.
    #[arg(long, default_value_t = 200)]
    pub rotations: usize,
    /// The test suite's tiny version: 2 agents, 5 rotations (overrides --agents and --rotations).
    #[arg(long)]
    pub smoke: bool,
    /// Rotate back to back, without waiting for the previous rotation's acknowledgement.
    #[arg(long)]
    pub back_to_back: bool,
    /// Runs, each in a fresh process with a fresh OpenBao and database.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    #[command(flatten)]
    pub hosts: HostsDir,
    /// Print the report as JSON instead of Markdown (used by --runs).
    #[arg(long, hide = true)]
    pub json: bool,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its propagation sections are replaced";

    /// With `--runs N` (N > 1), each run is a child process printing `--json`; the sections
    /// are the method and the scenario's results.
    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        let mut options = if self.smoke {
            Options {
                progress: true,
                ..Options::smoke()
            }
        } else {
            Options::new(self.agents, self.rotations)
        };
        options.dir = self.hosts.dir;
        options.settle = !self.back_to_back;
        let runs = self.runs.max(1);
        let reports = if runs == 1 {
            vec![run(&options).await?]
        } else {
            let mut reports = Vec::with_capacity(runs);
            for run in 1..=runs {
                eprintln!("run {run} of {runs}");
                reports.push(run_in_child(&options).await?);
            }
            reports
        };
        if self.json {
            return Ok(Publication {
                stdout: serde_json::to_string(&reports[0])? + "\n",
                sections: Vec::new(),
            });
        }
        let command = report::propagation_command(&options, runs, write);
        Ok(Publication {
            stdout: report::propagation_stdout(&reports),
            sections: vec![
                ("propagation-method".into(), report::propagation_method()),
                (
                    report::propagation_section_id(&reports[0]),
                    report::propagation_section(&reports, &command),
                ),
            ],
        })
    }
}

/// One run in a fresh process of this binary: a fresh heap for the memory figures.
async fn run_in_child(options: &Options) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut child = tokio::process::Command::new(exe);
    child.args([
        "propagation",
        "--json",
        "--agents",
        &options.agents.to_string(),
        "--rotations",
        &options.rotations.to_string(),
    ]);
    if let Some(dir) = &options.dir {
        child.arg("--dir").arg(dir);
    }
    if !options.settle {
        child.arg("--back-to-back");
    }
    let out = child
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running a benchmark process")?;
    anyhow::ensure!(
        out.status.success(),
        "the benchmark process failed: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("reading the benchmark process's report")
}
