//! A host's desired state, built from SQL: the admin user with only managed keys, the tenant user
//! with its own lines preserved, each with the current key and a rotated key in its grace period,
//! and the files sshd reads for certificates and revocation ([`super::sshd_files`]); on a
//! bastion, its jump user too.

use chrono::{DateTime, Utc};
use keyward_common::proto::{
    DesiredState, Key, KeyKind as ProtoKind, ManagedUser, Mode, SessionRecording,
};
use keyward_common::sshd_files::MAX_JUMP_PRINCIPALS;
use keyward_common::{HostId, KeyKind, UnixUser};

use super::sshd_files::{SshdInputs, jump_user, sshd_files};
use crate::clock::iso8601;
use crate::store::{HostRole, KeySetRecord, KeyState, RecordingPolicy, Store, StoreError};

/// How long a revoked certificate stays in the hosts' revocation lists after its validity ended:
/// a host whose clock is behind would still take it.
const REVOKED_CERTIFICATES_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// How long a revoked certificate's key id stays in the agents' revoked ids after its revocation,
/// whatever its validity: a session outlives its certificate, and a host away for a while must
/// still end it when it comes back.
const REVOKED_IDS_KEPT: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// Why a state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateBuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("host {0} is unknown or revoked")]
    NoHost(HostId),
}

fn keys_of(ks: &KeySetRecord, now: DateTime<Utc>) -> Vec<Key> {
    let kind = match ks.kind {
        KeyKind::Admin => ProtoKind::Admin,
        KeyKind::Tenant => ProtoKind::Tenant,
    };
    // A registered FIDO2 key's line asks for user verification when the tenant's policy says
    // so (`verify_required` follows it); sshd ignores the option on other key types, so it is
    // written for security keys only.
    let verify = |public_key: &str| ks.verify_required && public_key.starts_with("sk-");
    let mut keys = Vec::new();
    if ks.state == KeyState::Active {
        keys.push(Key {
            kind: kind.into(),
            generation: ks.generation,
            public_key: ks.public_key.clone(),
            fingerprint: ks.fingerprint.to_string(),
            expires_at: String::new(),
            verify_required: verify(&ks.public_key),
        });
        let in_grace = ks.grace_until.filter(|until| *until > now);
        if let (Some(until), Some(public_key), Some(fingerprint)) =
            (in_grace, &ks.previous_public_key, &ks.previous_fingerprint)
        {
            keys.push(Key {
                kind: kind.into(),
                generation: ks.generation - 1,
                public_key: public_key.clone(),
                fingerprint: fingerprint.to_string(),
                expires_at: iso8601(until),
                verify_required: verify(public_key),
            });
        }
    }
    keys
}

fn managed_user(user: &str, mode: Mode, ks: &KeySetRecord, now: DateTime<Utc>) -> ManagedUser {
    let mut denied: Vec<String> = ks
        .denied_fingerprints
        .iter()
        .map(|f| f.to_string())
        .collect();
    // A rotated key past its grace period is denied too.
    if let Some(previous) = &ks.previous_fingerprint
        && !keys_of(ks, now)
            .iter()
            .any(|k| k.fingerprint == previous.as_str())
        && !ks.denied_fingerprints.contains(previous)
    {
        denied.push(previous.to_string());
    }
    ManagedUser {
        user: user.to_owned(),
        mode: mode.into(),
        keys: keys_of(ks, now),
        denied_fingerprints: denied,
        session_epoch: u64::try_from(ks.session_epoch).unwrap_or_default(),
        revoked: ks.state == KeyState::Revoked,
        principals: Vec::new(),
        revoked_certificate_ids: Vec::new(),
        jump_principals: Vec::new(),
        recording: None,
    }
}

/// What the tenant's recording policy asks of the agent for one of its users (`None`: its
/// sessions are not recorded).
fn recording(policy: RecordingPolicy, kind: KeyKind) -> Option<SessionRecording> {
    let recorded = match kind {
        KeyKind::Admin => policy.record_admin,
        KeyKind::Tenant => policy.record_tenant,
    };
    recorded.then_some(SessionRecording {
        input: policy.record_input,
    })
}

/// What a host's state is built from besides SQL.
#[derive(Debug, Clone, Copy)]
pub struct StateInputs<'a> {
    /// The SSH certificate authority's keys sshd is to trust (none when it is not configured).
    pub ca_keys: &'a [String],
    /// A bastion's jump user (`bastion.jump_user`).
    pub jump_user: &'a UnixUser,
}

/// The whole desired state of `host` now, with the host's current generation. A bastion's
/// state also has the jump user (when certificates are configured: it logs in by no other way),
/// and its revocation list every tenant's revoked certificates.
pub async fn desired_state(
    store: &Store,
    host: &HostId,
    now: DateTime<Utc>,
    inputs: StateInputs<'_>,
) -> Result<DesiredState, StateBuildError> {
    let record = store
        .host(host)
        .await?
        .filter(|h| h.revoked_at.is_none())
        .ok_or_else(|| StateBuildError::NoHost(host.clone()))?;
    let tenant = store
        .tenant(&record.tenant_id)
        .await?
        .ok_or_else(|| StateBuildError::NoHost(host.clone()))?;
    let policy = store.recording_policy(&tenant.tenant_id).await?;
    let mut users = Vec::new();
    for (kind, user, mode) in [
        (KeyKind::Admin, &tenant.admin_user, Mode::Exclusive),
        (KeyKind::Tenant, &tenant.tenant_user, Mode::Preserve),
    ] {
        if let Some(ks) = store.key_set(&tenant.tenant_id, kind).await? {
            let mut managed = managed_user(user.as_str(), mode, &ks, now);
            managed.recording = recording(policy, kind);
            users.push((kind, managed));
        }
    }
    let generation = u64::try_from(record.desired_generation).unwrap_or_default();
    let bastion = record.role == HostRole::Bastion;
    let revoked_certificates = store
        .revoked_certificates(
            (!bastion).then_some(&tenant.tenant_id),
            now - REVOKED_CERTIFICATES_KEPT,
            now - REVOKED_IDS_KEPT,
        )
        .await?;
    let sshd = sshd_files(
        host,
        &tenant.tenant_id,
        generation,
        &mut users,
        SshdInputs {
            ca_keys: inputs.ca_keys,
            revoked_certificates: &revoked_certificates,
            listed_after: now - REVOKED_CERTIFICATES_KEPT,
        },
    );
    let mut users: Vec<ManagedUser> = users.into_iter().map(|(_, user)| user).collect();
    if bastion && !inputs.ca_keys.is_empty() {
        let routes = store.jump_routes(MAX_JUMP_PRINCIPALS + 1).await?;
        users.push(jump_user(
            inputs.jump_user,
            generation,
            &routes,
            &revoked_certificates,
        ));
    }
    Ok(DesiredState {
        host_id: host.to_string(),
        generation,
        issued_at: iso8601(now),
        users,
        sshd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_says_which_users_are_recorded_and_whether_with_keystrokes() {
        let default = RecordingPolicy::default();
        assert_eq!(
            recording(default, KeyKind::Admin),
            Some(SessionRecording { input: false })
        );
        assert_eq!(recording(default, KeyKind::Tenant), None);
        let all = RecordingPolicy {
            record_admin: true,
            record_tenant: true,
            record_input: true,
        };
        assert_eq!(
            recording(all, KeyKind::Tenant),
            Some(SessionRecording { input: true })
        );
        let none = RecordingPolicy {
            record_admin: false,
            ..all
        };
        assert_eq!(recording(none, KeyKind::Admin), None);
    }
}
