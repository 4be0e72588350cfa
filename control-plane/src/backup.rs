//! Vault backups: scheduled snapshots of Vault's integrated (raft) storage into `[backup] dir`,
//! keeping the newest `retention` of them.
//!
//! A snapshot is streamed into a hidden `.partial` file (mode 0600: it holds every secret,
//! encrypted by Vault's barrier), synced, then renamed to `vault-raft-{UTC time}.snap`, so the
//! directory only ever shows complete snapshots. The time of the newest one (its file's mtime) is
//! `lastBackup` in `GET /api/v1/admin/vault/health`; the schedule is derived from it too, so a
//! restart neither repeats a fresh backup nor forgets a due one. Each snapshot, and each failure,
//! is an audit event (`vault.backup`).
//!
//! Without `[backup] dir` nothing runs and the health answer says `not_configured`. Vault with
//! other storage has no snapshots: `unsupported_storage`. With several replicas, configure the
//! directory on one of them (each configured replica takes its own snapshots).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::caller::Caller;
use crate::clock::iso8601;
use crate::config::BackupConfig;
use crate::lifecycle::KeyLifecycle;
use crate::vault::VaultError;

const PREFIX: &str = "vault-raft-";
const SUFFIX: &str = ".snap";
/// After a failed snapshot, the next try comes this soon (or at the interval, if shorter).
const RETRY: Duration = Duration::from_secs(300);

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backups are not configured ([backup] dir)")]
    NotConfigured,
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("backup directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl BackupError {
    /// What failed, for the health answer: never a path, an address or an OS error (those go to
    /// the server log and the audit event, which only the operator reads).
    pub fn public_reason(&self) -> &'static str {
        match self {
            Self::NotConfigured => "backups are not configured",
            Self::Vault(VaultError::SnapshotUnsupported) => {
                "Vault does not use integrated (raft) storage: it has no snapshots to back up"
            }
            Self::Vault(VaultError::Denied { .. }) => {
                "Vault denied the snapshot (check the control plane's Vault policy; see the server log)"
            }
            Self::Vault(_) => "Vault could not take the snapshot (see the server log)",
            Self::Io { .. } => {
                "the snapshot could not be written to the backup directory (see the server log)"
            }
        }
    }
}

/// A snapshot written to the backup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub path: PathBuf,
    pub bytes: u64,
}

/// What the health answer says about backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// `ok`, `pending` (none taken yet), `failing` (the last attempt failed), `not_configured` or
    /// `unsupported_storage`.
    pub status: &'static str,
    /// Time of the newest snapshot in the directory.
    pub last_backup: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct LastAttempt {
    error: Option<String>,
    unsupported: bool,
}

/// The backups of one control plane.
#[derive(Debug)]
pub struct VaultBackups {
    lifecycle: Arc<KeyLifecycle>,
    config: BackupConfig,
    last: Mutex<LastAttempt>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The complete snapshots in `dir`, oldest first (their names sort by time).
fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    found.sort();
    found
}

fn modified(path: &Path) -> Option<DateTime<Utc>> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .map(DateTime::<Utc>::from)
}

impl VaultBackups {
    pub fn new(lifecycle: Arc<KeyLifecycle>, config: BackupConfig) -> Self {
        Self {
            lifecycle,
            config,
            last: Mutex::new(LastAttempt::default()),
        }
    }

    pub fn configured(&self) -> bool {
        self.config.dir.is_some()
    }

    fn last(&self) -> std::sync::MutexGuard<'_, LastAttempt> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest snapshot's time.
    fn newest(&self) -> Option<DateTime<Utc>> {
        let dir = self.config.dir.as_deref()?;
        snapshots(dir).last().and_then(|p| modified(p))
    }

    pub fn status(&self) -> BackupStatus {
        if !self.configured() {
            return BackupStatus {
                status: "not_configured",
                last_backup: None,
                error: None,
            };
        }
        let last_backup = self.newest().map(iso8601);
        let last = self.last();
        let status = if last.unsupported {
            "unsupported_storage"
        } else if last.error.is_some() {
            "failing"
        } else if last_backup.is_some() {
            "ok"
        } else {
            "pending"
        };
        BackupStatus {
            status,
            last_backup,
            error: last.error.clone(),
        }
    }

