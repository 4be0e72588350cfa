//! The one place where failures become HTTP answers.
//!
//! Every 4xx and 5xx is an RFC 9457 problem document (`application/problem+json`) with a stable
//! machine-readable `code`. Clients branch on `code`; `title` and `detail` are for people.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_common::IdError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::audit_head::HeadError;
use crate::lifecycle::DomainError;
use crate::store::StoreError;
use crate::vault::VaultError;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:keyward:problem:{code}`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable identifier of the problem, e.g. `key_already_downloaded`.
    pub code: &'static str,
    /// `urn:keyward:request:{id}`: the request, under which the server log has the cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// With `mfa_required`, `mfa_invalid`, `mfa_replayed` and `mfa_not_enrolled`: how the
    /// request can step up (`X-Keyward-MFA: totp:CODE` or `recovery:CODE`).
    #[serde(rename = "mfaMethods", skip_serializing_if = "Option::is_none")]
    pub mfa_methods: Option<Vec<&'static str>>,
    /// With `rotation_in_progress`: the running job, to follow instead.
    #[serde(rename = "jobId", skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Everything a request can fail with: the transport's own refusals, and the domain's failures.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a bearer token is required (Authorization: Bearer <token>)")]
    Unauthenticated,
    #[error("the bearer token is not valid or has been revoked")]
    BadToken,
    #[error("this endpoint needs the {needed} role")]
    Forbidden { needed: &'static str },
    #[error("no such route: {path}")]
    NoRoute { path: String },
    #[error("method not allowed here")]
    MethodNotAllowed,
    #[error("invalid {what}: {source}")]
    InvalidId {
        what: &'static str,
        #[source]
        source: IdError,
    },
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidQuery(String),
    /// An irreversible request whose confirmation does not name what it acts on.
    #[error("confirm must be exactly the tenant id of the path ({tenant})")]
    ConfirmationMismatch { tenant: String },
    #[error("request body exceeds the server's limit (server.max_body_bytes)")]
    BodyTooLarge,
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// A domain operation failed or was refused.
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the request timed out")]
    Timeout,
    #[error("too many failed enrollments from this address; retry in a minute")]
    EnrollmentThrottled,
    #[error("the control plane is not ready")]
    NotReady,
    #[error("no such recording")]
    RecordingNotFound,
    #[error("the recording is not in tlog's format and cannot be played")]
    RecordingUnreadable,
    #[error("the recordings' store cannot be read now")]
    RecordingUnavailable,
    /// A cookie-authenticated write without the session's `X-CSRF-Token`, or from another
    /// origin.
    #[error("{0}")]
    CsrfFailed(&'static str),
    #[error("the session has ended (signed out, idle or too old): sign in again")]
    SessionEnded,
    #[error("sign-in with OpenID Connect is not configured ([oidc] issuer)")]
    OidcNotConfigured,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Status, stable code and title: the single mapping of failures to HTTP.
    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated", "Unauthorized"),
            BadToken => (StatusCode::UNAUTHORIZED, "invalid_token", "Unauthorized"),
            Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route", "Not Found"),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method Not Allowed",
            ),
            InvalidId { .. } => (StatusCode::BAD_REQUEST, "invalid_id", "Bad Request"),
            InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body", "Bad Request"),
            InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query", "Bad Request"),
            ConfirmationMismatch { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "confirmation_mismatch",
                "Unprocessable Content",
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "Content Too Large",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported Media Type",
            ),
            // The domain names its failures (`DomainError::code`); here they get their status.
            Domain(failure) => {
                let (status, title) = match failure {
                    DomainError::TenantNotFound(_)
                    | DomainError::OffboardingNotFound(_)
                    | DomainError::HostNotFound(_)
                    | DomainError::TokenNotFound(_)
                    | DomainError::JobNotFound(_)
                    | DomainError::CertificateNotFound(_)
                    | DomainError::GrantNotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
                    DomainError::TenantExists(_)
                    | DomainError::TenantOffboarded(_)
                    | DomainError::HostExists(_)
                    | DomainError::KeyRevoked
                    | DomainError::KeyRegistered
                    | DomainError::KeyAlreadyRegistered
                    | DomainError::KeyNotRegistered
                    | DomainError::KeyDenied
                    | DomainError::GrantClosed { .. }
                    | DomainError::ConcurrentModification
                    | DomainError::RotationInProgress { .. } => (StatusCode::CONFLICT, "Conflict"),
                    DomainError::NotYourDecision(_) | DomainError::ApprovalRequired => {
                        (StatusCode::FORBIDDEN, "Forbidden")
                    }
                    DomainError::Quota { .. } => {
                        (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
                    }
                    DomainError::EnrollmentTokenInvalid => {
                        (StatusCode::UNAUTHORIZED, "Unauthorized")
                    }
                    DomainError::CertificateRequestInvalid(_)
                    | DomainError::PolicyInvalid(_)
                    | DomainError::UserCertificateRefused(_)
                    | DomainError::WebauthnNameInvalid => (StatusCode::BAD_REQUEST, "Bad Request"),
                    DomainError::AlreadyDownloaded { .. } => (StatusCode::GONE, "Gone"),
                    DomainError::KeyRefused(_) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content")
                    }
                    DomainError::PassphraseRequired { .. } => {
                        (StatusCode::BAD_REQUEST, "Bad Request")
                    }
                    DomainError::PassphraseTooShort { .. } | DomainError::PassphraseInvalid(_) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content")
                    }
                    DomainError::MfaRequired { .. }
                    | DomainError::MfaInvalid
                    | DomainError::MfaReplayed => (StatusCode::UNAUTHORIZED, "Unauthorized"),
                    DomainError::MfaNotEnrolled { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
                    DomainError::MfaLocked { .. } => {
                        (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
                    }
                    DomainError::MfaFactorNotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
                    DomainError::MfaFactorConfirmed | DomainError::WebauthnNotConfigured => {
                        (StatusCode::CONFLICT, "Conflict")
                    }
                    DomainError::SignInFailed(_) => (StatusCode::BAD_REQUEST, "Bad Request"),
                    DomainError::SignInNoRole => (StatusCode::FORBIDDEN, "Forbidden"),
                    DomainError::IdentityProviderUnavailable => {
                        (StatusCode::BAD_GATEWAY, "Bad Gateway")
                    }
                    DomainError::Vault(_) => (StatusCode::SERVICE_UNAVAILABLE, "Vault Unavailable"),
                    DomainError::CertificatesNotConfigured => {
                        (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                    }
                    DomainError::Store(_) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "Database Unavailable")
                    }
                    DomainError::KeyGeneration | DomainError::Internal => {
                        (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                    }
                };
                (status, failure.code(), title)
            }
            EnrollmentThrottled => (
                StatusCode::TOO_MANY_REQUESTS,
                "enrollment_throttled",
                "Too Many Requests",
            ),
            NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "Service Unavailable",
            ),
            Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Service Unavailable",
            ),
            RecordingNotFound => (StatusCode::NOT_FOUND, "recording_not_found", "Not Found"),
            CsrfFailed(_) => (StatusCode::FORBIDDEN, "csrf_failed", "Forbidden"),
            SessionEnded => (StatusCode::UNAUTHORIZED, "session_ended", "Unauthorized"),
            OidcNotConfigured => (StatusCode::NOT_FOUND, "oidc_not_configured", "Not Found"),
            RecordingUnreadable => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "recording_unreadable",
                "Unprocessable Content",
            ),
            RecordingUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "recording_unavailable",
                "Service Unavailable",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal Server Error",
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.classify().0
    }

    pub fn code(&self) -> &'static str {
        self.classify().1
    }

    /// What the client is told: what failed, never where. Vault's and the database's errors
    /// name addresses, mounts, paths and OS errors; those go to the server log only.
    fn public_detail(&self) -> String {
        match self {
            ApiError::Domain(DomainError::Vault(VaultError::Sealed)) => "Vault is sealed".to_owned(),
            ApiError::Domain(DomainError::Vault(VaultError::Denied { .. })) => {
                "Vault denied the operation (check the control plane's Vault policy)".to_owned()
            }
            ApiError::Domain(DomainError::Vault(VaultError::CasMismatch { .. })) => {
                "the key set changed concurrently in Vault; retry the request".to_owned()
            }
            ApiError::Domain(DomainError::Vault(_)) => {
                "Vault cannot be reached or failed the operation; the server log has the cause"
                    .to_owned()
            }
            ApiError::Domain(DomainError::Store(_)) => {
                "the database cannot be reached or failed the operation; the server log has the cause"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.classify();
        let request_id = crate::request_id::current();
        if status.is_server_error() {
            // Server-side failures are logged with their cause under the request's id; the
            // client gets what failed and the id.
            tracing::warn!(code, request_id = request_id.as_deref().unwrap_or("-"), error = %self, cause = ?std::error::Error::source(&self), "request failed");
        }
        let job_id = match &self {
            ApiError::Domain(DomainError::RotationInProgress { job_id }) => Some(job_id.clone()),
            _ => None,
        };
        let mfa = matches!(
            &self,
            ApiError::Domain(
                DomainError::MfaRequired { .. }
                    | DomainError::MfaInvalid
                    | DomainError::MfaReplayed
                    | DomainError::MfaNotEnrolled { .. }
            )
        );
        let retry_after = match &self {
            ApiError::Domain(DomainError::MfaLocked { retry_after_secs }) => {
                Some(*retry_after_secs)
            }
            _ => None,
        };
        let problem = Problem {
            mfa_methods: mfa.then(|| crate::lifecycle::MFA_METHODS.to_vec()),
            problem_type: format!("urn:keyward:problem:{code}"),
            title,
            status: status.as_u16(),
            detail: self.public_detail(),
            code,
            instance: request_id.map(|id| format!("urn:keyward:request:{id}")),
            job_id: job_id.clone(),
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(location) = job_id.and_then(|id| {
            HeaderValue::from_str(&format!("/api/v1/admin/secrets/rotate-all/{id}")).ok()
        }) {
            headers.insert(header::LOCATION, location);
        }
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if mfa && status == StatusCode::UNAUTHORIZED {
            // Vault answers its step-up MFA likewise: the credential is fine, the factor is not.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("X-Keyward-MFA methods=\"totp recovery webauthn\""),
            );
        } else if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyward\""),
            );
        }
        response
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection::*;
        match rejection {
            MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            BytesRejection(_) => ApiError::BodyTooLarge,
            other => ApiError::InvalidBody(other.body_text()),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::InvalidQuery(rejection.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        ApiError::InvalidQuery(rejection.body_text())
    }
}

/// Handlers that read the store or ask Vault directly fail as the domain does: one
/// classification of database and Vault failures.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Domain(e.into())
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        ApiError::Domain(e.into())
    }
}

/// Verifying signed heads fails as Vault does: an unreadable key or checkpoint is a Vault that
/// answered badly.
impl From<HeadError> for ApiError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::Vault(e) => e.into(),
            HeadError::Store(e) => e.into(),
            HeadError::Domain(e) => ApiError::Domain(e),
            other => VaultError::BadResponse {
                operation: "reading the audit head's key or checkpoint".into(),
                reason: other.to_string(),
            }
            .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfa_refusals_say_how_to_step_up_and_when_to_retry() {
        let required = ApiError::from(DomainError::MfaRequired {
            operation: "download",
        })
        .into_response();
        assert_eq!(required.status(), 401);
        let hint = required.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(
            hint.starts_with("X-Keyward-MFA") && hint.contains("totp"),
            "{hint}"
        );
        let locked = ApiError::from(DomainError::MfaLocked {
            retry_after_secs: 42,
        })
        .into_response();
        assert_eq!(locked.status(), 429);
        assert_eq!(locked.headers()[header::RETRY_AFTER], "42");
        let bad_token = ApiError::BadToken.into_response();
        assert!(
            bad_token.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
    }

    /// The domain's failures answer with the status and code they always had, and what the
    /// audit log calls a refusal is exactly what HTTP answers with a 4xx.
    #[test]
    fn domain_failures_keep_their_status_and_code() {
        let tenant = || "t1".parse().expect("tenant id");
        let host = || "h1".parse().expect("host id");
        let store = StoreError::Corrupt {
            what: "key set",
            detail: "missing".into(),
        };
        let cases = [
            (
                DomainError::TenantNotFound(tenant()),
                404,
                "tenant_not_found",
            ),
            (DomainError::TenantExists(tenant()), 409, "tenant_exists"),
            (
                DomainError::TenantOffboarded(tenant()),
                409,
                "tenant_offboarding",
            ),
            (
                DomainError::OffboardingNotFound(tenant()),
                404,
                "offboarding_not_found",
            ),
            (DomainError::HostNotFound(host()), 404, "host_not_found"),
            (DomainError::HostExists(host()), 409, "host_exists"),
            (
                DomainError::TokenNotFound("tok_1".into()),
                404,
                "token_not_found",
            ),
            (
                DomainError::EnrollmentTokenInvalid,
                401,
                "enrollment_token_invalid",
            ),
            (
                DomainError::CertificateRequestInvalid("bad CSR".into()),
                400,
                "invalid_body",
            ),
            (
                DomainError::PolicyInvalid("too short".into()),
                400,
                "invalid_body",
            ),
            (DomainError::KeyRevoked, 409, "key_revoked"),
            (DomainError::KeyRegistered, 409, "key_registered"),
            (
                DomainError::KeyAlreadyRegistered,
                409,
                "key_already_registered",
            ),
            (DomainError::KeyNotRegistered, 409, "key_not_registered"),
            (
                DomainError::KeyRefused(crate::lifecycle::KeyRefusal::RsaTooShort(2048)),
                422,
                "key_too_weak",
            ),
            (
                DomainError::KeyRefused(crate::lifecycle::KeyRefusal::Fido2Required),
                422,
                "fido2_required",
            ),
            (
                DomainError::AlreadyDownloaded { generation: 2 },
                410,
                "key_already_downloaded",
            ),
            (
                DomainError::PassphraseRequired { min: 12 },
                400,
                "passphrase_required",
            ),
            (
                DomainError::PassphraseTooShort { min: 12 },
                422,
                "passphrase_too_short",
            ),
            (
                DomainError::PassphraseInvalid("the passphrase must not contain NUL"),
                422,
                "passphrase_invalid",
            ),
            (
                DomainError::MfaRequired {
                    operation: "download",
                },
                401,
                "mfa_required",
            ),
            (DomainError::MfaInvalid, 401, "mfa_invalid"),
            (DomainError::MfaReplayed, 401, "mfa_replayed"),
            (
                DomainError::MfaNotEnrolled {
                    operation: "download",
                },
                403,
                "mfa_not_enrolled",
            ),
            (
                DomainError::MfaLocked {
                    retry_after_secs: 30,
                },
                429,
                "mfa_locked",
            ),
            (
                DomainError::MfaFactorNotFound("mfa_0".into()),
                404,
                "mfa_factor_not_found",
            ),
            (DomainError::MfaFactorConfirmed, 409, "mfa_factor_confirmed"),
            (
                DomainError::WebauthnNotConfigured,
                409,
                "webauthn_not_configured",
            ),
            (
                DomainError::ConcurrentModification,
                409,
                "concurrent_modification",
            ),
            (
                DomainError::RotationInProgress {
                    job_id: "job_1".into(),
                },
                409,
                "rotation_in_progress",
            ),
            (
                DomainError::JobNotFound("job_1".into()),
                404,
                "rotation_job_not_found",
            ),
            (DomainError::Vault(VaultError::Sealed), 503, "vault_sealed"),
            (DomainError::Store(store), 503, "database_unavailable"),
            (DomainError::KeyGeneration, 500, "key_generation_failed"),
            (DomainError::Internal, 500, "internal"),
        ];
        for (failure, status, code) in cases {
            let refusal = failure.is_refusal();
            let api = ApiError::from(failure);
            assert_eq!((api.status().as_u16(), api.code()), (status, code), "{api}");
            assert_eq!(api.status().is_server_error(), !refusal, "{api}");
        }
    }
}
