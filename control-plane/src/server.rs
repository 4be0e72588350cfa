//! Starting and stopping the control plane.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper_util::rt::TokioTimer;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;

use crate::agents::ca_trust::CaTrust;
use crate::agents::hub::Hub;
use crate::agents::presence::{PresenceContext, ReplicaPresence};
use crate::agents::{AgentTrust, grpc};
use crate::api::hosts::AgentSettings;
use crate::api::throttle::EnrollThrottle;
use crate::api::{AppState, router};
use crate::audit_export::AuditExport;
use crate::audit_head::AuditHeadSigner;
use crate::backup::VaultBackups;
use crate::caller::Caller;
use crate::changes::ChangeNotifier;
use crate::changes::postgres::ReplicaChanges;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::conns::RestAcceptor;
use crate::lifecycle::{KeyLifecycle, SshCertificates};
use crate::proxy_protocol::TrustedProxies;
use crate::rotation::{BulkRotations, RotationScheduler};
use crate::store::{Role, Store, StoreError, TokenRecord, hash_token};
use crate::tokens::new_token;
use crate::vault::{AuditHeadVault, CertificateAuthority, SecretStore, VaultError, VaultStore};

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("agents' trust material: {0}")]
    AgentTrust(#[from] crate::agents::AgentTrustError),
    #[error(transparent)]
    AgentApi(#[from] crate::agents::grpc::AgentApiError),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot write the bootstrap admin token to {path}: {source}")]
    Bootstrap {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    AuditExport(#[from] crate::audit_export::SetupError),
    #[error(transparent)]
    Recordings(#[from] crate::recordings::ArchiveError),
    #[error(transparent)]
    Oidc(#[from] crate::oidc::OidcError),
}

/// A running control plane.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    pub tls: bool,
    /// The agents' mTLS gRPC endpoint.
    pub agent_addr: SocketAddr,
    pub agent_url: String,
    /// This process's id among the replicas (`replicas.replica_id` on PostgreSQL).
    pub replica_id: String,
    pub lifecycle: Arc<KeyLifecycle>,
    /// Bulk rotation jobs.
    pub rotations: Arc<BulkRotations>,
    /// Vault snapshots (`[backup]`).
    pub backups: Arc<VaultBackups>,
    /// Audit export's sinks (`[audit_export]`): their leases are given up at shutdown.
    pub audit_export: Arc<AuditExport>,
    /// This replica's agent streams, ended at shutdown.
    hub: Arc<Hub>,
    /// On PostgreSQL: which hosts' streams this replica holds, for the others.
    presence: Option<ReplicaPresence>,
    handle: axum_server::Handle,
    server: JoinHandle<Result<(), std::io::Error>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningServer {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, lets requests in flight finish (up to 10 s) and closes the database.
    pub async fn shutdown(self) -> Result<(), StartError> {
        self.handle
            .graceful_shutdown(Some(std::time::Duration::from_secs(10)));
        for task in &self.background {
            task.abort();
        }
        // Aborting the agent endpoint stops its accept loop; the streams it holds end here.
        self.hub.disconnect_all();
        if let Some(presence) = self.presence {
            presence.stop().await;
        }
        self.rotations.shutdown().await;
        self.audit_export.release().await;
        let result = self.server.await;
        self.lifecycle.store().close().await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StartError::Serve(e)),
            Err(e) => Err(StartError::Serve(std::io::Error::other(e))),
        }
    }

    /// Runs until the server stops on its own (it does not, short of a listener failure).
    pub async fn wait(self) -> Result<(), StartError> {
        match self.server.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StartError::Serve(e)),
            Err(e) => Err(StartError::Serve(std::io::Error::other(e))),
        }
    }

    /// Handle to stop the server from another task (signals).
    pub fn handle(&self) -> axum_server::Handle {
        self.handle.clone()
    }
}

/// The process-wide Prometheus recorder; installed once, shared by every server in the process.
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}

/// Starts the control plane with the real Vault and clock.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    let vault = VaultStore::connect(&config.vault).await?;
    let keepalive = tokio::spawn(vault.clone().keep_token_alive());
    let audit_head = config.audit_signing.key.as_ref().map(|key| {
        Arc::new(vault.audit_head_key(&config.audit_signing.transit_mount, key))
            as Arc<dyn AuditHeadVault>
    });
    let mut server = start_with(
        config,
        vault.clone(),
        vault,
        audit_head,
        Arc::new(SystemClock),
    )
    .await?;
    server.background.push(keepalive);
    Ok(server)
}

