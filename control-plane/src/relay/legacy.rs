//! The legacy SSE transport (MCP 2024-11-05): `GET /servers/{id}/sse` opens a session's
//! stream, `POST /servers/{id}/message?session_id=…` sends one message, whose answer
//! arrives on the stream.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest as _, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use super::auth::Caller;
use super::edge::{Edge, Id, message_endpoint, pump, read_bounded};
use super::error::{RELAY_FAILED, RelayError, error_message};
use super::limits::{Activity, Permit};
use super::{Inner, KEEPALIVE, MAX_IN_FLIGHT, MAX_MESSAGE_BYTES, QUEUE, sse_response};
use crate::sse::{KEEPALIVE_FRAME, frame};

const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";

/// One legacy SSE client's session.
#[derive(Debug)]
pub(super) struct SseSession {
    server: Id,
    /// The Envoy listener the client reached, and the client's headers from the stream's GET.
    edge: Edge,
    /// The streamable HTTP session at the edge (after `initialize`).
    mcp: Mutex<McpState>,
    events: mpsc::Sender<Bytes>,
    server_stream_opened: AtomicBool,
    /// Permits for messages being relayed ([`MAX_IN_FLIGHT`]).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// A posted message, or anything sent but keepalives.
    activity: Activity,
    /// Notified to end the client's stream (idle).
    close: Notify,
}

#[derive(Debug, Default, Clone)]
struct McpState {
    session_id: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
}

impl SseSession {
    fn state(&self) -> McpState {
        self.mcp.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A request to the session's virtual server at the edge, in its edge session.
    fn request(
        &self,
        inner: &Inner,
        method: reqwest::Method,
        overrides: Option<&HeaderMap>,
    ) -> reqwest::RequestBuilder {
        let state = self.state();
        let mut req = self.edge.request(&inner.http, method, overrides);
        if let Some(v) = state.session_id {
            req = req.header(SESSION_ID, v);
        }
        if let Some(v) = state.protocol_version {
            req = req.header(PROTOCOL_VERSION, v);
        }
        req
    }

    /// Queues `frame`; false once the client is gone.
    async fn push(&self, frame: String) -> bool {
        self.activity.touch();
        self.events.send(Bytes::from(frame)).await.is_ok()
    }

    /// Queues a JSON-RPC error answering request `id` (nothing for a notification).
    async fn push_error(&self, id: Option<&Value>, message: &str) {
        if id.is_some() {
            let text = error_message(id, RELAY_FAILED, message);
            self.push(frame(Some("message"), &text)).await;
        }
    }
}

/// Removes the session when its stream's body is dropped (the client went away, or the
/// relay ended the stream), releases its place in the caps, and ends its streamable HTTP
/// session at the edge.
struct Closer {
    inner: Arc<Inner>,
    id: String,
    _permit: Permit,
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
        if session.state().session_id.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        rt.spawn(async move {
            let req = session
                .request(&inner, reqwest::Method::DELETE, None)
                .timeout(std::time::Duration::from_secs(10));
            if let Err(e) = req.send().await {
                tracing::debug!(error = %e, "relay: ending a legacy SSE session at the edge failed");
            }
        });
    }
}

/// `GET /servers/{id}/sse`: a new legacy SSE session.
pub(super) async fn open(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    match open_session(&inner, &caller, &server, &headers) {
        Ok(r) => r,
        Err(e) => inner.refuse(e),
    }
}

fn open_session(
    inner: &Arc<Inner>,
    caller: &Caller,
    server: &str,
    headers: &HeaderMap,
) -> Result<Response, RelayError> {
    let edge_addr = caller.edge()?;
    let server = Id::parse("id", server)?;
    let edge = Edge::new(edge_addr, &server, headers)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let endpoint = message_endpoint(&server, &id)?;
    let permit = inner.sse_caps.acquire(caller.client)?;
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    // The queue is empty: the endpoint event always fits.
    let _ = tx.try_send(Bytes::from(frame(Some("endpoint"), &endpoint)));
    let session = Arc::new(SseSession {
        server,
        edge,
        mcp: Mutex::new(McpState::default()),
        events: tx,
        server_stream_opened: AtomicBool::new(false),
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        activity: Activity::new(),
        close: Notify::new(),
    });
    if let Ok(mut m) = inner.sessions.lock() {
        m.insert(id.clone(), session.clone());
    }
    inner.metrics.sse_sessions.inc();
    // The keepalive holds a sender, not the session: it ends when the client does.
    keep_alive(session.events.clone());
    watch_idle(inner.clone(), session.clone());
    let closed = {
        let session = session.clone();
        async move { session.close.notified().await }
    };
    let closer = Closer {
        inner: inner.clone(),
        id,
        _permit: permit,
    };
    let body = tokio_stream::wrappers::ReceiverStream::new(rx)
        .take_until(closed)
        .map(move |b| {
            let _ = &closer;
            Ok::<_, Infallible>(b)
        });
    Ok(sse_response(Body::from_stream(body)))
}

