//! `enroll` against a minimal HTTP/1.1 control plane on 127.0.0.1 (plain http:// is allowed only
//! for loopback, which is also what lets this test run without a TLS server).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod runtime_support;

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use keyward_agent::enroll::{EnrollError, EnrollOptions, enroll};
use keyward_agent::state_dir::StateDir;
use runtime_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Respond = Box<dyn FnOnce(serde_json::Value) -> (u16, &'static str, String) + Send>;

/// Answers one request over plain HTTP: `respond` gets the JSON body and returns (status,
/// content type, body). The task returns the request head.
async fn serve_once(
    respond: impl FnOnce(serde_json::Value) -> (u16, &'static str, String) + Send + 'static,
) -> (String, tokio::task::JoinHandle<String>) {
    serve_once_with(None, Box::new(respond)).await
}

/// [`serve_once`], over TLS when `tls` is given.
async fn serve_once_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
    respond: Respond,
) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match tls {
            // A refused handshake (the client does not trust us) ends here.
            Some(acceptor) => match acceptor.accept(tcp).await {
                Ok(tls) => answer(tls, respond).await,
                Err(_) => String::new(),
            },
            None => answer(tcp, respond).await,
        }
    });
    (url, task)
}

async fn answer(
    mut io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    respond: Respond,
) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = io.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = io.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let body: serde_json::Value = serde_json::from_slice(&buf[head_end..]).unwrap();
    let (status, content_type, answer) = respond(body);
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    io.write_all(response.as_bytes()).await.unwrap();
    io.shutdown().await.unwrap();
    head
}

/// A TLS 1.3 server identity for 127.0.0.1 from `pki` (no client certificate: the REST side).
fn https_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let (chain, key) = pki.server_identity();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// The control plane's 200 answer for the CSR in `body`.
fn issue_answer(pki: &Pki, body: &serde_json::Value) -> String {
    serde_json::json!({
        "hostId": "host-0001",
        "tenantId": "t1",
        "certificatePem": pki.sign_csr(body["csrPem"].as_str().unwrap()),
        "caCertificatePem": pki.ca_pem,
        "signingPublicKey": base64::engine::general_purpose::STANDARD.encode(
            ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng).verifying_key().as_bytes()
        ),
        "grpcUrl": "https://127.0.0.1:7443",
    })
    .to_string()
}

fn options(server: &str, state_dir: &std::path::Path) -> EnrollOptions {
    EnrollOptions {
        server: server.into(),
        token: "tok-123".into(),
        ca_file: None,
        state_dir: state_dir.into(),
        force: false,
    }
}

#[tokio::test]
async fn enrollment_stores_a_private_identity_for_the_agents_own_key() {
    let pki = Pki::new();
    let ca_pem = pki.ca_pem.clone();
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let signing_b64 =
        base64::engine::general_purpose::STANDARD.encode(signing.verifying_key().as_bytes());
    let (url, server) = serve_once(move |body| {
        assert_eq!(body["token"], "tok-123");
        let csr = body["csrPem"].as_str().unwrap();
        let answer = serde_json::json!({
            "hostId": "host-0001",
            "tenantId": "t1",
            "certificatePem": pki.sign_csr(csr),
            "caCertificatePem": ca_pem,
            "signingPublicKey": signing_b64,
            "grpcUrl": "https://127.0.0.1:7443",
        });
        (200, "application/json", answer.to_string())
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("state");
    let info = within("enrollment", enroll(&options(&url, &state_dir)))
        .await
        .unwrap();
    let head = server.await.unwrap();
    assert!(
        head.starts_with("POST /api/v1/agent/enroll HTTP/1.1"),
        "{head}"
    );
    assert_eq!(info.host_id, "host-0001");
    assert_eq!(info.grpc_url, "https://127.0.0.1:7443");

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state_dir), 0o700);
    for f in [
        "agent.key",
        "agent.crt",
        "ca.crt",
        "signing.pub",
        "enrollment.json",
    ] {
        assert_eq!(mode(&state_dir.join(f)), 0o600, "{f}");
    }
    let identity = StateDir::new(&state_dir).load_identity().unwrap();
    assert_eq!(identity.signing_key, signing.verifying_key());
    assert_eq!(identity.info.tenant_id, "t1");
    let key = keyward_agent::tls::load_key(&identity.key_pem).unwrap();
    assert!(keyward_agent::tls::certifies(&identity.cert_pem, &key).unwrap());

    // A second enrollment needs --force, and is refused before any request is made.
    let err = enroll(&options("http://127.0.0.1:9", &state_dir))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnrollError::AlreadyEnrolled { ref host_id, .. } if host_id == "host-0001"),
        "{err}"
    );
    assert!(err.to_string().contains("--force"));
}

