//! The agent at rest: resident memory and wakeups of the real `keyward-agent` binary while idle,
//! and the size of the stripped binary.
//!
//! - OpenBao (dev, a child process) and a control plane (SQLite, tasks of this process, Ed25519
//!   keys) on loopback ports; a tenant whose two Unix users are real users made for the run
//!   (`useradd`, removed afterwards: root needed, as the agent itself needs).
//! - The agent binary (`target/release-agent/keyward-agent` by default: the size-optimised build
//!   of the root Cargo.toml's `release-agent` profile, the one the `.deb` ships; `cargo build
//!   --profile release-agent -p keyward-agent`) is enrolled with its own `enroll` subcommand and
//!   started with `run`, as systemd would: its configuration manages both
//!   users (so the file watcher watches both homes) and follows a login log (an empty file), so
//!   every part of an idle production agent is there: the mTLS gRPC stream with its keepalive,
//!   the watcher thread, the login-log follower and the certificate renewal timer.
//! - Once the control plane shows the host `in_sync` (the first state applied and
//!   acknowledged), the agent is left alone for the settle time, then observed for the window:
//!   - memory: `VmRSS` (and its anonymous and file parts), `VmHWM` and threads from
//!     `/proc/PID/status`, at the start and the end of the window;
//!   - wakeups: the sum over every thread (`/proc/PID/task/*/status`) of
//!     `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches`, at the start and the end of the
//!     window (each time a thread is switched out after running is a wakeup it had); per thread,
//!     by name; and CPU time (`utime`+`stime` of `/proc/PID/stat`). When `perf` works, `perf stat
//!     -e context-switches,task-clock -p PID` over the same window cross-checks the count.
//! - Binary size: the agent binary as built, and a copy stripped with `strip`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keyward_tests::{ControlPlane, Database, OpenBao, TestUser};
use reqwest::Method;
use serde_json::json;

use crate::benchmark::Benchmark;
use crate::flags::AgentBinary;
use crate::machine::{Load, Machine};
use crate::report::Publication;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The agent binary measured.
    pub agent_bin: PathBuf,
    /// Seconds left alone after the first apply, before the window.
    pub settle_seconds: u64,
    /// Seconds observed.
    pub window_seconds: u64,
    pub smoke: bool,
}

impl Options {
    /// 10 s to settle, a 60 s window, the release agent.
    pub fn new(agent_bin: PathBuf) -> Self {
        Self {
            agent_bin,
            settle_seconds: 10,
            window_seconds: 60,
            smoke: false,
        }
    }

    /// The test suite's version: no settling, a 2 s window.
    pub fn smoke(agent_bin: PathBuf) -> Self {
        Self {
            agent_bin,
            settle_seconds: 0,
            window_seconds: 2,
            smoke: true,
        }
    }

    pub fn command(&self, write: Option<&Path>) -> String {
        let mut c = String::from("cargo run --release -p keyward-bench -- agent-idle");
        if self.smoke {
            c.push_str(" --smoke");
        } else {
            if self.window_seconds != 60 {
                let _ = write!(c, " --window {}", self.window_seconds);
            }
            if self.settle_seconds != 10 {
                let _ = write!(c, " --settle {}", self.settle_seconds);
            }
        }
        if let Some(path) = write {
            let _ = write!(c, " --write {}", path.display());
        }
        c
    }
}

/// The profile the agent ships with (root Cargo.toml, `[profile.release-agent]`): fat LTO, one
/// codegen unit, opt-level "s".
pub const AGENT_PROFILE: &str = "release-agent";

/// `target/release-agent/keyward-agent`, the agent as the `.deb` ships it (or `KEYWARD_AGENT_BIN`).
pub fn release_agent() -> PathBuf {
    std::env::var_os("KEYWARD_AGENT_BIN").map_or_else(
        || {
            keyward_tests::workspace_root()
                .join("target")
                .join(AGENT_PROFILE)
                .join("keyward-agent")
        },
        PathBuf::from,
    )
}

/// Memory of the process at one moment, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub hwm: u64,
    pub threads: u64,
}

/// Context switches and CPU time of every thread at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    /// Per thread id: (name, voluntary, involuntary).
    pub threads: BTreeMap<u32, (String, u64, u64)>,
    /// Process CPU time, clock ticks.
    pub cpu_ticks: u64,
}

/// What perf said over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfCount {
    pub context_switches: u64,
    pub task_clock_ms: f64,
}

