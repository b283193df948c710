//! HTTP serving of the control plane's own listeners (the admin API and the session relay):
//! one accept loop with the timeouts `axum::serve` lacks, and TLS when configured.
//!
//! - **Header-read timeout**: a client must send a request's whole head within
//!   [`Timeouts::header_read`], counted from when the connection is ready for a request
//!   (accepted, or done with the previous one). A client that trickles headers byte by byte
//!   (slowloris) is cut off then; so is an idle keep-alive connection.
//! - **Request-body timeout**: the whole body must arrive within [`Timeouts::request_body`]
//!   of the head. The handler then sees a body error, and the client gets a 408 (built by
//!   the listener's own error format, [`Listener::timed_out`]) and a closed connection.
//!   Only the request is bounded: a response may stream for as long as the handler wants
//!   (the relay's SSE streams have their own idle limits instead).
//! - **TLS handshake timeout** ([`Timeouts::tls_handshake`]) when TLS is on.
//!
//! HTTP/1.1 only: Envoy's relay cluster speaks it, and so do the admin API's clients.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::{Stream, StreamExt as _};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Default of [`Timeouts::header_read`] for the admin API.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Timeouts::request_body`].
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`Timeouts::tls_handshake`].
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To send a request's head (also the longest a keep-alive connection stays idle).
    pub header_read: Duration,
    /// To send a request's body, from its head.
    pub request_body: Duration,
    /// To complete the TLS handshake.
    pub tls_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            request_body: DEFAULT_REQUEST_BODY_TIMEOUT,
            tls_handshake: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// How one listener serves: its timeouts, TLS, and its answer to a request that timed out.
#[derive(Clone)]
pub struct Listener {
    /// Timeouts.
    pub timeouts: Timeouts,
    /// TLS (`None`: plaintext).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The 408 answer to a request whose body did not arrive within the timeout (in the
    /// listener's error format); it is sent with `Connection: close`.
    pub timed_out: fn(Duration) -> Response,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("timeouts", &self.timeouts)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, asks
/// every open connection to close once its current request is answered, and waits for
/// them (a caller that must not wait for long-lived streams aborts the task instead).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    how: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        BodyDeadline {
            limit: how.timeouts.request_body,
            timed_out: how.timed_out,
        },
        body_deadline,
    ));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(how.timeouts.header_read);
    let builder = builder.http1_only();
    let acceptor = how.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    // Shutdown as axum::serve does it: one channel tells every connection to finish its
    // current request and close; the other is held by every connection task, so the
    // server returns once all have ended.
    let (stop_tx, stop_rx) = watch::channel(());
    let (open_tx, open_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let task = Task {
            builder: builder.clone(),
            // The peer's address, for handlers that need it (API tokens limited to IP ranges).
            router: router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
            stop: stop_rx.clone(),
            open: open_rx.clone(),
        };
        match &acceptor {
            None => {
                tokio::spawn(task.serve(stream));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let handshake = how.timeouts.tls_handshake;
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => task.serve(tls).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    drop(stop_rx);
    drop(open_rx);
    let _ = stop_tx.send(());
    open_tx.closed().await;
    Ok(())
}

/// What one connection's task needs.
struct Task {
    builder: Builder<TokioExecutor>,
    router: Router,
    /// Changes when the server shuts down.
    stop: watch::Receiver<()>,
    /// Held while the connection is open.
    open: watch::Receiver<()>,
}

impl Task {
    /// Serves one connection until it ends; on shutdown, lets its current request finish.
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let service = TowerToHyperService::new(self.router);
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        drop(self.open);
    }
}

/// The deadline of request bodies, and the answer when it fires.
#[derive(Clone, Copy)]
struct BodyDeadline {
    limit: Duration,
    timed_out: fn(Duration) -> Response,
}

/// Gives the request's body a deadline; answers 408 if it fired.
async fn body_deadline(
    axum::extract::State(deadline): axum::extract::State<BodyDeadline>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let fired = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = Body::from_stream(Deadline {
        inner: body.into_data_stream(),
        sleep: Box::pin(tokio::time::sleep(deadline.limit)),
        fired: fired.clone(),
        limit: deadline.limit,
        done: false,
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    if fired.load(Ordering::Acquire) {
        let mut r = (deadline.timed_out)(deadline.limit);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    response
}

/// A request body cut off at a deadline.
struct Deadline {
    inner: axum::body::BodyDataStream,
    sleep: Pin<Box<tokio::time::Sleep>>,
    fired: Arc<AtomicBool>,
    limit: Duration,
    done: bool,
}

/// The body error of a request whose body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

impl Stream for Deadline {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.fired.store(true, Ordering::Release);
            let limit = self.limit;
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(limit)))));
        }
        let next = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(None) = next {
            self.done = true;
        }
        next
    }
}
