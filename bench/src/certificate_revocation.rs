//! Certificate revocation latency (issue #16): from the REST revoke call answered to a new `ssh`
//! login with that certificate refused by the host's sshd, with 1 and with 1,000 agents
//! connected to the same control plane.
//!
//! One real deployment (`keyward_tests::Deployment::start_with_ssh_ca`): OpenBao (dev) with its
//! SSH engine as keyward's CA, the control plane (SQLite, in this process), Debian's sshd on a
//! loopback port with `TrustedUserCAKeys`, `AuthorizedPrincipalsFile` and `RevokedKeys` in its
//! files directory, two real Unix users and the real `keyward-agent` binary writing those files
//! (`--agent-bin` or `KEYWARD_AGENT_BIN`, as `revocation`). Root is needed.
//!
//! Each round: a fresh Ed25519 key certified over REST (`POST
//! /api/v1/tenant/infrastructure/ssh-certificates`, the tenant's token, 600 s), one `ssh … true`
//! with it that must log in, then `POST …/ssh-certificates/{id}/revoke`. t0 is when that call
//! has been answered. From t0 on, two things run side by side:
//!
//! - a thread reads sshd's `revoked_keys` every millisecond until it holds the certificate's key
//!   id (the agent renames a complete file into place, so a read sees the old or the new KRL):
//!   **file**;
//! - `ssh … true` logins with the certificate, back to back, each one started when the previous
//!   one exited, until one that started after the file was seen is refused. **first refused** is
//!   the start (and end) of the first refused attempt; **refused** is the file time, counted only
//!   when a login started after it was refused (sshd reads `RevokedKeys` at every
//!   authentication, so from the rename on every new login is refused: no reload).
//!
//! With 1,000 agents, the other 999 are in-process agents (the agent's own runtime over mTLS
//! gRPC, files in a temporary directory: `crate::fleet`) enrolled as more hosts **of the same
//! tenant**: revoking the certificate bumps the generation of every host of the tenant and
//! sends each a new signed state with the new KRL, so the real host's state is one of 1,000 the
//! control plane builds and sends per revocation. The time until the last of them wrote its
//! sshd files is reported too.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt as _;
use keyward_common::{GeneratedKey, KeyAlgorithm};
use keyward_tests::Deployment;
use reqwest::Method;
use serde_json::json;
use tokio::sync::mpsc;

use crate::benchmark::Benchmark;
use crate::flags::{AgentBinary, HostsDir};
use crate::fleet::{Fleet, SshdWritten};
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::stats::{Summary, signed_ms};

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "certificate-revocation";

/// How long one round waits for the file, the refusal and the other hosts.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);
/// How long to wait for the host `in_sync` between rounds (not timed).
const SETTLE: Duration = Duration::from_secs(10);
/// The certificates' validity.
const VALIDITY_SECONDS: u64 = 600;
/// The longest one `ssh` login may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// What Debian's sshd logs when `RevokedKeys` refuses a key.
const SSHD_REVOKED: &str = "revoked by file";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds with the real agent alone.
    pub rounds_one: usize,
    /// Agents connected in the second case (the real one and `agents - 1` in-process ones).
    pub agents: usize,
    /// Rounds with `agents` connected.
    pub rounds_many: usize,
    /// Hosts enrolled concurrently.
    pub provision_concurrency: usize,
    /// Agents started at once.
    pub connect_wave: usize,
    /// Where the in-process hosts write their files (a new temporary directory inside it); the
    /// system's temporary directory when `None`.
    pub dir: Option<PathBuf>,
    pub smoke: bool,
}

impl Options {
    /// 20 rounds with 1 agent, 10 with `agents` (1,000).
    pub fn new(rounds_one: usize, agents: usize, rounds_many: usize) -> Self {
        Self {
            rounds_one,
            agents,
            rounds_many,
            provision_concurrency: 8,
            connect_wave: 100,
            dir: None,
            smoke: false,
        }
    }

    /// The test suite's version: 2 rounds with 1 agent, 1 with 20.
    pub fn smoke() -> Self {
        Self {
            smoke: true,
            ..Self::new(2, 20, 1)
        }
    }

