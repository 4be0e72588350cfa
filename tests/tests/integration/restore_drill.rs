//! The disaster-recovery drill (issue #18): everything lost but the backups — a SQL backup taken
//! with the real tool and, right after, keyward's own Vault raft snapshot (docs/INSTALL.md,
//! section 7) — and a fresh OpenBao and a fresh database restored from them bring keyward back:
//! `check consistency` and `audit verify` pass as an operator runs them, the agent reconnects
//! with the certificate it had and converges, keys made before the backup still log in and
//! download, and a change made after the restore reaches the host. On the way, the hazard the
//! backup order avoids: a Vault snapshot older than the SQL backup is found as drift. On
//! PostgreSQL (`pg_dump -Fc`, `pg_restore`) and on SQLite (its online backup, the file copied
//! back); and a host that applied changes the restore lost converges to the restored state.
//! The procedure is docs/OPERATIONS.md's "Backups and restores".

use std::path::Path;
use std::time::{Duration, Instant};

use keyward_common::KeyAlgorithm;
use keyward_common::keys::private_key_fingerprint;
use keyward_server::config::BackupConfig;
use keyward_tests::control_plane::Options;
use keyward_tests::server_cli::{self, CliAnswer};
use keyward_tests::sql_backup::{pg_dump, pg_restore, sqlite_backup, sqlite_restore};
use keyward_tests::{
    ControlPlane, Database, Deployment, KeyFile, OpenBao, PgDatabase, eventually, unique_tenant,
};
use reqwest::Method;
use serde_json::json;