/// The result.
#[derive(Debug, Clone)]
pub struct IdleReport {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub agent_version: String,
    pub load_before: Load,
    pub load_after: Load,
    /// Seconds from start to `in_sync`.
    pub time_to_sync: f64,
    pub memory_start: Memory,
    pub memory_end: Memory,
    pub window: Duration,
    /// Per thread name: wakeups (voluntary + involuntary switches) in the window.
    pub wakeups_by_thread: BTreeMap<String, (u64, u64)>,
    pub wakeups: u64,
    pub involuntary: u64,
    pub cpu_ms: f64,
    pub perf: Option<PerfCount>,
    /// Why there is no perf figure.
    pub perf_note: Option<String>,
    pub binary_bytes: u64,
    pub stripped_bytes: u64,
    pub log_tail: String,
}

impl IdleReport {
    pub fn wakeups_per_minute(&self) -> f64 {
        self.wakeups as f64 * 60.0 / self.window.as_secs_f64()
    }
}

/// The target the issue sets for resident memory while idle.
pub const RSS_TARGET: u64 = 8 << 20;

fn status_kb(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Memory of `pid` from `/proc/PID/status`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(Memory {
        rss: status_kb(&text, "VmRSS") * 1024,
        rss_anon: status_kb(&text, "RssAnon") * 1024,
        rss_file: status_kb(&text, "RssFile") * 1024,
        hwm: status_kb(&text, "VmHWM") * 1024,
        threads: status_kb(&text, "Threads"),
    })
}

/// Context switches of every thread of `pid`, and its CPU time.
pub fn switches(pid: u32) -> anyhow::Result<Switches> {
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread can end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_default();
        threads.insert(
            tid,
            (
                name,
                status_kb(&status, "voluntary_ctxt_switches"),
                status_kb(&status, "nonvoluntary_ctxt_switches"),
            ),
        );
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Switches {
        threads,
        cpu_ticks: tick(11) + tick(12),
    })
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// `perf stat -x, -e context-switches,task-clock -p PID -- sleep SECONDS`.
async fn perf_stat(pid: u32, seconds: u64) -> Result<PerfCount, String> {
    let out = tokio::process::Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "context-switches,task-clock",
            "-p",
            &pid.to_string(),
            "--",
            "sleep",
            &seconds.to_string(),
        ])
        .stdout(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("perf could not run: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    let mut switches = None;
    let mut clock = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < 3 {
            continue;
        }
        if fields[2].starts_with("context-switches") {
            switches = fields[0].parse::<u64>().ok();
        } else if fields[2].starts_with("task-clock") {
            clock = fields[0].parse::<f64>().ok();
        }
    }
    match (switches, clock) {
        (Some(context_switches), Some(task_clock_ms)) => Ok(PerfCount {
            context_switches,
            task_clock_ms,
        }),
        _ => Err(format!("perf stat gave no count: {}", text.trim())),
    }
}

/// Size of `bin`, and of a copy stripped with `strip`.
pub fn binary_sizes(bin: &Path) -> anyhow::Result<(u64, u64)> {
    let size = std::fs::metadata(bin)
        .with_context(|| format!("reading {}", bin.display()))?
        .len();
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("keyward-agent");
    std::fs::copy(bin, &copy)?;
    let status = std::process::Command::new("strip")
        .arg(&copy)
        .status()
        .context("running strip (Debian package binutils; scripts/install-bench-deps)")?;
    anyhow::ensure!(status.success(), "strip failed: {status}");
    Ok((size, std::fs::metadata(&copy)?.len()))
}

async fn admin(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let reply = cp
        .request(method, path, Some(&cp.admin_token), Some(body))
        .await;
    anyhow::ensure!(
        reply.status / 100 == 2,
        "{path} answered {}: {}",
        reply.status,
        reply.text()
    );
    Ok(reply.json())
}

