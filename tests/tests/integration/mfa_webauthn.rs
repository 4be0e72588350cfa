//! Security keys (WebAuthn) as second factors (#17), against real OpenBao and each SQL backend,
//! with webauthn-authenticator-rs's software authenticator (SoftPasskey) in place of a key: it
//! makes real credentials and signs real assertions for the origin it is given.
//!
//! The story: a tenant's policy names `download` and `regenerate`; the tenant registers a key
//! (the registration is taken once), is refused without a step-up, steps up with a signed answer
//! to a challenge, and is refused the same answer twice (`mfa_replayed`). Another tenant can use
//! neither the first tenant's challenge nor its key; a garbled assertion is `mfa_invalid`; all
//! failures are audited like TOTP's. An admin's key belongs to its token. Deleting the key needs
//! a step-up with it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_common::KeyAlgorithm;
use keyward_tests::{ControlPlane, Database, OpenBao, Reply, unique_tenant};
use reqwest::Method;
use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RequestChallengeResponse, Url,
};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

const ORIGIN: &str = "https://keys.example.test";
const DOWNLOAD: &str = "/api/v1/tenant/infrastructure/ssh-credentials/download";
const REGENERATE: &str = "/api/v1/tenant/infrastructure/ssh-credentials/regenerate";
const TENANT_MFA: &str = "/api/v1/tenant/mfa";

