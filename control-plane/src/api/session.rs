//! The web UI's sign-in with OpenID Connect and its cookie session over HTTP:
//! `GET /auth/oidc/login` (to the provider), `GET /auth/oidc/callback` (back from it: a session
//! cookie), `POST /auth/signout`, `GET /api/v1/session` (who is signed in, and the session's
//! CSRF token) and `GET /api/v1/sign-in-options` (whether the sign-in page offers the provider).
//!
//! The session cookie is `__Host-keyward_session` (`HttpOnly; Secure; SameSite=Strict; Path=/`):
//! scripts cannot read it, other sites' requests do not carry it. Writes it authenticates also
//! need the session's CSRF token in `X-CSRF-Token` and, from a browser, a same-origin `Origin`
//! and `Sec-Fetch-Site` ([`check_csrf`]); bearer tokens need neither and take precedence.
//!
//! The sign-in binds itself to the browser that started it: `__Host-keyward_sign_in` (`SameSite=Lax`,
//! ten minutes) holds the state, and the callback is refused unless the state it brings is that
//! one (a sign-in started by someone else cannot be finished in this browser).

use axum::Json;
use axum::extract::State;
use axum::http::header::COOKIE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::auth::ClientAddr;
use super::{ApiQuery, AppState};
use crate::caller::Caller;
use crate::clock::iso8601;
use crate::config::OidcConfig;
use crate::error::{ApiError, Problem};
use crate::lifecycle::{DomainError, SIGN_IN_TTL};
use crate::oidc::RelyingParty;
use crate::store::Role;

/// The session cookie.
pub const SESSION_COOKIE: &str = "__Host-keyward_session";
/// The cookie that binds a sign-in in progress to its browser.
pub const SIGN_IN_COOKIE: &str = "__Host-keyward_sign_in";
/// The header a cookie-authenticated write carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of cookie `name` in the request, if any.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 200)
}

/// The synchronizer token of a session: derived from its id, so that it is bound to it and
/// nothing more is stored.
pub fn csrf_token(session_id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"keyward csrf\0");
    hash.update(session_id.as_bytes());
    hex::encode(hash.finalize())
}

/// Equal bytes, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `method` changes nothing (no CSRF token needed).
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A cookie-authenticated write must carry the session's CSRF token and, where the browser says
/// where it comes from, come from the UI's own origin.
pub fn check_csrf(
    headers: &HeaderMap,
    config: &OidcConfig,
    session_id: &str,
) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(ApiError::CsrfFailed(
            "the request does not come from this site's pages",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && Some(origin.as_bytes()) != config.origin().map(str::as_bytes)
    {
        return Err(ApiError::CsrfFailed(
            "the request's Origin is not this site",
        ));
    }
    let sent = headers.get(CSRF_HEADER).ok_or(ApiError::CsrfFailed(
        "a write with the session cookie needs X-CSRF-Token (GET /api/v1/session gives it)",
    ))?;
    if !same(sent.as_bytes(), csrf_token(session_id).as_bytes()) {
        return Err(ApiError::CsrfFailed("X-CSRF-Token is not this session's"));
    }
    Ok(())
}

fn relying_party(state: &AppState) -> Result<&RelyingParty, ApiError> {
    state.oidc.as_deref().ok_or(ApiError::OidcNotConfigured)
}

fn set_cookie(value: String) -> HeaderValue {
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Starts a sign-in: to the provider's authorization endpoint (code flow with PKCE).
#[utoipa::path(get, path = "/auth/oidc/login", tag = "web", security(()),
    responses(
        (status = 303, description = "to the identity provider; sets `__Host-keyward_sign_in`"),
        (status = 404, body = Problem, description = "`oidc_not_configured`"),
        (status = 502, body = Problem, description = "`idp_unavailable`"),
        (status = 503, body = Problem, description = "`database_unavailable`, `timeout`"),
    ))]
pub async fn login(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rp = relying_party(&state)?;
    let authorization = state.lifecycle.begin_sign_in(rp).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&authorization.url).map_err(|_| ApiError::Internal)?,
    );
    headers.insert(
        header::SET_COOKIE,
        set_cookie(format!(
            "{SIGN_IN_COOKIE}={}; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age={}",
            authorization.state.as_str(),
            SIGN_IN_TTL.num_seconds()
        )),
    );
    no_store(&mut headers);
    Ok((StatusCode::SEE_OTHER, headers).into_response())
}

