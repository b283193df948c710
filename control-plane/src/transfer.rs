//! Export and import of the registry as one JSON document, with conflict strategies and
//! a dry run; import also reads ContextForge export files.
//!
//! Entries reference each other by name (gateway of an item, items of a server), so a
//! document moves between installations. Credentials are never exported (the API never
//! returns them): a gateway carries its `auth_type` only, and the operator re-enters
//! its credentials after importing.
//!
//! Imports are planned and validated first, with the same checks as the API (names,
//! URLs, the SSRF guard, tags, references): `fail` refuses the whole document when the
//! plan has a conflict, `dry_run` returns the plan (with the entries that would fail),
//! and an import with any failing entry changes nothing. The plan is then applied in one
//! write transaction, so a failure while applying also leaves nothing behind.

mod contextforge;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::config::FederationSettings;
use crate::federation::check_upstream_url;
use crate::model::{
    AuthType, CatalogKind, GatewayPatch, ItemPatch, NewGateway, NewItem, Transport,
};
use crate::store::{
    NewServer, ServerPatch, Store, StoreError, WriteTx, insert_item, item_id_by_name,
    normalize_tags, update_item_tx, validate_gateway_name, validate_item_name, validate_uri,
    validate_url,
};

/// Value of `format` in an mcpgw export.
pub const FORMAT: &str = "mcpgw-export";

/// The export document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportDocument {
    /// Always `mcpgw-export`.
    pub format: String,
    /// Document format version (1).
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
}

/// An exported gateway. Its credentials are not exported: `auth_type` says which kind
/// to re-enter (`PUT /gateways/{id}`) after importing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportGateway {
    /// Name.
    pub name: String,
    /// URL.
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
    /// Description.
    pub description: Option<String>,
    /// Icon.
    pub icon: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Switch.
    pub enabled: bool,
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
const KINDS: [&str; 5] = ["gateways", "tools", "resources", "prompts", "servers"];

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
    /// Comma-separated kinds (gateways,tools,resources,prompts,servers); default all.
    pub types: Option<String>,
}

/// The note every export with gateways carries.
pub const CREDENTIALS_NOTE: &str = "Credentials are not exported. Gateways keep their auth_type only; \
after importing, re-enter their credentials with PUT /gateways/{id} (auth_type and auth_* fields).";

/// Builds the export document.
pub async fn export(store: &Store, types: &HashSet<&str>) -> Result<ExportDocument, StoreError> {
    let registry_version = store.registry_version().await?;
    let gateways = store.all_gateways().await?;
    let gw_names: HashMap<String, String> = gateways
        .iter()
        .map(|g| (g.id.clone(), g.name.clone()))
        .collect();
    let mut doc = ExportDocument {
        format: FORMAT.into(),
        version: 1,
        exported_at: crate::store::now(),
        registry_version,
        ..Default::default()
    };
    if types.contains("gateways") {
        doc.notes.push(CREDENTIALS_NOTE.to_owned());
        for g in &gateways {
            doc.gateways.push(ExportGateway {
                name: g.name.clone(),
                url: g.url.clone(),
                transport: g.transport,
                description: g.description.clone(),
                tags: g.tags.clone(),
                enabled: g.enabled,
                auth_type: g.auth_type,
            });
        }
    }
    let mut item_names: HashMap<(CatalogKind, String), String> = HashMap::new();
    for kind in CatalogKind::ALL {
        let items = store.all_items(kind).await?;
        for i in &items {
            item_names.insert((kind, i.id.clone()), i.name.clone());
        }
        let key = match kind {
            CatalogKind::Tool => "tools",
            CatalogKind::Resource => "resources",
            CatalogKind::Prompt => "prompts",
        };
        if !types.contains(key) {
            continue;
        }
        let out: Vec<ExportItem> = items
            .into_iter()
            .map(|i| ExportItem {
                gateway: i.gateway_id.as_ref().and_then(|g| gw_names.get(g).cloned()),
                name: i.name,
                original_name: i.original_name,
                uri: i.uri,
                description: i.description,
                spec: i.spec,
                tags: i.tags,
                enabled: i.enabled,
            })
            .collect();
        match kind {
            CatalogKind::Tool => doc.tools = out,
            CatalogKind::Resource => doc.resources = out,
            CatalogKind::Prompt => doc.prompts = out,
        }
    }
    if types.contains("servers") {
        for s in store.all_servers().await? {
            let names = |kind: CatalogKind, ids: &[String]| -> Vec<String> {
                ids.iter()
                    .filter_map(|id| item_names.get(&(kind, id.clone())).cloned())
                    .collect()
            };
            doc.servers.push(ExportServer {
                tools: names(CatalogKind::Tool, &s.associated_tools),
                resources: names(CatalogKind::Resource, &s.associated_resources),
                prompts: names(CatalogKind::Prompt, &s.associated_prompts),
                name: s.name,
                description: s.description,
                icon: s.icon,
                tags: s.tags,
                enabled: s.enabled,
            });
        }
    }
    Ok(doc)
}

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
    /// gateway, tool, resource, prompt or server.
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
        if document.version != 1 {
            return Err(ImportError::Format(format!(
                "unsupported export version {}",
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Gateway,
    Item(CatalogKind),
    Server,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Item(k) => k.label(),
            Kind::Server => "server",
        }
    }
}

async fn exists(store: &Store, kind: Kind, name: &str) -> Result<Option<String>, StoreError> {
    Ok(match kind {
        Kind::Gateway => store.find_gateway_by_name(name).await?.map(|g| g.id),
        Kind::Item(k) => store.find_item_by_name(k, name).await?.map(|i| i.id),
        Kind::Server => store
            .all_servers()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.id),
    })
}

