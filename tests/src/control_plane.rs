//! A real control plane on 127.0.0.1:0, over a real OpenBao and a real database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_server::config::{BackupConfig, Config, KeysConfig};
use keyward_server::server::{self, RunningServer};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::openbao::OpenBao;
use crate::openbao_cluster::OpenBaoCluster;
use crate::postgres::PgSchema;

/// Which SQL backend the control plane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Sqlite,
    Postgres,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got: {}",
            self.text()
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "not a problem document: {}",
            self.text()
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

/// A running `keyward-server` and an admin token for it.
#[derive(Debug)]
pub struct ControlPlane {
    pub url: String,
    pub admin_token: String,
    pub state_dir: StateDir,
    pub database_url: String,
    config: Config,
    server: Option<RunningServer>,
    http: reqwest::Client,
    /// Shared by the replicas of one deployment ([`ControlPlane::replica`]); dropped with the last.
    _schema: Option<std::sync::Arc<PgSchema>>,
}

/// Where the control plane keeps its state: a temporary directory of its own (the tests'), removed
/// on drop, or a given one that stays (the quickstart's `.run/state`).
#[derive(Debug)]
pub enum StateDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl StateDir {
    pub fn path(&self) -> &Path {
        match self {
            Self::Temporary(dir) => dir.path(),
            Self::Kept(dir) => dir,
        }
    }
}

/// The Vault a control plane is configured with: one node or every node of a cluster.
#[derive(Debug, Clone)]
struct VaultTarget {
    addresses: Vec<String>,
    ca_file: Option<PathBuf>,
    root_token: String,
}

/// Settings for [`ControlPlane::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    pub database: Database,
    /// A PostgreSQL database of the test's own (a [`crate::pg_server::PgServer`]), instead of a
    /// schema of the shared server; `database` is then ignored.
    pub database_url: Option<String>,
    pub algorithm: KeyAlgorithm,
    pub grace_period: Duration,
    /// Serve TLS with this certificate and key (PEM), trusted through `ca_pem`.
    pub tls: Option<TestTls>,
    /// The Vault token the control plane uses; the root token when `None`.
    pub vault_token: Option<String>,
    /// Vault snapshots (`[backup]`); not configured when `None`.
    pub backup: Option<BackupConfig>,
    /// Changes the configuration last (limits and timeouts a test needs low).
    pub configure: Option<fn(&mut Config)>,
    /// The REST and the agents' listeners; 127.0.0.1:0 each by default.
    pub listen: SocketAddr,
    pub agent_listen: SocketAddr,
    /// The state directory, kept; a temporary one when `None`.
    pub state_dir: Option<PathBuf>,
    /// `[audit_export]` (sinks at the test's own receivers); none when `None`.
    pub audit_export: Option<keyward_server::config::AuditExportConfig>,
    /// `[oidc]` (a test's [`crate::OidcProvider`]); off when `None`.
    pub oidc: Option<keyward_server::config::OidcConfig>,
}

/// A server certificate for 127.0.0.1 and localhost, signed by a CA made for the test.
#[derive(Debug, Clone)]
pub struct TestTls {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub ca_pem: String,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl TestTls {
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_file = dir.path().join("server.crt");
        let key_file = dir.path().join("server.key");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Self {
            cert_file,
            key_file,
            ca_pem: ca.pem(),
            _dir: std::sync::Arc::new(dir),
        }
    }
}

const ANY_LOOPBACK_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl Default for Options {
    fn default() -> Self {
        Self {
            database: Database::Sqlite,
            database_url: None,
            algorithm: KeyAlgorithm::Rsa4096,
            grace_period: Duration::from_secs(24 * 3600),
            tls: None,
            vault_token: None,
            backup: None,
            configure: None,
            listen: ANY_LOOPBACK_PORT,
            agent_listen: ANY_LOOPBACK_PORT,
            state_dir: None,
            audit_export: None,
            oidc: None,
        }
    }
}

impl ControlPlane {
    /// SQLite, RSA-4096: the embedded defaults.
    pub async fn start(bao: &OpenBao) -> Self {
        Self::start_with(bao, Options::default()).await
    }

    /// Ed25519 keys: for tests about something other than the keys, where RSA-4096 only costs time.
    pub async fn start_fast(bao: &OpenBao, database: Database) -> Self {
        Self::start_with(
            bao,
            Options {
                database,
                algorithm: KeyAlgorithm::Ed25519,
                ..Options::default()
            },
        )
        .await
    }

