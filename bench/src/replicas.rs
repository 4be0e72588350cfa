//! Replicas (issue #15): three control-plane replicas, each a process of its own, on one
//! PostgreSQL schema and one OpenBao ([`deployment`]), and the simulated hosts' agents in this
//! process. Two measurements, one after the other on the same deployment:
//!
//! 1. [`across`]: propagation with N agents spread evenly over the replicas, a rotation made
//!    through a replica the agent is not connected to beside one made through its own.
//! 2. [`storm`]: M other agents, each knowing every replica; one replica is killed, and its
//!    agents fail over to the others: time until every agent is back and in sync, the agents'
//!    failed dials, and REST latency on the survivors before and during.

pub mod across;
pub mod deployment;
pub mod markdown;
pub mod probe;
pub mod storm;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

pub use self::deployment::Deployment;
pub use self::markdown::{command_line, markdown, section_id};
use self::storm::{Storm, StormOptions};
use crate::benchmark::Benchmark;
use crate::flags::HostsDir;
use crate::fleet::Fleet;
use crate::machine::{Load, Machine, filesystem_of};
use crate::renames::Renames;
use crate::report::Publication;
use crate::sys::{self, FdLimit};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub replicas: usize,
    /// Agents of the propagation measurement (0: skip it).
    pub agents: usize,
    /// Rotations through another replica, and as many through the agent's own.
    pub rotations: usize,
    /// Agents of the reconnection storm (0: skip it).
    pub storm_agents: usize,
    pub storm: StormOptions,
    /// Where the simulated hosts' files go; the system's temporary directory when `None`.
    pub dir: Option<PathBuf>,
    pub provision_concurrency: usize,
    pub connect_wave: usize,
    pub connect_timeout: Duration,
    /// How long one rotation's key may take to reach its host.
    pub propagation_timeout: Duration,
    pub progress: bool,
    /// The `keyward-bench` binary that runs the replicas (this process's own when `None`; the
    /// tests name the built binary, theirs being the test harness).
    #[serde(skip)]
    pub control_plane_exe: Option<PathBuf>,
}

impl Options {
    pub fn new(agents: usize, rotations: usize, storm_agents: usize) -> Self {
        Self {
            replicas: 3,
            agents,
            rotations,
            storm_agents,
            storm: StormOptions {
                victim: None,
                probe_rate: 50,
                baseline: Duration::from_secs(10),
                changes: 20,
                timeout: Duration::from_secs(300),
                progress: true,
            },
            dir: None,
            provision_concurrency: 8,
            connect_wave: 250,
            connect_timeout: Duration::from_secs(120),
            propagation_timeout: Duration::from_secs(10),
            progress: true,
            control_plane_exe: None,
        }
    }

    /// The test suite's version: 6 agents and 3 rotations each way, a storm of 6 agents with
    /// 2 changes and a second of probing before the kill.
    pub fn smoke() -> Self {
        let mut options = Self::new(6, 3, 6);
        options.storm.baseline = Duration::from_secs(1);
        options.storm.probe_rate = 20;
        options.storm.changes = 2;
        options.storm.timeout = Duration::from_secs(60);
        options.storm.progress = false;
        options.progress = false;
        options
    }
}

/// A phase's fleet: how it was set up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub provisioned: usize,
    pub connected: usize,
    pub provision_s: f64,
    pub connect_s: f64,
    /// Why fewer agents than asked for ran.
    pub stopped_by: Option<String>,
    /// Streams per replica once connected.
    pub placement: Vec<usize>,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub build: String,
    pub bao_version: String,
    pub postgres_version: String,
    pub hosts_filesystem: String,
    pub load_before: Load,
    pub load_after: Load,
    pub fd_limit: FdLimit,
    pub services_s: f64,
    pub across_setup: Option<Setup>,
    pub across: Option<across::Across>,
    pub storm_setup: Option<Setup>,
    pub storm: Option<Storm>,
}

/// Runs both measurements on one deployment, and stops it.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let say = |line: String| {
        if options.progress {
            eprintln!("{line}");
        }
    };
    let fd_limit = sys::raise_fd_limit();
    let load_before = Load::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let start = Instant::now();
    say(format!(
        "replicas: {} replicas; propagation with {} agents, {} rotations each way; storm of {} agents",
        options.replicas, options.agents, options.rotations, options.storm_agents
    ));
    let mut deployment =
        Deployment::start(options.replicas, options.control_plane_exe.as_deref()).await?;
    let services_s = start.elapsed().as_secs_f64();
    say(format!(
        "  OpenBao, the schema and {} replicas started in {services_s:.1} s",
        options.replicas
    ));
    let measured = measure(&mut deployment, options).await;
    let postgres_version = sqlx::query_scalar::<_, String>("SHOW server_version")
        .fetch_one(&deployment.sql)
        .await
        .unwrap_or_default();
    let bao_version = deployment.bao_version.clone();
    let load_after = Load::now();
    // Teardown happens whatever the measurements did.
    deployment.shutdown().await?;
    let (across_setup, across, storm_setup, storm, hosts_filesystem) = measured?;
    Ok(Report {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        build: crate::machine::BUILD.into(),
        bao_version,
        postgres_version,
        hosts_filesystem,
        load_before,
        load_after,
        fd_limit,
        services_s,
        across_setup,
        across,
        storm_setup,
        storm,
    })
}

type Measured = (
    Option<Setup>,
    Option<across::Across>,
    Option<Setup>,
    Option<Storm>,
    String,
);

