//! The web UI in a real browser: Debian's headless Chromium, driven over WebDriver, against a
//! real control plane, OpenBao, sshd and agent. Screenshots of every page are written to
//! `target/ui-screenshots/`.

use std::time::Duration;

use fantoccini::key::Key;
use keyward_common::KeyAlgorithm;
use keyward_tests::{
    Browser, ControlPlane, Database, Deployment, KeyFile, OpenBao, eventually, unique_tenant,
};
use reqwest::Method;
use serde_json::json;

/// Signs in on the page with `token` and waits for the start page of its role.
pub(crate) async fn sign_in(browser: &Browser, cp: &ControlPlane, token: &str, start: &str) {
    browser.goto(&format!("{}/", cp.url)).await;
    browser.wait_for("#signin #token", "the sign-in form").await;
    browser.type_into("#token", token).await;
    // Enter in the field signs in, as in any form.
    browser.press(Key::Enter).await;
    browser.wait_for(start, "the start page").await;
}

/// Confirms the page's dialog (its text must mention `says`).
pub(crate) async fn confirm(browser: &Browser, says: &str) {
    browser
        .wait_text("#confirm-text", "the confirmation", |t| t.contains(says))
        .await;
    browser.click("#confirm-ok").await;
}

/// The key file the page saved once its status line `says` so: its path and its text, an
/// OpenSSH private key.
pub(crate) async fn saved_key(browser: &Browser, says: &str) -> (std::path::PathBuf, String) {
    let file = browser.downloaded("tenant-ssh-key.pem").await;
    browser
        .wait_text("#download-status", "the download's confirmation", |t| {
            t.contains(says)
        })
        .await;
    let key = std::fs::read_to_string(&file).unwrap();
    assert!(
        key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "not a key file"
    );
    (file, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_signs_in_downloads_once_and_rotates() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("ui");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let before = cp.tenant_call(&token, Method::GET, "").await.json();
    let first = before["keyFingerprint"].as_str().unwrap().to_owned();

    // The pages' security headers.
    let page = cp.request(Method::GET, "/ui/", None, None).await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));

    let browser = Browser::start().await;
    // A wrong token is refused on the page, not silently.
    browser.goto(&format!("{}/", cp.url)).await;
    browser.type_into("#token", "kw_not-a-real-token").await;
    browser.click("#signin button[type=submit]").await;
    browser
        .wait_text("#signin-error", "the refusal", |t| t.contains("not valid"))
        .await;
    browser.screenshot("signin-refused").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "sign-in page: {violations:#?}");

    sign_in(&browser, &cp, &token, "#fingerprint code").await;
    let shown = browser
        .wait_text("#fingerprint", "the key's fingerprint", |t| {
            t.starts_with("SHA256:")
        })
        .await;
    assert_eq!(shown, first);
    assert_eq!(
        browser.text("#ssh-command").await,
        format!("ssh -i tenant-ssh-key.pem -p 2222 tenant@127.0.0.1")
    );
    assert_eq!(
        browser.text("#chmod-command").await,
        "chmod 600 tenant-ssh-key.pem"
    );
    let warning = browser.text("#download-warning").await;
    assert!(warning.contains("once"), "{warning}");
    browser.screenshot("tenant").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "tenant page: {violations:#?}");

    // The one-time download: the file arrives and is the key of the fingerprint shown.
    browser.click("#download").await;
    confirm(&browser, "once").await;
    let (file, key) = saved_key(&browser, "Downloaded").await;
    let fingerprint = keyward_common::keys::private_key_fingerprint(&key).unwrap();
    assert_eq!(fingerprint.to_string(), first);
    std::fs::remove_file(&file).unwrap();

    // A second try is refused, in the page.
    browser
        .wait_text("#download-warning", "the already-downloaded note", |t| {
            t.contains("already been downloaded")
        })
        .await;
    browser.click("#download").await;
    confirm(&browser, "once").await;
    browser
        .wait_text("#download-status", "the refusal", |t| {
            t.contains("already downloaded")
        })
        .await;
    assert!(
        browser.downloads().is_empty(),
        "a refused download left a file: {:?}",
        browser.downloads()
    );
    browser.screenshot("tenant-download-refused").await;

    // Rotate: the dialog says what happens to live sessions; the new fingerprint shows.
    browser.click("#rotate").await;
    confirm(&browser, "sessions open now go on").await;
    let after = browser
        .wait_text("#fingerprint", "the new fingerprint", |t| {
            t.starts_with("SHA256:") && t != first
        })
        .await;
    let now = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(now["keyFingerprint"], json!(after));
    browser
        .wait_text("#action-status", "the rotation's message", |t| {
            t.contains(&after)
        })
        .await;

    // Regenerate and revoke ask first, and say that sessions end; cancelling changes nothing.
    browser.click("#revoke").await;
    browser
        .wait_text("#confirm-text", "the revoke warning", |t| {
            t.contains("ends the SSH sessions")
        })
        .await;
    browser.screenshot("tenant-confirm-revoke").await;
    // Keyboard: the dialog takes the focus on its safe choice, and Escape cancels.
    assert_eq!(browser.focused_id().await, "confirm-cancel");
    browser.press(Key::Escape).await;
    eventually("the dialog to close", Duration::from_secs(10), || async {
        (browser
            .script("return document.getElementById('confirm').open")
            .await
            == json!(false))
        .then_some(())
    })
    .await;
    let unchanged = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(unchanged["keyStatus"], "active");

    // Phone width: the page still works, nothing needs sideways scrolling.
    browser.resize(390, 844).await;
    let overflow = browser
        .script("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    browser.screenshot("tenant-phone").await;
    let wide = browser
        .script(
            "const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); const out = []; let n; while ((n = w.nextNode())) { const r = document.createRange(); r.selectNodeContents(n); const b = r.getBoundingClientRect(); if (b.right > window.innerWidth + 1) out.push(n.parentElement.tagName + '#' + n.parentElement.id + ': ' + n.textContent.slice(0, 40) + ' ' + Math.round(b.right)); } return out.slice(0, 8).join('; ')",
        )
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "page wider than the phone by {overflow} px: {wide}"
    );

    let errors = browser.console_errors().await;
    assert!(
        errors
            .iter()
            .all(|e| e.contains("410") || e.contains("401")),
        "console errors: {errors:?}"
    );
    browser.close().await;
}

