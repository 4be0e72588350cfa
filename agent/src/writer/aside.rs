//! The user's own lines keyward moved out of `authorized_keys`, kept next to it.
//!
//! While a user is revoked its `authorized_keys` holds no line at all ("SSH access revoked" means
//! every key, including one a leaked key was used to plant). The user's own lines are not
//! deleted: they are appended to `~/.ssh/authorized_keys.keyward-set-aside`, a file of keyward's
//! (owned by the agent's user, root, mode 0644: the user can read it and, owning `.ssh`, remove
//! it, but not edit it into something keyward later trusts). Lines already there are not repeated.
//! After a regenerate the tenant restores what is really theirs by hand; keyward never copies a
//! line back. The file is bounded ([`MAX_SET_ASIDE`]); lines past it are dropped and reported.
//!
//! A file of that name keyward did not write (another owner, a link, not a regular file) is
//! neither read nor reported, and is replaced by rename the next time lines are set aside.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use keyward_common::authorized_keys;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode as Perm, SFlag, fstat};
use nix::unistd::{getegid, geteuid};

use super::WriteError;
use super::commit::{self, Owner};
use super::walk::{self, Current, Dirs, Read};

/// The set-aside file's name in `.ssh`.
pub const SET_ASIDE: &str = "authorized_keys.keyward-set-aside";
/// Its largest size: lines that would take it past this are dropped (and counted).
pub const MAX_SET_ASIDE: u64 = 1 << 20;
/// Keys listed in a report at most (the file itself keeps them all).
pub const MAX_LISTED: usize = 100;

/// What the set-aside file holds after an apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAside {
    /// The keys in the file: `SHA256:...` fingerprints, file order, at most [`MAX_LISTED`].
    pub keys: Vec<String>,
    /// Lines that did not fit under [`MAX_SET_ASIDE`] in this apply.
    pub dropped: usize,
}

/// Opens the set-aside file if it is keyward's own: a regular file with one link, owned by this
/// process's user.
fn open_ours(ssh: &OwnedFd) -> Option<Current> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(ssh, OsStr::new(SET_ASIDE), flags, Perm::empty()).ok()?;
    let stat = fstat(&fd).ok()?;
    let regular = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
    (regular && stat.st_nlink == 1 && stat.st_uid == geteuid().as_raw())
        .then_some(Current { fd, stat })
}

fn read_ours(ssh: &OwnedFd, ssh_path: &Path) -> Result<Option<Vec<u8>>, WriteError> {
    let Some(file) = open_ours(ssh) else {
        return Ok(None);
    };
    match walk::read_current(&file, &ssh_path.join(SET_ASIDE), MAX_SET_ASIDE)? {
        Read::Content(bytes) => Ok(Some(bytes)),
        // Only keyward writes it and keeps it under the cap; a larger one is not ours to trust.
        Read::TooLarge(_) => Ok(None),
    }
}

fn listed(content: &[u8]) -> Vec<String> {
    authorized_keys::fingerprints(content)
        .into_iter()
        .take(MAX_LISTED)
        .map(|(fingerprint, _)| fingerprint.to_string())
        .collect()
}

/// The keys in the set-aside file now (none when there is no file of keyward's).
pub(super) fn current(ssh: &OwnedFd, ssh_path: &Path) -> Result<SetAside, WriteError> {
    Ok(SetAside {
        keys: read_ours(ssh, ssh_path)?
            .as_deref()
            .map(listed)
            .unwrap_or_default(),
        dropped: 0,
    })
}

/// Appends `lines` (each ending in `\n`; blank ones are skipped) that the file does not hold yet,
/// then lists it. Written through a temp file and a rename, before the caller empties
/// `authorized_keys`: a crash in between leaves the lines in both places, never in neither.
pub(super) fn append(dirs: &Dirs, ssh_path: &Path, lines: &[u8]) -> Result<SetAside, WriteError> {
    let mut content = read_ours(&dirs.ssh, ssh_path)?.unwrap_or_default();
    let before = content.len();
    let present: BTreeSet<Vec<u8>> = content.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let mut dropped = 0;
    for line in lines.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) || present.contains(line) {
            continue;
        }
        if (content.len() + line.len() + 1) as u64 > MAX_SET_ASIDE {
            dropped += 1;
            continue;
        }
        content.extend_from_slice(line);
        content.push(b'\n');
    }
    if content.len() != before || open_ours(&dirs.ssh).is_none() && !content.is_empty() {
        let owner = Owner {
            uid: geteuid(),
            gid: getegid(),
            perm: Perm::S_IRUSR | Perm::S_IWUSR | Perm::S_IRGRP | Perm::S_IROTH,
        };
        commit::replace_file(dirs, ssh_path, SET_ASIDE, owner, &content)?;
    }
    Ok(SetAside {
        keys: listed(&content),
        dropped,
    })
}
