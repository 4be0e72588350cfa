//! Vault: where the key pairs live.
//!
//! One KV v2 secret per key set at `{mount}/{tenant_id}/{admin_ssh|tenant_ssh}` with the five
//! fields of the product document, written as one version with check-and-set. Vault's KV version
//! history is the rotation history. The control plane reaches Vault only through
//! [`SecretStore`], so the key operations can be unit-tested against a fake.
//!
//! A tenant's other secrets (`smtp`, `dkim`) are written the same way ([`secrets`]), and Vault's
//! integrated storage can be snapshotted for backups ([`snapshot`]).

mod secrets;
mod snapshot;

pub use secrets::SecretFields;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyward_common::{KeyKind, TenantId};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use vaultrs::api::kv2::requests::ReadSecretRequest;
use vaultrs::api::kv2::responses::ReadSecretResponse;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use crate::config::{AppRoleConfig, VaultConfig};

/// Why a Vault operation failed. The messages never contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Vault is sealed")]
    Sealed,
    #[error("Vault at {address} cannot be reached: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("Vault denied {operation} (check the control plane's Vault policy and token)")]
    Denied { operation: String },
    #[error("Vault refused the write of {path}: check-and-set version {cas} is not current")]
    CasMismatch { path: String, cas: u64 },
    #[error("Vault failed {operation}: HTTP {status}: {message}")]
    Failed {
        operation: String,
        status: u16,
        message: String,
    },
    #[error("Vault returned an unreadable answer for {operation}: {reason}")]
    BadResponse { operation: String, reason: String },
    #[error("Vault configuration: {0}")]
    Config(String),
    #[error("Vault login with AppRole failed: {0}")]
    Login(String),
    #[error("Vault does not use integrated (raft) storage: it has no snapshots to back up")]
    SnapshotUnsupported,
}

/// One key set as stored in Vault: exactly the fields of the product document.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeySetSecret {
    pub private_key: Zeroizing<String>,
    pub public_key: String,
    /// ISO 8601, UTC.
    pub created_at: String,
    /// ISO 8601, UTC.
    pub last_rotated: String,
    /// `"90_days"` by default.
    pub rotation_policy: String,
}

impl fmt::Debug for KeySetSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySetSecret")
            .field("private_key", &"<redacted>")
            .field("public_key", &self.public_key)
            .field("created_at", &self.created_at)
            .field("last_rotated", &self.last_rotated)
            .field("rotation_policy", &self.rotation_policy)
            .finish()
    }
}

/// A key set read back with the KV version it came from.
#[derive(Debug, Clone)]
pub struct VersionedKeySet {
    pub secret: KeySetSecret,
    pub version: u64,
}

/// KV metadata of one key set: its version history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySetVersions {
    pub current_version: u64,
    pub oldest_version: u64,
    pub created_time: String,
    pub updated_time: String,
}

/// Vault's own view of its health, read from `sys/health` and `sys/leader`.
#[derive(Debug, Clone)]
pub struct VaultHealth {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
    pub version: String,
    pub cluster_name: Option<String>,
    /// Address of the active node when Vault runs HA, else the address we talk to.
    pub active_node: String,
}

