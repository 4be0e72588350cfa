//! Bulk rotation: one job rotates one secret type (`ssh`, `smtp`, `dkim`) for every tenant.
//!
//! - At most one job runs per deployment: SQL allows one `running` row (a partial unique index),
//!   so a second start, on any replica, is refused with the running job's id. A running job whose
//!   heartbeat stopped (its process died) no longer blocks: it is marked `interrupted`.
//! - Tenants are processed concurrently (`rotation.bulk_concurrency`, default twice the cores);
//!   key generation takes one core each through the lifecycle's CPU slots, so every core is busy
//!   while Vault writes, SQL commits and pushes to hosts go on for other tenants.
//! - Each tenant's rotation is the lifecycle's own operation, audited on its own with the job id.
//!   A tenant that fails is recorded with its reason; the job goes on with the others.
//! - Progress is kept in SQL (readable from any replica) and in a watch channel that the
//!   Server-Sent Events stream follows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_common::{KeyKind, TenantId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::caller::Caller;
use crate::config::RotationConfig;
use crate::lifecycle::DomainError;
use crate::lifecycle::{KeyLifecycle, Replace, TenantSecretKind, Trigger};
use crate::store::{Backend, JobFailure, JobRecord, StoreError};

/// How often a running job records that it is alive.
/// How often a running job's progress is written to SQL (the local SSE stream sees every tenant).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
const HEARTBEAT: Duration = Duration::from_secs(20);
/// A running job without a heartbeat for this long was lost with its process.
const STALE_AFTER: chrono::Duration = chrono::Duration::seconds(120);

/// What a bulk rotation rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretType {
    /// Both SSH key sets of every tenant (`admin_ssh`, `tenant_ssh`).
    Ssh,
    /// Every tenant's SMTP credentials.
    Smtp,
    /// Every tenant's DKIM key.
    Dkim,
}

impl SecretType {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretType::Ssh => "ssh",
            SecretType::Smtp => "smtp",
            SecretType::Dkim => "dkim",
        }
    }
}

/// How one tenant of a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantResult {
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    /// `rotated`, `skipped` (nothing to rotate: its SSH keys are revoked) or `failed`.
    pub outcome: &'static str,
    /// The problem code of the failure, e.g. `vault_unavailable`.
    pub code: Option<&'static str>,
    pub reason: Option<String>,
}

/// A job as it stands, and the tenant that finished last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSnapshot {
    pub job: JobRecord,
    pub last: Option<TenantResult>,
}

impl JobSnapshot {
    pub fn running(&self) -> bool {
        self.job.status == "running"
    }
}

/// The job running on this replica.
#[derive(Debug)]
struct Running {
    job_id: String,
    progress: watch::Receiver<JobSnapshot>,
    task: AbortHandle,
}

/// Starts and tracks bulk rotation jobs.
#[derive(Debug)]
pub struct BulkRotations {
    lifecycle: Arc<KeyLifecycle>,
    concurrency: usize,
    running: Mutex<Option<Running>>,
}

fn new_job_id() -> String {
    let mut id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    format!("job_{}", hex::encode(id))
}

