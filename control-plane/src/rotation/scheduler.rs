//! The rotation scheduler: sleeps until the earliest `next_rotation` of any active key set (or at
//! most `rotation.max_sleep`, so that a changed clock or a policy set on another replica is
//! noticed), wakes early when a policy changes on this replica, and rotates every key set that is
//! due, both kinds, with the tenant's policy. There is no polling of the key sets in between.
//!
//! Rotations missed while the control plane was down are simply due at start: the first round
//! runs at once. A key set whose rotation fails (Vault sealed...) stays due and is tried again
//! after `rotation.retry_after`, doubled for every round that fails again, up to `max_sleep`.
//!
//! One scheduler per deployment: on PostgreSQL the replica holding the scheduler lease (a session
//! advisory lock) schedules and the others retry every 30 s; on SQLite there is one process.
//! The time comes from the lifecycle's clock; [`RotationScheduler::run_due`] is what each round
//! does, so tests drive it with a manual clock instead of waiting.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::caller::Caller;
use crate::config::RotationConfig;
use crate::lifecycle::DomainError;
use crate::lifecycle::{KeyLifecycle, Replace, Trigger};
use crate::store::SchedulerLease;

/// How often a replica without the lease asks for it again: soon at first (the holder may have
/// just stopped, and PostgreSQL frees its lock when its session ends), then every 30 s.
const LEASE_RETRY_FIRST: Duration = Duration::from_secs(1);
const LEASE_RETRY: Duration = Duration::from_secs(30);

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DueReport {
    pub rotated: usize,
    pub failed: usize,
    /// Due when listed, but rotated meanwhile (by hand, or by a bulk job).
    pub skipped: usize,
    /// Registered keys found overdue: keyward does not replace them; each generation's reminder
    /// (`key.rotation_reminder`) is recorded once.
    pub reminded: usize,
}

/// How long to sleep before the next round: until the earliest due time, at most `max_sleep`;
/// after a failed round, at least `retry_after` (else a key set that keeps failing would be
/// retried at once, forever).
pub fn next_wake(
    now: DateTime<Utc>,
    earliest_due: Option<DateTime<Utc>>,
    max_sleep: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let until_due = earliest_due.map_or(max_sleep, |due| {
        (due - now).to_std().unwrap_or(Duration::ZERO)
    });
    let wait = until_due.min(max_sleep);
    match retry_after {
        Some(retry) => wait.max(retry).min(max_sleep),
        None => wait,
    }
}

/// The scheduler of one control plane.
#[derive(Debug)]
pub struct RotationScheduler {
    lifecycle: Arc<KeyLifecycle>,
    config: RotationConfig,
}

impl RotationScheduler {
    pub fn new(lifecycle: Arc<KeyLifecycle>, config: RotationConfig) -> Self {
        Self { lifecycle, config }
    }

    fn concurrency(&self) -> usize {
        self.config.bulk_concurrency()
    }

