//! Keys people bring: registering a public key in place of a generated one, the tenant's policy
//! for such keys, and the reminder when one is overdue.
//!
//! A registration is a rotation whose new key keyward did not make: the same order (Vault with
//! check-and-set, then one SQL transaction with the key set over the generation read, its
//! history, the hosts' generations and the audit event), the same grace for the key it replaces
//! (the rotation policy's), the same next rotation time. Vault holds the public key and the
//! metadata at the key set's usual path, and no private key ([`KeySetSecret::origin`]); the one
//! download is refused (`key_registered`), and so are rotate and regenerate, which would put a
//! key of keyward's in place of the owner's: keyward cannot replace a key it never held, it
//! reminds. When a registered key's rotation time passes, the scheduler records
//! `key.rotation_reminder` once per generation and the API shows the key set overdue. Its owner
//! can go back to a generated key ([`KeyLifecycle::remove_registration`]): a regeneration whose
//! new key is keyward's again, downloadable once.
//!
//! The tenant's policy ([`KeyRegistrationPolicy`]) can take FIDO2 security keys only, and have
//! their lines carry sshd's `verify-required` (a PIN or biometric as well as a touch). A policy
//! change reaches keys already registered: their key sets' `verify_required` follows it and the
//! tenant's hosts are sent a new state.

use chrono::{DateTime, Utc};
use keyward_common::{KeyKind, KeyOrigin, TenantId};
use serde_json::json;
use zeroize::Zeroizing;

use super::registered_key::RegisteredKey;
use super::{DomainError, KeyLifecycle, PolicySource, Replace, Replacement};
use crate::caller::Caller;
use crate::changes::Change;
use crate::clock::iso8601;
use crate::store::{KeyRegistrationPolicyRecord, KeySetRecord, KeyState};
use crate::vault::{KeySetSecret, VaultError};

/// The audit action of going back from a registered key to a generated one.
const REMOVED: &str = "key.registration_removed";

/// How many overdue registered key sets one scheduler round reminds (the rest next round).
const REMINDERS_PER_ROUND: i64 = 1000;

/// What a tenant's registered keys must be: the tenant's own policy (set by an admin), or the
/// default (any accepted type, no `verify-required`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRegistrationPolicy {
    /// Only `sk-ssh-ed25519@openssh.com` and `sk-ecdsa-sha2-nistp256@openssh.com` are taken.
    pub require_fido2: bool,
    /// The lines of FIDO2 keys carry `verify-required`.
    pub verify_required: bool,
    pub source: PolicySource,
    pub updated_at: Option<DateTime<Utc>>,
}

impl KeyRegistrationPolicy {
    fn default_policy() -> Self {
        Self {
            require_fido2: false,
            verify_required: false,
            source: PolicySource::Default,
            updated_at: None,
        }
    }

    fn from_record(record: &KeyRegistrationPolicyRecord) -> Self {
        Self {
            require_fido2: record.require_fido2,
            verify_required: record.verify_required,
            source: PolicySource::Tenant,
            updated_at: Some(record.updated_at),
        }
    }
}

impl KeyLifecycle {
    /// The key registration policy that applies to `tenant`.
    pub async fn key_registration_policy(
        &self,
        tenant: &TenantId,
    ) -> Result<KeyRegistrationPolicy, DomainError> {
        Ok(self
            .store
            .key_registration_policy(tenant)
            .await?
            .map_or_else(KeyRegistrationPolicy::default_policy, |r| {
                KeyRegistrationPolicy::from_record(&r)
            }))
    }

    /// Sets (`Some((require_fido2, verify_required))`) or resets (`None`) a tenant's own key
    /// registration policy. Keys already registered follow its `verify_required` at once.
    /// Audited (`key_registration_policy.set` / `.reset`).
    pub async fn set_key_registration_policy(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        policy: Option<(bool, bool)>,
    ) -> Result<KeyRegistrationPolicy, DomainError> {
        let action = if policy.is_some() {
            "key_registration_policy.set"
        } else {
            "key_registration_policy.reset"
        };
        let result = self
            .set_registration_policy_locked(caller, tenant, policy, action)
            .await;
        self.failure_audited(caller, action, tenant, result).await
    }

