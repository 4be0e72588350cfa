//! The live hosts view, shared by every admin's stream: one task per replica follows the hub's
//! change signal, reads the hosts that changed at most every [`COALESCE`], and publishes only the
//! hosts whose view changed. A stream gets a bounded snapshot (the first [`SNAPSHOT_LIMIT`] hosts
//! by id and the total), then those deltas.
//!
//! So an agent's message that changes nothing an admin sees (a hello, a keepalive) sends
//! nothing, a change sends one host, and the cost of a change does not grow with the number of
//! admins watching: the hosts are read once for all of them, never once per stream. Nor does it
//! grow with the fleet: the hub names the hosts that changed ([`Hub::take_changed`]) and only
//! those are read; every host is read again every [`REFRESH`], and after a change that names no
//! host (a tenant's desired state) or names more than [`CHANGED_HOSTS_LIMIT`].
//!
//! [`Hub::take_changed`]: crate::agents::hub::Hub::take_changed
//! [`CHANGED_HOSTS_LIMIT`]: crate::agents::hub::CHANGED_HOSTS_LIMIT

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, broadcast};
use tokio::time::Instant;

use keyward_common::HostId;

use super::AppState;
use super::hosts::{HostView, host_views, host_views_of};
use crate::agents::hub::Changed;
use crate::error::ApiError;

/// Hosts in a stream's first event, at most.
pub const SNAPSHOT_LIMIT: usize = 500;
/// Bytes of host views in a snapshot, at most.
pub const SNAPSHOT_BYTES: usize = 4 << 20;
/// Bytes one stream may be sent per [`BUDGET_WINDOW`] after its snapshot; a stream over it ends
/// (its client reconnects, with backoff, to a snapshot).
pub const STREAM_BUDGET: usize = 32 << 20;
pub const BUDGET_WINDOW: Duration = Duration::from_secs(60);
/// Changes closer together than this are read and sent as one delta.
pub const COALESCE: Duration = Duration::from_millis(250);
/// Every host is read again this often, changes or not (certificate expiry and the like change
/// with time alone; a host whose `lastSeen` alone moved is sent by then).
const REFRESH: Duration = Duration::from_secs(15);
/// A host whose only change is `lastSeen` is sent at most this often.
pub const LAST_SEEN_EVERY: Duration = Duration::from_secs(60);
/// Deltas a stream may be behind the feed; a stream further behind ends (and its client
/// reconnects for a fresh snapshot).
const DELTA_BUFFER: usize = 32;

#[derive(Debug)]
struct Sent {
    view: Value,
    at: Instant,
}

#[derive(Debug, Default)]
struct FeedState {
    running: bool,
    /// What was last sent of each host, by id (sorted, for the snapshot's first page).
    hosts: BTreeMap<String, Sent>,
}

/// The hosts as the live streams last saw them, and the deltas since.
#[derive(Debug)]
pub struct HostsFeed {
    state: Mutex<FeedState>,
    deltas: broadcast::Sender<Arc<str>>,
}

impl Default for HostsFeed {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            deltas: broadcast::channel(DELTA_BUFFER).0,
        }
    }
}

/// A stream's start: the snapshot (JSON), and the deltas that follow it.
#[derive(Debug)]
pub struct Subscription {
    pub snapshot: String,
    pub deltas: broadcast::Receiver<Arc<str>>,
}

impl HostsFeed {
    /// A new stream's snapshot and deltas; the feed starts with its first stream.
    pub async fn subscribe(self: &Arc<Self>, app: &AppState) -> Result<Subscription, ApiError> {
        let mut state = self.state.lock().await;
        if !state.running {
            let now = Instant::now();
            // Followed from before the read: a change after it is signalled and named again.
            let hub = &app.hub;
            let changes = hub.subscribe_changes();
            hub.take_changed();
            state.hosts = host_views(app)
                .await?
                .iter()
                .filter_map(as_json)
                .map(|(id, view)| (id, Sent { view, at: now }))
                .collect();
            state.running = true;
            tokio::spawn(self.clone().run(app.clone(), changes));
        }
        let deltas = self.deltas.subscribe();
        // The first hosts, as many as fit in SNAPSHOT_LIMIT hosts and SNAPSHOT_BYTES (an agent
        // chooses how big its view is, up to the bounds of its reports).
        let mut hosts = String::from("[");
        let mut shown = 0;
        for sent in state.hosts.values().take(SNAPSHOT_LIMIT) {
            let view = sent.view.to_string();
            if hosts.len() + view.len() > SNAPSHOT_BYTES {
                break;
            }
            if shown > 0 {
                hosts.push(',');
            }
            hosts.push_str(&view);
            shown += 1;
        }
        hosts.push(']');
        let snapshot = format!(
            r#"{{"hosts":{hosts},"total":{},"truncated":{}}}"#,
            state.hosts.len(),
            shown < state.hosts.len()
        );
        Ok(Subscription { snapshot, deltas })
    }

