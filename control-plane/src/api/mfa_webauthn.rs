//! Security keys and passkeys (WebAuthn) over REST, for tenants (`/api/v1/tenant/mfa/webauthn`)
//! and admins (`/api/v1/admin/mfa/webauthn`, the calling admin token's): a registration is
//! started (`publicKey` creation options for `navigator.credentials.create`) and finished with
//! the authenticator's answer and a name; a step-up challenge (`publicKey` request options for
//! `navigator.credentials.get`) is answered by the sensitive request itself, in `X-Keyward-MFA:
//! webauthn:<base64url of the assertion's JSON>`. The keys are listed with the TOTP factors
//! (`GET .../mfa`, `kind: webauthn`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{AdminCaller, TenantCaller};
use super::mfa::StepUp;
use super::{ApiJson, ApiPath, AppState};
use crate::caller::Caller;
use crate::error::{ApiError, Problem};

/// A registration started: pass `publicKey` (its binary members base64url) to
/// `navigator.credentials.create`, then finish with `POST .../registrations/{id}` within five
/// minutes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebauthnRegistrationView {
    /// The registration's id: the factor id the key will have.
    pub id: String,
    /// `PublicKeyCredentialCreationOptions` (WebAuthn Level 3 JSON): user verification
    /// required, the principal's keys excluded.
    #[schema(value_type = Object)]
    pub public_key: serde_json::Value,
}

/// `POST .../mfa/webauthn/registrations/{factor_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FinishWebauthnRequest {
    /// What to call the key (1 to 64 characters).
    pub name: String,
    /// The `PublicKeyCredential` that `navigator.credentials.create` answered, as JSON
    /// (`id`, `rawId`, `type`, `response.attestationObject`, `response.clientDataJSON`;
    /// binary members base64url).
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
}

/// A security key registered: a confirmed second factor.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebauthnKeyView {
    pub id: String,
    pub name: String,
}

/// A step-up challenge: pass `publicKey` to `navigator.credentials.get`, and send the answer's
/// JSON, base64url, as `X-Keyward-MFA: webauthn:...` with the sensitive request within five
/// minutes. It is taken once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebauthnChallengeView {
    /// `PublicKeyCredentialRequestOptions` (WebAuthn Level 3 JSON): the principal's keys
    /// allowed, user verification required.
    #[schema(value_type = Object)]
    pub public_key: serde_json::Value,
}

/// `publicKey` of webauthn-rs's `{"publicKey": ...}` answers.
fn public_key_of<T: Serialize>(options: &T) -> Result<serde_json::Value, ApiError> {
    let mut value = serde_json::to_value(options)
        .map_err(|_| ApiError::Domain(crate::lifecycle::DomainError::Internal))?;
    Ok(value
        .get_mut("publicKey")
        .map(serde_json::Value::take)
        .unwrap_or(value))
}

async fn start(
    state: &AppState,
    caller: &Caller,
    step_up: &StepUp,
) -> Result<(StatusCode, Json<WebauthnRegistrationView>), ApiError> {
    let registration = state
        .lifecycle
        .start_webauthn_registration(caller, step_up.proof())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(WebauthnRegistrationView {
            id: registration.registration_id,
            public_key: public_key_of(&registration.options)?,
        }),
    ))
}

async fn finish(
    state: &AppState,
    caller: &Caller,
    factor_id: String,
    body: FinishWebauthnRequest,
) -> Result<Json<WebauthnKeyView>, ApiError> {
    let key = state
        .lifecycle
        .finish_webauthn_registration(caller, &factor_id, &body.name, &body.credential)
        .await?;
    Ok(Json(WebauthnKeyView {
        id: key.factor_id,
        name: key.name,
    }))
}

async fn challenge(
    state: &AppState,
    caller: &Caller,
) -> Result<Json<WebauthnChallengeView>, ApiError> {
    let options = state.lifecycle.webauthn_challenge(caller).await?;
    Ok(Json(WebauthnChallengeView {
        public_key: public_key_of(&options)?,
    }))
}

/// Starts registering a security key or passkey for the tenant. With a confirmed factor
/// already, the request needs `X-Keyward-MFA`. Audited (`mfa.enrol`).
#[utoipa::path(post, path = "/api/v1/tenant/mfa/webauthn/registrations", tag = "mfa",
    params(("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE`, `recovery:CODE` or `webauthn:ASSERTION`: needed when a factor is confirmed already")),
    responses((status = 201, body = WebauthnRegistrationView),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: a confirmed factor exists and the header is missing or wrong"),
        (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `quota_exceeded`: five factors, or twenty ceremonies under way, already"),
        (status = 409, body = Problem, description = "`webauthn_not_configured`: no `[mfa] webauthn_origin`")))]
pub async fn tenant_start(
    State(state): State<AppState>,
    who: TenantCaller,
    step_up: StepUp,
) -> Result<(StatusCode, Json<WebauthnRegistrationView>), ApiError> {
    start(&state, &who.caller, &step_up).await
}

