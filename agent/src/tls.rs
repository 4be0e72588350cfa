//! The agent's TLS identity: its rustls client configuration, CSRs and certificate lifetimes.
//!
//! The gRPC connection trusts exactly one root, the control plane's agent CA pinned at
//! enrollment (not the system store: a public CA must not be able to impersonate the control
//! plane), speaks TLS 1.3 only and presents the agent's certificate. The agent's key pair is made
//! here once and reused for every renewal: it never leaves the host.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::pem::parse_x509_pem;

/// Why a TLS identity could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: &'static str },
    #[error("{what}: {message}")]
    BadPem { what: &'static str, message: String },
    #[error("the agent key: {0}")]
    Key(rcgen::Error),
    #[error("making the certificate signing request: {0}")]
    Csr(rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the CA certificate is not usable as a trust anchor: {0}")]
    Anchor(rustls::Error),
}

/// Generates the agent's key pair (ECDSA P-256).
pub fn generate_key() -> Result<KeyPair, TlsError> {
    KeyPair::generate().map_err(TlsError::Key)
}

/// Loads the agent's key pair from its PEM.
pub fn load_key(pem: &str) -> Result<KeyPair, TlsError> {
    KeyPair::from_pem(pem).map_err(TlsError::Key)
}

/// A CSR for `key`, PEM. The subject is rcgen's default and means nothing: the control plane
/// names the host in the certificate it issues.
pub fn csr_pem(key: &KeyPair) -> Result<String, TlsError> {
    CertificateParams::default()
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(TlsError::Csr)
}

fn certificates(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

/// The rustls client configuration for the gRPC stream: TLS 1.3 only, `ca_pem` as the only
/// root, `cert_pem` + `key_pem` as the client identity, ALPN `h2`.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates("the CA certificate", ca_pem)? {
        roots.add(ca).map_err(TlsError::Anchor)?;
    }
    let chain = certificates("the agent certificate", cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadPem {
        what: "the agent key",
        message: e.to_string(),
    })?;
    // The provider is passed explicitly rather than installed process-wide, so the agent's
    // library code does not depend on (or fight over) a global default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl Validity {
    /// When to ask for a new certificate: at two thirds of the lifetime, which leaves a third
    /// of it (ten days of the default thirty) for a control plane outage.
    pub fn renew_at(&self) -> DateTime<Utc> {
        let life = self.not_after - self.not_before;
        self.not_before + life * 2 / 3
    }
}

/// Parses the first certificate of `pem`.
fn with_certificate<T>(
    what: &'static str,
    pem: &str,
    f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T,
) -> Result<T, TlsError> {
    let bad = |message: String| TlsError::BadPem { what, message };
    let (_, pem) = parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    Ok(f(&cert))
}

/// The validity period of the first certificate in `pem`.
pub fn validity(pem: &str) -> Result<Validity, TlsError> {
    let (nb, na) = with_certificate("the agent certificate", pem, |c| {
        (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        )
    })?;
    let at = |t: i64| {
        DateTime::from_timestamp(t, 0).ok_or_else(|| TlsError::BadPem {
            what: "the agent certificate",
            message: format!("validity time {t} is out of range"),
        })
    };
    Ok(Validity {
        not_before: at(nb)?,
        not_after: at(na)?,
    })
}

/// Whether the certificate in `cert_pem` certifies `key` (a control plane must not be able to
/// hand the agent a certificate for some other key, which would break every later connection).
pub fn certifies(cert_pem: &str, key: &KeyPair) -> Result<bool, TlsError> {
    let raw = key.public_key_raw().to_vec();
    with_certificate("the certificate", cert_pem, |c| {
        c.public_key().subject_public_key.data.as_ref() == raw.as_slice()
    })
}

/// Checks that `pem` holds at least one parseable certificate.
pub fn check_certificate(what: &'static str, pem: &str) -> Result<(), TlsError> {
    certificates(what, pem).map(drop)?;
    with_certificate(what, pem, |_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa};

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let nb = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let v = Validity {
            not_before: nb,
            not_after: nb + chrono::Duration::days(30),
        };
        assert_eq!(v.renew_at(), nb + chrono::Duration::days(20));
    }

    #[test]
    fn a_csr_and_a_certificate_for_the_same_key() {
        let key = generate_key().unwrap();
        let csr = csr_pem(&key).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));

        let ca_key = generate_key().unwrap();
        let mut ca_params = CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["host-1".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 31);
        let cert = params.signed_by(&key, &issuer).unwrap();

        assert!(certifies(&cert.pem(), &key).unwrap());
        assert!(!certifies(&cert.pem(), &generate_key().unwrap()).unwrap());
        let v = validity(&cert.pem()).unwrap();
        assert_eq!(v.not_after - v.not_before, chrono::Duration::days(30));
        client_config(&ca.pem(), &cert.pem(), &key.serialize_pem()).unwrap();
        assert!(client_config("junk", &cert.pem(), &key.serialize_pem()).is_err());
        assert!(check_certificate("x", "junk").is_err());
    }
}
