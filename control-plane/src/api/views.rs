//! Request and response bodies, in the product document's camelCase.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clock::iso8601;
use crate::store::{KeySetRecord, KeyState, TenantRecord, TenantSecretRecord, TokenRecord};
use crate::vault::KeySetVersions;

/// `GET /api/v1/tenant/infrastructure/ssh-credentials`: public information only.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshCredentials {
    pub vps_ip: String,
    pub ssh_username: String,
    pub ssh_port: u16,
    /// `SHA256:...` as `ssh-keygen -lf` prints it; `null` while the key is revoked.
    pub key_fingerprint: Option<String>,
    pub last_rotated: String,
    pub next_rotation: String,
    pub key_status: KeyState,
    pub key_generation: i64,
    pub key_algorithm: String,
    /// `generated` (keyward made the key: download it once) or `registered` (the tenant brought
    /// its public key: there is nothing to download).
    #[schema(example = "generated")]
    pub key_origin: &'static str,
    /// The OpenSSH key type of the current key (`ssh-ed25519`, `sk-ssh-ed25519@openssh.com`...).
    pub key_type: String,
    /// A registered key past `nextRotation`: keyward does not replace it; register a new one.
    pub rotation_overdue: bool,
    /// Whether this generation's private key has been downloaded (it can be, once).
    pub downloaded: bool,
    /// The key replaced by the last rotation, valid until `previousKeyValidUntil`.
    pub previous_key_fingerprint: Option<String>,
    pub previous_key_valid_until: Option<String>,
    /// SHA-256 fingerprints of the VPS's SSH host keys, as its agent reported them.
    pub host_key_fingerprints: Vec<String>,
    /// `known_hosts` lines for the VPS, to verify the first connection.
    pub known_hosts: Vec<String>,
    /// The platform's bastion, `user@host[:port]`, when SSH to the VPS goes through one: pass it
    /// to `ssh -J` or write it as `ProxyJump` in `~/.ssh/config`. `null`: connect directly.
    pub proxy_jump: Option<String>,
}

impl SshCredentials {
    pub fn new(
        tenant: &TenantRecord,
        ks: &KeySetRecord,
        host_keys: &[String],
        proxy_jump: Option<String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let host = if tenant.ssh_port == 22 {
            tenant.vps_ip.clone()
        } else {
            format!("[{}]:{}", tenant.vps_ip, tenant.ssh_port)
        };
        let parsed: Vec<(String, String)> = host_keys
            .iter()
            .filter_map(|k| {
                let fingerprint = keyward_common::keys::public_key_fingerprint(k).ok()?;
                let body: Vec<&str> = k.split_whitespace().take(2).collect();
                Some((
                    fingerprint.to_string(),
                    format!("{host} {}", body.join(" ")),
                ))
            })
            .collect();
        let active = ks.state == KeyState::Active;
        Self {
            vps_ip: tenant.vps_ip.clone(),
            ssh_username: tenant.tenant_user.to_string(),
            ssh_port: tenant.ssh_port,
            key_fingerprint: active.then(|| ks.fingerprint.to_string()),
            last_rotated: iso8601(ks.last_rotated),
            next_rotation: iso8601(ks.next_rotation),
            key_status: ks.state,
            key_generation: ks.generation,
            key_algorithm: ks.algorithm.to_string(),
            key_origin: ks.origin.as_str(),
            key_type: key_type(&ks.public_key),
            rotation_overdue: crate::lifecycle::overdue(ks, now),
            downloaded: ks.downloaded_at.is_some(),
            previous_key_fingerprint: ks.previous_fingerprint.as_ref().map(ToString::to_string),
            previous_key_valid_until: ks.grace_until.map(iso8601),
            host_key_fingerprints: parsed.iter().map(|(f, _)| f.clone()).collect(),
            known_hosts: parsed.into_iter().map(|(_, line)| line).collect(),
            proxy_jump,
        }
    }
}

/// The key type name of an OpenSSH public key line (its first field).
fn key_type(public_key: &str) -> String {
    public_key
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `GET /api/v1/tenant/infrastructure/set-aside-keys`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetAsideKeys {
    pub hosts: Vec<SetAsideOnHost>,
}

/// The keys set aside for one user on one host.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetAsideOnHost {
    pub host_id: String,
    pub user: String,
    /// `SHA256:...` fingerprints of the lines in `~/.ssh/authorized_keys.keyward-set-aside`.
    pub keys: Vec<String>,
}

