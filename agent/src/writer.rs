//! Writes a managed user's `~/.ssh/authorized_keys`, as root, into a home the user controls.
//!
//! The user owns their home and `.ssh`, so anything on the way may be a trap they planted: a
//! symlink from `authorized_keys` to `/etc/shadow`, a hard link to another user's file, `.ssh`
//! pointing at someone else's `.ssh`. The writer therefore never hands a user-controlled path to
//! the kernel as a whole:
//!
//! 1. [`walk`] opens `/`, every component of the home, `.ssh` and `authorized_keys` one at a time
//!    with `openat(.., O_NOFOLLOW)` relative to the directory fd before it, and checks what it
//!    opened with `fstat` on the fd: no symlink on the way to the home; home and `.ssh` owned by
//!    the user or root and not writable by group or other (sshd's `StrictModes`). Anything else
//!    is a [`WriteError::Refused`] naming the path and the reason, and nothing is read or
//!    written. What the user can plant *at* `.ssh` or `authorized_keys` to pin a stale file
//!    (sshd follows links; a hard link makes a file keyward will not read) is not a reason to
//!    give up, since then a revocation would never land: a link or non-directory at `.ssh` is
//!    moved aside and a new `.ssh` made; an `authorized_keys` that is a symlink, has several
//!    hard links, is not a regular file or belongs to another user is replaced by rename
//!    without being read (the other name keeps the old inode, which harms no one). Both are
//!    reported as warnings. Only a regular, single-link file of the user's (or root's) is read.
//! 2. The new content is [`keyward_common::authorized_keys::merge`]d from what was read through
//!    the verified fd. If it equals the current file (and owner and mode are right), nothing
//!    happens.
//! 3. [`commit`] writes a temp file in `.ssh` (`O_CREAT | O_EXCL | O_NOFOLLOW`, random name),
//!    `fchown`s it to the user, `fchmod`s it 0600, fsyncs it, `renameat`s it over
//!    `authorized_keys` and fsyncs `.ssh`. A reader (sshd) sees the old or the new file, whole,
//!    even if the agent is killed at any moment; a temp file left by a kill is removed by the
//!    next apply.
//!
//! Callers must not run two applies for the same user at once (the agent applies per user from
//! one task): the stale temp file cleanup of one could remove the other's temp file, which would
//! make that apply fail (safely, with the old file in place).

mod aside;
mod commit;
pub mod sshd_files;
mod walk;

use std::path::{Path, PathBuf};

use keyward_common::authorized_keys::{self, AuthorizedKeysError, ManagedKey, Mode};
use keyward_common::{Fingerprint, UnixUser};
use nix::errno::Errno;
use nix::unistd::{Gid, Uid, User};

use walk::{Existing, Read};

/// Name of the managed file inside `~/.ssh`.
pub const AUTHORIZED_KEYS: &str = "authorized_keys";
/// Prefix of the writer's temp files in `~/.ssh`; leftovers are removed by the next apply.
pub const TEMP_PREFIX: &str = ".keyward-tmp-";
/// Where a [`Mode::Preserve`] file over its [`PreserveLimits`] is moved (it is the user's own; it
/// stays theirs, and keyward's file then holds only managed keys).
pub const OVERSIZED: &str = "authorized_keys.keyward-oversized";

pub use aside::{MAX_SET_ASIDE, SET_ASIDE, SetAside};
pub use sshd_files::{JumpPrincipal, PrincipalLine, SshdFiles, apply_sshd_files};
pub use walk::MOVED_SSH;

/// How much of a user's own file is kept line by line in [`Mode::Preserve`] (`[preserve]` in the
/// agent's configuration). sshd has no limit, but every byte is read and merged on every outside
/// edit: a file past either limit is moved to [`OVERSIZED`] unread, and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreserveLimits {
    pub max_bytes: u64,
    pub max_lines: usize,
}

impl Default for PreserveLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 20,
            max_lines: 10_000,
        }
    }
}

/// What one user's file must hold.
#[derive(Debug, Clone, Copy)]
pub struct Desired<'a> {
    pub mode: Mode,
    pub keys: &'a [ManagedKey],
    /// Keys removed even from the user's own lines.
    pub denied: &'a [Fingerprint],
    /// The user is revoked: no line at all; in [`Mode::Preserve`] the user's own lines are set
    /// aside ([`SET_ASIDE`]).
    pub revoked: bool,
    pub limits: PreserveLimits,
}

