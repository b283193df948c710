//! Virtual servers served at the edge, from the snapshot's catalog.
//!
//! A request to `/servers/{id}/mcp` addresses virtual server `id`. The filter answers the
//! catalog methods itself (`initialize`, `ping`, the four lists with cursor pagination),
//! acknowledges notifications, and routes `tools/call`, `prompts/get` and
//! `resources/read|subscribe|unsubscribe` to the upstream that owns the entry, with the
//! namespaced name rewritten to the upstream's own. Nothing here touches the host: the
//! filter turns an [`Answer`] into host calls.

use crate::catalog::{Entry, Upstream, Upstreams, VirtualServer};
use crate::fasthash::NameMap;
use crate::jsonrpc::{Id, Kind, Message, code, error_response, write_json_string};
use crate::mcp::{self, Era, Method};
use crate::mirror::{self, ParamHeader};
use crate::reason::{Reason, Rejection};
use crate::session::SessionKeys;
use crate::snapshot::Snapshot;

/// Path prefix of virtual server endpoints.
pub const SERVERS_PREFIX: &str = "/servers/";

/// JSON-RPC code MCP uses for an unknown resource.
pub const RESOURCE_NOT_FOUND: i64 = -32002;

/// The answer to a path under `/servers/` that names no virtual server (HTTP 404).
pub fn unknown_server(id: &str) -> Rejection {
    Rejection::new(
        Reason::UnknownServer,
        None,
        format!("no virtual server {id:?} (or no such endpoint on it)"),
    )
}

/// The answer to a GET or DELETE at a virtual server (HTTP 405).
pub fn method_not_allowed(method: &str) -> Rejection {
    Rejection::new(
        Reason::NoStream,
        None,
        format!(
            "{method} is not supported here: GET needs a session with a stateful upstream, and DELETE a session id"
        ),
    )
}

/// Request header the filter sets on a request whose response is a long-lived stream
/// though it is a POST (a 2026-era `subscriptions/listen`): the generated routes give such
/// requests a stream's limits (no deadline, an idle limit) instead of an exchange's. Removed
/// from client requests at the listener and from forwarded ones by the route.
pub const STREAM_HEADER: &str = "mcpgw-stream";
/// Request header naming one upstream of a session: a GET carrying it relays that
/// upstream's stream alone (the relay opens one such GET per upstream to fan them in).
pub const UPSTREAM_HEADER: &str = "mcpgw-upstream";
/// Request header the filter sets on a GET it hands to the relay: the ids of the session's
/// stateful upstreams, comma-separated.
pub const RELAY_UPSTREAMS_HEADER: &str = "mcpgw-relay-upstreams";
/// Request header the filter sets on a `subscriptions/listen` it hands to the relay: for
/// each upstream of [`RELAY_UPSTREAMS_HEADER`], in order, `modern` if it speaks MCP
/// 2026-07-28 (the relay listens to it) or `legacy` (the relay opens a session's GET
/// stream there).
pub const RELAY_ERAS_HEADER: &str = "mcpgw-relay-eras";
/// Request header the relay route sets: the address of the Envoy listener the client
/// reached, which the relay sends the session's messages back through.
pub const EDGE_ADDRESS_HEADER: &str = "mcpgw-edge-address";

/// Request header the relay route sets to a secret only this control plane's Envoys know
/// (derived from the control plane's key): the relay serves no request without it.
pub const RELAY_AUTH_HEADER: &str = "mcpgw-relay-auth";
/// Request header the relay route sets: the address of the client that reached the Envoy
/// listener, for the relay's per-client limits.
pub const CLIENT_ADDRESS_HEADER: &str = "mcpgw-client-address";

/// The answer to a request the relay would serve when none is configured (HTTP 404).
pub fn no_relay(what: &str) -> Rejection {
    Rejection::new(
        Reason::NoRelay,
        None,
        format!("{what} needs the session relay, which this gateway does not run"),
    )
}

