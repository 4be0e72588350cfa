//! Time, behind a trait so that rotation and grace periods can be tested without waiting.

use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};

pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until it is moved; for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Mutex::new(at))
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// ISO 8601 in UTC with whole seconds and a `Z`: `2026-01-02T03:04:05Z`.
///
/// One fixed width for every stored time, so that SQL compares them correctly as text.
pub fn iso8601(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses a time in any RFC 3339 form (as query parameters may give it).
pub fn parse_iso8601(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `serialize_with` helpers: a time in a JSON answer is [`iso8601`] text, as the stored text
/// was (chrono's own `Serialize` would write fractions of a second). With them, a field's schema
/// says `#[schema(value_type = String, format = DateTime)]`.
pub mod json {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn time<S: Serializer>(at: &DateTime<Utc>, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&super::iso8601(*at))
    }

    pub fn optional_time<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        out: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => time(at, out),
            None => out.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_is_fixed_width_utc() {
        let t = parse_iso8601("2026-01-02T04:04:05.123+01:00").unwrap();
        assert_eq!(iso8601(t), "2026-01-02T03:04:05Z");
        assert!(parse_iso8601("yesterday").is_none());
    }
}
