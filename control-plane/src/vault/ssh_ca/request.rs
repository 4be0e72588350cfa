//! What keyward asks the SSH CA to sign, checked before anything goes to Vault: a request that
//! exists is one Vault may be sent.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use keyward_common::{IdError, Principal};
use ssh_key::PublicKey;

/// The longest validity keyward asks for, whatever the caller wants: certificates are short-lived
/// by design (minutes to hours). The engine role's `max_ttl` may be shorter still.
pub const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The shortest: less would expire before a login could use it.
pub const MIN_VALIDITY: Duration = Duration::from_secs(60);
/// Principals on one certificate, at most.
pub const MAX_PRINCIPALS: usize = 64;
/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 256;
/// Longest public key accepted, in bytes of its OpenSSH form (RSA-16384 is under 3 KiB).
const MAX_PUBLIC_KEY_LEN: usize = 8 * 1024;

/// Why a certificate request was refused before anything was sent to Vault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateRequestError {
    #[error(
        "engine role name {0:?} is not valid: letters, digits, '_', '-', '.', '@', starting and ending with a letter, digit or '_'"
    )]
    Role(String),
    #[error("not an OpenSSH public key: {0}")]
    PublicKey(String),
    #[error("key id must be 1 to {MAX_KEY_ID_LEN} characters of A-Z a-z 0-9 . _ : @ / + = -")]
    KeyId,
    #[error("principal {principal:?}: {reason}")]
    Principal { principal: String, reason: IdError },
    #[error("a certificate needs at least one principal")]
    NoPrincipals,
    #[error("a certificate may name at most {MAX_PRINCIPALS} principals")]
    TooManyPrincipals,
    #[error("principal {0:?} is named twice")]
    DuplicatePrincipal(String),
    #[error("validity {asked:?} is out of bounds: from {MIN_VALIDITY:?} to {max:?}")]
    Validity { asked: Duration, max: Duration },
}

/// The certificate extensions keyward may ask for: OpenSSH's usual ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Extension {
    PermitPty,
    PermitPortForwarding,
    PermitAgentForwarding,
    PermitX11Forwarding,
    PermitUserRc,
}

impl Extension {
    /// The extension's name in a certificate.
    pub fn name(self) -> &'static str {
        match self {
            Self::PermitPty => "permit-pty",
            Self::PermitPortForwarding => "permit-port-forwarding",
            Self::PermitAgentForwarding => "permit-agent-forwarding",
            Self::PermitX11Forwarding => "permit-X11-forwarding",
            Self::PermitUserRc => "permit-user-rc",
        }
    }
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One user certificate to sign: with which engine role, for which public key, under which key
/// id, for which principals ([`Principal`]: the hosts' `AuthorizedPrincipalsFile` decides which user
/// each may log in as), for how long and with which extensions
/// (`permit-pty` unless more are asked for: never none, for the engine answers an empty set with
/// its role's defaults).
#[derive(Debug, Clone)]
pub struct UserCertificateRequest {
    role: String,
    public_key: PublicKey,
    key_id: String,
    principals: Vec<Principal>,
    validity: Duration,
    extensions: BTreeSet<Extension>,
}

