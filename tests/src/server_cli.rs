//! The `keyward-server` program as an operator runs it (`check consistency`, `audit verify`, ...):
//! the binary `cargo build` made, a configuration file, its exit code and its JSON.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{OpenBao, workspace_root};

/// The control plane binary built by `cargo build` (`make test` builds it before the tests run),
/// or `KEYWARD_SERVER_BIN`.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYWARD_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug/keyward-server");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p keyward-server` first (`make test` does)",
        path.display()
    );
    path
}

/// Writes `dir/server.toml` (0600: it holds the Vault token; replaced if there), the least
/// configuration the commands need: the database, the Vault and its token, and a state directory
/// in `dir`.
pub fn write_config(dir: &Path, database_url: &str, bao: &OpenBao) -> PathBuf {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut vault = format!("address = {:?}\ntoken = {:?}\n", bao.addr, bao.root_token);
    if let Some(ca) = &bao.ca_file {
        vault.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
    }
    let text = format!(
        "[server]\nstate_dir = {:?}\n\n[database]\nurl = {database_url:?}\n\n[vault]\n{vault}",
        dir.join("state").display().to_string()
    );
    let path = dir.join("server.toml");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.write_all(text.as_bytes()).unwrap();
    path
}

/// What a command did: its exit code and its standard output read as JSON.
#[derive(Debug)]
pub struct CliAnswer {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

/// Runs `keyward-server --config CONFIG ARGS...` to its end.
pub async fn run(config: &Path, args: &[&str]) -> CliAnswer {
    let output = tokio::process::Command::new(server_binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    CliAnswer {
        code: output.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("keyward-server {args:?} printed no JSON ({e}): {stdout}\n{stderr}")
        }),
        stderr,
    }
}
