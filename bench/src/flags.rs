//! Flags that mean the same in several benchmarks, declared once and flattened into each
//! (`#[command(flatten)]`), so their names, help and defaults cannot drift apart.
//!
//! `--write` is every benchmark's: [`crate::benchmark::Run`] adds it. `--smoke` is nearly every
//! benchmark's too, but its help says what each one's tiny version is, so each keeps its own.

use std::path::PathBuf;

/// `--dir`: where the simulated hosts write their files (propagation, streams, fanout). The
/// filesystem decides what an fsync costs, so the reports name it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HostsDir {
    /// Where the simulated hosts' files are written (default: the temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `--agent-bin`: the real `keyward-agent` binary a benchmark runs (agent-idle, revocation).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentBinary {
    /// The agent binary (default: target/release-agent/keyward-agent, the agent as shipped; with
    /// --smoke the test build's target/debug/keyward-agent; KEYWARD_AGENT_BIN overrides either).
    #[arg(long, value_name = "FILE")]
    pub agent_bin: Option<PathBuf>,
}

impl AgentBinary {
    /// The binary to run: `--agent-bin`, or the default for a full or a smoke run.
    pub fn resolve(&self, smoke: bool) -> PathBuf {
        // The smoke run checks that the benchmark works, not the shipped build: it takes the
        // agent the test suite builds (`cargo build --workspace --bins`, or KEYWARD_AGENT_BIN).
        let default: fn() -> PathBuf = if smoke {
            keyward_tests::agent::agent_binary
        } else {
            crate::agent_idle::release_agent
        };
        self.agent_bin.clone().unwrap_or_else(default)
    }

    /// The command line that reproduces a run: `command`, with the agent chosen by `--agent-bin`
    /// set as the harness takes it.
    pub fn reproduce(&self, command: String) -> String {
        match &self.agent_bin {
            Some(bin) => format!("KEYWARD_AGENT_BIN={} {command}", bin.display()),
            None => command,
        }
    }

    /// For benchmarks whose harness takes the agent from `KEYWARD_AGENT_BIN`: when that is not
    /// the agent chosen, runs this binary again with it set (that child prints and records the
    /// results) and returns true; false when this process is the one to run the benchmark.
    pub async fn ran_in_child(&self, smoke: bool) -> anyhow::Result<bool> {
        use anyhow::Context;
        let bin = self.resolve(smoke);
        if std::env::var_os("KEYWARD_AGENT_BIN").as_deref() == Some(bin.as_os_str()) {
            return Ok(false);
        }
        let exe = std::env::current_exe().context("finding this binary")?;
        let status = tokio::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("KEYWARD_AGENT_BIN", &bin)
            .status()
            .await
            .context("running the benchmark with KEYWARD_AGENT_BIN")?;
        anyhow::ensure!(status.success(), "the benchmark failed: {status}");
        Ok(true)
    }
}
