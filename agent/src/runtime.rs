//! `keyward-agent run`: enforce the cached state, then follow the control plane's stream.
//!
//! One task owns everything (the applied state, the epochs, the connection) and wakes only for:
//! a message on the stream, a file-watcher event, a change of sshd's log (the login audit,
//! [`crate::logins`]), a finished session check, the certificate renewal timer, the repair,
//! expiry, reconnect and login-resend timers and shutdown. There is no polling loop: an idle agent
//! costs only the HTTP/2 keepalive pings.
//!
//! Nothing slow runs on that task. Files are written on blocking threads (fast: one user's file).
//! Session checks — which read `/proc`, where a tenant can make many processes and connections —
//! run in their own task ([`SessionWorker`]) with a deadline; a state's `Applied` answer waits for
//! them at most [`SESSION_REPLY_WAIT`], and a later result is sent as a fresh `Applied` for the
//! same generation. The systemd watchdog is fed by a task of its own, which no step of the event
//! loop can hold up (a slow step once got the agent killed mid-revocation).
//!
//! Sessions: a session is kept only when the key that opened it is valid for the user right now
//! (a current managed key, or a user's own line that survived the merge), or the certificate
//! that opened it is (its key id not among the user's revoked certificates, its key not denied).
//! The user's sessions are checked when its session epoch rises (regenerate, revoke), when the
//! set of valid keys loses a key (a grace period ending, an outside edit removing a line) or a
//! certificate key id is newly revoked, and when a repair removed a line that must not be there
//! (a denied key written back may have been used in the moment before).
//!
//! Outside edits are repaired at most once per [`REPAIR_INTERVAL`] per user (a `chmod` loop costs
//! next to nothing); a failed write is retried with exponential backoff up to [`RETRY_MAX`].
//!
//! Order of trust: a state is applied only after [`verify_state`] with the signing key pinned at
//! enrollment, for this host id, not older than what was applied. It is written to the cache
//! *before* its side effects start, so an agent killed half-way restarts from that state, never
//! from an older one. The cached copy is verified again at every start. A user the local configuration does not list is never written.
//! Keys are never removed because the control plane is unreachable: without a stream the agent
//! just keeps enforcing the last state it verified.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keyward_common::UnixUser;
use keyward_common::proto::{
    self, AgentMessage, Applied, DesiredState, DriftReport, Hello, ManagedUser, RenewCertificate,
    SignedState, SshdFilesResult, StateRejected, UserFingerprints, UserResult, agent_message,
    control_message,
};
use keyward_common::signing::verify_state;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::apply::{self, Applier, ApplyError, SystemApplier, UserApplied};
use crate::config::AgentConfig;
use crate::endpoints::Endpoints;
use crate::host_keys::read_host_keys;
use crate::link::{Link, LinkEvent};
use crate::logins::{self, Logins, SessionRecords};
use crate::recordings::Recordings;
use crate::sd_notify::Notifier;
use crate::sessions::revoke::ValidNow;
use crate::state_dir::{CERT_FILE, CachedState, Epochs, Identity, StateDir, StateDirError};
use crate::tls::{self, TlsError};
use keyward_common::backoff::Backoff;

/// How long a state's `Applied` answer waits for its session checks; a later result follows in
/// another `Applied`.
pub const SESSION_REPLY_WAIT: Duration = Duration::from_secs(1);
/// A session check that takes longer is reported as late (a warning), and its result follows
/// when it finishes; no second check runs beside it.
pub const SESSION_DEADLINE: Duration = Duration::from_secs(10);
/// Prefix of the warning a failed session check leaves on its user.
const SESSIONS_WARNING: &str = "ending sessions: ";
/// Outside edits of one user's file are repaired at most this often.
pub const REPAIR_INTERVAL: Duration = Duration::from_millis(250);
/// The first retry of a failed write comes after this; each next one waits twice as long.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries of a failed write.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    State(#[from] StateDirError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What the agent is doing, for callers that run it in-process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    pub connected: bool,
    /// The generation of the last state applied (0: none).
    pub applied_generation: u64,
    /// A cached or received state has been applied (systemd's READY=1 was sent).
    pub ready: bool,
}

/// The parts of the runtime that tests replace.
pub struct RuntimeDeps {
    pub applier: Arc<dyn Applier>,
    /// Users whose file changed on disk; `None` runs without a watcher.
    pub watch_events: Option<mpsc::Receiver<UnixUser>>,
    pub notifier: Option<Notifier>,
    /// Receives every status change.
    pub status: Option<watch::Sender<AgentStatus>>,
}

impl std::fmt::Debug for RuntimeDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeDeps")
            .field("watch_events", &self.watch_events.is_some())
            .field("notifier", &self.notifier)
            .finish_non_exhaustive()
    }
}

/// Runs the agent on this host (real writer, sessions, watcher and systemd notifications) until
/// `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let (watcher, events) = crate::watch::watch_users(&config);
    let deps = RuntimeDeps {
        applier: Arc::new(SystemApplier {
            limits: config.preserve,
            sshd_dir: config.sshd_dir.clone(),
        }),
        watch_events: Some(events),
        notifier: Notifier::from_env(),
        status: None,
    };
    let result = run_with(config, deps, shutdown).await;
    drop(watcher);
    result
}

