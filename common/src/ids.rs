//! Validated identifiers.
//!
//! A [`TenantId`] becomes part of a Vault path (`vps/{tenant_id}/tenant_ssh`), an SQL value and,
//! on hosts, a file name; a [`UnixUser`] names a home directory. Both are checked once, here,
//! so that no `../`, `/`, NUL, upper case or non-ASCII byte can reach any of those places.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} must start with {first}")]
    BadFirst {
        what: &'static str,
        first: &'static str,
    },
    #[error("{what} may contain only {allowed}")]
    BadChar {
        what: &'static str,
        allowed: &'static str,
    },
}

/// A tenant identifier: `^[a-z0-9][a-z0-9-]{0,62}$`.
///
/// The grammar is that of a DNS label, so a tenant id is also safe as a Vault path segment, a file
/// name and a URL path segment without any escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub const MAX_LEN: usize = 63;
    /// The grammar as a regular expression, for the API's schema (host ids share it).
    pub const PATTERN: &'static str = "^[a-z0-9][a-z0-9-]{0,62}$";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "tenant id";
        const ALLOWED: &str = "lower-case ASCII letters, digits and '-'";
        check_len(WHAT, s, Self::MAX_LEN)?;
        let mut chars = s.chars();
        if !chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(IdError::BadFirst {
                what: WHAT,
                first: "a lower-case ASCII letter or a digit",
            });
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(IdError::BadChar {
                what: WHAT,
                allowed: ALLOWED,
            });
        }
        Ok(Self(s.to_owned()))
    }
}

/// A host (VPS) identifier: the same grammar as [`TenantId`]. It names the host in its client
/// certificate (`urn:keyward:host:{id}`) and in file names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HostId(String);

impl HostId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        // One grammar for both: a host id is as safe in a path as a tenant id.
        s.parse::<TenantId>()
            .map(|t| Self(t.0))
            .map_err(|e| match e {
                IdError::Empty { .. } => IdError::Empty { what: "host id" },
                IdError::TooLong { len, max, .. } => IdError::TooLong {
                    what: "host id",
                    len,
                    max,
                },
                IdError::BadFirst { first, .. } => IdError::BadFirst {
                    what: "host id",
                    first,
                },
                IdError::BadChar { allowed, .. } => IdError::BadChar {
                    what: "host id",
                    allowed,
                },
            })
    }
}

/// A Unix user name that keyward manages: `^[a-z_][a-z0-9_-]{0,31}$`.
///
/// This is Debian's `adduser` default (`NAME_REGEX`) without the trailing `$` of machine
/// accounts, and within the 32 characters `useradd` accepts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UnixUser(String);

impl UnixUser {
    pub const MAX_LEN: usize = 32;
    /// The grammar as a regular expression, for the API's schema.
    pub const PATTERN: &'static str = "^[a-z_][a-z0-9_-]{0,31}$";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UnixUser {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "unix user name";
        check_len(WHAT, s, Self::MAX_LEN)?;
        let mut chars = s.chars();
        if !chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        {
            return Err(IdError::BadFirst {
                what: WHAT,
                first: "a lower-case ASCII letter or '_'",
            });
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
            return Err(IdError::BadChar {
                what: WHAT,
                allowed: "lower-case ASCII letters, digits, '_' and '-'",
            });
        }
        Ok(Self(s.to_owned()))
    }
}

/// An SSH certificate principal that keyward issues and writes into sshd's
/// `AuthorizedPrincipalsFile`: `^[a-z0-9][a-z0-9._:@-]{0,127}$`.
///
/// A line of that file may start with key options (`command="..."`), and Vault takes a
/// certificate's principals comma-separated, so a principal holds no space, quote, comma or
/// `#`: one principal is one whole line and one list element, never more.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Principal(String);

impl Principal {
    pub const MAX_LEN: usize = 128;
    /// The grammar as a regular expression, for the API's schema.
    pub const PATTERN: &'static str = "^[a-z0-9][a-z0-9._:@-]{0,127}$";

