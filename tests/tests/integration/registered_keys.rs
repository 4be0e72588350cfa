//! Keys people bring (#17): a tenant registers its own public key, made by the real `ssh-keygen`,
//! instead of receiving a generated private key; the real agent writes it into the tenant user's
//! `authorized_keys` and a real `ssh` login with the tenant's own private key works, on SQLite
//! and PostgreSQL. keyward holds no private key for it (Vault has the public key and metadata at
//! the key set's path), refuses the download (`key_registered`) and rotate/regenerate (it
//! reminds, it does not replace), and refuses weak or dressed-up keys each with its code.
//!
//! FIDO2 keys cannot sign here (no authenticator), so what is shown is that sshd reads the line
//! keyward writes for them: the client offers the security key and Debian's sshd answers that
//! it accepts it (`Accepted key ED25519-SK SHA256:... found at .../authorized_keys:N`, before
//! the signature that needs the device), `ssh-keygen -l` on the written file prints keyward's
//! fingerprint, and the line carries `verify-required` exactly while the tenant's policy says so.
//! The policy that takes FIDO2 keys only refuses a software key. On a clock that moves when
//! told, the scheduler rotates the generated key and only reminds, once, for the registered one.
//! The web UI's forms: `registered_keys_ui.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keyward_common::authorized_keys::parse_line;
use keyward_common::{KeyAlgorithm, KeyKind, TenantId};
use keyward_server::caller::Caller;
use keyward_server::clock::Clock;
use keyward_server::config::RotationConfig;
use keyward_server::lifecycle::{DomainError, Replace};
use keyward_server::rotation::RotationScheduler;
use keyward_server::store::AuditFilter;
use keyward_tests::control_plane::Options;
use keyward_tests::{
    ControlPlane, Database, Deployment, OpenBao, Reply, eventually, require_program,
};
use reqwest::Method;
use serde_json::{Value, json};
use ssh_key::private::{KeypairData, SkEcdsaSha2NistP256, SkEd25519};
use ssh_key::public::{EcdsaPublicKey, Ed25519PublicKey};
use ssh_key::{PrivateKey, PublicKey, public};

const REGISTER: &str = "/api/v1/tenant/infrastructure/ssh-credentials/public-key";
const TENANT_POLICY: &str = "/api/v1/tenant/infrastructure/key-registration-policy";

fn ssh_keygen() -> PathBuf {
    require_program(
        "ssh-keygen",
        "install Debian's openssh-client (`make test-deps` does)",
    )
}

/// A key pair `ssh-keygen` made, as on the tenant's laptop.
pub(crate) struct LaptopKey {
    _dir: tempfile::TempDir,
    pub(crate) key: PathBuf,
    pub(crate) public: String,
    /// What `ssh-keygen -l -E sha256` prints for it.
    pub(crate) fingerprint: String,
}

impl LaptopKey {
    pub(crate) fn new(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        let out = Command::new(ssh_keygen())
            .args(["-q", "-N", "", "-C", "me@laptop"])
            .args(args)
            .arg("-f")
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen {args:?}: {out:?}");
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let fingerprint = fingerprints_of(&key.with_extension("pub")).remove(0);
        Self {
            _dir: dir,
            key,
            public,
            fingerprint,
        }
    }

    /// `ssh-keygen -s` on this key's public half with `ca`: its certificate line.
    fn certified_by(&self, ca: &LaptopKey) -> String {
        let out = Command::new(ssh_keygen())
            .args(["-q", "-s"])
            .arg(&ca.key)
            .args(["-I", "laptop", "-n", "me", "-V", "+1d"])
            .arg(self.key.with_extension("pub"))
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen -s: {out:?}");
        std::fs::read_to_string(self.key.with_file_name("id-cert.pub")).unwrap()
    }
}

