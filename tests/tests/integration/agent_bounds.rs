//! A rogue agent (THREATS.md, adversary 2: a rooted VPS sends whatever it likes on its enrolled
//! stream) cannot grow the control plane without bound: oversized messages are refused, fields
//! are cut, drift reports and login events over the host's rate are dropped and counted, and the
//! retention sweep deletes old drift and login rows on both backends without touching the audit
//! chain.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use keyward_common::proto::{
    Applied, DriftReport, Hello, LoginBatch, LoginEvent, LoginMethod, LoginOutcome,
    RenewCertificate, SshdFilesResult, UserResult, agent_message, control_message,
};
use keyward_common::{CertificateId, KeyKind, TenantId};
use keyward_server::clock::{iso8601, parse_iso8601};
use keyward_server::config::RetentionConfig;
use keyward_server::pseudonym::Pseudonymiser;
use keyward_server::store::{
    CertificateRecord, DriftRecord, GrantRecord, GrantStatus, LoginFilter, NewLogin, Store,
};
use keyward_tests::{
    ControlPlane, Database, OpenBao, RawIdentity, RawStream, eventually, unique_tenant,
};
use reqwest::Method;
use serde_json::Value;

/// The most the admin view of one host may weigh, whatever its agent sent.
const VIEW_BOUND: usize = 64 * 1024;

/// A fingerprint that parses, different for each `n`.
fn fingerprint(n: u64) -> String {
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&n.to_be_bytes());
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

fn login(cursor: u64) -> LoginEvent {
    LoginEvent {
        cursor,
        at: "2026-11-28T10:00:00Z".into(),
        outcome: LoginOutcome::Failed.into(),
        method: LoginMethod::Password.into(),
        user: "root".into(),
        source_ip: "192.0.2.7".into(),
        source_port: 22,
        key_type: String::new(),
        fingerprint: String::new(),
        sshd_pid: 4242,
        verified: true,
        ..LoginEvent::default()
    }
}

