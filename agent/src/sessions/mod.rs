//! Ends a user's live SSH sessions (after a key regeneration or revocation).
//!
//! sshd names its per-connection processes with `setproctitle`, which on Linux rewrites
//! `/proc/PID/cmdline`:
//!
//! - `sshd: USER [priv]`: the privileged monitor, running as root, one per connection;
//! - `sshd: USER@pts/N` / `sshd: USER@notty` (several ttys joined by `,`): the connection's
//!   process running as the user, a child of the monitor;
//! - OpenSSH 9.8 and later use `sshd-session: ` instead of `sshd: `.
//!
//! [`end_sessions`] sends SIGTERM to every monitor of the user (sshd's monitor forwards it to its
//! child, which exits and closes the connection); to a user-owned `USER@...` process that has no
//! such monitor (an sshd without privilege separation); and to the user-owned processes below
//! them (the session's shell and commands: a `notty` command would otherwise outlive its
//! connection). Neither the name nor the owner alone is trusted: a process is sshd only when its
//! `/proc/PID/exe` is an sshd executable ([`crate::procs`]), a monitor must run as root and a
//! `USER@` process as the user, so a process another user named `sshd: victim [priv]` is never
//! matched, and the listening sshd (`sshd: /usr/sbin/sshd ... [listener]` or a plain command
//! line) never is either. Processes that left the session's tree (double-forked daemons) are not
//! followed.
//!
//! [`session_trees`] and [`end_session_trees`] do the same per session (one tree per monitor, or
//! per connection process without one), from one [`ProcSnapshot`], so that a revocation can end
//! some of a user's sessions and leave the others: [`revoke`] decides which.

pub mod revoke;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use keyward_common::UnixUser;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};

use crate::config::SshdTrust;
use crate::procs::{self, ProcEntry, ProcSnapshot};

/// Why sessions could not be (fully) ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no such user: {user}")]
    NoSuchUser { user: UnixUser },
    #[error("looking up user {user}: {errno}")]
    UserLookup { user: UnixUser, errno: Errno },
    #[error("reading {}: {error}", path.display())]
    ReadProc { path: PathBuf, error: io::Error },
    #[error("signalling pid {pid}: {errno} (signalled: {signalled:?})")]
    Signal {
        pid: i32,
        errno: Errno,
        signalled: Vec<i32>,
    },
}

/// What an sshd process title says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `sshd: USER [priv]`: the privileged monitor of one connection.
    Monitor,
    /// `sshd: USER@pts/N`, `sshd: USER@notty`: the connection's process running as the user.
    Connection,
}

/// A process that belongs to one of the user's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionProcess {
    pub pid: i32,
    pub ppid: i32,
    /// Real uid.
    pub uid: u32,
    /// `None` for a process below a session (shell, command).
    pub role: Option<Role>,
}

/// One SSH session of a user: its root (the `[priv]` monitor, or a connection process without
/// one) and the user-owned processes below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTree {
    pub root: SessionProcess,
    /// The processes below the root, breadth first.
    pub below: Vec<SessionProcess>,
}

impl SessionTree {
    /// The root and everything below it.
    pub fn processes(&self) -> impl Iterator<Item = &SessionProcess> {
        std::iter::once(&self.root).chain(self.below.iter())
    }

    pub fn contains(&self, pid: i32) -> bool {
        self.processes().any(|p| p.pid == pid)
    }
}

/// Sends SIGTERM to the user's live SSH sessions (see the module docs for which processes) and
/// returns the pids signalled. No session is not an error: the result is then empty.
pub fn end_sessions(user: &UnixUser, trust: &SshdTrust) -> Result<Vec<i32>, SessionError> {
    let uid = user_uid(user)?;
    let snapshot = snapshot(Path::new("/proc"), trust, uid)?;
    let targets = select(&snapshot, user.as_str(), uid);
    signal_all(user, trust, &targets)
}

