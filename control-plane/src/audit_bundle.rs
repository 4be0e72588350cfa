//! Audit bundles: a piece of the hash-chained audit log written to a file that anyone can check
//! without keyward's database (`keyward-server audit export` and `audit verify-bundle`).
//!
//! A bundle is JSON lines: a header, one line per event in chain order, and a trailer.
//!
//! - The header names the format (`"keywardAuditBundle": 1`), when and for which time range it
//!   was exported, its **anchor** (the link the first event hangs on: the sequence number and
//!   hash of the event before it, or 0 and the genesis hash) and the chain's head when it was
//!   exported.
//! - Each event carries every field the chain hashes, its `detail` as the exact text stored (the
//!   hash covers those bytes; parse it as JSON to read it), `prevHash` and `hash`.
//! - The trailer repeats the last link (`end`) and the number of events, so a bundle cut short
//!   is told from a whole one.
//!
//! Verifying recomputes every hash and link from the anchor on and names the first line that
//! does not hold. A bundle proves its events are an unbroken piece of a chain that starts at
//! its anchor; comparing anchors and heads with earlier bundles (or a head kept elsewhere) is
//! how a truncated log is told.

use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit_head::{HeadChecker, HeadKeys, SignedHeads};
use crate::clock::iso8601;
use crate::store::{AuditRecord, GENESIS_HASH, Store, StoreError, expected_hash};

/// The bundle format this code writes and reads.
pub const FORMAT: u32 = 1;
/// The longest line read back: events are far smaller, and a hostile file must not make the
/// verifier hold more.
const MAX_LINE_BYTES: u64 = 1 << 20;
/// Events read from SQL at a time.
const BATCH: i64 = 1000;

/// A place in the chain: an event's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub seq: i64,
    pub hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Header {
    keyward_audit_bundle: u32,
    exported_at: String,
    since: String,
    until: String,
    anchor: Link,
    chain_head: Link,
}

