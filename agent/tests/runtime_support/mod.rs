//! Shared parts of the runtime tests: a PKI made with rcgen, an enrolled state directory, a fake
//! applier, and a small in-test gRPC hub on 127.0.0.1 behind rustls with client certificates
//! required (the control plane's side of the contract, reduced to what the agent needs).

// Test code: a failed unwrap is a failed test; not every test file uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::Datelike;
use ed25519_dalek::SigningKey;
use keyward_agent::apply::{Applier, ApplyError, UserApplied};
use keyward_agent::state_dir::{EnrollmentInfo, Identity, StateDir};
use keyward_agent::writer::SshdFiles;
use keyward_agent::{AgentConfig, AgentStatus, RuntimeDeps, UserConfig, UserMode};
use keyward_common::UnixUser;
use keyward_common::proto::agent_hub_server::{AgentHub, AgentHubServer};
use keyward_common::proto::{
    AgentMessage, ControlMessage, DesiredState, Key, KeyKind, ManagedUser, Mode, SignedState,
    agent_message, control_message,
};
use keyward_common::signing::sign_state;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, date_time_ymd};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

pub const HOST_ID: &str = "host-0001";
/// The bound of every wait in these tests (generous: the machine is shared).
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits for `fut` at most [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Certificate lifetimes, in whole years around the current one (rcgen takes calendar dates).
#[derive(Debug, Clone, Copy)]
pub enum Lifetime {
    /// Two thirds are long gone: the agent must ask for a renewal at once.
    RenewalDue,
    /// Renewal is years away.
    Fresh,
}

/// The control plane's agent CA (which also issues the gRPC server's certificate).
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test agent CA");
        let year = chrono::Utc::now().year();
        params.not_before = date_time_ymd(year - 5, 1, 1);
        params.not_after = date_time_ymd(year + 20, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate for `key`.
    pub fn issue(&self, key: &KeyPair, lifetime: Lifetime) -> String {
        let year = chrono::Utc::now().year();
        let mut params = CertificateParams::new(vec![HOST_ID.to_owned()]).unwrap();
        let (from, to) = match lifetime {
            Lifetime::RenewalDue => (year - 3, year + 1),
            Lifetime::Fresh => (year - 1, year + 10),
        };
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
        params.signed_by(key, &self.issuer).unwrap().pem()
    }

    /// What the control plane's CA does with an enrollment CSR.
    pub fn sign_csr(&self, csr_pem: &str) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        csr.signed_by(&self.issuer).unwrap().pem()
    }

    /// The gRPC server's certificate and key for 127.0.0.1.
    pub fn server_identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }
}

/// An enrolled agent's state directory, without the network.
pub struct Enrolled {
    pub dir: tempfile::TempDir,
    pub host_keys: tempfile::TempDir,
    pub signing: SigningKey,
    pub key: KeyPair,
}

impl Enrolled {
    pub fn new(pki: &Pki, grpc_url: &str, lifetime: Lifetime) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let key = KeyPair::generate().unwrap();
        let identity = Identity {
            info: EnrollmentInfo {
                host_id: HOST_ID.into(),
                tenant_id: "t1".into(),
                grpc_url: grpc_url.into(),
            },
            key_pem: key.serialize_pem().into(),
            cert_pem: pki.issue(&key, lifetime),
            ca_pem: pki.ca_pem.clone(),
            signing_key: signing.verifying_key(),
        };
        StateDir::new(dir.path()).store_identity(&identity).unwrap();
        let host_keys = tempfile::tempdir().unwrap();
        std::fs::write(
            host_keys.path().join("ssh_host_ed25519_key.pub"),
            format!("{HOST_KEY} root@vps\n"),
        )
        .unwrap();
        Self {
            dir,
            host_keys,
            signing,
            key,
        }
    }

    pub fn state_dir(&self) -> StateDir {
        StateDir::new(self.dir.path())
    }

    /// A configuration managing `kwadmin` (exclusive) and `tenant` (preserve).
    pub fn config(&self) -> AgentConfig {
        let mut c = AgentConfig::new(
            self.dir.path(),
            vec![
                UserConfig {
                    name: "kwadmin".parse().unwrap(),
                    mode: UserMode::Exclusive,
                },
                UserConfig {
                    name: "tenant".parse().unwrap(),
                    mode: UserMode::Preserve,
                },
            ],
        );
        c.host_key_dir = self.host_keys.path().to_owned();
        c
    }

    pub fn sign(&self, state: &DesiredState) -> SignedState {
        sign_state(&self.signing, state)
    }
}

