//! SSH user certificates over REST: a tenant certifies its own public key for its own user
//! (`/api/v1/tenant/infrastructure/ssh-certificates`), an admin one for either managed user of any
//! tenant (`/api/v1/admin/tenants/{tenant_id}/ssh-certificates`); both list and revoke.
//!
//! A tenant sees every certificate for its VPSs, the platform's admin-user ones included (who
//! may enter its server is its business), but revokes only its own user's; it never learns which
//! admin token asked for one. Another tenant's certificate is not found (404), like anything else
//! of another tenant's.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keyward_common::{CertificateId, KeyKind, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::admin_for;
use super::auth::TenantCaller;
use super::{ApiJson, ApiPath, AppState, tenant_from_path};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{CertificateAsk, DomainError};
use crate::store::CertificateRecord;

/// Longest `reason`, in characters.
const MAX_REASON_CHARS: usize = 500;
/// Most certificates one listing answers (newest first).
pub(super) const LIST_LIMIT: usize = 500;

/// `POST /api/v1/tenant/infrastructure/ssh-certificates`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantCertificateRequest {
    /// The caller's own OpenSSH public key (Ed25519, ECDSA, or RSA of 3072 bits or more).
    #[schema(max_length = 8192)]
    pub public_key: String,
    /// Seconds; the deployment's default (`certificates.default_validity`) when absent, at most
    /// `certificates.max_validity`.
    #[schema(minimum = 60, maximum = 86400)]
    pub validity_seconds: Option<u64>,
    /// Why (shown in the audit log and to the tenant).
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// `POST /api/v1/admin/tenants/{tenant_id}/ssh-certificates`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminCertificateRequest {
    /// Which managed user the certificate logs in as: `admin` or `tenant`.
    #[schema(value_type = String, pattern = "^(admin|tenant)$")]
    pub kind: KeyKind,
    #[schema(max_length = 8192)]
    pub public_key: String,
    #[schema(minimum = 60, maximum = 86400)]
    pub validity_seconds: Option<u64>,
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// One SSH user certificate keyward had signed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshCertificate {
    /// Its key id, `keyward:{tenant}:{kind}:{n}`: sshd logs it at every login.
    #[schema(value_type = String, pattern = "^keyward:[a-z0-9][a-z0-9-]{0,62}:(admin|tenant):[1-9][0-9]{0,18}$")]
    pub certificate_id: CertificateId,
    /// `admin` or `tenant`: the managed user it logs in as.
    pub kind: String,
    /// That user's name on the VPS.
    pub user: String,
    /// The CA's serial, in decimal (a 64-bit unsigned number: a string, as JSON numbers lose
    /// precision beyond 2^53).
    pub serial: String,
    /// For `~/.ssh/id_<type>-cert.pub` beside the private key.
    pub certificate: String,
    pub principals: Vec<String>,
    /// The certified key's SHA-256 fingerprint.
    pub key_fingerprint: String,
    pub valid_after: String,
    pub valid_before: String,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    pub issued_at: String,
    pub reason: String,
    pub revoked_at: Option<String>,
    /// The API token that asked for it (admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
    /// The API token that revoked it (admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

/// A tenant's certificates, newest first (at most 500).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshCertificateList {
    pub certificates: Vec<SshCertificate>,
}

/// Who reads a certificate: admins see which tokens acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Admin,
    Tenant,
}

impl SshCertificate {
    fn new(
        c: CertificateRecord,
        user: String,
        now: chrono::DateTime<chrono::Utc>,
        reader: Reader,
    ) -> Self {
        let status = if c.revoked_at.is_some() {
            "revoked"
        } else if c.valid_before <= now {
            "expired"
        } else {
            "active"
        };
        let admin = reader == Reader::Admin;
        Self {
            kind: c.id.kind.to_string(),
            user,
            serial: c.serial.to_string(),
            certificate: c.certificate,
            principals: c.principals,
            key_fingerprint: c.key_fingerprint.to_string(),
            valid_after: iso8601(c.valid_after),
            valid_before: iso8601(c.valid_before),
            status,
            issued_at: iso8601(c.issued_at),
            reason: c.reason,
            revoked_at: c.revoked_at.map(iso8601),
            issued_by: admin.then_some(c.issued_by),
            revoked_by: c.revoked_by.filter(|_| admin),
            certificate_id: c.id,
        }
    }
}

fn validity(seconds: Option<u64>) -> Option<Duration> {
    seconds.map(Duration::from_secs)
}

