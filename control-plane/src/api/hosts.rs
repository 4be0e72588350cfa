//! Hosts: registration with a one-time enrollment token, enrollment by the agent, revocation,
//! and the live view of each host (`/api/v1/admin/hosts`, `/api/v1/agent/enroll`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use futures::Stream;
use keyward_common::HostId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::AdminCaller;
use super::hosts_query::HostsQuery;
use super::{ApiJson, ApiPath, ApiQuery, AppState, tenant_from_path};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::error::{ApiError, Problem};
use crate::lifecycle::DomainError;
use crate::store::{DriftRecord, HostActivity, HostRecord, HostRole, StreamedHost, hash_token};

/// `POST /api/v1/admin/hosts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterHostRequest {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", min_length = 1, max_length = 63)]
    pub tenant_id: String,
    /// Optional; a random id is made when absent.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", min_length = 1, max_length = 63)]
    pub host_id: Option<String>,
    /// `vps` (the default): the tenant's server. `bastion`: a jump host the tenant (usually the
    /// platform's own) runs; its agent gives the jump user (`bastion.jump_user`) every tenant's
    /// certificate principals, each allowed only to forward to that tenant's VPS.
    #[serde(default)]
    pub role: HostRole,
}

/// The one time an enrollment token is shown.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostRegistration {
    pub host_id: String,
    pub tenant_id: String,
    pub role: HostRole,
    pub enrollment_token: String,
    pub expires_at: String,
}

/// `POST /api/v1/agent/enroll`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// PKCS#10 request for the agent's own key (PEM). The key never leaves the host.
    pub csr_pem: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    pub host_id: String,
    pub tenant_id: String,
    pub certificate_pem: String,
    pub ca_certificate_pem: String,
    /// Ed25519 public key (base64) that signs every desired state; the agent pins it.
    pub signing_public_key: String,
    pub grpc_url: String,
}

/// A host key the agent reported, as a person checks it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostKeyView {
    pub public_key: String,
    pub fingerprint: String,
}

/// A host as admins see it, live.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    pub host_id: String,
    pub tenant_id: String,
    pub role: HostRole,
    /// The host's agent has a stream open to this replica or to another live one.
    pub connected: bool,
    /// `pending` (not enrolled), `in_sync`, `applying` (a newer state is on its way),
    /// `degraded` (applied, but a user has an error or a warning: see `degradedReasons`) or
    /// `revoked`.
    pub status: &'static str,
    pub desired_generation: i64,
    pub applied_generation: i64,
    pub last_seen: Option<String>,
    pub agent_version: Option<String>,
    pub enrolled_at: Option<String>,
    pub certificate_not_after: Option<String>,
    pub revoked_at: Option<String>,
    /// Per managed user: the fingerprints the agent applied, and any error.
    pub users: serde_json::Value,
    pub host_keys: Vec<HostKeyView>,
    /// Why the host is `degraded`: every user's error and warnings (`user: reason`, joined by
    /// `; `), or the last state the agent rejected.
    pub last_error: Option<String>,
    /// Login events the agent dropped because its spool was full.
    pub logins_dropped: i64,
    /// Drift reports and login events of this host that the control plane dropped because the
    /// agent sent them faster than its rate (`agent_api.drift_reports_per_minute`,
    /// `agent_api.login_events_per_minute` and their bursts); dropped login events were still
    /// acknowledged, so the agent does not have them either.
    pub reports_dropped: i64,
    /// The host's agent records SSH sessions (it said so when it connected): false means that
    /// the tenant's recording policy is not carried out there.
    pub recording: bool,
    /// The last verified accepted login on the host (its clock), and the Unix user: a login
    /// the agent tied to sshd itself, never a log line anyone could have written.
    pub last_login: Option<String>,
    pub last_login_user: Option<String>,
    /// When the agent last reported a drift it repaired.
    pub last_drift_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Vec<DriftRecord>>,
}

