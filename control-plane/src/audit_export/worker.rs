//! A sink's worker: lease, read after the cursor, send, move the cursor; back off on failure.

use std::sync::Arc;
use std::time::Duration;

use keyward_common::HostId;

use super::record::{Record, login_batch, records};
use super::{AuditExport, Sink, SinkError};
use crate::agents::logins::MAX_BATCH as MAX_LOGINS_PER_EVENT;

/// What one attempt did.
enum Step {
    Delivered,
    /// Nothing new.
    Idle,
    /// Another replica delivers to the sink.
    NotMine,
    Failed,
}

/// Full jitter: a random wait up to `min(max, 1s · 2^failures)`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let ceiling = Duration::from_secs(1)
        .saturating_mul(1 << failures.min(20))
        .min(max);
    ceiling
        .mul_f64(rand::random::<f64>())
        .max(Duration::from_millis(100))
}

impl AuditExport {
    pub(super) async fn run(self: Arc<Self>, sink: Arc<Sink>) {
        let mut failures = 0u32;
        loop {
            let wait = match self.step(&sink).await {
                Step::Delivered => {
                    failures = 0;
                    Duration::ZERO
                }
                Step::Idle | Step::NotMine => self.config.poll_interval,
                Step::Failed => {
                    failures = failures.saturating_add(1);
                    backoff(failures, self.config.max_backoff)
                }
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    async fn step(&self, sink: &Sink) -> Step {
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        match self
            .store
            .lease_audit_sink(&sink.name, &self.replica, now, until)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Step::NotMine,
            Err(e) => {
                tracing::warn!(sink = %sink.name, error = %e, "audit export cannot reach the database");
                return Step::Failed;
            }
        }
        let batch = match self.next_batch(sink).await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Step::Idle,
            Err(e) => {
                tracing::warn!(sink = %sink.name, error = %e, "audit export cannot read the audit log");
                return Step::Failed;
            }
        };
        let (last_seq, records) = batch;
        let sent = tokio::time::timeout(
            self.config.timeout,
            sink.target
                .deliver(&records, self.config.timeout, now.timestamp()),
        )
        .await
        .unwrap_or(Err(SinkError::Unreachable(
            "the sink did not answer in time",
        )));
        match sent {
            Ok(()) => {
                metrics::counter!("keyward_audit_export_events_total", "sink" => sink.name.clone())
                    .increment(records.len() as u64);
                match self
                    .store
                    .advance_audit_sink(&sink.name, &self.replica, last_seq, self.clock.now())
                    .await
                {
                    Ok(true) => Step::Delivered,
                    // The lease ran out while sending: the next holder sends the batch again.
                    Ok(false) => Step::NotMine,
                    Err(e) => {
                        tracing::warn!(sink = %sink.name, error = %e, "audit export cannot record a delivery");
                        Step::Failed
                    }
                }
            }
            Err(e) => {
                tracing::warn!(sink = %sink.name, error = %e, "audit export: a sink failed; retrying");
                metrics::counter!("keyward_audit_export_errors_total", "sink" => sink.name.clone())
                    .increment(1);
                if let Err(e) = self
                    .store
                    .audit_sink_failed(&sink.name, &self.replica, &e.public(), self.clock.now())
                    .await
                {
                    tracing::warn!(sink = %sink.name, error = %e, "audit export cannot record a failure");
                }
                Step::Failed
            }
        }
    }

    /// The events after the sink's cursor, as records, up to `batch` records (whole events, at
    /// least one), and the last event's `seq`; `None` when there is nothing new.
    async fn next_batch(
        &self,
        sink: &Sink,
    ) -> Result<Option<(i64, Vec<Record>)>, crate::store::StoreError> {
        let after = self
            .store
            .audit_sink(&sink.name)
            .await?
            .map_or(0, |c| c.delivered_seq);
        let limit = i64::try_from(self.config.batch).unwrap_or(200);
        let events = self.store.audit_events_after(after, limit).await?;
        let mut out = Vec::new();
        let mut last = None;
        for (event, detail) in events {
            if !out.is_empty() && out.len() >= self.config.batch {
                break;
            }
            let logins = match login_batch(&event) {
                Some((host, first, last)) => match host.parse::<HostId>() {
                    Ok(host) => {
                        self.store
                            .logins_of_batch(&host, first, last, MAX_LOGINS_PER_EVENT as i64)
                            .await?
                    }
                    Err(_) => Vec::new(),
                },
                None => Vec::new(),
            };
            last = Some(event.seq);
            out.extend(records(sink.format, event, detail, &logins));
        }
        Ok(last.map(|seq| (seq, out)))
    }
}
