//! `keyward-server`: the command line over [`keyward_server`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use keyward_common::sd_notify::Notifier;
use keyward_server::config::Config;
use keyward_server::store::Store;
use keyward_server::{audit_bundle, server, telemetry};
use std::os::unix::fs::OpenOptionsExt as _;

/// keyward's control plane: SSH keys in Vault, REST API, audit log.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (settings not in it come from KEYWARD_* variables or defaults).
    #[arg(long, short, env = "KEYWARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (the default).
    Serve,
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Checks across keyward's stores.
    Check {
        #[command(subcommand)]
        command: CheckCommand,
    },
    /// Write the man pages (keyward-server.1, one per subcommand) into a directory; the
    /// packaging ships them.
    #[command(hide = true)]
    Man { out_dir: PathBuf },
}

#[derive(Debug, Subcommand)]
enum CheckCommand {
    /// Compare SQL and Vault for every SSH key set (after a restore, say); print the findings as
    /// JSON and exit 1 when any key set drifted.
    Consistency,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit 1 and name the first broken link if it is broken.
    Verify,
    /// Write the events stamped from --since to --until (and every event between the first and
    /// the last of them) as a bundle that `verify-bundle` checks without the database.
    Export {
        /// RFC 3339 time, inclusive.
        #[arg(long)]
        since: String,
        /// RFC 3339 time, exclusive (default: now).
        #[arg(long)]
        until: Option<String>,
        /// A new file (0600) to write the bundle to; standard output when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check a bundle without a database: every event's hash and link from its anchor, and its
    /// trailer; exit 1 and name the first line that does not hold.
    VerifyBundle { file: PathBuf },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Man { out_dir }) = &cli.command {
        return match clap_mangen::generate_to(Cli::command(), out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keyward-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyward-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as pretty JSON on standard output.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(())
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn time_arg(name: &str, raw: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    keyward_server::clock::parse_iso8601(raw)
        .with_context(|| format!("--{name} {raw:?} is not an RFC 3339 time (2026-12-01T00:00:00Z)"))
}

async fn export_bundle(
    config: &Config,
    since: &str,
    until: Option<&str>,
    output: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let now = chrono::Utc::now();
    let since = time_arg("since", since)?;
    let until = until.map_or(Ok(now), |raw| time_arg("until", raw))?;
    anyhow::ensure!(since < until, "--since must be before --until");
    let store = Store::connect(&config.database_url(), Some(1)).await?;
    let Some(path) = output else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let exported = audit_bundle::export(&store, since, until, now, &mut out).await?;
        out.flush()?;
        eprintln!("keyward-server: exported {} audit events", exported.events);
        return Ok(ExitCode::SUCCESS);
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    match audit_bundle::export(&store, since, until, now, &mut out).await {
        Ok(exported) => {
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            print_json(&exported)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(path);
            Err(e.into())
        }
    }
}

fn verify_bundle(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let verdict = audit_bundle::verify(std::io::BufReader::new(input));
    print_json(&verdict)?;
    Ok(exit_code(verdict.ok))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // A bundle is checked without configuration or database, wherever it was taken to.
    if let Some(Command::Audit {
        command: AuditCommand::VerifyBundle { file },
    }) = &cli.command
    {
        return verify_bundle(file);
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Man { .. } => Ok(ExitCode::SUCCESS),
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let store = Store::connect(&config.database_url(), Some(1)).await?;
            let verdict = store.verify_audit_chain().await?;
            print_json(&verdict)?;
            Ok(exit_code(verdict.ok))
        }
        Command::Audit {
            command:
                AuditCommand::Export {
                    since,
                    until,
                    output,
                },
        } => export_bundle(&config, &since, until.as_deref(), output.as_deref()).await,
        Command::Audit {
            command: AuditCommand::VerifyBundle { file },
        } => verify_bundle(&file),
        Command::Check {
            command: CheckCommand::Consistency,
        } => {
            let store = Store::connect(&config.database_url(), Some(4)).await?;
            let vault = keyward_server::vault::VaultStore::connect(&config.vault).await?;
            let report = keyward_server::consistency::check(&store, vault.as_ref()).await?;
            print_json(&report)?;
            Ok(exit_code(report.ok))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    // Under systemd (Type=notify, WatchdogSec=): watchdog pings from the runtime at half the
    // timeout, from the start on (a slow start is bounded by TimeoutStartSec, not the watchdog;
    // a wedged runtime misses them and is restarted), and READY=1 once both listeners are bound.
    let notifier = Notifier::from_env();
    if let Some(pinger) = notifier.clone()
        && let Some(every) = pinger.watchdog_interval()
    {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                pinger.watchdog();
            }
        });
    }
    let running = server::start(config).await.context("cannot start")?;
    if let Some(notifier) = &notifier {
        notifier.ready();
    }
    let handle = running.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
