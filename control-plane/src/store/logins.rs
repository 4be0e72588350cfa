//! SSH login events reported by agents, their attribution to keys, and usage analytics.

use chrono::{DateTime, Utc};
use keyward_common::{CertificateId, Fingerprint, HostId, KeyKind, TenantId};
use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, parse, parse_optional, query_error};
use crate::clock::json;

/// One login event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginRecord {
    pub id: i64,
    #[schema(value_type = String)]
    pub host_id: HostId,
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    /// The agent's sequence number of the event on its host.
    pub cursor: i64,
    /// The host's time of the event (the agent's word; the time received when it sent none).
    #[serde(serialize_with = "json::time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    #[serde(serialize_with = "json::time")]
    #[schema(value_type = String, format = DateTime)]
    pub received_at: DateTime<Utc>,
    /// `accepted`, `failed`, `invalid_user`, `closed_preauth` or `disconnected`.
    pub outcome: String,
    /// `publickey`, `password`, `keyboard_interactive`, `other` or `unknown`.
    pub method: String,
    pub user: String,
    pub source_ip: String,
    pub source_port: i64,
    pub key_type: Option<String>,
    /// Only a well-formed fingerprint is stored (ingest drops any other text the agent sends).
    #[schema(value_type = Option<String>)]
    pub fingerprint: Option<Fingerprint>,
    /// `admin`, `tenant` (a key keyward issued, or a certificate keyward had signed: then
    /// `keyGeneration` is `null`), `unmanaged` (a key keyward did not issue), or `null` without a
    /// key.
    pub key_kind: Option<String>,
    pub key_generation: Option<i64>,
    pub sshd_pid: Option<i64>,
    /// The agent verified the event: a journald record whose trusted fields are sshd's, or an
    /// accepted login from a log file corroborated by a live connection of the real sshd. An
    /// unverified event (any other line of a log file, which local users and unauthenticated
    /// clients can forge) is the log's claim only.
    pub verified: bool,
    /// A login by certificate: its key id as sshd logged it (`keyward:{tenant}:{kind}:{n}` for
    /// keyward's), and its serial in decimal.
    pub certificate_id: Option<String>,
    pub certificate_serial: Option<String>,
}

/// An event to store (ids and attribution are filled in by the store).
#[derive(Debug, Clone)]
pub struct NewLogin {
    pub cursor: i64,
    pub at: DateTime<Utc>,
    pub outcome: &'static str,
    pub method: &'static str,
    pub user: String,
    pub source_ip: String,
    pub source_port: i64,
    pub key_type: Option<String>,
    pub fingerprint: Option<Fingerprint>,
    pub sshd_pid: Option<i64>,
    pub verified: bool,
    /// A login by certificate: its key id (at most 256 characters) and serial.
    pub certificate: Option<(String, u64)>,
}

/// Which login events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct LoginFilter {
    pub tenant_id: Option<TenantId>,
    pub host_id: Option<HostId>,
    pub user: Option<String>,
    pub key_kind: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before_id: Option<i64>,
    pub limit: i64,
    /// Only events of VPS hosts: a bastion's logins (every tenant's jumps among them) are the
    /// platform's, never a tenant's to list.
    pub vps_only: bool,
}

/// Use of one key: what `GET /api/v1/admin/keys/usage` lists.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsage {
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    pub kind: String,
    pub generation: i64,
    #[schema(value_type = String)]
    pub fingerprint: Fingerprint,
    #[serde(serialize_with = "json::optional_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used: Option<DateTime<Utc>>,
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
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    #[schema(value_type = String)]
    pub host_id: HostId,
    pub user: String,
    #[schema(value_type = String)]
    pub fingerprint: Fingerprint,
    pub logins: i64,
    #[serde(serialize_with = "json::time")]
    #[schema(value_type = String, format = DateTime)]
    pub last_seen: DateTime<Utc>,
}