/// A request's `reason`: at most 500 characters (and at least one when `required`), no control
/// or format characters (it is shown in lists and written into the audit log: a bidirectional
/// override or a zero-width character would make it read otherwise than it is).
pub(super) fn reason(raw: Option<String>, required: bool) -> Result<String, ApiError> {
    let reason = raw.unwrap_or_default();
    let count = reason.chars().count();
    if count > MAX_REASON_CHARS || (required && count == 0) {
        return Err(ApiError::InvalidBody(format!(
            "reason must be {} to {MAX_REASON_CHARS} characters",
            u8::from(required)
        )));
    }
    if reason.chars().any(|c| c.is_control() || is_format(c)) {
        return Err(ApiError::InvalidBody(
            "reason must not contain control characters (line breaks included), bidirectional \
             controls or zero-width characters"
                .into(),
        ));
    }
    Ok(reason)
}

/// Unicode's format characters that change how text reads without showing: bidirectional
/// embeddings, overrides and isolates, zero-width spaces and joiners, the word joiner and
/// invisible operators, the byte-order mark.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The managed user `kind` logs in as on `tenant`'s VPSs.
async fn user_of(state: &AppState, tenant: &TenantId, kind: KeyKind) -> Result<String, ApiError> {
    let record = state
        .store
        .tenant(tenant)
        .await?
        .ok_or_else(|| DomainError::TenantNotFound(tenant.clone()))?;
    Ok(match kind {
        KeyKind::Admin => record.admin_user.to_string(),
        KeyKind::Tenant => record.tenant_user.to_string(),
    })
}

async fn issue(
    state: &AppState,
    caller: &Caller,
    ask: CertificateAsk,
    reader: Reader,
) -> Result<(StatusCode, Json<SshCertificate>), ApiError> {
    let user = user_of(state, &ask.tenant, ask.kind).await?;
    let record = state.lifecycle.issue_certificate(caller, ask).await?;
    let now = state.lifecycle.now();
    Ok((
        StatusCode::CREATED,
        Json(SshCertificate::new(record, user, now, reader)),
    ))
}

async fn list(
    state: &AppState,
    tenant: &TenantId,
    reader: Reader,
) -> Result<Json<SshCertificateList>, ApiError> {
    let record = state
        .store
        .tenant(tenant)
        .await?
        .ok_or_else(|| DomainError::TenantNotFound(tenant.clone()))?;
    let now = state.lifecycle.now();
    let certificates = state
        .store
        .certificates(tenant, None, LIST_LIMIT as i64)
        .await?
        .into_iter()
        .map(|c| {
            let user = match c.id.kind {
                KeyKind::Admin => record.admin_user.to_string(),
                KeyKind::Tenant => record.tenant_user.to_string(),
            };
            SshCertificate::new(c, user, now, reader)
        })
        .collect();
    Ok(Json(SshCertificateList { certificates }))
}

/// The tenant's certificates as the tenant sees them (its data export).
pub(super) async fn tenant_view(
    state: &AppState,
    tenant: &TenantId,
) -> Result<Json<SshCertificateList>, ApiError> {
    list(state, tenant, Reader::Tenant).await
}

/// A certificate id from a path; one that does not parse is one that does not exist.
fn certificate_id(raw: &str) -> Result<CertificateId, ApiError> {
    raw.parse()
        .map_err(|_| DomainError::CertificateNotFound(raw.chars().take(100).collect()).into())
}

async fn revoke(
    state: &AppState,
    caller: &Caller,
    id: &CertificateId,
    reader: Reader,
) -> Result<Json<SshCertificate>, ApiError> {
    let user = user_of(state, &id.tenant, id.kind).await?;
    let record = state.lifecycle.revoke_certificate(caller, id).await?;
    let now = state.lifecycle.now();
    Ok(Json(SshCertificate::new(record, user, now, reader)))
}

/// Certifies the caller's own public key for the tenant's user on its VPSs (principal
/// `keyward:{tenant}:tenant`). keyward never sees the private key.
#[utoipa::path(post, path = "/api/v1/tenant/infrastructure/ssh-certificates", tag = "tenant",
    request_body = TenantCertificateRequest,
    responses((status = 201, body = SshCertificate),
        (status = 400, description = "`invalid_body`: not a public key, a weak key, a validity out of bounds", body = Problem),
        (status = 409, description = "`key_denied`: keyward replaced or revoked that key; `key_revoked`: the user's key set is revoked", body = Problem),
        (status = 429, description = "`quota_exceeded`: the tenant's bound on valid certificates (or on requests waiting for a decision) is reached", body = Problem),
        (status = 503, description = "`vault_unavailable`, `certificates_not_configured`", body = Problem)))]
