//! Crash safety of the writer: a process rewriting a user's file in a loop is SIGKILLed at random
//! moments, and after every kill the file must be exactly the old or the new content, whole,
//! with the right owner and mode, and at most one temp file may be left (the next apply removes
//! it).
//!
//! The writing process is this test binary itself, re-run with `KW_CRASH_DIR` set so that only
//! [`crash_child_rewrites_in_a_loop`] runs and does the writing.

// `allow-unwrap-in-tests` covers #[test] fns only, not the helpers beside them.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_agent::writer;
use keyward_common::authorized_keys::{self, ManagedKey, Mode};
use keyward_common::keys::KeyKind;
use keyward_test_support::{TestUser, homes_dir, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid};
use rand::Rng;
use support::managed_key;

const KILLS: usize = 50;
/// Keys per content: enough that a write is more than one page.
const KEYS_PER_SET: usize = 40;

/// The two key sets, written one public key a line under `A` or `B`, for the child to read.
fn key_sets() -> (Vec<ManagedKey>, Vec<ManagedKey>) {
    let set = |generation| {
        (0..KEYS_PER_SET)
            .map(|_| managed_key(KeyKind::Admin, generation).1)
            .collect::<Vec<_>>()
    };
    (set(1), set(2))
}

fn save_sets(path: &Path, a: &[ManagedKey], b: &[ManagedKey]) {
    let mut text = String::new();
    for (tag, set) in [("A", a), ("B", b)] {
        for key in set {
            text.push_str(&format!("{tag} {} {}\n", key.generation, key.public_key));
        }
    }
    fs::write(path, text).unwrap();
}

fn load_sets(path: &Path) -> (Vec<ManagedKey>, Vec<ManagedKey>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for line in fs::read_to_string(path).unwrap().lines() {
        let mut fields = line.splitn(3, ' ');
        let (tag, generation, public_key) = (fields.next(), fields.next(), fields.next());
        let key = ManagedKey {
            kind: KeyKind::Admin,
            generation: generation.unwrap().parse().unwrap(),
            public_key: public_key.unwrap().to_owned(),
            expires_at: None,
            options: Default::default(),
        };
        if tag == Some("A") {
            a.push(key)
        } else {
            b.push(key)
        }
    }
    (a, b)
}

/// The child's loop. A no-op in a normal test run.
#[test]
fn crash_child_rewrites_in_a_loop() {
    let Ok(dir) = std::env::var("KW_CRASH_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let target = fs::read_to_string(dir.join("target")).unwrap();
    let mut fields = target.splitn(3, ':');
    let mut id = || fields.next().unwrap().parse().unwrap();
    let (uid, gid) = (Uid::from_raw(id()), Gid::from_raw(id()));
    let home = PathBuf::from(fields.next().unwrap());
    let (a, b) = load_sets(&dir.join("keys"));
    // Bounded, so an orphaned child cannot run forever.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for keys in [&a, &b] {
            writer::apply_in_home(&home, uid, gid, Mode::Exclusive, keys, &[]).unwrap();
        }
    }
}

fn temp_files(ssh: &Path) -> Vec<String> {
    fs::read_dir(ssh)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(writer::TEMP_PREFIX))
        .collect()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_writer_killed_at_random_moments_leaves_the_old_or_the_new_file_whole() {
    let homes = homes_dir();
    let user = TestUser::create_in("crash", homes.path());
    let work = tempfile::tempdir().unwrap();
    let target = format!("{}:{}:{}", user.uid, user.gid, user.home.display());
    fs::write(work.path().join("target"), target).unwrap();
    let (a, b) = key_sets();
    save_sets(&work.path().join("keys"), &a, &b);
    let content_a = authorized_keys::merge(b"", &a, Mode::Exclusive, &[]).unwrap();
    let content_b = authorized_keys::merge(b"", &b, Mode::Exclusive, &[]).unwrap();
    assert!(content_a.len() > 4096 && content_a != content_b);
    writer::apply(&user.name, Mode::Exclusive, &a, &[]).unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut mid_write_kills = 0;
    for round in 0..KILLS {
        let before = fs::metadata(user.authorized_keys()).unwrap().ino();
        let child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_rewrites_in_a_loop",
                "--test-threads",
                "1",
            ])
            .env("KW_CRASH_DIR", work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        // The child is writing once the file has been replaced at least once.
        wait_for(Duration::from_secs(20), "the child's first rewrite", || {
            let ino = fs::metadata(user.authorized_keys()).ok()?.ino();
            (ino != before).then_some(())
        });
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..20_000)));
        kill(Pid::from_raw(child.0.id() as i32), Signal::SIGKILL).unwrap();
        let status = child.0.wait().unwrap();
        assert!(
            status.code().is_none(),
            "round {round}: the child exited by itself: {status}"
        );

        let content = fs::read(user.authorized_keys()).unwrap();
        assert!(
            content == content_a || content == content_b,
            "round {round}: torn file of {} bytes",
            content.len()
        );
        let meta = fs::metadata(user.authorized_keys()).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (user.uid, user.gid),
            "round {round}"
        );
        assert_eq!(meta.mode() & 0o7777, 0o600, "round {round}");
        let temps = temp_files(&user.ssh_dir());
        assert!(
            temps.len() <= 1,
            "round {round}: temp files pile up: {temps:?}"
        );
        mid_write_kills += temps.len();
    }
    eprintln!("{mid_write_kills} of {KILLS} kills landed between temp file create and rename");
    // Otherwise the test did not exercise what it is for (about one kill in four lands there).
    assert!(mid_write_kills > 0, "no kill landed mid-write");
    // The next apply sweeps the last leftover.
    writer::apply(&user.name, Mode::Exclusive, &a, &[]).unwrap();
    assert_eq!(temp_files(&user.ssh_dir()), Vec::<String>::new());
}
