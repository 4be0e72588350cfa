//! Just-in-time access over REST (`lifecycle::grants`): requests, approvals, grants.
//!
//! A tenant requests access for its own user (granted at once), lists every request and grant on
//! its VPSs (the platform admins' included: who, when, why), approves or denies the admins'
//! requests when its policy asks for its approval, sets that policy, and revokes grants on its
//! VPSs. Admins request access for either user of any tenant, list, approve (another admin's
//! request for the admin user, when the deployment says so), deny and revoke.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keyward_common::{CertificateId, KeyKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::admin_for;
use super::auth::{AdminCaller, TenantCaller};
use super::certificates::reason;
use super::{ApiJson, ApiPath, ApiQuery, AppState, tenant_from_path};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{AccessAsk, Decision, DomainError, Grant};
use crate::store::{GrantStatus, Role};

/// `POST /api/v1/tenant/infrastructure/access-requests`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantAccessRequest {
    /// The requester's own OpenSSH public key (no private key is ever made for them).
    #[schema(max_length = 8192)]
    pub public_key: String,
    /// How long the access lasts once granted, in seconds (60 up to `certificates.max_validity`).
    #[schema(minimum = 60, maximum = 86400)]
    pub duration_seconds: u64,
    /// Why: shown to the tenant and in the audit log.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// `POST /api/v1/admin/tenants/{tenant_id}/access-requests`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminAccessRequest {
    /// Which managed user: `admin` or `tenant`.
    #[schema(value_type = String, pattern = "^(admin|tenant)$")]
    pub kind: KeyKind,
    #[schema(max_length = 8192)]
    pub public_key: String,
    #[schema(minimum = 60, maximum = 86400)]
    pub duration_seconds: u64,
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// `PUT /api/v1/tenant/infrastructure/access-policy`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicy {
    /// `approval`: the platform's admins need the tenant's approval to enter its VPSs;
    /// `notify`: they do not, and the tenant is shown every grant.
    #[schema(pattern = "^(approval|notify)$")]
    pub platform_access: String,
}

/// A request for access, and the grant it became.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessGrant {
    #[schema(pattern = "^ag-[0-9a-f]{16}$")]
    pub grant_id: String,
    pub tenant_id: String,
    /// `admin` or `tenant`: the managed user it enters as.
    pub kind: String,
    /// `admin` or `tenant`: who asked.
    pub requester_role: String,
    /// The API token that asked (admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    pub key_fingerprint: String,
    pub duration_seconds: i64,
    pub reason: String,
    /// `pending`, `active`, `expired`, `denied`, `lapsed` (not decided in time) or `revoked`.
    pub status: &'static str,
    pub needs_tenant_approval: bool,
    pub needs_admin_approval: bool,
    pub tenant_approved: bool,
    pub admin_approved: bool,
    pub requested_at: String,
    /// A pending request lapses then.
    pub decide_by: String,
    /// When the access ends (its certificate's end), once granted.
    pub ends_at: Option<String>,
    pub certificate_id: Option<String>,
    /// The certificate, once granted: for `~/.ssh/<key>-cert.pub` beside the requester's key.
    pub certificate: Option<String>,
}

/// Grants, newest first (at most 500).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessGrantList {
    pub grants: Vec<AccessGrant>,
}

/// `GET /api/v1/admin/access-requests` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GrantQuery {
    /// One tenant's.
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub tenant_id: Option<String>,
    /// `pending`, `active`, `denied`, `lapsed`, `revoked` or `expired`.
    #[param(pattern = "^(pending|active|denied|lapsed|revoked|expired)$")]
    pub status: Option<String>,
}

