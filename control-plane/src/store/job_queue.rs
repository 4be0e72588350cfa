//! The work queue of a bulk rotation job (`rotation_job_tenants`), shared by every replica.
//!
//! A replica's worker claims a few pending tenants for a lease and raises the lease while it
//! works; a claim whose lease ran out (its replica died) is claimed again by another. The
//! rotation of each secret records itself here in its own transaction, and only while the claim
//! is still the rotating worker's ([`WriteTx::job_secret_done`]): a tenant taken over is never
//! rotated twice, and one whose claim was taken over rolls back.

use chrono::{DateTime, Utc};
use keyward_common::TenantId;

use super::rotation::job_from_row;
use super::times::text;
use super::{Backend, JobFailure, JobRecord, Store, StoreError, WriteTx, get, parse, query_error};

/// Tenants inserted per statement when a job starts.
const INSERT_CHUNK: usize = 500;

/// A worker's hold on some of a job's tenants: the job and the worker (one per replica and job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobClaim {
    pub job_id: String,
    pub worker: String,
}

/// A tenant claimed for a job, with the secrets the job rotated for it before (under a claim of
/// a worker that died).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedTenant {
    pub tenant_id: TenantId,
    pub done: Vec<String>,
}

/// How one tenant of a job ended: `rotated`, `skipped` or `failed` (with code and reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantOutcome {
    pub tenant_id: TenantId,
    pub state: &'static str,
    pub code: Option<String>,
    pub reason: Option<String>,
}

/// A job's tenants by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTally {
    pub pending: i64,
    pub claimed: i64,
    pub rotated: i64,
    pub skipped: i64,
    pub failed: i64,
}

impl JobTally {
    /// Tenants no worker has finished yet.
    pub fn open(&self) -> i64 {
        self.pending + self.claimed
    }
}

/// The job's counts from its tenants, for an `UPDATE rotation_jobs` (`$1` is the job id).
const COUNTS: &str = "rotated = (SELECT COUNT(*) FROM rotation_job_tenants t \
                      WHERE t.job_id = $1 AND t.state = 'rotated'), \
                      failed = (SELECT COUNT(*) FROM rotation_job_tenants t \
                      WHERE t.job_id = $1 AND t.state = 'failed'), \
                      skipped = (SELECT COUNT(*) FROM rotation_job_tenants t \
                      WHERE t.job_id = $1 AND t.state = 'skipped')";

impl Store {
    /// Where a job's tenants stand.
    pub async fn job_tally(&self, job_id: &str) -> Result<JobTally, StoreError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM rotation_job_tenants WHERE job_id = $1 \
             GROUP BY state",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("counting a rotation job's tenants"))?;
        let mut tally = JobTally::default();
        for row in &rows {
            let n: i64 = get(row, "n")?;
            match get::<String>(row, "state")?.as_str() {
                "pending" => tally.pending = n,
                "claimed" => tally.claimed = n,
                "rotated" => tally.rotated = n,
                "skipped" => tally.skipped = n,
                _ => tally.failed = n,
            }
        }
        Ok(tally)
    }

    /// The running job that has a work queue, which any replica may join. (A running job
    /// without one was started by a version that ran jobs on one replica only.)
    pub async fn shared_rotation_job(&self) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM rotation_jobs j WHERE status = 'running' AND EXISTS \
             (SELECT 1 FROM rotation_job_tenants t WHERE t.job_id = j.job_id)",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading the running rotation job"))?
        .map(|row| job_from_row(&row))
        .transpose()
    }
}

/// The failed tenants of a job, in tenant order.
async fn job_failures(tx: &mut WriteTx, job_id: &str) -> Result<Vec<JobFailure>, StoreError> {
    let rows = sqlx::query(
        "SELECT tenant_id, code, reason FROM rotation_job_tenants \
         WHERE job_id = $1 AND state = 'failed' ORDER BY tenant_id",
    )
    .bind(job_id)
    .fetch_all(&mut *tx.tx)
    .await
    .map_err(query_error("reading a rotation job's failures"))?;
    rows.iter()
        .map(|row| {
            Ok(JobFailure {
                tenant_id: parse(row, "tenant_id")?,
                code: get::<Option<String>>(row, "code")?.unwrap_or_default(),
                reason: get::<Option<String>>(row, "reason")?.unwrap_or_default(),
            })
        })
        .collect()
}

