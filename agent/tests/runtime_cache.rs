//! The cached state: round trip, and refusal of a cache that another key signed or that names
//! another host (a state file planted or left over must never be enforced).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod runtime_support;

use ed25519_dalek::SigningKey;
use keyward_agent::state_dir::{Epochs, StateDirError};
use keyward_common::signing::{StateError, sign_state};
use runtime_support::*;

#[test]
fn the_cache_round_trips_with_its_epochs() {
    let pki = Pki::new();
    let enrolled = Enrolled::new(&pki, "https://127.0.0.1:1", Lifetime::Fresh);
    let dir = enrolled.state_dir();
    assert!(
        dir.load_state(&enrolled.signing.verifying_key(), HOST_ID)
            .unwrap()
            .is_none()
    );
    assert!(dir.load_epochs().unwrap().is_empty());

    let signed = enrolled.sign(&state(12, &[("kwadmin", 4)]));
    let epochs = Epochs::from([("kwadmin".to_owned(), 4)]);
    dir.store_state(&signed, &epochs).unwrap();
    let cached = dir
        .load_state(&enrolled.signing.verifying_key(), HOST_ID)
        .unwrap()
        .unwrap();
    assert_eq!(cached.signed, signed);
    assert_eq!(cached.state.generation, 12);
    assert_eq!(dir.load_epochs().unwrap(), epochs);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.file("state.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    dir.remove_state().unwrap();
    assert!(
        dir.load_state(&enrolled.signing.verifying_key(), HOST_ID)
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_cache_signed_by_another_key_or_for_another_host_is_refused() {
    let pki = Pki::new();
    let enrolled = Enrolled::new(&pki, "https://127.0.0.1:1", Lifetime::Fresh);
    let dir = enrolled.state_dir();
    let pinned = enrolled.signing.verifying_key();

    let other = SigningKey::generate(&mut rand::rngs::OsRng);
    dir.store_state(&sign_state(&other, &state(3, &[])), &Epochs::new())
        .unwrap();
    assert!(matches!(
        dir.load_state(&pinned, HOST_ID),
        Err(StateDirError::StateRefused {
            source: StateError::BadSignature,
            ..
        })
    ));

    let mut elsewhere = state(3, &[]);
    elsewhere.host_id = "host-9".into();
    dir.store_state(&enrolled.sign(&elsewhere), &Epochs::new())
        .unwrap();
    let err = dir.load_state(&pinned, HOST_ID).unwrap_err();
    assert!(
        matches!(
            err,
            StateDirError::StateRefused {
                source: StateError::WrongHost { .. },
                ..
            }
        ),
        "{err}"
    );

    dir.write_file("state.bin", b"\xff\xff not protobuf")
        .unwrap();
    assert!(dir.load_state(&pinned, HOST_ID).is_err());
}
