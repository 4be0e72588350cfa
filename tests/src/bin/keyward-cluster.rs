//! `keyward-cluster RUN_DIR`: what `make cluster` runs (`scripts/cluster` builds it and starts it
//! in the background). It starts [`keyward_tests::cluster::Cluster`] (three OpenBao raft nodes,
//! three keyward-server replicas on PostgreSQL, haproxy in front), writes `RUN_DIR/cluster.env`
//! (0600: it holds the admin and Vault root tokens) once all is up, and keeps it running until
//! SIGTERM or SIGINT (`make cluster-stop`). Nothing is kept: the OpenBao nodes' data and the
//! PostgreSQL schema go with it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::process::ExitCode;

use keyward_tests::cluster::Cluster;
use keyward_tests::demo::stop_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(run) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: keyward-cluster RUN_DIR (make cluster runs it)");
        return ExitCode::FAILURE;
    };
    keyward_server::telemetry::init();
    say("starting three OpenBao raft nodes, three keyward-server replicas and haproxy");
    let cluster = Cluster::start().await;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(run.join("cluster.env"))
        .and_then(|mut f| f.write_all(cluster.env().as_bytes()));
    if let Err(e) = written {
        say(&format!(
            "ERROR: cannot write {}: {e}",
            run.join("cluster.env").display()
        ));
        cluster.stop().await;
        return ExitCode::FAILURE;
    }
    say("ready");
    stop_signal().await;
    say("stopping");
    cluster.stop().await;
    ExitCode::SUCCESS
}

/// A progress line for the person running `make cluster` (scripts/cluster shows them).
#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("[cluster] {line}");
}
