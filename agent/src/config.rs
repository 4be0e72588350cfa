//! The agent's configuration file (`/etc/keyward/agent.toml`).
//!
//! The `[[users]]` list is a local allow-list: the agent writes only these users' files, with
//! the mode configured here, whatever a signed state says. A compromised control plane can then
//! change the keys of the platform's own users but never, say, root's.
//!
//! ```toml
//! state_dir = "/var/lib/keyward-agent"
//!
//! [[users]]
//! name = "kwadmin"
//! mode = "exclusive"
//!
//! [[users]]
//! name = "tenant"
//! mode = "preserve"
//!
//! # How much of a preserve-mode user's own file is kept line by line (the defaults)
//! [preserve]
//! max_bytes = 1048576
//! max_lines = 10000
//!
//! # SSH login audit (the default: the systemd journal)
//! [logins]
//! source = "journald"          # "journald" (agents built with the `journald` feature, the
//!                              # default build), "file" or "off"
//! path = "/var/log/auth.log"   # the file source's log
//! spool_max_events = 10000     # events kept on disk while the control plane is unreachable
//! # What counts as sshd: the executables (`/proc/PID/exe`, journald's `_EXE`) and, for
//! # journald records that name one, the systemd units (`*` matches any text).
//! sshd_executables = ["/usr/sbin/sshd", "/usr/lib/openssh/sshd-session"]
//! sshd_units = ["ssh.service", "sshd.service", "ssh@*.service", "sshd@*.service"]
//!
//! # Only on a bastion (jump host): the user tenants' certificates log in as to jump
//! # (`ssh -J`), each only to its tenant's VPSs. It must be in [[users]], mode = "exclusive".
//! [bastion]
//! jump_user = "jump"
//! ```
//!
//! The `[bastion]` table makes the agent a bastion's: the state may then give its jump user
//! jump principals, each written into the user's principals file as a line that allows only
//! forwarding to that principal's destinations (no shell, no command; see
//! [`crate::writer::sshd_files`]). Any other agent, and any other user, refuses them. The jump
//! user must be an exclusive-mode user: it logs in by certificate only, and a preserve-mode file
//! would keep keys of the user's own that could open a shell.
//!
//! Which source to trust: only the journal can say who wrote a line. journald records the
//! sender's uid, process name and executable itself (`_UID`, `_COMM`, `_EXE`, `_SYSTEMD_UNIT`),
//! and the agent takes only records whose fields are sshd's. A log file can not: `sshd -E` writes
//! what unauthenticated clients send (a key-exchange offer with newlines in it becomes lines of
//! its own) and `/var/log/auth.log` takes any local user's `logger -t sshd`. So from a file only
//! an accepted login that a live connection of the real sshd corroborates when it is read is
//! *verified* (see [`crate::logins::audit`]); everything else is sent as unverified and never
//! keeps a session.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use keyward_common::UnixUser;

use crate::writer::PreserveLimits;
use serde::Deserialize;

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/keyward/agent.toml";
/// Where the agent keeps its key, certificates and the cached state by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/keyward-agent";
/// Where sshd's host keys are read from by default.
pub const DEFAULT_HOST_KEY_DIR: &str = "/etc/ssh";
/// Where sshd's certificate trust and revocation files are written by default (the package's
/// sshd drop-in names the files in it).
pub const DEFAULT_SSHD_DIR: &str = "/etc/ssh/keyward";
/// The log file the login audit reads by default (rsyslog's, on Debian).
pub const DEFAULT_LOGIN_LOG: &str = "/var/log/auth.log";
/// The executables that are sshd by default: Debian's sshd and, from OpenSSH 9.8, its
/// per-connection `sshd-session`.
pub const DEFAULT_SSHD_EXECUTABLES: [&str; 2] = ["/usr/sbin/sshd", "/usr/lib/openssh/sshd-session"];
/// The systemd units sshd runs in by default (Debian's `ssh.service`, other distributions'
/// `sshd.service`, and the per-connection instances of socket activation).
pub const DEFAULT_SSHD_UNITS: [&str; 4] = [
    "ssh.service",
    "sshd.service",
    "ssh@*.service",
    "sshd@*.service",
];
/// Login events kept on disk by default while they wait for the control plane.
pub const DEFAULT_SPOOL_MAX_EVENTS: usize = 10_000;
/// The largest spool allowed (about 2 MB per 10,000 events, rewritten whole on every change).
pub const MAX_SPOOL_MAX_EVENTS: usize = 1_000_000;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is the error's source: printing it here too would say it twice.
    #[error("cannot read the configuration {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// How a user's `authorized_keys` is written: the same modes the control plane names.
