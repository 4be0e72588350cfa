//! Hosts: registration, one-time enrollment, certificates, and what agents report.

use chrono::{DateTime, Utc};
use keyward_common::{HostId, TenantId};
use sqlx::any::AnyRow;

use super::bastions::HostRole;
use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, json_column, parse, query_error};

/// What an agent reports that only updates its host's row ([`Store::record_host_reports`]).
#[derive(Debug, Clone, PartialEq)]
pub enum HostReport {
    /// What an agent says when it connects.
    Hello {
        host: HostId,
        agent_version: String,
        host_keys: Vec<String>,
        /// The agent records sessions (`Hello.recording`).
        records: bool,
        at: DateTime<Utc>,
    },
    /// An agent applied a generation (never lowers the recorded one).
    Applied {
        host: HostId,
        generation: i64,
        users: serde_json::Value,
        error: Option<String>,
        at: DateTime<Utc>,
    },
    /// The host's stream ended.
    Seen { host: HostId, at: DateTime<Utc> },
    /// The control plane dropped `count` of the host's reports (over its rate).
    Dropped { host: HostId, count: i64 },
}

impl HostReport {
    pub fn host(&self) -> &HostId {
        match self {
            HostReport::Hello { host, .. }
            | HostReport::Applied { host, .. }
            | HostReport::Seen { host, .. }
            | HostReport::Dropped { host, .. } => host,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            HostReport::Hello { .. } => "recording an agent's hello",
            HostReport::Applied { .. } => "recording an applied state",
            HostReport::Seen { .. } => "recording a host's last contact",
            HostReport::Dropped { .. } => "counting a host's dropped reports",
        }
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        match self {
            HostReport::Hello {
                host,
                agent_version,
                host_keys,
                records,
                at,
            } => sqlx::query(
                "UPDATE hosts SET agent_version = $1, host_keys = $2, last_seen = $3, \
                 agent_records = $5 WHERE host_id = $4",
            )
            .bind(agent_version.as_str())
            .bind(serde_json::to_string(host_keys).unwrap_or_else(|_| "[]".into()))
            .bind(text(*at))
            .bind(host.as_str())
            .bind(i64::from(*records)),
            HostReport::Applied {
                host,
                generation,
                users,
                error,
                at,
            } => sqlx::query(
                "UPDATE hosts SET applied_generation = $1, applied_users = $2, last_error = $3, last_seen = $4 \
                 WHERE host_id = $5 AND applied_generation <= $1",
            )
            .bind(*generation)
            .bind(users.to_string())
            .bind(error.clone())
            .bind(text(*at))
            .bind(host.as_str()),
            HostReport::Seen { host, at } => {
                sqlx::query("UPDATE hosts SET last_seen = $1 WHERE host_id = $2")
                    .bind(text(*at))
                    .bind(host.as_str())
            }
            HostReport::Dropped { host, count } => sqlx::query(
                "UPDATE hosts SET reports_dropped = reports_dropped + $1 WHERE host_id = $2",
            )
            .bind(*count)
            .bind(host.as_str()),
        }
    }
}

/// One host (a VPS running keyward-agent) as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub host_id: HostId,
    pub tenant_id: TenantId,
    pub role: HostRole,
    pub created_at: DateTime<Utc>,
    pub enroll_expires_at: Option<DateTime<Utc>>,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub desired_generation: i64,
    pub applied_generation: i64,
    pub last_seen: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    /// The agent's last per-user results, as it reported them.
    pub applied_users: serde_json::Value,
    pub host_keys: Vec<String>,
    pub last_error: Option<String>,
    /// Login events the agent had to drop from its full spool.
    pub logins_dropped: i64,
    /// Drift reports and login events of the host that the control plane dropped because they
    /// were over the host's rate.
    pub reports_dropped: i64,
    /// The agent said in its last hello that it records sessions.
    pub agent_records: bool,
}

