//! The tenant's attacks on the login audit, done for real: Debian's sshd on loopback logging
//! with `-E`, real users, real `ssh` sessions, Debian's rsyslogd, `logger` run as the tenant.
//!
//! - a key-exchange offer with newlines in it makes sshd write a forged "Accepted publickey"
//!   line into its `-E` log: the audit reads it as an unverified event that records nothing;
//! - `logger -t 'sshd[1]'` and `logger -t sshd` through syslog: unverified, even naming a live
//!   connection of the user;
//! - 5,000 forged accepted lines, some naming the genuine session itself with a key that stays
//!   valid: revoking the key that really opened it still ends it, and a session of the valid key
//!   stays.
//!
//! Runs as root: `cargo test -p keyward-agent --test logins_forged`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod logins_support;

use std::io::Write;
use std::time::Duration;

use keyward_agent::logins::audit::MAX_PER_CONNECTION;
use keyward_agent::sessions::revoke;
use keyward_common::proto::{LoginEvent, LoginOutcome};
use keyward_test_support::{Sshd, TestUser, homes_dir, inject_kex_line, wait_for};
use logins_support::{Rsyslog, audit, authorize, client_key, read_all};

fn accepted<'a>(events: &'a [LoginEvent], ip: &str, port: u32) -> Vec<&'a LoginEvent> {
    events
        .iter()
        .filter(|e| {
            e.outcome == LoginOutcome::Accepted as i32 && e.source_ip == ip && e.source_port == port
        })
        .collect()
}

/// The client port of the session `key` opened, from the audit's verified events.
fn port_of(events: &[LoginEvent], fingerprint: &str) -> u32 {
    events
        .iter()
        .find(|e| {
            e.outcome == LoginOutcome::Accepted as i32 && e.fingerprint == fingerprint && e.verified
        })
        .unwrap_or_else(|| panic!("no verified login with {fingerprint}: {events:?}"))
        .source_port
}

#[test]
fn a_kex_injected_accepted_line_is_read_as_unverified() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("fk", homes.path());
    let name = user.name.to_string();
    let sshd = Sshd::start(work.path());
    let (key, key_path) = client_key(work.path(), "key");
    authorize(&user, &[&key]);
    let fingerprint = key.fingerprint().to_string();

    // The attack: a client that never authenticates makes sshd log a login of the user with
    // their own valid key, from an address that never connected.
    let forged = format!(
        "Accepted publickey for {name} from 203.0.113.7 port 4242 ssh2: ED25519 {fingerprint}"
    );
    inject_kex_line(sshd.port, &forged);
    wait_for(
        Duration::from_secs(10),
        "sshd to write the forged line",
        || {
            sshd.log_text()
                .lines()
                .any(|l| l.trim_end() == forged)
                .then_some(())
        },
    );
    // A genuine session beside it.
    let mut session = sshd.open_session(&key_path, &name);

    let mut a = audit(&sshd.log, &work.path().join("state"), 1000);
    let events = read_all(&mut a);
    let fake = accepted(&events, "203.0.113.7", 4242);
    assert_eq!(fake.len(), 1, "the forged line is parsed: {events:?}");
    assert!(
        !fake[0].verified,
        "a forged login is verified: {:?}",
        fake[0]
    );
    let genuine_port = port_of(&events, &fingerprint);
    assert_eq!(accepted(&events, "127.0.0.1", genuine_port).len(), 1);
    // Only the genuine login is a record a revocation may rely on.
    let records: Vec<u32> = a.records().iter().map(|r| r.port).collect();
    assert_eq!(records, vec![genuine_port]);
    let attribution = a.attribution(&name);
    assert_eq!(attribution.sessions.len(), 1);
    assert_eq!(attribution.sessions[0].source.port() as u32, genuine_port);
    assert!(session.running());
}

