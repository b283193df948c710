//! What the admin API reads and writes: REST bodies, query strings and views (snake_case
//! JSON, with the OpenAPI schemas of `docs/openapi.json`), and their conversions to and from
//! the domain (`crate::model`), each written once here.
//!
//! Bodies are parsed into domain values by `TryFrom` (an error names the offending field);
//! views are built from domain values by `From`, and never carry a secret: credentials are
//! write-only, and an upstream URL is shown redacted.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::model::{
    self, AllowedOrigins, AuthType, CatalogItem, CatalogKind, Credentials, FieldInvalid,
    GatewayName, HeaderPair, HttpMethod, IntegrationType, ItemName, ItemPatch, JsonObject,
    ListFilter, Naming, NewItem, NewServer, PromptArgument, PromptPatch, PromptSpec, ResourcePatch,
    ResourceSpec, ServerPatch, SpecChange, Tags, ToolPatch, ToolSpec, Transport, UpstreamUrl,
};

// ---- lists -------------------------------------------------------------------------------

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
    /// What the caller may see: set by the handler from the request's principal, never
    /// from the query string.
    #[serde(skip)]
    #[param(ignore)]
    pub visible_to: Option<crate::auth::rbac::ListScope>,
}

impl TryFrom<ListQuery> for ListFilter {
    type Error = FieldInvalid;

    fn try_from(q: ListQuery) -> Result<Self, FieldInvalid> {
        let ListQuery {
            cursor,
            limit,
            tags,
            gateway_id,
            enabled,
            include_inactive,
            visible_to,
        } = q;
        Ok(ListFilter {
            cursor,
            limit,
            tags: match tags {
                Some(t) => Tags::parse_filter(&t)?,
                None => Tags::default(),
            },
            gateway_id,
            enabled: match (enabled, include_inactive) {
                (Some(e), _) => Some(e),
                (None, Some(false)) => Some(true),
                _ => None,
            },
            visible_to,
        })
    }
}

/// `?team_id=&visibility=` of a create: who owns the new entry.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnerQuery {
    /// The owning team (default: the caller's personal team). The caller needs the
    /// kind's create permission there.
    pub team_id: Option<String>,
    /// `private` (the creator and the team's admins), `team` (default) or `public`.
    pub visibility: Option<String>,
}

/// `?activate=` of the state endpoints (ContextForge's toggle).
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StateQuery {
    /// true enables, false disables.
    pub activate: bool,
}

macro_rules! page_type {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
        pub struct $name {
            /// Items of this page, ordered by name.
            pub items: Vec<$item>,
            /// Cursor of the next page; absent on the last one.
            pub next_cursor: Option<String>,
        }

        impl From<model::Page<$item>> for $name {
            fn from(p: model::Page<$item>) -> Self {
                $name {
                    items: p.items,
                    next_cursor: p.next_cursor,
                }
            }
        }
    };
}

page_type!(GatewayPage, Gateway, "A page of gateways.");
page_type!(ToolPage, Tool, "A page of tools.");
page_type!(ResourcePage, Resource, "A page of resources.");
page_type!(PromptPage, Prompt, "A page of prompts.");
page_type!(ServerPage, Server, "A page of virtual servers.");

fn tags(raw: Vec<String>) -> Result<Tags, FieldInvalid> {
    Tags::parse(&raw)
}

fn opt_tags(raw: Option<Vec<String>>) -> Result<Option<Tags>, FieldInvalid> {
    raw.map(tags).transpose()
}

fn opt_name(raw: Option<String>) -> Result<Option<ItemName>, FieldInvalid> {
    raw.as_deref().map(ItemName::parse).transpose()
}

// ---- gateways ----------------------------------------------------------------------------

