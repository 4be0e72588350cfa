//! The binary's exit codes and messages when it cannot start.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward-agent"))
        .args(args)
        .env_remove("KEYWARD_ENROLL_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_configuration_is_exit_1_with_its_path() {
    let (code, err) = agent(&["run", "--config", "/nonexistent/keyward/agent.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "keyward-agent: cannot read the configuration /nonexistent/keyward/agent.toml"
        ),
        "{err}"
    );
}

#[test]
fn an_unknown_configuration_key_is_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[[users]]\nname = \"a\"\nmode = \"preserve\"\nlog_file = \"x\"\n",
    )
    .unwrap();
    let (code, err) = agent(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `log_file`"), "{err}");
}

#[test]
fn running_before_enrollment_says_how_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[[users]]\nname = \"kwadmin\"\nmode = \"exclusive\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let (code, err) = agent(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "keyward-agent: not enrolled: run keyward-agent enroll --server URL --token T"
        ),
        "{err}"
    );
}

#[test]
fn plain_http_enrollment_to_a_remote_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = agent(&[
        "enroll",
        "--server",
        "http://192.0.2.10",
        "--token",
        "t",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("keyward-agent: refusing plain http:// to 192.0.2.10"),
        "{err}"
    );
}
