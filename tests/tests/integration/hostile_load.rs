//! The control plane under an anonymous network attacker (THREATS.md, adversary 3): idle and
//! slowloris connections are closed by the timeouts while REST keeps answering, the connection
//! cap holds, the agents' accept loop does not spin out of descriptors, failed enrollments are
//! throttled and audited in aggregate, and errors say what failed, never where.

use std::time::{Duration, Instant};

use futures::StreamExt;
use keyward_server::config::Config;
use keyward_tests::control_plane::Options;
use keyward_tests::openbao::ROOT_TOKEN;
use keyward_tests::server_cli::server_binary;
use keyward_tests::{ControlPlane, Database, OpenBao, RawIdentity, eventually, unique_tenant};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A fresh connection per request: the check must not ride on a pooled one.
async fn healthz(url: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match client.get(format!("{url}/healthz")).send().await {
        Ok(r) => Some(r.status().as_u16()),
        Err(_) => None,
    }
}

/// The port of the address a `keyward-server` log line with `message` names (`addr=IP:PORT`).
fn logged_port(log: &str, message: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(message))?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Reads until the server closes the connection (EOF or reset), or `deadline`.
async fn closed_by(conn: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn short_timeouts(config: &mut Config) {
    config.server.header_read_timeout = Duration::from_secs(2);
    config.server.idle_timeout = Duration::from_secs(3);
    config.server.max_connections = 1500;
}

#[tokio::test]
async fn a_thousand_idle_and_slowloris_connections_are_closed_while_rest_answers() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            configure: Some(short_timeouts),
            ..Options::default()
        },
    )
    .await;
    let addr = cp.server().addr;
    let opened = Instant::now();
    let mut conns = Vec::new();
    for i in 0..1000 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            // Slowloris: headers begun, never finished.
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        conns.push(conn);
    }
    // REST answers with all of them open.
    assert_eq!(healthz(&cp.url).await, Some(200));
    // Each is closed by the timeouts (2 s for headers, 3 s idle), well within 20 s.
    let deadline = opened + Duration::from_secs(20);
    let mut still_open = 0;
    for conn in &mut conns {
        if !closed_by(conn, deadline).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "connections left open after 20 s");
    // A kept-alive connection that asked once is closed when idle too.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(closed_by(&mut conn, Instant::now() + Duration::from_secs(10)).await);
    assert_eq!(healthz(&cp.url).await, Some(200));
}

fn small_cap(config: &mut Config) {
    config.server.max_connections = 50;
    config.server.idle_timeout = Duration::from_secs(120);
    config.server.header_read_timeout = Duration::from_secs(120);
}

#[tokio::test]
async fn connections_over_the_rest_cap_are_closed_and_freed_permits_are_reused() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            configure: Some(small_cap),
            ..Options::default()
        },
    )
    .await;
    let addr = cp.server().addr;
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The 51st is accepted and closed at once, unanswered.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(closed_by(&mut extra, Instant::now() + Duration::from_secs(5)).await);
    assert_eq!(healthz(&cp.url).await, None, "answered over the cap");
    drop(held);
    eventually(
        "REST answers once the held connections close",
        Duration::from_secs(10),
        || async { (healthz(&cp.url).await == Some(200)).then_some(()) },
    )
    .await;
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn out_of_descriptors_the_agent_accept_loop_backs_off_instead_of_spinning() {
    let bao = OpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    let mut vault = format!("address = \"{}\"\ntoken = \"{ROOT_TOKEN}\"\n", bao.addr);
    if let Some(ca) = &bao.ca_file {
        vault.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
    }
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\n\
             [agent_api]\nlisten = \"127.0.0.1:0\"\ntls_handshake_timeout = \"60s\"\n\n\
             [rotation]\nkey_pool_size = 0\n\n\
             [vault]\n{vault}",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    // No RSA key pool: its refill would use a core while the CPU time is measured.
    // 128 descriptors: a few dozen for the server itself, the rest for the attacker to take.
    let mut child = tokio::process::Command::new("prlimit")
        .arg("--nofile=128:128")
        .arg(server_binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // The server binds port 0 and logs what it got: no port can be taken between a pick and
    // the bind (another test's listener did that once under full load).
    let (rest_port, agent_port) = eventually("the server listens", Duration::from_secs(60), || {
        let exited = child.try_wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            exited.is_none(),
            "keyward-server exited ({exited:?}):\n{text}"
        );
        async move {
            let rest = logged_port(&text, "keyward-server listening")?;
            let agents = logged_port(&text, "agent endpoint listening")?;
            Some((rest, agents))
        }
    })
    .await;
    let url = format!("http://127.0.0.1:{rest_port}");
    eventually("the server answers", Duration::from_secs(30), || async {
        (healthz(&url).await == Some(200)).then_some(())
    })
    .await;
    // Hold more connections to the agents' port than the server has descriptors.
    let mut conns = Vec::new();
    for _ in 0..200 {
        if let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", agent_port)),
        )
        .await
        {
            conns.push(conn);
        }
    }
    eventually(
        "the server logs that accept fails",
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("accept failed").then_some(())
        },
    )
    .await;
    // A REST client waits in the backlog too: both accept loops meet EMFILE meanwhile.
    let _waiting = TcpStream::connect(("127.0.0.1", rest_port)).await.unwrap();
    let before = cpu_seconds(pid);
    let started = Instant::now();
    // Three seconds of wall time while out of descriptors, asserted on CPU time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_seconds(pid) - before;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        used < 0.3,
        "the server used {used:.2} CPU seconds in {elapsed:.1} s out of descriptors"
    );
    drop(conns);
    eventually(
        "REST answers once the descriptors are free",
        Duration::from_secs(30),
        || async { (healthz(&url).await == Some(200)).then_some(()) },
    )
    .await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn two_thousand_bad_enrollments_are_throttled_and_leave_a_handful_of_audit_events() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let url = format!("{}/api/v1/agent/enroll", cp.url);
    let client = reqwest::Client::new();
    let statuses: Vec<(u16, Value)> = futures::stream::iter(0..2000)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client
                    .post(&url)
                    .json(&json!({ "token": format!("guess-{i}"), "csrPem": "x" }))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let unauthorized = statuses.iter().filter(|(s, _)| *s == 401).count();
    let throttled: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    // A burst of 10 failures (the default per minute), then 429s; a few may refill meanwhile.
    assert!(
        (10..=12).contains(&unauthorized),
        "{unauthorized} answered 401"
    );
    assert_eq!(unauthorized + throttled.len(), 2000);
    assert!(
        throttled
            .iter()
            .all(|(_, body)| body["code"] == "enrollment_throttled")
    );
    let audit = cp
        .admin_get("/api/v1/admin/audit?action=host.enroll&limit=1000")
        .await
        .json();
    let events = audit["events"].as_array().unwrap();
    assert!(
        (1..=2).contains(&events.len()),
        "{} audit events for 2,000 attempts",
        events.len()
    );
    assert_eq!(events[0]["outcome"], "refused");
    assert_eq!(events[0]["sourceAddr"], "127.0.0.1", "{}", events[0]);
}