/// A registered upstream MCP server (or peer gateway). Credentials are never included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Gateway {
    /// Opaque id.
    pub id: String,
    /// Unique name; prefixes the names of everything discovered from it.
    pub name: String,
    /// MCP endpoint URL, its query values shown as `***` (the stored URL keeps them; send
    /// this form back unchanged and the stored URL stays).
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
    /// As whom the Envoys call it on a principal's behalf (the token exchange's client
    /// secret is write-only).
    pub identity: model::GatewayIdentity,
    /// Capabilities the upstream announced in `initialize`.
    pub capabilities: Option<Value>,
    /// `serverInfo` the upstream announced in `initialize`.
    pub server_info: Option<Value>,
    /// Negotiated MCP protocol version (`initialize`; for an upstream that speaks only the
    /// stateless era, the version `server/discover` chose).
    pub protocol_version: Option<String>,
    /// Every protocol version the upstream was found to speak, newest first: the session
    /// era's from `initialize`, the stateless era's (2026-07-28) from `server/discover`.
    /// The Envoys call it in a client's era when it speaks it, and bridge otherwise.
    pub protocol_versions: Vec<String>,
    /// Last successful contact (RFC 3339).
    pub last_seen: Option<String>,
    /// Last federation or health-check error.
    pub last_error: Option<String>,
    /// Failed health checks in a row.
    pub consecutive_failures: i64,
    /// Discovered items the last discovery run (registration, refresh, resync or
    /// list_changed) could not store because their exposed name was taken.
    pub collisions: Vec<Collision>,
    /// Discovered items the last discovery run left out: a name the API would refuse, or a
    /// definition larger than the configured limit.
    pub skipped: Vec<SkippedItem>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Optimistic-concurrency version; pass it back on update to detect lost updates.
    pub version: i64,
}

impl From<model::Gateway> for Gateway {
    fn from(g: model::Gateway) -> Self {
        let model::Gateway {
            id,
            name,
            url,
            transport,
            description,
            tags,
            enabled,
            reachable,
            auth_type,
            identity,
            capabilities,
            server_info,
            protocol_version,
            protocol_versions,
            last_seen,
            last_error,
            consecutive_failures,
            collisions,
            skipped,
            created_at,
            updated_at,
            version,
        } = g;
        Gateway {
            id,
            name: name.to_string(),
            url: url.redacted(),
            transport,
            description,
            tags: tags.to_strings(),
            enabled,
            reachable,
            auth_type,
            identity,
            capabilities,
            server_info,
            protocol_version,
            protocol_versions,
            last_seen,
            last_error,
            consecutive_failures,
            collisions: collisions.into_iter().map(Collision::from).collect(),
            skipped: skipped.into_iter().map(SkippedItem::from).collect(),
            created_at,
            updated_at,
            version,
        }
    }
}

/// A discovered item left out of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SkippedItem {
    /// Kind of the item.
    pub kind: CatalogKind,
    /// Its name at the upstream, made printable (control characters escaped, cut at 128
    /// characters).
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}

impl From<model::SkippedItem> for SkippedItem {
    fn from(s: model::SkippedItem) -> Self {
        let model::SkippedItem { kind, name, reason } = s;
        SkippedItem { kind, name, reason }
    }
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

impl From<model::Collision> for Collision {
    fn from(c: model::Collision) -> Self {
        let model::Collision {
            kind,
            name,
            existing_gateway_id,
        } = c;
        Collision {
            kind,
            name,
            existing_gateway_id,
        }
    }
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
    /// Items left out: a name the API would refuse, or a definition over the size limit.
    pub skipped: Vec<SkippedItem>,
}

impl From<model::SyncReport> for SyncReport {
    fn from(r: model::SyncReport) -> Self {
        let model::SyncReport {
            added,
            updated,
            removed,
            unchanged,
            collisions,
            skipped,
        } = r;
        SyncReport {
            added,
            updated,
            removed,
            unchanged,
            collisions: collisions.into_iter().map(Collision::from).collect(),
            skipped: skipped.into_iter().map(SkippedItem::from).collect(),
        }
    }
}

/// Answer of `POST /gateways` and `POST /gateways/{id}/refresh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GatewaySync {
    /// The gateway after the run.
    pub gateway: Gateway,
    /// What changed (absent when discovery was skipped).
    pub sync: Option<SyncReport>,
}

