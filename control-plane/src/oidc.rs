//! The OpenID Connect relying party of the web UI's sign-in (`[oidc]`): the provider's discovery
//! document and keys, the authorization request (code flow, PKCE S256, state, nonce) and the
//! exchange of the code for an ID token whose signature, issuer, audience, expiry and nonce the
//! `openidconnect` crate checks. What the claims mean for keyward is the domain's business
//! (`lifecycle::web_sessions`).
//!
//! The provider is reached with redirects off (a redirect would let a compromised discovery
//! document point keyward anywhere) and a bounded timeout. Its metadata and keys are read on
//! first use and again after [`METADATA_TTL`] (the provider rotates its keys); a provider that
//! cannot be reached fails sign-in, not start-up.

use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::config::OidcConfig;

/// How long discovered metadata and keys are used before they are read again.
pub const METADATA_TTL: Duration = Duration::from_secs(600);

/// Every claim of the ID token besides the standard ones: where `admin_claim` and `tenant_claim`
/// are looked up.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct OtherClaims(pub serde_json::Map<String, serde_json::Value>);
impl AdditionalClaims for OtherClaims {}

type Fields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
type Client = openidconnect::Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in could not be finished with the provider. The message is for the log: it names
/// no secret (no code, token or verifier).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider cannot be reached or its discovery document is not valid: {0}")]
    Discovery(String),
    #[error("the identity provider refused the authorization code: {0}")]
    Exchange(String),
    #[error("the identity provider's answer has no ID token")]
    NoIdToken,
    #[error("the ID token is not valid: {0}")]
    IdToken(String),
    #[error("oidc configuration: {0}")]
    Config(String),
}

/// A sign-in about to go to the provider: where to send the browser, and what the callback
/// needs (kept server-side).
#[derive(Debug)]
pub struct Authorization {
    pub url: String,
    pub state: Zeroizing<String>,
    pub nonce: Zeroizing<String>,
    pub pkce_verifier: Zeroizing<String>,
}

/// What a verified ID token says about the person signing in.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    pub issuer: String,
    pub subject: String,
    /// `name`, else `preferred_username`, else `email`, else the subject.
    pub display_name: String,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: Option<chrono::DateTime<chrono::Utc>>,
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl VerifiedIdentity {
    /// The principal keyward records: `oidc:{first 16 hex digits of SHA-256(issuer)}:{sub}`.
    pub fn principal(&self) -> String {
        let issuer = hex::encode(&Sha256::digest(self.issuer.as_bytes())[..8]);
        format!("oidc:{issuer}:{}", self.subject)
    }
}

/// The relying party of one deployment's `[oidc]`.
pub struct RelyingParty {
    config: OidcConfig,
    client_secret: Zeroizing<String>,
    http: reqwest::Client,
    discovered: Mutex<Option<(Instant, Client)>>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl RelyingParty {
    /// The relying party of `config`, `None` when `[oidc]` is off. Reads the client secret (from
    /// its file, if one is named); reaches no provider yet.
    pub fn new(config: &OidcConfig) -> Result<Option<Self>, OidcError> {
        if !config.enabled() {
            return Ok(None);
        }
        let client_secret = match (&config.client_secret_file, &config.client_secret) {
            (Some(path), _) => Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        OidcError::Config(format!(
                            "oidc.client_secret_file cannot be read: {}",
                            e.kind()
                        ))
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, Some(secret)) => secret.0.clone(),
            (None, None) => return Err(OidcError::Config("no client secret".into())),
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.http_timeout)
            // Calls to the provider are rare (a sign-in, a discovery every ten minutes): a pooled
            // connection would mostly be one the provider already closed (a reset token request).
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| OidcError::Config(e.to_string()))?;
        Ok(Some(Self {
            config: config.clone(),
            client_secret,
            http,
            discovered: Mutex::new(None),
        }))
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    async fn client(&self) -> Result<Client, OidcError> {
        let mut discovered = self.discovered.lock().await;
        if let Some((at, client)) = discovered.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(client.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone().unwrap_or_default())
            .map_err(|e| OidcError::Config(format!("oidc.issuer: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Discovery(chain(&e)))?;
        let redirect = RedirectUrl::new(self.config.redirect_url.clone())
            .map_err(|e| OidcError::Config(format!("oidc.redirect_url: {e}")))?;
        let client = Client::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(openidconnect::ClientSecret::new(
                self.client_secret.as_str().to_owned(),
            )),
        )
        .set_redirect_uri(redirect);
        *discovered = Some((Instant::now(), client.clone()));
        Ok(client)
    }

    /// A new authorization request: code flow, PKCE S256, a random state and nonce.
    pub async fn authorize(&self) -> Result<Authorization, OidcError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        Ok(Authorization {
            url: url.to_string(),
            state: Zeroizing::new(state.secret().clone()),
            nonce: Zeroizing::new(nonce.secret().clone()),
            pkce_verifier: Zeroizing::new(verifier.secret().clone()),
        })
    }

    /// Exchanges `code` (with the PKCE verifier of its sign-in) for tokens, and checks the ID
    /// token: signature by the provider's keys, issuer, audience, expiry, and `nonce`.
    pub async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity, OidcError> {
        let client = self.client().await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Discovery(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(chain(&e)))?;
        let id_token = tokens.id_token().ok_or(OidcError::NoIdToken)?;
        let verifier = client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(nonce.to_owned()))
            .map_err(|e| OidcError::IdToken(chain(&e)))?;
        let display_name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned())
            .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()))
            .or_else(|| claims.email().map(|e| e.as_str().to_owned()))
            .unwrap_or_else(|| claims.subject().as_str().to_owned());
        Ok(VerifiedIdentity {
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            display_name,
            acr: claims.auth_context_ref().map(|a| a.as_str().to_owned()),
            amr: claims
                .auth_method_refs()
                .map(|amr| amr.iter().map(|m| m.as_str().to_owned()).collect())
                .unwrap_or_default(),
            auth_time: claims.auth_time(),
            other: claims.additional_claims().0.clone(),
        })
    }
}

/// An error and its causes, for the log.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
