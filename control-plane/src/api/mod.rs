//! The REST API: routes, shared state and the request pipeline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use keyward_common::{TenantId, UnixUser};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;

use crate::clock::parse_iso8601;
use crate::error::ApiError;
use crate::lifecycle::KeyLifecycle;

pub mod access;
pub mod admin;
pub mod auth;
pub mod certificates;
pub mod data_export;
pub mod download;
pub mod hosts;
pub mod hosts_live;
pub mod hosts_query;
pub mod live;
pub mod logins;
pub mod mfa;
pub mod mfa_webauthn;
pub mod offboarding;
pub mod ops;
pub mod recordings;
pub mod registration;
pub mod rotation;
pub mod session;
pub mod tenant;
pub mod throttle;
pub mod ui;
pub mod views;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub lifecycle: Arc<KeyLifecycle>,
    /// The agents' streams of this replica, and the changes and revocations live views follow.
    pub hub: Arc<crate::agents::hub::Hub>,
    /// The SQL store, for the reads handlers answer from (changes go through the lifecycle).
    pub store: crate::store::Store,
    pub metrics: Option<PrometheusHandle>,
    pub request_timeout: Duration,
    pub vault_mount: String,
    /// REST is served over TLS: answers carry `Strict-Transport-Security`.
    pub tls: bool,
    /// Failed enrollments per source address.
    pub enroll_throttle: Arc<throttle::EnrollThrottle>,
    pub agents: Arc<hosts::AgentSettings>,
    pub rotations: Arc<crate::rotation::BulkRotations>,
    pub backups: Arc<crate::backup::VaultBackups>,
    /// Audit export's sinks, for their status.
    pub audit_export: Arc<crate::audit_export::AuditExport>,
    /// The audit head's signer, where `[audit_signing]` is set (for `audit/verify`).
    pub audit_head: Option<Arc<crate::audit_head::AuditHeadSigner>>,
    /// The live hosts view every admin stream follows.
    pub hosts_feed: Arc<hosts_live::HostsFeed>,
    /// `server.replica_heartbeat`: another replica's stream counts while that replica is alive.
    pub replica_heartbeat: Duration,
    /// Where session recordings' bytes are (for playback).
    pub recordings: crate::recordings::RecordingArchive,
    /// The web UI's OpenID Connect sign-in, where `[oidc]` is set.
    pub oidc: Option<Arc<crate::oidc::RelyingParty>>,
}

/// `Json<T>` whose failures are problem documents (malformed JSON, unknown fields, wrong types,
/// a missing Content-Type, a body over the limit).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Path<T>` whose failures are problem documents.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query<T>` whose failures (unknown or malformed parameters) are problem documents.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Parses the time a query parameter (`since`, `until`) gives, in any RFC 3339 form.
pub fn query_time(raw: Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|s| {
        parse_iso8601(&s)
            .ok_or_else(|| ApiError::InvalidQuery(format!("{name} must be an RFC 3339 time")))
    })
    .transpose()
}

