//! The authorized_keys writer against real users and real files, as root: the happy path in
//! both modes, the attacks a user can plant in their own home, and stale temp file cleanup.
//! (Crash safety is in `writer_crash.rs`.)

// `allow-unwrap-in-tests` covers #[test] fns only, not the helpers beside them.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use keyward_agent::writer::{self, Refusal, WriteError};
use keyward_common::authorized_keys::{self, ManagedKey, Mode};
use keyward_common::keys::KeyKind;
use keyward_test_support::{TestUser, homes_dir};
use support::managed_key;

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Asserts `result` is a refusal of `path` for `reason`.
fn assert_refused(result: Result<writer::ApplyOutcome, WriteError>, path: &Path, reason: Refusal) {
    match result {
        Err(WriteError::Refused {
            path: got_path,
            reason: got_reason,
        }) => {
            assert_eq!(got_path, path);
            assert_eq!(got_reason, reason);
        }
        other => panic!(
            "expected a refusal of {} ({reason}), got {other:?}",
            path.display()
        ),
    }
}

/// The file now holds exactly `key`'s managed line, as a regular single-link file of the user,
/// and the outcome warns with `warning`.
fn assert_replaced(
    outcome: &writer::ApplyOutcome,
    user: &TestUser,
    key: &ManagedKey,
    warning: &str,
) {
    let meta = fs::symlink_metadata(user.authorized_keys()).unwrap();
    assert!(meta.is_file(), "{meta:?}");
    assert_eq!(
        (meta.nlink(), meta.uid(), meta.mode() & 0o7777),
        (1, user.uid, 0o600)
    );
    let expected = format!("{}\n", authorized_keys::render_line(key).unwrap());
    assert_eq!(
        fs::read_to_string(user.authorized_keys()).unwrap(),
        expected
    );
    assert!(outcome.changed);
    assert!(
        outcome.warnings.iter().any(|w| w.contains(warning)),
        "no warning with {warning:?}: {:?}",
        outcome.warnings
    );
}

/// A root-owned file in a root-only directory, standing in for /etc/shadow.
#[derive(Debug)]
struct Secret {
    path: PathBuf,
    atime: i64,
    mtime: i64,
}

const SECRET: &str = "root:$6$secret-hash:19000:0:99999:7:::\n";

/// Makes a [`Secret`] with atime and mtime two days back: any read of it (by the writer) would
/// move its atime, since `relatime` updates atimes older than a day. The test itself reads it
/// only once, at the very end, in [`assert_untouched`].
fn secret_file(dir: &Path) -> Secret {
    let private = dir.join("root-only");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let path = private.join("shadow");
    fs::write(&path, SECRET).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let old = SystemTime::now() - Duration::from_secs(2 * 86_400);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_accessed(old).set_modified(old))
        .unwrap();
    let meta = fs::metadata(&path).unwrap();
    Secret {
        path,
        atime: meta.atime(),
        mtime: meta.mtime(),
    }
}

/// Neither read (atime) nor written (mtime, content) since [`secret_file`].
fn assert_untouched(secret: &Secret) {
    let meta = fs::metadata(&secret.path).unwrap();
    assert_eq!(
        meta.atime(),
        secret.atime,
        "{} was read",
        secret.path.display()
    );
    assert_eq!(
        meta.mtime(),
        secret.mtime,
        "{} was written",
        secret.path.display()
    );
    assert_eq!(fs::read_to_string(&secret.path).unwrap(), SECRET);
}

