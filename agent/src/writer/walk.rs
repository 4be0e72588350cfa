//! The symlink-proof walk from `/` to `~/.ssh/authorized_keys`, and the ownership and mode
//! checks sshd's `StrictModes` would make, done on the fds actually opened (no check-then-use
//! race: what is checked is what is used).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat, renameat};
use nix::sys::stat::{FileStat, Mode as Perm, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, read, unlinkat};

use super::{AUTHORIZED_KEYS, Refusal, WriteError};

/// The verified directories: `home` and `.ssh`, both opened without following symlinks and
/// checked.
#[derive(Debug)]
pub(super) struct Dirs {
    pub home: OwnedFd,
    pub ssh: OwnedFd,
    /// `.ssh` was made by this apply, so the home directory's entry needs an fsync too.
    pub created_ssh: bool,
    /// A link or non-directory found at `.ssh` and moved aside: what to report.
    pub moved: Option<String>,
}

/// The opened, checked `authorized_keys`.
#[derive(Debug)]
pub(super) struct Current {
    pub fd: OwnedFd,
    pub stat: FileStat,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Where a link or a non-directory found at `~/.ssh` is moved (inside the home, by rename of the
/// entry itself: nothing is followed, nothing is lost).
pub const MOVED_SSH: &str = ".ssh.keyward-moved";

/// Opens and checks `home` and `home/.ssh`, creating `.ssh` (0700, owned by the user) when it is
/// missing. A symlink or any other non-directory at `.ssh` is moved aside to [`MOVED_SSH`] (a
/// symlink that cannot be moved is removed: that removes the link, never its target) and a new
/// `.ssh` is made: sshd follows a `.ssh` link to a directory the user controls, so leaving it
/// would let a user pin a file keyward refuses to write. The move is said in `Dirs::moved`.
pub(super) fn open_ssh_dir(home: &Path, uid: Uid, gid: Gid) -> Result<Dirs, WriteError> {
    let home_fd = open_absolute_dir(home)?;
    check_dir(&home_fd, home, uid)?;

    let ssh_path = home.join(".ssh");
    let ssh_name = OsStr::new(".ssh");
    let mut moved = None;
    let ssh_fd = match openat(&home_fd, ssh_name, DIR_FLAGS, Perm::empty()) {
        Ok(fd) => Some(fd),
        Err(Errno::ENOENT) => None,
        Err(errno) => match open_failure(&home_fd, ssh_name, &ssh_path, errno) {
            WriteError::Refused {
                reason:
                    reason @ (Refusal::Symlink | Refusal::NotADirectory | Refusal::NotARegularFile),
                ..
            } => {
                move_entry_aside(
                    &home_fd,
                    ssh_name,
                    OsStr::new(MOVED_SSH),
                    reason == Refusal::Symlink,
                )
                .map_err(|errno| io("rename", &ssh_path, errno))?;
                moved = Some(format!(
                    "{} was {reason_text}; moved to {MOVED_SSH} and a new .ssh made",
                    ssh_path.display(),
                    reason_text = match reason {
                        Refusal::Symlink => "a symbolic link",
                        _ => "not a directory",
                    }
                ));
                None
            }
            other => return Err(other),
        },
    };
    let (ssh_fd, created_ssh) = match ssh_fd {
        Some(fd) => (fd, false),
        None => make_ssh_dir(&home_fd, ssh_name, &ssh_path, uid, gid)?,
    };
    check_dir(&ssh_fd, &ssh_path, uid)?;
    Ok(Dirs {
        home: home_fd,
        ssh: ssh_fd,
        created_ssh,
        moved,
    })
}

/// Makes `.ssh` (0700, handed to the user) and opens it; `true` when this call made it.
fn make_ssh_dir(
    home: &OwnedFd,
    name: &OsStr,
    path: &Path,
    uid: Uid,
    gid: Gid,
) -> Result<(OwnedFd, bool), WriteError> {
    let created = match mkdirat(home, name, Perm::S_IRWXU) {
        Ok(()) => true,
        // Someone made it in between: fine, it is checked like any other below.
        Err(Errno::EEXIST) => false,
        Err(errno) => return Err(io("mkdir", path, errno)),
    };
    let fd = openat(home, name, DIR_FLAGS, Perm::empty())
        .map_err(|errno| open_failure(home, name, path, errno))?;
    if created {
        hand_over_new_dir(&fd, path, uid, gid)?;
    }
    Ok((fd, created))
}

/// Renames the entry `from` in `dir` to `to` (replacing a non-directory there). When that fails
/// and `removable` (the entry is a symlink), the link itself is removed instead.
pub(super) fn move_entry_aside(
    dir: &OwnedFd,
    from: &OsStr,
    to: &OsStr,
    removable: bool,
) -> Result<(), Errno> {
    match renameat(dir, from, dir, to) {
        Ok(()) => Ok(()),
        Err(_) if removable => unlinkat(dir, from, UnlinkatFlags::NoRemoveDir),
        Err(errno) => Err(errno),
    }
}

/// Opens `/`, then each component of `home` relative to the previous one, never following a
/// symlink. Ancestors above the home are not checked for ownership (sshd's `StrictModes` stops
/// at the home directory too), but a symlink anywhere is refused.
pub(super) fn open_absolute_dir(home: &Path) -> Result<OwnedFd, WriteError> {
    let mut components = home.components();
    if components.next() != Some(Component::RootDir) {
        return Err(refused(home, Refusal::BadHomePath));
    }
    let mut fd = open("/", DIR_FLAGS, Perm::empty()).map_err(|errno| io("open", "/", errno))?;
    let mut shown = Path::new("/").to_path_buf();
    for component in components {
        let Component::Normal(name) = component else {
            return Err(refused(home, Refusal::BadHomePath));
        };
        shown.push(name);
        fd = openat(&fd, name, DIR_FLAGS, Perm::empty())
            .map_err(|errno| open_failure(&fd, name, &shown, errno))?;
    }
    Ok(fd)
}

/// The directory checks of sshd's `StrictModes`, on the opened fd.
pub(super) fn check_dir(fd: &OwnedFd, path: &Path, uid: Uid) -> Result<(), WriteError> {
    let st = fstat(fd).map_err(|errno| io("fstat", path, errno))?;
    if file_type(&st) != SFlag::S_IFDIR {
        return Err(refused(path, Refusal::NotADirectory));
    }
    check_owner(&st, path, uid)?;
    if st.st_mode & 0o022 != 0 {
        return Err(refused(
            path,
            Refusal::GroupOrOtherWritable {
                mode: st.st_mode & 0o7777,
            },
        ));
    }
    Ok(())
}

fn check_owner(st: &FileStat, path: &Path, uid: Uid) -> Result<(), WriteError> {
    if st.st_uid != uid.as_raw() && st.st_uid != 0 {
        return Err(refused(path, Refusal::WrongOwner { uid: st.st_uid }));
    }
    Ok(())
}

/// Gives the `.ssh` this apply just made to the user. Done on the opened fd rather than by name,
/// so a directory swapped in after `mkdirat` is never chowned by path; and only when the fd is
/// still the fresh, empty, root-owned directory we made (a user racing us leaves their own
/// directory, which is then checked like any other).
fn hand_over_new_dir(fd: &OwnedFd, path: &Path, uid: Uid, gid: Gid) -> Result<(), WriteError> {
    let st = fstat(fd).map_err(|errno| io("fstat", path, errno))?;
    if st.st_uid != 0 || st.st_nlink != 2 {
        return Ok(());
    }
    fchown(fd, Some(uid), Some(gid)).map_err(|errno| io("fchown", path, errno))?;
    // Explicitly, because mkdirat's mode went through the agent's umask.
    fchmod(fd, Perm::S_IRWXU).map_err(|errno| io("fchmod", path, errno))?;
    fsync(fd).map_err(|errno| io("fsync", path, errno))
}

/// What is at `~/.ssh/authorized_keys`.
#[derive(Debug)]
pub(super) enum Existing {
    Missing,
    /// A regular file with one link, owned by the user or root: safe to read.
    Readable(Current),
    /// Something keyward must not read but may replace: a symlink (sshd would follow it), a
    /// file with several hard links (reading could copy another file's lines; writing through it
    /// would change the other name too), a FIFO or socket, a file of another user. Replacing the
    /// directory entry by rename harms none of them: the other name keeps the old inode.
    Unsafe(Refusal),
}

/// Opens `authorized_keys` in the verified `.ssh` without following a link and says what it is.
/// A directory there is an error: it cannot be replaced by rename (and sshd reads no keys from it).
pub(super) fn open_authorized_keys(
    ssh: &OwnedFd,
    path: &Path,
    uid: Uid,
) -> Result<Existing, WriteError> {
    open_existing(ssh, AUTHORIZED_KEYS, path, uid)
}

/// [`open_authorized_keys`] for any file `name` of a verified directory (`path` is the file's,
/// for messages).
pub(super) fn open_existing(
    dir: &OwnedFd,
    name: &str,
    path: &Path,
    uid: Uid,
) -> Result<Existing, WriteError> {
    // O_NONBLOCK: opening a FIFO the user planted must not wait for a writer.
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let name = OsStr::new(name);
    let fd = match openat(dir, name, flags, Perm::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Existing::Missing),
        Err(errno) => {
            return match open_failure(dir, name, path, errno) {
                WriteError::Refused { reason, .. } => Ok(Existing::Unsafe(reason)),
                other => Err(other),
            };
        }
    };
    let stat = fstat(&fd).map_err(|errno| io("fstat", path, errno))?;
    let kind = file_type(&stat);
    if kind == SFlag::S_IFDIR {
        return Err(refused(path, Refusal::NotARegularFile));
    }
    if kind != SFlag::S_IFREG {
        return Ok(Existing::Unsafe(Refusal::NotARegularFile));
    }
    if stat.st_nlink != 1 {
        return Ok(Existing::Unsafe(Refusal::HardLinked {
            links: stat.st_nlink,
        }));
    }
    // A file of another user, moved in, would have its lines copied into a file this user can
    // read: not read. Root-owned is fine (an administrator's file).
    if stat.st_uid != uid.as_raw() && stat.st_uid != 0 {
        return Ok(Existing::Unsafe(Refusal::WrongOwner { uid: stat.st_uid }));
    }
    Ok(Existing::Readable(Current { fd, stat }))
}

/// What reading the current file gave.
#[derive(Debug)]
pub(super) enum Read {
    Content(Vec<u8>),
    /// Longer than the cap: not read (or not past the cap).
    TooLarge(u64),
}

/// Reads the current content through the checked fd, at most `max` bytes: a larger file is not
/// read at all (its size is known from `fstat`) or, if it grew while being read, not kept.
pub(super) fn read_current(file: &Current, path: &Path, max: u64) -> Result<Read, WriteError> {
    let size = u64::try_from(file.stat.st_size).unwrap_or(u64::MAX);
    if size > max {
        return Ok(Read::TooLarge(size));
    }
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match read(file.fd.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                content.extend_from_slice(&buf[..n]);
                let read_so_far = u64::try_from(content.len()).unwrap_or(u64::MAX);
                if read_so_far > max {
                    return Ok(Read::TooLarge(read_so_far));
                }
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(io("read", path, errno)),
        }
    }
    Ok(Read::Content(content))
}