/// Body of `POST /gateways`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayCreate {
    /// Unique name: letters, digits, `-`, `_`, `.` (1..=64).
    pub name: String,
    /// MCP endpoint URL (http or https), without credentials (`user:password@` is refused:
    /// use `auth_type`). Its query is stored as given and shown with values as `***`.
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
    /// Upstream identity (default mode `static`).
    pub identity: Option<IdentityBody>,
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
    /// New URL. The redacted form answers show leaves the stored URL as it is. When the
    /// origin (scheme, host, port) changes, stored credentials must be given again (or
    /// `auth_type` `none`): they are bound to the origin they were given for.
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
    /// New upstream identity (replaces the whole field; mode token-exchange without
    /// `client_secret` keeps the stored secret).
    pub identity: Option<IdentityBody>,
    /// Expected current version (optimistic concurrency).
    pub version: Option<i64>,
}

/// The `identity` of a create or update body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityBody {
    /// `none`, `static` (default), `identity-header` or `token-exchange`.
    #[serde(default)]
    pub mode: model::IdentityMode,
    /// With mode token-exchange: where and for what the client's token is exchanged.
    pub token_exchange: Option<model::TokenExchangeSettings>,
    /// With mode token-exchange: the gateway's OAuth client secret at the token endpoint
    /// (write-only: sealed at rest, sent only by the Envoys' token-endpoint cluster).
    pub client_secret: Option<String>,
}

impl TryFrom<IdentityBody> for (model::GatewayIdentity, Option<String>) {
    type Error = FieldInvalid;

    fn try_from(b: IdentityBody) -> Result<Self, FieldInvalid> {
        let IdentityBody {
            mode,
            token_exchange,
            client_secret,
        } = b;
        let identity = model::GatewayIdentity {
            mode,
            token_exchange,
        };
        identity.check()?;
        match (&client_secret, mode) {
            (Some(_), m) if m != model::IdentityMode::TokenExchange => Err(FieldInvalid::new(
                "identity.client_secret",
                format!("only with mode token-exchange, not {}", m.as_str()),
            )),
            (Some(s), _) if s.is_empty() || s.len() > 4096 => Err(FieldInvalid::new(
                "identity.client_secret",
                "1..=4096 bytes",
            )),
            _ => Ok((identity, client_secret)),
        }
    }
}

/// Credential fields of a create or update body.
struct AuthFields {
    auth_type: AuthType,
    token: Option<String>,
    username: Option<String>,
    password: Option<String>,
    headers: Option<Vec<HeaderPair>>,
}

/// Checks the credential fields against `auth_type` and builds the credentials.
fn credentials(a: AuthFields) -> Result<Option<Credentials>, FieldInvalid> {
    let stray = |field: &str| {
        FieldInvalid::new(
            field,
            format!("not used with auth_type {}", a.auth_type.as_str()),
        )
    };
    match a.auth_type {
        AuthType::None => {
            for (f, given) in [
                ("auth_token", a.token.is_some()),
                ("auth_username", a.username.is_some()),
                ("auth_password", a.password.is_some()),
                ("auth_headers", a.headers.is_some()),
            ] {
                if given {
                    return Err(stray(f));
                }
            }
            Ok(None)
        }
        AuthType::Bearer => {
            let token = a
                .token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| FieldInvalid::new("auth_token", "required for bearer"))?;
            Ok(Some(Credentials::Bearer { token }))
        }
        AuthType::Basic => {
            let username = a
                .username
                .filter(|u| !u.is_empty() && !u.contains(':'))
                .ok_or_else(|| {
                    FieldInvalid::new("auth_username", "required for basic, without ':'")
                })?;
            let password = a
                .password
                .ok_or_else(|| FieldInvalid::new("auth_password", "required for basic"))?;
            Ok(Some(Credentials::Basic { username, password }))
        }
        AuthType::Headers => {
            let headers = a
                .headers
                .filter(|h| !h.is_empty())
                .ok_or_else(|| FieldInvalid::new("auth_headers", "required for headers"))?;
            for (i, h) in headers.iter().enumerate() {
                if reqwest::header::HeaderName::from_bytes(h.key.as_bytes()).is_err() {
                    return Err(FieldInvalid::new(
                        format!("auth_headers[{i}].key"),
                        "not a valid header name",
                    ));
                }
                if reqwest::header::HeaderValue::from_str(&h.value).is_err() {
                    return Err(FieldInvalid::new(
                        format!("auth_headers[{i}].value"),
                        "not a valid header value",
                    ));
                }
            }
            Ok(Some(Credentials::Headers { headers }))
        }
    }
}