impl<'a> Desired<'a> {
    /// Managed keys only, nothing revoked, default limits.
    pub fn new(mode: Mode, keys: &'a [ManagedKey], denied: &'a [Fingerprint]) -> Self {
        Self {
            mode,
            keys,
            denied,
            revoked: false,
            limits: PreserveLimits::default(),
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The file was (re)written. `false` when content, owner and mode were already right.
    pub changed: bool,
    /// Fingerprints of the managed keys now in the file, in file order.
    pub fingerprints: Vec<Fingerprint>,
    /// Fingerprints of the user's own keys now in the file ([`Mode::Preserve`]).
    pub own: Vec<Fingerprint>,
    /// Fingerprints of every key line in the file before this apply, and whether each was
    /// managed: the "before" half of a drift report. Empty when there was no file, or when it was
    /// replaced without being read.
    pub previous: Vec<(Fingerprint, bool)>,
    /// Applied, but worth an admin's attention (see the module docs).
    pub warnings: Vec<String>,
    /// The set-aside file's keys ([`Mode::Preserve`]).
    pub set_aside: SetAside,
}

/// A resolved local account: whose file, where, owned by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: UnixUser,
    pub home: PathBuf,
    pub uid: Uid,
    pub gid: Gid,
}

/// Why a path was refused. Every refusal means nothing was written (and nothing past the refused
/// component was opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it is a symbolic link")]
    Symlink,
    #[error("it is not a directory")]
    NotADirectory,
    #[error("it is not a regular file")]
    NotARegularFile,
    #[error("it has {links} hard links; exactly one is allowed")]
    HardLinked { links: u64 },
    #[error("it is owned by uid {uid}, neither the user nor root")]
    WrongOwner { uid: u32 },
    #[error("it is writable by group or other (mode {mode:04o})")]
    GroupOrOtherWritable { mode: u32 },
    #[error("it is {size} bytes long, more than the {max} bytes keyward reads")]
    TooLarge { size: u64, max: u64 },
    #[error("a home directory must be an absolute path without '.' or '..' components")]
    BadHomePath,
}

/// Why an apply failed. In every case the file on disk is either untouched or (for an
/// [`WriteError::Io`] after the rename) already the new content.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no such user: {user}")]
    NoSuchUser { user: UnixUser },
    #[error("looking up user {user}: {errno}")]
    UserLookup { user: UnixUser, errno: Errno },
    #[error("refused {}: {reason}; nothing was written", path.display())]
    Refused { path: PathBuf, reason: Refusal },
    #[error("{op} {}: {errno}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error(transparent)]
    Content(#[from] AuthorizedKeysError),
}

impl WriteError {
    /// Whether this is a refusal to follow what a user planted (to be reported as an attack or a
    /// misconfiguration rather than retried).
    pub fn is_refusal(&self) -> bool {
        matches!(self, WriteError::Refused { .. })
    }
}

/// Looks `user` up in the local user database.
pub fn resolve(user: &UnixUser) -> Result<Account, WriteError> {
    match User::from_name(user.as_str()) {
        Ok(Some(found)) => Ok(Account {
            user: user.clone(),
            home: found.dir,
            uid: found.uid,
            gid: found.gid,
        }),
        Ok(None) => Err(WriteError::NoSuchUser { user: user.clone() }),
        Err(errno) => Err(WriteError::UserLookup {
            user: user.clone(),
            errno,
        }),
    }
}

/// Makes `user`'s `~/.ssh/authorized_keys` hold exactly `keys` (and, in [`Mode::Preserve`], the
/// user's own lines except those whose key is `denied`).
pub fn apply(
    user: &UnixUser,
    mode: Mode,
    keys: &[ManagedKey],
    denied: &[Fingerprint],
) -> Result<ApplyOutcome, WriteError> {
    apply_desired(user, &Desired::new(mode, keys, denied))
}

/// Makes `user`'s file what `desired` says.
pub fn apply_desired(user: &UnixUser, desired: &Desired<'_>) -> Result<ApplyOutcome, WriteError> {
    let account = resolve(user)?;
    apply_desired_in_home(&account.home, account.uid, account.gid, desired)
}

/// [`apply`] for an explicit home directory and owner (tests, and callers that resolved the
/// account themselves). `home` must be absolute.
pub fn apply_in_home(
    home: &Path,
    uid: Uid,
    gid: Gid,
    mode: Mode,
    keys: &[ManagedKey],
    denied: &[Fingerprint],
) -> Result<ApplyOutcome, WriteError> {
    apply_desired_in_home(home, uid, gid, &Desired::new(mode, keys, denied))
}

