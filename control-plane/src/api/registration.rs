//! Keys people bring: a tenant registers the public key of its own user
//! (`PUT /api/v1/tenant/infrastructure/ssh-credentials/public-key`), an admin the one of a
//! tenant's admin user (`PUT /api/v1/admin/tenants/{tenant_id}/keys/admin/public-key`), and an
//! admin sets a tenant's key registration policy (`.../key-registration-policy`), which the
//! tenant can read. `DELETE` on either key route goes back to a key keyward generates.
//!
//! The body is one JSON string, bounded ([`MAX_PUBLIC_KEY_BYTES`]) and read by the domain
//! ([`crate::lifecycle::RegisteredKey`]); every refusal is a problem document with its own code.

use axum::Json;
use axum::extract::State;
use keyward_common::{KeyKind, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::{admin_for, existing_tenant_for_admin};
use super::auth::TenantCaller;
use super::mfa::StepUp;
use super::views::KeySetSummary;
use super::{ApiJson, ApiPath, AppState, tenant_from_path};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::config::SensitiveOperation;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{KeyRegistrationPolicy, MAX_PUBLIC_KEY_BYTES, PolicySource};

/// A public key to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterKeyRequest {
    /// One OpenSSH public key line, `type base64 [comment]` (the `.pub` file `ssh-keygen`
    /// wrote): `ssh-ed25519`, `ecdsa-sha2-nistp256/384/521`, `ssh-rsa` of at least 3072 bits,
    /// `sk-ssh-ed25519@openssh.com` or `sk-ecdsa-sha2-nistp256@openssh.com`. No options, no
    /// certificate, one line. The comment is not kept.
    #[schema(max_length = 8192)]
    pub public_key: String,
}

impl RegisterKeyRequest {
    /// The key text, refused before it reaches the domain when it is longer than any key taken.
    fn bounded(&self) -> Result<&str, ApiError> {
        if self.public_key.len() > MAX_PUBLIC_KEY_BYTES {
            return Err(crate::lifecycle::DomainError::KeyRefused(
                crate::lifecycle::KeyRefusal::TooLarge,
            )
            .into());
        }
        Ok(&self.public_key)
    }
}

/// Registers the caller's own public key as its SSH key, in place of a generated one: keyward
/// then holds no private key for it (Vault keeps the public key and metadata), there is nothing
/// to download (`key_registered`), and rotate or regenerate remind rather than replace. The key
/// it replaces stays valid for the rotation policy's grace period. Audited (`key.register`).
#[utoipa::path(put, path = "/api/v1/tenant/infrastructure/ssh-credentials/public-key", tag = "tenant",
    request_body = RegisterKeyRequest,
    responses(
        (status = 200, body = KeySetSummary),
        (status = 409, body = Problem, description = "`key_denied`: keyward replaced or revoked that key; `key_already_registered`: it is the current key; `tenant_offboarding`; `concurrent_modification`"),
        (status = 422, body = Problem, description = "The key is not taken: `public_key_too_large`, `public_key_not_one_line`, `public_key_has_options`, `public_key_is_certificate`, `public_key_unreadable`, `key_type_not_allowed` (DSA, unknown types), `key_too_weak` (RSA under 3072 bits), `fido2_required` (the tenant's policy takes security keys only)"),
        (status = 503, body = Problem, description = "Vault or the database unavailable")))]
pub async fn tenant_register(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiJson(body): ApiJson<RegisterKeyRequest>,
) -> Result<Json<KeySetSummary>, ApiError> {
    let ks = state
        .lifecycle
        .register_key(&who.caller, &who.tenant, KeyKind::Tenant, body.bounded()?)
        .await?;
    Ok(Json(KeySetSummary::new(
        &ks,
        &state.vault_mount,
        state.lifecycle.now(),
    )))
}

/// Registers a public key for a tenant's admin user (`kind` must be `admin`: the tenant's own
/// key is the tenant's to register), as `PUT .../ssh-credentials/public-key` does for tenants.
#[utoipa::path(put, path = "/api/v1/admin/tenants/{tenant_id}/keys/{kind}/public-key", tag = "admin",
    params(("tenant_id" = String, Path), ("kind" = String, Path, description = "admin")),
    request_body = RegisterKeyRequest,
    responses(
        (status = 200, body = KeySetSummary),
        (status = 403, body = Problem, description = "`forbidden`: `kind` is `tenant` (the tenant registers its own key), or not an admin"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "`key_denied`, `key_already_registered`, `tenant_offboarding`, `concurrent_modification`"),
        (status = 422, body = Problem, description = "The key is not taken: `public_key_too_large`, `public_key_not_one_line`, `public_key_has_options`, `public_key_is_certificate`, `public_key_unreadable`, `key_type_not_allowed`, `key_too_weak`, `fido2_required`"),
        (status = 503, body = Problem)))]
