//! Tenant offboarding (GDPR erasure of what keyward holds in Vault): the tenant's access ends on
//! its hosts, then its hosts are revoked, then its secrets are destroyed in Vault.
//!
//! 1. **Start** (one transaction, under the tenant's lock): the offboarding row (from then on
//!    the tenant gets no new key, token, host or secret: `409 tenant_offboarding`), every API
//!    token of the tenant revoked, both key sets revoked as [`KeyLifecycle::revoke`] does (every
//!    issued key denied, session epochs raised, certificates and grants revoked), and each live
//!    host recorded with the generation that carries this; audited `tenant.offboard.start`.
//!    After the commit the hosts' streams get the new state, and the tokens' live views end.
//! 2. **Hosts**: a host is let go (revoked, its stream cut) once its agent acknowledged that
//!    generation, i.e. removed the keys and ended the sessions; at once when it never enrolled
//!    or was revoked already; and anyway when `offboarding.agent_wait` has passed since the
//!    start (`timed_out`: an offline agent does not block the offboarding for ever). Each is
//!    audited `tenant.offboard.host` with its outcome.
//! 3. **Vault**: every secret under `{mount}/{tenant_id}/` is listed and destroyed (all versions
//!    and metadata), and the folder listed again to check it is empty; audited
//!    `tenant.offboard.vault_destroyed` with the names, then `tenant.offboard.complete`.
//!
//! Steps 2 and 3 run in a worker ([`KeyLifecycle::run_offboardings`]) on every replica, driven
//! only by the rows in SQL: after a restart, a Vault outage or an agent coming back, the next
//! look resumes where the rows say. Each change is a conditional update in the transaction of its
//! audit event, so two replicas working on one offboarding record each step once. A failed
//! step is retried at the next look and its failure (a code, never an address) shown in the
//! status.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyward_common::{HostId, KeyKind, TenantId};
use serde::Serialize;
use serde_json::json;

use super::{DomainError, KeyLifecycle};
use crate::caller::Caller;
use crate::changes::Change;
use crate::clock::iso8601;
use crate::store::{OffboardingHost, OffboardingRecord, OffboardingStep};

/// What an offboarding has done and what is pending: the answer of `DELETE` and `GET` on
/// `/api/v1/admin/tenants/{tenant_id}/offboarding`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffboardingStatus {
    pub tenant_id: String,
    /// `removing_keys`, `destroying_secrets` or `completed`.
    pub status: OffboardingStep,
    #[serde(serialize_with = "crate::clock::json::time")]
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: DateTime<Utc>,
    /// The admin token that asked.
    pub requested_by: Option<String>,
    /// Hosts whose agents have not acknowledged the removal by then are revoked anyway.
    #[serde(serialize_with = "crate::clock::json::time")]
    #[schema(value_type = String, format = DateTime)]
    pub agent_wait_until: DateTime<Utc>,
    /// API tokens of the tenant revoked at the start.
    pub tokens_revoked: i64,
    pub hosts: Vec<OffboardingHostStatus>,
    /// Secret names under the tenant's Vault path that were destroyed (all versions, metadata).
    pub vault_destroyed: Vec<String>,
    #[serde(serialize_with = "crate::clock::json::optional_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub vault_destroyed_at: Option<DateTime<Utc>>,
    pub pending: OffboardingPending,
    /// Why the last attempt at the current step failed: a problem code such as
    /// `vault_unavailable`, `vault_sealed`, `vault_denied`, `database_unavailable`.
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::clock::json::optional_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<DateTime<Utc>>,
}

/// One host of the offboarded tenant.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffboardingHostStatus {
    pub host_id: String,
    /// The generation that removes the keys and ends the sessions.
    pub target_generation: i64,
    /// The generation its agent last acknowledged.
    pub applied_generation: i64,
    /// `waiting` (for its agent), `acknowledged`, `timed_out` (revoked without the agent's
    /// acknowledgement), `never_enrolled` or `already_revoked`.
    pub state: String,
    #[serde(serialize_with = "crate::clock::json::optional_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What is left to do.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffboardingPending {
    /// Hosts whose agents have not yet acknowledged the removal (not yet revoked).
    pub hosts: Vec<String>,
    /// The tenant's Vault secrets are not yet destroyed.
    pub vault_secrets: bool,
}

