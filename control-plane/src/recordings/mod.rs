//! Where SSH session recordings' bytes are kept: an object store (`object_store`), a directory by
//! default or an S3-compatible bucket (`[recordings]`). Each chunk an agent sends is one object,
//! `recordings/{host_id}/{recording_id}/{seq}.jsonl`, written whole (a chunk sent again replaces
//! its object with the same bytes); the metadata is in SQL (`store::recordings`).
//!
//! Names are built only from a [`HostId`] and a [`RecordingName`], both validated, so no agent's
//! text reaches a path. In a directory a chunk is flushed to disk (file and directory) before it
//! is acknowledged; S3 acknowledges a PUT once it is stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use keyward_common::HostId;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use sha2::{Digest, Sha256};

use crate::config::{RecordingBackend, RecordingsConfig};

pub mod asciicast;
pub mod retention;

/// The agent's id of a recording on its host: `[0-9a-z-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordingName(String);

impl std::str::FromStr for RecordingName {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err("a recording id is 1 to 64 of [0-9a-z-]")
        }
    }
}

impl RecordingName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the recordings' store failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("recordings directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recordings store: {0}")]
    Store(#[from] object_store::Error),
    #[error("recordings store: flushing a chunk to disk: {0}")]
    Flush(std::io::Error),
}

/// The recordings' object store.
#[derive(Clone)]
pub struct RecordingArchive {
    store: Arc<dyn ObjectStore>,
    /// The directory, when the store is one (chunks are flushed to disk there).
    directory: Option<PathBuf>,
}

impl std::fmt::Debug for RecordingArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingArchive")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl RecordingArchive {
    /// The store `[recordings]` names; a directory is created (0700) when missing.
    pub fn from_config(config: &RecordingsConfig, state_dir: &Path) -> Result<Self, ArchiveError> {
        match config.store {
            RecordingBackend::Directory => {
                let dir = config
                    .directory
                    .clone()
                    .unwrap_or_else(|| state_dir.join("recordings"));
                Self::directory(&dir)
            }
            RecordingBackend::S3 => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(config.s3_bucket.clone().unwrap_or_default());
                if let Some(endpoint) = &config.s3_endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &config.s3_region {
                    builder = builder.with_region(region);
                }
                Ok(Self {
                    store: Arc::new(builder.build()?),
                    directory: None,
                })
            }
        }
    }

    /// A store in `dir`.
    pub fn directory(dir: &Path) -> Result<Self, ArchiveError> {
        let failed = |source| ArchiveError::Directory {
            path: dir.to_owned(),
            source,
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(failed)?;
        }
        // A deleted recording leaves no empty directories behind (up to `dir`, which stays).
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            directory: Some(dir.to_owned()),
        })
    }

    fn chunk_path(host: &HostId, recording: &RecordingName, seq: u64) -> ObjectPath {
        ObjectPath::from(format!(
            "recordings/{}/{}/{seq:020}.jsonl",
            host.as_str(),
            recording.as_str()
        ))
    }

    fn recording_prefix(host: &HostId, recording: &RecordingName) -> ObjectPath {
        ObjectPath::from(format!(
            "recordings/{}/{}",
            host.as_str(),
            recording.as_str()
        ))
    }

    /// Stores one chunk, durably, before it is acknowledged.
    pub async fn put_chunk(
        &self,
        host: &HostId,
        recording: &RecordingName,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<(), ArchiveError> {
        let path = Self::chunk_path(host, recording, seq);
        self.store.put(&path, data.into()).await?;
        if let Some(dir) = &self.directory {
            let file = dir.join(path.as_ref());
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&file)?.sync_all()?;
                if let Some(parent) = file.parent() {
                    std::fs::File::open(parent)?.sync_all()?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(|e| ArchiveError::Flush(std::io::Error::other(e)))?
            .map_err(ArchiveError::Flush)?;
        }
        Ok(())
    }

    /// The kept bytes of a recording in order (its first `chunks` chunks; a chunk not kept, past
    /// `max_bytes`, is skipped).
    pub async fn read(
        &self,
        host: &HostId,
        recording: &RecordingName,
        chunks: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        let mut all = Vec::new();
        for seq in 0..chunks {
            match self
                .store
                .get(&Self::chunk_path(host, recording, seq))
                .await
            {
                Ok(got) => all.extend_from_slice(&got.bytes().await?),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(all)
    }

    /// SHA-256 (hex) of a recording's kept bytes.
    pub async fn sha256(
        &self,
        host: &HostId,
        recording: &RecordingName,
        chunks: u64,
    ) -> Result<(String, usize), ArchiveError> {
        let mut hash = Sha256::new();
        let mut size = 0;
        for seq in 0..chunks {
            match self
                .store
                .get(&Self::chunk_path(host, recording, seq))
                .await
            {
                Ok(got) => {
                    let bytes = got.bytes().await?;
                    size += bytes.len();
                    hash.update(&bytes);
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((hex::encode(hash.finalize()), size))
    }

    /// Deletes every object of a recording.
    pub async fn delete(
        &self,
        host: &HostId,
        recording: &RecordingName,
    ) -> Result<(), ArchiveError> {
        let prefix = Self::recording_prefix(host, recording);
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        for object in objects {
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_ids_are_checked() {
        for good in ["a", "0-b-9", &"x".repeat(64)] {
            assert!(good.parse::<RecordingName>().is_ok(), "{good}");
        }
        for bad in ["", "A", "a/b", "..", "a_b", "é", &"x".repeat(65), "a b"] {
            assert!(bad.parse::<RecordingName>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn chunks_are_kept_read_in_order_hashed_and_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = RecordingArchive::directory(&dir.path().join("r")).expect("archive");
        let host: HostId = "h1".parse().expect("host");
        let rec: RecordingName = "r-1".parse().expect("name");
        archive
            .put_chunk(&host, &rec, 1, b"b\n".to_vec())
            .await
            .expect("put");
        archive
            .put_chunk(&host, &rec, 0, b"a\n".to_vec())
            .await
            .expect("put");
        // Sent again: the same object, not a second copy.
        archive
            .put_chunk(&host, &rec, 0, b"a\n".to_vec())
            .await
            .expect("put");
        assert_eq!(archive.read(&host, &rec, 3).await.expect("read"), b"a\nb\n");
        let (hash, size) = archive.sha256(&host, &rec, 2).await.expect("hash");
        assert_eq!(size, 4);
        assert_eq!(hash, hex::encode(Sha256::digest(b"a\nb\n")));
        archive.delete(&host, &rec).await.expect("delete");
        assert!(archive.read(&host, &rec, 2).await.expect("read").is_empty());
        assert!(
            !dir.path().join("r/recordings/h1").exists(),
            "no empty directories left"
        );
        assert!(dir.path().join("r").is_dir());
    }
}