/// Starts the control plane over the given Vault (its secrets, its SSH certificate authority and,
/// where the audit head is signed, the transit key and checkpoint) and clock.
pub async fn start_with(
    config: Config,
    vault: Arc<dyn SecretStore>,
    ssh_ca: Arc<dyn CertificateAuthority>,
    audit_head: Option<Arc<dyn AuditHeadVault>>,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state_dir = &config.server.state_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| StartError::StateDir {
            path: state_dir.display().to_string(),
            source,
        })?;
    let store = Store::connect(&config.database_url(), config.database.max_connections).await?;
    let trust = AgentTrust::load_or_create(vault.as_ref()).await?;
    // The hub is this replica's: the domain announces its changes to it through the
    // change-notification seam, the transport registers agents' streams and live views with it.
    // Replicas on one PostgreSQL database also tell each other (`changes::postgres`).
    let hub = Arc::new(Hub::default());
    // This process's name among the replicas (a new one at each start).
    let replica = format!("{:016x}", rand::random::<u64>());
    let mut background = Vec::new();
    let changes: Arc<dyn ChangeNotifier> =
        match ReplicaChanges::start(&store, &replica, hub.clone()) {
            Some((changes, tasks)) => {
                background.extend(tasks);
                changes
            }
            None => hub.clone(),
        };
    let presence = ReplicaPresence::start(
        replica.clone(),
        PresenceContext {
            store: store.clone(),
            clock: clock.clone(),
            hub: hub.clone(),
            changes: changes.clone(),
            heartbeat: config.server.replica_heartbeat,
        },
    )
    .await?;
    let lifecycle = Arc::new(
        KeyLifecycle::new(vault, store, clock, config.keys.clone(), changes.clone())
            .with_key_pool(config.rotation.key_pool_size)
            .with_ssh_certificates(SshCertificates {
                authority: ssh_ca.clone(),
                role: config.vault.ssh_user_role.clone(),
                default_validity: config.certificates.default_validity,
                max_validity: config.certificates.max_validity,
                max_valid_per_tenant: config.certificates.max_valid_per_tenant,
                access: config.access.clone(),
            })
            .with_bastion(config.bastion.clone())
            .with_download(config.download.clone())
            .with_mfa(config.mfa.clone())
            .with_offboarding(config.offboarding.clone()),
    );
    background.push(tokio::spawn(lifecycle.clone().fill_key_pool()));
    background.push(tokio::spawn(lifecycle.clone().sweep_grants()));
    background.push(tokio::spawn(lifecycle.clone().run_offboardings()));
    bootstrap_admin_token(&lifecycle, &config.bootstrap_token_path()).await?;
    let rotations = Arc::new(BulkRotations::new(lifecycle.clone(), &config.rotation));
    rotations.recover().await?;
    background.push(tokio::spawn(rotations.clone().join_jobs()));
    let backups = Arc::new(VaultBackups::new(lifecycle.clone(), config.backup.clone()));
    if config.rotation.scheduler {
        let scheduler = RotationScheduler::new(lifecycle.clone(), config.rotation.clone());
        background.push(tokio::spawn(Arc::new(scheduler).run()));
    }
    if backups.configured() {
        background.push(tokio::spawn(backups.clone().run()));
    }
    let audit_export = Arc::new(AuditExport::new(
        &config.audit_export,
        lifecycle.store().clone(),
        lifecycle.clock().clone(),
        &replica,
    )?);
    background.extend(audit_export.spawn());
    let audit_head = audit_head.map(|vault| {
        Arc::new(AuditHeadSigner::new(
            lifecycle.clone(),
            vault,
            config.audit_signing.clone(),
        ))
    });
    if let Some(signer) = &audit_head {
        background.push(tokio::spawn(signer.clone().run()));
    }
    background.push(tokio::spawn(crate::retention::run(
        lifecycle.clone(),
        config.retention.clone(),
    )));
    let recordings = crate::recordings::RecordingArchive::from_config(
        &config.recordings,
        &config.server.state_dir,
    )?;
    background.push(tokio::spawn(crate::recordings::retention::run(
        lifecycle.clone(),
        recordings.clone(),
        config.recordings.retention,
    )));

    let agent_config = &config.agent_api;
    let server_names = if agent_config.server_names.is_empty() {
        vec![match &agent_config.url {
            Some(url) => reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
                .ok_or_else(|| StartError::Tls(format!("agent_api.url {url:?} has no host")))?,
            None => agent_config.listen.ip().to_string(),
        }]
    } else {
        agent_config.server_names.clone()
    };
    // The first states already carry the CA's keys; then every replica follows them.
    let ca_trust = Arc::new(CaTrust::default());
    ca_trust.start(ssh_ca.as_ref(), &lifecycle).await;
    background.push(tokio::spawn(ca_trust.clone().run(
        ssh_ca,
        hub.clone(),
        lifecycle.clone(),
        config.vault.ssh_ca_refresh,
    )));
    let agent_api = grpc::start(
        lifecycle.clone(),
        grpc::Streams {
            hub: hub.clone(),
            changes,
            ca_trust,
            recordings: Arc::new(crate::agents::recordings::RecordingIngest {
                archive: recordings.clone(),
                max_bytes: config.recordings.max_bytes,
                max_open_per_host: config.recordings.max_open_per_host,
            }),
        },
        trust.clone(),
        grpc::Endpoint {
            listen: agent_config.listen,
            server_names: &server_names,
            proxy_protocol_from: &agent_config.proxy_protocol_from,
        },
        agent_config.certificate_lifetime,
        grpc::Limits {
            max_connections: agent_config.max_connections,
            tls_handshake_timeout: agent_config.tls_handshake_timeout,
        },
        crate::agents::limits::AgentLimits::from_config(agent_config)
            .with_recordings(&config.recordings),
    )
    .await?;
    let agent_url = agent_config
        .url
        .clone()
        .unwrap_or_else(|| format!("https://{}", agent_api.addr));

    let enroll_throttle = Arc::new(EnrollThrottle::new(
        config.server.enroll_failures_per_minute,
    ));
    background.push(tokio::spawn(
        enroll_throttle
            .clone()
            .audit_every_minute(lifecycle.clone()),
    ));
    let oidc = crate::oidc::RelyingParty::new(&config.oidc)?.map(Arc::new);
    let state = AppState {
        oidc,
        lifecycle: lifecycle.clone(),
        hub: hub.clone(),
        store: lifecycle.store().clone(),
        rotations: rotations.clone(),
        backups: backups.clone(),
        audit_export: audit_export.clone(),
        audit_head,
        hosts_feed: Arc::default(),
        recordings,
        replica_heartbeat: config.server.replica_heartbeat,
        metrics: metrics_handle(),
        request_timeout: config.server.request_timeout,
        vault_mount: config.vault.mount.clone(),
        tls: config.server.tls_cert.is_some() && config.server.tls_key.is_some(),
        enroll_throttle: enroll_throttle.clone(),
        agents: Arc::new(AgentSettings {
            trust,
            url: agent_url.clone(),
            certificate_lifetime: agent_config.certificate_lifetime,
            enrollment_ttl: agent_config.enrollment_ttl,
        }),
    };
    let app = router(state, config.server.max_body_bytes)
        .into_make_service_with_connect_info::<SocketAddr>();
    let listener =
        std::net::TcpListener::bind(config.server.listen).map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let handle = axum_server::Handle::new();
    let limits = &config.server;
    let proxies = TrustedProxies::new(
        limits.proxy_protocol_from.clone(),
        limits.header_read_timeout,
    );
    let acceptor = RestAcceptor::new(limits.max_connections, limits.idle_timeout, proxies);
    let (server, tls) = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = RustlsConfig::from_config(Arc::new(tls_config(cert, key)?));
            let acceptor = RustlsAcceptor::new(tls)
                .handshake_timeout(limits.tls_handshake_timeout)
                .acceptor(acceptor);
            let mut server = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(handle.clone());
            http_limits(server.http_builder(), limits);
            (tokio::spawn(server.serve(app)), true)
        }
        _ => {
            let mut server = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(handle.clone());
            http_limits(server.http_builder(), limits);
            (tokio::spawn(server.serve(app)), false)
        }
    };
    tracing::info!(%addr, tls, "keyward-server listening");
    Ok(RunningServer {
        addr,
        tls,
        agent_addr: agent_api.addr,
        agent_url,
        replica_id: replica,
        lifecycle,
        handle,
        server,
        rotations,
        backups,
        audit_export,
        hub,
        presence,
        background: {
            background.push(agent_api.task);
            background
        },
    })
}

