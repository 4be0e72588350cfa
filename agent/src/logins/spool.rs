//! `logins.bin`: everything the login audit keeps across restarts, in one file replaced whole.
//!
//! The read position in the log, the next sequence number, the spooled events (read, not yet
//! acknowledged) and the sessions open according to the log all change together when lines are
//! read. Keeping them in one file written through a temporary file and a rename
//! ([`StateDir::write_file`]) means a SIGKILL at any moment leaves either the state before the
//! lines were read or the state after: the lines are then read again and get the *same* sequence
//! numbers (nothing lost, nothing repeated), or they are not read again.
//!
//! The file is a protobuf message (the spool holds the wire's own `LoginEvent`s), rewritten
//! whole on every change: 10,000 spooled events are about 2 MB, and the spool is that full only
//! while the control plane is unreachable.

use keyward_common::proto::LoginEvent;
use prost::Message;

use crate::state_dir::{StateDir, StateDirError};

/// The file in the state directory.
pub const LOGINS_FILE: &str = "logins.bin";
/// The format of [`Saved`]; another number is refused (and the audit starts afresh).
const VERSION: u32 = 1;

/// The persisted state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Saved {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Which log the position is in (`file:/var/log/auth.log`, `journald`): a position in another
    /// log than the configured one is not used.
    #[prost(string, tag = "2")]
    pub source: String,
    /// The sequence number the next event gets (the first is 1).
    #[prost(uint64, tag = "3")]
    pub next_cursor: u64,
    /// Events dropped from the full spool and not yet reported in an acknowledged batch.
    #[prost(uint64, tag = "4")]
    pub dropped: u64,
    /// Read, not yet acknowledged, oldest first, cursors increasing.
    #[prost(message, repeated, tag = "5")]
    pub events: Vec<LoginEvent>,
    /// The file source's open files: rotated ones still drained first, the current one last.
    #[prost(message, repeated, tag = "6")]
    pub files: Vec<FilePosition>,
    /// The journald source's position (`__CURSOR` of the last record read).
    #[prost(string, tag = "7")]
    pub journal_cursor: String,
    /// Accepted logins: open sessions, and closed ones whose connection may still be live (see
    /// [`crate::sessions::revoke`] for why closed ones are kept).
    #[prost(message, repeated, tag = "8")]
    pub sessions: Vec<OpenSession>,
    /// `/proc/sys/kernel/random/boot_id` when saved: after a reboot no session is open any more.
    #[prost(string, tag = "9")]
    pub boot_id: String,
    /// Users some of whose login records were dropped when `sessions` overflowed: their
    /// attribution is incomplete, so a revocation ends all their sessions (and then clears this).
    #[prost(string, repeated, tag = "10")]
    pub overflowed: Vec<String>,
}

/// Where reading stopped in one file.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FilePosition {
    #[prost(uint64, tag = "1")]
    pub dev: u64,
    #[prost(uint64, tag = "2")]
    pub inode: u64,
    /// The byte after the last complete line read.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    /// The last bytes before `offset`: the same inode with other bytes there was truncated (and
    /// written again) or is another file that reused the inode number.
    #[prost(bytes = "vec", tag = "4")]
    pub tail: Vec<u8>,
}

/// A session opened by an accepted login.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OpenSession {
    #[prost(string, tag = "1")]
    pub ip: String,
    #[prost(uint32, tag = "2")]
    pub port: u32,
    #[prost(string, tag = "3")]
    pub user: String,
    /// `keyward_common::proto::LoginMethod`.
    #[prost(int32, tag = "4")]
    pub method: i32,
    #[prost(string, tag = "5")]
    pub key_type: String,
    /// Empty for a login without a key.
    #[prost(string, tag = "6")]
    pub fingerprint: String,
    /// The monitor's pid, when the log names it (syslog, journald); 0 otherwise.
    #[prost(uint32, tag = "7")]
    pub pid: u32,
    /// The event that opened it.
    #[prost(uint64, tag = "8")]
    pub cursor: u64,
    /// sshd logged its end (or another login from the same address and port came after it).
    #[prost(bool, tag = "9")]
    pub closed: bool,
    /// The login was verified when read (journald's trusted fields, or a live connection of the
    /// real sshd's monitor for the user). Records of older agents, which did not verify, are
    /// `false` and count for nothing.
    #[prost(bool, tag = "10")]
    pub verified: bool,
    /// The certificate's key id (as sshd logged it) for a login by certificate; `fingerprint` is
    /// then the certified key's. Absent in records of older agents: their certificate logins
    /// count as logins by the certified key, which keep no session.
    #[prost(string, optional, tag = "11")]
    pub certificate_id: Option<String>,
    /// The fingerprint of the CA key that signed that certificate (`SHA256:…`, as sshd logged
    /// it). Absent in records of older agents: their certificate logins keep no session.
    #[prost(string, optional, tag = "12")]
    pub certificate_ca: Option<String>,
}

