//! The shipped Vault policies (`packaging/vault/*.hcl`) against a real OpenBao: each allows what
//! its holder needs and denies the rest, and the control-plane policy alone is enough for a real
//! control plane that logs in with AppRole.

use std::path::PathBuf;

use keyward_common::KeyAlgorithm;
use keyward_server::config::{AppRoleConfig, Config, KeysConfig};
use keyward_server::server;
use keyward_tests::openbao::ROOT_TOKEN;
use keyward_tests::{OpenBao, unique_tenant, workspace_root};
use reqwest::Method;
use serde_json::{Value, json};

const CONTROL_PLANE: &str = "keyward-control-plane";
const ADMIN: &str = "keyward-admin";
const TENANT: &str = "keyward-tenant";

fn policy_file(name: &str) -> String {
    let path = workspace_root().join(format!("packaging/vault/{name}.hcl"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads one shipped policy into OpenBao under its own name.
async fn load_policy(bao: &OpenBao, name: &str) {
    bao.put_policy(name, &policy_file(name)).await;
}

/// A token with exactly `policies` (no `default` policy), as root.
async fn token_with(bao: &OpenBao, policies: &[&str]) -> String {
    let created = bao
        .root(
            Method::POST,
            "auth/token/create",
            Some(json!({ "policies": policies, "no_default_policy": true })),
        )
        .await;
    created["auth"]["client_token"].as_str().unwrap().to_owned()
}

/// A key set as the control plane writes it.
fn key_set(marker: &str) -> Value {
    json!({
        "private_key": format!("-----BEGIN OPENSSH PRIVATE KEY----- {marker}"),
        "public_key": format!("ssh-ed25519 AAAA {marker}"),
        "created_at": "2025-01-01T00:00:00Z",
        "last_rotated": "2025-01-01T00:00:00Z",
        "rotation_policy": "90_days",
    })
}

/// Writes `vps/{path}` as root and returns the new version.
async fn root_write(bao: &OpenBao, path: &str, data: Value) -> u64 {
    let written = bao
        .root(
            Method::POST,
            &format!("vps/data/{path}"),
            Some(json!({ "data": data })),
        )
        .await;
    written["data"]["version"].as_u64().unwrap()
}

/// Asserts `token` is refused `method path` with 403 permission denied.
async fn assert_denied(
    bao: &OpenBao,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) {
    let (status, json) = bao.api(method.clone(), path, token, body).await;
    assert_eq!(
        status, 403,
        "{method} {path} should be denied, got {status}: {json}"
    );
}

/// Asserts `token` may do `method path` (any 2xx); returns the body.
async fn assert_allowed(
    bao: &OpenBao,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (status, json) = bao.api(method.clone(), path, token, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path} should be allowed, got {status}: {json}"
    );
    json
}

/// A KV v2 PATCH, which OpenBao accepts only as `application/merge-patch+json` (it answers 415,
/// before any policy check, to `application/json`).
async fn merge_patch(bao: &OpenBao, token: &str, path: &str, body: Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .patch(format!("{}/v1/{path}", bao.addr))
        .header("X-Vault-Token", token)
        .header("Content-Type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn list() -> Method {
    Method::from_bytes(b"LIST").unwrap()
}

/// An identity entity with `tenant_id` metadata and the tenant policy, reachable through a
/// userpass user of the same name; returns a token from logging in as that user.
async fn tenant_login(bao: &OpenBao, accessor: &str, tenant: &str) -> String {
    let entity = bao
        .root(
            Method::POST,
            "identity/entity",
            Some(json!({
                "name": format!("tenant-{tenant}"),
                "metadata": { "tenant_id": tenant },
                "policies": [TENANT],
            })),
        )
        .await;
    let entity_id = entity["data"]["id"].as_str().unwrap().to_owned();
    let password = format!("pw-{tenant}-{:016x}", rand::random::<u64>());
    bao.root(
        Method::POST,
        &format!("auth/userpass/users/{tenant}"),
        Some(json!({ "password": password })),
    )
    .await;
    bao.root(
        Method::POST,
        "identity/entity-alias",
        Some(json!({ "name": tenant, "canonical_id": entity_id, "mount_accessor": accessor })),
    )
    .await;
    let login = bao
        .root(
            Method::POST,
            &format!("auth/userpass/login/{tenant}"),
            Some(json!({ "password": password })),
        )
        .await;
    assert_eq!(
        login["auth"]["entity_id"], entity_id,
        "login not bound to the entity: {login}"
    );
    let identity_policies = login["auth"]["identity_policies"].clone();
    assert!(
        identity_policies
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == TENANT)),
        "the token does not carry {TENANT} from its entity: {login}"
    );
    login["auth"]["client_token"].as_str().unwrap().to_owned()
}

async fn enable_auth(bao: &OpenBao, path: &str, kind: &str) -> String {
    bao.root(
        Method::POST,
        &format!("sys/auth/{path}"),
        Some(json!({ "type": kind })),
    )
    .await;
    let mounts = bao.root(Method::GET, "sys/auth", None).await;
    mounts["data"][format!("{path}/")]["accessor"]
        .as_str()
        .unwrap_or_else(|| panic!("no accessor for {path}/ in {mounts}"))
        .to_owned()
}

#[tokio::test]
async fn tenant_policy_reads_only_its_own_tenant_key() {
    let bao = OpenBao::start().await;
    load_policy(&bao, TENANT).await;
    let accessor = enable_auth(&bao, "userpass", "userpass").await;
    let t1 = tenant_login(&bao, &accessor, "t1").await;
    let t2 = tenant_login(&bao, &accessor, "t2").await;
    for tenant in ["t1", "t2"] {
        for kind in ["admin_ssh", "tenant_ssh"] {
            root_write(
                &bao,
                &format!("{tenant}/{kind}"),
                key_set(&format!("{tenant}-{kind}-v1")),
            )
            .await;
        }
    }
    root_write(&bao, "t1/tenant_ssh", key_set("t1-tenant_ssh-v2")).await;

    // Its own tenant key: the current version, an earlier one, and the version history.
    let own = assert_allowed(&bao, &t1, Method::GET, "vps/data/t1/tenant_ssh", None).await;
    assert_eq!(own["data"]["data"], key_set("t1-tenant_ssh-v2"), "{own}");
    assert_eq!(own["data"]["metadata"]["version"], 2, "{own}");
    let earlier = assert_allowed(
        &bao,
        &t1,
        Method::GET,
        "vps/data/t1/tenant_ssh?version=1",
        None,
    )
    .await;
    assert_eq!(earlier["data"]["data"], key_set("t1-tenant_ssh-v1"));
    let meta = assert_allowed(&bao, &t1, Method::GET, "vps/metadata/t1/tenant_ssh", None).await;
    assert_eq!(meta["data"]["current_version"], 2, "{meta}");
    // The same policy gives t2 its own key.
    let other = assert_allowed(&bao, &t2, Method::GET, "vps/data/t2/tenant_ssh", None).await;
    assert_eq!(other["data"]["data"], key_set("t2-tenant_ssh-v1"));

    // keyward's admin key to its own VPS, and everything of t2's.
    for path in [
        "vps/data/t1/admin_ssh",
        "vps/metadata/t1/admin_ssh",
        "vps/data/t2/tenant_ssh",
        "vps/metadata/t2/tenant_ssh",
        "vps/data/t2/admin_ssh",
        "vps/metadata/t2/admin_ssh",
        "secret/data/t1/tenant_ssh",
    ] {
        assert_denied(&bao, &t1, Method::GET, path, None).await;
    }
    // Writing, deleting or destroying its own key, or rewriting its metadata.
    let write = json!({ "options": { "cas": 2 }, "data": key_set("forged") });
    assert_denied(
        &bao,
        &t1,
        Method::POST,
        "vps/data/t1/tenant_ssh",
        Some(write.clone()),
    )
    .await;
    assert_denied(
        &bao,
        &t1,
        Method::POST,
        "vps/data/t2/tenant_ssh",
        Some(write),
    )
    .await;
    assert_denied(&bao, &t1, Method::DELETE, "vps/data/t1/tenant_ssh", None).await;
    let versions = json!({ "versions": [1] });
    for op in ["delete", "undelete", "destroy"] {
        let path = format!("vps/{op}/t1/tenant_ssh");
        assert_denied(&bao, &t1, Method::POST, &path, Some(versions.clone())).await;
    }
    assert_denied(
        &bao,
        &t1,
        Method::POST,
        "vps/metadata/t1/tenant_ssh",
        Some(json!({ "max_versions": 1 })),
    )
    .await;
    assert_denied(
        &bao,
        &t1,
        Method::DELETE,
        "vps/metadata/t1/tenant_ssh",
        None,
    )
    .await;
    // Listing tenants or its own secrets.
    assert_denied(&bao, &t1, list(), "vps/metadata/", None).await;
    assert_denied(&bao, &t1, list(), "vps/metadata/t1/", None).await;
    // Nothing was changed by the refused calls.
    assert_eq!(
        bao.read_kv("t1/tenant_ssh").await,
        Some((key_set("t1-tenant_ssh-v2"), 2))
    );

    // A token with the policy but no entity (so no `tenant_id`) reaches nothing: the templated
    // paths are dropped, not filled in with an empty tenant id.
    let orphan = token_with(&bao, &[TENANT]).await;
    for path in ["vps/data/t1/tenant_ssh", "vps/data//tenant_ssh"] {
        assert_denied(&bao, &orphan, Method::GET, path, None).await;
    }
}

#[tokio::test]
async fn control_plane_policy_allows_key_writes_and_nothing_destructive() {
    let bao = OpenBao::start().await;
    load_policy(&bao, CONTROL_PLANE).await;
    let cp = token_with(&bao, &[CONTROL_PLANE]).await;

    // Everything the control plane does, for both kinds.
    for kind in ["admin_ssh", "tenant_ssh"] {
        let data_path = format!("vps/data/t1/{kind}");
        let meta_path = format!("vps/metadata/t1/{kind}");
        let (status, _) = bao.api(Method::GET, &meta_path, &cp, None).await;
        assert_eq!(status, 404, "metadata of a missing secret must read as 404");
        for (cas, marker) in [(0, "v1"), (1, "v2")] {
            let written = assert_allowed(
                &bao,
                &cp,
                Method::POST,
                &data_path,
                Some(json!({ "options": { "cas": cas }, "data": key_set(marker) })),
            )
            .await;
            assert_eq!(written["data"]["version"], cas + 1, "{written}");
        }
        // A stale check-and-set is refused by KV, not by the policy.
        let (status, stale) = bao
            .api(
                Method::POST,
                &data_path,
                &cp,
                Some(json!({ "options": { "cas": 1 }, "data": key_set("stale") })),
            )
            .await;
        assert_eq!(status, 400, "{stale}");
        assert!(stale.to_string().contains("check-and-set"), "{stale}");

        let current = assert_allowed(&bao, &cp, Method::GET, &data_path, None).await;
        assert_eq!(current["data"]["data"], key_set("v2"));
        let first = assert_allowed(
            &bao,
            &cp,
            Method::GET,
            &format!("{data_path}?version=1"),
            None,
        )
        .await;
        assert_eq!(first["data"]["data"], key_set("v1"));
        let meta = assert_allowed(&bao, &cp, Method::GET, &meta_path, None).await;
        assert_eq!(meta["data"]["current_version"], 2, "{meta}");
    }
    // Its own token.
    let me = assert_allowed(&bao, &cp, Method::GET, "auth/token/lookup-self", None).await;
    assert_eq!(me["data"]["policies"], json!([CONTROL_PLANE]), "{me}");
    assert_allowed(
        &bao,
        &cp,
        Method::POST,
        "auth/token/renew-self",
        Some(json!({})),
    )
    .await;

    // Nothing that loses history.
    let versions = json!({ "versions": [1] });
    for kind in ["admin_ssh", "tenant_ssh"] {
        assert_denied(
            &bao,
            &cp,
            Method::DELETE,
            &format!("vps/data/t1/{kind}"),
            None,
        )
        .await;
        for op in ["delete", "undelete", "destroy"] {
            let path = format!("vps/{op}/t1/{kind}");
            assert_denied(&bao, &cp, Method::POST, &path, Some(versions.clone())).await;
        }
        // Deleting the metadata is offboarding's (below); rewriting it is never allowed.
        let meta_path = format!("vps/metadata/t1/{kind}");
        assert_denied(
            &bao,
            &cp,
            Method::POST,
            &meta_path,
            Some(json!({ "max_versions": 1 })),
        )
        .await;
        let (status, body) = merge_patch(
            &bao,
            &cp,
            &format!("vps/data/t1/{kind}"),
            json!({ "data": { "public_key": "patched" } }),
        )
        .await;
        assert_eq!(status, 403, "PATCH should be denied: {body}");
    }
    assert_eq!(bao.read_kv("t1/admin_ssh").await, Some((key_set("v2"), 2)));
    let meta = bao
        .root(Method::GET, "vps/metadata/t1/admin_ssh", None)
        .await;
    assert!(
        meta["data"]["versions"]["1"]["deletion_time"] == "",
        "version 1 was deleted: {meta}"
    );

    // No listing, no other secret names, no other mounts.
    assert_denied(&bao, &cp, list(), "vps/metadata/", None).await;
    root_write(&bao, "t1/other", json!({ "x": "1" })).await;
    // The PATCH refused above is well-formed: root may send it.
    let (status, body) = merge_patch(
        &bao,
        ROOT_TOKEN,
        "vps/data/t1/other",
        json!({ "data": { "x": "3" } }),
    )
    .await;
    assert_eq!(status, 200, "root PATCH: {body}");
    assert_denied(&bao, &cp, Method::GET, "vps/data/t1/other", None).await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "vps/data/t1/other",
        Some(json!({ "data": { "x": "2" } })),
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "vps/data/t1/admin_ssh/nested",
        Some(json!({ "data": key_set("nested") })),
    )
    .await;
    bao.enable_kv2("other").await;
    let mounts = bao.root(Method::GET, "sys/mounts", None).await;
    if mounts["data"]["secret/"].is_null() {
        bao.enable_kv2("secret").await;
    }
    for mount in ["secret", "other"] {
        bao.root(
            Method::POST,
            &format!("{mount}/data/t1/admin_ssh"),
            Some(json!({ "data": { "x": "1" } })),
        )
        .await;
        let path = format!("{mount}/data/t1/admin_ssh");
        assert_denied(&bao, &cp, Method::GET, &path, None).await;
        assert_denied(
            &bao,
            &cp,
            Method::POST,
            &path,
            Some(json!({ "data": { "x": "2" } })),
        )
        .await;
    }

    // No policies, auth methods, mounts, audit devices or tokens.
    assert_denied(&bao, &cp, list(), "sys/policies/acl", None).await;
    assert_denied(
        &bao,
        &cp,
        Method::GET,
        "sys/policies/acl/keyward-control-plane",
        None,
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::PUT,
        "sys/policies/acl/keyward-control-plane",
        Some(json!({ "policy": "path \"*\" { capabilities = [\"sudo\"] }" })),
    )
    .await;
    assert_denied(&bao, &cp, Method::GET, "sys/auth", None).await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "sys/auth/userpass",
        Some(json!({ "type": "userpass" })),
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "sys/mounts/mine",
        Some(json!({ "type": "kv" })),
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "sys/audit/file",
        Some(json!({ "type": "file", "options": { "file_path": "/tmp/x" } })),
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "auth/token/create",
        Some(json!({ "policies": [CONTROL_PLANE] })),
    )
    .await;
}

