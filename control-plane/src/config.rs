//! Configuration: built-in defaults, then a TOML file, then the environment.
//!
//! Environment variables use the `KEYWARD_` prefix and `__` for nesting
//! (`KEYWARD_VAULT__ADDRESS`). Vault's own `VAULT_ADDR`, `VAULT_TOKEN` and `VAULT_CACERT` are
//! honoured as Vault's CLI honours them, below the `KEYWARD_` variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use keyward_common::KeyAlgorithm;
use serde::{Deserialize, Serialize};

mod audit_export;
mod audit_signing;
mod mfa;
mod oidc;
mod recordings;
pub use audit_export::{
    AuditExportConfig, AuditFormat, AuditSinkConfig, SinkTarget, SyslogTransport, facility_code,
};
pub use audit_signing::AuditSigningConfig;
pub use mfa::{MfaConfig, SensitiveOperation};
pub use oidc::{ClientSecret, OidcConfig};
pub use recordings::{RecordingBackend, RecordingsConfig};

/// The whole configuration of `keyward-server`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub vault: VaultConfig,
    pub keys: KeysConfig,
    pub agent_api: AgentApiConfig,
    pub rotation: RotationConfig,
    pub backup: BackupConfig,
    pub retention: RetentionConfig,
    pub certificates: CertificatesConfig,
    pub access: AccessConfig,
    pub bastion: BastionConfig,
    pub audit_export: AuditExportConfig,
    pub audit_signing: AuditSigningConfig,
    pub download: DownloadConfig,
    pub offboarding: OffboardingConfig,
    pub mfa: MfaConfig,
    pub recordings: RecordingsConfig,
    pub oidc: OidcConfig,
}

/// Longest passphrase a private key download takes, in bytes (UTF-8).
pub const MAX_PASSPHRASE_BYTES: usize = 1024;

/// The private key download (`[download]`): the deployment's policy, which an admin can override
/// per tenant (`/api/v1/admin/tenants/{tenant_id}/download-policy`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// A download must carry a passphrase: the key is then handed out only encrypted with it.
    pub require_passphrase: bool,
    /// The shortest passphrase taken (in characters), whether one is required or not.
    pub min_passphrase_length: u32,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            require_passphrase: false,
            min_passphrase_length: 12,
        }
    }
}

/// Tenant offboarding (`DELETE /api/v1/admin/tenants/{tenant_id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffboardingConfig {
    /// How long an offboarding waits for each host's agent to acknowledge the removal of the
    /// managed keys; a host whose agent has not by then is revoked anyway (the status says so).
    #[serde(with = "humantime_serde")]
    pub agent_wait: Duration,
    /// How often each replica looks at the offboardings in progress (and retries a failed step).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for OffboardingConfig {
    fn default() -> Self {
        Self {
            agent_wait: Duration::from_secs(24 * 3600),
            check_interval: Duration::from_secs(5),
        }
    }
}

/// Bastions (jump hosts): hosts registered with the role `bastion`, whose jump user takes a
/// tenant's certificate only to forward to that tenant's VPS (`ssh -J`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BastionConfig {
    /// The jump user on every bastion (its agent's `[bastion] jump_user`).
    pub jump_user: keyward_common::UnixUser,
    /// Where tenants jump through, `host` or `host:port` (`[address]:port` for IPv6), when the
    /// platform routes their SSH through a bastion: their connection instructions then carry
    /// `ProxyJump jump_user@address`. Unset: tenants connect directly.
    pub address: Option<String>,
}

impl Default for BastionConfig {
    fn default() -> Self {
        Self {
            jump_user: "kwjump".parse().unwrap_or_else(|_| unreachable!()),
            address: None,
        }
    }
}

