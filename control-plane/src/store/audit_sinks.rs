//! Audit export's cursors: per sink, the last event it confirmed, which replica delivers to it
//! now (a lease), and what the status shows.
//!
//! The audit log itself is the outbox: events are never deleted and their sequence numbers have
//! no gaps, so "every event after `delivered_seq`, in order" is exactly what a sink still needs.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;

use super::times::{optional_time, text};
use super::{AuditRecord, Store, StoreError, get, query_error};

/// A sink's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkCursor {
    pub name: String,
    pub delivered_seq: i64,
    pub holder: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    /// Failed attempts since the last delivery.
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
}

fn cursor_from_row(row: &AnyRow) -> Result<SinkCursor, StoreError> {
    Ok(SinkCursor {
        name: get(row, "name")?,
        delivered_seq: get(row, "delivered_seq")?,
        holder: get(row, "holder")?,
        lease_until: optional_time(row, "lease_until")?,
        failures: get(row, "failures")?,
        last_error: get(row, "last_error")?,
        last_attempt_at: optional_time(row, "last_attempt_at")?,
        last_success_at: optional_time(row, "last_success_at")?,
    })
}

impl Store {
    /// Takes (or renews) `sink`'s lease for `replica` until `until`: granted when nobody holds
    /// it, this replica does, or the holder's lease ran out before `now`. Creates the row on a
    /// sink's first run. `true` when this replica holds it.
    pub async fn lease_audit_sink(
        &self,
        sink: &str,
        replica: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        sqlx::query("INSERT INTO audit_sinks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(sink)
            .execute(&self.pool)
            .await
            .map_err(query_error("adding an audit sink"))?;
        let taken = sqlx::query(
            "UPDATE audit_sinks SET holder = $2, lease_until = $3 \
             WHERE name = $1 AND (holder IS NULL OR holder = $2 OR lease_until < $4)",
        )
        .bind(sink)
        .bind(replica)
        .bind(text(until))
        .bind(text(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("taking an audit sink's lease"))?;
        Ok(taken.rows_affected() == 1)
    }

    /// Gives `sink`'s lease up (at shutdown), so that another replica takes over at once.
    pub async fn release_audit_sink(&self, sink: &str, replica: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE audit_sinks SET holder = NULL, lease_until = NULL \
             WHERE name = $1 AND holder = $2",
        )
        .bind(sink)
        .bind(replica)
        .execute(&self.pool)
        .await
        .map_err(query_error("releasing an audit sink's lease"))?;
        Ok(())
    }

    /// Records that `sink` confirmed every event up to `seq`, when `replica` still holds its
    /// lease (a replica that lost it moves nothing). `false` when it no longer holds it.
    pub async fn advance_audit_sink(
        &self,
        sink: &str,
        replica: &str,
        seq: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let moved = sqlx::query(
            "UPDATE audit_sinks SET delivered_seq = $3, failures = 0, last_error = NULL, \
             last_attempt_at = $4, last_success_at = $4 \
             WHERE name = $1 AND holder = $2 AND delivered_seq < $3",
        )
        .bind(sink)
        .bind(replica)
        .bind(seq)
        .bind(text(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("moving an audit sink's cursor"))?;
        Ok(moved.rows_affected() == 1)
    }

    /// Records a failed attempt at `sink` (`error`: one sentence, no address or path).
    pub async fn audit_sink_failed(
        &self,
        sink: &str,
        replica: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE audit_sinks SET failures = failures + 1, last_error = $3, last_attempt_at = $4 \
             WHERE name = $1 AND holder = $2",
        )
        .bind(sink)
        .bind(replica)
        .bind(error)
        .bind(text(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("recording an audit sink's failure"))?;
        Ok(())
    }

    /// `sink`'s row (`None` before its first run).
    pub async fn audit_sink(&self, sink: &str) -> Result<Option<SinkCursor>, StoreError> {
        sqlx::query("SELECT * FROM audit_sinks WHERE name = $1")
            .bind(sink)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading an audit sink"))?
            .as_ref()
            .map(cursor_from_row)
            .transpose()
    }

    /// Every sink's row, by name.
    pub async fn audit_sinks(&self) -> Result<Vec<SinkCursor>, StoreError> {
        sqlx::query("SELECT * FROM audit_sinks ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("listing audit sinks"))?
            .iter()
            .map(cursor_from_row)
            .collect()
    }

    /// Up to `limit` events after `after_seq`, in chain order, each with its detail as the exact
    /// stored text.
    pub async fn audit_events_after(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(AuditRecord, String)>, StoreError> {
        self.audit_events_from(after_seq.saturating_add(1), i64::MAX, limit)
            .await
    }

    /// When the first event after `after_seq` was stamped (`None`: there is none).
    pub async fn audit_event_time_after(
        &self,
        after_seq: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT at FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT 1")
            .bind(after_seq)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading an audit sink's oldest pending event"))?;
        row.map(|r| get(&r, "at")).transpose()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        (Store::connect(&url, None).await.unwrap(), dir)
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[tokio::test]
    async fn one_replica_holds_a_sink_until_its_lease_runs_out() {
        let (s, _dir) = store().await;
        assert!(
            s.lease_audit_sink("siem", "a", at(0), at(30))
                .await
                .unwrap()
        );
        assert!(
            !s.lease_audit_sink("siem", "b", at(10), at(40))
                .await
                .unwrap()
        );
        assert!(
            s.lease_audit_sink("siem", "a", at(20), at(50))
                .await
                .unwrap()
        );
        // b cannot move the cursor while a holds it.
        assert!(!s.advance_audit_sink("siem", "b", 5, at(21)).await.unwrap());
        assert!(s.advance_audit_sink("siem", "a", 5, at(21)).await.unwrap());
        // The cursor never goes back.
        assert!(!s.advance_audit_sink("siem", "a", 3, at(22)).await.unwrap());
        // a stops renewing: b takes over after the lease.
        assert!(
            s.lease_audit_sink("siem", "b", at(51), at(81))
                .await
                .unwrap()
        );
        assert!(!s.advance_audit_sink("siem", "a", 9, at(52)).await.unwrap());
        s.release_audit_sink("siem", "b").await.unwrap();
        assert!(
            s.lease_audit_sink("siem", "c", at(53), at(83))
                .await
                .unwrap()
        );
        s.audit_sink_failed("siem", "c", "connection refused", at(54))
            .await
            .unwrap();
        let rows = s.audit_sinks().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].delivered_seq, 5);
        assert_eq!(rows[0].holder.as_deref(), Some("c"));
        assert_eq!(rows[0].failures, 1);
        assert_eq!(rows[0].last_error.as_deref(), Some("connection refused"));
        assert_eq!(rows[0].last_success_at, Some(at(21)));
    }
}
