//! Multi-factor step-up for sensitive operations (issue #17): TOTP second factors, their
//! recovery codes, and the check that a request for an operation the policy names carries a
//! fresh code of its principal's (`X-Keyward-MFA: totp:123456` or `recovery:CODE`, as Vault's
//! step-up MFA takes `X-Vault-MFA`), or a security key's signed answer to a step-up challenge
//! (`webauthn:<base64url of the assertion's JSON>`, [`webauthn`]).
//!
//! Whose factor: the principal a token acts for ([`MfaOwner`]). A tenant's factors are the
//! tenant's: any of its tokens steps up with them. An admin's belong to the admin token that
//! enrolled them. A web UI user signed in with OpenID Connect steps up as its role's principal:
//! a tenant user with the tenant's factors, an admin with factors of its own (`admin:oidc:...`,
//! its principal in place of a token id) — or with its identity provider's MFA, when the ID
//! token said it happened ([`Caller::idp_mfa`]). Later kinds of factor (WebAuthn) and of principal (an OIDC subject) are new
//! variants of [`Proof`] and [`MfaOwner`]; the policy, the rate limit and the audit stay.
//!
//! What holds: a code (its time step) is taken once across replicas (a conditional `UPDATE`);
//! five failures in five minutes lock the principal's step-up until the window passes (429
//! `mfa_locked`); every failure and the lockout are audited in the transaction that counts them;
//! the seed is sealed in SQL ([`seal`]) and zeroized in memory; no code, seed or recovery code
//! is logged, audited or answered back.

use std::fmt;

use keyward_common::TenantId;
use zeroize::Zeroizing;

use crate::caller::Caller;
use crate::store::Role;

mod enrol;
mod policy;
pub mod recovery;
mod reset;
#[cfg(test)]
mod scenarios;
pub mod seal;
mod step_up;
pub mod totp;
pub mod webauthn;

pub use enrol::{MfaFactor, TotpEnrolment};
pub use policy::MfaPolicy;
pub use webauthn::{WebauthnKey, WebauthnRegistration};

/// The principal whose factors a request steps up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MfaOwner {
    Tenant(TenantId),
    /// An admin token, by its id.
    Admin(String),
}

impl MfaOwner {
    /// The principal `caller` acts for; `None` for keyward itself (schedules need no factor).
    pub fn of(caller: &Caller) -> Option<Self> {
        match (&caller.role, &caller.token_id) {
            (Some(Role::Tenant(tenant)), _) => Some(Self::Tenant(tenant.clone())),
            (Some(Role::Admin), Some(token)) => Some(Self::Admin(token.clone())),
            _ => None,
        }
    }

    /// What `mfa_factors.owner` holds.
    pub fn key(&self) -> String {
        match self {
            Self::Tenant(tenant) => format!("tenant:{tenant}"),
            Self::Admin(token) => format!("admin:{token}"),
        }
    }

    /// The account name an authenticator app shows.
    fn account(&self) -> String {
        match self {
            Self::Tenant(tenant) => tenant.to_string(),
            Self::Admin(token) => format!("admin-{token}"),
        }
    }

    /// The tenant the audit events of this principal are filed under.
    fn tenant(&self) -> Option<&TenantId> {
        match self {
            Self::Tenant(tenant) => Some(tenant),
            Self::Admin(_) => None,
        }
    }
}

/// The value of a request's `X-Keyward-MFA` header, as sent: zeroized when dropped, never
/// printed.
pub struct MfaProof(Zeroizing<String>);

impl MfaProof {
    pub fn new(value: Zeroizing<String>) -> Self {
        Self(value)
    }

    fn parse(&self) -> Proof<'_> {
        let value = self.0.trim();
        if let Some(code) = value.strip_prefix("totp:") {
            Proof::Totp(code.trim())
        } else if let Some(code) = value.strip_prefix("recovery:") {
            Proof::Recovery(code.trim())
        } else if let Some(assertion) = value.strip_prefix("webauthn:") {
            Proof::Webauthn(assertion.trim())
        } else {
            Proof::Malformed
        }
    }
}

impl fmt::Debug for MfaProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MfaProof(<redacted>)")
    }
}

/// A second factor as presented.
enum Proof<'a> {
    Totp(&'a str),
    Recovery(&'a str),
    /// base64url of a WebAuthn assertion's JSON.
    Webauthn(&'a str),
    Malformed,
}

impl Proof<'_> {
    fn method(&self) -> &'static str {
        match self {
            Proof::Totp(_) => "totp",
            Proof::Recovery(_) => "recovery",
            Proof::Webauthn(_) => "webauthn",
            Proof::Malformed => "unknown",
        }
    }
}

/// What a step-up can be done with, for the `WWW-Authenticate`-like hint of a refusal.
pub const METHODS: [&str; 3] = ["totp", "recovery", "webauthn"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_are_parsed_and_never_printed() {
        let proof = |v: &str| MfaProof::new(Zeroizing::new(v.to_owned()));
        assert!(matches!(
            proof("totp:123456").parse(),
            Proof::Totp("123456")
        ));
        assert!(matches!(
            proof(" totp: 123456 ").parse(),
            Proof::Totp("123456")
        ));
        assert!(matches!(
            proof("recovery:ABCD-EFGH-IJKL-MNOP").parse(),
            Proof::Recovery("ABCD-EFGH-IJKL-MNOP")
        ));
        assert!(matches!(
            proof("webauthn:eyJpZCI6IkFBIn0").parse(),
            Proof::Webauthn("eyJpZCI6IkFBIn0")
        ));
        assert_eq!(proof("webauthn:x").parse().method(), "webauthn");
        assert!(matches!(proof("123456").parse(), Proof::Malformed));
        assert!(matches!(proof("u2f:abc").parse(), Proof::Malformed));
        assert!(!format!("{:?}", proof("totp:123456")).contains("123456"));
    }

    #[test]
    fn owners_are_the_principal_a_token_acts_for() {
        let tenant: TenantId = "acme".parse().unwrap();
        let caller = |role, token: Option<&str>| Caller {
            token_id: token.map(str::to_owned),
            role,
            source_addr: None,
            idp_mfa: false,
        };
        let t = MfaOwner::of(&caller(Some(Role::Tenant(tenant.clone())), Some("tok_1"))).unwrap();
        assert_eq!(t.key(), "tenant:acme");
        let a = MfaOwner::of(&caller(Some(Role::Admin), Some("tok_2"))).unwrap();
        assert_eq!(a.key(), "admin:tok_2");
        assert_eq!(MfaOwner::of(&Caller::system()), None);
    }
}