impl BastionConfig {
    /// What tenants write after `ProxyJump` (`ssh -J`), when an address is set: `user@host` on
    /// port 22, `user@host:port` otherwise.
    pub fn proxy_jump(&self) -> Result<Option<String>, String> {
        let Some(address) = &self.address else {
            return Ok(None);
        };
        let to = match address.parse::<keyward_common::PermitOpen>() {
            Ok(to) if to.port == 22 => to.host.to_string(),
            Ok(to) => to.to_string(),
            Err(_) => address
                .parse::<keyward_common::SshHost>()
                .map_err(|_| format!("bastion.address {address:?} is not host or host:port"))?
                .to_string(),
        };
        Ok(Some(format!("{}@{to}", self.jump_user)))
    }
}

/// Just-in-time access: certificates granted on request, for a while, with approvals.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// How long a request waits for its approvals before it lapses.
    #[serde(with = "humantime_serde")]
    pub decide_within: Duration,
    /// A platform admin's request for the admin user needs another admin's approval.
    pub second_admin_for_admin_user: bool,
    /// When a grant's window closes, its certificate is revoked so that the agents end the
    /// sessions it opened (new logins fail either way: the certificate has expired).
    pub end_sessions_at_expiry: bool,
    /// How often grants that closed are looked for.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            decide_within: Duration::from_secs(3600),
            second_admin_for_admin_user: false,
            end_sessions_at_expiry: true,
            sweep_interval: Duration::from_secs(5),
        }
    }
}

/// SSH user certificates signed by the Vault SSH CA (`vault.ssh_mount`, `vault.ssh_user_role`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificatesConfig {
    /// The validity of a certificate whose request names none.
    #[serde(with = "humantime_serde")]
    pub default_validity: Duration,
    /// The longest validity a request may ask for (at most 24h; the engine role's `max_ttl` may be
    /// shorter still).
    #[serde(with = "humantime_serde")]
    pub max_validity: Duration,
    /// Certificates one tenant may hold valid at once (both users'); more are refused until some
    /// expire or are revoked. Bounds what a tenant's token can make keyward sign and store.
    pub max_valid_per_tenant: u32,
}

impl Default for CertificatesConfig {
    fn default() -> Self {
        Self {
            default_validity: Duration::from_secs(3600),
            max_validity: Duration::from_secs(8 * 3600),
            max_valid_per_tenant: 100,
        }
    }
}

/// How long what agents report is kept (by the control plane's time of receipt). The audit log
/// is never deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Login events (`/api/v1/admin/audit/logins`, key usage).
    #[serde(with = "humantime_serde")]
    pub login_events: Duration,
    /// Drift events (what agents repaired).
    #[serde(with = "humantime_serde")]
    pub drift_events: Duration,
    /// SSH certificate records, counted from the end of their validity.
    #[serde(with = "humantime_serde")]
    pub certificates: Duration,
    /// Access requests and grants that ended (denied, lapsed, revoked, expired), counted from
    /// their request.
    #[serde(with = "humantime_serde")]
    pub access_grants: Duration,
    /// Login events received longer ago keep their source address and user name only as
    /// pseudonyms (keyed with a key in Vault), until `login_events` deletes them.
    #[serde(with = "humantime_serde")]
    pub pseudonymise_logins_after: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            login_events: Duration::from_secs(400 * 86_400),
            drift_events: Duration::from_secs(90 * 86_400),
            certificates: Duration::from_secs(400 * 86_400),
            access_grants: Duration::from_secs(400 * 86_400),
            pseudonymise_logins_after: Duration::from_secs(90 * 86_400),
        }
    }
}

/// The rotation scheduler and bulk rotations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Whether this process runs the rotation scheduler (on PostgreSQL, one replica at a time
    /// holds it, whatever this says on the others).
    pub scheduler: bool,
    /// Longest the scheduler sleeps between looks at the key sets, so that a changed clock or a
    /// policy set on another replica is noticed.
    #[serde(with = "humantime_serde")]
    pub max_sleep: Duration,
    /// How long the scheduler waits before trying again a rotation that failed (Vault sealed...).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Tenants a bulk rotation (and the scheduler) works on at once, per replica; default
    /// [`DEFAULT_BULK_CONCURRENCY`]. Read it with [`RotationConfig::bulk_concurrency`].
    pub bulk_concurrency: Option<usize>,
    /// How long a replica's claim on a bulk rotation's tenants holds without being renewed
    /// (it renews at a third of this while it works): after a replica dies, its tenants wait
    /// this long before another replica takes them over.
    #[serde(with = "humantime_serde")]
    pub bulk_lease: Duration,
    /// Pre-generated key pairs held in memory for rotations, regenerations and new tenants, when
    /// `keys.algorithm` is expensive to generate (RSA-4096; Ed25519 needs none); refilled in the
    /// background one key at a time. 0 turns the pool off.
    pub key_pool_size: usize,
}