    /// The principal a certificate carries to log in as `kind`'s managed user on `tenant`'s
    /// hosts: `keyward:{tenant}:{kind}` (at most 77 characters, always of the grammar: a tenant id
    /// is a DNS label and a kind one of two words).
    pub fn of_key_set(tenant: &TenantId, kind: crate::KeyKind) -> Self {
        Self(format!("keyward:{tenant}:{kind}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Principal {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "certificate principal";
        check_len(WHAT, s, Self::MAX_LEN)?;
        let mut chars = s.chars();
        if !chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(IdError::BadFirst {
                what: WHAT,
                first: "a lower-case ASCII letter or a digit",
            });
        }
        if !chars.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | ':' | '@' | '-')
        }) {
            return Err(IdError::BadChar {
                what: WHAT,
                allowed: "lower-case ASCII letters, digits, '.', '_', ':', '@' and '-'",
            });
        }
        Ok(Self(s.to_owned()))
    }
}

fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    // Counted in characters so that the message is right for non-ASCII input too.
    let len = s.chars().count();
    if len > max {
        return Err(IdError::TooLong { what, len, max });
    }
    Ok(())
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype_impls!(TenantId);
string_newtype_impls!(UnixUser);
string_newtype_impls!(HostId);
string_newtype_impls!(Principal);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_that_are_accepted() {
        for ok in ["t1", "0", "acme-corp", "a-b-c-1", &"a".repeat(63)] {
            assert_eq!(ok.parse::<TenantId>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn tenant_ids_that_could_escape_a_path_are_refused() {
        let long = "a".repeat(64);
        let two_hundred = "b".repeat(200);
        for bad in [
            "",
            "../x",
            "t1/admin_ssh",
            "T1",
            "-t1",
            "t_1",
            "t1 ",
            "t1\0",
            "tenant.1",
            "é",
            "t1%2f",
            long.as_str(),
            two_hundred.as_str(),
        ] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn tenant_id_errors_say_what_is_wrong() {
        let err = "a".repeat(200).parse::<TenantId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "tenant id is 200 characters long; at most 63 are allowed"
        );
        assert_eq!(
            "".parse::<TenantId>().unwrap_err().to_string(),
            "tenant id must not be empty"
        );
    }

    #[test]
    fn unix_users() {
        for ok in ["ubuntu", "_svc", "tenant-1", "a_b", &"u".repeat(32)] {
            assert!(ok.parse::<UnixUser>().is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            "1user",
            "../root",
            "a/b",
            "Admin",
            "user$",
            &"u".repeat(33),
        ] {
            assert!(bad.parse::<UnixUser>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_ids_share_the_tenant_grammar() {
        assert!("vps-1".parse::<HostId>().is_ok());
        let err = "../h".parse::<HostId>().unwrap_err();
        assert!(err.to_string().starts_with("host id"), "{err}");
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<TenantId>("\"t1\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"../t1\"").is_err());
    }

    #[test]
    fn principals_are_one_word_that_cannot_carry_options() {
        for ok in ["kw-acme-admin", "0", "a.b_c:d@e-f", &"p".repeat(128)] {
            assert_eq!(ok.parse::<Principal>().unwrap().as_str(), ok);
        }
        for kind in [crate::KeyKind::Admin, crate::KeyKind::Tenant] {
            let longest: TenantId = "a".repeat(63).parse().unwrap();
            let made = Principal::of_key_set(&longest, kind);
            assert_eq!(made.as_str().parse::<Principal>().unwrap(), made);
        }
        for bad in [
            "",
            "-x",
            "Admin",
            "a b",
            "a,b",
            "command=\"sh\" a",
            "a#b",
            "a\nb",
            "é",
            &"p".repeat(129),
        ] {
            assert!(bad.parse::<Principal>().is_err(), "{bad:?} accepted");
        }
    }
}
