//! Session recording's cost on the host (issue #19): the agent's CPU and the recording stream's
//! bytes a minute for a busy interactive session and for one flooding its terminal, and what
//! recording adds to a login. Each measure is taken with recording on and off in the same run.
//!
//! Everything runs on one real deployment (`keyward_tests::Deployment`): OpenBao (dev), the
//! control plane (SQLite, Ed25519 keys) in this process, Debian's sshd on a loopback port, the
//! real `keyward-agent` binary with `[recording]` as the package sets it up (the package's
//! wrapper, Debian's `tlog-rec-session` set-user-ID to `_tlog`, the spool `_tlog`'s), and real
//! `ssh` clients logging in as the platform's admin user, whose sessions the default policy
//! records. "Off" is the tenant's recording policy with `recordAdmin: false`: the admin's key
//! line then runs no recorder at all. Root is needed, as for the agent itself.
//!
//! 1. **Sessions**: `ssh -tt` to a shell's prompt, then for the session's seconds either a
//!    command typed every 250 ms (`ls -l /usr/bin | head -n 40`: a person working, ~11 KiB of
//!    output a second) or one command flooding the terminal (`timeout S yes …`). The agent's CPU
//!    (`utime`+`stime`) is taken from the prompt until the recording is stored (on) or the
//!    session has ended and tlog's 2 s latency has passed (off); the recorder's
//!    (`tlog-rec-session`) just before `exit`. The recording's size and chunks are the control
//!    plane's; the session's terminal bytes are what the `ssh` client read.
//! 2. **Logins**: `ssh -i KEY admin@127.0.0.1 true`, from the spawn to the client's exit, in four
//!    alternating blocks (on, off, on, off) so that drift of the machine falls on both.
//!
//! Every wait is bounded.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keyward_common::KeyAlgorithm;
use keyward_tests::Deployment;
use reqwest::Method;
use serde_json::{Value, json};

use crate::benchmark::Benchmark;
use crate::flags::AgentBinary;
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::stats::{Summary, millis};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `ssh … true` logins per mode (on, off), in two blocks each.
    pub logins: usize,
    /// Length of each session's work.
    pub session_seconds: u64,
    pub smoke: bool,
}

impl Options {
    /// 40 logins a mode, 60 s sessions.
    pub fn new(logins: usize, session_seconds: u64) -> Self {
        Self {
            logins,
            session_seconds,
            smoke: false,
        }
    }

    /// The test suite's version: 4 logins a mode, 4 s sessions.
    pub fn smoke() -> Self {
        Self {
            smoke: true,
            ..Self::new(4, 4)
        }
    }

    pub fn command(&self, write: Option<&Path>) -> String {
        let mut c = String::from("cargo run --release -p keyward-bench -- recording");
        if self.smoke {
            c.push_str(" --smoke");
        } else {
            if self.logins != 40 {
                let _ = write!(c, " --logins {}", self.logins);
            }
            if self.session_seconds != 60 {
                let _ = write!(c, " --session-seconds {}", self.session_seconds);
            }
        }
        if let Some(path) = write {
            let _ = write!(c, " --write {}", path.display());
        }
        c
    }
}

/// What a session does once its prompt is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// A command typed every 250 ms, each printing a 40-line listing.
    Busy,
    /// One command writing to the terminal as fast as it can.
    Flood,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Self::Busy => "busy (a command typed every 250 ms)",
            Self::Flood => "flood (`yes` to the terminal)",
        }
    }
}

/// The recording of a session, as the control plane stored it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stored {
    pub size_bytes: u64,
    pub dropped_bytes: u64,
    pub chunks: u64,
    /// From the `ssh` client's exit to the recording `complete` on the control plane.
    pub complete_after_ms: f64,
}

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    pub workload: Workload,
    pub recorded: bool,
    /// The work's length: from the first command typed to the end marker seen.
    pub seconds: f64,
    /// Bytes the `ssh` client read from the session's terminal.
    pub terminal_bytes: u64,
    /// The agent's CPU seconds over the session and, when recorded, until its recording was
    /// stored.
    pub agent_cpu_seconds: f64,
    /// The recorder's CPU seconds over the session (recorded sessions only).
    pub recorder_cpu_seconds: Option<f64>,
    pub stored: Option<Stored>,
}