/// The SHA-256 fingerprints `ssh-keygen -l` prints for the keys in `file` (an `authorized_keys`
/// file with options too).
fn fingerprints_of(file: &Path) -> Vec<String> {
    let out = Command::new(ssh_keygen())
        .args(["-l", "-E", "sha256", "-f"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -l: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_owned())
        .collect()
}

async fn register(cp: &ControlPlane, token: &str, public_key: &str) -> Reply {
    cp.request(
        Method::PUT,
        REGISTER,
        Some(token),
        Some(json!({ "publicKey": public_key })),
    )
    .await
}

async fn registered(cp: &ControlPlane, token: &str, key: &LaptopKey) -> Value {
    let reply = register(cp, token, &key.public).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let summary = reply.json();
    assert_eq!(
        summary["fingerprint"],
        key.fingerprint.as_str(),
        "{summary}"
    );
    assert_eq!(summary["origin"], "registered", "{summary}");
    summary
}

#[tokio::test]
async fn registered_keys_log_in_through_the_real_agent_on_sqlite_and_postgres() {
    for database in [Database::Sqlite, Database::Postgres] {
        registered_software_keys_log_in(database).await;
    }
}

async fn registered_software_keys_log_in(database: Database) {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            database,
            algorithm: KeyAlgorithm::Ed25519,
            ..Options::default()
        },
    )
    .await;
    let d = Deployment::start_on(bao, cp).await;
    let (cp, token) = (&d.cp, d.tenant_token.as_str());
    let creds = cp.tenant_call(token, Method::GET, "").await.json();
    assert_eq!(creds["keyOrigin"], "generated", "{creds}");
    let generated = creds["keyFingerprint"].as_str().unwrap().to_owned();

    // Refused, each with its code, before anything is written.
    let ed = LaptopKey::new(&["-t", "ed25519"]);
    let rsa_2048 = LaptopKey::new(&["-t", "rsa", "-b", "2048"]);
    let dsa = LaptopKey::new(&["-t", "dsa"]);
    let certificate = ed.certified_by(&LaptopKey::new(&["-t", "ed25519"]));
    for (text, code) in [
        (rsa_2048.public.clone(), "key_too_weak"),
        (dsa.public.clone(), "key_type_not_allowed"),
        (format!("no-pty {}", ed.public), "public_key_has_options"),
        (
            format!("command=\"/bin/sh\" {}", ed.public),
            "public_key_has_options",
        ),
        (certificate, "public_key_is_certificate"),
        (
            format!("{}{}", ed.public, dsa.public),
            "public_key_not_one_line",
        ),
        ("ssh-ed25519 AAAA".to_owned(), "public_key_unreadable"),
        ("x".repeat(9000), "public_key_too_large"),
    ] {
        let reply = register(cp, token, &text).await;
        reply.assert_problem(422, code);
        assert!(!reply.text().contains("AAAA"), "{}", reply.text());
    }
    cp.request(
        Method::PUT,
        REGISTER,
        Some(token),
        Some(json!({ "publicKey": ed.public, "options": "no-pty" })),
    )
    .await
    .assert_problem(400, "invalid_body");
    let creds = cp.tenant_call(token, Method::GET, "").await.json();
    assert_eq!(
        creds["keyFingerprint"],
        generated.as_str(),
        "a refusal wrote"
    );

    // Ed25519, ECDSA P-384 and RSA-3072 in turn: each logs in through the agent, the one it
    // replaced keeps its grace period.
    let mut previous: Option<LaptopKey> = None;
    for args in [
        &["-t", "ed25519"][..],
        &["-t", "ecdsa", "-b", "384"],
        &["-t", "rsa", "-b", "3072"],
    ] {
        let key = LaptopKey::new(args);
        let summary = registered(cp, token, &key).await;
        assert!(summary["graceUntil"].is_string(), "{summary}");
        d.agent.wait_in_sync(cp).await;
        let (ok, who) = d.sshd.login_async(&key.key, &d.user.name, "id -un").await;
        assert!(
            ok,
            "{args:?}: login failed; sshd log:\n{}",
            d.sshd.log_text()
        );
        assert_eq!(who, d.user.name.as_str());
        if let Some(previous) = &previous {
            assert!(
                d.sshd
                    .login_async(&previous.key, &d.user.name, "true")
                    .await
                    .0,
                "the replaced key lost its grace period"
            );
            // A key replaced is not registered again.
            register(cp, token, &previous.public)
                .await
                .assert_problem(409, "key_denied");
        }
        register(cp, token, &key.public)
            .await
            .assert_problem(409, "key_already_registered");
        previous = Some(key);
    }
    let rsa = previous.unwrap();

    // Nothing to download; keyward does not replace the key.
    cp.tenant_call(token, Method::POST, "/download")
        .await
        .assert_problem(409, "key_registered");
    for op in ["/rotate", "/regenerate"] {
        cp.tenant_call(token, Method::POST, op)
            .await
            .assert_problem(409, "key_registered");
    }
    let creds = cp.tenant_call(token, Method::GET, "").await.json();
    assert_eq!(creds["keyOrigin"], "registered", "{creds}");
    assert_eq!(creds["keyType"], "ssh-rsa", "{creds}");
    assert_eq!(creds["keyFingerprint"], rsa.fingerprint.as_str());
    assert_eq!(creds["rotationOverdue"], false);
    assert!(d.sshd.login_async(&rsa.key, &d.user.name, "true").await.0);

    // Vault: the public key and metadata at the key set's path, no private key.
    let (secret, version) = d
        .bao
        .read_kv(&format!("{}/tenant_ssh", d.tenant))
        .await
        .unwrap();
    assert_eq!(version, 4, "{secret}");
    assert!(secret.get("private_key").is_none(), "{secret}");
    assert_eq!(secret["origin"], "registered");
    assert!(
        rsa.public
            .starts_with(secret["public_key"].as_str().unwrap())
    );

    // The audit log: each registration with fingerprint and type, each refusal with its code.
    let events = cp.audit_of(&d.tenant).await;
    let registrations: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "key.register" && e["outcome"] == "success")
        .collect();
    assert_eq!(registrations.len(), 3, "{events:#?}");
    assert_eq!(registrations[0]["detail"]["keyType"], "ssh-rsa");
    assert_eq!(
        registrations[0]["detail"]["fingerprint"],
        rsa.fingerprint.as_str()
    );
    assert_eq!(registrations[2]["detail"]["oldFingerprint"], generated);
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .filter_map(|e| e["detail"]["code"].as_str())
        .collect();
    for code in [
        "key_too_weak",
        "public_key_is_certificate",
        "key_registered",
    ] {
        assert!(refused.contains(&code), "{code} not audited: {refused:?}");
    }

    // An admin registers the admin user's key (not the tenant's: that is the tenant's own).
    let admin_key = LaptopKey::new(&["-t", "ecdsa", "-b", "256"]);
    let path = |kind: &str| format!("/api/v1/admin/tenants/{}/keys/{kind}/public-key", d.tenant);
    let body = json!({ "publicKey": admin_key.public });
    cp.request(
        Method::PUT,
        &path("tenant"),
        Some(&cp.admin_token),
        Some(body.clone()),
    )
    .await
    .assert_problem(403, "forbidden");
    cp.request(Method::PUT, &path("admin"), Some(token), Some(body.clone()))
        .await
        .assert_problem(403, "forbidden");
    let reply = cp
        .request(
            Method::PUT,
            &path("admin"),
            Some(&cp.admin_token),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    d.agent.wait_in_sync(cp).await;
    assert!(
        d.sshd
            .login_async(&admin_key.key, &d.admin.name, "true")
            .await
            .0,
        "admin login with the registered key failed; sshd log:\n{}",
        d.sshd.log_text()
    );

    // A bulk rotation skips the tenant: both its keys are its owners' to replace.
    let answer = cp
        .admin_post(
            "/api/v1/admin/secrets/rotate-all",
            json!({ "secretType": "ssh" }),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    assert_eq!(
        (
            answer["rotatedCount"].as_i64(),
            answer["skippedCount"].as_i64()
        ),
        (Some(0), Some(1)),
        "{answer}"
    );
    let creds = cp.tenant_call(token, Method::GET, "").await.json();
    assert_eq!(
        creds["keyFingerprint"],
        rsa.fingerprint.as_str(),
        "rotate-all replaced it"
    );
}

/// A security key's public half as the authenticator would give it, and a private key file
/// ssh takes for it (the key handle is made up: no device can sign with it).
struct SecurityKey {
    _dir: tempfile::TempDir,
    key: PathBuf,
    public: String,
    fingerprint: String,
}

impl SecurityKey {
    fn new(data: KeypairData) -> Self {
        let private = PrivateKey::new(data, "yubikey").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_sk");
        private
            .write_openssh_file(&key, ssh_key::LineEnding::LF)
            .unwrap();
        let public = private.public_key().to_openssh().unwrap();
        Self {
            _dir: dir,
            key,
            fingerprint: private
                .public_key()
                .fingerprint(Default::default())
                .to_string(),
            public,
        }
    }

    fn ed25519() -> Self {
        let public = public::SkEd25519::new(Ed25519PublicKey([0x5a; 32]), "ssh:");
        Self::new(KeypairData::SkEd25519(
            SkEd25519::new(public, 0x01, vec![7; 64]).unwrap(),
        ))
    }

    /// On a point of P-256 `ssh-keygen` made.
    fn ecdsa() -> Self {
        let made = LaptopKey::new(&["-t", "ecdsa", "-b", "256"]);
        let Some(EcdsaPublicKey::NistP256(point)) = PublicKey::from_openssh(&made.public)
            .unwrap()
            .key_data()
            .ecdsa()
            .cloned()
        else {
            panic!("not P-256")
        };
        let public = public::SkEcdsaSha2NistP256::new(point, "ssh:");
        Self::new(KeypairData::SkEcdsaSha2NistP256(
            SkEcdsaSha2NistP256::new(public, 0x05, vec![9; 64]).unwrap(),
        ))
    }
}

/// The line of `authorized_keys` that holds `fingerprint`: `ssh-keygen -l` finds the key in the
/// file, and the agent's reader of sshd's format says which line.
fn line_with(file: &Path, fingerprint: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        fingerprints_of(file).iter().any(|f| f == fingerprint),
        "ssh-keygen -l does not find {fingerprint} in:\n{text}"
    );
    text.lines()
        .find(|line| {
            parse_line(line.as_bytes()).is_some_and(|k| k.fingerprint.as_str() == fingerprint)
        })
        .unwrap_or_else(|| panic!("no line of {fingerprint} in:\n{text}"))
        .to_owned()
}