impl AccessGrant {
    fn new(grant: Grant, admin: bool, now: chrono::DateTime<chrono::Utc>) -> Self {
        let Grant {
            record: g,
            certificate,
        } = grant;
        let status = match g.status {
            GrantStatus::Active if g.ends_at.is_some_and(|end| end <= now) => "expired",
            other => other.as_str(),
        };
        Self {
            grant_id: g.grant_id,
            tenant_id: g.tenant_id.to_string(),
            kind: g.kind.to_string(),
            requester_role: g.requester_role,
            requested_by: admin.then_some(g.requested_by),
            key_fingerprint: g.key_fingerprint.to_string(),
            duration_seconds: g.duration_seconds,
            reason: g.reason,
            status,
            needs_tenant_approval: g.needs_tenant,
            needs_admin_approval: g.needs_admin,
            tenant_approved: g.tenant_approved_by.is_some(),
            admin_approved: g.admin_approved_by.is_some(),
            requested_at: iso8601(g.requested_at),
            decide_by: iso8601(g.decide_by),
            ends_at: g.ends_at.map(iso8601),
            certificate_id: g.certificate_number.map(|number| {
                CertificateId {
                    tenant: g.tenant_id.clone(),
                    kind: g.kind,
                    number,
                }
                .to_string()
            }),
            certificate: certificate.map(|c| c.certificate),
        }
    }
}

fn duration(seconds: u64) -> std::time::Duration {
    std::time::Duration::from_secs(seconds)
}

/// A grant id from a path: one of another form does not exist.
fn grant_id(raw: &str) -> Result<&str, ApiError> {
    let ok = raw.len() == 19
        && raw.starts_with("ag-")
        && raw[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(raw)
    } else {
        Err(DomainError::GrantNotFound(raw.chars().take(40).collect()).into())
    }
}

/// Reads a grant as `caller` may: an admin any, a tenant those on its VPSs.
async fn visible(state: &AppState, caller: &Caller, raw: &str) -> Result<Grant, ApiError> {
    let id = grant_id(raw)?;
    let record = state
        .store
        .grant(id)
        .await?
        .filter(|g| match &caller.role {
            Some(Role::Admin) => true,
            Some(Role::Tenant(t)) => *t == g.tenant_id,
            None => false,
        })
        .ok_or_else(|| DomainError::GrantNotFound(id.to_owned()))?;
    Ok(state.lifecycle.with_certificate(record).await?)
}

async fn answer(state: &AppState, grant: Grant, caller: &Caller) -> Json<AccessGrant> {
    let admin = matches!(caller.role, Some(Role::Admin));
    Json(AccessGrant::new(grant, admin, state.lifecycle.now()))
}

async fn operate(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    operation: &str,
) -> Result<Json<AccessGrant>, ApiError> {
    // Nothing of another tenant's is shown or done, whatever the operation.
    visible(state, caller, raw).await?;
    let lifecycle = &state.lifecycle;
    let grant = match operation {
        "approve" => {
            lifecycle
                .decide_access(caller, raw, Decision::Approve)
                .await?
        }
        "deny" => lifecycle.decide_access(caller, raw, Decision::Deny).await?,
        "revoke" => lifecycle.revoke_access(caller, raw).await?,
        other => {
            return Err(ApiError::NoRoute {
                path: format!("operation {:?}", other.chars().take(40).collect::<String>()),
            });
        }
    };
    Ok(answer(state, grant, caller).await)
}

async fn list(
    state: &AppState,
    caller: &Caller,
    tenant: Option<&keyward_common::TenantId>,
    status: Option<GrantStatus>,
) -> Result<Json<AccessGrantList>, ApiError> {
    let records = state.store.grants(tenant, status).await?;
    let admin = matches!(caller.role, Some(Role::Admin));
    let now = state.lifecycle.now();
    let mut grants = Vec::with_capacity(records.len());
    for record in records {
        let grant = state.lifecycle.with_certificate(record).await?;
        grants.push(AccessGrant::new(grant, admin, now));
    }
    Ok(Json(AccessGrantList { grants }))
}

/// The requests and grants on the tenant's VPSs as the tenant sees them (its data export).
pub(super) async fn tenant_view(
    state: &AppState,
    tenant: &keyward_common::TenantId,
) -> Result<Json<AccessGrantList>, ApiError> {
    let caller = Caller {
        token_id: None,
        role: Some(Role::Tenant(tenant.clone())),
        source_addr: None,
        idp_mfa: false,
    };
    list(state, &caller, Some(tenant), None).await
}

