//! A tenant's data export (GDPR article 15): what keyward holds about its VPS and the logins to
//! it, as JSON lines; never a private key, never another tenant's data, never what platform staff
//! did.

use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::{Deployment, eventually, unique_tenant};
use reqwest::Method;
use serde_json::Value;

const EXPORT: &str = "/api/v1/tenant/infrastructure/data-export";

async fn export(d: &Deployment, token: &str) -> (String, Vec<Value>) {
    let reply = d.cp.request(Method::GET, EXPORT, Some(token), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    let text = reply.text();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (text, lines)
}

fn of<'a>(lines: &'a [Value], record: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["record"] == record).collect()
}

#[tokio::test]
async fn a_tenant_exports_what_keyward_holds_about_its_vps_and_nothing_else() {
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;
    // A login of the tenant's own, and one action of its own token.
    let key = d.download().await;
    assert!(d.tenant_login(&key).await);
    d.tenant_op("/rotate").await;
    // Another tenant, and an admin action on this one.
    let other = unique_tenant("other");
    d.cp.create_tenant(&other).await;
    let other_token = d.cp.tenant_token(&other).await;
    d.cp.admin_rotate(&d.tenant, "admin").await;

    let lines = eventually(
        "the login in the export",
        Duration::from_secs(20),
        || async {
            let (_, lines) = export(&d, &d.tenant_token).await;
            of(&lines, "login")
                .iter()
                .any(|l| l["outcome"] == "accepted" && l["user"] == d.user.name.as_str())
                .then_some(lines)
        },
    )
    .await;
    let (text, _) = export(&d, &d.tenant_token).await;
    assert_eq!(lines[0]["record"], "export");
    assert_eq!(lines[0]["format"], "keyward-tenant-export/1");
    assert_eq!(lines[0]["tenantId"], d.tenant.as_str());
    let last = lines.last().unwrap();
    assert_eq!(last["record"], "end");
    assert_eq!(last["lines"], lines.len() as u64 - 1);
    let tenant = of(&lines, "tenant");
    assert_eq!(tenant.len(), 1);
    assert_eq!(tenant[0]["sshUsername"], d.user.name.as_str());
    let key_sets = of(&lines, "keySet");
    assert_eq!(key_sets.len(), 2);
    assert!(key_sets.iter().all(|k| k["publicKey"].as_str().is_some()));
    // keyward made both keys: neither was registered by its owner.
    assert!(
        key_sets.iter().all(|k| k["origin"] == "generated"),
        "{key_sets:?}"
    );
    assert!(!text.contains("PRIVATE KEY"), "a private key in the export");
    assert_eq!(of(&lines, "host").len(), 1);
    assert_eq!(of(&lines, "host")[0]["hostId"], d.agent.host_id.as_str());
    // Its own actions only, with its own token: none of the admin's.
    let audit = of(&lines, "auditEvent");
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "key.rotate" || e["action"] == "key.download"),
        "{audit:?}"
    );
    assert!(audit.iter().all(|e| e["actorRole"] == "tenant"));
    assert!(audit.iter().all(|e| e["tenantId"] == d.tenant.as_str()));
    // Nothing of the other tenant.
    assert!(
        !text.contains(other.as_str()),
        "another tenant in the export"
    );

    // The other tenant's export is its own; without a tenant token there is none.
    let (other_text, other_lines) = export(&d, &other_token).await;
    assert!(!other_text.contains(d.tenant.as_str()));
    assert!(of(&other_lines, "login").is_empty());
    let anonymous = d.cp.request(Method::GET, EXPORT, None, None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let admin =
        d.cp.request(Method::GET, EXPORT, Some(&d.cp.admin_token), None)
            .await;
    assert_eq!(admin.status, 403, "{}", admin.text());
}
