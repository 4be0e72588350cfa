//! `keyward-bench all --smoke`: the whole suite's tiny version runs, every step to the end.
//! Timings are not checked (a benchmark, kept working by the test suite). Needs what the
//! benchmarks need: root, OpenBao and PostgreSQL (`make test-deps`), the built agent.

#![allow(clippy::unwrap_used)]

#[test]
fn the_whole_suite_runs_in_smoke_mode() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward-bench"))
        .args(["all", "--smoke"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary = stdout.split("## The suite").nth(1).unwrap_or_default();
    for step in [
        "keygen",
        "rotate-all",
        "propagation",
        "fanout",
        "streams",
        "agent-idle",
        "rest",
        "revocation",
        "ingest",
        "live-hosts",
        "recording",
    ] {
        assert!(
            summary
                .lines()
                .any(|l| l.starts_with(&format!("| `{step}")) && l.contains("| done |")),
            "{step} missing or failed in:\n{summary}"
        );
    }
}
