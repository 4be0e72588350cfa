//! The `sshd` part of a host's desired state: the files the agent writes for sshd
//! (`TrustedUserCAKeys`, `RevokedKeys`, `AuthorizedPrincipalsFile`).
//!
//! The revocation list holds every key keyward denied for the host's users (replaced past its
//! grace period, or revoked), by SHA-256: sshd itself then refuses such a key however it is
//! written back into `authorized_keys` — defence in depth behind the agent's removal. It also
//! holds the tenant's revoked certificates that may still be valid, by key id (whichever CA
//! signed it, and the twin a lost signing answer may have left: both share the id) and by serial
//! under the CA that signed it. It is always sent, CA or not. The CA's keys and each managed
//! user's principal ([`principal`]) are sent when keyward's SSH certificate authority is
//! configured; a user whose key set is revoked gets no principal (no certificate logs in as it).

use keyward_common::krl::RevocationList;
use keyward_common::proto::{JumpPrincipal, ManagedUser, Mode, SshdFiles};
use keyward_common::sshd_files::{MAX_JUMP_PRINCIPALS, MAX_REVOKED_KEYS_BYTES, MAX_USER_CA_KEYS};
use keyward_common::{Fingerprint, HostId, KeyKind, Principal, TenantId, UnixUser};

use chrono::{DateTime, Utc};

use crate::store::{JumpRoute, RevokedCertificate};

/// The principal a certificate must carry to log in as `kind`'s managed user on `tenant`'s
/// hosts (`keyward:{tenant}:{kind}`): a certificate for one tenant's VPS therefore logs in on no
/// other tenant's, and one for the tenant user never as the admin user.
pub fn principal(tenant: &TenantId, kind: KeyKind) -> Principal {
    Principal::of_key_set(tenant, kind)
}

/// A bastion's jump user: no key (it logs in by certificate only); one jump principal per route,
/// a tenant's key set's [`principal`] that may forward only to that tenant's VPS; every tenant's
/// revoked certificate ids; and the state's generation as its session epoch, so that each new
/// state has the agent look at the user's sessions and end those whose certificate was revoked
/// or whose route is gone. At most [`MAX_JUMP_PRINCIPALS`] routes: more are left out, logged.
pub fn jump_user(
    user: &UnixUser,
    generation: u64,
    routes: &[JumpRoute],
    revoked_certificates: &[RevokedCertificate],
) -> ManagedUser {
    if routes.len() > MAX_JUMP_PRINCIPALS {
        tracing::error!(
            limit = MAX_JUMP_PRINCIPALS,
            "more tenant key sets than a bastion's jump user takes: some tenants cannot jump"
        );
    }
    ManagedUser {
        user: user.to_string(),
        mode: Mode::Exclusive.into(),
        keys: Vec::new(),
        denied_fingerprints: Vec::new(),
        session_epoch: generation,
        revoked: false,
        principals: Vec::new(),
        revoked_certificate_ids: jump_revoked_ids(revoked_certificates),
        recording: None,
        jump_principals: routes
            .iter()
            .take(MAX_JUMP_PRINCIPALS)
            .map(|route| JumpPrincipal {
                principal: principal(&route.tenant, route.kind).to_string(),
                permit_open: vec![route.to.to_string()],
            })
            .collect(),
    }
}

/// The most revoked key ids a bastion's jump user is sent (about 4 MB): every tenant's
/// revocations meet there, and a tenant that issues and revokes certificates quickly must not
/// push the bastion's state past what an agent decodes.
pub const MAX_JUMP_REVOKED_IDS: usize = 100_000;

/// Every tenant's revoked ids, those of the latest validity first, at most
/// [`MAX_JUMP_REVOKED_IDS`] (more are left out, logged: their sessions were ended when they were
/// revoked, unless the bastion was away meanwhile).
fn jump_revoked_ids(revoked: &[RevokedCertificate]) -> Vec<String> {
    let mut newest: Vec<&RevokedCertificate> = revoked.iter().collect();
    if newest.len() > MAX_JUMP_REVOKED_IDS {
        tracing::error!(
            revoked = newest.len(),
            limit = MAX_JUMP_REVOKED_IDS,
            "more revoked certificates than a bastion is sent: the oldest are left out"
        );
        newest.sort_by_key(|c| std::cmp::Reverse(c.valid_before));
        newest.truncate(MAX_JUMP_REVOKED_IDS);
    }
    newest.iter().map(|c| c.id.to_string()).collect()
}

