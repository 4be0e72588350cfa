//! The revocation benchmark's smoke mode still runs end to end: OpenBao, the control plane,
//! Debian's sshd, real Unix users and the real `keyward-agent` binary (the debug build `make
//! test` makes first, or `KEYWARD_AGENT_BIN`), as root. Only that it ran and produced numbers is
//! checked: timings are not (a benchmark, kept working by the test suite).

#![allow(clippy::unwrap_used)]

use keyward_bench::revocation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_smoke_times_both_cases_and_the_chmod_loop() {
    let options = revocation::Options::smoke();
    let report = revocation::run(&options).await.unwrap();
    // Numbers, not their values: under the stall a session may outlive the round's deadline
    // (a lost round, which the report counts).
    for case in [&report.plain, &report.stall] {
        assert_eq!(case.rounds.len(), options.rounds, "{case:?}");
        assert!(case.call().is_some() && case.file().is_some(), "{case:?}");
    }
    assert!(report.plain.both().is_some(), "{:?}", report.plain);
    assert_eq!(report.attack.connections, options.connections);
    assert!(report.attack.log_lines > 0, "{:?}", report.attack);
    assert!(report.chmod.chmods > 0, "{:?}", report.chmod);
    assert!(report.chmod.seconds > 0.0, "{:?}", report.chmod);
    assert!(report.chmod.agent_cpu_seconds >= 0.0, "{:?}", report.chmod);
    let text = revocation::markdown(&report, &options.command(None));
    assert!(text.starts_with("## Revocation"), "{text}");
    assert!(text.contains("| plain | 3 |"), "{text}");
}