pub use keyward_common::authorized_keys::Mode as UserMode;

/// One user this agent may manage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: UnixUser,
    pub mode: UserMode,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Key, certificates, pinned signing key and the cached state (0700, files 0600).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The only users this agent writes, each with its mode.
    pub users: Vec<UserConfig>,
    /// Overrides the gRPC URL the control plane gave at enrollment (e.g. behind a new balancer).
    #[serde(default)]
    pub grpc_url: Option<String>,
    /// Several endpoints of the control plane (one per replica): the agent goes round them in
    /// a random order of its own, starting at the first and failing over to the next
    /// (`endpoints`). Instead of `grpc_url`, not with it.
    #[serde(default)]
    pub grpc_urls: Vec<String>,
    /// Where `ssh_host_*_key.pub` are read from.
    #[serde(default = "default_host_key_dir")]
    pub host_key_dir: PathBuf,
    /// Where sshd's certificate trust and revocation files are written: `trusted_user_ca_keys`,
    /// `revoked_keys`, `principals/USER` (root's directory, 0755; made when missing).
    #[serde(default = "default_sshd_dir")]
    pub sshd_dir: PathBuf,
    /// The SSH login audit (`[logins]`).
    #[serde(default)]
    pub logins: LoginsConfig,
    /// `[preserve]`: how much of a preserve-mode user's own file is kept line by line
    /// (`max_bytes`, default 1 MiB; `max_lines`, default 10,000). A larger file is moved to
    /// `~/.ssh/authorized_keys.keyward-oversized` unread and reported.
    #[serde(default)]
    pub preserve: PreserveLimits,
    /// `[bastion]`: present on a bastion (jump host) only.
    #[serde(default)]
    pub bastion: Option<BastionConfig>,
    /// `[recording]`: SSH session recording with tlog. Absent: no session is recorded, whatever
    /// the state asks, and the control plane shows the host as not recording.
    #[serde(default)]
    pub recording: Option<RecordingConfig>,
}

/// `[recording]`: session recording ([`crate::recordings`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// The wrapper sshd runs for a recorded user's sessions (`command="WRAPPER output|input
    /// SPOOL"` on the key and principal lines the agent writes): root's, not writable by others.
    #[serde(default = "default_recording_wrapper")]
    pub wrapper: PathBuf,
    /// Where tlog writes the recordings: the recorder's user's directory, 0700 (made when
    /// missing). The agent reads, ships and deletes them.
    #[serde(default = "default_recording_spool")]
    pub spool_dir: PathBuf,
    /// The user `tlog-rec-session` is set-user-ID to (Debian's `_tlog`).
    #[serde(default = "default_recorder_user")]
    pub recorder_user: String,
    /// Bytes of recordings kept on disk while the control plane has not taken them; past this
    /// the newest data is dropped, and the recordings it belonged to say so.
    #[serde(default = "default_recording_spool_max_bytes")]
    pub spool_max_bytes: u64,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            wrapper: default_recording_wrapper(),
            spool_dir: default_recording_spool(),
            recorder_user: default_recorder_user(),
            spool_max_bytes: default_recording_spool_max_bytes(),
        }
    }
}

