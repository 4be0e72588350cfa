//! Real Unix users made with `useradd` for one test, removed again on drop (even when the test
//! failed). Creating users needs root, as the agent runs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keyward_common::UnixUser;

use crate::require::{require, require_root};

/// A Unix user made with `useradd` whose home is under a temporary directory (its own, or a
/// given parent); its processes are killed and it is `userdel`ed on drop.
#[derive(Debug)]
pub struct TestUser {
    pub name: UnixUser,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The parent of `home` when the user has its own.
    _root: Option<tempfile::TempDir>,
}

impl TestUser {
    /// Creates a user named `kw{tag}{pid}n{counter}` with its home in a temporary directory of
    /// its own (0755, so sshd can reach `authorized_keys` as the user).
    pub fn create(tag: &str) -> TestUser {
        let root = homes_dir();
        let mut user = Self::create_in(tag, root.path());
        user._root = Some(root);
        user
    }

    /// Creates a user named `kw{tag}{pid}n{counter}` with home `{parent}/{name}`.
    pub fn create_in(tag: &str, parent: &Path) -> TestUser {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("kw{tag}{}n{n}", std::process::id());
        let home = parent.join(&name);
        useradd(&name, &home);
        let meta = std::fs::metadata(&home).expect("useradd made the home");
        TestUser {
            name: name.parse().expect("a valid user name"),
            uid: meta.uid(),
            gid: meta.gid(),
            home,
            _root: None,
        }
    }

    pub fn uid(&self) -> nix::unistd::Uid {
        nix::unistd::Uid::from_raw(self.uid)
    }

    pub fn gid(&self) -> nix::unistd::Gid {
        nix::unistd::Gid::from_raw(self.gid)
    }

    pub fn ssh_dir(&self) -> PathBuf {
        self.home.join(".ssh")
    }

    pub fn authorized_keys(&self) -> PathBuf {
        self.home.join(".ssh/authorized_keys")
    }

    /// Writes `~/.ssh/authorized_keys` as the user keeps it: `.ssh` 0700 and the file 0600, both
    /// the user's (sshd's `StrictModes` checks them).
    pub fn write_authorized_keys(&self, content: &[u8]) {
        let ssh = self.ssh_dir();
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::write(self.authorized_keys(), content).unwrap();
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file_mode = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(self.authorized_keys(), file_mode).unwrap();
        self.own(&ssh);
        self.own(&self.authorized_keys());
    }

    /// Makes `path` (a file, directory or symlink the test planted) the user's, as if they had
    /// made it themselves.
    pub fn own(&self, path: &Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).expect("lchown");
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Whatever the test left running as the user (sessions, planted processes).
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", self.name.as_str()])
            .status();
        // -f: even if a process of the user is still going away.
        let status = userdel(self.name.as_str());
        if !status && !std::thread::panicking() {
            panic!("userdel {} failed", self.name);
        }
    }
}

fn userdel(name: &str) -> bool {
    for _ in 0..100 {
        match Command::new("/usr/sbin/userdel")
            .args(["-f", name])
            .output()
        {
            Ok(out) if out.status.success() => return true,
            // 6: no such user (already gone).
            Ok(out) if out.status.code() == Some(6) => return true,
            // 10: /etc/passwd locked by a concurrent useradd or userdel: retry.
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

/// `useradd` of `name` with home `home` (made), shell `/bin/sh` and no password: key logins
/// only. `-p '*'`: no password, but not "locked" (`!`), which sshd refuses without PAM.
pub fn useradd(name: &str, home: &Path) {
    require_root();
    require("/usr/sbin/useradd", "passwd");
    run_with_retry(
        "useradd",
        &[
            "-m",
            "-d",
            home.to_str().expect("a utf-8 home path"),
            "-s",
            "/bin/sh",
            "-p",
            "*",
            name,
        ],
    );
}

/// Runs a shadow-utils command, retrying while another test holds the passwd lock.
fn run_with_retry(program: &str, args: &[&str]) {
    let path = format!("/usr/sbin/{program}");
    let mut last = String::new();
    for _ in 0..100 {
        let out = Command::new(&path)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{path}: {e}; install it with `apt-get install -y passwd`"));
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        // 10 (useradd): cannot lock /etc/passwd, another one is running.
        if out.status.code() != Some(10) && !last.contains("lock") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{program} {args:?} failed: {last}");
}

/// A root-only temp dir whose children can hold homes (0755, so sshd can reach them as the
/// user when it checks `authorized_keys`).
pub fn homes_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("keyward-test-homes-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
