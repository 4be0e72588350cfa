//! SSH session recordings' metadata (`session_recordings`) and the tenants' recording policies
//! (`recording_policies`). The bytes are in the object store (`crate::recordings`).

use chrono::{DateTime, Utc};
use keyward_common::{HostId, TenantId};
use serde::Serialize;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, parse, query_error};
use crate::clock::json;

/// One recording as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingRecord {
    /// The control plane's id of the recording (`rec_` and 32 hex digits).
    pub id: String,
    #[schema(value_type = String)]
    pub host_id: HostId,
    /// The agent's id of the recording on its host.
    pub recording_id: String,
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    pub user: String,
    /// Which managed user of the host it is: `admin` or `tenant`.
    pub user_kind: String,
    pub source_ip: String,
    pub source_port: i64,
    /// The host's time of the session's start (the recorder's first message).
    #[serde(serialize_with = "json::time")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "json::optional_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<DateTime<Utc>>,
    /// When its first chunk arrived.
    #[serde(serialize_with = "json::time")]
    #[schema(value_type = String, format = DateTime)]
    pub received_at: DateTime<Utc>,
    /// Chunks stored so far.
    pub chunks: i64,
    /// Bytes kept (tlog's JSON).
    pub size_bytes: i64,
    /// Bytes lost: the agent's spool was full, or the recording passed `[recordings] max_bytes`.
    pub dropped_bytes: i64,
    /// Keystrokes are in the recording.
    pub input_recorded: bool,
    /// The recording passed `[recordings] max_bytes`: what came after was not kept.
    pub truncated: bool,
    /// `open` (more chunks are to come) or `complete`.
    pub state: String,
    /// SHA-256 (hex) of the kept bytes in order, set when the recording completes; the audit
    /// event `session.recording.completed` carries it too.
    pub sha256: Option<String>,
    /// The login event of the same connection (host, user, source address and port: the newest
    /// accepted and verified one before the start), and the key or certificate that opened it.
    pub login_id: Option<i64>,
    pub fingerprint: Option<String>,
    pub certificate_id: Option<String>,
}

/// A recording's first chunk, as the ingest checked it.
#[derive(Debug, Clone)]
pub struct NewRecording {
    pub id: String,
    pub host_id: HostId,
    pub recording_id: String,
    pub tenant_id: TenantId,
    pub user: String,
    pub user_kind: &'static str,
    pub source_ip: String,
    pub source_port: i64,
    pub started_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub input_recorded: bool,
}

/// What one stored chunk adds to its recording.
#[derive(Debug, Clone, Copy)]
pub struct ChunkTally {
    pub seq: i64,
    pub kept_bytes: i64,
    pub dropped_bytes: i64,
    pub truncated: bool,
}

/// How a recording completed.
#[derive(Debug, Clone)]
pub struct Completion {
    pub ended_at: DateTime<Utc>,
    pub sha256: String,
}

/// Which recordings to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RecordingFilter {
    pub tenant_id: Option<TenantId>,
    pub host_id: Option<HostId>,
    pub user: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The id of the last recording of the previous page.
    pub after_id: Option<String>,
    pub limit: i64,
}

/// A tenant's recording policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingPolicy {
    /// Sessions of the platform's admin user are recorded.
    pub record_admin: bool,
    /// Sessions of the tenant's own user are recorded.
    pub record_tenant: bool,
    /// Keystrokes are recorded too (passwords typed at a prompt among them).
    pub record_input: bool,
}

impl Default for RecordingPolicy {
    fn default() -> Self {
        Self {
            record_admin: true,
            record_tenant: false,
            record_input: false,
        }
    }
}

const COLUMNS: &str = "id, host_id, recording_id, tenant_id, unix_user, user_kind, source_ip, \
     source_port, started_at, ended_at, received_at, next_seq, size_bytes, dropped_bytes, \
     input_recorded, truncated, state, sha256, login_id, fingerprint, certificate_id";