/// The answer of rotate and regenerate.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewKeyResponse {
    /// Always `success`.
    pub status: &'static str,
    pub message: String,
    pub new_key_fingerprint: String,
}

/// The answer of revoke.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    pub status: &'static str,
    pub message: String,
}

/// One key set's public metadata.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySetSummary {
    pub kind: String,
    /// The rotation policy's algorithm (what keyward generates); see `keyType` for the key's.
    pub algorithm: String,
    /// `generated` or `registered` (its owner brought the public key; Vault holds no private
    /// key for it).
    pub origin: &'static str,
    /// The OpenSSH key type of the current key.
    pub key_type: String,
    /// A registered key past `nextRotation`: its owner should register a new one.
    pub rotation_overdue: bool,
    /// Its FIDO2 lines carry `verify-required`.
    pub verify_required: bool,
    pub status: KeyState,
    pub generation: i64,
    pub fingerprint: String,
    pub public_key: String,
    pub rotation_policy: String,
    pub created_at: String,
    pub last_rotated: String,
    pub next_rotation: String,
    pub downloaded_at: Option<String>,
    pub previous_fingerprint: Option<String>,
    pub grace_until: Option<String>,
    /// Vault path of the key set (the private key never leaves Vault but for the download).
    pub vault_path: String,
    /// KV version history, in the detail view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_versions: Option<KeySetVersions>,
}

impl KeySetSummary {
    pub fn new(ks: &KeySetRecord, mount: &str, now: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            kind: ks.kind.to_string(),
            algorithm: ks.algorithm.to_string(),
            origin: ks.origin.as_str(),
            key_type: key_type(&ks.public_key),
            rotation_overdue: crate::lifecycle::overdue(ks, now),
            verify_required: ks.verify_required,
            status: ks.state,
            generation: ks.generation,
            fingerprint: ks.fingerprint.to_string(),
            public_key: ks.public_key.clone(),
            rotation_policy: ks.rotation_policy.clone(),
            created_at: iso8601(ks.created_at),
            last_rotated: iso8601(ks.last_rotated),
            next_rotation: iso8601(ks.next_rotation),
            downloaded_at: ks.downloaded_at.map(iso8601),
            previous_fingerprint: ks.previous_fingerprint.as_ref().map(ToString::to_string),
            grace_until: ks.grace_until.map(iso8601),
            vault_path: format!("{mount}/{}/{}", ks.tenant_id, ks.kind.secret_name()),
            vault_versions: None,
        }
    }
}

/// Both key sets of a tenant.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshKeys {
    pub admin_ssh: KeySetSummary,
    pub tenant_ssh: KeySetSummary,
}

/// One row of `GET /api/v1/admin/secrets/tenants`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSecretsSummary {
    pub tenant_id: String,
    pub vps_ip: String,
    pub ssh_port: u16,
    pub ssh_username: String,
    pub admin_username: String,
    pub created_at: String,
    pub ssh_keys: SshKeys,
}

impl TenantSecretsSummary {
    pub fn new(tenant: &TenantRecord, ssh_keys: SshKeys) -> Self {
        Self {
            tenant_id: tenant.tenant_id.to_string(),
            vps_ip: tenant.vps_ip.clone(),
            ssh_port: tenant.ssh_port,
            ssh_username: tenant.tenant_user.to_string(),
            admin_username: tenant.admin_user.to_string(),
            created_at: iso8601(tenant.created_at),
            ssh_keys,
        }
    }
}

/// `GET /api/v1/admin/secrets/tenant/{tenant_id}`: metadata of every secret, never a private key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSecretDetails {
    pub tenant_id: String,
    pub ssh_keys: SshKeys,
    /// The SMTP credentials' metadata, never the password; `null` until the first `smtp`
    /// rotation creates them.
    pub smtp_credentials: Option<SmtpCredentialsSummary>,
    /// The DKIM key's selector and DNS record; `null` until the first `dkim` rotation.
    pub dkim: Option<DkimSummary>,
    /// The tenant's API tokens' metadata.
    pub api_keys: Vec<TokenSummary>,
    /// Where its offboarding stands (`removing_keys`, `destroying_secrets`, `completed`: follow
    /// it at `.../tenants/{tenant_id}/offboarding`); `null` when none was asked for.
    pub offboarding: Option<&'static str>,
}

