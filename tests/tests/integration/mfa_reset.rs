//! An admin resets a tenant's second factors (#17, the "lost phone" case), against real OpenBao
//! and each SQL backend: the admin steps up for it with a factor of its own (`reset_mfa` in the
//! deployment's list), the tenant's factors, recovery codes and lockout go, its step-ups answer
//! `mfa_not_enrolled` until it enrols again, which then works; another tenant's factors are
//! untouched; `mfa.reset` is on the tenant's chain with the count, and the chain verifies.

use keyward_common::KeyAlgorithm;
use keyward_tests::{ControlPlane, Database, OpenBao, unique_tenant};
use reqwest::Method;
use serde_json::json;

use crate::mfa_totp::{call, enrol};

const DOWNLOAD: &str = "/api/v1/tenant/infrastructure/ssh-credentials/download";

#[tokio::test]
async fn an_admin_resets_a_tenants_second_factors_on_sqlite_and_postgres() {
    let bao = OpenBao::start().await;
    for database in [Database::Sqlite, Database::Postgres] {
        reset_story(&bao, database).await;
    }
}

async fn reset_story(bao: &OpenBao, database: Database) {
    let cp = ControlPlane::start_with(
        bao,
        keyward_tests::control_plane::Options {
            database,
            algorithm: KeyAlgorithm::Ed25519,
            configure: Some(|c| {
                use keyward_server::config::SensitiveOperation::*;
                c.mfa.require_for = vec![ResetMfa, Download];
            }),
            ..Default::default()
        },
    )
    .await;
    let tenant = unique_tenant("lost");
    let other = unique_tenant("kept");
    for t in [&tenant, &other] {
        cp.create_tenant(t).await;
    }
    let token = cp.tenant_token(&tenant).await;
    let other_token = cp.tenant_token(&other).await;
    let path = format!("/api/v1/admin/tenants/{tenant}/mfa");

    // The routes and their problems are in the OpenAPI document.
    let doc = cp
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .json();
    let op = &doc["paths"]["/api/v1/admin/tenants/{tenant_id}/mfa"];
    assert!(op["get"].is_object(), "{op:#}");
    for (status, code) in [
        ("401", "mfa_required"),
        ("403", "mfa_not_enrolled"),
        ("404", "tenant_not_found"),
        ("429", "mfa_locked"),
    ] {
        let description = op["delete"]["responses"][status]["description"]
            .as_str()
            .unwrap();
        assert!(description.contains(code), "{status}: {description}");
    }

    // Both tenants enrol; the tenant then locks its step-ups with wrong codes.
    let (factor_id, mut app, recovery, enrolment) = enrol(&cp, "/api/v1/tenant/mfa", &token).await;
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    let (other_factor, mut other_app, _, _) = enrol(&cp, "/api/v1/tenant/mfa", &other_token).await;
    for _ in 0..5 {
        call(
            &cp,
            Method::POST,
            DOWNLOAD,
            &token,
            None,
            Some("totp:000000x"),
        )
        .await
        .assert_problem(401, "mfa_invalid");
    }
    let right = format!("totp:{}", app.fresh_code().await);
    call(&cp, Method::POST, DOWNLOAD, &token, None, Some(&right))
        .await
        .assert_problem(429, "mfa_locked");

    // Support sees the factors as the tenant lists them, never a secret.
    let listed = call(&cp, Method::GET, &path, &cp.admin_token, None, None).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let listed_json = listed.json();
    assert_eq!(listed_json["factors"][0]["id"], factor_id.as_str());
    assert_eq!(listed_json["factors"][0]["kind"], "totp");
    assert_eq!(listed_json["requireFor"], json!(["download", "reset_mfa"]));
    assert!(!listed.text().contains(&secret), "{}", listed.text());
    for (who, status, code) in [
        (&token, 403, "forbidden"),
        (&other_token, 404, "tenant_not_found"),
    ] {
        call(&cp, Method::GET, &path, who, None, None)
            .await
            .assert_problem(status, code);
        call(&cp, Method::DELETE, &path, who, None, None)
            .await
            .assert_problem(status, code);
    }
    for method in [Method::GET, Method::DELETE] {
        call(
            &cp,
            method,
            "/api/v1/admin/tenants/nobody-here/mfa",
            &cp.admin_token,
            None,
            None,
        )
        .await
        .assert_problem(404, "tenant_not_found");
    }

    // The admin has no factor: the policy names reset_mfa, so 403; once it has one, 401 without
    // it, and the tenant's factors are still there.
    call(&cp, Method::DELETE, &path, &cp.admin_token, None, None)
        .await
        .assert_problem(403, "mfa_not_enrolled");
    let (_, mut admin_app, _, _) = enrol(&cp, "/api/v1/admin/mfa", &cp.admin_token).await;
    call(&cp, Method::DELETE, &path, &cp.admin_token, None, None)
        .await
        .assert_problem(401, "mfa_required");
    // The tenant's own code is not the admin's.
    let tenant_code = format!("totp:{}", app.fresh_code().await);
    call(
        &cp,
        Method::DELETE,
        &path,
        &cp.admin_token,
        None,
        Some(&tenant_code),
    )
    .await
    .assert_problem(401, "mfa_invalid");
    let still = call(&cp, Method::GET, &path, &cp.admin_token, None, None).await;
    assert_eq!(still.json()["factors"].as_array().unwrap().len(), 1);

    // With the admin's code: gone, all of them.
    let admin_code = format!("totp:{}", admin_app.fresh_code().await);
    let reset = call(
        &cp,
        Method::DELETE,
        &path,
        &cp.admin_token,
        None,
        Some(&admin_code),
    )
    .await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    assert_eq!(reset.json(), json!({ "removed": 1 }));
    let mine = call(&cp, Method::GET, "/api/v1/tenant/mfa", &token, None, None).await;
    assert_eq!(mine.json()["factors"], json!([]), "{}", mine.text());

    // The tenant's step-up has nothing to go on; the old recovery codes are gone too, and the
    // lockout with them.
    call(&cp, Method::POST, DOWNLOAD, &token, None, None)
        .await
        .assert_problem(403, "mfa_not_enrolled");
    let rescue = format!("recovery:{}", recovery[0]);
    call(&cp, Method::POST, DOWNLOAD, &token, None, Some(&rescue))
        .await
        .assert_problem(403, "mfa_not_enrolled");

    // It enrols again, without a code, and downloads with the new factor.
    let (_, mut new_app, _, _) = enrol(&cp, "/api/v1/tenant/mfa", &token).await;
    let code = format!("totp:{}", new_app.fresh_code().await);
    let key = call(&cp, Method::POST, DOWNLOAD, &token, None, Some(&code)).await;
    assert_eq!(key.status, 200, "{}", key.text());
    assert!(
        key.text()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    );

    // The other tenant's factor is untouched and still steps up.
    let theirs = call(
        &cp,
        Method::GET,
        "/api/v1/tenant/mfa",
        &other_token,
        None,
        None,
    )
    .await
    .json();
    assert_eq!(
        theirs["factors"][0]["id"],
        other_factor.as_str(),
        "{theirs}"
    );
    let other_code = format!("totp:{}", other_app.fresh_code().await);
    let their_key = call(
        &cp,
        Method::POST,
        DOWNLOAD,
        &other_token,
        None,
        Some(&other_code),
    )
    .await;
    assert_eq!(their_key.status, 200, "{}", their_key.text());

    // Audited on the tenant's chain: the count and the admin's token, no secret; the chain holds.
    let events = cp.audit_of(&tenant).await;
    let resets: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == "mfa.reset")
        .collect();
    assert_eq!(resets.len(), 1, "{events:#?}");
    assert_eq!(resets[0]["outcome"], "success");
    assert_eq!(resets[0]["detail"], json!({ "removed": 1 }));
    assert_eq!(resets[0]["actorRole"], "admin");
    assert!(resets[0]["actorTokenId"].is_string(), "{}", resets[0]);
    let text = serde_json::to_string(&events).unwrap();
    for needle in [secret.as_str(), &recovery[0], &admin_code] {
        assert!(!text.contains(needle), "the audit log holds {needle:?}");
    }
    assert!(
        cp.audit_of(&other)
            .await
            .iter()
            .all(|e| e["action"] != "mfa.reset")
    );
    let verify = cp.admin_get("/api/v1/admin/audit/verify").await;
    assert_eq!(verify.status, 200, "{}", verify.text());
    assert_eq!(verify.json()["ok"], true, "{}", verify.text());
}

