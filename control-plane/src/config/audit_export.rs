//! `[audit_export]`: where the audit log is sent as it grows (SIEM sinks).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Audit export: every event of the hash-chained audit log, in chain order, to each sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditExportConfig {
    /// The sinks, each with its own cursor: one that is away holds back no other.
    pub sinks: Vec<AuditSinkConfig>,
    /// Events sent to a sink at a time (a syslog connection's burst, a webhook's body).
    pub batch: usize,
    /// How often a sink that is up to date looks for new events.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The longest wait between two attempts at a sink that fails (the wait doubles from 1s up
    /// to this, with full jitter).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long one attempt at a sink may take (connect, TLS, send, the webhook's answer).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a replica keeps a sink to itself: one replica delivers to each sink at a time,
    /// and another takes over when it has not renewed its lease for this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A sink is `failing` (alert) when its oldest undelivered event has waited this long.
    #[serde(with = "humantime_serde")]
    pub alert_after: Duration,
}

impl Default for AuditExportConfig {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            batch: 200,
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            alert_after: Duration::from_secs(300),
        }
    }
}

/// One sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSinkConfig {
    /// The sink's name: its cursor, its metrics' `sink` label (`[a-z0-9_-]`, 1–32).
    pub name: String,
    /// `keyward` (the event as an audit bundle's event line) or `ocsf`.
    #[serde(default)]
    pub format: AuditFormat,
    /// Where the events go.
    pub to: SinkTarget,
}

/// The events' shape on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditFormat {
    #[default]
    Keyward,
    Ocsf,
}

impl AuditFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keyward => "keyward",
            Self::Ocsf => "ocsf",
        }
    }
}

/// A sink's destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkTarget {
    /// RFC 5424 syslog: over TLS (RFC 5425) or TCP (octet-counted frames, RFC 6587), or one UDP
    /// datagram per event (RFC 5426; a local relay only: UDP may lose events unseen).
    Syslog {
        /// `tls`, `tcp` or `udp`.
        transport: SyslogTransport,
        /// `host:port`.
        address: String,
        /// The name the receiver's certificate must carry; the host of `address` by default.
        #[serde(default)]
        server_name: Option<String>,
        /// The CA that signs the receiver's certificate (PEM); the Mozilla roots by default.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// A client certificate and key (PEM) for receivers that require one.
        #[serde(default)]
        client_cert: Option<PathBuf>,
        #[serde(default)]
        client_key: Option<PathBuf>,
        /// The syslog facility: `auth`, `authpriv` (default), `daemon`, `local0`–`local7`.
        #[serde(default = "default_facility")]
        facility: String,
    },
    /// An HTTPS endpoint: each batch POSTed as JSON lines, signed with HMAC-SHA256.
    Webhook {
        url: String,
        /// The HMAC key, in a file readable only by keyward (32 bytes or more).
        hmac_key_file: PathBuf,
        /// The CA that signs the endpoint's certificate (PEM); the Mozilla roots by default.
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// JSON lines appended to a file, for a log shipper (reopened for every batch, so that a
    /// rotated file is followed).
    File { path: PathBuf },
}

fn default_facility() -> String {
    "authpriv".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogTransport {
    Tls,
    Tcp,
    Udp,
}

/// Facilities by name (RFC 5424 section 6.2.1).
pub fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "kern" => 0,
        "user" => 1,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "authpriv" => 10,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}

impl AuditExportConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1..=5000).contains(&self.batch) {
            return Err("audit_export.batch must be 1 to 5000".into());
        }
        if self.lease < Duration::from_secs(5) {
            return Err("audit_export.lease must be at least 5s".into());
        }
        if self.timeout.is_zero() || self.timeout >= self.lease {
            return Err("audit_export.timeout must be more than 0 and less than the lease".into());
        }
        if self.poll_interval.is_zero() || self.max_backoff < Duration::from_secs(1) {
            return Err("audit_export.poll_interval must be more than 0, max_backoff ≥ 1s".into());
        }
        let mut names = std::collections::HashSet::new();
        for sink in &self.sinks {
            let name = &sink.name;
            let valid = (1..=32).contains(&name.len())
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !valid {
                return Err(format!(
                    "audit_export.sinks: name {name:?} must be 1 to 32 of a-z, 0-9, _ and -"
                ));
            }
            if !names.insert(name) {
                return Err(format!("audit_export.sinks: name {name:?} is used twice"));
            }
            sink.to
                .validate()
                .map_err(|e| format!("audit_export.sinks {name:?}: {e}"))?;
        }
        Ok(())
    }
}

