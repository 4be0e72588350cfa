//! `keyward-agent enroll`: trade a one-time token for a client certificate.
//!
//! The agent makes its own key pair and sends only a CSR, so its private key never leaves the
//! host. The answer also carries the agent CA (the only root the gRPC connection will trust) and
//! the control plane's state-signing key, which is pinned here for the agent's lifetime.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::state_dir::{EnrollmentInfo, Identity, StateDir, StateDirError, parse_signing_key};
use crate::tls::{self, TlsError};

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("invalid server URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error(
        "refusing plain http:// to {host}: the enrollment token would travel in clear text; use https:// (http:// is allowed only for 127.0.0.1, ::1 and localhost)"
    )]
    PlainHttp { host: String },
    #[error("already enrolled as host {host_id} (in {dir}); pass --force to enroll again")]
    AlreadyEnrolled { host_id: String, dir: PathBuf },
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no usable certificate: {message}")]
    BadCaFile { path: PathBuf, message: String },
    #[error("enrollment refused: {detail} ({code})")]
    Refused { code: String, detail: String },
    #[error("the control plane answered HTTP {status} without a problem document: {body}")]
    Http { status: u16, body: String },
    #[error("cannot reach the control plane: {0}")]
    Request(#[source] reqwest::Error),
    #[error("the control plane's answer is unusable: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    State(#[from] StateDirError),
    #[error("key generation task failed: {0}")]
    Task(String),
}

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The control plane's REST base URL, e.g. `https://keyward.example`.
    pub server: String,
    /// The one-time enrollment token.
    pub token: String,
    /// An extra root CA (PEM) for the control plane's REST certificate.
    pub ca_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Replace an existing enrollment.
    pub force: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnrollRequest<'a> {
    token: &'a str,
    csr_pem: &'a str,
}

/// The control plane's 200 answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnrollResponse {
    host_id: String,
    tenant_id: String,
    certificate_pem: String,
    ca_certificate_pem: String,
    signing_public_key: String,
    grpc_url: String,
}

/// An RFC 9457 problem document, as the control plane sends for every error.
#[derive(Deserialize)]
struct Problem {
    code: Option<String>,
    detail: Option<String>,
    title: Option<String>,
}

/// Checks the server URL: `https://`, or `http://` to a loopback name only (a local test setup
/// cannot leak the token to the network).
pub fn check_server_url(server: &str) -> Result<reqwest::Url, EnrollError> {
    let url = reqwest::Url::parse(server).map_err(|e| EnrollError::BadUrl {
        url: server.to_owned(),
        message: e.to_string(),
    })?;
    let host = url.host_str().unwrap_or_default().to_owned();
    match url.scheme() {
        "https" if !host.is_empty() => Ok(url),
        "http" if matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]" | "::1") => Ok(url),
        "http" => Err(EnrollError::PlainHttp { host }),
        _ => Err(EnrollError::BadUrl {
            url: server.to_owned(),
            message: "the scheme must be https".into(),
        }),
    }
}

fn endpoint(server: &reqwest::Url) -> Result<reqwest::Url, EnrollError> {
    // `join` would drop the last path segment of a base URL without a trailing slash.
    let base = server.as_str().trim_end_matches('/');
    reqwest::Url::parse(&format!("{base}/api/v1/agent/enroll")).map_err(|e| EnrollError::BadUrl {
        url: server.to_string(),
        message: e.to_string(),
    })
}

fn http_client(ca_file: Option<&PathBuf>) -> Result<reqwest::Client, EnrollError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_3)
        // The token must go only where the operator pointed it.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| EnrollError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| EnrollError::BadCaFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(EnrollError::BadCaFile {
                path: path.clone(),
                message: "no PEM certificate".into(),
            });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(EnrollError::Request)
}

