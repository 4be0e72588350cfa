//! RSA-4096 key generation: keys per second on one core, keyward's generator beside
//! `ssh-keygen -t rsa -b 4096` measured in the same run.
//!
//! Generation time is random (a search for two random 2048-bit primes), so each generator makes
//! many keys and the figures are medians and spreads. The runs are interleaved: every round makes
//! one key with each generator, one after the other on this thread, starting with a different
//! generator each round, so that load from other processes falls on all of them alike.
//!
//! The generators:
//! - `ssh-keygen -q -t rsa -b 4096 -N '' -f DIR/key`: a new process each time, which also writes
//!   both files (deleted right after; DIR is a private temporary directory);
//! - keyward: [`GeneratedKey::generate`], the control plane's code (RSA from the `rsa` crate
//!   0.10, OpenSSH encoding and fingerprint included);
//! - keyward before: `ssh-key` 0.6's `RsaKeypair::random` (the `rsa` crate 0.9) with the same
//!   encoding and fingerprint, the generator keyward used before;
//! - with the `aws-lc` cargo feature, AWS-LC's (`aws-lc-rs`) RSA-4096 generation, for reference.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use keyward_common::{GeneratedKey, KeyAlgorithm};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::benchmark::Benchmark;
use crate::machine::{Load, Machine};
use crate::report::Publication;
use crate::stats::percentile;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Keys per generator (rounds).
    pub keys: usize,
    /// Keys made with the previous generator (`rsa` 0.9), in the first rounds only: it is the
    /// slow one, and only there for the before/after comparison. 0 leaves it out.
    pub previous_keys: usize,
}

impl Options {
    /// The default run: 20 keys per generator, 8 with the previous one (1 to 3 minutes here).
    pub fn new() -> Self {
        Self {
            keys: 20,
            previous_keys: 8,
        }
    }

    /// The test suite's tiny version: one key per generator.
    pub fn smoke() -> Self {
        Self {
            keys: 1,
            previous_keys: 1,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

/// One generator's samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generator {
    pub name: String,
    /// What exactly was timed.
    pub what: String,
    /// Seconds per key, in the order made.
    pub seconds: Vec<f64>,
}

/// Figures of one generator's samples, in seconds per key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub n: usize,
    pub min: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
    pub mean: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            n: sorted.len(),
            min: sorted[0],
            p10: percentile(&sorted, 10.0),
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            max: sorted[sorted.len() - 1],
            mean: mean(&sorted),
        })
    }

    /// Keys per second on one core: keys made over the time they took.
    pub fn keys_per_second(&self) -> f64 {
        1.0 / self.mean
    }
}

fn mean(samples: &[f64]) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = samples.len() as f64;
    samples.iter().sum::<f64>() / n
}

/// The benchmark's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeygenResult {
    pub options: Options,
    pub machine: Machine,
    pub started_at: String,
    pub load_before: Load,
    pub load_after: Load,
    /// `ssh -V`: OpenSSH's and OpenSSL's versions.
    pub openssh_version: String,
    /// ssh-keygen first, keyward second, then the others.
    pub generators: Vec<Generator>,
    pub elapsed: Duration,
}

/// The ratio of two generators' throughput (`ours` keys per second over `theirs`) with a 95 %
/// bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    pub throughput: f64,
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl KeygenResult {
    pub fn generator(&self, name: &str) -> Option<&Generator> {
        self.generators.iter().find(|g| g.name == name)
    }

    /// `name` against ssh-keygen: > 1 means faster than ssh-keygen.
    pub fn ratio(&self, name: &str) -> Option<Ratio> {
        let theirs = &self.generator(SSH_KEYGEN)?.seconds;
        let ours = &self.generator(name)?.seconds;
        let (t, o) = (Spread::of(theirs)?, Spread::of(ours)?);
        // Resample both sets of keys 2,000 times; the 2.5th and 97.5th percentiles of the ratio.
        let mut rng = rand::thread_rng();
        let mut resample = |s: &[f64]| -> f64 {
            let picked: Vec<f64> = (0..s.len()).map(|_| s[rng.gen_range(0..s.len())]).collect();
            mean(&picked)
        };
        let mut ratios: Vec<f64> = (0..2000)
            .map(|_| resample(theirs) / resample(ours))
            .collect();
        ratios.sort_by(f64::total_cmp);
        Some(Ratio {
            throughput: t.mean / o.mean,
            median: t.p50 / o.p50,
            low: percentile(&ratios, 2.5),
            high: percentile(&ratios, 97.5),
        })
    }
}

pub const SSH_KEYGEN: &str = "ssh-keygen";
pub const KEYWARD: &str = "keyward (rsa 0.10)";
pub const PREVIOUS: &str = "keyward before (rsa 0.9)";
#[cfg(feature = "aws-lc")]
pub const AWS_LC: &str = "aws-lc-rs";

