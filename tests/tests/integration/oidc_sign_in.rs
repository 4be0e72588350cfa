//! Sign-in to the web UI with OpenID Connect (issue #17) against a real, certified OpenID
//! Provider (npm `oidc-provider`, `tests/oidc-provider/`) on loopback, in headless Chromium and
//! over plain HTTP: role mapping from the ID token's claims, a tenant who cannot see another,
//! the cookie session and its CSRF check, sign-out that ends the session server-side, idle
//! expiry, forged ID tokens and replayed callbacks refused, the provider's MFA standing for the
//! download step-up, and without it the page's prompt for the tenant's own factor. The sign-in state and sessions are SQL rows: the expiry and replay test
//! runs on PostgreSQL, the others on SQLite.
//!
//! The control plane serves plain HTTP on 127.0.0.1 here: Chromium treats loopback as a secure
//! context and keeps the `Secure` (and `__Host-`) session cookie it sets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keyward_tests::control_plane::Options;
use keyward_tests::{
    Browser, ControlPlane, Database, HttpSignIn, IdpUser, OidcProvider, OpenBao, eventually,
    free_port, unique_tenant,
};
use reqwest::Method;
use serde_json::{Value, json};

const SESSION: &str = "__Host-keyward_session";

struct Setup {
    _bao: OpenBao,
    idp: OidcProvider,
    cp: ControlPlane,
    tenant_a: String,
    tenant_b: String,
}

