//! The audit export benchmark's smoke mode still runs end to end: rsyslogd over TLS, the HTTPS
//! endpoint and a file each receive every event, and rotate calls are timed with and without
//! sinks. Only that it ran and produced numbers is checked.

#![allow(clippy::unwrap_used)]

use keyward_bench::audit_export;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_smoke_delivers_to_each_sink_and_times_rotations() {
    let options = audit_export::Options::smoke();
    let report = audit_export::run(&options).await.unwrap();
    assert_eq!(report.sinks.len(), 4);
    for sink in &report.sinks {
        assert!(sink.events >= options.events, "{sink:?}");
        assert!(sink.seconds > 0.0, "{sink:?}");
    }
    assert_eq!(report.without_sinks.len(), options.rotations);
    assert_eq!(report.with_sinks.len(), options.rotations);
    let text = audit_export::markdown(&report, None);
    assert!(text.contains("syslog-tls-keyward"), "{text}");
}
