//! keyward's control plane (`keyward-server`): SSH key pairs in Vault, their metadata and the
//! audit log in SQL, and the REST API for tenants and admins.
//!
//! - [`vault`]: the key sets in Vault (KV v2, check-and-set).
//! - [`store`]: tenants, key metadata, API tokens and the hash-chained audit log in SQL.
//! - [`lifecycle`]: create, rotate, regenerate, revoke, download, each audited; rotation
//!   policies, SMTP credentials and DKIM keys.
//! - [`rotation`]: the rotation scheduler and bulk rotations; [`backup`]: Vault snapshots.
//! - [`api`]: the REST API (axum), [`auth`]: bearer tokens, [`error`]: problem documents.
//! - [`oidc`]: the web UI's OpenID Connect relying party (sign-in with the platform's IdP).
//! - [`audit_export`]: the audit log, as it grows, to syslog, webhooks and files (SIEM).
//! - [`config`], [`server`], [`telemetry`]: running it.

pub mod agents;
pub mod api;
pub mod audit_bundle;
pub mod audit_export;
pub mod audit_head;
pub mod backup;
pub mod caller;
pub mod changes;
pub mod clock;
pub mod config;
pub mod conns;
pub mod consistency;
pub mod error;
pub mod lifecycle;
pub mod oidc;
pub mod proxy_protocol;
pub mod pseudonym;
pub mod recordings;
pub mod request_id;
pub mod retention;
pub mod rotation;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod vault;
