//! SSH certificates end to end: OpenBao's SSH engine as keyward's CA, the control plane's state
//! carrying its keys and each managed user's principal, the real agent writing sshd's files, and
//! Debian's sshd judging real `ssh` logins with certificates.

use std::time::Duration;

use keyward_common::KeyAlgorithm;
use keyward_tests::openbao::SSH_USER_ROLE;
use keyward_tests::{Deployment, OwnKey, Sshd, eventually};
use reqwest::Method;
use serde_json::json;

type Holder = OwnKey;

/// Has OpenBao sign the key for `principal` (as root, the way an operator would) and puts
/// the certificate where ssh finds it.
async fn certify(holder: &Holder, d: &Deployment, principal: &str) {
    let signed = d
        .bao
        .root(
            Method::POST,
            &format!("ssh/sign/{SSH_USER_ROLE}"),
            Some(json!({
                "public_key": holder.public,
                "cert_type": "user",
                "key_id": format!("test:{principal}"),
                "valid_principals": principal,
                "ttl": "600s",
            })),
        )
        .await;
    holder.hold_certificate(signed["data"]["signed_key"].as_str().unwrap());
}

#[tokio::test]
async fn a_certificate_from_the_vault_ca_logs_in_only_as_the_user_its_principal_names() {
    let d = Deployment::start_with_ssh_ca(KeyAlgorithm::Ed25519).await;
    // The agent wrote the CA's key and each user's principal from the signed state.
    let files = d.sshd.files_dir.clone();
    eventually(
        "the CA's key in sshd's trusted keys",
        std::time::Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(files.join("trusted_user_ca_keys")).ok()?;
            text.starts_with("ssh-ed25519 ").then_some(())
        },
    )
    .await;
    let tenant_principal = format!("keyward:{}:tenant", d.tenant);
    let admin_principal = format!("keyward:{}:admin", d.tenant);
    assert_eq!(
        std::fs::read_to_string(files.join("principals").join(d.user.name.as_str())).unwrap(),
        format!("{tenant_principal}\n")
    );
    assert_eq!(
        std::fs::read_to_string(files.join("principals").join(d.admin.name.as_str())).unwrap(),
        format!("{admin_principal}\n")
    );

    let holder = Holder::new();
    certify(&holder, &d, &tenant_principal).await;
    let (ok, who) = d
        .sshd
        .login_async(&holder.key, &d.user.name, "id -un")
        .await;
    assert!(ok, "certificate refused; sshd log:\n{}", d.sshd.log_text());
    assert_eq!(who, d.user.name.as_str());
    assert!(
        !d.sshd
            .login_async(&holder.key, &d.admin.name, "true")
            .await
            .0,
        "a tenant-user certificate logged in as the admin user"
    );

    // Another tenant's principal, or the user's own name: refused.
    for other in ["keyward:someone-else:tenant", d.user.name.as_str()] {
        certify(&holder, &d, other).await;
        assert!(
            !d.sshd
                .login_async(&holder.key, &d.user.name, "true")
                .await
                .0,
            "a certificate for {other:?} logged in"
        );
    }

    // The admin principal logs in as the admin user.
    certify(&holder, &d, &admin_principal).await;
    assert!(
        d.sshd
            .login_async(&holder.key, &d.admin.name, "true")
            .await
            .0
    );
}

