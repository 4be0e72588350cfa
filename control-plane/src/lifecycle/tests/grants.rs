//! Just-in-time access when the CA cannot sign.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyward_common::{KeyKind, TenantId};

use super::{fixture, new_tenant};
use crate::caller::Caller;
use crate::lifecycle::{AccessAsk, DomainError, SshCertificates};
use crate::store::{GrantStatus, Role};
use crate::vault::{
    CaPublicKey, CertificateAuthority, SignedCertificate, UserCertificateRequest, VaultError,
};

/// A CA behind a sealed Vault.
#[derive(Debug)]
struct SealedCa;

#[async_trait]
impl CertificateAuthority for SealedCa {
    async fn sign_user_certificate(
        &self,
        _: &UserCertificateRequest,
    ) -> Result<SignedCertificate, VaultError> {
        Err(VaultError::Sealed)
    }

    async fn ca_public_keys(&self) -> Result<Vec<CaPublicKey>, VaultError> {
        Err(VaultError::Sealed)
    }
}

#[tokio::test]
async fn a_request_granted_at_once_whose_certificate_cannot_be_had_is_withdrawn_not_left_pending() {
    let f = fixture().await;
    let lifecycle = f.lifecycle.with_ssh_certificates(SshCertificates {
        authority: Arc::new(SealedCa),
        role: "keyward-user".into(),
        default_validity: Duration::from_secs(3600),
        max_validity: Duration::from_secs(8 * 3600),
        max_valid_per_tenant: 100,
        access: crate::config::AccessConfig::default(),
    });
    lifecycle
        .create_tenant(&Caller::system(), new_tenant())
        .await
        .unwrap();
    let tenant: TenantId = new_tenant().tenant_id;
    let own = Caller {
        token_id: Some("tok-1".into()),
        role: Some(Role::Tenant(tenant.clone())),
        source_addr: None,
        idp_mfa: false,
    };
    let ask = AccessAsk {
        tenant: tenant.clone(),
        kind: KeyKind::Tenant,
        public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKpEHp269E+4ixcICHqfs5XWIoLHIo1uUdUfrhJBcKh8 me@laptop".into(),
        duration: Duration::from_secs(600),
        reason: "deploy".into(),
    };
    let err = lifecycle.request_access(&own, ask).await.unwrap_err();
    assert!(
        matches!(err, DomainError::Vault(VaultError::Sealed)),
        "{err:?}"
    );
    let grants = lifecycle.store().grants(Some(&tenant), None).await.unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].status, GrantStatus::Revoked);
    assert!(grants[0].certificate_number.is_none());
    assert_eq!(lifecycle.store().pending_grants(&tenant).await.unwrap(), 0);
}
