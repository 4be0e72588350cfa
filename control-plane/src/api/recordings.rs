//! SSH session recordings: listed with filters, one recording's metadata, and its content as
//! asciicast v2 for playback and download; and the tenants' recording policies.
//!
//! A tenant sees the recordings of its own VPS hosts (the platform's admin sessions on them
//! included) and nothing else: another tenant's recording is a 404, like one that does not
//! exist. Admins see every recording.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keyward_common::HostId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::{admin_for, existing_tenant_for_admin};
use super::auth::{AdminCaller, TenantCaller};
use super::{ApiJson, ApiPath, ApiQuery, AppState, query_time, tenant_from_path};
use crate::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::recordings::RecordingName;
use crate::recordings::asciicast::tlog_to_asciicast;
use crate::store::{RecordingFilter, RecordingPolicy, RecordingRecord};

/// The API's recording ids: `rec_` and 32 lower-case hex digits.
pub const RECORDING_ID_PATTERN: &str = "^rec_[0-9a-f]{32}$";

/// Filters of the recordings' listings.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecordingQuery {
    pub host_id: Option<String>,
    /// The Unix user whose sessions.
    pub user: Option<String>,
    /// RFC 3339; sessions started at or after it.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339; sessions started before it.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^rec_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
}

/// Filters of the admins' listing: the tenant's, and one tenant.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdminRecordingQuery {
    /// One tenant's recordings.
    pub tenant_id: Option<String>,
    pub host_id: Option<String>,
    /// The Unix user whose sessions.
    pub user: Option<String>,
    /// RFC 3339; sessions started at or after it.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339; sessions started before it.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^rec_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingPage {
    pub recordings: Vec<RecordingRecord>,
    pub next_cursor: Option<String>,
}

/// A tenant's recording policy.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingPolicyView {
    pub tenant_id: String,
    #[serde(flatten)]
    pub policy: RecordingPolicy,
}

/// `PUT /api/v1/admin/tenants/{tenant_id}/recording-policy`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordingPolicyRequest {
    /// Record the platform's admin user's sessions.
    pub record_admin: bool,
    /// Record the tenant's own user's sessions.
    pub record_tenant: bool,
    /// Record keystrokes too (passwords typed at a prompt among them).
    pub record_input: bool,
}

fn recording_id(raw: &str) -> Result<String, ApiError> {
    let valid = raw.len() == 36
        && raw.starts_with("rec_")
        && raw[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::InvalidQuery(
            "a recording id is rec_ and 32 lower-case hex digits".into(),
        ))
    }
}

fn filter(
    q: RecordingQuery,
    tenant: Option<keyward_common::TenantId>,
) -> Result<RecordingFilter, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidQuery(
            "limit must be between 1 and 500".into(),
        ));
    }
    let host_id = q
        .host_id
        .map(|h| {
            h.parse::<HostId>().map_err(|source| ApiError::InvalidId {
                what: "host id",
                source,
            })
        })
        .transpose()?;
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
    Ok(RecordingFilter {
        tenant_id: tenant,
        host_id,
        user,
        since: query_time(q.since, "since")?,
        until: query_time(q.until, "until")?,
        after_id: q.cursor.as_deref().map(recording_id).transpose()?,
        limit,
    })
}

/// The recording `raw` names, when `tenant` (a tenant caller's own; `None` for admins) may see it.
async fn visible(
    state: &AppState,
    raw: &str,
    tenant: Option<&keyward_common::TenantId>,
) -> Result<RecordingRecord, ApiError> {
    let id = recording_id(raw)?;
    let record = state
        .store
        .recording(&id)
        .await?
        .filter(|r| tenant.is_none_or(|t| &r.tenant_id == t))
        .ok_or(ApiError::RecordingNotFound)?;
    Ok(record)
}

/// Conversions running at once, per replica: each holds a whole recording and its asciicast in
/// memory (up to about twice `recordings.max_bytes`), so a caller asking for large recordings
/// over and over waits (and meets `server.request_timeout`) instead of exhausting memory.
static CONVERSIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The recording as asciicast v2, to play or to download.
async fn asciicast(state: &AppState, record: &RecordingRecord) -> Result<Response, ApiError> {
    let _permit = CONVERSIONS
        .acquire()
        .await
        .map_err(|_| ApiError::Internal)?;
    let name: RecordingName = record
        .recording_id
        .parse()
        .map_err(|_| ApiError::RecordingUnreadable)?;
    let chunks = u64::try_from(record.chunks).unwrap_or(0);
    let bytes = state
        .recordings
        .read(&record.host_id, &name, chunks)
        .await
        .map_err(|e| {
            tracing::warn!(recording = %record.id, error = %e, "cannot read a recording");
            ApiError::RecordingUnavailable
        })?;
    // CPU work of up to seconds for the largest recordings: off the request threads.
    let cast = tokio::task::spawn_blocking(move || tlog_to_asciicast(&bytes))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::warn!(recording = %record.id, error = %e, "cannot convert a recording");
            ApiError::RecordingUnreadable
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.cast\"", record.id),
            ),
        ],
        cast,
    )
        .into_response())
}

/// The caller's recordings (sessions on its own VPS hosts, the platform's admin sessions
/// among them), newest first.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/recordings", tag = "recordings",
    params(RecordingQuery),
    responses((status = 200, body = RecordingPage), (status = 400, body = Problem)))]
pub async fn tenant_list(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiQuery(q): ApiQuery<RecordingQuery>,
) -> Result<Json<RecordingPage>, ApiError> {
    let (recordings, next_cursor) = state
        .store
        .recordings(&filter(q, Some(who.tenant))?)
        .await?;
    Ok(Json(RecordingPage {
        recordings,
        next_cursor,
    }))
}

