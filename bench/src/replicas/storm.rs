//! The reconnection storm: every agent knows every replica (`grpc_urls`, starting at a random
//! one), one replica's process is killed (`SIGKILL`), and the agents it held fail over to the
//! others at once.
//!
//! Measured from the kill: when each of those agents has a stream again (its status says
//! connected, on another replica: the killed one is gone); when every agent of the fleet is
//! streaming to a surviving replica and has acknowledged its current desired state, as the
//! deployment's SQL says (`host_streams` and the hosts' applied generation, polled every
//! 100 ms); and when the keys of tenants rotated through the survivors right after the kill
//! (while their agents are reconnecting) are in their files. Meanwhile a REST probe reads
//! credentials from the survivors at a fixed rate, as it did for a while before the kill: its
//! latency before and during the storm. The agents' failed dials and ended streams are counted
//! from their log ([`crate::agent_warnings`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};

use super::Deployment;
use super::deployment::Synced;
use super::probe::{self, Probe, Window};
use crate::fleet::Fleet;
use crate::renames::Renames;

/// How the storm is run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StormOptions {
    /// The replica killed (its index); `None`: the one holding the most streams.
    pub victim: Option<usize>,
    /// REST probe requests per second, to the surviving replicas in turn.
    pub probe_rate: u32,
    /// How long the probe runs before the kill (the "before" window).
    pub baseline: Duration,
    /// Tenants whose agents were on the killed replica, rotated through the survivors right
    /// after the kill.
    pub changes: usize,
    /// How long everything may take after the kill.
    pub timeout: Duration,
    pub progress: bool,
}

/// What the storm measured (times in seconds from the kill).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Storm {
    /// The replica killed.
    pub victim: usize,
    /// Agents streaming and in sync before the kill.
    pub agents: usize,
    /// Agents' streams per replica before the kill and at the end.
    pub placement_before: Vec<usize>,
    pub placement_after: Vec<usize>,
    /// Agents whose stream was on the killed replica.
    pub victims: usize,
    /// Of those, the time each had a stream again (those that did in time).
    pub back_s: Vec<f64>,
    /// Agents on the surviving replicas that lost their stream anyway.
    pub survivors_dropped: usize,
    /// Every agent streaming to a survivor and in sync, as SQL says (`None`: not in time).
    pub all_in_sync_s: Option<f64>,
    /// The last SQL poll's counts.
    pub synced_at_end: (usize, usize),
    /// Rotations made through the survivors right after the kill: calls that failed, and the
    /// time each new key was in its host's file.
    pub changes: usize,
    pub change_call_errors: usize,
    pub change_reached_s: Vec<f64>,
    /// The agents' warnings and errors from the kill to the end, by message.
    pub agent_warnings: BTreeMap<String, u64>,
    /// REST probe to the survivors: before the kill, and from the kill to every agent in sync.
    pub rest_before: Window,
    pub rest_during: Window,
    /// The same per surviving replica: (its index, before, during).
    pub rest_by_replica: Vec<(usize, Window, Window)>,
    /// CPU seconds of the `postgres` processes from the kill to the end (a lower bound: backends
    /// that ended meanwhile, the killed replica's, are not counted).
    pub postgres_cpu_s: Option<f64>,
    /// The replicas' CPU seconds from the kill to the end (the killed one's: none), and the
    /// agents' process's.
    pub replica_cpu_s: Vec<Option<f64>>,
    pub agents_cpu_s: Option<f64>,
}