async fn free_name(
    store: &Store,
    kind: Kind,
    name: &str,
    taken: &HashSet<(Kind, String)>,
) -> Result<String, StoreError> {
    for n in 1..1000 {
        let candidate = format!("{name}-{n}");
        if !taken.contains(&(kind, candidate.clone()))
            && exists(store, kind, &candidate).await?.is_none()
        {
            return Ok(candidate);
        }
    }
    Err(StoreError::invalid(
        "name",
        format!("no free name for {name}"),
    ))
}

enum Step {
    Create(String),
    Update(String),
    Skip,
}

type Key = (Kind, String);

/// Imports a document: plan, validate, then apply everything in one write transaction.
pub async fn import(
    store: &Store,
    settings: &FederationSettings,
    body: Value,
    q: &ImportQuery,
) -> Result<ImportReport, ImportError> {
    let parsed = parse_document(body, &settings.separator)?;
    let doc = parsed.document;
    let types = parse_types(q.types.as_deref())?;
    let strategy = q.conflict_strategy.unwrap_or_default();
    let dry_run = q.dry_run.unwrap_or(false);
    let mut report = ImportReport {
        dry_run,
        source: parsed.source.into(),
        warnings: parsed.warnings,
        ..Default::default()
    };

    // ---- plan ------------------------------------------------------------------------
    let mut names: Vec<Key> = Vec::new();
    if types.contains("gateways") {
        names.extend(doc.gateways.iter().map(|g| (Kind::Gateway, g.name.clone())));
    }
    for (key, kind, items) in [
        ("tools", CatalogKind::Tool, &doc.tools),
        ("resources", CatalogKind::Resource, &doc.resources),
        ("prompts", CatalogKind::Prompt, &doc.prompts),
    ] {
        if types.contains(key) {
            names.extend(items.iter().map(|i| (Kind::Item(kind), i.name.clone())));
        }
    }
    if types.contains("servers") {
        names.extend(doc.servers.iter().map(|s| (Kind::Server, s.name.clone())));
    }
    let mut plan: HashMap<Key, Step> = HashMap::new();
    let mut planned_names: HashSet<Key> = HashSet::new();
    let mut conflicts = Vec::new();
    for (kind, name) in &names {
        if plan.contains_key(&(*kind, name.clone())) {
            report.entries.push(ImportEntry {
                kind: kind.label().into(),
                name: name.clone(),
                action: "skip".into(),
                new_name: None,
                detail: Some("listed twice in the document; first one wins".into()),
            });
            continue;
        }
        let existing = exists(store, *kind, name).await?;
        let (step, entry) = match (existing, strategy) {
            (None, _) => (Step::Create(name.clone()), ("create", None, None)),
            (Some(id), ConflictStrategy::Update) => (Step::Update(id), ("update", None, None)),
            (Some(_), ConflictStrategy::Skip) => {
                (Step::Skip, ("skip", None, Some("exists".to_owned())))
            }
            (Some(_), ConflictStrategy::Rename) => {
                let n = free_name(store, *kind, name, &planned_names).await?;
                (Step::Create(n.clone()), ("rename", Some(n), None))
            }
            (Some(_), ConflictStrategy::Fail) => {
                conflicts.push(format!("{} {name}", kind.label()));
                (Step::Skip, ("conflict", None, Some("exists".to_owned())))
            }
        };
        if let Step::Create(n) = &step {
            planned_names.insert((*kind, n.clone()));
        }
        report.entries.push(ImportEntry {
            kind: kind.label().into(),
            name: name.clone(),
            action: entry.0.into(),
            new_name: entry.1,
            detail: entry.2,
        });
        plan.insert((*kind, name.clone()), step);
    }
    if !conflicts.is_empty() {
        return Err(ImportError::Conflicts(conflicts));
    }
    if types.contains("tools") {
        report.entries.extend(parsed.left_out);
    }

    // ---- validate: the API's checks, before anything is written -----------------------
    let errors = validate(store, settings, &doc, &types, &plan).await?;
    if !errors.is_empty() {
        let mut rejected = Vec::new();
        for e in &mut report.entries {
            let key = (kind_of(&e.kind), e.name.clone());
            if e.action != "skip"
                && let Some(why) = errors.get(&key)
            {
                e.action = "error".into();
                e.detail = Some(why.clone());
                rejected.push(e.clone());
            }
        }
        if !dry_run {
            return Err(ImportError::Rejected(rejected));
        }
    }
    if dry_run || !plan.values().any(|s| !matches!(s, Step::Skip)) {
        count(&mut report);
        return Ok(report);
    }

    // ---- apply, all or nothing ---------------------------------------------------------
    let mut tx = store.begin_write().await?;
    if let Err((key, e)) = apply(store, &mut tx, &doc, &types, &plan, &mut report).await {
        // Dropping the transaction rolls everything back.
        drop(tx);
        return Err(match e {
            StoreError::Database(_) | StoreError::Corrupt(_) => ImportError::Store(e),
            e => ImportError::Rejected(vec![ImportEntry {
                kind: key.0.label().into(),
                name: key.1,
                action: "error".into(),
                new_name: None,
                detail: Some(e.to_string()),
            }]),
        });
    }
    tx.commit().await?;
    count(&mut report);
    Ok(report)
}

