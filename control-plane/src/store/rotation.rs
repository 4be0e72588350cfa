//! Rotation automation in SQL: per-tenant policies, the scheduler's questions (what is due, what
//! falls due next) and its one-per-deployment lease, the SMTP and DKIM secrets' metadata, and bulk
//! rotation jobs.

use chrono::{DateTime, Utc};
use keyward_common::{KeyAlgorithm, KeyKind, TenantId};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::times::{optional_text, optional_time, text, time};
use super::{Backend, Store, StoreError, WriteTx, get, json_column, parse, query_error};

/// A tenant's own rotation policy, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPolicyRecord {
    pub tenant_id: TenantId,
    pub interval_secs: i64,
    pub grace_secs: i64,
    pub algorithm: KeyAlgorithm,
    pub updated_at: DateTime<Utc>,
}

/// Metadata of one of a tenant's other secrets (`smtp`, `dkim`). Never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSecretRecord {
    pub tenant_id: TenantId,
    pub name: String,
    pub generation: i64,
    pub vault_version: i64,
    pub created_at: DateTime<Utc>,
    pub last_rotated: DateTime<Utc>,
    /// The public part: the SMTP user name; the DKIM selector and DNS record.
    pub public_info: serde_json::Value,
}

/// Why one tenant of a bulk rotation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobFailure {
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    /// The problem code the failure would have as an API answer, e.g. `vault_unavailable`.
    pub code: String,
    pub reason: String,
}

/// A bulk rotation job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: String,
    /// `ssh`, `smtp` or `dkim`.
    pub secret_type: String,
    /// `running`, `completed` or `interrupted`.
    pub status: String,
    pub started_by: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub total: i64,
    pub rotated: i64,
    pub failed: i64,
    pub skipped: i64,
    pub failures: Vec<JobFailure>,
}

/// Holding this makes the holder the deployment's one rotation scheduler. On PostgreSQL it is a
/// session advisory lock on a connection of its own: if the process dies, the connection drops
/// and PostgreSQL releases the lock for another replica. On SQLite one process owns the file.
#[derive(Debug)]
pub struct SchedulerLease {
    conn: Option<sqlx::AnyConnection>,
}

impl SchedulerLease {
    /// Whether the lease still holds: its connection (and so its lock) is alive.
    pub async fn is_held(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => sqlx::query("SELECT 1 AS one")
                .execute(&mut *conn)
                .await
                .is_ok(),
        }
    }
}

/// Lock id of the rotation scheduler (`pg_try_advisory_lock`): "kw" + 2. The second key is the
/// schema, so that deployments sharing a database in schemas of their own do not exclude each other.
const SCHEDULER_LOCK: i32 = 0x6b77_0002;

/// A job without a work queue (`rotation_job_tenants`): one that only its own process ran.
const UNQUEUED: &str = "NOT EXISTS (SELECT 1 FROM rotation_job_tenants t \
                        WHERE t.job_id = rotation_jobs.job_id)";

