//! The audit chain's head in Vault (`audit_head` keeps it): a key of the transit engine signs it,
//! and the newest signed head is kept as a checkpoint at `{mount}/_keyward/audit_head`, out of
//! reach of anyone who holds only the database.
//!
//! The calls (checked against OpenBao 2.x's transit engine):
//! * `POST {transit}/sign/{key}` with `input` (base64): `data.signature` is `vault:v{N}:` and the
//!   base64 signature, `data.key_version` N. Ed25519 signs deterministically, so a signature
//!   repeated on another node after a lost answer is the same one.
//! * `GET {transit}/keys/{key}`: `data.type` (`ed25519`) and `data.keys`, each version's
//!   `public_key` (base64 of the 32 bytes).
//! * The checkpoint is a KV v2 secret read with its version (`GET {mount}/data/...`) and written
//!   with check-and-set, so that replicas never move it back.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::{INTERNAL_PREFIX, VaultError, VaultStore};

/// The checkpoint's name among keyward's own secrets.
const CHECKPOINT: &str = "audit_head";

/// A transit signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitSignature {
    pub key_version: u32,
    /// The raw Ed25519 signature (64 bytes).
    pub signature: Vec<u8>,
}

/// The checkpoint as stored, with its KV version (for check-and-set).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    pub value: Value,
    pub version: u64,
}

/// What signing the audit head needs from Vault.
#[async_trait]
pub trait AuditHeadVault: Send + Sync + fmt::Debug {
    /// Signs `message` with the transit key.
    async fn sign(&self, message: &[u8]) -> Result<TransitSignature, VaultError>;

    /// Every version of the transit key: its Ed25519 public key (32 bytes).
    async fn public_keys(&self) -> Result<BTreeMap<u32, [u8; 32]>, VaultError>;

    /// The checkpoint; `None` before the first.
    async fn read_checkpoint(&self) -> Result<Option<StoredCheckpoint>, VaultError>;

    /// Writes the checkpoint with check-and-set `cas` (0: there must be none yet). False when
    /// another writer was first (or a repeat of this write after a lost answer found it done).
    async fn write_checkpoint(&self, value: &Value, cas: u64) -> Result<bool, VaultError>;

    /// Where the key is, for messages: `{transit}/keys/{key}`.
    fn key_path(&self) -> String;
}

/// [`AuditHeadVault`] over the real Vault.
#[derive(Debug, Clone)]
pub struct TransitHeadKey {
    vault: Arc<VaultStore>,
    transit_mount: String,
    key: String,
}

impl VaultStore {
    /// The audit head's key `key` in the transit engine at `transit_mount`, and its checkpoint.
    pub fn audit_head_key(self: &Arc<Self>, transit_mount: &str, key: &str) -> TransitHeadKey {
        TransitHeadKey {
            vault: self.clone(),
            transit_mount: transit_mount.to_owned(),
            key: key.to_owned(),
        }
    }
}

impl TransitHeadKey {
    fn checkpoint_path(&self) -> String {
        format!("{}/data/{INTERNAL_PREFIX}/{CHECKPOINT}", self.vault.mount)
    }

    fn missing_key(&self, operation: String) -> VaultError {
        VaultError::Failed {
            operation,
            status: 404,
            message: format!(
                "no transit key {:?} at mount {:?} (see packaging/vault/README.md)",
                self.key, self.transit_mount
            ),
        }
    }
}

#[async_trait]
impl AuditHeadVault for TransitHeadKey {
    async fn sign(&self, message: &[u8]) -> Result<TransitSignature, VaultError> {
        let path = format!("{}/sign/{}", self.transit_mount, self.key);
        let body = json!({ "input": STANDARD.encode(message) });
        let answer = self
            .vault
            .on_cluster("transit_sign", |_, node| {
                let (path, body) = (&path, &body);
                async move {
                    self.vault
                        .json_call(node, reqwest::Method::POST, path, Some(body))
                        .await
                }
            })
            .await?
            .ok_or_else(|| self.missing_key(format!("POST {path}")))?;
        parse_signature(&answer["data"]).map_err(|reason| VaultError::BadResponse {
            operation: format!("POST {path}"),
            reason,
        })
    }

    async fn public_keys(&self) -> Result<BTreeMap<u32, [u8; 32]>, VaultError> {
        let path = format!("{}/keys/{}", self.transit_mount, self.key);
        let answer = self
            .vault
            .on_cluster("transit_keys", |_, node| {
                let path = &path;
                async move {
                    self.vault
                        .json_call(node, reqwest::Method::GET, path, None)
                        .await
                }
            })
            .await?
            .ok_or_else(|| self.missing_key(format!("GET {path}")))?;
        parse_public_keys(&answer["data"]).map_err(|reason| VaultError::BadResponse {
            operation: format!("GET {path}"),
            reason,
        })
    }

