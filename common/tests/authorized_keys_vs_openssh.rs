//! Differential test: keyward's `authorized_keys` line reader against OpenSSH's own.
//!
//! Real keys made by `ssh-keygen` (Ed25519, ECDSA P-256/384/521, RSA 1024 and 2048, DSA, and
//! security-key Ed25519/ECDSA blobs built from them, plus a certificate) are written as lines and
//! mutated the way a tenant hiding a revoked key would: blanks and `\v \f \r` and NUL in and
//! around every field, options with quoted blanks and `\"`, unterminated quotes, shortnames,
//! other cases and signature-only type names, on the line and inside the blob, padding and
//! trailing-bit changes, truncation, padded mpints, trailing bytes, type/blob mismatches, CR,
//! leading junk and comments. For each line, [`parse_line`]'s verdict (a fingerprint or none) must
//! equal what `ssh-keygen -l -E sha256` prints for a file holding just that line.
//!
//! `ssh-keygen -l` (`do_fingerprint` in OpenSSH 9.2p1's `ssh-keygen.c`) reads lines like sshd
//! (`sshkey_read`, then `sshkey_advance_past_options`) except in three places, where sshd is the
//! truth and the comparison is adjusted (each with its own count, asserted non-trivial):
//! - it prints certificates; sshd never accepts a certificate line for a plain key or as a CA,
//!   so keyward must say "no key" there;
//! - after an options field it skips exactly one space or tab (sshd skips them all), and
//! - it does not treat a first field that `strtol` reads as a non-zero number followed by a blank
//!   as options (known_hosts' old RSA1 format);
//!
//! so in the last two shapes ssh-keygen finds nothing where sshd finds the key: there the test
//! asserts ssh-keygen finds nothing, and the real sshd is checked by the `authorized_keys_logins`
//! integration test (tests crate), which logs in with such lines.
//!
//! The run is deterministic: 2,000 cases from a fixed seed (override with `KEYWARD_DIFF_SEED`,
//! printed on failure along with the shrunk line). `ssh-keygen` runs in the C locale, as sshd.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_common::authorized_keys::{KeyLine, b64_pton, parse_line};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

const CASES: u32 = 2_000;
const DEFAULT_SEED: u64 = 0x6b65_7977_6172_6431;
const INSTALL_HINT: &str = "ssh-keygen is needed: apt-get install openssh-client (Debian 12's \
                            OpenSSH 9.2p1 is the reference)";

/// A key as a canonical type name and its decoded blob.
#[derive(Debug, Clone)]
struct Base {
    name: String,
    blob: Vec<u8>,
}

fn ssh_keygen(args: &[&str]) -> std::process::Output {
    Command::new("ssh-keygen")
        .env("LC_ALL", "C")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen: {e}; {INSTALL_HINT}"))
}

fn read_pub(path: &Path) -> Base {
    let text = std::fs::read_to_string(path).unwrap();
    let mut fields = text.split_whitespace();
    let name = fields.next().unwrap().to_owned();
    let blob = STANDARD.decode(fields.next().unwrap()).unwrap();
    Base { name, blob }
}

fn put_string(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// The SSH strings a blob is made of.
fn strings(blob: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = blob;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let len = len.min(rest.len() - 4);
        out.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    out
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        put_string(&mut out, part);
    }
    out
}

