//! The scheduler's rounds over the lifecycle's fixture (the fake Vault and the manual clock).

use std::sync::Arc;

use keyward_common::{KeyAlgorithm, KeyKind, TenantId};

use crate::caller::Caller;
use crate::clock::{Clock, iso8601};
use crate::lifecycle::KeyLifecycle;
use crate::lifecycle::tests::{Fixture, audit_actions, fixture, new_tenant};

fn tenant(id: &str) -> crate::lifecycle::NewTenant {
    crate::lifecycle::NewTenant {
        tenant_id: id.parse().unwrap(),
        ..new_tenant()
    }
}

async fn generation(f: &Fixture, id: &str, kind: KeyKind) -> i64 {
    let t: TenantId = id.parse().unwrap();
    f.lifecycle
        .store()
        .key_set(&t, kind)
        .await
        .unwrap()
        .unwrap()
        .generation
}

/// The scheduler over the fixture's lifecycle (it needs an `Arc`, so a second one on the same
/// store, fake Vault and clock).
fn scheduler(f: &Fixture) -> super::RotationScheduler {
    let lifecycle = KeyLifecycle::new(
        f.vault.clone(),
        f.lifecycle.store().clone(),
        f.clock.clone(),
        f.lifecycle.keys_config().clone(),
        f.changes.clone(),
    );
    super::RotationScheduler::new(Arc::new(lifecycle), Default::default())
}

#[tokio::test]
async fn the_scheduler_rotates_the_due_key_sets_and_only_those() {
    use super::DueReport;
    let f = fixture().await;
    let caller = Caller::system();
    for id in ["a", "b"] {
        f.lifecycle
            .create_tenant(&caller, tenant(id))
            .await
            .unwrap();
    }
    let b: TenantId = "b".parse().unwrap();
    let day = |n: u64| std::time::Duration::from_secs(n * 86_400);
    f.lifecycle
        .set_rotation_policy(&caller, &b, Some((day(30), day(2), KeyAlgorithm::Ed25519)))
        .await
        .unwrap();
    let scheduler = scheduler(&f);

    // Day 29: nothing is due.
    f.clock.advance(chrono::Duration::days(29));
    let report = scheduler.run_due(f.clock.now()).await.unwrap();
    assert_eq!(report, DueReport::default());

    // Day 31: b's key sets (30 days) are, a's (90 days) are not.
    f.clock.advance(chrono::Duration::days(2));
    let report = scheduler.run_due(f.clock.now()).await.unwrap();
    assert_eq!(report.rotated, 2, "{report:?}");
    for kind in KeyKind::ALL {
        assert_eq!(generation(&f, "a", kind).await, 1);
        assert_eq!(generation(&f, "b", kind).await, 2);
        assert_eq!(f.vault.current("b", kind), 2);
    }
    let rotated = f
        .lifecycle
        .store()
        .key_set(&b, KeyKind::Admin)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(iso8601(rotated.last_rotated), "2026-02-01T12:00:00Z");
    assert_eq!(
        rotated.grace_until.map(iso8601).as_deref(),
        Some("2026-02-03T12:00:00Z")
    );
    assert_eq!(iso8601(rotated.next_rotation), "2026-03-03T12:00:00Z");
    assert_eq!(rotated.rotation_policy, "30_days");
    let secret = f.vault.versions.lock().unwrap()[&("b".to_owned(), KeyKind::Admin)][1].clone();
    assert_eq!(secret.rotation_policy, "30_days");

    // A second round at the same time finds nothing: each rotation happens once.
    assert_eq!(
        scheduler.run_due(f.clock.now()).await.unwrap(),
        DueReport::default()
    );

    // Day 91: a falls due (and b, rotated on day 31, is due again on day 61).
    f.clock.advance(chrono::Duration::days(60));
    let report = scheduler.run_due(f.clock.now()).await.unwrap();
    assert_eq!(report.rotated, 4, "{report:?}");
    for kind in KeyKind::ALL {
        assert_eq!(generation(&f, "a", kind).await, 2);
        assert_eq!(generation(&f, "b", kind).await, 3);
    }
    // One audit event per rotation, by the system, marked as scheduled.
    let events = f
        .lifecycle
        .store()
        .audit_events(&crate::store::AuditFilter {
            action: Some("key.rotate".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .events;
    assert_eq!(events.len(), 6);
    assert!(events.iter().all(|e| e.actor_role == "system"
        && e.outcome == "success"
        && e.detail["trigger"] == "schedule"));
    assert!(f.lifecycle.store().verify_audit_chain().await.unwrap().ok);
}

#[tokio::test]
async fn a_failed_scheduled_rotation_is_audited_and_stays_due() {
    let f = fixture().await;
    let caller = Caller::system();
    f.lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    let scheduler = scheduler(&f);
    f.clock.advance(chrono::Duration::days(91));
    f.vault.fail_after(0);
    let report = scheduler.run_due(f.clock.now()).await.unwrap();
    assert_eq!((report.rotated, report.failed), (0, 2));
    let failures: Vec<_> = audit_actions(&f)
        .await
        .into_iter()
        .filter(|(_, outcome)| outcome == "failure")
        .collect();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0].0, "key.rotate");

    f.vault.heal();
    let report = scheduler.run_due(f.clock.now()).await.unwrap();
    assert_eq!((report.rotated, report.failed), (2, 0));
}
