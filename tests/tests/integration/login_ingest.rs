//! The control plane's side of the login audit: batches stored once, attributed to keys,
//! acknowledged, listed with filters, and summed up per key.

use keyward_common::proto::{
    LoginBatch, LoginEvent, LoginMethod, LoginOutcome, agent_message, control_message,
};
use keyward_tests::{ControlPlane, Database, OpenBao, RawIdentity, unique_tenant};
use reqwest::Method;

fn login(cursor: u64, outcome: LoginOutcome, user: &str, fingerprint: &str) -> LoginEvent {
    LoginEvent {
        cursor,
        at: "2026-11-28T10:00:00Z".into(),
        outcome: outcome.into(),
        method: LoginMethod::Publickey.into(),
        user: user.into(),
        source_ip: "192.0.2.7".into(),
        source_port: 50_000 + cursor as u32,
        key_type: "ED25519".into(),
        fingerprint: fingerprint.into(),
        sshd_pid: 4242,
        verified: true,
        ..LoginEvent::default()
    }
}

async fn logins_are_stored_once_and_attributed(database: Database) {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, database).await;
    let tenant = unique_tenant("logins");
    let created = cp.create_tenant(&tenant).await;
    let other = unique_tenant("other");
    cp.create_tenant(&other).await;
    let tenant_fp = created["sshKeys"]["tenantSsh"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_fp = created["sshKeys"]["adminSsh"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let stranger =
        keyward_common::GeneratedKey::generate(keyward_common::KeyAlgorithm::Ed25519, "x").unwrap();
    let host = RawIdentity::enroll(&cp, &tenant).await;
    let mut stream = host.open(&cp).await;

    let batch = LoginBatch {
        events: vec![
            login(1, LoginOutcome::Accepted, "tenant", &tenant_fp),
            login(2, LoginOutcome::Accepted, "kwadmin", &admin_fp),
            login(3, LoginOutcome::Failed, "tenant", &tenant_fp),
            login(
                4,
                LoginOutcome::Accepted,
                "tenant",
                stranger.fingerprint().as_str(),
            ),
            LoginEvent {
                method: LoginMethod::Password.into(),
                key_type: String::new(),
                fingerprint: String::new(),
                verified: false,
                ..login(5, LoginOutcome::InvalidUser, "root", "")
            },
        ],
        dropped: 3,
    };
    for _ in 0..2 {
        // Sent twice, as after a reconnect: stored once, acknowledged both times.
        stream.send(agent_message::Msg::Logins(batch.clone())).await;
        let acked = stream
            .next_matching(|m| match m.msg {
                Some(control_message::Msg::LoginAck(ack)) => Some(ack.cursor),
                _ => None,
            })
            .await;
        assert_eq!(acked, 5);
    }

    let page = cp
        .admin_get(&format!("/api/v1/admin/audit/logins?tenantId={tenant}"))
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let events = page.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 5, "no duplicates");
    let by_cursor = |c: i64| events.iter().find(|e| e["cursor"] == c).unwrap().clone();
    assert_eq!(by_cursor(1)["keyKind"], "tenant");
    assert_eq!(by_cursor(1)["keyGeneration"], 1);
    assert_eq!(by_cursor(1)["hostId"], host.host_id.as_str());
    assert_eq!(by_cursor(1)["sourceIp"], "192.0.2.7");
    assert_eq!(by_cursor(2)["keyKind"], "admin");
    assert_eq!(by_cursor(3)["outcome"], "failed");
    assert_eq!(by_cursor(4)["keyKind"], "unmanaged");
    assert!(by_cursor(5)["keyKind"].is_null());
    assert_eq!(by_cursor(5)["method"], "password");
    assert_eq!(by_cursor(1)["verified"], true);
    assert_eq!(by_cursor(5)["verified"], false);

    // Filters.
    let only = |query: &str| {
        let cp = &cp;
        let query = query.to_owned();
        async move {
            let reply = cp
                .admin_get(&format!("/api/v1/admin/audit/logins?{query}"))
                .await;
            assert_eq!(reply.status, 200, "{query}: {}", reply.text());
            reply.json()["events"].as_array().unwrap().len()
        }
    };
    assert_eq!(
        only(&format!("tenantId={tenant}&keyKind=unmanaged")).await,
        1
    );
    assert_eq!(
        only(&format!("tenantId={tenant}&outcome=accepted")).await,
        3
    );
    assert_eq!(
        only(&format!("hostId={}&user=kwadmin", host.host_id)).await,
        1
    );
    assert_eq!(only(&format!("tenantId={other}")).await, 0);
    assert_eq!(only("since=2026-11-28T10:00:01Z").await, 0);
    for bad in [
        "outcome=win",
        "keyKind=root",
        "user=../x",
        "hostId=../x",
        "limit=0",
        "since=now",
        "x=1",
    ] {
        cp.admin_get(&format!("/api/v1/admin/audit/logins?{bad}"))
            .await
            .assert_problem(
                400,
                if bad.starts_with("user") || bad.starts_with("hostId") {
                    "invalid_id"
                } else {
                    "invalid_query"
                },
            );
    }

    // The tenant sees its own host's logins; the other tenant sees none of them.
    let own = cp.tenant_token(&tenant).await;
    let theirs = cp.tenant_token(&other).await;
    let mine = cp
        .request(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-logins",
            Some(&own),
            None,
        )
        .await;
    assert_eq!(mine.json()["events"].as_array().unwrap().len(), 5);
    let not_mine = cp
        .request(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-logins",
            Some(&theirs),
            None,
        )
        .await;
    assert_eq!(not_mine.json()["events"].as_array().unwrap().len(), 0);

    // Usage per key, and the unmanaged key flagged.
    let usage = cp.admin_get("/api/v1/admin/keys/usage").await.json();
    let tenant_key = usage["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["fingerprint"] == tenant_fp.as_str())
        .unwrap()
        .clone();
    assert_eq!(tenant_key["logins"], 1);
    assert_eq!(tenant_key["failedAttempts"], 1);
    assert_eq!(tenant_key["lastUsed"], "2026-11-28T10:00:00Z");
    assert_eq!(tenant_key["loginsPerDay"][0]["day"], "2026-11-28");
    let flagged = usage["unmanaged"].as_array().unwrap();
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0]["fingerprint"], stranger.fingerprint().as_str());

    // The drops are counted once, though the batch came twice.
    let view = cp
        .admin_get(&format!("/api/v1/admin/hosts/{}", host.host_id))
        .await
        .json();
    assert_eq!(view["loginsDropped"], 3, "{view}");

    // A later accepted login the agent could not verify (a forged line) is stored and shown as
    // unverified, and is not the host's last login: that stays the last verified one.
    let forged = LoginEvent {
        at: "2026-11-28T11:00:00Z".into(),
        source_ip: "203.0.113.9".into(),
        verified: false,
        ..login(6, LoginOutcome::Accepted, "kwadmin", &admin_fp)
    };
    stream
        .send(agent_message::Msg::Logins(LoginBatch {
            events: vec![forged],
            dropped: 0,
        }))
        .await;
    let acked = stream
        .next_matching(|m| match m.msg {
            Some(control_message::Msg::LoginAck(ack)) => Some(ack.cursor),
            _ => None,
        })
        .await;
    assert_eq!(acked, 6);
    let page = cp
        .admin_get(&format!(
            "/api/v1/admin/audit/logins?tenantId={tenant}&user=kwadmin"
        ))
        .await
        .json();
    let stored = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cursor"] == 6)
        .unwrap()
        .clone();
    assert_eq!(stored["verified"], false, "{stored}");
    assert_eq!(stored["sourceIp"], "203.0.113.9");
    let hosts = cp.admin_get("/api/v1/admin/hosts").await.json();
    let listed = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hostId"] == host.host_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed["lastLogin"], "2026-11-28T10:00:00Z", "{listed}");

    // A login by a certificate keyward never recorded (another CA's, with a keyward-like key
    // id): stored with what sshd logged, attributed by its key, which keyward did not issue.
    let stranger_cert = LoginEvent {
        key_type: "ED25519-CERT".into(),
        certificate_id: format!("keyward:{tenant}:admin:1"),
        certificate_serial: 7,
        certificate_ca: "SHA256:someone-elses-ca".into(),
        ..login(
            7,
            LoginOutcome::Accepted,
            "tenant",
            &stranger.fingerprint().to_string(),
        )
    };
    stream
        .send(agent_message::Msg::Logins(LoginBatch {
            events: vec![stranger_cert],
            dropped: 0,
        }))
        .await;
    stream
        .next_matching(|m| match m.msg {
            Some(control_message::Msg::LoginAck(ack)) if ack.cursor == 7 => Some(()),
            _ => None,
        })
        .await;
    let page = cp
        .admin_get(&format!(
            "/api/v1/admin/audit/logins?tenantId={tenant}&user=tenant"
        ))
        .await
        .json();
    let stored = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cursor"] == 7)
        .unwrap()
        .clone();
    assert_eq!(stored["certificateId"], format!("keyward:{tenant}:admin:1"));
    assert_eq!(stored["certificateSerial"], "7");
    assert_eq!(stored["keyKind"], "unmanaged", "{stored}");

    // Each stored batch is one link of the audit chain, which still verifies.
    let batches = cp
        .admin_get("/api/v1/admin/audit?action=host.logins")
        .await
        .json();
    let batches = batches["events"].as_array().unwrap();
    assert_eq!(batches.len(), 4);
    assert!(batches.iter().any(|b| b["detail"]["new"] == 5));
    assert!(batches.iter().any(|b| b["detail"]["new"] == 0));
    assert_eq!(
        cp.admin_get("/api/v1/admin/audit/verify").await.json()["ok"],
        true
    );
}

#[tokio::test]
async fn sqlite_logins_are_stored_once_and_attributed() {
    logins_are_stored_once_and_attributed(Database::Sqlite).await;
}

#[tokio::test]
async fn postgres_logins_are_stored_once_and_attributed() {
    logins_are_stored_once_and_attributed(Database::Postgres).await;
}
