//! SSH session recording: the sessions of the users the state records run under tlog, and what
//! tlog writes reaches the control plane, in order, once, whatever happens to the connection or
//! the agent in between.
//!
//! - [`recorder`] checks the host's set-up at start and makes the forced command the writer puts
//!   on a recorded user's key and principal lines (`command="WRAPPER output|input SPOOL"`): sshd
//!   then runs every session of those lines — shell, command, sftp — under `tlog-rec-session`,
//!   set-user-ID to its own user, which writes one JSON-lines file per session into the spool.
//! - [`spool`] reads those files: whole lines only, each a message of one managed user and one
//!   recording, and frees what the control plane holds.
//! - [`progress`] is what the agent has sent and what was acknowledged, per recording, kept in the
//!   state directory so that nothing is lost or sent twice across restarts.
//!
//! Delivery ([`Recordings`], driven by the runtime's event loop on a tick, on (re)connect and on
//! acknowledgements): each recording goes up as `RecordingChunk`s of whole lines, numbered from
//! 0; at most [`WINDOW`] chunks are unacknowledged at a time. A chunk's byte range is fixed when
//! it is first sent and kept on disk, so after a reconnect or a restart it is sent again exactly
//! (same `seq`, same bytes) and the control plane's de-duplication by `(recording, seq)` is sound.
//! When the recorder has exited and every line is sent, a `last` chunk ends the recording; once
//! that is acknowledged the file is deleted. The tlog files are the spool: the control plane can
//! be away for hours. Over `[recording] spool_max_bytes` on disk, the newest unsent data is
//! dropped and the next chunk of each recording that lost some says how much.
//!
//! A known gap (documented in AGENT.md): tlog records one session per audit session id, and on a
//! host that gives SSH logins none (a container without `CAP_AUDIT_CONTROL`), all sessions share
//! one id, so a session opened while another is recorded is not; the agent logs it once.

pub mod progress;
pub mod recorder;
pub mod spool;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use keyward_common::proto::{AgentMessage, RecordingChunk, agent_message};
use tokio::time::Instant;

use crate::config::RecordingConfig;
use crate::link::Link;
use crate::state_dir::StateDir;
use progress::{Entry, Progress, Sent};
use recorder::Recorder;
use spool::SpoolName;

/// Chunks sent and not yet acknowledged, over all recordings.
pub const WINDOW: usize = 4;
/// Recordings followed at once; more files wait in the spool.
pub const MAX_OPEN: usize = 64;
/// Recordings of one user followed at once: a user running the recorder by hand many times over
/// cannot take every place, and the other users' sessions are still followed.
pub const MAX_OPEN_PER_USER: usize = MAX_OPEN / 4;
/// Unacknowledged chunks are sent again after this.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the spool is looked at.
pub const TICK: Duration = Duration::from_secs(1);

/// Session recording as the runtime sees it.
#[derive(Debug)]
pub struct Recordings {
    recorder: Option<Recorder>,
    max_bytes: u64,
    users: BTreeSet<String>,
    /// The users the last applied state records; `None` until a state is applied after the
    /// agent starts. A recording of anyone else is not shipped unless it already was: a user can
    /// run the set-user-ID recorder by hand into the spool (its own name is in its key line), and
    /// a user the policy does not record must not be able to ship recordings of its own making.
    recorded: Option<BTreeSet<String>>,
    dir: StateDir,
    progress: Progress,
    /// When the oldest unacknowledged chunk was sent.
    waiting_since: Option<Instant>,
    warned_no_audit: bool,
}

impl Recordings {
    /// Checks the set-up; a host that cannot record records nothing and says why (not fatal).
    pub fn start(
        config: Option<&RecordingConfig>,
        users: BTreeSet<String>,
        dir: &StateDir,
    ) -> Self {
        let recorder = config.and_then(|config| match Recorder::check(config) {
            Ok(recorder) => {
                tracing::info!(spool = %recorder.spool().display(), "session recording on");
                Some(recorder)
            }
            Err(error) => {
                tracing::error!(%error, "session recording is configured but cannot work; no session is recorded");
                None
            }
        });
        let progress = match Progress::load(dir) {
            Ok(progress) => progress,
            Err(error) => {
                tracing::error!(%error, "the recordings' progress is unreadable; they are sent again from the start");
                Progress::default()
            }
        };
        Recordings {
            recorder,
            max_bytes: config.map_or(0, |c| c.spool_max_bytes),
            users,
            recorded: None,
            dir: dir.clone(),
            progress,
            waiting_since: None,
            warned_no_audit: false,
        }
    }

