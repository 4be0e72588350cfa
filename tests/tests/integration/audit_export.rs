//! Audit export to real receivers: Debian's rsyslogd over TLS (keyward's JSON), an HTTPS
//! endpoint that checks HMAC signatures (OCSF), and a JSON lines file. The receivers go away for
//! a while, keyward is restarted meanwhile, two replicas share the sinks; afterwards every event
//! is there exactly once after de-duplication on `seq`, in order, with a chain that verifies.

use std::collections::BTreeMap;
use std::time::Duration;

use keyward_server::audit_bundle::{EventLine, record_of};
use keyward_server::config::{
    AuditExportConfig, AuditFormat, AuditSinkConfig, SinkTarget, SyslogTransport,
};
use keyward_server::store::{GENESIS_HASH, expected_hash};
use keyward_test_support::eventually;
use keyward_tests::control_plane::{Options, TestTls};
use keyward_tests::siem::{RsyslogTls, WebhookReceiver};
use keyward_tests::{ControlPlane, Database, OpenBao, unique_tenant};
use reqwest::Method;
use serde_json::Value;

const HMAC_KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";

async fn some_changes(cp: &ControlPlane, prefix: &str) {
    let tenant = unique_tenant(prefix);
    cp.create_tenant(&tenant).await;
    cp.admin_rotate(&tenant, "tenant").await;
}

async fn head(cp: &ControlPlane) -> i64 {
    let page = cp.admin_get("/api/v1/admin/audit?limit=1").await.json();
    page["events"][0]["seq"].as_i64().unwrap()
}

