//! Bad input gets a clear problem document and changes nothing; no input produces a 500.

use keyward_tests::{ControlPlane, Database, OpenBao, Reply, unique_tenant};
use reqwest::Method;
use serde_json::{Value, json};

fn tenant_body(id: &str) -> Value {
    json!({
        "tenantId": id,
        "vpsIp": "127.0.0.1",
        "sshPort": 22,
        "sshUsername": "tenant",
        "adminUsername": "kwadmin",
    })
}

async fn raw_post(
    cp: &ControlPlane,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", cp.url))
        .bearer_auth(&cp.admin_token)
        .body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.unwrap();
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test]
async fn ids_that_could_escape_a_vault_path_are_refused_and_nothing_is_written() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let long = "a".repeat(200);
    for bad in [
        "../x",
        "t1/admin_ssh",
        "",
        long.as_str(),
        "é",
        "T1",
        "t1 ",
        "-t",
        "a\u{0}b",
        "t1%2f",
    ] {
        let reply = cp
            .admin_post("/api/v1/admin/tenants", tenant_body(bad))
            .await;
        reply.assert_problem(400, "invalid_id");
    }
    for (field, value) in [
        ("sshUsername", "../root"),
        ("sshUsername", "Root"),
        ("adminUsername", ""),
        ("adminUsername", "a/b"),
    ] {
        let mut body = tenant_body("valid-id");
        body[field] = json!(value);
        cp.admin_post("/api/v1/admin/tenants", body)
            .await
            .assert_problem(400, "invalid_id");
    }
    // Nothing reached Vault or SQL.
    let (status, listing) = bao
        .api(
            Method::from_bytes(b"LIST").unwrap(),
            "vps/metadata",
            keyward_tests::openbao::ROOT_TOKEN,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        listing["data"]["keys"],
        json!(["_keyward/"]),
        "Vault holds keyward's own secrets and no tenant's"
    );
    let tenants = cp.admin_get("/api/v1/admin/secrets/tenants").await.json();
    assert_eq!(tenants, json!([]));

    // In URL paths too.
    for path in [
        "/api/v1/admin/secrets/tenant/..%2Fx",
        "/api/v1/admin/secrets/tenant/t1%2Fadmin_ssh",
        "/api/v1/admin/secrets/tenant/%C3%A9",
        &format!("/api/v1/admin/secrets/tenant/{long}"),
        "/api/v1/admin/tenants/..%2F..%2Fsys/keys/tenant/rotate",
    ] {
        let reply = if path.ends_with("rotate") {
            cp.admin_post(path, json!({})).await
        } else {
            cp.admin_get(path).await
        };
        reply.assert_problem(400, "invalid_id");
    }
}

