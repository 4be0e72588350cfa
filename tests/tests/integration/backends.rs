//! The same behaviour on both SQL backends: SQLite (the embedded default) and PostgreSQL.

use std::time::Duration;

use futures::future::join_all;
use keyward_tests::{ControlPlane, Database, OpenBao, eventually, unique_tenant};
use reqwest::Method;
use sqlx::Connection;

/// Rewrites one audit row behind keyward's back, as someone with SQL access could.
async fn tamper(database_url: &str, seq: i64) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database_url).await.unwrap();
    let done = sqlx::query("UPDATE audit_events SET detail = '{\"forged\":true}' WHERE seq = $1")
        .bind(seq)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

async fn lifecycle_is_consistent(database: Database) {
    let bao = OpenBao::start().await;
    let mut cp = ControlPlane::start_fast(&bao, database).await;
    let tenant = unique_tenant("db");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;

    // Concurrent downloads of one generation: exactly one gets the key.
    let downloads =
        join_all((0..6).map(|_| cp.tenant_call(&token, Method::POST, "/download"))).await;
    let mut statuses: Vec<u16> = downloads.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 410, 410, 410, 410, 410]);

    // Concurrent rotations of one tenant are serialised: none is lost.
    let rotations = join_all((0..5).map(|_| cp.tenant_call(&token, Method::POST, "/rotate"))).await;
    assert!(
        rotations.iter().all(|r| r.status == 200),
        "{:?}",
        rotations.iter().map(|r| r.text()).collect::<Vec<_>>()
    );
    let mut fingerprints: Vec<String> = rotations
        .iter()
        .map(|r| r.json()["newKeyFingerprint"].as_str().unwrap().to_owned())
        .collect();
    fingerprints.sort();
    fingerprints.dedup();
    assert_eq!(fingerprints.len(), 5);
    let creds = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(creds["keyGeneration"], 6);
    let (data, version) = bao.read_kv(&format!("{tenant}/tenant_ssh")).await.unwrap();
    assert_eq!(version, 6, "every rotation is one Vault version");
    let vault_fp =
        keyward_common::keys::public_key_fingerprint(data["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(
        creds["keyFingerprint"],
        vault_fp.as_str(),
        "SQL and Vault agree on the current key"
    );

    // State survives a restart, and no second bootstrap token is written.
    let admin_token = cp.admin_token.clone();
    std::fs::remove_file(cp.state_dir.path().join("bootstrap-admin-token")).unwrap();
    cp.restart().await;
    assert!(!cp.state_dir.path().join("bootstrap-admin-token").exists());
    assert_eq!(cp.admin_token, admin_token);
    assert_eq!(cp.tenant_call(&token, Method::GET, "").await.json(), creds);

    // Paging walks the whole log, newest first, with no gaps or repeats.
    let mut seqs = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/api/v1/admin/audit?tenantId={tenant}&limit=3&cursor={c}"),
            None => format!("/api/v1/admin/audit?tenantId={tenant}&limit=3"),
        };
        let page = cp.admin_get(&path).await.json();
        seqs.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_i64().unwrap()),
        );
        match page["nextCursor"].as_i64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let all = cp.audit_of(&tenant).await;
    assert_eq!(
        seqs,
        all.iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(seqs.windows(2).all(|w| w[0] > w[1]));
    // 1 create + 1 token + 1 download + 5 refused + 5 rotations.
    assert_eq!(all.len(), 13);
    let rotations = cp
        .admin_get(&format!(
            "/api/v1/admin/audit?tenantId={tenant}&action=key.rotate"
        ))
        .await
        .json();
    assert_eq!(rotations["events"].as_array().unwrap().len(), 5);
    let future = cp
        .admin_get("/api/v1/admin/audit?since=2999-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(future["events"].as_array().unwrap().len(), 0);
}

async fn tampering_is_found(database: Database) {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, database).await;
    for _ in 0..3 {
        let tenant = unique_tenant("chain");
        cp.create_tenant(&tenant).await;
    }
    let verdict = cp.admin_get("/api/v1/admin/audit/verify").await.json();
    assert_eq!(verdict["ok"], true, "{verdict}");
    // bootstrap token + 3 tenants.
    assert_eq!(verdict["checked"], 4);

    tamper(&cp.database_url, 3).await;
    let verdict = eventually(
        "the verifier to see the tampered row",
        Duration::from_secs(5),
        || async {
            let v = cp.admin_get("/api/v1/admin/audit/verify").await.json();
            (v["ok"] == false).then_some(v)
        },
    )
    .await;
    assert_eq!(verdict["firstBrokenSeq"], 3, "{verdict}");
    assert_eq!(verdict["checked"], 2);
}

#[tokio::test]
async fn sqlite_lifecycle_is_consistent() {
    lifecycle_is_consistent(Database::Sqlite).await;
}

