//! Times at the SQL boundary. Records hold `DateTime<Utc>`; the columns hold the text
//! `clock::iso8601` writes (`2026-01-02T03:04:05Z`): one width, so that text comparison in SQL is
//! time comparison on both backends, and the schema and the stored bytes stay as they were.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;

use super::{StoreError, get};
use crate::clock::{iso8601, parse_iso8601};

/// The column's time; a text that is not one is a corrupt row.
pub(super) fn time(row: &AnyRow, column: &'static str) -> Result<DateTime<Utc>, StoreError> {
    let raw: String = get(row, column)?;
    parse(column, &raw)
}

/// The column's time, or `None` for NULL.
pub(super) fn optional_time(
    row: &AnyRow,
    column: &'static str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    get::<Option<String>>(row, column)?
        .map(|raw| parse(column, &raw))
        .transpose()
}

/// What a time column holds.
pub(super) fn text(at: DateTime<Utc>) -> String {
    iso8601(at)
}

/// What a nullable time column holds.
pub(super) fn optional_text(at: Option<DateTime<Utc>>) -> Option<String> {
    at.map(iso8601)
}

fn parse(column: &'static str, raw: &str) -> Result<DateTime<Utc>, StoreError> {
    parse_iso8601(raw).ok_or_else(|| StoreError::Corrupt {
        what: column,
        detail: raw.chars().take(64).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_read_back_byte_for_byte() {
        for stored in ["2026-01-02T03:04:05Z", "1999-12-31T23:59:59Z"] {
            let at = parse("created_at", stored).expect("a stored time");
            assert_eq!(text(at), stored);
        }
        assert_eq!(optional_text(None), None);
        assert!(parse("created_at", "yesterday").is_err());
    }
}
