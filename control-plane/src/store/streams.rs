//! Which replica holds each host's agent stream (`host_streams`), and which replicas are alive
//! (`replicas`, raised by each replica's heartbeat), so that every replica sharing a PostgreSQL
//! database answers the same `connected` for every host.
//!
//! A stream row counts only while its replica is alive: its `seen_at` is after the reader's
//! `alive_after` (three heartbeats ago). A replica that dies without a word (killed, frozen, cut
//! off) thus stops counting as holding its hosts within three heartbeats; its rows are swept once
//! it has been dead for long ([`Store::sweep_dead_replicas`]). Only PostgreSQL replicas write
//! here; on SQLite the tables stay empty and the joins find nothing.

use chrono::{DateTime, Utc};
use keyward_common::HostId;
use sqlx::any::AnyRow;

use super::hosts::{IDS_PER_QUERY, host_from_row, placeholders_from};
use super::times::text;
use super::{HostRecord, Store, StoreError, WriteTx, get, parse, query_error};

/// Every host, with whether a live replica holds its stream: one query, whatever the number of
/// hosts (`$1` is the `alive_after` time).
const HOSTS_WITH_STREAMS: &str = "SELECT h.*, r.replica_id AS streamed_by FROM hosts h \
     LEFT JOIN host_streams s ON s.host_id = h.host_id \
     LEFT JOIN replicas r ON r.replica_id = s.replica_id AND r.seen_at > $1";

/// A host's record, and whether a live replica holds its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedHost {
    pub record: HostRecord,
    /// The live replica that holds the host's stream, per `host_streams`.
    pub streamed_by: Option<String>,
}

fn streamed_host_from_row(row: &AnyRow) -> Result<StreamedHost, StoreError> {
    Ok(StreamedHost {
        record: host_from_row(row)?,
        streamed_by: get(row, "streamed_by")?,
    })
}

impl Store {
    /// Every host, by host id, with the live replica that holds its stream. Sorted here, not in
    /// SQL: PostgreSQL would sort the joined rows (10,000 hosts: 1 ms for the hosts alone by
    /// their index, 14 ms joined and sorted, 5 ms joined).
    pub async fn hosts_with_streams(
        &self,
        alive_after: DateTime<Utc>,
    ) -> Result<Vec<StreamedHost>, StoreError> {
        let rows = sqlx::query(HOSTS_WITH_STREAMS)
            .bind(text(alive_after))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("listing hosts with their streams"))?;
        let mut hosts = rows
            .iter()
            .map(streamed_host_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        sort_by_host(&mut hosts);
        Ok(hosts)
    }

