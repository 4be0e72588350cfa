//! The OpenAPI document tells the truth: Schemathesis generates requests from
//! `/api/v1/openapi.json` (valid and invalid ones) and runs every check it has (`--checks all`)
//! against a real control plane over real OpenBao, once with an admin token and once with a
//! tenant token. Any 5xx, any answer the schema does not describe (status, content type, body,
//! headers), any invalid request accepted or valid one refused fails the test, which prints
//! Schemathesis's report.
//!
//! Bounded: a few examples per operation, a time budget per run and a wall-clock limit on the
//! process. `tests/schemathesis.toml` holds the run's settings and the few answers JSON Schema
//! cannot state, each with its reason.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use keyward_tests::{ControlPlane, Database, OpenBao, unique_tenant, workspace_root};
use serde_json::json;

const INSTALL_HINT: &str = "run `make test-deps` (installs Schemathesis from PyPI into .tools/venv), \
     or set KEYWARD_SCHEMATHESIS to a schemathesis binary";

/// Examples per operation and phase: enough for each parameter's boundaries and a few
/// random draws, small enough for two runs in about a minute on two cores.
const MAX_EXAMPLES: &str = "12";
/// Schemathesis's own budget for one run (it stops generating when spent).
const RUN_BUDGET_SECS: &str = "40";
/// The wall clock a run may take before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// `KEYWARD_SCHEMATHESIS`, or the project's `.tools/venv`: never skipped, a missing one fails.
fn schemathesis_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYWARD_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let local = workspace_root().join(".tools/venv/bin/schemathesis");
    if local.is_file() {
        return local;
    }
    keyward_tests::require_program("schemathesis", INSTALL_HINT)
}

/// One bounded Schemathesis run with `token`; panics with its report on any failure.
async fn fuzz(cp: &ControlPlane, who: &str, token: &str) {
    let bin = schemathesis_binary();
    let reports = tempfile::tempdir().unwrap();
    // A fixed seed makes a failure reproducible; KEYWARD_FUZZ_SEED explores other draws.
    let seed = std::env::var("KEYWARD_FUZZ_SEED").unwrap_or_else(|_| "13".to_owned());
    let started = Instant::now();
    let child = tokio::process::Command::new(&bin)
        .arg("--config-file")
        .arg(workspace_root().join("tests/schemathesis.toml"))
        .args(["--no-color", "run"])
        .arg(format!("{}/api/v1/openapi.json", cp.url))
        .args(["--checks", "all"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-time", RUN_BUDGET_SECS])
        .args(["--seed", &seed])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--report", "junit", "--report-dir"])
        .arg(reports.path())
        // Its caches (`.schemathesis/`) go to the temporary directory, not the work tree.
        .current_dir(reports.path())
        .env("HOME", reports.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", bin.display()));
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ({who}) ran past {RUN_LIMIT:?}: killed"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "schemathesis ({who}) took {:.1} s:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis ({who}) found failures ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // A run that tested nothing passes too: make sure it went through the API.
    assert!(
        stdout.contains("passed") && !stdout.contains("No operations"),
        "schemathesis ({who}) tested nothing:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn schemathesis_finds_no_answer_the_openapi_document_does_not_describe() {
    let bao = OpenBao::start().await;
    // Certificates are signed for real (what a deployment without a CA answers is a 503).
    bao.enable_ssh_ca().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("fuzz");
    cp.create_tenant(&tenant).await;
    let registered = cp
        .admin_post(
            "/api/v1/admin/hosts",
            json!({ "tenantId": tenant, "hostId": "fuzz-host" }),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.text());
    // The tenant's run first: a tenant token can revoke its key but no token. The admin run
    // may revoke tokens it finds (the tenant's, through the tenant's secrets, or its own, through
    // `whoami`): the API lets an admin do so. So it gets a token of its own, and the bootstrap
    // token checks the server afterwards.
    let tenant_token = cp.tenant_token(&tenant).await;
    fuzz(&cp, "tenant token", &tenant_token).await;
    let me = cp
        .request(
            reqwest::Method::GET,
            "/api/v1/whoami",
            Some(&tenant_token),
            None,
        )
        .await;
    assert_eq!(
        me.status,
        200,
        "the tenant token still works: {}",
        me.text()
    );
    assert_eq!(me.json()["tenantId"], tenant.as_str());

    let issued = cp
        .admin_post(
            "/api/v1/admin/tokens",
            json!({ "role": "admin", "label": "schemathesis" }),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let fuzz_admin = issued.json()["token"].as_str().unwrap().to_owned();
    fuzz(&cp, "admin token", &fuzz_admin).await;

    // The server is still whole after both runs.
    let tenants = cp.admin_get("/api/v1/admin/secrets/tenants").await;
    assert_eq!(tenants.status, 200, "{}", tenants.text());
    assert!(
        tenants
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tenantId"] == tenant.as_str()),
        "{}",
        tenants.text()
    );
    let ready = cp
        .request(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(ready.status, 200, "{}", ready.text());
}
