//! `keyward-agent run`: enforce the cached state, then follow the control plane's stream.
//!
//! One task owns everything (the applied state, the epochs, the connection) and wakes only for:
//! a message on the stream, a file-watcher event, a change of sshd's log (the login audit,
//! [`crate::logins`]), the certificate renewal timer, the systemd watchdog timer, the reconnect
//! and login-resend timers and shutdown. There is no polling loop: an idle agent costs
//! only the HTTP/2 keepalive pings.
//!
//! Order of trust: a state is applied only after [`verify_state`] with the signing key pinned at
//! enrollment, for this host id, not older than what was applied. The cached copy is verified
//! again at every start. A user the local configuration does not list is never written.
//! Keys are never removed because the control plane is unreachable: without a stream the agent
//! just keeps enforcing the last state it verified.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use keyward_common::UnixUser;
use keyward_common::proto::{
    AgentMessage, Applied, DesiredState, DriftReport, Hello, RenewCertificate, SignedState,
    StateRejected, UserFingerprints, UserResult, agent_message, control_message,
};
use keyward_common::signing::verify_state;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::apply::{Applier, SystemApplier};
use crate::cache::{CERT_FILE, CacheError, CachedState, Epochs, Identity, StateDir};
use crate::client::Backoff;
use crate::config::AgentConfig;
use crate::host_keys::read_host_keys;
use crate::link::{Link, LinkEvent};
use crate::logins::{self, Logins};
use crate::sd_notify::Notifier;
use crate::tls::{self, TlsError};

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    State(#[from] CacheError),
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
    let (watcher, events) = crate::apply::watch_users(&config);
    let deps = RuntimeDeps {
        applier: Arc::new(SystemApplier),
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
    let grpc_url = config
        .grpc_url
        .clone()
        .unwrap_or_else(|| identity.info.grpc_url.clone());
    let mut agent = Agent {
        logins: Logins::start(&config.logins, &dir),
        cert_pem: identity.cert_pem.clone(),
        config,
        dir,
        identity,
        key,
        grpc_url,
        applier: deps.applier,
        notifier: deps.notifier,
        status_tx: deps.status,
        status: AgentStatus::default(),
        last: None,
        epochs,
        observed: BTreeMap::new(),
        pending_drift: BTreeMap::new(),
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
    grpc_url: String,
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
}

async fn next_watch_event(events: &mut Option<mpsc::Receiver<UnixUser>>) -> Option<UnixUser> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
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
                let results = self.apply_state(&cached.state).await;
                tracing::info!(
                    generation = cached.state.generation,
                    errors = results.iter().filter(|r| !r.error.is_empty()).count(),
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
        let mut backoff = Backoff::new();
        let mut watchdog = self
            .notifier
            .as_ref()
            .and_then(Notifier::watchdog_interval)
            .map(|period| {
                let mut i = tokio::time::interval(period);
                i.set_missed_tick_behavior(MissedTickBehavior::Delay);
                i
            });
        let mut link = self.open();
        let mut login_wakes = self.logins.take_wakes();
        loop {
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
                () = tick(&mut watchdog) => {
                    if let Some(n) = &self.notifier {
                        n.watchdog();
                    }
                }
                () = logins::wake(&mut login_wakes) => self.logins.on_wake(&mut link).await,
                () = logins::sleep_until(self.logins.resend_at()) => self.logins.on_resend(&mut link),
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
                tracing::warn!(url = %self.grpc_url, error = %e, "cannot reach the control plane");
                self.warn_if_expired();
                retry(backoff)
            }
            LinkEvent::Opened(Ok(stream)) => {
                tracing::info!(url = %self.grpc_url, "connected to the control plane");
                let mut up = Link::Up(stream);
                for (_, report) in std::mem::take(&mut self.pending_drift) {
                    up.send(message(agent_message::Msg::Drift(report)));
                }
                self.logins.on_connected(&mut up);
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

    fn stream_ended(&self, link: &Link, backoff: &mut Backoff) {
        if let Link::Up(stream) = link {
            backoff.stream_ended(stream.since.elapsed());
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
            self.grpc_url.clone(),
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
        let users = self.apply_state(&state).await;
        let generation = state.generation;
        self.persist(&signed).await;
        tracing::info!(
            generation,
            errors = users.iter().filter(|r| !r.error.is_empty()).count(),
            "applied a state"
        );
        self.status.applied_generation = generation;
        self.last = Some(CachedState { signed, state });
        self.mark_ready();
        message(agent_message::Msg::Applied(Applied { generation, users }))
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
            Ok(Err(e)) => tracing::error!(error = %e, "cannot cache the applied state"),
            Err(e) => tracing::error!(error = %e, "the cache task failed"),
        }
    }

    /// Applies every user of `state` that this agent manages, then ends sessions where the
    /// session epoch went up.
    async fn apply_state(&mut self, state: &DesiredState) -> Vec<UserResult> {
        let mut seen = BTreeSet::new();
        let mut results = Vec::with_capacity(state.users.len());
        for desired in &state.users {
            let mut result = UserResult {
                user: desired.user.clone(),
                ..UserResult::default()
            };
            let user = match desired.user.parse::<UnixUser>() {
                Ok(u) => u,
                Err(e) => {
                    result.error = format!("refused: {e}");
                    results.push(result);
                    continue;
                }
            };
            let Some(mode) = self.config.mode_of(user.as_str()) else {
                tracing::warn!(user = %user, "the state names a user this agent does not manage");
                result.error = format!(
                    "refused: user {user} is not in this agent's configuration; nothing was written"
                );
                results.push(result);
                continue;
            };
            if !seen.insert(user.clone()) {
                result.error = format!("refused: user {user} appears twice in the state");
                results.push(result);
                continue;
            }
            let applier = Arc::clone(&self.applier);
            let (u, d) = (user.clone(), desired.clone());
            // The keys valid for the user now: what this apply left (none if it failed).
            let mut valid = Vec::new();
            match tokio::task::spawn_blocking(move || applier.apply_user(&u, mode, &d)).await {
                Ok(Ok(done)) => {
                    valid.clone_from(&done.fingerprints);
                    result.changed = done.changed;
                    result.fingerprints = done.fingerprints.clone();
                    self.observed.insert(user.to_string(), done.fingerprints);
                }
                Ok(Err(e)) => {
                    tracing::warn!(user = %user, error = %e, "cannot apply");
                    result.error = e.to_string();
                }
                Err(e) => result.error = format!("the apply task failed: {e}"),
            }
            // After the write, so a user whose sessions end cannot log in again with a key the
            // write just removed. Only sessions verified logins tie to a valid key stay.
            let acted = self.epochs.get(user.as_str()).copied().unwrap_or(0);
            if desired.session_epoch > acted {
                let applier = Arc::clone(&self.applier);
                match self
                    .logins
                    .end_revoked_sessions(applier, &user, &valid)
                    .await
                {
                    Ok(n) => {
                        tracing::info!(user = %user, sessions = n, epoch = desired.session_epoch, "ended sessions");
                        result.sessions_ended = n;
                        self.epochs.insert(user.to_string(), desired.session_epoch);
                    }
                    Err(e) => append_error(&mut result.error, &e),
                }
            }
            results.push(result);
        }
        results
    }

    /// Re-applies the last state for users whose file changed on disk, and reports drift.
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
        for user in users {
            let Some(report) = self.repair(&user).await else {
                continue;
            };
            tracing::warn!(user = %user, added = ?report.added, removed = ?report.removed, "repaired an outside edit");
            if !link.send(message(agent_message::Msg::Drift(report.clone()))) {
                self.pending_drift.insert(user.to_string(), report);
            }
        }
    }

    async fn repair(&mut self, user: &UnixUser) -> Option<DriftReport> {
        let mode = self.config.mode_of(user.as_str())?;
        let desired = self
            .last
            .as_ref()?
            .state
            .users
            .iter()
            .find(|u| u.user == user.as_str())?
            .clone();
        let applier = Arc::clone(&self.applier);
        let u = user.clone();
        match tokio::task::spawn_blocking(move || applier.apply_user(&u, mode, &desired)).await {
            Ok(Ok(done)) => {
                self.observed.insert(user.to_string(), done.fingerprints);
                (!done.added.is_empty() || !done.removed.is_empty()).then(|| DriftReport {
                    user: user.to_string(),
                    added: done.added,
                    removed: done.removed,
                    detected_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                })
            }
            Ok(Err(e)) => {
                tracing::warn!(user = %user, error = %e, "cannot repair an outside edit");
                None
            }
            Err(e) => {
                tracing::error!(user = %user, error = %e, "the repair task failed");
                None
            }
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

fn append_error(error: &mut String, more: &str) {
    if !error.is_empty() {
        error.push_str("; ");
    }
    error.push_str(more);
}
