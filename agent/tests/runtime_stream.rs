//! The agent's stream client end to end against an in-test gRPC hub over mutual TLS 1.3: states
//! verified and answered, forged/replayed/redirected states rejected, session epochs, reconnect,
//! drift reports, certificate renewal, and the cached state enforced before any connection.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod runtime_support;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use keyward_agent::UserMode;
use keyward_agent::sd_notify::Notifier;
use keyward_agent::state_dir::Epochs;
use keyward_common::proto::agent_message::Msg;
use keyward_common::signing::sign_state;
use runtime_support::*;

/// Polls `f` until it holds, at most [`WAIT`].
async fn eventually(what: &str, f: impl Fn() -> bool) {
    within(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn applies(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Apply { .. }))
        .count()
}

fn ended(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::EndSessions { .. }))
        .count()
}

/// A URL where nothing listens.
async fn dead_url() -> (String, std::net::SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (format!("https://{addr}"), addr)
}

#[tokio::test]
async fn signed_states_are_applied_and_bad_ones_rejected() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let mut agent = Agent::start(enrolled.config(), None);
    let mut s = hub.session().await;

    let Msg::Hello(hello) = s.recv().await else {
        panic!("the first message must be Hello")
    };
    assert_eq!(hello.applied_generation, 0);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.host_keys, vec![HOST_KEY.to_owned()]);

    s.send_state(enrolled.sign(&state(5, &[("kwadmin", 0), ("root", 0), ("tenant", 0)])));
    let Msg::Applied(applied) = s.recv().await else {
        panic!("expected Applied")
    };
    assert_eq!(applied.generation, 5);
    let by_user = |u: &str| applied.users.iter().find(|r| r.user == u).unwrap().clone();
    assert_eq!(by_user("kwadmin").error, "");
    assert_eq!(by_user("kwadmin").fingerprints, vec![FP_A.to_owned()]);
    assert!(by_user("kwadmin").changed);
    assert_eq!(by_user("tenant").error, "");
    let root = by_user("root");
    assert!(
        root.error.contains("not in this agent's configuration"),
        "{}",
        root.error
    );
    assert!(root.fingerprints.is_empty());
    // root was never handed to the applier; the configured mode won over the state's.
    assert_eq!(
        agent.fake.calls(),
        vec![
            Call::Apply {
                user: "kwadmin".into(),
                mode: UserMode::Exclusive
            },
            Call::Apply {
                user: "tenant".into(),
                mode: UserMode::Preserve
            },
        ]
    );
    agent
        .wait_status("generation 5 applied", |s| {
            s.applied_generation == 5 && s.ready && s.connected
        })
        .await;
    let cached = enrolled
        .state_dir()
        .load_state(&enrolled.signing.verifying_key(), HOST_ID)
        .unwrap()
        .expect("the applied state is cached");
    assert_eq!(cached.state.generation, 5);

    // Signed by another key.
    let other = SigningKey::generate(&mut rand::rngs::OsRng);
    s.send_state(sign_state(&other, &state(6, &[("kwadmin", 0)])));
    let Msg::Rejected(r) = s.recv().await else {
        panic!("expected StateRejected")
    };
    assert_eq!(r.generation, 6);
    assert!(r.reason.contains("signature"), "{}", r.reason);

    // Replayed: older than the applied generation.
    s.send_state(enrolled.sign(&state(4, &[("kwadmin", 0)])));
    let Msg::Rejected(r) = s.recv().await else {
        panic!("expected StateRejected")
    };
    assert_eq!(r.generation, 4);
    assert!(r.reason.contains("older"), "{}", r.reason);

    // For another host.
    let mut elsewhere = state(7, &[("kwadmin", 0)]);
    elsewhere.host_id = "host-0002".into();
    s.send_state(enrolled.sign(&elsewhere));
    let Msg::Rejected(r) = s.recv().await else {
        panic!("expected StateRejected")
    };
    assert!(r.reason.contains("host-0002"), "{}", r.reason);

    // Unsigned.
    let mut unsigned = enrolled.sign(&state(8, &[("kwadmin", 0)]));
    unsigned.signature.clear();
    s.send_state(unsigned);
    let Msg::Rejected(r) = s.recv().await else {
        panic!("expected StateRejected")
    };
    assert_eq!(r.generation, 8);

    assert_eq!(
        applies(&agent.fake.calls()),
        2,
        "nothing rejected was applied"
    );
    assert_eq!(agent.status.borrow().applied_generation, 5);
    agent.stop().await;
}