fn kind_of(label: &str) -> Kind {
    match label {
        "gateway" => Kind::Gateway,
        "server" => Kind::Server,
        other => CatalogKind::ALL
            .into_iter()
            .find(|k| k.label() == other)
            .map_or(Kind::Server, Kind::Item),
    }
}

fn count(report: &mut ImportReport) {
    let n = |a: &str| report.entries.iter().filter(|e| e.action == a).count() as u32;
    report.created = n("create");
    report.updated = n("update");
    report.renamed = n("rename");
    report.skipped = n("skip");
    report.failed = n("error");
}

/// The checks the API applies to the same fields, per planned entry. Returns the
/// entries that would fail, with why.
async fn validate(
    store: &Store,
    settings: &FederationSettings,
    doc: &ExportDocument,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
) -> Result<HashMap<Key, String>, StoreError> {
    let mut errors: HashMap<Key, String> = HashMap::new();
    let mut importable_gateways: HashSet<&str> = HashSet::new();
    if types.contains("gateways") {
        for g in &doc.gateways {
            let key = (Kind::Gateway, g.name.clone());
            let check = match plan.get(&key) {
                None => continue,
                Some(Step::Skip) => Ok(()),
                Some(Step::Create(name)) => validate_gateway_name(name)
                    .and_then(|()| validate_url(&g.url))
                    .and_then(|()| normalize_tags(g.tags.clone(), "tags").map(drop))
                    .map_err(|e| e.to_string()),
                Some(Step::Update(_)) => validate_url(&g.url)
                    .and_then(|()| normalize_tags(g.tags.clone(), "tags").map(drop))
                    .map_err(|e| e.to_string()),
            };
            // The SSRF guard of POST /gateways and PUT /gateways/{id}.
            let check = match (check, plan.get(&key)) {
                (Ok(()), Some(Step::Create(_) | Step::Update(_))) => {
                    check_upstream_url(&g.url, settings.ssrf, settings.timeout)
                        .await
                        .map(drop)
                        .map_err(|e| format!("url: {e}"))
                }
                (other, _) => other,
            };
            match check {
                Ok(()) => {
                    importable_gateways.insert(g.name.as_str());
                }
                Err(e) => {
                    errors.insert(key, e);
                }
            }
        }
    }
    for (key_name, kind, items) in [
        ("tools", CatalogKind::Tool, &doc.tools),
        ("resources", CatalogKind::Resource, &doc.resources),
        ("prompts", CatalogKind::Prompt, &doc.prompts),
    ] {
        if !types.contains(key_name) {
            continue;
        }
        for i in items {
            let key = (Kind::Item(kind), i.name.clone());
            let mut check = match plan.get(&key) {
                None | Some(Step::Skip) => continue,
                Some(Step::Create(name)) => validate_item_name(name, "name"),
                Some(Step::Update(_)) => Ok(()),
            }
            .and_then(|()| validate_uri(kind, &i.uri))
            .and_then(|()| normalize_tags(i.tags.clone(), "tags").map(drop))
            .map_err(|e| e.to_string());
            if check.is_ok()
                && let Some(gname) = &i.gateway
                && !importable_gateways.contains(gname.as_str())
                && store.find_gateway_by_name(gname).await?.is_none()
            {
                check = Err(format!(
                    "gateway: {gname} is neither imported nor registered"
                ));
            }
            if let Err(e) = check {
                errors.insert(key, e);
            }
        }
    }
    if types.contains("servers") {
        for s in &doc.servers {
            let key = (Kind::Server, s.name.clone());
            let check = match plan.get(&key) {
                None | Some(Step::Skip) => continue,
                Some(Step::Create(name)) => validate_item_name(name, "name"),
                Some(Step::Update(_)) => Ok(()),
            }
            .and_then(|()| normalize_tags(s.tags.clone(), "tags").map(drop));
            if let Err(e) = check {
                errors.insert(key, e.to_string());
            }
        }
    }
    Ok(errors)
}

