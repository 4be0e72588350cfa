//! Logging: journald under systemd, stderr otherwise.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Library crates that would log request details at debug level stay at warn unless asked.
/// vaultrs logs an expected 404 (a key set that does not exist yet) as an ERROR; keyward logs
/// every Vault failure itself, with context, so vaultrs and rustify stay silent.
const DEFAULT_FILTER: &str = "info,vaultrs=off,rustify=off,sqlx=warn,hyper=warn,h2=warn";

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
pub fn init() {
    let filter = match std::env::var("RUST_LOG") {
        // vaultrs logs every expected 404 (a tenant without `smtp` or `dkim` yet) as an ERROR:
        // it stays silent under any RUST_LOG that does not name it.
        Ok(spec) if !spec.contains("vaultrs") => EnvFilter::try_new(format!("{spec},vaultrs=off"))
            .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)),
        _ => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)),
    };
    // systemd sets JOURNAL_STREAM for services whose output goes to the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journald.with_syslog_identifier("keyward-server".into()))
                    .init();
                return;
            }
            Err(e) => {
                eprintln!("keyward-server: journald is not reachable ({e}); logging to stderr")
            }
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}
