//! A control plane per backend, as the `rest` run loads it: REST on 127.0.0.1:0, Ed25519 keys (key
//! generation is not on the measured path), Vault through the counting proxy, and seeded with
//! `--tenants` tenants, each with a registered host and a tenant token; the load uses the first.

use anyhow::{Context, bail};
use keyward_common::KeyAlgorithm;
use keyward_server::server::RunningServer;
use keyward_tests::PgSchema;
use serde_json::{Value, json};

use super::{Backend, PATH};
use crate::cluster::{loopback_config, start_server};

/// A running control plane with its tenants, and the answer its first tenant gets.
pub(super) struct SeededControlPlane {
    pub(super) backend: Backend,
    pub(super) url: String,
    admin_token: String,
    pub(super) tenant_token: String,
    pub(super) body: Value,
    server: Option<RunningServer>,
    http: reqwest::Client,
    _state_dir: tempfile::TempDir,
    _schema: Option<PgSchema>,
}

impl std::fmt::Debug for SeededControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededControlPlane")
            .field("backend", &self.backend)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl SeededControlPlane {
    /// Starts the control plane on `backend` with `vault` as its Vault, creates `tenants` tenants
    /// (at least one) with a host and a token each, and reads the first tenant's answer.
    pub(super) async fn start(
        backend: Backend,
        vault: &str,
        tenants: usize,
    ) -> anyhow::Result<Self> {
        let state_dir = tempfile::Builder::new()
            .prefix("keyward-bench-rest-")
            .tempdir()?;
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgSchema::create().await),
        };
        let mut config = loopback_config(state_dir.path(), vault, KeyAlgorithm::Ed25519)?;
        config.database.url = schema.as_ref().map(PgSchema::url);
        let (server, admin_token) = start_server(config).await?;
        let mut kw = Self {
            backend,
            url: server.url(),
            admin_token,
            tenant_token: String::new(),
            body: Value::Null,
            server: Some(server),
            http: reqwest::Client::new(),
            _state_dir: state_dir,
            _schema: schema,
        };
        for i in 0..tenants.max(1) {
            let tenant = format!("rest-{i:04}");
            kw.admin_post(
                "/api/v1/admin/tenants",
                json!({
                    "tenantId": tenant,
                    "vpsIp": "192.0.2.10",
                    "sshPort": 22,
                    "sshUsername": "tenant",
                    "adminUsername": "kwadmin",
                }),
            )
            .await?;
            kw.admin_post("/api/v1/admin/hosts", json!({ "tenantId": tenant }))
                .await?;
            let token = kw
                .admin_post(
                    "/api/v1/admin/tokens",
                    json!({ "role": "tenant", "tenantId": tenant, "label": "keyward-bench" }),
                )
                .await?;
            if i == 0 {
                kw.tenant_token = crate::cluster::string_field(&token, "token")?;
            }
        }
        let answer = kw
            .http
            .get(format!("{}{PATH}", kw.url))
            .bearer_auth(&kw.tenant_token)
            .send()
            .await?;
        anyhow::ensure!(
            answer.status() == 200,
            "GET {PATH} answered {}",
            answer.status()
        );
        kw.body = answer.json().await?;
        Ok(kw)
    }

    async fn admin_post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let answer = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = answer.status();
        let text = answer.text().await?;
        if status != 201 {
            bail!("POST {path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    pub(super) async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server.shutdown().await?;
        }
        Ok(())
    }
}