fn from_row(row: &AnyRow) -> Result<RecordingRecord, StoreError> {
    Ok(RecordingRecord {
        id: get(row, "id")?,
        host_id: parse(row, "host_id")?,
        recording_id: get(row, "recording_id")?,
        tenant_id: parse(row, "tenant_id")?,
        user: get(row, "unix_user")?,
        user_kind: get(row, "user_kind")?,
        source_ip: get(row, "source_ip")?,
        source_port: get(row, "source_port")?,
        started_at: time(row, "started_at")?,
        ended_at: optional_time(row, "ended_at")?,
        received_at: time(row, "received_at")?,
        chunks: get(row, "next_seq")?,
        size_bytes: get(row, "size_bytes")?,
        dropped_bytes: get(row, "dropped_bytes")?,
        input_recorded: get::<i64>(row, "input_recorded")? != 0,
        truncated: get::<i64>(row, "truncated")? != 0,
        state: get(row, "state")?,
        sha256: get(row, "sha256")?,
        login_id: get(row, "login_id")?,
        fingerprint: get(row, "fingerprint")?,
        certificate_id: get(row, "certificate_id")?,
    })
}

impl Store {
    /// The recording the agent of `host` calls `recording_id`.
    pub async fn recording_of_agent(
        &self,
        host: &HostId,
        recording_id: &str,
    ) -> Result<Option<RecordingRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM session_recordings WHERE host_id = $1 AND recording_id = $2"
        ))
        .bind(host.as_str())
        .bind(recording_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a recording"))?
        .map(|row| from_row(&row))
        .transpose()
    }

    /// One recording by its id.
    pub async fn recording(&self, id: &str) -> Result<Option<RecordingRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM session_recordings WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a recording"))?
        .map(|row| from_row(&row))
        .transpose()
    }

    /// The host's recordings still open.
    pub async fn open_recordings(&self, host: &HostId) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM session_recordings WHERE host_id = $1 AND state = 'open'",
        )
        .bind(host.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("counting open recordings"))?;
        get(&row, "n")
    }

    /// Starts a recording (its first chunk arrived).
    pub async fn insert_recording(&self, r: &NewRecording) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO session_recordings (id, host_id, recording_id, tenant_id, unix_user, \
             user_kind, source_ip, source_port, started_at, received_at, input_recorded, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'open')",
        )
        .bind(r.id.as_str())
        .bind(r.host_id.as_str())
        .bind(r.recording_id.as_str())
        .bind(r.tenant_id.as_str())
        .bind(r.user.as_str())
        .bind(r.user_kind)
        .bind(r.source_ip.as_str())
        .bind(r.source_port)
        .bind(text(r.started_at))
        .bind(text(r.received_at))
        .bind(i64::from(r.input_recorded))
        .execute(&self.pool)
        .await
        .map_err(query_error("starting a recording"))?;
        Ok(())
    }

    /// Adds a stored chunk to its recording, only when it is the next one; false when another
    /// writer took it first.
    pub async fn advance_recording(&self, id: &str, chunk: ChunkTally) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE session_recordings SET next_seq = next_seq + 1, \
             size_bytes = size_bytes + $1, dropped_bytes = dropped_bytes + $2, \
             truncated = CASE WHEN $3 = 1 THEN 1 ELSE truncated END \
             WHERE id = $4 AND next_seq = $5 AND state = 'open'",
        )
        .bind(chunk.kept_bytes)
        .bind(chunk.dropped_bytes)
        .bind(i64::from(chunk.truncated))
        .bind(id)
        .bind(chunk.seq)
        .execute(&self.pool)
        .await
        .map_err(query_error("adding a chunk to a recording"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The login event a session belongs to: on `host`, by `user` from `ip`:`port`, accepted
    /// and verified, the newest at or before `before`. Returns its id, fingerprint and
    /// certificate id.
    pub async fn login_of_session(
        &self,
        host: &HostId,
        user: &str,
        ip: &str,
        port: i64,
        before: DateTime<Utc>,
    ) -> Result<Option<(i64, Option<String>, Option<String>)>, StoreError> {
        let row = sqlx::query(
            "SELECT id, fingerprint, certificate_id FROM login_events \
             WHERE host_id = $1 AND unix_user = $2 AND source_ip = $3 AND source_port = $4 \
             AND outcome = 'accepted' AND verified = 1 AND at <= $5 \
             ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(host.as_str())
        .bind(user)
        .bind(ip)
        .bind(port)
        .bind(text(before))
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("finding a session's login"))?;
        row.map(|row| {
            Ok((
                get(&row, "id")?,
                get(&row, "fingerprint")?,
                get(&row, "certificate_id")?,
            ))
        })
        .transpose()
    }

    /// Ties a recording to its login event (when it was not yet).
    pub async fn attach_login(
        &self,
        id: &str,
        login: &(i64, Option<String>, Option<String>),
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE session_recordings SET login_id = $1, fingerprint = $2, certificate_id = $3 \
             WHERE id = $4 AND login_id IS NULL",
        )
        .bind(login.0)
        .bind(login.1.clone())
        .bind(login.2.clone())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("tying a recording to its login"))?;
        Ok(())
    }

    /// Recordings, newest first, and the cursor of the next page.
    pub async fn recordings(
        &self,
        f: &RecordingFilter,
    ) -> Result<(Vec<RecordingRecord>, Option<String>), StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM session_recordings WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let mut push = |sql: &mut String, clause: &str, value: String| {
            binds.push(value);
            sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(t) = &f.tenant_id {
            push(&mut sql, " AND tenant_id = ?", t.to_string());
        }
        if let Some(h) = &f.host_id {
            push(&mut sql, " AND host_id = ?", h.to_string());
        }
        if let Some(u) = &f.user {
            push(&mut sql, " AND unix_user = ?", u.clone());
        }
        if let Some(s) = f.since {
            push(&mut sql, " AND started_at >= ?", text(s));
        }
        if let Some(u) = f.until {
            push(&mut sql, " AND started_at < ?", text(u));
        }
        if let Some(after) = &f.after_id {
            binds.push(after.clone());
            let n = binds.len();
            sql.push_str(&format!(
                " AND (started_at < (SELECT started_at FROM session_recordings WHERE id = ${n}) \
                 OR (started_at = (SELECT started_at FROM session_recordings WHERE id = ${n}) \
                 AND id < ${n}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY started_at DESC, id DESC LIMIT {}",
            f.limit + 1
        ));
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b.as_str());
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("listing recordings"))?;
        let mut records = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        let more = i64::try_from(records.len()).unwrap_or(i64::MAX) > f.limit;
        records.truncate(usize::try_from(f.limit).unwrap_or(0));
        let next = more.then(|| records.last().map(|r| r.id.clone())).flatten();
        Ok((records, next))
    }

    /// Recordings received before `before` (retention), oldest first, at most `limit`.
    pub async fn recordings_received_before(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<RecordingRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM session_recordings WHERE received_at < $1 \
             ORDER BY received_at LIMIT $2"
        ))
        .bind(text(before))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing expired recordings"))?;
        rows.iter().map(from_row).collect()
    }

    /// A tenant's recording policy (the default when it has none).
    pub async fn recording_policy(&self, tenant: &TenantId) -> Result<RecordingPolicy, StoreError> {
        let row = sqlx::query(
            "SELECT record_admin, record_tenant, record_input FROM recording_policies \
             WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a recording policy"))?;
        let Some(row) = row else {
            return Ok(RecordingPolicy::default());
        };
        Ok(RecordingPolicy {
            record_admin: get::<i64>(&row, "record_admin")? != 0,
            record_tenant: get::<i64>(&row, "record_tenant")? != 0,
            record_input: get::<i64>(&row, "record_input")? != 0,
        })
    }
}

impl WriteTx {
    /// Completes a recording (in the transaction that appends its audit event); false when it
    /// was complete already.
    pub async fn complete_recording(
        &mut self,
        id: &str,
        completion: &Completion,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE session_recordings SET state = 'complete', ended_at = $1, sha256 = $2 \
             WHERE id = $3 AND state = 'open'",
        )
        .bind(text(completion.ended_at))
        .bind(completion.sha256.as_str())
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("completing a recording"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a recording's row (retention; its objects are deleted first).
    pub async fn delete_recording(&mut self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM session_recordings WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("deleting a recording"))?;
        Ok(())
    }

    pub async fn put_recording_policy(
        &mut self,
        tenant: &TenantId,
        policy: RecordingPolicy,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM recording_policies WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("replacing a recording policy"))?;
        sqlx::query(
            "INSERT INTO recording_policies \
             (tenant_id, record_admin, record_tenant, record_input, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant.as_str())
        .bind(i64::from(policy.record_admin))
        .bind(i64::from(policy.record_tenant))
        .bind(i64::from(policy.record_input))
        .bind(text(at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a recording policy"))?;
        Ok(())
    }
}
