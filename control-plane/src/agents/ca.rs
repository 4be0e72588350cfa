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

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
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
