//! A real, certified OpenID Provider on loopback: npm `oidc-provider` run by
//! `tests/oidc-provider/provider.mjs` under Node.js, with one static client (keyward) and the
//! users a test gives, and an [`HttpSignIn`] that walks its sign-in as a browser would (for the
//! tests that need to hold a callback URL or a cookie in their hands).
//!
//! `scripts/install-test-deps` installs Node.js and runs `npm ci` in `tests/oidc-provider/`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{require_program, workspace_root};

const INSTALL: &str =
    "run scripts/install-test-deps (Node.js, and `npm ci` in tests/oidc-provider)";

/// The client keyward is registered as.
pub const CLIENT_ID: &str = "keyward-test";

/// A user of the provider: the ID token claims it gets and how it "authenticated".
#[derive(Debug, Clone)]
pub struct IdpUser {
    pub claims: Value,
    /// `amr` of its sign-in (`["pwd"]` unless set).
    pub amr: Vec<&'static str>,
    /// Its ID tokens are re-signed with a key the provider never published.
    pub forge: bool,
}

impl IdpUser {
    pub fn new(claims: Value) -> Self {
        Self {
            claims,
            amr: vec!["pwd"],
            forge: false,
        }
    }

    pub fn amr(mut self, amr: &[&'static str]) -> Self {
        self.amr = amr.to_vec();
        self
    }

    pub fn forged(mut self) -> Self {
        self.forge = true;
        self
    }
}

#[derive(Debug)]
pub struct OidcProvider {
    pub issuer: String,
    pub client_secret: String,
    _process: tokio::process::Child,
}

impl OidcProvider {
    /// Starts the provider with `users` (by login name) and keyward's callback `redirect_uri`.
    pub async fn start(redirect_uri: &str, users: BTreeMap<&str, IdpUser>) -> Self {
        let node = require_program("node", INSTALL);
        let dir = workspace_root().join("tests/oidc-provider");
        assert!(
            dir.join("node_modules/oidc-provider/package.json")
                .is_file(),
            "oidc-provider is not installed in {}: {INSTALL}",
            dir.display()
        );
        let users: serde_json::Map<String, Value> = users
            .into_iter()
            .map(|(login, u)| {
                (
                    login.to_owned(),
                    json!({ "claims": u.claims, "amr": u.amr, "forge": u.forge }),
                )
            })
            .collect();
        let client_secret = hex::encode(rand::random::<[u8; 16]>());
        let mut process = tokio::process::Command::new(node)
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", &client_secret)
            .env("OIDC_REDIRECT_URI", redirect_uri)
            .env("OIDC_USERS", Value::Object(users).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the OIDC provider to start within 30 s")
            .unwrap()
            .expect("the OIDC provider printed its issuer");
        let issuer = serde_json::from_str::<Value>(&line).unwrap()["issuer"]
            .as_str()
            .unwrap()
            .to_owned();
        Self {
            issuer,
            client_secret,
            _process: process,
        }
    }

    /// keyward's `[oidc]` for this provider, with its callback at `base_url`.
    pub fn config(&self, base_url: &str) -> keyward_server::config::OidcConfig {
        keyward_server::config::OidcConfig {
            issuer: Some(self.issuer.clone()),
            display_name: "Test IdP".to_owned(),
            client_id: CLIENT_ID.to_owned(),
            client_secret: Some(keyward_server::config::ClientSecret(
                zeroize::Zeroizing::new(self.client_secret.clone()),
            )),
            redirect_url: format!("{base_url}/auth/oidc/callback"),
            ..Default::default()
        }
    }
}

/// A sign-in walked over HTTP as a browser would: one cookie jar for every loopback origin (the
/// provider's and keyward's cookies have different names), no redirects followed by reqwest.
#[derive(Debug, Default)]
pub struct HttpSignIn {
    jar: BTreeMap<String, String>,
    http: reqwest::Client,
}

impl HttpSignIn {
    pub fn new() -> Self {
        Self {
            jar: BTreeMap::new(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let pair = value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.jar.remove(name);
                } else {
                    self.jar.insert(name.to_owned(), value.to_owned());
                }
            }
        }
    }

    /// GET `url` with the jar's cookies (keeping the ones it sets).
    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        let response = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    /// A cookie's value, if the jar holds it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(String::as_str)
    }

    /// Starts at keyward's `/auth/oidc/login` and signs in at the provider as `login`; returns
    /// the callback URL the provider sends the browser back to (not yet visited).
    pub async fn to_callback(&mut self, keyward: &str, login: &str) -> String {
        let mut url = format!("{keyward}/auth/oidc/login");
        for _ in 0..10 {
            let response = self.get(&url).await;
            let status = response.status();
            assert!(
                status.is_redirection() || status.is_success(),
                "{url}: {status}"
            );
            if status.is_redirection() {
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                let next = resolve(&url, &location);
                if next.starts_with(&format!("{keyward}/auth/oidc/callback")) {
                    return next;
                }
                url = next;
                continue;
            }
            // The provider's login form.
            assert!(url.contains("/interaction/"), "unexpected page {url}");
            let response = self
                .http
                .post(&url)
                .header("cookie", self.cookie_header())
                .form(&[("login", login)])
                .send()
                .await
                .unwrap();
            self.keep_cookies(&response);
            assert!(
                response.status().is_redirection(),
                "login as {login}: {}",
                response.status()
            );
            url = resolve(&url, response.headers()["location"].to_str().unwrap());
        }
        panic!("the sign-in did not come back to keyward");
    }
}

/// `location` against `base` (absolute, or a path on `base`'s origin).
fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let origin_end = base
        .match_indices('/')
        .nth(2)
        .map_or(base.len(), |(i, _)| i);
    format!("{}{location}", &base[..origin_end])
}
