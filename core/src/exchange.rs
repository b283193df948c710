//! One HTTP request through the filter, as a pure state machine.
//!
//! The filter is its executor: it hands the [`Exchange`] what the host delivers (the request
//! head, body chunks, the answers of calls it made, the response) and carries out the
//! [`Step`] it gets back (answer locally, rewrite and forward, call upstreams, read more).
//! Every decision the filter used to make lives here, where it is tested natively
//! (`exchange/tests.rs`); what has no effect on the request's course (metrics, logs) goes
//! through the small [`Host`] trait.
//!
//! A request's life:
//! 1. head ([`Exchange::on_request_head`]): virtual-server endpoints are resolved (an
//!    unknown one is refused, the legacy SSE pair handed to the relay), a session token is
//!    verified, `GET`/`DELETE` of a session are served, and the head is checked (methods,
//!    media types, protocol version, length); a `POST` then reads its body;
//! 2. body ([`Exchange::on_request_body`]): chunks go into the incremental parser until the
//!    request is routable or complete; then the policy decides, and a virtual server's
//!    request is answered from the catalog, routed to the upstream that owns it (name
//!    rewritten), or answered after upstream calls (`initialize` opening sessions);
//! 3. calls ([`Exchange::on_call_answer`]): upstream sessions are opened lazily, on the
//!    first request that needs them (`exchange/sessions.rs`), and ended with the client's
//!    session; the request goes on, or is answered, once they have answered;
//! 4. response ([`Exchange::on_response_head`], [`Exchange::on_response_body`]): JSON and
//!    SSE bodies are observed as they stream through and counted per method and tool.
//!
//! Guardrail plugins ([`crate::guard`]) are a stage of 2: their pre hooks run on a single
//! request once the policy lets it through and before it is routed (a block answers it, a
//! mask rewrites its arguments), and decide which post hooks its response goes through in
//! 4 (`exchange/guard.rs`, `exchange/rewrite.rs`).
//! Identity ([`crate::auth`]) is a stage of 1 and 2 (`exchange/auth.rs`): OAuth protected
//! resource metadata is answered at the head, a request to a virtual server with `auth` is
//! authenticated before its session is resumed, and authorized before the edge answers or
//! routes it; lists show only what its principal may use.

mod auth;
mod bridge;
mod era;
mod external;
mod external_post;
mod guard;
mod head;
mod limits;
mod listen;
mod observe;
mod rewrite;
mod sessions;
mod upstream_identity;

pub use external_post::Held;
pub use head::RequestHead;
pub use limits::Caller;
pub use sessions::sweep;

use std::rc::Rc;

use crate::config::Config;
use crate::edge::{self, Answer, Endpoint, RouteTo};
use crate::jsonrpc::stream::{Body, MessageParser, Progress};
use crate::jsonrpc::{Kind, Message};
use crate::mcp::{self, Era, Method};
use crate::metrics::ToolLabel;
use crate::mirror;
use crate::policy::{BodyVerdict, HeadVerdict};
use crate::reason::{Reason, Rejection};
use crate::session::Claims;
use crate::session::table::Record;
use crate::trace;
use observe::Observer;
use sessions::Pending;

/// What the exchange needs of its host besides the request itself: counters, logs, the
/// clock, randomness and the per-Envoy shared data the session table lives in.
pub trait Host {
    /// A request or notification of `method` (and its tool, for `tools/call`) was seen.
    fn count_request(&mut self, method: &str, tool: ToolLabel<'_>);
    /// A response message to a request of `method` (and its tool) was seen.
    fn count_response(&mut self, method: &str, tool: ToolLabel<'_>, error: bool);
    /// The filter answered a request itself with an error.
    fn count_rejected(&mut self, reason: Reason);
    /// The filter failed internally.
    fn count_internal_error(&mut self);
    /// Logs a warning.
    fn warn(&mut self, message: &str);
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
    /// Milliseconds since the Unix epoch (the limits' clock).
    fn now_ms(&self) -> u64 {
        self.now().saturating_mul(1000)
    }
    /// Limit `limit` (of `kind`: `rate`, `concurrency`, `global`) refused a request.
    fn count_limited(&mut self, limit: &str, kind: &str) {
        let _ = (limit, kind);
    }
    /// The rate-limit service answered (`outcome`: `ok`, `over_limit`) or failed
    /// (`failed`) after `ms` milliseconds.
    fn observe_limit_service(&mut self, ms: u64, outcome: &str) {
        let _ = (ms, outcome);
    }
    /// Fills `out` from a cryptographically secure random source; `false` if it cannot.
    fn random(&mut self, out: &mut [u8]) -> bool;
    /// Guardrail plugin `plugin` did `effect` (`blocked`, `masked`, `would_block`,
    /// `would_mask`) at `hook`.
    fn count_plugin(&mut self, plugin: &str, hook: &str, effect: &str) {
        let _ = (plugin, hook, effect);
    }
    /// A shared-data value and its compare-and-swap token.
    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores a shared-data value unless another writer changed it since `cas` was read;
    /// `false` when one did (read again and retry).
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// A request header the exchange sets or removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// The policy's route header (`policy.route_header`): the cluster Envoy's route picks.
    Route,
    /// Any other header, by its (lowercase) name.
    Named(&'static str),
    /// A header an external guardrail added (a checked, lowercase name).
    Added(String),
}

/// Rewrites of a request that goes on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forward {
    /// Headers to set (`Some`) or remove (`None`), in order.
    pub headers: Vec<(Header, Option<String>)>,
    /// A new body, replacing the one received whole (`content-length` is among `headers`).
    pub body: Option<Vec<u8>>,
}

/// A local answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(&'static str, String)>,
    /// Response body (none for 202).
    pub body: Option<Vec<u8>>,
}

/// An HTTP call the filter makes to an upstream on the request's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Names the call in [`Exchange::on_call_answer`].
    pub tag: u32,
    /// The Envoy cluster to call.
    pub cluster: String,
    /// Request headers, pseudo-headers included.
    pub headers: Vec<(&'static str, String)>,
    /// Request body.
    pub body: Option<Vec<u8>>,
    /// How long the call may take.
    pub timeout_ms: u64,
}

/// What came back from a [`Call`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallAnswer {
    /// HTTP status; `None` when the call failed (could not be made, timed out, reset).
    pub status: Option<u16>,
    /// The `Mcp-Session-Id` response header.
    pub session_id: Option<String>,
    /// The body, for the calls that read it ([`Exchange::reads_call_body`]).
    pub body: Option<Vec<u8>>,
}

