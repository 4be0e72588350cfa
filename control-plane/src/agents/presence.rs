//! Which replica holds which host's stream, told to the other replicas through PostgreSQL, so
//! that every replica answers the same `connected` (`store::streams`).
//!
//! The hub names each host whose stream opened or ended ([`StreamLog`]); a writer task takes the
//! names from a bounded queue, asks the hub whether each host is connected now (level-triggered:
//! any number of comings and goings collapse into the last), and upserts or deletes the hosts'
//! rows in one transaction per batch. The stream path never waits for SQL: a full queue or a
//! failed write is logged and counted, and the replica rewrites all its rows from the hub at the
//! next chance (at the latest at the next heartbeat); so it does when its rows do not number its
//! streams at two heartbeats in a row. After each write the other replicas hear of
//! the hosts through the change seam (`Change::Reported`), so their live views follow.
//!
//! The same task raises the replica's heartbeat (`server.replica_heartbeat`); a replica counts as
//! alive for three heartbeats after its last. When the set of live replicas changes (one started,
//! stopped or died), this replica's live hosts view reads every host again. Rows of replicas dead
//! for an hour are swept. At a clean shutdown the replica deletes its rows and itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyward_common::HostId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::hub::{Hub, StreamLog};
use crate::changes::{Change, ChangeNotifier};
use crate::clock::Clock;
use crate::store::{Store, StoreError};

/// Hosts named and not yet written, at most; past this the replica rewrites all its rows.
const QUEUE: usize = 16_384;
/// Hosts written in one transaction, at most.
const BATCH: usize = 2_048;
/// Rows of replicas not seen for this long are deleted.
const SWEEP_AFTER: Duration = Duration::from_secs(3_600);
/// How often this replica sweeps dead replicas' rows.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The wait at shutdown for the replica's rows to be deleted.
const FORGET_WITHIN: Duration = Duration::from_secs(5);

/// Replicas whose heartbeat is after this time are alive at `now`: three heartbeats ago.
pub fn alive_after(now: DateTime<Utc>, heartbeat: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(heartbeat.saturating_mul(3)).unwrap_or_default()
}

/// The hub's end of the queue: it never blocks.
#[derive(Debug)]
struct StreamQueue {
    hosts: mpsc::Sender<HostId>,
    overflowed: Arc<AtomicBool>,
}

impl StreamLog for StreamQueue {
    fn stream_changed(&self, host: &HostId) {
        if self.hosts.try_send(host.clone()).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
            metrics::counter!("keyward_replica_streams_overflowed_total").increment(1);
        }
    }
}

/// What the replica's presence needs.
#[derive(Debug)]
pub struct PresenceContext {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub hub: Arc<Hub>,
    /// Where other replicas hear which hosts' rows changed.
    pub changes: Arc<dyn ChangeNotifier>,
    /// `server.replica_heartbeat`.
    pub heartbeat: Duration,
}

/// A running replica presence (PostgreSQL only).
#[derive(Debug)]
pub struct ReplicaPresence {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ReplicaPresence {
    /// Records the replica `replica` as alive and starts writing its streams; `None` on SQLite,
    /// where the hub knows every stream.
    pub async fn start(
        replica: String,
        context: PresenceContext,
    ) -> Result<Option<Self>, StoreError> {
        if !context.store.shared() {
            return Ok(None);
        }
        let started_at = context.clock.now();
        context
            .store
            .replica_heartbeat(&replica, started_at, started_at)
            .await?;
        let (hosts, queue) = mpsc::channel(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        context.hub.log_streams_to(Arc::new(StreamQueue {
            hosts,
            overflowed: overflowed.clone(),
        }));
        let (stop, stopped) = oneshot::channel();
        let writer = Writer {
            replica,
            started_at,
            context,
            overflowed,
            rewrite: false,
            live: Vec::new(),
            miscounted: 0,
        };
        let task = tokio::spawn(writer.run(queue, stopped));
        Ok(Some(Self { stop, task }))
    }

    /// Stops writing, and deletes this replica's rows (waiting up to 5 s for the database).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(FORGET_WITHIN, self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "this replica's streams were not forgotten at shutdown; other replicas stop counting them within three heartbeats"
            );
        }
    }
}

