//! The agents' gRPC endpoint: mutual TLS 1.3, one bidirectional stream per host.
//!
//! The TLS layer admits only certificates the agent CA issued and that are within their
//! validity; the stream then maps the certificate to its host (`urn:keyward:host:{id}`) and
//! refuses a revoked host or a certificate that is not the host's current one. A host only ever
//! receives the state built for its own id.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keyward_common::HostId;
use keyward_common::proto::agent_hub_server::{AgentHub, AgentHubServer};
use keyward_common::proto::{
    AgentMessage, Certificate as CertificateMessage, ControlMessage, agent_message, control_message,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::AgentTrust;
use super::ca::HOST_URI_PREFIX;
use super::ca_trust::CaTrust;
use super::hub::Hub;
use super::limits::{
    AgentLimits, MAX_CSR_BYTES, MAX_DRIFT_KEYS, MAX_FINGERPRINTS, MAX_HOST_KEY_BYTES,
    MAX_HOST_KEYS, MAX_LAST_ERROR, MAX_LOGIN_EVENTS, MAX_MESSAGE_BYTES, MAX_REASON, MAX_SET_ASIDE,
    MAX_TEXT, MAX_TIME, MAX_USER, MAX_USERS, MAX_VERSION, MAX_WARNINGS, RECORD_DROPS_EVERY,
    Refusal, StreamLimits, bounded,
};
use super::recordings::{RecordingIngest, Stored};
use super::state::{StateInputs, desired_state};
use crate::caller::Caller;
use crate::changes::{Change, ChangeNotifier};
use crate::clock::iso8601;
use crate::conns::{AcceptBackoff, Guarded};
use crate::lifecycle::{DomainError, KeyLifecycle};
use crate::proxy_protocol::TrustedProxies;
use crate::store::{DriftRecord, HostReport, HostRole};
use refused::Refused;

mod refused;

/// How long the control plane waits for `Applied` before sending the state again.
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// How far past its host's desired generation an agent's applied one may raise it
/// ([`Store::raise_generation_past`](crate::store::Store::raise_generation_past)): more than the
/// changes a host sees between two backups, far less than the range.
const MAX_GENERATION_CATCH_UP: i64 = 1_000_000;
/// How often the control plane pings an agent's stream (see `serve`).
const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// Agents' hellos, acknowledgements and disconnections waiting to be recorded; a stream waits
/// when the queue is full.
const REPORT_QUEUE: usize = 4096;
/// The most reports recorded in one transaction.
const REPORT_BATCH: usize = 512;

/// One user's result as the host view shows it: bounded, fingerprints checked.
fn user_view(u: &keyward_common::proto::UserResult) -> serde_json::Value {
    let fingerprints = |list: &[String], max: usize| -> Vec<String> {
        list.iter()
            .filter(|f| f.parse::<keyward_common::Fingerprint>().is_ok())
            .take(max)
            .cloned()
            .collect()
    };
    json!({
        "user": bounded(&u.user, MAX_USER),
        "error": (!u.error.is_empty()).then(|| bounded(&u.error, MAX_TEXT)),
        "fingerprints": fingerprints(&u.fingerprints, MAX_FINGERPRINTS),
        "changed": u.changed,
        "sessionsEnded": u.sessions_ended,
        "warnings": u.warnings.iter().take(MAX_WARNINGS).map(|w| bounded(w, MAX_TEXT)).collect::<Vec<_>>(),
        "setAside": fingerprints(&u.set_aside, MAX_SET_ASIDE),
    })
}

/// Fingerprints of a drift report's list that parse, at most [`MAX_DRIFT_KEYS`]; the bool says
/// whether any were left out.
fn drift_keys(list: &[String]) -> (Vec<String>, bool) {
    let kept: Vec<String> = list
        .iter()
        .filter(|f| f.len() <= 128)
        .filter_map(|f| f.parse::<keyward_common::Fingerprint>().ok())
        .take(MAX_DRIFT_KEYS)
        .map(|f| f.to_string())
        .collect();
    let cut = kept.len() < list.len();
    (kept, cut)
}

/// Why the agent endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("agent TLS configuration: {0}")]
    Tls(String),
}