/// [`apply_desired`] for an explicit home directory and owner.
pub fn apply_desired_in_home(
    home: &Path,
    uid: Uid,
    gid: Gid,
    desired: &Desired<'_>,
) -> Result<ApplyOutcome, WriteError> {
    let dirs = walk::open_ssh_dir(home, uid, gid)?;
    let ssh_path = home.join(".ssh");
    let file_path = ssh_path.join(AUTHORIZED_KEYS);
    let current = walk::open_authorized_keys(&dirs.ssh, &file_path, uid)?;
    // Only once nothing was refused: a refusal leaves `.ssh` exactly as it was.
    commit::remove_stale_temp_files(&dirs.ssh, &ssh_path);
    let preserve = desired.mode == Mode::Preserve;
    let mut warnings: Vec<String> = dirs.moved.iter().cloned().collect();
    let (existing, readable) = match current {
        Existing::Missing => (None, None),
        Existing::Unsafe(reason) => {
            warnings.push(format!(
                "{}: {reason}; replaced without reading it{}",
                file_path.display(),
                if preserve {
                    " (the user's own lines in it were not kept; another name of it keeps them)"
                } else {
                    ""
                }
            ));
            (None, None)
        }
        Existing::Readable(file) => {
            let limits = desired.limits;
            let too_large = |what: String| {
                // Exclusive mode drops the user's lines anyway: nothing to keep or report.
                if !preserve {
                    return None;
                }
                Some(
                    match walk::move_entry_aside(
                        &dirs.ssh,
                        AUTHORIZED_KEYS.as_ref(),
                        OVERSIZED.as_ref(),
                        false,
                    ) {
                        Ok(()) => format!(
                            "{}: {what}, more than keyward keeps line by line; moved to {OVERSIZED}, the file now holds keyward's keys only",
                            file_path.display()
                        ),
                        Err(errno) => format!(
                            "{}: {what}, more than keyward keeps line by line, and moving it to {OVERSIZED} failed ({errno}); replaced",
                            file_path.display()
                        ),
                    },
                )
            };
            match walk::read_current(&file, &file_path, limits.max_bytes)? {
                Read::Content(bytes)
                    if preserve && bytes.split(|&b| b == b'\n').count() > limits.max_lines + 1 =>
                {
                    warnings.extend(too_large(format!("more than {} lines", limits.max_lines)));
                    (None, None)
                }
                Read::Content(bytes) => (Some(bytes), Some(file)),
                Read::TooLarge(size) => {
                    warnings.extend(too_large(format!(
                        "{size} bytes (limit {})",
                        limits.max_bytes
                    )));
                    (None, None)
                }
            }
        }
    };
    // Bytes, not text: the user's lines are kept byte for byte (invalid UTF-8, `\r` and NUL
    // included), and their keys are read as sshd reads them.
    let existing_bytes = existing.as_deref().unwrap_or_default();
    let content = if desired.revoked {
        Vec::new()
    } else {
        authorized_keys::merge(existing_bytes, desired.keys, desired.mode, desired.denied)?
    };
    let set_aside = if !preserve {
        SetAside::default()
    } else if desired.revoked {
        // The user's own lines: what a merge without managed keys keeps.
        let own = authorized_keys::merge(existing_bytes, &[], Mode::Preserve, desired.denied)?;
        let set = aside::append(&dirs, &ssh_path, &own)?;
        if set.dropped > 0 {
            warnings.push(format!(
                "{} lines could not be set aside: {SET_ASIDE} is full ({MAX_SET_ASIDE} bytes)",
                set.dropped
            ));
        }
        set
    } else {
        aside::current(&dirs.ssh, &ssh_path)?
    };
    let (managed_now, own_now): (Vec<_>, Vec<_>) = authorized_keys::fingerprints(&content)
        .into_iter()
        .partition(|(_, managed)| *managed);
    let fingerprints = managed_now.into_iter().map(|(fp, _)| fp).collect();
    let own = own_now.into_iter().map(|(fp, _)| fp).collect();
    let previous = authorized_keys::fingerprints(existing_bytes);

    let up_to_date = readable.as_ref().is_some_and(|file| {
        existing.as_deref() == Some(content.as_slice())
            && file.stat.st_uid == uid.as_raw()
            && file.stat.st_mode & 0o7777 == 0o600
    });
    if !up_to_date {
        commit::replace(&dirs, &ssh_path, uid, gid, &content)?;
    }
    Ok(ApplyOutcome {
        changed: !up_to_date,
        fingerprints,
        own,
        previous,
        warnings,
        set_aside,
    })
}