/// Keys made by ssh-keygen in `dir`, and security-key blobs built from them.
fn make_keys(dir: &Path) -> Vec<Base> {
    let mut keys = Vec::new();
    for (file, args) in [
        ("ed", &["-t", "ed25519"][..]),
        ("ca", &["-t", "ed25519"]),
        ("p256", &["-t", "ecdsa", "-b", "256"]),
        ("p384", &["-t", "ecdsa", "-b", "384"]),
        ("p521", &["-t", "ecdsa", "-b", "521"]),
        ("rsa1024", &["-t", "rsa", "-b", "1024"]),
        ("rsa2048", &["-t", "rsa", "-b", "2048"]),
        ("dsa", &["-t", "dsa"]),
    ] {
        let path = dir.join(file);
        let mut all = vec!["-q", "-N", "", "-C", file, "-f", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = ssh_keygen(&all);
        assert!(out.status.success(), "ssh-keygen {all:?}: {out:?}");
        keys.push(read_pub(&path.with_extension("pub")));
    }
    // A certificate of the Ed25519 key, signed by the CA key.
    let ca = dir.join("ca");
    let ed_pub = dir.join("ed.pub");
    let out = ssh_keygen(&[
        "-q",
        "-s",
        ca.to_str().unwrap(),
        "-I",
        "id",
        "-n",
        "root",
        ed_pub.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "ssh-keygen -s: {out:?}");
    keys.push(read_pub(&dir.join("ed-cert.pub")));
    // Security keys: the plain key's fields plus an application.
    let ed = strings(&keys[0].blob);
    keys.push(Base {
        name: "sk-ssh-ed25519@openssh.com".into(),
        blob: join(&[
            b"sk-ssh-ed25519@openssh.com".to_vec(),
            ed[1].clone(),
            b"ssh:".to_vec(),
        ]),
    });
    let p256 = strings(&keys[2].blob);
    keys.push(Base {
        name: "sk-ecdsa-sha2-nistp256@openssh.com".into(),
        blob: join(&[
            b"sk-ecdsa-sha2-nistp256@openssh.com".to_vec(),
            p256[1].clone(),
            p256[2].clone(),
            b"ssh:".to_vec(),
        ]),
    });
    keys
}

fn shortname(name: &str) -> &'static str {
    match name {
        "ssh-ed25519" => "ED25519",
        "ssh-rsa" => "RSA",
        "ssh-dss" => "DSA",
        "sk-ssh-ed25519@openssh.com" => "ED25519-SK",
        "sk-ecdsa-sha2-nistp256@openssh.com" => "ECDSA-SK",
        n if n.ends_with("-cert-v01@openssh.com") => "ED25519-CERT",
        _ => "ECDSA",
    }
}

fn alternative_name(name: &str) -> &str {
    match name {
        "ssh-rsa" => "rsa-sha2-512",
        "sk-ecdsa-sha2-nistp256@openssh.com" => "webauthn-sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-ed25519-cert-v01@openssh.com" => "ssh-ed25519",
        "ssh-ed25519" => "ssh-ed25519-cert-v01@openssh.com",
        other => other,
    }
}

/// One generated case: indexes into the variant lists below.
#[derive(Debug, Clone)]
struct Plan {
    key: usize,
    other: usize,
    lead: usize,
    options: usize,
    name: usize,
    sep: usize,
    blob: usize,
    text: Vec<(usize, usize, usize)>,
    comment: usize,
    suffix: usize,
    /// Which of lead, options, name, separator, blob, base64 text, comment and suffix are
    /// mutated (a quarter each, so about two per line and a good share of lines stay keys).
    mutate: [bool; 8],
}

const LEADS: &[&[u8]] = &[b"", b" ", b"\t", b" \t ", b"\x0b", b"\r", b"#", b"# "];
const OPTIONS: &[&[u8]] = &[
    b"no-pty",
    br#"command="echo \"a b\" ; true""#,
    br#"from="127.0.0.1 ::1",no-pty"#,
    br#"environment="A=b c",restrict"#,
    br#"command="unterminated"#,
    br#"x\"y"#,
    b"cert-authority",
    b"22",
    b"-7",
    b"4294967296",
    b"restrict,command=\"a\tb\"",
    br#""quoted start" "#,
    b"ssh-ed25519",
    b"ED25519",
    b"\x0bno-pty",
];
const OPTION_GAPS: &[&[u8]] = &[b" ", b" ", b"\t", b"  ", b" \t", b"\x0b ", b""];
const SEPS: &[&[u8]] = &[
    b" ", b" ", b" ", b"\t", b" \t ", b"\x0b", b"", b"\r ", b"  ", b"\x0c\t",
];
const COMMENTS: &[&[u8]] = &[
    b" comment",
    b"",
    b"\tcomment with spaces",
    b" \0hidden",
    b"\r",
    b" #x",
    b"\x0b",
    b"\x0bcomment",
    b"=",
    b"OTHER",
];
const SUFFIXES: &[&[u8]] = &[b"", b"", b"\r", b"\0junk", b" ", b"\x0c"];
const INSERTS: &[u8] = b" \t\x0b\x0c\r\0=-#\"A";

fn plan_strategy(keys: usize) -> impl Strategy<Value = Plan> {
    (
        (0..keys, 0..keys, 0..LEADS.len(), 0..OPTIONS.len()),
        (0..15usize, 0..SEPS.len(), 0..14usize),
        prop::collection::vec((0..10usize, 0..10_000usize, 0..INSERTS.len()), 0..4),
        (0..COMMENTS.len(), 0..SUFFIXES.len()),
        prop::array::uniform8(prop::bool::weighted(0.25)),
    )
        .prop_map(
            |((key, other, lead, options), (name, sep, blob), text, (comment, suffix), mutate)| {
                Plan {
                    key,
                    other,
                    lead,
                    options,
                    name,
                    sep,
                    blob,
                    text,
                    comment,
                    suffix,
                    mutate,
                }
            },
        )
}

/// The blob of `base` after blob mutation `which` (most of the range: none).
fn mutate_blob(base: &Base, which: usize, pos: usize) -> Vec<u8> {
    // A certificate's blob is not all strings: only its first string (the name) is rewritten.
    let first_len = u32::from_be_bytes(base.blob[..4].try_into().unwrap()) as usize;
    let (name, rest) = (&base.blob[4..4 + first_len], &base.blob[4 + first_len..]);
    let renamed = |new_name: &[u8]| {
        let mut out = Vec::new();
        put_string(&mut out, new_name);
        out.extend_from_slice(rest);
        out
    };
    let mut blob = base.blob.clone();
    match which {
        1 => return renamed(shortname(&base.name).as_bytes()),
        2 => return renamed(shortname(&base.name).to_ascii_lowercase().as_bytes()),
        3 => return renamed(&[name, b"\0"].concat()),
        4 => return renamed(&[name, b"\0\0"].concat()),
        5 => return renamed(alternative_name(&base.name).as_bytes()),
        6 => blob.push(0),
        7 if base.name == "ssh-rsa" || base.name == "ssh-dss" => {
            let mut parts = strings(&base.blob);
            for part in &mut parts[1..] {
                part.splice(0..0, std::iter::repeat_n(0, 1 + pos % 3));
            }
            return join(&parts);
        }
        8 => {
            blob.pop();
        }
        9 if base.name.starts_with("sk-") => {
            let mut parts = strings(&base.blob);
            parts.last_mut().unwrap().push(0);
            return join(&parts);
        }
        10 => {
            let i = pos % blob.len();
            blob[i] ^= 1 << (pos % 8);
        }
        11 if base.name == "ssh-rsa" => {
            let mut parts = strings(&base.blob);
            parts[1] = [&[0x80u8][..], &parts[1]].concat();
            return join(&parts);
        }
        _ => {}
    }
    blob
}

/// The base64 field after text mutations: insertions, padding changes, truncation.
fn mutate_text(mut text: Vec<u8>, muts: &[(usize, usize, usize)]) -> Vec<u8> {
    for &(kind, pos, ch) in muts {
        let at = pos % (text.len() + 1);
        match kind {
            // What b64_pton skips, anywhere.
            0..=5 => text.insert(at, b"\x0b\x0c\r"[ch % 3]),
            6 => text.insert(at, INSERTS[ch]),
            7 => {
                // Padding: strip it, or add one more, or a vertical tab before it.
                let data_end = text.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
                match ch % 3 {
                    0 => text.truncate(data_end),
                    1 => text.push(b'='),
                    _ => text.insert(data_end, b'\x0b'),
                }
            }
            8 => text.truncate(at),
            _ => {
                // Change the last data character: other trailing bits or other data.
                if let Some(i) = text.iter().rposition(|&b| b.is_ascii_alphanumeric()) {
                    text[i] = if text[i] == b'A' { b'B' } else { b'A' };
                }
            }
        }
    }
    text
}

fn build_line(keys: &[Base], plan: &Plan) -> Vec<u8> {
    // An unmutated dimension takes its first (clean) variant.
    let m = |i: usize, value: usize| if plan.mutate[i] { value } else { 0 };
    let no_text = Vec::new();
    let base = &keys[plan.key];
    let other = &keys[plan.other];
    let mut line = LEADS[m(0, plan.lead)].to_vec();
    if let Some(options) = OPTIONS.get(m(1, plan.options + 1).wrapping_sub(1)) {
        line.extend_from_slice(options);
        line.extend_from_slice(OPTION_GAPS[plan.options % OPTION_GAPS.len()]);
    }
    let name = match m(2, plan.name) {
        0..=4 => base.name.clone(),
        9 => base.name.to_ascii_uppercase(),
        10 => shortname(&base.name).to_owned(),
        11 => alternative_name(&base.name).to_owned(),
        12 => other.name.clone(),
        13 => format!("{}\x0b", base.name),
        _ => String::new(),
    };
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(SEPS[m(3, plan.sep)]);
    let pos = plan.text.first().map_or(0, |t| t.1);
    let blob = mutate_blob(base, m(4, plan.blob), pos);
    let muts = if plan.mutate[5] { &plan.text } else { &no_text };
    let text = mutate_text(STANDARD.encode(blob).into_bytes(), muts);
    line.extend_from_slice(&text);
    match COMMENTS[m(6, plan.comment)] {
        b"OTHER" => {
            // A second key in the comment field.
            line.push(b' ');
            line.extend_from_slice(other.name.as_bytes());
            line.push(b' ');
            line.extend_from_slice(STANDARD.encode(&other.blob).as_bytes());
        }
        comment => line.extend_from_slice(comment),
    }
    line.extend_from_slice(SUFFIXES[m(7, plan.suffix)]);
    line
}

/// What `ssh-keygen -l -E sha256` prints for a file holding `line`: fingerprint and type.
fn keygen_verdict(file: &Path, line: &[u8]) -> Option<(String, String)> {
    std::fs::write(file, [line, b"\n"].concat()).unwrap();
    let out = ssh_keygen(&["-l", "-E", "sha256", "-f", file.to_str().unwrap()]);
    if !out.status.success() {
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert!(fields.len() >= 3, "unexpected ssh-keygen output {stdout:?}");
    Some((fields[1].to_owned(), fields[fields.len() - 1].to_owned()))
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Whether `ssh-keygen -l` cannot find a key that sshd finds after the options field (see the
/// module documentation).
fn keygen_misses_after_options(line: &[u8], key: &KeyLine) -> bool {
    let Some(options) = &key.options else {
        return false;
    };
    let text = line.split(|&b| b == 0).next().unwrap();
    let after = &text[options.end..];
    let two_blanks = after.len() >= 2 && is_blank(after[0]) && is_blank(after[1]);
    two_blanks || strtol_is_nonzero_before_blank(&text[options.start..])
}

/// `i = strtol(cp, &ep, 10); i != 0 && (*ep == ' ' || *ep == '\t')` with `int i`.
fn strtol_is_nonzero_before_blank(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
        i += 1;
    }
    let negative = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let digits = s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    let mut value: i64 = 0;
    for &d in &s[i..i + digits] {
        value = value.saturating_mul(10).saturating_add(i64::from(d - b'0'));
    }
    if negative {
        value = value.checked_neg().unwrap_or(i64::MIN);
    }
    (value as i32) != 0 && s.get(i + digits).is_some_and(|&b| is_blank(b))
}

#[derive(Debug, Default)]
struct Stats {
    keys: usize,
    none: usize,
    certificates: usize,
    keygen_misses: usize,
    with_options: usize,
}

#[test]
fn keyward_reads_every_line_as_openssh_does() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(dir.path());
    let file: PathBuf = dir.path().join("authorized_keys");
    let seed = std::env::var("KEYWARD_DIFF_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("KEYWARD_DIFF_SEED is a u64"))
        .unwrap_or(DEFAULT_SEED);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let stats = RefCell::new(Stats::default());
    let result = runner.run(&plan_strategy(keys.len()), |plan| {
        let line = build_line(&keys, &plan);
        let shown = line.escape_ascii().to_string();
        let ours = parse_line(&line);
        let theirs = keygen_verdict(&file, &line);
        let mut stats = stats.borrow_mut();
        match (&ours, &theirs) {
            (_, Some((_, kind))) if kind.ends_with("-CERT)") => {
                stats.certificates += 1;
                prop_assert!(
                    ours.is_none(),
                    "certificate line {shown:?} read as a key by keyward"
                );
            }
            (Some(key), _) if keygen_misses_after_options(&line, key) => {
                stats.keygen_misses += 1;
                prop_assert!(
                    theirs.is_none(),
                    "ssh-keygen was expected to miss the key in {shown:?}"
                );
            }
            _ => {
                let ours_fp = ours.as_ref().map(|k| k.fingerprint.to_string());
                let theirs_fp = theirs.as_ref().map(|t| t.0.clone());
                prop_assert_eq!(ours_fp, theirs_fp, "line {:?}", shown);
                if ours.is_some() {
                    stats.keys += 1;
                } else {
                    stats.none += 1;
                }
            }
        }
        if ours.as_ref().is_some_and(|k| k.options.is_some()) {
            stats.with_options += 1;
        }
        Ok(())
    });
    let stats = stats.into_inner();
    let lines = stats.keys + stats.none + stats.certificates + stats.keygen_misses;
    eprintln!(
        "{lines} lines in {:.1} s (seed {seed}): {stats:?}",
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, plan)) => panic!(
            "keyward and OpenSSH disagree (seed {seed}; rerun with KEYWARD_DIFF_SEED={seed}):\n\
             {reason}\nshrunk case: {plan:?}\nline: {:?}",
            build_line(&keys, &plan).escape_ascii().to_string()
        ),
        Err(e) => panic!("seed {seed}: {e}"),
    }
    // The mix must exercise both verdicts and every special shape.
    assert!(stats.keys > 200 && stats.none > 200, "{stats:?}");
    assert!(
        stats.certificates > 0 && stats.keygen_misses > 0,
        "{stats:?}"
    );
    assert!(stats.with_options > 50, "{stats:?}");
}

/// The decoder agrees with a standard one on clean input of every length.
#[test]
fn clean_base64_decodes_the_same() {
    for len in 0..40usize {
        let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
        let text = STANDARD.encode(&bytes);
        assert_eq!(b64_pton(text.as_bytes()).unwrap(), bytes);
    }
}
