//! Revocation, exactly: which of a user's live SSH sessions a raised session epoch ends.
//!
//! The control plane raises a user's `session_epoch` on revoke and regenerate, and lists every
//! key it replaced or revoked in `denied_fingerprints`. The login log tells which key opened
//! which session ([`SessionAttribution`], from the open sessions the audit tracks), and `/proc`
//! tells which processes are which session ([`crate::sessions::find_session_trees`], and
//! [`super::proc_net::connection_processes`] for a session known only by its client's address).
//!
//! The rule, per session (one `[priv]` monitor and the user's processes below it):
//!
//! - opened, according to the log, with a key in `denied_fingerprints`: **ended**;
//! - opened, according to the log, with another key, or without a key (password,
//!   keyboard-interactive): **left alone**;
//! - not attributable (opened before the agent read the log, a line lost, the audit off, the
//!   connection not found in `/proc`): **ended**, as every session was before attribution
//!   existed. Ending a session that could have stayed costs a reconnect; keeping one opened with a
//!   revoked key would defeat the revocation.
//!
//! A session the log ties both to a denied key and to another one is ended. This also holds when
//! the log lies: `/var/log/auth.log` takes lines from any local user (`logger -t 'sshd[1]'`), so
//! a user logged in with a revoked key could log a `Disconnected` and then an `Accepted … with a
//! good key` for their own connection. Therefore a login's record is never deleted by a
//! `Disconnected` line, only marked closed, and a closed record still counts as evidence that
//! its connection was opened with a denied key (never as evidence for keeping it); records are
//! forgotten only once their connection is gone from `/proc/net/tcp`. The journald source
//! takes accepted logins only from root processes named sshd (fields the journal sets itself).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use keyward_common::UnixUser;
use keyward_common::proto::LoginMethod;

use super::proc_net;
use super::spool::OpenSession;
use crate::sessions::{self, SessionError, SessionTree};

/// What the log says about a user's open sessions, for one revocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionAttribution {
    pub sessions: Vec<AttributedSession>,
}

/// A session the log says is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributedSession {
    pub source: SocketAddr,
    /// The monitor's pid, when the log names it.
    pub pid: Option<i32>,
    pub method: LoginMethod,
    /// Empty for a login without a key.
    pub fingerprint: String,
    /// Opened with a key in the user's `denied_fingerprints`.
    pub denied: bool,
}

impl SessionAttribution {
    /// Nothing known: every session is ended.
    pub fn unknown() -> Self {
        Self::default()
    }

    /// The sessions of `user` among `open`, judged against `denied`.
    pub fn of_user<'a>(
        open: impl IntoIterator<Item = &'a OpenSession>,
        user: &str,
        denied: &[String],
    ) -> Self {
        let sessions = open
            .into_iter()
            .filter(|s| s.user == user)
            .filter_map(|s| {
                let source = SocketAddr::new(s.ip.parse().ok()?, u16::try_from(s.port).ok()?);
                let is_denied = !s.fingerprint.is_empty() && denied.contains(&s.fingerprint);
                // A closed record only ever speaks against its connection.
                (!s.closed || is_denied).then(|| AttributedSession {
                    source,
                    pid: (s.pid != 0).then(|| i32::try_from(s.pid).ok()).flatten(),
                    method: LoginMethod::try_from(s.method).unwrap_or(LoginMethod::Other),
                    denied: is_denied,
                    fingerprint: s.fingerprint.clone(),
                })
            })
            .collect();
        SessionAttribution { sessions }
    }
}

/// What happens to one session tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Opened with a key that is not denied, or without a key.
    Keep { source: SocketAddr },
    /// Opened with a denied key.
    Denied {
        source: SocketAddr,
        fingerprint: String,
    },
    /// The log does not say how it was opened.
    Unknown,
}

impl Verdict {
    pub fn ends(&self) -> bool {
        !matches!(self, Verdict::Keep { .. })
    }
}

