//! `subscriptions/listen` (MCP 2026-07-28) at a virtual server over several upstreams, or
//! over one that predates listen: one client stream fed by every upstream and by the
//! gateway's catalog.
//!
//! The filter hands the listen over unchanged, with the server's upstreams
//! ([`RELAY_UPSTREAMS_HEADER`]) and the era of each ([`RELAY_ERAS_HEADER`]). The relay
//! acknowledges it itself (every kind asked for is honored, as the reference SDK does),
//! then feeds the client's stream from:
//! - each `modern` upstream's own listen: the same request POSTed back through the edge
//!   with [`UPSTREAM_HEADER`], which the filter sends straight to that upstream;
//! - each `legacy` upstream's 2025 notifications: one session at the edge for all of them
//!   (`initialize`, `notifications/initialized`, `resources/subscribe` for the client's
//!   URIs they serve), and per upstream a GET stream picked with [`UPSTREAM_HEADER`];
//! - the catalog: `notifications/{tools,prompts,resources}/list_changed` when the
//!   server's lists change in a published snapshot ([`super::catalog`]).
//!
//! Every notification is filtered to what the client asked for and stamped with its
//! subscription id ([`Subscription`]). Upstream requests on a 2025 GET stream (a `ping`)
//! are answered, so no upstream waits on the relay.
//!
//! How a stream ends: the client going away ends every upstream stream and the edge
//! session; an upstream stream that ends or breaks a limit ends the client's stream
//! abruptly (no result), which tells the client its subscription was lost, so it listens
//! again and refetches, as MCP asks; a stream idle for the relay's limit is closed
//! gracefully (the listen's result as its last frame). A listen none of whose upstreams
//! could be listened to is refused: with the edge's own answer when it gave one (e.g. 401
//! or 403), else 502.

mod subscription;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest as _, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use mcpgw_core::edge::{RELAY_ERAS_HEADER, UPSTREAM_HEADER};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::AbortHandle;

use super::auth::Caller;
use super::catalog::CatalogChange;
use super::edge::{Edge, Id, read_bounded};
use super::error::RelayError;
use super::limits::{Activity, Permit};
use super::{Inner, KEEPALIVE, QUEUE, STREAM_OPEN_TIMEOUT, merge, sse_response};
use crate::sse::{KEEPALIVE_FRAME, Parser, frame};
pub(super) use subscription::Kind;
use subscription::Subscription;

const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";
const MCP_METHOD: &str = "mcp-method";
/// The version of a listen whose client sent no `MCP-Protocol-Version` (the filter
/// requires one, so only a direct request lacks it).
const MODERN_VERSION: &str = "2026-07-28";
/// The version of the relay's 2025-era sessions at the edge.
const SESSION_VERSION: &str = "2025-11-25";
/// Largest listen request the relay reads (its filter is small; URIs are capped).
const MAX_LISTEN_BYTES: usize = 2 * 1024 * 1024;
/// Largest event of an upstream stream relayed to a listen (notifications are small:
/// this leaves room for long URIs and metadata). Larger ones end the stream.
const MAX_LISTEN_EVENT_BYTES: usize = 256 * 1024;
/// Largest answer of the edge the relay reads while opening streams (an `initialize`
/// result, a refusal).
const MAX_OPEN_ANSWER_BYTES: usize = 64 * 1024;
/// `resources/subscribe` requests sent at once while a listen opens.
const SUBSCRIBE_CONCURRENCY: usize = 8;
/// How long the relay's own requests to the edge may take (answers to upstream requests,
/// the `DELETE` that ends a session).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream's era, as the filter named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Era {
    /// It speaks MCP 2026-07-28: the relay listens to it.
    Modern,
    /// It speaks the 2025 era only: the relay reads a session's GET stream there.
    Legacy,
}