/// Runs the agent with the given parts until `shutdown` completes. Fails only at start (not
/// enrolled, unreadable identity); afterwards every failure is logged and retried.
pub async fn run_with(
    config: AgentConfig,
    deps: RuntimeDeps,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let dir = StateDir::new(&config.state_dir);
    let identity = dir.load_identity()?;
    let key = tls::load_key(&identity.key_pem)?;
    let epochs = dir.load_epochs().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "session epochs unreadable; starting from none");
        Epochs::new()
    });
    let endpoints = Endpoints::new(
        &config.endpoints(),
        &identity.info.grpc_url,
        &mut rand::thread_rng(),
    );
    let logins = Logins::start(&config.logins, &dir);
    let recordings = Recordings::start(
        config.recording.as_ref(),
        config.users.iter().map(|u| u.name.to_string()).collect(),
        &dir,
    );
    let sessions = SessionWorker::start(logins.session_records(), Arc::clone(&deps.applier));
    if let Some(period) = deps.notifier.as_ref().and_then(Notifier::watchdog_interval) {
        spawn_watchdog(deps.notifier.clone(), period);
    }
    let mut agent = Agent {
        logins,
        recordings,
        sessions,
        cert_pem: identity.cert_pem.clone(),
        config,
        dir,
        identity,
        key,
        endpoints,
        applier: deps.applier,
        notifier: deps.notifier,
        status_tx: deps.status,
        status: AgentStatus::default(),
        last: None,
        epochs,
        observed: BTreeMap::new(),
        pending_drift: BTreeMap::new(),
        results: BTreeMap::new(),
        valid: BTreeMap::new(),
        due: BTreeMap::new(),
        retry_wait: BTreeMap::new(),
        repaired_at: BTreeMap::new(),
        sshd: None,
        sshd_retry: None,
        trusted_cas: Vec::new(),
    };
    agent.enforce_cache().await;
    agent.event_loop(deps.watch_events, shutdown).await;
    Ok(())
}

struct Agent {
    config: AgentConfig,
    dir: StateDir,
    identity: Identity,
    key: rcgen::KeyPair,
    cert_pem: String,
    /// The control plane's endpoints, and which one is dialled next.
    endpoints: Endpoints,
    applier: Arc<dyn Applier>,
    notifier: Option<Notifier>,
    status_tx: Option<watch::Sender<AgentStatus>>,
    status: AgentStatus,
    /// The last state applied, verified.
    last: Option<CachedState>,
    epochs: Epochs,
    /// Per user, the managed fingerprints the last apply left in the file (kept current by the
    /// watcher's repairs), reported in Hello.
    observed: BTreeMap<String, Vec<String>>,
    /// Drift found while disconnected: only the latest per user matters.
    pending_drift: BTreeMap<String, DriftReport>,
    logins: Logins,
    recordings: Recordings,
    sessions: SessionWorker,
    /// Per user, the last result reported, kept current by repairs and session checks.
    results: BTreeMap<String, UserResult>,
    /// Per user, the keys valid at the last apply (with their expiry), to see one go.
    valid: BTreeMap<String, ValidKeys>,
    /// Users to re-apply at a time: an outside edit inside [`REPAIR_INTERVAL`], or a retry.
    due: BTreeMap<UnixUser, Instant>,
    /// Per user, the wait before the next retry of a failed write.
    retry_wait: BTreeMap<UnixUser, Duration>,
    /// Per user, when its file was last repaired.
    repaired_at: BTreeMap<UnixUser, Instant>,
    /// What the last state's sshd files came to (`None`: the state had none).
    sshd: Option<SshdFilesResult>,
    /// When to write the last state's sshd files again after a failure, and the wait after that.
    sshd_retry: Option<(Instant, Duration)>,
    /// Fingerprints of the CA keys the last state's sshd files trust: only their certificates
    /// keep sessions.
    trusted_cas: Vec<String>,
}

/// What is valid for a user: the keys (fingerprint and, for a managed key in its grace period,
/// when it stops being valid), and what the state says of certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ValidKeys {
    keys: BTreeMap<String, Option<chrono::DateTime<Utc>>>,
    revoked_certificate_ids: BTreeSet<String>,
    denied_fingerprints: Vec<String>,
    user_revoked: bool,
    trusted_cas: Vec<String>,
    principals: Vec<String>,
}

impl ValidKeys {
    /// From what an apply left in the file: the managed keys of `desired` that are in it and not
    /// expired, and the user's own keys; the state's revoked certificates and denied keys. A
    /// bastion's jump user (`jump`) has its jump principals too: a certificate of one of them
    /// keeps a jump session like any of its plain principals' (no other user has any).
    fn of(desired: &ManagedUser, done: &UserApplied, trusted_cas: &[String], jump: bool) -> Self {
        let mut keys = BTreeMap::new();
        for key in &desired.keys {
            if !done.fingerprints.contains(&key.fingerprint) {
                continue;
            }
            let expires = chrono::DateTime::parse_from_rfc3339(&key.expires_at)
                .ok()
                .map(|t| t.with_timezone(&Utc));
            keys.insert(key.fingerprint.clone(), expires);
        }
        for own in &done.own {
            keys.entry(own.clone()).or_insert(None);
        }
        Self {
            keys,
            revoked_certificate_ids: desired.revoked_certificate_ids.iter().cloned().collect(),
            denied_fingerprints: desired.denied_fingerprints.clone(),
            user_revoked: desired.revoked,
            trusted_cas: trusted_cas.to_vec(),
            principals: desired
                .principals
                .iter()
                .chain(
                    desired
                        .jump_principals
                        .iter()
                        .filter(|_| jump)
                        .map(|j| &j.principal),
                )
                .cloned()
                .collect(),
        }
    }

