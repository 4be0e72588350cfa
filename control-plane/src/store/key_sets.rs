//! Key sets: the public side of each (tenant, kind) key pair — generation, fingerprint, the
//! Vault KV version of its private key, rotation and grace times, the session epoch and the
//! fingerprints denied since. Never private material.

use chrono::{DateTime, Utc};
use keyward_common::{Fingerprint, KeyAlgorithm, KeyKind, TenantId};
use serde::Serialize;
use sqlx::any::AnyRow;

use super::times::{optional_text, optional_time, text, time};
use super::{Store, StoreError, WriteTx, get, json_column, parse, parse_optional, query_error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Revoked,
}

impl KeyState {
    fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Revoked => "revoked",
        }
    }
}

/// The public side of one key set: what hosts and people may know. No private material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetRecord {
    pub tenant_id: TenantId,
    pub kind: KeyKind,
    pub algorithm: KeyAlgorithm,
    pub generation: i64,
    pub state: KeyState,
    pub public_key: String,
    pub fingerprint: Fingerprint,
    /// The Vault KV version that holds this generation's private key.
    pub vault_version: i64,
    pub rotation_policy: String,
    pub created_at: DateTime<Utc>,
    pub last_rotated: DateTime<Utc>,
    pub next_rotation: DateTime<Utc>,
    pub downloaded_at: Option<DateTime<Utc>>,
    /// The key replaced by the last rotation, valid until `grace_until`.
    pub previous_public_key: Option<String>,
    pub previous_fingerprint: Option<Fingerprint>,
    pub grace_until: Option<DateTime<Utc>>,
    /// Raised on every regenerate and revoke; agents end the user's sessions when it rises.
    pub session_epoch: i64,
    /// Fingerprints keyward issued for this key set and then replaced or revoked, newest first.
    pub denied_fingerprints: Vec<Fingerprint>,
}

impl Store {
    pub async fn key_set(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<Option<KeySetRecord>, StoreError> {
        sqlx::query("SELECT * FROM key_sets WHERE tenant_id = $1 AND kind = $2")
            .bind(tenant.as_str())
            .bind(kind.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a key set"))?
            .map(|row| key_set_from_row(&row))
            .transpose()
    }

    /// Every key set, ordered by tenant and kind.
    pub async fn key_sets(&self) -> Result<Vec<KeySetRecord>, StoreError> {
        sqlx::query("SELECT * FROM key_sets ORDER BY tenant_id, kind")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("listing key sets"))?
            .iter()
            .map(key_set_from_row)
            .collect()
    }
}

impl WriteTx {
    /// Inserts or replaces the key set of (tenant, kind).
    pub async fn put_key_set(&mut self, k: &KeySetRecord) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM key_sets WHERE tenant_id = $1 AND kind = $2")
            .bind(k.tenant_id.as_str())
            .bind(k.kind.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("replacing a key set"))?;
        self.insert_key_set(k).await
    }

    /// Replaces the key set if it is still at `previous_generation`; false (and nothing
    /// written) when another change replaced it first.
    pub async fn replace_key_set(
        &mut self,
        previous_generation: i64,
        k: &KeySetRecord,
    ) -> Result<bool, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM key_sets WHERE tenant_id = $1 AND kind = $2 AND generation = $3",
        )
        .bind(k.tenant_id.as_str())
        .bind(k.kind.as_str())
        .bind(previous_generation)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("replacing a key set"))?;
        if deleted.rows_affected() != 1 {
            return Ok(false);
        }
        self.insert_key_set(k).await?;
        Ok(true)
    }

    async fn insert_key_set(&mut self, k: &KeySetRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO key_sets (tenant_id, kind, algorithm, generation, state, public_key, \
             fingerprint, vault_version, rotation_policy, created_at, last_rotated, next_rotation, \
             downloaded_at, previous_public_key, previous_fingerprint, grace_until, \
             session_epoch, denied_fingerprints) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(k.tenant_id.as_str())
        .bind(k.kind.as_str())
        .bind(k.algorithm.as_str())
        .bind(k.generation)
        .bind(k.state.as_str())
        .bind(&k.public_key)
        .bind(k.fingerprint.as_str())
        .bind(k.vault_version)
        .bind(&k.rotation_policy)
        .bind(text(k.created_at))
        .bind(text(k.last_rotated))
        .bind(text(k.next_rotation))
        .bind(optional_text(k.downloaded_at))
        .bind(k.previous_public_key.clone())
        .bind(k.previous_fingerprint.as_ref().map(|f| f.as_str().to_owned()))
        .bind(optional_text(k.grace_until))
        .bind(k.session_epoch)
        .bind(serde_json::to_string(&k.denied_fingerprints).unwrap_or_else(|_| "[]".into()))
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("writing a key set"))?;
        Ok(())
    }

    /// Marks the private key of `generation` as downloaded, unless it already was (or the
    /// generation moved on). Returns whether this call made the claim.
    pub async fn claim_download(
        &mut self,
        tenant: &TenantId,
        kind: KeyKind,
        generation: i64,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE key_sets SET downloaded_at = $1 WHERE tenant_id = $2 AND kind = $3 \
             AND generation = $4 AND state = 'active' AND downloaded_at IS NULL",
        )
        .bind(text(at))
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .bind(generation)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a download"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Raises the key set's session epoch: its hosts' agents check the user's live sessions again
    /// (a certificate that opened one was revoked). False when there is no such key set.
    pub async fn raise_session_epoch(
        &mut self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE key_sets SET session_epoch = session_epoch + 1 \
             WHERE tenant_id = $1 AND kind = $2",
        )
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("raising a session epoch"))?;
        Ok(done.rows_affected() == 1)
    }
}

pub(super) fn key_set_from_row(row: &AnyRow) -> Result<KeySetRecord, StoreError> {
    let state: String = get(row, "state")?;
    Ok(KeySetRecord {
        tenant_id: parse(row, "tenant_id")?,
        kind: parse(row, "kind")?,
        algorithm: parse(row, "algorithm")?,
        generation: get(row, "generation")?,
        state: match state.as_str() {
            "active" => KeyState::Active,
            "revoked" => KeyState::Revoked,
            other => {
                return Err(StoreError::Corrupt {
                    what: "state",
                    detail: other.to_owned(),
                });
            }
        },
        public_key: get(row, "public_key")?,
        fingerprint: parse(row, "fingerprint")?,
        vault_version: get(row, "vault_version")?,
        rotation_policy: get(row, "rotation_policy")?,
        created_at: time(row, "created_at")?,
        last_rotated: time(row, "last_rotated")?,
        next_rotation: time(row, "next_rotation")?,
        downloaded_at: optional_time(row, "downloaded_at")?,
        previous_public_key: get(row, "previous_public_key")?,
        previous_fingerprint: parse_optional(row, "previous_fingerprint")?,
        grace_until: optional_time(row, "grace_until")?,
        session_epoch: get(row, "session_epoch")?,
        denied_fingerprints: json_column(row, "denied_fingerprints")?,
    })
}
