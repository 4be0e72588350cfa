//! A tenant's other secrets (`smtp`, `dkim`): any set of string fields, written as one KV v2
//! version with check-and-set, exactly as the SSH key sets are.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};
use vaultrs::api::kv2::requests::ReadSecretMetadataRequest;
use vaultrs::api::kv2::responses::ReadSecretMetadataResponse;
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{KeySetVersions, VaultError, VaultStore, cas_options};

/// The fields of one secret version. Values are wiped when dropped and never printed by `Debug`
/// (a password or private key may be among them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretFields(BTreeMap<&'static str, Zeroizing<String>>);

impl SecretFields {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.0.insert(name, Zeroizing::new(value.into()));
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl Serialize for SecretFields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v.as_str())))
    }
}

impl VaultStore {
    /// Writes `{mount}/{path}` as one new version with check-and-set `cas`. Repeated on another
    /// node when the active one goes away; a repeat whose first try was applied meets a
    /// check-and-set mismatch, which the caller reports as a conflict (nothing is written twice).
    pub(super) async fn write_at(
        &self,
        path: &str,
        fields: &SecretFields,
        cas: u64,
    ) -> Result<u64, VaultError> {
        cas_options(cas)?;
        self.on_cluster("write", |client, node| async move {
            let written = vaultrs::kv2::set_with_options(
                &*client,
                &self.mount,
                path,
                fields,
                cas_options(cas)?,
            )
            .await
            .map_err(|e| self.map_error(node, "write", path, Some(cas), e))?;
            Ok(written.version)
        })
        .await
    }

    /// KV metadata of `{mount}/{path}`: the version to check-and-set against, and the history.
    pub(super) async fn versions_at(
        &self,
        path: &str,
    ) -> Result<Option<KeySetVersions>, VaultError> {
        self.on_cluster("read_metadata", |client, node| async move {
            let endpoint = ReadSecretMetadataRequest::builder()
                .mount(&self.mount)
                .path(path)
                .build()
                .map_err(|e| VaultError::Config(e.to_string()))?;
            let read: Result<ReadSecretMetadataResponse, _> =
                vaultrs::api::exec_with_result(&*client, endpoint).await;
            match read {
                Ok(m) => Ok(Some(KeySetVersions {
                    current_version: m.current_version,
                    oldest_version: m.oldest_version,
                    created_time: m.created_time,
                    updated_time: m.updated_time,
                })),
                Err(ClientError::APIError { code: 404, .. }) => Ok(None),
                Err(e) => Err(self.map_error(node, "read metadata", path, None, e)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_serialize_as_a_map_and_never_print() {
        let fields = SecretFields::new()
            .with("username", "tenant-t1")
            .with("password", "hunter2");
        assert_eq!(
            serde_json::to_value(&fields).unwrap(),
            serde_json::json!({ "username": "tenant-t1", "password": "hunter2" })
        );
        let debug = format!("{fields:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("password"),
            "{debug}"
        );
    }
}