impl HostView {
    fn new(host: &HostRecord, connected: bool) -> Self {
        let status = if host.revoked_at.is_some() {
            "revoked"
        } else if host.enrolled_at.is_none() {
            "pending"
        } else if host.last_error.is_some() {
            "degraded"
        } else if host.applied_generation >= host.desired_generation {
            "in_sync"
        } else {
            "applying"
        };
        Self {
            host_id: host.host_id.to_string(),
            tenant_id: host.tenant_id.to_string(),
            role: host.role,
            connected,
            status,
            desired_generation: host.desired_generation,
            applied_generation: host.applied_generation,
            last_seen: host.last_seen.map(iso8601),
            agent_version: host.agent_version.clone(),
            enrolled_at: host.enrolled_at.map(iso8601),
            certificate_not_after: host.cert_not_after.map(iso8601),
            revoked_at: host.revoked_at.map(iso8601),
            users: host.applied_users.clone(),
            host_keys: host_key_views(&host.host_keys),
            last_error: host.last_error.clone(),
            logins_dropped: host.logins_dropped,
            reports_dropped: host.reports_dropped,
            recording: host.agent_records,
            last_login: None,
            last_login_user: None,
            last_drift_at: None,
            drift: None,
        }
    }

    fn with_activity(mut self, activity: Option<&HostActivity>) -> Self {
        if let Some(activity) = activity {
            if let Some((at, user)) = &activity.last_login {
                self.last_login = Some(at.clone());
                self.last_login_user = Some(user.clone());
            }
            self.last_drift_at = activity.last_drift.map(iso8601);
        }
        self
    }
}

pub fn host_key_views(keys: &[String]) -> Vec<HostKeyView> {
    keys.iter()
        .filter_map(|k| {
            keyward_common::keys::public_key_fingerprint(k)
                .ok()
                .map(|f| HostKeyView {
                    public_key: k.clone(),
                    fingerprint: f.to_string(),
                })
        })
        .collect()
}

fn host_from_path(raw: &str) -> Result<HostId, ApiError> {
    raw.parse().map_err(|source| ApiError::InvalidId {
        what: "host id",
        source,
    })
}

/// Registers a host for a tenant and returns its one-time enrollment token.
#[utoipa::path(post, path = "/api/v1/admin/hosts", tag = "hosts", request_body = RegisterHostRequest,
    responses((status = 201, body = HostRegistration), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn register_host(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiJson(body): ApiJson<RegisterHostRequest>,
) -> Result<(StatusCode, Json<HostRegistration>), ApiError> {
    let tenant = tenant_from_path(&body.tenant_id)?;
    let host = match &body.host_id {
        Some(raw) => host_from_path(raw)?,
        None => format!("host-{}", hex::encode(rand::random::<[u8; 6]>()))
            .parse()
            .map_err(|_| ApiError::Internal)?,
    };
    let registered = state
        .lifecycle
        .register_host(
            &caller,
            &tenant,
            host,
            body.role,
            state.agents.enrollment_ttl,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(HostRegistration {
            host_id: registered.host.to_string(),
            tenant_id: tenant.to_string(),
            role: body.role,
            enrollment_token: registered.enrollment_token.to_string(),
            expires_at: iso8601(registered.expires_at),
        }),
    ))
}

/// Enrolls an agent: a one-time token and a CSR in, a client certificate naming the host out.
#[utoipa::path(post, path = "/api/v1/agent/enroll", tag = "hosts", request_body = EnrollRequest, security(()),
    responses((status = 200, body = EnrollResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json",
            description = "`enrollment_throttled`: too many failed enrollments from this address")))]
pub async fn enroll(
    State(state): State<AppState>,
    super::auth::ClientAddr(peer): super::auth::ClientAddr,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let lifecycle = &state.lifecycle;
    let throttle = &state.enroll_throttle;
    if !throttle.allow(peer.ip()) {
        return Err(ApiError::EnrollmentThrottled);
    }
    let now = lifecycle.now();
    let hash = hash_token(body.token.trim());
    let caller = Caller {
        token_id: None,
        role: None,
        source_addr: Some(peer.ip().to_string()),
        idp_mfa: false,
    };
    let agents = state.agents.clone();
    let csr = body.csr_pem;
    let enrolled = lifecycle
        .enroll_host(&caller, &hash, now, move |host| {
            agents
                .trust
                .ca
                .issue_host(host, &csr, agents.certificate_lifetime)
                .map_err(|e| DomainError::CertificateRequestInvalid(e.to_string()))
        })
        .await;
    let enrolled = match enrolled {
        Err(DomainError::EnrollmentTokenInvalid) => {
            if let Some((attempts, since)) = throttle.failed(peer.ip()) {
                super::throttle::audit(lifecycle, peer.ip(), attempts, since).await;
            }
            return Err(DomainError::EnrollmentTokenInvalid.into());
        }
        other => {
            throttle.refund(peer.ip());
            other?
        }
    };
    let (host, tenant, issued) = enrolled;
    Ok(Json(EnrollResponse {
        host_id: host.to_string(),
        tenant_id: tenant.to_string(),
        certificate_pem: issued.certificate_pem,
        ca_certificate_pem: state.agents.trust.ca.certificate_pem().to_owned(),
        signing_public_key: state.agents.trust.signer.public_key_base64(),
        grpc_url: state.agents.url.clone(),
    }))
}

