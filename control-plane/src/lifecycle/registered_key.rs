//! A public key a tenant (or an admin, for the admin user) brings instead of receiving a
//! generated one: what keyward accepts, read from hostile text.
//!
//! One OpenSSH public key line, `type base64 [comment]`, at most [`MAX_PUBLIC_KEY_BYTES`]:
//! Ed25519, ECDSA on NIST P-256/384/521, RSA of at least [`MIN_RSA_BITS`] bits, and the FIDO2
//! security-key types `sk-ssh-ed25519@openssh.com` and `sk-ecdsa-sha2-nistp256@openssh.com`.
//! Everything else is refused with its own reason: DSA and unknown types, short RSA moduli,
//! certificates, `authorized_keys` options (the options of a managed line are the agent's), more
//! than one line, control characters. The key is read twice, by `ssh-key` and by the agent's
//! transcription of sshd's reader ([`parse_line`]), and both must agree on its fingerprint: a key
//! sshd would not read (an ECDSA point off its curve) is refused here, not discovered on a host.
//! The comment is dropped: the stored key is re-encoded from its blob.

use keyward_common::Fingerprint;
use keyward_common::authorized_keys::parse_line;
use ssh_key::{Algorithm, EcdsaCurve, PublicKey};

/// The longest line taken: an RSA-16384 key in base64 with a comment fits.
pub const MAX_PUBLIC_KEY_BYTES: usize = 8 * 1024;
/// The shortest RSA modulus taken (NIST SP 800-57: 128-bit security needs 3072).
pub const MIN_RSA_BITS: usize = 3072;

/// A public key keyward accepted for registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredKey {
    /// `type base64`, re-encoded without the comment.
    pub public_openssh: String,
    pub fingerprint: Fingerprint,
    /// The OpenSSH key type name (`ssh-ed25519`, `sk-ssh-ed25519@openssh.com`...).
    pub key_type: &'static str,
    /// A FIDO2 security key (`sk-*`): it can carry `verify-required`.
    pub fido2: bool,
}

/// Why a key was refused. Each has a stable code (the problem document's and the audit log's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("the public key is longer than {MAX_PUBLIC_KEY_BYTES} bytes")]
    TooLarge,
    #[error("send exactly one public key line (no line breaks, NUL or control characters)")]
    NotOneLine,
    #[error(
        "authorized_keys options are not taken: send the bare key (`type base64 [comment]`); \
         keyward writes the options of a managed line itself"
    )]
    HasOptions,
    #[error("a certificate is not taken: register the plain public key")]
    Certificate,
    #[error("not an OpenSSH public key (`type base64 [comment]`)")]
    Unreadable,
    #[error(
        "key type {0} is not taken: use ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa of at \
         least 3072 bits, sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com"
    )]
    TypeNotAllowed(String),
    #[error("an RSA key of {0} bits is too weak: at least {MIN_RSA_BITS} bits are taken")]
    RsaTooShort(usize),
    #[error(
        "this tenant's key policy requires a FIDO2 security key (sk-ssh-ed25519@openssh.com or \
         sk-ecdsa-sha2-nistp256@openssh.com)"
    )]
    Fido2Required,
}

impl KeyRefusal {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            KeyRefusal::TooLarge => "public_key_too_large",
            KeyRefusal::NotOneLine => "public_key_not_one_line",
            KeyRefusal::HasOptions => "public_key_has_options",
            KeyRefusal::Certificate => "public_key_is_certificate",
            KeyRefusal::Unreadable => "public_key_unreadable",
            KeyRefusal::TypeNotAllowed(_) => "key_type_not_allowed",
            KeyRefusal::RsaTooShort(_) => "key_too_weak",
            KeyRefusal::Fido2Required => "fido2_required",
        }
    }
}

impl RegisteredKey {
    /// Reads `text` (a trailing newline is forgiven) as a key to register, `fido2_only` when the
    /// tenant's policy takes security keys only.
    pub fn parse(text: &str, fido2_only: bool) -> Result<Self, KeyRefusal> {
        if text.len() > MAX_PUBLIC_KEY_BYTES {
            return Err(KeyRefusal::TooLarge);
        }
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line
            .strip_suffix('\r')
            .unwrap_or(line)
            .trim_matches([' ', '\t']);
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(KeyRefusal::NotOneLine);
        }
        let first = line.split([' ', '\t']).next().unwrap_or_default();
        if first.ends_with("-cert-v01@openssh.com") {
            return Err(KeyRefusal::Certificate);
        }
        let sshd = parse_line(line.as_bytes());
        if sshd.as_ref().is_some_and(|l| l.options.is_some()) {
            return Err(KeyRefusal::HasOptions);
        }
        let parsed = PublicKey::from_openssh(line).map_err(|_| match &sshd {
            // sshd reads a type ssh-key does not: DSA, for one.
            Some(l) => KeyRefusal::TypeNotAllowed(l.algorithm.to_owned()),
            None => KeyRefusal::Unreadable,
        })?;
        let key_type = match parsed.algorithm() {
            Algorithm::Ed25519 => "ssh-ed25519",
            Algorithm::SkEd25519 => "sk-ssh-ed25519@openssh.com",
            Algorithm::SkEcdsaSha2NistP256 => "sk-ecdsa-sha2-nistp256@openssh.com",
            Algorithm::Ecdsa { curve } => match curve {
                EcdsaCurve::NistP256 => "ecdsa-sha2-nistp256",
                EcdsaCurve::NistP384 => "ecdsa-sha2-nistp384",
                EcdsaCurve::NistP521 => "ecdsa-sha2-nistp521",
            },
            Algorithm::Rsa { .. } => {
                let bits = parsed
                    .key_data()
                    .rsa()
                    .and_then(|rsa| rsa.n.as_positive_bytes())
                    .map_or(0, modulus_bits);
                if bits < MIN_RSA_BITS {
                    return Err(KeyRefusal::RsaTooShort(bits));
                }
                "ssh-rsa"
            }
            other => return Err(KeyRefusal::TypeNotAllowed(other.as_str().to_owned())),
        };
        let fingerprint = Fingerprint::of(&parsed);
        // sshd must read the very same key (an ECDSA point must be on its curve).
        if sshd.is_none_or(|l| l.fingerprint != fingerprint) {
            return Err(KeyRefusal::Unreadable);
        }
        let fido2 = key_type.starts_with("sk-");
        if fido2_only && !fido2 {
            return Err(KeyRefusal::Fido2Required);
        }
        let bare = PublicKey::new(parsed.key_data().clone(), "");
        let public_openssh = bare.to_openssh().map_err(|_| KeyRefusal::Unreadable)?;
        Ok(Self {
            public_openssh: public_openssh.trim_end().to_owned(),
            fingerprint,
            key_type,
            fido2,
        })
    }
}

/// The bit length of a big-endian unsigned integer without leading zero bytes.
fn modulus_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        Some(first) => (bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize),
        None => 0,
    }
}

#[cfg(test)]
#[path = "registered_key_tests.rs"]
mod tests;
