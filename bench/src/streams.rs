//! The control plane holding N mTLS agent streams: its memory per connected agent and its CPU
//! while every stream is idle (only the HTTP/2 keepalive pings flow).
//!
//! The control plane runs in a process of its own ([`Cluster::spawn`]: this binary, with its
//! own OpenBao), the N agents in this one, so that `/proc/{pid}` of the control plane's process
//! counts the control plane alone: its `VmRSS` before the agents connect and after, and its
//! `utime + stime` over an idle minute. Memory is also sampled after each wave of agents, so
//! the marginal cost of a stream (the slope over the second half) can be told from one-off
//! growth (pools, caches, the allocator's arenas).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::cluster::Cluster;
use crate::flags::HostsDir;
use crate::fleet::Fleet;
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::report::bytes;
use crate::sys::{self, FdLimit};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Agents (tenants with one host each) to connect.
    pub agents: usize,
    /// How long the idle CPU is measured, with every agent connected.
    pub idle: Duration,
    /// How long the idle CPU is measured before any agent connects (the baseline).
    pub idle_baseline: Duration,
    /// Where the simulated hosts' files go; the system's temporary directory when `None`.
    pub dir: Option<PathBuf>,
    pub provision_concurrency: usize,
    pub connect_wave: usize,
    pub connect_timeout: Duration,
    /// How long to wait after the last wave before measuring (acknowledgements written).
    pub settle: Duration,
    pub progress: bool,
    /// The `keyward-bench` binary that runs the control plane; this process's own binary
    /// when `None` (a test binary names it: it is not `keyward-bench` itself).
    #[serde(skip)]
    pub control_plane_exe: Option<PathBuf>,
}

impl Options {
    pub fn new(agents: usize) -> Self {
        Self {
            agents,
            idle: Duration::from_secs(60),
            idle_baseline: Duration::from_secs(20),
            dir: None,
            provision_concurrency: 8,
            connect_wave: 250,
            connect_timeout: Duration::from_secs(120),
            settle: Duration::from_secs(5),
            progress: true,
            control_plane_exe: None,
        }
    }

    /// The test suite's version: 3 agents, idle for 2 s.
    pub fn smoke() -> Self {
        Self {
            idle: Duration::from_secs(2),
            idle_baseline: Duration::from_secs(1),
            settle: Duration::from_millis(500),
            progress: false,
            ..Self::new(3)
        }
    }
}

/// The control plane's memory after some agents connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySample {
    pub agents: usize,
    pub rss: u64,
}

/// CPU use of a process over an interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuSample {
    pub seconds: f64,
    pub cpu_seconds: f64,
}

impl CpuSample {
    /// Percent of one core.
    pub fn percent(&self) -> f64 {
        if self.seconds > 0.0 {
            100.0 * self.cpu_seconds / self.seconds
        } else {
            0.0
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub build: String,
    pub load_before: Load,
    pub load_after: Load,
    /// This process's descriptor limit (the agents' side) and the control plane's.
    pub fd_limit: FdLimit,
    pub control_plane_fd_limit: Option<FdLimit>,
    pub agents_provisioned: usize,
    pub agents_connected: usize,
    pub stopped_by: Option<String>,
    pub provision_s: f64,
    pub connect_s: f64,
    /// The control plane's `VmRSS` after provisioning, before any agent connected.
    pub rss_before: u64,
    /// After each wave, and after the settle time with every agent connected (the last one).
    pub rss_samples: Vec<MemorySample>,
    /// After the idle minute.
    pub rss_after_idle: u64,
    /// The control plane's `VmHWM` at the end.
    pub rss_peak: u64,
    /// The control plane's open descriptors and threads with every agent connected.
    pub control_plane_fds: u64,
    pub control_plane_threads: u64,
    /// The agents' process (this one), for scale.
    pub agents_process_rss: u64,
    /// The control plane's CPU before any agent connected, and with every agent connected.
    pub cpu_baseline: CpuSample,
    pub cpu_idle: CpuSample,
    /// The agents' process over the same idle interval.
    pub agents_cpu_idle: CpuSample,
}

impl Report {
    fn last(&self) -> Option<MemorySample> {
        self.rss_samples.last().copied()
    }

    /// The control plane's memory per connected agent: its RSS growth from before the first
    /// agent to all connected, over the agents connected.
    pub fn rss_per_agent(&self) -> Option<u64> {
        let last = self.last()?;
        let n = u64::try_from(last.agents).ok().filter(|n| *n > 0)?;
        Some(last.rss.saturating_sub(self.rss_before) / n)
    }

    /// The marginal cost: the growth over the second half of the agents, per agent.
    pub fn rss_per_agent_marginal(&self) -> Option<u64> {
        let last = self.last()?;
        let half = self
            .rss_samples
            .iter()
            .find(|s| s.agents * 2 >= last.agents && s.agents < last.agents)?;
        let n = u64::try_from(last.agents - half.agents).ok()?;
        Some(last.rss.saturating_sub(half.rss) / n)
    }
}

fn cpu_of(pid: &str) -> f64 {
    sys::cpu_seconds_of(pid).unwrap_or(0.0)
}

/// CPU of the control plane's process (and of this one) over `interval`.
async fn cpu_over(pid: u32, interval: Duration) -> (CpuSample, CpuSample) {
    let pid = pid.to_string();
    let (cp0, me0, t0) = (cpu_of(&pid), cpu_of("self"), Instant::now());
    tokio::time::sleep(interval).await;
    let seconds = t0.elapsed().as_secs_f64();
    (
        CpuSample {
            seconds,
            cpu_seconds: cpu_of(&pid) - cp0,
        },
        CpuSample {
            seconds,
            cpu_seconds: cpu_of("self") - me0,
        },
    )
}

/// Runs the benchmark: a control plane in its own process, N agents here, memory and idle CPU.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let say = |line: String| {
        if options.progress {
            eprintln!("{line}");
        }
    };
    let fd_limit = sys::raise_fd_limit();
    let load_before = Load::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    say(format!(
        "streams: {} agents, idle {:?}",
        options.agents, options.idle
    ));
    let cluster = Cluster::spawn(options.control_plane_exe.as_deref()).await?;
    let pid = cluster.pid();
    let (mut fleet, renamed) = Fleet::new(options.dir.as_deref())?;
    // File renames are not measured here.
    drop(renamed);
    let provision_start = Instant::now();
    let mut stopped_by = fleet
        .provision_all(
            &cluster,
            options.agents,
            options.provision_concurrency,
            options.progress,
        )
        .await
        .map(|e| crate::propagation::describe_stop("provisioning", fleet.hosts.len(), &e));
    let provision_s = provision_start.elapsed().as_secs_f64();
    say(format!(
        "  {} hosts provisioned in {provision_s:.1} s; control plane pid {pid}",
        fleet.hosts.len()
    ));

