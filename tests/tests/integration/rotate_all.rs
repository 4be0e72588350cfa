//! `rotate-all` against real OpenBao for every secret type, with one tenant that Vault refuses:
//! its failure and reason reported, the others rotated; one job at a time across replicas, and
//! jobs followed live over Server-Sent Events.

use std::time::{Duration, Instant};

use base64::Engine;
use keyward_common::KeyAlgorithm;
use keyward_server::clock::iso8601;
use keyward_tests::control_plane::Options;
use keyward_tests::sse::Events;
use keyward_tests::{ControlPlane, Database, OpenBao, workspace_root};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::rotation::{generations, tenants_with_rsa_keys_next, vault_versions};

/// A control plane on a token with only the shipped control-plane policy and a test policy
/// `keyward-test-deny`, which [`refuse`] points at one tenant's secret.
async fn bulk_setup(database: Database) -> (OpenBao, ControlPlane) {
    let bao = OpenBao::start().await;
    let hcl =
        std::fs::read_to_string(workspace_root().join("packaging/vault/keyward-control-plane.hcl"))
            .unwrap();
    bao.put_policy("keyward-control-plane", &hcl).await;
    refuse(&bao, "nobody/nothing").await;
    let token = bao
        .root(
            Method::POST,
            "auth/token/create",
            Some(json!({ "policies": ["keyward-control-plane", "keyward-test-deny"], "no_default_policy": true })),
        )
        .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            database,
            algorithm: KeyAlgorithm::Ed25519,
            vault_token: Some(token),
            ..Options::default()
        },
    )
    .await;
    for id in ["alpha", "bravo", "charlie"] {
        cp.create_tenant(id).await;
    }
    (bao, cp)
}

/// From now on, Vault denies the control plane writing `vps/{path}`.
async fn refuse(bao: &OpenBao, path: &str) {
    bao.put_policy(
        "keyward-test-deny",
        &format!("path \"vps/data/{path}\" {{\n  capabilities = [\"deny\"]\n}}\n"),
    )
    .await;
}

/// Starts an SSH `rotate-all` job in the background (`?async=true`); its answer, a 202.
pub(crate) async fn start_rotate_all(cp: &ControlPlane) -> keyward_tests::Reply {
    let started = cp
        .admin_post(
            "/api/v1/admin/secrets/rotate-all?async=true",
            json!({ "secretType": "ssh" }),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.text());
    started
}

