//! Fan-out: a bulk SSH rotation (`POST /api/v1/admin/secrets/rotate-all`, `ssh`) of N tenants
//! whose rotation policy's algorithm is Ed25519 (the control plane's default here), each with
//! one connected host, from the call to the last host's acknowledgement and to the last file
//! renamed on a host.
//!
//! The control plane runs in a child process ([`Cluster::spawn`]; with 10,000 agents both ends
//! of every connection in one process would need more descriptors than the hard limit of
//! 20,000 allows, and raising it needs `CAP_SYS_RESOURCE`), the N agents in this one. The same
//! job is first run with no agent connected (the job alone: key generation, Vault writes, SQL),
//! then with every agent connected and in sync (the job and the fan-out); the difference is
//! what the streams add.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::benchmark::Benchmark;
use crate::cluster::Cluster;
use crate::flags::HostsDir;
use crate::fleet::{FileRenamed, Fleet};
use crate::machine::{Load, Machine, filesystem_of};
use crate::report::Publication;
use crate::sys::{self, FdLimit};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Tenants, one connected host each.
    pub agents: usize,
    /// Where the simulated hosts' files go; the system's temporary directory when `None`.
    pub dir: Option<PathBuf>,
    pub provision_concurrency: usize,
    pub connect_wave: usize,
    pub connect_timeout: Duration,
    /// How long the job and its acknowledgements may take in all.
    pub timeout: Duration,
    /// Run the job once without agents first (the job's own time).
    pub without_agents: bool,
    pub progress: bool,
    /// The `keyward-bench` binary that runs the control plane (see
    /// [`crate::streams::Options::control_plane_exe`]).
    #[serde(skip)]
    pub control_plane_exe: Option<PathBuf>,
}

impl Options {
    pub fn new(agents: usize) -> Self {
        Self {
            agents,
            dir: None,
            provision_concurrency: 8,
            connect_wave: 250,
            connect_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(600),
            without_agents: true,
            progress: true,
            control_plane_exe: None,
        }
    }

    /// The test suite's version: 3 tenants.
    pub fn smoke() -> Self {
        Self {
            progress: false,
            ..Self::new(3)
        }
    }
}

/// One bulk rotation, timed from sending the call (seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The answer, sent when the job has gone through every tenant.
    pub answered_s: f64,
    pub rotated: i64,
    pub failed: i64,
    /// The first and last file renamed on a host (`None`: no agent, or none seen).
    pub first_rename_s: Option<f64>,
    pub last_rename_s: Option<f64>,
    /// The last host to apply both new keys and send its acknowledgement (the agent's status
    /// changes as it returns the `Applied` message to send).
    pub last_ack_s: Option<f64>,
    /// The control plane's admin view first showing every host `in_sync` (every
    /// acknowledgement recorded in SQL), polled after the last acknowledgement was sent.
    pub all_recorded_s: Option<f64>,
    /// Hosts in sync at the end, of those live.
    pub in_sync: i64,
    pub live: i64,
    /// Files renamed during the job (two users per host, once or more each).
    pub renames: usize,
    /// CPU time (user and system) from the call to the end of the measurement: the control
    /// plane's process and the agents' process (this one), in seconds.
    #[serde(default)]
    pub control_plane_cpu_s: f64,
    #[serde(default)]
    pub agents_cpu_s: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub build: String,
    pub hosts_filesystem: String,
    pub load_before: Load,
    pub load_after: Load,
    pub fd_limit: FdLimit,
    pub agents_provisioned: usize,
    pub agents_connected: usize,
    pub stopped_by: Option<String>,
    pub provision_s: f64,
    pub connect_s: f64,
    /// The job with no agent connected.
    pub alone: Option<Job>,
    /// The job with every agent connected.
    pub fanout: Option<Job>,
}

/// `(live, in_sync)` hosts in the control plane's admin view.
async fn sync_counts(cluster: &Cluster) -> anyhow::Result<(i64, i64)> {
    let hosts = cluster.admin_get("/api/v1/admin/hosts").await?;
    let hosts = hosts.as_array().context("the host list is not an array")?;
    let live: Vec<_> = hosts
        .iter()
        .filter(|h| h["enrolledAt"].is_string() && h["status"] != "revoked")
        .collect();
    let in_sync = live.iter().filter(|h| h["status"] == "in_sync").count();
    Ok((
        i64::try_from(live.len()).unwrap_or(i64::MAX),
        i64::try_from(in_sync).unwrap_or(i64::MAX),
    ))
}

