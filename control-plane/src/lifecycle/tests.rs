//! The lifecycle's ordering rules, with a fake Vault that fails on demand and a manual clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::TimeZone;

use super::*;
use crate::clock::ManualClock;
use crate::store::Store;
use crate::vault::{KeySetVersions, SecretFields, VaultHealth, VersionedKeySet};

/// An in-memory KV v2 with check-and-set, which can be told to fail.
#[derive(Debug, Default)]
pub(crate) struct FakeVault {
    pub(crate) versions: Mutex<HashMap<(String, KeyKind), Vec<KeySetSecret>>>,
    /// The other secrets (`smtp`, `dkim`) by (tenant, name).
    secrets: Mutex<HashMap<(String, String), Vec<SecretFields>>>,
    /// keyward's own secrets (`_keyward/{name}`), created once.
    internal: Mutex<HashMap<String, serde_json::Value>>,
    /// Writes that succeed before every further write fails as if Vault were sealed.
    writes_left: AtomicUsize,
    limit_writes: AtomicBool,
}

impl FakeVault {
    pub(crate) fn fail_after(&self, writes: usize) {
        self.writes_left.store(writes, Ordering::SeqCst);
        self.limit_writes.store(true, Ordering::SeqCst);
    }

    pub(crate) fn heal(&self) {
        self.limit_writes.store(false, Ordering::SeqCst);
    }