/// Offers the security key to sshd (the signature then fails: there is no device) and waits
/// for sshd to log that the key is in the user's file: sshd read keyward's line as this key.
async fn sshd_accepts(d: &Deployment, key: &SecurityKey, label: &str) {
    let (ok, _) = d.sshd.login_async(&key.key, &d.user.name, "true").await;
    assert!(!ok, "a security key without a device logged in");
    let wanted = format!(
        "Accepted key {label} {} found at {}:",
        key.fingerprint,
        d.user.authorized_keys().display()
    );
    eventually(
        &format!("sshd to log {wanted:?}; its log:\n{}", d.sshd.log_text()),
        Duration::from_secs(10),
        || async { d.sshd.log_text().contains(&wanted).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn fido2_keys_lines_are_read_by_sshd_and_the_policy_requires_them_with_verify_required() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let (cp, token) = (&d.cp, d.tenant_token.as_str());
    let policy = format!("/api/v1/admin/tenants/{}/key-registration-policy", d.tenant);
    let set = |require_fido2: bool, verify_required: bool| {
        cp.request(
            Method::PUT,
            &policy,
            Some(&cp.admin_token),
            Some(json!({ "requireFido2": require_fido2, "verifyRequired": verify_required })),
        )
    };
    let reply = set(true, true).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = cp
        .request(Method::GET, TENANT_POLICY, Some(token), None)
        .await
        .json();
    assert_eq!(seen["requireFido2"], true, "{seen}");
    assert_eq!(seen["verifyRequired"], true, "{seen}");
    assert_eq!(seen["source"], "tenant");
    // Only an admin sets it.
    cp.request(
        Method::PUT,
        &policy,
        Some(token),
        Some(json!({ "requireFido2": false, "verifyRequired": false })),
    )
    .await
    .assert_problem(403, "forbidden");

    // A software key is refused while the policy takes security keys only.
    let software = LaptopKey::new(&["-t", "ed25519"]);
    register(cp, token, &software.public)
        .await
        .assert_problem(422, "fido2_required");

    let file = d.user.authorized_keys();
    for (key, label, key_type) in [
        (
            SecurityKey::ed25519(),
            "ED25519-SK",
            "sk-ssh-ed25519@openssh.com",
        ),
        (
            SecurityKey::ecdsa(),
            "ECDSA-SK",
            "sk-ecdsa-sha2-nistp256@openssh.com",
        ),
    ] {
        let reply = register(cp, token, &key.public).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let summary = reply.json();
        assert_eq!(summary["keyType"], key_type, "{summary}");
        assert_eq!(summary["fingerprint"], key.fingerprint.as_str());
        assert_eq!(summary["verifyRequired"], true);
        d.agent.wait_in_sync(cp).await;
        // ssh-keygen reads keyward's fingerprint in the written file; the line asks for user
        // verification; sshd finds the key there.
        let line = line_with(&file, &key.fingerprint);
        assert!(line.starts_with("verify-required "), "{line}");
        assert!(line.contains(&format!(" {key_type} ")), "{line}");
        sshd_accepts(&d, &key, label).await;
    }
    let events = cp.audit_of(&d.tenant).await;
    let last = events
        .iter()
        .find(|e| e["action"] == "key.register" && e["outcome"] == "success")
        .unwrap();
    assert_eq!(last["detail"]["fido2"], true, "{last}");
    assert_eq!(last["detail"]["verifyRequired"], true, "{last}");
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "key.register" && e["detail"]["code"] == "fido2_required"),
        "the refusal is not audited"
    );

    // The policy drops verify-required: the key already registered follows, on the host too.
    let ecdsa = SecurityKey::ecdsa();
    let reply = register(cp, token, &ecdsa.public).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = set(true, false).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    d.agent.wait_in_sync(cp).await;
    let line = eventually(
        "the line without verify-required",
        Duration::from_secs(20),
        || {
            let line = line_with(&file, &ecdsa.fingerprint);
            async move { (!line.contains("verify-required")).then_some(line) }
        },
    )
    .await;
    assert!(
        line.starts_with("sk-ecdsa-sha2-nistp256@openssh.com "),
        "{line}"
    );
    sshd_accepts(&d, &ecdsa, "ECDSA-SK").await;
}

