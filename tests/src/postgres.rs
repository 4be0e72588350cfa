//! A private schema in the local PostgreSQL `test` database, or a database of its own on that
//! server, dropped afterwards.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The database every test schema lives in, as its owner.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const INSTALL_HINT: &str = "PostgreSQL must listen on 127.0.0.1:5432 with trust auth and a `test` database \
     (`make test-deps` starts the local cluster when it is installed)";

/// A schema of its own, so tests on one database never see each other's rows.
#[derive(Debug)]
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub async fn create() -> Self {
        let name = format!("kwtest_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(ADMIN_URL).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {ADMIN_URL}: {e}; {INSTALL_HINT}")
        });
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        Self { name }
    }

    /// A URL whose connections use only this schema. They name themselves after it
    /// (`application_name`), so that the drop can find and end them.
    pub fn url(&self) -> String {
        format!(
            "{ADMIN_URL}?options=-c%20search_path%3D{name}&application_name={name}",
            name = self.name
        )
    }
}

/// Drops `name` with everything in it. The sessions still using it are ended first: a server the
/// test dropped without stopping keeps its tasks on the test's runtime, which this drop blocks, so
/// a transaction they hold open (its locks on the schema's tables) would never end and
/// `DROP SCHEMA` would wait for it for ever. `lock_timeout` bounds the drop whatever else holds a
/// lock: a schema left behind is a leak, a test that never ends is a hung suite.
async fn drop_schema(name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(ADMIN_URL).await?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut conn)
    .await?;
    sqlx::query("SET lock_timeout = '10s'")
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee; a short-lived thread and runtime do the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = rt.block_on(drop_schema(&name)) {
                eprintln!("could not drop the test schema {name}: {e}");
            }
        })
        .join();
    }
}

/// A database of its own on the local server, dropped afterwards: for a test that dumps a whole
/// database and restores it into a new, empty one, as an operator does with `pg_dump` and
/// `pg_restore` (a schema of the shared `test` database would not be a whole database).
#[derive(Debug)]
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    /// An empty database (from `template0`, as `pg_restore` wants its target), owned by
    /// `postgres`.
    pub async fn create() -> Self {
        let name = format!("kwtest_db_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(ADMIN_URL).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {ADMIN_URL}: {e}; {INSTALL_HINT}")
        });
        sqlx::raw_sql(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .execute(&mut conn)
            .await
            .unwrap();
        Self { name }
    }

    /// Its URL, for keyward (`database.url`) and for `pg_dump` and `pg_restore` alike.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    /// `DROP DATABASE ... WITH (FORCE)` ends the sessions still connected (a pool a stopped
    /// server has not closed yet) before it drops.
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let dropped = rt.block_on(async {
                let mut conn = PgConnection::connect(ADMIN_URL).await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
            });
            if let Err(e) = dropped {
                eprintln!("could not drop the test database {name}: {e}");
            }
        })
        .join();
    }
}