/// Runs the benchmark.
pub async fn run(options: &Options) -> anyhow::Result<IdleReport> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the agent benchmark runs the real agent on real Unix users: run it as root");
    }
    anyhow::ensure!(
        options.agent_bin.is_file(),
        "{} is missing: build it with `cargo build --profile {AGENT_PROFILE} -p keyward-agent`",
        options.agent_bin.display()
    );
    let agent_version = std::process::Command::new(&options.agent_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (binary_bytes, stripped_bytes) = binary_sizes(&options.agent_bin)?;

    let mut bao = OpenBao::start().await;
    let mut cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let admin_user = TestUser::create("ia");
    let tenant_user = TestUser::create("it");
    admin(
        &cp,
        Method::POST,
        "/api/v1/admin/tenants",
        json!({
            "tenantId": "idle",
            "vpsIp": "127.0.0.1",
            "sshPort": 22,
            "sshUsername": tenant_user.name,
            "adminUsername": admin_user.name,
        }),
    )
    .await?;
    let host = admin(
        &cp,
        Method::POST,
        "/api/v1/admin/hosts",
        json!({ "tenantId": "idle" }),
    )
    .await?;
    let host_id = crate::cluster::string_field(&host, "hostId")?;
    let token = crate::cluster::string_field(&host, "enrollmentToken")?;

    let dir = tempfile::Builder::new()
        .prefix("keyward-bench-agent-")
        .tempdir()?;
    let state_dir = dir.path().join("state");
    let host_keys = dir.path().join("host-keys");
    std::fs::create_dir(&host_keys)?;
    std::fs::write(
        host_keys.join("ssh_host_ed25519_key.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@bench\n",
    )?;
    let login_log = dir.path().join("auth.log");
    std::fs::write(&login_log, "")?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nhost_key_dir = \"{}\"\nsshd_dir = \"{}\"\n\n[[users]]\nname = \"{}\"\nmode = \"exclusive\"\n\n[[users]]\nname = \"{}\"\nmode = \"preserve\"\n\n[logins]\nsource = \"file\"\npath = \"{}\"\n",
            state_dir.display(),
            host_keys.display(),
            dir.path().join("sshd").display(),
            admin_user.name,
            tenant_user.name,
            login_log.display()
        ),
    )?;
    let out = tokio::process::Command::new(&options.agent_bin)
        .args(["enroll", "--server", &cp.url, "--config"])
        .arg(&config)
        .env("KEYWARD_ENROLL_TOKEN", &token)
        .output()
        .await
        .context("running keyward-agent enroll")?;
    anyhow::ensure!(
        out.status.success(),
        "keyward-agent enroll failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let load_before = Load::now();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&options.agent_bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting keyward-agent run")?;
    let pid = child.id().context("the agent has no pid")?;

    let result = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = admin_get(&cp, &format!("/api/v1/admin/hosts/{host_id}")).await?;
            if view["status"] == "in_sync" && view["connected"] == true {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not reach in_sync within 30 s: {view}\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let time_to_sync = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(options.settle_seconds)).await;
        let memory_start = memory(pid)?;
        let before = switches(pid)?;
        let window_started = Instant::now();
        let perf = tokio::spawn(perf_stat(pid, options.window_seconds));
        tokio::time::sleep(Duration::from_secs(options.window_seconds)).await;
        let after = switches(pid)?;
        let window = window_started.elapsed();
        let memory_end = memory(pid)?;
        let (perf, perf_note) = match perf.await {
            Ok(Ok(p)) => (Some(p), None),
            Ok(Err(e)) => (None, Some(e)),
            Err(e) => (None, Some(e.to_string())),
        };
        let mut by_thread: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let (mut wakeups, mut involuntary) = (0, 0);
        for (tid, (name, v, i)) in &after.threads {
            let (v0, i0) = before
                .threads
                .get(tid)
                .map_or((0, 0), |(_, v0, i0)| (*v0, *i0));
            let (dv, di) = (v.saturating_sub(v0), i.saturating_sub(i0));
            let e = by_thread.entry(name.clone()).or_default();
            e.0 += dv + di;
            e.1 += 1;
            wakeups += dv + di;
            involuntary += di;
        }
        let cpu_ms = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 * 1000.0
            / clock_ticks_per_second();
        Ok((
            time_to_sync,
            memory_start,
            memory_end,
            window,
            by_thread,
            wakeups,
            involuntary,
            cpu_ms,
            perf,
            perf_note,
        ))
    }
    .await;
    let _ = child.kill().await;
    let _ = child.wait().await;
    let load_after = Load::now();
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    cp.stop().await;
    bao.stop().await;
    drop((admin_user, tenant_user));
    let (
        time_to_sync,
        memory_start,
        memory_end,
        window,
        wakeups_by_thread,
        wakeups,
        involuntary,
        cpu_ms,
        perf,
        perf_note,
    ) = result?;
    let log_tail = log_text
        .lines()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Ok(IdleReport {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        agent_version,
        load_before,
        load_after,
        time_to_sync,
        memory_start,
        memory_end,
        window,
        wakeups_by_thread,
        wakeups,
        involuntary,
        cpu_ms,
        perf,
        perf_note,
        binary_bytes,
        stripped_bytes,
        log_tail,
    })
}

async fn admin_get(cp: &ControlPlane, path: &str) -> anyhow::Result<serde_json::Value> {
    let reply = cp.admin_get(path).await;
    anyhow::ensure!(reply.status == 200, "{path}: {}", reply.text());
    Ok(reply.json())
}

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "agent-idle";