/// Tenants in flight by default: they mostly wait (for Vault's answers, then for their group
/// commit), and key generation takes at most one thread per core whatever this says.
pub const DEFAULT_BULK_CONCURRENCY: usize = 64;

impl RotationConfig {
    /// Tenants a bulk rotation works on at once.
    pub fn bulk_concurrency(&self) -> usize {
        self.bulk_concurrency.unwrap_or(DEFAULT_BULK_CONCURRENCY)
    }
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            scheduler: true,
            max_sleep: Duration::from_secs(3600),
            retry_after: Duration::from_secs(300),
            bulk_concurrency: None,
            bulk_lease: Duration::from_secs(60),
            key_pool_size: 16,
        }
    }
}

/// Snapshots of Vault's integrated (raft) storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Directory for the snapshots; none means backups are not configured.
    pub dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How many snapshots to keep; older ones are deleted.
    pub retention: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            dir: None,
            interval: Duration::from_secs(24 * 3600),
            retention: 7,
        }
    }
}

/// The agents' mTLS gRPC endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentApiConfig {
    pub listen: SocketAddr,
    /// The URL agents dial, as given to them at enrollment; default `https://{listen}`.
    pub url: Option<String>,
    /// Names (DNS or IP) in the endpoint's certificate; default: the host of `url`.
    pub server_names: Vec<String>,
    /// Lifetime of a host's client certificate; agents renew at two thirds of it.
    #[serde(with = "humantime_serde")]
    pub certificate_lifetime: Duration,
    /// How long an enrollment token stays usable.
    #[serde(with = "humantime_serde")]
    pub enrollment_ttl: Duration,
    /// Most agent connections open at once (TLS handshakes included); more wait in the
    /// listen backlog until one closes. Size `LimitNOFILE` of the unit above it.
    pub max_connections: usize,
    /// A TLS handshake not finished within this is closed.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Drift reports one host may send a minute, and at once; more are dropped and counted.
    pub drift_reports_per_minute: u32,
    pub drift_reports_burst: u32,
    /// Login events one host may send a minute, and at once; more are dropped and counted.
    pub login_events_per_minute: u32,
    pub login_events_burst: u32,
    /// Load balancers (addresses or networks, e.g. `10.0.0.5/32`) whose connections start with
    /// a PROXY protocol header (HAProxy's `send-proxy-v2`): they must; others must not.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