/// What the key operations need from Vault.
#[async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug {
    /// Writes one key set as one new version. `cas` is the version the caller last saw; 0 means
    /// the secret must not exist yet. Returns the new version.
    async fn write_key_set(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        secret: &KeySetSecret,
        cas: u64,
    ) -> Result<u64, VaultError>;

    /// Reads one version of a key set; `None` when it does not exist.
    async fn read_key_set(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        version: u64,
    ) -> Result<Option<VersionedKeySet>, VaultError>;

    /// The key set's KV metadata; `None` when there is none.
    async fn key_set_versions(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<Option<KeySetVersions>, VaultError>;

    async fn health(&self) -> Result<VaultHealth, VaultError>;

    /// Writes one of a tenant's other secrets (`smtp`, `dkim`) at `{mount}/{tenant_id}/{name}` as
    /// one new version, with check-and-set as [`SecretStore::write_key_set`]. Returns the version.
    async fn write_secret(
        &self,
        tenant: &TenantId,
        name: &str,
        fields: &SecretFields,
        cas: u64,
    ) -> Result<u64, VaultError>;

    /// The KV metadata of `{mount}/{tenant_id}/{name}`; `None` when there is none.
    async fn secret_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<KeySetVersions>, VaultError>;

    /// Streams a snapshot of Vault's integrated (raft) storage into `out`; returns its size.
    /// [`VaultError::SnapshotUnsupported`] when Vault uses other storage.
    async fn raft_snapshot(&self, out: &mut tokio::fs::File) -> Result<u64, VaultError>;

    /// Reads one of keyward's own secrets (the agent CA, the state signing key) at
    /// `{mount}/_keyward/{name}`. `_` cannot start a tenant id, so these never collide.
    async fn read_internal(&self, name: &str) -> Result<Option<serde_json::Value>, VaultError>;

    /// Creates one of keyward's own secrets unless it exists (check-and-set 0). Returns false
    /// when another writer created it first.
    async fn create_internal(
        &self,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<bool, VaultError>;
}

/// How the control plane authenticates to Vault.
#[derive(Clone)]
enum VaultAuth {
    Token,
    AppRole(AppRoleConfig),
}

/// The real [`SecretStore`]: vaultrs against Vault or OpenBao.
pub struct VaultStore {
    client: RwLock<VaultClient>,
    /// For `sys/health` and `sys/leader`, whose answers vaultrs 0.7 cannot parse from OpenBao.
    http: reqwest::Client,
    address: String,
    mount: String,
    auth: VaultAuth,
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

impl VaultStore {
    /// Builds the client and, with AppRole, logs in. Does not require Vault to be unsealed.
    pub async fn connect(config: &VaultConfig) -> Result<Arc<Self>, VaultError> {
        let address = config.address.trim_end_matches('/').to_owned();
        // vaultrs panics on an unparsable address; check it first.
        reqwest::Url::parse(&address)
            .map_err(|e| VaultError::Config(format!("vault.address {address:?}: {e}")))?;
        let token = match (&config.token_file, &config.token) {
            (Some(path), _) => read_secret_file(path)?,
            (None, Some(token)) => Zeroizing::new(token.clone()),
            (None, None) => Zeroizing::new(String::new()),
        };
        let auth = match &config.approle {
            Some(approle) => VaultAuth::AppRole(approle.clone()),
            None if token.is_empty() => {
                return Err(VaultError::Config(
                    "no Vault credentials: set VAULT_TOKEN, vault.token_file or vault.approle"
                        .into(),
                ));
            }
            None => VaultAuth::Token,
        };
        let ca_certs: Vec<String> = config
            .ca_file
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let settings = VaultClientSettingsBuilder::default()
            .address(&address)
            .token(token.as_str())
            .ca_certs(ca_certs)
            .timeout(Some(config.timeout))
            .verify(true)
            .build()
            .map_err(|e| VaultError::Config(e.to_string()))?;
        let client = VaultClient::new(settings).map_err(|e| VaultError::Config(e.to_string()))?;

        let mut http = reqwest::Client::builder().timeout(config.timeout);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| VaultError::Config(format!("vault.ca_file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| VaultError::Config(format!("vault.ca_file {}: {e}", ca.display())))?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .build()
            .map_err(|e| VaultError::Config(e.to_string()))?;

        let store = Arc::new(Self {
            client: RwLock::new(client),
            http,
            address,
            mount: config.mount.clone(),
            auth,
        });
        if let VaultAuth::AppRole(approle) = &store.auth {
            store.approle_login(approle).await?;
        }
        Ok(store)
    }

    fn path(tenant: &TenantId, kind: KeyKind) -> String {
        format!("{tenant}/{}", kind.secret_name())
    }

    fn map_error(
        &self,
        operation: &str,
        path: &str,
        cas: Option<u64>,
        e: ClientError,
    ) -> VaultError {
        match e {
            ClientError::APIError { code: 503, .. } => VaultError::Sealed,
            ClientError::APIError { code: 403, .. } => VaultError::Denied {
                operation: format!("{operation} {}/{path}", self.mount),
            },
            ClientError::APIError { code: 400, errors }
                if cas.is_some() && errors.iter().any(|m| m.contains("check-and-set")) =>
            {
                VaultError::CasMismatch {
                    path: format!("{}/{path}", self.mount),
                    cas: cas.unwrap_or_default(),
                }
            }
            ClientError::APIError { code, errors } => VaultError::Failed {
                operation: format!("{operation} {}/{path}", self.mount),
                status: code,
                message: errors.join("; "),
            },
            ClientError::RestClientError { source } => VaultError::Unreachable {
                address: self.address.clone(),
                reason: error_chain(&source),
            },
            other => VaultError::BadResponse {
                operation: format!("{operation} {}/{path}", self.mount),
                reason: other.to_string(),
            },
        }
    }

    async fn approle_login(&self, approle: &AppRoleConfig) -> Result<u64, VaultError> {
        let secret_id = read_secret_file(&approle.secret_id_file)?;
        let mut client = self.client.write().await;
        let auth = vaultrs::auth::approle::login(
            &*client,
            &approle.mount,
            &approle.role_id,
            secret_id.as_str(),
        )
        .await
        .map_err(|e| VaultError::Login(self.map_error("login", "", None, e).to_string()))?;
        client.set_token(&auth.client_token);
        tracing::info!(
            ttl_secs = auth.lease_duration,
            "logged in to Vault with AppRole"
        );
        Ok(auth.lease_duration)
    }

    /// Keeps the Vault token alive: renews it at two thirds of its TTL and, with AppRole, logs in
    /// again when renewal fails or the token reaches its maximum TTL. Non-expiring tokens (TTL 0)
    /// need nothing. Runs until the task is aborted.
    pub async fn keep_token_alive(self: Arc<Self>) {
        let mut ttl = match self.client.read().await.lookup().await {
            Ok(info) if info.renewable || matches!(self.auth, VaultAuth::AppRole(_)) => info.ttl,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %self.map_error("token lookup", "", None, e), "cannot read the Vault token's TTL");
                60
            }
        };
        let original_ttl = ttl.max(1);
        loop {
            if ttl == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_secs((ttl * 2 / 3).max(1))).await;
            let renewed = {
                let client = self.client.read().await;
                vaultrs::token::renew_self(&*client, None).await
            };
            ttl = match (renewed, &self.auth) {
                (Ok(auth), VaultAuth::AppRole(approle))
                    if auth.lease_duration < original_ttl / 3 =>
                {
                    self.approle_login(approle).await.unwrap_or(30)
                }
                (Ok(auth), _) => auth.lease_duration,
                (Err(e), VaultAuth::AppRole(approle)) => {
                    tracing::warn!(error = %self.map_error("token renewal", "", None, e), "renewal failed; logging in again");
                    match self.approle_login(approle).await {
                        Ok(ttl) => ttl,
                        Err(e) => {
                            tracing::error!(error = %e, "Vault login failed; retrying in 30 s");
                            45
                        }
                    }
                }
                (Err(e), VaultAuth::Token) => {
                    tracing::error!(error = %self.map_error("token renewal", "", None, e), "Vault token renewal failed; retrying in 30 s");
                    45
                }
            };
        }
    }

    async fn timed<T>(&self, op: &'static str, fut: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = fut.await;
        metrics::histogram!("keyward_vault_request_duration_seconds", "operation" => op)
            .record(started.elapsed().as_secs_f64());
        out
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value, VaultError> {
        let url = format!("{}/v1/{path}", self.address);
        let unreachable = |e: reqwest::Error| VaultError::Unreachable {
            address: self.address.clone(),
            reason: error_chain(&e),
        };
        let response = self.http.get(&url).send().await.map_err(unreachable)?;
        response.json().await.map_err(|e| VaultError::BadResponse {
            operation: format!("GET {path}"),
            reason: e.to_string(),
        })
    }
}

#[async_trait]
impl SecretStore for VaultStore {
    async fn write_key_set(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        secret: &KeySetSecret,
        cas: u64,
    ) -> Result<u64, VaultError> {
        let path = Self::path(tenant, kind);
        let options = vaultrs::api::kv2::requests::SetSecretRequestOptions {
            cas: u32::try_from(cas)
                .map_err(|_| VaultError::Config(format!("version {cas} out of range")))?,
        };
        let client = self.client.read().await;
        let written = self
            .timed(
                "write",
                vaultrs::kv2::set_with_options(&*client, &self.mount, &path, secret, options),
            )
            .await
            .map_err(|e| self.map_error("write", &path, Some(cas), e))?;
        Ok(written.version)
    }

    async fn read_key_set(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        version: u64,
    ) -> Result<Option<VersionedKeySet>, VaultError> {
        let path = Self::path(tenant, kind);
        let endpoint = ReadSecretRequest::builder()
            .mount(&self.mount)
            .path(&path)
            .version(Some(version))
            .build()
            .map_err(|e| VaultError::Config(e.to_string()))?;
        let client = self.client.read().await;
        let read: Result<ReadSecretResponse, _> = self
            .timed("read", vaultrs::api::exec_with_result(&*client, endpoint))
            .await;
        let response = match read {
            Ok(response) => response,
            Err(ClientError::APIError { code: 404, .. }) => return Ok(None),
            Err(e) => return Err(self.map_error("read", &path, None, e)),
        };
        let secret: KeySetSecret =
            serde_json::from_value(response.data).map_err(|e| VaultError::BadResponse {
                operation: format!("read {}/{path}", self.mount),
                reason: e.to_string(),
            })?;
        Ok(Some(VersionedKeySet {
            secret,
            version: response.metadata.version,
        }))
    }

    async fn key_set_versions(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<Option<KeySetVersions>, VaultError> {
        self.versions_at(&Self::path(tenant, kind)).await
    }

    async fn write_secret(
        &self,
        tenant: &TenantId,
        name: &str,
        fields: &SecretFields,
        cas: u64,
    ) -> Result<u64, VaultError> {
        self.write_at(&format!("{tenant}/{name}"), fields, cas)
            .await
    }

    async fn secret_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<KeySetVersions>, VaultError> {
        self.versions_at(&format!("{tenant}/{name}")).await
    }

    async fn raft_snapshot(&self, out: &mut tokio::fs::File) -> Result<u64, VaultError> {
        self.snapshot_into(out).await
    }

    async fn read_internal(&self, name: &str) -> Result<Option<serde_json::Value>, VaultError> {
        let path = format!("{INTERNAL_PREFIX}/{name}");
        let client = self.client.read().await;
        let read: Result<serde_json::Value, _> = self
            .timed("read", vaultrs::kv2::read(&*client, &self.mount, &path))
            .await;
        match read {
            Ok(value) => Ok(Some(value)),
            Err(ClientError::APIError { code: 404, .. }) => Ok(None),
            Err(e) => Err(self.map_error("read", &path, None, e)),
        }
    }

    async fn create_internal(
        &self,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<bool, VaultError> {
        let path = format!("{INTERNAL_PREFIX}/{name}");
        let options = vaultrs::api::kv2::requests::SetSecretRequestOptions { cas: 0 };
        let client = self.client.read().await;
        let written = self
            .timed(
                "write",
                vaultrs::kv2::set_with_options(&*client, &self.mount, &path, value, options),
            )
            .await;
        match written {
            Ok(_) => Ok(true),
            Err(e) => match self.map_error("write", &path, Some(0), e) {
                VaultError::CasMismatch { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn health(&self) -> Result<VaultHealth, VaultError> {
        // The *code parameters make every state answer 200 with a body, so one request tells all.
        let health = self
            .timed(
                "health",
                self.get_json(
                    "sys/health?standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200",
                ),
            )
            .await?;
        let flag = |name: &str| health.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
        let mut active_node = self.address.clone();
        if !flag("sealed")
            && let Ok(leader) = self.get_json("sys/leader").await
            && let Some(addr) = leader
                .get("leader_address")
                .and_then(|v| v.as_str())
                .filter(|a| !a.is_empty())
        {
            active_node = addr.to_owned();
        }
        Ok(VaultHealth {
            initialized: flag("initialized"),
            sealed: flag("sealed"),
            standby: flag("standby"),
            version: health
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            cluster_name: health
                .get("cluster_name")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            active_node,
        })
    }
}

/// Where keyward keeps its own secrets inside the mount.
const INTERNAL_PREFIX: &str = "_keyward";

fn read_secret_file(path: &PathBuf) -> Result<Zeroizing<String>, VaultError> {
    let raw = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| VaultError::Config(format!("cannot read {}: {e}", path.display())))?,
    );
    Ok(Zeroizing::new(raw.trim().to_owned()))
}

/// An error and its causes, `outer: inner: innermost`: "error sending request" alone does not
/// say that the certificate was refused.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
