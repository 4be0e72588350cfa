//! Revocation, exactly, with a real sshd, real users and real sessions: one user, two sessions
//! opened with two keys; revoking one key (a state that denies it and raises the session epoch)
//! ends that key's session with its processes and leaves the other running. The same with two
//! certificates (signed by ssh-keygen, trusted by sshd through the agent's certificate files):
//! a raised epoch alone ends neither, revoking one key id ends exactly its session, and the
//! login events name each certificate. A session the log does not attribute is ended (the
//! fallback).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod cert_support;
mod logins_support;
mod runtime_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cert_support::{RunningAgent, UserCa, next};
use keyward_agent::config::LoginsConfig;
use keyward_agent::config::SshdTrust;
use keyward_agent::procs::ProcSnapshot;
use keyward_agent::sessions::revoke;
use keyward_agent::sessions::{self, SessionTree};
use keyward_agent::writer::{PrincipalLine, SshdFiles, apply_sshd_files};
use keyward_agent::{UserConfig, UserMode};
use keyward_common::keys::GeneratedKey;
use keyward_common::proto::agent_message::Msg;
use keyward_common::proto::{
    ControlMessage, DesiredState, Key, KeyKind, LoginAck, LoginEvent, LoginOutcome, ManagedUser,
    Mode, control_message,
};
use keyward_test_support::{Proc, Sshd, TestUser, homes_dir, wait_for};
use logins_support::{audit, authorize, client_key, read_all};
use runtime_support::{Enrolled, Lifetime, Pki, TestHub, WAIT, within};

/// The bound on a revoked session's end.
const ENDS_WITHIN: Duration = Duration::from_secs(2);

fn desired(
    generation: u64,
    user: &TestUser,
    keys: &[&GeneratedKey],
    denied: &[&GeneratedKey],
    epoch: u64,
) -> DesiredState {
    DesiredState {
        host_id: runtime_support::HOST_ID.into(),
        generation,
        issued_at: "2026-01-01T00:00:00Z".into(),
        users: vec![ManagedUser {
            user: user.name.to_string(),
            mode: Mode::Preserve as i32,
            keys: keys
                .iter()
                .map(|k| Key {
                    kind: KeyKind::Tenant as i32,
                    generation: 1,
                    public_key: k.public_openssh().to_owned(),
                    fingerprint: k.fingerprint().to_string(),
                    expires_at: String::new(),
                    verify_required: false,
                })
                .collect(),
            denied_fingerprints: denied.iter().map(|k| k.fingerprint().to_string()).collect(),
            session_epoch: epoch,
            revoked: false,
            principals: vec![],
            revoked_certificate_ids: vec![],
            jump_principals: vec![],
            recording: None,
        }],
        sshd: None,
    }
}

/// Whether every process of `tree` is gone: exited (a zombie not yet reaped counts), or its pid
/// now belongs to another process.
fn gone(tree: &SessionTree) -> bool {
    tree.processes().all(|p| {
        std::fs::read_to_string(format!("/proc/{}/status", p.pid))
            .map(|status| {
                status.contains("State:\tZ") || !status.contains(&format!("PPid:\t{}\n", p.ppid))
            })
            .unwrap_or(true)
    })
}

