//! Where an SSH server is reached: a VPS's address as the platform registered it
//! ([`SshHost`]), and a bastion's forwarding destination, `host:port` ([`PermitOpen`]).
//!
//! A bastion's agent writes each destination into sshd's `permitopen="..."` option: the grammar
//! here admits no quote, comma, space or other byte that could end the option or start another.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not an IP address or a DNS name")]
    BadHost(String),
    #[error(
        "{0:?} is not host:port (an IPv6 address as [address]:port) with a port from 1 to 65535"
    )]
    BadDestination(String),
}

/// An SSH server's host: an IP address, or a DNS name (letters, digits and `-` in labels of at
/// most 63, at most 253 in all), kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SshHost {
    Ip(IpAddr),
    Name(String),
}

impl SshHost {
    /// The host as `host:port` takes it: an IPv6 address in brackets.
    fn bracketed(&self) -> String {
        match self {
            Self::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            other => other.to_string(),
        }
    }
}

impl FromStr for SshHost {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let valid_name = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if valid_name {
            Ok(Self::Name(s.to_ascii_lowercase()))
        } else {
            Err(AddressError::BadHost(s.to_owned()))
        }
    }
}

impl fmt::Display for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A destination a bastion forwards to: `host:port`, `[address]:port` for IPv6 (what sshd's
/// `permitopen` takes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PermitOpen {
    pub host: SshHost,
    pub port: u16,
}

impl FromStr for PermitOpen {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        let bad = || AddressError::BadDestination(s.to_owned());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 && !port.starts_with(['0', '+']) => p,
            _ => return Err(bad()),
        };
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => SshHost::Ip(IpAddr::V6(v6.parse::<Ipv6Addr>().map_err(|_| bad())?)),
            // An IPv6 address must be in brackets: "::1:22" is ambiguous.
            None if host.contains(':') => return Err(bad()),
            None => host.parse().map_err(|_| bad())?,
        };
        Ok(Self { host, port })
    }
}

impl fmt::Display for PermitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host.bracketed(), self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_read_back_as_written() {
        for (raw, shown) in [
            ("10.0.3.7:22", "10.0.3.7:22"),
            ("[2001:db8::1]:2222", "[2001:db8::1]:2222"),
            ("VPS-1.Example.net:22", "vps-1.example.net:22"),
            ("localhost:65535", "localhost:65535"),
        ] {
            let parsed: PermitOpen = raw.parse().unwrap();
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(parsed.to_string().parse::<PermitOpen>().unwrap(), parsed);
        }
    }

    #[test]
    fn nothing_that_could_leave_an_sshd_option_is_a_destination() {
        for raw in [
            "",
            ":22",
            "host",
            "host:",
            "host:0",
            "host:022",
            "host:+22",
            "host:65536",
            "2001:db8::1:22",
            "[not-v6]:22",
            "a\"b:22",
            "a,permitopen=\"x:1\":22",
            "a b:22",
            "a\n:22",
            "-bad.example:22",
            "bad-.example:22",
            "a..b:22",
            "*:22",
            "host:*",
        ] {
            assert!(raw.parse::<PermitOpen>().is_err(), "{raw:?} was taken");
        }
        let long = format!("{}.example:22", "a".repeat(64));
        assert!(long.parse::<PermitOpen>().is_err());
    }

    #[test]
    fn hosts_are_addresses_or_names() {
        assert_eq!(
            "192.0.2.1".parse::<SshHost>().unwrap(),
            SshHost::Ip("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            "2001:db8::1".parse::<SshHost>().unwrap().to_string(),
            "2001:db8::1"
        );
        assert_eq!(
            "VPS.example".parse::<SshHost>().unwrap().to_string(),
            "vps.example"
        );
        assert!("vps_1.example".parse::<SshHost>().is_err());
        assert!("x".repeat(254).parse::<SshHost>().is_err());
    }
}
