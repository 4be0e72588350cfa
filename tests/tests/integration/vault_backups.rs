//! Vault backups: snapshots of an OpenBao with integrated raft storage, taken by a control plane
//! that has only its shipped policy, kept to the configured number, and reported as `lastBackup`;
//! and what the health answer says where backups are not configured or not possible.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_server::clock::iso8601;
use keyward_server::config::BackupConfig;
use keyward_tests::control_plane::Options;
use keyward_tests::{ControlPlane, Database, OpenBao, eventually, workspace_root};
use reqwest::Method;
use serde_json::{Value, json};

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "snap"));
    found.sort();
    found
}

async fn health(cp: &ControlPlane) -> Value {
    let reply = cp.admin_get("/api/v1/admin/vault/health").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// A token with only the shipped control-plane policy.
async fn control_plane_token(bao: &OpenBao) -> String {
    let hcl =
        std::fs::read_to_string(workspace_root().join("packaging/vault/keyward-control-plane.hcl"))
            .unwrap();
    bao.put_policy("keyward-control-plane", &hcl).await;
    bao.root(
        Method::POST,
        "auth/token/create",
        Some(json!({ "policies": ["keyward-control-plane"], "no_default_policy": true })),
    )
    .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn raft_snapshots_are_taken_on_schedule_kept_to_the_retention_and_reported() {
    let bao = OpenBao::start_raft().await;
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().join("vault");
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            algorithm: KeyAlgorithm::Ed25519,
            vault_token: Some(control_plane_token(&bao).await),
            backup: Some(BackupConfig {
                dir: Some(dir.clone()),
                interval: Duration::from_secs(3600),
                retention: 2,
            }),
            ..Options::default()
        },
    )
    .await;
    cp.create_tenant("backed-up").await;

    // The first snapshot is due at start.
    let first = eventually("the first snapshot", Duration::from_secs(30), || async {
        let h = health(&cp).await;
        (h["backupStatus"] == "ok").then_some(h)
    })
    .await;
    let files = snapshots(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with("vault-raft-") && name.ends_with(".snap"),
        "{name}"
    );
    let meta = std::fs::metadata(&files[0]).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let bytes = std::fs::read(&files[0]).unwrap();
    assert_eq!(
        &bytes[..2],
        &[0x1f, 0x8b],
        "a raft snapshot is a gzip archive"
    );
    let mtime = iso8601(meta.modified().unwrap().into());
    assert_eq!(first["lastBackup"], mtime.as_str());
    assert_eq!(first["storageStatus"], "ok");
    assert!(first.get("backupError").is_none());

    // More snapshots: only the newest two stay, and lastBackup is the newest.
    let running = cp.server();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let taken = running.backups.snapshot_now().await.unwrap();
        assert!(taken.bytes > 0);
    }
    let files = snapshots(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let newest = iso8601(
        std::fs::metadata(&files[1])
            .unwrap()
            .modified()
            .unwrap()
            .into(),
    );
    assert_eq!(health(&cp).await["lastBackup"], newest.as_str());
    assert!(
        !std::fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".partial")),
        "no partial file is left behind"
    );

    // Each snapshot is audited.
    let events = cp
        .admin_get("/api/v1/admin/audit?action=vault.backup")
        .await
        .json();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert!(
        events
            .iter()
            .all(|e| e["outcome"] == "success" && e["actorRole"] == "system")
    );
}

#[tokio::test]
async fn without_raft_storage_or_a_backup_dir_the_health_answer_says_so() {
    let bao = OpenBao::start().await;
    let plain = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let h = health(&plain).await;
    assert_eq!(h["backupStatus"], "not_configured");
    assert!(h["lastBackup"].is_null());
    assert_eq!(h["sealed"], false);

    // A backup directory, but OpenBao's dev server keeps its data in memory: no snapshots.
    let backups = tempfile::tempdir().unwrap();
    let configured = ControlPlane::start_with(
        &bao,
        Options {
            algorithm: KeyAlgorithm::Ed25519,
            backup: Some(BackupConfig {
                dir: Some(backups.path().to_path_buf()),
                ..BackupConfig::default()
            }),
            ..Options::default()
        },
    )
    .await;
    let h = eventually("the snapshot attempt", Duration::from_secs(30), || async {
        let h = health(&configured).await;
        (h["backupStatus"] != "pending").then_some(h)
    })
    .await;
    assert_eq!(h["backupStatus"], "unsupported_storage", "{h}");
    assert!(h["lastBackup"].is_null());
    assert!(h["backupError"].as_str().unwrap().contains("raft"), "{h}");
    assert!(snapshots(backups.path()).is_empty());
    let failures = configured
        .admin_get("/api/v1/admin/audit?action=vault.backup")
        .await
        .json();
    assert_eq!(failures["events"][0]["outcome"], "failure");
}
