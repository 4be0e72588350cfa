//! Applying one user's desired keys on the host: the seam between the stream logic and the
//! file writer and session killer.
//!
//! The runtime talks only to the [`Applier`] trait, so the stream logic can be tested with a
//! fake that records calls. [`SystemApplier`] is the real thing ([`crate::writer`] and
//! [`crate::sessions`]); [`DirApplier`] writes into `{root}/{user}` as the current user, for
//! in-process tests and the many-agents benchmark. Both turn the protocol's entry into what the
//! writer makes and its outcome into a [`UserApplied`] the same way ([`apply_with`]); they differ
//! only in which home they write. The runtime sets up the file watcher itself
//! ([`crate::watch::watch_users`]) and asks the login audit which key opened which session
//! before it has an applier end sessions ([`Applier::end_revoked_sessions`]).

use std::collections::BTreeSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use keyward_common::authorized_keys::{LineOptions, ManagedKey, Mode};
use keyward_common::keys::canonical_public_key;
use keyward_common::keys::public_key_fingerprint;
use keyward_common::proto::{self, ManagedUser};
use keyward_common::sshd_files::{
    KRL_MAGIC, MAX_JUMP_PRINCIPALS, MAX_PERMIT_OPEN_PER_PRINCIPAL, MAX_PRINCIPALS_PER_USER,
    MAX_REVOKED_KEYS_BYTES, MAX_USER_CA_KEYS,
};
use keyward_common::{Fingerprint, KeyKind, PermitOpen, Principal, UnixUser};

use crate::config::{SshdTrust, UserMode};
use crate::recordings::recorder::Recorder;
use crate::sessions::{self, revoke::SessionAttribution, revoke::ValidNow};
use crate::writer::sshd_files::check_principals_file;
use crate::writer::{
    self, ApplyOutcome, JumpPrincipal, PreserveLimits, PrincipalLine, SshdFiles, WriteError,
};

/// Why a user's desired state could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("key {index}: {message}")]
    BadKey { index: usize, message: String },
    #[error("denied fingerprint {0:?} is not a SHA-256 fingerprint")]
    BadDenied(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("ending sessions: {0}")]
    Sessions(String),
    #[error("sshd files: {0}")]
    BadSshdFiles(String),
    /// For appliers outside this crate (test fakes).
    #[error("{0}")]
    Other(String),
}

/// What applying one user did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserApplied {
    /// The file was rewritten.
    pub changed: bool,
    /// Managed keys now in the file.
    pub fingerprints: Vec<String>,
    /// Keys that were in the file but must not be (an outside edit added them).
    pub added: Vec<String>,
    /// Desired keys that were missing from the file (an outside edit removed them).
    pub removed: Vec<String>,
    /// The user's own keys now in the file ([`Mode::Preserve`]): with the managed keys, the keys
    /// valid for the user now.
    pub own: Vec<String>,
    /// Applied, but an admin must know (a file replaced without reading it, an oversized file).
    pub warnings: Vec<String>,
    /// The keys in the user's set-aside file.
    pub set_aside: Vec<String>,
}

/// Makes a user's keys equal to the desired state, and ends their sessions. Called from
/// blocking threads (`spawn_blocking`): implementations may do file I/O and wait on processes.
pub trait Applier: Send + Sync + 'static {
    /// Writes `desired` (the control plane's entry for `user`) with `mode` (from the local
    /// configuration, which wins over the state's); `recorder`: the forced command that records
    /// the user's sessions, put on every managed line (`None`: not recorded).
    fn apply_user(
        &self,
        user: &UnixUser,
        mode: UserMode,
        desired: &ManagedUser,
        recorder: Option<&str>,
    ) -> Result<UserApplied, ApplyError>;

    /// Ends `user`'s live SSH sessions; returns how many.
    fn end_sessions(&self, user: &UnixUser) -> Result<u32, ApplyError>;

    /// Writes sshd's certificate trust and revocation files; returns whether one changed.
    fn apply_sshd_files(&self, files: &SshdFiles) -> Result<bool, ApplyError>;

    /// Ends the sessions of `user` a revocation must end: every session except those that
    /// `attribution`'s verified records tie to a key or certificate `valid` for the user now or
    /// to a login without a key (the rule is in [`sessions::revoke`]); returns how many. The
    /// default ends them all, like [`Applier::end_sessions`].
    fn end_revoked_sessions(
        &self,
        user: &UnixUser,
        attribution: &SessionAttribution,
        valid: &ValidNow,
    ) -> Result<u32, ApplyError> {
        let _ = (attribution, valid);
        self.end_sessions(user)
    }
}