/// The identity a client certificate proves: its host and serial.
fn peer_identity<T>(request: &Request<T>) -> Result<(HostId, String), Refused> {
    let certs = request.peer_certs().ok_or(Refused::NoCertificate)?;
    let leaf = certs.first().ok_or(Refused::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| Refused::UnreadableCertificate)?;
    let serial = hex::encode(cert.raw_serial());
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or(Refused::NoHostNamed)?;
    let host = san
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(HOST_URI_PREFIX),
            _ => None,
        })
        .ok_or(Refused::NoHostNamed)?;
    let host = host
        .parse::<HostId>()
        .map_err(|_| Refused::InvalidHostNamed)?;
    Ok((host, serial.trim_start_matches("00").to_owned()))
}

#[derive(Debug, Clone)]
pub struct AgentService {
    lifecycle: Arc<KeyLifecycle>,
    /// The agents' streams and the live views of this replica.
    hub: Arc<Hub>,
    trust: AgentTrust,
    certificate_lifetime: Duration,
    /// The per-host rates (`[agent_api]`).
    limits: AgentLimits,
    /// To the task that records agents' reports ([`spawn_report_writer`]).
    reports: mpsc::Sender<HostReport>,
    /// The SSH CA's keys every state carries.
    ca_trust: Arc<CaTrust>,
    /// Where session recordings go.
    recordings: Arc<RecordingIngest>,
}

