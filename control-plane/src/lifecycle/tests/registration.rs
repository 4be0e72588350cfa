//! Going back from a registered key to a generated one, over the fake Vault: a regeneration
//! whose key is keyward's again, refused for a key that is keyward's already.

use super::*;

/// An Ed25519 public key from `ssh-keygen`, with a comment.
const OWN_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJcUXMIh9fEx+lkQs7uJPHxLYdjvvMZv2XFecqzSxVG me@laptop";

#[tokio::test]
async fn removing_a_registration_generates_a_key_and_denies_the_registered_one() {
    let f = fixture().await;
    let caller = Caller::system();
    f.lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    // Not registered: nothing to remove, and the refusal is audited.
    let refused = f
        .lifecycle
        .remove_registration(&caller, &t1(), KeyKind::Tenant)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "key_not_registered");

    let registered = f
        .lifecycle
        .register_key(&caller, &t1(), KeyKind::Tenant, OWN_KEY)
        .await
        .unwrap();
    assert_eq!(registered.origin, KeyOrigin::Registered);
    let generated = f
        .lifecycle
        .remove_registration(&caller, &t1(), KeyKind::Tenant)
        .await
        .unwrap();
    assert_eq!(generated.origin, KeyOrigin::Generated);
    assert_eq!(generated.generation, registered.generation + 1);
    assert_eq!(generated.state, KeyState::Active);
    assert!(generated.downloaded_at.is_none());
    assert_ne!(generated.fingerprint, registered.fingerprint);
    assert_eq!(generated.algorithm, KeyAlgorithm::Ed25519);
    // As in a regeneration: the registered key stops at once, its sessions end.
    assert!(
        generated
            .denied_fingerprints
            .contains(&registered.fingerprint)
    );
    assert!(generated.previous_fingerprint.is_none());
    assert_eq!(generated.session_epoch, registered.session_epoch + 1);
    // Vault's new version is the one SQL names, with a private key of its own again.
    assert_eq!(
        f.vault.current(T1, KeyKind::Tenant),
        usize::try_from(generated.vault_version).unwrap()
    );
    let secret = f
        .vault
        .read_key_set(&t1(), KeyKind::Tenant, generated.vault_version as u64)
        .await
        .unwrap()
        .unwrap()
        .secret;
    assert_eq!(secret.origin, KeyOrigin::Generated);
    assert_eq!(secret.public_key, generated.public_key);
    assert!(
        secret
            .private_key
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    );
    // The download works again, once.
    let (_, private) = f
        .lifecycle
        .download(&caller, &t1(), KeyKind::Tenant, None, None)
        .await
        .unwrap();
    assert_eq!(private.as_str(), secret.private_key.as_str());
    // A second removal is refused; the registered key cannot come back.
    assert_eq!(
        f.lifecycle
            .remove_registration(&caller, &t1(), KeyKind::Tenant)
            .await
            .unwrap_err()
            .code(),
        "key_not_registered"
    );
    assert_eq!(
        f.lifecycle
            .register_key(&caller, &t1(), KeyKind::Tenant, OWN_KEY)
            .await
            .unwrap_err()
            .code(),
        "key_denied"
    );
    let actions = audit_actions(&f).await;
    let removed: Vec<&str> = actions
        .iter()
        .filter(|(a, _)| a == "key.registration_removed")
        .map(|(_, o)| o.as_str())
        .collect();
    assert_eq!(removed, ["refused", "success", "refused"]);
    // The tenant's hosts are told.
    assert!(
        f.changes
            .take()
            .contains(&crate::changes::Change::Tenant(t1()))
    );
}