    /// Counts a write against the limit set by `fail_after`.
    fn take_write(&self) -> Result<(), VaultError> {
        if self.limit_writes.load(Ordering::SeqCst) {
            let left = self.writes_left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(VaultError::Sealed);
            }
            self.writes_left.store(left - 1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn secret(&self, tenant: &str, name: &str) -> Vec<SecretFields> {
        self.secrets
            .lock()
            .unwrap()
            .get(&(tenant.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn current(&self, tenant: &str, kind: KeyKind) -> usize {
        self.versions
            .lock()
            .unwrap()
            .get(&(tenant.to_owned(), kind))
            .map_or(0, Vec::len)
    }
}

#[async_trait::async_trait]
impl SecretStore for FakeVault {
    async fn write_key_set(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        secret: &KeySetSecret,
        cas: u64,
    ) -> Result<u64, VaultError> {
        self.take_write()?;
        let mut all = self.versions.lock().unwrap();
        let versions = all.entry((tenant.to_string(), kind)).or_default();
        if versions.len() as u64 != cas {
            return Err(VaultError::CasMismatch {
                path: format!("{tenant}/{kind}"),
                cas,
            });
        }
        versions.push(secret.clone());
        Ok(versions.len() as u64)
    }

    async fn read_key_set(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        version: u64,
    ) -> Result<Option<VersionedKeySet>, VaultError> {
        let all = self.versions.lock().unwrap();
        Ok(all
            .get(&(tenant.to_string(), kind))
            .and_then(|v| v.get(version as usize - 1))
            .map(|secret| VersionedKeySet {
                secret: secret.clone(),
                version,
            }))
    }

    async fn key_set_versions(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<Option<KeySetVersions>, VaultError> {
        let n = self.current(tenant.as_str(), kind) as u64;
        Ok((n > 0).then(|| KeySetVersions {
            current_version: n,
            oldest_version: 1,
            created_time: String::new(),
            updated_time: String::new(),
        }))
    }

    async fn health(&self) -> Result<VaultHealth, VaultError> {
        unimplemented!("not used by the lifecycle")
    }

    async fn write_secret(
        &self,
        tenant: &TenantId,
        name: &str,
        fields: &SecretFields,
        cas: u64,
    ) -> Result<u64, VaultError> {
        self.take_write()?;
        let mut all = self.secrets.lock().unwrap();
        let versions = all
            .entry((tenant.to_string(), name.to_owned()))
            .or_default();
        if versions.len() as u64 != cas {
            return Err(VaultError::CasMismatch {
                path: format!("{tenant}/{name}"),
                cas,
            });
        }
        versions.push(fields.clone());
        Ok(versions.len() as u64)
    }

    async fn secret_versions(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<KeySetVersions>, VaultError> {
        let n = self.secret(tenant.as_str(), name).len() as u64;
        Ok((n > 0).then(|| KeySetVersions {
            current_version: n,
            oldest_version: 1,
            created_time: String::new(),
            updated_time: String::new(),
        }))
    }

    async fn raft_snapshot(&self, _: &mut tokio::fs::File) -> Result<u64, VaultError> {
        Err(VaultError::SnapshotUnsupported)
    }

    async fn read_internal(&self, name: &str) -> Result<Option<serde_json::Value>, VaultError> {
        Ok(self.internal.lock().unwrap().get(name).cloned())
    }

    async fn create_internal(
        &self,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<bool, VaultError> {
        self.take_write()?;
        let mut all = self.internal.lock().unwrap();
        if all.contains_key(name) {
            return Ok(false);
        }
        all.insert(name.to_owned(), value.clone());
        Ok(true)
    }

    async fn tenant_secret_names(&self, tenant: &TenantId) -> Result<Vec<String>, VaultError> {
        let mut names: Vec<String> = self
            .versions
            .lock()
            .unwrap()
            .keys()
            .filter(|(t, _)| t == tenant.as_str())
            .map(|(_, kind)| kind.secret_name().to_owned())
            .chain(
                self.secrets
                    .lock()
                    .unwrap()
                    .keys()
                    .filter(|(t, _)| t == tenant.as_str())
                    .map(|(_, name)| name.clone()),
            )
            .collect();
        names.sort();
        Ok(names)
    }

    async fn destroy_tenant_secret(&self, tenant: &TenantId, name: &str) -> Result<(), VaultError> {
        self.take_write()?;
        let tenant = tenant.to_string();
        self.versions
            .lock()
            .unwrap()
            .retain(|(t, kind), _| !(*t == tenant && kind.secret_name() == name));
        self.secrets
            .lock()
            .unwrap()
            .remove(&(tenant, name.to_owned()));
        Ok(())
    }
}

pub(crate) struct Fixture {
    pub(crate) lifecycle: KeyLifecycle,
    /// What the lifecycle announced through the change-notification seam.
    pub(crate) changes: Arc<RecordedChanges>,
    pub(crate) vault: Arc<FakeVault>,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) dir: tempfile::TempDir,
}

/// The change-notification seam, recorded.
#[derive(Debug, Default)]
pub(crate) struct RecordedChanges(Mutex<Vec<crate::changes::Change>>);

impl crate::changes::ChangeNotifier for RecordedChanges {
    fn changed(&self, change: crate::changes::Change) {
        self.0.lock().unwrap().push(change);
    }
}

impl RecordedChanges {
    pub(crate) fn take(&self) -> Vec<crate::changes::Change> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

const T1: &str = "t1";

pub(crate) async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
    let store = Store::connect(&url, None).await.unwrap();
    let vault = Arc::new(FakeVault::default());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap(),
    ));
    let keys = KeysConfig {
        algorithm: KeyAlgorithm::Ed25519,
        ..KeysConfig::default()
    };
    let changes = Arc::new(RecordedChanges::default());
    Fixture {
        lifecycle: KeyLifecycle::new(vault.clone(), store, clock.clone(), keys, changes.clone()),
        changes,
        vault,
        clock,
        dir,
    }
}

pub(crate) fn new_tenant() -> NewTenant {
    NewTenant {
        tenant_id: T1.parse().unwrap(),
        vps_ip: "192.0.2.10".into(),
        ssh_port: 22,
        tenant_user: "tenant".parse().unwrap(),
        admin_user: "kwadmin".parse().unwrap(),
    }
}

fn t1() -> TenantId {
    T1.parse().unwrap()
}

pub(crate) async fn audit_actions(f: &Fixture) -> Vec<(String, String)> {
    let page = f
        .lifecycle
        .store()
        .audit_events(&crate::store::AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    page.events
        .into_iter()
        .rev()
        .map(|e| (e.action, e.outcome))
        .collect()
}

#[tokio::test]
async fn a_create_that_fails_half_way_in_vault_leaves_no_sql_trace_and_can_be_retried() {
    let f = fixture().await;
    let caller = Caller::system();
    // The admin key set is written, then Vault fails on the tenant key set.
    f.vault.fail_after(1);
    let err = f
        .lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DomainError::Vault(VaultError::Sealed)),
        "{err:?}"
    );
    assert!(f.lifecycle.store().tenant(&t1()).await.unwrap().is_none());
    assert!(f.lifecycle.store().key_sets().await.unwrap().is_empty());
    assert_eq!(
        audit_actions(&f).await,
        [("tenant.create".to_owned(), "failure".to_owned())]
    );

    // The orphaned admin version is superseded by the retry; SQL points at the new one.
    f.vault.heal();
    let (_, key_sets) = f
        .lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    assert_eq!(f.vault.current(T1, KeyKind::Admin), 2);
    assert_eq!(key_sets[0].vault_version, 2);
    assert_eq!(key_sets[1].vault_version, 1);
    assert!(f.lifecycle.store().verify_audit_chain().await.unwrap().ok);
}

#[tokio::test]
async fn the_download_hands_out_the_version_sql_knows_even_if_vault_has_a_newer_orphan() {
    let f = fixture().await;
    let caller = Caller::system();
    let (_, key_sets) = f
        .lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    let known = &key_sets[1];
    // A version written by an operation whose SQL commit then failed.
    let orphan = GeneratedKey::generate(KeyAlgorithm::Ed25519, "orphan").unwrap();
    let secret = KeySetSecret {
        private_key: orphan.private_openssh().clone(),
        public_key: orphan.public_openssh().to_owned(),
        created_at: String::new(),
        last_rotated: String::new(),
        rotation_policy: "90_days".into(),
        origin: keyward_common::KeyOrigin::Generated,
    };
    f.vault
        .write_key_set(&t1(), KeyKind::Tenant, &secret, 1)
        .await
        .unwrap();

    let (_, private_key) = f
        .lifecycle
        .download(&caller, &t1(), KeyKind::Tenant, None, None)
        .await
        .unwrap();
    let fingerprint = keyward_common::keys::private_key_fingerprint(&private_key).unwrap();
    assert_eq!(fingerprint.as_str(), known.fingerprint.as_str());
}

#[tokio::test]
async fn rotation_times_come_from_the_clock_and_policy() {
    let f = fixture().await;
    let caller = Caller::system();
    f.lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    f.clock.advance(chrono::Duration::days(10));
    let rotated = f
        .lifecycle
        .replace_key(&caller, &t1(), KeyKind::Tenant, Replace::Rotate)
        .await
        .unwrap();
    assert_eq!(iso8601(rotated.last_rotated), "2026-01-11T12:00:00Z");
    assert_eq!(
        rotated.grace_until.map(iso8601).as_deref(),
        Some("2026-01-12T12:00:00Z")
    );
    assert_eq!(iso8601(rotated.next_rotation), "2026-04-11T12:00:00Z");
    assert_eq!(iso8601(rotated.created_at), "2026-01-01T12:00:00Z");
    assert_eq!(rotated.generation, 2);

    // Rotating again within the grace period keeps only the key just replaced.
    let again = f
        .lifecycle
        .replace_key(&caller, &t1(), KeyKind::Tenant, Replace::Rotate)
        .await
        .unwrap();
    assert_eq!(
        again.previous_fingerprint.as_ref().map(Fingerprint::as_str),
        Some(rotated.fingerprint.as_str())
    );
    // The admin key set is untouched.
    let admin = f
        .lifecycle
        .store()
        .key_set(&t1(), KeyKind::Admin)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(admin.generation, 1);
}

#[tokio::test]
async fn a_vault_write_from_elsewhere_between_read_and_write_is_a_conflict() {
    /// Reports a stale current version, as Vault would after another replica's write.
    #[derive(Debug)]
    struct StaleVault(FakeVault);

    #[async_trait::async_trait]
    impl SecretStore for StaleVault {
        async fn write_key_set(
            &self,
            t: &TenantId,
            k: KeyKind,
            s: &KeySetSecret,
            cas: u64,
        ) -> Result<u64, VaultError> {
            self.0.write_key_set(t, k, s, cas).await
        }
        async fn read_key_set(
            &self,
            t: &TenantId,
            k: KeyKind,
            v: u64,
        ) -> Result<Option<VersionedKeySet>, VaultError> {
            self.0.read_key_set(t, k, v).await
        }
        async fn key_set_versions(
            &self,
            _: &TenantId,
            _: KeyKind,
        ) -> Result<Option<KeySetVersions>, VaultError> {
            Ok(None)
        }
        async fn health(&self) -> Result<VaultHealth, VaultError> {
            self.0.health().await
        }
        async fn write_secret(
            &self,
            t: &TenantId,
            n: &str,
            f: &SecretFields,
            cas: u64,
        ) -> Result<u64, VaultError> {
            self.0.write_secret(t, n, f, cas).await
        }
        async fn secret_versions(
            &self,
            t: &TenantId,
            n: &str,
        ) -> Result<Option<KeySetVersions>, VaultError> {
            self.0.secret_versions(t, n).await
        }
        async fn raft_snapshot(&self, f: &mut tokio::fs::File) -> Result<u64, VaultError> {
            self.0.raft_snapshot(f).await
        }
        async fn read_internal(&self, n: &str) -> Result<Option<serde_json::Value>, VaultError> {
            self.0.read_internal(n).await
        }
        async fn create_internal(
            &self,
            n: &str,
            v: &serde_json::Value,
        ) -> Result<bool, VaultError> {
            self.0.create_internal(n, v).await
        }
        async fn tenant_secret_names(&self, t: &TenantId) -> Result<Vec<String>, VaultError> {
            self.0.tenant_secret_names(t).await
        }
        async fn destroy_tenant_secret(&self, t: &TenantId, n: &str) -> Result<(), VaultError> {
            self.0.destroy_tenant_secret(t, n).await
        }
    }

    let f = fixture().await;
    let caller = Caller::system();
    f.lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    let stale = KeyLifecycle::new(
        Arc::new(StaleVault(FakeVault {
            versions: Mutex::new(std::mem::take(&mut *f.vault.versions.lock().unwrap())),
            ..FakeVault::default()
        })),
        f.lifecycle.store().clone(),
        f.clock.clone(),
        f.lifecycle.keys.clone(),
        f.changes.clone(),
    );
    let err = stale
        .replace_key(&caller, &t1(), KeyKind::Tenant, Replace::Rotate)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DomainError::ConcurrentModification),
        "{err:?}"
    );
    let ks = f
        .lifecycle
        .store()
        .key_set(&t1(), KeyKind::Tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ks.generation, 1, "nothing recorded");
}

mod grants;
mod registration;
mod rotation;

#[tokio::test]
async fn regenerate_denies_the_replaced_keys_and_revoke_denies_every_issued_key() {
    let f = fixture().await;
    let caller = Caller::system();
    f.lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    let first = f
        .lifecycle
        .store()
        .key_set(&t1(), KeyKind::Tenant)
        .await
        .unwrap()
        .unwrap();
    // Rotate keeps the old key valid for its grace period: nothing denied, no session ends.
    let rotated = f
        .lifecycle
        .replace_key(&caller, &t1(), KeyKind::Tenant, Replace::Rotate)
        .await
        .unwrap();
    assert!(rotated.denied_fingerprints.is_empty());
    assert_eq!(rotated.session_epoch, first.session_epoch);

    // Regenerate replaces at once: the current key and the one in its grace period are denied,
    // and the sessions they opened end (a higher epoch).
    let regenerated = f
        .lifecycle
        .replace_key(&caller, &t1(), KeyKind::Tenant, Replace::Regenerate)
        .await
        .unwrap();
    assert_eq!(
        regenerated.denied_fingerprints,
        vec![rotated.fingerprint.clone(), first.fingerprint.clone()]
    );
    assert_eq!(regenerated.session_epoch, first.session_epoch + 1);
    assert!(regenerated.previous_fingerprint.is_none());

    // Rotate again (its old key in grace), then revoke: every key ever issued is denied.
    let again = f
        .lifecycle
        .replace_key(&caller, &t1(), KeyKind::Tenant, Replace::Rotate)
        .await
        .unwrap();
    let revoked = f
        .lifecycle
        .revoke(&caller, &t1(), KeyKind::Tenant)
        .await
        .unwrap();
    for fp in [
        &first.fingerprint,
        &rotated.fingerprint,
        &regenerated.fingerprint,
        &again.fingerprint,
    ] {
        assert!(revoked.denied_fingerprints.contains(fp), "{fp} not denied");
    }
    assert_eq!(revoked.session_epoch, regenerated.session_epoch + 1);
    // The admin key set is untouched.
    let admin = f
        .lifecycle
        .store()
        .key_set(&t1(), KeyKind::Admin)
        .await
        .unwrap()
        .unwrap();
    assert!(admin.denied_fingerprints.is_empty());
}

#[tokio::test]
async fn each_committed_key_change_is_announced_for_its_tenant_and_a_failed_one_is_not() {
    let f = fixture().await;
    let caller = Caller::system();
    f.lifecycle
        .create_tenant(&caller, new_tenant())
        .await
        .unwrap();
    f.changes.take();
    let tenant_changed = vec![crate::changes::Change::Tenant(t1())];
    for how in [Replace::Rotate, Replace::Regenerate] {
        f.lifecycle
            .replace_key(&caller, &t1(), KeyKind::Tenant, how)
            .await
            .unwrap();
        assert_eq!(f.changes.take(), tenant_changed, "{how:?}");
    }
    f.lifecycle
        .revoke(&caller, &t1(), KeyKind::Admin)
        .await
        .unwrap();
    assert_eq!(f.changes.take(), tenant_changed);
    // Vault fails the write: nothing committed, nothing announced.
    f.vault.fail_after(0);
    f.lifecycle
        .replace_key(&caller, &t1(), KeyKind::Tenant, Replace::Rotate)
        .await
        .unwrap_err();
    assert_eq!(f.changes.take(), Vec::new());
}