/// Runs the storm on a connected fleet (every agent given every replica's endpoint) and
/// leaves the victim killed.
pub async fn run(
    deployment: &mut Deployment,
    fleet: &Fleet,
    renames: &mut Renames,
    options: &StormOptions,
) -> anyhow::Result<Storm> {
    let say = |line: String| {
        if options.progress {
            eprintln!("{line}");
        }
    };
    let n = deployment.replicas.len();
    anyhow::ensure!(
        options.victim.is_none_or(|v| v < n) && n >= 2,
        "a storm needs a replica to kill and one to survive"
    );
    let all: Vec<usize> = (0..n).collect();
    let host_ids: Vec<String> = fleet.hosts.iter().map(|h| h.host_id.clone()).collect();
    let position: HashMap<&str, usize> = host_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();

    // Everyone acknowledged before the clock starts.
    let settled = poll_synced(deployment, &all, &host_ids, options.timeout).await?;
    let placement_before = deployment.streams_per_replica(&host_ids).await?;
    let victim = options.victim.unwrap_or_else(|| {
        (0..n)
            .max_by_key(|&i| (placement_before[i], std::cmp::Reverse(i)))
            .unwrap_or(0)
    });
    let survivors: Vec<usize> = (0..n).filter(|&i| i != victim).collect();
    let mut storm = Storm {
        victim,
        agents: settled.1.in_sync,
        placement_before,
        ..Storm::default()
    };
    let victims: Vec<usize> = deployment
        .hosts_on(victim, &host_ids)
        .await?
        .iter()
        .filter_map(|id| position.get(id.as_str()).copied())
        .collect();
    storm.victims = victims.len();
    say(format!(
        "  storm: {} agents in sync, streams per replica {:?}; probing REST for {:.0?} before the kill",
        storm.agents, storm.placement_before, options.baseline
    ));

    let tokens: Vec<String> = fleet
        .hosts
        .iter()
        .take(100)
        .map(|h| h.tenant_token.clone())
        .collect();
    let urls = survivors
        .iter()
        .map(|&i| deployment.replicas[i].url.clone())
        .collect();
    let probe = Probe::start(urls, tokens, options.probe_rate)?;
    let probe_start = Instant::now();
    // The "before" window: a measuring interval, not a wait for anything.
    tokio::time::sleep(options.baseline).await;

    // Watchers first, so that no status change after the kill is missed.
    let is_victim: std::collections::HashSet<usize> = victims.iter().copied().collect();
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut survivor_watch = tokio::task::JoinSet::new();
    let mut victim_watch = Vec::with_capacity(victims.len());
    let deadline = tokio::time::Instant::now() + options.baseline + options.timeout;
    for i in 0..fleet.hosts.len() {
        let Some(mut status) = fleet.status(i) else {
            continue;
        };
        status.borrow_and_update();
        if is_victim.contains(&i) {
            victim_watch.push(tokio::spawn(async move {
                // The first change after the kill is the stream ending; a status that says
                // connected after any change is the stream opened again (the change to
                // disconnected may have been overtaken by it).
                loop {
                    match tokio::time::timeout_at(deadline, status.changed()).await {
                        Ok(Ok(())) => {}
                        _ => return None,
                    }
                    if status.borrow_and_update().connected {
                        return Some(Instant::now());
                    }
                }
            }));
        } else {
            let dropped = Arc::clone(&dropped);
            survivor_watch.spawn(async move {
                if status.wait_for(|s| !s.connected).await.is_ok() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    let pids: Vec<u32> = deployment
        .replicas
        .iter()
        .map(crate::cluster::Cluster::pid)
        .collect();
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|p| cpu_of(*p)).collect();
    let agents_cpu_before = cpu_of(std::process::id());
    let postgres_cpu_before = postgres_cpu();
    let warnings_before = crate::agent_warnings::snapshot();
    renames.clear();

    let killed_at = Instant::now();
    deployment.replicas[victim].kill().await?;
    say(format!(
        "  killed replica {victim} ({} agents on it)",
        storm.victims
    ));

    // Changes made at once through the survivors, while the agents reconnect.
    let mut picked = victims.clone();
    picked.shuffle(&mut rand::thread_rng());
    picked.truncate(options.changes);
    storm.changes = picked.len();
    let calls = picked.iter().enumerate().map(|(k, &i)| {
        let replica = &deployment.replicas[survivors[k % survivors.len()]];
        let host = &fleet.hosts[i];
        async move {
            let fingerprint = replica.rotate_tenant(&host.tenant_token).await?;
            anyhow::Ok((host.index, fingerprint))
        }
    });
    let mut rotated = Vec::new();
    for call in futures::future::join_all(calls).await {
        match call {
            Ok(done) => rotated.push(done),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "a rotation during the storm failed");
                storm.change_call_errors += 1;
            }
        }
    }

    for back in futures::future::join_all(victim_watch).await {
        if let Ok(Some(at)) = back {
            storm.back_s.push((at - killed_at).as_secs_f64());
        }
    }
    say(format!(
        "  {} of {} agents back in {:.2} s",
        storm.back_s.len(),
        storm.victims,
        storm.back_s.iter().copied().fold(0.0, f64::max)
    ));
    let change_deadline = tokio::time::Instant::from_std(killed_at + options.timeout);
    for (index, fingerprint) in &rotated {
        if let Some((_, at)) = renames.wait(*index, fingerprint, change_deadline).await? {
            storm
                .change_reached_s
                .push(at.saturating_duration_since(killed_at).as_secs_f64());
        }
    }

    let remaining = options.timeout.saturating_sub(killed_at.elapsed());
    let (synced_at, synced) = poll_synced(deployment, &survivors, &host_ids, remaining).await?;
    let storm_end = Instant::now();
    storm.all_in_sync_s = synced_at.map(|at| (at - killed_at).as_secs_f64());
    storm.synced_at_end = (synced.streaming, synced.in_sync);
    storm.replica_cpu_s = pids
        .iter()
        .zip(&cpu_before)
        .enumerate()
        .map(|(i, (pid, before))| {
            if i == victim {
                return None;
            }
            Some(cpu_of(*pid)? - (*before)?)
        })
        .collect();
    storm.agents_cpu_s = cpu_of(std::process::id())
        .zip(agents_cpu_before)
        .map(|(now, before)| now - before);
    storm.postgres_cpu_s = postgres_cpu()
        .zip(postgres_cpu_before)
        .map(|(now, before)| postgres_cpu_since(&before, &now));
    storm.agent_warnings = crate::agent_warnings::since(&warnings_before);
    storm.survivors_dropped = dropped.load(Ordering::Relaxed);
    survivor_watch.abort_all();

    let samples = probe.stop().await;
    let during_end = synced_at.unwrap_or(storm_end).max(killed_at);
    storm.rest_before = probe::window(&samples, None, probe_start, killed_at);
    storm.rest_during = probe::window(&samples, None, killed_at, during_end);
    storm.rest_by_replica = survivors
        .iter()
        .enumerate()
        .map(|(target, &replica)| {
            (
                replica,
                probe::window(&samples, Some(target), probe_start, killed_at),
                probe::window(&samples, Some(target), killed_at, during_end),
            )
        })
        .collect();
    storm.placement_after = deployment.streams_per_replica(&host_ids).await?;
    Ok(storm)
}

/// Polls every 100 ms, for at most `timeout`, until every one of `hosts` streams to one of
/// the replicas `live` and is in sync: when that was first seen, and the last counts.
async fn poll_synced(
    deployment: &Deployment,
    live: &[usize],
    hosts: &[String],
    timeout: Duration,
) -> anyhow::Result<(Option<Instant>, Synced)> {
    let deadline = Instant::now() + timeout;
    loop {
        let synced = deployment
            .synced_on(live, hosts)
            .await
            .context("polling the hosts' sync state")?;
        if synced.in_sync == hosts.len() {
            return Ok((Some(Instant::now()), synced));
        }
        if Instant::now() >= deadline {
            return Ok((None, synced));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A process's CPU time (user and system) so far, in seconds.
fn cpu_of(pid: u32) -> Option<f64> {
    crate::sys::cpu_seconds_of(&pid.to_string())
}

/// CPU seconds so far of each process named `postgres` (the server and its backends), by pid.
fn postgres_cpu() -> Option<HashMap<u32, f64>> {
    let mut cpu = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres"
            && let Some(seconds) = crate::sys::cpu_seconds_of(&pid.to_string())
        {
            cpu.insert(pid, seconds);
        }
    }
    Some(cpu)
}

/// PostgreSQL's CPU seconds between two [`postgres_cpu`] readings: what each process running at
/// the end used since the first (all of it, for a backend started since). Backends that ended
/// in between are missing, so this is a lower bound.
fn postgres_cpu_since(before: &HashMap<u32, f64>, now: &HashMap<u32, f64>) -> f64 {
    now.iter()
        .map(|(pid, seconds)| seconds - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}
