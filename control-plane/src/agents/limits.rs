//! What one enrolled agent may send: sizes and rates. A rooted VPS controls every byte its
//! agent sends (THREATS.md, adversary 2), so nothing it says may grow a row, a response or the
//! database without bound.
//!
//! **Sizes.** A message larger than [`MAX_MESSAGE_BYTES`] is refused by tonic
//! (`resource_exhausted`) and the stream ends; a real agent's largest message, a `LoginBatch` of
//! 500 events, is far below it. Inside a message every field is bounded, and truncation is the
//! rule wherever it only shortens what a person reads (the agent already did its work):
//!
//! | message | field | bound | over it |
//! |---|---|---|---|
//! | `Hello` | `agent_version` | 64 bytes | truncated |
//! | `Hello` | `host_keys` | 8 keys of at most 4 KiB that parse | others ignored |
//! | `Hello` | `observed` | not stored | ignored |
//! | `Applied` | `users` | 4 users | the rest ignored |
//! | `Applied` | a user's `user` / `error` / each warning | 64 / 500 / 500 bytes | truncated |
//! | `Applied` | a user's `warnings` / `fingerprints` / `set_aside` | 8 / 16 / 100, fingerprints that parse | the rest ignored |
//! | `Applied` | the host's `lastError` (every reason joined) | 4 KiB | truncated |
//! | `DriftReport` | `user` / `detected_at` | 64 / 40 bytes | truncated |
//! | `DriftReport` | `added` / `removed` | 16 fingerprints each, that parse | the rest ignored |
//! | `StateRejected` | `reason` | 200 bytes | truncated |
//! | `LoginBatch` | `events` | 1,000 | **refused**: the stream ends (`invalid_argument`) |
//! | `LoginEvent` | `user` / `source_ip` / `key_type` / `fingerprint` | 64 / 64 / 32 bytes / a fingerprint that parses | truncated / dropped |
//! | `RenewCertificate` | `csr_pem` | 16 KiB | **refused**: not signed, the stream ends |
//! | `RenewCertificate` | per stream | 2, then 1 a minute | not answered (each renewal is an audit event, kept for ever) |
//! | `RecordingChunk` | see [`super::recordings`] | 256 KiB of whole JSON lines, in order | **refused**: the stream ends |
//!
//! With these bounds the admin view of one host (`GET /api/v1/admin/hosts/{id}`) is at most about
//! 170 KiB whatever its agent sends (4 users of 100 set-aside keys and 8 warnings each, 8 host
//! keys of 4 KiB, and the 50 newest drift events of 32 fingerprints each); the integration test
//! `agent_bounds` floods it and asserts under 64 KiB.
//!
//! A login batch over 1,000 events is refused rather than cut because cutting it would
//! acknowledge events that were never stored; a real agent sends at most 500. Every refusal and
//! truncation is counted in `keyward_agent_messages_refused_total{reason}` (`reason`: one of
//! [`Refusal`]'s names).
//!
//! **Rates.** Each host's stream has two token buckets ([`TokenBucket`]): drift reports (default
//! 10 a minute, a burst of 20) and login events (1,000 a minute, a burst of 5,000). What is over
//! the rate is dropped, counted in `keyward_agent_reports_dropped_total{kind}` and added to the
//! host's `reportsDropped` (the host view). A login batch is acknowledged even when some or all
//! of its events were dropped: an unacknowledged batch would be sent again for ever, and the
//! agent forgets what is acknowledged, so the drop is counted here, on the server, where an
//! admin sees it. The buckets belong to the stream: a reconnection starts with a full burst,
//! which the TLS handshake and the host lookup of every reconnection pay for.

use std::time::{Duration, Instant};

/// The largest message the agents' endpoint decodes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Users per `Applied` kept (an agent manages two).
pub const MAX_USERS: usize = 4;
/// Warnings per user kept.
pub const MAX_WARNINGS: usize = 8;
/// Applied fingerprints per user kept.
pub const MAX_FINGERPRINTS: usize = 16;
/// Set-aside keys per user kept (the agent lists at most 100).
pub const MAX_SET_ASIDE: usize = 100;
/// Bytes kept of an error or warning.
pub const MAX_TEXT: usize = 500;
/// Bytes kept of the host's `last_error` (every user's reasons joined).
pub const MAX_LAST_ERROR: usize = 4096;
/// Bytes kept of a Unix user name.
pub const MAX_USER: usize = 64;
/// Host keys kept, and the longest kept.
pub const MAX_HOST_KEYS: usize = 8;
pub const MAX_HOST_KEY_BYTES: usize = 4096;
/// Bytes kept of the agent's version.
pub const MAX_VERSION: usize = 64;
/// Fingerprints kept per list of a drift report.
pub const MAX_DRIFT_KEYS: usize = 16;
/// Bytes kept of a drift report's `detected_at`.
pub const MAX_TIME: usize = 40;
/// Bytes kept of a rejected state's reason.
pub const MAX_REASON: usize = 200;
/// Login events in one batch; more is refused.
pub const MAX_LOGIN_EVENTS: usize = 1000;
/// The longest certificate request signed.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

