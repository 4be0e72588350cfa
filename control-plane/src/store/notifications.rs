//! PostgreSQL `NOTIFY`/`LISTEN` on the deployment's own channel: how replicas hear of each
//! other's changes (`crate::changes::postgres`).
//!
//! The channel is named after the database and schema (`keyward_` and 32 hex digits of their
//! MD5), so that deployments sharing a PostgreSQL server, or a database in schemas of their own,
//! never hear each other. PostgreSQL delivers a notification to every session listening on the
//! channel, the sender's own included, once the sending transaction commits, and drops it for a
//! session that is not connected at that moment: a listener that lost its connection must read
//! the state again ([`Notifications::next`] says when).

use sqlx::Row;
use sqlx::postgres::PgListener;

use super::{Store, StoreError, query_error};

/// PostgreSQL refuses a payload of 8,000 bytes or more.
pub const MAX_PAYLOAD_BYTES: usize = 7_999;

/// The deployment's channel: computed by PostgreSQL from what the store's connections see.
pub(super) async fn channel_name(pool: &sqlx::AnyPool) -> Result<String, StoreError> {
    let row = sqlx::query(
        "SELECT 'keyward_' || md5(current_database() || '.' || current_schema()) AS channel",
    )
    .fetch_one(pool)
    .await
    .map_err(query_error("naming the change channel"))?;
    row.try_get("channel")
        .map_err(query_error("naming the change channel"))
}

/// A session listening on the deployment's channel.
pub struct Notifications {
    listener: PgListener,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications").finish_non_exhaustive()
    }
}

impl Notifications {
    /// The next payload; `Ok(None)` when the connection was lost (and is open again): what was
    /// sent meanwhile is lost. An error when it cannot be opened again.
    pub async fn next(&mut self) -> Result<Option<String>, StoreError> {
        let received = self
            .listener
            .try_recv()
            .await
            .map_err(query_error("listening for changes"))?;
        Ok(received.map(|n| n.payload().to_owned()))
    }
}

impl Store {
    /// Whether other replicas may share this database (PostgreSQL): only then do they need
    /// [`Store::notify`] to hear of this one's changes.
    pub fn shared(&self) -> bool {
        self.postgres.is_some()
    }

    /// Sends `payload` (at most [`MAX_PAYLOAD_BYTES`]) to every replica listening, this one too.
    /// Does nothing on SQLite, where one process owns the database.
    pub async fn notify(&self, payload: &str) -> Result<(), StoreError> {
        let Some(postgres) = &self.postgres else {
            return Ok(());
        };
        sqlx::query("SELECT CAST(pg_notify($1, $2) AS TEXT) AS sent")
            .bind(postgres.channel.as_str())
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(query_error("notifying the other replicas"))?;
        Ok(())
    }

    /// Opens a session of its own that listens on the deployment's channel; `None` on SQLite.
    pub async fn listen(&self) -> Result<Option<Notifications>, StoreError> {
        let Some(postgres) = &self.postgres else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(&postgres.url)
            .await
            .map_err(query_error("connecting to listen for changes"))?;
        listener
            .listen(&postgres.channel)
            .await
            .map_err(query_error("listening for changes"))?;
        Ok(Some(Notifications { listener }))
    }
}
