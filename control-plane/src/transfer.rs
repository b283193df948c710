//! Export and import of the registry as one JSON document, with conflict strategies and
//! a dry run; import also reads ContextForge export files.
//!
//! Besides the catalog (gateways, tools, resources, prompts, virtual servers) a document
//! carries what the edge enforces: token issuers, authorization policies, request limits,
//! guardrail plugins, and each gateway's tool-definition pinning with its pins; an
//! installation moved or restored with it enforces what it did.
//!
//! Entries reference each other by name (gateway of an item, items of a server, server of
//! a policy or limits, servers of a plugin, issuers of a policy), so a document moves
//! between installations. Credentials are never exported (the API never returns them): a
//! gateway carries its `auth_type` only, and the operator re-enters its credentials after
//! importing; the edge kinds hold no secret.
//!
//! Imports are planned and validated first, with the same checks as the API (names,
//! URLs, the SSRF guard, tags, references, the filter's validation of issuers, policies,
//! limits and plugins, rule conditions as CEL): `fail` refuses the whole document when the
//! plan has a conflict, `dry_run` returns the plan (with the entries that would fail),
//! and an import with any failing entry changes nothing. The plan is then applied in one
//! write transaction, so a failure while applying also leaves nothing behind.

//!
//! The module holds the document (this file), building it ([`export`]), applying one
//! ([`import`]), and reading ContextForge's format into it (`contextforge`).

mod contextforge;
mod export;
mod import;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::model::{AuthType, CatalogSpec, PromptSpec, ResourceSpec, ToolSpec, Transport};
use crate::store::StoreError;

pub use export::export;
pub use import::import;

/// Value of `format` in an mcpgw export.
pub const FORMAT: &str = "mcpgw-export";

/// The export document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportDocument {
    /// Always `mcpgw-export`.
    pub format: String,
    /// Document format version: 2 (version 1 documents, without the edge kinds, are read
    /// too).
    pub version: u32,
    /// When it was made (RFC 3339).
    #[serde(default)]
    pub exported_at: String,
    /// Registry version it reflects.
    #[serde(default)]
    pub registry_version: i64,
    /// Things the importing operator must know; in particular that credentials are not
    /// exported and must be re-entered.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<ExportGateway>,
    /// Tools.
    #[serde(default)]
    pub tools: Vec<ExportItem>,
    /// Resources.
    #[serde(default)]
    pub resources: Vec<ExportItem>,
    /// Prompts.
    #[serde(default)]
    pub prompts: Vec<ExportItem>,
    /// Virtual servers.
    #[serde(default)]
    pub servers: Vec<ExportServer>,
    /// Token issuers (`/issuers`).
    #[serde(default)]
    pub issuers: Vec<ExportIssuer>,
    /// Authorization policies (`/policies/{server}`), by server name.
    #[serde(default)]
    pub policies: Vec<ExportPolicy>,
    /// Request limits (`/limits/{server}` and `/limits/default`), by server name.
    #[serde(default)]
    pub limits: Vec<ExportLimits>,
    /// Guardrail plugins (`/plugins`); `conditions.servers` names servers by name.
    #[serde(default)]
    pub plugins: Vec<ExportPlugin>,
}

/// An exported token issuer: its name and what `PUT /issuers/{name}` takes (public keys
/// only: an issuer holds no secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportIssuer {
    /// Name.
    pub name: String,
    /// The settings (`mcpgw_core::snapshot::auth::Issuer`).
    #[schema(value_type = Object)]
    pub spec: Value,
}

/// An exported authorization policy: the server's name and the policy as `GET
/// /policies/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportPolicy {
    /// The virtual server's name; absent: the passthrough path's policy
    /// (`/policies/passthrough`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The policy (`mcpgw_core::snapshot::auth::ServerAuth`): `required`, `resource`,
    /// `issuers` (by name), `scopes`, `rules`.
    #[schema(value_type = Object)]
    pub spec: Value,
}

/// Exported request limits: of a virtual server (by name), or the default ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportLimits {
    /// The virtual server's name; absent: the default limits (`/limits/default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The limits (`mcpgw_core::snapshot::limits::ServerLimits`).
    #[schema(value_type = Object)]
    pub spec: Value,
}

/// An exported guardrail plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportPlugin {
    /// Name.
    pub name: String,
    /// The plugin as `PUT /plugins/{name}` takes it, except that `conditions.servers`
    /// lists virtual server names, not ids.
    #[schema(value_type = Object)]
    pub spec: Value,
}

