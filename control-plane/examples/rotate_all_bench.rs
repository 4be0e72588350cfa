//! rotate-all throughput against the pure key-generation rate on the same cores.
//!
//! ```sh
//! cargo run --release -p keyward-server --example rotate_all_bench -- [TENANTS]
//! ```
//!
//! Starts an OpenBao dev server (`KEYWARD_BAO`, `.tools/venv/bin/bao` or `bao` on PATH), onboards
//! TENANTS tenants (default 200; with Ed25519 keys, which is quick), then measures:
//!
//! 1. the pure rate: 2 × TENANTS RSA-4096 keys made by `GeneratedKey::generate` on one thread
//!    per core, nothing else;
//! 2. a bulk `ssh` rotation job over every tenant (both key sets, so 2 × TENANTS RSA-4096 keys, as
//!    the default policy says), through `BulkRotations` exactly as `POST rotate-all` runs it:
//!    generation, Vault check-and-set writes, SQL (SQLite) and the audit chain, the hub;
//! 3. bulk `smtp` and `dkim` jobs, for scale.
//!
//! and prints a Markdown table.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use keyward_common::{GeneratedKey, KeyAlgorithm};
use keyward_server::auth::Caller;
use keyward_server::clock::SystemClock;
use keyward_server::config::{KeysConfig, RotationConfig, VaultConfig};
use keyward_server::lifecycle::{KeyLifecycle, NewTenant};
use keyward_server::rotation::{BulkRotations, SecretType};
use keyward_server::store::Store;
use keyward_server::vault::VaultStore;
use tokio::process::Command;

const TOKEN: &str = "bench-root-token";

fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYWARD_BAO") {
        return PathBuf::from(path);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/bao");
    if local.is_file() {
        return local;
    }
    PathBuf::from("bao")
}

async fn start_openbao() -> (tokio::process::Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bao_binary())
        .args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .env_remove("VAULT_ADDR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run bao: run `make test-deps` or set KEYWARD_BAO");
    let addr = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..600 {
        let up = http.get(format!("{addr}/v1/sys/health")).send().await;
        if up.is_ok_and(|r| r.status().is_success()) {
            let mounted = http
                .post(format!("{addr}/v1/sys/mounts/vps"))
                .header("X-Vault-Token", TOKEN)
                .json(&serde_json::json!({ "type": "kv", "options": { "version": "2" } }))
                .send()
                .await
                .unwrap();
            assert!(mounted.status().is_success());
            return (child, addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("OpenBao did not start");
}

/// `count` RSA-4096 keys on `threads` threads: keys per second.
fn pure_rate(count: usize, threads: usize) -> (Duration, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    GeneratedKey::generate(KeyAlgorithm::Rsa4096, "bench").unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let took = started.elapsed();
    (took, count as f64 / took.as_secs_f64())
}

async fn bulk(rotations: &Arc<BulkRotations>, secret_type: SecretType) -> (Duration, i64, i64) {
    let started = Instant::now();
    let mut progress = rotations
        .start(&Caller::system(), secret_type)
        .await
        .unwrap();
    let done = progress
        .wait_for(|s| !s.running())
        .await
        .unwrap()
        .job
        .clone();
    (started.elapsed(), done.rotated, done.failed)
}

#[tokio::main]
async fn main() {
    let tenants: usize = std::env::args()
        .nth(1)
        .map_or(200, |n| n.parse().expect("TENANTS is a number"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (_bao, addr) = start_openbao().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(
        &format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
        None,
    )
    .await
    .unwrap();
    let vault = VaultStore::connect(&VaultConfig {
        address: addr,
        token: Some(TOKEN.into()),
        ..VaultConfig::default()
    })
    .await
    .unwrap();

    // Onboarding with Ed25519 keys; the rotations then follow the RSA-4096 default policy.
    let onboarding = Arc::new(KeyLifecycle::new(
        vault.clone(),
        store.clone(),
        Arc::new(SystemClock),
        KeysConfig {
            algorithm: KeyAlgorithm::Ed25519,
            ..KeysConfig::default()
        },
    ));
    let started = Instant::now();
    let created: Vec<_> = futures::stream::iter(0..tenants)
        .map(|i| {
            let lifecycle = onboarding.clone();
            async move {
                let new = NewTenant {
                    tenant_id: format!("bench-{i:04}").parse().unwrap(),
                    vps_ip: "192.0.2.10".into(),
                    ssh_port: 22,
                    tenant_user: "tenant".parse().unwrap(),
                    admin_user: "kwadmin".parse().unwrap(),
                };
                lifecycle.create_tenant(&Caller::system(), new).await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(created.iter().all(Result::is_ok));
    println!(
        "onboarded {tenants} tenants in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let lifecycle = Arc::new(KeyLifecycle::new(
        vault,
        store,
        Arc::new(SystemClock),
        KeysConfig::default(),
    ));
    let rotations = Arc::new(BulkRotations::new(lifecycle, &RotationConfig::default()));

    let keys = 2 * tenants;
    let (pure_took, pure) = tokio::task::spawn_blocking(move || pure_rate(keys, cores))
        .await
        .unwrap();
    let (ssh_took, rotated, failed) = bulk(&rotations, SecretType::Ssh).await;
    assert_eq!((rotated, failed), (tenants as i64, 0));
    let ssh = keys as f64 / ssh_took.as_secs_f64();
    let (smtp_took, ..) = bulk(&rotations, SecretType::Smtp).await;
    let (dkim_took, ..) = bulk(&rotations, SecretType::Dkim).await;

    println!();
    println!("| measurement ({cores} cores, {tenants} tenants) | time | rate |");
    println!("|---|---:|---:|");
    println!(
        "| pure RSA-4096 generation, {keys} keys, {cores} threads | {:.1} s | {pure:.2} keys/s |",
        pure_took.as_secs_f64()
    );
    println!(
        "| rotate-all `ssh`, {keys} RSA-4096 key sets | {:.1} s | {ssh:.2} keys/s ({:.2} tenants/s) |",
        ssh_took.as_secs_f64(),
        tenants as f64 / ssh_took.as_secs_f64()
    );
    println!(
        "| rotate-all `smtp` | {:.2} s | {:.0} tenants/s |",
        smtp_took.as_secs_f64(),
        tenants as f64 / smtp_took.as_secs_f64()
    );
    println!(
        "| rotate-all `dkim` (RSA-2048) | {:.1} s | {:.1} tenants/s |",
        dkim_took.as_secs_f64(),
        tenants as f64 / dkim_took.as_secs_f64()
    );
    println!();
    println!(
        "rotate-all ssh reaches {:.0} % of the pure key-generation rate",
        100.0 * ssh / pure
    );
}
