//! What a sink sends: each audit event (and, for a `host.logins` event, each SSH login of its
//! batch) as one JSON text in the sink's format, with what syslog's header needs.

use serde_json::{Value, json};

use super::ocsf;
use crate::agents::logins::AUDIT_ACTION as LOGIN_BATCH_ACTION;
use crate::audit_bundle::event_line;
use crate::config::AuditFormat;
use crate::store::{AuditRecord, LoginRecord};

/// One message to a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The audit event's sequence number (a login's: its batch's event).
    pub seq: i64,
    /// That event's hash: with `seq`, what tells one event from another, even after a restore
    /// handed the lost events' sequence numbers to new ones.
    pub hash: String,
    /// When it happened (RFC 3339).
    pub at: String,
    /// Syslog's MSGID: the audit action, or `ssh.login`.
    pub msgid: String,
    /// Syslog severity (RFC 5424): 6 informational, 5 notice, 4 warning.
    pub severity: u8,
    /// Syslog structured data `keyward@32473`: the event's `seq` and `hash` (a login's
    /// `auditSeq` and `loginId`), so that a receiver de-duplicates and orders without parsing.
    pub params: Vec<(&'static str, String)>,
    /// The event in the sink's format: one line of JSON.
    pub json: String,
}

/// The logins a `host.logins` event stored: its host and agent cursor range.
pub fn login_batch(event: &AuditRecord) -> Option<(String, i64, i64)> {
    if event.action != LOGIN_BATCH_ACTION || event.detail.get("new")?.as_i64()? == 0 {
        return None;
    }
    Some((
        event.detail.get("hostId")?.as_str()?.to_owned(),
        event.detail.get("firstCursor")?.as_i64()?,
        event.detail.get("lastCursor")?.as_i64()?,
    ))
}

fn severity(outcome: &str) -> u8 {
    match outcome {
        "success" | "accepted" => 6,
        "refused" | "failed" | "invalid_user" => 5,
        _ => 4,
    }
}

/// The records of one audit event (`detail`: its exact stored text) and the logins its batch
/// stored, in `format`.
pub fn records(
    format: AuditFormat,
    event: AuditRecord,
    detail: String,
    logins: &[LoginRecord],
) -> Vec<Record> {
    let seq = event.seq;
    let hash = event.hash.clone();
    let mut out = Vec::with_capacity(1 + logins.len());
    let head = Record {
        seq,
        hash: hash.clone(),
        at: event.at.clone(),
        msgid: event.action.clone(),
        severity: severity(&event.outcome),
        params: vec![("seq", seq.to_string()), ("hash", event.hash.clone())],
        json: String::new(),
    };
    let line = event_line(event, detail);
    let json = match format {
        AuditFormat::Keyward => serde_json::to_value(&line).unwrap_or(Value::Null),
        AuditFormat::Ocsf => ocsf::audit_event(&line),
    };
    out.push(Record {
        json: json.to_string(),
        ..head
    });
    for login in logins {
        let json = match format {
            AuditFormat::Keyward => {
                json!({ "keywardLogin": 1, "auditSeq": seq, "auditHash": hash, "login": login })
            }
            AuditFormat::Ocsf => ocsf::login(seq, &hash, login),
        };
        out.push(Record {
            seq,
            hash: hash.clone(),
            at: crate::clock::iso8601(login.at),
            msgid: "ssh.login".to_owned(),
            severity: severity(&login.outcome),
            params: vec![
                ("auditSeq", seq.to_string()),
                ("auditHash", hash.clone()),
                ("loginId", login.id.to_string()),
            ],
            json: json.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;

    fn batch_event(new: i64) -> AuditRecord {
        AuditRecord {
            seq: 41,
            at: "2026-12-07T05:00:00Z".into(),
            actor_token_id: None,
            actor_role: "system".into(),
            action: LOGIN_BATCH_ACTION.into(),
            tenant_id: Some("acme".into()),
            outcome: "success".into(),
            source_addr: None,
            detail: json!({ "hostId": "h-1", "firstCursor": 7, "lastCursor": 9, "new": new }),
            prev_hash: "p".into(),
            hash: "h".into(),
        }
    }

    fn login() -> LoginRecord {
        LoginRecord {
            id: 500,
            host_id: "h-1".parse().unwrap(),
            tenant_id: "acme".parse().unwrap(),
            cursor: 7,
            at: Utc.timestamp_opt(1_796_619_590, 0).unwrap(),
            received_at: Utc.timestamp_opt(1_796_619_600, 0).unwrap(),
            outcome: "failed".into(),
            method: "publickey".into(),
            user: "acme".into(),
            source_ip: "198.51.100.7".into(),
            source_port: 50_123,
            key_type: None,
            fingerprint: None,
            key_kind: None,
            key_generation: None,
            sshd_pid: None,
            verified: true,
            certificate_id: None,
            certificate_serial: None,
        }
    }

    #[test]
    fn a_login_batch_is_followed_by_its_logins_in_either_format() {
        let event = batch_event(3);
        assert_eq!(login_batch(&event), Some(("h-1".into(), 7, 9)));
        assert_eq!(
            login_batch(&batch_event(0)),
            None,
            "a re-sent batch stored nothing new"
        );
        let detail = event.detail.to_string();
        let ocsf = records(AuditFormat::Ocsf, event.clone(), detail.clone(), &[login()]);
        assert_eq!(ocsf.len(), 2);
        let auth: serde_json::Value = serde_json::from_str(&ocsf[1].json).unwrap();
        assert_eq!(auth["class_uid"], 3002);
        assert_eq!(auth["type_uid"], 300_201);
        assert_eq!(auth["status_id"], 2);
        assert_eq!(auth["src_endpoint"]["ip"], "198.51.100.7");
        assert_eq!(auth["metadata"]["uid"], "h.500");
        assert_eq!(auth["metadata"]["sequence"], 41);
        assert_eq!(ocsf[1].msgid, "ssh.login");
        assert_eq!(ocsf[1].severity, 5);
        assert_eq!(
            ocsf[1].params,
            vec![
                ("auditSeq", "41".into()),
                ("auditHash", "h".into()),
                ("loginId", "500".into())
            ]
        );
        let own = records(AuditFormat::Keyward, event, detail.clone(), &[login()]);
        let head: serde_json::Value = serde_json::from_str(&own[0].json).unwrap();
        assert_eq!(
            head["detail"], detail,
            "the exact stored text the hash covers"
        );
        let line: serde_json::Value = serde_json::from_str(&own[1].json).unwrap();
        assert_eq!(line["keywardLogin"], 1);
        assert_eq!(line["auditSeq"], 41);
        assert_eq!(line["auditHash"], "h");
        assert_eq!(line["login"]["sourceIp"], "198.51.100.7");
    }
}
