//! Admin endpoints: `/api/v1/admin/...`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keyward_common::{KeyKind, TenantId, UnixUser};
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::AdminCaller;
use super::mfa::StepUp;
use super::views::*;
use super::{ApiJson, ApiPath, ApiQuery, AppState, query_time, tenant_from_path};
use crate::audit_head::{self, AuditVerdict};
use crate::caller::Caller;
use crate::config::SensitiveOperation;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{DomainError, NewTenant, Replace, TenantSecretKind};
use crate::store::{AuditFilter, KeySetRecord, Role, StoreError, TenantRecord};

/// Admin-only routes that name a tenant: a tenant's token gets 404 for another tenant (it learns
/// nothing about who exists) and 403 for its own.
pub(super) fn admin_for(caller: Caller, tenant: &TenantId) -> Result<Caller, ApiError> {
    match &caller.role {
        Some(Role::Admin) => Ok(caller),
        Some(Role::Tenant(own)) if own == tenant => Err(ApiError::Forbidden { needed: "admin" }),
        _ => Err(DomainError::TenantNotFound(tenant.clone()).into()),
    }
}

/// The tenant an admin route's path names (`raw`), for an admin caller ([`admin_for`]), that
/// exists (404 `tenant_not_found` otherwise): the start of every per-tenant policy route.
pub(super) async fn existing_tenant_for_admin(
    state: &super::AppState,
    caller: Caller,
    raw: &str,
) -> Result<TenantId, ApiError> {
    let tenant = super::tenant_from_path(raw)?;
    admin_for(caller, &tenant)?;
    if state.store.tenant(&tenant).await?.is_none() {
        return Err(DomainError::TenantNotFound(tenant).into());
    }
    Ok(tenant)
}

fn parse_user(raw: &str, what: &'static str) -> Result<UnixUser, ApiError> {
    raw.parse()
        .map_err(|source| ApiError::InvalidId { what, source })
}

/// An IP address or a DNS name, as tenants will type it after `ssh user@`.
fn parse_vps_address(raw: &str) -> Result<String, ApiError> {
    raw.parse::<keyward_common::SshHost>()
        .map(|host| host.to_string())
        .map_err(|_| ApiError::InvalidBody("vpsIp must be an IP address or a DNS name".into()))
}

fn ssh_keys(
    key_sets: &[KeySetRecord],
    mount: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<SshKeys, ApiError> {
    let find = |kind| {
        key_sets
            .iter()
            .find(|k| k.kind == kind)
            .map(|k| KeySetSummary::new(k, mount, now))
            .ok_or(ApiError::from(StoreError::Corrupt {
                what: "key set",
                detail: format!("{kind} key set missing"),
            }))
    };
    Ok(SshKeys {
        admin_ssh: find(KeyKind::Admin)?,
        tenant_ssh: find(KeyKind::Tenant)?,
    })
}

fn mount(state: &AppState) -> &str {
    &state.vault_mount
}

/// Onboards a tenant: generates both key sets and stores them in Vault.
#[utoipa::path(post, path = "/api/v1/admin/tenants", tag = "admin", request_body = CreateTenantRequest,
    responses((status = 201, body = TenantSecretsSummary), (status = 400, body = Problem),
              (status = 409, body = Problem), (status = 503, body = Problem)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiJson(body): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<TenantSecretsSummary>), ApiError> {
    if body.ssh_port == 0 {
        return Err(ApiError::InvalidBody(
            "sshPort must be between 1 and 65535".into(),
        ));
    }
    let new = NewTenant {
        tenant_id: tenant_from_path(&body.tenant_id)?,
        vps_ip: parse_vps_address(&body.vps_ip)?,
        ssh_port: body.ssh_port,
        tenant_user: parse_user(&body.ssh_username, "sshUsername")?,
        admin_user: parse_user(&body.admin_username, "adminUsername")?,
    };
    if new.tenant_user == new.admin_user {
        return Err(ApiError::InvalidBody(
            "sshUsername and adminUsername must be different users".into(),
        ));
    }
    let (tenant, key_sets) = state.lifecycle.create_tenant(&caller, new).await?;
    let summary = TenantSecretsSummary::new(
        &tenant,
        ssh_keys(&key_sets, mount(&state), state.lifecycle.now())?,
    );
    Ok((StatusCode::CREATED, Json(summary)))
}

/// Every tenant with its key sets' metadata.
#[utoipa::path(get, path = "/api/v1/admin/secrets/tenants", tag = "admin",
    responses((status = 200, body = Vec<TenantSecretsSummary>)))]
