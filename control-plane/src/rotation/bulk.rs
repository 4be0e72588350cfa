//! Bulk rotation: one job rotates one secret type (`ssh`, `smtp`, `dkim`) for every tenant.
//!
//! - At most one job runs per deployment: SQL allows one `running` row (a partial unique index),
//!   so a second start, on any replica, is refused with the running job's id.
//! - The job's tenants are a queue in SQL that every replica works on (`store::job_queue`): a
//!   replica claims a few tenants for a lease, rotates them, and claims more. Replicas join a
//!   job started elsewhere within [`JOIN_EVERY`]. A replica that dies mid-job loses nothing:
//!   its claims run out and another replica takes its tenants over, and each secret's rotation
//!   commits only while its claim holds, so no tenant is rotated twice. Whichever replica sees
//!   the queue empty completes the job, once.
//! - Each replica works on `rotation.bulk_concurrency` tenants at once (default 64); key
//!   generation takes one core each through the lifecycle's CPU slots.
//! - Each tenant's rotation is the lifecycle's own operation, audited on its own with the job id;
//!   the SQL part of the SSH key sets ready at the same time is committed in one transaction
//!   (`lifecycle::group_commit`).
//!   A tenant that fails is recorded with its reason; the job goes on with the others.
//! - Progress is kept in SQL (readable from any replica) and, on the replica that started the
//!   job, in a watch channel that the Server-Sent Events stream follows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward_common::{KeyKind, TenantId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::caller::Caller;
use crate::config::RotationConfig;
use crate::lifecycle::DomainError;
use crate::lifecycle::{GroupCommit, KeyLifecycle, Replace, TenantSecretKind, Trigger};
use crate::store::{
    Backend, ClaimedTenant, JobClaim, JobFailure, JobRecord, Role, StoreError, TenantOutcome,
};

/// How often a running job's progress is written to SQL (the local SSE stream sees every tenant).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// A running job without a queue and without a heartbeat for this long was lost with its
/// process (jobs of versions before the shared queue).
const STALE_AFTER: chrono::Duration = chrono::Duration::seconds(120);
/// How often a replica looks for a running job to join.
pub const JOIN_EVERY: Duration = Duration::from_secs(2);
/// How long a worker with nothing to claim waits before it looks again: the tenants other
/// replicas hold come back when their lease runs out.
const IDLE_POLL: Duration = Duration::from_millis(250);

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
    pub const ALL: [SecretType; 3] = [SecretType::Ssh, SecretType::Smtp, SecretType::Dkim];

    pub fn as_str(self) -> &'static str {
        match self {
            SecretType::Ssh => "ssh",
            SecretType::Smtp => "smtp",
            SecretType::Dkim => "dkim",
        }
    }

    /// The type a stored job names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// How one tenant of a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantResult {
    #[schema(value_type = String)]
    pub tenant_id: TenantId,
    /// `rotated`, `skipped` (nothing to rotate: its SSH keys are revoked, or the tenant is
    /// offboarded) or `failed`.
    pub outcome: &'static str,
    /// The problem code of the failure, e.g. `vault_unavailable`.
    pub code: Option<&'static str>,
    pub reason: Option<String>,
}

impl TenantResult {
    fn outcome(&self) -> TenantOutcome {
        TenantOutcome {
            tenant_id: self.tenant_id.clone(),
            state: self.outcome,
            code: self.code.map(str::to_owned),
            reason: self.reason.clone(),
        }
    }
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

    /// Counts one tenant this replica finished (SQL's counts replace these at each record).
    fn count(&mut self, result: TenantResult) {
        match result.outcome {
            "rotated" => self.job.rotated += 1,
            "skipped" => self.job.skipped += 1,
            _ => self.job.failed += 1,
        }
        if let Some(failure) = failure_of(&result) {
            self.job.failures.push(failure);
        }
        self.last = Some(result);
    }
}

/// The job started on this replica, which its caller follows here.
#[derive(Debug)]
struct Running {
    job_id: String,
    progress: watch::Receiver<JobSnapshot>,
}