/// The CA keys in the host's sshd file, one per line.
fn trusted(d: &Deployment) -> Vec<String> {
    std::fs::read_to_string(d.sshd.files_dir.join("trusted_user_ca_keys"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the host trusts exactly `want` (in any order), logging in with `holder` at every
/// look: it must never fail meanwhile.
async fn trusts_while_logging_in(d: &Deployment, want: &[&str], holder: &Holder) {
    eventually(
        "the host's trusted CA keys",
        Duration::from_secs(30),
        || async {
            let ok = d
                .sshd
                .login_async(&holder.key, &d.user.name, "true")
                .await
                .0;
            assert!(
                ok,
                "a login failed during the CA rotation; sshd log:\n{}",
                d.sshd.log_text()
            );
            let mut have = trusted(d);
            have.sort();
            let mut want: Vec<String> = want.iter().map(|k| (*k).to_owned()).collect();
            want.sort();
            (have == want).then_some(())
        },
    )
    .await;
}

/// The operator's three steps of packaging/vault/README.md: add the next issuer (hosts trust
/// both), make it the default (new certificates come from it), delete the old one (hosts stop
/// trusting it). Certificates keep logging in at every step; only one from the deleted CA stops.
#[tokio::test]
async fn a_ca_rotation_loses_no_login_and_ends_with_the_old_ca_untrusted() {
    let d = Deployment::start_with_ssh_ca(KeyAlgorithm::Ed25519).await;
    let principal = format!("keyward:{}:tenant", d.tenant);
    let issuers = d.bao.root(Method::GET, "ssh/issuers?list=true", None).await;
    let old_id = issuers["data"]["keys"][0].as_str().unwrap().to_owned();
    let old_key = issuers["data"]["key_info"][&old_id]["public_key"]
        .as_str()
        .unwrap()
        .trim()
        .to_owned();
    let from_old = Holder::new();
    certify(&from_old, &d, &principal).await;
    trusts_while_logging_in(&d, &[&old_key], &from_old).await;

    let host = format!("/api/v1/admin/hosts/{}", d.agent.host_id);
    let before = d.cp.admin_get(&host).await.json()["desiredGeneration"]
        .as_i64()
        .unwrap();
    let next_key = d.bao.add_ssh_issuer("next").await;
    trusts_while_logging_in(&d, &[&old_key, &next_key], &from_old).await;
    // The new trust is a new generation: the host is in sync only once it applied it, and the
    // change is in the audit log.
    eventually("the host in sync at a newer generation", WITHIN, || async {
        let now = d.cp.admin_get(&host).await.json();
        (now["desiredGeneration"].as_i64()? > before && now["status"] == "in_sync").then_some(())
    })
    .await;
    let trust =
        d.cp.admin_get("/api/v1/admin/audit?action=ssh_ca.trust&limit=5")
            .await
            .json();
    assert!(
        trust["events"][0]["detail"]["caKeys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| *k == next_key.as_str()),
        "{trust}"
    );

    d.bao
        .root(
            Method::POST,
            "ssh/config/issuers",
            Some(json!({ "default": "next" })),
        )
        .await;
    let from_next = Holder::new();
    certify(&from_next, &d, &principal).await;
    assert!(
        d.sshd
            .login_async(&from_next.key, &d.user.name, "true")
            .await
            .0
    );
    assert!(
        d.sshd
            .login_async(&from_old.key, &d.user.name, "true")
            .await
            .0
    );

    d.bao
        .root(Method::DELETE, &format!("ssh/issuer/{old_id}"), None)
        .await;
    trusts_while_logging_in(&d, &[&next_key], &from_next).await;
    assert!(
        !d.sshd
            .login_async(&from_old.key, &d.user.name, "true")
            .await
            .0,
        "a certificate of the deleted CA still logged in"
    );
}

/// How long a revocation may take to reach the host, at most (it takes milliseconds).
const WITHIN: Duration = Duration::from_secs(20);

/// `POST /api/v1/tenant/infrastructure/ssh-certificates` with the tenant's token.
async fn tenant_issue(d: &Deployment, body: serde_json::Value) -> keyward_tests::Reply {
    d.cp.request(
        Method::POST,
        "/api/v1/tenant/infrastructure/ssh-certificates",
        Some(&d.tenant_token),
        Some(body),
    )
    .await
}

/// Has keyward certify the key (the tenant's own REST call) and puts the certificate where ssh
/// finds it; the answer.
async fn certify_over_rest(holder: &Holder, d: &Deployment) -> serde_json::Value {
    let reply = tenant_issue(
        d,
        json!({ "publicKey": holder.public, "validitySeconds": 600, "reason": "deploy the site" }),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let issued = reply.json();
    holder.hold_certificate(issued["certificate"].as_str().unwrap());
    issued
}

/// `POST .../ssh-certificates/{id}/revoke` with a tenant's token.
async fn tenant_revoke(d: &Deployment, token: &str, id: &str) -> keyward_tests::Reply {
    d.cp.request(
        Method::POST,
        &format!("/api/v1/tenant/infrastructure/ssh-certificates/{id}/revoke"),
        Some(token),
        None,
    )
    .await
}

/// `GET .../ssh-certificates` with a tenant's token: the list.
async fn tenant_certificates(d: &Deployment, token: &str) -> serde_json::Value {
    let reply =
        d.cp.request(
            Method::GET,
            "/api/v1/tenant/infrastructure/ssh-certificates",
            Some(token),
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["certificates"].clone()
}

async fn logs_in(d: &Deployment, holder: &Holder) -> bool {
    d.sshd
        .login_async(&holder.key, &d.user.name, "true")
        .await
        .0
}

#[tokio::test]
async fn a_certificate_issued_over_rest_logs_in_and_revoking_it_refuses_it_and_ends_only_its_sessions()
 {
    let d = Deployment::start_with_ssh_ca(KeyAlgorithm::Ed25519).await;
    eventually("the CA trusted on the host", WITHIN, || async {
        (!trusted(&d).is_empty()).then_some(())
    })
    .await;
    let (a, b) = (Holder::new(), Holder::new());
    let issued_a = certify_over_rest(&a, &d).await;
    let id_a = format!("keyward:{}:tenant:1", d.tenant);
    assert_eq!(issued_a["certificateId"], id_a.as_str());
    assert_eq!(issued_a["kind"], "tenant");
    assert_eq!(issued_a["user"], d.user.name.as_str());
    assert_eq!(issued_a["status"], "active");
    assert_eq!(issued_a["reason"], "deploy the site");
    assert_eq!(
        issued_a["principals"],
        json!([format!("keyward:{}:tenant", d.tenant)])
    );
    assert!(
        issued_a.get("issuedBy").is_none(),
        "a tenant is not shown token ids"
    );
    let issued_b = certify_over_rest(&b, &d).await;
    assert_eq!(
        issued_b["certificateId"],
        format!("keyward:{}:tenant:2", d.tenant)
    );
    assert!(logs_in(&d, &a).await, "sshd log:\n{}", d.sshd.log_text());
    assert!(logs_in(&d, &b).await);
    let mut session_a = d.sshd.open_session_async(&a.key, &d.user.name).await;
    let mut session_b = d.sshd.open_session_async(&b.key, &d.user.name).await;

    // Logins are attributed to the certificate by its key id.
    let logins = format!("/api/v1/admin/audit/logins?tenantId={}", d.tenant);
    let event = eventually("a login by certificate A recorded", WITHIN, || async {
        let page = d.cp.admin_get(&logins).await.json();
        page["events"]
            .as_array()?
            .iter()
            .find(|e| e["certificateId"] == id_a.as_str() && e["outcome"] == "accepted")
            .cloned()
    })
    .await;
    assert_eq!(event["certificateSerial"], issued_a["serial"]);
    assert_eq!(event["keyKind"], "tenant");

    let reply = tenant_revoke(&d, &d.tenant_token, &id_a).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "revoked");
    // sshd refuses it (the host's KRL), and the session it opened ends; B's stays.
    Sshd::wait_session_end(&mut session_a, WITHIN).await;
    eventually("certificate A refused", WITHIN, || async {
        (!logs_in(&d, &a).await).then_some(())
    })
    .await;
    assert!(logs_in(&d, &b).await, "another certificate stopped working");
    assert!(
        session_b.try_wait().unwrap().is_none(),
        "the session of a certificate that was not revoked ended"
    );
    let krl = std::fs::read(d.sshd.files_dir.join("revoked_keys")).unwrap();
    assert!(
        krl.windows(id_a.len()).any(|w| w == id_a.as_bytes()),
        "the key id is in the host's revocation list"
    );
    // Revoking again changes nothing and still answers the record.
    let again = tenant_revoke(&d, &d.tenant_token, &id_a).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["revokedAt"], reply.json()["revokedAt"]);

    let listed = tenant_certificates(&d, &d.tenant_token).await;
    let statuses: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["certificateId"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
            )
        })
        .collect();
    let id_b = issued_b["certificateId"].as_str().unwrap();
    assert_eq!(statuses, [(id_b, "active"), (id_a.as_str(), "revoked")]);
    let actions: Vec<String> =
        d.cp.audit_of(&d.tenant)
            .await
            .iter()
            .filter_map(|e| e["action"].as_str().map(str::to_owned))
            .filter(|a| a.starts_with("certificate."))
            .collect();
    assert_eq!(
        actions,
        [
            "certificate.revoke",
            "certificate.issue",
            "certificate.issue"
        ]
    );
    // Revoking the user's key set revokes its certificates with it: a regenerate later does
    // not bring them back.
    d.tenant_op("/revoke").await;
    let listed = tenant_certificates(&d, &d.tenant_token).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "revoked"),
        "{listed}"
    );
    d.tenant_op("/regenerate").await;
    assert!(
        !logs_in(&d, &b).await,
        "a certificate came back with the regenerated key"
    );
    drop(session_b);
}

