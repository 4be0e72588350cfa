//! The admin hosts page over a fleet of 10,000 hosts, in headless Chromium: the page holds one
//! page of rows, and the server searches, filters, sorts and pages. Every expectation is what the
//! API answers for the same query. The hosts are written straight into the control plane's
//! SQLite database (one transaction, about a second) rather than registered one request at a time.

use std::time::{Duration, Instant};

use chrono::Utc;
use fantoccini::key::Key;
use keyward_common::{HostId, TenantId};
use keyward_server::store::{HostReport, HostRole, Store, hash_token};
use keyward_tests::browser::PAGE_WAIT;
use keyward_tests::{
    Browser, ControlPlane, Database, OpenBao, RawIdentity, eventually, unique_tenant,
};
use serde_json::json;

use super::web_ui::sign_in;

/// Hosts in the fleet, with the one whose agent is connected.
const FLEET: usize = 10_000;
/// Rows on a page of the UI (`PAGE` in control-plane/ui/hosts.js).
const PAGE: usize = 50;

/// Writes `count` hosts `h-00000`… into the control plane's database: every third of tenant
/// `tenants[1]`, the others of `tenants[0]`; every tenth revoked; every fiftieth seen, a minute
/// apart. The others were never enrolled (`pending`).
async fn seed_hosts(cp: &ControlPlane, tenants: [&str; 2], count: usize) {
    let store = Store::connect(&cp.database_url, None).await.unwrap();
    let now = Utc::now();
    let ago = |minutes: i64| now - chrono::Duration::minutes(minutes);
    let tenants: Vec<TenantId> = tenants.iter().map(|t| t.parse().unwrap()).collect();
    let host = |i: usize| -> HostId { format!("h-{i:05}").parse().unwrap() };
    let mut tx = store.begin().await.unwrap();
    for i in 0..count {
        let tenant = &tenants[usize::from(i % 3 == 1)];
        tx.insert_host(
            &host(i),
            tenant,
            HostRole::Vps,
            ago(120),
            &hash_token(&format!("seed-{i}")),
            ago(60),
        )
        .await
        .unwrap();
        if i % 10 == 3 {
            assert!(tx.revoke_host(&host(i), ago(30)).await.unwrap());
        }
    }
    tx.commit().await.unwrap();
    let seen: Vec<HostReport> = (0..count)
        .step_by(50)
        .map(|i| HostReport::Seen {
            host: host(i),
            at: ago(i64::try_from(i / 50).unwrap() + 1),
        })
        .collect();
    store.record_host_reports(&seen).await.unwrap();
    store.close().await;
}

/// The host ids of the page the API answers for `query`, and its `X-Total-Count`.
async fn api_page(cp: &ControlPlane, query: &str) -> (Vec<String>, usize) {
    let reply = cp
        .admin_get(&format!("/api/v1/admin/hosts?limit={PAGE}&{query}"))
        .await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.text());
    let ids = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hostId"].as_str().unwrap().to_owned())
        .collect();
    let total = reply.header("x-total-count").unwrap().parse().unwrap();
    (ids, total)
}

