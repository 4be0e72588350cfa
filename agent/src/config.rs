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
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use keyward_common::UnixUser;
use serde::Deserialize;

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/keyward/agent.toml";
/// Where the agent keeps its key, certificates and the cached state by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/keyward-agent";
/// Where sshd's host keys are read from by default.
pub const DEFAULT_HOST_KEY_DIR: &str = "/etc/ssh";

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
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
    /// Where `ssh_host_*_key.pub` are read from.
    #[serde(default = "default_host_key_dir")]
    pub host_key_dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_host_key_dir() -> PathBuf {
    PathBuf::from(DEFAULT_HOST_KEY_DIR)
}

impl AgentConfig {
    /// A configuration with the defaults and the given users (for callers that build one in
    /// code, such as tests running an agent in-process).
    pub fn new(state_dir: impl Into<PathBuf>, users: Vec<UserConfig>) -> Self {
        Self {
            state_dir: state_dir.into(),
            users,
            grpc_url: None,
            host_key_dir: default_host_key_dir(),
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
        if let Some(url) = &self.grpc_url
            && !url.starts_with("https://")
        {
            return Err("grpc_url must be an https:// URL".into());
        }
        Ok(())
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
        assert_eq!(c.mode_of("kwadmin"), Some(UserMode::Exclusive));
        assert_eq!(c.mode_of("tenant"), Some(UserMode::Preserve));
        assert_eq!(c.mode_of("root"), None);
        assert_eq!(c.grpc_url.as_deref(), Some("https://cp.example:8443"));
    }

    #[test]
    fn defaults_apply() {
        let c = AgentConfig::parse("[[users]]\nname = \"a\"\nmode = \"preserve\"\n").unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.host_key_dir, PathBuf::from(DEFAULT_HOST_KEY_DIR));
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
                "grpc_url = \"http://x\"\n[[users]]\nname = \"a\"\nmode = \"preserve\"\n",
                "https",
            ),
        ] {
            let err = AgentConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = AgentConfig::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent.toml"));
    }
}
