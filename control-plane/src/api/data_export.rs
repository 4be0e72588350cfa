//! `GET /api/v1/tenant/infrastructure/data-export`: what keyward holds about the caller's
//! VPSs and the people who log in to them (GDPR article 15), as JSON lines streamed in pages so
//! that a tenant with a long login history costs bounded memory.
//!
//! Each line is an object whose `record` says what it is: `export` (first: format, tenant, time),
//! `tenant`, `keySet` (public data only: no private key is ever exported here), `host`,
//! `sshCertificate`, `accessGrant`, `login` (every retained login event on its VPSs, newest
//! first), `sessionRecording` (every retained session recording's metadata, newest first; the
//! content is at `.../recordings/{recording_id}/asciicast`) and `auditEvent` (the tenant's own actions: those its tokens made, with the addresses
//! they came from; what platform staff did is the platform's record, not the tenant's personal
//! data), and last `end` with the count of lines before it. Certificates and requests are the
//! newest 500 each, as the tenant's listings show them; a `truncated` line says when a list was
//! cut there. A line `error` instead of `end`
//! says the export broke off (the client must treat the export as incomplete).

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keyward_common::{KeyKind, TenantId};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::auth::TenantCaller;
use super::mfa::MfaFactorView;
use super::{AppState, access, certificates};
use crate::clock::iso8601;
use crate::error::ApiError;
use crate::lifecycle::DomainError;
use crate::store::{AuditFilter, GRANTS_LISTED, LoginFilter, RecordingFilter};

/// The format of the export's lines.
pub const FORMAT: &str = "keyward-tenant-export/1";
/// Rows read from SQL at a time.
const PAGE: i64 = 1000;
/// Lines waiting for a slow client, at most: the stream reads SQL no faster than it is read.
const BUFFERED_LINES: usize = 64;

/// Streams the tenant's data as JSON lines (`application/x-ndjson`).
#[utoipa::path(get, path = "/api/v1/tenant/infrastructure/data-export", tag = "tenant",
    responses((status = 200, content_type = "application/x-ndjson",
        description = "JSON lines: `export`, `tenant`, `keySet`, `host`, `sshCertificate`, `accessGrant`, `mfaFactor` (never its secret), `login`, `sessionRecording` (metadata), `auditEvent`, then `end` (or `error` when the export broke off)"),
        (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem)))]
