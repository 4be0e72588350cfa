//! The journald source through libsystemd (cargo feature `journald`, on by default), on real
//! journal files: `systemd-journal-remote` (Debian's systemd-journal-remote) writes export-format
//! records into journal files in a directory, which the source opens as it would open the system
//! journal. No journald daemon is needed. Run with `cargo test -p keyward-agent --test
//! logins_journald` (needs libsystemd-dev to build).
//!
//! Only records whose trusted fields (set by journald, `_`-prefixed) are root sshd's count:
//! forged ones (`logger -t sshd`, a user's own `sshd`, another executable, another unit) are
//! ignored.

#![cfg(feature = "journald")]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keyward_agent::config::SshdTrust;
use keyward_agent::logins::journald::JournalSource;
use keyward_common::sshd_log::{LogLine, SshdEvent};
use tokio::sync::mpsc;

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const BOOT: &str = "6f1c6f1c6f1c6f1c6f1c6f1c6f1c6f1c";

/// One record of root's sshd as `journalctl -o export` prints it.
fn record(seq: u64, comm: &str, uid: u32, pid: u32, message: &str) -> String {
    forged(
        seq,
        comm,
        uid,
        "/usr/sbin/sshd",
        Some("ssh.service"),
        pid,
        message,
    )
}

/// One record with the trusted fields given.
fn forged(
    seq: u64,
    comm: &str,
    uid: u32,
    exe: &str,
    unit: Option<&str>,
    pid: u32,
    message: &str,
) -> String {
    let unit = unit.map_or(String::new(), |u| format!("_SYSTEMD_UNIT={u}\n"));
    format!(
        "__CURSOR=s=0;i={seq}\n__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={seq}\n\
         _BOOT_ID={BOOT}\n_TRANSPORT=syslog\nSYSLOG_IDENTIFIER=sshd\nSYSLOG_PID=1\n_COMM={comm}\n\
         _UID={uid}\n_EXE={exe}\n{unit}_PID={pid}\n_HOSTNAME=vps1\nMESSAGE={message}\n\n",
        1_795_860_000_000_000 + seq * 1_000_000
    )
}

/// Writes `records` into the journal file `dir/name.journal`.
fn write_journal(dir: &Path, name: &str, records: &[String]) {
    assert!(
        Path::new(JOURNAL_REMOTE).exists(),
        "{JOURNAL_REMOTE} is missing; install it with `apt-get install -y systemd-journal-remote`"
    );
    let input = dir.join(format!("{name}.export"));
    std::fs::write(&input, records.concat()).unwrap();
    let out = Command::new(JOURNAL_REMOTE)
        .arg(format!(
            "--output={}",
            dir.join(format!("{name}.journal")).display()
        ))
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(input).unwrap();
}

