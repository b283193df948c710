//! The session relay: the parts of MCP's transports that one HTTP exchange through Envoy
//! cannot carry, because they tie several client requests to one long-lived stream.
//!
//! - **The legacy SSE transport** (MCP 2024-11-05): `GET /servers/{id}/sse` opens an event
//!   stream whose first `endpoint` event names `/servers/{id}/message?session_id=…`; the
//!   client POSTs each message there (answered 202) and reads every response and
//!   server-initiated message from the stream.
//! - **The GET stream of a session over several stateful upstreams**: the filter relays a
//!   single upstream's stream itself; several must be merged into one.
//!
//! The relay never talks to an upstream. Each message goes back, as a streamable HTTP
//! request, through the Envoy listener the client reached (its address arrives in
//! [`EDGE_ADDRESS_HEADER`], set by the relay route) to the virtual server's
//! `/servers/{id}/mcp`: the filter checks, answers or routes it exactly as for a direct
//! client, with the same policy, sessions and metrics. The relay only keeps the stream.
//!
//! A legacy SSE session lives in the relay process that opened it, so every POST of the
//! session must reach that process: with several control planes, Envoy's route to the
//! relay needs session affinity (one relay per Envoy fleet is the tested setup).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt as _;
use mcpgw_core::edge::{EDGE_ADDRESS_HEADER, RELAY_UPSTREAMS_HEADER, UPSTREAM_HEADER};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::federation::sse::Parser;

/// Largest message a legacy SSE client may post (the filter enforces its own limit on the
/// way through; this only bounds what the relay holds).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Frames queued towards one client before the senders wait for it to read.
const QUEUE: usize = 64;
/// Comment frames keep an idle stream's connections (client, Envoy) from timing out.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Open legacy SSE sessions per relay; more are refused (503) until some close.
pub const MAX_SSE_SESSIONS: usize = 10_000;
/// Messages of one session being relayed at once; more are refused (429).
pub const MAX_IN_FLIGHT: usize = 32;
/// How long opening one of the merged upstream streams may take.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Client headers the relay's own requests carry on (credentials and trace context).
const FORWARDED: [&str; 5] = [
    "authorization",
    "cookie",
    "traceparent",
    "tracestate",
    "user-agent",
];
const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";

/// The relay's Prometheus metrics.
#[derive(Debug, Default, Clone)]
pub struct RelayMetrics {
    sse_sessions: Gauge<i64, AtomicI64>,
    merged_streams: Gauge<i64, AtomicI64>,
    messages: Family<Vec<(String, String)>, Counter>,
}

impl RelayMetrics {
    /// Registers `relay_sse_sessions`, `relay_merged_streams` and `relay_messages`.
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
            "relay_messages",
            "Legacy SSE messages relayed to the edge, by outcome",
            self.messages.clone(),
        );
    }

    fn message(&self, outcome: &str) {
        self.messages
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
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
    sessions: Mutex<HashMap<String, Arc<SseSession>>>,
    http: reqwest::Client,
    metrics: RelayMetrics,
}

/// One legacy SSE client's session.
#[derive(Debug)]
struct SseSession {
    server: String,
    /// The Envoy listener the client reached.
    edge: SocketAddr,
    /// The client's forwarded headers from the stream's GET.
    headers: HeaderMap,
    /// The streamable HTTP session at the edge (after `initialize`).
    mcp: Mutex<McpState>,
    events: mpsc::Sender<Bytes>,
    server_stream_opened: AtomicBool,
    /// Permits for messages being relayed ([`MAX_IN_FLIGHT`]).
    in_flight: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Default, Clone)]
struct McpState {
    session_id: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
}

impl SseSession {
    fn mcp_url(&self) -> String {
        format!("http://{}/servers/{}/mcp", self.edge, self.server)
    }

    fn state(&self) -> McpState {
        self.mcp.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Queues `frame`; false once the client is gone.
    async fn push(&self, frame: Bytes) -> bool {
        self.events.send(frame).await.is_ok()
    }
}

impl Relay {
    /// A relay with no sessions.
    pub fn new() -> Relay {
        // reqwest's builder panics without a process-wide rustls provider.
        crate::federation::init_tls();
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Relay {
            inner: Arc::new(Inner {
                sessions: Mutex::new(HashMap::new()),
                http,
                metrics: RelayMetrics::default(),
            }),
        }
    }

