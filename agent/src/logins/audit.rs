//! The login audit's core, without async: read new log lines, turn sshd's events into
//! `LoginEvent`s with sequence numbers, spool them, track open sessions, persist it all at once.
//!
//! [`super::Logins`] runs it on blocking threads for the runtime; tests drive it directly.
//!
//! **Only sshd speaks for sshd.** Every event says whether it is *verified*:
//!
//! - journald: the source takes only records whose trusted fields are root's sshd
//!   ([`super::export::sshd_line`]); they are all verified.
//! - a log file (`sshd -E`, `/var/log/auth.log`) cannot say who wrote a line. An accepted login
//!   read from it is verified only when, at read time, a live TCP connection from its address
//!   and port is held by a process whose executable is the real sshd, running as root, titled
//!   `sshd: USER [priv]` (or `sshd-session: USER [priv]`) for the user the line names, and whose
//!   pid is the line's when it has one. One [`ProcSnapshot`] serves a whole read batch, and only
//!   a batch with accepted logins takes one. Every other line of a file is unverified.
//!
//! Unverified events are spooled and sent like the others (the control plane shows them as
//! claims), but never enter the table of login records that a revocation consults
//! ([`crate::sessions::revoke`]): a forged flood can neither keep a session nor push a genuine
//! record out.
//! Verified records are bounded ([`MAX_OPEN_SESSIONS`], [`MAX_PER_CONNECTION`]); when the table
//! overflows anyway, the users whose records were dropped are marked *incomplete* and a
//! revocation ends all their sessions.

use std::net::SocketAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use keyward_common::proto::{LoginBatch, LoginEvent, LoginMethod, LoginOutcome};
use keyward_common::sshd_log::{self, AuthMethod, LogLine, SshdEvent};
use tokio::sync::mpsc;

use super::LoginError;
use super::file::FileFollower;
use super::spool::{OpenSession, Saved};
use crate::config::{LoginSource, LoginsConfig, SshdTrust};
use crate::procs::ProcSnapshot;
use crate::sessions::revoke::SessionAttribution;
use crate::sessions::{Role, classify};
use crate::state_dir::StateDir;

/// While a long backlog is read (a first start on a big auth.log), the state is stored at most
/// this often: events not stored yet are not sent, and a crash reads them again.
const STORE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Verified login records kept; past this those whose connection is gone are forgotten, and then
/// (only when that is not enough) the oldest, whose users' attribution is then incomplete.
pub const MAX_OPEN_SESSIONS: usize = 4096;
/// Records kept per connection (address and port): more verified logins for one connection than
/// this are not recorded (the ones there are closed already, so the connection's session ends).
pub const MAX_PER_CONNECTION: usize = 8;
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What one read did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Events added to the spool.
    pub added: usize,
    /// Events dropped from the full spool by this read.
    pub dropped: u64,
    /// The read stopped at its limit: more is waiting.
    pub more: bool,
}

enum Source {
    File(FileFollower),
    #[cfg(feature = "journald")]
    Journald(super::journald::JournalSource),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(follower) => write!(f, "File({})", follower.path().display()),
            #[cfg(feature = "journald")]
            Source::Journald(_) => f.write_str("Journald"),
        }
    }
}

/// The audit of one host's SSH logins.
#[derive(Debug)]
pub struct LoginAudit {
    saved: Saved,
    source: Source,
    dir: StateDir,
    max_events: usize,
    /// `next_cursor` as last stored: only events below it are sent, so an event the control
    /// plane has seen is never given another number after a crash.
    stored_next: u64,
    /// The cursors of the batch in flight, and how many of its events the full spool dropped
    /// meanwhile: if the batch is acknowledged they were delivered, not lost.
    in_flight: Option<(u64, u64)>,
    dropped_in_flight: u64,
    /// Changes read and not yet stored, and when the state was last stored.
    unstored: bool,
    stored_at: std::time::Instant,
    /// What counts as sshd.
    trust: SshdTrust,
    /// `/proc` (another root in tests).
    proc_root: std::path::PathBuf,
    /// Raised whenever the table overflows: an incomplete attribution is cleared only if no
    /// overflow came after it.
    overflows: u64,
}

/// What the position in the saved state is valid for.
fn source_id(config: &LoginsConfig) -> String {
    match config.source {
        LoginSource::File => format!("file:{}", config.path.display()),
        LoginSource::Journald => "journald".into(),
        LoginSource::Off => "off".into(),
    }
}