impl UserCertificateRequest {
    /// Checks every part; `validity` is counted in whole seconds, from [`MIN_VALIDITY`] to
    /// [`MAX_VALIDITY`].
    pub fn new<I, S>(
        role: &str,
        public_key: &str,
        key_id: &str,
        principals: I,
        validity: Duration,
    ) -> Result<Self, CertificateRequestError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Self {
            role: check_role(role)?,
            public_key: parse_public_key(public_key)?,
            key_id: check_key_id(key_id)?,
            principals: check_principals(principals)?,
            validity: check_validity(validity, MAX_VALIDITY)?,
            extensions: BTreeSet::from([Extension::PermitPty]),
        })
    }

    /// Adds one extension to the default `permit-pty`.
    #[must_use]
    pub fn with_extension(mut self, extension: Extension) -> Self {
        self.extensions.insert(extension);
        self
    }

    /// Tightens the validity bound below [`MAX_VALIDITY`] (a policy's own maximum).
    pub fn within(self, max: Duration) -> Result<Self, CertificateRequestError> {
        check_validity(self.validity, max.min(MAX_VALIDITY))?;
        Ok(self)
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The public key in OpenSSH form, without its comment.
    pub fn public_key_openssh(&self) -> String {
        PublicKey::from(self.public_key.key_data().clone())
            .to_openssh()
            .unwrap_or_default()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn principals(&self) -> &[Principal] {
        &self.principals
    }

    pub fn validity(&self) -> Duration {
        self.validity
    }

    pub fn extensions(&self) -> &BTreeSet<Extension> {
        &self.extensions
    }
}

/// The engine's own grammar for a role name (`\w(([\w-.@]+)?\w)?`), in ASCII.
fn check_role(role: &str) -> Result<String, CertificateRequestError> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = role.len() <= 128
        && role.starts_with(word)
        && role.ends_with(word)
        && role
            .chars()
            .all(|c| word(c) || matches!(c, '-' | '.' | '@'));
    if ok {
        Ok(role.to_owned())
    } else {
        Err(CertificateRequestError::Role(
            role.chars().take(64).collect(),
        ))
    }
}

fn parse_public_key(text: &str) -> Result<PublicKey, CertificateRequestError> {
    if text.len() > MAX_PUBLIC_KEY_LEN {
        return Err(CertificateRequestError::PublicKey(format!(
            "longer than {MAX_PUBLIC_KEY_LEN} bytes"
        )));
    }
    PublicKey::from_openssh(text.trim())
        .map_err(|e| CertificateRequestError::PublicKey(e.to_string()))
}

fn check_key_id(key_id: &str) -> Result<String, CertificateRequestError> {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '/' | '+' | '=' | '-')
    };
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN || !key_id.chars().all(allowed) {
        return Err(CertificateRequestError::KeyId);
    }
    Ok(key_id.to_owned())
}

fn check_principals<I, S>(principals: I) -> Result<Vec<Principal>, CertificateRequestError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut checked: Vec<Principal> = Vec::new();
    for principal in principals {
        let principal = principal.as_ref();
        let user: Principal =
            principal
                .parse()
                .map_err(|reason| CertificateRequestError::Principal {
                    principal: principal.chars().take(64).collect(),
                    reason,
                })?;
        if checked.contains(&user) {
            return Err(CertificateRequestError::DuplicatePrincipal(
                user.as_str().to_owned(),
            ));
        }
        if checked.len() == MAX_PRINCIPALS {
            return Err(CertificateRequestError::TooManyPrincipals);
        }
        checked.push(user);
    }
    if checked.is_empty() {
        return Err(CertificateRequestError::NoPrincipals);
    }
    Ok(checked)
}

fn check_validity(asked: Duration, max: Duration) -> Result<Duration, CertificateRequestError> {
    let whole = Duration::from_secs(asked.as_secs());
    if whole < MIN_VALIDITY || whole > max {
        return Err(CertificateRequestError::Validity { asked, max });
    }
    Ok(whole)
}

#[cfg(test)]
mod tests {
    use keyward_common::{GeneratedKey, KeyAlgorithm};

    use super::*;

    fn key() -> String {
        GeneratedKey::generate(KeyAlgorithm::Ed25519, "someone@example")
            .unwrap()
            .public_openssh()
            .to_owned()
    }

    fn request(
        principals: &[&str],
        validity: Duration,
    ) -> Result<UserCertificateRequest, CertificateRequestError> {
        UserCertificateRequest::new("keyward-user", &key(), "t1:tenant:7", principals, validity)
    }

