//! The filter's configuration: one versioned, serde-defined document.
//!
//! This is the one contract between the control plane and the filter. The control plane
//! builds a [`Snapshot`] from its registry and delivers it (JSON) as the wasm plugin's
//! configuration; the filter parses it once in `on_configure`, validates it with
//! [`Snapshot::validate`], and keeps the indexed result for every request. An operator can
//! also write one by hand in an Envoy config; an empty configuration means
//! [`Snapshot::default`], the documented defaults.
//!
//! Every struct rejects unknown fields, so a typo fails `on_configure` (Envoy rejects the
//! config, which NACKs over xDS) instead of silently running with half a policy.

pub mod auth;
pub mod limits;
pub mod plugins;

use crate::catalog::{self, Servers, Upstreams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The schema version this build of `core` reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole filter configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Snapshot {
    /// Schema version of this document; must equal [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Opaque version label set by the control plane (e.g. a content hash); reported in
    /// metrics and logs so an operator can tell which snapshot a filter runs.
    pub version: String,
    /// Request policy applied to every MCP request.
    pub policy: Policy,
    /// Virtual servers by id: each is served at `/servers/{id}/mcp` from this catalog.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: Servers,
    /// Upstream MCP servers by id, referenced by catalog entries.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: Upstreams,
    /// Sessions of virtual servers; without it they are served stateless.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSettings>,
    /// Envoy cluster of the session relay: it serves what one HTTP exchange cannot (the
    /// legacy SSE pair `/servers/{id}/sse` + `/servers/{id}/message`, and the GET stream
    /// of a session over several stateful upstreams). Without it both are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Guardrail plugins (see [`plugins`]): run on the arguments and results of tool calls,
    /// prompt gets and resource reads, here and at virtual servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<plugins::Plugin>,
    /// Request limits (see [`limits`]): rates and calls in flight per virtual server,
    /// local to this Envoy or global through a rate-limit service.
    #[serde(skip_serializing_if = "limits::Limits::is_empty")]
    pub limits: limits::Limits,
    /// Identity at the edge: the token issuers trusted and the tokens revoked; each virtual
    /// server opts in with its own `auth`.
    #[serde(skip_serializing_if = "auth::Auth::is_empty")]
    pub auth: auth::Auth,
}

/// How virtual-server sessions are sealed and how long they live.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// Keys that seal session tokens (ChaCha20-Poly1305), standard base64, 32 bytes each.
    /// The first seals new tokens; every one opens, so a key is rotated by putting the new
    /// one first and keeping the old one until its tokens have expired. Every Envoy of a
    /// fleet gets the same keys, so any of them can serve any session.
    pub keys: Vec<String>,
    /// Seconds a session token is valid after `initialize`; the client then gets 404 and
    /// starts a new session.
    #[serde(default = "default_session_ttl")]
    pub ttl_seconds: u64,
    /// Seconds an upstream session may go unused before the gateway ends it (`DELETE`);
    /// the next call that needs the upstream opens a new one.
    #[serde(default = "default_session_idle")]
    pub idle_seconds: u64,
}

/// Default of [`SessionSettings::ttl_seconds`]: one day.
pub const DEFAULT_SESSION_TTL_SECONDS: u64 = 24 * 60 * 60;
/// Default of [`SessionSettings::idle_seconds`]: 30 minutes.
pub const DEFAULT_SESSION_IDLE_SECONDS: u64 = 30 * 60;

fn default_session_ttl() -> u64 {
    DEFAULT_SESSION_TTL_SECONDS
}

fn default_session_idle() -> u64 {
    DEFAULT_SESSION_IDLE_SECONDS
}

impl SessionSettings {
    /// Settings with `keys` and the default lifetimes.
    pub fn with_keys(keys: Vec<String>) -> SessionSettings {
        SessionSettings {
            keys,
            ttl_seconds: DEFAULT_SESSION_TTL_SECONDS,
            idle_seconds: DEFAULT_SESSION_IDLE_SECONDS,
        }
    }
}

impl std::fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SessionSettings {{ keys: [{} redacted], ttl_seconds: {}, idle_seconds: {} }}",
            self.keys.len(),
            self.ttl_seconds,
            self.idle_seconds
        )
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            schema: SCHEMA_VERSION,
            version: String::new(),
            policy: Policy::default(),
            servers: Servers::new(),
            upstreams: Upstreams::new(),
            session: None,
            relay: None,
            plugins: Vec::new(),
            limits: limits::Limits::default(),
            auth: auth::Auth::default(),
        }
    }
}

