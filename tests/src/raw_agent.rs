//! A bare protocol client: enrolls with a CSR and speaks the agent stream directly, to test the
//! control plane's side of the protocol message by message.

use std::sync::Arc;
use std::time::Duration;

use keyward_common::proto::agent_hub_client::AgentHubClient;
use keyward_common::proto::{AgentMessage, ControlMessage, Hello, agent_message};
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::ControlPlane;

/// An enrolled host identity: its id, its own key and the enrollment answer.
#[derive(Debug)]
pub struct RawIdentity {
    pub host_id: String,
    pub key: KeyPair,
    pub enrolled: Value,
}

impl RawIdentity {
    /// Registers a host for `tenant` and enrolls it with a fresh key.
    pub async fn enroll(cp: &ControlPlane, tenant: &str) -> Self {
        Self::enroll_with(cp, tenant, KeyPair::generate().unwrap()).await
    }

    /// Registers a host for `tenant` and enrolls it with `key` (any algorithm rcgen signs with).
    pub async fn enroll_with(cp: &ControlPlane, tenant: &str, key: KeyPair) -> Self {
        let registered = cp
            .admin_post("/api/v1/admin/hosts", json!({ "tenantId": tenant }))
            .await
            .json();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let reply = cp
            .request(
                reqwest::Method::POST,
                "/api/v1/agent/enroll",
                None,
                Some(json!({ "token": registered["enrollmentToken"], "csrPem": csr })),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        Self {
            host_id: registered["hostId"].as_str().unwrap().to_owned(),
            key,
            enrolled: reply.json(),
        }
    }

    pub fn ca_pem(&self) -> &str {
        self.enrolled["caCertificatePem"].as_str().unwrap()
    }

    pub fn certificate_pem(&self) -> &str {
        self.enrolled["certificatePem"].as_str().unwrap()
    }

    /// A TLS client configuration presenting `cert_pem` with this identity's key.
    pub fn tls_with(&self, cert_pem: &str) -> Arc<rustls::ClientConfig> {
        keyward_agent::tls::client_config(self.ca_pem(), cert_pem, &self.key.serialize_pem())
            .unwrap()
    }

    /// Opens a stream with the current certificate and sends Hello.
    pub async fn open(&self, cp: &ControlPlane) -> RawStream {
        self.open_at(&cp.server().agent_url).await
    }

    /// As [`RawIdentity::open`], to the endpoint at `url` (a load balancer's, say).
    pub async fn open_at(&self, url: &str) -> RawStream {
        let mut client: AgentHubClient<_> =
            keyward_agent::client::connect(url, self.tls_with(self.certificate_pem()))
                .await
                .unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello::default())),
        })
        .await
        .unwrap();
        let inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        RawStream { tx, inbound }
    }
}

/// A live stream: send agent messages, receive control messages.
#[derive(Debug)]
pub struct RawStream {
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<ControlMessage>,
}

impl RawStream {
    pub async fn send(&self, msg: agent_message::Msg) {
        self.tx.send(AgentMessage { msg: Some(msg) }).await.unwrap();
    }

    /// How the stream ends, within 10 s (other control messages are skipped): the status the
    /// control plane ended it with, or `None` when it just closed.
    pub async fn ended(&mut self) -> Option<tonic::Status> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.inbound.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        })
        .await
        .expect("the stream to end within 10 s")
    }

    /// The next control message that `pick` accepts, within 10 s.
    pub async fn next_matching<T>(
        &mut self,
        mut pick: impl FnMut(ControlMessage) -> Option<T>,
    ) -> T {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let message = self.inbound.message().await.unwrap().expect("stream open");
                if let Some(found) = pick(message) {
                    return found;
                }
            }
        })
        .await
        .expect("the expected message within 10 s")
    }
}