/// The eras of `count` upstreams, from [`RELAY_ERAS_HEADER`].
fn eras(headers: &HeaderMap, count: usize) -> Result<Vec<Era>, RelayError> {
    let Some(raw) = headers.get(RELAY_ERAS_HEADER) else {
        if count == 0 {
            return Ok(Vec::new());
        }
        return Err(RelayError::Eras {
            reason: "missing: the filter names each upstream's era".into(),
        });
    };
    let raw = raw.to_str().map_err(|_| RelayError::Eras {
        reason: "not ASCII".into(),
    })?;
    let eras = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "modern" => Ok(Era::Modern),
            "legacy" => Ok(Era::Legacy),
            other => Err(RelayError::Eras {
                reason: format!(
                    "{:?} is no era (modern or legacy)",
                    other.chars().take(32).collect::<String>()
                ),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if eras.len() != count {
        return Err(RelayError::Eras {
            reason: format!("{} eras for {count} upstreams", eras.len()),
        });
    }
    Ok(eras)
}

/// One frame towards the client.
#[derive(Debug)]
enum Frame {
    /// An event (or a keepalive comment).
    Event(Bytes),
    /// The last frame: the stream ends after it.
    Last(Bytes),
}

/// The edge's refusal of one of the streams, read whole (bounded), to pass on.
#[derive(Debug, Clone)]
struct Refusal {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl Refusal {
    /// Reads `response` (a refusal) within the open timeout.
    async fn read(response: reqwest::Response) -> Result<Refusal, String> {
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        match tokio::time::timeout(
            STREAM_OPEN_TIMEOUT,
            read_bounded(response, MAX_OPEN_ANSWER_BYTES),
        )
        .await
        {
            Ok(Ok(body)) => Ok(Refusal {
                status,
                content_type,
                body,
            }),
            Ok(Err(e)) => Err(format!("HTTP {status}, unreadable: {e}")),
            Err(_) => Err(format!("HTTP {status}, its body did not arrive in time")),
        }
    }

    fn into_response(self) -> Response {
        let mut r = (self.status, self.body).into_response();
        if let Some(ct) = self.content_type {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        r
    }
}

/// Why one upstream's stream did not open.
#[derive(Debug, Clone)]
enum Failure {
    /// The edge answered with a refusal.
    Refused(Refusal),
    /// No answer (transport error, timeout, an answer not understood).
    Failed(String),
}

impl Failure {
    /// The failure of a request to the edge that got `response` where it wanted a stream.
    async fn of(response: reqwest::Response) -> Failure {
        match Refusal::read(response).await {
            Ok(r) => Failure::Refused(r),
            Err(e) => Failure::Failed(e),
        }
    }
}

/// The JSON-RPC messages of an upstream's event stream, read as they come.
struct Reader {
    chunks: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    parser: Parser,
    /// Messages parsed and not yet taken.
    queued: std::collections::VecDeque<Value>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("queued", &self.queued.len())
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Reads `response`'s events with the limits of a listen's events.
    fn new(response: reqwest::Response, limits: crate::sse::Limits) -> Reader {
        Reader {
            chunks: response.bytes_stream().boxed(),
            parser: Parser::new(limits),
            queued: std::collections::VecDeque::new(),
        }
    }

    /// The next message (events that are no JSON are skipped); `Ok(None)` at the end of
    /// the stream, `Err` with a metric label when it breaks a limit or the connection
    /// fails. Cancel-safe: a message is only taken when returned.
    async fn next(&mut self) -> Result<Option<Value>, &'static str> {
        loop {
            if let Some(m) = self.queued.pop_front() {
                return Ok(Some(m));
            }
            let chunk = match self.chunks.next().await {
                None => return Ok(None),
                Some(Err(_)) => return Err("edge_read_failed"),
                Some(Ok(chunk)) => chunk,
            };
            let events = self.parser.feed(&chunk).map_err(|e| e.label())?;
            self.queued.extend(
                events
                    .iter()
                    .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok()),
            );
        }
    }
}

/// One upstream's stream, once opened.
#[derive(Debug)]
enum Opened {
    /// Its messages.
    Stream(Reader),
    /// It has none (a 2025-era upstream the session holds no stream at).
    Silent,
}

/// The relay's 2025-era session at the edge, shared by the listen's legacy upstreams;
/// ended (`DELETE`) at the edge once the last holder drops it.
#[derive(Debug)]
struct EdgeSession {
    inner: Arc<Inner>,
    edge: Edge,
    token: HeaderValue,
    version: HeaderValue,
}

impl EdgeSession {
    /// A request in the session.
    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        self.edge
            .request(&self.inner.http, method, None)
            .header(SESSION_ID, self.token.clone())
            .header(PROTOCOL_VERSION, self.version.clone())
    }

    /// POSTs one JSON-RPC message in the session; the answer's status and body (bounded).
    async fn post(&self, message: &Value) -> Result<(StatusCode, Bytes), String> {
        let req = self
            .request(reqwest::Method::POST)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(message.to_string());
        let answer = async {
            let r = req.send().await.map_err(|e| e.to_string())?;
            let status = r.status();
            let body = read_bounded(r, MAX_OPEN_ANSWER_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, answer)
            .await
            .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
    }
}

impl Drop for EdgeSession {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let req = self
            .request(reqwest::Method::DELETE)
            .timeout(REQUEST_TIMEOUT);
        rt.spawn(async move {
            if let Err(e) = req.send().await {
                tracing::debug!(error = %e, "relay: ending a listen's session at the edge failed");
            }
        });
    }
}

/// The first JSON-RPC message of an edge answer (JSON, or the first `data:` of an event
/// stream).
fn first_message(body: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Some(v);
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str(d.trim()).ok())
}

