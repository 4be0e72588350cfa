//! Replicas on one PostgreSQL database (issue #15): a change made through one replica reaches
//! the agents and live views connected to another, through PostgreSQL `LISTEN`/`NOTIFY`, and a
//! replica whose listening connection is cut resynchronises from SQL instead of missing it; an
//! agent given every replica's endpoint fails over when its replica goes away.

use std::time::{Duration, Instant};

use keyward_common::proto::{DesiredState, control_message};
use keyward_tests::raw_agent::{RawIdentity, RawStream};
use keyward_tests::sse::Events;
use keyward_tests::{
    Agent, ControlPlane, Database, KeyFile, OpenBao, Sshd, TestUser, eventually, unique_tenant,
};
use prost::Message as _;
use reqwest::Method;
use serde_json::json;
use sqlx::Connection as _;

/// The next desired state on the stream newer than generation `after` (a stream may be sent
/// the same state again): its generation and the managed keys' fingerprints.
async fn state_after(stream: &mut RawStream, after: u64) -> (u64, Vec<String>) {
    stream
        .next_matching(|m| match m.msg {
            Some(control_message::Msg::State(signed)) => {
                let state = DesiredState::decode(&signed.state[..]).unwrap();
                let keys = state
                    .users
                    .iter()
                    .flat_map(|u| u.keys.iter().map(|k| k.fingerprint.clone()))
                    .collect();
                (state.generation > after).then_some((state.generation, keys))
            }
            _ => None,
        })
        .await
}

/// Rotates the tenant's key through `cp` and waits for a newer state on `stream` (within 10 s):
/// it must carry other keys than `before`.
async fn rotate_and_see(
    cp: &ControlPlane,
    token: &str,
    stream: &mut RawStream,
    before: &(u64, Vec<String>),
) -> (u64, Vec<String>) {
    let rotated = cp.tenant_call(token, Method::POST, "/rotate").await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let after = state_after(stream, before.0).await;
    assert_ne!(after.1, before.1, "the rotated key reached the stream");
    after
}

/// Cuts every session listening on the deployment's channel, as a network fault or a database
/// failover would; returns how many were cut.
async fn cut_listeners(cp: &ControlPlane) -> u64 {
    let mut conn = sqlx::PgConnection::connect(&cp.database_url).await.unwrap();
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query = 'LISTEN \"keyward_' || md5(current_database() || '.' || current_schema()) || '\"' \
         AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    cut.len() as u64
}

