//! Unit tests of rendering, merging and parsing, including injection attempts.

use super::*;
use crate::keys::{GeneratedKey, KeyAlgorithm};
use chrono::TimeZone;

fn new_key(comment: &str) -> GeneratedKey {
    GeneratedKey::generate(KeyAlgorithm::Ed25519, comment).unwrap()
}

fn managed(key: &GeneratedKey, kind: KeyKind, generation: i64) -> ManagedKey {
    ManagedKey {
        kind,
        generation,
        public_key: key.public_openssh().to_owned(),
        expires_at: None,
        options: Default::default(),
    }
}

/// `type base64` of a key, without its comment.
fn body(key: &GeneratedKey) -> String {
    let mut fields = key.public_openssh().split(' ');
    format!("{} {}", fields.next().unwrap(), fields.next().unwrap())
}

#[test]
fn renders_from_the_parsed_key_with_the_marker_and_without_the_comment() {
    let key = new_key("alice@laptop");
    let line = render_line(&managed(&key, KeyKind::Tenant, 7)).unwrap();
    assert_eq!(line, format!("{} keyward-managed:tenant:7", body(&key)));
    assert!(!line.contains("alice"));
    assert_eq!(fingerprints(&line), vec![(key.fingerprint().clone(), true)]);
}

/// Made with `ssh-keygen`; fingerprints as `ssh-keygen -lf` printed them.
const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCsG0JjV1Z6nXR6eFNbl+IUkWVA4J/wJhSiJ8bYFQ9NQCLGzucO7cswmRmVqV5tQMPPUCXXtxeS/lz/wvK8VEFSRUWXbbb+HVIgBnvLE+IwC/zXsga+OA2P6ErynOIOy1t4+OX5dW00SyuND7uEByhl/LqZ7oYvf+Ut0vIGQcllueBcJ79iyiFz4GsxYTdMSjI/szmDHRkpwO2e352cD+ElL+Ww9Be3Xm3GtfpJX6d8L73OthWtPnLj9pYpn/SLpE3L5MvBSX20Ne1rBMBJRlpS/Ox0XbnC057qixO2i/7c+h8CzfhUx+qA0bNDKkrhUumgBRai15Nl2AlpkgJ2gucz user@host";
const RSA_FP: &str = "SHA256:TOSJY8++jdPweS8+Ie2tvV+aXhhrjyMsa0pykhOPvKM";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOoORetvYCwsNlD5aNunXNhUP2C92AUeH8OMHb17GC9rNxxoZj2e2ci0TeplOFEAtKfiobmdcTqSUsGT/AXaFjE= ec@host";
const ECDSA_FP: &str = "SHA256:hFNq3oknX6MCwuLwBvVOUNtVawaK8Y5eYo5ucY9nHEs";

#[test]
fn rsa_and_ecdsa_keys_from_ssh_keygen_render_byte_for_byte() {
    for (text, fp) in [(RSA, RSA_FP), (ECDSA, ECDSA_FP)] {
        let key = ManagedKey {
            kind: KeyKind::Admin,
            generation: 12,
            public_key: text.to_owned(),
            expires_at: None,
            options: Default::default(),
        };
        let line = render_line(&key).unwrap();
        let (body, _comment) = text.rsplit_once(' ').unwrap();
        assert_eq!(line, format!("{body} keyward-managed:admin:12"));
        assert_eq!(fingerprints(&line), vec![(fp.parse().unwrap(), true)]);
    }
}

#[test]
fn expiry_is_utc_minute_precision_rounded_down() {
    let key = new_key("c");
    let mut m = managed(&key, KeyKind::Admin, 2);
    m.expires_at = Some(Utc.with_ymd_and_hms(2025, 1, 2, 15, 4, 59).unwrap());
    let line = render_line(&m).unwrap();
    assert_eq!(
        line,
        format!(
            "expiry-time=\"202501021504Z\" {} keyward-managed:admin:2",
            body(&key)
        )
    );
    // Still a key line for sshd's reader (options then key).
    assert_eq!(fingerprints(&line), vec![(key.fingerprint().clone(), true)]);
}

#[test]
fn expiry_outside_sshds_format_is_refused() {
    let key = new_key("c");
    let mut m = managed(&key, KeyKind::Admin, 2);
    m.expires_at = Some(Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap());
    assert!(matches!(
        render_line(&m),
        Err(AuthorizedKeysError::BadExpiry { .. })
    ));
}

#[test]
fn option_injection_is_refused() {
    let key = new_key("c");
    let pk = key.public_openssh();
    for injected in [
        format!("command=\"sh\" {pk}"),
        format!("from=\"10.0.0.0/8\" {pk}"),
        format!("no-pty {pk}"),
        format!("restrict,command=\"/bin/sh -c 'id'\" {pk}"),
        format!("cert-authority {pk}"),
        format!("environment=\"LD_PRELOAD=/tmp/x.so\" {pk}"),
    ] {
        let m = ManagedKey {
            public_key: injected.clone(),
            ..managed(&key, KeyKind::Tenant, 1)
        };
        let err = render_line(&m).unwrap_err();
        assert!(
            matches!(err, AuthorizedKeysError::HasOptions { .. }),
            "{injected:?}: {err}"
        );
        // And merge refuses the whole state: nothing is rendered.
        assert!(merge(b"", &[m], Mode::Exclusive, &[]).is_err());
    }
}

