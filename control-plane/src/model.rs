//! The registry's domain: what the store keeps and every other module works with.
//!
//! Values enter through one parse each (newtypes in [`names`], [`UpstreamUrl`], the typed
//! specs in [`spec`]), so a `Gateway` or a `CatalogItem` cannot hold an invalid name, tag or
//! URL. The REST bodies and views are another layer (`api::types`), converted to and from
//! these types in one place each; the database rows a third (`store`).

mod exposure;
mod names;
mod spec;
mod upstream;
mod upstream_identity;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use exposure::{AllowedOrigins, MAX_ALLOWED_ORIGINS, Naming};
pub use names::{
    GatewayName, ItemName, MAX_GATEWAY_NAME, MAX_ITEM_NAME_BYTES, MAX_TAG, MAX_TAGS, Tag, Tags,
};
pub use spec::{
    CatalogSpec, HttpMethod, IntegrationType, JsonObject, PromptArgument, PromptPatch, PromptSpec,
    ResourcePatch, ResourceSpec, ToolPatch, ToolSpec,
};
pub use upstream::{MAX_URL_BYTES, REDACTED, UpstreamUrl, redact_urls};
pub use upstream_identity::{
    CLIENT_SECRET_LABEL, GatewayIdentity, IdentityMode, TokenExchangeSettings, identity_key_label,
};

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

    /// Plural: the API path segment and the export document's key.
    pub fn plural(self) -> &'static str {
        self.table()
    }

    /// The field of a virtual server that lists items of this kind.
    pub fn server_field(self) -> &'static str {
        match self {
            Self::Tool => "associated_tools",
            Self::Resource => "associated_resources",
            Self::Prompt => "associated_prompts",
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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials::{:?}(..)", self.auth_type())
    }
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

/// A registered upstream MCP server (or peer gateway). Its credentials are not part of it:
/// they are read, sealed, through `Store::gateway_credentials` only.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// Opaque id.
    pub id: String,
    /// Unique name; prefixes the names of everything discovered from it.
    pub name: GatewayName,
    /// MCP endpoint.
    pub url: UpstreamUrl,
    /// Upstream transport.
    pub transport: Transport,
    /// Free text.
    pub description: Option<String>,
    /// Tags.
    pub tags: Tags,
    /// Operator switch.
    pub enabled: bool,
    /// Health: false after `health_failure_threshold` failed checks in a row.
    pub reachable: bool,
    /// Kind of stored credentials.
    pub auth_type: AuthType,
    /// As whom the Envoys call it on a principal's behalf.
    pub identity: GatewayIdentity,
    /// Capabilities the upstream announced in `initialize`.
    pub capabilities: Option<Value>,
    /// `serverInfo` the upstream announced in `initialize`.
    pub server_info: Option<Value>,
    /// Negotiated MCP protocol version (the session era's from `initialize`; for an
    /// upstream that speaks only the stateless era, the version `server/discover` chose).
    pub protocol_version: Option<String>,
    /// Every protocol version discovery found the upstream to speak, newest first: the
    /// session era's negotiated in `initialize`, and the stateless era's listed by
    /// `server/discover` (empty: not discovered since this was recorded).
    pub protocol_versions: Vec<String>,
    /// Last successful contact (RFC 3339).
    pub last_seen: Option<String>,
    /// Last federation or health-check error.
    pub last_error: Option<String>,
    /// Failed health checks in a row.
    pub consecutive_failures: i64,
    /// Discovered items the last discovery run could not store because their exposed name
    /// was taken.
    pub collisions: Vec<Collision>,
    /// Discovered items the last discovery run left out (invalid name, too large).
    pub skipped: Vec<SkippedItem>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Optimistic-concurrency version.
    pub version: i64,
}

impl Gateway {
    /// Whether this gateway may move to `url` as it is: its stored credentials are bound to
    /// the origin (scheme, host, port) they were given for, and are never carried to another
    /// one. A move to another origin must bring credentials again, or drop them (field
    /// `auth_type`).
    pub fn check_move(&self, url: &UpstreamUrl) -> Result<(), FieldInvalid> {
        let (from, to) = (self.url.origin(), url.origin());
        if self.auth_type == AuthType::None || from == to {
            return Ok(());
        }
        Err(FieldInvalid::new(
            "auth_type",
            format!(
                "the URL moves from {from} to {to}: the stored {} credentials were given for {from} \
                 and are not sent anywhere else; give them again (auth_type with its auth_* \
                 fields), or auth_type none to drop them",
                self.auth_type.as_str()
            ),
        ))
    }
}

