//! The SQL store: tenants, key metadata, API tokens and the audit log.
//!
//! One implementation serves SQLite (the embedded default) and PostgreSQL (several replicas)
//! through sqlx's `Any` driver: the queries are written once, in the SQL both understand
//! (`$1` placeholders, text times, 64-bit integers), and each backend has its own migrations.
//! Why not one implementation per backend: the queries are identical, and two copies would drift.
//!
//! Every change is made in a [`WriteTx`], which appends its audit event in the same transaction;
//! the audit chain needs appends in order, so a `WriteTx` holds a process-wide lock on SQLite
//! and a transaction-scoped advisory lock on PostgreSQL.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use keyward_common::{KeyAlgorithm, KeyKind, TenantId, UnixUser};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

mod activity;
mod audit;
mod hosts;
mod logins;
mod retention;
mod rotation;
pub use activity::HostActivity;
pub use audit::{AuditFilter, AuditPage, AuditRecord, ChainVerdict, NewAuditEvent};
pub use hosts::{DriftRecord, HostRecord, HostReport};
pub use logins::{DayCount, KeyUsage, LoginFilter, LoginRecord, NewLogin, UnmanagedUse};
pub use retention::Expiring;
pub use rotation::{
    JobFailure, JobRecord, RotationPolicyRecord, SchedulerLease, TenantSecretRecord,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error while {operation}: {source}")]
    Query {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("a stored {what} is invalid: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("{what} already exists")]
    Duplicate { what: &'static str },
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
}

fn query_error(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| {
        let duplicate = source
            .as_database_error()
            .is_some_and(|e| e.kind() == sqlx::error::ErrorKind::UniqueViolation);
        if duplicate {
            StoreError::Duplicate { what: operation }
        } else {
            StoreError::Query { operation, source }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A tenant's VPS as the platform registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub tenant_id: TenantId,
    pub vps_ip: String,
    pub ssh_port: u16,
    pub tenant_user: UnixUser,
    pub admin_user: UnixUser,
    pub created_at: String,
}

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
    pub fingerprint: String,
    /// The Vault KV version that holds this generation's private key.
    pub vault_version: i64,
    pub rotation_policy: String,
    pub created_at: String,
    pub last_rotated: String,
    pub next_rotation: String,
    pub downloaded_at: Option<String>,
    /// The key replaced by the last rotation, valid until `grace_until`.
    pub previous_public_key: Option<String>,
    pub previous_fingerprint: Option<String>,
    pub grace_until: Option<String>,
    /// Raised on every regenerate and revoke; agents end the user's sessions when it rises.
    pub session_epoch: i64,
    /// Fingerprints keyward issued for this key set and then replaced or revoked, newest first.
    pub denied_fingerprints: Vec<String>,
}

/// A tenant, one of its key sets and its current host keys: [`Store::tenant_credentials`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCredentials {
    pub tenant: TenantRecord,
    pub key_set: Option<KeySetRecord>,
    pub host_keys: Vec<String>,
}

/// Who may call what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    Tenant(TenantId),
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tenant(_) => "tenant",
        }
    }

    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Role::Admin => None,
            Role::Tenant(t) => Some(t),
        }
    }
}

/// An API token's metadata (its secret is only ever held as a SHA-256 hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    pub role: Role,
    pub label: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// The SQL store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Orders audit appends on SQLite (one process owns a SQLite file).
    sqlite_writer: Arc<Mutex<()>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Lock id for audit appends on PostgreSQL (`pg_advisory_xact_lock`): "kw" + 1.
const AUDIT_APPEND_LOCK: i64 = 0x6b77_0001;

