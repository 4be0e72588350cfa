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

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

mod access_grants;
mod activity;
mod audit;
mod audit_sinks;
mod bastions;
mod certificates;
mod credentials;
mod download_policies;
mod hosts;
mod job_queue;
mod key_registration_policies;
mod key_sets;
mod logins;
mod mfa;
mod mfa_webauthn;
mod notifications;
mod offboarding;
mod recordings;
mod retention;
mod rotation;
mod streams;
mod tenants;
mod times;
mod tokens;
mod web_sessions;
pub use access_grants::{GRANTS_LISTED, GrantRecord, GrantStatus};
pub use activity::HostActivity;
pub use audit::{
    AuditFilter, AuditPage, AuditRecord, ChainVerdict, GENESIS_HASH, NewAuditEvent, expected_hash,
};
pub use audit_sinks::SinkCursor;
pub use bastions::{HostRole, JumpRoute};
pub use certificates::{CertificateRecord, RevokedCertificate};
pub use credentials::{TenantCredentials, TokenCredentials};
pub use download_policies::DownloadPolicyRecord;
pub use hosts::{DriftRecord, HostRecord, HostReport};
pub use job_queue::{ClaimedTenant, JobClaim, JobTally, TenantOutcome};
pub use key_registration_policies::KeyRegistrationPolicyRecord;
pub use key_sets::{KeySetRecord, KeyState};
pub use logins::{DayCount, KeyUsage, LoginFilter, LoginRecord, NewLogin, UnmanagedUse};
pub use mfa::{MfaFactorRecord, MfaPolicyRecord};
pub use mfa_webauthn::{CeremonyKind, CeremonyRecord, TakenCeremony, WebauthnCredentialRecord};
pub use notifications::{MAX_PAYLOAD_BYTES, Notifications};
pub use offboarding::{OffboardingHost, OffboardingRecord, OffboardingStep};
pub use recordings::{
    ChunkTally, Completion, NewRecording, RecordingFilter, RecordingPolicy, RecordingRecord,
};
pub use retention::Expiring;
pub use rotation::{
    JobFailure, JobRecord, RotationPolicyRecord, SchedulerLease, TenantSecretRecord,
};
pub use streams::StreamedHost;
pub use tenants::TenantRecord;
pub use tokens::{Role, TokenRecord, hash_token};
pub use web_sessions::{PendingLoginRecord, WebSessionRecord};

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
    /// A bug in keyward: the store was used in a way it does not allow.
    #[error("internal store error: {0}")]
    Misuse(&'static str),
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

/// The SQL store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Orders audit appends on SQLite (one process owns a SQLite file).
    sqlite_writer: Arc<Mutex<()>>,
    /// On PostgreSQL: where replicas tell each other of changes ([`Store::notify`]).
    postgres: Option<Arc<Shared>>,
}

/// What a store on PostgreSQL needs to listen: the URL (a listening session is a connection
/// of its own, outside the pool) and the deployment's channel.
struct Shared {
    url: String,
    channel: String,
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
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Arc::new(Shared {
                url: url.to_owned(),
                channel: notifications::channel_name(&pool).await?,
            })),
        };
        Ok(Self {
            pool,
            backend,
            sqlite_writer: Arc::new(Mutex::new(())),
            postgres,
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
        self.begin_as(Audited::Yes).await
    }

    /// Starts a change that appends nothing to the audit log (bookkeeping such as a job's
    /// queue): on PostgreSQL it does not wait for the audit log's lock.
    pub async fn begin_unaudited(&self) -> Result<WriteTx, StoreError> {
        self.begin_as(Audited::No).await
    }

    async fn begin_as(&self, audited: Audited) -> Result<WriteTx, StoreError> {
        let guard = match self.backend {
            Backend::Sqlite => Some(self.sqlite_writer.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        // On SQLite a change takes the write lock as it begins (IMMEDIATE), where SQLite waits
        // for another writer (busy_timeout). A deferred transaction reads first and asks for the
        // write lock at its first write, and SQLite answers that upgrade with SQLITE_BUSY at once,
        // without waiting, while another connection holds the lock: a write outside the writer
        // lock (retention, the stale-job sweep, the agents' reports), or the transaction that
        // failed just before this one until its rollback has run (sqlx rolls a dropped
        // transaction back asynchronously, after its guard is released).
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(query_error("starting a transaction"))?;
        if self.backend == Backend::Postgres && audited == Audited::Yes {
            sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1)")
                .bind(AUDIT_APPEND_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(query_error("locking the audit log"))?;
        }
        Ok(WriteTx {
            tx,
            backend: self.backend,
            audited,
            _guard: guard,
        })
    }
}

/// Whether a [`WriteTx`] may append to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audited {
    Yes,
    No,
}

/// One change to the store and its audit event, committed together or not at all.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    backend: Backend,
    audited: Audited,
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

    /// Marks a point that [`WriteTx::rollback_to_savepoint`] undoes back to, so that one
    /// transaction can hold several independent changes (a group commit) and drop one that fails
    /// without the others. One at a time: a new savepoint is meant after the last is released or
    /// rolled back to.
    pub async fn savepoint(&mut self) -> Result<(), StoreError> {
        self.execute("SAVEPOINT keyward_item", "setting a savepoint")
            .await
    }

    /// Keeps what was written since the savepoint.
    pub async fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.execute("RELEASE SAVEPOINT keyward_item", "releasing a savepoint")
            .await
    }

    /// Undoes what was written since the savepoint (on PostgreSQL, also after a failed
    /// statement), and releases it.
    pub async fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.execute(
            "ROLLBACK TO SAVEPOINT keyward_item",
            "rolling back to a savepoint",
        )
        .await?;
        self.release_savepoint().await
    }

    async fn execute(
        &mut self,
        statement: &'static str,
        what: &'static str,
    ) -> Result<(), StoreError> {
        sqlx::query(statement)
            .execute(&mut *self.tx)
            .await
            .map_err(query_error(what))?;
        Ok(())
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

/// [`parse`] for a nullable column.
fn parse_optional<T: FromStr>(row: &AnyRow, column: &'static str) -> Result<Option<T>, StoreError>
where
    T::Err: fmt::Display,
{
    get::<Option<String>>(row, column)?
        .map(|raw| {
            raw.parse().map_err(|e: T::Err| StoreError::Corrupt {
                what: column,
                detail: e.to_string(),
            })
        })
        .transpose()
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
