//! `keyward-agent`: the per-host daemon.
//!
//! - `keyward-agent enroll --server URL --token T [--ca-file F] [--config FILE] [--force]`
//! - `keyward-agent run [--config FILE]`
//!
//! Errors end the process with status 1 and one line on stderr starting with `keyward-agent:`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use keyward_agent::config::{AgentConfig, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR};
use keyward_agent::enroll::{EnrollOptions, enroll};

/// keyward's per-host agent: keeps authorized_keys equal to the control plane's desired state.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trade a one-time enrollment token for this host's client certificate.
    Enroll {
        /// The control plane's URL, e.g. https://keyward.example.
        #[arg(long)]
        server: String,
        /// The one-time enrollment token (from the environment keeps it out of `ps`).
        #[arg(long, env = "KEYWARD_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// A PEM root CA for the control plane's HTTPS certificate.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The agent configuration (for `state_dir`); optional before the first run.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The state directory (overrides the configuration's `state_dir`).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Replace an existing enrollment.
        #[arg(long)]
        force: bool,
    },
    /// Enforce the cached state and follow the control plane.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Write the man pages (keyward-agent.1, one per subcommand) into a directory; the
    /// packaging ships them.
    #[command(hide = true)]
    Man { out_dir: PathBuf },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: under systemd or redirected to a file they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    // One thread: the agent is one event loop that sleeps between a few events a minute (the
    // HTTP/2 keepalive pings). A multi-threaded runtime wakes two worker threads per event and
    // keeps a thread and a malloc arena per CPU for nothing. File writes and session ends still
    // run on the blocking pool (`spawn_blocking`), so the loop never waits on the disk.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Enroll {
            server,
            token,
            ca_file,
            config,
            state_dir,
            force,
        } => {
            let state_dir = match (state_dir, config) {
                (Some(dir), _) => dir,
                (None, Some(path)) => AgentConfig::load(&path)?.state_dir,
                (None, None) => {
                    let default = PathBuf::from(DEFAULT_CONFIG_PATH);
                    if default.exists() {
                        AgentConfig::load(&default)?.state_dir
                    } else {
                        PathBuf::from(DEFAULT_STATE_DIR)
                    }
                }
            };
            let options = EnrollOptions {
                server,
                token,
                ca_file,
                state_dir,
                force,
            };
            let info = runtime.block_on(enroll(&options))?;
            writeln!(
                std::io::stdout(),
                "enrolled as host {} (tenant {}); the agent connects to {}",
                info.host_id,
                info.tenant_id,
                info.grpc_url
            )?;
            Ok(())
        }
        Command::Man { out_dir } => {
            clap_mangen::generate_to(Cli::command(), &out_dir)
                .with_context(|| format!("writing man pages into {}", out_dir.display()))?;
            Ok(())
        }
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            runtime.block_on(keyward_agent::run(config, shutdown_signal()))?;
            Ok(())
        }
    }
}

/// Completes on SIGTERM (systemd's stop) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