/// A gRPC call the filter makes on the request's behalf (the rate-limit service's
/// `ShouldRateLimit`, an external guardrail's `Check`); its answer goes to
/// [`Exchange::on_check_answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// The Envoy cluster to call.
    pub cluster: String,
    /// The gRPC service.
    pub service: &'static str,
    /// Its method.
    pub method: &'static str,
    /// The request message (protobuf).
    pub message: Vec<u8>,
    /// How long the call may take.
    pub timeout_ms: u64,
}

/// What the filter does next with the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Let the request go on unchanged.
    Continue,
    /// Hold the request and deliver more of its body.
    ReadBody,
    /// Answer the client with this; the request goes no further.
    Reply(Reply),
    /// Rewrite the request and let it go on.
    Forward(Forward),
    /// Make these calls and hold the request; each answer goes to
    /// [`Exchange::on_call_answer`] (a call that cannot be made is answered with
    /// [`CallAnswer::default`]).
    Call(Vec<Call>),
    /// Calls are in flight: keep holding the request.
    Wait,
    /// Make this gRPC call and hold the request; its answer goes to
    /// [`Exchange::on_check_answer`] (a call that cannot be made is answered with `None`).
    Check(GrpcCall),
}

/// What the filter does with the response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Remove the upstream's `Mcp-Session-Id`: the client holds the gateway's token.
    pub remove_session_id: bool,
    /// Remove `Content-Length`: the body will be rewritten to another length.
    pub remove_content_length: bool,
}

/// How much of the response body the exchange needs to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyNeed {
    /// Nothing: don't call [`Exchange::on_response_body`].
    Nothing,
    /// Only the end (call with an empty chunk; the bytes are not read).
    End,
    /// Every chunk's bytes.
    Bytes,
}

/// How long the filter waits for an upstream while opening or ending a session.
pub const UPSTREAM_CALL_TIMEOUT_MS: u64 = 5_000;

/// Where the request stands.
enum Phase {
    /// Before the head.
    Head,
    /// Reading the body into the parser; `fed` bytes so far.
    Reading {
        parser: Box<MessageParser>,
        fed: usize,
    },
    /// Waiting for upstream calls.
    Calling(Pending),
    /// Waiting for the rate-limit service to admit a virtual server's request.
    Limiting(limits::Checking),
    /// Waiting for an external guardrail's verdict on a request.
    Guarding(Box<external::Guarding>),
    /// Waiting for the token endpoint to exchange the principal's token.
    Exchanging(Box<upstream_identity::Waiting>),
    /// Decided and forwarded: the response is the upstream's.
    Forwarded,
    /// Handed to the session relay, whose streams repeat messages counted on their own way
    /// through the filter: the response is not observed.
    Relayed,
    /// Answered locally: the filter's own reply is not observed.
    Replied,
}

/// Credentials the client sent, which never travel upstream unless the policy says so.
#[derive(Debug, Clone, Copy, Default)]
struct Credentials {
    authorization: bool,
    proxy_authorization: bool,
    cookie: bool,
    /// The verified token payload `jwt_authn` added ([`crate::auth::PAYLOAD_HEADER`]).
    verified_payload: bool,
}

/// The tool a request names, kept for labelling its response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tool {
    None,
    Known(String),
    Unvetted(String),
    Unknown,
}

impl Tool {
    fn label(&self) -> ToolLabel<'_> {
        match self {
            Tool::None => ToolLabel::None,
            Tool::Known(n) => ToolLabel::Known(n),
            Tool::Unvetted(n) => ToolLabel::Unvetted(n),
            Tool::Unknown => ToolLabel::Unknown,
        }
    }
}

/// One request through the filter. See the module docs.
pub struct Exchange {
    config: Rc<Config>,
    phase: Phase,
    /// The virtual server this request addresses (`/servers/{id}/mcp`), if any.
    server: Option<String>,
    /// The verified session of a virtual-server request that carried one.
    session: Option<Claims>,
    /// The session's record in the session table, as last read or written.
    record: Option<Record>,
    /// `MCP-Protocol-Version` of the request.
    protocol_version: Option<String>,
    /// The request carried a `traceparent` header (it wins over `_meta`).
    has_traceparent: bool,
    /// The request carried an `mcp-session-id` header.
    has_session_header: bool,
    credentials: Credentials,
    /// A virtual server's request body as read for parsing, kept for the rename.
    body: Vec<u8>,
    /// (method, tool) of the request, for labelling its response.
    labels: Option<(Method, Tool)>,
    observer: Observer,
    next_tag: u32,
    /// The headers a 2026-era request mirrors from its body.
    mirrored: era::Mirrored,
    /// The request's era, once its body is read.
    era: Era,
    /// A 2026-era client's call went to a 2025-era upstream: results need the fields the
    /// client's era requires.
    bridging: bool,
    /// Rank of the least severe log message a bridged call's client asked for (`None`:
    /// it asked for none).
    bridged_log_floor: Option<u8>,
    /// The upstream a virtual server's request was sent to, inside the client's session.
    routed_upstream: Option<String>,
    /// Rewrites the response, when something in it must change.
    rewriter: Option<rewrite::Rewriter>,
    /// The upstream a stream request picks (`mcpgw-upstream`): the relay's, fanning in.
    pick: Option<String>,
    /// The tool of the request (a single message), as counted.
    counted_tool: Option<Tool>,
    /// The body is kept as it is read (a virtual server's, or when plugins read requests).
    keep_body: bool,
    /// The guardrail post hooks the response goes through.
    post_plan: Option<crate::guard::PostPlan>,
    /// What the request holds under its limits (released when its stream ends).
    held: crate::limits::Held,
    /// Who makes the request, on a virtual server with `auth` (verified token).
    principal: Option<Rc<crate::auth::Principal>>,
    /// Request headers external guardrails added, set when the request goes on.
    added_headers: Vec<(Header, Option<String>)>,
    /// The `external` post hooks the response is held for.
    post_external: Option<external_post::PostExternals>,
    /// The client's bearer token, kept when an upstream's identity is a token exchange.
    subject_token: Option<String>,
    /// What identifies the principal to the upstream the request goes to.
    upstream_credential: Option<upstream_identity::UpstreamCredential>,
}