    /// Rotates every active generated key set due at `now` (the lifecycle's clock time), several
    /// tenants at once, and reminds the overdue registered ones. Each rotation is audited on its own (`key.rotate`, trigger `schedule`) and pushed to
    /// the tenant's hosts; one failing does not stop the others.
    pub async fn run_due(&self, now: DateTime<Utc>) -> Result<DueReport, DomainError> {
        let due = self.lifecycle.store().due_key_sets(now).await?;
        if !due.is_empty() {
            tracing::info!(count = due.len(), "key sets due for rotation");
        }
        let lifecycle = &self.lifecycle;
        let outcomes: Vec<Result<bool, DomainError>> = futures::stream::iter(due)
            .map(|(tenant, kind)| async move {
                let before = lifecycle.store().key_set(&tenant, kind).await?;
                let after = lifecycle
                    .replace_key_as(
                        &Caller::system(),
                        &tenant,
                        kind,
                        Replace::Rotate,
                        &Trigger::Schedule,
                    )
                    .await
                    .inspect_err(|e| {
                        tracing::warn!(tenant = %tenant, %kind, error = %e, "scheduled rotation failed");
                    })?;
                Ok(before.is_none_or(|b| b.generation != after.generation))
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let mut report = DueReport {
            reminded: lifecycle.remind_overdue(now).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "recording rotation reminders failed");
                0
            }),
            ..DueReport::default()
        };
        for outcome in outcomes {
            match outcome {
                Ok(true) => report.rotated += 1,
                Ok(false) => report.skipped += 1,
                Err(_) => report.failed += 1,
            }
        }
        Ok(report)
    }

    /// Runs until the task is aborted: waits for the lease, then schedules while it holds.
    pub async fn run(self: Arc<Self>) {
        let mut retry = LEASE_RETRY_FIRST;
        loop {
            match self.lifecycle.store().try_scheduler_lease().await {
                Ok(Some(mut lease)) => {
                    tracing::info!("this control plane runs the rotation scheduler");
                    self.lead(&mut lease).await;
                    tracing::warn!("lost the rotation scheduler lease");
                    retry = LEASE_RETRY_FIRST;
                }
                Ok(None) => tracing::debug!("another replica runs the rotation scheduler"),
                Err(e) => tracing::warn!(error = %e, "cannot take the rotation scheduler lease"),
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(LEASE_RETRY);
        }
    }

    /// Schedules rounds while `lease` holds.
    async fn lead(&self, lease: &mut SchedulerLease) {
        let mut failing_rounds = 0u32;
        while lease.is_held().await {
            let failed = match self.run_due(self.lifecycle.now()).await {
                Ok(report) => {
                    if report != DueReport::default() {
                        tracing::info!(
                            rotated = report.rotated,
                            failed = report.failed,
                            skipped = report.skipped,
                            "scheduled rotations done"
                        );
                    }
                    report.failed > 0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the key sets due for rotation");
                    true
                }
            };
            failing_rounds = if failed { failing_rounds + 1 } else { 0 };
            let retry = (failing_rounds > 0).then(|| {
                self.config
                    .retry_after
                    .saturating_mul(1 << (failing_rounds - 1).min(16))
            });
            let earliest = match self.lifecycle.store().earliest_next_rotation().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the next rotation time");
                    None
                }
            };
            let wait = next_wake(self.lifecycle.now(), earliest, self.config.max_sleep, retry);
            tracing::debug!(wait_secs = wait.as_secs(), "rotation scheduler sleeps");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.lifecycle.schedule_changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        crate::clock::parse_iso8601(s).unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn sleeps_until_the_earliest_due_time() {
        let now = t("2026-01-01T00:00:00Z");
        let due = t("2026-01-01T00:10:00Z");
        assert_eq!(
            next_wake(now, Some(due), HOUR, None),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn never_longer_than_max_sleep() {
        let now = t("2026-01-01T00:00:00Z");
        let far = t("2026-04-01T00:00:00Z");
        assert_eq!(next_wake(now, Some(far), HOUR, None), HOUR);
        assert_eq!(next_wake(now, None, HOUR, None), HOUR, "no key sets at all");
    }

    #[test]
    fn overdue_keys_run_at_once() {
        let now = t("2026-01-01T00:00:00Z");
        let missed = t("2025-10-01T00:00:00Z");
        assert_eq!(next_wake(now, Some(missed), HOUR, None), Duration::ZERO);
        assert_eq!(next_wake(now, Some(now), HOUR, None), Duration::ZERO);
    }

    #[test]
    fn a_failed_round_waits_before_retrying() {
        let now = t("2026-01-01T00:00:00Z");
        let missed = t("2025-12-31T00:00:00Z");
        let retry = Some(Duration::from_secs(300));
        assert_eq!(
            next_wake(now, Some(missed), HOUR, retry),
            Duration::from_secs(300)
        );
        // ...but never past max_sleep.
        assert_eq!(next_wake(now, Some(missed), HOUR, Some(10 * HOUR)), HOUR);
    }
}
