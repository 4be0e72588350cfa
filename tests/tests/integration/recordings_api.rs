//! Session recordings on the control plane's side (#19): a real tlog recording sent in chunks
//! over a raw agent stream is acknowledged, stored once, tied to its login, listed, converted to
//! asciicast, and its SHA-256 is in the verified audit chain; a gap, a bad id, an oversized or
//! malformed chunk ends the stream; a recording past `max_bytes` is truncated, not lost in
//! silence; a tenant sees only its own; the recording policy reaches the hosts' desired state.

use keyward_common::proto::{
    ControlMessage, DesiredState, Hello, LoginBatch, LoginEvent, LoginMethod, LoginOutcome,
    RecordingChunk, agent_message, control_message,
};
use keyward_tests::control_plane::Options;
use keyward_tests::{ControlPlane, Database, OpenBao, RawIdentity, RawStream, unique_tenant};
use prost::Message;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A real recording made with Debian's tlog (two messages: see the converter's tests).
pub(crate) const SESSION: &[u8] =
    include_bytes!("../../../control-plane/src/recordings/session.tlog.jsonl");

const IP: &str = "192.0.2.9";
const PORT: u32 = 40_123;

pub(crate) fn chunk(id: &str, seq: u64, data: &[u8], last: bool) -> RecordingChunk {
    RecordingChunk {
        recording_id: id.into(),
        seq,
        user: "kwadmin".into(),
        source_ip: IP.into(),
        source_port: PORT,
        started_at: "2026-12-07T10:00:01Z".into(),
        data: data.to_vec(),
        last,
        ended_at: if last {
            "2026-12-07T10:00:09Z".into()
        } else {
            String::new()
        },
        dropped_bytes: 0,
        input: false,
    }
}

pub(crate) async fn acked(stream: &mut RawStream, msg: RecordingChunk) -> (String, u64) {
    stream.send(agent_message::Msg::Recording(msg)).await;
    stream
        .next_matching(|m| match m.msg {
            Some(control_message::Msg::RecordingAck(a)) => Some((a.recording_id, a.seq)),
            _ => None,
        })
        .await
}

/// The next desired state sent on the stream, decoded.
async fn next_state(stream: &mut RawStream) -> DesiredState {
    stream
        .next_matching(|m: ControlMessage| match m.msg {
            Some(control_message::Msg::State(signed)) => {
                Some(DesiredState::decode(signed.state.as_slice()).unwrap())
            }
            _ => None,
        })
        .await
}

fn recording_of(state: &DesiredState, user: &str) -> Option<bool> {
    state
        .users
        .iter()
        .find(|u| u.user == user)
        .unwrap()
        .recording
        .map(|r| r.input)
}

/// Sends `msg` on a fresh stream and returns the status the stream ended with.
async fn refused(host: &RawIdentity, cp: &ControlPlane, msg: RecordingChunk) -> tonic::Status {
    let mut stream = host.open(cp).await;
    stream.send(agent_message::Msg::Recording(msg)).await;
    stream.ended().await.expect("the stream ends with a status")
}

fn small_limits(config: &mut keyward_server::config::Config) {
    config.recordings.max_bytes = 1024 * 1024;
}

