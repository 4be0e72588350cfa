//! Pseudonyms for the personal data of old login events (source addresses, user names), so that
//! they are kept for the audit without naming anyone (GDPR article 4(5), 32(1)(a)).
//!
//! A pseudonym is `ps-` and 16 hex digits of HMAC-SHA256 under a key of the deployment's, with
//! what is pseudonymised (`ip`, `user`) in the message: the same address gives the same pseudonym
//! in every row (a series of logins from one place still reads as one), and without the key — in
//! Vault, never in SQL — a pseudonym cannot be turned back into an address by trying them all.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::vault::{SecretStore, VaultError};

/// The key's name among keyward's own secrets in Vault.
const SECRET: &str = "login_pseudonym_key";
/// What every pseudonym starts with (no address or user name does).
pub const PREFIX: &str = "ps-";

/// The deployment's pseudonym key.
pub struct Pseudonymiser {
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(..)")
    }
}

impl Pseudonymiser {
    pub fn from_key(key: &[u8]) -> Self {
        Self {
            key: Zeroizing::new(key.to_vec()),
        }
    }

    /// Reads the key from Vault, creating it (32 random bytes) on the deployment's first use.
    pub async fn load_or_create(vault: &dyn SecretStore) -> Result<Self, VaultError> {
        for _ in 0..2 {
            if let Some(stored) = vault.read_internal(SECRET).await? {
                if let Some(key) = stored["key"]
                    .as_str()
                    .and_then(|k| STANDARD.decode(k).ok())
                    .filter(|k| k.len() >= 32)
                {
                    return Ok(Self::from_key(&Zeroizing::new(key)));
                }
                return Err(VaultError::BadResponse {
                    operation: "reading the login pseudonym key".into(),
                    reason: "no key of 32 bytes or more".into(),
                });
            }
            let key = Zeroizing::new(rand::random::<[u8; 32]>());
            let text = Zeroizing::new(STANDARD.encode(*key));
            if vault
                .create_internal(SECRET, &json!({ "key": text.as_str() }))
                .await?
            {
                tracing::info!("created the login pseudonym key in Vault");
                return Ok(Self::from_key(&*key));
            }
        }
        Err(VaultError::BadResponse {
            operation: "creating the login pseudonym key".into(),
            reason: "neither readable nor creatable".into(),
        })
    }

    /// `value`'s pseudonym as a `what` (`ip`, `user`); a pseudonym stays as it is.
    pub fn pseudonym(&self, what: &str, value: &str) -> String {
        if value.starts_with(PREFIX) {
            return value.to_owned();
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(what.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("{PREFIX}{}", hex::encode(&digest[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_apart_by_kind() {
        let p = Pseudonymiser::from_key(&[7; 32]);
        let a = p.pseudonym("ip", "198.51.100.7");
        assert!(a.starts_with("ps-") && a.len() == 19, "{a}");
        assert_eq!(a, p.pseudonym("ip", "198.51.100.7"));
        assert_ne!(a, p.pseudonym("ip", "198.51.100.8"));
        assert_ne!(a, p.pseudonym("user", "198.51.100.7"));
        assert_ne!(
            a,
            Pseudonymiser::from_key(&[8; 32]).pseudonym("ip", "198.51.100.7")
        );
        assert_eq!(p.pseudonym("ip", &a), a, "twice is once");
    }
}
