//! The watcher on temp homes: every kind of outside change to `authorized_keys` or `.ssh` gives
//! an event (also after `.ssh` was removed and made again), bursts are debounced, and reads,
//! unrelated files and the writer's temp files give none.

// `allow-unwrap-in-tests` covers #[test] fns only, not the helpers beside them.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use keyward_agent::watch::{Changed, WatchTarget, Watcher};
use keyward_common::UnixUser;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long to wait for an event that must come (the agent's goal is a repair within 1 s).
const MUST_COME: Duration = Duration::from_secs(2);
/// How long silence must last for "no event".
const QUIET: Duration = Duration::from_millis(300);

fn user(name: &str) -> UnixUser {
    name.parse().unwrap()
}

fn setup(home: &Path) {
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::write(home.join(".ssh/authorized_keys"), "# v1\n").unwrap();
}

async fn expect_event(rx: &mut mpsc::Receiver<Changed>, who: &str, what: &str) {
    let event = timeout(MUST_COME, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no event within {MUST_COME:?} after: {what}"))
        .expect("watcher channel open");
    assert_eq!(event.user.as_str(), who, "after: {what}");
}

/// Waits until no event has come for [`QUIET`]; returns how many came meanwhile.
async fn drain(rx: &mut mpsc::Receiver<Changed>) -> usize {
    let mut count = 0;
    while let Ok(event) = timeout(QUIET, rx.recv()).await {
        event.expect("watcher channel open");
        count += 1;
    }
    count
}

/// What a step of the test does to the home, and the change itself.
type Step<'a> = (&'static str, Box<dyn Fn() + 'a>);

#[tokio::test]
async fn every_kind_of_outside_change_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("u1");
    setup(&home);
    let ssh = home.join(".ssh");
    let file = ssh.join("authorized_keys");
    let (tx, mut rx) = mpsc::channel(16);
    let watcher = Watcher::start(
        vec![WatchTarget {
            user: user("u1"),
            home: home.clone(),
        }],
        tx,
    )
    .unwrap();
    assert_eq!(drain(&mut rx).await, 0, "an event without a change");

    let steps: Vec<Step> = vec![
        (
            "append to the file",
            Box::new(|| {
                let mut f = fs::OpenOptions::new().append(true).open(&file).unwrap();
                writeln!(f, "ssh-ed25519 AAAA planted").unwrap();
            }),
        ),
        (
            "chmod the file",
            Box::new(|| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
            }),
        ),
        (
            "replace the file by rename",
            Box::new(|| {
                fs::write(ssh.join("new"), "# replaced\n").unwrap();
                fs::rename(ssh.join("new"), &file).unwrap();
            }),
        ),
        (
            "delete the file",
            Box::new(|| fs::remove_file(&file).unwrap()),
        ),
        (
            "create the file",
            Box::new(|| fs::write(&file, "# back\n").unwrap()),
        ),
        (
            "rm -rf .ssh",
            Box::new(|| fs::remove_dir_all(&ssh).unwrap()),
        ),
        ("mkdir .ssh and write the file", Box::new(|| setup(&home))),
        // Only seen if the watch on the new `.ssh` was armed.
        (
            "edit the file in the recreated .ssh",
            Box::new(|| fs::write(&file, "# v2\n").unwrap()),
        ),
        (
            "rename .ssh away",
            Box::new(|| fs::rename(&ssh, home.join(".ssh-old")).unwrap()),
        ),
        (
            "rename another directory to .ssh",
            Box::new(|| fs::rename(home.join(".ssh-old"), &ssh).unwrap()),
        ),
        (
            "edit the file in the renamed-in .ssh",
            Box::new(|| fs::write(&file, "# v3\n").unwrap()),
        ),
    ];
    for (what, step) in steps {
        step();
        expect_event(&mut rx, "u1", what).await;
        drain(&mut rx).await;
    }

    // Not changes: reading the file (sshd at every login), other files in the home, other
    // files in `.ssh`, and the writer's temp files.
    let _ = fs::read(&file).unwrap();
    fs::write(home.join(".bash_history"), "ls\n").unwrap();
    fs::write(ssh.join("known_hosts"), "x\n").unwrap();
    fs::write(ssh.join(".keyward-tmp-0123456789abcdef"), "partial").unwrap();
    fs::remove_file(ssh.join(".keyward-tmp-0123456789abcdef")).unwrap();
    assert_eq!(
        drain(&mut rx).await,
        0,
        "an event for something that is not a change"
    );
    watcher.stop();
}

#[tokio::test]
async fn bursts_are_debounced_and_targets_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (home_a, home_b) = (dir.path().join("a"), dir.path().join("b"));
    setup(&home_a);
    setup(&home_b);
    let (tx, mut rx) = mpsc::channel(64);
    let targets = vec![
        WatchTarget {
            user: user("ua"),
            home: home_a.clone(),
        },
        WatchTarget {
            user: user("ub"),
            home: home_b.clone(),
        },
    ];
    let _watcher = Watcher::start(targets, tx).unwrap();

    // 30 writes as fast as possible: one event (two if the machine stalls mid-burst).
    let started = Instant::now();
    for i in 0..30 {
        fs::write(home_a.join(".ssh/authorized_keys"), format!("# {i}\n")).unwrap();
    }
    let burst = started.elapsed();
    expect_event(&mut rx, "ua", "a burst of writes").await;
    let more = drain(&mut rx).await;
    if burst < Duration::from_millis(40) {
        assert_eq!(more, 0, "a {burst:?} burst gave {} events", more + 1);
    } else {
        assert!(more <= 2, "a {burst:?} burst gave {} events", more + 1);
    }

    fs::remove_file(home_b.join(".ssh/authorized_keys")).unwrap();
    expect_event(&mut rx, "ub", "deleting b's file").await;
    assert_eq!(
        drain(&mut rx).await,
        0,
        "a change to b was reported for a too"
    );
}

#[test]
fn a_missing_home_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let target = WatchTarget {
        user: user("nobody-here"),
        home: dir.path().join("missing"),
    };
    let err = Watcher::start(vec![target], tx).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