/// A provider with these users (claims reference tenants `{A}` and `{B}`) and a control plane on
/// `database` signed in to it; `idle` is the session idle timeout.
async fn setup(database: Database, users: &[(&'static str, IdpUser)], idle: Duration) -> Setup {
    let bao = OpenBao::start().await;
    let tenant_a = unique_tenant("oidc-a");
    let tenant_b = unique_tenant("oidc-b");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = format!("http://{listen}");
    let users: BTreeMap<&str, IdpUser> = users
        .iter()
        .map(|(login, user)| {
            let claims = user
                .claims
                .to_string()
                .replace("{A}", &tenant_a)
                .replace("{B}", &tenant_b);
            let mut user = user.clone();
            user.claims = serde_json::from_str(&claims).unwrap();
            (*login, user)
        })
        .collect();
    let idp = OidcProvider::start(&format!("{base}/auth/oidc/callback"), users).await;
    let mut oidc = idp.config(&base);
    oidc.idle_timeout = idle;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            database,
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            listen,
            oidc: Some(oidc),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(cp.url, base);
    cp.create_tenant(&tenant_a).await;
    cp.create_tenant(&tenant_b).await;
    Setup {
        _bao: bao,
        idp,
        cp,
        tenant_a,
        tenant_b,
    }
}

/// Signs in on the page with the provider's button as `login`.
async fn sign_in_with_idp(browser: &Browser, cp: &ControlPlane, login: &str) {
    browser.goto(&format!("{}/", cp.url)).await;
    // The provider's own session cookie (also 127.0.0.1's) would sign the last user in again.
    browser.client.delete_all_cookies().await.unwrap();
    browser
        .wait_text("#oidc-signin", "the provider's sign-in button", |t| {
            t == "Sign in with Test IdP"
        })
        .await;
    browser.click("#oidc-signin").await;
    browser
        .wait_for("#login", "the provider's login form")
        .await;
    browser.type_into("#login", login).await;
    browser.click("#signin").await;
}

/// The session cookie Chromium holds for the control plane.
async fn browser_session(browser: &Browser) -> String {
    let cookie = browser
        .client
        .get_named_cookie(SESSION)
        .await
        .expect("Chromium keeps the session cookie");
    assert!(cookie.http_only().unwrap_or(false), "{cookie:?}");
    assert!(cookie.secure().unwrap_or(false), "{cookie:?}");
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    cookie.value().to_owned()
}

fn cookie_header(session: &str) -> String {
    format!("{SESSION}={session}")
}

async fn session_of(cp: &ControlPlane, session: &str) -> (u16, Value) {
    let reply = cp
        .request_with_headers(
            Method::GET,
            "/api/v1/session",
            &[("cookie", &cookie_header(session))],
            None,
        )
        .await;
    (reply.status, reply.json())
}

/// Audit events of `action` (newest first), of any tenant or none.
async fn audited(cp: &ControlPlane, action: &str) -> Vec<Value> {
    let reply = cp
        .admin_get(&format!("/api/v1/admin/audit?action={action}&limit=1000"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_maps_roles_keeps_tenants_apart_and_signs_out() {
    let s = setup(
        Database::Sqlite,
        &[
            (
                "alice",
                IdpUser::new(json!({"name": "Alice A", "keyward_tenant": "{A}"})),
            ),
            (
                "root",
                IdpUser::new(json!({"name": "Root", "groups": ["staff", "keyward-admins"]})),
            ),
            (
                "nobody",
                IdpUser::new(json!({"name": "No Body", "groups": ["staff"]})),
            ),
            (
                "ghost",
                IdpUser::new(json!({"name": "Ghost", "keyward_tenant": "no-such-tenant"})),
            ),
        ],
        Duration::from_secs(600),
    )
    .await;
    let cp = &s.cp;
    let browser = Browser::start().await;

    // Tenant A signs in with the provider and sees its own page.
    sign_in_with_idp(&browser, cp, "alice").await;
    browser
        .wait_text("#fingerprint", "tenant A's key", |t| {
            t.starts_with("SHA256:")
        })
        .await;
    let who = browser
        .wait_text("#signed-in-as", "who is signed in", |t| {
            t.contains("Alice A")
        })
        .await;
    assert!(who.contains(&s.tenant_a), "{who}");
    browser.screenshot("oidc-tenant").await;
    let alice = browser_session(&browser).await;
    // The page asks who signed in only when the browser holds a session cookie.
    for (headers, held) in [
        (vec![], false),
        (vec![("cookie", cookie_header(&alice))], true),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let options = cp
            .request_with_headers(Method::GET, "/api/v1/sign-in-options", &headers, None)
            .await;
        assert_eq!(options.status, 200, "{}", options.text());
        assert_eq!(options.json()["sessionCookie"], held, "{}", options.text());
        assert_eq!(options.json()["oidc"]["loginUrl"], "/auth/oidc/login");
    }
    let (status, me) = session_of(cp, &alice).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["role"], "tenant");
    assert_eq!(me["tenantId"], json!(s.tenant_a));
    assert!(me["principal"].as_str().unwrap().starts_with("oidc:"));
    assert!(me["principal"].as_str().unwrap().ends_with(":alice"));
    let csrf = me["csrfToken"].as_str().unwrap().to_owned();

    // The cookie acts as tenant A, and only as tenant A.
    let cookie = cookie_header(&alice);
    let mine = cp
        .request_with_headers(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-credentials",
            &[("cookie", &cookie)],
            None,
        )
        .await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    let token_a = cp.tenant_token(&s.tenant_a).await;
    let by_token = cp.tenant_call(&token_a, Method::GET, "").await.json();
    assert_eq!(mine.json()["keyFingerprint"], by_token["keyFingerprint"]);
    for path in [
        format!("/api/v1/admin/secrets/tenant/{}", s.tenant_b),
        format!("/api/v1/admin/tenants/{}/offboarding", s.tenant_b),
        "/api/v1/admin/audit".to_owned(),
    ] {
        // Refused as a tenant token is: 403 forbidden, or 404 where the admin route does not
        // say whether the tenant exists.
        let refused = cp
            .request_with_headers(Method::GET, &path, &[("cookie", &cookie)], None)
            .await;
        assert!(
            [403, 404].contains(&refused.status) && !refused.text().contains("keyFingerprint"),
            "{path}: {} {}",
            refused.status,
            refused.text()
        );
    }

    // CSRF: a write with the cookie needs the session's token, from this origin.
    let rotate = "/api/v1/tenant/infrastructure/ssh-credentials/rotate";
    let before = mine.json()["keyFingerprint"].clone();
    cp.request_with_headers(Method::POST, rotate, &[("cookie", &cookie)], None)
        .await
        .assert_problem(403, "csrf_failed");
    cp.request_with_headers(
        Method::POST,
        rotate,
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", "https://evil.example"),
        ],
        None,
    )
    .await
    .assert_problem(403, "csrf_failed");
    cp.request_with_headers(
        Method::POST,
        rotate,
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("sec-fetch-site", "cross-site"),
        ],
        None,
    )
    .await
    .assert_problem(403, "csrf_failed");
    let unchanged = cp
        .request_with_headers(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-credentials",
            &[("cookie", &cookie)],
            None,
        )
        .await;
    assert_eq!(
        unchanged.json()["keyFingerprint"],
        before,
        "refused writes changed nothing"
    );
    let rotated = cp
        .request_with_headers(
            Method::POST,
            rotate,
            &[
                ("cookie", &cookie),
                ("x-csrf-token", &csrf),
                ("origin", &cp.url),
                ("sec-fetch-site", "same-origin"),
            ],
            None,
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    // The audit log names the OIDC principal as the actor.
    let events = cp.audit_of(&s.tenant_a).await;
    let rotation = events.iter().find(|e| e["action"] == "key.rotate").unwrap();
    assert_eq!(rotation["actorTokenId"], me["principal"], "{rotation}");
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "web.sign_in" && e["outcome"] == "success"),
        "{events:?}"
    );

    // The provider said nothing of MFA for Alice: a download the tenant's policy guards asks
    // for the tenant's own factor in the page, and the cookie session steps up with it.
    let (_, mut app, _, _) = super::mfa_totp::enrol(cp, "/api/v1/tenant/mfa", &token_a).await;
    let policy = cp
        .request(
            Method::PUT,
            &format!("/api/v1/admin/tenants/{}/mfa-policy", s.tenant_a),
            Some(&cp.admin_token),
            Some(json!({ "requireFor": ["download"] })),
        )
        .await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    browser.click("#download").await;
    super::web_ui::confirm(&browser, "handed out once").await;
    browser
        .wait_text("#step-up-text", "the prompt for a code", |t| {
            t.contains("authenticator app")
        })
        .await;
    browser
        .type_into("#step-up-code", &app.fresh_code().await)
        .await;
    browser.click("#step-up-ok").await;
    let (_, key) = super::web_ui::saved_key(&browser, "Downloaded").await;
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let events = cp.audit_of(&s.tenant_a).await;
    let step_up = events
        .iter()
        .find(|e| e["action"] == "mfa.step_up" && e["outcome"] == "success")
        .unwrap_or_else(|| panic!("no step-up in {events:#?}"));
    assert_eq!(step_up["detail"]["method"], "totp", "{step_up}");
    assert_eq!(step_up["detail"]["operation"], "download", "{step_up}");
    assert_eq!(step_up["actorTokenId"], me["principal"], "{step_up}");

    // Sign-out in the page ends the session on the server: the old cookie is refused.
    browser.click("#signout").await;
    browser.wait_for("#signin #token", "the sign-in page").await;
    eventually(
        "the sign-out to reach the server",
        Duration::from_secs(10),
        || async { (session_of(cp, &alice).await.0 == 401).then_some(()) },
    )
    .await;
    let (_, ended) = session_of(cp, &alice).await;
    assert_eq!(ended["code"], "session_ended");
    cp.request_with_headers(
        Method::GET,
        "/api/v1/tenant/infrastructure/ssh-credentials",
        &[("cookie", &cookie)],
        None,
    )
    .await
    .assert_problem(401, "session_ended");
    assert!(
        cp.audit_of(&s.tenant_a)
            .await
            .iter()
            .any(|e| e["action"] == "web.sign_out"),
        "sign-out audited"
    );

    // The admin group maps to the admin role.
    sign_in_with_idp(&browser, cp, "root").await;
    browser
        .wait_text("#signed-in-as", "the admin signed in", |t| {
            t.contains("Root") && t.contains("Admin")
        })
        .await;
    let root = browser_session(&browser).await;
    let (_, me) = session_of(cp, &root).await;
    assert_eq!(me["role"], "admin");
    let secrets = cp
        .request_with_headers(
            Method::GET,
            &format!("/api/v1/admin/secrets/tenant/{}", s.tenant_b),
            &[("cookie", &cookie_header(&root))],
            None,
        )
        .await;
    assert_eq!(secrets.status, 200, "{}", secrets.text());
    browser.screenshot("oidc-admin").await;
    browser.click("#signout").await;
    browser.wait_for("#signin #token", "the sign-in page").await;

    // Claims that name neither role nor an existing tenant: refused, with a clear answer, and
    // audited.
    for (login, reason) in [
        ("nobody", "no admin or tenant claim"),
        ("ghost", "no such tenant"),
    ] {
        sign_in_with_idp(&browser, cp, login).await;
        browser
            .wait_text("body", "the refusal", |t| {
                t.contains("sign_in_no_role") && t.contains("no keyward role")
            })
            .await;
        assert!(
            browser.client.get_named_cookie(SESSION).await.is_err(),
            "{login} got a session"
        );
        let refused = audited(cp, "web.sign_in").await;
        assert!(
            refused
                .iter()
                .any(|e| e["outcome"] == "refused" && e["detail"]["reason"] == reason),
            "{refused:?}"
        );
    }
    browser.screenshot("oidc-no-role").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sessions_expire_and_forged_or_replayed_callbacks_are_refused() {
    let idle = Duration::from_secs(3);
    let s = setup(
        Database::Postgres,
        &[
            ("alice", IdpUser::new(json!({"keyward_tenant": "{A}"}))),
            (
                "mallory",
                IdpUser::new(json!({"keyward_tenant": "{A}"})).forged(),
            ),
        ],
        idle,
    )
    .await;
    let cp = &s.cp;

    // A sign-in over HTTP, as the browser does it.
    let mut browser = HttpSignIn::new();
    let callback = browser.to_callback(&cp.url, "alice").await;
    assert!(
        callback.contains("code=") && callback.contains("state="),
        "{callback}"
    );
    let done = browser.get(&callback).await;
    if done.status() != 200 {
        let refused = audited(cp, "web.sign_in").await;
        panic!("{}: {refused:?}", done.text().await.unwrap());
    }
    let session = browser
        .cookie(SESSION)
        .expect("a session cookie")
        .to_owned();
    let set_cookie: Vec<String> = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        set_cookie.iter().any(|c| c.starts_with(SESSION)
            && c.contains("HttpOnly")
            && c.contains("Secure")
            && c.contains("SameSite=Strict")
            && c.contains("Path=/")),
        "{set_cookie:?}"
    );
    let (status, me) = session_of(cp, &session).await;
    assert_eq!(status, 200, "{me}");

    // The same callback again (same code and state): refused, no second session.
    let replayed = browser.get(&callback).await;
    assert_eq!(replayed.status(), 400);
    let problem: Value = replayed.json().await.unwrap();
    assert_eq!(problem["code"], "sign_in_failed");

    // A callback brought by a browser that did not start the sign-in: refused.
    let mut other = HttpSignIn::new();
    let fresh = other.to_callback(&cp.url, "alice").await;
    let stranger = HttpSignIn::new().get(&fresh).await;
    assert_eq!(stranger.status(), 400);
    // ... and that sign-in is spent: its own browser cannot finish it either.
    assert_eq!(other.get(&fresh).await.status(), 400);

    // A forged ID token (the provider's header and claims, another key's signature).
    let mut forged = HttpSignIn::new();
    let callback = forged.to_callback(&cp.url, "mallory").await;
    let refused = forged.get(&callback).await;
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["code"],
        "sign_in_failed"
    );
    assert!(
        forged.cookie(SESSION).is_none(),
        "a forged token got a session"
    );
    let refusals = audited(cp, "web.sign_in").await;
    assert!(
        refusals
            .iter()
            .any(|e| e["outcome"] == "refused" && e["detail"]["reason"] == "ID token not valid"),
        "{refusals:?}"
    );
    assert!(
        refusals.iter().any(|e| e["outcome"] == "refused"
            && e["detail"]["reason"] == "unknown, expired or used state"),
        "{refusals:?}"
    );

    // Idle expiry: a session unused for longer than the idle timeout is refused. Any request
    // is a use (and would keep it alive), so the test waits without one: the idle time itself
    // is what is tested.
    let (session, _) = http_session(cp, "alice").await;
    let (status, _) = session_of(cp, &session).await;
    assert_eq!(status, 200);
    let last_use = Instant::now();
    tokio::time::sleep(idle + Duration::from_millis(1500)).await;
    let (status, ended) = session_of(cp, &session).await;
    assert!(last_use.elapsed() > idle);
    assert_eq!(status, 401, "{ended}");
    assert_eq!(ended["code"], "session_ended");
    assert!(!s.idp.issuer.is_empty());
}