#[tokio::test]
async fn malformed_bodies_and_queries_are_4xx_problems() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let json_ct = Some("application/json");
    raw_post(&cp, "/api/v1/admin/tenants", json_ct, b"{not json".to_vec())
        .await
        .assert_problem(400, "invalid_body");
    raw_post(&cp, "/api/v1/admin/tenants", None, b"{}".to_vec())
        .await
        .assert_problem(415, "unsupported_media_type");
    raw_post(
        &cp,
        "/api/v1/admin/tenants",
        json_ct,
        vec![b' '; 100 * 1024],
    )
    .await
    .assert_problem(413, "body_too_large");
    let mut unknown_field = tenant_body("t-unknown");
    unknown_field["privateKey"] = json!("x");
    cp.admin_post("/api/v1/admin/tenants", unknown_field)
        .await
        .assert_problem(400, "invalid_body");
    for (field, value) in [
        ("sshPort", json!("22")),
        ("sshPort", json!(70000)),
        ("sshPort", json!(-1)),
        ("tenantId", json!(12)),
        ("vpsIp", json!(null)),
    ] {
        let mut body = tenant_body("t-types");
        body[field] = value;
        cp.admin_post("/api/v1/admin/tenants", body)
            .await
            .assert_problem(400, "invalid_body");
    }
    for (field, value) in [
        ("sshPort", json!(0)),
        ("vpsIp", json!("not a host!")),
        ("vpsIp", json!("")),
        ("adminUsername", json!("tenant")),
    ] {
        let mut body = tenant_body("t-values");
        body[field] = value;
        cp.admin_post("/api/v1/admin/tenants", body)
            .await
            .assert_problem(400, "invalid_body");
    }
    // Tokens.
    for body in [
        json!({ "role": "admin", "tenantId": "t1" }),
        json!({ "role": "tenant" }),
        json!({ "role": "root" }),
        json!({ "role": "admin", "label": "x".repeat(300) }),
        json!({ "role": "admin", "label": "a\nb" }),
    ] {
        cp.admin_post("/api/v1/admin/tokens", body)
            .await
            .assert_problem(400, "invalid_body");
    }
    cp.admin_post(
        "/api/v1/admin/tokens",
        json!({ "role": "tenant", "tenantId": "nobody" }),
    )
    .await
    .assert_problem(404, "tenant_not_found");
    cp.request(
        Method::DELETE,
        "/api/v1/admin/tokens/../../x",
        Some(&cp.admin_token),
        None,
    )
    .await
    .assert_problem(404, "no_route");
    cp.request(
        Method::DELETE,
        "/api/v1/admin/tokens/tok_zz",
        Some(&cp.admin_token),
        None,
    )
    .await
    .assert_problem(404, "token_not_found");
    // Audit queries.
    for query in [
        "since=yesterday",
        "until=2026-13-01",
        "limit=0",
        "limit=5000",
        "limit=x",
        "bogus=1",
        "tenantId=../x",
        "action=DROP%20TABLE",
    ] {
        let reply = cp.admin_get(&format!("/api/v1/admin/audit?{query}")).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.text());
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }
    // Key operations that do not exist.
    cp.create_tenant("t-ops").await;
    cp.admin_post("/api/v1/admin/tenants/t-ops/keys/root/rotate", json!({}))
        .await
        .assert_problem(404, "no_route");
    cp.admin_post("/api/v1/admin/tenants/t-ops/keys/tenant/explode", json!({}))
        .await
        .assert_problem(404, "no_route");
    cp.admin_post("/api/v1/admin/tenants", tenant_body("t-ops"))
        .await
        .assert_problem(409, "tenant_exists");
}

#[tokio::test]
async fn missing_or_bad_credentials_are_401_and_wrong_roles_403() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let path = "/api/v1/admin/secrets/tenants";
    let none = cp.request(Method::GET, path, None, None).await;
    none.assert_problem(401, "unauthenticated");
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"keyward\"")
    );
    cp.request(Method::GET, path, Some("kw_not-a-real-token"), None)
        .await
        .assert_problem(401, "invalid_token");
    let basic = reqwest::Client::new()
        .get(format!("{}{path}", cp.url))
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    cp.tenant_call(&cp.admin_token, Method::POST, "/download")
        .await
        .assert_problem(403, "forbidden");
}

/// A sweep of odd requests: whatever they are, the answer is never a 5xx, and every error is a
/// problem document.
#[tokio::test]
async fn no_request_produces_a_server_error() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("sweep");
    cp.create_tenant(&tenant).await;
    let tenant_token = cp.tenant_token(&tenant).await;
    let paths = [
        "/",
        "/api",
        "/api/v1",
        "/api/v1/admin",
        "/api/v1/admin/tenants",
        "/api/v1/admin/tenants/x",
        "/api/v1/admin/secrets/tenant/",
        "/api/v1/admin/secrets/tenant/%00",
        "/api/v1/admin/secrets/tenant/%ff%fe",
        "/api/v1/admin/tokens/",
        "/api/v1/admin/audit?limit=-1",
        "/api/v1/admin/audit?cursor=-5",
        "/api/v1/admin/audit?cursor=99999999999999999999",
        "/api/v1/tenant/infrastructure/ssh-credentials/",
        "/api/v1/tenant/infrastructure/ssh-credentials/download/x",
        "/api/v1/openapi.json/x",
        "/healthz/..",
    ];
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    let tokens = [
        None,
        Some(cp.admin_token.as_str()),
        Some(tenant_token.as_str()),
    ];
    for path in paths {
        for method in &methods {
            for token in tokens {
                let reply = cp
                    .request(method.clone(), path, token, Some(json!({"x": 1})))
                    .await;
                assert!(
                    reply.status < 500,
                    "{method} {path}: {} {}",
                    reply.status,
                    reply.text()
                );
                if reply.status >= 400 {
                    assert_eq!(
                        reply.header("content-type"),
                        Some("application/problem+json"),
                        "{method} {path}"
                    );
                }
            }
        }
    }
}