    pub fn command(&self, write: Option<&Path>) -> String {
        let mut c = String::from("cargo run --release -p keyward-bench -- certificate-revocation");
        if self.smoke {
            c.push_str(" --smoke");
        } else {
            if self.rounds_one != 20 {
                let _ = write!(c, " --rounds-one {}", self.rounds_one);
            }
            if self.agents != 1000 {
                let _ = write!(c, " --agents {}", self.agents);
            }
            if self.rounds_many != 10 {
                let _ = write!(c, " --rounds-many {}", self.rounds_many);
            }
            if let Some(dir) = &self.dir {
                let _ = write!(c, " --dir {}", dir.display());
            }
        }
        if let Some(path) = write {
            let _ = write!(c, " --write {}", path.display());
        }
        c
    }
}

/// One revocation; times in milliseconds after t0 (the revoke call answered; negative: before
/// the answer was read). `None`: not seen within the round's deadline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    /// The revoke call, request sent to answer read.
    pub call_ms: f64,
    /// `revoked_keys` holding the certificate's key id.
    pub file_ms: Option<f64>,
    /// The first refused login: when it started, when `ssh` exited.
    pub first_refused_start_ms: Option<f64>,
    pub first_refused_end_ms: Option<f64>,
    /// A login started after the file was seen was refused: the file time stands confirmed.
    pub confirmed: bool,
    /// Logins tried from t0 on, and of them those accepted.
    pub attempts: usize,
    pub accepted: usize,
    /// Logins started after the file was seen and still accepted (sshd reads the KRL at every
    /// login: should be 0).
    pub accepted_after_file: usize,
    /// `revoked by file` lines sshd logged during the round.
    pub sshd_revoked_lines: usize,
    /// The other hosts: how many wrote their sshd files after the call was sent, and the last
    /// of them (after t0).
    pub others_written: usize,
    pub others_last_ms: Option<f64>,
}

impl Round {
    /// The file time, when a refused login confirmed it.
    pub fn refused_ms(&self) -> Option<f64> {
        self.file_ms.filter(|_| self.confirmed)
    }
}

/// The rounds of one case.
#[derive(Debug, Clone, Default)]
pub struct Case {
    /// Agents connected to the control plane (the real one included).
    pub agents: usize,
    /// In-process agents that connected (the other hosts of the tenant).
    pub others: usize,
    pub rounds: Vec<Round>,
    /// Seconds to enroll and connect the other hosts.
    pub setup_seconds: f64,
    /// The filesystem the other hosts wrote their files on.
    pub filesystem: String,
}

impl Case {
    /// Percentiles over every round, a round not seen counting as infinite.
    fn samples(&self, f: impl Fn(&Round) -> Option<f64>) -> Vec<f64> {
        self.rounds
            .iter()
            .map(|r| f(r).unwrap_or(f64::INFINITY))
            .collect()
    }

    pub fn call(&self) -> Option<Summary> {
        Summary::of(&self.samples(|r| Some(r.call_ms)))
    }
    pub fn file(&self) -> Option<Summary> {
        Summary::of(&self.samples(|r| r.file_ms))
    }
    pub fn refused(&self) -> Option<Summary> {
        Summary::of(&self.samples(Round::refused_ms))
    }
    pub fn first_refused_start(&self) -> Option<Summary> {
        Summary::of(&self.samples(|r| r.first_refused_start_ms))
    }
    pub fn first_refused_end(&self) -> Option<Summary> {
        Summary::of(&self.samples(|r| r.first_refused_end_ms))
    }
    pub fn others_last(&self) -> Option<Summary> {
        if self.others == 0 {
            return None;
        }
        Summary::of(&self.samples(|r| r.others_last_ms))
    }
    /// Rounds whose refusal was not seen (and confirmed) within the deadline.
    pub fn lost(&self) -> usize {
        self.rounds
            .iter()
            .filter(|r| r.refused_ms().is_none())
            .count()
    }
}

/// The result.
#[derive(Debug, Clone)]
pub struct CertificateRevocationReport {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub agent_bin: PathBuf,
    pub agent_version: String,
    pub load_before: Load,
    pub load_after: Load,
    pub one: Case,
    pub many: Case,
    /// The run's wall time, seconds.
    pub seconds: f64,
}