pub async fn tenant_data_export(
    State(state): State<AppState>,
    who: TenantCaller,
) -> Result<Response, ApiError> {
    let tenant = who.tenant;
    // Checked before the answer starts, so that a gone tenant is a 404, not a broken stream.
    let record = state
        .store
        .tenant(&tenant)
        .await?
        .ok_or_else(|| DomainError::TenantNotFound(tenant.clone()))?;
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(BUFFERED_LINES);
    let header = json!({
        "record": "export",
        "format": FORMAT,
        "tenantId": tenant,
        "exportedAt": iso8601(state.lifecycle.now()),
    });
    let tenant_line = json!({
        "record": "tenant",
        "tenantId": record.tenant_id,
        "vpsIp": record.vps_ip,
        "sshPort": record.ssh_port,
        "sshUsername": record.tenant_user,
        "adminUsername": record.admin_user,
        "createdAt": iso8601(record.created_at),
    });
    tokio::spawn(async move {
        let mut out = Lines { tx, count: 0 };
        if out.send(header).await && out.send(tenant_line).await {
            let end = match write_records(&state, &tenant, &mut out).await {
                Ok(true) => json!({ "record": "end", "lines": out.count }),
                // The client went away.
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "a tenant's data export broke off");
                    json!({ "record": "error", "detail": "the export broke off; ask again" })
                }
            };
            out.send(end).await;
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// The lines written so far, to the response.
struct Lines {
    tx: mpsc::Sender<Result<String, std::io::Error>>,
    count: u64,
}

impl Lines {
    /// Sends one line; false once the client has gone.
    async fn send(&mut self, value: Value) -> bool {
        self.count += 1;
        self.tx.send(Ok(format!("{value}\n"))).await.is_ok()
    }

    /// Sends `value` (an object) with `record` set; false once the client has gone.
    async fn record(&mut self, record: &str, value: impl serde::Serialize) -> bool {
        let mut value = serde_json::to_value(value).unwrap_or(Value::Null);
        if let Some(object) = value.as_object_mut() {
            object.insert("record".into(), json!(record));
        }
        self.send(value).await
    }
}

/// The line that says a list holds only its newest `shown` records (as the tenant's listing
/// does): the older ones are in keyward until their retention ends.
fn newest_only(record: &str, shown: usize) -> Value {
    json!({ "record": "truncated", "of": record, "shown": shown })
}

/// Everything after the tenant's own line; `Ok(false)` when the client went away.
async fn write_records(
    state: &AppState,
    tenant: &TenantId,
    out: &mut Lines,
) -> Result<bool, ApiError> {
    let store = &state.store;
    for kind in [KeyKind::Admin, KeyKind::Tenant] {
        if let Some(ks) = store.key_set(tenant, kind).await? {
            let line = json!({
                "kind": kind,
                "status": ks.state,
                "origin": ks.origin.as_str(),
                "verifyRequired": ks.verify_required,
                "keyAlgorithm": ks.algorithm.to_string(),
                "keyFingerprint": ks.fingerprint,
                "keyGeneration": ks.generation,
                "publicKey": ks.public_key,
                "lastRotated": iso8601(ks.last_rotated),
                "nextRotation": iso8601(ks.next_rotation),
                "downloadedAt": ks.downloaded_at.map(iso8601),
                "previousKeyFingerprint": ks.previous_fingerprint,
                "deniedFingerprints": ks.denied_fingerprints,
            });
            if !out.record("keySet", line).await {
                return Ok(false);
            }
        }
    }
    for host in store.hosts(Some(tenant)).await? {
        let line = json!({
            "hostId": host.host_id,
            "role": host.role,
            "createdAt": iso8601(host.created_at),
            "enrolledAt": host.enrolled_at.map(iso8601),
            "revokedAt": host.revoked_at.map(iso8601),
            "lastSeen": host.last_seen.map(iso8601),
            "agentVersion": host.agent_version,
            "hostKeys": host.host_keys,
        });
        if !out.record("host", line).await {
            return Ok(false);
        }
    }
    let certificates = certificates::tenant_view(state, tenant)
        .await?
        .0
        .certificates;
    let capped = certificates.len() >= certificates::LIST_LIMIT;
    for certificate in certificates {
        if !out.record("sshCertificate", certificate).await {
            return Ok(false);
        }
    }
    if capped
        && !out
            .send(newest_only("sshCertificate", certificates::LIST_LIMIT))
            .await
    {
        return Ok(false);
    }
    let grants = access::tenant_view(state, tenant).await?.0.grants;
    let capped = grants.len() >= GRANTS_LISTED as usize;
    for grant in grants {
        if !out.record("accessGrant", grant).await {
            return Ok(false);
        }
    }
    if capped
        && !out
            .send(newest_only("accessGrant", GRANTS_LISTED as usize))
            .await
    {
        return Ok(false);
    }
    for factor in state.lifecycle.tenant_mfa_factors(tenant).await? {
        if !out.record("mfaFactor", MfaFactorView::from(factor)).await {
            return Ok(false);
        }
    }
    let mut before_id = None;
    loop {
        let filter = LoginFilter {
            tenant_id: Some(tenant.clone()),
            before_id,
            limit: PAGE,
            vps_only: true,
            ..LoginFilter::default()
        };
        let (events, next) = store.logins(&filter).await?;
        for event in events {
            if !out.record("login", event).await {
                return Ok(false);
            }
        }
        match next {
            Some(cursor) => before_id = Some(cursor),
            None => break,
        }
    }
    let mut after_id = None;
    loop {
        let filter = RecordingFilter {
            tenant_id: Some(tenant.clone()),
            after_id,
            limit: PAGE,
            ..RecordingFilter::default()
        };
        let (recordings, next) = store.recordings(&filter).await?;
        for recording in recordings {
            if !out.record("sessionRecording", recording).await {
                return Ok(false);
            }
        }
        match next {
            Some(cursor) => after_id = Some(cursor),
            None => break,
        }
    }
    let mut before_seq = None;
    loop {
        let filter = AuditFilter {
            tenant_id: Some(tenant.clone()),
            before_seq,
            limit: PAGE,
            ..AuditFilter::default()
        };
        let page = store.audit_events(&filter).await?;
        for event in page.events.into_iter().filter(|e| e.actor_role == "tenant") {
            if !out.record("auditEvent", event).await {
                return Ok(false);
            }
        }
        match page.next_cursor {
            Some(cursor) => before_seq = Some(cursor),
            None => break,
        }
    }
    Ok(true)
}