/// Turns a failed `openat(.., O_NOFOLLOW)` into the precise reason. With `O_DIRECTORY`, Linux
/// reports a symlink as `ENOTDIR` rather than `ELOOP`, so the entry itself is looked at (without
/// following it, relative to the already verified parent) to tell the two apart.
fn open_failure(parent: &OwnedFd, name: &OsStr, path: &Path, errno: Errno) -> WriteError {
    let entry_type = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| file_type(&st));
    if errno == Errno::ELOOP || entry_type == Some(SFlag::S_IFLNK) {
        return refused(path, Refusal::Symlink);
    }
    if errno == Errno::ENOTDIR {
        return refused(path, Refusal::NotADirectory);
    }
    match entry_type {
        // A socket (ENXIO) or other special file where a file or directory was expected.
        Some(t) if t != SFlag::S_IFDIR && t != SFlag::S_IFREG => {
            refused(path, Refusal::NotARegularFile)
        }
        _ => io("open", path, errno),
    }
}

pub(super) fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

pub(super) fn refused(path: &Path, reason: Refusal) -> WriteError {
    WriteError::Refused {
        path: path.to_path_buf(),
        reason,
    }
}

pub(super) fn io(op: &'static str, path: impl AsRef<Path>, errno: Errno) -> WriteError {
    WriteError::Io {
        op,
        path: path.as_ref().to_path_buf(),
        errno,
    }
}
