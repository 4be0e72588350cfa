//! From the login audit's records to what a revocation decides on: [`of_user`] turns the
//! verified records ([`OpenSession`]) of one user into a [`SessionAttribution`], which
//! [`crate::sessions::revoke`] judges each live session by.
//!
//! Kept apart from the rule itself so that the sessions module knows nothing of how the audit
//! stores its records: the audit depends on sessions, never the other way round. The tests here
//! feed the rule with records as the audit keeps them (unverified, closed, another user's).

use std::net::SocketAddr;

use keyward_common::proto::LoginMethod;

use super::spool::OpenSession;
use crate::config::SshdTrust;
use crate::sessions::revoke::{AttributedSession, SessionAttribution};

/// What the verified records of `user` among `open` (the audit's login records) say about the
/// user's sessions, for one revocation ([`crate::sessions::revoke`] decides from it).
pub fn of_user<'a>(
    open: impl IntoIterator<Item = &'a OpenSession>,
    user: &str,
    incomplete: bool,
    trust: SshdTrust,
) -> SessionAttribution {
    let sessions = open
        .into_iter()
        .filter(|s| s.user == user && s.verified)
        .filter_map(|s| {
            let source = SocketAddr::new(s.ip.parse().ok()?, u16::try_from(s.port).ok()?);
            Some(AttributedSession {
                source,
                pid: (s.pid != 0).then(|| i32::try_from(s.pid).ok()).flatten(),
                method: LoginMethod::try_from(s.method).unwrap_or(LoginMethod::Other),
                fingerprint: s.fingerprint.clone(),
                certificate_id: s.certificate_id.clone(),
                certificate_ca: s.certificate_ca.clone(),
                closed: s.closed,
            })
        })
        .collect();
    SessionAttribution {
        sessions,
        incomplete,
        trust,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use crate::procs::ProcSnapshot;
    use crate::sessions::revoke::{ValidNow, Verdict, decide};
    use crate::sessions::{self, Role, SessionProcess, SessionTree};

    fn tree(root: i32, below: &[i32]) -> SessionTree {
        let p = |pid, ppid, role| SessionProcess {
            pid,
            ppid,
            uid: 1000,
            role,
        };
        SessionTree {
            root: SessionProcess {
                uid: 0,
                ..p(root, 1, Some(Role::Monitor))
            },
            below: below.iter().map(|&pid| p(pid, root, None)).collect(),
        }
    }

    fn session(port: u32, user: &str, fingerprint: &str, pid: u32) -> OpenSession {
        OpenSession {
            ip: "127.0.0.1".into(),
            port,
            user: user.into(),
            method: LoginMethod::Publickey as i32,
            key_type: "ED25519".into(),
            fingerprint: fingerprint.into(),
            pid,
            cursor: 1,
            closed: false,
            verified: true,
            certificate_id: None,
            certificate_ca: None,
        }
    }

    fn of_bob(open: &[OpenSession]) -> SessionAttribution {
        of_user(open, "bob", false, SshdTrust::default())
    }

    const NEW: &str = "SHA256:new";

    /// The CA the state trusts, and bob's principal.
    const CA: &str = "SHA256:keyward-ca";
    const PRINCIPAL: &str = "keyward:acme:tenant";

    fn valid_new() -> ValidNow {
        ValidNow {
            trusted_cas: vec![CA.into()],
            principals: vec![PRINCIPAL.into()],
            ..ValidNow::keys_only([NEW])
        }
    }

    /// bob's login by a certificate with `key_id` for the key `fingerprint`.
    fn by_certificate(port: u32, key_id: &str, fingerprint: &str) -> OpenSession {
        OpenSession {
            key_type: "ED25519-CERT".into(),
            certificate_id: Some(key_id.into()),
            certificate_ca: Some(CA.into()),
            ..session(port, "bob", fingerprint, 0)
        }
    }

    /// One tree per session, the session on port `1000 * n` held by tree `n`'s monitor.
    fn judge(open: &[OpenSession], valid: &ValidNow) -> Vec<Verdict> {
        let trees: Vec<SessionTree> = (1..=open.len() as i32)
            .map(|n| tree(100 * n, &[100 * n + 1]))
            .collect();
        decide(&trees, &of_bob(open), valid, |s| {
            vec![i32::from(s.source.port()) / 10]
        })
    }

    const T1: &str = "keyward:acme:tenant:1";
    const T2: &str = "keyward:acme:tenant:2";

    #[test]
    fn only_sessions_of_valid_keys_stay() {
        let trees = [tree(100, &[101, 102]), tree(200, &[201]), tree(300, &[301])];
        let open = [
            session(1000, "bob", "SHA256:old", 0),
            session(2000, "bob", NEW, 0),
            session(3000, "alice", NEW, 0),
        ];
        let attribution = of_bob(&open);
        assert_eq!(attribution.sessions.len(), 2);
        // Client port 1000 is held by the first tree's processes, 2000 by the second's; the
        // third tree is a session the log never mentioned.
        let verdicts = decide(&trees, &attribution, &valid_new(), |s| {
            match s.source.port() {
                1000 => vec![100, 101],
                2000 => vec![200, 201],
                _ => vec![],
            }
        });
        assert_eq!(
            verdicts,
            vec![
                Verdict::NotValid {
                    source: "127.0.0.1:1000".parse().unwrap(),
                    fingerprint: "SHA256:old".into()
                },
                Verdict::Keep {
                    source: "127.0.0.1:2000".parse().unwrap()
                },
                Verdict::Unknown,
            ]
        );
        assert_eq!(
            verdicts.iter().map(Verdict::ends).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        // With no key valid any more, nothing stays.
        let none = decide(&trees, &attribution, &ValidNow::default(), |s| {
            match s.source.port() {
                1000 => vec![100],
                2000 => vec![200],
                _ => vec![],
            }
        });
        assert!(none.iter().all(Verdict::ends), "{none:?}");
    }

    #[test]
    fn unverified_records_and_lost_connections_keep_nothing() {
        let trees = [tree(100, &[101])];
        let mut forged = session(1000, "bob", NEW, 0);
        forged.verified = false;
        let attribution = of_bob(&[forged]);
        assert!(attribution.sessions.is_empty());
        assert_eq!(
            decide(&trees, &attribution, &valid_new(), |_| vec![100]),
            vec![Verdict::Unknown]
        );
        // A verified record whose connection is not found in /proc.
        let attribution = of_bob(&[session(1000, "bob", NEW, 0)]);
        assert_eq!(
            decide(&trees, &attribution, &valid_new(), |_| vec![]),
            vec![Verdict::Unknown]
        );
        // The table overflowed for bob: even a session of a valid key ends.
        let mut incomplete = of_bob(&[session(1000, "bob", NEW, 0)]);
        incomplete.incomplete = true;
        assert_eq!(
            decide(&trees, &incomplete, &valid_new(), |_| vec![100]),
            vec![Verdict::Incomplete]
        );
    }

    #[test]
    fn a_logged_pid_must_be_the_sessions_monitor() {
        let trees = [tree(100, &[101]), tree(200, &[201])];
        let open = [
            session(1000, "bob", NEW, 100),
            session(2000, "bob", NEW, 999),
        ];
        let verdicts = decide(&trees, &of_bob(&open), &valid_new(), |s| {
            match s.source.port() {
                1000 => vec![100, 101],
                _ => vec![200, 201],
            }
        });
        assert!(!verdicts[0].ends());
        assert_eq!(
            verdicts[1],
            Verdict::Contested {
                source: "127.0.0.1:2000".parse().unwrap()
            }
        );
    }

    #[test]
    fn keyless_logins_stay_and_an_ending_claim_wins_a_conflict() {
        let trees = [tree(100, &[]), tree(200, &[]), tree(300, &[])];
        let mut password = session(1000, "bob", "", 0);
        password.method = LoginMethod::Password as i32;
        let mut other = session(3000, "bob", "", 0);
        other.method = LoginMethod::Other as i32;
        let open = [
            password,
            session(2000, "bob", NEW, 0),
            session(2000, "bob", "SHA256:old", 0),
            other,
        ];
        let verdicts = decide(&trees, &of_bob(&open), &valid_new(), |s| {
            match s.source.port() {
                1000 => vec![100],
                2000 => vec![200],
                _ => vec![300],
            }
        });
        assert!(
            !verdicts[0].ends(),
            "a password session is not a revoked key's"
        );
        assert!(verdicts[1].ends(), "claimed by a key that is not valid too");
        assert!(verdicts[2].ends(), "a keyless login of another kind");
        // Nothing known: everything ends (the behaviour without the audit).
        let none = decide(&trees, &SessionAttribution::unknown(), &valid_new(), |_| {
            vec![100, 200, 300]
        });
        assert!(none.iter().all(|v| *v == Verdict::Unknown));
    }

    #[test]
    fn forged_lines_cannot_save_a_revoked_session() {
        // The genuine login with the revoked key, then forged "Disconnected" (closing it) and
        // "Accepted with a good key" lines for the same connection.
        let trees = [tree(100, &[101])];
        let mut genuine = session(1000, "bob", "SHA256:old", 0);
        genuine.closed = true;
        let forged = session(1000, "bob", NEW, 0);
        let verdicts = decide(&trees, &of_bob(&[genuine, forged]), &valid_new(), |_| {
            vec![100]
        });
        assert!(verdicts[0].ends(), "{verdicts:?}");
        // A closed record of a valid key is no reason to keep anything.
        let mut old = session(1000, "bob", NEW, 0);
        old.closed = true;
        let verdicts = decide(&trees, &of_bob(&[old]), &valid_new(), |_| vec![100]);
        assert!(verdicts[0].ends());
    }

    #[test]
    fn certificate_sessions_stay_unless_their_key_id_is_revoked_or_their_key_denied() {
        let open = [
            by_certificate(1000, T1, "SHA256:one"),
            by_certificate(2000, T2, "SHA256:two"),
            by_certificate(3000, "keyward:acme:tenant:3", "SHA256:denied"),
            session(4000, "bob", NEW, 0),
        ];
        // Nothing revoked: a certified key is never among the valid keys, yet its session stays
        // (it used to end at every raised epoch).
        let verdicts = judge(&open, &valid_new());
        assert!(verdicts.iter().all(|v| !v.ends()), "{verdicts:?}");
        // The first certificate revoked, the third's key denied.
        let valid = ValidNow {
            revoked_certificate_ids: BTreeSet::from([T1.into()]),
            denied_fingerprints: vec!["SHA256:denied".into()],
            ..valid_new()
        };
        assert_eq!(
            judge(&open, &valid),
            vec![
                Verdict::RevokedCertificate {
                    source: "127.0.0.1:1000".parse().unwrap(),
                    key_id: T1.into(),
                },
                Verdict::Keep {
                    source: "127.0.0.1:2000".parse().unwrap()
                },
                Verdict::NotValid {
                    source: "127.0.0.1:3000".parse().unwrap(),
                    fingerprint: "SHA256:denied".into(),
                },
                Verdict::Keep {
                    source: "127.0.0.1:4000".parse().unwrap()
                },
            ]
        );
        // A revoked certificate ends its session even when its key is also a valid plain key:
        // the certificate is what sshd checked.
        let both = ValidNow {
            keys: vec![NEW.into(), "SHA256:one".into()],
            ..valid.clone()
        };
        assert!(judge(&open, &both)[0].ends());
        // Every key id revoked: only the plain key's session stays.
        let all = ValidNow {
            revoked_certificate_ids: BTreeSet::from([
                T1.into(),
                T2.into(),
                "keyward:acme:tenant:3".into(),
            ]),
            ..valid_new()
        };
        assert_eq!(
            judge(&open, &all)
                .iter()
                .map(Verdict::ends)
                .collect::<Vec<_>>(),
            vec![true, true, true, false]
        );
    }

    #[test]
    fn a_certificate_record_that_cannot_keep_a_session() {
        let revoked_t1 = ValidNow {
            revoked_certificate_ids: BTreeSet::from([T1.into()]),
            ..valid_new()
        };
        // A forged line: never recorded, so nothing keeps the session.
        let mut forged = by_certificate(1000, T2, "SHA256:two");
        forged.verified = false;
        assert_eq!(judge(&[forged], &revoked_t1), vec![Verdict::Unknown]);
        // Closed, or naming another monitor.
        let mut closed = by_certificate(1000, T2, "SHA256:two");
        closed.closed = true;
        assert!(judge(&[closed], &revoked_t1)[0].ends());
        let mut elsewhere = by_certificate(1000, T2, "SHA256:two");
        elsewhere.pid = 999;
        assert!(judge(&[elsewhere], &revoked_t1)[0].ends());
        // Its key id lost (too long to trust, or a record of an older agent): a login by the
        // certified key, which is not valid.
        let mut no_id = by_certificate(1000, T2, "SHA256:two");
        no_id.certificate_id = None;
        assert!(judge(&[no_id], &revoked_t1)[0].ends());
        // Not a public-key login (hostbased with a host certificate): the key rule.
        let mut hostbased = by_certificate(1000, T2, "SHA256:two");
        hostbased.method = LoginMethod::Other as i32;
        assert!(judge(&[hostbased], &revoked_t1)[0].ends());
        // A genuine login with the revoked certificate and a forged "Accepted" with a good one
        // for the same connection: the ending claim wins.
        let mut genuine = by_certificate(1000, T1, "SHA256:one");
        genuine.closed = true;
        let claimed = by_certificate(1000, T2, "SHA256:two");
        let trees = [tree(100, &[101])];
        let verdicts = decide(&trees, &of_bob(&[genuine, claimed]), &revoked_t1, |_| {
            vec![100]
        });
        assert!(verdicts[0].ends(), "{verdicts:?}");
    }

    #[test]
    fn a_revoked_user_keeps_no_certificate_session() {
        let open = [by_certificate(1000, T2, "SHA256:two")];
        let revoked = ValidNow {
            user_revoked: true,
            ..valid_new()
        };
        assert_eq!(
            judge(&open, &revoked),
            vec![Verdict::RevokedCertificate {
                source: "127.0.0.1:1000".parse().unwrap(),
                key_id: T2.into(),
            }]
        );
        assert!(!judge(&open, &valid_new())[0].ends());
    }

    #[test]
    fn only_keywards_certificates_for_the_user_keep_a_session() {
        // Another CA (one the user named with `cert-authority` in its own authorized_keys, say),
        // a key id that is not keyward's, another tenant's or kind's, a record without its CA.
        let mut foreign = by_certificate(1000, T1, "SHA256:one");
        foreign.certificate_ca = Some("SHA256:users-own-ca".into());
        let mut unknown_ca = by_certificate(1000, T1, "SHA256:one");
        unknown_ca.certificate_ca = None;
        for open in [
            foreign,
            unknown_ca,
            by_certificate(1000, "x", "SHA256:one"),
            by_certificate(1000, "keyward:other:tenant:1", "SHA256:one"),
            by_certificate(1000, "keyward:acme:admin:1", "SHA256:one"),
            by_certificate(1000, "keyward:acme:tenant:", "SHA256:one"),
            by_certificate(1000, "keyward:acme:tenant:1:2", "SHA256:one"),
        ] {
            assert!(
                judge(std::slice::from_ref(&open), &valid_new())[0].ends(),
                "{open:?}"
            );
        }
        assert!(!judge(&[by_certificate(1000, T1, "SHA256:one")], &valid_new())[0].ends());
        // No CA in the state: no certificate keeps a session.
        let no_ca = ValidNow {
            trusted_cas: vec![],
            ..valid_new()
        };
        assert!(judge(&[by_certificate(1000, T1, "SHA256:one")], &no_ca)[0].ends());
    }

    #[test]
    fn an_escaped_key_id_keeps_no_session() {
        // sshd logged a key id with a control character as `\011`: which certificate it is
        // cannot be told from the log, and keyward's never has one.
        let escaped = [by_certificate(
            1000,
            r"keyward:acme:tenant:1\011",
            "SHA256:one",
        )];
        assert!(judge(&escaped, &valid_new())[0].ends());
        let revoked_t2 = ValidNow {
            revoked_certificate_ids: BTreeSet::from([T2.into()]),
            ..valid_new()
        };
        assert!(judge(&escaped, &revoked_t2)[0].ends());
    }

    #[test]
    fn a_snapshot_decides_every_session() {
        use crate::procs::tests::{SSHD, fake};
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("net")).unwrap();
        // sshd on :2299 (0x08FB); bob's sessions from ports 0xC2A8 and 0xC2A9; bob's python
        // titled as a monitor, holding a connection from 0xC2AA to sshd's port.
        std::fs::write(
            r.join("net/tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:08FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0
   1: 0100007F:08FB 0100007F:C2A8 01 00000000:00000000 00:00000000 00000000     0        0 41100 1 0
   2: 0100007F:08FB 0100007F:C2A9 01 00000000:00000000 00:00000000 00000000     0        0 41200 1 0
   3: 0100007F:08FB 0100007F:C2AA 01 00000000:00000000 00:00000000 00000000     0        0 41300 1 0
",
        )
        .unwrap();
        fake(
            r,
            100,
            1,
            0,
            SSHD,
            "sshd: /usr/sbin/sshd -D [listener]",
            &[41001],
        );
        fake(r, 200, 100, 0, SSHD, "sshd: bob [priv]", &[41100]);
        fake(r, 201, 200, 1001, SSHD, "sshd: bob@notty", &[41100]);
        fake(r, 300, 100, 0, SSHD, "sshd: bob [priv]", &[41200]);
        fake(
            r,
            400,
            1,
            1001,
            "/usr/bin/python3",
            "sshd: bob [priv]",
            &[41300],
        );
        let snapshot = ProcSnapshot::take(r, &SshdTrust::default(), &[0, 1001]).unwrap();
        let trees = sessions::session_trees(&snapshot, "bob", 1001);
        assert_eq!(
            trees.iter().map(|t| t.root.pid).collect::<Vec<_>>(),
            vec![200, 300]
        );
        let open = [
            session(0xC2A8, "bob", NEW, 0),
            session(0xC2A9, "bob", "SHA256:old", 0),
            // A record for the python's connection ties nothing to any session.
            session(0xC2AA, "bob", NEW, 0),
        ];
        let verdicts = decide(&trees, &of_bob(&open), &valid_new(), |s| {
            snapshot.holders(s.source)
        });
        assert_eq!(
            verdicts.iter().map(Verdict::ends).collect::<Vec<_>>(),
            vec![false, true]
        );
    }
}