    /// The relay's metrics (to register with the control plane's).
    pub fn metrics(&self) -> &RelayMetrics {
        &self.inner.metrics
    }

    /// The relay's HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/servers/{id}/sse",
                get(open_sse).fallback(wrong_method("GET")),
            )
            .route(
                "/servers/{id}/message",
                axum::routing::post(post_message).fallback(wrong_method("POST")),
            )
            .route(
                "/servers/{id}/mcp",
                get(merge_streams).fallback(wrong_method("GET")),
            )
            .fallback(|| async {
                problem(
                    StatusCode::NOT_FOUND,
                    None,
                    -32600,
                    "the relay serves /servers/{id}/sse, /servers/{id}/message and merged GET streams of /servers/{id}/mcp",
                )
            })
            .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
            .with_state(self.inner.clone())
    }

    /// Serves the relay on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new()
    }
}

/// A JSON-RPC error answered over HTTP.
fn problem(status: StatusCode, id: Option<&Value>, code: i64, message: &str) -> Response {
    let body = error_message(id, code, message);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_message(id: Option<&Value>, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message}})
    .to_string()
}

fn wrong_method(allowed: &'static str) -> impl Fn() -> std::future::Ready<Response> + Clone {
    move || {
        let mut r = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            -32600,
            &format!("only {allowed} is served here"),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        std::future::ready(r)
    }
}

/// One server-sent event; multi-line data becomes several `data:` lines.
fn frame(event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The Envoy listener a relayed request came through.
fn edge_address(headers: &HeaderMap) -> Option<SocketAddr> {
    headers
        .get(EDGE_ADDRESS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The answer to a request that did not come through an mcpgw Envoy route.
fn not_through_an_edge() -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        None,
        -32600,
        &format!(
            "no valid {EDGE_ADDRESS_HEADER} header: the relay serves requests that come through an mcpgw Envoy route"
        ),
    )
}

fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED {
        for v in headers.get_all(name) {
            out.append(HeaderName::from_static(name), v.clone());
        }
    }
    out
}

/// Removes the session when its stream's body is dropped (the client went away), and
/// ends its streamable HTTP session at the edge.
struct Closer {
    inner: Arc<Inner>,
    id: String,
}

impl Drop for Closer {
    fn drop(&mut self) {
        let session = self
            .inner
            .sessions
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&self.id));
        let Some(session) = session else { return };
        self.inner.metrics.sse_sessions.dec();
        let state = session.state();
        let (Some(sid), Ok(rt)) = (state.session_id, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let http = self.inner.http.clone();
        rt.spawn(async move {
            let mut req = http
                .delete(session.mcp_url())
                .headers(session.headers.clone())
                .header(SESSION_ID, sid)
                .timeout(Duration::from_secs(10));
            if let Some(v) = state.protocol_version {
                req = req.header(PROTOCOL_VERSION, v);
            }
            if let Err(e) = req.send().await {
                tracing::debug!(error = %e, "relay: ending a legacy SSE session at the edge failed");
            }
        });
    }
}

/// `GET /servers/{id}/sse`: a new legacy SSE session.
async fn open_sse(
    State(inner): State<Arc<Inner>>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(edge) = edge_address(&headers) else {
        return not_through_an_edge();
    };
    let open = inner.sessions.lock().map(|m| m.len()).unwrap_or(usize::MAX);
    if open >= MAX_SSE_SESSIONS {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            -32603,
            &format!("the relay holds its maximum of {MAX_SSE_SESSIONS} SSE sessions; retry later"),
        );
    }
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let endpoint = format!("/servers/{server}/message?session_id={id}");
    // The queue is empty: the endpoint event always fits.
    let _ = tx.try_send(frame(Some("endpoint"), &endpoint));
    let session = Arc::new(SseSession {
        server,
        edge,
        headers: forwarded(&headers),
        mcp: Mutex::new(McpState::default()),
        events: tx,
        server_stream_opened: AtomicBool::new(false),
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    });
    if let Ok(mut m) = inner.sessions.lock() {
        m.insert(id.clone(), session.clone());
    }
    inner.metrics.sse_sessions.inc();
    // The keepalive holds a sender, not the session: it ends when the client does.
    keep_alive(session.events.clone());
    drop(session);
    let closer = Closer { inner, id };
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |b| {
        let _ = &closer;
        Ok::<_, Infallible>(b)
    });
    sse_response(Body::from_stream(body))
}