/// `keyward_replica_change_listener_reconnects_total` (the process's: both replicas run in it).
async fn listener_reconnects(cp: &ControlPlane) -> f64 {
    let metrics = cp.request(Method::GET, "/metrics", None, None).await.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("keyward_replica_change_listener_reconnects_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_agents_and_live_views_on_another() {
    let bao = OpenBao::start().await;
    let a = ControlPlane::start_fast(&bao, Database::Postgres).await;
    let b = a.replica().await;
    let tenant = unique_tenant("replicas");
    a.create_tenant(&tenant).await;
    let token = a.tenant_token(&tenant).await;

    // Enrolled through A, streaming to B: the state is the same whichever replica it reaches.
    let host = RawIdentity::enroll(&a, &tenant).await;
    let mut on_b = host.open(&b).await;
    let first = state_after(&mut on_b, 0).await;
    assert!(!first.1.is_empty(), "the tenant's keys are in the state");

    // A rotation through A wakes the stream on B.
    let second = rotate_and_see(&a, &token, &mut on_b, &first).await;

    // Both replicas' listening sessions are cut; a rotation made at once, while they reconnect,
    // still reaches B: a replica that lost its connection reads the state again from SQL.
    let reconnects_before = listener_reconnects(&b).await;
    assert_eq!(
        cut_listeners(&a).await,
        2,
        "one listening session per replica"
    );
    let third = rotate_and_see(&a, &token, &mut on_b, &second).await;
    eventually(
        "the replicas to notice their listening sessions were cut",
        Duration::from_secs(10),
        || async { (listener_reconnects(&b).await >= reconnects_before + 2.0).then_some(()) },
    )
    .await;
    // And once back, they hear each other as before.
    rotate_and_see(&a, &token, &mut on_b, &third).await;

    // A token revoked on A ends its live view on B within a second.
    let issued = a
        .admin_post(
            "/api/v1/admin/tokens",
            json!({ "role": "admin", "label": "watcher" }),
        )
        .await
        .json();
    let watcher = issued["token"].as_str().unwrap();
    let mut view = Events::open(&b, "/api/v1/admin/events/hosts", watcher).await;
    let (name, _) = view.expect(Duration::from_secs(5)).await;
    assert_eq!(name, "snapshot");
    let revoked = a
        .request(
            Method::DELETE,
            &format!(
                "/api/v1/admin/tokens/{}",
                issued["tokenId"].as_str().unwrap()
            ),
            Some(&a.admin_token),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.text());
    view.until_end(Instant::now() + Duration::from_secs(1))
        .await;

    // A host revoked on A has its stream on B cut.
    let revoked = a
        .admin_post(
            &format!("/api/v1/admin/hosts/{}/revoke", host.host_id),
            json!({}),
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let status = on_b.ended().await.expect("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

/// The replica that holds `host`'s stream, as the deployment's `host_streams` says.
async fn stream_holder(cp: &ControlPlane, host: &str) -> Option<String> {
    let mut conn = sqlx::PgConnection::connect(&cp.database_url).await.unwrap();
    sqlx::query_scalar("SELECT replica_id FROM host_streams WHERE host_id = $1")
        .bind(host)
        .fetch_optional(&mut conn)
        .await
        .unwrap()
}

/// Whether `agent`'s stream is held by `cp` (every replica calls it connected, wherever it is).
async fn holds_stream(cp: &ControlPlane, agent: &Agent) -> bool {
    stream_holder(cp, &agent.host_id).await.as_deref() == Some(cp.server().replica_id.as_str())
}

#[tokio::test]
async fn an_agent_fails_over_to_another_replica_and_converges() {
    let bao = OpenBao::start().await;
    let mut replicas = vec![ControlPlane::start_fast(&bao, Database::Postgres).await];
    replicas.push(replicas[0].replica().await);
    let sshd = Sshd::start_async().await;
    let admin = TestUser::create("a");
    let user = TestUser::create("t");
    let tenant = unique_tenant("failover");
    replicas[0]
        .onboard_tenant(&tenant, sshd.port, user.name.as_str(), admin.name.as_str())
        .await;
    let token = replicas[0].tenant_token(&tenant).await;
    let mut agent = Agent::enroll(&replicas[0], &tenant, &admin, &user, &sshd).await;
    let endpoints: Vec<String> = replicas
        .iter()
        .map(|cp| format!("{:?}", cp.server().agent_url))
        .collect();
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("grpc_urls = [{}]\n{config}", endpoints.join(", ")),
    )
    .unwrap();
    agent.start();

    // It reaches one of them (a random one) and gets in sync there.
    let on = eventually(
        "the agent to connect to a replica",
        Duration::from_secs(20),
        || async {
            for (i, cp) in replicas.iter().enumerate() {
                if holds_stream(cp, &agent).await {
                    return Some(i);
                }
            }
            None
        },
    )
    .await;
    agent.wait_in_sync(&replicas[on]).await;

    // Its replica goes away; a rotation through the other reaches the agent, which fails over.
    replicas[on].stop().await;
    let other = &replicas[1 - on];
    let rotated = other.tenant_call(&token, Method::POST, "/rotate").await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    agent.wait_in_sync(other).await;
    let downloaded = other.tenant_call(&token, Method::POST, "/download").await;
    assert_eq!(downloaded.status, 200, "{}", downloaded.text());
    let key = KeyFile::write(&downloaded.text());
    assert!(
        sshd.login_async(&key.path, &user.name, "true").await.0,
        "the rotated key logs in: the agent applied it through the replica it failed over to; agent log:\n{}",
        agent.log_text()
    );
}

/// Key sets as SQL records them, by (tenant, kind): generation, Vault version, public key.
async fn key_sets_in_sql(cp: &ControlPlane) -> Vec<(String, String, i64, i64, String)> {
    let mut conn = sqlx::PgConnection::connect(&cp.database_url).await.unwrap();
    sqlx::query_as(
        "SELECT tenant_id, kind, generation, vault_version, public_key FROM key_sets \
         ORDER BY tenant_id, kind",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// The job's tenants that a worker holds or held: (tenant, worker). While the job runs, only
/// those claimed now.
async fn claims(cp: &ControlPlane, job_id: &str) -> Vec<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(&cp.database_url).await.unwrap();
    sqlx::query_as(
        "SELECT tenant_id, claimed_by FROM rotation_job_tenants WHERE job_id = $1 \
         AND claimed_by IS NOT NULL AND (state = 'claimed' OR NOT EXISTS \
         (SELECT 1 FROM rotation_jobs j WHERE j.job_id = $1 AND j.status = 'running'))",
    )
    .bind(job_id)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Stops a replica in the middle of a rotate-all: the replicas share the job's tenants, the
/// stopped replica hands its claims back as it stops (long before their lease would run out),
/// and the other finishes: every key set rotated exactly once, and SQL names the version and key
/// that Vault holds.
#[tokio::test]
async fn a_replica_stopped_mid_rotate_all_leaves_the_job_to_another_and_no_tenant_rotated_twice() {
    // Enough that a fast machine is still in the middle of the job when A stops.
    const TENANTS: usize = 240;
    let bao = OpenBao::start().await;
    let mut a = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            database: Database::Postgres,
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            configure: Some(|config| {
                config.rotation.bulk_concurrency = Some(2);
                // Longer than the test may wait for the job: B must not wait for A's claims to
                // run out, A hands them back as it stops.
                config.rotation.bulk_lease = Duration::from_secs(600);
                config.rotation.scheduler = false;
            }),
            ..Default::default()
        },
    )
    .await;
    let b = a.replica().await;
    let tenants: Vec<String> = (0..TENANTS).map(|i| format!("bulk-{i:03}")).collect();
    futures::future::join_all(tenants.iter().map(|t| a.create_tenant(t))).await;

    let started = a
        .request(
            Method::POST,
            "/api/v1/admin/secrets/rotate-all?async=true",
            Some(&a.admin_token),
            Some(json!({ "secretType": "ssh" })),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.text());
    let job_id = started.json()["jobId"].as_str().unwrap().to_owned();
    let job_path = format!("/api/v1/admin/secrets/rotate-all/{job_id}");
    // Both replicas work on it: stop A once some tenants are done and most are not.
    let rotated_before = eventually("the job under way", Duration::from_secs(60), || async {
        let job = b.admin_get(&job_path).await.json();
        let rotated = job["rotatedCount"].as_i64().unwrap();
        (rotated >= 4).then_some(rotated)
    })
    .await;
    a.stop().await;
    assert!(
        rotated_before < TENANTS as i64,
        "the job was under way, not done, when A stopped: {rotated_before} rotated"
    );

    // B finishes well within A's lease (600 s): only because A handed its claims back.
    let job = eventually("B completes the job", Duration::from_secs(120), || async {
        let job = b.admin_get(&job_path).await.json();
        (job["status"] != "running").then_some(job)
    })
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["rotatedCount"], TENANTS, "{job}");
    assert_eq!(job["failedCount"], 0, "{job}");

    // The replicas shared the job: each finished some of its tenants.
    let finished = claims(&b, &job_id).await;
    let workers: std::collections::HashSet<_> = finished.iter().map(|(_, w)| w).collect();
    assert!(
        workers.len() >= 2,
        "both replicas worked on the job: {workers:?}"
    );

    // Exactly once: generation 2 everywhere, and SQL's version and key are Vault's current ones
    // (a Vault write of A's that never committed is superseded by B's rotation).
    let key_sets = key_sets_in_sql(&b).await;
    assert_eq!(key_sets.len(), 2 * TENANTS);
    for (tenant, kind, generation, vault_version, public_key) in key_sets {
        assert_eq!(generation, 2, "{tenant}/{kind} rotated once");
        let (secret, version) = bao.read_kv(&format!("{tenant}/{kind}_ssh")).await.unwrap();
        assert_eq!(vault_version as u64, version, "{tenant}/{kind}");
        assert_eq!(secret["public_key"], public_key.as_str(), "{tenant}/{kind}");
    }
    // One successful rotation per key set in the audit log, with the job's id, and one end.
    let audit = b
        .admin_get("/api/v1/admin/audit?action=key.rotate&limit=1000")
        .await
        .json();
    let rotations = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "success" && e["detail"]["jobId"] == job_id.as_str())
        .count();
    assert_eq!(rotations, 2 * TENANTS);
    let verdict = b.admin_get("/api/v1/admin/audit/verify").await.json();
    assert_eq!(verdict["ok"], true, "{verdict}");
}

/// Three replicas write to the audit log at once: the hash chain stays one unbroken chain.
#[tokio::test]
async fn three_replicas_writing_at_once_keep_one_audit_chain() {
    let bao = OpenBao::start().await;
    let a = ControlPlane::start_fast(&bao, Database::Postgres).await;
    let (b, c) = (a.replica().await, a.replica().await);
    let replicas = [&a, &b, &c];
    let writes = (0..60).map(|i| {
        let cp = replicas[i % 3];
        async move {
            let tenant = format!("chain-{i:02}");
            cp.create_tenant(&tenant).await;
            cp.admin_rotate(&tenant, "tenant").await;
        }
    });
    futures::future::join_all(writes).await;
    for cp in replicas {
        let verdict = cp.admin_get("/api/v1/admin/audit/verify").await.json();
        assert_eq!(verdict["ok"], true, "{verdict}");
        assert!(verdict["checked"].as_u64().unwrap() >= 120, "{verdict}");
    }
}

/// Three replicas behind Debian's haproxy in TCP mode, REST and the agents' mTLS both through
/// it, with PROXY protocol v2 from haproxy's address: the audit log shows the real client, a
/// client's own PROXY header is not believed, haproxy's address without a header gets nothing,
/// and an agent streaming through haproxy gets every replica's changes.
#[tokio::test]
async fn replicas_behind_haproxy_audit_the_real_client_and_serve_agents_through_it() {
    use keyward_tests::haproxy::{HAPROXY_SOURCE, HaProxy};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let bao = OpenBao::start().await;
    let a = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            database: Database::Postgres,
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            configure: Some(keyward_tests::haproxy::trust_haproxy),
            ..Default::default()
        },
    )
    .await;
    let (b, c) = (a.replica().await, a.replica().await);
    let lb = HaProxy::start(&[&a, &b, &c]).await;

    // Tenants created through haproxy from 127.0.0.3 (round robin: every replica answers some)
    // are audited as created from 127.0.0.3, not from haproxy's address.
    let client = HaProxy::client_from("127.0.0.3");
    let tenants: Vec<String> = (0..6).map(|_| unique_tenant("lb")).collect();
    for tenant in &tenants {
        let created = client
            .post(format!("{}/api/v1/admin/tenants", lb.rest_url))
            .bearer_auth(&a.admin_token)
            .json(&json!({ "tenantId": tenant, "vpsIp": "192.0.2.10", "sshPort": 22, "sshUsername": "tenant", "adminUsername": "kwadmin" }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    }
    let audit = a
        .admin_get("/api/v1/admin/audit?action=tenant.create&limit=1000")
        .await
        .json();
    let sources: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| tenants.iter().any(|t| e["tenantId"] == t.as_str()))
        .map(|e| e["sourceAddr"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec!["127.0.0.3"; tenants.len()]);

    // A client's own PROXY header, sent straight to a replica, is not believed: it is not HTTP.
    let mut forged = tokio::net::TcpStream::connect(a.server().addr)
        .await
        .unwrap();
    forged
        .write_all(
            b"PROXY TCP4 203.0.113.9 127.0.0.1 5000 80\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), forged.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // haproxy's address without a header gets no answer: the connection is closed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{HAPROXY_SOURCE}:0").parse().unwrap())
        .unwrap();
    let mut bare = socket.connect(a.server().addr).await.unwrap();
    bare.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), bare.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {read:?} {}",
        String::from_utf8_lossy(&answer)
    );

    // An agent streaming through haproxy (mTLS passed through to some replica) gets the changes
    // made on every replica.
    let tenant = &tenants[0];
    let token = a.tenant_token(tenant).await;
    let host = RawIdentity::enroll(&a, tenant).await;
    let mut stream = host.open_at(&lb.agent_url).await;
    let mut state = state_after(&mut stream, 0).await;
    for cp in [&a, &b, &c] {
        state = rotate_and_see(cp, &token, &mut stream, &state).await;
    }
}