impl AgentLimits {
    /// The per-host rates `[agent_api]` sets.
    pub fn from_config(config: &crate::config::AgentApiConfig) -> Self {
        Self {
            drift_reports: Rate {
                per_minute: config.drift_reports_per_minute,
                burst: config.drift_reports_burst,
            },
            login_events: Rate {
                per_minute: config.login_events_per_minute,
                burst: config.login_events_burst,
            },
            recording_chunks: AgentLimits::default().recording_chunks,
        }
    }

    /// With the recordings' chunk rate `[recordings]` sets.
    pub fn with_recordings(mut self, config: &crate::config::RecordingsConfig) -> Self {
        self.recording_chunks = Rate {
            per_minute: config.chunks_per_minute,
            burst: config.chunks_burst,
        };
        self
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Why a message or a field was refused or cut: the `reason` label of
/// `keyward_agent_messages_refused_total` (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over [`MAX_MESSAGE_BYTES`]: tonic refused it.
    MessageTooLarge,
    /// A field or list was cut to its bound.
    Truncated,
    /// A login batch over [`MAX_LOGIN_EVENTS`].
    TooManyLoginEvents,
    /// A certificate request over [`MAX_CSR_BYTES`].
    CsrTooLarge,
    /// A certificate request over [`RENEWALS`] on one stream.
    RenewalRate,
    /// A session recording's chunk that is invalid, out of order or over a bound.
    BadRecording,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MessageTooLarge => "message_too_large",
            Refusal::Truncated => "truncated",
            Refusal::TooManyLoginEvents => "too_many_login_events",
            Refusal::CsrTooLarge => "csr_too_large",
            Refusal::RenewalRate => "renewal_rate",
            Refusal::BadRecording => "bad_recording",
        }
    }

    pub fn count(self) {
        metrics::counter!("keyward_agent_messages_refused_total", "reason" => self.as_str())
            .increment(1);
    }
}

/// A rate with a burst: how much of something one host may send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

/// The per-host rates of the agents' endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentLimits {
    pub drift_reports: Rate,
    pub login_events: Rate,
    /// Session recordings' chunks (`[recordings] chunks_per_minute`, `chunks_burst`): past it the
    /// stream waits.
    pub recording_chunks: Rate,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            drift_reports: Rate {
                per_minute: 10,
                burst: 20,
            },
            login_events: Rate {
                per_minute: 1000,
                burst: 5000,
            },
            recording_chunks: Rate {
                per_minute: 600,
                burst: 120,
            },
        }
    }
}

/// A token bucket: holds at most `burst` tokens, refilled at `per_minute`; the clock is given
/// to each call, so that tests choose it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            capacity: f64::from(rate.burst),
            per_second: f64::from(rate.per_minute) / 60.0,
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
    }

    /// Takes up to `wanted` tokens at `now`; returns how many it got (whole tokens).
    pub fn take(&mut self, wanted: u64, now: Instant) -> u64 {
        self.refill(now);
        // Whole tokens only, with a little slack for the rounding of the refills (six refills of
        // a sixth make 0.99999...); `tokens` is within 0..=capacity (a u32), so the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let available = (self.tokens + 1e-6).floor().max(0.0) as u64;
        let got = wanted.min(available);
        #[allow(clippy::cast_precision_loss)]
        {
            self.tokens = (self.tokens - got as f64).max(0.0);
        }
        got
    }

    /// Takes one token at `now`; false when there is none.
    pub fn take_one(&mut self, now: Instant) -> bool {
        self.take(1, now) == 1
    }
}

/// Certificate renewals one stream may ask for: each is signed and is an audit event, which is
/// never deleted. The agent asks once per connection.
pub const RENEWALS: Rate = Rate {
    per_minute: 1,
    burst: 2,
};

