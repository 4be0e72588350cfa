//! Enrolling a TOTP factor: a new seed, sealed into SQL unconfirmed and shown once (base32, an
//! `otpauth://` URI, its QR code); confirmed by a first code, which hands out ten recovery codes
//! once. A principal that already has a confirmed factor steps up with it to enrol another or to
//! delete one: a stolen token alone cannot add its own factor or remove the owner's.

use chrono::{DateTime, Utc};
use serde_json::json;
use zeroize::Zeroizing;

use super::super::{DomainError, KeyLifecycle};
use super::totp::{TotpSeed, qr_svg, step_of};
use super::{MfaOwner, MfaProof, recovery};
use crate::caller::Caller;
use crate::store::MfaFactorRecord;
use keyward_common::TenantId;

/// Factors a principal can hold, confirmed or not.
pub const MAX_FACTORS: usize = 5;
/// An enrolment not confirmed within this is gone: it no longer counts toward
/// [`MAX_FACTORS`], cannot be confirmed, and is deleted at the principal's next enrolment.
pub const ENROLMENT_TTL: chrono::Duration = chrono::Duration::minutes(15);

/// Whether `factor` is an enrolment left unconfirmed past [`ENROLMENT_TTL`] at `now`.
pub(super) fn abandoned(factor: &MfaFactorRecord, now: DateTime<Utc>) -> bool {
    factor.confirmed_at.is_none() && now - factor.created_at > ENROLMENT_TTL
}
/// What authenticator apps show as the issuer.
const ISSUER: &str = "keyward";

/// A new, unconfirmed TOTP factor and what sets it up in an authenticator app: shown once.
pub struct TotpEnrolment {
    pub factor_id: String,
    pub secret: Zeroizing<String>,
    pub otpauth_uri: Zeroizing<String>,
    pub qr_svg: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrolment")
            .field("factor_id", &self.factor_id)
            .finish_non_exhaustive()
    }
}

/// A factor as listed: never its seed.
#[derive(Debug, Clone)]
pub struct MfaFactor {
    pub factor_id: String,
    pub kind: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub recovery_codes_left: i64,
}

impl From<MfaFactorRecord> for MfaFactor {
    fn from(r: MfaFactorRecord) -> Self {
        Self {
            factor_id: r.factor_id,
            kind: r.kind,
            name: r.name,
            created_at: r.created_at,
            confirmed_at: r.confirmed_at,
            last_used_at: r.last_used_at,
            recovery_codes_left: r.recovery_codes_left,
        }
    }
}

pub(super) fn owner_of(caller: &Caller) -> Result<MfaOwner, DomainError> {
    MfaOwner::of(caller).ok_or(DomainError::Internal)
}

/// A factor id: `mfa_` and 64 random bits.
pub(super) fn new_factor_id() -> String {
    format!("mfa_{}", hex::encode(rand::random::<[u8; 8]>()))
}

impl KeyLifecycle {
    /// The caller's principal's factors, oldest first.
    pub async fn mfa_factors(&self, caller: &Caller) -> Result<Vec<MfaFactor>, DomainError> {
        let owner = owner_of(caller)?;
        Ok(self
            .store
            .mfa_factors(&owner.key())
            .await?
            .into_iter()
            .map(MfaFactor::from)
            .collect())
    }

