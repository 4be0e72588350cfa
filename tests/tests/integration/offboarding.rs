//! Tenant offboarding end to end (GDPR erasure): OpenBao, the control plane, the real agent,
//! Debian's sshd and real users. Afterwards no keyward key logs in, the open session is over,
//! Vault holds nothing under the tenant's path, its tokens are refused, the audit chain
//! verifies, and another tenant is untouched. Interrupted by an offline agent and a restart, it
//! says what is pending and then completes.

use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::{Deployment, Sshd, eventually};
use reqwest::Method;
use serde_json::{Value, json};

/// The worker looks every second, so that the test follows it closely.
fn quick_worker(c: &mut keyward_server::config::Config) {
    c.offboarding.check_interval = Duration::from_secs(1);
}

/// As [`quick_worker`], and an agent that has not acknowledged within 2 s is not waited for.
fn short_agent_wait(c: &mut keyward_server::config::Config) {
    quick_worker(c);
    c.offboarding.agent_wait = Duration::from_secs(2);
}

fn tenant_path(d: &Deployment) -> String {
    format!("/api/v1/admin/tenants/{}", d.tenant)
}

/// `DELETE /api/v1/admin/tenants/{tenant}` with `token`, confirming `confirm`.
async fn offboard_as(
    d: &Deployment,
    token: &str,
    tenant: &str,
    confirm: &str,
) -> keyward_tests::Reply {
    d.cp.request(
        Method::DELETE,
        &format!("/api/v1/admin/tenants/{tenant}"),
        Some(token),
        Some(json!({ "confirm": confirm })),
    )
    .await
}

async fn offboard(d: &Deployment, confirm: &str) -> keyward_tests::Reply {
    offboard_as(d, &d.cp.admin_token, &d.tenant, confirm).await
}

