//! The one place where failures become HTTP answers.
//!
//! Every 4xx and 5xx is an RFC 9457 problem document (`application/problem+json`) with a stable
//! machine-readable `code`. Clients branch on `code`; `title` and `detail` are for people.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_common::{IdError, TenantId};
use serde::Serialize;
use utoipa::ToSchema;

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
    /// With `rotation_in_progress`: the running job, to follow instead.
    #[serde(rename = "jobId", skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Everything a request can fail with.
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
    #[error("tenant {0} not found")]
    TenantNotFound(TenantId),
    #[error("host {0} not found")]
    HostNotFound(keyward_common::HostId),
    #[error("host {0} already exists")]
    HostExists(keyward_common::HostId),
    #[error(
        "the enrollment token is unknown, used, expired or revoked; ask an admin for a new one"
    )]
    EnrollmentTokenInvalid,
    #[error("API token {0} not found")]
    TokenNotFound(String),
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
    #[error("request body exceeds the server's limit (server.max_body_bytes)")]
    BodyTooLarge,
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("tenant {0} already exists")]
    TenantExists(TenantId),
    #[error("the tenant key is revoked; regenerate it to restore access")]
    KeyRevoked,
    #[error(
        "the private key of generation {generation} was already downloaded; \
         regenerate the key to get a new one"
    )]
    AlreadyDownloaded { generation: i64 },
    #[error("the key set changed concurrently; retry the request")]
    Conflict,
    #[error("bulk rotation job {job_id} is running; follow it or wait until it ends")]
    RotationInProgress { job_id: String },
    #[error("rotation job {0} not found")]
    JobNotFound(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key generation failed")]
    KeyGeneration,
    #[error("the request timed out")]
    Timeout,
    #[error("too many failed enrollments from this address; retry in a minute")]
    EnrollmentThrottled,
    #[error("the control plane is not ready")]
    NotReady,
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
            TenantNotFound(_) => (StatusCode::NOT_FOUND, "tenant_not_found", "Not Found"),
            TokenNotFound(_) => (StatusCode::NOT_FOUND, "token_not_found", "Not Found"),
            HostNotFound(_) => (StatusCode::NOT_FOUND, "host_not_found", "Not Found"),
            HostExists(_) => (StatusCode::CONFLICT, "host_exists", "Conflict"),
            EnrollmentTokenInvalid => (
                StatusCode::UNAUTHORIZED,
                "enrollment_token_invalid",
                "Unauthorized",
            ),
            InvalidId { .. } => (StatusCode::BAD_REQUEST, "invalid_id", "Bad Request"),
            InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body", "Bad Request"),
            InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query", "Bad Request"),
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
            TenantExists(_) => (StatusCode::CONFLICT, "tenant_exists", "Conflict"),
            KeyRevoked => (StatusCode::CONFLICT, "key_revoked", "Conflict"),
            AlreadyDownloaded { .. } => (StatusCode::GONE, "key_already_downloaded", "Gone"),
            Conflict => (StatusCode::CONFLICT, "concurrent_modification", "Conflict"),
            RotationInProgress { .. } => (StatusCode::CONFLICT, "rotation_in_progress", "Conflict"),
            JobNotFound(_) => (StatusCode::NOT_FOUND, "rotation_job_not_found", "Not Found"),
            Vault(VaultError::Sealed) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "vault_sealed",
                "Vault Unavailable",
            ),
            Vault(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "vault_unavailable",
                "Vault Unavailable",
            ),
            Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "Database Unavailable",
            ),
            KeyGeneration => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "key_generation_failed",
                "Internal Server Error",
            ),
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
            ApiError::Vault(VaultError::Sealed) => "Vault is sealed".to_owned(),
            ApiError::Vault(VaultError::Denied { .. }) => {
                "Vault denied the operation (check the control plane's Vault policy)".to_owned()
            }
            ApiError::Vault(VaultError::CasMismatch { .. }) => {
                "the key set changed concurrently in Vault; retry the request".to_owned()
            }
            ApiError::Vault(_) => {
                "Vault cannot be reached or failed the operation; the server log has the cause"
                    .to_owned()
            }
            ApiError::Store(_) => {
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
            ApiError::RotationInProgress { job_id } => Some(job_id.clone()),
            _ => None,
        };
        let problem = Problem {
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
        if status == StatusCode::UNAUTHORIZED {
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