    async fn read_checkpoint(&self) -> Result<Option<StoredCheckpoint>, VaultError> {
        let path = self.checkpoint_path();
        let answer = self
            .vault
            .on_cluster("read", |_, node| {
                let path = &path;
                async move {
                    self.vault
                        .json_call(node, reqwest::Method::GET, path, None)
                        .await
                }
            })
            .await?;
        let Some(answer) = answer else {
            return Ok(None);
        };
        let data = &answer["data"];
        if data["data"].is_null() {
            // A deleted latest version reads as none.
            return Ok(None);
        }
        let version =
            data["metadata"]["version"]
                .as_u64()
                .ok_or_else(|| VaultError::BadResponse {
                    operation: format!("GET {path}"),
                    reason: "no metadata.version in the answer".into(),
                })?;
        Ok(Some(StoredCheckpoint {
            value: data["data"].clone(),
            version,
        }))
    }

    async fn write_checkpoint(&self, value: &Value, cas: u64) -> Result<bool, VaultError> {
        let path = self.checkpoint_path();
        let body = json!({ "options": { "cas": cas }, "data": value });
        let written = self
            .vault
            .on_cluster("write", |_, node| {
                let (path, body) = (&path, &body);
                async move {
                    self.vault
                        .json_call(node, reqwest::Method::POST, path, Some(body))
                        .await
                }
            })
            .await;
        match written {
            Ok(_) => Ok(true),
            Err(VaultError::Failed {
                status: 400,
                message,
                ..
            }) if message.contains("check-and-set") => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn key_path(&self) -> String {
        format!("{}/keys/{}", self.transit_mount, self.key)
    }
}

/// The signature of a `sign` answer's `data`.
fn parse_signature(data: &Value) -> Result<TransitSignature, String> {
    let text = data["signature"]
        .as_str()
        .ok_or("no signature in the answer")?;
    let mut parts = text.splitn(3, ':');
    let (Some("vault"), Some(version), Some(encoded)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("the signature is not vault:vN:BASE64".into());
    };
    let key_version = version
        .strip_prefix('v')
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or("the signature's key version is not vN")?;
    let signature = STANDARD
        .decode(encoded)
        .map_err(|e| format!("the signature is not base64: {e}"))?;
    if signature.len() != 64 {
        return Err(format!(
            "the signature has {} bytes, not Ed25519's 64 (is the key ed25519?)",
            signature.len()
        ));
    }
    Ok(TransitSignature {
        key_version,
        signature,
    })
}

/// The public keys of a `keys` answer's `data`.
fn parse_public_keys(data: &Value) -> Result<BTreeMap<u32, [u8; 32]>, String> {
    if data["type"].as_str() != Some("ed25519") {
        return Err(format!(
            "the transit key is of type {}, not ed25519",
            data["type"]
        ));
    }
    let versions = data["keys"].as_object().ok_or("no keys in the answer")?;
    let mut keys = BTreeMap::new();
    for (version, key) in versions {
        let version: u32 = version
            .parse()
            .map_err(|_| format!("key version {version:?} is not a number"))?;
        let encoded = key["public_key"]
            .as_str()
            .ok_or_else(|| format!("key version {version} has no public_key"))?;
        let raw: [u8; 32] = STANDARD
            .decode(encoded)
            .ok()
            .and_then(|raw| raw.try_into().ok())
            .ok_or_else(|| format!("key version {version}'s public_key is not 32 bytes"))?;
        keys.insert(version, raw);
    }
    if keys.is_empty() {
        return Err("the transit key has no versions".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_answers_are_read_and_bad_ones_refused() {
        let sig = STANDARD.encode([7u8; 64]);
        let parsed = parse_signature(&json!({ "signature": format!("vault:v3:{sig}") })).unwrap();
        assert_eq!(parsed.key_version, 3);
        assert_eq!(parsed.signature, vec![7u8; 64]);
        for bad in [
            json!({}),
            json!({ "signature": format!("v3:{sig}") }),
            json!({ "signature": format!("vault:3:{sig}") }),
            json!({ "signature": "vault:v1:!!" }),
            json!({ "signature": format!("vault:v1:{}", STANDARD.encode([1u8; 32])) }),
        ] {
            assert!(parse_signature(&bad).is_err(), "{bad}");
        }

        let key = STANDARD.encode([9u8; 32]);
        let keys = parse_public_keys(&json!({
            "type": "ed25519",
            "keys": { "1": { "public_key": key }, "2": { "public_key": key } },
        }))
        .unwrap();
        assert_eq!(keys.keys().copied().collect::<Vec<_>>(), [1, 2]);
        let rsa = parse_public_keys(&json!({ "type": "rsa-4096", "keys": {} })).unwrap_err();
        assert!(rsa.contains("not ed25519"), "{rsa}");
        assert!(parse_public_keys(&json!({ "type": "ed25519", "keys": {} })).is_err());
        assert!(
            parse_public_keys(&json!({
                "type": "ed25519",
                "keys": { "1": { "public_key": STANDARD.encode([1u8; 31]) } },
            }))
            .is_err()
        );
    }
}
