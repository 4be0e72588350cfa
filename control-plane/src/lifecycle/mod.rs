//! The key lifecycle: create, rotate, regenerate, revoke and the one-time download.
//!
//! Each operation follows one order, so that SQL never claims what Vault did not store:
//! generate the key off the async runtime, write Vault with check-and-set, then record the new
//! key metadata and the audit event in one SQL transaction (rotations and regenerates write Vault
//! before the transaction begins, so that it is not held across Vault's round trips; a bulk job
//! shares the transaction among many key sets, [`group_commit`]). A Vault failure leaves SQL
//! untouched (and is audited as a failure on its own); an SQL failure after the Vault write
//! leaves an unreferenced KV version that the next operation supersedes, and no row points at
//! it. Operations on one tenant are serialised by a striped lock; check-and-set guards against
//! other replicas.
//!
//! New keys follow the tenant's rotation policy ([`policy`]); the tenant's SMTP credentials and
//! DKIM key go through the same order ([`secrets`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyward_common::{
    Fingerprint, GeneratedKey, KeyAlgorithm, KeyKind, KeyOrigin, TenantId, UnixUser,
};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard, Notify, Semaphore};

use crate::caller::Caller;
use crate::changes::{Change, ChangeNotifier};
use crate::clock::{Clock, iso8601};
use crate::config::KeysConfig;
use crate::store::{JobClaim, KeySetRecord, KeyState, NewAuditEvent, Store, TenantRecord, WriteTx};
use crate::vault::{KeySetSecret, SecretStore, VaultError};

mod access;
mod certificates;
mod download;
mod error;
mod grants;
mod group_commit;
mod key_pool;
mod mfa;
mod offboarding;
mod policy;
mod recording_policy;
mod records;
mod registered_key;
mod registration;
mod secrets;
mod web_sessions;
pub use access::Registered;
pub use certificates::{CertificateAsk, SshCertificates};
pub use download::{DownloadPolicy, Passphrase};
pub use error::DomainError;
pub use grants::{AccessAsk, Decision, Grant};
pub use group_commit::GroupCommit;
pub use key_pool::KeyPool;
pub use mfa::{
    METHODS as MFA_METHODS, MfaFactor, MfaOwner, MfaPolicy, MfaProof, TotpEnrolment, WebauthnKey,
    WebauthnRegistration,
};
pub use offboarding::{OffboardingHostStatus, OffboardingPending, OffboardingStatus};
pub use policy::{PolicySource, RotationPolicy};
pub use records::IssuedCertificate;
pub use registered_key::{KeyRefusal, MAX_PUBLIC_KEY_BYTES, MIN_RSA_BITS, RegisteredKey};
pub use registration::{KeyRegistrationPolicy, overdue};
pub use secrets::{TenantSecretKind, dkim_selector};
pub use web_sessions::{SIGN_IN_TTL, SignedIn, WebSession};

/// What an admin gives to onboard a tenant.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub tenant_id: TenantId,
    pub vps_ip: String,
    pub ssh_port: u16,
    pub tenant_user: UnixUser,
    pub admin_user: UnixUser,
}

/// A key set's replacement whose new key Vault holds (its version in `new`), not yet in SQL.
#[derive(Debug)]
struct Replacement {
    tenant: TenantId,
    kind: KeyKind,
    how: Replace,
    old: KeySetRecord,
    new: KeySetRecord,
}

/// What [`KeyLifecycle::prepare_replacement`] found to do. Returned once and taken apart at
/// once: the variants' sizes do not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Prepared {
    /// Nothing: a scheduled rotation that is not due.
    Unchanged(KeySetRecord),
    Ready(Replacement),
}

/// How a new key replaces the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// The old key keeps working for the grace period.
    Rotate,
    /// The old key stops working at once.
    Regenerate,
}