async fn measure(deployment: &mut Deployment, options: &Options) -> anyhow::Result<Measured> {
    let mut filesystem = String::new();
    let (mut across_setup, mut across, mut storm_setup, mut storm) = (None, None, None, None);
    if options.agents > 0 {
        let (mut fleet, renamed) = Fleet::new(options.dir.as_deref())?;
        filesystem = filesystem_of(fleet.root());
        let mut renames = Renames::new(renamed);
        let setup = set_up(deployment, &mut fleet, 0..options.agents, false, options).await?;
        let done = if setup.stopped_by.is_none() {
            renames.clear();
            across::rotate(
                deployment,
                &fleet,
                &mut renames,
                options.rotations,
                options.propagation_timeout,
                options.progress,
            )
            .await
            .map(Some)
        } else {
            Ok(None)
        };
        fleet.stop().await;
        across_setup = Some(setup);
        across = done?;
    }
    if options.storm_agents > 0 {
        let (mut fleet, renamed) = Fleet::new(options.dir.as_deref())?;
        filesystem = filesystem_of(fleet.root());
        let mut renames = Renames::new(renamed);
        // Tenants numbered after the first fleet's.
        let range = options.agents..options.agents + options.storm_agents;
        let setup = set_up(deployment, &mut fleet, range, true, options).await?;
        let done = if setup.stopped_by.is_none() {
            storm::run(deployment, &fleet, &mut renames, &options.storm)
                .await
                .map(Some)
        } else {
            Ok(None)
        };
        fleet.stop().await;
        storm_setup = Some(setup);
        storm = done?;
    }
    Ok((across_setup, across, storm_setup, storm, filesystem))
}

/// Provisions hosts `range` (host i through replica i mod n, which its agent then dials unless
/// `every_endpoint` gives it every replica's), connects them, and waits until each has
/// acknowledged its first state.
async fn set_up(
    deployment: &Deployment,
    fleet: &mut Fleet,
    range: std::ops::Range<usize>,
    every_endpoint: bool,
    options: &Options,
) -> anyhow::Result<Setup> {
    let n = deployment.replicas.len();
    let count = range.len();
    let started = Instant::now();
    let mut setup = Setup::default();
    let mut hosts = Vec::with_capacity(count);
    {
        let mut provisioned = futures::stream::iter(range)
            .map(|i| fleet.provision(&deployment.replicas[i % n], i))
            .buffer_unordered(options.provision_concurrency.max(1));
        while let Some(result) = provisioned.next().await {
            match result {
                Ok(host) => {
                    hosts.push(host);
                    if options.progress && hosts.len() % 1000 == 0 {
                        eprintln!("  provisioned {}/{count} hosts", hosts.len());
                    }
                }
                Err(e) => {
                    setup.stopped_by = Some(crate::propagation::describe_stop(
                        "provisioning",
                        hosts.len(),
                        &e,
                    ));
                    break;
                }
            }
        }
    }
    hosts.sort_by_key(|h| h.index);
    if every_endpoint {
        let urls: Vec<String> = deployment
            .replicas
            .iter()
            .map(|r| r.agent_url.clone())
            .collect();
        for host in &mut hosts {
            host.set_endpoints(urls.clone());
        }
    }
    fleet.hosts.extend(hosts);
    setup.provisioned = fleet.hosts.len();
    setup.provision_s = started.elapsed().as_secs_f64();
    let connecting = Instant::now();
    if setup.stopped_by.is_none() {
        setup.stopped_by = fleet
            .connect_all(
                options.connect_wave,
                options.connect_timeout,
                options.progress,
                |_| {},
            )
            .await;
    }
    setup.connected = fleet.connected().len();
    let ids: Vec<String> = fleet.hosts.iter().map(|h| h.host_id.clone()).collect();
    let all: Vec<usize> = (0..n).collect();
    let deadline = Instant::now() + options.connect_timeout;
    // Bounded: every host's first acknowledgement recorded.
    while deployment.synced_on(&all, &ids).await?.in_sync < setup.connected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup.connect_s = connecting.elapsed().as_secs_f64();
    setup.placement = deployment.streams_per_replica(&ids).await?;
    if options.progress {
        eprintln!(
            "  {} of {} agents connected in {:.1} s (provisioning {:.1} s), streams per replica {:?}",
            setup.connected, count, setup.connect_s, setup.provision_s, setup.placement
        );
    }
    Ok(setup)
}

/// `keyward-bench replicas`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents of the propagation measurement, spread evenly over the replicas (0: skip it).
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Rotations through another replica than the agent's, and as many through its own.
    #[arg(long, default_value_t = 200)]
    pub rotations: usize,
    /// Agents of the reconnection storm (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    pub storm_agents: usize,
    /// REST probe requests per second during the storm.
    #[arg(long, default_value_t = 50)]
    pub probe_rate: u32,
    /// The test suite's tiny version: 6 agents, 3 rotations each way, a storm of 6 agents.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub hosts: HostsDir,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its own section is replaced";

    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        let mut options = if self.smoke {
            Options {
                progress: true,
                ..Options::smoke()
            }
        } else {
            let mut options = Options::new(self.agents, self.rotations, self.storm_agents);
            options.storm.probe_rate = self.probe_rate;
            options
        };
        options.dir = self.hosts.dir;
        let report = run(&options).await?;
        let line = command_line(&options, self.smoke, write);
        Ok(Publication::section(
            section_id(&report),
            markdown(&report, &line),
        ))
    }
}