/// Reads until `count` sshd lines came, waiting on the source's wake-ups.
async fn lines(
    source: &mut JournalSource,
    wake: &mut mpsc::Receiver<()>,
    count: usize,
) -> Vec<LogLine> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < count {
            let (lines, taken) = source.read(100);
            got.extend(lines);
            if taken == 0 {
                wake.recv().await.unwrap();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out with {} of {count} lines: {got:?}", got.len()));
    got
}

#[tokio::test]
async fn sshds_records_are_read_and_a_restart_resumes_after_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let fp = "SHA256:CQckUcS0Dj4bssx6LruYf8RqXCmfpKWq3eceXa5XfxM";
    write_journal(
        dir.path(),
        "first",
        &[
            record(
                1,
                "sshd",
                0,
                100,
                &format!("Accepted publickey for bob from 127.0.0.1 port 5 ssh2: ED25519 {fp}"),
            ),
            // `logger -t sshd` as a user: the identifier says sshd, journald says logger.
            forged(
                2,
                "logger",
                1000,
                "/usr/bin/logger",
                Some("session-1.scope"),
                7,
                "Accepted publickey for mallory from 127.0.0.1 port 6 ssh2: ED25519 SHA256:x",
            ),
            record(3, "cron", 0, 8, "not sshd at all"),
            record(4, "sshd", 0, 100, "User child is on pid 101"),
            record(
                5,
                "sshd-session",
                0,
                100,
                "Disconnected from user bob 127.0.0.1 port 5",
            ),
            // The tenant's own program named sshd, or a copy of sshd, run as the tenant.
            forged(
                6,
                "sshd",
                1000,
                "/home/t/sshd",
                Some("session-1.scope"),
                9,
                "Accepted publickey for bob from 127.0.0.1 port 7 ssh2: ED25519 SHA256:y",
            ),
            forged(
                7,
                "sshd",
                1000,
                "/usr/sbin/sshd",
                None,
                9,
                "Accepted publickey for bob from 127.0.0.1 port 8 ssh2: ED25519 SHA256:y",
            ),
            // Root, named sshd, but another executable; the real one from another unit.
            forged(
                8,
                "sshd",
                0,
                "/usr/bin/python3.11",
                Some("ssh.service"),
                10,
                "Accepted publickey for bob from 127.0.0.1 port 9 ssh2: ED25519 SHA256:y",
            ),
            forged(
                9,
                "sshd",
                0,
                "/usr/sbin/sshd",
                Some("cron.service"),
                11,
                "Accepted publickey for bob from 127.0.0.1 port 10 ssh2: ED25519 SHA256:y",
            ),
        ],
    );
    let (wake_tx, mut wake) = mpsc::channel(1);
    let mut source = JournalSource::start_in_directory(
        dir.path().to_owned(),
        String::new(),
        wake_tx,
        SshdTrust::default(),
    )
    .unwrap();
    let got = lines(&mut source, &mut wake, 3).await;
    let SshdEvent::Accepted(auth) = &got[0].event else {
        panic!("{got:?}")
    };
    assert_eq!((auth.user.as_str(), auth.source.port()), ("bob", 5));
    assert_eq!(auth.key.as_ref().unwrap().fingerprint, fp);
    assert_eq!(got[0].pid, Some(100));
    assert_eq!(got[0].at.unwrap().to_rfc3339(), "2026-11-28T10:00:01+00:00");
    assert_eq!(got[1].event, SshdEvent::UserChild { pid: 101 });
    assert!(matches!(got[2].event, SshdEvent::Disconnected { .. }));
    assert_eq!(
        got.len(),
        3,
        "the forged and the other program's records are not sshd's: {got:?}"
    );
    // Every record was read (the forged ones after the genuine ones too): none came out.
    let (rest, _) = source.read(100);
    assert!(rest.is_empty(), "{rest:?}");
    let cursor = source.position().to_owned();
    // The cursor is past the genuine records (the 5th and before). Where in the forged tail it
    // stands varies (seen: 5, 8 and 9); a restart re-reading forged records drops them again.
    let seqnum: u64 = cursor
        .split(';')
        .find_map(|field| field.strip_prefix("i="))
        .and_then(|n| u64::from_str_radix(n, 16).ok())
        .unwrap_or_else(|| panic!("no seqnum in the cursor {cursor}"));
    assert!((5..=9).contains(&seqnum), "{cursor}");

    // New records while the source runs wake it.
    write_journal(
        dir.path(),
        "second",
        &[record(
            16,
            "sshd",
            0,
            200,
            "Invalid user eve from 10.0.0.1 port 7",
        )],
    );
    let more = lines(&mut source, &mut wake, 1).await;
    assert!(matches!(&more[0].event, SshdEvent::InvalidUser { user, .. } if user == "eve"));
    drop(source);

    // Restarted from the persisted cursor: only what came after it.
    write_journal(
        dir.path(),
        "third",
        &[record(
            17,
            "sshd",
            0,
            300,
            "Connection closed by 10.0.0.2 port 8 [preauth]",
        )],
    );
    let (wake_tx, mut wake) = mpsc::channel(1);
    let mut again = JournalSource::start_in_directory(
        dir.path().to_owned(),
        cursor,
        wake_tx,
        SshdTrust::default(),
    )
    .unwrap();
    let got = lines(&mut again, &mut wake, 2).await;
    assert!(matches!(&got[0].event, SshdEvent::InvalidUser { user, .. } if user == "eve"));
    assert!(matches!(got[1].event, SshdEvent::ClosedPreauth { .. }));
    let (nothing, _) = again.read(100);
    assert!(nothing.is_empty(), "{nothing:?}");
}
