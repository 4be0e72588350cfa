//! SSH key pairs: generation, OpenSSH encodings and SHA-256 fingerprints.
//!
//! Keys are made with the `rsa` crate (RSA-4096, the product's default) or Ed25519, and encoded
//! with `ssh-key`, so the private key is the OpenSSH format that `ssh -i` and `ssh-keygen -y -f`
//! read, and the fingerprint is byte for byte what `ssh-keygen -lf` prints.
//!
//! RSA keys come from `rsa` 0.10 (crypto-bigint arithmetic, crypto-primes' sieve and
//! Baillie-PSW test), not from the `rsa` 0.9 that `ssh-key` 0.6 bundles: 0.10 makes RSA-4096 keys
//! faster than `ssh-keygen` does, 0.9 several times slower (`keyward-bench keygen`, BENCHMARKS.md).
//! The key's components (n, e, d, p, q and q⁻¹ mod p) are copied into `ssh-key`'s
//! [`RsaKeypair`] for the OpenSSH encoding; every copy of a secret component is zeroized.
//! Generation is CPU-bound (a fraction of a second to a few seconds for RSA-4096, a random prime
//! search): callers run it off the async runtime.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ssh_key::private::{RsaKeypair, RsaPrivateKey};
use ssh_key::public::RsaPublicKey;
use ssh_key::{HashAlg, LineEnding, Mpint, PrivateKey, PublicKey};
use zeroize::Zeroizing;

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
    #[error("key generation failed: {0}")]
    Generate(ssh_key::Error),
    #[error("RSA key generation failed: {0}")]
    GenerateRsa(rsa_keygen::Error),
    #[error("encoding the key in OpenSSH format failed: {0}")]
    Encode(ssh_key::Error),
    #[error("not an OpenSSH public key: {0}")]
    ParsePublic(ssh_key::Error),
    #[error("not an OpenSSH private key: {0}")]
    ParsePrivate(ssh_key::Error),
    #[error("unknown key kind {0:?}; expected \"admin\" or \"tenant\"")]
    UnknownKind(String),
    #[error("unknown key algorithm {0:?}; expected \"rsa-4096\" or \"ed25519\"")]
    UnknownAlgorithm(String),
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

/// A freshly generated key pair. The private half is zeroized when this is dropped, and is never
/// printed by `Debug`.
pub struct GeneratedKey {
    algorithm: KeyAlgorithm,
    private_openssh: Zeroizing<String>,
    public_openssh: String,
    fingerprint: Fingerprint,
}