impl Replace {
    fn action(self) -> &'static str {
        match self {
            Replace::Rotate => "key.rotate",
            Replace::Regenerate => "key.regenerate",
        }
    }
}

/// Why an operation runs; its audit event says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A caller's API request.
    Request,
    /// The rotation scheduler: the key set fell due. A key set that is no longer due when its
    /// turn comes (rotated meanwhile, by hand or by another replica) is left alone.
    Schedule,
    /// A bulk rotation job, by the worker that claimed the tenant: the rotation commits only
    /// while the claim holds, and records itself in the job's queue.
    Job(JobClaim),
}

impl Trigger {
    /// In a rotation's transaction: a job's rotation records itself in the job's queue, and
    /// is refused if the worker no longer holds the tenant (another replica took it over).
    async fn record(
        &self,
        tx: &mut WriteTx,
        tenant: &TenantId,
        secret: &str,
    ) -> Result<(), DomainError> {
        match self {
            Trigger::Job(claim) if !tx.job_secret_done(claim, tenant, secret).await? => {
                Err(DomainError::ConcurrentModification)
            }
            _ => Ok(()),
        }
    }

    /// The audit event's `trigger` and `jobId`.
    fn detail(&self) -> (&'static str, Option<&str>) {
        match self {
            Trigger::Request => ("request", None),
            Trigger::Schedule => ("schedule", None),
            Trigger::Job(claim) => ("job", Some(&claim.job_id)),
        }
    }
}

/// Serialises operations per tenant. Striped: a fixed set of locks, so memory stays bounded
/// however many tenants there are; two tenants that share a stripe merely wait for each other.
#[derive(Debug)]
struct TenantLocks(Vec<Mutex<()>>);

impl TenantLocks {
    fn new(stripes: usize) -> Self {
        Self((0..stripes).map(|_| Mutex::new(())).collect())
    }

    async fn lock(&self, tenant: &TenantId) -> MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        tenant.hash(&mut hasher);
        let stripe = (hasher.finish() % self.0.len() as u64) as usize;
        self.0[stripe].lock().await
    }
}

/// The key operations, over Vault, the SQL store and a clock.
pub struct KeyLifecycle {
    vault: Arc<dyn SecretStore>,
    store: Store,
    clock: Arc<dyn Clock>,
    keys: KeysConfig,
    locks: TenantLocks,
    /// Where committed changes are announced (the hub; across replicas, PostgreSQL).
    changes: Arc<dyn ChangeNotifier>,
    /// One permit per core: key generation never takes more CPUs than there are.
    cpu_slots: Semaphore,
    /// Pre-generated keys of the deployment's algorithm (off unless [`KeyLifecycle::with_key_pool`]).
    pool: KeyPool,
    /// Woken when a rotation time may have moved earlier (a policy changed, a tenant was added).
    schedule_changed: Notify,
    /// The SSH CA and its policy (off unless [`KeyLifecycle::with_ssh_certificates`]).
    ssh_certificates: Option<SshCertificates>,
    /// Bastions' jump user and where tenants jump through ([`KeyLifecycle::with_bastion`]).
    bastion: crate::config::BastionConfig,
    /// The deployment's download policy ([`KeyLifecycle::with_download`]).
    download: crate::config::DownloadConfig,
    /// How offboardings wait for agents ([`KeyLifecycle::with_offboarding`]).
    offboarding: crate::config::OffboardingConfig,
    /// Woken when an offboarding starts: the worker looks at once.
    offboarding_started: Notify,
    /// The deployment's step-up policy ([`KeyLifecycle::with_mfa`]).
    mfa: crate::config::MfaConfig,
    /// The key that seals TOTP seeds, read from Vault on first use.
    mfa_seal: tokio::sync::OnceCell<mfa::seal::SealKey>,
}

/// How many replaced or revoked fingerprints a key set remembers as denied (newest first): a
/// key rotated every 90 days for 25 years.
const DENIED_KEPT: usize = 100;

