//! A key pair of someone's own (a laptop's), as people bring to certificates and access
//! requests: keyward sees only its public half.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use keyward_common::{GeneratedKey, KeyAlgorithm};

/// An Ed25519 key pair in a directory of its own; ssh offers `{key}-cert.pub` with it.
#[derive(Debug)]
pub struct OwnKey {
    _dir: tempfile::TempDir,
    /// The private key's file (0600).
    pub key: PathBuf,
    /// The public key, OpenSSH form.
    pub public: String,
}

impl OwnKey {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "someone@laptop").unwrap();
        let path = dir.path().join("id");
        std::fs::write(&path, key.private_openssh().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            _dir: dir,
            key: path,
            public: key.public_openssh().to_owned(),
        }
    }

    /// Puts a certificate (OpenSSH form) where ssh finds it for this key.
    pub fn hold_certificate(&self, certificate: &str) {
        std::fs::write(self.key.with_file_name("id-cert.pub"), certificate).unwrap();
    }
}

impl Default for OwnKey {
    fn default() -> Self {
        Self::new()
    }
}
