//! The one interface of a benchmark subcommand: its flags, how it runs, and what it prints and
//! records.
//!
//! Every benchmark used to end the same way: build its Markdown, print it, and with `--write FILE`
//! replace its sections of that file, each declaring its own `--write` flag. Now a benchmark is
//! its flags (a `clap::Args` struct) implementing [`Benchmark`], `main.rs` declares its subcommand
//! once as a [`Run`] of them, and [`Run::execute`] adds `--write` and does the printing and the
//! recording for all.
//!
//! Only that much is shared. How a benchmark turns its flags into a run (a tiny `--smoke`
//! version, runs in child processes, a re-run under another environment) stays its own: those
//! differ from one benchmark to the next.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use crate::report::Publication;

/// A benchmark subcommand: implemented by the struct of its flags.
pub trait Benchmark: clap::Args + Debug {
    /// What `--write` replaces, for its help: "its `keygen` section is replaced".
    const WRITES: &'static str;

    /// Runs the benchmark as the flags say. `write` is `--write`'s file, which the command line
    /// shown in a report names.
    // Only `main` awaits these futures, on its own thread: they need no `Send` bound.
    #[allow(async_fn_in_trait)]
    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication>;
}

/// A benchmark's subcommand: its own flags, and `--write`.
#[derive(Debug, clap::Args)]
pub struct Run<B: Benchmark> {
    #[command(flatten)]
    pub benchmark: B,
    #[arg(long, value_name = "FILE", help = write_help(B::WRITES))]
    pub write: Option<PathBuf>,
}

fn write_help(writes: &str) -> String {
    format!("Record the results in this Markdown file ({writes})")
}

impl<B: Benchmark> Run<B> {
    /// Runs the benchmark, prints its Markdown, and with `--write` records its sections.
    pub async fn execute(self) -> anyhow::Result<()> {
        let write = self.write.as_deref();
        self.benchmark.run(write).await?.publish(write)
    }
}
