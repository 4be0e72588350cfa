//! Group commit for bulk rotations: many key sets' replacements in one SQL transaction.
//!
//! A rotate-all replaces two key sets per tenant. One transaction each costs a commit each (a
//! synced write on SQLite and PostgreSQL alike) under the audit log's lock (on SQLite, the one
//! writer), so the job ran at the pace of serialised commits. Here the order stays the one every
//! replacement follows — the new key in Vault first, then SQL — but the SQL part of every
//! replacement ready at that moment goes into one transaction, up to [`MAX_BATCH`]:
//!
//! - Each replacement keeps its own audit event (the tenant's own audit view lists it), its key
//!   history row and its job-queue record; only the transaction is shared.
//! - Each is written inside a savepoint: one that conflicts (another replica rotated the key set)
//!   or fails is undone alone and its caller gets its error, the others commit.
//! - A transaction that cannot begin or commit (the database away) is retried one replacement per
//!   transaction, so that each caller gets the error of its own.
//! - The callers hold their tenants' locks until their replacement is committed, as a single
//!   rotation does; the committer itself waits for no lock.
//!
//! A [`GroupCommit`] belongs to one bulk job on one replica; dropping it stops its committer, and
//! the callers still waiting get [`DomainError::Internal`] (the job's tasks are being aborted
//! then anyway).

use std::sync::Arc;

use keyward_common::{KeyKind, TenantId};
use tokio::sync::{mpsc, oneshot};

use super::{DomainError, KeyLifecycle, Prepared, Replace, Replacement, Trigger};
use crate::caller::Caller;
use crate::store::KeySetRecord;

/// Most replacements in one transaction: enough that a 10,000-tenant job commits a few hundred
/// times instead of 20,000, few enough that a transaction (which holds the audit log's lock)
/// stays in the tens of milliseconds.
pub const MAX_BATCH: usize = 128;

/// A replacement waiting for its commit, with where its outcome goes.
#[derive(Debug)]
struct Pending {
    replacement: Box<Replacement>,
    caller: Caller,
    trigger: Trigger,
    outcome: oneshot::Sender<Result<KeySetRecord, DomainError>>,
}

/// The committer of one bulk job's replacements (see the module).
#[derive(Debug)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    committer: tokio::task::JoinHandle<()>,
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.committer.abort();
    }
}

impl GroupCommit {
    /// Starts a committer over `lifecycle`.
    pub fn start(lifecycle: Arc<KeyLifecycle>) -> Self {
        let (queue, waiting) = mpsc::channel(MAX_BATCH * 4);
        let committer = tokio::spawn(commit_until_closed(lifecycle, waiting));
        Self { queue, committer }
    }

    async fn commit(
        &self,
        replacement: Box<Replacement>,
        caller: &Caller,
        trigger: &Trigger,
    ) -> Result<KeySetRecord, DomainError> {
        let (outcome, committed) = oneshot::channel();
        let pending = Pending {
            replacement,
            caller: caller.clone(),
            trigger: trigger.clone(),
            outcome,
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| DomainError::Internal)?;
        committed.await.map_err(|_| DomainError::Internal)?
    }
}

/// Takes whatever is waiting (at least one, at most [`MAX_BATCH`]) and commits it, until every
/// sender is gone.
async fn commit_until_closed(lifecycle: Arc<KeyLifecycle>, mut waiting: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        lifecycle.commit_batch(std::mem::take(&mut batch)).await;
    }
}

impl KeyLifecycle {
    /// [`KeyLifecycle::replace_key_as`] with the SQL part committed by `group` together with
    /// the other replacements ready at the same time: the same checks, Vault write, records,
    /// audit events (of failures too) and metrics.
    pub async fn replace_key_grouped(
        &self,
        group: &GroupCommit,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
        how: Replace,
        trigger: &Trigger,
    ) -> Result<KeySetRecord, DomainError> {
        let result = async {
            let _guard = self.locks.lock(tenant).await;
            match self.prepare_replacement(tenant, kind, how, trigger).await? {
                Prepared::Unchanged(old) => Ok(old),
                Prepared::Ready(replacement) => {
                    group.commit(Box::new(replacement), caller, trigger).await
                }
            }
        }
        .await;
        self.replace_done(caller, tenant, how, result).await
    }