    /// The hosts of `ids` that exist, by host id, with the live replica that holds each stream:
    /// one query per [`IDS_PER_QUERY`] ids.
    pub async fn hosts_with_streams_of(
        &self,
        ids: &[HostId],
        alive_after: DateTime<Utc>,
    ) -> Result<Vec<StreamedHost>, StoreError> {
        let mut hosts = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            // `$1` is the time; the ids follow it.
            let sql = format!(
                "{HOSTS_WITH_STREAMS} WHERE h.host_id IN ({})",
                placeholders_from(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(text(alive_after));
            for id in chunk {
                query = query.bind(id.as_str());
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("reading hosts with their streams"))?;
            for row in &rows {
                hosts.push(streamed_host_from_row(row)?);
            }
        }
        sort_by_host(&mut hosts);
        Ok(hosts)
    }

    /// One host, with the live replica that holds its stream.
    pub async fn host_with_stream(
        &self,
        host: &HostId,
        alive_after: DateTime<Utc>,
    ) -> Result<Option<StreamedHost>, StoreError> {
        let sql = format!("{HOSTS_WITH_STREAMS} WHERE h.host_id = $2");
        sqlx::query(&sql)
            .bind(text(alive_after))
            .bind(host.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a host with its stream"))?
            .map(|row| streamed_host_from_row(&row))
            .transpose()
    }

    /// This replica is alive at `now`. Returns false when its row was missing (its first
    /// heartbeat, or it was swept as dead while it was frozen): its stream rows may be gone too.
    pub async fn replica_heartbeat(
        &self,
        replica: &str,
        started_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query("UPDATE replicas SET seen_at = $1 WHERE replica_id = $2")
            .bind(text(now))
            .bind(replica)
            .execute(&self.pool)
            .await
            .map_err(query_error("raising a replica's heartbeat"))?;
        if updated.rows_affected() > 0 {
            return Ok(true);
        }
        sqlx::query(
            "INSERT INTO replicas (replica_id, started_at, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (replica_id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(replica)
        .bind(text(started_at))
        .bind(text(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("recording a replica"))?;
        Ok(false)
    }

    /// The replicas alive after `alive_after`, sorted.
    pub async fn live_replicas(
        &self,
        alive_after: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT replica_id FROM replicas WHERE seen_at > $1 ORDER BY replica_id")
                .bind(text(alive_after))
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("listing live replicas"))?;
        rows.iter().map(|row| get(row, "replica_id")).collect()
    }

    /// `replica` holds the streams of `opened` since `since`, and no longer those of `closed`
    /// (a row another replica took over is left alone). Hosts that do not exist are skipped.
    pub async fn record_streams(
        &self,
        replica: &str,
        opened: &[HostId],
        closed: &[HostId],
        since: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // Stream rows are bookkeeping, outside the audit log.
        let mut tx = self.begin_unaudited().await?;
        tx.write_streams(replica, opened, closed, since).await?;
        tx.commit().await
    }

    /// Replaces every stream row of `replica` with `hosts`, in one transaction (after rows may
    /// have been lost or missed); returns the hosts whose rows it deleted, for live views.
    pub async fn replace_streams(
        &self,
        replica: &str,
        hosts: &[HostId],
        since: DateTime<Utc>,
    ) -> Result<Vec<HostId>, StoreError> {
        let mut tx = self.begin_unaudited().await?;
        let rows = sqlx::query("DELETE FROM host_streams WHERE replica_id = $1 RETURNING host_id")
            .bind(replica)
            .fetch_all(&mut *tx.tx)
            .await
            .map_err(query_error("clearing a replica's streams"))?;
        let deleted = rows
            .iter()
            .map(|row| parse(row, "host_id"))
            .collect::<Result<Vec<HostId>, _>>()?;
        tx.write_streams(replica, hosts, &[], since).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// How many stream rows `replica` holds.
    pub async fn count_streams(&self, replica: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM host_streams WHERE replica_id = $1")
            .bind(replica)
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("counting a replica's streams"))?;
        get(&row, "n")
    }

    /// A replica that stops cleanly: its streams and its own row are forgotten at once.
    pub async fn forget_replica(&self, replica: &str) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM host_streams WHERE replica_id = $1",
            "DELETE FROM replicas WHERE replica_id = $1",
        ] {
            sqlx::query(sql)
                .bind(replica)
                .execute(&self.pool)
                .await
                .map_err(query_error("forgetting a replica"))?;
        }
        Ok(())
    }

    /// Forgets replicas not seen since `dead_before`, and every stream row not held by a replica
    /// seen since; returns how many stream rows went.
    pub async fn sweep_dead_replicas(&self, dead_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let swept = sqlx::query(
            "DELETE FROM host_streams WHERE replica_id NOT IN \
             (SELECT replica_id FROM replicas WHERE seen_at >= $1)",
        )
        .bind(text(dead_before))
        .execute(&self.pool)
        .await
        .map_err(query_error("sweeping dead replicas' streams"))?;
        sqlx::query("DELETE FROM replicas WHERE seen_at < $1")
            .bind(text(dead_before))
            .execute(&self.pool)
            .await
            .map_err(query_error("sweeping dead replicas"))?;
        Ok(swept.rows_affected())
    }
}

fn sort_by_host(hosts: &mut [StreamedHost]) {
    hosts.sort_unstable_by(|a, b| a.record.host_id.cmp(&b.record.host_id));
}

impl WriteTx {
    /// Upserts the rows of `opened` and deletes `replica`'s rows of `closed`.
    async fn write_streams(
        &mut self,
        replica: &str,
        opened: &[HostId],
        closed: &[HostId],
        since: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for chunk in opened.chunks(IDS_PER_QUERY) {
            let sql = format!(
                "INSERT INTO host_streams (host_id, replica_id, since) \
             SELECT host_id, $1, $2 FROM hosts WHERE host_id IN ({}) \
             ON CONFLICT (host_id) DO UPDATE SET replica_id = excluded.replica_id, \
             since = excluded.since",
                placeholders_from(3, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(replica).bind(text(since));
            for id in chunk {
                query = query.bind(id.as_str());
            }
            query
                .execute(&mut *self.tx)
                .await
                .map_err(query_error("recording agents' streams"))?;
        }
        for chunk in closed.chunks(IDS_PER_QUERY) {
            let sql = format!(
                "DELETE FROM host_streams WHERE replica_id = $1 AND host_id IN ({})",
                placeholders_from(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(replica);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            query
                .execute(&mut *self.tx)
                .await
                .map_err(query_error("forgetting agents' streams"))?;
        }
        Ok(())
    }
}