#[tokio::test]
async fn postgres_lifecycle_is_consistent() {
    lifecycle_is_consistent(Database::Postgres).await;
}

/// An offboarding, from its start to the worker's last step, on the backend's own SQL.
async fn offboarding_completes(database: Database) {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            database,
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            configure: Some(|c| c.offboarding.check_interval = Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .await;
    let tenant = unique_tenant("off");
    cp.create_tenant(&tenant).await;
    cp.tenant_token(&tenant).await;
    let host = format!("{tenant}-vps");
    let registered = cp
        .admin_post(
            "/api/v1/admin/hosts",
            serde_json::json!({ "tenantId": tenant, "hostId": host }),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.text());

    let path = format!("/api/v1/admin/tenants/{tenant}");
    let body = serde_json::json!({ "confirm": tenant });
    let admin = Some(cp.admin_token.as_str());
    let started = cp
        .request(Method::DELETE, &path, admin, Some(body.clone()))
        .await;
    assert_eq!(started.status, 202, "{}", started.text());
    assert_eq!(started.json()["tokensRevoked"], 1);
    let done = eventually(
        "the offboarding to complete",
        Duration::from_secs(20),
        || async {
            let status = cp.admin_get(&format!("{path}/offboarding")).await.json();
            (status["status"] == "completed").then_some(status)
        },
    )
    .await;
    assert_eq!(done["hosts"][0]["state"], "never_enrolled", "{done}");
    let again = cp.request(Method::DELETE, &path, admin, Some(body)).await;
    assert_eq!(again.json()["completedAt"], done["completedAt"]);
    assert_eq!(bao.read_kv(&format!("{tenant}/tenant_ssh")).await, None);
}

#[tokio::test]
async fn sqlite_offboarding_completes() {
    offboarding_completes(Database::Sqlite).await;
}

#[tokio::test]
async fn postgres_offboarding_completes() {
    offboarding_completes(Database::Postgres).await;
}

#[tokio::test]
async fn sqlite_audit_tampering_is_found() {
    tampering_is_found(Database::Sqlite).await;
}

#[tokio::test]
async fn postgres_audit_tampering_is_found() {
    tampering_is_found(Database::Postgres).await;
}

/// A test that drops its servers without stopping them leaves their tasks on its runtime, which
/// the schema's drop blocks: a transaction they hold open can never end. The drop ends the
/// schema's sessions first, so it neither waits for it for ever nor leaves the schema behind.
#[tokio::test]
async fn a_schema_is_dropped_while_a_session_on_this_runtime_holds_its_tables() {
    use sqlx::Connection as _;
    let schema = keyward_tests::PgSchema::create().await;
    let name = schema.name.clone();
    let mut session = sqlx::PgConnection::connect(&schema.url()).await.unwrap();
    for statement in ["CREATE TABLE t (x int)", "BEGIN", "SELECT * FROM t"] {
        sqlx::query(statement).execute(&mut session).await.unwrap();
    }
    drop(schema);
    let mut admin = sqlx::PgConnection::connect(keyward_tests::postgres::ADMIN_URL)
        .await
        .unwrap();
    let left: (i64,) =
        sqlx::query_as("SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(left.0, 0, "schema {name} was dropped");
}

#[tokio::test]
async fn postgres_runs_one_rotation_scheduler_per_deployment() {
    use keyward_server::store::Store;
    let schema = keyward_tests::PgSchema::create().await;
    let replica_a = Store::connect(&schema.url(), None).await.unwrap();
    let replica_b = Store::connect(&schema.url(), None).await.unwrap();
    let mut lease = replica_a
        .try_scheduler_lease()
        .await
        .unwrap()
        .expect("the first replica becomes the scheduler");
    assert!(lease.is_held().await);
    assert!(
        replica_b.try_scheduler_lease().await.unwrap().is_none(),
        "a second replica of the deployment must wait"
    );
    // Another deployment, in a schema of its own in the same database, has its own scheduler.
    let other = keyward_tests::PgSchema::create().await;
    let other_store = Store::connect(&other.url(), None).await.unwrap();
    assert!(other_store.try_scheduler_lease().await.unwrap().is_some());

    // The scheduling replica goes away: its session ends and the other one takes over.
    drop(lease);
    let mut taken = eventually(
        "the second replica to take the scheduler lease",
        Duration::from_secs(10),
        || async { replica_b.try_scheduler_lease().await.unwrap() },
    )
    .await;
    assert!(taken.is_held().await);

    // On SQLite one process owns the file: it is always the scheduler.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::connect(
        &format!("sqlite://{}/k.db?mode=rwc", dir.path().display()),
        None,
    )
    .await
    .unwrap();
    assert!(sqlite.try_scheduler_lease().await.unwrap().is_some());
}