/// One key with `ssh-keygen` into `dir`, both files deleted after.
fn ssh_keygen(dir: &Path) -> anyhow::Result<()> {
    let key = dir.join("key");
    let status = std::process::Command::new("ssh-keygen")
        .args([
            "-q", "-t", "rsa", "-b", "4096", "-N", "", "-C", "bench", "-f",
        ])
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .status()
        .context("running ssh-keygen (apt-get install openssh-client)")?;
    anyhow::ensure!(status.success(), "ssh-keygen failed: {status}");
    std::fs::remove_file(&key).context("deleting ssh-keygen's private key")?;
    std::fs::remove_file(dir.join("key.pub")).context("deleting ssh-keygen's public key")?;
    Ok(())
}

fn keyward() -> anyhow::Result<()> {
    let key = GeneratedKey::generate(KeyAlgorithm::Rsa4096, "bench")?;
    anyhow::ensure!(key.public_openssh().starts_with("ssh-rsa "));
    Ok(())
}

/// What `GeneratedKey::generate` did before: `ssh-key`'s generator (the `rsa` crate 0.9).
fn previous() -> anyhow::Result<()> {
    let pair = ssh_key::private::RsaKeypair::random(&mut rand::rngs::OsRng, 4096)?;
    let mut private = ssh_key::PrivateKey::from(pair);
    private.set_comment("bench");
    let encoded = private.to_openssh(ssh_key::LineEnding::LF)?;
    let public = private.public_key().to_openssh()?;
    let _fingerprint = private.public_key().fingerprint(ssh_key::HashAlg::Sha256);
    anyhow::ensure!(!encoded.is_empty() && public.starts_with("ssh-rsa "));
    Ok(())
}

#[cfg(feature = "aws-lc")]
fn aws_lc() -> anyhow::Result<()> {
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    KeyPair::generate(KeySize::Rsa4096).map_err(|e| anyhow::anyhow!("aws-lc-rs: {e}"))?;
    Ok(())
}

type Make<'a> = Box<dyn Fn() -> anyhow::Result<()> + 'a>;

/// Runs the rounds on this thread (blocking).
fn run_blocking(options: &Options) -> anyhow::Result<KeygenResult> {
    anyhow::ensure!(options.keys > 0, "--keys must be at least 1");
    let machine = Machine::detect();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let openssh_version = std::process::Command::new("ssh")
        .arg("-V")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stderr).trim().to_owned())
        .unwrap_or_default();
    let dir = tempfile::Builder::new()
        .prefix("keyward-bench-keygen-")
        .tempdir()
        .context("creating a temporary directory for ssh-keygen")?;
    let mut makers: Vec<(Generator, Make<'_>, usize)> = vec![
        (
            Generator {
                name: SSH_KEYGEN.into(),
                what: "`ssh-keygen -q -t rsa -b 4096 -N '' -C bench -f FILE`, a new process \
                       each time, writing both files (deleted after, not timed)"
                    .into(),
                seconds: Vec::new(),
            },
            Box::new(|| ssh_keygen(dir.path())),
            options.keys,
        ),
        (
            Generator {
                name: KEYWARD.into(),
                what: "`GeneratedKey::generate(Rsa4096)`: `rsa` 0.10 generation, the \
                       components copied into `ssh-key`, OpenSSH encoding, SHA-256 fingerprint"
                    .into(),
                seconds: Vec::new(),
            },
            Box::new(keyward),
            options.keys,
        ),
    ];
    if options.previous_keys > 0 {
        makers.push((
            Generator {
                name: PREVIOUS.into(),
                what: "`ssh_key::private::RsaKeypair::random` (`rsa` 0.9), same encoding and \
                       fingerprint: keyward's generator before this change"
                    .into(),
                seconds: Vec::new(),
            },
            Box::new(previous),
            options.previous_keys.min(options.keys),
        ));
    }
    #[cfg(feature = "aws-lc")]
    makers.push((
        Generator {
            name: AWS_LC.into(),
            what: "`aws_lc_rs::rsa::KeyPair::generate(Rsa4096)` (AWS-LC, C and assembly), the \
                   key only"
                .into(),
            seconds: Vec::new(),
        },
        Box::new(aws_lc),
        options.keys,
    ));
    let load_before = Load::now();
    let started = Instant::now();
    for round in 0..options.keys {
        let count = makers.len();
        for i in 0..count {
            // Rotate who goes first, so that no generator always follows the same one.
            let (generator, make, keys) = &mut makers[(round + i) % count];
            if round >= *keys {
                continue;
            }
            let t0 = Instant::now();
            make().with_context(|| format!("{} failed", generator.name))?;
            generator.seconds.push(t0.elapsed().as_secs_f64());
        }
        eprint!("\rkeygen: round {} of {}", round + 1, options.keys);
    }
    eprintln!();
    let elapsed = started.elapsed();
    let load_after = Load::now();
    let generators = makers.into_iter().map(|(g, ..)| g).collect();
    Ok(KeygenResult {
        options: options.clone(),
        machine,
        started_at,
        load_before,
        load_after,
        openssh_version,
        generators,
        elapsed,
    })
}

