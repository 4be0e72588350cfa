//! keyward against a real three-node OpenBao raft cluster (`vault.addresses`): the health shows
//! every node and the active one; killing the active node (SIGKILL) elects another and keyward
//! follows it without a restart; killing it in the middle of `rotate-all` leaves nothing half
//! applied: for every key set, SQL's Vault version and public key are what Vault holds.
//!
//! One cluster serves the whole story: starting three nodes costs more than the steps.

use std::time::Duration;

use keyward_common::{KeyAlgorithm, KeyKind};
use keyward_tests::control_plane::Options;
use keyward_tests::openbao_cluster::NODES;
use keyward_tests::{ControlPlane, OpenBaoCluster, eventually, unique_tenant};
use reqwest::Method;
use serde_json::Value;
use sqlx::{Connection, Row};

use crate::rotate_all::start_rotate_all;
use crate::rotation::tenants_with_rsa_keys_next;

/// The health's node list: three nodes, the one active among them as the cluster says.
async fn assert_health(cp: &ControlPlane, cluster: &OpenBaoCluster, active: usize) -> Value {
    let reply = cp.admin_get("/api/v1/admin/vault/health").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let health = reply.json();
    let nodes = health["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), NODES, "{health}");
    let addresses = cluster.addresses();
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node["address"], addresses[i].as_str(), "{health}");
        assert_eq!(node["active"], i == active, "node {i}: {health}");
    }
    // The fields of one Vault stay, now the active node's.
    assert_eq!(health["activeNode"], addresses[active].as_str(), "{health}");
    assert_eq!(health["sealed"], false);
    assert_eq!(health["standby"], false);
    assert_eq!(health["storageStatus"], "ok");
    health
}

/// Every key set of `tenants`: SQL's Vault version and public key against what Vault holds.
async fn assert_sql_matches_vault(cp: &ControlPlane, cluster: &OpenBaoCluster, tenants: &[String]) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&cp.database_url)
        .await
        .unwrap();
    for tenant in tenants {
        for kind in KeyKind::ALL {
            let row = sqlx::query(
                "SELECT vault_version, public_key FROM key_sets WHERE tenant_id = $1 AND kind = $2",
            )
            .bind(tenant.as_str())
            .bind(kind.to_string())
            .fetch_one(&mut conn)
            .await
            .unwrap();
            let sql_version: i64 = row.get(0);
            let sql_public: String = row.get(1);
            let (data, version) = cluster
                .read_kv(&format!("{tenant}/{}", kind.secret_name()))
                .await
                .unwrap();
            assert_eq!(
                sql_version,
                i64::try_from(version).unwrap(),
                "{tenant} {kind}: SQL and Vault versions differ"
            );
            assert_eq!(
                data["public_key"].as_str().unwrap(),
                sql_public.as_str(),
                "{tenant} {kind}: SQL and Vault keys differ"
            );
        }
    }
}

async fn rotate(cp: &ControlPlane, token: &str) -> Value {
    let reply = cp.tenant_call(token, Method::POST, "/rotate").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["status"], "success", "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyward_follows_a_three_node_openbao_cluster_through_leader_changes() {
    let mut cluster = OpenBaoCluster::start().await;
    let first = cluster.active_index().await.unwrap();
    let cp = ControlPlane::start_on_cluster(
        &cluster,
        Options {
            algorithm: KeyAlgorithm::Ed25519,
            ..Options::default()
        },
    )
    .await;

    // Three nodes, one active, the others unsealed standbys.
    let health = assert_health(&cp, &cluster, first).await;
    for node in health["nodes"].as_array().unwrap() {
        assert_eq!(node["reachable"], true, "{health}");
        assert_eq!(node["sealed"], false, "{health}");
        assert_eq!(node["standby"], node["active"] == false, "{health}");
        assert!(!node["version"].as_str().unwrap().is_empty(), "{health}");
    }

    // A rotation works, and Vault holds what SQL says.
    let tenant = unique_tenant("ha");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    rotate(&cp, &token).await;
    assert_sql_matches_vault(&cp, &cluster, std::slice::from_ref(&tenant)).await;

    // The active node crashes: another is elected, and keyward follows without a restart.
    cluster.kill(first).await;
    let second = cluster.wait_for_new_leader(first).await;
    let rotated = rotate(&cp, &token).await;
    assert_eq!(rotated["status"], "success", "{rotated}");
    let (stored, version) = cluster
        .read_kv(&format!("{tenant}/tenant_ssh"))
        .await
        .unwrap();
    assert_eq!(version, 3, "created, rotated before and after the crash");
    assert!(
        rotated["newKeyFingerprint"].as_str().is_some() && stored["public_key"].is_string(),
        "{rotated}"
    );
    let download = cp.tenant_call(&token, Method::POST, "/download").await;
    assert_eq!(download.status, 200, "{}", download.text());
    assert_sql_matches_vault(&cp, &cluster, std::slice::from_ref(&tenant)).await;
    // The dead node is shown unreachable, never a 500.
    let health = assert_health(&cp, &cluster, second).await;
    let dead = &health["nodes"][first];
    assert_eq!(dead["reachable"], false, "{health}");
    assert_eq!(dead["error"], "connection refused", "{health}");

    // It comes back (unsealed again) as a standby.
    cluster.restart(first).await;
    cluster.wait_settled().await;
    let health = assert_health(&cp, &cluster, second).await;
    assert_eq!(health["nodes"][first]["standby"], true, "{health}");

    // The active node crashes in the middle of rotate-all: the job completes, every tenant is
    // rotated or failed, and nothing is half applied.
    let ids: Vec<String> = (0..8)
        .map(|i| format!("{}-{i}", unique_tenant("bulk")))
        .collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    tenants_with_rsa_keys_next(&cp, &id_refs).await;
    let started = start_rotate_all(&cp).await;
    let job_id = started.json()["jobId"].as_str().unwrap().to_owned();
    let job_path = format!("/api/v1/admin/secrets/rotate-all/{job_id}");
    let done_before_crash = eventually(
        "the job to rotate its first tenant",
        Duration::from_secs(60),
        || async {
            let job = cp.admin_get(&job_path).await.json();
            let done = job["rotatedCount"].as_i64().unwrap_or(0);
            (done >= 1).then_some((done, job["status"] == "running"))
        },
    )
    .await;
    cluster.kill(second).await;
    let job = eventually("the job to end", Duration::from_secs(180), || async {
        let job = cp.admin_get(&job_path).await.json();
        (job["status"] != "running").then_some(job)
    })
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    println!(
        "rotate-all across the crash ({} rotated before it): {job}",
        done_before_crash.0
    );
    let total = job["total"].as_i64().unwrap();
    let rotated = job["rotatedCount"].as_i64().unwrap();
    let failed = job["failedCount"].as_i64().unwrap();
    assert!(total >= 8, "{job}");
    assert_eq!(
        rotated + failed,
        total,
        "every tenant rotated or failed: {job}"
    );
    // The crash came while the job ran, and the tenants after it were rotated on the new leader.
    assert!(done_before_crash.1, "the job ended before the crash: {job}");
    assert!(rotated > done_before_crash.0, "{job}");
    let mut all = ids.clone();
    all.push(tenant.clone());
    assert_sql_matches_vault(&cp, &cluster, &all).await;
    let third = cluster.wait_for_new_leader(second).await;
    assert_health(&cp, &cluster, third).await;
}