/// What the host's sshd files are made of, besides its managed users.
#[derive(Debug, Clone, Copy)]
pub struct SshdInputs<'a> {
    /// The SSH CA's keys sshd is to trust (none when it is not configured).
    pub ca_keys: &'a [String],
    /// The tenant's revoked certificates that may still be valid or have live sessions.
    pub revoked_certificates: &'a [RevokedCertificate],
    /// Those valid after this are in the revocation list (all are in the users' revoked ids).
    pub listed_after: DateTime<Utc>,
}

/// The host's sshd files. `users` are the host's managed users as built for the state, each with
/// its key kind; their principals and revoked certificate ids are set here. `None` (the agent
/// leaves its files as they are) only when the revocation list cannot be encoded within its
/// bound, which the bounds on denied keys per key set and on certificate validity make
/// impossible in practice: logged.
pub fn sshd_files(
    host: &HostId,
    tenant: &TenantId,
    generation: u64,
    users: &mut [(KeyKind, ManagedUser)],
    inputs: SshdInputs<'_>,
) -> Option<SshdFiles> {
    let SshdInputs {
        ca_keys,
        revoked_certificates,
        listed_after,
    } = inputs;
    let listed: Vec<&RevokedCertificate> = revoked_certificates
        .iter()
        .filter(|c| c.valid_before > listed_after)
        .collect();
    let revoked_keys = match revocation_list(host, generation, users, &listed) {
        Ok(krl) => krl,
        Err(why) => {
            tracing::error!(host = %host, %why, "the host's revocation list is not sent");
            return None;
        }
    };
    let certificates = !ca_keys.is_empty();
    for (kind, user) in users.iter_mut() {
        user.principals = if certificates && !user.revoked {
            vec![principal(tenant, *kind).to_string()]
        } else {
            Vec::new()
        };
        user.revoked_certificate_ids = revoked_certificates
            .iter()
            .filter(|c| c.id.tenant == *tenant && c.id.kind == *kind)
            .map(|c| c.id.to_string())
            .collect();
    }
    Some(SshdFiles {
        user_ca_keys: ca_keys.iter().take(MAX_USER_CA_KEYS).cloned().collect(),
        revoked_keys,
    })
}

