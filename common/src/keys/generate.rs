//! Key generation: RSA-4096 and Ed25519 key pairs, encoded as OpenSSH writes them.
//!
//! Behind the `keygen` feature (see Cargo.toml): the control plane makes keys, the agent never
//! does, so the agent's build carries neither this code nor `rsa` 0.10 and its prime search.
//!
//! RSA keys come from `rsa` 0.10 (crypto-bigint arithmetic, crypto-primes' sieve and
//! Baillie-PSW test), not from the `rsa` 0.9 that `ssh-key` 0.6's `rsa` feature bundles: 0.10 makes
//! RSA-4096 keys faster than `ssh-keygen` does, 0.9 several times slower (`keyward-bench keygen`,
//! BENCHMARKS.md). The key's components (n, e, d, p, q and q⁻¹ mod p) are copied into
//! `ssh-key`'s [`RsaKeypair`] for the OpenSSH encoding; every copy of a secret component is
//! zeroized. Generation is CPU-bound (a fraction of a second to a few seconds for RSA-4096, a
//! random prime search): callers run it off the async runtime.

use std::fmt;

use ssh_key::private::{RsaKeypair, RsaPrivateKey};
use ssh_key::public::RsaPublicKey;
use ssh_key::{LineEnding, Mpint, PrivateKey};
use zeroize::Zeroizing;

use super::{Fingerprint, KeyAlgorithm, KeyError};

/// A freshly generated key pair. The private half is zeroized when this is dropped, and is never
/// printed by `Debug`.
pub struct GeneratedKey {
    algorithm: KeyAlgorithm,
    private_openssh: Zeroizing<String>,
    public_openssh: String,
    fingerprint: Fingerprint,
}

/// A key pair made ahead of its use, before it has a comment: what a pool of pre-generated keys
/// holds (the comment names the tenant, key kind and generation that take it). Making it is the
/// expensive part; [`UnnamedKey::named`] only encodes it. Its secret components (`ssh-key`'s
/// `Mpint`s) are zeroized when it is dropped, and `Debug` never prints them.
pub struct UnnamedKey {
    algorithm: KeyAlgorithm,
    private: PrivateKey,
}

/// `ssh-key`'s RSA and Ed25519 private halves wipe themselves when dropped (their `Drop`), and
/// a `PrivateKey` holds nothing else secret: so does this key.
impl zeroize::ZeroizeOnDrop for UnnamedKey {}

impl UnnamedKey {
    /// Makes a new key pair (CPU-bound: see the module's documentation).
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let private = match algorithm {
            KeyAlgorithm::Rsa4096 => PrivateKey::from(rsa_keypair(4096)?),
            KeyAlgorithm::Ed25519 => {
                PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
                    .map_err(KeyError::Generate)?
            }
        };
        Ok(Self { algorithm, private })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The key with its comment, encoded as OpenSSH writes it. `comment` ends up in both halves
    /// (OpenSSH shows it in `ssh-keygen -l`).
    pub fn named(mut self, comment: &str) -> Result<GeneratedKey, KeyError> {
        self.private.set_comment(comment);
        let private_openssh = self
            .private
            .to_openssh(LineEnding::LF)
            .map_err(KeyError::Encode)?;
        let public = self.private.public_key();
        let public_openssh = public.to_openssh().map_err(KeyError::Encode)?;
        Ok(GeneratedKey {
            algorithm: self.algorithm,
            fingerprint: Fingerprint::of(public),
            private_openssh,
            public_openssh,
        })
    }
}