#[test]
fn both_modes_write_the_right_content_owner_and_mode_and_then_leave_the_file_alone() {
    let homes = homes_dir();
    let admin = TestUser::create_in("adm", homes.path());
    let tenant = TestUser::create_in("ten", homes.path());
    let (_, admin_key) = managed_key(KeyKind::Admin, 1);
    let (_, tenant_key) = managed_key(KeyKind::Tenant, 4);
    let (own, _) = managed_key(KeyKind::Tenant, 0);
    let (revoked, _) = managed_key(KeyKind::Tenant, 3);

    // The tenant already has a file of their own, with a key keyward revoked copied into it.
    fs::create_dir(tenant.ssh_dir()).unwrap();
    fs::set_permissions(tenant.ssh_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    tenant.own(&tenant.ssh_dir());
    let own_lines = format!("# laptop\n{}\n\n", own.public_openssh());
    fs::write(
        tenant.authorized_keys(),
        format!("{own_lines}{}\n", revoked.public_openssh()),
    )
    .unwrap();
    tenant.own(&tenant.authorized_keys());
    assert!(!admin.ssh_dir().exists(), "useradd's skeleton has no .ssh");

    let cases = [
        (&admin, Mode::Exclusive, &admin_key, String::new()),
        (&tenant, Mode::Preserve, &tenant_key, own_lines),
    ];
    for (user, mode, key, kept) in cases {
        let denied = [revoked.fingerprint().clone()];
        let keys = std::slice::from_ref(key);
        let outcome = writer::apply(&user.name, mode, keys, &denied).unwrap();
        assert!(outcome.changed);
        let expected = format!("{kept}{}\n", authorized_keys::render_line(key).unwrap());
        assert_eq!(
            fs::read_to_string(user.authorized_keys()).unwrap(),
            expected
        );
        assert_eq!(
            outcome.fingerprints,
            vec![authorized_keys::fingerprints(&expected).pop().unwrap().0]
        );

        let file = fs::metadata(user.authorized_keys()).unwrap();
        assert_eq!((file.uid(), file.gid()), (user.uid, user.gid), "{mode}");
        assert_eq!(file.mode() & 0o7777, 0o600, "{mode}");
        let dir = fs::metadata(user.ssh_dir()).unwrap();
        assert_eq!(
            (dir.uid(), dir.mode() & 0o7777),
            (user.uid, 0o700),
            "{mode}"
        );

        // The same state again: nothing is written, not even the same bytes.
        let again = writer::apply(&user.name, mode, keys, &denied).unwrap();
        assert!(!again.changed, "{mode}: rewrote an up-to-date file");
        assert_eq!(again.fingerprints, outcome.fingerprints);
        let after = fs::metadata(user.authorized_keys()).unwrap();
        assert_eq!(after.ino(), file.ino(), "{mode}: file replaced");
        assert_eq!(
            (after.mtime(), after.mtime_nsec()),
            (file.mtime(), file.mtime_nsec()),
            "{mode}: file modified"
        );

        // A wrong mode alone (content right) is repaired.
        fs::set_permissions(user.authorized_keys(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            writer::apply(&user.name, mode, keys, &denied)
                .unwrap()
                .changed
        );
        assert_eq!(mode_of(&user.authorized_keys()), 0o600);
        assert_eq!(
            fs::read_to_string(user.authorized_keys()).unwrap(),
            expected
        );
    }
}

#[test]
fn a_missing_user_is_reported() {
    let user = "kwnosuchuserzz".parse().unwrap();
    let err = writer::apply(&user, Mode::Exclusive, &[], &[]).unwrap_err();
    assert!(matches!(err, WriteError::NoSuchUser { .. }), "{err:?}");
}

#[test]
fn authorized_keys_symlinked_to_a_root_file_is_replaced_and_the_file_is_not_read() {
    // sshd follows the link: leaving it (refusing to write) would pin whatever it points at.
    let homes = homes_dir();
    let user = TestUser::create_in("sym", homes.path());
    let secret = secret_file(homes.path());
    fs::create_dir(user.ssh_dir()).unwrap();
    user.own(&user.ssh_dir());

    let (_, key) = managed_key(KeyKind::Tenant, 1);
    for mode in [Mode::Preserve, Mode::Exclusive] {
        symlink(&secret.path, user.authorized_keys()).unwrap();
        user.own(&user.authorized_keys());
        let outcome = writer::apply(&user.name, mode, std::slice::from_ref(&key), &[]).unwrap();
        assert_replaced(&outcome, &user, &key, "symbolic link");
        assert!(outcome.previous.is_empty(), "the link's target was read");
        fs::remove_file(user.authorized_keys()).unwrap();
    }
    assert_untouched(&secret);
    let leftovers: Vec<_> = fs::read_dir(user.ssh_dir()).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn authorized_keys_hard_linked_to_another_file_is_replaced_and_that_file_untouched() {
    // A hard link once made every write refused while sshd kept reading the stale file.
    let homes = homes_dir();
    let user = TestUser::create_in("hln", homes.path());
    let victim = secret_file(homes.path());
    fs::create_dir(user.ssh_dir()).unwrap();
    user.own(&user.ssh_dir());

    let (_, key) = managed_key(KeyKind::Tenant, 1);
    for mode in [Mode::Preserve, Mode::Exclusive] {
        fs::hard_link(&victim.path, user.authorized_keys()).unwrap();
        let outcome = writer::apply(&user.name, mode, std::slice::from_ref(&key), &[]).unwrap();
        assert_replaced(&outcome, &user, &key, "2 hard links");
        assert!(outcome.previous.is_empty(), "the linked file was read");
        assert_eq!(fs::metadata(&victim.path).unwrap().nlink(), 1);
        fs::remove_file(user.authorized_keys()).unwrap();
    }
    assert_untouched(&victim);
}

#[test]
fn ssh_dir_symlinked_to_another_users_ssh_is_moved_aside_and_theirs_untouched() {
    let homes = homes_dir();
    let victim = TestUser::create_in("vic", homes.path());
    let attacker = TestUser::create_in("att", homes.path());
    let (_, victim_key) = managed_key(KeyKind::Tenant, 1);
    let (_, attacker_key) = managed_key(KeyKind::Tenant, 2);
    writer::apply(
        &victim.name,
        Mode::Exclusive,
        std::slice::from_ref(&victim_key),
        &[],
    )
    .unwrap();
    let before = fs::read(victim.authorized_keys()).unwrap();
    let before_ino = fs::metadata(victim.authorized_keys()).unwrap().ino();

    let moved = attacker.home.join(writer::MOVED_SSH);
    for mode in [Mode::Preserve, Mode::Exclusive] {
        symlink(victim.ssh_dir(), attacker.ssh_dir()).unwrap();
        attacker.own(&attacker.ssh_dir());
        let keys = std::slice::from_ref(&attacker_key);
        let outcome = writer::apply(&attacker.name, mode, keys, &[]).unwrap();
        assert!(fs::symlink_metadata(attacker.ssh_dir()).unwrap().is_dir());
        assert_replaced(
            &outcome,
            &attacker,
            &attacker_key,
            "moved to .ssh.keyward-moved",
        );
        assert!(fs::symlink_metadata(&moved).unwrap().is_symlink());
        fs::remove_dir_all(attacker.ssh_dir()).unwrap();
    }
    assert_eq!(fs::read(victim.authorized_keys()).unwrap(), before);
    assert_eq!(
        fs::metadata(victim.authorized_keys()).unwrap().ino(),
        before_ino
    );
    let victim_entries = fs::read_dir(victim.ssh_dir()).unwrap().count();
    assert_eq!(
        victim_entries, 1,
        "something was created in the victim's .ssh"
    );
}

#[test]
fn unsafe_homes_and_ssh_dirs_are_refused() {
    let homes = homes_dir();
    let user = TestUser::create_in("prm", homes.path());
    let other = TestUser::create_in("oth", homes.path());
    let (_, key) = managed_key(KeyKind::Tenant, 1);
    let keys = std::slice::from_ref(&key);
    let apply = || writer::apply(&user.name, Mode::Preserve, keys, &[]);

    // Home writable by group: another member could swap `.ssh`.
    fs::set_permissions(&user.home, fs::Permissions::from_mode(0o770)).unwrap();
    assert_refused(
        apply(),
        &user.home,
        Refusal::GroupOrOtherWritable { mode: 0o770 },
    );
    assert!(
        !user.ssh_dir().exists(),
        ".ssh was created in a refused home"
    );
    fs::set_permissions(&user.home, fs::Permissions::from_mode(0o755)).unwrap();

    // `.ssh` writable by other, then owned by another user.
    fs::create_dir(user.ssh_dir()).unwrap();
    user.own(&user.ssh_dir());
    fs::set_permissions(user.ssh_dir(), fs::Permissions::from_mode(0o702)).unwrap();
    let mode = Refusal::GroupOrOtherWritable { mode: 0o702 };
    assert_refused(apply(), &user.ssh_dir(), mode);
    fs::set_permissions(user.ssh_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    other.own(&user.ssh_dir());
    assert_refused(
        apply(),
        &user.ssh_dir(),
        Refusal::WrongOwner { uid: other.uid },
    );
    user.own(&user.ssh_dir());

    // `authorized_keys` as a FIFO (must not block the agent): replaced unread. As a directory
    // (which cannot be renamed over, and from which sshd reads no keys): refused.
    nix::unistd::mkfifo(&user.authorized_keys(), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let outcome = apply().unwrap();
    assert_replaced(&outcome, &user, &keys[0], "not a regular file");
    fs::remove_file(user.authorized_keys()).unwrap();
    fs::create_dir(user.authorized_keys()).unwrap();
    assert_refused(apply(), &user.authorized_keys(), Refusal::NotARegularFile);
    fs::remove_dir(user.authorized_keys()).unwrap();

    // Another user's file moved in: its lines are not copied into this user's file, and it is
    // replaced.
    fs::write(user.authorized_keys(), "# theirs\n").unwrap();
    other.own(&user.authorized_keys());
    let outcome = apply().unwrap();
    assert_replaced(
        &outcome,
        &user,
        &keys[0],
        &format!("owned by uid {}", other.uid),
    );
    assert!(outcome.previous.is_empty());
    fs::remove_file(user.authorized_keys()).unwrap();

    // The home reached through a symlink.
    let link = homes.path().join("link-to-home");
    symlink(&user.home, &link).unwrap();
    let result = writer::apply_in_home(&link, user.uid(), user.gid(), Mode::Preserve, keys, &[]);
    assert_refused(result, &link, Refusal::Symlink);
    let relative = Path::new("relative/home");
    let result = writer::apply_in_home(relative, user.uid(), user.gid(), Mode::Preserve, keys, &[]);
    assert_refused(result, relative, Refusal::BadHomePath);

    // With everything fixed, the write goes through.
    assert!(apply().unwrap().changed);
}

#[test]
fn stale_temp_files_are_removed_without_following_them() {
    let homes = homes_dir();
    let user = TestUser::create_in("tmp", homes.path());
    let victim = secret_file(homes.path());
    let (_, key) = managed_key(KeyKind::Admin, 1);
    writer::apply(&user.name, Mode::Exclusive, std::slice::from_ref(&key), &[]).unwrap();

    let stale = user.ssh_dir().join(".keyward-tmp-00000000deadbeef");
    fs::write(&stale, "half a file").unwrap();
    let planted = user.ssh_dir().join(".keyward-tmp-planted");
    symlink(&victim.path, &planted).unwrap();
    user.own(&planted);
    let outcome =
        writer::apply(&user.name, Mode::Exclusive, std::slice::from_ref(&key), &[]).unwrap();
    assert!(!outcome.changed);
    assert!(!stale.exists());
    assert!(
        fs::symlink_metadata(&planted).is_err(),
        "the planted link was kept"
    );
    assert_untouched(&victim);
}

#[test]
fn an_oversized_file_is_moved_aside_in_preserve_mode_and_replaced_in_exclusive_mode() {
    let homes = homes_dir();
    let user = TestUser::create_in("big", homes.path());
    fs::create_dir(user.ssh_dir()).unwrap();
    user.own(&user.ssh_dir());
    let limits = writer::PreserveLimits::default();
    let (_, key) = managed_key(KeyKind::Admin, 1);
    let keys = std::slice::from_ref(&key);
    let oversized = user.ssh_dir().join(writer::OVERSIZED);

    // Too many bytes, then too many (short) lines: moved aside unread, the user's own file.
    let big = vec![b'#'; usize::try_from(limits.max_bytes).unwrap() + 1];
    let many = "#\n".repeat(limits.max_lines + 1).into_bytes();
    for (content, warning) in [(big, "bytes"), (many, "lines")] {
        fs::write(user.authorized_keys(), &content).unwrap();
        user.own(&user.authorized_keys());
        let outcome = writer::apply(&user.name, Mode::Preserve, keys, &[]).unwrap();
        assert_replaced(&outcome, &user, &key, warning);
        assert!(
            outcome.warnings[0].contains(writer::OVERSIZED),
            "{:?}",
            outcome.warnings
        );
        assert_eq!(fs::read(&oversized).unwrap(), content);
        assert_eq!(fs::metadata(&oversized).unwrap().uid(), user.uid);
    }
    fs::remove_file(&oversized).unwrap();

    // Exclusive mode drops the user's lines anyway: replaced, nothing to keep or say.
    let big = vec![b'#'; usize::try_from(limits.max_bytes).unwrap() + 1];
    fs::write(user.authorized_keys(), &big).unwrap();
    user.own(&user.authorized_keys());
    let outcome = writer::apply(&user.name, Mode::Exclusive, keys, &[]).unwrap();
    assert!(outcome.changed && outcome.previous.is_empty() && outcome.warnings.is_empty());
    assert!(!oversized.exists());
    let expected = format!("{}\n", authorized_keys::render_line(&key).unwrap());
    assert_eq!(
        fs::read_to_string(user.authorized_keys()).unwrap(),
        expected
    );
}

#[test]
fn revoke_empties_the_file_and_sets_the_users_own_lines_aside() {
    let homes = homes_dir();
    let user = TestUser::create_in("rvk", homes.path());
    let (_, managed) = managed_key(KeyKind::Tenant, 1);
    let (own_key, _) = managed_key(KeyKind::Tenant, 2);
    let (denied_key, _) = managed_key(KeyKind::Tenant, 3);
    let denied = [denied_key.fingerprint().clone()];
    fs::create_dir(user.ssh_dir()).unwrap();
    user.own(&user.ssh_dir());
    let own_line = format!("{} planted-with-a-leaked-key", own_key.public_openssh());
    let users_lines = format!("# mine\n{own_line}\n{}\n", denied_key.public_openssh());
    fs::write(user.authorized_keys(), &users_lines).unwrap();
    user.own(&user.authorized_keys());
    writer::apply(
        &user.name,
        Mode::Preserve,
        std::slice::from_ref(&managed),
        &denied,
    )
    .unwrap();

    let revoked = writer::Desired {
        revoked: true,
        ..writer::Desired::new(Mode::Preserve, &[], &denied)
    };
    let outcome = writer::apply_desired(&user.name, &revoked).unwrap();
    assert!(outcome.changed);
    assert_eq!(
        fs::read(user.authorized_keys()).unwrap(),
        b"",
        "no line at all"
    );
    assert!(outcome.own.is_empty() && outcome.fingerprints.is_empty());
    let aside = user.ssh_dir().join(writer::SET_ASIDE);
    // The user's own lines (not keyward's, not the denied key's), readable but not theirs.
    assert_eq!(
        fs::read_to_string(&aside).unwrap(),
        format!("# mine\n{own_line}\n")
    );
    let meta = fs::metadata(&aside).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
    assert_eq!(
        outcome.set_aside.keys,
        vec![own_key.fingerprint().to_string()]
    );

    // The user writes its key back: the next apply sets nothing aside twice.
    fs::write(user.authorized_keys(), format!("{own_line}\n")).unwrap();
    user.own(&user.authorized_keys());
    let again = writer::apply_desired(&user.name, &revoked).unwrap();
    assert_eq!(fs::read(user.authorized_keys()).unwrap(), b"");
    assert_eq!(
        fs::read_to_string(&aside).unwrap(),
        format!("# mine\n{own_line}\n")
    );
    assert_eq!(again.set_aside.keys.len(), 1);

    // Regenerated: the file holds the new key; the set-aside file stays and is still listed.
    let back = writer::apply(
        &user.name,
        Mode::Preserve,
        std::slice::from_ref(&managed),
        &denied,
    )
    .unwrap();
    assert_eq!(back.set_aside.keys, vec![own_key.fingerprint().to_string()]);
    assert!(aside.exists());
}

/// Preserve mode keeps the user's bytes exactly (invalid UTF-8, CRLF, NUL) and still finds a
/// revoked key the tenant disguised the way sshd reads it (vertical tab in the base64, options
/// in front, a signature-only name is not needed for Ed25519).
#[test]
fn preserve_keeps_user_bytes_and_drops_a_disguised_revoked_key() {
    let homes = homes_dir();
    let tenant = TestUser::create_in("byt", homes.path());
    let (_, tenant_key) = managed_key(KeyKind::Tenant, 2);
    let (own, _) = managed_key(KeyKind::Tenant, 0);
    let (revoked, _) = managed_key(KeyKind::Tenant, 1);
    let mut fields = revoked.public_openssh().split(' ');
    let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
    let (head, tail) = blob.split_at(20);

    fs::create_dir(tenant.ssh_dir()).unwrap();
    fs::set_permissions(tenant.ssh_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    tenant.own(&tenant.ssh_dir());
    let kept = [
        b"# \xe9t\xe9 \xff\r\n".as_slice(),
        format!("{}\r\n", own.public_openssh()).as_bytes(),
        b"junk\0after nul\n",
    ]
    .concat();
    let disguised = format!("no-pty,command=\"a b\" {kind} {head}\x0b{tail}\r\n");
    fs::write(
        tenant.authorized_keys(),
        [kept.as_slice(), disguised.as_bytes()].concat(),
    )
    .unwrap();
    tenant.own(&tenant.authorized_keys());

    let denied = [revoked.fingerprint().clone()];
    let outcome = writer::apply(
        &tenant.name,
        Mode::Preserve,
        std::slice::from_ref(&tenant_key),
        &denied,
    )
    .unwrap();
    assert!(outcome.changed);
    assert_eq!(
        outcome.previous,
        vec![
            (own.fingerprint().clone(), false),
            (revoked.fingerprint().clone(), false)
        ]
    );
    let expected = [
        kept.as_slice(),
        authorized_keys::render_line(&tenant_key)
            .unwrap()
            .as_bytes(),
        b"\n",
    ]
    .concat();
    assert_eq!(fs::read(tenant.authorized_keys()).unwrap(), expected);
}
