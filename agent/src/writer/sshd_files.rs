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
//!
//! A principals file holds [`PrincipalLine`]s: a plain principal (the whole line, a login like
//! any other), and on a bastion's jump user, a [`JumpPrincipal`]: a principal that may only
//! forward to its destinations, written with sshd's key options (`AUTHORIZED_KEYS FILE FORMAT`
//! in sshd(8), which `AuthorizedPrincipalsFile` lines take):
//!
//! ```text
//! restrict,port-forwarding,command="/usr/sbin/nologin",permitopen="10.0.3.7:22" keyward:t1:tenant
//! ```
//!
//! `restrict` turns off everything (pty, agent and X11 forwarding, `~/.ssh/rc`), then
//! `port-forwarding` allows forwarding again, `permitopen` limits it to the destinations and the
//! forced `command` makes a session (a shell, a command) end at once. sshd takes the **first**
//! line that names a certificate's principal, so a principal is never both plain and jump in one
//! file (`keyward_agent::apply::sshd_files` refuses that).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use keyward_common::sshd_files::{MAX_JUMP_PRINCIPALS, MAX_PERMIT_OPEN_PER_PRINCIPAL};
use keyward_common::{PermitOpen, Principal, UnixUser};
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

/// The largest principals file the agent writes: a bastion's jump user with
/// [`MAX_JUMP_PRINCIPALS`] lines of one destination each takes about 6 MB (120 bytes a line);
/// a state that would make more is refused. Within [`MAX_COMPARED`], so an unchanged file is
/// read back and left alone, not rewritten at every state.
pub const MAX_PRINCIPALS_FILE_BYTES: usize = 16 << 20;
const _: () = assert!(MAX_PRINCIPALS_FILE_BYTES as u64 <= MAX_COMPARED);

/// The forced command of a jump principal's line: a session (shell or command) ends at once.
pub const JUMP_COMMAND: &str = "/usr/sbin/nologin";

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
    /// Every user this agent manages, with the lines of its principals file, in order (none:
    /// no certificate logs in as it).
    pub principals: BTreeMap<UnixUser, Vec<PrincipalLine>>,
}

/// One line of a user's principals file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PrincipalLine {
    /// The principal alone: a certificate with it logs in as the user.
    Plain(Principal),
    /// The principal, its sessions recorded: `command="RECORDER" PRINCIPAL` (the recorder is
    /// the agent's checked forced command, [`crate::recordings::recorder`]).
    Recorded(Principal, String),
    /// A bastion's jump principal: a certificate with it may only forward to its destinations.
    Jump(JumpPrincipal),
}

impl From<Principal> for PrincipalLine {
    fn from(principal: Principal) -> Self {
        Self::Plain(principal)
    }
}

impl PrincipalLine {
    /// The principal the line names.
    pub fn principal(&self) -> &Principal {
        match self {
            Self::Plain(principal) | Self::Recorded(principal, _) => principal,
            Self::Jump(jump) => &jump.principal,
        }
    }

    /// The line as sshd reads it, without its newline.
    pub fn render(&self) -> String {
        match self {
            Self::Plain(principal) => principal.as_str().to_owned(),
            Self::Recorded(principal, command) => format!("command=\"{command}\" {principal}"),
            Self::Jump(jump) => jump.render(),
        }
    }
}

/// A principal that may log in as a bastion's jump user only to forward to `permit_open`: at
/// least one destination, at most [`MAX_PERMIT_OPEN_PER_PRINCIPAL`], sorted, each once (so the
/// same destinations always make the same line).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JumpPrincipal {
    principal: Principal,
    permit_open: Vec<PermitOpen>,
}

