//! keyward's SQL backups taken and restored with the tools docs/INSTALL.md (section 7) and
//! docs/OPERATIONS.md ("Backups and restores") tell an operator to use: `pg_dump -Fc` and
//! `pg_restore` for PostgreSQL; SQLite's online backup (`VACUUM INTO`, through sqlx, as the
//! `sqlite3` program is not among the tests' dependencies) and a file copy back.

use std::path::Path;

use sqlx::Connection as _;

use crate::require_program;

const INSTALL_HINT: &str = "PostgreSQL's client programs are needed (`apt-get install postgresql-client`; \
     `make test-deps` installs them)";

/// Runs a PostgreSQL client program; panics with its output when it fails.
async fn run_pg_tool(program: &str, args: &[&str]) {
    let output = tokio::process::Command::new(require_program(program, INSTALL_HINT))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `pg_dump -Fc` of the database at `url` into `file`: the custom format `pg_restore` reads, one
/// consistent snapshot of the database while keyward keeps running.
pub async fn pg_dump(url: &str, file: &Path) {
    let file = file.to_str().unwrap();
    run_pg_tool("pg_dump", &["-Fc", "--file", file, "--dbname", url]).await;
}

/// `pg_restore` of the dump `file` into the empty database at `url`: every table, row, sequence
/// and index, owned by the restoring user (`--no-owner`), stopping at the first error
/// (`--exit-on-error`) rather than leaving a partial database that looks whole.
pub async fn pg_restore(file: &Path, url: &str) {
    let file = file.to_str().unwrap();
    run_pg_tool(
        "pg_restore",
        &["--exit-on-error", "--no-owner", "--dbname", url, file],
    )
    .await;
}

/// SQLite's online backup of the database at `url` (`sqlite://PATH...`) into the new file `file`:
/// `VACUUM INTO`, a consistent copy taken in one read transaction while keyward keeps writing.
pub async fn sqlite_backup(url: &str, file: &Path) {
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    sqlx::query("VACUUM INTO $1")
        .bind(file.to_str().unwrap())
        .execute(&mut db)
        .await
        .unwrap_or_else(|e| panic!("VACUUM INTO {}: {e}", file.display()));
    db.close().await.unwrap();
}

/// Restores a SQLite backup as an operator does with the server stopped: the backup copied to
/// where the database lives (`state_dir/keyward.db`), 0600. Returns the database's URL.
pub fn sqlite_restore(backup: &Path, state_dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(state_dir).unwrap();
    let db = state_dir.join("keyward.db");
    std::fs::copy(backup, &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("sqlite://{}?mode=rwc", db.display())
}