/// What `make cluster` runs (`keyward_tests::cluster`): three OpenBao raft nodes, three replicas
/// and haproxy. Through haproxy, the Vault health shows the three nodes with one active, and a
/// tenant onboarded through it gets keys whose Vault copy the active node holds.
#[tokio::test]
async fn the_make_cluster_topology_serves_through_haproxy() {
    let cluster = keyward_tests::cluster::Cluster::start().await;
    let env = cluster.env();
    assert!(
        env.contains(&format!("KEYWARD_URL={}\n", cluster.lb.rest_url)),
        "{env}"
    );
    let admin = &cluster.replicas[0].admin_token;
    let http = reqwest::Client::new();
    let health: serde_json::Value = http
        .get(format!("{}/api/v1/admin/vault/health", cluster.lb.rest_url))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nodes = health["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{health}");
    assert_eq!(
        nodes.iter().filter(|n| n["active"] == true).count(),
        1,
        "{health}"
    );
    let tenant = unique_tenant("cluster");
    let created = http
        .post(format!("{}/api/v1/admin/tenants", cluster.lb.rest_url))
        .bearer_auth(admin)
        .json(
            &json!({ "tenantId": tenant, "vpsIp": "192.0.2.10", "sshPort": 22,
                       "sshUsername": "tenant", "adminUsername": "kwadmin" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (secret, version) = cluster
        .bao
        .read_kv(&format!("{tenant}/tenant_ssh"))
        .await
        .unwrap();
    assert_eq!(version, 1);
    assert!(secret["public_key"].as_str().unwrap().starts_with("ssh-"));
    cluster.stop().await;
}

/// PostgreSQL itself crashes and comes back (a server of the test's own, stopped `immediate`, so
/// that it recovers from its WAL): both replicas reconnect on their own, an agent streaming from
/// B gets a rotation made through A after the restart (B's listening session is new), and
/// nothing committed before the crash is lost: the tenant, its key generation and every audit
/// event, in a chain that verifies.
#[tokio::test]
async fn replicas_recover_from_a_postgresql_crash_and_lose_nothing_committed() {
    let pg = keyward_tests::pg_server::PgServer::start().await;
    let bao = OpenBao::start().await;
    let a = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            database_url: Some(pg.url()),
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            ..Default::default()
        },
    )
    .await;
    let b = a.replica().await;
    let tenant = unique_tenant("pgcrash");
    a.create_tenant(&tenant).await;
    let token = a.tenant_token(&tenant).await;
    let host = RawIdentity::enroll(&a, &tenant).await;
    let mut stream = host.open_at(&b.server().agent_url).await;
    let state = state_after(&mut stream, 0).await;
    let state = rotate_and_see(&a, &token, &mut stream, &state).await;
    let audited = a.admin_get("/api/v1/admin/audit?limit=1000").await.json()["events"]
        .as_array()
        .unwrap()
        .len();

    pg.crash_and_restart().await;

    // A rotation through A works again once A's pool has reconnected (503 meanwhile)...
    let rotated = eventually(
        "a rotation through A after the restart",
        Duration::from_secs(60),
        || async {
            let rotated = a.tenant_call(&token, Method::POST, "/rotate").await;
            (rotated.status == 200).then_some(rotated.json())
        },
    )
    .await;
    // ...and reaches the agent on B, whose listening session was cut by the crash.
    let after = state_after(&mut stream, state.0).await;
    assert!(
        after
            .1
            .iter()
            .any(|f| f.as_str() == rotated["newKeyFingerprint"].as_str().unwrap()),
        "the new key reached the stream on B: {after:?} {rotated}"
    );
    // Nothing committed before the crash is lost, on either replica.
    for cp in [&a, &b] {
        let sets = key_sets_in_sql(cp).await;
        let tenant_set = sets
            .iter()
            .find(|(t, kind, ..)| t == &tenant && kind == "tenant")
            .unwrap();
        assert_eq!(
            tenant_set.2, 3,
            "created, rotated before and after the crash"
        );
        let events = cp.admin_get("/api/v1/admin/audit?limit=1000").await.json();
        assert!(
            events["events"].as_array().unwrap().len() > audited,
            "{events}"
        );
        let verdict = cp.admin_get("/api/v1/admin/audit/verify").await.json();
        assert_eq!(verdict["ok"], true, "{verdict}");
    }
}

/// `host`'s `connected` as `cp` answers it, from the host's own view.
async fn connected_on(cp: &ControlPlane, host: &str) -> bool {
    let view = cp.admin_get(&format!("/api/v1/admin/hosts/{host}")).await;
    assert_eq!(view.status, 200, "{}", view.text());
    view.json()["connected"] == true
}

/// The ids of the hosts on the first page of `GET /api/v1/admin/hosts?{query}` from `cp`.
async fn listed(cp: &ControlPlane, query: &str) -> Vec<String> {
    let page = cp.admin_get(&format!("/api/v1/admin/hosts?{query}")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    page.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hostId"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads the live hosts view until a delta shows `host` with `connected` = `want`, within
/// `within`.
async fn live_connected(events: &mut Events, host: &str, want: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match events.next_before(deadline).await {
            keyward_tests::sse::Next::Event(name, data) => {
                let shown = data["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|h| h["hostId"] == host && h["connected"] == want);
                if name == "delta" && shown {
                    return;
                }
            }
            other => panic!("no delta with {host} connected = {want}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_replica_answers_the_same_connected_for_a_host_streaming_to_one() {
    let bao = OpenBao::start().await;
    let mut a = ControlPlane::start_fast(&bao, Database::Postgres).await;
    let b = a.replica().await;
    let tenant = unique_tenant("connected");
    a.create_tenant(&tenant).await;
    let host = RawIdentity::enroll(&a, &tenant).await;
    let other = RawIdentity::enroll(&a, &tenant).await;
    let query = format!("tenant={tenant}&connected=true");
    assert!(!connected_on(&b, &host.host_id).await);
    let mut live_on_b = Events::open(&b, "/api/v1/admin/events/hosts", &b.admin_token).await;
    assert_eq!(live_on_b.expect(Duration::from_secs(5)).await.0, "snapshot");

    // A stream to A: B says connected within a second, in the host's view and the list's filter.
    let stream = host.open_at(&a.server().agent_url).await;
    let opened = Instant::now();
    eventually(
        "B to see the stream held by A",
        Duration::from_secs(5),
        || async { connected_on(&b, &host.host_id).await.then_some(()) },
    )
    .await;
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "B saw it after {:?}",
        opened.elapsed()
    );
    assert_eq!(listed(&b, &query).await, [host.host_id.as_str()]);
    assert_eq!(
        listed(&b, &format!("tenant={tenant}&connected=false")).await,
        [other.host_id.as_str()]
    );
    assert_eq!(
        stream_holder(&a, &host.host_id).await.as_deref(),
        Some(a.server().replica_id.as_str())
    );
    live_connected(&mut live_on_b, &host.host_id, true, Duration::from_secs(5)).await;

    // The stream ends: B says not connected within a second or so.
    drop(stream);
    eventually(
        "B to see the stream end",
        Duration::from_secs(5),
        || async { (!connected_on(&b, &host.host_id).await).then_some(()) },
    )
    .await;
    assert!(listed(&b, &query).await.is_empty());
    live_connected(&mut live_on_b, &host.host_id, false, Duration::from_secs(5)).await;

    // Again to A, which then stops: B no longer counts it.
    let _stream = host.open_at(&a.server().agent_url).await;
    live_connected(&mut live_on_b, &host.host_id, true, Duration::from_secs(5)).await;
    assert!(connected_on(&b, &host.host_id).await);
    a.stop().await;
    assert!(
        !connected_on(&b, &host.host_id).await,
        "a stopped replica's streams are forgotten as it stops"
    );
    assert!(listed(&b, &query).await.is_empty());
    assert_eq!(stream_holder(&b, &host.host_id).await, None);
    // B's live view follows: it notices at its next heartbeat (5 s) that A is gone.
    live_connected(
        &mut live_on_b,
        &host.host_id,
        false,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn a_replica_that_stops_beating_stops_counting_within_three_heartbeats() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        keyward_tests::control_plane::Options {
            database: Database::Postgres,
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            configure: Some(|config| config.server.replica_heartbeat = Duration::from_secs(1)),
            ..Default::default()
        },
    )
    .await;
    let tenant = unique_tenant("ghost");
    cp.create_tenant(&tenant).await;
    let host = RawIdentity::enroll(&cp, &tenant).await;
    let mut live = Events::open(&cp, "/api/v1/admin/events/hosts", &cp.admin_token).await;
    assert_eq!(live.expect(Duration::from_secs(5)).await.0, "snapshot");

    // Another replica (killed, frozen or cut off right after) says it holds the host's stream and
    // beats once, as a replica would; then nothing more. It never cleans up.
    let mut conn = sqlx::PgConnection::connect(&cp.database_url).await.unwrap();
    let beat = Instant::now();
    let now = keyward_server::clock::iso8601(chrono::Utc::now());
    sqlx::query("INSERT INTO replicas (replica_id, started_at, seen_at) VALUES ('ghost', $1, $1)")
        .bind(&now)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO host_streams (host_id, replica_id, since) VALUES ($1, 'ghost', $2)")
        .bind(&host.host_id)
        .bind(&now)
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(
        connected_on(&cp, &host.host_id).await,
        "a live replica's stream counts"
    );
    // The live view reads every host when the set of live replicas changes.
    live_connected(&mut live, &host.host_id, true, Duration::from_secs(5)).await;

    // Three heartbeats after its beat (3 s, less up to 1 s: times are in whole seconds) it no
    // longer counts.
    eventually(
        "the silent replica to stop counting",
        Duration::from_secs(8),
        || async { (!connected_on(&cp, &host.host_id).await).then_some(()) },
    )
    .await;
    assert!(
        beat.elapsed() >= Duration::from_secs(2),
        "it stopped counting while alive, after {:?}",
        beat.elapsed()
    );
    live_connected(&mut live, &host.host_id, false, Duration::from_secs(5)).await;
    // Its row is still there (swept after an hour), just not believed.
    assert_eq!(
        stream_holder(&cp, &host.host_id).await.as_deref(),
        Some("ghost")
    );
}

#[tokio::test]
async fn a_stream_counts_only_while_its_replica_is_alive() {
    use keyward_server::agents::presence::alive_after;
    use keyward_server::store::Store;

    let schema = keyward_tests::PgSchema::create().await;
    let store = Store::connect(&schema.url(), Some(2)).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&schema.url()).await.unwrap();
    sqlx::query(
        "INSERT INTO tenants (tenant_id, vps_ip, ssh_port, tenant_user, admin_user, created_at) \
         VALUES ('t', '127.0.0.1', 22, 'tenant', 'kwadmin', '2026-01-01T00:00:00Z')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for host in ["h-fresh", "h-stale", "h-idle"] {
        sqlx::query(
            "INSERT INTO hosts (host_id, tenant_id, created_at) \
             VALUES ($1, 't', '2026-01-01T00:00:00Z')",
        )
        .bind(host)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let id = |h: &str| -> keyward_common::HostId { h.parse().unwrap() };
    let heartbeat = Duration::from_secs(5);
    let now = chrono::Utc::now();
    let seconds = |s: i64| chrono::Duration::seconds(s);

    // "fresh" beat just now; "stale" last beat four heartbeats ago (killed, frozen, cut off).
    assert!(
        !store.replica_heartbeat("fresh", now, now).await.unwrap(),
        "its first"
    );
    assert!(store.replica_heartbeat("fresh", now, now).await.unwrap());
    let long_ago = now - seconds(60);
    store
        .replica_heartbeat("stale", long_ago, now - seconds(20))
        .await
        .unwrap();
    store
        .record_streams("fresh", &[id("h-fresh")], &[], now)
        .await
        .unwrap();
    store
        .record_streams("stale", &[id("h-stale"), id("no-such-host")], &[], long_ago)
        .await
        .unwrap();

    let streamed_by =
        |hosts: Vec<keyward_server::store::StreamedHost>| -> Vec<(String, Option<String>)> {
            hosts
                .into_iter()
                .map(|h| (h.record.host_id.to_string(), h.streamed_by))
                .collect()
        };
    let alive = alive_after(now, heartbeat);
    assert_eq!(
        streamed_by(store.hosts_with_streams(alive).await.unwrap()),
        [
            ("h-fresh".to_owned(), Some("fresh".to_owned())),
            ("h-idle".to_owned(), None),
            ("h-stale".to_owned(), None),
        ]
    );
    assert_eq!(
        streamed_by(
            store
                .hosts_with_streams_of(&[id("h-stale"), id("h-fresh")], alive)
                .await
                .unwrap()
        ),
        [
            ("h-fresh".to_owned(), Some("fresh".to_owned())),
            ("h-stale".to_owned(), None)
        ]
    );
    let stale = store
        .host_with_stream(&id("h-stale"), alive)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stale.streamed_by, None,
        "a dead replica's stream does not count"
    );
    assert_eq!(store.live_replicas(alive).await.unwrap(), ["fresh"]);

    // The stale replica comes back (it was frozen): its stream counts again.
    assert!(
        store
            .replica_heartbeat("stale", long_ago, now)
            .await
            .unwrap()
    );
    let back = store
        .host_with_stream(&id("h-stale"), alive)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.streamed_by.as_deref(), Some("stale"));

    // A replica deletes only its own rows: the host moved to "fresh" stays with it.
    store
        .record_streams("fresh", &[id("h-stale")], &[], now)
        .await
        .unwrap();
    store
        .record_streams("stale", &[], &[id("h-stale")], now)
        .await
        .unwrap();
    let moved = store
        .host_with_stream(&id("h-stale"), alive)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.streamed_by.as_deref(), Some("fresh"));

    assert_eq!(store.count_streams("fresh").await.unwrap(), 2);
    assert_eq!(store.count_streams("stale").await.unwrap(), 0);

    // A rewrite replaces all of a replica's rows and names those it deleted.
    let deleted = store
        .replace_streams("fresh", &[id("h-idle")], now)
        .await
        .unwrap();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert_eq!(
        streamed_by(store.hosts_with_streams(alive).await.unwrap()),
        [
            ("h-fresh".to_owned(), None),
            ("h-idle".to_owned(), Some("fresh".to_owned())),
            ("h-stale".to_owned(), None),
        ]
    );

    // Dead for long: swept, rows and all; a heartbeat after that says its rows may be gone.
    store
        .record_streams("stale", &[id("h-fresh")], &[], now)
        .await
        .unwrap();
    store
        .replica_heartbeat("stale", long_ago, now - seconds(30))
        .await
        .unwrap();
    assert_eq!(
        store.sweep_dead_replicas(now - seconds(10)).await.unwrap(),
        1
    );
    assert_eq!(
        store.live_replicas(now - seconds(3_600)).await.unwrap(),
        ["fresh"]
    );
    assert!(
        !store
            .replica_heartbeat("stale", long_ago, now)
            .await
            .unwrap()
    );

    // A clean stop forgets the replica and its rows.
    store.forget_replica("fresh").await.unwrap();
    let hosts = streamed_by(store.hosts_with_streams(alive).await.unwrap());
    assert!(hosts.iter().all(|(_, by)| by.is_none()), "{hosts:?}");
    assert_eq!(store.live_replicas(alive).await.unwrap(), ["stale"]);
    store.close().await;
}