impl Exchange {
    /// A new request under `config`.
    pub fn new(config: Rc<Config>) -> Exchange {
        Exchange {
            config,
            phase: Phase::Head,
            server: None,
            session: None,
            record: None,
            protocol_version: None,
            has_traceparent: false,
            has_session_header: false,
            credentials: Credentials::default(),
            body: Vec::new(),
            labels: None,
            observer: Observer::None,
            next_tag: 0,
            mirrored: era::Mirrored::default(),
            era: Era::Legacy,
            bridging: false,
            bridged_log_floor: None,
            routed_upstream: None,
            rewriter: None,
            pick: None,
            counted_tool: None,
            keep_body: false,
            post_plan: None,
            held: crate::limits::Held::default(),
            principal: None,
            added_headers: Vec::new(),
            post_external: None,
            subject_token: None,
            upstream_credential: None,
        }
    }

    /// The configuration this request runs under.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the request is waiting for body chunks.
    pub fn reads_body(&self) -> bool {
        matches!(self.phase, Phase::Reading { .. })
    }

    /// Bytes of the body already read: the next chunk starts here.
    pub fn body_read(&self) -> usize {
        match &self.phase {
            Phase::Reading { fed, .. } => *fed,
            _ => 0,
        }
    }

    fn reject(&mut self, r: &Rejection, host: &mut impl Host) -> Step {
        self.phase = Phase::Replied;
        host.count_rejected(r.reason);
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(allow) = r.reason.allow() {
            headers.push(("allow", allow.to_owned()));
        }
        Step::Reply(Reply {
            status: r.status(),
            headers,
            body: Some(r.body()),
        })
    }

    /// The answer when the filter itself fails (logged and counted).
    pub fn internal_error(&mut self, what: &str, host: &mut impl Host) -> Step {
        host.warn(&format!("mcpgw: internal error: {what}"));
        host.count_internal_error();
        self.reject(&Rejection::internal(what), host)
    }

    fn reply(&mut self, status: u16, body: Option<Vec<u8>>) -> Step {
        self.phase = Phase::Replied;
        let headers = if body.is_some() {
            vec![("content-type", "application/json".to_owned())]
        } else {
            Vec::new()
        };
        Step::Reply(Reply {
            status,
            headers,
            body,
        })
    }

    /// The request head arrived: `map` is the host's serialized header map
    /// ([`crate::header_map`]); `end_of_stream` says there is no body.
    pub fn on_request_head(
        &mut self,
        map: &[u8],
        end_of_stream: bool,
        host: &mut impl Host,
    ) -> Step {
        let mut fields = RequestHead::read(map);
        self.has_traceparent = fields.traceparent;
        self.has_session_header = fields.session_id.is_some();
        self.credentials = Credentials {
            authorization: fields.authorization,
            proxy_authorization: fields.proxy_authorization,
            cookie: fields.cookie,
            verified_payload: fields.verified_payload.is_some(),
        };
        self.protocol_version = fields.protocol_version.map(|v| head::lossy(v).into_owned());
        self.pick = fields.upstream.map(|p| head::lossy(p).into_owned());
        self.mirrored = era::Mirrored {
            method: fields.mcp_method.map(<[u8]>::to_vec),
            name: fields.mcp_name.map(<[u8]>::to_vec),
            params: fields
                .mcp_params
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            repeated: std::mem::take(&mut fields.repeated),
        };
        let method = fields.method.map(head::lossy).unwrap_or_default();
        if let Some(step) = self.check_host(&fields, host) {
            return step;
        }
        if let Some(step) = self.serve_metadata(&fields, &method, host) {
            return step;
        }
        let modern = self.protocol_version.as_deref().is_some_and(mcp::is_modern);
        if modern && matches!(method.as_ref(), "GET" | "DELETE") {
            // The stateless era has no stream to open with GET and no session to end.
            return self.reject(
                &Rejection::new(
                    Reason::ModernGetOrDelete,
                    None,
                    format!("{method} is not used in MCP 2026-07-28: requests are POSTs"),
                ),
                host,
            );
        }
        if let Some(step) = self.serve_endpoint(&fields, &method, modern, host) {
            return step;
        }
        let content_type = fields.content_type.map(head::lossy);
        let accept = fields.accept();
        let content_length = fields.content_length.map(head::lossy);
        let verdict = self.config.gate.check_head(&crate::policy::Head {
            method: &method,
            content_type: content_type.as_deref(),
            accept: accept.as_deref(),
            protocol_version: self.protocol_version.as_deref(),
            content_length: content_length.as_deref(),
        });
        match verdict {
            HeadVerdict::Reject(r) => self.reject(&r, host),
            HeadVerdict::Pass => {
                self.phase = Phase::Forwarded;
                let mut forward = Forward::default();
                self.strip_credentials(&mut forward);
                forward.into_step()
            }
            HeadVerdict::InspectBody { early_terminate } => {
                let mut opts = self.config.gate.parse_options();
                // A virtual server's request is read whole: its name may be rewritten; and
                // so is any request when plugins read requests.
                // A passthrough request is read whole when its path has rules to apply.
                let guarded = self.config.guard.has_pre_hooks()
                    || (self.server.is_none() && self.config.access.has_passthrough());
                opts.stop_when_routable = early_terminate && self.server.is_none() && !guarded;
                self.keep_body = self.server.is_some() || guarded;
                self.phase = Phase::Reading {
                    parser: Box::new(MessageParser::new(opts)),
                    fed: 0,
                };
                if end_of_stream {
                    // A POST without a body.
                    return self.on_request_body(0, true, |_, _| None, host);
                }
                Step::ReadBody
            }
        }
    }