    /// No recording.
    pub fn off() -> Self {
        Self::start(None, BTreeSet::new(), &StateDir::new("/nonexistent"))
    }

    /// The checked set-up, for the writer's forced command (`None`: this host does not record).
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    /// The users the applied state records (`ManagedUser.recording`): from now on, a recording
    /// not yet shipped is shipped only if its user is one of them.
    pub(crate) fn set_recorded(&mut self, users: BTreeSet<String>) {
        self.recorded = Some(users);
    }

    /// Whether recordings of `user` are shipped: a managed user the applied state records.
    fn may_record(&self, user: &str) -> bool {
        self.users.contains(user) && self.recorded.as_ref().is_some_and(|r| r.contains(user))
    }

    /// When the spool is to be looked at next (never when the host does not record).
    pub(crate) fn next_tick(&self, last: Instant) -> Option<Instant> {
        self.recorder.as_ref().map(|_| last + TICK)
    }

    /// A new stream: every unacknowledged chunk is sent again, then what is next.
    pub(crate) fn on_connected(&mut self, link: &mut Link) {
        self.resend(link);
        self.pump(link);
    }

    /// The tick: new files, more lines, ended sessions; and a resend when the window is stuck.
    pub(crate) fn on_tick(&mut self, link: &mut Link) {
        if self
            .waiting_since
            .is_some_and(|since| since.elapsed() >= ACK_TIMEOUT)
        {
            tracing::warn!("no acknowledgement for recording chunks; sending them again");
            self.resend(link);
        }
        self.pump(link);
    }

