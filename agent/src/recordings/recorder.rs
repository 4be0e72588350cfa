//! Whether this host can record sessions, and the forced command that makes sshd record them.
//!
//! Recording is only as trustworthy as the recorder's output is out of the recorded user's reach.
//! Debian's `tlog-rec-session` runs as the user who starts it; installed set-user-ID to its own
//! user (`_tlog`, which Debian's package creates; tlog's README asks for exactly this when other
//! users are recorded), it writes its files as `_tlog` into a directory only `_tlog` (and root)
//! can enter, and runs the recorded shell with the user's own ids. The agent checks that set-up
//! at start ([`Recorder::check`]) and records nothing unless it holds: a host whose recorder any
//! user could read or rewrite would give the tenant recordings it cannot trust.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Uid, User, chown};

use crate::config::{RecordingConfig, command_word};

/// The recorder the wrapper starts (it names the path itself, so no one can point it elsewhere).
pub const TLOG_REC_SESSION: &str = "/usr/bin/tlog-rec-session";

/// Why the host cannot record.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("{path}: {message}", path = path.display())]
    Unusable { path: PathBuf, message: String },
    #[error(
        "the recorder's user {0:?} does not exist (Debian's tlog package creates _tlog: \
         apt-get install tlog)"
    )]
    NoUser(String),
}

fn unusable(path: &Path, message: impl Into<String>) -> RecorderError {
    RecorderError::Unusable {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// A checked recording set-up: what the agent writes into sshd's key options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorder {
    wrapper: String,
    spool: PathBuf,
    recorder_uid: Uid,
}

impl Recorder {
    /// Checks the set-up `config` describes: the wrapper is root's and only root may change it;
    /// [`TLOG_REC_SESSION`] is set-user-ID to `recorder_user`; the spool is that user's, 0700
    /// (made so when missing).
    pub fn check(config: &RecordingConfig) -> Result<Recorder, RecorderError> {
        let user = User::from_name(&config.recorder_user)
            .ok()
            .flatten()
            .ok_or_else(|| RecorderError::NoUser(config.recorder_user.clone()))?;
        let wrapper = &config.wrapper;
        let word =
            command_word(wrapper).ok_or_else(|| unusable(wrapper, "not a plain absolute path"))?;
        let meta =
            std::fs::symlink_metadata(wrapper).map_err(|e| unusable(wrapper, e.to_string()))?;
        if !meta.is_file()
            || meta.uid() != 0
            || meta.mode() & 0o022 != 0
            || meta.mode() & 0o005 != 0o005
        {
            return Err(unusable(
                wrapper,
                "the wrapper must be a regular file of root's, executable by all and writable by \
                 root only",
            ));
        }
        let recorder = Path::new(TLOG_REC_SESSION);
        let meta = std::fs::metadata(recorder).map_err(|e| {
            unusable(
                recorder,
                format!("{e} (install Debian's tlog: apt-get install tlog)"),
            )
        })?;
        if meta.mode() & 0o4000 == 0 || meta.uid() != user.uid.as_raw() {
            return Err(unusable(
                recorder,
                format!(
                    "not set-user-ID to {0}, so the recorded user could read and change its \
                     recordings (dpkg-statoverride --update --add {0} {0} 6755 {TLOG_REC_SESSION})",
                    config.recorder_user
                ),
            ));
        }
        let spool = &config.spool_dir;
        command_word(spool).ok_or_else(|| unusable(spool, "not a plain absolute path"))?;
        match std::fs::symlink_metadata(spool) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(spool)
                    .map_err(|e| unusable(spool, e.to_string()))?;
                chown(spool, Some(user.uid), Some(user.gid))
                    .map_err(|e| unusable(spool, e.to_string()))?;
            }
            Err(e) => return Err(unusable(spool, e.to_string())),
            Ok(_) => {}
        }
        let meta = std::fs::symlink_metadata(spool).map_err(|e| unusable(spool, e.to_string()))?;
        if !meta.is_dir() || meta.uid() != user.uid.as_raw() || meta.mode() & 0o077 != 0 {
            return Err(unusable(
                spool,
                format!(
                    "the spool must be a directory of {}'s that no one else may enter (0700)",
                    config.recorder_user
                ),
            ));
        }
        Ok(Recorder {
            wrapper: word.to_owned(),
            spool: spool.clone(),
            recorder_uid: user.uid,
        })
    }

    /// The forced command for a recorded user's lines: `WRAPPER output|input SPOOL`.
    pub fn command(&self, input: bool) -> String {
        let what = if input { "input" } else { "output" };
        format!("{} {what} {}", self.wrapper, self.spool.display())
    }

    /// Where the recordings are.
    pub fn spool(&self) -> &Path {
        &self.spool
    }

    /// The recorder's user: every recording file must be its.
    pub fn recorder_uid(&self) -> Uid {
        self.recorder_uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_absolute_paths_make_a_command_word() {
        assert_eq!(
            command_word(Path::new("/usr/lib/keyward-agent/record-session")),
            Some("/usr/lib/keyward-agent/record-session")
        );
        for bad in [
            "relative/x",
            "/a b",
            "/a\"b",
            "/a/../b",
            "/a,b",
            "/a\\b",
            "/a\nb",
        ] {
            assert_eq!(command_word(Path::new(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn a_missing_recorder_user_is_said_plainly() {
        let config = RecordingConfig {
            recorder_user: "no-such-user-kw".into(),
            ..RecordingConfig::default()
        };
        let error = Recorder::check(&config).unwrap_err().to_string();
        assert!(error.contains("apt-get install tlog"), "{error}");
    }
}