impl fmt::Debug for UnnamedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnnamedKey")
            .field("algorithm", &self.algorithm)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl GeneratedKey {
    /// Makes a new key pair. `comment` ends up in both halves (OpenSSH shows it in `ssh-keygen -l`).
    pub fn generate(algorithm: KeyAlgorithm, comment: &str) -> Result<Self, KeyError> {
        UnnamedKey::generate(algorithm)?.named(comment)
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

/// `private_openssh` (an unencrypted OpenSSH private key) encrypted with `passphrase` as
/// `ssh-keygen -p` writes it: the bcrypt-pbkdf KDF (16 rounds, a random salt) and aes256-ctr.
/// Every plain copy of the key made here is zeroized; CPU-bound (bcrypt-pbkdf takes tens of
/// milliseconds on purpose): callers run it off the async runtime.
pub fn encrypt_private_key(
    private_openssh: &str,
    passphrase: &[u8],
) -> Result<Zeroizing<String>, KeyError> {
    // `PrivateKey` wipes its secret half when dropped.
    let plain = PrivateKey::from_openssh(private_openssh).map_err(KeyError::ParsePrivate)?;
    let encrypted = plain
        .encrypt(&mut rand::rngs::OsRng, passphrase)
        .map_err(KeyError::Encrypt)?;
    encrypted
        .to_openssh(LineEnding::LF)
        .map_err(KeyError::Encode)
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

#[cfg(test)]
mod tests {
    use ssh_key::PublicKey;

    use super::*;
    use crate::keys::{private_key_fingerprint, public_key_fingerprint};

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

    /// The generated RSA key is a valid key (`rsa` 0.9, not the 0.10 that made it, checks it), and
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

    /// The encrypted key is what `ssh-keygen -p` writes (bcrypt KDF, aes256-ctr), for both
    /// algorithms and a passphrase that is not ASCII: OpenSSH opens it with the passphrase and
    /// derives the same public key, and refuses a wrong one.
    #[test]
    fn an_encrypted_key_opens_in_openssh_with_its_passphrase_only() {
        use std::io::Write;
        use std::process::Command;

        let passphrase = "correct horse bätterie 🔑";
        for algorithm in [KeyAlgorithm::Ed25519, KeyAlgorithm::Rsa4096] {
            let key = GeneratedKey::generate(algorithm, "keyward:t1:tenant:1").unwrap();
            let encrypted =
                encrypt_private_key(key.private_openssh(), passphrase.as_bytes()).unwrap();
            let parsed = PrivateKey::from_openssh(encrypted.as_str()).unwrap();
            assert!(parsed.is_encrypted());
            assert_eq!(parsed.cipher(), ssh_key::Cipher::Aes256Ctr);
            assert!(matches!(parsed.kdf(), ssh_key::Kdf::Bcrypt { .. }));
            assert_eq!(&Fingerprint::of(parsed.public_key()), key.fingerprint());

            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(encrypted.as_bytes()).unwrap();
            file.flush().unwrap();
            let open = |given: &str| {
                Command::new("ssh-keygen")
                    .args(["-y", "-P", given, "-f"])
                    .arg(file.path())
                    .output()
                    .expect("ssh-keygen (openssh-client) is installed")
            };
            let derived = open(passphrase);
            assert!(derived.status.success(), "{algorithm}: {derived:?}");
            let derived = String::from_utf8(derived.stdout).unwrap();
            assert_eq!(
                public_key_fingerprint(&derived).unwrap(),
                *key.fingerprint(),
                "{algorithm}"
            );
            assert!(!open("wrong passphrase").status.success(), "{algorithm}");
            assert!(!open("").status.success(), "{algorithm}");
        }
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
    fn an_unnamed_key_takes_its_comment_when_named() {
        let unnamed = UnnamedKey::generate(KeyAlgorithm::Ed25519).unwrap();
        assert!(format!("{unnamed:?}").contains("<redacted>"));
        let key = unnamed.named("keyward:t1:tenant:2").unwrap();
        assert!(key.public_openssh().ends_with(" keyward:t1:tenant:2"));
        let private = PrivateKey::from_openssh(key.private_openssh()).unwrap();
        assert_eq!(private.comment(), "keyward:t1:tenant:2");
        assert_eq!(&Fingerprint::of(private.public_key()), key.fingerprint());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "c").unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE KEY"));
    }
}
