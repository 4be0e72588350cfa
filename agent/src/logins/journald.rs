//! The journald login source (cargo feature `journald`): sshd's records read with libsystemd.
//!
//! A libsystemd journal handle must stay on the thread that opened it, so one thread owns it:
//! it seeks to the persisted cursor (or the head of the journal), reads the records whose
//! trusted fields journald matches for root's sshd (`_UID=0` and `_COMM` `sshd` or
//! `sshd-session`; the syslog identifier, which any `logger -t sshd` sets, is not asked for), and
//! hands each over a bounded channel to the reader ([`JournalSource::read`]), waking the runtime.
//! The reader keeps only records whose trusted fields are sshd's in full ([`sshd_line`]: the
//! executable and the unit too). It blocks in `sd_journal_wait`, which
//! returns when journald appends (no polling). The position persisted is the `__CURSOR` of the
//! last record the reader took, so records in the channel at a crash are read again, not lost.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use keyward_common::sshd_log::LogLine;
use systemd::journal::{Journal, OpenDirectoryOptions, OpenOptions};
use tokio::sync::mpsc;

use super::export::{JournalRecord, SSHD_COMMS, cursor, sshd_line};
use crate::config::SshdTrust;

/// Records waiting for the reader before the journal thread waits.
const QUEUE: usize = 4096;

/// Why the journal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("opening the systemd journal: {0}")]
    Open(std::io::Error),
    #[error("starting the journal reader thread: {0}")]
    Thread(std::io::Error),
}

/// Records from the journal thread.
#[derive(Debug)]
pub struct JournalSource {
    records: Receiver<JournalRecord>,
    /// The cursor of the last record taken.
    position: String,
    trust: SshdTrust,
}

impl JournalSource {
    /// Starts the reader thread on the system journal after `cursor` (empty: from the start of
    /// the journal).
    pub fn start(
        cursor: String,
        wake: mpsc::Sender<()>,
        trust: SshdTrust,
    ) -> Result<JournalSource, JournalError> {
        Self::start_at(None, cursor, wake, trust)
    }

    /// The same on the journal files in `directory` (tests write them with
    /// `systemd-journal-remote`).
    pub fn start_in_directory(
        directory: PathBuf,
        cursor: String,
        wake: mpsc::Sender<()>,
        trust: SshdTrust,
    ) -> Result<JournalSource, JournalError> {
        Self::start_at(Some(directory), cursor, wake, trust)
    }

    fn start_at(
        directory: Option<PathBuf>,
        cursor: String,
        wake: mpsc::Sender<()>,
        trust: SshdTrust,
    ) -> Result<JournalSource, JournalError> {
        let (tx, records) = sync_channel(QUEUE);
        let (opened_tx, opened) = sync_channel(1);
        let after = cursor.clone();
        std::thread::Builder::new()
            .name("keyward-journal".into())
            .spawn(move || match open(directory, &after) {
                Ok(journal) => {
                    let _ = opened_tx.send(Ok(()));
                    follow(journal, &tx, &wake);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(JournalError::Thread)?;
        match opened.recv() {
            Ok(Ok(())) => Ok(JournalSource {
                records,
                position: cursor,
                trust,
            }),
            Ok(Err(e)) => Err(JournalError::Open(e)),
            Err(_) => Err(JournalError::Open(std::io::Error::other(
                "the journal thread stopped",
            ))),
        }
    }

    /// Takes up to `max` records; returns the sshd lines among them (records whose trusted
    /// fields are sshd's) and how many records were taken.
    pub fn read(&mut self, max: usize) -> (Vec<LogLine>, usize) {
        let mut lines = Vec::new();
        let mut taken = 0;
        while taken < max {
            match self.records.try_recv() {
                Ok(record) => {
                    taken += 1;
                    if let Some(c) = cursor(&record) {
                        self.position = c.to_owned();
                    }
                    lines.extend(sshd_line(&record, &self.trust));
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        (lines, taken)
    }

    pub fn position(&self) -> &str {
        &self.position
    }
}

fn open(directory: Option<PathBuf>, after: &str) -> std::io::Result<Journal> {
    let mut journal = match directory {
        None => OpenOptions::default()
            .system(true)
            .local_only(true)
            .open()?,
        Some(dir) => {
            OpenDirectoryOptions::default().open_directory(dir.as_os_str().as_encoded_bytes())?
        }
    };
    // Same field: OR; different fields: AND. Trusted fields only: `_UID=0` AND `_COMM` one of
    // sshd's names (the rest is checked on each record).
    for program in SSHD_COMMS {
        journal.match_add("_COMM", program)?;
    }
    journal.match_add("_UID", "0")?;
    if after.is_empty() {
        journal.seek_head()?;
    } else {
        journal.seek_cursor(after)?;
        // seek_cursor lands *on* the record: skip it when it is the one already read.
        if journal.next()? > 0 && !journal.test_cursor(after)? {
            journal.previous()?;
        }
    }
    Ok(journal)
}

fn follow(mut journal: Journal, tx: &SyncSender<JournalRecord>, wake: &mpsc::Sender<()>) {
    loop {
        match journal.next_entry() {
            Ok(Some(fields)) => {
                let mut record: JournalRecord = fields
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                if let Ok(c) = journal.cursor() {
                    record.insert("__CURSOR".into(), c.into_bytes());
                }
                if let Ok(usec) = journal.timestamp_usec() {
                    record.insert("__REALTIME_TIMESTAMP".into(), usec.to_string().into_bytes());
                }
                if tx.send(record).is_err() {
                    return; // The reader is gone.
                }
                let _ = wake.try_send(());
            }
            Ok(None) => {
                if let Err(error) = journal.wait(None) {
                    tracing::error!(%error, "waiting on the journal failed; journald login audit stopped");
                    return;
                }
            }
            Err(error) => {
                tracing::error!(%error, "reading the journal failed; journald login audit stopped");
                return;
            }
        }
    }
}
