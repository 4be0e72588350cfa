//! `keyward-bench`: runs a benchmark, prints its Markdown table on stdout, and with `--write`
//! records it in `BENCHMARKS.md`.
//!
//! ```text
//! cargo run --release -p keyward-bench -- propagation --agents 1 --rotations 200
//! cargo run --release -p keyward-bench -- propagation --agents 1000 --rotations 200 --runs 2 --write BENCHMARKS.md
//! keyward-bench propagation --smoke
//! cargo run --release -p keyward-bench -- ingest --events 20000
//! ```

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keyward_bench::propagation::{self, Options, Report};
use keyward_bench::report;

#[derive(Debug, Parser)]
#[command(name = "keyward-bench", about = "keyward's benchmarks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every benchmark of the suite, one after another (about 47 minutes; --smoke: a few minutes).
    All(AllArgs),
    /// Time from the REST rotate call returning to the key's file renamed on the host.
    Propagation(PropagationArgs),
    /// Login events stored per second, into SQLite and into PostgreSQL.
    Ingest(IngestArgs),
    /// `GET .../ssh-credentials` per second and p99 on SQLite and PostgreSQL, beside OpenBao's KV read.
    Rest(keyward_bench::rest::Args),
    /// The real keyward-agent while idle: resident memory, wakeups, stripped binary size.
    AgentIdle(keyward_bench::agent_idle::Args),
    /// The control plane holding N agent streams: its memory per agent and its idle CPU.
    Streams(keyward_bench::streams::Args),
    /// rotate-all of N Ed25519 tenants: from the call to every host's acknowledgement.
    Fanout(keyward_bench::fanout::Args),
    /// RSA-4096 keys per second on one core: keyward's generator beside ssh-keygen, interleaved.
    Keygen(keyward_bench::keygen::Args),
    /// rotate-all of N RSA-4096 tenants against pure key generation on all cores.
    RotateAll(keyward_bench::rotate_all::Args),
    /// Revoke → key gone from the file and its session ended, plain and under a stall attack;
    /// agent CPU under a chmod loop.
    Revocation(keyward_bench::revocation::Args),
    /// The live hosts view: N hosts reporting, M admin streams, hosts changing at a fixed rate.
    LiveHosts(keyward_bench::live_hosts::Args),
    /// A control plane in this process until stdin closes (used by `streams`).
    #[command(hide = true)]
    ControlPlaneChild,
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    /// Each benchmark's tiny version (the test suite's).
    #[arg(long)]
    smoke: bool,
    /// Record the results in this Markdown file (each benchmark replaces its own sections).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Where the 10,000-agent runs keep the simulated hosts' files (default: /dev/shm).
    #[arg(long, value_name = "DIR")]
    tmpfs: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// Events to store per backend.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Events per batch (the agent sends up to 500).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Record the results in this Markdown file (its `login-ingest` section is replaced).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct PropagationArgs {
    /// Connected agents (tenants with one host each).
    #[arg(long, default_value_t = 1)]
    agents: usize,
    /// Sequential rotations to time.
    #[arg(long, default_value_t = 200)]
    rotations: usize,
    /// The test suite's tiny version: 2 agents, 5 rotations (overrides --agents and --rotations).
    #[arg(long)]
    smoke: bool,
    /// Rotate back to back, without waiting for the previous rotation's acknowledgement.
    #[arg(long)]
    back_to_back: bool,
    /// Runs, each in a fresh process with a fresh OpenBao and database.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Record the results in this Markdown file (its propagation sections are replaced).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Where the simulated hosts' files are written (default: the temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print the report as JSON instead of Markdown (used by --runs).
    #[arg(long, hide = true)]
    json: bool,
}

