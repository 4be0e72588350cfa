//! Second factors (`mfa_factors`), their recovery codes (`mfa_recovery_codes`), failed step-ups
//! per principal (`mfa_failures`) and tenants' own step-up policies (`mfa_policies`).
//!
//! What is secret never reaches SQL in clear: a TOTP seed is stored sealed (the lifecycle seals
//! it, `lifecycle::mfa::seal`), a recovery code as a hash. Taking a code is a conditional
//! `UPDATE` (`last_step < $step`, `used_at IS NULL`) whose row count says whether this request
//! was the one that took it, on every replica.

use chrono::{DateTime, Utc};
use keyward_common::TenantId;
use sqlx::any::AnyRow;

use super::times::{optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, parse, query_error};

/// A second factor, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaFactorRecord {
    pub factor_id: String,
    /// `tenant:{tenant_id}` or `admin:{token_id}`.
    pub owner: String,
    /// `totp` or `webauthn` (a security key, `mfa_webauthn_credentials`, listed here with the
    /// TOTP factors: always confirmed, no seed, its signature counter as `last_step`).
    pub kind: String,
    /// What its owner called it (security keys).
    pub name: Option<String>,
    /// base64 of nonce, ciphertext and tag.
    pub sealed_seed: String,
    /// The last RFC 6238 time step accepted (0: none yet).
    pub last_step: i64,
    pub created_at: DateTime<Utc>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Recovery codes not used yet.
    pub recovery_codes_left: i64,
}

/// A tenant's own step-up policy, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaPolicyRecord {
    pub tenant_id: TenantId,
    /// A JSON array of operation names.
    pub require_for: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

const FACTOR_COLUMNS: &str = "f.factor_id, f.owner, f.kind, f.sealed_seed, f.last_step, \
     f.created_at, f.confirmed_at, f.last_used_at, \
     (SELECT COUNT(*) FROM mfa_recovery_codes r \
      WHERE r.factor_id = f.factor_id AND r.used_at IS NULL) AS recovery_codes_left, \
     CAST(NULL AS TEXT) AS name";

/// Security keys in the shape of [`FACTOR_COLUMNS`].
const WEBAUTHN_FACTOR_COLUMNS: &str = "w.factor_id, w.owner, 'webauthn' AS kind, \
     '' AS sealed_seed, w.sign_count AS last_step, w.created_at, w.created_at AS confirmed_at, \
     w.last_used_at, 0 AS recovery_codes_left, w.name";

fn factor_from_row(row: &AnyRow) -> Result<MfaFactorRecord, StoreError> {
    Ok(MfaFactorRecord {
        factor_id: get(row, "factor_id")?,
        owner: get(row, "owner")?,
        kind: get(row, "kind")?,
        name: get(row, "name")?,
        sealed_seed: get(row, "sealed_seed")?,
        last_step: get(row, "last_step")?,
        created_at: time(row, "created_at")?,
        confirmed_at: optional_time(row, "confirmed_at")?,
        last_used_at: optional_time(row, "last_used_at")?,
        recovery_codes_left: get(row, "recovery_codes_left")?,
    })
}

impl Store {
    /// The owner's factors (TOTP and security keys), oldest first.
    pub async fn mfa_factors(&self, owner: &str) -> Result<Vec<MfaFactorRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {FACTOR_COLUMNS} FROM mfa_factors f WHERE f.owner = $1 \
             UNION ALL SELECT {WEBAUTHN_FACTOR_COLUMNS} FROM mfa_webauthn_credentials w \
             WHERE w.owner = $1 ORDER BY created_at, factor_id"
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading second factors"))?
        .iter()
        .map(factor_from_row)
        .collect()
    }

    pub async fn mfa_policy(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<MfaPolicyRecord>, StoreError> {
        sqlx::query(
            "SELECT tenant_id, require_for, updated_at FROM mfa_policies WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a step-up policy"))?
        .map(|row| {
            let raw: String = get(&row, "require_for")?;
            Ok(MfaPolicyRecord {
                tenant_id: parse(&row, "tenant_id")?,
                require_for: serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt {
                    what: "mfa_policies.require_for",
                    detail: e.to_string(),
                })?,
                updated_at: time(&row, "updated_at")?,
            })
        })
        .transpose()
    }
}