pub async fn list_tenant_secrets(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Vec<TenantSecretsSummary>>, ApiError> {
    let store = &state.store;
    let (tenants, key_sets) = tokio::try_join!(store.tenants(), store.key_sets())?;
    let summaries = tenants
        .iter()
        .map(|t: &TenantRecord| {
            let own: Vec<KeySetRecord> = key_sets
                .iter()
                .filter(|k| k.tenant_id == t.tenant_id)
                .cloned()
                .collect();
            Ok(TenantSecretsSummary::new(
                t,
                ssh_keys(&own, mount(&state), state.lifecycle.now())?,
            ))
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(summaries))
}

/// One tenant's secrets' metadata with Vault's version history. Audited. Never a private key.
#[utoipa::path(get, path = "/api/v1/admin/secrets/tenant/{tenant_id}", tag = "admin",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = TenantSecretDetails), (status = 404, body = Problem), (status = 503, body = Problem)))]
pub async fn tenant_secret_details(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TenantSecretDetails>, ApiError> {
    let tenant = tenant_from_path(&raw)?;
    let caller = admin_for(caller, &tenant)?;
    let store = &state.store;
    let mut key_sets = Vec::new();
    for kind in KeyKind::ALL {
        key_sets.push(
            store
                .key_set(&tenant, kind)
                .await?
                .ok_or_else(|| DomainError::TenantNotFound(tenant.clone()))?,
        );
    }
    let mut keys = ssh_keys(&key_sets, mount(&state), state.lifecycle.now())?;
    let vault = state.lifecycle.vault();
    let (admin_versions, tenant_versions) = tokio::try_join!(
        vault.key_set_versions(&tenant, KeyKind::Admin),
        vault.key_set_versions(&tenant, KeyKind::Tenant)
    )?;
    keys.admin_ssh.vault_versions = admin_versions;
    keys.tenant_ssh.vault_versions = tenant_versions;
    let api_keys = store
        .tokens(Some(&tenant))
        .await?
        .iter()
        .map(TokenSummary::from)
        .collect();
    let (smtp, dkim, offboarding) = tokio::try_join!(
        store.tenant_secret(&tenant, TenantSecretKind::Smtp.name()),
        store.tenant_secret(&tenant, TenantSecretKind::Dkim.name()),
        store.offboarding(&tenant),
    )?;
    state
        .lifecycle
        .audit_read(&caller, "tenant.read_secrets", &tenant)
        .await?;
    Ok(Json(TenantSecretDetails {
        tenant_id: tenant.to_string(),
        ssh_keys: keys,
        smtp_credentials: smtp.map(|s| SmtpCredentialsSummary::new(&s, mount(&state))),
        dkim: dkim.map(|d| DkimSummary::new(&d, mount(&state))),
        api_keys,
        offboarding: offboarding.map(|o| o.step.name()),
    }))
}

/// Rotates, regenerates or revokes one of a tenant's key sets (`kind`: `admin` or `tenant`).
/// Where the deployment's step-up policy names `regenerate` (or `revoke_admin_key`, for
/// revoking the admin key), the request needs `X-Keyward-MFA`.
#[utoipa::path(post, path = "/api/v1/admin/tenants/{tenant_id}/keys/{kind}/{operation}", tag = "admin",
    params(("tenant_id" = String, Path), ("kind" = String, Path, description = "admin or tenant"),
           ("operation" = String, Path, description = "rotate, regenerate or revoke"),
           ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`: a fresh second factor, when the step-up policy names this operation")),
    responses((status = 200, body = NewKeyResponse), (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names this operation and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"), (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names this operation and no second factor is confirmed (also `forbidden`)"), (status = 404, body = Problem), (status = 409, body = Problem), (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again")))]
pub async fn replace_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((raw_tenant, raw_kind, operation)): ApiPath<(String, String, String)>,
    step_up: StepUp,
) -> Result<Json<NewKeyResponse>, ApiError> {
    let tenant = tenant_from_path(&raw_tenant)?;
    let caller = admin_for(caller, &tenant)?;
    let kind: KeyKind = raw_kind.parse().map_err(|_| ApiError::NoRoute {
        path: format!("key kind {raw_kind:?}"),
    })?;
    let lifecycle = &state.lifecycle;
    let sensitive = match (operation.as_str(), kind) {
        ("regenerate", _) => Some(SensitiveOperation::Regenerate),
        ("revoke", KeyKind::Admin) => Some(SensitiveOperation::RevokeAdminKey),
        _ => None,
    };
    if let Some(sensitive) = sensitive {
        lifecycle
            .step_up(&caller, sensitive, step_up.proof())
            .await?;
    }
    let (ks, message) = match operation.as_str() {
        "rotate" => (
            lifecycle
                .replace_key(&caller, &tenant, kind, Replace::Rotate)
                .await?,
            "key rotated",
        ),
        "regenerate" => (
            lifecycle
                .replace_key(&caller, &tenant, kind, Replace::Regenerate)
                .await?,
            "key regenerated",
        ),
        "revoke" => (
            lifecycle.revoke(&caller, &tenant, kind).await?,
            "key revoked",
        ),
        other => {
            return Err(ApiError::NoRoute {
                path: format!("key operation {other:?}"),
            });
        }
    };
    Ok(Json(NewKeyResponse {
        status: "success",
        message: message.to_owned(),
        new_key_fingerprint: ks.fingerprint.to_string(),
    }))
}

/// Issues an API token. The token is in this answer only. Where the deployment's step-up
/// policy names `issue_token`, the request needs `X-Keyward-MFA`.
#[utoipa::path(post, path = "/api/v1/admin/tokens", tag = "admin", request_body = IssueTokenRequest,
    params(("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`: a fresh second factor, when the step-up policy names this operation")),
    responses((status = 201, body = IssuedToken), (status = 400, body = Problem), (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names this operation and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"), (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names this operation and no second factor is confirmed (also `forbidden`)"), (status = 404, body = Problem), (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again")))]
pub async fn issue_token(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    step_up: StepUp,
    ApiJson(body): ApiJson<IssueTokenRequest>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    if body.label.chars().count() > 200 || body.label.chars().any(char::is_control) {
        return Err(ApiError::InvalidBody(
            "label must be at most 200 printable characters".into(),
        ));
    }
    let role = match (body.role, body.tenant_id) {
        (TokenRole::Admin, None) => Role::Admin,
        (TokenRole::Admin, Some(_)) => {
            return Err(ApiError::InvalidBody(
                "an admin token takes no tenantId".into(),
            ));
        }
        (TokenRole::Tenant, Some(raw)) => Role::Tenant(tenant_from_path(&raw)?),
        (TokenRole::Tenant, None) => {
            return Err(ApiError::InvalidBody(
                "a tenant token needs a tenantId".into(),
            ));
        }
    };
    state
        .lifecycle
        .step_up(&caller, SensitiveOperation::IssueToken, step_up.proof())
        .await?;
    let (record, token) = state
        .lifecycle
        .issue_token(&caller, role, body.label)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            token: token.to_string(),
            summary: TokenSummary::from(&record),
        }),
    ))
}

/// Revokes an API token at once.
#[utoipa::path(delete, path = "/api/v1/admin/tokens/{token_id}", tag = "admin",
    params(("token_id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiPath(token_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.lifecycle.revoke_token(&caller, &token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Vault's health as keyward sees it: the active node's state and every node's. A node that
/// cannot be reached is shown as such; 503 only when no node answers.
#[utoipa::path(get, path = "/api/v1/admin/vault/health", tag = "admin",
    responses((status = 200, body = VaultHealthResponse),
        (status = 503, body = Problem, content_type = "application/problem+json",
            description = "`vault_unavailable`: no Vault node answers")))]
pub async fn vault_health(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<VaultHealthResponse>, ApiError> {
    let health = state.lifecycle.vault().health().await?;
    let backup = state.backups.status();
    let storage_status = if !health.initialized {
        "uninitialized"
    } else if health.sealed {
        "sealed"
    } else {
        "ok"
    };
    Ok(Json(VaultHealthResponse {
        sealed: health.sealed,
        active_node: health.active_node,
        storage_status: storage_status.to_owned(),
        last_backup: backup.last_backup,
        backup_status: backup.status,
        backup_error: backup.error,
        initialized: health.initialized,
        standby: health.standby,
        version: health.version,
        cluster_name: health.cluster_name,
        nodes: health.nodes,
    }))
}

/// Filters of `GET /api/v1/admin/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub tenant_id: Option<String>,
    /// e.g. `key.rotate`, `key.download`, `key.download_refused`, `token.issue`.
    #[param(pattern = "^[a-z._]{0,64}$", max_length = 64)]
    pub action: Option<String>,
    /// RFC 3339; inclusive.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339; exclusive.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<i64>,
}

/// The audit log, newest first, with filters and paging.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditPageResponse), (status = 400, body = Problem)))]
pub async fn audit_events(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPageResponse>, ApiError> {
    let action = q.action;
    if action.as_ref().is_some_and(|a| {
        a.len() > 64
            || !a
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
    }) {
        return Err(ApiError::InvalidQuery("unknown action".into()));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidQuery(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let filter = AuditFilter {
        tenant_id: q.tenant_id.as_deref().map(tenant_from_path).transpose()?,
        action,
        since: query_time(q.since, "since")?,
        until: query_time(q.until, "until")?,
        before_seq: q.cursor,
        limit,
    };
    let page = state.store.audit_events(&filter).await?;
    Ok(Json(AuditPageResponse {
        events: page.events,
        next_cursor: page.next_cursor,
    }))
}

/// Walks the hash chain of the audit log and names the first broken link; where the head is
/// signed (`[audit_signing]`), also checks every signed head in it and Vault's checkpoint
/// against the chain's end (`head.status`: a truncated or rewritten log is `ok: false`).
#[utoipa::path(get, path = "/api/v1/admin/audit/verify", tag = "admin",
    responses((status = 200, body = AuditVerdict),
        (status = 503, description = "Vault (the transit key or the checkpoint) cannot be reached: `vault_unavailable`, `vault_sealed`", body = Problem)))]
pub async fn verify_audit(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<AuditVerdict>, ApiError> {
    Ok(Json(match &state.audit_head {
        Some(signer) => signer.verify(state.lifecycle.now()).await?,
        None => audit_head::combine(state.store.verify_audit_chain().await?, None),
    }))
}

/// Audit export's sinks (`[audit_export]`), each with its cursor, lag and status.
#[utoipa::path(get, path = "/api/v1/admin/audit/sinks", tag = "admin",
    responses((status = 200, body = AuditSinksResponse)))]
pub async fn audit_sinks(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<AuditSinksResponse>, ApiError> {
    Ok(Json(AuditSinksResponse {
        sinks: state.audit_export.status().await?,
    }))
}
