//! Who is calling a REST route: the bearer token of the request, looked up in the store, or
//! else the web UI's session cookie (with its CSRF check on writes, [`session::check_csrf`]),
//! as a [`Caller`], and the role-checking extractors [`AdminCaller`] and [`TenantCaller`].
//!
//! Tenants see only their own tenant: their token names it, and tenant endpoints take no tenant
//! id at all.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use keyward_common::TenantId;

use super::{AppState, session};
use crate::caller::Caller;
use crate::conns::ProxiedClient;
use crate::error::ApiError;
use crate::store::{Role, hash_token};

/// The client's address: the one a trusted load balancer's PROXY header named, else the
/// connection's own.
pub fn client_addr(parts: &Parts) -> Option<SocketAddr> {
    let proxied = parts.extensions.get::<ProxiedClient>().map(|p| p.0);
    proxied.or_else(|| {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr)
    })
}

/// The hash of the request's bearer token (`Authorization: Bearer ...`): what the store looks
/// tokens up by.
pub(super) fn bearer_token_hash(headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthenticated)?
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthenticated)?;
    Ok(hash_token(token))
}

/// The tenant a tenant role may see; any other role is refused.
pub(super) fn tenant_of(role: Option<&Role>) -> Result<TenantId, ApiError> {
    match role {
        Some(Role::Tenant(tenant)) => Ok(tenant.clone()),
        _ => Err(ApiError::Forbidden { needed: "tenant" }),
    }
}

fn source_addr(parts: &Parts) -> Option<String> {
    client_addr(parts).map(|addr| addr.ip().to_string())
}

/// The client's address as an extractor (see [`client_addr`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        client_addr(parts).map(ClientAddr).ok_or(ApiError::Internal)
    }
}

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = AppState::from_ref(state);
        // A bearer token takes precedence; without one, the web UI's session cookie.
        if !parts.headers.contains_key(AUTHORIZATION)
            && let (Some(rp), Some(session_id)) = (
                state.oidc.as_deref(),
                session::cookie(&parts.headers, session::SESSION_COOKIE),
            )
        {
            let web = state
                .lifecycle
                .web_session(rp.config(), &session_id)
                .await?
                .ok_or(ApiError::SessionEnded)?;
            if !session::is_safe(&parts.method) {
                session::check_csrf(&parts.headers, rp.config(), &session_id)?;
            }
            return Ok(web.caller(source_addr(parts)));
        }
        let record = state
            .store
            .token_by_hash(&bearer_token_hash(&parts.headers)?)
            .await?
            .ok_or(ApiError::BadToken)?;
        Ok(Caller {
            token_id: Some(record.token_id),
            role: Some(record.role),
            source_addr: source_addr(parts),
            idp_mfa: false,
        })
    }
}

/// A caller with the admin role.
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

impl<S> FromRequestParts<S> for AdminCaller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        match caller.role {
            Some(Role::Admin) => Ok(AdminCaller(caller)),
            _ => Err(ApiError::Forbidden { needed: "admin" }),
        }
    }
}

/// A caller with a tenant role, and the one tenant it may see.
#[derive(Debug, Clone)]
pub struct TenantCaller {
    pub caller: Caller,
    pub tenant: TenantId,
}

impl<S> FromRequestParts<S> for TenantCaller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        Ok(TenantCaller {
            tenant: tenant_of(caller.role.as_ref())?,
            caller,
        })
    }
}
