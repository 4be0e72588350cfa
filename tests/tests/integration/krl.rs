//! keyward's KRL encoder (`keyward_common::krl`) against OpenSSH's own KRL code, differentially:
//! `ssh-keygen -k` writes a KRL from the same revocations and `ssh-keygen -Q -l` must list both
//! alike; `ssh-keygen -Q` (the check sshd's `RevokedKeys` makes) must call REVOKED exactly the
//! certificates and keys that are; and Debian's sshd with our KRL refuses exactly those logins.
//! Revocation sets are random (seeded: the seed is in every failure message,
//! `KEYWARD_KRL_SEED=N` repeats one) around hand-picked edges.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use keyward_common::Fingerprint;
use keyward_common::krl::RevocationList;
use keyward_test_support::SshdOptions;
use keyward_tests::{Sshd, TestUser, require_program};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssh_key::PublicKey;

const KRL_VERSION: u64 = 42;
const GENERATED: u64 = 1_800_000_000;

fn ssh_keygen<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let program = require_program(
        "ssh-keygen",
        "install Debian's openssh-client: `apt-get install -y openssh-client` (`make test-deps` does)",
    );
    Command::new(program).args(args).output().unwrap()
}

fn ssh_keygen_ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = ssh_keygen(args);
    let argv: Vec<_> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    assert!(
        out.status.success(),
        "ssh-keygen {argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The seed of a randomised test: `KEYWARD_KRL_SEED` or a fresh one, printed.
fn seed(round: u64) -> u64 {
    let seed = std::env::var("KEYWARD_KRL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>)
        .wrapping_add(round);
    println!("KEYWARD_KRL_SEED={seed}");
    seed
}

/// One randomised round: its seed and generator, a directory of its own, and the CA (its private
/// key's path and its public key) whose revocations the KRL carries.
struct Round {
    seed: u64,
    rng: StdRng,
    dir: tempfile::TempDir,
    ca_key: PathBuf,
    ca: PublicKey,
}

impl Round {
    fn start(round: u64) -> Round {
        let seed = seed(round);
        let dir = tempfile::tempdir().unwrap();
        let (ca_key, ca) = key_pair(dir.path(), "ca");
        Round {
            seed,
            rng: StdRng::seed_from_u64(seed),
            dir,
            ca_key,
            ca,
        }
    }
}

/// An Ed25519 key pair made by ssh-keygen: the private key's path and the public key.
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PublicKey) {
    let path = dir.join(name);
    ssh_keygen_ok(&[
        "-q".as_ref(),
        "-t".as_ref(),
        "ed25519".as_ref(),
        "-N".as_ref(),
        "".as_ref(),
        "-C".as_ref(),
        name.as_ref(),
        "-f".as_ref(),
        path.as_os_str(),
    ]);
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, PublicKey::from_openssh(public.trim()).unwrap())
}

fn pub_path(private: &Path) -> PathBuf {
    private.with_extension("pub")
}

/// A user certificate for the public key `user_pub` and `principal`, signed by `ca` (a private
/// key file) with `key_id` and `serial`, written to `{name}-cert.pub` in `dir`.
fn certify(
    principal: &str,
    dir: &Path,
    ca: &Path,
    user_pub: &Path,
    key_id: &str,
    serial: u64,
    name: &str,
) -> PathBuf {
    let copy = dir.join(format!("{name}.pub"));
    std::fs::copy(user_pub, &copy).unwrap();
    ssh_keygen_ok(&[
        "-q".as_ref(),
        "-s".as_ref(),
        ca.as_os_str(),
        "-I".as_ref(),
        key_id.as_ref(),
        "-n".as_ref(),
        principal.as_ref(),
        "-z".as_ref(),
        serial.to_string().as_ref(),
        copy.as_os_str(),
    ]);
    dir.join(format!("{name}-cert.pub"))
}