#[tokio::test]
async fn control_plane_policy_erases_an_offboarded_tenants_secrets_and_nothing_else() {
    let bao = OpenBao::start().await;
    load_policy(&bao, CONTROL_PLANE).await;
    let cp = token_with(&bao, &[CONTROL_PLANE]).await;
    let keyward_secrets = ["admin_ssh", "tenant_ssh", "smtp", "dkim"];
    for name in keyward_secrets.iter().chain(&["other"]) {
        root_write(&bao, &format!("t1/{name}"), json!({ "x": "1" })).await;
    }
    root_write(&bao, "t2/admin_ssh", key_set("t2")).await;
    for name in ["agent_ca", "state_signing"] {
        root_write(&bao, &format!("_keyward/{name}"), json!({ "x": "1" })).await;
    }

    // The tenant's folder is listed (never the list of tenants) and its secrets destroyed.
    let listed = assert_allowed(&bao, &cp, list(), "vps/metadata/t1/", None).await;
    assert_eq!(
        listed["data"]["keys"].as_array().unwrap().len(),
        5,
        "{listed}"
    );
    assert_denied(&bao, &cp, list(), "vps/metadata/", None).await;
    for name in keyward_secrets {
        let path = format!("vps/metadata/t1/{name}");
        assert_allowed(&bao, &cp, Method::DELETE, &path, None).await;
        assert_eq!(bao.read_kv(&format!("t1/{name}")).await, None, "{name}");
        let (status, _) = bao.api(Method::GET, &path, ROOT_TOKEN, None).await;
        assert_eq!(
            status, 404,
            "{path}: every version and the history are gone"
        );
    }

    // Nothing else: another name under the tenant, keyward's own secrets.
    for path in [
        "vps/metadata/t1/other",
        "vps/metadata/_keyward/agent_ca",
        "vps/metadata/_keyward/state_signing",
    ] {
        assert_denied(&bao, &cp, Method::DELETE, path, None).await;
    }
    assert!(bao.read_kv("t1/other").await.is_some());
    assert!(bao.read_kv("_keyward/agent_ca").await.is_some());
    assert_eq!(bao.read_kv("t2/admin_ssh").await, Some((key_set("t2"), 1)));
}