impl WriteTx {
    /// The owner's failed step-ups in a window that began after `since`, and when it began.
    pub async fn mfa_failures_since(
        &mut self,
        owner: &str,
        since: DateTime<Utc>,
    ) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let row = sqlx::query(
            "SELECT window_start, failures FROM mfa_failures \
             WHERE owner = $1 AND window_start > $2",
        )
        .bind(owner)
        .bind(text(since))
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query_error("reading failed step-ups"))?;
        match row {
            Some(row) => Ok((get(&row, "failures")?, Some(time(&row, "window_start")?))),
            None => Ok((0, None)),
        }
    }

    pub async fn insert_mfa_factor(&mut self, f: &MfaFactorRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mfa_factors (factor_id, owner, kind, sealed_seed, last_step, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&f.factor_id)
        .bind(&f.owner)
        .bind(&f.kind)
        .bind(&f.sealed_seed)
        .bind(f.last_step)
        .bind(text(f.created_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a second factor"))?;
        Ok(())
    }

    /// Confirms an unconfirmed factor with its first code's time step and stores its recovery
    /// code hashes; false when it is gone or was confirmed meanwhile.
    pub async fn confirm_mfa_factor(
        &mut self,
        owner: &str,
        factor_id: &str,
        step: i64,
        at: DateTime<Utc>,
        recovery_hashes: &[String],
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE mfa_factors SET confirmed_at = $1, last_step = $2, last_used_at = $1 \
             WHERE factor_id = $3 AND owner = $4 AND confirmed_at IS NULL AND last_step < $2",
        )
        .bind(text(at))
        .bind(step)
        .bind(factor_id)
        .bind(owner)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("confirming a second factor"))?
        .rows_affected()
            == 1;
        if !done {
            return Ok(false);
        }
        for hash in recovery_hashes {
            sqlx::query(
                "INSERT INTO mfa_recovery_codes (factor_id, owner, code_hash) VALUES ($1, $2, $3)",
            )
            .bind(factor_id)
            .bind(owner)
            .bind(hash)
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("writing recovery codes"))?;
        }
        Ok(true)
    }

    /// Takes `step` for a confirmed factor: true when no equal or later step was taken before
    /// (on any replica), false for a replay.
    pub async fn take_mfa_step(
        &mut self,
        factor_id: &str,
        step: i64,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE mfa_factors SET last_step = $1, last_used_at = $2 \
             WHERE factor_id = $3 AND confirmed_at IS NOT NULL AND last_step < $1",
        )
        .bind(step)
        .bind(text(at))
        .bind(factor_id)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("taking a TOTP time step"))?
        .rows_affected()
            == 1)
    }

    /// Uses a recovery code of a confirmed factor of `owner`, once: the factor it belonged to,
    /// or `None` (unknown or already used).
    pub async fn use_mfa_recovery_code(
        &mut self,
        owner: &str,
        code_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT factor_id FROM mfa_recovery_codes \
             WHERE owner = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(owner)
        .bind(code_hash)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query_error("reading a recovery code"))?;
        let Some(row) = row else { return Ok(None) };
        let factor_id: String = get(&row, "factor_id")?;
        let used = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $1 \
             WHERE owner = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(text(at))
        .bind(owner)
        .bind(code_hash)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("using a recovery code"))?
        .rows_affected()
            == 1;
        Ok(used.then_some(factor_id))
    }

    /// Deletes a factor of `owner` (a TOTP factor and its recovery codes, or a security key);
    /// false when it does not exist.
    pub async fn delete_mfa_factor(
        &mut self,
        owner: &str,
        factor_id: &str,
    ) -> Result<bool, StoreError> {
        let key =
            sqlx::query("DELETE FROM mfa_webauthn_credentials WHERE factor_id = $1 AND owner = $2")
                .bind(factor_id)
                .bind(owner)
                .execute(&mut *self.tx)
                .await
                .map_err(query_error("deleting a security key"))?
                .rows_affected();
        if key == 1 {
            return Ok(true);
        }
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE factor_id = $1 AND owner = $2")
            .bind(factor_id)
            .bind(owner)
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("deleting recovery codes"))?;
        Ok(
            sqlx::query("DELETE FROM mfa_factors WHERE factor_id = $1 AND owner = $2")
                .bind(factor_id)
                .bind(owner)
                .execute(&mut *self.tx)
                .await
                .map_err(query_error("deleting a second factor"))?
                .rows_affected()
                == 1,
        )
    }

    /// Deletes every factor of `owner` and its recovery codes and failures (a tenant offboarded):
    /// how many factors there were.
    pub async fn delete_owner_mfa(&mut self, owner: &str) -> Result<u64, StoreError> {
        for (statement, what) in [
            (
                "DELETE FROM mfa_recovery_codes WHERE owner = $1",
                "deleting recovery codes",
            ),
            (
                "DELETE FROM mfa_failures WHERE owner = $1",
                "deleting failed step-ups",
            ),
            (
                "DELETE FROM mfa_webauthn_ceremonies WHERE owner = $1",
                "deleting WebAuthn ceremonies",
            ),
        ] {
            sqlx::query(statement)
                .bind(owner)
                .execute(&mut *self.tx)
                .await
                .map_err(query_error(what))?;
        }
        let keys = sqlx::query("DELETE FROM mfa_webauthn_credentials WHERE owner = $1")
            .bind(owner)
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("deleting security keys"))?
            .rows_affected();
        Ok(keys
            + sqlx::query("DELETE FROM mfa_factors WHERE owner = $1")
                .bind(owner)
                .execute(&mut *self.tx)
                .await
                .map_err(query_error("deleting second factors"))?
                .rows_affected())
    }

    /// Counts a failed step-up of `owner`: a window that began at or before `window_floor` is
    /// over, and a new one begins `at`. The failures in the current window, this one included.
    pub async fn record_mfa_failure(
        &mut self,
        owner: &str,
        at: DateTime<Utc>,
        window_floor: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let counted = sqlx::query(
            "UPDATE mfa_failures SET failures = failures + 1 \
             WHERE owner = $1 AND window_start > $2",
        )
        .bind(owner)
        .bind(text(window_floor))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("counting a failed step-up"))?
        .rows_affected()
            == 1;
        if !counted {
            sqlx::query("DELETE FROM mfa_failures WHERE owner = $1")
                .bind(owner)
                .execute(&mut *self.tx)
                .await
                .map_err(query_error("ending a step-up window"))?;
            sqlx::query(
                "INSERT INTO mfa_failures (owner, window_start, failures) VALUES ($1, $2, 1)",
            )
            .bind(owner)
            .bind(text(at))
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("counting a failed step-up"))?;
        }
        let row = sqlx::query("SELECT failures FROM mfa_failures WHERE owner = $1")
            .bind(owner)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(query_error("reading failed step-ups"))?;
        get(&row, "failures")
    }

    /// A successful step-up clears the owner's failures.
    pub async fn clear_mfa_failures(&mut self, owner: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mfa_failures WHERE owner = $1")
            .bind(owner)
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("clearing failed step-ups"))?;
        Ok(())
    }

    pub async fn put_mfa_policy(&mut self, p: &MfaPolicyRecord) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mfa_policies WHERE tenant_id = $1")
            .bind(p.tenant_id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("replacing a step-up policy"))?;
        sqlx::query(
            "INSERT INTO mfa_policies (tenant_id, require_for, updated_at) VALUES ($1, $2, $3)",
        )
        .bind(p.tenant_id.as_str())
        .bind(p.require_for.to_string())
        .bind(text(p.updated_at))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a step-up policy"))?;
        Ok(())
    }

    pub async fn delete_mfa_policy(&mut self, tenant: &TenantId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mfa_policies WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("deleting a step-up policy"))?;
        Ok(())
    }
}
