//! Export and import of the registry as one JSON document, with conflict strategies and
//! a dry run; import also reads ContextForge export files.
//!
//! Entries reference each other by name (gateway of an item, items of a server), so a
//! document moves between installations. Imports are planned first: `fail` refuses the
//! whole document when the plan has a conflict, and `dry_run` returns the plan only.

mod contextforge;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::crypto::SecretBox;
use crate::model::{
    AuthType, CatalogKind, GatewayPatch, ItemPatch, NewGateway, NewItem, Transport,
};
use crate::store::{NewServer, ServerPatch, Store, StoreError};

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

/// An exported gateway. Credentials stay sealed with the exporting installation's key.
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
    /// Credential kind.
    pub auth_type: AuthType,
    /// Sealed credentials (only readable with the same `MCPGW_ENCRYPTION_KEY`).
    pub auth_sealed: Option<String>,
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
        for g in &gateways {
            let (_, sealed) = store.gateway_auth(&g.id).await?;
            doc.gateways.push(ExportGateway {
                name: g.name.clone(),
                url: g.url.clone(),
                transport: g.transport,
                description: g.description.clone(),
                tags: g.tags.clone(),
                enabled: g.enabled,
                auth_type: g.auth_type,
                auth_sealed: sealed,
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
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads either format.
pub fn parse_document(
    body: Value,
) -> Result<(ExportDocument, Vec<String>, &'static str), ImportError> {
    if body.get("format").and_then(Value::as_str) == Some(FORMAT) {
        let doc: ExportDocument = serde_json::from_value(body)
            .map_err(|e| ImportError::Format(format!("invalid mcpgw export: {e}")))?;
        if doc.version != 1 {
            return Err(ImportError::Format(format!(
                "unsupported export version {}",
                doc.version
            )));
        }
        Ok((doc, Vec::new(), "mcpgw"))
    } else if body.get("entities").is_some_and(Value::is_object) {
        let (doc, warnings) = contextforge::convert(&body)?;
        Ok((doc, warnings, "contextforge"))
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

/// Imports a document.
pub async fn import(
    store: &Store,
    secrets: &SecretBox,
    body: Value,
    q: &ImportQuery,
) -> Result<ImportReport, ImportError> {
    let (doc, warnings, source) = parse_document(body)?;
    let types = parse_types(q.types.as_deref())?;
    let strategy = q.conflict_strategy.unwrap_or_default();
    let dry_run = q.dry_run.unwrap_or(false);
    let mut report = ImportReport {
        dry_run,
        source: source.into(),
        warnings,
        ..Default::default()
    };

    // ---- plan ------------------------------------------------------------------------
    let mut names: Vec<(Kind, String)> = Vec::new();
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
    let mut plan: HashMap<(Kind, String), Step> = HashMap::new();
    let mut planned_names: HashSet<(Kind, String)> = HashSet::new();
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
            report.skipped += 1;
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
    if dry_run {
        for e in &report.entries {
            match e.action.as_str() {
                "create" => report.created += 1,
                "update" => report.updated += 1,
                "rename" => report.renamed += 1,
                _ => {}
            }
        }
        report.skipped = report.entries.iter().filter(|e| e.action == "skip").count() as u32;
        return Ok(report);
    }

    // ---- apply -----------------------------------------------------------------------
    let mut outcome: HashMap<(Kind, String), Result<(), String>> = HashMap::new();
    let mut gateway_ids: HashMap<String, String> = HashMap::new();
    if types.contains("gateways") {
        for g in &doc.gateways {
            let key = (Kind::Gateway, g.name.clone());
            let Some(step) = plan.get(&key) else { continue };
            let (auth_type, sealed) = match (&g.auth_sealed, g.auth_type) {
                (Some(s), t) if t != AuthType::None => {
                    if secrets.open(s).is_ok() {
                        (t, Some(s.clone()))
                    } else {
                        report.warnings.push(format!(
                            "gateway {}: credentials were sealed with another key; imported without credentials",
                            g.name
                        ));
                        (AuthType::None, None)
                    }
                }
                _ => (AuthType::None, None),
            };
            let r = match step {
                Step::Create(name) => store
                    .create_gateway(NewGateway {
                        name: name.clone(),
                        url: g.url.clone(),
                        transport: g.transport,
                        description: g.description.clone(),
                        tags: g.tags.clone(),
                        enabled: g.enabled,
                        auth_type,
                        auth_sealed: sealed,
                    })
                    .await
                    .map(|gw| {
                        report.created_gateways.push(gw.id.clone());
                        gateway_ids.insert(g.name.clone(), gw.id);
                    }),
                Step::Update(id) => store
                    .update_gateway(
                        id,
                        GatewayPatch {
                            url: Some(g.url.clone()),
                            transport: Some(g.transport),
                            description: g.description.clone(),
                            tags: Some(g.tags.clone()),
                            enabled: Some(g.enabled),
                            auth: Some((auth_type, sealed)),
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|gw| {
                        gateway_ids.insert(g.name.clone(), gw.id);
                    }),
                Step::Skip => Ok(()),
            };
            outcome.insert(key, r.map_err(|e| e.to_string()));
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
            let Some(step) = plan.get(&key) else { continue };
            let gateway_id = match &i.gateway {
                None => Ok(None),
                Some(gname) => match gateway_ids.get(gname) {
                    Some(id) => Ok(Some(id.clone())),
                    None => store
                        .find_gateway_by_name(gname)
                        .await?
                        .map(|g| Some(g.id))
                        .ok_or_else(|| {
                            format!("gateway {gname} is neither imported nor registered")
                        }),
                },
            };
            let r = match (gateway_id, step) {
                (Err(e), _) => Err(e),
                (Ok(_), Step::Skip) => Ok(()),
                (Ok(gid), Step::Create(name)) => store
                    .create_item(
                        kind,
                        NewItem {
                            name: name.clone(),
                            original_name: i.original_name.clone(),
                            gateway_id: gid,
                            uri: i.uri.clone(),
                            description: i.description.clone(),
                            spec: i.spec.clone(),
                            tags: i.tags.clone(),
                            enabled: i.enabled,
                        },
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                (Ok(_), Step::Update(id)) => {
                    let mut spec = i.spec.clone();
                    // Drop stored keys the document does not have.
                    if let Ok(cur) = store.get_item(kind, id).await {
                        for k in cur.spec.keys() {
                            spec.entry(k.clone()).or_insert(Value::Null);
                        }
                    }
                    store
                        .update_item(
                            kind,
                            id,
                            ItemPatch {
                                uri: i.uri.clone(),
                                description: i.description.clone(),
                                spec,
                                tags: Some(i.tags.clone()),
                                enabled: Some(i.enabled),
                                ..Default::default()
                            },
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            };
            outcome.insert(key, r);
        }
    }
    if types.contains("servers") {
        for s in &doc.servers {
            let key = (Kind::Server, s.name.clone());
            let Some(step) = plan.get(&key) else { continue };
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
                    match store.find_item_by_name(kind, &actual).await? {
                        Some(i) => slot.push(i.id),
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
            let r = match step {
                Step::Skip => Ok(()),
                Step::Create(name) => store
                    .create_server(NewServer {
                        name: name.clone(),
                        description: s.description.clone(),
                        icon: s.icon.clone(),
                        tags: s.tags.clone(),
                        enabled: s.enabled,
                        tools,
                        resources,
                        prompts,
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Step::Update(id) => store
                    .update_server(
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
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            outcome.insert(key, r);
        }
    }
    // Fold outcomes into the entries.
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for (n, e) in report.entries.iter().enumerate() {
        index.entry((e.kind.clone(), e.name.clone())).or_insert(n);
    }
    for ((kind, name), r) in outcome {
        if let (Err(e), Some(&n)) = (r, index.get(&(kind.label().to_owned(), name))) {
            report.entries[n].action = "error".into();
            report.entries[n].detail = Some(e);
        }
    }
    for e in &report.entries {
        match e.action.as_str() {
            "create" => report.created += 1,
            "update" => report.updated += 1,
            "rename" => report.renamed += 1,
            "error" => report.failed += 1,
            _ => {}
        }
    }
    report.skipped = report.entries.iter().filter(|e| e.action == "skip").count() as u32;
    Ok(report)
}
