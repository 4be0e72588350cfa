//! SSH login events reported by agents, their attribution to keys, and usage analytics.

use chrono::{DateTime, Utc};
use keyward_common::{Fingerprint, HostId, KeyKind, TenantId};
use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Store, StoreError, WriteTx, get, parse, query_error};

/// One login event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginRecord {
    pub id: i64,
    pub host_id: String,
    pub tenant_id: String,
    /// The agent's sequence number of the event on its host.
    pub cursor: i64,
    pub at: String,
    pub received_at: String,
    /// `accepted`, `failed`, `invalid_user`, `closed_preauth` or `disconnected`.
    pub outcome: String,
    /// `publickey`, `password`, `keyboard_interactive`, `other` or `unknown`.
    pub method: String,
    pub user: String,
    pub source_ip: String,
    pub source_port: i64,
    pub key_type: Option<String>,
    pub fingerprint: Option<String>,
    /// `admin`, `tenant`, `unmanaged` (a key keyward did not issue), or `null` without a key.
    pub key_kind: Option<String>,
    pub key_generation: Option<i64>,
    pub sshd_pid: Option<i64>,
    /// The agent verified the event: a journald record whose trusted fields are sshd's, or an
    /// accepted login from a log file corroborated by a live connection of the real sshd. An
    /// unverified event (any other line of a log file, which local users and unauthenticated
    /// clients can forge) is the log's claim only.
    pub verified: bool,
}

/// An event to store (ids and attribution are filled in by the store).
#[derive(Debug, Clone)]
pub struct NewLogin {
    pub cursor: i64,
    pub at: String,
    pub outcome: &'static str,
    pub method: &'static str,
    pub user: String,
    pub source_ip: String,
    pub source_port: i64,
    pub key_type: Option<String>,
    pub fingerprint: Option<String>,
    pub sshd_pid: Option<i64>,
    pub verified: bool,
}

/// Which login events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct LoginFilter {
    pub tenant_id: Option<TenantId>,
    pub host_id: Option<HostId>,
    pub user: Option<String>,
    pub key_kind: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Use of one key: what `GET /api/v1/admin/keys/usage` lists.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsage {
    pub tenant_id: String,
    pub kind: String,
    pub generation: i64,
    pub fingerprint: String,
    pub last_used: Option<String>,
    pub logins: i64,
    pub failed_attempts: i64,
    /// Accepted logins per UTC day, oldest first.
    pub logins_per_day: Vec<DayCount>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DayCount {
    pub day: String,
    pub count: i64,
}

/// Logins with keys keyward did not issue: flagged for admins.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedUse {
    pub tenant_id: String,
    pub host_id: String,
    pub user: String,
    pub fingerprint: String,
    pub logins: i64,
    pub last_seen: String,
}

fn login_from_row(row: &AnyRow) -> Result<LoginRecord, StoreError> {
    Ok(LoginRecord {
        id: get(row, "id")?,
        host_id: get(row, "host_id")?,
        tenant_id: get(row, "tenant_id")?,
        cursor: get(row, "cursor")?,
        at: get(row, "at")?,
        received_at: get(row, "received_at")?,
        outcome: get(row, "outcome")?,
        method: get(row, "method")?,
        user: get(row, "unix_user")?,
        source_ip: get(row, "source_ip")?,
        source_port: get(row, "source_port")?,
        key_type: get(row, "key_type")?,
        fingerprint: get(row, "fingerprint")?,
        key_kind: get(row, "key_kind")?,
        key_generation: get(row, "key_generation")?,
        sshd_pid: get(row, "sshd_pid")?,
        verified: get::<i64>(row, "verified")? != 0,
    })
}