async fn a_recording_is_stored_once_played_and_hashed_in_the_audit_chain(database: Database) {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_with(
        &bao,
        Options {
            database,
            algorithm: keyward_common::KeyAlgorithm::Ed25519,
            configure: Some(small_limits),
            ..Options::default()
        },
    )
    .await;
    let tenant = unique_tenant("rec");
    let created = cp.create_tenant(&tenant).await;
    let other = unique_tenant("recother");
    cp.create_tenant(&other).await;
    let admin_fp = created["sshKeys"]["adminSsh"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let host = RawIdentity::enroll(&cp, &tenant).await;
    let mut stream = host.open(&cp).await;

    // The default policy: the admin user recorded without keystrokes, the tenant user not.
    let state = next_state(&mut stream).await;
    assert_eq!(recording_of(&state, "kwadmin"), Some(false));
    assert_eq!(recording_of(&state, "tenant"), None);

    // The login the session belongs to.
    let login = LoginEvent {
        cursor: 1,
        at: "2026-12-07T10:00:00Z".into(),
        outcome: LoginOutcome::Accepted.into(),
        method: LoginMethod::Publickey.into(),
        user: "kwadmin".into(),
        source_ip: IP.into(),
        source_port: PORT,
        key_type: "ED25519".into(),
        fingerprint: admin_fp.clone(),
        verified: true,
        ..LoginEvent::default()
    };
    stream
        .send(agent_message::Msg::Logins(LoginBatch {
            events: vec![login.clone()],
            dropped: 0,
        }))
        .await;
    stream
        .next_matching(|m| matches!(m.msg, Some(control_message::Msg::LoginAck(_))).then_some(()))
        .await;

    // The real recording in two chunks, one tlog message each; the first sent twice, as after
    // a reconnect.
    let split = SESSION.iter().position(|b| *b == b'\n').unwrap() + 1;
    let (first, second) = SESSION.split_at(split);
    assert_eq!(
        acked(&mut stream, chunk("s-1", 0, first, false)).await,
        ("s-1".into(), 0)
    );
    assert_eq!(
        acked(&mut stream, chunk("s-1", 0, first, false)).await,
        ("s-1".into(), 0)
    );
    assert_eq!(
        acked(&mut stream, chunk("s-1", 1, second, true)).await,
        ("s-1".into(), 1)
    );
    // The last chunk again: acknowledged, nothing changes.
    assert_eq!(
        acked(&mut stream, chunk("s-1", 1, second, true)).await,
        ("s-1".into(), 1)
    );

    let list = cp
        .admin_get(&format!("/api/v1/admin/recordings?hostId={}", host.host_id))
        .await;
    assert_eq!(list.status, 200, "{}", list.text());
    let recordings = list.json()["recordings"].as_array().unwrap().clone();
    assert_eq!(recordings.len(), 1, "stored once: {recordings:?}");
    let rec = &recordings[0];
    let sha = hex::encode(Sha256::digest(SESSION));
    assert_eq!(rec["state"], "complete");
    assert_eq!(rec["chunks"], 2);
    assert_eq!(rec["sizeBytes"], SESSION.len());
    assert_eq!(rec["sha256"], sha.as_str());
    assert_eq!(rec["user"], "kwadmin");
    assert_eq!(rec["userKind"], "admin");
    assert_eq!(rec["tenantId"], tenant.as_str());
    assert_eq!(
        rec["fingerprint"],
        admin_fp.as_str(),
        "tied to the key that logged in"
    );
    assert!(rec["loginId"].is_i64());
    assert_eq!(rec["truncated"], false);
    let id = rec["id"].as_str().unwrap().to_owned();

    // Filters.
    let count = |query: String| {
        let cp = &cp;
        async move {
            let reply = cp
                .admin_get(&format!("/api/v1/admin/recordings?{query}"))
                .await;
            assert_eq!(reply.status, 200, "{query}: {}", reply.text());
            reply.json()["recordings"].as_array().unwrap().len()
        }
    };
    assert_eq!(count(format!("tenantId={tenant}&user=kwadmin")).await, 1);
    assert_eq!(count(format!("tenantId={tenant}&user=tenant")).await, 0);
    assert_eq!(
        count(format!("tenantId={tenant}&since=2026-12-07T10:00:02Z")).await,
        0
    );
    assert_eq!(
        count(format!("tenantId={tenant}&until=2026-12-07T10:00:02Z")).await,
        1
    );
    assert_eq!(count(format!("tenantId={other}")).await, 0);
    for bad in ["hostId=../x", "limit=0", "since=now", "cursor=x", "x=1"] {
        let reply = cp
            .admin_get(&format!("/api/v1/admin/recordings?{bad}"))
            .await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
    }

    // The tenant plays its VPS's admin session as asciicast v2.
    let own = cp.tenant_token(&tenant).await;
    let theirs = cp.tenant_token(&other).await;
    let get = |token: &str, path: String| {
        let cp = &cp;
        let token = token.to_owned();
        async move { cp.request(Method::GET, &path, Some(&token), None).await }
    };
    let mine = get(&own, "/api/v1/tenant/infrastructure/recordings".into()).await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    assert_eq!(mine.json()["recordings"][0]["id"], id.as_str());
    let cast = get(
        &own,
        format!("/api/v1/tenant/infrastructure/recordings/{id}/asciicast"),
    )
    .await;
    assert_eq!(cast.status, 200, "{}", cast.text());
    assert_eq!(cast.header("content-type"), Some("application/x-asciicast"));
    let text = cast.text();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let output: String = lines
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap().to_owned())
        .collect();
    let (hello, twelve, done) = (
        output.find("hello").unwrap(),
        output.find("line 12 of the recorded session").unwrap(),
        output.find("done").unwrap(),
    );
    assert!(
        hello < twelve && twelve < done,
        "played in order: {output:?}"
    );
    let admin_cast = cp
        .admin_get(&format!("/api/v1/admin/recordings/{id}/asciicast"))
        .await;
    assert_eq!(admin_cast.body, cast.body);

    // The tenant's data export (GDPR art. 15) lists it; the other tenant's does not.
    let export = get(&own, "/api/v1/tenant/infrastructure/data-export".into()).await;
    assert_eq!(export.status, 200, "{}", export.text());
    let exported: Vec<Value> = export
        .text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["record"] == "sessionRecording")
        .collect();
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["id"], id.as_str());
    assert_eq!(exported[0]["sha256"], rec["sha256"]);
    let theirs_export = get(&theirs, "/api/v1/tenant/infrastructure/data-export".into()).await;
    assert!(!theirs_export.text().contains("sessionRecording"));

    // Another tenant: a 404, as if it did not exist.
    for path in [
        format!("/api/v1/tenant/infrastructure/recordings/{id}"),
        format!("/api/v1/tenant/infrastructure/recordings/{id}/asciicast"),
    ] {
        get(&theirs, path)
            .await
            .assert_problem(404, "recording_not_found");
    }
    let none = get(&theirs, "/api/v1/tenant/infrastructure/recordings".into()).await;
    assert_eq!(none.json()["recordings"].as_array().unwrap().len(), 0);
    cp.admin_get("/api/v1/admin/recordings/rec_00000000000000000000000000000000")
        .await
        .assert_problem(404, "recording_not_found");
    cp.admin_get("/api/v1/admin/recordings/..%2Fx")
        .await
        .assert_problem(400, "invalid_query");

    // The hash is in the audit chain, which verifies.
    let events = cp
        .admin_get("/api/v1/admin/audit?action=session.recording.completed")
        .await
        .json();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["detail"]["sha256"], sha.as_str());
    assert_eq!(events[0]["detail"]["recordingId"], id.as_str());
    assert_eq!(events[0]["detail"]["sizeBytes"], SESSION.len());
    assert_eq!(
        cp.admin_get("/api/v1/admin/audit/verify").await.json()["ok"],
        true
    );

    // Past max_bytes (1 MiB here): acknowledged, counted, not kept; the recording says so.
    let line = format!("{{\"out_txt\":\"{}\"}}\n", "x".repeat(1000));
    let big: String = std::iter::repeat_n(line.as_str(), 250).collect();
    for seq in 0..5 {
        assert_eq!(
            acked(&mut stream, chunk("s-big", seq, big.as_bytes(), seq == 4))
                .await
                .1,
            seq
        );
    }
    let page = cp
        .admin_get(&format!("/api/v1/admin/recordings?hostId={}", host.host_id))
        .await;
    let page = page.json();
    let big_rec = page["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["chunks"] == 5)
        .unwrap()
        .clone();
    assert_eq!(big_rec["truncated"], true);
    assert_eq!(big_rec["sizeBytes"], 4 * big.len());
    assert_eq!(big_rec["droppedBytes"], big.len());
    // A recording whose login has not arrived yet (the agent sends both as they come): the
    // login, when it does, ties the recording of its connection to its key.
    let late = RecordingChunk {
        source_port: PORT + 1,
        ..chunk("s-late", 0, first, true)
    };
    assert_eq!(acked(&mut stream, late).await, ("s-late".into(), 0));
    let page_of_host = format!("/api/v1/admin/recordings?hostId={}", host.host_id);
    let of_late = || {
        let (cp, page_of_host) = (&cp, &page_of_host);
        async move {
            let page = cp.admin_get(page_of_host).await.json();
            page["recordings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["recordingId"] == "s-late")
                .unwrap()
                .clone()
        }
    };
    assert!(of_late().await["loginId"].is_null());
    stream
        .send(agent_message::Msg::Logins(LoginBatch {
            events: vec![LoginEvent {
                cursor: 2,
                at: "2026-12-07T10:00:03Z".into(),
                source_port: PORT + 1,
                ..login.clone()
            }],
            dropped: 0,
        }))
        .await;
    stream
        .next_matching(|m| matches!(m.msg, Some(control_message::Msg::LoginAck(_))).then_some(()))
        .await;
    let tied = of_late().await;
    assert_eq!(tied["fingerprint"], admin_fp.as_str(), "{tied}");
    assert!(
        tied["loginId"].is_i64() && tied["loginId"] != rec["loginId"],
        "{tied}"
    );

    // Refused, each ending its stream: a gap, a bad id, a user not managed here, a chunk over
    // 256 KiB, data that is not whole JSON lines, a chunk after the last.
    let bad_user = RecordingChunk {
        user: "root".into(),
        ..chunk("s-2", 0, first, false)
    };
    let oversized: String = std::iter::repeat_n(line.as_str(), 270).collect();
    for (what, msg) in [
        ("gap", chunk("s-3", 1, first, false)),
        ("bad id", chunk("../etc", 0, first, false)),
        ("user", bad_user),
        ("oversized", chunk("s-4", 0, oversized.as_bytes(), false)),
        ("half a line", chunk("s-5", 0, b"{\"id\":1}", false)),
        ("after the last", chunk("s-1", 2, first, false)),
    ] {
        let status = refused(&host, &cp, msg).await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
    }
    let after = cp
        .admin_get(&format!("/api/v1/admin/recordings?hostId={}", host.host_id))
        .await;
    assert_eq!(
        after.json()["recordings"].as_array().unwrap().len(),
        3,
        "nothing refused was kept"
    );

    // The policy: admins set it, the tenant reads it, the hosts get it.
    let mut stream = host.open(&cp).await;
    next_state(&mut stream).await;
    let policy_path = format!("/api/v1/admin/tenants/{tenant}/recording-policy");
    let body = json!({ "recordAdmin": false, "recordTenant": true, "recordInput": true });
    let reply = cp
        .request(Method::PUT, &policy_path, Some(&own), Some(body.clone()))
        .await;
    reply.assert_problem(403, "forbidden");
    let reply = cp
        .request(Method::PUT, &policy_path, Some(&theirs), Some(body.clone()))
        .await;
    reply.assert_problem(404, "tenant_not_found");
    let reply = cp
        .request(Method::PUT, &policy_path, Some(&cp.admin_token), Some(body))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let state = next_state(&mut stream).await;
    assert_eq!(recording_of(&state, "kwadmin"), None);
    assert_eq!(recording_of(&state, "tenant"), Some(true));
    let read = get(
        &own,
        "/api/v1/tenant/infrastructure/recording-policy".into(),
    )
    .await
    .json();
    assert_eq!(read["recordTenant"], true);
    assert_eq!(read["recordAdmin"], false);
    assert_eq!(read["recordInput"], true);

    // A host whose agent records says so in its hello; the host view shows it.
    let view = cp
        .admin_get(&format!("/api/v1/admin/hosts/{}", host.host_id))
        .await
        .json();
    assert_eq!(view["recording"], false);
    stream
        .send(agent_message::Msg::Hello(Hello {
            recording: true,
            ..Hello::default()
        }))
        .await;
    // Retention: a sweep 91 days on deletes the three recordings, objects and rows, audited.
    let lifecycle = &cp.server().lifecycle;
    let directory = cp.config().server.state_dir.join("recordings");
    let archive = keyward_server::recordings::RecordingArchive::directory(&directory).unwrap();
    let stored = directory.join("recordings").join(&host.host_id);
    assert!(
        stored.join("s-1").is_dir(),
        "the chunks are in the directory store"
    );
    let later = lifecycle.now() + chrono::TimeDelta::days(91);
    let kept = std::time::Duration::from_secs(90 * 86_400);
    let swept = keyward_server::recordings::retention::sweep(lifecycle, &archive, kept, later)
        .await
        .unwrap();
    assert_eq!(swept, 3);
    assert!(!stored.join("s-1").exists() && !stored.join("s-big").exists());
    cp.admin_get(&format!("/api/v1/admin/recordings/{id}"))
        .await
        .assert_problem(404, "recording_not_found");
    let deleted = cp
        .admin_get("/api/v1/admin/audit?action=session.recording.deleted")
        .await
        .json();
    let deleted = deleted["events"].as_array().unwrap();
    assert_eq!(deleted.len(), 3);
    assert!(
        deleted
            .iter()
            .any(|e| e["detail"]["sha256"] == sha.as_str())
    );
    assert_eq!(
        cp.admin_get("/api/v1/admin/audit/verify").await.json()["ok"],
        true
    );

    let view_path = format!("/api/v1/admin/hosts/{}", host.host_id);
    keyward_tests::eventually(
        "the host view shows that the agent records",
        std::time::Duration::from_secs(10),
        || async { (cp.admin_get(&view_path).await.json()["recording"] == true).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn sqlite_a_recording_is_stored_once_played_and_hashed_in_the_audit_chain() {
    a_recording_is_stored_once_played_and_hashed_in_the_audit_chain(Database::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_recording_is_stored_once_played_and_hashed_in_the_audit_chain() {
    a_recording_is_stored_once_played_and_hashed_in_the_audit_chain(Database::Postgres).await;
}
