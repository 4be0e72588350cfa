//! Rotation policies and the SMTP and DKIM secrets, over the fake Vault and the manual clock (the
//! scheduler's rounds are tested beside it, in `rotation::scheduler_tests`).

use super::*;

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
    assert_eq!(iso8601(ks.next_rotation), "2026-01-01T18:00:00Z");
    assert_eq!(ks.rotation_policy, "21600_seconds");

    let bad = f
        .lifecycle
        .set_rotation_policy(&caller, &t1(), Some((hour, hour, KeyAlgorithm::Ed25519)))
        .await
        .unwrap_err();
    assert!(matches!(bad, DomainError::PolicyInvalid(_)), "{bad:?}");

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
    assert_eq!(iso8601(ks.next_rotation), "2026-04-01T12:00:00Z");
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
    assert_eq!(iso8601(second.last_rotated), "2026-01-02T12:00:00Z");
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
        matches!(err, DomainError::Vault(VaultError::Sealed)),
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
