//! Revocation, exactly: which of a user's live SSH sessions a raised session epoch ends.
//!
//! The control plane raises a user's `session_epoch` on revoke and regenerate (of a key or of a
//! certificate). The caller says what is **valid** for the user right now ([`ValidNow`]): the
//! keys the apply just left in its `authorized_keys`, and of the certificates, which key ids
//! keyward revoked and which keys it denied. The login audit tells which key opened which session
//! ([`SessionAttribution`], from the verified login records it keeps), and one read of `/proc`
//! ([`ProcSnapshot`]) tells which processes are which session and which connection each holds.
//!
//! The rule, per session (one `[priv]` monitor and the user's processes below it): it is
//! **kept** only when verified evidence ties it to a key that is valid for the user now, to a
//! certificate that is (its key id not revoked, its certified key not denied), or to a login
//! without a key (password, keyboard-interactive). Everything else is **ended**:
//!
//! - a record ties it to a key that is not valid (revoked, replaced, never the user's), or to a
//!   certificate whose key id is revoked or whose certified key is denied (a certified key is
//!   never in `authorized_keys`: sshd checked the certificate, so its key id is what counts);
//! - no verified record ties it to anything (opened before the agent read the log, a line lost,
//!   the audit off, the login only claimed by an unverified line, the connection not found in
//!   `/proc`);
//! - the user's records overflowed the audit's table ([`SessionAttribution::incomplete`]): what
//!   the table no longer holds might have spoken against any session;
//! - two records claim it and one of them is not for keeping (a closed record, a record whose
//!   logged pid is not the session's monitor, a record of another key).
//!
//! A revoked user (`ManagedUser.revoked`) keeps no session of a key or a certificate.
//!
//! A certificate's key id is compared as sshd logged it: sshd escapes control characters, bytes
//! outside ASCII and backslashes with a backslash, so a logged key id with a backslash may not be
//! the certificate's own. Such a certificate's session is kept only while the user has no
//! revoked certificate at all (keyward's own key ids, `keyward:{tenant}:{kind}:{n}`, have none).
//! A certificate line whose key id was too long to trust ([`keyward_common::sshd_log`]) carries
//! no key id and counts as a login by its certified key, which is never valid: it ends.
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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use keyward_common::UnixUser;
use keyward_common::proto::LoginMethod;

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
    /// Empty for a login without a key; the certified key's for a certificate.
    pub fingerprint: String,
    /// The certificate's key id (as sshd logged it) for a login by certificate.
    pub certificate_id: Option<String>,
    /// The fingerprint of the CA that signed that certificate, as sshd logged it.
    pub certificate_ca: Option<String>,
    /// sshd logged its end, or another login came from the same address and port.
    pub closed: bool,
}

/// What is valid for a user now, which a session must be tied to to stay (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidNow {
    /// Fingerprints of the keys valid for the user now: the managed keys the apply left in the
    /// file (not past their grace period) and the user's own.
    pub keys: Vec<String>,
    /// Key ids of certificates keyward revoked that may still be within their validity, for the
    /// user's principals (`ManagedUser.revoked_certificate_ids`; a set: it is looked up once per
    /// login record, and may be long).
    pub revoked_certificate_ids: BTreeSet<String>,
    /// Fingerprints keyward denied (`ManagedUser.denied_fingerprints`): a certificate of one of
    /// these keys keeps no session.
    pub denied_fingerprints: Vec<String>,
    /// The user's keyward key is revoked (`ManagedUser.revoked`: every session of the user
    /// ends): no certificate keeps a session either.
    pub user_revoked: bool,
    /// Fingerprints of the CA keys the state has sshd trust (`SshdFiles.user_ca_keys`): a
    /// certificate of any other CA (one a user named in its own `authorized_keys` with
    /// `cert-authority`, say) keeps no session.
    pub trusted_cas: Vec<String>,
    /// The user's principals (`ManagedUser.principals` and, for a bastion's jump user, the names
    /// of its `jump_principals`): a certificate keeps a session only when its key id is keyward's
    /// for one of them (`{principal}:{n}`).
    pub principals: Vec<String>,
}

