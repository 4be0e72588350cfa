//! A tenant cannot stall a revocation: its own process titled `sshd: USER [priv]` (python3, run
//! as the tenant with `runuser`) holds 1,000 loopback connections, and a forged accepted line in
//! sshd's log names each of them. The revocation still ends the real session opened with the
//! revoked key, leaves the tenant's process alone (it is no sshd), and reads `/proc` once.
//!
//! Alone in its test binary: it counts the process's `/proc` snapshots. Runs as root:
//! `cargo test -p keyward-agent --test logins_stall`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod logins_support;

use std::io::Write;
use std::time::Duration;

use keyward_agent::procs;
use keyward_agent::sessions::revoke;
use keyward_common::proto::LoginOutcome;
use keyward_test_support::{Sshd, TestUser, homes_dir, wait_for};
use logins_support::{audit, authorize, client_key, read_all, tenant_sshd};

#[test]
fn a_tenant_sshd_with_a_thousand_connections_does_not_stall_a_revocation() {
    let homes = homes_dir();
    let work = tempfile::tempdir().unwrap();
    let user = TestUser::create_in("fs", homes.path());
    let name = user.name.to_string();
    let sshd = Sshd::start(work.path());
    let (key, key_path) = client_key(work.path(), "key");
    authorize(&user, &[&key]);
    let fingerprint = key.fingerprint().to_string();
    let mut session = sshd.open_session(&key_path, &name);

    let (mut fake, ports) = tenant_sshd(&user, 1_000);
    // The disguise is in place: a process of the tenant titled as the monitor of its session,
    // with its thousands of sockets.
    let title = format!("sshd: {name} [priv]");
    let disguised = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.starts_with(title.as_bytes()))
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("status"))
                .is_ok_and(|s| s.contains(&format!("Uid:\t{}\t", user.uid)))
        })
        .map(|e| std::fs::read_dir(e.path().join("fd")).unwrap().count())
        .max();
    assert!(
        disguised.is_some_and(|fds| fds >= 2_000),
        "the tenant's sshd is not there: {disguised:?}"
    );
    // A forged line naming the genuine session's own port would be true: sshd does hold a
    // connection from there (the tenant's sockets can reuse the port towards another address).
    let genuine_port: u16 = sshd
        .log_text()
        .lines()
        .find_map(|line| {
            line.split_once(&format!(
                "Accepted publickey for {name} from 127.0.0.1 port "
            ))
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        })
        .expect("sshd logged the genuine login");
    let ports: Vec<u16> = ports.into_iter().filter(|p| *p != genuine_port).collect();
    let lines: String = ports
        .iter()
        .map(|port| {
            format!(
                "Accepted publickey for {name} from 127.0.0.1 port {port} ssh2: ED25519 {fingerprint}\n"
            )
        })
        .collect();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&sshd.log)
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();

    let mut a = audit(&sshd.log, &work.path().join("state"), 100_000);
    let events = read_all(&mut a);
    let accepted: Vec<_> = events
        .iter()
        .filter(|e| e.outcome == LoginOutcome::Accepted as i32)
        .collect();
    assert_eq!(accepted.len(), 1 + ports.len());
    // sshd logged the genuine login before the forged lines were appended.
    let forged = &accepted[1..];
    assert!(
        forged
            .iter()
            .all(|e| ports.contains(&(e.source_port as u16))),
        "the forged lines come after the genuine login"
    );
    assert!(
        forged.iter().all(|e| !e.verified),
        "a connection of the tenant's python verified a login"
    );
    assert_eq!(a.records().len(), 1, "only the genuine login is a record");

    // The key is revoked: nothing is valid for the user any more.
    let attribution = a.attribution(&name);
    let before = procs::snapshots_taken();
    let ended =
        revoke::end_revoked_sessions(&user.name, &attribution, &revoke::ValidNow::default())
            .unwrap();
    assert_eq!(
        procs::snapshots_taken() - before,
        1,
        "the revocation read /proc more than once"
    );
    assert_eq!(ended, 1);
    wait_for(
        Duration::from_secs(5),
        "the revoked key's session to end",
        || (!session.running()).then_some(()),
    );
    assert!(
        fake.running(),
        "the tenant's python is no sshd session and is not signalled"
    );
}
