//! Connections bounded: a cap on open connections, an idle timeout, and accept loops that back off
//! when the process runs out of descriptors instead of spinning (THREATS.md, adversary 3).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::proxy_protocol::TrustedProxies;

/// The first pause after a failed `accept`; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Pauses an accept loop after errors (`EMFILE`, `ENFILE`, `ENOBUFS`, ...): 100 ms, doubling up
/// to 1 s, logged once per burst of errors and once when accepting works again.
#[derive(Debug)]
pub struct AcceptBackoff {
    what: &'static str,
    failures: u64,
    delay: Duration,
}

impl AcceptBackoff {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            failures: 0,
            delay: ACCEPT_BACKOFF_MIN,
        }
    }

    /// After a failed accept: logs the first failure of a burst, then sleeps.
    pub async fn failed(&mut self, error: &io::Error) {
        if self.failures == 0 {
            tracing::warn!(listener = self.what, %error, "accept failed; backing off until it works again");
        }
        self.failures += 1;
        metrics::counter!("keyward_accept_errors_total", "listener" => self.what).increment(1);
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(ACCEPT_BACKOFF_MAX);
    }

    /// After a successful accept.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::warn!(
                listener = self.what,
                failures = self.failures,
                "accepting connections again"
            );
            self.failures = 0;
            self.delay = ACCEPT_BACKOFF_MIN;
        }
    }
}

/// Requests in flight on one connection, shared by its service and its IO.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn busy(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Counts a request until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }
}

#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The idle deadline of a connection.
#[derive(Debug)]
struct Idle {
    timeout: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
    in_flight: InFlight,
}

/// A connection holding one permit of its listener's cap (released when it closes) and, for
/// REST, closed after `timeout` with no request in flight and no byte read or written.
#[derive(Debug)]
pub struct Guarded<T> {
    io: T,
    idle: Option<Idle>,
    _permit: OwnedSemaphorePermit,
}

impl<T> Guarded<T> {
    pub fn new(io: T, permit: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            idle: None,
            _permit: permit,
        }
    }

    /// Closes the connection after `timeout` without traffic while `in_flight` is zero.
    pub fn with_idle_timeout(mut self, timeout: Duration, in_flight: InFlight) -> Self {
        let last = Instant::now();
        self.idle = Some(Idle {
            timeout,
            last,
            sleep: Box::pin(tokio::time::sleep_until(last + timeout)),
            in_flight,
        });
        self
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn touch(&mut self) {
        if let Some(idle) = &mut self.idle {
            idle.last = Instant::now();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(idle) = &mut self.idle else {
                    return Poll::Pending;
                };
                loop {
                    let now = Instant::now();
                    let deadline = if idle.in_flight.busy() {
                        // A request is being answered: idle only counts from now on.
                        idle.last = now;
                        now + idle.timeout
                    } else {
                        idle.last + idle.timeout
                    };
                    if deadline <= now {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection idle",
                        )));
                    }
                    if idle.sleep.deadline() != deadline {
                        idle.sleep.as_mut().reset(deadline);
                    }
                    match idle.sleep.as_mut().poll(cx) {
                        // Woken at the deadline: check again (traffic may have moved it).
                        Poll::Ready(()) => {}
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The REST listener's acceptor (axum-server): takes a permit of the connection cap or closes
/// the connection at once, reads the PROXY header of a trusted load balancer's connection, and
/// counts each connection's requests in flight for the idle timeout.
#[derive(Debug, Clone)]
pub struct RestAcceptor {
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    proxies: Arc<TrustedProxies>,
}

impl RestAcceptor {
    pub fn new(max_connections: usize, idle_timeout: Duration, proxies: TrustedProxies) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            idle_timeout,
            proxies: Arc::new(proxies),
        }
    }
}

/// The client's address when a trusted load balancer's PROXY header named it: a request
/// extension, which wins over the connection's own address (`api::client_addr`).
#[derive(Debug, Clone, Copy)]
pub struct ProxiedClient(pub SocketAddr);

impl<S> axum_server::accept::Accept<TcpStream, S> for RestAcceptor
where
    S: Send + 'static,
{
    type Stream = Guarded<TcpStream>;
    type Service = CountRequests<S>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!("keyward_connections_refused_total", "listener" => "rest")
                .increment(1);
            return Box::pin(std::future::ready(Err(io::Error::other(
                "REST connection cap reached",
            ))));
        };
        let (proxies, idle_timeout) = (self.proxies.clone(), self.idle_timeout);
        Box::pin(async move {
            let peer = stream.peer_addr()?;
            let client = proxies.client(&mut stream, peer).await.map_err(|e| {
                metrics::counter!("keyward_proxy_headers_refused_total", "listener" => "rest")
                    .increment(1);
                tracing::info!(%peer, error = %e, "connection from a load balancer closed");
                io::Error::other(e)
            })?;
            let in_flight = InFlight::default();
            let stream =
                Guarded::new(stream, permit).with_idle_timeout(idle_timeout, in_flight.clone());
            Ok((
                stream,
                CountRequests {
                    inner: service,
                    in_flight,
                    client: (client != peer).then_some(ProxiedClient(client)),
                },
            ))
        })
    }
}

/// A service that counts its requests in flight (until the response's head is ready; a
/// streamed body keeps the connection alive by its own bytes), and gives each request the
/// client address a PROXY header named.
#[derive(Debug, Clone)]
pub struct CountRequests<S> {
    inner: S,
    in_flight: InFlight,
    client: Option<ProxiedClient>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for CountRequests<S>
where
    S: tower::Service<axum::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        if let Some(client) = self.client {
            request.extensions_mut().insert(client);
        }
        let guard = self.in_flight.enter();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            drop(guard);
            result
        })
    }
}
