//! The propagation benchmark's smoke mode still runs end to end: real OpenBao (`make test-deps`
//! installs it; `KEYWARD_BAO` names another binary), the control plane and two in-process agents.
//! Timings are not checked: this is a benchmark, kept working by the test suite.

#![allow(clippy::unwrap_used)]

use keyward_bench::propagation::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_mode_times_five_rotations() {
    let options = Options::smoke();
    let report = run(&options).await.unwrap();
    assert_eq!(report.agents_connected, 2, "{:?}", report.stopped_by);
    assert_eq!(report.propagation_ms.len(), 5, "lost: {}", report.lost);
    assert_eq!(report.lost, 0);
    let table = keyward_bench::report::propagation_stdout(&[report]);
    assert!(table.contains("| 1 | 2 of 2 | 5 | 0 |"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_benchmark_stores_every_event_on_both_backends() {
    for database in [
        keyward_tests::Database::Sqlite,
        keyward_tests::Database::Postgres,
    ] {
        let result = keyward_bench::ingest::run(database, 120, 50).await.unwrap();
        assert_eq!(result.events, 120);
        let table = keyward_bench::ingest::markdown(&[result]);
        assert!(table.contains("| 120 | 50 |"), "{table}");
    }
}