impl WriteTx {
    /// Records an issued key, so that logins with it can be attributed forever after.
    pub async fn record_key_history(
        &mut self,
        tenant: &TenantId,
        kind: KeyKind,
        generation: i64,
        fingerprint: &Fingerprint,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO key_history (tenant_id, kind, generation, fingerprint, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, kind, generation) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .bind(generation)
        .bind(fingerprint.as_str())
        .bind(super::times::text(at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording key history"))?;
        Ok(())
    }

    /// The fingerprints of every key keyward issued for (tenant, kind), newest first, at most
    /// `limit`.
    pub async fn issued_fingerprints(
        &mut self,
        tenant: &TenantId,
        kind: KeyKind,
        limit: i64,
    ) -> Result<Vec<Fingerprint>, StoreError> {
        let rows = sqlx::query(
            "SELECT fingerprint FROM key_history WHERE tenant_id = $1 AND kind = $2 \
             ORDER BY generation DESC LIMIT $3",
        )
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query_error("reading key history"))?;
        rows.iter().map(|row| parse(row, "fingerprint")).collect()
    }

    /// Stores login events of one host, attributed to the tenant's keys; an event whose
    /// (host, cursor) is already stored is skipped. Returns how many were new.
    pub async fn insert_logins(
        &mut self,
        host: &HostId,
        tenant: &TenantId,
        events: &[NewLogin],
        received_at: &str,
    ) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for e in events {
            let (kind, generation) = match &e.fingerprint {
                Some(fingerprint) => {
                    let row = sqlx::query(
                        "SELECT kind, generation FROM key_history WHERE tenant_id = $1 AND fingerprint = $2 \
                         ORDER BY generation DESC LIMIT 1",
                    )
                    .bind(tenant.as_str())
                    .bind(fingerprint)
                    .fetch_optional(&mut *self.tx)
                    .await
                    .map_err(query_error("attributing a login"))?;
                    match row {
                        Some(row) => (
                            Some(get::<String>(&row, "kind")?),
                            Some(get::<i64>(&row, "generation")?),
                        ),
                        None => (Some("unmanaged".to_owned()), None),
                    }
                }
                None => (None, None),
            };
            let done = sqlx::query(
                "INSERT INTO login_events (host_id, tenant_id, cursor, at, received_at, outcome, method, \
                 unix_user, source_ip, source_port, key_type, fingerprint, key_kind, key_generation, sshd_pid, \
                 verified) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 ON CONFLICT (host_id, cursor) DO NOTHING",
            )
            .bind(host.as_str())
            .bind(tenant.as_str())
            .bind(e.cursor)
            .bind(&e.at)
            .bind(received_at)
            .bind(e.outcome)
            .bind(e.method)
            .bind(&e.user)
            .bind(&e.source_ip)
            .bind(e.source_port)
            .bind(e.key_type.clone())
            .bind(e.fingerprint.clone())
            .bind(kind)
            .bind(generation)
            .bind(e.sshd_pid)
            .bind(i64::from(e.verified))
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("storing a login event"))?;
            inserted += done.rows_affected();
        }
        Ok(inserted)
    }

    /// Adds to the count of events the host's agent dropped from its spool.
    pub async fn add_logins_dropped(
        &mut self,
        host: &HostId,
        dropped: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET logins_dropped = logins_dropped + $1 WHERE host_id = $2")
            .bind(dropped)
            .bind(host.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("counting dropped login events"))?;
        Ok(())
    }
}

impl Store {
    /// One page of login events, newest first; the next page starts below the last id.
    pub async fn logins(
        &self,
        filter: &LoginFilter,
    ) -> Result<(Vec<LoginRecord>, Option<i64>), StoreError> {
        let mut sql = String::from("SELECT * FROM login_events WHERE 1 = 1");
        let mut text: Vec<String> = Vec::new();
        let mut clause = |column: &str, op: &str, value: &Option<String>, sql: &mut String| {
            if let Some(v) = value {
                text.push(v.clone());
                sql.push_str(&format!(" AND {column} {op} ${}", text.len()));
            }
        };
        clause(
            "tenant_id",
            "=",
            &filter.tenant_id.as_ref().map(|t| t.to_string()),
            &mut sql,
        );
        clause(
            "host_id",
            "=",
            &filter.host_id.as_ref().map(|h| h.to_string()),
            &mut sql,
        );
        clause("unix_user", "=", &filter.user, &mut sql);
        clause("key_kind", "=", &filter.key_kind, &mut sql);
        clause("outcome", "=", &filter.outcome, &mut sql);
        clause("at", ">=", &filter.since, &mut sql);
        clause("at", "<", &filter.until, &mut sql);
        let mut n = text.len();
        if filter.before_id.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        let mut query = sqlx::query(&sql);
        for v in &text {
            query = query.bind(v.clone());
        }
        if let Some(before) = filter.before_id {
            query = query.bind(before);
        }
        let limit = filter.limit.clamp(1, 1000);
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("listing login events"))?;
        let events = rows
            .iter()
            .map(login_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = (events.len() as i64 == limit)
            .then(|| events.last().map(|e| e.id))
            .flatten();
        Ok((events, next))
    }

