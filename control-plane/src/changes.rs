//! The change-notification seam between the domain and what wakes agents and live views.
//!
//! The domain announces each committed change here, after its commit, by ids only (never key
//! material). In one process the hub (`agents::hub::Hub`) implements it: it wakes the streams of
//! the agents concerned and the live hosts view. Several replicas need every replica to hear of a
//! change made on any of them: an implementation over PostgreSQL `LISTEN`/`NOTIFY` (issue #15)
//! publishes the same changes, and a replica that lost its connection reads the state from SQL
//! again, so a lost notification delays nothing beyond the reconnect.

use std::fmt;

use keyward_common::{HostId, TenantId};

/// A committed change others must hear of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The desired state of a tenant's hosts changed (a key created, rotated, regenerated or
    /// revoked): their agents get a new state.
    Tenant(TenantId),
    /// A host's own record changed (registered, enrolled, reported): live views show it again.
    Host(HostId),
    /// A host was revoked: its agent's stream is cut and live views show it revoked.
    HostRevoked(HostId),
    /// An API token was revoked: every live view opened with it ends.
    TokenRevoked(String),
}

/// Where the domain announces its changes.
pub trait ChangeNotifier: Send + Sync + fmt::Debug {
    fn changed(&self, change: Change);
}
