//! Step-up multi-factor authentication (`[mfa]`): which sensitive operations need a fresh second
//! factor (`X-Keyward-MFA`) from the principal that asks. An admin can set another list per
//! tenant (`/api/v1/admin/tenants/{tenant_id}/mfa-policy`), which replaces this one for that
//! tenant's tokens; admins' own requests follow this one.

use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::Url;

/// An operation a step-up policy can name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SensitiveOperation {
    /// The one-time private key download.
    Download,
    /// Regenerating a key (the previous one stops at once), by a tenant or an admin.
    Regenerate,
    /// Revoking a tenant's admin key (the platform's own access).
    RevokeAdminKey,
    /// Rotating a secret type for every tenant.
    RotateAll,
    /// Issuing an API token.
    IssueToken,
    /// Revoking a host.
    RevokeHost,
    /// Resetting a tenant's second factors (an admin's, for a tenant that lost its own).
    ResetMfa,
}

impl SensitiveOperation {
    pub const ALL: [SensitiveOperation; 7] = [
        Self::Download,
        Self::Regenerate,
        Self::RevokeAdminKey,
        Self::RotateAll,
        Self::IssueToken,
        Self::RevokeHost,
        Self::ResetMfa,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Download => "download",
            Self::Regenerate => "regenerate",
            Self::RevokeAdminKey => "revoke_admin_key",
            Self::RotateAll => "rotate_all",
            Self::IssueToken => "issue_token",
            Self::RevokeHost => "revoke_host",
            Self::ResetMfa => "reset_mfa",
        }
    }
}

impl std::fmt::Display for SensitiveOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[mfa]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaConfig {
    /// The operations that need a fresh second factor (none by default).
    pub require_for: Vec<SensitiveOperation>,
    /// The WebAuthn relying party id (a domain: the web UI's host or a parent of it); default:
    /// the host of `webauthn_origin`.
    pub webauthn_rp_id: Option<String>,
    /// The origin browsers open the web UI at (`https://keys.example.net`, or
    /// `http://localhost:PORT`), which security keys sign for. Without it, WebAuthn factors are
    /// off (`409 webauthn_not_configured`); TOTP works as before.
    pub webauthn_origin: Option<String>,
}

impl MfaConfig {
    /// The relying party (id, origin) security keys are enrolled and used with, if configured.
    pub fn webauthn_relying_party(&self) -> Result<Option<(String, Url)>, String> {
        let Some(origin) = &self.webauthn_origin else {
            if self.webauthn_rp_id.is_some() {
                return Err("mfa.webauthn_rp_id needs mfa.webauthn_origin".to_owned());
            }
            return Ok(None);
        };
        let origin =
            Url::parse(origin).map_err(|e| format!("mfa.webauthn_origin is not a URL: {e}"))?;
        let Some(host) = origin.domain() else {
            return Err("mfa.webauthn_origin must name a host by its domain name".to_owned());
        };
        let secure =
            origin.scheme() == "https" || (origin.scheme() == "http" && host == "localhost");
        if !secure || origin.path() != "/" || origin.query().is_some() {
            return Err(
                "mfa.webauthn_origin must be https://HOST[:PORT] (or http://localhost:PORT)"
                    .to_owned(),
            );
        }
        let rp_id = self
            .webauthn_rp_id
            .clone()
            .unwrap_or_else(|| host.to_owned());
        if !(host == rp_id || host.ends_with(&format!(".{rp_id}"))) {
            return Err(format!(
                "mfa.webauthn_rp_id must be the host of mfa.webauthn_origin or a parent domain of it, not {rp_id:?}"
            ));
        }
        Ok(Some((rp_id, origin)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_are_the_documented_ones() {
        for op in SensitiveOperation::ALL {
            let json = serde_json::to_value(op).unwrap();
            assert_eq!(json, op.as_str());
            assert_eq!(
                serde_json::from_value::<SensitiveOperation>(json).unwrap(),
                op
            );
        }
        assert!(serde_json::from_str::<SensitiveOperation>("\"delete_everything\"").is_err());
    }

    #[test]
    fn the_webauthn_relying_party_is_the_origin_host_or_a_parent() {
        let config = |rp: Option<&str>, origin: Option<&str>| MfaConfig {
            webauthn_rp_id: rp.map(str::to_owned),
            webauthn_origin: origin.map(str::to_owned),
            ..MfaConfig::default()
        };
        assert_eq!(config(None, None).webauthn_relying_party(), Ok(None));
        let (rp, origin) = config(None, Some("https://keys.example.net"))
            .webauthn_relying_party()
            .unwrap()
            .unwrap();
        assert_eq!(
            (rp.as_str(), origin.as_str()),
            ("keys.example.net", "https://keys.example.net/")
        );
        let (rp, _) = config(Some("example.net"), Some("https://keys.example.net:8443"))
            .webauthn_relying_party()
            .unwrap()
            .unwrap();
        assert_eq!(rp, "example.net");
        assert!(
            config(None, Some("http://localhost:8080"))
                .webauthn_relying_party()
                .is_ok()
        );
        for (rp, origin) in [
            (Some("other.net"), Some("https://keys.example.net")),
            (Some("ample.net"), Some("https://keys.example.net")),
            (None, Some("http://keys.example.net")),
            (None, Some("https://127.0.0.1")),
            (None, Some("https://keys.example.net/ui")),
            (None, Some("keys.example.net")),
            (Some("example.net"), None),
        ] {
            assert!(
                config(rp, origin).webauthn_relying_party().is_err(),
                "{rp:?} {origin:?}"
            );
        }
    }
}