    /// Checks `Host` against the listener's allow-list and `Origin` against the listener's
    /// and the virtual server's (`None`: both pass).
    fn check_host(&mut self, fields: &RequestHead<'_>, host: &mut impl Host) -> Option<Step> {
        let policy = self.config.gate.policy();
        if !policy.allowed_hosts.is_empty()
            && let Some(authority) = fields.authority.map(head::lossy)
            && !crate::origin::host_allowed(&policy.allowed_hosts, &authority)
        {
            let r = Rejection::new(
                Reason::ForbiddenHost,
                None,
                format!("this gateway does not answer for Host {authority:?}"),
            );
            return Some(self.reject(&r, host));
        }
        None
    }

    /// Checks a browser's `Origin` against the policy's and `server`'s allow-lists.
    fn check_origin(
        &mut self,
        origin: Option<&[u8]>,
        server: Option<&str>,
        host: &mut impl Host,
    ) -> Option<Step> {
        let origin = head::lossy(origin?);
        let config = Rc::clone(&self.config);
        let policy = config.gate.policy();
        let own = server.map_or(&[][..], |id| config.edge.allowed_origins(id));
        if crate::origin::origin_allowed(&[&policy.allowed_origins, own], &origin) {
            return None;
        }
        let r = Rejection::new(
            Reason::ForbiddenOrigin,
            None,
            format!("Origin {origin:?} is not allowed to use this endpoint"),
        );
        Some(self.reject(&r, host))
    }

    /// Resolves a `/servers/…` path: `None` when the head checks come next.
    fn serve_endpoint(
        &mut self,
        fields: &RequestHead<'_>,
        method: &str,
        modern: bool,
        host: &mut impl Host,
    ) -> Option<Step> {
        let config = Rc::clone(&self.config);
        let edge = &config.edge;
        let path = fields.path.filter(|_| edge.serves_any()).map(head::lossy);
        let endpoint = path.as_deref().and_then(edge::endpoint);
        if let Some(step) = self.check_origin(fields.origin, endpoint.map(|e| e.server()), host) {
            return Some(step);
        }
        let Some(endpoint) = endpoint else {
            // The passthrough path: authenticated when it has its own identity.
            if !config.access.has_passthrough() {
                return None;
            }
            return self.authenticate(crate::auth::PASSTHROUGH, fields, host);
        };
        match endpoint {
            Endpoint::Mcp(id) if edge.has_server(id) => self.server = Some(id.to_owned()),
            // The legacy SSE pair is the relay's: it turns each posted message into a
            // streamable HTTP request to `/servers/{id}/mcp` through this listener, where
            // this filter checks it like any other.
            Endpoint::Sse(id) | Endpoint::Message(id) if edge.has_server(id) => {
                if let Some(step) = self.authenticate(id, fields, host) {
                    return Some(step);
                }
                return Some(self.hand_to_relay("the legacy SSE transport", Vec::new(), host));
            }
            Endpoint::Mcp(id) | Endpoint::Sse(id) | Endpoint::Message(id) | Endpoint::Other(id) => {
                return Some(self.reject(&edge::unknown_server(id), host));
            }
        }
        // Who asks decides which session it may resume, and everything after.
        if let Some(server) = self.server.clone()
            && let Some(step) = self.authenticate(&server, fields, host)
        {
            return Some(step);
        }
        if config.exchanges_tokens && self.principal.is_some() {
            self.subject_token = fields
                .authorization_value
                .and_then(crate::upstream_identity::bearer_token)
                .map(str::to_owned);
        }
        // A 2026-era request has no session: its `Mcp-Session-Id`, if any, is ignored.
        if let (Some(token), Some(server), false) = (fields.session_id, self.server.clone(), modern)
            && let Err(why) = self.resume_session(&head::lossy(token), &server, host)
        {
            return Some(self.reject(&edge::unknown_session(&why.to_string()), host));
        }
        match method {
            "POST" => None,
            "DELETE" if self.session.is_some() => Some(self.end_session(host)),
            // The GET stream carries server-initiated messages.
            "GET" if self.session.is_some() => {
                let pick = self.pick.take();
                Some(self.open_stream(pick, host))
            }
            // A DELETE without a session has nothing to end, and a GET without one has no
            // stream to relay: the MCP spec lets a server answer both with 405.
            _ => Some(self.reject(&edge::method_not_allowed(method), host)),
        }
    }

