//! Revocation under attack: how long a revoked key keeps its file line and its open session, with
//! and without a tenant stalling the agent's session lookup, and what a tenant's `chmod` loop on
//! a 4 MB `authorized_keys` costs the agent.
//!
//! Everything runs on one real deployment (`keyward_tests::Deployment`): OpenBao (dev), the
//! control plane (SQLite, Ed25519 keys) in this process, Debian's sshd on a loopback port, two
//! real Unix users (admin: exclusive, tenant: preserve) and the real `keyward-agent` binary
//! (`--agent-bin` or `KEYWARD_AGENT_BIN`; by default the `release-agent` build that agent-idle
//! measures, with `--smoke` the test build). Root is needed, as for the agent itself.
//!
//! 1. **Plain**: N rounds of regenerate (not timed), download the new key, `ssh -i KEY … sleep
//!    600` until it prints `ready`, then `POST …/ssh-credentials/revoke` with the tenant's token.
//!    t0 is when that call has been answered; t1 the first time the tenant's `authorized_keys`
//!    no longer holds the key (polled every millisecond); t2 when the `ssh` client exits. The
//!    sample is max(t1, t2) − t0.
//! 2. **chmod loop**: the tenant's file grown to 4 MB of their own comment and key lines, then 20
//!    `chmod` a second for the loop's seconds (a `python3` process of the tenant's); the agent's
//!    CPU seconds (`utime`+`stime`) over the loop, and the time until a denied key's line
//!    appended halfway through is gone again. It starts once the agent is idle.
//! 3. **Stall** (run last): the same rounds while, as the tenant (`runuser`), a process whose
//!    argv0 is `sshd` holds `connections` loopback TCP connections to a listener it also runs,
//!    and for each of them a copy of the round's real `Accepted publickey` line (same key, the
//!    fake connection's port) is appended to the log the agent follows: every fake connection is
//!    then a session opened with the key being revoked, for the agent to look up in `/proc`.
//!
//! Every loop is bounded in count and time, and every address is on loopback.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keyward_common::KeyAlgorithm;
use keyward_tests::{Deployment, KeyFile};
use reqwest::Method;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::benchmark::Benchmark;
use crate::flags::AgentBinary;
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::stats::Summary;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds per case.
    pub rounds: usize,
    /// Connections the stalling process holds.
    pub connections: usize,
    /// Size the tenant's file is grown to before the chmod loop.
    pub grow_bytes: usize,
    /// `chmod`s per second in the loop.
    pub chmods_per_second: u32,
    /// Length of the loop.
    pub chmod_seconds: u64,
    pub smoke: bool,
}

impl Options {
    /// 30 rounds a case, 1,000 connections, 4 MB, 20 chmod/s for 20 s.
    pub fn new(rounds: usize) -> Self {
        Self {
            rounds,
            connections: 1000,
            grow_bytes: 4 << 20,
            chmods_per_second: 20,
            chmod_seconds: 20,
            smoke: false,
        }
    }

    /// The test suite's version: 3 rounds a case, a 3 s chmod loop.
    pub fn smoke() -> Self {
        Self {
            rounds: 3,
            chmod_seconds: 3,
            smoke: true,
            ..Self::new(3)
        }
    }

    pub fn command(&self, write: Option<&Path>) -> String {
        let mut c = String::from("cargo run --release -p keyward-bench -- revocation");
        if self.smoke {
            c.push_str(" --smoke");
        } else if self.rounds != 30 {
            let _ = write!(c, " --rounds {}", self.rounds);
        }
        if let Some(path) = write {
            let _ = write!(c, " --write {}", path.display());
        }
        c
    }
}

/// One timed revocation, milliseconds after the revoke call was answered (negative when it
/// happened before the answer was read). `None`: not seen within the round's deadline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    pub call_ms: f64,
    pub file_ms: Option<f64>,
    pub session_ms: Option<f64>,
    /// Whether the host was `in_sync` again within [`SETTLE`] after the revocation.
    pub settled: bool,
}

impl Round {
    /// Both the file rewritten and the session ended.
    pub fn both_ms(&self) -> Option<f64> {
        Some(self.file_ms?.max(self.session_ms?))
    }
}