/// `ssh-keygen -Q -f krl FILES`: whether OpenSSH finds each file's key revoked. Its exit code is
/// 1 when one is revoked and 0 when none is.
fn query(krl: &Path, files: &[PathBuf]) -> Vec<bool> {
    let mut args = vec!["-Q".as_ref(), "-f".as_ref(), krl.as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = ssh_keygen(&args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let answers: Vec<bool> = stdout
        .lines()
        .map(|line| {
            if line.ends_with(": REVOKED") {
                true
            } else if line.ends_with(": ok") {
                false
            } else {
                panic!("ssh-keygen -Q said {line:?} (stderr: {stderr})")
            }
        })
        .collect();
    assert_eq!(answers.len(), files.len(), "{stdout}\n{stderr}");
    let any = answers.iter().any(|&revoked| revoked);
    assert_eq!(
        out.status.code(),
        Some(i32::from(any)),
        "{stdout}\n{stderr}"
    );
    answers
}

/// `ssh-keygen -Q -l -f krl`: the KRL's contents as OpenSSH reads them.
fn dump(krl: &Path) -> String {
    ssh_keygen_ok(&["-Q".as_ref(), "-l".as_ref(), "-f".as_ref(), krl.as_os_str()])
}

/// [`dump`] as OpenSSH reads them, made comparable: the generation
/// time (printed in local time, and ssh-keygen's own is now) is dropped and the blocks (the keys
/// and hashes, then one per CA) are sorted, as ssh-keygen lists CAs in the order it met them.
fn listing(krl: &Path) -> Vec<String> {
    let text = dump(krl);
    let mut blocks = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("# Generated at ") || line.is_empty() {
            continue;
        }
        if line.starts_with("# CA key ") || line == "# Wildcard CA" {
            blocks.push(String::new());
        }
        let block = blocks.last_mut().unwrap();
        block.push_str(line);
        block.push('\n');
    }
    blocks.sort();
    blocks
}

/// Revocations, as both sides are given them.
#[derive(Debug, Default)]
struct Revoked {
    /// Serial ranges of the CA, and of any CA; unsorted, overlapping, with repeats.
    ca_serials: Vec<(u64, u64)>,
    any_serials: Vec<(u64, u64)>,
    ca_ids: Vec<String>,
    any_ids: Vec<String>,
    hashes: Vec<[u8; 32]>,
    /// Public keys revoked by their whole blob.
    explicit: Vec<PublicKey>,
}

impl Revoked {
    fn ours(&self, ca: &PublicKey, comment: &str) -> RevocationList {
        let mut krl = RevocationList::new(KRL_VERSION, GENERATED, comment).unwrap();
        for (scope, ranges) in [(Some(ca), &self.ca_serials), (None, &self.any_serials)] {
            for &(lo, hi) in ranges {
                if lo == hi {
                    krl.revoke_serial(scope, lo).unwrap();
                } else {
                    krl.revoke_serial_range(scope, lo, hi).unwrap();
                }
            }
        }
        for id in &self.ca_ids {
            krl.revoke_key_id(Some(ca), id).unwrap();
        }
        for id in &self.any_ids {
            krl.revoke_key_id(None, id).unwrap();
        }
        for &hash in &self.hashes {
            krl.revoke_sha256(hash).unwrap();
        }
        for key in &self.explicit {
            krl.revoke_key_explicit(key).unwrap();
        }
        krl
    }

    /// The same revocations written by `ssh-keygen -k` from KRL specifications: one for the
    /// CA (`-s ca.pub`), then one more merged in (`-u`) for any CA (`-s none`) with the keys.
    fn theirs(&self, dir: &Path, ca_pub: &Path, out: &Path) {
        let serial_lines = |ranges: &[(u64, u64)]| -> String {
            ranges
                .iter()
                .map(|&(lo, hi)| match lo == hi {
                    true => format!("serial: {lo}\n"),
                    false => format!("serial: {lo}-{hi}\n"),
                })
                .collect()
        };
        let id_lines =
            |ids: &[String]| -> String { ids.iter().map(|id| format!("id: {id}\n")).collect() };
        let ca_spec = dir.join("ca.spec");
        std::fs::write(
            &ca_spec,
            serial_lines(&self.ca_serials) + &id_lines(&self.ca_ids),
        )
        .unwrap();
        let mut any = serial_lines(&self.any_serials) + &id_lines(&self.any_ids);
        for &hash in &self.hashes {
            any += &format!("hash: {}\n", ssh_key::Fingerprint::Sha256(hash));
        }
        for key in &self.explicit {
            any += &format!("key: {}\n", key.to_openssh().unwrap());
        }
        let any_spec = dir.join("any.spec");
        std::fs::write(&any_spec, any).unwrap();
        let version = KRL_VERSION.to_string();
        let _ = std::fs::remove_file(out);
        for (update, scope, spec) in [
            (None, ca_pub.as_os_str(), &ca_spec),
            (Some("-u"), "none".as_ref(), &any_spec),
        ] {
            let mut args: Vec<&OsStr> = vec!["-k".as_ref()];
            args.extend(update.map(OsStr::new));
            args.extend(["-z".as_ref(), version.as_ref(), "-s".as_ref(), scope]);
            args.extend(["-f".as_ref(), out.as_os_str(), spec.as_os_str()]);
            ssh_keygen_ok(&args);
        }
    }

    fn serial_revoked(&self, by_ca: bool, serial: u64) -> bool {
        let inside =
            |ranges: &[(u64, u64)]| ranges.iter().any(|&(lo, hi)| lo <= serial && serial <= hi);
        serial != 0 && ((by_ca && inside(&self.ca_serials)) || inside(&self.any_serials))
    }

    fn id_revoked(&self, by_ca: bool, id: &str) -> bool {
        (by_ca && self.ca_ids.iter().any(|i| i == id)) || self.any_ids.iter().any(|i| i == id)
    }
}

/// Random serial ranges in one area of the serial space (near 1, anywhere, or near the top):
/// single serials, runs of 2 and longer, gaps of 1, dense stretches (bitmaps) and far scatter.
fn random_serials(rng: &mut StdRng, clusters: usize) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    for _ in 0..clusters {
        let base: u64 = match rng.gen_range(0..3) {
            0 => rng.gen_range(1..1_000),
            1 => rng.gen_range(1..u64::MAX / 2),
            _ => u64::MAX - rng.gen_range(0..100_000),
        };
        let mut at = base;
        for _ in 0..rng.gen_range(1..30) {
            let (len, gap) = match rng.gen_range(0..6) {
                0 => (1, 1),
                1 => (2, rng.gen_range(1..4)),
                2 => (rng.gen_range(3..300), rng.gen_range(1..100)),
                3 => (1, rng.gen_range(1..70)),
                4 => (rng.gen_range(1..5), rng.gen_range(100..100_000)),
                _ => (rng.gen_range(150..3_000), 1),
            };
            let hi = at.saturating_add(len - 1);
            ranges.push((at, hi));
            if rng.gen_bool(0.1) {
                ranges.push((at, hi)); // the same again
            }
            match hi.checked_add(gap + 1) {
                Some(next) => at = next,
                None => break,
            }
        }
    }
    ranges
}