#[tokio::test]
async fn admin_policy_lists_and_manages_versions() {
    let bao = OpenBao::start().await;
    load_policy(&bao, ADMIN).await;
    let admin = token_with(&bao, &[ADMIN]).await;
    for tenant in ["t1", "t2"] {
        for kind in ["admin_ssh", "tenant_ssh"] {
            root_write(&bao, &format!("{tenant}/{kind}"), key_set("v1")).await;
            root_write(&bao, &format!("{tenant}/{kind}"), key_set("v2")).await;
        }
    }
    root_write(&bao, "t1/other", json!({ "x": "1" })).await;

    let tenants = assert_allowed(&bao, &admin, list(), "vps/metadata/", None).await;
    assert_eq!(tenants["data"]["keys"], json!(["t1/", "t2/"]), "{tenants}");
    let secrets = assert_allowed(&bao, &admin, list(), "vps/metadata/t1/", None).await;
    assert_eq!(
        secrets["data"]["keys"],
        json!(["admin_ssh", "other", "tenant_ssh"]),
        "{secrets}"
    );
    // Without the trailing slash too (the CLI's `kv list vps/t1` sends it so).
    assert_allowed(&bao, &admin, list(), "vps/metadata/t1", None).await;

    let read = assert_allowed(&bao, &admin, Method::GET, "vps/data/t2/admin_ssh", None).await;
    assert_eq!(read["data"]["data"], key_set("v2"));
    let written = assert_allowed(
        &bao,
        &admin,
        Method::POST,
        "vps/data/t2/tenant_ssh",
        Some(json!({ "options": { "cas": 2 }, "data": key_set("v3") })),
    )
    .await;
    assert_eq!(written["data"]["version"], 3);

    // Soft-delete, undelete and destroy versions.
    let one = json!({ "versions": [1] });
    assert_allowed(
        &bao,
        &admin,
        Method::POST,
        "vps/delete/t1/tenant_ssh",
        Some(one.clone()),
    )
    .await;
    let (status, _) = bao
        .api(
            Method::GET,
            "vps/data/t1/tenant_ssh?version=1",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 404, "version 1 should be soft-deleted");
    assert_allowed(
        &bao,
        &admin,
        Method::POST,
        "vps/undelete/t1/tenant_ssh",
        Some(one.clone()),
    )
    .await;
    let back = assert_allowed(
        &bao,
        &admin,
        Method::GET,
        "vps/data/t1/tenant_ssh?version=1",
        None,
    )
    .await;
    assert_eq!(back["data"]["data"], key_set("v1"));
    assert_allowed(
        &bao,
        &admin,
        Method::POST,
        "vps/destroy/t1/admin_ssh",
        Some(one),
    )
    .await;
    let meta = assert_allowed(&bao, &admin, Method::GET, "vps/metadata/t1/admin_ssh", None).await;
    assert_eq!(meta["data"]["versions"]["1"]["destroyed"], true, "{meta}");
    assert_allowed(&bao, &admin, Method::DELETE, "vps/data/t2/admin_ssh", None).await;
    assert_allowed(
        &bao,
        &admin,
        Method::DELETE,
        "vps/metadata/t2/admin_ssh",
        None,
    )
    .await;
    assert_eq!(bao.read_kv("t2/admin_ssh").await, None);

    // Only the SSH key sets: not other secret names under `vps/`, nor other mounts or `sys/`.
    assert_denied(&bao, &admin, Method::GET, "vps/data/t1/other", None).await;
    assert_denied(&bao, &admin, Method::DELETE, "vps/metadata/t1/other", None).await;
    assert_denied(&bao, &admin, list(), "sys/policies/acl", None).await;
}

