//! SSH certificates and revocation lists (issue #16), side by side in one run:
//!
//! 1. **Signing**: user certificates signed through the real `VaultStore`
//!    (`CertificateAuthority::sign_user_certificate`) against an OpenBao dev server whose SSH
//!    engine is set up as `OpenBao::enable_ssh_ca` does (Ed25519 CA, role `keyward-user`), one
//!    call at a time and with N in flight, beside OpenBao's plain KV v2 write
//!    (`SecretStore::write_secret`, check-and-set) through the same client as the reference. The
//!    two alternate at every concurrency, `rounds` times, so drift reaches both alike.
//! 2. **KRL**: a seeded set of revoked serials (runs, dense stretches, scatter: the integration
//!    test's generator) under the Vault CA, plus random SHA-256 key hashes: the encoded size, the
//!    time to build the [`RevocationList`] and encode it, the agent's `apply_sshd_files` into a
//!    fresh directory (first write), again unchanged (it only compares), and with one more serial
//!    (a rewrite), and `ssh-keygen -Q -f KRL CERT` (OpenSSH's KRL read and check, the stand-in
//!    for sshd's own at each authentication) beside the same against an empty KRL and against a
//!    KRL as large that revokes nothing (its comment pads it: the cost of the bytes alone).
//! 3. **Logins**: real `ssh` certificate logins (Debian's sshd from the test fixture, a real Unix
//!    user, the certificate Vault signed) with sshd's `RevokedKeys` empty and holding each KRL,
//!    interleaved login by login; the files are switched with `apply_sshd_files` between logins
//!    (not timed). Needs root; without it this part is left out and the report says so.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt as _;
use keyward_agent::writer::{SshdFiles, apply_sshd_files};
use keyward_common::krl::RevocationList;
use keyward_common::{GeneratedKey, KeyAlgorithm, Principal, TenantId};
use keyward_server::config::VaultConfig;
use keyward_server::vault::{
    CertificateAuthority, SecretFields, SecretStore, UserCertificateRequest, VaultStore,
};
use keyward_tests::openbao::{ROOT_TOKEN, SSH_USER_ROLE};
use keyward_tests::{KeyFile, OpenBao, Sshd, TestUser};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::benchmark::Benchmark;
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::stats::Summary;

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "certificates";

const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
/// The certificates' validity: long enough for the whole run.
const VALIDITY: Duration = Duration::from_secs(3600);
/// The principal the login certificate carries and the test user's principals file names.
const PRINCIPAL: &str = "kw-bench";
/// The seed of the revoked serials and hashes (fixed: every run measures the same lists).
const SEED: u64 = 16;
/// The longest a benchmark login may take before it counts as failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Calls per batch (one batch per operation, concurrency and round).
    pub calls: usize,
    pub concurrency: Vec<usize>,
    pub rounds: usize,
    /// The KRLs: (serials, hashes).
    pub mixes: Vec<(usize, usize)>,
    /// Encodes and applies per KRL.
    pub krl_rounds: usize,
    /// `ssh-keygen -Q` runs per KRL.
    pub queries: usize,
    /// Logins per `RevokedKeys` content.
    pub logins: usize,
    pub smoke: bool,
}

impl Options {
    /// 200 calls a batch at 1, 8 and 32 in flight, 2 rounds; 100,000 serials with 100,000 and
    /// with 10,000 hashes; 30 logins each.
    pub fn new(calls: usize, logins: usize) -> Self {
        Self {
            calls,
            concurrency: vec![1, 8, 32],
            rounds: 2,
            mixes: vec![(100_000, 100_000), (100_000, 10_000)],
            krl_rounds: 10,
            queries: 30,
            logins,
            smoke: false,
        }
    }

    /// The test suite's version: a few seconds.
    pub fn smoke() -> Self {
        Self {
            calls: 20,
            concurrency: vec![1, 8],
            rounds: 1,
            mixes: vec![(10_000, 1_000)],
            krl_rounds: 2,
            queries: 3,
            logins: 3,
            smoke: true,
        }
    }

    pub fn command(&self, write: Option<&Path>) -> String {
        let mut c = String::from("cargo run --release -p keyward-bench -- certificates");
        if self.smoke {
            c.push_str(" --smoke");
        } else {
            if self.calls != 200 {
                let _ = write!(c, " --calls {}", self.calls);
            }
            if self.logins != 30 {
                let _ = write!(c, " --logins {}", self.logins);
            }
        }
        if let Some(path) = write {
            let _ = write!(c, " --write {}", path.display());
        }
        c
    }
}

