//! `keyward-demo RUN_DIR`: what `make quickstart` runs (`scripts/quickstart` builds it, starts
//! it in the background and prints the commands to try). It starts the demo deployment of
//! [`keyward_tests::demo`] with its files in RUN_DIR, writes `RUN_DIR/quickstart.env` once all
//! is up, and keeps it running until SIGTERM or SIGINT (`make stop`): then it stops what it
//! started. The demo users stay (`make clean-demo` removes them).
//!
//! Progress lines go to standard output; the control plane's log to standard error.

use std::path::PathBuf;
use std::process::ExitCode;

use keyward_tests::demo::{Demo, say, stop_signal};

#[tokio::main]
async fn main() -> ExitCode {
    let Some(run) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: keyward-demo RUN_DIR (make quickstart runs it)");
        return ExitCode::FAILURE;
    };
    keyward_server::telemetry::init();
    let demo = match Demo::start(&run).await {
        Ok(demo) => demo,
        Err(e) => {
            say(&format!("ERROR: {e:#}"));
            return ExitCode::FAILURE;
        }
    };
    stop_signal().await;
    say("stopping");
    demo.stop().await;
    ExitCode::SUCCESS
}
