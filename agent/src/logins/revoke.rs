//! Revocation, exactly: which of a user's live SSH sessions a raised session epoch ends.
//!
//! The control plane raises a user's `session_epoch` on revoke and regenerate. The caller names
//! the keys that are **valid** for the user right now (what the apply just left in its
//! `authorized_keys`). The login audit tells which key opened which session
//! ([`SessionAttribution`], from the verified login records it keeps), and one read of `/proc`
//! ([`ProcSnapshot`]) tells which processes are which session and which connection each holds.
//!
//! The rule, per session (one `[priv]` monitor and the user's processes below it): it is
//! **kept** only when verified evidence ties it to a key that is valid for the user now, or to a
//! login without a key (password, keyboard-interactive). Everything else is **ended**:
//!
//! - a record ties it to a key that is not valid (revoked, replaced, never the user's);
//! - no verified record ties it to anything (opened before the agent read the log, a line lost,
//!   the audit off, the login only claimed by an unverified line, the connection not found in
//!   `/proc`);
//! - the user's records overflowed the audit's table ([`SessionAttribution::incomplete`]): what
//!   the table no longer holds might have spoken against any session;
//! - two records claim it and one of them is not for keeping (a closed record, a record whose
//!   logged pid is not the session's monitor, a record of another key).
//!
//! Ending a session that could have stayed costs a reconnect; keeping one opened with a revoked
//! key would defeat the revocation.
//!
//! Why two records can claim one connection: a log file takes lines from others than sshd
//! (`logger -t 'sshd[1]'` into `/var/log/auth.log`, a key-exchange offer with newlines into an
//! `sshd -E` file). A line naming the user and a live connection of theirs is corroborated by
//! `/proc` like a genuine one (the audit cannot tell which key sshd really checked), so a user
//! logged in with a key about to be revoked could log an `Accepted … with a good key` for their
//! own connection. Therefore a login's record is never deleted by a `Disconnected` line or a later
//! login, only marked closed; a closed record still claims its connection (never for keeping);
//! and any claim that does not keep a session ends it. Records are forgotten only once their
//! connection is gone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use keyward_common::UnixUser;
use keyward_common::proto::LoginMethod;

use super::spool::OpenSession;
use crate::config::SshdTrust;
use crate::procs::ProcSnapshot;
use crate::sessions::{self, SessionError, SessionTree};

/// What the login audit says about a user's open sessions, for one revocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionAttribution {
    /// The user's verified login records.
    pub sessions: Vec<AttributedSession>,
    /// Records of the user were lost when the audit's table overflowed: every session ends.
    pub incomplete: bool,
    /// What counts as sshd when `/proc` is read.
    pub trust: SshdTrust,
}

/// A session the login audit has a verified record of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributedSession {
    pub source: SocketAddr,
    /// The monitor's pid, when the log names it.
    pub pid: Option<i32>,
    pub method: LoginMethod,
    /// Empty for a login without a key.
    pub fingerprint: String,
    /// sshd logged its end, or another login came from the same address and port.
    pub closed: bool,
}

impl SessionAttribution {
    /// Nothing known: every session is ended.
    pub fn unknown() -> Self {
        Self::default()
    }

    /// The verified records of `user` among `open`.
    pub fn of_user<'a>(
        open: impl IntoIterator<Item = &'a OpenSession>,
        user: &str,
        incomplete: bool,
        trust: SshdTrust,
    ) -> Self {
        let sessions = open
            .into_iter()
            .filter(|s| s.user == user && s.verified)
            .filter_map(|s| {
                let source = SocketAddr::new(s.ip.parse().ok()?, u16::try_from(s.port).ok()?);
                Some(AttributedSession {
                    source,
                    pid: (s.pid != 0).then(|| i32::try_from(s.pid).ok()).flatten(),
                    method: LoginMethod::try_from(s.method).unwrap_or(LoginMethod::Other),
                    fingerprint: s.fingerprint.clone(),
                    closed: s.closed,
                })
            })
            .collect();
        SessionAttribution {
            sessions,
            incomplete,
            trust,
        }
    }
}