impl ValidNow {
    /// Only `keys` are valid; no certificate is revoked, no key denied.
    pub fn keys_only(keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            keys: keys.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Whether a certificate with `key_id` signed by `ca` is one keyward issued for this user:
    /// the CA is one the state trusts and the key id one of keyward's for the user's principals.
    fn certificate_is_keywards(&self, key_id: &str, ca: Option<&str>) -> bool {
        let trusted = ca.is_some_and(|ca| self.trusted_cas.iter().any(|t| t == ca));
        let ours = self.principals.iter().any(|p| {
            key_id
                .strip_prefix(p.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        trusted && ours
    }

    /// Whether a certificate with `key_id` (as sshd logged it) may be one keyward revoked.
    fn certificate_revoked(&self, key_id: &str) -> bool {
        if self.user_revoked {
            return true;
        }
        if self.revoked_certificate_ids.is_empty() {
            return false;
        }
        // Escaped by sshd's log: not comparable with the certificate's own key id.
        key_id.contains('\\') || self.revoked_certificate_ids.contains(key_id)
    }
}

impl SessionAttribution {
    /// Nothing known: every session is ended.
    pub fn unknown() -> Self {
        Self::default()
    }
}

/// What happens to one session tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Verified evidence ties it to a valid key, or to a login without a key.
    Keep { source: SocketAddr },
    /// A record ties it to a key that is not valid for the user now (empty: a login of another
    /// kind without a key), or to a certificate of a denied key.
    NotValid {
        source: SocketAddr,
        fingerprint: String,
    },
    /// A record ties it to a certificate whose key id is revoked (or, escaped in the log, may
    /// be: module docs), or of a revoked user.
    RevokedCertificate { source: SocketAddr, key_id: String },
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
fn claim(session: &AttributedSession, tree: &SessionTree, valid: &ValidNow) -> Verdict {
    let source = session.source;
    if session.closed || session.pid.is_some_and(|pid| pid != tree.root.pid) {
        return Verdict::Contested { source };
    }
    let not_valid = || Verdict::NotValid {
        source,
        fingerprint: session.fingerprint.clone(),
    };
    if let Some(key_id) = &session.certificate_id
        && session.method == LoginMethod::Publickey
    {
        return if valid.certificate_revoked(key_id) {
            Verdict::RevokedCertificate {
                source,
                key_id: key_id.clone(),
            }
        } else if session.fingerprint.is_empty()
            || valid.denied_fingerprints.contains(&session.fingerprint)
            || !valid.certificate_is_keywards(key_id, session.certificate_ca.as_deref())
        {
            not_valid()
        } else {
            Verdict::Keep { source }
        };
    }
    let keyless = matches!(
        session.method,
        LoginMethod::Password | LoginMethod::KeyboardInteractive
    );
    if session.fingerprint.is_empty() && keyless
        || !session.fingerprint.is_empty() && valid.keys.contains(&session.fingerprint)
    {
        Verdict::Keep { source }
    } else {
        not_valid()
    }
}

/// Judges each tree against what is `valid` for the user now: `holders` names the sshd
/// processes holding a record's connection (from the revocation's one snapshot).
pub fn decide(
    trees: &[SessionTree],
    attribution: &SessionAttribution,
    valid: &ValidNow,
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

/// Ends `user`'s sessions that the rule (module docs) ends, with `valid` what is valid for the
/// user now; returns how many sessions. Reads `/proc` once ([`ProcSnapshot`]), plus one re-read
/// of each process right before it is signalled.
pub fn end_revoked_sessions(
    user: &UnixUser,
    attribution: &SessionAttribution,
    valid: &ValidNow,
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
    valid: &ValidNow,
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
                tracing::info!(%user, pid, %source, "leaving a session opened with a key or certificate that is valid")
            }
            Verdict::NotValid {
                source,
                fingerprint,
            } => {
                tracing::info!(%user, pid, %source, %fingerprint, "ending a session opened with a key that is not valid")
            }
            Verdict::RevokedCertificate { source, key_id } => {
                tracing::info!(%user, pid, %source, %key_id, "ending a session opened with a revoked certificate")
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