fn current_boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl LoginAudit {
    /// Loads the saved state from `dir` and opens the configured source (`wake` hears from the
    /// journald thread; the file source's wake-ups come from [`super::file::DirWatch`]).
    pub fn open(
        config: &LoginsConfig,
        dir: StateDir,
        wake: &mpsc::Sender<()>,
    ) -> Result<LoginAudit, LoginError> {
        let id = source_id(config);
        let mut saved = match Saved::load(&dir) {
            Ok(Some(saved)) => saved,
            Ok(None) => fresh(&id),
            Err(error) => {
                tracing::error!(%error, "the login audit state is unreadable; starting afresh (its spooled events are lost)");
                fresh(&id)
            }
        };
        if saved.source != id {
            tracing::info!(from = %saved.source, to = %id, "the login log changed; reading the new one from its start");
            saved.source = id;
            saved.files.clear();
            saved.journal_cursor.clear();
        }
        let boot_id = current_boot_id();
        if saved.boot_id != boot_id {
            // Sessions do not survive a reboot; their Disconnected lines may never have come.
            saved.sessions.clear();
            saved.overflowed.clear();
            saved.boot_id = boot_id;
        }
        let _ = wake;
        let source = match config.source {
            LoginSource::File => Source::File(FileFollower::new(&config.path, saved.files.clone())),
            #[cfg(feature = "journald")]
            LoginSource::Journald => Source::Journald(super::journald::JournalSource::start(
                saved.journal_cursor.clone(),
                wake.clone(),
                config.trust(),
            )?),
            #[cfg(not(feature = "journald"))]
            LoginSource::Journald => return Err(LoginError::NoJournald),
            LoginSource::Off => return Err(LoginError::Off),
        };
        Ok(LoginAudit {
            in_flight: None,
            dropped_in_flight: 0,
            unstored: false,
            stored_at: std::time::Instant::now(),
            stored_next: saved.next_cursor,
            saved,
            source,
            dir,
            max_events: config.spool_max_events.max(1),
            trust: config.trust(),
            proc_root: std::path::PathBuf::from("/proc"),
            overflows: 0,
        })
    }

    /// Reads processes and connections under `proc_root` instead of `/proc` (tests).
    pub fn with_proc_root(mut self, proc_root: impl Into<std::path::PathBuf>) -> Self {
        self.proc_root = proc_root.into();
        self
    }

    /// Reads up to `max_lines` new lines (records) and spools their events; the state is stored
    /// when anything changed.
    pub fn read_available(&mut self, max_lines: usize) -> Result<ReadOutcome, LoginError> {
        let (lines, taken, trusted): (Vec<LogLine>, usize, bool) = match &mut self.source {
            Source::File(follower) => {
                let raw = follower
                    .read(max_lines)
                    .map_err(|source| LoginError::Read {
                        path: follower.path().to_path_buf(),
                        source,
                    })?;
                let taken = raw.len();
                (
                    raw.iter().filter_map(|l| sshd_log::parse_line(l)).collect(),
                    taken,
                    false,
                )
            }
            #[cfg(feature = "journald")]
            Source::Journald(journal) => {
                // Only records whose trusted fields are sshd's come out of the source.
                let (lines, taken) = journal.read(max_lines);
                (lines, taken, true)
            }
        };
        let (verified, snapshot) = if trusted {
            (vec![true; lines.len()], None)
        } else {
            self.corroborate(&lines)
        };
        let now = Utc::now();
        let mut events = Vec::new();
        let mut sessions_changed = false;
        for (line, verified) in lines.iter().zip(verified) {
            let cursor = self.saved.next_cursor + events.len() as u64;
            sessions_changed |= self.track_session(line, cursor, verified, snapshot.as_ref());
            events.extend(login_event(line, now).map(|e| LoginEvent { verified, ..e }));
        }
        let added = events.len();
        // The spool's cursors are contiguous and drops take its front.
        let lowest = self
            .saved
            .events
            .first()
            .map_or(self.saved.next_cursor, |e| e.cursor);
        let dropped = self.saved.append(events, self.max_events);
        if let Some((first, last)) = self.in_flight {
            let (from, to) = (lowest.max(first), (lowest + dropped).min(last + 1));
            self.dropped_in_flight += to.saturating_sub(from);
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                total = self.saved.dropped,
                "the login spool is full: dropped the oldest events"
            );
        }
        let moved = self.save_position();
        self.unstored |= added > 0 || moved || sessions_changed;
        let more = taken >= max_lines;
        if self.unstored && (!more || self.stored_at.elapsed() >= STORE_EVERY) {
            self.store();
        }
        Ok(ReadOutcome {
            added,
            dropped,
            more,
        })
    }

    /// Copies the source's position into the saved state; whether it moved.
    fn save_position(&mut self) -> bool {
        match &self.source {
            Source::File(follower) => {
                let now = follower.positions();
                let moved = now != self.saved.files;
                self.saved.files = now;
                moved
            }
            #[cfg(feature = "journald")]
            Source::Journald(journal) => {
                let moved = journal.position() != self.saved.journal_cursor;
                self.saved.journal_cursor = journal.position().to_owned();
                moved
            }
        }
    }

    fn store(&mut self) {
        match self.saved.store(&self.dir) {
            Ok(()) => {
                self.stored_next = self.saved.next_cursor;
                self.unstored = false;
                self.stored_at = std::time::Instant::now();
            }
            Err(error) => {
                tracing::error!(%error, "cannot store the login audit state; new events wait until it can")
            }
        }
    }

    /// Which lines of a file batch are verified (module docs), and the snapshot that said so
    /// (none when the batch has no accepted login: then nothing is read).
    fn corroborate(&self, lines: &[LogLine]) -> (Vec<bool>, Option<ProcSnapshot>) {
        if !lines
            .iter()
            .any(|l| matches!(l.event, SshdEvent::Accepted(_)))
        {
            return (vec![false; lines.len()], None);
        }
        // Monitors run as root: only root's sshd sockets are needed.
        let snapshot = match ProcSnapshot::take(&self.proc_root, &self.trust, &[0]) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(%error, "cannot read /proc: the accepted logins read now stay unverified");
                return (vec![false; lines.len()], None);
            }
        };
        let verified = lines
            .iter()
            .map(|line| match &line.event {
                SshdEvent::Accepted(auth) => {
                    corroborated(&snapshot, &auth.user, auth.source, line.pid)
                }
                _ => false,
            })
            .collect();
        (verified, Some(snapshot))
    }

    /// Keeps the table of verified login records current; whether it changed.
    fn track_session(
        &mut self,
        line: &LogLine,
        cursor: u64,
        verified: bool,
        snapshot: Option<&ProcSnapshot>,
    ) -> bool {
        let sessions = &mut self.saved.sessions;
        match &line.event {
            // An unverified login is no evidence of anything: it does not touch the table.
            SshdEvent::Accepted(_) if !verified => false,
            SshdEvent::Accepted(auth) => {
                let (ip, port) = endpoint(auth.source);
                // A new login from the same address and port: the earlier one is over (or one
                // of the two lines is forged; the record stays, see revoke).
                let mut same = 0;
                for s in sessions.iter_mut() {
                    if s.ip == ip && s.port == port {
                        s.closed = true;
                        same += 1;
                    }
                }
                if same >= MAX_PER_CONNECTION {
                    tracing::warn!(%ip, port, "too many logins claim one connection: not recording more");
                    return true;
                }
                let key = auth.key.as_ref();
                sessions.push(OpenSession {
                    ip,
                    port,
                    user: auth.user.clone(),
                    method: method(&auth.method) as i32,
                    key_type: key.map(|k| k.key_type.clone()).unwrap_or_default(),
                    fingerprint: key.map(|k| k.fingerprint.clone()).unwrap_or_default(),
                    pid: line.pid.unwrap_or(0),
                    cursor,
                    closed: false,
                    verified: true,
                    certificate_id: key
                        .and_then(|k| k.certificate.as_ref())
                        .map(|c| c.key_id.clone()),
                    certificate_ca: key
                        .and_then(|k| k.certificate.as_ref())
                        .map(|c| c.ca_fingerprint.clone()),
                });
                if sessions.len() > MAX_OPEN_SESSIONS {
                    // A journal batch has no snapshot: read /proc now (once per overflow).
                    let taken;
                    let snapshot = match snapshot {
                        Some(snapshot) => Some(snapshot),
                        None => {
                            taken = ProcSnapshot::take(&self.proc_root, &self.trust, &[0])
                                .inspect_err(|error| tracing::warn!(%error, "cannot read /proc to forget ended sessions"))
                                .ok();
                            taken.as_ref()
                        }
                    };
                    let dropped = prune(sessions, snapshot);
                    if !dropped.is_empty() {
                        self.overflows += 1;
                        for user in dropped {
                            if !self.saved.overflowed.contains(&user) {
                                tracing::warn!(%user, "the login records overflowed: the user's sessions all end at the next revocation");
                                self.saved.overflowed.push(user);
                            }
                        }
                    }
                }
                true
            }
            SshdEvent::Disconnected { user, source } => {
                let (ip, port) = endpoint(*source);
                let mut changed = false;
                for s in sessions.iter_mut() {
                    if s.ip == ip && s.port == port && &s.user == user && !s.closed {
                        s.closed = true;
                        changed = true;
                    }
                }
                changed
            }
            _ => false,
        }
    }

    /// The oldest spooled events (at most `max`), for the control plane; `None` when there is
    /// nothing to send.
    pub fn batch(&self, max: usize) -> Option<LoginBatch> {
        let events: Vec<LoginEvent> = self
            .saved
            .events
            .iter()
            .take_while(|e| e.cursor < self.stored_next)
            .take(max)
            .cloned()
            .collect();
        let dropped = self.saved.dropped;
        (!events.is_empty()).then_some(LoginBatch { events, dropped })
    }

    /// The batch with cursors `first..=last` was sent.
    pub fn sent(&mut self, first: u64, last: u64) {
        self.in_flight = Some((first, last));
        self.dropped_in_flight = 0;
    }

    /// The batch in flight will not be acknowledged (the stream ended, or it is sent again).
    pub fn unsent(&mut self) {
        self.in_flight = None;
        self.dropped_in_flight = 0;
    }

    /// The control plane stored every event up to `cursor`, and the batch that carried
    /// `dropped_reported` as its drop count: forget them.
    pub fn acknowledge(&mut self, cursor: u64, dropped_reported: u64) {
        let removed = self.saved.acknowledge(cursor);
        let before = self.saved.dropped;
        let mut delivered = 0;
        if let Some((_, last)) = self.in_flight
            && cursor >= last
        {
            // Dropped from the spool while in flight, yet stored: not lost after all.
            delivered = std::mem::take(&mut self.dropped_in_flight);
            self.in_flight = None;
        }
        self.saved.dropped = before.saturating_sub(dropped_reported + delivered);
        if removed > 0 || self.saved.dropped != before {
            self.store();
        }
    }

    /// The spool, oldest first.
    pub fn spooled(&self) -> &[LoginEvent] {
        &self.saved.events
    }

    /// Dropped events not yet reported in an acknowledged batch.
    pub fn dropped(&self) -> u64 {
        self.saved.dropped
    }

    /// The sessions the log says are open.
    pub fn open_sessions(&self) -> Vec<&OpenSession> {
        self.saved.sessions.iter().filter(|s| !s.closed).collect()
    }

    /// What the verified login records say about `user`'s open sessions.
    pub fn attribution(&self, user: &str) -> SessionAttribution {
        super::attribution::of_user(
            &self.saved.sessions,
            user,
            self.saved.overflowed.iter().any(|u| u == user),
            self.trust.clone(),
        )
    }

    /// Every login record (verified ones only: unverified logins are never recorded).
    pub fn records(&self) -> &[OpenSession] {
        &self.saved.sessions
    }

    /// The count of overflows so far (see [`LoginAudit::overflow_handled`]).
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// A revocation ended every session of `user` after an incomplete attribution taken when
    /// [`LoginAudit::overflows`] was `seen`: its attribution is complete again, unless the table
    /// overflowed since.
    pub fn overflow_handled(&mut self, user: &str, seen: u64) {
        if self.overflows == seen && self.saved.overflowed.iter().any(|u| u == user) {
            self.saved.overflowed.retain(|u| u != user);
            self.store();
        }
    }
}