    /// Commits `batch` in one transaction, each replacement in a savepoint, and tells each
    /// caller its outcome; falls back to one transaction each when the shared one fails.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        let outcomes = async {
            let mut tx = self.store.begin().await?;
            let mut outcomes = Vec::with_capacity(batch.len());
            for pending in &batch {
                tx.savepoint().await?;
                let applied = self
                    .apply_replacement(
                        &mut tx,
                        &pending.caller,
                        &pending.replacement,
                        &pending.trigger,
                    )
                    .await;
                match applied {
                    Ok(()) => tx.release_savepoint().await?,
                    Err(_) => tx.rollback_to_savepoint().await?,
                }
                outcomes.push(applied);
            }
            tx.commit().await?;
            Ok::<_, DomainError>(outcomes)
        }
        .await;
        match outcomes {
            Ok(outcomes) => {
                metrics::histogram!("keyward_bulk_commit_batch_size").record(batch.len() as f64);
                for (pending, applied) in batch.into_iter().zip(outcomes) {
                    let outcome = applied.map(|()| self.replaced(*pending.replacement));
                    let _ = pending.outcome.send(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, replacements = batch.len(), "a group commit failed; committing its replacements one by one");
                for pending in batch {
                    let outcome = self.commit_one(&pending).await;
                    let outcome = outcome.map(|()| self.replaced(*pending.replacement));
                    let _ = pending.outcome.send(outcome);
                }
            }
        }
    }

    async fn commit_one(&self, pending: &Pending) -> Result<(), DomainError> {
        let mut tx = self.store.begin().await?;
        self.apply_replacement(
            &mut tx,
            &pending.caller,
            &pending.replacement,
            &pending.trigger,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::tests::{Fixture, audit_actions, fixture, new_tenant};
    use crate::store::JobClaim;

    async fn tenants(f: &Fixture, count: usize) -> Vec<TenantId> {
        let mut ids = Vec::new();
        for i in 0..count {
            let tenant: TenantId = format!("g{i}").parse().unwrap();
            let new = crate::lifecycle::NewTenant {
                tenant_id: tenant.clone(),
                ..new_tenant()
            };
            f.lifecycle
                .create_tenant(&Caller::system(), new)
                .await
                .unwrap();
            ids.push(tenant);
        }
        ids
    }

    async fn generation(f: &Fixture, tenant: &TenantId, kind: KeyKind) -> i64 {
        let set = f.lifecycle.store().key_set(tenant, kind).await.unwrap();
        set.unwrap().generation
    }

    /// A replacement that fails after its first write in a shared transaction is undone alone:
    /// the others commit, with their audit events, and the chain verifies.
    #[tokio::test]
    async fn a_failing_replacement_in_a_batch_is_undone_alone() {
        let f = fixture().await;
        let ids = tenants(&f, 3).await;
        let caller = Caller::system();
        // The middle one's claim is not held (no such job): its key set is written, then the
        // job's record refuses it.
        let lost = Trigger::Job(JobClaim {
            job_id: "j_gone".into(),
            worker: "w_gone".into(),
        });
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for (i, tenant) in ids.iter().enumerate() {
            let trigger = if i == 1 {
                lost.clone()
            } else {
                Trigger::Request
            };
            let prepared = f
                .lifecycle
                .prepare_replacement(tenant, KeyKind::Tenant, Replace::Rotate, &trigger)
                .await
                .unwrap();
            let Prepared::Ready(replacement) = prepared else {
                panic!("a requested rotation is never unchanged");
            };
            let (outcome, answer) = oneshot::channel();
            batch.push(Pending {
                replacement: Box::new(replacement),
                caller: caller.clone(),
                trigger,
                outcome,
            });
            answers.push(answer);
        }
        f.changes.take();
        f.lifecycle.commit_batch(batch).await;

        let mut outcomes = Vec::new();
        for answer in answers {
            outcomes.push(answer.await.unwrap().map(|set| set.generation));
        }
        assert!(matches!(outcomes[0], Ok(2)), "{outcomes:?}");
        assert!(
            matches!(outcomes[1], Err(DomainError::ConcurrentModification)),
            "{outcomes:?}"
        );
        assert!(matches!(outcomes[2], Ok(2)), "{outcomes:?}");
        assert_eq!(generation(&f, &ids[0], KeyKind::Tenant).await, 2);
        assert_eq!(generation(&f, &ids[1], KeyKind::Tenant).await, 1, "undone");
        assert_eq!(generation(&f, &ids[2], KeyKind::Tenant).await, 2);
        let rotations = audit_actions(&f)
            .await
            .into_iter()
            .filter(|(action, _)| action == "key.rotate")
            .count();
        assert_eq!(rotations, 2, "one audit event per committed replacement");
        assert_eq!(
            f.changes.take(),
            vec![
                crate::changes::Change::Tenant(ids[0].clone()),
                crate::changes::Change::Tenant(ids[2].clone())
            ]
        );
        assert!(f.lifecycle.store().verify_audit_chain().await.unwrap().ok);
    }

    /// Many callers at once through one committer: every key set rotated once, each with its
    /// own audit event, in a chain that verifies.
    #[tokio::test]
    async fn concurrent_replacements_through_one_committer_all_commit_once() {
        let f = fixture().await;
        let ids = tenants(&f, 12).await;
        let lifecycle = Arc::new(f.lifecycle);
        let group = GroupCommit::start(Arc::clone(&lifecycle));
        let caller = Caller::system();
        let calls = ids.iter().flat_map(|tenant| {
            KeyKind::ALL.map(|kind| {
                lifecycle.replace_key_grouped(
                    &group,
                    &caller,
                    tenant,
                    kind,
                    Replace::Rotate,
                    &Trigger::Request,
                )
            })
        });
        for result in futures::future::join_all(calls).await {
            assert_eq!(result.unwrap().generation, 2);
        }
        for tenant in &ids {
            for kind in KeyKind::ALL {
                let set = lifecycle.store().key_set(tenant, kind).await.unwrap();
                assert_eq!(set.unwrap().generation, 2, "{tenant} {kind}");
            }
        }
        let page = lifecycle
            .store()
            .audit_events(&crate::store::AuditFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let rotations = page
            .events
            .iter()
            .filter(|e| e.action == "key.rotate" && e.outcome == "success")
            .count();
        assert_eq!(rotations, ids.len() * 2);
        assert!(lifecycle.store().verify_audit_chain().await.unwrap().ok);
    }
}
