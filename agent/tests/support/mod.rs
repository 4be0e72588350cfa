//! What only the agent's tests share: keys as the agent manages them. Users, sshd, polling and
//! the `require` checks are in `keyward-test-support` (`test-support/`), shared with every
//! crate's tests. These tests run as root, as the agent does.

#![allow(dead_code)] // each test file uses a different subset

use keyward_common::authorized_keys::ManagedKey;
use keyward_common::keys::{GeneratedKey, KeyAlgorithm, KeyKind};

/// An Ed25519 key and its [`ManagedKey`].
pub fn managed_key(kind: KeyKind, generation: i64) -> (GeneratedKey, ManagedKey) {
    let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "test").expect("keygen");
    let managed = ManagedKey {
        kind,
        generation,
        public_key: key.public_openssh().to_owned(),
        expires_at: None,
        options: Default::default(),
    };
    (key, managed)
}