/// Whether `snapshot` corroborates an accepted login of `user` from `source` (logged by `pid`
/// when the line says): the connection is held by the real sshd's root monitor titled for
/// `user` (and that monitor is `pid`).
pub fn corroborated(
    snapshot: &ProcSnapshot,
    user: &str,
    source: SocketAddr,
    pid: Option<u32>,
) -> bool {
    snapshot.holders(source).into_iter().any(|holder| {
        snapshot.process(holder).is_some_and(|p| {
            p.sshd
                && p.uid == 0
                && classify(&p.title, user) == Some(Role::Monitor)
                && pid.is_none_or(|pid| i32::try_from(pid).is_ok_and(|pid| pid == p.pid))
        })
    })
}

/// A state with no history. Its first sequence number is the time in microseconds, so the
/// numbers of a state that was lost (deleted, unreadable) are not handed out again: the control
/// plane would take the new events for duplicates.
fn fresh(id: &str) -> Saved {
    let mut saved = Saved::fresh(id);
    saved.next_cursor = u64::try_from(Utc::now().timestamp_micros())
        .unwrap_or(1)
        .max(1);
    saved.boot_id = current_boot_id();
    saved
}

/// Forgets the login records whose connection is gone (in `snapshot`); then, only if still too
/// many, the oldest. Returns the users whose records were dropped while their connection may
/// still be live.
fn prune(sessions: &mut Vec<OpenSession>, snapshot: Option<&ProcSnapshot>) -> Vec<String> {
    if let Some(snapshot) = snapshot {
        sessions.retain(|s| {
            s.ip.parse()
                .ok()
                .and_then(|ip| Some(SocketAddr::new(ip, u16::try_from(s.port).ok()?)))
                .is_some_and(|source| snapshot.is_live(source))
        });
    }
    let mut dropped = Vec::new();
    if sessions.len() > MAX_OPEN_SESSIONS {
        sessions.sort_by_key(|s| s.cursor);
        let excess = sessions.len() - MAX_OPEN_SESSIONS;
        for s in sessions.drain(..excess) {
            if !dropped.contains(&s.user) {
                dropped.push(s.user);
            }
        }
    }
    dropped
}

