//! sshd's certificate trust and revocation files, in the agent's sshd directory
//! (`/etc/ssh/keyward` by default): the CA keys sshd trusts for user certificates
//! ([`USER_CA_KEYS`], named by sshd's `TrustedUserCAKeys`), the revocation list
//! ([`REVOKED_KEYS`], `RevokedKeys`) and one principals file per managed user
//! ([`PRINCIPALS`]`/USER`, `AuthorizedPrincipalsFile /etc/ssh/keyward/principals/%u`). The sshd
//! drop-in the package ships names all three; sshd reads them at every authentication, so a new
//! file applies to the next login without a reload.
//!
//! The directory is root's, not a user's: nothing in it is a trap a user could plant unless the
//! directory itself is wrong. It is walked from `/` without following a link, made (0755) when
//! missing, and refused when it is not owned by the agent's user or root, or is writable by group
//! or other. Each file is compared with what is there and replaced atomically only when it
//! differs (temp file, fsync, rename: sshd reads the old or the new file, whole).
//!
//! sshd refuses **every** public key while the `RevokedKeys` file cannot be read, so the
//! revocation list is never removed, only replaced; an empty file revokes nothing.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use keyward_common::{Principal, UnixUser};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode as Perm, mkdirat};
use nix::unistd::{Uid, getegid, geteuid};

use super::WriteError;
use super::commit::{Owner, remove_stale_temp_files, replace_in};
use super::walk::{Existing, Read, check_dir, io, open_absolute_dir, open_existing, read_current};

/// The CA keys sshd trusts for user certificates, one `type base64` per line.
pub const USER_CA_KEYS: &str = "trusted_user_ca_keys";
/// The revocation list: OpenSSH's binary KRL, or empty.
pub const REVOKED_KEYS: &str = "revoked_keys";
/// The directory of per-user principals files, each named after its user.
pub const PRINCIPALS: &str = "principals";

/// A file larger than this is not read back to compare: it is replaced.
const MAX_COMPARED: u64 = 16 << 20;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// What the signed state says the files hold, validated
/// (`keyward_agent::apply::sshd_files`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshdFiles {
    /// Canonical `type base64` public keys, no options, no comments.
    pub user_ca_keys: Vec<String>,
    /// OpenSSH's binary key revocation list, or empty.
    pub revoked_keys: Vec<u8>,
    /// Every user this agent manages, with the principals that may log in as it (none: no
    /// certificate does).
    pub principals: BTreeMap<UnixUser, Vec<Principal>>,
}

impl SshdFiles {
    fn user_ca_keys_file(&self) -> Vec<u8> {
        lines(self.user_ca_keys.iter().map(String::as_str))
    }
}

fn lines<'a>(items: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(item.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Makes the files in `dir` (an absolute path) what `files` says. Returns whether any file was
/// rewritten. On an error, each file is either its old or its new self.
pub fn apply_sshd_files(dir: &Path, files: &SshdFiles) -> Result<bool, WriteError> {
    let owner = Owner {
        uid: geteuid(),
        gid: getegid(),
        perm: Perm::from_bits_truncate(0o644),
    };
    let top = open_or_make_dir(dir, owner.uid)?;
    remove_stale_temp_files(&top, dir);
    let mut changed = false;
    // The revocation list first: of the three, it is the one a revocation waits for.
    changed |= put(&top, dir, REVOKED_KEYS, owner, &files.revoked_keys)?;
    changed |= put(&top, dir, USER_CA_KEYS, owner, &files.user_ca_keys_file())?;
    let principals_path = dir.join(PRINCIPALS);
    let principals = open_or_make_dir(&principals_path, owner.uid)?;
    remove_stale_temp_files(&principals, &principals_path);
    for (user, names) in &files.principals {
        let content = lines(names.iter().map(Principal::as_str));
        changed |= put(
            &principals,
            &principals_path,
            user.as_str(),
            owner,
            &content,
        )?;
    }
    Ok(changed)
}

/// Replaces `name` in `dir` with `content` unless it already is exactly that, with the right
/// owner and mode. Returns whether it was replaced.
fn put(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    owner: Owner,
    content: &[u8],
) -> Result<bool, WriteError> {
    let path = dir_path.join(name);
    if let Existing::Readable(current) = open_existing(dir, name, &path, owner.uid)? {
        let same_owner = current.stat.st_uid == owner.uid.as_raw()
            && current.stat.st_gid == owner.gid.as_raw()
            && current.stat.st_mode & 0o7777 == owner.perm.bits();
        if same_owner
            && matches!(read_current(&current, &path, MAX_COMPARED)?, Read::Content(c) if c == content)
        {
            return Ok(false);
        }
    }
    replace_in(dir.as_fd(), dir_path, name, owner, content)?;
    Ok(true)
}

