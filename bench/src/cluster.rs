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
    /// `rotation.key_pool_size`; the configuration's default when `None`.
    pub key_pool_size: Option<usize>,
    /// A replica of a deployment: the replicas' shared database and OpenBao, and this
    /// replica's state directory. `None`: SQLite and an OpenBao dev server of its own.
    pub replica: Option<ChildArgs>,
    /// `[audit_export]`; none when `None`.
    pub audit_export: Option<keyward_server::config::AuditExportConfig>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            algorithm: KeyAlgorithm::Ed25519,
            key_pool_size: None,
            replica: None,
            audit_export: None,
        }
    }
}

/// The flags of [`CHILD_COMMAND`]: none for a control plane on its own (SQLite, its own
/// OpenBao), all three for a replica of a deployment ([`Cluster::spawn_replica`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ChildArgs {
    /// The deployment's PostgreSQL database, shared by its replicas.
    #[arg(long, requires_all = ["vault", "state_dir"])]
    pub database_url: Option<String>,
    /// The deployment's OpenBao (dev server, root token), already running.
    #[arg(long)]
    pub vault: Option<String>,
    /// This replica's state directory (kept by the parent, so a killed replica leaves nothing).
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
}

/// OpenBao (a child process) and `keyward-server` (tasks of this process, or of a child
/// process: [`Cluster::spawn`]) on loopback ports.
#[derive(Debug)]
pub struct Cluster {
    /// The REST base URL.
    pub url: String,
    pub admin_token: String,
    /// `bao version`.
    pub bao_version: String,
    /// The agents' mTLS gRPC endpoint.
    pub agent_url: String,
    /// The control plane's id among a deployment's replicas (`replicas.replica_id`).
    pub replica_id: String,
    server: Option<RunningServer>,
    http: reqwest::Client,
    bao: Option<OpenBao>,
    /// The process the control plane runs in, when it is not this one.
    child: Option<tokio::process::Child>,
    /// That process's `RLIMIT_NOFILE`.
    pub child_fd_limit: Option<crate::sys::FdLimit>,
    _state_dir: Option<tempfile::TempDir>,
}

/// What a control plane started by [`Cluster::spawn`] tells its parent (one JSON line).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChildHello {
    pub url: String,
    pub admin_token: String,
    pub bao_version: String,
    #[serde(default)]
    pub agent_url: String,
    #[serde(default)]
    pub replica_id: String,
    pub pid: u32,
    /// The child's `RLIMIT_NOFILE` after raising it.
    pub fd_limit: crate::sys::FdLimit,
}

/// A control plane's configuration as the benchmarks run it: REST and the agents' endpoint on
/// 127.0.0.1:0, its state in `state_dir` (SQLite unless a database URL is set), OpenBao at
/// `vault` with the dev server's root token, keys of `algorithm`.
pub fn loopback_config(
    state_dir: &std::path::Path,
    vault: &str,
    algorithm: KeyAlgorithm,
) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.server.state_dir = state_dir.to_path_buf();
    config.agent_api.listen = "127.0.0.1:0".parse()?;
    config.vault.address = Some(vault.to_owned());
    config.vault.token = Some(keyward_tests::openbao::ROOT_TOKEN.into());
    config.keys = KeysConfig {
        algorithm,
        ..KeysConfig::default()
    };
    Ok(config)
}

/// Starts a control plane in this process, and reads the admin token it bootstraps.
pub async fn start_server(config: Config) -> anyhow::Result<(RunningServer, String)> {
    let token_path = config.bootstrap_token_path();
    let server = server::start(config)
        .await
        .context("starting the control plane")?;
    let admin_token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("reading {}", token_path.display()))?
        .trim()
        .to_owned();
    Ok((server, admin_token))
}

/// The hidden subcommand that runs a control plane for [`Cluster::spawn`].
pub const CHILD_COMMAND: &str = "control-plane-child";

impl Cluster {
    /// Starts OpenBao in dev mode (`make test-deps` installs `bao`; `KEYWARD_BAO` names another
    /// binary), then the control plane: REST and the agents' mTLS endpoint on 127.0.0.1:0,
    /// SQLite in a temporary state directory.
    ///
    /// With `options.replica`, a replica of a deployment instead: its database and OpenBao are
    /// the deployment's, its state directory the one given. Only the first replica to start on
    /// a database bootstraps the admin token; the others have an empty `admin_token` (the
    /// deployment's is the first one's).
    pub async fn start(options: &ClusterOptions) -> anyhow::Result<Self> {
        let replica = options
            .replica
            .as_ref()
            .filter(|r| r.database_url.is_some());
        let (bao, vault) = match replica.and_then(|r| r.vault.clone()) {
            Some(vault) => (None, vault),
            None => {
                let bao = OpenBao::start().await;
                let addr = bao.addr.clone();
                (Some(bao), addr)
            }
        };
        let bao_version = crate::machine::bao_version().await;
        let (state_dir, state_path) = match replica.and_then(|r| r.state_dir.clone()) {
            Some(dir) => (None, dir),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("keyward-bench-cp-")
                    .tempdir()
                    .context("creating the control plane's state directory")?;
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
        };
        let mut config = loopback_config(&state_path, &vault, options.algorithm)?;
        if let Some(size) = options.key_pool_size {
            config.rotation.key_pool_size = size;
        }
        config.database.url = replica.and_then(|r| r.database_url.clone());
        if let Some(export) = &options.audit_export {
            config.audit_export = export.clone();
        }
        let token_path = config.bootstrap_token_path();
        let server = server::start(config)
            .await
            .context("starting the control plane")?;
        let admin_token = match std::fs::read_to_string(&token_path) {
            Ok(token) => token.trim().to_owned(),
            // Another replica bootstrapped the deployment's token.
            Err(e) if replica.is_some() && e.kind() == std::io::ErrorKind::NotFound => {
                String::new()
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", token_path.display()));
            }
        };
        Ok(Self {
            url: server.url(),
            admin_token,
            bao_version,
            agent_url: server.agent_url.clone(),
            replica_id: server.replica_id.clone(),
            server: Some(server),
            http: http_client()?,
            bao,
            child: None,
            child_fd_limit: None,
            _state_dir: state_dir,
        })
    }

