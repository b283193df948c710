//! The mcpgw proxy-wasm filter: a thin Envoy adapter; every decision is made in `mcpgw-core`.
//!
//! One [`Root`] per worker VM parses the configuration once in `on_configure` into a
//! [`Gate`] and hands each request's [`McpRequest`] an `Rc` to it. A request's life:
//!
//! 1. headers: the head is checked (methods, media types, protocol version, length); a POST
//!    pauses (`allow_on_headers_stop_iteration: true` is required) until the body decides;
//! 2. body: chunks are fed to the incremental parser until it is routable or complete;
//!    the verdict sets the route header (Envoy then picks the route again) or answers locally;
//! 3. response: JSON and SSE bodies are observed chunk by chunk as they stream through,
//!    counting JSON-RPC results and errors per method and tool.
//!
//! Callbacks never panic: every failure becomes a 500 with a JSON-RPC error and a metric.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[allow(unsafe_code)]
mod host;
mod metrics;

use mcpgw_core::edge::{self, Answer, Edge, Endpoint, RouteTo};
use mcpgw_core::header_map;
use mcpgw_core::jsonrpc::stream::{Body, MessageParser, Options, Progress};
use mcpgw_core::jsonrpc::{Kind, Message, write_json_string};
use mcpgw_core::policy::{ALLOWED_HTTP_METHODS, BodyVerdict, Gate, Head, HeadVerdict, Rejection};
use mcpgw_core::session::Session;
use mcpgw_core::snapshot::Snapshot;
use mcpgw_core::sniff::{BodyKind, sniff};
use mcpgw_core::sse::{Event, EventStream};
use mcpgw_core::trace;
use metrics::Metrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Per-VM state: the compiled policy, the virtual servers, and the metric registry.
#[derive(Default)]
struct Root {
    gate: Option<Rc<Gate>>,
    edge: Option<Rc<Edge>>,
    metrics: Rc<RefCell<Metrics>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let started = self.get_current_time();
        let config = self.get_plugin_configuration().unwrap_or_default();
        match Snapshot::from_config(&config) {
            Ok(mut snapshot) => {
                let (version, schema) = (snapshot.version.clone(), snapshot.schema);
                let servers = snapshot.servers.len();
                let tools: usize = snapshot.servers.values().map(|s| s.tools.len()).sum();
                self.edge = Some(Rc::new(Edge::take(&mut snapshot)));
                self.gate = Some(Rc::new(Gate::new(snapshot)));
                let took = self
                    .get_current_time()
                    .duration_since(started)
                    .unwrap_or_default();
                log::info!(
                    "mcpgw: configured snapshot {version:?} (schema {schema}, {servers} virtual servers, {tools} catalog tools, {} configuration bytes) in {:.1} ms",
                    config.len(),
                    took.as_secs_f64() * 1000.0
                );
                true
            }
            Err(err) => {
                log::error!("mcpgw: rejecting configuration: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gate = self.gate.clone()?;
        let edge = self.edge.clone()?;
        Some(Box::new(McpRequest::new(gate, edge, self.metrics.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the request side is doing.
enum Phase {
    /// Reading the body into the parser.
    Reading {
        parser: Box<MessageParser>,
        fed: usize,
    },
    /// Decided; the rest passes through.
    Done,
}

/// How the response body is observed.
enum Observer {
    None,
    /// Headers seen, no body byte yet: the body's first bytes decide (see `sniff`).
    Sniff,
    /// A single JSON message whose kind is known from its first `result` or `error`
    /// key: counted when the body ends, the rest not read.
    Settled(Kind),
    Json(MessageParser),
    Sse(EventStream),
}

/// One HTTP request through the filter.
struct McpRequest {
    gate: Rc<Gate>,
    edge: Rc<Edge>,
    /// The virtual server this request addresses (`/servers/{id}/mcp`), if any.
    server: Option<String>,
    /// The verified session of a virtual-server request that carried one.
    session: Option<Session>,
    /// Upstream calls this request waits for (opening or ending a session).
    pending: Option<Pending>,
    metrics: Rc<RefCell<Metrics>>,
    phase: Phase,
    protocol_version: Option<String>,
    /// (method, tool) of the request, for labelling the response.
    request: Option<(String, String)>,
    observer: Observer,
    /// The filter answered this request itself; its own reply is not observed.
    local_reply: bool,
    /// Handed to the session relay: its streams repeat messages that were counted on
    /// their own way through the filter, so they are not observed again.
    to_relay: bool,
    /// The request carried a `traceparent` header (it wins over `_meta`).
    has_traceparent: bool,
    /// The request carried an `mcp-session-id` header.
    has_session_header: bool,
    /// A virtual server's request body as read for parsing, kept for the rename so it is
    /// not asked of the host twice.
    body: Vec<u8>,
}

/// The request headers the filter reads, borrowed from the header map.
#[derive(Default)]
struct RequestHead<'h> {
    method: Option<&'h [u8]>,
    path: Option<&'h [u8]>,
    session_id: Option<&'h [u8]>,
    content_type: Option<&'h [u8]>,
    accept: Vec<&'h [u8]>,
    protocol_version: Option<&'h [u8]>,
    content_length: Option<&'h [u8]>,
    /// `mcpgw-upstream`: the one upstream whose stream a GET asks for.
    upstream: Option<&'h [u8]>,
    traceparent: bool,
}

impl<'h> RequestHead<'h> {
    /// Records `name: value` if it is one the filter reads (names arrive lower-cased).
    fn take(&mut self, name: &[u8], value: &'h [u8]) {
        let slot = match name {
            b":method" => &mut self.method,
            b":path" => &mut self.path,
            b"content-type" => &mut self.content_type,
            b"mcp-protocol-version" => &mut self.protocol_version,
            b"mcp-session-id" => &mut self.session_id,
            b"content-length" => &mut self.content_length,
            name if name == edge::UPSTREAM_HEADER.as_bytes() => &mut self.upstream,
            b"accept" => {
                self.accept.push(value);
                return;
            }
            b"traceparent" => {
                self.traceparent = true;
                return;
            }
            _ => return,
        };
        // A repeated singleton header keeps its first value, as Envoy's own lookups do.
        slot.get_or_insert(value);
    }

    /// `accept`; repeated headers mean their comma-joined list (RFC 9110, 5.3).
    fn accept(&self) -> Option<std::borrow::Cow<'h, str>> {
        match self.accept.as_slice() {
            [] => None,
            [one] => Some(lossy(one)),
            many => Some(std::borrow::Cow::Owned(
                many.iter().map(|v| lossy(v)).collect::<Vec<_>>().join(", "),
            )),
        }
    }
}

/// Counts a response message of `kind` to `request` (method, tool); server-to-client
/// requests and notifications inside a stream are not responses.
fn count_response(metrics: &RefCell<Metrics>, request: Option<&(String, String)>, kind: Kind) {
    let (method, tool) = request.map_or(("", ""), |(m, t)| (m.as_str(), t.as_str()));
    match kind {
        Kind::Result => metrics.borrow_mut().response(method, tool, false),
        Kind::Error => metrics.borrow_mut().response(method, tool, true),
        Kind::Request | Kind::Notification => {}
    }
}

/// A header value as text; bytes that are not UTF-8 become U+FFFD, so they can never
/// match a media type or version and are answered as such.
fn lossy(value: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(value)
}

impl Context for McpRequest {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        let Some((upstream, stage)) = pending.calls.remove(&token) else {
            self.pending = Some(pending);
            return;
        };
        let status = self
            .get_http_call_response_header_bytes(":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        if !ok {
            log::warn!(
                "mcpgw: upstream {upstream}: {} answered {status:?}",
                stage.label()
            );
        }
        if stage == Stage::Initialize && ok {
            let sid = self
                .get_http_call_response_header_bytes("mcp-session-id")
                .and_then(|v| String::from_utf8(v).ok())
                .filter(|v| !v.is_empty());
            // No session id: a stateless upstream, nothing to remember.
            if let Some(sid) = sid {
                let notification = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
                if let Some(call) = self.call_upstream(
                    &upstream,
                    Some(&sid),
                    &pending.version,
                    "POST",
                    Some(notification),
                ) {
                    pending
                        .calls
                        .insert(call, (upstream.clone(), Stage::Initialized));
                }
                pending.sessions.insert(upstream, sid);
            }
        }
        if pending.calls.is_empty() {
            self.finish_pending(pending);
        } else {
            self.pending = Some(pending);
        }
    }
}

/// Calls to upstreams a virtual server's request waits for.
struct Pending {
    /// What completes when every call has answered.
    kind: PendingKind,
    /// Protocol version negotiated with the client.
    version: String,
    /// Outstanding calls: token → (upstream id, what it is).
    calls: HashMap<u32, (String, Stage)>,
    /// Upstream sessions opened so far.
    sessions: BTreeMap<String, String>,
}

enum PendingKind {
    /// `initialize`: reply with this result and the new session's token.
    Initialize { reply: Vec<u8> },
    /// `DELETE`: the client's session ends.
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Initialize,
    Initialized,
    Delete,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Initialize => "initialize",
            Stage::Initialized => "notifications/initialized",
            Stage::Delete => "DELETE",
        }
    }
}

/// How long the filter waits for an upstream while opening or ending a session.
const UPSTREAM_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl McpRequest {
    fn new(gate: Rc<Gate>, edge: Rc<Edge>, metrics: Rc<RefCell<Metrics>>) -> Self {
        McpRequest {
            gate,
            edge,
            server: None,
            session: None,
            pending: None,
            metrics,
            phase: Phase::Done,
            protocol_version: None,
            request: None,
            observer: Observer::None,
            local_reply: false,
            to_relay: false,
            has_traceparent: false,
            has_session_header: false,
            body: Vec::new(),
        }
    }

    fn reject(&mut self, r: &Rejection) -> Action {
        self.phase = Phase::Done;
        self.local_reply = true;
        self.metrics.borrow_mut().rejected(r.reason);
        let body = r.body();
        let mut headers = vec![("content-type", "application/json")];
        if r.status == 405 {
            let allow = if self.server.is_some() {
                edge::ALLOWED_HTTP_METHODS
            } else {
                ALLOWED_HTTP_METHODS
            };
            headers.push(("allow", allow));
        }
        self.send_http_response(u32::from(r.status), headers, Some(&body));
        Action::Pause
    }

    fn internal_error(&mut self, what: &str) -> Action {
        log::error!("mcpgw: internal error: {what}");
        self.metrics.borrow_mut().internal_error();
        self.reject(&Rejection::internal(what))
    }

    /// Applies the verdict for `messages`.
    fn decide(&mut self, messages: &[Message], batch: bool, body_size: usize) -> Action {
        {
            let mut m = self.metrics.borrow_mut();
            for msg in messages {
                if matches!(msg.kind, Kind::Request | Kind::Notification) {
                    m.request(
                        msg.method.as_deref().unwrap_or_default(),
                        msg.name.as_deref(),
                    );
                }
            }
        }
        match self
            .gate
            .check_messages(messages, batch, self.protocol_version.as_deref())
        {
            BodyVerdict::Reject(r) => self.reject(&r),
            BodyVerdict::Forward { .. } if self.server.is_some() => match messages {
                [only] if !batch => self.serve_edge(only, body_size),
                _ => self.reject(&edge::batch_rejected()),
            },
            BodyVerdict::Forward { cluster } => {
                self.phase = Phase::Done;
                if let [only] = messages
                    && only.kind == Kind::Request
                {
                    let method = only.method.clone().unwrap_or_default();
                    let tool = if method == "tools/call" {
                        only.name.clone().unwrap_or_default()
                    } else {
                        String::new()
                    };
                    self.request = Some((method, tool));
                }
                if let [only] = messages {
                    self.propagate_trace_context(only);
                }
                if let Some(cluster) = cluster {
                    let gate = Rc::clone(&self.gate);
                    // Envoy's wasm host clears the route cache itself when a filter
                    // changes a request header, so the route is picked again with this
                    // one (the e2e routing tests prove it). An explicit `clear_route_cache`
                    // foreign call on top cost 1-2% of requests/s and changed nothing.
                    self.set_http_request_header(gate.route_header(), Some(&cluster));
                }
                Action::Continue
            }
        }
    }
}

impl McpRequest {
    /// Answers or routes a request to a virtual server.
    fn serve_edge(&mut self, msg: &Message, body_size: usize) -> Action {
        self.phase = Phase::Done;
        let edge = Rc::clone(&self.edge);
        let Some(server) = self.server.as_deref() else {
            return self.internal_error("virtual server missing");
        };
        match edge.answer(server, msg) {
            None => self.reject(&edge::unknown_server(server)),
            Some(Answer::Reply(body))
                if msg.method.as_deref() == Some("initialize") && edge.session_key().is_some() =>
            {
                let version = edge::negotiate(msg.protocol_version.as_deref()).to_owned();
                self.open_session(body, version)
            }
            Some(Answer::Reply(body)) => {
                self.local_reply = true;
                self.send_http_response(
                    200,
                    vec![("content-type", "application/json")],
                    Some(&body),
                );
                Action::Pause
            }
            Some(Answer::Accepted) => {
                self.local_reply = true;
                self.send_http_response(202, vec![], None);
                Action::Pause
            }
            Some(Answer::Route(to)) => self.route_upstream(msg, &to, body_size),
        }
    }

    /// Initializes every upstream of the virtual server, then answers `initialize` with
    /// `reply` and a token holding the upstream sessions.
    fn open_session(&mut self, reply: Vec<u8>, version: String) -> Action {
        self.local_reply = true;
        let server = self.server.clone().unwrap_or_default();
        let edge = Rc::clone(&self.edge);
        let mut pending = Pending {
            kind: PendingKind::Initialize { reply },
            version,
            calls: HashMap::new(),
            sessions: BTreeMap::new(),
        };
        for (id, _) in edge.upstreams_of(&server) {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":"mcpgw-init","method":"initialize","params":{{"protocolVersion":"{}","capabilities":{{}},"clientInfo":{{"name":"mcpgw","version":"{}"}}}}}}"#,
                pending.version,
                env!("CARGO_PKG_VERSION")
            );
            if let Some(call) =
                self.call_upstream(id, None, &pending.version, "POST", Some(body.as_bytes()))
            {
                pending
                    .calls
                    .insert(call, (id.to_owned(), Stage::Initialize));
            }
        }
        if pending.calls.is_empty() {
            self.finish_pending(pending);
        } else {
            self.pending = Some(pending);
        }
        Action::Pause
    }

    /// Ends the client's session at every upstream that holds part of it.
    fn end_session(&mut self, session: Session) -> Action {
        self.local_reply = true;
        let mut pending = Pending {
            kind: PendingKind::Delete,
            version: session.protocol_version,
            calls: HashMap::new(),
            sessions: BTreeMap::new(),
        };
        for (id, sid) in &session.upstreams {
            if let Some(call) = self.call_upstream(id, Some(sid), &pending.version, "DELETE", None)
            {
                pending.calls.insert(call, (id.clone(), Stage::Delete));
            }
        }
        if pending.calls.is_empty() {
            self.finish_pending(pending);
        } else {
            self.pending = Some(pending);
        }
        Action::Pause
    }

    /// The client's GET stream: the stream of the upstream it picks (`mcpgw-upstream`) or
    /// of its only stateful upstream goes straight there; several are merged by the relay,
    /// which opens one picked GET per upstream back through this listener.
    fn server_stream(&mut self, session: &Session, pick: Option<&str>) -> Action {
        let chosen = match pick {
            Some(id) => match session.upstreams.get_key_value(id) {
                Some(found) => found,
                None => return self.reject(&edge::unknown_stream(id)),
            },
            None => match session.upstreams.iter().next() {
                Some(only) if session.upstreams.len() == 1 => only,
                _ => {
                    let ids: Vec<&str> = session.upstreams.keys().map(String::as_str).collect();
                    self.set_http_request_header(
                        edge::RELAY_UPSTREAMS_HEADER,
                        Some(&ids.join(",")),
                    );
                    return self
                        .hand_to_relay("the GET stream of a session over several upstreams");
                }
            },
        };
        let (id, sid) = chosen;
        let edge = Rc::clone(&self.edge);
        let Some(up) = edge.upstream(id) else {
            return self.reject(&edge::unknown_stream(id));
        };
        self.set_http_request_header(edge::UPSTREAM_HEADER, None);
        self.set_http_request_header("mcp-session-id", Some(sid));
        self.point_at(up);
        Action::Continue
    }

    /// Sends the request, unread, to the session relay's cluster (`what` names the feature
    /// for the 404 when no relay is configured).
    fn hand_to_relay(&mut self, what: &str) -> Action {
        let edge = Rc::clone(&self.edge);
        let Some(cluster) = edge.relay() else {
            return self.reject(&edge::no_relay(what));
        };
        self.phase = Phase::Done;
        self.to_relay = true;
        let gate = Rc::clone(&self.gate);
        self.set_http_request_header(gate.route_header(), Some(cluster));
        Action::Continue
    }

    /// Sends the request to `up`: its path, its authority, its cluster (the route header).
    fn point_at(&mut self, up: &mcpgw_core::catalog::Upstream) {
        self.set_http_request_header(":path", Some(&up.path));
        if let Some(authority) = &up.authority {
            self.set_http_request_header(":authority", Some(authority));
        }
        let gate = Rc::clone(&self.gate);
        self.set_http_request_header(gate.route_header(), Some(&up.cluster));
    }

    /// Starts a call to upstream `id` (None if it cannot be made; logged).
    fn call_upstream(
        &self,
        id: &str,
        session: Option<&str>,
        version: &str,
        method: &str,
        body: Option<&[u8]>,
    ) -> Option<u32> {
        let edge = Rc::clone(&self.edge);
        let Some(up) = edge.upstream(id) else {
            log::warn!("mcpgw: upstream {id} is not in the snapshot");
            return None;
        };
        let mut headers = vec![
            (":method", method),
            (":path", up.path.as_str()),
            (
                ":authority",
                up.authority.as_deref().unwrap_or(up.cluster.as_str()),
            ),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", version),
        ];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        if let Some(sid) = session {
            headers.push(("mcp-session-id", sid));
        }
        match self.dispatch_http_call(&up.cluster, headers, body, vec![], UPSTREAM_CALL_TIMEOUT) {
            Ok(token) => Some(token),
            Err(status) => {
                log::warn!(
                    "mcpgw: cannot call upstream {id} (cluster {}): {status:?}",
                    up.cluster
                );
                None
            }
        }
    }

    /// Every upstream call answered: reply to the client.
    fn finish_pending(&mut self, pending: Pending) {
        match pending.kind {
            PendingKind::Initialize { reply } => {
                let token = self.edge.session_key().map(|key| {
                    key.seal(&Session {
                        server: self.server.clone().unwrap_or_default(),
                        upstreams: pending.sessions,
                        protocol_version: pending.version,
                    })
                });
                let mut headers = vec![("content-type", "application/json")];
                if let Some(token) = &token {
                    headers.push(("mcp-session-id", token.as_str()));
                }
                self.send_http_response(200, headers, Some(&reply));
            }
            PendingKind::Delete => self.send_http_response(200, vec![], None),
        }
    }

    /// Sends a virtual server's call to the upstream that owns the entry.
    fn route_upstream(&mut self, msg: &Message, to: &RouteTo<'_>, body_size: usize) -> Action {
        if let Some(((start, end), name)) = to.rename {
            let body = if self.body.len() == body_size {
                std::mem::take(&mut self.body)
            } else if let Some(body) = self.get_http_request_body(0, body_size) {
                body
            } else {
                return self.internal_error("request body unavailable");
            };
            let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
                return self.internal_error("name span out of range");
            };
            let (Some(head), Some(tail)) = (body.get(..start), body.get(end..)) else {
                return self.internal_error("name span outside the body");
            };
            let mut rewritten = Vec::with_capacity(body.len() + name.len());
            rewritten.extend_from_slice(head);
            write_json_string(&mut rewritten, name);
            rewritten.extend_from_slice(tail);
            self.set_http_request_body(0, body_size, &rewritten);
            self.set_http_request_header("content-length", Some(&rewritten.len().to_string()));
        }
        // Not needed past this point; a streamed response may keep the request alive long.
        self.body = Vec::new();
        let method = msg.method.clone().unwrap_or_default();
        let tool = if method == "tools/call" {
            msg.name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        self.request = Some((method, tool));
        self.propagate_trace_context(msg);
        // The client's token never reaches an upstream; the upstream's own session does.
        let upstream_session = self
            .session
            .as_ref()
            .and_then(|s| s.upstreams.get(to.upstream_id).cloned());
        // Removing a header the request does not carry would still cost a host call.
        if upstream_session.is_some() || self.has_session_header {
            self.set_http_request_header("mcp-session-id", upstream_session.as_deref());
        }
        self.point_at(to.upstream);
        Action::Continue
    }

    /// Copies a well-formed `params._meta` trace context to the headers, unless the
    /// request already carries one.
    fn propagate_trace_context(&mut self, m: &Message) {
        let Some(parent) = m
            .traceparent
            .as_deref()
            .filter(|t| trace::is_valid_traceparent(t))
        else {
            return;
        };
        if self.has_traceparent {
            return;
        }
        self.set_http_request_header("traceparent", Some(parent));
        if let Some(state) = m
            .tracestate
            .as_deref()
            .filter(|t| trace::is_valid_tracestate(t))
        {
            self.set_http_request_header("tracestate", Some(state));
        }
    }
}

impl HttpContext for McpRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // One host call for the whole map instead of one per header: each call crosses the
        // VM boundary twice (the value is copied in through the module's allocator). Read
        // in place, as bytes: the SDK's getters copy every header, and its string getters
        // panic on a non-UTF-8 value (obs-text is legal HTTP), which would kill the VM for
        // every later request on this worker.
        let Ok(headers) = host::request_header_map() else {
            return self.internal_error("request headers unavailable");
        };
        let mut fields = RequestHead::default();
        for (name, value) in header_map::pairs(&headers) {
            fields.take(name, value);
        }
        self.has_traceparent = fields.traceparent;
        self.has_session_header = fields.session_id.is_some();
        self.protocol_version = fields.protocol_version.map(|v| lossy(v).into_owned());
        let method = fields.method.map(lossy).unwrap_or_default();
        let content_type = fields.content_type.map(lossy);
        let accept = fields.accept();
        let content_length = fields.content_length.map(lossy);
        let head = Head {
            method: &method,
            content_type: content_type.as_deref(),
            accept: accept.as_deref(),
            protocol_version: self.protocol_version.as_deref(),
            content_length: content_length.as_deref(),
        };
        if let Some(path) = fields.path.map(lossy)
            && let Some(endpoint) = edge::endpoint(&path)
            && self.edge.serves_any()
        {
            match endpoint {
                Endpoint::Mcp(id) if self.edge.has_server(id) => self.server = Some(id.to_owned()),
                // The legacy SSE pair is the relay's: it turns each posted message into a
                // streamable HTTP request to `/servers/{id}/mcp` through this listener,
                // where this filter checks it like any other.
                Endpoint::Sse(id) | Endpoint::Message(id) if self.edge.has_server(id) => {
                    return self.hand_to_relay("the legacy SSE transport");
                }
                Endpoint::Mcp(id)
                | Endpoint::Sse(id)
                | Endpoint::Message(id)
                | Endpoint::Other(id) => {
                    return self.reject(&edge::unknown_server(id));
                }
            }
            let edge = Rc::clone(&self.edge);
            if let (Some(key), Some(token), Some(server)) = (
                edge.session_key(),
                fields.session_id,
                self.server.as_deref(),
            ) {
                match key.open(&lossy(token), server) {
                    Ok(session) => self.session = Some(session),
                    Err(err) => return self.reject(&edge::unknown_session(&err.to_string())),
                }
            }
            match (method.as_ref(), self.session.take()) {
                ("POST", session) => self.session = session,
                ("DELETE", Some(session)) => return self.end_session(session),
                // The GET stream carries server-initiated messages.
                ("GET", Some(session)) if !session.upstreams.is_empty() => {
                    let pick = fields.upstream.map(lossy);
                    return self.server_stream(&session, pick.as_deref());
                }
                // A DELETE without a session has nothing to end, and a GET without one
                // (or with only stateless upstreams) has no stream to relay: the MCP spec
                // lets a server answer both with 405.
                _ => return self.reject(&edge::method_not_allowed(&method)),
            }
        }
        match self.gate.check_head(&head) {
            HeadVerdict::Reject(r) => self.reject(&r),
            HeadVerdict::Pass => Action::Continue,
            HeadVerdict::InspectBody { early_terminate } => {
                let mut opts = self.gate.parse_options();
                // A virtual server's request is read whole: its name may be rewritten.
                opts.stop_when_routable = early_terminate && self.server.is_none();
                self.phase = Phase::Reading {
                    parser: Box::new(MessageParser::new(opts)),
                    fed: 0,
                };
                if end_of_stream {
                    // A POST without a body.
                    return self.on_http_request_body(0, true);
                }
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Phase::Reading { mut parser, fed } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Action::Continue;
        };
        if body_size as u64 > self.gate.max_body_bytes() {
            return self.reject(&Rejection::too_large(self.gate.max_body_bytes()));
        }
        // While paused, Envoy buffers and `body_size` is everything so far: read the new part.
        let progress = if body_size > fed {
            let Some(chunk) = self.get_http_request_body(fed, body_size - fed) else {
                return self.internal_error("request body unavailable");
            };
            let progress = parser.feed(&chunk);
            if self.server.is_some() {
                if self.body.is_empty() {
                    self.body = chunk;
                } else {
                    self.body.extend_from_slice(&chunk);
                }
            }
            progress
        } else {
            Ok(Progress::NeedMore)
        };
        match progress {
            Err(err) => self.reject(&Rejection::from_parse(&err)),
            Ok(Progress::Routable) => match parser.routable() {
                Some(msg) => self.decide(&[msg], false, body_size),
                None => self.internal_error("routable request missing"),
            },
            Ok(_) if end_of_stream => match parser.finish() {
                Ok(Body::Single(m)) => self.decide(&[m], false, body_size),
                Ok(Body::Batch(ms)) => self.decide(&ms, true, body_size),
                Err(err) => self.reject(&Rejection::from_parse(&err)),
            },
            Ok(_) => {
                self.phase = Phase::Reading {
                    parser,
                    fed: body_size.max(fed),
                };
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.local_reply || self.to_relay {
            return Action::Continue;
        }
        if self.server.is_some() {
            // A virtual server's client holds the gateway's token, not an upstream's session.
            self.set_http_response_header("mcp-session-id", None);
        }
        // The body's first bytes tell JSON from an event stream; reading `content-type`
        // from the host would cost a host call per response.
        self.observer = Observer::Sniff;
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.observer {
            Observer::None => return Action::Continue,
            // The kind is known: the rest of the body is not read, only its end awaited (a
            // response cut short is not counted).
            Observer::Settled(kind) => {
                if end_of_stream {
                    self.observer = Observer::None;
                    count_response(&self.metrics, self.request.as_ref(), kind);
                }
                return Action::Continue;
            }
            Observer::Sniff | Observer::Json(_) | Observer::Sse(_) => {}
        }
        let chunk = if body_size > 0 {
            self.get_http_response_body(0, body_size)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if matches!(self.observer, Observer::Sniff) {
            self.observer = match sniff(&chunk) {
                Some(BodyKind::Json) => Observer::Json(MessageParser::new(Options {
                    // Responses are observed, not validated: what the counters need is
                    // read, the rest skimmed, and a single message is read only up to
                    // its `result` or `error`.
                    skim: true,
                    settle: true,
                    ..Options::default()
                })),
                Some(BodyKind::EventStream) => Observer::Sse(EventStream::new()),
                Some(BodyKind::Other) => Observer::None,
                // Only whitespace so far, which neither parser needs.
                None if end_of_stream => Observer::None,
                None => Observer::Sniff,
            };
        }
        let (metrics, request) = (&self.metrics, self.request.as_ref());
        let count = |messages: &[Message]| {
            for msg in messages {
                count_response(metrics, request, msg.kind);
            }
        };
        match &mut self.observer {
            Observer::Json(parser) => match parser.feed(&chunk) {
                // A malformed upstream body is not ours to fix; stop observing it.
                Err(_) => self.observer = Observer::None,
                Ok(Progress::Settled(kind)) if end_of_stream => {
                    self.observer = Observer::None;
                    count_response(metrics, request, kind);
                }
                Ok(Progress::Settled(kind)) => self.observer = Observer::Settled(kind),
                Ok(_) if end_of_stream => {
                    if let Observer::Json(parser) =
                        std::mem::replace(&mut self.observer, Observer::None)
                        && let Ok(body) = parser.finish()
                    {
                        count(body.messages());
                    }
                }
                Ok(_) => {}
            },
            Observer::Sse(stream) => stream.feed(&chunk, |event| {
                if let Event::Messages(ms) = event {
                    count(&ms);
                }
            }),
            Observer::None | Observer::Sniff | Observer::Settled(_) => {}
        }
        Action::Continue
    }
}
