//! The change-notification seam between the domain and what wakes agents and live views.
//!
//! The domain announces each committed change here, after its commit, by ids only (never key
//! material). In one process the hub (`agents::hub::Hub`) implements it: it wakes the streams of
//! the agents concerned and the live hosts view. Replicas sharing a PostgreSQL database also
//! tell each other ([`postgres::ReplicaChanges`], over `LISTEN`/`NOTIFY`), and a replica that
//! lost its connection reads the state from SQL again ([`Change::Resync`]), so a lost
//! notification delays nothing beyond the reconnect.

use std::fmt;

use keyward_common::{HostId, TenantId};
use serde::{Deserialize, Serialize};

pub mod postgres;
mod wire;

/// A committed change others must hear of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The desired state of a tenant's hosts changed (a key created, rotated, regenerated or
    /// revoked): their agents get a new state.
    Tenant(TenantId),
    /// A host's own record changed (registered, enrolled, reported): live views show it again.
    Host(HostId),
    /// Agents' reports (hellos, acknowledgements, disconnections) were recorded for these hosts.
    Reported(Vec<HostId>),
    /// A host was revoked: its agent's stream is cut and live views show it revoked.
    HostRevoked(HostId),
    /// An API token was revoked: every live view opened with it ends.
    TokenRevoked(String),
    /// A bulk rotation job's progress or end was recorded (by id): its live views on every
    /// replica read it again.
    JobProgress(String),
    /// Changes may have been missed (a replica's listening connection was lost, or a newer
    /// replica sent a change this one does not know): every stream reads its state again, live
    /// views read every host, and every live view checks its credential.
    Resync,
}

/// Where the domain announces its changes.
pub trait ChangeNotifier: Send + Sync + fmt::Debug {
    fn changed(&self, change: Change);
}