/// Sends a comment frame every [`KEEPALIVE`] until the stream's reader is gone.
fn keep_alive(out: mpsc::Sender<Bytes>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(KEEPALIVE) => {}
                () = out.closed() => return,
            }
            if out
                .send(Bytes::from_static(b": keepalive\n\n"))
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

fn sse_response(body: Body) -> Response {
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

#[derive(Debug, Deserialize)]
struct MessageQuery {
    session_id: Option<String>,
}

/// `POST /servers/{id}/message?session_id=…`: one client message, answered on the stream.
async fn post_message(
    State(inner): State<Arc<Inner>>,
    Path(server): Path<String>,
    Query(q): Query<MessageQuery>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return problem(
                e.status(),
                None,
                -32600,
                &format!("unreadable message body (at most {MAX_MESSAGE_BYTES} bytes): {e}"),
            );
        }
    };
    let Some(sid) = q.session_id.filter(|s| !s.is_empty()) else {
        return problem(
            StatusCode::BAD_REQUEST,
            None,
            -32600,
            "missing session_id query parameter (it comes in the stream's endpoint event)",
        );
    };
    let session = inner
        .sessions
        .lock()
        .ok()
        .and_then(|m| m.get(&sid).cloned())
        .filter(|s| s.server == server);
    let Some(session) = session else {
        return problem(
            StatusCode::NOT_FOUND,
            None,
            -32600,
            "session not found: open a new stream at /servers/{id}/sse",
        );
    };
    let message = match Envelope::read(&body) {
        Ok(m) => m,
        Err((outcome, code, why)) => {
            inner.metrics.message(outcome);
            return problem(StatusCode::BAD_REQUEST, None, code, &why);
        }
    };
    let Ok(permit) = session.in_flight.clone().try_acquire_owned() else {
        inner.metrics.message("too_many");
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            message.id.as_ref(),
            -32603,
            &format!("{MAX_IN_FLIGHT} messages of this session are already being relayed"),
        );
    };
    tokio::spawn(async move {
        forward(inner, session, message, body, forwarded(&headers)).await;
        drop(permit);
    });
    (StatusCode::ACCEPTED, "Accepted").into_response()
}

/// What the relay reads of a posted message: the envelope, not the (possibly large) params;
/// the filter reads the whole message on its way through the edge.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: Option<Value>,
    method: Option<Value>,
}

impl Envelope {
    /// The envelope of one JSON-RPC message, or (metric outcome, JSON-RPC code, why).
    fn read(body: &[u8]) -> Result<Envelope, (&'static str, i64, String)> {
        let is_object = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        if !is_object {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Ok(_) => (
                        "invalid",
                        -32600,
                        "expected one JSON-RPC message (an object)".into(),
                    ),
                    Err(e) => ("parse_error", -32700, format!("parse error: {e}")),
                },
            );
        }
        serde_json::from_slice(body)
            .map_err(|e| ("parse_error", -32700, format!("parse error: {e}")))
    }

    /// The method of a request or notification (empty for a response).
    fn method(&self) -> &str {
        self.method.as_ref().and_then(Value::as_str).unwrap_or("")
    }

    /// The id of a request (a response's id answers the server, not the client).
    fn request_id(&self) -> Option<&Value> {
        self.id.as_ref().filter(|_| self.method.is_some())
    }
}

