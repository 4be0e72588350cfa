//! SSH login audit: every login and attempt in sshd's log goes to the control plane, and a
//! revocation ends every session that verified evidence does not tie to a key or certificate
//! valid now.
//!
//! Which source to trust: journald's records carry fields journald sets itself from the sender's
//! credentials (`_UID`, `_COMM`, `_EXE`, `_SYSTEMD_UNIT`), so the agent takes only root sshd's
//! records and they are *verified*. A log file has no such fields: `sshd -E` writes what an
//! unauthenticated client sends (newlines in a key-exchange offer become lines of their own),
//! and `/var/log/auth.log` takes any local user's `logger -t sshd`. From a file only accepted
//! logins that a live connection of the real sshd corroborates when read are verified
//! ([`audit`]); the rest is sent marked unverified and never keeps a session.
//!
//! - [`file`] follows a log file across rotation; [`journald`] (cargo feature `journald`) reads
//!   the systemd journal; [`export`] maps journal records (and reads `journalctl -o export`).
//!   Lines are parsed by [`keyward_common::sshd_log`].
//! - [`audit`] turns lines into `LoginEvent`s with the agent's sequence numbers, spools them on
//!   disk ([`spool`], bounded: the oldest are dropped and counted) and tracks which sessions are
//!   open with which key.
//! - [`attribution`] turns the verified records of a user's logins into what a revocation
//!   decides on ([`crate::sessions::revoke`]: which sessions end, from one read of `/proc`).
//!
//! Delivery ([`Logins`], driven by the runtime's event loop): on (re)connect and whenever events
//! arrive, the oldest spooled events (up to [`BATCH_MAX`]) go up the stream as one `LoginBatch`
//! with the count of events dropped since the last acknowledged batch. One batch is in flight at
//! a time: the next is sent when `LoginAck{cursor}` says the control plane stored everything up
//! to `cursor`, which the agent then forgets. An unanswered batch is sent again after
//! [`ACK_TIMEOUT`] and on the next connection; the control plane de-duplicates by (host, cursor).
//! Sequence numbers have gaps where spooled events were dropped.
//!
//! Attribution (which managed key, or unmanaged) is the control plane's: the agent sends
//! fingerprints.

pub mod attribution;
pub mod audit;
pub mod export;
pub mod file;
#[cfg(feature = "journald")]
pub mod journald;
pub mod spool;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keyward_common::UnixUser;
use keyward_common::proto::{AgentMessage, agent_message};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use audit::{LoginAudit, ReadOutcome};

use crate::config::{LoginSource, LoginsConfig, SshdTrust};
use crate::link::Link;
use crate::sessions::revoke::SessionAttribution;
use crate::state_dir::{StateDir, StateDirError};

/// Events per `LoginBatch`.
pub const BATCH_MAX: usize = 500;
/// Lines read per step; more is read in the next turn of the event loop.
pub const READ_LINES: usize = 5000;
/// An unacknowledged batch is sent again after this.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Read steps at most before a revocation decides (the log is read up to now first).
const CATCH_UP_STEPS: usize = 20;
/// Changes of the log file within this window are read together: a burst of lines (a
/// brute-force attempt) is one read and one write of the state, not one per line.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Why the login audit could not read or store.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("reading the login log {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateDirError),
    #[cfg(feature = "journald")]
    #[error(transparent)]
    Journal(#[from] journald::JournalError),
    #[error("this keyward-agent was built without journald support (cargo feature `journald`)")]
    NoJournald,
    #[error("the login audit is off")]
    Off,
}

/// A batch sent and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    last: u64,
    dropped: u64,
    since: Instant,
}

/// The login audit as the runtime sees it.
#[derive(Debug)]
pub struct Logins {
    audit: Option<Arc<Mutex<LoginAudit>>>,
    wake: mpsc::Sender<()>,
    wakes: Option<mpsc::Receiver<()>>,
    _watch: Option<file::DirWatch>,
    in_flight: Option<InFlight>,
    /// The highest cursor sent: an acknowledgement beyond it is not believed.
    sent_upto: u64,
    /// What counts as sshd (also when the audit is off).
    trust: SshdTrust,
}