impl GeneratedKey {
    /// Makes a new key pair. `comment` ends up in both halves (OpenSSH shows it in `ssh-keygen -l`).
    pub fn generate(algorithm: KeyAlgorithm, comment: &str) -> Result<Self, KeyError> {
        let mut rng = rand::rngs::OsRng;
        let mut private = match algorithm {
            KeyAlgorithm::Rsa4096 => PrivateKey::from(rsa_keypair(4096)?),
            KeyAlgorithm::Ed25519 => PrivateKey::random(&mut rng, ssh_key::Algorithm::Ed25519)
                .map_err(KeyError::Generate)?,
        };
        private.set_comment(comment);
        let private_openssh = private
            .to_openssh(LineEnding::LF)
            .map_err(KeyError::Encode)?;
        let public = private.public_key();
        let public_openssh = public.to_openssh().map_err(KeyError::Encode)?;
        Ok(Self {
            algorithm,
            fingerprint: Fingerprint::of(public),
            private_openssh,
            public_openssh,
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The private key in OpenSSH format (`-----BEGIN OPENSSH PRIVATE KEY-----`), unencrypted.
    pub fn private_openssh(&self) -> &Zeroizing<String> {
        &self.private_openssh
    }

    /// The public key as one `authorized_keys` line body: `ssh-rsa AAAA... comment`.
    pub fn public_openssh(&self) -> &str {
        &self.public_openssh
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint)
            .field("private_openssh", &"<redacted>")
            .finish()
    }
}

/// A new RSA key pair of `bits` bits (public exponent 65537) from `rsa` 0.10 and the operating
/// system's RNG, as `ssh-key`'s [`RsaKeypair`].
pub fn rsa_keypair(bits: usize) -> Result<RsaKeypair, KeyError> {
    use rsa_keygen::traits::{PrivateKeyParts, PublicKeyParts};

    // Zeroized on drop, like every component copied out of it below.
    let key = rsa_keygen::PrivateKey::new(&mut getrandom_sys::SysRng, bits)
        .map_err(KeyError::GenerateRsa)?;
    let [p, q] = key.primes() else {
        return Err(KeyError::GenerateRsa(rsa_keygen::Error::InvalidPrime));
    };
    // OpenSSH's `iqmp`: q⁻¹ mod p, for this p and q.
    let iqmp = Zeroizing::new(
        key.crt_coefficient()
            .ok_or(KeyError::GenerateRsa(rsa_keygen::Error::InvalidPrime))?,
    );
    let secret = |n: &rsa_keygen::BoxedUint| mpint(&Zeroizing::new(n.to_be_bytes()));
    Ok(RsaKeypair {
        public: RsaPublicKey {
            e: mpint(&key.e().to_be_bytes())?,
            n: mpint(&key.n().as_ref().to_be_bytes())?,
        },
        private: RsaPrivateKey {
            d: secret(key.d())?,
            iqmp: secret(&iqmp)?,
            p: secret(p.as_ref())?,
            q: secret(q.as_ref())?,
        },
    })
}

/// A non-negative big-endian integer (leading zeros allowed) as an SSH `mpint`. The buffer is
/// allocated once at its final size and handed over to the `Mpint`, which zeroizes it when
/// dropped, so no copy of a secret component is left behind in freed memory.
fn mpint(big_endian: &[u8]) -> Result<Mpint, KeyError> {
    let start = big_endian
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(big_endian.len());
    let digits = &big_endian[start..];
    // A positive number whose top bit is set gets a leading zero byte.
    let pad = usize::from(digits.first().is_some_and(|&b| b >= 0x80));
    let mut buf = vec![0u8; pad + digits.len()].into_boxed_slice();
    buf[pad..].copy_from_slice(digits);
    Mpint::try_from(buf).map_err(KeyError::Encode)
}

/// Parses an OpenSSH public key line body and returns its SHA-256 fingerprint.
pub fn public_key_fingerprint(openssh_public: &str) -> Result<Fingerprint, KeyError> {
    let key = PublicKey::from_openssh(openssh_public.trim()).map_err(KeyError::ParsePublic)?;
    Ok(Fingerprint::of(&key))
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
    fn ed25519_key_round_trips_and_fingerprints_agree() {
        let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "keyward:t1:tenant").unwrap();
        assert!(key.public_openssh().starts_with("ssh-ed25519 "));
        assert!(key.public_openssh().ends_with(" keyward:t1:tenant"));
        assert!(
            key.private_openssh()
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        let from_public = public_key_fingerprint(key.public_openssh()).unwrap();
        let from_private = private_key_fingerprint(key.private_openssh()).unwrap();
        assert_eq!(&from_public, key.fingerprint());
        assert_eq!(&from_private, key.fingerprint());
        assert!(key.fingerprint().as_str().starts_with("SHA256:"));
    }

    #[test]
    fn rsa_4096_key_has_4096_bits() {
        let key = GeneratedKey::generate(KeyAlgorithm::Rsa4096, "c").unwrap();
        let public = PublicKey::from_openssh(key.public_openssh()).unwrap();
        let rsa = public.key_data().rsa().expect("an RSA key");
        // 4096 bits: 512 bytes of modulus, plus the leading zero of a positive mpint.
        assert_eq!(rsa.n.as_positive_bytes().unwrap().len(), 512);
        assert!(key.public_openssh().starts_with("ssh-rsa "));
    }

    /// The generated RSA key is a valid key (the `rsa` 0.9 that `ssh-key` uses checks it), and
    /// OpenSSH reads it: `ssh-keygen -y` derives the same public key, `-l` the same fingerprint.
    #[test]
    fn rsa_4096_key_is_valid_and_openssh_reads_it() {
        use std::io::Write;
        use std::process::Command;

        let key = GeneratedKey::generate(KeyAlgorithm::Rsa4096, "keyward:t1:admin:3").unwrap();
        let private = PrivateKey::from_openssh(key.private_openssh()).unwrap();
        let keypair = private.key_data().rsa().expect("an RSA key pair");
        // (`ssh-key` 0.6's own conversion to `rsa` passes p twice, so it is done here.)
        let big = |m: &Mpint| rsa::BigUint::from_bytes_be(m.as_positive_bytes().unwrap());
        let (public, secret) = (&keypair.public, &keypair.private);
        let checked = rsa::RsaPrivateKey::from_components(
            big(&public.n),
            big(&public.e),
            big(&secret.d),
            vec![big(&secret.p), big(&secret.q)],
        )
        .unwrap();
        checked.validate().unwrap();
        assert_eq!(checked.crt_coefficient(), Some(big(&secret.iqmp)));
        assert_eq!(big(&public.e), rsa::BigUint::from(65_537_u32));

        // A temporary file only OpenSSH reads (0600), deleted when dropped.
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(key.private_openssh().as_bytes()).unwrap();
        file.flush().unwrap();
        let derived = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(file.path())
            .output()
            .expect("ssh-keygen (openssh-client) is installed");
        assert!(derived.status.success(), "{derived:?}");
        let derived = String::from_utf8(derived.stdout).unwrap();
        let body = |line: &str| {
            line.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(body(&derived), body(key.public_openssh()));
        let listed = Command::new("ssh-keygen")
            .args(["-E", "sha256", "-l", "-f"])
            .arg(file.path())
            .output()
            .unwrap();
        assert!(listed.status.success(), "{listed:?}");
        let listed = String::from_utf8(listed.stdout).unwrap();
        assert!(
            listed.starts_with(&format!("4096 {} ", key.fingerprint())),
            "{listed}"
        );
    }

    #[test]
    fn mpints_are_minimal_and_positive() {
        assert_eq!(mpint(&[0, 0, 0x7f, 1]).unwrap().as_bytes(), &[0x7f, 1]);
        assert_eq!(mpint(&[0, 0x80, 1]).unwrap().as_bytes(), &[0, 0x80, 1]);
        assert_eq!(mpint(&[0xff]).unwrap().as_bytes(), &[0, 0xff]);
        assert!(mpint(&[0, 0]).unwrap().as_bytes().is_empty());
        assert!(mpint(&[]).unwrap().as_bytes().is_empty());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "c").unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE KEY"));
    }

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
