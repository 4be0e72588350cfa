//! Types and functions shared by the keyward control plane and agent.
//!
//! Everything that crosses a trust boundary (a Vault path, an SQL row, a file name on a host) is
//! built from the validated newtypes in [`ids`]; key material is produced and fingerprinted only
//! by [`keys`]. Producing it is the `keygen` feature's: the control plane turns it on, the agent
//! does not (it never makes an SSH key).

pub mod authorized_keys;
pub mod backoff;
pub mod certificate_id;
pub mod ids;
pub mod jump;
pub mod keys;
pub mod krl;
pub mod proto;
pub mod sd_notify;
pub mod signing;
pub mod sshd_files;
pub mod sshd_log;

pub use certificate_id::CertificateId;
pub use ids::{HostId, IdError, Principal, TenantId, UnixUser};
pub use jump::{PermitOpen, SshHost};
pub use keys::{Fingerprint, KeyAlgorithm, KeyError, KeyKind, KeyOrigin};
#[cfg(feature = "keygen")]
pub use keys::{GeneratedKey, UnnamedKey, encrypt_private_key};
