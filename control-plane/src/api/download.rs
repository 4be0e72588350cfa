//! The private key download's request body (an optional passphrase) and its policy:
//! `GET /api/v1/tenant/infrastructure/download-policy` (what applies to the caller) and
//! `/api/v1/admin/tenants/{tenant_id}/download-policy` (an admin's per-tenant override of the
//! deployment's `[download]`), as the rotation policy is set.
//!
//! The passphrase is read from the body into zeroized memory and handed to the domain; a body
//! that cannot be read is refused with a fixed text (serde's own messages can quote what was
//! sent), so no answer, log line or trace ever carries it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::admin::{admin_for, existing_tenant_for_admin};
use super::auth::TenantCaller;
use super::{ApiJson, ApiPath, AppState, tenant_from_path};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{DownloadPolicy, Passphrase, PolicySource};

/// `POST /api/v1/tenant/infrastructure/ssh-credentials/download`: no body (the key in clear,
/// where the policy allows it), or this JSON object.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownloadRequest {
    /// Encrypts the key as `ssh-keygen -p` does (bcrypt-pbkdf, aes256-ctr): at least the
    /// policy's `minPassphraseLength` characters, at most 1024 bytes (UTF-8), no NUL, CR or LF.
    /// keyward keeps it nowhere: not stored, logged or audited.
    #[schema(value_type = Option<String>, format = Password, min_length = 1, max_length = 1024)]
    pub passphrase: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for DownloadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadRequest")
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The download's body: an empty one, or a [`DownloadRequest`] (`application/json`).
#[derive(Debug)]
pub struct DownloadBody(pub Option<Passphrase>);

impl<S: Send + Sync> FromRequest<S> for DownloadBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|_| ApiError::BodyTooLarge)?;
        // Wiped when dropped (the buffer is taken over when hyper no longer shares it).
        let body = Zeroizing::new(Vec::from(bytes));
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let request: DownloadRequest = serde_json::from_slice(&body).map_err(|e| {
            // Only where it failed: serde's text can quote the value (a bare JSON string).
            ApiError::InvalidBody(format!(
                "the body must be empty or {{\"passphrase\": \"...\"}} (a JSON object with one \
                 string field); unreadable at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        Ok(Self(request.passphrase.map(Passphrase::new)))
    }
}

/// The download policy that applies to a tenant.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownloadPolicyView {
    pub tenant_id: String,
    /// A download must carry a passphrase; the key is then handed out encrypted only.
    pub require_passphrase: bool,
    /// The shortest passphrase taken, in characters (whether one is required or not).
    pub min_passphrase_length: u32,
    /// The longest, in bytes (UTF-8).
    pub max_passphrase_bytes: usize,
    /// `tenant` (set for this tenant by an admin) or `default` (the deployment's `[download]`).
    pub source: &'static str,
    pub updated_at: Option<String>,
}

impl DownloadPolicyView {
    fn new(tenant: &keyward_common::TenantId, policy: DownloadPolicy) -> Self {
        Self {
            tenant_id: tenant.to_string(),
            require_passphrase: policy.require_passphrase,
            min_passphrase_length: policy.min_passphrase_length,
            max_passphrase_bytes: crate::config::MAX_PASSPHRASE_BYTES,
            source: match policy.source {
                PolicySource::Default => "default",
                PolicySource::Tenant => "tenant",
            },
            updated_at: policy.updated_at.map(iso8601),
        }
    }
}

/// `PUT /api/v1/admin/tenants/{tenant_id}/download-policy`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownloadPolicyRequest {
    pub require_passphrase: bool,
    /// 1 to 1024 characters.
    #[schema(minimum = 1, maximum = 1024)]
    pub min_passphrase_length: u32,
}

/// Whether the caller's private key download needs a passphrase, and how long it must be.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/download-policy", tag = "tenant",
    responses((status = 200, body = DownloadPolicyView), (status = 401, body = Problem)))]
pub async fn tenant_download_policy(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<DownloadPolicyView>, ApiError> {
    let policy = state.lifecycle.download_policy(&who.tenant).await?;
    Ok(Json(DownloadPolicyView::new(&who.tenant, policy)))
}

/// The download policy that applies to a tenant.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant_id}/download-policy", tag = "admin",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = DownloadPolicyView), (status = 404, body = Problem)))]
pub async fn get_download_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<DownloadPolicyView>, ApiError> {
    let tenant = existing_tenant_for_admin(&state, caller, &raw).await?;
    let policy = state.lifecycle.download_policy(&tenant).await?;
    Ok(Json(DownloadPolicyView::new(&tenant, policy)))
}

/// Sets a tenant's own download policy, in place of the deployment's. Audited
/// (`download_policy.set`).
#[utoipa::path(put, path = "/api/v1/admin/tenants/{tenant_id}/download-policy", tag = "admin",
    params(("tenant_id" = String, Path)), request_body = DownloadPolicyRequest,
    responses((status = 200, body = DownloadPolicyView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn put_download_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<DownloadPolicyRequest>,
) -> Result<Json<DownloadPolicyView>, ApiError> {
    let policy = Some((body.require_passphrase, body.min_passphrase_length));
    set_download_policy(state, caller, &raw, policy).await
}

/// Returns a tenant to the deployment's download policy. Audited (`download_policy.reset`).
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant_id}/download-policy", tag = "admin",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = DownloadPolicyView), (status = 404, body = Problem)))]
pub async fn delete_download_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<DownloadPolicyView>, ApiError> {
    set_download_policy(state, caller, &raw, None).await
}

/// Sets (`Some`) or resets (`None`) a tenant's own download policy, for an admin.
async fn set_download_policy(
    state: AppState,
    caller: Caller,
    raw: &str,
    policy: Option<(bool, u32)>,
) -> Result<Json<DownloadPolicyView>, ApiError> {
    let tenant = tenant_from_path(raw)?;
    let caller = admin_for(caller, &tenant)?;
    let policy = state
        .lifecycle
        .set_download_policy(&caller, &tenant, policy)
        .await?;
    Ok(Json(DownloadPolicyView::new(&tenant, policy)))
}