#[tokio::test]
async fn sessions_end_once_per_epoch_and_epochs_survive_a_restart() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let agent = Agent::start(enrolled.config(), None);
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));

    s.send_state(enrolled.sign(&state(1, &[("tenant", 0)])));
    let Msg::Applied(a) = s.recv().await else {
        panic!()
    };
    assert_eq!(a.users[0].sessions_ended, 0);
    assert_eq!(ended(&agent.fake.calls()), 0);

    s.send_state(enrolled.sign(&state(2, &[("tenant", 3)])));
    let Msg::Applied(a) = s.recv().await else {
        panic!()
    };
    assert_eq!(a.generation, 2);
    assert_eq!(a.users[0].sessions_ended, 2);
    assert_eq!(ended(&agent.fake.calls()), 1);

    // The control plane re-sends until it sees Applied: the same epoch ends nothing again.
    s.send_state(enrolled.sign(&state(2, &[("tenant", 3)])));
    let Msg::Applied(a) = s.recv().await else {
        panic!()
    };
    assert_eq!(a.users[0].sessions_ended, 0);
    assert_eq!(ended(&agent.fake.calls()), 1);
    agent.stop().await;

    // Restarted: the cached state (epoch 3) is enforced, and no session is ended for it.
    let mut agent = Agent::start(enrolled.config(), None);
    agent
        .wait_status("the cache enforced", |s| {
            s.applied_generation == 2 && s.ready
        })
        .await;
    let mut s = hub.session().await;
    let Msg::Hello(hello) = s.recv().await else {
        panic!()
    };
    assert_eq!(hello.applied_generation, 2);
    assert_eq!(hello.observed.len(), 1);
    assert_eq!(hello.observed[0].user, "tenant");
    assert_eq!(hello.observed[0].fingerprints, vec![FP_A.to_owned()]);
    assert_eq!(applies(&agent.fake.calls()), 1);
    assert_eq!(ended(&agent.fake.calls()), 0);
    agent.stop().await;
}

#[tokio::test]
async fn a_newly_revoked_certificate_checks_sessions_without_waiting_for_the_epoch() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let agent = Agent::start(enrolled.config(), None);
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));
    let revoking = |generation, ids: &[&str]| {
        let mut state = state(generation, &[("tenant", 0)]);
        state.users[0].revoked_certificate_ids = ids.iter().map(|id| (*id).to_owned()).collect();
        enrolled.sign(&state)
    };

    s.send_state(revoking(1, &[]));
    let Msg::Applied(a) = s.recv().await else {
        panic!()
    };
    assert_eq!(a.users[0].sessions_ended, 0);
    // A key id revoked, the epoch unchanged: the sessions are checked.
    s.send_state(revoking(2, &["keyward:acme:tenant:1"]));
    let Msg::Applied(a) = s.recv().await else {
        panic!()
    };
    assert_eq!(a.users[0].sessions_ended, 2);
    assert_eq!(ended(&agent.fake.calls()), 1);
    // The same list again, or a shorter one (a certificate past its validity): nothing to check.
    for (generation, ids) in [(3, &["keyward:acme:tenant:1"][..]), (4, &[][..])] {
        s.send_state(revoking(generation, ids));
        let Msg::Applied(a) = s.recv().await else {
            panic!()
        };
        assert_eq!(a.users[0].sessions_ended, 0, "generation {generation}");
    }
    assert_eq!(ended(&agent.fake.calls()), 1);
    agent.stop().await;
}

#[tokio::test]
async fn the_agent_reconnects_and_reports_what_it_holds() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let mut agent = Agent::start(enrolled.config(), None);
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));
    s.send_state(enrolled.sign(&state(9, &[("kwadmin", 0)])));
    assert!(matches!(s.recv().await, Msg::Applied(_)));

    // The control plane ends the stream (a restart, a replica going away).
    // (The new session itself is the proof that the end was noticed: waiting for
    // `connected == false` could miss a reconnect faster than the test task.)
    drop(s);
    let mut s = hub.session().await;
    let Msg::Hello(hello) = s.recv().await else {
        panic!("a new session starts with Hello")
    };
    assert_eq!(hello.applied_generation, 9);
    assert_eq!(hello.observed[0].user, "kwadmin");
    agent.wait_status("reconnected", |s| s.connected).await;
    agent.stop().await;
}

