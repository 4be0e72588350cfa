//! Recordings' retention: a recording whose first chunk arrived longer ago than
//! `[recordings] retention` is deleted, its objects first and then its row, at start and then
//! once a day; each deletion is an audit event (`session.recording.deleted`, with the hash the
//! completion event carried), so that the chain says why a recording it names is gone.
//!
//! Like the other retention (`crate::retention`), the age is the control plane's time of
//! receipt, never a time the host chose. A recording deleted half way (its objects gone, its row
//! not) is deleted again at the next sweep: deleting objects is idempotent.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{RecordingArchive, RecordingName};
use crate::caller::Caller;
use crate::lifecycle::{DomainError, KeyLifecycle};

/// The audit action of a recording deleted by retention.
pub const DELETED_ACTION: &str = "session.recording.deleted";
/// Recordings deleted per look at the table.
const BATCH: i64 = 100;
/// Time between sweeps.
pub const EVERY: Duration = Duration::from_secs(24 * 3600);

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Archive(#[from] super::ArchiveError),
}

/// Deletes every recording received before `now - keep`; returns how many.
pub async fn sweep(
    lifecycle: &KeyLifecycle,
    archive: &RecordingArchive,
    keep: Duration,
    now: DateTime<Utc>,
) -> Result<u64, SweepError> {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let before = now
        .checked_sub_signed(keep)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut total = 0;
    loop {
        let expired = lifecycle
            .store()
            .recordings_received_before(before, BATCH)
            .await?;
        if expired.is_empty() {
            return Ok(total);
        }
        for recording in expired {
            // A row whose agent id does not parse has no objects (none were ever named by it).
            if let Ok(name) = recording.recording_id.parse::<RecordingName>() {
                archive.delete(&recording.host_id, &name).await?;
            }
            let id = recording.id.clone();
            let detail = json!({
                "recordingId": recording.id,
                "hostId": recording.host_id,
                "user": recording.user,
                "sha256": recording.sha256,
                "sizeBytes": recording.size_bytes,
            });
            lifecycle
                .audited(
                    &Caller::system(),
                    DELETED_ACTION,
                    Some(&recording.tenant_id),
                    move |tx| {
                        Box::pin(async move {
                            tx.delete_recording(&id).await?;
                            Ok(((), detail))
                        })
                    },
                )
                .await?;
            total += 1;
            metrics::counter!("keyward_retention_deleted_total", "table" => "session_recordings")
                .increment(1);
        }
    }
}

/// Sweeps now and then every [`EVERY`], for ever; a failed sweep is logged and tried again at
/// the next.
pub async fn run(lifecycle: Arc<KeyLifecycle>, archive: RecordingArchive, keep: Duration) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(&lifecycle, &archive, keep, lifecycle.now()).await {
            Ok(deleted) => tracing::info!(deleted, "recordings retention sweep done"),
            Err(e) => tracing::warn!(error = %e, "recordings retention sweep failed"),
        }
    }
}