    /// Body bytes arrived: `total` bytes so far, `end_of_stream` whether that is all.
    /// `read(start, len)` fetches bytes of the body from the host; the exchange asks only
    /// for what it has not read yet, and nothing of a body over the limit.
    pub fn on_request_body(
        &mut self,
        total: usize,
        end_of_stream: bool,
        read: impl FnOnce(usize, usize) -> Option<Vec<u8>>,
        host: &mut impl Host,
    ) -> Step {
        let Phase::Reading { mut parser, fed } =
            std::mem::replace(&mut self.phase, Phase::Forwarded)
        else {
            return Step::Continue;
        };
        let limit = self.config.gate.max_body_bytes();
        if total as u64 > limit {
            return self.reject(&Rejection::too_large(limit), host);
        }
        let progress = if total > fed {
            let Some(chunk) = read(fed, total - fed) else {
                return self.internal_error("request body unavailable", host);
            };
            let progress = parser.feed(&chunk);
            if self.keep_body {
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
            Err(err) => self.reject(&Rejection::from_parse(&err), host),
            Ok(Progress::Routable) => match parser.routable() {
                Some(msg) => self.decide(&[msg], false, host),
                None => self.internal_error("routable request missing", host),
            },
            Ok(_) if end_of_stream => match parser.finish() {
                Ok(Body::Single(m)) => self.decide(&[m], false, host),
                Ok(Body::Batch(ms)) => self.decide(&ms, true, host),
                Err(err) => self.reject(&Rejection::from_parse(&err), host),
            },
            Ok(_) => {
                self.phase = Phase::Reading {
                    parser,
                    fed: total.max(fed),
                };
                Step::ReadBody
            }
        }
    }

    /// The label of the tool `msg` names: a virtual server counts only names from its
    /// catalog (a client's made-up names would spend the label budget), the passthrough
    /// path names the policy knows as they are and others against the budget.
    fn tool_of(&self, msg: &Message) -> Tool {
        let Some(name) = msg
            .name
            .as_deref()
            .filter(|_| msg.method == Some(Method::ToolsCall))
        else {
            return Tool::None;
        };
        match &self.server {
            Some(server) if self.config.edge.has_tool(server, name) => Tool::Known(name.into()),
            Some(_) => Tool::Unknown,
            None if self.config.gate.knows_tool(name) => Tool::Known(name.into()),
            None => Tool::Unvetted(name.into()),
        }
    }

    /// Applies the policy to the parsed `messages` and decides.
    fn decide(&mut self, messages: &[Message], batch: bool, host: &mut impl Host) -> Step {
        for msg in messages {
            if matches!(msg.kind, Kind::Request | Kind::Notification) {
                let tool = self.tool_of(msg);
                host.count_request(msg.method.as_ref().map_or("", Method::as_str), tool.label());
                if !batch {
                    // Labelling the response needs it again: looked up once.
                    self.counted_tool = Some(tool);
                }
            }
        }
        let config = Rc::clone(&self.config);
        let params = match (&self.server, messages) {
            (Some(server), [m]) if m.method == Some(Method::ToolsCall) => config
                .edge
                .param_headers(server, m.name.as_deref().unwrap_or_default()),
            _ => &[],
        };
        let body = &self.body;
        let arguments = || {
            let (start, end) = messages.first()?.arguments_span?;
            let bytes = body.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
            serde_json::from_slice(bytes).ok()
        };
        match era::classify(
            messages,
            batch,
            self.protocol_version.as_deref(),
            &self.mirrored,
            params,
            arguments,
        ) {
            Ok(era) => self.era = era,
            Err(r) => return self.reject(&r, host),
        }
        // The policy's version rules are the 2025 era's (batches).
        let version = match self.era {
            Era::Legacy => self.protocol_version.as_deref(),
            Era::Modern => None,
        };
        let verdict = config.gate.check_messages(messages, batch, version);
        if batch
            && matches!(verdict, BodyVerdict::Forward { .. })
            && let Some(step) = self.guard_batch(messages, host)
        {
            return step;
        }
        match verdict {
            BodyVerdict::Reject(r) => self.reject(&r, host),
            BodyVerdict::Forward { .. } if self.server.is_some() => match messages {
                [only] if !batch => self.serve_edge(only, host),
                _ => self.reject(&edge::batch_rejected(), host),
            },
            BodyVerdict::Forward { cluster } => {
                // Stage: identity, when the passthrough path has its own: each request and
                // notification authorized, the first refusal answering the whole body.
                if config.access.has_passthrough() {
                    for msg in messages {
                        if let Some(step) = self.authorize(msg, host) {
                            return step;
                        }
                    }
                }
                let mut edit = None;
                if let [only] = messages
                    && only.kind == Kind::Request
                {
                    let then = external::Then::Passthrough {
                        cluster: cluster.clone(),
                    };
                    match self.guard_request(only, then, host) {
                        Err(step) => return step,
                        Ok(e) => edit = e,
                    }
                }
                self.forward_passthrough(messages, cluster, edit, host)
            }
        }
    }

    /// Forwards `messages` on the passthrough path (to `cluster`, if the policy routes
    /// them), with a plugin's `edit` of the arguments.
    fn forward_passthrough(
        &mut self,
        messages: &[Message],
        cluster: Option<String>,
        edit: Option<guard::Edit>,
        host: &mut impl Host,
    ) -> Step {
        let mut forward = Forward {
            headers: std::mem::take(&mut self.added_headers),
            body: None,
        };
        if let Some(edit) = edit {
            let Some(body) = bridge::splice(&self.body, vec![edit]) else {
                return self.internal_error("a plugin's edit lies outside the body", host);
            };
            forward.headers.push((
                Header::Named("content-length"),
                Some(body.len().to_string()),
            ));
            forward.body = Some(body);
        }
        self.phase = Phase::Forwarded;
        if let [only] = messages
            && only.kind == Kind::Request
        {
            self.label(only);
        }
        if let [only] = messages {
            self.propagate_trace_context(only, &mut forward);
        }
        if let Some(cluster) = cluster {
            // Envoy's wasm host clears the route cache itself when a filter changes
            // a request header, so the route is picked again with this one (the e2e
            // routing tests prove it). An explicit `clear_route_cache` foreign call
            // on top cost 1-2% of requests/s and changed nothing.
            forward.headers.push((Header::Route, Some(cluster)));
        }
        self.strip_credentials(&mut forward);
        forward.into_step()
    }

    /// Remembers what to label the response with.
    fn label(&mut self, msg: &Message) {
        let method = msg.method.clone().unwrap_or(Method::Other("".into()));
        let tool = match self.counted_tool.take() {
            Some(tool) => tool,
            None => self.tool_of(msg),
        };
        self.labels = Some((method, tool));
    }

    /// Removes the client's credentials from a request that goes upstream.
    fn strip_credentials(&self, forward: &mut Forward) {
        // Removing a header the request does not carry would still cost a host call.
        let c = self.credentials;
        // What the edge verified is for the edge: an upstream never sees it.
        if c.verified_payload {
            forward
                .headers
                .push((Header::Named(crate::auth::PAYLOAD_HEADER), None));
        }
        if self.config.gate.forwards_client_credentials() {
            return;
        }
        for (present, name) in [
            (c.authorization, "authorization"),
            (c.proxy_authorization, "proxy-authorization"),
            (c.cookie, "cookie"),
        ] {
            if present {
                forward.headers.push((Header::Named(name), None));
            }
        }
    }

    /// Answers or routes a request to a virtual server.
    fn serve_edge(&mut self, msg: &Message, host: &mut impl Host) -> Step {
        if self.era == Era::Modern
            && msg.kind == Kind::Request
            && let Some(method) = msg.method.as_ref().filter(|m| m.gone_in_modern_era())
        {
            let r = Rejection::new(
                Reason::GoneInModernEra,
                msg.id.clone(),
                format!(
                    "method {:?} does not exist in MCP 2026-07-28",
                    method.as_str()
                ),
            );
            return self.reject(&r, host);
        }
        // Stage: identity (`exchange/auth.rs`): who asks, and whether they may.
        if let Some(step) = self.authorize(msg, host) {
            return step;
        }
        // Stage: limits (`exchange/limits.rs`), keyed by the principal when there is one.
        let principal = self.principal.clone();
        let caller = principal.as_deref().map(|p| limits::Caller {
            principal: p.subject.as_str(),
            team: p.teams.first().map(String::as_str),
        });
        if let Some(step) = self.limit(msg, caller, host) {
            return step;
        }
        self.serve_admitted(msg, host)
    }

    /// Answers or routes a request to a virtual server once it is authorized and its limits
    /// admitted it.
    fn serve_admitted(&mut self, msg: &Message, host: &mut impl Host) -> Step {
        let config = Rc::clone(&self.config);
        let edge = &config.edge;
        let Some(server) = self.server.clone() else {
            return self.internal_error("virtual server missing", host);
        };
        if self.era == Era::Legacy && msg.method == Some(Method::LoggingSetLevel) {
            return self.set_level(msg, host);
        }
        let answer = {
            let visible = self.visibility();
            let visible = visible.as_ref().map(|f| f as &dyn Fn(&str, &str) -> bool);
            edge.answer_as(&server, msg, self.era, visible)
        };
        match answer {
            None => self.reject(&edge::unknown_server(&server), host),
            Some(Answer::Reply(body)) if msg.method == Some(Method::Initialize) => {
                let token = match self.new_session(&server, msg, host) {
                    Ok(token) => token,
                    Err(what) => return self.internal_error(what, host),
                };
                let mut step = self.reply(200, Some(body));
                if let (Step::Reply(r), Some(token)) = (&mut step, token) {
                    r.headers.push(("mcp-session-id", token));
                }
                step
            }
            Some(Answer::Reply(body)) => self.reply(200, Some(body)),
            Some(Answer::Accepted) if msg.kind == Kind::Notification => {
                self.pass_notification(msg, host)
            }
            Some(Answer::Accepted) => self.route_response(msg, host),
            Some(Answer::Route(to)) => match self.upstream_token(msg, to.upstream_id, host) {
                Some(step) => step,
                None => match self.guard_request(msg, external::Then::Edge, host) {
                    Ok(edit) => self.route_upstream(msg, &to, edit, host),
                    Err(step) => step,
                },
            },
            Some(Answer::Listen) => self.listen(msg, host),
        }
    }

    /// Sends a virtual server's call to the upstream that owns the entry, opening the
    /// session's upstream session first if it has none there yet.
    fn route_upstream(
        &mut self,
        msg: &Message,
        to: &RouteTo<'_>,
        edit: Option<guard::Edit>,
        host: &mut impl Host,
    ) -> Step {
        let mut forward = Forward {
            headers: std::mem::take(&mut self.added_headers),
            body: None,
        };
        // Not needed past this point; a streamed response may keep the request alive long.
        let body = std::mem::take(&mut self.body);
        // The call goes in the client's era when the upstream speaks it, else bridged.
        let upstream_modern = match self.era {
            Era::Modern => to.upstream.speaks_modern(),
            Era::Legacy => !to.upstream.speaks_legacy(),
        };
        // A 2025-era client's call to a 2026-era upstream carries the envelope that era
        // requires in every request.
        let envelope = (self.era == Era::Legacy && upstream_modern).then(|| {
            let level = self.record.as_ref().and_then(|r| r.log_level.as_deref());
            bridge::insert_envelope(&body, msg, &bridge::envelope(self.session.as_ref(), level))
        });
        let rewritten = match edit {
            None if to.rename.is_none() && envelope.is_none() => None,
            None => Some(bridge::rewrite(&body, to.rename, envelope)),
            // A plugin's mask of the arguments, with the other edits.
            Some(edit) => {
                let mut edits: Vec<guard::Edit> = envelope.into_iter().collect();
                edits.push(edit);
                if let Some(((start, end), name)) = to.rename {
                    let mut literal = Vec::with_capacity(name.len() + 2);
                    crate::jsonrpc::write_json_string(&mut literal, name);
                    edits.push((start, end, literal));
                }
                Some(bridge::splice(&body, edits))
            }
        };
        if let Some(rewritten) = rewritten {
            let Some(rewritten) = rewritten else {
                return self.internal_error("a rewrite span lies outside the body", host);
            };
            forward.headers.push((
                Header::Named("content-length"),
                Some(rewritten.len().to_string()),
            ));
            forward.body = Some(rewritten);
        }
        // A 2026-era client's call to a 2025-era upstream loses the envelope that era lacks.
        if self.era == Era::Modern && !upstream_modern {
            let Some(stripped) = bridge::strip_envelope(forward.body.as_deref().unwrap_or(&body))
            else {
                return self.internal_error("a bridged body is not a JSON object", host);
            };
            forward
                .headers
                .retain(|(h, _)| *h != Header::Named("content-length"));
            forward.headers.push((
                Header::Named("content-length"),
                Some(stripped.len().to_string()),
            ));
            forward.body = Some(stripped);
        }
        self.phase = Phase::Forwarded;
        self.label(msg);
        self.propagate_trace_context(msg, &mut forward);
        self.strip_credentials(&mut forward);
        self.identify_upstream(to.upstream_id, to.upstream, &mut forward, host);
        point_at(to.upstream, &mut forward);
        let upstream = to.upstream_id.to_owned();
        match (self.era, upstream_modern) {
            // Stateless on both sides: the headers must say what the (renamed) body says.
            (Era::Modern, true) => {
                if let Some((_, name)) = to.rename
                    && msg.method.as_ref().is_some_and(Method::names_its_target)
                {
                    forward
                        .headers
                        .push((Header::Named("mcp-name"), Some(mirror::encode(name))));
                }
                self.drop_session_header(&mut forward);
                Step::Forward(forward)
            }
            (Era::Legacy, true) => {
                bridge::mirror_headers(msg, to.rename.map(|(_, n)| n), &mut forward);
                self.drop_session_header(&mut forward);
                Step::Forward(forward)
            }
            // A 2026-era client's call to a 2025-era upstream goes inside a session the
            // gateway keeps for such clients, and under that era's version.
            (Era::Modern, false) => {
                let Some(server) = self.server.clone() else {
                    return self.internal_error("virtual server missing", host);
                };
                self.session = Some(bridge::stateless_client_session(
                    &self.config,
                    &server,
                    &upstream,
                    &body,
                    msg,
                    host.now(),
                    self.principal.as_ref().map(|p| p.digest.as_str()),
                ));
                self.record = self.read_record(host);
                // The level is part of the shared session's identity: it is the session's
                // own, told to the upstream when the session opens there.
                let level = bridge::log_level(msg);
                if level.is_some()
                    && self.record.as_ref().and_then(|r| r.log_level.as_deref()) != level
                {
                    let level = level.map(str::to_owned);
                    self.update_record(host, |record, _| record.log_level = level.clone());
                }
                self.bridged_log_floor = level.and_then(mcp::log_level_rank);
                forward.headers.push((
                    Header::Named("mcp-protocol-version"),
                    Some(bridge::LEGACY_VERSION.to_owned()),
                ));
                for name in ["mcp-method", "mcp-name"] {
                    forward.headers.push((Header::Named(name), None));
                }
                self.bridging = true;
                let step = self.route_in_session(forward, upstream, host);
                self.stamp_calls(step)
            }
            (Era::Legacy, false) if self.session.is_some() => {
                let step = self.route_in_session(forward, upstream, host);
                self.stamp_calls(step)
            }
            (Era::Legacy, false) => {
                self.drop_session_header(&mut forward);
                Step::Forward(forward)
            }
        }
    }

    /// The client's `Mcp-Session-Id` never reaches an upstream.
    fn drop_session_header(&self, forward: &mut Forward) {
        if self.has_session_header {
            forward
                .headers
                .push((Header::Named("mcp-session-id"), None));
        }
    }

    /// Copies a well-formed `params._meta` trace context to the headers, unless the
    /// request already carries one.
    fn propagate_trace_context(&self, m: &Message, forward: &mut Forward) {
        if self.has_traceparent {
            return;
        }
        let Some(parent) = m
            .traceparent
            .as_deref()
            .filter(|t| trace::is_valid_traceparent(t))
        else {
            return;
        };
        forward
            .headers
            .push((Header::Named("traceparent"), Some(parent.to_owned())));
        if let Some(state) = m
            .tracestate
            .as_deref()
            .filter(|t| trace::is_valid_tracestate(t))
        {
            forward
                .headers
                .push((Header::Named("tracestate"), Some(state.to_owned())));
        }
    }

    /// Sends the request, unread, to the session relay's cluster (`what` names the feature
    /// for the 404 when no relay is configured), with `headers` set. The relay is the
    /// gateway's own: the client's credentials go with it, since the relay's requests come
    /// back through this listener, where they are checked and stripped like any other.
    fn hand_to_relay(
        &mut self,
        what: &str,
        mut headers: Vec<(Header, Option<String>)>,
        host: &mut impl Host,
    ) -> Step {
        let Some(cluster) = self.config.edge.relay().map(str::to_owned) else {
            return self.reject(&edge::no_relay(what), host);
        };
        self.phase = Phase::Relayed;
        headers.push((Header::Route, Some(cluster)));
        Step::Forward(Forward {
            headers,
            body: None,
        })
    }

    /// Starts `calls` and waits for them with `pending`, or decides at once without any.
    fn await_calls(&mut self, pending: Pending, calls: Vec<Call>, host: &mut impl Host) -> Step {
        if calls.is_empty() {
            return self.finish_pending(pending, host);
        }
        self.phase = Phase::Calling(pending);
        Step::Call(calls)
    }

    /// A call to upstream `id` (`None`, with a warning, if the snapshot has no such upstream).
    fn call(
        &mut self,
        id: &str,
        session: Option<&str>,
        version: &str,
        method: &'static str,
        body: Option<Vec<u8>>,
        host: &mut impl Host,
    ) -> Option<Call> {
        self.next_tag += 1;
        let call = upstream_call(
            &self.config,
            self.next_tag,
            id,
            session,
            version,
            method,
            body,
        );
        if call.is_none() {
            host.warn(&format!("mcpgw: upstream {id} is not in the snapshot"));
        }
        call
    }

    /// A call this exchange asked for has answered (or failed).
    pub fn on_call_answer(&mut self, tag: u32, answer: CallAnswer, host: &mut impl Host) -> Step {
        let step = self.call_answered(tag, answer, host);
        self.stamp_calls(step)
    }

    fn call_answered(&mut self, tag: u32, answer: CallAnswer, host: &mut impl Host) -> Step {
        let pending = match std::mem::replace(&mut self.phase, Phase::Replied) {
            Phase::Calling(pending) => pending,
            Phase::Exchanging(waiting) if waiting.tag == tag => {
                return self.on_exchange_answer(*waiting, answer, host);
            }
            _ => return Step::Wait,
        };
        let mut pending = pending;
        let Some((upstream, stage)) = pending.calls.remove(&tag) else {
            self.phase = Phase::Calling(pending);
            return Step::Wait;
        };
        let more = self.answered(&mut pending, upstream, stage, answer, host);
        if pending.calls.is_empty() {
            return self.finish_pending(pending, host);
        }
        self.phase = Phase::Calling(pending);
        if more.is_empty() {
            Step::Wait
        } else {
            Step::Call(more)
        }
    }

    /// The response head arrived.
    pub fn on_response_head(&mut self) -> ResponseHead {
        if !matches!(self.phase, Phase::Forwarded) {
            return ResponseHead {
                remove_session_id: false,
                remove_content_length: false,
            };
        }
        // The body's first bytes tell JSON from an event stream; reading `content-type`
        // from the host would cost a host call per response.
        self.observer = Observer::Sniff;
        self.rewriter = self.response_changes().map(rewrite::Rewriter::new);
        ResponseHead {
            // A virtual server's client holds the gateway's token, not an upstream's session.
            remove_session_id: self.server.is_some(),
            // Bridged results gain fields; guarded ones may be masked.
            remove_content_length: self.bridging
                || self.post_plan.is_some()
                || self.post_external.is_some(),
        }
    }

    /// What a virtual server's response must have changed, if anything: the 2026-era
    /// fields on a bridged call's results, and the ids of an upstream's requests to its
    /// client (a session's, from a 2025-era upstream) so the client's answers find it.
    fn response_changes(&self) -> Option<rewrite::Changes> {
        let result_fields = self.bridging.then(|| {
            let cacheable = self.labels.as_ref().is_some_and(|(m, _)| {
                matches!(
                    m,
                    Method::ToolsList
                        | Method::PromptsList
                        | Method::ResourcesList
                        | Method::ResourcesTemplatesList
                        | Method::ResourcesRead
                )
            });
            let mut f = br#""resultType":"complete""#.to_vec();
            if cacheable {
                // Nothing says the upstream's answer is the same for everyone.
                f.extend_from_slice(br#","ttlMs":0,"cacheScope":"private""#);
            }
            f
        });
        let request_id = match (&self.routed_upstream, &self.session, self.era) {
            (Some(upstream), Some(session), Era::Legacy) if !self.bridging => {
                let config = Rc::clone(&self.config);
                let (upstream, session) = (upstream.clone(), session.id.clone());
                let rename: rewrite::RequestIdRewrite = Box::new(move |id| {
                    let keys = &config.edge.sessions()?.keys;
                    Some(sessions::server_request_id(keys, &session, &upstream, id))
                });
                Some(rename)
            }
            _ => None,
        };
        let notifications = self.bridging.then_some(rewrite::Notifications {
            log_floor: self.bridged_log_floor,
        });
        let guard = self.post_plan.clone().map(|plan| rewrite::Guarded {
            config: Rc::clone(&self.config),
            plan,
        });
        (result_fields.is_some() || request_id.is_some() || guard.is_some()).then(|| {
            rewrite::Changes {
                result_fields,
                request_id,
                notifications,
                guard,
            }
        })
    }

    /// How much of the response body the exchange needs.
    pub fn response_body_need(&self) -> BodyNeed {
        if self.rewriter.is_some() || self.holds_response() {
            return BodyNeed::Bytes;
        }
        self.observer.need()
    }

    /// A response body chunk (empty when [`BodyNeed::End`]); returns what to send in its
    /// place when the response is rewritten.
    pub fn on_response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        host: &mut impl Host,
    ) -> Option<Vec<u8>> {
        let (method, tool) = match &self.labels {
            Some((m, t)) => (m.as_str(), t.label()),
            None => ("", ToolLabel::None),
        };
        if self.observer.need() != BodyNeed::Nothing {
            let observed: &[u8] = if self.observer.need() == BodyNeed::End {
                &[]
            } else {
                chunk
            };
            self.observer
                .feed(observed, end_of_stream, &mut |kind| match kind {
                    Kind::Result => host.count_response(method, tool, false),
                    Kind::Error => host.count_response(method, tool, true),
                    Kind::Request | Kind::Notification => {}
                });
        }
        if end_of_stream {
            // The response ended: its places among calls in flight go now, not at the log.
            self.on_stream_end(host);
        }
        let rewriter = self.rewriter.as_mut()?;
        let out = rewriter.feed(chunk, end_of_stream);
        let findings = rewriter.take_findings();
        self.report(&findings, host);
        Some(out)
    }
}

impl Forward {
    fn into_step(self) -> Step {
        if self.headers.is_empty() && self.body.is_none() {
            Step::Continue
        } else {
            Step::Forward(self)
        }
    }
}

/// `{"jsonrpc":"2.0","id":…,"result":<result_json>}`.
fn edge_result(id: Option<&crate::jsonrpc::Id>, result_json: &str) -> Vec<u8> {
    let id = id.map_or("null", crate::jsonrpc::Id::as_json);
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result_json}}}"#).into_bytes()
}