pub const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
pub const FP_A: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";

/// A desired state for `users` (name, session epoch), each with one key whose fingerprint
/// field is [`FP_A`] (the fake applier does not parse keys).
pub fn state(generation: u64, users: &[(&str, u64)]) -> DesiredState {
    DesiredState {
        host_id: HOST_ID.into(),
        generation,
        issued_at: "2026-01-01T00:00:00Z".into(),
        users: users
            .iter()
            .map(|(user, epoch)| ManagedUser {
                user: (*user).into(),
                mode: Mode::Preserve as i32,
                keys: vec![Key {
                    kind: KeyKind::Tenant as i32,
                    generation: 1,
                    public_key: HOST_KEY.into(),
                    fingerprint: FP_A.into(),
                    expires_at: String::new(),
                    verify_required: false,
                }],
                denied_fingerprints: vec![],
                session_epoch: *epoch,
                revoked: false,
                principals: vec![],
                revoked_certificate_ids: vec![],
                jump_principals: vec![],
                recording: None,
            })
            .collect(),
        sshd: None,
    }
}

/// What the fake applier was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Apply { user: String, mode: UserMode },
    EndSessions { user: String },
    SshdFiles(Box<SshdFiles>),
}

/// Records calls; answers with the fingerprints the state announced, and with `drift` (added,
/// removed) when set.
#[derive(Debug, Default)]
pub struct FakeApplier {
    pub calls: Mutex<Vec<Call>>,
    pub drift: Mutex<Option<(Vec<String>, Vec<String>)>>,
    /// How long ending sessions takes (a tenant stalling `/proc`), and how many finished.
    pub stall: Mutex<Option<std::time::Duration>>,
    pub ended: std::sync::atomic::AtomicUsize,
}

impl FakeApplier {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Applier for FakeApplier {
    fn apply_user(
        &self,
        user: &UnixUser,
        mode: UserMode,
        desired: &ManagedUser,
        _recorder: Option<&str>,
    ) -> Result<UserApplied, ApplyError> {
        self.calls.lock().unwrap().push(Call::Apply {
            user: user.to_string(),
            mode,
        });
        let (added, removed) = self.drift.lock().unwrap().clone().unwrap_or_default();
        Ok(UserApplied {
            changed: true,
            fingerprints: desired.keys.iter().map(|k| k.fingerprint.clone()).collect(),
            added,
            removed,
            ..UserApplied::default()
        })
    }

    fn end_sessions(&self, user: &UnixUser) -> Result<u32, ApplyError> {
        self.calls.lock().unwrap().push(Call::EndSessions {
            user: user.to_string(),
        });
        let stall = *self.stall.lock().unwrap();
        if let Some(stall) = stall {
            std::thread::sleep(stall);
        }
        self.ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(2)
    }

    fn apply_sshd_files(&self, files: &SshdFiles) -> Result<bool, ApplyError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::SshdFiles(Box::new(files.clone())));
        Ok(true)
    }
}

/// A running agent.
pub struct Agent {
    pub fake: Arc<FakeApplier>,
    pub status: watch::Receiver<AgentStatus>,
    pub watch_tx: mpsc::Sender<UnixUser>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), keyward_agent::RuntimeError>>>,
}

