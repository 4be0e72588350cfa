//! Tenant endpoints: `/api/v1/tenant/infrastructure/ssh-credentials[/...]`.
//!
//! The tenant is the one named by the caller's token; these routes take no tenant id, so a tenant
//! cannot even name another tenant's resources.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use keyward_common::KeyKind;

use super::AppState;
use super::auth::{TenantCaller, bearer_token_hash, tenant_of};
use super::download::{DownloadBody, DownloadRequest};
use super::mfa::StepUp;
use super::views::{NewKeyResponse, SetAsideKeys, SetAsideOnHost, SshCredentials, StatusResponse};
use crate::clock::iso8601;
use crate::config::SensitiveOperation;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{DomainError, Replace};
use crate::store::TenantCredentials;

/// Public SSH connection information for the caller's VPS.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/ssh-credentials", tag = "tenant",
    responses((status = 200, body = SshCredentials), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn ssh_credentials(
    State(state): State<AppState>,
    headers: HeaderMap,
    mut parts: axum::http::request::Parts,
) -> Result<Json<SshCredentials>, ApiError> {
    // Without a bearer token, the web UI's session cookie (the extractor's path).
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        use axum::extract::FromRequestParts;
        let who = TenantCaller::from_request_parts(&mut parts, &state).await?;
        let credentials = state
            .store
            .tenant_credentials(&who.tenant, KeyKind::Tenant)
            .await?;
        return match credentials {
            Some(TenantCredentials {
                tenant,
                key_set: Some(ks),
                host_keys,
            }) => Ok(Json(SshCredentials::new(
                &tenant,
                &ks,
                &host_keys,
                state.lifecycle.bastion().proxy_jump().ok().flatten(),
                state.lifecycle.now(),
            ))),
            _ => Err(DomainError::TenantNotFound(who.tenant).into()),
        };
    }
    // One SQL statement: the token check (as the `TenantCaller` extractor makes it: active, a
    // tenant's) joined to the tenant, its key set and host keys. No Vault call is on this path,
    // so each SQL round trip it saves is a large part of its cost; nothing is cached, so a
    // revoked token is refused by the next request on every replica.
    let found = state
        .store
        .credentials_by_token(&bearer_token_hash(&headers)?, KeyKind::Tenant)
        .await?
        .ok_or(ApiError::BadToken)?;
    let tenant = tenant_of(Some(&found.role))?;
    match found.credentials {
        Some(TenantCredentials {
            tenant,
            key_set: Some(ks),
            host_keys,
        }) => {
            // Checked when the configuration was read.
            let proxy_jump = state.lifecycle.bastion().proxy_jump().ok().flatten();
            Ok(Json(SshCredentials::new(
                &tenant,
                &ks,
                &host_keys,
                proxy_jump,
                state.lifecycle.now(),
            )))
        }
        _ => Err(DomainError::TenantNotFound(tenant).into()),
    }
}

/// Keys of the tenant's own that keyward moved out of `authorized_keys` on its VPSs (a revoke
/// empties the file; an oversized file is not kept line by line), per host and user. They are
/// kept on the VPS in `~/.ssh/authorized_keys.keyward-set-aside`; after regenerating, the tenant
/// restores what is really theirs from there.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/set-aside-keys", tag = "tenant",
    responses((status = 200, body = SetAsideKeys), (status = 401, body = Problem)))]