/// A key of someone's own with its certificate beside it (`id`, `id-cert.pub`).
struct Holder {
    _dir: tempfile::TempDir,
    key: PathBuf,
    public: String,
}

impl Holder {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a temporary directory")?;
        let key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "bench@laptop")
            .context("generating a key")?;
        let path = dir.path().join("id");
        std::fs::write(&path, key.private_openssh().as_bytes()).context("writing the key")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            _dir: dir,
            key: path,
            public: key.public_openssh().to_owned(),
        })
    }

    /// Has keyward certify the key (the tenant's REST call); the certificate's id.
    async fn certify(&self, d: &Deployment) -> anyhow::Result<String> {
        let reply =
            d.cp.request(
                Method::POST,
                "/api/v1/tenant/infrastructure/ssh-certificates",
                Some(&d.tenant_token),
                Some(json!({ "publicKey": self.public, "validitySeconds": VALIDITY_SECONDS })),
            )
            .await;
        anyhow::ensure!(
            reply.status == 201,
            "issuing a certificate answered {}: {}",
            reply.status,
            reply.text()
        );
        let issued = reply.json();
        let certificate = issued["certificate"]
            .as_str()
            .context("no certificate in the answer")?;
        std::fs::write(
            self.key.with_file_name("id-cert.pub"),
            format!("{}\n", certificate.trim()),
        )
        .context("writing the certificate")?;
        issued["certificateId"]
            .as_str()
            .map(str::to_owned)
            .context("no certificateId in the answer")
    }
}

/// One `ssh … true` with the certificate: whether it logged in.
async fn login(d: &Deployment, key: &Path) -> anyhow::Result<bool> {
    let mut command =
        tokio::process::Command::from(d.sshd.ssh(key, d.user.name.as_str(), &["true"]));
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(LOGIN_TIMEOUT, command.status())
        .await
        .ok()
        .transpose()
        .context("running ssh")?;
    Ok(status.is_some_and(|s| s.success()))
}