/// Judges each tree: `holders` names the processes holding an attributed session's connection
/// (used when the log gave no pid, or its pid is not a tree's root).
pub fn decide(
    trees: &[SessionTree],
    attribution: &SessionAttribution,
    mut holders: impl FnMut(&AttributedSession) -> Vec<i32>,
) -> Vec<Verdict> {
    let mut verdicts: BTreeMap<usize, Verdict> = BTreeMap::new();
    for session in &attribution.sessions {
        let by_pid = session
            .pid
            .and_then(|pid| trees.iter().position(|t| t.root.pid == pid));
        let claimed: Vec<usize> = match by_pid {
            Some(index) => vec![index],
            None => {
                let pids = holders(session);
                (0..trees.len())
                    .filter(|&i| pids.iter().any(|&pid| trees[i].contains(pid)))
                    .collect()
            }
        };
        for index in claimed {
            let verdict = if session.denied {
                Verdict::Denied {
                    source: session.source,
                    fingerprint: session.fingerprint.clone(),
                }
            } else {
                Verdict::Keep {
                    source: session.source,
                }
            };
            // A denial is never overridden.
            let entry = verdicts.entry(index).or_insert_with(|| verdict.clone());
            if verdict.ends() {
                *entry = verdict;
            }
        }
    }
    (0..trees.len())
        .map(|i| verdicts.remove(&i).unwrap_or(Verdict::Unknown))
        .collect()
}