#[test]
fn logger_lines_through_rsyslog_are_read_as_unverified() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let syslog_dir = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("fl", homes.path());
    let name = user.name.to_string();
    let sshd = Sshd::start(work.path());
    let (key, key_path) = client_key(work.path(), "key");
    authorize(&user, &[&key]);
    let fingerprint = key.fingerprint().to_string();
    let _session = sshd.open_session(&key_path, &name);
    let mut genuine = audit(&sshd.log, &work.path().join("state-sshd"), 1000);
    let port = port_of(&read_all(&mut genuine), &fingerprint);

    // The tenant logs as "sshd": once claiming pid 1 for its own live connection, once without
    // a pid for an address that never connected.
    let rsyslog = Rsyslog::start(syslog_dir.path());
    let claim = |from: &str, port: u32| {
        format!("Accepted publickey for {name} from {from} port {port} ssh2: ED25519 {fingerprint}")
    };
    rsyslog.logger(&user, "sshd[1]", &claim("127.0.0.1", port));
    rsyslog.logger(&user, "sshd", &claim("198.51.100.4", 5555));
    wait_for(
        Duration::from_secs(10),
        "rsyslogd to write both lines",
        || {
            let text = std::fs::read_to_string(&rsyslog.file).unwrap_or_default();
            (text.contains(&claim("127.0.0.1", port)) && text.contains("198.51.100.4"))
                .then_some(())
        },
    );

    let mut a = audit(&rsyslog.file, &work.path().join("state-syslog"), 1000);
    let events = read_all(&mut a);
    let own = accepted(&events, "127.0.0.1", port);
    let elsewhere = accepted(&events, "198.51.100.4", 5555);
    assert_eq!((own.len(), elsewhere.len()), (1, 1), "{events:?}");
    assert_eq!(
        own[0].sshd_pid, 1,
        "the syslog line was parsed with its pid"
    );
    assert!(!own[0].verified, "pid 1 is not the session's monitor");
    assert!(!elsewhere[0].verified, "no such connection");
    assert!(a.records().is_empty(), "{:?}", a.records());
    assert!(a.attribution(&name).sessions.is_empty());
}

#[test]
fn a_flood_of_forged_accepted_lines_does_not_save_a_revoked_session() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("ff", homes.path());
    let name = user.name.to_string();
    let sshd = Sshd::start(work.path());
    let (revoked, revoked_path) = client_key(work.path(), "revoked");
    let (kept, kept_path) = client_key(work.path(), "kept");
    authorize(&user, &[&revoked, &kept]);
    let (revoked_fp, kept_fp) = (
        revoked.fingerprint().to_string(),
        kept.fingerprint().to_string(),
    );

    let mut revoked_session = sshd.open_session(&revoked_path, &name);
    let mut kept_session = sshd.open_session(&kept_path, &name);
    let mut a = audit(&sshd.log, &work.path().join("state"), 100_000);
    let events = read_all(&mut a);
    let revoked_port = port_of(&events, &revoked_fp);
    port_of(&events, &kept_fp);
    assert_eq!(a.records().len(), 2);

    // 5,000 forged logins of the user with the key that stays valid: most from connections
    // that do not exist (more than the table of records holds), and some claiming the revoked
    // key's own live connection. (Written straight into the log: the injection itself is the
    // test above; one KEX offer carries a few lines only.)
    let mut lines = String::new();
    for i in 0..5_000u32 {
        let port = if i % 500 == 0 {
            revoked_port
        } else {
            10_000 + i
        };
        lines += &format!(
            "Accepted publickey for {name} from 127.0.0.1 port {port} ssh2: ED25519 {kept_fp}\n"
        );
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&sshd.log)
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let events = read_all(&mut a);
    let flood: Vec<&LoginEvent> = events
        .iter()
        .filter(|e| e.source_port >= 10_000 && e.source_port < 15_000)
        .collect();
    assert_eq!(flood.len(), 4_990);
    assert!(flood.iter().all(|e| !e.verified));
    assert!(
        a.records().len() <= 2 + MAX_PER_CONNECTION,
        "{} records",
        a.records().len()
    );

    // Revoke the key that opened the first session: only `kept` is valid now.
    let ended = revoke::end_revoked_sessions(
        &user.name,
        &a.attribution(&name),
        &revoke::ValidNow::keys_only([kept_fp]),
    )
    .unwrap();
    assert_eq!(ended, 1);
    wait_for(
        Duration::from_secs(5),
        "the revoked key's session to end",
        || (!revoked_session.running()).then_some(()),
    );
    assert!(
        kept_session.running(),
        "the valid key's session ended: its record was lost"
    );
}