    /// Takes a snapshot now and applies the retention. Audited either way, before the status
    /// changes (so whoever sees the new status finds its audit event).
    pub async fn snapshot_now(&self) -> Result<Snapshot, BackupError> {
        let result = self.take_snapshot().await;
        match &result {
            Ok(snapshot) => {
                tracing::info!(path = %snapshot.path.display(), bytes = snapshot.bytes, "Vault snapshot written");
                let detail =
                    json!({ "file": snapshot.path.display().to_string(), "bytes": snapshot.bytes });
                let audited = self
                    .lifecycle
                    .audited(&Caller::system(), "vault.backup", None, move |_| {
                        Box::pin(async move { Ok(((), detail)) })
                    })
                    .await;
                if let Err(e) = audited {
                    tracing::error!(error = %e, "cannot audit a Vault snapshot");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Vault snapshot failed");
                self.lifecycle
                    .audit_system_failure("vault.backup", json!({ "reason": e.to_string() }))
                    .await;
            }
        }
        *self.last() = match &result {
            Ok(_) => LastAttempt::default(),
            Err(e) => LastAttempt {
                error: Some(e.public_reason().to_owned()),
                unsupported: matches!(e, BackupError::Vault(VaultError::SnapshotUnsupported)),
            },
        };
        result
    }

    async fn take_snapshot(&self) -> Result<Snapshot, BackupError> {
        let dir = self
            .config
            .dir
            .as_deref()
            .ok_or(BackupError::NotConfigured)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let path = dir.join(format!("{PREFIX}{stamp}{SUFFIX}"));
        let partial = dir.join(format!(".{PREFIX}{stamp}.partial"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io_error(&partial))?;
        let mut file = tokio::fs::File::from_std(file);
        let written = async {
            let bytes = self.lifecycle.vault().raft_snapshot(&mut file).await?;
            file.sync_all().await.map_err(io_error(&partial))?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(io_error(&path))?;
            Ok::<_, BackupError>(bytes)
        }
        .await;
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        self.prune(dir);
        Ok(Snapshot { path, bytes })
    }

    /// Deletes all but the newest `retention` snapshots.
    fn prune(&self, dir: &Path) {
        let all = snapshots(dir);
        let excess = all.len().saturating_sub(self.config.retention);
        for old in &all[..excess] {
            match std::fs::remove_file(old) {
                Ok(()) => tracing::info!(path = %old.display(), "old Vault snapshot deleted"),
                Err(e) => {
                    tracing::warn!(path = %old.display(), error = %e, "cannot delete an old Vault snapshot")
                }
            }
        }
    }

    /// How long until the next snapshot is due.
    fn until_due(&self) -> Duration {
        let interval = self.config.interval;
        match self.newest() {
            Some(newest) => {
                let age = SystemTime::now()
                    .duration_since(SystemTime::from(newest))
                    .unwrap_or(Duration::ZERO);
                interval.saturating_sub(age)
            }
            None => Duration::ZERO,
        }
    }

    /// Takes snapshots on schedule until the task is aborted. Does nothing when not configured.
    pub async fn run(self: Arc<Self>) {
        if !self.configured() {
            return;
        }
        loop {
            tokio::time::sleep(self.until_due()).await;
            match self.snapshot_now().await {
                Ok(_) => {}
                // Not raft: try again at the interval, in case Vault moves to integrated storage.
                Err(BackupError::Vault(VaultError::SnapshotUnsupported)) => {
                    tokio::time::sleep(self.config.interval).await;
                }
                Err(_) => tokio::time::sleep(RETRY.min(self.config.interval)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_reason_names_no_path_address_or_os_error() {
        let failures = [
            BackupError::Io {
                path: "/var/lib/keyward/backups/vault-raft-1.snap.partial".into(),
                source: std::io::Error::from_raw_os_error(28),
            },
            BackupError::Vault(VaultError::Failed {
                operation: "GET https://10.0.0.7:8200/v1/sys/storage/raft/snapshot".into(),
                status: 500,
                message: "dial tcp 10.0.0.7:8201: connection refused".into(),
            }),
            BackupError::Vault(VaultError::Denied {
                operation: "sys/storage/raft/snapshot".into(),
            }),
        ];
        for failure in failures {
            let reason = failure.public_reason();
            for leak in [
                "/var",
                "10.0.0.7",
                "8200",
                "os error",
                "sys/storage",
                "refused",
            ] {
                assert!(!reason.contains(leak), "{reason:?} carries {leak:?}");
            }
            assert!(
                !failure.to_string().is_empty() && reason != failure.to_string(),
                "the log keeps the full cause"
            );
        }
    }
}
