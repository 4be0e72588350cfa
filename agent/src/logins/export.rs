//! Journal records: a reader for `journalctl -o export` and the mapping of a record to an sshd
//! [`LogLine`].
//!
//! The mapping is what the journald source ([`super::journald`], cargo feature `journald`) uses
//! for every record it reads from libsystemd; the export reader lets the mapping be tested (and
//! records be replayed) in every build, including those without libsystemd.
//!
//! Trust: `SYSLOG_IDENTIFIER`, `SYSLOG_PID` and `MESSAGE` are whatever the sender says
//! (`logger -t sshd`), while the fields starting with `_` are set by journald itself from the
//! sender's credentials and cannot be forged by a client. A record is sshd's only when its
//! trusted fields say so ([`is_sshd`]): `_UID=0` (sshd logs as root; its unprivileged
//! pre-authentication process logs through its root monitor), `_COMM` `sshd` or `sshd-session`,
//! `_EXE` one of the sshd executables, and `_SYSTEMD_UNIT`, when the record has one, one of the
//! units sshd runs in ([`SshdTrust`]). Every other record is ignored, whatever its message.
//!
//! Export format (systemd's "Journal Export Format"): records separated by an empty line; a field
//! is `NAME=value\n`, or, when the value is binary or holds a newline, `NAME\n`, a little-endian
//! 64-bit length, the bytes, and `\n`. Fields starting with `__` are the journal's own
//! (`__CURSOR`, `__REALTIME_TIMESTAMP` in microseconds since the epoch).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keyward_common::sshd_log::{LogLine, parse_message};

use crate::config::SshdTrust;

/// The process names (`_COMM`) sshd logs under: the listener and monitor, and OpenSSH 9.8's
/// per-connection `sshd-session` (its `sshd-auth` logs through the monitor).
pub const SSHD_COMMS: [&str; 2] = ["sshd", "sshd-session"];

/// One journal record: field name to value.
pub type JournalRecord = BTreeMap<String, Vec<u8>>;

/// Why export-format text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("byte {offset}: a field without a name")]
    NoName { offset: usize },
    #[error("byte {offset}: the binary field {name} is cut short")]
    Truncated { offset: usize, name: String },
    #[error("byte {offset}: the binary field {name} does not end with a newline")]
    NoNewline { offset: usize, name: String },
}

/// Reads every record of `text` (the output of `journalctl -o export`).
pub fn read_export(text: &[u8]) -> Result<Vec<JournalRecord>, ExportError> {
    let mut records = Vec::new();
    let mut record = JournalRecord::new();
    let mut at = 0;
    while at < text.len() {
        let line_end = text[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |p| at + p);
        let line = &text[at..line_end];
        if line.is_empty() {
            if !record.is_empty() {
                records.push(std::mem::take(&mut record));
            }
            at = line_end + 1;
            continue;
        }
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            if eq == 0 {
                return Err(ExportError::NoName { offset: at });
            }
            let name = String::from_utf8_lossy(&line[..eq]).into_owned();
            record.insert(name, line[eq + 1..].to_vec());
            at = line_end + 1;
            continue;
        }
        // A binary field: the name alone on its line, then a 64-bit length and the data.
        let name = String::from_utf8_lossy(line).into_owned();
        let size_at = line_end + 1;
        let truncated = || ExportError::Truncated {
            offset: at,
            name: name.clone(),
        };
        let size_bytes: [u8; 8] = text
            .get(size_at..size_at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(truncated)?;
        let size = usize::try_from(u64::from_le_bytes(size_bytes)).map_err(|_| truncated())?;
        let data_at = size_at + 8;
        let data_end = data_at.checked_add(size).ok_or_else(truncated)?;
        let data = text.get(data_at..data_end).ok_or_else(truncated)?;
        if text.get(data_end) != Some(&b'\n') {
            return Err(ExportError::NoNewline { offset: at, name });
        }
        record.insert(name, data.to_vec());
        at = data_end + 1;
    }
    if !record.is_empty() {
        records.push(record);
    }
    Ok(records)
}

fn text_field<'a>(record: &'a JournalRecord, name: &str) -> Option<&'a str> {
    record.get(name).and_then(|v| std::str::from_utf8(v).ok())
}

/// Whether the record was written by sshd, by its trusted fields (module docs).
pub fn is_sshd(record: &JournalRecord, trust: &SshdTrust) -> bool {
    text_field(record, "_UID") == Some("0")
        && text_field(record, "_COMM").is_some_and(|name| SSHD_COMMS.contains(&name))
        && record
            .get("_EXE")
            .is_some_and(|exe| trust.is_executable(exe, false))
        && record
            .get("_SYSTEMD_UNIT")
            .is_none_or(|unit| std::str::from_utf8(unit).is_ok_and(|u| trust.unit_allowed(u)))
}