pub async fn tenant_issue(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiJson(body): ApiJson<TenantCertificateRequest>,
) -> Result<(StatusCode, Json<SshCertificate>), ApiError> {
    let ask = CertificateAsk {
        tenant: who.tenant.clone(),
        kind: KeyKind::Tenant,
        public_key: body.public_key,
        validity: validity(body.validity_seconds),
        reason: reason(body.reason, false)?,
    };
    issue(&state, &who.caller, ask, Reader::Tenant).await
}

/// Every certificate for the tenant's VPSs, the platform admin user's included.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/ssh-certificates", tag = "tenant",
    responses((status = 200, body = SshCertificateList)))]
pub async fn tenant_list(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<SshCertificateList>, ApiError> {
    list(&state, &who.tenant, Reader::Tenant).await
}

/// Revokes one of the tenant user's certificates: its hosts refuse it at the next login and end
/// the sessions it opened. Revoking a revoked certificate succeeds and changes nothing.
#[utoipa::path(post, path = "/api/v1/tenant/infrastructure/ssh-certificates/{certificate_id}/revoke", tag = "tenant",
    params(("certificate_id" = String, Path, description = "keyward:{tenant}:{kind}:{n}")),
    responses((status = 200, body = SshCertificate),
        (status = 403, description = "`forbidden`: a certificate for the platform's admin user", body = Problem),
        (status = 404, description = "`certificate_not_found`", body = Problem)))]
pub async fn tenant_revoke(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<SshCertificate>, ApiError> {
    let id = certificate_id(&raw)?;
    if id.tenant != who.tenant {
        return Err(DomainError::CertificateNotFound(raw.chars().take(100).collect()).into());
    }
    if id.kind == KeyKind::Admin {
        return Err(ApiError::Forbidden { needed: "admin" });
    }
    revoke(&state, &who.caller, &id, Reader::Tenant).await
}

/// Certifies a public key for one of a tenant's managed users (`kind`).
#[utoipa::path(post, path = "/api/v1/admin/tenants/{tenant_id}/ssh-certificates", tag = "admin",
    params(("tenant_id" = String, Path)),
    request_body = AdminCertificateRequest,
    responses((status = 201, body = SshCertificate),
        (status = 400, description = "`invalid_body`: not a public key, a weak key, a validity out of bounds", body = Problem),
        (status = 403, description = "`approval_required`: the tenant's policy (or the deployment's, for the admin user) asks for an access request", body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "`key_denied`, `key_revoked`", body = Problem),
        (status = 429, description = "`quota_exceeded`: the tenant's bound on valid certificates (or on requests waiting for a decision) is reached", body = Problem),
        (status = 503, description = "`vault_unavailable`, `certificates_not_configured`", body = Problem)))]
pub async fn admin_issue(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw_tenant): ApiPath<String>,
    ApiJson(body): ApiJson<AdminCertificateRequest>,
) -> Result<(StatusCode, Json<SshCertificate>), ApiError> {
    let tenant = tenant_from_path(&raw_tenant)?;
    let caller = admin_for(caller, &tenant)?;
    let ask = CertificateAsk {
        tenant,
        kind: body.kind,
        public_key: body.public_key,
        validity: validity(body.validity_seconds),
        reason: reason(body.reason, false)?,
    };
    issue(&state, &caller, ask, Reader::Admin).await
}

/// A tenant's certificates, both users', newest first.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant_id}/ssh-certificates", tag = "admin",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = SshCertificateList), (status = 404, body = Problem)))]
pub async fn admin_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw_tenant): ApiPath<String>,
) -> Result<Json<SshCertificateList>, ApiError> {
    let tenant = tenant_from_path(&raw_tenant)?;
    admin_for(caller, &tenant)?;
    list(&state, &tenant, Reader::Admin).await
}

/// Revokes any certificate: its tenant's hosts refuse it at the next login and end the sessions
/// it opened.
#[utoipa::path(post, path = "/api/v1/admin/ssh-certificates/{certificate_id}/revoke", tag = "admin",
    params(("certificate_id" = String, Path, description = "keyward:{tenant}:{kind}:{n}")),
    responses((status = 200, body = SshCertificate), (status = 404, description = "`certificate_not_found`", body = Problem)))]
pub async fn admin_revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<SshCertificate>, ApiError> {
    let id = certificate_id(&raw)?;
    let caller = admin_for(caller, &id.tenant)?;
    revoke(&state, &caller, &id, Reader::Admin).await
}