/// A `POST /gateways` body, parsed (its credentials still in clear: they are sealed to the
/// gateway's id and origin before they are stored).
#[derive(Debug, Clone)]
pub struct GatewayDraft {
    /// Name (the separator rule is checked by the caller, which knows the separator).
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
    /// Credentials in clear.
    pub credentials: Option<Credentials>,
    /// Upstream identity, with its client secret in clear.
    pub identity: (model::GatewayIdentity, Option<String>),
    /// Discover now.
    pub discover: bool,
}

impl TryFrom<GatewayCreate> for GatewayDraft {
    type Error = FieldInvalid;

    fn try_from(b: GatewayCreate) -> Result<Self, FieldInvalid> {
        let GatewayCreate {
            name,
            url,
            transport,
            description,
            tags: raw_tags,
            enabled,
            auth_type,
            auth_token,
            auth_username,
            auth_password,
            auth_headers,
            identity,
            discover,
        } = b;
        let identity = match identity {
            Some(body) => body.try_into()?,
            None => (model::GatewayIdentity::default(), None),
        };
        if identity.0.mode == model::IdentityMode::TokenExchange && identity.1.is_none() {
            return Err(FieldInvalid::new(
                "identity.client_secret",
                "required with mode token-exchange",
            ));
        }
        Ok(GatewayDraft {
            name: GatewayName::parse(&name)?,
            url: UpstreamUrl::parse(&url)?,
            transport,
            description,
            tags: tags(raw_tags)?,
            enabled: enabled.unwrap_or(true),
            credentials: credentials(AuthFields {
                auth_type,
                token: auth_token,
                username: auth_username,
                password: auth_password,
                headers: auth_headers,
            })?,
            identity,
            discover: discover.unwrap_or(true),
        })
    }
}

/// A `PUT /gateways/{id}` body, parsed.
#[derive(Debug, Clone, Default)]
pub struct GatewayChange {
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
    /// New switch.
    pub enabled: Option<bool>,
    /// New credentials (`auth_type` given): the kind and the credentials in clear.
    pub auth: Option<(AuthType, Option<Credentials>)>,
    /// New upstream identity, with its client secret in clear.
    pub identity: Option<(model::GatewayIdentity, Option<String>)>,
    /// Expected current version.
    pub version: Option<i64>,
}

impl TryFrom<GatewayUpdate> for GatewayChange {
    type Error = FieldInvalid;

    fn try_from(b: GatewayUpdate) -> Result<Self, FieldInvalid> {
        let GatewayUpdate {
            name,
            url,
            transport,
            description,
            tags: raw_tags,
            enabled,
            auth_type,
            auth_token,
            auth_username,
            auth_password,
            auth_headers,
            identity,
            version,
        } = b;
        let auth = match auth_type {
            Some(t) => Some((
                t,
                credentials(AuthFields {
                    auth_type: t,
                    token: auth_token,
                    username: auth_username,
                    password: auth_password,
                    headers: auth_headers,
                })?,
            )),
            None => {
                if auth_token.is_some()
                    || auth_username.is_some()
                    || auth_password.is_some()
                    || auth_headers.is_some()
                {
                    return Err(FieldInvalid::new(
                        "auth_type",
                        "required when changing credentials",
                    ));
                }
                None
            }
        };
        Ok(GatewayChange {
            name: name.as_deref().map(GatewayName::parse).transpose()?,
            url: url.as_deref().map(UpstreamUrl::parse).transpose()?,
            transport,
            description,
            tags: opt_tags(raw_tags)?,
            enabled,
            auth,
            identity: identity.map(TryInto::try_into).transpose()?,
            version,
        })
    }
}

// ---- tools -------------------------------------------------------------------------------

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

