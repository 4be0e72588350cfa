//! The test sshd itself: what the agent relies on sshd to do (StrictModes, expiry-time).

use std::os::unix::fs::PermissionsExt;

use keyward_common::{GeneratedKey, KeyAlgorithm};
use keyward_tests::{KeyFile, Sshd, TestUser};

fn install(user: &TestUser, line: &str) {
    let ssh = user.home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(user.authorized_keys(), format!("{line}\n")).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        user.authorized_keys(),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let chown = |p: &std::path::Path| std::os::unix::fs::chown(p, Some(user.uid), None).unwrap();
    chown(&ssh);
    chown(&user.authorized_keys());
}

#[tokio::test]
async fn sshd_honours_keys_strict_modes_and_expiry_time() {
    let sshd = Sshd::start_async().await;
    let user = TestUser::create("h");
    let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "t").unwrap();
    let file = KeyFile::write(key.private_openssh());

    install(&user, key.public_openssh());
    let (ok, out) = sshd.login_async(&file.path, &user.name, "id -un").await;
    assert!(ok, "login failed; sshd log:\n{}", sshd.log_text());
    assert_eq!(out, user.name.as_str());

    // An expiry-time in the past: sshd refuses the key.
    install(
        &user,
        &format!("expiry-time=\"200001010000Z\" {}", key.public_openssh()),
    );
    assert!(!sshd.login_async(&file.path, &user.name, "true").await.0);
    // One in the future: accepted.
    install(
        &user,
        &format!("expiry-time=\"299901010000Z\" {}", key.public_openssh()),
    );
    assert!(sshd.login_async(&file.path, &user.name, "true").await.0);

    // StrictModes: a world-writable home makes sshd ignore the file. (Debian's sshd tolerates a
    // group-writable one when the group is the user's private group; the agent is stricter.)
    std::fs::set_permissions(&user.home, std::fs::Permissions::from_mode(0o757)).unwrap();
    assert!(!sshd.login_async(&file.path, &user.name, "true").await.0);
}
