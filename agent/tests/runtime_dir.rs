//! The runtime with the real writer and watcher ([`DirApplier`] writes homes under a temp
//! directory as the current user): a state reaches the files, and outside edits are repaired
//! and reported as drift.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod runtime_support;

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use keyward_agent::apply::DirApplier;
use keyward_agent::watch::watch_homes;
use keyward_agent::{AgentStatus, RuntimeDeps};
use keyward_common::UnixUser;
use keyward_common::keys::{GeneratedKey, KeyAlgorithm};
use keyward_common::proto::agent_message::Msg;
use keyward_common::proto::{DesiredState, Key, KeyKind, ManagedUser, Mode};
use runtime_support::*;
use tokio::sync::{oneshot, watch};

fn desired(generation: u64, key: &GeneratedKey) -> DesiredState {
    let user = |name: &str, kind: KeyKind| ManagedUser {
        user: name.into(),
        mode: Mode::Unspecified as i32,
        keys: vec![Key {
            kind: kind as i32,
            generation: 1,
            public_key: key.public_openssh().into(),
            fingerprint: key.fingerprint().to_string(),
            expires_at: String::new(),
            verify_required: false,
        }],
        denied_fingerprints: vec![],
        session_epoch: 0,
        revoked: false,
        principals: vec![],
        revoked_certificate_ids: vec![],
        jump_principals: vec![],
        recording: None,
    };
    DesiredState {
        host_id: HOST_ID.into(),
        generation,
        issued_at: "2026-01-01T00:00:00Z".into(),
        users: vec![
            user("kwadmin", KeyKind::Admin),
            user("tenant", KeyKind::Tenant),
        ],
        sshd: None,
    }
}

/// Runs the agent in-process until `stopped` fires.
fn spawn_agent(
    enrolled: &Enrolled,
    deps: RuntimeDeps,
    stopped: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Result<(), keyward_agent::RuntimeError>> {
    tokio::spawn(keyward_agent::run_with(
        enrolled.config(),
        deps,
        async move {
            let _ = stopped.await;
        },
    ))
}

#[tokio::test]
async fn states_reach_the_files_and_outside_edits_are_repaired_and_reported() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let homes = tempfile::tempdir().unwrap();
    let applier = DirApplier::new(homes.path());
    let users: Vec<UnixUser> = vec!["kwadmin".parse().unwrap(), "tenant".parse().unwrap()];
    for u in &users {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(applier.home(u))
            .unwrap();
    }
    let (guard, events) = watch_homes(users.iter().map(|u| (u.clone(), applier.home(u))).collect());
    let file = |u: &UnixUser| applier.home(u).join(".ssh/authorized_keys");

    let (status_tx, mut status) = watch::channel(AgentStatus::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let deps = RuntimeDeps {
        applier: Arc::new(applier.clone()),
        watch_events: Some(events),
        notifier: None,
        status: Some(status_tx),
    };
    let task = spawn_agent(&enrolled, deps, stopped);

    let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "k").unwrap();
    let fp = key.fingerprint().to_string();
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));
    s.send_state(enrolled.sign(&desired(1, &key)));
    let Msg::Applied(applied) = s.recv().await else {
        panic!("expected Applied")
    };
    for r in &applied.users {
        assert_eq!(r.error, "", "{}", r.user);
        assert_eq!(r.fingerprints, vec![fp.clone()]);
        assert!(r.changed);
    }
    let body = key.public_openssh().rsplit_once(' ').unwrap().0.to_owned();
    for u in &users {
        let text = std::fs::read_to_string(file(u)).unwrap();
        assert!(text.contains(&body), "{text}");
    }
    within("ready", status.wait_for(|s| s.ready)).await.unwrap();

    // Someone adds their own key to the admin user's (exclusive) file.
    let intruder = GeneratedKey::generate(KeyAlgorithm::Ed25519, "intruder").unwrap();
    let admin: UnixUser = "kwadmin".parse().unwrap();
    let mut text = std::fs::read_to_string(file(&admin)).unwrap();
    text.push_str(intruder.public_openssh());
    text.push('\n');
    std::fs::write(file(&admin), text).unwrap();
    let Msg::Drift(drift) = s.recv().await else {
        panic!("expected a drift report (the agent's own writes are not drift)")
    };
    assert_eq!(drift.user, "kwadmin");
    assert_eq!(drift.added, vec![intruder.fingerprint().to_string()]);
    assert!(drift.removed.is_empty());
    let repaired = std::fs::read_to_string(file(&admin)).unwrap();
    assert!(!repaired.contains("intruder"));
    assert!(repaired.contains(&body));

    // The tenant's file is deleted.
    let tenant: UnixUser = "tenant".parse().unwrap();
    std::fs::remove_file(file(&tenant)).unwrap();
    let Msg::Drift(drift) = s.recv().await else {
        panic!("expected a drift report")
    };
    assert_eq!(drift.user, "tenant");
    assert_eq!(drift.removed, vec![fp.clone()]);
    assert!(
        std::fs::read_to_string(file(&tenant))
            .unwrap()
            .contains(&body)
    );

    let _ = stop.send(());
    within("the agent to stop", task).await.unwrap().unwrap();
    drop(guard);
}