pub async fn admin_register(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((raw_tenant, raw_kind)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RegisterKeyRequest>,
) -> Result<Json<KeySetSummary>, ApiError> {
    let tenant = tenant_from_path(&raw_tenant)?;
    let caller = admin_for(caller, &tenant)?;
    let kind: KeyKind = raw_kind.parse().map_err(|_| ApiError::NoRoute {
        path: format!("key kind {raw_kind:?}"),
    })?;
    if kind != KeyKind::Admin {
        return Err(ApiError::Forbidden { needed: "tenant" });
    }
    let ks = state
        .lifecycle
        .register_key(&caller, &tenant, kind, body.bounded()?)
        .await?;
    Ok(Json(KeySetSummary::new(
        &ks,
        &state.vault_mount,
        state.lifecycle.now(),
    )))
}

/// Goes back from the caller's registered key to a generated one: keyward generates a key of
/// the tenant's policy algorithm (Vault first, a new version with `origin: generated`), the
/// registered key stops working at once (as in a regeneration), the hosts' agents get the new
/// public key, and the new private key can be downloaded once. Where the step-up policy names
/// `regenerate`, the request needs `X-Keyward-MFA`. Audited (`key.registration_removed`).
#[utoipa::path(delete, path = "/api/v1/tenant/infrastructure/ssh-credentials/public-key", tag = "tenant",
    params(("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE`, `recovery:CODE` or `webauthn:...`: a fresh second factor, when the step-up policy names `regenerate`")),
    responses(
        (status = 200, body = KeySetSummary),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names `regenerate` and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"),
        (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names `regenerate` and no second factor is confirmed (also `forbidden`)"),
        (status = 409, body = Problem, description = "`key_not_registered`: the key is keyward's already (regenerate it for a new one); `tenant_offboarding`; `concurrent_modification`"),
        (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again"),
        (status = 503, body = Problem, description = "Vault or the database unavailable")))]
pub async fn tenant_unregister(
    State(state): State<AppState>,
    who: TenantCaller,
    step_up: StepUp,
) -> Result<Json<KeySetSummary>, ApiError> {
    state
        .lifecycle
        .step_up(&who.caller, SensitiveOperation::Regenerate, step_up.proof())
        .await?;
    let ks = state
        .lifecycle
        .remove_registration(&who.caller, &who.tenant, KeyKind::Tenant)
        .await?;
    Ok(Json(KeySetSummary::new(
        &ks,
        &state.vault_mount,
        state.lifecycle.now(),
    )))
}

/// Goes back from a tenant's admin user's registered key to a generated one (`kind` must be
/// `admin`), as `DELETE .../ssh-credentials/public-key` does for tenants. Where the
/// deployment's step-up policy names `regenerate`, the request needs `X-Keyward-MFA`.
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant_id}/keys/{kind}/public-key", tag = "admin",
    params(("tenant_id" = String, Path), ("kind" = String, Path, description = "admin"),
        ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE`, `recovery:CODE` or `webauthn:...`: the admin's fresh second factor, when the step-up policy names `regenerate`")),
    responses(
        (status = 200, body = KeySetSummary),
        (status = 400, body = Problem, description = "`invalid_id`: not a tenant id"),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names `regenerate` and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"),
        (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names `regenerate` and the admin has no confirmed second factor; `forbidden`: `kind` is `tenant`, or not an admin"),
        (status = 404, body = Problem, description = "`tenant_not_found`"),
        (status = 409, body = Problem, description = "`key_not_registered`, `tenant_offboarding`, `concurrent_modification`"),
        (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again"),
        (status = 503, body = Problem, description = "Vault or the database unavailable")))]
pub async fn admin_unregister(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((raw_tenant, raw_kind)): ApiPath<(String, String)>,
    step_up: StepUp,
) -> Result<Json<KeySetSummary>, ApiError> {
    let tenant = tenant_from_path(&raw_tenant)?;
    let caller = admin_for(caller, &tenant)?;
    let kind: KeyKind = raw_kind.parse().map_err(|_| ApiError::NoRoute {
        path: format!("key kind {raw_kind:?}"),
    })?;
    if kind != KeyKind::Admin {
        return Err(ApiError::Forbidden { needed: "tenant" });
    }
    state
        .lifecycle
        .step_up(&caller, SensitiveOperation::Regenerate, step_up.proof())
        .await?;
    let ks = state
        .lifecycle
        .remove_registration(&caller, &tenant, kind)
        .await?;
    Ok(Json(KeySetSummary::new(
        &ks,
        &state.vault_mount,
        state.lifecycle.now(),
    )))
}

/// The key registration policy that applies to a tenant.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRegistrationPolicyView {
    pub tenant_id: String,
    /// Only FIDO2 security keys (`sk-ssh-ed25519@openssh.com`,
    /// `sk-ecdsa-sha2-nistp256@openssh.com`) can be registered.
    pub require_fido2: bool,
    /// The lines of registered FIDO2 keys carry `verify-required`: sshd asks the key for user
    /// verification (PIN or biometric), not only presence.
    pub verify_required: bool,
    /// `tenant` (set for this tenant by an admin) or `default` (any accepted type, no
    /// `verify-required`).
    pub source: &'static str,
    pub updated_at: Option<String>,
}

impl KeyRegistrationPolicyView {
    fn new(tenant: &TenantId, policy: KeyRegistrationPolicy) -> Self {
        Self {
            tenant_id: tenant.to_string(),
            require_fido2: policy.require_fido2,
            verify_required: policy.verify_required,
            source: match policy.source {
                PolicySource::Default => "default",
                PolicySource::Tenant => "tenant",
            },
            updated_at: policy.updated_at.map(iso8601),
        }
    }
}

/// `PUT /api/v1/admin/tenants/{tenant_id}/key-registration-policy`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRegistrationPolicyRequest {
    pub require_fido2: bool,
    pub verify_required: bool,
}

/// What the caller's registered keys must be.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/key-registration-policy", tag = "tenant",
    responses((status = 200, body = KeyRegistrationPolicyView), (status = 401, body = Problem)))]
pub async fn tenant_policy(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<KeyRegistrationPolicyView>, ApiError> {
    let policy = state.lifecycle.key_registration_policy(&who.tenant).await?;
    Ok(Json(KeyRegistrationPolicyView::new(&who.tenant, policy)))
}

/// The key registration policy that applies to a tenant.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant_id}/key-registration-policy", tag = "admin",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = KeyRegistrationPolicyView), (status = 404, body = Problem)))]
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<KeyRegistrationPolicyView>, ApiError> {
    let tenant = existing_tenant_for_admin(&state, caller, &raw).await?;
    let policy = state.lifecycle.key_registration_policy(&tenant).await?;
    Ok(Json(KeyRegistrationPolicyView::new(&tenant, policy)))
}

/// Sets a tenant's key registration policy. Keys already registered follow `verifyRequired` at
/// once (their hosts are sent a new state); `requireFido2` applies to the next registration.
/// Audited (`key_registration_policy.set`).
#[utoipa::path(put, path = "/api/v1/admin/tenants/{tenant_id}/key-registration-policy", tag = "admin",
    params(("tenant_id" = String, Path)), request_body = KeyRegistrationPolicyRequest,
    responses((status = 200, body = KeyRegistrationPolicyView), (status = 404, body = Problem)))]
pub async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<KeyRegistrationPolicyRequest>,
) -> Result<Json<KeyRegistrationPolicyView>, ApiError> {
    set_policy(
        state,
        caller,
        &raw,
        Some((body.require_fido2, body.verify_required)),
    )
    .await
}

/// Returns a tenant to the default key registration policy. Audited
/// (`key_registration_policy.reset`).
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant_id}/key-registration-policy", tag = "admin",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = KeyRegistrationPolicyView), (status = 404, body = Problem)))]
pub async fn delete_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<KeyRegistrationPolicyView>, ApiError> {
    set_policy(state, caller, &raw, None).await
}

async fn set_policy(
    state: AppState,
    caller: Caller,
    raw: &str,
    policy: Option<(bool, bool)>,
) -> Result<Json<KeyRegistrationPolicyView>, ApiError> {
    let tenant = tenant_from_path(raw)?;
    let caller = admin_for(caller, &tenant)?;
    let policy = state
        .lifecycle
        .set_key_registration_policy(&caller, &tenant, policy)
        .await?;
    Ok(Json(KeyRegistrationPolicyView::new(&tenant, policy)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_names_every_refusal() {
        use crate::lifecycle::KeyRefusal::*;
        use utoipa::OpenApi;
        let doc = serde_json::to_string(&crate::api::ApiDoc::openapi()).unwrap();
        for refusal in [
            TooLarge,
            NotOneLine,
            HasOptions,
            Certificate,
            Unreadable,
            TypeNotAllowed("ssh-dss".into()),
            RsaTooShort(2048),
            Fido2Required,
        ] {
            assert!(
                doc.contains(&format!("`{}`", refusal.code())),
                "{}",
                refusal.code()
            );
        }
    }
}