    #[test]
    fn a_good_request_holds_what_was_asked_with_permit_pty() {
        let r = request(&["alice", "bob"], Duration::from_secs(600)).unwrap();
        assert_eq!(r.role(), "keyward-user");
        assert_eq!(r.key_id(), "t1:tenant:7");
        assert_eq!(
            r.principals()
                .iter()
                .map(Principal::as_str)
                .collect::<Vec<_>>(),
            ["alice", "bob"]
        );
        assert_eq!(r.validity(), Duration::from_secs(600));
        assert_eq!(
            r.extensions().iter().map(|e| e.name()).collect::<Vec<_>>(),
            ["permit-pty"]
        );
        let r = r.with_extension(Extension::PermitPortForwarding);
        assert_eq!(r.extensions().len(), 2);
        // The comment is not sent.
        assert!(!r.public_key_openssh().contains("someone@example"));
        assert!(r.public_key_openssh().starts_with("ssh-ed25519 AAAA"));
    }

    #[test]
    fn bad_principals_are_refused() {
        let ten_minutes = Duration::from_secs(600);
        for bad in ["Root", "a,b", "", "-x", "a b", "x".repeat(129).as_str()] {
            let err = request(&[bad], ten_minutes).unwrap_err();
            assert!(
                matches!(err, CertificateRequestError::Principal { .. }),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(
            request(&[], ten_minutes).unwrap_err(),
            CertificateRequestError::NoPrincipals
        );
        assert_eq!(
            request(&["a", "a"], ten_minutes).unwrap_err(),
            CertificateRequestError::DuplicatePrincipal("a".into())
        );
        let many: Vec<String> = (0..=MAX_PRINCIPALS).map(|i| format!("u{i}")).collect();
        let err = UserCertificateRequest::new("r", &key(), "k", &many, ten_minutes).unwrap_err();
        assert_eq!(err, CertificateRequestError::TooManyPrincipals);
    }

    #[test]
    fn validity_is_bounded() {
        for bad in [
            Duration::ZERO,
            Duration::from_secs(59),
            MAX_VALIDITY + Duration::from_secs(1),
        ] {
            let err = request(&["alice"], bad).unwrap_err();
            assert!(
                matches!(err, CertificateRequestError::Validity { .. }),
                "{bad:?}"
            );
            assert!(err.to_string().contains("out of bounds"), "{err}");
        }
        assert!(request(&["alice"], MAX_VALIDITY).is_ok());
        let r = request(&["alice"], Duration::from_millis(90_500)).unwrap();
        assert_eq!(r.validity(), Duration::from_secs(90));
        let hour = Duration::from_secs(3600);
        assert!(request(&["alice"], hour).unwrap().within(hour).is_ok());
        assert!(matches!(
            request(&["alice"], hour + Duration::from_secs(1))
                .unwrap()
                .within(hour),
            Err(CertificateRequestError::Validity { .. })
        ));
    }

    #[test]
    fn bad_keys_key_ids_and_roles_are_refused() {
        let ten_minutes = Duration::from_secs(600);
        for bad in ["", "ssh-ed25519 AAAAnotbase64!", "ssh-ed25519", "hello"] {
            let err =
                UserCertificateRequest::new("r", bad, "k", ["alice"], ten_minutes).unwrap_err();
            assert!(
                matches!(err, CertificateRequestError::PublicKey(_)),
                "{bad:?}: {err}"
            );
        }
        let long = format!("ssh-ed25519 {}", "A".repeat(MAX_PUBLIC_KEY_LEN));
        assert!(matches!(
            UserCertificateRequest::new("r", &long, "k", ["alice"], ten_minutes),
            Err(CertificateRequestError::PublicKey(_))
        ));
        let long_id = "k".repeat(MAX_KEY_ID_LEN + 1);
        for bad in ["", "a b", "a,b", "ключ", "a\"b", long_id.as_str()] {
            let err =
                UserCertificateRequest::new("r", &key(), bad, ["alice"], ten_minutes).unwrap_err();
            assert_eq!(err, CertificateRequestError::KeyId, "{bad:?}");
        }
        for bad in ["", "-r", "r-", "a/b", "a b", "../x"] {
            let err =
                UserCertificateRequest::new(bad, &key(), "k", ["alice"], ten_minutes).unwrap_err();
            assert!(matches!(err, CertificateRequestError::Role(_)), "{bad:?}");
        }
    }
}