/// Why a step failed, as the status shows it: a problem code, never Vault's address or a path.
fn failure_code(error: &DomainError) -> &'static str {
    match error {
        DomainError::Vault(crate::vault::VaultError::Denied { .. }) => "vault_denied",
        other => other.code(),
    }
}

/// How a waiting host is let go now, if it is.
fn release_of(
    host: &OffboardingHost,
    wait_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<&'static str> {
    if host.host_revoked {
        Some("already_revoked")
    } else if !host.enrolled {
        Some("never_enrolled")
    } else if host.applied_generation >= host.target_generation {
        Some("acknowledged")
    } else if now >= wait_until {
        Some("timed_out")
    } else {
        None
    }
}

impl KeyLifecycle {
    /// How offboardings wait for agents and how often the worker looks.
    pub fn with_offboarding(mut self, offboarding: crate::config::OffboardingConfig) -> Self {
        self.offboarding = offboarding;
        self
    }

    /// `tenant_offboarding` when the tenant is being or was offboarded.
    pub(super) async fn refuse_offboarded(&self, tenant: &TenantId) -> Result<(), DomainError> {
        match self.store.offboarding(tenant).await? {
            Some(_) => Err(DomainError::TenantOffboarded(tenant.clone())),
            None => Ok(()),
        }
    }

    /// Starts offboarding `tenant` (step 1 of the module doc), or, when it was started before,
    /// changes nothing. The status as it is now, and whether this call started it.
    pub async fn offboard_tenant(
        &self,
        caller: &Caller,
        tenant: &TenantId,
    ) -> Result<(OffboardingStatus, bool), DomainError> {
        let started = {
            let _guard = self.locks.lock(tenant).await;
            self.start_offboarding(caller, tenant).await?
        };
        if let Some(tokens) = &started {
            self.changes.changed(Change::Tenant(tenant.clone()));
            for token in tokens {
                self.changes.changed(Change::TokenRevoked(token.clone()));
            }
            self.offboarding_started.notify_one();
            tracing::info!(tenant = %tenant, "tenant offboarding started");
        }
        let status = self
            .offboarding_status(tenant)
            .await?
            .ok_or(DomainError::Internal)?;
        Ok((status, started.is_some()))
    }

    /// Step 1 in one transaction; the revoked tokens' ids, or `None` when already started.
    async fn start_offboarding(
        &self,
        caller: &Caller,
        tenant: &TenantId,
    ) -> Result<Option<Vec<String>>, DomainError> {
        if self.store.tenant(tenant).await?.is_none() {
            return Err(DomainError::TenantNotFound(tenant.clone()));
        }
        let mut key_sets = Vec::new();
        for kind in KeyKind::ALL {
            key_sets.push(
                self.store
                    .key_set(tenant, kind)
                    .await?
                    .ok_or_else(|| DomainError::TenantNotFound(tenant.clone()))?,
            );
        }
        let now = self.now();
        let wait = chrono::Duration::from_std(self.offboarding.agent_wait)
            .map_err(|_| DomainError::Internal)?;
        let mut tx = self.store.begin().await?;
        // Read in the transaction: the audit log's lock orders it with any other start.
        if tx.tenant_offboarded(tenant).await? {
            return Ok(None);
        }
        let tokens = tx.revoke_tenant_tokens(tenant, now).await?;
        // Its second factors go with its tokens: their sealed seeds are the tenant's secrets.
        let mfa_factors = tx
            .delete_owner_mfa(&super::MfaOwner::Tenant(tenant.clone()).key())
            .await?;
        let record = OffboardingRecord {
            tenant_id: tenant.clone(),
            step: OffboardingStep::RemovingKeys,
            requested_at: now,
            requested_by: caller.token_id.clone(),
            agent_wait_until: now + wait,
            tokens_revoked: i64::try_from(tokens.len()).map_err(|_| DomainError::Internal)?,
            vault_destroyed: Vec::new(),
            vault_destroyed_at: None,
            last_error: None,
            completed_at: None,
        };
        if !tx.insert_offboarding(&record).await? {
            return Ok(None);
        }
        for old in key_sets {
            self.revoke_in(&mut tx, caller, old).await?;
        }
        let hosts = tx.record_offboarding_hosts(tenant).await?;
        let detail = json!({
            "tokensRevoked": tokens,
            "mfaFactorsDeleted": mfa_factors,
            "hosts": hosts,
            "agentWaitUntil": iso8601(record.agent_wait_until),
        });
        tx.append_audit(&self.event(
            caller,
            "tenant.offboard.start",
            Some(tenant),
            "success",
            detail,
        ))
        .await?;
        tx.commit().await?;
        Ok(Some(tokens))
    }

