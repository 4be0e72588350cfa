//! SSH session recordings (`[recordings]`): where their bytes are kept, how large one may grow,
//! how fast a host may send them and how long they are kept.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where recordings' bytes are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingBackend {
    /// A directory (`directory`, default `{state_dir}/recordings`).
    Directory,
    /// An S3-compatible bucket (`s3_*`); credentials from the environment as the AWS SDK reads
    /// them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingsConfig {
    /// `directory` or `s3`.
    pub store: RecordingBackend,
    /// The directory of `store = "directory"`; default `{state_dir}/recordings`.
    pub directory: Option<PathBuf>,
    /// The bucket, its endpoint (for S3-compatible storage other than AWS) and region of
    /// `store = "s3"`.
    pub s3_bucket: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// The most bytes kept of one recording; past it the recording is truncated (later chunks
    /// are acknowledged, counted and not kept).
    pub max_bytes: u64,
    /// Recordings not finished at once on one host; a new one over it is refused.
    pub max_open_per_host: u32,
    /// Chunks one host may send a minute, and at once; past them its stream waits.
    pub chunks_per_minute: u32,
    pub chunks_burst: u32,
    /// How long recordings are kept (from their first chunk's arrival).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        Self {
            store: RecordingBackend::Directory,
            directory: None,
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: None,
            max_bytes: 256 * 1024 * 1024,
            max_open_per_host: 64,
            chunks_per_minute: 600,
            chunks_burst: 120,
            retention: Duration::from_secs(90 * 86_400),
        }
    }
}

impl RecordingsConfig {
    /// Why the section cannot be used, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if self.max_bytes < 1024 * 1024 {
            return Some("recordings.max_bytes must be at least 1 MiB");
        }
        if self.max_open_per_host == 0 || self.chunks_per_minute == 0 || self.chunks_burst == 0 {
            return Some(
                "recordings.max_open_per_host, chunks_per_minute and chunks_burst must be at least 1",
            );
        }
        if self.retention < Duration::from_secs(86_400) {
            return Some("recordings.retention must be at least 1d");
        }
        if self.store == RecordingBackend::S3 && self.s3_bucket.is_none() {
            return Some("recordings.s3_bucket is required with recordings.store = \"s3\"");
        }
        None
    }
}