pub async fn set_aside_keys(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<SetAsideKeys>, ApiError> {
    let hosts = state.store.hosts(Some(&who.tenant)).await?;
    let tenant_user = state
        .store
        .tenant(&who.tenant)
        .await?
        .map(|t| t.tenant_user.to_string());
    let mut out = Vec::new();
    for host in hosts.iter().filter(|h| h.revoked_at.is_none()) {
        for user in host.applied_users.as_array().into_iter().flatten() {
            let name = user
                .get("user")
                .and_then(|u| u.as_str())
                .unwrap_or_default();
            // The tenant's own user only: the admin user's file is the platform's.
            if Some(name) != tenant_user.as_deref() {
                continue;
            }
            let keys: Vec<String> = user
                .get("setAside")
                .and_then(|k| k.as_array())
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect();
            if !keys.is_empty() {
                out.push(SetAsideOnHost {
                    host_id: host.host_id.to_string(),
                    user: name.to_owned(),
                    keys,
                });
            }
        }
    }
    Ok(Json(SetAsideKeys { hosts: out }))
}

/// The tenant's private key, once per key generation, as `tenant-ssh-key.pem`: in clear, or,
/// with a `passphrase`, encrypted as `ssh-keygen -p` writes it (bcrypt-pbkdf, aes256-ctr).
/// The download policy (`GET .../download-policy`) can require a passphrase and sets its
/// minimum length. The passphrase is not stored, logged or audited; the audit event says
/// whether the key went out `encrypted`. A refused download does not spend the download.
/// Where the step-up policy names `download`, the request needs `X-Keyward-MFA`.
#[utoipa::path(post, path = "/api/v1/tenant/infrastructure/ssh-credentials/download", tag = "tenant",
    params(("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`: a fresh second factor, when the step-up policy names this operation")),
    request_body(content = Option<DownloadRequest>, content_type = "application/json",
        description = "Optional: no body hands the key out in clear, where the policy allows it"),
    responses(
        (status = 200, description = "OpenSSH private key, encrypted when a passphrase was given", content_type = "application/x-pem-file", body = String),
        (status = 400, description = "`passphrase_required`: the download policy requires a passphrase and none was sent; `invalid_body`: the body is not `{\"passphrase\": \"...\"}`", body = Problem),
        (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names this operation and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"),
        (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names this operation and no second factor is confirmed (also `forbidden`)"),
        (status = 409, description = "The key is revoked", body = Problem),
        (status = 410, description = "Already downloaded: regenerate for a new key", body = Problem),
        (status = 422, description = "`passphrase_too_short`: shorter than the policy's `minPassphraseLength`; `passphrase_invalid`: over 1024 bytes, or a NUL, CR or LF in it", body = Problem),
        (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again"),
        (status = 503, description = "Vault unavailable", body = Problem)))]
pub async fn download(
    State(state): State<AppState>,
    who: TenantCaller,
    step_up: StepUp,
    DownloadBody(passphrase): DownloadBody,
) -> Result<Response, ApiError> {
    let (_, private_key) = state
        .lifecycle
        .download(
            &who.caller,
            &who.tenant,
            KeyKind::Tenant,
            passphrase,
            step_up.proof(),
        )
        .await?;
    // The response body is a copy that hyper frees without wiping; the Zeroizing original is
    // wiped when it drops here.
    let body = Body::from(private_key.as_bytes().to_vec());
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"tenant-ssh-key.pem\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

async fn replace(
    state: AppState,
    who: TenantCaller,
    how: Replace,
) -> Result<Json<NewKeyResponse>, ApiError> {
    let ks = state
        .lifecycle
        .replace_key(&who.caller, &who.tenant, KeyKind::Tenant, how)
        .await?;
    let message = match how {
        Replace::Rotate => format!(
            "SSH key rotated. The previous key stays valid until {}.",
            ks.grace_until.map_or_else(|| "now".to_owned(), iso8601)
        ),
        Replace::Regenerate => "SSH key regenerated. The previous key no longer works.".to_owned(),
    };
    Ok(Json(NewKeyResponse {
        status: "success",
        message,
        new_key_fingerprint: ks.fingerprint.to_string(),
    }))
}

/// A new key; the previous one keeps working for the grace period (24 h by default).
#[utoipa::path(post, path = "/api/v1/tenant/infrastructure/ssh-credentials/rotate", tag = "tenant",
    responses((status = 200, body = NewKeyResponse), (status = 409, body = Problem), (status = 503, body = Problem)))]
pub async fn rotate(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<NewKeyResponse>, ApiError> {
    replace(state, who, Replace::Rotate).await
}

/// A new key; the previous one stops working at once. Where the step-up policy names
/// `regenerate`, the request needs `X-Keyward-MFA`.
#[utoipa::path(post, path = "/api/v1/tenant/infrastructure/ssh-credentials/regenerate", tag = "tenant",
    params(("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`: a fresh second factor, when the step-up policy names this operation")),
    responses((status = 200, body = NewKeyResponse), (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names this operation and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"), (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names this operation and no second factor is confirmed (also `forbidden`)"), (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again"), (status = 503, body = Problem)))]
pub async fn regenerate(
    State(state): State<AppState>,
    who: TenantCaller,
    step_up: StepUp,
) -> Result<Json<NewKeyResponse>, ApiError> {
    state
        .lifecycle
        .step_up(&who.caller, SensitiveOperation::Regenerate, step_up.proof())
        .await?;
    replace(state, who, Replace::Regenerate).await
}

/// No valid tenant key until it is regenerated.
#[utoipa::path(post, path = "/api/v1/tenant/infrastructure/ssh-credentials/revoke", tag = "tenant",
    responses((status = 200, body = StatusResponse)))]
pub async fn revoke(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<StatusResponse>, ApiError> {
    state
        .lifecycle
        .revoke(&who.caller, &who.tenant, KeyKind::Tenant)
        .await?;
    Ok(Json(StatusResponse {
        status: "success",
        message: "SSH access revoked immediately.".to_owned(),
    }))
}
