//! The SSH certificate authority in Vault against a real OpenBao SSH secrets engine: what keyward
//! has signed is what OpenSSH reads (`ssh-keygen -L`) and what a real sshd lets in, CA rotation
//! shows every issuer, and bad requests never reach Vault.
//! (What the control plane's policy allows on the engine: `vault_policies.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use keyward_common::{GeneratedKey, KeyAlgorithm};
use keyward_server::config::VaultConfig;
use keyward_server::vault::{
    CertificateAuthority, CertificateRequestError, Extension, MAX_VALIDITY, SignedCertificate,
    UserCertificateRequest, VaultError, VaultStore,
};
use keyward_tests::openbao::{ROOT_TOKEN, SSH_ROLE_MAX_TTL_SECS, SSH_USER_ROLE};
use keyward_tests::{KeyFile, OpenBao, Sshd, TestUser};
use reqwest::Method;
use serde_json::json;

async fn store(bao: &OpenBao) -> Arc<VaultStore> {
    VaultStore::connect(&VaultConfig {
        address: Some(bao.addr.clone()),
        token: Some(ROOT_TOKEN.into()),
        ..VaultConfig::default()
    })
    .await
    .unwrap()
}

fn user_key() -> GeneratedKey {
    GeneratedKey::generate(KeyAlgorithm::Ed25519, "someone@laptop").unwrap()
}

fn request(key: &GeneratedKey, key_id: &str, principals: &[&str]) -> UserCertificateRequest {
    UserCertificateRequest::new(
        SSH_USER_ROLE,
        key.public_openssh(),
        key_id,
        principals,
        Duration::from_secs(600),
    )
    .unwrap()
}

/// `ssh-keygen -L -f` of a certificate, as text.
fn ssh_keygen_list(certificate: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id-cert.pub");
    std::fs::write(&path, format!("{certificate}\n")).unwrap();
    let out = std::process::Command::new("/usr/bin/ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&path)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -L: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value after `name:` on its line of `ssh-keygen -L`'s output.
fn field<'a>(listing: &'a str, name: &str) -> &'a str {
    listing
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in:\n{listing}"))
        .trim()
}

/// The indented lines under `name:` (principals, extensions).
fn list_under(listing: &str, name: &str) -> Vec<String> {
    let mut lines = listing
        .lines()
        .skip_while(|l| l.trim() != format!("{name}:"));
    lines.next();
    lines
        .take_while(|l| l.starts_with("                "))
        .map(|l| l.trim().to_owned())
        .collect()
}

fn unix(ssh_keygen_time: &str) -> u64 {
    let at = NaiveDateTime::parse_from_str(ssh_keygen_time, "%Y-%m-%dT%H:%M:%S").unwrap();
    u64::try_from(at.and_utc().timestamp()).unwrap()
}

