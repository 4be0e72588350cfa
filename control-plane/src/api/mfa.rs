//! Second factors over REST: enrolment, confirmation, listing and deletion of TOTP factors, for
//! tenants (`/api/v1/tenant/mfa/...`: the tenant's factors) and admins (`/api/v1/admin/mfa/...`:
//! the calling admin token's), a tenant's step-up policy
//! (`/api/v1/admin/tenants/{tenant_id}/mfa-policy`), an admin's view and reset of a tenant's
//! factors (`/api/v1/admin/tenants/{tenant_id}/mfa`, for a tenant that lost them), and the `X-Keyward-MFA` header that
//! sensitive operations read ([`StepUp`]) and hand to the domain, which decides.
//!
//! The secret, its URI and QR code, and the recovery codes are in one answer each and nowhere
//! else; a confirmation code is read into zeroized memory.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::admin::{admin_for, existing_tenant_for_admin};
use super::auth::{AdminCaller, TenantCaller};
use super::{ApiJson, ApiPath, AppState, tenant_from_path};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::config::SensitiveOperation;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{MfaFactor, MfaPolicy, MfaProof, PolicySource, TotpEnrolment};

/// The header a request steps up with.
pub const MFA_HEADER: &str = "x-keyward-mfa";

/// `X-Keyward-MFA` of the request, if any, as sent (the domain reads it). A value that is not
/// text is passed on empty: it is then a wrong second factor like any other.
#[derive(Debug)]
pub struct StepUp(pub Option<MfaProof>);

impl StepUp {
    pub fn proof(&self) -> Option<&MfaProof> {
        self.0.as_ref()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for StepUp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(Self(parts.headers.get(MFA_HEADER).map(|value| {
            MfaProof::new(Zeroizing::new(
                value.to_str().unwrap_or_default().to_owned(),
            ))
        })))
    }
}

/// A new TOTP factor: add it to an authenticator app (scan `qrSvg` or `otpauthUri`, or type
/// `secret`), then confirm it with a code. Shown once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TotpEnrolmentView {
    /// The factor id (`mfa_` and 16 hex digits).
    pub id: String,
    /// The seed in base32 (RFC 4648, no padding).
    #[schema(value_type = String)]
    pub secret: Zeroizing<String>,
    /// `otpauth://totp/keyward:{account}?secret=...&algorithm=SHA1&digits=6&period=30`.
    #[schema(value_type = String)]
    pub otpauth_uri: Zeroizing<String>,
    /// The URI as a QR code (an SVG image).
    #[schema(value_type = Option<String>)]
    pub qr_svg: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for TotpEnrolmentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrolmentView")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl From<TotpEnrolment> for TotpEnrolmentView {
    fn from(e: TotpEnrolment) -> Self {
        Self {
            id: e.factor_id,
            secret: e.secret,
            otpauth_uri: e.otpauth_uri,
            qr_svg: e.qr_svg,
        }
    }
}

/// `POST .../mfa/totp/{factor_id}/confirm`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfirmTotpRequest {
    /// The 6-digit code the app shows now.
    #[schema(value_type = String, pattern = "^[0-9]{6}$")]
    pub code: Zeroizing<String>,
}

impl std::fmt::Debug for ConfirmTotpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfirmTotpRequest { code: <redacted> }")
    }
}

/// The recovery codes of a confirmed factor: each steps up once (`X-Keyward-MFA:
/// recovery:CODE`). Shown this once; keyward keeps only their hashes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryCodesView {
    pub id: String,
    #[schema(value_type = Vec<String>)]
    pub recovery_codes: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for RecoveryCodesView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryCodesView")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A second factor (never its secret).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaFactorView {
    pub id: String,
    /// `totp`, or `webauthn` (a security key or passkey: confirmed when registered).
    pub kind: String,
    /// What its owner called it (security keys; `null` for TOTP).
    pub name: Option<String>,
    pub created_at: String,
    /// `null` until a first code confirms it; only confirmed factors step up.
    pub confirmed_at: Option<String>,
    pub last_used_at: Option<String>,
    pub recovery_codes_left: i64,
}

impl From<MfaFactor> for MfaFactorView {
    fn from(f: MfaFactor) -> Self {
        Self {
            id: f.factor_id,
            kind: f.kind,
            name: f.name,
            created_at: iso8601(f.created_at),
            confirmed_at: f.confirmed_at.map(iso8601),
            last_used_at: f.last_used_at.map(iso8601),
            recovery_codes_left: f.recovery_codes_left,
        }
    }
}