/// The user's sessions now, one tree each (one read of `/proc`).
pub fn find_session_trees(
    user: &UnixUser,
    trust: &SshdTrust,
) -> Result<Vec<SessionTree>, SessionError> {
    let uid = user_uid(user)?;
    let snapshot = snapshot(Path::new("/proc"), trust, uid)?;
    Ok(session_trees(&snapshot, user.as_str(), uid))
}

/// Reads `/proc` once for `uid`'s sessions: every process, and the sockets of the sshd processes
/// of root and of `uid`.
pub fn snapshot(
    proc_root: &Path,
    trust: &SshdTrust,
    uid: u32,
) -> Result<ProcSnapshot, SessionError> {
    ProcSnapshot::take(proc_root, trust, &[0, uid]).map_err(|error| SessionError::ReadProc {
        path: proc_root.to_path_buf(),
        error,
    })
}

/// Sends SIGTERM to every process of `trees` (found by [`session_trees`] for `user`), each
/// re-checked right before (a pid reused since the scan is left alone); returns the pids
/// signalled.
pub fn end_session_trees(
    user: &UnixUser,
    trust: &SshdTrust,
    trees: &[SessionTree],
) -> Result<Vec<i32>, SessionError> {
    let targets: Vec<SessionProcess> = trees.iter().flat_map(|t| t.processes()).copied().collect();
    signal_all(user, trust, &targets)
}

fn signal_all(
    user: &UnixUser,
    trust: &SshdTrust,
    targets: &[SessionProcess],
) -> Result<Vec<i32>, SessionError> {
    let procs = Path::new("/proc");
    let mut signalled = Vec::new();
    let mut failure = None;
    for target in targets {
        // The pid may have been reused since the scan: re-check it right before signalling.
        if !still_matches(procs, trust, user.as_str(), target) {
            continue;
        }
        match kill(Pid::from_raw(target.pid), Signal::SIGTERM) {
            Ok(()) => signalled.push(target.pid),
            Err(Errno::ESRCH) => {}
            Err(errno) => failure = failure.or(Some((target.pid, errno))),
        }
    }
    if !signalled.is_empty() {
        tracing::info!(%user, pids = ?signalled, "ended SSH sessions");
    }
    match failure {
        Some((pid, errno)) => Err(SessionError::Signal {
            pid,
            errno,
            signalled,
        }),
        None => Ok(signalled),
    }
}

/// The user's session processes now: monitors first, then connection processes without a
/// monitor, then the user-owned processes below either.
pub fn find_sessions(
    user: &UnixUser,
    trust: &SshdTrust,
) -> Result<Vec<SessionProcess>, SessionError> {
    let uid = user_uid(user)?;
    let snapshot = snapshot(Path::new("/proc"), trust, uid)?;
    Ok(select(&snapshot, user.as_str(), uid))
}

/// The user's uid.
pub fn user_uid(user: &UnixUser) -> Result<u32, SessionError> {
    match User::from_name(user.as_str()) {
        Ok(Some(found)) => Ok(found.uid.as_raw()),
        Ok(None) => Err(SessionError::NoSuchUser { user: user.clone() }),
        Err(errno) => Err(SessionError::UserLookup {
            user: user.clone(),
            errno,
        }),
    }
}

/// Classifies a process title (argv0, `/proc/PID/cmdline`) for `user`. Only the exact shapes
/// sshd writes match: `sshd: bob [priv]` is not a session of `bo` or of `bobby`. The title says
/// nothing about whether the process is sshd: see [`role`].
pub fn classify(cmdline: &[u8], user: &str) -> Option<Role> {
    // setproctitle leaves the title in argv[0], padded with NULs (or spaces on some builds).
    let title = cmdline.split(|&b| b == 0).next()?;
    let title = std::str::from_utf8(title).ok()?.trim_end_matches(' ');
    let rest = title
        .strip_prefix("sshd: ")
        .or_else(|| title.strip_prefix("sshd-session: "))?;
    if rest.strip_prefix(user)? == " [priv]" {
        return Some(Role::Monitor);
    }
    let ttys = rest.strip_prefix(user)?.strip_prefix('@')?;
    let tty_chars = |c: char| c.is_ascii_alphanumeric() || c == '/' || c == ',';
    (!ttys.is_empty() && ttys.chars().all(tty_chars)).then_some(Role::Connection)
}

