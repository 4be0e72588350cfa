//! The scale benchmarks' smoke modes still run end to end (real OpenBao, the control plane,
//! agents): `streams` (the control plane in a child process holding 3 streams), `fanout`
//! (rotate-all of 3 Ed25519 tenants to their connected hosts) and `propagation` with the control
//! plane in a child process (as 10,000 agents run it), `live-hosts` (3 then 6 hosts, 3 admin
//! streams), and `replicas` (three replica processes on a PostgreSQL schema: 6 agents spread
//! over them, then a storm of 6 agents with one replica killed). Timings are not checked.

#![allow(clippy::unwrap_used)]

use keyward_bench::{fanout, live_hosts, replicas, streams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_smoke_measures_the_control_plane_apart_from_the_agents() {
    // The child process is this test binary's sibling, keyward-bench: cargo builds it for
    // integration tests and names it in CARGO_BIN_EXE_keyward-bench.
    let options = streams::Options {
        control_plane_exe: Some(env!("CARGO_BIN_EXE_keyward-bench").into()),
        ..streams::Options::smoke()
    };
    let report = streams::run(&options).await.unwrap();
    assert_eq!(report.agents_connected, 3, "{:?}", report.stopped_by);
    assert!(report.rss_before > 0);
    assert!(report.rss_samples.last().is_some_and(|s| s.agents == 3));
    assert!(report.cpu_idle.seconds >= 1.0);
    let section = streams::markdown(&report, "keyward-bench streams --smoke");
    assert!(section.contains("| 3 of 3 |"), "{section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_smoke_rotates_every_tenant_and_sees_every_acknowledgement() {
    let options = fanout::Options {
        control_plane_exe: Some(env!("CARGO_BIN_EXE_keyward-bench").into()),
        ..fanout::Options::smoke()
    };
    let report = fanout::run(&options).await.unwrap();
    assert_eq!(report.agents_connected, 3, "{:?}", report.stopped_by);
    let alone = report.alone.as_ref().unwrap();
    assert_eq!((alone.rotated, alone.failed), (3, 0));
    let job = report.fanout.as_ref().unwrap();
    assert_eq!((job.rotated, job.failed), (3, 0));
    assert_eq!((job.in_sync, job.live), (3, 3));
    assert!(
        job.last_ack_s.is_some() && job.all_recorded_s.is_some(),
        "{job:?}"
    );
    // Both users' files on each of the 3 hosts.
    assert!(job.renames >= 6, "{job:?}");
    let section = fanout::markdown(&report, "keyward-bench fanout --smoke");
    assert!(section.contains("| 3 / 0 |"), "{section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_smoke_with_the_control_plane_in_its_own_process() {
    let options = keyward_bench::propagation::Options {
        separate_control_plane: Some(true),
        control_plane_exe: Some(env!("CARGO_BIN_EXE_keyward-bench").into()),
        ..keyward_bench::propagation::Options::smoke()
    };
    let report = keyward_bench::propagation::run(&options).await.unwrap();
    assert!(report.separate_control_plane);
    assert_eq!(report.agents_connected, 2, "{:?}", report.stopped_by);
    assert_eq!((report.propagation_ms.len(), report.lost), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_hosts_smoke_grows_the_fleet_and_sends_only_changed_hosts() {
    let options = live_hosts::Options {
        control_plane_exe: Some(env!("CARGO_BIN_EXE_keyward-bench").into()),
        ..live_hosts::Options::smoke()
    };
    let report = live_hosts::run(&options, false).await.unwrap();
    let [run] = &report.runs[..] else {
        panic!("one control plane without --before-exe")
    };
    assert_eq!(run.stopped_by, None);
    let sizes: Vec<(usize, usize)> = run.fleets.iter().map(|f| (f.hosts, f.connected)).collect();
    assert_eq!(sizes, [(3, 3), (6, 6)]);
    for fleet in &run.fleets {
        assert_eq!(fleet.streams_open, 3);
        assert!(fleet.snapshot_bytes > 0);
        let changes: u64 = fleet.samples.iter().map(|s| s.changes).sum();
        let views: u64 = fleet.samples.iter().map(|s| s.views_received).sum();
        assert!(changes > 0);
        // Never the table again: at most one host view per change (a late delta may fall
        // after its case).
        assert!(views <= changes, "{views} host views for {changes} changes");
    }
    let section = live_hosts::markdown(&report, "keyward-bench live-hosts --smoke");
    assert!(section.contains("| 6 (6) | 2 changes/s |"), "{section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_smoke_propagates_across_replicas_and_survives_a_killed_one() {
    let options = replicas::Options {
        control_plane_exe: Some(env!("CARGO_BIN_EXE_keyward-bench").into()),
        ..replicas::Options::smoke()
    };
    let report = replicas::run(&options).await.unwrap();
    let setup = report.across_setup.as_ref().unwrap();
    assert_eq!(setup.stopped_by, None);
    // Host i on replica i mod 3: two each.
    assert_eq!(setup.placement, [2, 2, 2]);
    let across = report.across.as_ref().unwrap();
    for path in [&across.other, &across.own] {
        assert_eq!((path.propagation_ms.len(), path.lost), (3, 0), "{path:?}");
    }
    let storm = report.storm.as_ref().unwrap();
    assert_eq!(storm.agents, 6);
    assert_eq!(storm.back_s.len(), storm.victims, "{storm:?}");
    assert!(storm.all_in_sync_s.is_some(), "{storm:?}");
    assert_eq!(storm.synced_at_end, (6, 6));
    assert!(
        storm.victims >= 2,
        "the busiest replica is killed: {storm:?}"
    );
    assert_eq!(
        storm.placement_after[storm.victim], 0,
        "nothing streams to the killed replica"
    );
    assert_eq!(storm.survivors_dropped, 0);
    assert_eq!(
        storm.change_reached_s.len(),
        storm.changes,
        "every rotation made during the storm reached its host"
    );
    assert!(!storm.rest_before.ms.is_empty() && storm.rest_before.errors == 0);
    let section = replicas::markdown(&report, "keyward-bench replicas --smoke");
    assert!(
        section.contains("### Reconnection storm: 6 agents"),
        "{section}"
    );
}