/// Hosts with their live status, a page at a time, filtered and sorted (by host id unless
/// `sort` says otherwise): `X-Total-Count` is the number of hosts that match the filters,
/// `X-Next-Cursor` (when there are more, in the default order) the `cursor` of the next page.
/// Bad parameters are 400 `invalid_query`.
#[utoipa::path(get, path = "/api/v1/admin/hosts", tag = "hosts", params(HostsQuery),
    responses((status = 200, body = Vec<HostView>, headers(
        ("X-Total-Count" = u64, description = "hosts matching the filters"),
        ("X-Next-Cursor" = String, description = "the cursor of the next page, when there is one and the order is the default"))),
        (status = 400, body = Problem, content_type = "application/problem+json",
            description = "`invalid_query`: a parameter out of range or malformed, or `cursor` with a `sort` other than `hostId`")))]
pub async fn list_hosts(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(query): ApiQuery<HostsQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    query.check()?;
    let views = host_views(&state).await?;
    if query.is_empty() {
        return Ok(Json(views).into_response());
    }
    let page = query.page(views);
    let mut response = Json(&page.hosts).into_response();
    let headers = response.headers_mut();
    headers.insert("x-total-count", axum::http::HeaderValue::from(page.total));
    if let Some(cursor) = page.next_cursor
        && let Ok(cursor) = axum::http::HeaderValue::from_str(&cursor)
    {
        headers.insert("x-next-cursor", cursor);
    }
    Ok(response)
}

pub(super) async fn host_views(state: &AppState) -> Result<Vec<HostView>, ApiError> {
    let store = &state.store;
    let (hosts, activity) = tokio::try_join!(
        store.hosts_with_streams(alive_after(state)),
        store.host_activity()
    )?;
    Ok(views_of(state, &hosts, &activity))
}

/// [`host_views`] of the hosts of `ids` alone (those that exist), sorted by host id.
pub(super) async fn host_views_of(
    state: &AppState,
    ids: &[HostId],
) -> Result<Vec<HostView>, ApiError> {
    let store = &state.store;
    let (hosts, activity) = tokio::try_join!(
        store.hosts_with_streams_of(ids, alive_after(state)),
        store.host_activity_of(ids)
    )?;
    Ok(views_of(state, &hosts, &activity))
}

fn views_of(
    state: &AppState,
    hosts: &[StreamedHost],
    activity: &std::collections::HashMap<String, HostActivity>,
) -> Vec<HostView> {
    hosts
        .iter()
        .map(|h| {
            HostView::new(&h.record, connected(state, h))
                .with_activity(activity.get(h.record.host_id.as_str()))
        })
        .collect()
}

/// Another replica's stream counts while that replica is alive (`agents::presence`).
fn alive_after(state: &AppState) -> chrono::DateTime<chrono::Utc> {
    crate::agents::presence::alive_after(state.lifecycle.now(), state.replica_heartbeat)
}

/// Whether an agent's stream to this replica, or to another live one, is open.
fn connected(state: &AppState, host: &StreamedHost) -> bool {
    host.streamed_by.is_some() || state.hub.is_connected(&host.record.host_id)
}

/// The hosts table, live: a `snapshot` event (`{"hosts": [HostView], "total": n, "truncated":
/// bool}`, the first 500 hosts by id), then `delta` events with only the hosts whose view changed
/// (`{"hosts": [HostView], "removed": [host id], "total": n}`), at most four a second. A change of
/// `lastSeen` alone is sent at most once a minute per host. The snapshot holds at most 4 MiB of
/// hosts. The stream ends when its token is revoked, when its reader falls behind, or past
/// 32 MiB of deltas in a minute (reconnect for a fresh snapshot).
#[utoipa::path(get, path = "/api/v1/admin/events/hosts", tag = "hosts",
    responses((status = 200, content_type = "text/event-stream",
        description = "a `snapshot` event, then `delta` events (see above)"),
        (status = 503, body = Problem)))]
