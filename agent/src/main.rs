//! `keyward-agent`: the per-host daemon.
//!
//! Only the command-line surface exists so far; the gRPC stream, the authorized_keys writer and
//! the login reader arrive with the "Agent and mTLS gRPC" work (see docs/ARCHITECTURE.md).

use clap::Parser;

/// keyward's per-host agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("keyward-agent: no commands are implemented yet; see README.md")
}
