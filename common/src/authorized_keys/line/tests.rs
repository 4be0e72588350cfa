//! The attacks a tenant can try against the preserve-mode deny list, each a line that sshd reads
//! as a revoked key, and the shapes sshd refuses. The same shapes run against `ssh-keygen -l`
//! (`common/tests/authorized_keys_vs_openssh.rs`) and real sshd logins (`authorized_keys_logins`).

use super::*;
use crate::keys::{GeneratedKey, KeyAlgorithm};

fn ed25519() -> GeneratedKey {
    GeneratedKey::generate(KeyAlgorithm::Ed25519, "revoked").unwrap()
}

/// `(type, base64)` of a key.
fn fields(key: &GeneratedKey) -> (String, String) {
    let mut f = key.public_openssh().split(' ');
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

/// A real P-256 key from ssh-keygen, and the fingerprint `ssh-keygen -l` printed for it.
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOoORetvYCwsNlD5aNunXNhUP2C92AUeH8OMHb17GC9rNxxoZj2e2ci0TeplOFEAtKfiobmdcTqSUsGT/AXaFjE=";
const ECDSA_FP: &str = "SHA256:hFNq3oknX6MCwuLwBvVOUNtVawaK8Y5eYo5ucY9nHEs";

fn fp(line: &[u8]) -> Option<Fingerprint> {
    parse_line(line).map(|l| l.fingerprint)
}

fn b64(bytes: &[u8]) -> String {
    base64_encode(bytes)
}

/// Plain padded base64 (test helper, independent of the decoder under test).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn blob_of(key: &GeneratedKey) -> Vec<u8> {
    b64_pton(fields(key).1.as_bytes()).unwrap()
}