    /// What is valid at `now`, for a session check.
    fn now(&self, now: chrono::DateTime<Utc>) -> ValidNow {
        ValidNow {
            keys: self.at(now),
            revoked_certificate_ids: self.revoked_certificate_ids.clone(),
            denied_fingerprints: self.denied_fingerprints.clone(),
            user_revoked: self.user_revoked,
            trusted_cas: self.trusted_cas.clone(),
            principals: self.principals.clone(),
        }
    }

    /// The fingerprints valid at `now`.
    fn at(&self, now: chrono::DateTime<Utc>) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(_, expires)| expires.is_none_or(|t| t > now))
            .map(|(fp, _)| fp.clone())
            .collect()
    }

    /// The next time a key stops being valid, after `now`.
    fn next_expiry(&self, now: chrono::DateTime<Utc>) -> Option<chrono::DateTime<Utc>> {
        self.keys
            .values()
            .flatten()
            .filter(|t| **t > now)
            .min()
            .copied()
    }
}

/// A session check to run: end `user`'s sessions not opened with a key or certificate `valid`
/// now.
#[derive(Debug)]
struct SessionCheck {
    user: UnixUser,
    valid: ValidNow,
    /// The session epoch this check acts on, recorded when it succeeds.
    epoch: Option<u64>,
}

/// A finished session check.
#[derive(Debug)]
struct SessionDone {
    user: UnixUser,
    epoch: Option<u64>,
    result: Result<u32, String>,
}

/// Runs session checks off the event loop, strictly one at a time (requests for a user that
/// queue up meanwhile collapse into the newest, with the highest epoch).
struct SessionWorker {
    requests: mpsc::UnboundedSender<SessionCheck>,
    done: mpsc::UnboundedReceiver<SessionDone>,
}

impl SessionWorker {
    fn start(records: SessionRecords, applier: Arc<dyn Applier>) -> Self {
        let (requests, mut inbox) = mpsc::unbounded_channel::<SessionCheck>();
        let (done_tx, done) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(first) = inbox.recv().await {
                let mut queued: BTreeMap<UnixUser, SessionCheck> = BTreeMap::new();
                let mut add = |check: SessionCheck| {
                    let epoch = queued
                        .get(&check.user)
                        .and_then(|c| c.epoch)
                        .max(check.epoch);
                    queued.insert(check.user.clone(), SessionCheck { epoch, ..check });
                };
                add(first);
                while let Ok(more) = inbox.try_recv() {
                    add(more);
                }
                for (user, check) in queued {
                    let ending = {
                        let (records, applier, user) =
                            (records.clone(), Arc::clone(&applier), user.clone());
                        async move { end_revoked(&records, applier, &user, &check.valid).await }
                    };
                    tokio::pin!(ending);
                    // Past the deadline the check is reported as late, and then still awaited:
                    // a blocking step cannot be cancelled, and starting the next check beside it
                    // would pile them up (each reading /proc) and starve the writes.
                    let result = tokio::select! {
                        result = &mut ending => result,
                        () = tokio::time::sleep(SESSION_DEADLINE) => {
                            let late = SessionDone {
                                user: user.clone(),
                                epoch: None,
                                result: Err(format!(
                                    "ending sessions did not finish within {} s; still running",
                                    SESSION_DEADLINE.as_secs()
                                )),
                            };
                            if done_tx.send(late).is_err() {
                                return;
                            }
                            ending.await
                        }
                    };
                    let finished = SessionDone {
                        user,
                        epoch: check.epoch,
                        result,
                    };
                    if done_tx.send(finished).is_err() {
                        return;
                    }
                }
            }
        });
        Self { requests, done }
    }

    fn check(&self, check: SessionCheck) {
        tracing::debug!(
            user = %check.user,
            valid = check.valid.keys.len(),
            revoked_certificates = check.valid.revoked_certificate_ids.len(),
            "checking sessions"
        );
        // The worker lives as long as the agent: a failed send means it is shutting down.
        let _ = self.requests.send(check);
    }
}

/// A session check: ends `user`'s sessions except those verified evidence ties to a key or a
/// certificate `valid` for the user now or to a login without a key (the rule is in
/// [`crate::sessions::revoke`]); returns how many. The login audit says which key opened which
/// session, the applier ends them (on a blocking thread: it reads `/proc` and signals).
async fn end_revoked(
    records: &SessionRecords,
    applier: Arc<dyn Applier>,
    user: &UnixUser,
    valid: &ValidNow,
) -> Result<u32, String> {
    let (attribution, overflows) = records.attribution(user.as_str()).await;
    let incomplete = attribution.incomplete;
    let (u, valid) = (user.clone(), valid.clone());
    let ended =
        tokio::task::spawn_blocking(move || applier.end_revoked_sessions(&u, &attribution, &valid));
    let result = match ended.await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the session task failed: {e}")),
    };
    if incomplete && result.is_ok() {
        // Every session the lost records could have spoken for is ended.
        records.overflow_handled(user, overflows).await;
    }
    result
}

