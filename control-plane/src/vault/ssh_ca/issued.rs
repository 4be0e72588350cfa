//! What Vault signed, read from the certificate itself and held against what was asked: a Vault
//! (or anything in its place) that signs something else is an error, not a certificate.

use std::collections::BTreeSet;

use ssh_key::Certificate;
use ssh_key::certificate::CertType;

use super::request::UserCertificateRequest;

/// How far keyward's clock and Vault's may disagree.
pub const CLOCK_SKEW: u64 = 60;
/// How far before its signing a certificate may start (the engine backdates by its role's
/// `not_before_duration`, 30 s unless set).
pub const MAX_BACKDATE: u64 = 5 * 60;

/// A signed user certificate, as the certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCertificate {
    /// The certificate in OpenSSH form (`ssh-ed25519-cert-v01@openssh.com AAAA...`), for the
    /// holder's `~/.ssh/id_*-cert.pub`.
    pub certificate: String,
    pub serial: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds.
    pub valid_before: u64,
    /// The engine's issuer that signed it.
    pub issuer_id: String,
    /// The CA key that signed it, in OpenSSH form.
    pub ca_public_key: String,
}

/// Reads `signed_key` (Vault's answer) and checks it is exactly `asked`: a user certificate for
/// the asked key, key id, principals and extensions, no critical options, serial `serial`, and a
/// validity that starts by `received` (unix seconds) and ends `asked.validity()` after a moment
/// between `sent` and `received`, give or take [`CLOCK_SKEW`].
pub fn check(
    asked: &UserCertificateRequest,
    signed_key: &str,
    serial_hex: &str,
    issuer_id: &str,
    (sent, received): (u64, u64),
) -> Result<SignedCertificate, String> {
    let cert = Certificate::from_openssh(signed_key)
        .map_err(|e| format!("signed_key is not an OpenSSH certificate: {e}"))?;
    let serial = u64::from_str_radix(serial_hex.trim_start_matches("0x"), 16)
        .map_err(|_| format!("serial_number {serial_hex:?} is not a hexadecimal u64"))?;
    if cert.serial() != serial {
        return Err(format!(
            "the certificate's serial {} is not serial_number {serial_hex}",
            cert.serial()
        ));
    }
    if cert.cert_type() != CertType::User {
        return Err("it signed a host certificate".into());
    }
    if cert.public_key() != asked.public_key().key_data() {
        return Err("it signed another public key".into());
    }
    if cert.key_id() != asked.key_id() {
        return Err(format!(
            "key id {:?} instead of {:?}",
            cert.key_id(),
            asked.key_id()
        ));
    }
    let principals: BTreeSet<&str> = cert.valid_principals().iter().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = asked.principals().iter().map(|p| p.as_str()).collect();
    if principals != wanted || cert.valid_principals().len() != wanted.len() {
        return Err(format!(
            "principals {:?} instead of {:?}",
            cert.valid_principals(),
            wanted
        ));
    }
    let extensions: BTreeSet<&str> = cert.extensions().keys().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = asked.extensions().iter().map(|e| e.name()).collect();
    if extensions != wanted || cert.extensions().values().any(|v| !v.is_empty()) {
        return Err(format!("extensions {extensions:?} instead of {wanted:?}"));
    }
    if !cert.critical_options().is_empty() {
        let options: Vec<&String> = cert.critical_options().keys().collect();
        return Err(format!("unasked critical options {options:?}"));
    }
    let ttl = asked.validity().as_secs();
    let (after, before) = (cert.valid_after(), cert.valid_before());
    let starts_in_time =
        after <= received + CLOCK_SKEW && after + MAX_BACKDATE + CLOCK_SKEW >= sent;
    let ends_in_time = before + CLOCK_SKEW >= sent + ttl && before <= received + ttl + CLOCK_SKEW;
    if !(starts_in_time && ends_in_time) {
        return Err(format!(
            "validity {after}..{before} (unix seconds) is not {ttl} s from signing at {sent}..{received}"
        ));
    }
    Ok(SignedCertificate {
        certificate: cert
            .to_openssh()
            .map_err(|e| format!("re-encoding the certificate: {e}"))?,
        serial,
        key_id: cert.key_id().to_owned(),
        principals: cert.valid_principals().to_vec(),
        valid_after: after,
        valid_before: before,
        issuer_id: issuer_id.to_owned(),
        ca_public_key: ssh_key::PublicKey::from(cert.signature_key().clone())
            .to_openssh()
            .map_err(|e| format!("encoding the CA key: {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keyward_common::{GeneratedKey, KeyAlgorithm};
    use ssh_key::PrivateKey;
    use ssh_key::certificate::Builder;

    use super::*;
    use crate::vault::ssh_ca::Extension;

    const NOW: u64 = 1_800_000_000;

    struct Ca(PrivateKey);

    impl Ca {
        fn new() -> Self {
            let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "ca").unwrap();
            Self(PrivateKey::from_openssh(key.private_openssh()).unwrap())
        }

        /// Signs what `asked` asks, then lets `change` alter the builder's inputs.
        fn sign(
            &self,
            asked: &UserCertificateRequest,
            change: impl FnOnce(&mut Signing),
        ) -> String {
            let mut s = Signing {
                key: asked.public_key().key_data().clone(),
                serial: 0x1a22_59bd_27b7_37c3,
                cert_type: CertType::User,
                key_id: asked.key_id().to_owned(),
                principals: asked
                    .principals()
                    .iter()
                    .map(|p| p.as_str().to_owned())
                    .collect(),
                extensions: asked
                    .extensions()
                    .iter()
                    .map(|e| e.name().to_owned())
                    .collect(),
                critical: Vec::new(),
                after: NOW - 30,
                before: NOW + asked.validity().as_secs(),
            };
            change(&mut s);
            let mut b = Builder::new([7u8; 16], s.key, s.after, s.before).unwrap();
            b.serial(s.serial)
                .unwrap()
                .cert_type(s.cert_type)
                .unwrap()
                .key_id(s.key_id)
                .unwrap();
            for p in s.principals {
                b.valid_principal(p).unwrap();
            }
            for e in s.extensions {
                b.extension(e, "").unwrap();
            }
            for c in s.critical {
                b.critical_option(c, "").unwrap();
            }
            b.sign(&self.0).unwrap().to_openssh().unwrap()
        }
    }

    /// A change to what the fake Vault signs.
    type Change = Box<dyn FnOnce(&mut Signing)>;

    struct Signing {
        key: ssh_key::public::KeyData,
        serial: u64,
        cert_type: CertType,
        key_id: String,
        principals: Vec<String>,
        extensions: Vec<String>,
        critical: Vec<String>,
        after: u64,
        before: u64,
    }

    fn asked() -> UserCertificateRequest {
        let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "u").unwrap();
        UserCertificateRequest::new(
            "keyward-user",
            key.public_openssh(),
            "t1:tenant:7",
            ["alice", "bob"],
            Duration::from_secs(600),
        )
        .unwrap()
    }

    fn checked(asked: &UserCertificateRequest, cert: &str) -> Result<SignedCertificate, String> {
        check(asked, cert, "1a2259bd27b737c3", "issuer-1", (NOW - 1, NOW))
    }

    #[test]
    fn what_was_asked_is_read_back() {
        let ca = Ca::new();
        let asked = asked();
        let signed = checked(&asked, &ca.sign(&asked, |_| {})).unwrap();
        assert_eq!(signed.serial, 1_883_166_263_144_298_435);
        assert_eq!(signed.key_id, "t1:tenant:7");
        assert_eq!(signed.principals, ["alice", "bob"]);
        assert_eq!(
            (signed.valid_after, signed.valid_before),
            (NOW - 30, NOW + 600)
        );
        assert_eq!(signed.issuer_id, "issuer-1");
        assert!(
            signed
                .certificate
                .starts_with("ssh-ed25519-cert-v01@openssh.com AAAA")
        );
        let ca_key = ssh_key::PublicKey::from(ca.0.public_key().key_data().clone());
        assert_eq!(signed.ca_public_key, ca_key.to_openssh().unwrap());
    }

    #[test]
    fn anything_else_is_refused() {
        let ca = Ca::new();
        let asked = asked();
        let other_key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "x").unwrap();
        let other_key = ssh_key::PublicKey::from_openssh(other_key.public_openssh()).unwrap();
        let cases: Vec<(&str, Change)> = vec![
            ("serial", Box::new(|s| s.serial = 1)),
            (
                "host certificate",
                Box::new(|s| s.cert_type = CertType::Host),
            ),
            (
                "another public key",
                Box::new(move |s| s.key = other_key.key_data().clone()),
            ),
            ("key id", Box::new(|s| s.key_id = "t1:admin:7".into())),
            ("principals", Box::new(|s| s.principals.push("root".into()))),
            ("principals", Box::new(|s| s.principals.truncate(1))),
            (
                "extensions",
                Box::new(|s| s.extensions.push("permit-agent-forwarding".into())),
            ),
            ("extensions", Box::new(|s| s.extensions.clear())),
            (
                "critical options",
                Box::new(|s| s.critical.push("force-command".into())),
            ),
            ("validity", Box::new(|s| s.before += 3600)),
            ("validity", Box::new(|s| s.before -= 300)),
            ("validity", Box::new(|s| s.after = NOW + 2 * CLOCK_SKEW)),
            ("validity", Box::new(|s| s.after = 0)),
        ];
        for (what, change) in cases {
            let err = checked(&asked, &ca.sign(&asked, change)).unwrap_err();
            assert!(err.contains(what), "{what}: {err}");
        }
        assert!(
            checked(&asked, "ssh-ed25519 AAAA")
                .unwrap_err()
                .contains("not an OpenSSH certificate")
        );
        let cert = ca.sign(&asked, |_| {});
        let err = check(&asked, &cert, "zz", "i", (NOW, NOW)).unwrap_err();
        assert!(err.contains("not a hexadecimal"), "{err}");
        // The extensions asked for are the ones expected.
        let more = asked
            .clone()
            .with_extension(Extension::PermitPortForwarding);
        let cert = ca.sign(&more, |_| {});
        assert!(checked(&more, &cert).is_ok());
        assert!(checked(&asked, &cert).unwrap_err().contains("extensions"));
    }

    #[test]
    fn a_little_clock_skew_is_tolerated() {
        let ca = Ca::new();
        let asked = asked();
        let cert = ca.sign(&asked, |s| {
            s.after = NOW + CLOCK_SKEW - 30;
            s.before = NOW + CLOCK_SKEW + 600;
        });
        assert!(checked(&asked, &cert).is_ok());
        let cert = ca.sign(&asked, |s| {
            s.after = NOW - CLOCK_SKEW - 30;
            s.before = NOW - CLOCK_SKEW + 600;
        });
        assert!(checked(&asked, &cert).is_ok());
    }
}
