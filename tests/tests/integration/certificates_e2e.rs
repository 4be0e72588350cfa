//! SSH certificates end to end: OpenBao's SSH engine as keyward's CA, the control plane's state
//! carrying its keys and each managed user's principal, the real agent writing sshd's files, and
//! Debian's sshd judging real `ssh` logins with certificates.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use keyward_common::{GeneratedKey, KeyAlgorithm};
use keyward_tests::openbao::SSH_USER_ROLE;
use keyward_tests::{Deployment, eventually};
use reqwest::Method;
use serde_json::json;

/// A key pair of someone's own, and the path ssh offers its certificate from (`{key}-cert.pub`).
struct Holder {
    _dir: tempfile::TempDir,
    key: PathBuf,
    public: String,
}

impl Holder {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "someone@laptop").unwrap();
        let path = dir.path().join("id");
        std::fs::write(&path, key.private_openssh().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            _dir: dir,
            key: path,
            public: key.public_openssh().to_owned(),
        }
    }

    /// Has OpenBao sign the key for `principal` (as root, the way an operator would) and puts
    /// the certificate where ssh finds it.
    async fn certify(&self, d: &Deployment, principal: &str) {
        let signed = d
            .bao
            .root(
                Method::POST,
                &format!("ssh/sign/{SSH_USER_ROLE}"),
                Some(json!({
                    "public_key": self.public,
                    "cert_type": "user",
                    "key_id": format!("test:{principal}"),
                    "valid_principals": principal,
                    "ttl": "600s",
                })),
            )
            .await;
        let cert = signed["data"]["signed_key"].as_str().unwrap();
        std::fs::write(self.key.with_file_name("id-cert.pub"), cert).unwrap();
    }
}

#[tokio::test]
async fn a_certificate_from_the_vault_ca_logs_in_only_as_the_user_its_principal_names() {
    let d = Deployment::start_with_ssh_ca(KeyAlgorithm::Ed25519).await;
    // The agent wrote the CA's key and each user's principal from the signed state.
    let files = d.sshd.files_dir.clone();
    eventually(
        "the CA's key in sshd's trusted keys",
        std::time::Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(files.join("trusted_user_ca_keys")).ok()?;
            text.starts_with("ssh-ed25519 ").then_some(())
        },
    )
    .await;
    let tenant_principal = format!("keyward:{}:tenant", d.tenant);
    let admin_principal = format!("keyward:{}:admin", d.tenant);
    assert_eq!(
        std::fs::read_to_string(files.join("principals").join(d.user.name.as_str())).unwrap(),
        format!("{tenant_principal}\n")
    );
    assert_eq!(
        std::fs::read_to_string(files.join("principals").join(d.admin.name.as_str())).unwrap(),
        format!("{admin_principal}\n")
    );

    let holder = Holder::new();
    holder.certify(&d, &tenant_principal).await;
    let (ok, who) = d
        .sshd
        .login_async(&holder.key, &d.user.name, "id -un")
        .await;
    assert!(ok, "certificate refused; sshd log:\n{}", d.sshd.log_text());
    assert_eq!(who, d.user.name.as_str());
    assert!(
        !d.sshd
            .login_async(&holder.key, &d.admin.name, "true")
            .await
            .0,
        "a tenant-user certificate logged in as the admin user"
    );

    // Another tenant's principal, or the user's own name: refused.
    for other in ["keyward:someone-else:tenant", d.user.name.as_str()] {
        holder.certify(&d, other).await;
        assert!(
            !d.sshd
                .login_async(&holder.key, &d.user.name, "true")
                .await
                .0,
            "a certificate for {other:?} logged in"
        );
    }

    // The admin principal logs in as the admin user.
    holder.certify(&d, &admin_principal).await;
    assert!(
        d.sshd
            .login_async(&holder.key, &d.admin.name, "true")
            .await
            .0
    );
}

/// The CA keys in the host's sshd file, one per line.
fn trusted(d: &Deployment) -> Vec<String> {
    std::fs::read_to_string(d.sshd.files_dir.join("trusted_user_ca_keys"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the host trusts exactly `want` (in any order), logging in with `holder` at every
/// look: it must never fail meanwhile.
async fn trusts_while_logging_in(d: &Deployment, want: &[&str], holder: &Holder) {
    eventually(
        "the host's trusted CA keys",
        Duration::from_secs(30),
        || async {
            let ok = d
                .sshd
                .login_async(&holder.key, &d.user.name, "true")
                .await
                .0;
            assert!(
                ok,
                "a login failed during the CA rotation; sshd log:\n{}",
                d.sshd.log_text()
            );
            let mut have = trusted(d);
            have.sort();
            let mut want: Vec<String> = want.iter().map(|k| (*k).to_owned()).collect();
            want.sort();
            (have == want).then_some(())
        },
    )
    .await;
}

/// The operator's three steps of packaging/vault/README.md: add the next issuer (hosts trust
/// both), make it the default (new certificates come from it), delete the old one (hosts stop
/// trusting it). Certificates keep logging in at every step; only one from the deleted CA stops.
#[tokio::test]
async fn a_ca_rotation_loses_no_login_and_ends_with_the_old_ca_untrusted() {
    let d = Deployment::start_with_ssh_ca(KeyAlgorithm::Ed25519).await;
    let principal = format!("keyward:{}:tenant", d.tenant);
    let issuers = d.bao.root(Method::GET, "ssh/issuers?list=true", None).await;
    let old_id = issuers["data"]["keys"][0].as_str().unwrap().to_owned();
    let old_key = issuers["data"]["key_info"][&old_id]["public_key"]
        .as_str()
        .unwrap()
        .trim()
        .to_owned();
    let from_old = Holder::new();
    from_old.certify(&d, &principal).await;
    trusts_while_logging_in(&d, &[&old_key], &from_old).await;

    let next_key = d.bao.add_ssh_issuer("next").await;
    trusts_while_logging_in(&d, &[&old_key, &next_key], &from_old).await;

    d.bao
        .root(
            Method::POST,
            "ssh/config/issuers",
            Some(json!({ "default": "next" })),
        )
        .await;
    let from_next = Holder::new();
    from_next.certify(&d, &principal).await;
    assert!(
        d.sshd
            .login_async(&from_next.key, &d.user.name, "true")
            .await
            .0
    );
    assert!(
        d.sshd
            .login_async(&from_old.key, &d.user.name, "true")
            .await
            .0
    );

    d.bao
        .root(Method::DELETE, &format!("ssh/issuer/{old_id}"), None)
        .await;
    trusts_while_logging_in(&d, &[&next_key], &from_next).await;
    assert!(
        !d.sshd
            .login_async(&from_old.key, &d.user.name, "true")
            .await
            .0,
        "a certificate of the deleted CA still logged in"
    );
}