impl Session {
    fn per_minute(&self, x: f64) -> f64 {
        if self.seconds > 0.0 {
            x * 60.0 / self.seconds
        } else {
            0.0
        }
    }
    pub fn agent_cpu_per_minute(&self) -> f64 {
        self.per_minute(self.agent_cpu_seconds)
    }
    pub fn stream_bytes_per_minute(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        self.stored.map(|s| self.per_minute(s.size_bytes as f64))
    }
}

/// The result.
#[derive(Debug, Clone)]
pub struct RecordingReport {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub agent_bin: PathBuf,
    pub agent_version: String,
    pub load_before: Load,
    pub load_after: Load,
    pub sessions: Vec<Session>,
    /// `ssh … true` wall times in milliseconds.
    pub logins_on: Vec<f64>,
    pub logins_off: Vec<f64>,
    /// The agent's warnings over the run: (message, count), most frequent first.
    pub agent_warnings: Vec<(String, usize)>,
}

/// The admin user's recording under the tenant's policy, on or off; waits until the admin's key
/// line says so (the agent applied it).
async fn record_admin(d: &Deployment, on: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/admin/tenants/{}/recording-policy", d.tenant);
    let body = json!({ "recordAdmin": on, "recordTenant": false, "recordInput": false });
    let reply =
        d.cp.request(Method::PUT, &path, Some(&d.cp.admin_token), Some(body))
            .await;
    anyhow::ensure!(
        reply.status == 200,
        "{path} answered {}: {}",
        reply.status,
        reply.text()
    );
    let file = d.admin.authorized_keys();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if !text.is_empty() && text.contains("record-session ") == on {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the admin's key line did not change to recording {on} within 30 s: {text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin's recordings as the control plane lists them (the newest 500).
async fn recordings(d: &Deployment) -> anyhow::Result<Vec<Value>> {
    let path = format!("/api/v1/admin/recordings?tenantId={}&limit=500", d.tenant);
    let reply = d.cp.admin_get(&path).await;
    anyhow::ensure!(
        reply.status == 200,
        "{path} answered {}: {}",
        reply.status,
        reply.text()
    );
    Ok(reply.json()["recordings"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn id_of(recording: &Value) -> String {
    recording["id"].as_str().unwrap_or_default().to_owned()
}

/// The one recording not in `before`, once it is complete (at most 60 s).
async fn new_complete(d: &Deployment, before: &HashSet<String>) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let new: Vec<Value> = recordings(d)
            .await?
            .into_iter()
            .filter(|r| !before.contains(&id_of(r)))
            .collect();
        if let [one] = new.as_slice()
            && one["state"] == "complete"
        {
            return Ok(one.clone());
        }
        anyhow::ensure!(new.len() <= 1, "more than one new recording: {new:?}");
        if Instant::now() > deadline {
            bail!("the session's recording was not complete within 60 s: {new:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds of the running `tlog-rec-session` processes (their `comm` is cut to 15 bytes).
fn recorder_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == "tlog-rec-sessio").then_some(())?;
            crate::sys::cpu_seconds_of(&pid)
        })
        .sum()
}

/// An `ssh -tt` client typed into, whose terminal output is counted and its tail kept.
struct Terminal {
    ssh: std::process::Child,
    stdin: std::process::ChildStdin,
    shown: Arc<Mutex<(u64, Vec<u8>)>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How much of the terminal's output is kept to look for markers in.
const TAIL: usize = 64 << 10;

impl Terminal {
    fn open(d: &Deployment, key: &Path) -> anyhow::Result<Self> {
        let mut ssh = d
            .sshd
            .ssh_terminal(key, d.admin.name.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running ssh")?;
        let mut stdout = ssh.stdout.take().context("ssh's stdout")?;
        let stdin = ssh.stdin.take().context("ssh's stdin")?;
        let shown = Arc::new(Mutex::new((0u64, Vec::new())));
        let reader = {
            let shown = Arc::clone(&shown);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
                    shown.0 += n as u64;
                    shown.1.extend_from_slice(&buf[..n]);
                    if shown.1.len() > 2 * TAIL {
                        let cut = shown.1.len() - TAIL;
                        shown.1.drain(..cut);
                    }
                }
            })
        };
        Ok(Self {
            ssh,
            stdin,
            shown,
            reader: Some(reader),
        })
    }

    fn bytes(&self) -> u64 {
        self.shown.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Waits (at most `within`) until `text` shows in the output's tail, then forgets the tail.
    fn wait_for(&self, text: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            {
                let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
                if String::from_utf8_lossy(&shown.1).contains(text) {
                    shown.1.clear();
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{text:?} did not show on the terminal within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn type_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .context("typing into ssh")
    }

    /// Types `exit` and waits (at most 30 s) for the client to end.
    fn exit(mut self) -> anyhow::Result<Instant> {
        self.type_line("exit")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ssh.try_wait()?.is_some() {
                let ended = Instant::now();
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Ok(ended);
            }
            if Instant::now() > deadline {
                let _ = self.ssh.kill();
                bail!("ssh did not end within 30 s of `exit`");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The marker a session's work ends with: typed as `$((6*7))`, shown as 42, so the typed line's
/// echo does not match it.
const DONE_TYPED: &str = "echo bench-done-$((6*7))";
const DONE_SHOWN: &str = "bench-done-42";

/// Drives one session's work (blocking); the terminal, the first command's time and the time the
/// end marker showed.
fn work(
    d: &Deployment,
    key: &Path,
    workload: Workload,
    seconds: u64,
) -> anyhow::Result<(Terminal, Instant, Instant, f64)> {
    let mut term = Terminal::open(d, key)?;
    term.wait_for("$ ", Duration::from_secs(15))?;
    let agent = d.agent.pid().context("the agent is not running")?;
    let cpu_before = crate::sys::cpu_seconds_of(&agent.to_string()).unwrap_or(0.0);
    let start = Instant::now();
    match workload {
        Workload::Busy => {
            let end = start + Duration::from_secs(seconds);
            let mut n = 0u32;
            while Instant::now() < end {
                term.type_line("ls -l /usr/bin | head -n 40")?;
                n += 1;
                let next = start + Duration::from_millis(250) * n;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
        Workload::Flood => {
            term.type_line(&format!(
                "timeout {seconds} yes 'keyward flood 0123456789 abcdefghijklmnopqrstuvwxyz'"
            ))?;
        }
    }
    term.type_line(DONE_TYPED)?;
    term.wait_for(DONE_SHOWN, Duration::from_secs(seconds + 60))?;
    let done = Instant::now();
    Ok((term, start, done, cpu_before))
}

async fn session(
    d: &Deployment,
    key: &Path,
    workload: Workload,
    recorded: bool,
    seconds: u64,
) -> anyhow::Result<Session> {
    let before: HashSet<String> = recordings(d).await?.iter().map(id_of).collect();
    let agent = d
        .agent
        .pid()
        .context("the agent is not running")?
        .to_string();
    let (term, start, done, cpu_before) =
        tokio::task::block_in_place(|| work(d, key, workload, seconds))?;
    let recorder_cpu_seconds = recorded.then(recorder_cpu_seconds);
    let terminal_bytes = term.bytes();
    let ended = tokio::task::block_in_place(|| term.exit())?;
    let stored = if recorded {
        let recording = new_complete(d, &before).await?;
        let n = |field: &str| recording[field].as_u64().unwrap_or(0);
        Some(Stored {
            size_bytes: n("sizeBytes"),
            dropped_bytes: n("droppedBytes"),
            chunks: n("chunks"),
            complete_after_ms: millis(ended.elapsed()),
        })
    } else {
        // tlog's latency, had it been recording: the same window for the agent's CPU.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after: HashSet<String> = recordings(d).await?.iter().map(id_of).collect();
        anyhow::ensure!(after == before, "a session was recorded with recording off");
        None
    };
    let cpu_after = crate::sys::cpu_seconds_of(&agent).context("the agent ended")?;
    Ok(Session {
        workload,
        recorded,
        seconds: (done - start).as_secs_f64(),
        terminal_bytes,
        agent_cpu_seconds: cpu_after - cpu_before,
        recorder_cpu_seconds,
        stored,
    })
}

/// `count` logins running `true`, their wall times in milliseconds.
async fn logins(d: &Deployment, key: &Path, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let status = d
            .sshd
            .ssh(key, d.admin.name.as_str(), &["true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running ssh")?;
        let took = millis(started.elapsed());
        anyhow::ensure!(status.success(), "ssh … true failed: {status}");
        times.push(took);
    }
    Ok(times)
}

/// Runs the benchmark on the agent `keyward_tests::agent::agent_binary()` (`KEYWARD_AGENT_BIN`).
pub async fn run(options: &Options) -> anyhow::Result<RecordingReport> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the recording benchmark runs the real agent, sshd and tlog on real Unix users: run \
             it as root"
        );
    }
    let agent_bin = keyward_tests::agent::agent_binary();
    let agent_version = std::process::Command::new(&agent_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = Load::now();
    let mut d = Deployment::start(KeyAlgorithm::Ed25519).await;
    d.agent.kill().await;
    d.agent.record_sessions();
    d.agent.start();
    d.agent.wait_in_sync(&d.cp).await;
    let key = d.admin_key_from_vault().await;

    let mut sessions = Vec::new();
    for workload in [Workload::Busy, Workload::Flood] {
        for recorded in [true, false] {
            record_admin(&d, recorded).await?;
            sessions
                .push(session(&d, &key.path, workload, recorded, options.session_seconds).await?);
        }
    }
    let (mut logins_on, mut logins_off) = (Vec::new(), Vec::new());
    let block = options.logins.div_ceil(2).max(1);
    for _ in 0..2 {
        record_admin(&d, true).await?;
        logins_on.extend(logins(&d, &key.path, block).await?);
        record_admin(&d, false).await?;
        logins_off.extend(logins(&d, &key.path, block).await?);
    }
    let load_after = Load::now();
    let agent_warnings = crate::revocation::warnings(&d.agent.log_text());
    drop(d);
    Ok(RecordingReport {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        agent_bin,
        agent_version,
        load_before,
        load_after,
        sessions,
        logins_on,
        logins_off,
        agent_warnings,
    })
}

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "recording";

#[allow(clippy::cast_precision_loss)]
fn kib(n: f64) -> String {
    format!("{:.1} KiB", n / 1024.0)
}

fn pair(s: Option<Summary>) -> String {
    s.map_or_else(|| "–".into(), |s| format!("{:.1} / {:.1}", s.p50, s.p99))
}

/// The report as a `BENCHMARKS.md` section.
pub fn markdown(report: &RecordingReport, command: &str) -> String {
    let mut out = String::from(
        "## Session recording: agent CPU, stream bytes, login latency (issue #19)\n\n",
    );
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. Agent: `{}` ({}); the benchmark's process (the control plane): {}. Started \
         {}; load average {} before, {} after.\n",
        report.machine.describe(),
        report.agent_bin.display(),
        report.agent_version,
        crate::machine::BUILD,
        report.started_at,
        report.load_before,
        report.load_after,
    );
    out.push_str(
        "Method: one deployment of the end-to-end harness: OpenBao dev, the control plane in the \
         benchmark's process (SQLite), Debian's sshd on loopback, real Unix users, the real agent \
         with `[recording]` as the package sets it up (the package's wrapper, Debian's \
         `tlog-rec-session` set-user-ID to `_tlog`) and real `ssh` clients logging in as the \
         admin user. Off: the tenant's recording policy with `recordAdmin: false` (no recorder \
         runs). Sessions: `ssh -tt` to the prompt, then either `ls -l /usr/bin | head -n 40` \
         typed every 250 ms (busy) or `timeout S yes …` (flood), then an end marker. Agent CPU \
         is `utime`+`stime` from the prompt until the recording is stored (on) or 3 s after the \
         session (off); per minute is per minute of the session's work. Stream bytes are the \
         stored recording (tlog's JSON; the chunks' framing adds under 1%). The wrapper limits \
         what is recorded to 16 KiB/s (bursts of 64 KiB, `action: drop`).\n\n",
    );
    out.push_str(
        "| session | recording | seconds | terminal bytes | stored | dropped | chunks | **stream / min** | **agent CPU s / min** | recorder CPU s | stored after the session ended |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in &report.sessions {
        #[allow(clippy::cast_precision_loss)]
        let stored = s.stored.map_or_else(
            || {
                (
                    "–".to_owned(),
                    "–".to_owned(),
                    "–".to_owned(),
                    "–".to_owned(),
                )
            },
            |st| {
                (
                    kib(st.size_bytes as f64),
                    kib(st.dropped_bytes as f64),
                    st.chunks.to_string(),
                    format!("{:.0} ms", st.complete_after_ms),
                )
            },
        );
        #[allow(clippy::cast_precision_loss)]
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} | {} | {} | **{}** | **{:.3}** | {} | {} |",
            s.workload.name(),
            if s.recorded { "on" } else { "off" },
            s.seconds,
            kib(s.terminal_bytes as f64),
            stored.0,
            stored.1,
            stored.2,
            s.stream_bytes_per_minute().map_or_else(|| "–".into(), kib),
            s.agent_cpu_per_minute(),
            s.recorder_cpu_seconds
                .map_or_else(|| "–".into(), |c| format!("{c:.2}")),
            stored.3,
        );
    }
    let on = Summary::of(&report.logins_on);
    let off = Summary::of(&report.logins_off);
    let _ = writeln!(
        out,
        "\nLogins: `ssh -i KEY admin@127.0.0.1 true`, spawn to exit, {} a mode in four \
         alternating blocks (on, off, on, off).\n",
        report.logins_on.len()
    );
    out.push_str("| recording | logins | p50 / p99 ms |\n|---|---|---|\n");
    let _ = writeln!(out, "| on | {} | {} |", report.logins_on.len(), pair(on));
    let _ = writeln!(out, "| off | {} | {} |", report.logins_off.len(), pair(off));
    if let (Some(on), Some(off)) = (on, off) {
        let _ = writeln!(
            out,
            "| **added by recording** | | **{:+.1} / {:+.1}** ({:.2}× / {:.2}×) |",
            on.p50 - off.p50,
            on.p99 - off.p99,
            on.p50 / off.p50,
            on.p99 / off.p99
        );
    }
    if report.agent_warnings.is_empty() {
        out.push_str("\nThe agent logged no warning over the run.\n");
    } else {
        out.push_str("\nThe agent's warnings over the whole run (count: message):\n\n");
        for (message, count) in report.agent_warnings.iter().take(8) {
            let _ = writeln!(out, "- {count}: `{message}`");
        }
    }
    out
}

/// `keyward-bench recording`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `ssh … true` logins per mode (recording on, off).
    #[arg(long, default_value_t = 40)]
    pub logins: usize,
    /// Seconds of work in each session.
    #[arg(long, default_value_t = 60)]
    pub session_seconds: u64,
    /// The test suite's version: 4 logins a mode, 4 s sessions.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub agent: AgentBinary,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `recording` section is replaced";

    /// The harness takes the agent from `KEYWARD_AGENT_BIN`: when that is not the agent chosen,
    /// this binary runs itself again with it set, and that child prints and records the results.
    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        if self.agent.ran_in_child(self.smoke).await? {
            return Ok(Publication::default());
        }
        let options = if self.smoke {
            Options::smoke()
        } else {
            Options::new(self.logins.max(1), self.session_seconds.max(1))
        };
        let report = run(&options).await?;
        let command = self.agent.reproduce(options.command(write));
        Ok(Publication::section(SECTION, markdown(&report, &command)))
    }
}