    /// The tenant's offboarding as it stands; `None` when it was never asked for.
    pub async fn offboarding_status(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<OffboardingStatus>, DomainError> {
        let Some(o) = self.store.offboarding(tenant).await? else {
            return Ok(None);
        };
        let hosts: Vec<OffboardingHostStatus> = self
            .store
            .offboarding_hosts(tenant)
            .await?
            .into_iter()
            .map(|h| OffboardingHostStatus {
                host_id: h.host_id.to_string(),
                target_generation: h.target_generation,
                applied_generation: h.applied_generation,
                state: h.outcome.clone().unwrap_or_else(|| "waiting".to_owned()),
                revoked_at: h.revoked_at,
            })
            .collect();
        let pending = OffboardingPending {
            hosts: hosts
                .iter()
                .filter(|h| h.state == "waiting")
                .map(|h| h.host_id.clone())
                .collect(),
            vault_secrets: o.step != OffboardingStep::Completed,
        };
        Ok(Some(OffboardingStatus {
            tenant_id: o.tenant_id.to_string(),
            status: o.step,
            requested_at: o.requested_at,
            requested_by: o.requested_by,
            agent_wait_until: o.agent_wait_until,
            tokens_revoked: o.tokens_revoked,
            hosts,
            vault_destroyed: o.vault_destroyed,
            vault_destroyed_at: o.vault_destroyed_at,
            pending,
            last_error: o.last_error,
            completed_at: o.completed_at,
        }))
    }

    /// Works on every offboarding in progress every `offboarding.check_interval`, and at once
    /// when one starts on this replica. Runs on every replica; resumes from SQL after a restart.
    pub async fn run_offboardings(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.offboarding.check_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.offboarding_started.notified() => {}
            }
            let open = match self.store.open_offboardings().await {
                Ok(open) => open,
                Err(e) => {
                    tracing::warn!(error = %e, "listing offboardings failed; trying again");
                    continue;
                }
            };
            for tenant in open {
                self.advance_offboarding(&tenant).await;
            }
        }
    }

    /// Takes the tenant's offboarding as far as it can go now; a failure is recorded in its
    /// status and retried at the next look.
    pub async fn advance_offboarding(&self, tenant: &TenantId) {
        let outcome = async {
            while self.offboarding_step(tenant).await? {}
            Ok::<_, DomainError>(())
        }
        .await;
        let error = outcome.as_ref().err().map(failure_code);
        // Written (and logged) only when it changes: an offboarding waiting a day for an
        // offline agent, or for Vault, is looked at every few seconds.
        let before = match self.store.offboarding(tenant).await {
            Ok(record) => record.and_then(|o| o.last_error),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "could not read an offboarding's state");
                return;
            }
        };
        if before.as_deref() == error {
            return;
        }
        if let Err(e) = &outcome {
            tracing::warn!(tenant = %tenant, error = %e, "an offboarding step failed; it is retried");
        }
        if let Err(e) = self.store.record_offboarding_error(tenant, error).await {
            tracing::warn!(tenant = %tenant, error = %e, "could not record an offboarding's state");
        }
    }

    /// One step of the offboarding; whether it moved to the next step.
    async fn offboarding_step(&self, tenant: &TenantId) -> Result<bool, DomainError> {
        let Some(o) = self.store.offboarding(tenant).await? else {
            return Ok(false);
        };
        match o.step {
            OffboardingStep::RemovingKeys => self.release_hosts(&o).await,
            OffboardingStep::DestroyingSecrets => self.destroy_secrets(&o).await,
            OffboardingStep::Completed => Ok(false),
        }
    }

    /// Step 2: lets go of every host that may be let go; once none waits, moves on.
    async fn release_hosts(&self, o: &OffboardingRecord) -> Result<bool, DomainError> {
        let tenant = &o.tenant_id;
        let now = self.now();
        let mut waiting = 0;
        for host in self.store.offboarding_hosts(tenant).await? {
            if host.outcome.is_some() {
                continue;
            }
            match release_of(&host, o.agent_wait_until, now) {
                Some(outcome) => self.release_host(tenant, &host, outcome).await?,
                None => waiting += 1,
            }
        }
        if waiting > 0 {
            return Ok(false);
        }
        let mut tx = self.store.begin_unaudited().await?;
        let moved = tx
            .advance_offboarding(
                tenant,
                OffboardingStep::RemovingKeys,
                OffboardingStep::DestroyingSecrets,
                now,
            )
            .await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// Revokes one host of the offboarding, with its outcome, in the transaction of its audit
    /// event; its stream is cut after the commit.
    async fn release_host(
        &self,
        tenant: &TenantId,
        host: &OffboardingHost,
        outcome: &'static str,
    ) -> Result<(), DomainError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        if !tx
            .release_offboarding_host(tenant, &host.host_id, outcome, now)
            .await?
        {
            return Ok(());
        }
        let revoked = tx.revoke_host(&host.host_id, now).await?;
        let detail = json!({
            "hostId": host.host_id,
            "outcome": outcome,
            "targetGeneration": host.target_generation,
            "appliedGeneration": host.applied_generation,
            "wasActive": revoked,
        });
        tx.append_audit(&self.event(
            &Caller::system(),
            "tenant.offboard.host",
            Some(tenant),
            "success",
            detail,
        ))
        .await?;
        tx.commit().await?;
        self.host_let_go(tenant, &host.host_id);
        Ok(())
    }

    fn host_let_go(&self, tenant: &TenantId, host: &HostId) {
        tracing::info!(tenant = %tenant, host = %host, "offboarded tenant's host revoked");
        self.changes.changed(Change::HostRevoked(host.clone()));
        // The bastions drop the tenant's route.
        self.changes.changed(Change::Tenant(tenant.clone()));
    }

    /// Step 3: destroys every secret under the tenant's Vault path, checks that none is left,
    /// and completes the offboarding.
    async fn destroy_secrets(&self, o: &OffboardingRecord) -> Result<bool, DomainError> {
        let tenant = &o.tenant_id;
        let mut destroyed = o.vault_destroyed.clone();
        for name in self.vault.tenant_secret_names(tenant).await? {
            if let Err(e) = self.vault.destroy_tenant_secret(tenant, &name).await {
                // What is gone is gone: the status names it even though the step failed.
                let mut tx = self.store.begin_unaudited().await?;
                tx.record_vault_destroyed(tenant, &destroyed, None).await?;
                tx.commit().await?;
                return Err(e.into());
            }
            destroyed.push(name);
        }
        let left = self.vault.tenant_secret_names(tenant).await?;
        if !left.is_empty() {
            tracing::warn!(tenant = %tenant, left = ?left, "Vault still lists secrets of an offboarded tenant");
            return Err(DomainError::Vault(crate::vault::VaultError::BadResponse {
                operation: format!("destroy {tenant}"),
                reason: format!("{} secrets still listed", left.len()),
            }));
        }
        destroyed.sort();
        destroyed.dedup();
        let now = self.now();
        let mut tx = self.store.begin().await?;
        if !tx
            .advance_offboarding(
                tenant,
                OffboardingStep::DestroyingSecrets,
                OffboardingStep::Completed,
                now,
            )
            .await?
        {
            return Ok(false);
        }
        tx.record_vault_destroyed(tenant, &destroyed, Some(now))
            .await?;
        let system = Caller::system();
        tx.append_audit(&self.event(
            &system,
            "tenant.offboard.vault_destroyed",
            Some(tenant),
            "success",
            json!({ "secrets": destroyed }),
        ))
        .await?;
        tx.append_audit(&self.event(
            &system,
            "tenant.offboard.complete",
            Some(tenant),
            "success",
            json!({ "requestedAt": iso8601(o.requested_at) }),
        ))
        .await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant, "tenant offboarding completed");
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