/// Feeds systemd's watchdog from a task of its own, so that no step of the event loop (which a
/// tenant may try to slow down) gets the agent killed and restarted mid-revocation.
fn spawn_watchdog(notifier: Option<Notifier>, period: Duration) {
    let Some(notifier) = notifier else {
        return;
    };
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            notifier.watchdog();
        }
    });
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_time(at: Option<chrono::DateTime<Utc>>) {
    match at {
        Some(at) => {
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            // A little after the expiry, so that the key is expired when the timer fires.
            tokio::time::sleep(wait + Duration::from_millis(10)).await;
        }
        None => std::future::pending().await,
    }
}

async fn next_watch_event(events: &mut Option<mpsc::Receiver<UnixUser>>) -> Option<UnixUser> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn message(msg: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(msg) }
}

impl Agent {
    fn publish(&self) {
        if let Some(tx) = &self.status_tx {
            tx.send_replace(self.status.clone());
        }
    }

    fn mark_ready(&mut self) {
        if !self.status.ready {
            self.status.ready = true;
            if let Some(n) = &self.notifier {
                n.ready();
            }
        }
        self.publish();
    }

    /// Applies the cached state, so the host is enforced before (and without) the control plane.
    async fn enforce_cache(&mut self) {
        let (key, host) = (
            self.identity.signing_key,
            self.identity.info.host_id.clone(),
        );
        match self.dir.load_state(&key, &host) {
            Ok(Some(cached)) => {
                let checking = self.apply_state(&cached.state).await;
                self.wait_for_sessions(checking).await;
                tracing::info!(
                    generation = cached.state.generation,
                    errors = self
                        .results
                        .values()
                        .filter(|r| !r.error.is_empty())
                        .count(),
                    "enforced the cached state"
                );
                self.status.applied_generation = cached.state.generation;
                self.last = Some(cached);
                self.mark_ready();
            }
            Ok(None) => tracing::info!("no cached state yet; waiting for the control plane"),
            Err(e) => tracing::error!(error = %e, "not using the cached state"),
        }
    }