    let (cpu_baseline, _) = cpu_over(pid, options.idle_baseline).await;
    let rss_before = sys::rss_bytes_of(pid);
    let connect_start = Instant::now();
    let mut rss_samples = Vec::new();
    if stopped_by.is_none() {
        let sample_every = (options.agents / 10).max(options.connect_wave).max(1);
        stopped_by = fleet
            .connect_all(
                options.connect_wave,
                options.connect_timeout,
                options.progress,
                |started| {
                    if started % sample_every == 0 {
                        rss_samples.push(MemorySample {
                            agents: started,
                            rss: sys::rss_bytes_of(pid),
                        });
                    }
                },
            )
            .await;
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    tokio::time::sleep(options.settle).await;
    let connected = fleet.connected().len();
    // A wave sampled before the settle time with the same count is superseded by this sample.
    rss_samples.retain(|s| s.agents != connected);
    rss_samples.push(MemorySample {
        agents: connected,
        rss: sys::rss_bytes_of(pid),
    });
    let control_plane_fds = sys::open_fds_of(pid);
    let control_plane_threads = sys::threads_of(pid);
    say(format!(
        "  {connected} agents connected in {connect_s:.1} s; control plane RSS {} → {}; idle for {:?}",
        bytes(rss_before),
        bytes(rss_samples.last().map_or(0, |s| s.rss)),
        options.idle
    ));
    let (cpu_idle, agents_cpu_idle) = cpu_over(pid, options.idle).await;
    let rss_after_idle = sys::rss_bytes_of(pid);
    let rss_peak = sys::peak_rss_bytes_of(pid);
    let agents_process_rss = sys::rss_bytes();
    let still = fleet.connected().len();
    if still < connected && stopped_by.is_none() {
        stopped_by = Some(format!(
            "{} agents dropped their stream while idle",
            connected - still
        ));
    }
    let load_after = Load::now();
    fleet.stop().await;
    let control_plane_fd_limit = cluster.child_fd_limit.clone();
    cluster.shutdown().await?;
    Ok(Report {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        build: crate::machine::BUILD.into(),
        load_before,
        load_after,
        fd_limit,
        control_plane_fd_limit,
        agents_provisioned: fleet.hosts.len(),
        agents_connected: connected,
        stopped_by,
        provision_s,
        connect_s,
        rss_before,
        rss_samples,
        rss_after_idle,
        rss_peak,
        control_plane_fds,
        control_plane_threads,
        agents_process_rss,
        cpu_baseline,
        cpu_idle,
        agents_cpu_idle,
    })
}

/// The command line that reproduces a run.
pub fn command_line(options: &Options, write: Option<&std::path::Path>) -> String {
    let mut command = format!(
        "cargo run --release -p keyward-bench -- streams --agents {} --idle-secs {}",
        options.agents,
        options.idle.as_secs()
    );
    if let Some(dir) = &options.dir {
        command.push_str(&format!(" --dir {}", dir.display()));
    }
    if let Some(path) = write {
        command.push_str(&format!(" --write {}", path.display()));
    }
    command
}

/// The `BENCHMARKS.md` section id.
pub fn section_id(report: &Report) -> String {
    format!("streams-{}-agents", report.options.agents)
}

/// The section: method, machine, results.
pub fn markdown(report: &Report, command: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let r = report;
    let _ = writeln!(
        out,
        "## Control plane holding {} mTLS agent streams: memory and idle CPU\n",
        r.options.agents
    );
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. Build: {}. Started {} (load average {} before, {} after; other engineers' \
         builds share the machine, see the load).\n",
        r.machine.describe(),
        r.build,
        r.started_at,
        r.load_before,
        r.load_after
    );
    out.push_str(&format!(
        "Method: the control plane (`keyward_server::server::start`, SQLite, its own OpenBao dev \
         server) runs in a child process of the benchmark (`keyward-bench control-plane-child`); \
         the agents (`keyward_agent::run_with`, each its own TLS 1.3 client certificate and \
         HTTP/2 connection over loopback, the default keepalive: the agent pings every {agent_ping} s, \
         the control plane every 60 s) run \
         in the benchmark's process. Memory is the control plane process's `VmRSS` \
         (`/proc/PID/status`): after every host was provisioned and before the first agent \
         connected, after each wave of agents, and after a settle time with all connected. \
         \"Per agent\" is the growth over the agents connected; \"marginal\" the growth over the \
         second half of the agents only, which leaves out one-off growth (connection pools, \
         allocator arenas). CPU is `utime + stime` of the control plane's process \
         (`/proc/PID/stat`, 10 ms ticks) over the idle interval, in percent of one core; the \
         baseline is the same before any agent connected.\n\n",
        agent_ping = keyward_agent::client::KEEPALIVE_INTERVAL.as_secs(),
    ));
    let per = |x: Option<u64>| x.map_or_else(|| "–".into(), bytes);
    out.push_str(
        "| agents connected | RSS before agents | RSS with agents | **per agent** | marginal per agent (second half) | RSS after idle | peak RSS | CP fds / threads |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let _ = writeln!(
        out,
        "| {} of {} | {} | {} | **{}** | {} | {} | {} | {} / {} |",
        r.agents_connected,
        r.options.agents,
        bytes(r.rss_before),
        bytes(r.last().map_or(0, |s| s.rss)),
        per(r.rss_per_agent()),
        per(r.rss_per_agent_marginal()),
        bytes(r.rss_after_idle),
        bytes(r.rss_peak),
        r.control_plane_fds,
        r.control_plane_threads,
    );
    out.push('\n');
    out.push_str(
        "| control plane CPU | interval s | CPU s | **% of one core** |\n|---|---|---|---|\n",
    );
    for (what, s) in [
        ("before any agent (baseline)", r.cpu_baseline),
        (
            &*format!("{} agents connected, idle", r.agents_connected),
            r.cpu_idle,
        ),
        ("the agents' process, same interval", r.agents_cpu_idle),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {:.1} | {:.2} | **{:.2}** |",
            s.seconds,
            s.cpu_seconds,
            s.percent()
        );
    }
    out.push('\n');
    let samples: Vec<String> = r
        .rss_samples
        .iter()
        .map(|s| format!("{} → {}", s.agents, bytes(s.rss)))
        .collect();
    let _ = writeln!(
        out,
        "RSS after each sampled wave (agents → control plane RSS): {}.\n",
        samples.join(", ")
    );
    let _ = writeln!(
        out,
        "Setup: provisioning {:.1} s, connecting {:.1} s. The agents' process: RSS {}. Limits: \
         agents' process {}; control plane's process {}; {}.",
        r.provision_s,
        r.connect_s,
        bytes(r.agents_process_rss),
        r.fd_limit.describe(),
        r.control_plane_fd_limit
            .as_ref()
            .map_or_else(|| "–".into(), FdLimit::describe),
        match &r.stopped_by {
            Some(reason) => format!("**stopped by:** {reason}"),
            None => "no limit stopped the run".into(),
        }
    );
    out
}

/// `keyward-bench streams`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents to connect (tenants with one host each).
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Seconds of idle CPU measured with every agent connected.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// The test suite's tiny version: 3 agents, 2 s idle.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub hosts: HostsDir,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its own section is replaced";

    async fn run(self, write: Option<&std::path::Path>) -> anyhow::Result<Publication> {
        let mut options = if self.smoke {
            Options {
                progress: true,
                ..Options::smoke()
            }
        } else {
            Options {
                idle: Duration::from_secs(self.idle_secs),
                ..Options::new(self.agents)
            }
        };
        options.dir = self.hosts.dir;
        let report = run(&options).await?;
        let line = if self.smoke {
            "cargo run --release -p keyward-bench -- streams --smoke".to_owned()
        } else {
            command_line(&options, write)
        };
        let section = markdown(&report, &line);
        Ok(Publication::section(section_id(&report), section))
    }
}