/// Whether `response` is an event stream.
fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// What one listen needs to open its streams.
struct Opening<'a> {
    inner: &'a Arc<Inner>,
    edge: &'a Edge,
    server: &'a Id,
    sub: &'a Subscription,
    /// The listen request as the client sent it.
    body: &'a Bytes,
    /// The client's `MCP-Protocol-Version`.
    version: HeaderValue,
    /// Limits of the upstreams' event streams.
    limits: crate::sse::Limits,
}

impl Opening<'_> {
    /// The listen of `upstream` (a 2026-era one), back through the edge.
    async fn modern(&self, upstream: &Id) -> Result<Opened, Failure> {
        let req = self
            .edge
            .request(&self.inner.http, reqwest::Method::POST, None)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(PROTOCOL_VERSION, self.version.clone())
            .header(MCP_METHOD, "subscriptions/listen")
            .header(UPSTREAM_HEADER, upstream.as_str())
            .body(self.body.clone());
        match tokio::time::timeout(STREAM_OPEN_TIMEOUT, req.send()).await {
            Ok(Ok(r)) if r.status() == StatusCode::OK && is_event_stream(&r) => {
                self.acknowledged(Reader::new(r, self.limits)).await
            }
            // A JSON answer is the upstream's (or the edge's) refusal of the listen.
            Ok(Ok(r)) => Err(Failure::of(r).await),
            Ok(Err(e)) => Err(Failure::Failed(e.to_string())),
            Err(_) => Err(Failure::Failed("timed out".into())),
        }
    }

    /// An upstream's listen stream once its first message came: its acknowledgement, or
    /// the JSON-RPC error refusing the listen (passed on as the upstream wrote it).
    async fn acknowledged(&self, mut reader: Reader) -> Result<Opened, Failure> {
        let first = match tokio::time::timeout(STREAM_OPEN_TIMEOUT, reader.next()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                return Err(Failure::Failed(
                    "the listen ended before its acknowledgement".into(),
                ));
            }
            Ok(Err(why)) => return Err(Failure::Failed(why.into())),
            Err(_) => return Err(Failure::Failed("no acknowledgement in time".into())),
        };
        if first.get("error").is_some() && first.get("method").is_none() {
            return Err(Failure::Refused(Refusal {
                status: StatusCode::OK,
                content_type: Some(HeaderValue::from_static("application/json")),
                body: Bytes::from(first.to_string()),
            }));
        }
        if first.get("method").and_then(Value::as_str) != Some(subscription::ACKNOWLEDGED) {
            // Not the acknowledgement MCP puts first: relayed like any other message.
            reader.queued.push_front(first);
        }
        Ok(Opened::Stream(reader))
    }

    /// A 2025-era session at the edge for the `legacy` upstreams, subscribed to the
    /// client's URIs they may serve, and each one's GET stream.
    async fn legacy(
        &self,
        legacy: &[Id],
    ) -> (Option<Arc<EdgeSession>>, Vec<Result<Opened, Failure>>) {
        let all = |f: Failure| legacy.iter().map(|_| Err(f.clone())).collect();
        let session = match self.session().await {
            Ok(s) => Arc::new(s),
            Err(f) => return (None, all(f)),
        };
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        match session.post(&initialized).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, body)) => {
                let refusal = Refusal {
                    status,
                    content_type: Some(HeaderValue::from_static("application/json")),
                    body,
                };
                return (Some(session), all(Failure::Refused(refusal)));
            }
            Err(e) => return (Some(session), all(Failure::Failed(e))),
        }
        self.subscribe(&session, legacy).await;
        let mut streams = Vec::with_capacity(legacy.len());
        for upstream in legacy {
            streams.push(self.legacy_stream(&session, upstream).await);
        }
        (Some(session), streams)
    }

    /// `initialize` at the edge: the session.
    async fn session(&self) -> Result<EdgeSession, Failure> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": SESSION_VERSION, "capabilities": {},
            "clientInfo": {"name": "mcpgw-relay", "version": env!("CARGO_PKG_VERSION")}}});
        let req = self
            .edge
            .request(&self.inner.http, reqwest::Method::POST, None)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(init.to_string());
        let r = match tokio::time::timeout(STREAM_OPEN_TIMEOUT, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Failure::Failed(e.to_string())),
            Err(_) => return Err(Failure::Failed("initialize timed out".into())),
        };
        if r.status() != StatusCode::OK {
            return Err(Failure::of(r).await);
        }
        let token = r.headers().get(SESSION_ID).cloned();
        let body =
            tokio::time::timeout(STREAM_OPEN_TIMEOUT, read_bounded(r, MAX_OPEN_ANSWER_BYTES))
                .await
                .map_err(|_| Failure::Failed("initialize answer timed out".into()))?
                .map_err(|e| Failure::Failed(e.to_string()))?;
        let Some(token) = token else {
            return Err(Failure::Failed(
                "the virtual server keeps no sessions: its 2025-era upstreams have no stream to listen to"
                    .into(),
            ));
        };
        let version = first_message(&body)
            .and_then(|m| {
                m.pointer("/result/protocolVersion")
                    .and_then(Value::as_str)
                    .and_then(|v| HeaderValue::from_str(v).ok())
            })
            .unwrap_or(HeaderValue::from_static(SESSION_VERSION));
        Ok(EdgeSession {
            inner: self.inner.clone(),
            edge: self.edge.clone(),
            token,
            version,
        })
    }

    /// `resources/subscribe` in `session` for each of the client's URIs a `legacy`
    /// upstream may serve (an update of the others comes on a 2026 listen, where the URIs
    /// travel in the listen itself).
    async fn subscribe(&self, session: &EdgeSession, legacy: &[Id]) {
        let snapshot = self.inner.snapshot();
        let served = snapshot
            .as_ref()
            .and_then(|s| s.servers.get(self.server.as_str()));
        let mut uris: Vec<String> = Vec::new();
        for uri in self.sub.uris() {
            // Unknown to the catalog (a template's, or no snapshot yet): the edge routes it.
            let owner = served.and_then(|s| s.resources.iter().find(|e| e.name == *uri));
            if owner.is_none_or(|e| legacy.iter().any(|l| l.as_str() == e.upstream)) {
                uris.push(uri.clone());
            }
        }
        let requests = uris
            .into_iter()
            .enumerate()
            .map(|(i, uri)| subscribe_one(session, i + 1, uri));
        let all = futures::stream::iter(requests)
            .buffer_unordered(SUBSCRIBE_CONCURRENCY)
            .collect::<Vec<()>>();
        if tokio::time::timeout(STREAM_OPEN_TIMEOUT, all)
            .await
            .is_err()
        {
            tracing::debug!("relay: a listen's resources/subscribe requests timed out");
        }
    }

    /// The GET stream of `upstream` in `session`.
    async fn legacy_stream(&self, session: &EdgeSession, upstream: &Id) -> Result<Opened, Failure> {
        let req = session
            .request(reqwest::Method::GET)
            .header(header::ACCEPT, "text/event-stream")
            .header(UPSTREAM_HEADER, upstream.as_str());
        match tokio::time::timeout(STREAM_OPEN_TIMEOUT, req.send()).await {
            Ok(Ok(r)) if r.status() == StatusCode::OK => {
                Ok(Opened::Stream(Reader::new(r, self.limits)))
            }
            // No stream there: a stateless upstream (404, no upstream session to pick) or
            // one without a GET stream (405). It never notifies anyone.
            Ok(Ok(r))
                if r.status() == StatusCode::NOT_FOUND
                    || r.status() == StatusCode::METHOD_NOT_ALLOWED =>
            {
                tracing::debug!(upstream = %upstream.as_str(), status = %r.status(), "relay: a 2025-era upstream has no stream to listen to");
                Ok(Opened::Silent)
            }
            Ok(Ok(r)) => Err(Failure::of(r).await),
            Ok(Err(e)) => Err(Failure::Failed(e.to_string())),
            Err(_) => Err(Failure::Failed("timed out".into())),
        }
    }
}

