//! The file sink: JSON lines appended to a file, for a log shipper. The file is opened for every
//! batch (so that a shipper's rotation, by rename, is followed), created `0600`, written whole
//! and synced before the batch counts as delivered. A crash in between leaves lines that the next
//! attempt writes again: readers de-duplicate on `seq`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::SinkError;
use super::record::Record;

#[derive(Debug, Clone)]
pub struct FileSink {
    pub path: PathBuf,
}

impl FileSink {
    pub async fn deliver(&self, batch: &[Record]) -> Result<(), SinkError> {
        let mut text = Vec::new();
        for record in batch {
            text.extend_from_slice(record.json.as_bytes());
            text.push(b'\n');
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| SinkError::io("cannot open the file", e))?;
            file.write_all(&text)
                .map_err(|e| SinkError::io("writing failed", e))?;
            file.sync_data()
                .map_err(|e| SinkError::io("syncing failed", e))
        })
        .await
        .map_err(|_| SinkError::Unreachable("writing was interrupted"))?
    }
}
