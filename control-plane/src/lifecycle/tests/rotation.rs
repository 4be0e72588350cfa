//! Rotation policies, the scheduler's rounds, and the SMTP and DKIM secrets, over the fake Vault
//! and the manual clock.

use super::*;

fn tenant(id: &str) -> NewTenant {
    NewTenant {
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
fn scheduler(f: &Fixture) -> crate::rotation::RotationScheduler {
    let lifecycle = KeyLifecycle::new(
        f.vault.clone(),
        f.lifecycle.store().clone(),
        f.clock.clone(),
        f.lifecycle.keys.clone(),
        f.changes.clone(),
    );
    crate::rotation::RotationScheduler::new(Arc::new(lifecycle), Default::default())
}

#[tokio::test]
async fn the_scheduler_rotates_the_due_key_sets_and_only_those() {
    use crate::rotation::DueReport;
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
    assert_eq!(rotated.last_rotated, "2026-02-01T12:00:00Z");
    assert_eq!(rotated.grace_until.as_deref(), Some("2026-02-03T12:00:00Z"));
    assert_eq!(rotated.next_rotation, "2026-03-03T12:00:00Z");
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

#[tokio::test]
async fn a_policy_change_reschedules_at_once_and_resetting_restores_the_default() {
    let f = fixture().await;
    let caller = Caller::system();
    f.lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let policy = f
        .lifecycle
        .set_rotation_policy(
            &caller,
            &t1(),
            Some((hour * 6, hour, KeyAlgorithm::Ed25519)),
        )
        .await
        .unwrap();
    assert_eq!(policy.name, "21600_seconds");
    let ks = f
        .lifecycle
        .store()
        .key_set(&t1(), KeyKind::Tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ks.next_rotation, "2026-01-01T18:00:00Z");
    assert_eq!(ks.rotation_policy, "21600_seconds");

    let bad = f
        .lifecycle
        .set_rotation_policy(&caller, &t1(), Some((hour, hour, KeyAlgorithm::Ed25519)))
        .await
        .unwrap_err();
    assert!(matches!(bad, ApiError::InvalidBody(_)), "{bad:?}");

    let default = f
        .lifecycle
        .set_rotation_policy(&caller, &t1(), None)
        .await
        .unwrap();
    assert_eq!(default.name, "90_days");
    assert_eq!(default.source, PolicySource::Default);
    let ks = f
        .lifecycle
        .store()
        .key_set(&t1(), KeyKind::Tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ks.next_rotation, "2026-04-01T12:00:00Z");
    let actions: Vec<String> = audit_actions(&f)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(actions, ["tenant.create", "policy.set", "policy.reset"]);
}

#[tokio::test]
async fn smtp_and_dkim_rotations_keep_secrets_in_vault_and_metadata_in_sql() {
    let f = fixture().await;
    let caller = Caller::system();
    f.lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    let first = f
        .lifecycle
        .rotate_secret(&caller, &t1(), TenantSecretKind::Smtp, &Trigger::Request)
        .await
        .unwrap();
    f.clock.advance(chrono::Duration::days(1));
    let second = f
        .lifecycle
        .rotate_secret(&caller, &t1(), TenantSecretKind::Smtp, &Trigger::Request)
        .await
        .unwrap();
    assert_eq!((first.generation, second.generation), (1, 2));
    assert_eq!(second.vault_version, 2);
    assert_eq!(second.created_at, first.created_at);
    assert_eq!(second.last_rotated, "2026-01-02T12:00:00Z");
    assert_eq!(
        second.public_info,
        serde_json::json!({ "username": "tenant-t1" })
    );
    let versions = f.vault.secret(T1, "smtp");
    let (old, new) = (
        versions[0].get("password").unwrap(),
        versions[1].get("password").unwrap(),
    );
    assert_eq!(new.len(), 32);
    assert_ne!(old, new);
    assert_eq!(versions[1].get("username"), Some("tenant-t1"));

    let dkim = f
        .lifecycle
        .rotate_secret(&caller, &t1(), TenantSecretKind::Dkim, &Trigger::Request)
        .await
        .unwrap();
    assert_eq!(dkim.public_info["selector"], "kw202601");
    assert_eq!(dkim.public_info["dnsName"], "kw202601._domainkey");
    let again = f
        .lifecycle
        .rotate_secret(&caller, &t1(), TenantSecretKind::Dkim, &Trigger::Request)
        .await
        .unwrap();
    assert_eq!(again.public_info["selector"], "kw202601g2");
    assert_eq!(again.public_info["previousSelector"], "kw202601");
    let stored = f.vault.secret(T1, "dkim");
    assert!(
        stored[1]
            .get("private_key")
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert_eq!(
        stored[1].get("dns_record"),
        again.public_info["dnsRecord"].as_str()
    );
    // Nothing secret in SQL or the audit log.
    let log = serde_json::to_string(
        &f.lifecycle
            .store()
            .audit_events(&crate::store::AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .events,
    )
    .unwrap();
    assert!(!log.contains(new) && !log.contains("PRIVATE KEY"), "{log}");

    // A Vault failure: nothing recorded, the failure audited.
    f.vault.fail_after(0);
    let err = f
        .lifecycle
        .rotate_secret(&caller, &t1(), TenantSecretKind::Smtp, &Trigger::Request)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Vault(VaultError::Sealed)),
        "{err:?}"
    );
    let kept = f
        .lifecycle
        .store()
        .tenant_secret(&t1(), "smtp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.generation, 2);
    assert_eq!(
        audit_actions(&f).await.last().unwrap(),
        &("smtp.rotate".to_owned(), "failure".to_owned())
    );
}
