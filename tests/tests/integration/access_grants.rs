//! Just-in-time access end to end: requests with the requester's own key, the approvals the
//! tenant's policy and the deployment ask for, the certificate a grant gets, and its end (early,
//! or when its window closes) on a real host: OpenBao's SSH engine, the real agent, Debian's sshd
//! and real `ssh`.

use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::{Deployment, OwnKey, Reply, Sshd, eventually};
use reqwest::Method;
use serde_json::{Value, json};

/// How long a change may take to reach the host, at most (it takes milliseconds).
const WITHIN: Duration = Duration::from_secs(20);

type Requester = OwnKey;

/// Puts a grant's certificate where ssh finds it.
fn take(who: &Requester, grant: &Value) {
    who.hold_certificate(
        grant["certificate"]
            .as_str()
            .expect("a granted certificate"),
    );
}

async fn call(
    d: &Deployment,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    d.cp.request(method, path, Some(token), body).await
}

/// `POST /api/v1/admin/tenants/{tenant}/access-requests` with `token`.
async fn admin_asks(d: &Deployment, token: &str, kind: &str, who: &Requester, why: &str) -> Value {
    let reply = call(
        d,
        token,
        Method::POST,
        &format!("/api/v1/admin/tenants/{}/access-requests", d.tenant),
        Some(
            json!({ "kind": kind, "publicKey": who.public, "durationSeconds": 60, "reason": why }),
        ),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()
}

fn tenant_path(suffix: &str) -> String {
    format!("/api/v1/tenant/infrastructure{suffix}")
}

async fn tenant_does(d: &Deployment, grant: &Value, operation: &str) -> Reply {
    let id = grant["grantId"].as_str().unwrap();
    call(
        d,
        &d.tenant_token,
        Method::POST,
        &tenant_path(&format!("/access-requests/{id}/{operation}")),
        None,
    )
    .await
}

async fn admin_does(d: &Deployment, token: &str, grant: &Value, operation: &str) -> Reply {
    let id = grant["grantId"].as_str().unwrap();
    call(
        d,
        token,
        Method::POST,
        &format!("/api/v1/admin/access-requests/{id}/{operation}"),
        None,
    )
    .await
}

async fn logs_in(d: &Deployment, who: &Requester, user: &str) -> bool {
    d.sshd.login_async(&who.key, user, "true").await.0
}

/// The tenant's policy asks for its approval: an admin's request waits for it, the tenant sees
/// who asks and why, approves, the admin enters; when the window closes the login is refused and
/// the session that was open ends.
#[tokio::test]
async fn a_grant_the_tenant_approved_works_then_expires_ends_its_session_and_is_refused() {
    let d = Deployment::start_with_ssh_ca(KeyAlgorithm::Ed25519).await;
    let policy = call(
        &d,
        &d.tenant_token,
        Method::PUT,
        &tenant_path("/access-policy"),
        Some(json!({ "platformAccess": "approval" })),
    )
    .await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    let admin = Requester::new();
    let asked = admin_asks(&d, &d.cp.admin_token, "tenant", &admin, "disk full on /var").await;
    assert_eq!(asked["status"], "pending");
    assert_eq!(asked["needsTenantApproval"], true);
    assert_eq!(asked["needsAdminApproval"], false);
    assert!(asked["certificate"].is_null());
    assert!(asked["requestedBy"].is_string(), "admins see the token");

    // The tenant sees who asks (the platform, not its token) and why.
    let seen = call(
        &d,
        &d.tenant_token,
        Method::GET,
        &tenant_path("/access-requests"),
        None,
    )
    .await
    .json();
    let seen = &seen["grants"][0];
    assert_eq!(seen["grantId"], asked["grantId"]);
    assert_eq!(seen["requesterRole"], "admin");
    assert_eq!(seen["reason"], "disk full on /var");
    assert!(seen.get("requestedBy").is_none());
    // An admin cannot approve what asks for the tenant's approval.
    admin_does(&d, &d.cp.admin_token, &asked, "approve")
        .await
        .assert_problem(403, "approval_not_allowed");
    assert!(!logs_in(&d, &admin, d.user.name.as_str()).await);

    let approved = tenant_does(&d, &asked, "approve").await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    let granted = approved.json();
    assert_eq!(granted["status"], "active");
    assert_eq!(granted["tenantApproved"], true);
    take(&admin, &granted);
    assert!(
        logs_in(&d, &admin, d.user.name.as_str()).await,
        "sshd log:\n{}",
        d.sshd.log_text()
    );
    let mut session = d.sshd.open_session_async(&admin.key, &d.user.name).await;
    // Deciding again: closed.
    tenant_does(&d, &asked, "deny")
        .await
        .assert_problem(409, "access_grant_closed");

    // The window (60 s) closes: the session ends, and the next login is refused.
    Sshd::wait_session_end(&mut session, Duration::from_secs(120)).await;
    assert!(!logs_in(&d, &admin, d.user.name.as_str()).await);
    let id = asked["grantId"].as_str().unwrap();
    let ended = call(
        &d,
        &d.cp.admin_token,
        Method::GET,
        &format!("/api/v1/admin/access-requests/{id}"),
        None,
    )
    .await
    .json();
    assert_eq!(ended["status"], "expired");
    let actions: Vec<String> =
        d.cp.audit_of(&d.tenant)
            .await
            .iter()
            .filter_map(|e| e["action"].as_str().map(str::to_owned))
            .filter(|a| a.starts_with("access."))
            .collect();
    assert_eq!(
        actions,
        [
            "access.expire",
            "access.grant",
            "access.approve",
            "access.request",
            "access.policy"
        ]
    );
}

/// The admin user needs a second admin; a grant revoked early stops at once; a tenant's own
/// request is granted at once; a denial is final; a request nobody decides lapses; another
/// tenant sees nothing.
#[tokio::test]
async fn approvals_are_the_ones_the_policy_names_and_grants_end_when_revoked_or_undecided() {
    let d = Deployment::start_with_ssh_ca_config(KeyAlgorithm::Ed25519, |c| {
        Deployment::ssh_ca_settings(c);
        c.access.second_admin_for_admin_user = true;
    })
    .await;
    let (first, second) = (d.cp.admin_token.clone(), {
        let reply =
            d.cp.admin_post(
                "/api/v1/admin/tokens",
                json!({ "role": "admin", "label": "second admin" }),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["token"].as_str().unwrap().to_owned()
    });
    // Left undecided: it lapses after a minute (checked at the end).
    let forgotten = admin_asks(&d, &first, "admin", &Requester::new(), "forgotten").await;

    let admin = Requester::new();
    let asked = admin_asks(&d, &first, "admin", &admin, "kernel update").await;
    assert_eq!(asked["needsAdminApproval"], true);
    assert_eq!(
        asked["needsTenantApproval"], false,
        "the tenant's policy is notify"
    );
    admin_does(&d, &first, &asked, "approve")
        .await
        .assert_problem(403, "approval_not_allowed");
    // Nor can the direct way around the approval be taken.
    d.cp.admin_post(
        &format!("/api/v1/admin/tenants/{}/ssh-certificates", d.tenant),
        json!({ "kind": "admin", "publicKey": admin.public }),
    )
    .await
    .assert_problem(403, "approval_required");
    tenant_does(&d, &asked, "approve")
        .await
        .assert_problem(403, "approval_not_allowed");
    let granted = admin_does(&d, &second, &asked, "approve").await;
    assert_eq!(granted.status, 200, "{}", granted.text());
    let granted = granted.json();
    assert_eq!(granted["status"], "active");
    take(&admin, &granted);
    assert!(
        logs_in(&d, &admin, d.admin.name.as_str()).await,
        "sshd log:\n{}",
        d.sshd.log_text()
    );
    assert!(
        !logs_in(&d, &admin, d.user.name.as_str()).await,
        "an admin-user grant entered as the tenant user"
    );
    // The tenant ends it early: refused within moments.
    let mut session = d.sshd.open_session_async(&admin.key, &d.admin.name).await;
    let revoked = tenant_does(&d, &asked, "revoke").await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["status"], "revoked");
    Sshd::wait_session_end(&mut session, WITHIN).await;
    eventually("the revoked grant refused", WITHIN, || async {
        (!logs_in(&d, &admin, d.admin.name.as_str()).await).then_some(())
    })
    .await;

    // The tenant's own request for its user: granted at once.
    let colleague = Requester::new();
    let own = call(
        &d,
        &d.tenant_token,
        Method::POST,
        &tenant_path("/access-requests"),
        Some(json!({ "publicKey": colleague.public, "durationSeconds": 600, "reason": "deploy" })),
    )
    .await;
    assert_eq!(own.status, 201, "{}", own.text());
    let own = own.json();
    assert_eq!(own["status"], "active");
    take(&colleague, &own);
    assert!(logs_in(&d, &colleague, d.user.name.as_str()).await);

    // With the tenant's approval required, the tenant denies: final.
    let policy = call(
        &d,
        &d.tenant_token,
        Method::PUT,
        &tenant_path("/access-policy"),
        Some(json!({ "platformAccess": "approval" })),
    )
    .await;
    assert_eq!(policy.status, 200);
    d.cp.admin_post(
        &format!("/api/v1/admin/tenants/{}/ssh-certificates", d.tenant),
        json!({ "kind": "tenant", "publicKey": colleague.public }),
    )
    .await
    .assert_problem(403, "approval_required");
    let denied = admin_asks(&d, &first, "tenant", &Requester::new(), "curiosity").await;
    assert_eq!(
        tenant_does(&d, &denied, "deny").await.json()["status"],
        "denied"
    );
    tenant_does(&d, &denied, "approve")
        .await
        .assert_problem(409, "access_grant_closed");

    // Another tenant sees none of it.
    d.cp.create_tenant("other-co").await;
    let other = d.cp.tenant_token("other-co").await;
    let theirs = call(
        &d,
        &other,
        Method::GET,
        &tenant_path("/access-requests"),
        None,
    )
    .await
    .json();
    assert_eq!(theirs["grants"], json!([]));
    let id = own["grantId"].as_str().unwrap();
    call(
        &d,
        &other,
        Method::GET,
        &tenant_path(&format!("/access-requests/{id}")),
        None,
    )
    .await
    .assert_problem(404, "access_grant_not_found");
    call(
        &d,
        &other,
        Method::POST,
        &tenant_path(&format!("/access-requests/{id}/revoke")),
        None,
    )
    .await
    .assert_problem(404, "access_grant_not_found");

    // Bad requests: clear problems.
    for (body, code) in [
        (
            json!({ "publicKey": colleague.public, "durationSeconds": 30, "reason": "x" }),
            "invalid_body",
        ),
        (
            json!({ "publicKey": colleague.public, "durationSeconds": 60, "reason": "" }),
            "invalid_body",
        ),
        (
            json!({ "publicKey": "ssh-ed25519 !!", "durationSeconds": 60, "reason": "x" }),
            "invalid_body",
        ),
    ] {
        call(
            &d,
            &d.tenant_token,
            Method::POST,
            &tenant_path("/access-requests"),
            Some(body),
        )
        .await
        .assert_problem(400, code);
    }

    // Nobody decided the first request: it lapses.
    let forgotten_id = forgotten["grantId"].as_str().unwrap().to_owned();
    eventually(
        "the undecided request to lapse",
        Duration::from_secs(90),
        || async {
            let grant = call(
                &d,
                &first,
                Method::GET,
                &format!("/api/v1/admin/access-requests/{forgotten_id}"),
                None,
            )
            .await
            .json();
            (grant["status"] == "lapsed").then_some(())
        },
    )
    .await;
    let pending = call(
        &d,
        &first,
        Method::GET,
        "/api/v1/admin/access-requests?status=pending",
        None,
    )
    .await
    .json();
    assert_eq!(pending["grants"], json!([]), "nothing is left pending");
}