/// Finishes a tenant's security key registration with the authenticator's answer. Audited
/// (`mfa.confirm`); a refused answer counts as a failed second factor.
#[utoipa::path(post, path = "/api/v1/tenant/mfa/webauthn/registrations/{factor_id}", tag = "mfa",
    params(("factor_id" = String, Path)), request_body = FinishWebauthnRequest,
    responses((status = 200, body = WebauthnKeyView),
        (status = 400, body = Problem, description = "`invalid_body`: a name that is not 1 to 64 characters of text"),
        (status = 401, body = Problem, description = "`mfa_invalid`: the answer is not a credential, or not valid for this registration (origin, challenge, signature, user verification), or the key is registered already"),
        (status = 404, body = Problem, description = "`mfa_factor_not_found`: no such registration under way (expired, finished, or another principal's)"),
        (status = 429, body = Problem, description = "`mfa_locked`, `quota_exceeded`"),
        (status = 409, body = Problem, description = "`webauthn_not_configured`")))]
pub async fn tenant_finish(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiPath(factor_id): ApiPath<String>,
    ApiJson(body): ApiJson<FinishWebauthnRequest>,
) -> Result<Json<WebauthnKeyView>, ApiError> {
    finish(&state, &who.caller, factor_id, body).await
}

/// A step-up challenge for the tenant's security keys.
#[utoipa::path(post, path = "/api/v1/tenant/mfa/webauthn/challenge", tag = "mfa",
    responses((status = 200, body = WebauthnChallengeView),
        (status = 403, body = Problem, description = "`mfa_not_enrolled`: no security key is registered"),
        (status = 429, body = Problem, description = "`quota_exceeded`: twenty ceremonies under way already"),
        (status = 409, body = Problem, description = "`webauthn_not_configured`")))]
pub async fn tenant_challenge(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<WebauthnChallengeView>, ApiError> {
    challenge(&state, &who.caller).await
}

/// Deletes a tenant's security key; with a confirmed factor, only with `X-Keyward-MFA`.
/// Audited (`mfa.delete`).
#[utoipa::path(delete, path = "/api/v1/tenant/mfa/webauthn/{factor_id}", tag = "mfa",
    params(("factor_id" = String, Path),
        ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE`, `recovery:CODE` or `webauthn:ASSERTION`")),
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

/// Starts registering a security key or passkey for the calling admin token. With a confirmed
/// factor already, the request needs `X-Keyward-MFA`. Audited (`mfa.enrol`).
#[utoipa::path(post, path = "/api/v1/admin/mfa/webauthn/registrations", tag = "mfa",
    params(("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE`, `recovery:CODE` or `webauthn:ASSERTION`: needed when a factor is confirmed already")),
    responses((status = 201, body = WebauthnRegistrationView),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`"),
        (status = 429, body = Problem, description = "`mfa_locked`, `quota_exceeded`"),
        (status = 409, body = Problem, description = "`webauthn_not_configured`")))]
pub async fn admin_start(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    step_up: StepUp,
) -> Result<(StatusCode, Json<WebauthnRegistrationView>), ApiError> {
    start(&state, &caller, &step_up).await
}

/// Finishes the admin token's security key registration. Audited (`mfa.confirm`).
#[utoipa::path(post, path = "/api/v1/admin/mfa/webauthn/registrations/{factor_id}", tag = "mfa",
    params(("factor_id" = String, Path)), request_body = FinishWebauthnRequest,
    responses((status = 200, body = WebauthnKeyView),
        (status = 400, body = Problem, description = "`invalid_body`"),
        (status = 401, body = Problem, description = "`mfa_invalid`"),
        (status = 404, body = Problem, description = "`mfa_factor_not_found`"),
        (status = 429, body = Problem, description = "`mfa_locked`, `quota_exceeded`"),
        (status = 409, body = Problem, description = "`webauthn_not_configured`")))]
pub async fn admin_finish(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiPath(factor_id): ApiPath<String>,
    ApiJson(body): ApiJson<FinishWebauthnRequest>,
) -> Result<Json<WebauthnKeyView>, ApiError> {
    finish(&state, &caller, factor_id, body).await
}

/// A step-up challenge for the admin token's security keys.
#[utoipa::path(post, path = "/api/v1/admin/mfa/webauthn/challenge", tag = "mfa",
    responses((status = 200, body = WebauthnChallengeView),
        (status = 403, body = Problem, description = "`mfa_not_enrolled`: no security key is registered"),
        (status = 429, body = Problem, description = "`quota_exceeded`"),
        (status = 409, body = Problem, description = "`webauthn_not_configured`")))]
pub async fn admin_challenge(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
) -> Result<Json<WebauthnChallengeView>, ApiError> {
    challenge(&state, &caller).await
}

/// Deletes the admin token's security key; with a confirmed factor, only with `X-Keyward-MFA`.
#[utoipa::path(delete, path = "/api/v1/admin/mfa/webauthn/{factor_id}", tag = "mfa",
    params(("factor_id" = String, Path),
        ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE`, `recovery:CODE` or `webauthn:ASSERTION`")),
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