    /// `RecordingAck{recording_id, seq}`: the control plane holds that chunk (and, chunks being
    /// sent in order, every earlier one of the recording).
    pub(crate) fn on_ack(&mut self, recording_id: &str, seq: u64, link: &mut Link) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let Some(entry) = self.progress.entries.get_mut(recording_id) else {
            return;
        };
        let Some(at) = entry.sent.iter().position(|s| s.seq == seq) else {
            return;
        };
        let acked: Vec<Sent> = entry.sent.drain(..=at).collect();
        let last = acked.last().expect("at least the acknowledged chunk");
        entry.acked = last.end;
        let path = recorder.spool().join(&entry.file);
        if last.last {
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, file = %path.display(), "cannot delete a shipped recording");
            }
            self.progress.entries.remove(recording_id);
        } else if let Ok(file) = spool::open(&path, recorder.recorder_uid().as_raw()) {
            spool::punch(&file, entry.acked);
        }
        self.store();
        if self.progress.in_flight() == 0 {
            self.waiting_since = None;
        }
        self.pump(link);
    }

    fn store(&self) {
        if let Err(error) = self.progress.store(&self.dir) {
            tracing::warn!(%error, "cannot save the recordings' progress");
        }
    }

    /// Sends every unacknowledged chunk again, byte for byte.
    fn resend(&mut self, link: &mut Link) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        if !link.is_up() {
            return;
        }
        let uid = recorder.recorder_uid().as_raw();
        let mut gone = Vec::new();
        for (id, entry) in &self.progress.entries {
            for sent in &entry.sent {
                let path = recorder.spool().join(&entry.file);
                let data = spool::open(&path, uid)
                    .and_then(|mut f| spool::read_range(&mut f, sent.start, sent.end));
                match data {
                    Ok(data) => {
                        link.send(chunk_message(id, entry, sent, data));
                    }
                    Err(error) => {
                        tracing::error!(%error, file = %path.display(), "a sent recording chunk cannot be read again; the recording is lost");
                        gone.push(id.clone());
                        break;
                    }
                }
            }
        }
        for id in gone {
            self.progress.entries.remove(&id);
        }
        if self.progress.in_flight() > 0 {
            self.waiting_since = Some(Instant::now());
        }
    }

    /// Follows new files and sends the next chunks while the window has room.
    fn pump(&mut self, link: &mut Link) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        self.discover(&recorder);
        self.bound_spool(&recorder);
        if !link.is_up() {
            return;
        }
        let ids: Vec<String> = self.progress.entries.keys().cloned().collect();
        let mut changed = false;
        for id in ids {
            while self.progress.in_flight() < WINDOW {
                match self.next_chunk(&recorder, &id) {
                    Some((sent, data)) => {
                        let entry = &self.progress.entries[&id];
                        if !link.send(chunk_message(&id, entry, &sent, data)) {
                            return;
                        }
                        let entry = self.progress.entries.get_mut(&id).expect("just read");
                        entry.read_from = sent.end;
                        entry.next_seq += 1;
                        entry.sent.push(sent);
                        self.waiting_since.get_or_insert_with(Instant::now);
                        changed = true;
                    }
                    None => break,
                }
            }
        }
        if changed {
            self.store();
        }
    }

    /// Files in the spool the agent does not follow yet, oldest first, up to [`MAX_OPEN`].
    fn discover(&mut self, recorder: &Recorder) {
        let Ok(dir) = std::fs::read_dir(recorder.spool()) else {
            return;
        };
        let mut names: Vec<(SpoolName, String)> = Vec::new();
        for item in dir.flatten() {
            let Some(file) = item.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            match SpoolName::parse(&file) {
                Some(name) => {
                    if !self.progress.entries.contains_key(&name.id) {
                        names.push((name, file));
                    }
                }
                None => {
                    tracing::warn!(
                        file,
                        "a file in the recordings spool the wrapper did not name; deleted"
                    );
                    let _ = std::fs::remove_file(item.path());
                }
            }
        }
        names.sort_by_key(|(name, _)| (name.started_ms, name.pid));
        for (name, file) in names {
            if self.progress.entries.len() >= MAX_OPEN {
                break;
            }
            // A recorder still running says who ran it: a user who may not be recorded is
            // refused at once, and none may hold more than its share of places.
            let runner = spool::recorder_runner(name.pid);
            if let Some(user) = &runner {
                if self.recorded.is_none() {
                    continue;
                }
                if !self.may_record(user) {
                    tracing::warn!(
                        file,
                        user,
                        "a recording started by a user the policy does not record (the recorder \
                         was run by hand); deleted"
                    );
                    let _ = std::fs::remove_file(recorder.spool().join(&file));
                    continue;
                }
                let open = self
                    .progress
                    .entries
                    .values()
                    .filter(|e| e.user() == Some(user.as_str()))
                    .count();
                if open >= MAX_OPEN_PER_USER {
                    continue;
                }
            }
            if !self.warned_no_audit && spool::without_audit_session(name.pid) {
                self.warned_no_audit = true;
                tracing::warn!(
                    "SSH sessions on this host have no audit session id: tlog records one session \
                     at a time, and a session opened while another is recorded is not"
                );
            }
            self.progress
                .entries
                .insert(name.id.clone(), Entry::new(&name, file, runner));
        }
    }

    /// Keeps the spool under `spool_max_bytes`: the newest recordings' unsent data is skipped
    /// (and said in their next chunk) until it fits.
    fn bound_spool(&mut self, recorder: &Recorder) {
        let uid = recorder.recorder_uid().as_raw();
        let mut total = 0;
        let mut sizes = Vec::new();
        for (id, entry) in &self.progress.entries {
            if let Ok(meta) = std::fs::symlink_metadata(recorder.spool().join(&entry.file)) {
                total += spool::allocated(&meta);
                sizes.push((id.clone(), meta.len()));
            }
        }
        if total <= self.max_bytes {
            return;
        }
        for (id, size) in sizes.into_iter().rev() {
            if total <= self.max_bytes {
                break;
            }
            let entry = self.progress.entries.get_mut(&id).expect("listed above");
            if size <= entry.read_from {
                continue;
            }
            let skipped = size - entry.read_from;
            let path = recorder.spool().join(&entry.file);
            if entry.owner.is_none()
                && let Ok(mut file) = spool::open(&path, uid)
            {
                // Whose it is, from its first line, before that is dropped too: the recording
                // is then still reported (with what it lost) rather than gone without a trace.
                entry.owner = spool::first_owner(&mut file);
            }
            tracing::error!(
                recording = id,
                bytes = skipped,
                "the recordings spool is full; newest data dropped"
            );
            entry.dropped_pending += skipped;
            entry.read_from = size;
            entry.resync = true;
            total = total.saturating_sub(skipped);
            if let Ok(file) = spool::open(&path, uid) {
                // Shipped and dropped bytes alike: the disk is what is short.
                spool::punch(&file, entry.acked);
                let unsent = entry.sent.last().map_or(entry.acked, |s| s.end);
                spool::punch_range(&file, unsent, size);
            }
        }
    }

    /// The next chunk of recording `id`, not yet sent: whole, checked lines from where the last
    /// one ended; or the `last` chunk once the recorder is gone and every line is sent.
    fn next_chunk(&mut self, recorder: &Recorder, id: &str) -> Option<(Sent, Vec<u8>)> {
        let uid = recorder.recorder_uid().as_raw();
        let entry = self.progress.entries.get_mut(id)?;
        if entry.sent.iter().any(|s| s.last) {
            return None;
        }
        let path = recorder.spool().join(&entry.file);
        let mut file = match spool::open(&path, uid) {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(%error, file = %path.display(), "a recording file cannot be read; forgotten");
                self.progress.entries.remove(id);
                return None;
            }
        };
        // The recorder is looked at before the file is read: lines read after it exited are
        // all there are.
        let alive = !entry.poisoned && spool::recorder_alive(entry.pid);
        if entry.resync {
            match spool::next_line_start(&mut file, entry.read_from).ok()? {
                Some(start) => {
                    entry.dropped_pending += start - entry.read_from;
                    entry.read_from = start;
                    entry.resync = false;
                }
                None if alive => return None,
                None => entry.resync = false,
            }
        }
        let (mut data, size) = if entry.poisoned {
            (Vec::new(), file.metadata().ok()?.len())
        } else {
            spool::read_lines(&mut file, entry.read_from).ok()?
        };
        if !data.is_empty() {
            let checked = spool::check_lines(&data, &mut entry.owner);
            if let Some(why) = &checked.bad {
                tracing::warn!(
                    recording = id,
                    why,
                    "a recording holds what tlog does not write; the rest is dropped"
                );
                entry.poisoned = true;
                data.truncate(checked.good);
            }
            if let Some(time) = checked.last_time {
                entry.last_time = Some(time);
            }
        }
        if let Some(owner) = &entry.owner {
            // Nothing of it shipped yet: its user must be one the state records. Until a
            // state is applied that is not known, and it waits.
            let first = entry.next_seq == 0;
            let recorded = self.recorded.as_ref();
            if first && recorded.is_none() {
                return None;
            }
            let why = if !self.users.contains(&owner.user) {
                Some("a recording of a user this agent does not manage; deleted")
            } else if entry.runner.as_ref().is_some_and(|r| *r != owner.user) {
                Some(
                    "a recording whose messages name another user than the one who ran the \
                     recorder; deleted",
                )
            } else if first && recorded.is_some_and(|r| !r.contains(&owner.user)) {
                Some(
                    "a recording of a user the policy does not record (the recorder was run \
                     by hand); deleted",
                )
            } else {
                None
            };
            if let Some(why) = why {
                tracing::warn!(recording = id, user = owner.user, "{why}");
                let _ = std::fs::remove_file(&path);
                self.progress.entries.remove(id);
                return None;
            }
        }
        let start = entry.read_from;
        let end = start + data.len() as u64;
        // Ended: the recorder is gone and nothing whole is left to read (a line it left
        // unfinished, or what follows a line that is not tlog's, is dropped and counted).
        let ended = !alive && (entry.poisoned || end >= size || data.is_empty());
        if data.is_empty() && !ended {
            return None;
        }
        if ended && entry.owner.is_none() {
            // The recorder wrote nothing it could be trusted for: no recording to speak of.
            let _ = std::fs::remove_file(&path);
            self.progress.entries.remove(id);
            return None;
        }
        if ended {
            entry.dropped_pending += size.saturating_sub(end);
        }
        let sent = Sent {
            seq: entry.next_seq,
            start,
            end,
            last: ended,
            dropped: std::mem::take(&mut entry.dropped_pending),
            ended_at: ended.then(|| ended_at(entry.last_time)),
        };
        Some((sent, data))
    }
}

fn ended_at(last_time: Option<f64>) -> String {
    let at = last_time
        .and_then(|t| Utc.timestamp_millis_opt((t * 1000.0) as i64).single())
        .unwrap_or_else(Utc::now);
    iso(at)
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn chunk_message(id: &str, entry: &Entry, sent: &Sent, data: Vec<u8>) -> AgentMessage {
    let started_at = Utc
        .timestamp_millis_opt(entry.started_ms)
        .single()
        .map(iso)
        .unwrap_or_default();
    AgentMessage {
        msg: Some(agent_message::Msg::Recording(RecordingChunk {
            recording_id: id.to_owned(),
            seq: sent.seq,
            user: entry
                .owner
                .as_ref()
                .map(|o| o.user.clone())
                .unwrap_or_default(),
            source_ip: entry.source_ip.clone(),
            source_port: u32::from(entry.source_port),
            started_at,
            data,
            last: sent.last,
            ended_at: sent.ended_at.clone().unwrap_or_default(),
            dropped_bytes: sent.dropped,
            input: entry.input,
        })),
    }
}
