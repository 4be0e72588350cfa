//! The admins' live views under hostile load: a revoked token's open streams end within a
//! second, an agent's hello re-sends nothing, a change sends that host alone, and a reader that
//! does not read is dropped while the server keeps answering (THREATS.md, adversaries 2 and 4).

use std::time::{Duration, Instant};

use keyward_common::proto::{Applied, DriftReport, Hello, UserResult, agent_message};
use keyward_tests::raw_agent::RawIdentity;
use keyward_tests::sse::Events;
use keyward_tests::{ControlPlane, Database, OpenBao};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::rotation::tenants_with_rsa_keys_next;

const HOSTS: &str = "/api/v1/admin/events/hosts";

/// A second admin token: `(token, token id)`.
async fn admin_token(cp: &ControlPlane) -> (String, String) {
    let issued = cp
        .admin_post(
            "/api/v1/admin/tokens",
            json!({ "role": "admin", "label": "watcher" }),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let issued = issued.json();
    (
        issued["token"].as_str().unwrap().to_owned(),
        issued["tokenId"].as_str().unwrap().to_owned(),
    )
}

async fn revoke(cp: &ControlPlane, token_id: &str) {
    let reply = cp
        .request(
            Method::DELETE,
            &format!("/api/v1/admin/tokens/{token_id}"),
            Some(&cp.admin_token),
            None,
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text());
}

async fn register(cp: &ControlPlane, tenant: &str, host: &str) {
    let reply = cp
        .admin_post(
            "/api/v1/admin/hosts",
            json!({ "tenantId": tenant, "hostId": host }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
}

fn host_ids(event: &Value) -> Vec<&str> {
    event["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hostId"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_revoked_tokens_hosts_stream_ends_within_a_second_and_misses_later_hosts() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    cp.create_tenant("acme").await;
    register(&cp, "acme", "before").await;
    let (token, token_id) = admin_token(&cp).await;

    let mut revoked = Events::open(&cp, HOSTS, &token).await;
    let mut control = Events::open(&cp, HOSTS, &cp.admin_token).await;
    for stream in [&mut revoked, &mut control] {
        let (name, snapshot) = stream.expect(Duration::from_secs(5)).await;
        assert_eq!(name, "snapshot");
        assert_eq!(host_ids(&snapshot), ["before"]);
        assert_eq!(snapshot["total"], 1);
    }

    revoke(&cp, &token_id).await;
    let revoked_at = Instant::now();
    register(&cp, "acme", "after").await;
    let events = revoked.until_end(revoked_at + Duration::from_secs(1)).await;
    assert!(
        events.iter().all(|(_, e)| !e.to_string().contains("after")),
        "a host registered after the revocation reached the revoked stream: {events:?}"
    );
    // The same change reaches a stream whose token is valid: it would have reached the other.
    let (name, delta) = control.expect(Duration::from_secs(5)).await;
    assert_eq!(name, "delta");
    assert_eq!(host_ids(&delta), ["after"]);
    // And the revoked token cannot open a new one.
    let again = cp.request(Method::GET, HOSTS, Some(&token), None).await;
    assert_eq!(again.status, 401, "{}", again.text());
}

#[tokio::test]
async fn a_revoked_tokens_rotation_job_stream_ends_within_a_second() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    // RSA-4096 keys: the job runs for seconds, past the revocation.
    tenants_with_rsa_keys_next(&cp, &["rsa-a", "rsa-b", "rsa-c", "rsa-d"]).await;
    let (token, token_id) = admin_token(&cp).await;
    let started = crate::rotate_all::start_rotate_all(&cp).await;
    let job_id = started.json()["jobId"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/admin/secrets/rotate-all/{job_id}/events");
    let mut stream = Events::open(&cp, &path, &token).await;
    let (name, _) = stream.expect(Duration::from_secs(5)).await;
    assert_eq!(name, "progress");

    revoke(&cp, &token_id).await;
    let events = stream
        .until_end(Instant::now() + Duration::from_secs(1))
        .await;
    assert!(
        events.iter().all(|(name, _)| name != "done"),
        "the job ended before the revocation: this test proves nothing ({events:?})"
    );
    let job = cp
        .admin_get(&format!("/api/v1/admin/secrets/rotate-all/{job_id}"))
        .await
        .json();
    assert_eq!(job["status"], "running", "{job}");
}

#[tokio::test]
async fn an_agent_hello_resends_nothing_and_a_change_sends_that_host_alone() {
    hello_resends_nothing_and_a_change_sends_that_host_alone(Database::Sqlite).await;
}

/// The hosts view reads the hosts that changed by id (`hosts_by_ids`, `host_activity_of`): the
/// same on PostgreSQL.
#[tokio::test]
async fn an_agent_hello_resends_nothing_and_a_change_sends_that_host_alone_on_postgresql() {
    hello_resends_nothing_and_a_change_sends_that_host_alone(Database::Postgres).await;
}

async fn hello_resends_nothing_and_a_change_sends_that_host_alone(database: Database) {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, database).await;
    cp.create_tenant("acme").await;
    for i in 0..30 {
        register(&cp, "acme", &format!("idle-{i:02}")).await;
    }
    let agent = RawIdentity::enroll(&cp, "acme").await;
    let raw = agent.open(&cp).await;
    // The agent is connected (seen on the list) before the stream opens.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = cp.admin_get("/api/v1/admin/hosts").await.json();
        let connected = hosts
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["hostId"] == agent.host_id.as_str() && h["connected"] == true);
        if connected {
            break;
        }
        assert!(Instant::now() < deadline, "the raw agent never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut stream = Events::open(&cp, HOSTS, &cp.admin_token).await;
    let (name, snapshot) = stream.expect(Duration::from_secs(5)).await;
    assert_eq!(name, "snapshot");
    assert_eq!(snapshot["total"], 31);
    let snapshot_bytes = stream.bytes;

    // Fifty hellos: the table (or any host) is not sent again.
    for _ in 0..50 {
        raw.send(agent_message::Msg::Hello(Hello::default())).await;
    }
    let before = stream.bytes;
    let events = stream.during(Duration::from_millis(1500)).await;
    assert!(
        events.is_empty(),
        "hellos re-sent hosts to an open stream: {events:?}"
    );
    assert!(
        stream.bytes - before < 200,
        "{} bytes after hellos (the snapshot was {snapshot_bytes})",
        stream.bytes - before
    );

    // A repaired drift (the host's activity): that host alone, with when it was heard of.
    raw.send(agent_message::Msg::Drift(DriftReport {
        user: "tenant".into(),
        added: vec![],
        removed: vec![],
        detected_at: "2026-01-01T00:00:00Z".into(),
    }))
    .await;
    let (name, delta) = stream.expect(Duration::from_secs(5)).await;
    assert_eq!(name, "delta");
    assert_eq!(host_ids(&delta), [agent.host_id.as_str()]);
    assert!(delta["hosts"][0]["lastDriftAt"].is_string(), "{delta}");

    // The agent goes away: one delta per change, with that host alone.
    drop(raw);
    let (name, delta) = stream.expect(Duration::from_secs(5)).await;
    assert_eq!(name, "delta");
    assert_eq!(host_ids(&delta), [agent.host_id.as_str()]);
    assert_eq!(delta["hosts"][0]["connected"], false);
    assert_eq!(delta["total"], 31);

    // A new host: that host alone.
    register(&cp, "acme", "newcomer").await;
    let (name, delta) = stream.expect(Duration::from_secs(5)).await;
    assert_eq!(name, "delta");
    assert_eq!(host_ids(&delta), ["newcomer"]);
    assert_eq!(delta["total"], 32);
}

/// An `Applied` as big as the control plane keeps: 16 users, each with an error, 8 warnings and
/// 100 fingerprints twice; `round` makes each one differ from the last.
fn huge_applied(round: usize) -> agent_message::Msg {
    use base64::Engine;
    let fingerprint = |i: usize| {
        let mut raw = [0u8; 32];
        raw[..8].copy_from_slice(&(i as u64).to_be_bytes());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
        )
    };
    let text = |what: &str| format!("{what} {round} {}", "x".repeat(480));
    agent_message::Msg::Applied(Applied {
        generation: 0,
        users: (0..16)
            .map(|u| UserResult {
                user: format!("user{u}"),
                error: text("error"),
                fingerprints: (0..100).map(fingerprint).collect(),
                set_aside: (100..200).map(fingerprint).collect(),
                warnings: (0..8).map(|_| text("warning")).collect(),
                ..UserResult::default()
            })
            .collect(),
        sshd: None,
    })
}

#[tokio::test]
async fn a_stream_whose_reader_does_not_read_is_dropped_and_the_server_answers() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    cp.create_tenant("acme").await;
    let agent = RawIdentity::enroll(&cp, "acme").await;
    let raw = agent.open(&cp).await;
    // An admin stream on a connection that reads nothing (and offers a 4 KiB window).
    let addr = cp.url.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(addr.parse().unwrap()).await.unwrap();
    stuck
        .write_all(
            format!(
                "GET {HOSTS} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
                cp.admin_token
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    let dropped = || async {
        let metrics = cp.request(Method::GET, "/metrics", None, None).await.text();
        metrics
            .lines()
            .find(|l| l.starts_with("keyward_live_streams_dropped_total"))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The counter is the process's (tests run side by side): its rise is the cue to look.
    let baseline = dropped().await;
    // A rogue agent makes its host's view change with every message, as big as it may be.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while dropped().await <= baseline {
        assert!(
            Instant::now() < deadline,
            "a stream that reads nothing was never dropped after {round} changes"
        );
        raw.send(huge_applied(round)).await;
        round += 1;
        let asked = Instant::now();
        let reply = cp
            .admin_get(&format!("/api/v1/admin/hosts/{}", agent.host_id))
            .await;
        assert_eq!(reply.status, 200);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "the server took {:?} to answer",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stuck stream is the one that ended: read now, its body ends (the last chunk).
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = vec![0u8; 65536];
        loop {
            let n = stuck.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            received.extend_from_slice(&chunk[..n]);
            if received.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream that read nothing was not ended ({} bytes read)",
        received.len()
    );
    // A reading stream opened now gets the host as it is, at once.
    let mut fresh = Events::open(&cp, HOSTS, &cp.admin_token).await;
    let (name, snapshot) = fresh.expect(Duration::from_secs(5)).await;
    assert_eq!(name, "snapshot");
    assert_eq!(host_ids(&snapshot), [agent.host_id.as_str()]);
}

#[tokio::test]
async fn the_hosts_list_pages_filters_and_refuses_bad_parameters() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    cp.create_tenant("acme").await;
    cp.create_tenant("other").await;
    for i in 0..7 {
        register(&cp, "acme", &format!("a-{i}")).await;
    }
    for i in 0..3 {
        register(&cp, "other", &format!("o-{i}")).await;
    }
    let ids = |reply: &keyward_tests::control_plane::Reply| -> Vec<String> {
        reply
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["hostId"].as_str().unwrap().to_owned())
            .collect()
    };
    // The former call: every host.
    assert_eq!(ids(&cp.admin_get("/api/v1/admin/hosts").await).len(), 10);

    // Pages by cursor, sorted by host id, filtered by tenant.
    let first = cp
        .admin_get("/api/v1/admin/hosts?tenant=acme&limit=3")
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(ids(&first), ["a-0", "a-1", "a-2"]);
    assert_eq!(first.header("x-total-count"), Some("7"));
    assert_eq!(first.header("x-next-cursor"), Some("a-2"));
    let mut all = ids(&first);
    let mut cursor = first.header("x-next-cursor").map(str::to_owned);
    while let Some(c) = cursor {
        let page = cp
            .admin_get(&format!(
                "/api/v1/admin/hosts?tenant=acme&limit=3&cursor={c}"
            ))
            .await;
        assert_eq!(page.status, 200, "{}", page.text());
        all.extend(ids(&page));
        cursor = page.header("x-next-cursor").map(str::to_owned);
    }
    assert_eq!(all, (0..7).map(|i| format!("a-{i}")).collect::<Vec<_>>());

    let page = cp.admin_get("/api/v1/admin/hosts?offset=8").await;
    assert_eq!(ids(&page), ["o-1", "o-2"]);
    assert_eq!(page.header("x-next-cursor"), None);
    let searched = cp
        .admin_get("/api/v1/admin/hosts?q=o-&status=pending")
        .await;
    assert_eq!(ids(&searched), ["o-0", "o-1", "o-2"]);
    let connected = cp.admin_get("/api/v1/admin/hosts?connected=true").await;
    assert!(ids(&connected).is_empty());

    // Other orders page by offset; they have no cursor.
    let sorted = cp
        .admin_get("/api/v1/admin/hosts?sort=-tenantId&limit=4&offset=1")
        .await;
    assert_eq!(sorted.status, 200, "{}", sorted.text());
    assert_eq!(ids(&sorted), ["o-1", "o-2", "a-0", "a-1"]);
    assert_eq!(sorted.header("x-total-count"), Some("10"));
    assert_eq!(sorted.header("x-next-cursor"), None);

    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "offset=1000001",
        "offset=1&cursor=a-1",
        "cursor=..",
        "tenant=Not%20a%20tenant",
        "status=asleep",
        "connected=maybe",
        &format!("q={}", "x".repeat(65)),
        "sort=desc",
        "sort=-tenantId&cursor=a-1",
    ] {
        cp.admin_get(&format!("/api/v1/admin/hosts?{bad}"))
            .await
            .assert_problem(400, "invalid_query");
    }
}