fn assert_listing_is(signed: &SignedCertificate, listing: &str) {
    assert!(
        field(listing, "Type").starts_with("ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{listing}"
    );
    assert_eq!(
        field(listing, "Key ID"),
        format!("\"{}\"", signed.key_id),
        "{listing}"
    );
    assert_eq!(field(listing, "Serial"), signed.serial.to_string());
    let valid = field(listing, "Valid");
    let (from, to) = valid
        .strip_prefix("from ")
        .and_then(|v| v.split_once(" to "))
        .unwrap_or_else(|| panic!("validity {valid:?}"));
    assert_eq!(
        (unix(from), unix(to)),
        (signed.valid_after, signed.valid_before)
    );
    assert_eq!(list_under(listing, "Principals"), signed.principals);
    assert_eq!(field(listing, "Critical Options"), "(none)");
}

#[tokio::test]
async fn vault_signs_what_was_asked_and_ssh_keygen_reads_it() {
    let bao = OpenBao::start().await;
    let ca = bao.enable_ssh_ca().await;
    let vault = store(&bao).await;
    let key = user_key();

    let before = chrono::Utc::now().timestamp().unsigned_abs();
    let signed = vault
        .sign_user_certificate(&request(&key, "t1:tenant:7", &["alice", "bob"]))
        .await
        .unwrap();
    let after = chrono::Utc::now().timestamp().unsigned_abs();
    assert_eq!(signed.key_id, "t1:tenant:7");
    assert_eq!(signed.principals, ["alice", "bob"]);
    assert_eq!(signed.ca_public_key, ca);
    // Valid for the 600 s asked, counted from signing; the engine backdates the start by 30 s.
    assert!(
        (before + 600..=after + 600).contains(&signed.valid_before),
        "{signed:?}"
    );
    assert!(
        (before - 30..=after).contains(&signed.valid_after),
        "{signed:?}"
    );

    let listing = ssh_keygen_list(&signed.certificate);
    assert_listing_is(&signed, &listing);
    assert_eq!(list_under(&listing, "Extensions"), ["permit-pty"]);
    assert!(field(&listing, "Public key").contains(&key.fingerprint().to_string()));
    assert!(field(&listing, "Signing CA").starts_with("ED25519 SHA256:"));

    // Another signature of the same request: another certificate, another serial.
    let again = vault
        .sign_user_certificate(&request(&key, "t1:tenant:7", &["alice", "bob"]))
        .await
        .unwrap();
    assert_ne!(again.serial, signed.serial);
    assert_ne!(again.certificate, signed.certificate);

    // Extensions only when asked, and then exactly those.
    let forwarding = request(&key, "t1:admin:8", &["root"])
        .with_extension(Extension::PermitPortForwarding)
        .with_extension(Extension::PermitAgentForwarding);
    let signed = vault.sign_user_certificate(&forwarding).await.unwrap();
    let listing = ssh_keygen_list(&signed.certificate);
    assert_listing_is(&signed, &listing);
    assert_eq!(
        list_under(&listing, "Extensions"),
        [
            "permit-agent-forwarding",
            "permit-port-forwarding",
            "permit-pty"
        ]
    );

    assert_eq!(
        vault
            .ca_public_keys()
            .await
            .unwrap()
            .iter()
            .map(|k| (k.public_key.as_str(), k.is_default))
            .collect::<Vec<_>>(),
        [(ca.as_str(), true)]
    );
}

#[tokio::test]
async fn ca_rotation_trusts_every_issuer_and_signs_with_the_default() {
    let bao = OpenBao::start().await;
    let current = bao.enable_ssh_ca().await;
    let vault = store(&bao).await;
    let next = bao.add_ssh_issuer("next").await;
    assert_ne!(current, next);

    let keys = vault.ca_public_keys().await.unwrap();
    let seen: Vec<(&str, bool, Option<&str>)> = keys
        .iter()
        .map(|k| {
            (
                k.public_key.as_str(),
                k.is_default,
                k.issuer_name.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (current.as_str(), true, None),
            (next.as_str(), false, Some("next"))
        ]
    );
    let key = user_key();
    let signed = vault
        .sign_user_certificate(&request(&key, "t1:tenant:1", &["alice"]))
        .await
        .unwrap();
    assert_eq!(signed.ca_public_key, current);
    assert_eq!(signed.issuer_id, keys[0].issuer_id);

    // The operator makes the next CA the default: certificates now come from it, both are trusted.
    bao.root(
        Method::POST,
        "ssh/config/issuers",
        Some(json!({ "default": "next" })),
    )
    .await;
    let signed = vault
        .sign_user_certificate(&request(&key, "t1:tenant:2", &["alice"]))
        .await
        .unwrap();
    assert_eq!(signed.ca_public_key, next);
    let keys = vault.ca_public_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].public_key, next, "the default comes first");
}

#[tokio::test]
async fn bad_requests_are_refused_before_vault_and_vault_refusals_are_clear() {
    let key = user_key();
    let ten_minutes = Duration::from_secs(600);
    let new = |public_key: &str, principals: &[&str], validity| {
        UserCertificateRequest::new(
            SSH_USER_ROLE,
            public_key,
            "t1:tenant:1",
            principals,
            validity,
        )
    };
    // Refused while the request is made: there is nothing to send.
    let err = new("ssh-ed25519 AAAA-not-a-key", &["alice"], ten_minutes).unwrap_err();
    assert!(
        matches!(err, CertificateRequestError::PublicKey(_)),
        "{err}"
    );
    assert!(err.to_string().starts_with("not an OpenSSH public key"));
    let err = new(key.private_openssh().as_str(), &["alice"], ten_minutes).unwrap_err();
    assert!(
        matches!(err, CertificateRequestError::PublicKey(_)),
        "{err}"
    );
    assert!(
        !err.to_string().contains("PRIVATE KEY"),
        "the error must not repeat the input: {err}"
    );
    let err = new(key.public_openssh(), &["alice,root"], ten_minutes).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("principal \"alice,root\": certificate principal may contain only"),
        "{err}"
    );
    let err = new(key.public_openssh(), &[], ten_minutes).unwrap_err();
    assert_eq!(err, CertificateRequestError::NoPrincipals);
    let err = new(
        key.public_openssh(),
        &["alice"],
        MAX_VALIDITY + Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(
        matches!(err, CertificateRequestError::Validity { .. }),
        "{err}"
    );
    // A policy's own maximum.
    let err = new(key.public_openssh(), &["alice"], Duration::from_secs(7200))
        .unwrap()
        .within(Duration::from_secs(3600))
        .unwrap_err();
    assert!(err.to_string().contains("out of bounds"), "{err}");

    // Within keyward's bound but over the role's max_ttl: Vault refuses, and says why.
    let bao = OpenBao::start().await;
    bao.enable_ssh_ca().await;
    let vault = store(&bao).await;
    let too_long = new(
        key.public_openssh(),
        &["alice"],
        Duration::from_secs(SSH_ROLE_MAX_TTL_SECS + 60),
    )
    .unwrap();
    let err = vault.sign_user_certificate(&too_long).await.unwrap_err();
    assert!(
        matches!(&err, VaultError::Failed { status: 400, message, .. } if message.contains("ttl")),
        "{err}"
    );
    // A role that does not exist.
    let other = UserCertificateRequest::new(
        "no-such-role",
        key.public_openssh(),
        "k",
        ["alice"],
        ten_minutes,
    )
    .unwrap();
    let err = vault.sign_user_certificate(&other).await.unwrap_err();
    assert!(matches!(&err, VaultError::Failed { .. }), "{err}");
}