/// `resources/subscribe` of `uri` (request `id`) in `session`. A refusal is logged:
/// that URI never updates, as a subscription to a URI no server has.
async fn subscribe_one(session: &EdgeSession, id: usize, uri: String) {
    let request = json!({"jsonrpc": "2.0", "id": id, "method": "resources/subscribe",
        "params": {"uri": uri}});
    let outcome = session.post(&request).await;
    let refused = match &outcome {
        Ok((status, body)) => {
            !status.is_success() || first_message(body).is_none_or(|m| m.get("error").is_some())
        }
        Err(_) => true,
    };
    if refused {
        tracing::debug!(%uri, ?outcome, "relay: a listen's resources/subscribe was refused");
    }
}

/// `POST /servers/{id}/mcp`: a `subscriptions/listen` handed over by the filter.
pub(super) async fn open(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Path(server): Path<String>,
    request: Request,
) -> Response {
    match listen(&inner, &caller, &server, request).await {
        Ok(r) => r,
        Err(e) => inner.refuse(e),
    }
}

/// What a listen holds while its client reads: uncounted, its tasks ended and its edge
/// session released when the client's stream is dropped.
struct Listening {
    inner: Arc<Inner>,
    tasks: Vec<AbortHandle>,
    _permit: Permit,
}

impl Drop for Listening {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.inner.metrics.listen_streams.dec();
    }
}

