//! Vault over TLS: OpenBao serving only HTTPS with a certificate from its own CA. With
//! `vault.ca_file` naming that CA the control plane works as over plain HTTP; without it the
//! control plane refuses to start (it reads its agent CA from Vault first) and says that the
//! certificate was not trusted, never falling back to an unverified connection.

use keyward_tests::control_plane::Options;
use keyward_tests::{ControlPlane, Database, OpenBao, unique_tenant};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_trusts_vault_through_its_ca_file() {
    let bao = OpenBao::start_tls().await;
    assert!(bao.addr.starts_with("https://"), "{}", bao.addr);
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;

    let health = cp.admin_get("/api/v1/admin/vault/health").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["sealed"], false);

    let tenant = unique_tenant("tls");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let download = cp.tenant_call(&token, Method::POST, "/download").await;
    assert_eq!(download.status, 200, "{}", download.text());
    assert!(
        download
            .text()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    );
    // The key came from the TLS server's store.
    let (stored, _) = bao.read_kv(&format!("{tenant}/tenant_ssh")).await.unwrap();
    assert_eq!(stored["private_key"].as_str().unwrap(), download.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_vault_certificate_stops_the_start_with_a_clear_error() {
    let mut bao = OpenBao::start_tls().await;
    // The system's roots do not include OpenBao's own CA: no ca_file, no trust, no fallback.
    bao.ca_file = None;
    let options = Options {
        algorithm: keyward_common::KeyAlgorithm::Ed25519,
        ..Options::default()
    };
    let Err(refused) = ControlPlane::try_start_with(&bao, options).await else {
        panic!("the control plane started against a Vault whose certificate it cannot verify");
    };
    assert!(refused.contains(&bao.addr), "{refused}");
    assert!(
        refused.to_lowercase().contains("certificate"),
        "the error should say the certificate was refused: {refused}"
    );
}