/// Request policy: what the filter lets through, and where it routes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// If set, only these JSON-RPC methods (requests and notifications) are allowed;
    /// anything else is answered with JSON-RPC -32601. `None` allows every method.
    pub allowed_methods: Option<Vec<String>>,
    /// Whether methods that are not in MCP's method table pass (subject to
    /// `allowed_methods`); `false` answers them with JSON-RPC -32601.
    pub allow_unknown_methods: bool,
    /// Largest request body accepted, in bytes; larger bodies get HTTP 413.
    pub max_body_bytes: u64,
    /// Reject JSON objects that repeat a key (ambiguous input different parsers read
    /// differently) with JSON-RPC -32600.
    pub reject_duplicate_keys: bool,
    /// Stop reading the body once the request is routable (method, id and routing
    /// parameters seen), so large arguments stream through unbuffered. Only takes effect
    /// when the policy denies nothing (see `policy::Gate::new`) and the request has a
    /// `Content-Length`.
    pub early_terminate: bool,
    /// Tool names `tools/call` may not invoke (answered with HTTP 403 and a JSON-RPC error).
    pub denied_tools: Vec<String>,
    /// Request header the filter sets to the chosen cluster name when a route matches;
    /// an Envoy route matching on this header sends the request there.
    pub route_header: String,
    /// `tools/call` routing: tool name → Envoy cluster name.
    pub tool_routes: BTreeMap<String, String>,
    /// Entries per page of a virtual server's lists (`tools/list`, …) served at the edge.
    pub list_page_size: u32,
    /// Pass the client's `Authorization`, `Proxy-Authorization` and `Cookie` on to
    /// upstreams. Off: MCP forbids token passthrough, and an upstream's own credentials are
    /// added by its Envoy cluster. Turn on only where the upstream is the audience of the
    /// client's token (a mesh in which the filter guards the server that issued it).
    pub forward_client_credentials: bool,
    /// Most messages one JSON-RPC batch may hold (batches exist in MCP 2025-03-26 only);
    /// longer batches get HTTP 400 before anything of them is forwarded.
    pub max_batch_messages: u32,
    /// Accept batches from requests without `MCP-Protocol-Version` (which the transport
    /// reads as 2025-03-26). Off: a batch must say its version.
    pub unversioned_batches: bool,
    /// `Origin`s allowed on every endpoint (`scheme://host[:port]`, `:*` for any port, or
    /// `*`). A request without `Origin` (not a browser) passes; one with an `Origin` not
    /// listed (here or in its virtual server's list) gets 403.
    pub allowed_origins: Vec<String>,
    /// `Host`s (`:authority`) the listener answers to (`host`, `host:port`, `host:*`,
    /// `*.domain`); empty means any. Another `Host` gets 421: a name an attacker rebound
    /// to this address (DNS rebinding) is not one of them.
    pub allowed_hosts: Vec<String>,
    /// `ttlMs` of the lists and `server/discover` a virtual server answers at the edge to
    /// 2026-era clients: how long they may reuse them (0: revalidate every time).
    pub list_ttl_ms: u64,
}

/// Default for [`Policy::max_body_bytes`]: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// Default for [`Policy::list_page_size`].
pub const DEFAULT_LIST_PAGE_SIZE: u32 = 100;
/// Default for [`Policy::max_batch_messages`].
pub const DEFAULT_MAX_BATCH_MESSAGES: u32 = 32;
/// Default for [`Policy::route_header`].
pub const DEFAULT_ROUTE_HEADER: &str = "x-mcpgw-cluster";

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_methods: None,
            allow_unknown_methods: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            reject_duplicate_keys: false,
            early_terminate: true,
            denied_tools: Vec::new(),
            route_header: DEFAULT_ROUTE_HEADER.to_string(),
            tool_routes: BTreeMap::new(),
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
            forward_client_credentials: false,
            max_batch_messages: DEFAULT_MAX_BATCH_MESSAGES,
            unversioned_batches: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            list_ttl_ms: 0,
        }
    }
}