#[tokio::test]
async fn drift_is_repaired_and_reported_or_queued_until_connected() {
    let pki = Pki::new();
    let (url, addr) = dead_url().await;
    let enrolled = Enrolled::new(&pki, &url, Lifetime::Fresh);
    let signed = enrolled.sign(&state(3, &[("kwadmin", 0), ("tenant", 0)]));
    enrolled
        .state_dir()
        .store_state(&signed, &Epochs::new())
        .unwrap();
    let mut agent = Agent::start(enrolled.config(), None);
    agent
        .wait_status("the cache enforced", |s| {
            s.ready && s.applied_generation == 3
        })
        .await;

    // An outside edit while the control plane is away: repaired now, reported later.
    *agent.fake.drift.lock().unwrap() = Some((vec!["SHA256:stray".into()], vec![]));
    agent
        .watch_tx
        .send("kwadmin".parse().unwrap())
        .await
        .unwrap();
    let fake = agent.fake.clone();
    eventually("the repair", || applies(&fake.calls()) == 3).await;
    assert_eq!(
        fake.calls()
            .into_iter()
            .rfind(|c| matches!(c, Call::Apply { .. })),
        Some(Call::Apply {
            user: "kwadmin".into(),
            mode: UserMode::Exclusive
        })
    );
    // A line removed that must not have been there may have been used to log in in the moment
    // before: the user's sessions are checked.
    let checked = Call::EndSessions {
        user: "kwadmin".into(),
    };
    eventually("the session check", || fake.calls().contains(&checked)).await;

    let mut hub = TestHub::start_on(&pki, addr).await;
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));
    let Msg::Drift(d) = s.recv().await else {
        panic!("the queued drift report follows Hello")
    };
    assert_eq!(d.user, "kwadmin");
    assert_eq!(d.added, vec!["SHA256:stray".to_owned()]);
    assert!(chrono::DateTime::parse_from_rfc3339(&d.detected_at).is_ok());

    // While connected it goes out at once.
    *agent.fake.drift.lock().unwrap() = Some((vec![], vec![FP_A.into()]));
    agent
        .watch_tx
        .send("tenant".parse().unwrap())
        .await
        .unwrap();
    let Msg::Drift(d) = s.recv().await else {
        panic!("expected a drift report")
    };
    assert_eq!(d.user, "tenant");
    assert_eq!(d.removed, vec![FP_A.to_owned()]);

    // A user without desired state (here: not in the state at all) is left alone.
    agent
        .watch_tx
        .send("nobody".parse().unwrap())
        .await
        .unwrap();
    *agent.fake.drift.lock().unwrap() = None;
    agent
        .watch_tx
        .send("tenant".parse().unwrap())
        .await
        .unwrap();
    eventually("the last repair", || applies(&fake.calls()) == 5).await;
    agent.stop().await;
}

#[tokio::test]
async fn the_cached_state_is_enforced_without_a_control_plane_and_systemd_is_told() {
    let pki = Pki::new();
    let (url, _) = dead_url().await;
    let enrolled = Enrolled::new(&pki, &url, Lifetime::Fresh);
    let signed = enrolled.sign(&state(3, &[("kwadmin", 0)]));
    enrolled
        .state_dir()
        .store_state(&signed, &Epochs::new())
        .unwrap();

    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let notifier =
        Notifier::from_vars(Some(sock_path), Some("200000"), None, std::process::id()).unwrap();

    let mut agent = Agent::start(enrolled.config(), Some(notifier));
    agent
        .wait_status("the cache enforced", |s| {
            s.ready && s.applied_generation == 3 && !s.connected
        })
        .await;
    assert_eq!(applies(&agent.fake.calls()), 1);

    let mut buf = [0u8; 64];
    let mut seen = Vec::new();
    while !(seen.iter().any(|m| m == "READY=1") && seen.iter().any(|m| m == "WATCHDOG=1")) {
        let n = within("a notification", sock.recv(&mut buf)).await.unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(seen.iter().filter(|m| *m == "READY=1").count(), 1);
    agent.stop().await;
}

#[tokio::test]
async fn a_cache_signed_by_another_key_is_not_used() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let other = SigningKey::generate(&mut rand::rngs::OsRng);
    enrolled
        .state_dir()
        .store_state(
            &sign_state(&other, &state(3, &[("kwadmin", 0)])),
            &Epochs::new(),
        )
        .unwrap();
    let agent = Agent::start(enrolled.config(), None);
    // The cache is handled before the first connection, so Hello comes after the decision.
    let mut s = hub.session().await;
    let Msg::Hello(hello) = s.recv().await else {
        panic!()
    };
    assert_eq!(hello.applied_generation, 0);
    assert!(agent.fake.calls().is_empty());
    assert!(!agent.status.borrow().ready);
    agent.stop().await;
}