#[test]
fn line_breaks_and_nul_are_refused() {
    let key = new_key("c");
    let other = new_key("d");
    let pk = key.public_openssh();
    for bad in [
        format!("{pk}\ncommand=\"sh\" {}", other.public_openssh()),
        format!("{pk}\n"),
        format!("{pk}\r\n{}", other.public_openssh()),
        format!("{pk}\0"),
        format!("{} comment\0with nul", body(&key)),
        format!("{} comment\rwith cr", body(&key)),
    ] {
        let m = ManagedKey {
            public_key: bad.clone(),
            ..managed(&key, KeyKind::Tenant, 1)
        };
        assert!(
            matches!(
                render_line(&m),
                Err(AuthorizedKeysError::ForbiddenCharacter { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn garbage_is_refused() {
    let key = new_key("c");
    let ed = body(&key);
    let blob = ed.split(' ').nth(1).unwrap();
    for bad in [
        String::new(),
        " ".into(),
        "ssh-ed25519".into(),
        "ssh-ed25519 !!!!".into(),
        format!("ssh-rsa {blob}"), // blob says ed25519
        format!("ssh-ed25519 {}", &blob[..blob.len() - 8]),
        format!(" {ed}"),
        format!("ssh-ed25519\t{blob}"),
        "not a key at all".into(),
        "# ssh-ed25519 AAAA".into(),
    ] {
        let m = ManagedKey {
            public_key: bad.clone(),
            ..managed(&key, KeyKind::Tenant, 1)
        };
        assert!(render_line(&m).is_err(), "{bad:?} was rendered");
    }
}

#[test]
fn a_hostile_comment_is_not_copied() {
    let key = new_key("c");
    let m = ManagedKey {
        public_key: format!("{} x\" command=\"sh\" no-pty", body(&key)),
        ..managed(&key, KeyKind::Tenant, 4)
    };
    let line = render_line(&m).unwrap();
    assert_eq!(line, format!("{} keyward-managed:tenant:4", body(&key)));
}

#[test]
fn exclusive_keeps_only_managed_lines() {
    let own = new_key("own");
    let k = new_key("k");
    let existing = format!("# mine\n{}\n\n", own.public_openssh());
    let out = merge(
        existing.as_bytes(),
        &[managed(&k, KeyKind::Admin, 3)],
        Mode::Exclusive,
        &[],
    )
    .unwrap();
    assert_eq!(
        out,
        format!("{} keyward-managed:admin:3\n", body(&k)).as_bytes()
    );
    assert_eq!(
        merge(existing.as_bytes(), &[], Mode::Exclusive, &[]).unwrap(),
        b""
    );
}

#[test]
fn preserve_keeps_user_lines_replaces_managed_ones_and_drops_denied_keys() {
    let own = new_key("own");
    let old = new_key("old");
    let revoked = new_key("revoked");
    let current = new_key("current");
    let existing = format!(
        "# my keys\n\
         {own}\n\
         \n\
         {old_body} keyward-managed:tenant:1\n\
         no-pty,from=\"10.*\"\t{revoked_body}   copied by the user\n\
         {revoked_body}\n\
         garbage line stays\n\
         \x20  # indented comment",
        own = own.public_openssh(),
        old_body = body(&old),
        revoked_body = body(&revoked),
    );
    let denied = [old.fingerprint().clone(), revoked.fingerprint().clone()];
    let out = merge(
        existing.as_bytes(),
        &[managed(&current, KeyKind::Tenant, 2)],
        Mode::Preserve,
        &denied,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        format!(
            "# my keys\n{}\n\ngarbage line stays\n   # indented comment\n{} keyward-managed:tenant:2\n",
            own.public_openssh(),
            body(&current)
        )
    );
    assert_eq!(
        fingerprints(&out),
        vec![
            (own.fingerprint().clone(), false),
            (current.fingerprint().clone(), true)
        ]
    );
}

#[test]
fn merge_is_idempotent_and_order_independent() {
    let own = new_key("own");
    let a = new_key("a");
    let b = new_key("b");
    let mut ma = managed(&a, KeyKind::Tenant, 5);
    ma.expires_at = Some(Utc.with_ymd_and_hms(2030, 6, 1, 12, 0, 30).unwrap());
    let mb = managed(&b, KeyKind::Tenant, 6);
    let admin = managed(&b, KeyKind::Admin, 1);
    let keys = [ma.clone(), mb.clone(), admin.clone()];
    let reversed = [admin, mb.clone(), ma, mb];
    let existing = format!("{}\n# note", own.public_openssh());
    for mode in [Mode::Exclusive, Mode::Preserve] {
        let once = merge(existing.as_bytes(), &keys, mode, &[]).unwrap();
        let twice = merge(&once, &keys, mode, &[]).unwrap();
        assert_eq!(once, twice, "{mode}");
        assert_eq!(
            merge(existing.as_bytes(), &reversed, mode, &[]).unwrap(),
            once
        );
        assert!(once.ends_with(b"\n"));
        let managed_lines = lines(&once).filter(|l| is_managed_line(l)).count();
        assert_eq!(managed_lines, 3, "{mode}: duplicates removed, all kept");
    }
}

#[test]
fn fingerprints_skip_what_does_not_parse() {
    let a = new_key("a");
    let content = format!(
        "\n# {pk}\nrubbish\ncommand=\"unterminated {body}\nrestrict {body} keyward-managed:admin:9\n",
        pk = a.public_openssh(),
        body = body(&a)
    );
    assert_eq!(
        fingerprints(&content),
        vec![(a.fingerprint().clone(), true)]
    );
}

#[test]
fn options_are_skipped_like_sshd_does() {
    let key = new_key("o");
    let b = body(&key);
    for (options, gap) in [
        ("a=\"x y\"", " "),
        ("a=\"x \\\" y\",b", "\t\t "),
        ("no-pty", " "),
    ] {
        let line = format!("{options}{gap}{b} c");
        let parsed = parse_line(line.as_bytes()).unwrap();
        assert_eq!(&parsed.fingerprint, key.fingerprint(), "{line:?}");
        assert_eq!(parsed.options, Some(0..options.len()), "{line:?}");
    }
    assert_eq!(parse_line(format!("a=\"open {b}").as_bytes()), None);
    assert_eq!(parse_line(b"nospace"), None);
}

#[test]
fn preserve_keeps_user_bytes_that_are_not_utf8_cr_or_nul() {
    let own = new_key("own");
    let revoked = new_key("revoked");
    let existing = [
        b"# caf\xe9 latin-1 comment\r\n".as_slice(),
        format!("{}\r\n", own.public_openssh()).as_bytes(),
        b"junk\0with nul\n",
        format!("{}\0trailing\n", body(&revoked)).as_bytes(),
        b"\xff\xfe no newline at the end",
    ]
    .concat();
    let out = merge(
        &existing,
        &[],
        Mode::Preserve,
        &[revoked.fingerprint().clone()],
    )
    .unwrap();
    let expected = [
        b"# caf\xe9 latin-1 comment\r\n".as_slice(),
        format!("{}\r\n", own.public_openssh()).as_bytes(),
        b"junk\0with nul\n",
        b"\xff\xfe no newline at the end\n",
    ]
    .concat();
    assert_eq!(out, expected);
    // An empty file stays empty; a lone newline is one (blank) line and stays.
    assert_eq!(merge(b"", &[], Mode::Preserve, &[]).unwrap(), b"");
    assert_eq!(merge(b"\n", &[], Mode::Preserve, &[]).unwrap(), b"\n");
}

#[test]
fn modes_serialise_in_snake_case() {
    assert_eq!(
        serde_json::to_string(&Mode::Exclusive).unwrap(),
        "\"exclusive\""
    );
    assert_eq!(
        serde_json::from_str::<Mode>("\"preserve\"").unwrap(),
        Mode::Preserve
    );
    assert_eq!(Mode::default_for(KeyKind::Admin), Mode::Exclusive);
    assert_eq!(Mode::default_for(KeyKind::Tenant), Mode::Preserve);
    assert_eq!("preserve".parse::<Mode>().unwrap(), Mode::Preserve);
    assert!("Preserve".parse::<Mode>().is_err());
}

#[test]
fn the_agents_own_options_render_in_order_and_a_command_cannot_close_its_quotes() {
    let key = new_key("c");
    let mut m = managed(&key, KeyKind::Admin, 3);
    m.expires_at = Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 59).unwrap());
    m.options = LineOptions {
        command: Some("/usr/lib/keyward-agent/record-session output /var/spool/x".into()),
        verify_required: true,
    };
    let line = render_line(&m).unwrap();
    assert_eq!(
        line,
        format!(
            "command=\"/usr/lib/keyward-agent/record-session output /var/spool/x\",\
             expiry-time=\"202601020304Z\",verify-required {} keyward-managed:admin:3",
            body(&key)
        )
    );
    // Still a managed line of the same key, as sshd reads it.
    assert_eq!(fingerprints(&line), vec![(key.fingerprint().clone(), true)]);
    for bad in ["/x\" ,no-pty", "", "/x\\y", "/x\ny", "/x,y"] {
        m.options.command = Some(bad.into());
        assert!(
            matches!(render_line(&m), Err(AuthorizedKeysError::BadCommand { .. })),
            "{bad:?}"
        );
    }
}
