//! Login events over the agent's stream, against the in-test gRPC hub: batches of at most 500,
//! one in flight until `LoginAck`, new lines noticed through the log directory's watch, the
//! unacknowledged batch sent again after a restart (same cursors), acknowledged events never
//! again, and the count of events a full spool dropped.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod runtime_support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use keyward_agent::config::LoginsConfig;
use keyward_common::proto::agent_message::Msg;
use keyward_common::proto::{ControlMessage, LoginAck, LoginBatch, LoginOutcome, control_message};
use runtime_support::*;

/// `count` unknown-user attempts as rsyslog writes them (RFC 3339 time, pid), users
/// `u{first}`, `u{first+1}`, …
fn append_attempts(log: &Path, first: usize, count: usize) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    for i in first..first + count {
        writeln!(
            f,
            "2026-11-28T10:00:00.000001+00:00 vps1 sshd[{}]: Invalid user u{i} from 203.0.113.7 port {}",
            1000 + i,
            10000 + i
        )
        .unwrap();
        writeln!(f, "2026-11-28T10:00:00+00:00 vps1 CRON[5]: not sshd").unwrap();
    }
}

async fn next_batch(s: &mut Session) -> LoginBatch {
    loop {
        match s.recv().await {
            Msg::Logins(batch) => return batch,
            Msg::Hello(_) => {}
            other => panic!("expected a login batch, got {other:?}"),
        }
    }
}

fn ack(s: &Session, batch: &LoginBatch) {
    let cursor = batch.events.last().unwrap().cursor;
    s.to_agent
        .send(Ok(ControlMessage {
            msg: Some(control_message::Msg::LoginAck(LoginAck { cursor })),
        }))
        .unwrap();
}

/// Nothing more comes for a while (the one batch in flight waits for its acknowledgement).
async fn quiet(s: &mut Session) {
    let more = tokio::time::timeout(Duration::from_millis(300), s.from_agent.recv()).await;
    assert!(more.is_err(), "unexpected message: {more:?}");
}

fn users(batch: &LoginBatch) -> Vec<String> {
    batch.events.iter().map(|e| e.user.clone()).collect()
}

#[tokio::test]
async fn batches_flow_one_at_a_time_and_survive_a_restart_until_acknowledged() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("auth.log");
    append_attempts(&log, 0, 1200);
    let mut config = enrolled.config();
    config.logins = LoginsConfig::file(&log);

    let agent = Agent::start(config.clone(), None);
    let mut s = hub.session().await;
    let first = next_batch(&mut s).await;
    assert_eq!(first.events.len(), 500);
    assert_eq!(first.dropped, 0);
    let e = &first.events[0];
    assert_eq!(e.outcome, LoginOutcome::InvalidUser as i32);
    assert_eq!(
        (
            e.user.as_str(),
            e.source_ip.as_str(),
            e.source_port,
            e.sshd_pid
        ),
        ("u0", "203.0.113.7", 10000, 1000)
    );
    assert_eq!(e.at, "2026-11-28T10:00:00.000001Z");
    let cursors: Vec<u64> = first.events.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[1] == w[0] + 1));
    quiet(&mut s).await;

    ack(&s, &first);
    let second = next_batch(&mut s).await;
    assert_eq!(second.events[0].cursor, cursors[499] + 1);
    assert_eq!(second.events.len(), 500);
    ack(&s, &second);
    let third = next_batch(&mut s).await;
    assert_eq!(third.events.len(), 200);
    assert_eq!(third.events.last().unwrap().user, "u1199");
    ack(&s, &third);
    quiet(&mut s).await;

    // New lines: the watch on the log's directory wakes the agent.
    append_attempts(&log, 1200, 2);
    let fourth = next_batch(&mut s).await;
    assert_eq!(users(&fourth), vec!["u1200", "u1201"]);

    // Not acknowledged: after a restart it comes again, with the same cursors, and nothing
    // acknowledged comes back.
    agent.stop().await;
    let agent = Agent::start(config, None);
    let mut s = hub.session().await;
    let again = next_batch(&mut s).await;
    assert_eq!(again, fourth);
    ack(&s, &again);
    quiet(&mut s).await;
    agent.stop().await;
}

#[tokio::test]
async fn a_full_spool_reports_how_many_it_dropped() {
    let pki = Pki::new();
    let mut hub = TestHub::start(&pki).await;
    let enrolled = Enrolled::new(&pki, &hub.url, Lifetime::Fresh);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("auth.log");
    append_attempts(&log, 0, 12);
    let mut config = enrolled.config();
    config.logins = LoginsConfig {
        spool_max_events: 5,
        ..LoginsConfig::file(&log)
    };

    let agent = Agent::start(config, None);
    let mut s = hub.session().await;
    let batch = next_batch(&mut s).await;
    assert_eq!(users(&batch), vec!["u7", "u8", "u9", "u10", "u11"]);
    assert_eq!(batch.dropped, 7);
    ack(&s, &batch);
    append_attempts(&log, 12, 1);
    let next = next_batch(&mut s).await;
    assert_eq!(users(&next), vec!["u12"]);
    assert_eq!(next.dropped, 0, "the drop was reported and acknowledged");
    assert_eq!(next.events[0].cursor, batch.events[4].cursor + 1);
    agent.stop().await;
}
