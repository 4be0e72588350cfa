//! The recordings page in a real browser (#19): a tenant finds the platform admin's session on
//! its host and plays it with asciinema's player, served from the embedded assets; the player's
//! terminal shows the recorded text, under the page's Content-Security-Policy.

use keyward_common::proto::agent_message;
use keyward_tests::{Browser, ControlPlane, Database, OpenBao, RawIdentity, unique_tenant};

use crate::recordings_api::{SESSION, acked, chunk};
use crate::web_ui::sign_in;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_plays_the_admin_session_on_its_host_in_the_page() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("uirec");
    cp.create_tenant(&tenant).await;
    let host = RawIdentity::enroll(&cp, &tenant).await;
    let mut stream = host.open(&cp).await;
    assert_eq!(
        acked(&mut stream, chunk("ui-1", 0, SESSION, true)).await.1,
        0
    );
    // Nothing else of the stream is needed.
    let _ = agent_message::Msg::Hello(Default::default());

    let token = cp.tenant_token(&tenant).await;
    let browser = Browser::start().await;
    sign_in(&browser, &cp, &token, "#fingerprint").await;
    browser
        .goto(&format!("{}/ui/#/tenant/recordings", cp.url))
        .await;
    browser
        .wait_for(
            "#recordings tr[data-recording] button.play",
            "the recorded session",
        )
        .await;
    browser
        .wait_text(
            "#recording-policy-text",
            "the tenant's recording policy",
            |t| t.contains("admin user") && t.contains("without keystrokes"),
        )
        .await;
    let row = browser.text("#recordings tr[data-recording]").await;
    assert!(
        row.contains("kwadmin") && row.contains(&host.host_id),
        "{row}"
    );
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "recordings page: {violations:#?}");

    browser
        .click("#recordings tr[data-recording] button.play")
        .await;
    let shown = browser
        .wait_text(
            "#player .ap-terminal",
            "the recorded text in the player",
            |t| t.contains("line 12 of the recorded session"),
        )
        .await;
    assert!(shown.contains("hello"), "{shown}");
    browser.screenshot("tenant-recording-playback").await;
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors (CSP?): {errors:?}");
    browser.close().await;

    // An admin finds it among every tenant's, and sets the tenant's recording policy in the
    // tenant's details.
    let browser = Browser::start().await;
    sign_in(&browser, &cp, &cp.admin_token, "#hosts").await;
    browser
        .goto(&format!("{}/ui/#/admin/recordings", cp.url))
        .await;
    let row = browser
        .wait_text("#recordings tr[data-recording]", "the recording", |t| {
            t.contains(&tenant)
        })
        .await;
    assert!(row.contains("kwadmin"), "{row}");
    browser
        .goto(&format!("{}/ui/#/admin/tenants", cp.url))
        .await;
    let tenant_row = format!("#tenants tr[data-tenant-id=\"{tenant}\"]");
    browser.wait_for(&tenant_row, "the tenant").await;
    browser.click(&format!("{tenant_row} button")).await;
    browser
        .wait_for(
            "#recording-policy #recording-recordTenant",
            "the recording policy",
        )
        .await;
    assert_eq!(
        browser.script("return [document.getElementById('recording-recordAdmin').checked, document.getElementById('recording-recordTenant').checked]").await,
        serde_json::json!([true, false]),
        "the defaults"
    );
    browser.click("#recording-recordTenant").await;
    browser.click("#recording-policy-save").await;
    browser
        .wait_text("#recording-policy-status", "the saved policy", |t| {
            t.contains("Saved")
        })
        .await;
    let policy = cp
        .admin_get(&format!("/api/v1/admin/tenants/{tenant}/recording-policy"))
        .await
        .json();
    assert_eq!(policy["recordTenant"], true);
    assert_eq!(policy["recordAdmin"], true);
    browser.screenshot("admin-recording-policy").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "tenant details: {violations:#?}");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.close().await;
}
