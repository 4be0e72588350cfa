//! The agent certificate authority. Its key lives in Vault at `{mount}/_keyward/agent_ca`.
//!
//! It issues each host a client certificate naming it (`urn:keyward:host:{host_id}`, and the
//! host id as the common name) from a CSR made on the host, so the host's key never leaves it;
//! and it issues the gRPC server's own certificate, so an agent needs to trust nothing but this
//! CA, which it receives at enrollment.

use std::fmt;
use std::time::Duration;

use keyward_common::HostId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::json;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::AgentTrustError;
use crate::vault::SecretStore;

const SECRET: &str = "agent_ca";
/// The URI SAN prefix that names a host in its client certificate.
pub const HOST_URI_PREFIX: &str = "urn:keyward:host:";

pub struct AgentCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCa").finish_non_exhaustive()
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate_pem: String,
    /// Hex, lower case.
    pub serial: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

impl crate::lifecycle::IssuedCertificate for Issued {
    fn serial(&self) -> &str {
        &self.serial
    }

    fn not_after(&self) -> chrono::DateTime<chrono::Utc> {
        self.not_after
    }
}

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
    #[error(
        "the certificate signing request's key is {0}; use Ed25519, ECDSA P-256 or P-384, or RSA of at least 3072 bits"
    )]
    WeakKey(String),
}

/// The smallest RSA modulus accepted in a host's CSR.
pub const MIN_RSA_BITS: usize = 3072;

/// Refuses a CSR whose key is not Ed25519, ECDSA P-256/P-384 or RSA of 3072 bits or more.
fn check_csr_key(csr_pem: &str) -> Result<(), IssueError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    let bad = || IssueError::BadCsr(rcgen::Error::CouldNotParseCertificationRequest);
    let pem = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|_| bad())?
        .1;
    let csr = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|_| bad())?
        .1;
    let spki = &csr.certification_request_info.subject_pki;
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_SIG_ED25519 {
        return Ok(());
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            _ => Err(IssueError::WeakKey("ECDSA on another curve".into())),
        };
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(bad()),
        };
        return if bits >= MIN_RSA_BITS {
            Ok(())
        } else {
            Err(IssueError::WeakKey(format!("RSA of {bits} bits")))
        };
    }
    Err(IssueError::WeakKey(format!("of type {algorithm}")))
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // a positive INTEGER
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

fn validity(lifetime: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    // A minute of slack for hosts whose clocks run a little behind.
    (now - time::Duration::minutes(1), now + lifetime)
}

impl AgentCa {
    pub async fn load_or_create(vault: &dyn SecretStore) -> Result<Self, AgentTrustError> {
        for _ in 0..2 {
            if let Some(stored) = vault.read_internal(SECRET).await? {
                return Self::from_stored(&stored);
            }
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "keyward agent CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            (params.not_before, params.not_after) =
                validity(Duration::from_secs(10 * 365 * 86_400));
            let cert = params.self_signed(&key)?;
            let key_pem = Zeroizing::new(key.serialize_pem());
            let stored = json!({ "certificate_pem": cert.pem(), "key_pem": key_pem.as_str() });
            if vault.create_internal(SECRET, &stored).await? {
                tracing::info!("created the agent certificate authority in Vault");
                return Self::from_stored(&stored);
            }
        }
        Err(AgentTrustError::Corrupt {
            what: "agent CA",
            detail: "neither readable nor creatable".into(),
        })
    }

    fn from_stored(stored: &serde_json::Value) -> Result<Self, AgentTrustError> {
        let field = |name: &str| {
            stored[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| AgentTrustError::Corrupt {
                    what: "agent CA",
                    detail: format!("no {name} field"),
                })
        };
        let cert_pem = field("certificate_pem")?;
        let key_pem = Zeroizing::new(field("key_pem")?);
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { cert_pem, issuer })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A client certificate for `host` over the public key in `csr_pem`.
    pub fn issue_host(
        &self,
        host: &HostId,
        csr_pem: &str,
        lifetime: Duration,
    ) -> Result<Issued, IssueError> {
        check_csr_key(csr_pem)?;
        // from_pem verifies the CSR's self-signature: the requester holds the key.
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(IssueError::BadCsr)?;
        let params = &mut csr.params;
        // Only what keyward decides goes into the certificate; the CSR's own names are dropped.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            format!("{HOST_URI_PREFIX}{host}")
                .try_into()
                .map_err(IssueError::Sign)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.custom_extensions.clear();
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        (params.not_before, params.not_after) = validity(lifetime);
        let not_after = params.not_after;
        let cert = csr.signed_by(&self.issuer).map_err(IssueError::Sign)?;
        Ok(Issued {
            certificate_pem: cert.pem(),
            serial: serial_hex,
            not_after: chrono::DateTime::from_timestamp(not_after.unix_timestamp(), 0)
                .unwrap_or_default(),
        })
    }

    /// The gRPC server's certificate and key (PEM) for `names` (DNS names or IP addresses).
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(String, Zeroizing<String>), IssueError> {
        let key = KeyPair::generate().map_err(IssueError::Sign)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(IssueError::Sign)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "keyward control plane");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial().0);
        (params.not_before, params.not_after) = validity(lifetime);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(IssueError::Sign)?;
        Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePrivateKey;

    /// An RSA key pair of `bits` as rcgen can sign with.
    fn rsa_key(bits: usize) -> KeyPair {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits).unwrap();
        let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
    }

    fn csr(key: &KeyPair) -> String {
        CertificateParams::default()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn ca() -> AgentCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params.self_signed(&key).unwrap();
        AgentCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    #[test]
    fn rsa_3072_ecdsa_and_ed25519_csrs_are_issued_a_certificate() {
        let ca = ca();
        let host: HostId = "web-1".parse().unwrap();
        let lifetime = Duration::from_secs(3600);
        for key in [
            rsa_key(3072),
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
            KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        ] {
            let issued = ca.issue_host(&host, &csr(&key), lifetime);
            assert!(issued.is_ok(), "{:?}: {issued:?}", key.algorithm());
        }
    }

    #[test]
    fn rsa_under_3072_bits_is_refused_by_name() {
        let err = ca()
            .issue_host(
                &"web-1".parse().unwrap(),
                &csr(&rsa_key(2048)),
                Duration::from_secs(3600),
            )
            .unwrap_err();
        assert!(matches!(err, IssueError::WeakKey(_)), "{err:?}");
        assert!(err.to_string().contains("RSA of 2048 bits"), "{err}");
    }
}
