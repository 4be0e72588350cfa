//! The retention sweep: login events and drift events older than `[retention]` are deleted, at
//! start and then once a day, and so are the records of SSH certificates whose validity ended
//! and of access requests that ended, that long ago.
//!
//! Rows go by the control plane's time of receipt (`received_at`), never by the agent's own
//! times, which a rooted host chooses. Each batch of at most [`BATCH`] rows is its own short
//! transaction, oldest first, so agents' writes never wait long behind the sweep (on SQLite one
//! writer at a time; on PostgreSQL short row locks), and a sweep stopped half way has deleted
//! whole batches. Several replicas may sweep at once: deleting is idempotent.
//!
//! Before they are deleted, login events received longer ago than
//! `retention.pseudonymise_logins_after` keep their source address and user name only as
//! pseudonyms ([`crate::pseudonym`]); the rows, and so the audit chain over their batches, stay.
//!
//! The audit log is never swept: its events are hash-chained (`audit verify`) and each stored
//! login batch's `host.logins` event keeps its count and SHA-256 digest after the rows are gone.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::iso8601;
use crate::config::RetentionConfig;
use crate::lifecycle::KeyLifecycle;
use crate::pseudonym::Pseudonymiser;
use crate::store::{Expiring, Store, StoreError};

/// Rows deleted per transaction.
pub const BATCH: i64 = 1000;
/// Time between sweeps.
pub const EVERY: Duration = Duration::from_secs(24 * 3600);

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub login_events: u64,
    pub drift_events: u64,
    pub certificates: u64,
    pub access_grants: u64,
    /// Login events whose address and user name became pseudonyms.
    pub pseudonymised_logins: u64,
}

/// Deletes every row of `what` received before `before`, [`BATCH`] rows per transaction.
async fn delete_all(store: &Store, what: Expiring, before: &str) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let deleted = store.delete_expired(what, before, BATCH).await?;
        total += deleted;
        metrics::counter!("keyward_retention_deleted_total", "table" => what.as_str())
            .increment(deleted);
        if deleted < BATCH.unsigned_abs() {
            return Ok(total);
        }
        // Between batches, whatever else waits for the database goes first.
        tokio::task::yield_now().await;
    }
}

fn cutoff(now: DateTime<Utc>, keep: Duration) -> String {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    iso8601(
        now.checked_sub_signed(keep)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    )
}

/// Pseudonymises every login event received before `before`, [`BATCH`] rows per transaction.
async fn pseudonymise_all(
    store: &Store,
    pseudonyms: &Pseudonymiser,
    before: &str,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let done = store
            .pseudonymise_logins(before, BATCH, |what, value| {
                pseudonyms.pseudonym(what, value)
            })
            .await?;
        total += done;
        metrics::counter!("keyward_logins_pseudonymised_total").increment(done);
        if done < BATCH.unsigned_abs() {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// One sweep at `now`; login events are pseudonymised when `pseudonyms` is given (the key could
/// be read from Vault).
pub async fn sweep(
    store: &Store,
    config: &RetentionConfig,
    now: DateTime<Utc>,
    pseudonyms: Option<&Pseudonymiser>,
) -> Result<Swept, StoreError> {
    let login_events = delete_all(
        store,
        Expiring::LoginEvents,
        &cutoff(now, config.login_events),
    )
    .await?;
    let drift_events = delete_all(
        store,
        Expiring::DriftEvents,
        &cutoff(now, config.drift_events),
    )
    .await?;
    let certificates = delete_all(
        store,
        Expiring::Certificates,
        &cutoff(now, config.certificates),
    )
    .await?;
    let access_grants = delete_all(
        store,
        Expiring::AccessGrants,
        &cutoff(now, config.access_grants),
    )
    .await?;
    // After the deletions: what is deleted need not be pseudonymised first.
    let pseudonymised_logins = match pseudonyms {
        Some(p) => {
            pseudonymise_all(store, p, &cutoff(now, config.pseudonymise_logins_after)).await?
        }
        None => 0,
    };
    Ok(Swept {
        login_events,
        drift_events,
        certificates,
        access_grants,
        pseudonymised_logins,
    })
}

/// Sweeps now and then every [`EVERY`], for ever; a failed sweep is logged and tried again at
/// the next.
pub async fn run(lifecycle: Arc<KeyLifecycle>, config: RetentionConfig) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pseudonyms = match Pseudonymiser::load_or_create(lifecycle.vault().as_ref()).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "login events are not pseudonymised in this sweep");
                None
            }
        };
        match sweep(
            lifecycle.store(),
            &config,
            lifecycle.now(),
            pseudonyms.as_ref(),
        )
        .await
        {
            Ok(swept) => tracing::info!(
                login_events = swept.login_events,
                drift_events = swept.drift_events,
                certificates = swept.certificates,
                access_grants = swept.access_grants,
                pseudonymised_logins = swept.pseudonymised_logins,
                "retention sweep done"
            ),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_now_minus_the_retention() {
        let now = crate::clock::parse_iso8601("2026-12-06T00:00:00Z").unwrap();
        assert_eq!(
            cutoff(now, Duration::from_secs(90 * 86_400)),
            "2026-09-07T00:00:00Z"
        );
        // An absurd retention keeps everything instead of failing.
        assert!(cutoff(now, Duration::MAX).starts_with('-'));
    }
}