/// A tenant's SMTP credentials, as admins may see them: no password.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmtpCredentialsSummary {
    pub username: String,
    pub generation: i64,
    pub created_at: String,
    pub last_rotated: String,
    /// The Vault KV version that holds the current password.
    pub vault_version: i64,
    pub vault_path: String,
}

impl SmtpCredentialsSummary {
    pub fn new(s: &TenantSecretRecord, mount: &str) -> Self {
        Self {
            username: s.public_info["username"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            generation: s.generation,
            created_at: iso8601(s.created_at),
            last_rotated: iso8601(s.last_rotated),
            vault_version: s.vault_version,
            vault_path: format!("{mount}/{}/{}", s.tenant_id, s.name),
        }
    }
}

/// A tenant's DKIM key: what to publish in DNS. The private key stays in Vault.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DkimSummary {
    /// `kw{YYYYMM}`: publish the record at `{selector}._domainkey.{the mail domain}`.
    pub selector: String,
    pub dns_name: String,
    /// The TXT record value: `v=DKIM1; k=rsa; p=...`.
    pub dns_record: String,
    /// The selector of the key replaced by the last rotation: keep its record published until
    /// mail signed with it has been delivered.
    pub previous_selector: Option<String>,
    pub generation: i64,
    pub created_at: String,
    pub last_rotated: String,
    pub vault_version: i64,
    pub vault_path: String,
}

impl DkimSummary {
    pub fn new(s: &TenantSecretRecord, mount: &str) -> Self {
        let text = |field: &str| s.public_info[field].as_str().map(str::to_owned);
        Self {
            selector: text("selector").unwrap_or_default(),
            dns_name: text("dnsName").unwrap_or_default(),
            dns_record: text("dnsRecord").unwrap_or_default(),
            previous_selector: text("previousSelector"),
            generation: s.generation,
            created_at: iso8601(s.created_at),
            last_rotated: iso8601(s.last_rotated),
            vault_version: s.vault_version,
            vault_path: format!("{mount}/{}/{}", s.tenant_id, s.name),
        }
    }
}

/// An API token's metadata; the token itself is shown only when issued.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSummary {
    pub token_id: String,
    pub role: String,
    pub tenant_id: Option<String>,
    pub label: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<&TokenRecord> for TokenSummary {
    fn from(t: &TokenRecord) -> Self {
        Self {
            token_id: t.token_id.clone(),
            role: t.role.name().to_owned(),
            tenant_id: t.role.tenant().map(|t| t.to_string()),
            label: t.label.clone(),
            created_at: iso8601(t.created_at),
            revoked_at: t.revoked_at.map(iso8601),
        }
    }
}

/// `POST /api/v1/admin/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTenantRequest {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", min_length = 1, max_length = 63)]
    pub tenant_id: String,
    /// The VPS's address as tenants connect to it (IP address or DNS name).
    #[schema(schema_with = vps_address_schema)]
    pub vps_ip: String,
    #[serde(default = "default_ssh_port")]
    #[schema(minimum = 1, maximum = 65535, default = 22)]
    pub ssh_port: u16,
    /// The tenant's Unix user on the VPS.
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$", min_length = 1, max_length = 32)]
    pub ssh_username: String,
    /// The platform's admin Unix user on the VPS; not `sshUsername`.
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$", min_length = 1, max_length = 32)]
    pub admin_username: String,
}

/// An IP address (v4 or v6) or a DNS name.
fn vps_address_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    let formatted = |format| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(format)))
    };
    OneOfBuilder::new()
        .item(formatted(KnownFormat::Ipv4))
        .item(formatted(KnownFormat::Ipv6))
        .item(formatted(KnownFormat::Hostname).max_length(Some(253)))
        .into()
}

fn default_ssh_port() -> u16 {
    22
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    Admin,
    Tenant,
}

