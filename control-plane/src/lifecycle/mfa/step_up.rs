//! The step-up check: does this request for a sensitive operation carry a fresh second factor
//! of its principal's? Failures count against the principal (all its factors together: a code
//! is tried against each of them, so a count per factor would give a brute force one try per
//! factor): five in five minutes lock its step-ups until the window passes.
//!
//! The check, the use of the code and the count run in one audited transaction: on PostgreSQL
//! it holds the audit log's advisory lock, so replicas take turns; the code's step is taken
//! with `UPDATE ... WHERE last_step < $step` all the same, so a replay is refused by the row
//! count whatever the order.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::super::{DomainError, KeyLifecycle};
use super::seal::SealKey;
use super::totp::{TotpSeed, step_of};
use super::{MfaOwner, MfaProof, Proof, recovery};
use crate::caller::Caller;
use crate::config::SensitiveOperation;
use crate::store::{MfaFactorRecord, WriteTx};

/// Failed step-ups a principal gets per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: i64 = 5;
/// How long failures count, from the first of a window.
pub const FAILURE_WINDOW: Duration = Duration::minutes(5);

/// What a presented factor turned out to be, worked out before the transaction (the seeds are
/// opened with the seal key from Vault, which no transaction waits for).
enum Checked {
    /// A confirmed factor's code of this step.
    Totp {
        factor_id: String,
        step: i64,
    },
    Recovery {
        code_hash: String,
    },
    /// An assertion that reads, and the challenge its client data names (checked in the
    /// transaction, which takes the challenge).
    Webauthn {
        assertion: Box<webauthn_rs::prelude::PublicKeyCredential>,
        challenge: String,
    },
    NoMatch,
}

impl KeyLifecycle {
    /// The seal key of TOTP seeds: read from Vault (created there on first use) once.
    pub(super) async fn mfa_seal(&self) -> Result<&SealKey, DomainError> {
        Ok(self
            .mfa_seal
            .get_or_try_init(|| SealKey::load_or_create(self.vault.as_ref()))
            .await?)
    }

    /// The seed of `factor`, opened; a seed that does not open is the server's failure.
    pub(super) fn open_seed(
        &self,
        seal: &SealKey,
        factor: &MfaFactorRecord,
    ) -> Result<TotpSeed, DomainError> {
        seal.open(&factor.factor_id, &factor.owner, &factor.sealed_seed)
            .map(TotpSeed::from_bytes)
            .ok_or_else(|| {
                tracing::error!(factor_id = %factor.factor_id, "a sealed TOTP seed does not open (another owner's row, or another seal key)");
                DomainError::Internal
            })
    }

    /// Refuses `operation` unless the policy of `caller`'s principal does not name it, or
    /// `proof` is a fresh second factor of that principal. keyward itself never steps up.
    pub async fn step_up(
        &self,
        caller: &Caller,
        operation: SensitiveOperation,
        proof: Option<&MfaProof>,
    ) -> Result<(), DomainError> {
        let Some(owner) = MfaOwner::of(caller) else {
            return Ok(());
        };
        let policy = match &owner {
            MfaOwner::Tenant(tenant) => self.mfa_policy(tenant).await?,
            MfaOwner::Admin(_) => self.deployment_mfa_policy(),
        };
        if !policy.require_for.contains(&operation) {
            return Ok(());
        }
        // A web UI session whose identity provider did MFA recently enough (`[oidc]`).
        if caller.idp_mfa {
            let detail = json!({ "operation": operation.as_str(), "method": "idp" });
            let mut tx = self.store.begin().await?;
            tx.append_audit(&self.event(caller, "mfa.step_up", owner.tenant(), "success", detail))
                .await?;
            tx.commit().await?;
            metrics::counter!("keyward_mfa_step_ups_total", "outcome" => "accepted").increment(1);
            return Ok(());
        }
        self.verify_second_factor(caller, &owner, operation.as_str(), proof)
            .await
    }

