//! A real headless browser: Debian's Chromium driven over WebDriver by its own chromedriver, for
//! the web UI's tests. `scripts/install-test-deps` installs both (`chromium`, `chromium-driver`).
//!
//! Each [`Browser`] has its own chromedriver on a free loopback port, its own profile and its own
//! download directory. Screenshots go to `target/ui-screenshots/` (kept as test artifacts).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::{eventually, require_program, workspace_root};

const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL: &str = "run scripts/install-test-deps (apt-get install chromium chromium-driver)";
/// How long a page gets to show what a test waits for.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    port: u16,
    downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of 1280 × 900 CSS pixels.
    pub async fn start() -> Self {
        let chromedriver = require_program("chromedriver", INSTALL);
        assert!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} is not installed: {INSTALL}"
        );
        let downloads = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver_log = profile.path().join("chromedriver.log");
        let mut command = tokio::process::Command::new(chromedriver);
        command
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", driver_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group: dropping the browser ends Chromium's processes too.
            .process_group(0);
        let driver = command.spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually(
            "chromedriver to answer /status",
            Duration::from_secs(20),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let reply = http.get(format!("{url}/status")).send().await.ok()?;
                    let status: Value = reply.json().await.ok()?;
                    status["value"]["ready"].as_bool().filter(|r| *r)
                }
            },
        )
        .await;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // The tests run as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--disable-sync",
                    "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start Chromium: {e}\n{}",
                    std::fs::read_to_string(&driver_log).unwrap_or_default()
                )
            });
        Self {
            client,
            driver,
            port,
            downloads,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Waits until `css` matches an element whose text satisfies `check`; returns the text.
    /// On time-out the failure shows the text last seen and the page's console errors.
    pub async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + PAGE_WAIT;
        let mut last = None;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if check(&text) {
                    return text;
                }
                last = Some(text);
            }
            if std::time::Instant::now() > deadline {
                let errors = self.console_errors().await;
                panic!(
                    "timed out after {PAGE_WAIT:?} waiting for {what} ({css}); last text: {last:?}; console errors: {errors:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css` matches an element and returns its text.
    pub async fn text(&self, css: &str) -> String {
        self.wait_text(css, "an element", |_| true).await
    }

    /// Waits until `css` matches something.
    pub async fn wait_for(&self, css: &str, what: &str) {
        eventually(&format!("{what} ({css})"), PAGE_WAIT, || async {
            self.client.find(Locator::Css(css)).await.ok().map(|_| ())
        })
        .await;
    }

    /// Waits until `css` matches an enabled element, and clicks it.
    pub async fn click(&self, css: &str) {
        let element = eventually(&format!("{css} to be clickable"), PAGE_WAIT, || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            let enabled = element.is_enabled().await.ok()?;
            let shown = element.is_displayed().await.ok()?;
            (enabled && shown).then_some(element)
        })
        .await;
        element.click().await.unwrap();
    }

    /// Types into the field `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.wait_for(css, "a field").await;
        let element = self.client.find(Locator::Css(css)).await.unwrap();
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Presses a key in the element that has the keyboard focus.
    pub async fn press(&self, key: fantoccini::key::Key) {
        let focused = self.client.active_element().await.unwrap();
        focused
            .send_keys(&char::from(key).to_string())
            .await
            .unwrap();
    }

    /// The id of the element that has the keyboard focus.
    pub async fn focused_id(&self) -> String {
        self.script("return document.activeElement && document.activeElement.id")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// An attribute of the first element matching `css`.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.attr(name).await.ok().flatten()
    }

    /// Runs a script in the page and returns what it returns.
    pub async fn script(&self, js: &str) -> Value {
        self.client.execute(js, vec![]).await.unwrap()
    }

    /// Sets the window's size in CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    /// Saves a PNG of the window as `target/ui-screenshots/{name}.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = workspace_root().join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Waits for a finished download named `name` (Chromium writes `.crdownload` until then).
    pub async fn downloaded(&self, name: &str) -> PathBuf {
        let path = self.downloads.path().join(name);
        let partial = self.downloads.path().join(format!("{name}.crdownload"));
        eventually(&format!("the download {name}"), PAGE_WAIT, || async {
            (path.is_file() && !partial.exists()).then_some(())
        })
        .await;
        path
    }

    /// The files in the download directory.
    pub fn downloads(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.downloads.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The page's console messages at level SEVERE since the last call (script errors, refused
    /// loads, Content-Security-Policy violations).
    pub async fn console_errors(&self) -> Vec<String> {
        let session = self.client.session_id().await.unwrap().unwrap();
        let port = self.port;
        let reply: Value = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/session/{session}/se/log"))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs axe-core's WCAG 2 A and AA rules (labels, accessible names, contrast, landmarks,
    /// ARIA) on the page as it is now; returns one line per violation.
    pub async fn accessibility_violations(&self) -> Vec<String> {
        let axe = workspace_root().join(".tools/axe/node_modules/axe-core/axe.min.js");
        let source = std::fs::read_to_string(&axe).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run scripts/install-test-deps",
                axe.display()
            )
        });
        // WebDriver's scripts run outside the page's Content-Security-Policy.
        self.client.execute(&source, vec![]).await.unwrap();
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];\
                 axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } })\
                   .then(r => done(r.violations.map(v => `${v.id} (${v.impact}): ${v.help}: ` +\
                     v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '))))\
                   .catch(e => done([`axe failed: ${e}`]));",
                vec![],
            )
            .await
            .unwrap();
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Plugs a virtual security key into the browser (WebDriver's WebAuthn extension): CTAP2
    /// over USB, with resident keys and a PIN that is always given. Its id, to remove it.
    pub async fn add_virtual_authenticator(&self) -> String {
        let answer = self
            .client
            .issue_cmd(VirtualAuthenticator::Add)
            .await
            .expect("chromedriver adds a virtual authenticator");
        answer
            .as_str()
            .unwrap_or_else(|| panic!("no authenticator id in {answer}"))
            .to_owned()
    }

    /// Unplugs the virtual security key `id`.
    pub async fn remove_virtual_authenticator(&self, id: &str) {
        self.client
            .issue_cmd(VirtualAuthenticator::Remove(id.to_owned()))
            .await
            .expect("chromedriver removes the virtual authenticator");
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.stop_driver();
    }

    fn stop_driver(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid.cast_signed()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop_driver();
    }
}

/// WebDriver's WebAuthn extension (Web Authentication, "Automation"), which fantoccini has no
/// command of its own for.
#[derive(Debug)]
enum VirtualAuthenticator {
    Add,
    Remove(String),
}

impl fantoccini::wd::WebDriverCompatibleCommand for VirtualAuthenticator {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session_id.unwrap_or_default();
        match self {
            Self::Add => base_url.join(&format!("session/{session}/webauthn/authenticator")),
            Self::Remove(id) => {
                base_url.join(&format!("session/{session}/webauthn/authenticator/{id}"))
            }
        }
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        match self {
            Self::Add => (
                http::Method::POST,
                Some(
                    json!({
                        "protocol": "ctap2",
                        "transport": "usb",
                        "hasResidentKey": true,
                        "hasUserVerification": true,
                        "isUserVerified": true,
                    })
                    .to_string(),
                ),
            ),
            Self::Remove(_) => (http::Method::DELETE, None),
        }
    }
}
