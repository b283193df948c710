//! The registry's domain types and the REST bodies built from them (snake_case JSON).
//!
//! Tools, resources and prompts share one stored shape, [`CatalogItem`]: the columns every
//! kind has, plus a kind-specific `spec` JSON object. The API presents each kind with its own
//! fields ([`Tool`], [`Resource`], [`Prompt`]); the conversions live here, in one place.

mod upstream;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

pub use upstream::{MAX_URL_BYTES, REDACTED, UpstreamUrl, redact_urls};

/// A value that does not parse: which field, and why (the API answers 422 naming it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldInvalid {
    /// Field name (JSON path).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl FieldInvalid {
    /// A field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error under a parent path (`tags[2]` in `tools[0]` → `tools[0].tags[2]`).
    pub fn at(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }

    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        "invalid"
    }
}

/// The three catalog kinds a gateway federates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    /// An MCP tool.
    Tool,
    /// An MCP resource or resource template.
    Resource,
    /// An MCP prompt.
    Prompt,
}

impl CatalogKind {
    /// Every catalog kind, in export order.
    pub const ALL: [CatalogKind; 3] = [Self::Tool, Self::Resource, Self::Prompt];

    /// The table that stores this kind.
    pub fn table(self) -> &'static str {
        match self {
            Self::Tool => "tools",
            Self::Resource => "resources",
            Self::Prompt => "prompts",
        }
    }

    /// The join table linking virtual servers to items of this kind.
    pub fn server_table(self) -> &'static str {
        match self {
            Self::Tool => "server_tools",
            Self::Resource => "server_resources",
            Self::Prompt => "server_prompts",
        }
    }

    /// Singular label used in errors.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Resource => "resource",
            Self::Prompt => "prompt",
        }
    }
}

/// Upstream transport of a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// MCP streamable HTTP (2025-03-26 and later).
    #[default]
    #[serde(alias = "STREAMABLEHTTP", alias = "streamablehttp", alias = "http")]
    StreamableHttp,
    /// Legacy HTTP+SSE transport (2024-11-05).
    #[serde(alias = "SSE")]
    Sse,
}

impl Transport {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StreamableHttp => "streamable_http",
            Self::Sse => "sse",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "streamable_http" => Some(Self::StreamableHttp),
            "sse" => Some(Self::Sse),
            _ => None,
        }
    }
}

/// How mcpgw authenticates to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic <user:password>`.
    Basic,
    /// Custom headers (`auth_headers`).
    #[serde(alias = "authheaders")]
    Headers,
}

impl AuthType {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bearer => "bearer",
            Self::Basic => "basic",
            Self::Headers => "headers",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "bearer" => Some(Self::Bearer),
            "basic" => Some(Self::Basic),
            "headers" => Some(Self::Headers),
            _ => None,
        }
    }
}

/// A custom header sent to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeaderPair {
    /// Header name.
    pub key: String,
    /// Header value (write-only: never returned).
    pub value: String,
}

/// Upstream credentials in clear; only ever held in memory and stored sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Credentials {
    /// Bearer token.
    Bearer {
        /// The token.
        token: String,
    },
    /// HTTP basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// Arbitrary headers.
    Headers {
        /// The headers.
        headers: Vec<HeaderPair>,
    },
}

impl Credentials {
    /// The auth type these credentials are for.
    pub fn auth_type(&self) -> AuthType {
        match self {
            Self::Bearer { .. } => AuthType::Bearer,
            Self::Basic { .. } => AuthType::Basic,
            Self::Headers { .. } => AuthType::Headers,
        }
    }
}

