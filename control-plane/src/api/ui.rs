//! The web UI: static pages embedded in the binary (`control-plane/ui/`), served under `/ui/`,
//! and `GET /api/v1/whoami`, with which the sign-in page learns what a token may do.
//!
//! The pages are plain HTML, CSS and JavaScript modules: no build step, no Node.js, nothing
//! fetched from elsewhere. Every page answer carries a strict Content-Security-Policy (scripts
//! and styles from this origin only, no inline code, no framing); the token is kept in the
//! tab's session storage and sent as an `Authorization` header, never in a cookie or a URL.

use axum::Json;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use rust_embed::RustEmbed;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiPath, AppState};
use crate::caller::Caller;
use crate::error::{ApiError, Problem};
use crate::store::Role;

#[derive(RustEmbed)]
#[folder = "ui/"]
struct Assets;

/// Scripts, styles, images and API calls from this origin only; nothing inline, no plugins, no
/// framing, forms post nowhere else. `wasm-unsafe-eval` lets the recordings' player (asciinema's,
/// vendored) compile its terminal emulator, which is WebAssembly; it allows no JavaScript `eval`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The UI's routes: `/` and `/ui` lead to `/ui/`; `/ui/{file}` serves an embedded file.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{*file}",
            get(|ApiPath(file): ApiPath<String>| async move { asset(&file) }),
        )
}

fn asset(name: &str) -> Response {
    let Some(file) = Assets::get(name) else {
        return ApiError::NoRoute {
            path: format!("/ui/{}", name.chars().take(200).collect::<String>()),
        }
        .into_response();
    };
    let mut headers = HeaderMap::new();
    let mime = file.metadata.mimetype();
    if let Ok(value) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    // The files change with the binary: check each time (the ETag makes it cheap).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    (StatusCode::OK, headers, file.data.into_owned()).into_response()
}

/// What the caller's token may do.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// `admin` or `tenant`.
    pub role: &'static str,
    /// The tenant a tenant token belongs to.
    pub tenant_id: Option<String>,
    pub token_id: Option<String>,
}

/// The role (and tenant) of the calling token.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "ops",
    responses((status = 200, body = WhoAmI), (status = 401, body = Problem)))]
pub async fn whoami(caller: Caller) -> Result<Json<WhoAmI>, ApiError> {
    let role = caller.role.ok_or(ApiError::Unauthenticated)?;
    Ok(Json(WhoAmI {
        role: role.name(),
        tenant_id: match &role {
            Role::Tenant(tenant) => Some(tenant.to_string()),
            Role::Admin => None,
        },
        token_id: caller.token_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_file_is_embedded_and_typed() {
        for (name, mime) in [
            ("index.html", "text/html"),
            ("app.js", "text/javascript"),
            ("certs.js", "text/javascript"),
            ("access.js", "text/javascript"),
            ("app.css", "text/css"),
        ] {
            let response = asset(name);
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let headers = response.headers();
            let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.starts_with(mime), "{name}: {content_type}");
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
        }
        assert_eq!(asset("nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn pages_hold_no_inline_script_or_style() {
        for name in Assets::iter() {
            let file = Assets::get(&name).unwrap();
            if !name.ends_with(".html") {
                continue;
            }
            let text = String::from_utf8(file.data.into_owned()).unwrap();
            for tag in text.split("<script").skip(1) {
                let open = tag.split('>').next().unwrap();
                assert!(open.contains("src="), "{name}: inline script {open}");
            }
            assert!(!text.contains("<style"), "{name}: inline style");
            assert!(!text.contains(" style="), "{name}: style attribute");
            // Event handler attributes (` onclick=`) are inline scripts too.
            for (i, _) in text.match_indices(" on") {
                let word: String = text[i + 3..]
                    .chars()
                    .take_while(char::is_ascii_lowercase)
                    .collect();
                let after = text[i + 3 + word.len()..].chars().next();
                assert!(
                    word.is_empty() || after != Some('='),
                    "{name}: handler attribute on{word}="
                );
            }
        }
    }

    #[test]
    fn the_vendored_player_is_the_npm_package_it_names() {
        use sha2::{Digest, Sha256};
        let source = Assets::get("vendor/asciinema-player/SOURCE").expect("SOURCE");
        let source = String::from_utf8(source.data.into_owned()).unwrap();
        let mut checked = 0;
        for line in source
            .lines()
            .filter(|l| l.len() > 66 && l.as_bytes()[64] == b' ')
        {
            let (hash, name) = line.split_once("  ").unwrap();
            let file = Assets::get(&format!("vendor/asciinema-player/{name}")).expect(name);
            assert_eq!(
                hex::encode(Sha256::digest(&file.data)),
                hash,
                "{name} was edited"
            );
            checked += 1;
        }
        assert_eq!(checked, 3, "{source}");
        let response = asset("vendor/asciinema-player/asciinema-player.min.js");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
    }
}
