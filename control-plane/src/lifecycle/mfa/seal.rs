//! The key that seals TOTP seeds in SQL, and the sealing: AES-256-GCM with a random 96-bit nonce,
//! the factor id and its owner as associated data, so that a sealed seed copied to another row
//! or owner does not open. The key is kept in Vault (`_keyward/mfa_seal_key`, created once with
//! check-and-set), never in SQL: the database alone yields no seed.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use zeroize::Zeroizing;

use crate::vault::{SecretStore, VaultError};

/// The key's name among keyward's own secrets in Vault.
const SECRET: &str = "mfa_seal_key";
const NONCE_BYTES: usize = 12;

/// The deployment's seal key.
pub struct SealKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

fn associated_data(factor_id: &str, owner: &str) -> Vec<u8> {
    format!("keyward-mfa-seed-v1\0{factor_id}\0{owner}").into_bytes()
}

impl SealKey {
    pub fn from_key(key: [u8; 32]) -> Self {
        Self(Zeroizing::new(key))
    }

    /// Reads the key from Vault, creating it (32 random bytes) on the deployment's first use.
    pub async fn load_or_create(vault: &dyn SecretStore) -> Result<Self, VaultError> {
        for _ in 0..2 {
            if let Some(stored) = vault.read_internal(SECRET).await? {
                let key = stored["key"]
                    .as_str()
                    .and_then(|k| STANDARD.decode(k).ok())
                    .map(Zeroizing::new)
                    .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok());
                return match key {
                    Some(key) => Ok(Self::from_key(key)),
                    None => Err(VaultError::BadResponse {
                        operation: "reading the MFA seal key".into(),
                        reason: "no key of 32 bytes".into(),
                    }),
                };
            }
            let key = Zeroizing::new(rand::random::<[u8; 32]>());
            let text = Zeroizing::new(STANDARD.encode(*key));
            if vault
                .create_internal(SECRET, &json!({ "key": text.as_str() }))
                .await?
            {
                tracing::info!("created the MFA seal key in Vault");
                return Ok(Self::from_key(*key));
            }
        }
        Err(VaultError::BadResponse {
            operation: "creating the MFA seal key".into(),
            reason: "neither readable nor creatable".into(),
        })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.0.as_slice()).unwrap_or_else(|_| unreachable!())
    }

    /// `seed` sealed for this factor and owner: base64 of nonce, ciphertext and tag.
    pub fn seal(&self, factor_id: &str, owner: &str, seed: &[u8]) -> Option<String> {
        let nonce = rand::random::<[u8; NONCE_BYTES]>();
        let aad = associated_data(factor_id, owner);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: seed,
                    aad: &aad,
                },
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(STANDARD.encode(out))
    }

    /// The seed sealed for this factor and owner; `None` when it was sealed for another (or
    /// under another key, or altered).
    pub fn open(&self, factor_id: &str, owner: &str, sealed: &str) -> Option<Zeroizing<Vec<u8>>> {
        let raw = STANDARD.decode(sealed).ok()?;
        if raw.len() <= NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_BYTES);
        let aad = associated_data(factor_id, owner);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_opens_only_for_its_factor_and_owner_under_its_key() {
        let key = SealKey::from_key([7; 32]);
        let seed = b"12345678901234567890";
        let sealed = key.seal("mfa_1", "tenant:acme", seed).unwrap();
        assert!(!sealed.contains("MTIzNDU2Nzg5MDEyMzQ1Njc4OTA"), "in clear");
        assert_eq!(
            key.open("mfa_1", "tenant:acme", &sealed)
                .unwrap()
                .as_slice(),
            seed
        );
        assert!(key.open("mfa_1", "tenant:other", &sealed).is_none());
        assert!(key.open("mfa_2", "tenant:acme", &sealed).is_none());
        assert!(
            SealKey::from_key([8; 32])
                .open("mfa_1", "tenant:acme", &sealed)
                .is_none()
        );
        let mut raw = STANDARD.decode(&sealed).unwrap();
        *raw.last_mut().unwrap() ^= 1;
        assert!(
            key.open("mfa_1", "tenant:acme", &STANDARD.encode(raw))
                .is_none()
        );
        assert!(key.open("mfa_1", "tenant:acme", "AAAA").is_none());
        // A fresh nonce each time.
        assert_ne!(sealed, key.seal("mfa_1", "tenant:acme", seed).unwrap());
    }
}