/// The tree holding the connection from 127.0.0.1:`port`.
fn tree_of(trees: &[SessionTree], port: u32) -> SessionTree {
    let source = format!("127.0.0.1:{port}").parse().unwrap();
    let snapshot = ProcSnapshot::take(
        std::path::Path::new("/proc"),
        &SshdTrust::default(),
        &[
            0,
            trees
                .iter()
                .flat_map(|t| t.processes())
                .map(|p| p.uid)
                .max()
                .unwrap_or(0),
        ],
    )
    .unwrap();
    let holders = snapshot.holders(source);
    assert!(
        !holders.is_empty(),
        "no process holds the connection from {source}"
    );
    trees
        .iter()
        .find(|t| holders.iter().any(|&pid| t.contains(pid)))
        .unwrap_or_else(|| panic!("no session tree holds {source}: {holders:?} vs {trees:?}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_only_the_session_it_opened() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("lv", homes.path());
    let name = user.name.to_string();
    let sshd = Sshd::start(work.path());
    let (revoked, revoked_path) = client_key(work.path(), "revoked");
    let (kept, kept_path) = client_key(work.path(), "kept");

    // An in-process agent with the real writer and session killer, reading sshd's log.
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let mut config = enrolled.config();
    config.users = vec![UserConfig {
        name: user.name.clone(),
        mode: UserMode::Preserve,
    }];
    config.logins = LoginsConfig::file(&sshd.log);
    let (stop, task) = runtime_support::spawn_system_agent(config);
    let mut s = hub.session().await;
    let mut logins: Vec<LoginEvent> = Vec::new();
    assert!(matches!(next(&mut s, &mut logins).await, Msg::Hello(_)));

    // Both keys are the user's; one session with each.
    s.send_state(enrolled.sign(&desired(1, &user, &[&revoked, &kept], &[], 0)));
    let Msg::Applied(applied) = next(&mut s, &mut logins).await else {
        panic!("expected Applied")
    };
    assert_eq!(applied.users[0].error, "");
    let mut revoked_session: Proc =
        tokio::task::block_in_place(|| sshd.open_session(&revoked_path, &name));
    let mut kept_session: Proc =
        tokio::task::block_in_place(|| sshd.open_session(&kept_path, &name));

    // The control plane hears both logins, each with its key's fingerprint.
    let accepted_port = |logins: &[LoginEvent], key: &GeneratedKey| {
        logins
            .iter()
            .find(|e| {
                e.outcome == LoginOutcome::Accepted as i32
                    && e.fingerprint == key.fingerprint().to_string()
            })
            .map(|e| e.source_port)
    };
    while accepted_port(&logins, &revoked).is_none() || accepted_port(&logins, &kept).is_none() {
        let other = tokio::time::timeout(WAIT, s.recv()).await.unwrap();
        let Msg::Logins(batch) = other else {
            panic!("expected login batches, got {other:?}")
        };
        let cursor = batch.events.last().unwrap().cursor;
        logins.extend(batch.events);
        s.to_agent
            .send(Ok(ControlMessage {
                msg: Some(control_message::Msg::LoginAck(LoginAck { cursor })),
            }))
            .unwrap();
    }
    let trees = sessions::find_session_trees(&user.name, &SshdTrust::default()).unwrap();
    assert_eq!(trees.len(), 2, "{trees:?}");
    let revoked_tree = tree_of(&trees, accepted_port(&logins, &revoked).unwrap());
    let kept_tree = tree_of(&trees, accepted_port(&logins, &kept).unwrap());
    assert_ne!(revoked_tree.root.pid, kept_tree.root.pid);
    assert!(
        revoked_tree.below.len() >= 2,
        "the session's own process and its command: {revoked_tree:?}"
    );

    // Revoke: the key is denied and the session epoch goes up.
    s.send_state(enrolled.sign(&desired(2, &user, &[&kept], &[&revoked], 1)));
    let Msg::Applied(applied) = next(&mut s, &mut logins).await else {
        panic!("expected Applied")
    };
    assert_eq!(applied.users[0].error, "");
    assert_eq!(applied.users[0].sessions_ended, 1);
    tokio::task::block_in_place(|| {
        wait_for(ENDS_WITHIN, "the revoked key's ssh client to end", || {
            (!revoked_session.running()).then_some(())
        });
        wait_for(
            ENDS_WITHIN,
            "the revoked session's processes to end",
            || gone(&revoked_tree).then_some(()),
        );
    });
    assert!(kept_session.running(), "the other key's session ended too");
    let left = sessions::find_session_trees(&user.name, &SshdTrust::default()).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].root.pid, kept_tree.root.pid);
    assert!(!gone(&kept_tree), "a process of the kept session is gone");

    let _ = stop.send(());
    within("the agent to stop", task).await.unwrap().unwrap();
    drop(kept_session);
}

