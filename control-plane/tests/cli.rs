//! The `keyward-server` command line: clear messages and non-zero exits, never a panic.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn keyward_server(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyward-server"));
    command.args(args);
    for var in [
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "VAULT_CACERT",
        "KEYWARD_CONFIG",
    ] {
        command.env_remove(var);
    }
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_and_help() {
    let out = keyward_server(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("keyward-server {}", env!("CARGO_PKG_VERSION"))
    );
    let out = keyward_server(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config"), "{help}");
    assert!(help.contains("audit"), "{help}");
}

#[test]
fn bad_configuration_is_a_message_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = keyward_server(&["--config", missing.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[vault]\nadress = \"http://127.0.0.1:8200\"\n").unwrap();
    let out = keyward_server(&["--config", typo.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("adress"), "{}", stderr(&out));

    let public = dir.path().join("public.toml");
    std::fs::write(&public, "[server]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
    let out = keyward_server(&["--config", public.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));

    let out = keyward_server(&[], &[("KEYWARD_KEYS__ALGORITHM", "dsa")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("algorithm") || stderr(&out).contains("dsa"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn starting_without_vault_credentials_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = keyward_server(
        &["serve"],
        &[
            ("KEYWARD_SERVER__STATE_DIR", state.to_str().unwrap()),
            ("KEYWARD_SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("VAULT_TOKEN"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn audit_verify_on_a_fresh_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
    let out = keyward_server(&["audit", "verify"], &[("KEYWARD_DATABASE__URL", &db)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["ok"], true);
    assert_eq!(verdict["checked"], 0);

    let out = keyward_server(
        &["audit", "verify"],
        &[("KEYWARD_DATABASE__URL", "mysql://x")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unsupported database URL"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn without_a_journald_socket_logging_falls_back_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // What systemd sets for a unit whose output goes to the journal; no journald runs here.
    let out = keyward_server(
        &["serve"],
        &[
            ("JOURNAL_STREAM", "8:12345"),
            ("KEYWARD_SERVER__STATE_DIR", state.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("journald is not reachable"), "{err}");
    assert!(
        err.contains("VAULT_TOKEN"),
        "the real error still reaches stderr: {err}"
    );
}

/// A SQLite database with `n` audit events, one a minute from 2026-01-01T00:00:00Z.
fn database_with_events(dir: &std::path::Path, n: usize) -> String {
    use keyward_server::store::{NewAuditEvent, Store};
    let url = format!("sqlite://{}/k.db?mode=rwc", dir.display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::connect(&url, None).await.unwrap();
        for i in 0..n {
            let mut tx = store.begin().await.unwrap();
            tx.append_audit(&NewAuditEvent {
                at: format!("2026-01-01T00:{i:02}:00Z"),
                actor_token_id: None,
                actor_role: "system".into(),
                action: "tenant.create",
                tenant_id: None,
                outcome: "success",
                source_addr: None,
                detail: serde_json::json!({ "n": i }),
            })
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        store.close().await;
    });
    url
}

#[test]
fn an_exported_bundle_verifies_without_the_database_and_a_tampered_one_does_not() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = database_with_events(dir.path(), 10);
    let bundle = dir.path().join("audit.jsonl");
    let path = bundle.to_str().unwrap();
    let env = [("KEYWARD_DATABASE__URL", db.as_str())];
    let out = keyward_server(
        &[
            "audit",
            "export",
            "--since",
            "2026-01-01T00:02:00Z",
            "--until",
            "2026-01-01T00:07:00Z",
            "--output",
            path,
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["events"], 5);
    assert_eq!(summary["anchor"]["seq"], 2);
    assert_eq!(summary["end"]["seq"], 7);
    let mode = std::fs::metadata(&bundle).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Checked with no configuration and no database at all.
    let out = keyward_server(
        &["audit", "verify-bundle", path],
        &[("KEYWARD_DATABASE__URL", "mysql://nowhere")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (verdict["ok"].clone(), verdict["checked"].clone()),
        (true.into(), 5.into())
    );

    // The same file again is refused, not overwritten.
    let out = keyward_server(
        &[
            "audit",
            "export",
            "--since",
            "2026-01-01T00:00:00Z",
            "-o",
            path,
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot create"), "{}", stderr(&out));

    // One event edited: exit 1, the line named.
    let text = std::fs::read_to_string(&bundle).unwrap();
    std::fs::write(&bundle, text.replacen("\\\"n\\\":4", "\\\"n\\\":40", 1)).unwrap();
    let out = keyward_server(&["audit", "verify-bundle", path], &[]);
    assert_eq!(out.status.code(), Some(1));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["firstBrokenLine"], 4);
    assert_eq!(verdict["firstBrokenSeq"], 5);

    // To standard output; bad times are messages.
    let out = keyward_server(
        &["audit", "export", "--since", "2026-01-01T00:00:00Z"],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 12);
    let out = keyward_server(&["audit", "export", "--since", "yesterday"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
    let missing = dir.path().join("missing.jsonl");
    let out = keyward_server(&["audit", "verify-bundle", missing.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open"), "{}", stderr(&out));
}
