//! What the domain (key operations, tokens, hosts, policies, secrets, bulk jobs, backups, login
//! ingestion) can fail with, in the domain's own words.
//!
//! The domain knows neither HTTP nor gRPC: the transports map these once each, to problem
//! documents (`error.rs`) and to `tonic::Status` (`agents/grpc/refused.rs`). What the domain does
//! need of a failure is its stable `code` and whether it was a refusal or the server's failure:
//! both are written into records that outlive the request (the audit event of a failed
//! operation, a bulk job's failures) and are the same `code` the problem document carries.
//!
//! The texts (`Display`) are what clients read as a problem's `detail`; they are kept as they are.

use keyward_common::{HostId, TenantId};

use crate::store::StoreError;
use crate::vault::VaultError;

/// Everything a domain operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("tenant {0} not found")]
    TenantNotFound(TenantId),
    #[error("tenant {0} already exists")]
    TenantExists(TenantId),
    #[error("tenant {0} is being offboarded (or was): it gets no new key, token, host or secret")]
    TenantOffboarded(TenantId),
    #[error("tenant {0} has no offboarding: none was asked for")]
    OffboardingNotFound(TenantId),
    #[error("host {0} not found")]
    HostNotFound(HostId),
    #[error("host {0} already exists")]
    HostExists(HostId),
    /// The token id as given, cut to 40 characters.
    #[error("API token {0} not found")]
    TokenNotFound(String),
    #[error(
        "the enrollment token is unknown, used, expired or revoked; ask an admin for a new one"
    )]
    EnrollmentTokenInvalid,
    /// The agent's certificate request, refused by the agent CA.
    #[error("{0}")]
    CertificateRequestInvalid(String),
    /// A rotation policy outside the bounds (`RotationPolicy::validate`).
    #[error("{0}")]
    PolicyInvalid(String),
    #[error("the tenant key is revoked; regenerate it to restore access")]
    KeyRevoked,
    /// A public key offered for registration that is not taken.
    #[error("{0}")]
    KeyRefused(super::KeyRefusal),
    #[error(
        "this key was registered by its owner: keyward holds no private key for it and does not \
         replace it; register a new public key to replace it"
    )]
    KeyRegistered,
    #[error("that public key is already the registered key")]
    KeyAlreadyRegistered,
    /// An SSH user certificate request refused before Vault saw it.
    #[error("{0}")]
    UserCertificateRefused(String),
    #[error(
        "that public key was replaced or revoked by keyward; sshd refuses it, certified or not"
    )]
    KeyDenied,
    /// The certificate id as given, cut to 100 characters.
    #[error("SSH certificate {0} not found")]
    CertificateNotFound(String),
    #[error("this deployment issues no SSH certificates: its Vault SSH CA is not set up")]
    CertificatesNotConfigured,
    /// The grant id as given, cut to 40 characters.
    #[error("access grant {0} not found")]
    GrantNotFound(String),
    #[error("the access request is {status}: nothing more can be decided on it")]
    GrantClosed { status: &'static str },
    #[error(
        "this access needs approval (the tenant's policy, or a second admin for the admin user): \
         request it (POST /api/v1/admin/tenants/{{tenant_id}}/access-requests)"
    )]
    ApprovalRequired,
    /// A per-tenant bound was reached.
    #[error("{what}: at most {max} at once per tenant; wait until some end")]
    Quota { what: &'static str, max: u32 },
    /// Why the caller may not decide on this request.
    #[error("{0}")]
    NotYourDecision(&'static str),
    #[error(
        "the private key of generation {generation} was already downloaded; \
         regenerate the key to get a new one"
    )]
    AlreadyDownloaded { generation: i64 },
    /// The download policy asks for a passphrase and none was given.
    #[error(
        "this key is handed out only encrypted: send a passphrase of at least {min} characters \
         ({{\"passphrase\": \"...\"}})"
    )]
    PassphraseRequired { min: u32 },
    #[error("the passphrase must be at least {min} characters long")]
    PassphraseTooShort { min: u32 },
    /// A passphrase outside what any policy takes (too long, a NUL); never the passphrase.
    #[error("{0}")]
    PassphraseInvalid(&'static str),
    /// The policy asks for a fresh second factor and the request carries none.
    #[error(
        "{operation} needs a fresh second factor: send X-Keyward-MFA: totp:CODE (or \
         recovery:CODE)"
    )]
    MfaRequired { operation: &'static str },
    #[error("the second factor (X-Keyward-MFA) is not valid")]
    MfaInvalid,
    #[error("that code was already used; wait for the next one")]
    MfaReplayed,
    /// The policy asks for a second factor and the principal has none confirmed.
    #[error(
        "{operation} needs a second factor and none is enrolled: enrol one (POST .../mfa/totp)"
    )]
    MfaNotEnrolled { operation: &'static str },
    #[error("too many failed second factors; retry in {retry_after_secs} seconds")]
    MfaLocked { retry_after_secs: u64 },
    /// The factor id as given, cut to 40 characters.
    #[error("second factor {0} not found")]
    MfaFactorNotFound(String),
    #[error("the second factor is already confirmed")]
    MfaFactorConfirmed,
    #[error(
        "this deployment has no WebAuthn relying party: security keys need [mfa] webauthn_origin"
    )]
    WebauthnNotConfigured,
    #[error("a security key's name is 1 to 64 characters of text (no control characters)")]
    WebauthnNameInvalid,
    #[error("the key set changed concurrently; retry the request")]
    ConcurrentModification,
    #[error("bulk rotation job {job_id} is running; follow it or wait until it ends")]
    RotationInProgress { job_id: String },
    /// The job id as given, cut to 40 characters.
    #[error("rotation job {0} not found")]
    JobNotFound(String),
    /// A web UI sign-in that cannot be finished: an unknown, expired or already used state, a
    /// code the provider refused, an ID token that does not verify. The reason is for the log.
    #[error("the sign-in could not be completed; start again from the sign-in page")]
    SignInFailed(&'static str),
    /// The provider's claims map to neither the admin role nor an existing tenant.
    #[error(
        "your identity provider account has no keyward role: ask an administrator to add you to the admin group or to a tenant"
    )]
    SignInNoRole,
    #[error("the identity provider cannot be reached; try again later")]
    IdentityProviderUnavailable,
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key generation failed")]
    KeyGeneration,
    /// A bound the code relies on did not hold (a number out of range, a closed semaphore).
    #[error("internal error")]
    Internal,
}