impl Agent {
    pub fn start(
        config: AgentConfig,
        notifier: Option<keyward_agent::sd_notify::Notifier>,
    ) -> Self {
        let fake = Arc::new(FakeApplier::default());
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let (watch_tx, watch_rx) = mpsc::channel(8);
        let (stop, stopped) = oneshot::channel::<()>();
        let deps = RuntimeDeps {
            applier: Arc::clone(&fake) as Arc<dyn Applier>,
            watch_events: Some(watch_rx),
            notifier,
            status: Some(status_tx),
        };
        let task = tokio::spawn(keyward_agent::run_with(config, deps, async move {
            let _ = stopped.await;
        }));
        Self {
            fake,
            status,
            watch_tx,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until the status satisfies `f`.
    pub async fn wait_status(&mut self, what: &str, f: impl Fn(&AgentStatus) -> bool) {
        within(what, self.status.wait_for(|s| f(s)))
            .await
            .expect("the agent stopped");
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        within("the agent to stop", self.task.take().unwrap())
            .await
            .unwrap()
            .unwrap();
    }
}

/// An in-process agent with the real writer and session killer ([`SystemApplier`] with its
/// defaults), until `stop` is sent.
pub fn spawn_system_agent(
    config: AgentConfig,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), keyward_agent::RuntimeError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let deps = RuntimeDeps {
        applier: Arc::new(keyward_agent::apply::SystemApplier::default()),
        watch_events: None,
        notifier: None,
        status: None,
    };
    let task = tokio::spawn(keyward_agent::run_with(config, deps, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// One session as the hub sees it.
pub struct Session {
    pub from_agent: mpsc::UnboundedReceiver<AgentMessage>,
    pub to_agent: mpsc::UnboundedSender<Result<ControlMessage, Status>>,
}

impl Session {
    pub async fn recv(&mut self) -> agent_message::Msg {
        within("a message from the agent", self.from_agent.recv())
            .await
            .expect("the agent closed the stream")
            .msg
            .expect("an empty message")
    }

    pub fn send_state(&self, signed: SignedState) {
        self.to_agent
            .send(Ok(ControlMessage {
                msg: Some(control_message::Msg::State(signed)),
            }))
            .unwrap();
    }

    pub fn send_certificate(&self, certificate_pem: String) {
        self.to_agent
            .send(Ok(ControlMessage {
                msg: Some(control_message::Msg::Certificate(
                    keyward_common::proto::Certificate { certificate_pem },
                )),
            }))
            .unwrap();
    }
}

struct Hub {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl AgentHub for Hub {
    type SessionStream =
        Pin<Box<dyn futures::Stream<Item = Result<ControlMessage, Status>> + Send + 'static>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (from_tx, from_agent) = mpsc::unbounded_channel();
        let (to_agent, to_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if from_tx.send(m).is_err() {
                    break;
                }
            }
        });
        let _ = self.sessions.send(Session {
            from_agent,
            to_agent,
        });
        let out =
            futures::stream::unfold(
                to_rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }
}

/// A TLS connection accepted by the hub (tonic's `Connected` for tokio-rustls needs a TLS
/// feature the workspace does not enable).
struct Conn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The in-test hub: TLS 1.3 only, client certificates from the agent CA required.
pub struct TestHub {
    pub url: String,
    pub sessions: mpsc::UnboundedReceiver<Session>,
    /// The client certificate (DER) of every accepted connection, in order.
    pub peers: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl TestHub {
    pub async fn start(pki: &Pki) -> Self {
        Self::start_on(pki, "127.0.0.1:0".parse().unwrap()).await
    }

    /// The hub on a given address (to come up where an agent is already trying to connect).
    pub async fn start_on(pki: &Pki, addr: std::net::SocketAddr) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let (chain, key) = pki.server_identity();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind(addr).await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (conn_tx, conn_rx) = mpsc::unbounded_channel::<Result<Conn, io::Error>>();
        let (peer_tx, peers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let conn_tx = conn_tx.clone();
                let peer_tx = peer_tx.clone();
                tokio::spawn(async move {
                    // A failed handshake (wrong CA, no certificate) just drops the connection.
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        if let Some(cert) =
                            tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                        {
                            let _ = peer_tx.send(cert.to_vec());
                        }
                        let _ = conn_tx.send(Ok(Conn(tls)));
                    }
                });
            }
        });
        let incoming =
            futures::stream::unfold(
                conn_rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        let (session_tx, sessions) = mpsc::unbounded_channel();
        let hub = Hub {
            sessions: session_tx,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentHubServer::new(hub))
                .serve_with_incoming(incoming),
        );
        Self {
            url,
            sessions,
            peers,
        }
    }

    pub async fn session(&mut self) -> Session {
        within("the agent to open a session", self.sessions.recv())
            .await
            .expect("the hub stopped")
    }
}