impl WriteTx {
    /// Queues every tenant of a new job.
    pub async fn insert_job_tenants(
        &mut self,
        job_id: &str,
        tenants: &[TenantId],
    ) -> Result<(), StoreError> {
        for chunk in tenants.chunks(INSERT_CHUNK) {
            // `$1` is the job; `$2`... the tenants (sqlx's query builder writes `?` for `Any`,
            // which PostgreSQL does not take).
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, ${})", i + 2))
                .collect();
            let statement = format!(
                "INSERT INTO rotation_job_tenants (job_id, tenant_id) VALUES {}",
                values.join(", ")
            );
            let mut insert = sqlx::query(&statement).bind(job_id);
            for tenant in chunk {
                insert = insert.bind(tenant.as_str());
            }
            insert
                .execute(&mut *self.tx)
                .await
                .map_err(query_error("queueing a rotation job's tenants"))?;
        }
        Ok(())
    }

    /// Claims up to `n` of the job's tenants that are pending or whose claim expired before
    /// `now`, until `lease_until`. On PostgreSQL, rows another worker is claiming are skipped,
    /// not waited for.
    pub async fn claim_job_tenants(
        &mut self,
        claim: &JobClaim,
        n: usize,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTenant>, StoreError> {
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "UPDATE rotation_job_tenants SET state = 'claimed', claimed_by = $2, lease_until = $3 \
             WHERE job_id = $1 AND tenant_id IN (SELECT tenant_id FROM rotation_job_tenants \
             WHERE job_id = $1 AND (state = 'pending' OR (state = 'claimed' AND lease_until < $4)) \
             ORDER BY tenant_id LIMIT $5{skip_locked}) RETURNING tenant_id, done"
        ))
        .bind(&claim.job_id)
        .bind(&claim.worker)
        .bind(text(lease_until))
        .bind(text(now))
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query_error("claiming a rotation job's tenants"))?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(ClaimedTenant {
                    tenant_id: parse(row, "tenant_id")?,
                    done: get::<String>(row, "done")?
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING gives no order; tenants go in the order they were queued.
        claimed.sort_by(|a, b| a.tenant_id.as_str().cmp(b.tenant_id.as_str()));
        Ok(claimed)
    }

    /// Raises the lease of the worker's claims; returns how many it still holds.
    pub async fn renew_job_claims(
        &mut self,
        claim: &JobClaim,
        lease_until: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE rotation_job_tenants SET lease_until = $3 \
             WHERE job_id = $1 AND claimed_by = $2 AND state = 'claimed'",
        )
        .bind(&claim.job_id)
        .bind(&claim.worker)
        .bind(text(lease_until))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("renewing a rotation job's claims"))?;
        Ok(done.rows_affected())
    }

    /// Hands back the tenants the worker holds (a replica stopping cleanly), so that another
    /// replica claims them at once instead of after their lease. What the job committed for them
    /// (`done`) stays: the next worker skips it.
    pub async fn release_job_claims(&mut self, claim: &JobClaim) -> Result<u64, StoreError> {
        let released = sqlx::query(
            "UPDATE rotation_job_tenants SET state = 'pending', claimed_by = NULL, lease_until = NULL \
             WHERE job_id = $1 AND claimed_by = $2 AND state = 'claimed'",
        )
        .bind(&claim.job_id)
        .bind(&claim.worker)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("releasing a rotation job's claims"))?;
        Ok(released.rows_affected())
    }

    /// Records that the job rotated `secret` of `tenant`, in the rotation's own transaction.
    /// False when the worker no longer holds the tenant (its lease ran out and another worker
    /// claimed it): the caller must roll the rotation back.
    pub async fn job_secret_done(
        &mut self,
        claim: &JobClaim,
        tenant: &TenantId,
        secret: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE rotation_job_tenants \
             SET done = CASE WHEN done = '' THEN $4 ELSE done || ' ' || $4 END \
             WHERE job_id = $1 AND tenant_id = $2 AND claimed_by = $3 AND state = 'claimed'",
        )
        .bind(&claim.job_id)
        .bind(tenant.as_str())
        .bind(&claim.worker)
        .bind(secret)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a rotation job's progress"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how tenants the worker holds ended; returns how many it still held.
    pub async fn record_job_outcomes(
        &mut self,
        claim: &JobClaim,
        outcomes: &[TenantOutcome],
    ) -> Result<u64, StoreError> {
        let mut recorded = 0;
        for outcome in outcomes {
            let done = sqlx::query(
                "UPDATE rotation_job_tenants SET state = $4, code = $5, reason = $6, \
                 lease_until = NULL \
                 WHERE job_id = $1 AND tenant_id = $2 AND claimed_by = $3 AND state = 'claimed'",
            )
            .bind(&claim.job_id)
            .bind(outcome.tenant_id.as_str())
            .bind(&claim.worker)
            .bind(outcome.state)
            .bind(outcome.code.clone())
            .bind(outcome.reason.clone())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("recording a rotation job's tenants"))?;
            recorded += done.rows_affected();
        }
        Ok(recorded)
    }

    /// Copies a running job's counts from its tenants and raises its heartbeat.
    pub async fn tally_rotation_job(
        &mut self,
        job_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE rotation_jobs SET {COUNTS}, heartbeat_at = $2 \
             WHERE job_id = $1 AND status = 'running'"
        ))
        .bind(job_id)
        .bind(text(at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a rotation job's progress"))?;
        Ok(())
    }

    /// Completes a running job none of whose tenants is open, with its final counts and
    /// failures. `None` when it is not (another replica completed it, or tenants are open): of
    /// replicas racing to complete a job, one does.
    pub async fn complete_rotation_job(
        &mut self,
        job_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let failures = job_failures(self, job_id).await?;
        let failures = serde_json::to_string(&failures).unwrap_or_else(|_| "[]".into());
        sqlx::query(&format!(
            "UPDATE rotation_jobs SET status = 'completed', finished_at = $2, heartbeat_at = $2, \
             failures = $3, {COUNTS} \
             WHERE job_id = $1 AND status = 'running' AND NOT EXISTS \
             (SELECT 1 FROM rotation_job_tenants t WHERE t.job_id = $1 \
             AND t.state IN ('pending', 'claimed')) RETURNING *"
        ))
        .bind(job_id)
        .bind(text(at))
        .bind(failures)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query_error("completing a rotation job"))?
        .map(|row| job_from_row(&row))
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_tenants_are_the_unfinished_ones() {
        let tally = JobTally {
            pending: 2,
            claimed: 3,
            rotated: 10,
            skipped: 1,
            failed: 1,
        };
        assert_eq!(tally.open(), 5);
        assert_eq!(JobTally::default().open(), 0);
    }
}
