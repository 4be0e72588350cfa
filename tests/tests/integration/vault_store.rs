//! The Vault client against real OpenBao: KV v2 layout, check-and-set, versions.

use keyward_common::{KeyKind, TenantId};
use keyward_server::config::VaultConfig;
use keyward_server::vault::{KeySetSecret, SecretStore, VaultError, VaultStore};
use keyward_tests::OpenBao;
use keyward_tests::openbao::ROOT_TOKEN;
use zeroize::Zeroizing;

fn secret(public: &str) -> KeySetSecret {
    KeySetSecret {
        private_key: Zeroizing::new("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n".into()),
        public_key: public.into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        last_rotated: "2026-01-01T00:00:00Z".into(),
        rotation_policy: "90_days".into(),
        origin: keyward_common::KeyOrigin::Generated,
    }
}

#[tokio::test]
async fn check_and_set_refuses_a_stale_write() {
    let bao = OpenBao::start().await;
    let vault = VaultStore::connect(&VaultConfig {
        address: Some(bao.addr.clone()),
        token: Some(ROOT_TOKEN.into()),
        ..VaultConfig::default()
    })
    .await
    .unwrap();
    let t: TenantId = "cas-tenant".parse().unwrap();
    assert!(
        vault
            .key_set_versions(&t, KeyKind::Tenant)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        vault
            .read_key_set(&t, KeyKind::Tenant, 1)
            .await
            .unwrap()
            .is_none()
    );

    assert_eq!(
        vault
            .write_key_set(&t, KeyKind::Tenant, &secret("a"), 0)
            .await
            .unwrap(),
        1
    );
    let stale = vault
        .write_key_set(&t, KeyKind::Tenant, &secret("b"), 0)
        .await;
    assert!(
        matches!(stale, Err(VaultError::CasMismatch { cas: 0, .. })),
        "{stale:?}"
    );
    assert_eq!(
        vault
            .write_key_set(&t, KeyKind::Tenant, &secret("c"), 1)
            .await
            .unwrap(),
        2
    );

    let v1 = vault
        .read_key_set(&t, KeyKind::Tenant, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v1.version, v1.secret.public_key.as_str()), (1, "a"));
    let versions = vault
        .key_set_versions(&t, KeyKind::Tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(versions.current_version, 2);
    // The layout is the product's: vps/{tenant}/tenant_ssh, nothing under admin_ssh.
    let (data, version) = bao.read_kv("cas-tenant/tenant_ssh").await.unwrap();
    assert_eq!((data["public_key"].as_str(), version), (Some("c"), 2));
    assert!(bao.read_kv("cas-tenant/admin_ssh").await.is_none());
    // Debug output never carries the private key.
    assert!(!format!("{:?}", v1.secret).contains("PRIVATE"));
}

#[tokio::test]
async fn a_wrong_token_is_denied_not_misread() {
    let bao = OpenBao::start().await;
    let vault = VaultStore::connect(&VaultConfig {
        address: Some(bao.addr.clone()),
        token: Some("not-a-token".into()),
        ..VaultConfig::default()
    })
    .await
    .unwrap();
    let t: TenantId = "t1".parse().unwrap();
    let err = vault
        .write_key_set(&t, KeyKind::Admin, &secret("a"), 0)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Denied { .. }), "{err:?}");
    let health = vault.health().await.unwrap();
    assert!(!health.sealed && health.initialized);
    assert!(!health.version.is_empty());
}