impl Default for AgentApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
            url: None,
            server_names: Vec::new(),
            certificate_lifetime: Duration::from_secs(30 * 86_400),
            enrollment_ttl: Duration::from_secs(3600),
            max_connections: 10_240,
            tls_handshake_timeout: Duration::from_secs(10),
            drift_reports_per_minute: 10,
            drift_reports_burst: 20,
            login_events_per_minute: 1000,
            login_events_burst: 5000,
            proxy_protocol_from: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the REST API and web UI.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the API is served over TLS 1.3.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serving plain HTTP on an address other than loopback exposes bearer tokens and private
    /// keys on the wire; it must be asked for by name.
    pub allow_plain_http_on_network: bool,
    /// Where the SQLite database and the bootstrap admin token live.
    pub state_dir: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// An HTTP/1 request's headers must arrive within this (slowloris), also the wait for the
    /// next request on a kept-alive connection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A TLS handshake not finished within this is closed.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Most REST connections open at once; a connection over the cap is closed at once.
    pub max_connections: usize,
    /// Failed enrollments allowed per source address (an IPv6 /64) and minute, with a burst
    /// of as many; more are answered 429 without a look at the token.
    pub enroll_failures_per_minute: u32,
    /// Load balancers (addresses or networks) whose connections start with a PROXY protocol
    /// header (v1 or v2): they must, and its client address is the one audited and throttled;
    /// connections from other addresses must not send one.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// On PostgreSQL, how often a replica says it is alive; another replica's agent streams
    /// count as connected while it is (three heartbeats). 1s to 1m.
    #[serde(with = "humantime_serde")]
    pub replica_heartbeat: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            allow_plain_http_on_network: false,
            state_dir: PathBuf::from("/var/lib/keyward"),
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            enroll_failures_per_minute: 10,
            proxy_protocol_from: Vec::new(),
            replica_heartbeat: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:///path/keyward.db` or `postgres://...`; empty means `keyward.db` in the state dir.
    pub url: Option<String>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// One Vault or OpenBao address (a single server, or a load balancer in front of a cluster).
    /// Set this or [`VaultConfig::addresses`], not both; neither means `http://127.0.0.1:8200`.
    pub address: Option<String>,
    /// Every node of a Vault or OpenBao HA (raft) cluster: keyward talks to the active node and
    /// follows it through leader changes ([`crate::vault`]).
    pub addresses: Vec<String>,
    /// KV version 2 mount that holds `{tenant_id}/admin_ssh` and `{tenant_id}/tenant_ssh`.
    pub mount: String,
    /// The SSH secrets engine mount whose CA signs user certificates (its key never leaves Vault).
    pub ssh_mount: String,
    /// The SSH secrets engine role that signs keyward's user certificates.
    pub ssh_user_role: String,
    /// How often each replica reads the SSH CA's issuers (the keys hosts trust). 1s to 1h.
    #[serde(with = "humantime_serde")]
    pub ssh_ca_refresh: Duration,
    /// A token, given inline (prefer `token_file` or `VAULT_TOKEN`: config files get copied).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub approle: Option<AppRoleConfig>,
    /// PEM CA bundle that signs Vault's TLS certificate.
    pub ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// With several `addresses`: how long one operation keeps looking for a working node (a
    /// leader election, a node restarting) before it fails. Cover the cluster's election time.
    #[serde(with = "humantime_serde")]
    pub failover_timeout: Duration,
}

/// Where Vault is when nothing says otherwise.
pub const DEFAULT_VAULT_ADDRESS: &str = "http://127.0.0.1:8200";

impl VaultConfig {
    /// The node addresses keyward talks to: `addresses`, or the one `address`, or the default.
    pub fn node_addresses(&self) -> Vec<String> {
        if !self.addresses.is_empty() {
            return self.addresses.clone();
        }
        vec![
            self.address
                .clone()
                .unwrap_or_else(|| DEFAULT_VAULT_ADDRESS.to_owned()),
        ]
    }

