//! What the agent sent of each recording and what the control plane acknowledged, in the state
//! directory (`recordings.json`), written after every change so that a restart sends the same
//! chunks again, byte for byte, and nothing twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spool::{Owner, SpoolName};
use crate::state_dir::{StateDir, StateDirError};

/// The file in the state directory.
pub const PROGRESS_FILE: &str = "recordings.json";
const VERSION: u32 = 1;

/// One chunk sent and not yet acknowledged: its bytes `[start, end)` of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub seq: u64,
    pub start: u64,
    pub end: u64,
    pub last: bool,
    pub dropped: u64,
    pub ended_at: Option<String>,
}

/// One recording followed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The file's name in the spool.
    pub file: String,
    pub pid: i32,
    pub started_ms: i64,
    pub input: bool,
    pub source_ip: String,
    pub source_port: u16,
    /// The user and tlog recording id of the first message.
    #[serde(with = "owner")]
    pub owner: Option<Owner>,
    /// Everything before this is held by the control plane.
    pub acked: u64,
    /// Where the next chunk starts.
    pub read_from: u64,
    pub next_seq: u64,
    pub sent: Vec<Sent>,
    /// Bytes dropped since the last chunk, said in the next.
    pub dropped_pending: u64,
    /// Data was skipped mid-line: whole lines start at the next `'\n'`.
    pub resync: bool,
    /// A line that tlog does not write was found: the rest of the file is dropped.
    pub poisoned: bool,
    /// The last message's time (Unix seconds).
    pub last_time: Option<f64>,
    /// The user who ran the recorder, when it still ran as the file was found.
    #[serde(default)]
    pub runner: Option<String>,
}

impl Entry {
    pub fn new(name: &SpoolName, file: String, runner: Option<String>) -> Self {
        Entry {
            file,
            pid: name.pid,
            started_ms: name.started_ms,
            input: name.input,
            source_ip: name.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            source_port: name.source_port,
            owner: None,
            acked: 0,
            read_from: 0,
            next_seq: 0,
            sent: Vec::new(),
            dropped_pending: 0,
            resync: false,
            poisoned: false,
            last_time: None,
            runner,
        }
    }

    /// Whose recording it is, as far as known: the first message's user, else who ran it.
    pub fn user(&self) -> Option<&str> {
        self.owner
            .as_ref()
            .map(|o| o.user.as_str())
            .or(self.runner.as_deref())
    }
}

mod owner {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Owner;

    pub fn serialize<S: Serializer>(owner: &Option<Owner>, s: S) -> Result<S::Ok, S::Error> {
        owner
            .as_ref()
            .map(|o| (o.user.as_str(), o.rec.as_str()))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Owner>, D::Error> {
        Ok(Option::<(String, String)>::deserialize(d)?.map(|(user, rec)| Owner { user, rec }))
    }
}

/// Every recording followed, by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub version: u32,
    pub entries: BTreeMap<String, Entry>,
}

impl Progress {
    /// Chunks sent and not acknowledged, over all recordings.
    pub fn in_flight(&self) -> usize {
        self.entries.values().map(|e| e.sent.len()).sum()
    }

    /// Loads the saved progress; a missing file is a fresh start.
    pub fn load(dir: &StateDir) -> Result<Progress, StateDirError> {
        let path = dir.file(PROGRESS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Progress::default()),
            Err(source) => return Err(StateDirError::Io { path, source }),
        };
        let progress: Progress =
            serde_json::from_slice(&bytes).map_err(|e| StateDirError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if progress.version != VERSION {
            return Err(StateDirError::Invalid {
                path,
                message: format!("unknown format version {}", progress.version),
            });
        }
        Ok(progress)
    }

    /// Writes the whole progress through a temporary file and a rename.
    pub fn store(&self, dir: &StateDir) -> Result<(), StateDirError> {
        let saved = Progress {
            version: VERSION,
            entries: self.entries.clone(),
        };
        let bytes = serde_json::to_vec(&saved).expect("plain data serialises");
        dir.write_file(PROGRESS_FILE, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert_eq!(Progress::load(&state).unwrap(), Progress::default());
        let name = SpoolName::parse("1000-42-o-5555-10.0.0.1.jsonl").unwrap();
        let mut progress = Progress::default();
        let mut entry = Entry::new(&name, "1000-42-o-5555-10.0.0.1.jsonl".into(), None);
        entry.owner = Some(Owner {
            user: "kwadmin".into(),
            rec: "r".into(),
        });
        entry.sent.push(Sent {
            seq: 0,
            start: 0,
            end: 10,
            last: false,
            dropped: 0,
            ended_at: None,
        });
        progress.entries.insert(name.id.clone(), entry);
        progress.store(&state).unwrap();
        let loaded = Progress::load(&state).unwrap();
        assert_eq!(loaded.entries, progress.entries);
        assert_eq!(loaded.in_flight(), 1);
        std::fs::write(state.file(PROGRESS_FILE), b"{\"version\":9,\"entries\":{}}").unwrap();
        assert!(Progress::load(&state).is_err());
    }
}
