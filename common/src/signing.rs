//! Signed desired states: Ed25519 over a domain-separated encoding of the state.
//!
//! The control plane signs `"keyward-state-v1\0" || state`, where `state` is the protobuf
//! encoding of a [`DesiredState`]. The agent verifies the bytes with the key it pinned at
//! enrollment *before* decoding them, then checks that the state names its own host and is not
//! older than the one it applied, so a state cannot be forged, redirected or replayed.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;

use crate::proto::{DesiredState, SignedState};

const DOMAIN: &[u8] = b"keyward-state-v1\0";

/// Why a signed state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the state is not signed")]
    Unsigned,
    #[error("the state's signature does not verify with the pinned key")]
    BadSignature,
    #[error("the state does not decode: {0}")]
    Malformed(String),
    #[error("the state is for host {found:?}, not this host ({expected:?})")]
    WrongHost { expected: String, found: String },
    #[error("the state's generation {found} is older than the applied generation {applied}")]
    Replay { applied: u64, found: u64 },
}

fn message(state: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + state.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(state);
    m
}

/// Encodes and signs a state.
pub fn sign_state(key: &SigningKey, state: &DesiredState) -> SignedState {
    let bytes = state.encode_to_vec();
    let signature = key.sign(&message(&bytes));
    SignedState {
        state: bytes,
        signature: signature.to_bytes().to_vec(),
    }
}

/// Verifies, decodes and checks a signed state for `host_id`, given the generation the agent
/// last applied. A state with the applied generation is accepted (a re-send after a reconnect).
pub fn verify_state(
    key: &VerifyingKey,
    signed: &SignedState,
    host_id: &str,
    applied_generation: u64,
) -> Result<DesiredState, StateError> {
    if signed.signature.is_empty() {
        return Err(StateError::Unsigned);
    }
    let signature =
        Signature::from_slice(&signed.signature).map_err(|_| StateError::BadSignature)?;
    key.verify(&message(&signed.state), &signature)
        .map_err(|_| StateError::BadSignature)?;
    let state = DesiredState::decode(signed.state.as_slice())
        .map_err(|e| StateError::Malformed(e.to_string()))?;
    if state.host_id != host_id {
        return Err(StateError::WrongHost {
            expected: host_id.to_owned(),
            found: state.host_id,
        });
    }
    if state.generation < applied_generation {
        return Err(StateError::Replay {
            applied: applied_generation,
            found: state.generation,
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::generate(&mut rand::rngs::OsRng)
    }

    fn state(host: &str, generation: u64) -> DesiredState {
        DesiredState {
            host_id: host.into(),
            generation,
            issued_at: "2026-01-01T00:00:00Z".into(),
            users: vec![],
            sshd: None,
        }
    }

    #[test]
    fn a_signed_state_verifies_for_its_host() {
        let k = key();
        let signed = sign_state(&k, &state("h1", 5));
        let got = verify_state(&k.verifying_key(), &signed, "h1", 4).unwrap();
        assert_eq!(got.generation, 5);
        // The same generation again is a re-send, not a replay.
        assert!(verify_state(&k.verifying_key(), &signed, "h1", 5).is_ok());
    }

    #[test]
    fn forged_redirected_and_replayed_states_are_refused() {
        let k = key();
        let pinned = k.verifying_key();
        let mut signed = sign_state(&k, &state("h1", 5));
        assert_eq!(
            verify_state(&pinned, &signed, "h2", 0).unwrap_err(),
            StateError::WrongHost {
                expected: "h2".into(),
                found: "h1".into()
            }
        );
        assert_eq!(
            verify_state(&pinned, &signed, "h1", 6).unwrap_err(),
            StateError::Replay {
                applied: 6,
                found: 5
            }
        );
        let other = sign_state(&key(), &state("h1", 9));
        assert_eq!(
            verify_state(&pinned, &other, "h1", 0).unwrap_err(),
            StateError::BadSignature
        );
        signed.state[0] ^= 1;
        assert_eq!(
            verify_state(&pinned, &signed, "h1", 0).unwrap_err(),
            StateError::BadSignature
        );
        signed.signature.clear();
        assert_eq!(
            verify_state(&pinned, &signed, "h1", 0).unwrap_err(),
            StateError::Unsigned
        );
    }
}
