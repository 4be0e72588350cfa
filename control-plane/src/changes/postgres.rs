//! Replicas on one PostgreSQL database hear each other's changes.
//!
//! [`ReplicaChanges`] is the change notifier of a replica on PostgreSQL: each change goes at once
//! to this replica's own hub, and through a bounded outbox to a sender task that packs the
//! changes waiting into `NOTIFY`s ([`super::wire`]) — a bulk rotation's 10,000 tenant changes
//! become a few dozen notifications, and no key operation waits for them. A listener task hears
//! the other replicas' changes and hands them to the hub.
//!
//! Nothing is lost for good: when the outbox overflows or a `NOTIFY` fails, the sender tells the
//! other replicas to resynchronise as soon as the database answers; when the listening
//! connection drops, this replica resynchronises itself once it is back ([`Change::Resync`]:
//! every stream reads its host's state again from SQL, which holds every committed change).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyward_common::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Change, ChangeNotifier, wire};
use crate::store::{MAX_PAYLOAD_BYTES, Store};

/// Changes waiting to be sent, at most; past this the others are told to resynchronise.
const OUTBOX: usize = 16_384;
/// Changes taken from the outbox for one round of notifications, at most.
const ROUND: usize = 4_096;

/// Retrying a lost database: up to 100 ms first, doubling up to 5 s, full jitter.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// The change notifier of a replica that shares its PostgreSQL database with others.
#[derive(Debug)]
pub struct ReplicaChanges {
    local: Arc<dyn ChangeNotifier>,
    outbox: mpsc::Sender<Change>,
    overflowed: Arc<AtomicBool>,
}

impl ReplicaChanges {
    /// Starts sending this replica's changes (as `me`, the replica's id) and hearing the others';
    /// `None` on SQLite, where one process owns the database and `local` hears everything already.
    pub fn start(
        store: &Store,
        me: &str,
        local: Arc<dyn ChangeNotifier>,
    ) -> Option<(Arc<Self>, Vec<JoinHandle<()>>)> {
        if !store.shared() {
            return None;
        }
        let me = me.to_owned();
        let (outbox, pending) = mpsc::channel(OUTBOX);
        let overflowed = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            tokio::spawn(send(store.clone(), me.clone(), pending, overflowed.clone())),
            tokio::spawn(listen(store.clone(), me, local.clone())),
        ];
        let changes = Arc::new(Self {
            local,
            outbox,
            overflowed,
        });
        Some((changes, tasks))
    }
}

impl ChangeNotifier for ReplicaChanges {
    fn changed(&self, change: Change) {
        self.local.changed(change.clone());
        if self.outbox.try_send(change).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
            metrics::counter!("keyward_replica_changes_overflowed_total").increment(1);
        }
    }
}

/// Sends the outbox's changes, in order, as few notifications as fit.
async fn send(
    store: Store,
    me: String,
    mut pending: mpsc::Receiver<Change>,
    overflowed: Arc<AtomicBool>,
) {
    let mut round = Vec::with_capacity(ROUND);
    while pending.recv_many(&mut round, ROUND).await > 0 {
        if overflowed.swap(false, Ordering::Relaxed) {
            // Some changes never reached the outbox: the others read everything again.
            round.push(Change::Resync);
        }
        for payload in wire::encode(&me, std::mem::take(&mut round), MAX_PAYLOAD_BYTES) {
            match store.notify(&payload).await {
                Ok(()) => metrics::counter!("keyward_replica_changes_sent_total").increment(1),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell the other replicas of a change; they will resynchronise");
                    resync_others(&store, &me).await;
                    break;
                }
            }
        }
    }
}

/// Tells the other replicas to read everything again, retrying until the database answers.
async fn resync_others(store: &Store, me: &str) {
    let mut backoff = backoff();
    let payloads = wire::encode(me, vec![Change::Resync], MAX_PAYLOAD_BYTES);
    for payload in payloads {
        while store.notify(&payload).await.is_err() {
            let delay = backoff.next_delay(&mut rand::thread_rng());
            tokio::time::sleep(delay).await;
        }
    }
}

/// Hears the other replicas' changes and hands them to this replica's hub.
async fn listen(store: Store, me: String, local: Arc<dyn ChangeNotifier>) {
    let mut backoff = backoff();
    loop {
        match store.listen().await {
            Ok(Some(mut notifications)) => {
                backoff.reset();
                // Whatever was sent while this replica was not listening.
                local.changed(Change::Resync);
                loop {
                    match notifications.next().await {
                        Ok(Some(payload)) => {
                            for change in wire::decode(&me, &payload).into_iter().flatten() {
                                local.changed(change);
                            }
                            metrics::counter!("keyward_replica_changes_received_total")
                                .increment(1);
                        }
                        Ok(None) => {
                            tracing::warn!(
                                "the connection listening for other replicas' changes was lost and is back; resynchronising"
                            );
                            metrics::counter!("keyward_replica_change_listener_reconnects_total")
                                .increment(1);
                            local.changed(Change::Resync);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot listen for other replicas' changes; retrying");
                            break;
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas' changes; retrying")
            }
        }
        metrics::counter!("keyward_replica_change_listener_reconnects_total").increment(1);
        let delay = backoff.next_delay(&mut rand::thread_rng());
        tokio::time::sleep(delay).await;
    }
}
