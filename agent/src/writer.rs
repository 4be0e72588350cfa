//! Writes a managed user's `~/.ssh/authorized_keys`, as root, into a home the user controls.
//!
//! The user owns their home and `.ssh`, so anything on the way may be a trap they planted: a
//! symlink from `authorized_keys` to `/etc/shadow`, a hard link to another user's file, `.ssh`
//! pointing at someone else's `.ssh`. The writer therefore never hands a user-controlled path to
//! the kernel as a whole:
//!
//! 1. [`walk`] opens `/`, every component of the home, `.ssh` and `authorized_keys` one at a time
//!    with `openat(.., O_NOFOLLOW)` relative to the directory fd before it, and checks what it
//!    opened with `fstat` on the fd: no symlink anywhere; home and `.ssh` owned by the user or
//!    root and not writable by group or other (sshd's `StrictModes`); `authorized_keys` a
//!    regular file with a single link. Anything else is a [`WriteError::Refused`] naming the
//!    path and the reason, and nothing is read or written.
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

mod commit;
mod walk;

use std::path::{Path, PathBuf};

use keyward_common::authorized_keys::{self, AuthorizedKeysError, ManagedKey, Mode};
use keyward_common::{Fingerprint, UnixUser};
use nix::errno::Errno;
use nix::unistd::{Gid, Uid, User};

/// Name of the managed file inside `~/.ssh`.
pub const AUTHORIZED_KEYS: &str = "authorized_keys";
/// Prefix of the writer's temp files in `~/.ssh`; leftovers are removed by the next apply.
pub const TEMP_PREFIX: &str = ".keyward-tmp-";
/// Largest existing file read in [`Mode::Preserve`]. sshd has no limit, but a user could grow
/// their file to exhaust the agent's memory; past this size the write is refused and reported.
pub const MAX_EXISTING_SIZE: u64 = 4 << 20;

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The file was (re)written. `false` when content, owner and mode were already right.
    pub changed: bool,
    /// Fingerprints of the managed keys now in the file, in file order.
    pub fingerprints: Vec<Fingerprint>,
    /// Fingerprints of every key line in the file before this apply, and whether each was
    /// managed: the "before" half of a drift report. Empty when there was no file, or when an
    /// [`Mode::Exclusive`] file over [`MAX_EXISTING_SIZE`] was replaced without being read.
    pub previous: Vec<(Fingerprint, bool)>,
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
    let account = resolve(user)?;
    apply_in_home(&account.home, account.uid, account.gid, mode, keys, denied)
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
    let dirs = walk::open_ssh_dir(home, uid, gid)?;
    let ssh_path = home.join(".ssh");
    let file_path = ssh_path.join(AUTHORIZED_KEYS);
    let current = walk::open_authorized_keys(&dirs.ssh, &file_path, uid)?;
    // Only once nothing was refused: a refusal leaves `.ssh` exactly as it was.
    commit::remove_stale_temp_files(&dirs.ssh, &ssh_path);
    // Exclusive mode ignores the old content, so an oversized file there is simply replaced;
    // preserve mode must keep its lines and refuses it.
    let existing = match &current {
        Some(file) => walk::read_current(file, &file_path, mode == Mode::Preserve)?,
        None => None,
    };
    // Bytes, not text: the user's lines are kept byte for byte (invalid UTF-8, `\r` and NUL
    // included), and their keys are read as sshd reads them.
    let existing_bytes = existing.as_deref().unwrap_or_default();
    let content = authorized_keys::merge(existing_bytes, keys, mode, denied)?;
    let fingerprints = authorized_keys::fingerprints(&content)
        .into_iter()
        .filter_map(|(fp, managed)| managed.then_some(fp))
        .collect();
    let previous = authorized_keys::fingerprints(existing_bytes);

    let up_to_date = current.as_ref().is_some_and(|file| {
        existing.as_deref() == Some(content.as_slice())
            && file.stat.st_uid == uid.as_raw()
            && file.stat.st_mode & 0o7777 == 0o600
    });
    if up_to_date {
        return Ok(ApplyOutcome {
            changed: false,
            fingerprints,
            previous,
        });
    }
    commit::replace(&dirs, &ssh_path, uid, gid, &content)?;
    Ok(ApplyOutcome {
        changed: true,
        fingerprints,
        previous,
    })
}