async fn rotate_all(cp: &ControlPlane, secret_type: &str) -> Value {
    let reply = cp
        .admin_post(
            "/api/v1/admin/secrets/rotate-all",
            json!({ "secretType": secret_type }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// The answer reports bravo's failure with Vault's reason and the others as rotated; the job
/// says the same.
async fn assert_bravo_failed(cp: &ControlPlane, answer: &Value, secret: &str) {
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(answer["rotatedCount"], 2, "{answer}");
    assert_eq!(answer["failedCount"], 1, "{answer}");
    let failures = answer["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["tenantId"], "bravo");
    assert_eq!(failures[0]["code"], "vault_unavailable");
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("denied") && reason.contains(&format!("vps/bravo/{secret}")),
        "{reason}"
    );
    let job_id = answer["jobId"].as_str().unwrap();
    let job = cp
        .admin_get(&format!("/api/v1/admin/secrets/rotate-all/{job_id}"))
        .await
        .json();
    assert_eq!(job["status"], "completed");
    assert_eq!(job["total"], 3);
    assert_eq!(job["rotatedCount"], 2);
    assert_eq!(job["failures"], answer["failures"]);
    // The failure is audited on the tenant, with the job's id.
    let failed = cp
        .audit_of("bravo")
        .await
        .into_iter()
        .find(|e| e["outcome"] == "failure")
        .unwrap();
    assert!(
        failed["action"].as_str().unwrap().ends_with(".rotate"),
        "{failed}"
    );
}

async fn rotate_all_ssh_with_a_failing_tenant(database: Database) {
    let (bao, cp) = bulk_setup(database).await;
    refuse(&bao, "bravo/tenant_ssh").await;
    let answer = rotate_all(&cp, "ssh").await;
    assert_bravo_failed(&cp, &answer, "tenant_ssh").await;
    for ok in ["alpha", "charlie"] {
        assert_eq!(vault_versions(&bao, ok).await, [2, 2], "{ok}");
        assert_eq!(generations(&cp, ok).await, (2, 2));
        let events = cp.audit_of(ok).await;
        let rotations: Vec<&Value> = events
            .iter()
            .filter(|e| e["action"] == "key.rotate")
            .collect();
        assert_eq!(rotations.len(), 2);
        assert!(
            rotations
                .iter()
                .all(|e| e["detail"]["jobId"] == answer["jobId"])
        );
    }
    // bravo's admin key set was rotated; its tenant key set, refused by Vault, was not.
    assert_eq!(vault_versions(&bao, "bravo").await, [2, 1]);
    assert_eq!(generations(&cp, "bravo").await, (2, 1));
    let jobs = cp
        .admin_get("/api/v1/admin/secrets/rotate-all")
        .await
        .json();
    assert_eq!(jobs[0]["jobId"], answer["jobId"]);
}

#[tokio::test]
async fn sqlite_rotate_all_ssh_reports_the_failing_tenant_and_rotates_the_others() {
    rotate_all_ssh_with_a_failing_tenant(Database::Sqlite).await;
}

#[tokio::test]
async fn postgres_rotate_all_ssh_reports_the_failing_tenant_and_rotates_the_others() {
    rotate_all_ssh_with_a_failing_tenant(Database::Postgres).await;
}

#[tokio::test]
async fn rotate_all_smtp_reports_the_failing_tenant_and_never_shows_a_password() {
    let (bao, cp) = bulk_setup(Database::Sqlite).await;
    refuse(&bao, "bravo/smtp").await;
    let answer = rotate_all(&cp, "smtp").await;
    assert_bravo_failed(&cp, &answer, "smtp").await;
    let (alpha, version) = bao.read_kv("alpha/smtp").await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(alpha["username"], "tenant-alpha");
    let password = alpha["password"].as_str().unwrap().to_owned();
    assert_eq!(password.len(), 32);
    assert!(bao.read_kv("bravo/smtp").await.is_none());
    let details = cp.admin_get("/api/v1/admin/secrets/tenant/alpha").await;
    let smtp = &details.json()["smtpCredentials"];
    assert_eq!(smtp["username"], "tenant-alpha");
    assert_eq!(smtp["vaultVersion"], 1);
    assert_eq!(smtp["vaultPath"], "vps/alpha/smtp");
    assert!(smtp["lastRotated"].is_string() && smtp.get("password").is_none());
    assert!(!details.text().contains(&password));
    assert!(
        cp.admin_get("/api/v1/admin/secrets/tenant/bravo")
            .await
            .json()["smtpCredentials"]
            .is_null()
    );
    let audit = cp.admin_get("/api/v1/admin/audit?limit=1000").await.text();
    assert!(!audit.contains(&password));

    // With Vault willing again, the next job rotates everyone; alpha gets a new password.
    refuse(&bao, "nobody/nothing").await;
    let answer = rotate_all(&cp, "smtp").await;
    assert_eq!(
        (
            answer["rotatedCount"].as_i64(),
            answer["failedCount"].as_i64()
        ),
        (Some(3), Some(0))
    );
    let (alpha, version) = bao.read_kv("alpha/smtp").await.unwrap();
    assert_eq!(version, 2);
    assert_ne!(alpha["password"].as_str().unwrap(), password);
    assert_eq!(bao.read_kv("bravo/smtp").await.unwrap().1, 1);
}

#[tokio::test]
async fn postgres_rotate_all_dkim_reports_the_failing_tenant_and_publishes_dns_records() {
    let (bao, cp) = bulk_setup(Database::Postgres).await;
    refuse(&bao, "bravo/dkim").await;
    let answer = rotate_all(&cp, "dkim").await;
    assert_bravo_failed(&cp, &answer, "dkim").await;
    let (stored, version) = bao.read_kv("charlie/dkim").await.unwrap();
    assert_eq!(version, 1);
    assert!(
        stored["private_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    let selector = format!("kw{}", chrono::Utc::now().format("%Y%m"));
    assert_eq!(stored["selector"], selector);
    let dkim = cp
        .admin_get("/api/v1/admin/secrets/tenant/charlie")
        .await
        .json()["dkim"]
        .clone();
    assert_eq!(dkim["selector"], selector);
    assert_eq!(dkim["dnsName"], format!("{selector}._domainkey"));
    assert_eq!(dkim["dnsRecord"], stored["dns_record"]);
    let record = dkim["dnsRecord"].as_str().unwrap();
    let spki = base64::engine::general_purpose::STANDARD
        .decode(record.strip_prefix("v=DKIM1; k=rsa; p=").unwrap())
        .unwrap();
    // The DER SubjectPublicKeyInfo of an RSA-2048 key with exponent 65537 is 294 bytes.
    assert_eq!(spki.len(), 294, "{record}");
    assert!(!dkim.to_string().contains("PRIVATE KEY"));
    assert!(
        cp.admin_get("/api/v1/admin/secrets/tenant/bravo")
            .await
            .json()["dkim"]
            .is_null()
    );

    // A second rotation in the same month gets a selector of its own; the old one is named.
    refuse(&bao, "nobody/nothing").await;
    rotate_all(&cp, "dkim").await;
    let dkim = cp
        .admin_get("/api/v1/admin/secrets/tenant/charlie")
        .await
        .json()["dkim"]
        .clone();
    assert_eq!(dkim["selector"], format!("{selector}g2"));
    assert_eq!(dkim["previousSelector"], selector);
}

/// Reads a job's Server-Sent Events until the stream ends (within 120 s): `(event, data)` pairs.
async fn follow(cp: &ControlPlane, job_id: &str) -> Vec<(String, Value)> {
    let path = format!("/api/v1/admin/secrets/rotate-all/{job_id}/events");
    Events::open(cp, &path, &cp.admin_token)
        .await
        .until_end(Instant::now() + Duration::from_secs(120))
        .await
}

#[tokio::test]
async fn a_running_rotate_all_refuses_a_second_and_streams_its_progress() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    // RSA-4096 keys on the next rotation: the job takes seconds, long enough to overlap.
    tenants_with_rsa_keys_next(&cp, &["rsa-a", "rsa-b", "rsa-c", "rsa-d"]).await;
    let started = start_rotate_all(&cp).await;
    let job = started.json();
    let job_id = job["jobId"].as_str().unwrap().to_owned();
    assert_eq!(job["status"], "running");
    assert_eq!(job["total"], 4);
    assert_eq!(
        started.header("location"),
        Some(format!("/api/v1/admin/secrets/rotate-all/{job_id}").as_str())
    );

    let second = cp
        .admin_post(
            "/api/v1/admin/secrets/rotate-all",
            json!({ "secretType": "smtp" }),
        )
        .await;
    second.assert_problem(409, "rotation_in_progress");
    assert_eq!(second.json()["jobId"], job_id.as_str());
    assert!(second.json()["detail"].as_str().unwrap().contains(&job_id));

    let events = follow(&cp, &job_id).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(events.len() >= 2, "{names:?}");
    assert_eq!(names.last(), Some(&"done"));
    assert!(
        names[..names.len() - 1].iter().all(|n| *n == "progress"),
        "{names:?}"
    );
    let processed: Vec<i64> = events
        .iter()
        .map(|(_, d)| {
            d["rotatedCount"].as_i64().unwrap()
                + d["failedCount"].as_i64().unwrap()
                + d["skippedCount"].as_i64().unwrap()
        })
        .collect();
    assert!(processed.windows(2).all(|w| w[0] <= w[1]), "{processed:?}");
    assert!(
        processed[0] < 4,
        "the stream started while the job ran: {processed:?}"
    );
    let done = &events.last().unwrap().1;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["rotatedCount"], 4);
    for id in ["rsa-a", "rsa-d"] {
        let (data, _) = bao.read_kv(&format!("{id}/admin_ssh")).await.unwrap();
        assert!(data["public_key"].as_str().unwrap().starts_with("ssh-rsa "));
    }

    // Finished: the stream of the job is its one last event, and a new job may start.
    let replay = follow(&cp, &job_id).await;
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].0, "done");
    assert_eq!(replay[0].1["rotatedCount"], 4);
    assert_eq!(rotate_all(&cp, "smtp").await["rotatedCount"], 4);

    // Unknown jobs and bad requests are problems.
    cp.admin_get("/api/v1/admin/secrets/rotate-all/job_0000000000000000")
        .await
        .assert_problem(404, "rotation_job_not_found");
    cp.admin_get("/api/v1/admin/secrets/rotate-all/nope/events")
        .await
        .assert_problem(404, "rotation_job_not_found");
    for bad in [
        json!({ "secretType": "pgp" }),
        json!({}),
        json!({ "secretType": "ssh", "x": 1 }),
    ] {
        cp.admin_post("/api/v1/admin/secrets/rotate-all", bad)
            .await
            .assert_problem(400, "invalid_body");
    }
    cp.admin_post(
        "/api/v1/admin/secrets/rotate-all?later=1",
        json!({ "secretType": "ssh" }),
    )
    .await
    .assert_problem(400, "invalid_query");
    let token = cp.tenant_token("rsa-a").await;
    cp.request(
        Method::POST,
        "/api/v1/admin/secrets/rotate-all",
        Some(&token),
        Some(json!({ "secretType": "ssh" })),
    )
    .await
    .assert_problem(403, "forbidden");
}

/// Runs one statement on the control plane's database behind its back.
async fn sql(database_url: &str, statement: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database_url).await.unwrap();
    sqlx::query(statement).execute(&mut conn).await.unwrap();
}

