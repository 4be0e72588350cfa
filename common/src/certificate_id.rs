//! The key id keyward gives each SSH user certificate it has signed: `keyward:{tenant}:{kind}:{n}`,
//! the tenant's VPS, the managed user's kind and keyward's own number for it (from 1, per tenant).
//!
//! sshd logs the key id of every certificate login and a KRL can revoke by it, so it names the
//! certificate wherever it shows up: in the API's paths, the audit log, the login events, and the
//! hosts' revocation list. The CA's serial number is Vault's (random); keyward's number is what
//! makes the id unique, and it is allocated before the certificate is signed.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::{KeyKind, TenantId};

/// One certificate's key id, parsed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertificateId {
    pub tenant: TenantId,
    pub kind: KeyKind,
    /// From 1 to `i64::MAX` (what SQL stores).
    pub number: u64,
}

/// Why a text is not a keyward certificate id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a keyward certificate id: expected keyward:TENANT:admin|tenant:NUMBER")]
pub struct NotACertificateId;

impl CertificateId {
    /// The longest id: `keyward:` + 63 + `:tenant:` + 19 digits.
    pub const MAX_LEN: usize = 8 + 63 + 8 + 19;
    /// The grammar as a regular expression, for the API's schema (the number also at most
    /// `i64::MAX`).
    pub const PATTERN: &'static str =
        "^keyward:[a-z0-9][a-z0-9-]{0,62}:(admin|tenant):[1-9][0-9]{0,18}$";
}

impl fmt::Display for CertificateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "keyward:{}:{}:{}", self.tenant, self.kind, self.number)
    }
}

impl FromStr for CertificateId {
    type Err = NotACertificateId;

    fn from_str(s: &str) -> Result<Self, NotACertificateId> {
        if s.len() > Self::MAX_LEN {
            return Err(NotACertificateId);
        }
        let mut parts = s.split(':');
        let (Some("keyward"), Some(tenant), Some(kind), Some(number), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(NotACertificateId);
        };
        // One spelling per number: no sign, no leading zero, no 0.
        let canonical = !number.is_empty()
            && !number.starts_with('0')
            && number.bytes().all(|b| b.is_ascii_digit());
        if !canonical {
            return Err(NotACertificateId);
        }
        Ok(Self {
            tenant: tenant.parse().map_err(|_| NotACertificateId)?,
            kind: kind.parse().map_err(|_| NotACertificateId)?,
            number: number
                .parse::<i64>()
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or(NotACertificateId)?,
        })
    }
}

impl Serialize for CertificateId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_only_one_spelling_is_read() {
        let id: CertificateId = "keyward:acme:tenant:42".parse().unwrap();
        assert_eq!(id.tenant.as_str(), "acme");
        assert_eq!(id.kind, KeyKind::Tenant);
        assert_eq!(id.number, 42);
        assert_eq!(id.to_string(), "keyward:acme:tenant:42");
        let longest = format!("keyward:{}:tenant:{}", "a".repeat(63), i64::MAX);
        assert_eq!(longest.len(), CertificateId::MAX_LEN);
        assert_eq!(
            longest.parse::<CertificateId>().unwrap().to_string(),
            longest
        );
        for bad in [
            "",
            "keyward:acme:tenant",
            "keyward:acme:tenant:0",
            "keyward:acme:tenant:07",
            "keyward:acme:tenant:+7",
            "keyward:acme:tenant:7:8",
            "keyward:acme:root:7",
            "keyward:Acme:tenant:7",
            "other:acme:tenant:7",
            "keyward:acme:tenant:18446744073709551615",
            "keyward:acme:tenant:9223372036854775808",
            "keyward:acme:tenant: 7",
        ] {
            assert!(bad.parse::<CertificateId>().is_err(), "{bad:?} accepted");
        }
    }
}