    async fn run(self: Arc<Self>, app: AppState, mut changes: tokio::sync::watch::Receiver<u64>) {
        let hub = app.hub.clone();
        let mut last_full = Instant::now();
        // A read that failed is made again in full (what it was to read has been taken).
        let mut failed = false;
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    break; // the hub is gone: the server is stopping
                },
                () = tokio::time::sleep_until(last_full + REFRESH) => {}
            }
            tokio::time::sleep(COALESCE).await;
            changes.borrow_and_update();
            let read = match hub.take_changed() {
                Changed::Hosts(ids) if !failed && last_full.elapsed() < REFRESH => {
                    if ids.is_empty() {
                        continue;
                    }
                    let ids: Vec<HostId> = ids.into_iter().collect();
                    host_views_of(&app, &ids)
                        .await
                        .map(|views| Read::These { ids, views })
                }
                _ => {
                    last_full = Instant::now();
                    host_views(&app).await.map(Read::All)
                }
            };
            let read = match read {
                Ok(read) => {
                    failed = false;
                    read
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(error = %e, "cannot read the hosts for the live view");
                    continue;
                }
            };
            let mut state = self.state.lock().await;
            if self.deltas.receiver_count() == 0 {
                // Stopped under the lock that subscribing takes: a stream that subscribes after
                // this starts the feed again, none is left on a stopped one.
                state.running = false;
                state.hosts.clear();
                return;
            }
            let now = Instant::now();
            let delta = match read {
                Read::All(views) => diff(&mut state.hosts, views.iter().filter_map(as_json), now),
                Read::These { ids, views } => diff_some(
                    &mut state.hosts,
                    ids.iter().map(HostId::as_str),
                    views.iter().filter_map(as_json),
                    now,
                ),
            };
            if let Some(delta) = delta {
                let _ = self.deltas.send(Arc::from(delta));
            }
        }
        // The hub is gone (the server is stopping).
        let mut state = self.state.lock().await;
        state.running = false;
        state.hosts.clear();
    }
}

/// What one look at the hosts read.
enum Read {
    /// Every host.
    All(Vec<HostView>),
    /// The hosts of `ids` that exist.
    These {
        ids: Vec<HostId>,
        views: Vec<HostView>,
    },
}

fn as_json(view: &HostView) -> Option<(String, Value)> {
    Some((view.host_id.clone(), serde_json::to_value(view).ok()?))
}

/// A stream's send budget: [`STREAM_BUDGET`] bytes per [`BUDGET_WINDOW`].
#[derive(Debug)]
pub struct Budget {
    since: Instant,
    spent: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            spent: 0,
        }
    }
}

impl Budget {
    /// Whether `bytes` more may be sent now.
    pub fn spend(&mut self, bytes: usize) -> bool {
        if self.since.elapsed() >= BUDGET_WINDOW {
            *self = Self::default();
        }
        self.spent = self.spent.saturating_add(bytes);
        self.spent <= STREAM_BUDGET
    }
}

/// Whether two views differ in more than `lastSeen`.
fn same_but_last_seen(a: &Value, b: &Value) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| k == "lastSeen" || b.get(k).is_some_and(|w| w == v))
        }
        _ => a == b,
    }
}

/// Brings `sent` up to `views`, every host there is, and returns the delta to send, if anything
/// an admin sees changed: `{"hosts": [changed views], "removed": [host ids], "total": n}`.
fn diff(
    sent: &mut BTreeMap<String, Sent>,
    views: impl Iterator<Item = (String, Value)>,
    now: Instant,
) -> Option<String> {
    let (changed, present) = update(sent, views, now);
    let removed: Vec<String> = sent
        .keys()
        .filter(|id| !present.contains(*id))
        .cloned()
        .collect();
    delta(sent, changed, removed)
}

/// [`diff`] for the hosts of `ids` alone: `views` are those of them that exist (one of `ids`
/// without a view was removed); every other host is left as it was sent.
fn diff_some<'a>(
    sent: &mut BTreeMap<String, Sent>,
    ids: impl Iterator<Item = &'a str>,
    views: impl Iterator<Item = (String, Value)>,
    now: Instant,
) -> Option<String> {
    let (changed, present) = update(sent, views, now);
    let removed: Vec<String> = ids
        .filter(|id| !present.contains(*id) && sent.contains_key(*id))
        .map(str::to_owned)
        .collect();
    delta(sent, changed, removed)
}

/// Records the views that changed in more than a recent `lastSeen`: (those views, every id of
/// `views`).
fn update(
    sent: &mut BTreeMap<String, Sent>,
    views: impl Iterator<Item = (String, Value)>,
    now: Instant,
) -> (Vec<Value>, HashSet<String>) {
    let mut changed = Vec::new();
    let mut present = HashSet::new();
    for (id, view) in views {
        present.insert(id.clone());
        if let Some(last) = sent.get(&id) {
            if last.view == view {
                continue;
            }
            if same_but_last_seen(&last.view, &view)
                && now.duration_since(last.at) < LAST_SEEN_EVERY
            {
                continue; // only lastSeen moved, and it was sent recently
            }
        }
        changed.push(view.clone());
        sent.insert(id, Sent { view, at: now });
    }
    (changed, present)
}