/// The caller's second factors and the operations its requests must step up for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaFactorsView {
    pub factors: Vec<MfaFactorView>,
    pub require_for: Vec<SensitiveOperation>,
    /// `tenant` (set for this tenant by an admin) or `default` (the deployment's `[mfa]`).
    pub policy_source: &'static str,
}

/// The step-up policy that applies to a tenant's tokens.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaPolicyView {
    pub tenant_id: String,
    /// The operations that need `X-Keyward-MFA`.
    pub require_for: Vec<SensitiveOperation>,
    /// `tenant` or `default`.
    pub source: &'static str,
    pub updated_at: Option<String>,
}

/// `PUT /api/v1/admin/tenants/{tenant_id}/mfa-policy`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MfaPolicyRequest {
    /// `download`, `regenerate`, `revoke_admin_key`, `rotate_all`, `issue_token`,
    /// `revoke_host`, `reset_mfa` (a tenant's tokens can do the first two).
    pub require_for: Vec<SensitiveOperation>,
}

fn source_name(source: PolicySource) -> &'static str {
    match source {
        PolicySource::Default => "default",
        PolicySource::Tenant => "tenant",
    }
}

fn policy_view(tenant: &keyward_common::TenantId, policy: MfaPolicy) -> MfaPolicyView {
    MfaPolicyView {
        tenant_id: tenant.to_string(),
        require_for: policy.require_for,
        source: source_name(policy.source),
        updated_at: policy.updated_at.map(iso8601),
    }
}

async fn factors(
    state: &AppState,
    caller: &Caller,
    policy: MfaPolicy,
) -> Result<MfaFactorsView, ApiError> {
    let factors = state.lifecycle.mfa_factors(caller).await?;
    Ok(MfaFactorsView {
        factors: factors.into_iter().map(MfaFactorView::from).collect(),
        require_for: policy.require_for,
        policy_source: source_name(policy.source),
    })
}

async fn enrol(
    state: &AppState,
    caller: &Caller,
    step_up: &StepUp,
) -> Result<(StatusCode, Json<TotpEnrolmentView>), ApiError> {
    let enrolment = state.lifecycle.enrol_totp(caller, step_up.proof()).await?;
    Ok((StatusCode::CREATED, Json(enrolment.into())))
}

async fn confirm(
    state: &AppState,
    caller: &Caller,
    factor_id: String,
    body: ConfirmTotpRequest,
) -> Result<Json<RecoveryCodesView>, ApiError> {
    let codes = state
        .lifecycle
        .confirm_totp(caller, &factor_id, &body.code)
        .await?;
    Ok(Json(RecoveryCodesView {
        id: factor_id,
        recovery_codes: codes,
    }))
}

/// The tenant's second factors, and the operations its tokens must step up for.
#[utoipa::path(get, path = "/api/v1/tenant/mfa", tag = "mfa",
    responses((status = 200, body = MfaFactorsView)))]
pub async fn tenant_factors(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<MfaFactorsView>, ApiError> {
    let policy = state.lifecycle.mfa_policy(&who.tenant).await?;
    Ok(Json(factors(&state, &who.caller, policy).await?))
}

/// Starts a TOTP factor for the tenant (unconfirmed until a code confirms it). With a confirmed
/// factor already, the request needs `X-Keyward-MFA`. Audited (`mfa.enrol`).
#[utoipa::path(post, path = "/api/v1/tenant/mfa/totp", tag = "mfa",
    params(("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`: needed when a factor is confirmed already")),
    responses((status = 201, body = TotpEnrolmentView),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: a confirmed factor exists and the header is missing or wrong"),
        (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `quota_exceeded`: five factors already")))]
pub async fn tenant_enrol(
    State(state): State<AppState>,
    who: TenantCaller,
    step_up: StepUp,
) -> Result<(StatusCode, Json<TotpEnrolmentView>), ApiError> {
    enrol(&state, &who.caller, &step_up).await
}

/// Confirms a tenant's TOTP factor with a current code; answers its ten recovery codes, once.
/// Audited (`mfa.confirm`).
#[utoipa::path(post, path = "/api/v1/tenant/mfa/totp/{factor_id}/confirm", tag = "mfa",
    params(("factor_id" = String, Path)), request_body = ConfirmTotpRequest,
    responses((status = 200, body = RecoveryCodesView),
        (status = 401, body = Problem, description = "`mfa_invalid`: not a current code of this factor"),
        (status = 404, body = Problem, description = "`mfa_factor_not_found`"),
        (status = 409, body = Problem, description = "`mfa_factor_confirmed`"),
        (status = 429, body = Problem, description = "`mfa_locked`")))]
pub async fn tenant_confirm(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiPath(factor_id): ApiPath<String>,
    ApiJson(body): ApiJson<ConfirmTotpRequest>,
) -> Result<Json<RecoveryCodesView>, ApiError> {
    confirm(&state, &who.caller, factor_id, body).await
}

/// Deletes a tenant's factor; with a confirmed factor, only with `X-Keyward-MFA`. Audited
/// (`mfa.delete`).
#[utoipa::path(delete, path = "/api/v1/tenant/mfa/totp/{factor_id}", tag = "mfa",
    params(("factor_id" = String, Path),
        ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`")),
    responses((status = 204),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`"),
        (status = 404, body = Problem, description = "`mfa_factor_not_found`"),
        (status = 429, body = Problem, description = "`mfa_locked`")))]