/// Converts the protocol's keys. A key whose kind is unknown, whose expiry is not RFC 3339, or
/// whose public key does not have the fingerprint the control plane announced is refused (the
/// whole user then fails: a partly applied key set could drop a key the user needs or keep one
/// that should be gone).
pub fn managed_keys(keys: &[proto::Key]) -> Result<Vec<ManagedKey>, ApplyError> {
    keys.iter()
        .enumerate()
        .map(|(index, key)| {
            let bad = |message: String| ApplyError::BadKey { index, message };
            let kind = match proto::KeyKind::try_from(key.kind) {
                Ok(proto::KeyKind::Admin) => KeyKind::Admin,
                Ok(proto::KeyKind::Tenant) => KeyKind::Tenant,
                _ => return Err(bad(format!("unknown key kind {}", key.kind))),
            };
            let expires_at = match key.expires_at.as_str() {
                "" => None,
                text => Some(
                    DateTime::parse_from_rfc3339(text)
                        .map_err(|e| bad(format!("expiry {text:?} is not RFC 3339: {e}")))?
                        .with_timezone(&Utc),
                ),
            };
            if !key.fingerprint.is_empty() {
                // Only a parseable key gets here with a fingerprint to compare; one that does
                // not parse is refused by the renderer with the exact reason.
                if let Ok(actual) = public_key_fingerprint(&key.public_key)
                    && actual.as_str() != key.fingerprint
                {
                    return Err(bad(format!(
                        "the key's fingerprint is {actual}, not the announced {}",
                        key.fingerprint
                    )));
                }
            }
            Ok(ManagedKey {
                kind,
                generation: key.generation,
                public_key: key.public_key.clone(),
                expires_at,
                options: LineOptions {
                    verify_required: key.verify_required,
                    ..Default::default()
                },
            })
        })
        .collect()
}

/// Parses the denied fingerprints.
pub fn denied(fingerprints: &[String]) -> Result<Vec<Fingerprint>, ApplyError> {
    fingerprints
        .iter()
        .map(|f| f.parse().map_err(|_| ApplyError::BadDenied(f.clone())))
        .collect()
}

