//! `end_sessions` and the writer against a real sshd on a loopback port, with real users: the
//! victim's open session ends within a second, a bystander's session and the listening sshd are
//! untouched; and sshd honours the `expiry-time` the writer renders.

// `allow-unwrap-in-tests` covers #[test] fns only, not the helpers beside them.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use keyward_agent::config::SshdTrust;
use keyward_agent::sessions::{self, Role};
use keyward_agent::writer;
use keyward_common::authorized_keys::Mode;
use keyward_common::keys::KeyKind;
use keyward_test_support::sshd::write_private_key;
use keyward_test_support::{Proc, Sshd, TestUser, homes_dir, wait_for};
use support::managed_key;

#[test]
fn end_sessions_ends_the_users_session_within_a_second_and_nothing_else() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let victim = TestUser::create_in("sv", homes.path());
    let bystander = TestUser::create_in("sb", homes.path());
    let sshd = Sshd::start_with_log_level(work.path(), "DEBUG1");

    let mut clients = Vec::new();
    for user in [&victim, &bystander] {
        let (key, managed) = managed_key(KeyKind::Tenant, 1);
        writer::apply(&user.name, Mode::Exclusive, &[managed], &[]).unwrap();
        let key_path = write_private_key(work.path(), user.name.as_str(), key.private_openssh());
        let client = sshd
            .ssh(&key_path, &user.name, &["sleep", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        clients.push(Proc(client));
    }
    for (user, client) in [&victim, &bystander].into_iter().zip(&mut clients) {
        wait_for(Duration::from_secs(15), "the ssh session to be up", || {
            assert!(
                client.running(),
                "ssh exited; sshd log:\n{}",
                sshd.log_text()
            );
            let found = sessions::find_sessions(&user.name, &SshdTrust::default()).unwrap();
            let connected = found.iter().any(|p| p.role == Some(Role::Connection));
            let command = found.iter().any(|p| p.role.is_none());
            (connected && command).then_some(())
        });
    }
    let victim_found = sessions::find_sessions(&victim.name, &SshdTrust::default()).unwrap();
    let monitor = victim_found
        .iter()
        .find(|p| p.role == Some(Role::Monitor))
        .expect("a [priv] monitor process");
    assert_eq!(monitor.uid, 0);

    let signalled = sessions::end_sessions(&victim.name, &SshdTrust::default()).unwrap();
    assert!(signalled.contains(&monitor.pid), "{signalled:?}");
    let bystander_pids: Vec<i32> = sessions::find_sessions(&bystander.name, &SshdTrust::default())
        .unwrap()
        .iter()
        .map(|p| p.pid)
        .collect();
    assert!(
        signalled.iter().all(|pid| !bystander_pids.contains(pid)),
        "signalled the bystander: {signalled:?} vs {bystander_pids:?}"
    );

    let (victim_client, bystander_client) = clients.split_at_mut(1);
    wait_for(Duration::from_secs(1), "the victim's ssh to end", || {
        (!victim_client[0].running()).then_some(())
    });
    wait_for(
        Duration::from_secs(1),
        "the victim's session processes to end",
        || {
            sessions::find_sessions(&victim.name, &SshdTrust::default())
                .unwrap()
                .is_empty()
                .then_some(())
        },
    );
    assert!(
        bystander_client[0].running(),
        "the bystander's session ended too"
    );
    assert!(
        !sessions::find_sessions(&bystander.name, &SshdTrust::default())
            .unwrap()
            .is_empty()
    );
    let mut sshd = sshd;
    assert!(sshd.running(), "the listening sshd was killed");
    assert!(TcpStream::connect(("127.0.0.1", sshd.port)).is_ok());

    // Leave nothing of the bystander running before userdel.
    sessions::end_sessions(&bystander.name, &SshdTrust::default()).unwrap();
    wait_for(Duration::from_secs(1), "the bystander's ssh to end", || {
        (!bystander_client[0].running()).then_some(())
    });
}

#[test]
fn sshd_accepts_a_grace_key_and_refuses_an_expired_one() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("se", homes.path());
    let sshd = Sshd::start_with_log_level(work.path(), "DEBUG1");

    let (grace, mut grace_managed) = managed_key(KeyKind::Tenant, 2);
    grace_managed.expires_at = Some(Utc::now() + chrono::Duration::hours(1));
    let (expired, mut expired_managed) = managed_key(KeyKind::Tenant, 1);
    expired_managed.expires_at = Some(Utc::now() - chrono::Duration::minutes(2));
    writer::apply(
        &user.name,
        Mode::Exclusive,
        &[grace_managed, expired_managed],
        &[],
    )
    .unwrap();
    let written = fs::read_to_string(user.authorized_keys()).unwrap();
    assert_eq!(written.matches("expiry-time=\"").count(), 2, "{written}");

    let grace_path = write_private_key(work.path(), "grace", grace.private_openssh());
    let expired_path = write_private_key(work.path(), "expired", expired.private_openssh());
    let out = sshd
        .ssh(&grace_path, &user.name, &["echo", "in"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"in\n",
        "the grace key was refused: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log_text()
    );
    let out = sshd
        .ssh(&expired_path, &user.name, &["echo", "in"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the expired key was accepted");
    assert!(
        sshd.log_text().contains("entry expired at"),
        "sshd did not say why: {}",
        sshd.log_text()
    );
}
