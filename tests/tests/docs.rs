//! The reference pages in `docs/` against the code: every route of the OpenAPI document is in
//! `API.md` and every `/api/v1/...` path `API.md` names is a route; every setting of both
//! programs is in `CONFIGURATION.md` and every setting it names exists; every metric the code
//! records is in `OPERATIONS.md` and every metric it names is recorded; every test `COMPLIANCE.md`
//! names as evidence exists. So the pages cannot drift.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use utoipa::OpenApi;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of `## {title}` up to the next `## ` heading.
fn section<'a>(page: &'a str, title: &str) -> &'a str {
    let start = page
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section `## {title}`"));
    let rest = &page[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The first column of every Markdown table row whose first cell is code: `| `key` | ...`.
fn table_keys(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|cell| cell.split(" | ").next())
        .filter(|cell| cell.starts_with('`'))
        .map(|cell| cell.replace("`[[users]]` `", "users.").replace('`', ""))
        .collect()
}

fn assert_same(what: &str, documented: &BTreeSet<String>, real: &BTreeSet<String>) {
    let undocumented: Vec<_> = real.difference(documented).collect();
    let unknown: Vec<_> = documented.difference(real).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "{what}: exist but are not documented: {undocumented:?}; documented but do not exist: \
         {unknown:?}"
    );
}

// --- routes -----------------------------------------------------------------------------------

/// Whether a documented path (`$HOST_ID`, `{admin|tenant}` and the like stand for one segment)
/// names this OpenAPI route (`{host_id}` matches any one segment).
fn path_matches(route: &str, documented: &str) -> bool {
    let route: Vec<&str> = route.trim_matches('/').split('/').collect();
    let documented: Vec<&str> = documented.trim_matches('/').split('/').collect();
    route.len() == documented.len()
        && route.iter().zip(&documented).all(|(r, d)| {
            let placeholder = |s: &str| s.starts_with('{') || s.starts_with('$');
            r == d || placeholder(r) || placeholder(d)
        })
}

/// Every `/api/v1/...` path in the text, without its query string.
fn documented_paths(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("/api/v1/") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "/_-{}|$.".contains(c)))
            .unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches(['.', '/']);
        paths.insert(path.to_owned());
        rest = &tail[end..];
    }
    paths
}

#[test]
fn every_route_is_in_api_md_and_every_path_it_names_is_a_route() {
    let document = keyward_server::api::ApiDoc::openapi();
    let routes: Vec<String> = document.paths.paths.keys().cloned().collect();
    assert!(routes.len() > 20, "the OpenAPI document lists the routes");
    let page = read("docs/API.md");
    let documented = documented_paths(&page);
    // Routes outside /api/v1 (`/healthz`, `/readyz`) are named as they are.
    let undocumented: Vec<&String> = routes
        .iter()
        .filter(|route| {
            !documented.iter().any(|d| path_matches(route, d))
                && (route.starts_with("/api/v1/") || !page.contains(route.as_str()))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/API.md: {undocumented:?}"
    );
    // The document itself is served beside the routes it lists.
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|d| d.as_str() != "/api/v1/openapi.json")
        .filter(|d| !routes.iter().any(|route| path_matches(route, d)))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/API.md names paths that are not routes: {unknown:?}"
    );
}

// --- settings ---------------------------------------------------------------------------------

/// Dotted keys of every leaf (objects are walked; anything else, null included, is a leaf).
fn leaf_keys(prefix: &str, value: &Value, keys: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(&key, value, keys);
            }
        }
        _ => {
            keys.insert(prefix.to_owned());
        }
    }
}

#[test]
fn every_server_setting_is_in_configuration_md_and_no_other() {
    let mut config = serde_json::to_value(keyward_server::config::Config::default())
        .expect("the configuration serialises");
    // `[vault.approle]` is optional, so the default has none: its keys come from a full one.
    config["vault"]["approle"] = serde_json::json!({
        "mount": "approle", "role_id": "r", "secret_id_file": "/s"
    });
    let mut real = BTreeSet::new();
    leaf_keys("", &config, &mut real);
    let page = read("docs/CONFIGURATION.md");
    let documented = table_keys(section(&page, "keyward-server"));
    assert_same(
        "keyward-server settings (docs/CONFIGURATION.md)",
        &documented,
        &real,
    );
}