/// Requests access for the tenant's own user, with the requester's own key: granted at once.
#[utoipa::path(post, path = "/api/v1/tenant/infrastructure/access-requests", tag = "tenant",
    request_body = TenantAccessRequest,
    responses((status = 201, body = AccessGrant),
        (status = 400, description = "`invalid_body`: not a public key, a weak key, a duration out of bounds", body = Problem),
        (status = 409, description = "`key_denied`, `key_revoked`", body = Problem),
        (status = 429, description = "`quota_exceeded`: the tenant's bound on valid certificates (or on requests waiting for a decision) is reached", body = Problem),
        (status = 503, description = "`vault_unavailable`, `certificates_not_configured`", body = Problem)))]
pub async fn tenant_request(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiJson(body): ApiJson<TenantAccessRequest>,
) -> Result<(StatusCode, Json<AccessGrant>), ApiError> {
    let ask = AccessAsk {
        tenant: who.tenant.clone(),
        kind: KeyKind::Tenant,
        public_key: body.public_key,
        duration: duration(body.duration_seconds),
        reason: reason(Some(body.reason), true)?,
    };
    let grant = state.lifecycle.request_access(&who.caller, ask).await?;
    Ok((
        StatusCode::CREATED,
        answer(&state, grant, &who.caller).await,
    ))
}

/// Every request and grant on the tenant's VPSs, the platform admins' included.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/access-requests", tag = "tenant",
    responses((status = 200, body = AccessGrantList)))]
pub async fn tenant_list(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<AccessGrantList>, ApiError> {
    list(&state, &who.caller, Some(&who.tenant), None).await
}

/// One request or grant on the tenant's VPSs.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/access-requests/{grant_id}", tag = "tenant",
    params(("grant_id" = String, Path)),
    responses((status = 200, body = AccessGrant), (status = 404, description = "`access_grant_not_found`", body = Problem)))]
pub async fn tenant_get(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<AccessGrant>, ApiError> {
    let grant = visible(&state, &who.caller, &raw).await?;
    Ok(answer(&state, grant, &who.caller).await)
}

/// Approves or denies a platform admin's request (when the tenant's policy asks for its
/// approval), or revokes a grant on the tenant's VPSs.
#[utoipa::path(post, path = "/api/v1/tenant/infrastructure/access-requests/{grant_id}/{operation}", tag = "tenant",
    params(("grant_id" = String, Path), ("operation" = String, Path, description = "approve, deny or revoke")),
    responses((status = 200, body = AccessGrant),
        (status = 403, description = "`approval_not_allowed`: the request does not ask for this approval", body = Problem),
        (status = 404, description = "`access_grant_not_found`", body = Problem),
        (status = 409, description = "`access_grant_closed`: decided, lapsed or ended", body = Problem)))]
pub async fn tenant_operate(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiPath((raw, operation)): ApiPath<(String, String)>,
) -> Result<Json<AccessGrant>, ApiError> {
    operate(&state, &who.caller, &raw, &operation).await
}

/// Whether the platform's admins need the tenant's approval to enter its VPSs.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/access-policy", tag = "tenant",
    responses((status = 200, body = AccessPolicy)))]
pub async fn tenant_policy(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<AccessPolicy>, ApiError> {
    let approval = state
        .store
        .platform_access_needs_approval(&who.tenant)
        .await?
        .ok_or_else(|| DomainError::TenantNotFound(who.tenant.clone()))?;
    Ok(Json(AccessPolicy {
        platform_access: if approval { "approval" } else { "notify" }.into(),
    }))
}

/// Sets whether the platform's admins need the tenant's approval to enter its VPSs (requests
/// made before keep what they needed).
#[utoipa::path(put, path = "/api/v1/tenant/infrastructure/access-policy", tag = "tenant",
    request_body = AccessPolicy,
    responses((status = 200, body = AccessPolicy), (status = 400, body = Problem)))]