/// Applies the plan in `tx`; the first failure names its entry.
async fn apply(
    store: &Store,
    tx: &mut WriteTx<'_>,
    doc: &ExportDocument,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
    report: &mut ImportReport,
) -> Result<(), (Key, StoreError)> {
    // Document name of a gateway -> its name here (differs when renamed).
    let mut gateway_names: HashMap<String, String> = HashMap::new();
    if types.contains("gateways") {
        for g in &doc.gateways {
            let key = (Kind::Gateway, g.name.clone());
            let at = |e| (key.clone(), e);
            match plan.get(&key) {
                None | Some(Step::Skip) => {}
                Some(Step::Create(name)) => {
                    // Credentials are never in a document: the gateway starts without.
                    let id = store
                        .insert_gateway_tx(
                            tx,
                            NewGateway {
                                name: name.clone(),
                                url: g.url.clone(),
                                transport: g.transport,
                                description: g.description.clone(),
                                tags: g.tags.clone(),
                                enabled: g.enabled,
                                auth_type: AuthType::None,
                                auth_sealed: None,
                            },
                        )
                        .await
                        .map_err(at)?;
                    if g.auth_type != AuthType::None {
                        report.warnings.push(format!(
                            "gateway {name}: credentials are not exported; re-enter its {} credentials (PUT /gateways/{id})",
                            g.auth_type.as_str()
                        ));
                    }
                    report.created_gateways.push(id);
                    gateway_names.insert(g.name.clone(), name.clone());
                }
                Some(Step::Update(id)) => {
                    // No `auth`: the stored credentials stay as they are.
                    store
                        .update_gateway_tx(
                            tx,
                            id,
                            GatewayPatch {
                                url: Some(g.url.clone()),
                                transport: Some(g.transport),
                                description: g.description.clone(),
                                tags: Some(g.tags.clone()),
                                enabled: Some(g.enabled),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(at)?;
                    report.updated_gateways.push(id.clone());
                }
            }
        }
    }
    for (key_name, kind, items) in [
        ("tools", CatalogKind::Tool, &doc.tools),
        ("resources", CatalogKind::Resource, &doc.resources),
        ("prompts", CatalogKind::Prompt, &doc.prompts),
    ] {
        if !types.contains(key_name) {
            continue;
        }
        for i in items {
            let key = (Kind::Item(kind), i.name.clone());
            let at = |e| (key.clone(), e);
            let step = match plan.get(&key) {
                None | Some(Step::Skip) => continue,
                Some(s) => s,
            };
            // Items of a disabled gateway are disabled, as discovery makes them.
            let (gateway_id, gateway_enabled) = match &i.gateway {
                None => (None, true),
                Some(gname) => {
                    let here = gateway_names.get(gname).unwrap_or(gname);
                    let (id, enabled) = store
                        .gateway_ref_tx(tx, here)
                        .await
                        .map_err(at)?
                        .ok_or_else(|| {
                            at(StoreError::invalid(
                                "gateway",
                                format!("{gname} is neither imported nor registered"),
                            ))
                        })?;
                    (Some(id), enabled)
                }
            };
            match step {
                Step::Skip => {}
                Step::Create(name) => {
                    insert_item(
                        tx,
                        kind,
                        NewItem {
                            name: name.clone(),
                            original_name: i.original_name.clone(),
                            gateway_id,
                            uri: i.uri.clone(),
                            description: i.description.clone(),
                            spec: i.spec.clone(),
                            tags: i.tags.clone(),
                            enabled: i.enabled && gateway_enabled,
                        },
                    )
                    .await
                    .map_err(at)?;
                }
                Step::Update(id) => {
                    let mut spec = i.spec.clone();
                    // Drop stored keys the document does not have.
                    let cur = store.get_item(kind, id).await.map_err(at)?;
                    for k in cur.spec.keys() {
                        spec.entry(k.clone()).or_insert(Value::Null);
                    }
                    update_item_tx(
                        tx,
                        kind,
                        id,
                        ItemPatch {
                            uri: i.uri.clone(),
                            description: i.description.clone(),
                            spec,
                            tags: Some(i.tags.clone()),
                            enabled: Some(i.enabled && gateway_enabled),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(at)?;
                }
            }
        }
    }
    if types.contains("servers") {
        for s in &doc.servers {
            let key = (Kind::Server, s.name.clone());
            let at = |e| (key.clone(), e);
            let step = match plan.get(&key) {
                None | Some(Step::Skip) => continue,
                Some(s) => s,
            };
            let mut ids: [Vec<String>; 3] = Default::default();
            let mut missing = Vec::new();
            for (slot, (kind, names)) in ids.iter_mut().zip([
                (CatalogKind::Tool, &s.tools),
                (CatalogKind::Resource, &s.resources),
                (CatalogKind::Prompt, &s.prompts),
            ]) {
                for n in names {
                    // A renamed item is found under its new name.
                    let actual = match plan.get(&(Kind::Item(kind), n.clone())) {
                        Some(Step::Create(new)) => new.clone(),
                        _ => n.clone(),
                    };
                    match item_id_by_name(tx, kind, &actual).await.map_err(at)? {
                        Some(id) => slot.push(id),
                        None => missing.push(format!("{} {n}", kind.label())),
                    }
                }
            }
            if !missing.is_empty() {
                report.warnings.push(format!(
                    "server {}: unknown items left out: {}",
                    s.name,
                    missing.join(", ")
                ));
            }
            let [tools, resources, prompts] = ids;
            match step {
                Step::Skip => {}
                Step::Create(name) => {
                    store
                        .insert_server_tx(
                            tx,
                            NewServer {
                                name: name.clone(),
                                description: s.description.clone(),
                                icon: s.icon.clone(),
                                tags: s.tags.clone(),
                                enabled: s.enabled,
                                tools,
                                resources,
                                prompts,
                            },
                        )
                        .await
                        .map_err(at)?;
                }
                Step::Update(id) => {
                    store
                        .update_server_tx(
                            tx,
                            id,
                            ServerPatch {
                                description: s.description.clone(),
                                icon: s.icon.clone(),
                                tags: Some(s.tags.clone()),
                                enabled: Some(s.enabled),
                                tools: Some(tools),
                                resources: Some(resources),
                                prompts: Some(prompts),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(at)?;
                }
            }
        }
    }
    Ok(())
}