/// Writes `text` as `path`, readable by everyone.
fn write_public(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test]
async fn a_real_sshd_trusting_the_ca_lets_in_only_the_granted_principal() {
    let bao = OpenBao::start().await;
    bao.enable_ssh_ca().await;
    let vault = store(&bao).await;
    let next = bao.add_ssh_issuer("next").await;

    let cas: Vec<String> = vault
        .ca_public_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.public_key)
        .collect();
    assert!(cas.contains(&next));
    // The test sshd reads TrustedUserCAKeys and AuthorizedPrincipalsFile from its files
    // directory, as the agent's package makes sshd do; the user's file lists `ops` only.
    let user = TestUser::create("ca");
    let sshd = Sshd::start_async().await;
    write_public(
        &sshd.files_dir.join("trusted_user_ca_keys"),
        &format!("{}\n", cas.join("\n")),
    );
    write_public(
        &sshd.files_dir.join("principals").join(user.name.as_str()),
        "ops\n",
    );

    // The user's own key, and next to it (`id-cert.pub`, which ssh offers with `-i id`) the
    // certificate.
    let key = user_key();
    let key_file = KeyFile::write(key.private_openssh());
    let cert_file = key_file.path.with_file_name("id-cert.pub");
    let login = |signed: SignedCertificate| {
        write_public(&cert_file, &format!("{}\n", signed.certificate));
        sshd.login_async(&key_file.path, &user.name, "id -un")
    };

    let granted = vault
        .sign_user_certificate(&request(&key, "t1:tenant:41", &["ops"]))
        .await
        .unwrap();
    let serial = granted.serial;
    let (ok, out) = login(granted).await;
    assert!(ok, "login failed; sshd log:\n{}", sshd.log_text());
    assert_eq!(out, user.name.as_str());
    // sshd names the certificate's key id and serial at the login.
    let log = sshd.log_text();
    assert!(
        log.contains(&format!("ID t1:tenant:41 (serial {serial})")),
        "{log}"
    );

    // Another principal: refused, though the CA is trusted.
    let other = vault
        .sign_user_certificate(&request(&key, "t1:tenant:42", &["backup"]))
        .await
        .unwrap();
    let (ok, _) = login(other).await;
    assert!(!ok, "a certificate for another principal logged in");

    // The user's own name is no principal here either: AuthorizedPrincipalsFile decides.
    let own_name = vault
        .sign_user_certificate(&request(&key, "t1:tenant:43", &[user.name.as_str()]))
        .await
        .unwrap();
    let (ok, _) = login(own_name).await;
    assert!(!ok, "the user name logged in without being listed");
}

/// No mount, then a mount without a CA, then its first CA: no key, no key, that key. (The
/// engine answers 404 to the issuers' LIST until a CA exists; keyward then reads the mount's one
/// key, as HashiCorp Vault's engine keeps it, and takes "no CA" for none.)
#[tokio::test]
async fn a_mount_without_a_ca_is_no_key_not_an_error() {
    let bao = OpenBao::start().await;
    let vault = store(&bao).await;
    assert_eq!(vault.ca_public_keys().await.unwrap(), []);
    bao.root(
        Method::POST,
        "sys/mounts/ssh",
        Some(json!({ "type": "ssh" })),
    )
    .await;
    assert_eq!(vault.ca_public_keys().await.unwrap(), []);
    let made = bao
        .root(
            Method::POST,
            "ssh/config/ca",
            Some(json!({ "generate_signing_key": true, "key_type": "ssh-ed25519" })),
        )
        .await;
    let key = made["data"]["public_key"]
        .as_str()
        .unwrap()
        .trim()
        .to_owned();
    let keys = vault.ca_public_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].public_key, key);
}
