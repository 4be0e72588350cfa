//! TLS, OpenAPI, metrics and health: the API's surface as operators and clients meet it.

use keyward_tests::control_plane::{Options, TestTls};
use keyward_tests::{ControlPlane, Database, OpenBao, unique_tenant};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn the_api_is_served_over_tls_1_3_only_when_a_certificate_is_set() {
    let bao = OpenBao::start().await;
    let tls = TestTls::generate();
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            tls: Some(tls.clone()),
            ..Options::default()
        },
    )
    .await;
    assert!(cp.url.starts_with("https://127.0.0.1:"));
    // A full tenant operation over TLS.
    let tenant = unique_tenant("tls");
    cp.create_tenant(&tenant).await;
    assert_eq!(
        cp.request(Method::GET, "/healthz", None, None).await.status,
        200
    );

    let ca = reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap();
    let tls12_only = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let refused = tls12_only.get(format!("{}/healthz", cp.url)).send().await;
    assert!(refused.is_err(), "a TLS 1.2 handshake must fail");
    let untrusted = reqwest::Client::new()
        .get(format!("{}/healthz", cp.url))
        .send()
        .await;
    assert!(
        untrusted.is_err(),
        "a certificate from an unknown CA must not verify"
    );
    let plain = reqwest::Client::new()
        .get(cp.url.replace("https://", "http://") + "/healthz")
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "no plain HTTP on the TLS port"
    );
}

#[tokio::test]
async fn openapi_metrics_and_health_describe_the_service() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("surface");
    cp.create_tenant(&tenant).await;

    let openapi = cp
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(openapi.status, 200);
    let doc = openapi.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/tenant/infrastructure/ssh-credentials",
        "/api/v1/tenant/infrastructure/ssh-credentials/download",
        "/api/v1/tenant/infrastructure/ssh-credentials/rotate",
        "/api/v1/tenant/infrastructure/ssh-credentials/revoke",
        "/api/v1/tenant/infrastructure/ssh-credentials/regenerate",
        "/api/v1/admin/vault/health",
        "/api/v1/admin/secrets/tenants",
        "/api/v1/admin/secrets/tenant/{tenant_id}",
        "/api/v1/admin/secrets/rotate-all",
        "/api/v1/admin/secrets/rotate-all/{job_id}",
        "/api/v1/admin/secrets/rotate-all/{job_id}/events",
        "/api/v1/admin/tenants/{tenant_id}/rotation-policy",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    let credentials = &doc["components"]["schemas"]["SshCredentials"]["properties"];
    for field in [
        "vpsIp",
        "sshUsername",
        "sshPort",
        "keyFingerprint",
        "lastRotated",
        "nextRotation",
    ] {
        assert!(
            credentials.get(field).is_some(),
            "SshCredentials.{field} missing"
        );
    }

    let rotate_all = &doc["components"]["schemas"]["RotateAllResponse"]["properties"];
    for field in ["status", "rotatedCount", "failedCount", "jobId"] {
        assert!(
            rotate_all.get(field).is_some(),
            "RotateAllResponse.{field} missing"
        );
    }

    every_error_is_a_documented_problem(&doc);
    parameters_carry_the_grammar_the_server_enforces(&doc);

    let metrics = cp.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(text.contains("keyward_http_requests_total{method=\"POST\",route=\"/api/v1/admin/tenants\",status=\"201\"}"), "{text}");
    assert!(
        text.contains("keyward_vault_request_duration_seconds"),
        "{text}"
    );
    assert!(text.contains("keyward_key_operations_total"), "{text}");

    assert_eq!(
        cp.request(Method::GET, "/healthz", None, None).await.json()["status"],
        "ok"
    );
    assert_eq!(
        cp.request(Method::GET, "/readyz", None, None).await.json()["status"],
        "ready"
    );
}