#[tokio::test]
async fn the_scheduler_reminds_once_for_an_overdue_registered_key_and_never_replaces_it() {
    let bao = OpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (lifecycle, clock) = crate::rotation::lifecycle_on_manual_clock(&bao, &dir).await;
    let system = Caller::system();
    lifecycle
        .create_tenant(&system, crate::rotation::tenant("byo"))
        .await
        .unwrap();
    let t: TenantId = "byo".parse().unwrap();
    let own = LaptopKey::new(&["-t", "ed25519"]);
    let ks = lifecycle
        .register_key(&system, &t, KeyKind::Tenant, &own.public)
        .await
        .unwrap();
    assert_eq!(ks.fingerprint.as_str(), own.fingerprint);
    assert!(matches!(
        lifecycle
            .replace_key(&system, &t, KeyKind::Tenant, Replace::Rotate)
            .await,
        Err(DomainError::KeyRegistered)
    ));

    let scheduler = RotationScheduler::new(lifecycle.clone(), RotationConfig::default());
    clock.advance(chrono::Duration::days(91));
    let report = scheduler.run_due(clock.now()).await.unwrap();
    assert_eq!((report.rotated, report.reminded), (1, 1), "{report:?}");
    // The admin key was rotated (generated); the registered one is as it was, and overdue.
    assert_eq!(crate::rotation::vault_versions(&bao, "byo").await, [2, 2]);
    let after = lifecycle
        .store()
        .key_set(&t, KeyKind::Tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.fingerprint, ks.fingerprint);
    assert_eq!(after.generation, ks.generation);
    assert!(keyward_server::lifecycle::overdue(&after, clock.now()));
    // Once per generation: the next round reminds nobody.
    clock.advance(chrono::Duration::days(1));
    assert_eq!(scheduler.run_due(clock.now()).await.unwrap().reminded, 0);
    let reminders = lifecycle
        .store()
        .audit_events(&AuditFilter {
            tenant_id: Some(t.clone()),
            action: Some("key.rotation_reminder".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .events;
    assert_eq!(reminders.len(), 1, "{reminders:?}");
    assert_eq!(reminders[0].detail["fingerprint"], own.fingerprint.as_str());

    // The owner registers a new key: no longer overdue, the old one in its grace period.
    let newer = LaptopKey::new(&["-t", "ecdsa", "-b", "521"]);
    let replaced = lifecycle
        .register_key(&system, &t, KeyKind::Tenant, &newer.public)
        .await
        .unwrap();
    assert!(!keyward_server::lifecycle::overdue(&replaced, clock.now()));
    assert_eq!(
        replaced.previous_fingerprint.as_ref(),
        Some(&ks.fingerprint)
    );
    assert!(replaced.grace_until.is_some_and(|g| g > clock.now()));

    // The consistency check reads the registered key sets in Vault (no private key) as the
    // ones SQL records.
    let report = keyward_server::consistency::check(lifecycle.store(), lifecycle.vault().as_ref())
        .await
        .unwrap();
    assert!(report.ok && report.checked == 2, "{report:?}");
}

/// `ssh-keygen -y` on a private key file: its public half, fingerprinted by `ssh-keygen -l`.
fn fingerprint_of_private(key: &Path) -> String {
    let out = Command::new(ssh_keygen())
        .arg("-y")
        .arg("-f")
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -y: {out:?}");
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("derived.pub");
    std::fs::write(&public, &out.stdout).unwrap();
    fingerprints_of(&public).remove(0)
}

#[tokio::test]
async fn removing_a_registration_goes_back_to_a_generated_key_on_sqlite_and_postgres() {
    for database in [Database::Sqlite, Database::Postgres] {
        back_to_a_generated_key(database).await;
    }
}

/// A tenant registers its own key, then goes back: keyward generates a key (with the step-up
/// `regenerate` asks for), the agent writes it, the download works again and `ssh-keygen -y`
/// agrees with the fingerprint the credentials view shows; the registered key no longer logs in.
/// The admin does the same for the admin user's key.
async fn back_to_a_generated_key(database: Database) {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            database,
            algorithm: KeyAlgorithm::Ed25519,
            ..Options::default()
        },
    )
    .await;
    let d = Deployment::start_on(bao, cp).await;
    let (cp, token) = (&d.cp, d.tenant_token.as_str());
    let doc = cp
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .json();
    let op = &doc["paths"][REGISTER]["delete"];
    assert!(
        op["responses"]["409"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("key_not_registered")),
        "{op:#}"
    );

    // Nothing registered: nothing to remove.
    cp.request(Method::DELETE, REGISTER, Some(token), None)
        .await
        .assert_problem(409, "key_not_registered");

    let own = LaptopKey::new(&["-t", "ed25519"]);
    let summary = registered(cp, token, &own).await;
    let registered_generation = summary["generation"].as_i64().unwrap();
    d.agent.wait_in_sync(cp).await;
    assert!(d.sshd.login_async(&own.key, &d.user.name, "true").await.0);

    // The tenant's policy names regenerate: going back needs its second factor too.
    let policy = cp
        .request(
            Method::PUT,
            &format!("/api/v1/admin/tenants/{}/mfa-policy", d.tenant),
            Some(&cp.admin_token),
            Some(json!({ "requireFor": ["regenerate"] })),
        )
        .await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    let (_, mut app, _, _) = crate::mfa_totp::enrol(cp, "/api/v1/tenant/mfa", token).await;
    cp.request(Method::DELETE, REGISTER, Some(token), None)
        .await
        .assert_problem(401, "mfa_required");
    let code = format!("totp:{}", app.fresh_code().await);
    let back = crate::mfa_totp::call(cp, Method::DELETE, REGISTER, token, None, Some(&code)).await;
    assert_eq!(back.status, 200, "{}", back.text());
    let back = back.json();
    assert_eq!(back["origin"], "generated", "{back}");
    assert_eq!(back["algorithm"], "ed25519", "{back}");
    assert_eq!(back["generation"], registered_generation + 1, "{back}");
    assert!(back["previousFingerprint"].is_null(), "{back}");
    let creds = cp.tenant_call(token, Method::GET, "").await.json();
    assert_eq!(creds["keyOrigin"], "generated", "{creds}");
    assert_eq!(creds["keyFingerprint"], back["fingerprint"], "{creds}");
    assert_eq!(creds["downloaded"], false, "{creds}");

    // Vault: a new version with a private key again (a generated key's metadata names no
    // origin, as before registrations existed).
    let (secret, _) = d
        .bao
        .read_kv(&format!("{}/tenant_ssh", d.tenant))
        .await
        .unwrap();
    assert!(
        secret.get("origin").is_none_or(|o| o == "generated"),
        "{secret}"
    );
    assert!(secret["private_key"].is_string(), "no private key in Vault");

    // The download works again; its key is the one the view shows, and it logs in through the
    // agent, while the registered key no longer does.
    let key = d.download().await;
    assert_eq!(
        fingerprint_of_private(&key.path),
        creds["keyFingerprint"].as_str().unwrap()
    );
    d.agent.wait_in_sync(cp).await;
    assert!(
        d.tenant_login(&key).await,
        "the generated key does not log in; sshd log:\n{}",
        d.sshd.log_text()
    );
    assert!(
        !d.sshd.login_async(&own.key, &d.user.name, "true").await.0,
        "the registered key still logs in"
    );
    cp.tenant_call(token, Method::POST, "/download")
        .await
        .assert_problem(410, "key_already_downloaded");

    // A second removal: nothing registered any more.
    let code = format!("totp:{}", app.fresh_code().await);
    crate::mfa_totp::call(cp, Method::DELETE, REGISTER, token, None, Some(&code))
        .await
        .assert_problem(409, "key_not_registered");

    // The admin user's key: registered by an admin, and back (kind tenant is the tenant's own).
    let admin_key = LaptopKey::new(&["-t", "ed25519"]);
    let path = |kind: &str| format!("/api/v1/admin/tenants/{}/keys/{kind}/public-key", d.tenant);
    let put = cp
        .request(
            Method::PUT,
            &path("admin"),
            Some(&cp.admin_token),
            Some(json!({ "publicKey": admin_key.public })),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    cp.request(Method::DELETE, &path("tenant"), Some(&cp.admin_token), None)
        .await
        .assert_problem(403, "forbidden");
    cp.request(Method::DELETE, &path("admin"), Some(token), None)
        .await
        .assert_problem(403, "forbidden");
    cp.request(
        Method::DELETE,
        "/api/v1/admin/tenants/nobody-here/keys/admin/public-key",
        Some(&cp.admin_token),
        None,
    )
    .await
    .assert_problem(404, "tenant_not_found");
    let admin_back = cp
        .request(Method::DELETE, &path("admin"), Some(&cp.admin_token), None)
        .await;
    assert_eq!(admin_back.status, 200, "{}", admin_back.text());
    assert_eq!(admin_back.json()["origin"], "generated");
    let admin_private = d.admin_key_from_vault().await;
    assert_eq!(
        fingerprint_of_private(&admin_private.path),
        admin_back.json()["fingerprint"].as_str().unwrap()
    );
    cp.request(Method::DELETE, &path("admin"), Some(&cp.admin_token), None)
        .await
        .assert_problem(409, "key_not_registered");

    // Audited: each removal with both fingerprints, the refusals with their code.
    let events = cp.audit_of(&d.tenant).await;
    let removed: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "key.registration_removed")
        .collect();
    let outcomes: Vec<(&str, &str)> = removed
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap(),
                e["detail"]["kind"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("refused", ""),
            ("success", "admin"),
            ("refused", ""),
            ("success", "tenant"),
            ("refused", ""),
        ],
        "{removed:#?}"
    );
    assert_eq!(
        removed[3]["detail"]["oldFingerprint"],
        own.fingerprint.as_str()
    );
    assert_eq!(removed[3]["detail"]["newFingerprint"], back["fingerprint"]);
    assert_eq!(removed[4]["detail"]["code"], "key_not_registered");
    let verify = cp.admin_get("/api/v1/admin/audit/verify").await;
    assert_eq!(verify.status, 200, "{}", verify.text());
    assert_eq!(verify.json()["ok"], true, "{}", verify.text());
}