/// A job row as another replica (or a process that died) leaves it.
fn running_job(job_id: &str, heartbeat: chrono::DateTime<chrono::Utc>) -> String {
    let at = iso8601(heartbeat);
    format!(
        "INSERT INTO rotation_jobs (job_id, secret_type, status, started_at, heartbeat_at, total) \
         VALUES ('{job_id}', 'ssh', 'running', '{at}', '{at}', 7)"
    )
}

#[tokio::test]
async fn postgres_a_job_of_another_replica_blocks_and_streams_until_its_heartbeat_stops() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Postgres).await;
    cp.create_tenant("solo").await;
    let other = "job_00000000000000aa";
    sql(&cp.database_url, &running_job(other, chrono::Utc::now())).await;

    // Another replica's job is running: refused, and named.
    let refused = cp
        .admin_post(
            "/api/v1/admin/secrets/rotate-all",
            json!({ "secretType": "ssh" }),
        )
        .await;
    refused.assert_problem(409, "rotation_in_progress");
    assert_eq!(refused.json()["jobId"], other);

    // Its events come from SQL, until the other replica finishes it: the stream has shown the
    // job running before the other replica completes it.
    let (progress_tx, progress_rx) = tokio::sync::oneshot::channel();
    let stream = {
        let (url, token) = (cp.url.clone(), cp.admin_token.clone());
        tokio::spawn(async move {
            let mut reply = reqwest::Client::new()
                .get(format!(
                    "{url}/api/v1/admin/secrets/rotate-all/{other}/events"
                ))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let mut text = String::new();
            let mut progress_tx = Some(progress_tx);
            while let Some(chunk) = reply.chunk().await.unwrap() {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("event: progress\n")
                    && let Some(tx) = progress_tx.take()
                {
                    let _ = tx.send(());
                }
            }
            text
        })
    };
    tokio::time::timeout(Duration::from_secs(30), progress_rx)
        .await
        .expect("the job's first progress event within 30 s")
        .expect("the stream ended before any progress event");
    sql(
        &cp.database_url,
        &format!(
            "UPDATE rotation_jobs SET status = 'completed', rotated = 7, finished_at = heartbeat_at \
             WHERE job_id = '{other}'"
        ),
    )
    .await;
    let text = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .unwrap()
        .unwrap();
    assert!(text.starts_with("event: progress\n"), "{text}");
    assert!(
        text.contains("event: done\n") && text.contains("\"rotatedCount\":7"),
        "{text}"
    );

    // A job whose heartbeat stopped long ago was lost with its process: it no longer blocks.
    let lost = "job_00000000000000bb";
    sql(
        &cp.database_url,
        &running_job(lost, chrono::Utc::now() - chrono::Duration::minutes(10)),
    )
    .await;
    let answer = rotate_all(&cp, "smtp").await;
    assert_eq!(answer["rotatedCount"], 1);
    let job = cp
        .admin_get(&format!("/api/v1/admin/secrets/rotate-all/{lost}"))
        .await
        .json();
    assert_eq!(job["status"], "interrupted");
}

#[tokio::test]
async fn sqlite_a_job_left_running_by_a_stopped_control_plane_is_interrupted_at_start() {
    let bao = OpenBao::start().await;
    let mut cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    cp.create_tenant("solo").await;
    cp.stop().await;
    let left = "job_00000000000000cc";
    sql(&cp.database_url, &running_job(left, chrono::Utc::now())).await;
    cp.restart().await;
    let job = cp
        .admin_get(&format!("/api/v1/admin/secrets/rotate-all/{left}"))
        .await
        .json();
    assert_eq!(job["status"], "interrupted");
    assert_eq!(rotate_all(&cp, "smtp").await["rotatedCount"], 1);
}