/// A registered upstream MCP server (or peer gateway). Credentials are never included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Gateway {
    /// Opaque id.
    pub id: String,
    /// Unique name; prefixes the names of everything discovered from it.
    pub name: String,
    /// MCP endpoint URL.
    pub url: String,
    /// Upstream transport.
    pub transport: Transport,
    /// Free text.
    pub description: Option<String>,
    /// Tags for filtering.
    pub tags: Vec<String>,
    /// Operator switch.
    pub enabled: bool,
    /// Health: false after `health_failure_threshold` failed checks in a row.
    pub reachable: bool,
    /// Kind of stored credentials (the credentials themselves are write-only).
    pub auth_type: AuthType,
    /// Capabilities the upstream announced in `initialize`.
    pub capabilities: Option<Value>,
    /// `serverInfo` the upstream announced in `initialize`.
    pub server_info: Option<Value>,
    /// Negotiated MCP protocol version.
    pub protocol_version: Option<String>,
    /// Last successful contact (RFC 3339).
    pub last_seen: Option<String>,
    /// Last federation or health-check error.
    pub last_error: Option<String>,
    /// Failed health checks in a row.
    pub consecutive_failures: i64,
    /// Discovered items the last discovery run (registration, refresh, resync or
    /// list_changed) could not store because their exposed name was taken.
    pub collisions: Vec<Collision>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Optimistic-concurrency version; pass it back on update to detect lost updates.
    pub version: i64,
}

/// A stored tool, resource or prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogItem {
    /// Which kind.
    pub kind: CatalogKind,
    /// Opaque id.
    pub id: String,
    /// Unique (per kind) exposed name: `{gateway}{sep}{original_name}` for discovered items.
    pub name: String,
    /// Name at the upstream.
    pub original_name: String,
    /// Owning gateway; `None` for items defined by hand.
    pub gateway_id: Option<String>,
    /// Resource URI or URI template.
    pub uri: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Kind-specific fields (JSON object).
    pub spec: Map<String, Value>,
    /// Tags.
    pub tags: Vec<String>,
    /// Operator switch.
    pub enabled: bool,
    /// Health of the owning gateway.
    pub reachable: bool,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Optimistic-concurrency version.
    pub version: i64,
}

/// A new catalog item, before it gets an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// Exposed name.
    pub name: String,
    /// Upstream name (equal to `name` for items defined by hand).
    pub original_name: String,
    /// Owning gateway.
    pub gateway_id: Option<String>,
    /// Resource URI or template.
    pub uri: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Kind-specific fields.
    pub spec: Map<String, Value>,
    /// Tags.
    pub tags: Vec<String>,
    /// Operator switch.
    pub enabled: bool,
}

/// A partial update of a catalog item; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemPatch {
    /// New exposed name.
    pub name: Option<String>,
    /// New URI (resources).
    pub uri: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Fields merged into `spec` (a `null` value removes the field).
    pub spec: Map<String, Value>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// Fail with a conflict unless the stored version equals this.
    pub expected_version: Option<i64>,
}

/// A virtual server: chosen tools, resources and prompts exposed as one MCP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Server {
    /// Opaque id (the `{id}` in `/servers/{id}/mcp`).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Icon URL.
    pub icon: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Operator switch.
    pub enabled: bool,
    /// Tool ids.
    pub associated_tools: Vec<String>,
    /// Resource ids.
    pub associated_resources: Vec<String>,
    /// Prompt ids.
    pub associated_prompts: Vec<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Optimistic-concurrency version.
    pub version: i64,
}

/// One page of a list (the API documents one concrete page type per kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page, ordered by name.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and paging shared by every list endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size (1..=500, default 50).
    pub limit: Option<u32>,
    /// Comma-separated tags; an item matches when it has any of them.
    pub tags: Option<String>,
    /// Only items of this gateway (catalog kinds only).
    pub gateway_id: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) entries.
    pub enabled: Option<bool>,
    /// ContextForge compatibility: when `false`, same as `enabled=true`.
    pub include_inactive: Option<bool>,
}

// ---- REST bodies --------------------------------------------------------------------

