//! Security keys and passkeys (WebAuthn, webauthn-rs) as second factors: enrolment (a
//! registration ceremony) and the step-up challenge whose signed answer a sensitive request
//! carries (`X-Keyward-MFA: webauthn:<base64url of the assertion's JSON>`).
//!
//! Every ceremony's state is in SQL (`mfa_webauthn_ceremonies`), not in one replica's memory: it
//! expires after [`CEREMONY_TTL`] and is taken once. A step-up challenge is found by the
//! challenge the browser's signed client data names, and only among the principal's own
//! ceremonies: another principal's challenge, or a used one, steps up nobody. webauthn-rs checks
//! the origin, the RP id, the signature by a credential the challenge allowed (the principal's
//! own), user verification (required: a PIN or biometric on the key) and the signature counter;
//! the counter is raised in SQL with a conditional `UPDATE`, so a cloned key is refused on every
//! replica. Failures count toward the same lockout as TOTP codes and are audited alike.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Uuid, Webauthn,
    WebauthnBuilder,
};

use super::super::{DomainError, KeyLifecycle};
use super::enrol::{MAX_FACTORS, abandoned, new_factor_id, owner_of};
use super::{MfaOwner, MfaProof};
use crate::caller::Caller;
use crate::store::{
    CeremonyKind, CeremonyRecord, TakenCeremony, WebauthnCredentialRecord, WriteTx,
};

/// How long a registration or a step-up challenge can be answered.
pub const CEREMONY_TTL: Duration = Duration::minutes(5);
/// Ceremonies a principal can have open at once (each is a row until it expires).
pub const MAX_OPEN_CEREMONIES: i64 = 20;
/// The longest name a security key can be given.
pub const MAX_NAME_CHARS: usize = 64;

/// A registration started: what `navigator.credentials.create` takes (`publicKey`), and the id
/// to finish it under (the factor id the key will have).
#[derive(Debug)]
pub struct WebauthnRegistration {
    pub registration_id: String,
    pub options: CreationChallengeResponse,
}

/// A security key registered.
#[derive(Debug)]
pub struct WebauthnKey {
    pub factor_id: String,
    pub name: String,
}

/// The user handle a principal's credentials are made for: derived from its owner key, so it
/// is stable and names nothing.
fn user_handle(owner: &MfaOwner) -> Uuid {
    let digest = Sha256::digest(format!("keyward-webauthn-user:{}", owner.key()));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// The canonical (base64url, no padding) form of a challenge as the browser or webauthn-rs
/// writes it; `None` when it is not base64url.
fn canonical_challenge(raw: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')).ok()?;
    (!bytes.is_empty()).then(|| URL_SAFE_NO_PAD.encode(bytes))
}

/// The challenge a step-up challenge's options carry.
fn challenge_of_options(options: &RequestChallengeResponse) -> Option<String> {
    let value = serde_json::to_value(options).ok()?;
    canonical_challenge(value.pointer("/publicKey/challenge")?.as_str()?)
}

/// The challenge an assertion's client data names (before any of it is checked: it only says
/// which ceremony to check it against).
fn challenge_of_assertion(assertion: &PublicKeyCredential) -> Option<String> {
    let client_data: serde_json::Value =
        serde_json::from_slice(assertion.response.client_data_json.as_ref()).ok()?;
    canonical_challenge(client_data.get("challenge")?.as_str()?)
}

/// An assertion as sent in `X-Keyward-MFA: webauthn:...`: base64url of its JSON.
pub(super) fn parse_assertion(encoded: &str) -> Option<(PublicKeyCredential, String)> {
    let json = URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).ok()?;
    let assertion: PublicKeyCredential = serde_json::from_slice(&json).ok()?;
    let challenge = challenge_of_assertion(&assertion)?;
    Some((assertion, challenge))
}

/// A name for a security key: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no control
/// characters.
fn checked_name(name: &str) -> Result<String, DomainError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(DomainError::WebauthnNameInvalid);
    }
    Ok(name.to_owned())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, DomainError> {
    serde_json::to_string(value).map_err(|_| DomainError::Internal)
}

fn from_json<T: serde::de::DeserializeOwned>(
    raw: &str,
    what: &'static str,
) -> Result<T, DomainError> {
    serde_json::from_str(raw).map_err(|e| {
        tracing::error!(what, error = %e, "a stored WebAuthn record does not read");
        DomainError::Internal
    })
}