/// An outside edit of a managed file that an agent found and repaired.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftRecord {
    pub user: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// The agent's word, bounded but not parsed: a rooted host can say anything here, and the
    /// API shows it as it was said. Hence text, unlike `receivedAt`.
    pub detected_at: String,
    #[serde(serialize_with = "crate::clock::json::time")]
    #[schema(value_type = String, format = DateTime)]
    pub received_at: DateTime<Utc>,
}

/// Host ids in one `IN (…)` list, at most (SQLite allows 32,766 parameters, PostgreSQL 65,535).
pub(super) const IDS_PER_QUERY: usize = 500;

/// `$1, $2, …, $n` (both backends number their parameters so through `sqlx::Any`).
pub(super) fn placeholders(n: usize) -> String {
    placeholders_from(1, n)
}

/// `$first, …`: `n` parameters after `first - 1` others.
pub(super) fn placeholders_from(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn host_from_row(row: &AnyRow) -> Result<HostRecord, StoreError> {
    Ok(HostRecord {
        host_id: parse(row, "host_id")?,
        tenant_id: parse(row, "tenant_id")?,
        role: parse(row, "role")?,
        created_at: time(row, "created_at")?,
        enroll_expires_at: optional_time(row, "enroll_expires_at")?,
        enrolled_at: optional_time(row, "enrolled_at")?,
        cert_serial: get(row, "cert_serial")?,
        cert_not_after: optional_time(row, "cert_not_after")?,
        revoked_at: optional_time(row, "revoked_at")?,
        desired_generation: get(row, "desired_generation")?,
        applied_generation: get(row, "applied_generation")?,
        last_seen: optional_time(row, "last_seen")?,
        agent_version: get(row, "agent_version")?,
        applied_users: json_column(row, "applied_users")?,
        host_keys: json_column(row, "host_keys")?,
        last_error: get(row, "last_error")?,
        logins_dropped: get(row, "logins_dropped")?,
        reports_dropped: get(row, "reports_dropped")?,
        agent_records: get::<i64>(row, "agent_records")? != 0,
    })
}

impl WriteTx {
    /// Registers a host with a one-time enrollment token (stored as its hash).
    pub async fn insert_host(
        &mut self,
        host: &HostId,
        tenant: &TenantId,
        role: HostRole,
        created_at: DateTime<Utc>,
        enroll_token_hash: &str,
        enroll_expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hosts (host_id, tenant_id, role, created_at, enroll_token_hash, enroll_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(host.as_str())
        .bind(tenant.as_str())
        .bind(role.as_str())
        .bind(text(created_at))
        .bind(enroll_token_hash)
        .bind(text(enroll_expires_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("host"))?;
        Ok(())
    }

    /// Uses an enrollment token: only once, only before it expires, only for a live host.
    /// The token hash is cleared, so a used token can never match again.
    pub async fn enroll_host(
        &mut self,
        host: &HostId,
        token_hash: &str,
        now: DateTime<Utc>,
        cert_serial: &str,
        cert_not_after: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE hosts SET enroll_token_hash = NULL, enrolled_at = $1, cert_serial = $2, \
             cert_not_after = $3 WHERE host_id = $4 AND enroll_token_hash = $5 \
             AND enrolled_at IS NULL AND revoked_at IS NULL AND enroll_expires_at > $1",
        )
        .bind(text(now))
        .bind(cert_serial)
        .bind(text(cert_not_after))
        .bind(host.as_str())
        .bind(token_hash)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("enrolling a host"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a renewed certificate; the previous one stops being accepted.
    pub async fn set_host_certificate(
        &mut self,
        host: &HostId,
        cert_serial: &str,
        cert_not_after: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET cert_serial = $1, cert_not_after = $2 WHERE host_id = $3 AND revoked_at IS NULL",
        )
        .bind(cert_serial)
        .bind(text(cert_not_after))
        .bind(host.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("renewing a host certificate"))?;
        Ok(())
    }

    /// Revokes a host; returns false when it was unknown or already revoked.
    pub async fn revoke_host(
        &mut self,
        host: &HostId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE hosts SET revoked_at = $1, enroll_token_hash = NULL WHERE host_id = $2 AND revoked_at IS NULL",
        )
        .bind(text(at))
        .bind(host.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("revoking a host"))?;
        Ok(done.rows_affected() == 1)
    }

    /// A change to what every host trusts (the SSH CA's keys): every live host gets a new
    /// generation.
    pub async fn bump_all_hosts(&mut self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE hosts SET desired_generation = desired_generation + 1 WHERE revoked_at IS NULL",
        )
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("raising host generations"))?;
        Ok(done.rows_affected())
    }

    /// Sets a deployment setting; false when it already had that value.
    pub async fn set_deployment_setting(
        &mut self,
        name: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO deployment_settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value \
             WHERE deployment_settings.value <> excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a deployment setting"))?;
        Ok(done.rows_affected() == 1)
    }

    /// A change to the tenant's keys: every live host of the tenant gets a new generation.
    pub async fn bump_tenant_hosts(&mut self, tenant: &TenantId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET desired_generation = desired_generation + 1 \
             WHERE tenant_id = $1 AND revoked_at IS NULL",
        )
        .bind(tenant.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("raising host generations"))?;
        Ok(())
    }
}