/// Sends one client message to the edge and queues what comes back on the client's stream.
async fn forward(
    inner: Arc<Inner>,
    session: Arc<SseSession>,
    message: Envelope,
    body: Bytes,
    headers: HeaderMap,
) {
    let id = message.request_id();
    let method = message.method();
    let state = session.state();
    // The message's own credentials win over the ones the stream was opened with.
    let mut carried = session.headers.clone();
    for name in headers.keys() {
        carried.remove(name);
    }
    carried.extend(headers);
    let mut req = inner
        .http
        .post(session.mcp_url())
        .headers(carried)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(body);
    if let Some(v) = &state.session_id {
        req = req.header(SESSION_ID, v);
    }
    if let Some(v) = &state.protocol_version {
        req = req.header(PROTOCOL_VERSION, v);
    }
    let response = tokio::select! {
        r = req.send() => r,
        () = session.events.closed() => return,
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            inner.metrics.message("edge_unreachable");
            if id.is_some() {
                let text = error_message(
                    id,
                    -32603,
                    &format!("the gateway could not reach its edge: {e}"),
                );
                session.push(frame(Some("message"), &text)).await;
            }
            return;
        }
    };
    let status = response.status();
    inner
        .metrics
        .message(if status.is_success() { "ok" } else { "refused" });
    if method == "initialize"
        && let Some(sid) = response.headers().get(SESSION_ID)
        && let Ok(mut m) = session.mcp.lock()
    {
        m.session_id = Some(sid.clone());
    }
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if is_stream {
        pump(response, &session.events).await;
    } else {
        let body = response.bytes().await.unwrap_or_default();
        if body.iter().all(u8::is_ascii_whitespace) {
            // 202 to a notification or a response: nothing comes back.
        } else if let Ok(text) = std::str::from_utf8(&body)
            && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
        {
            // Relayed as the edge wrote it; only `initialize`'s answer is read (its version).
            if method == "initialize"
                && let Ok(reply) = serde_json::from_str::<Value>(text)
                && let Some(v) = reply
                    .pointer("/result/protocolVersion")
                    .and_then(Value::as_str)
                && let (Ok(v), Ok(mut m)) = (HeaderValue::from_str(v), session.mcp.lock())
            {
                m.protocol_version = Some(v);
            }
            session.push(frame(Some("message"), text)).await;
        } else if id.is_some() {
            let text = error_message(
                id,
                -32603,
                &format!("the edge answered HTTP {status} without a JSON-RPC message"),
            );
            session.push(frame(Some("message"), &text)).await;
        }
    }
    // Server-initiated messages of the session come on its GET stream: open it once the
    // client has finished initializing.
    if method == "notifications/initialized"
        && status.is_success()
        && !session.server_stream_opened.swap(true, Ordering::SeqCst)
    {
        tokio::spawn(server_stream(inner, session));
    }
}

/// Relays the session's GET stream at the edge (server-initiated messages) to the client.
async fn server_stream(inner: Arc<Inner>, session: Arc<SseSession>) {
    let state = session.state();
    let Some(sid) = state.session_id else { return };
    let mut req = inner
        .http
        .get(session.mcp_url())
        .headers(session.headers.clone())
        .header(header::ACCEPT, "text/event-stream")
        .header(SESSION_ID, sid);
    if let Some(v) = state.protocol_version {
        req = req.header(PROTOCOL_VERSION, v);
    }
    let response = tokio::select! {
        r = req.send() => r,
        () = session.events.closed() => return,
    };
    match response {
        // 405: the session has no stateful upstream, so nothing is ever server-initiated.
        Ok(r) if r.status() == StatusCode::OK => {
            pump(r, &session.events).await;
        }
        Ok(r) => {
            tracing::debug!(status = %r.status(), "relay: no server stream for a legacy SSE session")
        }
        Err(e) => tracing::debug!(error = %e, "relay: opening a server stream failed"),
    }
}

/// Copies the messages of `response` (an event stream) to `out`, as `message` events,
/// until either side ends. Event ids are dropped (ids of merged streams would collide).
async fn pump(response: reqwest::Response, out: &mpsc::Sender<Bytes>) {
    let mut parser = Parser::default();
    let mut chunks = response.bytes_stream();
    loop {
        let chunk = tokio::select! {
            c = chunks.next() => c,
            () = out.closed() => return,
        };
        let Some(Ok(chunk)) = chunk else { return };
        for event in parser.feed(&chunk) {
            if event.data.is_empty() {
                continue;
            }
            if out.send(frame(Some("message"), &event.data)).await.is_err() {
                return;
            }
        }
    }
}

/// Decrements the merged-streams gauge when the merged body is dropped.
struct MergedGuard(RelayMetrics);

impl Drop for MergedGuard {
    fn drop(&mut self) {
        self.0.merged_streams.dec();
    }
}