impl KeyLifecycle {
    /// The relying party of `[mfa] webauthn_rp_id` / `webauthn_origin`.
    fn webauthn(&self) -> Result<Webauthn, DomainError> {
        let Some((rp_id, origin)) = self
            .mfa
            .webauthn_relying_party()
            .map_err(|_| DomainError::WebauthnNotConfigured)?
        else {
            return Err(DomainError::WebauthnNotConfigured);
        };
        WebauthnBuilder::new(&rp_id, &origin)
            .and_then(|b| b.rp_name("keyward").build())
            .map_err(|e| {
                tracing::error!(error = %e, "the WebAuthn relying party does not build");
                DomainError::WebauthnNotConfigured
            })
    }

    /// Starts a ceremony's row for `owner`, unless it has too many open.
    async fn open_ceremony(
        &self,
        owner: &MfaOwner,
        kind: CeremonyKind,
        ceremony_id: String,
        state: String,
        now: DateTime<Utc>,
    ) -> Result<WriteTx, DomainError> {
        let mut tx = self.store.begin().await?;
        if tx.open_webauthn_ceremonies(&owner.key(), now).await? >= MAX_OPEN_CEREMONIES {
            return Err(DomainError::Quota {
                what: "WebAuthn ceremonies under way (answer or let expire some first)",
                max: MAX_OPEN_CEREMONIES as u32,
            });
        }
        let record = CeremonyRecord {
            ceremony_id,
            owner: owner.key(),
            kind,
            state,
            created_at: now,
            expires_at: now + CEREMONY_TTL,
        };
        tx.insert_webauthn_ceremony(&record, now).await?;
        Ok(tx)
    }