impl JumpPrincipal {
    /// `principal` forwarding to `permit_open` (a repeated destination counts once).
    pub fn new(
        principal: Principal,
        permit_open: impl IntoIterator<Item = PermitOpen>,
    ) -> Result<Self, String> {
        let mut permit_open: Vec<PermitOpen> = permit_open.into_iter().collect();
        permit_open.sort();
        permit_open.dedup();
        if permit_open.is_empty() {
            return Err(format!("jump principal {principal} has no destination"));
        }
        if permit_open.len() > MAX_PERMIT_OPEN_PER_PRINCIPAL {
            return Err(format!(
                "jump principal {principal} has {} destinations; at most \
                 {MAX_PERMIT_OPEN_PER_PRINCIPAL} are allowed",
                permit_open.len()
            ));
        }
        Ok(Self {
            principal,
            permit_open,
        })
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn permit_open(&self) -> &[PermitOpen] {
        &self.permit_open
    }

    /// Adds `other`'s destinations (the same principal listed twice).
    pub fn merge(self, other: Self) -> Result<Self, String> {
        Self::new(
            self.principal,
            self.permit_open.into_iter().chain(other.permit_open),
        )
    }

    /// `restrict,port-forwarding,command="/usr/sbin/nologin",permitopen="D",... PRINCIPAL`.
    /// Neither a principal nor a destination can hold a quote, comma or space.
    fn render(&self) -> String {
        let mut line = format!("restrict,port-forwarding,command=\"{JUMP_COMMAND}\"");
        for destination in &self.permit_open {
            line.push_str(&format!(",permitopen=\"{destination}\""));
        }
        line.push(' ');
        line.push_str(self.principal.as_str());
        line
    }
}

/// The content of a principals file of `lines`.
pub fn principals_file(lines: &[PrincipalLine]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line.render().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Checks the bounds of a jump user's lines: at most [`MAX_JUMP_PRINCIPALS`] jump principals and
/// a file of at most [`MAX_PRINCIPALS_FILE_BYTES`].
pub fn check_principals_file(lines: &[PrincipalLine]) -> Result<(), String> {
    let jumps = lines
        .iter()
        .filter(|l| matches!(l, PrincipalLine::Jump(_)))
        .count();
    if jumps > MAX_JUMP_PRINCIPALS {
        return Err(format!(
            "{jumps} jump principals; at most {MAX_JUMP_PRINCIPALS} are allowed"
        ));
    }
    let bytes: usize = lines.iter().map(|l| l.render().len() + 1).sum();
    if bytes > MAX_PRINCIPALS_FILE_BYTES {
        return Err(format!(
            "the principals file would be {bytes} bytes; at most {MAX_PRINCIPALS_FILE_BYTES} \
             are allowed"
        ));
    }
    Ok(())
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
    for (user, lines) in &files.principals {
        let content = principals_file(lines);
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
                    vec![PrincipalLine::Plain("kw-t1-tenant".parse().unwrap())],
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

    #[test]
    fn a_jump_users_file_holds_its_forwarding_lines_and_is_left_alone_when_unchanged() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keyward");
        let jump: UnixUser = "jump".parse().unwrap();
        let line = |d: &[&str]| {
            PrincipalLine::Jump(
                JumpPrincipal::new(
                    "keyward:ta:tenant".parse().unwrap(),
                    d.iter().map(|d| d.parse().unwrap()),
                )
                .unwrap(),
            )
        };
        let mut with_jump = files();
        with_jump.principals.insert(
            jump.clone(),
            vec![
                PrincipalLine::Plain("keyward:ops:admin".parse().unwrap()),
                line(&["vps-b.example:2222", "203.0.113.7:22", "203.0.113.7:22"]),
            ],
        );
        assert!(apply_sshd_files(&dir, &with_jump).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join(PRINCIPALS).join("jump")).unwrap(),
            "keyward:ops:admin\nrestrict,port-forwarding,command=\"/usr/sbin/nologin\",\
             permitopen=\"203.0.113.7:22\",permitopen=\"vps-b.example:2222\" keyward:ta:tenant\n"
        );
        assert!(!apply_sshd_files(&dir, &with_jump).unwrap());
        // The same destinations in another order are the same line.
        with_jump.principals.get_mut(&jump).unwrap()[1] =
            line(&["203.0.113.7:22", "vps-b.example:2222"]);
        assert!(!apply_sshd_files(&dir, &with_jump).unwrap());
    }

    #[test]
    fn a_jump_principal_forwards_somewhere() {
        let p: Principal = "keyward:ta:tenant".parse().unwrap();
        let err = JumpPrincipal::new(p.clone(), []).unwrap_err();
        assert!(err.contains("no destination"), "{err}");
        let too_many = (1..=65).map(|port| format!("10.0.0.1:{port}").parse().unwrap());
        let err = JumpPrincipal::new(p.clone(), too_many).unwrap_err();
        assert!(err.contains("at most 64"), "{err}");
        let same = std::iter::repeat_n("10.0.0.1:22".parse().unwrap(), 100);
        assert_eq!(JumpPrincipal::new(p, same).unwrap().permit_open().len(), 1);
    }
}