    async fn set_registration_policy_locked(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        policy: Option<(bool, bool)>,
        action: &'static str,
    ) -> Result<KeyRegistrationPolicy, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        if self.store.tenant(tenant).await?.is_none() {
            return Err(DomainError::TenantNotFound(tenant.clone()));
        }
        let record = policy.map(
            |(require_fido2, verify_required)| KeyRegistrationPolicyRecord {
                tenant_id: tenant.clone(),
                require_fido2,
                verify_required,
                updated_at: self.clock.now(),
            },
        );
        let applied = record.as_ref().map_or_else(
            KeyRegistrationPolicy::default_policy,
            KeyRegistrationPolicy::from_record,
        );
        let mut tx = self.store.begin().await?;
        tx.put_key_registration_policy(tenant, record.as_ref())
            .await?;
        let changed = tx
            .set_registered_verify_required(tenant, applied.verify_required)
            .await?;
        if changed > 0 {
            tx.bump_tenant_hosts(tenant).await?;
        }
        let detail = json!({
            "requireFido2": applied.require_fido2,
            "verifyRequired": applied.verify_required,
            "keySetsChanged": changed,
        });
        tx.append_audit(&self.event(caller, action, Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        if changed > 0 {
            self.changes.changed(Change::Tenant(tenant.clone()));
        }
        tracing::info!(tenant = %tenant, require_fido2 = applied.require_fido2, verify_required = applied.verify_required, action, "key registration policy changed");
        Ok(applied)
    }

    /// Registers `public_key` (one OpenSSH public key line, as its owner sent it) as the key of
    /// (tenant, kind): a new generation that keyward holds no private key for. The key it
    /// replaces keeps its grace period, as in a rotation; a revoked key set becomes active again
    /// with this key. Audited as `key.register` (fingerprint, type, who), refusals too.
    pub async fn register_key(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
        public_key: &str,
    ) -> Result<KeySetRecord, DomainError> {
        let result = self.register_locked(caller, tenant, kind, public_key).await;
        self.key_operation_done(caller, "key.register", tenant, result)
            .await
    }

    async fn register_locked(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
        public_key: &str,
    ) -> Result<KeySetRecord, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        let old = self.key_set_or_404(tenant, kind).await?;
        let registration = self.key_registration_policy(tenant).await?;
        let key = RegisteredKey::parse(public_key, registration.require_fido2)
            .map_err(DomainError::KeyRefused)?;
        // A key keyward replaced or revoked stays dead, whoever brings it back.
        if old.denied_fingerprints.contains(&key.fingerprint)
            || old.previous_fingerprint.as_ref() == Some(&key.fingerprint)
            || (old.state == KeyState::Active && old.fingerprint == key.fingerprint)
        {
            return Err(
                if old.fingerprint == key.fingerprint && old.state == KeyState::Active {
                    DomainError::KeyAlreadyRegistered
                } else {
                    DomainError::KeyDenied
                },
            );
        }
        let policy = self.rotation_policy(tenant).await?;
        let now = self.clock.now();
        let keep_old = old.state == KeyState::Active;
        let secret = KeySetSecret {
            private_key: Zeroizing::new(String::new()),
            public_key: key.public_openssh.clone(),
            created_at: iso8601(old.created_at),
            last_rotated: iso8601(now),
            rotation_policy: policy.name.clone(),
            origin: KeyOrigin::Registered,
        };
        let cas = self.current_vault_version(tenant, kind).await?;
        let vault_version = match self.vault.write_key_set(tenant, kind, &secret, cas).await {
            Ok(version) => i64::try_from(version).map_err(|_| DomainError::Internal)?,
            Err(VaultError::CasMismatch { .. }) => return Err(DomainError::ConcurrentModification),
            Err(e) => return Err(e.into()),
        };
        let new = KeySetRecord {
            generation: old.generation + 1,
            state: KeyState::Active,
            public_key: key.public_openssh.clone(),
            fingerprint: key.fingerprint.clone(),
            vault_version,
            last_rotated: now,
            next_rotation: policy.next_rotation(now),
            downloaded_at: None,
            previous_public_key: keep_old.then(|| old.public_key.clone()),
            previous_fingerprint: keep_old.then(|| old.fingerprint.clone()),
            grace_until: keep_old.then(|| policy.grace_until(now)),
            rotation_policy: policy.name.clone(),
            origin: KeyOrigin::Registered,
            verify_required: registration.verify_required,
            reminded_generation: 0,
            ..old.clone()
        };
        let replacement = Replacement {
            tenant: tenant.clone(),
            kind,
            how: Replace::Rotate,
            old,
            new,
        };
        let mut tx = self.store.begin().await?;
        if !tx
            .replace_key_set(replacement.old.generation, &replacement.new)
            .await?
        {
            return Err(DomainError::ConcurrentModification);
        }
        let new = &replacement.new;
        tx.record_key_history(tenant, kind, new.generation, &new.fingerprint, now)
            .await?;
        tx.bump_tenant_hosts(tenant).await?;
        let detail = json!({
            "kind": kind,
            "generation": new.generation,
            "fingerprint": new.fingerprint,
            "keyType": key.key_type,
            "fido2": key.fido2,
            "verifyRequired": key.fido2 && new.verify_required,
            "oldFingerprint": replacement.old.fingerprint,
            "oldOrigin": replacement.old.origin.as_str(),
            "graceUntil": new.grace_until.map(iso8601),
            "nextRotation": iso8601(new.next_rotation),
        });
        tx.append_audit(&self.event(caller, "key.register", Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        self.changes.changed(Change::Tenant(tenant.clone()));
        self.schedule_changed.notify_one();
        tracing::info!(tenant = %tenant, %kind, generation = new.generation, key_type = key.key_type, "key registered");
        Ok(replacement.new)
    }

    /// Goes back from a registered key to a generated one: keyward generates a key of the
    /// tenant's policy algorithm for (tenant, kind) as a regeneration does (Vault first, a new
    /// version with `origin: generated`, then SQL), and the registered key stops working at
    /// once. A key set that is not registered is `key_not_registered`. Audited as
    /// `key.registration_removed` (both fingerprints, who), refusals too.
    pub async fn remove_registration(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<KeySetRecord, DomainError> {
        let result = self.remove_registration_locked(caller, tenant, kind).await;
        self.key_operation_done(caller, REMOVED, tenant, result)
            .await
    }

    async fn remove_registration_locked(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        kind: KeyKind,
    ) -> Result<KeySetRecord, DomainError> {
        let _guard = self.locks.lock(tenant).await;
        let old = self.key_set_or_404(tenant, kind).await?;
        refuse_generated(&old)?;
        let mut replacement = self
            .generate_replacement(tenant, kind, Replace::Regenerate, old)
            .await?;
        replacement.new.origin = KeyOrigin::Generated;
        replacement.new.verify_required = false;
        let Replacement { old, new, .. } = &replacement;
        let mut tx = self.store.begin().await?;
        if !tx.replace_key_set(old.generation, new).await? {
            return Err(DomainError::ConcurrentModification);
        }
        tx.record_key_history(
            tenant,
            kind,
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
            "origin": new.origin.as_str(),
            "algorithm": new.algorithm,
            "rotationPolicy": new.rotation_policy,
        });
        tx.append_audit(&self.event(caller, REMOVED, Some(tenant), "success", detail))
            .await?;
        tx.commit().await?;
        self.changes.changed(Change::Tenant(tenant.clone()));
        self.schedule_changed.notify_one();
        tracing::info!(tenant = %tenant, %kind, generation = new.generation, "registered key replaced by a generated one");
        Ok(replacement.new)
    }

    /// Records a `key.rotation_reminder` for each registered key set whose rotation time has
    /// passed and that was not reminded for its generation yet (the scheduler's round). Returns
    /// how many were reminded.
    pub async fn remind_overdue(&self, now: DateTime<Utc>) -> Result<usize, DomainError> {
        let overdue = self
            .store
            .unreminded_overdue_key_sets(now, REMINDERS_PER_ROUND)
            .await?;
        let mut reminded = 0;
        for (tenant, kind) in overdue {
            let _guard = self.locks.lock(&tenant).await;
            let Some(ks) = self.store.key_set(&tenant, kind).await? else {
                continue;
            };
            let mut tx = self.store.begin().await?;
            if !tx.mark_reminded(&tenant, kind, ks.generation).await? {
                continue;
            }
            let detail = json!({
                "kind": kind,
                "generation": ks.generation,
                "fingerprint": ks.fingerprint,
                "nextRotation": iso8601(ks.next_rotation),
                "rotationPolicy": ks.rotation_policy,
            });
            tx.append_audit(&self.event(
                &Caller::system(),
                "key.rotation_reminder",
                Some(&tenant),
                "success",
                detail,
            ))
            .await?;
            tx.commit().await?;
            tracing::info!(tenant = %tenant, %kind, generation = ks.generation, "registered key overdue: reminder recorded");
            reminded += 1;
        }
        Ok(reminded)
    }
}

/// Whether `ks` is a registered key past its rotation time at `now`: its owner should replace it.
pub fn overdue(ks: &KeySetRecord, now: DateTime<Utc>) -> bool {
    ks.origin == KeyOrigin::Registered && ks.state == KeyState::Active && ks.next_rotation <= now
}

/// Refuses what would replace or hand out a registered key: keyward holds no private key for
/// it and does not put one of its own in the owner's place.
pub(super) fn refuse_registered(ks: &KeySetRecord) -> Result<(), DomainError> {
    if ks.origin == KeyOrigin::Registered {
        return Err(DomainError::KeyRegistered);
    }
    Ok(())
}

/// Refuses to remove the registration of a key keyward generated (`key_not_registered`).
pub(super) fn refuse_generated(ks: &KeySetRecord) -> Result<(), DomainError> {
    if ks.origin != KeyOrigin::Registered {
        return Err(DomainError::KeyNotRegistered);
    }
    Ok(())
}
