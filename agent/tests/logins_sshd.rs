//! The login audit over a real sshd's log (`sshd -E`, Debian's OpenSSH, real users and `ssh`
//! logins): the right events for key logins, refused keys and unknown users; no event lost or
//! repeated across a restart of the reader or a rotation of the log (rename and copy-truncate);
//! the spool bound.

// `allow-unwrap-in-tests` covers #[test] fns only, not the helpers beside them.
#![allow(clippy::unwrap_used)]

mod logins_support;

use std::fs;

use keyward_common::proto::{LoginMethod, LoginOutcome};
use keyward_test_support::{Sshd, TestUser, homes_dir};
use logins_support::{audit, authorize, client_key, read_all, summary};

fn s(outcome: LoginOutcome, user: &str, fingerprint: &str) -> (String, String, String) {
    (
        outcome.as_str_name().to_owned(),
        user.to_owned(),
        fingerprint.to_owned(),
    )
}

#[test]
fn key_logins_refused_keys_and_unknown_users_are_events() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("la", homes.path());
    let sshd = Sshd::start(work.path());
    let (good, good_path) = client_key(work.path(), "good");
    let (bad, bad_path) = client_key(work.path(), "bad");
    authorize(&user, &[&good]);
    let name = user.name.as_str();
    let (good_fp, bad_fp) = (
        good.fingerprint().to_string(),
        bad.fingerprint().to_string(),
    );

    assert!(sshd.login(&good_path, name), "{}", sshd.log_text());
    assert!(
        !sshd.login(&bad_path, name),
        "a key not in authorized_keys worked"
    );
    assert!(!sshd.login(&good_path, "kwnosuchuser"));

    let mut a = audit(&sshd.log, &work.path().join("state"), 100);
    let events = read_all(&mut a);
    assert_eq!(
        summary(&events),
        vec![
            s(LoginOutcome::Accepted, name, &good_fp),
            s(LoginOutcome::Disconnected, name, ""),
            s(LoginOutcome::Failed, name, &bad_fp),
            s(LoginOutcome::ClosedPreauth, name, ""),
            s(LoginOutcome::InvalidUser, "kwnosuchuser", ""),
            s(LoginOutcome::ClosedPreauth, "kwnosuchuser", ""),
        ],
        "sshd log:\n{}",
        sshd.log_text()
    );
    let accepted = &events[0];
    assert_eq!(accepted.method, LoginMethod::Publickey as i32);
    assert_eq!(accepted.key_type, "ED25519");
    assert_eq!(accepted.source_ip, "127.0.0.1");
    assert_ne!(accepted.source_port, 0);
    assert_eq!(
        accepted.source_port, events[1].source_port,
        "the session's end"
    );
    assert_eq!(accepted.sshd_pid, 0, "an -E log has no pid");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&accepted.at).is_ok(),
        "{}",
        accepted.at
    );
    let failed = &events[2];
    assert_eq!(
        (failed.method, failed.key_type.as_str()),
        (LoginMethod::Publickey as i32, "ED25519")
    );
    assert_ne!(failed.source_port, accepted.source_port);
    let cursors: Vec<u64> = events.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[1] == w[0] + 1), "{cursors:?}");
    assert!(a.open_sessions().is_empty(), "the session ended");
}

#[test]
fn a_restarted_reader_neither_loses_nor_repeats() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("lr", homes.path());
    let sshd = Sshd::start(work.path());
    let (key, key_path) = client_key(work.path(), "k");
    authorize(&user, &[&key]);
    let state = work.path().join("state");

    assert!(sshd.login(&key_path, user.name.as_str()));
    let mut first = audit(&sshd.log, &state, 100);
    let before = read_all(&mut first);
    assert_eq!(before.len(), 2, "{}", sshd.log_text());
    drop(first);

    assert!(sshd.login(&key_path, user.name.as_str()));
    assert!(sshd.login(&key_path, user.name.as_str()));
    let mut second = audit(&sshd.log, &state, 100);
    let after = read_all(&mut second);
    assert_eq!(after.len(), 6, "nothing lost, nothing repeated");
    assert_eq!(after[..2], before[..], "the spool survived the restart");
    let cursors: Vec<u64> = after.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[1] == w[0] + 1), "{cursors:?}");
    let ports: Vec<u32> = after.iter().map(|e| e.source_port).collect();
    assert_ne!(ports[0], ports[2], "a new login, not the first one again");
    assert_ne!(ports[2], ports[4]);

    // Acknowledged events are gone for good, across a restart too.
    second.acknowledge(after[3].cursor, 0);
    drop(second);
    let mut third = audit(&sshd.log, &state, 100);
    assert_eq!(read_all(&mut third), after[4..].to_vec());
}