/// The answer to a GET that picks an upstream the session does not hold (HTTP 404).
pub fn unknown_stream(upstream: &str) -> Rejection {
    Rejection::new(
        Reason::UnknownStream,
        None,
        format!("upstream {upstream:?} holds no part of this session"),
    )
}

/// The answer to a `subscriptions/listen` that picks an upstream which cannot answer one
/// (HTTP 404): not of the server, or of the 2025 era only.
pub fn unlistenable(upstream: &str, why: &str) -> Rejection {
    Rejection::new(
        Reason::UnknownStream,
        None,
        format!("upstream {upstream:?} cannot be listened to here: {why}"),
    )
}

/// The answer to a request whose `Mcp-Session-Id` does not verify (HTTP 404, as MCP
/// prescribes for unknown sessions: the client starts a new one).
pub fn unknown_session(why: &str) -> Rejection {
    Rejection::new(
        Reason::UnknownSession,
        None,
        format!("session not found: {why}"),
    )
}

/// The answer to a JSON-RPC batch sent to a virtual server (HTTP 400).
pub fn batch_rejected() -> Rejection {
    Rejection::new(
        Reason::VirtualServerBatch,
        None,
        "virtual servers take one JSON-RPC message per request, not a batch",
    )
}

/// What the filter does with one request to a virtual server.
#[derive(Debug, PartialEq)]
pub enum Answer<'a> {
    /// Reply with this JSON-RPC message (HTTP 200, `application/json`).
    Reply(Vec<u8>),
    /// A notification: accept it (HTTP 202, no body).
    Accepted,
    /// Send it to an upstream.
    Route(RouteTo<'a>),
    /// A 2026-era `subscriptions/listen`: a stream fed by the server's upstreams.
    Listen,
}

/// Where a routed request goes, and how it is rewritten on the way.
#[derive(Debug, PartialEq)]
pub struct RouteTo<'a> {
    /// Key of the upstream in the snapshot (and in a session's upstream sessions).
    pub upstream_id: &'a str,
    /// The upstream (cluster, path, authority).
    pub upstream: &'a Upstream,
    /// Replace this byte range of the body (the `params.name` literal) with this name.
    pub rename: Option<((u64, u64), &'a str)>,
}

/// The virtual server a path addresses, and which endpoint of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'p> {
    /// `/servers/{id}/mcp` (streamable HTTP).
    Mcp(&'p str),
    /// `/servers/{id}/sse`: the legacy SSE transport's event stream (served by the relay).
    Sse(&'p str),
    /// `/servers/{id}/message`: where legacy SSE clients post (served by the relay).
    Message(&'p str),
    /// Any other path under `/servers/`.
    Other(&'p str),
}

impl<'p> Endpoint<'p> {
    /// The virtual server the path names.
    pub fn server(self) -> &'p str {
        match self {
            Endpoint::Mcp(id) | Endpoint::Sse(id) | Endpoint::Message(id) | Endpoint::Other(id) => {
                id
            }
        }
    }
}

/// Parses a request path (`:path`, query allowed) into a virtual server endpoint.
pub fn endpoint(path: &str) -> Option<Endpoint<'_>> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let rest = path.strip_prefix(SERVERS_PREFIX)?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if id.is_empty() {
        return None;
    }
    Some(match tail {
        "mcp" => Endpoint::Mcp(id),
        "sse" => Endpoint::Sse(id),
        "message" => Endpoint::Message(id),
        _ => Endpoint::Other(id),
    })
}

struct Indexed {
    server: VirtualServer,
    /// Tools whose input schema mirrors arguments into `Mcp-Param-*` headers.
    param_headers: NameMap<Vec<ParamHeader>>,
    /// Every upstream an entry of this server lives on, once each.
    upstream_ids: Vec<String>,
    tools: NameMap<usize>,
    prompts: NameMap<usize>,
    resources: NameMap<usize>,
}