/// Enrolls this host and stores the identity in the state directory. Returns what was stored.
pub async fn enroll(options: &EnrollOptions) -> Result<EnrollmentInfo, EnrollError> {
    let server = check_server_url(&options.server)?;
    let dir = StateDir::new(&options.state_dir);
    if dir.is_enrolled() && !options.force {
        let host_id = dir
            .load_identity()
            .map(|i| i.info.host_id)
            .unwrap_or_else(|_| "?".into());
        return Err(EnrollError::AlreadyEnrolled {
            host_id,
            dir: options.state_dir.clone(),
        });
    }
    let client = http_client(options.ca_file.as_ref())?;
    // Key generation is CPU work: keep it off the async runtime's threads.
    let (key, csr) = tokio::task::spawn_blocking(|| {
        let key = tls::generate_key()?;
        let csr = tls::csr_pem(&key)?;
        Ok::<_, TlsError>((key, csr))
    })
    .await
    .map_err(|e| EnrollError::Task(e.to_string()))??;

    let response = client
        .post(endpoint(&server)?)
        .json(&EnrollRequest {
            token: &options.token,
            csr_pem: &csr,
        })
        .send()
        .await
        .map_err(EnrollError::Request)?;
    let status = response.status();
    let body = response.bytes().await.map_err(EnrollError::Request)?;
    if !status.is_success() {
        return Err(refusal(status.as_u16(), &body));
    }
    let answer: EnrollResponse = serde_json::from_slice(&body)
        .map_err(|e| EnrollError::BadAnswer(format!("not the expected JSON: {e}")))?;
    let identity = check_answer(answer, &key)?;
    dir.store_identity(&identity)?;
    Ok(identity.info)
}

/// The error for a non-2xx answer: the problem document's detail and code when there is one.
fn refusal(status: u16, body: &[u8]) -> EnrollError {
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) if p.code.is_some() || p.detail.is_some() => EnrollError::Refused {
            code: p.code.unwrap_or_else(|| format!("http_{status}")),
            detail: p
                .detail
                .or(p.title)
                .unwrap_or_else(|| format!("HTTP {status}")),
        },
        _ => EnrollError::Http {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

/// Checks everything the answer says before anything is stored.
fn check_answer(answer: EnrollResponse, key: &rcgen::KeyPair) -> Result<Identity, EnrollError> {
    let bad = |m: String| EnrollError::BadAnswer(m);
    if answer.host_id.is_empty() {
        return Err(bad("hostId is empty".into()));
    }
    crate::client::parse_target(&answer.grpc_url).map_err(|e| bad(format!("grpcUrl: {e}")))?;
    let signing_key = parse_signing_key(answer.signing_public_key.trim())
        .map_err(|m| bad(format!("signingPublicKey: {m}")))?;
    tls::check_certificate("caCertificatePem", &answer.ca_certificate_pem)?;
    if !tls::certifies(&answer.certificate_pem, key)? {
        return Err(bad(
            "the certificate is not for the key this agent sent".into()
        ));
    }
    // Building the client configuration proves the three fit together before they are stored.
    let key_pem = Zeroizing::new(key.serialize_pem());
    tls::client_config(
        &answer.ca_certificate_pem,
        &answer.certificate_pem,
        &key_pem,
    )?;
    Ok(Identity {
        info: EnrollmentInfo {
            host_id: answer.host_id,
            tenant_id: answer.tenant_id,
            grpc_url: answer.grpc_url,
        },
        key_pem,
        cert_pem: answer.certificate_pem,
        ca_pem: answer.ca_certificate_pem,
        signing_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "https://cp.example",
            "https://10.0.0.1:8443/",
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            assert!(check_server_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://cp.example",
            "http://10.0.0.1",
            "http://127.0.0.1.evil.example",
        ] {
            let err = check_server_url(bad).unwrap_err();
            assert!(matches!(err, EnrollError::PlainHttp { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("use https://"));
        }
        assert!(check_server_url("ftp://x").is_err());
        assert!(check_server_url("not a url").is_err());
    }

    #[test]
    fn the_endpoint_keeps_a_base_path() {
        let u = check_server_url("https://cp.example/keyward/").unwrap();
        assert_eq!(
            endpoint(&u).unwrap().as_str(),
            "https://cp.example/keyward/api/v1/agent/enroll"
        );
    }

    #[test]
    fn problems_become_clear_refusals() {
        let err = refusal(
            401,
            br#"{"type":"about:blank","code":"enrollment_token_invalid","detail":"the token was already used","status":401}"#,
        );
        assert_eq!(
            err.to_string(),
            "enrollment refused: the token was already used (enrollment_token_invalid)"
        );
        let err = refusal(502, b"<html>bad gateway</html>");
        assert!(matches!(err, EnrollError::Http { status: 502, .. }));
    }
}