#[tokio::test]
async fn the_certificate_is_renewed_with_the_same_key_and_used_next_time() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::RenewalDue);
    let agent = Agent::start(enrolled.config(), None);
    let first_peer = within("a TLS client", hub.peers.recv()).await.unwrap();
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));
    let Msg::Renew(renew) = s.recv().await else {
        panic!("past two thirds of its life the agent asks for a certificate")
    };
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&renew.csr_pem).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::der_bytes(&csr.public_key),
        enrolled.key.public_key_raw(),
        "the CSR is for the agent's existing key"
    );

    // A certificate for some other key is refused; the right one is stored.
    let stranger = rcgen::KeyPair::generate().unwrap();
    s.send_certificate(pki.issue(&stranger, Lifetime::Fresh));
    let renewed = pki.issue(&enrolled.key, Lifetime::Fresh);
    s.send_certificate(renewed.clone());
    let cert_path = enrolled.dir.path().join("agent.crt");
    eventually("the renewed certificate stored", || {
        std::fs::read_to_string(&cert_path).unwrap() == renewed
    })
    .await;

    // The next connection presents it.
    drop(s);
    let second_peer = within("a second TLS client", hub.peers.recv())
        .await
        .unwrap();
    assert_ne!(first_peer, second_peer);
    let renewed_der =
        rustls::pki_types::CertificateDer::from_pem_slice(renewed.as_bytes()).unwrap();
    assert_eq!(second_peer, renewed_der.to_vec());
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));
    agent.stop().await;
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn a_stalled_session_step_blocks_neither_the_watchdog_nor_repairs_nor_the_answer() {
    use std::sync::atomic::Ordering;
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    // WATCHDOG_USEC 200 ms: a ping every 100 ms.
    let notifier =
        Notifier::from_vars(Some(sock_path), Some("200000"), None, std::process::id()).unwrap();
    let agent = Agent::start(enrolled.config(), Some(notifier));
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));
    s.send_state(enrolled.sign(&state(1, &[("kwadmin", 0), ("tenant", 0)])));
    assert!(matches!(s.recv().await, Msg::Applied(_)));

    // Ending sessions now takes 3 s (a tenant's 1,000 fake sshd connections once took 32-75 s).
    *agent.fake.stall.lock().unwrap() = Some(Duration::from_secs(3));
    s.send_state(enrolled.sign(&state(2, &[("kwadmin", 0), ("tenant", 1)])));
    // The state's answer does not wait for the stalled step.
    let Msg::Applied(a) = s.recv().await else {
        panic!("expected Applied")
    };
    assert_eq!(a.generation, 2);
    assert_eq!(
        agent.fake.ended.load(Ordering::SeqCst),
        0,
        "answered only after the step"
    );

    // Meanwhile an outside edit is repaired and the watchdog keeps being fed.
    let applies_before = applies(&agent.fake.calls());
    agent
        .watch_tx
        .send("kwadmin".parse().unwrap())
        .await
        .unwrap();
    let fake = agent.fake.clone();
    eventually("the repair during the stall", || {
        applies(&fake.calls()) > applies_before
    })
    .await;
    let mut buf = [0u8; 64];
    let mut pings = 0;
    while pings < 5 {
        let n = within("a watchdog ping", sock.recv(&mut buf))
            .await
            .unwrap();
        if &buf[..n] == b"WATCHDOG=1" {
            pings += 1;
        }
    }
    assert_eq!(
        agent.fake.ended.load(Ordering::SeqCst),
        0,
        "the repair and the pings came while the step was still running"
    );

    // When the step finishes, its result follows as another Applied of the same generation.
    let Msg::Applied(later) = s.recv().await else {
        panic!("expected the session result")
    };
    assert_eq!(later.generation, 2);
    let tenant = later.users.iter().find(|u| u.user == "tenant").unwrap();
    assert_eq!(tenant.sessions_ended, 2);
    agent.stop().await;
}

#[tokio::test]
async fn when_a_grace_period_ends_the_sessions_of_that_key_are_checked() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let agent = Agent::start(enrolled.config(), None);
    let mut s = hub.session().await;
    assert!(matches!(s.recv().await, Msg::Hello(_)));
    // A rotated key in its grace period, ending in a moment; no session epoch change.
    let mut desired = state(1, &[("tenant", 0)]);
    let mut grace = desired.users[0].keys[0].clone();
    grace.fingerprint = "SHA256:rotated-key-in-its-grace-period".into();
    grace.expires_at = (chrono::Utc::now() + chrono::Duration::milliseconds(1500))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    desired.users[0].keys.push(grace);
    s.send_state(enrolled.sign(&desired));
    assert!(matches!(s.recv().await, Msg::Applied(_)));
    assert!(
        !agent.fake.calls().contains(&Call::EndSessions {
            user: "tenant".into()
        }),
        "no session check before the grace period ends"
    );
    // sshd refuses the key from its expiry-time on; the agent ends what it opened.
    let fake = agent.fake.clone();
    eventually("the session check at the end of the grace period", || {
        fake.calls().contains(&Call::EndSessions {
            user: "tenant".into(),
        })
    })
    .await;
    agent.stop().await;
}