/// The rounds of one case.
#[derive(Debug, Clone, Default)]
pub struct Case {
    pub rounds: Vec<Round>,
    /// The public line of each round's key (revoked, so denied from then on).
    pub revoked_keys: Vec<String>,
}

impl Case {
    /// Percentiles over every round, a lost one counting as infinite (it took longer than the
    /// round's deadline): leaving lost rounds out would report the survivors only.
    pub fn both(&self) -> Option<Summary> {
        Summary::of(&self.samples(Round::both_ms))
    }
    pub fn file(&self) -> Option<Summary> {
        Summary::of(&self.samples(|r| r.file_ms))
    }
    pub fn session(&self) -> Option<Summary> {
        Summary::of(&self.samples(|r| r.session_ms))
    }
    pub fn call(&self) -> Option<Summary> {
        Summary::of(&self.samples(|r| Some(r.call_ms)))
    }
    /// Rounds after which the host was not `in_sync` within [`SETTLE`].
    pub fn unsettled(&self) -> usize {
        self.rounds.iter().filter(|r| !r.settled).count()
    }
    /// Rounds where the file or the session was not seen to change in time.
    pub fn lost(&self) -> usize {
        self.rounds.iter().filter(|r| r.both_ms().is_none()).count()
    }
    fn samples(&self, f: impl Fn(&Round) -> Option<f64>) -> Vec<f64> {
        self.rounds
            .iter()
            .map(|r| f(r).unwrap_or(f64::INFINITY))
            .collect()
    }
}

/// What the stalling process did.
#[derive(Debug, Clone, Default)]
pub struct Attack {
    /// Connections it held (both ends in the one process).
    pub connections: usize,
    /// Fake `Accepted publickey` lines appended to the log, in all.
    pub log_lines: usize,
    /// The log the agent follows.
    pub log: PathBuf,
    /// Whether the tenant user could append to that log (`runuser -u USER -- test -w LOG`).
    pub log_writable_by_tenant: bool,
    /// Rounds at whose revocation the stalling process was still alive.
    pub alive_rounds: usize,
}

/// The chmod loop's figures.
#[derive(Debug, Clone, Default)]
pub struct ChmodLoop {
    /// The tenant's file after growing it (before the loop).
    pub grown_bytes: u64,
    /// The tenant's file at the end of the loop.
    pub end_bytes: u64,
    /// Whether `authorized_keys.keyward-oversized` was there at the end.
    pub moved_aside: bool,
    /// `chmod` calls the loop made.
    pub chmods: u64,
    pub seconds: f64,
    /// Agent CPU (utime+stime) over the loop.
    pub agent_cpu_seconds: f64,
    /// Milliseconds from the stray line's append to its line gone; `None`: not within 10 s
    /// after the loop.
    pub repair_ms: Option<f64>,
    /// Seconds until the agent was idle before the loop (under 5% of a core over 0.5 s);
    /// `None`: not within 30 s.
    pub idle_after: Option<f64>,
}

impl ChmodLoop {
    pub fn cpu_seconds_per_minute(&self) -> f64 {
        if self.seconds > 0.0 {
            self.agent_cpu_seconds * 60.0 / self.seconds
        } else {
            0.0
        }
    }
    pub fn core_percent(&self) -> f64 {
        if self.seconds > 0.0 {
            self.agent_cpu_seconds * 100.0 / self.seconds
        } else {
            0.0
        }
    }
}

/// The result.
#[derive(Debug, Clone)]
pub struct RevocationReport {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub agent_bin: PathBuf,
    pub agent_version: String,
    pub load_before: Load,
    pub load_after: Load,
    pub plain: Case,
    pub stall: Case,
    pub attack: Attack,
    pub chmod: ChmodLoop,
    /// The agent's warnings over the run: (message, count), most frequent first.
    pub agent_warnings: Vec<(String, usize)>,
}