fn login_from_row(row: &AnyRow) -> Result<LoginRecord, StoreError> {
    Ok(LoginRecord {
        id: get(row, "id")?,
        host_id: parse(row, "host_id")?,
        tenant_id: parse(row, "tenant_id")?,
        cursor: get(row, "cursor")?,
        at: time(row, "at")?,
        received_at: time(row, "received_at")?,
        outcome: get(row, "outcome")?,
        method: get(row, "method")?,
        user: get(row, "unix_user")?,
        source_ip: get(row, "source_ip")?,
        source_port: get(row, "source_port")?,
        key_type: get(row, "key_type")?,
        fingerprint: parse_optional(row, "fingerprint")?,
        key_kind: get(row, "key_kind")?,
        key_generation: get(row, "key_generation")?,
        sshd_pid: get(row, "sshd_pid")?,
        verified: get::<i64>(row, "verified")? != 0,
        certificate_id: get(row, "certificate_id")?,
        certificate_serial: get(row, "certificate_serial")?,
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
        received_at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for e in events {
            // A certificate keyward recorded for this tenant (its key id and serial both) names
            // its kind; any other text is the agent's word, and the login counts by its key.
            let mut certified = e
                .certificate
                .as_ref()
                .and_then(|(id, serial)| Some((id.parse::<CertificateId>().ok()?, *serial)))
                .filter(|(id, _)| id.tenant == *tenant);
            if let Some((id, serial)) = &certified {
                let recorded = sqlx::query(
                    "SELECT 1 AS found FROM ssh_certificates \
                     WHERE tenant_id = $1 AND kind = $2 AND number = $3 AND serial = $4",
                )
                .bind(tenant.as_str())
                .bind(id.kind.as_str())
                .bind(i64::try_from(id.number).unwrap_or(-1))
                .bind(serial.to_string())
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(query_error("attributing a login"))?;
                if recorded.is_none() {
                    certified = None;
                }
            }
            let certified = certified.map(|(id, _)| id);
            let (kind, generation) = match (&certified, &e.fingerprint) {
                (Some(id), _) => (Some(id.kind.as_str().to_owned()), None),
                (None, Some(fingerprint)) => {
                    let row = sqlx::query(
                        "SELECT kind, generation FROM key_history WHERE tenant_id = $1 AND fingerprint = $2 \
                         ORDER BY generation DESC LIMIT 1",
                    )
                    .bind(tenant.as_str())
                    .bind(fingerprint.as_str())
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
                (None, None) => (None, None),
            };
            let done = sqlx::query(
                "INSERT INTO login_events (host_id, tenant_id, cursor, at, received_at, outcome, method, \
                 unix_user, source_ip, source_port, key_type, fingerprint, key_kind, key_generation, sshd_pid, \
                 verified, certificate_id, certificate_serial) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                 ON CONFLICT (host_id, cursor) DO NOTHING",
            )
            .bind(host.as_str())
            .bind(tenant.as_str())
            .bind(e.cursor)
            .bind(text(e.at))
            .bind(text(received_at))
            .bind(e.outcome)
            .bind(e.method)
            .bind(&e.user)
            .bind(&e.source_ip)
            .bind(e.source_port)
            .bind(e.key_type.clone())
            .bind(e.fingerprint.as_ref().map(|f| f.as_str().to_owned()))
            .bind(kind)
            .bind(generation)
            .bind(e.sshd_pid)
            .bind(i64::from(e.verified))
            .bind(e.certificate.as_ref().map(|(id, _)| id.clone()))
            .bind(e.certificate.as_ref().map(|(_, serial)| serial.to_string()))
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("storing a login event"))?;
            inserted += done.rows_affected();
            if done.rows_affected() == 1 && e.outcome == "accepted" && e.verified {
                self.tie_recordings_to_login(host, e).await?;
            }
        }
        Ok(inserted)
    }

    /// A session's recording can be stored before its login event arrives (the agent sends
    /// both as they come): a new accepted, verified login ties the recordings of its connection
    /// (host, user, source address and port) that have no login yet, when they started within
    /// five minutes of it (a port used again later is another connection).
    async fn tie_recordings_to_login(
        &mut self,
        host: &HostId,
        login: &NewLogin,
    ) -> Result<(), StoreError> {
        let window = chrono::Duration::minutes(5);
        sqlx::query(
            "UPDATE session_recordings SET \
             login_id = (SELECT id FROM login_events WHERE host_id = $1 AND cursor = $2), \
             fingerprint = $3, certificate_id = $4 \
             WHERE host_id = $1 AND unix_user = $5 AND source_ip = $6 AND source_port = $7 \
             AND login_id IS NULL AND started_at >= $8 AND started_at <= $9",
        )
        .bind(host.as_str())
        .bind(login.cursor)
        .bind(login.fingerprint.as_ref().map(|f| f.as_str().to_owned()))
        .bind(login.certificate.as_ref().map(|(id, _)| id.clone()))
        .bind(&login.user)
        .bind(&login.source_ip)
        .bind(login.source_port)
        .bind(text(login.at - window))
        .bind(text(login.at + window))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("tying recordings to their login"))?;
        Ok(())
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
    /// The login events `host` reported with agent cursors `first..=last` (one `host.logins`
    /// batch), in cursor order; at most `limit` (a batch holds at most the agents' batch bound).
    pub async fn logins_of_batch(
        &self,
        host: &HostId,
        first: i64,
        last: i64,
        limit: i64,
    ) -> Result<Vec<LoginRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM login_events WHERE host_id = $1 AND cursor >= $2 AND cursor <= $3 \
             ORDER BY cursor LIMIT $4",
        )
        .bind(host.as_str())
        .bind(first)
        .bind(last)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading a batch of login events"))?
        .iter()
        .map(login_from_row)
        .collect()
    }

    /// One page of login events, newest first; the next page starts below the last id.
    pub async fn logins(
        &self,
        filter: &LoginFilter,
    ) -> Result<(Vec<LoginRecord>, Option<i64>), StoreError> {
        let mut sql = String::from("SELECT * FROM login_events WHERE 1 = 1");
        let mut values: Vec<String> = Vec::new();
        let mut clause = |column: &str, op: &str, value: &Option<String>, sql: &mut String| {
            if let Some(v) = value {
                values.push(v.clone());
                sql.push_str(&format!(" AND {column} {op} ${}", values.len()));
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
        clause("at", ">=", &filter.since.map(text), &mut sql);
        clause("at", "<", &filter.until.map(text), &mut sql);
        if filter.vps_only {
            sql.push_str(" AND host_id IN (SELECT host_id FROM hosts WHERE role = 'vps')");
        }
        let mut n = values.len();
        if filter.before_id.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        let mut query = sqlx::query(&sql);
        for v in &values {
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
                let tenant_id: TenantId = parse(row, "tenant_id")?;
                let fingerprint: Fingerprint = parse(row, "fingerprint")?;
                let logins_per_day = per_day
                    .iter()
                    .filter(|(t, f, _)| t == tenant_id.as_str() && f == fingerprint.as_str())
                    .map(|(_, _, d)| d.clone())
                    .collect();
                Ok(KeyUsage {
                    kind: get(row, "kind")?,
                    generation: get(row, "generation")?,
                    last_used: optional_time(row, "last_used")?,
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
                    tenant_id: parse(row, "tenant_id")?,
                    host_id: parse(row, "host_id")?,
                    user: get(row, "unix_user")?,
                    fingerprint: parse(row, "fingerprint")?,
                    logins: get(row, "n")?,
                    last_seen: time(row, "last_seen")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_record_is_the_same_json_as_when_its_fields_were_text() {
        let at = |s: &str| crate::clock::parse_iso8601(s).unwrap();
        let record = LoginRecord {
            id: 7,
            host_id: "h1".parse().unwrap(),
            tenant_id: "t1".parse().unwrap(),
            cursor: 42,
            // Fractions of a second are not shown, as they were never stored.
            at: at("2026-11-28T10:00:01.123456789Z"),
            received_at: at("2026-11-28T11:00:02+01:00"),
            outcome: "accepted".into(),
            method: "publickey".into(),
            user: "tenant".into(),
            source_ip: "192.0.2.7".into(),
            source_port: 50022,
            key_type: Some("ssh-ed25519".into()),
            fingerprint: Some(
                "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
                    .parse()
                    .unwrap(),
            ),
            key_kind: Some("tenant".into()),
            key_generation: Some(3),
            sshd_pid: None,
            verified: true,
            certificate_id: None,
            certificate_serial: None,
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"id":7,"hostId":"h1","tenantId":"t1","cursor":42,"at":"2026-11-28T10:00:01Z","receivedAt":"2026-11-28T10:00:02Z","outcome":"accepted","method":"publickey","user":"tenant","sourceIp":"192.0.2.7","sourcePort":50022,"keyType":"ssh-ed25519","fingerprint":"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU","keyKind":"tenant","keyGeneration":3,"sshdPid":null,"verified":true,"certificateId":null,"certificateSerial":null}"#
        );
    }
}