/// `ending` first, then the older denials, without repeats, at most [`DENIED_KEPT`].
fn deny(older: &[Fingerprint], ending: Vec<Fingerprint>) -> Vec<Fingerprint> {
    let mut out: Vec<Fingerprint> = Vec::new();
    for f in ending.into_iter().chain(older.iter().cloned()) {
        if !out.contains(&f) && out.len() < DENIED_KEPT {
            out.push(f);
        }
    }
    out
}

impl fmt::Debug for KeyLifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLifecycle")
            .field("vault", &self.vault)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl KeyLifecycle {
    pub fn new(
        vault: Arc<dyn SecretStore>,
        store: Store,
        clock: Arc<dyn Clock>,
        keys: KeysConfig,
        changes: Arc<dyn ChangeNotifier>,
    ) -> Self {
        Self {
            vault,
            store,
            clock,
            keys,
            locks: TenantLocks::new(256),
            changes,
            cpu_slots: Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            ),
            schedule_changed: Notify::new(),
            pool: KeyPool::disabled(),
            ssh_certificates: None,
            bastion: crate::config::BastionConfig::default(),
            download: crate::config::DownloadConfig::default(),
            offboarding: crate::config::OffboardingConfig::default(),
            offboarding_started: Notify::new(),
            mfa: crate::config::MfaConfig::default(),
            mfa_seal: tokio::sync::OnceCell::new(),
        }
    }

    /// Issues SSH user certificates with `ca`'s authority and policy.
    pub fn with_ssh_certificates(mut self, ca: SshCertificates) -> Self {
        self.ssh_certificates = Some(ca);
        self
    }

    /// Names the bastions' jump user and the address tenants jump through (`[bastion]`).
    pub fn with_bastion(mut self, bastion: crate::config::BastionConfig) -> Self {
        self.bastion = bastion;
        self
    }

    /// The deployment's download policy (`[download]`), which tenants' own policies override.
    pub fn with_download(mut self, download: crate::config::DownloadConfig) -> Self {
        self.download = download;
        self
    }

    /// The deployment's step-up policy (`[mfa]`), which tenants' own policies override.
    pub fn with_mfa(mut self, mfa: crate::config::MfaConfig) -> Self {
        self.mfa = mfa;
        self
    }

    pub fn bastion(&self) -> &crate::config::BastionConfig {
        &self.bastion
    }

    /// Takes new keys of the deployment's algorithm from a pool of up to `size` pre-generated
    /// ones when it has any (RSA-4096 only; 0: off). The pool fills while
    /// [`KeyLifecycle::fill_key_pool`] runs.
    pub fn with_key_pool(mut self, size: usize) -> Self {
        self.pool = KeyPool::new(self.keys.algorithm, size);
        self
    }

    /// Resolves when a rotation time may have moved earlier; the scheduler looks again then.
    pub async fn schedule_changed(&self) {
        self.schedule_changed.notified().await;
    }

    /// Runs CPU-bound work (key generation) off the async runtime, at most one piece per core at
    /// a time, so that a bulk rotation uses every core but does not queue hundreds of threads.
    pub(crate) async fn cpu<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DomainError> {
        let _slot = self
            .cpu_slots
            .acquire()
            .await
            .map_err(|_| DomainError::Internal)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| DomainError::KeyGeneration)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn keys_config(&self) -> &KeysConfig {
        &self.keys
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn vault(&self) -> &Arc<dyn SecretStore> {
        &self.vault
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn event(
        &self,
        caller: &Caller,
        action: &'static str,
        tenant: Option<&TenantId>,
        outcome: &'static str,
        detail: serde_json::Value,
    ) -> NewAuditEvent {
        NewAuditEvent {
            at: iso8601(self.clock.now()),
            actor_token_id: caller.token_id.clone(),
            actor_role: caller.role_name().to_owned(),
            action,
            tenant_id: tenant.cloned(),
            outcome,
            source_addr: caller.source_addr.clone(),
            detail,
        }
    }

    /// Records a refused or failed operation in its own transaction. The operation has already
    /// failed; if this record cannot be written either, the log line is all that is left.
    async fn audit_outside(&self, event: NewAuditEvent) {
        let result = async {
            let mut tx = self.store.begin().await?;
            tx.append_audit(&event).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(action = event.action, error = %e, "could not write the audit event of a failed operation");
        }
    }

    /// Records that an operation of keyward's own (a Vault backup) failed.
    pub(crate) async fn audit_system_failure(
        &self,
        action: &'static str,
        detail: serde_json::Value,
    ) {
        self.audit_outside(self.event(&Caller::system(), action, None, "failure", detail))
            .await;
    }

    /// Hands `result` back after auditing its refusal or failure as `action`, in a transaction of
    /// its own (the operation's was rolled back). An unknown tenant is not audited: there is no
    /// tenant to attribute the event to, and probing names must not grow the log.
    async fn failure_audited<T>(
        &self,
        caller: &Caller,
        action: &'static str,
        tenant: &TenantId,
        result: Result<T, DomainError>,
    ) -> Result<T, DomainError> {
        if let Err(e) = &result
            && !matches!(e, DomainError::TenantNotFound(_))
        {
            self.audit_failure(caller, action, tenant, e).await;
        }
        result
    }

    /// [`Self::failure_audited`] for a key operation, counted first in
    /// `keyward_key_operations_total` by `action` and outcome.
    async fn key_operation_done<T>(
        &self,
        caller: &Caller,
        action: &'static str,
        tenant: &TenantId,
        result: Result<T, DomainError>,
    ) -> Result<T, DomainError> {
        let outcome = if result.is_ok() { "success" } else { "failure" };
        metrics::counter!("keyward_key_operations_total", "operation" => action, "outcome" => outcome).increment(1);
        self.failure_audited(caller, action, tenant, result).await
    }

    async fn audit_failure(
        &self,
        caller: &Caller,
        action: &'static str,
        tenant: &TenantId,
        error: &DomainError,
    ) {
        let outcome = if error.is_refusal() {
            "refused"
        } else {
            "failure"
        };
        let detail = json!({ "code": error.code(), "reason": error.to_string() });
        self.audit_outside(self.event(caller, action, Some(tenant), outcome, detail))
            .await;
    }

    /// A new key of `algorithm` named `comment`: from the key pool when it has one, otherwise
    /// generated now.
    async fn generate(
        &self,
        algorithm: KeyAlgorithm,
        comment: String,
    ) -> Result<GeneratedKey, DomainError> {
        let key = match self.pool.take(algorithm) {
            Some(pooled) => pooled.named(&comment),
            None => {
                let started = std::time::Instant::now();
                let key = self
                    .cpu(move || GeneratedKey::generate(algorithm, &comment))
                    .await?;
                metrics::histogram!("keyward_key_generation_seconds", "algorithm" => algorithm.as_str())
                    .record(started.elapsed().as_secs_f64());
                key
            }
        };
        key.map_err(|e| {
            tracing::error!(error = %e, "key generation failed");
            DomainError::KeyGeneration
        })
    }

    fn comment(tenant: &TenantId, kind: KeyKind, generation: i64) -> String {
        format!("keyward:{tenant}:{kind}:{generation}")
    }

    /// The Vault version to check-and-set against: whatever is current in Vault. A version that
    /// SQL does not know is left over from an operation whose SQL commit failed; it is superseded.
    async fn current_vault_version(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<u64, VaultError> {
        Ok(self
            .vault
            .key_set_versions(tenant, kind)
            .await?
            .map_or(0, |v| v.current_version))
    }

    async fn write_vault(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        key: &GeneratedKey,
        created_at: DateTime<Utc>,
        last_rotated: DateTime<Utc>,
        rotation_policy: &str,
    ) -> Result<i64, DomainError> {
        let cas = self.current_vault_version(tenant, kind).await?;
        let secret = KeySetSecret {
            private_key: key.private_openssh().clone(),
            public_key: key.public_openssh().to_owned(),
            created_at: iso8601(created_at),
            last_rotated: iso8601(last_rotated),
            rotation_policy: rotation_policy.to_owned(),
            origin: keyward_common::KeyOrigin::Generated,
        };
        match self.vault.write_key_set(tenant, kind, &secret, cas).await {
            Ok(version) => i64::try_from(version).map_err(|_| DomainError::Internal),
            Err(VaultError::CasMismatch { .. }) => Err(DomainError::ConcurrentModification),
            Err(e) => Err(e.into()),
        }
    }

    fn next_rotation(&self, from: DateTime<Utc>) -> DateTime<Utc> {
        let interval = chrono::Duration::from_std(self.keys.rotation_interval)
            .unwrap_or(chrono::Duration::days(90));
        from + interval
    }

    /// Onboards a tenant: both key sets generated, stored in Vault and recorded.
    pub async fn create_tenant(
        &self,
        caller: &Caller,
        new: NewTenant,
    ) -> Result<(TenantRecord, Vec<KeySetRecord>), DomainError> {
        let tenant = new.tenant_id.clone();
        let _guard = self.locks.lock(&tenant).await;
        if self.store.tenant(&tenant).await?.is_some() {
            return Err(DomainError::TenantExists(tenant));
        }
        let algorithm = self.keys.algorithm;
        let (admin_key, tenant_key) = tokio::try_join!(
            self.generate(algorithm, Self::comment(&tenant, KeyKind::Admin, 1)),
            self.generate(algorithm, Self::comment(&tenant, KeyKind::Tenant, 1)),
        )?;
        let now = self.clock.now();
        let record = TenantRecord {
            tenant_id: tenant.clone(),
            vps_ip: new.vps_ip,
            ssh_port: new.ssh_port,
            tenant_user: new.tenant_user,
            admin_user: new.admin_user,
            created_at: now,
        };
        let result = async {
            let mut tx = self.store.begin().await?;
            tx.insert_tenant(&record).await.map_err(|e| match e {
                crate::store::StoreError::Duplicate { .. } => {
                    DomainError::TenantExists(tenant.clone())
                }
                other => other.into(),
            })?;
            let mut key_sets = Vec::new();
            for (kind, key) in [(KeyKind::Admin, &admin_key), (KeyKind::Tenant, &tenant_key)] {
                let vault_version = self
                    .write_vault(
                        &tenant,
                        kind,
                        key,
                        now,
                        now,
                        &self.keys.rotation_policy_name(),
                    )
                    .await?;
                let ks = KeySetRecord {
                    tenant_id: tenant.clone(),
                    kind,
                    algorithm,
                    generation: 1,
                    state: KeyState::Active,
                    public_key: key.public_openssh().to_owned(),
                    fingerprint: key.fingerprint().clone(),
                    vault_version,
                    rotation_policy: self.keys.rotation_policy_name(),
                    created_at: now,
                    last_rotated: now,
                    next_rotation: self.next_rotation(now),
                    downloaded_at: None,
                    previous_public_key: None,
                    previous_fingerprint: None,
                    grace_until: None,
                    session_epoch: 0,
                    denied_fingerprints: Vec::new(),
                    origin: KeyOrigin::Generated,
                    verify_required: false,
                    reminded_generation: 0,
                };
                tx.put_key_set(&ks).await?;
                tx.record_key_history(&tenant, kind, 1, &ks.fingerprint, now)
                    .await?;
                key_sets.push(ks);
            }
            let detail = json!({
                "vpsIp": record.vps_ip,
                "sshPort": record.ssh_port,
                "adminFingerprint": key_sets[0].fingerprint,
                "tenantFingerprint": key_sets[1].fingerprint,
            });
            tx.append_audit(&self.event(caller, "tenant.create", Some(&tenant), "success", detail))
                .await?;
            tx.commit().await?;
            Ok::<_, DomainError>(key_sets)
        }
        .await;
        match result {
            Ok(key_sets) => {
                metrics::counter!("keyward_key_operations_total", "operation" => "create", "outcome" => "success").increment(2);
                tracing::info!(tenant = %tenant, "tenant created");
                self.schedule_changed.notify_one();
                Ok((record, key_sets))
            }
            Err(e) => {
                metrics::counter!("keyward_key_operations_total", "operation" => "create", "outcome" => "failure").increment(1);
                if !matches!(e, DomainError::TenantExists(_)) {
                    self.audit_failure(caller, "tenant.create", &tenant, &e)
                        .await;
                }
                Err(e)
            }
        }
    }

    async fn key_set_or_404(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<KeySetRecord, DomainError> {
        let key_set = self
            .store
            .key_set(tenant, kind)
            .await?
            .ok_or_else(|| DomainError::TenantNotFound(tenant.clone()))?;
        self.refuse_offboarded(tenant).await?;
        Ok(key_set)
    }

    /// Replaces the key of (tenant, kind) with a new generation, made as the tenant's rotation
    /// policy says (algorithm, grace period, next rotation).
    pub async fn replace_key(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
        how: Replace,
    ) -> Result<KeySetRecord, DomainError> {
        self.replace_key_as(caller, tenant, kind, how, &Trigger::Request)
            .await
    }

    /// [`KeyLifecycle::replace_key`] on behalf of the scheduler or a bulk job. With
    /// [`Trigger::Schedule`], a key set that is not due (any more) is returned unchanged.
    pub async fn replace_key_as(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
        how: Replace,
        trigger: &Trigger,
    ) -> Result<KeySetRecord, DomainError> {
        let result = self
            .lock_and_replace_key(caller, tenant, kind, how, trigger)
            .await;
        self.replace_done(caller, tenant, how, result).await
    }

    /// Counts a replacement's outcome and audits its failure (in a transaction of its own: the
    /// replacement's was rolled back).
    async fn replace_done(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        how: Replace,
        result: Result<KeySetRecord, DomainError>,
    ) -> Result<KeySetRecord, DomainError> {
        self.key_operation_done(caller, how.action(), tenant, result)
            .await
    }

    async fn lock_and_replace_key(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
        how: Replace,
        trigger: &Trigger,
    ) -> Result<KeySetRecord, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        let replacement = match self.prepare_replacement(tenant, kind, how, trigger).await? {
            Prepared::Unchanged(old) => return Ok(old),
            Prepared::Ready(replacement) => replacement,
        };
        self.commit_replacement(caller, &replacement, trigger)
            .await?;
        self.changes.changed(Change::Tenant(tenant.clone()));
        Ok(self.replaced(replacement))
    }

    /// Records a prepared replacement in a transaction of its own.
    async fn commit_replacement(
        &self,
        caller: &Caller,
        replacement: &Replacement,
        trigger: &Trigger,
    ) -> Result<(), DomainError> {
        let mut tx = self.store.begin().await?;
        self.apply_replacement(&mut tx, caller, replacement, trigger)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Everything of a replacement before SQL: reads the key set, generates the new key and
    /// writes it to Vault. The caller holds the tenant's lock until the replacement is applied.
    async fn prepare_replacement(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        how: Replace,
        trigger: &Trigger,
    ) -> Result<Prepared, DomainError> {
        let old = self.key_set_or_404(tenant, kind).await?;
        // The scheduler never picks a registered key (it reminds, `remind_overdue`); one that
        // became registered after it was listed is left alone.
        if *trigger == Trigger::Schedule && old.origin == KeyOrigin::Registered {
            return Ok(Prepared::Unchanged(old));
        }
        registration::refuse_registered(&old)?;
        if how == Replace::Rotate && old.state == KeyState::Revoked {
            return Err(DomainError::KeyRevoked);
        }
        if *trigger == Trigger::Schedule && old.next_rotation > self.clock.now() {
            return Ok(Prepared::Unchanged(old));
        }
        Ok(Prepared::Ready(
            self.generate_replacement(tenant, kind, how, old).await?,
        ))
    }

    /// A key keyward generates (of the tenant's policy algorithm, written to Vault first) in
    /// place of `old`, and the key set it makes: what a rotation or a regeneration commits, and
    /// the way back from a registered key ([`KeyLifecycle::remove_registration`]). The caller
    /// holds the tenant's lock and has checked that `old` may be replaced.
    async fn generate_replacement(
        &self,
        tenant: &TenantId,
        kind: KeyKind,
        how: Replace,
        old: KeySetRecord,
    ) -> Result<Replacement, DomainError> {
        let policy = self.rotation_policy(tenant).await?;
        let generation = old.generation + 1;
        let key = self
            .generate(policy.algorithm, Self::comment(tenant, kind, generation))
            .await?;
        let now = self.clock.now();
        let keep_old = how == Replace::Rotate && old.state == KeyState::Active;
        // Regenerate replaces at once: the old key (and a rotated one still in its grace period)
        // is denied everywhere, and the sessions it opened end. Rotate keeps the old key valid
        // for the grace period; the agents end its sessions when that is over.
        let (denied, session_epoch) = if how == Replace::Rotate {
            (old.denied_fingerprints.clone(), old.session_epoch)
        } else {
            let mut ending = Vec::new();
            if old.state == KeyState::Active {
                ending.push(old.fingerprint.clone());
            }
            ending.extend(old.previous_fingerprint.clone());
            (
                deny(&old.denied_fingerprints, ending),
                old.session_epoch + 1,
            )
        };
        // Vault first (a version SQL never names is superseded by the next one), then SQL:
        // the transaction, which holds the audit log's lock (on SQLite, the one writer), is not
        // held across Vault's round trips, so rotations of other tenants write to Vault at once.
        let vault_version = self
            .write_vault(tenant, kind, &key, old.created_at, now, &policy.name)
            .await?;
        let new = KeySetRecord {
            generation,
            state: KeyState::Active,
            public_key: key.public_openssh().to_owned(),
            fingerprint: key.fingerprint().clone(),
            vault_version,
            algorithm: policy.algorithm,
            last_rotated: now,
            next_rotation: policy.next_rotation(now),
            downloaded_at: None,
            previous_public_key: keep_old.then(|| old.public_key.clone()),
            previous_fingerprint: keep_old.then(|| old.fingerprint.clone()),
            grace_until: keep_old.then(|| policy.grace_until(now)),
            rotation_policy: policy.name.clone(),
            denied_fingerprints: denied,
            session_epoch,
            ..old.clone()
        };
        Ok(Replacement {
            tenant: tenant.clone(),
            kind,
            how,
            old,
            new,
        })
    }

    /// Records a prepared replacement in `tx`: the key set (only over the generation read: a
    /// rotation of the same key set that committed meanwhile, on another replica, makes this one
    /// a conflict, not a lost update), the job's progress, the key's history, the hosts'
    /// generations and the audit event. On an error the caller rolls back what this wrote.
    async fn apply_replacement(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        replacement: &Replacement,
        trigger: &Trigger,
    ) -> Result<(), DomainError> {
        let Replacement {
            tenant,
            kind,
            how,
            old,
            new,
        } = replacement;
        if !tx.replace_key_set(old.generation, new).await? {
            return Err(DomainError::ConcurrentModification);
        }
        trigger.record(tx, tenant, kind.secret_name()).await?;
        tx.record_key_history(
            tenant,
            *kind,
            new.generation,
            &new.fingerprint,
            new.last_rotated,
        )
        .await?;
        tx.bump_tenant_hosts(tenant).await?;
        let detail = json!({
            "kind": kind,
            "generation": new.generation,
            "newFingerprint": new.fingerprint,
            "oldFingerprint": old.fingerprint,
            "graceUntil": new.grace_until.map(iso8601),
            "algorithm": new.algorithm,
            "rotationPolicy": new.rotation_policy,
            "trigger": trigger.detail().0,
            "jobId": trigger.detail().1,
        });
        tx.append_audit(&self.event(caller, how.action(), Some(tenant), "success", detail))
            .await?;
        Ok(())
    }

    /// Tells every replica that a bulk rotation job's progress or end was recorded, so that its
    /// live views there read it again.
    pub fn job_progressed(&self, job_id: &str) {
        self.changes.changed(Change::JobProgress(job_id.to_owned()));
    }

    /// After a replacement committed (the caller announces the tenant's change): its record.
    fn replaced(&self, replacement: Replacement) -> KeySetRecord {
        let Replacement {
            tenant,
            kind,
            how,
            new,
            ..
        } = replacement;
        tracing::info!(tenant = %tenant, %kind, generation = new.generation, action = how.action(), "key replaced");
        new
    }

    /// Revokes the tenant's key: no valid key until it is regenerated. Needs no Vault call, so it
    /// works while Vault is away. Revoking a revoked key is a no-op that still succeeds.
    pub async fn revoke(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<KeySetRecord, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        let old = self.key_set_or_404(tenant, kind).await?;
        let mut tx = self.store.begin().await?;
        let new = self.revoke_in(&mut tx, caller, old).await?;
        tx.commit().await?;
        self.changes.changed(Change::Tenant(tenant.clone()));
        tracing::info!(tenant = %tenant, %kind, "key revoked");
        Ok(new)
    }

    /// Revokes `old` in `tx` (the caller commits and announces the tenant's change): every key
    /// the user had from keyward denied, the session epoch raised so that agents end its
    /// sessions, the hosts' generation raised, its certificates and grants revoked, audited as
    /// `key.revoke`.
    async fn revoke_in(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        old: KeySetRecord,
    ) -> Result<KeySetRecord, DomainError> {
        let (tenant, kind) = (&old.tenant_id, old.kind);
        // Every key the user ever had from keyward, not only the last ones.
        let mut ending = vec![old.fingerprint.clone()];
        ending.extend(old.previous_fingerprint.clone());
        ending.extend(
            tx.issued_fingerprints(tenant, kind, DENIED_KEPT as i64)
                .await?,
        );
        let new = KeySetRecord {
            state: KeyState::Revoked,
            denied_fingerprints: deny(&old.denied_fingerprints, ending),
            session_epoch: old.session_epoch + 1,
            previous_public_key: None,
            previous_fingerprint: None,
            grace_until: None,
            ..old.clone()
        };
        tx.put_key_set(&new).await?;
        tx.bump_tenant_hosts(tenant).await?;
        // The user's certificates and access grants go with its key: a regenerate later does
        // not bring them back.
        let now = self.clock.now();
        let by = caller.token_id.clone().unwrap_or_default();
        let certificates = tx.revoke_certificates_of(tenant, kind, now, &by).await?;
        let grants = tx.revoke_grants_of(tenant, kind, now, &by).await?;
        let detail = json!({
            "kind": kind,
            "generation": old.generation,
            "fingerprint": old.fingerprint,
            "alreadyRevoked": old.state == KeyState::Revoked,
            "certificatesRevoked": certificates,
            "grantsRevoked": grants,
        });
        tx.append_audit(&self.event(caller, "key.revoke", Some(tenant), "success", detail))
            .await?;
        metrics::counter!("keyward_key_operations_total", "operation" => "key.revoke", "outcome" => "success").increment(1);
        Ok(new)
    }
}

#[cfg(test)]
pub(crate) mod tests;