/// Runs the benchmark on a blocking thread (one core at a time: every key is made on it).
pub async fn run(options: &Options) -> anyhow::Result<KeygenResult> {
    let options = options.clone();
    tokio::task::spawn_blocking(move || run_blocking(&options))
        .await
        .context("the key generation benchmark panicked")?
}

/// The command line that reproduces `options`.
pub fn command_line(options: &Options, write: Option<&Path>) -> String {
    let mut cmd = String::from("cargo run --release -p keyward-bench -- keygen");
    if *options == Options::smoke() {
        cmd.push_str(" --smoke");
    } else if *options != Options::new() {
        cmd.push_str(&format!(
            " --keys {} --previous-keys {}",
            options.keys, options.previous_keys
        ));
    }
    if let Some(path) = write {
        cmd.push_str(&format!(" --write {}", path.display()));
    }
    cmd
}

/// The `BENCHMARKS.md` section id.
pub const SECTION: &str = "keygen";

fn s(x: f64) -> String {
    format!("{x:.3}")
}

/// The results as a `BENCHMARKS.md` section.
pub fn markdown(result: &KeygenResult) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = write!(
        out,
        "## Key generation: RSA-4096 keys per second on one core, against ssh-keygen\n\n\
         Command: `{command}`\n\n\
         Machine: {machine}. {openssh}. Started {started} (load average {before} before, {after} \
         after; {elapsed:.0} s).{busy}\n\n\
         Method: {keys} round(s); each round makes one key with each generator, one after the \
         other on one thread, the first generator changing every round (interleaved, so that \
         other load falls on all alike). Times are seconds per key; keys/s is keys over the time \
         they took (1 / mean), which is what a bulk rotation gets out of a core. The ratio is \
         ssh-keygen's time over the generator's (> 1: faster than ssh-keygen), of the means \
         (throughput) and of the medians, with a 95 % bootstrap interval of the throughput \
         ratio (2,000 resamples of both). RSA generation time is random (a prime search), so \
         single keys vary by a factor of ten; compare the rows of one run.\n\n",
        command = command_line(&result.options, Some(Path::new("BENCHMARKS.md"))),
        machine = result.machine.describe(),
        openssh = if result.openssh_version.is_empty() {
            "OpenSSH version unknown".to_owned()
        } else {
            format!("`ssh -V`: {}", result.openssh_version)
        },
        started = result.started_at,
        before = result.load_before,
        after = result.load_after,
        elapsed = result.elapsed.as_secs_f64(),
        busy = if result.load_before.0 >= 0.5 * (result.machine.nproc as f64) {
            " Other load was present (other engineers' builds and tests), so absolute times \
             include waiting for a CPU; the interleaving spreads it over all generators."
        } else {
            ""
        },
        keys = result.options.keys,
    );
    out.push_str(
        "| generator | keys | min s | p10 s | **p50 s** | p90 s | max s | mean s | **keys/s per core** | vs ssh-keygen: throughput (95 % interval) | medians |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in &result.generators {
        let Some(sp) = Spread::of(&g.seconds) else {
            continue;
        };
        let (ratio, medians) = match (g.name != SSH_KEYGEN)
            .then(|| result.ratio(&g.name))
            .flatten()
        {
            Some(r) => (
                format!("**{:.2}x** ({:.2}–{:.2})", r.throughput, r.low, r.high),
                format!("{:.2}x", r.median),
            ),
            None => ("1 (reference)".into(), "1".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | **{}** | {} | {} | {} | **{:.2}** | {} | {} |",
            g.name,
            sp.n,
            s(sp.min),
            s(sp.p10),
            s(sp.p50),
            s(sp.p90),
            s(sp.max),
            s(sp.mean),
            sp.keys_per_second(),
            ratio,
            medians,
        );
    }
    out.push_str("\nWhat each row times:\n\n");
    for g in &result.generators {
        let _ = writeln!(out, "- {}: {}.", g.name, g.what);
    }
    out
}

/// `keyward-bench keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keys per generator (interleaved rounds).
    #[arg(long, default_value_t = 20)]
    pub keys: usize,
    /// Keys made with the previous generator (rsa 0.9), in the first rounds; 0 leaves it out.
    #[arg(long, default_value_t = 8)]
    pub previous_keys: usize,
    /// The test suite's version: one key per generator (overrides --keys and --previous-keys).
    #[arg(long)]
    pub smoke: bool,
}

impl Args {
    pub fn options(&self) -> Options {
        if self.smoke {
            Options::smoke()
        } else {
            Options {
                keys: self.keys,
                previous_keys: self.previous_keys,
            }
        }
    }
}

impl Benchmark for Args {
    const WRITES: &'static str = "its `keygen` section is replaced";

    // The section's command line always ends `--write BENCHMARKS.md` (see `markdown`).
    async fn run(self, _write: Option<&Path>) -> anyhow::Result<Publication> {
        let result = run(&self.options()).await?;
        Ok(Publication::section(SECTION, markdown(&result)))
    }
}