async fn status(d: &Deployment) -> Value {
    let reply =
        d.cp.admin_get(&format!("{}/offboarding", tenant_path(d)))
            .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

async fn wait_for_status(d: &Deployment, what: &str, within: Duration) -> Value {
    eventually(
        &format!("offboarding {what}; agent log:\n{}", d.agent.log_text()),
        within,
        || async {
            let now = status(d).await;
            (now["status"] == what).then_some(now)
        },
    )
    .await
}

/// `LIST` (the tenant's folder) or `GET` (a secret's metadata) in KV v2 as root: the status.
async fn vault_status(d: &Deployment, method: Method, path: &str) -> u16 {
    d.bao.api(method, path, &d.bao.root_token, None).await.0
}

async fn vault_holds_nothing_of(d: &Deployment, tenant: &str) {
    let list = Method::from_bytes(b"LIST").unwrap();
    let listed = vault_status(d, list, &format!("vps/metadata/{tenant}/")).await;
    assert_eq!(listed, 404, "Vault still lists secrets under vps/{tenant}/");
    for name in ["admin_ssh", "tenant_ssh"] {
        for kind in ["metadata", "data"] {
            let path = format!("vps/{kind}/{tenant}/{name}");
            assert_eq!(vault_status(d, Method::GET, &path).await, 404, "{path}");
        }
    }
}

#[tokio::test]
async fn offboarding_ends_every_keyward_login_and_session_and_erases_the_tenant_from_vault() {
    let d = Deployment::start_configured(KeyAlgorithm::Ed25519, quick_worker).await;
    // Another tenant on the same control plane, with its own token and secrets.
    let other = keyward_tests::unique_tenant("other");
    d.cp.create_tenant(&other).await;
    let other_token = d.cp.tenant_token(&other).await;
    let other_before = d.bao.read_kv(&format!("{other}/tenant_ssh")).await.unwrap();

    // Before: keyward's keys log in, and the tenant has a session open.
    let tenant_key = d.download().await;
    assert!(d.tenant_login(&tenant_key).await, "{}", d.sshd.log_text());
    let admin_key = d.admin_key_from_vault().await;
    let admin_login = || d.sshd.login_async(&admin_key.path, &d.admin.name, "true");
    assert!(admin_login().await.0);
    let mut session = d
        .sshd
        .open_session_async(&tenant_key.path, &d.user.name)
        .await;

    // A confirmation that does not name the tenant changes nothing.
    offboard(&d, "someone-else")
        .await
        .assert_problem(422, "confirmation_mismatch");
    let reply =
        d.cp.admin_get(&format!("{}/offboarding", tenant_path(&d)))
            .await;
    reply.assert_problem(404, "offboarding_not_found");
    // A tenant cannot offboard itself, nor learn that another tenant exists.
    offboard_as(&d, &d.tenant_token, &d.tenant, &d.tenant)
        .await
        .assert_problem(403, "forbidden");
    offboard_as(&d, &d.tenant_token, &other, &other)
        .await
        .assert_problem(404, "tenant_not_found");

    let reply = offboard(&d, &d.tenant).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(
        reply.header("location"),
        Some(format!("{}/offboarding", tenant_path(&d)).as_str())
    );
    let started = reply.json();
    assert_eq!(started["tokensRevoked"], 1, "{started}");

    // The tenant's token is refused at once; nothing new is given to the tenant.
    let refused = d.cp.tenant_call(&d.tenant_token, Method::GET, "").await;
    refused.assert_problem(401, "invalid_token");
    let token = d.cp.admin_post(
        "/api/v1/admin/tokens",
        json!({ "role": "tenant", "tenantId": d.tenant, "label": "late" }),
    );
    token.await.assert_problem(409, "tenant_offboarding");
    let host = d.cp.admin_post(
        "/api/v1/admin/hosts",
        json!({ "tenantId": d.tenant, "hostId": "late-host" }),
    );
    host.await.assert_problem(409, "tenant_offboarding");

    // The agent ends the session and removes the keys; then the host goes, then Vault's secrets.
    Sshd::wait_session_end(&mut session, Duration::from_secs(10)).await;
    let done = wait_for_status(&d, "completed", Duration::from_secs(30)).await;
    assert_eq!(
        done["hosts"][0]["hostId"],
        d.agent.host_id.as_str(),
        "{done}"
    );
    assert_eq!(done["hosts"][0]["state"], "acknowledged", "{done}");
    assert_eq!(
        done["pending"],
        json!({ "hosts": [], "vaultSecrets": false })
    );
    assert_eq!(
        done["vaultDestroyed"],
        json!(["admin_ssh", "tenant_ssh"]),
        "{done}"
    );
    assert!(d.agent.view(&d.cp).await["revokedAt"].is_string());

    // After: no keyward key logs in, and Vault holds nothing under the tenant's path.
    assert!(
        !d.tenant_login(&tenant_key).await,
        "the tenant key still logs in"
    );
    assert!(!admin_login().await.0, "the admin key still logs in");
    vault_holds_nothing_of(&d, &d.tenant).await;

    // Asking again answers the status; the audit log has every step and its chain holds.
    let again = offboard(&d, &d.tenant).await;
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(again.json()["completedAt"], done["completedAt"]);
    let actions: Vec<String> =
        d.cp.audit_of(&d.tenant)
            .await
            .iter()
            .filter_map(|e| e["action"].as_str().map(str::to_owned))
            .collect();
    for step in [
        "tenant.offboard.start",
        "tenant.offboard.host",
        "tenant.offboard.vault_destroyed",
        "tenant.offboard.complete",
    ] {
        assert_eq!(
            actions.iter().filter(|a| *a == step).count(),
            1,
            "{step}: {actions:?}"
        );
    }
    let verdict = d.cp.admin_get("/api/v1/admin/audit/verify").await.json();
    assert_eq!(verdict["ok"], true, "{verdict}");

    // The other tenant is untouched by the offboarding.
    let creds = d.cp.tenant_call(&other_token, Method::GET, "").await;
    assert_eq!(creds.status, 200, "{}", creds.text());
    let other_after = d.bao.read_kv(&format!("{other}/tenant_ssh")).await.unwrap();
    assert_eq!(other_after, other_before);

    // A fleet-wide rotation passes over the offboarded tenant (skipped, not failed) for every
    // kind of secret; the other tenant's are rotated.
    for secret_type in ["ssh", "smtp", "dkim"] {
        let reply =
            d.cp.admin_post(
                "/api/v1/admin/secrets/rotate-all",
                serde_json::json!({ "secretType": secret_type }),
            )
            .await;
        assert_eq!(reply.status, 200, "{secret_type}: {}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["failedCount"], 0, "{secret_type}: {answer}");
        assert_eq!(answer["skippedCount"], 1, "{secret_type}: {answer}");
        assert_eq!(answer["rotatedCount"], 1, "{secret_type}: {answer}");
    }
}

#[tokio::test]
async fn an_offboarding_interrupted_by_an_offline_agent_and_a_restart_says_what_is_pending_and_completes()
 {
    let mut d = Deployment::start_configured(KeyAlgorithm::Ed25519, quick_worker).await;
    let tenant_key = d.download().await;
    d.agent.kill().await;

    let reply = offboard(&d, &d.tenant).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    // The agent is away: its host waits, and so does the erasure in Vault.
    let pending = status(&d).await;
    assert_eq!(pending["status"], "removing_keys", "{pending}");
    assert_eq!(pending["pending"]["hosts"], json!([d.agent.host_id]));
    assert_eq!(pending["pending"]["vaultSecrets"], true);
    assert_eq!(pending["hosts"][0]["state"], "waiting");
    assert!(
        d.bao
            .read_kv(&format!("{}/tenant_ssh", d.tenant))
            .await
            .is_some()
    );

    // The control plane restarts; the offboarding is still pending, from SQL.
    d.cp.restart().await;
    assert_eq!(status(&d).await["pending"], pending["pending"]);

    // The agent comes back, removes the keys, and the offboarding completes.
    d.agent.start();
    let done = wait_for_status(&d, "completed", Duration::from_secs(40)).await;
    assert_eq!(done["hosts"][0]["state"], "acknowledged", "{done}");
    assert!(
        !d.tenant_login(&tenant_key).await,
        "the tenant key still logs in"
    );
    vault_holds_nothing_of(&d, &d.tenant).await;
}

#[tokio::test]
async fn an_agent_that_never_answers_is_revoked_after_agent_wait_and_the_status_says_so() {
    let mut d = Deployment::start_configured(KeyAlgorithm::Ed25519, short_agent_wait).await;
    d.agent.kill().await;
    let reply = offboard(&d, &d.tenant).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let done = wait_for_status(&d, "completed", Duration::from_secs(20)).await;
    assert_eq!(done["hosts"][0]["state"], "timed_out", "{done}");
    assert!(d.agent.view(&d.cp).await["revokedAt"].is_string());
    vault_holds_nothing_of(&d, &d.tenant).await;
}
