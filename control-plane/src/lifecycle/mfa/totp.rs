//! RFC 6238 time-based one-time passwords as authenticator apps make them: HMAC-SHA1, 6 digits,
//! 30-second steps (the otpauth defaults every app reads), a 160-bit seed (RFC 4226's
//! recommended length). A code is taken within one step either side of now, for clocks that
//! drift and codes typed as the step turns.
//!
//! The seed is held in zeroized memory and never printed; the codes computed to compare with are
//! wiped too, and compared in constant time.

use std::fmt;

use chrono::{DateTime, Utc};
use data_encoding::BASE32_NOPAD;
use rand::RngCore;
use zeroize::Zeroizing;

pub const STEP_SECONDS: u64 = 30;
pub const DIGITS: u32 = 6;
pub const SEED_BYTES: usize = 20;
/// Steps either side of now whose code is taken.
pub const SKEW_STEPS: u64 = 1;

/// The RFC 6238 time step of `at`.
pub fn step_of(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp()).unwrap_or(0) / STEP_SECONDS
}

/// A TOTP seed (the shared secret).
pub struct TotpSeed(Zeroizing<Vec<u8>>);

impl fmt::Debug for TotpSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSeed(<redacted>)")
    }
}

impl TotpSeed {
    /// A new random seed from the operating system's RNG.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new(vec![0u8; SEED_BYTES]);
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Self(seed)
    }

    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The seed as authenticator apps take it typed in: RFC 4648 base32 without padding.
    pub fn base32(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE32_NOPAD.encode(&self.0))
    }

    /// The code of time step `step`.
    pub fn code_at(&self, step: u64) -> Zeroizing<String> {
        Zeroizing::new(totp_lite::totp_custom::<sha1::Sha1>(
            STEP_SECONDS,
            DIGITS,
            &self.0,
            step.saturating_mul(STEP_SECONDS),
        ))
    }

    /// The latest step within [`SKEW_STEPS`] of `now_step` whose code is `code`. Every candidate
    /// is computed and compared (in constant time), whichever matches.
    pub fn matching_step(&self, code: &str, now_step: u64) -> Option<u64> {
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut found = None;
        for step in now_step.saturating_sub(SKEW_STEPS)..=now_step.saturating_add(SKEW_STEPS) {
            if constant_time_eq(self.code_at(step).as_bytes(), code.as_bytes()) {
                found = Some(step);
            }
        }
        found
    }

    /// The `otpauth://` URI authenticator apps scan (Google Authenticator's key URI format).
    /// `account` is made of characters that need no escaping (tenant ids, token ids).
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
            self.base32().as_str()
        ))
    }
}

/// Whether `a` and `b` are equal, in time that depends on their length only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The QR code of `text` as an SVG image, or `None` when it does not fit in one.
pub fn qr_svg(text: &str) -> Option<Zeroizing<String>> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(Zeroizing::new(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B's seed for SHA-1 ("12345678901234567890").
    fn rfc_seed() -> TotpSeed {
        TotpSeed::from_bytes(Zeroizing::new(b"12345678901234567890".to_vec()))
    }

    #[test]
    fn rfc_6238_test_vectors_sha1() {
        // Appendix B gives 8 digits; 6 digits are the last six (RFC 4226's truncation).
        for (time, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            let code = rfc_seed().code_at(time / STEP_SECONDS);
            assert_eq!(code.as_str(), &eight[2..], "T = {time}");
        }
    }

    #[test]
    fn a_code_is_taken_one_step_either_side_and_no_further() {
        let seed = TotpSeed::generate();
        let now: u64 = 57_000_000;
        for (offset, taken) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let step = now.checked_add_signed(offset).unwrap();
            let code = seed.code_at(step);
            let expected = taken.then_some(step);
            // Another step's code can collide by chance (1 in 10^6): then it is that step.
            let got = seed.matching_step(&code, now);
            if got != expected {
                assert!(
                    got.is_some() && seed.code_at(got.unwrap()) == code,
                    "{offset}"
                );
            }
        }
        assert_eq!(seed.matching_step("12345", now), None, "five digits");
        assert_eq!(seed.matching_step("12345a", now), None);
        assert_eq!(seed.matching_step("", now), None);
    }

    #[test]
    fn the_seed_is_160_bits_base32_and_never_printed() {
        let seed = TotpSeed::generate();
        assert_eq!(seed.bytes().len(), 20);
        assert_eq!(seed.base32().len(), 32);
        assert_ne!(seed.bytes(), TotpSeed::generate().bytes());
        assert!(!format!("{seed:?}").contains(seed.base32().as_str()));
        let uri = seed.otpauth_uri("keyward", "tenant-acme");
        assert!(uri.starts_with("otpauth://totp/keyward:tenant-acme?secret="));
        assert!(uri.contains("&period=30") && uri.contains("&digits=6"));
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.contains("<svg"));
    }

    #[test]
    fn steps_are_30_seconds_since_the_epoch() {
        let at = DateTime::from_timestamp(1_111_111_109, 0).unwrap();
        assert_eq!(step_of(at), 37_037_036);
    }
}