/// Starts the task that records agents' hellos, acknowledgements and disconnections, in order,
/// as many as are waiting in one transaction: a stream's loop does not wait for SQL, and a
/// bulk rotation's 10,000 acknowledgements cost a few commits instead of 10,000. The hosts
/// view of every replica is told after each batch is recorded. The task ends when every sender
/// is gone.
fn spawn_report_writer(
    lifecycle: Arc<KeyLifecycle>,
    changes: Arc<dyn ChangeNotifier>,
) -> mpsc::Sender<HostReport> {
    let (tx, mut rx) = mpsc::channel::<HostReport>(REPORT_QUEUE);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(REPORT_BATCH);
        while rx.recv_many(&mut batch, REPORT_BATCH).await > 0 {
            let store = lifecycle.store();
            if store.record_host_reports(&batch).await.is_err() {
                // One by one, so that one report that cannot be written loses only itself.
                for report in &batch {
                    let recorded = store
                        .record_host_reports(std::slice::from_ref(report))
                        .await;
                    // A disconnection's last contact is best effort (the server may be
                    // stopping and its pool closed), as it always was.
                    if let Err(e) = recorded
                        && !matches!(report, HostReport::Seen { .. })
                    {
                        tracing::warn!(host = %report.host(), error = %e, "cannot record an agent's report");
                    }
                }
            }
            let hosts: BTreeSet<&HostId> = batch.iter().map(HostReport::host).collect();
            changes.changed(Change::Reported(hosts.into_iter().cloned().collect()));
            batch.clear();
        }
    });
    tx
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentHub for AgentService {
    type SessionStream = ControlStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<ControlStream>, Status> {
        let (host_id, serial) = peer_identity(&request)?;
        let store = self.lifecycle.store();
        let host = store
            .host(&host_id)
            .await
            .map_err(|e| Refused::Domain(e.into()))?
            .ok_or_else(|| Refused::Domain(DomainError::HostNotFound(host_id.clone())))?;
        if host.revoked_at.is_some() {
            return Err(Refused::HostRevoked.into());
        }
        let current = host
            .cert_serial
            .as_deref()
            .map(|s| s.trim_start_matches("00"));
        if current != Some(serial.as_str()) {
            return Err(Refused::NotCurrentCertificate.into());
        }
        let (tx, rx) = mpsc::channel(8);
        let session = Session {
            service: self.clone(),
            host: host_id,
            tenant: host.tenant_id,
            bastion: host.role == HostRole::Bastion,
            tx,
            limits: std::sync::Mutex::new(StreamLimits::new(
                &self.limits,
                std::time::Instant::now(),
            )),
            sent_generation: std::sync::atomic::AtomicU64::new(0),
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    service: AgentService,
    host: HostId,
    tenant: keyward_common::TenantId,
    /// A bastion's stream is woken by every tenant's change, and raises its host's generation
    /// itself before it sends the state again (no tenant's change writes the bastion's row).
    bastion: bool,
    tx: mpsc::Sender<Result<ControlMessage, Status>>,
    /// This stream's rate limits (never held across an await).
    limits: std::sync::Mutex<StreamLimits>,
    /// The newest generation this stream sent: an agent that applied a later one has a database
    /// behind it ([`Session::catch_up`]), and only then is the database asked.
    sent_generation: std::sync::atomic::AtomicU64,
}

impl Session {
    fn with_limits<T>(&self, f: impl FnOnce(&mut StreamLimits) -> T) -> T {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut limits)
    }

    /// Adds the reports dropped so far to the host's row, when due (or all of them on `flush`).
    async fn record_drops(&self, flush: bool) {
        let due = self.with_limits(|l| l.due(std::time::Instant::now(), flush));
        if let Some(count) = due {
            self.report(HostReport::Dropped {
                host: self.host.clone(),
                count: i64::try_from(count).unwrap_or(i64::MAX),
            })
            .await;
        }
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.service.lifecycle.now()
    }

    /// Queues a report for the writer task.
    async fn report(&self, report: HostReport) {
        if self.service.reports.send(report).await.is_err() {
            tracing::warn!(host = %self.host, "the report writer has stopped");
        }
    }

    /// Raises the host's generation (a bastion's, woken: some tenant's routes or revocations may
    /// have changed), so that its agent applies the next state as a new one and raises its jump
    /// user's session epoch. A failure is logged: the state is sent all the same.
    async fn raise_generation(&self) {
        let store = self.service.lifecycle.store();
        let raised = async {
            let mut tx = store.begin_unaudited().await?;
            tx.bump_host(&self.host).await?;
            tx.commit().await
        };
        if let Err(e) = raised.await {
            tracing::warn!(host = %self.host, error = %e, "cannot raise the bastion's generation");
        }
    }

    /// The agent applied a later generation than the database knows (the database was restored
    /// from a backup older than what the host applied), so it would refuse every state until the
    /// host's generation passed its own: the generation is raised past the agent's and the state
    /// sent again, and the host converges to what the database holds.
    async fn catch_up(&self, applied: u64) {
        let sent = self
            .sent_generation
            .load(std::sync::atomic::Ordering::Relaxed);
        if applied <= sent {
            return;
        }
        let Ok(applied) = i64::try_from(applied) else {
            return;
        };
        let store = self.service.lifecycle.store();
        match store
            .raise_generation_past(&self.host, applied, MAX_GENERATION_CATCH_UP)
            .await
        {
            Ok(true) => {
                tracing::warn!(host = %self.host, applied, "the agent had applied a later generation than the database holds (a restore?): its state is sent again as a new one");
                self.send_state().await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(host = %self.host, error = %e, "cannot raise the host's generation past its agent's");
            }
        }
    }

    /// Builds, signs and sends the host's current state; returns its generation.
    async fn send_state(&self) -> Option<u64> {
        let lifecycle = &self.service.lifecycle;
        let ca_keys = self.service.ca_trust.keys();
        let inputs = StateInputs {
            ca_keys: &ca_keys,
            jump_user: &lifecycle.bastion().jump_user,
        };
        let state =
            match desired_state(lifecycle.store(), &self.host, lifecycle.now(), inputs).await {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(host = %self.host, error = %e, "cannot build the desired state");
                    return None;
                }
            };
        let generation = state.generation;
        self.sent_generation
            .fetch_max(generation, std::sync::atomic::Ordering::Relaxed);
        let signed = self.service.trust.signer.sign(&state);
        let message = ControlMessage {
            msg: Some(control_message::Msg::State(signed)),
        };
        self.tx.send(Ok(message)).await.ok()?;
        metrics::counter!("keyward_agent_states_sent_total").increment(1);
        Some(generation)
    }

    async fn run(self, mut inbound: Streaming<AgentMessage>) {
        let hub = self.service.hub.clone();
        let mut registration = hub.register(&self.host, &self.tenant, self.bastion);
        tracing::info!(host = %self.host, "agent connected");
        if self.bastion {
            // Revocations while it was away end its sessions now.
            self.raise_generation().await;
        }
        let mut sent = self.send_state().await;
        let mut acked: Option<u64> = None;
        let resend = tokio::time::sleep(RESEND_AFTER);
        tokio::pin!(resend);
        let drops = tokio::time::sleep(RECORD_DROPS_EVERY);
        tokio::pin!(drops);
        loop {
            let awaiting = sent.is_some() && acked < sent;
            let dropping = self.with_limits(|l| l.unrecorded > 0);
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => match self.handle(message).await {
                        Ok(Some(generation)) => acked = acked.max(Some(generation)),
                        Ok(None) => {}
                        Err(refused) => {
                            tracing::warn!(host = %self.host, %refused, "agent message refused");
                            let _ = self.tx.send(Err(refused.into())).await;
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(status) => {
                        // tonic's decoder refuses a message over the limit as `out_of_range`.
                        if matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) {
                            Refusal::MessageTooLarge.count();
                            tracing::warn!(host = %self.host, %status, "agent message refused");
                            // The agent is told why its stream ends.
                            let _ = self.tx.send(Err(Refused::MessageTooLarge.into())).await;
                        } else {
                            tracing::info!(host = %self.host, %status, "agent stream ended");
                        }
                        break;
                    }
                },
                () = &mut drops, if dropping => {
                    self.record_drops(false).await;
                    drops.as_mut().reset(tokio::time::Instant::now() + RECORD_DROPS_EVERY);
                }
                changed = registration.wake.changed() => {
                    if changed.is_err() {
                        // The hub let go of this stream: it was cut, and the agent is told so
                        // whichever of the two signals this loop sees first.
                        if *registration.cut.borrow() {
                            let _ = self.tx.send(Err(Refused::Cut.into())).await;
                        }
                        break;
                    }
                    if self.bastion {
                        self.raise_generation().await;
                    }
                    sent = self.send_state().await.or(sent);
                    resend.as_mut().reset(tokio::time::Instant::now() + RESEND_AFTER);
                }
                _ = registration.cut.changed() => {
                    let _ = self.tx.send(Err(Refused::Cut.into())).await;
                    break;
                }
                () = &mut resend, if awaiting => {
                    sent = self.send_state().await.or(sent);
                    resend.as_mut().reset(tokio::time::Instant::now() + RESEND_AFTER);
                }
            }
        }
        hub.unregister(&self.host, registration.id);
        self.record_drops(true).await;
        self.report(HostReport::Seen {
            host: self.host.clone(),
            at: self.now(),
        })
        .await;
        tracing::info!(host = %self.host, "agent disconnected");
    }

    /// Handles one message; returns the generation it acknowledges, if it does, or the
    /// refusal that ends the stream.
    async fn handle(&self, message: AgentMessage) -> Result<Option<u64>, Refused> {
        let handled = self.handle_message(message).await;
        self.service.hub.host_changed(&self.host);
        handled
    }

    async fn handle_message(&self, message: AgentMessage) -> Result<Option<u64>, Refused> {
        let store = self.service.lifecycle.store();
        let now = self.now();
        let Some(msg) = message.msg else {
            return Ok(None);
        };
        match msg {
            agent_message::Msg::Hello(hello) => {
                let host_keys: Vec<String> = hello
                    .host_keys
                    .iter()
                    .filter(|k| k.len() <= MAX_HOST_KEY_BYTES)
                    .filter(|k| keyward_common::keys::public_key_fingerprint(k).is_ok())
                    .take(MAX_HOST_KEYS)
                    .cloned()
                    .collect();
                if host_keys.len() < hello.host_keys.len()
                    || hello.agent_version.len() > MAX_VERSION
                {
                    Refusal::Truncated.count();
                }
                let version = bounded(&hello.agent_version, MAX_VERSION);
                self.report(HostReport::Hello {
                    host: self.host.clone(),
                    agent_version: version,
                    host_keys,
                    records: hello.recording,
                    at: now,
                })
                .await;
                self.catch_up(hello.applied_generation).await;
                Ok(None)
            }
            agent_message::Msg::Applied(applied) => {
                if applied.users.len() > MAX_USERS {
                    Refusal::Truncated.count();
                }
                let users: Vec<serde_json::Value> = applied
                    .users
                    .iter()
                    .take(MAX_USERS)
                    .map(user_view)
                    .collect();
                // What makes the host `degraded`: any user's error or warning.
                let reasons: Vec<String> = applied
                    .users
                    .iter()
                    .take(MAX_USERS)
                    .flat_map(|u| {
                        let user = bounded(&u.user, MAX_USER);
                        let error = (!u.error.is_empty()).then(|| bounded(&u.error, MAX_TEXT));
                        error
                            .into_iter()
                            .chain(
                                u.warnings
                                    .iter()
                                    .take(MAX_WARNINGS)
                                    .map(|w| bounded(w, MAX_TEXT)),
                            )
                            .map(move |why| format!("{user}: {why}"))
                    })
                    .chain(
                        applied
                            .sshd
                            .iter()
                            .filter(|sshd| !sshd.error.is_empty())
                            .map(|sshd| format!("sshd files: {}", bounded(&sshd.error, MAX_TEXT))),
                    )
                    .collect();
                let error =
                    (!reasons.is_empty()).then(|| bounded(&reasons.join("; "), MAX_LAST_ERROR));
                let Ok(generation) = i64::try_from(applied.generation) else {
                    return Ok(None);
                };
                self.report(HostReport::Applied {
                    host: self.host.clone(),
                    generation,
                    users: json!(users),
                    error,
                    at: now,
                })
                .await;
                metrics::counter!("keyward_agent_states_applied_total").increment(1);
                Ok(Some(applied.generation))
            }
            agent_message::Msg::Drift(drift) => {
                let allowed = self.with_limits(|l| l.drift.take_one(std::time::Instant::now()));
                if !allowed {
                    self.with_limits(|l| l.dropped("drift", 1));
                    return Ok(None);
                }
                let (added, cut_added) = drift_keys(&drift.added);
                let (removed, cut_removed) = drift_keys(&drift.removed);
                if cut_added
                    || cut_removed
                    || drift.user.len() > MAX_USER
                    || drift.detected_at.len() > MAX_TIME
                {
                    Refusal::Truncated.count();
                }
                let record = DriftRecord {
                    user: bounded(&drift.user, MAX_USER),
                    added,
                    removed,
                    detected_at: bounded(&drift.detected_at, MAX_TIME),
                    received_at: now,
                };
                tracing::warn!(host = %self.host, user = %record.user, "agent repaired drift");
                if let Err(e) = store.insert_drift(&self.host, &record).await {
                    tracing::warn!(host = %self.host, error = %e, "cannot record drift");
                }
                Ok(None)
            }
            agent_message::Msg::Rejected(rejected) => {
                if rejected.reason.len() > MAX_REASON {
                    Refusal::Truncated.count();
                }
                let reason = bounded(&rejected.reason, MAX_REASON);
                tracing::error!(host = %self.host, generation = rejected.generation, %reason, "agent rejected a state");
                let _ = store
                    .record_host_error(&self.host, &format!("state rejected: {reason}"), now)
                    .await;
                Ok(None)
            }
            agent_message::Msg::Renew(renew) => {
                if renew.csr_pem.len() > MAX_CSR_BYTES {
                    Refusal::CsrTooLarge.count();
                    return Err(Refused::CsrTooLarge);
                }
                if !self.with_limits(|l| l.renewals.take_one(std::time::Instant::now())) {
                    // Not answered: the agent asks again on its next connection.
                    Refusal::RenewalRate.count();
                    tracing::warn!(host = %self.host, "certificate renewal over the rate ignored");
                    return Ok(None);
                }
                self.renew(&renew.csr_pem).await;
                Ok(None)
            }
            agent_message::Msg::Logins(batch) => {
                if batch.events.len() > MAX_LOGIN_EVENTS {
                    Refusal::TooManyLoginEvents.count();
                    return Err(Refused::TooManyLoginEvents(batch.events.len()));
                }
                self.ingest_logins(batch).await;
                Ok(None)
            }
            agent_message::Msg::Recording(chunk) => {
                self.ingest_recording(chunk).await?;
                Ok(None)
            }
        }
    }

    /// Stores one chunk of a session recording and acknowledges it once stored (or when it was
    /// stored before). Over the host's chunk rate the stream waits: the chunk is not lost, and
    /// the agent, which keeps only a few unacknowledged, slows down. A chunk that cannot be
    /// stored now is not acknowledged: the agent sends it again after a reconnect.
    async fn ingest_recording(
        &self,
        chunk: keyward_common::proto::RecordingChunk,
    ) -> Result<(), Refused> {
        loop {
            let wait = self.with_limits(|l| {
                let now = std::time::Instant::now();
                (!l.recordings.take_one(now)).then(|| {
                    let rate = self.service.limits.recording_chunks;
                    Duration::from_secs_f64(60.0 / f64::from(rate.per_minute.max(1)))
                })
            });
            match wait {
                None => break,
                Some(wait) => {
                    metrics::counter!("keyward_recording_chunks_delayed_total").increment(1);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let (recording_id, seq) = (chunk.recording_id.clone(), chunk.seq);
        let dropped = chunk.dropped_bytes;
        let outcome = self
            .service
            .recordings
            .ingest(&self.service.lifecycle, &self.host, &self.tenant, chunk)
            .await;
        match outcome {
            Err(refused) => {
                Refusal::BadRecording.count();
                Err(refused.into())
            }
            Ok(Err(e)) => {
                tracing::warn!(host = %self.host, error = %e, "cannot store a recording's chunk");
                Ok(())
            }
            Ok(Ok(stored)) => {
                let counted = match stored {
                    Stored::New => "new",
                    Stored::Again => "again",
                };
                if dropped > 0 && matches!(stored, Stored::New) {
                    // The host's spool was full (or tlog left a line unfinished): say so where
                    // operators look, besides the recording's own `droppedBytes`.
                    metrics::counter!("keyward_recording_dropped_bytes_total").increment(dropped);
                    tracing::warn!(
                        host = %self.host,
                        recording = recording_id,
                        bytes = dropped,
                        "a host dropped recording data (its spool was full)"
                    );
                }
                metrics::counter!("keyward_recording_chunks_total", "stored" => counted)
                    .increment(1);
                let ack = ControlMessage {
                    msg: Some(control_message::Msg::RecordingAck(
                        keyward_common::proto::RecordingAck { recording_id, seq },
                    )),
                };
                let _ = self.tx.send(Ok(ack)).await;
                Ok(())
            }
        }
    }

    /// Stores a batch of login events and acknowledges it. A batch that cannot be stored is not
    /// acknowledged: the agent keeps it spooled and sends it again. Events over the host's rate
    /// are dropped and counted, and the batch is still acknowledged up to its last cursor: the
    /// agent would otherwise send it again for ever (see [`super::limits`]).
    async fn ingest_logins(&self, mut batch: keyward_common::proto::LoginBatch) {
        let Some(last) = batch.events.iter().map(|e| e.cursor).max() else {
            return;
        };
        let wanted = u64::try_from(batch.events.len()).unwrap_or(u64::MAX);
        let granted = self.with_limits(|l| {
            let granted = l.logins.take(wanted, std::time::Instant::now());
            l.dropped("login", wanted - granted);
            granted
        });
        batch
            .events
            .truncate(usize::try_from(granted).unwrap_or(usize::MAX));
        if batch.events.is_empty() {
            self.acknowledge_logins(last).await;
            return;
        }
        let lifecycle = &self.service.lifecycle;
        let stored = super::logins::ingest(lifecycle, &self.host, &self.tenant, &batch).await;
        match stored {
            Ok(()) => self.acknowledge_logins(last).await,
            Err(e) => tracing::warn!(host = %self.host, error = %e, "cannot store login events"),
        }
    }

    async fn acknowledge_logins(&self, cursor: u64) {
        let ack = ControlMessage {
            msg: Some(control_message::Msg::LoginAck(
                keyward_common::proto::LoginAck { cursor },
            )),
        };
        let _ = self.tx.send(Ok(ack)).await;
    }

    async fn renew(&self, csr_pem: &str) {
        let lifecycle = &self.service.lifecycle;
        let issued = match self.service.trust.ca.issue_host(
            &self.host,
            csr_pem,
            self.service.certificate_lifetime,
        ) {
            Ok(issued) => issued,
            Err(e) => {
                tracing::warn!(host = %self.host, error = %e, "certificate renewal refused");
                return;
            }
        };
        let host = self.host.clone();
        let serial = issued.serial.clone();
        let not_after = issued.not_after;
        let recorded = lifecycle
            .audited(
                &Caller::system(),
                "host.certificate_renew",
                Some(&self.tenant),
                move |tx| {
                    Box::pin(async move {
                        tx.set_host_certificate(&host, &serial, not_after).await?;
                        Ok((
                            (),
                            json!({ "hostId": host, "serial": serial, "notAfter": iso8601(not_after) }),
                        ))
                    })
                },
            )
            .await;
        if recorded.is_ok() {
            let message = ControlMessage {
                msg: Some(control_message::Msg::Certificate(CertificateMessage {
                    certificate_pem: issued.certificate_pem,
                })),
            };
            let _ = self.tx.send(Ok(message)).await;
        }
    }
}

/// The running agent endpoint.
#[derive(Debug)]
pub struct AgentApi {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// The endpoint's connection limits (`[agent_api]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, handshakes included; more wait in the listen backlog.
    pub max_connections: usize,
    /// A TLS handshake not finished by then is closed.
    pub tls_handshake_timeout: Duration,
}

/// Where the agent endpoint listens, and the names its server certificate carries.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub listen: SocketAddr,
    pub server_names: &'a [String],
    /// Load balancers whose connections start with a PROXY protocol header.
    pub proxy_protocol_from: &'a [ipnet::IpNet],
}

/// Where the endpoint's streams live and where what agents report is announced.
#[derive(Debug, Clone)]
pub struct Streams {
    /// This replica's streams: registered, woken and cut here.
    pub hub: Arc<Hub>,
    /// Hears the agents' recorded reports, so that every replica's hosts view shows them.
    pub changes: Arc<dyn ChangeNotifier>,
    /// The SSH CA's keys every state carries for sshd to trust.
    pub ca_trust: Arc<CaTrust>,
    /// Where session recordings' chunks go.
    pub recordings: Arc<RecordingIngest>,
}

/// Starts the agent endpoint on `endpoint.listen` with a server certificate for its names.
pub async fn start(
    lifecycle: Arc<KeyLifecycle>,
    streams: Streams,
    trust: AgentTrust,
    endpoint: Endpoint<'_>,
    certificate_lifetime: Duration,
    connections: Limits,
    limits: AgentLimits,
) -> Result<AgentApi, AgentApiError> {
    let tls_err = |e: &dyn std::fmt::Display| AgentApiError::Tls(e.to_string());
    let (cert_pem, key_pem) = trust
        .ca
        .issue_server(endpoint.server_names, Duration::from_secs(365 * 86_400))
        .map_err(|e| tls_err(&e))?;
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| tls_err(&e))?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls_err(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            CertificateDer::from_pem_slice(trust.ca.certificate_pem().as_bytes())
                .map_err(|e| tls_err(&e))?,
        )
        .map_err(|e| tls_err(&e))?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| tls_err(&e))?;
    let mut config =
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| tls_err(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listen = endpoint.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| AgentApiError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| AgentApiError::Bind {
            addr: listen,
            source,
        })?;
    let proxies = Arc::new(TrustedProxies::new(
        endpoint.proxy_protocol_from.to_vec(),
        connections.tls_handshake_timeout,
    ));
    let (conn_tx, conn_rx) = mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(
        connections.max_connections.max(1),
    ));
    let accept = async move {
        let mut backoff = AcceptBackoff::new("agent_api");
        loop {
            // A permit first: at the cap, new connections wait in the kernel's backlog instead
            // of taking descriptors.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (mut tcp, peer) = match listener.accept().await {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                // Out of descriptors (EMFILE, ENFILE) or buffers: pause instead of spinning.
                Err(e) => {
                    drop(permit);
                    backoff.failed(&e).await;
                    continue;
                }
            };
            let (acceptor, proxies) = (acceptor.clone(), proxies.clone());
            let conn_tx = conn_tx.clone();
            // Handshakes run concurrently, with a deadline, so a slow client cannot stall others.
            // A load balancer's PROXY header comes first, within the same deadline.
            tokio::spawn(async move {
                let mut client = peer;
                let handshake = tokio::time::timeout(connections.tls_handshake_timeout, async {
                    client = proxies.client(&mut tcp, peer).await.map_err(|e| {
                        metrics::counter!("keyward_proxy_headers_refused_total", "listener" => "agent_api")
                            .increment(1);
                        std::io::Error::other(e)
                    })?;
                    acceptor.accept(tcp).await
                })
                .await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx
                            .send(Ok::<_, std::io::Error>(Guarded::new(tls, permit)))
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%client, %peer, error = %e, "agent TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%client, %peer, "agent TLS handshake timed out"),
                }
            });
        }
    };
    let service = AgentService {
        reports: spawn_report_writer(lifecycle.clone(), streams.changes),
        lifecycle,
        hub: streams.hub,
        ca_trust: streams.ca_trust,
        recordings: streams.recordings,
        trust,
        certificate_lifetime,
        limits,
    };
    // The agents ping every 20 s and redial when the path is dead; the control plane's own ping
    // only has to find streams whose agent vanished silently (power loss, a dropped route), so
    // that the hub stops calling them connected: every 60 s is enough, and at 10,000 streams it
    // is a sixth of the wake-ups of a 10 s ping (BENCHMARKS.md, streams).
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(AgentHubServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .serve_with_incoming(ReceiverStream::new(conn_rx));
    let task = tokio::spawn(async move {
        tokio::select! {
            () = accept => {},
            result = server => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "agent endpoint failed");
                }
            }
        }
    });
    tracing::info!(%addr, "agent endpoint listening (mTLS)");
    Ok(AgentApi { addr, task })
}
