//! A real `keyward-agent` process: enrolled against a control plane, run, killed, restarted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyward_common::UnixUser;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Child;

use crate::{ControlPlane, TestUser, eventually, workspace_root};

/// The agent binary built by `cargo build` (`make test` builds it before the tests run).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYWARD_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug/keyward-agent");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p keyward-agent` first (`make test` does)",
        path.display()
    );
    path
}

/// Where an agent keeps its configuration, its state and its log.
#[derive(Debug, Clone)]
pub struct AgentFiles {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl AgentFiles {
    /// `agent.toml`, `state/` and `agent.log` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join("agent.toml"),
            state_dir: dir.join("state"),
            log: dir.join("agent.log"),
        }
    }
}

/// An enrolled agent and its files.
#[derive(Debug)]
pub struct Agent {
    pub host_id: String,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// The directory of its files, when a temporary one of its own.
    _dir: Option<tempfile::TempDir>,
    /// The session recorder's wrapper and spool ([`Agent::record_sessions`]).
    _recording: Option<tempfile::TempDir>,
}

impl Agent {
    /// Registers a host for `tenant`, writes an agent configuration managing `admin`
    /// (exclusive) and `tenant_user` (preserve) into a temporary directory, enrolls with the
    /// one-time token and checks that the token does not work twice.
    pub async fn enroll(
        cp: &ControlPlane,
        tenant: &str,
        admin: &TestUser,
        tenant_user: &TestUser,
        sshd: &crate::Sshd,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = AgentFiles::in_dir(dir.path());
        let (mut agent, token) =
            Self::enroll_with(cp, tenant, &admin.name, &tenant_user.name, sshd, files).await;
        // The token works once.
        let again = tokio::process::Command::new(agent_binary())
            .args(["enroll", "--force", "--server", &cp.url, "--state-dir"])
            .arg(dir.path().join("other"))
            .env("KEYWARD_ENROLL_TOKEN", &token)
            .output()
            .await
            .unwrap();
        assert!(
            !again.status.success(),
            "a used enrollment token worked twice"
        );
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("enrollment_token_invalid"),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        agent._dir = Some(dir);
        agent
    }

    /// Registers a host for `tenant`, writes the agent configuration managing `admin`
    /// (exclusive) and `tenant_user` (preserve) to `files.config`, and enrolls with the
    /// one-time token; returns the agent (not running yet) and the token, now spent.
    pub async fn enroll_with(
        cp: &ControlPlane,
        tenant: &str,
        admin: &UnixUser,
        tenant_user: &UnixUser,
        sshd: &crate::Sshd,
        files: AgentFiles,
    ) -> (Self, String) {
        Self::enroll_as(cp, tenant, [admin, tenant_user], sshd, files, None).await
    }

    /// A bastion of `tenant` (registered with the role `bastion`): an agent managing `admin`
    /// and `tenant_user` as [`Agent::enroll`] does, and `jump` as its `[bastion] jump_user`
    /// (exclusive), enrolled, not running yet. Its files are in a temporary directory.
    pub async fn enroll_bastion(
        cp: &ControlPlane,
        tenant: &str,
        [admin, tenant_user]: [&UnixUser; 2],
        jump: &UnixUser,
        sshd: &crate::Sshd,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = AgentFiles::in_dir(dir.path());
        let (mut agent, _) =
            Self::enroll_as(cp, tenant, [admin, tenant_user], sshd, files, Some(jump)).await;
        agent._dir = Some(dir);
        agent
    }

