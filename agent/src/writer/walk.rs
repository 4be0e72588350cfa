//! The symlink-proof walk from `/` to `~/.ssh/authorized_keys`, and the ownership and mode
//! checks sshd's `StrictModes` would make, done on the fds actually opened (no check-then-use
//! race: what is checked is what is used).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode as Perm, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, fchown, fsync, read};

use super::{AUTHORIZED_KEYS, MAX_EXISTING_SIZE, Refusal, WriteError};

/// The verified directories: `home` and `.ssh`, both opened without following symlinks and
/// checked.
#[derive(Debug)]
pub(super) struct Dirs {
    pub home: OwnedFd,
    pub ssh: OwnedFd,
    /// `.ssh` was made by this apply, so the home directory's entry needs an fsync too.
    pub created_ssh: bool,
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

/// Opens and checks `home` and `home/.ssh`, creating `.ssh` (0700, owned by the user) when it is
/// missing.
pub(super) fn open_ssh_dir(home: &Path, uid: Uid, gid: Gid) -> Result<Dirs, WriteError> {
    let home_fd = open_home(home)?;
    check_dir(&home_fd, home, uid)?;

    let ssh_path = home.join(".ssh");
    let ssh_name = OsStr::new(".ssh");
    let mut created_ssh = false;
    let ssh_fd = match openat(&home_fd, ssh_name, DIR_FLAGS, Perm::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            match mkdirat(&home_fd, ssh_name, Perm::S_IRWXU) {
                Ok(()) => created_ssh = true,
                // Someone made it in between: fine, it is checked like any other below.
                Err(Errno::EEXIST) => {}
                Err(errno) => return Err(io("mkdir", &ssh_path, errno)),
            }
            let fd = openat(&home_fd, ssh_name, DIR_FLAGS, Perm::empty())
                .map_err(|errno| open_failure(&home_fd, ssh_name, &ssh_path, errno))?;
            if created_ssh {
                hand_over_new_dir(&fd, &ssh_path, uid, gid)?;
            }
            fd
        }
        Err(errno) => return Err(open_failure(&home_fd, ssh_name, &ssh_path, errno)),
    };
    check_dir(&ssh_fd, &ssh_path, uid)?;
    Ok(Dirs {
        home: home_fd,
        ssh: ssh_fd,
        created_ssh,
    })
}

/// Opens `/`, then each component of `home` relative to the previous one, never following a
/// symlink. Ancestors above the home are not checked for ownership (sshd's `StrictModes` stops
/// at the home directory too), but a symlink anywhere is refused.
fn open_home(home: &Path) -> Result<OwnedFd, WriteError> {
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
fn check_dir(fd: &OwnedFd, path: &Path, uid: Uid) -> Result<(), WriteError> {
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

/// Opens `authorized_keys` for reading and checks it: `None` when it does not exist.
///
/// `O_NOFOLLOW` makes a symlink fail with `ELOOP` before anything is opened; `O_NONBLOCK` keeps
/// a planted FIFO from blocking the agent (and `O_NOCTTY` a terminal from becoming ours); the
/// link count and type are then checked on the fd, before a single byte is read.
pub(super) fn open_authorized_keys(
    ssh: &OwnedFd,
    path: &Path,
    uid: Uid,
) -> Result<Option<Current>, WriteError> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let name = OsStr::new(AUTHORIZED_KEYS);
    let fd = match openat(ssh, name, flags, Perm::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(open_failure(ssh, name, path, errno)),
    };
    let stat = fstat(&fd).map_err(|errno| io("fstat", path, errno))?;
    if file_type(&stat) != SFlag::S_IFREG {
        return Err(refused(path, Refusal::NotARegularFile));
    }
    if stat.st_nlink != 1 {
        return Err(refused(
            path,
            Refusal::HardLinked {
                links: stat.st_nlink,
            },
        ));
    }
    // A file of another user, moved in, would have its lines copied into a file this user can
    // read: refuse it. Root-owned is fine (an administrator's file).
    check_owner(&stat, path, uid)?;
    Ok(Some(Current { fd, stat }))
}

/// Reads the current content through the checked fd, at most [`MAX_EXISTING_SIZE`] bytes. A
/// larger file is refused when `need_content` (its lines must be kept), and otherwise not read
/// at all (`None`: the caller replaces it anyway).
pub(super) fn read_current(
    file: &Current,
    path: &Path,
    need_content: bool,
) -> Result<Option<Vec<u8>>, WriteError> {
    let too_large = |size: u64| {
        if need_content {
            Err(refused(
                path,
                Refusal::TooLarge {
                    size,
                    max: MAX_EXISTING_SIZE,
                },
            ))
        } else {
            Ok(None)
        }
    };
    let size = u64::try_from(file.stat.st_size).unwrap_or(u64::MAX);
    if size > MAX_EXISTING_SIZE {
        return too_large(size);
    }
    // Read to EOF rather than trusting st_size (the user may be appending right now), but never
    // past the limit.
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match read(file.fd.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                content.extend_from_slice(&buf[..n]);
                let read_so_far = u64::try_from(content.len()).unwrap_or(u64::MAX);
                if read_so_far > MAX_EXISTING_SIZE {
                    return too_large(read_so_far);
                }
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(io("read", path, errno)),
        }
    }
    Ok(Some(content))
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

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn refused(path: &Path, reason: Refusal) -> WriteError {
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
