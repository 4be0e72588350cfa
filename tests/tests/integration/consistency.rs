//! `check consistency`: SQL and a real OpenBao compared for every key set, and each kind of
//! drift found and named (as after restoring a SQL backup and a Vault snapshot of other times).

use keyward_server::consistency::check;
use keyward_server::store::Store;
use keyward_server::vault::VaultStore;
use keyward_tests::{ControlPlane, Database, OpenBao, unique_tenant};
use reqwest::Method;
use serde_json::json;
use sqlx::Connection;

#[tokio::test]
async fn check_consistency_finds_and_names_each_kind_of_drift() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let [ahead, deleted, mismatched, gone, fine] =
        ["ahead", "deleted", "mismatch", "gone", "fine"].map(unique_tenant);
    for tenant in [&ahead, &deleted, &mismatched, &gone, &fine] {
        cp.create_tenant(tenant).await;
    }
    let store = Store::connect(&cp.database_url, None).await.unwrap();
    let vault = VaultStore::connect(&cp.config().vault).await.unwrap();
    let report = check(&store, vault.as_ref()).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checked, 10);
    assert!(report.findings.is_empty(), "{report:?}");

    let mount = &cp.config().vault.mount;
    // A newer version SQL never committed: reported, not drift.
    bao.root(
        Method::POST,
        &format!("{mount}/data/{ahead}/tenant_ssh"),
        Some(json!({ "data": { "note": "an operation that did not commit" } })),
    )
    .await;
    // SQL's version deleted in Vault; the whole secret gone.
    bao.root(
        Method::POST,
        &format!("{mount}/delete/{deleted}/admin_ssh"),
        Some(json!({ "versions": [1] })),
    )
    .await;
    bao.root(
        Method::DELETE,
        &format!("{mount}/metadata/{gone}/tenant_ssh"),
        None,
    )
    .await;
    // SQL records another key than Vault holds.
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&cp.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE key_sets SET fingerprint = $1 WHERE tenant_id = $2 AND kind = 'tenant'")
        .bind("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .bind(&mismatched)
        .execute(&mut db)
        .await
        .unwrap();

    let report = check(&store, vault.as_ref()).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.checked, 10);
    assert_eq!(report.drift, 3, "{report:#?}");
    let found: Vec<(String, String, &str)> = report
        .findings
        .iter()
        .map(|f| (f.tenant_id.clone(), f.kind.to_string(), f.status))
        .collect();
    for want in [
        (ahead.clone(), "tenant".to_owned(), "vault_ahead"),
        (deleted.clone(), "admin".to_owned(), "version_missing"),
        (gone.clone(), "tenant".to_owned(), "missing_in_vault"),
        (mismatched.clone(), "tenant".to_owned(), "key_mismatch"),
    ] {
        assert!(found.contains(&want), "{want:?} not in {report:#?}");
    }
    assert_eq!(report.findings.len(), 4);
    assert!(!found.iter().any(|(t, _, _)| *t == fine));
}
