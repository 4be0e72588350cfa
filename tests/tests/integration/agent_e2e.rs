//! End to end: control plane, OpenBao, a real agent process, Debian's sshd, real users and real
//! `ssh` logins.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::{Deployment, KeyFile, Sshd, eventually};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn keys_reach_the_host_and_every_operation_takes_effect_in_sshd() {
    let d = Deployment::start(KeyAlgorithm::Rsa4096).await;

    // Both files written, owned by their users, 0600 in a 0700 .ssh.
    for user in [&d.admin, &d.user] {
        let meta = std::fs::symlink_metadata(user.authorized_keys()).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.uid(), user.uid, "{}", user.name);
        assert_eq!(meta.mode() & 0o777, 0o600);
        let ssh = std::fs::metadata(user.home.join(".ssh")).unwrap();
        assert_eq!(ssh.mode() & 0o777, 0o700);
        assert_eq!(ssh.uid(), user.uid);
    }

    // The tenant's downloaded key logs in as the tenant user; the admin key from Vault as admin.
    let tenant_key = d.download().await;
    let (ok, who) = d
        .sshd
        .login_async(&tenant_key.path, &d.user.name, "id -un")
        .await;
    assert!(ok, "tenant login failed; sshd log:\n{}", d.sshd.log_text());
    assert_eq!(who, d.user.name.as_str());
    let admin_key = d.admin_key_from_vault().await;
    assert!(
        d.sshd
            .login_async(&admin_key.path, &d.admin.name, "true")
            .await
            .0
    );
    // Keys are not interchangeable between the users.
    assert!(
        !d.sshd
            .login_async(&tenant_key.path, &d.admin.name, "true")
            .await
            .0
    );
    assert!(
        !d.sshd
            .login_async(&admin_key.path, &d.user.name, "true")
            .await
            .0
    );

    // The host reported its host keys; the tenant sees them to verify the first connection.
    let creds =
        d.cp.tenant_call(&d.tenant_token, Method::GET, "")
            .await
            .json();
    let host_pub =
        std::fs::read_to_string(d.sshd.host_key_dir.join("ssh_host_ed25519_key.pub")).unwrap();
    let host_fp = keyward_common::keys::public_key_fingerprint(&host_pub).unwrap();
    assert_eq!(creds["hostKeyFingerprints"][0], host_fp.as_str(), "{creds}");
    let known = creds["knownHosts"][0].as_str().unwrap();
    assert!(
        known.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", d.sshd.port)),
        "{known}"
    );

    // Rotate: the new key works, and the old one still does during its grace period.
    d.tenant_op("/rotate").await;
    d.agent.wait_in_sync(&d.cp).await;
    let rotated_key = d.download().await;
    assert!(d.tenant_login(&rotated_key).await, "new key refused");
    assert!(
        d.tenant_login(&tenant_key).await,
        "old key refused during its grace period"
    );
    let file = std::fs::read_to_string(d.user.authorized_keys()).unwrap();
    assert_eq!(file.matches("expiry-time=\"").count(), 1, "{file}");

    // Regenerate: the new key works; the previous ones no longer do.
    d.tenant_op("/regenerate").await;
    d.agent.wait_in_sync(&d.cp).await;
    let regenerated_key = d.download().await;
    assert!(d.tenant_login(&regenerated_key).await);
    assert!(
        !d.tenant_login(&rotated_key).await,
        "regenerate must end the old key at once"
    );
    assert!(!d.tenant_login(&tenant_key).await);

    // Revoke: an open session ends, and no login works.
    let mut session = d
        .sshd
        .open_session_async(&regenerated_key.path, &d.user.name)
        .await;
    d.tenant_op("/revoke").await;
    Sshd::wait_session_end(&mut session, Duration::from_secs(10)).await;
    d.agent.wait_in_sync(&d.cp).await;
    assert!(
        !d.tenant_login(&regenerated_key).await,
        "a revoked key logged in"
    );
    // The admin key is untouched by the tenant's revoke.
    assert!(
        d.sshd
            .login_async(&admin_key.path, &d.admin.name, "true")
            .await
            .0
    );

    let view = d.agent.view(&d.cp).await;
    assert_eq!(view["connected"], true);
    assert!(view["agentVersion"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(view["lastError"].is_null(), "{view}");
}

#[tokio::test]
async fn outside_edits_are_repaired_and_reported() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let path = d.admin.authorized_keys();
    let desired = std::fs::read_to_string(&path).unwrap();
    let intruder =
        keyward_common::GeneratedKey::generate(keyward_common::KeyAlgorithm::Ed25519, "intruder")
            .unwrap();

    // Someone appends a key to the admin user's (exclusive) file.
    let mut edited = desired.clone();
    edited.push_str(intruder.public_openssh());
    edited.push('\n');
    std::fs::write(&path, &edited).unwrap();
    eventually(
        "the admin file to be repaired",
        Duration::from_secs(5),
        || async { (std::fs::read_to_string(&path).ok()? == desired).then_some(()) },
    )
    .await;
    // Someone deletes the tenant user's .ssh altogether.
    let user_file = d.user.authorized_keys();
    let user_desired = std::fs::read_to_string(&user_file).unwrap();
    std::fs::remove_dir_all(d.user.home.join(".ssh")).unwrap();
    eventually(
        "the tenant file to be restored",
        Duration::from_secs(5),
        || async { (std::fs::read_to_string(&user_file).ok()? == user_desired).then_some(()) },
    )
    .await;

    let drift = eventually(
        "the drift to be reported",
        Duration::from_secs(5),
        || async {
            let view = d.agent.view(&d.cp).await;
            let drift = view["drift"].as_array()?.clone();
            (drift.len() >= 2).then_some(drift)
        },
    )
    .await;
    let added: Vec<&str> = drift
        .iter()
        .filter(|e| e["user"] == d.admin.name.as_str())
        .flat_map(|e| {
            e["added"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f.as_str())
        })
        .collect();
    assert!(
        added.contains(&intruder.fingerprint().as_str()),
        "{drift:?}"
    );
}