impl Indexed {
    /// The resource with `uri`, else the first template `uri` matches (templates also match
    /// their own text, as completion requests name them).
    fn resource(&self, uri: &str) -> Option<&Entry> {
        self.resources
            .get(uri)
            .and_then(|&i| self.server.resources.get(i))
            .or_else(|| {
                self.server
                    .resource_templates
                    .iter()
                    .find(|t| t.name == uri || template_matches(&t.name, uri))
            })
    }
}

fn index(entries: &[Entry]) -> NameMap<usize> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.clone(), i))
        .collect()
}

/// Sessions of virtual servers, from the snapshot's `session`.
#[derive(Debug)]
pub struct Sessions {
    /// The keys that seal and open tokens.
    pub keys: SessionKeys,
    /// Token lifetime, seconds.
    pub ttl_seconds: u64,
    /// How long an upstream session may go unused, seconds.
    pub idle_seconds: u64,
}

/// The snapshot's virtual servers, indexed for per-request lookups.
pub struct Edge {
    servers: NameMap<Indexed>,
    upstreams: Upstreams,
    sessions: Option<Sessions>,
    page_size: usize,
    list_ttl_ms: u64,
    relay: Option<String>,
}

/// The `x-mcp-header` arguments of each tool that has any (parsed once, at configure time;
/// only items that mention the annotation are parsed at all).
fn param_headers_of(tools: &[Entry]) -> NameMap<Vec<ParamHeader>> {
    tools
        .iter()
        .filter(|t| t.item.get().contains("x-mcp-header"))
        .filter_map(|t| {
            let item: serde_json::Value = serde_json::from_str(t.item.get()).ok()?;
            let params = mirror::param_headers(item.get("inputSchema")?);
            (!params.is_empty()).then(|| (t.name.clone(), params))
        })
        .collect()
}

impl Edge {
    /// Indexes `snapshot`'s catalog (once per configuration), moving it out of the
    /// snapshot: a 10,000-tool catalog is megabytes, and the filter needs it only here.
    pub fn take(snapshot: &mut Snapshot) -> Edge {
        let servers = std::mem::take(&mut snapshot.servers)
            .into_iter()
            .map(|(id, s)| {
                (
                    id,
                    Indexed {
                        param_headers: param_headers_of(&s.tools),
                        upstream_ids: upstream_ids(&s),
                        tools: index(&s.tools),
                        prompts: index(&s.prompts),
                        resources: index(&s.resources),
                        server: s,
                    },
                )
            })
            .collect();
        Edge {
            servers,
            upstreams: std::mem::take(&mut snapshot.upstreams),
            // Validated with the snapshot; keys that do not decode mean no sessions.
            sessions: snapshot.session.take().and_then(|s| {
                Some(Sessions {
                    keys: SessionKeys::from_base64(&s.keys).ok()?,
                    ttl_seconds: s.ttl_seconds,
                    idle_seconds: s.idle_seconds,
                })
            }),
            page_size: usize::try_from(snapshot.policy.list_page_size)
                .unwrap_or(usize::MAX)
                .max(1),
            list_ttl_ms: snapshot.policy.list_ttl_ms,
            relay: snapshot.relay.take(),
        }
    }

    /// Number of virtual servers.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Number of tools over all virtual servers.
    pub fn tool_count(&self) -> usize {
        self.servers.values().map(|s| s.server.tools.len()).sum()
    }

    /// Whether the snapshot defines any virtual server (only then are `/servers/…` paths
    /// the filter's; otherwise they pass through like any other path).
    pub fn serves_any(&self) -> bool {
        !self.servers.is_empty()
    }

    /// Session settings, when sessions are configured.
    pub fn sessions(&self) -> Option<&Sessions> {
        self.sessions.as_ref()
    }

    /// The session relay's cluster, when one is configured.
    pub fn relay(&self) -> Option<&str> {
        self.relay.as_deref()
    }

    /// Upstream `id` of the snapshot.
    pub fn upstream(&self, id: &str) -> Option<&Upstream> {
        self.upstreams.get(id)
    }

