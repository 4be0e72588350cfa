//! Snapshots of Vault's integrated (raft) storage: `GET sys/storage/raft/snapshot`, a binary body
//! streamed to a file as it arrives (a snapshot holds the whole of Vault's data; it is not
//! buffered in memory). vaultrs has no call for it, so it goes through reqwest with the current
//! token, like `sys/health`. In a cluster it is taken from the active node, following it as
//! every read does.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{VaultError, VaultStore};

const PATH: &str = "sys/storage/raft/snapshot";

/// A snapshot of a large Vault takes longer than an API call: the client's timeout does not apply.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl VaultStore {
    pub(super) async fn snapshot_into(&self, out: &mut tokio::fs::File) -> Result<u64, VaultError> {
        let token = self.token();
        // Only the start is repeated on another node: a snapshot cut off midway is a failure.
        let (node, mut response) = self
            .on_cluster("snapshot", |_, node| {
                let token = &token;
                async move {
                    let response = self
                        .http
                        .get(format!("{}/v1/{PATH}", self.address(node)))
                        .header("X-Vault-Token", token.as_str())
                        .timeout(SNAPSHOT_TIMEOUT)
                        .send()
                        .await
                        .map_err(|e| self.unreachable(node, &e))?;
                    let status = response.status().as_u16();
                    if status == 200 {
                        return Ok((node, response));
                    }
                    let body = response.text().await.unwrap_or_default();
                    Err(snapshot_error(status, body))
                }
            })
            .await?;
        let status = 200;
        let write_failed = |e: std::io::Error| VaultError::Failed {
            operation: format!("GET {PATH}"),
            status,
            message: format!("writing the snapshot: {e}"),
        };
        let mut size = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.unreachable(node, &e))?
        {
            out.write_all(&chunk).await.map_err(write_failed)?;
            size += chunk.len() as u64;
        }
        out.flush().await.map_err(write_failed)?;
        Ok(size)
    }
}

/// What a snapshot request's answer other than 200 means.
fn snapshot_error(status: u16, body: String) -> VaultError {
    match status {
        // OpenBao and Vault answer "unsupported path" when the storage is not raft.
        404 => VaultError::SnapshotUnsupported,
        503 => VaultError::Sealed,
        403 => VaultError::Denied {
            operation: format!("GET {PATH}"),
        },
        _ => VaultError::Failed {
            operation: format!("GET {PATH}"),
            status,
            message: body.chars().take(300).collect(),
        },
    }
}
