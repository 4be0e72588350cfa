//! Tenant offboarding: `DELETE /api/v1/admin/tenants/{tenant_id}` starts it (the domain's
//! `lifecycle/offboarding.rs` says what it does), `GET .../offboarding` follows it.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use serde::Deserialize;
use utoipa::ToSchema;

use super::admin::admin_for;
use super::{ApiJson, ApiPath, AppState, tenant_from_path};
use crate::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{DomainError, OffboardingStatus};

/// The confirmation an irreversible offboarding needs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OffboardTenantRequest {
    /// The tenant id of the path, again.
    pub confirm: String,
}

fn status_path(tenant: &str) -> String {
    format!("/api/v1/admin/tenants/{tenant}/offboarding")
}

/// Offboards a tenant: its tokens are revoked at once, its agents remove the managed keys and
/// end the sessions, then its hosts are revoked and every secret under its Vault path is
/// destroyed (all versions and metadata). Answers at once with the status (and `Location` of
/// it); asking again answers the status as it is.
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant_id}", tag = "admin",
    params(("tenant_id" = String, Path)), request_body = OffboardTenantRequest,
    responses((status = 202, body = OffboardingStatus, description = "started now or before: what is done and what is pending"),
              (status = 404, body = Problem, description = "`tenant_not_found`"),
              (status = 422, body = Problem, description = "`confirmation_mismatch`: `confirm` is not the tenant id of the path")))]
pub async fn offboard_tenant(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<OffboardTenantRequest>,
) -> Result<
    (
        StatusCode,
        [(header::HeaderName, String); 1],
        Json<OffboardingStatus>,
    ),
    ApiError,
> {
    let tenant = tenant_from_path(&raw)?;
    let caller = admin_for(caller, &tenant)?;
    if body.confirm != tenant.as_str() {
        return Err(ApiError::ConfirmationMismatch {
            tenant: tenant.to_string(),
        });
    }
    let (status, _) = state.lifecycle.offboard_tenant(&caller, &tenant).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, status_path(tenant.as_str()))],
        Json(status),
    ))
}

/// A tenant's offboarding: its step, each host's agent, what Vault destroyed, what is pending
/// and why the last attempt failed.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant_id}/offboarding", tag = "admin",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = OffboardingStatus),
              (status = 404, body = Problem, description = "`tenant_not_found`, `offboarding_not_found`")))]
pub async fn offboarding_status(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<OffboardingStatus>, ApiError> {
    let tenant = tenant_from_path(&raw)?;
    admin_for(caller, &tenant)?;
    match state.lifecycle.offboarding_status(&tenant).await? {
        Some(status) => Ok(Json(status)),
        None if state.store.tenant(&tenant).await?.is_none() => {
            Err(DomainError::TenantNotFound(tenant).into())
        }
        None => Err(DomainError::OffboardingNotFound(tenant).into()),
    }
}
