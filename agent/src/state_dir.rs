//! The agent's state directory: its identity from enrollment and the last applied signed state.
//!
//! | file | content |
//! |---|---|
//! | `agent.key` | the agent's own private key (PKCS#8 PEM); it never leaves the host |
//! | `agent.crt` | the client certificate the control plane's agent CA issued for this host |
//! | `ca.crt` | the agent CA: the only root trusted for the gRPC server |
//! | `signing.pub` | the control plane's Ed25519 state-signing key, base64, pinned at enrollment |
//! | `enrollment.json` | host id, tenant id, gRPC URL |
//! | `state.bin` | the last applied `SignedState` (protobuf), re-verified before every use |
//! | `epochs.json` | per user, the session epoch whose sessions were last ended |
//! | `logins.bin` | the login audit: log position, next sequence number, spooled events, open sessions ([`crate::logins::spool`]) |
//!
//! The directory is 0700 and every file 0600, written through a temporary file and a rename so a
//! crash leaves either the old or the new content, never a torn file.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::VerifyingKey;
use keyward_common::proto::{DesiredState, SignedState};
use keyward_common::signing::{StateError, verify_state};
use prost::Message;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const KEY_FILE: &str = "agent.key";
pub const CERT_FILE: &str = "agent.crt";
pub const CA_FILE: &str = "ca.crt";
pub const SIGNING_KEY_FILE: &str = "signing.pub";
pub const ENROLLMENT_FILE: &str = "enrollment.json";
pub const STATE_FILE: &str = "state.bin";
pub const EPOCHS_FILE: &str = "epochs.json";

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is owned by uid {owner}, not by this process (uid {me}); refusing to use it")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("not enrolled: run keyward-agent enroll --server URL --token T ({0} is missing)")]
    NotEnrolled(PathBuf),
    #[error("{path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the cached state {path} was refused: {source}")]
    StateRefused { path: PathBuf, source: StateError },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateDirError + '_ {
    move |source| StateDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `enrollment.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollmentInfo {
    pub host_id: String,
    pub tenant_id: String,
    pub grpc_url: String,
}

/// Everything enrollment left behind, loaded.
pub struct Identity {
    pub info: EnrollmentInfo,
    pub key_pem: Zeroizing<String>,
    pub cert_pem: String,
    pub ca_pem: String,
    pub signing_key: VerifyingKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("info", &self.info)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A cached state that verified: the signed bytes and their decoding.
#[derive(Debug, Clone)]
pub struct CachedState {
    pub signed: SignedState,
    pub state: DesiredState,
}

/// Per user, the session epoch last acted on.
pub type Epochs = BTreeMap<String, u64>;

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the directory 0700 if needed; an existing one must belong to this process's user
    /// (root in production) and is tightened to 0700.
    pub fn create(&self) -> Result<(), StateDirError> {
        let path = &self.path;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_err(path))?;
        let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
        if !meta.is_dir() {
            return Err(StateDirError::Invalid {
                path: path.clone(),
                message: "not a directory".into(),
            });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(StateDirError::Owner {
                path: path.clone(),
                owner: meta.uid(),
                me,
            });
        }
        if meta.mode() & 0o777 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err(path))?;
        }
        Ok(())
    }

    /// Writes `name` as 0600 through a temporary file, fsync and rename, then fsyncs the
    /// directory so the rename itself survives a power loss.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), StateDirError> {
        let target = self.file(name);
        let tmp = self.file(&format!(
            ".{name}.tmp.{}.{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.write_all(bytes).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, &target).map_err(io_err(&target))?;
            File::open(&self.path)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn read_string(&self, name: &str) -> Result<String, StateDirError> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StateDirError::NotEnrolled(path.clone())
            } else {
                StateDirError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })
    }

    /// Whether an enrollment is already stored (`enroll` refuses to overwrite it without
    /// `--force`).
    pub fn is_enrolled(&self) -> bool {
        self.file(ENROLLMENT_FILE).exists()
    }

    /// Stores a new identity. `enrollment.json` is written last: it is what marks the
    /// directory as enrolled, so a crash half-way leaves an unenrolled directory.
    pub fn store_identity(&self, identity: &Identity) -> Result<(), StateDirError> {
        self.create()?;
        self.write_file(KEY_FILE, identity.key_pem.as_bytes())?;
        self.write_file(CERT_FILE, identity.cert_pem.as_bytes())?;
        self.write_file(CA_FILE, identity.ca_pem.as_bytes())?;
        let signing = BASE64.encode(identity.signing_key.as_bytes());
        self.write_file(SIGNING_KEY_FILE, format!("{signing}\n").as_bytes())?;
        let info =
            serde_json::to_vec_pretty(&identity.info).map_err(|e| StateDirError::Invalid {
                path: self.file(ENROLLMENT_FILE),
                message: e.to_string(),
            })?;
        // A state cached under an earlier enrollment is signed for another host id: drop it.
        for stale in [STATE_FILE, EPOCHS_FILE] {
            match fs::remove_file(self.file(stale)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StateDirError::Io {
                        path: self.file(stale),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        self.write_file(ENROLLMENT_FILE, &info)
    }

    /// Loads the identity enrollment stored.
    pub fn load_identity(&self) -> Result<Identity, StateDirError> {
        let info_text = self.read_string(ENROLLMENT_FILE)?;
        let info: EnrollmentInfo =
            serde_json::from_str(&info_text).map_err(|e| StateDirError::Invalid {
                path: self.file(ENROLLMENT_FILE),
                message: e.to_string(),
            })?;
        let signing_text = self.read_string(SIGNING_KEY_FILE)?;
        let signing_key =
            parse_signing_key(signing_text.trim()).map_err(|message| StateDirError::Invalid {
                path: self.file(SIGNING_KEY_FILE),
                message,
            })?;
        Ok(Identity {
            info,
            key_pem: Zeroizing::new(self.read_string(KEY_FILE)?),
            cert_pem: self.read_string(CERT_FILE)?,
            ca_pem: self.read_string(CA_FILE)?,
            signing_key,
        })
    }

    /// Re-reads the current client certificate (it changes on renewal).
    pub fn load_certificate(&self) -> Result<String, StateDirError> {
        self.read_string(CERT_FILE)
    }

    /// Loads the cached state, verified with the pinned key for this host. `Ok(None)` when there
    /// is none; an error when one exists but does not verify (the caller must not use it).
    pub fn load_state(
        &self,
        key: &VerifyingKey,
        host_id: &str,
    ) -> Result<Option<CachedState>, StateDirError> {
        let path = self.file(STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateDirError::Io { path, source }),
        };
        let signed = SignedState::decode(bytes.as_slice()).map_err(|e| StateDirError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let state = verify_state(key, &signed, host_id, 0)
            .map_err(|source| StateDirError::StateRefused { path, source })?;
        Ok(Some(CachedState { signed, state }))
    }

    /// Persists the epochs, then the signed state: a crash between the two leaves the older
    /// state with the newer epochs, which at worst skips ending sessions already ended.
    pub fn store_state(&self, signed: &SignedState, epochs: &Epochs) -> Result<(), StateDirError> {
        self.store_epochs(epochs)?;
        self.write_file(STATE_FILE, &signed.encode_to_vec())
    }

    /// Removes the cached state, so a stale one cannot re-add keys at the next start.
    pub fn remove_state(&self) -> Result<(), StateDirError> {
        let path = self.file(STATE_FILE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateDirError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    pub fn store_epochs(&self, epochs: &Epochs) -> Result<(), StateDirError> {
        let bytes = serde_json::to_vec(epochs).map_err(|e| StateDirError::Invalid {
            path: self.file(EPOCHS_FILE),
            message: e.to_string(),
        })?;
        self.write_file(EPOCHS_FILE, &bytes)
    }

    /// The per-user epochs; empty when none were stored yet.
    pub fn load_epochs(&self) -> Result<Epochs, StateDirError> {
        let path = self.file(EPOCHS_FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StateDirError::Invalid {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Epochs::new()),
            Err(source) => Err(StateDirError::Io { path, source }),
        }
    }
}

/// Parses the pinned signing key: base64 of the 32-byte Ed25519 public key.
pub fn parse_signing_key(b64: &str) -> Result<VerifyingKey, String> {
    let bytes = BASE64
        .decode(b64)
        .map_err(|e| format!("signing key is not base64: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("signing key is {} bytes, not 32", b.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        dir.create().unwrap();
        let mode = fs::metadata(dir.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        dir.write_file("x", b"one").unwrap();
        dir.write_file("x", b"two").unwrap();
        assert_eq!(fs::read(dir.file("x")).unwrap(), b"two");
        assert_eq!(fs::metadata(dir.file("x")).unwrap().mode() & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_open_directory_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::new(tmp.path()).create().unwrap();
        assert_eq!(fs::metadata(tmp.path()).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_missing_enrollment_says_how_to_enroll() {
        let tmp = tempfile::tempdir().unwrap();
        let err = StateDir::new(tmp.path()).load_identity().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("not enrolled: run keyward-agent enroll"),
            "{err}"
        );
    }

    #[test]
    fn signing_keys_are_checked() {
        assert!(parse_signing_key("!!").is_err());
        assert!(parse_signing_key(&BASE64.encode([1u8; 31])).is_err());
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        assert_eq!(
            parse_signing_key(&BASE64.encode(key.as_bytes())).unwrap(),
            key
        );
    }
}