/// `POST /api/v1/admin/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueTokenRequest {
    pub role: TokenRole,
    /// Required for the tenant role, refused for the admin role.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", min_length = 1, max_length = 63)]
    pub tenant_id: Option<String>,
    /// At most 200 characters, none of them a control character.
    #[serde(default)]
    #[schema(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$", max_length = 200)]
    pub label: String,
}

/// The one time a token is shown.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub token: String,
    #[serde(flatten)]
    pub summary: TokenSummary,
}

/// `GET /api/v1/admin/vault/health`. The top-level fields are the active node's (with none
/// active, the first node that answered); `nodes` shows every configured node.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultHealthResponse {
    pub sealed: bool,
    /// The active node's API address as the cluster reports it (`sys/leader`).
    pub active_node: String,
    /// `ok`, `sealed` or `uninitialized`.
    pub storage_status: String,
    /// Time of the newest Vault snapshot; `null` while backups are not configured or none exists.
    pub last_backup: Option<String>,
    /// `ok`, `pending` (none taken yet), `failing` (the last attempt failed), `not_configured`
    /// (no `[backup] dir`) or `unsupported_storage` (Vault does not use integrated raft storage).
    pub backup_status: &'static str,
    /// Why the last snapshot failed, in one sentence without paths, addresses or OS errors (the
    /// full cause is in the server log and in the `vault.backup` audit event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_error: Option<String>,
    pub initialized: bool,
    pub standby: bool,
    pub version: String,
    pub cluster_name: Option<String>,
    /// Every node keyward is configured with (`vault.address` or `vault.addresses`), in that
    /// order: reachable or not, sealed, standby or active. At most one is `active`.
    pub nodes: Vec<crate::vault::VaultNodeHealth>,
}

/// `GET /api/v1/admin/audit/sinks`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSinksResponse {
    /// In the order `audit_export.sinks` configures them; empty when none is.
    pub sinks: Vec<crate::audit_export::SinkStatus>,
}

/// `GET /api/v1/admin/audit`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPageResponse {
    pub events: Vec<crate::store::AuditRecord>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<i64>,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use keyward_common::{KeyAlgorithm, KeyKind};

    use super::*;

    /// Records hold times; the API still answers `YYYY-MM-DDTHH:MM:SSZ`, whole seconds and `Z`,
    /// as when the records held the stored text (a fresh record's time has nanoseconds).
    #[test]
    fn times_in_answers_are_whole_second_utc_text() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .unwrap()
            .checked_add_signed(chrono::Duration::nanoseconds(123_456_789))
            .unwrap();
        let fingerprint: keyward_common::Fingerprint =
            format!("SHA256:{}", "A".repeat(43)).parse().unwrap();
        let record = KeySetRecord {
            tenant_id: "t1".parse().unwrap(),
            kind: KeyKind::Tenant,
            algorithm: KeyAlgorithm::Ed25519,
            generation: 2,
            state: KeyState::Active,
            public_key: "ssh-ed25519 AAAA".into(),
            fingerprint: fingerprint.clone(),
            vault_version: 2,
            rotation_policy: "90_days".into(),
            created_at: at,
            last_rotated: at,
            next_rotation: at + chrono::Duration::days(90),
            downloaded_at: None,
            previous_public_key: None,
            previous_fingerprint: Some(fingerprint),
            grace_until: Some(at + chrono::Duration::days(1)),
            session_epoch: 0,
            denied_fingerprints: Vec::new(),
            origin: keyward_common::KeyOrigin::Generated,
            verify_required: false,
            reminded_generation: 0,
        };
        let json = serde_json::to_value(KeySetSummary::new(&record, "vps", at)).unwrap();
        assert_eq!(json["createdAt"], "2026-01-02T03:04:05Z");
        assert_eq!(json["lastRotated"], "2026-01-02T03:04:05Z");
        assert_eq!(json["nextRotation"], "2026-04-02T03:04:05Z");
        assert_eq!(json["graceUntil"], "2026-01-03T03:04:05Z");
        assert_eq!(json["downloadedAt"], serde_json::Value::Null);
        assert_eq!(json["fingerprint"], format!("SHA256:{}", "A".repeat(43)));
        assert_eq!(json["previousFingerprint"], json["fingerprint"]);
    }
}