/// Parses a tenant id taken from a URL path.
pub fn tenant_from_path(raw: &str) -> Result<TenantId, ApiError> {
    raw.parse().map_err(|source| ApiError::InvalidId {
        what: "tenant id",
        source,
    })
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "keyward", description = "SSH key lifecycle for VPS hosting platforms"),
    paths(
        tenant::ssh_credentials,
        tenant::download,
        tenant::rotate,
        tenant::revoke,
        tenant::regenerate,
        tenant::set_aside_keys,
        certificates::tenant_issue,
        certificates::tenant_list,
        certificates::tenant_revoke,
        certificates::admin_issue,
        certificates::admin_list,
        certificates::admin_revoke,
        access::tenant_request,
        access::tenant_list,
        access::tenant_get,
        access::tenant_operate,
        access::tenant_policy,
        access::tenant_set_policy,
        access::admin_request,
        access::admin_list,
        access::admin_get,
        access::admin_operate,
        admin::create_tenant,
        offboarding::offboard_tenant,
        offboarding::offboarding_status,
        admin::list_tenant_secrets,
        admin::tenant_secret_details,
        admin::replace_key,
        admin::issue_token,
        admin::revoke_token,
        admin::vault_health,
        admin::audit_events,
        admin::verify_audit,
        admin::audit_sinks,
        hosts::register_host,
        hosts::enroll,
        hosts::list_hosts,
        hosts::host_events,
        ui::whoami,
        hosts::host_details,
        hosts::revoke_host,
        logins::admin_logins,
        logins::tenant_logins,
        data_export::tenant_data_export,
        logins::key_usage,
        ops::healthz,
        ops::readyz,
        rotation::rotate_all,
        rotation::list_jobs,
        rotation::job,
        rotation::job_events,
        rotation::get_policy,
        rotation::put_policy,
        rotation::delete_policy,
        download::tenant_download_policy,
        download::get_download_policy,
        download::put_download_policy,
        download::delete_download_policy,
        mfa::tenant_factors,
        mfa::tenant_enrol,
        mfa::tenant_confirm,
        mfa::tenant_delete,
        mfa::admin_factors,
        mfa::admin_enrol,
        mfa::admin_confirm,
        mfa::admin_delete,
        mfa::get_policy,
        mfa::put_policy,
        mfa::delete_policy,
        mfa::admin_tenant_factors,
        mfa::admin_reset_tenant,
        mfa_webauthn::tenant_start,
        mfa_webauthn::tenant_finish,
        mfa_webauthn::tenant_challenge,
        mfa_webauthn::tenant_delete,
        mfa_webauthn::admin_start,
        mfa_webauthn::admin_finish,
        mfa_webauthn::admin_challenge,
        mfa_webauthn::admin_delete,
        recordings::tenant_list,
        recordings::tenant_get,
        recordings::tenant_asciicast,
        recordings::tenant_policy,
        recordings::admin_list,
        recordings::admin_get,
        recordings::admin_asciicast,
        recordings::get_policy,
        recordings::put_policy,
        registration::tenant_register,
        registration::admin_register,
        registration::tenant_unregister,
        registration::admin_unregister,
        registration::tenant_policy,
        registration::get_policy,
        registration::put_policy,
        registration::delete_policy,
        session::login,
        session::callback,
        session::sign_out,
        session::session,
        session::sign_in_options,
    ),
    modifiers(&BearerAuth, &ProblemResponses),
    security(("bearer" = []), ("session" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // The web UI's session (OpenID Connect sign-in): writes also need `X-CSRF-Token`.
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                session::SESSION_COOKIE,
                "the web UI's session after OpenID Connect sign-in; POST, PUT, PATCH and DELETE \
                 also need the session's X-CSRF-Token (GET /api/v1/session) and a same-origin \
                 request, else 403 csrf_failed",
            ))),
        );
    }
}

/// The answers every operation can give besides its own, as problem documents, and the grammar
/// of the parameters the server checks, so that the document tells what the server does:
///
/// - every `4xx`/`5xx` answer is `application/problem+json` ([`Problem`](crate::error::Problem));
/// - an operation that takes a token can answer 401 (`unauthenticated`, `invalid_token`) and,
///   when it needs a role, 403 (`forbidden`);
/// - one with a JSON body answers 400 (`invalid_body`), 413 (`body_too_large`) and 415
///   (`unsupported_media_type`); one with parameters 400 (`invalid_id`, `invalid_query`);
/// - every one that reads a token or a body can answer 503: the request timed out (`timeout`),
///   or the database or Vault cannot be used (`readyz` says so itself; `healthz` reaches neither);
/// - parameters named after an id carry its pattern ([`PARAMETER_GRAMMAR`]).
struct ProblemResponses;

/// Operations that take a token (or the session cookie) but no particular role.
const ANY_ROLE: [&str; 3] = ["whoami", "session", "sign_out"];

/// `rotate-all` job ids: `job_` and 16 lower-case hex digits.
pub const JOB_ID_PATTERN: &str = "^job_[0-9a-f]{16}$";
/// API token ids: `tok_` and 16 hex digits.
pub const TOKEN_ID_PATTERN: &str = "^tok_[0-9a-fA-F]{16}$";

/// Second factor ids: `mfa_` and 16 lower-case hex digits.
pub const MFA_FACTOR_ID_PATTERN: &str = "^mfa_[0-9a-f]{16}$";

/// Tenant and host ids: one grammar.
const ID: Grammar = Grammar::Pattern(TenantId::PATTERN, TenantId::MAX_LEN);

