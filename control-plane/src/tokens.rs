//! API tokens: made here, kept by the store as their SHA-256 only.
//!
//! A token is 256 random bits (`kw_` + base64url); its id (`tok_` + 64 bits) names it in the audit
//! log and in revocation.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use zeroize::Zeroizing;

/// A fresh token and its id. The token is shown once and then only its hash exists.
pub fn new_token() -> (String, Zeroizing<String>) {
    let mut rng = rand::rngs::OsRng;
    let mut id = [0u8; 8];
    rng.fill_bytes(&mut id);
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut());
    (
        format!("tok_{}", hex::encode(id)),
        Zeroizing::new(format!("kw_{}", URL_SAFE_NO_PAD.encode(secret.as_ref()))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hash_token;

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let (id1, t1) = new_token();
        let (id2, t2) = new_token();
        assert_ne!(t1.as_str(), t2.as_str());
        assert_ne!(id1, id2);
        let raw = URL_SAFE_NO_PAD
            .decode(t1.strip_prefix("kw_").unwrap())
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert_eq!(hash_token(&t1).len(), 64);
    }
}
