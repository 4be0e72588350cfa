//! The syslog sink: RFC 5424 messages over TLS (RFC 5425), TCP (octet counting, RFC 6587) or
//! UDP (RFC 5426).
//!
//! Syslog over TCP has no acknowledgement: bytes the kernel accepted can still be lost when the
//! receiver goes away. So each batch has a connection of its own, and is delivered only once the
//! receiver has read it to the end: keyward closes its side after the last message (TLS
//! `close_notify`, then TCP FIN) and waits for the receiver to close its own, which it does after
//! reading everything before the end. A reset or an error instead means the batch is sent again
//! (receivers de-duplicate on `seq`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::SinkError;
use super::record::Record;
use crate::config::SyslogTransport;

/// The SD-ID of keyward's structured data: a name at the example private enterprise number
/// (RFC 5612), as RFC 5424 section 7.2.2 allows for names not registered with IANA.
pub const SD_ID: &str = "keyward@32473";
/// The largest UDP datagram sent; a larger event is sent without its JSON (its header and
/// structured data still name it).
const MAX_DATAGRAM: usize = 65_000;

/// Where and how.
#[derive(Debug, Clone)]
pub struct SyslogSink {
    pub transport: SyslogTransport,
    pub address: String,
    pub facility: u8,
    pub hostname: String,
    /// For `tls`.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// `s` as PRINTUSASCII (33–126), at most `max` characters; `-` (NILVALUE) when empty.
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| ('!'..='~').contains(c))
        .take(max)
        .collect();
    if v.is_empty() { "-".to_owned() } else { v }
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3).
fn param_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME keyward - MSGID [SD] BOM JSON`.
pub fn message(record: &Record, facility: u8, hostname: &str, with_body: bool) -> Vec<u8> {
    let pri = u16::from(facility) * 8 + u16::from(record.severity);
    let mut sd = format!("[{SD_ID}");
    for (name, value) in &record.params {
        sd.push_str(&format!(" {name}=\"{}\"", param_value(value)));
    }
    sd.push(']');
    let mut out = format!(
        "<{pri}>1 {} {} keyward - {} {sd}",
        header_field(&record.at, 32),
        header_field(hostname, 255),
        header_field(&record.msgid, 32),
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(b" \xEF\xBB\xBF");
        out.extend_from_slice(record.json.as_bytes());
    }
    out
}

impl SyslogSink {
    pub async fn deliver(&self, batch: &[Record], timeout: Duration) -> Result<(), SinkError> {
        match self.transport {
            SyslogTransport::Udp => self.send_udp(batch).await,
            SyslogTransport::Tcp => {
                let tcp = self.connect().await?;
                self.send_stream(tcp, batch, timeout).await
            }
            SyslogTransport::Tls => {
                let tcp = self.connect().await?;
                let Some((config, name)) = &self.tls else {
                    return Err(SinkError::Config("TLS is not set up"));
                };
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| SinkError::io("the TLS handshake failed", e))?;
                self.send_stream(tls, batch, timeout).await
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream, SinkError> {
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(|e| SinkError::io("cannot connect", e))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn send_stream<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        batch: &[Record],
        timeout: Duration,
    ) -> Result<(), SinkError> {
        let mut frames = Vec::new();
        for record in batch {
            let msg = message(record, self.facility, &self.hostname, true);
            frames.extend_from_slice(format!("{} ", msg.len()).as_bytes());
            frames.extend_from_slice(&msg);
        }
        stream
            .write_all(&frames)
            .await
            .map_err(|e| SinkError::io("sending failed", e))?;
        stream
            .shutdown()
            .await
            .map_err(|e| SinkError::io("closing the connection failed", e))?;
        // The receiver closes once it has read up to our end. It sends nothing else; a receiver
        // that keeps the connection open past the timeout has read what came before the end.
        let mut sink = [0u8; 512];
        let closed = tokio::time::timeout(timeout, async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match closed {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
            Ok(Err(e)) => Err(SinkError::io("the receiver did not read to the end", e)),
        }
    }

    async fn send_udp(&self, batch: &[Record]) -> Result<(), SinkError> {
        let socket = UdpSocket::bind(if self.address.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })
        .await
        .map_err(|e| SinkError::io("cannot open a UDP socket", e))?;
        socket
            .connect(&self.address)
            .await
            .map_err(|e| SinkError::io("cannot connect", e))?;
        for record in batch {
            let mut msg = message(record, self.facility, &self.hostname, true);
            if msg.len() > MAX_DATAGRAM {
                msg = message(record, self.facility, &self.hostname, false);
            }
            socket
                .send(&msg)
                .await
                .map_err(|e| SinkError::io("sending failed", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_rfc_5424_with_escaped_structured_data() {
        let record = Record {
            seq: 3,
            hash: "a\"b]c\\".into(),
            at: "2026-12-07T05:00:00Z".into(),
            msgid: "key.rotate".into(),
            severity: 6,
            params: vec![("seq", "3".into()), ("hash", "a\"b]c\\".into())],
            json: "{\"x\":1}".into(),
        };
        let m = String::from_utf8(message(&record, 10, "host one", true)).unwrap();
        assert_eq!(
            m,
            "<86>1 2026-12-07T05:00:00Z hostone keyward - key.rotate \
             [keyward@32473 seq=\"3\" hash=\"a\\\"b\\]c\\\\\"] \u{feff}{\"x\":1}"
        );
        let bare = String::from_utf8(message(&record, 4, "", false)).unwrap();
        assert!(bare.starts_with("<38>1 2026-12-07T05:00:00Z - keyward - key.rotate [k"));
        assert!(bare.ends_with(']'));
    }
}