impl Store {
    /// Opens (creating a SQLite file when needed) and migrates the database.
    pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.unwrap_or(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            }))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_url(url),
                source,
            })?;
        match backend {
            Backend::Sqlite => {
                // WAL lets readers proceed while a writer commits; the setting is kept in the file.
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&pool)
                    .await
                    .map_err(query_error("enabling WAL"))?;
                sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            }
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Self {
            pool,
            backend,
            sqlite_writer: Arc::new(Mutex::new(())),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(query_error("pinging the database"))?;
        Ok(())
    }

    /// Starts a change. Only one `WriteTx` appends to the audit log at a time.
    pub async fn begin(&self) -> Result<WriteTx, StoreError> {
        let guard = match self.backend {
            Backend::Sqlite => Some(self.sqlite_writer.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        // On SQLite the change takes the write lock as it begins (IMMEDIATE), where SQLite waits
        // for a write outside the writer lock (retention, the stale-job sweep, the agents'
        // reports) to end. A deferred transaction that has read fails at its first write
        // instead, with SQLITE_BUSY: SQLite does not wait for a transaction that reads.
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(query_error("starting a transaction"))?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1)")
                .bind(AUDIT_APPEND_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(query_error("locking the audit log"))?;
        }
        Ok(WriteTx { tx, _guard: guard })
    }

    pub async fn tenant(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        sqlx::query("SELECT * FROM tenants WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a tenant"))?
            .map(|row| tenant_from_row(&row))
            .transpose()
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        sqlx::query("SELECT * FROM tenants ORDER BY tenant_id")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("listing tenants"))?
            .iter()
            .map(tenant_from_row)
            .collect()
    }

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
            created_at: get(&row, "t_created_at")?,
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

    /// The active token with this hash, if any.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("looking up a token"))?
            .map(|row| token_from_row(&row))
            .transpose()
    }

    pub async fn token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM api_tokens WHERE token_id = $1")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a token"))?
            .map(|row| token_from_row(&row))
            .transpose()
    }

    /// Tokens of one tenant, or the admin tokens when `tenant` is `None`.
    pub async fn tokens(&self, tenant: Option<&TenantId>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows =
            match tenant {
                Some(t) => sqlx::query(
                    "SELECT * FROM api_tokens WHERE tenant_id = $1 ORDER BY created_at, token_id",
                )
                .bind(t.as_str())
                .fetch_all(&self.pool)
                .await,
                None => sqlx::query(
                    "SELECT * FROM api_tokens WHERE role = 'admin' ORDER BY created_at, token_id",
                )
                .fetch_all(&self.pool)
                .await,
            }
            .map_err(query_error("listing tokens"))?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn has_active_admin_token(&self) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("counting admin tokens"))?;
        let n: i64 = row
            .try_get("n")
            .map_err(query_error("counting admin tokens"))?;
        Ok(n > 0)
    }
}

/// One change to the store and its audit event, committed together or not at all.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx
            .commit()
            .await
            .map_err(query_error("committing a transaction"))
    }

    pub async fn insert_tenant(&mut self, t: &TenantRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenants (tenant_id, vps_ip, ssh_port, tenant_user, admin_user, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(t.tenant_id.as_str())
        .bind(&t.vps_ip)
        .bind(i64::from(t.ssh_port))
        .bind(t.tenant_user.as_str())
        .bind(t.admin_user.as_str())
        .bind(&t.created_at)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("tenant"))?;
        Ok(())
    }

    /// Inserts or replaces the key set of (tenant, kind).
    pub async fn put_key_set(&mut self, k: &KeySetRecord) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM key_sets WHERE tenant_id = $1 AND kind = $2")
            .bind(k.tenant_id.as_str())
            .bind(k.kind.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query_error("replacing a key set"))?;
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
        .bind(&k.fingerprint)
        .bind(k.vault_version)
        .bind(&k.rotation_policy)
        .bind(&k.created_at)
        .bind(&k.last_rotated)
        .bind(&k.next_rotation)
        .bind(k.downloaded_at.clone())
        .bind(k.previous_public_key.clone())
        .bind(k.previous_fingerprint.clone())
        .bind(k.grace_until.clone())
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
        at: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE key_sets SET downloaded_at = $1 WHERE tenant_id = $2 AND kind = $3 \
             AND generation = $4 AND state = 'active' AND downloaded_at IS NULL",
        )
        .bind(at)
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .bind(generation)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("recording a download"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_token(
        &mut self,
        token: &TokenRecord,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (token_id, token_hash, role, tenant_id, label, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&token.token_id)
        .bind(token_hash)
        .bind(token.role.name())
        .bind(token.role.tenant().map(|t| t.as_str().to_owned()))
        .bind(&token.label)
        .bind(&token.created_at)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("token"))?;
        Ok(())
    }

    /// Revokes a token; returns false when it was unknown or already revoked.
    pub async fn revoke_token(&mut self, token_id: &str, at: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(token_id)
        .execute(&mut *self.tx)
        .await
        .map_err(query_error("revoking a token"))?;
        Ok(done.rows_affected() == 1)
    }
}

fn get<'r, T>(row: &'r AnyRow, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(|e| StoreError::Corrupt {
        what: column,
        detail: e.to_string(),
    })
}

