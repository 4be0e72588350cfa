//! `keyward-server`: the command line over [`keyward_server`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use keyward_common::sd_notify::Notifier;
use keyward_server::config::Config;
use keyward_server::store::Store;
use keyward_server::{server, telemetry};

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
    /// Write the man pages (keyward-server.1, one per subcommand) into a directory; the
    /// packaging ships them.
    #[command(hide = true)]
    Man { out_dir: PathBuf },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit 1 and name the first broken link if it is broken.
    Verify,
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Man { .. } => Ok(ExitCode::SUCCESS),
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let store = Store::connect(&config.database_url(), Some(1)).await?;
            let verdict = store.verify_audit_chain().await?;
            #[allow(clippy::print_stdout)]
            {
                println!("{}", serde_json::to_string_pretty(&verdict)?);
            }
            Ok(if verdict.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
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