/// Whether `raw` can be a job id (so that a malformed one is a 404 without a query).
pub fn valid_job_id(raw: &str) -> bool {
    raw.len() == 20
        && raw.starts_with("job_")
        && raw[4..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

impl BulkRotations {
    pub fn new(lifecycle: Arc<KeyLifecycle>, config: &RotationConfig) -> Self {
        let concurrency = config.bulk_concurrency.unwrap_or_else(|| {
            2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        Self {
            lifecycle,
            concurrency,
            running: Mutex::new(None),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At start: a job left `running` by a process that is gone is marked `interrupted`. On
    /// SQLite this process is the only one, so every such job is; on PostgreSQL, those whose
    /// heartbeat stopped.
    pub async fn recover(&self) -> Result<u64, StoreError> {
        let store = self.lifecycle.store();
        let now = self.lifecycle.now();
        let stale_before = match store.backend() {
            Backend::Sqlite => None,
            Backend::Postgres => Some(now - STALE_AFTER),
        };
        let n = store.interrupt_rotation_jobs(stale_before, now).await?;
        if n > 0 {
            tracing::warn!(
                jobs = n,
                "marked rotation jobs of a stopped process as interrupted"
            );
        }
        Ok(n)
    }

    /// Follows the job if it runs on this replica.
    pub fn watch(&self, job_id: &str) -> Option<watch::Receiver<JobSnapshot>> {
        self.running()
            .as_ref()
            .filter(|r| r.job_id == job_id)
            .map(|r| r.progress.clone())
    }

    /// Stops the running job (server shutdown); it is `interrupted` at the next start.
    pub fn shutdown(&self) {
        if let Some(running) = self.running().take() {
            running.task.abort();
        }
    }

    /// Starts a job over every tenant and returns its progress. Refused with
    /// [`DomainError::RotationInProgress`] while another job runs anywhere in the deployment.
    pub async fn start(
        self: &Arc<Self>,
        caller: &Caller,
        secret_type: SecretType,
    ) -> Result<watch::Receiver<JobSnapshot>, DomainError> {
        let store = self.lifecycle.store();
        let tenants: Vec<TenantId> = store
            .tenants()
            .await?
            .into_iter()
            .map(|t| t.tenant_id)
            .collect();
        let at = self.lifecycle.now();
        let job = JobRecord {
            job_id: new_job_id(),
            secret_type: secret_type.as_str().to_owned(),
            status: "running".into(),
            started_by: caller.token_id.clone(),
            started_at: at,
            heartbeat_at: at,
            finished_at: None,
            total: i64::try_from(tenants.len()).map_err(|_| DomainError::Internal)?,
            rotated: 0,
            failed: 0,
            skipped: 0,
            failures: Vec::new(),
        };
        if let Err(e) = self.insert(caller, &job).await {
            let DomainError::Store(StoreError::Duplicate { .. }) = e else {
                return Err(e);
            };
            // Another job runs, or ran in a process that died: only the first stops us.
            let stale_before = self.lifecycle.now() - STALE_AFTER;
            let interrupted = store
                .interrupt_rotation_jobs(Some(stale_before), self.lifecycle.now())
                .await?;
            let retried = if interrupted > 0 {
                self.insert(caller, &job).await
            } else {
                Err(e)
            };
            if let Err(DomainError::Store(StoreError::Duplicate { .. })) = retried {
                let running = store.running_rotation_job().await?;
                return Err(DomainError::RotationInProgress {
                    job_id: running.map_or_else(|| "unknown".into(), |j| j.job_id),
                });
            }
            retried?;
        }
        tracing::info!(job = %job.job_id, secret_type = secret_type.as_str(), tenants = tenants.len(), "bulk rotation started");
        let snapshot = JobSnapshot {
            job: job.clone(),
            last: None,
        };
        let (progress, receiver) = watch::channel(snapshot);
        // The running slot is filled before the task can clear it, under one lock.
        let mut slot = self.running();
        let this = Arc::clone(self);
        let caller = caller.clone();
        let task = tokio::spawn(async move {
            this.run(caller, job, tenants, secret_type, progress).await;
        });
        *slot = Some(Running {
            job_id: receiver.borrow().job.job_id.clone(),
            progress: receiver.clone(),
            task: task.abort_handle(),
        });
        Ok(receiver)
    }

    /// Records the new job and its audit event together.
    async fn insert(&self, caller: &Caller, job: &JobRecord) -> Result<(), DomainError> {
        let stored = job.clone();
        self.lifecycle
            .audited(caller, "secrets.rotate_all", None, move |tx| {
                Box::pin(async move {
                    tx.insert_rotation_job(&stored).await?;
                    let detail = json!({
                        "jobId": stored.job_id,
                        "secretType": stored.secret_type,
                        "tenants": stored.total,
                    });
                    Ok(((), detail))
                })
            })
            .await
    }

    async fn run(
        self: Arc<Self>,
        caller: Caller,
        mut job: JobRecord,
        tenants: Vec<TenantId>,
        secret_type: SecretType,
        progress: watch::Sender<JobSnapshot>,
    ) {
        let trigger = Trigger::Job(job.job_id.clone());
        let lifecycle = &self.lifecycle;
        // Each tenant is a task of its own, so that tenants go on (and release their locks)
        // while this task records progress; dropping the set (shutdown) aborts them.
        let mut pending = tenants.into_iter();
        let mut tasks = tokio::task::JoinSet::new();
        let mut names = std::collections::HashMap::new();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        let mut last_recorded = std::time::Instant::now();
        loop {
            while tasks.len() < self.concurrency
                && let Some(tenant) = pending.next()
            {
                let (lifecycle, caller, trigger) =
                    (lifecycle.clone(), caller.clone(), trigger.clone());
                let name = tenant.clone();
                let handle = tasks.spawn(async move {
                    rotate_tenant(&lifecycle, &caller, &tenant, secret_type, &trigger).await
                });
                names.insert(handle.id(), name);
            }
            tokio::select! {
                joined = tasks.join_next_with_id() => {
                    let result = match joined {
                        None => break,
                        Some(Ok((_, result))) => result,
                        Some(Err(e)) => {
                            // Every task's id went into `names` when it was spawned.
                            let Some(tenant_id) = names.get(&e.id()).cloned() else {
                                continue;
                            };
                            TenantResult {
                                tenant_id,
                                outcome: "failed",
                                code: Some("internal"),
                                reason: Some("the rotation task failed".into()),
                            }
                        }
                    };
                    match result.outcome {
                        "rotated" => job.rotated += 1,
                        "skipped" => job.skipped += 1,
                        _ => job.failed += 1,
                    }
                    if let Some(failure) = failure_of(&result) {
                        job.failures.push(failure);
                    }
                    job.heartbeat_at = lifecycle.now();
                    progress.send_replace(JobSnapshot { job: job.clone(), last: Some(result) });
                }
                _ = heartbeat.tick() => job.heartbeat_at = lifecycle.now(),
            }
            // Progress readable from other replicas, at most every PROGRESS_EVERY: a commit per
            // tenant would hold the next tenant back (the loop waits for it) and cost a synced
            // write each. Losing one update loses nothing that the final record does not carry.
            if last_recorded.elapsed() < PROGRESS_EVERY {
                continue;
            }
            last_recorded = std::time::Instant::now();
            let recorded = async {
                let mut tx = lifecycle.store().begin().await?;
                tx.update_rotation_job(&job).await?;
                tx.commit().await
            };
            if let Err(e) = recorded.await {
                tracing::warn!(job = %job.job_id, error = %e, "cannot record a rotation job's progress");
            }
        }
        job.status = "completed".into();
        let finished_at = lifecycle.now();
        job.finished_at = Some(finished_at);
        job.heartbeat_at = finished_at;
        let finished = job.clone();
        let recorded = lifecycle
            .audited(&caller, "secrets.rotate_all_finished", None, move |tx| {
                Box::pin(async move {
                    tx.finish_rotation_job(&finished).await?;
                    let detail = json!({
                        "jobId": finished.job_id,
                        "secretType": finished.secret_type,
                        "rotated": finished.rotated,
                        "failed": finished.failed,
                        "skipped": finished.skipped,
                    });
                    Ok(((), detail))
                })
            })
            .await;
        if let Err(e) = recorded {
            // The row stays `running` with a heartbeat that now stops: the next start after
            // STALE_AFTER marks it interrupted.
            tracing::error!(job = %job.job_id, error = %e, "cannot record the end of a rotation job");
        }
        tracing::info!(job = %job.job_id, rotated = job.rotated, failed = job.failed, skipped = job.skipped, "bulk rotation finished");
        self.running().take_if(|r| r.job_id == job.job_id);
        progress.send_replace(JobSnapshot { job, last: None });
    }
}

fn failure_of(result: &TenantResult) -> Option<JobFailure> {
    (result.outcome == "failed").then(|| JobFailure {
        tenant_id: result.tenant_id.clone(),
        code: result.code.unwrap_or("internal").to_owned(),
        reason: result.reason.clone().unwrap_or_default(),
    })
}

/// Rotates one tenant's secret of `secret_type`. For `ssh`, both key sets are tried even when the
/// first fails; revoked key sets are left alone (a revoked key is replaced by a regenerate, which
/// is an admin's decision, not a rotation's).
async fn rotate_tenant(
    lifecycle: &KeyLifecycle,
    caller: &Caller,
    tenant: &TenantId,
    secret_type: SecretType,
    trigger: &Trigger,
) -> TenantResult {
    let result = |outcome, error: Option<DomainError>| TenantResult {
        tenant_id: tenant.clone(),
        outcome,
        code: error.as_ref().map(DomainError::code),
        reason: error.map(|e| e.to_string()),
    };
    match secret_type {
        SecretType::Ssh => {
            let mut rotated = 0;
            let mut first_error = None;
            for kind in KeyKind::ALL {
                match lifecycle
                    .replace_key_as(caller, tenant, kind, Replace::Rotate, trigger)
                    .await
                {
                    Ok(_) => rotated += 1,
                    Err(DomainError::KeyRevoked) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match (first_error, rotated) {
                (Some(e), _) => result("failed", Some(e)),
                (None, 0) => result("skipped", None),
                (None, _) => result("rotated", None),
            }
        }
        SecretType::Smtp | SecretType::Dkim => {
            let kind = if secret_type == SecretType::Smtp {
                TenantSecretKind::Smtp
            } else {
                TenantSecretKind::Dkim
            };
            match lifecycle.rotate_secret(caller, tenant, kind, trigger).await {
                Ok(_) => result("rotated", None),
                Err(e) => result("failed", Some(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_recognised() {
        let id = new_job_id();
        assert!(valid_job_id(&id), "{id}");
        for bad in [
            "",
            "job_",
            "job_0123456789ABCDEF",
            "tok_0123456789abcdef",
            "job_../../etc",
        ] {
            assert!(!valid_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn failures_keep_code_and_reason() {
        let result = TenantResult {
            tenant_id: "t1".parse().unwrap(),
            outcome: "failed",
            code: Some("vault_unavailable"),
            reason: Some("Vault denied write vps/t1/smtp".into()),
        };
        let failure = failure_of(&result).unwrap();
        assert_eq!(failure.code, "vault_unavailable");
        assert_eq!(failure.reason, "Vault denied write vps/t1/smtp");
        let ok = TenantResult {
            outcome: "rotated",
            code: None,
            reason: None,
            ..result
        };
        assert!(failure_of(&ok).is_none());
    }
}
