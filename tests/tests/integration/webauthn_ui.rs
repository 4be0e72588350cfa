//! A security key as the second factor in the web UI (#17), in headless Chromium with
//! chromedriver's virtual authenticator (WebDriver's WebAuthn extension) plugged in: the tenant
//! adds and names a key in the page (navigator.credentials.create), then downloads its private
//! key stepping up with it ("Use security key", navigator.credentials.get). Without it the server
//! refuses; once the key is unplugged (and a key never registered plugged in), the page cannot
//! step up and regenerating is refused. The API and its refusals: `mfa_webauthn.rs`.

use std::net::SocketAddr;
use std::sync::OnceLock;

use fantoccini::key::Key;
use keyward_common::KeyAlgorithm;
use keyward_tests::{Browser, ControlPlane, Database, OpenBao, free_port, unique_tenant};
use reqwest::Method;
use serde_json::json;

use crate::web_ui::{confirm, saved_key};

/// The origin the page is opened at, which the control plane is configured with: WebAuthn needs
/// a secure context and a domain, so `localhost` (not 127.0.0.1), on a port picked first.
static ORIGIN: OnceLock<String> = OnceLock::new();

#[tokio::test]
async fn tenant_adds_a_security_key_and_steps_up_with_it_in_the_page() {
    let port = free_port();
    let origin = ORIGIN
        .get_or_init(|| format!("http://localhost:{port}"))
        .clone();
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            database: Database::Sqlite,
            algorithm: KeyAlgorithm::Ed25519,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            configure: Some(|c| c.mfa.webauthn_origin = ORIGIN.get().cloned()),
            ..Default::default()
        },
    )
    .await;
    let tenant = unique_tenant("uikey");
    cp.create_tenant(&tenant).await;
    let policy = cp
        .request(
            Method::PUT,
            &format!("/api/v1/admin/tenants/{tenant}/mfa-policy"),
            Some(&cp.admin_token),
            Some(json!({ "requireFor": ["download", "regenerate"] })),
        )
        .await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    let token = cp.tenant_token(&tenant).await;

    let browser = Browser::start().await;
    let authenticator = browser.add_virtual_authenticator().await;
    browser.goto(&format!("{origin}/")).await;
    browser.wait_for("#signin #token", "the sign-in form").await;
    browser.type_into("#token", &token).await;
    browser.press(Key::Enter).await;
    browser
        .wait_for("#mfa-add-key", "the security key form")
        .await;

    // Named, and added with the (virtual) key's PIN.
    browser.type_into("#mfa-key-name", "Desk YubiKey").await;
    browser.click("#mfa-add-key").await;
    browser
        .wait_text("#mfa-factors", "the added key", |t| {
            t.contains("Security key") && t.contains("Desk YubiKey")
        })
        .await;
    let violations = browser.accessibility_violations().await;
    assert!(
        violations.is_empty(),
        "security key listed: {violations:#?}"
    );
    browser.screenshot("tenant-mfa-security-key").await;
    let listed = cp
        .request(Method::GET, "/api/v1/tenant/mfa", Some(&token), None)
        .await
        .json();
    assert_eq!(listed["factors"][0]["kind"], "webauthn", "{listed}");
    assert_eq!(listed["factors"][0]["name"], "Desk YubiKey", "{listed}");

    // Without a step-up the server refuses the download.
    cp.request(
        Method::POST,
        "/api/v1/tenant/infrastructure/ssh-credentials/download",
        Some(&token),
        None,
    )
    .await
    .assert_problem(401, "mfa_required");

    // In the page: the prompt offers the key, and the key is saved with it.
    browser.click("#download").await;
    confirm(&browser, "handed out once").await;
    browser
        .wait_text("#step-up-text", "the prompt", |t| {
            t.contains("security key")
        })
        .await;
    assert_eq!(
        browser
            .script("return document.getElementById('step-up-key').hidden")
            .await,
        json!(false)
    );
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "step-up prompt: {violations:#?}");
    browser.click("#step-up-key").await;
    let (_, key) = saved_key(&browser, "Downloaded").await;
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let events = cp.audit_of(&tenant).await;
    assert!(
        events.iter().any(|e| e["action"] == "mfa.step_up"
            && e["outcome"] == "success"
            && e["detail"]["method"] == "webauthn"
            && e["detail"]["operation"] == "download"),
        "{events:#?}"
    );

    // The key unplugged, another one (never registered) plugged in: the page cannot step up,
    // and regenerating is refused.
    browser.remove_virtual_authenticator(&authenticator).await;
    let stranger = browser.add_virtual_authenticator().await;
    assert_ne!(stranger, authenticator);
    browser.click("#regenerate").await;
    confirm(&browser, "").await;
    browser
        .wait_text("#step-up-text", "the prompt", |t| {
            t.contains("security key")
        })
        .await;
    browser.click("#step-up-key").await;
    browser
        .wait_text("#action-status", "the refusal", |t| {
            t.to_lowercase().contains("second factor")
        })
        .await;
    let events = cp.audit_of(&tenant).await;
    assert!(
        !events
            .iter()
            .any(|e| e["action"] == "key.regenerate" && e["outcome"] == "success"),
        "{events:#?}"
    );
    browser.close().await;
}
