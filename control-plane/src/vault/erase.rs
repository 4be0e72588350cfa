//! Erasing a tenant from Vault when it is offboarded: every secret under `{mount}/{tenant_id}/`,
//! found by listing the tenant's folder (and its sub-folders), is destroyed with its metadata
//! (KV v2 `DELETE {mount}/metadata/...`: every version, and the history). Both requests are safe
//! to repeat, so they follow the cluster through failures as reads do.

use keyward_common::TenantId;
use vaultrs::error::ClientError;

use super::{VaultError, VaultStore};

/// At most this many secrets under one tenant are listed: keyward writes four.
const MAX_LISTED: usize = 1_000;
/// Sub-folders deeper than this are not followed (keyward writes none).
const MAX_DEPTH: usize = 4;

/// Whether `answer` is a 404: KV's "nothing here" (with or without an error list).
fn not_found(answer: &ClientError) -> bool {
    matches!(
        answer,
        ClientError::APIError { code: 404, .. }
            | ClientError::RestClientError {
                source: rustify::errors::ClientError::ServerResponseError { code: 404, .. },
            }
    )
}

/// A listed key, checked before it becomes part of a path: one or more plain segments.
fn plain(key: &str) -> bool {
    !key.is_empty()
        && key
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

impl VaultStore {
    /// The keys listed in `{mount}/metadata/{folder}` (sub-folders end with `/`); none when
    /// the folder does not exist.
    async fn list_at(&self, folder: &str) -> Result<Vec<String>, VaultError> {
        self.on_cluster("list", |client, node| async move {
            match vaultrs::kv2::list(&*client, &self.mount, folder).await {
                Ok(keys) => Ok(keys),
                Err(e) if not_found(&e) => Ok(Vec::new()),
                Err(e) => Err(self.map_error(node, "list", folder, None, e)),
            }
        })
        .await
    }

    /// Every secret under `{mount}/{tenant}/`, relative to it, sorted.
    pub(super) async fn secret_names_of(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<String>, VaultError> {
        let refused = |reason: String| VaultError::BadResponse {
            operation: format!("list {}/{tenant}/", self.mount),
            reason,
        };
        let mut names = Vec::new();
        let mut folders = vec![(String::new(), 0)];
        while let Some((sub, depth)) = folders.pop() {
            for key in self.list_at(&format!("{tenant}/{sub}")).await? {
                let (name, is_folder) = match key.strip_suffix('/') {
                    Some(folder) => (folder, true),
                    None => (key.as_str(), false),
                };
                if !plain(name) {
                    return Err(refused(format!("unexpected key {key:?}")));
                }
                if !is_folder {
                    names.push(format!("{sub}{name}"));
                } else if depth < MAX_DEPTH {
                    folders.push((format!("{sub}{name}/"), depth + 1));
                } else {
                    return Err(refused(format!("folders nested deeper than {MAX_DEPTH}")));
                }
                if names.len() > MAX_LISTED {
                    return Err(refused(format!("more than {MAX_LISTED} secrets")));
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Destroys `{mount}/{tenant}/{name}`: every version and the metadata. Done when absent.
    pub(super) async fn destroy_secret_of(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(), VaultError> {
        if !plain(name) {
            return Err(VaultError::Config(format!("secret name {name:?}")));
        }
        let path = format!("{tenant}/{name}");
        self.on_cluster("destroy", |client, node| {
            let path = &path;
            async move {
                match vaultrs::kv2::delete_metadata(&*client, &self.mount, path).await {
                    Ok(()) => Ok(()),
                    Err(e) if not_found(&e) => Ok(()),
                    Err(e) => Err(self.map_error(node, "destroy", path, None, e)),
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn only_plain_segments_become_part_of_a_path() {
        for good in ["admin_ssh", "smtp", "a/b"] {
            assert!(plain(good), "{good}");
        }
        for bad in ["", "..", "a/../b", "/a", "a//b", ".", "a/"] {
            assert!(!plain(bad), "{bad}");
        }
    }
}