/// What a process of a snapshot is to `user`'s sessions: a monitor is an sshd process running as
/// root titled `sshd: USER [priv]`; a connection process an sshd process running as `uid` titled
/// `sshd: USER@tty`. Anything not running an sshd executable is neither, whatever its title.
pub fn role(p: &ProcEntry, user: &str, uid: u32) -> Option<Role> {
    if !p.sshd {
        return None;
    }
    match classify(&p.title, user)? {
        Role::Monitor if p.uid == 0 => Some(Role::Monitor),
        Role::Connection if p.uid == uid => Some(Role::Connection),
        _ => None,
    }
}

fn process(p: &ProcEntry, role: Option<Role>) -> SessionProcess {
    SessionProcess {
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        role,
    }
}

/// The selection described in the module docs.
fn select(snapshot: &ProcSnapshot, user: &str, uid: u32) -> Vec<SessionProcess> {
    let mut roots = Vec::new();
    let mut below = Vec::new();
    for tree in session_trees(snapshot, user, uid) {
        roots.push(tree.root);
        below.extend(tree.below);
    }
    // Monitors first, then orphan connection processes (the trees' order), then the rest by pid.
    below.sort_unstable_by_key(|p| p.pid);
    roots.into_iter().chain(below).collect()
}

/// `user`'s sessions in `snapshot`: one tree per monitor or orphan connection process (monitors
/// first, each group by pid), with the processes of `uid` below it.
pub fn session_trees(snapshot: &ProcSnapshot, user: &str, uid: u32) -> Vec<SessionTree> {
    let all = &snapshot.processes;
    let roles: HashMap<i32, Role> = all
        .iter()
        .filter_map(|p| Some((p.pid, role(p, user, uid)?)))
        .collect();
    let monitors: BTreeSet<i32> = roles
        .iter()
        .filter(|(_, r)| **r == Role::Monitor)
        .map(|(pid, _)| *pid)
        .collect();
    // A connection process is a root of its own only without a monitor above it.
    let orphans: BTreeSet<i32> = all
        .iter()
        .filter(|p| roles.get(&p.pid) == Some(&Role::Connection))
        .filter(|p| !monitors.contains(&p.ppid))
        .map(|p| p.pid)
        .collect();
    let mut children: HashMap<i32, Vec<&ProcEntry>> = HashMap::new();
    for p in all {
        children.entry(p.ppid).or_default().push(p);
    }
    // `seen` guards against a cycle in a torn read.
    let mut seen: BTreeSet<i32> = monitors.union(&orphans).copied().collect();
    let mut out = Vec::new();
    for root in monitors.iter().chain(orphans.iter()) {
        let Some(entry) = snapshot.process(*root) else {
            continue;
        };
        let mut below = Vec::new();
        let mut queue = std::collections::VecDeque::from([*root]);
        while let Some(parent) = queue.pop_front() {
            for child in children.get(&parent).into_iter().flatten() {
                if child.uid == uid && seen.insert(child.pid) {
                    below.push(process(child, roles.get(&child.pid).copied()));
                    queue.push_back(child.pid);
                }
            }
        }
        out.push(SessionTree {
            root: process(entry, roles.get(root).copied()),
            below,
        });
    }
    out
}

