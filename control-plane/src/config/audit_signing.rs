//! `[audit_signing]`: the audit chain's head, signed with a key of Vault's transit engine and
//! checkpointed in Vault, so that a log cut short or rewritten in SQL is told (`audit_head`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Signing the audit chain's head. Off until `key` names the transit key (see
/// packaging/vault/README.md for how an operator creates it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSigningConfig {
    /// The Ed25519 key in the transit engine that signs the head (`keyward-audit`); unset: the
    /// head is not signed.
    pub key: Option<String>,
    /// The transit engine's mount.
    pub transit_mount: String,
    /// How often the head is signed and checkpointed. Events cut off the end within the last
    /// interval are the ones a checkpoint cannot vouch for yet.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for AuditSigningConfig {
    fn default() -> Self {
        Self {
            key: None,
            transit_mount: "transit".into(),
            interval: Duration::from_secs(600),
        }
    }
}

/// A name Vault takes as one path segment: letters, digits, `_`, `-` and `.` (not `.` or `..`).
fn is_segment(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl AuditSigningConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(key) = &self.key
            && !is_segment(key)
        {
            return Err(format!(
                "audit_signing.key {key:?} must be 1 to 128 of letters, digits, _, - and ."
            ));
        }
        if !is_segment(&self.transit_mount) {
            return Err("audit_signing.transit_mount must be a single path segment".into());
        }
        if self.interval < Duration::from_secs(1) || self.interval > Duration::from_secs(86_400) {
            return Err("audit_signing.interval must be 1s to 24h".into());
        }
        Ok(())
    }

    /// How old the newest checkpoint may be before verification calls the head stale: two
    /// intervals and a minute (a missed round, clocks a little apart).
    pub fn stale_after(&self) -> Duration {
        self.interval * 2 + Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_and_intervals_are_checked() {
        let ok = AuditSigningConfig {
            key: Some("keyward-audit".into()),
            ..AuditSigningConfig::default()
        };
        assert!(ok.validate().is_ok());
        for bad in ["", "a/b", "..", "a b", &"k".repeat(129)] {
            let config = AuditSigningConfig {
                key: Some(bad.into()),
                ..ok.clone()
            };
            assert!(config.validate().is_err(), "{bad:?}");
        }
        let zero = AuditSigningConfig {
            interval: Duration::ZERO,
            ..ok.clone()
        };
        assert!(zero.validate().unwrap_err().contains("interval"));
        assert_eq!(
            ok.stale_after(),
            Duration::from_secs(1260),
            "two ten-minute rounds and a minute"
        );
    }
}
