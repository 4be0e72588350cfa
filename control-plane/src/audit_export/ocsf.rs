//! Audit events and SSH logins as OCSF 1.3.0 events (<https://schema.ocsf.io/1.3.0/>).
//!
//! | keyward                                   | OCSF class                          |
//! |-------------------------------------------|-------------------------------------|
//! | key, SMTP, DKIM and certificate changes, access grants | Account Change (`class_uid` 3001, category 3 IAM) |
//! | an SSH login an agent reported            | Authentication (3002, category 3 IAM), activity Logon |
//! | every other audited REST call (tokens, tenants, hosts, downloads, policies, backups) | API Activity (6003, category 6 Application Activity) |
//!
//! Every event carries the keyward event it comes from under `unmapped.keyward` (for an audit
//! event, its whole event line: a receiver checks the hash chain from it), its hash as
//! `metadata.uid` (a login's: its batch event's hash and the login's id), which a receiver
//! de-duplicates on, and its sequence number as `metadata.sequence`, which orders. Not the
//! sequence number alone: after a restore, new events take the lost events' numbers.

use serde_json::{Value, json};

use crate::audit_bundle::EventLine;
use crate::clock::parse_iso8601;
use crate::store::LoginRecord;

pub const VERSION: &str = "1.3.0";
pub const ACCOUNT_CHANGE: u32 = 3001;
pub const AUTHENTICATION: u32 = 3002;
pub const API_ACTIVITY: u32 = 6003;

/// The OCSF class and activity of an audit action.
pub fn class_of(action: &str) -> (u32, u32, &'static str) {
    match action {
        "key.create" | "certificate.issue" => (ACCOUNT_CHANGE, 1, "Create"),
        "key.rotate" | "key.regenerate" | "smtp.rotate" | "dkim.rotate" => {
            (ACCOUNT_CHANGE, 3, "Password Change")
        }
        "key.revoke" | "certificate.revoke" => (ACCOUNT_CHANGE, 5, "Disable"),
        "access.grant" => (ACCOUNT_CHANGE, 7, "Attach Policy"),
        "access.revoke" | "access.expire" => (ACCOUNT_CHANGE, 8, "Detach Policy"),
        _ => {
            let verb = action.rsplit('.').next().unwrap_or(action);
            let (id, name) = if verb.starts_with("create")
                || verb.starts_with("register")
                || verb.starts_with("issue")
                || verb.starts_with("enroll")
                || verb.starts_with("request")
                || verb == "logins"
            {
                (1, "Create")
            } else if verb.starts_with("download") || verb.starts_with("read") || verb == "export" {
                (2, "Read")
            } else if verb.starts_with("revoke")
                || verb.starts_with("delete")
                || action.starts_with("tenant.offboard.")
            {
                (4, "Delete")
            } else if verb.starts_with("set")
                || verb.starts_with("rotate")
                || verb.starts_with("renew")
                || verb == "policy"
                || verb == "trust"
                || verb == "backup"
            {
                (3, "Update")
            } else {
                (99, "Other")
            };
            (API_ACTIVITY, id, name)
        }
    }
}

fn millis(at: &str) -> i64 {
    parse_iso8601(at).map_or(0, |t| t.timestamp_millis())
}

fn base(class: u32, activity: u32, activity_name: &str, at: &str, success: bool) -> Value {
    let (category, category_name, class_name) = match class {
        ACCOUNT_CHANGE => (3, "Identity & Access Management", "Account Change"),
        AUTHENTICATION => (3, "Identity & Access Management", "Authentication"),
        _ => (6, "Application Activity", "API Activity"),
    };
    json!({
        "class_uid": class,
        "class_name": class_name,
        "category_uid": category,
        "category_name": category_name,
        "activity_id": activity,
        "activity_name": activity_name,
        "type_uid": class * 100 + activity,
        "type_name": format!("{class_name}: {activity_name}"),
        "time": millis(at),
        "severity_id": if success { 1 } else { 3 },
        "severity": if success { "Informational" } else { "Medium" },
        "status_id": if success { 1 } else { 2 },
        "status": if success { "Success" } else { "Failure" },
    })
}

fn metadata(uid: String, sequence: i64, event_code: &str) -> Value {
    json!({
        "version": VERSION,
        "uid": uid,
        "sequence": sequence,
        "event_code": event_code,
        "log_name": "keyward-audit",
        "product": {
            "name": "keyward",
            "vendor_name": "keyward",
            "version": env!("CARGO_PKG_VERSION"),
        },
    })
}