#[test]
fn a_log_rotated_by_rename_loses_nothing() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("lm", homes.path());
    let sshd = Sshd::start(work.path());
    let (key, key_path) = client_key(work.path(), "k");
    authorize(&user, &[&key]);
    let state = work.path().join("state");
    let name = user.name.as_str();

    assert!(sshd.login(&key_path, name));
    let mut a = audit(&sshd.log, &state, 100);
    assert_eq!(read_all(&mut a).len(), 2);
    // A login the reader has not seen yet, then the rotation (sshd's per-connection processes
    // reopen the path and create the new file), then a login into the new file.
    assert!(sshd.login(&key_path, name));
    fs::rename(&sshd.log, work.path().join("sshd.log.1")).unwrap();
    assert!(sshd.login(&key_path, name));
    assert!(
        fs::metadata(&sshd.log).unwrap().len() > 0,
        "sshd made a new log"
    );
    assert_eq!(read_all(&mut a).len(), 6);

    // Rotated again while the reader is stopped.
    drop(a);
    assert!(sshd.login(&key_path, name));
    fs::rename(
        work.path().join("sshd.log.1"),
        work.path().join("sshd.log.2"),
    )
    .unwrap();
    fs::rename(&sshd.log, work.path().join("sshd.log.1")).unwrap();
    assert!(sshd.login(&key_path, name));
    let mut a = audit(&sshd.log, &state, 100);
    let events = read_all(&mut a);
    assert_eq!(events.len(), 10, "{:?}", summary(&events));
    let ports: std::collections::BTreeSet<u32> = events.iter().map(|e| e.source_port).collect();
    assert_eq!(ports.len(), 5, "five logins, each with its start and end");
}

#[test]
fn a_copy_truncated_log_loses_nothing() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("lc", homes.path());
    let sshd = Sshd::start(work.path());
    let (key, key_path) = client_key(work.path(), "k");
    authorize(&user, &[&key]);
    let name = user.name.as_str();

    assert!(sshd.login(&key_path, name));
    let mut a = audit(&sshd.log, &work.path().join("state"), 100);
    assert_eq!(read_all(&mut a).len(), 2);
    // Written after the last read and before logrotate's copy: only the copy holds it.
    assert!(sshd.login(&key_path, name));
    fs::copy(&sshd.log, work.path().join("sshd.log.1")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&sshd.log)
        .unwrap();
    // sshd appends (O_APPEND): the next login starts the file again from its first byte.
    assert!(sshd.login(&key_path, name));
    let events = read_all(&mut a);
    assert_eq!(events.len(), 6, "{:?}", summary(&events));
    let ports: std::collections::BTreeSet<u32> = events.iter().map(|e| e.source_port).collect();
    assert_eq!(ports.len(), 3);
}

#[test]
fn a_full_spool_drops_the_oldest_and_counts_them() {
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(work.path());
    let (_, key_path) = client_key(work.path(), "k");
    // Each unknown user is two events (invalid user, closed before authentication).
    for i in 0..4 {
        assert!(!sshd.login(&key_path, &format!("kwnouser{i}")));
    }
    let mut a = audit(&sshd.log, &work.path().join("state"), 3);
    let spool = read_all(&mut a);
    assert_eq!(spool.len(), 3);
    assert_eq!(a.dropped(), 5);
    let users: Vec<&str> = spool.iter().map(|e| e.user.as_str()).collect();
    assert_eq!(
        users,
        vec!["kwnouser2", "kwnouser3", "kwnouser3"],
        "the newest stay"
    );
    let batch = a.batch(500).unwrap();
    assert_eq!(batch.dropped, 5);
    assert_eq!(batch.events, spool);
    // Reported and acknowledged: the count starts again.
    a.acknowledge(spool[2].cursor, batch.dropped);
    assert_eq!(a.dropped(), 0);
    assert!(a.batch(500).is_none());
}
