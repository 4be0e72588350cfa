//! The SSH certificate authority lives in Vault: OpenBao's (or Vault's) SSH secrets engine, at
//! `vault.ssh_mount`, signs user certificates with a role that names its issuer. The CA private key
//! never leaves Vault; keyward keeps the policy (who may get which principal for how long), the
//! serials, the audit and the revocation list. CA rotation is the engine's several issuers: every
//! issuer's public key is trusted ([`CertificateAuthority::ca_public_keys`]) while the roles sign
//! with one of them.
//!
//! The calls (the engine's API, checked against OpenBao 2.7):
//! * `POST {ssh_mount}/sign/{role}` with `public_key`, `cert_type=user`, `key_id` (the role needs
//!   `allow_user_key_ids=true`), `valid_principals` (comma-separated), `ttl` and `extensions`;
//!   the answer holds `signed_key`, `serial_number` (hexadecimal) and `issuer_id`. The issuer is
//!   the role's `issuer_ref`: the sign call cannot choose one.
//! * `LIST {ssh_mount}/issuers`: every issuer's id, name, public key and whether it is the
//!   default, in one answer. Several issuers are OpenBao's (2.0 and later); HashiCorp Vault's
//!   engine has one CA and no `issuers` paths: there this call answers 404, and the one CA key is
//!   read from `GET {ssh_mount}/public_key` (plain text; a 404 there too means no CA).
//!
//! A request is checked before it is sent ([`UserCertificateRequest`]), and the certificate that
//! comes back is read and held against it ([`issued`]): a Vault that signs anything else (another
//! key, key id, principal set, extension set, a longer validity) is an error.
//!
//! Signing is not idempotent, and yet a sign whose answer was lost (the active node died,
//! the connection broke) is repeated on the next active node like every other operation: the
//! repeat yields a second certificate, with another serial, for the same key, key id and
//! principals. That is harmless because the first one reached nobody (Vault keeps no copy of what
//! it signs, and its audit device stores only HMACs of answers), because keyward records and hands
//! out only the certificate it received, and because revocation by key id covers the lost twin.

mod issued;
mod request;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{Value, json};

pub use issued::SignedCertificate;
pub use request::{
    CertificateRequestError, Extension, MAX_PRINCIPALS, MAX_VALIDITY, MIN_VALIDITY,
    UserCertificateRequest,
};

use super::{VaultError, VaultStore};

/// One CA key the engine signs with or may sign with: hosts trust all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPublicKey {
    pub issuer_id: String,
    /// The issuer's name, when it has one.
    pub issuer_name: Option<String>,
    /// Whether it is the mount's default issuer (the one a role with `issuer_ref=default` uses).
    pub is_default: bool,
    /// OpenSSH form, without a comment.
    pub public_key: String,
}

/// What keyward needs from an SSH certificate authority.
#[async_trait]
pub trait CertificateAuthority: Send + Sync + fmt::Debug {
    /// Signs one user certificate as `request` says, and checks that what was signed is that.
    async fn sign_user_certificate(
        &self,
        request: &UserCertificateRequest,
    ) -> Result<SignedCertificate, VaultError>;

    /// Every CA public key hosts must trust: the default issuer's first, then the others (the
    /// next CA during a rotation, the previous one until its certificates have expired).
    async fn ca_public_keys(&self) -> Result<Vec<CaPublicKey>, VaultError>;
}

#[async_trait]
impl CertificateAuthority for VaultStore {
    async fn sign_user_certificate(
        &self,
        request: &UserCertificateRequest,
    ) -> Result<SignedCertificate, VaultError> {
        let path = format!("{}/sign/{}", self.ssh_mount, request.role());
        let extensions: serde_json::Map<String, Value> = request
            .extensions()
            .iter()
            .map(|e| (e.name().to_owned(), Value::String(String::new())))
            .collect();
        let principals: Vec<&str> = request.principals().iter().map(|p| p.as_str()).collect();
        let body = json!({
            "public_key": request.public_key_openssh(),
            "cert_type": "user",
            "key_id": request.key_id(),
            "valid_principals": principals.join(","),
            "ttl": format!("{}s", request.validity().as_secs()),
            "extensions": extensions,
        });
        // Repeated on another node after a lost answer: see the module's documentation.
        let signed = self
            .on_cluster("ssh_sign", |_, node| {
                let (path, body) = (&path, &body);
                async move {
                    let sent = unix_now();
                    let answer = self
                        .json_call(node, reqwest::Method::POST, path, Some(body))
                        .await?
                        .ok_or_else(|| not_found(path))?;
                    let received = unix_now();
                    let bad = |reason: String| VaultError::BadResponse {
                        operation: format!("POST {path}"),
                        reason,
                    };
                    let data = &answer["data"];
                    let field = |name: &str| {
                        data[name]
                            .as_str()
                            .ok_or_else(|| bad(format!("no {name} in the answer")))
                    };
                    issued::check(
                        request,
                        field("signed_key")?,
                        field("serial_number")?,
                        data["issuer_id"].as_str().unwrap_or_default(),
                        (sent, received),
                    )
                    .map_err(|reason| bad(format!("Vault signed something else: {reason}")))
                }
            })
            .await?;
        tracing::info!(
            serial = signed.serial,
            key_id = %signed.key_id,
            issuer = %signed.issuer_id,
            valid_before = signed.valid_before,
            "Vault signed an SSH user certificate"
        );
        Ok(signed)
    }