#[test]
fn a_session_the_log_does_not_attribute_is_ended() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("lu", homes.path());
    let name = user.name.to_string();
    let sshd = Sshd::start(work.path());
    let (first, first_path) = client_key(work.path(), "first");
    let (second, second_path) = client_key(work.path(), "second");
    authorize(&user, &[&first, &second]);

    let mut known = sshd.open_session(&first_path, &name);
    let mut a = audit(&sshd.log, &work.path().join("state"), 100);
    read_all(&mut a);
    // Opened after the audit last read the log: nothing ties it to a key.
    let mut unknown = sshd.open_session(&second_path, &name);
    let attribution = a.attribution(&name);
    assert_eq!(attribution.sessions.len(), 1);
    // Both keys are valid: only the session nothing verified accounts for ends.
    let valid = [
        first.fingerprint().to_string(),
        second.fingerprint().to_string(),
    ];
    let ended = revoke::end_revoked_sessions(
        &user.name,
        &attribution,
        &revoke::ValidNow::keys_only(valid),
    )
    .unwrap();
    assert_eq!(ended, 1);
    wait_for(ENDS_WITHIN, "the unattributed session to end", || {
        (!unknown.running()).then_some(())
    });
    assert!(
        known.running(),
        "a session opened with a key that is not denied ended"
    );
    assert_eq!(
        sessions::find_session_trees(&user.name, &SshdTrust::default())
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_certificate_ends_only_the_session_it_opened() {
    const PRINCIPAL: &str = "keyward:acme:tenant";
    const ONE: &str = "keyward:acme:tenant:1";
    const TWO: &str = "keyward:acme:tenant:2";
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("lc", homes.path());
    let name = user.name.to_string();
    let sshd = Sshd::start(work.path());
    let ca = UserCa::new();
    let (one, one_path) = client_key(work.path(), "one");
    let (two, two_path) = client_key(work.path(), "two");
    ca.sign(&one, &one_path, ONE, PRINCIPAL, 101);
    ca.sign(&two, &two_path, TWO, PRINCIPAL, 102);
    // sshd trusts the CA for the user's principal, in the files the agent writes from a state.
    apply_sshd_files(
        &sshd.files_dir,
        &SshdFiles {
            user_ca_keys: vec![ca.public()],
            revoked_keys: Vec::new(),
            principals: BTreeMap::from([(
                user.name.clone(),
                vec![PrincipalLine::Plain(PRINCIPAL.parse().unwrap())],
            )]),
        },
    )
    .unwrap();
    let mut agent = RunningAgent::start(&user, &sshd).await;
    // The states carry the same files: the CA, the user's principal, the revoked key ids (the
    // agent keeps a certificate's session only for a CA and a principal of the state).
    let certified = |generation: u64, epoch: u64, revoked: &[&str]| {
        let mut state = desired(generation, &user, &[], &[], epoch);
        state.users[0].principals = vec![PRINCIPAL.into()];
        state.users[0].revoked_certificate_ids = revoked.iter().map(|s| (*s).to_owned()).collect();
        let mut krl = keyward_common::krl::RevocationList::new(generation, 0, "test").unwrap();
        for id in revoked {
            krl.revoke_key_id(None, id).unwrap();
        }
        state.sshd = Some(keyward_common::proto::SshdFiles {
            user_ca_keys: vec![ca.public()],
            revoked_keys: krl.encode(),
        });
        state
    };

    // No key in the user's file: only the certificates log in, one session each.
    assert_eq!(agent.apply(&certified(1, 0, &[])).await.error, "");
    let mut one_session: Proc = tokio::task::block_in_place(|| sshd.open_session(&one_path, &name));
    let mut two_session: Proc = tokio::task::block_in_place(|| sshd.open_session(&two_path, &name));

    // The control plane hears both logins, each naming its certificate and certified key.
    let mut ports = Vec::new();
    for (key_id, key, serial) in [(ONE, &one, 101), (TWO, &two, 102)] {
        let login = agent.accepted(|e| e.certificate_id == key_id).await;
        assert!(login.verified, "{login:?}");
        assert_eq!(login.key_type, "ED25519-CERT");
        assert_eq!(login.fingerprint, key.fingerprint().to_string());
        assert_eq!(
            (login.certificate_serial, login.certificate_ca.as_str()),
            (serial, ca.fingerprint().as_str())
        );
        ports.push(login.source_port);
    }
    let trees = sessions::find_session_trees(&user.name, &SshdTrust::default()).unwrap();
    assert_eq!(trees.len(), 2, "{trees:?}");
    let one_tree = tree_of(&trees, ports[0]);
    let two_tree = tree_of(&trees, ports[1]);
    assert_ne!(one_tree.root.pid, two_tree.root.pid);

    // The epoch rises with no certificate of the user revoked: both sessions stay (a certified
    // key is never in authorized_keys; such sessions all used to end here).
    let raised = agent.apply(&certified(2, 1, &[])).await;
    assert_eq!((raised.error.as_str(), raised.sessions_ended), ("", 0));

    // The user trusts a CA of its own in its own authorized_keys (`cert-authority`, a line the
    // preserve mode keeps) and logs in with a certificate of it, even with a keyward-like key
    // id: when the epoch rises, that session ends; keyward's certificates' stay.
    let own_ca = UserCa::new();
    let (own, own_path) = client_key(work.path(), "own");
    own_ca.sign(&own, &own_path, "keyward:acme:tenant:9", PRINCIPAL, 109);
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(user.authorized_keys())
            .unwrap();
        writeln!(
            file,
            "cert-authority,principals=\"{PRINCIPAL}\" {}",
            own_ca.public()
        )
        .unwrap();
    }
    let mut own_session: Proc = tokio::task::block_in_place(|| sshd.open_session(&own_path, &name));
    agent
        .accepted(|e| e.certificate_id == "keyward:acme:tenant:9")
        .await;
    let foreign = agent.apply(&certified(3, 2, &[])).await;
    assert_eq!((foreign.error.as_str(), foreign.sessions_ended), ("", 1));
    tokio::task::block_in_place(|| {
        wait_for(
            ENDS_WITHIN,
            "the own CA's certificate's ssh client to end",
            || (!own_session.running()).then_some(()),
        );
    });
    assert!(one_session.running() && two_session.running());

    // Revoke the first certificate: its key id is listed and the epoch rises again.
    let revoked = agent.apply(&certified(4, 3, &[ONE])).await;
    assert_eq!((revoked.error.as_str(), revoked.sessions_ended), ("", 1));
    tokio::task::block_in_place(|| {
        wait_for(
            ENDS_WITHIN,
            "the revoked certificate's ssh client to end",
            || (!one_session.running()).then_some(()),
        );
        wait_for(
            ENDS_WITHIN,
            "the revoked certificate's session processes to end",
            || gone(&one_tree).then_some(()),
        );
    });
    assert!(
        two_session.running(),
        "the other certificate's session ended too"
    );
    let left = sessions::find_session_trees(&user.name, &SshdTrust::default()).unwrap();
    assert_eq!(
        left.iter().map(|t| t.root.pid).collect::<Vec<_>>(),
        vec![two_tree.root.pid]
    );
    assert!(!gone(&two_tree), "a process of the kept session is gone");

    agent.stop().await;
    drop(two_session);
}