/// What SQL records of a tenant's key sets: `(kind, generation, fingerprint, algorithm)`.
async fn key_sets(cp: &ControlPlane, tenant: &str) -> Vec<(String, i64, String, String)> {
    let reply = cp
        .admin_get(&format!("/api/v1/admin/secrets/tenant/{tenant}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let view = reply.json();
    ["adminSsh", "tenantSsh"]
        .iter()
        .map(|kind| {
            let ks = &view["sshKeys"][kind];
            (
                (*kind).to_owned(),
                ks["generation"].as_i64().unwrap(),
                ks["fingerprint"].as_str().unwrap().to_owned(),
                ks["algorithm"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A tenant's key downloaded with its own token: the private key's fingerprint.
async fn download_fingerprint(cp: &ControlPlane, tenant: &str) -> String {
    let token = cp.tenant_token(tenant).await;
    let reply = cp.tenant_call(&token, Method::POST, "/download").await;
    assert_eq!(reply.status, 200, "{tenant}: {}", reply.text());
    private_key_fingerprint(&reply.text()).unwrap().to_string()
}

/// `keyward-server check consistency` against this Vault and database, as an operator runs it
/// (its configuration written into `dir`).
async fn check_consistency(dir: &Path, bao: &OpenBao, database_url: &str) -> CliAnswer {
    let config = server_cli::write_config(dir, database_url, bao);
    server_cli::run(&config, &["check", "consistency"]).await
}

/// What an agent trusts and is trusted by: its certificate, the agent CA's certificate and the
/// pinned state-signing key, as its state directory holds them.
fn agent_identity(state_dir: &Path) -> Vec<Vec<u8>> {
    ["agent.crt", "ca.crt", "signing.pub"]
        .iter()
        .map(|name| std::fs::read(state_dir.join(name)).unwrap())
        .collect()
}

/// The base64 body of the public half of an OpenSSH private key, as `authorized_keys` holds it.
fn public_key_body(key: &KeyFile) -> String {
    let private = ssh_key::PrivateKey::read_openssh_file(&key.path).unwrap();
    let public = private.public_key().to_openssh().unwrap();
    public.split_whitespace().nth(1).unwrap().to_owned()
}

/// OpenBao with raft storage, a control plane on `database` (a PostgreSQL database of its own,
/// returned, or SQLite in its state directory) that takes Vault snapshots into `backups/vault`
/// (`[backup]`), and a host with its real agent, sshd and users.
async fn backed_up_deployment(
    backups: &Path,
    database: Database,
) -> (Deployment, Option<PgDatabase>) {
    let own = match database {
        Database::Postgres => Some(PgDatabase::create().await),
        Database::Sqlite => None,
    };
    let bao = OpenBao::start_raft().await;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            database,
            database_url: own.as_ref().map(PgDatabase::url),
            algorithm: KeyAlgorithm::Ed25519,
            backup: Some(BackupConfig {
                dir: Some(backups.join("vault")),
                interval: Duration::from_secs(3600),
                retention: 10,
            }),
            ..Options::default()
        },
    )
    .await;
    (Deployment::start_on(bao, cp).await, own)
}

/// The SQL backup of the control plane's database into `file`, as docs/INSTALL.md section 7
/// says: `pg_dump -Fc`, or SQLite's online backup.
async fn back_up_sql(cp: &ControlPlane, file: &Path) {
    if cp.database_url.starts_with("postgres") {
        pg_dump(&cp.database_url, file).await;
    } else {
        sqlite_backup(&cp.database_url, file).await;
    }
}

/// A fresh database restored from the SQL backup `file` (`pg_restore` into a new PostgreSQL
/// database, or the SQLite file copied into `dir`): its URL, and the database to keep.
async fn restore_sql(file: &Path, database: Database, dir: &Path) -> (String, Option<PgDatabase>) {
    match database {
        Database::Postgres => {
            let restored = PgDatabase::create().await;
            pg_restore(file, &restored.url()).await;
            (restored.url(), Some(restored))
        }
        Database::Sqlite => (sqlite_restore(file, dir), None),
    }
}

#[tokio::test]
async fn a_fresh_openbao_and_database_restored_from_backups_bring_keyward_back_consistent() {
    restore_drill(Database::Postgres).await;
}

#[tokio::test]
async fn a_fresh_openbao_and_a_sqlite_backup_bring_keyward_back_consistent() {
    restore_drill(Database::Sqlite).await;
}

/// The drill on `database`: backups taken, everything lost but them and the host, a fresh
/// OpenBao and a fresh database restored, keyward back.
async fn restore_drill(database: Database) {
    let started = Instant::now();
    let backups = tempfile::tempdir().unwrap();
    let (mut d, own_database) = backed_up_deployment(backups.path(), database).await;
    let original_unseal_key = d.bao.unseal_key.clone().unwrap();
    // More tenants, one with an RSA-4096 key.
    let [acme, globex, rsa] = ["acme", "globex", "rsa"].map(unique_tenant);
    for tenant in [&acme, &globex, &rsa] {
        d.cp.create_tenant(tenant).await;
    }
    let policy =
        d.cp.request(
            Method::PUT,
            &format!("/api/v1/admin/tenants/{rsa}/rotation-policy"),
            Some(&d.cp.admin_token),
            Some(json!({ "interval": "30days", "gracePeriod": "1day", "algorithm": "rsa-4096" })),
        )
        .await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    for (tenant, kind) in [(&rsa, "tenant"), (&acme, "tenant"), (&acme, "admin")] {
        let rotated =
            d.cp.admin_post(
                &format!("/api/v1/admin/tenants/{tenant}/keys/{kind}/rotate"),
                json!({}),
            )
            .await;
        assert_eq!(rotated.status, 200, "{}", rotated.text());
    }
    // The host's tenant rotates and downloads its key; the host applies it.
    d.tenant_op("/rotate").await;
    d.agent.wait_in_sync(&d.cp).await;
    let held_key = d.download().await;
    assert!(d.tenant_login(&held_key).await, "the new key logs in");

    // A Vault snapshot, then a rotation: a snapshot older than the SQL backup to come.
    let stale_snapshot = d.cp.server().backups.snapshot_now().await.unwrap().path;
    let rotated =
        d.cp.admin_post(
            &format!("/api/v1/admin/tenants/{globex}/keys/admin/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());

    // The backups as docs/INSTALL.md section 7 says: SQL first, the Vault snapshot right after.
    let sql_backup = backups.path().join("keyward.sql-backup");
    back_up_sql(&d.cp, &sql_backup).await;
    let snapshot = d.cp.server().backups.snapshot_now().await.unwrap().path;
    assert_ne!(snapshot, stale_snapshot);

    // What the backups hold, to compare with what comes back.
    let tenants = [d.tenant.clone(), acme.clone(), globex.clone(), rsa.clone()];
    let mut recorded = Vec::new();
    for tenant in &tenants {
        recorded.push(key_sets(&d.cp, tenant).await);
    }
    assert_eq!(recorded[3][1].3, "rsa-4096", "{:?}", recorded[3]);
    let admin_file = std::fs::read_to_string(d.admin.authorized_keys()).unwrap();
    let user_file = std::fs::read_to_string(d.user.authorized_keys()).unwrap();
    let held_fingerprint = recorded[0][1].2.clone();
    let identity = agent_identity(&d.agent.state_dir);

    // The disaster: the control plane, OpenBao and the database are gone. The agent stays, and
    // keeps enforcing what it last applied.
    d.cp.stop().await;
    d.bao.stop().await;
    drop(own_database);
    for file in ["keyward.db", "keyward.db-wal", "keyward.db-shm"] {
        let _ = std::fs::remove_file(d.cp.state_dir.path().join(file));
    }

    // A fresh OpenBao with raft storage (its own data directory, its own keys) and a fresh
    // database. The operator restores the wrong snapshot first: the older one.
    let mut wrong = OpenBao::start_raft().await;
    wrong
        .restore_raft_snapshot(&stale_snapshot, &original_unseal_key)
        .await;
    let (restored, _restored_database) =
        restore_sql(&sql_backup, database, &backups.path().join("restored")).await;
    let check = check_consistency(backups.path(), &wrong, &restored).await;
    assert_eq!(
        check.code, 1,
        "drift exits 1: {:#} {}",
        check.json, check.stderr
    );
    assert_eq!(check.json["ok"], false, "{:#}", check.json);
    assert_eq!(check.json["drift"], 1, "{:#}", check.json);
    let finding = &check.json["findings"][0];
    assert_eq!(finding["tenantId"], globex.as_str(), "{:#}", check.json);
    assert_eq!(finding["kind"], "admin", "{finding}");
    assert_eq!(finding["status"], "version_missing", "{finding}");
    drop(wrong);

    // Again, with the snapshot taken right after the SQL backup, into another fresh OpenBao:
    // every key set consistent, the audit chain whole.
    let mut fresh = OpenBao::start_raft().await;
    fresh
        .restore_raft_snapshot(&snapshot, &original_unseal_key)
        .await;
    let check = check_consistency(backups.path(), &fresh, &restored).await;
    assert_eq!(check.code, 0, "{:#} {}", check.json, check.stderr);
    assert_eq!(check.json["ok"], true);
    assert_eq!(check.json["checked"], 2 * tenants.len(), "{:#}", check.json);
    assert_eq!(check.json["drift"], 0);
    assert_eq!(check.json["findings"], json!([]), "not even vault_ahead");
    let config = server_cli::write_config(backups.path(), &restored, &fresh);
    let verify = server_cli::run(&config, &["audit", "verify"]).await;
    assert_eq!(verify.code, 0, "{:#} {}", verify.json, verify.stderr);
    assert_eq!(verify.json["ok"], true, "{:#}", verify.json);
    assert!(
        verify.json["checked"].as_u64().unwrap() > 10,
        "{:#}",
        verify.json
    );

    // keyward starts on the restored pair, on its old ports, with the operator's admin token.
    d.bao = fresh;
    d.cp.restart_on(&d.bao, restored.clone()).await;
    for (tenant, before) in tenants.iter().zip(&recorded) {
        assert_eq!(&key_sets(&d.cp, tenant).await, before, "{tenant}");
    }

    // The agent reconnects with the certificate it had (signed by the agent CA restored from
    // Vault's `_keyward/`) and converges: its files hold the restored keys.
    let view = eventually(
        "the agent to reconnect to the restored control plane",
        Duration::from_secs(90),
        || async {
            let view = d.agent.view(&d.cp).await;
            (view["connected"] == true && view["status"] == "in_sync").then_some(view)
        },
    )
    .await;
    assert!(view["lastError"].is_null(), "{view}");
    assert_eq!(
        agent_identity(&d.agent.state_dir),
        identity,
        "the agent kept its certificate, CA and pinned state-signing key"
    );
    assert!(
        !d.agent.log_text().contains("rejected a state"),
        "{}",
        d.agent.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(d.admin.authorized_keys()).unwrap(),
        admin_file
    );
    assert_eq!(
        std::fs::read_to_string(d.user.authorized_keys()).unwrap(),
        user_file
    );
    assert!(
        user_file.contains(&public_key_body(&held_key)),
        "{user_file}"
    );

    // The key downloaded before the backup logs in, and is the one SQL records; it was
    // downloaded, and the restored database remembers that.
    assert_eq!(
        private_key_fingerprint(&std::fs::read_to_string(&held_key.path).unwrap())
            .unwrap()
            .to_string(),
        held_fingerprint
    );
    assert!(
        d.tenant_login(&held_key).await,
        "the key held from before the backup logs in after the restore; sshd log:\n{}",
        d.sshd.log_text()
    );
    d.cp.tenant_call(&d.tenant_token, Method::POST, "/download")
        .await
        .assert_problem(410, "key_already_downloaded");
    // Keys made before the backup and never downloaded download now, from the restored Vault,
    // and are the ones SQL recorded: Ed25519 and RSA-4096.
    assert_eq!(download_fingerprint(&d.cp, &acme).await, recorded[1][1].2);
    assert_eq!(download_fingerprint(&d.cp, &rsa).await, recorded[3][1].2);

    // A rotation after the restore reaches the host.
    let rotated = d.tenant_op("/rotate").await;
    d.agent.wait_in_sync(&d.cp).await;
    let new_key = d.download().await;
    assert!(d.tenant_login(&new_key).await, "{rotated}");
    assert!(
        d.tenant_login(&held_key).await,
        "the rotated key keeps its grace period"
    );
    let check = check_consistency(backups.path(), &d.bao, &restored).await;
    assert_eq!(check.code, 0, "{:#}", check.json);
    let verify = server_cli::run(&config, &["audit", "verify"]).await;
    assert_eq!(verify.code, 0, "{:#}", verify.json);

    d.cp.stop().await;
    println!(
        "restore drill on {database:?}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn a_host_that_applied_changes_the_restore_lost_converges_to_the_restored_state() {
    let backups = tempfile::tempdir().unwrap();
    let (mut d, database) = backed_up_deployment(backups.path(), Database::Postgres).await;
    let unseal_key = d.bao.unseal_key.clone().unwrap();
    let backed_up_key = d.download().await;
    let backed_up_file = std::fs::read_to_string(d.user.authorized_keys()).unwrap();
    let sql_backup = backups.path().join("keyward.dump");
    back_up_sql(&d.cp, &sql_backup).await;
    let snapshot = d.cp.server().backups.snapshot_now().await.unwrap().path;

    // After the backups, a regeneration the host applies: the restore loses it.
    d.tenant_op("/regenerate").await;
    d.agent.wait_in_sync(&d.cp).await;
    let lost_key = d.download().await;
    assert!(d.tenant_login(&lost_key).await);
    assert!(!d.tenant_login(&backed_up_key).await);

    d.cp.stop().await;
    d.bao.stop().await;
    drop(database);
    let mut fresh = OpenBao::start_raft().await;
    fresh.restore_raft_snapshot(&snapshot, &unseal_key).await;
    let (restored, _restored_database) =
        restore_sql(&sql_backup, Database::Postgres, backups.path()).await;
    d.bao = fresh;
    d.cp.restart_on(&d.bao, restored).await;

    // The host had applied a later state than the restored one: it converges to the restored
    // state all the same, the backed-up key logs in again and the lost one no longer does.
    eventually(
        "the host to hold the restored keys",
        Duration::from_secs(90),
        || async {
            let file = std::fs::read_to_string(d.user.authorized_keys()).ok()?;
            (file == backed_up_file).then_some(())
        },
    )
    .await;
    let view = d.agent.wait_in_sync(&d.cp).await;
    assert!(view["lastError"].is_null(), "{view}");
    assert!(d.tenant_login(&backed_up_key).await);
    assert!(!d.tenant_login(&lost_key).await);

    // And what is done after the restore reaches it: a revocation.
    d.tenant_op("/revoke").await;
    d.agent.wait_in_sync(&d.cp).await;
    assert!(
        !d.tenant_login(&backed_up_key).await,
        "a revoked key logged in"
    );
    d.cp.stop().await;
}
