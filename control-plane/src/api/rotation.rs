//! Rotation endpoints: bulk rotation jobs (`/api/v1/admin/secrets/rotate-all...`) and per-tenant
//! rotation policies (`/api/v1/admin/tenants/{tenant_id}/rotation-policy`).
//!
//! `POST rotate-all` waits until the job has gone through every tenant and answers the product
//! document's `{status, rotatedCount, failedCount}` with the job's id and per-tenant failures (it
//! is exempt from the request timeout; if the client goes away, the job goes on). With
//! `?async=true` it answers `202` at once with the job, to be followed at
//! `GET rotate-all/{job_id}` or live at `GET rotate-all/{job_id}/events` (Server-Sent Events).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use keyward_common::KeyAlgorithm;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::{IntoParams, ToSchema};

use super::admin::{admin_for, existing_tenant_for_admin};
use super::auth::AdminCaller;
use super::{ApiJson, ApiPath, ApiQuery, AppState, tenant_from_path};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{DomainError, PolicySource, RotationPolicy};
use crate::rotation::bulk::valid_job_id;
use crate::rotation::{JobSnapshot, SecretType, TenantResult};
use crate::store::{JobFailure, JobRecord, Store};

/// `POST /api/v1/admin/secrets/rotate-all`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateAllRequest {
    pub secret_type: SecretType,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RotateAllQuery {
    /// Answer `202` with the job at once instead of waiting for it.
    #[serde(rename = "async")]
    pub run_async: Option<bool>,
}

/// The answer of a finished `rotate-all`: the product document's fields, and the job.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotateAllResponse {
    /// `success`: the job went through every tenant (the counts say how each fared).
    pub status: &'static str,
    /// Tenants whose secret was rotated (for `ssh`: all its active key sets).
    pub rotated_count: i64,
    pub failed_count: i64,
    /// Tenants with nothing to rotate (`ssh`: both key sets revoked or registered by their
    /// owners, which keyward does not replace).
    pub skipped_count: i64,
    pub job_id: String,
    pub failures: Vec<JobFailure>,
}

/// A bulk rotation job.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationJobView {
    pub job_id: String,
    pub secret_type: String,
    /// `running`, `completed` or `interrupted` (its control plane stopped).
    pub status: String,
    /// Token id of the admin who started it.
    pub started_by: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Tenants the job goes through.
    pub total: i64,
    pub rotated_count: i64,
    pub failed_count: i64,
    pub skipped_count: i64,
    pub failures: Vec<JobFailure>,
    /// The tenant that finished last (in live events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tenant: Option<TenantResult>,
}

impl RotationJobView {
    fn new(job: &JobRecord, last: Option<&TenantResult>) -> Self {
        Self {
            job_id: job.job_id.clone(),
            secret_type: job.secret_type.clone(),
            status: job.status.clone(),
            started_by: job.started_by.clone(),
            started_at: iso8601(job.started_at),
            finished_at: job.finished_at.map(iso8601),
            total: job.total,
            rotated_count: job.rotated,
            failed_count: job.failed,
            skipped_count: job.skipped,
            failures: job.failures.clone(),
            last_tenant: last.cloned(),
        }
    }
}

fn job_path(job_id: &str) -> String {
    format!("/api/v1/admin/secrets/rotate-all/{job_id}")
}

