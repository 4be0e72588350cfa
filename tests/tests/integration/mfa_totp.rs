//! TOTP second factors and step-up for sensitive operations (#17), against real OpenBao and each
//! SQL backend. The codes are made here with the test's own RFC 6238 (HMAC-SHA1 over the base32
//! secret the enrolment shows), as an authenticator app makes them.
//!
//! The story: a tenant's policy names `download` and `regenerate`; the tenant enrols a factor,
//! confirms it (ten recovery codes, once), is refused without a code, downloads with a fresh one,
//! is refused the same code twice, steps up once with a recovery code, and is locked out (429,
//! audited) after five wrong codes. An admin's factor belongs to its token: another admin token
//! cannot use it; the deployment's list makes admins step up for rotate-all, revoking the admin
//! key or a host, and regenerating. The seed is sealed in SQL (a row moved to another tenant
//! opens for no one) and is in no database file, audit event or log line; nor are the codes.
//! Offboarding a tenant deletes its factors. With `issue_token` in the list, each token an admin
//! issues takes a fresh factor of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use keyward_common::KeyAlgorithm;
use keyward_tests::{ControlPlane, Database, OpenBao, Reply, eventually, unique_tenant};
use reqwest::Method;
use serde_json::{Value, json};

use crate::leak_checks::{CapturedLog, state_files_holding};

const DOWNLOAD: &str = "/api/v1/tenant/infrastructure/ssh-credentials/download";
const REGENERATE: &str = "/api/v1/tenant/infrastructure/ssh-credentials/regenerate";

/// An authenticator app: the secret it was given, and the last step it showed a code of (the
/// server takes each step once). The web UI's test uses it too.
pub(crate) struct Authenticator {
    seed: Vec<u8>,
    last_step: u64,
}

fn now_step() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
}

impl Authenticator {
    pub(crate) fn new(base32_secret: &str) -> Self {
        Self {
            seed: data_encoding::BASE32_NOPAD
                .decode(base32_secret.as_bytes())
                .expect("the secret is base32"),
            last_step: 0,
        }
    }

    /// RFC 6238 / RFC 4226: HMAC-SHA1 of the step, dynamic truncation, 6 digits.
    fn code_at(&self, step: u64) -> String {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&self.seed).unwrap();
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[19] & 0x0f);
        let binary =
            u32::from_be_bytes(digest[offset..offset + 4].try_into().unwrap()) & 0x7fff_ffff;
        format!("{:06}", binary % 1_000_000)
    }

    /// A code of a step not shown before: the current one's, or the next one's (the server takes
    /// one step of skew) when the current one was shown; waits when both were.
    pub(crate) async fn fresh_code(&mut self) -> String {
        let step = now_step().max(self.last_step + 1);
        eventually(
            "a TOTP step within the server's skew",
            Duration::from_secs(70),
            || async { (now_step() + 1 >= step).then_some(()) },
        )
        .await;
        self.last_step = step;
        self.code_at(step)
    }

    /// The code of the step shown last: a replay.
    fn last_code(&self) -> String {
        self.code_at(self.last_step)
    }

    /// A code no step near now has (a wrong guess).
    fn wrong_code(&self) -> String {
        let now = now_step();
        (0..1_000_000)
            .map(|n| format!("{:06}", (n * 7_919 + 123_457) % 1_000_000))
            .find(|c| (now.saturating_sub(3)..=now + 3).all(|s| self.code_at(s) != *c))
            .unwrap()
    }
}