/// A new gateway as the store inserts it. The id is chosen before the insert, because
/// credentials are sealed to it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGateway {
    /// Id (`store::new_id`).
    pub id: String,
    /// Name.
    pub name: GatewayName,
    /// URL.
    pub url: UpstreamUrl,
    /// Transport.
    pub transport: Transport,
    /// Free text.
    pub description: Option<String>,
    /// Tags.
    pub tags: Tags,
    /// Operator switch.
    pub enabled: bool,
    /// Credential kind.
    pub auth_type: AuthType,
    /// Sealed credentials.
    pub auth_sealed: Option<String>,
    /// Upstream identity.
    pub identity: GatewayIdentity,
    /// The token exchange's client secret, sealed ([`CLIENT_SECRET_LABEL`], bound to the
    /// gateway id).
    pub identity_sealed: Option<String>,
}

/// A partial gateway update, as the store applies it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayPatch {
    /// New name.
    pub name: Option<GatewayName>,
    /// New URL.
    pub url: Option<UpstreamUrl>,
    /// New transport.
    pub transport: Option<Transport>,
    /// New description.
    pub description: Option<String>,
    /// New tags.
    pub tags: Option<Tags>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// New credentials: `Some((type, sealed))`.
    pub auth: Option<(AuthType, Option<String>)>,
    /// New upstream identity, with its sealed client secret (`None` with mode
    /// token-exchange: keep the stored one).
    pub identity: Option<(GatewayIdentity, Option<String>)>,
    /// Expected current version.
    pub expected_version: Option<i64>,
}

/// A stored tool, resource or prompt; `S` is its kind's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogItem<S> {
    /// Opaque id.
    pub id: String,
    /// Unique (per kind) exposed name: `{gateway}{sep}{original_name}` for discovered items.
    pub name: ItemName,
    /// Name at the upstream.
    pub original_name: String,
    /// Owning gateway; `None` for items defined by hand.
    pub gateway_id: Option<String>,
    /// Resource URI or URI template.
    pub uri: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Kind-specific fields.
    pub spec: S,
    /// Tags.
    pub tags: Tags,
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
pub struct NewItem<S> {
    /// Exposed name.
    pub name: ItemName,
    /// Upstream name (equal to `name` for items defined by hand).
    pub original_name: String,
    /// Owning gateway.
    pub gateway_id: Option<String>,
    /// Resource URI or template.
    pub uri: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Kind-specific fields.
    pub spec: S,
    /// Tags.
    pub tags: Tags,
    /// Operator switch.
    pub enabled: bool,
}

/// How an update changes an item's spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum SpecChange<S: CatalogSpec> {
    /// Leave it.
    #[default]
    Keep,
    /// Apply a partial change (to the row as it is when the update runs).
    Merge(S::Patch),
    /// Replace it whole (an import).
    Replace(S),
}

impl<S: CatalogSpec> SpecChange<S> {
    /// `Merge(patch)`, or `Keep` when the patch changes nothing.
    pub fn merge(patch: S::Patch) -> Self {
        if S::patch_is_empty(&patch) {
            Self::Keep
        } else {
            Self::Merge(patch)
        }
    }

    /// Whether the spec stays as it is.
    pub fn is_keep(&self) -> bool {
        matches!(self, Self::Keep)
    }
}

/// A partial update of a catalog item; `None` leaves a field unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemPatch<S: CatalogSpec> {
    /// New exposed name.
    pub name: Option<ItemName>,
    /// New URI (resources).
    pub uri: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// The spec's change.
    pub spec: SpecChange<S>,
    /// New tags.
    pub tags: Option<Tags>,
    /// New operator switch.
    pub enabled: Option<bool>,
    /// Fail with a conflict unless the stored version equals this.
    pub expected_version: Option<i64>,
}

impl<S: CatalogSpec> Default for ItemPatch<S> {
    fn default() -> Self {
        ItemPatch {
            name: None,
            uri: None,
            description: None,
            spec: SpecChange::Keep,
            tags: None,
            enabled: None,
            expected_version: None,
        }
    }
}

/// A virtual server: chosen tools, resources and prompts exposed as one MCP endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Opaque id (the `{id}` in `/servers/{id}/mcp`).
    pub id: String,
    /// Unique name.
    pub name: ItemName,
    /// Free text.
    pub description: Option<String>,
    /// Icon URL.
    pub icon: Option<String>,
    /// Tags.
    pub tags: Tags,
    /// Operator switch.
    pub enabled: bool,
    /// How tools and prompts are named.
    pub naming: Naming,
    /// Browser origins admitted besides the listener's.
    pub allowed_origins: AllowedOrigins,
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