/// Ends the session's stream once it has been idle for the relay's limit (or returns when
/// the client is gone first). A message still being relayed (a long tool call without
/// progress) keeps the session open: the client is waiting for its answer.
fn watch_idle(inner: Arc<Inner>, session: Arc<SseSession>) {
    let idle = inner.limits.sse_idle_timeout;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = session.activity.idle_for(idle) => {}
                () = session.events.closed() => return,
            }
            if session.in_flight.available_permits() < MAX_IN_FLIGHT {
                session.activity.touch();
                continue;
            }
            tracing::debug!(server = %session.server.as_str(), "relay: closing an idle legacy SSE session");
            inner.metrics.closed("idle");
            session.close.notify_one();
            return;
        }
    });
}

/// Sends a comment frame every [`KEEPALIVE`] until the stream's reader is gone.
pub(super) fn keep_alive(out: mpsc::Sender<Bytes>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(KEEPALIVE) => {}
                () = out.closed() => return,
            }
            if out.send(Bytes::from_static(KEEPALIVE_FRAME)).await.is_err() {
                return;
            }
        }
    });
}

#[derive(Debug, Deserialize)]
pub(super) struct MessageQuery {
    session_id: Option<String>,
}

/// Whether `headers` declare `application/json` (parameters such as `charset` allowed).
pub(super) fn require_json(headers: &HeaderMap) -> Result<(), RelayError> {
    let got = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = got.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(RelayError::UnsupportedMediaType {
            got: got.chars().take(100).collect(),
        })
    }
}

/// `POST /servers/{id}/message?session_id=…`: one client message, answered on the stream.
pub(super) async fn post_message(
    State(inner): State<Arc<Inner>>,
    Path(server): Path<String>,
    Query(q): Query<MessageQuery>,
    request: Request,
) -> Response {
    match accept_message(&inner, &server, q, request).await {
        Ok(()) => (StatusCode::ACCEPTED, "Accepted").into_response(),
        Err(e) => {
            if matches!(
                e,
                RelayError::Parse(_) | RelayError::NotOneMessage | RelayError::InFlight { .. }
            ) {
                inner.metrics.message(e.label());
            }
            inner.refuse(e)
        }
    }
}

async fn accept_message(
    inner: &Arc<Inner>,
    server: &str,
    q: MessageQuery,
    request: Request,
) -> Result<(), RelayError> {
    let server = Id::parse("id", server)?;
    // Checked before the body is read.
    require_json(request.headers())?;
    let headers = request.headers().clone();
    // A body that does not arrive in time fails here too; the serving layer then answers
    // 408 instead (crate::serving).
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|e| RelayError::Body {
            status: e.status().as_u16(),
            limit: MAX_MESSAGE_BYTES,
            reason: e.body_text(),
        })?;
    let sid = q
        .session_id
        .filter(|s| !s.is_empty())
        .ok_or(RelayError::MissingSessionId)?;
    let session = inner
        .sessions
        .lock()
        .ok()
        .and_then(|m| m.get(&sid).cloned())
        .filter(|s| s.server == server)
        .ok_or(RelayError::UnknownSession)?;
    let message = Envelope::read(&body)?;
    let permit =
        session
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| RelayError::InFlight {
                id: message.request_id().cloned(),
            })?;
    session.activity.touch();
    let inner = inner.clone();
    tokio::spawn(async move {
        forward(inner, session, message, body, headers).await;
        drop(permit);
    });
    Ok(())
}

/// What the relay reads of a posted message: the envelope, not the (possibly large) params;
/// the filter reads the whole message on its way through the edge.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: Option<Value>,
    method: Option<Value>,
}