async fn listen(
    inner: &Arc<Inner>,
    caller: &Caller,
    server: &str,
    request: Request,
) -> Result<Response, RelayError> {
    let edge_addr = caller.edge()?;
    let server = Id::parse("id", server)?;
    let headers = request.headers().clone();
    // None: a server without upstreams, whose listen hears only its catalog.
    let upstreams = merge::upstream_ids(&headers)?;
    let eras = eras(&headers, upstreams.len())?;
    super::legacy::require_json(&headers)?;
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|e| RelayError::Body {
            status: e.status().as_u16(),
            limit: MAX_LISTEN_BYTES,
            reason: e.body_text(),
        })?;
    if body.len() > MAX_LISTEN_BYTES {
        return Err(RelayError::Body {
            status: StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
            limit: MAX_LISTEN_BYTES,
            reason: format!("{} bytes", body.len()),
        });
    }
    let sub = Arc::new(Subscription::parse(&body)?);
    let limits = crate::sse::Limits {
        max_line_bytes: MAX_LISTEN_EVENT_BYTES.min(inner.limits.max_answer_bytes),
        max_event_bytes: MAX_LISTEN_EVENT_BYTES.min(inner.limits.max_answer_bytes),
    };
    let edge = Edge::new(edge_addr, &server, &headers)?;
    // Counted before anything is opened: a client over its cap costs the edge nothing.
    let permit = inner.listen_caps.acquire(caller.client)?;
    // Subscribed before the upstreams are opened: a change meanwhile is not missed.
    let changes = inner.catalogs.subscribe();
    let opening = Opening {
        inner,
        edge: &edge,
        server: &server,
        sub: &sub,
        body: &body,
        version: headers
            .get(PROTOCOL_VERSION)
            .cloned()
            .unwrap_or(HeaderValue::from_static(MODERN_VERSION)),
        limits,
    };
    let modern: Vec<Id> = upstreams
        .iter()
        .zip(&eras)
        .filter(|(_, e)| **e == Era::Modern)
        .map(|(u, _)| u.clone())
        .collect();
    let legacy: Vec<Id> = upstreams
        .iter()
        .zip(&eras)
        .filter(|(_, e)| **e == Era::Legacy)
        .map(|(u, _)| u.clone())
        .collect();
    let (modern_opened, (session, legacy_opened)) = tokio::join!(
        futures::future::join_all(modern.iter().map(|u| opening.modern(u))),
        async {
            if legacy.is_empty() {
                (None, Vec::new())
            } else {
                opening.legacy(&legacy).await
            }
        }
    );
    let mut streams = Vec::new();
    let mut first_refusal = None;
    let mut any_open = false;
    let outcomes = modern
        .iter()
        .zip(modern_opened)
        .map(|(u, o)| (u, Era::Modern, o))
        .chain(
            legacy
                .iter()
                .zip(legacy_opened)
                .map(|(u, o)| (u, Era::Legacy, o)),
        );
    for (upstream, era, outcome) in outcomes {
        match outcome {
            Ok(Opened::Stream(r)) => {
                any_open = true;
                streams.push((upstream.clone(), era, r));
            }
            Ok(Opened::Silent) => any_open = true,
            Err(Failure::Refused(r)) => {
                tracing::debug!(upstream = %upstream.as_str(), status = %r.status, "relay: the edge refused a listen's upstream stream");
                first_refusal.get_or_insert(r);
            }
            Err(Failure::Failed(e)) => {
                tracing::debug!(upstream = %upstream.as_str(), error = %e, "relay: a listen's upstream stream did not open");
            }
        }
    }
    if !any_open && !upstreams.is_empty() {
        inner.metrics.refused("listen_not_opened");
        return Ok(match first_refusal {
            // The edge's own answer (e.g. 401 for a client it does not admit).
            Some(r) => r.into_response(),
            None => RelayError::NoStreamOpened.into_response(),
        });
    }
    let (tx, rx) = mpsc::channel::<Frame>(QUEUE);
    // The queue is empty: the acknowledgement, the stream's first frame, always fits.
    let _ = tx.try_send(Frame::Event(event(&sub.acknowledgement())));
    let activity = Arc::new(Activity::new());
    let end = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for (upstream, era, reader) in streams {
        let feed = Feed {
            inner: inner.clone(),
            upstream,
            era,
            sub: sub.clone(),
            out: tx.clone(),
            activity: activity.clone(),
            session: session.clone(),
        };
        let end = end.clone();
        tasks.push(
            tokio::spawn(async move {
                let why = feed.run(reader).await;
                if !feed.out.is_closed() {
                    tracing::debug!(upstream = %feed.upstream.as_str(), %why, "relay: an upstream's stream ended: the listen is lost");
                    feed.inner.metrics.closed(why);
                    end.notify_one();
                }
            })
            .abort_handle(),
        );
    }
    drop(session);
    tasks.push(
        tokio::spawn(catalog_feed(
            changes,
            server.clone(),
            sub.clone(),
            tx.clone(),
            activity.clone(),
        ))
        .abort_handle(),
    );
    tasks.push(tokio::spawn(keep_alive(tx.clone())).abort_handle());
    tasks.push(
        tokio::spawn(close_when_idle(inner.clone(), sub.clone(), tx, activity)).abort_handle(),
    );
    inner.metrics.listen_streams.inc();
    let listening = Listening {
        inner: inner.clone(),
        tasks,
        _permit: permit,
    };
    Ok(sse_response(Body::from_stream(client_stream(
        rx, end, listening,
    ))))
}

