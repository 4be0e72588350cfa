//! One look at every node of the cluster: each node's `sys/health`, what the failover needs
//! ([`found`]) and what `GET /api/v1/admin/vault/health` shows.

use std::time::Duration;

use serde::Serialize;

use super::failover::Found;

/// One node as its `sys/health` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultNodeHealth {
    /// The address keyward is configured with.
    pub address: String,
    /// It answered `sys/health`.
    pub reachable: bool,
    pub initialized: bool,
    pub sealed: bool,
    /// Unsealed but not the active node (OpenBao's standbys serve reads and forward writes).
    pub standby: bool,
    /// The node that writes: initialised, unsealed, not a standby.
    pub active: bool,
    /// Empty when unreachable.
    pub version: String,
    #[serde(skip)]
    pub cluster_name: Option<String>,
    /// Why it could not be asked, in a few words (`connection refused`, `timed out`,
    /// `unreadable answer`); `null` when it answered.
    pub error: Option<String>,
}

impl VaultNodeHealth {
    /// A node that could not be asked.
    pub fn unreachable(address: &str, error: &str) -> Self {
        Self {
            address: address.to_owned(),
            reachable: false,
            initialized: false,
            sealed: false,
            standby: false,
            active: false,
            version: String::new(),
            cluster_name: None,
            error: Some(error.to_owned()),
        }
    }

    /// A node from its `sys/health` answer (asked with every state answering 200).
    pub fn from_answer(address: &str, health: &serde_json::Value) -> Self {
        let flag = |name: &str| health.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
        let (initialized, sealed, standby) = (flag("initialized"), flag("sealed"), flag("standby"));
        Self {
            address: address.to_owned(),
            reachable: true,
            initialized,
            sealed,
            standby,
            active: initialized && !sealed && !standby,
            version: health
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
            cluster_name: health
                .get("cluster_name")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            error: None,
        }
    }
}

/// `sys/health` with every state answering 200 and a body, so one request tells all.
pub const HEALTH_PATH: &str =
    "sys/health?standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200";

/// Asks one node. `timeout` bounds the look, so a node that hangs cannot hold up the others.
pub async fn probe(http: &reqwest::Client, address: &str, timeout: Duration) -> VaultNodeHealth {
    let answer = http
        .get(format!("{address}/v1/{HEALTH_PATH}"))
        .timeout(timeout)
        .send()
        .await;
    let response = match answer {
        Ok(response) => response,
        Err(e) => return VaultNodeHealth::unreachable(address, &short_reason(&e)),
    };
    match response.json::<serde_json::Value>().await {
        Ok(health) => VaultNodeHealth::from_answer(address, &health),
        Err(_) => VaultNodeHealth::unreachable(address, "unreadable answer"),
    }
}

/// Asks every node at once.
pub async fn probe_all(
    http: &reqwest::Client,
    addresses: &[String],
    timeout: Duration,
) -> Vec<VaultNodeHealth> {
    futures::future::join_all(addresses.iter().map(|a| probe(http, a, timeout))).await
}

/// What the failover makes of one look at every node.
pub fn found(nodes: &[VaultNodeHealth]) -> Found {
    if let Some(active) = nodes.iter().position(|n| n.active) {
        return Found::Active(active);
    }
    if !nodes.is_empty()
        && nodes
            .iter()
            .all(|n| n.reachable && (n.sealed || !n.initialized))
    {
        return Found::AllSealed;
    }
    Found::NoActive
}

/// A few words on why a node could not be asked, without addresses, paths or OS error text.
fn short_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection refused"
    } else {
        "request failed"
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(answer: serde_json::Value) -> VaultNodeHealth {
        VaultNodeHealth::from_answer("http://127.0.0.1:8200", &answer)
    }

    #[test]
    fn sys_health_answers_are_read_as_states() {
        let active = node(
            json!({"initialized": true, "sealed": false, "standby": false,
            "version": "2.7.2", "cluster_name": "c1"}),
        );
        assert!(active.active && active.reachable && !active.standby);
        assert_eq!(active.version, "2.7.2");
        let standby = node(json!({"initialized": true, "sealed": false, "standby": true}));
        assert!(!standby.active && standby.standby);
        // A sealed node says `standby: true` too; it is not active either way.
        let sealed = node(json!({"initialized": true, "sealed": true, "standby": true}));
        assert!(!sealed.active && sealed.sealed);
    }

    #[test]
    fn the_active_node_is_found_else_all_sealed_or_none_yet() {
        let active = node(json!({"initialized": true, "sealed": false, "standby": false}));
        let standby = node(json!({"initialized": true, "sealed": false, "standby": true}));
        let sealed = node(json!({"initialized": true, "sealed": true, "standby": true}));
        let uninit = node(json!({"initialized": false, "sealed": true}));
        let gone = VaultNodeHealth::unreachable("http://127.0.0.1:1", "connection refused");
        assert_eq!(
            found(&[gone.clone(), standby.clone(), active]),
            Found::Active(2)
        );
        assert_eq!(found(&[standby.clone(), standby.clone()]), Found::NoActive);
        assert_eq!(found(&[sealed.clone(), uninit]), Found::AllSealed);
        // One node that did not answer may be the one coming back: not "all sealed".
        assert_eq!(found(&[sealed, gone]), Found::NoActive);
        assert_eq!(found(&[]), Found::NoActive);
    }
}