/// A configuration that cannot be used, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid JSON for this schema (unknown field, wrong type, …).
    #[error("configuration does not parse: {0}")]
    Parse(String),
    /// A field parses but its value is unusable.
    #[error("invalid field `{field}`: {reason}")]
    FieldInvalid {
        /// Dotted path of the field, e.g. `policy.max_body_bytes`.
        field: String,
        /// Why the value is unusable.
        reason: String,
    },
}

/// Prefix of a compressed configuration: `mcpgw-deflate:` + base64(raw DEFLATE of the JSON).
pub const COMPRESSED_PREFIX: &str = "mcpgw-deflate:";
/// Largest configuration a compressed one may inflate to.
pub const MAX_INFLATED_BYTES: usize = 512 * 1024 * 1024;

/// Encodes a configuration document compactly for transport: a 10,000-tool catalog is
/// megabytes of repetitive JSON, and every Envoy stream receives it on every change.
pub fn compress(json: &[u8]) -> String {
    use base64::Engine as _;
    let deflated = miniz_oxide::deflate::compress_to_vec(json, 6);
    let mut out = String::with_capacity(COMPRESSED_PREFIX.len() + deflated.len() * 4 / 3 + 4);
    out.push_str(COMPRESSED_PREFIX);
    base64::engine::general_purpose::STANDARD.encode_string(&deflated, &mut out);
    out
}

