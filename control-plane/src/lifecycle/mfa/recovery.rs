//! Recovery codes: ten per confirmed factor, shown once, each 80 random bits written as 16
//! base32 characters in groups of four (`ABCD-EFGH-IJKL-MNOP`). Stored as the SHA-256 of the
//! owner and the code: 80 bits cannot be guessed from the hash, and the owner in the hash keeps
//! one principal's code from matching another's row.

use data_encoding::BASE32_NOPAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const CODES_PER_FACTOR: usize = 10;
const CODE_BYTES: usize = 10;
const CODE_CHARS: usize = 16;

/// Fresh recovery codes, as shown to the person.
pub fn new_codes() -> Vec<Zeroizing<String>> {
    (0..CODES_PER_FACTOR)
        .map(|_| {
            let mut raw = Zeroizing::new([0u8; CODE_BYTES]);
            rand::rngs::OsRng.fill_bytes(raw.as_mut());
            let plain = Zeroizing::new(BASE32_NOPAD.encode(raw.as_ref()));
            let groups: Vec<&str> = (0..CODE_CHARS / 4)
                .map(|i| &plain[i * 4..i * 4 + 4])
                .collect();
            Zeroizing::new(groups.join("-"))
        })
        .collect()
}

/// The stored hash of `code` for `owner`: `None` when `code` is not one (it is then compared
/// with nothing). Dashes and spaces are ignored and case is not significant, as people type.
pub fn hash(owner: &str, code: &str) -> Option<String> {
    let normal: Zeroizing<String> = Zeroizing::new(
        code.chars()
            .filter(|c| *c != '-' && *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    );
    if normal.len() != CODE_CHARS || BASE32_NOPAD.decode(normal.as_bytes()).is_err() {
        return None;
    }
    let mut digest = Sha256::new();
    digest.update(b"keyward-mfa-recovery-v1\0");
    digest.update(owner.as_bytes());
    digest.update(b"\0");
    digest.update(normal.as_bytes());
    Some(hex::encode(digest.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_80_bit_and_hashed_per_owner() {
        let codes = new_codes();
        assert_eq!(codes.len(), 10);
        for code in &codes {
            assert_eq!(code.len(), 19, "{}", code.as_str());
            assert_eq!(code.matches('-').count(), 3);
        }
        let mut unique: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        let first = codes[0].as_str();
        let h = hash("tenant:acme", first).unwrap();
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&first.replace('-', "")));
        assert_eq!(
            hash("tenant:acme", &first.to_ascii_lowercase().replace('-', " ")),
            Some(h.clone())
        );
        assert_ne!(hash("tenant:other", first), Some(h));
        assert_eq!(hash("tenant:acme", "ABCD-EFGH"), None);
        assert_eq!(
            hash("tenant:acme", "ABCD-EFGH-IJKL-MN01"),
            None,
            "not base32"
        );
    }
}
