//! A private schema in the local PostgreSQL `test` database, dropped afterwards.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
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

    /// A URL whose connections use only this schema.
    pub fn url(&self) -> String {
        format!("{ADMIN_URL}?options=-c%20search_path%3D{}", self.name)
    }
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
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(ADMIN_URL).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