/// Whether `pid` is still the process that was selected (same owner and role): one process
/// re-read right before it is signalled.
fn still_matches(proc_root: &Path, trust: &SshdTrust, user: &str, target: &SessionProcess) -> bool {
    procs::read_one(proc_root, trust, target.pid)
        .is_some_and(|now| now.uid == target.uid && role(&now, user, target.uid) == target.role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_of_the_users_sessions_match() {
        let cases: [(&[u8], Option<Role>); 8] = [
            (b"sshd: bob [priv]", Some(Role::Monitor)),
            (b"sshd: bob [priv]\0\0\0\0\0", Some(Role::Monitor)),
            (b"sshd: bob [priv]      ", Some(Role::Monitor)),
            (b"sshd: bob@pts/3", Some(Role::Connection)),
            (b"sshd: bob@notty\0", Some(Role::Connection)),
            (b"sshd: bob@pts/0,pts/1", Some(Role::Connection)),
            (b"sshd-session: bob [priv]", Some(Role::Monitor)),
            (b"sshd-session: bob@notty", Some(Role::Connection)),
        ];
        for (cmdline, want) in cases {
            assert_eq!(
                classify(cmdline, "bob"),
                want,
                "{}",
                String::from_utf8_lossy(cmdline)
            );
        }
    }

    #[test]
    fn other_titles_do_not_match() {
        for cmdline in [
            &b"sshd: bobby [priv]"[..],
            b"sshd: bo [priv]",
            b"sshd: bob@",
            b"sshd: bob@pts/0 extra",
            b"sshd: bob [preauth]",
            b"sshd: bob [net]",
            b"sshd: alice [priv]",
            b"sshd: alice@pts/0",
            b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
            b"/usr/sbin/sshd\0-D\0-f\0/etc/ssh/sshd_config",
            b"sshd:bob [priv]",
            b"bash\0-c\0sshd: bob [priv]",
            b"xsshd: bob [priv]",
            b"",
            b"\xffsshd: bob [priv]",
        ] {
            assert_eq!(
                classify(cmdline, "bob"),
                None,
                "{}",
                String::from_utf8_lossy(cmdline)
            );
        }
    }

    use crate::procs::tests::{SSHD, fake};

    const PY: &str = "/usr/bin/python3.11";

    fn take(r: &Path, uid: u32) -> ProcSnapshot {
        ProcSnapshot::take(r, &SshdTrust::default(), &[0, uid]).unwrap()
    }

    fn session_processes(r: &Path, user: &str, uid: u32) -> Vec<SessionProcess> {
        select(&take(r, uid), user, uid)
    }

    #[test]
    fn selects_monitors_orphans_and_the_users_processes_below_them() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("self")).unwrap(); // non-numeric entries are skipped
        fake(r, 1, 0, 0, "/sbin/init", "/sbin/init", &[]);
        fake(
            r,
            100,
            1,
            0,
            SSHD,
            "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
            &[],
        );
        // bob (uid 1001), session 1: monitor, connection, shell, command.
        fake(r, 200, 100, 0, SSHD, "sshd: bob [priv]", &[]);
        fake(r, 201, 200, 1001, SSHD, "sshd: bob@pts/0", &[]);
        fake(r, 202, 201, 1001, "/bin/bash", "-bash", &[]);
        fake(r, 203, 202, 1001, "/bin/sleep", "sleep\x00600", &[]);
        // Something root runs below bob's session (not bob's: left alone).
        fake(r, 204, 202, 0, "/usr/bin/sudo", "sudo\x00-i", &[]);
        // bob, session 2 without privilege separation: the connection process is the target.
        fake(r, 300, 100, 1001, SSHD, "sshd: bob@notty", &[]);
        // alice's session, and bob's fake monitor (wrong owner) and lookalike.
        fake(r, 400, 100, 0, SSHD, "sshd: alice [priv]", &[]);
        fake(r, 401, 400, 1002, SSHD, "sshd: alice@pts/1", &[]);
        fake(r, 500, 1, 1001, SSHD, "sshd: bob [priv]", &[]);
        fake(r, 501, 1, 1003, SSHD, "sshd: bob@pts/9", &[]);
        // Titled right, owned right, not sshd: a root python and bob's own python.
        fake(r, 510, 1, 0, PY, "sshd: bob [priv]", &[]);
        fake(r, 511, 1, 1001, PY, "sshd: bob@notty", &[]);
        // bob's process outside any session.
        fake(r, 600, 1, 1001, "/usr/bin/tmux", "tmux", &[]);

        let got = session_processes(r, "bob", 1001);
        let pids: Vec<i32> = got.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![200, 300, 201, 202, 203]);
        assert_eq!(got[0].role, Some(Role::Monitor));
        assert_eq!(got[1].role, Some(Role::Connection));
        assert_eq!(got[4].role, None);

        let alice = session_processes(r, "alice", 1002);
        assert_eq!(
            alice.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![400, 401]
        );
        assert!(session_processes(r, "carol", 1004).is_empty());
    }

    #[test]
    fn trees_group_the_same_processes_per_session() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fake(
            r,
            100,
            1,
            0,
            SSHD,
            "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
            &[],
        );
        fake(r, 200, 100, 0, SSHD, "sshd: bob [priv]", &[]);
        fake(r, 201, 200, 1001, SSHD, "sshd: bob@notty", &[]);
        fake(r, 202, 201, 1001, "/bin/sleep", "sleep\x00600", &[]);
        fake(
            r,
            210,
            100,
            0,
            "/usr/lib/openssh/sshd-session",
            "sshd-session: bob [priv]",
            &[],
        );
        fake(
            r,
            211,
            210,
            1001,
            "/usr/lib/openssh/sshd-session",
            "sshd-session: bob@pts/1",
            &[],
        );
        fake(r, 212, 211, 1001, "/bin/sh", "-sh", &[]);
        fake(r, 213, 212, 0, "/usr/bin/sudo", "sudo\x00-i", &[]);
        fake(r, 300, 100, 1001, SSHD, "sshd: bob@notty", &[]);
        fake(r, 301, 300, 1001, "/bin/cat", "cat", &[]);
        let trees = session_trees(&take(r, 1001), "bob", 1001);
        let shape: Vec<(i32, Vec<i32>)> = trees
            .iter()
            .map(|t| (t.root.pid, t.below.iter().map(|p| p.pid).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (200, vec![201, 202]),
                (210, vec![211, 212]),
                (300, vec![301])
            ]
        );
        assert!(trees[1].contains(212) && !trees[1].contains(202));
        // The same processes as the flat selection.
        let mut flat: Vec<i32> = trees
            .iter()
            .flat_map(|t| t.processes())
            .map(|p| p.pid)
            .collect();
        flat.sort_unstable();
        let mut want: Vec<i32> = session_processes(r, "bob", 1001)
            .iter()
            .map(|p| p.pid)
            .collect();
        want.sort_unstable();
        assert_eq!(flat, want);
    }

    #[test]
    fn a_reused_pid_is_not_signalled() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fake(r, 200, 1, 0, SSHD, "sshd: bob [priv]", &[]);
        fake(r, 201, 200, 1001, "/bin/sleep", "sleep", &[]);
        let trust = SshdTrust::default();
        let trees = session_trees(&take(r, 1001), "bob", 1001);
        let [monitor, below] = [trees[0].root, trees[0].below[0]];
        assert!(still_matches(r, &trust, "bob", &monitor));
        assert!(still_matches(r, &trust, "bob", &below));
        // pid 200 is now bob's python under the same title; 201 is root's.
        std::fs::remove_dir_all(r.join("200")).unwrap();
        std::fs::remove_dir_all(r.join("201")).unwrap();
        fake(r, 200, 1, 1001, PY, "sshd: bob [priv]", &[]);
        fake(r, 201, 1, 0, "/bin/sleep", "sleep", &[]);
        assert!(!still_matches(r, &trust, "bob", &monitor));
        assert!(!still_matches(r, &trust, "bob", &below));
    }

    #[test]
    fn a_missing_user_is_an_error_not_a_panic() {
        let user: UnixUser = "kw-no-such-user-x".parse().unwrap();
        assert!(matches!(
            end_sessions(&user, &SshdTrust::default()),
            Err(SessionError::NoSuchUser { .. })
        ));
    }
}