/// A request with `X-Keyward-MFA` when `mfa` is given.
async fn call(
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

/// A security key of the test's: a software authenticator at [`ORIGIN`].
struct Key {
    authenticator: WebauthnAuthenticator<SoftPasskey>,
    /// The credential id (base64url) it registered last.
    credential_id: String,
}

impl Key {
    fn new() -> Self {
        Self {
            // `true`: it claims user verification (a PIN), which keyward requires.
            authenticator: WebauthnAuthenticator::new(SoftPasskey::new(true)),
            credential_id: String::new(),
        }
    }

    /// Registers under `base` (`/api/v1/tenant/mfa`): the factor id.
    async fn register(&mut self, cp: &ControlPlane, base: &str, token: &str, name: &str) -> String {
        let started = call(
            cp,
            Method::POST,
            &format!("{base}/webauthn/registrations"),
            token,
            None,
            None,
        )
        .await;
        assert_eq!(started.status, 201, "{}", started.text());
        let started = started.json();
        let id = started["id"].as_str().unwrap().to_owned();
        assert_eq!(
            started["publicKey"]["authenticatorSelection"]["userVerification"], "required",
            "{started}"
        );
        let options: CreationChallengeResponse =
            serde_json::from_value(json!({ "publicKey": started["publicKey"] })).unwrap();
        let credential = self
            .authenticator
            .do_registration(Url::parse(ORIGIN).unwrap(), options)
            .expect("the software key registers");
        let credential = serde_json::to_value(&credential).unwrap();
        self.credential_id = credential["rawId"].as_str().unwrap().to_owned();
        let finish = format!("{base}/webauthn/registrations/{id}");
        let body = json!({ "name": name, "credential": credential });
        let finished = call(cp, Method::POST, &finish, token, Some(body.clone()), None).await;
        assert_eq!(finished.status, 200, "{}", finished.text());
        assert_eq!(finished.json(), json!({ "id": id, "name": name }));
        // The registration is taken once.
        call(cp, Method::POST, &finish, token, Some(body), None)
            .await
            .assert_problem(404, "mfa_factor_not_found");
        id
    }

    /// A challenge under `base`, as the server made it.
    async fn challenge(cp: &ControlPlane, base: &str, token: &str) -> Value {
        let challenge = call(
            cp,
            Method::POST,
            &format!("{base}/webauthn/challenge"),
            token,
            None,
            None,
        )
        .await;
        assert_eq!(challenge.status, 200, "{}", challenge.text());
        challenge.json()["publicKey"].clone()
    }

    /// The key's signed answer to `public_key` (request options), as the header carries it.
    fn answer(&mut self, public_key: Value) -> String {
        let options: RequestChallengeResponse =
            serde_json::from_value(json!({ "publicKey": public_key })).unwrap();
        let assertion: PublicKeyCredential = self
            .authenticator
            .do_authentication(Url::parse(ORIGIN).unwrap(), options)
            .expect("the software key signs");
        format!(
            "webauthn:{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&assertion).unwrap())
        )
    }

    /// A fresh step-up under `base`.
    async fn step_up(&mut self, cp: &ControlPlane, base: &str, token: &str) -> String {
        let public_key = Self::challenge(cp, base, token).await;
        self.answer(public_key)
    }
}

#[tokio::test]
async fn mfa_webauthn_step_up_on_sqlite_and_postgres() {
    let bao = OpenBao::start().await;
    for database in [Database::Sqlite, Database::Postgres] {
        webauthn_story(&bao, database).await;
    }
}

async fn webauthn_story(bao: &OpenBao, database: Database) {
    let cp = ControlPlane::start_with(
        bao,
        keyward_tests::control_plane::Options {
            database,
            algorithm: KeyAlgorithm::Ed25519,
            configure: Some(|c| {
                use keyward_server::config::SensitiveOperation::*;
                c.mfa.require_for = vec![RotateAll];
                c.mfa.webauthn_origin = Some(ORIGIN.to_owned());
            }),
            ..Default::default()
        },
    )
    .await;
    let doc = cp
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .json();
    for path in [
        "/api/v1/tenant/mfa/webauthn/registrations",
        "/api/v1/tenant/mfa/webauthn/registrations/{factor_id}",
        "/api/v1/tenant/mfa/webauthn/challenge",
        "/api/v1/admin/mfa/webauthn/challenge",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }

    let tenant = unique_tenant("wa");
    let other = unique_tenant("wb");
    for t in [&tenant, &other] {
        cp.create_tenant(t).await;
        let set = call(
            &cp,
            Method::PUT,
            &format!("/api/v1/admin/tenants/{t}/mfa-policy"),
            &cp.admin_token,
            Some(json!({ "requireFor": ["download", "regenerate"] })),
            None,
        )
        .await;
        assert_eq!(set.status, 200, "{}", set.text());
    }
    let token = cp.tenant_token(&tenant).await;
    let other_token = cp.tenant_token(&other).await;

    // No key yet: no challenge.
    call(
        &cp,
        Method::POST,
        &format!("{TENANT_MFA}/webauthn/challenge"),
        &token,
        None,
        None,
    )
    .await
    .assert_problem(403, "mfa_not_enrolled");

    let mut key = Key::new();
    let factor_id = key.register(&cp, TENANT_MFA, &token, "YubiKey 5C").await;
    let listed = call(&cp, Method::GET, TENANT_MFA, &token, None, None)
        .await
        .json();
    assert_eq!(listed["factors"][0]["id"], factor_id.as_str(), "{listed}");
    assert_eq!(listed["factors"][0]["kind"], "webauthn");
    assert_eq!(listed["factors"][0]["name"], "YubiKey 5C");
    assert!(listed["factors"][0]["confirmedAt"].is_string(), "{listed}");

    // A second registration needs a step-up now (a stolen token cannot add its own key).
    call(
        &cp,
        Method::POST,
        &format!("{TENANT_MFA}/webauthn/registrations"),
        &token,
        None,
        None,
    )
    .await
    .assert_problem(401, "mfa_required");

    // Without the header: refused, the download not spent. With a signed answer: the key.
    call(&cp, Method::POST, DOWNLOAD, &token, None, None)
        .await
        .assert_problem(401, "mfa_required");
    let proof = key.step_up(&cp, TENANT_MFA, &token).await;
    let downloaded = call(&cp, Method::POST, DOWNLOAD, &token, None, Some(&proof)).await;
    assert_eq!(downloaded.status, 200, "{}", downloaded.text());
    // The same answer again: its challenge was taken.
    call(&cp, Method::POST, REGENERATE, &token, None, Some(&proof))
        .await
        .assert_problem(401, "mfa_replayed");

    // Garbled, or not an assertion at all.
    call(
        &cp,
        Method::POST,
        REGENERATE,
        &token,
        None,
        Some("webauthn:bm90IGpzb24"),
    )
    .await
    .assert_problem(401, "mfa_invalid");

    // The other tenant, with a key of its own.
    let mut other_key = Key::new();
    other_key
        .register(&cp, TENANT_MFA, &other_token, "other's key")
        .await;
    // An answer to the first tenant's challenge, sent by the other tenant: not its challenge.
    let public_key = Key::challenge(&cp, TENANT_MFA, &token).await;
    let answer = key.answer(public_key);
    call(
        &cp,
        Method::POST,
        REGENERATE,
        &other_token,
        None,
        Some(&answer),
    )
    .await
    .assert_problem(401, "mfa_invalid");
    // ...which leaves it to its owner: still good for the first tenant.
    let regenerated = call(&cp, Method::POST, REGENERATE, &token, None, Some(&answer)).await;
    assert_eq!(regenerated.status, 200, "{}", regenerated.text());
    // The first tenant's key answering the other tenant's challenge: not a key of the other's.
    let mut public_key = Key::challenge(&cp, TENANT_MFA, &other_token).await;
    public_key["allowCredentials"] = json!([{ "type": "public-key", "id": key.credential_id }]);
    let forged = key.answer(public_key);
    call(
        &cp,
        Method::POST,
        REGENERATE,
        &other_token,
        None,
        Some(&forged),
    )
    .await
    .assert_problem(401, "mfa_invalid");
    // Nor can the other tenant delete the first tenant's key.
    let proof = other_key.step_up(&cp, TENANT_MFA, &other_token).await;
    call(
        &cp,
        Method::DELETE,
        &format!("{TENANT_MFA}/webauthn/{factor_id}"),
        &other_token,
        None,
        Some(&proof),
    )
    .await
    .assert_problem(404, "mfa_factor_not_found");

    // Audited like TOTP: the refusals with their codes, the step-ups with their method.
    let events = cp.audit_of(&tenant).await;
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "mfa.step_up" && e["outcome"] == "refused")
        .filter_map(|e| e["detail"]["code"].as_str())
        .collect();
    for code in ["mfa_replayed", "mfa_invalid"] {
        assert!(refused.contains(&code), "{code} not audited: {refused:?}");
    }
    let accepted: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "mfa.step_up" && e["outcome"] == "success")
        .filter_map(|e| e["detail"]["method"].as_str())
        .collect();
    assert_eq!(accepted, ["webauthn", "webauthn"], "{events:#?}");
    let other_refused = cp.audit_of(&other).await;
    assert!(
        other_refused
            .iter()
            .filter(|e| e["action"] == "mfa.step_up" && e["outcome"] == "refused")
            .count()
            >= 2,
        "{other_refused:#?}"
    );

    // An admin's key belongs to its token.
    let mut admin_key = Key::new();
    admin_key
        .register(&cp, "/api/v1/admin/mfa", &cp.admin_token, "admin key")
        .await;
    let second_admin = call(
        &cp,
        Method::POST,
        "/api/v1/admin/tokens",
        &cp.admin_token,
        Some(json!({ "role": "admin", "label": "second admin" })),
        None,
    )
    .await;
    assert_eq!(second_admin.status, 201, "{}", second_admin.text());
    let second_admin = second_admin.json()["token"].as_str().unwrap().to_owned();
    call(
        &cp,
        Method::POST,
        "/api/v1/admin/mfa/webauthn/challenge",
        &second_admin,
        None,
        None,
    )
    .await
    .assert_problem(403, "mfa_not_enrolled");
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
    let proof = admin_key
        .step_up(&cp, "/api/v1/admin/mfa", &cp.admin_token)
        .await;
    // The admin's challenge is not the second admin token's.
    call(
        &cp,
        Method::POST,
        rotate,
        &second_admin,
        Some(body.clone()),
        Some(&proof),
    )
    .await
    .assert_problem(403, "mfa_not_enrolled");
    let rotated = call(
        &cp,
        Method::POST,
        rotate,
        &cp.admin_token,
        Some(body),
        Some(&proof),
    )
    .await;
    assert!(rotated.status / 100 == 2, "{}", rotated.text());

    // Deleting the key takes a step-up with it; then the tenant has no factor.
    let delete = format!("{TENANT_MFA}/webauthn/{factor_id}");
    call(&cp, Method::DELETE, &delete, &token, None, None)
        .await
        .assert_problem(401, "mfa_required");
    let proof = key.step_up(&cp, TENANT_MFA, &token).await;
    let deleted = call(&cp, Method::DELETE, &delete, &token, None, Some(&proof)).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let listed = call(&cp, Method::GET, TENANT_MFA, &token, None, None)
        .await
        .json();
    assert_eq!(listed["factors"], json!([]), "{listed}");
    call(&cp, Method::POST, REGENERATE, &token, None, None)
        .await
        .assert_problem(403, "mfa_not_enrolled");
}

#[tokio::test]
async fn mfa_webauthn_is_refused_plainly_when_not_configured() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start(&bao).await;
    let tenant = unique_tenant("wn");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    for path in ["registrations", "challenge"] {
        call(
            &cp,
            Method::POST,
            &format!("{TENANT_MFA}/webauthn/{path}"),
            &token,
            None,
            None,
        )
        .await
        .assert_problem(409, "webauthn_not_configured");
    }
    // A body that is not a registration's: a problem, not a 500.
    let finish = format!("{TENANT_MFA}/webauthn/registrations/mfa_0123456789abcdef");
    call(
        &cp,
        Method::POST,
        &finish,
        &token,
        Some(json!({ "name": 5 })),
        None,
    )
    .await
    .assert_problem(400, "invalid_body");
    call(
        &cp,
        Method::POST,
        &finish,
        &token,
        Some(json!({ "name": "k", "credential": { "id": 1 } })),
        None,
    )
    .await
    .assert_problem(409, "webauthn_not_configured");
}
