//! Real logins against keyward's `authorized_keys` reader: Debian's sshd (OpenSSH 9.2p1) on
//! loopback, a real user, and one mutated line of a key at a time in the user's file. `ssh -i key`
//! must log in exactly when `parse_line` says the line holds that key (and the line's options, if
//! any, let it in: `cert-authority` or an unknown option make sshd refuse a key it did find,
//! and keyward still drops such a line when the key is denied).
//!
//! This covers the shapes where `ssh-keygen -l`, the reference of the differential test in
//! `common/tests/authorized_keys_vs_openssh.rs`, reads lines differently from sshd (blanks after
//! options), and the tenant's attacks on the deny list (whitespace sshd skips in the base64,
//! NUL and CR, signature-only and short type names, padded mpints, options in front).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_common::authorized_keys::parse_line;
use keyward_common::{GeneratedKey, KeyAlgorithm};
use keyward_tests::{KeyFile, Sshd, TestUser};

fn install(user: &TestUser, line: &[u8]) {
    user.write_authorized_keys(&[line, b"\n"].concat());
}

/// `(type, base64)` of a key.
fn fields(key: &GeneratedKey) -> (String, String) {
    let mut f = key.public_openssh().split(' ');
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

/// The SSH strings of a plain key's blob.
fn strings(blob: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = blob;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    out
}

fn encode(parts: &[Vec<u8>]) -> String {
    let mut blob = Vec::new();
    for part in parts {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    STANDARD.encode(blob)
}

/// `text` with `insert` put in at byte `at`.
fn inserted(text: &str, at: usize, insert: &str) -> String {
    format!("{}{insert}{}", &text[..at], &text[at..])
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Ed25519,
    Rsa,
}

#[tokio::test]
async fn sshd_logs_in_exactly_when_keyward_reads_the_key() {
    let sshd = Sshd::start_async().await;
    let user = TestUser::create("p");
    let ed = GeneratedKey::generate(KeyAlgorithm::Ed25519, "e").unwrap();
    let rsa = GeneratedKey::generate(KeyAlgorithm::Rsa4096, "r").unwrap();
    let other = GeneratedKey::generate(KeyAlgorithm::Ed25519, "o").unwrap();
    let ed_file = KeyFile::write(ed.private_openssh());
    let rsa_file = KeyFile::write(rsa.private_openssh());

    let (t, b) = fields(&ed);
    let (rt, rb) = fields(&rsa);
    let (_, ob) = fields(&other);
    assert!(
        rb.ends_with("=="),
        "an RSA-4096 blob is 535 bytes: two pads"
    );
    let ed_parts = strings(&STANDARD.decode(&b).unwrap());
    let rsa_parts = strings(&STANDARD.decode(&rb).unwrap());
    let renamed = |parts: &[Vec<u8>], name: &[u8]| {
        let mut parts = parts.to_vec();
        parts[0] = name.to_vec();
        encode(&parts)
    };
    let padded_rsa = {
        let mut parts = rsa_parts.clone();
        parts[1].splice(0..0, [0, 0]);
        parts[2].splice(0..0, [0; 5]);
        encode(&parts)
    };
    let unpadded_rsa = rb.trim_end_matches('=');
    // The last data character before `==` carries 4 bits that must be zero.
    let dirty_bits_rsa = {
        let mut chars = unpadded_rsa.as_bytes().to_vec();
        let last = chars.last_mut().unwrap();
        *last = if *last == b'B' { b'C' } else { b'B' };
        format!("{}==", String::from_utf8(chars).unwrap())
    };

    use Which::*;
    // (line, key to log in with, whether the options (if any) let a found key in)
    let cases: Vec<(Vec<u8>, Which, bool)> = [
        // Plain and blank variants.
        (format!("{t} {b}"), Ed25519, true),
        (format!("{t}\t{b} comment with spaces"), Ed25519, true),
        (format!(" \t {t} \t {b}\t"), Ed25519, true),
        (format!("{t} {b}\r"), Ed25519, true),
        (format!("{t} {b}\0hidden junk"), Ed25519, true),
        // What b64_pton skips inside the base64.
        (format!("{t} {}", inserted(&b, 10, "\x0b")), Ed25519, true),
        (format!("{t} {}", inserted(&b, 30, "\x0c")), Ed25519, true),
        (format!("{t} {}", inserted(&b, 50, "\r")), Ed25519, true),
        (
            format!("{t} {}", inserted(&b, 67, "\r\x0b\x0c")),
            Ed25519,
            true,
        ),
        (format!("{rt} {}\x0b=\x0c=\r", unpadded_rsa), Rsa, true),
        // Options in front, quoted blanks, escaped quotes, several blanks after them (which
        // ssh-keygen -l does not read).
        (format!("no-pty {t} {b}"), Ed25519, true),
        (format!(r#"command="echo \"a b\"" {t} {b}"#), Ed25519, true),
        (format!("no-pty,from=\"127.0.0.1\"  {t} {b}"), Ed25519, true),
        (format!("no-agent-forwarding\t \t{t} {b}"), Ed25519, true),
        (format!(r#"environment="A=b c" {t} {b}"#), Ed25519, true),
        (
            format!("expiry-time=\"299901010000Z\" {t} {b}"),
            Ed25519,
            true,
        ),
        // sshd finds the key but refuses these options: still the key for keyward.
        (format!("cert-authority {t} {b}"), Ed25519, false),
        (format!("bogus-option {t} {b}"), Ed25519, false),
        (format!("ED25519 {t} {b}"), Ed25519, false),
        // Names inside the blob: shortnames in any case, a trailing NUL.
        (
            format!("{t} {}", renamed(&ed_parts, b"ED25519")),
            Ed25519,
            true,
        ),
        (
            format!("{t} {}", renamed(&ed_parts, b"ed25519")),
            Ed25519,
            true,
        ),
        (
            format!("{t} {}", renamed(&ed_parts, b"ssh-ed25519\0")),
            Ed25519,
            true,
        ),
        (
            format!("{t} {}", renamed(&ed_parts, b"ED25519-CERT")),
            Ed25519,
            true,
        ),
        (format!("{rt} {}", renamed(&rsa_parts, b"rsa")), Rsa, true),
        (
            format!("{rt} {}", renamed(&rsa_parts, b"rsa-sha2-512")),
            Rsa,
            true,
        ),
        // Signature-only names on the line; padded mpints.
        (format!("rsa-sha2-256 {rb}"), Rsa, true),
        (format!("rsa-sha2-512 {rb}"), Rsa, true),
        (format!("{rt} {padded_rsa}"), Rsa, true),
        // Not type names on the line: shortnames, other cases.
        (format!("ED25519 {b}"), Ed25519, true),
        (format!("SSH-ED25519 {b}"), Ed25519, true),
        (format!("RSA {rb}"), Rsa, true),
        (format!("Rsa-sha2-256 {rb}"), Rsa, true),
        // Separators sshd does not split at; NUL before the key's end.
        (format!("{t}\x0b{b}"), Ed25519, true),
        (format!("\x0b{t} {b}"), Ed25519, true),
        (format!("{t}\0 {b}"), Ed25519, true),
        (format!("{t} {}\0{}", &b[..20], &b[20..]), Ed25519, true),
        (format!("{t} {}", inserted(&b, 20, "-")), Ed25519, true),
        // Padding and trailing bits.
        (format!("{rt} {unpadded_rsa}"), Rsa, true),
        (format!("{rt} {unpadded_rsa}="), Rsa, true),
        (format!("{rt} {rb}="), Rsa, true),
        (format!("{rt} {dirty_bits_rsa}"), Rsa, true),
        // Comments, unterminated quotes, certificates' names, mismatches, truncation, another
        // key in front.
        (format!("# {t} {b}"), Ed25519, true),
        (format!(" #{t} {b}"), Ed25519, true),
        (format!("command=\"unterminated {t} {b}"), Ed25519, true),
        (
            format!("ssh-ed25519-cert-v01@openssh.com {b}"),
            Ed25519,
            true,
        ),
        (format!("ssh-rsa {b}"), Ed25519, true),
        (format!("{t} {}", &b[..b.len() - 4]), Ed25519, true),
        (
            format!(
                "{t} {}",
                encode(&[ed_parts[0].clone(), ed_parts[1].clone(), vec![]])
            ),
            Ed25519,
            true,
        ),
        (format!("{t} {ob} {t} {b}"), Ed25519, true),
        (t.clone(), Ed25519, true),
    ]
    .into_iter()
    .map(|(line, which, options_ok)| (line.into_bytes(), which, options_ok))
    .collect();

    let (mut logged_in, mut refused) = (0, 0);
    for (line, which, options_ok) in &cases {
        let shown = line.escape_ascii().to_string();
        let (key, file) = match which {
            Ed25519 => (&ed, &ed_file),
            Rsa => (&rsa, &rsa_file),
        };
        let says = parse_line(line).map(|k| k.fingerprint);
        let is_key = says.as_ref() == Some(key.fingerprint());
        install(&user, line);
        let (ok, _) = sshd.login_async(&file.path, &user.name, "true").await;
        assert_eq!(
            ok,
            is_key && *options_ok,
            "line {shown:?}: keyward says {says:?}, login {}; sshd log:\n{}",
            if ok { "worked" } else { "failed" },
            sshd.log_text()
        );
        if !options_ok {
            assert!(is_key, "line {shown:?}: keyward must still see the key");
        }
        if ok {
            logged_in += 1;
        } else {
            refused += 1;
        }
    }
    // Both outcomes are exercised, in numbers.
    assert!(
        logged_in >= 20 && refused >= 20,
        "{logged_in} logins, {refused} refusals"
    );
}
