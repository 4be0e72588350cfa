//! Dialling the control plane's gRPC hub over mutual TLS, and the reconnect schedule.
//!
//! tonic's own TLS support is not compiled in (the workspace keeps one rustls setup for all
//! parts), so the TLS handshake happens in a custom connector: a `tower::service_fn` that dials
//! TCP and runs tokio-rustls with the agent's client configuration. The endpoint handed to tonic
//! carries the `http` scheme on purpose: TLS is already done by the connector, and tonic, when
//! built with a TLS feature elsewhere in the workspace, would otherwise insist on doing it again
//! for an `https` URI.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use keyward_common::backoff::Backoff;
use keyward_common::proto::agent_hub_client::AgentHubClient;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// A keepalive ping every 20 s that must be answered within 20 s: a dead control plane (or a
/// dead network path, a NAT that forgot the flow) is noticed within 40 s even when no message
/// flows, and the agent dials again. The agent is the side that must notice: it is the one that
/// would miss a revocation. Each ping costs the control plane a wake-up per connected agent: at
/// 10,000 idle agents, 10 s cost 3.5 % of a core, 15 s 2.1 %; 20 s keeps it under 2 %
/// (BENCHMARKS.md, streams).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long dialling (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control plane could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid gRPC URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Where to dial and which name the server's certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` for TCP (an IPv6 address keeps its brackets).
    pub authority: String,
    /// The host name or IP address checked against the server certificate.
    pub server_name: String,
}

/// Parses an `https://host[:port]` gRPC URL (port 443 when absent).
pub fn parse_target(url: &str) -> Result<Target, ClientError> {
    let bad = |message: &str| ClientError::BadUrl {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the scheme must be https"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let server_name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Target {
        authority: format!("{host}:{port}"),
        server_name,
    })
}

/// Opens a channel to the hub at `url` presenting the identity in `tls`.
pub async fn connect(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<AgentHubClient<Channel>, ClientError> {
    let target = parse_target(url)?;
    let server_name =
        ServerName::try_from(target.server_name.clone()).map_err(|_| ClientError::BadUrl {
            url: url.to_owned(),
            message: "the host is neither a DNS name nor an IP address".into(),
        })?;
    let endpoint = Endpoint::from_shared(format!("http://{}", target.authority))
        .map_err(|e| ClientError::BadUrl {
            url: url.to_owned(),
            message: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(tls);
    let authority = target.authority.clone();
    let dial = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let authority = authority.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = TcpStream::connect(authority.as_str()).await?;
            // Stream messages are small and latency matters more than packet count.
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let channel = endpoint
        .connect_with_connector(dial)
        .await
        .map_err(|source| ClientError::Connect {
            url: url.to_owned(),
            source,
        })?;
    Ok(AgentHubClient::new(channel)
        .max_decoding_message_size(keyward_common::sshd_files::MAX_STATE_MESSAGE_BYTES))
}

/// The first retry waits up to this long.
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// No retry waits longer than this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A stream that lived this long was healthy: the next failure starts the schedule afresh.
pub const HEALTHY_STREAM: Duration = Duration::from_secs(30);

/// The agent's reconnection schedule: up to 200 ms first, doubling up to 30 s, full jitter.
pub fn backoff() -> Backoff {
    Backoff::new(BACKOFF_BASE, BACKOFF_CAP)
}

/// A stream ended after living `lived`: a long-lived one was healthy, so the next failure starts
/// the schedule afresh.
pub fn stream_ended(backoff: &mut Backoff, lived: Duration) {
    if lived > HEALTHY_STREAM {
        backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_backs_off_from_200_ms_to_30_s_and_starts_afresh_after_a_healthy_stream() {
        let mut rng = rand::thread_rng();
        let mut b = backoff();
        assert_eq!(b.ceiling(0), BACKOFF_BASE);
        assert_eq!(b.ceiling(u32::MAX), BACKOFF_CAP);
        for _ in 0..5 {
            b.next_delay(&mut rng);
        }
        stream_ended(&mut b, Duration::from_secs(5));
        assert_eq!(b.attempts(), 5);
        stream_ended(&mut b, Duration::from_secs(31));
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay(&mut rng) <= BACKOFF_BASE);
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("https://127.0.0.1:8443").unwrap(),
            Target {
                authority: "127.0.0.1:8443".into(),
                server_name: "127.0.0.1".into()
            }
        );
        assert_eq!(
            parse_target("https://[::1]:9").unwrap(),
            Target {
                authority: "[::1]:9".into(),
                server_name: "::1".into()
            }
        );
        assert_eq!(
            parse_target("https://cp.example").unwrap().authority,
            "cp.example:443"
        );
        assert!(parse_target("http://cp.example").is_err());
        assert!(parse_target("nonsense").is_err());
    }
}