/// What the provider's redirect back brings.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// The provider's refusal (`access_denied`, ...).
    pub error: Option<String>,
    /// Sent by some providers (RFC 9207); the ID token's `iss` is what is checked.
    pub iss: Option<String>,
    pub session_state: Option<String>,
}

/// The page the callback answers with: it sets the session cookie and moves on to the UI from
/// this origin (a navigation the provider's redirect started would not carry a `SameSite=Strict`
/// cookie).
const SIGNED_IN_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"0;url=/ui/\"><title>Signed in - keyward</title></head>\
<body><main><p>Signed in. <a href=\"/ui/\">Continue to keyward</a>.</p></main></body></html>";

/// Finishes a sign-in: checks the state against this browser's, exchanges the code, verifies
/// the ID token and maps its claims to a role; sets the session cookie.
#[utoipa::path(get, path = "/auth/oidc/callback", tag = "web", security(()),
    params(CallbackQuery),
    responses(
        (status = 200, description = "signed in: sets `__Host-keyward_session`; an HTML page that goes on to `/ui/`"),
        (status = 400, body = Problem, description = "`sign_in_failed`: unknown, expired or reused state, a code the provider refused, an ID token that does not verify"),
        (status = 403, body = Problem, description = "`sign_in_no_role`: the claims name neither the admin role nor an existing tenant"),
        (status = 404, body = Problem, description = "`oidc_not_configured`"),
        (status = 502, body = Problem, description = "`idp_unavailable`"),
        (status = 503, body = Problem, description = "`database_unavailable`, `timeout`"),
    ))]
pub async fn callback(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Result<Response, ApiError> {
    let rp = relying_party(&state)?;
    let (Some(code), Some(sign_in)) = (query.code.as_deref(), query.state.as_deref()) else {
        if let Some(error) = &query.error {
            tracing::info!(error = %error.chars().take(64).collect::<String>(), "the identity provider refused the sign-in");
        }
        return Err(DomainError::SignInFailed("no code or state").into());
    };
    let bound =
        cookie(&headers, SIGN_IN_COOKIE).is_some_and(|c| same(c.as_bytes(), sign_in.as_bytes()));
    let signed_in = state
        .lifecycle
        .finish_sign_in(rp, sign_in, code, bound, Some(addr.ip().to_string()))
        .await?;
    let config = rp.config();
    let mut out = HeaderMap::new();
    out.append(
        header::SET_COOKIE,
        set_cookie(format!(
            "{SESSION_COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
            signed_in.session_id.as_str(),
            config.absolute_timeout.as_secs()
        )),
    );
    out.append(
        header::SET_COOKIE,
        set_cookie(format!(
            "{SIGN_IN_COOKIE}=; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=0"
        )),
    );
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::ui::CONTENT_SECURITY_POLICY),
    );
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    no_store(&mut out);
    Ok((StatusCode::OK, out, SIGNED_IN_PAGE).into_response())
}

/// Ends the cookie's session server-side and clears the cookie.
#[utoipa::path(post, path = "/auth/signout", tag = "web",
    responses(
        (status = 204, description = "signed out: the session no longer works anywhere"),
        (status = 401, body = Problem, description = "`unauthenticated` (no session cookie), `session_ended`"),
        (status = 403, body = Problem, description = "`csrf_failed`"),
    ))]
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    caller: Caller,
) -> Result<Response, ApiError> {
    let session_id = cookie(&headers, SESSION_COOKIE).ok_or(ApiError::Unauthenticated)?;
    state.lifecycle.sign_out(&caller, &session_id).await?;
    let mut out = HeaderMap::new();
    out.insert(
        header::SET_COOKIE,
        set_cookie(format!(
            "{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0"
        )),
    );
    no_store(&mut out);
    Ok((StatusCode::NO_CONTENT, out).into_response())
}

/// Who is signed in, and the session's CSRF token for its writes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// `oidc:{issuer hash}:{sub}`: the actor the audit log records.
    pub principal: String,
    pub display_name: String,
    /// `admin` or `tenant`.
    pub role: &'static str,
    pub tenant_id: Option<String>,
    /// Send as `X-CSRF-Token` with every POST, PUT, PATCH and DELETE.
    pub csrf_token: String,
    /// The identity provider's MFA stands for step-ups now.
    pub idp_mfa: bool,
    pub signed_in_at: String,
    /// When the session ends unless used before.
    pub idle_expires_at: String,
    /// When the session ends, used or not.
    pub expires_at: String,
}