impl RecordingConfig {
    fn validate(&self) -> Result<(), String> {
        for (name, path) in [("wrapper", &self.wrapper), ("spool_dir", &self.spool_dir)] {
            if command_word(path).is_none() {
                return Err(format!(
                    "[recording] {name} must be an absolute path of letters, digits, '/', '.', \
                     '_' and '-' only (it is written into sshd's key options)"
                ));
            }
        }
        if self.spool_max_bytes < 1 << 20 {
            return Err("[recording] spool_max_bytes must be at least 1 MiB".into());
        }
        Ok(())
    }
}

/// `path` as one word of a forced command: absolute, `[A-Za-z0-9/._-]` only, no `..`.
pub fn command_word(path: &Path) -> Option<&str> {
    let text = path.to_str()?;
    let plain = text.starts_with('/')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
        && !text.split('/').any(|part| part == "..");
    plain.then_some(text)
}

fn default_recording_wrapper() -> PathBuf {
    PathBuf::from("/usr/lib/keyward-agent/record-session")
}

fn default_recording_spool() -> PathBuf {
    PathBuf::from("/var/spool/keyward-agent/recordings")
}

fn default_recorder_user() -> String {
    "_tlog".to_owned()
}

fn default_recording_spool_max_bytes() -> u64 {
    1 << 30
}

/// `[bastion]`: this agent runs on a bastion.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BastionConfig {
    /// The user tenants' certificates jump as: the only user that may have jump principals. One
    /// of `[[users]]`, in exclusive mode.
    pub jump_user: UnixUser,
}

/// Where sshd's log is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginSource {
    /// A log file followed across rotation: `/var/log/auth.log`, or `sshd -E`'s file.
    File,
    /// The systemd journal (agents built with the `journald` cargo feature).
    Journald,
    /// No login audit. Revocation then ends all of a user's sessions (nothing is attributed).
    Off,
}

/// `[logins]`: the SSH login audit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginsConfig {
    #[serde(default = "default_login_source")]
    pub source: LoginSource,
    /// The log file, for `source = "file"`.
    #[serde(default = "default_login_log")]
    pub path: PathBuf,
    /// Events kept on disk for the control plane; past this the oldest are dropped and counted.
    #[serde(default = "default_spool_max_events")]
    pub spool_max_events: usize,
    /// The sshd executables: a process is sshd only when its `/proc/PID/exe` (or a journal
    /// record's `_EXE`) is one of these, whatever its name, title or owner.
    #[serde(default = "default_sshd_executables")]
    pub sshd_executables: Vec<PathBuf>,
    /// The systemd units a journal record of sshd may come from when it names one
    /// (`_SYSTEMD_UNIT`); `*` matches any text.
    #[serde(default = "default_sshd_units")]
    pub sshd_units: Vec<String>,
}

impl Default for LoginsConfig {
    fn default() -> Self {
        Self {
            source: default_login_source(),
            path: default_login_log(),
            spool_max_events: default_spool_max_events(),
            sshd_executables: default_sshd_executables(),
            sshd_units: default_sshd_units(),
        }
    }
}

/// What the agent takes as sshd (`[logins] sshd_executables` and `sshd_units`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdTrust {
    pub executables: Vec<PathBuf>,
    pub units: Vec<String>,
}

impl Default for SshdTrust {
    fn default() -> Self {
        Self {
            executables: default_sshd_executables(),
            units: default_sshd_units(),
        }
    }
}

impl SshdTrust {
    /// Whether `exe` (the text of a `/proc/PID/exe` link or a journal record's `_EXE`) names an
    /// sshd executable. An executable replaced since the process started (an upgrade) reads as
    /// `PATH (deleted)`: that counts only when `deleted_ok` (the caller knows the process runs as
    /// root, which no tenant can fake).
    pub fn is_executable(&self, exe: &[u8], deleted_ok: bool) -> bool {
        let exe = match exe.strip_suffix(b" (deleted)") {
            Some(path) if deleted_ok => path,
            Some(_) => return false,
            None => exe,
        };
        self.executables
            .iter()
            .any(|p| p.as_os_str().as_encoded_bytes() == exe)
    }

