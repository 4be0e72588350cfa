//! Debian's haproxy in TCP mode in front of control-plane replicas, as an operator deploys it:
//! one frontend for REST, one for the agents' mTLS (passed through, never terminated), each
//! balancing over every replica with health checks, and PROXY protocol v2 towards the replicas
//! from haproxy's own source address [`HAPROXY_SOURCE`] (which the replicas trust).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use keyward_test_support::{Proc, eventually, free_port, require_program};

use crate::ControlPlane;

/// Where haproxy's connections to the replicas come from: trust this one in
/// `proxy_protocol_from`, and tests connecting from 127.0.0.1 stay untrusted.
pub const HAPROXY_SOURCE: &str = "127.0.0.2";

/// Makes a replica's configuration trust haproxy's PROXY headers, REST and agents alike.
pub fn trust_haproxy(config: &mut keyward_server::config::Config) {
    let haproxy: ipnet::IpNet = format!("{HAPROXY_SOURCE}/32").parse().unwrap_or_else(|e| {
        panic!("{HAPROXY_SOURCE}/32: {e}");
    });
    config.server.proxy_protocol_from = vec![haproxy];
    config.agent_api.proxy_protocol_from = vec![haproxy];
}

/// A running haproxy; killed on drop.
#[derive(Debug)]
pub struct HaProxy {
    /// `http://127.0.0.1:PORT`: the REST frontend.
    pub rest_url: String,
    /// `https://127.0.0.1:PORT`: the agents' frontend.
    pub agent_url: String,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

fn backend(name: &str, servers: &[SocketAddr]) -> String {
    let mut out =
        format!("backend {name}\n    balance roundrobin\n    option redispatch\n    retries 3\n");
    for (i, addr) in servers.iter().enumerate() {
        out.push_str(&format!(
            "    server r{i} {addr} check inter 500ms fall 2 rise 2 send-proxy-v2 \
             check-send-proxy source {HAPROXY_SOURCE}\n"
        ));
    }
    out
}

impl HaProxy {
    /// haproxy in front of `replicas` (REST and agents), waiting until both frontends answer.
    pub async fn start(replicas: &[&ControlPlane]) -> Self {
        let haproxy = require_program(
            "haproxy",
            "apt-get install -y haproxy (scripts/install-test-deps)",
        );
        let dir = tempfile::tempdir().unwrap();
        let (rest_port, agent_port) = (free_port(), free_port());
        let rest: Vec<SocketAddr> = replicas.iter().map(|cp| cp.server().addr).collect();
        let agents: Vec<SocketAddr> = replicas.iter().map(|cp| cp.server().agent_addr).collect();
        let config = format!(
            "global\n    maxconn 4000\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    \
             timeout server 1h\n    timeout check 1s\n\n\
             frontend rest\n    bind 127.0.0.1:{rest_port}\n    default_backend rest\n\n\
             frontend agents\n    bind 127.0.0.1:{agent_port}\n    default_backend agents\n\n\
             {}\n{}",
            backend("rest", &rest),
            backend("agents", &agents)
        );
        let config_path: PathBuf = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config).unwrap();
        let check = Command::new(&haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&config_path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut proc = Proc(child);
        let rest_url = format!("http://127.0.0.1:{rest_port}");
        let http = reqwest::Client::new();
        let log_path = dir.path().join("haproxy.log");
        eventually("haproxy answers for REST", Duration::from_secs(20), || {
            assert!(
                proc.running(),
                "haproxy exited: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            let (http, url) = (http.clone(), format!("{rest_url}/healthz"));
            async move {
                let status = http.get(url).send().await.ok()?.status();
                status.is_success().then_some(())
            }
        })
        .await;
        Self {
            rest_url,
            agent_url: format!("https://127.0.0.1:{agent_port}"),
            _dir: dir,
            _proc: proc,
        }
    }

    /// A REST client whose connections come from `source` (a loopback address other than
    /// haproxy's own): what the replicas must audit.
    pub fn client_from(source: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .local_address(source.parse::<IpAddr>().unwrap())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }
}
