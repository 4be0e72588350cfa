//! Each sink's status, for `/metrics` and `GET /api/v1/admin/audit/sinks`, read from SQL so that
//! every replica shows the same.

use serde::Serialize;

use super::{AuditExport, Sink};
use crate::clock::{iso8601, parse_iso8601};
use crate::store::StoreError;

/// `GET /api/v1/admin/audit/sinks`: one sink.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    pub name: String,
    /// `syslog`, `webhook` or `file`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `keyward` or `ocsf`.
    pub format: &'static str,
    /// `ok` (up to date or catching up), `retrying` (the last attempt failed), or `failing`: its
    /// oldest undelivered event has waited longer than `audit_export.alert_after` (alert on it).
    pub status: &'static str,
    /// The last audit event the sink confirmed (0: none yet).
    pub delivered_seq: i64,
    /// Audit events not yet delivered.
    pub lag_events: i64,
    /// When the oldest undelivered event happened.
    pub oldest_pending_at: Option<String>,
    /// Failed attempts since the last delivery.
    pub failures: i64,
    /// Why the last attempt failed: one sentence, without addresses.
    pub last_error: Option<String>,
    pub last_success_at: Option<String>,
    pub last_attempt_at: Option<String>,
}

impl AuditExport {
    async fn sink_status(&self, sink: &Sink, head: i64) -> Result<SinkStatus, StoreError> {
        let cursor = self.store.audit_sink(&sink.name).await?;
        let delivered = cursor.as_ref().map_or(0, |c| c.delivered_seq);
        let oldest = if delivered < head {
            self.store.audit_event_time_after(delivered).await?
        } else {
            None
        };
        let waited = oldest
            .as_deref()
            .and_then(parse_iso8601)
            .map(|at| (self.clock.now() - at).to_std().unwrap_or_default());
        let failures = cursor.as_ref().map_or(0, |c| c.failures);
        let status = if waited.is_some_and(|w| w > self.config.alert_after) {
            "failing"
        } else if failures > 0 {
            "retrying"
        } else {
            "ok"
        };
        Ok(SinkStatus {
            name: sink.name.clone(),
            kind: sink.kind,
            format: sink.format.as_str(),
            status,
            delivered_seq: delivered,
            lag_events: (head - delivered).max(0),
            oldest_pending_at: oldest,
            failures,
            last_error: cursor.as_ref().and_then(|c| c.last_error.clone()),
            last_success_at: cursor.as_ref().and_then(|c| c.last_success_at.map(iso8601)),
            last_attempt_at: cursor.as_ref().and_then(|c| c.last_attempt_at.map(iso8601)),
        })
    }

    /// Every configured sink's status, in configuration order.
    pub async fn status(&self) -> Result<Vec<SinkStatus>, StoreError> {
        let head = self.store.audit_head().await?.map_or(0, |(seq, _)| seq);
        let mut out = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            out.push(self.sink_status(sink, head).await?);
        }
        Ok(out)
    }

    /// Every sink's lag and alert state as gauges, read from SQL at scrape time: every replica
    /// tells the same, and a sink that turned `failing` while its worker waits out a backoff
    /// says so at once.
    pub async fn publish_metrics(&self) {
        let Ok(statuses) = self.status().await else {
            return;
        };
        for status in statuses {
            let label = status.name.clone();
            metrics::gauge!("keyward_audit_export_lag_events", "sink" => label.clone())
                .set(status.lag_events as f64);
            metrics::gauge!("keyward_audit_export_failing", "sink" => label.clone())
                .set(if status.status == "failing" { 1.0 } else { 0.0 });
            let waited = status
                .oldest_pending_at
                .as_deref()
                .and_then(parse_iso8601)
                .map_or(0.0, |at| {
                    (self.clock.now() - at).num_seconds().max(0) as f64
                });
            metrics::gauge!("keyward_audit_export_oldest_pending_seconds", "sink" => label)
                .set(waited);
        }
    }
}