    /// Against every node of an OpenBao HA cluster (`vault.addresses`).
    pub async fn start_on_cluster(cluster: &OpenBaoCluster, options: Options) -> Self {
        let vault = VaultTarget {
            addresses: cluster.addresses(),
            ca_file: None,
            root_token: cluster.root_token.clone(),
        };
        Self::try_start_against(&vault, options)
            .await
            .unwrap_or_else(|e| panic!("control plane starts: {e}"))
    }

    pub async fn start_with(bao: &OpenBao, options: Options) -> Self {
        Self::try_start_with(bao, options)
            .await
            .unwrap_or_else(|e| panic!("control plane starts: {e}"))
    }

    /// As [`ControlPlane::start_with`], but a control plane that refuses to start is an `Err`
    /// with its message.
    pub async fn try_start_with(bao: &OpenBao, options: Options) -> Result<Self, String> {
        let vault = VaultTarget {
            addresses: vec![bao.addr.clone()],
            ca_file: bao.ca_file.clone(),
            root_token: bao.root_token.clone(),
        };
        Self::try_start_against(&vault, options).await
    }

    async fn try_start_against(vault: &VaultTarget, options: Options) -> Result<Self, String> {
        let state_dir = match &options.state_dir {
            Some(dir) => StateDir::Kept(dir.clone()),
            None => StateDir::Temporary(tempfile::tempdir().unwrap()),
        };
        let schema = match (&options.database_url, options.database) {
            (Some(_), _) | (None, Database::Sqlite) => None,
            (None, Database::Postgres) => Some(PgSchema::create().await),
        };
        let mut config = Config::default();
        config.server.listen = options.listen;
        config.server.state_dir = state_dir.path().to_path_buf();
        config.agent_api.listen = options.agent_listen;
        config.database.url = options
            .database_url
            .clone()
            .or_else(|| schema.as_ref().map(PgSchema::url));
        match vault.addresses.as_slice() {
            [one] => config.vault.address = Some(one.clone()),
            many => config.vault.addresses = many.to_vec(),
        }
        config.vault.ca_file.clone_from(&vault.ca_file);
        config.vault.token = Some(
            options
                .vault_token
                .clone()
                .unwrap_or_else(|| vault.root_token.clone()),
        );
        if let Some(backup) = &options.backup {
            config.backup = backup.clone();
        }
        config.keys = KeysConfig {
            algorithm: options.algorithm,
            grace_period: options.grace_period,
            ..KeysConfig::default()
        };
        if let Some(tls) = &options.tls {
            config.server.tls_cert = Some(tls.cert_file.clone());
            config.server.tls_key = Some(tls.key_file.clone());
        }
        // Two pre-generated RSA keys, not the default sixteen: each control plane a test starts
        // would otherwise spend its first seconds on a core of the shared machine filling the
        // pool. (A test that wants another size says so in `configure`.)
        config.rotation.key_pool_size = 2;
        if let Some(export) = &options.audit_export {
            config.audit_export = export.clone();
        }
        if let Some(oidc) = &options.oidc {
            config.oidc = oidc.clone();
        }
        if let Some(configure) = options.configure {
            configure(&mut config);
        }
        let database_url = config.database_url();
        let token_path = config.bootstrap_token_path();
        let server = server::start(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        // A restart comes back on the same ports, as a deployed control plane does.
        config.server.listen = server.addr;
        config.agent_api.listen = server.agent_addr;
        let admin_token = std::fs::read_to_string(token_path)
            .unwrap()
            .trim()
            .to_owned();
        Ok(Self {
            url: server.url(),
            admin_token,
            state_dir,
            database_url,
            config,
            server: Some(server),
            http: match &options.tls {
                Some(tls) => reqwest::Client::builder()
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap(),
                    )
                    .build()
                    .unwrap(),
                None => reqwest::Client::new(),
            },
            _schema: schema.map(std::sync::Arc::new),
        })
    }

    /// Another replica of this deployment: the same database (PostgreSQL) and Vault, with ports
    /// and a state directory of its own; the admin token is the deployment's.
    pub async fn replica(&self) -> Self {
        let state_dir = StateDir::Temporary(tempfile::tempdir().unwrap());
        let mut config = self.config.clone();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.agent_api.listen = "127.0.0.1:0".parse().unwrap();
        config.server.state_dir = state_dir.path().to_path_buf();
        let server = server::start(config.clone())
            .await
            .unwrap_or_else(|e| panic!("replica starts: {e}"));
        config.server.listen = server.addr;
        config.agent_api.listen = server.agent_addr;
        Self {
            url: server.url(),
            admin_token: self.admin_token.clone(),
            state_dir,
            database_url: self.database_url.clone(),
            config,
            server: Some(server),
            http: self.http.clone(),
            _schema: self._schema.clone(),
        }
    }