#[tokio::test]
async fn certificate_requests_are_checked_and_tenants_keep_to_their_own() {
    let d = Deployment::start_with_ssh_ca(KeyAlgorithm::Ed25519).await;
    let holder = Holder::new();
    // Bad requests: clear problems, nothing signed.
    let weak_rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC9Flzq3bFa2K4QDxHzDWXD2KLWCKhutgHAoVWlyVIWJo542xKfztCWUQo2jpiRQOFoLgmiEV4msJdrTsjZ/8gCOXioKdE+gaOJcRzXG25XPw9cSgUDIgGw2eq81eQ+RxuuHLhShjVpJrhbrW9uXmKh3mPag+M48AQ8CB3smQ6y8/l5exVAy4xfg7ISDq/qlmeQFOseQsEwp7UuEt1oS0oeIZunmyf1uFEiKr7jEZbrlcZ9nDLV6MUEnsLJcF9ReLYr1Hqo6AzYw/LdSkVbu9yauP6k2Cp2DZzQAmiQXL5fqYrbMdzP8DR8uh29MxdUl3vBwSfe+V88xvVjY9riOt7n";
    for (body, why) in [
        (
            json!({ "publicKey": weak_rsa }),
            "RSA keys need 3072 to 16384 bits",
        ),
        (
            json!({ "publicKey": "ssh-ed25519 !!" }),
            "not an OpenSSH public key",
        ),
        (
            json!({ "publicKey": holder.public, "validitySeconds": 30 }),
            "out of bounds",
        ),
        (
            json!({ "publicKey": holder.public, "validitySeconds": 86400 }),
            "out of bounds",
        ),
        (
            json!({ "publicKey": holder.public, "reason": "a\nb" }),
            "control characters",
        ),
        (
            json!({ "publicKey": holder.public, "reason": "fix \u{202E}gnp.exe" }),
            "bidirectional controls",
        ),
        (
            json!({ "publicKey": holder.public, "kind": "admin" }),
            "unknown field",
        ),
    ] {
        let reply = tenant_issue(&d, body).await;
        reply.assert_problem(400, "invalid_body");
        assert!(
            reply.json()["detail"].as_str().unwrap().contains(why),
            "{}",
            reply.text()
        );
    }
    // A key keyward replaced is denied for good, certified or not.
    let managed = d.download().await;
    d.tenant_op("/regenerate").await;
    let out = std::process::Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(&managed.path)
        .output()
        .unwrap();
    let replaced = String::from_utf8(out.stdout).unwrap();
    tenant_issue(&d, json!({ "publicKey": replaced.trim() }))
        .await
        .assert_problem(409, "key_denied");

    // An admin certifies a key for the admin user; the tenant sees it (not who asked) and
    // cannot revoke it. Another tenant sees nothing of it.
    let reply =
        d.cp.admin_post(
            &format!("/api/v1/admin/tenants/{}/ssh-certificates", d.tenant),
            json!({ "kind": "admin", "publicKey": holder.public, "reason": "kernel update" }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let admin_cert = reply.json();
    let id = admin_cert["certificateId"].as_str().unwrap().to_owned();
    assert_eq!(id, format!("keyward:{}:admin:1", d.tenant));
    assert_eq!(admin_cert["user"], d.admin.name.as_str());
    assert!(admin_cert["issuedBy"].is_string());
    let seen = tenant_certificates(&d, &d.tenant_token).await;
    assert_eq!(seen[0]["certificateId"], id.as_str());
    assert_eq!(seen[0]["reason"], "kernel update");
    assert!(seen[0].get("issuedBy").is_none());
    tenant_revoke(&d, &d.tenant_token, &id)
        .await
        .assert_problem(403, "forbidden");
    d.cp.create_tenant("other-co").await;
    let other = d.cp.tenant_token("other-co").await;
    tenant_revoke(&d, &other, &id)
        .await
        .assert_problem(404, "certificate_not_found");
    tenant_revoke(&d, &other, "not-an-id")
        .await
        .assert_problem(404, "certificate_not_found");
    let theirs = tenant_certificates(&d, &other).await;
    assert_eq!(theirs, json!([]));
    d.cp.request(
        Method::GET,
        &format!("/api/v1/admin/tenants/{}/ssh-certificates", d.tenant),
        Some(&other),
        None,
    )
    .await
    .assert_problem(404, "tenant_not_found");
    // The admin revokes it; the host's revocation list gets it.
    let revoked =
        d.cp.admin_post(
            &format!("/api/v1/admin/ssh-certificates/{id}/revoke"),
            json!({}),
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert!(revoked.json()["revokedBy"].is_string());
    let krl = d.sshd.files_dir.join("revoked_keys");
    eventually(
        "the admin certificate in the host's list",
        WITHIN,
        || async {
            let bytes = std::fs::read(&krl).ok()?;
            bytes
                .windows(id.len())
                .any(|w| w == id.as_bytes())
                .then_some(())
        },
    )
    .await;

    // A tenant holds at most `certificates.max_valid_per_tenant` (100) within their validity at
    // once, revoked ones included (they stay in the hosts' lists until they expire): the admin
    // one revoked above counts.
    for n in 0..99 {
        let reply = tenant_issue(&d, json!({ "publicKey": holder.public })).await;
        assert_eq!(reply.status, 201, "certificate {n}: {}", reply.text());
    }
    tenant_issue(&d, json!({ "publicKey": holder.public }))
        .await
        .assert_problem(429, "quota_exceeded");
}
