//! SSH login history: every login on every VPS, attributed to the key that opened it.

use axum::Json;
use axum::extract::State;
use keyward_common::HostId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{AdminCaller, TenantCaller};
use super::{ApiQuery, AppState, query_time, tenant_from_path};
use crate::clock::iso8601;
use crate::error::{ApiError, Problem};
use crate::store::{KeyUsage, LoginFilter, LoginRecord, UnmanagedUse};

const OUTCOMES: [&str; 5] = [
    "accepted",
    "failed",
    "invalid_user",
    "closed_preauth",
    "disconnected",
];
const KEY_KINDS: [&str; 3] = ["admin", "tenant", "unmanaged"];

/// Filters of `GET /api/v1/admin/audit/logins`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LoginQuery {
    pub tenant_id: Option<String>,
    pub host_id: Option<String>,
    pub user: Option<String>,
    /// `admin`, `tenant` or `unmanaged`.
    #[param(pattern = "^(admin|tenant|unmanaged)$")]
    pub key_kind: Option<String>,
    /// `accepted`, `failed`, `invalid_user`, `closed_preauth` or `disconnected`.
    #[param(pattern = "^(accepted|failed|invalid_user|closed_preauth|disconnected)$")]
    pub outcome: Option<String>,
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

/// The tenant's own paging parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    pub cursor: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginPage {
    pub events: Vec<LoginRecord>,
    pub next_cursor: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsageReport {
    pub keys: Vec<KeyUsage>,
    /// Accepted logins with keys keyward did not put there.
    pub unmanaged: Vec<UnmanagedUse>,
}

fn one_of(value: Option<String>, allowed: &[&str], name: &str) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => Err(ApiError::InvalidQuery(format!(
            "{name} must be one of {}",
            allowed.join(", ")
        ))),
        other => Ok(other),
    }
}

fn limit(value: Option<i64>) -> Result<i64, ApiError> {
    let limit = value.unwrap_or(100);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::InvalidQuery(
            "limit must be between 1 and 1000".into(),
        ))
    }
}

/// Login events on every host, newest first, with filters and paging.
#[utoipa::path(get, path = "/api/v1/admin/audit/logins", tag = "logins", params(LoginQuery),
    responses((status = 200, body = LoginPage), (status = 400, body = Problem)))]
pub async fn admin_logins(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(q): ApiQuery<LoginQuery>,
) -> Result<Json<LoginPage>, ApiError> {
    let user = q
        .user
        .map(|u| {
            u.parse::<keyward_common::UnixUser>()
                .map(|u| u.to_string())
                .map_err(|source| ApiError::InvalidId {
                    what: "user",
                    source,
                })
        })
        .transpose()?;
    let host_id = q
        .host_id
        .map(|h| {
            h.parse::<HostId>().map_err(|source| ApiError::InvalidId {
                what: "host id",
                source,
            })
        })
        .transpose()?;
    let filter = LoginFilter {
        tenant_id: q.tenant_id.as_deref().map(tenant_from_path).transpose()?,
        host_id,
        user,
        key_kind: one_of(q.key_kind, &KEY_KINDS, "keyKind")?,
        outcome: one_of(q.outcome, &OUTCOMES, "outcome")?,
        since: query_time(q.since, "since")?,
        until: query_time(q.until, "until")?,
        before_id: q.cursor,
        limit: limit(q.limit)?,
        vps_only: false,
    };
    let (events, next_cursor) = state.store.logins(&filter).await?;
    Ok(Json(LoginPage {
        events,
        next_cursor,
    }))
}

/// Logins on the caller's own VPS, newest first (a bastion's, though registered under the
/// tenant, are admins' only: they are every tenant's jumps).
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/ssh-logins", tag = "tenant", params(PageQuery),
    responses((status = 200, body = LoginPage), (status = 400, body = Problem)))]
pub async fn tenant_logins(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<LoginPage>, ApiError> {
    let filter = LoginFilter {
        tenant_id: Some(who.tenant),
        before_id: q.cursor,
        limit: limit(q.limit)?,
        // A bastion's logins are every tenant's jumps: the platform's to list, not its tenant's.
        vps_only: true,
        ..LoginFilter::default()
    };
    let (events, next_cursor) = state.store.logins(&filter).await?;
    Ok(Json(LoginPage {
        events,
        next_cursor,
    }))
}

/// Per key: last use, logins per day (last 30 days), failed attempts; and unmanaged keys in use.
#[utoipa::path(get, path = "/api/v1/admin/keys/usage", tag = "logins",
    responses((status = 200, body = KeyUsageReport)))]
pub async fn key_usage(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<KeyUsageReport>, ApiError> {
    let since = iso8601(state.lifecycle.now() - chrono::Duration::days(30));
    let store = &state.store;
    let (keys, unmanaged) = tokio::try_join!(store.key_usage(&since), store.unmanaged_logins())?;
    Ok(Json(KeyUsageReport { keys, unmanaged }))
}