/// The download form asks for a passphrase twice and says what it is for and that keyward does
/// not keep it; where the tenant's policy requires one, the page refuses to go on without it
/// and with two that differ (no request is sent, the download is not spent); with matching ones
/// the file the page saves is the key encrypted with that passphrase, which OpenSSH opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_downloads_a_passphrase_encrypted_key_in_the_page() {
    const PASSPHRASE: &str = "correct horse battery staple 17";
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("uipass");
    cp.create_tenant(&tenant).await;
    let required = cp
        .request(
            Method::PUT,
            &format!("/api/v1/admin/tenants/{tenant}/download-policy"),
            Some(&cp.admin_token),
            Some(json!({ "requirePassphrase": true, "minPassphraseLength": 14 })),
        )
        .await;
    assert_eq!(required.status, 200, "{}", required.text());
    let token = cp.tenant_token(&tenant).await;
    let shown = cp.tenant_call(&token, Method::GET, "").await.json()["keyFingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    let browser = Browser::start().await;
    sign_in(&browser, &cp, &token, "#fingerprint code").await;
    let hint = browser
        .wait_text("#passphrase-hint", "the passphrase's explanation", |t| {
            t.contains("does not keep")
        })
        .await;
    assert!(hint.contains("encrypted"), "{hint}");
    assert!(
        hint.contains("requires a passphrase of at least 14"),
        "{hint}"
    );
    assert!(browser.attr("#passphrase", "required").await.is_some());
    assert!(
        browser
            .attr("#passphrase-again", "required")
            .await
            .is_some()
    );
    assert_eq!(
        browser.attr("#passphrase", "type").await.as_deref(),
        Some("password")
    );
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "download form: {violations:#?}");

    // Required: none is refused in the page; two that differ too.
    browser.click("#download").await;
    browser
        .wait_text("#download-status", "the refusal", |t| {
            t.contains("passphrase is required")
        })
        .await;
    browser.type_into("#passphrase", PASSPHRASE).await;
    browser
        .type_into("#passphrase-again", &format!("{PASSPHRASE}!"))
        .await;
    browser.click("#download").await;
    browser
        .wait_text("#download-status", "the mismatch", |t| {
            t.contains("do not match")
        })
        .await;
    browser.screenshot("tenant-passphrase-mismatch").await;
    assert_eq!(
        browser
            .script("return document.getElementById('confirm').open")
            .await,
        json!(false),
        "a mismatch went on to the confirmation"
    );
    assert!(browser.downloads().is_empty(), "{:?}", browser.downloads());
    let creds = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(
        creds["downloaded"], false,
        "a refusal in the page spent the download"
    );

    // Matching: the page saves the encrypted key and forgets the passphrase.
    browser.type_into("#passphrase-again", PASSPHRASE).await;
    browser.click("#download").await;
    confirm(&browser, "encrypted with your passphrase").await;
    let (_, key) = saved_key(&browser, "encrypted with your passphrase").await;
    let parsed = ssh_key::PrivateKey::from_openssh(&key).unwrap();
    assert!(parsed.is_encrypted(), "the page saved the key in clear");
    let saved = KeyFile::write(&key);
    let opened = std::process::Command::new("ssh-keygen")
        .args(["-y", "-P", PASSPHRASE, "-f"])
        .arg(&saved.path)
        .output()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(opened.status.success(), "{opened:?}");
    let public = String::from_utf8(opened.stdout).unwrap();
    assert_eq!(
        keyward_common::keys::public_key_fingerprint(&public)
            .unwrap()
            .as_str(),
        shown
    );
    let refused = std::process::Command::new("ssh-keygen")
        .args(["-y", "-P", "not the passphrase", "-f"])
        .arg(&saved.path)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert_eq!(value_of(&browser, "passphrase").await, "");
    assert_eq!(value_of(&browser, "passphrase-again").await, "");
    let events = cp.audit_of(&tenant).await;
    assert!(
        events.iter().any(|e| e["action"] == "key.download"
            && e["outcome"] == "success"
            && e["detail"]["encrypted"] == true),
        "{events:#?}"
    );
    browser.screenshot("tenant-passphrase-downloaded").await;
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.close().await;
}