/// The calls of one operation at one concurrency, over every round.
#[derive(Debug, Clone, Default)]
pub struct Rate {
    pub operation: &'static str,
    pub concurrency: usize,
    /// Milliseconds per call.
    pub latencies: Vec<f64>,
    /// Wall time of the batches, summed.
    pub seconds: f64,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.latencies.len() as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// One KRL's figures, in milliseconds.
#[derive(Debug, Clone)]
pub struct Krl {
    pub serials: usize,
    pub hashes: usize,
    pub bytes: u64,
    pub encode: Vec<f64>,
    pub first_apply: Vec<f64>,
    pub unchanged_apply: Vec<f64>,
    pub changed_apply: Vec<f64>,
    pub query: Vec<f64>,
    /// `ssh-keygen -Q` of a KRL as large that revokes nothing (its comment pads it).
    pub query_padded: Vec<f64>,
}

/// Logins with one `RevokedKeys` content.
#[derive(Debug, Clone)]
pub struct Logins {
    pub name: String,
    pub bytes: u64,
    /// Milliseconds per login that worked.
    pub ok: Vec<f64>,
    pub failed: usize,
}

/// The result.
#[derive(Debug, Clone)]
pub struct CertificatesReport {
    pub options: Options,
    pub started_at: String,
    pub machine: Machine,
    pub bao_version: String,
    pub load_before: Load,
    pub load_after: Load,
    pub rates: Vec<Rate>,
    pub krls: Vec<Krl>,
    /// `ssh-keygen -Q` against an empty KRL, milliseconds.
    pub query_empty: Vec<f64>,
    /// `None`: not root, not measured.
    pub logins: Option<Vec<Logins>>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `calls` calls of `call` (given the call's index), `concurrency` in flight at a time.
async fn batch<F, Fut>(calls: usize, concurrency: usize, call: F) -> anyhow::Result<(Vec<f64>, f64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<f64>> = futures::stream::iter(0..calls)
        .map(|i| {
            let fut = call(i);
            async move {
                let t = Instant::now();
                fut.await?;
                Ok(ms(t.elapsed()))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let latencies = results.into_iter().collect::<anyhow::Result<Vec<f64>>>()?;
    Ok((latencies, seconds))
}

/// The signing and KV write rates, alternating at each concurrency.
async fn rates(vault: &Arc<VaultStore>, options: &Options) -> anyhow::Result<Vec<Rate>> {
    let user = GeneratedKey::generate(KeyAlgorithm::Ed25519, "bench@laptop")
        .context("generating the user key")?;
    let mut out = Vec::new();
    for &c in &options.concurrency {
        let mut sign = Rate {
            operation: "sign user certificate",
            concurrency: c,
            ..Rate::default()
        };
        let mut kv = Rate {
            operation: "KV v2 write (reference)",
            concurrency: c,
            ..Rate::default()
        };
        // One KV secret per call, each written once (check-and-set 0): no write waits for another.
        let tenant: TenantId = format!("cert-bench-c{c}").parse()?;
        for round in 0..options.rounds {
            let base = round * options.calls;
            let tenant = &tenant;
            let (l, s) = batch(options.calls, c, |i| async move {
                let fields = SecretFields::new().with("value", format!("secret {i}"));
                vault
                    .write_secret(tenant, &format!("s{}", base + i), &fields, 0)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })
            .await
            .context("the KV write")?;
            kv.latencies.extend(l);
            kv.seconds += s;
            let user = &user;
            let (l, s) = batch(options.calls, c, |i| async move {
                let request = UserCertificateRequest::new(
                    SSH_USER_ROLE,
                    user.public_openssh(),
                    &format!("bench:{c}:{}", base + i),
                    [PRINCIPAL],
                    VALIDITY,
                )?;
                vault.sign_user_certificate(&request).await?;
                Ok(())
            })
            .await
            .context("signing")?;
            sign.latencies.extend(l);
            sign.seconds += s;
        }
        out.push(kv);
        out.push(sign);
    }
    Ok(out)
}

/// `n` revoked serials, seeded: runs of consecutive serials, dense stretches with small gaps,
/// and serials scattered over the whole range (the integration test's mix).
pub fn revoked_serials(rng: &mut StdRng, n: usize) -> BTreeSet<u64> {
    let mut serials = BTreeSet::new();
    let mut at = 1u64;
    while serials.len() < n {
        match rng.gen_range(0..10) {
            0 => {
                for s in at..at + rng.gen_range(2..500) {
                    if serials.len() >= n {
                        break;
                    }
                    serials.insert(s);
                }
            }
            1..=5 => {
                serials.insert(at);
            }
            _ => {
                serials.insert(rng.gen_range(1..u64::MAX));
            }
        }
        at += rng.gen_range(2..20);
    }
    serials
}

/// The list: every serial under `ca`, every hash.
fn build(
    ca: &ssh_key::PublicKey,
    serials: &BTreeSet<u64>,
    hashes: &[[u8; 32]],
) -> anyhow::Result<RevocationList> {
    let mut krl = RevocationList::new(1, 1_800_000_000, "keyward-bench")?;
    for &serial in serials {
        krl.revoke_serial(Some(ca), serial)?;
    }
    for &hash in hashes {
        krl.revoke_sha256(hash)?;
    }
    Ok(krl)
}

fn sshd_files(
    ca: &str,
    revoked_keys: Vec<u8>,
    user: Option<&TestUser>,
) -> anyhow::Result<SshdFiles> {
    let mut principals = BTreeMap::new();
    if let Some(user) = user {
        principals.insert(
            user.name.clone(),
            vec![PRINCIPAL.parse::<Principal>()?.into()],
        );
    }
    Ok(SshdFiles {
        user_ca_keys: vec![ca.to_owned()],
        revoked_keys,
        principals,
    })
}

fn timed_apply(dir: &Path, files: &SshdFiles, expect_change: bool) -> anyhow::Result<f64> {
    let t = Instant::now();
    let changed = apply_sshd_files(dir, files).context("apply_sshd_files")?;
    let took = ms(t.elapsed());
    anyhow::ensure!(
        changed == expect_change,
        "apply_sshd_files changed {changed}, expected {expect_change}"
    );
    Ok(took)
}

/// `ssh-keygen -Q -f krl cert`: milliseconds; an error unless it says the certificate is fine.
fn query(krl: &Path, cert: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = Command::new(SSH_KEYGEN)
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(cert)
        .output()
        .context("running ssh-keygen -Q")?;
    let took = ms(t.elapsed());
    anyhow::ensure!(
        out.status.success(),
        "ssh-keygen -Q -f {} failed: {}{}",
        krl.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// The KRLs of every mix, encoded once more for their files.
struct Lists {
    /// (serials, hashes, bytes, bytes with one more serial).
    encoded: Vec<(usize, usize, Vec<u8>, Vec<u8>)>,
}

/// Part 2: every mix's KRL built, encoded, applied and queried. `cert` is the certificate file
/// of serial `cert_serial`, which the lists leave out.
fn krls(
    options: &Options,
    ca: &str,
    (cert, cert_serial): (&Path, u64),
    dir: &Path,
) -> anyhow::Result<(Vec<Krl>, Vec<f64>, Lists)> {
    let ca_key = ssh_key::PublicKey::from_openssh(ca).context("reading the CA key")?;
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut out = Vec::new();
    let mut lists = Lists {
        encoded: Vec::new(),
    };
    for &(n_serials, n_hashes) in &options.mixes {
        let mut serials = revoked_serials(&mut rng, n_serials);
        serials.remove(&cert_serial);
        let hashes: Vec<[u8; 32]> = (0..n_hashes).map(|_| rng.r#gen()).collect();
        let mut encode = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..options.krl_rounds {
            let t = Instant::now();
            bytes = build(&ca_key, &serials, &hashes)?.encode();
            encode.push(ms(t.elapsed()));
        }
        let mut more = serials.clone();
        let extra = (1..)
            .find(|s| !more.contains(s))
            .context("no free serial")?;
        more.insert(extra);
        let changed = build(&ca_key, &more, &hashes)?.encode();
        let (a, b) = (
            sshd_files(ca, bytes.clone(), None)?,
            sshd_files(ca, changed.clone(), None)?,
        );
        let (mut first, mut unchanged, mut change) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..options.krl_rounds {
            let target = dir.join(format!("sshd-{n_serials}-{n_hashes}-{round}"));
            first.push(timed_apply(&target, &a, true)?);
            unchanged.push(timed_apply(&target, &a, false)?);
            change.push(timed_apply(&target, &b, true)?);
            std::fs::remove_dir_all(&target).context("removing an apply directory")?;
        }
        out.push(Krl {
            serials: serials.len(),
            hashes: hashes.len(),
            bytes: bytes.len() as u64,
            encode,
            first_apply: first,
            unchanged_apply: unchanged,
            changed_apply: change,
            query: Vec::new(),
            query_padded: Vec::new(),
        });
        lists
            .encoded
            .push((serials.len(), hashes.len(), bytes, changed));
    }
    // The queries, interleaved: empty, then every list, again and again. ssh-keygen -Q wants a
    // KRL, not an empty file (sshd takes either): the empty list, its header only.
    let empty_path = dir.join("empty.krl");
    std::fs::write(
        &empty_path,
        RevocationList::new(1, 1_800_000_000, "empty")?.encode(),
    )
    .context("writing the empty KRL")?;
    let mut paths = Vec::new();
    for (i, (_, _, bytes, _)) in lists.encoded.iter().enumerate() {
        let path = dir.join(format!("list-{i}.krl"));
        std::fs::write(&path, bytes).context("writing a KRL")?;
        let padded = dir.join(format!("padded-{i}.krl"));
        let header = RevocationList::new(1, 1_800_000_000, "")?.encode().len();
        let comment = "x".repeat(bytes.len().saturating_sub(header));
        std::fs::write(
            &padded,
            RevocationList::new(1, 1_800_000_000, &comment)?.encode(),
        )
        .context("writing a padded KRL")?;
        paths.push((path, padded));
    }
    let mut query_empty = Vec::new();
    for _ in 0..options.queries {
        query_empty.push(query(&empty_path, cert)?);
        for (krl, (path, padded)) in out.iter_mut().zip(&paths) {
            krl.query.push(query(path, cert)?);
            krl.query_padded.push(query(padded, cert)?);
        }
    }
    Ok((out, query_empty, lists))
}

/// One `ssh … true` as the user with the certificate; milliseconds, `None` when it failed.
fn login(sshd: &Sshd, key: &Path, user: &TestUser) -> anyhow::Result<Option<f64>> {
    let t = Instant::now();
    let mut child = sshd
        .ssh(key, user.name.as_str(), &["true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting ssh")?;
    let deadline = t + LOGIN_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("waiting for ssh")? {
            let took = ms(t.elapsed());
            return Ok(status.success().then_some(took));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Part 3: logins with sshd's `RevokedKeys` empty and holding each list, interleaved.
fn logins(options: &Options, ca: &str, key: &Path, lists: &Lists) -> anyhow::Result<Vec<Logins>> {
    let user = TestUser::create("kb");
    let sshd = Sshd::start_temp();
    let mut contents: Vec<(String, Vec<u8>)> = vec![("empty".into(), Vec::new())];
    for (serials, hashes, bytes, _) in &lists.encoded {
        contents.push((
            format!(
                "{} serials + {} hashes",
                thousands(*serials),
                thousands(*hashes)
            ),
            bytes.clone(),
        ));
    }
    let mut out: Vec<Logins> = contents
        .iter()
        .map(|(name, bytes)| Logins {
            name: name.clone(),
            bytes: bytes.len() as u64,
            ok: Vec::new(),
            failed: 0,
        })
        .collect();
    let files: Vec<SshdFiles> = contents
        .into_iter()
        .map(|(_, bytes)| sshd_files(ca, bytes, Some(&user)))
        .collect::<anyhow::Result<_>>()?;
    // One login each first, not counted: sshd's and ssh's first start reads their binaries in.
    for f in &files {
        apply_sshd_files(&sshd.files_dir, f).context("writing sshd's files")?;
        login(&sshd, key, &user)?;
    }
    for _ in 0..options.logins {
        for (f, result) in files.iter().zip(out.iter_mut()) {
            apply_sshd_files(&sshd.files_dir, f).context("writing sshd's files")?;
            match login(&sshd, key, &user)? {
                Some(took) => result.ok.push(took),
                None => result.failed += 1,
            }
        }
    }
    if out.iter().all(|l| l.ok.is_empty()) {
        bail!(
            "no certificate login worked; sshd's log:\n{}",
            sshd.log_text()
        );
    }
    Ok(out)
}

/// Runs the benchmark.
pub async fn run(options: &Options) -> anyhow::Result<CertificatesReport> {
    anyhow::ensure!(
        Path::new(SSH_KEYGEN).is_file(),
        "{SSH_KEYGEN} is missing (Debian package openssh-client)"
    );
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = Load::now();
    let bao = OpenBao::start().await;
    let bao_version = crate::machine::bao_version().await;
    let ca = bao.enable_ssh_ca().await;
    let vault = VaultStore::connect(&VaultConfig {
        address: Some(bao.addr.clone()),
        token: Some(ROOT_TOKEN.into()),
        ..VaultConfig::default()
    })
    .await
    .context("connecting to OpenBao")?;

    eprintln!("certificates: signing and KV writes");
    let rates = rates(&vault, options).await?;

    // The login key and its certificate, signed by Vault (serial random: checked not revoked).
    let user_key = GeneratedKey::generate(KeyAlgorithm::Ed25519, "bench-login")
        .context("generating the login key")?;
    let request = UserCertificateRequest::new(
        SSH_USER_ROLE,
        user_key.public_openssh(),
        "bench:login",
        [PRINCIPAL],
        VALIDITY,
    )?;
    let signed = vault.sign_user_certificate(&request).await?;
    let serial = signed.serial;
    let key = KeyFile::write(user_key.private_openssh());
    let cert = PathBuf::from(format!("{}-cert.pub", key.path.display()));
    std::fs::write(&cert, format!("{}\n", signed.certificate.trim()))
        .context("writing the certificate")?;

    eprintln!("certificates: KRLs");
    let root = nix::unistd::Uid::effective().is_root();
    let opts = options.clone();
    let (ca2, cert2, key_path) = (ca.clone(), cert.clone(), key.path.clone());
    let (krls, query_empty, logins) = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().context("a temporary directory")?;
        let (krls, query_empty, lists) = krls(&opts, &ca2, (&cert2, serial), dir.path())?;
        let logins = if root {
            eprintln!("certificates: logins");
            Some(logins(&opts, &ca2, &key_path, &lists)?)
        } else {
            eprintln!("certificates: not root, the sshd logins are left out");
            None
        };
        anyhow::Ok((krls, query_empty, logins))
    })
    .await??;
    drop(key);
    drop(bao);
    let load_after = Load::now();
    Ok(CertificatesReport {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        bao_version,
        load_before,
        load_after,
        rates,
        krls,
        query_empty,
        logins,
    })
}

fn p(samples: &[f64]) -> (String, String) {
    Summary::of(samples).map_or_else(
        || ("–".into(), "–".into()),
        |s| (format!("{:.2}", s.p50), format!("{:.2}", s.p99)),
    )
}

fn p50(samples: &[f64]) -> f64 {
    Summary::of(samples).map_or(f64::NAN, |s| s.p50)
}

/// `100,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn size(n: u64) -> String {
    if n < 1 << 20 {
        format!("{:.0} KiB ({n} bytes)", n as f64 / 1024.0)
    } else {
        format!("{} ({n} bytes)", crate::report::bytes(n))
    }
}

/// The report as a `BENCHMARKS.md` section.
pub fn markdown(report: &CertificatesReport, command: &str) -> String {
    let o = &report.options;
    let mut out = String::from("## Certificates and KRLs\n\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {}. {}. Started {}; load average {} before, {} after.\n",
        report.machine.describe(),
        report.bao_version,
        report.started_at,
        report.load_before,
        report.load_after,
    );
    let _ = writeln!(
        out,
        "Signing: `VaultStore::sign_user_certificate` (role `{SSH_USER_ROLE}`, Ed25519 CA made \
         in the engine, an Ed25519 user key, one principal, {} s validity; every answer read and \
         checked against the request) against an OpenBao dev server (in-memory storage) on \
         loopback, beside `SecretStore::write_secret` (KV v2, a new secret per call, \
         check-and-set 0) through the same client. {} calls per batch, the two operations \
         alternating at each concurrency, {} round(s); calls/s is calls over the batches' wall \
         time. Nearest-rank percentiles.\n",
        VALIDITY.as_secs(),
        o.calls,
        o.rounds
    );
    out.push_str("| operation | in flight | calls | calls/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n");
    for r in &report.rates {
        let (a, b) = p(&r.latencies);
        let _ = writeln!(
            out,
            "| {} | {} | {} | **{:.0}** | {a} | {b} |",
            r.operation,
            r.concurrency,
            r.latencies.len(),
            r.per_second()
        );
    }
    let _ = writeln!(
        out,
        "\nKRLs: serials revoked under the Vault CA (seed {SEED}: runs of 2–500, single serials \
         2–20 apart, and 40% scattered over the whole 64-bit range), plus random SHA-256 key \
         hashes. Encode is `RevocationList::new` + every `revoke_serial`/`revoke_sha256` + \
         `encode()`. Apply is the agent's `apply_sshd_files` (the KRL, the CA key, no \
         principals) into a fresh directory under /tmp: first write, the same again (read back \
         and compared, nothing written), then the list with one more serial (rewritten: temp \
         file, fsync, rename). {} rounds each. `ssh-keygen -Q -f KRL CERT` is OpenSSH reading \
         and checking the whole KRL for the login certificate (not revoked), process start \
         included: {} runs per KRL interleaved with the same against a KRL that revokes nothing \
         (its header only; p50 {:.2} ms), the difference is the KRL's cost; and against a KRL \
         of the same size that revokes nothing, its comment padding it (what reading that many \
         bytes costs, whatever they say).\n",
        o.krl_rounds,
        o.queries,
        p50(&report.query_empty)
    );
    out.push_str(
        "| revoked | KRL size | encode p50 / p99 ms | apply: first p50 ms | unchanged p50 ms | one-entry change p50 ms | `ssh-keygen -Q` p50 / p99 ms | − empty KRL p50 ms | same size, nothing revoked: `-Q` p50 ms |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for k in &report.krls {
        let (e50, e99) = p(&k.encode);
        let (q50, q99) = p(&k.query);
        let _ = writeln!(
            out,
            "| {} serials + {} hashes | {} | {e50} / {e99} | {:.2} | {:.2} | {:.2} | {q50} / {q99} | **{:.2}** | {:.2} |",
            thousands(k.serials),
            thousands(k.hashes),
            size(k.bytes),
            p50(&k.first_apply),
            p50(&k.unchanged_apply),
            p50(&k.changed_apply),
            p50(&k.query) - p50(&report.query_empty),
            p50(&k.query_padded),
        );
    }
    match &report.logins {
        None => out.push_str(
            "\nLogins: **not measured** (the benchmark was not run as root: the sshd fixture and \
             the test user need it).\n",
        ),
        Some(logins) => {
            let _ = writeln!(
                out,
                "\nLogins: `ssh -i KEY USER@127.0.0.1 true` with the Vault-signed certificate \
                 (`KEY-cert.pub`) against Debian's sshd (the test fixture: LogLevel VERBOSE, \
                 `TrustedUserCAKeys`, `AuthorizedPrincipalsFile` and `RevokedKeys` in its files \
                 directory), as a real Unix user, wall time of the `ssh` process (key exchange, \
                 certificate authentication with the KRL read, session, `true`, close). The \
                 files are switched with `apply_sshd_files` before each login (not timed); the \
                 contents take turns login by login, {} logins each after one unmeasured warm-up \
                 each.\n",
                o.logins
            );
            out.push_str(
                "| `RevokedKeys` | size | logins ok | failed | p50 ms | p99 ms | mean ms | p50 − empty ms |\n\
                 |---|---|---|---|---|---|---|---|\n",
            );
            let empty = logins.first().map_or(f64::NAN, |l| p50(&l.ok));
            for l in logins {
                let (a, b) = p(&l.ok);
                let mean = Summary::of(&l.ok).map_or(f64::NAN, |s| s.mean);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {a} | {b} | {mean:.2} | **{:.2}** |",
                    l.name,
                    size(l.bytes),
                    l.ok.len(),
                    l.failed,
                    p50(&l.ok) - empty,
                );
            }
        }
    }
    out
}

/// `keyward-bench certificates`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Calls per batch (sign and KV write, at each concurrency, each round).
    #[arg(long, default_value_t = 200)]
    pub calls: usize,
    /// Logins per `RevokedKeys` content.
    #[arg(long, default_value_t = 30)]
    pub logins: usize,
    /// The test suite's version: a few seconds.
    #[arg(long)]
    pub smoke: bool,
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `certificates` section is replaced";

    async fn run(self, write: Option<&Path>) -> anyhow::Result<Publication> {
        let options = if self.smoke {
            Options::smoke()
        } else {
            Options::new(self.calls.max(1), self.logins.max(1))
        };
        let report = run(&options).await?;
        Ok(Publication::section(
            SECTION,
            markdown(&report, &options.command(write)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_as_many_as_asked_and_seeded() {
        let a = revoked_serials(&mut StdRng::seed_from_u64(1), 5_000);
        let b = revoked_serials(&mut StdRng::seed_from_u64(1), 5_000);
        assert_eq!(a.len(), 5_000);
        assert_eq!(a, b);
        assert!(!a.contains(&0));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
