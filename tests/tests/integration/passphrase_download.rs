//! The passphrase-protected private key download (#17), with real OpenSSH: the key comes back in
//! OpenSSH's encrypted format (bcrypt-pbkdf, aes256-ctr), `ssh-keygen -y -P` opens it with the
//! passphrase only, and a real `ssh` login to Debian's sshd (the real agent keeping the tenant
//! user's `authorized_keys`) works with the passphrase given through `SSH_ASKPASS`. The download
//! policy (the deployment's `[download]`, an admin's per-tenant override) refuses a missing or
//! short passphrase before the one download is spent. The passphrase is nowhere afterwards: not
//! in the audit log (which says `encrypted: true`), the database's files, an answer, or the
//! control plane's log, captured at TRACE for every crate.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use keyward_common::KeyAlgorithm;
use keyward_tests::{
    ControlPlane, Database, Deployment, KeyFile, OpenBao, Reply, require_program, unique_tenant,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::leak_checks::{CapturedLog, state_files_holding};

const DOWNLOAD: &str = "/api/v1/tenant/infrastructure/ssh-credentials/download";
const TENANT_POLICY: &str = "/api/v1/tenant/infrastructure/download-policy";

/// Not ASCII, with spaces and shell metacharacters: passed as bytes all the way.
const PASSPHRASE: &str = "Kw-17 pässphrase; $(not a command) 'quoted'";

fn admin_policy(tenant: &str) -> String {
    format!("/api/v1/admin/tenants/{tenant}/download-policy")
}

async fn download(cp: &ControlPlane, token: &str, body: Option<Value>) -> Reply {
    cp.request(Method::POST, DOWNLOAD, Some(token), body).await
}

/// `ssh-keygen -y -P passphrase -f key`: the public key line, or `None` when it refuses.
fn public_key_with(key: &Path, passphrase: &str) -> Option<String> {
    let out = Command::new(require_program(
        "ssh-keygen",
        "install Debian's openssh-client (`make test-deps` does)",
    ))
    .args(["-y", "-P", passphrase, "-f"])
    .arg(key)
    .output()
    .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// An askpass program that prints the passphrase (kept in a 0600 file beside it) and counts
/// its calls in `calls`.
struct AskPass {
    dir: tempfile::TempDir,
}

impl AskPass {
    fn new(passphrase: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("passphrase");
        std::fs::write(&secret, passphrase).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let script = dir.path().join("askpass");
        let calls = dir.path().join("calls");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho asked >> '{}'\nexec cat '{}'\n",
                calls.display(),
                secret.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self { dir }
    }

    fn program(&self) -> std::path::PathBuf {
        self.dir.path().join("askpass")
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

/// Refusals first (none spends the download), then the encrypted download, opened by OpenSSH
/// and used for a real login.
async fn encrypted_download_with_real_openssh(algorithm: KeyAlgorithm) {
    let log = CapturedLog::start();
    let d = Deployment::start(algorithm).await;
    let token = &d.tenant_token;

    // An admin makes a passphrase of at least 20 characters a must for this tenant.
    let set =
        d.cp.request(
            Method::PUT,
            &admin_policy(&d.tenant),
            Some(&d.cp.admin_token),
            Some(json!({ "requirePassphrase": true, "minPassphraseLength": 20 })),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["source"], "tenant");
    let seen =
        d.cp.request(Method::GET, TENANT_POLICY, Some(token), None)
            .await
            .json();
    assert_eq!(seen["requirePassphrase"], true, "{seen}");
    assert_eq!(seen["minPassphraseLength"], 20, "{seen}");

    // Refused, each with its code: none, too short, too long, a NUL, a newline, not JSON.
    download(&d.cp, token, None)
        .await
        .assert_problem(400, "passphrase_required");
    let short = "nineteen characters";
    assert_eq!(short.chars().count(), 19);
    let refused = download(&d.cp, token, Some(json!({ "passphrase": short }))).await;
    refused.assert_problem(422, "passphrase_too_short");
    assert!(!refused.text().contains(short), "{}", refused.text());
    for bad in [
        "x".repeat(1025),
        format!("{PASSPHRASE}\u{0}"),
        format!("{PASSPHRASE}\n"),
    ] {
        download(&d.cp, token, Some(json!({ "passphrase": bad })))
            .await
            .assert_problem(422, "passphrase_invalid");
    }
    // A bare JSON string (the passphrase sent wrongly) is refused without being quoted back.
    let bare = download(&d.cp, token, Some(json!(PASSPHRASE))).await;
    bare.assert_problem(400, "invalid_body");
    assert!(!bare.text().contains("pässphrase"), "{}", bare.text());
    let wrong_field = download(&d.cp, token, Some(json!({ "password": PASSPHRASE }))).await;
    wrong_field.assert_problem(400, "invalid_body");
    assert!(!wrong_field.text().contains("pässphrase"));
    let plain = reqwest::Client::new()
        .post(format!("{}{DOWNLOAD}", d.cp.url))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(PASSPHRASE)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 415);
    let creds = d.cp.tenant_call(token, Method::GET, "").await.json();
    assert_eq!(creds["downloaded"], false, "a refusal spent the download");
    let shown = creds["keyFingerprint"].as_str().unwrap().to_owned();

    // The encrypted key: OpenSSH's format, bcrypt-pbkdf and aes256-ctr.
    let reply = download(&d.cp, token, Some(json!({ "passphrase": PASSPHRASE }))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/x-pem-file"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let pem = reply.text();
    assert!(
        pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        "{pem}"
    );
    let parsed = ssh_key::PrivateKey::from_openssh(&pem).unwrap();
    assert!(parsed.is_encrypted());
    assert_eq!(parsed.cipher(), ssh_key::Cipher::Aes256Ctr);
    assert!(matches!(parsed.kdf(), ssh_key::Kdf::Bcrypt { .. }));
    let key = KeyFile::write(&pem);

    // ssh-keygen opens it with the passphrase: the public key of the fingerprint shown.
    let public = public_key_with(&key.path, PASSPHRASE).expect("ssh-keygen -y -P opens the key");
    let fingerprint = keyward_common::keys::public_key_fingerprint(&public).unwrap();
    assert_eq!(fingerprint.as_str(), shown);
    let expected = match algorithm {
        KeyAlgorithm::Ed25519 => "ssh-ed25519 ",
        KeyAlgorithm::Rsa4096 => "ssh-rsa ",
    };
    assert!(public.starts_with(expected), "{public}");
    // ... and with nothing else.
    assert_eq!(public_key_with(&key.path, "wrong passphrase"), None);
    assert_eq!(public_key_with(&key.path, ""), None);
    let prefix: String = PASSPHRASE.chars().take(20).collect();
    assert_eq!(public_key_with(&key.path, &prefix), None);

    // A real login: ssh asks for the passphrase (askpass), sshd takes the key.
    let askpass = AskPass::new(PASSPHRASE);
    let (ok, who) = d
        .sshd
        .login_with_askpass_async(&key.path, &d.user.name, "id -un", &askpass.program())
        .await;
    assert!(
        ok,
        "login with the passphrase failed; sshd log:\n{}",
        d.sshd.log_text()
    );
    assert_eq!(who, d.user.name.as_str());
    assert!(askpass.calls() >= 1, "ssh never asked for the passphrase");
    // Without it (batch mode, nothing to ask), the key opens nothing; with a wrong one neither.
    assert!(
        !d.tenant_login(&key).await,
        "the encrypted key logged in without its passphrase"
    );
    let wrong = AskPass::new("not the passphrase at all");
    assert!(
        !d.sshd
            .login_with_askpass_async(&key.path, &d.user.name, "true", &wrong.program())
            .await
            .0,
        "a wrong passphrase logged in"
    );

    // Once: the next download is refused, passphrase or not.
    download(&d.cp, token, Some(json!({ "passphrase": PASSPHRASE })))
        .await
        .assert_problem(410, "key_already_downloaded");

    // The audit log says the download was encrypted, and every refusal; the passphrase is in
    // no event, no file of the state directory (the SQLite database), and no log line.
    let events = d.cp.audit_of(&d.tenant).await;
    let downloads: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "key.download" && e["outcome"] == "success")
        .collect();
    assert_eq!(downloads.len(), 1, "{events:#?}");
    assert_eq!(
        downloads[0]["detail"]["encrypted"], true,
        "{:#}",
        downloads[0]
    );
    let refusals: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "key.download_refused")
        .filter_map(|e| e["detail"]["code"].as_str())
        .collect();
    for code in [
        "passphrase_required",
        "passphrase_too_short",
        "passphrase_invalid",
        "key_already_downloaded",
    ] {
        assert!(refusals.contains(&code), "{code} not audited: {refusals:?}");
    }
    assert!(
        events.iter().any(|e| e["action"] == "download_policy.set"),
        "{events:#?}"
    );
    let audit_text = serde_json::to_string(&events).unwrap();
    for needle in [PASSPHRASE, short, "pässphrase"] {
        assert!(
            !audit_text.contains(needle),
            "the audit log holds {needle:?}"
        );
        assert_eq!(
            state_files_holding(&d.cp, needle.as_bytes()),
            Vec::<String>::new(),
            "the state directory holds {needle:?}"
        );
    }
    let verify = d.cp.admin_get("/api/v1/admin/audit/verify").await;
    assert_eq!(verify.status, 200, "{}", verify.text());

    let logged = log.text();
    assert!(
        logged.contains("private key downloaded") && logged.contains("encrypted=true"),
        "the log was not captured: {} bytes: {}",
        logged.len(),
        logged
            .lines()
            .filter(|l| l.contains("keyward_server"))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for needle in [PASSPHRASE, short, "pässphrase", "p\\u00e4ssphrase"] {
        assert!(
            !logged.contains(needle),
            "the server's log holds {needle:?}"
        );
    }
}

#[tokio::test]
async fn passphrase_download_ed25519_opens_in_openssh_and_logs_in_through_askpass() {
    encrypted_download_with_real_openssh(KeyAlgorithm::Ed25519).await;
}

#[tokio::test]
async fn passphrase_download_rsa_4096_opens_in_openssh_and_logs_in_through_askpass() {
    encrypted_download_with_real_openssh(KeyAlgorithm::Rsa4096).await;
}

/// The deployment's `[download]` applies to every tenant; an admin overrides it for one tenant
/// (and only an admin), and returns it to the deployment's. On both SQL backends (the policy is
/// a row of `download_policies`).
#[tokio::test]
async fn passphrase_download_policy_comes_from_the_deployment_and_an_admin_overrides_it() {
    let bao = OpenBao::start().await;
    for database in [Database::Sqlite, Database::Postgres] {
        policy_from_the_deployment_and_per_tenant(&bao, database).await;
    }
}

async fn policy_from_the_deployment_and_per_tenant(bao: &OpenBao, database: Database) {
    let cp = ControlPlane::start_with(
        bao,
        keyward_tests::control_plane::Options {
            database,
            algorithm: KeyAlgorithm::Ed25519,
            configure: Some(|c| {
                c.download.require_passphrase = true;
                c.download.min_passphrase_length = 16;
            }),
            ..Default::default()
        },
    )
    .await;
    let tenant = unique_tenant("pass");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;

    // The OpenAPI document describes the body, its problems and the policy's routes.
    let doc = cp
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .json();
    let op = &doc["paths"][DOWNLOAD]["post"];
    assert!(
        op["requestBody"]["content"]["application/json"].is_object(),
        "{op:#}"
    );
    assert_ne!(op["requestBody"]["required"], true, "the body is optional");
    for (status, code) in [
        ("400", "passphrase_required"),
        ("422", "passphrase_too_short"),
        ("422", "passphrase_invalid"),
    ] {
        let description = op["responses"][status]["description"].as_str().unwrap();
        assert!(description.contains(code), "{status}: {description}");
    }
    let field = &doc["components"]["schemas"]["DownloadRequest"]["properties"]["passphrase"];
    assert_eq!(field["maxLength"], 1024, "{field}");
    for path in [
        TENANT_POLICY,
        "/api/v1/admin/tenants/{tenant_id}/download-policy",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }

    let policy = cp
        .request(Method::GET, TENANT_POLICY, Some(&token), None)
        .await
        .json();
    assert_eq!(
        policy,
        json!({
            "tenantId": tenant, "requirePassphrase": true, "minPassphraseLength": 16,
            "maxPassphraseBytes": 1024, "source": "default", "updatedAt": null,
        })
    );
    download(&cp, &token, None)
        .await
        .assert_problem(400, "passphrase_required");
    // Characters, not bytes: 15 of them (30 bytes) are too few.
    download(&cp, &token, Some(json!({ "passphrase": "ä".repeat(15) })))
        .await
        .assert_problem(422, "passphrase_too_short");

    // Only an admin sets a tenant's policy; bounds are checked.
    let mine = cp
        .request(
            Method::PUT,
            &admin_policy(&tenant),
            Some(&token),
            Some(json!({ "requirePassphrase": false, "minPassphraseLength": 8 })),
        )
        .await;
    mine.assert_problem(403, "forbidden");
    let other = unique_tenant("other");
    cp.admin_get(&admin_policy(&other))
        .await
        .assert_problem(404, "tenant_not_found");
    for min in [0, 1025] {
        cp.request(
            Method::PUT,
            &admin_policy(&tenant),
            Some(&cp.admin_token),
            Some(json!({ "requirePassphrase": true, "minPassphraseLength": min })),
        )
        .await
        .assert_problem(400, "invalid_body");
    }

    // The override: no passphrase needed, a shorter one taken.
    let set = cp
        .request(
            Method::PUT,
            &admin_policy(&tenant),
            Some(&cp.admin_token),
            Some(json!({ "requirePassphrase": false, "minPassphraseLength": 8 })),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["source"], "tenant");
    assert_eq!(
        cp.admin_get(&admin_policy(&tenant)).await.json()["minPassphraseLength"],
        8
    );
    // Still held to its minimum when one is given.
    download(&cp, &token, Some(json!({ "passphrase": "seven!!" })))
        .await
        .assert_problem(422, "passphrase_too_short");
    let clear = download(&cp, &token, None).await;
    assert_eq!(clear.status, 200, "{}", clear.text());
    let parsed = ssh_key::PrivateKey::from_openssh(clear.text()).unwrap();
    assert!(!parsed.is_encrypted());
    let events = cp.audit_of(&tenant).await;
    let downloaded = events
        .iter()
        .find(|e| e["action"] == "key.download" && e["outcome"] == "success")
        .unwrap();
    assert_eq!(downloaded["detail"]["encrypted"], false, "{downloaded:#}");

    // Back to the deployment's.
    let reset = cp
        .request(
            Method::DELETE,
            &admin_policy(&tenant),
            Some(&cp.admin_token),
            None,
        )
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    assert_eq!(reset.json()["source"], "default");
    assert_eq!(reset.json()["requirePassphrase"], true);
    let events = cp.audit_of(&tenant).await;
    for action in ["download_policy.set", "download_policy.reset"] {
        assert!(events.iter().any(|e| e["action"] == action), "{action}");
    }
}