    /// The upstreams virtual server `id` draws on (each once), for opening sessions.
    pub fn upstreams_of(&self, id: &str) -> Vec<(&str, &Upstream)> {
        self.servers.get(id).map_or_else(Vec::new, |s| {
            s.upstream_ids
                .iter()
                .filter_map(|u| self.upstreams.get(u).map(|up| (u.as_str(), up)))
                .collect()
        })
    }

    /// Whether virtual server `id` has a tool named `name`.
    pub fn has_tool(&self, id: &str, name: &str) -> bool {
        self.servers
            .get(id)
            .is_some_and(|s| s.tools.contains_key(name))
    }

    /// The arguments tool `name` of server `id` mirrors into `Mcp-Param-*` headers.
    pub fn param_headers(&self, id: &str, name: &str) -> &[ParamHeader] {
        self.servers
            .get(id)
            .filter(|s| !s.param_headers.is_empty())
            .and_then(|s| s.param_headers.get(name))
            .map_or(&[], Vec::as_slice)
    }

    /// The `Origin`s virtual server `id` allows besides the policy's.
    pub fn allowed_origins(&self, id: &str) -> &[String] {
        self.servers
            .get(id)
            .map_or(&[], |s| s.server.allowed_origins.as_slice())
    }

    /// Whether the snapshot has a virtual server `id`.
    pub fn has_server(&self, id: &str) -> bool {
        self.servers.contains_key(id)
    }