impl SinkTarget {
    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Syslog {
                address,
                facility,
                client_cert,
                client_key,
                transport,
                ..
            } => {
                if facility_code(facility).is_none() {
                    return Err(format!("facility {facility:?} is not a syslog facility"));
                }
                if address
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(format!("address {address:?} is not host:port"));
                }
                if client_cert.is_some() != client_key.is_some() {
                    return Err("client_cert and client_key must be set together".into());
                }
                if client_cert.is_some() && *transport != SyslogTransport::Tls {
                    return Err("a client certificate needs transport = \"tls\"".into());
                }
                Ok(())
            }
            Self::Webhook { url, .. } => match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "https" && u.host().is_some() => Ok(()),
                // Plain HTTP only to this machine (a local relay).
                Ok(u) if u.scheme() == "http" && is_loopback_host(u.host_str()) => Ok(()),
                _ => Err(format!(
                    "url {url:?} must be https:// (http:// only to loopback)"
                )),
            },
            Self::File { path } => {
                if path.is_absolute() {
                    Ok(())
                } else {
                    Err("path must be absolute".into())
                }
            }
        }
    }
}

fn is_loopback_host(host: Option<&str>) -> bool {
    match host {
        Some("localhost") => true,
        Some(h) => h
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<AuditExportConfig, String> {
        use figment::providers::{Format, Toml};
        let c: AuditExportConfig = figment::Figment::from(Toml::string(toml_text))
            .extract()
            .map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn sinks_of_each_type_are_read() {
        let c = parse(
            r#"
            [[sinks]]
            name = "siem"
            format = "ocsf"
            to = { type = "syslog", transport = "tls", address = "siem.example:6514", ca_file = "/etc/ca.pem" }
            [[sinks]]
            name = "hook"
            to = { type = "webhook", url = "https://hooks.example/keyward", hmac_key_file = "/etc/k" }
            [[sinks]]
            name = "ship"
            to = { type = "file", path = "/var/log/keyward/audit.jsonl" }
            "#,
        )
        .unwrap();
        assert_eq!(c.sinks.len(), 3);
        assert_eq!(c.sinks[0].format, AuditFormat::Ocsf);
        assert_eq!(c.sinks[1].format, AuditFormat::Keyward);
        assert!(
            matches!(&c.sinks[0].to, SinkTarget::Syslog { facility, .. } if facility == "authpriv")
        );
    }

    #[test]
    fn bad_sinks_are_refused_with_their_name() {
        for (bad, says) in [
            (r#"name = "Bad Name""#, "must be 1 to 32"),
            (r#"name = "a""#, "used twice"),
        ] {
            let text = format!(
                "[[sinks]]\nname = \"a\"\nto = {{ type = \"file\", path = \"/x\" }}\n\
                 [[sinks]]\n{bad}\nto = {{ type = \"file\", path = \"/y\" }}\n"
            );
            let e = parse(&text).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        for (to, says) in [
            (r#"{ type = "file", path = "rel" }"#, "absolute"),
            (
                r#"{ type = "webhook", url = "http://hooks.example/", hmac_key_file = "/k" }"#,
                "https",
            ),
            (
                r#"{ type = "syslog", transport = "tcp", address = "h" }"#,
                "host:port",
            ),
            (
                r#"{ type = "syslog", transport = "tcp", address = "h:1", facility = "mail2" }"#,
                "facility",
            ),
            (
                r#"{ type = "syslog", transport = "udp", address = "h:1", client_cert = "/c", client_key = "/k" }"#,
                "tls",
            ),
            (
                r#"{ type = "file", path = "/x", extra = 1 }"#,
                "unknown field",
            ),
            (r#"{ type = "kafka" }"#, "unknown variant"),
        ] {
            let e = parse(&format!("[[sinks]]\nname = \"s\"\nto = {to}\n")).unwrap_err();
            assert!(e.contains(says), "{to}: {e}");
        }
        assert!(
            parse(
                r#"[[sinks]]
            name = "local"
            to = { type = "webhook", url = "http://127.0.0.1:9000/", hmac_key_file = "/k" }"#
            )
            .is_ok()
        );
    }
}