impl Saved {
    /// An empty audit for `source`.
    pub fn fresh(source: &str) -> Self {
        Saved {
            version: VERSION,
            source: source.to_owned(),
            next_cursor: 1,
            ..Saved::default()
        }
    }

    /// Loads the saved state. A missing file is a fresh start; an unreadable one is an error the
    /// caller logs before starting afresh (the spool is then lost, and says so).
    pub fn load(dir: &StateDir) -> Result<Option<Saved>, StateDirError> {
        let path = dir.file(LOGINS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateDirError::Io { path, source }),
        };
        let saved = Saved::decode(bytes.as_slice()).map_err(|e| StateDirError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if saved.version != VERSION || saved.next_cursor == 0 {
            return Err(StateDirError::Invalid {
                path,
                message: format!("unknown format version {}", saved.version),
            });
        }
        Ok(Some(saved))
    }

    /// Writes the whole state through a temporary file and a rename.
    pub fn store(&self, dir: &StateDir) -> Result<(), StateDirError> {
        dir.write_file(LOGINS_FILE, &self.encode_to_vec())
    }

    /// Appends events read from the log, giving each the next sequence number; when the spool
    /// goes over `max`, the oldest are dropped and counted. Returns how many were dropped.
    pub fn append(&mut self, events: impl IntoIterator<Item = LoginEvent>, max: usize) -> u64 {
        for mut event in events {
            event.cursor = self.next_cursor;
            self.next_cursor += 1;
            self.events.push(event);
        }
        let over = self.events.len().saturating_sub(max.max(1));
        if over > 0 {
            self.events.drain(..over);
            self.dropped += over as u64;
        }
        over as u64
    }

    /// Forgets the events up to and including `cursor`. Returns how many.
    pub fn acknowledge(&mut self, cursor: u64) -> usize {
        let done = self.events.partition_point(|e| e.cursor <= cursor);
        self.events.drain(..done);
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str) -> LoginEvent {
        LoginEvent {
            user: user.into(),
            ..LoginEvent::default()
        }
    }

    #[test]
    fn cursors_increase_and_the_oldest_are_dropped_when_full() {
        let mut s = Saved::fresh("file:/x");
        assert_eq!(s.append([event("a"), event("b")], 3), 0);
        assert_eq!(s.append([event("c"), event("d"), event("e")], 3), 2);
        let cursors: Vec<u64> = s.events.iter().map(|e| e.cursor).collect();
        assert_eq!(cursors, vec![3, 4, 5]);
        assert_eq!(s.events[0].user, "c");
        assert_eq!(s.dropped, 2);
        assert_eq!(s.next_cursor, 6);
        assert_eq!(s.acknowledge(4), 2);
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.acknowledge(4), 0);
        assert_eq!(s.acknowledge(100), 1);
        assert_eq!(s.next_cursor, 6, "acknowledging never reuses a cursor");
    }

    #[test]
    fn saved_state_round_trips_and_bad_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        assert_eq!(Saved::load(&dir).unwrap(), None);
        let mut s = Saved::fresh("file:/x");
        s.append([event("a")], 10);
        s.files.push(FilePosition {
            dev: 1,
            inode: 2,
            offset: 3,
            tail: b"x\n".to_vec(),
        });
        s.store(&dir).unwrap();
        assert_eq!(Saved::load(&dir).unwrap(), Some(s));
        std::fs::write(dir.file(LOGINS_FILE), b"\xff\xff\xff").unwrap();
        assert!(Saved::load(&dir).is_err());
        std::fs::write(dir.file(LOGINS_FILE), Saved::default().encode_to_vec()).unwrap();
        assert!(Saved::load(&dir).is_err());
    }
}