/// Runs one `rotate-all` of `ssh`; with `hosts`, follows it until each of them applied a
/// generation two above the one it had (both key sets rotated: two new generations) and the
/// control plane recorded every acknowledgement.
async fn rotate_all(
    cluster: &Cluster,
    fleet: &Fleet,
    hosts: &[usize],
    renamed: &mut mpsc::UnboundedReceiver<FileRenamed>,
    timeout: Duration,
) -> anyhow::Result<Job> {
    while renamed.try_recv().is_ok() {}
    let deadline = tokio::time::Instant::now() + timeout;
    // Each host's acknowledgement: when its agent has applied the generation two above today's.
    let mut acks = futures::stream::FuturesUnordered::new();
    for &i in hosts {
        let Some(mut status) = fleet.status(i) else {
            continue;
        };
        let target = status.borrow().applied_generation + 2;
        acks.push(async move {
            let reached = tokio::time::timeout_at(
                deadline,
                status.wait_for(|s| s.applied_generation >= target),
            )
            .await;
            matches!(reached, Ok(Ok(_))).then(Instant::now)
        });
    }
    let expected = acks.len();
    let cp_pid = cluster.pid().to_string();
    let cpu = |pid: &str| sys::cpu_seconds_of(pid).unwrap_or(0.0);
    let (cp_cpu0, agents_cpu0) = (cpu(&cp_pid), cpu("self"));
    let t0 = Instant::now();
    let call = cluster.post(
        "/api/v1/admin/secrets/rotate-all",
        &cluster.admin_token,
        Some(json!({ "secretType": "ssh" })),
        200,
    );
    tokio::pin!(call);
    let mut job = Job::default();
    let mut answered = false;
    let mut acked = 0;
    let mut last_ack: Option<Instant> = None;
    let mut first_rename: Option<Instant> = None;
    let mut last_rename: Option<Instant> = None;
    let mut track = |event: FileRenamed, job: &mut Job| {
        job.renames += 1;
        first_rename.get_or_insert(event.at);
        last_rename = Some(last_rename.map_or(event.at, |l| l.max(event.at)));
    };
    use futures::StreamExt as _;
    while !answered || acked < expected {
        tokio::select! {
            answer = &mut call, if !answered => {
                let answer = answer.context("rotate-all")?;
                job.answered_s = t0.elapsed().as_secs_f64();
                job.rotated = answer["rotatedCount"].as_i64().unwrap_or(0);
                job.failed = answer["failedCount"].as_i64().unwrap_or(0);
                answered = true;
            }
            Some(event) = renamed.recv() => track(event, &mut job),
            Some(at) = acks.next() => {
                acked += 1;
                if let Some(at) = at {
                    last_ack = Some(last_ack.map_or(at, |l| l.max(at)));
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    job.control_plane_cpu_s = cpu(&cp_pid) - cp_cpu0;
    job.agents_cpu_s = cpu("self") - agents_cpu0;
    let all_acked = acked == expected && last_ack.is_some();
    if expected > 0 && all_acked {
        job.last_ack_s = last_ack.map(|t| secs_since(t0, t));
        // Then the control plane's own record of them.
        loop {
            let (live, in_sync) = sync_counts(cluster).await?;
            (job.live, job.in_sync) = (live, in_sync);
            if in_sync >= live {
                job.all_recorded_s = Some(t0.elapsed().as_secs_f64());
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Renames reported by now belong to this job (an agent reports right after its write).
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Ok(event) = renamed.try_recv() {
        track(event, &mut job);
    }
    job.first_rename_s = first_rename.map(|t| secs_since(t0, t));
    job.last_rename_s = last_rename.map(|t| secs_since(t0, t));
    Ok(job)
}

fn secs_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64()
}

/// Runs the benchmark: provisioning, the job alone, connecting, the job with every agent.
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
        "fan-out: rotate-all ssh of {} tenants",
        options.agents
    ));
    let cluster = Cluster::spawn(options.control_plane_exe.as_deref()).await?;
    let (mut fleet, mut renamed) = Fleet::new(options.dir.as_deref())?;
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
        .map(|e| crate::propagation::describe_stop("provisioning", fleet.hosts.len(), &e));
    let provision_s = provision_start.elapsed().as_secs_f64();
    say(format!(
        "  {} tenants provisioned in {provision_s:.1} s",
        fleet.hosts.len()
    ));

    let result = async {
        let alone = if options.without_agents && stopped_by.is_none() {
            let job = rotate_all(&cluster, &fleet, &[], &mut renamed, options.timeout).await?;
            say(format!(
                "  without agents: the job answered in {:.2} s",
                job.answered_s
            ));
            Some(job)
        } else {
            None
        };
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
        // Every connected host acknowledges its first state before the job.
        let in_sync_by = tokio::time::Instant::now() + options.connect_timeout;
        loop {
            let (live, in_sync) = sync_counts(&cluster).await?;
            if in_sync >= live || tokio::time::Instant::now() >= in_sync_by {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let connect_s = connect_start.elapsed().as_secs_f64();
        let live = fleet.connected();
        let connected = live.len();
        say(format!(
            "  {connected} agents connected and in sync in {connect_s:.1} s; rotating"
        ));
        let fanout = if connected > 0 {
            let job = rotate_all(&cluster, &fleet, &live, &mut renamed, options.timeout).await?;
            say(format!(
                "  with agents: answered {:.2} s, last rename {:?} s, last ack {:?} s, all recorded {:?} s",
                job.answered_s, job.last_rename_s, job.last_ack_s, job.all_recorded_s
            ));
            Some(job)
        } else {
            None
        };
        anyhow::Ok((alone, connect_s, connected, fanout))
    }
    .await;
    let load_after = Load::now();
    fleet.stop().await;
    cluster.shutdown().await?;
    let (alone, connect_s, agents_connected, fanout) = result?;
    Ok(Report {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        build: crate::machine::BUILD.into(),
        hosts_filesystem,
        load_before,
        load_after,
        fd_limit,
        agents_provisioned: fleet.hosts.len(),
        agents_connected,
        stopped_by,
        provision_s,
        connect_s,
        alone,
        fanout,
    })
}

/// The command line that reproduces a run.
pub fn command_line(options: &Options, write: Option<&std::path::Path>) -> String {
    let mut command = format!(
        "cargo run --release -p keyward-bench -- fanout --agents {}",
        options.agents
    );
    if !options.without_agents {
        command.push_str(" --no-alone");
    }
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
    let fs = if report.hosts_filesystem == "tmpfs" {
        "-tmpfs"
    } else {
        ""
    };
    format!("fanout-{}-agents{fs}", report.options.agents)
}

fn secs(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |x| format!("{x:.2}"))
}

/// The section: method, machine, results.
pub fn markdown(report: &Report, command: &str) -> String {
    use std::fmt::Write as _;
    let r = report;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Fan-out: rotate-all of {} Ed25519 tenants to their connected hosts\n",
        r.options.agents
    );
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. Build: {}. Hosts' files on {}. Started {} (load average {} before, {} \
         after; other engineers' builds share the machine, see the load).\n",
        r.machine.describe(),
        r.build,
        r.hosts_filesystem,
        r.started_at,
        r.load_before,
        r.load_after
    );
    out.push_str(
        "Method: the control plane (SQLite, its own OpenBao dev server) runs in a child process \
         (both ends of 10,000 connections in one process need more descriptors than the hard \
         limit of 20,000, which this machine does not let a process raise), the agents in the \
         benchmark's process; N tenants, each with Ed25519 keys (the \
         deployment's policy algorithm) and one enrolled host. `POST \
         /api/v1/admin/secrets/rotate-all` with `{\"secretType\": \"ssh\"}` rotates both key \
         sets of every tenant and answers when the job has gone through them all. The clock \
         starts when the call is sent. \"Last rename\" is the last `authorized_keys` renamed on \
         any host (the agents' writer returning); \"last ack\" the last host to have applied a \
         state two generations above its own before the job (both key sets rotated) and sent \
         its `Applied` acknowledgement (the agent's status changes as it returns that message); \
         \"all recorded\" the first poll (every 100 ms, after the last ack) of `GET \
         /api/v1/admin/hosts` showing every live host `in_sync`. The \
         job is run first with no agent connected (the job alone), then again with every agent \
         connected and in sync.\n\n",
    );
    out.push_str(
        "| run | tenants rotated / failed | **answered s** | first rename s | last rename s | **last ack s** | all recorded s | hosts in sync | files renamed | tenants/s to last ack | CPU s: control plane / agents |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (what, job) in [
        ("no agent connected (the job alone)", &r.alone),
        (
            &*format!("{} agents connected", r.agents_connected),
            &r.fanout,
        ),
    ] {
        let Some(j) = job else { continue };
        let end = j.last_ack_s.unwrap_or(j.answered_s);
        #[allow(clippy::cast_precision_loss)]
        let rate = if end > 0.0 {
            format!("{:.0}", j.rotated as f64 / end)
        } else {
            "–".into()
        };
        let _ = writeln!(
            out,
            "| {what} | {} / {} | **{:.2}** | {} | {} | **{}** | {} | {} of {} | {} | {rate} | {:.1} / {:.1} |",
            j.rotated,
            j.failed,
            j.answered_s,
            secs(j.first_rename_s),
            secs(j.last_rename_s),
            secs(j.last_ack_s),
            secs(j.all_recorded_s),
            j.in_sync,
            j.live,
            j.renames,
            j.control_plane_cpu_s,
            j.agents_cpu_s,
        );
    }
    let _ = writeln!(
        out,
        "\nSetup: provisioning {:.1} s, connecting {:.1} s ({} of {} agents). {}; {}.",
        r.provision_s,
        r.connect_s,
        r.agents_connected,
        r.agents_provisioned,
        r.fd_limit.describe(),
        match &r.stopped_by {
            Some(reason) => format!("**stopped by:** {reason}"),
            None => "no limit stopped the run".into(),
        }
    );
    out
}

/// `keyward-bench fanout`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tenants, each with one connected host.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Skip the run of the job without agents.
    #[arg(long)]
    pub no_alone: bool,
    /// The test suite's tiny version: 3 tenants.
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
            Options::new(self.agents)
        };
        options.dir = self.hosts.dir;
        options.without_agents = !self.no_alone;
        let report = run(&options).await?;
        let line = if self.smoke {
            "cargo run --release -p keyward-bench -- fanout --smoke".to_owned()
        } else {
            command_line(&options, write)
        };
        let section = markdown(&report, &line);
        Ok(Publication::section(section_id(&report), section))
    }
}
