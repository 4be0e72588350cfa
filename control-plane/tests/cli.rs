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