/// The record's `__CURSOR`.
pub fn cursor(record: &JournalRecord) -> Option<&str> {
    text_field(record, "__CURSOR")
}

/// The sshd event in a record: `MESSAGE` parsed, the pid from `_PID`, the time from
/// `__REALTIME_TIMESTAMP`. `None` for a record that is not sshd's by its trusted fields, or
/// another message.
pub fn sshd_line(record: &JournalRecord, trust: &SshdTrust) -> Option<LogLine> {
    if !is_sshd(record, trust) {
        if text_field(record, "SYSLOG_IDENTIFIER").is_some_and(|id| id.starts_with("sshd")) {
            tracing::debug!(
                uid = ?text_field(record, "_UID"),
                comm = ?text_field(record, "_COMM"),
                "ignored a journal record that names sshd but was not written by it"
            );
        }
        return None;
    }
    let message = String::from_utf8_lossy(record.get("MESSAGE")?);
    let event = parse_message(&message)?;
    let pid = text_field(record, "_PID").and_then(|p| p.parse().ok());
    let at = text_field(record, "__REALTIME_TIMESTAMP")
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .map(|t| t.fixed_offset());
    Some(LogLine { at, pid, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_common::sshd_log::{Auth, AuthMethod, KeyId, SshdEvent};

    fn sshd_line_(record: &JournalRecord) -> Option<LogLine> {
        sshd_line(record, &SshdTrust::default())
    }

    const FP: &str = "SHA256:CQckUcS0Dj4bssx6LruYf8RqXCmfpKWq3eceXa5XfxM";

    /// A text record as `journalctl -o export` prints one for sshd.
    fn record(cursor: &str, usec: u64, pid: u32, comm: &str, message: &str) -> String {
        format!(
            "__CURSOR={cursor}\n__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP=1234\n\
             _BOOT_ID=6f1c\n_TRANSPORT=syslog\nPRIORITY=6\nSYSLOG_FACILITY=4\n\
             SYSLOG_IDENTIFIER={comm}\nSYSLOG_PID={pid}\n_PID={pid}\n_UID=0\n_GID=0\n\
             _COMM={comm}\n_EXE=/usr/sbin/sshd\n_SYSTEMD_UNIT=ssh.service\n\
             MESSAGE={message}\n_HOSTNAME=vps1\n"
        )
    }

    /// A binary field as journald exports a value with a newline in it.
    fn binary(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = format!("{name}\n").into_bytes();
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    #[test]
    fn export_records_map_to_sshd_events() {
        let mut text = String::new();
        text += &record(
            "s=a;i=1",
            1_795_860_000_123_456,
            1234,
            "sshd",
            &format!("Accepted publickey for kwfmt from 127.0.0.1 port 49896 ssh2: ED25519 {FP}"),
        );
        text += "\n";
        text += &record(
            "s=a;i=2",
            1_795_860_001_000_000,
            1235,
            "sshd",
            "User child is on pid 1236",
        );
        text += "\n";
        text += &record(
            "s=a;i=3",
            1_795_860_002_000_000,
            7,
            "sudo",
            "Accepted publickey for x from 1.2.3.4 port 5 ssh2",
        );
        text += "\n";
        text += &record(
            "s=a;i=4",
            1_795_860_003_000_000,
            88,
            "sshd-session",
            "Disconnected from user kwfmt 2001:db8::1 port 49896",
        );
        let records = read_export(text.as_bytes()).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(cursor(&records[0]), Some("s=a;i=1"));

        let first = sshd_line_(&records[0]).unwrap();
        assert_eq!(first.pid, Some(1234));
        assert_eq!(
            first.at.unwrap().to_rfc3339(),
            "2026-11-28T10:00:00.123456+00:00"
        );
        assert_eq!(
            first.event,
            SshdEvent::Accepted(Auth {
                method: AuthMethod::Publickey,
                user: "kwfmt".into(),
                invalid_user: false,
                source: "127.0.0.1:49896".parse().unwrap(),
                key: Some(KeyId {
                    key_type: "ED25519".into(),
                    fingerprint: FP.into(),
                    certificate: None,
                }),
            })
        );
        assert_eq!(
            sshd_line_(&records[1]).unwrap().event,
            SshdEvent::UserChild { pid: 1236 }
        );
        assert_eq!(sshd_line_(&records[2]), None, "another program's record");
        let last = sshd_line_(&records[3]).unwrap();
        assert_eq!(last.pid, Some(88));
        assert!(matches!(last.event, SshdEvent::Disconnected { .. }));
    }

    #[test]
    fn binary_fields() {
        let mut text =
            b"__CURSOR=c1\n__REALTIME_TIMESTAMP=1000000\n_COMM=sshd\n_UID=0\n_EXE=/usr/sbin/sshd\n"
                .to_vec();
        text.extend(binary(
            "MESSAGE",
            b"Invalid user a\nb from 127.0.0.1 port 2",
        ));
        text.extend(b"_PID=9\n\n__CURSOR=c2\nMESSAGE=no sshd fields here\n");
        let records = read_export(&text).unwrap();
        assert_eq!(records.len(), 2);
        let line = sshd_line_(&records[0]).unwrap();
        assert_eq!(line.pid, Some(9));
        assert_eq!(line.at.unwrap().to_rfc3339(), "1970-01-01T00:00:01+00:00");
        assert_eq!(
            line.event,
            SshdEvent::InvalidUser {
                user: "a\nb".into(),
                source: "127.0.0.1:2".parse().unwrap(),
            }
        );
        assert_eq!(sshd_line_(&records[1]), None);
    }

    #[test]
    fn what_any_process_can_claim_is_not_trusted() {
        let accepted =
            format!("Accepted publickey for bob from 127.0.0.1 port 5 ssh2: ED25519 {FP}");
        let genuine = record("c0", 1, 1, "sshd", &accepted);
        let forged = [
            // `logger -t 'sshd[1]'`: the identifier says sshd, the process is logger.
            genuine.replace("_COMM=sshd", "_COMM=logger"),
            // A user's own program called sshd: the right name, not root.
            genuine.replace("_UID=0", "_UID=1000"),
            // Root's, named sshd, another executable (a copy, a script).
            genuine.replace("_EXE=/usr/sbin/sshd", "_EXE=/tmp/sshd"),
            genuine.replace("_EXE=/usr/sbin/sshd", "_EXE=/usr/sbin/sshd (deleted)"),
            genuine.replace("_EXE=/usr/sbin/sshd\n", ""),
            // The real binary, run by root from another unit (a user's session scope).
            genuine.replace("_SYSTEMD_UNIT=ssh.service", "_SYSTEMD_UNIT=session-4.scope"),
            // No trusted fields at all: what a client may put in a journal upload.
            format!("__CURSOR=c9\nSYSLOG_IDENTIFIER=sshd\nMESSAGE={accepted}\n"),
            // sshd's unprivileged pre-authentication process, not root.
            record(
                "c3",
                1,
                1,
                "sshd",
                "Connection closed by authenticating user bob 127.0.0.1 port 5 [preauth]",
            )
            .replace("_UID=0", "_UID=101"),
        ];
        let text = forged.join("\n");
        let records = read_export(text.as_bytes()).unwrap();
        assert_eq!(records.len(), forged.len());
        for (i, record) in records.iter().enumerate() {
            assert_eq!(sshd_line_(record), None, "{}", forged[i]);
        }
        // The genuine record, also without a unit (sshd started outside systemd) and from
        // another configured executable.
        let no_unit = genuine.replace("_SYSTEMD_UNIT=ssh.service\n", "");
        let session = genuine
            .replace("_EXE=/usr/sbin/sshd", "_EXE=/usr/lib/openssh/sshd-session")
            .replace("_COMM=sshd", "_COMM=sshd-session")
            .replace(
                "_SYSTEMD_UNIT=ssh.service",
                "_SYSTEMD_UNIT=ssh@3-10.0.0.1:22-10.0.0.2:5.service",
            );
        for text in [genuine, no_unit, session] {
            let records = read_export(text.as_bytes()).unwrap();
            assert!(
                matches!(
                    sshd_line_(&records[0]).unwrap().event,
                    SshdEvent::Accepted(_)
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_export_text_is_an_error_not_a_panic() {
        assert!(read_export(b"=x\n").is_err());
        assert!(read_export(b"MESSAGE\n\x05\x00\x00").is_err());
        assert!(read_export(b"MESSAGE\n\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
        assert!(read_export(b"MESSAGE\n\x01\x00\x00\x00\x00\x00\x00\x00ab").is_err());
        assert_eq!(read_export(b"").unwrap(), vec![]);
        assert_eq!(read_export(b"\n\n").unwrap(), vec![]);
    }
}