/// Two-step verification in the page (#17): the tenant sets up an authenticator app from the QR
/// code and secret shown once, confirms it and is shown its recovery codes once; where the
/// policy names the download, the page asks for a code when the server answers `mfa_required`
/// (the session goes on), and the key is saved with it.
#[tokio::test]
async fn tenant_enrols_totp_and_steps_up_for_the_download_in_the_page() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("uimfa");
    cp.create_tenant(&tenant).await;
    let policy = cp
        .request(
            Method::PUT,
            &format!("/api/v1/admin/tenants/{tenant}/mfa-policy"),
            Some(&cp.admin_token),
            Some(json!({ "requireFor": ["download"] })),
        )
        .await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    let token = cp.tenant_token(&tenant).await;

    let browser = Browser::start().await;
    sign_in(&browser, &cp, &token, "#mfa-enrol").await;
    let asked = browser.text("#mfa-required-for").await;
    assert!(asked.contains("download"), "{asked}");
    browser.click("#mfa-enrol").await;
    let secret = browser
        .wait_text("#mfa-secret", "the new factor's secret", |t| t.len() == 32)
        .await;
    // The QR code is drawn in the page (paths copied from the server's SVG, no markup inserted).
    let modules = browser
        .script("return document.querySelectorAll('#mfa-qr path').length")
        .await;
    assert!(modules.as_u64().is_some_and(|n| n >= 1), "{modules}");
    let uri = browser
        .script("return document.getElementById('mfa-uri').textContent")
        .await;
    assert!(
        uri.as_str()
            .is_some_and(|u| u.starts_with("otpauth://totp/keyward:") && u.contains(&secret)),
        "{uri}"
    );
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "enrolment: {violations:#?}");
    browser.screenshot("tenant-mfa-enrol").await;
    let mut app = crate::mfa_totp::Authenticator::new(&secret);
    browser
        .type_into("#mfa-code", &app.fresh_code().await)
        .await;
    browser.click("#mfa-confirm").await;
    let codes = browser
        .wait_text("#mfa-recovery-codes", "the recovery codes", |t| {
            t.lines().count() == 10
        })
        .await;
    assert!(codes.lines().all(|c| c.len() == 19), "{codes}");
    browser
        .wait_text("#mfa-factors", "the confirmed factor", |t| {
            t.contains("10 recovery codes left")
        })
        .await;
    browser.screenshot("tenant-mfa-recovery-codes").await;

    // The download asks for a code, and the session goes on meanwhile.
    browser.click("#download").await;
    confirm(&browser, "handed out once").await;
    browser
        .wait_text("#step-up-text", "the prompt for a code", |t| {
            t.contains("authenticator app")
        })
        .await;
    assert_eq!(
        browser
            .script("return document.getElementById('step-up').open")
            .await,
        json!(true)
    );
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "step-up prompt: {violations:#?}");
    browser
        .type_into("#step-up-code", &app.fresh_code().await)
        .await;
    browser.click("#step-up-ok").await;
    let (_, key) = saved_key(&browser, "Downloaded").await;
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert!(browser.text("#signout").await.contains("Sign out"));
    let events = cp.audit_of(&tenant).await;
    assert!(
        events.iter().any(|e| e["action"] == "mfa.step_up"
            && e["outcome"] == "success"
            && e["detail"]["operation"] == "download"),
        "{events:#?}"
    );
    let errors = browser.console_errors().await;
    // The refused first attempt (401 mfa_required) is the browser's own console line.
    assert!(
        errors.iter().all(|e| e.contains("401")),
        "console errors: {errors:?}"
    );
    browser.close().await;
}