impl From<CatalogItem<ToolSpec>> for Tool {
    fn from(i: CatalogItem<ToolSpec>) -> Self {
        let ToolSpec {
            title,
            input_schema,
            output_schema,
            annotations,
            icons: _,
            meta: _,
            integration_type,
            url,
            request_type,
        } = i.spec;
        Tool {
            title,
            input_schema: Value::Object(input_schema),
            output_schema: output_schema.map(Value::Object),
            annotations,
            integration_type: integration_type.as_str().to_owned(),
            url,
            request_type: request_type.map(|m| m.as_str().to_owned()),
            id: i.id,
            name: i.name.to_string(),
            original_name: i.original_name,
            gateway_id: i.gateway_id,
            description: i.description,
            tags: i.tags.to_strings(),
            enabled: i.enabled,
            reachable: i.reachable,
            created_at: i.created_at,
            updated_at: i.updated_at,
            version: i.version,
        }
    }
}

fn schema(field: &str, v: Option<Value>) -> Result<Option<JsonObject>, FieldInvalid> {
    match v {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(FieldInvalid::new(field, "must be a JSON Schema object")),
    }
}

fn http_url(field: &str, url: String) -> Result<String, FieldInvalid> {
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(url),
        _ => Err(FieldInvalid::new(field, "must be an http(s) URL")),
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

impl TryFrom<ToolCreate> for NewItem<ToolSpec> {
    type Error = FieldInvalid;

    fn try_from(b: ToolCreate) -> Result<Self, FieldInvalid> {
        let ToolCreate {
            name,
            description,
            title,
            input_schema,
            output_schema,
            annotations,
            integration_type,
            url,
            request_type,
            tags: raw_tags,
            enabled,
        } = b;
        let input_schema = schema("input_schema", input_schema)?;
        let output_schema = schema("output_schema", output_schema)?;
        let integration = match integration_type {
            None => IntegrationType::Rest,
            Some(t) => IntegrationType::parse(&t)
                .ok_or_else(|| FieldInvalid::new("integration_type", "REST or MCP"))?,
        };
        if integration != IntegrationType::Rest {
            return Err(FieldInvalid::new(
                "integration_type",
                "tools defined by hand are REST tools; MCP tools are discovered from gateways",
            ));
        }
        let url = url.ok_or_else(|| FieldInvalid::new("url", "required for REST tools"))?;
        let url = http_url("url", url)?;
        let method = HttpMethod::parse(request_type.as_deref().unwrap_or("POST"))?;
        let item_name = ItemName::parse(&name)?;
        Ok(NewItem {
            name: item_name,
            original_name: name,
            gateway_id: None,
            uri: None,
            description,
            spec: ToolSpec {
                title,
                input_schema: input_schema.unwrap_or_else(|| ToolSpec::default().input_schema),
                output_schema,
                annotations,
                icons: None,
                meta: None,
                integration_type: integration,
                url: Some(url),
                request_type: Some(method),
            },
            tags: tags(raw_tags)?,
            enabled: enabled.unwrap_or(true),
        })
    }
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

impl TryFrom<ToolUpdate> for ItemPatch<ToolSpec> {
    type Error = FieldInvalid;

    fn try_from(b: ToolUpdate) -> Result<Self, FieldInvalid> {
        let ToolUpdate {
            name,
            description,
            title,
            input_schema,
            output_schema,
            annotations,
            url,
            request_type,
            tags: raw_tags,
            enabled,
            version,
        } = b;
        let patch = ToolPatch {
            input_schema: schema("input_schema", input_schema)?,
            output_schema: schema("output_schema", output_schema)?,
            url: url.map(|u| http_url("url", u)).transpose()?,
            request_type: request_type.as_deref().map(HttpMethod::parse).transpose()?,
            title,
            annotations,
        };
        Ok(ItemPatch {
            name: opt_name(name)?,
            uri: None,
            description,
            spec: SpecChange::merge(patch),
            tags: opt_tags(raw_tags)?,
            enabled,
            expected_version: version,
        })
    }
}

// ---- resources ---------------------------------------------------------------------------

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

impl From<CatalogItem<ResourceSpec>> for Resource {
    fn from(i: CatalogItem<ResourceSpec>) -> Self {
        let ResourceSpec {
            is_template,
            title,
            mime_type,
            size,
            content,
            annotations,
            icons: _,
            meta: _,
        } = i.spec;
        Resource {
            is_template,
            title,
            mime_type,
            size,
            content,
            annotations,
            uri: i.uri.unwrap_or_default(),
            id: i.id,
            name: i.name.to_string(),
            original_name: i.original_name,
            gateway_id: i.gateway_id,
            description: i.description,
            tags: i.tags.to_strings(),
            enabled: i.enabled,
            reachable: i.reachable,
            created_at: i.created_at,
            updated_at: i.updated_at,
            version: i.version,
        }
    }
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

impl TryFrom<ResourceCreate> for NewItem<ResourceSpec> {
    type Error = FieldInvalid;

    fn try_from(b: ResourceCreate) -> Result<Self, FieldInvalid> {
        let ResourceCreate {
            name,
            uri,
            is_template,
            description,
            title,
            mime_type,
            content,
            tags: raw_tags,
            enabled,
        } = b;
        if !uri.contains(':') {
            return Err(FieldInvalid::new(
                "uri",
                "must be an absolute URI (scheme:...)",
            ));
        }
        Ok(NewItem {
            name: ItemName::parse(&name)?,
            original_name: name,
            gateway_id: None,
            uri: Some(uri),
            description,
            spec: ResourceSpec {
                is_template,
                title,
                mime_type,
                content,
                ..ResourceSpec::default()
            },
            tags: tags(raw_tags)?,
            enabled: enabled.unwrap_or(true),
        })
    }
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

impl TryFrom<ResourceUpdate> for ItemPatch<ResourceSpec> {
    type Error = FieldInvalid;

    fn try_from(b: ResourceUpdate) -> Result<Self, FieldInvalid> {
        let ResourceUpdate {
            name,
            uri,
            description,
            title,
            mime_type,
            content,
            tags: raw_tags,
            enabled,
            version,
        } = b;
        Ok(ItemPatch {
            name: opt_name(name)?,
            uri,
            description,
            spec: SpecChange::merge(ResourcePatch {
                title,
                mime_type,
                content,
            }),
            tags: opt_tags(raw_tags)?,
            enabled,
            expected_version: version,
        })
    }
}

// ---- prompts -----------------------------------------------------------------------------

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

impl From<CatalogItem<PromptSpec>> for Prompt {
    fn from(i: CatalogItem<PromptSpec>) -> Self {
        let PromptSpec {
            title,
            template,
            arguments,
            icons: _,
            meta: _,
        } = i.spec;
        Prompt {
            title,
            arguments: arguments
                .unwrap_or_default()
                .iter()
                .filter_map(|a| serde_json::to_value(a).ok())
                .collect(),
            template,
            id: i.id,
            name: i.name.to_string(),
            original_name: i.original_name,
            gateway_id: i.gateway_id,
            description: i.description,
            tags: i.tags.to_strings(),
            enabled: i.enabled,
            reachable: i.reachable,
            created_at: i.created_at,
            updated_at: i.updated_at,
            version: i.version,
        }
    }
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

impl TryFrom<PromptCreate> for NewItem<PromptSpec> {
    type Error = FieldInvalid;

    fn try_from(b: PromptCreate) -> Result<Self, FieldInvalid> {
        let PromptCreate {
            name,
            description,
            title,
            template,
            arguments,
            tags: raw_tags,
            enabled,
        } = b;
        let arguments = PromptArgument::parse_list(arguments)?;
        Ok(NewItem {
            name: ItemName::parse(&name)?,
            original_name: name,
            gateway_id: None,
            uri: None,
            description,
            spec: PromptSpec {
                title,
                template,
                arguments: Some(arguments),
                ..PromptSpec::default()
            },
            tags: tags(raw_tags)?,
            enabled: enabled.unwrap_or(true),
        })
    }
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

impl TryFrom<PromptUpdate> for ItemPatch<PromptSpec> {
    type Error = FieldInvalid;

    fn try_from(b: PromptUpdate) -> Result<Self, FieldInvalid> {
        let PromptUpdate {
            name,
            description,
            title,
            template,
            arguments,
            tags: raw_tags,
            enabled,
            version,
        } = b;
        Ok(ItemPatch {
            name: opt_name(name)?,
            uri: None,
            description,
            spec: SpecChange::merge(PromptPatch {
                title,
                template,
                arguments: arguments.map(PromptArgument::parse_list).transpose()?,
            }),
            tags: opt_tags(raw_tags)?,
            enabled,
            expected_version: version,
        })
    }
}

// ---- virtual servers ---------------------------------------------------------------------

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
    /// How tools and prompts are named: `prefixed` (`{gateway}{sep}{name}`) or `upstream`
    /// (each upstream's own names; members may not collide).
    pub naming: Naming,
    /// Browser origins (`scheme://host[:port]`, `:*` for any port, or `*`) admitted on this
    /// server besides the listener's.
    pub allowed_origins: Vec<String>,
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

impl From<model::Server> for Server {
    fn from(s: model::Server) -> Self {
        let model::Server {
            id,
            name,
            description,
            icon,
            tags,
            enabled,
            naming,
            allowed_origins,
            associated_tools,
            associated_resources,
            associated_prompts,
            created_at,
            updated_at,
            version,
        } = s;
        Server {
            id,
            name: name.to_string(),
            description,
            icon,
            tags: tags.to_strings(),
            enabled,
            naming,
            allowed_origins: allowed_origins.to_vec(),
            associated_tools,
            associated_resources,
            associated_prompts,
            created_at,
            updated_at,
            version,
        }
    }
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
    /// `prefixed` (default: `{gateway}{sep}{name}`) or `upstream` (each upstream's own
    /// names, so a server over one upstream is a transparent front; members whose names
    /// collide are refused with 422 `name-collision`).
    pub naming: Option<Naming>,
    /// Browser origins admitted besides the listener's (`scheme://host[:port]`, `:*` for
    /// any port, or `*`).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
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

impl TryFrom<ServerCreate> for NewServer {
    type Error = FieldInvalid;

    fn try_from(b: ServerCreate) -> Result<Self, FieldInvalid> {
        let ServerCreate {
            name,
            description,
            icon,
            tags: raw_tags,
            enabled,
            naming,
            allowed_origins,
            associated_tools,
            associated_resources,
            associated_prompts,
        } = b;
        Ok(NewServer {
            name: ItemName::parse(&name)?,
            description,
            icon,
            tags: tags(raw_tags)?,
            enabled: enabled.unwrap_or(true),
            naming: naming.unwrap_or_default(),
            allowed_origins: AllowedOrigins::parse(&allowed_origins)?,
            tools: associated_tools,
            resources: associated_resources,
            prompts: associated_prompts,
        })
    }
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
    /// New naming mode (`prefixed` or `upstream`).
    pub naming: Option<Naming>,
    /// Replaces the admitted browser origins.
    pub allowed_origins: Option<Vec<String>>,
    /// Replaces the tool set.
    pub associated_tools: Option<Vec<String>>,
    /// Replaces the resource set.
    pub associated_resources: Option<Vec<String>>,
    /// Replaces the prompt set.
    pub associated_prompts: Option<Vec<String>>,
    /// Expected current version.
    pub version: Option<i64>,
}

impl TryFrom<ServerUpdate> for ServerPatch {
    type Error = FieldInvalid;

    fn try_from(b: ServerUpdate) -> Result<Self, FieldInvalid> {
        let ServerUpdate {
            name,
            description,
            icon,
            tags: raw_tags,
            enabled,
            naming,
            allowed_origins,
            associated_tools,
            associated_resources,
            associated_prompts,
            version,
        } = b;
        Ok(ServerPatch {
            name: opt_name(name)?,
            description,
            icon,
            tags: opt_tags(raw_tags)?,
            enabled,
            naming,
            allowed_origins: allowed_origins
                .as_deref()
                .map(AllowedOrigins::parse)
                .transpose()?,
            tools: associated_tools,
            resources: associated_resources,
            prompts: associated_prompts,
            expected_version: version,
        })
    }
}

// ---- system ------------------------------------------------------------------------------

/// Current registry version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegistryVersion {
    /// Monotonic counter bumped in the transaction of every registry change.
    pub registry_version: i64,
}
