//! Revocation when the tenant fights it, end to end: the real agent binary as root, Debian's
//! sshd, real users and real `ssh`. Each test does an attack the tenant user can do from its own
//! shell (as that user, through `runuser`) and asserts that revocation still holds.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::{Deployment, KeyFile, Sshd, TestUser, eventually};
use reqwest::Method;

/// Sessions end and files change well within this; the latency itself is measured by
/// `keyward-bench revocation`, not asserted here.
const WITHIN: Duration = Duration::from_secs(20);

/// Runs a shell command as `user` (the tenant attacking from its own shell).
fn as_user(user: &TestUser, script: &str) {
    let out = Command::new("runuser")
        .args(["-u", user.name.as_str(), "--", "sh", "-c", script])
        .current_dir(&user.home)
        .env("HOME", &user.home)
        .output()
        .expect("runuser (util-linux) must be installed");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The OpenSSH public key line of a private key file.
fn public_line(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(key)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The SHA-256 fingerprint of a private key file.
fn fingerprint(key: &Path) -> String {
    keyward_common::keys::public_key_fingerprint(&public_line(key))
        .unwrap()
        .to_string()
}

/// A key pair of the tenant's own, made with ssh-keygen.
fn own_key(dir: &Path) -> KeyFile {
    let path = dir.join("own");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tenants-own", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    KeyFile::write(&std::fs::read_to_string(&path).unwrap())
}

async fn wait_file(path: &Path, what: &str, check: impl Fn(&str) -> bool) {
    eventually(what, WITHIN, || async {
        let text = std::fs::read_to_string(path).ok()?;
        check(&text).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_replaced_key_is_dead_its_session_ends_and_a_copy_written_back_is_removed() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let old = d.download().await;
    let old_line = public_line(&old.path);
    let mut session = d.sshd.open_session_async(&old.path, &d.user.name).await;

    // Regenerate: the old key's session ends (it once survived regenerate and even revoke).
    d.tenant_op("/regenerate").await;
    Sshd::wait_session_end(&mut session, WITHIN).await;
    let new = d.download().await;
    assert!(d.tenant_login(&new).await);
    assert!(!d.tenant_login(&old).await);

    // The tenant writes the replaced key back as a line of its own (preserve mode keeps the
    // user's lines): it is removed again, and it does not log in.
    let body = old_line.split_whitespace().nth(1).unwrap().to_owned();
    as_user(
        &d.user,
        &format!("printf '%s copied-back\\n' '{old_line}' >> .ssh/authorized_keys"),
    );
    wait_file(&d.user.authorized_keys(), "the copy to be removed", |t| {
        !t.contains(&body)
    })
    .await;
    assert!(
        !d.tenant_login(&old).await,
        "a replaced key logged in again"
    );
    assert!(d.tenant_login(&new).await);

    // Revoke, then write it back again: still removed, still refused.
    d.tenant_op("/revoke").await;
    wait_file(
        &d.user.authorized_keys(),
        "the file to be emptied",
        str::is_empty,
    )
    .await;
    as_user(
        &d.user,
        &format!("printf '%s\\n' '{old_line}' >> .ssh/authorized_keys"),
    );
    wait_file(&d.user.authorized_keys(), "the copy to be removed", |t| {
        !t.contains(&body)
    })
    .await;
    assert!(!d.tenant_login(&old).await);
    assert!(!d.tenant_login(&new).await);
}

#[tokio::test]
async fn revoke_empties_the_account_and_sets_the_tenants_own_lines_aside() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let keys = tempfile::tempdir().unwrap();
    let managed = d.download().await;
    // A key the tenant added itself (as whoever held a leaked key could have done).
    let own = own_key(keys.path());
    let own_line = public_line(&own.path);
    as_user(
        &d.user,
        &format!("printf '%s\\n' '{own_line}' >> .ssh/authorized_keys"),
    );
    eventually("the own key to log in", WITHIN, || async {
        d.tenant_login(&own).await.then_some(())
    })
    .await;
    let mut own_session = d.sshd.open_session_async(&own.path, &d.user.name).await;
    let mut managed_session = d.sshd.open_session_async(&managed.path, &d.user.name).await;

    d.tenant_op("/revoke").await;
    // Every session ends, the file holds no line at all, and no key logs in.
    Sshd::wait_session_end(&mut managed_session, WITHIN).await;
    Sshd::wait_session_end(&mut own_session, WITHIN).await;
    wait_file(
        &d.user.authorized_keys(),
        "the file to be emptied",
        str::is_empty,
    )
    .await;
    assert!(
        !d.tenant_login(&own).await,
        "the tenant's own key still logs in"
    );
    assert!(!d.tenant_login(&managed).await);

    // The own line is kept, readable by the user, in a file of keyward's.
    let aside = d.user.home.join(".ssh/authorized_keys.keyward-set-aside");
    let kept = std::fs::read_to_string(&aside).unwrap();
    assert_eq!(kept, format!("{own_line}\n"));
    let meta = std::fs::metadata(&aside).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));

    // Listed for the tenant and in the host view.
    let own_fp = fingerprint(&own.path);
    let listed = eventually("the set-aside key to be listed", WITHIN, || async {
        let reply =
            d.cp.request(
                Method::GET,
                "/api/v1/tenant/infrastructure/set-aside-keys",
                Some(&d.tenant_token),
                None,
            )
            .await;
        let body = reply.json();
        (reply.status == 200 && body["hosts"].as_array()?.len() == 1).then_some(body)
    })
    .await;
    assert_eq!(
        listed["hosts"][0]["hostId"],
        d.agent.host_id.as_str(),
        "{listed}"
    );
    assert_eq!(listed["hosts"][0]["user"], d.user.name.as_str());
    assert_eq!(listed["hosts"][0]["keys"][0], own_fp.as_str(), "{listed}");
    let view = d.agent.view(&d.cp).await;
    let tenant_user = view["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == d.user.name.as_str())
        .unwrap()
        .clone();
    assert_eq!(tenant_user["setAside"][0], own_fp.as_str(), "{view}");

    // Regenerated: the new key works; the own key is not copied back by keyward.
    d.tenant_op("/regenerate").await;
    let new = d.download().await;
    eventually("the new key to work", WITHIN, || async {
        d.tenant_login(&new).await.then_some(())
    })
    .await;
    assert!(!d.tenant_login(&own).await);
    assert!(aside.exists());
}

#[tokio::test]
async fn a_hard_link_pin_does_not_stop_revocation_and_the_host_says_so() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let old = d.download().await;
    let before = std::fs::read_to_string(d.user.authorized_keys()).unwrap();
    // Once, this made every later write refused while sshd kept reading the stale file.
    as_user(&d.user, "ln .ssh/authorized_keys pin");
    // The agent may notice the new link (its inode changed) and repair the file before the next
    // state, or meet it when that state comes: either way the host says so, with that state at
    // the latest (a repair's warning shows until the next state, which may clear it).
    let mut pinned = says_pinned(&d, Duration::from_secs(2)).await;

    d.tenant_op("/regenerate").await;
    let new = d.download().await;
    eventually("the new key to work", WITHIN, || async {
        d.tenant_login(&new).await.then_some(())
    })
    .await;
    assert!(
        !d.tenant_login(&old).await,
        "the pinned file kept the old key"
    );
    assert_eq!(
        std::fs::metadata(d.user.authorized_keys()).unwrap().nlink(),
        1
    );
    // The other name keeps the old inode (the user's own, harmless).
    assert_eq!(
        std::fs::read_to_string(d.user.home.join("pin")).unwrap(),
        before
    );
    if pinned.is_none() {
        pinned = says_pinned(&d, Duration::from_secs(10)).await;
    }
    let view = pinned.unwrap_or_else(|| {
        panic!(
            "the host never said it met the hard link\nagent log:\n{}",
            d.agent.log_text()
        )
    });
    let reasons = view["lastError"].as_str().unwrap();
    assert!(reasons.starts_with(&format!("{}: ", d.user.name)), "{view}");
}

/// The host's view once it is `degraded` for a file with two hard links, polled until `within`.
async fn says_pinned(d: &Deployment, within: Duration) -> Option<serde_json::Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let view = d.agent.view(&d.cp).await;
        let reason = view["lastError"].as_str().unwrap_or_default();
        if view["status"] == "degraded" && reason.contains("2 hard links") {
            return Some(view);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_agent_killed_right_after_a_revocation_never_brings_the_old_key_back() {
    let mut d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let old = d.download().await;
    let body = public_line(&old.path)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();

    d.tenant_op("/revoke").await;
    // Killed the moment the file changed, while the session step may still be running.
    wait_file(&d.user.authorized_keys(), "the revocation to land", |t| {
        !t.contains(&body)
    })
    .await;
    d.agent.kill().await;
    // Restarted without a control plane: only the cache speaks.
    d.cp.stop().await;
    std::fs::write(d.user.authorized_keys(), "").unwrap();
    d.agent.start();
    eventually("the cached state to be enforced", WITHIN, || async {
        d.agent
            .log_text()
            .contains("enforced the cached state")
            .then_some(())
    })
    .await;
    let text = std::fs::read_to_string(d.user.authorized_keys()).unwrap();
    assert!(
        !text.contains(&body),
        "an older cached state came back: {text}"
    );
    assert!(!d.tenant_login(&old).await);
}

/// Defence in depth: the control plane's revocation list reaches sshd through the agent, so a
/// replaced key that the tenant writes back while the agent is not running (nothing removes it
/// from the file) is still refused by sshd itself, in every form of line.
#[tokio::test]
async fn sshd_itself_refuses_a_denied_key_written_back_while_the_agent_is_down() {
    let mut d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let old = d.download().await;
    let old_line = public_line(&old.path);
    let body = old_line.split_whitespace().nth(1).unwrap().to_owned();
    let revoked_keys = d.sshd.files_dir.join("revoked_keys");
    assert!(
        std::fs::read(&revoked_keys)
            .unwrap()
            .starts_with(b"SSHKRL\n\0"),
        "the agent wrote a KRL at its first state"
    );

    d.tenant_op("/regenerate").await;
    let new = d.download().await;
    let old_pub = d.sshd.files_dir.join("old.pub");
    std::fs::write(&old_pub, format!("{old_line}\n")).unwrap();
    eventually(
        "the replaced key in sshd's revocation list",
        WITHIN,
        || async {
            // `ssh-keygen -Q` makes the check sshd's RevokedKeys makes.
            let checked = Command::new("ssh-keygen")
                .args(["-Q", "-f"])
                .arg(&revoked_keys)
                .arg(&old_pub)
                .output()
                .ok()?;
            String::from_utf8_lossy(&checked.stdout)
                .contains("REVOKED")
                .then_some(())
        },
    )
    .await;
    assert!(!d.tenant_login(&old).await);

    d.agent.kill().await;
    for line in [
        format!("{old_line} written-back"),
        format!("no-pty,from=\"127.0.0.1\" {old_line}"),
        format!("restrict {old_line}"),
    ] {
        as_user(
            &d.user,
            &format!("printf '%s\\n' '{line}' >> .ssh/authorized_keys"),
        );
        let text = std::fs::read_to_string(d.user.authorized_keys()).unwrap();
        assert!(text.contains(&body), "the agent is down: the line stays");
        assert!(
            !d.tenant_login(&old).await,
            "sshd let a denied key in as {line:?}"
        );
    }
    assert!(d.tenant_login(&new).await, "the current key still logs in");
    assert!(
        d.sshd.log_text().contains("revoked by file"),
        "sshd says why; log:\n{}",
        d.sshd.log_text()
    );
}
