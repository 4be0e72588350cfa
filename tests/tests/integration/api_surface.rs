//! TLS, OpenAPI, metrics and health: the API's surface as operators and clients meet it.

use keyward_tests::control_plane::{Options, TestTls};
use keyward_tests::{ControlPlane, Database, OpenBao, unique_tenant};
use reqwest::Method;

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