/// A request with `X-Keyward-MFA` when `mfa` is given.
pub(crate) async fn call(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
    mfa: Option<&str>,
) -> Reply {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", cp.url))
        .bearer_auth(token);
    if let Some(mfa) = mfa {
        request = request.header("x-keyward-mfa", mfa);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

/// Enrols and confirms a TOTP factor under `base` (`/api/v1/tenant/mfa` or `/api/v1/admin/mfa`):
/// the factor id, the app and the recovery codes.
pub(crate) async fn enrol(
    cp: &ControlPlane,
    base: &str,
    token: &str,
) -> (String, Authenticator, Vec<String>, Value) {
    let enrolled = call(cp, Method::POST, &format!("{base}/totp"), token, None, None).await;
    assert_eq!(enrolled.status, 201, "{}", enrolled.text());
    let enrolment = enrolled.json();
    let id = enrolment["id"].as_str().unwrap().to_owned();
    let secret = enrolment["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 32, "160 bits in base32: {secret}");
    let uri = enrolment["otpauthUri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/keyward:")
            && uri.contains(&format!("secret={secret}"))
            && uri.contains("digits=6")
            && uri.contains("period=30"),
        "{uri}"
    );
    assert!(
        enrolment["qrSvg"]
            .as_str()
            .is_some_and(|svg| svg.contains("<svg")),
        "{enrolment}"
    );
    let mut app = Authenticator::new(secret);
    let confirm = format!("{base}/totp/{id}/confirm");
    call(
        cp,
        Method::POST,
        &confirm,
        token,
        Some(json!({ "code": app.wrong_code() })),
        None,
    )
    .await
    .assert_problem(401, "mfa_invalid");
    let confirmed = call(
        cp,
        Method::POST,
        &confirm,
        token,
        Some(json!({ "code": app.fresh_code().await })),
        None,
    )
    .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text());
    let codes: Vec<String> = confirmed.json()["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    // Once: confirming again is refused, and the list shows no secret.
    call(
        cp,
        Method::POST,
        &confirm,
        token,
        Some(json!({ "code": app.last_code() })),
        None,
    )
    .await
    .assert_problem(409, "mfa_factor_confirmed");
    let listed = call(cp, Method::GET, base, token, None, None).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(!listed.text().contains(secret), "{}", listed.text());
    assert_eq!(listed.json()["factors"][0]["recoveryCodesLeft"], 10);
    (id, app, codes, enrolment)
}

#[tokio::test]
async fn mfa_totp_step_up_on_sqlite_and_postgres() {
    let bao = OpenBao::start().await;
    for database in [Database::Sqlite, Database::Postgres] {
        step_up_story(&bao, database).await;
    }
}

async fn step_up_story(bao: &OpenBao, database: Database) {
    let log = CapturedLog::start();
    let cp = ControlPlane::start_with(
        bao,
        keyward_tests::control_plane::Options {
            database,
            algorithm: KeyAlgorithm::Ed25519,
            configure: Some(|c| {
                use keyward_server::config::SensitiveOperation::*;
                // Admins' list; the tenant gets its own below, before any of its requests.
                c.mfa.require_for = vec![RotateAll, RevokeHost, RevokeAdminKey, Regenerate];
            }),
            ..Default::default()
        },
    )
    .await;
    let tenant = unique_tenant("mfa");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    let second_token = cp.tenant_token(&tenant).await;

    // The OpenAPI document names the routes, the header and the problems.
    let doc = cp
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .json();
    for path in [
        "/api/v1/tenant/mfa",
        "/api/v1/tenant/mfa/totp",
        "/api/v1/tenant/mfa/totp/{factor_id}/confirm",
        "/api/v1/admin/mfa/totp",
        "/api/v1/admin/tenants/{tenant_id}/mfa-policy",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    let op = &doc["paths"][DOWNLOAD]["post"];
    assert!(
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "X-Keyward-MFA" && p["in"] == "header"),
        "{op:#}"
    );
    for (status, code) in [
        ("401", "mfa_required"),
        ("401", "mfa_replayed"),
        ("403", "mfa_not_enrolled"),
        ("429", "mfa_locked"),
    ] {
        let description = op["responses"][status]["description"].as_str().unwrap();
        assert!(description.contains(code), "{status}: {description}");
    }

    // An admin names download and regenerate for this tenant; with no factor, 403.
    let policy = format!("/api/v1/admin/tenants/{tenant}/mfa-policy");
    let set = call(
        &cp,
        Method::PUT,
        &policy,
        &cp.admin_token,
        Some(json!({ "requireFor": ["regenerate", "download", "download"] })),
        None,
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["requireFor"], json!(["download", "regenerate"]));
    assert_eq!(set.json()["source"], "tenant");
    call(
        &cp,
        Method::PUT,
        &policy,
        &token,
        Some(json!({ "requireFor": [] })),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    call(
        &cp,
        Method::PUT,
        &policy,
        &cp.admin_token,
        Some(json!({ "requireFor": ["everything"] })),
        None,
    )
    .await
    .assert_problem(400, "invalid_body");
    call(&cp, Method::POST, DOWNLOAD, &token, None, None)
        .await
        .assert_problem(403, "mfa_not_enrolled");

    // Enrolled and confirmed; the factor is the tenant's, whichever of its tokens asks.
    let (factor_id, mut app, recovery, enrolment) = enrol(&cp, "/api/v1/tenant/mfa", &token).await;
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    // The tenant's data export (GDPR art. 15) lists the factor, never its secret.
    let export = cp
        .request(
            Method::GET,
            "/api/v1/tenant/infrastructure/data-export",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(export.status, 200, "{}", export.text());
    let factors: Vec<Value> = export
        .text()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["record"] == "mfaFactor")
        .collect();
    assert_eq!(factors.len(), 1, "{}", export.text());
    assert_eq!(factors[0]["id"], factor_id.as_str());
    assert!(factors[0]["confirmedAt"].is_string(), "{}", factors[0]);
    assert!(!export.text().contains(&secret), "the seed is not exported");
    let mine = call(
        &cp,
        Method::GET,
        "/api/v1/tenant/mfa",
        &second_token,
        None,
        None,
    )
    .await
    .json();
    assert_eq!(mine["factors"][0]["id"], factor_id.as_str(), "{mine}");
    assert_eq!(mine["requireFor"], json!(["download", "regenerate"]));

    // Without the header, with a wrong code: refused, and the download not spent.
    let required = call(&cp, Method::POST, DOWNLOAD, &token, None, None).await;
    required.assert_problem(401, "mfa_required");
    assert!(
        required
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("X-Keyward-MFA") && h.contains("totp")),
        "{:?}",
        required.headers
    );
    assert_eq!(
        required.json()["mfaMethods"],
        json!(["totp", "recovery", "webauthn"])
    );
    let wrong = format!("totp:{}", app.wrong_code());
    call(&cp, Method::POST, DOWNLOAD, &token, None, Some(&wrong))
        .await
        .assert_problem(401, "mfa_invalid");
    let creds = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(creds["downloaded"], false, "a refusal spent the download");

    // A fresh code, from another of the tenant's tokens: the key.
    let code = format!("totp:{}", app.fresh_code().await);
    let key = call(
        &cp,
        Method::POST,
        DOWNLOAD,
        &second_token,
        None,
        Some(&code),
    )
    .await;
    assert_eq!(key.status, 200, "{}", key.text());
    assert!(
        key.text()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    );

    // The same code again is a replay, even for another operation.
    call(&cp, Method::POST, REGENERATE, &token, None, Some(&code))
        .await
        .assert_problem(401, "mfa_replayed");
    assert_eq!(format!("totp:{}", app.last_code()), code);

    // A recovery code steps up once.
    let rescue = format!("recovery:{}", recovery[0]);
    let regenerated = call(&cp, Method::POST, REGENERATE, &token, None, Some(&rescue)).await;
    assert_eq!(regenerated.status, 200, "{}", regenerated.text());
    call(&cp, Method::POST, REGENERATE, &token, None, Some(&rescue))
        .await
        .assert_problem(401, "mfa_invalid");

    // Another factor, or removing this one, needs a code too.
    call(
        &cp,
        Method::POST,
        "/api/v1/tenant/mfa/totp",
        &token,
        None,
        None,
    )
    .await
    .assert_problem(401, "mfa_required");
    call(
        &cp,
        Method::DELETE,
        &format!("/api/v1/tenant/mfa/totp/{factor_id}"),
        &token,
        None,
        None,
    )
    .await
    .assert_problem(401, "mfa_required");

    // Brute force: five failures since the last success (the recovery code's reuse was the
    // first; a missing header is no attempt), then 429 even for the right code, with
    // Retry-After.
    for _ in 0..4 {
        let guess = format!("totp:{}", app.wrong_code());
        call(&cp, Method::POST, DOWNLOAD, &token, None, Some(&guess))
            .await
            .assert_problem(401, "mfa_invalid");
    }
    let right = format!("totp:{}", app.fresh_code().await);
    let locked = call(&cp, Method::POST, REGENERATE, &token, None, Some(&right)).await;
    locked.assert_problem(429, "mfa_locked");
    let retry: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");

    // Audited: each failure with its code, the lockout once, the successes; no code or secret.
    let events = cp.audit_of(&tenant).await;
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "mfa.step_up" && e["outcome"] == "refused")
        .filter_map(|e| e["detail"]["code"].as_str())
        .collect();
    for code in ["mfa_invalid", "mfa_replayed"] {
        assert!(refused.contains(&code), "{code} not audited: {refused:?}");
    }
    assert!(refused.len() >= 7, "{refused:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["action"] == "mfa.locked")
            .count(),
        1,
        "{events:#?}"
    );
    let accepted: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "mfa.step_up" && e["outcome"] == "success")
        .filter_map(|e| e["detail"]["method"].as_str())
        .collect();
    assert_eq!(accepted, ["recovery", "totp"], "newest first");
    for action in ["mfa.enrol", "mfa.confirm", "mfa_policy.set"] {
        assert!(events.iter().any(|e| e["action"] == action), "{action}");
    }
    let audit_text = serde_json::to_string(&events).unwrap();
    // (Codes as sent: six digits alone could occur in any hash by chance.)
    for needle in [secret.as_str(), &recovery[0], &recovery[1], &code, &wrong] {
        assert!(
            !audit_text.contains(needle),
            "the audit log holds {needle:?}"
        );
    }

    // An admin's factor is its token's: another admin token has none.
    let (_, mut admin_app, admin_recovery, _) =
        enrol(&cp, "/api/v1/admin/mfa", &cp.admin_token).await;
    let rotate = "/api/v1/admin/secrets/rotate-all?async=true";
    let body = json!({ "secretType": "ssh" });
    call(
        &cp,
        Method::POST,
        rotate,
        &cp.admin_token,
        Some(body.clone()),
        None,
    )
    .await
    .assert_problem(401, "mfa_required");
    let other_admin = call(
        &cp,
        Method::POST,
        "/api/v1/admin/tokens",
        &cp.admin_token,
        Some(json!({ "role": "admin", "label": "second admin" })),
        None,
    )
    .await
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_code = format!("totp:{}", admin_app.fresh_code().await);
    call(
        &cp,
        Method::POST,
        rotate,
        &other_admin,
        Some(body.clone()),
        Some(&admin_code),
    )
    .await
    .assert_problem(403, "mfa_not_enrolled");

    // The deployment's list for admins: revoking the admin key, revoking a host and regenerating
    // need the admin's factor (a recovery code each, here); rotating a key does not.
    let host = format!("{tenant}-vps");
    let registered = call(
        &cp,
        Method::POST,
        "/api/v1/admin/hosts",
        &cp.admin_token,
        Some(json!({ "tenantId": tenant, "hostId": host })),
        None,
    )
    .await;
    assert_eq!(registered.status, 201, "{}", registered.text());
    let keys = format!("/api/v1/admin/tenants/{tenant}/keys");
    for (path, n) in [
        (format!("{keys}/admin/revoke"), 1),
        (format!("/api/v1/admin/hosts/{host}/revoke"), 2),
        (format!("{keys}/tenant/regenerate"), 3),
    ] {
        call(&cp, Method::POST, &path, &cp.admin_token, None, None)
            .await
            .assert_problem(401, "mfa_required");
        let rescue = format!("recovery:{}", admin_recovery[n]);
        let done = call(
            &cp,
            Method::POST,
            &path,
            &cp.admin_token,
            None,
            Some(&rescue),
        )
        .await;
        assert_eq!(done.status, 200, "{path}: {}", done.text());
    }
    let rotated = call(
        &cp,
        Method::POST,
        &format!("{keys}/tenant/rotate"),
        &cp.admin_token,
        None,
        None,
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let started = call(
        &cp,
        Method::POST,
        rotate,
        &cp.admin_token,
        Some(body),
        Some(&admin_code),
    )
    .await;
    assert_eq!(started.status, 202, "{}", started.text());

    // At rest: the seed is sealed. It is in no file of the state directory (SQLite's database),
    // and the row does not open for another owner: moved to another tenant, the tenant's own
    // code is refused there (and the tenant has no factor left).
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&cp.database_url)
        .await
        .unwrap();
    let sealed: String = sqlx::Row::get(
        &sqlx::query("SELECT sealed_seed FROM mfa_factors WHERE factor_id = $1")
            .bind(&factor_id)
            .fetch_one(&mut db)
            .await
            .unwrap(),
        "sealed_seed",
    );
    assert!(!sealed.contains(&secret), "{sealed}");
    let raw_seed = data_encoding::BASE32_NOPAD
        .decode(secret.as_bytes())
        .unwrap();
    for needle in [
        secret.as_bytes(),
        raw_seed.as_slice(),
        recovery[2].as_bytes(),
    ] {
        assert_eq!(
            state_files_holding(&cp, needle),
            Vec::<String>::new(),
            "the state directory holds a secret"
        );
    }
    let thief = unique_tenant("thief");
    cp.create_tenant(&thief).await;
    let thief_token = cp.tenant_token(&thief).await;
    sqlx::query("UPDATE mfa_factors SET owner = $1 WHERE factor_id = $2")
        .bind(format!("tenant:{thief}"))
        .bind(&factor_id)
        .execute(&mut db)
        .await
        .unwrap();
    let thief_policy = call(
        &cp,
        Method::PUT,
        &format!("/api/v1/admin/tenants/{thief}/mfa-policy"),
        &cp.admin_token,
        Some(json!({ "requireFor": ["download"] })),
        None,
    )
    .await;
    assert_eq!(thief_policy.status, 200, "{}", thief_policy.text());
    // The code the lockout refused: never taken, and one the tenant's factor would accept.
    call(
        &cp,
        Method::POST,
        DOWNLOAD,
        &thief_token,
        None,
        Some(&right),
    )
    .await
    .assert_problem(401, "mfa_invalid");
    call(&cp, Method::POST, DOWNLOAD, &token, None, None)
        .await
        .assert_problem(403, "mfa_not_enrolled");

    // Offboarding a tenant deletes its factors with its tokens.
    let offboarded = call(
        &cp,
        Method::DELETE,
        &format!("/api/v1/admin/tenants/{thief}"),
        &cp.admin_token,
        Some(json!({ "confirm": thief })),
        None,
    )
    .await;
    assert_eq!(offboarded.status, 202, "{}", offboarded.text());
    let left: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) AS n FROM mfa_factors WHERE owner = $1")
            .bind(format!("tenant:{thief}"))
            .fetch_one(&mut db)
            .await
            .unwrap(),
        "n",
    );
    assert_eq!(left, 0, "the offboarded tenant's factors are kept");
    let started = cp.audit_of(&thief).await;
    assert!(
        started.iter().any(
            |e| e["action"] == "tenant.offboard.start" && e["detail"]["mfaFactorsDeleted"] == 1
        ),
        "{started:#?}"
    );

    // And nothing secret in the log, captured at TRACE.
    let logged = log.text();
    assert!(
        logged.contains("second factor refused") && logged.contains("second factor accepted"),
        "the log was not captured: {} bytes",
        logged.len()
    );
    for needle in [
        secret.as_str(),
        &recovery[0],
        &recovery[3],
        &code,
        &right,
        &wrong,
    ] {
        assert!(
            !logged.contains(needle),
            "the server's log holds {needle:?}"
        );
    }
    let verify = cp.admin_get("/api/v1/admin/audit/verify").await;
    assert_eq!(verify.status, 200, "{}", verify.text());
}