/// Whether the host is connected and `in_sync`, waiting at most `within`.
async fn settle(d: &Deployment, host: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let path = format!("/api/v1/admin/hosts/{host}");
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

fn revoked_lines(d: &Deployment) -> usize {
    d.sshd.log_text().matches(SSHD_REVOKED).count()
}

/// Polls `path` every millisecond until it holds `needle`; the moment it did.
fn poll_file(
    path: &Path,
    needle: &[u8],
    deadline: Instant,
    stop: &OnceLock<()>,
) -> Option<Instant> {
    while Instant::now() < deadline && stop.get().is_none() {
        if let Ok(bytes) = std::fs::read(path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// One round: issue, log in, revoke, then the file and the logins until refused.
async fn round(
    d: &Deployment,
    others: usize,
    sshd_events: &mut Option<mpsc::UnboundedReceiver<SshdWritten>>,
) -> anyhow::Result<Round> {
    let holder = Holder::new()?;
    let id = holder.certify(d).await?;
    let mut ok = false;
    for _ in 0..3 {
        if login(d, &holder.key).await? {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !ok {
        bail!(
            "the fresh certificate {id} did not log in; sshd's log:\n{}",
            d.sshd.log_text()
        );
    }
    if let Some(rx) = sshd_events.as_mut() {
        while rx.try_recv().is_ok() {}
    }
    let lines_before = revoked_lines(d);
    let krl = d.sshd.files_dir.join("revoked_keys");
    let stop = Arc::new(OnceLock::new());
    let sent = Instant::now();
    let deadline = sent + ROUND_DEADLINE;
    let poller = {
        let (krl, needle, stop) = (krl.clone(), id.clone().into_bytes(), Arc::clone(&stop));
        tokio::task::spawn_blocking(move || poll_file(&krl, &needle, deadline, &stop))
    };
    let reply =
        d.cp.request(
            Method::POST,
            &format!("/api/v1/tenant/infrastructure/ssh-certificates/{id}/revoke"),
            Some(&d.tenant_token),
            None,
        )
        .await;
    let t0 = Instant::now();
    if reply.status != 200 {
        let _ = stop.set(());
        bail!("revoking {id} answered {}: {}", reply.status, reply.text());
    }
    let mut out = Round {
        call_ms: signed_ms(sent, t0),
        ..Round::default()
    };
    // Logins back to back until one that started after the file was seen is refused.
    while Instant::now() < deadline {
        // The poller has returned: the file holds the key id (or the deadline passed).
        let after_file = poller.is_finished();
        let started = Instant::now();
        let accepted = login(d, &holder.key).await?;
        let ended = Instant::now();
        out.attempts += 1;
        if accepted {
            out.accepted += 1;
            if after_file {
                out.accepted_after_file += 1;
            }
            continue;
        }
        if out.first_refused_start_ms.is_none() {
            out.first_refused_start_ms = Some(signed_ms(t0, started));
            out.first_refused_end_ms = Some(signed_ms(t0, ended));
        }
        if after_file {
            out.confirmed = true;
            break;
        }
    }
    let _ = stop.set(());
    let file_at = poller.await.context("the file poller")?;
    out.file_ms = file_at.map(|t| signed_ms(t0, t));
    out.confirmed &= file_at.is_some();
    // The other hosts of the tenant: every one's sshd files rewritten after the call was sent.
    if let Some(rx) = sshd_events.as_mut() {
        let mut seen = std::collections::HashSet::new();
        let mut last: Option<Instant> = None;
        while seen.len() < others {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(event)) if event.at >= sent => {
                    seen.insert(event.host);
                    last = Some(last.map_or(event.at, |l| l.max(event.at)));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        out.others_written = seen.len();
        out.others_last_ms = (seen.len() == others)
            .then_some(last)
            .flatten()
            .map(|t| signed_ms(t0, t));
    }
    out.sshd_revoked_lines = revoked_lines(d).saturating_sub(lines_before);
    Ok(out)
}

/// `n` rounds, the host settled (`in_sync`) before each.
async fn rounds(
    d: &Deployment,
    n: usize,
    label: &str,
    others: usize,
    sshd_events: &mut Option<mpsc::UnboundedReceiver<SshdWritten>>,
) -> anyhow::Result<Vec<Round>> {
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        settle(d, &d.agent.host_id, SETTLE).await;
        let r = round(d, others, sshd_events).await?;
        eprintln!(
            "certificate-revocation {label} round {i}/{n}: call {:.1} ms, file {:?} ms, first refused {:?} ms, confirmed {}, {} logins, others {}/{others} last {:?} ms",
            r.call_ms,
            r.file_ms,
            r.first_refused_start_ms,
            r.confirmed,
            r.attempts,
            r.others_written,
            r.others_last_ms
        );
        out.push(r);
    }
    Ok(out)
}

/// Enrolls `count` more hosts of the deployment's tenant as in-process agents and connects
/// them; how many connected.
async fn add_hosts(
    d: &Deployment,
    fleet: &mut Fleet,
    count: usize,
    options: &Options,
) -> anyhow::Result<usize> {
    let (tenant, token) = (d.tenant.as_str(), d.tenant_token.as_str());
    let (admin, user) = (d.admin.name.as_str(), d.user.name.as_str());
    let fleet_ref = &*fleet;
    let mut hosts = Vec::with_capacity(count);
    {
        let mut results = futures::stream::iter(1..=count)
            .map(|index| async move {
                let reply =
                    d.cp.admin_post("/api/v1/admin/hosts", json!({ "tenantId": tenant }))
                        .await;
                anyhow::ensure!(
                    reply.status == 201,
                    "registering a host answered {}: {}",
                    reply.status,
                    reply.text()
                );
                let answer = reply.json();
                let host_id = crate::cluster::string_field(&answer, "hostId")?;
                let enrollment = crate::cluster::string_field(&answer, "enrollmentToken")?;
                fleet_ref
                    .enroll_host(
                        &d.cp.url,
                        index,
                        (tenant, token),
                        (&host_id, enrollment),
                        (admin, user),
                    )
                    .await
            })
            .buffer_unordered(options.provision_concurrency.max(1));
        while let Some(host) = results.next().await {
            hosts.push(host?);
            if hosts.len() % 100 == 0 {
                eprintln!("  enrolled {}/{count} hosts", hosts.len());
            }
        }
    }
    hosts.sort_by_key(|h| h.index);
    fleet.hosts.extend(hosts);
    if let Some(stop) = fleet
        .connect_all(options.connect_wave, Duration::from_secs(60), true, |_| {})
        .await
    {
        eprintln!("  {stop}");
    }
    let connected = fleet.connected();
    // Every host applied its first state before the rounds.
    for &i in &connected {
        settle(d, &fleet.hosts[i].host_id, Duration::from_secs(60)).await;
    }
    Ok(connected.len())
}

/// Runs the benchmark on the agent `keyward_tests::agent::agent_binary()` (`KEYWARD_AGENT_BIN`).
pub async fn run(options: &Options) -> anyhow::Result<CertificateRevocationReport> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the certificate revocation benchmark runs the real agent and sshd on real Unix users: run it as root"
        );
    }
    let begun = Instant::now();
    crate::sys::raise_fd_limit();
    let agent_bin = keyward_tests::agent::agent_binary();
    let agent_version = std::process::Command::new(&agent_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = Load::now();
    let d = Deployment::start_with_ssh_ca(KeyAlgorithm::Ed25519).await;
    // The CA trusted and the user's principal written before the first certificate.
    let files = d.sshd.files_dir.clone();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ca =
                std::fs::read_to_string(files.join("trusted_user_ca_keys")).unwrap_or_default();
            let principals = files.join("principals").join(d.user.name.as_str());
            if !ca.trim().is_empty() && principals.is_file() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    anyhow::ensure!(ready.is_ok(), "the host never trusted the CA");

    eprintln!(
        "certificate-revocation: 1 agent, {} rounds",
        options.rounds_one
    );
    let mut none = None;
    let one = Case {
        agents: 1,
        others: 0,
        rounds: rounds(&d, options.rounds_one, "1 agent", 0, &mut none).await?,
        setup_seconds: 0.0,
        filesystem: String::new(),
    };

    let others_asked = options.agents.saturating_sub(1);
    eprintln!("certificate-revocation: {others_asked} more hosts of the tenant, in-process agents");
    let setup = Instant::now();
    let (mut fleet, _renamed) = Fleet::new(options.dir.as_deref())?;
    let filesystem = crate::machine::filesystem_of(fleet.root());
    let mut events = Some(fleet.report_sshd_files());
    let others = add_hosts(&d, &mut fleet, others_asked, options).await?;
    let setup_seconds = setup.elapsed().as_secs_f64();
    eprintln!(
        "certificate-revocation: {} agents connected in {setup_seconds:.1} s, {} rounds",
        others + 1,
        options.rounds_many
    );
    let many_rounds = rounds(
        &d,
        options.rounds_many,
        &format!("{} agents", others + 1),
        others,
        &mut events,
    )
    .await;
    fleet.stop().await;
    let many = Case {
        agents: others + 1,
        others,
        rounds: many_rounds?,
        setup_seconds,
        filesystem,
    };
    let load_after = Load::now();
    drop(fleet);
    drop(d);
    Ok(CertificateRevocationReport {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        agent_bin,
        agent_version,
        load_before,
        load_after,
        one,
        many,
        seconds: begun.elapsed().as_secs_f64(),
    })
}

/// An anchor of issue #16: how long a credential that should be gone keeps working, seconds.
#[derive(Debug, Clone, Copy)]
pub struct Anchor {
    pub name: &'static str,
    pub how: &'static str,
    /// (shortest, longest) seconds.
    pub seconds: (f64, f64),
}

/// The anchors.
pub const ANCHORS: [Anchor; 3] = [
    Anchor {
        name: "Vault / OpenBao SSH engine",
        how: "no revocation: a signed certificate works until it expires (TTLs of 5 min to 16 h in use)",
        seconds: (300.0, 57_600.0),
    },
    Anchor {
        name: "EC2 Instance Connect",
        how: "the pushed key lives 60 s",
        seconds: (60.0, 60.0),
    },
    Anchor {
        name: "kanidm (`kanidm_ssh_authorizedkeys`)",
        how: "the unixd cache keeps keys 15 s",
        seconds: (15.0, 15.0),
    },
];

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

/// `anchor ÷ keyward`, as `1,234×`.
fn times(anchor_seconds: f64, keyward_ms: f64) -> String {
    if !keyward_ms.is_finite() || keyward_ms <= 0.0 {
        return "–".into();
    }
    let r = anchor_seconds * 1000.0 / keyward_ms;
    if r >= 100.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = r.round() as usize;
        format!("{}×", crate::certificates::thousands(whole))
    } else {
        format!("{r:.0}×")
    }
}

fn seconds(s: f64) -> String {
    if s >= 3600.0 {
        format!("{} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{} min", s / 60.0)
    } else {
        format!("{s} s")
    }
}

/// The report's `BENCHMARKS.md` section id: [`SECTION`], `-tmpfs` when the other hosts wrote
/// on tmpfs (a section of its own beside the default run's, as propagation's).
pub fn section_id(report: &CertificateRevocationReport) -> String {
    if report.many.filesystem == "tmpfs" {
        format!("{SECTION}-tmpfs")
    } else {
        SECTION.to_owned()
    }
}

/// The report as a `BENCHMARKS.md` section.
pub fn markdown(report: &CertificateRevocationReport, command: &str) -> String {
    let mut out = String::from(
        "## Certificate revocation: REST revoke → new logins refused by sshd (issue #16)",
    );
    if report.many.filesystem == "tmpfs" {
        out.push_str(", the other hosts' files on tmpfs");
    }
    out.push_str("\n\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. Agent: `{}` ({}). Started {}; load average {} before, {} after; the run \
         took {:.1} min.\n",
        report.machine.describe(),
        report.agent_bin.display(),
        report.agent_version,
        report.started_at,
        report.load_before,
        report.load_after,
        report.seconds / 60.0,
    );
    let many = &report.many;
    let _ = writeln!(
        out,
        "Method: one deployment of the end-to-end harness (`Deployment::start_with_ssh_ca`): \
         OpenBao dev with its SSH engine as keyward's CA, the control plane in the benchmark's \
         process (SQLite), Debian's sshd on a loopback port (`TrustedUserCAKeys`, \
         `AuthorizedPrincipalsFile`, `RevokedKeys` in the files directory the agent writes), real \
         Unix users and the real agent binary over mTLS gRPC. Each round: a fresh Ed25519 key \
         certified with `POST /api/v1/tenant/infrastructure/ssh-certificates` ({VALIDITY_SECONDS} \
         s, the tenant's token), one `ssh -i KEY USER@127.0.0.1 true` with it that logs in, then \
         `POST …/ssh-certificates/{{id}}/revoke`. t0 is when that call has been answered. \
         **file**: the first read (every 1 ms) of sshd's `revoked_keys` holding the \
         certificate's key id (the agent renames a complete KRL into place). From t0, `ssh … \
         true` logins with the certificate run back to back, each started when the previous one \
         exited, until one started after the file was seen is refused; **first refused login** \
         is when the first refused attempt started / when its `ssh` exited (an attempt started \
         just before the rename is refused too when sshd reads the KRL after it). **refused** is \
         the file time, counted only when a login started after it was refused: sshd reads \
         `RevokedKeys` at every authentication, so no reload is involved and every login that \
         authenticates after the rename is refused. Every refusal was checked in sshd's log \
         (`{SSHD_REVOKED}`). Nearest-rank percentiles; a round not seen within {} s counts as \
         infinite. Before each round the host is `in_sync` again (up to {} s, not timed).\n",
        ROUND_DEADLINE.as_secs(),
        SETTLE.as_secs()
    );
    let _ = writeln!(
        out,
        "{} agents: the real host and {} in-process agents (the agent's own runtime, mTLS gRPC, \
         files in a temporary directory on {}) enrolled as more hosts **of the same tenant** \
         (enrolled and connected in {:.1} s), so that each revocation bumps every one of the tenant's \
         hosts and the control plane builds, signs and sends {} states with the new KRL, the \
         real host's among them; **all other hosts** is t0 → the last of them wrote its sshd \
         files. The 1-agent rounds run first, on the same deployment.\n",
        many.agents, many.others, many.filesystem, many.setup_seconds, many.agents,
    );
    out.push_str(
        "| agents connected | rounds | lost | revoke call p50 / p99 ms | REST → `revoked_keys` rewritten p50 / p99 ms | first refused login: started p50 / p99 ms | …: `ssh` exited p50 / p99 ms | **REST → refused p50 ms** | **REST → refused p99 ms** | all other hosts' files p50 / p99 ms | logins accepted after the rewrite | sshd `revoked by file` lines |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for case in [&report.one, &report.many] {
        let refused = case.refused();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | **{}** | **{}** | {} | {} | {} |",
            crate::certificates::thousands(case.agents),
            case.rounds.len(),
            case.lost(),
            pair(case.call()),
            pair(case.file()),
            pair(case.first_refused_start()),
            pair(case.first_refused_end()),
            refused.map_or_else(|| "–".into(), |s| ms(s.p50)),
            refused.map_or_else(|| "–".into(), |s| ms(s.p99)),
            if case.others == 0 {
                "–".into()
            } else {
                pair(case.others_last())
            },
            case.rounds
                .iter()
                .map(|r| r.accepted_after_file)
                .sum::<usize>(),
            case.rounds
                .iter()
                .map(|r| r.sshd_revoked_lines)
                .sum::<usize>(),
        );
    }
    let p99 = |c: &Case| c.refused().map_or(f64::INFINITY, |s| s.p99);
    let (one, thousand) = (p99(&report.one), p99(&report.many));
    let _ = writeln!(
        out,
        "\nAgainst the issue's anchors: how long a credential that should be gone keeps logging \
         in, ÷ keyward's REST → refused p99 (1 agent: {} ms; {} agents: {} ms).\n",
        ms(one),
        crate::certificates::thousands(report.many.agents),
        ms(thousand)
    );
    let _ = writeln!(
        out,
        "| anchor | how a credential ends | still works for | ÷ keyward p99, 1 agent | ÷ keyward p99, {} agents |\n|---|---|---|---|---|",
        crate::certificates::thousands(report.many.agents)
    );
    for a in &ANCHORS {
        let (lo, hi) = a.seconds;
        let (span, r1, rn) = if (hi - lo).abs() < f64::EPSILON {
            (seconds(lo), times(lo, one), times(lo, thousand))
        } else {
            (
                format!("{} – {}", seconds(lo), seconds(hi)),
                format!("{} – {}", times(lo, one), times(hi, one)),
                format!("{} – {}", times(lo, thousand), times(hi, thousand)),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {span} | **{r1}** | **{rn}** |",
            a.name, a.how
        );
    }
    out
}

/// `keyward-bench certificate-revocation`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds with the real agent alone.
    #[arg(long, default_value_t = 20)]
    pub rounds_one: usize,
    /// Agents connected in the second case (the real one and the rest in-process, hosts of
    /// the same tenant).
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Rounds with --agents connected.
    #[arg(long, default_value_t = 10)]
    pub rounds_many: usize,
    /// The test suite's version: 2 rounds with 1 agent, 1 with 20.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub agent: AgentBinary,
    #[command(flatten)]
    pub hosts: HostsDir,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `certificate-revocation` section is replaced";

    /// As `revocation`: when `KEYWARD_AGENT_BIN` is not the agent chosen, this binary runs
    /// itself again with it set, and that child prints and records the results.
    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        if self.agent.ran_in_child(self.smoke).await? {
            return Ok(Publication::default());
        }
        let mut options = if self.smoke {
            Options::smoke()
        } else {
            Options::new(
                self.rounds_one.max(1),
                self.agents.max(2),
                self.rounds_many.max(1),
            )
        };
        options.dir = self.hosts.dir;
        let report = run(&options).await?;
        let command = self.agent.reproduce(options.command(write));
        Ok(Publication::section(
            section_id(&report),
            markdown(&report, &command),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_read_as_ratios() {
        assert_eq!(times(15.0, 30.0), "500×");
        assert_eq!(times(57_600.0, 40.0), "1,440,000×");
        assert_eq!(times(60.0, f64::INFINITY), "–");
        assert_eq!(seconds(300.0), "5 min");
        assert_eq!(seconds(57_600.0), "16 h");
    }

    #[test]
    fn a_refusal_counts_only_when_confirmed() {
        let r = Round {
            file_ms: Some(3.0),
            ..Round::default()
        };
        assert_eq!(r.refused_ms(), None);
        let r = Round {
            confirmed: true,
            ..r
        };
        assert_eq!(r.refused_ms(), Some(3.0));
    }
}