/// Warnings on stderr (`RUST_LOG` overrides), without the expected ones: the Vault client logs
/// every 404 of a secret that does not exist yet, and the control plane the bootstrap token.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,rustify=off,vaultrs=off,keyward_server::server=error",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Propagation(args) => propagation_command(args).await,
        Command::Rest(args) => keyward_bench::rest::command(args).await,
        Command::AgentIdle(args) => keyward_bench::agent_idle::command(args).await,
        Command::Streams(args) => keyward_bench::streams::command(args).await,
        Command::Fanout(args) => keyward_bench::fanout::command(args).await,
        Command::Keygen(args) => keyward_bench::keygen::command(args).await,
        Command::RotateAll(args) => keyward_bench::rotate_all::command(args).await,
        Command::Revocation(args) => keyward_bench::revocation::command(args).await,
        Command::LiveHosts(args) => keyward_bench::live_hosts::command(args).await,
        Command::ControlPlaneChild => keyward_bench::cluster::serve_child().await,
        Command::All(args) => {
            let tmpfs = args
                .tmpfs
                .unwrap_or_else(keyward_bench::suite::default_tmpfs);
            let steps = keyward_bench::suite::steps(args.smoke, &tmpfs, args.write.as_deref());
            let outcomes = keyward_bench::suite::run(steps).await?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "\n## The suite\n")?;
            stdout.write_all(keyward_bench::suite::summary(&outcomes).as_bytes())?;
            let failed = outcomes.iter().filter(|o| !o.ok).count();
            anyhow::ensure!(failed == 0, "{failed} benchmark(s) failed");
            Ok(())
        }
        Command::Ingest(args) => {
            let mut results = Vec::new();
            for database in [
                keyward_tests::Database::Sqlite,
                keyward_tests::Database::Postgres,
            ] {
                results.push(keyward_bench::ingest::run(database, args.events, args.batch).await?);
            }
            let table = keyward_bench::ingest::markdown(&results);
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(table.as_bytes())?;
            if let Some(path) = &args.write {
                let section = format!(
                    "### Login-event ingest\n\nCommand: `cargo run --release -p keyward-bench -- ingest --events {} --batch {}`. \
                     Batches as an agent sends them, through the control plane's ingest path (attribution, \
                     de-duplication, one audit event per batch), into each backend.\n\n{table}",
                    args.events, args.batch
                );
                report::write_sections(path, &[("login-ingest".into(), section)])?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

async fn propagation_command(args: PropagationArgs) -> anyhow::Result<()> {
    let mut options = if args.smoke {
        Options {
            progress: true,
            ..Options::smoke()
        }
    } else {
        Options::new(args.agents, args.rotations)
    };
    options.dir.clone_from(&args.dir);
    options.settle = !args.back_to_back;
    let runs = args.runs.max(1);
    let reports = if runs == 1 {
        vec![propagation::run(&options).await?]
    } else {
        let mut reports = Vec::with_capacity(runs);
        for run in 1..=runs {
            eprintln!("run {run} of {runs}");
            reports.push(run_in_child(&options, args.dir.as_ref()).await?);
        }
        reports
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &reports[0])?;
        writeln!(stdout)?;
        return Ok(());
    }
    write!(stdout, "{}", report::propagation_stdout(&reports))?;
    stdout.flush()?;
    if let Some(path) = &args.write {
        let command = report::propagation_command(&options, runs, Some(path.as_path()));
        report::write_sections(
            path,
            &[
                ("propagation-method".into(), report::propagation_method()),
                (
                    report::propagation_section_id(&reports[0]),
                    report::propagation_section(&reports, &command),
                ),
            ],
        )?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One run in a fresh process of this binary: a fresh heap for the memory figures.
async fn run_in_child(options: &Options, dir: Option<&PathBuf>) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut child = tokio::process::Command::new(exe);
    child.args([
        "propagation",
        "--json",
        "--agents",
        &options.agents.to_string(),
        "--rotations",
        &options.rotations.to_string(),
    ]);
    if let Some(dir) = dir {
        child.arg("--dir").arg(dir);
    }
    if !options.settle {
        child.arg("--back-to-back");
    }
    let out = child
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running a benchmark process")?;
    anyhow::ensure!(
        out.status.success(),
        "the benchmark process failed: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("reading the benchmark process's report")
}