/// The signed-in session of the cookie.
#[utoipa::path(get, path = "/api/v1/session", tag = "web",
    security(("session" = [])),
    responses(
        (status = 200, body = SessionView),
        (status = 401, body = Problem, description = "`unauthenticated` (no session cookie), `session_ended`"),
        (status = 404, body = Problem, description = "`oidc_not_configured`"),
    ))]
pub async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let rp = relying_party(&state)?;
    let session_id = cookie(&headers, SESSION_COOKIE).ok_or(ApiError::Unauthenticated)?;
    let session = state
        .lifecycle
        .web_session(rp.config(), &session_id)
        .await?
        .ok_or(ApiError::SessionEnded)?;
    Ok(Json(SessionView {
        principal: session.principal,
        display_name: session.display_name,
        role: session.role.name(),
        tenant_id: match &session.role {
            Role::Tenant(t) => Some(t.to_string()),
            Role::Admin => None,
        },
        csrf_token: csrf_token(&session_id),
        idp_mfa: session.idp_mfa,
        signed_in_at: iso8601(session.created_at),
        idle_expires_at: iso8601(session.idle_expires_at),
        expires_at: iso8601(session.expires_at),
    }))
}

/// The identity provider the sign-in page offers, if any.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignInOptions {
    pub oidc: Option<OidcOption>,
    /// Whether this request carried a session cookie (its value unchecked): only then does the
    /// page ask `GET /api/v1/session` who signed in, so that a page signed in by token never
    /// makes a call bound to fail.
    pub session_cookie: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcOption {
    /// "Sign in with {displayName}".
    pub display_name: String,
    /// Where the button goes: `/auth/oidc/login`.
    pub login_url: &'static str,
}

/// How one can sign in to the web UI (besides pasting an API token).
#[utoipa::path(get, path = "/api/v1/sign-in-options", tag = "web", security(()),
    responses((status = 200, body = SignInOptions)))]
pub async fn sign_in_options(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Json<SignInOptions> {
    let oidc = state.oidc.as_deref().map(|rp| OidcOption {
        display_name: rp.config().display_name.clone(),
        login_url: "/auth/oidc/login",
    });
    let session_cookie = oidc.is_some() && cookie(&headers, SESSION_COOKIE).is_some();
    Json(SignInOptions {
        oidc,
        session_cookie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        OidcConfig {
            redirect_url: "https://keyward.example.com/auth/oidc/callback".into(),
            ..OidcConfig::default()
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = headers(&[("cookie", "a=1; __Host-keyward_session=abc; b=2")]);
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, SIGN_IN_COOKIE), None);
        assert_eq!(
            cookie(
                &headers(&[("cookie", "__Host-keyward_session=")]),
                SESSION_COOKIE
            ),
            None
        );
    }

    #[test]
    fn writes_need_the_sessions_token_from_this_origin() {
        let token = csrf_token("sid");
        assert_ne!(token, csrf_token("other"));
        let ok = |extra: &[(&'static str, &str)]| {
            let mut pairs = vec![("x-csrf-token", token.as_str())];
            pairs.extend_from_slice(extra);
            check_csrf(&headers(&pairs), &config(), "sid")
        };
        assert!(ok(&[]).is_ok());
        assert!(
            ok(&[
                ("origin", "https://keyward.example.com"),
                ("sec-fetch-site", "same-origin")
            ])
            .is_ok()
        );
        assert!(ok(&[("origin", "https://evil.example")]).is_err());
        assert!(ok(&[("sec-fetch-site", "cross-site")]).is_err());
        assert!(ok(&[("sec-fetch-site", "same-site")]).is_err());
        assert!(check_csrf(&headers(&[]), &config(), "sid").is_err());
        let wrong = csrf_token("other");
        assert!(
            check_csrf(
                &headers(&[("x-csrf-token", wrong.as_str())]),
                &config(),
                "sid"
            )
            .is_err()
        );
        let err = check_csrf(&headers(&[]), &config(), "sid").unwrap_err();
        assert_eq!(err.code(), "csrf_failed");
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
    }
}