    /// Whether a journal record's `_SYSTEMD_UNIT` is one sshd runs in.
    pub fn unit_allowed(&self, unit: &str) -> bool {
        self.units.iter().any(|pattern| glob_match(pattern, unit))
    }
}

/// `*` matches any run of characters (none included); everything else itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl LoginsConfig {
    /// No login audit (what [`AgentConfig::new`] uses).
    pub fn off() -> Self {
        Self {
            source: LoginSource::Off,
            ..Self::default()
        }
    }

    /// Follows `path` (an `sshd -E` file in tests).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            source: LoginSource::File,
            path: path.into(),
            ..Self::default()
        }
    }

    /// What counts as sshd.
    pub fn trust(&self) -> SshdTrust {
        SshdTrust {
            executables: self.sshd_executables.clone(),
            units: self.sshd_units.clone(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.source == LoginSource::Journald && !cfg!(feature = "journald") {
            return Err(
                "[logins] source = \"journald\": this keyward-agent was built without journald \
                 support (cargo feature `journald`); use source = \"file\""
                    .into(),
            );
        }
        if !self.path.is_absolute() {
            return Err("[logins] path must be an absolute path".into());
        }
        if !(1..=MAX_SPOOL_MAX_EVENTS).contains(&self.spool_max_events) {
            return Err(format!(
                "[logins] spool_max_events must be between 1 and {MAX_SPOOL_MAX_EVENTS}"
            ));
        }
        if self.sshd_executables.is_empty()
            || self.sshd_executables.iter().any(|p| !p.is_absolute())
        {
            return Err("[logins] sshd_executables must list absolute paths".into());
        }
        if self.sshd_units.iter().any(|u| u.is_empty()) {
            return Err("[logins] sshd_units must not hold an empty name".into());
        }
        Ok(())
    }
}

/// The journal where the agent can read it (the default build); else the log file.
fn default_login_source() -> LoginSource {
    if cfg!(feature = "journald") {
        LoginSource::Journald
    } else {
        LoginSource::File
    }
}

fn default_sshd_executables() -> Vec<PathBuf> {
    DEFAULT_SSHD_EXECUTABLES.iter().map(PathBuf::from).collect()
}

fn default_sshd_units() -> Vec<String> {
    DEFAULT_SSHD_UNITS.iter().map(|u| (*u).to_owned()).collect()
}

fn default_login_log() -> PathBuf {
    PathBuf::from(DEFAULT_LOGIN_LOG)
}

fn default_spool_max_events() -> usize {
    DEFAULT_SPOOL_MAX_EVENTS
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_host_key_dir() -> PathBuf {
    PathBuf::from(DEFAULT_HOST_KEY_DIR)
}

fn default_sshd_dir() -> PathBuf {
    PathBuf::from(DEFAULT_SSHD_DIR)
}

impl AgentConfig {
    /// A configuration with the defaults and the given users (for callers that build one in
    /// code, such as tests running an agent in-process). Unlike a configuration file, it reads no
    /// login log: set [`AgentConfig::logins`] for that.
    pub fn new(state_dir: impl Into<PathBuf>, users: Vec<UserConfig>) -> Self {
        Self {
            state_dir: state_dir.into(),
            users,
            grpc_url: None,
            grpc_urls: Vec::new(),
            host_key_dir: default_host_key_dir(),
            sshd_dir: default_sshd_dir(),
            logins: LoginsConfig::off(),
            preserve: PreserveLimits::default(),
            bastion: None,
            recording: None,
        }
    }

    /// Reads and validates the configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and validates configuration text; the error is a human-readable message.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.users.is_empty() {
            // An agent that may write nobody's keys would silently do nothing: say so at start.
            return Err("no [[users]] entries: name the users this agent manages".into());
        }
        let mut seen = BTreeSet::new();
        for user in &self.users {
            if !seen.insert(user.name.as_str()) {
                return Err(format!("user {:?} is listed twice", user.name.as_str()));
            }
        }
        if !self.state_dir.is_absolute() {
            return Err("state_dir must be an absolute path".into());
        }
        let plain = |p: &Path| {
            p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            })
        };
        if !self.sshd_dir.is_absolute()
            || !plain(&self.sshd_dir)
            || self.sshd_dir.parent().is_none()
        {
            return Err("sshd_dir must be an absolute path below / without '.' or '..'".into());
        }
        if let Some(url) = &self.grpc_url
            && !url.starts_with("https://")
        {
            return Err("grpc_url must be an https:// URL".into());
        }
        if self.grpc_url.is_some() && !self.grpc_urls.is_empty() {
            return Err("set grpc_url or grpc_urls, not both".into());
        }
        if self
            .grpc_urls
            .iter()
            .any(|url| !url.starts_with("https://"))
        {
            return Err("every grpc_urls entry must be an https:// URL".into());
        }
        if self.preserve.max_bytes == 0 || self.preserve.max_lines == 0 {
            return Err("[preserve] max_bytes and max_lines must be at least 1".into());
        }
        if let Some(bastion) = &self.bastion {
            let user = bastion.jump_user.as_str();
            match self.mode_of(user) {
                Some(UserMode::Exclusive) => {}
                Some(_) => {
                    return Err(format!(
                        "[bastion] jump_user {user:?} must have mode = \"exclusive\" in \
                         [[users]]: the jump user logs in by certificate only, and a \
                         preserve-mode user keeps keys of its own that could open a shell"
                    ));
                }
                None => {
                    return Err(format!(
                        "[bastion] jump_user {user:?} is not in [[users]]: add it with \
                         mode = \"exclusive\""
                    ));
                }
            }
        }
        if let Some(recording) = &self.recording {
            recording.validate()?;
        }
        self.logins.validate()
    }

    /// The bastion's jump user: `[bastion] jump_user` when it is an exclusive-mode user of this
    /// agent (what [`AgentConfig::parse`] insists on; a configuration built in code that breaks
    /// the rule has no jump user). `None` on an agent that is not a bastion's.
    pub fn jump_user(&self) -> Option<&UnixUser> {
        let jump = &self.bastion.as_ref()?.jump_user;
        (self.mode_of(jump.as_str()) == Some(UserMode::Exclusive)).then_some(jump)
    }

    /// The configured endpoints of the control plane (`grpc_urls`, or `grpc_url` alone); empty
    /// when the URL given at enrollment serves.
    pub fn endpoints(&self) -> Vec<String> {
        match &self.grpc_url {
            Some(url) => vec![url.clone()],
            None => self.grpc_urls.clone(),
        }
    }

    /// The configured mode of `user`, or `None` when this agent must not touch that user.
    pub fn mode_of(&self, user: &str) -> Option<UserMode> {
        self.users
            .iter()
            .find(|u| u.name.as_str() == user)
            .map(|u| u.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_configuration_parses() {
        let c = AgentConfig::parse(
            r#"
            state_dir = "/tmp/kw"
            grpc_url = "https://cp.example:8443"
            host_key_dir = "/tmp/ssh"
            sshd_dir = "/tmp/ssh/kw"
            [[users]]
            name = "kwadmin"
            mode = "exclusive"
            [[users]]
            name = "tenant"
            mode = "preserve"
            "#,
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/kw"));
        assert_eq!(c.sshd_dir, PathBuf::from("/tmp/ssh/kw"));
        assert_eq!(c.mode_of("kwadmin"), Some(UserMode::Exclusive));
        assert_eq!(c.mode_of("tenant"), Some(UserMode::Preserve));
        assert_eq!(c.mode_of("root"), None);
        assert_eq!(c.grpc_url.as_deref(), Some("https://cp.example:8443"));
        assert_eq!(c.endpoints(), ["https://cp.example:8443"]);
        let several = AgentConfig::parse(
            "grpc_urls = [\"https://cp-1.example:8444\", \"https://cp-2.example:8444\"]\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
        )
        .unwrap();
        assert_eq!(
            several.endpoints(),
            ["https://cp-1.example:8444", "https://cp-2.example:8444"]
        );
    }

    #[test]
    fn defaults_apply() {
        let c = AgentConfig::parse("[[users]]\nname = \"a\"\nmode = \"preserve\"\n").unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.host_key_dir, PathBuf::from(DEFAULT_HOST_KEY_DIR));
        assert_eq!(c.sshd_dir, PathBuf::from(DEFAULT_SSHD_DIR));
        assert_eq!(c.grpc_url, None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        for (text, want) in [
            (
                "log_file = \"/x\"\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
                "unknown field",
            ),
            (
                "[[users]]\nname = \"a\"\nmode = \"preserve\"\nshell = \"x\"\n",
                "unknown field",
            ),
            (
                "[[users]]\nname = \"a\"\nmode = \"append\"\n",
                "unknown variant",
            ),
            (
                "[[users]]\nname = \"../root\"\nmode = \"preserve\"\n",
                "unix user",
            ),
            ("state_dir = \"/x\"\n", "missing field"),
            ("users = []\n", "no [[users]]"),
            (
                "[[users]]\nname = \"a\"\nmode = \"preserve\"\n[[users]]\nname = \"a\"\nmode = \"exclusive\"\n",
                "listed twice",
            ),
            (
                "state_dir = \"rel\"\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
                "absolute",
            ),
            (
                "sshd_dir = \"/etc/ssh/../tmp\"\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
                "sshd_dir",
            ),
            (
                "sshd_dir = \"/\"\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
                "sshd_dir",
            ),
            (
                "grpc_url = \"http://x\"\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
                "https",
            ),
            (
                "grpc_urls = [\"https://a\", \"http://b\"]\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
                "every grpc_urls entry",
            ),
            (
                "grpc_url = \"https://a\"\ngrpc_urls = [\"https://b\"]\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
                "not both",
            ),
        ] {
            let err = AgentConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_login_audit_section() {
        let users = "[[users]]\nname = \"a\"\nmode = \"preserve\"\n";
        let c = AgentConfig::parse(users).unwrap();
        assert_eq!(c.logins, LoginsConfig::default());
        let default_source = if cfg!(feature = "journald") {
            LoginSource::Journald
        } else {
            LoginSource::File
        };
        assert_eq!(c.logins.source, default_source);
        assert_eq!(c.logins.trust(), SshdTrust::default());
        assert_eq!(c.logins.path, PathBuf::from(DEFAULT_LOGIN_LOG));
        assert_eq!(c.logins.spool_max_events, DEFAULT_SPOOL_MAX_EVENTS);
        let c = AgentConfig::parse(&format!(
            "{users}[logins]\nsource = \"file\"\npath = \"/tmp/sshd.log\"\nspool_max_events = 5\n"
        ))
        .unwrap();
        assert_eq!(c.logins.path, PathBuf::from("/tmp/sshd.log"));
        assert_eq!(c.logins.spool_max_events, 5);
        let off = AgentConfig::parse(&format!("{users}[logins]\nsource = \"off\"\n")).unwrap();
        assert_eq!(off.logins.source, LoginSource::Off);
        let journald = AgentConfig::parse(&format!("{users}[logins]\nsource = \"journald\"\n"));
        assert_eq!(journald.is_ok(), cfg!(feature = "journald"), "{journald:?}");
        for (section, want) in [
            ("source = \"syslog\"", "unknown variant"),
            ("path = \"auth.log\"", "absolute"),
            ("spool_max_events = 0", "between"),
            ("cursor = 3", "unknown field"),
            ("sshd_executables = []", "absolute"),
            ("sshd_executables = [\"sshd\"]", "absolute"),
            ("sshd_units = [\"\"]", "empty"),
        ] {
            let err = AgentConfig::parse(&format!("{users}[logins]\n{section}\n")).unwrap_err();
            assert!(err.contains(want), "{section}: {err}");
        }
        assert_eq!(
            AgentConfig::new("/x", vec![]).logins.source,
            LoginSource::Off
        );
    }

    #[test]
    fn what_counts_as_sshd() {
        let users = "[[users]]\nname = \"a\"\nmode = \"preserve\"\n";
        let c = AgentConfig::parse(&format!(
            "{users}[logins]\nsshd_executables = [\"/opt/ssh/sbin/sshd\"]\nsshd_units = [\"custom-ssh.service\"]\n"
        ))
        .unwrap();
        let trust = c.logins.trust();
        assert!(trust.is_executable(b"/opt/ssh/sbin/sshd", false));
        assert!(!trust.is_executable(b"/usr/sbin/sshd", false));
        assert!(trust.unit_allowed("custom-ssh.service"));
        assert!(!trust.unit_allowed("ssh.service"));

        let trust = SshdTrust::default();
        for exe in [&b"/usr/sbin/sshd"[..], b"/usr/lib/openssh/sshd-session"] {
            assert!(trust.is_executable(exe, false));
        }
        assert!(trust.is_executable(b"/usr/sbin/sshd (deleted)", true));
        for exe in [
            &b"/usr/sbin/sshd (deleted)"[..],
            b"/usr/bin/python3.11",
            b"/home/t/sshd",
            b"/usr/sbin/sshd2",
            b"",
        ] {
            assert!(!trust.is_executable(exe, false), "{exe:?}");
        }
        for unit in [
            "ssh.service",
            "sshd.service",
            "ssh@0-127.0.0.1:22-127.0.0.1:40000.service",
        ] {
            assert!(trust.unit_allowed(unit), "{unit}");
        }
        for unit in [
            "session-3.scope",
            "user@1000.service",
            "ssh.socket",
            "evil-ssh.service",
            "ssh.service.d",
            "",
        ] {
            assert!(!trust.unit_allowed(unit), "{unit}");
        }
        assert!(glob_match("a*b*c", "aXbYc") && !glob_match("a*b*c", "aXbY"));
        assert!(glob_match("*", "") && glob_match("a*", "a") && !glob_match("a", "ab"));
    }

    #[test]
    fn the_bastion_section() {
        let users = "[[users]]\nname = \"jump\"\nmode = \"exclusive\"\n\
                     [[users]]\nname = \"tenant\"\nmode = \"preserve\"\n";
        let plain = AgentConfig::parse(users).unwrap();
        assert_eq!((plain.bastion.as_ref(), plain.jump_user()), (None, None));
        let c = AgentConfig::parse(&format!("{users}[bastion]\njump_user = \"jump\"\n")).unwrap();
        assert_eq!(c.jump_user().map(UnixUser::as_str), Some("jump"));
        for (section, want) in [
            ("jump_user = \"tenant\"", "must have mode = \"exclusive\""),
            ("jump_user = \"nobody\"", "is not in [[users]]"),
            ("jump_user = \"../x\"", "unix user"),
            ("", "missing field `jump_user`"),
            ("jump_user = \"jump\"\nshell = \"x\"", "unknown field"),
        ] {
            let err = AgentConfig::parse(&format!("{users}[bastion]\n{section}\n")).unwrap_err();
            assert!(err.contains(want), "{section}: {err}");
        }
        // Built in code without the check: a preserve-mode jump user is no jump user.
        let mut built = plain.clone();
        built.bastion = Some(BastionConfig {
            jump_user: "tenant".parse().unwrap(),
        });
        assert_eq!(built.jump_user(), None);
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = AgentConfig::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent.toml"));
    }
}