/// One event as a bundle (and audit export's `keyward` format) carries it: every field the chain
/// hashes, with `detail` as the exact stored text.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventLine {
    pub seq: i64,
    pub at: String,
    pub actor_token_id: Option<String>,
    pub actor_role: String,
    pub action: String,
    pub tenant_id: Option<String>,
    pub outcome: String,
    pub source_addr: Option<String>,
    /// The exact stored text.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    end: Link,
    events: u64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Entry {
    Trailer(Trailer),
    Event(Box<EventLine>),
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the bundle: {0}")]
    Write(#[from] std::io::Error),
    #[error("encoding the bundle: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exported {
    pub events: u64,
    pub anchor: Link,
    pub end: Link,
}

fn line(out: &mut impl Write, value: &impl Serialize) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes the events stamped in `[since, until)` — and every event between the first and the
/// last of them, so that the bundle is one unbroken piece of the chain — to `out`.
pub async fn export(
    store: &Store,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> Result<Exported, ExportError> {
    let head = match store.audit_head().await? {
        Some((seq, hash)) => Link { seq, hash },
        None => genesis(),
    };
    let range = store.audit_seq_range(since, until).await?;
    let first = match range {
        Some((first, _)) => store.audit_events_from(first, first, 1).await?,
        None => Vec::new(),
    };
    let anchor = match first.first() {
        Some((event, _)) => Link {
            seq: event.seq - 1,
            hash: event.prev_hash.clone(),
        },
        // Nothing in the range: the bundle holds no event and hangs on the head.
        None => head.clone(),
    };
    line(
        out,
        &Header {
            keyward_audit_bundle: FORMAT,
            exported_at: iso8601(now),
            since: iso8601(since),
            until: iso8601(until),
            anchor: anchor.clone(),
            chain_head: head,
        },
    )?;
    let mut end = anchor.clone();
    let mut events = 0;
    if let Some((first, last)) = range {
        let mut next = first;
        while next <= last {
            let batch = store.audit_events_from(next, last, BATCH).await?;
            let Some((newest, _)) = batch.last() else {
                break;
            };
            next = newest.seq + 1;
            for (event, detail) in batch {
                end = Link {
                    seq: event.seq,
                    hash: event.hash.clone(),
                };
                events += 1;
                line(out, &event_line(event, detail))?;
            }
        }
    }
    line(
        out,
        &Trailer {
            end: end.clone(),
            events,
        },
    )?;
    out.flush()?;
    Ok(Exported {
        events,
        anchor,
        end,
    })
}

fn genesis() -> Link {
    Link {
        seq: 0,
        hash: GENESIS_HASH.to_owned(),
    }
}

/// The event line of `e`, whose detail is stored as `detail`.
pub fn event_line(e: AuditRecord, detail: String) -> EventLine {
    EventLine {
        seq: e.seq,
        at: e.at,
        actor_token_id: e.actor_token_id,
        actor_role: e.actor_role,
        action: e.action,
        tenant_id: e.tenant_id,
        outcome: e.outcome,
        source_addr: e.source_addr,
        detail,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

/// What verifying a bundle found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleVerdict {
    pub ok: bool,
    /// Events whose hash and link were checked and hold.
    pub checked: u64,
    /// The link the bundle hangs on, and its last link (when the header and trailer read).
    pub anchor: Option<Link>,
    pub end: Option<Link>,
    /// The first line (from 1) that does not hold, and the event's sequence number if it names
    /// one.
    pub first_broken_line: Option<u64>,
    pub first_broken_seq: Option<i64>,
    pub reason: Option<String>,
    /// The signed heads in the bundle (`audit.head.signed` events): each is checked against the
    /// bundle's hashes, and its signature when the transit key's public keys are given.
    pub signed_heads: SignedHeads,
}

/// Checks a bundle read from `input`: its header, every event's hash and link from the anchor
/// on, every signed head in it (signatures under `keys`, when given), and the trailer. Never
/// fails: a bundle that cannot be read is a broken one.
pub fn verify(input: impl BufRead, keys: Option<&HeadKeys>) -> BundleVerdict {
    let mut verdict = BundleVerdict {
        ok: false,
        checked: 0,
        anchor: None,
        end: None,
        first_broken_line: None,
        first_broken_seq: None,
        reason: None,
        signed_heads: SignedHeads::default(),
    };
    let mut lines = BoundedLines { input, number: 0 };
    let broken = |mut verdict: BundleVerdict, line: u64, seq: Option<i64>, reason: String| {
        verdict.first_broken_line = Some(line);
        verdict.first_broken_seq = seq;
        verdict.reason = Some(reason);
        verdict
    };
    let header: Header = match lines.next() {
        Ok(Some(text)) => match serde_json::from_str(&text) {
            Ok(header) => header,
            Err(e) => return broken(verdict, 1, None, format!("not a bundle header: {e}")),
        },
        Ok(None) => return broken(verdict, 1, None, "the file is empty".into()),
        Err(e) => return broken(verdict, 1, None, e),
    };
    if header.keyward_audit_bundle != FORMAT {
        let why = format!(
            "bundle format {} (this keyward reads {FORMAT})",
            header.keyward_audit_bundle
        );
        return broken(verdict, 1, None, why);
    }
    verdict.anchor = Some(header.anchor.clone());
    let mut heads = HeadChecker::new(keys, header.anchor.seq, &header.anchor.hash);
    let mut last = header.anchor;
    loop {
        let number = lines.number + 1;
        let text = match lines.next() {
            Ok(Some(text)) => text,
            Ok(None) => {
                let why = "the bundle ends without its trailer: it was cut short".into();
                return broken(verdict, number, None, why);
            }
            Err(e) => return broken(verdict, number, None, e),
        };
        let event = match serde_json::from_str::<Entry>(&text) {
            Ok(Entry::Event(event)) => event,
            Ok(Entry::Trailer(trailer)) => {
                if trailer.end != last || trailer.events != verdict.checked {
                    let why = format!(
                        "the trailer names {} events ending at {}; the bundle holds {} ending at {}",
                        trailer.events, trailer.end.seq, verdict.checked, last.seq
                    );
                    return broken(verdict, number, None, why);
                }
                match lines.next() {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        let why = "lines after the trailer".into();
                        return broken(verdict, number + 1, None, why);
                    }
                    Err(e) => return broken(verdict, number + 1, None, e),
                }
                verdict.end = Some(last);
                verdict.signed_heads = heads.finish();
                verdict.ok = true;
                return verdict;
            }
            Err(e) => {
                let why = format!("not an event or a trailer: {e}");
                return broken(verdict, number, None, why);
            }
        };
        let seq = Some(event.seq);
        let Some(next) = last.seq.checked_add(1) else {
            return broken(
                verdict,
                number,
                seq,
                "the anchor is past the last sequence number".into(),
            );
        };
        if event.seq != next {
            let why = format!(
                "event {} follows event {}: event {next} is missing",
                event.seq, last.seq
            );
            return broken(verdict, number, seq, why);
        }
        if event.prev_hash != last.hash {
            let why = "prevHash does not match the previous event's hash".into();
            return broken(verdict, number, seq, why);
        }
        let (record, detail) = record_of(*event);
        if expected_hash(&record, &detail) != record.hash {
            let why = "the event's content does not match its hash".into();
            return broken(verdict, number, seq, why);
        }
        if let Err(problem) = heads.observe(record.seq, &record.action, &detail, &record.hash) {
            return broken(verdict, number, seq, problem.reason);
        }
        last = Link {
            seq: record.seq,
            hash: record.hash,
        };
        verdict.checked += 1;
    }
}

/// The event an event line holds, with its detail's exact text (to check its hash with
/// [`expected_hash`]).
pub fn record_of(e: EventLine) -> (AuditRecord, String) {
    let record = AuditRecord {
        seq: e.seq,
        at: e.at,
        actor_token_id: e.actor_token_id,
        actor_role: e.actor_role,
        action: e.action,
        tenant_id: e.tenant_id,
        outcome: e.outcome,
        source_addr: e.source_addr,
        detail: serde_json::Value::Null,
        prev_hash: e.prev_hash,
        hash: e.hash,
    };
    (record, e.detail)
}

/// Lines of at most [`MAX_LINE_BYTES`], counted.
struct BoundedLines<R> {
    input: R,
    number: u64,
}

impl<R: BufRead> BoundedLines<R> {
    fn next(&mut self) -> Result<Option<String>, String> {
        let mut buf = Vec::new();
        let read = std::io::Read::take(&mut self.input, MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("reading the bundle: {e}"))?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if buf.len() as u64 > MAX_LINE_BYTES {
            return Err(format!("a line longer than {MAX_LINE_BYTES} bytes"));
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| "a line that is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewAuditEvent;

    async fn store_with(events: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url, None).await.unwrap();
        for i in 0..events {
            let mut tx = store.begin().await.unwrap();
            tx.append_audit(&NewAuditEvent {
                at: format!("2026-01-01T00:{:02}:00Z", i),
                actor_token_id: Some(format!("tok-{i}")),
                actor_role: "admin".into(),
                action: "tenant.create",
                tenant_id: Some(format!("t{i}").parse().unwrap()),
                outcome: "success",
                source_addr: None,
                detail: serde_json::json!({ "n": i, "note": "ä \"quoted\"" }),
            })
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        (dir, store)
    }

    fn at(s: &str) -> DateTime<Utc> {
        crate::clock::parse_iso8601(s).unwrap()
    }

    async fn bundle(store: &Store, since: &str, until: &str) -> (Exported, String) {
        let mut out = Vec::new();
        let exported = export(
            store,
            at(since),
            at(until),
            at("2026-02-01T00:00:00Z"),
            &mut out,
        )
        .await
        .unwrap();
        (exported, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn a_bundle_verifies_from_its_anchor_and_names_the_first_line_that_does_not() {
        let (_dir, store) = store_with(12).await;
        // Events 4 to 9 (stamped minutes 3 to 8).
        let (exported, text) = bundle(&store, "2026-01-01T00:03:00Z", "2026-01-01T00:09:00Z").await;
        assert_eq!(exported.events, 6);
        assert_eq!(exported.anchor.seq, 3);
        assert_eq!(exported.end.seq, 9);
        let verdict = verify(text.as_bytes(), None);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.checked, 6);
        assert_eq!(verdict.end, Some(exported.end.clone()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8);

        let check = |lines: &[String]| verify(lines.join("\n").as_bytes(), None);
        let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();

        // An edited event (its detail): that line.
        let mut edited = owned.clone();
        edited[3] = edited[3].replace("\\\"n\\\":5", "\\\"n\\\":99");
        assert_ne!(edited[3], owned[3]);
        let v = check(&edited);
        assert_eq!(
            (v.ok, v.first_broken_line, v.first_broken_seq),
            (false, Some(4), Some(6))
        );
        assert!(v.reason.unwrap().contains("does not match its hash"));

        // A removed event: the next line.
        let mut removed = owned.clone();
        removed.remove(2);
        let v = check(&removed);
        assert_eq!(
            (v.first_broken_line, v.first_broken_seq),
            (Some(3), Some(6))
        );
        assert!(v.reason.unwrap().contains("event 5 is missing"));

        // Cut short (the trailer and the last event gone): said so.
        let v = check(&owned[..6]);
        assert!(!v.ok);
        assert!(v.reason.unwrap().contains("cut short"));

        // A trailer that does not match, lines after it, a header of another format.
        let mut trailer = owned.clone();
        trailer[7] = trailer[7].replace("\"events\":6", "\"events\":7");
        assert!(
            check(&trailer)
                .reason
                .unwrap()
                .contains("the trailer names 7")
        );
        let mut after = owned.clone();
        after.push(owned[1].clone());
        assert!(check(&after).reason.unwrap().contains("after the trailer"));
        let mut format = owned.clone();
        format[0] = format[0].replace("\"keywardAuditBundle\":1", "\"keywardAuditBundle\":2");
        assert!(check(&format).reason.unwrap().contains("format 2"));

        // A line after the trailer that cannot even be read; an anchor at the end of the numbers.
        let mut unreadable = owned.clone();
        unreadable.push("x".repeat(MAX_LINE_BYTES as usize + 10));
        let v = check(&unreadable);
        assert!(!v.ok && v.reason.unwrap().contains("longer than"));
        let mut last = owned.clone();
        last[0] = last[0].replace(
            "\"anchor\":{\"seq\":3,",
            "\"anchor\":{\"seq\":9223372036854775807,",
        );
        assert_ne!(last[0], owned[0]);
        assert!(
            check(&last)
                .reason
                .unwrap()
                .contains("past the last sequence number")
        );

        // Not a bundle at all, an empty file, a line too long for the verifier.
        assert!(!verify(&b"hello\n"[..], None).ok);
        assert!(verify(&b""[..], None).reason.unwrap().contains("empty"));
        let long = format!("{}\n{}", owned[0], "x".repeat(MAX_LINE_BYTES as usize + 10));
        assert!(
            verify(long.as_bytes(), None)
                .reason
                .unwrap()
                .contains("longer than")
        );
    }

    #[tokio::test]
    async fn bundles_of_the_whole_log_and_of_an_empty_range_verify() {
        let (_dir, store) = store_with(3).await;
        let (all, text) = bundle(&store, "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z").await;
        assert_eq!(all.anchor, genesis());
        assert_eq!(all.events, 3);
        assert!(verify(text.as_bytes(), None).ok);

        let (none, text) = bundle(&store, "2030-01-01T00:00:00Z", "2031-01-01T00:00:00Z").await;
        assert_eq!(none.events, 0);
        assert_eq!(none.anchor, all.end, "an empty bundle hangs on the head");
        let verdict = verify(text.as_bytes(), None);
        assert!(verdict.ok && verdict.checked == 0, "{verdict:?}");
    }

    #[tokio::test]
    async fn signed_heads_in_a_bundle_are_checked_with_the_public_keys() {
        use crate::audit_head::signed_tests::{keys_of, signed};
        use ed25519_dalek::SigningKey;
        let (_dir, store) = store_with(5).await;
        let key = SigningKey::from_bytes(&[3; 32]);
        let (seq, hash) = store.audit_head().await.unwrap().unwrap();
        let head = signed(&key, seq, &hash, "2026-01-01T00:06:00Z");
        let mut tx = store.begin().await.unwrap();
        tx.append_audit(&NewAuditEvent {
            at: "2026-01-01T00:06:00Z".into(),
            actor_token_id: None,
            actor_role: "system".into(),
            action: crate::audit_head::SIGNED_ACTION,
            tenant_id: None,
            outcome: "success",
            source_addr: None,
            detail: serde_json::to_value(&head).unwrap(),
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let (_, text) = bundle(&store, "2026-01-01T00:02:00Z", "2026-01-01T00:07:00Z").await;

        let keys = keys_of(&key);
        let verdict = verify(text.as_bytes(), Some(&keys));
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.signed_heads.signed_heads, 1);
        assert_eq!(verdict.signed_heads.signatures_checked, 1);
        assert_eq!(verdict.signed_heads.newest, Some(head));
        // Without the keys the link is still checked, the signature is not.
        let unchecked = verify(text.as_bytes(), None);
        assert!(unchecked.ok);
        assert_eq!(unchecked.signed_heads.signatures_checked, 0);

        let other = keys_of(&SigningKey::from_bytes(&[4; 32]));
        let verdict = verify(text.as_bytes(), Some(&other));
        assert!(!verdict.ok);
        assert_eq!(verdict.first_broken_seq, Some(6));
        assert!(verdict.reason.unwrap().contains("does not verify"));
    }
}