/// Where the platform routes SSH through a bastion, the connection instructions say how.
#[tokio::test]
async fn tenant_is_shown_the_proxyjump_when_ssh_goes_through_a_bastion() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            algorithm: KeyAlgorithm::Ed25519,
            configure: Some(|c| c.bastion.address = Some("jump.example.net".into())),
            ..keyward_tests::control_plane::Options::default()
        },
    )
    .await;
    let tenant = unique_tenant("uijump");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let browser = Browser::start().await;
    sign_in(&browser, &cp, &token, "#ssh-command").await;
    assert_eq!(
        browser.text("#ssh-command").await,
        "ssh -i tenant-ssh-key.pem -J kwjump@jump.example.net -p 2222 tenant@127.0.0.1"
    );
    let config = browser.text("#ssh-config").await;
    assert!(
        config.contains("ProxyJump kwjump@jump.example.net")
            && config.contains("HostName 127.0.0.1")
            && config.contains("Port 2222"),
        "{config}"
    );
    browser.screenshot("tenant-bastion").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "tenant page: {violations:#?}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sees_a_host_go_from_pending_to_in_sync_live() {
    // Every part is bound: a dropped part stops (a dropped TestUser is deleted).
    let Deployment {
        bao: _bao,
        cp,
        sshd,
        admin: _admin,
        user,
        tenant,
        tenant_token: token,
        mut agent,
    } = Deployment::start(KeyAlgorithm::Ed25519).await;
    let row = format!("#hosts tr[data-host-id=\"{}\"]", agent.host_id);

    let browser = Browser::start().await;
    sign_in(&browser, &cp, &cp.admin_token, "#hosts").await;
    browser
        .wait_text("#live", "the live indicator", |t| t == "Live")
        .await;
    let in_sync = format!("{row}[data-status=\"in_sync\"][data-connected=\"true\"]");
    browser.wait_for(&in_sync, "the host in sync").await;
    // A mark in the page: if the page reloads, it is gone.
    browser.script("window.keywardMark = 42; return 1").await;
    browser.screenshot("admin-hosts").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin-hosts: {violations:#?}");

    // The agent goes away and the key changes: the row shows offline, then pending.
    agent.kill().await;
    browser
        .wait_for(
            &format!("{row}[data-connected=\"false\"]"),
            "the host offline",
        )
        .await;
    let rotated = cp.tenant_call(&token, Method::POST, "/rotate").await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    browser
        .wait_for(
            &format!("{row}[data-status=\"pending\"]"),
            "the host pending",
        )
        .await;
    assert_eq!(
        browser
            .text(&format!("{row} td[data-col=status] .badge"))
            .await,
        "pending"
    );
    browser.screenshot("admin-hosts-pending").await;

    // The agent comes back and applies the new key: in sync again, without a reload.
    agent.start();
    // First from the API (a slow agent fails here, with its log), then on the page.
    agent.wait_in_sync(&cp).await;
    browser.wait_for(&in_sync, "the host in sync again").await;
    let new_fingerprint = rotated.json()["newKeyFingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .wait_text(&format!("{row} td.fp"), "the applied fingerprint", |t| {
            t.contains(&new_fingerprint)
        })
        .await;
    assert_eq!(browser.script("return window.keywardMark").await, json!(42));

    // A real ssh login with the new key shows up as the host's last login, live. The session
    // stays open until then: the agent reads sshd's -E file, and a login from a file is verified
    // (and only a verified one is a host's last login) when its connection is live as it is read.
    let download = cp.tenant_call(&token, Method::POST, "/download").await;
    assert_eq!(download.status, 200, "{}", download.text());
    let key = KeyFile::write(&download.text());
    let mut session = sshd.open_session_async(&key.path, &user.name).await;
    browser
        .wait_text(
            &format!("{row} td[data-label=\"Last login\"]"),
            "the login on the live table",
            |t| t.contains(user.name.as_str()),
        )
        .await;
    let _ = session.start_kill();
    assert_eq!(browser.script("return window.keywardMark").await, json!(42));

    // Every other admin page renders, and gets its screenshot.
    browser
        .goto(&format!("{}/ui/#/admin/tenants", cp.url))
        .await;
    browser
        .wait_for(
            &format!("#tenants tr[data-tenant-id=\"{tenant}\"]"),
            "the tenant",
        )
        .await;
    browser
        .click(&format!("#tenants tr[data-tenant-id=\"{tenant}\"] button"))
        .await;
    browser
        .wait_text("#tenant-details", "the tenant's secrets", |t| {
            t.contains("tenant_ssh") && t.contains(&format!("vps/{tenant}/tenant_ssh"))
        })
        .await;
    browser.screenshot("admin-tenants").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin-tenants: {violations:#?}");

    browser.goto(&format!("{}/ui/#/admin/audit", cp.url)).await;
    browser.wait_for("#audit tbody tr", "audit events").await;
    browser
        .type_into("#audit-filters-action", "key.rotate")
        .await;
    browser.click("#audit-filters button[type=submit]").await;
    eventually("only key.rotate events", Duration::from_secs(20), || async {
        let actions = browser
            .script(
                "return [...document.querySelectorAll('#audit tbody tr')].map(r => r.dataset.action)",
            )
            .await;
        let actions = actions.as_array()?.clone();
        (!actions.is_empty() && actions.iter().all(|a| a == "key.rotate")).then_some(())
    })
    .await;
    browser.click("#verify-chain").await;
    browser
        .wait_text("#audit-verdict", "the chain verdict", |t| {
            t.contains("whole")
        })
        .await;
    browser.screenshot("admin-audit").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin-audit: {violations:#?}");

    browser.goto(&format!("{}/ui/#/admin/vault", cp.url)).await;
    browser
        .wait_text("#vault-state", "Vault's state", |t| t == "unsealed")
        .await;
    browser.screenshot("admin-vault").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin-vault: {violations:#?}");

    browser.goto(&format!("{}/ui/#/admin/logins", cp.url)).await;
    browser.wait_for("#logins", "the logins table").await;
    browser.screenshot("admin-logins").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin-logins: {violations:#?}");

    // A bulk rotation, followed to the end on the progress bar.
    browser
        .goto(&format!("{}/ui/#/admin/rotation", cp.url))
        .await;
    browser
        .wait_for("#rotation-form", "the bulk rotation form")
        .await;
    browser
        .script("document.getElementById('secret-type').value = 'smtp'; return 1")
        .await;
    browser.click("#start-rotation").await;
    confirm(&browser, "cannot be undone").await;
    browser
        .wait_for(
            "#rotation-progress[data-status=\"completed\"]",
            "the job completed",
        )
        .await;
    let (value, max) = (
        browser.attr("#rotation-progress", "value").await,
        browser.attr("#rotation-progress", "max").await,
    );
    assert_eq!(value, max, "the bar is full when the job is done");
    browser.screenshot("admin-rotation").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin-rotation: {violations:#?}");

    browser.resize(390, 844).await;
    browser.goto(&format!("{}/ui/#/admin/hosts", cp.url)).await;
    browser
        .wait_for(&in_sync, "the hosts table at phone width")
        .await;
    browser.screenshot("admin-hosts-phone").await;

    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // The tenant of that host sees its host keys to check, and the login in its history.
    browser.resize(1280, 900).await;
    browser.click("#signout").await;
    sign_in(&browser, &cp, &token, "#fingerprint code").await;
    let host_key = agent.view(&cp).await["hostKeys"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .wait_text("#host-key-fingerprints", "the host key fingerprints", |t| {
            t.contains(&host_key)
        })
        .await;
    let known_hosts = browser.text("#known-hosts").await;
    assert!(
        known_hosts.starts_with(&format!("[127.0.0.1]:{} ", sshd.port)),
        "{known_hosts}"
    );
    browser
        .wait_text("#logins tbody", "the tenant's login history", |t| {
            t.contains(user.name.as_str()) && t.contains("accepted")
        })
        .await;
    browser.screenshot("tenant-with-host").await;

    // The admin offboards the tenant in the page: the id typed again, then its progress followed
    // until the agent removed the keys and Vault holds nothing of the tenant.
    browser.click("#signout").await;
    sign_in(&browser, &cp, &cp.admin_token, "#hosts").await;
    browser
        .goto(&format!("{}/ui/#/admin/tenants", cp.url))
        .await;
    browser
        .click(&format!("#tenants tr[data-tenant-id=\"{tenant}\"] button"))
        .await;
    browser
        .wait_for("#offboard-form", "the offboarding form")
        .await;
    browser
        .type_into("#offboard-confirm", "not-the-tenant")
        .await;
    browser.click("#offboard").await;
    browser
        .wait_text("#offboard-status", "the refusal", |t| t.contains("exactly"))
        .await;
    assert_eq!(
        cp.request(
            Method::GET,
            &format!("/api/v1/admin/tenants/{tenant}/offboarding"),
            Some(&cp.admin_token),
            None
        )
        .await
        .status,
        404,
        "a wrong confirmation starts nothing"
    );
    browser
        .script("document.getElementById('offboard-confirm').value = ''; return 1")
        .await;
    browser.type_into("#offboard-confirm", &tenant).await;
    browser.click("#offboard").await;
    browser
        .wait_text("#offboarding-status", "the offboarding completed", |t| {
            t == "completed"
        })
        .await;
    let done = cp
        .admin_get(&format!("/api/v1/admin/tenants/{tenant}/offboarding"))
        .await
        .json();
    assert_eq!(done["hosts"][0]["state"], "acknowledged", "{done}");
    assert!(
        browser
            .text("#tenant-offboarding")
            .await
            .contains("tenant_ssh"),
        "the destroyed secrets are listed"
    );
    browser.screenshot("admin-offboarding").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin-offboarding: {violations:#?}");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.close().await;
    agent.kill().await;
}

/// The value of a form field (a textarea's text is its value, not its content).
async fn value_of(browser: &Browser, id: &str) -> String {
    browser
        .script(&format!(
            "const e = document.getElementById('{id}'); return e ? e.value : null"
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// How many `certificate.issue` audit events the tenant has (successes and refusals).
async fn issue_events(cp: &ControlPlane, tenant: &str) -> usize {
    let reply = cp
        .admin_get(&format!(
            "/api/v1/admin/audit?tenantId={tenant}&action=certificate.issue&limit=100"
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["events"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_certifies_its_key_and_revokes_the_certificate_in_the_page() {
    let bao = OpenBao::start().await;
    bao.enable_ssh_ca().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("uicert");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let certificates = "/api/v1/tenant/infrastructure/ssh-certificates";

    let browser = Browser::start().await;
    sign_in(&browser, &cp, &token, "#fingerprint code").await;
    browser.click("nav a[href=\"#/tenant/certificates\"]").await;
    browser.wait_for("#cert-form", "the certificate form").await;
    browser
        .wait_for("#certs-empty", "the empty certificate list")
        .await;
    assert_eq!(
        browser
            .attr("nav a[aria-current=page]", "href")
            .await
            .as_deref(),
        Some("#/tenant/certificates")
    );

    // Not a key: the page shows the server's own explanation.
    let bad = "ssh-ed25519 AAAAnot-a-key someone@laptop";
    let refused = cp
        .request(
            Method::POST,
            certificates,
            Some(&token),
            Some(json!({ "publicKey": bad })),
        )
        .await;
    refused.assert_problem(400, "invalid_body");
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("not an OpenSSH public key"), "{detail}");
    browser.type_into("#cert-public-key", bad).await;
    browser.click("#cert-issue").await;
    browser
        .wait_text("#cert-form-status", "the refusal's detail", |t| {
            t.contains(&detail)
        })
        .await;
    assert_eq!(issue_events(&cp, &tenant).await, 2, "both refusals audited");
    browser.screenshot("tenant-certificate-refused").await;

    // A private key pasted by mistake never leaves the page, and is not kept in the field.
    let key =
        keyward_common::GeneratedKey::generate(KeyAlgorithm::Ed25519, "someone@laptop").unwrap();
    browser
        .script(&format!(
            "document.getElementById('cert-public-key').value = {}; return 1",
            json!(key.private_openssh().as_str())
        ))
        .await;
    browser.click("#cert-issue").await;
    browser
        .wait_text("#cert-form-status", "the private-key warning", |t| {
            t.contains("private key: it was not sent")
        })
        .await;
    assert_eq!(value_of(&browser, "cert-public-key").await, "");
    assert_eq!(
        issue_events(&cp, &tenant).await,
        2,
        "the private key was sent"
    );

    // The public key, for 15 minutes: the certificate shows, ready to copy, with where to put it.
    browser
        .type_into("#cert-public-key", key.public_openssh())
        .await;
    browser
        .script("document.getElementById('cert-validity').value = '900'; return 1")
        .await;
    browser.type_into("#cert-reason", "deploy <b>now</b>").await;
    browser.click("#cert-issue").await;
    browser
        .wait_text("#cert-form-status", "the issued message", |t| {
            t.contains("issued")
        })
        .await;
    let shown = value_of(&browser, "cert-text").await;
    let listed = cp
        .request(Method::GET, certificates, Some(&token), None)
        .await
        .json();
    let record = listed["certificates"][0].clone();
    let id = record["certificateId"].as_str().unwrap().to_owned();
    assert_eq!(id, format!("keyward:{tenant}:tenant:1"));
    assert_eq!(record["certificate"], json!(shown));
    assert_eq!(record["reason"], "deploy <b>now</b>");
    let cert = ssh_key::Certificate::from_openssh(&shown).unwrap();
    assert_eq!(cert.key_id(), id);
    assert_eq!(
        cert.public_key(),
        ssh_key::PublicKey::from_openssh(key.public_openssh())
            .unwrap()
            .key_data()
    );
    let lifetime = cert.valid_before() - cert.valid_after();
    assert!((900..=960).contains(&lifetime), "valid for {lifetime} s");
    assert_eq!(
        browser.attr("#cert-text", "readonly").await.as_deref(),
        Some("true")
    );
    assert_eq!(
        browser.text("#cert-file").await,
        "~/.ssh/id_ed25519-cert.pub"
    );
    assert_eq!(browser.text("#cert-id").await, id);
    browser.click("#cert-copy").await;
    browser
        .wait_text("#cert-copy-status", "the copy's outcome", |t| {
            t == "Copied." || t.contains("selected")
        })
        .await;

    // Listed as active; the reason is text, not markup.
    let row = format!("#certs tr[data-certificate-id=\"{id}\"]");
    browser
        .wait_for(
            &format!("{row}[data-status=\"active\"]"),
            "the active certificate",
        )
        .await;
    let cells = browser.text(&row).await;
    assert!(cells.contains("deploy <b>now</b>"), "{cells}");
    assert_eq!(
        browser
            .script("return document.querySelectorAll('#certs b').length")
            .await,
        json!(0)
    );
    browser.screenshot("tenant-certificate").await;
    let violations = browser.accessibility_violations().await;
    assert!(
        violations.is_empty(),
        "tenant certificates: {violations:#?}"
    );

    // Revoke: asks first, then the row shows revoked, as the API says.
    browser.click(&format!("{row} button.cert-revoke")).await;
    confirm(&browser, "sessions opened with it are ended").await;
    browser
        .wait_for(
            &format!("{row}[data-status=\"revoked\"]"),
            "the revoked certificate",
        )
        .await;
    browser
        .wait_text("#certs-status", "the revocation message", |t| {
            t.contains(&format!("Revoked {id}"))
        })
        .await;
    assert_eq!(
        browser.text(&format!("{row} .cert-status")).await,
        "revoked"
    );
    let now = cp
        .request(Method::GET, certificates, Some(&token), None)
        .await
        .json();
    assert_eq!(now["certificates"][0]["status"], "revoked");
    assert_eq!(
        browser
            .script(&format!(
                "return document.querySelectorAll('{} button').length",
                row.replace('\'', "\\'")
            ))
            .await,
        json!(0),
        "a revoked certificate still has a Revoke button"
    );

    // Phone width: nothing needs sideways scrolling (the table scrolls in its own box).
    browser.resize(390, 844).await;
    let overflow = browser
        .script("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    browser.screenshot("tenant-certificate-phone").await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "page wider than the phone by {overflow} px"
    );
    browser.resize(1280, 900).await;

    // A certificate for the platform's admin user is listed as the platform's, not revocable here.
    let admin_key =
        keyward_common::GeneratedKey::generate(KeyAlgorithm::Ed25519, "ops@platform").unwrap();
    let issued = cp
        .admin_post(
            &format!("/api/v1/admin/tenants/{tenant}/ssh-certificates"),
            json!({ "kind": "admin", "publicKey": admin_key.public_openssh(), "reason": "kernel update" }),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let admin_id = issued.json()["certificateId"].as_str().unwrap().to_owned();
    browser.goto(&format!("{}/ui/#/tenant", cp.url)).await;
    browser
        .wait_for("#fingerprint code", "the tenant page")
        .await;
    browser.click("nav a[href=\"#/tenant/certificates\"]").await;
    let admin_row = format!("#certs tr[data-certificate-id=\"{admin_id}\"]");
    let text = browser
        .wait_text(&admin_row, "the platform's certificate", |t| {
            t.contains("platform")
        })
        .await;
    assert!(
        text.contains("active") && text.contains("kernel update"),
        "{text}"
    );
    assert_eq!(
        browser
            .script(&format!(
                "return document.querySelectorAll('#certs tr[data-certificate-id=\"{admin_id}\"] button').length"
            ))
            .await,
        json!(0),
        "a tenant is offered to revoke the platform's certificate"
    );

    // The admin sees the tenant's certificates with who issued them, and revokes any of them.
    browser.click("#signout").await;
    sign_in(&browser, &cp, &cp.admin_token, "#hosts").await;
    browser
        .goto(&format!("{}/ui/#/admin/tenants", cp.url))
        .await;
    browser
        .click(&format!("#tenants tr[data-tenant-id=\"{tenant}\"] button"))
        .await;
    let issuer = issued.json()["issuedBy"].as_str().unwrap().to_owned();
    assert!(!issuer.is_empty());
    browser
        .wait_text(&admin_row, "the admin's certificate row", |t| {
            t.contains(&issuer)
        })
        .await;
    // Another key for the tenant's user, from the admin's form.
    let third = keyward_common::GeneratedKey::generate(KeyAlgorithm::Ed25519, "helper").unwrap();
    browser
        .script("document.getElementById('cert-kind').value = 'tenant'; return 1")
        .await;
    browser
        .type_into("#cert-public-key", third.public_openssh())
        .await;
    browser.click("#cert-issue").await;
    let third_row = format!("#certs tr[data-certificate-id=\"keyward:{tenant}:tenant:3\"]");
    browser
        .wait_for(
            &format!("{third_row}[data-status=\"active\"]"),
            "the admin's new certificate",
        )
        .await;
    assert_eq!(
        value_of(&browser, "cert-text").await,
        cp.admin_get(&format!("/api/v1/admin/tenants/{tenant}/ssh-certificates"))
            .await
            .json()["certificates"][0]["certificate"]
            .as_str()
            .unwrap()
    );
    browser
        .click(&format!("{admin_row} button.cert-revoke"))
        .await;
    confirm(&browser, "sessions opened with it are ended").await;
    let text = browser
        .wait_text(
            &format!("{admin_row}[data-status=\"revoked\"]"),
            "the revoked admin certificate",
            |t| t.contains("revoked"),
        )
        .await;
    assert_eq!(
        text.matches(issuer.as_str()).count(),
        2,
        "the issuer and the revoker (the same token) are not both shown: {text}"
    );
    browser.screenshot("admin-tenant-certificates").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin certificates: {violations:#?}");

    let errors = browser.console_errors().await;
    assert!(
        errors.iter().all(|e| e.contains("400")),
        "console errors: {errors:?}"
    );
    browser.close().await;
}

/// A tenant that asks to approve the platform's visits sees an admin's request (who, why, for how
/// long), approves it in the page, and changes its policy back.
#[tokio::test]
async fn tenant_approves_an_admins_access_request_in_the_page() {
    let bao = OpenBao::start().await;
    bao.enable_ssh_ca().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("uiaccess");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let policy = "/api/v1/tenant/infrastructure/access-policy";
    let set = cp
        .request(
            Method::PUT,
            policy,
            Some(&token),
            Some(json!({ "platformAccess": "approval" })),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let key = keyward_common::GeneratedKey::generate(KeyAlgorithm::Ed25519, "admin@ops").unwrap();
    let asked = cp
        .admin_post(
            &format!("/api/v1/admin/tenants/{tenant}/access-requests"),
            json!({ "kind": "tenant", "publicKey": key.public_openssh(), "durationSeconds": 3600,
                    "reason": "disk <i>full</i> on /var" }),
        )
        .await;
    assert_eq!(asked.status, 201, "{}", asked.text());
    let grant = asked.json()["grantId"].as_str().unwrap().to_owned();

    let browser = Browser::start().await;
    sign_in(&browser, &cp, &token, "#fingerprint code").await;
    browser.click("nav a[href=\"#/tenant/access\"]").await;
    let row = format!("tr[data-grant-id=\"{grant}\"]");
    browser
        .wait_text(
            &format!("{row} .grant-status"),
            "the pending request",
            |t| t.contains("pending") && t.contains("waits for the tenant"),
        )
        .await;
    let text = browser.text(&row).await;
    assert!(text.contains("disk <i>full</i> on /var"), "{text}");
    assert!(text.contains("the platform"), "{text}");
    let markup = format!(
        "return document.querySelectorAll({}).length",
        json!(format!("{row} i"))
    );
    assert_eq!(
        browser.script(&markup).await,
        json!(0),
        "the reason is text, not markup"
    );
    eventually("the policy shown", Duration::from_secs(10), || async {
        let shown = browser
            .script("return document.getElementById('policy-choice').value")
            .await;
        (shown == json!("approval")).then_some(())
    })
    .await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.screenshot("tenant-access-pending").await;

    browser.click(&format!("{row} .grant-approve")).await;
    browser
        .wait_text(
            &format!("{row} .grant-status"),
            "the granted request",
            |t| t.contains("active"),
        )
        .await;
    let read = cp
        .request(
            Method::GET,
            &format!("/api/v1/admin/access-requests/{grant}"),
            Some(&cp.admin_token),
            None,
        )
        .await
        .json();
    assert_eq!(read["status"], "active");
    assert_eq!(read["tenantApproved"], true);
    assert!(
        read["certificate"]
            .as_str()
            .unwrap()
            .contains("-cert-v01@openssh.com")
    );

    // The policy back to "notify", in the page.
    browser
        .script("document.getElementById('policy-choice').value = 'notify'; return 1")
        .await;
    browser.click("#policy-save").await;
    browser
        .wait_text("#policy-status", "the saved policy", |t| {
            t.contains("Saved")
        })
        .await;
    let now = cp
        .request(Method::GET, policy, Some(&token), None)
        .await
        .json();
    assert_eq!(now["platformAccess"], "notify");
    browser.screenshot("tenant-access-granted").await;
    browser.close().await;
}
