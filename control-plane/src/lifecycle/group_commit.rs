//! Group commit for bulk rotations: many key sets' replacements (or tenant secrets' rotations)
//! in one SQL transaction.
//!
//! A rotate-all replaces two key sets per tenant (or its SMTP credentials or DKIM key). One transaction each costs a commit each (a
//! synced write on SQLite and PostgreSQL alike) under the audit log's lock (on SQLite, the one
//! writer), so the job ran at the pace of serialised commits. Here the order stays the one every
//! replacement follows — the new key in Vault first, then SQL — but the SQL part of every
//! replacement ready at that moment goes into one transaction, up to [`MAX_BATCH`] tenants:
//!
//! - Each replacement or rotation keeps its own audit event (the tenant's own audit view lists it), its key
//!   history row and its job-queue record; only the transaction is shared.
//! - Each is written inside a savepoint: one that conflicts (another replica rotated the key set)
//!   or fails is undone alone and its caller gets its error, the others commit.
//! - A transaction that cannot begin or commit (the database away) is retried one replacement per
//!   transaction, so that each caller gets the error of its own.
//! - A tenant's key sets go into the same transaction, and each tenant whose key sets changed is
//!   announced once: its hosts get one new state for both keys, not one per key.
//! - The callers hold their tenants' locks until their replacements are committed, as a single
//!   rotation does; the committer itself waits for no lock.
//!
//! A [`GroupCommit`] belongs to one bulk job on one replica; dropping it stops its committer, and
//! the callers still waiting get [`DomainError::Internal`] (the job's tasks are being aborted
//! then anyway).

use std::sync::Arc;

use keyward_common::{KeyKind, TenantId};
use tokio::sync::{mpsc, oneshot};

use super::secrets::SecretReplacement;
use super::{DomainError, KeyLifecycle, Prepared, Replace, Replacement, Trigger};
use crate::caller::Caller;
use crate::changes::Change;
use crate::store::{KeySetRecord, TenantSecretRecord, WriteTx};

/// Most tenants in one transaction (each with its key sets: 128 SSH key sets): enough that a
/// 10,000-tenant job commits a few hundred times instead of 20,000, few enough that a transaction
/// (which holds the audit log's lock) stays in the tens of milliseconds.
pub const MAX_BATCH: usize = 64;

/// What waits for its SQL part: written to Vault already.
#[derive(Debug)]
enum Staged {
    Key(Box<Replacement>),
    Secret(SecretReplacement),
}

/// What a staged write became once committed.
#[derive(Debug)]
enum Committed {
    Key(KeySetRecord),
    Secret(TenantSecretRecord),
}

/// A staged write waiting for its commit, with where its outcome goes.
#[derive(Debug)]
struct Pending {
    staged: Staged,
    caller: Caller,
    trigger: Trigger,
    outcome: oneshot::Sender<Result<Committed, DomainError>>,
}

/// One tenant's replacements: committed in the same transaction, so that its hosts get one new
/// state for all of them.
type Unit = Vec<Pending>;

/// The committer of one bulk job's replacements (see the module).
#[derive(Debug)]
pub struct GroupCommit {
    queue: mpsc::Sender<Unit>,
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

    /// Commits `staged` in one transaction (with other tenants'), each in a savepoint: their
    /// outcomes, in their order.
    async fn commit_together(
        &self,
        staged: Vec<Staged>,
        caller: &Caller,
        trigger: &Trigger,
    ) -> Vec<Result<Committed, DomainError>> {
        let mut unit = Vec::with_capacity(staged.len());
        let mut answers = Vec::with_capacity(staged.len());
        for staged in staged {
            let (outcome, answer) = oneshot::channel();
            unit.push(Pending {
                staged,
                caller: caller.clone(),
                trigger: trigger.clone(),
                outcome,
            });
            answers.push(answer);
        }
        let queued = self.queue.send(unit).await.is_ok();
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(match (queued, answer.await) {
                (true, Ok(outcome)) => outcome,
                _ => Err(DomainError::Internal),
            });
        }
        outcomes
    }

    /// Commits a tenant secret's rotation, written to Vault already, with the others ready.
    pub(super) async fn commit_secret(
        &self,
        replacement: SecretReplacement,
        caller: &Caller,
        trigger: &Trigger,
    ) -> Result<TenantSecretRecord, DomainError> {
        let committed = self
            .commit_together(vec![Staged::Secret(replacement)], caller, trigger)
            .await;
        match committed.into_iter().next() {
            Some(Ok(Committed::Secret(record))) => Ok(record),
            Some(Err(e)) => Err(e),
            Some(Ok(Committed::Key(_))) | None => Err(DomainError::Internal),
        }
    }
}

