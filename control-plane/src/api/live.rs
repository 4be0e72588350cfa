//! Live views (Server-Sent Events) that stay bounded and end when their credential does.
//!
//! Every stream is a task that produces events into a small bounded channel; the response body
//! reads that channel. A reader that does not keep up fills the channel and the stream ends (the
//! client reconnects and starts again from a snapshot): nothing is buffered without bound.
//!
//! The task also follows the revocation feed ([`RevocationFeed`]): revoking the stream's token,
//! its tenant or the host it follows ends it at once. As a backstop (a lagging feed, a
//! revocation made on another replica before the feed spans replicas) the token is looked up
//! again every [`RECHECK`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use keyward_common::{HostId, TenantId};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::agents::hub::{RevocationFeed, Revoked};
use crate::caller::Caller;
use crate::lifecycle::KeyLifecycle;
use crate::store::Role;

/// Events a stream may have waiting for its reader; one more and the stream ends.
pub const STREAM_BUFFER: usize = 16;
/// How often a live stream looks its token up again, whatever the feed says.
pub const RECHECK: Duration = Duration::from_secs(5);

/// Where a stream's producer puts its events.
#[derive(Debug)]
pub struct Sink(mpsc::Sender<Event>);

/// The reader did not keep up (or is gone): the producer must stop.
#[derive(Debug)]
pub struct Overflow;

impl Sink {
    /// Queues an event; fails at once, without waiting, when the reader's buffer is full.
    pub fn send(&self, event: Event) -> Result<(), Overflow> {
        self.0.try_send(event).map_err(|e| {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                metrics::counter!("keyward_live_streams_dropped_total").increment(1);
                tracing::info!("a live stream's reader fell behind: stream ended");
            }
            Overflow
        })
    }
}

/// What a stream was opened with, and for: any of these revoked ends it.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub token_id: Option<String>,
    pub tenant: Option<TenantId>,
    pub host: Option<HostId>,
}

impl Scope {
    pub fn of(caller: &Caller) -> Self {
        Self {
            token_id: caller.token_id.clone(),
            tenant: match &caller.role {
                Some(Role::Tenant(t)) => Some(t.clone()),
                _ => None,
            },
            host: None,
        }
    }

    fn ended_by(&self, revoked: &Revoked) -> bool {
        match revoked {
            Revoked::Token(id) => self.token_id.as_ref() == Some(id),
            Revoked::Tenant(t) => self.tenant.as_ref() == Some(t),
            Revoked::Host(h) => self.host.as_ref() == Some(h),
            Revoked::Unknown => false,
        }
    }
}

/// Whether the stream's token is still valid. A database that cannot answer ends the stream
/// too: the client reconnects and is authenticated again.
async fn still_valid(lifecycle: &KeyLifecycle, scope: &Scope) -> bool {
    let Some(token_id) = &scope.token_id else {
        return true;
    };
    match lifecycle.store().token(token_id).await {
        Ok(Some(record)) => record.revoked_at.is_none(),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a live stream's token: stream ended");
            false
        }
    }
}

/// Resolves when the scope's credential is revoked.
async fn until_revoked(
    lifecycle: Arc<KeyLifecycle>,
    scope: Scope,
    mut feed: broadcast::Receiver<Revoked>,
) {
    // The first tick is at once: a revocation between the request's authentication and the
    // subscription above is seen here.
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            revoked = feed.recv() => match revoked {
                Ok(revoked) if scope.ended_by(&revoked) => return,
                Ok(Revoked::Unknown) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !still_valid(&lifecycle, &scope).await {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = recheck.tick() => {
                if !still_valid(&lifecycle, &scope).await {
                    return;
                }
            }
        }
    }
}

/// A live stream: `produce` runs in its own task and feeds the response through a
/// [`STREAM_BUFFER`]-event channel until it returns, the reader goes away or falls behind, or
/// the scope's credential is revoked.
pub fn stream<F, Fut>(
    state: &super::AppState,
    scope: Scope,
    produce: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<F, Fut>>
where
    F: FnOnce(Sink) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    // Subscribed before the task starts, so that no revocation falls in between.
    let feed = state.hub.subscribe_revoked();
    let revoked = until_revoked(state.lifecycle.clone(), scope, feed);
    let closed = tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = produce(Sink(tx)) => {}
            () = revoked => tracing::info!("a live stream's credential was revoked: stream ended"),
            () = closed.closed() => {}
        }
    });
    Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::default())
}