async fn host_view(cp: &ControlPlane, host: &str) -> (Value, usize) {
    let reply = cp.admin_get(&format!("/api/v1/admin/hosts/{host}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    (reply.json(), reply.body.len())
}

/// Sends a batch and waits for its acknowledgement: every message sent before it was handled.
async fn logins_acked(stream: &mut RawStream, events: Vec<LoginEvent>) -> u64 {
    stream
        .send(agent_message::Msg::Logins(LoginBatch {
            events,
            dropped: 0,
        }))
        .await;
    stream
        .next_matching(|m| match m.msg {
            Some(control_message::Msg::LoginAck(ack)) => Some(ack.cursor),
            _ => None,
        })
        .await
}

async fn stored_logins(store: &Store, host: &str) -> usize {
    let mut filter = LoginFilter {
        host_id: Some(host.parse().unwrap()),
        limit: 1000,
        ..LoginFilter::default()
    };
    let mut count = 0;
    loop {
        let (page, next) = store.logins(&filter).await.unwrap();
        count += page.len();
        match next {
            Some(before) => filter.before_id = Some(before),
            None => return count,
        }
    }
}

#[tokio::test]
async fn a_rogue_agent_is_refused_cut_and_rate_limited() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("bounds");
    cp.create_tenant(&tenant).await;
    let host = RawIdentity::enroll(&cp, &tenant).await;
    let store = Store::connect(&cp.database_url, None).await.unwrap();

    // A 2 MB error is over the 1 MiB message bound: refused, and the stream ends saying why.
    let mut stream = host.open(&cp).await;
    stream
        .send(agent_message::Msg::Applied(Applied {
            generation: 1,
            users: vec![UserResult {
                user: "tenant".into(),
                error: "e".repeat(2_000_000),
                ..UserResult::default()
            }],
            sshd: None,
        }))
        .await;
    let status = stream.ended().await.expect("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let (view, _) = host_view(&cp, &host.host_id).await;
    assert_eq!(view["lastError"], Value::Null, "{view}");

    // Under the message bound, every field is cut: a 900 kB error, 200 users, a 500 kB version,
    // 2,000 host keys that are not keys, 100 users of 100 set-aside keys each.
    let mut stream = host.open(&cp).await;
    stream
        .send(agent_message::Msg::Hello(Hello {
            agent_version: "v".repeat(500_000),
            host_keys: vec!["ssh-ed25519 AAAAnotakey".into(); 2000],
            ..Hello::default()
        }))
        .await;
    stream
        .send(agent_message::Msg::Applied(Applied {
            generation: 1,
            users: vec![UserResult {
                user: "u".repeat(1000),
                error: "e".repeat(900_000),
                warnings: vec!["w".repeat(500); 10],
                fingerprints: (0..200).map(fingerprint).collect(),
                ..UserResult::default()
            }],
            sshd: None,
        }))
        .await;
    stream
        .send(agent_message::Msg::Applied(Applied {
            generation: 2,
            users: (0..100)
                .map(|i| UserResult {
                    user: format!("user{i}"),
                    error: "e".repeat(1000),
                    set_aside: (0..100).map(fingerprint).collect(),
                    ..UserResult::default()
                })
                .collect(),
            sshd: Some(SshdFilesResult {
                error: "s".repeat(100_000),
                changed: false,
            }),
        }))
        .await;
    assert_eq!(logins_acked(&mut stream, vec![login(1)]).await, 1);
    // Reports are written in batches, apart from the stream: wait for the last one.
    let (view, size) = eventually(
        "the agent's reports recorded",
        Duration::from_secs(10),
        || async {
            let (view, size) = host_view(&cp, &host.host_id).await;
            (view["appliedGeneration"] == 2).then_some((view, size))
        },
    )
    .await;
    assert!(size < VIEW_BOUND, "host view of {size} bytes");
    assert_eq!(view["agentVersion"].as_str().unwrap().len(), 64);
    assert_eq!(view["hostKeys"], serde_json::json!([]));
    let users = view["users"].as_array().unwrap();
    assert_eq!(users.len(), 4);
    assert_eq!(users[0]["error"].as_str().unwrap().len(), 500);
    assert!(view["lastError"].as_str().unwrap().len() <= 4096);
    assert_eq!(view["status"], "degraded");

    // 30 drift reports of about 900 kB each: their lists are cut to 16 fingerprints, and past
    // the burst of 20 they are dropped and counted.
    let junk = "x".repeat(60);
    for i in 0..30 {
        let mut added: Vec<String> = (0..16).map(|n| fingerprint(i * 100 + n)).collect();
        added.extend(std::iter::repeat_n(junk.clone(), 14_000));
        stream
            .send(agent_message::Msg::Drift(DriftReport {
                user: "tenant".repeat(1000),
                added,
                removed: (0..100).map(fingerprint).collect(),
                detected_at: "2026-11-28T10:00:00Z".repeat(100),
            }))
            .await;
    }
    assert_eq!(logins_acked(&mut stream, vec![login(2)]).await, 2);
    // Every report stored or counted (the count reaches the row within a second or two).
    let (view, size) = eventually(
        "30 drift reports stored or counted in the host view",
        Duration::from_secs(10),
        || async {
            let (view, size) = host_view(&cp, &host.host_id).await;
            let stored = view["drift"].as_array().unwrap().len() as i64;
            (stored + view["reportsDropped"].as_i64().unwrap() == 30).then_some((view, size))
        },
    )
    .await;
    assert!(size < VIEW_BOUND, "host view of {size} bytes");
    let drift = view["drift"].as_array().unwrap();
    let dropped = view["reportsDropped"].as_i64().unwrap();
    // A refill is one report every 6 s: this took far less than a minute.
    assert!(
        drift.len() >= 20 && drift.len() <= 25,
        "{} stored",
        drift.len()
    );
    for record in drift {
        assert_eq!(record["added"].as_array().unwrap().len(), 16);
        assert_eq!(record["removed"].as_array().unwrap().len(), 16);
        assert_eq!(record["user"].as_str().unwrap().len(), 64);
    }

    // 20,000 login events in a burst of 40 batches: every batch acknowledged (or the agent would
    // send it for ever), the burst of 5,000 stored, the rest dropped and counted.
    let before = stored_logins(&store, &host.host_id).await;
    assert_eq!(before, 2);
    let mut acked = 0;
    for batch in 0..40u64 {
        let events = (0..500).map(|i| login(1000 + batch * 500 + i)).collect();
        acked = logins_acked(&mut stream, events).await;
    }
    assert_eq!(acked, 1000 + 20_000 - 1);
    let stored = (stored_logins(&store, &host.host_id).await - before) as i64;
    let view = eventually(
        "the dropped login events in the host view",
        Duration::from_secs(10),
        || async {
            let (view, _) = host_view(&cp, &host.host_id).await;
            (view["reportsDropped"].as_i64().unwrap() - dropped + stored == 20_000).then_some(view)
        },
    )
    .await;
    assert!(
        (4990..6500).contains(&stored),
        "{stored} of 20,000 stored, {} dropped",
        view["reportsDropped"]
    );

    // Certificate renewals, each signed and audited for ever: two on one stream, then one a
    // minute; the rest are not answered.
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&host.key)
        .unwrap()
        .pem()
        .unwrap();
    for _ in 0..6 {
        stream
            .send(agent_message::Msg::Renew(RenewCertificate {
                csr_pem: csr.clone(),
            }))
            .await;
    }
    // The acknowledgement of this batch comes after every renewal was handled.
    stream
        .send(agent_message::Msg::Logins(LoginBatch {
            events: vec![login(50_000)],
            dropped: 0,
        }))
        .await;
    let mut certificates = 0;
    while stream
        .next_matching(|m| match m.msg {
            Some(control_message::Msg::Certificate(_)) => Some(true),
            Some(control_message::Msg::LoginAck(_)) => Some(false),
            _ => None,
        })
        .await
    {
        certificates += 1;
    }
    assert_eq!(certificates, 2);
    let renewals = cp
        .admin_get("/api/v1/admin/audit?action=host.certificate_renew")
        .await
        .json();
    assert_eq!(renewals["events"].as_array().unwrap().len(), 2);

    // A batch over 1,000 events is refused, not cut: cutting it would acknowledge events never
    // stored.
    stream
        .send(agent_message::Msg::Logins(LoginBatch {
            events: (0..1001).map(|i| login(100_000 + i)).collect(),
            dropped: 0,
        }))
        .await;
    let status = stream.ended().await.expect("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1000"), "{status:?}");

    let openapi = cp
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .json();
    let field = &openapi["components"]["schemas"]["HostView"]["properties"]["reportsDropped"];
    assert!(
        field["description"]
            .as_str()
            .is_some_and(|d| d.contains("rate")),
        "{field}"
    );

    let list = cp.admin_get("/api/v1/admin/hosts").await;
    assert!(list.body.len() < VIEW_BOUND, "{} bytes", list.body.len());
    let metrics = cp.request(Method::GET, "/metrics", None, None).await.text();
    for line in [
        "keyward_agent_messages_refused_total{reason=\"message_too_large\"}",
        "keyward_agent_messages_refused_total{reason=\"too_many_login_events\"}",
        "keyward_agent_messages_refused_total{reason=\"truncated\"}",
        "keyward_agent_messages_refused_total{reason=\"renewal_rate\"}",
        "keyward_agent_reports_dropped_total{kind=\"drift\"}",
        "keyward_agent_reports_dropped_total{kind=\"login\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
}

fn new_login(cursor: i64, at: DateTime<Utc>) -> NewLogin {
    NewLogin {
        cursor,
        at,
        outcome: "failed",
        method: "password",
        user: "root".into(),
        source_ip: "192.0.2.7".into(),
        source_port: 22,
        key_type: None,
        fingerprint: None,
        sshd_pid: None,
        verified: true,
        certificate: None,
    }
}

fn certificate(tenant: &TenantId, number: u64, valid_before: DateTime<Utc>) -> CertificateRecord {
    CertificateRecord {
        id: CertificateId {
            tenant: tenant.clone(),
            kind: KeyKind::Tenant,
            number,
        },
        serial: number,
        issuer_id: "issuer".into(),
        ca_public_key: "ssh-ed25519 AAAA".into(),
        key_fingerprint: fingerprint(number).parse().unwrap(),
        certificate: "ssh-ed25519-cert-v01@openssh.com AAAA".into(),
        principals: vec![format!("keyward:{tenant}:tenant")],
        valid_after: valid_before - chrono::Duration::hours(1),
        valid_before,
        issued_at: valid_before - chrono::Duration::hours(1),
        issued_by: "tok".into(),
        reason: String::new(),
        revoked_at: None,
        revoked_by: None,
    }
}

fn grant(tenant: &TenantId, id: &str, at: DateTime<Utc>, status: GrantStatus) -> GrantRecord {
    GrantRecord {
        grant_id: id.into(),
        tenant_id: tenant.clone(),
        kind: KeyKind::Tenant,
        requested_by: "tok".into(),
        requester_role: "admin".into(),
        public_key: "ssh-ed25519 AAAA".into(),
        key_fingerprint: fingerprint(1).parse().unwrap(),
        duration_seconds: 60,
        reason: "x".into(),
        status,
        needs_tenant: false,
        needs_admin: false,
        tenant_approved_by: None,
        admin_approved_by: None,
        decided_at: None,
        ended_by: None,
        requested_at: at,
        decide_by: at,
        certificate_number: None,
        ends_at: None,
    }
}

async fn retention_deletes_old_rows_only(database: Database) {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, database).await;
    let tenant = unique_tenant("retention");
    cp.create_tenant(&tenant).await;
    let host = RawIdentity::enroll(&cp, &tenant).await;
    // A batch through the agent stream: its audit event is in the chain the sweep must not break.
    let mut stream = host.open(&cp).await;
    assert_eq!(logins_acked(&mut stream, vec![login(1)]).await, 1);
    drop(stream);

    let store = Store::connect(&cp.database_url, None).await.unwrap();
    let host_id = host.host_id.parse().unwrap();
    let tenant_id = tenant.parse().unwrap();
    let now = parse_iso8601("2030-06-01T00:00:00Z").unwrap();
    let days_ago = |days: i64| now - chrono::Duration::days(days);
    // 2,500 login rows received 401 days ago (more than two sweep batches), 10 at 399 days.
    let old = days_ago(401);
    let mut tx = store.begin().await.unwrap();
    let events: Vec<NewLogin> = (0..2500).map(|c| new_login(1000 + c, old)).collect();
    tx.insert_logins(&host_id, &tenant_id, &events, old)
        .await
        .unwrap();
    let kept = days_ago(399);
    let events: Vec<NewLogin> = (0..10).map(|c| new_login(5000 + c, old)).collect();
    tx.insert_logins(&host_id, &tenant_id, &events, kept)
        .await
        .unwrap();
    // Received 30 days ago: kept as they came (pseudonymised after 90 days).
    let recent: Vec<NewLogin> = (0..5).map(|c| new_login(6000 + c, old)).collect();
    tx.insert_logins(&host_id, &tenant_id, &recent, days_ago(30))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for (days, user) in [(91, "old"), (200, "older"), (89, "kept")] {
        let record = DriftRecord {
            user: user.into(),
            added: vec![fingerprint(1)],
            removed: vec![],
            // The agent's own time says nothing: a rooted host would say "now" for ever.
            detected_at: iso8601(now),
            received_at: days_ago(days),
        };
        store.insert_drift(&host_id, &record).await.unwrap();
    }
    assert_eq!(
        stored_logins(&store, &host.host_id).await,
        1 + 2500 + 10 + 5
    );
    // Certificates whose validity ended 401 and 399 days ago; requests made then, one ended and
    // one still pending (never swept), and one ended 399 days ago.
    let mut tx = store.begin().await.unwrap();
    for (number, days) in [(1, 401), (2, 399)] {
        tx.insert_certificate(&certificate(&tenant_id, number, days_ago(days)))
            .await
            .unwrap();
    }
    for (id, days, status) in [
        ("ag-0000000000000001", 401, GrantStatus::Expired),
        ("ag-0000000000000002", 401, GrantStatus::Pending),
        ("ag-0000000000000003", 399, GrantStatus::Denied),
    ] {
        tx.insert_grant(&grant(&tenant_id, id, days_ago(days), status))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let pseudonyms = Pseudonymiser::from_key(&[42; 32]);
    let sweep = || async {
        keyward_server::retention::sweep(
            &store,
            &RetentionConfig::default(),
            now,
            Some(&pseudonyms),
        )
        .await
        .unwrap()
    };
    let swept = sweep().await;
    // With the 2,500: the one stored through the stream, received today (the server's real
    // clock), years before this sweep's "now".
    assert_eq!(swept.login_events, 2500 + 1);
    assert_eq!(swept.drift_events, 2);
    assert_eq!(swept.certificates, 1);
    assert_eq!(swept.access_grants, 1);
    // The 10 kept past 90 days are pseudonymised (after the deletions: none of the deleted).
    assert_eq!(swept.pseudonymised_logins, 10);
    let left: Vec<u64> = store
        .certificates(&tenant_id, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id.number)
        .collect();
    assert_eq!(left, [2]);
    let mut grants: Vec<String> = store
        .grants(Some(&tenant_id), None)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.grant_id)
        .collect();
    grants.sort();
    assert_eq!(grants, ["ag-0000000000000002", "ag-0000000000000003"]);
    assert_eq!(stored_logins(&store, &host.host_id).await, 10 + 5);
    let (rows, _) = store
        .logins(&LoginFilter {
            host_id: Some(host_id.clone()),
            limit: 100,
            ..LoginFilter::default()
        })
        .await
        .unwrap();
    let ip = pseudonyms.pseudonym("ip", "192.0.2.7");
    let user = pseudonyms.pseudonym("user", "root");
    let (old_rows, new_rows): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.cursor < 6000);
    assert_eq!((old_rows.len(), new_rows.len()), (10, 5));
    for r in old_rows {
        assert_eq!(
            (r.source_ip.as_str(), r.user.as_str()),
            (ip.as_str(), user.as_str())
        );
    }
    for r in new_rows {
        assert_eq!(
            (r.source_ip.as_str(), r.user.as_str()),
            ("192.0.2.7", "root")
        );
    }
    let drift = store.drift_events(&host_id, 100).await.unwrap();
    assert_eq!(
        drift.iter().map(|d| d.user.as_str()).collect::<Vec<_>>(),
        ["kept"]
    );
    // A second sweep has nothing left to do.
    assert_eq!(sweep().await, keyward_server::retention::Swept::default());

    let verdict = store.verify_audit_chain().await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    let logins_audited = cp
        .admin_get("/api/v1/admin/audit?action=host.logins")
        .await
        .json();
    assert_eq!(
        logins_audited["events"].as_array().unwrap().len(),
        1,
        "{logins_audited}"
    );
}

#[tokio::test]
async fn retention_deletes_old_rows_only_sqlite() {
    retention_deletes_old_rows_only(Database::Sqlite).await;
}

#[tokio::test]
async fn retention_deletes_old_rows_only_postgres() {
    retention_deletes_old_rows_only(Database::Postgres).await;
}