/// Takes whatever is waiting (at least one, at most [`MAX_BATCH`]) and commits it, until every
/// sender is gone.
async fn commit_until_closed(lifecycle: Arc<KeyLifecycle>, mut waiting: mpsc::Receiver<Unit>) {
    let mut units = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut units, MAX_BATCH).await > 0 {
        lifecycle
            .commit_batch(units.drain(..).flatten().collect())
            .await;
    }
}

impl KeyLifecycle {
    /// [`KeyLifecycle::replace_key_as`] for several key sets of one tenant, with their SQL part
    /// committed by `group` in one transaction, together with the other tenants' replacements
    /// ready at the same time: the tenant's hosts get one new state for all of them. The same
    /// checks, Vault writes (the key sets' at once), records, audit events (of failures too) and
    /// metrics, each key set with its own outcome, in the order of `kinds`.
    pub async fn replace_keys_grouped(
        &self,
        group: &GroupCommit,
        caller: &Caller,
        tenant: &TenantId,
        kinds: &[KeyKind],
        how: Replace,
        trigger: &Trigger,
    ) -> Vec<Result<KeySetRecord, DomainError>> {
        let mut outcomes: Vec<Option<Result<KeySetRecord, DomainError>>> =
            kinds.iter().map(|_| None).collect();
        {
            let _guard = self.locks.lock(tenant).await;
            let prepared = futures::future::join_all(
                kinds
                    .iter()
                    .map(|&kind| self.prepare_replacement(tenant, kind, how, trigger)),
            )
            .await;
            let mut ready = Vec::new();
            let mut ready_at = Vec::new();
            for ((prepared, outcome), at) in prepared.into_iter().zip(&mut outcomes).zip(0..) {
                match prepared {
                    Ok(Prepared::Unchanged(old)) => *outcome = Some(Ok(old)),
                    Ok(Prepared::Ready(replacement)) => {
                        ready.push(Staged::Key(Box::new(replacement)));
                        ready_at.push(at);
                    }
                    Err(e) => *outcome = Some(Err(e)),
                }
            }
            if !ready.is_empty() {
                let committed = group.commit_together(ready, caller, trigger).await;
                for (at, result) in ready_at.into_iter().zip(committed) {
                    if let Some(outcome) = outcomes.get_mut(at) {
                        *outcome = Some(match result {
                            Ok(Committed::Key(record)) => Ok(record),
                            Ok(Committed::Secret(_)) => Err(DomainError::Internal),
                            Err(e) => Err(e),
                        });
                    }
                }
            }
        }
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let result = outcome.unwrap_or(Err(DomainError::Internal));
            results.push(self.replace_done(caller, tenant, how, result).await);
        }
        results
    }

    /// Writes one staged write's SQL part in `tx`.
    async fn apply_staged(&self, tx: &mut WriteTx, pending: &Pending) -> Result<(), DomainError> {
        let (caller, trigger) = (&pending.caller, &pending.trigger);
        match &pending.staged {
            Staged::Key(replacement) => {
                self.apply_replacement(tx, caller, replacement, trigger)
                    .await
            }
            Staged::Secret(replacement) => {
                self.apply_secret(tx, caller, replacement, trigger).await
            }
        }
    }

    /// Commits `batch` in one transaction, each staged write in a savepoint, and tells each
    /// caller its outcome; falls back to one transaction each when the shared one fails.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        let outcomes = async {
            let mut tx = self.store.begin().await?;
            let mut outcomes = Vec::with_capacity(batch.len());
            for pending in &batch {
                tx.savepoint().await?;
                let applied = self.apply_staged(&mut tx, pending).await;
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
        // Each tenant whose key sets changed is announced once, however many changed; tenant
        // secrets are on no host.
        let mut changed: Vec<TenantId> = Vec::new();
        let mut answer = |pending: Pending, applied: Result<(), DomainError>| {
            let outcome = applied.map(|()| match pending.staged {
                Staged::Key(replacement) => {
                    if !changed.contains(&replacement.tenant) {
                        changed.push(replacement.tenant.clone());
                    }
                    Committed::Key(self.replaced(*replacement))
                }
                Staged::Secret(replacement) => Committed::Secret(self.secret_replaced(replacement)),
            });
            let _ = pending.outcome.send(outcome);
        };
        match outcomes {
            Ok(outcomes) => {
                metrics::histogram!("keyward_bulk_commit_batch_size").record(batch.len() as f64);
                for (pending, applied) in batch.into_iter().zip(outcomes) {
                    answer(pending, applied);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, replacements = batch.len(), "a group commit failed; committing its replacements one by one");
                for pending in batch {
                    let applied = async {
                        let mut tx = self.store.begin().await?;
                        self.apply_staged(&mut tx, &pending).await?;
                        tx.commit().await?;
                        Ok(())
                    }
                    .await;
                    answer(pending, applied);
                }
            }
        }
        for tenant in changed {
            self.changes.changed(Change::Tenant(tenant));
        }
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
                staged: Staged::Key(Box::new(replacement)),
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
            outcomes.push(answer.await.unwrap().map(|committed| match committed {
                Committed::Key(set) => set.generation,
                Committed::Secret(_) => unreachable!("a key set was staged"),
            }));
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
    /// own audit event, in a chain that verifies; each tenant's two key sets in one transaction,
    /// so that each tenant is announced (its hosts get a new state) once.
    #[tokio::test]
    async fn concurrent_replacements_through_one_committer_all_commit_once() {
        let f = fixture().await;
        let ids = tenants(&f, 12).await;
        f.changes.take();
        let lifecycle = Arc::new(f.lifecycle);
        let group = GroupCommit::start(Arc::clone(&lifecycle));
        let caller = Caller::system();
        let calls = ids.iter().map(|tenant| {
            lifecycle.replace_keys_grouped(
                &group,
                &caller,
                tenant,
                &KeyKind::ALL,
                Replace::Rotate,
                &Trigger::Request,
            )
        });
        for results in futures::future::join_all(calls).await {
            assert_eq!(results.len(), 2);
            for result in results {
                assert_eq!(result.unwrap().generation, 2);
            }
        }
        let mut announced = f.changes.take();
        announced.sort_by_key(|change| format!("{change:?}"));
        let mut expected: Vec<_> = ids
            .iter()
            .map(|t| crate::changes::Change::Tenant(t.clone()))
            .collect();
        expected.sort_by_key(|change| format!("{change:?}"));
        assert_eq!(announced, expected, "each tenant announced once");
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

    /// SMTP rotations of many tenants through one committer: each committed once with its own
    /// audit event, none announced to hosts, and a rotation over a generation that moved
    /// meanwhile is a conflict that writes nothing.
    #[tokio::test]
    async fn secret_rotations_through_one_committer_commit_once_and_conflicts_write_nothing() {
        use crate::lifecycle::TenantSecretKind;
        let f = fixture().await;
        let ids = tenants(&f, 6).await;
        f.changes.take();
        let lifecycle = Arc::new(f.lifecycle);
        let group = GroupCommit::start(Arc::clone(&lifecycle));
        let caller = Caller::system();
        for round in 1..=2 {
            let calls = ids.iter().map(|tenant| {
                lifecycle.rotate_secret_grouped(
                    &group,
                    &caller,
                    tenant,
                    TenantSecretKind::Smtp,
                    &Trigger::Request,
                )
            });
            for record in futures::future::join_all(calls).await {
                assert_eq!(record.unwrap().generation, round);
            }
        }
        assert_eq!(f.changes.take(), vec![], "no host holds a tenant secret");
        let rotations = |events: &[crate::store::AuditRecord]| {
            events
                .iter()
                .filter(|e| e.action == "smtp.rotate" && e.outcome == "success")
                .count()
        };
        let page = lifecycle
            .store()
            .audit_events(&crate::store::AuditFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rotations(&page.events), ids.len() * 2);

        // Made over generation 2 while another rotation committed generation 3: refused.
        let stale = lifecycle
            .prepare_secret(&ids[0], TenantSecretKind::Smtp)
            .await
            .unwrap();
        lifecycle
            .rotate_secret(&caller, &ids[0], TenantSecretKind::Smtp, &Trigger::Request)
            .await
            .unwrap();
        let refused = group.commit_secret(stale, &caller, &Trigger::Request).await;
        assert!(
            matches!(refused, Err(DomainError::ConcurrentModification)),
            "{refused:?}"
        );
        let kept = lifecycle
            .store()
            .tenant_secret(&ids[0], "smtp")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.generation, 3);
        assert!(lifecycle.store().verify_audit_chain().await.unwrap().ok);
    }
}