    /// Decides what to do with `msg`, sent to virtual server `id` in `era`. `None` when
    /// there is no such server (the filter answers 404).
    pub fn answer(&self, id: &str, msg: &Message, era: Era) -> Option<Answer<'_>> {
        self.answer_as(id, msg, era, None)
    }

    /// [`Edge::answer`] for a client who may see only some entries: the lists answered
    /// show an entry only when `visible(method, name)` admits a use of it (`tools/call`,
    /// `prompts/get`, `resources/read` of its name), and tell a 2026-era client they are
    /// private to it (`cacheScope: private`).
    pub fn answer_as(
        &self,
        id: &str,
        msg: &Message,
        era: Era,
        visible: Visible<'_>,
    ) -> Option<Answer<'_>> {
        let s = self.servers.get(id)?;
        if msg.kind == Kind::Notification {
            return Some(Answer::Accepted);
        }
        if msg.kind != Kind::Request {
            // A response from the client (to a server-initiated request): nothing here
            // issues requests yet.
            return Some(Answer::Accepted);
        }
        let id = msg.id.as_ref();
        let reply = |body| Some(Answer::Reply(body));
        let fail = |code, message: &str| Some(Answer::Reply(error_response(id, code, message)));
        let Some(method) = msg.method.as_ref() else {
            return fail(code::INVALID_REQUEST, "a request needs a method");
        };
        let cacheable = match era {
            Era::Legacy => None,
            Era::Modern => Some(&s.server),
        };
        match method {
            Method::Initialize => reply(initialize(id, &s.server, msg.protocol_version.as_deref())),
            Method::Ping => reply(result(id, "{}")),
            Method::ServerDiscover => reply(discover(id, &s.server, self.list_ttl_ms)),
            Method::ToolsList => {
                let list = List::new("tools", &s.server.tools, "tools/call", visible);
                self.page(id, list, msg, cacheable)
            }
            Method::PromptsList => {
                let list = List::new("prompts", &s.server.prompts, "prompts/get", visible);
                self.page(id, list, msg, cacheable)
            }
            Method::ResourcesList => {
                let list = List::new("resources", &s.server.resources, "resources/read", visible);
                self.page(id, list, msg, cacheable)
            }
            Method::ResourcesTemplatesList => {
                let list = List::new(
                    "resourceTemplates",
                    &s.server.resource_templates,
                    "resources/read",
                    visible,
                );
                self.page(id, list, msg, cacheable)
            }
            Method::ToolsCall | Method::PromptsGet => {
                let (map, list, what) = if *method == Method::ToolsCall {
                    (&s.tools, &s.server.tools, "tool")
                } else {
                    (&s.prompts, &s.server.prompts, "prompt")
                };
                let name = msg.name.as_deref().unwrap_or_default();
                let Some(entry) = map.get(name).and_then(|&i| list.get(i)) else {
                    return fail(
                        code::INVALID_PARAMS,
                        &format!("unknown {what} {name:?} on this server"),
                    );
                };
                self.route(entry, msg.name_span)
                    .or_else(|| fail(code::INTERNAL_ERROR, "upstream not configured"))
            }
            // Completions belong to the upstream of the prompt or resource template they
            // complete an argument of.
            Method::CompletionComplete => match (&msg.ref_name, &msg.ref_uri) {
                (Some(name), _) => match s.prompts.get(name).and_then(|&i| s.server.prompts.get(i))
                {
                    Some(e) => self
                        .route(e, msg.ref_name_span)
                        .or_else(|| fail(code::INTERNAL_ERROR, "upstream not configured")),
                    None => fail(
                        code::INVALID_PARAMS,
                        &format!("unknown prompt {name:?} on this server"),
                    ),
                },
                (None, Some(uri)) => match s.resource(uri) {
                    Some(e) => self
                        .route(e, None)
                        .or_else(|| fail(code::INTERNAL_ERROR, "upstream not configured")),
                    None => fail(
                        RESOURCE_NOT_FOUND,
                        &format!("resource {uri:?} not found on this server"),
                    ),
                },
                (None, None) => fail(
                    code::INVALID_PARAMS,
                    "completion/complete needs params.ref with a prompt name or a resource uri",
                ),
            },
            Method::SubscriptionsListen if era == Era::Modern => Some(Answer::Listen),
            Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
                let uri = msg.uri.as_deref().unwrap_or_default();
                match s.resource(uri) {
                    // Resource URIs are not namespaced: nothing to rewrite.
                    Some(e) => self
                        .route(e, None)
                        .or_else(|| fail(code::INTERNAL_ERROR, "upstream not configured")),
                    None => fail(
                        RESOURCE_NOT_FOUND,
                        &format!("resource {uri:?} not found on this server"),
                    ),
                }
            }
            other => fail(
                code::METHOD_NOT_FOUND,
                &format!(
                    "method {:?} is not served by this virtual server",
                    other.as_str()
                ),
            ),
        }
    }

    fn route<'a>(&'a self, e: &'a Entry, span: Option<(u64, u64)>) -> Option<Answer<'a>> {
        let upstream = self.upstreams.get(&e.upstream)?;
        let rename = span
            .filter(|_| e.name != e.upstream_name)
            .map(|span| (span, e.upstream_name.as_str()));
        Some(Answer::Route(RouteTo {
            upstream_id: &e.upstream,
            upstream,
            rename,
        }))
    }

    /// One page of a list; for a 2026-era client (`modern`: the server it is of) with the
    /// fields that era requires (`resultType`, `ttlMs`, `cacheScope`, the server's identity).
    fn page(
        &self,
        id: Option<&Id>,
        list: List<'_, '_>,
        msg: &Message,
        modern: Option<&VirtualServer>,
    ) -> Option<Answer<'_>> {
        let (key, entries) = (list.key, list.entries);
        let start = match msg.cursor.as_deref() {
            None => 0,
            Some(c) => match decode_cursor(c) {
                Some(n) if n <= entries.len() => n,
                _ => {
                    return Some(Answer::Reply(error_response(
                        id,
                        code::INVALID_PARAMS,
                        &format!("invalid cursor {c:?}"),
                    )));
                }
            },
        };
        let (items, end) = match list.visible {
            None => {
                let end = start.saturating_add(self.page_size).min(entries.len());
                let items: Vec<&Entry> =
                    entries.get(start..end).unwrap_or_default().iter().collect();
                (items, end)
            }
            Some(visible) => {
                // A page of what the client may see; the cursor is the position after the
                // last entry examined, so a later page starts where this one stopped.
                let mut items = Vec::with_capacity(self.page_size.min(entries.len()));
                let mut end = start;
                for e in entries.get(start..).unwrap_or_default() {
                    if items.len() == self.page_size {
                        break;
                    }
                    end += 1;
                    if visible(list.method, &e.name) {
                        items.push(e);
                    }
                }
                // No cursor to a page that would come back empty.
                let more = entries
                    .get(end..)
                    .unwrap_or_default()
                    .iter()
                    .position(|e| visible(list.method, &e.name));
                match more {
                    Some(skip) => (items, end + skip),
                    None => (items, entries.len()),
                }
            }
        };
        let size = 64 + items.iter().map(|e| e.item.get().len() + 1).sum::<usize>();
        // Written straight into the reply: a page can be tens of kilobytes, not worth
        // building twice.
        Some(Answer::Reply(result_with(id, size, |out| {
            out.extend_from_slice(b"{\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":[");
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(e.item.get().as_bytes());
            }
            out.push(b']');
            if end < entries.len() {
                out.extend_from_slice(b",\"nextCursor\":\"");
                out.extend_from_slice(encode_cursor(end).as_bytes());
                out.push(b'"');
            }
            if let Some(server) = modern {
                let scope = if list.visible.is_some() {
                    CacheScope::Private
                } else {
                    CacheScope::Public
                };
                modern_fields(out, server, self.list_ttl_ms, scope);
            }
            out.push(b'}');
        })))
    }
}