/// Opens `path` without following a link anywhere on the way, making it (0755) when only its
/// last component is missing, and checks it: a directory, owned by `uid` or root, not writable
/// by group or other.
fn open_or_make_dir(path: &Path, uid: Uid) -> Result<OwnedFd, WriteError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io("open", path, Errno::EINVAL));
    };
    let parent_fd = open_absolute_dir(parent)?;
    let fd = match openat(&parent_fd, name, DIR_FLAGS, Perm::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            match mkdirat(&parent_fd, name, Perm::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => return Err(io("mkdir", path, errno)),
            }
            openat(&parent_fd, name, DIR_FLAGS, Perm::empty())
                .map_err(|errno| io("open", path, errno))?
        }
        Err(_) => open_absolute_dir(path)?,
    };
    check_dir(&fd, path, uid)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use nix::unistd::Gid;

    use super::*;
    use crate::writer::Refusal;

    fn files() -> SshdFiles {
        SshdFiles {
            user_ca_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                    .into(),
            ],
            revoked_keys: b"SSHKRL\n\0rest".to_vec(),
            principals: BTreeMap::from([
                (
                    "alice".parse().unwrap(),
                    vec!["kw-t1-tenant".parse().unwrap()],
                ),
                ("kwadmin".parse().unwrap(), vec![]),
            ]),
        }
    }

    #[test]
    fn writes_every_file_once_and_then_leaves_them_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keyward");
        assert!(apply_sshd_files(&dir, &files()).unwrap());
        assert_eq!(
            std::fs::read(dir.join(REVOKED_KEYS)).unwrap(),
            b"SSHKRL\n\0rest"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(USER_CA_KEYS)).unwrap(),
            format!("{}\n", files().user_ca_keys[0])
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(PRINCIPALS).join("alice")).unwrap(),
            "kw-t1-tenant\n"
        );
        assert_eq!(
            std::fs::read(dir.join(PRINCIPALS).join("kwadmin")).unwrap(),
            b""
        );
        for file in [dir.join(REVOKED_KEYS), dir.join(PRINCIPALS).join("alice")] {
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
                0o644
            );
        }
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        let inode = std::fs::metadata(dir.join(REVOKED_KEYS)).unwrap().ino();

        assert!(
            !apply_sshd_files(&dir, &files()).unwrap(),
            "nothing to change"
        );
        assert_eq!(
            std::fs::metadata(dir.join(REVOKED_KEYS)).unwrap().ino(),
            inode
        );

        let mut next = files();
        next.revoked_keys.clear();
        assert!(apply_sshd_files(&dir, &next).unwrap());
        assert_eq!(
            std::fs::read(dir.join(REVOKED_KEYS)).unwrap(),
            b"",
            "replaced, never removed"
        );
    }

    #[test]
    fn a_wrong_mode_is_repaired_and_a_temp_file_left_by_a_kill_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keyward");
        apply_sshd_files(&dir, &files()).unwrap();
        std::fs::set_permissions(
            dir.join(USER_CA_KEYS),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        std::fs::write(dir.join(".keyward-tmp-0123456789abcdef"), b"half").unwrap();
        assert!(apply_sshd_files(&dir, &files()).unwrap());
        assert_eq!(
            std::fs::metadata(dir.join(USER_CA_KEYS))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o644
        );
        assert!(!dir.join(".keyward-tmp-0123456789abcdef").exists());
    }

    #[test]
    fn a_link_or_a_writable_directory_is_refused_and_nothing_is_written() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = root.path().join("keyward");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = apply_sshd_files(&link, &files()).unwrap_err();
        assert!(
            matches!(
                err,
                WriteError::Refused {
                    reason: Refusal::Symlink,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = apply_sshd_files(&open, &files()).unwrap_err();
        assert!(
            matches!(
                err,
                WriteError::Refused {
                    reason: Refusal::GroupOrOtherWritable { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    }

    #[test]
    fn a_planted_link_at_a_file_is_replaced_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keyward");
        std::fs::create_dir(&dir).unwrap();
        let target = root.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(REVOKED_KEYS)).unwrap();
        apply_sshd_files(&dir, &files()).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(
            !std::fs::symlink_metadata(dir.join(REVOKED_KEYS))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn the_owner_is_the_agents_user() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keyward");
        apply_sshd_files(&dir, &files()).unwrap();
        let meta = std::fs::metadata(dir.join(USER_CA_KEYS)).unwrap();
        assert_eq!(meta.uid(), geteuid().as_raw());
        assert_eq!(meta.gid(), Gid::effective().as_raw());
    }
}
