//! Step-up multi-factor authentication (`[mfa]`): which sensitive operations need a fresh second
//! factor (`X-Keyward-MFA`) from the principal that asks. An admin can set another list per
//! tenant (`/api/v1/admin/tenants/{tenant_id}/mfa-policy`), which replaces this one for that
//! tenant's tokens; admins' own requests follow this one.

use serde::{Deserialize, Serialize};

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
}

impl SensitiveOperation {
    pub const ALL: [SensitiveOperation; 6] = [
        Self::Download,
        Self::Regenerate,
        Self::RevokeAdminKey,
        Self::RotateAll,
        Self::IssueToken,
        Self::RevokeHost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Download => "download",
            Self::Regenerate => "regenerate",
            Self::RevokeAdminKey => "revoke_admin_key",
            Self::RotateAll => "rotate_all",
            Self::IssueToken => "issue_token",
            Self::RevokeHost => "revoke_host",
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
}