/// A gateway's tool-definition pinning (`/gateways/{id}/pinning`) and its approved
/// definitions, so a moved gateway holds back a changed tool as it did before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportPinning {
    /// `serve-approved` or `withhold`.
    pub on_change: crate::pinning::OnChange,
    /// `auto-approve` or `hold`.
    pub new_tools: crate::pinning::NewTools,
    /// `approve` or `hold`.
    pub first_discovery: crate::pinning::FirstDiscovery,
    /// Whether a discovery was merged under pinning (later tools are new tools).
    #[serde(default)]
    pub baselined: bool,
    /// The approved definitions.
    #[serde(default)]
    pub pins: Vec<ExportPin>,
}

/// One approved tool definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportPin {
    /// The tool's name at the upstream.
    pub tool: String,
    /// `sha256:…` of the definition (checked on import).
    pub hash: String,
    /// The approved description.
    #[serde(default)]
    pub description: Option<String>,
    /// The approved tool fields (`inputSchema`, `outputSchema`, `annotations`, …) as the
    /// catalog stores them.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub spec: Map<String, Value>,
    /// When it was approved.
    pub approved_at: String,
    /// Who approved it (absent: on discovery, by policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// An exported gateway. Its credentials are not exported: `auth_type` says which kind
/// to re-enter (`PUT /gateways/{id}`) after importing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportGateway {
    /// Name.
    pub name: String,
    /// URL, its query values exported as `***` (as the API shows it).
    pub url: String,
    /// Transport.
    pub transport: Transport,
    /// Description.
    pub description: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Switch.
    pub enabled: bool,
    /// Credential kind the gateway uses (the credentials themselves are not exported).
    pub auth_type: AuthType,
    /// Upstream identity (a token exchange's client secret is not exported).
    #[serde(default)]
    pub identity: crate::model::GatewayIdentity,
    /// Tool-definition pinning; absent: the defaults, nothing approved yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinning: Option<ExportPinning>,
}

/// An exported tool, resource or prompt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportItem {
    /// Exposed name.
    pub name: String,
    /// Upstream name.
    pub original_name: String,
    /// Owning gateway's name.
    pub gateway: Option<String>,
    /// Resource URI.
    pub uri: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Kind-specific fields.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub spec: Map<String, Value>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Switch.
    pub enabled: bool,
}

/// An exported virtual server; items by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportServer {
    /// Name.
    pub name: String,
    /// Its id where it was exported: a policy `resource` naming it
    /// (`…/servers/{id}/mcp`) is rewritten to the id it gets on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Icon.
    pub icon: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Switch.
    pub enabled: bool,
    /// How tools and prompts are named (`prefixed` when absent).
    #[serde(default)]
    pub naming: crate::model::Naming,
    /// Browser origins admitted besides the listener's.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Tool names.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Resource names.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Prompt names.
    #[serde(default)]
    pub prompts: Vec<String>,
}

/// Kinds selectable in export and import.
const KINDS: [&str; 9] = [
    "gateways",
    "tools",
    "resources",
    "prompts",
    "servers",
    "issuers",
    "policies",
    "limits",
    "plugins",
];

/// The document format version written.
pub const VERSION: u32 = 2;

/// Parses `types=` (comma-separated; empty or absent means all).
pub fn parse_types(types: Option<&str>) -> Result<HashSet<&'static str>, StoreError> {
    let Some(t) = types.filter(|t| !t.trim().is_empty()) else {
        return Ok(KINDS.into_iter().collect());
    };
    let mut out = HashSet::new();
    for part in t.split(',').map(str::trim) {
        let k = KINDS.into_iter().find(|k| *k == part).ok_or_else(|| {
            StoreError::invalid(
                "types",
                format!("unknown kind {part:?}; use {}", KINDS.join(",")),
            )
        })?;
        out.insert(k);
    }
    Ok(out)
}

/// `GET /export` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Comma-separated kinds (gateways,tools,resources,prompts,servers,issuers,policies,
    /// limits,plugins); default all.
    pub types: Option<String>,
}

/// The note every export with edge settings carries.
pub const EDGE_NOTE: &str = "Issuers, policies, limits and plugins hold no secrets (issuers carry public keys only) \
and are exported whole. Policies, limits and plugin conditions name virtual servers by name; a policy resource of \
the form .../servers/{id}/mcp follows its server to the id it gets on import.";

/// The note every export with gateways carries.
pub const CREDENTIALS_NOTE: &str = "Credentials are not exported. Gateways keep their auth_type only; \
after importing, re-enter their credentials with PUT /gateways/{id} (auth_type and auth_* fields).";

/// What to do when an imported entry's name exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStrategy {
    /// Keep the existing entry.
    Skip,
    /// Overwrite the existing entry with the imported fields.
    #[default]
    Update,
    /// Import under a new name (`name-1`, `name-2`, …).
    Rename,
    /// Refuse the whole import.
    Fail,
}

/// `POST /import` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Conflict strategy (default update).
    pub conflict_strategy: Option<ConflictStrategy>,
    /// Plan only; change nothing.
    pub dry_run: Option<bool>,
    /// Comma-separated kinds to import; default all.
    pub types: Option<String>,
}