/// Path and query parameters by name, and the grammar the server holds them to.
pub const PARAMETER_GRAMMAR: [(&str, Grammar); 11] = [
    (
        "recording_id",
        Grammar::Pattern(recordings::RECORDING_ID_PATTERN, 36),
    ),
    ("tenant_id", ID),
    ("tenantId", ID),
    ("host_id", ID),
    ("hostId", ID),
    (
        "user",
        Grammar::Pattern(UnixUser::PATTERN, UnixUser::MAX_LEN),
    ),
    ("job_id", Grammar::Pattern(JOB_ID_PATTERN, 20)),
    ("token_id", Grammar::Pattern(TOKEN_ID_PATTERN, 20)),
    ("factor_id", Grammar::Pattern(MFA_FACTOR_ID_PATTERN, 20)),
    ("kind", Grammar::OneOf(&["admin", "tenant"])),
    (
        "operation",
        Grammar::OneOf(&["rotate", "regenerate", "revoke"]),
    ),
];

/// What a parameter's value may be.
#[derive(Debug, Clone, Copy)]
pub enum Grammar {
    /// A regular expression and the longest value.
    Pattern(&'static str, usize),
    /// One of these words.
    OneOf(&'static [&'static str]),
}

impl Grammar {
    fn schema(self) -> utoipa::openapi::Schema {
        use utoipa::openapi::{ObjectBuilder, Type};
        let string = ObjectBuilder::new().schema_type(Type::String);
        match self {
            Grammar::Pattern(pattern, max) => string
                .pattern(Some(pattern))
                .min_length(Some(1))
                .max_length(Some(max)),
            Grammar::OneOf(words) => string.enum_values(Some(words.iter().copied())),
        }
        .into()
    }
}