#[tokio::test]
async fn the_states_sshd_files_are_written_retried_after_a_failure_and_a_bad_set_is_refused_whole()
{
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let homes = tempfile::tempdir().unwrap();
    let applier = DirApplier::new(homes.path());
    let (stop, stopped) = oneshot::channel::<()>();
    let deps = RuntimeDeps {
        applier: Arc::new(applier.clone()),
        watch_events: None,
        notifier: None,
        status: None,
    };
    let task = spawn_agent(&enrolled, deps, stopped);
    let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "k").unwrap();
    let ca = GeneratedKey::generate(KeyAlgorithm::Ed25519, "ca").unwrap();
    let with_sshd = |generation: u64, krl: &[u8]| {
        let mut state = desired(generation, &key);
        state.users[0].principals = vec!["keyward:t1:admin".into()];
        state.sshd = Some(keyward_common::proto::SshdFiles {
            user_ca_keys: vec![ca.public_openssh().into()],
            revoked_keys: krl.to_vec(),
        });
        state
    };
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));

    // Something that is no directory where the files go: the write fails, is reported, and is
    // retried until it works.
    let dir = applier.sshd_dir();
    std::fs::create_dir_all(homes.path()).unwrap();
    std::fs::write(&dir, b"in the way").unwrap();
    s.send_state(enrolled.sign(&with_sshd(1, b"SSHKRL\n\0first")));
    let Msg::Applied(applied) = s.recv().await else {
        panic!("expected Applied")
    };
    let sshd = applied.sshd.expect("the sshd files' outcome");
    assert!(sshd.error.contains("not a directory"), "{}", sshd.error);
    std::fs::remove_file(&dir).unwrap();
    let Msg::Applied(applied) = s.recv().await else {
        panic!("expected the retry's Applied")
    };
    let sshd = applied.sshd.expect("the sshd files' outcome");
    assert_eq!(sshd.error, "");
    assert!(sshd.changed);
    assert_eq!(
        std::fs::read(dir.join("revoked_keys")).unwrap(),
        b"SSHKRL\n\0first"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("principals/kwadmin")).unwrap(),
        "keyward:t1:admin\n"
    );
    assert_eq!(std::fs::read(dir.join("principals/tenant")).unwrap(), b"");
    let ca_line = ca.public_openssh().rsplit_once(' ').unwrap().0;
    assert_eq!(
        std::fs::read_to_string(dir.join("trusted_user_ca_keys")).unwrap(),
        format!("{ca_line}\n")
    );

    // Not a KRL: sshd would refuse every key. Refused whole; the files stay; the users' keys
    // are still applied.
    s.send_state(enrolled.sign(&with_sshd(2, b"garbage")));
    let Msg::Applied(applied) = s.recv().await else {
        panic!("expected Applied")
    };
    let sshd = applied.sshd.expect("the sshd files' outcome");
    assert!(sshd.error.contains("not an OpenSSH KRL"), "{}", sshd.error);
    assert!(applied.users.iter().all(|u| u.error.is_empty()));
    assert_eq!(
        std::fs::read(dir.join("revoked_keys")).unwrap(),
        b"SSHKRL\n\0first"
    );

    let _ = stop.send(());
    within("the agent to stop", task).await.unwrap().unwrap();
}
