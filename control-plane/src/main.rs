//! `keyward-server`: the command line over [`keyward_server`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use keyward_common::sd_notify::Notifier;
use keyward_server::agents::hub::Hub;
use keyward_server::audit_head::{self, AuditHeadSigner, HeadKeys, HeadKeysFile};
use keyward_server::caller::Caller;
use keyward_server::clock::SystemClock;
use keyward_server::config::Config;
use keyward_server::lifecycle::KeyLifecycle;
use keyward_server::store::Store;
use keyward_server::vault::VaultStore;
use keyward_server::{audit_bundle, server, telemetry};
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;

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
    /// Walk the hash chain; exit 1 and name the first broken link if it is broken. Where the
    /// head is signed (`[audit_signing]`), also check every signed head and Vault's checkpoint:
    /// a log cut short or rewritten fails too.
    Verify,
    /// Print the public keys of the transit key that signs the audit head, as JSON, for
    /// `verify-bundle --keys` (keep a copy where the bundles go).
    HeadKeys,
    /// After a restore (an older database or Vault snapshot), move Vault's checkpoint to the
    /// chain's head as it is now: signed, and audited with the old checkpoint and the reason.
    ResetCheckpoint {
        /// Why (recorded in the `audit.head.reset` event), e.g. "restored the 2026-12-01 backups".
        #[arg(long)]
        reason: String,
    },
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
    /// Check a bundle without a database: every event's hash and link from its anchor, every
    /// signed head in it, and its trailer; exit 1 and name the first line that does not hold.
    VerifyBundle {
        file: PathBuf,
        /// The transit key's public keys (`audit head-keys`): the signed heads' signatures are
        /// checked too.
        #[arg(long)]
        keys: Option<PathBuf>,
    },
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

/// Prints `value` as pretty JSON on standard output; a reader that went away (`| head`) ends the
/// output quietly, as with other Unix tools.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
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

fn verify_bundle(
    file: &std::path::Path,
    keys: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let keys = keys
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let parsed: HeadKeysFile = serde_json::from_str(&text)
                .with_context(|| format!("{} is not `audit head-keys` output", path.display()))?;
            HeadKeys::from_file(&parsed).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        })
        .transpose()?;
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let verdict = audit_bundle::verify(std::io::BufReader::new(input), keys.as_ref());
    print_json(&verdict)?;
    Ok(exit_code(verdict.ok))
}

/// The audit head's signer over the configured database and Vault, for the commands; `None`
/// where `[audit_signing]` names no key.
async fn head_signer(config: &Config, store: &Store) -> anyhow::Result<Option<AuditHeadSigner>> {
    let Some(key) = &config.audit_signing.key else {
        return Ok(None);
    };
    let vault = VaultStore::connect(&config.vault).await?;
    let head_key = Arc::new(vault.audit_head_key(&config.audit_signing.transit_mount, key));
    let lifecycle = KeyLifecycle::new(
        vault,
        store.clone(),
        Arc::new(SystemClock),
        config.keys.clone(),
        Arc::new(Hub::default()),
    );
    Ok(Some(AuditHeadSigner::new(
        Arc::new(lifecycle),
        head_key,
        config.audit_signing.clone(),
    )))
}

async fn audit_command(config: &Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&config.database_url(), Some(2)).await?;
    let signer = head_signer(config, &store).await?;
    let not_signed =
        || anyhow::anyhow!("the audit head is not signed here: [audit_signing] key is not set");
    match command {
        AuditCommand::Verify => {
            let verdict = match &signer {
                Some(signer) => signer.verify(chrono::Utc::now()).await?,
                None => audit_head::combine(store.verify_audit_chain().await?, None),
            };
            print_json(&verdict)?;
            Ok(exit_code(verdict.ok))
        }
        AuditCommand::HeadKeys => {
            let signer = signer.ok_or_else(not_signed)?;
            print_json(&signer.keys().await?.to_file(signer.key_path()))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::ResetCheckpoint { reason } => {
            anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
            let signer = signer.ok_or_else(not_signed)?;
            let head = signer.reset(&Caller::system(), &reason).await?;
            print_json(&head)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { .. } | AuditCommand::VerifyBundle { .. } => {
            unreachable!("handled before")
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // A bundle is checked without configuration or database, wherever it was taken to.
    if let Some(Command::Audit {
        command: AuditCommand::VerifyBundle { file, keys },
    }) = &cli.command
    {
        return verify_bundle(file, keys.as_deref());
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Man { .. } => Ok(ExitCode::SUCCESS),
        Command::Audit {
            command:
                AuditCommand::Export {
                    since,
                    until,
                    output,
                },
        } => export_bundle(&config, &since, until.as_deref(), output.as_deref()).await,
        Command::Audit {
            command: AuditCommand::VerifyBundle { file, keys },
        } => verify_bundle(&file, keys.as_deref()),
        Command::Audit { command } => audit_command(&config, command).await,
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