/// What happens to one session tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Verified evidence ties it to a valid key, or to a login without a key.
    Keep { source: SocketAddr },
    /// A record ties it to a key that is not valid for the user now (empty: a login of another
    /// kind without a key).
    NotValid {
        source: SocketAddr,
        fingerprint: String,
    },
    /// A record claims it that cannot keep it: closed, or naming another monitor's pid.
    Contested { source: SocketAddr },
    /// No verified record ties it to a login.
    Unknown,
    /// The user's records overflowed the audit's table.
    Incomplete,
}

impl Verdict {
    pub fn ends(&self) -> bool {
        !matches!(self, Verdict::Keep { .. })
    }
}

/// What one record says about a tree it claims.
fn claim(session: &AttributedSession, tree: &SessionTree, valid: &[String]) -> Verdict {
    let source = session.source;
    if session.closed || session.pid.is_some_and(|pid| pid != tree.root.pid) {
        return Verdict::Contested { source };
    }
    let keyless = matches!(
        session.method,
        LoginMethod::Password | LoginMethod::KeyboardInteractive
    );
    if session.fingerprint.is_empty() && keyless
        || !session.fingerprint.is_empty() && valid.contains(&session.fingerprint)
    {
        Verdict::Keep { source }
    } else {
        Verdict::NotValid {
            source,
            fingerprint: session.fingerprint.clone(),
        }
    }
}

/// Judges each tree against `valid`, the fingerprints valid for the user now: `holders` names
/// the sshd processes holding a record's connection (from the revocation's one snapshot).
pub fn decide(
    trees: &[SessionTree],
    attribution: &SessionAttribution,
    valid: &[String],
    mut holders: impl FnMut(&AttributedSession) -> Vec<i32>,
) -> Vec<Verdict> {
    if attribution.incomplete {
        return vec![Verdict::Incomplete; trees.len()];
    }
    let mut verdicts: BTreeMap<usize, Verdict> = BTreeMap::new();
    for session in &attribution.sessions {
        let pids = holders(session);
        for (index, tree) in trees.iter().enumerate() {
            if !pids.iter().any(|&pid| tree.contains(pid)) {
                continue;
            }
            let verdict = claim(session, tree, valid);
            // A claim that ends a session is never overridden.
            let entry = verdicts.entry(index).or_insert_with(|| verdict.clone());
            if verdict.ends() && !entry.ends() {
                *entry = verdict;
            }
        }
    }
    (0..trees.len())
        .map(|i| verdicts.remove(&i).unwrap_or(Verdict::Unknown))
        .collect()
}

/// Ends `user`'s sessions that the rule (module docs) ends, with `valid` the fingerprints valid
/// for the user now; returns how many sessions. Reads `/proc` once ([`ProcSnapshot`]), plus one
/// re-read of each process right before it is signalled.
pub fn end_revoked_sessions(
    user: &UnixUser,
    attribution: &SessionAttribution,
    valid: &[String],
) -> Result<u32, SessionError> {
    let uid = sessions::user_uid(user)?;
    let snapshot = sessions::snapshot(Path::new("/proc"), &attribution.trust, uid)?;
    end_in_snapshot(&snapshot, user, uid, attribution, valid)
}