/// Body of `POST /gateways`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayCreate {
    /// Unique name: letters, digits, `-`, `_`, `.` (1..=64).
    pub name: String,
    /// MCP endpoint URL (http or https).
    pub url: String,
    /// Upstream transport (default streamable_http).
    #[serde(default)]
    pub transport: Transport,
    /// Free text.
    pub description: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Operator switch (default true).
    pub enabled: Option<bool>,
    /// Credential kind (default none).
    #[serde(default)]
    pub auth_type: AuthType,
    /// Bearer token (auth_type bearer).
    pub auth_token: Option<String>,
    /// User name (auth_type basic).
    pub auth_username: Option<String>,
    /// Password (auth_type basic).
    pub auth_password: Option<String>,
    /// Headers (auth_type headers).
    pub auth_headers: Option<Vec<HeaderPair>>,
    /// Connect and discover now (default true). When false the gateway is stored as is
    /// and discovered by the next refresh.
    pub discover: Option<bool>,
}

/// Body of `PUT /gateways/{id}`: every field optional.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayUpdate {
    /// New name (discovered items are renamed on the next refresh).
    pub name: Option<String>,
    /// New URL.
    pub url: Option<String>,
    /// New transport.
    pub transport: Option<Transport>,
    /// New description.
    pub description: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// New credential kind; with it the matching credential fields.
    pub auth_type: Option<AuthType>,
    /// Bearer token.
    pub auth_token: Option<String>,
    /// User name.
    pub auth_username: Option<String>,
    /// Password.
    pub auth_password: Option<String>,
    /// Headers.
    pub auth_headers: Option<Vec<HeaderPair>>,
    /// Expected current version (optimistic concurrency).
    pub version: Option<i64>,
}

/// A partial gateway update, as the store applies it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayPatch {
    /// New name.
    pub name: Option<String>,
    /// New URL.
    pub url: Option<String>,
    /// New transport.
    pub transport: Option<Transport>,
    /// New description.
    pub description: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// New credentials: `Some((type, sealed))`.
    pub auth: Option<(AuthType, Option<String>)>,
    /// Expected current version.
    pub expected_version: Option<i64>,
}

/// A new gateway as the store inserts it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGateway {
    /// Name.
    pub name: String,
    /// URL.
    pub url: String,
    /// Transport.
    pub transport: Transport,
    /// Free text.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Operator switch.
    pub enabled: bool,
    /// Credential kind.
    pub auth_type: AuthType,
    /// Sealed credentials.
    pub auth_sealed: Option<String>,
}

/// A tool as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tool {
    /// Opaque id.
    pub id: String,
    /// Unique exposed name.
    pub name: String,
    /// Name at the upstream.
    pub original_name: String,
    /// Owning gateway (absent for tools defined by hand).
    pub gateway_id: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Human title.
    pub title: Option<String>,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// JSON Schema of structured results.
    pub output_schema: Option<Value>,
    /// MCP tool annotations.
    pub annotations: Option<Value>,
    /// `MCP` for discovered tools, `REST` for tools defined by hand over a REST endpoint.
    pub integration_type: String,
    /// REST endpoint (integration_type REST).
    pub url: Option<String>,
    /// HTTP method (integration_type REST).
    pub request_type: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Operator switch.
    pub enabled: bool,
    /// Health of the owning gateway.
    pub reachable: bool,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Optimistic-concurrency version.
    pub version: i64,
}

/// A resource or resource template as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resource {
    /// Opaque id.
    pub id: String,
    /// Unique exposed name.
    pub name: String,
    /// Name at the upstream.
    pub original_name: String,
    /// Owning gateway.
    pub gateway_id: Option<String>,
    /// URI, or URI template when `is_template`.
    pub uri: String,
    /// True for resource templates (RFC 6570 URI).
    pub is_template: bool,
    /// Free text.
    pub description: Option<String>,
    /// Human title.
    pub title: Option<String>,
    /// MIME type.
    pub mime_type: Option<String>,
    /// Size in bytes, if the upstream said.
    pub size: Option<i64>,
    /// Literal content for resources defined by hand.
    pub content: Option<String>,
    /// MCP annotations.
    pub annotations: Option<Value>,
    /// Tags.
    pub tags: Vec<String>,
    /// Operator switch.
    pub enabled: bool,
    /// Health of the owning gateway.
    pub reachable: bool,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Optimistic-concurrency version.
    pub version: i64,
}