fn problem(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// The content type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::path::Operation;
        let add = |op: &mut Operation, status: &str, description: &str| {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::T(problem(description)));
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                // `security(())`: an operation open to all (enrollment, health).
                let secured = op.security.as_ref().is_none_or(|requirements| {
                    requirements
                        .iter()
                        .any(|r| serde_json::to_value(r).is_ok_and(|v| v != serde_json::json!({})))
                });
                if secured {
                    add(
                        op,
                        "401",
                        "`unauthenticated` (no bearer token or session cookie), `invalid_token` or \
                         `session_ended`",
                    );
                    if !op
                        .operation_id
                        .as_deref()
                        .is_some_and(|id| ANY_ROLE.contains(&id))
                    {
                        add(
                            op,
                            "403",
                            "`forbidden`: the token's role may not do this; `csrf_failed`: a \
                             cookie-authenticated write without the session's X-CSRF-Token or \
                             from another origin",
                        );
                    }
                }
                if op.request_body.is_some() {
                    add(
                        op,
                        "400",
                        "`invalid_body`, `invalid_id`: the body is not what the schema says",
                    );
                    add(
                        op,
                        "413",
                        "`body_too_large`: over the server's `max_body_bytes`",
                    );
                    add(
                        op,
                        "415",
                        "`unsupported_media_type`: the body is not `application/json`",
                    );
                }
                for param in op.parameters.iter_mut().flatten() {
                    if let Some((_, grammar)) = PARAMETER_GRAMMAR
                        .iter()
                        .find(|(name, _)| *name == param.name)
                    {
                        param.schema = Some(RefOr::T(grammar.schema()));
                    }
                }
                if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    add(
                        op,
                        "400",
                        "`invalid_id`, `invalid_query`: a parameter is not what the schema says",
                    );
                }
                // What reads a token or a body reaches the database; `healthz` reaches nothing.
                if secured || op.request_body.is_some() {
                    add(
                        op,
                        "503",
                        "`timeout`, `database_unavailable`, `vault_unavailable` or `vault_sealed`",
                    );
                }
                // Every error answer, whatever its handler said, is a problem document.
                for (status, response) in op.responses.responses.iter_mut() {
                    let is_error = status.starts_with('4') || status.starts_with('5');
                    if let (true, RefOr::T(response)) = (is_error, response) {
                        let mut description = std::mem::take(&mut response.description);
                        if description.is_empty() {
                            description = status
                                .parse::<u16>()
                                .ok()
                                .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                                .and_then(|s| s.canonical_reason())
                                .unwrap_or("error")
                                .to_owned();
                        }
                        *response = problem(&description);
                    }
                }
            }
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let tenant_api = Router::new()
        .route("/ssh-credentials", get(tenant::ssh_credentials))
        .route("/ssh-credentials/download", post(tenant::download))
        .route("/ssh-credentials/rotate", post(tenant::rotate))
        .route("/ssh-credentials/revoke", post(tenant::revoke))
        .route("/ssh-credentials/regenerate", post(tenant::regenerate))
        .route(
            "/ssh-credentials/public-key",
            put(registration::tenant_register).delete(registration::tenant_unregister),
        )
        .route("/key-registration-policy", get(registration::tenant_policy))
        .route("/ssh-logins", get(logins::tenant_logins))
        .route("/data-export", get(data_export::tenant_data_export))
        .route("/set-aside-keys", get(tenant::set_aside_keys))
        .route("/download-policy", get(download::tenant_download_policy))
        .route("/recording-policy", get(recordings::tenant_policy))
        .route("/recordings", get(recordings::tenant_list))
        .route("/recordings/{recording_id}", get(recordings::tenant_get))
        .route(
            "/recordings/{recording_id}/asciicast",
            get(recordings::tenant_asciicast),
        )
        .route(
            "/ssh-certificates",
            post(certificates::tenant_issue).get(certificates::tenant_list),
        )
        .route(
            "/ssh-certificates/{certificate_id}/revoke",
            post(certificates::tenant_revoke),
        )
        .route(
            "/access-requests",
            post(access::tenant_request).get(access::tenant_list),
        )
        .route("/access-requests/{grant_id}", get(access::tenant_get))
        .route(
            "/access-requests/{grant_id}/{operation}",
            post(access::tenant_operate),
        )
        .route(
            "/access-policy",
            get(access::tenant_policy).put(access::tenant_set_policy),
        );
    let admin_api = Router::new()
        .route("/tenants", post(admin::create_tenant))
        .route("/tenants/{tenant_id}", delete(offboarding::offboard_tenant))
        .route(
            "/tenants/{tenant_id}/offboarding",
            get(offboarding::offboarding_status),
        )
        .route(
            "/tenants/{tenant_id}/keys/{kind}/{operation}",
            post(admin::replace_key),
        )
        .route(
            "/tenants/{tenant_id}/keys/{kind}/public-key",
            put(registration::admin_register).delete(registration::admin_unregister),
        )
        .route(
            "/tenants/{tenant_id}/key-registration-policy",
            get(registration::get_policy)
                .put(registration::put_policy)
                .delete(registration::delete_policy),
        )
        .route(
            "/tenants/{tenant_id}/ssh-certificates",
            post(certificates::admin_issue).get(certificates::admin_list),
        )
        .route(
            "/ssh-certificates/{certificate_id}/revoke",
            post(certificates::admin_revoke),
        )
        .route(
            "/tenants/{tenant_id}/access-requests",
            post(access::admin_request),
        )
        .route("/access-requests", get(access::admin_list))
        .route("/access-requests/{grant_id}", get(access::admin_get))
        .route(
            "/access-requests/{grant_id}/{operation}",
            post(access::admin_operate),
        )
        .route("/tokens", post(admin::issue_token))
        .route("/tokens/{token_id}", delete(admin::revoke_token))
        .route("/secrets/tenants", get(admin::list_tenant_secrets))
        .route(
            "/secrets/tenant/{tenant_id}",
            get(admin::tenant_secret_details),
        )
        .route("/vault/health", get(admin::vault_health))
        .route("/audit", get(admin::audit_events))
        .route("/audit/verify", get(admin::verify_audit))
        .route("/audit/sinks", get(admin::audit_sinks))
        .route("/audit/logins", get(logins::admin_logins))
        .route("/keys/usage", get(logins::key_usage))
        .route("/hosts", post(hosts::register_host).get(hosts::list_hosts))
        .route("/events/hosts", get(hosts::host_events))
        .route("/hosts/{host_id}", get(hosts::host_details))
        .route("/hosts/{host_id}/revoke", post(hosts::revoke_host))
        .route(
            "/tenants/{tenant_id}/rotation-policy",
            get(rotation::get_policy)
                .put(rotation::put_policy)
                .delete(rotation::delete_policy),
        )
        .route(
            "/tenants/{tenant_id}/download-policy",
            get(download::get_download_policy)
                .put(download::put_download_policy)
                .delete(download::delete_download_policy),
        )
        .route(
            "/tenants/{tenant_id}/mfa-policy",
            get(mfa::get_policy)
                .put(mfa::put_policy)
                .delete(mfa::delete_policy),
        )
        .route(
            "/tenants/{tenant_id}/mfa",
            get(mfa::admin_tenant_factors).delete(mfa::admin_reset_tenant),
        )
        .route(
            "/tenants/{tenant_id}/recording-policy",
            get(recordings::get_policy).put(recordings::put_policy),
        )
        .route("/recordings", get(recordings::admin_list))
        .route("/recordings/{recording_id}", get(recordings::admin_get))
        .route(
            "/recordings/{recording_id}/asciicast",
            get(recordings::admin_asciicast),
        )
        .route("/mfa", get(mfa::admin_factors))
        .route("/mfa/totp", post(mfa::admin_enrol))
        .route("/mfa/totp/{factor_id}", delete(mfa::admin_delete))
        .route("/mfa/totp/{factor_id}/confirm", post(mfa::admin_confirm))
        .route(
            "/mfa/webauthn/registrations",
            post(mfa_webauthn::admin_start),
        )
        .route(
            "/mfa/webauthn/registrations/{factor_id}",
            post(mfa_webauthn::admin_finish),
        )
        .route(
            "/mfa/webauthn/challenge",
            post(mfa_webauthn::admin_challenge),
        )
        .route(
            "/mfa/webauthn/{factor_id}",
            delete(mfa_webauthn::admin_delete),
        )
        .route(
            "/secrets/rotate-all",
            post(rotation::rotate_all).get(rotation::list_jobs),
        )
        .route("/secrets/rotate-all/{job_id}", get(rotation::job))
        .route(
            "/secrets/rotate-all/{job_id}/events",
            get(rotation::job_events),
        );
    Router::new()
        .nest("/api/v1/tenant/infrastructure", tenant_api)
        .nest("/api/v1/admin", admin_api)
        .route("/api/v1/tenant/mfa", get(mfa::tenant_factors))
        .route("/api/v1/tenant/mfa/totp", post(mfa::tenant_enrol))
        .route(
            "/api/v1/tenant/mfa/totp/{factor_id}",
            delete(mfa::tenant_delete),
        )
        .route(
            "/api/v1/tenant/mfa/totp/{factor_id}/confirm",
            post(mfa::tenant_confirm),
        )
        .route(
            "/api/v1/tenant/mfa/webauthn/registrations",
            post(mfa_webauthn::tenant_start),
        )
        .route(
            "/api/v1/tenant/mfa/webauthn/registrations/{factor_id}",
            post(mfa_webauthn::tenant_finish),
        )
        .route(
            "/api/v1/tenant/mfa/webauthn/challenge",
            post(mfa_webauthn::tenant_challenge),
        )
        .route(
            "/api/v1/tenant/mfa/webauthn/{factor_id}",
            delete(mfa_webauthn::tenant_delete),
        )
        .route("/api/v1/agent/enroll", post(hosts::enroll))
        .route("/api/v1/whoami", get(ui::whoami))
        .route("/api/v1/session", get(session::session))
        .route("/api/v1/sign-in-options", get(session::sign_in_options))
        .route("/auth/oidc/login", get(session::login))
        .route("/auth/oidc/callback", get(session::callback))
        .route("/auth/signout", post(session::sign_out))
        .merge(ui::routes())
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_pipeline,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal.into_response()
        }))
        .with_state(state)
}

async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute {
        path: uri.path().chars().take(200).collect(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

const BULK_ROTATION_ROUTE: &str = "/api/v1/admin/secrets/rotate-all";

/// Timeout, metrics, the request id and the headers every answer carries.
async fn request_pipeline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request_id = hex::encode(rand::random::<[u8; 8]>());
    crate::request_id::scope(
        request_id.clone(),
        pipeline(state, request, next, request_id),
    )
    .await
}

async fn pipeline(state: AppState, request: Request, next: Next, request_id: String) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // A synchronous bulk rotation lasts as long as its job: it is not cut by the timeout.
    let timeout = if method == Method::POST && route == BULK_ROTATION_ROUTE {
        Duration::MAX
    } else {
        state.request_timeout
    };
    let mut response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if state.tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000"),
        );
    }
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", id);
    }
    if route.starts_with("/api/") && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method_label(&method)),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("keyward_http_requests_total", &labels).increment(1);
    metrics::histogram!("keyward_http_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}

/// Bounded label values: an attacker's made-up methods must not grow the metrics without end.
fn method_label(method: &Method) -> String {
    match *method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD => method.as_str().to_owned(),
        _ => "other".to_owned(),
    }
}