    /// A tenant's own second factors (never their secrets), as its data export lists them.
    pub async fn tenant_mfa_factors(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<MfaFactor>, DomainError> {
        Ok(self
            .store
            .mfa_factors(&MfaOwner::Tenant(tenant.clone()).key())
            .await?
            .into_iter()
            .map(MfaFactor::from)
            .collect())
    }

    /// Starts a TOTP factor for the caller's principal. Audited (`mfa.enrol`); with a confirmed
    /// factor already, only with a fresh code of it.
    pub async fn enrol_totp(
        &self,
        caller: &Caller,
        proof: Option<&MfaProof>,
    ) -> Result<TotpEnrolment, DomainError> {
        let owner = owner_of(caller)?;
        let key = owner.key();
        let now = self.clock.now();
        let (abandoned, factors): (Vec<_>, Vec<_>) = self
            .store
            .mfa_factors(&key)
            .await?
            .into_iter()
            .partition(|f| abandoned(f, now));
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
        let seed = TotpSeed::generate();
        let factor_id = new_factor_id();
        let sealed = self
            .mfa_seal()
            .await?
            .seal(&factor_id, &key, seed.bytes())
            .ok_or(DomainError::Internal)?;
        let record = MfaFactorRecord {
            factor_id: factor_id.clone(),
            owner: key.clone(),
            kind: "totp".to_owned(),
            name: None,
            sealed_seed: sealed,
            last_step: 0,
            created_at: now,
            confirmed_at: None,
            last_used_at: None,
            recovery_codes_left: 0,
        };
        let mut tx = self.store.begin().await?;
        for old in &abandoned {
            tx.delete_mfa_factor(&key, &old.factor_id).await?;
        }
        tx.insert_mfa_factor(&record).await?;
        let expired: Vec<&str> = abandoned.iter().map(|f| f.factor_id.as_str()).collect();
        let detail = json!({ "factorId": factor_id, "kind": "totp", "expiredDeleted": expired });
        tx.append_audit(&self.event(caller, "mfa.enrol", owner.tenant(), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(owner = %key, factor_id = %factor_id, "TOTP factor enrolled (unconfirmed)");
        let otpauth_uri = seed.otpauth_uri(ISSUER, &owner.account());
        Ok(TotpEnrolment {
            factor_id,
            secret: seed.base32(),
            qr_svg: qr_svg(&otpauth_uri),
            otpauth_uri,
        })
    }

    /// Confirms a TOTP factor with a code of it, and returns its recovery codes (once).
    /// Audited (`mfa.confirm`); a wrong code counts as a failed second factor.
    pub async fn confirm_totp(
        &self,
        caller: &Caller,
        factor_id: &str,
        code: &str,
    ) -> Result<Vec<Zeroizing<String>>, DomainError> {
        let owner = owner_of(caller)?;
        let key = owner.key();
        let factor = self
            .store
            .mfa_factors(&key)
            .await?
            .into_iter()
            .find(|f| f.factor_id == factor_id && !abandoned(f, self.clock.now()))
            .ok_or_else(|| DomainError::MfaFactorNotFound(factor_id.chars().take(40).collect()))?;
        if factor.confirmed_at.is_some() {
            return Err(DomainError::MfaFactorConfirmed);
        }
        let seed = self.open_seed(self.mfa_seal().await?, &factor)?;
        let at = self.clock.now();
        let step = seed.matching_step(code.trim(), step_of(at));
        let codes = recovery::new_codes();
        let hashes: Vec<String> = codes
            .iter()
            .filter_map(|c| recovery::hash(&key, c))
            .collect();
        let mut tx = self.store.begin().await?;
        self.refuse_if_locked(&mut tx, &key, at).await?;
        let confirmed = match step {
            Some(step) => {
                let step = i64::try_from(step).map_err(|_| DomainError::Internal)?;
                tx.confirm_mfa_factor(&key, factor_id, step, at, &hashes)
                    .await?
            }
            None => false,
        };
        if !confirmed {
            let refusal = DomainError::MfaInvalid;
            self.count_failure(
                &mut tx,
                caller,
                &owner,
                "mfa.confirm",
                "mfa.confirm",
                "totp",
                &refusal,
                at,
            )
            .await?;
            tx.commit().await?;
            return Err(refusal);
        }
        tx.clear_mfa_failures(&key).await?;
        let detail = json!({ "factorId": factor_id, "kind": "totp", "recoveryCodes": codes.len() });
        tx.append_audit(&self.event(caller, "mfa.confirm", owner.tenant(), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(owner = %key, factor_id, "TOTP factor confirmed");
        Ok(codes)
    }

    /// Deletes one of the caller's principal's factors. With a confirmed factor, only with a
    /// fresh code (of any of its confirmed factors). Audited (`mfa.delete`).
    pub async fn delete_mfa_factor(
        &self,
        caller: &Caller,
        factor_id: &str,
        proof: Option<&MfaProof>,
    ) -> Result<(), DomainError> {
        let owner = owner_of(caller)?;
        let key = owner.key();
        let factors = self.store.mfa_factors(&key).await?;
        let not_found = || DomainError::MfaFactorNotFound(factor_id.chars().take(40).collect());
        if !factors.iter().any(|f| f.factor_id == factor_id) {
            return Err(not_found());
        }
        if factors.iter().any(|f| f.confirmed_at.is_some()) {
            self.verify_second_factor(caller, &owner, "mfa.delete", proof)
                .await?;
        }
        let mut tx = self.store.begin().await?;
        if !tx.delete_mfa_factor(&key, factor_id).await? {
            return Err(not_found());
        }
        let detail = json!({ "factorId": factor_id });
        tx.append_audit(&self.event(caller, "mfa.delete", owner.tenant(), "success", detail))
            .await?;
        tx.commit().await?;
        tracing::info!(owner = %key, factor_id, "second factor deleted");
        Ok(())
    }
}
