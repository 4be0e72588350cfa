//! `keyward-bench all`: every benchmark of the suite, one after another, each in a fresh process
//! of this binary (a fresh heap for the memory figures, nothing left over from the previous
//! one), each writing its own sections of `BENCHMARKS.md` with `--write`. `--smoke` runs the
//! tiny version of each (what the test suite runs); the full suite takes about 60 minutes on
//! two cores.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

/// One benchmark of the suite: the subcommand line to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    /// What the step measures, for the summary table.
    pub measures: &'static str,
    pub args: Vec<String>,
}

/// How a step went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub step: Step,
    pub ok: bool,
    pub elapsed: Duration,
}

fn step(name: &'static str, measures: &'static str, args: &[&str]) -> Step {
    Step {
        name,
        measures,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// The suite, in the order it runs: the quick and CPU-bound first, the 10,000-agent runs last.
/// `tmpfs` is where the 10,000 simulated hosts keep their files (ext4 takes minutes to delete
/// them); `write` is passed on as `--write`.
pub fn steps(smoke: bool, tmpfs: &Path, write: Option<&Path>) -> Vec<Step> {
    let tmpfs = tmpfs.to_string_lossy().into_owned();
    let mut steps = if smoke {
        vec![
            step(
                "keygen",
                "RSA-4096 generation vs ssh-keygen",
                &["keygen", "--smoke"],
            ),
            step(
                "rotate-all",
                "bulk rotation vs pure generation",
                &["rotate-all", "--smoke"],
            ),
            step(
                "rotate-latency",
                "one RSA-4096 rotate call, key pool off and on",
                &["rotate-latency", "--smoke"],
            ),
            step(
                "propagation",
                "rotate call → file renamed",
                &["propagation", "--smoke"],
            ),
            step(
                "fanout",
                "Ed25519 rotate-all → every ack",
                &["fanout", "--smoke"],
            ),
            step(
                "streams",
                "memory and idle CPU per stream",
                &["streams", "--smoke"],
            ),
            step(
                "agent-idle",
                "agent RSS, wakeups, size",
                &["agent-idle", "--smoke"],
            ),
            step(
                "rest",
                "GET ssh-credentials vs OpenBao KV",
                &["rest", "--smoke"],
            ),
            step(
                "revocation",
                "revoke → file and session, stall, chmod loop",
                &["revocation", "--smoke"],
            ),
            step(
                "ingest",
                "login events stored per second",
                &["ingest", "--events", "200", "--batch", "50"],
            ),
            step(
                "live-hosts",
                "hosts stream: CPU, bytes per host change, tenant latency",
                &["live-hosts", "--smoke"],
            ),
            step(
                "replicas",
                "three replicas: propagation across them, reconnection storm",
                &["replicas", "--smoke"],
            ),
            step(
                "certificates",
                "certificates signed/s, KRL size and apply, sshd login with a KRL",
                &["certificates", "--smoke"],
            ),
            step(
                "certificate-revocation",
                "certificate revoke → new logins refused by sshd, 1 and 20 agents",
                &["certificate-revocation", "--smoke"],
            ),
            step(
                "audit-export",
                "audit events/s per SIEM sink; rotate with three sinks, one down",
                &["audit-export", "--smoke"],
            ),
            step(
                "recording",
                "session recording: agent CPU, stream bytes/min, added login latency",
                &["recording", "--smoke"],
            ),
        ]
    } else {
        vec![
            step("keygen", "RSA-4096 generation vs ssh-keygen", &["keygen"]),
            step(
                "rotate-all",
                "bulk rotation vs pure generation",
                &["rotate-all"],
            ),
            step(
                "rotate-latency",
                "one RSA-4096 rotate call, key pool off and on",
                &["rotate-latency"],
            ),
            step(
                "propagation 1",
                "rotate call → file renamed, 1 agent",
                &["propagation", "--agents", "1", "--rotations", "200"],
            ),
            step(
                "propagation 1,000",
                "rotate call → file renamed, 1,000 agents",
                &["propagation", "--agents", "1000", "--rotations", "200"],
            ),
            step("agent-idle", "agent RSS, wakeups, size", &["agent-idle"]),
            step("rest", "GET ssh-credentials vs OpenBao KV", &["rest"]),
            step(
                "certificates",
                "certificates signed/s, KRL size and apply, sshd login with a 100k KRL",
                &["certificates"],
            ),
            step(
                "certificate-revocation",
                "certificate revoke → new logins refused by sshd, 1 and 1,000 agents",
                &["certificate-revocation"],
            ),
            step(
                "audit-export",
                "audit events/s per SIEM sink; rotate with three sinks, one down",
                &["audit-export"],
            ),
            step(
                "recording",
                "session recording: agent CPU, stream bytes/min, added login latency",
                &["recording"],
            ),
            step(
                "revocation",
                "revoke → file and session, stall, chmod loop",
                &["revocation"],
            ),
            step(
                "ingest",
                "login events stored per second",
                &["ingest", "--events", "20000"],
            ),
            step(
                "propagation 10,000",
                "rotate call → file renamed, 10,000 agents",
                &[
                    "propagation",
                    "--agents",
                    "10000",
                    "--rotations",
                    "200",
                    "--dir",
                    &tmpfs,
                ],
            ),
            step(
                "streams 10,000",
                "memory and idle CPU per stream",
                &["streams", "--agents", "10000", "--dir", &tmpfs],
            ),
            step(
                "fanout 10,000",
                "Ed25519 rotate-all → every ack",
                &["fanout", "--agents", "10000", "--dir", &tmpfs],
            ),
            step(
                "live-hosts 10,000",
                "hosts stream: 500 admins, 10,000 hosts, CPU, bytes per host change",
                &["live-hosts"],
            ),
            step(
                "replicas 1,000 / 10,000",
                "three replicas: propagation across them (1,000), reconnection storm (10,000)",
                &[
                    "replicas",
                    "--agents",
                    "1000",
                    "--rotations",
                    "200",
                    "--storm-agents",
                    "10000",
                    "--dir",
                    &tmpfs,
                ],
            ),
        ]
    };
    if let Some(path) = write {
        for step in &mut steps {
            step.args.push("--write".into());
            step.args.push(path.to_string_lossy().into_owned());
        }
    }
    steps
}

/// Runs the steps one by one, their tables going to stdout as they come; a failing step is
/// reported and the suite goes on.
pub async fn run(steps: Vec<Step>) -> anyhow::Result<Vec<Outcome>> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut outcomes = Vec::with_capacity(steps.len());
    for step in steps {
        eprintln!("== keyward-bench {}", step.args.join(" "));
        let started = Instant::now();
        let status = tokio::process::Command::new(&exe)
            .args(&step.args)
            .status()
            .await
            .with_context(|| format!("running {}", step.name))?;
        if !status.success() {
            eprintln!("== {} failed: {status}", step.name);
        }
        outcomes.push(Outcome {
            step,
            ok: status.success(),
            elapsed: started.elapsed(),
        });
    }
    Ok(outcomes)
}

/// The suite's summary: one row per step.
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut out = String::from("| benchmark | measures | result | minutes |\n|---|---|---|---|\n");
    for o in outcomes {
        out.push_str(&format!(
            "| `{}` | {} | {} | {:.1} |\n",
            o.step
                .args
                .iter()
                .take_while(|a| *a != "--write")
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            o.step.measures,
            if o.ok { "done" } else { "**failed**" },
            o.elapsed.as_secs_f64() / 60.0
        ));
    }
    out
}