/// Converts the state's sshd files for the users this agent manages (`managed`, its allow-list):
/// each gets the principals its entry in `users` names, or none. Everything is checked before
/// anything is written: a CA key that does not parse, a principal that could carry an option, a
/// revocation list that is not one (sshd would then refuse every key) or is over a bound fails
/// the whole set, and the files stay as they were.
///
/// `jump_user` is a bastion's jump user (`[bastion] jump_user`; `None` on any other agent). Only
/// it may have jump principals ([`jump_lines`]): a state that gives them to any other user, or
/// any at all to an agent that is not a bastion, is refused whole. A compromised control plane
/// can then not open port forwarding to a tenant's VPS.
///
/// `recorder`: the host's session recorder; a user whose entry asks for recording gets its plain
/// principals with the recorder's forced command.
pub fn sshd_files<'a>(
    sshd: &proto::SshdFiles,
    users: &[ManagedUser],
    managed: impl IntoIterator<Item = &'a UnixUser>,
    jump_user: Option<&UnixUser>,
    recorder: Option<&Recorder>,
) -> Result<SshdFiles, ApplyError> {
    let bad = ApplyError::BadSshdFiles;
    if sshd.user_ca_keys.len() > MAX_USER_CA_KEYS {
        return Err(bad(format!(
            "{} CA keys; at most {MAX_USER_CA_KEYS} are allowed",
            sshd.user_ca_keys.len()
        )));
    }
    let user_ca_keys = sshd
        .user_ca_keys
        .iter()
        .enumerate()
        .map(|(i, key)| canonical_public_key(key).map_err(|e| bad(format!("CA key {i}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let krl = &sshd.revoked_keys;
    if krl.len() > MAX_REVOKED_KEYS_BYTES {
        return Err(bad(format!(
            "the revocation list is {} bytes; at most {MAX_REVOKED_KEYS_BYTES} are allowed",
            krl.len()
        )));
    }
    if !krl.is_empty() && !krl.starts_with(KRL_MAGIC) {
        return Err(bad("the revocation list is not an OpenSSH KRL".into()));
    }
    for entry in users.iter().filter(|u| !u.jump_principals.is_empty()) {
        match jump_user {
            None => {
                return Err(bad(format!(
                    "user {:?} has jump principals, but this agent is not a bastion \
                     ([bastion] is not in its configuration)",
                    entry.user
                )));
            }
            Some(jump) if entry.user != jump.as_str() => {
                return Err(bad(format!(
                    "user {:?} has jump principals; only the bastion's jump user {jump} may",
                    entry.user
                )));
            }
            Some(_) => {}
        }
    }
    let mut principals = std::collections::BTreeMap::new();
    for user in managed {
        let mut lines = match users.iter().find(|u| u.user == user.as_str()) {
            Some(entry) if entry.principals.len() > MAX_PRINCIPALS_PER_USER => {
                return Err(bad(format!(
                    "user {user} has {} principals; at most {MAX_PRINCIPALS_PER_USER} are allowed",
                    entry.principals.len()
                )));
            }
            Some(entry) => {
                let command = recorded_by(entry, recorder);
                entry
                    .principals
                    .iter()
                    .map(|p| {
                        let principal = p
                            .parse::<Principal>()
                            .map_err(|e| bad(format!("user {user}: {e}")))?;
                        Ok::<_, ApplyError>(match &command {
                            Some(command) => PrincipalLine::Recorded(principal, command.clone()),
                            None => PrincipalLine::Plain(principal),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => Vec::new(),
        };
        if let Some(entry) = users.iter().find(|u| u.user == user.as_str())
            && !entry.jump_principals.is_empty()
        {
            let jumps =
                jump_lines(&entry.jump_principals).map_err(|e| bad(format!("user {user}: {e}")))?;
            if let Some(both) = lines
                .iter()
                .find(|l| jumps.iter().any(|j| j.principal() == l.principal()))
            {
                // sshd takes the first line naming a principal: the plain one would win.
                return Err(bad(format!(
                    "user {user}: principal {} is both a plain and a jump principal",
                    both.principal()
                )));
            }
            lines.extend(jumps);
            check_principals_file(&lines).map_err(|e| bad(format!("user {user}: {e}")))?;
        }
        principals.insert(user.clone(), lines);
    }
    Ok(SshdFiles {
        user_ca_keys,
        revoked_keys: krl.clone(),
        principals,
    })
}

/// The forced command that records `entry`'s sessions: when its state asks for recording and the
/// host can record.
pub fn recorded_by(entry: &ManagedUser, recorder: Option<&Recorder>) -> Option<String> {
    let recording = entry.recording.as_ref()?;
    Some(recorder?.command(recording.input))
}

/// A jump user's jump principals as principals-file lines, each principal once (a principal
/// listed twice forwards to the destinations of both), sorted by principal: the same set always
/// makes the same file. At most [`MAX_JUMP_PRINCIPALS`], each with one to
/// [`MAX_PERMIT_OPEN_PER_PRINCIPAL`] destinations; a principal or a destination that does not
/// parse fails them all.
pub fn jump_lines(jumps: &[proto::JumpPrincipal]) -> Result<Vec<PrincipalLine>, String> {
    if jumps.len() > MAX_JUMP_PRINCIPALS {
        return Err(format!(
            "{} jump principals; at most {MAX_JUMP_PRINCIPALS} are allowed",
            jumps.len()
        ));
    }
    let mut by_principal: std::collections::BTreeMap<Principal, JumpPrincipal> =
        std::collections::BTreeMap::new();
    for (index, jump) in jumps.iter().enumerate() {
        let principal = jump
            .principal
            .parse::<Principal>()
            .map_err(|e| format!("jump principal {index}: {e}"))?;
        if jump.permit_open.len() > MAX_PERMIT_OPEN_PER_PRINCIPAL {
            return Err(format!(
                "jump principal {principal} has {} destinations; at most \
                 {MAX_PERMIT_OPEN_PER_PRINCIPAL} are allowed",
                jump.permit_open.len()
            ));
        }
        let permit_open = jump
            .permit_open
            .iter()
            .map(|d| d.parse::<PermitOpen>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("jump principal {principal}: {e}"))?;
        let line = JumpPrincipal::new(principal.clone(), permit_open)?;
        let line = match by_principal.remove(&principal) {
            Some(before) => before.merge(line)?,
            None => line,
        };
        by_principal.insert(principal, line);
    }
    Ok(by_principal
        .into_values()
        .map(PrincipalLine::Jump)
        .collect())
}

/// The drift an apply repaired: keys that were there and must not be (managed lines that are no
/// longer wanted, any line in exclusive mode, denied keys), and wanted keys that were missing.
pub fn drift(
    outcome: &ApplyOutcome,
    mode: Mode,
    denied: &[Fingerprint],
) -> (Vec<String>, Vec<String>) {
    let now: BTreeSet<&str> = outcome
        .fingerprints
        .iter()
        .map(Fingerprint::as_str)
        .collect();
    let added: BTreeSet<&str> = outcome
        .previous
        .iter()
        .filter(|(fp, managed)| *managed || mode == Mode::Exclusive || denied.contains(fp))
        .map(|(fp, _)| fp.as_str())
        .filter(|fp| !now.contains(fp))
        .collect();
    let before_managed: BTreeSet<&str> = outcome
        .previous
        .iter()
        .filter(|(_, managed)| *managed)
        .map(|(fp, _)| fp.as_str())
        .collect();
    let removed = now.difference(&before_managed);
    (
        added.into_iter().map(str::to_owned).collect(),
        removed.map(|s| (*s).to_owned()).collect(),
    )
}

fn applied(outcome: ApplyOutcome, mode: Mode, denied: &[Fingerprint]) -> UserApplied {
    let (added, removed) = drift(&outcome, mode, denied);
    let strings = |fps: &[Fingerprint]| fps.iter().map(|f| f.to_string()).collect();
    let mut warnings = outcome.warnings;
    if outcome.set_aside.dropped > 0 {
        warnings.push(format!(
            "{} set-aside lines did not fit",
            outcome.set_aside.dropped
        ));
    }
    UserApplied {
        changed: outcome.changed,
        fingerprints: strings(&outcome.fingerprints),
        added,
        removed,
        own: strings(&outcome.own),
        warnings,
        set_aside: outcome.set_aside.keys,
    }
}

/// Applies `desired` (the control plane's entry for a user) in `mode`: its keys and denied
/// fingerprints are converted (a bad one fails the whole user before anything is written),
/// `write` makes the file of the [`writer::Desired`] it is given, and what it did becomes a
/// [`UserApplied`]. Every [`Applier`] of this module is this with its own `write`.
pub fn apply_with(
    mode: UserMode,
    desired: &ManagedUser,
    recorder: Option<&str>,
    limits: PreserveLimits,
    write: impl FnOnce(&writer::Desired<'_>) -> Result<ApplyOutcome, ApplyError>,
) -> Result<UserApplied, ApplyError> {
    let mut keys = managed_keys(&desired.keys)?;
    for key in &mut keys {
        key.options.command = recorder.map(str::to_owned);
    }
    let denied = denied(&desired.denied_fingerprints)?;
    let file = writer::Desired {
        mode,
        keys: &keys,
        denied: &denied,
        revoked: desired.revoked,
        limits,
    };
    let outcome = write(&file)?;
    Ok(applied(outcome, mode, &denied))
}

/// The real host: writes the user's own `~/.ssh/authorized_keys` and sshd's files, and signals
/// the users' sessions.
#[derive(Debug, Clone)]
pub struct SystemApplier {
    /// How much of a preserve-mode user's own file is kept line by line.
    pub limits: PreserveLimits,
    /// Where sshd's certificate trust and revocation files are written.
    pub sshd_dir: PathBuf,
}

impl Default for SystemApplier {
    fn default() -> Self {
        Self {
            limits: PreserveLimits::default(),
            sshd_dir: PathBuf::from(crate::config::DEFAULT_SSHD_DIR),
        }
    }
}

impl Applier for SystemApplier {
    fn apply_user(
        &self,
        user: &UnixUser,
        user_mode: UserMode,
        desired: &ManagedUser,
        recorder: Option<&str>,
    ) -> Result<UserApplied, ApplyError> {
        apply_with(user_mode, desired, recorder, self.limits, |file| {
            Ok(writer::apply_desired(user, file)?)
        })
    }

    fn apply_sshd_files(&self, files: &SshdFiles) -> Result<bool, ApplyError> {
        Ok(writer::apply_sshd_files(&self.sshd_dir, files)?)
    }

    fn end_sessions(&self, user: &UnixUser) -> Result<u32, ApplyError> {
        sessions::end_sessions(user, &SshdTrust::default())
            .map(|pids| u32::try_from(pids.len()).unwrap_or(u32::MAX))
            .map_err(|e| ApplyError::Sessions(e.to_string()))
    }

    fn end_revoked_sessions(
        &self,
        user: &UnixUser,
        attribution: &SessionAttribution,
        valid: &ValidNow,
    ) -> Result<u32, ApplyError> {
        sessions::revoke::end_revoked_sessions(user, attribution, valid)
            .map_err(|e| ApplyError::Sessions(e.to_string()))
    }
}

/// Writes `{root}/{user}/.ssh/authorized_keys` owned by the current user, and ends no sessions:
/// an agent that needs neither root nor real accounts (in-process tests, the benchmark).
#[derive(Debug, Clone)]
pub struct DirApplier {
    root: PathBuf,
}

impl DirApplier {
    /// `root` must be an absolute path.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home directory used for `user`.
    pub fn home(&self, user: &UnixUser) -> PathBuf {
        self.root.join(user.as_str())
    }

    /// Where sshd's files are written (a user name cannot start with `.`).
    pub fn sshd_dir(&self) -> PathBuf {
        self.root.join(".sshd")
    }
}

impl Applier for DirApplier {
    fn apply_user(
        &self,
        user: &UnixUser,
        user_mode: UserMode,
        desired: &ManagedUser,
        recorder: Option<&str>,
    ) -> Result<UserApplied, ApplyError> {
        apply_with(
            user_mode,
            desired,
            recorder,
            PreserveLimits::default(),
            |file| {
                let home = self.home(user);
                // 0700 like a real home: the writer refuses a home writable by group or other.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&home)
                    .map_err(|e| ApplyError::Other(format!("{}: {e}", home.display())))?;
                Ok(writer::apply_desired_in_home(
                    &home,
                    nix::unistd::geteuid(),
                    nix::unistd::getegid(),
                    file,
                )?)
            },
        )
    }

    fn end_sessions(&self, _: &UnixUser) -> Result<u32, ApplyError> {
        Ok(0)
    }

    fn apply_sshd_files(&self, files: &SshdFiles) -> Result<bool, ApplyError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| ApplyError::Other(format!("{}: {e}", self.root.display())))?;
        Ok(writer::apply_sshd_files(&self.sshd_dir(), files)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_common::keys::{GeneratedKey, KeyAlgorithm};

    fn key(kind: proto::KeyKind, public_key: &str, expires_at: &str) -> proto::Key {
        proto::Key {
            kind: kind as i32,
            generation: 3,
            public_key: public_key.into(),
            fingerprint: String::new(),
            expires_at: expires_at.into(),
            verify_required: false,
        }
    }

    #[test]
    fn protocol_keys_convert() {
        let k = GeneratedKey::generate(KeyAlgorithm::Ed25519, "c").unwrap();
        let mut with_fp = key(
            proto::KeyKind::Tenant,
            k.public_openssh(),
            "2030-01-02T03:04:05+01:00",
        );
        with_fp.fingerprint = k.fingerprint().to_string();
        let got =
            managed_keys(&[with_fp, key(proto::KeyKind::Admin, k.public_openssh(), "")]).unwrap();
        assert_eq!(got[0].kind, KeyKind::Tenant);
        assert_eq!(got[0].generation, 3);
        assert_eq!(
            got[0].expires_at.unwrap().to_rfc3339(),
            "2030-01-02T02:04:05+00:00"
        );
        assert_eq!(got[1].kind, KeyKind::Admin);
        assert_eq!(got[1].expires_at, None);
    }

    #[test]
    fn bad_protocol_keys_are_refused() {
        let k = GeneratedKey::generate(KeyAlgorithm::Ed25519, "c").unwrap();
        let pk = k.public_openssh();
        for (bad, want) in [
            (key(proto::KeyKind::Tenant, pk, "tomorrow"), "not RFC 3339"),
            (
                key(proto::KeyKind::Tenant, pk, "2030-01-02 03:04"),
                "not RFC 3339",
            ),
            (key(proto::KeyKind::Unspecified, pk, ""), "unknown key kind"),
            (
                proto::Key {
                    fingerprint: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into(),
                    ..key(proto::KeyKind::Admin, pk, "")
                },
                "not the announced",
            ),
        ] {
            let err = managed_keys(&[bad]).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        assert!(denied(&["junk".into()]).is_err());
    }

    #[test]
    fn drift_names_added_and_removed_keys() {
        let fp = |i: u8| {
            let k = GeneratedKey::generate(KeyAlgorithm::Ed25519, &i.to_string()).unwrap();
            k.fingerprint().clone()
        };
        let (wanted, stray, own, revoked) = (fp(1), fp(2), fp(3), fp(4));
        let outcome = ApplyOutcome {
            changed: true,
            fingerprints: vec![wanted.clone()],
            previous: vec![
                (stray.clone(), true),
                (own.clone(), false),
                (revoked.clone(), false),
            ],
            ..ApplyOutcome::default()
        };
        let (added, removed) = drift(&outcome, Mode::Preserve, std::slice::from_ref(&revoked));
        let mut want_added = vec![stray.to_string(), revoked.to_string()];
        want_added.sort();
        assert_eq!(added, want_added);
        assert_eq!(removed, vec![wanted.to_string()]);
        let (added, _) = drift(&outcome, Mode::Exclusive, &[]);
        assert_eq!(
            added.len(),
            3,
            "in exclusive mode the user's own line is drift too"
        );
    }

    const CA: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn jump(principal: &str, permit_open: &[&str]) -> proto::JumpPrincipal {
        proto::JumpPrincipal {
            principal: principal.into(),
            permit_open: permit_open.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    fn entry(user: &str, principals: &[&str], jumps: Vec<proto::JumpPrincipal>) -> ManagedUser {
        ManagedUser {
            user: user.into(),
            principals: principals.iter().map(|p| (*p).to_owned()).collect(),
            jump_principals: jumps,
            ..ManagedUser::default()
        }
    }

    fn files() -> proto::SshdFiles {
        proto::SshdFiles {
            user_ca_keys: vec![CA.into()],
            revoked_keys: Vec::new(),
        }
    }

    fn rendered(files: &SshdFiles, user: &UnixUser) -> String {
        String::from_utf8(writer::sshd_files::principals_file(&files.principals[user])).unwrap()
    }

    #[test]
    fn the_jump_user_gets_its_jump_principals_after_its_plain_ones() {
        let (jump_user, tenant): (UnixUser, UnixUser) =
            ("jump".parse().unwrap(), "tenant".parse().unwrap());
        let users = [
            entry(
                "jump",
                &["keyward:ops:admin"],
                vec![
                    jump("keyward:tb:tenant", &["198.51.100.9:2222"]),
                    jump("keyward:ta:tenant", &["203.0.113.7:22", "[2001:db8::1]:22"]),
                    // Listed twice: one line, both destinations, each once.
                    jump("keyward:ta:tenant", &["203.0.113.7:22", "203.0.113.8:22"]),
                ],
            ),
            entry("tenant", &["keyward:ta:tenant"], vec![]),
        ];
        let got = sshd_files(
            &files(),
            &users,
            [&jump_user, &tenant],
            Some(&jump_user),
            None,
        )
        .unwrap();
        assert_eq!(
            rendered(&got, &jump_user),
            "keyward:ops:admin\n\
             restrict,port-forwarding,command=\"/usr/sbin/nologin\",permitopen=\"203.0.113.7:22\",\
             permitopen=\"203.0.113.8:22\",permitopen=\"[2001:db8::1]:22\" keyward:ta:tenant\n\
             restrict,port-forwarding,command=\"/usr/sbin/nologin\",permitopen=\"198.51.100.9:2222\" \
             keyward:tb:tenant\n"
        );
        assert_eq!(rendered(&got, &tenant), "keyward:ta:tenant\n");
        // The same set in another order makes the same file.
        let mut shuffled = users.clone();
        shuffled[0].jump_principals.reverse();
        let again = sshd_files(
            &files(),
            &shuffled,
            [&jump_user, &tenant],
            Some(&jump_user),
            None,
        )
        .unwrap();
        assert_eq!(again, got);
    }

    #[test]
    fn jump_principals_anywhere_else_or_out_of_bounds_refuse_the_whole_set() {
        let (jump_user, tenant): (UnixUser, UnixUser) =
            ("jump".parse().unwrap(), "tenant".parse().unwrap());
        let ok = || jump("keyward:ta:tenant", &["203.0.113.7:22"]);
        let many_destinations: Vec<String> = (1..=65).map(|p| format!("10.0.0.1:{p}")).collect();
        let many_destinations: Vec<&str> = many_destinations.iter().map(String::as_str).collect();
        let too_many_principals: Vec<proto::JumpPrincipal> = (0..=MAX_JUMP_PRINCIPALS)
            .map(|i| proto::JumpPrincipal {
                principal: format!("keyward:t{i}:tenant"),
                permit_open: vec!["203.0.113.7:22".into()],
            })
            .collect();
        let cases: Vec<(Vec<ManagedUser>, Option<&UnixUser>, &str)> = vec![
            (
                vec![entry("tenant", &[], vec![ok()])],
                Some(&jump_user),
                "only the bastion's jump user jump may",
            ),
            (
                vec![entry("jump", &[], vec![ok()])],
                None,
                "this agent is not a bastion",
            ),
            // A user this agent does not manage counts too.
            (
                vec![entry("root", &[], vec![ok()])],
                Some(&jump_user),
                "only the bastion's jump user",
            ),
            (
                vec![entry(
                    "jump",
                    &[],
                    vec![jump("keyward:ta:tenant", &["a\",command=\"sh:22"])],
                )],
                Some(&jump_user),
                "is not host:port",
            ),
            (
                vec![entry("jump", &[], vec![jump("x\" y", &["203.0.113.7:22"])])],
                Some(&jump_user),
                "jump principal 0",
            ),
            (
                vec![entry("jump", &[], vec![jump("keyward:ta:tenant", &[])])],
                Some(&jump_user),
                "has no destination",
            ),
            (
                vec![entry(
                    "jump",
                    &[],
                    vec![jump("keyward:ta:tenant", &many_destinations)],
                )],
                Some(&jump_user),
                "65 destinations; at most 64",
            ),
            (
                vec![entry("jump", &[], too_many_principals)],
                Some(&jump_user),
                "50001 jump principals; at most 50000",
            ),
            (
                vec![entry("jump", &["keyward:ta:tenant"], vec![ok()])],
                Some(&jump_user),
                "both a plain and a jump principal",
            ),
        ];
        for (users, jump_of_agent, want) in cases {
            let err = sshd_files(&files(), &users, [&jump_user, &tenant], jump_of_agent, None)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("sshd files: "), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
        // And the agent's users without jump principals are as before.
        let plain = [entry("tenant", &["keyward:ta:tenant"], vec![])];
        assert!(sshd_files(&files(), &plain, [&jump_user, &tenant], None, None).is_ok());
    }

    #[test]
    fn a_bastion_of_the_largest_size_fits_and_a_larger_file_is_refused() {
        // Two principals for each of 25,000 tenants, one VPS each.
        let jumps: Vec<proto::JumpPrincipal> = (0..MAX_JUMP_PRINCIPALS)
            .map(|i| proto::JumpPrincipal {
                principal: format!("keyward:tenant-{:05}:{}", i / 2, ["admin", "tenant"][i % 2]),
                permit_open: vec![format!("203.0.{}.{}:22", (i / 2) / 250, (i / 2) % 250 + 1)],
            })
            .collect();
        let lines = jump_lines(&jumps).unwrap();
        assert_eq!(lines.len(), MAX_JUMP_PRINCIPALS);
        let bytes = writer::sshd_files::principals_file(&lines).len();
        assert!(
            bytes <= writer::sshd_files::MAX_PRINCIPALS_FILE_BYTES,
            "{bytes} bytes"
        );
        assert!(check_principals_file(&lines).is_ok());

        // 64 destinations of 253-character names a principal: 1,000 lines pass 16 MiB.
        let label = "a".repeat(63);
        let long: Vec<PermitOpen> = (1..=64)
            .map(|port| {
                format!("{label}.{label}.{label}.{}:{port}", "b".repeat(61))
                    .parse()
                    .unwrap()
            })
            .collect();
        let huge: Vec<PrincipalLine> = (0..1000)
            .map(|i| {
                PrincipalLine::Jump(
                    JumpPrincipal::new(format!("p{i}").parse().unwrap(), long.clone()).unwrap(),
                )
            })
            .collect();
        let err = check_principals_file(&huge).unwrap_err();
        assert!(err.contains("at most 16777216 are allowed"), "{err}");
    }
}