/// One of the caller's recordings.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/recordings/{recording_id}", tag = "recordings",
    params(("recording_id" = String, Path)),
    responses((status = 200, body = RecordingRecord),
        (status = 404, body = Problem, description = "`recording_not_found`")))]
pub async fn tenant_get(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<RecordingRecord>, ApiError> {
    Ok(Json(visible(&state, &raw, Some(&who.tenant)).await?))
}

/// One of the caller's recordings as asciicast v2.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/recordings/{recording_id}/asciicast", tag = "recordings",
    params(("recording_id" = String, Path)),
    responses((status = 200, content_type = "application/x-asciicast", body = String,
            description = "asciicast v2: a header line, then one `[seconds, \"o\"|\"i\"|\"r\", data]` event a line"),
        (status = 404, body = Problem, description = "`recording_not_found`"),
        (status = 422, body = Problem, description = "`recording_unreadable`: the stored recording is not tlog's format"),
        (status = 503, body = Problem, description = "`recording_unavailable`: the recordings' store cannot be read")))]
pub async fn tenant_asciicast(
    State(state): State<AppState>,
    who: TenantCaller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    let record = visible(&state, &raw, Some(&who.tenant)).await?;
    asciicast(&state, &record).await
}

/// Every recording, newest first, with filters.
#[utoipa::path(get, path = "/api/v1/admin/recordings", tag = "recordings", params(AdminRecordingQuery),
    responses((status = 200, body = RecordingPage), (status = 400, body = Problem)))]
pub async fn admin_list(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(q): ApiQuery<AdminRecordingQuery>,
) -> Result<Json<RecordingPage>, ApiError> {
    let tenant = q.tenant_id.as_deref().map(tenant_from_path).transpose()?;
    let filters = RecordingQuery {
        host_id: q.host_id,
        user: q.user,
        since: q.since,
        until: q.until,
        limit: q.limit,
        cursor: q.cursor,
    };
    let (recordings, next_cursor) = state.store.recordings(&filter(filters, tenant)?).await?;
    Ok(Json(RecordingPage {
        recordings,
        next_cursor,
    }))
}

/// One recording.
#[utoipa::path(get, path = "/api/v1/admin/recordings/{recording_id}", tag = "recordings",
    params(("recording_id" = String, Path)),
    responses((status = 200, body = RecordingRecord),
        (status = 404, body = Problem, description = "`recording_not_found`")))]
pub async fn admin_get(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<RecordingRecord>, ApiError> {
    Ok(Json(visible(&state, &raw, None).await?))
}

/// One recording as asciicast v2.
#[utoipa::path(get, path = "/api/v1/admin/recordings/{recording_id}/asciicast", tag = "recordings",
    params(("recording_id" = String, Path)),
    responses((status = 200, content_type = "application/x-asciicast", body = String,
            description = "asciicast v2: a header line, then one `[seconds, \"o\"|\"i\"|\"r\", data]` event a line"),
        (status = 404, body = Problem, description = "`recording_not_found`"),
        (status = 422, body = Problem, description = "`recording_unreadable`: the stored recording is not tlog's format"),
        (status = 503, body = Problem, description = "`recording_unavailable`: the recordings' store cannot be read")))]
pub async fn admin_asciicast(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Response, ApiError> {
    let record = visible(&state, &raw, None).await?;
    asciicast(&state, &record).await
}

/// Which of the caller's sessions are recorded.
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/recording-policy", tag = "recordings",
    responses((status = 200, body = RecordingPolicyView)))]
pub async fn tenant_policy(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Json<RecordingPolicyView>, ApiError> {
    let policy = state.store.recording_policy(&who.tenant).await?;
    Ok(Json(RecordingPolicyView {
        tenant_id: who.tenant.to_string(),
        policy,
    }))
}

/// A tenant's recording policy.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant_id}/recording-policy", tag = "recordings",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = RecordingPolicyView), (status = 404, body = Problem)))]
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<RecordingPolicyView>, ApiError> {
    let tenant = existing_tenant_for_admin(&state, caller, &raw).await?;
    let policy = state.store.recording_policy(&tenant).await?;
    Ok(Json(RecordingPolicyView {
        tenant_id: tenant.to_string(),
        policy,
    }))
}

/// Sets which of a tenant's sessions are recorded; its hosts get the new state. Audited
/// (`recording_policy.set`).
#[utoipa::path(put, path = "/api/v1/admin/tenants/{tenant_id}/recording-policy", tag = "recordings",
    params(("tenant_id" = String, Path)), request_body = RecordingPolicyRequest,
    responses((status = 200, body = RecordingPolicyView), (status = 404, body = Problem)))]
pub async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<RecordingPolicyRequest>,
) -> Result<Json<RecordingPolicyView>, ApiError> {
    let tenant = tenant_from_path(&raw)?;
    let caller = admin_for(caller, &tenant)?;
    let policy = RecordingPolicy {
        record_admin: body.record_admin,
        record_tenant: body.record_tenant,
        record_input: body.record_input,
    };
    let policy = state
        .lifecycle
        .set_recording_policy(&caller, &tenant, policy)
        .await?;
    Ok(Json(RecordingPolicyView {
        tenant_id: tenant.to_string(),
        policy,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_ids_are_checked_before_they_reach_sql() {
        assert!(recording_id("rec_0123456789abcdef0123456789abcdef").is_ok());
        for bad in [
            "rec_",
            "rec_0123456789ABCDEF0123456789abcdef",
            "x",
            "rec_0123456789abcdef0123456789abcde/",
            "' OR 1=1 --",
        ] {
            assert!(recording_id(bad).is_err(), "{bad}");
        }
    }
}
