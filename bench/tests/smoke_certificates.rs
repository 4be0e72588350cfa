//! The certificates benchmark's smoke mode still runs end to end: OpenBao's SSH engine signing
//! through `VaultStore`, a small KRL encoded, applied and read by `ssh-keygen -Q`, and (as root)
//! certificate logins into Debian's sshd. Only that it ran and produced numbers is checked.

#![allow(clippy::unwrap_used)]

use keyward_bench::certificates;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_smoke_signs_encodes_applies_and_logs_in() {
    let options = certificates::Options::smoke();
    let report = certificates::run(&options).await.unwrap();
    assert_eq!(report.rates.len(), 2 * options.concurrency.len());
    for rate in &report.rates {
        assert_eq!(
            rate.latencies.len(),
            options.calls * options.rounds,
            "{rate:?}"
        );
        assert!(rate.per_second() > 0.0, "{rate:?}");
    }
    assert_eq!(report.krls.len(), options.mixes.len());
    for krl in &report.krls {
        assert!(krl.bytes > 0, "{krl:?}");
        assert_eq!(krl.query.len(), options.queries, "{krl:?}");
    }
    if let Some(logins) = &report.logins {
        for l in logins {
            assert_eq!(l.ok.len(), options.logins, "{l:?}");
        }
    }
    let text = certificates::markdown(&report, &options.command(None));
    assert!(text.starts_with("## Certificates and KRLs"), "{text}");
}