/// An audit event (as its event line).
pub fn audit_event(e: &EventLine) -> Value {
    let (class, activity, activity_name) = class_of(&e.action);
    let mut v = base(
        class,
        activity,
        activity_name,
        &e.at,
        e.outcome == "success",
    );
    let detail: Value = serde_json::from_str(&e.detail).unwrap_or(Value::Null);
    let actor = json!({
        "user": {
            "uid": e.actor_token_id.clone().unwrap_or_else(|| "system".to_owned()),
            "type": e.actor_role,
        },
    });
    v["metadata"] = metadata(e.hash.clone(), e.seq, &e.action);
    v["actor"] = actor;
    v["message"] = json!(format!("{} {}", e.action, e.outcome));
    if let Some(addr) = &e.source_addr {
        v["src_endpoint"] = endpoint(addr);
    }
    if class == ACCOUNT_CHANGE {
        // The account whose credentials changed: the tenant's managed user of that kind.
        let tenant = e.tenant_id.as_deref().unwrap_or("-");
        let kind = detail.get("kind").and_then(Value::as_str);
        v["user"] = json!({
            "uid": match kind {
                Some(kind) => format!("keyward:{tenant}:{kind}"),
                None => format!("keyward:{tenant}"),
            },
            "name": kind.unwrap_or(tenant),
            "org": { "uid": tenant },
        });
    } else {
        v["api"] = json!({ "operation": e.action, "service": { "name": "keyward" } });
        if let Some(tenant) = &e.tenant_id {
            v["resources"] = json!([{ "type": "tenant", "uid": tenant }]);
        }
    }
    v["unmapped"] = json!({ "keyward": e });
    v
}

/// An SSH login an agent reported, stored with the audit event `audit_seq` of hash
/// `audit_hash`.
pub fn login(audit_seq: i64, audit_hash: &str, l: &LoginRecord) -> Value {
    let accepted = l.outcome == "accepted";
    let at = crate::clock::iso8601(l.at);
    let mut v = base(AUTHENTICATION, 1, "Logon", &at, accepted);
    v["metadata"] = metadata(format!("{audit_hash}.{}", l.id), audit_seq, "ssh.login");
    v["message"] = json!(format!("ssh login {} for {}", l.outcome, l.user));
    v["user"] = json!({ "name": l.user, "org": { "uid": l.tenant_id } });
    v["src_endpoint"] = json!({ "ip": l.source_ip, "port": l.source_port });
    v["dst_endpoint"] = json!({ "uid": l.host_id, "svc_name": "sshd" });
    v["auth_protocol_id"] = json!(99);
    v["auth_protocol"] = json!(format!("SSH {}", l.method));
    v["is_mfa"] = json!(false);
    v["status_detail"] = json!(l.outcome);
    v["unmapped"] =
        json!({ "keyward": { "auditSeq": audit_seq, "auditHash": audit_hash, "login": l } });
    v
}

/// `ip` or `ip:port` (`[v6]:port`) as an OCSF network endpoint.
fn endpoint(addr: &str) -> Value {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sock) => json!({ "ip": sock.ip().to_string(), "port": sock.port() }),
        Err(_) => json!({ "ip": addr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(action: &str, outcome: &str) -> EventLine {
        EventLine {
            seq: 7,
            at: "2026-12-07T05:00:00Z".into(),
            actor_token_id: Some("tok1".into()),
            actor_role: "admin".into(),
            action: action.into(),
            tenant_id: Some("acme".into()),
            outcome: outcome.into(),
            source_addr: Some("192.0.2.1:4321".into()),
            detail: r#"{"kind":"tenant"}"#.into(),
            prev_hash: "a".into(),
            hash: "b".into(),
        }
    }

    #[test]
    fn key_changes_are_account_changes_of_the_managed_user() {
        let v = audit_event(&line("key.rotate", "success"));
        assert_eq!(v["class_uid"], 3001);
        assert_eq!(v["type_uid"], 300_103);
        assert_eq!(v["user"]["uid"], "keyward:acme:tenant");
        assert_eq!(v["time"], 1_796_619_600_000_i64);
        assert_eq!(v["metadata"]["uid"], "b", "the hash");
        assert_eq!(v["metadata"]["sequence"], 7);
        assert_eq!(v["src_endpoint"]["ip"], "192.0.2.1");
        assert_eq!(v["unmapped"]["keyward"]["hash"], "b");
        assert_eq!(v["status_id"], 1);
    }

    #[test]
    fn other_calls_are_api_activity_by_their_verb() {
        for (action, activity) in [
            ("token.issue", 1),
            ("key.download", 2),
            ("host.revoke", 4),
            ("tenant.offboard.start", 4),
            ("tenant.offboard.vault_destroyed", 4),
            ("policy.set", 3),
            ("something.new", 99),
        ] {
            let v = audit_event(&line(action, "refused"));
            assert_eq!(v["class_uid"], 6003, "{action}");
            assert_eq!(v["activity_id"], activity, "{action}");
            assert_eq!(v["api"]["operation"], action);
            assert_eq!(v["status_id"], 2);
        }
    }
}
