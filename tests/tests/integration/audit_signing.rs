//! The audit chain's signed head against a real OpenBao (its transit engine signs, KV keeps the
//! checkpoint): signed on schedule, checked online and in a bundle offline, and a log cut short in
//! SQL told — by the running server, by the API and by `keyward-server audit verify` — until an
//! operator re-anchors it.

use std::path::Path;
use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::control_plane::Options;
use keyward_tests::openbao::AUDIT_HEAD_KEY;
use keyward_tests::server_cli::{self, run};
use keyward_tests::{ControlPlane, OpenBao, eventually, unique_tenant};
use reqwest::Method;
use serde_json::Value;
use sqlx::Connection;

/// The server's configuration for the commands, as an operator's file would hold it: the
/// database, Vault and the audit head's key.
fn command_config(dir: &Path, cp: &ControlPlane, bao: &OpenBao) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = server_cli::write_config(dir, &cp.database_url, bao);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    write!(
        file,
        "\n[audit_signing]\nkey = \"{AUDIT_HEAD_KEY}\"\ninterval = \"1s\"\n"
    )
    .unwrap();
    path
}

async fn verify(cp: &ControlPlane) -> Value {
    let reply = cp.admin_get("/api/v1/admin/audit/verify").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

#[tokio::test]
async fn a_log_cut_short_in_sql_is_told_by_the_signed_checkpoint_until_an_operator_reanchors_it() {
    let bao = OpenBao::start().await;
    bao.enable_audit_head_key().await;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            algorithm: KeyAlgorithm::Ed25519,
            configure: Some(|config| {
                config.audit_signing.key = Some(AUDIT_HEAD_KEY.into());
                config.audit_signing.interval = Duration::from_secs(1);
            }),
            ..Options::default()
        },
    )
    .await;
    for name in ["sign-a", "sign-b"] {
        cp.create_tenant(&unique_tenant(name)).await;
    }
    let created = cp.admin_get("/api/v1/admin/audit?limit=1").await.json()["events"][0]["seq"]
        .as_i64()
        .unwrap();

    // The running server signs a head past the tenants' creation and checkpoints it in Vault.
    let verdict = eventually(
        "a checkpoint past the tenants",
        Duration::from_secs(20),
        || async {
            let v = verify(&cp).await;
            (v["head"]["checkpoint"]["seq"].as_i64() >= Some(created)).then_some(v)
        },
    )
    .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["head"]["status"], "ok", "{verdict}");
    assert!(
        verdict["head"]["signedHeads"].as_u64() >= Some(2),
        "{verdict}"
    );
    let (checkpoint, _) = bao.read_kv("_keyward/audit_head").await.unwrap();
    assert!(checkpoint["signature"].as_str().is_some(), "{checkpoint}");

    // The commands, as an operator runs them: verify, the public keys, a bundle checked offline.
    let dir = tempfile::tempdir().unwrap();
    let config = command_config(dir.path(), &cp, &bao);
    let verified = run(&config, &["audit", "verify"]).await;
    assert_eq!(verified.code, 0, "{}", verified.json);
    assert_eq!(verified.json["head"]["status"], "ok");
    let keys = run(&config, &["audit", "head-keys"]).await;
    assert_eq!(keys.code, 0, "{}", keys.stderr);
    assert_eq!(keys.json["key"], format!("transit/keys/{AUDIT_HEAD_KEY}"));
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, keys.json.to_string()).unwrap();
    let bundle = dir.path().join("bundle.jsonl");
    let (keys_path, bundle_path) = (keys_file.to_str().unwrap(), bundle.to_str().unwrap());
    let since = "2000-01-01T00:00:00Z";
    let exported = run(
        &config,
        &["audit", "export", "--since", since, "-o", bundle_path],
    )
    .await;
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    let checked = run(
        &config,
        &["audit", "verify-bundle", "--keys", keys_path, bundle_path],
    )
    .await;
    let offline = checked.json;
    assert_eq!(checked.code, 0, "{offline}");
    // (Events of the current second are after `--until`, which defaults to now.)
    let heads = &offline["signedHeads"];
    assert!(heads["signedHeads"].as_u64() >= Some(1), "{offline}");
    assert_eq!(
        heads["signaturesChecked"], heads["signedHeads"],
        "{offline}"
    );

    // Someone with the database cuts the log back to before the tenants' creation.
    let cut_to = created - 2;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&cp.database_url)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq > $1")
        .bind(cut_to)
        .execute(&mut db)
        .await
        .unwrap();
    // The chain alone still verifies; the checkpoint says it was cut.
    let verdict = eventually("the cut told", Duration::from_secs(20), || async {
        let v = verify(&cp).await;
        (v["ok"] == false).then_some(v)
    })
    .await;
    assert_eq!(verdict["firstBrokenSeq"], Value::Null, "{verdict}");
    assert!(
        ["truncated", "rewritten"].contains(&verdict["head"]["status"].as_str().unwrap()),
        "{verdict}"
    );
    // The server noticed on its own: it signs nothing over the cut, says so once in the log
    // itself, and raises the metric.
    let mismatch = eventually("the mismatch audited", Duration::from_secs(20), || async {
        let events = cp
            .admin_get("/api/v1/admin/audit?action=audit.head.mismatch")
            .await
            .json();
        events["events"].as_array().and_then(|e| e.first().cloned())
    })
    .await;
    assert_eq!(mismatch["outcome"], "failure", "{mismatch}");
    assert!(
        mismatch["detail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cut off") || r.contains("rewritten")),
        "{mismatch}"
    );
    let metrics = cp.request(Method::GET, "/metrics", None, None).await.text();
    assert!(
        metrics.contains("keyward_audit_head_mismatch 1"),
        "{metrics}"
    );
    let refused = run(&config, &["audit", "verify"]).await;
    assert_eq!(refused.code, 1, "{}", refused.json);

    // The operator looks, then re-anchors: audited with the reason, and all is well again.
    let reason = "cut in the test, looked at";
    let reanchored = run(&config, &["audit", "reset-checkpoint", "--reason", reason]).await;
    assert_eq!(reanchored.code, 0, "{}", reanchored.stderr);
    let verdict = eventually(
        "a good verdict after the reset",
        Duration::from_secs(20),
        || async {
            let v = verify(&cp).await;
            (v["ok"] == true).then_some(v)
        },
    )
    .await;
    assert_eq!(verdict["head"]["status"], "ok", "{verdict}");
    let reset = cp
        .admin_get("/api/v1/admin/audit?action=audit.head.reset")
        .await
        .json();
    assert_eq!(reset["events"][0]["detail"]["reason"], reason, "{reset}");
    let metrics = eventually("the metric back to 0", Duration::from_secs(20), || async {
        let m = cp.request(Method::GET, "/metrics", None, None).await.text();
        m.contains("keyward_audit_head_mismatch 0").then_some(m)
    })
    .await;
    assert!(metrics.contains("keyward_audit_head_signed_seq"));
}
