//! sshd's certificate trust and revocation files as the agent writes them
//! (`keyward_agent::writer::apply_sshd_files`), read by a real sshd configured like the
//! package's drop-in: a certificate logs in with a principal the user's file lists and not with
//! another, a revocation list refuses a certificate by serial and a plain key by its SHA-256
//! however it is written into `authorized_keys`, and a change applies to the next login without
//! a reload.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use keyward_agent::apply::sshd_files;
use keyward_agent::writer::{SshdFiles, apply_sshd_files};
use keyward_common::{GeneratedKey, KeyAlgorithm, Principal};
use keyward_tests::{Sshd, TestUser};

const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

fn keygen(args: &[&str]) {
    let out = Command::new(SSH_KEYGEN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{SSH_KEYGEN}: {e} (apt-get install openssh-client)"));
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made by ssh-keygen (the Vault-backed CA is tested in `vault_ssh_ca`).
struct Ca {
    dir: tempfile::TempDir,
}

impl Ca {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca");
        keygen(&["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]);
        Self { dir }
    }

    fn public(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.pub")).unwrap()
    }

    /// Signs `key`'s public half as `{key}-cert.pub`, which ssh then offers with `-i key`.
    fn sign(&self, key: &Path, principal: &str, serial: u64) {
        keygen(&[
            "-q",
            "-s",
            self.dir.path().join("ca").to_str().unwrap(),
            "-I",
            &format!("kw:test:{serial}"),
            "-n",
            principal,
            "-z",
            &serial.to_string(),
            "-V",
            "-5m:+1h",
            &format!("{}.pub", key.display()),
        ]);
    }

    /// A KRL revoking `spec` (ssh-keygen's `-k` specification lines) under this CA.
    fn krl(&self, spec: &str) -> Vec<u8> {
        let spec_file = self.dir.path().join("spec");
        std::fs::write(&spec_file, spec).unwrap();
        let out = self.dir.path().join("krl");
        let _ = std::fs::remove_file(&out);
        keygen(&[
            "-k",
            "-f",
            out.to_str().unwrap(),
            "-s",
            self.dir.path().join("ca.pub").to_str().unwrap(),
            spec_file.to_str().unwrap(),
        ]);
        std::fs::read(out).unwrap()
    }
}

/// A private key file (0600) with its public half next to it, as ssh-keygen names them.
fn user_key(dir: &Path, name: &str) -> (PathBuf, GeneratedKey) {
    let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, name).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, key.private_openssh().as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join(format!("{name}.pub")), key.public_openssh()).unwrap();
    (path, key)
}

fn files_for(user: &TestUser, ca: &Ca, principals: &[&str], krl: Vec<u8>) -> SshdFiles {
    SshdFiles {
        user_ca_keys: vec![ca.public().trim().to_owned()],
        revoked_keys: krl,
        principals: BTreeMap::from([(
            user.name.clone(),
            principals
                .iter()
                .map(|p| p.parse::<Principal>().unwrap().into())
                .collect(),
        )]),
    }
}

#[tokio::test]
async fn certificates_log_in_by_principal_and_the_revocation_list_refuses_them_and_plain_keys() {
    let ca = Ca::new();
    let user = TestUser::create("crt");
    let keys = tempfile::tempdir().unwrap();
    // Configured as the package's drop-in: an empty revocation list, no CA trusted yet.
    let sshd = Sshd::start_async().await;
    let files_dir = sshd.files_dir.clone();
    let mine = "keyward:t1:tenant";
    let (cert_key, _) = user_key(keys.path(), "cert-user");
    ca.sign(&cert_key, mine, 7);
    assert!(
        !sshd.login_async(&cert_key, &user.name, "true").await.0,
        "no CA trusted yet"
    );
    assert!(apply_sshd_files(&files_dir, &files_for(&user, &ca, &[mine], Vec::new())).unwrap());
    let (ok, who) = sshd.login_async(&cert_key, &user.name, "id -un").await;
    assert!(
        ok,
        "certificate login refused; sshd log:\n{}",
        sshd.log_text()
    );
    assert_eq!(who, user.name.as_str());

    // Another tenant's principal: refused; the user's file naming it: accepted, no reload.
    let (other_key, _) = user_key(keys.path(), "other-user");
    ca.sign(&other_key, "keyward:t2:tenant", 8);
    assert!(!sshd.login_async(&other_key, &user.name, "true").await.0);
    apply_sshd_files(
        &files_dir,
        &files_for(&user, &ca, &[mine, "keyward:t2:tenant"], Vec::new()),
    )
    .unwrap();
    assert!(sshd.login_async(&other_key, &user.name, "true").await.0);

    // Serial 7 revoked: that certificate is refused at the next login, the other still works.
    let krl = ca.krl("serial: 7\n");
    apply_sshd_files(
        &files_dir,
        &files_for(&user, &ca, &[mine, "keyward:t2:tenant"], krl),
    )
    .unwrap();
    assert!(!sshd.login_async(&cert_key, &user.name, "true").await.0);
    assert!(sshd.login_async(&other_key, &user.name, "true").await.0);

    // A plain key denied by SHA-256: refused by sshd even when it is written back into
    // authorized_keys, with options or without.
    let (plain, plain_key) = user_key(keys.path(), "plain");
    let ssh = user.home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::os::unix::fs::chown(&ssh, Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
    let write_back = |line: &str| {
        std::fs::write(user.authorized_keys(), format!("{line}\n")).unwrap();
        std::os::unix::fs::chown(user.authorized_keys(), Some(user.uid), Some(user.gid)).unwrap();
        std::fs::set_permissions(
            user.authorized_keys(),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    };
    write_back(plain_key.public_openssh());
    assert!(sshd.login_async(&plain, &user.name, "true").await.0);
    let krl = ca.krl(&format!("serial: 7\nhash: {}\n", plain_key.fingerprint()));
    apply_sshd_files(&files_dir, &files_for(&user, &ca, &[mine], krl)).unwrap();
    for line in [
        plain_key.public_openssh().to_owned(),
        format!(
            "no-pty,from=\"127.0.0.1\" {} again",
            plain_key.public_openssh()
        ),
    ] {
        write_back(&line);
        assert!(
            !sshd.login_async(&plain, &user.name, "true").await.0,
            "a denied key written back as {line:?} logged in"
        );
    }
    assert!(
        sshd.log_text().contains("revoked"),
        "sshd says why; log:\n{}",
        sshd.log_text()
    );
}

#[tokio::test]
async fn the_agent_refuses_sshd_files_that_would_lock_everyone_out_or_carry_options() {
    use keyward_common::proto;

    let user: keyward_common::UnixUser = "kwadmin".parse().unwrap();
    let state_user = |principals: Vec<&str>| proto::ManagedUser {
        user: user.to_string(),
        principals: principals.into_iter().map(str::to_owned).collect(),
        ..proto::ManagedUser::default()
    };
    let good = proto::SshdFiles {
        user_ca_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ca"
                .into(),
        ],
        revoked_keys: Vec::new(),
    };
    let ok = sshd_files(
        &good,
        &[state_user(vec!["keyward:t1:admin"])],
        [&user],
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        ok.user_ca_keys,
        ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"],
        "written without its comment"
    );
    assert_eq!(ok.principals[&user].len(), 1);
    // A user of this agent the state does not name gets an empty file: no certificate.
    let other: keyward_common::UnixUser = "tenant".parse().unwrap();
    let both = sshd_files(&good, &[], [&user, &other], None, None).unwrap();
    assert!(both.principals[&other].is_empty());

    let cases: Vec<(proto::SshdFiles, Vec<proto::ManagedUser>, &str)> = vec![
        (
            proto::SshdFiles {
                revoked_keys: b"not a krl".to_vec(),
                ..good.clone()
            },
            vec![],
            "not an OpenSSH KRL",
        ),
        (
            proto::SshdFiles {
                user_ca_keys: vec!["command=\"sh\" ssh-ed25519 AAAA".into()],
                ..good.clone()
            },
            vec![],
            "CA key 0",
        ),
        (
            good.clone(),
            vec![state_user(vec!["command=\"/bin/sh\" x"])],
            "certificate principal",
        ),
        (
            proto::SshdFiles {
                revoked_keys: [b"SSHKRL\n\0".as_slice(), &vec![0; 9 << 20]].concat(),
                ..good.clone()
            },
            vec![],
            "at most",
        ),
    ];
    for (files, users, want) in cases {
        let err = sshd_files(&files, &users, [&user], None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}