    /// Starts registering a security key for the caller's principal. With a confirmed factor
    /// already, only with a fresh second factor of it. Audited (`mfa.enrol`).
    pub async fn start_webauthn_registration(
        &self,
        caller: &Caller,
        proof: Option<&MfaProof>,
    ) -> Result<WebauthnRegistration, DomainError> {
        let webauthn = self.webauthn()?;
        let owner = owner_of(caller)?;
        let key = owner.key();
        let now = self.clock.now();
        let factors: Vec<_> = self
            .store
            .mfa_factors(&key)
            .await?
            .into_iter()
            .filter(|f| !abandoned(f, now))
            .collect();
        if factors.len() >= MAX_FACTORS {
            return Err(DomainError::Quota {
                what: "second factors (delete an unused one first)",
                max: MAX_FACTORS as u32,
            });
        }
        if factors.iter().any(|f| f.confirmed_at.is_some()) {
            self.verify_second_factor(caller, &owner, "mfa.enrol", proof)
                .await?;
        }
        let exclude = self
            .store
            .webauthn_credentials(&key)
            .await?
            .iter()
            .map(|c| from_json::<Passkey>(&c.passkey, "passkey").map(|p| p.cred_id().clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let (options, state) = webauthn
            .start_passkey_registration(
                user_handle(&owner),
                &owner.account(),
                &owner.account(),
                Some(exclude),
            )
            .map_err(|e| {
                tracing::error!(error = %e, "a WebAuthn registration does not start");
                DomainError::Internal
            })?;
        let registration_id = new_factor_id();
        let state = to_json::<PasskeyRegistration>(&state)?;
        let mut tx = self
            .open_ceremony(
                &owner,
                CeremonyKind::Registration,
                registration_id.clone(),
                state,
                now,
            )
            .await?;
        let detail = json!({ "factorId": registration_id, "kind": "webauthn" });
        tx.append_audit(&self.event(caller, "mfa.enrol", owner.tenant(), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(owner = %key, factor_id = %registration_id, "WebAuthn registration started");
        Ok(WebauthnRegistration {
            registration_id,
            options,
        })
    }

    /// Finishes a registration with the authenticator's answer: the key is a confirmed factor
    /// from now on. A wrong answer counts as a failed second factor. Audited (`mfa.confirm`).
    pub async fn finish_webauthn_registration(
        &self,
        caller: &Caller,
        registration_id: &str,
        name: &str,
        credential: &serde_json::Value,
    ) -> Result<WebauthnKey, DomainError> {
        let webauthn = self.webauthn()?;
        let name = checked_name(name)?;
        let owner = owner_of(caller)?;
        let key = owner.key();
        let at = self.clock.now();
        let held = self
            .store
            .mfa_factors(&key)
            .await?
            .into_iter()
            .filter(|f| !abandoned(f, at))
            .count();
        if held >= MAX_FACTORS {
            return Err(DomainError::Quota {
                what: "second factors (delete an unused one first)",
                max: MAX_FACTORS as u32,
            });
        }
        let not_found =
            || DomainError::MfaFactorNotFound(registration_id.chars().take(40).collect());
        let mut tx = self.store.begin().await?;
        self.refuse_if_locked(&mut tx, &key, at).await?;
        let state = match tx
            .take_webauthn_ceremony(&key, CeremonyKind::Registration, registration_id, at)
            .await?
        {
            TakenCeremony::Taken(state) => {
                from_json::<PasskeyRegistration>(&state, "registration")?
            }
            TakenCeremony::Used | TakenCeremony::Missing => return Err(not_found()),
        };
        // An answer that is not a credential is a wrong second factor like any other.
        let answer = serde_json::from_value::<RegisterPublicKeyCredential>(credential.clone())
            .map_err(|e| e.to_string())
            .and_then(|c| {
                webauthn
                    .finish_passkey_registration(&c, &state)
                    .map_err(|e| e.to_string())
            });
        let registered = match answer {
            Ok(passkey) => {
                let credential_id = URL_SAFE_NO_PAD.encode(passkey.cred_id().as_ref() as &[u8]);
                if tx.webauthn_credential_exists(&credential_id).await? {
                    tracing::warn!(owner = %key, "a security key already registered was offered again");
                    None
                } else {
                    Some((passkey, credential_id))
                }
            }
            Err(e) => {
                tracing::warn!(owner = %key, error = %e, "a WebAuthn registration was refused");
                None
            }
        };
        let Some((passkey, credential_id)) = registered else {
            let refusal = DomainError::MfaInvalid;
            self.count_failure(
                &mut tx,
                caller,
                &owner,
                "mfa.confirm",
                "mfa.confirm",
                "webauthn",
                &refusal,
                at,
            )
            .await?;
            tx.commit().await?;
            return Err(refusal);
        };
        let record = WebauthnCredentialRecord {
            factor_id: registration_id.to_owned(),
            owner: key.clone(),
            name: name.clone(),
            credential_id,
            passkey: to_json(&passkey)?,
            sign_count: 0,
            created_at: at,
            last_used_at: None,
        };
        tx.insert_webauthn_credential(&record).await?;
        tx.clear_mfa_failures(&key).await?;
        let detail = json!({ "factorId": registration_id, "kind": "webauthn", "name": name });
        tx.append_audit(&self.event(caller, "mfa.confirm", owner.tenant(), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(owner = %key, factor_id = registration_id, "security key registered");
        Ok(WebauthnKey {
            factor_id: registration_id.to_owned(),
            name,
        })
    }

    /// A step-up challenge for the caller's principal's security keys: what
    /// `navigator.credentials.get` takes (`publicKey`).
    pub async fn webauthn_challenge(
        &self,
        caller: &Caller,
    ) -> Result<RequestChallengeResponse, DomainError> {
        let webauthn = self.webauthn()?;
        let owner = owner_of(caller)?;
        let passkeys = self
            .store
            .webauthn_credentials(&owner.key())
            .await?
            .iter()
            .map(|c| from_json::<Passkey>(&c.passkey, "passkey"))
            .collect::<Result<Vec<_>, _>>()?;
        if passkeys.is_empty() {
            return Err(DomainError::MfaNotEnrolled {
                operation: "a security key step-up",
            });
        }
        let (options, state) = webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(|e| {
                tracing::error!(error = %e, "a WebAuthn challenge does not start");
                DomainError::Internal
            })?;
        let challenge = challenge_of_options(&options).ok_or(DomainError::Internal)?;
        let state = to_json::<PasskeyAuthentication>(&state)?;
        let tx = self
            .open_ceremony(
                &owner,
                CeremonyKind::Authentication,
                challenge,
                state,
                self.clock.now(),
            )
            .await?;
        tx.commit().await?;
        Ok(options)
    }

    /// Checks an assertion in `tx`: takes its challenge (once), verifies it against the
    /// challenge's state, and raises the key's counter. `Ok(Err(refusal))` for a refused one.
    pub(super) async fn check_webauthn_assertion(
        &self,
        tx: &mut WriteTx,
        owner_key: &str,
        assertion: &PublicKeyCredential,
        challenge: &str,
        at: DateTime<Utc>,
    ) -> Result<Result<String, DomainError>, DomainError> {
        let webauthn = self.webauthn()?;
        let state = match tx
            .take_webauthn_ceremony(owner_key, CeremonyKind::Authentication, challenge, at)
            .await?
        {
            TakenCeremony::Taken(state) => from_json::<PasskeyAuthentication>(&state, "challenge")?,
            TakenCeremony::Used => return Ok(Err(DomainError::MfaReplayed)),
            TakenCeremony::Missing => return Ok(Err(DomainError::MfaInvalid)),
        };
        let result = match webauthn.finish_passkey_authentication(assertion, &state) {
            Ok(result) if result.user_verified() => result,
            Ok(_) => {
                tracing::warn!(owner = %owner_key, "a security key answered without user verification");
                return Ok(Err(DomainError::MfaInvalid));
            }
            Err(e) => {
                tracing::warn!(owner = %owner_key, error = %e, "a WebAuthn assertion was refused");
                return Ok(Err(DomainError::MfaInvalid));
            }
        };
        let credential_id = URL_SAFE_NO_PAD.encode(result.cred_id().as_ref() as &[u8]);
        let Some(stored) = tx.webauthn_credential(owner_key, &credential_id).await? else {
            // Deleted after the challenge was made.
            return Ok(Err(DomainError::MfaInvalid));
        };
        let mut passkey = from_json::<Passkey>(&stored.passkey, "passkey")?;
        passkey.update_credential(&result);
        let counter = i64::from(result.counter());
        if !tx
            .use_webauthn_credential(
                owner_key,
                &stored.factor_id,
                &to_json(&passkey)?,
                counter,
                at,
            )
            .await?
        {
            tracing::warn!(owner = %owner_key, factor_id = %stored.factor_id, "a security key's signature counter did not grow: a cloned key?");
            return Ok(Err(DomainError::MfaInvalid));
        }
        Ok(Ok(stored.factor_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_compared_in_one_form() {
        let raw = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert_eq!(canonical_challenge(&raw).as_deref(), Some(raw.as_str()));
        assert_eq!(
            canonical_challenge(&format!("{raw}=")).as_deref(),
            Some(raw.as_str())
        );
        assert_eq!(canonical_challenge("not base64!"), None);
        assert_eq!(canonical_challenge(""), None);
    }

    #[test]
    fn assertions_that_do_not_read_are_none() {
        assert!(parse_assertion("").is_none());
        assert!(parse_assertion("bm90IGpzb24").is_none());
        let no_challenge = URL_SAFE_NO_PAD.encode(
            json!({
                "id": "AA", "rawId": "AA", "type": "public-key",
                "response": {
                    "authenticatorData": "AA", "signature": "AA", "userHandle": null,
                    "clientDataJSON": URL_SAFE_NO_PAD.encode(br#"{"type":"webauthn.get"}"#),
                },
            })
            .to_string(),
        );
        assert!(parse_assertion(&no_challenge).is_none());
        let challenge = URL_SAFE_NO_PAD.encode([9u8; 32]);
        let client_data = json!({ "type": "webauthn.get", "challenge": challenge }).to_string();
        let with_challenge = URL_SAFE_NO_PAD.encode(
            json!({
                "id": "AA", "rawId": "AA", "type": "public-key",
                "response": {
                    "authenticatorData": "AA", "signature": "AA", "userHandle": null,
                    "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data),
                },
            })
            .to_string(),
        );
        assert_eq!(
            parse_assertion(&with_challenge).map(|(_, c)| c),
            Some(challenge)
        );
    }

    #[test]
    fn names_are_short_printable_text() {
        assert_eq!(checked_name("  YubiKey 5 ").unwrap(), "YubiKey 5");
        for bad in ["", "   ", "a\nb", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert!(checked_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_handles_are_stable_per_principal() {
        let a = MfaOwner::Admin("tok_1".into());
        let b = MfaOwner::Admin("tok_2".into());
        assert_eq!(user_handle(&a), user_handle(&a));
        assert_ne!(user_handle(&a), user_handle(&b));
    }
}