fn parse<T: FromStr>(row: &AnyRow, column: &'static str) -> Result<T, StoreError>
where
    T::Err: fmt::Display,
{
    let raw: String = get(row, column)?;
    raw.parse().map_err(|e: T::Err| StoreError::Corrupt {
        what: column,
        detail: e.to_string(),
    })
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> Result<T, StoreError> {
    let raw: String = get(row, column)?;
    serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt {
        what: column,
        detail: e.to_string(),
    })
}

fn tenant_from_row(row: &AnyRow) -> Result<TenantRecord, StoreError> {
    let port: i64 = get(row, "ssh_port")?;
    Ok(TenantRecord {
        tenant_id: parse(row, "tenant_id")?,
        vps_ip: get(row, "vps_ip")?,
        ssh_port: u16::try_from(port).map_err(|e| StoreError::Corrupt {
            what: "ssh_port",
            detail: e.to_string(),
        })?,
        tenant_user: parse(row, "tenant_user")?,
        admin_user: parse(row, "admin_user")?,
        created_at: get(row, "created_at")?,
    })
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
        fingerprint: get(row, "fingerprint")?,
        vault_version: get(row, "vault_version")?,
        rotation_policy: get(row, "rotation_policy")?,
        created_at: get(row, "created_at")?,
        last_rotated: get(row, "last_rotated")?,
        next_rotation: get(row, "next_rotation")?,
        downloaded_at: get(row, "downloaded_at")?,
        previous_public_key: get(row, "previous_public_key")?,
        previous_fingerprint: get(row, "previous_fingerprint")?,
        grace_until: get(row, "grace_until")?,
        session_epoch: get(row, "session_epoch")?,
        denied_fingerprints: json_column(row, "denied_fingerprints")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let role: String = get(row, "role")?;
    let tenant: Option<String> = get(row, "tenant_id")?;
    let role = match (role.as_str(), tenant) {
        ("admin", None) => Role::Admin,
        ("tenant", Some(t)) => {
            Role::Tenant(
                t.parse()
                    .map_err(|e: keyward_common::IdError| StoreError::Corrupt {
                        what: "tenant_id",
                        detail: e.to_string(),
                    })?,
            )
        }
        (other, _) => {
            return Err(StoreError::Corrupt {
                what: "role",
                detail: other.to_owned(),
            });
        }
    };
    Ok(TokenRecord {
        token_id: get(row, "token_id")?,
        role,
        label: get(row, "label")?,
        created_at: get(row, "created_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

/// A database URL fit for a log line: any password is replaced.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// SHA-256 of a token, hex: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod credentials_tests {
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
        let record = TenantRecord {
            tenant_id: tenant.clone(),
            vps_ip: "192.0.2.1".into(),
            ssh_port: 2222,
            tenant_user: "tenant".parse().unwrap(),
            admin_user: "kwadmin".parse().unwrap(),
            created_at: "2026-01-01T00:00:00Z".into(),
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
                "2026-01-01T00:00:00Z",
                &format!("hash{i}"),
                "2026-01-02T00:00:00Z",
            )
            .await
            .unwrap();
        }
        for (host, _, _, revoked) in &hosts {
            if *revoked {
                tx.revoke_host(&host.parse().unwrap(), "2026-01-01T00:00:05Z")
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
        for (host, keys, seen, _) in &hosts {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            store
                .record_hello(&host.parse().unwrap(), "0.1.0", &keys, seen.unwrap_or(""))
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

#[cfg(test)]
mod sqlite_writer_tests {
    use std::time::Duration;

    use super::*;

    /// Found by the OpenAPI fuzz run: a key revocation answered 503 `database_unavailable`
    /// while a refused `rotate-all` swept stale jobs. Some writes go to the pool directly, outside
    /// the writer lock (that sweep, retention, the agents' reports); a change that had read
    /// first then met SQLite's write lock held by one of them and failed at once with
    /// SQLITE_BUSY (SQLite does not wait for a transaction that already reads). A change takes
    /// the write lock when it begins, and waits for it there.
    #[tokio::test]
    async fn a_change_waits_for_a_write_outside_it_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url, None).await.unwrap();
        // Another connection holds the write lock for a moment, as a direct write does.
        let mut other = store.pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *other)
            .await
            .unwrap();
        sqlx::query("UPDATE rotation_jobs SET status = status")
            .execute(&mut *other)
            .await
            .unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqlx::query("COMMIT").execute(&mut *other).await.unwrap();
        });
        let event = NewAuditEvent {
            at: "2026-01-01T00:00:00Z".into(),
            actor_token_id: None,
            actor_role: "system".into(),
            action: "test.write",
            tenant_id: None,
            outcome: "success",
            source_addr: None,
            detail: serde_json::json!({}),
        };
        // Reads the chain head, then inserts: a read, then a write, in one transaction.
        let change = async {
            let mut tx = store.begin().await?;
            tx.append_audit(&event).await?;
            tx.commit().await
        };
        let result = change.await;
        release.await.unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(store.verify_audit_chain().await.unwrap().checked, 1);
    }
}