pub async fn tenant_delete(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiPath(factor_id): ApiPath<String>,
    step_up: StepUp,
) -> Result<StatusCode, ApiError> {
    state
        .lifecycle
        .delete_mfa_factor(&who.caller, &factor_id, step_up.proof())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The calling admin token's second factors, and the operations admins must step up for (the
/// deployment's `[mfa] require_for`).
#[utoipa::path(get, path = "/api/v1/admin/mfa", tag = "mfa",
    responses((status = 200, body = MfaFactorsView)))]
pub async fn admin_factors(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
) -> Result<Json<MfaFactorsView>, ApiError> {
    let policy = state.lifecycle.deployment_mfa_policy();
    Ok(Json(factors(&state, &caller, policy).await?))
}

/// Starts a TOTP factor for the calling admin token. With a confirmed factor already, the
/// request needs `X-Keyward-MFA`. Audited (`mfa.enrol`).
#[utoipa::path(post, path = "/api/v1/admin/mfa/totp", tag = "mfa",
    params(("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`: needed when a factor is confirmed already")),
    responses((status = 201, body = TotpEnrolmentView),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`"),
        (status = 429, body = Problem, description = "`mfa_locked`, `quota_exceeded`")))]
pub async fn admin_enrol(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    step_up: StepUp,
) -> Result<(StatusCode, Json<TotpEnrolmentView>), ApiError> {
    enrol(&state, &caller, &step_up).await
}

/// Confirms the admin token's TOTP factor; answers its ten recovery codes, once.
#[utoipa::path(post, path = "/api/v1/admin/mfa/totp/{factor_id}/confirm", tag = "mfa",
    params(("factor_id" = String, Path)), request_body = ConfirmTotpRequest,
    responses((status = 200, body = RecoveryCodesView),
        (status = 401, body = Problem, description = "`mfa_invalid`"),
        (status = 404, body = Problem, description = "`mfa_factor_not_found`"),
        (status = 409, body = Problem, description = "`mfa_factor_confirmed`"),
        (status = 429, body = Problem, description = "`mfa_locked`")))]
pub async fn admin_confirm(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiPath(factor_id): ApiPath<String>,
    ApiJson(body): ApiJson<ConfirmTotpRequest>,
) -> Result<Json<RecoveryCodesView>, ApiError> {
    confirm(&state, &caller, factor_id, body).await
}

/// Deletes the admin token's factor; with a confirmed factor, only with `X-Keyward-MFA`.
#[utoipa::path(delete, path = "/api/v1/admin/mfa/totp/{factor_id}", tag = "mfa",
    params(("factor_id" = String, Path),
        ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`")),
    responses((status = 204),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`"),
        (status = 404, body = Problem, description = "`mfa_factor_not_found`"),
        (status = 429, body = Problem, description = "`mfa_locked`")))]
pub async fn admin_delete(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiPath(factor_id): ApiPath<String>,
    step_up: StepUp,
) -> Result<StatusCode, ApiError> {
    state
        .lifecycle
        .delete_mfa_factor(&caller, &factor_id, step_up.proof())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/admin/tenants/{tenant_id}/mfa`: how many second factors went.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaResetView {
    /// TOTP factors and security keys removed (confirmed or not).
    pub removed: u64,
}

/// A tenant's second factors as the tenant lists them (`GET /api/v1/tenant/mfa`; never a
/// secret), and the operations its tokens must step up for: for support.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant_id}/mfa", tag = "mfa",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = MfaFactorsView),
        (status = 400, body = Problem, description = "`invalid_id`: not a tenant id"),
        (status = 401, body = Problem, description = "`unauthenticated`, `invalid_token`"),
        (status = 403, body = Problem, description = "`forbidden`: not an admin"),
        (status = 404, body = Problem, description = "`tenant_not_found`"),
        (status = 503, body = Problem, description = "the database unavailable")))]