    /// The configuration it runs with (to reach its database and Vault from a test).
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }

    /// Stops the server and starts a new one on the same database and state directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = server::start(self.config.clone())
            .await
            .expect("control plane restarts");
        self.url = server.url();
        self.server = Some(server);
    }

    /// Starts this deployment's control plane again after a disaster, over a restored Vault
    /// (`bao`) and a restored database (`database_url`): on the same ports, which its agents and
    /// clients know, with the admin token its operator kept (the restored database holds its
    /// hash, so no bootstrap token is written), and a new, empty state directory.
    pub async fn restart_on(&mut self, bao: &OpenBao, database_url: String) {
        self.stop().await;
        self.config.vault.address = Some(bao.addr.clone());
        self.config.vault.addresses.clear();
        self.config.vault.ca_file.clone_from(&bao.ca_file);
        self.config.database.url = Some(database_url);
        self.state_dir = StateDir::Temporary(tempfile::tempdir().unwrap());
        self.config.server.state_dir = self.state_dir.path().to_path_buf();
        let server = server::start(self.config.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("control plane starts on the restored Vault and database: {e}")
            });
        assert!(
            !self.config.bootstrap_token_path().exists(),
            "the restored database holds an admin token: none is bootstrapped"
        );
        self.database_url = self.config.database_url();
        self.url = server.url();
        self.server = Some(server);
    }

    /// Any request; `token` is sent as a bearer token when given.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    }

    /// A request with these headers and no bearer token (a web session's cookie, its
    /// X-CSRF-Token, an Origin).
    pub async fn request_with_headers(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, Some(&self.admin_token), None)
            .await
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(&self.admin_token), Some(body))
            .await
    }

    /// Onboards a tenant whose VPS is 127.0.0.1:2222, with users `tenant` and `kwadmin`.
    pub async fn create_tenant(&self, tenant: &str) -> Value {
        self.onboard_tenant(tenant, 2222, "tenant", "kwadmin").await
    }

    /// Onboards a tenant whose VPS is 127.0.0.1:`ssh_port`, with these tenant and admin users.
    pub async fn onboard_tenant(
        &self,
        tenant: &str,
        ssh_port: u16,
        ssh_username: &str,
        admin_username: &str,
    ) -> Value {
        let reply = self
            .admin_post(
                "/api/v1/admin/tenants",
                json!({
                    "tenantId": tenant,
                    "vpsIp": "127.0.0.1",
                    "sshPort": ssh_port,
                    "sshUsername": ssh_username,
                    "adminUsername": admin_username,
                }),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()
    }

    /// Issues a tenant API token and returns it.
    pub async fn tenant_token(&self, tenant: &str) -> String {
        self.labelled_tenant_token(tenant, "test").await
    }

    /// Issues a tenant API token with this label and returns it.
    pub async fn labelled_tenant_token(&self, tenant: &str, label: &str) -> String {
        let reply = self
            .admin_post(
                "/api/v1/admin/tokens",
                json!({ "role": "tenant", "tenantId": tenant, "label": label }),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["token"].as_str().unwrap().to_owned()
    }

    /// A tenant endpoint under `/api/v1/tenant/infrastructure/ssh-credentials`.
    pub async fn tenant_call(&self, token: &str, method: Method, suffix: &str) -> Reply {
        self.request(
            method,
            &format!("/api/v1/tenant/infrastructure/ssh-credentials{suffix}"),
            Some(token),
            None,
        )
        .await
    }

    /// An admin's rotation of one of `tenant`'s key sets (`kind`: `tenant` or `admin`); asserts
    /// it succeeded and returns the answer.
    pub async fn admin_rotate(&self, tenant: &str, kind: &str) -> Value {
        let reply = self
            .request(
                Method::POST,
                &format!("/api/v1/admin/tenants/{tenant}/keys/{kind}/rotate"),
                Some(&self.admin_token),
                None,
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "rotate {tenant}/{kind}: {}",
            reply.text()
        );
        reply.json()
    }

    /// Audit events of one tenant, newest first.
    pub async fn audit_of(&self, tenant: &str) -> Vec<Value> {
        let reply = self
            .admin_get(&format!("/api/v1/admin/audit?tenantId={tenant}&limit=1000"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["events"].as_array().unwrap().clone()
    }
}
