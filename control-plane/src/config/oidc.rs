//! Sign-in to the web UI with OpenID Connect (`[oidc]`): the identity provider, this relying
//! party's client, how the ID token's claims map to a role, the session's lifetimes and when
//! the provider's own MFA stands for keyward's step-up. Off unless `issuer` is set.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The client secret, given inline (prefer `client_secret_file` or
/// `KEYWARD_OIDC__CLIENT_SECRET`): zeroized when dropped, never printed.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientSecret(pub Zeroizing<String>);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// `[oidc]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The provider's issuer URL (its discovery document is `{issuer}/.well-known/openid-configuration`).
    /// Sign-in with OIDC is off while this is unset.
    pub issuer: Option<String>,
    /// What the sign-in page's button says: "Sign in with {display_name}".
    pub display_name: String,
    pub client_id: String,
    pub client_secret: Option<ClientSecret>,
    /// A file holding the client secret (one line); takes precedence over `client_secret`.
    pub client_secret_file: Option<PathBuf>,
    /// This control plane's callback as the provider knows it:
    /// `https://keyward.example.com/auth/oidc/callback`. Its origin is the one cookie-authenticated
    /// writes must come from.
    pub redirect_url: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The ID token claim that names admins (a string or an array of strings) ...
    pub admin_claim: String,
    /// ... and the values of it that make the admin role.
    pub admin_values: Vec<String>,
    /// The ID token claim whose value is the tenant id a user acts for.
    pub tenant_claim: String,
    /// A session ends after this long without a request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, used or not.
    #[serde(with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// `acr` values that say the provider did multi-factor authentication.
    pub mfa_acr_values: Vec<String>,
    /// `amr` values of which one says the provider did multi-factor authentication.
    pub mfa_amr_values: Vec<String>,
    /// How long after the provider's `auth_time` its MFA stands for keyward's step-up.
    #[serde(with = "humantime_serde")]
    pub mfa_max_age: Duration,
    /// The longest time the provider's discovery, key and token requests may take.
    #[serde(with = "humantime_serde")]
    pub http_timeout: Duration,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            display_name: "your identity provider".to_owned(),
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            redirect_url: String::new(),
            scopes: vec!["profile".to_owned()],
            admin_claim: "groups".to_owned(),
            admin_values: vec!["keyward-admins".to_owned()],
            tenant_claim: "keyward_tenant".to_owned(),
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
            mfa_acr_values: Vec::new(),
            mfa_amr_values: vec!["mfa".to_owned(), "otp".to_owned(), "hwk".to_owned()],
            mfa_max_age: Duration::from_secs(15 * 60),
            http_timeout: Duration::from_secs(10),
        }
    }
}

impl OidcConfig {
    pub fn enabled(&self) -> bool {
        self.issuer.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let Some(issuer) = &self.issuer else {
            return Ok(());
        };
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err("oidc.issuer must be an http(s) URL".into());
        }
        if self.client_id.is_empty() {
            return Err("oidc.client_id must be set with oidc.issuer".into());
        }
        if self.client_secret.is_none() && self.client_secret_file.is_none() {
            return Err(
                "oidc.client_secret_file (or oidc.client_secret) must be set with oidc.issuer"
                    .into(),
            );
        }
        if !self.redirect_url.ends_with("/auth/oidc/callback")
            || !(self.redirect_url.starts_with("https://")
                || self.redirect_url.starts_with("http://"))
        {
            return Err(
                "oidc.redirect_url must be this server's https://HOST/auth/oidc/callback".into(),
            );
        }
        if self.tenant_claim.is_empty() || self.admin_claim.is_empty() {
            return Err("oidc.tenant_claim and oidc.admin_claim must be claim names".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&self.idle_timeout) {
            return Err("oidc.idle_timeout must be 1s to 24h".into());
        }
        if self.absolute_timeout < self.idle_timeout
            || self.absolute_timeout > Duration::from_secs(30 * 24 * 3600)
        {
            return Err(
                "oidc.absolute_timeout must be at least idle_timeout and at most 30d".into(),
            );
        }
        Ok(())
    }

    /// The origin (`scheme://host[:port]`) of `redirect_url`: where the UI is served.
    pub fn origin(&self) -> Option<&str> {
        let rest = self.redirect_url.split_once("://")?.1;
        let host_end = rest.find('/').unwrap_or(rest.len());
        let scheme_len = self.redirect_url.len() - rest.len();
        Some(&self.redirect_url[..scheme_len + host_end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> OidcConfig {
        OidcConfig {
            issuer: Some("https://idp.example.com".into()),
            client_id: "keyward".into(),
            client_secret: Some(ClientSecret(Zeroizing::new("s3cret".into()))),
            redirect_url: "https://keyward.example.com:8443/auth/oidc/callback".into(),
            ..OidcConfig::default()
        }
    }

    #[test]
    fn off_by_default_and_checked_when_on() {
        assert!(!OidcConfig::default().enabled());
        assert!(OidcConfig::default().validate().is_ok());
        assert!(configured().validate().is_ok());
        let mut c = configured();
        c.redirect_url = "https://keyward.example.com/elsewhere".into();
        assert!(c.validate().is_err());
        let mut c = configured();
        c.client_secret = None;
        assert!(c.validate().is_err());
        let mut c = configured();
        c.absolute_timeout = Duration::from_secs(60);
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_origin_is_the_redirect_urls_and_the_secret_is_never_printed() {
        assert_eq!(
            configured().origin(),
            Some("https://keyward.example.com:8443")
        );
        assert!(!format!("{:?}", configured()).contains("s3cret"));
    }
}