/// The messages of the `WARN` lines of an agent log (fields after the message dropped), counted.
pub fn warnings(log: &str) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| l.contains(" WARN ")) {
        let message = line
            .split_once(" WARN ")
            .map_or(line, |(_, m)| m)
            .split_once(": ")
            .map_or(line, |(_, m)| m);
        // Fields are `key=value` after the message; only `error=` is kept, to the line's end.
        let message = message
            .split(' ')
            .take_while(|w| !w.contains('='))
            .collect::<Vec<_>>()
            .join(" ");
        let error = line
            .split_once("error=")
            .map(|(_, e)| format!(" (error={e})"))
            .unwrap_or_default();
        *counts.entry(format!("{message}{error}")).or_default() += 1;
    }
    let mut out: Vec<(String, usize)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// The issue's "before" figure for the chmod loop: 18 s of agent CPU in 20 s.
pub const BEFORE_CPU_SECONDS: f64 = 18.0;
pub const BEFORE_LOOP_SECONDS: f64 = 20.0;

/// How long one round waits for the file and the session.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);
/// How long to wait for the host `in_sync` between steps (not timed).
pub const SETTLE: Duration = Duration::from_secs(5);

fn ms_since(t0: Instant, t: Instant) -> f64 {
    if t >= t0 {
        t.duration_since(t0).as_secs_f64() * 1000.0
    } else {
        -(t0.duration_since(t).as_secs_f64() * 1000.0)
    }
}