/// What a problem document must never contain: where Vault is and what is in it.
fn assert_says_what_not_where(body: &str, vault_port: &str) {
    for leak in [
        "127.0.0.1",
        &format!(":{vault_port}"),
        "/v1/",
        "vps/",
        "_keyward",
        "os error",
        "Connection refused",
        "https://",
        "http://",
    ] {
        assert!(!body.contains(leak), "{leak:?} in {body}");
    }
    let problem: Value = serde_json::from_str(body).unwrap();
    assert!(
        problem["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("urn:keyward:request:")),
        "{body}"
    );
}

#[tokio::test]
async fn with_vault_down_problem_documents_name_no_address_path_or_mount() {
    let mut bao = OpenBao::start().await;
    let vault_port = bao.addr.rsplit(':').next().unwrap().to_owned();
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("where");
    cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;
    bao.stop().await;

    let readyz = cp.request(Method::GET, "/readyz", None, None).await;
    readyz.assert_problem(503, "not_ready");
    assert_says_what_not_where(&readyz.text(), &vault_port);
    for (method, suffix) in [
        (Method::POST, "/rotate"),
        (Method::POST, "/download"),
        (Method::POST, "/regenerate"),
    ] {
        let reply = cp.tenant_call(&token, method, suffix).await;
        reply.assert_problem(503, "vault_unavailable");
        assert_says_what_not_where(&reply.text(), &vault_port);
    }
    for path in [
        "/api/v1/admin/vault/health".to_owned(),
        format!("/api/v1/admin/secrets/tenant/{tenant}"),
    ] {
        let reply = cp.admin_get(&path).await;
        reply.assert_problem(503, "vault_unavailable");
        assert_says_what_not_where(&reply.text(), &vault_port);
    }
}

#[tokio::test]
async fn an_agent_with_an_rsa_3072_key_enrolls_and_streams_over_https() {
    use rsa::pkcs8::EncodePrivateKey;
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            tls: Some(keyward_tests::control_plane::TestTls::generate()),
            ..Options::default()
        },
    )
    .await;
    // HSTS on every answer when REST serves TLS.
    let reply = cp.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        reply.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    let tenant = unique_tenant("rsa");
    cp.create_tenant(&tenant).await;
    let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 3072).unwrap();
    let pem = rsa.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let key = rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let identity = RawIdentity::enroll_with(&cp, &tenant, key).await;
    let mut stream = identity.open(&cp).await;
    stream
        .next_matching(|m| match m.msg {
            Some(keyward_common::proto::control_message::Msg::State(_)) => Some(()),
            _ => None,
        })
        .await;

    // An RSA-2048 CSR is refused, by name.
    let small = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let pem = small.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let key = rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let registered = cp
        .admin_post("/api/v1/admin/hosts", json!({ "tenantId": tenant }))
        .await
        .json();
    let reply = cp
        .request(
            Method::POST,
            "/api/v1/agent/enroll",
            None,
            Some(json!({ "token": registered["enrollmentToken"], "csrPem": csr })),
        )
        .await;
    reply.assert_problem(400, "invalid_body");
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("RSA of 2048 bits")
    );
}
