//! Session recording end to end: OpenBao, a control plane, Debian's sshd, real users, the real
//! agent with `[recording]`, Debian's tlog set-user-ID to `_tlog` and the package's wrapper. The
//! platform's admin types in a terminal on a tenant's VPS; the tenant finds the recording, tied to
//! the login and the key that opened it, plays it back in order as asciicast, and its hash is in
//! the audit chain, which verifies. Another tenant gets 404. A session made while the control
//! plane is down arrives once it is back.

use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::{Deployment, eventually, unique_tenant};
use reqwest::Method;
use serde_json::Value;

const RECORDINGS: &str = "/api/v1/tenant/infrastructure/recordings";

/// `GET RECORDINGS{suffix}` with a tenant's token.
async fn tenant_get(d: &Deployment, token: &str, suffix: &str) -> keyward_tests::Reply {
    d.cp.request(
        Method::GET,
        &format!("{RECORDINGS}{suffix}"),
        Some(token),
        None,
    )
    .await
}

/// The tenant's recordings, as the tenant lists them.
async fn recordings(d: &Deployment) -> Vec<Value> {
    let reply = tenant_get(d, &d.tenant_token, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["recordings"].as_array().unwrap().clone()
}

/// The first complete recording whose asciicast output shows `text`.
async fn complete_showing(d: &Deployment, text: &str) -> Option<(Value, String)> {
    for recording in recordings(d).await {
        if recording["state"] != "complete" {
            continue;
        }
        let id = recording["id"].as_str().unwrap();
        let cast = tenant_get(d, &d.tenant_token, &format!("/{id}/asciicast")).await;
        assert_eq!(cast.status, 200, "{}", cast.text());
        let output = played(&cast.text());
        if output.contains(text) {
            return Some((recording, output));
        }
    }
    None
}

/// What an asciicast v2 file shows, its output events joined in order (times never go back).
fn played(cast: &str) -> String {
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{cast}");
    let mut last = 0.0;
    let mut out = String::new();
    for line in lines {
        let event: Value = serde_json::from_str(line).unwrap();
        let at = event[0].as_f64().unwrap();
        assert!(at >= last, "time went back in {cast}");
        last = at;
        if event[1] == "o" {
            out.push_str(event[2].as_str().unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_session_on_a_vps_is_recorded_and_its_tenant_plays_it_back() {
    let mut d = Deployment::start(KeyAlgorithm::Ed25519).await;
    d.agent.kill().await;
    d.agent.record_sessions();
    d.agent.start();
    d.agent.wait_in_sync(&d.cp).await;
    // The default policy records the admin user: its key runs under the recorder.
    let admin_file = d.admin.authorized_keys();
    eventually(
        "the admin's key to carry the recorder",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&admin_file).ok()?;
            text.contains("record-session output ").then_some(())
        },
    )
    .await;
    // The restarted agent applies its cached state (which records the admin) before it
    // reconnects; the host shows it records once its new stream said so.
    eventually(
        "the host to say it records sessions",
        Duration::from_secs(20),
        || async { (d.agent.view(&d.cp).await["recording"] == true).then_some(()) },
    )
    .await;

    // The admin types on a terminal.
    let admin_key = d.admin_key_from_vault().await;
    let (sshd, key, admin) = (&d.sshd, admin_key.path.clone(), d.admin.name.to_string());
    // The session stays open until its recording is tied to its login: the agent reads sshd's
    // log file, and an accepted login read from a file counts as verified (and is tied) only
    // while its connection is live; on a loaded machine the read can come after a short
    // session's end.
    let runtime = tokio::runtime::Handle::current();
    let shown = tokio::task::block_in_place(|| {
        sshd.type_at_prompt_holding(&key, &admin, "echo typed-$((6*7))", "typed-42", || {
            runtime.block_on(eventually(
                "the open session's recording tied to its login",
                Duration::from_secs(60),
                || async {
                    recordings(&d)
                        .await
                        .iter()
                        .any(|r| !r["loginId"].is_null())
                        .then_some(())
                },
            ))
        })
    });
    assert!(shown.contains("typed-42"));

    // The tenant finds it, complete, played back in order.
    let (recording, output) = eventually(
        "the recording to reach the tenant",
        Duration::from_secs(30),
        || complete_showing(&d, "typed-42"),
    )
    .await;
    let typed = output
        .find("echo typed-$((6*7))")
        .expect("the typed command shows");
    assert!(typed < output.rfind("typed-42").unwrap(), "{output}");
    assert_eq!(recording["user"], admin.as_str());
    assert_eq!(recording["userKind"], "admin");
    assert_eq!(recording["hostId"], d.agent.host_id.as_str());
    assert_eq!(recording["inputRecorded"], false);
    assert_eq!(recording["truncated"], false);

    // Tied to the login that opened it, and so to the admin's key. The login event and the
    // recording travel apart (sshd's log, tlog's spool): the recording is tied once both are in.
    let id = recording["id"].as_str().unwrap().to_owned();
    let recording = eventually(
        "the recording tied to its login",
        Duration::from_secs(30),
        || async {
            let reply = tenant_get(&d, &d.tenant_token, &format!("/{id}")).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let recording = reply.json();
            (!recording["loginId"].is_null()).then_some(recording)
        },
    )
    .await;
    let logins =
        d.cp.admin_get(&format!(
            "/api/v1/admin/audit/logins?tenantId={}&user={admin}&outcome=accepted",
            d.tenant
        ))
        .await
        .json();
    let login = logins["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sourcePort"] == recording["sourcePort"])
        .unwrap_or_else(|| panic!("no login from the recording's port: {logins} {recording}"))
        .clone();
    assert_eq!(
        recording["fingerprint"], login["fingerprint"],
        "{recording}"
    );
    assert_eq!(login["keyKind"], "admin");
    assert_eq!(recording["loginId"], login["id"], "{recording} {login}");

    // Its hash is in the audit chain, and the chain verifies.
    let sha = recording["sha256"].as_str().unwrap().to_owned();
    let audit = d.cp.audit_of(&d.tenant).await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "session.recording.completed" && e.to_string().contains(&sha)),
        "no completion event with {sha}"
    );
    let verdict = d.cp.admin_get("/api/v1/admin/audit/verify").await.json();
    assert_eq!(verdict["ok"], true, "{verdict}");

    // Another tenant sees nothing of it.
    let other = unique_tenant("rec-other");
    d.cp.create_tenant(&other).await;
    let other_token = d.cp.tenant_token(&other).await;
    tenant_get(&d, &other_token, &format!("/{id}"))
        .await
        .assert_problem(404, "recording_not_found");
    let theirs = tenant_get(&d, &other_token, "").await.json();
    assert_eq!(theirs["recordings"], serde_json::json!([]));

    // The control plane goes away; a session is recorded meanwhile and arrives once it is back.
    d.cp.stop().await;
    let shown = tokio::task::block_in_place(|| {
        sshd.type_at_prompt(&key, &admin, "echo while-$((1+1))-away", "while-2-away")
    });
    assert!(shown.contains("while-2-away"));
    d.cp.restart().await;
    eventually(
        "the session recorded while the control plane was down",
        Duration::from_secs(60),
        || complete_showing(&d, "while-2-away"),
    )
    .await;
}