fn mib(n: u64) -> String {
    format!("{:.2} MiB", n as f64 / f64::from(1u32 << 20))
}

/// The report as a `BENCHMARKS.md` section.
pub fn markdown(report: &IdleReport, command: &str) -> String {
    let mut out = String::from("## Agent: idle\n\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. Agent: `{}` ({}). Started {}; load average {} before, {} after.\n",
        report.machine.describe(),
        report.options.agent_bin.display(),
        report.agent_version,
        report.started_at,
        report.load_before,
        report.load_after,
    );
    let _ = writeln!(
        out,
        "Method: the real agent binary, enrolled with its own `enroll` and started with `run` \
         (`RUST_LOG=info`), manages two real Unix users (file watcher on both homes) and follows \
         a login log, connected over mTLS gRPC to a control plane on loopback (SQLite, OpenBao \
         dev). It reached `in_sync` {:.2} s after starting; it was then left alone {} s, and \
         observed for {:.1} s. Wakeups are the context switches of all its threads (voluntary + \
         involuntary, `/proc/PID/task/*/status`) over the window, scaled to a minute.\n",
        report.time_to_sync,
        report.options.settle_seconds,
        report.window.as_secs_f64(),
    );
    let rss = report.memory_end.rss;
    let verdict = if rss <= RSS_TARGET {
        format!("met ({} under)", mib(RSS_TARGET - rss))
    } else {
        format!("**missed by {}**", mib(rss - RSS_TARGET))
    };
    out.push_str("| measure | value | target |\n|---|---|---|\n");
    let _ = writeln!(
        out,
        "| resident memory (VmRSS) at the end of the window | **{}** (anon {}, file {}) | ≤ 8 MiB: {verdict} |",
        mib(rss),
        mib(report.memory_end.rss_anon),
        mib(report.memory_end.rss_file)
    );
    let _ = writeln!(
        out,
        "| VmRSS at the start of the window; peak (VmHWM) | {}; {} | |",
        mib(report.memory_start.rss),
        mib(report.memory_end.hwm)
    );
    let _ = writeln!(out, "| threads | {} | |", report.memory_end.threads);
    let _ = writeln!(
        out,
        "| **wakeups per minute** (context switches, all threads) | **{:.1}** ({} in {:.1} s, of which {} involuntary) | |",
        report.wakeups_per_minute(),
        report.wakeups,
        report.window.as_secs_f64(),
        report.involuntary
    );
    let perf = match (&report.perf, &report.perf_note) {
        (Some(p), _) => format!(
            "{} context switches, task-clock {:.1} ms ({:.1} per minute)",
            p.context_switches,
            p.task_clock_ms,
            p.context_switches as f64 * 60.0 / report.window.as_secs_f64()
        ),
        (None, Some(note)) => format!("not available: {}", note.replace('\n', " ")),
        (None, None) => "not run".into(),
    };
    let _ = writeln!(
        out,
        "| `perf stat -e context-switches,task-clock -p PID` over the window | {perf} | |"
    );
    let _ = writeln!(
        out,
        "| CPU time in the window (utime+stime) | {:.0} ms ({:.3}% of one core) | |",
        report.cpu_ms,
        report.cpu_ms / 10.0 / report.window.as_secs_f64()
    );
    let _ = writeln!(out, "| binary as built | {} | |", mib(report.binary_bytes));
    let _ = writeln!(
        out,
        "| **stripped binary** (`strip` of a copy) | **{}** | |",
        mib(report.stripped_bytes)
    );
    out.push_str(
        "\nWakeups by thread (name: context switches in the window, threads of that name):\n\n",
    );
    let threads: Vec<String> = report
        .wakeups_by_thread
        .iter()
        .map(|(name, (n, count))| format!("`{name}` {n} ({count})"))
        .collect();
    let _ = writeln!(out, "{}.", threads.join(", "));
    out
}

/// `keyward-bench agent-idle`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds observed.
    #[arg(long, default_value_t = 60)]
    pub window: u64,
    /// Seconds left alone after the first apply before the window.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    #[command(flatten)]
    pub agent: AgentBinary,
    /// The test suite's version: no settling, a 2 s window.
    #[arg(long)]
    pub smoke: bool,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `agent-idle` section is replaced";

    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        let bin = self.agent.resolve(self.smoke);
        let options = if self.smoke {
            Options::smoke(bin)
        } else {
            Options {
                settle_seconds: self.settle,
                window_seconds: self.window,
                ..Options::new(bin)
            }
        };
        let report = run(&options).await?;
        let text = markdown(&report, &options.command(write));
        Ok(Publication::section(SECTION, text))
    }
}
