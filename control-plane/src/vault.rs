//! Vault: where the key pairs live.
//!
//! One KV v2 secret per key set at `{mount}/{tenant_id}/{admin_ssh|tenant_ssh}` with the five
//! fields of the product document, written as one version with check-and-set. Vault's KV version
//! history is the rotation history. The control plane reaches Vault only through
//! [`SecretStore`], so the key operations can be unit-tested against a fake.
//!
//! A tenant's other secrets (`smtp`, `dkim`) are written the same way ([`secrets`]), and Vault's
//! integrated storage can be snapshotted for backups ([`snapshot`]).
//!
//! The SSH certificate authority is Vault's SSH secrets engine ([`ssh_ca`]): it signs user
//! certificates with keyward's role, its CA keys never leave Vault.
//!
//! Vault may be an HA cluster given as several addresses: keyward talks to its active node and
//! follows it through leader changes ([`failover`]), settling check-and-set writes whose answer
//! was lost ([`lost_write`]); the health shows every node ([`nodes`]).

mod audit_head;
#[cfg(test)]
mod cluster_tests;
mod erase;
mod failover;
mod http;
mod lost_write;
mod nodes;
mod secrets;
mod snapshot;
mod ssh_ca;

pub use audit_head::{AuditHeadVault, StoredCheckpoint, TransitHeadKey, TransitSignature};
pub use nodes::VaultNodeHealth;
pub use secrets::SecretFields;
pub use ssh_ca::{
    CaPublicKey, CertificateAuthority, CertificateRequestError, Extension, MAX_PRINCIPALS,
    MAX_VALIDITY, MIN_VALIDITY, SignedCertificate, UserCertificateRequest,
};

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyward_common::{KeyKind, KeyOrigin, TenantId};
use serde::{Deserialize, Serialize};
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::api::kv2::responses::ReadSecretResponse;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use crate::config::{AppRoleConfig, VaultConfig};
use failover::{Failover, Found};

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
    #[serde(default, skip_serializing_if = "no_private_key")]
    pub private_key: Zeroizing<String>,
    pub public_key: String,
    /// ISO 8601, UTC.
    pub created_at: String,
    /// ISO 8601, UTC.
    pub last_rotated: String,
    /// `"90_days"` by default.
    pub rotation_policy: String,
    /// `registered`: the owner brought the public key, and `private_key` is empty (and not
    /// written). Absent for a generated key.
    #[serde(default, skip_serializing_if = "KeyOrigin::is_generated")]
    pub origin: KeyOrigin,
}

/// A registered key set's secret holds no private key: the field is left out of Vault.
fn no_private_key(key: &Zeroizing<String>) -> bool {
    key.is_empty()
}

impl fmt::Debug for KeySetSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySetSecret")
            .field("private_key", &"<redacted>")
            .field("public_key", &self.public_key)
            .field("created_at", &self.created_at)
            .field("last_rotated", &self.last_rotated)
            .field("rotation_policy", &self.rotation_policy)
            .field("origin", &self.origin)
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

/// Vault's own view of its health, read from `sys/health` and `sys/leader`: the active node's
/// (or, with none active, the first node that answered), and every node's.
#[derive(Debug, Clone)]
pub struct VaultHealth {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
    pub version: String,
    pub cluster_name: Option<String>,
    /// Address of the active node when Vault runs HA, else the address we talk to.
    pub active_node: String,
    /// Every configured node, in the configured order.
    pub nodes: Vec<VaultNodeHealth>,
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

    /// Every secret under `{mount}/{tenant_id}/` (one in a sub-folder as `folder/name`),
    /// sorted; empty when there is none.
    async fn tenant_secret_names(&self, tenant: &TenantId) -> Result<Vec<String>, VaultError>;

    /// Destroys `{mount}/{tenant_id}/{name}`: every version and its metadata (offboarding).
    /// Done, not an error, when it does not exist.
    async fn destroy_tenant_secret(&self, tenant: &TenantId, name: &str) -> Result<(), VaultError>;
}

/// How the control plane authenticates to Vault.
#[derive(Clone)]
enum VaultAuth {
    Token,
    AppRole(AppRoleConfig),
}

/// The real [`SecretStore`]: vaultrs against Vault or OpenBao, one node or an HA cluster.
pub struct VaultStore {
    /// One client per node address (vaultrs binds a client to one address), all with the same
    /// token. Replaced as a whole when the token changes.
    clients: std::sync::RwLock<Vec<Arc<VaultClient>>>,
    /// For `sys/health` and `sys/leader`, whose answers vaultrs 0.7 cannot parse from OpenBao.
    http: reqwest::Client,
    addresses: Vec<String>,
    failover: Failover,
    /// How long a look at the nodes waits for one node.
    probe_timeout: Duration,
    mount: String,
    /// The SSH secrets engine's mount ([`ssh_ca`]).
    ssh_mount: String,
    auth: VaultAuth,
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("addresses", &self.addresses)
            .field("mount", &self.mount)
            .field("ssh_mount", &self.ssh_mount)
            .finish_non_exhaustive()
    }
}