/// Issuing a token is a sensitive operation: with `issue_token` in the deployment's list an
/// admin steps up for each token it issues (a code is taken once), another admin token without
/// a factor cannot issue one at all, and each step-up is audited with the operation.
#[tokio::test]
async fn issuing_a_token_needs_the_admins_fresh_second_factor() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            database: Database::Sqlite,
            algorithm: KeyAlgorithm::Ed25519,
            configure: Some(|c| {
                c.mfa.require_for = vec![keyward_server::config::SensitiveOperation::IssueToken];
            }),
            ..Default::default()
        },
    )
    .await;
    const TOKENS: &str = "/api/v1/admin/tokens";
    let tenant = unique_tenant("mfa-tok");
    cp.create_tenant(&tenant).await;
    let body = json!({ "role": "tenant", "tenantId": tenant, "label": "laptop" });
    let issue = |mfa: Option<String>| {
        let (cp, body) = (&cp, body.clone());
        async move {
            call(
                cp,
                Method::POST,
                TOKENS,
                &cp.admin_token,
                Some(body),
                mfa.as_deref(),
            )
            .await
        }
    };

    // No factor yet: the operation cannot be stepped up for at all.
    issue(None).await.assert_problem(403, "mfa_not_enrolled");
    let (_, mut app, recovery, _) = enrol(&cp, "/api/v1/admin/mfa", &cp.admin_token).await;
    issue(None).await.assert_problem(401, "mfa_required");
    issue(Some(format!("totp:{}", app.wrong_code())))
        .await
        .assert_problem(401, "mfa_invalid");

    // A fresh code issues one token, which works; the same code does not issue a second.
    let code = format!("totp:{}", app.fresh_code().await);
    let issued = issue(Some(code.clone())).await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let token = issued.json()["token"].as_str().unwrap().to_owned();
    let mine = cp.tenant_call(&token, Method::GET, "").await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    issue(Some(code)).await.assert_problem(401, "mfa_replayed");
    let rescued = issue(Some(format!("recovery:{}", recovery[0]))).await;
    assert_eq!(rescued.status, 201, "{}", rescued.text());

    // Audited: two step-ups for issue_token, by TOTP and by recovery code.
    let audit = cp
        .admin_get("/api/v1/admin/audit?action=mfa.step_up&limit=100")
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text());
    let mut methods: Vec<String> = audit.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "success" && e["detail"]["operation"] == "issue_token")
        .map(|e| {
            e["detail"]["method"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    methods.sort();
    assert_eq!(methods, ["recovery", "totp"], "{}", audit.text());
}
