//! Registering one's own key in the web UI (#17), in headless Chromium: the tenant's form for
//! its own key and the admin's for a tenant's admin user, each refused with the server's reason
//! for a bad key, accessible (axe) before and after; and each one's way back to a generated
//! key. The API and the hosts: `registered_keys.rs`.

use keyward_tests::{Browser, ControlPlane, Database, OpenBao, unique_tenant};
use reqwest::Method;

use crate::registered_keys::LaptopKey;

/// The tenant's page (#17): the tenant pastes its own public key, a weak one is refused with the
/// server's reason, a good one replaces the generated key; the page then says there is nothing to
/// download and offers no rotate or regenerate. Accessible (axe) before and after.
#[tokio::test]
async fn a_tenant_registers_its_own_key_in_the_page() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("uibyo");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let own = LaptopKey::new(&["-t", "ed25519"]);
    let weak = LaptopKey::new(&["-t", "rsa", "-b", "2048"]);

    let browser = Browser::start().await;
    crate::web_ui::sign_in(&browser, &cp, &token, "#fingerprint code").await;
    let hint = browser
        .wait_text("#public-key-hint", "the explanation", |t| {
            t.contains("never has your")
        })
        .await;
    assert!(hint.contains("3072"), "{hint}");
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "own key form: {violations:#?}");

    let confirm = |says: &'static str| {
        let browser = &browser;
        async move {
            browser
                .wait_text("#confirm-text", "the confirmation", |t| t.contains(says))
                .await;
            browser.click("#confirm-ok").await;
        }
    };
    browser.type_into("#public-key", weak.public.trim()).await;
    browser.click("#register-key").await;
    confirm("grace period").await;
    browser
        .wait_text("#own-key-status", "the refusal", |t| {
            t.contains("3072 bits")
        })
        .await;

    browser.type_into("#public-key", own.public.trim()).await;
    browser.click("#register-key").await;
    confirm("grace period").await;
    browser
        .wait_text("#own-key-status", "the registration", |t| {
            t.contains(&own.fingerprint)
        })
        .await;
    browser
        .wait_text("#fingerprint", "the new fingerprint", |t| {
            t.contains(&own.fingerprint)
        })
        .await;
    let origin = browser.text("#key-origin").await;
    assert!(origin.contains("your own ssh-ed25519 key"), "{origin}");
    browser
        .wait_for("#download-registered", "nothing to download")
        .await;
    assert!(browser.attr("#rotate", "disabled").await.is_some());
    assert!(browser.attr("#regenerate", "disabled").await.is_some());
    assert_eq!(browser.text("#register-key").await, "Replace my key");
    browser
        .wait_for("#own-key-step", "the step for the tenant's own key")
        .await;
    let command = browser.text("#ssh-command").await;
    assert!(!command.contains("tenant-ssh-key.pem"), "{command}");
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "registered: {violations:#?}");
    browser.screenshot("tenant-own-key-registered").await;
    let creds = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(creds["keyOrigin"], "registered", "{creds}");

    // Back to a generated key: confirmed, then the page offers the download again.
    browser.click("#unregister-key").await;
    confirm("stops working at once").await;
    browser
        .wait_text("#own-key-status", "the generated key", |t| {
            t.contains("generated a new key")
        })
        .await;
    browser
        .wait_text("#key-origin", "the generated key", |t| {
            !t.contains("your own")
        })
        .await;
    browser.wait_for("#download", "the download again").await;
    assert!(browser.attr("#download", "disabled").await.is_none());
    assert!(browser.attr("#regenerate", "disabled").await.is_none());
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "generated again: {violations:#?}");
    let creds = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(creds["keyOrigin"], "generated", "{creds}");
    let status = browser.text("#own-key-status").await;
    assert!(
        status.contains(creds["keyFingerprint"].as_str().unwrap()),
        "{status}"
    );
    browser.close().await;
}

/// The admin's tenant details (#17): the admin registers the public key of the tenant's admin
/// user; the key set then reads "registered" with its type, in a page axe finds nothing in.
#[tokio::test]
async fn an_admin_registers_the_admin_users_key_and_goes_back_to_a_generated_one_in_the_page() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("uiadm");
    cp.create_tenant(&tenant).await;
    let own = LaptopKey::new(&["-t", "ecdsa", "-b", "256"]);

    let browser = Browser::start().await;
    crate::web_ui::sign_in(&browser, &cp, &cp.admin_token, "main h1").await;
    browser
        .goto(&format!("{}/ui/#/admin/tenants", cp.url))
        .await;
    let row = format!("#tenants tr[data-tenant-id=\"{tenant}\"]");
    browser.wait_for(&row, "the tenant").await;
    browser.click(&format!("{row} button")).await;
    browser
        .wait_for("#admin-key-form #admin-public-key", "the admin key form")
        .await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin key form: {violations:#?}");

    browser
        .type_into("#admin-public-key", "ssh-ed25519 AAAA")
        .await;
    browser.click("#register-admin-key").await;
    browser
        .wait_text("#admin-key-status", "the refusal", |t| {
            t.contains("not an OpenSSH public key")
        })
        .await;
    browser
        .type_into("#admin-public-key", own.public.trim())
        .await;
    browser.click("#register-admin-key").await;
    browser
        .wait_text("#admin-key-status", "the registration", |t| {
            t.contains(&own.fingerprint)
        })
        .await;
    let details = browser
        .wait_text("#tenant-details", "the registered key", |t| {
            t.contains("registered ecdsa-sha2-nistp256")
        })
        .await;
    assert!(details.contains(&own.fingerprint), "{details}");
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "registered: {violations:#?}");
    browser.screenshot("admin-own-admin-key").await;

    // And back to a key keyward generates: the registered one is gone from the details.
    browser.click("#unregister-admin-key").await;
    super::web_ui::confirm(&browser, "registered key stops working").await;
    let said = browser
        .wait_text("#admin-key-status", "the generated key", |t| {
            t.contains("keyward generated")
        })
        .await;
    let details = browser
        .wait_text("#tenant-details", "the generated key", |t| {
            !t.contains("registered ecdsa-sha2-nistp256")
        })
        .await;
    assert!(!details.contains(&own.fingerprint), "{details}");
    let view = cp
        .admin_get(&format!("/api/v1/admin/secrets/tenant/{tenant}"))
        .await
        .json();
    let generated = &view["sshKeys"]["adminSsh"];
    assert_eq!(generated["origin"], "generated", "{view}");
    let fingerprint = generated["fingerprint"].as_str().unwrap();
    assert!(said.contains(fingerprint), "{said}");
    // The refused weak key (422) is the browser's own console line; nothing else.
    let errors = browser.console_errors().await;
    assert!(
        errors.iter().all(|e| e.contains("422")),
        "console errors: {errors:?}"
    );
    browser.close().await;
}
