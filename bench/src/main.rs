//! `keyward-bench`: runs a benchmark, prints its Markdown table on stdout, and with `--write`
//! records it in `BENCHMARKS.md`.
//!
//! ```text
//! cargo run --release -p keyward-bench -- propagation --agents 1 --rotations 200
//! cargo run --release -p keyward-bench -- propagation --agents 1000 --rotations 200 --runs 2 --write BENCHMARKS.md
//! keyward-bench propagation --smoke
//! cargo run --release -p keyward-bench -- ingest --events 20000
//! cargo run --release -p keyward-bench -- replicas --agents 1000 --storm-agents 10000
//! ```
//!
//! Each benchmark is its flags implementing [`Benchmark`]; this file only lists them.

use clap::{Parser, Subcommand};
use keyward_bench::benchmark::Run;
use keyward_bench::{
    agent_idle, agent_warnings, audit_export, certificate_revocation, certificates, cluster,
    fanout, ingest, keygen, live_hosts, propagation, recording, replicas, rest, revocation,
    rotate_all, rotate_latency, streams, suite,
};

#[derive(Debug, Parser)]
#[command(name = "keyward-bench", about = "keyward's benchmarks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every benchmark of the suite, one after another (about 60 minutes; --smoke: a few minutes).
    All(suite::Args),
    /// Time from the REST rotate call returning to the key's file renamed on the host.
    Propagation(Run<propagation::Args>),
    /// Login events stored per second, into SQLite and into PostgreSQL.
    Ingest(Run<ingest::Args>),
    /// `GET .../ssh-credentials` per second and p99 on SQLite and PostgreSQL, beside OpenBao's KV read.
    Rest(Run<rest::Args>),
    /// The real keyward-agent while idle: resident memory, wakeups, stripped binary size.
    AgentIdle(Run<agent_idle::Args>),
    /// The control plane holding N agent streams: its memory per agent and its idle CPU.
    Streams(Run<streams::Args>),
    /// rotate-all of N Ed25519 tenants: from the call to every host's acknowledgement.
    Fanout(Run<fanout::Args>),
    /// RSA-4096 keys per second on one core: keyward's generator beside ssh-keygen, interleaved.
    Keygen(Run<keygen::Args>),
    /// rotate-all of N RSA-4096 tenants against pure key generation on all cores.
    RotateAll(Run<rotate_all::Args>),
    /// One RSA-4096 rotate call's p50/p99 with the key pool off and on, side by side.
    RotateLatency(Run<rotate_latency::Args>),
    /// Revoke → key gone from the file and its session ended, plain and under a stall attack;
    /// agent CPU under a chmod loop.
    Revocation(Run<revocation::Args>),
    /// The live hosts view: N hosts reporting, M admin streams, hosts changing at a fixed rate.
    LiveHosts(Run<live_hosts::Args>),
    /// Three replicas on one PostgreSQL: propagation across replicas, and a reconnection storm
    /// when one is killed.
    Replicas(Run<replicas::Args>),
    /// Certificates signed per second through OpenBao beside its KV write; KRL size, encode,
    /// apply and read with 100,000 revocations; sshd's login time with that KRL.
    Certificates(Run<certificates::Args>),
    /// Certificate revocation: REST revoke answered → a new login with it refused by sshd, with
    /// 1 and 1,000 agents of the tenant connected.
    CertificateRevocation(Run<certificate_revocation::Args>),
    /// Audit events per second to each SIEM sink; a rotate call with three sinks (one down)
    /// beside one with none.
    AuditExport(Run<audit_export::Args>),
    /// Session recording on the host: agent CPU and stream bytes a minute of a busy and a
    /// flooding session, and the login latency recording adds, with recording on and off.
    Recording(Run<recording::Args>),
    /// A control plane in this process until stdin closes (used by `streams`; with
    /// `--database-url`, a replica of a deployment, used by `replicas`).
    #[command(hide = true)]
    ControlPlaneChild(cluster::ChildArgs),
}

/// Warnings on stderr (`RUST_LOG` overrides), without the expected ones: the Vault client logs
/// every 404 of a secret that does not exist yet, and the control plane the bootstrap token.
/// The in-process agents' warnings are also counted ([`agent_warnings`]).
fn init_logging() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,rustify=off,vaultrs=off,keyward_server::server=error",
        )
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_filter(filter),
        )
        .with(agent_warnings::Counter.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::All(args) => suite::command(args).await,
        Command::Propagation(run) => run.execute().await,
        Command::Ingest(run) => run.execute().await,
        Command::Rest(run) => run.execute().await,
        Command::AgentIdle(run) => run.execute().await,
        Command::Streams(run) => run.execute().await,
        Command::Fanout(run) => run.execute().await,
        Command::Keygen(run) => run.execute().await,
        Command::RotateAll(run) => run.execute().await,
        Command::RotateLatency(run) => run.execute().await,
        Command::Revocation(run) => run.execute().await,
        Command::LiveHosts(run) => run.execute().await,
        Command::Replicas(run) => run.execute().await,
        Command::Certificates(run) => run.execute().await,
        Command::CertificateRevocation(run) => run.execute().await,
        Command::AuditExport(run) => run.execute().await,
        Command::Recording(run) => run.execute().await,
        Command::ControlPlaneChild(args) => cluster::serve_child(args).await,
    }
}