/// A prompt as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Prompt {
    /// Opaque id.
    pub id: String,
    /// Unique exposed name.
    pub name: String,
    /// Name at the upstream.
    pub original_name: String,
    /// Owning gateway.
    pub gateway_id: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Human title.
    pub title: Option<String>,
    /// Prompt arguments (MCP `PromptArgument` objects).
    pub arguments: Vec<Value>,
    /// Template text for prompts defined by hand.
    pub template: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Operator switch.
    pub enabled: bool,
    /// Health of the owning gateway.
    pub reachable: bool,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Optimistic-concurrency version.
    pub version: i64,
}

fn spec_str(spec: &Map<String, Value>, key: &str) -> Option<String> {
    spec.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn spec_value(spec: &Map<String, Value>, key: &str) -> Option<Value> {
    spec.get(key).filter(|v| !v.is_null()).cloned()
}

impl From<CatalogItem> for Tool {
    fn from(i: CatalogItem) -> Self {
        Tool {
            title: spec_str(&i.spec, "title"),
            input_schema: spec_value(&i.spec, "input_schema")
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            output_schema: spec_value(&i.spec, "output_schema"),
            annotations: spec_value(&i.spec, "annotations"),
            integration_type: spec_str(&i.spec, "integration_type")
                .unwrap_or_else(|| "MCP".to_owned()),
            url: spec_str(&i.spec, "url"),
            request_type: spec_str(&i.spec, "request_type"),
            id: i.id,
            name: i.name,
            original_name: i.original_name,
            gateway_id: i.gateway_id,
            description: i.description,
            tags: i.tags,
            enabled: i.enabled,
            reachable: i.reachable,
            created_at: i.created_at,
            updated_at: i.updated_at,
            version: i.version,
        }
    }
}

impl From<CatalogItem> for Resource {
    fn from(i: CatalogItem) -> Self {
        Resource {
            is_template: i
                .spec
                .get("is_template")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            title: spec_str(&i.spec, "title"),
            mime_type: spec_str(&i.spec, "mime_type"),
            size: i.spec.get("size").and_then(Value::as_i64),
            content: spec_str(&i.spec, "content"),
            annotations: spec_value(&i.spec, "annotations"),
            uri: i.uri.unwrap_or_default(),
            id: i.id,
            name: i.name,
            original_name: i.original_name,
            gateway_id: i.gateway_id,
            description: i.description,
            tags: i.tags,
            enabled: i.enabled,
            reachable: i.reachable,
            created_at: i.created_at,
            updated_at: i.updated_at,
            version: i.version,
        }
    }
}

impl From<CatalogItem> for Prompt {
    fn from(i: CatalogItem) -> Self {
        Prompt {
            title: spec_str(&i.spec, "title"),
            arguments: i
                .spec
                .get("arguments")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            template: spec_str(&i.spec, "template"),
            id: i.id,
            name: i.name,
            original_name: i.original_name,
            gateway_id: i.gateway_id,
            description: i.description,
            tags: i.tags,
            enabled: i.enabled,
            reachable: i.reachable,
            created_at: i.created_at,
            updated_at: i.updated_at,
            version: i.version,
        }
    }
}

/// Body of `POST /tools` (a tool defined by hand).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCreate {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Human title.
    pub title: Option<String>,
    /// JSON Schema of the arguments (default `{"type":"object"}`).
    pub input_schema: Option<Value>,
    /// JSON Schema of structured results.
    pub output_schema: Option<Value>,
    /// MCP annotations.
    pub annotations: Option<Value>,
    /// `REST` (default) or `MCP`.
    pub integration_type: Option<String>,
    /// REST endpoint.
    pub url: Option<String>,
    /// HTTP method for REST tools (default POST).
    pub request_type: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Operator switch (default true).
    pub enabled: Option<bool>,
}

