//! Who is calling: bearer API tokens and their roles.
//!
//! A token is 256 random bits (`kw_` + base64url); the store keeps only its SHA-256. Tenants see
//! only their own tenant: their token names it, and tenant endpoints take no tenant id at all.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_common::TenantId;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::api::AppState;
use crate::error::ApiError;
use crate::store::{Role, hash_token};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` for the system itself (the scheduler, the bootstrap).
    pub token_id: Option<String>,
    pub role: Option<Role>,
    pub source_addr: Option<String>,
}

impl Caller {
    /// keyward acting on its own (start-up, schedules).
    pub fn system() -> Self {
        Self {
            token_id: None,
            role: None,
            source_addr: None,
        }
    }

    pub fn role_name(&self) -> &'static str {
        self.role.as_ref().map_or("system", Role::name)
    }
}

/// A fresh token and its id. The token is shown once and then only its hash exists.
pub fn new_token() -> (String, Zeroizing<String>) {
    let mut rng = rand::rngs::OsRng;
    let mut id = [0u8; 8];
    rng.fill_bytes(&mut id);
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut());
    (
        format!("tok_{}", hex::encode(id)),
        Zeroizing::new(format!("kw_{}", URL_SAFE_NO_PAD.encode(secret.as_ref()))),
    )
}

fn source_addr(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
}

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = AppState::from_ref(state);
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        let record = state
            .lifecycle
            .store()
            .token_by_hash(&hash_token(token))
            .await?
            .ok_or(ApiError::BadToken)?;
        Ok(Caller {
            token_id: Some(record.token_id),
            role: Some(record.role),
            source_addr: source_addr(parts),
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
        match &caller.role {
            Some(Role::Tenant(tenant)) => Ok(TenantCaller {
                tenant: tenant.clone(),
                caller,
            }),
            _ => Err(ApiError::Forbidden { needed: "tenant" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let (id1, t1) = new_token();
        let (id2, t2) = new_token();
        assert_ne!(t1.as_str(), t2.as_str());
        assert_ne!(id1, id2);
        let raw = URL_SAFE_NO_PAD
            .decode(t1.strip_prefix("kw_").unwrap())
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert_eq!(hash_token(&t1).len(), 64);
    }
}