/// [`end_revoked_sessions`] on a snapshot already taken.
pub fn end_in_snapshot(
    snapshot: &ProcSnapshot,
    user: &UnixUser,
    uid: u32,
    attribution: &SessionAttribution,
    valid: &[String],
) -> Result<u32, SessionError> {
    let trees = sessions::session_trees(snapshot, user.as_str(), uid);
    if trees.is_empty() {
        return Ok(0);
    }
    let verdicts = decide(&trees, attribution, valid, |session| {
        snapshot.holders(session.source)
    });
    let mut ending = Vec::new();
    for (tree, verdict) in trees.into_iter().zip(verdicts) {
        let pid = tree.root.pid;
        match &verdict {
            Verdict::Keep { source } => {
                tracing::info!(%user, pid, %source, "leaving a session opened with a key that is valid")
            }
            Verdict::NotValid {
                source,
                fingerprint,
            } => {
                tracing::info!(%user, pid, %source, %fingerprint, "ending a session opened with a key that is not valid")
            }
            Verdict::Contested { source } => {
                tracing::info!(%user, pid, %source, "ending a session more than one login claims")
            }
            Verdict::Unknown => {
                tracing::info!(%user, pid, "ending a session no verified login accounts for")
            }
            Verdict::Incomplete => {
                tracing::info!(%user, pid, "ending a session: the user's login records overflowed")
            }
        }
        if verdict.ends() {
            ending.push(tree);
        }
    }
    sessions::end_session_trees(user, &attribution.trust, &ending)?;
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
            verified: true,
        }
    }

    fn of_bob(open: &[OpenSession]) -> SessionAttribution {
        SessionAttribution::of_user(open, "bob", false, SshdTrust::default())
    }

    const NEW: &str = "SHA256:new";

    #[test]
    fn only_sessions_of_valid_keys_stay() {
        let trees = [tree(100, &[101, 102]), tree(200, &[201]), tree(300, &[301])];
        let open = [
            session(1000, "bob", "SHA256:old", 0),
            session(2000, "bob", NEW, 0),
            session(3000, "alice", NEW, 0),
        ];
        let attribution = of_bob(&open);
        assert_eq!(attribution.sessions.len(), 2);
        // Client port 1000 is held by the first tree's processes, 2000 by the second's; the
        // third tree is a session the log never mentioned.
        let verdicts = decide(&trees, &attribution, &[NEW.into()], |s| {
            match s.source.port() {
                1000 => vec![100, 101],
                2000 => vec![200, 201],
                _ => vec![],
            }
        });
        assert_eq!(
            verdicts,
            vec![
                Verdict::NotValid {
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
        // With no key valid any more, nothing stays.
        let none = decide(&trees, &attribution, &[], |s| match s.source.port() {
            1000 => vec![100],
            2000 => vec![200],
            _ => vec![],
        });
        assert!(none.iter().all(Verdict::ends), "{none:?}");
    }

    #[test]
    fn unverified_records_and_lost_connections_keep_nothing() {
        let trees = [tree(100, &[101])];
        let mut forged = session(1000, "bob", NEW, 0);
        forged.verified = false;
        let attribution = of_bob(&[forged]);
        assert!(attribution.sessions.is_empty());
        assert_eq!(
            decide(&trees, &attribution, &[NEW.into()], |_| vec![100]),
            vec![Verdict::Unknown]
        );
        // A verified record whose connection is not found in /proc.
        let attribution = of_bob(&[session(1000, "bob", NEW, 0)]);
        assert_eq!(
            decide(&trees, &attribution, &[NEW.into()], |_| vec![]),
            vec![Verdict::Unknown]
        );
        // The table overflowed for bob: even a session of a valid key ends.
        let mut incomplete = of_bob(&[session(1000, "bob", NEW, 0)]);
        incomplete.incomplete = true;
        assert_eq!(
            decide(&trees, &incomplete, &[NEW.into()], |_| vec![100]),
            vec![Verdict::Incomplete]
        );
    }

    #[test]
    fn a_logged_pid_must_be_the_sessions_monitor() {
        let trees = [tree(100, &[101]), tree(200, &[201])];
        let open = [
            session(1000, "bob", NEW, 100),
            session(2000, "bob", NEW, 999),
        ];
        let verdicts = decide(&trees, &of_bob(&open), &[NEW.into()], |s| {
            match s.source.port() {
                1000 => vec![100, 101],
                _ => vec![200, 201],
            }
        });
        assert!(!verdicts[0].ends());
        assert_eq!(
            verdicts[1],
            Verdict::Contested {
                source: "127.0.0.1:2000".parse().unwrap()
            }
        );
    }

    #[test]
    fn keyless_logins_stay_and_an_ending_claim_wins_a_conflict() {
        let trees = [tree(100, &[]), tree(200, &[]), tree(300, &[])];
        let mut password = session(1000, "bob", "", 0);
        password.method = LoginMethod::Password as i32;
        let mut other = session(3000, "bob", "", 0);
        other.method = LoginMethod::Other as i32;
        let open = [
            password,
            session(2000, "bob", NEW, 0),
            session(2000, "bob", "SHA256:old", 0),
            other,
        ];
        let verdicts = decide(&trees, &of_bob(&open), &[NEW.into()], |s| {
            match s.source.port() {
                1000 => vec![100],
                2000 => vec![200],
                _ => vec![300],
            }
        });
        assert!(
            !verdicts[0].ends(),
            "a password session is not a revoked key's"
        );
        assert!(verdicts[1].ends(), "claimed by a key that is not valid too");
        assert!(verdicts[2].ends(), "a keyless login of another kind");
        // Nothing known: everything ends (the behaviour without the audit).
        let none = decide(
            &trees,
            &SessionAttribution::unknown(),
            &[NEW.into()],
            |_| vec![100, 200, 300],
        );
        assert!(none.iter().all(|v| *v == Verdict::Unknown));
    }

    #[test]
    fn forged_lines_cannot_save_a_revoked_session() {
        // The genuine login with the revoked key, then forged "Disconnected" (closing it) and
        // "Accepted with a good key" lines for the same connection.
        let trees = [tree(100, &[101])];
        let mut genuine = session(1000, "bob", "SHA256:old", 0);
        genuine.closed = true;
        let forged = session(1000, "bob", NEW, 0);
        let verdicts = decide(&trees, &of_bob(&[genuine, forged]), &[NEW.into()], |_| {
            vec![100]
        });
        assert!(verdicts[0].ends(), "{verdicts:?}");
        // A closed record of a valid key is no reason to keep anything.
        let mut old = session(1000, "bob", NEW, 0);
        old.closed = true;
        let verdicts = decide(&trees, &of_bob(&[old]), &[NEW.into()], |_| vec![100]);
        assert!(verdicts[0].ends());
    }

    #[test]
    fn a_snapshot_decides_every_session() {
        use crate::procs::tests::{SSHD, fake};
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("net")).unwrap();
        // sshd on :2299 (0x08FB); bob's sessions from ports 0xC2A8 and 0xC2A9; bob's python
        // titled as a monitor, holding a connection from 0xC2AA to sshd's port.
        std::fs::write(
            r.join("net/tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:08FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0
   1: 0100007F:08FB 0100007F:C2A8 01 00000000:00000000 00:00000000 00000000     0        0 41100 1 0
   2: 0100007F:08FB 0100007F:C2A9 01 00000000:00000000 00:00000000 00000000     0        0 41200 1 0
   3: 0100007F:08FB 0100007F:C2AA 01 00000000:00000000 00:00000000 00000000     0        0 41300 1 0
",
        )
        .unwrap();
        fake(
            r,
            100,
            1,
            0,
            SSHD,
            "sshd: /usr/sbin/sshd -D [listener]",
            &[41001],
        );
        fake(r, 200, 100, 0, SSHD, "sshd: bob [priv]", &[41100]);
        fake(r, 201, 200, 1001, SSHD, "sshd: bob@notty", &[41100]);
        fake(r, 300, 100, 0, SSHD, "sshd: bob [priv]", &[41200]);
        fake(
            r,
            400,
            1,
            1001,
            "/usr/bin/python3",
            "sshd: bob [priv]",
            &[41300],
        );
        let snapshot = ProcSnapshot::take(r, &SshdTrust::default(), &[0, 1001]).unwrap();
        let trees = sessions::session_trees(&snapshot, "bob", 1001);
        assert_eq!(
            trees.iter().map(|t| t.root.pid).collect::<Vec<_>>(),
            vec![200, 300]
        );
        let open = [
            session(0xC2A8, "bob", NEW, 0),
            session(0xC2A9, "bob", "SHA256:old", 0),
            // A record for the python's connection ties nothing to any session.
            session(0xC2AA, "bob", NEW, 0),
        ];
        let verdicts = decide(&trees, &of_bob(&open), &[NEW.into()], |s| {
            snapshot.holders(s.source)
        });
        assert_eq!(
            verdicts.iter().map(Verdict::ends).collect::<Vec<_>>(),
            vec![false, true]
        );
    }
}
