//! REST read throughput: `GET /api/v1/tenant/infrastructure/ssh-credentials` under concurrent
//! load, on SQLite and on PostgreSQL, beside OpenBao's own KV v2 read of a secret, driven in the
//! same run by the same load generator with the same concurrency.
//!
//! - One OpenBao dev server (a child process) and one control plane per backend (tasks of this
//!   process, release build when the benchmark is): REST on 127.0.0.1:0, Ed25519 keys (key
//!   generation is not on the measured path), `--tenants` tenants each with one registered host
//!   and a tenant token; the load uses one of them.
//! - The control planes reach OpenBao through a counting proxy in this process, which records
//!   the request line of every HTTP request they send to Vault: the number sent while keyward is
//!   under load shows whether the path calls Vault (it must not).
//! - OpenBao is read with `GET /v1/vps/data/rest-bench` and the root token: a KV v2 secret holding
//!   the same JSON document keyward answers with.
//! - Targets are measured in interleaved rounds (OpenBao, keyward on SQLite, keyward on
//!   PostgreSQL, then again), so drift from other load on the machine reaches all of them alike;
//!   each keyward figure is also given as a ratio to the OpenBao figure of the same round.
//! - The load generator is `wrk` (Debian package `wrk`, `scripts/install-bench-deps`), a
//!   separate process, `-t2 -c32 --latency` by default; or, for the smoke mode and where wrk is
//!   missing and `--generator builtin` is asked for, a small closed-loop client in this process.
//!
//! The files, one concern each: `options` (what to run, and the command line that reproduces it)
//! and `args` (the subcommand's flags); `control_plane` (a control plane per backend, seeded with
//! tenants, hosts and tokens); `vault_proxy` (the counting proxy); `load`, `wrk` and `builtin`
//! (the load generators); `results` (what a run measured); `markdown` (the `BENCHMARKS.md`
//! section). This file runs the rounds.

mod args;
mod builtin;
mod control_plane;
mod load;
mod markdown;
mod options;
mod results;
mod vault_proxy;
mod wrk;

use std::collections::BTreeMap;

use anyhow::bail;
use keyward_tests::OpenBao;
use serde_json::json;

pub use args::Args;
pub use load::Generator;
pub use markdown::{SECTION, markdown};
pub use options::Options;
pub use results::{Backend, Measurement, RestReport, Target};
pub use wrk::wrk_version;

use crate::machine::{Load, Machine};
use control_plane::SeededControlPlane;
use load::{Request, load};
use vault_proxy::VaultProxy;

/// The path measured.
pub const PATH: &str = "/api/v1/tenant/infrastructure/ssh-credentials";
/// The OpenBao secret read for comparison (KV v2 at `vps`).
const BAO_SECRET: &str = "rest-bench";

/// Runs the benchmark. `progress` lines go to stderr.
pub async fn run(options: &Options) -> anyhow::Result<RestReport> {
    let wrk_version = wrk_version();
    if options.generator == Generator::Wrk && wrk_version.is_none() {
        bail!(wrk::MISSING);
    }
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut bao = OpenBao::start().await;
    let bao_version = crate::machine::bao_version().await;
    let proxy = VaultProxy::start(&bao.addr).await?;
    let mut keywards = Vec::new();
    for database in &options.backends {
        keywards.push(
            SeededControlPlane::start(Backend::from(*database), &proxy.addr, options.tenants)
                .await?,
        );
    }
    let document = keywards
        .first()
        .map_or_else(|| json!({"sshHost": "192.0.2.10"}), |k| k.body.clone());
    // The secret OpenBao serves: the same document keyward answers with.
    bao.root(
        reqwest::Method::POST,
        &format!("vps/data/{BAO_SECRET}"),
        Some(json!({ "data": document })),
    )
    .await;
    let bao_request = Request {
        url: format!("{}/v1/vps/data/{BAO_SECRET}", bao.addr),
        headers: vec![(
            "X-Vault-Token".into(),
            keyward_tests::openbao::ROOT_TOKEN.into(),
        )],
    };
    let mut body_bytes = BTreeMap::new();
    let bao_body = reqwest::Client::new()
        .get(&bao_request.url)
        .header("X-Vault-Token", keyward_tests::openbao::ROOT_TOKEN)
        .send()
        .await?
        .bytes()
        .await?;
    body_bytes.insert(Target::OpenBao, bao_body.len());
    for kw in &keywards {
        body_bytes.insert(Target::Keyward(kw.backend), kw.body.to_string().len());
    }

    let load_before = Load::now();
    let mut rounds = Vec::new();
    let mut vault_calls: BTreeMap<Backend, (u64, Vec<String>)> = BTreeMap::new();
    for round in 1..=options.rounds.max(1) {
        let mut results = BTreeMap::new();
        eprintln!("rest: round {round}: {}", Target::OpenBao.name());
        load(options, &bao_request, options.warmup_seconds).await?;
        if let Some(m) = load(options, &bao_request, options.seconds).await? {
            results.insert(Target::OpenBao, m);
        }
        for kw in &keywards {
            let target = Target::Keyward(kw.backend);
            eprintln!("rest: round {round}: {}", target.name());
            let request = Request {
                url: format!("{}{PATH}", kw.url),
                headers: vec![(
                    "Authorization".into(),
                    format!("Bearer {}", kw.tenant_token),
                )],
            };
            load(options, &request, options.warmup_seconds).await?;
            let before = proxy.count();
            if let Some(m) = load(options, &request, options.seconds).await? {
                results.insert(target, m);
            }
            let calls = proxy.since(before);
            let entry = vault_calls.entry(kw.backend).or_default();
            entry.0 += calls.len() as u64;
            for c in calls {
                if !entry.1.contains(&c) {
                    entry.1.push(c);
                }
            }
        }
        rounds.push(results);
    }
    let load_after = Load::now();
    for kw in keywards {
        kw.shutdown().await?;
    }
    drop(proxy);
    bao.stop().await;
    Ok(RestReport {
        options: options.clone(),
        started_at,
        machine: Machine::detect(),
        build: crate::machine::BUILD,
        bao_version,
        wrk_version,
        load_before,
        load_after,
        rounds,
        vault_calls_under_load: vault_calls,
        body_bytes,
    })
}