/// The fields a table of the agent's configuration takes, as its parser names them when it
/// refuses an unknown one (`unknown field `x`, expected one of `a`, `b``).
fn agent_fields(toml: &str) -> BTreeSet<String> {
    let error =
        keyward_agent::config::AgentConfig::parse(toml).expect_err("an unknown field is refused");
    let expected = error
        .split("expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("the refusal names the fields: {error}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_agent_setting_is_in_configuration_md_and_no_other() {
    let users = "[[users]]\nname = \"u\"\nmode = \"exclusive\"\n";
    let mut real = BTreeSet::new();
    for field in agent_fields(&format!("zz_unknown = 1\n{users}")) {
        // The tables are walked below; `users` is documented by its fields.
        if !["users", "logins", "preserve", "bastion", "recording"].contains(&field.as_str()) {
            real.insert(field);
        }
    }
    for table in ["logins", "preserve", "bastion", "recording"] {
        for field in agent_fields(&format!("{users}[{table}]\nzz_unknown = 1\n")) {
            real.insert(format!("{table}.{field}"));
        }
    }
    for field in agent_fields("[[users]]\nname = \"u\"\nmode = \"exclusive\"\nzz_unknown = 1\n") {
        real.insert(format!("users.{field}"));
    }
    let page = read("docs/CONFIGURATION.md");
    let documented = table_keys(section(&page, "keyward-agent"));
    assert_same(
        "keyward-agent settings (docs/CONFIGURATION.md)",
        &documented,
        &real,
    );
}

// --- metrics ----------------------------------------------------------------------------------

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The names the code records: the first argument of `metrics::counter!`, `gauge!` and
/// `histogram!`.
fn recorded_metrics() -> BTreeSet<String> {
    let mut files = Vec::new();
    for crate_dir in ["control-plane/src", "agent/src", "common/src"] {
        rust_files(&repo().join(crate_dir), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(&format!("metrics::{macro_name}")) {
                let args = text[at + "metrics::".len() + macro_name.len()..].trim_start();
                let name = args
                    .strip_prefix('"')
                    .and_then(|a| a.split('"').next())
                    .unwrap_or_else(|| {
                        panic!("{}: a metric whose name is not a literal", file.display())
                    });
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[test]
fn every_metric_is_in_operations_md_and_no_other() {
    let real = recorded_metrics();
    assert!(real.contains("keyward_http_requests_total"), "{real:?}");
    let page = read("docs/OPERATIONS.md");
    let documented = table_keys(section(&page, "Metrics"));
    assert_same("metrics (docs/OPERATIONS.md)", &documented, &real);
}

#[test]
fn the_readme_stays_a_front_door() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines: reference belongs in docs/"
    );
}

#[test]
fn the_helpers_read_what_they_should() {
    assert!(path_matches(
        "/api/v1/admin/hosts/{host_id}",
        "/api/v1/admin/hosts/$HOST_ID"
    ));
    assert!(!path_matches(
        "/api/v1/admin/hosts/{host_id}",
        "/api/v1/admin/hosts"
    ));
    assert_eq!(
        documented_paths("curl $KW/api/v1/admin/hosts?limit=2; see `/api/v1/whoami`."),
        BTreeSet::from([
            "/api/v1/admin/hosts".to_owned(),
            "/api/v1/whoami".to_owned()
        ])
    );
    assert_eq!(
        table_keys("| key | x |\n|---|---|\n| `a.b` | 1 |\n| `[[users]]` `name` | r |\n"),
        BTreeSet::from(["a.b".to_owned(), "users.name".to_owned()])
    );
}

// --- compliance evidence ----------------------------------------------------------------------

/// Every inline-code span of the page of the form `path/to/file.rs::test_name` (a relative path,
/// two colons, an identifier), as (path, name), in the order they appear.
fn test_references(page: &str) -> Vec<(String, String)> {
    let identifier = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    page.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|code| code.split_once(".rs::"))
        .filter(|(path, name)| {
            !path.is_empty()
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
                && identifier(name)
        })
        .map(|(path, name)| (format!("{path}.rs"), name.to_owned()))
        .collect()
}

/// Whether the source declares `fn {name}(` as a test: `#[test]` or `#[tokio::test...]` among
/// the attributes and comments right above it (up to the end of the item before).
fn declares_test(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    let declaration = format!("fn {name}(");
    lines.iter().enumerate().any(|(at, line)| {
        let line = line.trim_start();
        let line = line.strip_prefix("pub ").unwrap_or(line);
        let line = line.strip_prefix("async ").unwrap_or(line);
        line.starts_with(&declaration)
            && lines[..at]
                .iter()
                .rev()
                .take(12)
                .map(|above| above.trim())
                .take_while(|above| {
                    above.starts_with("//") || !(above.ends_with('}') || above.ends_with(';'))
                })
                .any(|above| above.starts_with("#[test]") || above.starts_with("#[tokio::test"))
    })
}

#[test]
fn every_test_compliance_md_names_exists() {
    // The helpers first, on text made for them.
    assert_eq!(
        test_references("see `a/b.rs::c_1`, `x.rs::` `a b.rs::c` `/etc/x.rs::y z` and `t.rs::d`"),
        vec![
            ("a/b.rs".to_owned(), "c_1".to_owned()),
            ("t.rs".to_owned(), "d".to_owned())
        ]
    );
    let source = "#[test]\nfn a() {}\n\n#[tokio::test(flavor = \"multi_thread\")]\n\
                  /// doc\nasync fn b() {}\nfn c() {}\n#[test]\nfn d() {}\nfn helper() {}\n";
    assert!(declares_test(source, "a") && declares_test(source, "b"));
    assert!(!declares_test(source, "c") && !declares_test(source, "helper"));
    assert!(!declares_test(source, "e"));

    let page = read("docs/COMPLIANCE.md");
    let references = test_references(&page);
    let distinct: BTreeSet<&(String, String)> = references.iter().collect();
    assert!(
        distinct.len() >= 20,
        "docs/COMPLIANCE.md names {} tests: it should name the tests that prove each control",
        distinct.len()
    );
    let missing: Vec<String> = distinct
        .into_iter()
        .filter_map(|(path, name)| {
            if path.starts_with('/') || path.split('/').any(|part| part == "..") {
                return Some(format!("{path}::{name} (not a path in the repository)"));
            }
            match std::fs::read_to_string(repo().join(path)) {
                Err(e) => Some(format!("{path}::{name} (no such file: {e})")),
                Ok(source) if !declares_test(&source, name) => Some(format!(
                    "{path}::{name} (no test function of that name in the file)"
                )),
                Ok(_) => None,
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/COMPLIANCE.md names {} tests that do not exist:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}
