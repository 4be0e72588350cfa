//! The Ed25519 key that signs desired states, kept in Vault at `{mount}/_keyward/state_signing`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use keyward_common::proto::{DesiredState, SignedState};
use serde_json::json;
use zeroize::Zeroizing;

use super::AgentTrustError;
use crate::vault::SecretStore;

const SECRET: &str = "state_signing";

pub struct StateSigner {
    key: SigningKey,
}

impl fmt::Debug for StateSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateSigner")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl StateSigner {
    pub async fn load_or_create(vault: &dyn SecretStore) -> Result<Self, AgentTrustError> {
        for _ in 0..2 {
            if let Some(stored) = vault.read_internal(SECRET).await? {
                return Self::from_stored(&stored);
            }
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let seed = Zeroizing::new(STANDARD.encode(key.to_bytes()));
            if vault
                .create_internal(SECRET, &json!({ "ed25519_seed": seed.as_str() }))
                .await?
            {
                tracing::info!("created the state signing key in Vault");
                return Ok(Self { key });
            }
            // Another replica created it first: read theirs.
        }
        Err(AgentTrustError::Corrupt {
            what: "state signing key",
            detail: "neither readable nor creatable".into(),
        })
    }

    fn from_stored(stored: &serde_json::Value) -> Result<Self, AgentTrustError> {
        let corrupt = |detail: &str| AgentTrustError::Corrupt {
            what: "state signing key",
            detail: detail.to_owned(),
        };
        let seed = stored["ed25519_seed"]
            .as_str()
            .ok_or_else(|| corrupt("no ed25519_seed field"))?;
        let bytes = Zeroizing::new(STANDARD.decode(seed).map_err(|_| corrupt("not base64"))?);
        let seed: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("not 32 bytes"))?;
        Ok(Self {
            key: SigningKey::from_bytes(seed),
        })
    }

    pub fn sign(&self, state: &DesiredState) -> SignedState {
        keyward_common::signing::sign_state(&self.key, state)
    }

    /// The public key agents pin at enrollment, base64.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }
}
