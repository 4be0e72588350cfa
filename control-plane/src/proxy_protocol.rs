//! HAProxy's PROXY protocol (v1 and v2) on connections from the load balancers an operator
//! trusts, so that behind a TCP load balancer the audit log, the enrollment throttle and the logs
//! see the real client address.
//!
//! As HAProxy's `accept-proxy` and nginx's `proxy_protocol` with `set_real_ip_from`: a
//! connection from a configured address must start with a header (a load balancer that sends
//! one always sends it, so a client behind it cannot slip in its own); a connection from any
//! other address is read as it is, and its own address is the client's. The header is read
//! exactly (its length is known from its first bytes), with a deadline, and parsed by the `ppp`
//! crate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header: `PROXY TCP6 ` and two full IPv6 addresses and ports, CRLF included.
const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The longest v2 header accepted: addresses and TLVs (HAProxy sends a few dozen bytes).
const V2_MAX: usize = 536;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Which peers must send a PROXY header.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    from: Vec<IpNet>,
    timeout: Duration,
}

/// Why a connection from a trusted proxy was closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a PROXY protocol header")]
    Invalid,
}

impl TrustedProxies {
    /// `from`: the load balancers' addresses or networks; `timeout`: how long a header may take.
    pub fn new(from: Vec<IpNet>, timeout: Duration) -> Self {
        Self { from, timeout }
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        self.from.iter().any(|net| net.contains(&peer))
    }

    /// The client's address: from the PROXY header when `peer` is a trusted proxy (which must
    /// send one), else `peer` itself. A header that names no address (`LOCAL`, `UNKNOWN`: the
    /// proxy's own health checks) leaves `peer`.
    pub async fn client<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyHeaderError> {
        if !self.trusts(peer.ip()) {
            return Ok(peer);
        }
        let header = tokio::time::timeout(self.timeout, read_header(stream))
            .await
            .map_err(|_| ProxyHeaderError::Timeout(self.timeout))??;
        let client = source(&header).ok_or(ProxyHeaderError::Invalid)?;
        Ok(client.unwrap_or(peer))
    }
}

/// Reads exactly one header's bytes: nothing of what follows it.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, ProxyHeaderError> {
    let mut header = vec![0u8; V2_FIXED];
    // Both versions' headers are at least 16 bytes long (v1's shortest is `PROXY UNKNOWN\r\n`,
    // 15: read it byte by byte from its first one).
    stream.read_exact(&mut header[..1]).await?;
    if header[0] == V2_SIGNATURE[0] {
        stream.read_exact(&mut header[1..]).await?;
        if &header[..12] != V2_SIGNATURE {
            return Err(ProxyHeaderError::Invalid);
        }
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if V2_FIXED + length > V2_MAX {
            return Err(ProxyHeaderError::Invalid);
        }
        header.resize(V2_FIXED + length, 0);
        stream.read_exact(&mut header[V2_FIXED..]).await?;
        return Ok(header);
    }
    header.truncate(1);
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_MAX {
            return Err(ProxyHeaderError::Invalid);
        }
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        header.push(byte[0]);
    }
    Ok(header)
}

/// The source address a complete header names: `Some(None)` when it names none, `None` when it
/// is not a valid header.
fn source(header: &[u8]) -> Option<Option<SocketAddr>> {
    use ppp::v1::Addresses as V1;
    use ppp::v2::Addresses as V2;
    match ppp::HeaderResult::parse(header) {
        ppp::HeaderResult::V1(Ok(h)) => Some(match h.addresses {
            V1::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            V1::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            V1::Unknown => None,
        }),
        ppp::HeaderResult::V2(Ok(h)) => Some(match (h.command, h.addresses) {
            (ppp::v2::Command::Proxy, V2::IPv4(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (ppp::v2::Command::Proxy, V2::IPv6(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            _ => None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(
            vec![
                "127.0.0.2/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            Duration::from_secs(1),
        )
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn v2(source: [u8; 4], port: u16) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([0x21, 0x11, 0, 12]);
        header.extend(source);
        header.extend([127, 0, 0, 1]);
        header.extend(port.to_be_bytes());
        header.extend(8080u16.to_be_bytes());
        header
    }

    #[tokio::test]
    async fn a_trusted_proxys_header_names_the_client_and_nothing_after_it_is_read() {
        for (header, client) in [
            (
                b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n".to_vec(),
                "192.0.2.7:51000",
            ),
            (
                b"PROXY TCP6 2001:db8::7 ::1 51000 8080\r\n".to_vec(),
                "[2001:db8::7]:51000",
            ),
            (v2([198, 51, 100, 9], 6000), "198.51.100.9:6000"),
            // The proxy's own health check: its own address.
            (b"PROXY UNKNOWN\r\n".to_vec(), "10.1.2.3:40000"),
        ] {
            let mut input = header.clone();
            input.extend(b"GET / HTTP/1.1\r\n");
            let mut stream = &input[..];
            let got = proxies()
                .client(&mut stream, peer("10.1.2.3"))
                .await
                .unwrap();
            assert_eq!(got, client.parse().unwrap());
            assert_eq!(stream, b"GET / HTTP/1.1\r\n", "{header:?}");
        }
    }

    #[tokio::test]
    async fn others_are_read_as_they_are_and_a_trusted_proxy_must_send_a_header() {
        // Untrusted: a header from a client is not believed (it stays in the stream, where
        // HTTP refuses it).
        let input = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n";
        let mut stream = &input[..];
        let got = proxies()
            .client(&mut stream, peer("127.0.0.1"))
            .await
            .unwrap();
        assert_eq!(got, peer("127.0.0.1"));
        assert_eq!(stream.len(), input.len());
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 999.0.2.7 127.0.0.1 51000 8080\r\n",
            &[b'P'; 200],
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            b"PROXY TCP4",
        ] {
            let mut stream = bad;
            assert!(
                proxies()
                    .client(&mut stream, peer("127.0.0.2"))
                    .await
                    .is_err(),
                "{bad:?}"
            );
        }
        // IPv4-mapped IPv6 peers are matched as IPv4.
        let mut stream = &b"PROXY UNKNOWN\r\n"[..];
        let mapped = peer("::ffff:127.0.0.2");
        assert_eq!(proxies().client(&mut stream, mapped).await.unwrap(), mapped);
    }

    #[tokio::test]
    async fn a_silent_trusted_proxy_times_out() {
        let (mut client, _server) = tokio::io::duplex(64);
        let proxies = TrustedProxies::new(
            vec!["127.0.0.2/32".parse().unwrap()],
            Duration::from_millis(50),
        );
        assert!(matches!(
            proxies.client(&mut client, peer("127.0.0.2")).await,
            Err(ProxyHeaderError::Timeout(_))
        ));
    }
}