    async fn ca_public_keys(&self) -> Result<Vec<CaPublicKey>, VaultError> {
        let path = format!("{}/issuers?list=true", self.ssh_mount);
        let answer = self
            .on_cluster("ssh_issuers", |_, node| {
                let path = &path;
                async move { self.json_call(node, reqwest::Method::GET, path, None).await }
            })
            .await?;
        // No issuer at all, or HashiCorp Vault's engine (one CA, no issuers paths): LIST answers
        // 404, and the mount's one CA key, if any, is at `public_key`.
        let Some(answer) = answer else {
            return self.single_ca_key().await;
        };
        parse_issuers(&answer["data"]).map_err(|reason| VaultError::BadResponse {
            operation: format!("LIST {}/issuers", self.ssh_mount),
            reason,
        })
    }
}

impl VaultStore {
    /// The mount's one CA key (`GET {ssh_mount}/public_key`, plain text), as HashiCorp Vault's
    /// engine keeps it; none when there is no mount (404) or it has no CA (400).
    async fn single_ca_key(&self) -> Result<Vec<CaPublicKey>, VaultError> {
        let path = format!("{}/public_key", self.ssh_mount);
        let text = self
            .on_cluster("ssh_public_key", |_, node| {
                let path = &path;
                async move { self.text_call(node, reqwest::Method::GET, path, None).await }
            })
            .await;
        let text = match text {
            Ok(Some(text)) => text,
            // No such mount (404), or a mount without a CA (OpenBao: 400 "no default issuer
            // currently configured"; Vault: 400 too).
            Ok(None) | Err(VaultError::Failed { status: 400, .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        single_key(&text).map_err(|reason| VaultError::BadResponse {
            operation: format!("GET {path}"),
            reason,
        })
    }
}

fn not_found(path: &str) -> VaultError {
    VaultError::Failed {
        operation: format!("POST {path}"),
        status: 404,
        message: "no such SSH secrets engine mount or role (see packaging/vault/README.md)".into(),
    }
}

/// The issuers of a `LIST {ssh_mount}/issuers` answer's `data`: default first, then by id.
fn parse_issuers(data: &Value) -> Result<Vec<CaPublicKey>, String> {
    let Some(info) = data["key_info"].as_object() else {
        return Err("no key_info in the answer".into());
    };
    let mut keys = Vec::with_capacity(info.len());
    for (id, issuer) in info {
        let text = issuer["public_key"]
            .as_str()
            .ok_or_else(|| format!("issuer {id} has no public_key"))?;
        let key = ssh_key::PublicKey::from_openssh(text.trim())
            .map_err(|e| format!("issuer {id}'s public_key: {e}"))?;
        let public_key = ssh_key::PublicKey::from(key.key_data().clone())
            .to_openssh()
            .map_err(|e| format!("issuer {id}'s public_key: {e}"))?;
        keys.push(CaPublicKey {
            issuer_id: id.clone(),
            issuer_name: issuer["issuer_name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            is_default: issuer["is_default"].as_bool().unwrap_or(false),
            public_key,
        });
    }
    keys.sort_by(|a, b| {
        b.is_default
            .cmp(&a.is_default)
            .then_with(|| a.issuer_id.cmp(&b.issuer_id))
    });
    Ok(keys)
}

/// The one CA key of a `GET {ssh_mount}/public_key` answer (OpenSSH form, maybe with a comment
/// and a newline).
fn single_key(text: &str) -> Result<Vec<CaPublicKey>, String> {
    let key = ssh_key::PublicKey::from_openssh(text.trim())
        .map_err(|e| format!("the CA's public_key: {e}"))?;
    let public_key = ssh_key::PublicKey::from(key.key_data().clone())
        .to_openssh()
        .map_err(|e| format!("the CA's public_key: {e}"))?;
    Ok(vec![CaPublicKey {
        issuer_id: "default".into(),
        issuer_name: None,
        is_default: true,
        public_key,
    }])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKpEHp269E+4ixcICHqfs5XWIoLHIo1uUdUfrhJBcKh8";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJAazAlxvot4u8nd6Ay+ol38JrEpBA9VpdXBcnv5KBCk";

    #[test]
    fn issuers_are_read_default_first() {
        // OpenBao 2.7's answer to LIST ssh/issuers.
        let data = json!({
            "key_info": {
                "02d698a6": { "is_default": false, "issuer_name": "", "public_key": format!("{KEY_A}\n") },
                "c27284af": { "is_default": true, "issuer_name": "next", "public_key": format!("{KEY_B}\n") },
            },
            "keys": ["02d698a6", "c27284af"],
        });
        let keys = parse_issuers(&data).unwrap();
        assert_eq!(
            keys,
            [
                CaPublicKey {
                    issuer_id: "c27284af".into(),
                    issuer_name: Some("next".into()),
                    is_default: true,
                    public_key: KEY_B.into(),
                },
                CaPublicKey {
                    issuer_id: "02d698a6".into(),
                    issuer_name: None,
                    is_default: false,
                    public_key: KEY_A.into(),
                },
            ]
        );
        let bad = json!({ "key_info": { "x": { "public_key": "ssh-ed25519 !!" } } });
        assert!(parse_issuers(&bad).unwrap_err().contains("issuer x"));
        assert!(parse_issuers(&json!({})).is_err());
    }

    #[test]
    fn a_single_ca_key_is_read_without_its_comment() {
        let keys = single_key(&format!("{KEY_A} vault-ca\n")).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].public_key, KEY_A);
        assert!(keys[0].is_default);
        assert!(single_key("<html>not found</html>").is_err());
    }
}