fn random_id(rng: &mut StdRng) -> String {
    format!(
        "tenant-{}@vps-{}.example",
        rng.gen_range(0..40),
        rng.gen_range(0..5)
    )
}

fn random_revocations(rng: &mut StdRng, dir: &Path) -> (Revoked, Vec<(PathBuf, PublicKey)>) {
    let mut revoked = Revoked {
        ca_serials: random_serials(rng, 4),
        any_serials: random_serials(rng, 2),
        ..Revoked::default()
    };
    // The edges: serial 1, the largest, a run of 2 and a gap of 1 by themselves.
    revoked
        .ca_serials
        .extend([(1, 1), (u64::MAX, u64::MAX), (10, 11), (13, 13)]);
    revoked.ca_ids = (0..rng.gen_range(1..8)).map(|_| random_id(rng)).collect();
    revoked.any_ids = (0..rng.gen_range(1..4)).map(|_| random_id(rng)).collect();
    revoked.hashes = (0..rng.gen_range(1..50)).map(|_| rng.r#gen()).collect();
    let keys: Vec<_> = (0..6).map(|i| key_pair(dir, &format!("user{i}"))).collect();
    // Keys 0 and 1 by hash, key 2 by blob; 3, 4 and 5 stay valid.
    for (_, key) in &keys[..2] {
        revoked.hashes.push(Fingerprint::of(key).sha256().unwrap());
    }
    revoked.explicit.push(keys[2].1.clone());
    (revoked, keys)
}

#[test]
fn ssh_keygen_lists_our_krl_as_its_own_for_the_same_revocations() {
    for round in 0..4 {
        let mut r = Round::start(round);
        let (seed, ca_key, ca) = (r.seed, r.ca_key.clone(), r.ca.clone());
        let (revoked, _) = random_revocations(&mut r.rng, r.dir.path());
        let ours = r.dir.path().join("ours.krl");
        std::fs::write(&ours, revoked.ours(&ca, "").encode()).unwrap();
        let theirs = r.dir.path().join("theirs.krl");
        revoked.theirs(r.dir.path(), &pub_path(&ca_key), &theirs);
        assert_eq!(listing(&ours), listing(&theirs), "seed {seed}");
    }
}

#[test]
fn the_header_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.krl");
    let mut krl = RevocationList::new(7, GENERATED, "keyward state 7").unwrap();
    krl.revoke_key_id(None, "x").unwrap();
    std::fs::write(&path, krl.encode()).unwrap();
    let text = dump(&path);
    assert!(text.starts_with("# KRL version 7\n"), "{text}");
    assert!(text.contains("# Comment: keyward state 7\n"), "{text}");
    assert!(text.contains("# Wildcard CA\nid: x\n"), "{text}");
}

