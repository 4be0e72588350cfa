//! Simulated hosts: each a tenant with one host, enrolled through the REST endpoint with the
//! agent's own enrollment code, and run in this process with the agent's own runtime
//! ([`keyward_agent::run_with`]) writing `authorized_keys` into a temporary directory through
//! [`DirApplier`] (no root and no real users needed).
//!
//! [`TimingApplier`] wraps the `DirApplier` and timestamps every rewrite: the instant taken right
//! after the inner `apply_user` returns is after the rename and the directory fsync.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use keyward_agent::apply::{Applier, ApplyError, DirApplier, UserApplied};
use keyward_agent::enroll::{EnrollOptions, enroll};
use keyward_agent::writer::SshdFiles;
use keyward_agent::{AgentConfig, AgentStatus, RuntimeDeps, UserConfig, UserMode};
use keyward_common::UnixUser;
use keyward_common::proto::ManagedUser;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cluster::Cluster;

/// The tenant's Unix user on every simulated host.
pub const TENANT_USER: &str = "tenant";
/// The platform's admin user on every simulated host.
pub const ADMIN_USER: &str = "kwadmin";

/// A user's `authorized_keys` was rewritten (renamed into place, directory synced).
#[derive(Debug, Clone)]
pub struct FileRenamed {
    /// The host's index in the fleet.
    pub host: usize,
    pub user: String,
    /// The managed keys now in the file.
    pub fingerprints: Vec<String>,
    /// When the agent called the writer for this user.
    pub started: Instant,
    /// When the writer returned (after the rename and the directory fsync).
    pub at: Instant,
}

/// sshd's files (`trusted_user_ca_keys`, `revoked_keys`, `principals/`) were rewritten.
#[derive(Debug, Clone)]
pub struct SshdWritten {
    /// The host's index in the fleet.
    pub host: usize,
    /// When the writer returned.
    pub at: Instant,
}

/// A [`DirApplier`] that reports every rewrite on a channel.
#[derive(Debug)]
pub struct TimingApplier {
    inner: DirApplier,
    host: usize,
    events: mpsc::UnboundedSender<FileRenamed>,
    /// Where rewrites of sshd's files are reported, when asked ([`Fleet::report_sshd_files`]).
    sshd_events: Option<mpsc::UnboundedSender<SshdWritten>>,
}

impl Applier for TimingApplier {
    fn apply_user(
        &self,
        user: &UnixUser,
        mode: UserMode,
        desired: &ManagedUser,
        recorder: Option<&str>,
    ) -> Result<UserApplied, ApplyError> {
        let started = Instant::now();
        let done = self.inner.apply_user(user, mode, desired, recorder)?;
        let at = Instant::now();
        if done.changed {
            let _ = self.events.send(FileRenamed {
                host: self.host,
                user: user.to_string(),
                fingerprints: done.fingerprints.clone(),
                started,
                at,
            });
        }
        Ok(done)
    }

    fn end_sessions(&self, user: &UnixUser) -> Result<u32, ApplyError> {
        self.inner.end_sessions(user)
    }

    fn apply_sshd_files(&self, files: &SshdFiles) -> Result<bool, ApplyError> {
        let changed = self.inner.apply_sshd_files(files)?;
        if changed && let Some(events) = &self.sshd_events {
            let _ = events.send(SshdWritten {
                host: self.host,
                at: Instant::now(),
            });
        }
        Ok(changed)
    }
}

/// One tenant, its API token and its enrolled host.
#[derive(Debug)]
pub struct SimHost {
    pub index: usize,
    pub tenant: String,
    pub host_id: String,
    /// An API token with the tenant role.
    pub tenant_token: String,
    config: AgentConfig,
    homes: PathBuf,
    agent: Option<RunningAgent>,
}

#[derive(Debug)]
struct RunningAgent {
    status: watch::Receiver<AgentStatus>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), String>>,
}

impl SimHost {
    /// The agent is connected and has applied a state.
    pub fn is_connected(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| {
            let s = a.status.borrow();
            s.connected && s.ready
        })
    }

    /// Where this host's users' homes are.
    pub fn homes(&self) -> &Path {
        &self.homes
    }

    /// The agent's `grpc_urls` (every replica's endpoint; it starts at a random one and fails
    /// over to the next): from its next start on. Empty: the URL given at enrollment.
    pub fn set_endpoints(&mut self, urls: Vec<String>) {
        self.config.grpc_urls = urls;
    }
}

/// The simulated hosts, their files under one temporary directory.
#[derive(Debug)]
pub struct Fleet {
    pub hosts: Vec<SimHost>,
    root: tempfile::TempDir,
    host_key_dir: PathBuf,
    events: mpsc::UnboundedSender<FileRenamed>,
    sshd_events: Option<mpsc::UnboundedSender<SshdWritten>>,
}

