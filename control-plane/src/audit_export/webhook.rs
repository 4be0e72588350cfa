//! The webhook sink: each batch POSTed as JSON lines (`application/x-ndjson`), signed.
//!
//! `X-Keyward-Signature: t=UNIX_SECONDS,v1=HEX` where `HEX` is HMAC-SHA256 with the sink's key
//! over `UNIX_SECONDS.BODY` (the time is signed too, so that a receiver can refuse a replayed
//! body); `Idempotency-Key: SINK:FIRST-LAST:HASH` names the batch's events (`HASH`: the first 16
//! hex digits of the last one's hash, so that a batch after a restore, which reuses sequence
//! numbers, is not taken for one already received). Any 2xx answer delivers
//! the batch; anything else (or none within the timeout) sends it again later.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::SinkError;
use super::record::Record;

pub const SIGNATURE_HEADER: &str = "x-keyward-signature";

#[derive(Debug)]
pub struct WebhookSink {
    pub sink: String,
    pub url: reqwest::Url,
    pub key: Zeroizing<Vec<u8>>,
    pub http: reqwest::Client,
}

/// The signature header's value for `body` sent at `unix_seconds`.
pub fn signature(key: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

impl WebhookSink {
    pub async fn deliver(&self, batch: &[Record], unix_seconds: i64) -> Result<(), SinkError> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let mut body = Vec::new();
        for record in batch {
            body.extend_from_slice(record.json.as_bytes());
            body.push(b'\n');
        }
        let answer = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .header(SIGNATURE_HEADER, signature(&self.key, unix_seconds, &body))
            .header(
                "idempotency-key",
                format!(
                    "{}:{}-{}:{}",
                    self.sink,
                    first.seq,
                    last.seq,
                    last.hash.get(..16).unwrap_or(&last.hash)
                ),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                SinkError::Unreachable(if e.is_timeout() {
                    "the endpoint did not answer in time"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "the request failed"
                })
            })?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SinkError::Refused(format!(
                "the endpoint answered {}",
                status.as_u16()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        let a = signature(b"k", 100, b"body");
        assert!(a.starts_with("t=100,v1="));
        assert_eq!(a.len(), "t=100,v1=".len() + 64);
        assert_ne!(a, signature(b"k", 101, b"body"));
        assert_ne!(a, signature(b"k", 100, b"bodY"));
        assert_ne!(a, signature(b"j", 100, b"body"));
    }
}