/// One stream's buckets and the drops not yet recorded on the host's row.
#[derive(Debug)]
pub struct StreamLimits {
    pub drift: TokenBucket,
    pub logins: TokenBucket,
    pub renewals: TokenBucket,
    pub recordings: TokenBucket,
    /// Dropped since the last time they were added to the host's row.
    pub unrecorded: u64,
    pub recorded_at: Instant,
}

/// How often a stream's drops are added to its host's row at most.
pub const RECORD_DROPS_EVERY: Duration = Duration::from_secs(1);

impl StreamLimits {
    pub fn new(limits: &AgentLimits, now: Instant) -> Self {
        Self {
            drift: TokenBucket::new(limits.drift_reports, now),
            logins: TokenBucket::new(limits.login_events, now),
            renewals: TokenBucket::new(RENEWALS, now),
            recordings: TokenBucket::new(limits.recording_chunks, now),
            unrecorded: 0,
            recorded_at: now,
        }
    }

    /// Counts `n` dropped reports of `kind` (`drift` or `login`).
    pub fn dropped(&mut self, kind: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        metrics::counter!("keyward_agent_reports_dropped_total", "kind" => kind).increment(n);
        self.unrecorded = self.unrecorded.saturating_add(n);
    }

    /// The drops to add to the host's row now, if any are due (at most once a
    /// [`RECORD_DROPS_EVERY`], or whatever is left when `flush`).
    pub fn due(&mut self, now: Instant, flush: bool) -> Option<u64> {
        if self.unrecorded == 0
            || !(flush || now.saturating_duration_since(self.recorded_at) >= RECORD_DROPS_EVERY)
        {
            return None;
        }
        self.recorded_at = now;
        Some(std::mem::take(&mut self.unrecorded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_defaults_are_the_limits_defaults() {
        assert_eq!(
            AgentLimits::from_config(&crate::config::AgentApiConfig::default()),
            AgentLimits::default()
        );
    }

    fn rate(per_minute: u32, burst: u32) -> Rate {
        Rate { per_minute, burst }
    }

    #[test]
    fn a_bucket_starts_full_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(10, 20), t0);
        for _ in 0..20 {
            assert!(bucket.take_one(t0));
        }
        assert!(!bucket.take_one(t0), "the burst is spent");
        // 10 a minute: one every 6 s.
        assert!(!bucket.take_one(t0 + Duration::from_secs(5)));
        assert!(bucket.take_one(t0 + Duration::from_secs(6)));
        assert!(!bucket.take_one(t0 + Duration::from_secs(6)));
        // An hour later the bucket holds its burst, no more.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.take(1000, later), 20);
        assert_eq!(bucket.take(1, later), 0);
    }

    #[test]
    fn a_batch_gets_what_is_left() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(1000, 5000), t0);
        assert_eq!(bucket.take(500, t0), 500);
        assert_eq!(bucket.take(20_000, t0), 4500);
        assert_eq!(bucket.take(500, t0), 0);
        // 1,000 a minute: 30 s give 500.
        assert_eq!(bucket.take(2000, t0 + Duration::from_secs(30)), 500);
    }

    #[test]
    fn a_clock_going_back_gives_nothing() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut bucket = TokenBucket::new(rate(60, 1), t0);
        assert!(bucket.take_one(t0));
        assert!(!bucket.take_one(t0 - Duration::from_secs(50)));
        // The earlier instant did not move the bucket's time back.
        assert!(!bucket.take_one(t0 + Duration::from_millis(500)));
        assert!(bucket.take_one(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn drops_are_recorded_at_most_once_a_second_and_at_the_end() {
        let t0 = Instant::now();
        let mut limits = StreamLimits::new(&AgentLimits::default(), t0);
        assert_eq!(limits.due(t0, true), None, "nothing dropped");
        limits.dropped("drift", 3);
        assert_eq!(limits.due(t0 + Duration::from_millis(10), false), None);
        assert_eq!(limits.due(t0 + Duration::from_secs(1), false), Some(3));
        limits.dropped("login", 7);
        assert_eq!(limits.due(t0 + Duration::from_millis(1500), false), None);
        assert_eq!(limits.due(t0 + Duration::from_millis(1500), true), Some(7));
        assert_eq!(limits.due(t0 + Duration::from_secs(10), true), None);
    }

    #[test]
    fn bounded_cuts_bytes_at_a_character_boundary() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("abcdef", 3), "abc");
        // "é" is two bytes: a cut inside it keeps the whole characters before.
        assert_eq!(bounded("aé", 2), "a");
        assert_eq!(bounded(&"x".repeat(2_000_000), MAX_TEXT).len(), MAX_TEXT);
    }
}