/// Each operation documents the error statuses it can answer, each as `application/problem+json`
/// with the `Problem` schema.
fn every_error_is_a_documented_problem(doc: &serde_json::Value) {
    let mut operations = 0;
    let mut missing = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let what = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().unwrap();
            let secured = op
                .get("security")
                .is_none_or(|s| s.as_array().unwrap().iter().any(|r| r != &json!({})));
            let mut expected = vec![];
            if secured || op.get("requestBody").is_some() || path == "/readyz" {
                expected.push("503");
            }
            if secured {
                expected.push("401");
                // Who is signed in: any live credential may ask, so no role is ever wrong.
                if !["/api/v1/whoami", "/api/v1/session"].contains(&path.as_str()) {
                    expected.push("403");
                }
            }
            if op.get("requestBody").is_some() {
                expected.extend(["400", "413", "415"]);
            }
            if op["parameters"].as_array().is_some_and(|p| !p.is_empty()) {
                expected.push("400");
            }
            missing.extend(
                expected
                    .into_iter()
                    .filter(|status| !responses.contains_key(*status))
                    .map(|status| format!("{what} lacks {status}")),
            );
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = response["content"].as_object().unwrap();
                    assert_eq!(
                        content.keys().collect::<Vec<_>>(),
                        ["application/problem+json"],
                        "{what} {status}"
                    );
                    assert_eq!(
                        content["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{what} {status}"
                    );
                    assert!(
                        response["description"]
                            .as_str()
                            .is_some_and(|d| !d.is_empty()),
                        "{what} {status} has no description"
                    );
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    assert!(operations >= 34, "only {operations} operations");
    // No status the server cannot answer: liveness answers at once, from memory.
    let healthz = doc["paths"]["/healthz"]["get"]["responses"]
        .as_object()
        .unwrap();
    assert_eq!(healthz.keys().collect::<Vec<_>>(), ["200"]);
}

/// Ids carry their pattern, limits their range, times their format.
fn parameters_carry_the_grammar_the_server_enforces(doc: &serde_json::Value) {
    let tenant_pattern = keyward_common::TenantId::PATTERN;
    let param = |path: &str, method: &str, name: &str| {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
            .clone()
    };
    for (path, method, name) in [
        (
            "/api/v1/admin/secrets/tenant/{tenant_id}",
            "get",
            "tenant_id",
        ),
        (
            "/api/v1/admin/tenants/{tenant_id}/rotation-policy",
            "put",
            "tenant_id",
        ),
        ("/api/v1/admin/hosts/{host_id}", "get", "host_id"),
        ("/api/v1/admin/hosts/{host_id}/revoke", "post", "host_id"),
        ("/api/v1/admin/audit", "get", "tenantId"),
        ("/api/v1/admin/audit/logins", "get", "hostId"),
    ] {
        let schema = param(path, method, name);
        assert_eq!(schema["pattern"], tenant_pattern, "{path} {name}");
        assert_eq!(schema["maxLength"], 63, "{path} {name}");
    }
    assert_eq!(
        param("/api/v1/admin/audit/logins", "get", "user")["pattern"],
        keyward_common::UnixUser::PATTERN
    );
    assert_eq!(
        param(
            "/api/v1/admin/tenants/{tenant_id}/keys/{kind}/{operation}",
            "post",
            "kind"
        )["enum"],
        json!(["admin", "tenant"])
    );
    for (path, method, name) in [
        ("/api/v1/admin/secrets/rotate-all/{job_id}", "get", "job_id"),
        ("/api/v1/admin/tokens/{token_id}", "delete", "token_id"),
    ] {
        let schema = param(path, method, name);
        assert_eq!(schema["maxLength"], 20, "{path} {name}: {schema}");
        assert!(
            schema["pattern"].as_str().is_some(),
            "{path} {name}: {schema}"
        );
    }
    for (path, method) in [
        ("/api/v1/admin/audit", "get"),
        ("/api/v1/admin/audit/logins", "get"),
        ("/api/v1/tenant/infrastructure/ssh-logins", "get"),
    ] {
        let limit = param(path, method, "limit");
        assert_eq!(
            (limit["minimum"].as_i64(), limit["maximum"].as_i64()),
            (Some(1), Some(1000)),
            "{path}"
        );
    }
    assert_eq!(
        param("/api/v1/admin/audit", "get", "since")["format"],
        "date-time"
    );
    let create = &doc["components"]["schemas"]["CreateTenantRequest"]["properties"];
    assert_eq!(create["tenantId"]["pattern"], tenant_pattern);
    assert_eq!(
        create["sshUsername"]["pattern"],
        keyward_common::UnixUser::PATTERN
    );
    assert_eq!(
        create["adminUsername"]["pattern"],
        keyward_common::UnixUser::PATTERN
    );
    assert_eq!(create["sshPort"]["minimum"], 1);
    let register = &doc["components"]["schemas"]["RegisterHostRequest"]["properties"];
    assert_eq!(register["tenantId"]["pattern"], tenant_pattern);
    assert_eq!(register["hostId"]["pattern"], tenant_pattern);
    let token = &doc["components"]["schemas"]["IssueTokenRequest"]["properties"];
    assert_eq!(token["label"]["maxLength"], 200);
}