impl DomainError {
    /// The stable, machine-readable name of the failure: the problem document's `code`, and
    /// what the audit log and bulk jobs record.
    pub fn code(&self) -> &'static str {
        use DomainError::*;
        match self {
            TenantNotFound(_) => "tenant_not_found",
            TenantExists(_) => "tenant_exists",
            TenantOffboarded(_) => "tenant_offboarding",
            OffboardingNotFound(_) => "offboarding_not_found",
            HostNotFound(_) => "host_not_found",
            HostExists(_) => "host_exists",
            TokenNotFound(_) => "token_not_found",
            EnrollmentTokenInvalid => "enrollment_token_invalid",
            CertificateRequestInvalid(_)
            | PolicyInvalid(_)
            | UserCertificateRefused(_)
            | WebauthnNameInvalid => "invalid_body",
            KeyDenied => "key_denied",
            CertificateNotFound(_) => "certificate_not_found",
            CertificatesNotConfigured => "certificates_not_configured",
            GrantNotFound(_) => "access_grant_not_found",
            Quota { .. } => "quota_exceeded",
            ApprovalRequired => "approval_required",
            GrantClosed { .. } => "access_grant_closed",
            NotYourDecision(_) => "approval_not_allowed",
            KeyRevoked => "key_revoked",
            KeyRefused(refusal) => refusal.code(),
            KeyRegistered => "key_registered",
            KeyAlreadyRegistered => "key_already_registered",
            AlreadyDownloaded { .. } => "key_already_downloaded",
            PassphraseRequired { .. } => "passphrase_required",
            PassphraseTooShort { .. } => "passphrase_too_short",
            PassphraseInvalid(_) => "passphrase_invalid",
            MfaRequired { .. } => "mfa_required",
            MfaInvalid => "mfa_invalid",
            MfaReplayed => "mfa_replayed",
            MfaNotEnrolled { .. } => "mfa_not_enrolled",
            MfaLocked { .. } => "mfa_locked",
            MfaFactorNotFound(_) => "mfa_factor_not_found",
            MfaFactorConfirmed => "mfa_factor_confirmed",
            WebauthnNotConfigured => "webauthn_not_configured",
            ConcurrentModification => "concurrent_modification",
            RotationInProgress { .. } => "rotation_in_progress",
            JobNotFound(_) => "rotation_job_not_found",
            SignInFailed(_) => "sign_in_failed",
            SignInNoRole => "sign_in_no_role",
            IdentityProviderUnavailable => "idp_unavailable",
            Vault(VaultError::Sealed) => "vault_sealed",
            Vault(_) => "vault_unavailable",
            Store(_) => "database_unavailable",
            KeyGeneration => "key_generation_failed",
            Internal => "internal",
        }
    }

    /// Whether the operation was refused (the caller's request cannot be done as asked) rather
    /// than failed (Vault, the database or the server let it down). The audit log says
    /// `refused` or `failure`.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            DomainError::Vault(_)
                | DomainError::Store(_)
                | DomainError::KeyGeneration
                | DomainError::IdentityProviderUnavailable
                | DomainError::Internal
        )
    }
}
