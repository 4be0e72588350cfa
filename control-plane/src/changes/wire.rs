//! What replicas send each other: batches of [`Change`]s as JSON, each notification within
//! PostgreSQL's payload limit, named by the sending replica so that it can skip its own.
//!
//! Ids only, never key material. A payload this replica cannot read (a newer replica's change
//! during a rolling upgrade, or anything else) counts as [`Change::Resync`]: reading the state
//! again is always correct.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::Change;

/// One notification as read: who sent it and what changed. Written by [`encode`] piece by piece,
/// in the same shape.
#[derive(Debug, Deserialize)]
struct Batch<'a> {
    /// The sending replica ([`super::postgres::ReplicaChanges`] picks it at start).
    from: &'a str,
    changes: Vec<Change>,
}

/// What closes a payload after its last change.
const TAIL: &str = "]}";

/// Packs `changes` into payloads of at most `limit` bytes each, in order. Each change is
/// serialised once and payloads are joined from the pieces, so packing is linear in the number
/// of changes (a rotation of every tenant sends tens of thousands). A report naming more hosts
/// than fit a payload is split; a change too large for a payload of its own (none is, at
/// PostgreSQL's 7,999 bytes: ids are short) becomes a resync.
pub fn encode(from: &str, changes: Vec<Change>, limit: usize) -> Vec<String> {
    let head = format!(r#"{{"from":{},"changes":["#, json(&from));
    // The room a payload has for its changes and the commas between them.
    let room = limit.saturating_sub(head.len() + TAIL.len());
    let mut payloads = Vec::new();
    let mut current = String::new();
    let mut pending: VecDeque<Change> = changes.into();
    while let Some(change) = pending.pop_front() {
        let piece = json(&change);
        let separator = usize::from(!current.is_empty());
        if current.len() + separator + piece.len() <= room {
            if separator == 1 {
                current.push(',');
            }
            current.push_str(&piece);
            continue;
        }
        if piece.len() <= room {
            payloads.push(close(&head, &current));
            current = piece;
            continue;
        }
        match change {
            Change::Reported(mut hosts) if hosts.len() > 1 => {
                let second = hosts.split_off(hosts.len() / 2);
                pending.push_front(Change::Reported(second));
                pending.push_front(Change::Reported(hosts));
            }
            // Only a limit smaller than any id could get here: nothing can be sent.
            Change::Resync => {}
            _ => pending.push_front(Change::Resync),
        }
    }
    if !current.is_empty() {
        payloads.push(close(&head, &current));
    }
    payloads
}

fn close(head: &str, changes: &str) -> String {
    format!("{head}{changes}{TAIL}")
}

/// One value as JSON. Ids and change names always serialise; were one not to, the receiver
/// reads the result as a resync.
fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| r#""resync""#.to_owned())
}

/// The changes in a payload another replica sent; `None` for this replica's own. A payload that
/// cannot be read asks for a resync.
pub fn decode(me: &str, payload: &str) -> Option<Vec<Change>> {
    match serde_json::from_str::<Batch<'_>>(payload) {
        Ok(batch) if batch.from == me => None,
        Ok(batch) => Some(batch.changes),
        Err(_) => Some(vec![Change::Resync]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(i: usize) -> Change {
        Change::Tenant(format!("tenant-{i}").parse().unwrap())
    }

    #[test]
    fn changes_travel_in_order_in_payloads_within_the_limit() {
        let changes: Vec<Change> = (0..2_000)
            .map(tenant)
            .chain([
                Change::Reported(vec!["vps-1".parse().unwrap(), "vps-2".parse().unwrap()]),
                Change::HostRevoked("vps-3".parse().unwrap()),
                Change::TokenRevoked("tok-1".into()),
                Change::JobProgress("job_00000000000000aa".into()),
                Change::Resync,
            ])
            .collect();
        let payloads = encode(
            "replica-a",
            changes.clone(),
            crate::store::MAX_PAYLOAD_BYTES,
        );
        assert!(payloads.len() > 1, "2,000 tenants do not fit one payload");
        assert!(
            payloads
                .iter()
                .all(|p| p.len() <= crate::store::MAX_PAYLOAD_BYTES)
        );
        let received: Vec<Change> = payloads
            .iter()
            .flat_map(|p| decode("replica-b", p).unwrap())
            .collect();
        assert_eq!(received, changes);
        // The sender skips its own.
        assert!(payloads.iter().all(|p| decode("replica-a", p).is_none()));
    }

    #[test]
    fn what_cannot_be_read_or_sent_asks_for_a_resync() {
        for unreadable in [
            "",
            "not json",
            r#"{"from":"replica-a","changes":[{"tenant_deleted":"acme"}]}"#,
            r#"{"from":"replica-a","changes":[{"tenant":"../etc"}]}"#,
        ] {
            assert_eq!(decode("replica-b", unreadable), Some(vec![Change::Resync]));
        }
        // A report naming more hosts than fit is split; an id too long for any payload (none
        // is, at PostgreSQL's limit) asks for a resync.
        let hosts: Vec<keyward_common::HostId> = (0..2_000)
            .map(|i| format!("vps-{i}").parse().unwrap())
            .collect();
        let payloads = encode(
            "replica-a",
            vec![tenant(1), Change::Reported(hosts.clone()), tenant(2)],
            1_000,
        );
        assert!(payloads.iter().all(|p| p.len() <= 1_000));
        let received: Vec<Change> = payloads
            .iter()
            .flat_map(|p| decode("replica-b", p).unwrap())
            .collect();
        assert_eq!(received.first(), Some(&tenant(1)));
        assert_eq!(received.last(), Some(&tenant(2)));
        let reported: Vec<_> = received[1..received.len() - 1]
            .iter()
            .flat_map(|c| match c {
                Change::Reported(h) => h.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(reported, hosts);
        let long_token = Change::TokenRevoked("t".repeat(2_000));
        let payloads = encode("replica-a", vec![tenant(1), long_token, tenant(2)], 1_000);
        let received: Vec<Change> = payloads
            .iter()
            .flat_map(|p| decode("replica-b", p).unwrap())
            .collect();
        assert_eq!(received, vec![tenant(1), Change::Resync, tenant(2)]);
    }
}