impl VaultStore {
    /// Builds the client and, with AppRole, logs in. Does not require Vault to be unsealed.
    pub async fn connect(config: &VaultConfig) -> Result<Arc<Self>, VaultError> {
        let addresses: Vec<String> = config
            .node_addresses()
            .iter()
            .map(|a| a.trim_end_matches('/').to_owned())
            .collect();
        for address in &addresses {
            // vaultrs panics on an unparsable address; check it first.
            reqwest::Url::parse(address)
                .map_err(|e| VaultError::Config(format!("vault address {address:?}: {e}")))?;
        }
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
        let mut clients = Vec::with_capacity(addresses.len());
        for address in &addresses {
            let settings = VaultClientSettingsBuilder::default()
                .address(address)
                .token(token.as_str())
                .ca_certs(ca_certs.clone())
                .timeout(Some(config.timeout))
                .verify(true)
                .build()
                .map_err(|e| VaultError::Config(e.to_string()))?;
            let client =
                VaultClient::new(settings).map_err(|e| VaultError::Config(e.to_string()))?;
            clients.push(Arc::new(client));
        }

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
            clients: std::sync::RwLock::new(clients),
            http,
            failover: Failover::new(addresses.len(), config.failover_timeout),
            probe_timeout: config.timeout.min(Duration::from_secs(3)),
            addresses,
            mount: config.mount.clone(),
            ssh_mount: config.ssh_mount.clone(),
            auth,
        });
        if store.addresses.len() > 1
            && let Found::Active(node) = store.look().await
        {
            store.failover.settle_on(node);
        }
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
        node: usize,
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
                address: self.address(node).to_owned(),
                reason: error_chain(&source),
            },
            other => VaultError::BadResponse {
                operation: format!("{operation} {}/{path}", self.mount),
                reason: other.to_string(),
            },
        }
    }

    /// The address of node `node`.
    fn address(&self, node: usize) -> &str {
        self.addresses.get(node).map_or("", String::as_str)
    }

    /// The client of node `node`.
    fn client(&self, node: usize) -> Arc<VaultClient> {
        let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
        let node = node.min(clients.len().saturating_sub(1));
        Arc::clone(&clients[node])
    }

    /// The token every node's client uses.
    fn token(&self) -> Zeroizing<String> {
        Zeroizing::new(self.client(0).settings.token.clone())
    }

    /// Gives every node's client `token`.
    fn set_token(&self, token: &str) -> Result<(), VaultError> {
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        let mut renewed = Vec::with_capacity(clients.len());
        for client in clients.iter() {
            let mut settings = client.settings.clone();
            settings.token = token.to_owned();
            renewed.push(Arc::new(
                VaultClient::new(settings).map_err(|e| VaultError::Config(e.to_string()))?,
            ));
        }
        *clients = renewed;
        Ok(())
    }

    /// One look at every node.
    async fn look(&self) -> Found {
        nodes::found(&nodes::probe_all(&self.http, &self.addresses, self.probe_timeout).await)
    }

    /// Runs `op` (timed as `operation`) with the client of the node keyward talks to, following
    /// the cluster through failures ([`failover`]). Only for operations that are safe to repeat
    /// (an SSH signature is: [`ssh_ca`]).
    async fn on_cluster<T, Op, Fut>(
        &self,
        operation: &'static str,
        mut op: Op,
    ) -> Result<T, VaultError>
    where
        Op: FnMut(Arc<VaultClient>, usize) -> Fut,
        Fut: Future<Output = Result<T, VaultError>>,
    {
        self.failover
            .run(
                |node| self.timed(operation, op(self.client(node), node)),
                || self.look(),
            )
            .await
    }

    async fn approle_login(&self, approle: &AppRoleConfig) -> Result<u64, VaultError> {
        let secret_id = read_secret_file(&approle.secret_id_file)?;
        // Logging in again is harmless: whichever node answers, the token is the cluster's.
        let auth = self
            .on_cluster("login", |client, node| {
                let secret_id = &secret_id;
                async move {
                    vaultrs::auth::approle::login(
                        &*client,
                        &approle.mount,
                        &approle.role_id,
                        secret_id.as_str(),
                    )
                    .await
                    .map_err(|e| self.map_error(node, "login", "", None, e))
                }
            })
            .await
            .map_err(|e| VaultError::Login(e.to_string()))?;
        self.set_token(&auth.client_token)?;
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
        let store: &Self = &self;
        let lookup = store
            .on_cluster("token_lookup", |client, node| async move {
                client
                    .lookup()
                    .await
                    .map_err(|e| store.map_error(node, "token lookup", "", None, e))
            })
            .await;
        let mut ttl = match lookup {
            Ok(info) if info.renewable || matches!(self.auth, VaultAuth::AppRole(_)) => info.ttl,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Vault token's TTL");
                60
            }
        };
        let original_ttl = ttl.max(1);
        loop {
            if ttl == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_secs((ttl * 2 / 3).max(1))).await;
            let renewed = store
                .on_cluster("token_renew", |client, node| async move {
                    vaultrs::token::renew_self(&*client, None)
                        .await
                        .map_err(|e| store.map_error(node, "token renewal", "", None, e))
                })
                .await;
            ttl = match (renewed, &self.auth) {
                (Ok(auth), VaultAuth::AppRole(approle))
                    if auth.lease_duration < original_ttl / 3 =>
                {
                    self.approle_login(approle).await.unwrap_or(30)
                }
                (Ok(auth), _) => auth.lease_duration,
                (Err(e), VaultAuth::AppRole(approle)) => {
                    tracing::warn!(error = %e, "renewal failed; logging in again");
                    match self.approle_login(approle).await {
                        Ok(ttl) => ttl,
                        Err(e) => {
                            tracing::error!(error = %e, "Vault login failed; retrying in 30 s");
                            45
                        }
                    }
                }
                (Err(e), VaultAuth::Token) => {
                    tracing::error!(error = %e, "Vault token renewal failed; retrying in 30 s");
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

    /// Node `node` could not be asked.
    fn unreachable(&self, node: usize, e: &reqwest::Error) -> VaultError {
        VaultError::Unreachable {
            address: self.address(node).to_owned(),
            reason: error_chain(e),
        }
    }

    async fn get_json(&self, node: usize, path: &str) -> Result<serde_json::Value, VaultError> {
        let url = format!("{}/v1/{path}", self.address(node));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(node, &e))?;
        response.json().await.map_err(|e| VaultError::BadResponse {
            operation: format!("GET {path}"),
            reason: e.to_string(),
        })
    }

    /// Reads `{mount}/{path}` at `version` (0: the current one) from node `node`.
    async fn read_key_set_on(
        &self,
        client: &VaultClient,
        node: usize,
        path: &str,
        version: u64,
    ) -> Result<Option<VersionedKeySet>, VaultError> {
        let endpoint = ReadSecretRequest::builder()
            .mount(&self.mount)
            .path(path)
            .version(Some(version))
            .build()
            .map_err(|e| VaultError::Config(e.to_string()))?;
        let read: Result<ReadSecretResponse, _> =
            vaultrs::api::exec_with_result(client, endpoint).await;
        let response = match read {
            Ok(response) => response,
            Err(ClientError::APIError { code: 404, .. }) => return Ok(None),
            // A version deleted or destroyed: KV answers 404 with the version's metadata, which
            // vaultrs does not read as an error list. Any other such answer (a proxy's page, say)
            // stays a failure of the node.
            Err(ClientError::RestClientError {
                source:
                    rustify::errors::ClientError::ServerResponseError {
                        code: 404,
                        content: Some(body),
                    },
            }) if is_deleted_version(&body) => return Ok(None),
            Err(e) => return Err(self.map_error(node, "read", path, None, e)),
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
}

/// Whether a 404's body is KV v2's answer for a deleted or destroyed version: no data, and the
/// version's metadata saying so.
fn is_deleted_version(body: &str) -> bool {
    let Ok(answer) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let metadata = &answer["data"]["metadata"];
    answer["data"]["data"].is_null()
        && (metadata["destroyed"] == true
            || metadata["deletion_time"]
                .as_str()
                .is_some_and(|t| !t.is_empty()))
}

/// Check-and-set `cas` as vaultrs takes it.
fn cas_options(cas: u64) -> Result<SetSecretRequestOptions, VaultError> {
    Ok(SetSecretRequestOptions {
        cas: u32::try_from(cas)
            .map_err(|_| VaultError::Config(format!("version {cas} out of range")))?,
    })
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
        cas_options(cas)?;
        // Set once an attempt failed in a way that may have left the write applied.
        let maybe_applied = AtomicBool::new(false);
        self.on_cluster("write", |client, node| {
            let (path, maybe_applied) = (&path, &maybe_applied);
            async move {
                let written = vaultrs::kv2::set_with_options(
                    &*client,
                    &self.mount,
                    path,
                    secret,
                    cas_options(cas)?,
                )
                .await
                .map_err(|e| self.map_error(node, "write", path, Some(cas), e));
                match written {
                    Ok(written) => Ok(written.version),
                    Err(mismatch @ VaultError::CasMismatch { .. })
                        if maybe_applied.load(Ordering::Relaxed) =>
                    {
                        let current = self.read_key_set_on(&client, node, path, 0).await?;
                        let settled = lost_write::settle(secret, cas, current.as_ref());
                        if let Some(version) = settled {
                            tracing::info!(path = %path, version, "a write whose answer was lost had been applied");
                        }
                        settled.ok_or(mismatch)
                    }
                    Err(e) => {
                        if failover::worth_another_node(&e) {
                            maybe_applied.store(true, Ordering::Relaxed);
                        }
                        Err(e)
                    }
                }
            }
        })
        .await
    }

    async fn read_key_set(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        version: u64,
    ) -> Result<Option<VersionedKeySet>, VaultError> {
        let path = Self::path(tenant, kind);
        self.on_cluster("read", |client, node| {
            let path = &path;
            async move { self.read_key_set_on(&client, node, path, version).await }
        })
        .await
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
        self.on_cluster("read", |client, node| {
            let path = &path;
            async move {
                match vaultrs::kv2::read(&*client, &self.mount, path).await {
                    Ok(value) => Ok(Some(value)),
                    Err(ClientError::APIError { code: 404, .. }) => Ok(None),
                    Err(e) => Err(self.map_error(node, "read", path, None, e)),
                }
            }
        })
        .await
    }

    async fn create_internal(
        &self,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<bool, VaultError> {
        let path = format!("{INTERNAL_PREFIX}/{name}");
        // Check-and-set 0: a repeat after a lost answer finds it created, and the caller reads
        // what is there, as when another replica created it first.
        self.on_cluster("write", |client, node| {
            let path = &path;
            async move {
                let written = vaultrs::kv2::set_with_options(
                    &*client,
                    &self.mount,
                    path,
                    value,
                    cas_options(0)?,
                )
                .await;
                match written {
                    Ok(_) => Ok(true),
                    Err(e) => match self.map_error(node, "write", path, Some(0), e) {
                        VaultError::CasMismatch { .. } => Ok(false),
                        other => Err(other),
                    },
                }
            }
        })
        .await
    }

    async fn tenant_secret_names(&self, tenant: &TenantId) -> Result<Vec<String>, VaultError> {
        self.secret_names_of(tenant).await
    }

    async fn destroy_tenant_secret(&self, tenant: &TenantId, name: &str) -> Result<(), VaultError> {
        self.destroy_secret_of(tenant, name).await
    }

    async fn health(&self) -> Result<VaultHealth, VaultError> {
        let nodes = self
            .timed(
                "health",
                nodes::probe_all(&self.http, &self.addresses, self.probe_timeout),
            )
            .await;
        // The active node speaks for the cluster; with none active, the first that answered.
        let Some(node) = nodes
            .iter()
            .position(|n| n.active)
            .or_else(|| nodes.iter().position(|n| n.reachable))
        else {
            return Err(VaultError::Unreachable {
                address: self.addresses.join(", "),
                reason: nodes
                    .first()
                    .and_then(|n| n.error.clone())
                    .unwrap_or_default(),
            });
        };
        let chosen = &nodes[node];
        let mut active_node = self.address(node).to_owned();
        if !chosen.sealed
            && let Ok(leader) = self.get_json(node, "sys/leader").await
            && let Some(addr) = leader
                .get("leader_address")
                .and_then(|v| v.as_str())
                .filter(|a| !a.is_empty())
        {
            active_node = addr.to_owned();
        }
        Ok(VaultHealth {
            initialized: chosen.initialized,
            sealed: chosen.sealed,
            standby: chosen.standby,
            version: chosen.version.clone(),
            cluster_name: chosen.cluster_name.clone(),
            active_node,
            nodes,
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

#[cfg(test)]
mod deleted_version_tests {
    use super::is_deleted_version;

    #[test]
    fn only_kvs_answer_for_a_deleted_or_destroyed_version_reads_as_absent() {
        let deleted = r#"{"request_id":"x","data":{"data":null,"metadata":{"created_time":"2026-01-01T00:00:00Z","custom_metadata":null,"deletion_time":"2026-01-02T00:00:00Z","destroyed":false,"version":1}}}"#;
        let destroyed = r#"{"data":{"data":null,"metadata":{"deletion_time":"","destroyed":true,"version":2}}}"#;
        assert!(is_deleted_version(deleted));
        assert!(is_deleted_version(destroyed));
        for other in [
            "<html>404 Not Found</html>",
            r#"{"errors":[]}"#,
            r#"{"data":{"data":null,"metadata":{"deletion_time":"","destroyed":false}}}"#,
            r#"{"data":{"data":{"k":"v"},"metadata":{"destroyed":true}}}"#,
        ] {
            assert!(!is_deleted_version(other), "{other}");
        }
    }
}
