//! Login events from agents: validated, attributed, de-duplicated and stored.
//!
//! The events go to `login_events`; each stored batch is also one event of the hash-chained audit
//! log (`host.logins`) whose detail carries a SHA-256 digest of the batch, so the login table is
//! covered by the chain without serialising every login through the audit lock.

use chrono::{DateTime, Utc};
use keyward_common::proto::{LoginBatch, LoginEvent, LoginMethod, LoginOutcome};
use keyward_common::{Fingerprint, HostId, TenantId};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::caller::Caller;
use crate::clock::{iso8601, parse_iso8601};
use crate::lifecycle::DomainError;
use crate::lifecycle::KeyLifecycle;
use crate::store::NewLogin;

/// The largest batch stored in one transaction; agents send at most this many per message.
pub const MAX_BATCH: usize = 1000;
/// The audit action of a stored batch; its detail names the host and the batch's agent cursors
/// (`hostId`, `firstCursor`, `lastCursor`) and how many events were new (`new`).
pub const AUDIT_ACTION: &str = "host.logins";

fn bounded(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn outcome(event: &LoginEvent) -> &'static str {
    match event.outcome() {
        LoginOutcome::Accepted => "accepted",
        LoginOutcome::Failed => "failed",
        LoginOutcome::InvalidUser => "invalid_user",
        LoginOutcome::ClosedPreauth => "closed_preauth",
        LoginOutcome::Disconnected => "disconnected",
        LoginOutcome::Unspecified => "unknown",
    }
}

fn method(event: &LoginEvent) -> &'static str {
    match event.method() {
        LoginMethod::Publickey => "publickey",
        LoginMethod::Password => "password",
        LoginMethod::KeyboardInteractive => "keyboard_interactive",
        LoginMethod::Other => "other",
        LoginMethod::Unspecified => "unknown",
    }
}

/// What an agent says becomes a row; nothing it says can be out of shape in SQL.
fn to_new(event: &LoginEvent, received_at: DateTime<Utc>) -> Option<NewLogin> {
    let cursor = i64::try_from(event.cursor).ok()?;
    let at = parse_iso8601(&event.at).unwrap_or(received_at);
    let fingerprint = event.fingerprint.parse::<Fingerprint>().ok();
    let source_ip = event
        .source_ip
        .parse::<std::net::IpAddr>()
        .map_or_else(|_| bounded(&event.source_ip, 64), |ip| ip.to_string());
    Some(NewLogin {
        cursor,
        at,
        outcome: outcome(event),
        method: method(event),
        user: bounded(&event.user, 64),
        source_ip,
        source_port: i64::from(event.source_port),
        key_type: (!event.key_type.is_empty()).then(|| bounded(&event.key_type, 32)),
        fingerprint,
        sshd_pid: (event.sshd_pid != 0).then_some(i64::from(event.sshd_pid)),
        // The agent's word (a rooted host can lie, as with everything it reports): shown as
        // such, and only verified accepted logins become a host's last login.
        verified: event.verified,
        certificate: (!event.certificate_id.is_empty()).then(|| {
            (
                bounded(&event.certificate_id, 256),
                event.certificate_serial,
            )
        }),
    })
}

fn digest(events: &[NewLogin]) -> String {
    let mut hash = Sha256::new();
    for e in events {
        let line = json!([
            e.cursor,
            iso8601(e.at),
            e.outcome,
            e.method,
            e.user,
            e.source_ip,
            e.source_port,
            e.key_type,
            e.fingerprint,
            e.sshd_pid,
            e.verified
        ]);
        // Certificate logins only: the digest of a batch without any is what it always was.
        let line = match &e.certificate {
            Some((id, serial)) => {
                let mut fields = line;
                if let Some(fields) = fields.as_array_mut() {
                    fields.extend([json!(id), json!(serial.to_string())]);
                }
                fields
            }
            None => line,
        };
        hash.update(line.to_string().as_bytes());
        hash.update(b"\n");
    }
    hex::encode(hash.finalize())
}

/// Stores one batch from `host` (of `tenant`) in one transaction with its audit event.
pub async fn ingest(
    lifecycle: &KeyLifecycle,
    host: &HostId,
    tenant: &TenantId,
    batch: &LoginBatch,
) -> Result<(), DomainError> {
    let received_at = lifecycle.now();
    let events: Vec<NewLogin> = batch
        .events
        .iter()
        .take(MAX_BATCH)
        .filter_map(|e| to_new(e, received_at))
        .collect();
    let dropped = i64::try_from(batch.dropped).unwrap_or(i64::MAX);
    let (h, t) = (host.clone(), tenant.clone());
    let summary = json!({
        "hostId": host,
        "count": events.len(),
        "firstCursor": events.first().map(|e| e.cursor),
        "lastCursor": events.last().map(|e| e.cursor),
        "dropped": dropped,
        "sha256": digest(&events),
    });
    let accepted = events.iter().filter(|e| e.outcome == "accepted").count();
    let unverified = events
        .iter()
        .filter(|e| e.outcome == "accepted" && !e.verified)
        .count();
    let stored = lifecycle
        .audited(&Caller::system(), AUDIT_ACTION, Some(tenant), move |tx| {
            Box::pin(async move {
                let new = tx.insert_logins(&h, &t, &events, received_at).await?;
                // A batch whose events were all stored before is a re-send after a lost
                // acknowledgement: its `dropped` was counted the first time.
                if dropped > 0 && new > 0 {
                    tx.add_logins_dropped(&h, dropped).await?;
                }
                let mut detail = summary;
                detail["new"] = json!(new);
                Ok((new, detail))
            })
        })
        .await?;
    metrics::counter!("keyward_login_events_total").increment(stored);
    if accepted > 0 {
        tracing::info!(host = %host, accepted, unverified, stored, "login events stored");
    }
    Ok(())
}
