//! A check-and-set write whose answer was lost.
//!
//! When the active node dies after it committed a write but before its answer arrived, the write
//! is applied and keyward does not know. Repeated on the new active node, the write meets a
//! check-and-set mismatch: the version it expected is gone — taken by itself. So after a lost
//! answer a mismatch is settled by reading the current version back: if it holds exactly the key
//! set we wrote (its public key and creation time; a new key pair is never made twice), the write
//! succeeded at that version; anything else is a real mismatch, someone else's write.

use super::{KeySetSecret, VersionedKeySet};

/// The version our lost write created, if `current` (the key set as Vault holds it now) is it.
pub fn settle(ours: &KeySetSecret, cas: u64, current: Option<&VersionedKeySet>) -> Option<u64> {
    let current = current?;
    (current.version > cas
        && current.secret.public_key == ours.public_key
        && current.secret.created_at == ours.created_at)
        .then_some(current.version)
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;

    fn key_set(public_key: &str, created_at: &str) -> KeySetSecret {
        KeySetSecret {
            private_key: Zeroizing::new("-----BEGIN OPENSSH PRIVATE KEY-----".into()),
            public_key: public_key.into(),
            created_at: created_at.into(),
            last_rotated: created_at.into(),
            rotation_policy: "90_days".into(),
            origin: keyward_common::KeyOrigin::Generated,
        }
    }

    fn at(version: u64, secret: KeySetSecret) -> VersionedKeySet {
        VersionedKeySet { secret, version }
    }

    #[test]
    fn our_own_write_is_a_success_at_its_version() {
        let ours = key_set("ssh-ed25519 AAAAours", "2026-12-06T12:00:00Z");
        assert_eq!(settle(&ours, 3, Some(&at(4, ours.clone()))), Some(4));
    }

    #[test]
    fn someone_elses_write_stays_a_mismatch() {
        let ours = key_set("ssh-ed25519 AAAAours", "2026-12-06T12:00:00Z");
        let theirs = key_set("ssh-ed25519 AAAAtheirs", "2026-12-06T12:00:00Z");
        assert_eq!(settle(&ours, 3, Some(&at(4, theirs))), None);
        let same_key_other_time = key_set("ssh-ed25519 AAAAours", "2026-12-06T12:00:01Z");
        assert_eq!(settle(&ours, 3, Some(&at(4, same_key_other_time))), None);
    }

    #[test]
    fn an_old_or_missing_version_is_not_ours() {
        let ours = key_set("ssh-ed25519 AAAAours", "2026-12-06T12:00:00Z");
        assert_eq!(settle(&ours, 3, Some(&at(3, ours.clone()))), None);
        assert_eq!(settle(&ours, 0, None), None);
    }
}