impl Store {
    /// A deployment setting's value.
    pub async fn deployment_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM deployment_settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a deployment setting"))?;
        row.map(|row| get(&row, "value")).transpose()
    }

    pub async fn host(&self, host: &HostId) -> Result<Option<HostRecord>, StoreError> {
        sqlx::query("SELECT * FROM hosts WHERE host_id = $1")
            .bind(host.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a host"))?
            .map(|row| host_from_row(&row))
            .transpose()
    }

    /// The host a still-usable enrollment token belongs to.
    pub async fn pending_host_by_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<HostRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM hosts WHERE enroll_token_hash = $1 AND enrolled_at IS NULL \
             AND revoked_at IS NULL AND enroll_expires_at > $2",
        )
        .bind(token_hash)
        .bind(text(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("finding an enrollment"))?
        .map(|row| host_from_row(&row))
        .transpose()
    }

    pub async fn hosts(&self, tenant: Option<&TenantId>) -> Result<Vec<HostRecord>, StoreError> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query("SELECT * FROM hosts WHERE tenant_id = $1 ORDER BY host_id")
                    .bind(t.as_str())
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT * FROM hosts ORDER BY host_id")
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(query_error("listing hosts"))?;
        rows.iter().map(host_from_row).collect()
    }

    /// The hosts of `ids` that exist, sorted by host id: one query per [`IDS_PER_QUERY`] ids.
    pub async fn hosts_by_ids(&self, ids: &[HostId]) -> Result<Vec<HostRecord>, StoreError> {
        let mut hosts = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let sql = format!(
                "SELECT * FROM hosts WHERE host_id IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("reading hosts by id"))?;
            for row in &rows {
                hosts.push(host_from_row(row)?);
            }
        }
        hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        Ok(hosts)
    }

    /// What an agent says when it connects.
    pub async fn record_hello(
        &self,
        host: &HostId,
        agent_version: &str,
        host_keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.record_host_reports(&[HostReport::Hello {
            host: host.clone(),
            agent_version: agent_version.to_owned(),
            host_keys: host_keys.to_vec(),
            records: false,
            at: now,
        }])
        .await
    }

    /// An agent applied a generation (never lowers the recorded one).
    pub async fn record_applied(
        &self,
        host: &HostId,
        generation: i64,
        users: &serde_json::Value,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.record_host_reports(&[HostReport::Applied {
            host: host.clone(),
            generation,
            users: users.clone(),
            error: error.map(str::to_owned),
            at: now,
        }])
        .await
    }

    /// Records agents' reports in order, in one transaction: one commit (on SQLite, one sync
    /// of the log) for a whole batch, where a statement each would cost one each.
    pub async fn record_host_reports(&self, reports: &[HostReport]) -> Result<(), StoreError> {
        if let [report] = reports {
            report
                .query()
                .execute(&self.pool)
                .await
                .map_err(query_error(report.what()))?;
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        for report in reports {
            report
                .query()
                .execute(&mut *tx)
                .await
                .map_err(query_error(report.what()))?;
        }
        tx.commit()
            .await
            .map_err(query_error("recording agents' reports"))?;
        Ok(())
    }

    /// Enrolled hosts that are not revoked and have an error or a warning (`degraded`).
    pub async fn degraded_host_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM hosts WHERE revoked_at IS NULL AND enrolled_at IS NOT NULL \
             AND last_error IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("counting degraded hosts"))?;
        get(&row, "n")
    }

    /// An agent that applied generation `applied` of a live host whose desired generation is
    /// older (the database was restored from a backup older than what the host applied): the
    /// desired generation becomes `applied + 1`, so that the agent, which refuses a state older
    /// than the one it applied, takes the database's state as a new one. Not when `applied` is
    /// `max_jump` or more beyond the desired generation: an agent cannot push its host's
    /// generation towards the end of the range, where every later raise would fail. True when
    /// raised.
    pub async fn raise_generation_past(
        &self,
        host: &HostId,
        applied: i64,
        max_jump: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE hosts SET desired_generation = $1 + 1 \
             WHERE host_id = $2 AND revoked_at IS NULL \
             AND desired_generation < $1 AND $1 - desired_generation < $3",
        )
        .bind(applied)
        .bind(host.as_str())
        .bind(max_jump)
        .execute(&self.pool)
        .await
        .map_err(query_error("raising a host's generation past its agent's"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn record_host_error(
        &self,
        host: &HostId,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET last_error = $1, last_seen = $2 WHERE host_id = $3")
            .bind(error)
            .bind(text(now))
            .bind(host.as_str())
            .execute(&self.pool)
            .await
            .map_err(query_error("recording a host error"))?;
        Ok(())
    }

    pub async fn record_seen(&self, host: &HostId, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.record_host_reports(&[HostReport::Seen {
            host: host.clone(),
            at: now,
        }])
        .await
    }

    pub async fn insert_drift(&self, host: &HostId, drift: &DriftRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO drift_events (host_id, unix_user, added, removed, detected_at, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(host.as_str())
        .bind(&drift.user)
        .bind(serde_json::to_string(&drift.added).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&drift.removed).unwrap_or_else(|_| "[]".into()))
        .bind(&drift.detected_at)
        .bind(text(drift.received_at))
        .execute(&self.pool)
        .await
        .map_err(query_error("recording drift"))?;
        Ok(())
    }

    /// The latest drift events of a host, newest first.
    pub async fn drift_events(
        &self,
        host: &HostId,
        limit: i64,
    ) -> Result<Vec<DriftRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM drift_events WHERE host_id = $1 ORDER BY id DESC LIMIT $2")
                .bind(host.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("listing drift events"))?;
        rows.iter()
            .map(|row| {
                Ok(DriftRecord {
                    user: get(row, "unix_user")?,
                    added: json_column(row, "added")?,
                    removed: json_column(row, "removed")?,
                    detected_at: get(row, "detected_at")?,
                    received_at: time(row, "received_at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TenantRecord;

    #[tokio::test]
    async fn hosts_by_ids_read_what_the_whole_table_holds_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url, None).await.unwrap();
        let tenant: TenantId = "t1".parse().unwrap();
        let mut tx = store.begin().await.unwrap();
        let at = |s: &str| crate::clock::parse_iso8601(s).unwrap();
        tx.insert_tenant(&TenantRecord {
            tenant_id: tenant.clone(),
            vps_ip: "192.0.2.1".into(),
            ssh_port: 22,
            tenant_user: "tenant".parse().unwrap(),
            admin_user: "kwadmin".parse().unwrap(),
            created_at: at("2026-01-01T00:00:00Z"),
        })
        .await
        .unwrap();
        // More hosts than one query takes, to cross a chunk.
        let ids: Vec<HostId> = (0..IDS_PER_QUERY + 20)
            .map(|i| format!("h{i:04}").parse().unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            tx.insert_host(
                id,
                &tenant,
                HostRole::Vps,
                at("2026-01-01T00:00:00Z"),
                &format!("hash{i}"),
                at("2026-01-02T00:00:00Z"),
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let drift = DriftRecord {
            user: "tenant".into(),
            added: vec![],
            removed: vec![],
            detected_at: "2026-01-01T00:00:03Z".into(),
            received_at: at("2026-01-01T00:00:04Z"),
        };
        store.insert_drift(&ids[7], &drift).await.unwrap();
        store
            .insert_drift(&ids[IDS_PER_QUERY + 3], &drift)
            .await
            .unwrap();

        let all = store.hosts(None).await.unwrap();
        let activity = store.host_activity().await.unwrap();
        // Some ids in both chunks, one twice, one that is no host, out of order.
        let mut wanted: Vec<HostId> = vec![
            ids[IDS_PER_QUERY + 3].clone(),
            ids[7].clone(),
            ids[8].clone(),
            "nope".parse().unwrap(),
        ];
        wanted.extend(ids[..IDS_PER_QUERY].iter().step_by(50).cloned());
        let got = store.hosts_by_ids(&wanted).await.unwrap();
        let mut expected: Vec<HostRecord> = all
            .iter()
            .filter(|h| wanted.contains(&h.host_id))
            .cloned()
            .collect();
        expected.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        let mut got_unique = got.clone();
        got_unique.dedup_by(|a, b| a.host_id == b.host_id);
        assert_eq!(got_unique, expected);
        let got_activity = store.host_activity_of(&wanted).await.unwrap();
        assert_eq!(got_activity.len(), 2);
        for (id, a) in &got_activity {
            assert_eq!(Some(a), activity.get(id));
        }
        assert!(store.hosts_by_ids(&[]).await.unwrap().is_empty());
        assert!(store.host_activity_of(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_generation_is_raised_only_past_an_agent_ahead_of_it_and_by_a_bounded_jump() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url, None).await.unwrap();
        let tenant: TenantId = "t1".parse().unwrap();
        let at = |s: &str| crate::clock::parse_iso8601(s).unwrap();
        let (host, revoked): (HostId, HostId) = ("h1".parse().unwrap(), "h2".parse().unwrap());
        let mut tx = store.begin().await.unwrap();
        tx.insert_tenant(&TenantRecord {
            tenant_id: tenant.clone(),
            vps_ip: "192.0.2.1".into(),
            ssh_port: 22,
            tenant_user: "tenant".parse().unwrap(),
            admin_user: "kwadmin".parse().unwrap(),
            created_at: at("2026-01-01T00:00:00Z"),
        })
        .await
        .unwrap();
        for (id, hash) in [(&host, "hash1"), (&revoked, "hash2")] {
            let (made, expires) = (at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"));
            tx.insert_host(id, &tenant, HostRole::Vps, made, hash, expires)
                .await
                .unwrap();
        }
        tx.revoke_host(&revoked, at("2026-01-01T00:00:01Z"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let desired = async |id: &HostId| store.host(id).await.unwrap().unwrap().desired_generation;
        assert_eq!(desired(&host).await, 1);

        // An agent at the desired generation, or behind it, changes nothing.
        assert!(!store.raise_generation_past(&host, 1, 10).await.unwrap());
        assert!(!store.raise_generation_past(&host, 0, 10).await.unwrap());
        assert_eq!(desired(&host).await, 1);
        // One ahead of it (a restored database): past the agent's.
        assert!(store.raise_generation_past(&host, 5, 10).await.unwrap());
        assert_eq!(desired(&host).await, 6);
        // Not by the bound or more, nor for a revoked host.
        assert!(!store.raise_generation_past(&host, 16, 10).await.unwrap());
        assert!(
            !store
                .raise_generation_past(&host, i64::MAX, 10)
                .await
                .unwrap()
        );
        assert_eq!(desired(&host).await, 6);
        assert!(store.raise_generation_past(&host, 15, 10).await.unwrap());
        assert_eq!(desired(&host).await, 16);
        assert!(!store.raise_generation_past(&revoked, 5, 10).await.unwrap());
        assert_eq!(desired(&revoked).await, 1);
    }
}
