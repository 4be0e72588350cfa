//! Key sets: the public side of each (tenant, kind) key pair — generation, fingerprint, the
//! Vault KV version of its private key, rotation and grace times, the session epoch and the
//! fingerprints denied since. Never private material.

use chrono::{DateTime, Utc};
use keyward_common::{Fingerprint, KeyAlgorithm, KeyKind, TenantId};
use serde::Serialize;
use sqlx::any::AnyRow;

use super::times::{optional_text, optional_time, text, time};
use super::{
    Store, StoreError, TenantRecord, WriteTx, get, json_column, parse, parse_optional, query_error,
};

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

/// A tenant, one of its key sets and its current host keys: [`Store::tenant_credentials`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCredentials {
    pub tenant: TenantRecord,
    pub key_set: Option<KeySetRecord>,
    pub host_keys: Vec<String>,
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

    /// What `GET .../ssh-credentials` shows, in one query: the tenant, its key set of `kind`
    /// (`None` when it has none), and the host keys of its live host that reported some most
    /// recently (the same choice as `api::hosts::tenant_host_keys`: the latest `last_seen`, hosts
    /// never seen last, ties to the highest host id). `None` when the tenant does not exist.
    pub async fn tenant_credentials(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<Option<TenantCredentials>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT k.*, t.tenant_id AS t_tenant_id, t.vps_ip AS t_vps_ip, \
             t.ssh_port AS t_ssh_port, t.tenant_user AS t_tenant_user, \
             t.admin_user AS t_admin_user, t.created_at AS t_created_at, \
             (SELECT h.host_keys FROM hosts h WHERE h.tenant_id = t.tenant_id \
              AND h.revoked_at IS NULL AND h.host_keys <> '[]' \
              ORDER BY h.last_seen IS NULL, h.last_seen DESC, h.host_id DESC LIMIT 1) \
             AS t_host_keys \
             FROM tenants t LEFT JOIN key_sets k ON k.tenant_id = t.tenant_id AND k.kind = $2 \
             WHERE t.tenant_id = $1",
        )
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a tenant's credentials"))?
        else {
            return Ok(None);
        };
        let port: i64 = get(&row, "t_ssh_port")?;
        let record = TenantRecord {
            tenant_id: parse(&row, "t_tenant_id")?,
            vps_ip: get(&row, "t_vps_ip")?,
            ssh_port: u16::try_from(port).map_err(|e| StoreError::Corrupt {
                what: "ssh_port",
                detail: e.to_string(),
            })?,
            tenant_user: parse(&row, "t_tenant_user")?,
            admin_user: parse(&row, "t_admin_user")?,
            created_at: time(&row, "t_created_at")?,
        };
        let has_key_set = get::<Option<String>>(&row, "kind")?.is_some();
        let key_set = if has_key_set {
            Some(key_set_from_row(&row)?)
        } else {
            None
        };
        let host_keys = match get::<Option<String>>(&row, "t_host_keys")? {
            Some(raw) => serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt {
                what: "host_keys",
                detail: e.to_string(),
            })?,
            None => Vec::new(),
        };
        Ok(Some(TenantCredentials {
            tenant: record,
            key_set,
            host_keys,
        }))
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
}

fn key_set_from_row(row: &AnyRow) -> Result<KeySetRecord, StoreError> {
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

#[cfg(test)]
mod tests {
    use keyward_common::HostId;

    use super::*;

    #[tokio::test]
    async fn credentials_choose_the_host_keys_the_hosts_view_would() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url, None).await.unwrap();
        let tenant: TenantId = "t1".parse().unwrap();
        assert_eq!(
            store
                .tenant_credentials(&tenant, KeyKind::Tenant)
                .await
                .unwrap(),
            None
        );
        let at = |s: &str| crate::clock::parse_iso8601(s).unwrap();
        let record = TenantRecord {
            tenant_id: tenant.clone(),
            vps_ip: "192.0.2.1".into(),
            ssh_port: 2222,
            tenant_user: "tenant".parse().unwrap(),
            admin_user: "kwadmin".parse().unwrap(),
            created_at: at("2026-01-01T00:00:00Z"),
        };
        let mut tx = store.begin().await.unwrap();
        tx.insert_tenant(&record).await.unwrap();
        // (host, host keys, last seen, revoked)
        let hosts = [
            (
                "h1",
                vec!["ssh-ed25519 A"],
                Some("2026-01-01T00:00:01Z"),
                false,
            ),
            (
                "h2",
                vec!["ssh-ed25519 B"],
                Some("2026-01-01T00:00:02Z"),
                false,
            ),
            (
                "h3",
                vec!["ssh-ed25519 C"],
                Some("2026-01-01T00:00:09Z"),
                true,
            ),
            ("h4", vec![], Some("2026-01-01T00:00:09Z"), false),
            ("h5", vec!["ssh-ed25519 E"], None, false),
        ];
        for (i, (host, _, _, _)) in hosts.iter().enumerate() {
            let id: HostId = host.parse().unwrap();
            tx.insert_host(
                &id,
                &tenant,
                at("2026-01-01T00:00:00Z"),
                &format!("hash{i}"),
                at("2026-01-02T00:00:00Z"),
            )
            .await
            .unwrap();
        }
        for (host, _, _, revoked) in &hosts {
            if *revoked {
                tx.revoke_host(&host.parse().unwrap(), at("2026-01-01T00:00:05Z"))
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
        for (host, keys, seen, _) in &hosts {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            store
                .record_hello(
                    &host.parse().unwrap(),
                    "0.1.0",
                    &keys,
                    at(seen.unwrap_or("2026-01-01T00:00:00Z")),
                )
                .await
                .unwrap();
            if seen.is_none() {
                sqlx::query("UPDATE hosts SET last_seen = NULL WHERE host_id = $1")
                    .bind(*host)
                    .execute(&store.pool)
                    .await
                    .unwrap();
            }
        }
        let got = store
            .tenant_credentials(&tenant, KeyKind::Tenant)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.tenant, record);
        assert_eq!(got.key_set, None);
        assert_eq!(got.host_keys, vec!["ssh-ed25519 B".to_owned()]);
        // What `api::hosts::tenant_host_keys` computes from the full host list.
        let expected = store
            .hosts(Some(&tenant))
            .await
            .unwrap()
            .into_iter()
            .filter(|h| h.revoked_at.is_none() && !h.host_keys.is_empty())
            .max_by(|a, b| a.last_seen.cmp(&b.last_seen))
            .map(|h| h.host_keys)
            .unwrap_or_default();
        assert_eq!(got.host_keys, expected);
    }
}
