//! A real three-node OpenBao raft cluster on loopback: three `bao server` processes with
//! integrated storage, each with its own data directory, API and cluster port; node 0 is
//! initialised (one key share) and unsealed, nodes 1 and 2 join it (`retry_join`) and are
//! unsealed; all three become raft voters. Nodes can be killed (SIGKILL, as a crash) and
//! restarted (unsealed again). Stopped when dropped.
//!
//! What OpenBao does, observed with this fixture (OpenBao 2.x): a standby answers `sys/health`
//! with 429 and *serves reads itself* from its replica (eventually consistent: right after a
//! write it can still miss it), and forwards writes to the active node. While the active node is
//! dead and not yet replaced, a standby answers a write with a 307 redirect to the dead node and
//! then, during the election, with 500 "local node not active but active cluster node not found";
//! reads keep working from the standby's replica. keyward therefore talks to the active node and
//! moves only when it fails. Raft timing is `performance_multiplier = 1` (a crashed leader is
//! replaced within ~3-5 s; the default multiplier takes ~15 s).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::openbao::{
    ROOT_TOKEN, bao_binary, call, create_test_root, init_one_share, read_kv_at, unseal_with,
};
use crate::{eventually, free_port};

/// How many nodes [`OpenBaoCluster::start`] runs.
pub const NODES: usize = 3;

#[derive(Debug)]
struct Node {
    addr: String,
    config: PathBuf,
    log: PathBuf,
    home: PathBuf,
    child: Option<Child>,
}

