//! SSH keys: kinds, algorithms, OpenSSH parsing and SHA-256 fingerprints; generation in
//! `generate` (the `keygen` feature).
//!
//! Keys are read and encoded with `ssh-key`, so a fingerprint is byte for byte what
//! `ssh-keygen -lf` prints. Everything here is what the agent needs too (it fingerprints the keys
//! it is sent and the host keys it reports); making keys is the control plane's job, so
//! `GeneratedKey` and `rsa_keypair` exist only with the `keygen` feature, which the agent's build
//! leaves off.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PrivateKey, PublicKey};

#[cfg(feature = "keygen")]
pub mod generate;
#[cfg(feature = "keygen")]
pub use generate::{GeneratedKey, UnnamedKey, encrypt_private_key, rsa_keypair};

/// The two managed key sets of a tenant's VPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The platform's admin user.
    Admin,
    /// The tenant's own user.
    Tenant,
}

impl KeyKind {
    pub const ALL: [KeyKind; 2] = [KeyKind::Admin, KeyKind::Tenant];

    /// The last segment of the key set's Vault path: `vps/{tenant_id}/{secret_name}`.
    pub fn secret_name(self) -> &'static str {
        match self {
            KeyKind::Admin => "admin_ssh",
            KeyKind::Tenant => "tenant_ssh",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Admin => "admin",
            KeyKind::Tenant => "tenant",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyKind {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s {
            "admin" => Ok(KeyKind::Admin),
            "tenant" => Ok(KeyKind::Tenant),
            other => Err(KeyError::UnknownKind(other.to_owned())),
        }
    }
}

/// Where a key set's key comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrigin {
    /// keyward generated it; Vault holds the private key until the one download.
    #[default]
    Generated,
    /// Its owner registered the public key; keyward never held the private key.
    Registered,
}

impl KeyOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOrigin::Generated => "generated",
            KeyOrigin::Registered => "registered",
        }
    }

    pub fn is_generated(&self) -> bool {
        *self == KeyOrigin::Generated
    }
}

impl FromStr for KeyOrigin {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s {
            "generated" => Ok(KeyOrigin::Generated),
            "registered" => Ok(KeyOrigin::Registered),
            other => Err(KeyError::UnknownOrigin(other.to_owned())),
        }
    }
}

/// The algorithm of a key set, chosen by its rotation policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    #[default]
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa4096 => "rsa-4096",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s {
            "rsa-4096" => Ok(KeyAlgorithm::Rsa4096),
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            other => Err(KeyError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[cfg(feature = "keygen")]
    #[error("key generation failed: {0}")]
    Generate(ssh_key::Error),
    #[cfg(feature = "keygen")]
    #[error("RSA key generation failed: {0}")]
    GenerateRsa(rsa_keygen::Error),
    #[cfg(feature = "keygen")]
    #[error("encoding the key in OpenSSH format failed: {0}")]
    Encode(ssh_key::Error),
    #[cfg(feature = "keygen")]
    #[error("encrypting the private key failed: {0}")]
    Encrypt(ssh_key::Error),
    #[error("not an OpenSSH public key: {0}")]
    ParsePublic(ssh_key::Error),
    #[error("not an OpenSSH private key: {0}")]
    ParsePrivate(ssh_key::Error),
    #[error("unknown key kind {0:?}; expected \"admin\" or \"tenant\"")]
    UnknownKind(String),
    #[error("unknown key algorithm {0:?}; expected \"rsa-4096\" or \"ed25519\"")]
    UnknownAlgorithm(String),
    #[error("unknown key origin {0:?}; expected \"generated\" or \"registered\"")]
    UnknownOrigin(String),
    #[error("not a SHA-256 fingerprint: {0:?}")]
    BadFingerprint(String),
}

/// A SHA-256 key fingerprint as OpenSSH prints it: `SHA256:` and unpadded base64.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of(key: &PublicKey) -> Self {
        Self(key.fingerprint(HashAlg::Sha256).to_string())
    }

    /// The fingerprint of a key whose canonical blob hashes to `digest`.
    pub(crate) fn from_sha256(digest: [u8; 32]) -> Self {
        Self(ssh_key::Fingerprint::Sha256(digest).to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32-byte SHA-256 digest of the key's wire blob that this fingerprint spells in base64
    /// (what a KRL lists). Every `Fingerprint` is a valid SHA-256 one, so this fails only if that
    /// invariant is broken.
    pub fn sha256(&self) -> Result<[u8; 32], KeyError> {
        self.0
            .parse::<ssh_key::Fingerprint>()
            .ok()
            .and_then(ssh_key::Fingerprint::sha256)
            .ok_or_else(|| KeyError::BadFingerprint(self.0.clone()))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Fingerprint {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        s.parse::<ssh_key::Fingerprint>()
            .ok()
            .filter(|f| f.algorithm() == HashAlg::Sha256)
            .map(|f| Self(f.to_string()))
            .ok_or_else(|| KeyError::BadFingerprint(s.chars().take(80).collect()))
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        s.parse()
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.0
    }
}

/// Parses an OpenSSH public key line body and returns its SHA-256 fingerprint.
pub fn public_key_fingerprint(openssh_public: &str) -> Result<Fingerprint, KeyError> {
    let key = PublicKey::from_openssh(openssh_public.trim()).map_err(KeyError::ParsePublic)?;
    Ok(Fingerprint::of(&key))
}

/// Parses an OpenSSH public key and writes it back as `type base64`, without its comment or
/// anything else of the line it came in: one key, one line, nothing sshd could read as an option.
pub fn canonical_public_key(openssh_public: &str) -> Result<String, KeyError> {
    let mut key = PublicKey::from_openssh(openssh_public.trim()).map_err(KeyError::ParsePublic)?;
    key.set_comment("");
    key.to_openssh()
        .map(|line| line.trim_end().to_owned())
        .map_err(KeyError::ParsePublic)
}

/// Parses an OpenSSH private key and returns the fingerprint of its public half.
pub fn private_key_fingerprint(openssh_private: &str) -> Result<Fingerprint, KeyError> {
    let key = PrivateKey::from_openssh(openssh_private).map_err(KeyError::ParsePrivate)?;
    Ok(Fingerprint::of(key.public_key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_validated() {
        assert!(
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
                .parse::<Fingerprint>()
                .is_ok()
        );
        for bad in ["", "MD5:00", "SHA256:", "SHA256:!!", "ssh-rsa AAAA"] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_fingerprint_gives_back_its_digest() {
        let digest: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(Fingerprint::from_sha256(digest).sha256().unwrap(), digest);
    }

    #[test]
    fn garbage_public_keys_are_refused() {
        for bad in ["", "ssh-rsa", "ssh-rsa !!!", "not a key at all"] {
            assert!(public_key_fingerprint(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn kinds_and_algorithms_parse() {
        assert_eq!(
            "admin".parse::<KeyKind>().unwrap().secret_name(),
            "admin_ssh"
        );
        assert_eq!(
            "tenant".parse::<KeyKind>().unwrap().secret_name(),
            "tenant_ssh"
        );
        assert!("root".parse::<KeyKind>().is_err());
        assert_eq!(
            "ed25519".parse::<KeyAlgorithm>().unwrap(),
            KeyAlgorithm::Ed25519
        );
        assert!("dsa".parse::<KeyAlgorithm>().is_err());
    }
}