/// A new virtual server.
#[derive(Debug, Clone, PartialEq)]
pub struct NewServer {
    /// Unique name.
    pub name: ItemName,
    /// Free text.
    pub description: Option<String>,
    /// Icon URL.
    pub icon: Option<String>,
    /// Tags.
    pub tags: Tags,
    /// Operator switch.
    pub enabled: bool,
    /// How tools and prompts are named.
    pub naming: Naming,
    /// Browser origins admitted besides the listener's.
    pub allowed_origins: AllowedOrigins,
    /// Tool ids.
    pub tools: Vec<String>,
    /// Resource ids.
    pub resources: Vec<String>,
    /// Prompt ids.
    pub prompts: Vec<String>,
}

/// A partial server update; association lists replace the stored ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerPatch {
    /// New name.
    pub name: Option<ItemName>,
    /// New description.
    pub description: Option<String>,
    /// New icon.
    pub icon: Option<String>,
    /// New tags.
    pub tags: Option<Tags>,
    /// New switch.
    pub enabled: Option<bool>,
    /// New naming mode.
    pub naming: Option<Naming>,
    /// New origin list.
    pub allowed_origins: Option<AllowedOrigins>,
    /// New tool set.
    pub tools: Option<Vec<String>>,
    /// New resource set.
    pub resources: Option<Vec<String>>,
    /// New prompt set.
    pub prompts: Option<Vec<String>>,
    /// Expected current version.
    pub expected_version: Option<i64>,
}

/// Filters and paging of a list, as the store runs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size (1..=500, default 50).
    pub limit: Option<u32>,
    /// Entries with any of these tags (none: all).
    pub tags: Tags,
    /// Only items of this gateway (catalog kinds only).
    pub gateway_id: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) entries.
    pub enabled: Option<bool>,
    /// Only what this principal may see (`None`: everything; the API always sets it).
    pub visible_to: Option<crate::auth::rbac::ListScope>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items of this page, ordered by name.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The same page with its items converted.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// What a discovery run changed.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// Items left out: a name the API would refuse, or a definition over the size limit.
    pub skipped: Vec<SkippedItem>,
}

/// A discovered item left out of the catalog, and why (stored on the gateway as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedItem {
    /// Kind of the item.
    pub kind: CatalogKind,
    /// Its name at the upstream, made printable (control characters escaped, at most 128
    /// characters): it is whatever the upstream sent.
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}

impl SkippedItem {
    /// An item left out; `raw_name` is made printable.
    pub fn new(kind: CatalogKind, raw_name: &str, reason: impl Into<String>) -> Self {
        let escaped: String = raw_name.escape_debug().collect();
        let name = if escaped.chars().count() > 128 {
            format!("{}…", escaped.chars().take(127).collect::<String>())
        } else {
            escaped
        };
        SkippedItem {
            kind,
            name,
            reason: reason.into(),
        }
    }
}

/// A discovered item whose exposed name is already taken (stored on the gateway as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collision {
    /// Kind of the item.
    pub kind: CatalogKind,
    /// Exposed name that is taken.
    pub name: String,
    /// Owner of the existing item (gateway id), `None` when defined by hand; the gateway's
    /// own id when the upstream listed the name twice.
    pub existing_gateway_id: Option<String>,
}

/// One item as an upstream listed it.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredItem<S> {
    /// Name at the upstream.
    pub original_name: String,
    /// Resource URI or template.
    pub uri: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Kind-specific fields.
    pub spec: S,
}

/// Everything one discovery run found at an upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovered {
    /// Tools.
    pub tools: Vec<DiscoveredItem<ToolSpec>>,
    /// Resources and resource templates.
    pub resources: Vec<DiscoveredItem<ResourceSpec>>,
    /// Prompts.
    pub prompts: Vec<DiscoveredItem<PromptSpec>>,
    /// `capabilities` from `initialize`.
    pub capabilities: Option<Value>,
    /// `serverInfo` from `initialize`.
    pub server_info: Option<Value>,
    /// Negotiated protocol version.
    pub protocol_version: Option<String>,
    /// Every protocol version the upstream was found to speak, newest first.
    pub protocol_versions: Vec<String>,
    /// Items listed but left out before the merge (invalid upstream name, too large).
    pub skipped: Vec<SkippedItem>,
}

/// The discovered items of one kind.
pub trait DiscoveredKind: CatalogSpec {
    /// This kind's items in a discovery run.
    fn of(d: &Discovered) -> &[DiscoveredItem<Self>];
}

impl DiscoveredKind for ToolSpec {
    fn of(d: &Discovered) -> &[DiscoveredItem<Self>] {
        &d.tools
    }
}

impl DiscoveredKind for ResourceSpec {
    fn of(d: &Discovered) -> &[DiscoveredItem<Self>] {
        &d.resources
    }
}

impl DiscoveredKind for PromptSpec {
    fn of(d: &Discovered) -> &[DiscoveredItem<Self>] {
        &d.prompts
    }
}
