//! The atomic replacement of `authorized_keys`: temp file, fsync, rename, fsync of the directory;
//! and the removal of temp files a killed agent left behind.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode as Perm, fchmod};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat, write};

use super::walk::{Dirs, io};
use super::{AUTHORIZED_KEYS, TEMP_PREFIX, WriteError};

/// Replaces `.ssh/authorized_keys` with `content`, owned by the user, mode 0600.
///
/// Ownership and mode are set before the fsync, so they are as durable as the data, and before
/// the rename, so the file never appears under its real name with the wrong owner or mode.
pub(super) fn replace(
    dirs: &Dirs,
    ssh_path: &Path,
    uid: Uid,
    gid: Gid,
    content: &[u8],
) -> Result<(), WriteError> {
    let owner = Owner {
        uid,
        gid,
        perm: Perm::S_IRUSR | Perm::S_IWUSR,
    };
    replace_file(dirs, ssh_path, AUTHORIZED_KEYS, owner, content)
}

/// Who a file written by [`replace_file`] belongs to, and its mode.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub uid: Uid,
    pub gid: Gid,
    pub perm: Perm,
}

/// [`replace`] for any file `name` in `.ssh`, with the given owner and mode.
pub(super) fn replace_file(
    dirs: &Dirs,
    ssh_path: &Path,
    name: &str,
    owner: Owner,
    content: &[u8],
) -> Result<(), WriteError> {
    replace_in(dirs.ssh.as_fd(), ssh_path, name, owner, content)?;
    if dirs.created_ssh {
        let home = ssh_path.parent().unwrap_or(ssh_path);
        fsync(&dirs.home).map_err(|errno| io("fsync", home, errno))?;
    }
    Ok(())
}

/// Replaces `name` in the opened directory `dir` (shown as `dir_path`) with `content`, owned
/// and moded as `owner` says: temp file, fsync, rename, fsync of the directory.
pub(super) fn replace_in(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    name: &str,
    owner: Owner,
    content: &[u8],
) -> Result<(), WriteError> {
    let temp = TempFile::create(dir, dir_path)?;
    let shown = dir_path.join(&temp.name);
    write_all(&temp.fd, content).map_err(|errno| io("write", &shown, errno))?;
    fchown(&temp.fd, Some(owner.uid), Some(owner.gid))
        .map_err(|errno| io("fchown", &shown, errno))?;
    fchmod(&temp.fd, owner.perm).map_err(|errno| io("fchmod", &shown, errno))?;
    fsync(&temp.fd).map_err(|errno| io("fsync", &shown, errno))?;
    renameat(dir, temp.name.as_str(), dir, name)
        .map_err(|errno| io("rename", dir_path.join(name), errno))?;
    temp.disarm();
    fsync(dir).map_err(|errno| io("fsync", dir_path, errno))?;
    Ok(())
}

pub(super) fn remove_stale_temp_files(ssh: &OwnedFd, ssh_path: &Path) {
    let mut dir = match Dir::openat(
        ssh,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Perm::empty(),
    ) {
        Ok(dir) => dir,
        Err(errno) => {
            tracing::warn!(path = %ssh_path.display(), %errno, "cannot list .ssh to remove stale temp files");
            return;
        }
    };
    let stale: Vec<_> = dir
        .iter()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_bytes()
                .starts_with(TEMP_PREFIX.as_bytes())
        })
        // unlinkat never follows a symlink, but a directory of that name is none of ours.
        .filter(|entry| entry.file_type() != Some(Type::Directory))
        .map(|entry| entry.file_name().to_owned())
        .collect();
    for name in stale {
        match unlinkat(ssh, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {
                tracing::debug!(path = %ssh_path.display(), file = ?name, "removed stale temp file");
            }
            Err(errno) => {
                tracing::warn!(path = %ssh_path.display(), file = ?name, %errno, "cannot remove stale temp file");
            }
        }
    }
}

/// A temp file in `.ssh` that is unlinked on drop unless it was renamed into place.
struct TempFile<'a> {
    dir: BorrowedFd<'a>,
    name: String,
    fd: OwnedFd,
    armed: bool,
}

impl<'a> TempFile<'a> {
    fn create(dir: BorrowedFd<'a>, ssh_path: &Path) -> Result<Self, WriteError> {
        // O_EXCL | O_NOFOLLOW: an entry the user planted under the name (a symlink to a file we
        // would then write through) makes the create fail instead. The name is random so the
        // user cannot block us by guessing it; a collision is simply retried.
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut last = Errno::EEXIST;
        for _ in 0..8 {
            let name = format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>());
            match openat(dir, name.as_str(), flags, Perm::S_IRUSR | Perm::S_IWUSR) {
                Ok(fd) => {
                    return Ok(Self {
                        dir,
                        name,
                        fd,
                        armed: true,
                    });
                }
                Err(Errno::EEXIST) => last = Errno::EEXIST,
                Err(errno) => return Err(io("create", ssh_path.join(name), errno)),
            }
        }
        Err(io("create", ssh_path.join(format!("{TEMP_PREFIX}*")), last))
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: if this fails too, the next apply's stale file sweep removes it.
            let _ = unlinkat(self.dir, self.name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

fn write_all(fd: &OwnedFd, mut content: &[u8]) -> Result<(), Errno> {
    while !content.is_empty() {
        match write(fd, content) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => content = &content[n..],
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}