/// HTTP/1 headers (and the next request on a kept-alive connection) within
/// `header_read_timeout`; HTTP/2 peers that stop answering pings are dropped.
fn http_limits(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &crate::config::ServerConfig,
) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(100);
}

/// TLS 1.3 only, with the configured certificate chain and key.
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, StartError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartError::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("{}: {e}", key.display())))?;
    let mut config =
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// On first start (no active admin token), makes one and writes it to a 0600 file. The token is
/// never logged; the log says where the file is.
async fn bootstrap_admin_token(lifecycle: &KeyLifecycle, path: &Path) -> Result<(), StartError> {
    if lifecycle.store().has_active_admin_token().await? {
        return Ok(());
    }
    let (token_id, token) = new_token();
    let record = TokenRecord {
        token_id,
        role: Role::Admin,
        label: "bootstrap".into(),
        created_at: lifecycle.now(),
        revoked_at: None,
    };
    let write_err = |source| StartError::Bootstrap {
        path: path.display().to_string(),
        source,
    };
    // Written to a fresh file and renamed, so the token never sits in a file with wider modes.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(format!("{}\n", token.as_str()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_err)?;
    let hash = hash_token(&token);
    let stored = record.clone();
    lifecycle
        .audited(&Caller::system(), "token.issue", None, move |tx| {
            Box::pin(async move {
                tx.insert_token(&stored, &hash).await?;
                let detail = serde_json::json!({ "tokenId": stored.token_id, "role": "admin", "label": "bootstrap" });
                Ok(((), detail))
            })
        })
        .await
        .map_err(|e| StartError::Bootstrap {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    std::fs::rename(&tmp, path).map_err(write_err)?;
    tracing::warn!(path = %path.display(), token_id = %record.token_id, "no admin token existed: wrote a bootstrap admin token");
    Ok(())
}
