//! `make cluster`: issue #15's production topology on one machine, for people to try: a
//! three-node OpenBao raft cluster, three `keyward-server` replicas on one PostgreSQL schema
//! (127.0.0.1:5432, database `test`), and Debian's haproxy in TCP mode in front of them (REST
//! and the agents' mTLS, PROXY protocol v2 towards the replicas). `keyward-cluster`
//! (`tests/src/bin/keyward-cluster.rs`) runs it until `make cluster-stop`; the test
//! `replicas::the_make_cluster_topology_serves_through_haproxy` runs the same code.

use crate::control_plane::Options;
use crate::haproxy::{HaProxy, trust_haproxy};
use crate::openbao_cluster::OpenBaoCluster;
use crate::{ControlPlane, Database};

/// The running topology.
#[derive(Debug)]
pub struct Cluster {
    pub bao: OpenBaoCluster,
    pub replicas: Vec<ControlPlane>,
    pub lb: HaProxy,
}

impl Cluster {
    /// Starts everything and returns once haproxy answers for the replicas.
    pub async fn start() -> Self {
        let bao = OpenBaoCluster::start().await;
        let first = ControlPlane::start_on_cluster(
            &bao,
            Options {
                database: Database::Postgres,
                configure: Some(trust_haproxy),
                ..Options::default()
            },
        )
        .await;
        let (second, third) = (first.replica().await, first.replica().await);
        let lb = HaProxy::start(&[&first, &second, &third]).await;
        Self {
            bao,
            replicas: vec![first, second, third],
            lb,
        }
    }

    /// Shell variables naming what runs (`cluster.env`). Holds the admin and Vault root tokens.
    pub fn env(&self) -> String {
        let replicas: Vec<String> = self.replicas.iter().map(|r| r.url.clone()).collect();
        format!(
            "KEYWARD_URL={}\nKEYWARD_AGENT_URL={}\nKEYWARD_ADMIN_TOKEN={}\nKEYWARD_REPLICAS=\"{}\"\n\
             VAULT_ADDRS=\"{}\"\nVAULT_TOKEN={}\n",
            self.lb.rest_url,
            self.lb.agent_url,
            self.replicas[0].admin_token,
            replicas.join(" "),
            self.bao.addresses().join(" "),
            self.bao.root_token,
        )
    }

    /// Stops the replicas, then haproxy and OpenBao (their processes end with them).
    pub async fn stop(mut self) {
        for replica in &mut self.replicas {
            replica.stop().await;
        }
    }
}