/// Body of `PUT /tools/{id}`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New title.
    pub title: Option<String>,
    /// New input schema.
    pub input_schema: Option<Value>,
    /// New output schema.
    pub output_schema: Option<Value>,
    /// New annotations.
    pub annotations: Option<Value>,
    /// New REST endpoint.
    pub url: Option<String>,
    /// New HTTP method.
    pub request_type: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// Expected current version.
    pub version: Option<i64>,
}

/// Body of `POST /resources`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceCreate {
    /// Unique name.
    pub name: String,
    /// URI (or template when `is_template`).
    pub uri: String,
    /// Template flag.
    #[serde(default)]
    pub is_template: bool,
    /// Free text.
    pub description: Option<String>,
    /// Human title.
    pub title: Option<String>,
    /// MIME type.
    pub mime_type: Option<String>,
    /// Literal content served for this resource.
    pub content: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Operator switch (default true).
    pub enabled: Option<bool>,
}

/// Body of `PUT /resources/{id}`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceUpdate {
    /// New name.
    pub name: Option<String>,
    /// New URI.
    pub uri: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New title.
    pub title: Option<String>,
    /// New MIME type.
    pub mime_type: Option<String>,
    /// New content.
    pub content: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// Expected current version.
    pub version: Option<i64>,
}

/// Body of `POST /prompts`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptCreate {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Human title.
    pub title: Option<String>,
    /// Template text.
    pub template: Option<String>,
    /// Arguments (`{name, description, required}` objects).
    #[serde(default)]
    pub arguments: Vec<Value>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Operator switch (default true).
    pub enabled: Option<bool>,
}

/// Body of `PUT /prompts/{id}`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New title.
    pub title: Option<String>,
    /// New template.
    pub template: Option<String>,
    /// New arguments.
    pub arguments: Option<Vec<Value>>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// Expected current version.
    pub version: Option<i64>,
}

/// Body of `POST /servers`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerCreate {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Icon URL.
    pub icon: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Operator switch (default true).
    pub enabled: Option<bool>,
    /// Tool ids.
    #[serde(default)]
    pub associated_tools: Vec<String>,
    /// Resource ids.
    #[serde(default)]
    pub associated_resources: Vec<String>,
    /// Prompt ids.
    #[serde(default)]
    pub associated_prompts: Vec<String>,
}

/// Body of `PUT /servers/{id}`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New icon.
    pub icon: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// Replaces the tool set.
    pub associated_tools: Option<Vec<String>>,
    /// Replaces the resource set.
    pub associated_resources: Option<Vec<String>>,
    /// Replaces the prompt set.
    pub associated_prompts: Option<Vec<String>>,
    /// Expected current version.
    pub version: Option<i64>,
}

/// `?activate=` of the state endpoints (ContextForge's toggle).
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StateQuery {
    /// true enables, false disables.
    pub activate: bool,
}

/// What a discovery run changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SyncReport {
    /// Items inserted.
    pub added: u32,
    /// Items whose upstream definition changed.
    pub updated: u32,
    /// Items gone upstream, removed.
    pub removed: u32,
    /// Items unchanged.
    pub unchanged: u32,
    /// Items not stored because their exposed name is taken by another owner.
    pub collisions: Vec<Collision>,
}

/// A discovered item whose exposed name is already taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Collision {
    /// Kind of the item.
    pub kind: CatalogKind,
    /// Exposed name that is taken.
    pub name: String,
    /// Owner of the existing item (gateway id), absent when defined by hand. The
    /// gateway's own id when the upstream listed the name twice (e.g. a resource and a
    /// resource template with the same name): the first one listed is kept.
    pub existing_gateway_id: Option<String>,
}

/// Answer of `POST /gateways` and `POST /gateways/{id}/refresh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewaySync {
    /// The gateway after the run.
    pub gateway: Gateway,
    /// What changed (absent when discovery was skipped).
    pub sync: Option<SyncReport>,
}

/// Current registry version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegistryVersion {
    /// Monotonic counter bumped in the transaction of every registry change.
    pub registry_version: i64,
}