async fn sinks(cp: &ControlPlane) -> BTreeMap<String, Value> {
    let answer = cp.admin_get("/api/v1/admin/audit/sinks").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

/// Every sink has confirmed every event up to the chain's head.
async fn all_delivered(cp: &ControlPlane) {
    eventually(
        "every sink to catch up",
        Duration::from_secs(60),
        || async {
            let head = head(cp).await;
            let sinks = sinks(cp).await;
            sinks
                .values()
                .all(|s| s["deliveredSeq"] == head && s["lagEvents"] == 0 && s["status"] == "ok")
                .then_some(())
        },
    )
    .await;
}

/// De-duplicates on `seq` (a re-sent event must be the same event), then checks that the events
/// are 1..=head in order and that the chain verifies from the genesis hash.
fn check_stream(name: &str, events: Vec<EventLine>, head: i64) {
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut order = Vec::new();
    let mut chain = Vec::new();
    for e in events {
        let text = serde_json::to_string(&e).unwrap();
        match seen.get(&e.seq) {
            Some(first) => assert_eq!(first, &text, "{name}: seq {} re-sent differently", e.seq),
            None => {
                seen.insert(e.seq, text);
                order.push(e.seq);
                chain.push(e);
            }
        }
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{name}: first arrivals out of order: {order:?}"
    );
    assert_eq!(
        order,
        (1..=head).collect::<Vec<_>>(),
        "{name}: not every event exactly once"
    );
    let mut prev = GENESIS_HASH.to_owned();
    for e in chain {
        let seq = e.seq;
        let (record, detail) = record_of(e);
        assert_eq!(record.prev_hash, prev, "{name}: the link of {seq}");
        assert_eq!(
            expected_hash(&record, &detail),
            record.hash,
            "{name}: the hash of {seq}"
        );
        prev = record.hash;
    }
}

#[tokio::test]
async fn every_event_reaches_each_sink_once_in_order_through_outages_and_a_restart() {
    let bao = OpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tls = TestTls::generate();
    let mut rsyslog = RsyslogTls::start(&dir.path().join("rsyslog"), &tls).await;
    let mut webhook = WebhookReceiver::start(&tls, HMAC_KEY).await;
    let key_file = dir.path().join("hmac.key");
    std::fs::write(&key_file, HMAC_KEY).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let jsonl = dir.path().join("audit.jsonl");
    let export = AuditExportConfig {
        sinks: vec![
            AuditSinkConfig {
                name: "siem".into(),
                format: AuditFormat::Keyward,
                to: SinkTarget::Syslog {
                    transport: SyslogTransport::Tls,
                    address: format!("127.0.0.1:{}", rsyslog.port),
                    server_name: Some("localhost".into()),
                    ca_file: Some(ca_file.clone()),
                    client_cert: None,
                    client_key: None,
                    facility: "authpriv".into(),
                },
            },
            AuditSinkConfig {
                name: "hook".into(),
                format: AuditFormat::Ocsf,
                to: SinkTarget::Webhook {
                    url: webhook.url(),
                    hmac_key_file: key_file,
                    ca_file: Some(ca_file),
                },
            },
            AuditSinkConfig {
                name: "ship".into(),
                format: AuditFormat::Keyward,
                to: SinkTarget::File {
                    path: jsonl.clone(),
                },
            },
        ],
        poll_interval: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(3),
        lease: Duration::from_secs(5),
        alert_after: Duration::from_secs(1),
        ..AuditExportConfig::default()
    };
    let mut cp = ControlPlane::start_with(
        &bao,
        Options {
            database: Database::Postgres,
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            audit_export: Some(export),
            ..Options::default()
        },
    )
    .await;
    let replica = cp.replica().await;
    some_changes(&cp, "siem-a").await;
    some_changes(&replica, "siem-b").await;
    all_delivered(&cp).await;

    // Both network receivers go away; the file sink is not held back by them.
    rsyslog.stop().await;
    webhook.stop().await;
    some_changes(&cp, "siem-c").await;
    some_changes(&replica, "siem-d").await;
    let failing = eventually(
        "the dead sinks to be failing",
        Duration::from_secs(30),
        || async {
            let s = sinks(&cp).await;
            let down = ["siem", "hook"]
                .iter()
                .all(|n| s[*n]["status"] == "failing" && s[*n]["lagEvents"].as_i64() > Some(0));
            (down && s["ship"]["lagEvents"] == 0).then_some(s)
        },
    )
    .await;
    for name in ["siem", "hook"] {
        let error = failing[name]["lastError"].as_str().unwrap();
        assert!(
            !error.contains("127.0.0.1") && !error.contains('/'),
            "{error}"
        );
    }
    let metrics = cp.request(Method::GET, "/metrics", None, None).await.text();
    assert!(
        metrics.contains("keyward_audit_export_failing{sink=\"siem\"} 1")
            || metrics.contains("keyward_audit_export_failing{sink=\"hook\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keyward_audit_export_lag_events{sink=\"ship\"} 0"),
        "{metrics}"
    );

    // keyward restarts while they are away; more happens after.
    cp.restart().await;
    some_changes(&cp, "siem-e").await;
    rsyslog.resume().await;
    webhook.resume().await;
    some_changes(&replica, "siem-f").await;
    all_delivered(&cp).await;
    let head = head(&cp).await;
    let verdict = cp.admin_get("/api/v1/admin/audit/verify").await.json();
    assert_eq!(verdict["ok"], true, "{verdict}");

    // rsyslog: keyward's JSON, with the seq and hash in the structured data too.
    let lines = rsyslog.lines();
    for (msgid, sd, msg) in &lines {
        let e: Value = serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
        assert_eq!(msgid, e["action"].as_str().unwrap());
        assert_eq!(
            sd,
            &format!(
                "[keyward@32473 seq=\"{}\" hash=\"{}\"]",
                e["seq"],
                e["hash"].as_str().unwrap()
            )
        );
    }
    let from_syslog = lines
        .iter()
        .map(|(_, _, msg)| serde_json::from_str::<EventLine>(msg).unwrap())
        .collect();
    check_stream("rsyslog", from_syslog, head);

    // The webhook: OCSF, signed; the keyward event under unmapped.keyward.
    let received = webhook.received.lock().unwrap();
    assert_eq!(received.bad_signatures, 0);
    assert!(received.bodies > 0);
    let ocsf: Vec<Value> = received
        .lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rotate = ocsf
        .iter()
        .find(|e| e["metadata"]["event_code"] == "key.rotate")
        .expect("a rotation");
    assert_eq!(rotate["class_uid"], 3001);
    assert_eq!(rotate["type_uid"], 300_103);
    // De-duplicated on the hash (a restore reuses sequence numbers), ordered by the sequence.
    let keyward = &rotate["unmapped"]["keyward"];
    assert_eq!(rotate["metadata"]["uid"], keyward["hash"], "{rotate}");
    assert_eq!(rotate["metadata"]["sequence"], keyward["seq"], "{rotate}");
    let created = ocsf
        .iter()
        .find(|e| e["metadata"]["event_code"] == "tenant.create")
        .expect("a tenant created");
    assert_eq!(created["class_uid"], 6003);
    let from_webhook = ocsf
        .iter()
        .map(|e| serde_json::from_value::<EventLine>(e["unmapped"]["keyward"].clone()).unwrap())
        .collect();
    check_stream("webhook", from_webhook, head);
    drop(received);

    // The file: keyward's JSON lines, owner-only.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let from_file = text
        .lines()
        .map(|l| serde_json::from_str::<EventLine>(l).unwrap())
        .collect();
    check_stream("file", from_file, head);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&jsonl).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
