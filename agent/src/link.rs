//! The agent's side of one gRPC session, as a small state machine the runtime's event loop
//! drives: waiting to reconnect, connecting, or up.
//!
//! Every future the phases wait on lives inside [`Link`], so [`Link::next`] can be dropped by the
//! runtime's `select!` (when a file event or the watchdog wins) and called again without losing a
//! half-done connection attempt or a half-read message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use keyward_common::proto::{AgentMessage, ControlMessage};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep, sleep_until};
use tonic::Streaming;

use crate::client::{self, ClientError};
use crate::tls::TlsError;

/// Messages queued towards the control plane before the stream counts as stuck.
const OUTBOUND_CAPACITY: usize = 64;

/// Why one connection attempt failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("opening the session: {0}")]
    Session(tonic::Status),
}

type Connecting = Pin<Box<dyn Future<Output = Result<Box<Stream>, LinkError>> + Send>>;

/// The connection to the control plane.
pub(crate) enum Link {
    Waiting(Pin<Box<Sleep>>),
    Connecting(Connecting),
    Up(Box<Stream>),
}

/// An open session.
pub(crate) struct Stream {
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<ControlMessage>,
    /// When the session opened (a long-lived one resets the backoff).
    pub(crate) since: Instant,
    /// When to ask for a new certificate; `None` once asked on this session.
    pub(crate) renew_at: Option<Instant>,
}

/// What the current phase produced.
pub(crate) enum LinkEvent {
    Retry,
    Opened(Result<Box<Stream>, LinkError>),
    Message(Result<Option<ControlMessage>, tonic::Status>),
    Renew,
}

impl Link {
    /// A pause before the next attempt.
    pub(crate) fn waiting(delay: std::time::Duration) -> Self {
        Link::Waiting(Box::pin(tokio::time::sleep(delay)))
    }

    /// Dials `url` and opens the session with `hello` as the first message.
    pub(crate) fn connecting(
        url: String,
        tls: Result<Arc<rustls::ClientConfig>, TlsError>,
        hello: AgentMessage,
        renew_at: Option<Instant>,
    ) -> Self {
        Link::Connecting(Box::pin(async move {
            let mut client = client::connect(&url, tls?).await?;
            let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
            // Queued before the call: the control plane may wait for Hello before it answers.
            let _ = tx.try_send(hello);
            let inbound = client
                .session(outbound(rx))
                .await
                .map_err(LinkError::Session)?
                .into_inner();
            Ok(Box::new(Stream {
                tx,
                inbound,
                since: Instant::now(),
                renew_at,
            }))
        }))
    }

    /// Waits for whatever the current phase waits for.
    pub(crate) async fn next(&mut self) -> LinkEvent {
        match self {
            Link::Waiting(sleep) => {
                sleep.as_mut().await;
                LinkEvent::Retry
            }
            Link::Connecting(connect) => LinkEvent::Opened(connect.as_mut().await),
            Link::Up(stream) => {
                let renew_at = stream.renew_at;
                let renew = async move {
                    match renew_at {
                        Some(at) => sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    message = stream.inbound.message() => LinkEvent::Message(message),
                    () = renew => LinkEvent::Renew,
                }
            }
        }
    }

    /// Queues a message on an open session. `false` when there is none or it is stuck (the
    /// control plane re-sends states and the agent re-reports on reconnect, so a lost message
    /// costs a reconnect, not correctness).
    pub(crate) fn send(&mut self, message: AgentMessage) -> bool {
        match self {
            Link::Up(stream) => stream.tx.try_send(message).is_ok(),
            _ => false,
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        matches!(self, Link::Up(_))
    }
}

/// The outbound half of the session: whatever the runtime queues, in order.
fn outbound(
    rx: mpsc::Receiver<AgentMessage>,
) -> impl futures::Stream<Item = AgentMessage> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}
