//! A whole deployment for end-to-end tests: OpenBao, the control plane, Debian's sshd, two real
//! Unix users (admin and tenant) and the real agent managing them.

use keyward_common::KeyAlgorithm;
use reqwest::Method;

use crate::{Agent, ControlPlane, KeyFile, OpenBao, Sshd, TestUser, unique_tenant};

/// Everything an end-to-end test stands on; dropping it stops every part.
#[derive(Debug)]
pub struct Deployment {
    pub bao: OpenBao,
    pub cp: ControlPlane,
    pub sshd: Sshd,
    pub admin: TestUser,
    pub user: TestUser,
    pub tenant: String,
    pub tenant_token: String,
    pub agent: Agent,
}

impl Deployment {
    /// OpenBao, a control plane on SQLite issuing `keys` (Ed25519 is quick to generate; RSA-4096
    /// is the product's default), sshd, two real Unix users, a tenant on them and its agent,
    /// started and in sync.
    pub async fn start(keys: KeyAlgorithm) -> Self {
        Self::start_on_bao(OpenBao::start().await, keys).await
    }

    /// [`Deployment::start`] with OpenBao's SSH engine set up as keyward's certificate
    /// authority before the control plane starts (`packaging/vault/README.md`'s set-up), so
    /// that the host's sshd trusts it from the first state, and [`Deployment::ssh_ca_settings`].
    pub async fn start_with_ssh_ca(keys: KeyAlgorithm) -> Self {
        Self::start_with_ssh_ca_config(keys, Self::ssh_ca_settings).await
    }

    /// [`Deployment::start_with_ssh_ca`] with the control plane configured by `configure`
    /// (which calls [`Deployment::ssh_ca_settings`] for the usual ones).
    pub async fn start_with_ssh_ca_config(
        keys: KeyAlgorithm,
        configure: fn(&mut keyward_server::config::Config),
    ) -> Self {
        let bao = OpenBao::start().await;
        bao.enable_ssh_ca().await;
        Self::start_configured_on(bao, keys, configure).await
    }

    /// [`Deployment::start`] with the control plane configured by `configure`.
    pub async fn start_configured(
        keys: KeyAlgorithm,
        configure: fn(&mut keyward_server::config::Config),
    ) -> Self {
        Self::start_configured_on(OpenBao::start().await, keys, configure).await
    }

    async fn start_configured_on(
        bao: OpenBao,
        keys: KeyAlgorithm,
        configure: fn(&mut keyward_server::config::Config),
    ) -> Self {
        let cp = ControlPlane::start_with(
            &bao,
            crate::control_plane::Options {
                algorithm: keys,
                configure: Some(configure),
                ..crate::control_plane::Options::default()
            },
        )
        .await;
        Self::start_on(bao, cp).await
    }

    /// The control plane reads the CA's issuers every second (`vault.ssh_ca_refresh`), so that a
    /// CA rotation reaches the host quickly; access requests lapse after a minute and grants are
    /// closed within a second of their end (`[access]`).
    pub fn ssh_ca_settings(c: &mut keyward_server::config::Config) {
        c.vault.ssh_ca_refresh = std::time::Duration::from_secs(1);
        c.access.sweep_interval = std::time::Duration::from_secs(1);
        c.access.decide_within = std::time::Duration::from_secs(60);
    }

    async fn start_on_bao(bao: OpenBao, keys: KeyAlgorithm) -> Self {
        let cp = match keys {
            KeyAlgorithm::Ed25519 => ControlPlane::start_fast(&bao, crate::Database::Sqlite).await,
            KeyAlgorithm::Rsa4096 => ControlPlane::start(&bao).await,
        };
        Self::start_on(bao, cp).await
    }

    /// sshd, two real Unix users, a tenant on them and its agent, started and in sync, over this
    /// OpenBao and control plane (a test's own: raft storage, PostgreSQL, backups, ...).
    pub async fn start_on(bao: OpenBao, cp: ControlPlane) -> Self {
        let sshd = Sshd::start_async().await;
        let admin = TestUser::create("a");
        let user = TestUser::create("t");
        let tenant = unique_tenant("e2e");
        cp.onboard_tenant(&tenant, sshd.port, user.name.as_str(), admin.name.as_str())
            .await;
        let tenant_token = cp.tenant_token(&tenant).await;
        let mut agent = Agent::enroll(&cp, &tenant, &admin, &user, &sshd).await;
        agent.start();
        agent.wait_in_sync(&cp).await;
        Self {
            bao,
            cp,
            sshd,
            admin,
            user,
            tenant,
            tenant_token,
            agent,
        }
    }

    /// A tenant operation (`/rotate`, ...) that must succeed; its answer.
    pub async fn tenant_op(&self, op: &str) -> serde_json::Value {
        let reply = self
            .cp
            .tenant_call(&self.tenant_token, Method::POST, op)
            .await;
        assert_eq!(reply.status, 200, "{op}: {}", reply.text());
        reply.json()
    }

    /// The tenant's private key, downloaded (once per generation).
    pub async fn download(&self) -> KeyFile {
        let reply = self
            .cp
            .tenant_call(&self.tenant_token, Method::POST, "/download")
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        KeyFile::write(&reply.text())
    }

    /// The admin user's private key, read from Vault as root (admins never download it).
    pub async fn admin_key_from_vault(&self) -> KeyFile {
        let (secret, _) = self
            .bao
            .read_kv(&format!("{}/admin_ssh", self.tenant))
            .await
            .expect("the admin key set is in Vault");
        KeyFile::write(secret["private_key"].as_str().unwrap())
    }

    /// Whether the tenant's user can log in with `key`.
    pub async fn tenant_login(&self, key: &KeyFile) -> bool {
        self.sshd
            .login_async(&key.path, &self.user.name, "true")
            .await
            .0
    }
}
