//! Audit export: the hash-chained audit log, as it grows, to the SIEM (`[audit_export]`).
//!
//! The audit log is the outbox (events are never deleted, their sequence numbers have no gaps)
//! and each sink has a cursor in SQL (`audit_sinks`): the last event it confirmed. One replica
//! at a time delivers to a sink (a lease in the same row); it sends the events after the
//! cursor in chain order, a batch at a time, and moves the cursor once the sink confirmed the
//! batch. So delivery is at least once and in order, survives restarts and a sink that is away
//! for hours, and a key operation never waits for a sink: it only appends its event.
//!
//! Every event carries its `seq` and chain `hash`: a receiver de-duplicates on `seq` and checks
//! the chain. A `host.logins` event is followed by the SSH logins its batch stored.

mod file;
pub mod ocsf;
pub mod record;
mod status;
pub mod syslog;
pub mod webhook;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::config::{AuditExportConfig, AuditFormat, SinkTarget, SyslogTransport, facility_code};
use crate::store::Store;
pub use status::SinkStatus;

/// Why a batch did not reach a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Unreachable(&'static str),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Config(&'static str),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl SinkError {
    fn io(what: &'static str, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }

    /// One sentence for the status page: no address, path or OS text beyond the error's kind.
    pub fn public(&self) -> String {
        match self {
            Self::Io { what, source } => format!("{what}: {}", source.kind()),
            other => other.to_string(),
        }
    }
}

/// A sink's destination, ready to send.
#[derive(Debug)]
enum Target {
    Syslog(syslog::SyslogSink),
    Webhook(webhook::WebhookSink),
    File(file::FileSink),
}

/// One configured sink.
#[derive(Debug)]
struct Sink {
    name: String,
    kind: &'static str,
    format: AuditFormat,
    target: Target,
}

/// The sinks and their workers.
#[derive(Debug)]
pub struct AuditExport {
    sinks: Vec<Arc<Sink>>,
    store: Store,
    clock: Arc<dyn Clock>,
    replica: String,
    config: AuditExportConfig,
}

/// Why the configured sinks cannot be set up (at start).
#[derive(Debug, thiserror::Error)]
#[error("audit_export.sinks {sink:?}: {reason}")]
pub struct SetupError {
    sink: String,
    reason: String,
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read_file(path, "CA file")?;
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: rustls::pki_types::CertificateDer<'static> =
                    cert.map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("a certificate in {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "the CA file {} holds no certificate",
                    path.display()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

fn syslog_tls(
    target: &SinkTarget,
) -> Result<
    Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    String,
> {
    use rustls::pki_types::pem::PemObject;
    let SinkTarget::Syslog {
        transport: SyslogTransport::Tls,
        address,
        server_name,
        ca_file,
        client_cert,
        client_key,
        ..
    } = target
    else {
        return Ok(None);
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots(ca_file.as_deref())?);
    let config = match (client_cert, client_key) {
        (Some(cert), Some(key)) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&read_file(
                cert,
                "client certificate",
            )?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
            let key_pem = Zeroizing::new(read_file(key, "client key")?);
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| format!("the client key is not PEM: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = match server_name {
        Some(name) => name.clone(),
        None => address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            .unwrap_or_default(),
    };
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|_| "the server name is not a DNS name or an IP address".to_owned())?;
    Ok(Some((Arc::new(config), name)))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

impl Target {
    fn build(sink: &str, to: &SinkTarget, timeout: Duration) -> Result<Self, String> {
        Ok(match to {
            SinkTarget::Syslog {
                transport,
                address,
                facility,
                ..
            } => Target::Syslog(syslog::SyslogSink {
                transport: *transport,
                address: address.clone(),
                facility: facility_code(facility).ok_or("not a facility")?,
                hostname: hostname(),
                tls: syslog_tls(to)?,
            }),
            SinkTarget::Webhook {
                url,
                hmac_key_file,
                ca_file,
            } => {
                let key = Zeroizing::new(read_file(hmac_key_file, "HMAC key file")?);
                let key = Zeroizing::new(key.trim_ascii().to_vec());
                if key.len() < 32 {
                    return Err("the HMAC key must be at least 32 bytes".into());
                }
                let mut http = reqwest::Client::builder()
                    .timeout(timeout)
                    .redirect(reqwest::redirect::Policy::none());
                if let Some(ca) = ca_file {
                    for cert in reqwest::Certificate::from_pem_bundle(&read_file(ca, "CA file")?)
                        .map_err(|e| format!("the CA file {} is not PEM: {e}", ca.display()))?
                    {
                        http = http.add_root_certificate(cert);
                    }
                }
                Target::Webhook(webhook::WebhookSink {
                    sink: sink.to_owned(),
                    url: reqwest::Url::parse(url).map_err(|e| e.to_string())?,
                    key,
                    http: http.build().map_err(|e| e.to_string())?,
                })
            }
            SinkTarget::File { path } => Target::File(file::FileSink { path: path.clone() }),
        })
    }

    async fn deliver(
        &self,
        batch: &[record::Record],
        timeout: Duration,
        unix_seconds: i64,
    ) -> Result<(), SinkError> {
        match self {
            Target::Syslog(s) => s.deliver(batch, timeout).await,
            Target::Webhook(w) => w.deliver(batch, unix_seconds).await,
            Target::File(f) => f.deliver(batch).await,
        }
    }
}

impl AuditExport {
    /// The configured sinks, their files read and their TLS set up; nothing sent yet.
    pub fn new(
        config: &AuditExportConfig,
        store: Store,
        clock: Arc<dyn Clock>,
        replica: &str,
    ) -> Result<Self, SetupError> {
        let sinks = config
            .sinks
            .iter()
            .map(|s| {
                let target =
                    Target::build(&s.name, &s.to, config.timeout).map_err(|reason| SetupError {
                        sink: s.name.clone(),
                        reason,
                    })?;
                Ok(Arc::new(Sink {
                    name: s.name.clone(),
                    kind: match s.to {
                        SinkTarget::Syslog { .. } => "syslog",
                        SinkTarget::Webhook { .. } => "webhook",
                        SinkTarget::File { .. } => "file",
                    },
                    format: s.format,
                    target,
                }))
            })
            .collect::<Result<_, SetupError>>()?;
        Ok(Self {
            sinks,
            store,
            clock,
            replica: replica.to_owned(),
            config: config.clone(),
        })
    }

    /// One worker per sink.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.sinks
            .iter()
            .map(|sink| tokio::spawn(self.clone().run(sink.clone())))
            .collect()
    }

    /// Gives every lease up, so that another replica takes the sinks over at once.
    pub async fn release(&self) {
        for sink in &self.sinks {
            if let Err(e) = self
                .store
                .release_audit_sink(&sink.name, &self.replica)
                .await
            {
                tracing::warn!(sink = %sink.name, error = %e, "could not release an audit sink");
            }
        }
    }
}