impl Envelope {
    /// The envelope of one JSON-RPC message.
    fn read(body: &[u8]) -> Result<Envelope, RelayError> {
        let is_object = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        if !is_object {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Ok(_) => RelayError::NotOneMessage,
                    Err(e) => RelayError::Parse(e.to_string()),
                },
            );
        }
        serde_json::from_slice(body).map_err(|e| RelayError::Parse(e.to_string()))
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
    // The message's own credentials win over the ones the stream was opened with.
    let req = session
        .request(&inner, reqwest::Method::POST, Some(&headers))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(body);
    let response = tokio::select! {
        r = req.send() => r,
        () = session.events.closed() => return,
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            inner.metrics.message("edge_unreachable");
            session
                .push_error(id, &format!("the gateway could not reach its edge: {e}"))
                .await;
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
    let limit = inner.limits.max_answer_bytes;
    if is_stream {
        if let Err(e) = pump(
            response,
            &session.events,
            inner.limits.sse(),
            &session.activity,
        )
        .await
        {
            inner.metrics.message(e.label());
            session.push_error(id, &e.to_string()).await;
        }
    } else {
        let body = match read_bounded(response, limit).await {
            Ok(b) => b,
            Err(e) => {
                inner.metrics.message(e.label());
                session.push_error(id, &e.to_string()).await;
                return;
            }
        };
        relay_answer(&session, id, method, status, &body).await;
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

/// Queues the edge's JSON answer (as the edge wrote it) to the client.
async fn relay_answer(
    session: &SseSession,
    id: Option<&Value>,
    method: &str,
    status: StatusCode,
    body: &[u8],
) {
    if status.is_success() && body.iter().all(u8::is_ascii_whitespace) {
        // 202 to a notification or a response: nothing comes back.
        return;
    }
    let Some(text) = std::str::from_utf8(body)
        .ok()
        .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok())
    else {
        session
            .push_error(
                id,
                &format!("the edge answered HTTP {status} without a JSON-RPC message"),
            )
            .await;
        return;
    };
    // Only `initialize`'s answer is read (its version).
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
}

/// Relays the session's GET stream at the edge (server-initiated messages) to the client.
async fn server_stream(inner: Arc<Inner>, session: Arc<SseSession>) {
    if session.state().session_id.is_none() {
        return;
    }
    let req = session
        .request(&inner, reqwest::Method::GET, None)
        .header(header::ACCEPT, "text/event-stream");
    let response = tokio::select! {
        r = req.send() => r,
        () = session.events.closed() => return,
    };
    match response {
        // 405: the session has no stateful upstream, so nothing is ever server-initiated.
        Ok(r) if r.status() == StatusCode::OK => {
            if let Err(e) = pump(r, &session.events, inner.limits.sse(), &session.activity).await {
                tracing::debug!(error = %e, "relay: a legacy session's server stream ended");
                inner.metrics.closed(e.label());
            }
        }
        Ok(r) => {
            tracing::debug!(status = %r.status(), "relay: no server stream for a legacy SSE session")
        }
        Err(e) => tracing::debug!(error = %e, "relay: opening a server stream failed"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::relay::{Limits, Relay};

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_is_closed_unless_a_message_is_in_flight() {
        let idle = Duration::from_secs(60);
        let relay = Relay::new(
            "secret",
            Limits {
                sse_idle_timeout: idle,
                ..Limits::default()
            },
        );
        let server = Id::parse("id", "s").unwrap();
        let (events, _client) = mpsc::channel(QUEUE);
        let session = Arc::new(SseSession {
            edge: Edge::new("127.0.0.1:9".parse().unwrap(), &server, &HeaderMap::new()).unwrap(),
            server,
            mcp: Mutex::new(McpState::default()),
            events,
            server_stream_opened: AtomicBool::new(false),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            activity: Activity::new(),
            close: Notify::new(),
        });
        let relaying = session.in_flight.clone().try_acquire_owned().unwrap();
        watch_idle(relay.inner.clone(), session.clone());
        // Five idle periods while a message waits for its answer: the session stays.
        let closed = tokio::time::timeout(idle * 5, session.close.notified()).await;
        assert!(closed.is_err(), "closed while a message was being relayed");
        // Answered: idle from then on, the session is closed.
        drop(relaying);
        let closed = tokio::time::timeout(idle * 3, session.close.notified()).await;
        assert!(closed.is_ok(), "an idle session stays open");
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
            let got = Envelope::read(body).unwrap_err().code();
            assert_eq!(got, code, "{:?}", String::from_utf8_lossy(body));
        }
    }
}