    async fn enroll_as(
        cp: &ControlPlane,
        tenant: &str,
        [admin, tenant_user]: [&UnixUser; 2],
        sshd: &crate::Sshd,
        files: AgentFiles,
        jump: Option<&UnixUser>,
    ) -> (Self, String) {
        let role = if jump.is_some() { "bastion" } else { "vps" };
        let registered = cp
            .admin_post(
                "/api/v1/admin/hosts",
                json!({ "tenantId": tenant, "role": role }),
            )
            .await;
        assert_eq!(registered.status, 201, "{}", registered.text());
        let registered = registered.json();
        let token = registered["enrollmentToken"].as_str().unwrap().to_owned();
        let host_id = registered["hostId"].as_str().unwrap().to_owned();
        let bastion = jump.map_or(String::new(), |jump| {
            format!("\n[bastion]\njump_user = \"{jump}\"\n\n[[users]]\nname = \"{jump}\"\nmode = \"exclusive\"\n")
        });
        std::fs::write(
            &files.config,
            format!(
                "state_dir = \"{}\"\nhost_key_dir = \"{}\"\nsshd_dir = \"{}\"\n\n[[users]]\nname = \"{}\"\nmode = \"exclusive\"\n\n[[users]]\nname = \"{}\"\nmode = \"preserve\"\n\n[logins]\nsource = \"file\"\npath = \"{}\"\n{bastion}",
                files.state_dir.display(),
                sshd.host_key_dir.display(),
                sshd.files_dir.display(),
                admin,
                tenant_user,
                sshd.log.display()
            ),
        )
        .unwrap();
        let out = tokio::process::Command::new(agent_binary())
            .args([
                "enroll",
                "--server",
                &cp.url,
                "--config",
                files.config.to_str().unwrap(),
            ])
            .env("KEYWARD_ENROLL_TOKEN", &token)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "enrollment failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let agent = Self {
            host_id,
            config: files.config,
            state_dir: files.state_dir,
            log: files.log,
            child: None,
            _dir: None,
            _recording: None,
        };
        (agent, token)
    }

    /// Records sessions on this agent's host as the package sets it up: the package's wrapper
    /// installed root's, 0755, in a directory of its own under the sshd harness's root-only base
    /// (sshd runs it as the users), the spool beside it (the agent makes it `_tlog`'s), and
    /// `[recording]` added to the agent's configuration. Needs tlog set-user-ID to `_tlog`
    /// (`scripts/install-test-deps`). Call before [`Agent::start`]; returns the spool.
    pub fn record_sessions(&mut self) -> PathBuf {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        const TLOG: &str = "/usr/bin/tlog-rec-session";
        let meta = std::fs::metadata(TLOG).unwrap_or_else(|e| {
            panic!("{TLOG}: {e}: install Debian's tlog (bash scripts/install-test-deps)")
        });
        assert!(
            meta.mode() & 0o4000 != 0 && meta.uid() != 0,
            "{TLOG} must be set-user-ID to _tlog, as keyward-agent's package makes it: \
             bash scripts/install-test-deps"
        );
        let base = std::path::Path::new(keyward_test_support::sshd::SECURE_BASE);
        std::fs::create_dir_all(base).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("recording-")
            .tempdir_in(base)
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let wrapper = dir.path().join("record-session");
        std::fs::copy(
            workspace_root().join("packaging/keyward-record-session"),
            &wrapper,
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spool = dir.path().join("spool");
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(&format!(
            "\n[recording]\nwrapper = \"{}\"\nspool_dir = \"{}\"\n",
            wrapper.display(),
            spool.display()
        ));
        std::fs::write(&self.config, config).unwrap();
        self._recording = Some(dir);
        spool
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = tokio::process::Command::new(agent_binary())
            .args(["run", "--config", self.config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The running agent's process id (`None` when it is not running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The host as the admin API shows it.
    pub async fn view(&self, cp: &ControlPlane) -> Value {
        let reply = cp
            .request(
                Method::GET,
                &format!("/api/v1/admin/hosts/{}", self.host_id),
                Some(&cp.admin_token),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    /// Waits until the agent has applied the control plane's current generation.
    pub async fn wait_in_sync(&self, cp: &ControlPlane) -> Value {
        eventually(
            &format!(
                "host {} in sync; agent log:\n{}",
                self.host_id,
                self.log_text()
            ),
            Duration::from_secs(20),
            || async {
                let view = self.view(cp).await;
                (view["status"] == "in_sync" && view["connected"] == true).then_some(view)
            },
        )
        .await
    }
}
