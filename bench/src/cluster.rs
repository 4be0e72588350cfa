//! A control plane in this process over a real OpenBao dev server, and the REST calls the
//! benchmarks make.

use std::time::Duration;

use anyhow::{Context, bail};
use keyward_common::KeyAlgorithm;
use keyward_server::config::{Config, KeysConfig};
use keyward_server::server::{self, RunningServer};
use keyward_tests::OpenBao;
use serde_json::{Value, json};

/// How the control plane is configured.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The key algorithm of new tenants' keys.
    pub algorithm: KeyAlgorithm,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            algorithm: KeyAlgorithm::Ed25519,
        }
    }
}

/// OpenBao (a child process) and `keyward-server` (tasks of this process) on loopback ports.
#[derive(Debug)]
pub struct Cluster {
    /// The REST base URL.
    pub url: String,
    pub admin_token: String,
    /// `bao version`.
    pub bao_version: String,
    server: Option<RunningServer>,
    http: reqwest::Client,
    bao: OpenBao,
    _state_dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts OpenBao in dev mode (`make test-deps` installs `bao`; `KEYWARD_BAO` names another
    /// binary), then the control plane: REST and the agents' mTLS endpoint on 127.0.0.1:0,
    /// SQLite in a temporary state directory.
    pub async fn start(options: &ClusterOptions) -> anyhow::Result<Self> {
        let bao = OpenBao::start().await;
        let bao_version = tokio::process::Command::new(keyward_tests::openbao::bao_binary())
            .arg("version")
            .output()
            .await
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default();
        let state_dir = tempfile::Builder::new()
            .prefix("keyward-bench-cp-")
            .tempdir()
            .context("creating the control plane's state directory")?;
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse()?;
        config.server.state_dir = state_dir.path().to_path_buf();
        config.agent_api.listen = "127.0.0.1:0".parse()?;
        config.vault.address = bao.addr.clone();
        config.vault.token = Some(keyward_tests::openbao::ROOT_TOKEN.into());
        config.keys = KeysConfig {
            algorithm: options.algorithm,
            ..KeysConfig::default()
        };
        let token_path = config.bootstrap_token_path();
        let server = server::start(config)
            .await
            .context("starting the control plane")?;
        let admin_token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading {}", token_path.display()))?
            .trim()
            .to_owned();
        Ok(Self {
            url: server.url(),
            admin_token,
            bao_version,
            server: Some(server),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            bao,
            _state_dir: state_dir,
        })
    }

    /// `POST {path}` with a bearer token and a JSON body; fails unless the status is `want`.
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: Option<Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("POST {path}: reading the answer"))?;
        if status != want {
            bail!(
                "POST {path} answered HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("POST {path}: not JSON"))
    }

    /// `GET {path}` with the admin token; fails unless the status is 200.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        if status != 200 {
            bail!(
                "GET {path} answered HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("GET {path}: not JSON"))
    }

    /// Waits until the control plane has recorded that `host` applied its current state (the
    /// admin view says `in_sync`), for at most `timeout`; returns whether it did.
    pub async fn wait_in_sync(&self, host: &str, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let view = self
                .admin_get(&format!("/api/v1/admin/hosts/{host}"))
                .await?;
            if view["status"] == "in_sync" {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn admin_post(&self, path: &str, body: Value, want: u16) -> anyhow::Result<Value> {
        self.post(path, &self.admin_token, Some(body), want).await
    }

    /// Onboards a tenant with the Unix users `tenant_user` and `admin_user`.
    pub async fn create_tenant(
        &self,
        tenant: &str,
        tenant_user: &str,
        admin_user: &str,
    ) -> anyhow::Result<()> {
        self.admin_post(
            "/api/v1/admin/tenants",
            json!({
                "tenantId": tenant,
                "vpsIp": "127.0.0.1",
                "sshPort": 22,
                "sshUsername": tenant_user,
                "adminUsername": admin_user,
            }),
            201,
        )
        .await?;
        Ok(())
    }

    /// Issues an API token with the tenant role for `tenant`.
    pub async fn tenant_token(&self, tenant: &str) -> anyhow::Result<String> {
        let answer = self
            .admin_post(
                "/api/v1/admin/tokens",
                json!({ "role": "tenant", "tenantId": tenant, "label": "keyward-bench" }),
                201,
            )
            .await?;
        string_field(&answer, "token")
    }

    /// Registers a host for `tenant`: `(host id, one-time enrollment token)`.
    pub async fn register_host(&self, tenant: &str) -> anyhow::Result<(String, String)> {
        let answer = self
            .admin_post("/api/v1/admin/hosts", json!({ "tenantId": tenant }), 201)
            .await?;
        Ok((
            string_field(&answer, "hostId")?,
            string_field(&answer, "enrollmentToken")?,
        ))
    }

    /// Stops the control plane, then OpenBao.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server
                .shutdown()
                .await
                .context("stopping the control plane")?;
        }
        self.bao.stop().await;
        Ok(())
    }
}

/// A string field of a JSON answer.
pub fn string_field(answer: &Value, name: &str) -> anyhow::Result<String> {
    answer[name]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the answer has no string {name:?}: {answer}"))
}
