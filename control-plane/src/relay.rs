//! The session relay: the parts of MCP's transports that one HTTP exchange through Envoy
//! cannot carry, because they tie several client requests to one long-lived stream.
//!
//! - **The legacy SSE transport** (MCP 2024-11-05, [`legacy`]): `GET /servers/{id}/sse`
//!   opens an event stream whose first `endpoint` event names
//!   `/servers/{id}/message?session_id=…`; the client POSTs each message there (answered
//!   202) and reads every response and server-initiated message from the stream.
//! - **The GET stream of a session over several stateful upstreams** ([`merge`]): the
//!   filter relays a single upstream's stream itself; several must be merged into one.
//! - **`subscriptions/listen` (MCP 2026-07-28) over several upstreams or a 2025-era one**
//!   ([`listen`]): one client stream fed by every upstream's listen (or 2025 GET stream)
//!   and by the catalog's changes ([`catalog`], fed by [`Relay::follow_catalogs`]).
//!
//! The relay never talks to an upstream. Each message goes back, as a streamable HTTP
//! request, through the Envoy listener the client reached (its address arrives in
//! [`mcpgw_core::edge::EDGE_ADDRESS_HEADER`], set by the relay route) to the virtual server's
//! `/servers/{id}/mcp`: the filter checks, answers or routes it exactly as for a direct
//! client, with the same policy, sessions and metrics. The relay only keeps the stream.
//!
//! Who may use it ([`auth`]): only this control plane's Envoys. Their relay route adds
//! [`mcpgw_core::edge::RELAY_AUTH_HEADER`] with a secret derived from the control plane's key; every other
//! request is refused (403) before anything in it is read, so the edge address is trusted
//! only on an authenticated request. Ids are checked as path segments and every URL the
//! relay requests is built from parsed parts, so no request can steer it to another path.
//! With TLS configured, the listener also requires a client certificate from the
//! operator's CA. [`limits`] bounds what one client, and all of them, can hold open.
//!
//! A legacy SSE session lives in the relay process that opened it, so every POST of the
//! session must reach that process: with several control planes, Envoy's route to the
//! relay needs session affinity (one relay per Envoy fleet is the tested setup).

mod auth;
mod catalog;
mod edge;
mod error;
mod legacy;
mod limits;
mod listen;
mod merge;

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mcpgw_core::snapshot::Snapshot;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

pub use error::RelayError;
pub use limits::{
    DEFAULT_LISTEN_IDLE_TIMEOUT, DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_LISTEN_STREAMS,
    DEFAULT_MAX_LISTEN_STREAMS_PER_CLIENT, DEFAULT_MAX_MERGED_STREAMS,
    DEFAULT_MAX_MERGED_STREAMS_PER_CLIENT, DEFAULT_MAX_SSE_SESSIONS,
    DEFAULT_MAX_SSE_SESSIONS_PER_CLIENT, DEFAULT_MERGED_IDLE_TIMEOUT, DEFAULT_SSE_IDLE_TIMEOUT,
    Limits,
};

/// Largest message a legacy SSE client may post (the filter enforces its own limit on the
/// way through; this only bounds what the relay holds).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Messages of one session being relayed at once; more are refused (429).
pub const MAX_IN_FLIGHT: usize = 32;
/// Upstream streams one merged GET may name ([`mcpgw_core::edge::RELAY_UPSTREAMS_HEADER`]);
/// more are refused (400): each one is a request through the edge.
pub const MAX_MERGED_UPSTREAMS: usize = 64;
/// Frames queued towards one client before the senders wait for it to read.
const QUEUE: usize = 64;
/// Comment frames keep an idle stream's connections (client, Envoy) from timing out.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long opening one of the merged upstream streams may take.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's Prometheus metrics.
#[derive(Debug, Default, Clone)]
pub struct RelayMetrics {
    sse_sessions: Gauge<i64, AtomicI64>,
    merged_streams: Gauge<i64, AtomicI64>,
    listen_streams: Gauge<i64, AtomicI64>,
    messages: Family<Vec<(String, String)>, Counter>,
    refused: Family<Vec<(String, String)>, Counter>,
    closed: Family<Vec<(String, String)>, Counter>,
    catalog_changes: Counter,
}

impl RelayMetrics {
    /// Registers `relay_sse_sessions`, `relay_merged_streams`, `relay_listen_streams`,
    /// `relay_messages`, `relay_refused`, `relay_streams_closed` and
    /// `relay_catalog_changes`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "relay_sse_sessions",
            "Open legacy SSE sessions",
            self.sse_sessions.clone(),
        );
        registry.register(
            "relay_merged_streams",
            "Open GET streams merged from several upstreams",
            self.merged_streams.clone(),
        );
        registry.register(
            "relay_listen_streams",
            "Open subscriptions/listen streams",
            self.listen_streams.clone(),
        );
        registry.register(
            "relay_messages",
            "Legacy SSE messages relayed to the edge, by outcome",
            self.messages.clone(),
        );
        registry.register(
            "relay_refused",
            "Requests the relay refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "relay_streams_closed",
            "Streams the relay ended itself, by reason (idle, sse_line_too_long, …)",
            self.closed.clone(),
        );
        registry.register(
            "relay_catalog_changes",
            "Virtual-server catalog changes announced to listen streams",
            self.catalog_changes.clone(),
        );
    }

    fn message(&self, outcome: &str) {
        self.messages
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    fn closed(&self, reason: &str) {
        self.closed
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }
}