    fn validate(&self) -> Result<(), String> {
        if self.address.is_some() && !self.addresses.is_empty() {
            return Err("set vault.address or vault.addresses, not both \
                 (VAULT_ADDR sets vault.address)"
                .into());
        }
        let nodes = self.node_addresses();
        if let Some(bad) = nodes
            .iter()
            .find(|a| !(a.starts_with("http://") || a.starts_with("https://")))
        {
            let key = if self.addresses.is_empty() {
                "vault.address"
            } else {
                "vault.addresses"
            };
            return Err(format!(
                "{key} must start with http:// or https:// (got {bad:?})"
            ));
        }
        let mut unique = nodes.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != nodes.len() {
            return Err("vault.addresses names a node twice".into());
        }
        if self.failover_timeout < Duration::from_secs(1) {
            return Err("vault.failover_timeout must be at least 1s".into());
        }
        let segment = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if !self.ssh_mount.split('/').all(segment) {
            return Err(
                "vault.ssh_mount must be a mount path such as \"ssh\" (letters, digits, \
                 '_', '-', '.', segments separated by '/')"
                    .into(),
            );
        }
        // The engine's own grammar for role names: \w(([\w-.@]+)?\w)?
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let role = &self.ssh_user_role;
        if !(role.starts_with(word)
            && role.ends_with(word)
            && role
                .chars()
                .all(|c| word(c) || matches!(c, '-' | '.' | '@')))
        {
            return Err(
                "vault.ssh_user_role must be an SSH engine role name such as \"keyward-user\""
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            address: None,
            addresses: Vec::new(),
            mount: "vps".into(),
            ssh_mount: "ssh".into(),
            ssh_user_role: "keyward-user".into(),
            ssh_ca_refresh: Duration::from_secs(60),
            token: None,
            token_file: None,
            approle: None,
            ca_file: None,
            timeout: Duration::from_secs(10),
            failover_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleConfig {
    #[serde(default = "default_approle_mount")]
    pub mount: String,
    pub role_id: String,
    /// File holding the secret id (Vault's agent and CI tools deliver it this way).
    pub secret_id_file: PathBuf,
}

fn default_approle_mount() -> String {
    "approle".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    pub algorithm: KeyAlgorithm,
    /// How long a key set lives before the rotation policy replaces it.
    #[serde(with = "humantime_serde")]
    pub rotation_interval: Duration,
    /// How long the previous key keeps working after a rotation.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            algorithm: KeyAlgorithm::Rsa4096,
            rotation_interval: Duration::from_secs(90 * 24 * 3600),
            grace_period: Duration::from_secs(24 * 3600),
        }
    }
}

impl KeysConfig {
    /// The Vault `rotation_policy` field: `"90_days"` for the default interval.
    pub fn rotation_policy_name(&self) -> String {
        rotation_policy_name(self.rotation_interval)
    }
}

/// The name of a rotation policy with this interval: `"90_days"`, or `"5400_seconds"`.
pub fn rotation_policy_name(interval: Duration) -> String {
    let secs = interval.as_secs();
    if secs.is_multiple_of(86_400) {
        format!("{}_days", secs / 86_400)
    } else {
        format!("{secs}_seconds")
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Rule(String),
}

impl Config {
    /// Loads defaults, then `file` (which must exist when given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing {
                    path: path.to_owned(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let vault_env = Env::raw()
            .only(&["VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT"])
            .map(|key| match key.as_str() {
                "VAULT_ADDR" => "vault.address".into(),
                "VAULT_TOKEN" => "vault.token".into(),
                _ => "vault.ca_file".into(),
            });
        let config: Config = figment
            .merge(vault_env)
            // Only nested keys are settings (`KEYWARD_VAULT__ADDRESS`); other KEYWARD_ variables
            // (KEYWARD_CONFIG, a test's KEYWARD_BAO) are not ours to refuse.
            .merge(
                Env::prefixed("KEYWARD_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rule = |msg: &str| Err(ConfigError::Rule(msg.to_owned()));
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return rule("server.tls_cert and server.tls_key must be set together");
        }
        if self.server.tls_cert.is_none()
            && !self.server.listen.ip().is_loopback()
            && !self.server.allow_plain_http_on_network
        {
            return rule(
                "server.listen is not a loopback address but no TLS certificate is set; \
                 set server.tls_cert and server.tls_key (or allow_plain_http_on_network = true \
                 behind a TLS-terminating proxy)",
            );
        }
        if self.vault.mount.is_empty() || self.vault.mount.contains(['/', '.', ' ']) {
            return rule("vault.mount must be a single path segment such as \"vps\"");
        }
        self.vault.validate().map_err(ConfigError::Rule)?;
        self.audit_export.validate().map_err(ConfigError::Rule)?;
        self.audit_signing.validate().map_err(ConfigError::Rule)?;
        self.oidc.validate().map_err(ConfigError::Rule)?;
        self.mfa
            .webauthn_relying_party()
            .map_err(ConfigError::Rule)?;
        if self.keys.rotation_interval < Duration::from_secs(3600) {
            return rule("keys.rotation_interval must be at least 1h");
        }
        if self.keys.grace_period >= self.keys.rotation_interval {
            return rule("keys.grace_period must be shorter than keys.rotation_interval");
        }
        if self.agent_api.certificate_lifetime < Duration::from_secs(300) {
            return rule("agent_api.certificate_lifetime must be at least 5m");
        }
        if self.agent_api.enrollment_ttl < Duration::from_secs(60) {
            return rule("agent_api.enrollment_ttl must be at least 1m");
        }
        if let Some(url) = &self.agent_api.url
            && !url.starts_with("https://")
        {
            return rule("agent_api.url must start with https://");
        }
        if self.server.max_body_bytes < 1024 {
            return rule("server.max_body_bytes must be at least 1024");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60))
            .contains(&self.server.replica_heartbeat)
        {
            return rule("server.replica_heartbeat must be 1s to 1m");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.vault.ssh_ca_refresh)
        {
            return rule("vault.ssh_ca_refresh must be 1s to 1h");
        }
        if !(1..=100_000).contains(&self.certificates.max_valid_per_tenant) {
            return rule("certificates.max_valid_per_tenant must be 1 to 100000");
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(7 * 86_400))
            .contains(&self.access.decide_within)
        {
            return rule("access.decide_within must be 1m to 7days");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300))
            .contains(&self.access.sweep_interval)
        {
            return rule("access.sweep_interval must be 1s to 5m");
        }
        self.bastion.proxy_jump().map_err(ConfigError::Rule)?;
        if !(1..=MAX_PASSPHRASE_BYTES).contains(&(self.download.min_passphrase_length as usize)) {
            return rule("download.min_passphrase_length must be 1 to 1024");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(30 * 86_400))
            .contains(&self.offboarding.agent_wait)
        {
            return rule("offboarding.agent_wait must be 1s to 30days");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300))
            .contains(&self.offboarding.check_interval)
        {
            return rule("offboarding.check_interval must be 1s to 5m");
        }
        let certificates = &self.certificates;
        if !(Duration::from_secs(60)..=Duration::from_secs(24 * 3600))
            .contains(&certificates.max_validity)
            || !(Duration::from_secs(60)..=certificates.max_validity)
                .contains(&certificates.default_validity)
        {
            return rule(
                "certificates.max_validity must be 1m to 24h, and certificates.default_validity \
                 1m to certificates.max_validity",
            );
        }
        if self.rotation.max_sleep < Duration::from_secs(1) {
            return rule("rotation.max_sleep must be at least 1s");
        }
        if self.rotation.bulk_concurrency == Some(0) {
            return rule("rotation.bulk_concurrency must be at least 1");
        }
        if self.rotation.bulk_lease < Duration::from_secs(3) {
            return rule("rotation.bulk_lease must be at least 3s");
        }
        if self.agent_api.drift_reports_per_minute == 0 || self.agent_api.drift_reports_burst == 0 {
            return rule(
                "agent_api.drift_reports_per_minute and drift_reports_burst must be at least 1",
            );
        }
        if self.agent_api.login_events_per_minute == 0 {
            return rule("agent_api.login_events_per_minute must be at least 1");
        }
        // An agent sends up to 500 events at once: a smaller burst would cut every full batch.
        if self.agent_api.login_events_burst < 500 {
            return rule("agent_api.login_events_burst must be at least 500 (an agent's batch)");
        }
        let retention = &self.retention;
        if [
            retention.login_events,
            retention.drift_events,
            retention.certificates,
            retention.access_grants,
            retention.pseudonymise_logins_after,
        ]
        .iter()
        .any(|kept| *kept < Duration::from_secs(86_400))
        {
            return rule(
                "retention.login_events, drift_events, certificates, access_grants and \
                 pseudonymise_logins_after must be at least 1d",
            );
        }
        if let Some(problem) = self.recordings.problem() {
            return rule(problem);
        }
        if self.backup.retention == 0 {
            return rule("backup.retention must be at least 1");
        }
        if self.backup.interval < Duration::from_secs(60) {
            return rule("backup.interval must be at least 1m");
        }
        Ok(())
    }

    /// The database URL, defaulting to a SQLite file in the state directory.
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.server.state_dir.join("keyward.db").display()
            )
        })
    }

    /// Where the first start writes the bootstrap admin token.
    pub fn bootstrap_token_path(&self) -> PathBuf {
        self.server.state_dir.join("bootstrap-admin-token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_products() {
        let c = Config::default();
        assert_eq!(c.vault.mount, "vps");
        assert_eq!(c.vault.ssh_mount, "ssh");
        assert_eq!(c.vault.ssh_user_role, "keyward-user");
        assert_eq!(c.vault.ssh_ca_refresh, Duration::from_secs(60));
        assert_eq!(c.keys.rotation_policy_name(), "90_days");
        assert_eq!(c.keys.grace_period, Duration::from_secs(86_400));
        assert!(c.server.listen.ip().is_loopback());
        assert_eq!(c.retention.login_events, Duration::from_secs(400 * 86_400));
        assert_eq!(c.retention.drift_events, Duration::from_secs(90 * 86_400));
        assert_eq!(c.agent_api.drift_reports_per_minute, 10);
        assert_eq!(c.agent_api.login_events_per_minute, 1000);
        assert_eq!(c.server.replica_heartbeat, Duration::from_secs(5));
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[vault]\nadress = \"http://x\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("adress"), "{err}");

        std::fs::write(&path, "[server]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("TLS"), "{err}");

        std::fs::write(&path, "[keys]\ngrace_period = \"100d\"\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());

        std::fs::write(&path, "[retention]\nlogin_events = \"1h\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("retention"), "{err}");

        std::fs::write(&path, "[agent_api]\nlogin_events_burst = 100\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("login_events_burst"), "{err}");

        std::fs::write(&path, "[agent_api]\ndrift_reports_per_minute = 0\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());

        for min in [0, 1025] {
            std::fs::write(
                &path,
                format!("[download]\nmin_passphrase_length = {min}\n"),
            )
            .unwrap();
            let err = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains("min_passphrase_length"), "{min}: {err}");
        }
        std::fs::write(
            &path,
            "[download]\nrequire_passphrase = true\nmin_passphrase_length = 16\n",
        )
        .unwrap();
        let download = Config::load(Some(&path)).unwrap().download;
        assert!(download.require_passphrase);
        assert_eq!(download.min_passphrase_length, 16);

        std::fs::write(
            &path,
            "[mfa]\nrequire_for = [\"download\", \"rotate_all\"]\n",
        )
        .unwrap();
        let mfa = Config::load(Some(&path)).unwrap().mfa;
        assert_eq!(
            mfa.require_for,
            [SensitiveOperation::Download, SensitiveOperation::RotateAll]
        );
        std::fs::write(&path, "[mfa]\nrequire_for = [\"everything\"]\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
        assert!(Config::default().mfa.require_for.is_empty());

        for heartbeat in ["500ms", "61s"] {
            std::fs::write(
                &path,
                format!("[server]\nreplica_heartbeat = \"{heartbeat}\"\n"),
            )
            .unwrap();
            let err = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains("replica_heartbeat"), "{heartbeat}: {err}");
        }
        for heartbeat in ["1s", "1m"] {
            std::fs::write(
                &path,
                format!("[server]\nreplica_heartbeat = \"{heartbeat}\"\n"),
            )
            .unwrap();
            assert!(Config::load(Some(&path)).is_ok(), "{heartbeat}");
        }
        for (refresh, ok) in [("500ms", false), ("2h", false), ("1s", true), ("1h", true)] {
            std::fs::write(&path, format!("[vault]\nssh_ca_refresh = \"{refresh}\"\n")).unwrap();
            let loaded = Config::load(Some(&path));
            assert_eq!(loaded.is_ok(), ok, "{refresh}: {loaded:?}");
        }
        for (text, ok) in [
            ("[certificates]\nmax_validity = \"25h\"\n", false),
            ("[certificates]\ndefault_validity = \"9h\"\n", false),
            ("[certificates]\ndefault_validity = \"30s\"\n", false),
            (
                "[certificates]\ndefault_validity = \"8h\"\nmax_validity = \"24h\"\n",
                true,
            ),
            ("[access]\ndecide_within = \"30s\"\n", false),
            ("[access]\ndecide_within = \"8days\"\n", false),
            ("[access]\nsweep_interval = \"10m\"\n", false),
            ("[offboarding]\nagent_wait = \"0s\"\n", false),
            (
                "[offboarding]\nagent_wait = \"2h\"\ncheck_interval = \"1s\"\n",
                true,
            ),
            ("[offboarding]\ncheck_interval = \"10m\"\n", false),
            (
                "[access]\ndecide_within = \"2h\"\nsecond_admin_for_admin_user = true\n",
                true,
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let loaded = Config::load(Some(&path));
            assert_eq!(loaded.is_ok(), ok, "{text}: {loaded:?}");
        }

        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Config::load(Some(&missing)),
            Err(ConfigError::Missing { .. })
        ));
    }

    #[test]
    fn file_values_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[keys]\nalgorithm = \"ed25519\"\ngrace_period = \"2h\"\n[vault]\nmount = \"kv\"\n\
             [retention]\nlogin_events = \"30d\"\n[agent_api]\ndrift_reports_burst = 3\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.keys.algorithm, KeyAlgorithm::Ed25519);
        assert_eq!(c.keys.grace_period, Duration::from_secs(7200));
        assert_eq!(c.vault.mount, "kv");
        assert_eq!(c.retention.login_events, Duration::from_secs(30 * 86_400));
        assert_eq!(c.agent_api.drift_reports_burst, 3);
    }

    #[test]
    fn vault_takes_one_address_or_a_list_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path))
        };
        // VAULT_ADDR sets vault.address and wins over the file.
        if std::env::var_os("VAULT_ADDR").is_some() {
            return;
        }
        // Neither: the default address.
        let c = load("").unwrap();
        assert_eq!(c.vault.node_addresses(), [DEFAULT_VAULT_ADDRESS]);
        let c = load("[vault]\naddresses = [\"http://a:8200\", \"https://b:8200\"]\n").unwrap();
        assert_eq!(
            c.vault.node_addresses(),
            ["http://a:8200", "https://b:8200"]
        );
        let err = load("[vault]\naddress = \"http://a:8200\"\naddresses = [\"http://b:8200\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
        let err = load("[vault]\naddresses = [\"http://a:8200\", \"b:8200\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("vault.addresses must start with"), "{err}");
        let err = load("[vault]\naddresses = [\"http://a:8200\", \"http://a:8200\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
        let c = load("[vault]\naddress = \"https://v:8200\"\n").unwrap();
        assert_eq!(c.vault.node_addresses(), ["https://v:8200"]);
        assert_eq!(c.vault.failover_timeout, Duration::from_secs(30));
        let err = load("[vault]\naddress = \"v:8200\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("vault.address must start with"), "{err}");
    }

    #[test]
    fn the_ssh_engine_mount_and_role_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path)).map_err(|e| e.to_string())
        };
        let c =
            load("[vault]\nssh_mount = \"team/ssh-ca\"\nssh_user_role = \"kw.users@x\"\n").unwrap();
        assert_eq!(
            (c.vault.ssh_mount.as_str(), c.vault.ssh_user_role.as_str()),
            ("team/ssh-ca", "kw.users@x")
        );
        for bad in ["", "/ssh", "ssh/", "a//b", "..", "ssh ca", "ssh?x"] {
            let err = load(&format!("[vault]\nssh_mount = {bad:?}\n")).unwrap_err();
            assert!(err.contains("vault.ssh_mount"), "{bad:?}: {err}");
        }
        for bad in ["", "-r", "r-", "a/b", "a b", "r,s"] {
            let err = load(&format!("[vault]\nssh_user_role = {bad:?}\n")).unwrap_err();
            assert!(err.contains("vault.ssh_user_role"), "{bad:?}: {err}");
        }
    }
}