/// Polls `path` every millisecond until `gone` holds of its text; the moment it did.
fn poll_file(path: PathBuf, deadline: Instant, gone: impl Fn(&str) -> bool) -> Option<Instant> {
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&path)
            && gone(&text)
        {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// The base64 field of the public half of an OpenSSH private key: what marks its line.
fn public_line(private_key: &str) -> anyhow::Result<String> {
    let key =
        ssh_key::PrivateKey::from_openssh(private_key).context("parsing the downloaded key")?;
    key.public_key()
        .to_openssh()
        .context("encoding the public key")
}

fn blob_of(public_line: &str) -> anyhow::Result<String> {
    public_line
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .context("a public key line without a key")
}

async fn tenant_post(d: &Deployment, op: &str) -> anyhow::Result<keyward_tests::Reply> {
    let reply = d.cp.tenant_call(&d.tenant_token, Method::POST, op).await;
    anyhow::ensure!(
        reply.status == 200,
        "{op} answered {}: {}",
        reply.status,
        reply.text()
    );
    Ok(reply)
}

/// Waits (at most `within`) until the control plane shows the host connected and `in_sync`;
/// whether it did. Not reaching it is not an error here: under the stall attack the agent may
/// report its session check as failed, and the rounds go on regardless.
async fn settle(d: &Deployment, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let path = format!("/api/v1/admin/hosts/{}", d.agent.host_id);
    loop {
        let reply = d.cp.admin_get(&path).await;
        if reply.status == 200 {
            let view = reply.json();
            if view["status"] == "in_sync" && view["connected"] == true {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh key, downloaded and in the tenant's file: (key file, public line).
async fn fresh_key(d: &Deployment) -> anyhow::Result<(KeyFile, String)> {
    tenant_post(d, "/regenerate").await?;
    settle(d, SETTLE).await;
    let text = tenant_post(d, "/download").await?.text();
    let public = public_line(&text)?;
    let blob = blob_of(&public)?;
    let path = d.user.authorized_keys();
    let deadline = Instant::now() + ROUND_DEADLINE;
    tokio::task::spawn_blocking(move || poll_file(path, deadline, |t| t.contains(&blob)))
        .await?
        .context("the regenerated key did not reach the tenant's file in time")?;
    Ok((KeyFile::write(&text), public))
}

/// The stalling process: as the tenant, argv0 `sshd`, a listener on 127.0.0.1 and `connections`
/// connections to it. It prints the listener's port and the clients' ports, and exits when its
/// stdin closes or after `life` seconds.
const STALLER: &str = r#"
import resource, select, socket, sys
n, life = int(sys.argv[1]), float(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = 2 * n + 64
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(n + 16)
port = listener.getsockname()[1]
clients, servers = [], []
for _ in range(n):
    clients.append(socket.create_connection(("127.0.0.1", port)))
    servers.append(listener.accept()[0])
print(port, " ".join(str(c.getsockname()[1]) for c in clients), flush=True)
select.select([sys.stdin], [], [], life)
"#;

/// The tenant's chmod loop: `count` chmods, `per_second` a second, alternating 0600 and 0640.
const CHMOD_LOOP: &str = r#"
import os, sys, time
path, count, per_second = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.monotonic()
done = 0
for i in range(count):
    target = start + i / per_second
    pause = target - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    try:
        os.chmod(path, 0o600 if i % 2 else 0o640)
        done += 1
    except OSError:
        pass
print(done, flush=True)
"#;

fn python_as(user: &str, argv0: &str, script: &str, args: &[String]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("runuser");
    command
        .args(["-u", user, "--", "bash", "-c"])
        .arg(format!("exec -a {argv0} /usr/bin/python3 -c \"$0\" \"$@\""))
        .arg(script)
        .args(args)
        .current_dir("/")
        .kill_on_drop(true);
    command
}

/// A running stalling process and its connections' client ports.
struct Staller {
    child: tokio::process::Child,
    ports: Vec<u16>,
}

impl Staller {
    async fn start(user: &str, connections: usize, life: Duration) -> anyhow::Result<Self> {
        let mut child = python_as(
            user,
            "sshd",
            STALLER,
            &[connections.to_string(), life.as_secs().to_string()],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the stalling process (runuser, /usr/bin/python3)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the stalling process did not open its connections within 60 s")??
            .context("the stalling process exited before opening its connections")?;
        let ports: Vec<u16> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|p| p.parse().ok())
            .collect();
        anyhow::ensure!(
            ports.len() == connections,
            "the stalling process opened {} of {connections} connections",
            ports.len()
        );
        Ok(Self { child, ports })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn stop(mut self) {
        // Closing stdin ends it; the kill is for a process that does not listen.
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Whether `user` may append to `path`.
async fn writable_by(user: &str, path: &Path) -> bool {
    tokio::process::Command::new("runuser")
        .args(["-u", user, "--", "test", "-w"])
        .arg(path)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// The round's real `Accepted publickey` line for the user and the key `fingerprint`, copied
/// once per fake port.
fn fake_lines(log_text: &str, user: &str, fingerprint: &str, ports: &[u16]) -> Option<String> {
    let needle = format!("Accepted publickey for {user} from ");
    let real = log_text
        .lines()
        .rev()
        .find(|l| l.contains(&needle) && l.contains(fingerprint))?;
    let (head, rest) = real.split_once(" port ")?;
    let (_, tail) = rest.split_once(' ')?;
    let mut out = String::with_capacity(ports.len() * (real.len() + 8));
    for port in ports {
        let _ = writeln!(out, "{head} port {port} {tail}");
    }
    Some(out)
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("appending to {}", path.display()))
}

/// One timed revocation. With `attack`, the fake log lines are appended once the session is up.
async fn round(
    d: &Deployment,
    attack: Option<(&mut Staller, &mut Attack)>,
) -> anyhow::Result<(Round, String)> {
    let (key, public) = fresh_key(d).await?;
    let blob = blob_of(&public)?;
    let mut session = d.sshd.open_session_async(&key.path, &d.user.name).await;
    if let Some((staller, attack)) = attack {
        let fingerprint = keyward_common::keys::public_key_fingerprint(&public)
            .context("fingerprinting the round's key")?
            .to_string();
        // The log line of the real login can come a moment after the session's first output.
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            if let Some(lines) = fake_lines(
                &d.sshd.log_text(),
                d.user.name.as_str(),
                &fingerprint,
                &staller.ports,
            ) {
                break lines;
            }
            if Instant::now() > deadline {
                bail!("no `Accepted publickey` line for the session in the sshd log");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Not written by the tenant when the tenant cannot (see the report): written as the
        // syslog daemon would write a tenant's `logger -t sshd` lines.
        append(&d.sshd.log, &lines)?;
        attack.log_lines += staller.ports.len();
        if staller.alive() {
            attack.alive_rounds += 1;
        }
        // Let the agent read them, as it would have long before a real revocation.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + ROUND_DEADLINE;
    let path = d.user.authorized_keys();
    let file =
        tokio::task::spawn_blocking(move || poll_file(path, deadline, move |t| !t.contains(&blob)));
    let ended = tokio::spawn(async move {
        let exited = tokio::time::timeout(ROUND_DEADLINE, session.wait()).await;
        exited.is_ok().then(Instant::now)
    });
    let sent = Instant::now();
    let reply =
        d.cp.tenant_call(&d.tenant_token, Method::POST, "/revoke")
            .await;
    let answered = Instant::now();
    anyhow::ensure!(
        reply.status == 200,
        "revoke answered {}: {}",
        reply.status,
        reply.text()
    );
    let file_at = file.await?;
    let ended_at = ended.await?;
    let settled = settle(d, SETTLE).await;
    let timed = Round {
        settled,
        call_ms: ms_since(sent, answered),
        file_ms: file_at.map(|t| ms_since(answered, t)),
        session_ms: ended_at.map(|t| ms_since(answered, t)),
    };
    Ok((timed, public))
}

async fn rounds(
    d: &Deployment,
    n: usize,
    label: &str,
    mut attack: Option<(&mut Staller, &mut Attack)>,
) -> anyhow::Result<Case> {
    let mut case = Case::default();
    for i in 1..=n {
        let (r, public) = round(d, attack.as_mut().map(|(s, a)| (&mut **s, &mut **a))).await?;
        eprintln!(
            "{label} round {i}/{n}: file {:?} ms, session {:?} ms, in_sync after: {}",
            r.file_ms, r.session_ms, r.settled
        );
        case.rounds.push(r);
        case.revoked_keys.push(public);
    }
    Ok(case)
}

/// `count` lines of the tenant's own (comments and keys), about `bytes` in all.
fn own_lines(bytes: usize) -> anyhow::Result<String> {
    let keys: Vec<String> = (0..8)
        .map(|i| {
            keyward_common::GeneratedKey::generate(
                keyward_common::KeyAlgorithm::Ed25519,
                &format!("own-{i}"),
            )
            .map(|k| k.public_openssh().to_owned())
        })
        .collect::<Result<_, _>>()?;
    let mut out = String::with_capacity(bytes + 256);
    let mut i = 0usize;
    while out.len() < bytes {
        if i % 4 == 3 {
            let _ = writeln!(out, "{} line-{i}", keys[i % keys.len()]);
        } else {
            let _ = writeln!(
                out,
                "# the tenant's note {i}: deploy host, staging, backups, and so on ................"
            );
        }
        i += 1;
    }
    Ok(out)
}

/// Appends `text` to `path` as `user` (`runuser -u USER -- sh -c 'cat >> PATH'`).
async fn append_as(user: &str, path: &Path, text: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new("runuser")
        .args(["-u", user, "--", "sh", "-c", "cat >> \"$0\""])
        .arg(path)
        .current_dir("/")
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running runuser")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes()).await?;
    drop(stdin);
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "appending as {user} failed: {status}");
    Ok(())
}

/// Waits (at most 30 s) until the agent used under 5% of a core over half a second; the seconds
/// waited, `None` if it never did.
async fn wait_idle(pid: u32) -> Option<f64> {
    let started = Instant::now();
    let cpu = || crate::sys::cpu_seconds_of(&pid.to_string());
    while started.elapsed() < Duration::from_secs(30) {
        let before = cpu()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if cpu()? - before < 0.025 {
            return Some(started.elapsed().as_secs_f64());
        }
    }
    None
}

async fn chmod_loop(d: &Deployment, options: &Options, stray: &str) -> anyhow::Result<ChmodLoop> {
    let pid = d.agent.pid().context("the agent is not running")?;
    let idle_after = wait_idle(pid).await;
    let path = d.user.authorized_keys();
    append_as(d.user.name.as_str(), &path, &own_lines(options.grow_bytes)?).await?;
    let grown_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let count = options.chmod_seconds * u64::from(options.chmods_per_second);
    let cpu_before =
        crate::sys::cpu_seconds_of(&pid.to_string()).context("reading the agent's CPU time")?;
    let started = Instant::now();
    let chmods = python_as(
        d.user.name.as_str(),
        "python3",
        CHMOD_LOOP,
        &[
            path.to_string_lossy().into_owned(),
            count.to_string(),
            options.chmods_per_second.to_string(),
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .context("starting the chmod loop")?;
    // Halfway through: a denied key's line appended, as an outside edit.
    tokio::time::sleep(Duration::from_secs_f64(options.chmod_seconds as f64 / 2.0)).await;
    let stray_blob = blob_of(stray)?;
    append(&path, &format!("{stray}\n"))?;
    let appended = Instant::now();
    let deadline = started + Duration::from_secs(options.chmod_seconds + 10);
    let watched = path.clone();
    let gone = tokio::task::spawn_blocking(move || {
        poll_file(watched, deadline, move |t| !t.contains(&stray_blob))
    });
    let out = tokio::time::timeout(
        Duration::from_secs(options.chmod_seconds + 30),
        chmods.wait_with_output(),
    )
    .await
    .context("the chmod loop did not finish")??;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after =
        crate::sys::cpu_seconds_of(&pid.to_string()).context("reading the agent's CPU time")?;
    let chmods = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let repaired = gone.await?;
    Ok(ChmodLoop {
        grown_bytes,
        end_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        moved_aside: d
            .user
            .home
            .join(".ssh")
            .join(keyward_agent::writer::OVERSIZED)
            .exists(),
        chmods,
        seconds,
        agent_cpu_seconds: cpu_after - cpu_before,
        repair_ms: repaired.map(|t| ms_since(appended, t)),
        idle_after,
    })
}

/// Runs the benchmark on the agent `keyward_tests::agent::agent_binary()` (`KEYWARD_AGENT_BIN`).
pub async fn run(options: &Options) -> anyhow::Result<RevocationReport> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the revocation benchmark runs the real agent and sshd on real Unix users: run it as root"
        );
    }
    anyhow::ensure!(
        Path::new("/usr/bin/python3").is_file(),
        "/usr/bin/python3 is missing (Debian package python3)"
    );
    let agent_bin = keyward_tests::agent::agent_binary();
    let agent_version = std::process::Command::new(&agent_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = Load::now();
    let d = Deployment::start(KeyAlgorithm::Ed25519).await;

    // 1. Plain.
    let plain = rounds(&d, options.rounds, "plain", None).await?;
    // The first round's key was revoked: denied from then on, its line must not come back.
    let denied_public = plain
        .revoked_keys
        .first()
        .context("no round was run")?
        .clone();
    // A key that works again, in the tenant's file.
    fresh_key(&d).await?;

    // 2. chmod loop (before the stall, so that nothing of the stall is still running).
    let chmod = chmod_loop(&d, options, &denied_public).await?;

    // 3. Stall.
    let life = Duration::from_secs(120 + 60 * options.rounds as u64);
    let mut staller = Staller::start(d.user.name.as_str(), options.connections, life).await?;
    let mut attack = Attack {
        connections: staller.ports.len(),
        log: d.sshd.log.clone(),
        log_writable_by_tenant: writable_by(d.user.name.as_str(), &d.sshd.log).await,
        ..Attack::default()
    };
    let stall = rounds(
        &d,
        options.rounds,
        "stall",
        Some((&mut staller, &mut attack)),
    )
    .await;
    staller.stop().await;
    let stall = stall?;
    let load_after = Load::now();
    let agent_warnings = warnings(&d.agent.log_text());
    drop(d);
    Ok(RevocationReport {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        agent_bin,
        agent_version,
        load_before,
        load_after,
        plain,
        stall,
        attack,
        chmod,
        agent_warnings,
    })
}

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "revocation";

fn size(n: u64) -> String {
    if n < 1 << 20 {
        format!("{n} bytes")
    } else {
        crate::report::bytes(n)
    }
}

/// Milliseconds; a lost round (infinite) as more than the round's deadline.
fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        format!("> {}", ROUND_DEADLINE.as_millis())
    }
}

fn pair(s: Option<Summary>) -> String {
    s.map_or_else(|| "–".into(), |s| format!("{} / {}", ms(s.p50), ms(s.p99)))
}

fn ratio(a: Option<Summary>, b: Option<Summary>, f: fn(&Summary) -> f64) -> String {
    match (a, b) {
        (Some(a), Some(b)) if f(&a) > 0.0 && f(&a).is_finite() => {
            if f(&b).is_finite() {
                format!("{:.2}×", f(&b) / f(&a))
            } else {
                format!("> {:.0}×", ROUND_DEADLINE.as_secs_f64() * 1000.0 / f(&a))
            }
        }
        _ => "–".into(),
    }
}

/// The report as a `BENCHMARKS.md` section.
pub fn markdown(report: &RevocationReport, command: &str) -> String {
    let o = &report.options;
    let mut out = String::from("## Revocation\n\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. Agent: `{}` ({}). Started {}; load average {} before, {} after.\n",
        report.machine.describe(),
        report.agent_bin.display(),
        report.agent_version,
        report.started_at,
        report.load_before,
        report.load_after,
    );
    let _ = writeln!(
        out,
        "Method: one deployment of the end-to-end harness (`keyward_tests::Deployment`): OpenBao \
         dev, the control plane in the benchmark's process (SQLite, Ed25519 keys), Debian's sshd \
         on a loopback port logging to a file the agent follows, two real Unix users (admin \
         exclusive, tenant preserve) and the real agent binary over mTLS gRPC. Each round: \
         `regenerate` and wait for the host `in_sync` (not timed), download the key, open `ssh -i \
         KEY … 'echo ready; exec sleep 600'` and wait for `ready`, then `POST \
         /api/v1/tenant/infrastructure/ssh-credentials/revoke` with the tenant's token. t0 is when \
         that call has been answered; the file time is the first poll (every 1 ms) of the \
         tenant's `authorized_keys` without the key, the session time when the `ssh` client \
         exits; **revoked** is the later of the two. A negative time happened before the answer \
         was read. Nearest-rank percentiles over {} rounds per case; a round not done within {} s \
         counts as lost, and its file or session time that was not seen counts as infinite in \
         the percentiles (shown as \"> 30000\"). Between steps the benchmark waits up to {} s for the host `in_sync` \
         again; the rounds go on when it is not.\n",
        o.rounds,
        ROUND_DEADLINE.as_secs(),
        SETTLE.as_secs()
    );
    let a = &report.attack;
    let _ = writeln!(
        out,
        "Stall: during the stall case's rounds (run last) a process of the tenant's (`runuser -u \
         USER`, `exec -a sshd python3`: argv0 `sshd`) held {} loopback TCP connections to a listener of \
         its own (both ends in that process), alive at {} of {} revocations. Each round, once \
         the real session was up, the round's real `Accepted publickey` line was copied once per \
         fake connection with that connection's port ({} lines in all) and appended to `{}`, \
         the log the agent follows, so that every fake connection looks like a session opened \
         with the key about to be revoked. {}\n",
        a.connections,
        a.alive_rounds,
        report.stall.rounds.len(),
        a.log_lines,
        a.log.display(),
        if a.log_writable_by_tenant {
            "The tenant could write that file itself."
        } else {
            "**The tenant cannot write that file** (`runuser -u USER -- test -w` failed: the \
             `sshd -E` file is root's, in a root-only directory), so the benchmark appended the \
             lines as root, as a syslog daemon would for a tenant's `logger -t 'sshd[1]'` on a \
             host whose agent follows `/var/log/auth.log`: the stronger attack."
        }
    );
    out.push_str(
        "| case | rounds | lost | host not `in_sync` 5 s after | revoke call p50 / p99 ms | file rewritten p50 / p99 ms | session ended p50 / p99 ms | **revoked p50 ms** | **revoked p99 ms** | max ms |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let stall_name = format!("stall ({} connections)", a.connections);
    for (name, case) in [("plain", &report.plain), (&*stall_name, &report.stall)] {
        let both = case.both();
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | **{}** | **{}** | {} |",
            case.rounds.len(),
            case.lost(),
            case.unsettled(),
            pair(case.call()),
            pair(case.file()),
            pair(case.session()),
            both.map_or_else(|| "–".into(), |s| ms(s.p50)),
            both.map_or_else(|| "–".into(), |s| ms(s.p99)),
            both.map_or_else(|| "–".into(), |s| ms(s.max)),
        );
    }
    let _ = writeln!(
        out,
        "| **stall ÷ plain** | | | | | {} / {} | {} / {} | **{}** | **{}** | |",
        ratio(report.plain.file(), report.stall.file(), |s| s.p50),
        ratio(report.plain.file(), report.stall.file(), |s| s.p99),
        ratio(report.plain.session(), report.stall.session(), |s| s.p50),
        ratio(report.plain.session(), report.stall.session(), |s| s.p99),
        ratio(report.plain.both(), report.stall.both(), |s| s.p50),
        ratio(report.plain.both(), report.stall.both(), |s| s.p99),
    );
    let c = &report.chmod;
    let _ = writeln!(
        out,
        "\nchmod loop: the tenant's `authorized_keys` grown to {} with their own comment and key \
         lines (appended as the tenant), then {} `chmod`s ({}/s, 0640 and 0600 in turn, a \
         `python3` process of the tenant's) over {:.1} s. Agent CPU is `utime`+`stime` of \
         `/proc/PID/stat` from the loop's start to its end. Halfway through, the public line of \
         a key revoked earlier in the run (denied) was appended to the file; the repair time is \
         until the first poll (1 ms) without it. At the end the file was {}{}. The loop ran \
         before the stall case, once the agent was idle ({}).\n",
        size(c.grown_bytes),
        c.chmods,
        o.chmods_per_second,
        c.seconds,
        size(c.end_bytes),
        if c.moved_aside {
            format!(
                " and the grown file had been moved to `{}`",
                keyward_agent::writer::OVERSIZED
            )
        } else {
            String::new()
        },
        c.idle_after.map_or_else(
            || "**it was not: over 5% of a core for 30 s**".to_owned(),
            |s| format!("under 5% of a core over 0.5 s, after {s:.1} s")
        ),
    );
    out.push_str("| measure | keyward now | before (the issue) |\n|---|---|---|\n");
    let _ = writeln!(
        out,
        "| agent CPU over the loop | **{:.2} s in {:.1} s** ({:.1}% of a core) | {BEFORE_CPU_SECONDS:.0} s in {BEFORE_LOOP_SECONDS:.0} s (~90% of a core) |",
        c.agent_cpu_seconds,
        c.seconds,
        c.core_percent()
    );
    let _ = writeln!(
        out,
        "| agent CPU per minute of loop | **{:.2} s** | {:.0} s |",
        c.cpu_seconds_per_minute(),
        BEFORE_CPU_SECONDS * 60.0 / BEFORE_LOOP_SECONDS
    );
    let _ = writeln!(
        out,
        "| denied key line appended mid-loop: gone after | **{}** | – |",
        c.repair_ms.map_or_else(
            || "not within 10 s of the loop's end".into(),
            |m| format!("{m:.1} ms")
        )
    );
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

/// `keyward-bench revocation`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds per case (plain, stall).
    #[arg(long, default_value_t = 30)]
    pub rounds: usize,
    /// The test suite's version: 3 rounds a case, a 3 s chmod loop.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub agent: AgentBinary,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `revocation` section is replaced";

    /// The harness takes the agent from `KEYWARD_AGENT_BIN`: when that is not the agent chosen,
    /// this binary runs itself again with it set, and that child prints and records the results.
    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        if self.agent.ran_in_child(self.smoke).await? {
            return Ok(Publication::default());
        }
        let options = if self.smoke {
            Options::smoke()
        } else {
            Options::new(self.rounds.max(1))
        };
        let report = run(&options).await?;
        let command = self.agent.reproduce(options.command(write));
        let text = markdown(&report, &command);
        Ok(Publication::section(SECTION, text))
    }
}