/// `GET /servers/{id}/mcp` handed over by the filter: one GET per stateful upstream of the
/// session (picked with [`UPSTREAM_HEADER`], back through the edge), merged into one stream.
async fn merge_streams(
    State(inner): State<Arc<Inner>>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(edge) = edge_address(&headers) else {
        return not_through_an_edge();
    };
    let upstreams: Vec<String> = headers
        .get(RELAY_UPSTREAMS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let Some(token) = headers.get(SESSION_ID).cloned() else {
        return problem(
            StatusCode::BAD_REQUEST,
            None,
            -32600,
            "missing Mcp-Session-Id",
        );
    };
    if upstreams.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            None,
            -32600,
            &format!("no {RELAY_UPSTREAMS_HEADER} header: the filter names the streams to merge"),
        );
    }
    let url = format!("http://{edge}/servers/{server}/mcp");
    let base = forwarded(&headers);
    let opens = upstreams.iter().map(|u| {
        let mut req = inner
            .http
            .get(&url)
            .headers(base.clone())
            .header(header::ACCEPT, "text/event-stream")
            .header(SESSION_ID, token.clone())
            .header(UPSTREAM_HEADER, u.as_str());
        if let Some(v) = headers.get(PROTOCOL_VERSION) {
            req = req.header(PROTOCOL_VERSION, v.clone());
        }
        async move { tokio::time::timeout(STREAM_OPEN_TIMEOUT, req.send()).await }
    });
    let mut open = Vec::new();
    let mut refused = None;
    for (u, r) in upstreams.iter().zip(futures::future::join_all(opens).await) {
        match r {
            Ok(Ok(r)) if r.status() == StatusCode::OK => open.push(r),
            Ok(Ok(r)) => {
                tracing::debug!(upstream = %u, status = %r.status(), "relay: an upstream refused its stream");
                refused.get_or_insert(r);
            }
            Ok(Err(e)) => {
                tracing::debug!(upstream = %u, error = %e, "relay: opening an upstream stream failed")
            }
            Err(_) => tracing::debug!(upstream = %u, "relay: opening an upstream stream timed out"),
        }
    }
    if open.is_empty() {
        // Pass the edge's own answer on (e.g. 404 for a session the filter refuses).
        return match refused {
            Some(r) => {
                let status = r.status();
                let ct = r.headers().get(header::CONTENT_TYPE).cloned();
                let body = r.bytes().await.unwrap_or_default();
                let mut resp = (status, body).into_response();
                if let Some(ct) = ct {
                    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                resp
            }
            None => problem(
                StatusCode::BAD_GATEWAY,
                None,
                -32603,
                "no upstream stream of this session could be opened",
            ),
        };
    }
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    for r in open {
        let tx = tx.clone();
        tokio::spawn(async move { pump(r, &tx).await });
    }
    keep_alive(tx);
    inner.metrics.merged_streams.inc();
    let guard = MergedGuard(inner.metrics.clone());
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |b| {
        let _ = &guard;
        Ok::<_, Infallible>(b)
    });
    sse_response(Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_multi_line_data() {
        assert_eq!(
            frame(Some("message"), "{\"a\":\n1}"),
            Bytes::from_static(b"event: message\ndata: {\"a\":\ndata: 1}\n\n")
        );
        assert_eq!(
            frame(Some("endpoint"), "/servers/s/message?session_id=x"),
            Bytes::from_static(b"event: endpoint\ndata: /servers/s/message?session_id=x\n\n")
        );
    }

    #[test]
    fn envelopes_are_read_without_the_params_and_bad_bodies_are_classified() {
        let m = Envelope::read(
            br#" {"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"a":[1,2]}}"#,
        )
        .unwrap();
        assert_eq!(
            (m.method(), m.request_id()),
            ("tools/call", Some(&json!(7)))
        );
        let r = Envelope::read(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#).unwrap();
        assert_eq!((r.method(), r.request_id()), ("", None));
        for (body, code) in [
            (&b"not json"[..], -32700),
            (b"{\"id\":", -32700),
            (b"[1]", -32600),
            (b"\"x\"", -32600),
            (b"", -32700),
        ] {
            let (_, got, _) = Envelope::read(body).unwrap_err();
            assert_eq!(got, code, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn forwarded_headers_are_the_listed_ones() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert("x-mcpgw-cluster", HeaderValue::from_static("evil"));
        h.insert("mcp-session-id", HeaderValue::from_static("s"));
        let f = forwarded(&h);
        assert_eq!(f.len(), 1);
        assert_eq!(f["authorization"], "Bearer t");
    }
}