    async fn event_loop(
        &mut self,
        mut events: Option<mpsc::Receiver<UnixUser>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut backoff = crate::client::backoff();
        let mut link = self.open();
        let mut login_wakes = self.logins.take_wakes();
        let mut recordings_looked = Instant::now();
        loop {
            let due = self
                .due
                .values()
                .copied()
                .chain(self.sshd_retry.map(|(at, _)| at))
                .min();
            let expiry = self.next_expiry();
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("shutting down");
                    return;
                }
                event = next_watch_event(&mut events) => match event {
                    Some(user) => self.on_watch(user, events.as_mut(), &mut link).await,
                    None => {
                        tracing::error!("the file watcher stopped; outside edits are no longer repaired");
                        events = None;
                    }
                },
                Some(done) = self.sessions.done.recv() => {
                    if self.on_sessions_done(done) {
                        self.send_results(&mut link);
                    }
                }
                () = sleep_until(due) => self.on_due(&mut link).await,
                () = sleep_until_time(expiry) => self.on_expiry(),
                () = logins::wake(&mut login_wakes) => self.logins.on_wake(&mut link).await,
                () = logins::sleep_until(self.logins.resend_at()) => self.logins.on_resend(&mut link),
                () = sleep_until(self.recordings.next_tick(recordings_looked)) => {
                    self.recordings.on_tick(&mut link);
                    recordings_looked = Instant::now();
                }
                event = link.next() => {
                    if let Some(next) = self.on_link_event(event, &mut link, &mut backoff).await {
                        if link.is_up() {
                            self.status.connected = false;
                            self.logins.on_disconnected();
                            self.publish();
                        }
                        link = next;
                    }
                }
            }
        }
    }

    /// Handles a connection event; returns the next phase when the phase changes.
    async fn on_link_event(
        &mut self,
        event: LinkEvent,
        link: &mut Link,
        backoff: &mut Backoff,
    ) -> Option<Link> {
        let retry = |backoff: &mut Backoff| {
            let delay = backoff.next_delay(&mut rand::thread_rng());
            tracing::debug!(?delay, "reconnecting after a pause");
            Some(Link::waiting(delay))
        };
        match event {
            LinkEvent::Retry => Some(self.open()),
            LinkEvent::Opened(Err(e)) => {
                tracing::warn!(url = %self.endpoints.current(), error = %e, "cannot reach the control plane");
                self.warn_if_expired();
                self.endpoints.advance();
                retry(backoff)
            }
            LinkEvent::Opened(Ok(stream)) => {
                tracing::info!(url = %self.endpoints.current(), "connected to the control plane");
                let mut up = Link::Up(stream);
                for (_, report) in std::mem::take(&mut self.pending_drift) {
                    up.send(message(agent_message::Msg::Drift(report)));
                }
                self.logins.on_connected(&mut up);
                self.recordings.on_connected(&mut up);
                self.status.connected = true;
                self.publish();
                Some(up)
            }
            LinkEvent::Message(Ok(Some(msg))) => {
                let reply = match msg.msg {
                    Some(control_message::Msg::State(signed)) => Some(self.on_state(signed).await),
                    Some(control_message::Msg::Certificate(cert)) => {
                        self.on_certificate(&cert.certificate_pem, link);
                        None
                    }
                    Some(control_message::Msg::LoginAck(ack)) => {
                        self.logins.on_ack(ack.cursor, link).await;
                        None
                    }
                    Some(control_message::Msg::RecordingAck(ack)) => {
                        self.recordings.on_ack(&ack.recording_id, ack.seq, link);
                        None
                    }
                    None => None,
                };
                let stuck = reply.is_some_and(|reply| !link.send(reply));
                if stuck {
                    tracing::warn!("the stream is not taking messages; reconnecting");
                    self.stream_ended(link, backoff);
                    return retry(backoff);
                }
                None
            }
            LinkEvent::Message(Ok(None)) => {
                tracing::warn!("the control plane closed the stream");
                self.stream_ended(link, backoff);
                retry(backoff)
            }
            LinkEvent::Message(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "the stream failed");
                self.stream_ended(link, backoff);
                retry(backoff)
            }
            LinkEvent::Renew => {
                if let Link::Up(stream) = link {
                    // Asked once per connection; the next connection asks again if unanswered.
                    stream.renew_at = None;
                }
                match tls::csr_pem(&self.key) {
                    Ok(csr_pem) => {
                        tracing::info!("asking for a new certificate");
                        link.send(message(agent_message::Msg::Renew(RenewCertificate {
                            csr_pem,
                        })));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot make a renewal request"),
                }
                None
            }
        }
    }

    /// A stream ended (or stalled): the next dial goes to the next endpoint.
    fn stream_ended(&mut self, link: &Link, backoff: &mut Backoff) {
        self.endpoints.advance();
        if let Link::Up(stream) = link {
            crate::client::stream_ended(backoff, stream.since.elapsed());
        }
    }

    fn warn_if_expired(&self) {
        if let Ok(v) = tls::validity(&self.cert_pem)
            && v.not_after < Utc::now()
        {
            tracing::error!(
                expired = %v.not_after,
                "the agent certificate has expired; run keyward-agent enroll --force with a new token"
            );
        }
    }

    /// Starts a connection attempt with the current certificate.
    fn open(&self) -> Link {
        Link::connecting(
            self.endpoints.current().to_owned(),
            tls::client_config(
                &self.identity.ca_pem,
                &self.cert_pem,
                &self.identity.key_pem,
            ),
            message(agent_message::Msg::Hello(self.hello())),
            self.renew_instant(),
        )
    }

    /// When to ask for a new certificate, for the certificate in use.
    fn renew_instant(&self) -> Option<Instant> {
        match tls::validity(&self.cert_pem) {
            Ok(v) => {
                // Negative (renewal overdue) becomes zero: ask at once.
                let wait = (v.renew_at() - Utc::now()).to_std().unwrap_or_default();
                Instant::now().checked_add(wait)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the agent certificate's validity");
                None
            }
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            applied_generation: self.status.applied_generation,
            observed: self
                .observed
                .iter()
                .map(|(user, fingerprints)| UserFingerprints {
                    user: user.clone(),
                    fingerprints: fingerprints.clone(),
                })
                .collect(),
            host_keys: read_host_keys(&self.config.host_key_dir),
            recording: self.recordings.recorder().is_some(),
        }
    }

    /// Verifies and applies a state; the answer is Applied or StateRejected.
    async fn on_state(&mut self, signed: SignedState) -> AgentMessage {
        let key = self.identity.signing_key;
        let host_id = &self.identity.info.host_id;
        let state = match verify_state(&key, &signed, host_id, self.status.applied_generation) {
            Ok(state) => state,
            Err(e) => {
                // Decoded without trust, only to name the generation in the report.
                let generation = DesiredState::decode(signed.state.as_slice())
                    .map(|s| s.generation)
                    .unwrap_or(0);
                tracing::warn!(generation, reason = %e, "rejected a state");
                return message(agent_message::Msg::Rejected(StateRejected {
                    generation,
                    reason: e.to_string(),
                }));
            }
        };
        // Cached before anything is changed: killed at any point from here, the agent restarts
        // from this state, never from the older one a revocation replaced.
        self.persist(&signed).await;
        let generation = state.generation;
        self.status.applied_generation = generation;
        self.last = Some(CachedState {
            signed,
            state: state.clone(),
        });
        let checking = self.apply_state(&state).await;
        self.wait_for_sessions(checking).await;
        let users: Vec<UserResult> = state
            .users
            .iter()
            .filter_map(|u| self.results.get(&u.user).cloned())
            .collect();
        tracing::info!(
            generation,
            errors = users.iter().filter(|r| !r.error.is_empty()).count(),
            "applied a state"
        );
        self.mark_ready();
        message(agent_message::Msg::Applied(Applied {
            generation,
            users,
            sshd: self.sshd.clone(),
        }))
    }

    /// Waits at most [`SESSION_REPLY_WAIT`] for the session checks of `users`.
    async fn wait_for_sessions(&mut self, mut users: BTreeSet<UnixUser>) {
        let deadline = Instant::now() + SESSION_REPLY_WAIT;
        while !users.is_empty() {
            match tokio::time::timeout_at(deadline, self.sessions.done.recv()).await {
                Ok(Some(done)) => {
                    users.remove(&done.user);
                    // The answer being made carries the result.
                    let _ = self.on_sessions_done(done);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Writes the cache. If that fails, the old cache is removed: re-applying an older state at
    /// the next start could bring back a key revoked since.
    async fn persist(&self, signed: &SignedState) {
        let (dir, signed, epochs) = (self.dir.clone(), signed.clone(), self.epochs.clone());
        let result = tokio::task::spawn_blocking(move || {
            dir.store_state(&signed, &epochs).inspect_err(|_| {
                let _ = dir.remove_state();
            })
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot cache the state"),
            Err(e) => tracing::error!(error = %e, "the cache task failed"),
        }
    }

    /// Applies every user of `state` that this agent manages and starts the session checks that
    /// are due; returns the users being checked.
    async fn apply_state(&mut self, state: &DesiredState) -> BTreeSet<UnixUser> {
        self.recordings.set_recorded(
            state
                .users
                .iter()
                .filter(|u| u.recording.is_some())
                .map(|u| u.user.clone())
                .collect(),
        );
        // sshd's files first: the revocation list is what makes sshd itself refuse a key.
        self.sshd_retry = None;
        self.sshd = match &state.sshd {
            Some(files) => {
                self.trusted_cas = files
                    .user_ca_keys
                    .iter()
                    .filter_map(|k| keyward_common::keys::public_key_fingerprint(k).ok())
                    .map(|f| f.to_string())
                    .collect();
                Some(self.write_sshd_files(files, &state.users).await)
            }
            None => None,
        };
        self.schedule_sshd_retry(RETRY_FIRST);
        let mut seen = BTreeSet::new();
        let mut checking = BTreeSet::new();
        for desired in &state.users {
            let mut result = UserResult {
                user: desired.user.clone(),
                ..UserResult::default()
            };
            let user = match desired.user.parse::<UnixUser>() {
                Ok(u) => u,
                Err(e) => {
                    result.error = format!("refused: {e}");
                    self.results.insert(desired.user.clone(), result);
                    continue;
                }
            };
            if self.config.mode_of(user.as_str()).is_none() {
                tracing::warn!(user = %user, "the state names a user this agent does not manage");
                result.error = format!(
                    "refused: user {user} is not in this agent's configuration; nothing was written"
                );
                self.results.insert(desired.user.clone(), result);
                continue;
            }
            if !seen.insert(user.clone()) {
                result.error = format!("refused: user {user} appears twice in the state");
                self.results.insert(desired.user.clone(), result);
                continue;
            }
            let acted = self.epochs.get(user.as_str()).copied().unwrap_or(0);
            let epoch = (desired.session_epoch > acted).then_some(desired.session_epoch);
            if self.apply_user(&user, desired, epoch).await {
                checking.insert(user);
            }
        }
        checking
    }

    /// After a failed write of sshd's files, retries it in `wait` (doubling up to [`RETRY_MAX`]).
    fn schedule_sshd_retry(&mut self, wait: Duration) {
        if self.sshd.as_ref().is_some_and(|r| !r.error.is_empty()) {
            self.sshd_retry = Some((Instant::now() + wait, (wait * 2).min(RETRY_MAX)));
        }
    }

    /// Writes the last state's sshd files again (a retry after a failure); true when the outcome
    /// changed.
    async fn retry_sshd_files(&mut self) -> bool {
        let Some((_, next_wait)) = self.sshd_retry.take() else {
            return false;
        };
        let Some(files) = self.last.as_ref().and_then(|l| l.state.sshd.clone()) else {
            return false;
        };
        let users = self
            .last
            .as_ref()
            .map(|l| l.state.users.clone())
            .unwrap_or_default();
        let before = self.sshd.clone();
        self.sshd = Some(self.write_sshd_files(&files, &users).await);
        self.schedule_sshd_retry(next_wait);
        self.sshd != before
    }

    /// Writes the state's sshd files for the users this agent manages, on a blocking thread.
    async fn write_sshd_files(
        &self,
        files: &proto::SshdFiles,
        users: &[ManagedUser],
    ) -> SshdFilesResult {
        let managed = self.config.users.iter().map(|u| &u.name);
        let recorder = self.recordings.recorder();
        let jump_user = self.config.jump_user();
        let result = match apply::sshd_files(files, users, managed, jump_user, recorder) {
            Ok(files) => {
                let applier = Arc::clone(&self.applier);
                tokio::task::spawn_blocking(move || applier.apply_sshd_files(&files))
                    .await
                    .unwrap_or_else(|e| Err(ApplyError::Other(format!("the task failed: {e}"))))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(changed) => SshdFilesResult {
                error: String::new(),
                changed,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot write sshd's files");
                SshdFilesResult {
                    error: e.to_string(),
                    changed: false,
                }
            }
        }
    }

    /// Applies one user's desired state and records it ([`Agent::record`]); `epoch`: a raised
    /// session epoch to act on. Returns whether a session check started.
    async fn apply_user(
        &mut self,
        user: &UnixUser,
        desired: &ManagedUser,
        epoch: Option<u64>,
    ) -> bool {
        match self.write(user, desired).await {
            Some(done) => self.record(user, desired, &done, epoch, false),
            None => false,
        }
    }

    /// Writes one user's file on a blocking thread. A failure is recorded and retried later.
    async fn write(&mut self, user: &UnixUser, desired: &ManagedUser) -> Option<UserApplied> {
        let mode = self.config.mode_of(user.as_str())?;
        let applier = Arc::clone(&self.applier);
        let (u, d) = (user.clone(), desired.clone());
        let recorder = apply::recorded_by(desired, self.recordings.recorder());
        let applied = tokio::task::spawn_blocking(move || {
            applier.apply_user(&u, mode, &d, recorder.as_deref())
        });
        match applied.await {
            Ok(Ok(done)) => {
                self.retry_wait.remove(user);
                Some(done)
            }
            Ok(Err(e)) => {
                tracing::warn!(user = %user, error = %e, "cannot apply");
                self.failed(user, e.to_string());
                None
            }
            Err(e) => {
                tracing::error!(user = %user, error = %e, "the apply task failed");
                self.failed(user, format!("the apply task failed: {e}"));
                None
            }
        }
    }

    /// Records what a write did and starts a session check when one is due (module docs): a
    /// raised epoch, a valid key gone, or a line removed that must not have been there. Returns
    /// whether a check started.
    fn record(
        &mut self,
        user: &UnixUser,
        desired: &ManagedUser,
        done: &UserApplied,
        epoch: Option<u64>,
        repair: bool,
    ) -> bool {
        if !done.warnings.is_empty() {
            tracing::warn!(user = %user, warnings = ?done.warnings, "applied with warnings");
        }
        // A repair's warnings stay until the next state: a pin the repair defeated a moment ago
        // must still show (the repair's own rename makes another, clean, repair right after).
        let mut warnings = done.warnings.clone();
        if repair && let Some(before) = self.results.get(user.as_str()) {
            for w in &before.warnings {
                if !warnings.contains(w) && !w.starts_with(SESSIONS_WARNING) {
                    warnings.push(w.clone());
                }
            }
        }
        self.results.insert(
            user.to_string(),
            UserResult {
                user: user.to_string(),
                error: String::new(),
                fingerprints: done.fingerprints.clone(),
                changed: done.changed,
                sessions_ended: 0,
                set_aside: done.set_aside.clone(),
                warnings,
            },
        );
        self.observed
            .insert(user.to_string(), done.fingerprints.clone());
        let now = Utc::now();
        let jump = self.config.jump_user() == Some(user);
        let valid = ValidKeys::of(desired, done, &self.trusted_cas, jump);
        let valid_now = valid.now(now);
        // A key gone, or a certificate revoked since (the control plane raises the epoch for
        // that too; this does not wait for it).
        let lost = self.valid.get(user.as_str()).is_some_and(|before| {
            before.at(now).iter().any(|fp| !valid_now.keys.contains(fp))
                || !valid_now
                    .revoked_certificate_ids
                    .is_subset(&before.revoked_certificate_ids)
        });
        self.valid.insert(user.to_string(), valid);
        if epoch.is_some() || lost || !done.added.is_empty() {
            self.sessions.check(SessionCheck {
                user: user.clone(),
                valid: valid_now,
                epoch,
            });
            return true;
        }
        false
    }

    /// Records a failed write and schedules its retry.
    fn failed(&mut self, user: &UnixUser, error: String) {
        let wait = self
            .retry_wait
            .get(user)
            .map_or(RETRY_FIRST, |w| (*w * 2).min(RETRY_MAX));
        self.retry_wait.insert(user.clone(), wait);
        let at = Instant::now() + wait;
        let due = self.due.entry(user.clone()).or_insert(at);
        *due = (*due).min(at);
        let result = self
            .results
            .entry(user.to_string())
            .or_insert_with(|| UserResult {
                user: user.to_string(),
                ..UserResult::default()
            });
        result.error = error;
        result.changed = false;
    }

    /// A session check finished; `true` when the user's result changed (sessions ended, or a
    /// failure came or went).
    fn on_sessions_done(&mut self, done: SessionDone) -> bool {
        let result = self
            .results
            .entry(done.user.to_string())
            .or_insert_with(|| UserResult {
                user: done.user.to_string(),
                ..UserResult::default()
            });
        let before = (result.sessions_ended, result.warnings.len());
        match done.result {
            Ok(n) => {
                tracing::info!(user = %done.user, sessions = n, epoch = ?done.epoch, "checked sessions");
                result.sessions_ended = result.sessions_ended.saturating_add(n);
                result.warnings.retain(|w| !w.starts_with(SESSIONS_WARNING));
                if let Some(epoch) = done.epoch {
                    self.epochs.insert(done.user.to_string(), epoch);
                    let (dir, epochs) = (self.dir.clone(), self.epochs.clone());
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = dir.store_epochs(&epochs) {
                            tracing::error!(error = %e, "cannot store the session epochs");
                        }
                    });
                }
            }
            Err(e) => {
                tracing::warn!(user = %done.user, error = %e, "cannot end sessions");
                result.warnings.push(format!("{SESSIONS_WARNING}{e}"));
            }
        }
        (result.sessions_ended, result.warnings.len()) != before
    }

    /// Sends every user's current result as an `Applied` for the applied generation: how the
    /// control plane learns of results that came after the state's answer.
    fn send_results(&mut self, link: &mut Link) {
        if self.status.applied_generation == 0 || self.results.is_empty() {
            return;
        }
        let users = self.results.values().cloned().collect();
        link.send(message(agent_message::Msg::Applied(Applied {
            generation: self.status.applied_generation,
            users,
            sshd: self.sshd.clone(),
        })));
    }

    /// Queues users whose file changed on disk for repair: at once, or when their
    /// [`REPAIR_INTERVAL`] since the last repair is over.
    async fn on_watch(
        &mut self,
        first: UnixUser,
        events: Option<&mut mpsc::Receiver<UnixUser>>,
        link: &mut Link,
    ) {
        // One burst of events (a rename is several) is one repair per user.
        let mut users = BTreeSet::from([first]);
        if let Some(rx) = events {
            while let Ok(u) = rx.try_recv() {
                users.insert(u);
            }
        }
        let now = Instant::now();
        for user in users {
            let at = self
                .repaired_at
                .get(&user)
                .map_or(now, |last| (*last + REPAIR_INTERVAL).max(now));
            let due = self.due.entry(user).or_insert(at);
            *due = (*due).min(at);
        }
        self.on_due(link).await;
    }

    /// Repairs the users whose time has come (an outside edit, or a retry).
    async fn on_due(&mut self, link: &mut Link) {
        let now = Instant::now();
        let mut changed = false;
        if self.sshd_retry.is_some_and(|(at, _)| at <= now) {
            changed |= self.retry_sshd_files().await;
        }
        let ready: Vec<UnixUser> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(u, _)| u.clone())
            .collect();
        for user in ready {
            self.due.remove(&user);
            self.repaired_at.insert(user.clone(), now);
            let before = self.results.get(user.as_str()).cloned();
            if let Some(report) = self.repair(&user).await {
                tracing::warn!(user = %user, added = ?report.added, removed = ?report.removed, "repaired an outside edit");
                if !link.send(message(agent_message::Msg::Drift(report.clone()))) {
                    self.pending_drift.insert(user.to_string(), report);
                }
            }
            let status = |r: Option<&UserResult>| {
                r.map(|r| (r.error.clone(), r.warnings.clone(), r.set_aside.clone()))
            };
            changed |= status(self.results.get(user.as_str())) != status(before.as_ref());
        }
        if changed {
            self.send_results(link);
        }
    }

    /// Re-applies the last state for `user`; the drift it repaired, if any.
    async fn repair(&mut self, user: &UnixUser) -> Option<DriftReport> {
        let desired = self
            .last
            .as_ref()?
            .state
            .users
            .iter()
            .find(|u| u.user == user.as_str())?
            .clone();
        let done = self.write(user, &desired).await?;
        self.record(user, &desired, &done, None, true);
        (!done.added.is_empty() || !done.removed.is_empty()).then(|| DriftReport {
            user: user.to_string(),
            added: done.added,
            removed: done.removed,
            detected_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }

    /// When a managed key's grace period next ends.
    fn next_expiry(&self) -> Option<chrono::DateTime<Utc>> {
        let now = Utc::now();
        self.valid.values().filter_map(|v| v.next_expiry(now)).min()
    }

    /// A grace period ended: sshd refuses the key from now on (its `expiry-time`); the sessions
    /// it opened end too.
    fn on_expiry(&mut self) {
        let now = Utc::now();
        let mut checks = Vec::new();
        for (user, valid) in &self.valid {
            let expired = valid.keys.values().flatten().any(|t| *t <= now);
            if expired && let Ok(user) = user.parse::<UnixUser>() {
                let mut keep = valid.clone();
                keep.keys.retain(|_, t| t.is_none_or(|t| t > now));
                checks.push((user, keep));
            }
        }
        for (user, keep) in checks {
            self.sessions.check(SessionCheck {
                user: user.clone(),
                valid: keep.now(now),
                epoch: None,
            });
            self.valid.insert(user.to_string(), keep);
        }
    }

    /// Stores a renewed certificate; it is used from the next connection on.
    fn on_certificate(&mut self, pem: &str, link: &mut Link) {
        let check = tls::certifies(pem, &self.key).and_then(|ok| {
            tls::client_config(&self.identity.ca_pem, pem, &self.identity.key_pem)?;
            Ok(ok)
        });
        match check {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("refused a certificate that is not for this agent's key");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "refused an unusable certificate");
                return;
            }
        }
        if let Err(e) = self.dir.write_file(CERT_FILE, pem.as_bytes()) {
            tracing::error!(error = %e, "cannot store the renewed certificate");
            return;
        }
        tracing::info!("stored a renewed certificate");
        self.cert_pem = pem.to_owned();
        if let Link::Up(stream) = link {
            stream.renew_at = self.renew_instant();
        }
    }
}