struct Writer {
    replica: String,
    started_at: DateTime<Utc>,
    context: PresenceContext,
    overflowed: Arc<AtomicBool>,
    /// The rows may differ from the hub (a write failed, names were lost): rewrite them all.
    rewrite: bool,
    /// The live replicas at the last heartbeat.
    live: Vec<String>,
    /// Heartbeats in a row at which this replica's rows did not number its streams.
    miscounted: u32,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<HostId>, mut stop: oneshot::Receiver<()>) {
        let mut heartbeat = tokio::time::interval(self.context.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                received = queue.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    self.write(std::mem::take(&mut batch)).await;
                }
                _ = heartbeat.tick() => {
                    self.beat().await;
                    if queue.is_empty() {
                        self.check_count().await;
                    }
                }
                _ = sweep.tick() => self.sweep().await,
            }
        }
        if let Err(e) = self.context.store.forget_replica(&self.replica).await {
            tracing::warn!(error = %e, "cannot forget this replica's streams at shutdown; other replicas stop counting them within three heartbeats");
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.context.clock.now()
    }

    /// Writes what the hub says of `hosts` now.
    async fn write(&mut self, mut hosts: Vec<HostId>) {
        if self.overflowed.swap(false, Ordering::Relaxed) {
            self.rewrite = true;
        }
        if self.rewrite {
            // Covers `hosts` too.
            self.rewrite_all().await;
            return;
        }
        hosts.sort();
        hosts.dedup();
        let hub = &self.context.hub;
        let (opened, closed): (Vec<HostId>, Vec<HostId>) =
            hosts.iter().cloned().partition(|h| hub.is_connected(h));
        let written = self
            .context
            .store
            .record_streams(&self.replica, &opened, &closed, self.now())
            .await;
        match written {
            Ok(()) => self.told(hosts),
            Err(e) => self.failed(&e),
        }
    }

    /// Replaces every row of this replica with the hub's streams.
    async fn rewrite_all(&mut self) {
        let hosts = self.context.hub.connected_hosts();
        let now = self.now();
        match self
            .context
            .store
            .replace_streams(&self.replica, &hosts, now)
            .await
        {
            Ok(deleted) => {
                self.rewrite = false;
                let mut changed = hosts;
                changed.extend(deleted);
                changed.sort();
                changed.dedup();
                self.told(changed);
            }
            Err(e) => self.failed(&e),
        }
    }

    /// The rows of `hosts` were written: the other replicas' live views look at them.
    fn told(&self, hosts: Vec<HostId>) {
        metrics::counter!("keyward_replica_stream_writes_total").increment(1);
        if !hosts.is_empty() {
            self.context.changes.changed(Change::Reported(hosts));
        }
    }

    fn failed(&mut self, e: &StoreError) {
        metrics::counter!("keyward_replica_stream_write_failures_total").increment(1);
        tracing::warn!(error = %e, "cannot record which agents' streams this replica holds; retrying at the next heartbeat");
        self.rewrite = true;
    }

    /// Raises this replica's heartbeat; catches up on rows it owes; notices replicas that
    /// started, stopped or died.
    async fn beat(&mut self) {
        let now = self.now();
        let store = &self.context.store;
        match store
            .replica_heartbeat(&self.replica, self.started_at, now)
            .await
        {
            Ok(true) => {}
            // Swept as dead (frozen for long): its rows may be gone too.
            Ok(false) => self.rewrite = true,
            Err(e) => {
                metrics::counter!("keyward_replica_heartbeat_failures_total").increment(1);
                tracing::warn!(error = %e, "cannot raise this replica's heartbeat");
                return;
            }
        }
        if self.overflowed.swap(false, Ordering::Relaxed) || self.rewrite {
            self.rewrite_all().await;
        }
        let alive_after = alive_after(now, self.context.heartbeat);
        match self.context.store.live_replicas(alive_after).await {
            Ok(live) if live != self.live => {
                // Another replica's streams started or stopped counting.
                self.live = live;
                self.context.hub.hosts_changed();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot list the live replicas"),
        }
    }

    /// Rewrites this replica's rows when, twice in a row with nothing waiting to be written,
    /// they do not number its streams: a row of its own was lost (say another replica's late
    /// write for a host that moved here, then deleted as that replica's stream ended).
    async fn check_count(&mut self) {
        let Ok(rows) = self.context.store.count_streams(&self.replica).await else {
            return;
        };
        let streams = i64::try_from(self.context.hub.connected()).unwrap_or(i64::MAX);
        if rows == streams {
            self.miscounted = 0;
            return;
        }
        self.miscounted += 1;
        if self.miscounted >= 2 {
            self.miscounted = 0;
            tracing::info!(
                rows,
                streams,
                "this replica's stream rows drifted from its streams; rewriting them"
            );
            self.rewrite_all().await;
        }
    }

    async fn sweep(&self) {
        let dead_before = self.now() - chrono::Duration::from_std(SWEEP_AFTER).unwrap_or_default();
        match self.context.store.sweep_dead_replicas(dead_before).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "forgot the streams of replicas dead for an hour"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep dead replicas"),
        }
    }
}