/// A blob with its leading type string replaced.
fn with_inner_name(blob: &[u8], name: &[u8]) -> Vec<u8> {
    let len = u32::from_be_bytes(blob[..4].try_into().unwrap()) as usize;
    let mut out = (name.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(name);
    out.extend_from_slice(&blob[4 + len..]);
    out
}

#[test]
fn revoked_key_with_vertical_tab_in_base64_is_recognised() {
    let key = ed25519();
    let (t, b) = fields(&key);
    for ws in ["\x0b", "\x0c", "\r", "\n", "\r\x0b\x0c"] {
        let (head, tail) = b.split_at(17);
        let line = format!("{t} {head}{ws}{tail} comment");
        assert_eq!(
            fp(line.as_bytes()).as_ref(),
            Some(key.fingerprint()),
            "{line:?}"
        );
    }
}

#[test]
fn revoked_key_with_whitespace_between_padding_characters_is_recognised() {
    // `==` (a blob of length 1 mod 3) on the decoder directly.
    assert_eq!(b64_pton(b"QQ==").unwrap(), b"A");
    assert_eq!(b64_pton(b"QQ=\x0b\r=\x0c").unwrap(), b"A");
    assert_eq!(b64_pton(b"Q Q = =").unwrap(), b"A");
    // A P-256 blob (104 bytes) ends in one `=`.
    let b = ECDSA.split(' ').nth(1).unwrap();
    let line = format!(
        "ecdsa-sha2-nistp256 {}\x0b=\x0c",
        b.strip_suffix('=').unwrap()
    );
    assert_eq!(fp(line.as_bytes()).unwrap().as_str(), ECDSA_FP);
}

#[test]
fn revoked_key_followed_by_cr_or_nul_is_recognised() {
    let key = ed25519();
    let (t, b) = fields(&key);
    for line in [
        format!("{t} {b}\r"),
        format!("{t} {b}\0junk that C never sees"),
        format!("{t} {b} comment\0"),
        format!("{t}\t \t{b}\t"),
    ] {
        assert_eq!(
            fp(line.as_bytes()).as_ref(),
            Some(key.fingerprint()),
            "{line:?}"
        );
    }
}

#[test]
fn nul_cuts_the_line_before_the_key() {
    let key = ed25519();
    let (t, b) = fields(&key);
    assert_eq!(fp(format!("{t}\0 {b}").as_bytes()), None);
    assert_eq!(
        fp(format!("{t} {}\0{}", &b[..20], &b[20..]).as_bytes()),
        None
    );
}

#[test]
fn revoked_key_behind_options_with_quoted_blanks_is_recognised() {
    let key = ed25519();
    let (t, b) = fields(&key);
    for options in [
        r#"command="echo \"a b\" ; true",no-pty"#,
        r#"from="10.0.0.1 10.0.0.2""#,
        r#"environment="X=\"\" \t""#,
        r#"cert-authority"#,
        r#"x\"y"#,
    ] {
        let line = format!("{options} \t{t} {b}");
        assert_eq!(
            fp(line.as_bytes()).as_ref(),
            Some(key.fingerprint()),
            "{line:?}"
        );
    }
    // An unterminated quote makes the whole line unusable for sshd.
    assert_eq!(fp(format!(r#"command="x {t} {b}"#).as_bytes()), None);
}

#[test]
fn revoked_rsa_key_under_a_signature_only_name_is_recognised() {
    let key = GeneratedKey::generate(KeyAlgorithm::Rsa4096, "r").unwrap();
    let (_, b) = fields(&key);
    for name in ["rsa-sha2-256", "rsa-sha2-512"] {
        let parsed = parse_line(format!("{name} {b}").as_bytes()).unwrap();
        assert_eq!(&parsed.fingerprint, key.fingerprint());
        assert_eq!(parsed.algorithm, "ssh-rsa");
    }
    // Inside the blob too (`sshkey_type_from_name`), and shortnames in any case.
    let blob = blob_of(&key);
    for inner in [&b"rsa-sha2-512"[..], b"RSA", b"rsa", b"rSa", b"ssh-rsa\0"] {
        let line = format!("ssh-rsa {}", b64(&with_inner_name(&blob, inner)));
        assert_eq!(
            fp(line.as_bytes()).as_ref(),
            Some(key.fingerprint()),
            "{inner:?}"
        );
    }
}

#[test]
fn revoked_key_with_shortname_inside_the_blob_is_recognised() {
    let key = ed25519();
    let blob = blob_of(&key);
    for inner in [&b"ED25519"[..], b"ed25519", b"Ed25519", b"ssh-ed25519\0"] {
        let line = format!("ssh-ed25519 {}", b64(&with_inner_name(&blob, inner)));
        let parsed = parse_line(line.as_bytes()).unwrap();
        assert_eq!(&parsed.fingerprint, key.fingerprint(), "{inner:?}");
        assert_eq!(parsed.blob, blob, "canonical blob");
    }
    // Not a certificate's shortname, not two NULs, not a NUL inside.
    for inner in [
        &b"ED25519-CERT"[..],
        b"ssh-ed25519\0\0",
        b"ssh\0-ed25519",
        b"ed25519 ",
    ] {
        let line = format!("ssh-ed25519 {}", b64(&with_inner_name(&blob, inner)));
        assert_eq!(fp(line.as_bytes()), None, "{inner:?}");
    }
}

#[test]
fn shortnames_and_other_cases_are_not_type_names_on_the_line() {
    let key = ed25519();
    let (_, b) = fields(&key);
    for name in [
        "ED25519",
        "ed25519",
        "SSH-ED25519",
        "Ssh-ed25519",
        "ssh-ed25519\x0b",
    ] {
        assert_eq!(fp(format!("{name} {b}").as_bytes()), None, "{name:?}");
    }
    // ... but an unknown first field is an options field, and the key after it counts.
    assert_eq!(
        fp(format!("ED25519 ssh-ed25519 {b}").as_bytes()).as_ref(),
        Some(key.fingerprint())
    );
}

#[test]
fn revoked_rsa_key_with_padded_mpints_is_recognised() {
    let key = GeneratedKey::generate(KeyAlgorithm::Rsa4096, "r").unwrap();
    let blob = blob_of(&key);
    // string "ssh-rsa", mpint e, mpint n: pad both with extra leading zeros.
    let mut r = Reader { data: &blob };
    r.string().unwrap();
    let (e, n) = (r.string().unwrap(), r.string().unwrap());
    let mut padded = Vec::new();
    put_string(&mut padded, b"ssh-rsa");
    put_string(&mut padded, &[&[0u8, 0, 0][..], e].concat());
    put_string(&mut padded, &[&[0u8; 7][..], n].concat());
    let line = format!("ssh-rsa {}", b64(&padded));
    assert_eq!(fp(line.as_bytes()).as_ref(), Some(key.fingerprint()));
    // Negative (high bit set without a zero) is refused.
    let mut negative = Vec::new();
    put_string(&mut negative, b"ssh-rsa");
    put_string(&mut negative, e);
    put_string(&mut negative, n.strip_prefix(&[0u8]).unwrap());
    assert_eq!(fp(format!("ssh-rsa {}", b64(&negative)).as_bytes()), None);
}

#[test]
fn base64_rules_are_b64_pton_s() {
    assert_eq!(b64_pton(b"").unwrap(), b"");
    assert_eq!(b64_pton(b" \x0b").unwrap(), b"");
    assert_eq!(b64_pton(b"QUJD").unwrap(), b"ABC");
    assert_eq!(b64_pton(b"QUI=").unwrap(), b"AB");
    assert_eq!(b64_pton(b"QUI=\r\n").unwrap(), b"AB");
    assert_eq!(b64_pton(b"QUI"), None, "unpadded");
    assert_eq!(b64_pton(b"QQ"), None, "unpadded");
    assert_eq!(b64_pton(b"QUJ="), None, "non-zero trailing bits");
    assert_eq!(b64_pton(b"QR=="), None, "non-zero trailing bits");
    assert_eq!(b64_pton(b"QQ="), None, "one pad where two are needed");
    assert_eq!(b64_pton(b"QUI=="), None, "one pad too many");
    assert_eq!(b64_pton(b"QQ==="), None);
    assert_eq!(b64_pton(b"QUJD="), None, "pad after a whole group");
    assert_eq!(b64_pton(b"Q==="), None, "pad in second position");
    assert_eq!(b64_pton(b"QUI=QUJD"), None, "data after padding");
    assert_eq!(b64_pton(b"QU-D"), None);
    assert_eq!(b64_pton(b"QU\xc2\xa0JD"), None, "non-ASCII space");
}

#[test]
fn certificate_lines_are_no_key() {
    let key = ed25519();
    let (_, b) = fields(&key);
    // Even with a plain key's blob under a certificate's name: a type mismatch for sshd.
    assert_eq!(
        fp(format!("ssh-ed25519-cert-v01@openssh.com {b}").as_bytes()),
        None
    );
    // The options path still applies: the certificate name is then an options field.
    assert_eq!(
        fp(format!("ssh-ed25519-cert-v01@openssh.com ssh-ed25519 {b}").as_bytes()).as_ref(),
        Some(key.fingerprint())
    );
}

#[test]
fn type_and_blob_must_agree() {
    let key = ed25519();
    let (_, b) = fields(&key);
    for name in [
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "sk-ssh-ed25519@openssh.com",
        "ssh-dss",
    ] {
        assert_eq!(fp(format!("{name} {b}").as_bytes()), None, "{name}");
    }
    // Trailing bytes after the key, a short key.
    let blob = blob_of(&key);
    let mut long = blob.clone();
    long.push(0);
    assert_eq!(fp(format!("ssh-ed25519 {}", b64(&long)).as_bytes()), None);
    let mut short = Vec::new();
    put_string(&mut short, b"ssh-ed25519");
    put_string(&mut short, &[7u8; 31]);
    assert_eq!(fp(format!("ssh-ed25519 {}", b64(&short)).as_bytes()), None);
}

#[test]
fn ecdsa_points_are_validated_like_openssl() {
    let text = ECDSA;
    let good = fp(text.as_bytes()).unwrap();
    assert_eq!(good.as_str(), ECDSA_FP);
    let blob = b64_pton(text.split(' ').nth(1).unwrap().as_bytes()).unwrap();
    // Flip one bit of y: off the curve.
    let mut off = blob.clone();
    let last = off.len() - 1;
    off[last] ^= 1;
    assert_eq!(
        fp(format!("ecdsa-sha2-nistp256 {}", b64(&off)).as_bytes()),
        None
    );
    // The blob's name may not be the shortname, and the curve must match the line's.
    let short = with_inner_name(&blob, b"ECDSA");
    assert_eq!(
        fp(format!("ecdsa-sha2-nistp256 {}", b64(&short)).as_bytes()),
        None
    );
    assert_eq!(
        fp(format!("ecdsa-sha2-nistp384 {}", text.split(' ').nth(1).unwrap()).as_bytes()),
        None
    );
}