pub async fn host_events(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let subscription = state.hosts_feed.subscribe(&state).await?;
    Ok(super::live::stream(
        &state,
        super::live::Scope::of(&caller),
        move |sink| async move {
            let super::hosts_live::Subscription {
                snapshot,
                mut deltas,
            } = subscription;
            if sink
                .send(Event::default().event("snapshot").data(snapshot))
                .is_err()
            {
                return;
            }
            // A stream that lags behind the feed, or is over its budget, ends: its client
            // reconnects for a snapshot.
            let mut budget = super::hosts_live::Budget::default();
            while let Ok(delta) = deltas.recv().await {
                if !budget.spend(delta.len()) {
                    metrics::counter!("keyward_live_streams_over_budget_total").increment(1);
                    tracing::info!("a hosts stream went over its send budget: stream ended");
                    return;
                }
                if sink
                    .send(Event::default().event("delta").data(&*delta))
                    .is_err()
                {
                    return;
                }
            }
        },
    ))
}

/// One host, with its recent drift events.
#[utoipa::path(get, path = "/api/v1/admin/hosts/{host_id}", tag = "hosts", params(("host_id" = String, Path)),
    responses((status = 200, body = HostView), (status = 404, body = Problem)))]
pub async fn host_details(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<HostView>, ApiError> {
    let host = host_from_path(&raw)?;
    let store = &state.store;
    let streamed = store
        .host_with_stream(&host, alive_after(&state))
        .await?
        .ok_or_else(|| DomainError::HostNotFound(host.clone()))?;
    let mut view = HostView::new(&streamed.record, connected(&state, &streamed));
    view.drift = Some(store.drift_events(&host, 50).await?);
    Ok(Json(view))
}

/// Revokes a host: its stream is cut at once and its certificate refused from then on. Where
/// the deployment's step-up policy names `revoke_host`, the request needs `X-Keyward-MFA`.
#[utoipa::path(post, path = "/api/v1/admin/hosts/{host_id}/revoke", tag = "hosts",
    params(("host_id" = String, Path), ("X-Keyward-MFA" = Option<String>, Header, description = "`totp:CODE` or `recovery:CODE`: a fresh second factor, when the step-up policy names this operation")),
    responses((status = 200, body = HostView), (status = 401, body = Problem, description = "`mfa_required`, `mfa_invalid`, `mfa_replayed`: the step-up policy names this operation and `X-Keyward-MFA` is missing, wrong or already used (also `unauthenticated`, `invalid_token`)"), (status = 403, body = Problem, description = "`mfa_not_enrolled`: the step-up policy names this operation and no second factor is confirmed (also `forbidden`)"), (status = 404, body = Problem), (status = 429, body = Problem, description = "`mfa_locked`: too many failed second factors; `Retry-After` says when to try again")))]
pub async fn revoke_host(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    ApiPath(raw): ApiPath<String>,
    step_up: super::mfa::StepUp,
) -> Result<Json<HostView>, ApiError> {
    let host = host_from_path(&raw)?;
    state
        .lifecycle
        .step_up(
            &caller,
            crate::config::SensitiveOperation::RevokeHost,
            step_up.proof(),
        )
        .await?;
    let record = state.lifecycle.revoke_host(&caller, &host).await?;
    Ok(Json(HostView::new(&record, false)))
}

/// The host keys of a tenant's most recently seen live host: `known_hosts` lines for the
/// tenant's first connection.
pub async fn tenant_host_keys(
    state: &AppState,
    tenant: &keyward_common::TenantId,
) -> Result<Vec<String>, ApiError> {
    let hosts = state.store.hosts(Some(tenant)).await?;
    Ok(hosts
        .into_iter()
        .filter(|h| h.revoked_at.is_none() && !h.host_keys.is_empty())
        .max_by(|a, b| a.last_seen.cmp(&b.last_seen))
        .map(|h| h.host_keys)
        .unwrap_or_default())
}

/// Settings of the agent side that handlers need.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub trust: crate::agents::AgentTrust,
    pub url: String,
    pub certificate_lifetime: Duration,
    pub enrollment_ttl: Duration,
}
