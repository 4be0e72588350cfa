//! The hub: which hosts have a live stream on this replica, and how to wake or cut them.
//!
//! Streams are level-triggered: waking one makes it rebuild the host's whole state from SQL, so
//! any number of changes in between collapse into one message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use keyward_common::{HostId, TenantId};
use tokio::sync::watch;

#[derive(Debug)]
struct Connection {
    id: u64,
    tenant: TenantId,
    wake: watch::Sender<u64>,
    cut: watch::Sender<bool>,
}

#[derive(Debug, Default)]
pub struct Hub {
    connections: Mutex<HashMap<HostId, Connection>>,
    next_id: AtomicU64,
    /// Bumped whenever something an admin sees of a host may have changed (a stream came or
    /// went, an acknowledgement, a hello, drift, an error, a login): the live hosts view follows it.
    changes: watch::Sender<u64>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Connection>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new stream for `host`; an older stream of the same host is cut.
    pub fn register(&self, host: &HostId, tenant: &TenantId) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (wake_tx, wake_rx) = watch::channel(0);
        let (cut_tx, cut_rx) = watch::channel(false);
        let old = self.lock().insert(
            host.clone(),
            Connection {
                id,
                tenant: tenant.clone(),
                wake: wake_tx,
                cut: cut_tx,
            },
        );
        if let Some(old) = old {
            let _ = old.cut.send(true);
        }
        metrics::gauge!("keyward_agents_connected").set(self.lock().len() as f64);
        self.hosts_changed();
        Registration {
            id,
            wake: wake_rx,
            cut: cut_rx,
        }
    }

    /// Forgets a stream that ended (unless a newer one of the same host replaced it).
    pub fn unregister(&self, host: &HostId, id: u64) {
        let mut connections = self.lock();
        if connections.get(host).is_some_and(|c| c.id == id) {
            connections.remove(host);
        }
        metrics::gauge!("keyward_agents_connected").set(connections.len() as f64);
        drop(connections);
        self.hosts_changed();
    }

    /// The tenant's keys changed: wake every connected host of the tenant.
    pub fn tenant_changed(&self, tenant: &TenantId) {
        for connection in self.lock().values().filter(|c| &c.tenant == tenant) {
            connection.wake.send_modify(|n| *n += 1);
        }
        self.hosts_changed();
    }

    /// Ends the host's stream at once (revocation).
    pub fn cut(&self, host: &HostId) {
        if let Some(connection) = self.lock().remove(host) {
            let _ = connection.cut.send(true);
        }
        self.hosts_changed();
    }

    /// Something an admin sees of some host changed (see [`Hub::subscribe_changes`]).
    pub fn hosts_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Follows [`Hub::hosts_changed`]: the receiver sees a new value after each change (several
    /// changes between two looks collapse into one).
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn is_connected(&self, host: &HostId) -> bool {
        self.lock().contains_key(host)
    }

    pub fn connected(&self) -> usize {
        self.lock().len()
    }
}