/// Rotates one secret type for every tenant. Where the deployment's step-up policy names
/// `rotate_all`, the request needs `X-Keyward-MFA`.
#[utoipa::path(post, path = "/api/v1/admin/secrets/rotate-all", tag = "rotation",
    request_body = RotateAllRequest,
    params(RotateAllQuery, ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`: a fresh second factor, when the step-up policy names this operation")),
    responses((status = 200, body = RotateAllResponse), (status = 202, body = RotationJobView),
              (status = 400, body = Problem), (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names this operation and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"), (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names this operation and no second factor is confirmed (also `forbidden`)"), (status = 409, body = Problem, description = "a job is running: `jobId` names it"), (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again")))]
pub async fn rotate_all(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiQuery(query): ApiQuery<RotateAllQuery>,
    step_up: super::mfa::StepUp,
    ApiJson(body): ApiJson<RotateAllRequest>,
) -> Result<Response, ApiError> {
    state
        .lifecycle
        .step_up(
            &caller,
            crate::config::SensitiveOperation::RotateAll,
            step_up.proof(),
        )
        .await?;
    let mut progress = state.rotations.start(&caller, body.secret_type).await?;
    if query.run_async == Some(true) {
        let view = RotationJobView::new(&progress.borrow().job, None);
        let location = job_path(&view.job_id);
        return Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(view),
        )
            .into_response());
    }
    let done = progress
        .wait_for(|s| !s.running())
        .await
        .map(|s| s.job.clone())
        // The job's task ended without a result: the server is shutting down.
        .map_err(|_| ApiError::Internal)?;
    Ok(Json(RotateAllResponse {
        status: "success",
        rotated_count: done.rotated,
        failed_count: done.failed,
        skipped_count: done.skipped,
        job_id: done.job_id,
        failures: done.failures,
    })
    .into_response())
}

/// The latest bulk rotation jobs, newest first.
#[utoipa::path(get, path = "/api/v1/admin/secrets/rotate-all", tag = "rotation",
    responses((status = 200, body = Vec<RotationJobView>)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Vec<RotationJobView>>, ApiError> {
    let jobs = state.store.rotation_jobs(50).await?;
    Ok(Json(
        jobs.iter().map(|j| RotationJobView::new(j, None)).collect(),
    ))
}

async fn job_or_404(store: &Store, job_id: &str) -> Result<JobRecord, ApiError> {
    if !valid_job_id(job_id) {
        return Err(DomainError::JobNotFound(job_id.chars().take(40).collect()).into());
    }
    store
        .rotation_job(job_id)
        .await?
        .ok_or_else(|| DomainError::JobNotFound(job_id.to_owned()).into())
}

/// A bulk rotation job: progress and per-tenant failures.
#[utoipa::path(get, path = "/api/v1/admin/secrets/rotate-all/{job_id}", tag = "rotation",
    params(("job_id" = String, Path)),
    responses((status = 200, body = RotationJobView), (status = 404, body = Problem)))]
pub async fn job(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<RotationJobView>, ApiError> {
    if let Some(progress) = state.rotations.watch(&job_id) {
        let snapshot = progress.borrow();
        return Ok(Json(RotationJobView::new(&snapshot.job, None)));
    }
    let job = job_or_404(&state.store, &job_id).await?;
    Ok(Json(RotationJobView::new(&job, None)))
}

/// How often a live view of a job running on another replica reads it without being told to.
const STORED_POLL: Duration = Duration::from_secs(5);

/// Where a live stream reads the job from.
enum Follow {
    /// The job runs on this replica.
    Local {
        progress: watch::Receiver<JobSnapshot>,
        first: bool,
    },
    /// It ran, or runs on another replica: read from SQL whenever a replica announces progress
    /// of a job (`Change::JobProgress`), and every [`STORED_POLL`] in case an announcement was
    /// lost.
    Stored {
        store: Store,
        job_id: String,
        jobs: watch::Receiver<u64>,
        last: Option<Box<JobRecord>>,
    },
    Done,
}

fn event(snapshot: &JobRecord, last: Option<&TenantResult>) -> (Event, bool) {
    let running = snapshot.status == "running";
    let view = RotationJobView::new(snapshot, last);
    let processed = view.rotated_count + view.failed_count + view.skipped_count;
    let name = if running { "progress" } else { "done" };
    let event = Event::default()
        .event(name)
        .id(processed.to_string())
        .json_data(&view)
        .unwrap_or_else(|_| Event::default().event(name));
    (event, !running)
}

async fn next_event(follow: Follow) -> Option<(Result<Event, Infallible>, Follow)> {
    match follow {
        Follow::Done => None,
        Follow::Local {
            mut progress,
            first,
        } => {
            if !first && progress.changed().await.is_err() {
                // The job's task is gone without a last word (server shutdown).
                return None;
            }
            let snapshot = progress.borrow_and_update().clone();
            let (event, done) = event(&snapshot.job, snapshot.last.as_ref());
            let next = if done {
                Follow::Done
            } else {
                Follow::Local {
                    progress,
                    first: false,
                }
            };
            Some((Ok(event), next))
        }
        Follow::Stored {
            store,
            job_id,
            mut jobs,
            last,
        } => loop {
            if last.is_some() {
                // A closed channel (the hub is gone) leaves the poll.
                let _ = tokio::time::timeout(STORED_POLL, jobs.changed()).await;
            }
            jobs.mark_unchanged();
            let job = match store.rotation_job(&job_id).await {
                Ok(Some(job)) => job,
                _ => return None,
            };
            if last.as_deref() == Some(&job) {
                continue;
            }
            let (event, done) = event(&job, None);
            let next = if done {
                Follow::Done
            } else {
                Follow::Stored {
                    store,
                    job_id,
                    jobs,
                    last: Some(Box::new(job)),
                }
            };
            return Some((Ok(event), next));
        },
    }
}

/// Follows a bulk rotation job live: Server-Sent Events `progress` (the job as it stands, and
/// the tenant that finished last) until one `done` event with the final counts.
#[utoipa::path(get, path = "/api/v1/admin/secrets/rotate-all/{job_id}/events", tag = "rotation",
    params(("job_id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "`progress` events, then `done`; data: RotationJobView"),
              (status = 404, body = Problem)))]
pub async fn job_events(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let follow = match state.rotations.watch(&job_id) {
        Some(progress) => Follow::Local {
            progress,
            first: true,
        },
        None => {
            let store = state.store.clone();
            job_or_404(&store, &job_id).await?;
            Follow::Stored {
                store,
                job_id,
                jobs: state.hub.subscribe_jobs(),
                last: None,
            }
        }
    };
    Ok(super::live::stream(
        &state,
        super::live::Scope::of(&caller),
        move |sink| async move {
            let mut follow = follow;
            while let Some((Ok(event), next)) = next_event(follow).await {
                if sink.send(event).is_err() {
                    return;
                }
                follow = next;
            }
        },
    ))
}

/// `PUT /api/v1/admin/tenants/{tenant_id}/rotation-policy`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotationPolicyRequest {
    /// How long a key lives, e.g. `"30days"`, `"90days"`, `"12h"`: at least 1h.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "30days")]
    pub interval: Duration,
    /// How long a rotated key keeps working, e.g. `"1day"`; shorter than `interval`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "1day")]
    pub grace_period: Duration,
    /// `rsa-4096` or `ed25519`: the algorithm of the tenant's next keys.
    #[schema(value_type = String, example = "ed25519")]
    pub algorithm: KeyAlgorithm,
}

/// A tenant's rotation policy.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicyView {
    pub tenant_id: String,
    /// `"90_days"`: the `rotation_policy` of new key versions.
    pub name: String,
    #[serde(serialize_with = "human_duration")]
    #[schema(value_type = String, example = "90days")]
    pub interval: Duration,
    #[serde(serialize_with = "human_duration")]
    #[schema(value_type = String, example = "1day")]
    pub grace_period: Duration,
    #[schema(value_type = String, example = "rsa-4096")]
    pub algorithm: KeyAlgorithm,
    /// `tenant` (set for this tenant) or `default` (the configured one).
    pub source: &'static str,
    pub updated_at: Option<String>,
    /// When each key set falls due under this policy, by kind (`admin`, `tenant`).
    pub next_rotation: std::collections::BTreeMap<String, String>,
}

/// A duration as a person writes it, in its largest whole unit (`"90days"`, `"36h"`, `"90m"`), in
/// the form a `PUT` accepts back. (humantime's own formatting breaks 90 days into months.)
fn human_duration<S: serde::Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*d))
}

fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        86_400 => "1day".into(),
        s if s > 0 && s % 86_400 == 0 => format!("{}days", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn policy_view(
    state: &AppState,
    tenant: &keyward_common::TenantId,
    policy: RotationPolicy,
) -> Result<RotationPolicyView, ApiError> {
    let mut next_rotation = std::collections::BTreeMap::new();
    for kind in keyward_common::KeyKind::ALL {
        if let Some(ks) = state.store.key_set(tenant, kind).await? {
            next_rotation.insert(kind.as_str().to_owned(), iso8601(ks.next_rotation));
        }
    }
    Ok(RotationPolicyView {
        tenant_id: tenant.to_string(),
        name: policy.name,
        interval: policy.interval,
        grace_period: policy.grace_period,
        algorithm: policy.algorithm,
        source: match policy.source {
            PolicySource::Default => "default",
            PolicySource::Tenant => "tenant",
        },
        updated_at: policy.updated_at.map(iso8601),
        next_rotation,
    })
}

/// The rotation policy that applies to a tenant.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant_id}/rotation-policy", tag = "rotation",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = RotationPolicyView), (status = 404, body = Problem)))]
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<RotationPolicyView>, ApiError> {
    let tenant = existing_tenant_for_admin(&state, caller, &raw).await?;
    let policy = state.lifecycle.rotation_policy(&tenant).await?;
    Ok(Json(policy_view(&state, &tenant, policy).await?))
}

/// Sets a tenant's rotation policy. Its key sets are rescheduled at once (`nextRotation =
/// lastRotated + interval`, so a shorter interval can make them due now); the algorithm applies
/// from the next rotation. Audited (`policy.set`).
#[utoipa::path(put, path = "/api/v1/admin/tenants/{tenant_id}/rotation-policy", tag = "rotation",
    params(("tenant_id" = String, Path)), request_body = RotationPolicyRequest,
    responses((status = 200, body = RotationPolicyView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<RotationPolicyRequest>,
) -> Result<Json<RotationPolicyView>, ApiError> {
    let tenant = tenant_from_path(&raw)?;
    let caller = admin_for(caller, &tenant)?;
    let policy = state
        .lifecycle
        .set_rotation_policy(
            &caller,
            &tenant,
            Some((body.interval, body.grace_period, body.algorithm)),
        )
        .await?;
    Ok(Json(policy_view(&state, &tenant, policy).await?))
}

/// Returns a tenant to the default rotation policy. Audited (`policy.reset`).
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant_id}/rotation-policy", tag = "rotation",
    params(("tenant_id" = String, Path)),
    responses((status = 200, body = RotationPolicyView), (status = 404, body = Problem)))]
pub async fn delete_policy(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<RotationPolicyView>, ApiError> {
    let tenant = tenant_from_path(&raw)?;
    let caller = admin_for(caller, &tenant)?;
    let policy = state
        .lifecycle
        .set_rotation_policy(&caller, &tenant, None)
        .await?;
    Ok(Json(policy_view(&state, &tenant, policy).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written_and_parse_back() {
        for (secs, text) in [
            (90 * 86_400, "90days"),
            (86_400, "1day"),
            (36 * 3600, "36h"),
            (5400, "90m"),
            (61, "61s"),
            (0, "0s"),
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(format_duration(d), text);
            assert_eq!(
                humantime_serde::re::humantime::parse_duration(text).unwrap(),
                d
            );
        }
    }
}
