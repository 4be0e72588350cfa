//! The hub: which hosts have a live stream on this replica, and how to wake or cut them. It hears
//! every change, this replica's and (on PostgreSQL) the others', through `changes::ChangeNotifier`.
//!
//! Streams are level-triggered: waking one makes it rebuild the host's whole state from SQL, so
//! any number of changes in between collapse into one message.
//!
//! On PostgreSQL the hub names every stream that opens or ends to a [`StreamLog`]
//! (`agents::presence`), so that the other replicas know which hosts this one holds.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use keyward_common::{HostId, TenantId};
use tokio::sync::{broadcast, watch};

#[derive(Debug)]
struct Connection {
    id: u64,
    tenant: TenantId,
    /// A bastion's state names every tenant's routes and revocations: any tenant's change wakes it.
    bastion: bool,
    wake: watch::Sender<u64>,
    cut: watch::Sender<bool>,
}

/// The live streams, by host and by tenant.
#[derive(Debug, Default)]
struct Connections {
    by_host: HashMap<HostId, Connection>,
    /// The connected hosts of each tenant (usually one), so that waking a tenant's hosts does
    /// not scan every connection: a bulk rotation of N tenants would otherwise cost N².
    by_tenant: HashMap<TenantId, Vec<HostId>>,
    /// The connected bastions.
    bastions: HashSet<HostId>,
}

impl Connections {
    fn insert(&mut self, host: &HostId, connection: Connection) -> Option<Connection> {
        let tenant = connection.tenant.clone();
        if connection.bastion {
            self.bastions.insert(host.clone());
        } else {
            self.bastions.remove(host);
        }
        let old = self.by_host.insert(host.clone(), connection);
        if let Some(old) = &old {
            self.forget_tenant_host(&old.tenant, host);
        }
        self.by_tenant.entry(tenant).or_default().push(host.clone());
        old
    }

    fn remove(&mut self, host: &HostId) -> Option<Connection> {
        let old = self.by_host.remove(host)?;
        self.forget_tenant_host(&old.tenant, host);
        self.bastions.remove(host);
        Some(old)
    }

    fn forget_tenant_host(&mut self, tenant: &TenantId, host: &HostId) {
        if let Some(hosts) = self.by_tenant.get_mut(tenant) {
            hosts.retain(|h| h != host);
            if hosts.is_empty() {
                self.by_tenant.remove(tenant);
            }
        }
    }
}

/// A credential that stopped being valid: every live view opened with it (or for it) ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// An API token (by id).
    Token(String),
    /// Every credential of a tenant.
    Tenant(TenantId),
    /// A host's certificate.
    Host(HostId),
    /// Revocations may have been missed: every live view checks its credential again.
    Unknown,
}

/// How revocations reach this replica's live streams. Other replicas' revocations arrive through
/// the change seam (`changes::postgres`) as `Change::TokenRevoked`/`Change::HostRevoked`, which
/// the hub publishes here. A receiver that lags behind, or that gets [`Revoked::Unknown`], must
/// treat every credential as possibly revoked and check again.
pub trait RevocationFeed: Send + Sync {
    fn publish_revoked(&self, revoked: Revoked);
    fn subscribe_revoked(&self) -> broadcast::Receiver<Revoked>;
}

/// Revocations waiting for the streams to look: few and small, so a short buffer is enough (a
/// stream that lags re-checks its credential).
const REVOCATION_BUFFER: usize = 256;

#[derive(Debug)]
struct Revocations(broadcast::Sender<Revoked>);

impl Default for Revocations {
    fn default() -> Self {
        Self(broadcast::channel(REVOCATION_BUFFER).0)
    }
}

/// Host ids named as changed before [`Hub::take_changed`] takes them, at most: past this the
/// hosts view reads every host instead (as after a change that names no host).
pub const CHANGED_HOSTS_LIMIT: usize = 1024;

