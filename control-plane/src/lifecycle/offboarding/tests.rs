//! The offboarding's steps over the fake Vault and a manual clock; the end-to-end test with real
//! agents, sshd and OpenBao is `tests/tests/integration/offboarding.rs`.

use keyward_common::{HostId, KeyKind, TenantId};

use super::super::tests::{Fixture, audit_actions, fixture, new_tenant};
use crate::caller::Caller;
use crate::lifecycle::{Replace, TenantSecretKind, Trigger};
use crate::store::{HostRole, KeyState, OffboardingStep, Role, hash_token};

fn admin() -> Caller {
    Caller {
        token_id: Some("tok_00000000000000aa".into()),
        role: Some(Role::Admin),
        source_addr: None,
        idp_mfa: false,
    }
}

fn t1() -> TenantId {
    new_tenant().tenant_id
}

/// A host of t1 whose agent enrolled (and applied nothing yet).
async fn enrolled_host(f: &Fixture, id: &str) -> HostId {
    let host: HostId = id.parse().unwrap();
    let registered = f
        .lifecycle
        .register_host(
            &admin(),
            &t1(),
            host.clone(),
            HostRole::Vps,
            std::time::Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let mut tx = f.lifecycle.store().begin_unaudited().await.unwrap();
    let now = f.lifecycle.now();
    assert!(
        tx.enroll_host(
            &host,
            &hash_token(&registered.enrollment_token),
            now,
            "01",
            now + chrono::Duration::days(30),
        )
        .await
        .unwrap()
    );
    tx.commit().await.unwrap();
    host
}

async fn revoked(f: &Fixture, host: &HostId) -> bool {
    let record = f.lifecycle.store().host(host).await.unwrap().unwrap();
    record.revoked_at.is_some()
}

/// t1's offboarding after a look of the worker.
async fn advanced(f: &Fixture) -> crate::lifecycle::OffboardingStatus {
    f.lifecycle.advance_offboarding(&t1()).await;
    f.lifecycle
        .offboarding_status(&t1())
        .await
        .unwrap()
        .unwrap()
}

async fn onboarded() -> Fixture {
    let f = fixture().await;
    f.lifecycle
        .create_tenant(&admin(), new_tenant())
        .await
        .unwrap();
    f.lifecycle
        .rotate_secret(&admin(), &t1(), TenantSecretKind::Smtp, &Trigger::Request)
        .await
        .unwrap();
    f
}

#[tokio::test]
async fn the_start_revokes_tokens_and_keys_at_once_refuses_anything_new_and_is_idempotent() {
    let f = onboarded().await;
    let (token, _) = f
        .lifecycle
        .issue_token(&admin(), Role::Tenant(t1()), "ci".into())
        .await
        .unwrap();
    let host = enrolled_host(&f, "h1").await;
    let before = f.lifecycle.store().host(&host).await.unwrap().unwrap();

    let (status, started) = f.lifecycle.offboard_tenant(&admin(), &t1()).await.unwrap();
    assert!(started);
    assert_eq!(status.status, OffboardingStep::RemovingKeys);
    assert_eq!(status.tokens_revoked, 1);
    assert_eq!(status.pending.hosts, vec!["h1".to_owned()]);
    assert!(status.pending.vault_secrets);
    let revoked = f.lifecycle.store().token(&token.token_id).await.unwrap();
    assert!(revoked.unwrap().revoked_at.is_some());
    for kind in KeyKind::ALL {
        let ks = f.lifecycle.store().key_set(&t1(), kind).await.unwrap();
        assert_eq!(ks.unwrap().state, KeyState::Revoked, "{kind}");
    }
    // The host's target is the generation that carries both revocations.
    assert_eq!(
        status.hosts[0].target_generation,
        before.desired_generation + 2
    );

    // Nothing new for the tenant: 409 tenant_offboarding, whatever the way in.
    let code = |e: crate::lifecycle::DomainError| e.code();
    let refused = [
        f.lifecycle
            .issue_token(&admin(), Role::Tenant(t1()), "late".into())
            .await
            .map(drop),
        f.lifecycle
            .register_host(
                &admin(),
                &t1(),
                "h2".parse().unwrap(),
                HostRole::Vps,
                std::time::Duration::from_secs(60),
            )
            .await
            .map(drop),
        f.lifecycle
            .replace_key(&admin(), &t1(), KeyKind::Tenant, Replace::Regenerate)
            .await
            .map(drop),
        f.lifecycle
            .rotate_secret(&admin(), &t1(), TenantSecretKind::Dkim, &Trigger::Request)
            .await
            .map(drop),
    ];
    for result in refused {
        assert_eq!(result.map_err(code), Err("tenant_offboarding"));
    }

    // Asking again changes nothing and answers the same offboarding.
    let (again, started) = f.lifecycle.offboard_tenant(&admin(), &t1()).await.unwrap();
    assert!(!started);
    assert_eq!(again.requested_at, status.requested_at);
    let starts = audit_actions(&f)
        .await
        .into_iter()
        .filter(|(action, _)| action == "tenant.offboard.start")
        .count();
    assert_eq!(starts, 1);
}

#[tokio::test]
async fn an_offline_agent_holds_its_host_until_agent_wait_then_it_is_revoked_anyway() {
    let f = onboarded().await;
    let acked = enrolled_host(&f, "h1").await;
    let offline = enrolled_host(&f, "h2").await;
    let (status, _) = f.lifecycle.offboard_tenant(&admin(), &t1()).await.unwrap();
    let target = status.hosts[0].target_generation;

    // h1's agent acknowledges the removal; h2's never answers.
    let store = f.lifecycle.store();
    let now = f.lifecycle.now();
    store
        .record_applied(&acked, target, &serde_json::json!([]), None, now)
        .await
        .unwrap();
    let status = advanced(&f).await;
    assert_eq!(status.status, OffboardingStep::RemovingKeys);
    assert_eq!(status.hosts[0].state, "acknowledged");
    assert_eq!(status.hosts[1].state, "waiting");
    assert_eq!(status.pending.hosts, vec!["h2".to_owned()]);
    assert!(revoked(&f, &acked).await);
    assert!(!revoked(&f, &offline).await);
    assert_eq!(
        f.vault.current(t1().as_str(), KeyKind::Admin),
        1,
        "Vault waits for the hosts"
    );

    // After `offboarding.agent_wait` (24 h by default) the host is revoked anyway, and says so.
    f.clock.advance(chrono::Duration::hours(24));
    let status = advanced(&f).await;
    assert_eq!(status.hosts[1].state, "timed_out");
    assert!(revoked(&f, &offline).await);
    assert_eq!(status.status, OffboardingStep::Completed);
    assert!(status.pending.hosts.is_empty() && !status.pending.vault_secrets);
}

#[tokio::test]
async fn a_vault_outage_leaves_the_secrets_pending_and_the_next_look_finishes_the_erasure() {
    let f = onboarded().await;
    f.lifecycle.offboard_tenant(&admin(), &t1()).await.unwrap();
    f.vault.fail_after(1);
    let status = advanced(&f).await;
    assert_eq!(status.status, OffboardingStep::DestroyingSecrets);
    assert!(status.pending.vault_secrets);
    assert_eq!(status.last_error.as_deref(), Some("vault_sealed"));
    assert_eq!(
        status.vault_destroyed,
        vec!["admin_ssh".to_owned()],
        "what went is named"
    );

    f.vault.heal();
    let status = advanced(&f).await;
    assert_eq!(status.status, OffboardingStep::Completed);
    assert_eq!(status.last_error, None);
    assert_eq!(
        status.vault_destroyed,
        ["admin_ssh", "smtp", "tenant_ssh"].map(str::to_owned)
    );
    assert!(status.vault_destroyed_at.is_some() && status.completed_at.is_some());
    let left = f
        .lifecycle
        .vault()
        .tenant_secret_names(&t1())
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    let actions: Vec<String> = audit_actions(&f)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let offboard: Vec<&str> = actions
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("tenant.offboard.") || *a == "key.revoke")
        .collect();
    assert_eq!(
        offboard,
        [
            "key.revoke",
            "key.revoke",
            "tenant.offboard.start",
            "tenant.offboard.vault_destroyed",
            "tenant.offboard.complete"
        ]
    );
    assert!(f.lifecycle.store().verify_audit_chain().await.unwrap().ok);
}
