//! Rotation automation against real OpenBao: the scheduler with an injected clock, rotations
//! missed while the control plane was down, and per-tenant policies. (Bulk rotation: rotate_all.rs.)

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use keyward_common::{KeyAlgorithm, KeyKind, TenantId};
use keyward_server::caller::Caller;
use keyward_server::clock::{Clock, ManualClock, iso8601};
use keyward_server::config::{KeysConfig, RotationConfig, VaultConfig};
use keyward_server::lifecycle::{KeyLifecycle, NewTenant};
use keyward_server::rotation::{DueReport, RotationScheduler};
use keyward_server::store::Store;
use keyward_server::vault::VaultStore;
use keyward_tests::openbao::ROOT_TOKEN;
use keyward_tests::{ControlPlane, Database, OpenBao, Reply, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

const DAY: Duration = Duration::from_secs(86_400);

/// A lifecycle over the real OpenBao and a SQLite file, on a clock that moves only when told.
pub(crate) async fn lifecycle_on_manual_clock(
    bao: &OpenBao,
    dir: &tempfile::TempDir,
) -> (Arc<KeyLifecycle>, Arc<ManualClock>) {
    let store = Store::connect(
        &format!("sqlite://{}/k.db?mode=rwc", dir.path().display()),
        None,
    )
    .await
    .unwrap();
    let vault = VaultStore::connect(&VaultConfig {
        address: Some(bao.addr.clone()),
        token: Some(ROOT_TOKEN.into()),
        ..VaultConfig::default()
    })
    .await
    .unwrap();
    let clock = Arc::new(ManualClock::new(
        chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let keys = KeysConfig {
        algorithm: KeyAlgorithm::Ed25519,
        ..KeysConfig::default()
    };
    let lifecycle = KeyLifecycle::new(
        vault,
        store,
        clock.clone(),
        keys,
        Arc::new(keyward_server::agents::hub::Hub::default()),
    );
    (Arc::new(lifecycle), clock)
}

pub(crate) fn tenant(id: &str) -> NewTenant {
    NewTenant {
        tenant_id: id.parse().unwrap(),
        vps_ip: "192.0.2.10".into(),
        ssh_port: 22,
        tenant_user: "tenant".parse().unwrap(),
        admin_user: "kwadmin".parse().unwrap(),
    }
}

/// The Vault version of each of the tenant's key sets.
pub(crate) async fn vault_versions(bao: &OpenBao, tenant: &str) -> [u64; 2] {
    let mut out = [0; 2];
    for (i, kind) in KeyKind::ALL.iter().enumerate() {
        out[i] = bao
            .read_kv(&format!("{tenant}/{}", kind.secret_name()))
            .await
            .unwrap()
            .1;
    }
    out
}

#[tokio::test]
async fn the_scheduler_rotates_due_keys_and_leaves_the_others_on_an_injected_clock() {
    let bao = OpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (lifecycle, clock) = lifecycle_on_manual_clock(&bao, &dir).await;
    let admin = Caller::system();
    for id in ["weekly", "monthly", "default"] {
        lifecycle.create_tenant(&admin, tenant(id)).await.unwrap();
    }
    let policy = |days: u32| Some((DAY * days, Duration::from_secs(3600), KeyAlgorithm::Ed25519));
    for (id, days) in [("weekly", 7), ("monthly", 30)] {
        let t: TenantId = id.parse().unwrap();
        lifecycle
            .set_rotation_policy(&admin, &t, policy(days))
            .await
            .unwrap();
    }
    let scheduler = RotationScheduler::new(lifecycle.clone(), RotationConfig::default());
    let at = |days: i64| {
        iso8601(
            chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                + chrono::Duration::days(days),
        )
    };

    // Day 6: nothing is due yet.
    clock.advance(chrono::Duration::days(6));
    assert_eq!(
        scheduler.run_due(clock.now()).await.unwrap(),
        DueReport::default()
    );

    // Day 8: only the weekly tenant's two key sets.
    clock.advance(chrono::Duration::days(2));
    let report = scheduler.run_due(clock.now()).await.unwrap();
    assert_eq!(report.rotated, 2, "{report:?}");
    assert_eq!(vault_versions(&bao, "weekly").await, [2, 2]);
    assert_eq!(vault_versions(&bao, "monthly").await, [1, 1]);
    assert_eq!(vault_versions(&bao, "default").await, [1, 1]);
    let (data, _) = bao.read_kv("weekly/admin_ssh").await.unwrap();
    assert_eq!(data["rotation_policy"], "7_days");
    assert_eq!(data["last_rotated"], at(8));
    let weekly: TenantId = "weekly".parse().unwrap();
    let ks = lifecycle
        .store()
        .key_set(&weekly, KeyKind::Admin)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(iso8601(ks.next_rotation), at(15));
    assert_eq!(
        ks.grace_until.map(iso8601),
        Some(iso8601(clock.now() + chrono::Duration::hours(1)))
    );
    // The same round again finds nothing: no key is rotated twice for one due time.
    assert_eq!(
        scheduler.run_due(clock.now()).await.unwrap(),
        DueReport::default()
    );

    // Day 31: weekly (due on day 15) and monthly (day 30), not default (day 90).
    clock.advance(chrono::Duration::days(23));
    let report = scheduler.run_due(clock.now()).await.unwrap();
    assert_eq!(report.rotated, 4, "{report:?}");
    assert_eq!(vault_versions(&bao, "weekly").await, [3, 3]);
    assert_eq!(vault_versions(&bao, "monthly").await, [2, 2]);
    assert_eq!(vault_versions(&bao, "default").await, [1, 1]);

    // The scheduler was down from day 31 to day 200: everything is overdue, and each key set is
    // rotated once, not once per missed period.
    clock.advance(chrono::Duration::days(169));
    let report = scheduler.run_due(clock.now()).await.unwrap();
    assert_eq!(report.rotated, 6, "{report:?}");
    assert_eq!(vault_versions(&bao, "weekly").await, [4, 4]);
    assert_eq!(vault_versions(&bao, "monthly").await, [3, 3]);
    assert_eq!(vault_versions(&bao, "default").await, [2, 2]);
    let ks = lifecycle
        .store()
        .key_set(&weekly, KeyKind::Tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        iso8601(ks.next_rotation),
        at(207),
        "the next due time counts from the rotation"
    );

    // Every rotation is one audit event by the system, marked as scheduled.
    let events = lifecycle
        .store()
        .audit_events(&keyward_server::store::AuditFilter {
            action: Some("key.rotate".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .events;
    assert_eq!(events.len(), 12);
    assert!(events.iter().all(|e| e.actor_role == "system"
        && e.outcome == "success"
        && e.detail["trigger"] == "schedule"));
    assert!(lifecycle.store().verify_audit_chain().await.unwrap().ok);
}

/// Sets a key set's next rotation behind keyward's back, as if it had fallen due while the
/// control plane was stopped.
async fn make_overdue(database_url: &str, tenant: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database_url).await.unwrap();
    let done = sqlx::query(
        "UPDATE key_sets SET next_rotation = '2020-01-01T00:00:00Z' WHERE tenant_id = $1",
    )
    .bind(tenant)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 2);
}

pub(crate) async fn generations(cp: &ControlPlane, tenant: &str) -> (i64, i64) {
    let details = cp
        .admin_get(&format!("/api/v1/admin/secrets/tenant/{tenant}"))
        .await
        .json();
    let keys = &details["sshKeys"];
    (
        keys["adminSsh"]["generation"].as_i64().unwrap(),
        keys["tenantSsh"]["generation"].as_i64().unwrap(),
    )
}

async fn missed_rotations_run_at_start(database: Database) {
    let bao = OpenBao::start().await;
    let mut cp = ControlPlane::start_fast(&bao, database).await;
    cp.create_tenant("overdue").await;
    cp.create_tenant("fresh").await;
    cp.stop().await;
    make_overdue(&cp.database_url, "overdue").await;

    cp.restart().await;
    eventually(
        "the overdue key sets to be rotated after the start",
        Duration::from_secs(60),
        || async { (generations(&cp, "overdue").await == (2, 2)).then_some(()) },
    )
    .await;
    assert_eq!(generations(&cp, "fresh").await, (1, 1));
    assert_eq!(vault_versions(&bao, "overdue").await, [2, 2]);
    let rotations: Vec<Value> = cp
        .audit_of("overdue")
        .await
        .into_iter()
        .filter(|e| e["action"] == "key.rotate")
        .collect();
    assert_eq!(rotations.len(), 2, "{rotations:?}");
    assert!(
        rotations
            .iter()
            .all(|e| e["actorRole"] == "system" && e["detail"]["trigger"] == "schedule")
    );
    let details = cp
        .admin_get("/api/v1/admin/secrets/tenant/overdue")
        .await
        .json();
    let admin_key = &details["sshKeys"]["adminSsh"];
    let last =
        chrono::DateTime::parse_from_rfc3339(admin_key["lastRotated"].as_str().unwrap()).unwrap();
    let next =
        chrono::DateTime::parse_from_rfc3339(admin_key["nextRotation"].as_str().unwrap()).unwrap();
    assert_eq!(next - last, chrono::Duration::days(90));
}

#[tokio::test]
async fn sqlite_missed_rotations_run_when_the_control_plane_starts() {
    missed_rotations_run_at_start(Database::Sqlite).await;
}

#[tokio::test]
async fn postgres_missed_rotations_run_when_the_control_plane_starts() {
    missed_rotations_run_at_start(Database::Postgres).await;
}

pub(crate) async fn put_policy(cp: &ControlPlane, tenant: &str, body: Value) -> Reply {
    cp.request(
        Method::PUT,
        &format!("/api/v1/admin/tenants/{tenant}/rotation-policy"),
        Some(&cp.admin_token),
        Some(body),
    )
    .await
}

/// Tenants whose next keys are RSA-4096: a bulk job over them runs for seconds, long enough for
/// a test to act while it runs.
pub(crate) async fn tenants_with_rsa_keys_next(cp: &ControlPlane, ids: &[&str]) {
    for id in ids {
        cp.create_tenant(id).await;
        let set = put_policy(
            cp,
            id,
            json!({ "interval": "90days", "gracePeriod": "1day", "algorithm": "rsa-4096" }),
        )
        .await;
        assert_eq!(set.status, 200, "{}", set.text());
    }
}

#[tokio::test]
async fn an_ed25519_policy_tenant_gets_ed25519_keys_on_its_next_rotation() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start(&bao).await;
    cp.create_tenant("edtenant").await;
    let path = "/api/v1/admin/tenants/edtenant/rotation-policy";

    let default = cp.admin_get(path).await;
    assert_eq!(default.status, 200, "{}", default.text());
    let default = default.json();
    assert_eq!(default["source"], "default");
    assert_eq!(default["name"], "90_days");
    assert_eq!(default["algorithm"], "rsa-4096");
    assert_eq!(default["interval"], "90days");

    let set = put_policy(
        &cp,
        "edtenant",
        json!({ "interval": "30days", "gracePeriod": "2h", "algorithm": "ed25519" }),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let set = set.json();
    assert_eq!(set["source"], "tenant");
    assert_eq!(set["name"], "30_days");
    assert_eq!(set["gracePeriod"], "2h");
    assert_eq!(cp.admin_get(path).await.json()["name"], "30_days");
    // Rescheduled at once; the keys themselves change at their next rotation.
    let details = cp
        .admin_get("/api/v1/admin/secrets/tenant/edtenant")
        .await
        .json();
    let tenant_key = &details["sshKeys"]["tenantSsh"];
    assert_eq!(tenant_key["rotationPolicy"], "30_days");
    assert_eq!(set["nextRotation"]["tenant"], tenant_key["nextRotation"]);
    assert_eq!(tenant_key["algorithm"], "rsa-4096");
    let (before, _) = bao.read_kv("edtenant/tenant_ssh").await.unwrap();
    assert!(
        before["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-rsa ")
    );

    let rotated = cp
        .admin_post(
            "/api/v1/admin/tenants/edtenant/keys/tenant/rotate",
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let (after, version) = bao.read_kv("edtenant/tenant_ssh").await.unwrap();
    assert_eq!(version, 2);
    assert!(
        after["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 "),
        "{after}"
    );
    assert_eq!(after["rotation_policy"], "30_days");
    let details = cp
        .admin_get("/api/v1/admin/secrets/tenant/edtenant")
        .await
        .json();
    let tenant_key = &details["sshKeys"]["tenantSsh"];
    assert_eq!(tenant_key["algorithm"], "ed25519");
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(tenant_key[field].as_str().unwrap()).unwrap()
    };
    assert_eq!(
        at("nextRotation") - at("lastRotated"),
        chrono::Duration::days(30)
    );
    assert_eq!(
        at("graceUntil") - at("lastRotated"),
        chrono::Duration::hours(2)
    );
    // The admin key set follows the same policy at its own next rotation.
    assert_eq!(details["sshKeys"]["adminSsh"]["algorithm"], "rsa-4096");
    let events = cp.audit_of("edtenant").await;
    let set_event = events.iter().find(|e| e["action"] == "policy.set").unwrap();
    assert_eq!(set_event["detail"]["algorithm"], "ed25519");
    let rotate_event = events.iter().find(|e| e["action"] == "key.rotate").unwrap();
    assert_eq!(rotate_event["detail"]["algorithm"], "ed25519");

    // Bad input is a 400 problem, never a 500, and changes nothing.
    for bad in [
        json!({ "interval": "30minutes", "gracePeriod": "1m", "algorithm": "ed25519" }),
        json!({ "interval": "1day", "gracePeriod": "1day", "algorithm": "ed25519" }),
        json!({ "interval": "20000days", "gracePeriod": "1h", "algorithm": "ed25519" }),
        json!({ "interval": "30days", "gracePeriod": "1h", "algorithm": "dsa" }),
        json!({ "interval": "soon", "gracePeriod": "1h", "algorithm": "ed25519" }),
        json!({ "interval": 30, "gracePeriod": "1h", "algorithm": "ed25519" }),
        json!({ "interval": "30days", "algorithm": "ed25519" }),
        json!({ "interval": "30days", "gracePeriod": "1h", "algorithm": "ed25519", "x": 1 }),
    ] {
        put_policy(&cp, "edtenant", bad.clone())
            .await
            .assert_problem(400, "invalid_body");
    }
    assert_eq!(cp.admin_get(path).await.json()["name"], "30_days");
    put_policy(
        &cp,
        "nobody",
        json!({ "interval": "30days", "gracePeriod": "1h", "algorithm": "ed25519" }),
    )
    .await
    .assert_problem(404, "tenant_not_found");
    let token = cp.tenant_token("edtenant").await;
    cp.request(Method::GET, path, Some(&token), None)
        .await
        .assert_problem(403, "forbidden");

    // Back to the default.
    let reset = cp
        .request(Method::DELETE, path, Some(&cp.admin_token), None)
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    assert_eq!(reset.json()["source"], "default");
    assert_eq!(reset.json()["name"], "90_days");
}

/// An RSA-4096 deployment with its key pool (on by default): a tenant's rotate and regenerate
/// take pre-generated keys, each named for its tenant and generation, stored in Vault and
/// downloadable like any other; a key is never handed out twice.
#[tokio::test]
async fn rsa_rotations_take_pre_generated_keys_from_the_pool() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start(&bao).await;
    let pool = cp.server().lifecycle.key_pool();
    assert!(pool.capacity() > 0, "the pool is on for RSA-4096");
    cp.create_tenant("pooled").await;
    let token = cp.tenant_token("pooled").await;
    let mut fingerprints = std::collections::HashSet::new();
    for (generation, op) in [(2, "/rotate"), (3, "/regenerate")] {
        eventually("a key in the pool", Duration::from_secs(300), || async {
            (!pool.is_empty()).then_some(())
        })
        .await;
        let hits = pool.hits();
        let replaced = cp.tenant_call(&token, Method::POST, op).await;
        assert_eq!(replaced.status, 200, "{}", replaced.text());
        assert_eq!(pool.hits(), hits + 1, "{op}: served from the pool");
        let fingerprint = replaced.json()["newKeyFingerprint"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            fingerprints.insert(fingerprint.clone()),
            "a key handed out twice"
        );
        let (stored, _) = bao.read_kv("pooled/tenant_ssh").await.unwrap();
        let public = stored["public_key"].as_str().unwrap();
        assert!(public.starts_with("ssh-rsa "), "{public}");
        assert!(
            public.ends_with(&format!(" keyward:pooled:tenant:{generation}")),
            "{public}"
        );
        let download = cp.tenant_call(&token, Method::POST, "/download").await;
        assert_eq!(download.status, 200, "{}", download.text());
        let private = keyward_common::keys::private_key_fingerprint(&download.text()).unwrap();
        assert_eq!(private.as_str(), fingerprint);
    }
    let metrics = cp.request(Method::GET, "/metrics", None, None).await.text();
    for name in ["keyward_key_pool_keys", "keyward_key_pool_hits_total"] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
}