/// A control plane configured for AppRole login into OpenBao at `bao`.
fn approle_config(
    bao: &OpenBao,
    state_dir: PathBuf,
    role_id: String,
    secret_id_file: PathBuf,
) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.agent_api.listen = "127.0.0.1:0".parse().unwrap();
    config.server.state_dir = state_dir;
    config.vault.address = Some(bao.addr.clone());
    config.vault.token = None;
    config.vault.token_file = None;
    config.vault.approle = Some(AppRoleConfig {
        mount: "approle".into(),
        role_id,
        secret_id_file,
    });
    config.keys = KeysConfig {
        algorithm: KeyAlgorithm::Ed25519,
        ..KeysConfig::default()
    };
    config
}

#[tokio::test]
async fn control_plane_runs_with_only_its_policy_through_approle() {
    let bao = OpenBao::start().await;
    load_policy(&bao, CONTROL_PLANE).await;
    bao.enable_audit_head_key().await;
    // The control plane always writes with check-and-set; make KV insist on it.
    bao.root(
        Method::POST,
        "vps/config",
        Some(json!({ "cas_required": true })),
    )
    .await;
    enable_auth(&bao, "approle", "approle").await;
    bao.root(
        Method::POST,
        "auth/approle/role/keyward",
        Some(json!({
            "token_policies": [CONTROL_PLANE],
            "token_no_default_policy": true,
            "token_ttl": "1h",
            "token_max_ttl": "24h",
        })),
    )
    .await;
    let role_id = bao
        .root(Method::GET, "auth/approle/role/keyward/role-id", None)
        .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .root(Method::POST, "auth/approle/role/keyward/secret-id", None)
        .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secrets = tempfile::tempdir().unwrap();
    let secret_id_file = secrets.path().join("secret-id");
    std::fs::write(&secret_id_file, format!("{secret_id}\n")).unwrap();

    // A wrong secret id is an error from `start`, not a panic and not a server without Vault.
    let wrong_file = secrets.path().join("wrong-secret-id");
    std::fs::write(&wrong_file, "00000000-0000-0000-0000-000000000000").unwrap();
    let wrong_state = tempfile::tempdir().unwrap();
    let refused = server::start(approle_config(
        &bao,
        wrong_state.path().to_path_buf(),
        role_id.clone(),
        wrong_file,
    ))
    .await;
    let error = refused.expect_err("a wrong AppRole secret id must stop the start");
    assert!(
        error.to_string().contains("AppRole"),
        "the error should say the AppRole login failed: {error}"
    );

    let state_dir = tempfile::tempdir().unwrap();
    let mut config = approle_config(
        &bao,
        state_dir.path().to_path_buf(),
        role_id,
        secret_id_file,
    );
    // The audit head signed with the transit key and checkpointed, as the policy allows.
    config.audit_signing.key = Some(keyward_tests::openbao::AUDIT_HEAD_KEY.into());
    config.audit_signing.interval = std::time::Duration::from_secs(1);
    let token_path = config.bootstrap_token_path();
    let running = server::start(config)
        .await
        .expect("the control plane starts with AppRole");
    let url = running.url();
    let admin_token = std::fs::read_to_string(token_path)
        .unwrap()
        .trim()
        .to_owned();
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{url}{path}"))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, text)
        }
    };

    let tenant = unique_tenant("pol");
    let (status, body) = call(
        Method::POST,
        "/api/v1/admin/tenants",
        &admin_token,
        Some(json!({
            "tenantId": tenant,
            "vpsIp": "127.0.0.1",
            "sshPort": 22,
            "sshUsername": "tenant",
            "adminUsername": "kwadmin",
        })),
    )
    .await;
    assert_eq!(status, 201, "create tenant: {body}");
    for kind in ["admin_ssh", "tenant_ssh"] {
        let (_, version) = bao
            .read_kv(&format!("{tenant}/{kind}"))
            .await
            .unwrap_or_else(|| panic!("{tenant}/{kind} not in Vault"));
        assert_eq!(version, 1, "{kind}");
    }

    let (status, body) = call(
        Method::POST,
        "/api/v1/admin/tokens",
        &admin_token,
        Some(json!({ "role": "tenant", "tenantId": tenant })),
    )
    .await;
    assert_eq!(status, 201, "issue tenant token: {body}");
    let tenant_token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, body) = call(
        Method::POST,
        "/api/v1/tenant/infrastructure/ssh-credentials/rotate",
        &tenant_token,
        None,
    )
    .await;
    assert_eq!(status, 200, "rotate: {body}");
    let (rotated, version) = bao.read_kv(&format!("{tenant}/tenant_ssh")).await.unwrap();
    assert_eq!(version, 2, "the rotation is a new KV version");
    // The retention sweep at start made the login pseudonym key, which its policy allows.
    let key = keyward_test_support::eventually(
        "the login pseudonym key in Vault",
        std::time::Duration::from_secs(30),
        || bao.read_kv("_keyward/login_pseudonym_key"),
    )
    .await;
    assert!(
        key.0["key"].as_str().is_some_and(|k| k.len() >= 44),
        "{key:?}"
    );
    // Signed at start, then moved forward (an update, with check-and-set) a second later; and
    // the verification reads the transit key's public keys.
    keyward_test_support::eventually(
        "the audit checkpoint moved forward",
        std::time::Duration::from_secs(30),
        || async {
            bao.read_kv("_keyward/audit_head")
                .await
                .filter(|(_, version)| *version >= 2)
        },
    )
    .await;
    let (status, verified) = call(
        Method::GET,
        "/api/v1/admin/audit/verify",
        &admin_token,
        None,
    )
    .await;
    assert_eq!(status, 200, "verify: {verified}");
    let verdict: Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(verdict["head"]["status"], "ok", "{verdict}");
    // Enrolling a second factor creates the key that seals TOTP seeds, which its policy allows.
    let (status, enrolled) =
        call(Method::POST, "/api/v1/tenant/mfa/totp", &tenant_token, None).await;
    assert_eq!(status, 201, "enrol a TOTP factor: {enrolled}");
    let (seal, _) = bao
        .read_kv("_keyward/mfa_seal_key")
        .await
        .expect("the MFA seal key in Vault");
    assert!(
        seal["key"].as_str().is_some_and(|k| k.len() == 44),
        "{seal:?}"
    );
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["newKeyFingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:")),
        "{answer}"
    );
    assert!(
        rotated["public_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("ssh-ed25519 ")),
        "{rotated}"
    );

    // Reading a version back (download) and the metadata (admin details) work too.
    let (status, key) = call(
        Method::POST,
        "/api/v1/tenant/infrastructure/ssh-credentials/download",
        &tenant_token,
        None,
    )
    .await;
    assert_eq!(status, 200, "download: {key}");
    assert_eq!(key.trim(), rotated["private_key"].as_str().unwrap().trim());
    let (status, body) = call(
        Method::GET,
        &format!("/api/v1/admin/secrets/tenant/{tenant}"),
        &admin_token,
        None,
    )
    .await;
    assert_eq!(status, 200, "secret details: {body}");
    assert!(
        body.contains("\"currentVersion\":2"),
        "the tenant key's Vault history should show version 2: {body}"
    );

    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn control_plane_policy_writes_smtp_and_dkim_secrets_but_never_reads_them() {
    let bao = OpenBao::start().await;
    load_policy(&bao, CONTROL_PLANE).await;
    let cp = token_with(&bao, &[CONTROL_PLANE]).await;
    let fields = |marker: &str| json!({ "username": "tenant-t1", "password": marker });
    for secret in ["smtp", "dkim"] {
        let data_path = format!("vps/data/t1/{secret}");
        let meta_path = format!("vps/metadata/t1/{secret}");
        let (status, _) = bao.api(Method::GET, &meta_path, &cp, None).await;
        assert_eq!(status, 404, "metadata of a missing secret must read as 404");
        for (cas, marker) in [(0, "v1"), (1, "v2")] {
            let written = assert_allowed(
                &bao,
                &cp,
                Method::POST,
                &data_path,
                Some(json!({ "options": { "cas": cas }, "data": fields(marker) })),
            )
            .await;
            assert_eq!(written["data"]["version"], cas + 1, "{written}");
        }
        let meta = assert_allowed(&bao, &cp, Method::GET, &meta_path, None).await;
        assert_eq!(meta["data"]["current_version"], 2, "{meta}");

        // What it wrote is for the mail servers: it cannot read a password or key back...
        assert_denied(&bao, &cp, Method::GET, &data_path, None).await;
        assert_denied(
            &bao,
            &cp,
            Method::GET,
            &format!("{data_path}?version=1"),
            None,
        )
        .await;
        // ...nor lose history.
        assert_denied(&bao, &cp, Method::DELETE, &data_path, None).await;
        for op in ["delete", "undelete", "destroy"] {
            let path = format!("vps/{op}/t1/{secret}");
            assert_denied(
                &bao,
                &cp,
                Method::POST,
                &path,
                Some(json!({ "versions": [1] })),
            )
            .await;
        }
        // (Deleting the metadata is offboarding's: the test above.)
        assert_denied(
            &bao,
            &cp,
            Method::POST,
            &meta_path,
            Some(json!({ "max_versions": 1 })),
        )
        .await;
        let (status, body) = merge_patch(
            &bao,
            &cp,
            &data_path,
            json!({ "data": { "password": "x" } }),
        )
        .await;
        assert_eq!(status, 403, "PATCH should be denied: {body}");
        assert_eq!(
            bao.read_kv(&format!("t1/{secret}")).await,
            Some((fields("v2"), 2))
        );
    }
    // Only those two names.
    for path in [
        "vps/data/t1/smtp_relay",
        "vps/data/t1/smtp/nested",
        "vps/data/t1/dkim2",
    ] {
        assert_denied(
            &bao,
            &cp,
            Method::POST,
            path,
            Some(json!({ "data": fields("x") })),
        )
        .await;
    }
}

#[tokio::test]
async fn control_plane_policy_takes_raft_snapshots_but_cannot_restore_them() {
    let bao = OpenBao::start_raft().await;
    load_policy(&bao, CONTROL_PLANE).await;
    let cp = token_with(&bao, &[CONTROL_PLANE]).await;
    let (status, _) = bao
        .api(Method::GET, "sys/storage/raft/snapshot", &cp, None)
        .await;
    assert_eq!(
        status, 200,
        "the control plane must be able to take a snapshot"
    );
    for path in [
        "sys/storage/raft/snapshot",
        "sys/storage/raft/snapshot-force",
    ] {
        assert_denied(&bao, &cp, Method::POST, path, Some(json!({}))).await;
    }
    assert_denied(
        &bao,
        &cp,
        Method::GET,
        "sys/storage/raft/configuration",
        None,
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "sys/storage/raft/remove-peer",
        Some(json!({ "server_id": "n1" })),
    )
    .await;
    // The same read on the dev server's in-memory storage is allowed by the policy and answered
    // "unsupported" by OpenBao: that is how keyward tells that backups are not possible.
    let dev = OpenBao::start().await;
    load_policy(&dev, CONTROL_PLANE).await;
    let dev_cp = token_with(&dev, &[CONTROL_PLANE]).await;
    let (status, body) = dev
        .api(Method::GET, "sys/storage/raft/snapshot", &dev_cp, None)
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn control_plane_policy_signs_only_with_its_ssh_role_and_cannot_touch_the_ca() {
    use keyward_server::vault::{CertificateAuthority, UserCertificateRequest, VaultStore};
    use keyward_tests::openbao::SSH_USER_ROLE;

    let bao = OpenBao::start().await;
    let ca = bao.enable_ssh_ca().await;
    load_policy(&bao, CONTROL_PLANE).await;
    let cp = token_with(&bao, &[CONTROL_PLANE]).await;
    // Another role on the same engine, as an operator might add for another purpose.
    bao.root(
        Method::POST,
        "ssh/roles/other",
        Some(json!({ "key_type": "ca", "allow_user_certificates": true, "allowed_users": "*" })),
    )
    .await;
    let issuer_id = bao.root(Method::GET, "ssh/config/ca", None).await["data"]["issuer_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The real client with only this policy: signs with keyward's role, reads the CA keys.
    let vault = VaultStore::connect(&keyward_server::config::VaultConfig {
        address: Some(bao.addr.clone()),
        token: Some(cp.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let key = keyward_common::GeneratedKey::generate(KeyAlgorithm::Ed25519, "u").unwrap();
    let request = UserCertificateRequest::new(
        SSH_USER_ROLE,
        key.public_openssh(),
        "t1:tenant:1",
        ["alice"],
        std::time::Duration::from_secs(300),
    )
    .unwrap();
    let signed = vault.sign_user_certificate(&request).await.unwrap();
    assert_eq!(signed.ca_public_key, ca);
    let keys = vault.ca_public_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].public_key, ca);
    // The same request for another role: denied, and said so.
    let other = UserCertificateRequest::new(
        "other",
        key.public_openssh(),
        "t1:tenant:1",
        ["alice"],
        std::time::Duration::from_secs(300),
    )
    .unwrap();
    let err = vault.sign_user_certificate(&other).await.unwrap_err();
    assert!(
        matches!(&err, keyward_server::vault::VaultError::Denied { operation } if operation == "POST ssh/sign/other"),
        "{err}"
    );

    let sign_body = json!({
        "public_key": key.public_openssh(),
        "valid_principals": "root",
        "cert_type": "user",
    });
    let generate = json!({ "generate_signing_key": true, "key_type": "ed25519" });
    let role = json!({ "key_type": "ca", "allow_user_certificates": true, "max_ttl": "8760h" });
    // Signing with any other role, or having the engine make a key pair.
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "ssh/sign/other",
        Some(sign_body.clone()),
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "ssh/issue/keyward-user",
        Some(json!({ "valid_principals": "root" })),
    )
    .await;
    // The CA itself: read its configuration, replace or delete it.
    assert_denied(&bao, &cp, Method::GET, "ssh/config/ca", None).await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "ssh/config/ca",
        Some(generate.clone()),
    )
    .await;
    assert_denied(&bao, &cp, Method::DELETE, "ssh/config/ca", None).await;
    // Roles: make one, widen its own, read or list them.
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "ssh/roles/mine",
        Some(role.clone()),
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "ssh/roles/keyward-user",
        Some(role),
    )
    .await;
    assert_denied(&bao, &cp, Method::GET, "ssh/roles/keyward-user", None).await;
    assert_denied(&bao, &cp, list(), "ssh/roles", None).await;
    assert_denied(&bao, &cp, Method::DELETE, "ssh/roles/keyward-user", None).await;
    // Issuers: make, rename, delete one, or choose the default.
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "ssh/issuers/import/mine",
        Some(generate),
    )
    .await;
    let issuer = format!("ssh/issuer/{issuer_id}");
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        &issuer,
        Some(json!({ "issuer_name": "x" })),
    )
    .await;
    assert_denied(&bao, &cp, Method::DELETE, &issuer, None).await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "ssh/config/issuers",
        Some(json!({ "default": issuer_id })),
    )
    .await;
    // Other engine paths and mounts.
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "ssh/config/zeroaddress",
        Some(json!({ "roles": "other" })),
    )
    .await;
    assert_denied(
        &bao,
        &cp,
        Method::POST,
        "sys/mounts/ssh2",
        Some(json!({ "type": "ssh" })),
    )
    .await;
    assert_denied(&bao, &cp, Method::DELETE, "sys/mounts/ssh", None).await;

    // The CA is still the one it was, and keyward's role unchanged.
    assert_eq!(
        bao.root(Method::GET, "ssh/config/ca", None).await["data"]["public_key"]
            .as_str()
            .unwrap()
            .trim(),
        ca
    );
    let role = bao.root(Method::GET, "ssh/roles/keyward-user", None).await;
    assert_eq!(role["data"]["max_ttl"], 8 * 3600);
}