/// The relay service (cheap to clone).
#[derive(Debug, Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    secret: auth::Secret,
    limits: Limits,
    sessions: Mutex<HashMap<String, Arc<legacy::SseSession>>>,
    sse_caps: Arc<limits::Caps>,
    merged_caps: Arc<limits::Caps>,
    listen_caps: Arc<limits::Caps>,
    http: reqwest::Client,
    metrics: RelayMetrics,
    /// Catalog changes, for listen streams ([`catalog::follow`]).
    catalogs: broadcast::Sender<Arc<catalog::CatalogChange>>,
    /// The published snapshots, once [`Relay::follow_catalogs`] was called.
    snapshots: OnceLock<watch::Receiver<Option<Arc<Snapshot>>>>,
}

impl Inner {
    /// Counts a refusal and answers it.
    fn refuse(&self, e: RelayError) -> Response {
        self.metrics.refused(e.label());
        e.into_response()
    }

    /// The last snapshot published (`None` before the first, or without a publisher).
    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.get().and_then(|s| s.borrow().clone())
    }
}

impl Relay {
    /// A relay with no sessions that serves only requests carrying `secret` in
    /// [`mcpgw_core::edge::RELAY_AUTH_HEADER`] (what the relay route of this control plane's Envoys adds:
    /// [`crate::crypto::SecretBox::relay_auth`]). An empty secret admits nobody.
    pub fn new(secret: impl Into<String>, limits: Limits) -> Relay {
        // reqwest's builder panics without a process-wide rustls provider.
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            // Never follow a redirect: the relay sends a client's credentials to the edge
            // it came through and nowhere else, whatever an upstream answers.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Relay {
            inner: Arc::new(Inner {
                secret: auth::Secret::new(secret.into()),
                sse_caps: Arc::new(limits::Caps::new(
                    error::Held::SseSessions,
                    limits.max_sse_sessions,
                    limits.max_sse_sessions_per_client,
                )),
                merged_caps: Arc::new(limits::Caps::new(
                    error::Held::MergedStreams,
                    limits.max_merged_streams,
                    limits.max_merged_streams_per_client,
                )),
                listen_caps: Arc::new(limits::Caps::new(
                    error::Held::ListenStreams,
                    limits.max_listen_streams,
                    limits.max_listen_streams_per_client,
                )),
                limits,
                sessions: Mutex::new(HashMap::new()),
                http,
                metrics: RelayMetrics::default(),
                catalogs: broadcast::Sender::new(catalog::CHANGES),
                snapshots: OnceLock::new(),
            }),
        }
    }

    /// Also admits `secrets` (those of previous keys during a key rotation, so routes of
    /// replicas that have not rotated yet keep working). Takes effect on a relay not yet
    /// shared, as one just built is.
    pub fn also_admitting(mut self, secrets: Vec<String>) -> Relay {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.secret.also(secrets);
        }
        self
    }

    /// The relay's metrics (to register with the control plane's).
    pub fn metrics(&self) -> &RelayMetrics {
        &self.inner.metrics
    }

    /// Follows the snapshots published on `snapshots`: listen streams hear of their
    /// server's catalog changes once every Envoy connected to `ads` serves them (at once
    /// without xDS). Call once, inside a Tokio runtime; later calls do nothing.
    pub fn follow_catalogs(
        &self,
        snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        ads: Option<crate::xds::AdsServer>,
    ) {
        if self.inner.snapshots.set(snapshots.clone()).is_err() {
            return;
        }
        tokio::spawn(catalog::follow(
            snapshots,
            ads,
            self.inner.catalogs.clone(),
            self.inner.metrics.catalog_changes.clone(),
        ));
    }

    /// The relay's HTTP routes, behind the authentication of every request.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/servers/{id}/sse",
                get(legacy::open).fallback(wrong_method("GET")),
            )
            .route(
                "/servers/{id}/message",
                post(legacy::post_message).fallback(wrong_method("POST")),
            )
            .route(
                "/servers/{id}/mcp",
                get(merge::open)
                    .post(listen::open)
                    .fallback(wrong_method("GET, POST")),
            )
            .fallback(|| async { RelayError::NoSuchRoute.into_response() })
            .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
            .layer(axum::middleware::from_fn_with_state(
                self.inner.clone(),
                auth::authenticate,
            ))
            .with_state(self.inner.clone())
    }

    /// Serves the relay on `listener` until `shutdown` resolves, with TLS (client
    /// certificates required) when `tls` is given ([`crate::tls::server_config`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let how = crate::serving::Listener {
            timeouts: self.inner.limits.http,
            tls,
            timed_out: |limit| {
                RelayError::BodyTimedOut {
                    limit_seconds: limit.as_secs(),
                }
                .into_response()
            },
        };
        crate::serving::serve(listener, self.router(), how, shutdown).await
    }
}

fn wrong_method(allowed: &'static str) -> impl Fn() -> std::future::Ready<Response> + Clone {
    move || {
        let mut r = RelayError::WrongMethod { allowed }.into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        std::future::ready(r)
    }
}

/// An event-stream response.
fn sse_response(body: axum::body::Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