/// What changed since the hosts view last looked ([`Hub::take_changed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Only these hosts (possibly none).
    Hosts(HashSet<HostId>),
    /// Any host: a change that names no host (a tenant's hosts' desired state), or more than
    /// [`CHANGED_HOSTS_LIMIT`] hosts.
    All,
}

impl Default for Changed {
    fn default() -> Self {
        Self::Hosts(HashSet::new())
    }
}

/// Where the hub says that a host's stream came or went, so that the other replicas know who
/// holds it (`agents::presence`). Called with the hub's lock released; it must not block.
pub trait StreamLog: Send + Sync + fmt::Debug {
    /// The host's stream on this replica opened or ended: [`Hub::is_connected`] says which.
    fn stream_changed(&self, host: &HostId);
}

#[derive(Debug, Default)]
pub struct Hub {
    connections: Mutex<Connections>,
    revocations: Revocations,
    next_id: AtomicU64,
    /// Bumped whenever something an admin sees of a host may have changed (a stream came or
    /// went, an acknowledgement, a hello, drift, an error, a login): the live hosts view follows it.
    changes: watch::Sender<u64>,
    /// Which hosts changed since the hosts view last took them, so that it reads those alone.
    changed: Mutex<Changed>,
    /// Told of every stream that opens or ends (set once, on PostgreSQL).
    stream_log: OnceLock<Arc<dyn StreamLog>>,
    /// Bumped when a bulk rotation job's progress may have changed, on any replica: the job's
    /// live views on replicas other than its own read it again.
    jobs: watch::Sender<u64>,
}

/// What a stream holds while it lives.
#[derive(Debug)]
pub struct Registration {
    pub id: u64,
    /// Changes when the host's desired state may have changed.
    pub wake: watch::Receiver<u64>,
    /// Becomes true when the stream must end (host revoked, or a newer stream of the same host).
    pub cut: watch::Receiver<bool>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new stream for `host` (a bastion's when `bastion`: woken by every tenant's
    /// change); an older stream of the same host is cut.
    pub fn register(&self, host: &HostId, tenant: &TenantId, bastion: bool) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (wake_tx, wake_rx) = watch::channel(0);
        let (cut_tx, cut_rx) = watch::channel(false);
        let (old, connected) = {
            let mut connections = self.lock();
            let old = connections.insert(
                host,
                Connection {
                    id,
                    tenant: tenant.clone(),
                    bastion,
                    wake: wake_tx,
                    cut: cut_tx,
                },
            );
            (old, connections.by_host.len())
        };
        if let Some(old) = old {
            let _ = old.cut.send(true);
        }
        metrics::gauge!("keyward_agents_connected").set(connected as f64);
        self.log_stream(host);
        self.host_changed(host);
        Registration {
            id,
            wake: wake_rx,
            cut: cut_rx,
        }
    }

    /// Forgets a stream that ended (unless a newer one of the same host replaced it).
    pub fn unregister(&self, host: &HostId, id: u64) {
        let mut connections = self.lock();
        let ended = connections.by_host.get(host).is_some_and(|c| c.id == id);
        if ended {
            connections.remove(host);
        }
        metrics::gauge!("keyward_agents_connected").set(connections.by_host.len() as f64);
        drop(connections);
        if ended {
            self.log_stream(host);
        }
        self.host_changed(host);
    }

    /// Tells `log` of every stream that opens or ends from now on (the first call only).
    pub fn log_streams_to(&self, log: Arc<dyn StreamLog>) {
        let _ = self.stream_log.set(log);
    }

    fn log_stream(&self, host: &HostId) {
        if let Some(log) = self.stream_log.get() {
            log.stream_changed(host);
        }
    }

    /// The tenant's keys changed: wake every connected host of the tenant, and every bastion.
    pub fn tenant_changed(&self, tenant: &TenantId) {
        {
            let connections = self.lock();
            let hosts = connections
                .by_tenant
                .get(tenant)
                .map_or(&[][..], Vec::as_slice);
            let woken = hosts.iter().chain(&connections.bastions);
            for connection in woken.filter_map(|h| connections.by_host.get(h)) {
                connection.wake.send_modify(|n| *n += 1);
            }
        }
        self.hosts_changed();
    }