/// Which entries a client may see: `visible(method, name)` says whether a use of entry
/// `name` by `method` could be allowed (`None`: everything, for everyone).
pub type Visible<'v> = Option<&'v dyn Fn(&str, &str) -> bool>;

/// A list to page through: its result key, its entries, the method that uses one of them
/// and who may see which.
struct List<'e, 'v> {
    key: &'static str,
    entries: &'e [Entry],
    method: &'static str,
    visible: Visible<'v>,
}

impl<'e, 'v> List<'e, 'v> {
    fn new(
        key: &'static str,
        entries: &'e [Entry],
        method: &'static str,
        visible: Visible<'v>,
    ) -> Self {
        List {
            key,
            entries,
            method,
            visible,
        }
    }
}

/// Whether a 2026-era answer is the same for every client (`cacheScope`).
#[derive(Clone, Copy)]
enum CacheScope {
    Public,
    Private,
}

/// `{"jsonrpc":"2.0","id":…,"result":<result_json>}`.
fn result(id: Option<&Id>, result_json: &str) -> Vec<u8> {
    result_with(id, result_json.len(), |out| {
        out.extend_from_slice(result_json.as_bytes())
    })
}

/// `{"jsonrpc":"2.0","id":…,"result":…}` with the result written by `write`, which writes
/// about `size` bytes.
fn result_with(id: Option<&Id>, size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let id = id.map_or("null", Id::as_json);
    let mut out = Vec::with_capacity(40 + id.len() + size);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"result\":");
    write(&mut out);
    out.push(b'}');
    out
}

/// The protocol version answered to a client asking for `requested`: that one if spoken,
/// otherwise the latest (the client may then disconnect).
pub fn negotiate(requested: Option<&str>) -> &str {
    requested
        .filter(|v| mcp::is_supported_version(v))
        .or(mcp::PROTOCOL_VERSIONS.last().copied())
        .unwrap_or(mcp::DEFAULT_PROTOCOL_VERSION)
}