/// The host ids of the rows on the page, the total the page says, and every `tr` in the document.
async fn shown(browser: &Browser) -> (Vec<String>, Option<usize>, usize) {
    let page = browser
        .script(
            "const table = document.getElementById('hosts');\
             const range = document.getElementById('hosts-range');\
             if (!table || !range || table.hasAttribute('aria-busy')) return null;\
             return { ids: [...table.querySelectorAll('tbody tr[data-host-id]')].map(r => r.dataset.hostId),\
                      total: range.dataset.total ?? null,\
                      rows: document.querySelectorAll('tr').length };",
        )
        .await;
    if page.is_null() {
        return (Vec::new(), None, 0);
    }
    let ids = page["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    let total = page["total"].as_str().and_then(|t| t.parse().ok());
    (
        ids,
        total,
        usize::try_from(page["rows"].as_u64().unwrap()).unwrap(),
    )
}

/// Waits until the page shows what the API answers for `query` (the same filters and order), and
/// returns it. No more than a page of rows is ever in the document.
async fn page_matches(
    browser: &Browser,
    cp: &ControlPlane,
    what: &str,
    query: &str,
) -> (Vec<String>, usize) {
    let expected = api_page(cp, query).await;
    let mut last = None;
    let found = tokio::time::timeout(PAGE_WAIT, async {
        loop {
            let (ids, total, rows) = shown(browser).await;
            assert!(
                rows <= 2 * PAGE,
                "{what}: {rows} rows in the document (a page is {PAGE})"
            );
            if ids == expected.0 && total == Some(expected.1) {
                return;
            }
            last = Some((ids, total));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "timed out after {PAGE_WAIT:?} waiting for {what} ({query}): expected {expected:?}, the page shows {last:?}; console: {:?}; page: {}",
        browser.console_errors().await,
        browser
            .script("return document.getElementById('main').innerText.slice(0, 2000)")
            .await
    );
    expected
}

/// Sets a select or a field of the page as a person would, firing its change event.
async fn choose(browser: &Browser, id: &str, value: &str) {
    let set = browser
        .script(&format!(
            "const el = document.getElementById({id}); if (!el) return false;\
             el.value = {value}; el.dispatchEvent(new Event('change', {{ bubbles: true }})); return el.value;",
            id = json!(id),
            value = json!(value),
        ))
        .await;
    assert_eq!(set, json!(value), "#{id} takes {value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_hosts_page_pages_searches_filters_and_sorts_10000_hosts_on_the_server() {
    let started = Instant::now();
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let (a, b) = (unique_tenant("fleet-a"), unique_tenant("fleet-b"));
    cp.create_tenant(&a).await;
    cp.create_tenant(&b).await;
    // One host with a live agent stream: the fleet's only connected host.
    let agent = RawIdentity::enroll(&cp, &a).await;
    let _stream = agent.open(&cp).await;
    let seeding = Instant::now();
    seed_hosts(&cp, [&a, &b], FLEET - 1).await;
    println!("seeded {} hosts in {:?}", FLEET - 1, seeding.elapsed());
    eventually("the agent connected", PAGE_WAIT, || async {
        let (ids, _) = api_page(&cp, "connected=true").await;
        (ids == [agent.host_id.clone()]).then_some(())
    })
    .await;

    let browser = Browser::start().await;
    sign_in(&browser, &cp, &cp.admin_token, "#hosts").await;

    // The first page, by host id, and the fleet's size.
    let (first_page, total) = page_matches(&browser, &cp, "the first page", "").await;
    assert_eq!(total, FLEET);
    assert_eq!(first_page.len(), PAGE);
    assert_eq!(first_page[0], "h-00000");
    let number = |n: usize| {
        let browser = &browser;
        async move {
            browser
                .script(&format!("return new Intl.NumberFormat().format({n})"))
                .await
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(
        browser.text("#hosts-range").await,
        format!("1–{PAGE} of {}", number(FLEET).await)
    );
    browser
        .wait_for(
            &format!("#hosts-summary[data-total=\"{FLEET}\"]"),
            "the stream's count of hosts",
        )
        .await;
    browser
        .wait_text("#live", "the live indicator", |t| t == "Live")
        .await;
    assert_eq!(
        browser
            .attr("#hosts thead th:first-child", "aria-sort")
            .await,
        Some("ascending".to_owned())
    );
    browser.screenshot("admin-hosts-fleet").await;
    let violations = browser.accessibility_violations().await;
    assert!(violations.is_empty(), "admin-hosts-fleet: {violations:#?}");

    // Search: typed, sent when the typing pauses, one host.
    browser.type_into("#hosts-q", "h-04321").await;
    let (found, _) = page_matches(&browser, &cp, "the search", "q=h-04321").await;
    assert_eq!(found, ["h-04321"]);
    choose(&browser, "hosts-q", "").await;
    page_matches(&browser, &cp, "the search cleared", "").await;

    // Filters: each narrows the hosts to what the server says.
    choose(&browser, "hosts-status-filter", "revoked").await;
    let (revoked, revoked_total) =
        page_matches(&browser, &cp, "the revoked hosts", "status=revoked").await;
    assert!(
        revoked_total > 0 && revoked_total < FLEET,
        "{revoked_total}"
    );
    assert_ne!(revoked, first_page);
    let statuses = browser
        .script(
            "return [...document.querySelectorAll('#hosts tbody tr')].map(r => r.dataset.status)",
        )
        .await;
    assert!(
        statuses.as_array().unwrap().iter().all(|s| s == "revoked"),
        "{statuses}"
    );
    choose(&browser, "hosts-status-filter", "").await;
    choose(&browser, "hosts-connected", "true").await;
    let (connected, _) = page_matches(&browser, &cp, "the connected host", "connected=true").await;
    assert_eq!(connected, std::slice::from_ref(&agent.host_id));
    choose(&browser, "hosts-connected", "false").await;
    let (_, offline) = page_matches(&browser, &cp, "the offline hosts", "connected=false").await;
    assert_eq!(offline, FLEET - 1);
    choose(&browser, "hosts-connected", "").await;
    page_matches(&browser, &cp, "the filters cleared", "").await;

    // Sort by keyboard: the Tenant header's button, twice for descending.
    let tenant_head = "#hosts thead th:nth-child(2)";
    browser
        .script("document.querySelector('#hosts th button[data-sort=tenantId]').focus(); return 1")
        .await;
    browser.press(Key::Enter).await;
    let (by_tenant, _) = page_matches(&browser, &cp, "the tenant order", "sort=tenantId").await;
    assert_eq!(
        browser.attr(tenant_head, "aria-sort").await,
        Some("ascending".to_owned())
    );
    browser.press(Key::Enter).await;
    let (by_tenant_descending, _) = page_matches(
        &browser,
        &cp,
        "the tenant order, descending",
        "sort=-tenantId",
    )
    .await;
    assert_eq!(
        browser.attr(tenant_head, "aria-sort").await,
        Some("descending".to_owned())
    );
    assert_eq!(
        browser
            .attr("#hosts thead th:first-child", "aria-sort")
            .await,
        None
    );
    assert_ne!(by_tenant_descending[0], by_tenant[0]);
    assert_ne!(by_tenant_descending[0], first_page[0]);
    // The order select does the same: the most recently seen first, the connected host.
    choose(&browser, "hosts-sort", "-lastSeen").await;
    let (recent, _) = page_matches(&browser, &cp, "the last seen order", "sort=-lastSeen").await;
    assert_eq!(recent[0], agent.host_id);
    choose(&browser, "hosts-sort", "hostId").await;
    page_matches(&browser, &cp, "the host id order", "").await;

    // The next page.
    browser.click("#hosts-next").await;
    let (second_page, _) = page_matches(&browser, &cp, "the second page", "offset=50").await;
    assert_eq!(second_page[0], "h-00050");
    assert_eq!(
        browser.text("#hosts-range").await,
        format!("51–100 of {}", number(FLEET).await)
    );

    // Live: a host on the page revoked through the API shows revoked in its row.
    let target = "h-00050";
    assert!(second_page.contains(&target.to_owned()));
    assert_eq!(
        browser
            .attr(
                &format!("#hosts tr[data-host-id=\"{target}\"]"),
                "data-status"
            )
            .await,
        Some("not_enrolled".to_owned())
    );
    let revoked_now = cp
        .admin_post(&format!("/api/v1/admin/hosts/{target}/revoke"), json!({}))
        .await;
    assert_eq!(revoked_now.status, 200, "{}", revoked_now.text());
    browser
        .wait_for(
            &format!("#hosts tr[data-host-id=\"{target}\"][data-status=\"revoked\"]"),
            "the revoked host's row",
        )
        .await;
    page_matches(
        &browser,
        &cp,
        "the second page after the revocation",
        "offset=50",
    )
    .await;

    // Live, into a filtered page: a host revoked now joins the revoked hosts' page.
    choose(&browser, "hosts-status-filter", "revoked").await;
    let (_, before) =
        page_matches(&browser, &cp, "the revoked hosts again", "status=revoked").await;
    let joining = "h-00001";
    let reply = cp
        .admin_post(&format!("/api/v1/admin/hosts/{joining}/revoke"), json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (after_ids, after) =
        page_matches(&browser, &cp, "the revoked host joining", "status=revoked").await;
    assert_eq!(after, before + 1);
    assert!(after_ids.contains(&joining.to_owned()), "{after_ids:?}");

    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.close().await;
    println!("the 10,000-host page test took {:?}", started.elapsed());
}
