//! Failed enrollments, throttled per source address and audited in aggregate.
//!
//! Enrollment is the one unauthenticated path that reaches the database. Each source address (an
//! IPv6 address counts by its /64) has a token bucket of failures: `per_minute` of them, in a
//! burst or spread out; past that the source is answered 429 without a look at its token. The
//! audit log gets at most one `host.enroll` refusal per source and minute, with the number of
//! attempts it stands for, never a row per attempt (THREATS.md, adversary 3).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::caller::Caller;
use crate::lifecycle::KeyLifecycle;

/// Sources tracked at once; past this, the rest share one bucket.
const MAX_SOURCES: usize = 4096;
/// One aggregated audit event per source and this period.
const AUDIT_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Source {
    tokens: f64,
    refilled: Instant,
    /// Attempts refused since the last audit event, and when the first of them came.
    unaudited: u64,
    first_unaudited: Option<chrono::DateTime<chrono::Utc>>,
    /// When the last audit event for this source was written.
    audited: Option<Instant>,
}

/// The per-source buckets (see the module's documentation).
#[derive(Debug)]
pub struct EnrollThrottle {
    per_minute: f64,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

/// An aggregated audit event due for a source.
#[derive(Debug)]
struct Due {
    source: IpAddr,
    attempts: u64,
    since: chrono::DateTime<chrono::Utc>,
}

/// The key a source is counted under: an IPv6 address by its /64 (one host has all of it).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl EnrollThrottle {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn with_source<T>(&self, ip: IpAddr, f: impl FnOnce(&mut Source) -> T) -> T {
        let now = Instant::now();
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = source_key(ip);
        if !sources.contains_key(&key) && sources.len() >= MAX_SOURCES {
            let full = self.per_minute;
            sources.retain(|_, s| s.unaudited > 0 || s.tokens + refill(s, now, full) < full);
            if sources.len() >= MAX_SOURCES {
                key = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
            }
        }
        let full = self.per_minute;
        let source = sources.entry(key).or_insert_with(|| Source {
            tokens: full,
            refilled: now,
            unaudited: 0,
            first_unaudited: None,
            audited: None,
        });
        source.tokens = (source.tokens + refill(source, now, full)).min(full);
        source.refilled = now;
        f(source)
    }

    /// Whether `ip` may try to enroll now; an attempt takes a token (given back by
    /// [`EnrollThrottle::refund`] unless the token was wrong), so concurrent attempts cannot
    /// all pass on one. A refusal is counted for the audit log.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.with_source(ip, |s| {
            if s.tokens >= 1.0 {
                s.tokens -= 1.0;
                true
            } else {
                count(s);
                false
            }
        })
    }

    /// Records a failed enrollment from `ip` (its token already taken); returns the number of attempts to audit now if
    /// this source has had no audit event in the last minute.
    pub fn failed(&self, ip: IpAddr) -> Option<(u64, chrono::DateTime<chrono::Utc>)> {
        self.with_source(ip, |s| {
            count(s);
            take_due(s, Instant::now())
        })
    }

    /// Gives back the token of an attempt that did not fail on its enrollment token.
    pub fn refund(&self, ip: IpAddr) {
        let full = self.per_minute;
        self.with_source(ip, |s| s.tokens = (s.tokens + 1.0).min(full));
    }

    /// Takes every source's attempts whose audit event is due.
    fn due(&self) -> Vec<Due> {
        let now = Instant::now();
        let full = self.per_minute;
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let due = sources
            .iter_mut()
            .filter_map(|(ip, s)| {
                take_due(s, now).map(|(attempts, since)| Due {
                    source: *ip,
                    attempts,
                    since,
                })
            })
            .collect();
        // Sources back to a full bucket with nothing to audit are forgotten.
        sources.retain(|_, s| {
            s.unaudited > 0
                || s.tokens + refill(s, now, full) < full
                || s.audited
                    .is_some_and(|at| now.duration_since(at) < AUDIT_PERIOD)
        });
        due
    }

    /// Writes the aggregated audit events of sources whose attempts went unaudited, every
    /// minute; runs until aborted.
    pub async fn audit_every_minute(self: Arc<Self>, lifecycle: Arc<KeyLifecycle>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            for due in self.due() {
                audit(&lifecycle, due.source, due.attempts, due.since).await;
            }
        }
    }
}

fn refill(source: &Source, now: Instant, per_minute: f64) -> f64 {
    now.duration_since(source.refilled).as_secs_f64() * per_minute / 60.0
}

fn count(source: &mut Source) {
    source.unaudited += 1;
    source.first_unaudited.get_or_insert_with(chrono::Utc::now);
}

fn take_due(source: &mut Source, now: Instant) -> Option<(u64, chrono::DateTime<chrono::Utc>)> {
    if source.unaudited == 0
        || source
            .audited
            .is_some_and(|at| now.duration_since(at) < AUDIT_PERIOD)
    {
        return None;
    }
    source.audited = Some(now);
    let attempts = std::mem::take(&mut source.unaudited);
    let since = source
        .first_unaudited
        .take()
        .unwrap_or_else(chrono::Utc::now);
    Some((attempts, since))
}

/// One `host.enroll` refusal standing for `attempts` attempts from `source`.
pub async fn audit(
    lifecycle: &KeyLifecycle,
    source: IpAddr,
    attempts: u64,
    since: chrono::DateTime<chrono::Utc>,
) {
    let caller = Caller {
        token_id: None,
        role: None,
        source_addr: Some(source.to_string()),
        idp_mfa: false,
    };
    lifecycle
        .audit_enroll_refusals(&caller, attempts, &crate::clock::iso8601(since))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_source_gets_its_burst_then_is_refused_and_audited_once() {
        let throttle = EnrollThrottle::new(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut audits = Vec::new();
        for _ in 0..3 {
            assert!(throttle.allow(ip));
            audits.extend(throttle.failed(ip));
        }
        assert!(!throttle.allow(ip), "past the burst");
        assert_eq!(audits.len(), 1, "one audit event at once: {audits:?}");
        assert_eq!(audits[0].0, 1);
        // The rest wait for the next minute, counted.
        assert!(throttle.due().is_empty());
        let sources = throttle.sources.lock().unwrap();
        assert_eq!(sources[&ip].unaudited, 3, "two failures and one refusal");
    }

    #[tokio::test]
    async fn a_refund_gives_the_token_back() {
        let throttle = EnrollThrottle::new(1);
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(throttle.allow(ip));
        throttle.refund(ip);
        assert!(throttle.allow(ip));
        assert!(!throttle.allow(ip));
    }

    #[tokio::test]
    async fn an_ipv6_64_is_one_source_and_the_map_stays_bounded() {
        let throttle = EnrollThrottle::new(1);
        assert!(throttle.allow("2001:db8:1:2::1".parse().unwrap()));
        assert!(!throttle.allow("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert!(throttle.allow("2001:db8:1:3::1".parse().unwrap()));
        for i in 0..(MAX_SOURCES as u32 + 500) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            throttle.allow(ip);
            throttle.failed(ip);
        }
        assert!(throttle.sources.lock().unwrap().len() <= MAX_SOURCES + 1);
    }
}
