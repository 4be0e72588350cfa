//! Operational endpoints: liveness, readiness and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::error::{ApiError, Problem};
use crate::vault::VaultError;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()), responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The database answers and Vault is reachable and unsealed. The answer says only ready or
/// not (`not_ready`); why not goes to the server log.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses((status = 200, body = Health),
        (status = 503, body = Problem, content_type = "application/problem+json",
            description = "`not_ready`: the database or Vault cannot be used (the cause is in the server log)")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let check = async {
        state.store.ping().await?;
        let health = state.lifecycle.vault().health().await?;
        if health.sealed || !health.initialized {
            return Err(ApiError::from(VaultError::Sealed));
        }
        Ok::<_, ApiError>(())
    };
    if let Err(e) = check.await {
        tracing::warn!(
            request_id = crate::request_id::current().as_deref().unwrap_or("-"),
            code = e.code(),
            error = %e,
            cause = ?std::error::Error::source(&e),
            "not ready"
        );
        return Err(ApiError::NotReady);
    }
    Ok(Json(Health { status: "ready" }))
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Counted at scrape time from SQL, so every replica tells the same.
    match state.store.degraded_host_count().await {
        Ok(n) => metrics::gauge!("keyward_hosts_degraded").set(n as f64),
        Err(e) => tracing::warn!(error = %e, "cannot count degraded hosts"),
    }
    state.audit_export.publish_metrics().await;
    let body = state
        .metrics
        .as_ref()
        .map(|handle| handle.render())
        .unwrap_or_default();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