impl Logins {
    /// Starts the configured source. Failing to start is logged, not fatal: the agent's first
    /// job is keeping the keys right.
    pub fn start(config: &LoginsConfig, dir: &StateDir) -> Logins {
        let (wake, wakes) = mpsc::channel(1);
        let mut logins = Logins {
            audit: None,
            wake,
            wakes: Some(wakes),
            _watch: None,
            in_flight: None,
            sent_upto: 0,
            trust: config.trust(),
        };
        if config.source == LoginSource::Off {
            tracing::info!("login audit off");
            return logins;
        }
        match LoginAudit::open(config, dir.clone(), &logins.wake) {
            Ok(audit) => logins.audit = Some(Arc::new(Mutex::new(audit))),
            Err(error) => {
                tracing::error!(%error, "the login audit cannot start; revocations end all of a user's sessions");
                return logins;
            }
        }
        if config.source == LoginSource::File {
            match file::DirWatch::start(&config.path, debounced(logins.wake.clone())) {
                Ok(watch) => logins._watch = Some(watch),
                Err(error) => tracing::error!(
                    path = %config.path.display(), %error,
                    "cannot watch the login log's directory: new logins are read only at start and before revocations"
                ),
            }
            tracing::info!(path = %config.path.display(), "login audit reading the log file");
        } else {
            tracing::info!("login audit reading the systemd journal");
        }
        // Read what is there at start.
        let _ = logins.wake.try_send(());
        logins
    }

    /// No login audit.
    pub fn off() -> Logins {
        Self::start(&LoginsConfig::off(), &StateDir::new("/nonexistent"))
    }

    /// The wake-ups, for the event loop to wait on (taken once).
    pub(crate) fn take_wakes(&mut self) -> Option<mpsc::Receiver<()>> {
        self.audit.as_ref()?;
        self.wakes.take()
    }

    /// When the batch in flight is to be sent again.
    pub(crate) fn resend_at(&self) -> Option<Instant> {
        self.in_flight.map(|f| f.since + ACK_TIMEOUT)
    }

    async fn with_audit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LoginAudit) -> R + Send + 'static,
    ) -> Option<R> {
        with_audit(self.audit.as_ref(), f).await
    }

    /// The log changed (or a read stopped at its limit): read, then send.
    pub(crate) async fn on_wake(&mut self, link: &mut Link) {
        let read = self.with_audit(|a| a.read_available(READ_LINES)).await;
        match read {
            Some(Ok(outcome)) => {
                if outcome.added > 0 {
                    tracing::debug!(events = outcome.added, "read login events");
                }
                if outcome.more {
                    let _ = self.wake.try_send(());
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "cannot read the login log"),
            None => {}
        }
        self.pump(link);
    }

    /// A new stream: whatever was in flight on the old one is sent again.
    pub(crate) fn on_connected(&mut self, link: &mut Link) {
        self.forget_in_flight();
        self.pump(link);
    }

    pub(crate) fn on_disconnected(&mut self) {
        self.forget_in_flight();
    }

    /// The batch in flight went unanswered: send it again (the control plane de-duplicates).
    pub(crate) fn on_resend(&mut self, link: &mut Link) {
        tracing::warn!("no acknowledgement for the login batch; sending it again");
        self.forget_in_flight();
        self.pump(link);
    }

    fn forget_in_flight(&mut self) {
        self.in_flight = None;
        if let Some(audit) = &self.audit {
            audit
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unsent();
        }
    }

    /// `LoginAck{cursor}`: forget what is stored, send what is next.
    pub(crate) async fn on_ack(&mut self, cursor: u64, link: &mut Link) {
        let cursor = cursor.min(self.sent_upto);
        let dropped = match self.in_flight {
            Some(f) if cursor >= f.last => {
                self.in_flight = None;
                f.dropped
            }
            _ => 0,
        };
        self.with_audit(move |a| a.acknowledge(cursor, dropped))
            .await;
        self.pump(link);
    }

    /// Sends the next batch when none is in flight.
    fn pump(&mut self, link: &mut Link) {
        if self.in_flight.is_some() || !link.is_up() {
            return;
        }
        let Some(audit) = &self.audit else {
            return;
        };
        let mut audit = audit.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(batch) = audit.batch(BATCH_MAX) else {
            return;
        };
        let first = batch.events.first().map_or(0, |e| e.cursor);
        let last = batch.events.last().map_or(0, |e| e.cursor);
        let dropped = batch.dropped;
        let sent = link.send(AgentMessage {
            msg: Some(agent_message::Msg::Logins(batch)),
        });
        if sent {
            audit.sent(first, last);
            self.sent_upto = self.sent_upto.max(last);
            self.in_flight = Some(InFlight {
                last,
                dropped,
                since: Instant::now(),
            });
        }
    }

    /// The audit's session records, for a task of its own (the runtime's session worker).
    pub(crate) fn session_records(&self) -> SessionRecords {
        SessionRecords {
            audit: self.audit.clone(),
            trust: self.trust.clone(),
        }
    }
}