pub async fn tenant_set_policy(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiJson(body): ApiJson<AccessPolicy>,
) -> Result<Json<AccessPolicy>, ApiError> {
    let approval = match body.platform_access.as_str() {
        "approval" => true,
        "notify" => false,
        _ => {
            return Err(ApiError::InvalidBody(
                "platformAccess must be \"approval\" or \"notify\"".into(),
            ));
        }
    };
    state
        .lifecycle
        .set_platform_access(&who.caller, &who.tenant, approval)
        .await?;
    Ok(Json(body))
}

/// Requests access to a tenant's VPSs as one of its managed users, with the requester's own
/// key. Granted at once unless the tenant's approval (its policy) or another admin's (the admin
/// user, `access.second_admin_for_admin_user`) is needed.
#[utoipa::path(post, path = "/api/v1/admin/tenants/{tenant_id}/access-requests", tag = "admin",
    params(("tenant_id" = String, Path)),
    request_body = AdminAccessRequest,
    responses((status = 201, body = AccessGrant),
        (status = 400, description = "`invalid_body`: not a public key, a weak key, a duration out of bounds", body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`key_denied`, `key_revoked`", body = Problem),
        (status = 429, description = "`quota_exceeded`: the tenant's bound on valid certificates (or on requests waiting for a decision) is reached", body = Problem),
        (status = 503, description = "`vault_unavailable`, `certificates_not_configured`", body = Problem)))]
pub async fn admin_request(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw_tenant): ApiPath<String>,
    ApiJson(body): ApiJson<AdminAccessRequest>,
) -> Result<(StatusCode, Json<AccessGrant>), ApiError> {
    let tenant = tenant_from_path(&raw_tenant)?;
    let caller = admin_for(caller, &tenant)?;
    let ask = AccessAsk {
        tenant,
        kind: body.kind,
        public_key: body.public_key,
        duration: duration(body.duration_seconds),
        reason: reason(Some(body.reason), true)?,
    };
    let grant = state.lifecycle.request_access(&caller, ask).await?;
    Ok((StatusCode::CREATED, answer(&state, grant, &caller).await))
}

/// Requests and grants, newest first: the active ones per tenant, the pending ones to decide,
/// the history.
#[utoipa::path(get, path = "/api/v1/admin/access-requests", tag = "admin",
    params(GrantQuery),
    responses((status = 200, body = AccessGrantList)))]
pub async fn admin_list(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiQuery(query): ApiQuery<GrantQuery>,
) -> Result<Json<AccessGrantList>, ApiError> {
    let tenant = query
        .tenant_id
        .as_deref()
        .map(tenant_from_path)
        .transpose()?;
    let status = query
        .status
        .as_deref()
        .map(|s| {
            s.parse::<GrantStatus>()
                .map_err(|_| ApiError::InvalidQuery(format!("status {s:?} is not a grant status")))
        })
        .transpose()?;
    list(&state, &caller, tenant.as_ref(), status).await
}

/// One request or grant.
#[utoipa::path(get, path = "/api/v1/admin/access-requests/{grant_id}", tag = "admin",
    params(("grant_id" = String, Path)),
    responses((status = 200, body = AccessGrant), (status = 404, description = "`access_grant_not_found`", body = Problem)))]
pub async fn admin_get(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<AccessGrant>, ApiError> {
    let grant = visible(&state, &caller, &raw).await?;
    Ok(answer(&state, grant, &caller).await)
}

/// Approves (another admin's request, when it asks for an admin's approval), denies or revokes.
#[utoipa::path(post, path = "/api/v1/admin/access-requests/{grant_id}/{operation}", tag = "admin",
    params(("grant_id" = String, Path), ("operation" = String, Path, description = "approve, deny or revoke")),
    responses((status = 200, body = AccessGrant),
        (status = 403, description = "`approval_not_allowed`: the request does not ask for an admin's approval, or it is the approver's own", body = Problem),
        (status = 404, description = "`access_grant_not_found`", body = Problem),
        (status = 409, description = "`access_grant_closed`: decided, lapsed or ended", body = Problem)))]
pub async fn admin_operate(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiPath((raw, operation)): ApiPath<(String, String)>,
) -> Result<Json<AccessGrant>, ApiError> {
    operate(&state, &caller, &raw, &operation).await
}
