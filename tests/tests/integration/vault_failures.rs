//! Vault sealed, unreachable or failing: 503 naming Vault, and nothing in SQL or the audit log
//! claims a change that Vault did not store.

use keyward_tests::{ControlPlane, Database, OpenBao, unique_tenant};
use reqwest::Method;

#[tokio::test]
async fn a_sealed_vault_fails_key_operations_cleanly() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("sealed");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let before = cp.tenant_call(&token, Method::GET, "").await.json();

    bao.seal().await;

    for op in ["/rotate", "/regenerate", "/download"] {
        let reply = cp.tenant_call(&token, Method::POST, op).await;
        reply.assert_problem(503, "vault_sealed");
        assert!(reply.json()["detail"].as_str().unwrap().contains("Vault"));
    }
    let other = unique_tenant("never");
    cp.admin_post(
        "/api/v1/admin/tenants",
        serde_json::json!({"tenantId": other, "vpsIp": "127.0.0.1", "sshUsername": "tenant", "adminUsername": "kwadmin"}),
    )
    .await
    .assert_problem(503, "vault_sealed");

    // SQL still holds exactly what Vault holds.
    let after = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(after, before);
    let tenants = cp.admin_get("/api/v1/admin/secrets/tenants").await.json();
    assert!(!tenants.to_string().contains(&other));
    // The attempts are audited as failures, never as successes.
    let events = cp.audit_of(&tenant).await;
    let failures: Vec<&str> = events
        .iter()
        .filter(|e| e["outcome"] == "failure")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(failures, ["key.download", "key.regenerate", "key.rotate"]);
    assert_eq!(
        events.iter().filter(|e| e["outcome"] == "success").count(),
        2,
        "only tenant.create and token.issue succeeded"
    );
    assert!(
        cp.audit_of(&other)
            .await
            .iter()
            .all(|e| e["outcome"] == "failure")
    );

    // Health says so; readiness fails; revocation needs no Vault and still works.
    let health = cp.admin_get("/api/v1/admin/vault/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["sealed"], true);
    assert_eq!(health.json()["storageStatus"], "sealed");
    cp.request(Method::GET, "/readyz", None, None)
        .await
        .assert_problem(503, "not_ready");
    assert_eq!(
        cp.tenant_call(&token, Method::POST, "/revoke").await.status,
        200
    );
    assert_eq!(
        cp.tenant_call(&token, Method::GET, "").await.json()["keyStatus"],
        "revoked"
    );
    let verdict = cp.admin_get("/api/v1/admin/audit/verify").await.json();
    assert_eq!(verdict["ok"], true);
}

#[tokio::test]
async fn an_unreachable_vault_is_a_503_that_names_vault() {
    let mut bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("gone");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let before = cp.tenant_call(&token, Method::GET, "").await.json();

    bao.stop().await;

    let reply = cp.tenant_call(&token, Method::POST, "/rotate").await;
    reply.assert_problem(503, "vault_unavailable");
    assert!(reply.json()["detail"].as_str().unwrap().contains("Vault"));
    cp.tenant_call(&token, Method::POST, "/download")
        .await
        .assert_problem(503, "vault_unavailable");
    cp.admin_get("/api/v1/admin/vault/health")
        .await
        .assert_problem(503, "vault_unavailable");
    cp.admin_get(&format!("/api/v1/admin/secrets/tenant/{tenant}"))
        .await
        .assert_problem(503, "vault_unavailable");
    // Reads that need no Vault keep working, and nothing changed.
    assert_eq!(cp.tenant_call(&token, Method::GET, "").await.json(), before);
    assert_eq!(
        cp.request(Method::GET, "/healthz", None, None).await.status,
        200
    );
}