/// The default place for the 10,000 hosts' files: `/dev/shm` when it is there.
pub fn default_tmpfs() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// `keyward-bench all`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Each benchmark's tiny version (the test suite's).
    #[arg(long)]
    pub smoke: bool,
    /// Record the results in this Markdown file (each benchmark replaces its own sections).
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Where the 10,000-agent runs keep the simulated hosts' files (default: /dev/shm).
    #[arg(long, value_name = "DIR")]
    pub tmpfs: Option<PathBuf>,
}

/// Runs `keyward-bench all`: every step, then the summary; fails when a step failed.
pub async fn command(args: Args) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmpfs = args.tmpfs.unwrap_or_else(default_tmpfs);
    let outcomes = run(steps(args.smoke, &tmpfs, args.write.as_deref())).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "\n## The suite\n")?;
    stdout.write_all(summary(&outcomes).as_bytes())?;
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    anyhow::ensure!(failed == 0, "{failed} benchmark(s) failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_writes_when_asked_and_smoke_steps_are_small() {
        let full = steps(false, Path::new("/dev/shm"), Some(Path::new("B.md")));
        assert!(
            full.iter()
                .all(|s| s.args.ends_with(&["--write".into(), "B.md".into()]))
        );
        assert!(full.iter().any(|s| s.args.contains(&"10000".to_owned())));
        let smoke = steps(true, Path::new("/dev/shm"), None);
        assert!(
            smoke
                .iter()
                .all(|s| !s.args.contains(&"--write".to_owned()))
        );
        assert!(
            smoke
                .iter()
                .all(|s| !s.args.iter().any(|a| a == "10000" || a == "1000"))
        );
        let table = summary(&[Outcome {
            step: smoke[0].clone(),
            ok: false,
            elapsed: Duration::from_secs(90),
        }]);
        assert!(
            table.contains(
                "| `keygen --smoke` | RSA-4096 generation vs ssh-keygen | **failed** | 1.5 |"
            ),
            "{table}"
        );
    }
}