fn policy_from_row(row: &AnyRow) -> Result<RotationPolicyRecord, StoreError> {
    Ok(RotationPolicyRecord {
        tenant_id: parse(row, "tenant_id")?,
        interval_secs: get(row, "interval_secs")?,
        grace_secs: get(row, "grace_secs")?,
        algorithm: parse(row, "algorithm")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn secret_from_row(row: &AnyRow) -> Result<TenantSecretRecord, StoreError> {
    Ok(TenantSecretRecord {
        tenant_id: parse(row, "tenant_id")?,
        name: get(row, "name")?,
        generation: get(row, "generation")?,
        vault_version: get(row, "vault_version")?,
        created_at: time(row, "created_at")?,
        last_rotated: time(row, "last_rotated")?,
        public_info: json_column(row, "public_info")?,
    })
}

pub(super) fn job_from_row(row: &AnyRow) -> Result<JobRecord, StoreError> {
    Ok(JobRecord {
        job_id: get(row, "job_id")?,
        secret_type: get(row, "secret_type")?,
        status: get(row, "status")?,
        started_by: get(row, "started_by")?,
        started_at: time(row, "started_at")?,
        heartbeat_at: time(row, "heartbeat_at")?,
        finished_at: optional_time(row, "finished_at")?,
        total: get(row, "total")?,
        rotated: get(row, "rotated")?,
        failed: get(row, "failed")?,
        skipped: get(row, "skipped")?,
        failures: json_column(row, "failures")?,
    })
}

fn failures_json(job: &JobRecord) -> String {
    serde_json::to_string(&job.failures).unwrap_or_else(|_| "[]".into())
}

impl Store {
    pub async fn rotation_policy(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<RotationPolicyRecord>, StoreError> {
        sqlx::query("SELECT * FROM rotation_policies WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a rotation policy"))?
            .map(|row| policy_from_row(&row))
            .transpose()
    }

    /// Active generated key sets whose `next_rotation` is at or before `now`, the longest overdue
    /// first (registered keys are their owners' to replace: `unreminded_overdue_key_sets`).
    pub async fn due_key_sets(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(TenantId, KeyKind)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, kind FROM key_sets WHERE state = 'active' AND next_rotation <= $1 \
             AND origin = 'generated' ORDER BY next_rotation, tenant_id, kind",
        )
        .bind(text(now))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing due key sets"))?;
        rows.iter()
            .map(|row| Ok((parse(row, "tenant_id")?, parse(row, "kind")?)))
            .collect()
    }

    /// The earliest `next_rotation` of any active key set the scheduler has something to do for
    /// (a generated key to rotate, a registered one to remind).
    pub async fn earliest_next_rotation(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = sqlx::query(
            "SELECT next_rotation FROM key_sets WHERE state = 'active' \
             AND (origin = 'generated' OR reminded_generation < generation) \
             ORDER BY next_rotation LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("finding the next rotation"))?;
        row.map(|row| time(&row, "next_rotation")).transpose()
    }

    pub async fn tenant_secret(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<TenantSecretRecord>, StoreError> {
        sqlx::query("SELECT * FROM tenant_secrets WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.as_str())
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a tenant secret"))?
            .map(|row| secret_from_row(&row))
            .transpose()
    }

    pub async fn rotation_job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query("SELECT * FROM rotation_jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a rotation job"))?
            .map(|row| job_from_row(&row))
            .transpose()
    }

    /// The running job, on whichever replica.
    pub async fn running_rotation_job(&self) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query("SELECT * FROM rotation_jobs WHERE status = 'running'")
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading the running rotation job"))?
            .map(|row| job_from_row(&row))
            .transpose()
    }

    /// The latest jobs, newest first.
    pub async fn rotation_jobs(&self, limit: i64) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM rotation_jobs ORDER BY started_at DESC, job_id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing rotation jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    /// Marks running jobs without a work queue as interrupted: all of them, or those whose
    /// heartbeat is older than `heartbeat_before` (their process is gone). Returns how many. A
    /// job with a queue is never interrupted: any replica resumes it.
    pub async fn interrupt_rotation_jobs(
        &self,
        heartbeat_before: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = match heartbeat_before {
            Some(before) => {
                sqlx::query(&format!(
                    "UPDATE rotation_jobs SET status = 'interrupted', finished_at = $1 \
                     WHERE status = 'running' AND heartbeat_at < $2 AND {UNQUEUED}"
                ))
                .bind(text(at))
                .bind(text(before))
                .execute(&self.pool)
                .await
            }
            None => {
                sqlx::query(&format!(
                    "UPDATE rotation_jobs SET status = 'interrupted', finished_at = $1 \
                     WHERE status = 'running' AND {UNQUEUED}"
                ))
                .bind(text(at))
                .execute(&self.pool)
                .await
            }
        }
        .map_err(query_error("interrupting rotation jobs"))?;
        Ok(done.rows_affected())
    }

    /// Tries to become the deployment's rotation scheduler; `None` while another replica is.
    pub async fn try_scheduler_lease(&self) -> Result<Option<SchedulerLease>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(SchedulerLease { conn: None }));
        }
        // A connection of its own, outside the pool: the lock lives as long as this session.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(query_error("opening the scheduler's connection"))?
            .detach();
        let row = sqlx::query(
            "SELECT CAST(pg_try_advisory_lock($1, hashtext(current_schema())) AS INTEGER) AS locked",
        )
        .bind(SCHEDULER_LOCK)
        .fetch_one(&mut conn)
        .await
        .map_err(query_error("taking the scheduler lock"))?;
        let locked: i32 = row
            .try_get("locked")
            .map_err(query_error("taking the scheduler lock"))?;
        if locked == 1 {
            Ok(Some(SchedulerLease { conn: Some(conn) }))
        } else {
            let _ = sqlx::Connection::close(conn).await;
            Ok(None)
        }
    }
}