/// Planned or performed action for one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportEntry {
    /// gateway, tool, resource, prompt, server, issuer, policy, limits or plugin.
    pub kind: String,
    /// Name in the document.
    pub name: String,
    /// create, update, skip, rename, conflict or error.
    pub action: String,
    /// New name (rename).
    pub new_name: Option<String>,
    /// Why (errors, skips).
    pub detail: Option<String>,
}

/// Result of an import.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    /// True when nothing was changed.
    pub dry_run: bool,
    /// `mcpgw` or `contextforge`.
    pub source: String,
    /// Entries created.
    pub created: u32,
    /// Entries updated.
    pub updated: u32,
    /// Entries skipped.
    pub skipped: u32,
    /// Entries imported under a new name.
    pub renamed: u32,
    /// Entries that failed.
    pub failed: u32,
    /// Per-entry detail.
    pub entries: Vec<ImportEntry>,
    /// Things the operator should know (e.g. credentials to re-enter).
    pub warnings: Vec<String>,
    /// Ids of gateways created, to refresh.
    #[serde(skip)]
    pub created_gateways: Vec<String>,
    /// Ids of gateways updated, whose live sessions are stale.
    #[serde(skip)]
    pub updated_gateways: Vec<String>,
}

/// Import errors.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The body is neither an mcpgw nor a ContextForge export.
    #[error("{0}")]
    Format(String),
    /// `fail` strategy and conflicts exist.
    #[error("import refused: {} conflicting entries ({})", .0.len(), .0.join(", "))]
    Conflicts(Vec<String>),
    /// Entries are invalid or could not be applied; nothing was imported.
    #[error("import refused, nothing was imported: {}", describe(.0))]
    Rejected(Vec<ImportEntry>),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn describe(entries: &[ImportEntry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "{} {}: {}",
                e.kind,
                e.name,
                e.detail.as_deref().unwrap_or("failed")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A document read from either format.
#[derive(Debug, Clone)]
pub struct ParsedDocument {
    /// The document in mcpgw form.
    pub document: ExportDocument,
    /// Conversion warnings.
    pub warnings: Vec<String>,
    /// Entries the conversion could not carry over (reported as skipped).
    pub left_out: Vec<ImportEntry>,
    /// `mcpgw` or `contextforge`.
    pub source: &'static str,
}

/// Reads either format; `separator` names MCP tools mapped from a ContextForge export.
pub fn parse_document(body: Value, separator: &str) -> Result<ParsedDocument, ImportError> {
    if body.get("format").and_then(Value::as_str) == Some(FORMAT) {
        let document: ExportDocument = serde_json::from_value(body)
            .map_err(|e| ImportError::Format(format!("invalid mcpgw export: {e}")))?;
        if !(1..=VERSION).contains(&document.version) {
            return Err(ImportError::Format(format!(
                "unsupported export version {} (this control plane reads versions 1 to {VERSION})",
                document.version
            )));
        }
        Ok(ParsedDocument {
            document,
            warnings: Vec::new(),
            left_out: Vec::new(),
            source: "mcpgw",
        })
    } else if body.get("entities").is_some_and(Value::is_object) {
        let c = contextforge::convert(&body, separator)?;
        Ok(ParsedDocument {
            document: c.document,
            warnings: c.warnings,
            left_out: c.left_out,
            source: "contextforge",
        })
    } else {
        Err(ImportError::Format(
            "not an export document: expected `format: mcpgw-export` or a ContextForge export with `entities`".into(),
        ))
    }
}

/// Where a catalog kind's entries sit in the document.
pub(crate) trait DocumentKind: CatalogSpec {
    /// This kind's entries.
    fn entries(doc: &ExportDocument) -> &[ExportItem];
    /// This kind's entries, to fill.
    fn entries_mut(doc: &mut ExportDocument) -> &mut Vec<ExportItem>;
}

impl DocumentKind for ToolSpec {
    fn entries(doc: &ExportDocument) -> &[ExportItem] {
        &doc.tools
    }
    fn entries_mut(doc: &mut ExportDocument) -> &mut Vec<ExportItem> {
        &mut doc.tools
    }
}

impl DocumentKind for ResourceSpec {
    fn entries(doc: &ExportDocument) -> &[ExportItem] {
        &doc.resources
    }
    fn entries_mut(doc: &mut ExportDocument) -> &mut Vec<ExportItem> {
        &mut doc.resources
    }
}

impl DocumentKind for PromptSpec {
    fn entries(doc: &ExportDocument) -> &[ExportItem] {
        &doc.prompts
    }
    fn entries_mut(doc: &mut ExportDocument) -> &mut Vec<ExportItem> {
        &mut doc.prompts
    }
}