#[tokio::test]
async fn control_plane_policy_signs_the_audit_head_but_cannot_export_rotate_or_delete_its_key() {
    use keyward_tests::openbao::AUDIT_HEAD_KEY;

    let bao = OpenBao::start().await;
    bao.enable_audit_head_key().await;
    // Another key on the same engine, as an operator might keep for something else.
    bao.root(
        Method::POST,
        "transit/keys/other",
        Some(json!({ "type": "ed25519", "exportable": true })),
    )
    .await;
    load_policy(&bao, CONTROL_PLANE).await;
    let cp = token_with(&bao, &[CONTROL_PLANE]).await;
    let input = json!({ "input": "a2V5d2FyZA==" });

    let signed = assert_allowed(
        &bao,
        &cp,
        Method::POST,
        &format!("transit/sign/{AUDIT_HEAD_KEY}"),
        Some(input.clone()),
    )
    .await;
    assert!(
        signed["data"]["signature"]
            .as_str()
            .is_some_and(|s| s.starts_with("vault:v1:")),
        "{signed}"
    );
    let key = format!("transit/keys/{AUDIT_HEAD_KEY}");
    let read = assert_allowed(&bao, &cp, Method::GET, &key, None).await;
    assert_eq!(read["data"]["type"], "ed25519", "{read}");
    // The checkpoint: created, read and moved forward with check-and-set.
    let checkpoint = "vps/data/_keyward/audit_head";
    for cas in [0, 1] {
        assert_allowed(
            &bao,
            &cp,
            Method::POST,
            checkpoint,
            Some(json!({ "options": { "cas": cas }, "data": { "seq": cas } })),
        )
        .await;
    }
    assert_allowed(&bao, &cp, Method::GET, checkpoint, None).await;

    for (method, path, body) in [
        (Method::POST, format!("{key}/rotate"), None),
        (
            Method::POST,
            format!("{key}/config"),
            Some(json!({ "deletion_allowed": true })),
        ),
        (Method::DELETE, key.clone(), None),
        (
            Method::GET,
            format!("transit/export/signing-key/{AUDIT_HEAD_KEY}"),
            None,
        ),
        (Method::GET, "transit/export/signing-key/other".into(), None),
        (
            Method::POST,
            "transit/sign/other".into(),
            Some(input.clone()),
        ),
        (
            Method::POST,
            "transit/keys/new".into(),
            Some(json!({ "type": "ed25519" })),
        ),
        (Method::DELETE, checkpoint.into(), None),
        (
            Method::DELETE,
            "vps/metadata/_keyward/audit_head".into(),
            None,
        ),
        (
            Method::POST,
            "sys/mounts/transit2".into(),
            Some(json!({ "type": "transit" })),
        ),
    ] {
        assert_denied(&bao, &cp, method, &path, body).await;
    }
}
