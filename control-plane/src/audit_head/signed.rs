//! A signed head: "event `seq` of the audit chain had `hash`", signed at `signedAt` with a
//! version of the transit key; and the public keys that check it.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

/// What the transit key signs: domain-separated text, one field a line.
pub fn message(seq: i64, hash: &str, signed_at: &str) -> Vec<u8> {
    format!("keyward-audit-head-v1\nseq={seq}\nhash={hash}\nsignedAt={signed_at}\n").into_bytes()
}

/// A signed head, as the `audit.head.signed` event's detail and the checkpoint in Vault hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedHead {
    /// The event the signature vouches for (0: the empty chain).
    pub seq: i64,
    /// That event's hash (the genesis hash for 0).
    pub hash: String,
    /// When it was signed (RFC 3339).
    pub signed_at: String,
    /// The transit key's version that signed it.
    pub key_version: u32,
    /// The Ed25519 signature of [`message`], base64.
    pub signature: String,
}

impl SignedHead {
    /// Whether the signature holds under `keys`.
    pub fn verify(&self, keys: &HeadKeys) -> Result<(), String> {
        let key = keys.0.get(&self.key_version).ok_or_else(|| {
            format!(
                "signed with key version {}, which the public keys do not hold",
                self.key_version
            )
        })?;
        let raw = STANDARD
            .decode(&self.signature)
            .map_err(|_| "the signature is not base64".to_owned())?;
        let signature =
            Signature::from_slice(&raw).map_err(|_| "the signature is not 64 bytes".to_owned())?;
        key.verify(&message(self.seq, &self.hash, &self.signed_at), &signature)
            .map_err(|_| "the signature does not verify".to_owned())
    }
}

/// The transit key's public keys, by version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadKeys(BTreeMap<u32, VerifyingKey>);

/// The public keys as a file (`keyward-server audit head-keys` writes it, `verify-bundle --keys`
/// reads it): where the key is and each version's key, base64.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeadKeysFile {
    pub key: String,
    pub public_keys: BTreeMap<u32, String>,
}

impl HeadKeys {
    /// Keys as Vault's transit engine gives them.
    pub fn from_raw(raw: &BTreeMap<u32, [u8; 32]>) -> Result<Self, String> {
        raw.iter()
            .map(|(version, bytes)| {
                VerifyingKey::from_bytes(bytes)
                    .map(|key| (*version, key))
                    .map_err(|_| format!("key version {version} is not an Ed25519 public key"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Keys read from a [`HeadKeysFile`].
    pub fn from_file(file: &HeadKeysFile) -> Result<Self, String> {
        let raw = file
            .public_keys
            .iter()
            .map(|(version, encoded)| {
                STANDARD
                    .decode(encoded)
                    .ok()
                    .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
                    .map(|raw| (*version, raw))
                    .ok_or_else(|| format!("key version {version} is not 32 bytes of base64"))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        if raw.is_empty() {
            return Err("the file holds no public key".into());
        }
        Self::from_raw(&raw)
    }

    /// The file form, naming the key `key`.
    pub fn to_file(&self, key: String) -> HeadKeysFile {
        HeadKeysFile {
            key,
            public_keys: self
                .0
                .iter()
                .map(|(version, k)| (*version, STANDARD.encode(k.as_bytes())))
                .collect(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    /// A head signed with `key` (version 1), as the transit engine would sign it.
    pub fn signed(key: &SigningKey, seq: i64, hash: &str, signed_at: &str) -> SignedHead {
        SignedHead {
            seq,
            hash: hash.into(),
            signed_at: signed_at.into(),
            key_version: 1,
            signature: STANDARD.encode(key.sign(&message(seq, hash, signed_at)).to_bytes()),
        }
    }

    pub fn keys_of(key: &SigningKey) -> HeadKeys {
        HeadKeys::from_raw(&BTreeMap::from([(1, key.verifying_key().to_bytes())])).unwrap()
    }

    #[test]
    fn a_signed_head_verifies_and_any_change_breaks_it() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let keys = keys_of(&key);
        let head = signed(&key, 42, "ab", "2026-12-07T10:00:00Z");
        head.verify(&keys).unwrap();
        for changed in [
            SignedHead {
                seq: 41,
                ..head.clone()
            },
            SignedHead {
                hash: "ac".into(),
                ..head.clone()
            },
            SignedHead {
                signed_at: "2026-12-07T11:00:00Z".into(),
                ..head.clone()
            },
        ] {
            assert_eq!(
                changed.verify(&keys).unwrap_err(),
                "the signature does not verify"
            );
        }
        let other = keys_of(&SigningKey::from_bytes(&[6; 32]));
        assert!(head.verify(&other).is_err(), "another key");
        let unknown = SignedHead {
            key_version: 2,
            ..head.clone()
        };
        assert!(unknown.verify(&keys).unwrap_err().contains("version 2"));

        let file = keys.to_file("transit/keys/k".into());
        assert_eq!(HeadKeys::from_file(&file).unwrap(), keys);
        let empty = HeadKeysFile {
            key: "k".into(),
            public_keys: BTreeMap::new(),
        };
        assert!(HeadKeys::from_file(&empty).is_err());
    }
}