/// Ends `user`'s sessions that the rule (module docs) ends; returns how many sessions.
pub fn end_revoked_sessions(
    user: &UnixUser,
    attribution: &SessionAttribution,
) -> Result<u32, SessionError> {
    let trees = sessions::find_session_trees(user)?;
    if trees.is_empty() {
        return Ok(0);
    }
    let verdicts = decide(&trees, attribution, |session| {
        proc_net::connection_processes(Path::new("/proc"), session.source).unwrap_or_else(|error| {
            tracing::warn!(source = %session.source, %error, "cannot find the session's processes; it counts as unattributed");
            Vec::new()
        })
    });
    let mut ending = Vec::new();
    for (tree, verdict) in trees.into_iter().zip(verdicts) {
        let pid = tree.root.pid;
        match &verdict {
            Verdict::Keep { source } => {
                tracing::info!(%user, pid, %source, "leaving a session opened with a key that is not revoked")
            }
            Verdict::Denied {
                source,
                fingerprint,
            } => {
                tracing::info!(%user, pid, %source, %fingerprint, "ending a session opened with a revoked key")
            }
            Verdict::Unknown => {
                tracing::info!(%user, pid, "ending a session the login log does not attribute")
            }
        }
        if verdict.ends() {
            ending.push(tree);
        }
    }
    sessions::end_session_trees(user, &ending)?;
    Ok(u32::try_from(ending.len()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{Role, SessionProcess};

    fn tree(root: i32, below: &[i32]) -> SessionTree {
        let p = |pid, ppid, role| SessionProcess {
            pid,
            ppid,
            uid: 1000,
            role,
        };
        SessionTree {
            root: SessionProcess {
                uid: 0,
                ..p(root, 1, Some(Role::Monitor))
            },
            below: below.iter().map(|&pid| p(pid, root, None)).collect(),
        }
    }

    fn session(port: u32, user: &str, fingerprint: &str, pid: u32) -> OpenSession {
        OpenSession {
            ip: "127.0.0.1".into(),
            port,
            user: user.into(),
            method: LoginMethod::Publickey as i32,
            key_type: "ED25519".into(),
            fingerprint: fingerprint.into(),
            pid,
            cursor: 1,
            closed: false,
        }
    }

    #[test]
    fn only_denied_and_unattributed_sessions_end() {
        let trees = [tree(100, &[101, 102]), tree(200, &[201]), tree(300, &[301])];
        let open = [
            session(1000, "bob", "SHA256:old", 0),
            session(2000, "bob", "SHA256:new", 0),
            session(3000, "alice", "SHA256:old", 0),
        ];
        let attribution = SessionAttribution::of_user(&open, "bob", &["SHA256:old".into()]);
        assert_eq!(attribution.sessions.len(), 2);
        // Client port 1000 is held by the first tree's processes, 2000 by the second's; the
        // third tree is a session the log never mentioned.
        let verdicts = decide(&trees, &attribution, |s| match s.source.port() {
            1000 => vec![100, 101],
            2000 => vec![200, 201],
            _ => vec![],
        });
        assert_eq!(
            verdicts,
            vec![
                Verdict::Denied {
                    source: "127.0.0.1:1000".parse().unwrap(),
                    fingerprint: "SHA256:old".into()
                },
                Verdict::Keep {
                    source: "127.0.0.1:2000".parse().unwrap()
                },
                Verdict::Unknown,
            ]
        );
        assert_eq!(
            verdicts.iter().map(Verdict::ends).collect::<Vec<_>>(),
            vec![true, false, true]
        );
    }

    #[test]
    fn a_logged_pid_names_the_tree_without_proc_net() {
        let trees = [tree(100, &[101]), tree(200, &[201])];
        let open = [
            session(1000, "bob", "SHA256:new", 200),
            session(2000, "bob", "SHA256:old", 100),
        ];
        let attribution = SessionAttribution::of_user(&open, "bob", &["SHA256:old".into()]);
        let verdicts = decide(&trees, &attribution, |_| panic!("not needed"));
        assert!(verdicts[0].ends());
        assert!(!verdicts[1].ends());
        // A pid that is no tree's root (reused, or the log's pid is not the monitor): the
        // connection is looked up instead.
        let stale = [session(1000, "bob", "SHA256:new", 999)];
        let attribution = SessionAttribution::of_user(&stale, "bob", &[]);
        let verdicts = decide(&trees, &attribution, |_| vec![201]);
        assert_eq!(verdicts[0], Verdict::Unknown);
        assert!(!verdicts[1].ends());
    }

    #[test]
    fn keyless_logins_stay_and_a_denial_wins_a_conflict() {
        let trees = [tree(100, &[]), tree(200, &[])];
        let mut password = session(1000, "bob", "", 0);
        password.method = LoginMethod::Password as i32;
        let open = [
            password,
            session(2000, "bob", "SHA256:new", 0),
            session(2001, "bob", "SHA256:old", 0),
        ];
        let attribution = SessionAttribution::of_user(&open, "bob", &["SHA256:old".into()]);
        let verdicts = decide(&trees, &attribution, |s| match s.source.port() {
            1000 => vec![100],
            _ => vec![200],
        });
        assert!(
            !verdicts[0].ends(),
            "a password session is not a revoked key's"
        );
        assert!(verdicts[1].ends(), "claimed by a revoked key too");
        // Nothing known: everything ends (the behaviour without the audit).
        let none = decide(&trees, &SessionAttribution::unknown(), |_| vec![100, 200]);
        assert_eq!(none, vec![Verdict::Unknown, Verdict::Unknown]);
    }

    #[test]
    fn forged_lines_cannot_save_a_revoked_session() {
        // The genuine login with the revoked key, then forged "Disconnected" (closing it) and
        // "Accepted with a good key" lines for the same connection.
        let trees = [tree(100, &[101])];
        let mut genuine = session(1000, "bob", "SHA256:old", 0);
        genuine.closed = true;
        let forged = session(1000, "bob", "SHA256:new", 0);
        let attribution =
            SessionAttribution::of_user(&[genuine, forged], "bob", &["SHA256:old".into()]);
        let verdicts = decide(&trees, &attribution, |_| vec![100]);
        assert!(verdicts[0].ends(), "{verdicts:?}");
        // A closed record of a key that is not denied is no reason to keep anything.
        let mut old = session(1000, "bob", "SHA256:new", 0);
        old.closed = true;
        let attribution = SessionAttribution::of_user(&[old], "bob", &[]);
        assert!(attribution.sessions.is_empty());
    }
}