/// A running three-node cluster with [`ROOT_TOKEN`] and the `vps` KV v2 mount.
#[derive(Debug)]
pub struct OpenBaoCluster {
    nodes: Vec<Node>,
    unseal_key: String,
    pub root_token: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl OpenBaoCluster {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..NODES).map(|_| (free_port(), free_port())).collect();
        let nodes: Vec<Node> = ports
            .iter()
            .enumerate()
            .map(|(i, &(api, cluster))| {
                let home = dir.path().join(format!("n{i}"));
                std::fs::create_dir_all(home.join("raft")).unwrap();
                let config = home.join("bao.hcl");
                std::fs::write(&config, node_config(i, &home, api, cluster, &ports)).unwrap();
                Node {
                    addr: format!("http://127.0.0.1:{api}"),
                    config,
                    log: home.join("bao.log"),
                    home,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self {
            nodes,
            unseal_key: String::new(),
            root_token: ROOT_TOKEN.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            dir,
        };
        for i in 0..NODES {
            cluster.spawn(i);
        }
        for i in 0..NODES {
            cluster.wait_answering(i).await;
        }
        let (key, generated_root) = init_one_share(&cluster.http, &cluster.nodes[0].addr).await;
        cluster.unseal_key = key;
        cluster.unseal(0).await;
        eventually(
            "node 0 to become active",
            Duration::from_secs(60),
            || async { cluster.health(0).await.filter(|h| h.0 == 200) },
        )
        .await;
        create_test_root(&cluster.http, &cluster.nodes[0].addr, &generated_root).await;
        // Joined nodes become voters after the stabilization time (10 s by default).
        cluster
            .root_on(
                0,
                reqwest::Method::POST,
                "sys/storage/raft/autopilot/configuration",
                Some(json!({ "server_stabilization_time": "1s" })),
            )
            .await;
        cluster
            .root_on(
                0,
                reqwest::Method::POST,
                "sys/mounts/vps",
                Some(json!({ "type": "kv", "options": { "version": "2" } })),
            )
            .await;
        for i in 1..NODES {
            cluster.unseal(i).await;
        }
        cluster.wait_settled().await;
        cluster
    }

    /// Every node's API address, in node order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Node `i`'s log (for a failing test's message).
    pub fn log(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// The node that answers `sys/health` with 200 now, if any.
    pub async fn active_index(&self) -> Option<usize> {
        for i in 0..NODES {
            if self.health(i).await.is_some_and(|h| h.0 == 200) {
                return Some(i);
            }
        }
        None
    }

    /// Waits (bounded) until a node other than `not` is active; returns it.
    pub async fn wait_for_new_leader(&self, not: usize) -> usize {
        eventually(
            "a new OpenBao leader to be elected",
            Duration::from_secs(60),
            || async { self.active_index().await.filter(|&i| i != not) },
        )
        .await
    }

    /// Kills node `i` with SIGKILL, as a crash; its address then refuses connections.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Starts node `i` again on its data and unseals it; waits until it is a standby or active.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i).await;
        self.spawn(i);
        self.wait_answering(i).await;
        self.unseal(i).await;
        eventually(
            "the restarted node to be unsealed and in the cluster",
            Duration::from_secs(60),
            || async { self.health(i).await.filter(|h| h.0 == 200 || h.0 == 429) },
        )
        .await;
    }

    /// Waits until one node is active, the others standbys, and all three raft voters.
    pub async fn wait_settled(&self) {
        eventually(
            "one active OpenBao node, two standbys, three voters",
            Duration::from_secs(90),
            || async {
                let mut codes = Vec::new();
                for i in 0..NODES {
                    codes.push(self.health(i).await?.0);
                }
                codes.sort_unstable();
                if codes != [200, 429, 429] {
                    return None;
                }
                let active = self.active_index().await?;
                let (status, config) = self
                    .api(
                        active,
                        reqwest::Method::GET,
                        "sys/storage/raft/configuration",
                        &self.root_token,
                        None,
                    )
                    .await;
                let servers = config["data"]["config"]["servers"].as_array()?.clone();
                (status == 200
                    && servers.len() == NODES
                    && servers.iter().all(|s| s["voter"] == true))
                .then_some(())
            },
        )
        .await;
    }

    /// Calls node `i`'s HTTP API; returns status and JSON body (`Null` when empty or when the
    /// node cannot be reached: status 0).
    pub async fn api(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.http, &self.nodes[i].addr, method, path, token, body)
            .await
            .unwrap_or((0, Value::Null))
    }

    /// Reads the current version of a KV v2 secret as root from the active node (standbys serve
    /// reads from a replica that may lag): `(data, version)`.
    pub async fn read_kv(&self, path: &str) -> Option<(Value, u64)> {
        let active = eventually("an active OpenBao node", Duration::from_secs(60), || {
            self.active_index()
        })
        .await;
        read_kv_at(&self.http, &self.nodes[active].addr, &self.root_token, path).await
    }

    /// Node `i`'s `sys/health` status code and body; `None` when it does not answer.
    async fn health(&self, i: usize) -> Option<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}/v1/sys/health", self.nodes[i].addr))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn root_on(&self, i: usize, method: reqwest::Method, path: &str, body: Option<Value>) {
        let (status, json) = self.api(i, method, path, &self.root_token, body).await;
        assert!(
            (200..300).contains(&status),
            "OpenBao {path} answered {status}: {json}"
        );
    }

    /// Unseals node `i`. A joining node takes the key only once it has joined (`retry_join`
    /// runs every few seconds), so the key is given until the node says it is unsealed.
    async fn unseal(&self, i: usize) {
        let key = self.unseal_key.clone();
        eventually(
            &format!(
                "OpenBao node {i} to be unsealed (log: {})",
                self.nodes[i].log.display()
            ),
            Duration::from_secs(60),
            || async {
                let state = unseal_with(&self.http, &self.nodes[i].addr, &key).await;
                (state["sealed"] == false).then_some(())
            },
        )
        .await;
    }

    async fn wait_answering(&self, i: usize) {
        eventually(
            &format!(
                "OpenBao node {i} to listen (log: {})",
                self.nodes[i].log.display()
            ),
            Duration::from_secs(30),
            || async { self.health(i).await.map(|_| ()) },
        )
        .await;
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(bao_binary())
            .args(["server", "-config"])
            .arg(&node.config)
            .env("HOME", &node.home)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run bao: {e}"));
        node.child = Some(child);
    }

    /// The directory holding the nodes' data, configuration and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Node `i`'s configuration: raft storage with fast timing, for the joining nodes `retry_join`
/// to every other node (node 0 is initialised: it starts the cluster), and an explicit cluster
/// listener (by default it takes the API port + 1, another node's).
fn node_config(i: usize, home: &Path, api: u16, cluster: u16, all: &[(u16, u16)]) -> String {
    let joins: String = all
        .iter()
        .enumerate()
        .filter(|(j, _)| i != 0 && *j != i)
        .map(|(_, (other, _))| {
            format!("  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:{other}\"\n  }}\n")
        })
        .collect();
    format!(
        "storage \"raft\" {{\n  path = \"{raft}\"\n  node_id = \"n{i}\"\n  performance_multiplier = 1\n{joins}}}\n\
         listener \"tcp\" {{\n  address = \"127.0.0.1:{api}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
         api_addr = \"http://127.0.0.1:{api}\"\n\
         cluster_addr = \"http://127.0.0.1:{cluster}\"\n\
         disable_mlock = true\n",
        raft = home.join("raft").display()
    )
}
