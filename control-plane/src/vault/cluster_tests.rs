//! [`VaultStore`] against two fake nodes over HTTP: the active node applies a write and dies
//! before it answers; the store finds the other node active and repeats the write, which meets a
//! check-and-set mismatch; it reads the current version back and settles the write as done when
//! Vault holds exactly what it wrote, else reports the mismatch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use keyward_common::{KeyKind, TenantId};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{KeySetSecret, SecretStore, VaultError, VaultStore};
use crate::config::VaultConfig;

/// What the fake cluster shares: whether node 0 has "died", and what it wrote before.
#[derive(Default)]
struct Cluster {
    node0_dead: bool,
    written: Option<Value>,
    /// Node 1 holds someone else's key set instead of ours.
    other_writer: bool,
}

type Shared = Arc<Mutex<Cluster>>;

fn health(active: bool) -> Json<Value> {
    Json(json!({ "initialized": true, "sealed": false, "standby": !active, "version": "2.7.2" }))
}

/// Node 0: active until its first write, which it applies and never answers.
fn node0(shared: Shared) -> Router {
    Router::new()
        .route(
            "/v1/sys/health",
            get(|State(s): State<Shared>| async move {
                let dead = s.lock().unwrap().node0_dead;
                health(!dead)
            }),
        )
        .route(
            "/v1/vps/data/{*path}",
            post(
                // vaultrs sends JSON without a content type, as Vault accepts.
                |State(s): State<Shared>, body: axum::body::Bytes| async move {
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    {
                        let mut cluster = s.lock().unwrap();
                        cluster.written = Some(body["data"].clone());
                        cluster.node0_dead = true;
                    }
                    // The answer is lost: longer than the client's timeout.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    StatusCode::OK
                },
            ),
        )
        .with_state(shared)
}

/// Node 1: a standby until node 0 dies, then active; its version 2 is what node 0 wrote.
fn node1(shared: Shared) -> Router {
    Router::new()
        .route(
            "/v1/sys/health",
            get(|State(s): State<Shared>| async move {
                let active = s.lock().unwrap().node0_dead;
                health(active)
            }),
        )
        .route(
            "/v1/vps/data/{*path}",
            post(|| async {
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "errors": ["check-and-set parameter did not match the current version"] })),
                )
            })
            .get(|State(s): State<Shared>| async move {
                let cluster = s.lock().unwrap();
                let mut data = cluster.written.clone().unwrap_or(Value::Null);
                if cluster.other_writer {
                    data["public_key"] = json!("ssh-ed25519 AAAAsomeone-else");
                }
                Json(json!({ "request_id": "r1", "lease_id": "", "renewable": false,
                    "lease_duration": 0, "wrap_info": null, "warnings": null, "auth": null,
                    "data": { "data": data, "metadata": {
                    "created_time": "2026-12-06T12:00:00Z", "deletion_time": "",
                    "custom_metadata": null, "destroyed": false, "version": 2 } } }))
            }),
        )
        .with_state(shared)
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

async fn store_on_fake_cluster(other_writer: bool) -> Arc<VaultStore> {
    let shared: Shared = Arc::new(Mutex::new(Cluster {
        other_writer,
        ..Cluster::default()
    }));
    let addresses = vec![
        serve(node0(shared.clone())).await,
        serve(node1(shared)).await,
    ];
    VaultStore::connect(&VaultConfig {
        addresses,
        token: Some("test-token".into()),
        timeout: Duration::from_millis(500),
        failover_timeout: Duration::from_secs(10),
        ..VaultConfig::default()
    })
    .await
    .unwrap()
}

fn our_key_set() -> KeySetSecret {
    KeySetSecret {
        private_key: Zeroizing::new("-----BEGIN OPENSSH PRIVATE KEY-----".into()),
        public_key: "ssh-ed25519 AAAAours".into(),
        created_at: "2026-12-06T12:00:00Z".into(),
        last_rotated: "2026-12-06T12:00:00Z".into(),
        rotation_policy: "90_days".into(),
        origin: keyward_common::KeyOrigin::Generated,
    }
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_settled_on_the_new_active_node() {
    let store = store_on_fake_cluster(false).await;
    let tenant: TenantId = "t1".parse().unwrap();
    let version = store
        .write_key_set(&tenant, KeyKind::Admin, &our_key_set(), 1)
        .await
        .unwrap();
    assert_eq!(version, 2);
    assert_eq!(store.failover.current(), 1);
}

#[tokio::test]
async fn someone_elses_write_after_a_lost_answer_stays_a_mismatch() {
    let store = store_on_fake_cluster(true).await;
    let tenant: TenantId = "t1".parse().unwrap();
    let err = store
        .write_key_set(&tenant, KeyKind::Admin, &our_key_set(), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::CasMismatch { cas: 1, .. }),
        "{err}"
    );
}
