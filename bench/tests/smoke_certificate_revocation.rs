//! The certificate revocation benchmark's smoke mode still runs end to end: OpenBao's SSH engine
//! as the CA, the control plane, Debian's sshd, real Unix users, the real `keyward-agent` binary
//! (the debug build, or `KEYWARD_AGENT_BIN`) and 19 in-process agents of the same tenant, as
//! root. Only that it ran and produced numbers is checked: every round's certificate logged in,
//! was refused after its revocation (sshd said why), and reached every other host. Timings are
//! not checked (a benchmark, kept working by the test suite).

#![allow(clippy::unwrap_used)]

use keyward_bench::certificate_revocation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_revocation_smoke_refuses_the_revoked_certificate_with_1_and_20_agents() {
    let options = certificate_revocation::Options::smoke();
    let report = certificate_revocation::run(&options).await.unwrap();
    for (case, rounds, agents) in [
        (&report.one, options.rounds_one, 1),
        (&report.many, options.rounds_many, options.agents),
    ] {
        assert_eq!(case.agents, agents, "{case:?}");
        assert_eq!(case.rounds.len(), rounds, "{case:?}");
        assert_eq!(case.lost(), 0, "{case:?}");
        for r in &case.rounds {
            assert!(r.confirmed && r.file_ms.is_some(), "{r:?}");
            assert!(r.first_refused_start_ms.is_some(), "{r:?}");
            assert_eq!(r.accepted_after_file, 0, "{r:?}");
            assert!(r.sshd_revoked_lines > 0, "{r:?}");
            assert_eq!(r.others_written, case.others, "{r:?}");
        }
        assert!(
            case.refused().is_some() && case.file().is_some(),
            "{case:?}"
        );
    }
    assert!(report.many.others_last().is_some(), "{:?}", report.many);
    let text = certificate_revocation::markdown(&report, &options.command(None));
    assert!(
        text.starts_with("## Certificate revocation: REST revoke"),
        "{text}"
    );
    assert!(text.contains("| 1 | 2 | 0 |"), "{text}");
    assert!(text.contains("| 20 | 1 | 0 |"), "{text}");
    assert!(text.contains("| EC2 Instance Connect |"), "{text}");
}