/// Forgets the `removed` hosts; the delta, unless nothing changed.
fn delta(
    sent: &mut BTreeMap<String, Sent>,
    changed: Vec<Value>,
    removed: Vec<String>,
) -> Option<String> {
    for id in &removed {
        sent.remove(id);
    }
    if changed.is_empty() && removed.is_empty() {
        return None;
    }
    Some(json!({ "hosts": changed, "removed": removed, "total": sent.len() }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, status: &str, last_seen: &str) -> (String, Value) {
        (
            id.to_owned(),
            json!({ "hostId": id, "status": status, "lastSeen": last_seen }),
        )
    }

    #[test]
    fn only_changed_hosts_are_sent_and_last_seen_coarsely() {
        let t0 = Instant::now();
        let mut sent = BTreeMap::new();
        let first = diff(
            &mut sent,
            [host("a", "in_sync", "1"), host("b", "in_sync", "1")].into_iter(),
            t0,
        );
        assert!(first.is_some());
        // Nothing changed: nothing to send.
        let same = [host("a", "in_sync", "1"), host("b", "in_sync", "1")];
        assert_eq!(diff(&mut sent, same.into_iter(), t0), None);
        // Only lastSeen moved, soon after: nothing; a minute later: that host alone.
        let seen = [host("a", "in_sync", "2"), host("b", "in_sync", "1")];
        assert_eq!(
            diff(
                &mut sent,
                seen.clone().into_iter(),
                t0 + Duration::from_secs(1)
            ),
            None
        );
        let later = diff(&mut sent, seen.into_iter(), t0 + LAST_SEEN_EVERY).unwrap();
        let later: Value = serde_json::from_str(&later).unwrap();
        assert_eq!(later["hosts"].as_array().unwrap().len(), 1);
        assert_eq!(later["hosts"][0]["hostId"], "a");
        // A status change is sent at once, one host; a host gone is named as removed.
        let status = diff(
            &mut sent,
            [host("a", "applying", "2")].into_iter(),
            t0 + LAST_SEEN_EVERY,
        )
        .unwrap();
        let status: Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["hosts"].as_array().unwrap().len(), 1);
        assert_eq!(status["hosts"][0]["status"], "applying");
        assert_eq!(status["removed"], json!(["b"]));
        assert_eq!(status["total"], 1);
    }

    #[test]
    fn a_read_of_some_hosts_changes_only_those() {
        let t0 = Instant::now();
        let mut sent = BTreeMap::new();
        let all = [
            host("a", "in_sync", "1"),
            host("b", "in_sync", "1"),
            host("c", "in_sync", "1"),
        ];
        assert!(diff(&mut sent, all.into_iter(), t0).is_some());
        // Nothing of the hosts read changed: nothing to send, and the others are not removed.
        let none = diff_some(
            &mut sent,
            ["a"].into_iter(),
            [host("a", "in_sync", "1")].into_iter(),
            t0,
        );
        assert_eq!(none, None);
        assert_eq!(sent.len(), 3);
        // b changed, c is gone (named, without a view), d is new; a is not named.
        let some = diff_some(
            &mut sent,
            ["b", "c", "d"].into_iter(),
            [host("b", "degraded", "1"), host("d", "pending", "1")].into_iter(),
            t0,
        )
        .unwrap();
        let some: Value = serde_json::from_str(&some).unwrap();
        assert_eq!(some["hosts"].as_array().unwrap().len(), 2);
        assert_eq!(some["hosts"][0]["hostId"], "b");
        assert_eq!(some["hosts"][1]["hostId"], "d");
        assert_eq!(some["removed"], json!(["c"]));
        assert_eq!(some["total"], 3);
        // The same as a full read of the same hosts would have sent.
        let mut full = BTreeMap::new();
        diff(
            &mut full,
            [
                host("a", "in_sync", "1"),
                host("b", "in_sync", "1"),
                host("c", "in_sync", "1"),
            ]
            .into_iter(),
            t0,
        );
        let whole = diff(
            &mut full,
            [
                host("a", "in_sync", "1"),
                host("b", "degraded", "1"),
                host("d", "pending", "1"),
            ]
            .into_iter(),
            t0,
        )
        .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&whole).unwrap(), some);
        // lastSeen alone, soon after: nothing, as in a full read.
        let seen = diff_some(
            &mut sent,
            ["a"].into_iter(),
            [host("a", "in_sync", "2")].into_iter(),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(seen, None);
        // A host named but never sent, and not there: nothing.
        assert_eq!(
            diff_some(&mut sent, ["zz"].into_iter(), std::iter::empty(), t0),
            None
        );
    }

    #[test]
    fn a_stream_over_its_budget_is_refused_until_the_window_ends() {
        let mut budget = Budget::default();
        assert!(budget.spend(STREAM_BUDGET - 1));
        assert!(budget.spend(1));
        assert!(!budget.spend(1));
        budget.since -= BUDGET_WINDOW;
        assert!(budget.spend(STREAM_BUDGET));
    }
}