    /// Starts the control plane (and its OpenBao) in a child process, this binary run with
    /// [`CHILD_COMMAND`], so that its memory and CPU can be read apart from the agents'
    /// (`/proc/{pid}`). The child stops when its standard input closes ([`Cluster::shutdown`]).
    /// `exe` is the `keyward-bench` binary (this process's own when `None`).
    pub async fn spawn(exe: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Self::spawn_replica(exe, &ChildArgs::default()).await
    }

    /// [`Cluster::spawn`] with the child's flags: with `args.database_url`, a replica of a
    /// deployment (see [`Cluster::start`]).
    pub async fn spawn_replica(
        exe: Option<&std::path::Path>,
        args: &ChildArgs,
    ) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let exe = match exe {
            Some(exe) => exe.to_owned(),
            None => std::env::current_exe().context("finding this binary")?,
        };
        let mut command = tokio::process::Command::new(exe);
        command.arg(CHILD_COMMAND);
        if let Some(url) = &args.database_url {
            command.arg("--database-url").arg(url);
        }
        if let Some(vault) = &args.vault {
            command.arg("--vault").arg(vault);
        }
        if let Some(dir) = &args.state_dir {
            command.arg("--state-dir").arg(dir);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the control plane's process")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the control plane's process did not start within 60 s")??
            .context("the control plane's process ended before it started")?;
        let hello: ChildHello =
            serde_json::from_str(&line).context("reading the control plane's process hello")?;
        Ok(Self {
            url: hello.url,
            admin_token: hello.admin_token,
            bao_version: hello.bao_version,
            agent_url: hello.agent_url,
            replica_id: hello.replica_id,
            server: None,
            http: http_client()?,
            bao: None,
            child: Some(child),
            child_fd_limit: Some(hello.fd_limit),
            _state_dir: None,
        })
    }

    /// The process id of the control plane ([`Cluster::spawn`]) or of this process.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .unwrap_or_else(std::process::id)
    }

    /// Kills the control plane's process at once (`SIGKILL`: no clean shutdown, its streams and
    /// presence rows left as a crash leaves them) and waits for it to end. Nothing to kill when
    /// it runs in this process.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .context("killing the control plane's process")?;
        }
        Ok(())
    }

    /// The control plane's lifecycle, when it runs in this process.
    pub fn lifecycle(&self) -> Option<&std::sync::Arc<keyward_server::lifecycle::KeyLifecycle>> {
        self.server.as_ref().map(|s| &s.lifecycle)
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

    /// Rotates the tenant's SSH key (`POST .../ssh-credentials/rotate` with a tenant token):
    /// the new key's fingerprint.
    pub async fn rotate_tenant(&self, tenant_token: &str) -> anyhow::Result<String> {
        let answer = self
            .post(
                "/api/v1/tenant/infrastructure/ssh-credentials/rotate",
                tenant_token,
                None,
                200,
            )
            .await?;
        string_field(&answer, "newKeyFingerprint")
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
        if let Some(bao) = &mut self.bao {
            bao.stop().await;
        }
        if let Some(mut child) = self.child.take() {
            // Closing its standard input asks it to stop.
            drop(child.stdin.take());
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(status) => {
                    let status = status.context("waiting for the control plane's process")?;
                    anyhow::ensure!(
                        status.success(),
                        "the control plane's process failed: {status}"
                    );
                }
                Err(_) => child
                    .kill()
                    .await
                    .context("killing the control plane's process")?,
            }
        }
        Ok(())
    }
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// The body of [`CHILD_COMMAND`]: a control plane over its own OpenBao (or a deployment's
/// replica, as `args` say), announced on stdout as
/// one JSON line ([`ChildHello`]), running until standard input closes.
pub async fn serve_child(args: ChildArgs) -> anyhow::Result<()> {
    let fd_limit = crate::sys::raise_fd_limit();
    let cluster = Cluster::start(&ClusterOptions {
        replica: Some(args),
        ..ClusterOptions::default()
    })
    .await?;
    let hello = ChildHello {
        url: cluster.url.clone(),
        admin_token: cluster.admin_token.clone(),
        bao_version: cluster.bao_version.clone(),
        agent_url: cluster.agent_url.clone(),
        replica_id: cluster.replica_id.clone(),
        pid: std::process::id(),
        fd_limit,
    };
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", serde_json::to_string(&hello)?)?;
        stdout.flush()?;
    }
    // Blocking reads on a thread of their own until the parent closes the pipe.
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin().lock();
        while stdin.read(&mut sink).unwrap_or(0) > 0 {}
    })
    .await;
    cluster.shutdown().await
}

/// A string field of a JSON answer.
pub fn string_field(answer: &Value, name: &str) -> anyhow::Result<String> {
    answer[name]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the answer has no string {name:?}: {answer}"))
}