#[tokio::test]
async fn the_agent_enforces_its_cache_without_the_control_plane_and_converges_after() {
    let mut d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let path = d.user.authorized_keys();
    let desired = std::fs::read_to_string(&path).unwrap();

    // The control plane goes away; the agent is killed; the file is damaged meanwhile.
    d.cp.stop().await;
    d.agent.kill().await;
    std::fs::write(&path, "").unwrap();
    d.agent.start();
    eventually(
        "the cached state to be enforced",
        Duration::from_secs(10),
        || async { (std::fs::read_to_string(&path).ok()? == desired).then_some(()) },
    )
    .await;

    // The control plane comes back; a change made now reaches the host.
    d.cp.restart().await;
    d.tenant_op("/regenerate").await;
    let key = d.download().await;
    eventually("the new key to work", Duration::from_secs(40), || async {
        d.tenant_login(&key).await.then_some(())
    })
    .await;
    d.agent.wait_in_sync(&d.cp).await;
}

#[tokio::test]
async fn a_revoked_host_is_cut_off_and_its_keys_stay_in_place() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let path = d.user.authorized_keys();
    let desired = std::fs::read_to_string(&path).unwrap();
    let revoked =
        d.cp.admin_post(
            &format!("/api/v1/admin/hosts/{}/revoke", d.agent.host_id),
            json!({}),
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["status"], "revoked");
    eventually("the stream to be cut", Duration::from_secs(5), || async {
        (d.agent.view(&d.cp).await["connected"] == false).then_some(())
    })
    .await;
    // Changes no longer reach it, and it cannot reconnect.
    d.tenant_op("/rotate").await;
    let view = d.agent.view(&d.cp).await;
    assert_eq!(view["connected"], false);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        desired,
        "the host keeps its last state"
    );
    let perms = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(perms, 0o600);
}