/// The admin's tenant view in headless Chromium: the tenant's factors listed, "Reset second
/// factors" behind the page's confirmation and the admin's step-up prompt, then none left.
/// Accessible (axe) with the list and after.
#[tokio::test]
async fn an_admin_resets_a_tenants_second_factors_in_the_page() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            database: Database::Sqlite,
            algorithm: KeyAlgorithm::Ed25519,
            configure: Some(|c| {
                c.mfa.require_for = vec![keyward_server::config::SensitiveOperation::ResetMfa];
            }),
            ..Default::default()
        },
    )
    .await;
    let tenant = unique_tenant("uireset");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let (factor_id, _, _, _) = enrol(&cp, "/api/v1/tenant/mfa", &token).await;
    let (_, mut admin_app, _, _) = enrol(&cp, "/api/v1/admin/mfa", &cp.admin_token).await;

    let browser = keyward_tests::Browser::start().await;
    crate::web_ui::sign_in(&browser, &cp, &cp.admin_token, "main h1").await;
    browser
        .goto(&format!("{}/ui/#/admin/tenants", cp.url))
        .await;
    let row = format!("#tenants tr[data-tenant-id=\"{tenant}\"]");
    browser.wait_for(&row, "the tenant").await;
    browser.click(&format!("{row} button")).await;
    browser
        .wait_for(
            &format!("#tenant-mfa-factors tr[data-factor-id=\"{factor_id}\"]"),
            "the tenant's factor",
        )
        .await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "tenant factors: {violations:#?}");

    browser.click("#reset-tenant-mfa").await;
    crate::web_ui::confirm(&browser, "check who asks").await;
    browser
        .wait_text("#step-up-text", "the admin's prompt for a code", |t| {
            t.contains("authenticator app")
        })
        .await;
    browser
        .type_into("#step-up-code", &admin_app.fresh_code().await)
        .await;
    browser.click("#step-up-ok").await;
    browser
        .wait_text("#tenant-mfa-status", "the reset", |t| {
            t.contains("Removed 1 second factor")
        })
        .await;
    assert!(browser.text("#tenant-mfa").await.contains("None."));
    assert!(
        browser
            .attr("#reset-tenant-mfa", "disabled")
            .await
            .is_some()
    );
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "after the reset: {violations:#?}");
    browser.screenshot("admin-tenant-mfa-reset").await;
    let mine = call(&cp, Method::GET, "/api/v1/tenant/mfa", &token, None, None).await;
    assert_eq!(mine.json()["factors"], json!([]), "{}", mine.text());
    assert!(
        cp.audit_of(&tenant)
            .await
            .iter()
            .any(|e| e["action"] == "mfa.reset" && e["outcome"] == "success")
    );
}