fn endpoint(source: SocketAddr) -> (String, u32) {
    (source.ip().to_string(), u32::from(source.port()))
}

fn method(method: &AuthMethod) -> LoginMethod {
    match method {
        AuthMethod::Publickey => LoginMethod::Publickey,
        AuthMethod::Password => LoginMethod::Password,
        AuthMethod::KeyboardInteractive => LoginMethod::KeyboardInteractive,
        AuthMethod::Other(_) => LoginMethod::Other,
    }
}

/// Longest user name an event carries (the control plane keeps as much; sshd's own is shorter).
pub const MAX_EVENT_USER: usize = 64;
/// Longest key type an event carries.
pub const MAX_EVENT_KEY_TYPE: usize = 32;
/// Longest fingerprint an event carries (`SHA256:` and 43 characters); a longer one is dropped.
pub const MAX_EVENT_FINGERPRINT: usize = 64;
/// Longest certificate key id an event carries: what the parser reads at most (a longer one is
/// no certificate there, see [`sshd_log::MAX_CERTIFICATE_KEY_ID`]); a longer one is dropped,
/// not cut (a cut key id would name another certificate).
pub const MAX_EVENT_CERTIFICATE_ID: usize = sshd_log::MAX_CERTIFICATE_KEY_ID;

/// At most `max` bytes of `text`, cut on a character boundary. A line anyone can write (a
/// `logger` line read from auth.log) must not make a batch the control plane refuses (1 MiB),
/// which would stop this host's login uploads for good.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The wire event for a log line (unverified: the caller says otherwise); `None` for lines that
/// are no login event (`User child`). Fields are cut to the control plane's limits.
pub fn login_event(line: &LogLine, read_at: DateTime<Utc>) -> Option<LoginEvent> {
    let at = line.at.map_or_else(
        || read_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        |t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    );
    let base = |outcome: LoginOutcome, user: &str, source: SocketAddr| LoginEvent {
        cursor: 0,
        at: at.clone(),
        outcome: outcome as i32,
        method: LoginMethod::Unspecified as i32,
        user: cut(user, MAX_EVENT_USER),
        source_ip: source.ip().to_string(),
        source_port: u32::from(source.port()),
        key_type: String::new(),
        fingerprint: String::new(),
        sshd_pid: line.pid.unwrap_or(0),
        verified: false,
        ..LoginEvent::default()
    };
    match &line.event {
        SshdEvent::Accepted(auth) | SshdEvent::Failed(auth) => {
            let outcome = if matches!(line.event, SshdEvent::Accepted(_)) {
                LoginOutcome::Accepted
            } else {
                LoginOutcome::Failed
            };
            let key = auth.key.as_ref();
            // A certificate's fields come together or not at all.
            let certificate = key.and_then(|k| k.certificate.as_ref()).filter(|c| {
                c.key_id.len() <= MAX_EVENT_CERTIFICATE_ID
                    && c.ca_fingerprint.len() <= MAX_EVENT_FINGERPRINT
            });
            Some(LoginEvent {
                method: method(&auth.method) as i32,
                key_type: key
                    .map(|k| cut(&k.key_type, MAX_EVENT_KEY_TYPE))
                    .unwrap_or_default(),
                fingerprint: key
                    .map(|k| k.fingerprint.clone())
                    .filter(|f| f.len() <= MAX_EVENT_FINGERPRINT)
                    .unwrap_or_default(),
                certificate_id: certificate.map(|c| c.key_id.clone()).unwrap_or_default(),
                certificate_serial: certificate.map_or(0, |c| c.serial),
                certificate_ca: certificate
                    .map(|c| c.ca_fingerprint.clone())
                    .unwrap_or_default(),
                ..base(outcome, &auth.user, auth.source)
            })
        }
        SshdEvent::InvalidUser { user, source } => {
            Some(base(LoginOutcome::InvalidUser, user, *source))
        }
        SshdEvent::Disconnected { user, source } => {
            Some(base(LoginOutcome::Disconnected, user, *source))
        }
        SshdEvent::ClosedPreauth { user, source, .. } => Some(base(
            LoginOutcome::ClosedPreauth,
            user.as_deref().unwrap_or(""),
            *source,
        )),
        SshdEvent::UserChild { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FP1: &str = "SHA256:CQckUcS0Dj4bssx6LruYf8RqXCmfpKWq3eceXa5XfxM";

    #[test]
    fn oversized_fields_are_cut_to_the_control_planes_limits() {
        // A forged line anyone can get into auth.log: a huge user name and key type. Unbounded,
        // 500 of them made a batch over the control plane's 1 MiB message limit.
        let user = "é".repeat(3000);
        let key_type = "X".repeat(5000);
        let text = format!(
            "Dec  6 04:00:00 host sshd[42]: Accepted publickey for {user} from 192.0.2.1 port 22 ssh2: {key_type} {FP1}"
        );
        let line = keyward_common::sshd_log::parse_line(&text).expect("a line of sshd's shape");
        let event = login_event(&line, Utc::now()).unwrap();
        assert!(event.user.len() <= MAX_EVENT_USER && !event.user.is_empty());
        assert!(user.starts_with(&event.user));
        assert!(event.key_type.len() <= MAX_EVENT_KEY_TYPE);
        assert_eq!(event.fingerprint, FP1);
        let batch: Vec<_> = (0..500).map(|_| event.clone()).collect();
        let size: usize = batch.iter().map(prost::Message::encoded_len).sum();
        assert!(size < 256 * 1024, "a batch of 500 is {size} bytes");
    }
    const FP2: &str = "SHA256:YYEcYYEcYYEcYYEcYYEcYYEcYYEcYYEcYYEcYYEcYYE";

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// A fake `/proc` under `tmp/proc`: sshd listening on 127.0.0.1:22, bob's sessions from
    /// 127.0.0.1 ports 100 and 200 with root monitors 500 and 600, and a connection from port 300
    /// held by bob's own python titled `sshd: bob [priv]`.
    fn fake_proc(tmp: &std::path::Path) -> std::path::PathBuf {
        use crate::procs::tests::{SSHD, fake};
        let root = tmp.join("proc");
        if root.exists() {
            return root;
        }
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::write(
            root.join("net/tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1000 1 0
   1: 0100007F:0016 0100007F:0064 01 00000000:00000000 00:00000000 00000000     0        0 1100 1 0
   2: 0100007F:0016 0100007F:00C8 01 00000000:00000000 00:00000000 00000000     0        0 1200 1 0
   3: 0100007F:0016 0100007F:012C 01 00000000:00000000 00:00000000 00000000     0        0 1300 1 0
",
        )
        .unwrap();
        fake(
            &root,
            400,
            1,
            0,
            SSHD,
            "sshd: /usr/sbin/sshd -D [listener]",
            &[1000],
        );
        fake(&root, 500, 400, 0, SSHD, "sshd: bob [priv]", &[1100]);
        fake(&root, 600, 400, 0, SSHD, "sshd: bob [priv]", &[1200]);
        fake(
            &root,
            700,
            1,
            1001,
            "/usr/bin/python3",
            "sshd: bob [priv]",
            &[1300],
        );
        root
    }

    fn audit(tmp: &std::path::Path, max: usize) -> LoginAudit {
        let config = LoginsConfig {
            spool_max_events: max,
            ..LoginsConfig::file(tmp.join("sshd.log"))
        };
        let (wake, _) = mpsc::channel(1);
        let dir = StateDir::new(tmp.join("state"));
        dir.create().unwrap();
        LoginAudit::open(&config, dir, &wake)
            .unwrap()
            .with_proc_root(fake_proc(tmp))
    }

    #[test]
    fn a_certificate_login_names_its_certificate_in_the_event_and_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        let ca = "SHA256:0aTnZ2VdQ5m4J1lB3w9oYcFh7QeXr8sKpLu6vN2bDgE";
        append(
            &log,
            &format!(
                "Accepted publickey for bob from 127.0.0.1 port 100 ssh2: ED25519-CERT {FP1} ID keyward:acme:tenant:3 (serial 12345) CA ED25519 {ca}\n\
                 Accepted publickey for bob from 127.0.0.1 port 200 ssh2: ED25519 {FP2}\n\
                 Failed publickey for bob from 127.0.0.1 port 300 ssh2: ED25519-CERT {FP2} ID {} (serial 1) CA ED25519 {ca}\n",
                "k".repeat(MAX_EVENT_CERTIFICATE_ID + 1)
            ),
        );
        let mut a = audit(tmp.path(), 100);
        assert_eq!(a.read_available(1000).unwrap().added, 3);
        let [cert, plain, long] = a.spooled() else {
            panic!("{:?}", a.spooled())
        };
        assert!(cert.verified);
        assert_eq!(
            (cert.key_type.as_str(), cert.fingerprint.as_str()),
            ("ED25519-CERT", FP1)
        );
        assert_eq!(
            (
                cert.certificate_id.as_str(),
                cert.certificate_serial,
                cert.certificate_ca.as_str()
            ),
            ("keyward:acme:tenant:3", 12345, ca)
        );
        for event in [plain, long] {
            assert_eq!(
                (
                    event.certificate_id.as_str(),
                    event.certificate_serial,
                    event.certificate_ca.as_str()
                ),
                ("", 0, ""),
                "{event:?}"
            );
        }
        // A key id too long to trust: still the attempt, by the certified key.
        assert_eq!(long.fingerprint, FP2);
        // The record a revocation reads keeps the key id, across a restart.
        let ids = |a: &LoginAudit| -> Vec<Option<String>> {
            a.attribution("bob")
                .sessions
                .iter()
                .map(|s| s.certificate_id.clone())
                .collect()
        };
        let want = vec![Some("keyward:acme:tenant:3".to_owned()), None];
        assert_eq!(ids(&a), want);
        drop(a);
        assert_eq!(ids(&audit(tmp.path(), 100)), want);
    }

    #[test]
    fn events_sessions_and_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        append(
            &log,
            &format!(
                "Connection from 127.0.0.1 port 100 on 127.0.0.1 port 22 rdomain \"\"\n\
                 Accepted publickey for bob from 127.0.0.1 port 100 ssh2: ED25519 {FP1}\n\
                 User child is on pid 5\n\
                 Accepted publickey for bob from 127.0.0.1 port 200 ssh2: RSA {FP2}\n\
                 Failed password for invalid user x from ::1 port 300 ssh2\n"
            ),
        );
        let mut a = audit(tmp.path(), 100);
        let outcome = a.read_available(1000).unwrap();
        assert_eq!((outcome.added, outcome.more), (3, false));
        let first = a.spooled()[0].clone();
        assert_eq!(first.outcome, LoginOutcome::Accepted as i32);
        assert_eq!(first.method, LoginMethod::Publickey as i32);
        assert_eq!(
            (
                first.user.as_str(),
                first.source_ip.as_str(),
                first.source_port
            ),
            ("bob", "127.0.0.1", 100)
        );
        assert_eq!(
            (first.key_type.as_str(), first.fingerprint.as_str()),
            ("ED25519", FP1)
        );
        let cursors: Vec<u64> = a.spooled().iter().map(|e| e.cursor).collect();
        assert_eq!(
            cursors,
            vec![first.cursor, first.cursor + 1, first.cursor + 2]
        );
        assert_eq!(a.spooled()[2].outcome, LoginOutcome::Failed as i32);
        assert_eq!(a.spooled()[2].source_ip, "::1");
        assert_eq!(a.open_sessions().len(), 2);
        let verified: Vec<bool> = a.spooled().iter().map(|e| e.verified).collect();
        assert_eq!(
            verified,
            vec![true, true, false],
            "accepted logins of live connections are verified, other file lines are not"
        );
        let attribution = a.attribution("bob");
        assert_eq!(
            attribution
                .sessions
                .iter()
                .map(|s| s.fingerprint.as_str())
                .collect::<Vec<_>>(),
            vec![FP1, FP2]
        );
        assert!(!attribution.incomplete);

        append(&log, "Disconnected from user bob 127.0.0.1 port 100\n");
        let batch = a.batch(2).unwrap();
        assert_eq!(batch.events.len(), 2);
        a.acknowledge(batch.events[1].cursor, batch.dropped);
        drop(a);

        // Restarted: the spool, the position, the sessions and the numbering are back.
        let mut a = audit(tmp.path(), 100);
        assert_eq!(a.spooled().len(), 1);
        assert_eq!(a.read_available(1000).unwrap().added, 1);
        let last = a.spooled().last().unwrap();
        assert_eq!(last.outcome, LoginOutcome::Disconnected as i32);
        assert_eq!(last.cursor, first.cursor + 3);
        assert_eq!(a.open_sessions().len(), 1);
        assert_eq!(a.open_sessions()[0].port, 200);
        assert_eq!(a.read_available(1000).unwrap().added, 0);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_reports_the_count_until_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        for port in 1..=5 {
            append(
                &log,
                &format!("Invalid user u{port} from 10.0.0.1 port {port}\n"),
            );
        }
        let mut a = audit(tmp.path(), 3);
        let outcome = a.read_available(1000).unwrap();
        assert_eq!((outcome.added, outcome.dropped), (5, 2));
        let users: Vec<&str> = a.spooled().iter().map(|e| e.user.as_str()).collect();
        assert_eq!(users, vec!["u3", "u4", "u5"]);
        let batch = a.batch(500).unwrap();
        assert_eq!(batch.dropped, 2);
        append(&log, "Invalid user u6 from 10.0.0.1 port 6\n");
        a.read_available(1000).unwrap();
        assert_eq!(a.dropped(), 3);
        a.acknowledge(batch.events.last().unwrap().cursor, batch.dropped);
        assert_eq!(
            a.dropped(),
            1,
            "the drop after the batch is still to report"
        );
        assert_eq!(a.batch(500).unwrap().dropped, 1);
    }

    #[test]
    fn events_dropped_while_in_flight_and_then_acknowledged_were_delivered() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        let attempt = |port: u32| format!("Invalid user u{port} from 10.0.0.1 port {port}\n");
        for port in 1..=3 {
            append(&log, &attempt(port));
        }
        let mut a = audit(tmp.path(), 3);
        a.read_available(1000).unwrap();
        let batch = a.batch(500).unwrap();
        let (first, last) = (batch.events[0].cursor, batch.events[2].cursor);
        a.sent(first, last);
        // Two more before the acknowledgement: the two oldest, in flight, leave the spool.
        append(&log, &attempt(4));
        append(&log, &attempt(5));
        a.read_available(1000).unwrap();
        assert_eq!(a.dropped(), 2);
        a.acknowledge(last, batch.dropped);
        assert_eq!(a.dropped(), 0, "they were stored: nothing was lost");
        let next = a.batch(500).unwrap();
        assert_eq!(next.dropped, 0);
        assert_eq!(next.events.len(), 2);

        // The same without an acknowledgement (the stream ended): they count as dropped.
        let batch = a.batch(500).unwrap();
        a.sent(batch.events[0].cursor, batch.events[1].cursor);
        for port in 6..=8 {
            append(&log, &attempt(port));
        }
        a.read_available(1000).unwrap();
        a.unsent();
        assert_eq!(a.dropped(), 2);
        assert_eq!(a.batch(500).unwrap().dropped, 2);
    }

    #[test]
    fn a_disconnect_closes_a_record_but_does_not_erase_it() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        // The genuine login with the revoked key, then what a local user could log through
        // syslog to pass it off as a login with a good key.
        append(
            &log,
            &format!(
                "Accepted publickey for bob from 127.0.0.1 port 100 ssh2: ED25519 {FP1}\n\
                 Disconnected from user bob 127.0.0.1 port 100\n\
                 Accepted publickey for bob from 127.0.0.1 port 100 ssh2: ED25519 {FP2}\n"
            ),
        );
        let mut a = audit(tmp.path(), 100);
        a.read_available(1000).unwrap();
        assert_eq!(a.open_sessions().len(), 1);
        let attribution = a.attribution("bob");
        let closed: Vec<(bool, &str)> = attribution
            .sessions
            .iter()
            .map(|s| (s.closed, s.fingerprint.as_str()))
            .collect();
        assert_eq!(
            closed,
            vec![(true, FP1), (false, FP2)],
            "the closed record still speaks"
        );
    }

    #[test]
    fn forged_and_unverifiable_logins_never_enter_the_table() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        append(
            &log,
            &format!(
                // No connection from port 9: a line injected into the log.
                "Accepted publickey for bob from 127.0.0.1 port 9 ssh2: ED25519 {FP1}\n\
                 Accepted publickey for bob from 127.0.0.1 port 300 ssh2: ED25519 {FP1}\n\
                 Accepted publickey for alice from 127.0.0.1 port 100 ssh2: ED25519 {FP1}\n\
                 Jan  1 00:00:00 vps sshd[1]: Accepted publickey for bob from 127.0.0.1 port 100 ssh2: ED25519 {FP1}\n\
                 Jan  1 00:00:00 vps sshd[500]: Accepted publickey for bob from 127.0.0.1 port 100 ssh2: ED25519 {FP2}\n"
            ),
        );
        let mut a = audit(tmp.path(), 100);
        assert_eq!(a.read_available(1000).unwrap().added, 5);
        let verified: Vec<bool> = a.spooled().iter().map(|e| e.verified).collect();
        // Not live; held by a python; another user's title; another pid than the monitor's;
        // the monitor's own pid.
        assert_eq!(verified, vec![false, false, false, false, true]);
        assert_eq!(a.records().len(), 1);
        assert_eq!(a.records()[0].fingerprint, FP2);
        assert!(a.attribution("alice").sessions.is_empty());
    }

    #[test]
    fn one_snapshot_per_batch_and_none_without_accepted_logins() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        let mut a = audit(tmp.path(), 100_000);
        // The counter is the process's: other tests take snapshots meanwhile, so count what
        // this audit's reads add by reading a batch whose snapshot fails (a missing root).
        a = a.with_proc_root(tmp.path().join("no-proc"));
        append(&log, "Invalid user u from 10.0.0.1 port 1\n");
        let before = crate::procs::snapshots_taken();
        a.read_available(1000).unwrap();
        let after_no_accepted = crate::procs::snapshots_taken();
        let lines: String = (0..500)
            .map(|p| {
                format!(
                    "Accepted publickey for bob from 127.0.0.1 port {} ssh2: ED25519 {FP1}\n",
                    p + 1000
                )
            })
            .collect();
        append(&log, &lines);
        a.read_available(1000).unwrap();
        let after = crate::procs::snapshots_taken();
        // Other tests may take snapshots in between; a snapshot per line would be 500 more.
        assert!(
            after_no_accepted - before < 50,
            "{before} {after_no_accepted}"
        );
        assert!(
            after - after_no_accepted < 50,
            "{after_no_accepted} {after}"
        );
        assert!(a.spooled().iter().all(|e| !e.verified));
    }

    #[test]
    fn an_overflowing_table_makes_its_users_attribution_incomplete() {
        let mut sessions: Vec<OpenSession> = (0..MAX_OPEN_SESSIONS as u64 + 1)
            .map(|i| OpenSession {
                ip: "127.0.0.1".into(),
                port: 1000 + i as u32,
                user: if i == 0 { "bob".into() } else { "carol".into() },
                cursor: i,
                verified: true,
                ..OpenSession::default()
            })
            .collect();
        // Without a snapshot (all live, as far as is known) the oldest goes.
        let dropped = prune(&mut sessions, None);
        assert_eq!(dropped, vec!["bob".to_owned()]);
        assert_eq!(sessions.len(), MAX_OPEN_SESSIONS);

        let tmp = tempfile::tempdir().unwrap();
        let mut a = audit(tmp.path(), 10);
        a.saved.overflowed.push("bob".into());
        let seen = a.overflows();
        assert!(a.attribution("bob").incomplete);
        assert!(!a.attribution("carol").incomplete);
        a.overflows += 1; // another overflow came meanwhile
        a.overflow_handled("bob", seen);
        assert!(a.attribution("bob").incomplete);
        a.overflow_handled("bob", a.overflows());
        assert!(!a.attribution("bob").incomplete);
    }

    #[test]
    fn a_full_table_forgets_gone_connections_also_without_a_batch_snapshot() {
        // As a journald batch does: verified lines, no snapshot of their own.
        let tmp = tempfile::tempdir().unwrap();
        let mut a = audit(tmp.path(), 10);
        a.saved.sessions = (0..MAX_OPEN_SESSIONS as u32)
            .map(|i| OpenSession {
                ip: "10.9.0.1".into(),
                port: 1000 + i,
                user: "carol".into(),
                verified: true,
                ..OpenSession::default()
            })
            .collect();
        let line = sshd_log::parse_line(&format!(
            "Accepted publickey for bob from 127.0.0.1 port 100 ssh2: ED25519 {FP1}"
        ))
        .unwrap();
        assert!(a.track_session(&line, 1, true, None));
        // Only the live connection's record is left; nobody's attribution is incomplete.
        assert_eq!(a.records().len(), 1);
        assert_eq!(a.records()[0].port, 100);
        assert!(a.saved.overflowed.is_empty());
    }

    #[test]
    fn a_connection_holds_a_bounded_number_of_records() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        let line =
            format!("Accepted publickey for bob from 127.0.0.1 port 100 ssh2: ED25519 {FP2}\n");
        append(&log, &line.repeat(100));
        let mut a = audit(tmp.path(), 1000);
        a.read_available(1000).unwrap();
        assert_eq!(a.records().len(), MAX_PER_CONNECTION);
        assert!(
            a.records().iter().all(|r| r.closed),
            "none keeps the session"
        );
    }

    #[test]
    fn records_are_forgotten_when_their_connection_is_gone() {
        let proc_root = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc_root.path().join("net")).unwrap();
        // One live connection: 127.0.0.1:49832 (0xC2A8) to port 22.
        std::fs::write(
            proc_root.path().join("net/tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: 0100007F:0016 0100007F:C2A8 01 00000000:00000000 00:00000000 00000000     0        0 4 1\n",
        )
        .unwrap();
        let record = |port: u32, cursor: u64| OpenSession {
            ip: "127.0.0.1".into(),
            port,
            user: "bob".into(),
            cursor,
            verified: true,
            ..OpenSession::default()
        };
        let mut sessions: Vec<OpenSession> = (0..MAX_OPEN_SESSIONS as u64 + 1)
            .map(|i| record(1000 + i as u32, i + 1))
            .collect();
        sessions.insert(0, record(49832, 0));
        let snapshot = ProcSnapshot::take(proc_root.path(), &SshdTrust::default(), &[0]).unwrap();
        let dropped = prune(&mut sessions, Some(&snapshot));
        assert_eq!(sessions, vec![record(49832, 0)]);
        assert!(dropped.is_empty(), "only records of gone connections went");
    }

    #[test]
    fn many_lines_are_read_in_bounded_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("sshd.log");
        let text: String = (0..25)
            .map(|p| format!("Invalid user u from 10.0.0.1 port {}\n", p + 1))
            .collect();
        append(&log, &text);
        let mut a = audit(tmp.path(), 100);
        assert!(a.read_available(10).unwrap().more);
        assert!(a.read_available(10).unwrap().more);
        let last = a.read_available(10).unwrap();
        assert_eq!((last.added, last.more), (5, false));
        assert_eq!(a.spooled().len(), 25);
    }
}