/// Starts bulk rotation jobs, and works on the running one with the other replicas.
#[derive(Debug)]
pub struct BulkRotations {
    lifecycle: Arc<KeyLifecycle>,
    concurrency: usize,
    lease: Duration,
    running: Mutex<Option<Running>>,
    /// The jobs this replica works on, by id.
    working: Mutex<HashMap<String, Working>>,
}

fn random_id(prefix: &str) -> String {
    let mut id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    format!("{prefix}{}", hex::encode(id))
}

fn new_job_id() -> String {
    random_id("job_")
}

/// Whether `raw` can be a job id (so that a malformed one is a 404 without a query).
pub fn valid_job_id(raw: &str) -> bool {
    raw.len() == 20
        && raw.starts_with("job_")
        && raw[4..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Locks a mutex whose holder cannot leave it inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job this replica works on: its task, and the claim its tenants are held under.
#[derive(Debug)]
struct Working {
    task: AbortHandle,
    claim: JobClaim,
}

impl BulkRotations {
    pub fn new(lifecycle: Arc<KeyLifecycle>, config: &RotationConfig) -> Self {
        let concurrency = config.bulk_concurrency();
        Self {
            lifecycle,
            concurrency,
            lease: config.bulk_lease,
            running: Mutex::new(None),
            working: Mutex::new(HashMap::new()),
        }
    }

    /// At start: a job without a queue left `running` by a process that is gone is marked
    /// `interrupted`. On SQLite this process is the only one, so every such job is; on
    /// PostgreSQL, those whose heartbeat stopped. A job with a queue is resumed instead
    /// ([`BulkRotations::join_jobs`]).
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

    /// Follows the job if it was started on this replica.
    pub fn watch(&self, job_id: &str) -> Option<watch::Receiver<JobSnapshot>> {
        lock(&self.running)
            .as_ref()
            .filter(|r| r.job_id == job_id)
            .map(|r| r.progress.clone())
    }

    /// Stops working on jobs (server shutdown) and hands back the tenants this replica held, so
    /// that the other replicas take them at once. A rotation cut in the middle is rolled back (its
    /// Vault version is superseded by the next one); if the hand-back fails (the database away),
    /// the claims run out after `rotation.bulk_lease` instead.
    pub async fn shutdown(&self) {
        let working: Vec<Working> = lock(&self.working).drain().map(|(_, w)| w).collect();
        for work in &working {
            work.task.abort();
        }
        lock(&self.running).take();
        for Working { claim, .. } in working {
            let released = async {
                let mut tx = self.lifecycle.store().begin_unaudited().await?;
                let released = tx.release_job_claims(&claim).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(released)
            };
            match released.await {
                Ok(tenants) => {
                    tracing::info!(job = %claim.job_id, worker = %claim.worker, tenants, "handed a rotation job's tenants back");
                }
                Err(e) => {
                    tracing::warn!(job = %claim.job_id, error = %e, "cannot hand a rotation job's tenants back; their lease runs out instead");
                }
            }
        }
    }

    /// Joins the running job, wherever it was started, now and every [`JOIN_EVERY`]: a job
    /// another replica started, or one left running when this replica stopped.
    pub async fn join_jobs(self: Arc<Self>) {
        let mut tick = tokio::time::interval(JOIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let job = match self.lifecycle.store().shared_rotation_job().await {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for a rotation job to join");
                    continue;
                }
            };
            let caller = Caller {
                token_id: job.started_by.clone(),
                role: Some(Role::Admin),
                source_addr: None,
                idp_mfa: false,
            };
            self.spawn_work(caller, job, None);
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
        if let Err(e) = self.insert(caller, &job, &tenants).await {
            let DomainError::Store(StoreError::Duplicate { .. }) = e else {
                return Err(e);
            };
            // Another job runs, or ran in a process that died: only the first stops us.
            let stale_before = self.lifecycle.now() - STALE_AFTER;
            let interrupted = store
                .interrupt_rotation_jobs(Some(stale_before), self.lifecycle.now())
                .await?;
            let retried = if interrupted > 0 {
                self.insert(caller, &job, &tenants).await
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
        let (progress, receiver) = watch::channel(JobSnapshot {
            job: job.clone(),
            last: None,
        });
        *lock(&self.running) = Some(Running {
            job_id: job.job_id.clone(),
            progress: receiver.clone(),
        });
        self.spawn_work(caller.clone(), job, Some(progress));
        Ok(receiver)
    }

    /// Records the new job, its queue and its audit event together.
    async fn insert(
        &self,
        caller: &Caller,
        job: &JobRecord,
        tenants: &[TenantId],
    ) -> Result<(), DomainError> {
        let stored = job.clone();
        let tenants = tenants.to_vec();
        self.lifecycle
            .audited(caller, "secrets.rotate_all", None, move |tx| {
                Box::pin(async move {
                    tx.insert_rotation_job(&stored).await?;
                    tx.insert_job_tenants(&stored.job_id, &tenants).await?;
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

    /// Works on `job` unless this replica already does.
    fn spawn_work(
        self: &Arc<Self>,
        caller: Caller,
        job: JobRecord,
        progress: Option<watch::Sender<JobSnapshot>>,
    ) {
        let mut working = lock(&self.working);
        if working.contains_key(&job.job_id) {
            return;
        }
        let job_id = job.job_id.clone();
        let claim = JobClaim {
            job_id: job.job_id.clone(),
            worker: random_id("w_"),
        };
        let this = Arc::clone(self);
        let task_claim = claim.clone();
        // The entry is made before the task can remove it, under one lock.
        let task = tokio::spawn(async move {
            let job_id = job.job_id.clone();
            Arc::clone(&this)
                .work(caller, job, task_claim, progress)
                .await;
            lock(&this.working).remove(&job_id);
        });
        working.insert(
            job_id,
            Working {
                task: task.abort_handle(),
                claim,
            },
        );
    }

    /// Claims tenants of the job and rotates them until none is left to claim, then completes
    /// the job, unless another replica did. Returns when the job no longer runs.
    async fn work(
        self: Arc<Self>,
        caller: Caller,
        job: JobRecord,
        claim: JobClaim,
        progress: Option<watch::Sender<JobSnapshot>>,
    ) {
        let Some(secret_type) = SecretType::parse(&job.secret_type) else {
            tracing::error!(job = %job.job_id, secret_type = %job.secret_type, "a rotation job of an unknown secret type");
            return;
        };
        tracing::info!(job = %claim.job_id, worker = %claim.worker, "working on a bulk rotation");
        let trigger = Trigger::Job(claim.clone());
        let lifecycle = &self.lifecycle;
        // The SQL part of the tenants' rotations, several key sets per transaction; stops when
        // this task ends or is aborted.
        let group = Arc::new(GroupCommit::start(Arc::clone(lifecycle)));
        let mut snapshot = JobSnapshot { job, last: None };
        let mut queue: VecDeque<ClaimedTenant> = VecDeque::new();
        let mut outcomes: Vec<TenantOutcome> = Vec::new();
        // Each tenant is a task of its own, so that tenants go on (and release their locks)
        // while this task records progress; dropping the set (shutdown) aborts them.
        let mut tasks = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.tick().await;
        let mut last_recorded = Instant::now();
        while snapshot.running() {
            if queue.is_empty() && tasks.len() < self.concurrency {
                queue.extend(self.claim(&claim).await);
            }
            while tasks.len() < self.concurrency
                && let Some(tenant) = queue.pop_front()
            {
                let (lifecycle, group, caller, trigger) = (
                    lifecycle.clone(),
                    Arc::clone(&group),
                    caller.clone(),
                    trigger.clone(),
                );
                let name = tenant.tenant_id.clone();
                let handle = tasks.spawn(async move {
                    let rotation = Rotation {
                        lifecycle: &lifecycle,
                        group: &group,
                        caller: &caller,
                        trigger: &trigger,
                    };
                    rotation.tenant(&tenant, secret_type).await
                });
                names.insert(handle.id(), name);
            }
            if tasks.is_empty() {
                // Nothing in hand: record, then complete the job or wait for the tenants other
                // replicas hold (and take them over if their lease runs out).
                self.record(&claim, &mut outcomes, &mut snapshot).await;
                if let Some(done) = self.complete(&caller, &claim.job_id).await {
                    snapshot.job = done;
                } else if snapshot.running() {
                    tokio::time::sleep(IDLE_POLL).await;
                }
                if let Some(progress) = &progress {
                    progress.send_replace(snapshot.clone());
                }
                continue;
            }
            tokio::select! {
                joined = tasks.join_next_with_id() => {
                    let result = match joined {
                        None => continue,
                        Some(Ok((_, result))) => result,
                        Some(Err(e)) => {
                            // Every task's id went into `names` when it was spawned.
                            let Some(tenant_id) = names.remove(&e.id()) else {
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
                    outcomes.push(result.outcome());
                    snapshot.count(result);
                    if let Some(progress) = &progress {
                        progress.send_replace(snapshot.clone());
                    }
                }
                _ = renew.tick() => self.renew(&claim).await,
            }
            // Progress readable from other replicas, at most every PROGRESS_EVERY: a commit per
            // tenant would cost a synced write each. An outcome not recorded when this replica
            // dies is worked out again by the replica that takes the tenant over.
            if last_recorded.elapsed() >= PROGRESS_EVERY {
                last_recorded = Instant::now();
                self.record(&claim, &mut outcomes, &mut snapshot).await;
            }
        }
        let job = &snapshot.job;
        tracing::info!(job = %job.job_id, worker = %claim.worker, status = %job.status, rotated = job.rotated, failed = job.failed, skipped = job.skipped, "bulk rotation no longer running");
        lock(&self.running).take_if(|r| r.job_id == job.job_id);
        if let Some(progress) = progress {
            progress.send_replace(JobSnapshot {
                job: snapshot.job,
                last: None,
            });
        }
    }

    /// Claims as many of the job's tenants as this replica works on at once.
    async fn claim(&self, claim: &JobClaim) -> Vec<ClaimedTenant> {
        let now = self.lifecycle.now();
        let lease_until = now + chrono::Duration::from_std(self.lease).unwrap_or_default();
        let claimed = async {
            let mut tx = self.lifecycle.store().begin_unaudited().await?;
            let claimed = tx
                .claim_job_tenants(claim, self.concurrency, now, lease_until)
                .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(claimed)
        };
        claimed.await.unwrap_or_else(|e| {
            tracing::warn!(job = %claim.job_id, error = %e, "cannot claim a rotation job's tenants");
            Vec::new()
        })
    }

    /// Raises the lease of this worker's claims.
    async fn renew(&self, claim: &JobClaim) {
        let lease_until =
            self.lifecycle.now() + chrono::Duration::from_std(self.lease).unwrap_or_default();
        let renewed = async {
            let mut tx = self.lifecycle.store().begin_unaudited().await?;
            tx.renew_job_claims(claim, lease_until).await?;
            tx.commit().await
        };
        if let Err(e) = renewed.await {
            tracing::warn!(job = %claim.job_id, error = %e, "cannot renew a rotation job's claims");
        }
    }

    /// Records the outcomes this worker has not recorded yet and the job's counts, and reads the
    /// job back (another replica may have completed it). What cannot be recorded is kept for the
    /// next try.
    async fn record(
        &self,
        claim: &JobClaim,
        outcomes: &mut Vec<TenantOutcome>,
        snapshot: &mut JobSnapshot,
    ) {
        let store = self.lifecycle.store();
        let at = self.lifecycle.now();
        let recorded = async {
            let mut tx = store.begin_unaudited().await?;
            tx.record_job_outcomes(claim, outcomes).await?;
            tx.tally_rotation_job(&claim.job_id, at).await?;
            tx.commit().await?;
            self.lifecycle.job_progressed(&claim.job_id);
            store.rotation_job(&claim.job_id).await
        };
        match recorded.await {
            Ok(job) => {
                outcomes.clear();
                if let Some(job) = job {
                    snapshot.job = job;
                }
            }
            Err(e) => {
                tracing::warn!(job = %claim.job_id, error = %e, "cannot record a rotation job's progress");
            }
        }
    }

    /// Completes the job, with its audit event, if no tenant is open and no other replica
    /// completed it first. The job as completed, or `None`.
    async fn complete(&self, caller: &Caller, job_id: &str) -> Option<JobRecord> {
        match self.lifecycle.store().job_tally(job_id).await {
            Ok(tally) if tally.open() == 0 => {}
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "cannot read a rotation job's progress");
                return None;
            }
        }
        let at = self.lifecycle.now();
        let job_id = job_id.to_owned();
        let completed = self
            .lifecycle
            .audited(caller, "secrets.rotate_all_finished", None, move |tx| {
                Box::pin(async move {
                    // Completed already (by another replica), or a tenant reopened: nothing.
                    let Some(done) = tx.complete_rotation_job(&job_id, at).await? else {
                        return Err(DomainError::ConcurrentModification);
                    };
                    let detail = json!({
                        "jobId": done.job_id,
                        "secretType": done.secret_type,
                        "rotated": done.rotated,
                        "failed": done.failed,
                        "skipped": done.skipped,
                    });
                    Ok((done, detail))
                })
            })
            .await;
        match completed {
            Ok(done) => {
                self.lifecycle.job_progressed(&done.job_id);
                Some(done)
            }
            Err(DomainError::ConcurrentModification) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the end of a rotation job");
                None
            }
        }
    }
}

fn failure_of(result: &TenantResult) -> Option<JobFailure> {
    (result.outcome == "failed").then(|| JobFailure {
        tenant_id: result.tenant_id.clone(),
        code: result.code.unwrap_or("internal").to_owned(),
        reason: result.reason.clone().unwrap_or_default(),
    })
}

/// What a job's tenant tasks rotate with.
struct Rotation<'a> {
    lifecycle: &'a KeyLifecycle,
    group: &'a GroupCommit,
    caller: &'a Caller,
    trigger: &'a Trigger,
}

impl Rotation<'_> {
    /// Rotates one tenant's secret of `secret_type`, but not the secrets the job already
    /// rotated for it (a replica that died held it before). For `ssh`, both key sets are tried
    /// at once (and committed together, with other tenants' key sets) even when one fails;
    /// revoked key sets are left alone (a revoked key is replaced by a regenerate, which is an admin's
    /// decision, not a rotation's).
    async fn tenant(&self, claimed: &ClaimedTenant, secret_type: SecretType) -> TenantResult {
        let Self {
            lifecycle,
            group,
            caller,
            trigger,
        } = *self;
        let tenant = &claimed.tenant_id;
        let done = |secret: &str| claimed.done.iter().any(|d| d == secret);
        let result = |outcome, error: Option<DomainError>| TenantResult {
            tenant_id: tenant.clone(),
            outcome,
            code: error.as_ref().map(DomainError::code),
            reason: error.map(|e| e.to_string()),
        };
        match secret_type {
            SecretType::Ssh => {
                let kinds: Vec<KeyKind> = KeyKind::ALL
                    .into_iter()
                    .filter(|kind| !done(kind.secret_name()))
                    .collect();
                let mut rotated = KeyKind::ALL.len() - kinds.len();
                let mut first_error = None;
                // A registered key is its owner's to replace: skipped, and said why.
                let mut registered = None;
                let outcomes = lifecycle
                    .replace_keys_grouped(group, caller, tenant, &kinds, Replace::Rotate, trigger)
                    .await;
                for outcome in outcomes {
                    match outcome {
                        Ok(_) => rotated += 1,
                        Err(DomainError::KeyRevoked | DomainError::TenantOffboarded(_)) => {}
                        Err(e @ DomainError::KeyRegistered) => registered = Some(e),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                match (first_error, rotated) {
                    (Some(e), _) => result("failed", Some(e)),
                    (None, 0) => result("skipped", registered),
                    (None, _) => result("rotated", None),
                }
            }
            SecretType::Smtp | SecretType::Dkim => {
                let kind = if secret_type == SecretType::Smtp {
                    TenantSecretKind::Smtp
                } else {
                    TenantSecretKind::Dkim
                };
                if done(kind.name()) {
                    return result("rotated", None);
                }
                match lifecycle
                    .rotate_secret_grouped(group, caller, tenant, kind, trigger)
                    .await
                {
                    Ok(_) => result("rotated", None),
                    // Its secrets are being (or were) destroyed: nothing of it is rotated again.
                    Err(DomainError::TenantOffboarded(_)) => result("skipped", None),
                    Err(e) => result("failed", Some(e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_types_are_read_back_by_name() {
        for t in SecretType::ALL {
            assert_eq!(SecretType::parse(t.as_str()), Some(t));
        }
        assert_eq!(SecretType::parse("SSH"), None);
    }

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