/// What the login audit knows about a user's sessions, for a revocation
/// ([`crate::sessions::revoke`]); cheap to clone into another task. The runtime asks for the
/// attribution, has its applier end the sessions, and reports an incomplete attribution handled.
#[derive(Debug, Clone)]
pub struct SessionRecords {
    audit: Option<Arc<Mutex<LoginAudit>>>,
    trust: SshdTrust,
}

impl SessionRecords {
    /// A revocation ended every session of `user` after an incomplete attribution taken when
    /// the audit had counted `overflows` overflows: every session the lost records could have
    /// spoken for is ended ([`LoginAudit::overflow_handled`]).
    pub(crate) async fn overflow_handled(&self, user: &UnixUser, overflows: u64) {
        let user = user.to_string();
        with_audit(self.audit.as_ref(), move |a| {
            a.overflow_handled(&user, overflows)
        })
        .await;
    }

    /// What the verified login records say about `user`'s open sessions, after reading the log
    /// up to now (a login a moment ago is then known), and the audit's overflow count then.
    pub(crate) async fn attribution(&self, user: &str) -> (SessionAttribution, u64) {
        let user = user.to_owned();
        let unknown = SessionAttribution {
            trust: self.trust.clone(),
            ..SessionAttribution::unknown()
        };
        with_audit(self.audit.as_ref(), move |a| {
            for _ in 0..CATCH_UP_STEPS {
                match a.read_available(READ_LINES) {
                    Ok(outcome) if outcome.more => {}
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the login log before a revocation");
                        break;
                    }
                }
            }
            (a.attribution(&user), a.overflows())
        })
        .await
        .unwrap_or((unknown, 0))
    }
}

/// Runs `f` on the audit (when there is one) on a blocking thread.
async fn with_audit<R: Send + 'static>(
    audit: Option<&Arc<Mutex<LoginAudit>>>,
    f: impl FnOnce(&mut LoginAudit) -> R + Send + 'static,
) -> Option<R> {
    let audit = Arc::clone(audit?);
    let task = tokio::task::spawn_blocking(move || {
        let mut audit = audit.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut audit)
    });
    match task.await {
        Ok(r) => Some(r),
        Err(error) => {
            tracing::error!(%error, "the login audit task failed");
            None
        }
    }
}

/// A sender whose wake-ups reach `wake` at most once per [`DEBOUNCE`] (the first one of a burst
/// waits that long, so the burst is read at once). Without a tokio runtime, `wake` itself.
fn debounced(wake: mpsc::Sender<()>) -> mpsc::Sender<()> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return wake;
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    runtime.spawn(async move {
        // Ends when the watch (the sender's only holder) is dropped.
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            // Full: a wake-up is already waiting, which reads this change too.
            let _ = wake.try_send(());
        }
    });
    tx
}

/// Waits for the next wake-up of the login audit (forever when it is off).
pub(crate) async fn wake(wakes: &mut Option<mpsc::Receiver<()>>) {
    let woken = match wakes.as_mut() {
        Some(rx) => rx.recv().await.is_some(),
        None => false,
    };
    if !woken {
        std::future::pending::<()>().await;
    }
}

/// Waits until `at` (forever for `None`): the resend timer of the batch in flight.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
