//! `keyward-server check consistency`: SQL and Vault compared for every SSH key set, after a
//! restore or whenever an operator doubts them.
//!
//! Every key operation writes Vault first and SQL second (docs/ARCHITECTURE.md, "The write
//! order"), so SQL names the Vault version it committed. For each key set the check reads
//! Vault's metadata and that version, and reports:
//!
//! - `consistent`: the version exists and holds the public key SQL records;
//! - `vault_ahead` (not drift): Vault has newer versions than SQL names — a write whose SQL
//!   commit did not happen (an interrupted operation, or a Vault snapshot newer than the SQL
//!   backup); SQL's version is what keyward serves, the newer one is an orphan;
//! - drift: `missing_in_vault` (no secret at all), `version_missing` (SQL's version is gone,
//!   deleted or destroyed, or Vault's history is older than SQL's: a SQL backup newer than the
//!   Vault snapshot), `key_mismatch` (the version holds another key than SQL records), and
//!   `vault_error` (it could not be read).

use futures::StreamExt as _;
use keyward_common::KeyKind;
use keyward_common::keys::public_key_fingerprint;
use serde::Serialize;

use crate::store::{KeySetRecord, Store, StoreError};
use crate::vault::SecretStore;

/// Key sets read from Vault at once.
const CONCURRENCY: usize = 16;

/// One key set's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySetCheck {
    pub tenant_id: String,
    pub kind: KeyKind,
    pub status: &'static str,
    /// The version SQL names, and Vault's newest (when it has the secret).
    pub sql_version: i64,
    pub vault_version: Option<u64>,
    pub detail: Option<String>,
}

impl KeySetCheck {
    /// Whether this is drift (anything but `consistent` and `vault_ahead`).
    pub fn is_drift(&self) -> bool {
        !matches!(self.status, "consistent" | "vault_ahead")
    }
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyReport {
    /// No key set drifted.
    pub ok: bool,
    pub checked: usize,
    pub drift: usize,
    /// Every key set that is not simply `consistent`.
    pub findings: Vec<KeySetCheck>,
}

/// Compares every key set in SQL with Vault.
pub async fn check(
    store: &Store,
    vault: &dyn SecretStore,
) -> Result<ConsistencyReport, StoreError> {
    let key_sets = store.key_sets().await?;
    let checked = key_sets.len();
    let mut findings: Vec<KeySetCheck> = futures::stream::iter(key_sets)
        .map(|ks| async move { check_one(vault, &ks).await })
        .buffered(CONCURRENCY)
        .filter(|c| std::future::ready(c.status != "consistent"))
        .collect()
        .await;
    findings.sort_by(|a, b| (&a.tenant_id, a.kind).cmp(&(&b.tenant_id, b.kind)));
    let drift = findings.iter().filter(|c| c.is_drift()).count();
    Ok(ConsistencyReport {
        ok: drift == 0,
        checked,
        drift,
        findings,
    })
}

async fn check_one(vault: &dyn SecretStore, ks: &KeySetRecord) -> KeySetCheck {
    let verdict = |status, vault_version, detail: Option<String>| KeySetCheck {
        tenant_id: ks.tenant_id.to_string(),
        kind: ks.kind,
        status,
        sql_version: ks.vault_version,
        vault_version,
        detail,
    };
    let versions = match vault.key_set_versions(&ks.tenant_id, ks.kind).await {
        Ok(Some(versions)) => versions,
        Ok(None) => return verdict("missing_in_vault", None, None),
        Err(e) => return verdict("vault_error", None, Some(e.to_string())),
    };
    let current = Some(versions.current_version);
    let Ok(wanted) = u64::try_from(ks.vault_version) else {
        return verdict(
            "version_missing",
            current,
            Some("SQL names no version".into()),
        );
    };
    let secret = match vault.read_key_set(&ks.tenant_id, ks.kind, wanted).await {
        Ok(Some(found)) => found.secret,
        Ok(None) => return verdict("version_missing", current, None),
        Err(e) => return verdict("vault_error", current, Some(e.to_string())),
    };
    match public_key_fingerprint(&secret.public_key) {
        Ok(fingerprint) if fingerprint == ks.fingerprint => {}
        Ok(fingerprint) => {
            let why = format!("Vault holds {fingerprint}; SQL records {}", ks.fingerprint);
            return verdict("key_mismatch", current, Some(why));
        }
        Err(e) => {
            let why = format!("Vault's public key does not read: {e}");
            return verdict("key_mismatch", current, Some(why));
        }
    }
    if versions.current_version > wanted {
        let why = format!(
            "versions {} to {} are not in SQL (an operation that did not commit)",
            wanted + 1,
            versions.current_version
        );
        return verdict("vault_ahead", current, Some(why));
    }
    verdict("consistent", current, None)
}