fn upstream_ids(s: &VirtualServer) -> Vec<String> {
    let mut ids: Vec<String> = [&s.tools, &s.resources, &s.resource_templates, &s.prompts]
        .into_iter()
        .flatten()
        .map(|e| e.upstream.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The fields a 2026-era result the edge answers carries after its own: `resultType`, the
/// cache hints (`public` unless the answer depends on who asks: a list filtered for the
/// principal), and the server's identity in `_meta`.
fn modern_fields(out: &mut Vec<u8>, s: &VirtualServer, ttl_ms: u64, scope: CacheScope) {
    out.extend_from_slice(b",\"resultType\":\"complete\",\"ttlMs\":");
    out.extend_from_slice(ttl_ms.to_string().as_bytes());
    out.extend_from_slice(match scope {
        CacheScope::Public => b",\"cacheScope\":\"public\",\"_meta\":{\"",
        CacheScope::Private => b",\"cacheScope\":\"private\",\"_meta\":{\"",
    });
    out.extend_from_slice(mcp::META_SERVER_INFO.as_bytes());
    out.extend_from_slice(b"\":");
    server_info(out, s);
    out.push(b'}');
}

fn server_info(out: &mut Vec<u8>, s: &VirtualServer) {
    out.extend_from_slice(b"{\"name\":");
    write_json_string(out, &s.name);
    out.extend_from_slice(b",\"version\":");
    write_json_string(out, &s.version);
    out.push(b'}');
}

fn capabilities(r: &mut Vec<u8>, s: &VirtualServer) {
    r.extend_from_slice(
        b"{\"tools\":{\"listChanged\":false},\"resources\":{\"listChanged\":false},\"prompts\":{\"listChanged\":false},\"logging\":{}",
    );
    if !s.prompts.is_empty() || !s.resource_templates.is_empty() {
        // Routed to the upstream that owns the prompt or template.
        r.extend_from_slice(b",\"completions\":{}");
    }
    r.push(b'}');
}

/// `server/discover` (2026-07-28): the versions served, the capabilities, instructions.
fn discover(id: Option<&Id>, s: &VirtualServer, ttl_ms: u64) -> Vec<u8> {
    result_with(id, 512, |r| {
        // The stateless era's versions, as the reference SDK answers: a client that asks
        // speaks that era, and one that does not falls back to `initialize` anyway.
        r.extend_from_slice(b"{\"supportedVersions\":[");
        for (i, v) in mcp::MODERN_VERSIONS.iter().enumerate() {
            if i > 0 {
                r.push(b',');
            }
            write_json_string(r, v);
        }
        r.extend_from_slice(b"],\"capabilities\":");
        capabilities(r, s);
        if let Some(text) = &s.instructions {
            r.extend_from_slice(b",\"instructions\":");
            write_json_string(r, text);
        }
        modern_fields(r, s, ttl_ms, CacheScope::Public);
        r.push(b'}');
    })
}

fn initialize(id: Option<&Id>, s: &VirtualServer, requested: Option<&str>) -> Vec<u8> {
    let version = negotiate(requested);
    let mut r = Vec::with_capacity(256);
    r.extend_from_slice(b"{\"protocolVersion\":");
    write_json_string(&mut r, version);
    r.extend_from_slice(b",\"capabilities\":");
    capabilities(&mut r, s);
    r.extend_from_slice(b",\"serverInfo\":");
    server_info(&mut r, s);
    if let Some(text) = &s.instructions {
        r.extend_from_slice(b",\"instructions\":");
        write_json_string(&mut r, text);
    }
    r.push(b'}');
    result(id, &String::from_utf8_lossy(&r))
}

/// Cursors are opaque to clients; ours is the offset of the next page, tagged so a cursor
/// from elsewhere is refused instead of misread.
fn encode_cursor(offset: usize) -> String {
    format!("mcpgw:{offset}")
}

fn decode_cursor(c: &str) -> Option<usize> {
    c.strip_prefix("mcpgw:")?.parse().ok()
}

/// RFC 6570 templates, matched loosely: the literal text before the first expression and
/// after the last must frame `uri`, and something must stand for the expressions.
fn template_matches(template: &str, uri: &str) -> bool {
    let (Some(open), Some(close)) = (template.find('{'), template.rfind('}')) else {
        return template == uri;
    };
    let prefix = template.get(..open).unwrap_or_default();
    let suffix = template.get(close + 1..).unwrap_or_default();
    uri.len() > prefix.len() + suffix.len() && uri.starts_with(prefix) && uri.ends_with(suffix)
}

#[cfg(test)]
mod tests;