    /// Checks `proof` against `owner`'s confirmed factors for `purpose` (an operation's name,
    /// or `mfa.enrol` / `mfa.delete`): takes the code, or counts and audits the failure.
    pub(super) async fn verify_second_factor(
        &self,
        caller: &Caller,
        owner: &MfaOwner,
        purpose: &'static str,
        proof: Option<&MfaProof>,
    ) -> Result<(), DomainError> {
        let key = owner.key();
        let factors: Vec<MfaFactorRecord> = self
            .store
            .mfa_factors(&key)
            .await?
            .into_iter()
            .filter(|f| f.confirmed_at.is_some())
            .collect();
        if factors.is_empty() {
            return Err(DomainError::MfaNotEnrolled { operation: purpose });
        }
        let Some(proof) = proof else {
            return Err(DomainError::MfaRequired { operation: purpose });
        };
        let presented = proof.parse();
        let method = presented.method();
        let at = self.clock.now();
        let checked = match presented {
            Proof::Totp(code) => {
                let seal = self.mfa_seal().await?;
                let now_step = step_of(at);
                let mut found = Checked::NoMatch;
                for factor in factors.iter().filter(|f| f.kind == "totp") {
                    // A seed that does not open (a row copied from another owner) matches
                    // nothing; `open_seed` logs it.
                    let Ok(seed) = self.open_seed(seal, factor) else {
                        continue;
                    };
                    if let Some(step) = seed.matching_step(code, now_step) {
                        found = Checked::Totp {
                            factor_id: factor.factor_id.clone(),
                            step: i64::try_from(step).map_err(|_| DomainError::Internal)?,
                        };
                        break;
                    }
                }
                found
            }
            Proof::Recovery(code) => match recovery::hash(&key, code) {
                Some(code_hash) => Checked::Recovery { code_hash },
                None => Checked::NoMatch,
            },
            Proof::Webauthn(encoded) => match super::webauthn::parse_assertion(encoded) {
                Some((assertion, challenge)) => Checked::Webauthn {
                    assertion: Box::new(assertion),
                    challenge,
                },
                None => Checked::NoMatch,
            },
            Proof::Malformed => Checked::NoMatch,
        };

        let mut tx = self.store.begin().await?;
        self.refuse_if_locked(&mut tx, &key, at).await?;
        let taken = match checked {
            Checked::Totp { factor_id, step } => {
                if tx.take_mfa_step(&factor_id, step, at).await? {
                    Ok(factor_id)
                } else {
                    Err(DomainError::MfaReplayed)
                }
            }
            Checked::Recovery { code_hash } => tx
                .use_mfa_recovery_code(&key, &code_hash, at)
                .await?
                .ok_or(DomainError::MfaInvalid),
            Checked::Webauthn {
                assertion,
                challenge,
            } => {
                self.check_webauthn_assertion(&mut tx, &key, &assertion, &challenge, at)
                    .await?
            }
            Checked::NoMatch => Err(DomainError::MfaInvalid),
        };
        match taken {
            Ok(factor_id) => {
                tx.clear_mfa_failures(&key).await?;
                let detail =
                    json!({ "operation": purpose, "method": method, "factorId": factor_id });
                tx.append_audit(&self.event(
                    caller,
                    "mfa.step_up",
                    owner.tenant(),
                    "success",
                    detail,
                ))
                .await?;
                tx.commit().await?;
                metrics::counter!("keyward_mfa_step_ups_total", "outcome" => "accepted")
                    .increment(1);
                tracing::info!(owner = %key, operation = purpose, method, "second factor accepted");
                Ok(())
            }
            Err(refusal) => {
                self.count_failure(
                    &mut tx,
                    caller,
                    owner,
                    "mfa.step_up",
                    purpose,
                    method,
                    &refusal,
                    at,
                )
                .await?;
                tx.commit().await?;
                Err(refusal)
            }
        }
    }

    /// `429 mfa_locked` while `owner` has used up its failures in the current window. Refused
    /// attempts in a lockout are not audited one by one (the lockout was): an attacker cannot
    /// grow the audit log by repeating them.
    pub(super) async fn refuse_if_locked(
        &self,
        tx: &mut WriteTx,
        owner_key: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let (failures, window_start) = tx
            .mfa_failures_since(owner_key, at - FAILURE_WINDOW)
            .await?;
        if failures >= MAX_FAILURES {
            let until = window_start.unwrap_or(at) + FAILURE_WINDOW;
            let retry_after_secs = u64::try_from((until - at).num_seconds().max(1)).unwrap_or(1);
            metrics::counter!("keyward_mfa_step_ups_total", "outcome" => "locked").increment(1);
            return Err(DomainError::MfaLocked { retry_after_secs });
        }
        Ok(())
    }

    /// Counts a failed second factor in `tx` and audits it (`action`, refused), and the
    /// lockout when this failure starts one (`mfa.locked`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn count_failure(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        owner: &MfaOwner,
        action: &'static str,
        purpose: &'static str,
        method: &'static str,
        refusal: &DomainError,
        at: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let key = owner.key();
        let failures = tx.record_mfa_failure(&key, at, at - FAILURE_WINDOW).await?;
        let detail = json!({
            "operation": purpose,
            "method": method,
            "code": refusal.code(),
            "failures": failures,
        });
        tx.append_audit(&self.event(caller, action, owner.tenant(), "refused", detail))
            .await?;
        metrics::counter!("keyward_mfa_step_ups_total", "outcome" => "refused").increment(1);
        tracing::warn!(owner = %key, operation = purpose, method, code = refusal.code(), failures, "second factor refused");
        if failures == MAX_FAILURES {
            let detail = json!({
                "failures": failures,
                "windowSeconds": FAILURE_WINDOW.num_seconds(),
            });
            tx.append_audit(&self.event(caller, "mfa.locked", owner.tenant(), "refused", detail))
                .await?;
            tracing::warn!(owner = %key, "step-ups locked after repeated failures");
        }
        Ok(())
    }
}
