//! The catalog part of a [`Snapshot`](crate::snapshot::Snapshot): virtual servers, the
//! tools, resources and prompts each one exposes, and the upstreams that own them.
//!
//! Each entry carries its MCP list item pre-rendered by the control plane ([`RawJson`]),
//! exactly as a client receives it in `tools/list` (or `resources/list`, …). The filter
//! answers a list by concatenating those bytes, without building or serializing a tree,
//! and routes a call by the entry's `upstream` and `upstream_name`.

use crate::upstream_identity::UpstreamIdentity;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A JSON value kept as its original text (one allocation, no tree).
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Wraps already-serialized JSON; fails if `text` is not one JSON value.
    pub fn from_string(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(RawJson)
    }

    /// Serializes `value`.
    pub fn to_raw<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(RawJson)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Whether the value is a JSON object.
    pub fn is_object(&self) -> bool {
        self.get().starts_with('{')
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(RawJson)
    }
}

/// A virtual server: one MCP endpoint (`/servers/{id}/mcp`) composing entries from any
/// upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServer {
    /// `serverInfo.name` in the `initialize` result.
    pub name: String,
    /// `serverInfo.version` in the `initialize` result.
    #[serde(default)]
    pub version: String,
    /// `instructions` in the `initialize` result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Tools, in list order; names unique within the server.
    #[serde(default)]
    pub tools: Vec<Entry>,
    /// Resources, in list order; `name` is the URI clients read, unique within the server.
    #[serde(default)]
    pub resources: Vec<Entry>,
    /// Resource templates, in list order; `name` is the URI template.
    #[serde(default)]
    pub resource_templates: Vec<Entry>,
    /// Prompts, in list order; names unique within the server.
    #[serde(default)]
    pub prompts: Vec<Entry>,
    /// `Origin`s allowed on this server besides the policy's (`policy.allowed_origins`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Identity: whether the server needs a token, the resource it is, its rules
    /// (`crate::snapshot::auth`). Without it, anyone who reaches it may use all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::snapshot::auth::ServerAuth>,
}

/// One tool, resource, resource template or prompt of a virtual server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The name clients use (namespaced `{gateway}{separator}{name}` for federated
    /// tools and prompts; the URI for resources).
    pub name: String,
    /// Key of the owning upstream in [`Snapshot::upstreams`](crate::snapshot::Snapshot).
    pub upstream: String,
    /// The name (or URI) the upstream knows it by; calls are rewritten to it.
    pub upstream_name: String,
    /// The MCP list item as clients receive it (a JSON object).
    pub item: RawJson,
}

/// An upstream MCP server as the filter reaches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Envoy cluster that reaches it.
    pub cluster: String,
    /// Path of its MCP endpoint (e.g. `/mcp`).
    #[serde(default = "default_path")]
    pub path: String,
    /// `:authority` to send (defaults to what the cluster's host is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The protocol versions the upstream speaks (from discovery); empty means the
    /// session era's only, as before discovery knew more. A call goes in the client's era
    /// when the upstream speaks it, and is bridged to the other era when it does not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol_versions: Vec<String>,
    /// As whom the edge calls it (default `static`: the cluster adds the gateway's own
    /// credential). See [`crate::upstream_identity`].
    #[serde(default, skip_serializing_if = "UpstreamIdentity::is_static")]
    pub identity: UpstreamIdentity,
}

impl Upstream {
    /// Whether the upstream speaks the stateless (2026-07-28) era.
    pub fn speaks_modern(&self) -> bool {
        self.protocol_versions
            .iter()
            .any(|v| crate::mcp::is_modern(v))
    }

    /// Whether the upstream speaks the session (2025) era.
    pub fn speaks_legacy(&self) -> bool {
        self.protocol_versions.is_empty()
            || self
                .protocol_versions
                .iter()
                .any(|v| !crate::mcp::is_modern(v))
    }
}

fn default_path() -> String {
    "/mcp".to_owned()
}

/// Servers keyed by id and upstreams keyed by id, as they appear in a snapshot.
pub type Servers = BTreeMap<String, VirtualServer>;
/// Upstreams keyed by id.
pub type Upstreams = BTreeMap<String, Upstream>;

/// A catalog problem, naming the field (dotted path) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    /// Dotted path, e.g. `servers.s1.tools[3].upstream`.
    pub field: String,
    /// Why the value is unusable.
    pub reason: String,
}

/// Checks the cross-references and uniqueness rules serde cannot express.
pub fn validate(servers: &Servers, upstreams: &Upstreams) -> Result<(), CatalogError> {
    let err = |field: String, reason: &str| {
        Err(CatalogError {
            field,
            reason: reason.to_owned(),
        })
    };
    for (id, up) in upstreams {
        if id.is_empty() {
            return err("upstreams".into(), "upstream id must not be empty");
        }
        if up.cluster.is_empty() {
            return err(format!("upstreams.{id}.cluster"), "must not be empty");
        }
        if !up.path.starts_with('/') {
            return err(format!("upstreams.{id}.path"), "must start with '/'");
        }
        if let Err((field, reason)) = up.identity.check() {
            return err(format!("upstreams.{id}.identity.{field}"), &reason);
        }
    }
    for (id, server) in servers {
        for (i, o) in server.allowed_origins.iter().enumerate() {
            if let Err(reason) = crate::origin::check_origin_pattern(o) {
                return err(format!("servers.{id}.allowed_origins[{i}]"), &reason);
            }
        }
        if !is_path_segment(id) {
            return err(
                format!("servers.{id}"),
                "server id must be a non-empty URL path segment (letters, digits, '-', '_', '.')",
            );
        }
        let lists = [
            ("tools", &server.tools),
            ("resources", &server.resources),
            ("resource_templates", &server.resource_templates),
            ("prompts", &server.prompts),
        ];
        for (list, entries) in lists {
            let mut seen = std::collections::HashSet::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                let at = |f: &str| format!("servers.{id}.{list}[{i}].{f}");
                if e.name.is_empty() {
                    return err(at("name"), "must not be empty");
                }
                if !seen.insert(e.name.as_str()) {
                    return err(at("name"), &format!("duplicate name {:?}", e.name));
                }
                if !upstreams.contains_key(&e.upstream) {
                    return err(
                        at("upstream"),
                        &format!("no upstream {:?} in `upstreams`", e.upstream),
                    );
                }
                if e.upstream_name.is_empty() {
                    return err(at("upstream_name"), "must not be empty");
                }
                if !e.item.is_object() {
                    return err(at("item"), "must be a JSON object");
                }
            }
        }
    }
    Ok(())
}

/// Whether `s` is an id that can stand as one URL path segment as it is (virtual server and
/// upstream ids): non-empty, not `.` or `..`, only letters, digits, `-`, `_` and `.`.
pub fn is_path_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