/// Every denied fingerprint of `users` and every revoked certificate, as an OpenSSH KRL whose
/// version is the state's generation. Its date is left 0 (sshd reads none of the header): the same denials at the same
/// generation give the same bytes, so an agent that gets its state again (a reconnect, a
/// resync) rewrites nothing.
fn revocation_list(
    host: &HostId,
    generation: u64,
    users: &[(KeyKind, ManagedUser)],
    certificates: &[&RevokedCertificate],
) -> Result<Vec<u8>, String> {
    let mut krl = RevocationList::new(generation, 0, &format!("keyward {host}"))
        .map_err(|e| e.to_string())?;
    for revoked in certificates {
        krl.revoke_key_id(None, &revoked.id.to_string())
            .map_err(|e| e.to_string())?;
        // The key id covers it whatever signed it; the serial is added under a CA key that reads.
        if let (Ok(ca), 1..) = (
            ssh_key::PublicKey::from_openssh(&revoked.ca_public_key),
            revoked.serial,
        ) {
            krl.revoke_serial(Some(&ca), revoked.serial)
                .map_err(|e| e.to_string())?;
        }
    }
    for (_, user) in users {
        for denied in &user.denied_fingerprints {
            let fingerprint: Fingerprint = denied.parse().map_err(|e| format!("{e}"))?;
            krl.revoke_fingerprint(&fingerprint)
                .map_err(|e| e.to_string())?;
        }
    }
    let encoded = krl.encode();
    if encoded.len() > MAX_REVOKED_KEYS_BYTES {
        return Err(format!(
            "{} bytes, over the {MAX_REVOKED_KEYS_BYTES} an agent takes",
            encoded.len()
        ));
    }
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use keyward_common::{GeneratedKey, KeyAlgorithm};

    use super::*;

    fn none() -> SshdInputs<'static> {
        SshdInputs {
            ca_keys: &[],
            revoked_certificates: &[],
            listed_after: DateTime::<Utc>::MIN_UTC,
        }
    }

    fn user(name: &str, denied: &[&GeneratedKey]) -> ManagedUser {
        ManagedUser {
            user: name.into(),
            denied_fingerprints: denied.iter().map(|k| k.fingerprint().to_string()).collect(),
            ..ManagedUser::default()
        }
    }

    #[test]
    fn every_denied_key_is_in_the_list_and_principals_follow_the_ca() {
        let (a, b) = (
            GeneratedKey::generate(KeyAlgorithm::Ed25519, "a").unwrap(),
            GeneratedKey::generate(KeyAlgorithm::Ed25519, "b").unwrap(),
        );
        let host: HostId = "h1".parse().unwrap();
        let tenant: TenantId = "acme".parse().unwrap();
        let mut users = vec![
            (KeyKind::Admin, user("kwadmin", &[&a])),
            (KeyKind::Tenant, user("tenant", &[&b, &a])),
        ];
        let files = sshd_files(&host, &tenant, 7, &mut users, none()).unwrap();
        assert!(files.user_ca_keys.is_empty());
        assert!(
            users.iter().all(|(_, u)| u.principals.is_empty()),
            "no CA, no principal"
        );
        let mut want = RevocationList::new(7, 0, "keyward h1").unwrap();
        want.revoke_fingerprint(a.fingerprint()).unwrap();
        want.revoke_fingerprint(b.fingerprint()).unwrap();
        assert_eq!(files.revoked_keys, want.encode());
        let again = sshd_files(&host, &tenant, 7, &mut users, none()).unwrap();
        assert_eq!(
            again, files,
            "the same state twice: the same bytes, nothing to rewrite"
        );

        let ca = vec!["ssh-ed25519 AAAA".to_owned()];
        let files = sshd_files(
            &host,
            &tenant,
            8,
            &mut users,
            SshdInputs {
                ca_keys: &ca,
                revoked_certificates: &[],
                listed_after: DateTime::<Utc>::MIN_UTC,
            },
        )
        .unwrap();
        assert_eq!(files.user_ca_keys, ca);
        assert_eq!(users[0].1.principals, ["keyward:acme:admin"]);
        assert_eq!(users[1].1.principals, ["keyward:acme:tenant"]);
    }

    #[test]
    fn a_host_with_nothing_denied_gets_an_empty_list_not_none() {
        let files = sshd_files(
            &"h1".parse().unwrap(),
            &"acme".parse().unwrap(),
            1,
            &mut [(KeyKind::Tenant, user("tenant", &[]))],
            none(),
        )
        .unwrap();
        assert!(files.revoked_keys.starts_with(b"SSHKRL\n\0"));
    }

    #[test]
    fn revoked_certificates_are_listed_by_key_id_and_serial_and_per_user() {
        let ca = GeneratedKey::generate(KeyAlgorithm::Ed25519, "ca").unwrap();
        let now = Utc::now();
        let revoked = |kind: &str, number: u64, serial: u64, hours: i64| RevokedCertificate {
            id: format!("keyward:acme:{kind}:{number}").parse().unwrap(),
            serial,
            ca_public_key: ca.public_openssh().to_owned(),
            valid_before: now + chrono::TimeDelta::hours(hours),
        };
        // The third expired long ago: its id is still the agents', not sshd's.
        let certificates = [
            revoked("admin", 1, 77, 1),
            revoked("tenant", 2, 0, 1),
            revoked("tenant", 3, 5, -5),
        ];
        let mut users = vec![
            (KeyKind::Admin, user("kwadmin", &[])),
            (KeyKind::Tenant, user("tenant", &[])),
        ];
        users[0].1.revoked = true;
        let ca_keys = [ca.public_openssh().to_owned()];
        let files = sshd_files(
            &"h1".parse().unwrap(),
            &"acme".parse().unwrap(),
            3,
            &mut users,
            SshdInputs {
                ca_keys: &ca_keys,
                revoked_certificates: &certificates,
                listed_after: now - chrono::TimeDelta::hours(1),
            },
        )
        .unwrap();
        let ca_key = ssh_key::PublicKey::from_openssh(ca.public_openssh()).unwrap();
        let mut want = RevocationList::new(3, 0, "keyward h1").unwrap();
        want.revoke_key_id(None, "keyward:acme:admin:1").unwrap();
        want.revoke_serial(Some(&ca_key), 77).unwrap();
        want.revoke_key_id(None, "keyward:acme:tenant:2").unwrap();
        assert_eq!(files.revoked_keys, want.encode(), "serial 0 is no serial");
        assert_eq!(users[0].1.revoked_certificate_ids, ["keyward:acme:admin:1"]);
        assert_eq!(
            users[1].1.revoked_certificate_ids,
            ["keyward:acme:tenant:2", "keyward:acme:tenant:3"]
        );
        assert!(
            users[0].1.principals.is_empty(),
            "a revoked user gets no principal"
        );
        assert_eq!(users[1].1.principals, ["keyward:acme:tenant"]);
    }

    #[test]
    fn a_bastion_lists_every_tenants_revoked_certificates_but_its_users_keep_their_own() {
        let ca = GeneratedKey::generate(KeyAlgorithm::Ed25519, "ca").unwrap();
        let now = Utc::now();
        let revoked = |id: &str| RevokedCertificate {
            id: id.parse().unwrap(),
            serial: 0,
            ca_public_key: ca.public_openssh().to_owned(),
            valid_before: now + chrono::TimeDelta::hours(1),
        };
        let certificates = [
            revoked("keyward:acme:tenant:1"),
            revoked("keyward:platform:tenant:4"),
        ];
        let mut users = vec![(KeyKind::Tenant, user("ops", &[]))];
        let ca_keys = [ca.public_openssh().to_owned()];
        let files = sshd_files(
            &"jump-1".parse().unwrap(),
            &"platform".parse().unwrap(),
            9,
            &mut users,
            SshdInputs {
                ca_keys: &ca_keys,
                revoked_certificates: &certificates,
                listed_after: now,
            },
        )
        .unwrap();
        let mut want = RevocationList::new(9, 0, "keyward jump-1").unwrap();
        want.revoke_key_id(None, "keyward:acme:tenant:1").unwrap();
        want.revoke_key_id(None, "keyward:platform:tenant:4")
            .unwrap();
        assert_eq!(files.revoked_keys, want.encode());
        assert_eq!(
            users[0].1.revoked_certificate_ids,
            ["keyward:platform:tenant:4"]
        );

        let route = JumpRoute {
            tenant: "acme".parse().unwrap(),
            kind: KeyKind::Tenant,
            to: "192.0.2.7:22".parse().unwrap(),
        };
        let jumper = jump_user(&"kwjump".parse().unwrap(), 9, &[route], &certificates);
        assert_eq!(
            jumper.revoked_certificate_ids,
            ["keyward:acme:tenant:1", "keyward:platform:tenant:4"]
        );
        assert_eq!(jumper.mode, i32::from(Mode::Exclusive));
        assert_eq!(jumper.session_epoch, 9);
        assert_eq!(jumper.jump_principals[0].principal, "keyward:acme:tenant");
        assert_eq!(jumper.jump_principals[0].permit_open, ["192.0.2.7:22"]);
    }

    #[test]
    fn a_bastion_is_sent_the_newest_revoked_ids_up_to_its_bound() {
        let now = Utc::now();
        let revoked: Vec<RevokedCertificate> = (0..=MAX_JUMP_REVOKED_IDS as u64)
            .map(|n| RevokedCertificate {
                id: format!("keyward:acme:tenant:{}", n + 1).parse().unwrap(),
                serial: 0,
                ca_public_key: String::new(),
                valid_before: now + chrono::TimeDelta::seconds(i64::try_from(n).unwrap()),
            })
            .collect();
        let ids = jump_revoked_ids(&revoked);
        assert_eq!(ids.len(), MAX_JUMP_REVOKED_IDS);
        // The one of the earliest validity is the one left out.
        assert!(!ids.contains(&"keyward:acme:tenant:1".to_owned()));
        assert!(ids.contains(&format!("keyward:acme:tenant:{}", MAX_JUMP_REVOKED_IDS + 1)));
    }
}