    /// Changes may have been missed: every stream reads its host's state again (a revoked host's
    /// stream ends there), the hosts view reads every host, and every live view checks its
    /// credential.
    pub fn resync(&self) {
        {
            let connections = self.lock();
            for connection in connections.by_host.values() {
                connection.wake.send_modify(|n| *n += 1);
            }
        }
        self.publish_revoked(Revoked::Unknown);
        self.hosts_changed();
        self.job_progressed();
    }

    /// A bulk rotation job's progress may have changed.
    pub fn job_progressed(&self) {
        self.jobs.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes when a bulk rotation job's progress may have changed ([`Hub::job_progressed`]).
    pub fn subscribe_jobs(&self) -> watch::Receiver<u64> {
        self.jobs.subscribe()
    }

    /// Ends the host's stream at once (revocation), and every live view opened for the host.
    pub fn cut(&self, host: &HostId) {
        let removed = self.lock().remove(host);
        if let Some(connection) = removed {
            let _ = connection.cut.send(true);
            self.log_stream(host);
        }
        self.publish_revoked(Revoked::Host(host.clone()));
        self.host_changed(host);
    }

    /// The replica is stopping: every stream ends (not as a revocation), and its agent dials
    /// again, another replica when it knows one.
    pub fn disconnect_all(&self) {
        let mut connections = self.lock();
        connections.by_host.clear();
        connections.by_tenant.clear();
        metrics::gauge!("keyward_agents_connected").set(0.0);
    }

    fn changed_lock(&self) -> std::sync::MutexGuard<'_, Changed> {
        self.changed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something an admin sees of some host changed, and which host is not known: the hosts
    /// view reads every host (see [`Hub::subscribe_changes`]).
    pub fn hosts_changed(&self) {
        *self.changed_lock() = Changed::All;
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Something an admin sees of `host` changed: the hosts view reads that host.
    pub fn host_changed(&self, host: &HostId) {
        self.these_hosts_changed(std::iter::once(host));
    }

    /// Something an admin sees of each of `hosts` changed (one signal for all of them).
    pub fn these_hosts_changed<'a>(&self, hosts: impl IntoIterator<Item = &'a HostId>) {
        {
            let mut changed = self.changed_lock();
            if let Changed::Hosts(set) = &mut *changed {
                for host in hosts {
                    if set.len() >= CHANGED_HOSTS_LIMIT && !set.contains(host) {
                        *changed = Changed::All;
                        break;
                    }
                    set.insert(host.clone());
                }
            }
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The hosts changed since the last call (what [`Hub::subscribe_changes`] signalled), and
    /// forgets them. There is one taker: the replica's hosts view.
    pub fn take_changed(&self) -> Changed {
        std::mem::take(&mut *self.changed_lock())
    }

    /// Follows [`Hub::hosts_changed`]: the receiver sees a new value after each change (several
    /// changes between two looks collapse into one).
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn is_connected(&self, host: &HostId) -> bool {
        self.lock().by_host.contains_key(host)
    }

    pub fn connected(&self) -> usize {
        self.lock().by_host.len()
    }

    /// The hosts with a stream on this replica.
    pub fn connected_hosts(&self) -> Vec<HostId> {
        self.lock().by_host.keys().cloned().collect()
    }
}

impl RevocationFeed for Hub {
    fn publish_revoked(&self, revoked: Revoked) {
        // No receiver means no live stream: nothing to end.
        let _ = self.revocations.0.send(revoked);
    }

    fn subscribe_revoked(&self) -> broadcast::Receiver<Revoked> {
        self.revocations.0.subscribe()
    }
}

impl crate::changes::ChangeNotifier for Hub {
    fn changed(&self, change: crate::changes::Change) {
        use crate::changes::Change;
        match change {
            Change::Tenant(tenant) => self.tenant_changed(&tenant),
            Change::Host(host) => self.host_changed(&host),
            Change::Reported(hosts) => self.these_hosts_changed(&hosts),
            Change::HostRevoked(host) => self.cut(&host),
            Change::TokenRevoked(token_id) => {
                self.publish_revoked(Revoked::Token(token_id));
            }
            Change::JobProgress(_) => self.job_progressed(),
            Change::Resync => self.resync(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(host: &str, tenant: &str) -> (HostId, TenantId) {
        (
            host.parse().unwrap_or_else(|_| unreachable!()),
            tenant.parse().unwrap_or_else(|_| unreachable!()),
        )
    }

    #[test]
    fn job_progress_and_a_resync_wake_the_jobs_live_views() {
        use crate::changes::{Change, ChangeNotifier as _};
        let hub = Hub::default();
        let mut jobs = hub.subscribe_jobs();
        hub.changed(Change::Tenant(
            "acme".parse().unwrap_or_else(|_| unreachable!()),
        ));
        assert!(!jobs.has_changed().unwrap_or(true));
        hub.changed(Change::JobProgress("job_00000000000000aa".into()));
        assert!(jobs.has_changed().unwrap_or(false));
        jobs.mark_unchanged();
        hub.changed(Change::Resync);
        assert!(jobs.has_changed().unwrap_or(false));
    }

    #[test]
    fn a_tenant_change_wakes_only_that_tenants_hosts() {
        let hub = Hub::default();
        let (h1, t1) = ids("vps-1", "acme");
        let (h2, _) = ids("vps-2", "acme");
        let (h3, t2) = ids("vps-3", "other");
        let mut r1 = hub.register(&h1, &t1, false);
        let mut r2 = hub.register(&h2, &t1, false);
        let r3 = hub.register(&h3, &t2, false);
        hub.tenant_changed(&t1);
        assert!(r1.wake.has_changed().unwrap_or(false));
        assert!(r2.wake.has_changed().unwrap_or(false));
        assert!(!r3.wake.has_changed().unwrap_or(true));
        r1.wake.mark_unchanged();
        r2.wake.mark_unchanged();

        // A newer stream of h1 cuts the old one and is the one woken.
        let r1b = hub.register(&h1, &t1, false);
        assert!(*r1.cut.borrow_and_update());
        hub.unregister(&h1, r1.id);
        assert!(hub.is_connected(&h1));
        hub.tenant_changed(&t1);
        assert!(r1b.wake.has_changed().unwrap_or(false));
        assert!(r2.wake.has_changed().unwrap_or(false));
        assert!(!r3.wake.has_changed().unwrap_or(true));

        hub.unregister(&h1, r1b.id);
        hub.cut(&h2);
        assert!(*r2.cut.borrow_and_update());
        assert_eq!(hub.connected(), 1);
        assert!(!hub.lock().by_tenant.contains_key(&t1));
        hub.tenant_changed(&t2);
        assert!(r3.wake.has_changed().unwrap_or(false));
    }

    #[test]
    fn every_tenants_change_wakes_a_bastion_until_it_goes() {
        let hub = Hub::default();
        let (vps, acme) = ids("vps-1", "acme");
        let (bastion, platform) = ids("jump-1", "platform");
        let (_, other) = ids("vps-2", "other");
        let mut r_vps = hub.register(&vps, &acme, false);
        let mut r_bastion = hub.register(&bastion, &platform, true);
        for tenant in [&acme, &other, &platform] {
            hub.tenant_changed(tenant);
            assert!(r_bastion.wake.has_changed().unwrap_or(false), "{tenant}");
            r_bastion.wake.mark_unchanged();
        }
        assert!(r_vps.wake.has_changed().unwrap_or(false));
        r_vps.wake.mark_unchanged();
        hub.tenant_changed(&other);
        assert!(!r_vps.wake.has_changed().unwrap_or(true));

        // Gone, it is woken no more; the same host back as a plain host is not a bastion.
        hub.unregister(&bastion, r_bastion.id);
        assert!(hub.lock().bastions.is_empty());
        let r_again = hub.register(&bastion, &platform, false);
        hub.tenant_changed(&other);
        assert!(!r_again.wake.has_changed().unwrap_or(true));
        assert!(hub.lock().bastions.is_empty());
    }

    /// Records the hosts the hub names, and whether each was connected when named.
    #[derive(Debug, Default)]
    struct Named(Mutex<Vec<(HostId, bool)>>, OnceLock<Arc<Hub>>);

    impl StreamLog for Named {
        fn stream_changed(&self, host: &HostId) {
            let connected = self.1.get().is_some_and(|hub| hub.is_connected(host));
            self.0.lock().unwrap().push((host.clone(), connected));
        }
    }

    #[test]
    fn streams_that_open_or_end_are_named_once_each() {
        let hub = Arc::new(Hub::default());
        let named = Arc::new(Named::default());
        named.1.set(hub.clone()).unwrap();
        hub.log_streams_to(named.clone());
        let (h1, t1) = ids("vps-1", "acme");
        let (h2, _) = ids("vps-2", "acme");
        let r1 = hub.register(&h1, &t1, false);
        let r1b = hub.register(&h1, &t1, false);
        // The replaced stream ends after its successor: nothing to say, h1 is still connected.
        hub.unregister(&h1, r1.id);
        hub.unregister(&h1, r1b.id);
        let _r2 = hub.register(&h2, &t1, false);
        hub.cut(&h2);
        // Cut already: its stream's own end says nothing more.
        hub.unregister(&h2, 99);
        hub.disconnect_all();
        assert_eq!(
            *named.0.lock().unwrap(),
            [
                (h1.clone(), true),
                (h1.clone(), true),
                (h1, false),
                (h2.clone(), true),
                (h2, false)
            ]
        );
    }

    #[test]
    fn changed_hosts_are_named_until_there_are_too_many() {
        let hub = Hub::default();
        let changes = hub.subscribe_changes();
        let (h1, t1) = ids("vps-1", "acme");
        let (h2, _) = ids("vps-2", "acme");
        hub.host_changed(&h1);
        hub.these_hosts_changed([&h1, &h2]);
        assert!(changes.has_changed().unwrap_or(false));
        assert_eq!(
            hub.take_changed(),
            Changed::Hosts([h1.clone(), h2.clone()].into_iter().collect())
        );
        // Taken: nothing until the next change.
        assert_eq!(hub.take_changed(), Changed::default());
        // A stream that comes and goes names its host.
        let r1 = hub.register(&h1, &t1, false);
        hub.unregister(&h1, r1.id);
        assert_eq!(
            hub.take_changed(),
            Changed::Hosts(std::iter::once(h1.clone()).collect())
        );
        // A tenant's desired state, or a change naming no host: every host.
        hub.tenant_changed(&t1);
        hub.host_changed(&h2);
        assert_eq!(hub.take_changed(), Changed::All);
        hub.hosts_changed();
        assert_eq!(hub.take_changed(), Changed::All);
        // Past the limit: every host.
        let many: Vec<HostId> = (0..=CHANGED_HOSTS_LIMIT)
            .map(|i| {
                format!("vps-{i}")
                    .parse()
                    .unwrap_or_else(|_| unreachable!())
            })
            .collect();
        hub.these_hosts_changed(&many[..CHANGED_HOSTS_LIMIT]);
        assert!(matches!(hub.take_changed(), Changed::Hosts(s) if s.len() == CHANGED_HOSTS_LIMIT));
        hub.these_hosts_changed(&many);
        assert_eq!(hub.take_changed(), Changed::All);
    }
}