impl Fleet {
    /// An empty fleet writing under a new temporary directory in `parent` (the system's
    /// temporary directory when `None`); the receiver gets every file rewrite of every host.
    pub fn new(
        parent: Option<&Path>,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<FileRenamed>)> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("keyward-bench-hosts-");
        let root = match parent {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        }
        .context("creating the hosts' directory")?;
        // No ssh_host_*_key.pub in it: the agents report no host keys.
        let host_key_dir = root.path().join("no-host-keys");
        std::fs::create_dir(&host_key_dir)?;
        let (events, rx) = mpsc::unbounded_channel();
        Ok((
            Self {
                hosts: Vec::new(),
                root,
                host_key_dir,
                events,
                sshd_events: None,
            },
            rx,
        ))
    }

    /// Where the hosts' files are.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Creates tenant `index` (`bench-{index:05}`), its tenant token and its host, and enrolls
    /// the host's agent (a new key and CSR, the one-time token, a client certificate).
    pub async fn provision(&self, cluster: &Cluster, index: usize) -> anyhow::Result<SimHost> {
        let tenant = format!("bench-{index:05}");
        let what = || format!("provisioning {tenant}");
        cluster
            .create_tenant(&tenant, TENANT_USER, ADMIN_USER)
            .await
            .with_context(what)?;
        let tenant_token = cluster.tenant_token(&tenant).await.with_context(what)?;
        let (host_id, enrollment_token) =
            cluster.register_host(&tenant).await.with_context(what)?;
        self.enroll_host(
            &cluster.url,
            index,
            (&tenant, &tenant_token),
            (&host_id, enrollment_token),
            (ADMIN_USER, TENANT_USER),
        )
        .await
    }

    /// Enrolls host `host_id` of `tenant` (registered, its one-time token `enrollment_token`)
    /// against the control plane at `server` as simulated host `index`, managing the Unix users
    /// `(admin, tenant)` (exclusive, preserve) in its own directory; not started.
    pub async fn enroll_host(
        &self,
        server: &str,
        index: usize,
        (tenant, tenant_token): (&str, &str),
        (host_id, enrollment_token): (&str, String),
        (admin_user, tenant_user): (&str, &str),
    ) -> anyhow::Result<SimHost> {
        let what = || format!("enrolling host {host_id} of {tenant}");
        let dir = self.root.path().join(format!("host-{index:05}"));
        let state_dir = dir.join("state");
        let homes = dir.join("homes");
        std::fs::create_dir_all(&homes).with_context(what)?;
        enroll(&EnrollOptions {
            server: server.to_owned(),
            token: enrollment_token,
            ca_file: None,
            state_dir: state_dir.clone(),
            force: false,
        })
        .await
        .with_context(what)?;
        let config = AgentConfig {
            state_dir,
            users: vec![
                UserConfig {
                    name: admin_user.parse()?,
                    mode: UserMode::Exclusive,
                },
                UserConfig {
                    name: tenant_user.parse()?,
                    mode: UserMode::Preserve,
                },
            ],
            logins: keyward_agent::config::LoginsConfig::off(),
            bastion: None,
            recording: None,
            grpc_url: None,
            grpc_urls: Vec::new(),
            host_key_dir: self.host_key_dir.clone(),
            // Where the DirApplier writes them too.
            sshd_dir: homes.join(".sshd"),
            preserve: Default::default(),
        };
        Ok(SimHost {
            index,
            tenant: tenant.to_owned(),
            host_id: host_id.to_owned(),
            tenant_token: tenant_token.to_owned(),
            config,
            homes,
            agent: None,
        })
    }

    /// Every rewrite of sshd's files by an agent started from now on is reported on the
    /// receiver.
    pub fn report_sshd_files(&mut self) -> mpsc::UnboundedReceiver<SshdWritten> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.sshd_events = Some(tx);
        rx
    }

    /// Provisions hosts `0..count`, `concurrency` at a time, and adds them to the fleet. Stops
    /// at the first failure and returns it; the hosts provisioned until then are kept.
    pub async fn provision_all(
        &mut self,
        cluster: &Cluster,
        count: usize,
        concurrency: usize,
        progress: bool,
    ) -> Option<anyhow::Error> {
        let mut failure = None;
        let mut done = Vec::with_capacity(count);
        {
            let mut results = futures::stream::iter(0..count)
                .map(|i| self.provision(cluster, i))
                .buffer_unordered(concurrency.max(1));
            while let Some(result) = results.next().await {
                match result {
                    Ok(host) => {
                        done.push(host);
                        if progress && done.len() % 100 == 0 {
                            eprintln!("  provisioned {}/{count} hosts", done.len());
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        done.sort_by_key(|h| h.index);
        self.hosts.extend(done);
        failure
    }

    /// Starts the agent of host `i` (a no-op when it runs).
    pub fn start_agent(&mut self, i: usize) {
        let events = self.events.clone();
        let host = &mut self.hosts[i];
        if host.agent.is_some() {
            return;
        }
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let deps = RuntimeDeps {
            applier: Arc::new(TimingApplier {
                inner: DirApplier::new(host.homes.clone()),
                host: host.index,
                events,
                sshd_events: self.sshd_events.clone(),
            }),
            // No file watcher: the propagation path does not use it, and one inotify instance
            // per agent would run into fs.inotify.max_user_instances (128 by default).
            watch_events: None,
            notifier: None,
            status: Some(status_tx),
        };
        let config = host.config.clone();
        let task = tokio::spawn(async move {
            keyward_agent::run_with(config, deps, async move {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        host.agent = Some(RunningAgent { status, stop, task });
    }

    /// Waits until the agents of `range` are connected and have applied their first state, for
    /// at most `timeout`; returns how many are.
    pub async fn wait_connected(&self, range: std::ops::Range<usize>, timeout: Duration) -> usize {
        let waits = self.hosts[range].iter().filter_map(|h| {
            let mut status = h.agent.as_ref()?.status.clone();
            Some(async move {
                tokio::time::timeout(timeout, status.wait_for(|s| s.connected && s.ready))
                    .await
                    .is_ok_and(|r| r.is_ok())
            })
        });
        futures::future::join_all(waits)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// Starts every provisioned agent, `wave` at a time (the next wave starts when this one is
    /// connected or `timeout` passed), calling `after_wave` with the number started so far.
    /// Returns why it stopped early, if it did (a wave that did not all connect).
    pub async fn connect_all(
        &mut self,
        wave: usize,
        timeout: Duration,
        progress: bool,
        mut after_wave: impl FnMut(usize),
    ) -> Option<String> {
        let wave = wave.max(1);
        let mut started = 0;
        while started < self.hosts.len() {
            let end = (started + wave).min(self.hosts.len());
            for i in started..end {
                self.start_agent(i);
            }
            let connected = self.wait_connected(started..end, timeout).await;
            if connected < end - started {
                return Some(self.describe_connect_stop(started + connected).await);
            }
            started = end;
            after_wave(started);
            if progress && started % 1000 == 0 {
                eprintln!("  started {started}/{} agents", self.hosts.len());
            }
        }
        None
    }

    /// The reason a wave of agents did not all connect.
    async fn describe_connect_stop(&mut self, connected: usize) -> String {
        let fds = crate::sys::open_fds();
        let soft = crate::sys::fd_soft_limit();
        let limit = if fds + 16 >= soft {
            format!("limit: RLIMIT_NOFILE ({fds} of {soft} descriptors open); ")
        } else {
            String::new()
        };
        let agent = self
            .agent_failure()
            .await
            .map(|e| format!("; {e}"))
            .unwrap_or_default();
        format!(
            "connecting stopped at about {connected} agents: {limit}a wave did not connect in time \
             (open descriptors {fds} of {soft}, threads {}, RSS {}){agent}; the agents' warnings on stderr say why",
            crate::sys::threads(),
            crate::report::bytes(crate::sys::rss_bytes())
        )
    }

    /// The first error of an agent that stopped on its own (not enrolled, unreadable key).
    pub async fn agent_failure(&mut self) -> Option<String> {
        for host in &mut self.hosts {
            if let Some(agent) = host.agent.take_if(|a| a.task.is_finished()) {
                return Some(match agent.task.await {
                    Ok(Ok(())) => format!("the agent of {} stopped", host.host_id),
                    Ok(Err(e)) => format!("the agent of {}: {e}", host.host_id),
                    Err(e) => format!("the agent of {} failed: {e}", host.host_id),
                });
            }
        }
        None
    }

    /// The status of host `i`'s running agent.
    pub fn status(&self, i: usize) -> Option<watch::Receiver<AgentStatus>> {
        self.hosts.get(i)?.agent.as_ref().map(|a| a.status.clone())
    }

    /// Indexes of the hosts whose agent is connected now.
    pub fn connected(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].is_connected())
            .collect()
    }

    /// Stops every agent and waits for them (at most 10 s in all).
    pub async fn stop(&mut self) {
        let tasks: Vec<_> = self
            .hosts
            .iter_mut()
            .filter_map(|h| h.agent.take())
            .map(|a| {
                let _ = a.stop.send(());
                a.task
            })
            .collect();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(tasks)).await;
    }
}