    /// Per issued key: last use, accepted logins per day since `since_day`, failed attempts.
    pub async fn key_usage(&self, since_day: &str) -> Result<Vec<KeyUsage>, StoreError> {
        let keys = sqlx::query(
            "SELECT h.tenant_id, h.kind, h.generation, h.fingerprint, \
             (SELECT MAX(l.at) FROM login_events l WHERE l.tenant_id = h.tenant_id AND l.fingerprint = h.fingerprint AND l.outcome = 'accepted') AS last_used, \
             (SELECT COUNT(*) FROM login_events l WHERE l.tenant_id = h.tenant_id AND l.fingerprint = h.fingerprint AND l.outcome = 'accepted') AS logins, \
             (SELECT COUNT(*) FROM login_events l WHERE l.tenant_id = h.tenant_id AND l.fingerprint = h.fingerprint AND l.outcome = 'failed') AS failed \
             FROM key_history h ORDER BY h.tenant_id, h.kind, h.generation",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading key usage"))?;
        let days = sqlx::query(
            "SELECT tenant_id, fingerprint, SUBSTR(at, 1, 10) AS day, COUNT(*) AS n FROM login_events \
             WHERE outcome = 'accepted' AND fingerprint IS NOT NULL AND at >= $1 \
             GROUP BY tenant_id, fingerprint, SUBSTR(at, 1, 10) ORDER BY day",
        )
        .bind(since_day)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading logins per day"))?;
        let mut per_day: Vec<(String, String, DayCount)> = Vec::new();
        for row in &days {
            per_day.push((
                get(row, "tenant_id")?,
                get(row, "fingerprint")?,
                DayCount {
                    day: get(row, "day")?,
                    count: get(row, "n")?,
                },
            ));
        }
        keys.iter()
            .map(|row| {
                let tenant_id: String = get(row, "tenant_id")?;
                let fingerprint: String = get(row, "fingerprint")?;
                let logins_per_day = per_day
                    .iter()
                    .filter(|(t, f, _)| *t == tenant_id && *f == fingerprint)
                    .map(|(_, _, d)| d.clone())
                    .collect();
                Ok(KeyUsage {
                    kind: get(row, "kind")?,
                    generation: get(row, "generation")?,
                    last_used: get(row, "last_used")?,
                    logins: get(row, "logins")?,
                    failed_attempts: get(row, "failed")?,
                    logins_per_day,
                    tenant_id,
                    fingerprint,
                })
            })
            .collect()
    }

    /// Accepted logins with keys keyward did not issue.
    pub async fn unmanaged_logins(&self) -> Result<Vec<UnmanagedUse>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, host_id, unix_user, fingerprint, COUNT(*) AS n, MAX(at) AS last_seen \
             FROM login_events WHERE key_kind = 'unmanaged' AND outcome = 'accepted' \
             GROUP BY tenant_id, host_id, unix_user, fingerprint ORDER BY last_seen DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading unmanaged logins"))?;
        rows.iter()
            .map(|row| {
                Ok(UnmanagedUse {
                    tenant_id: get(row, "tenant_id")?,
                    host_id: get(row, "host_id")?,
                    user: get(row, "unix_user")?,
                    fingerprint: get(row, "fingerprint")?,
                    logins: get(row, "n")?,
                    last_seen: get(row, "last_seen")?,
                })
            })
            .collect()
    }
}