#[test]
fn ssh_keygen_finds_revoked_exactly_what_our_krl_revokes() {
    for round in 0..2 {
        let mut r = Round::start(round);
        let (seed, ca_key, ca) = (r.seed, r.ca_key.clone(), r.ca.clone());
        let d = r.dir.path();
        let (other_ca, _) = key_pair(d, "other-ca");
        let (revoked, keys) = random_revocations(&mut r.rng, d);
        let rng = &mut r.rng;
        let krl = d.join("ours.krl");
        std::fs::write(&krl, revoked.ours(&ca, "query").encode()).unwrap();

        // Serials at every range's edges, inside it and around it, by this CA and by another.
        let mut serials = BTreeSet::from([1, 2, u64::MAX, u64::MAX - 1]);
        for &(lo, hi) in revoked.ca_serials.iter().chain(&revoked.any_serials) {
            serials.extend([lo.saturating_sub(1), lo, hi, hi.saturating_add(1)]);
            serials.insert(rng.gen_range(lo..=hi));
        }
        serials.remove(&0);
        let serials: Vec<u64> = serials.into_iter().filter(|_| rng.gen_bool(0.5)).collect();
        let mut files = Vec::new();
        let mut expected = Vec::new();
        let user = pub_path(&keys[5].0);
        for (i, &serial) in serials.iter().enumerate() {
            let by_ca = i % 4 != 0;
            let signer = if by_ca { &ca_key } else { &other_ca };
            files.push(certify(
                "u",
                d,
                signer,
                &user,
                "not-revoked",
                serial,
                &format!("s{i}"),
            ));
            expected.push((
                format!("serial {serial} by_ca {by_ca}"),
                revoked.serial_revoked(by_ca, serial),
            ));
        }
        // Key ids, revoked or not, with serial 0 (never revoked by serial) and a valid serial.
        let mut ids: Vec<String> = revoked
            .ca_ids
            .iter()
            .chain(&revoked.any_ids)
            .cloned()
            .collect();
        ids.extend((0..4).map(|_| random_id(rng)));
        for (i, id) in ids.iter().enumerate() {
            for (by_ca, serial) in [(true, 0), (false, 0), (true, 5)] {
                let signer = if by_ca { &ca_key } else { &other_ca };
                files.push(certify(
                    "u",
                    d,
                    signer,
                    &user,
                    id,
                    serial,
                    &format!("i{i}-{by_ca}-{serial}"),
                ));
                let want = revoked.id_revoked(by_ca, id) || revoked.serial_revoked(by_ca, serial);
                expected.push((format!("id {id:?} serial {serial} by_ca {by_ca}"), want));
            }
        }
        // Plain keys: 0 and 1 revoked by hash, 2 by blob; a certificate of key 0 is revoked too.
        for (i, (private, _)) in keys.iter().enumerate() {
            files.push(pub_path(private));
            expected.push((format!("plain key {i}"), i < 3));
        }
        files.push(certify(
            "u",
            d,
            &other_ca,
            &pub_path(&keys[0].0),
            "k0",
            3,
            "k0",
        ));
        expected.push(("certificate of key 0".to_owned(), true));

        let revoked_count = expected.iter().filter(|(_, want)| *want).count();
        assert!(
            revoked_count > 10 && expected.len() - revoked_count > 10,
            "{revoked_count} of {} revoked: seed {seed}",
            expected.len()
        );
        let answers = query(&krl, &files);
        for ((what, want), got) in expected.iter().zip(answers) {
            assert_eq!(got, *want, "{what}: seed {seed}");
        }
    }
}