impl Snapshot {
    /// Parses a configuration as Envoy delivers it: JSON, or [`compress`]ed JSON.
    pub fn from_config(bytes: &[u8]) -> Result<Snapshot, ConfigError> {
        let Some(encoded) = bytes.strip_prefix(COMPRESSED_PREFIX.as_bytes()) else {
            return Snapshot::from_json(bytes);
        };
        use base64::Engine as _;
        let deflated = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_ascii())
            .map_err(|e| ConfigError::Parse(format!("compressed configuration: {e}")))?;
        let json =
            miniz_oxide::inflate::decompress_to_vec_with_limit(&deflated, MAX_INFLATED_BYTES)
                .map_err(|e| {
                    ConfigError::Parse(format!("compressed configuration: inflate: {e}"))
                })?;
        Snapshot::from_json(&json)
    }

    /// Parses a configuration document. Empty (or all-whitespace) input yields the defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Snapshot::default());
        }
        // Name the field a type error is in: serde_json alone says only "invalid type".
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let snapshot: Snapshot = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." {
                ConfigError::Parse(inner.to_string())
            } else {
                ConfigError::Parse(format!("field `{path}`: {inner}"))
            }
        })?;
        de.end().map_err(|e| ConfigError::Parse(e.to_string()))?;
        snapshot.validate()?;
        Ok(snapshot)
    }

    /// Checks semantic constraints that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| {
            Err(ConfigError::FieldInvalid {
                field: field.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.schema != SCHEMA_VERSION {
            return invalid(
                "schema",
                &format!(
                    "unsupported schema {}, expected {SCHEMA_VERSION}",
                    self.schema
                ),
            );
        }
        let p = &self.policy;
        if p.max_body_bytes == 0 {
            return invalid("policy.max_body_bytes", "must be greater than 0");
        }
        if p.list_page_size == 0 {
            return invalid("policy.list_page_size", "must be greater than 0");
        }
        if p.max_batch_messages == 0 {
            return invalid("policy.max_batch_messages", "must be greater than 0");
        }
        for (i, o) in p.allowed_origins.iter().enumerate() {
            if let Err(reason) = crate::origin::check_origin_pattern(o) {
                return invalid(&format!("policy.allowed_origins[{i}]"), &reason);
            }
        }
        for (i, h) in p.allowed_hosts.iter().enumerate() {
            if let Err(reason) = crate::origin::check_host_pattern(h) {
                return invalid(&format!("policy.allowed_hosts[{i}]"), &reason);
            }
        }
        if !is_header_name(&p.route_header) {
            return invalid(
                "policy.route_header",
                "must be a lowercase HTTP header name",
            );
        }
        if let Some(methods) = &p.allowed_methods
            && let Some(i) = methods.iter().position(String::is_empty)
        {
            return invalid(&format!("policy.allowed_methods[{i}]"), "must not be empty");
        }
        if let Some(i) = p.denied_tools.iter().position(String::is_empty) {
            return invalid(&format!("policy.denied_tools[{i}]"), "must not be empty");
        }
        for (tool, cluster) in &p.tool_routes {
            if tool.is_empty() {
                return invalid("policy.tool_routes", "tool name must not be empty");
            }
            if cluster.is_empty() {
                return invalid(
                    &format!("policy.tool_routes.{tool}"),
                    "cluster name must not be empty",
                );
            }
        }
        if let Some(session) = &self.session {
            if session.keys.is_empty() {
                return invalid("session.keys", "at least one key is required");
            }
            for (i, key) in session.keys.iter().enumerate() {
                if let Err(reason) = crate::session::decode_key(key) {
                    return invalid(&format!("session.keys[{i}]"), &reason);
                }
            }
            if !(60..=30 * 24 * 60 * 60).contains(&session.ttl_seconds) {
                return invalid(
                    "session.ttl_seconds",
                    "must be between 60 seconds and 30 days",
                );
            }
            if session.idle_seconds < 60 {
                return invalid("session.idle_seconds", "must be at least 60 seconds");
            }
        }
        if self.relay.as_deref().is_some_and(str::is_empty) {
            return invalid("relay", "cluster name must not be empty");
        }
        catalog::validate(&self.servers, &self.upstreams).map_err(|e| {
            ConfigError::FieldInvalid {
                field: e.field,
                reason: e.reason,
            }
        })?;
        self.limits.check(|id| self.servers.contains_key(id))?;
        crate::guard::Guard::check(&self.plugins)?;
        self.validate_auth()
    }

    /// Checks `auth` and every server's `auth` (rules parsed).
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |e: auth::AuthError| ConfigError::FieldInvalid {
            field: e.field,
            reason: e.reason,
        };
        auth::validate(&self.auth).map_err(invalid)?;
        if let Some(a) = &self.auth.passthrough {
            const AT: &str = "auth.passthrough";
            auth::validate_server_at(AT, a, &self.auth).map_err(invalid)?;
            crate::auth::check_rules_at(AT, a).map_err(invalid)?;
        }
        for (id, server) in &self.servers {
            if let Some(a) = &server.auth {
                auth::validate_server(id, a, &self.auth).map_err(invalid)?;
                crate::auth::check_rules(id, a).map_err(invalid)?;
            }
        }
        Ok(())
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_means_defaults() {
        assert_eq!(Snapshot::from_json(b"").unwrap(), Snapshot::default());
        assert_eq!(Snapshot::from_json(b" \n").unwrap(), Snapshot::default());
        assert_eq!(Snapshot::from_json(b"{}").unwrap(), Snapshot::default());
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = Snapshot::from_json(br#"{"policy":{"max_body_byts":5}}"#).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse(m) if m.contains("max_body_byts")),
            "{err}"
        );
    }

    #[test]
    fn type_errors_name_the_field() {
        let cases = [
            (
                r#"{"policy":{"max_body_bytes":"lots"}}"#,
                "policy.max_body_bytes",
            ),
            (
                r#"{"policy":{"denied_tools":"echo"}}"#,
                "policy.denied_tools",
            ),
            (
                r#"{"policy":{"tool_routes":{"echo":7}}}"#,
                "policy.tool_routes.echo",
            ),
            (
                r#"{"policy":{"allowed_methods":[1]}}"#,
                "policy.allowed_methods[0]",
            ),
        ];
        for (doc, field) in cases {
            match Snapshot::from_json(doc.as_bytes()) {
                Err(ConfigError::Parse(m)) => {
                    assert!(m.contains(&format!("field `{field}`")), "{doc}: {m}")
                }
                other => panic!("{doc}: {other:?}"),
            }
        }
        assert!(Snapshot::from_json(b"{} x").is_err(), "trailing characters");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (r#"{"schema":2}"#, "schema"),
            (
                r#"{"policy":{"max_body_bytes":0}}"#,
                "policy.max_body_bytes",
            ),
            (
                r#"{"policy":{"route_header":"X Bad"}}"#,
                "policy.route_header",
            ),
            (
                r#"{"policy":{"denied_tools":["ok",""]}}"#,
                "policy.denied_tools[1]",
            ),
            (
                r#"{"policy":{"tool_routes":{"echo":""}}}"#,
                "policy.tool_routes.echo",
            ),
            (r#"{"relay":""}"#, "relay"),
        ];
        for (doc, want) in cases {
            match Snapshot::from_json(doc.as_bytes()) {
                Err(ConfigError::FieldInvalid { field, .. }) => assert_eq!(field, want, "{doc}"),
                other => panic!("{doc}: expected FieldInvalid({want}), got {other:?}"),
            }
        }
    }

    fn catalog_doc(entry: &str) -> String {
        format!(
            r#"{{"upstreams":{{"u1":{{"cluster":"c1"}}}},
                "servers":{{"s1":{{"name":"one","tools":[{entry}]}}}}}}"#
        )
    }

    #[test]
    fn catalog_parses_and_keeps_items_verbatim() {
        let item = r#"{"name":"u1__echo","inputSchema":{"type":"object"},"description":"é"}"#;
        let doc = catalog_doc(&format!(
            r#"{{"name":"u1__echo","upstream":"u1","upstream_name":"echo","item":{item}}}"#
        ));
        let s = Snapshot::from_json(doc.as_bytes()).unwrap();
        let server = &s.servers["s1"];
        assert_eq!(server.tools[0].item.get(), item);
        assert_eq!(s.upstreams["u1"].path, "/mcp", "default path");
        let again = Snapshot::from_json(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn catalog_errors_name_the_field() {
        let e = |name: &str, up: &str, item: &str| {
            format!(r#"{{"name":"{name}","upstream":"{up}","upstream_name":"echo","item":{item}}}"#)
        };
        let ok = e("t", "u1", "{}");
        let cases = [
            (
                catalog_doc(&e("t", "nope", "{}")),
                "servers.s1.tools[0].upstream",
            ),
            (catalog_doc(&e("", "u1", "{}")), "servers.s1.tools[0].name"),
            (
                catalog_doc(&e("t", "u1", "[1]")),
                "servers.s1.tools[0].item",
            ),
            (
                catalog_doc(&format!("{ok},{ok}")),
                "servers.s1.tools[1].name",
            ),
            (
                r#"{"servers":{"a/b":{"name":"x"}}}"#.to_owned(),
                "servers.a/b",
            ),
            (
                r#"{"upstreams":{"u":{"cluster":"c","path":"mcp"}}}"#.to_owned(),
                "upstreams.u.path",
            ),
            (
                r#"{"session":{"keys":["c2hvcnQ="]}}"#.to_owned(),
                "session.keys[0]",
            ),
            (r#"{"session":{"keys":[]}}"#.to_owned(), "session.keys"),
            (
                format!(
                    r#"{{"session":{{"keys":["{}"],"ttl_seconds":5}}}}"#,
                    "A".repeat(43) + "="
                ),
                "session.ttl_seconds",
            ),
        ];
        for (doc, want) in cases {
            match Snapshot::from_json(doc.as_bytes()) {
                Err(ConfigError::FieldInvalid { field, .. }) => assert_eq!(field, want, "{doc}"),
                other => panic!("{doc}: expected FieldInvalid({want}), got {other:?}"),
            }
        }
        match Snapshot::from_json(catalog_doc(&e("t", "u1", "{")).as_bytes()) {
            Err(ConfigError::Parse(m)) => assert!(m.contains("servers"), "{m}"),
            other => panic!("truncated item: {other:?}"),
        }
    }

    #[test]
    fn compressed_configurations_parse_like_plain_ones() {
        let mut s = Snapshot {
            version: "v9".into(),
            ..Snapshot::default()
        };
        s.policy.denied_tools = (0..1000).map(|i| format!("tool-{i}")).collect();
        let json = serde_json::to_vec(&s).unwrap();
        let packed = compress(&json);
        assert!(
            packed.len() < json.len() / 3,
            "{} vs {}",
            packed.len(),
            json.len()
        );
        assert_eq!(Snapshot::from_config(packed.as_bytes()).unwrap(), s);
        assert_eq!(
            Snapshot::from_config(&json).unwrap(),
            s,
            "plain JSON still works"
        );
        for bad in [
            format!("{COMPRESSED_PREFIX}!!!"),
            format!("{COMPRESSED_PREFIX}AAAA"),
            compress(b"{\"policy\":{\"max_body_bytes\":0}}"),
        ] {
            assert!(Snapshot::from_config(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips() {
        let mut s = Snapshot {
            version: "v7".into(),
            relay: Some("mcpgw-relay".into()),
            ..Snapshot::default()
        };
        s.policy
            .tool_routes
            .insert("echo".into(), "everything".into());
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(Snapshot::from_json(&json).unwrap(), s);
    }
}