/// An SSE `message` event carrying `text`.
fn event(text: &str) -> Bytes {
    Bytes::from(frame(Some("message"), text))
}

/// The client's stream: the frames of `rx` until the last one, or until `end` (abrupt).
/// `listening` lives as long as the stream.
fn client_stream(
    rx: mpsc::Receiver<Frame>,
    end: Arc<Notify>,
    listening: Listening,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    struct State {
        rx: mpsc::Receiver<Frame>,
        end: Arc<Notify>,
        done: bool,
        _listening: Listening,
    }
    let state = State {
        rx,
        end,
        done: false,
        _listening: listening,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let frame = tokio::select! {
            biased;
            () = st.end.notified() => None,
            f = st.rx.recv() => f,
        }?;
        match frame {
            Frame::Event(b) => Some((Ok(b), st)),
            Frame::Last(b) => {
                st.done = true;
                Some((Ok(b), st))
            }
        }
    })
}

/// One upstream's stream feeding a listen.
struct Feed {
    inner: Arc<Inner>,
    upstream: Id,
    era: Era,
    sub: Arc<Subscription>,
    out: mpsc::Sender<Frame>,
    activity: Arc<Activity>,
    /// The edge session a 2025-era stream belongs to (its requests are answered there).
    session: Option<Arc<EdgeSession>>,
}

impl Feed {
    /// Relays the upstream's notifications until its stream ends or the client goes;
    /// returns why it stopped (a metric label).
    async fn run(&self, mut reader: Reader) -> &'static str {
        loop {
            let message = tokio::select! {
                m = reader.next() => m,
                () = self.out.closed() => return "client_gone",
            };
            match message {
                Ok(Some(m)) => {
                    if let Some(stop) = self.take(&m).await {
                        return stop;
                    }
                }
                Ok(None) => return "upstream_ended",
                Err(why) => return why,
            }
        }
    }

    /// Takes one message of the upstream's stream; `Some` when the stream is over.
    async fn take(&self, message: &Value) -> Option<&'static str> {
        let is_request = message.get("method").is_some() && message.get("id").is_some();
        let is_response = message.get("method").is_none() && message.get("id").is_some();
        match self.era {
            // The listen's result (or error) ends the upstream's listen.
            Era::Modern if is_response => {
                return Some(if message.get("error").is_some() {
                    "upstream_error"
                } else {
                    "upstream_closed"
                });
            }
            Era::Legacy if is_request => {
                self.answer(message).await;
                return None;
            }
            _ => {}
        }
        let text = self.sub.admit(message)?;
        self.activity.touch();
        if self.out.send(Frame::Event(event(&text))).await.is_err() {
            return Some("client_gone");
        }
        None
    }

    /// Answers a request a 2025-era upstream sent on its GET stream (the relay's session
    /// declared no client capabilities, so only a `ping` is expected): `ping` gets its
    /// empty result, anything else -32601, so the upstream never waits for an answer.
    async fn answer(&self, request: &Value) {
        let Some(session) = &self.session else { return };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let answer = if request.get("method").and_then(Value::as_str) == Some("ping") {
            json!({"jsonrpc": "2.0", "id": id, "result": {}})
        } else {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601,
                "message": "the gateway's listen session serves no requests but ping"}})
        };
        if let Err(e) = session.post(&answer).await {
            tracing::debug!(upstream = %self.upstream.as_str(), error = %e, "relay: answering an upstream's request failed");
        }
    }
}