/// Points the request at `up`: its path, its authority, its cluster (the route header).
fn point_at(up: &crate::catalog::Upstream, forward: &mut Forward) {
    forward
        .headers
        .push((Header::Named(":path"), Some(up.path.clone())));
    if let Some(authority) = &up.authority {
        forward
            .headers
            .push((Header::Named(":authority"), Some(authority.clone())));
    }
    forward
        .headers
        .push((Header::Route, Some(up.cluster.clone())));
}

/// A call to upstream `id` of `config` (`None` if the snapshot has no such upstream):
/// `method` with `body`, inside upstream session `session`, under protocol `version`.
fn upstream_call(
    config: &Config,
    tag: u32,
    id: &str,
    session: Option<&str>,
    version: &str,
    method: &'static str,
    body: Option<Vec<u8>>,
) -> Option<Call> {
    let up = config.edge.upstream(id)?;
    let mut headers = vec![
        (":method", method.to_owned()),
        (":path", up.path.clone()),
        (
            ":authority",
            up.authority.clone().unwrap_or_else(|| up.cluster.clone()),
        ),
        ("accept", "application/json, text/event-stream".to_owned()),
        ("mcp-protocol-version", version.to_owned()),
    ];
    if body.is_some() {
        headers.push(("content-type", "application/json".to_owned()));
    }
    if let Some(sid) = session {
        headers.push(("mcp-session-id", sid.to_owned()));
    }
    Some(Call {
        tag,
        cluster: up.cluster.clone(),
        headers,
        body,
        timeout_ms: UPSTREAM_CALL_TIMEOUT_MS,
    })
}

#[cfg(test)]
mod tests;
