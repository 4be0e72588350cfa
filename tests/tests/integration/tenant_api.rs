//! Every tenant endpoint, end to end, against real OpenBao and the real OpenSSH tools.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use keyward_tests::{ControlPlane, OpenBao, require_program, unique_tenant};
use reqwest::Method;
use serde_json::Value;

fn ssh_keygen() -> std::path::PathBuf {
    require_program(
        "ssh-keygen",
        "install Debian's openssh-client (`make test-deps` does)",
    )
}

/// `ssh-keygen` run on a private key file written with mode 0600, as a user would.
fn ssh_keygen_on_private_key(pem: &[u8], args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenant-ssh-key.pem");
    std::fs::write(&path, pem).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(ssh_keygen())
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `type base64` part of an OpenSSH public key line.
fn key_body(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn actions(events: &[Value]) -> Vec<(String, String)> {
    // Oldest first, for reading.
    events
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_tenant_endpoint_round_trips_against_openbao() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start(&bao).await;
    let tenant = unique_tenant("acme");
    let created = cp.create_tenant(&tenant).await;
    let token = cp.tenant_token(&tenant).await;

    // Both key sets exist in Vault with exactly the product's five fields, as version 1.
    for (kind, secret) in [("adminSsh", "admin_ssh"), ("tenantSsh", "tenant_ssh")] {
        let (data, version) = bao.read_kv(&format!("{tenant}/{secret}")).await.unwrap();
        assert_eq!(version, 1);
        let mut fields: Vec<&str> = data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "created_at",
                "last_rotated",
                "private_key",
                "public_key",
                "rotation_policy"
            ]
        );
        assert_eq!(data["rotation_policy"], "90_days");
        assert_eq!(data["created_at"], data["last_rotated"]);
        assert!(chrono::DateTime::parse_from_rfc3339(data["created_at"].as_str().unwrap()).is_ok());
        assert_eq!(data["public_key"], created["sshKeys"][kind]["publicKey"]);
        assert!(data["public_key"].as_str().unwrap().starts_with("ssh-rsa "));
        // The admin API shows metadata, never a private key.
        assert!(created["sshKeys"][kind].get("privateKey").is_none());
    }
    assert!(!created.to_string().contains("PRIVATE KEY"));

    // Credentials: public information only.
    let creds = cp.tenant_call(&token, Method::GET, "").await;
    assert_eq!(creds.status, 200, "{}", creds.text());
    let creds = creds.json();
    assert_eq!(creds["vpsIp"], "127.0.0.1");
    assert_eq!(creds["sshUsername"], "tenant");
    assert_eq!(creds["sshPort"], 2222);
    let fingerprint = creds["keyFingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint, created["sshKeys"]["tenantSsh"]["fingerprint"]);
    let last =
        chrono::DateTime::parse_from_rfc3339(creds["lastRotated"].as_str().unwrap()).unwrap();
    let next =
        chrono::DateTime::parse_from_rfc3339(creds["nextRotation"].as_str().unwrap()).unwrap();
    assert_eq!(next - last, chrono::Duration::days(90));
    assert_eq!(creds["downloaded"], false);

    // Download: once, as tenant-ssh-key.pem, never cached.
    let download = cp.tenant_call(&token, Method::POST, "/download").await;
    assert_eq!(download.status, 200, "{}", download.text());
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"tenant-ssh-key.pem\"")
    );
    assert_eq!(download.header("cache-control"), Some("no-store"));
    assert!(
        download
            .text()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    );
    // ssh-keygen reads it; its public half is Vault's public_key; its fingerprint is the API's.
    let (vault_data, _) = bao.read_kv(&format!("{tenant}/tenant_ssh")).await.unwrap();
    let derived_public = ssh_keygen_on_private_key(&download.body, &["-y", "-f"]);
    assert_eq!(
        key_body(&derived_public),
        key_body(vault_data["public_key"].as_str().unwrap())
    );
    let listed = ssh_keygen_on_private_key(&download.body, &["-l", "-f"]);
    assert!(listed.starts_with("4096 "), "{listed}");
    assert_eq!(listed.split_whitespace().nth(1), Some(fingerprint.as_str()));

    let again = cp.tenant_call(&token, Method::POST, "/download").await;
    again.assert_problem(410, "key_already_downloaded");
    assert!(
        again.json()["detail"]
            .as_str()
            .unwrap()
            .contains("regenerate")
    );
    assert_eq!(
        cp.tenant_call(&token, Method::GET, "").await.json()["downloaded"],
        true
    );

    // Rotate: a new key; the old one stays valid for the grace period.
    let rotated = cp.tenant_call(&token, Method::POST, "/rotate").await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let rotated = rotated.json();
    assert_eq!(rotated["status"], "success");
    let rotated_fp = rotated["newKeyFingerprint"].as_str().unwrap().to_owned();
    assert_ne!(rotated_fp, fingerprint);
    let creds = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(creds["keyFingerprint"], rotated_fp.as_str());
    assert_eq!(creds["previousKeyFingerprint"], fingerprint.as_str());
    let grace_until =
        chrono::DateTime::parse_from_rfc3339(creds["previousKeyValidUntil"].as_str().unwrap())
            .unwrap();
    let rotated_at =
        chrono::DateTime::parse_from_rfc3339(creds["lastRotated"].as_str().unwrap()).unwrap();
    assert_eq!(grace_until - rotated_at, chrono::Duration::hours(24));
    let (data, version) = bao.read_kv(&format!("{tenant}/tenant_ssh")).await.unwrap();
    assert_eq!(version, 2, "one rotation is one KV version");
    assert_eq!(
        data["created_at"], vault_data["created_at"],
        "created_at stays"
    );
    assert!(data["last_rotated"].as_str() >= vault_data["last_rotated"].as_str());
    // The new generation can be downloaded once.
    let download = cp.tenant_call(&token, Method::POST, "/download").await;
    assert_eq!(download.status, 200);
    let listed = ssh_keygen_on_private_key(&download.body, &["-l", "-f"]);
    assert_eq!(listed.split_whitespace().nth(1), Some(rotated_fp.as_str()));

    // Regenerate: a new key, and no grace for the old one.
    let regenerated = cp
        .tenant_call(&token, Method::POST, "/regenerate")
        .await
        .json();
    let regenerated_fp = regenerated["newKeyFingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(regenerated_fp, rotated_fp);
    let creds = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(creds["keyFingerprint"], regenerated_fp.as_str());
    assert!(creds["previousKeyFingerprint"].is_null());

    // Revoke: nothing valid until regenerate.
    let revoked = cp.tenant_call(&token, Method::POST, "/revoke").await;
    assert_eq!(revoked.status, 200);
    assert_eq!(revoked.json()["message"], "SSH access revoked immediately.");
    let creds = cp.tenant_call(&token, Method::GET, "").await.json();
    assert_eq!(creds["keyStatus"], "revoked");
    assert!(creds["keyFingerprint"].is_null());
    cp.tenant_call(&token, Method::POST, "/download")
        .await
        .assert_problem(409, "key_revoked");
    cp.tenant_call(&token, Method::POST, "/rotate")
        .await
        .assert_problem(409, "key_revoked");
    let restored = cp.tenant_call(&token, Method::POST, "/regenerate").await;
    assert_eq!(restored.status, 200);
    assert_eq!(
        cp.tenant_call(&token, Method::GET, "").await.json()["keyStatus"],
        "active"
    );

    // Every operation is in the audit log, in order, with the caller's address.
    let events = cp.audit_of(&tenant).await;
    let expected: Vec<(String, String)> = [
        ("tenant.create", "success"),
        ("token.issue", "success"),
        ("key.download", "success"),
        ("key.download_refused", "refused"),
        ("key.rotate", "success"),
        ("key.download", "success"),
        ("key.regenerate", "success"),
        ("key.revoke", "success"),
        ("key.download_refused", "refused"),
        ("key.rotate", "refused"),
        ("key.regenerate", "success"),
    ]
    .iter()
    .map(|(a, o)| ((*a).to_owned(), (*o).to_owned()))
    .collect();
    assert_eq!(actions(&events), expected);
    for event in &events {
        if event["actorRole"] == "tenant" {
            assert_eq!(event["sourceAddr"], "127.0.0.1", "{event}");
        }
    }
    let verdict = cp.admin_get("/api/v1/admin/audit/verify").await.json();
    assert_eq!(verdict["ok"], true, "{verdict}");
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, keyward_tests::Database::Sqlite).await;
    let (t1, t2) = (unique_tenant("one"), unique_tenant("two"));
    cp.create_tenant(&t1).await;
    let t2_created = cp.create_tenant(&t2).await;
    let token1 = cp.tenant_token(&t1).await;

    // t1's token on t2's resources: 404, as if t2 did not exist.
    for path in [
        format!("/api/v1/admin/secrets/tenant/{t2}"),
        "/api/v1/admin/secrets/tenant/no-such-tenant".to_owned(),
    ] {
        cp.request(Method::GET, &path, Some(&token1), None)
            .await
            .assert_problem(404, "tenant_not_found");
    }
    cp.request(
        Method::POST,
        &format!("/api/v1/admin/tenants/{t2}/keys/tenant/revoke"),
        Some(&token1),
        None,
    )
    .await
    .assert_problem(404, "tenant_not_found");
    // On its own tenant's admin view, and on admin lists: forbidden.
    cp.request(
        Method::GET,
        &format!("/api/v1/admin/secrets/tenant/{t1}"),
        Some(&token1),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    cp.request(
        Method::GET,
        "/api/v1/admin/secrets/tenants",
        Some(&token1),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    // t1's credentials are t1's.
    let creds = cp.tenant_call(&token1, Method::GET, "").await.json();
    assert_ne!(
        creds["keyFingerprint"],
        t2_created["sshKeys"]["tenantSsh"]["fingerprint"]
    );
    // t2 is untouched by t1's revoke.
    cp.tenant_call(&token1, Method::POST, "/revoke").await;
    let token2 = cp.tenant_token(&t2).await;
    assert_eq!(
        cp.tenant_call(&token2, Method::GET, "").await.json()["keyStatus"],
        "active"
    );
    // An admin token is not a tenant token.
    cp.tenant_call(&cp.admin_token, Method::GET, "")
        .await
        .assert_problem(403, "forbidden");
}

#[tokio::test]
async fn revoked_api_tokens_stop_working_at_once() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, keyward_tests::Database::Sqlite).await;
    let tenant = unique_tenant("tok");
    cp.create_tenant(&tenant).await;
    let issued = cp
        .admin_post(
            "/api/v1/admin/tokens",
            serde_json::json!({ "role": "tenant", "tenantId": tenant, "label": "ci" }),
        )
        .await
        .json();
    let token = issued["token"].as_str().unwrap();
    let token_id = issued["tokenId"].as_str().unwrap();
    assert_eq!(cp.tenant_call(token, Method::GET, "").await.status, 200);

    let details = cp
        .admin_get(&format!("/api/v1/admin/secrets/tenant/{tenant}"))
        .await
        .json();
    assert_eq!(details["apiKeys"][0]["tokenId"], token_id);
    assert!(details["apiKeys"][0].get("token").is_none());
    assert_eq!(
        details["sshKeys"]["tenantSsh"]["vaultVersions"]["currentVersion"],
        1
    );
    assert!(details["smtpCredentials"].is_null());
    assert!(!details.to_string().contains("PRIVATE KEY"));

    let revoked = cp
        .request(
            Method::DELETE,
            &format!("/api/v1/admin/tokens/{token_id}"),
            Some(&cp.admin_token),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    cp.tenant_call(token, Method::GET, "")
        .await
        .assert_problem(401, "invalid_token");
    cp.request(
        Method::DELETE,
        &format!("/api/v1/admin/tokens/{token_id}"),
        Some(&cp.admin_token),
        None,
    )
    .await
    .assert_problem(404, "token_not_found");
    // The admin's read of the details and both token events are audited.
    let actions: Vec<String> = cp
        .audit_of(&tenant)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(actions.contains(&"tenant.read_secrets".to_owned()));
    assert!(actions.contains(&"token.revoke".to_owned()));
}