/// Sends the `list_changed` notifications of the server's catalog changes the client
/// listens to.
async fn catalog_feed(
    mut changes: broadcast::Receiver<Arc<CatalogChange>>,
    server: Id,
    sub: Arc<Subscription>,
    out: mpsc::Sender<Frame>,
    activity: Arc<Activity>,
) {
    loop {
        let kinds = tokio::select! {
            c = changes.recv() => match c {
                Ok(change) if change.server == server.as_str() => change.kinds.clone(),
                Ok(_) => continue,
                // Fallen behind: every list may have changed.
                Err(broadcast::error::RecvError::Lagged(_)) => Kind::ALL.to_vec(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = out.closed() => return,
        };
        for text in kinds.into_iter().filter_map(|k| sub.list_changed(k)) {
            activity.touch();
            if out.send(Frame::Event(event(&text))).await.is_err() {
                return;
            }
        }
    }
}

/// Sends a comment frame every [`KEEPALIVE`] until the client is gone.
async fn keep_alive(out: mpsc::Sender<Frame>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(KEEPALIVE) => {}
            () = out.closed() => return,
        }
        let keepalive = Frame::Event(Bytes::from_static(KEEPALIVE_FRAME));
        if out.send(keepalive).await.is_err() {
            return;
        }
    }
}