impl WriteTx {
    pub async fn put_rotation_policy(
        &mut self,
        p: &RotationPolicyRecord,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM rotation_policies WHERE tenant_id = $1")
            .bind(p.tenant_id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("replacing a rotation policy"))?;
        sqlx::query(
            "INSERT INTO rotation_policies (tenant_id, interval_secs, grace_secs, algorithm, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(p.tenant_id.as_str())
        .bind(p.interval_secs)
        .bind(p.grace_secs)
        .bind(p.algorithm.as_str())
        .bind(text(p.updated_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a rotation policy"))?;
        Ok(())
    }

    /// Removes a tenant's own policy (it follows the default again); false when it had none.
    pub async fn delete_rotation_policy(&mut self, tenant: &TenantId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM rotation_policies WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("deleting a rotation policy"))?;
        Ok(done.rows_affected() > 0)
    }

    /// `(kind, last_rotated)` of the tenant's key sets, read inside this transaction.
    pub async fn key_set_rotations(
        &mut self,
        tenant: &TenantId,
    ) -> Result<Vec<(KeyKind, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, last_rotated FROM key_sets WHERE tenant_id = $1 ORDER BY kind",
        )
        .bind(tenant.as_str())
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query_error("reading key set rotation times"))?;
        rows.iter()
            .map(|row| Ok((parse(row, "kind")?, time(row, "last_rotated")?)))
            .collect()
    }

    /// A policy change: the key set's next rotation and policy name follow the new policy.
    pub async fn reschedule_key_set(
        &mut self,
        tenant: &TenantId,
        kind: KeyKind,
        next_rotation: DateTime<Utc>,
        rotation_policy: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE key_sets SET next_rotation = $1, rotation_policy = $2 \
             WHERE tenant_id = $3 AND kind = $4",
        )
        .bind(text(next_rotation))
        .bind(rotation_policy)
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("rescheduling a key set"))?;
        Ok(())
    }

    /// Replaces a tenant secret's record, only over `previous` (the generation read; `None`
    /// when there was none): false, and nothing written, when another rotation committed
    /// meanwhile.
    pub async fn replace_tenant_secret(
        &mut self,
        previous: Option<i64>,
        s: &TenantSecretRecord,
    ) -> Result<bool, StoreError> {
        if let Some(previous) = previous {
            let deleted = sqlx::query(
                "DELETE FROM tenant_secrets WHERE tenant_id = $1 AND name = $2 AND generation = $3",
            )
            .bind(s.tenant_id.as_str())
            .bind(&s.name)
            .bind(previous)
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("replacing a tenant secret"))?;
            if deleted.rows_affected() != 1 {
                return Ok(false);
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO tenant_secrets (tenant_id, name, generation, vault_version, created_at, \
             last_rotated, public_info) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(s.tenant_id.as_str())
        .bind(&s.name)
        .bind(s.generation)
        .bind(s.vault_version)
        .bind(text(s.created_at))
        .bind(text(s.last_rotated))
        .bind(s.public_info.to_string())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a tenant secret"));
        match inserted {
            Ok(_) => Ok(true),
            // A first rotation that another one beat to it.
            Err(StoreError::Duplicate { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records a new running job. Fails with [`StoreError::Duplicate`] while another job runs.
    pub async fn insert_rotation_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO rotation_jobs (job_id, secret_type, status, started_by, started_at, \
             heartbeat_at, finished_at, total, rotated, failed, skipped, failures) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&job.job_id)
        .bind(&job.secret_type)
        .bind(&job.status)
        .bind(job.started_by.clone())
        .bind(text(job.started_at))
        .bind(text(job.heartbeat_at))
        .bind(optional_text(job.finished_at))
        .bind(job.total)
        .bind(job.rotated)
        .bind(job.failed)
        .bind(job.skipped)
        .bind(failures_json(job))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("rotation job"))?;
        Ok(())
    }

    /// Records a running job's progress and heartbeat. Not audited: every tenant's rotation is.
    /// (A `WriteTx` all the same: on SQLite it orders this write with the audited ones.)
    pub async fn update_rotation_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rotation_jobs SET rotated = $1, failed = $2, skipped = $3, failures = $4, \
             heartbeat_at = $5 WHERE job_id = $6 AND status = 'running'",
        )
        .bind(job.rotated)
        .bind(job.failed)
        .bind(job.skipped)
        .bind(failures_json(job))
        .bind(text(job.heartbeat_at))
        .bind(&job.job_id)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a rotation job's progress"))?;
        Ok(())
    }

    /// Records a job's final state.
    pub async fn finish_rotation_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rotation_jobs SET status = $1, finished_at = $2, heartbeat_at = $3, \
             rotated = $4, failed = $5, skipped = $6, failures = $7 WHERE job_id = $8",
        )
        .bind(&job.status)
        .bind(optional_text(job.finished_at))
        .bind(text(job.heartbeat_at))
        .bind(job.rotated)
        .bind(job.failed)
        .bind(job.skipped)
        .bind(failures_json(job))
        .bind(&job.job_id)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("finishing a rotation job"))?;
        Ok(())
    }
}