pub async fn admin_tenant_factors(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<MfaFactorsView>, ApiError> {
    let tenant = existing_tenant_for_admin(&state, caller, &raw).await?;
    let policy = state.lifecycle.mfa_policy(&tenant).await?;
    let factors = state.lifecycle.tenant_mfa_factors(&tenant).await?;
    Ok(Json(MfaFactorsView {
        factors: factors.into_iter().map(MfaFactorView::from).collect(),
        require_for: policy.require_for,
        policy_source: source_name(policy.source),
    }))
}

/// Removes every second factor of a tenant (TOTP factors, security keys, their recovery codes,
/// pending security key ceremonies and the step-up lockout): the tenant lost them and enrols
/// again. Where the deployment's step-up policy names `reset_mfa`, the request needs the
/// admin's `X-Keyward-MFA`. Audited (`mfa.reset`, with the count).
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant_id}/mfa", tag = "mfa",
    params(("tenant_id" = String, Path),
        ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE`, `recovery:CODE` or `webauthn:...`: the admin's fresh second factor, when the step-up policy names `reset_mfa`")),
    responses((status = 200, body = MfaResetView),
        (status = 400, body = Problem, description = "`invalid_id`: not a tenant id"),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names `reset_mfa` and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"),
        (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names `reset_mfa` and the admin has no confirmed second factor (also `forbidden`: not an admin)"),
        (status = 404, body = Problem, description = "`tenant_not_found`"),
        (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again"),
        (status = 503, body = Problem, description = "the database or Vault unavailable")))]
pub async fn admin_reset_tenant(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    step_up: StepUp,
) -> Result<Json<MfaResetView>, ApiError> {
    let tenant = existing_tenant_for_admin(&state, caller.clone(), &raw).await?;
    state
        .lifecycle
        .step_up(&caller, SensitiveOperation::ResetMfa, step_up.proof())
        .await?;
    let removed = state.lifecycle.reset_tenant_mfa(&caller, &tenant).await?;
    Ok(Json(MfaResetView { removed }))
}

/// The step-up policy of a tenant's tokens.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant_id}/mfa-policy", tag = "mfa",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = MfaPolicyView), (status = 404, body = Problem)))]
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<MfaPolicyView>, ApiError> {
    let tenant = existing_tenant_for_admin(&state, caller, &raw).await?;
    let policy = state.lifecycle.mfa_policy(&tenant).await?;
    Ok(Json(policy_view(&tenant, policy)))
}

/// Sets the operations a tenant's tokens must step up for, in place of the deployment's
/// `[mfa] require_for`. Audited (`mfa_policy.set`).
#[utoipa::path(put, path = "/api/v1/admin/tenants/{tenant_id}/mfa-policy", tag = "mfa",
    params(("tenant_id" = String, Path)), request_body = MfaPolicyRequest,
    responses((status = 200, body = MfaPolicyView), (status = 404, body = Problem)))]
pub async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<MfaPolicyRequest>,
) -> Result<Json<MfaPolicyView>, ApiError> {
    set_policy(state, caller, &raw, Some(body.require_for)).await
}

/// Returns a tenant to the deployment's step-up policy. Audited (`mfa_policy.reset`).
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant_id}/mfa-policy", tag = "mfa",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = MfaPolicyView), (status = 404, body = Problem)))]
pub async fn delete_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<MfaPolicyView>, ApiError> {
    set_policy(state, caller, &raw, None).await
}

async fn set_policy(
    state: AppState,
    caller: Caller,
    raw: &str,
    require_for: Option<Vec<SensitiveOperation>>,
) -> Result<Json<MfaPolicyView>, ApiError> {
    let tenant = tenant_from_path(raw)?;
    let caller = admin_for(caller, &tenant)?;
    let policy = state
        .lifecycle
        .set_mfa_policy(&caller, &tenant, require_for)
        .await?;
    Ok(Json(policy_view(&tenant, policy)))
}