#[test]
fn a_krl_of_100000_serials_and_10000_keys_is_read_and_answers() {
    let mut r = Round::start(0);
    let (seed, ca_key, ca) = (r.seed, r.ca_key.clone(), r.ca.clone());
    let d = r.dir.path();
    let rng = &mut r.rng;
    let (user, user_key) = key_pair(d, "user");
    let (holder, _) = key_pair(d, "holder");

    // 100,000 serials: runs of consecutive ones, dense stretches with small gaps, and scatter.
    let mut serials = BTreeSet::new();
    let mut at = 1u64;
    while serials.len() < 100_000 {
        match rng.gen_range(0..10) {
            0 => serials.extend(at..at + rng.gen_range(2..500)),
            1..=5 => {
                serials.insert(at);
            }
            _ => {
                serials.insert(rng.gen_range(1..u64::MAX));
            }
        }
        at += rng.gen_range(2..20);
    }
    let mut revoked = Revoked {
        ca_serials: serials.iter().map(|&s| (s, s)).collect(),
        hashes: (0..9_999).map(|_| rng.r#gen()).collect(),
        ..Revoked::default()
    };
    revoked
        .hashes
        .push(Fingerprint::of(&user_key).sha256().unwrap());
    let ours = d.join("ours.krl");
    let list = revoked.ours(&ca, "");
    let started = Instant::now();
    let bytes = list.encode();
    let encoded_in = started.elapsed();
    std::fs::write(&ours, &bytes).unwrap();
    let theirs = d.join("theirs.krl");
    revoked.theirs(d, &pub_path(&ca_key), &theirs);
    let theirs_len = std::fs::metadata(&theirs).unwrap().len();
    println!(
        "KRL of 100,000 serials and 10,000 SHA-256 hashes: {} bytes (ssh-keygen -k: {theirs_len}), \
         encoded in {encoded_in:?} (debug build)",
        bytes.len()
    );
    assert_eq!(listing(&ours), listing(&theirs), "seed {seed}");

    let mut files = vec![pub_path(&user), pub_path(&ca_key)];
    let mut expected = vec![true, false];
    let sample: Vec<u64> = serials.iter().step_by(5_000).copied().collect();
    for (i, serial) in sample.iter().flat_map(|&s| [s, s + 1]).enumerate() {
        files.push(certify(
            "u",
            d,
            &ca_key,
            &pub_path(&holder),
            "x",
            serial,
            &format!("c{i}"),
        ));
        expected.push(serials.contains(&serial));
    }
    assert_eq!(query(&ours, &files), expected, "seed {seed}");
}

/// sshd itself, with our KRL as its `RevokedKeys`: a plain key revoked by hash is refused
/// whatever options its `authorized_keys` line has, a certificate revoked by serial or by key id
/// is refused, and the others log in.
#[test]
fn sshd_refuses_what_our_krl_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let user = TestUser::create("krl");
    let principal = user.name.as_str();
    let (ca_key, ca) = key_pair(d, "ca");
    let keys: Vec<(PathBuf, PublicKey)> = (0..5).map(|i| key_pair(d, &format!("k{i}"))).collect();
    let line = |i: usize| keys[i].1.to_openssh().unwrap();
    user.write_authorized_keys(format!("{}\nrestrict,pty {}\n", line(0), line(1)).as_bytes());
    // Keys 2 to 4 by certificate (ssh -i takes `k{i}-cert.pub` along).
    for (i, key_id, serial) in [(2, "kept", 8), (3, "kept", 7), (4, "gone", 9)] {
        let cert = certify(
            principal,
            d,
            &ca_key,
            &pub_path(&keys[i].0),
            key_id,
            serial,
            "c",
        );
        std::fs::rename(cert, d.join(format!("k{i}-cert.pub"))).unwrap();
    }

    let mut krl = RevocationList::new(1, GENERATED, "sshd").unwrap();
    krl.revoke_fingerprint(&Fingerprint::of(&keys[1].1))
        .unwrap();
    krl.revoke_serial_range(Some(&ca), 5, 7).unwrap();
    krl.revoke_key_id(Some(&ca), "gone").unwrap();
    std::fs::create_dir(d.join("sshd")).unwrap();
    // The test sshd reads its RevokedKeys, TrustedUserCAKeys and principals files from its
    // files directory, as the package's drop-in makes sshd do.
    let sshd = Sshd::start_with(&d.join("sshd"), &SshdOptions::default());
    std::fs::write(sshd.files_dir.join("revoked_keys"), krl.encode()).unwrap();
    std::fs::copy(
        pub_path(&ca_key),
        sshd.files_dir.join("trusted_user_ca_keys"),
    )
    .unwrap();
    std::fs::write(
        sshd.files_dir.join("principals").join(principal),
        format!("{principal}\n"),
    )
    .unwrap();
    let logins: Vec<bool> = keys
        .iter()
        .map(|(key, _)| sshd.login(key, principal))
        .collect();
    assert_eq!(
        logins,
        [true, false, true, false, false],
        "sshd log:\n{}",
        sshd.log_text()
    );
    assert!(
        sshd.log_text().contains("revoked by file"),
        "{}",
        sshd.log_text()
    );
}