/// Signs in over HTTP as `login`: the session id and its CSRF token.
async fn http_session(cp: &ControlPlane, login: &str) -> (String, String) {
    let mut browser = HttpSignIn::new();
    let callback = browser.to_callback(&cp.url, login).await;
    let done = browser.get(&callback).await;
    assert_eq!(
        done.status(),
        200,
        "{login}: {}",
        done.text().await.unwrap()
    );
    let session = browser
        .cookie(SESSION)
        .expect("a session cookie")
        .to_owned();
    let (status, me) = session_of(cp, &session).await;
    assert_eq!(status, 200, "{me}");
    (session, me["csrfToken"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_mfa_at_the_provider_stands_for_the_download_step_up() {
    let s = setup(
        Database::Sqlite,
        &[
            (
                "carol",
                IdpUser::new(json!({"keyward_tenant": "{A}"})).amr(&["pwd", "otp"]),
            ),
            ("dave", IdpUser::new(json!({"keyward_tenant": "{A}"}))),
        ],
        Duration::from_secs(600),
    )
    .await;
    let cp = &s.cp;
    // Tenant A's downloads need a fresh second factor; the tenant has a TOTP factor.
    let token = cp.tenant_token(&s.tenant_a).await;
    super::mfa_totp::enrol(cp, "/api/v1/tenant/mfa", &token).await;
    let policy = cp
        .request(
            Method::PUT,
            &format!("/api/v1/admin/tenants/{}/mfa-policy", s.tenant_a),
            Some(&cp.admin_token),
            Some(json!({ "requireFor": ["download"] })),
        )
        .await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    let download = |session: String, csrf: String| async move {
        cp.request_with_headers(
            Method::POST,
            "/api/v1/tenant/infrastructure/ssh-credentials/download",
            &[
                ("cookie", &cookie_header(&session)),
                ("x-csrf-token", &csrf),
                ("origin", &cp.url),
            ],
            None,
        )
        .await
    };

    // Password only at the provider: the step-up applies (the TOTP prompt).
    let (session, csrf) = http_session(cp, "dave").await;
    let (_, me) = session_of(cp, &session).await;
    assert_eq!(me["idpMfa"], false);
    download(session, csrf)
        .await
        .assert_problem(401, "mfa_required");

    // The provider says a one-time password was used: the download needs nothing more.
    let (session, csrf) = http_session(cp, "carol").await;
    let (_, me) = session_of(cp, &session).await;
    assert_eq!(me["idpMfa"], true);
    let key = download(session, csrf).await;
    assert_eq!(key.status, 200, "{}", key.text());
    assert!(
        key.text()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    );
    let step_ups: Vec<Value> = cp
        .audit_of(&s.tenant_a)
        .await
        .into_iter()
        .filter(|e| e["action"] == "mfa.step_up" && e["outcome"] == "success")
        .collect();
    assert_eq!(step_ups.len(), 1, "{step_ups:?}");
    assert_eq!(step_ups[0]["detail"]["method"], "idp");
    assert_eq!(step_ups[0]["detail"]["operation"], "download");
}