#[tokio::test]
async fn every_login_reaches_the_control_plane_attributed_to_its_key() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let key = d.download().await;
    let fingerprint =
        d.cp.tenant_call(&d.tenant_token, Method::GET, "")
            .await
            .json()["keyFingerprint"]
            .as_str()
            .unwrap()
            .to_owned();
    assert!(
        d.tenant_login(&key).await,
        "sshd log:\n{}",
        d.sshd.log_text()
    );
    // A key keyward never issued is refused, and the attempt is recorded too.
    let stranger =
        keyward_common::GeneratedKey::generate(keyward_common::KeyAlgorithm::Ed25519, "x").unwrap();
    let stranger_file = KeyFile::write(stranger.private_openssh());
    assert!(!d.tenant_login(&stranger_file).await);

    let path = format!(
        "/api/v1/admin/audit/logins?tenantId={}&user={}",
        d.tenant, d.user.name
    );
    let events = eventually(
        "the logins at the control plane",
        Duration::from_secs(10),
        || async {
            let page = d.cp.admin_get(&path).await.json();
            let events = page["events"].as_array()?.clone();
            let accepted = events.iter().any(|e| e["outcome"] == "accepted");
            let failed = events.iter().any(|e| e["outcome"] == "failed");
            (accepted && failed).then_some(events)
        },
    )
    .await;
    let accepted = events.iter().find(|e| e["outcome"] == "accepted").unwrap();
    assert_eq!(accepted["fingerprint"], fingerprint.as_str());
    assert_eq!(accepted["keyKind"], "tenant");
    assert_eq!(accepted["keyGeneration"], 1);
    assert_eq!(accepted["sourceIp"], "127.0.0.1");
    assert_eq!(accepted["hostId"], d.agent.host_id.as_str());
    let failed = events.iter().find(|e| e["outcome"] == "failed").unwrap();
    assert_eq!(failed["fingerprint"], stranger.fingerprint().as_str());
    assert_eq!(failed["keyKind"], "unmanaged");

    // The tenant sees its own logins.
    let own =
        d.cp.request(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-logins",
            Some(&d.tenant_token),
            None,
        )
        .await
        .json();
    assert!(
        own["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["fingerprint"] == fingerprint.as_str())
    );
}

#[tokio::test]
async fn a_login_line_forged_through_key_exchange_is_stored_unverified() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    let key = d.download().await;
    let fingerprint =
        d.cp.tenant_call(&d.tenant_token, Method::GET, "")
            .await
            .json()["keyFingerprint"]
            .as_str()
            .unwrap()
            .to_owned();
    let logins = format!("/api/v1/admin/audit/logins?tenantId={}", d.tenant);

    // A genuine session that stays open: its login is verified, and is the host's last login.
    let mut session = d.sshd.open_session_async(&key.path, &d.user.name).await;
    let genuine = eventually(
        "the genuine login at the control plane",
        Duration::from_secs(10),
        || async {
            let page = d.cp.admin_get(&logins).await.json();
            page["events"]
                .as_array()?
                .iter()
                .find(|e| e["outcome"] == "accepted" && e["fingerprint"] == fingerprint.as_str())
                .cloned()
        },
    )
    .await;
    assert_eq!(genuine["verified"], true, "{genuine}");
    assert_eq!(genuine["user"], d.user.name.as_str());
    // The forged line is read at a later second than the genuine one.
    let genuine_at = chrono::DateTime::parse_from_rfc3339(genuine["at"].as_str().unwrap()).unwrap();
    eventually("the next second", Duration::from_secs(3), || async {
        (chrono::Utc::now() > genuine_at + chrono::Duration::seconds(1)).then_some(())
    })
    .await;

    // The attack: a client that never authenticates makes sshd log a login of the admin user.
    let forged = format!(
        "Accepted publickey for {} from 203.0.113.7 port 4242 ssh2: ED25519 {fingerprint}",
        d.admin.name
    );
    d.sshd.inject_kex_line_async(&forged).await;
    assert!(
        d.sshd.log_text().lines().any(|l| l.trim_end() == forged),
        "sshd did not write the forged line:\n{}",
        d.sshd.log_text()
    );
    let stored = eventually(
        "the forged login at the control plane",
        Duration::from_secs(10),
        || async {
            let page = d.cp.admin_get(&logins).await.json();
            page["events"]
                .as_array()?
                .iter()
                .find(|e| e["sourceIp"] == "203.0.113.7")
                .cloned()
        },
    )
    .await;
    assert_eq!(stored["outcome"], "accepted");
    assert_eq!(stored["user"], d.admin.name.as_str());
    assert_eq!(
        stored["verified"], false,
        "stored as a verified login: {stored}"
    );
    // The tenant sees it as unverified too.
    let own =
        d.cp.request(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-logins",
            Some(&d.tenant_token),
            None,
        )
        .await
        .json();
    assert!(
        own["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["sourceIp"] == "203.0.113.7")
            .all(|e| e["verified"] == false),
        "{own}"
    );
    // The host's last login is still the genuine one.
    let hosts = d.cp.admin_get("/api/v1/admin/hosts").await.json();
    let host = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hostId"] == d.agent.host_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(host["lastLoginUser"], d.user.name.as_str(), "{host}");
    assert_eq!(host["lastLogin"], genuine["at"], "{host}");
    let _ = session.start_kill();
}