/// Ends the listen gracefully (its result as the last frame) once nothing was relayed for
/// the relay's idle limit.
async fn close_when_idle(
    inner: Arc<Inner>,
    sub: Arc<Subscription>,
    out: mpsc::Sender<Frame>,
    activity: Arc<Activity>,
) {
    tokio::select! {
        () = activity.idle_for(inner.limits.listen_idle_timeout) => {}
        () = out.closed() => return,
    }
    inner.metrics.closed("idle");
    let _ = out.send(Frame::Last(event(&sub.closing()))).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn eras_match_the_upstreams_one_for_one() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RELAY_ERAS_HEADER, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(
            eras(&with("modern, legacy"), 2).unwrap(),
            [Era::Modern, Era::Legacy]
        );
        assert_eq!(eras(&HeaderMap::new(), 0).unwrap(), []);
        assert_eq!(eras(&with(""), 0).unwrap(), []);
        for (name, headers, count) in [
            ("missing", HeaderMap::new(), 1),
            ("fewer", with("modern"), 2),
            ("more", with("modern,legacy"), 1),
            ("unknown", with("modern,ancient"), 2),
        ] {
            let e = eras(&headers, count).unwrap_err();
            assert_eq!((e.label(), e.status().as_u16()), ("eras", 400), "{name}");
        }
    }

    #[test]
    fn the_first_message_of_a_json_or_sse_answer_is_read() {
        let json = br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25"}}"#;
        let sse = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{}}\r\n\r\n";
        assert_eq!(first_message(json).unwrap()["id"], 0);
        assert_eq!(first_message(sse).unwrap()["result"], json!({}));
        assert!(first_message(b"nothing").is_none());
    }

    fn sse(text: &str) -> reqwest::Response {
        reqwest::Response::from(
            axum::http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(text.to_owned())
                .unwrap(),
        )
    }

    const LIMITS: crate::sse::Limits = crate::sse::Limits {
        max_line_bytes: 256,
        max_event_bytes: 256,
    };

    #[tokio::test]
    async fn a_reader_yields_each_message_then_the_end_or_why_it_broke() {
        let mut r = Reader::new(
            sse(
                "data: {\"a\":1}\n\n: comment\n\ndata: not json\n\nevent: message\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\n",
            ),
            LIMITS,
        );
        assert_eq!(r.next().await, Ok(Some(json!({"a": 1}))));
        assert_eq!(r.next().await, Ok(Some(json!({"b": 2}))));
        assert_eq!(r.next().await, Ok(None));
        let mut big = Reader::new(sse(&format!("data: \"{}\"\n\n", "x".repeat(300))), LIMITS);
        assert_eq!(big.next().await, Err("sse_line_too_long"));
    }

    #[tokio::test]
    async fn an_upstream_listen_opens_on_its_acknowledgement_and_is_refused_by_its_error() {
        let relay = super::super::Relay::new("s", super::super::Limits::default());
        let server = Id::parse("id", "s").unwrap();
        let edge = Edge::new("127.0.0.1:9".parse().unwrap(), &server, &HeaderMap::new()).unwrap();
        let body = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"l","method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true}}}"#,
        );
        let sub = Subscription::parse(&body).unwrap();
        let opening = Opening {
            inner: &relay.inner,
            edge: &edge,
            server: &server,
            sub: &sub,
            body: &body,
            version: HeaderValue::from_static(MODERN_VERSION),
            limits: LIMITS,
        };
        let ack = r#"data: {"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{"notifications":{}}}"#;
        let change = r#"data: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
        // The acknowledgement is the upstream's, not the client's: taken, not relayed.
        let Ok(Opened::Stream(mut r)) = opening
            .acknowledged(Reader::new(sse(&format!("{ack}\n\n{change}\n\n")), LIMITS))
            .await
        else {
            panic!("not opened");
        };
        assert_eq!(
            r.next().await.unwrap().unwrap()["method"],
            "notifications/tools/list_changed"
        );
        // No acknowledgement first: nothing is lost.
        let Ok(Opened::Stream(mut r)) = opening
            .acknowledged(Reader::new(sse(&format!("{change}\n\n")), LIMITS))
            .await
        else {
            panic!("not opened");
        };
        assert_eq!(
            r.next().await.unwrap().unwrap()["method"],
            "notifications/tools/list_changed"
        );
        // The upstream refuses the listen: its error, as it wrote it, is the refusal.
        let error = r#"{"jsonrpc":"2.0","id":"l","error":{"code":-32603,"message":"Subscription limit reached"}}"#;
        let Err(Failure::Refused(refusal)) = opening
            .acknowledged(Reader::new(sse(&format!("data: {error}\n\n")), LIMITS))
            .await
        else {
            panic!("not refused");
        };
        assert_eq!(refusal.status, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Value>(&refusal.body).unwrap(),
            serde_json::from_str::<Value>(error).unwrap()
        );
        // Over before anything came.
        assert!(matches!(
            opening.acknowledged(Reader::new(sse(""), LIMITS)).await,
            Err(Failure::Failed(_))
        ));
    }

    #[tokio::test]
    async fn a_feed_relays_admitted_notifications_and_stops_at_the_upstream_s_result() {
        let relay = super::super::Relay::new("s", super::super::Limits::default());
        let sub = Arc::new(
            Subscription::parse(
                br#"{"jsonrpc":"2.0","id":9,"method":"subscriptions/listen","params":{"notifications":{"promptsListChanged":true}}}"#,
            )
            .unwrap(),
        );
        let (out, mut rx) = mpsc::channel(8);
        let feed = |era| Feed {
            inner: relay.inner.clone(),
            upstream: Id::parse("id", "u").unwrap(),
            era,
            sub: sub.clone(),
            out: out.clone(),
            activity: Arc::new(Activity::new()),
            session: None,
        };
        let stream = [
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":9,"result":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#,
        ]
        .map(|m| format!("data: {m}\n\n"))
        .concat();
        let why = feed(Era::Modern)
            .run(Reader::new(sse(&stream), LIMITS))
            .await;
        assert_eq!(why, "upstream_closed");
        let Some(Frame::Event(b)) = rx.recv().await else {
            panic!("no frame")
        };
        assert!(
            String::from_utf8_lossy(&b).contains(
                r#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":9}}}"#
            ),
            "{b:?}"
        );
        assert!(rx.try_recv().is_err(), "one frame only");
        // A 2025-era GET stream has no result: it runs to its end, its requests answered
        // (here, with no session, dropped), its notifications relayed.
        let why = feed(Era::Legacy)
            .run(Reader::new(sse(&stream), LIMITS))
            .await;
        assert_eq!(why, "upstream_ended");
        let frames = std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(frames, 2);
    }

    #[tokio::test]
    async fn the_stream_ends_after_its_last_frame_or_at_once_when_lost() {
        let relay = super::super::Relay::new("s", super::super::Limits::default());
        let permit = || {
            relay
                .inner
                .listen_caps
                .acquire(super::super::limits::ClientKey::Shared)
                .unwrap()
        };
        let listening = |permit| {
            relay.inner.metrics.listen_streams.inc();
            Listening {
                inner: relay.inner.clone(),
                tasks: Vec::new(),
                _permit: permit,
            }
        };
        // Graceful: every frame up to the last one, nothing after it.
        let (tx, rx) = mpsc::channel(8);
        tx.send(Frame::Event(Bytes::from_static(b"a")))
            .await
            .unwrap();
        tx.send(Frame::Last(Bytes::from_static(b"end")))
            .await
            .unwrap();
        tx.send(Frame::Event(Bytes::from_static(b"late")))
            .await
            .unwrap();
        let got: Vec<Bytes> = client_stream(rx, Arc::new(Notify::new()), listening(permit()))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(got, [Bytes::from_static(b"a"), Bytes::from_static(b"end")]);
        // Lost: ends at once, queued frames or not.
        let (tx, rx) = mpsc::channel(8);
        tx.send(Frame::Event(Bytes::from_static(b"a")))
            .await
            .unwrap();
        let end = Arc::new(Notify::new());
        end.notify_one();
        let got: Vec<Bytes> = client_stream(rx, end, listening(permit()))
            .map(Result::unwrap)
            .collect()
            .await;
        assert!(got.is_empty(), "{got:?}");
        // Both streams dropped: nothing counted any more.
        assert_eq!(relay.inner.metrics.listen_streams.get(), 0);
        assert!(tx.is_closed(), "the receiver went with the stream");
    }
}
