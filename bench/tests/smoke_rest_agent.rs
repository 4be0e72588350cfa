//! The REST and idle-agent benchmarks' smoke modes still run end to end: real OpenBao, real
//! PostgreSQL, the control plane, and for the agent the real `keyward-agent` binary (the debug
//! build `make test` makes first, or `KEYWARD_AGENT_BIN`) on two real Unix users (root).
//! Timings are not checked: these are benchmarks, kept working by the test suite. The REST smoke
//! uses the built-in load generator, so it needs no wrk.

#![allow(clippy::unwrap_used)]

use keyward_bench::{agent_idle, rest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_smoke_loads_both_backends_and_openbao_without_vault_calls() {
    let options = rest::Options::smoke();
    let report = rest::run(&options).await.unwrap();
    assert_eq!(report.rounds.len(), 1);
    let targets = report.targets();
    assert_eq!(targets.len(), 3, "{targets:?}");
    for target in targets {
        let m = report.of(target);
        assert!(m[0].requests > 0, "{target:?}: {m:?}");
        assert_eq!(m[0].errors, 0, "{target:?}: {m:?}");
    }
    for (backend, (calls, lines)) in &report.vault_calls_under_load {
        assert_eq!(*calls, 0, "{backend:?} called Vault under load: {lines:?}");
    }
    let text = rest::markdown(&report, &options.command(None));
    assert!(text.contains("| keyward, SQLite | 1 |"), "{text}");
    assert!(text.contains("| keyward, PostgreSQL | 1 |"), "{text}");
    assert!(text.contains("none (0 HTTP requests"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_idle_smoke_measures_the_real_agent() {
    let options = agent_idle::Options::smoke(keyward_tests::agent::agent_binary());
    let report = agent_idle::run(&options).await.unwrap();
    assert!(report.memory_end.rss > 0, "{report:?}");
    assert!(report.memory_end.threads >= 1, "{report:?}");
    assert!(report.stripped_bytes > 0 && report.stripped_bytes <= report.binary_bytes);
    assert!(!report.wakeups_by_thread.is_empty(), "{report:?}");
    let text = agent_idle::markdown(&report, &options.command(None));
    assert!(text.contains("stripped binary"), "{text}");
}