#[tokio::test]
async fn a_used_token_is_a_clear_refusal_and_nothing_is_stored() {
    let (url, _server) = serve_once(|_| {
        (
            401,
            "application/problem+json",
            r#"{"type":"about:blank","title":"Unauthorized","status":401,"code":"enrollment_token_invalid","detail":"the enrollment token is unknown, expired or already used"}"#.into(),
        )
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("state");
    let err = within("enrollment", enroll(&options(&url, &state_dir)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "enrollment refused: the enrollment token is unknown, expired or already used (enrollment_token_invalid)"
    );
    assert!(!StateDir::new(&state_dir).is_enrolled());
}

#[tokio::test]
async fn plain_http_to_another_host_is_refused_before_anything_is_sent() {
    let root = tempfile::tempdir().unwrap();
    let err = enroll(&options("http://192.0.2.10:8080", root.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::PlainHttp { .. }), "{err}");
    assert!(err.to_string().contains("use https://"));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn an_answer_with_a_certificate_for_another_key_is_not_stored() {
    let pki = Pki::new();
    let ca_pem = pki.ca_pem.clone();
    let (url, _server) = serve_once(move |_| {
        let stranger = rcgen::KeyPair::generate().unwrap();
        let answer = serde_json::json!({
            "hostId": "host-0001",
            "tenantId": "t1",
            "certificatePem": pki.issue(&stranger, Lifetime::Fresh),
            "caCertificatePem": ca_pem,
            "signingPublicKey": base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
            "grpcUrl": "https://127.0.0.1:7443",
        });
        (200, "application/json", answer.to_string())
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let err = within("enrollment", enroll(&options(&url, root.path())))
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::BadAnswer(_)), "{err}");
    assert!(!StateDir::new(root.path()).is_enrolled());
}

#[tokio::test]
async fn enrollment_over_https_trusts_the_ca_file() {
    let pki = std::sync::Arc::new(Pki::new());
    let root = tempfile::tempdir().unwrap();
    let ca_file = root.path().join("rest-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    // Without --ca-file the private CA is not trusted, and nothing is stored.
    let (url, _server) = serve_once_with(
        Some(https_acceptor(&pki)),
        Box::new(|_| unreachable!("no request may arrive over an untrusted connection")),
    )
    .await;
    let err = within("enrollment", enroll(&options(&url, &root.path().join("a"))))
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::Request(_)), "{err}");
    assert!(!StateDir::new(root.path().join("a")).is_enrolled());

    let issuing = std::sync::Arc::clone(&pki);
    let (url, server) = serve_once_with(
        Some(https_acceptor(&pki)),
        Box::new(move |body| (200, "application/json", issue_answer(&issuing, &body))),
    )
    .await;
    let mut opts = options(&url, &root.path().join("b"));
    opts.ca_file = Some(ca_file);
    let info = within("enrollment", enroll(&opts)).await.unwrap();
    assert_eq!(info.host_id, "host-0001");
    server.await.unwrap();
    assert!(StateDir::new(root.path().join("b")).is_enrolled());
}
