//! Applying an export document: plan each entry against the registry (create, update,
//! skip, rename, conflict), parse every planned entry into domain values with the API's own
//! rules, then write the parsed values in one transaction. What fails to parse is reported
//! per entry and nothing is written; what is written was parsed, not re-read.

mod edge;

use std::collections::{HashMap, HashSet};

use mcpgw_core::snapshot::limits::RateLimitService;
use serde_json::Value;

use super::{
    ConflictStrategy, DocumentKind, ExportDocument, ExportItem, ImportEntry, ImportError,
    ImportQuery, ImportReport, parse_document, parse_types,
};
use crate::config::FederationSettings;
use crate::federation::check_upstream_url;
use crate::model::{
    AllowedOrigins, AuthType, CatalogKind, CatalogSpec, FieldInvalid, GatewayName, GatewayPatch,
    ItemName, ItemPatch, Naming, NewGateway, NewItem, NewServer, PromptSpec, ResourceSpec,
    ServerPatch, SpecChange, Tags, ToolSpec, Transport, UpstreamUrl,
};
use crate::store::k8s::OwnedObject;
use crate::store::pins::ImportedPin;
use crate::store::policies::{DEFAULT_LIMITS, EdgeKind};
use crate::store::{
    Store, StoreError, WriteTx, insert_item, item_id_by_name, update_item_tx, validate_uri,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Gateway,
    Item(CatalogKind),
    Server,
    Issuer,
    /// A server's policy, by the server's name.
    Policy,
    /// A server's limits, by the server's name.
    Limits,
    /// The default limits (name `default`).
    DefaultLimits,
    /// The passthrough path's policy (name `passthrough`).
    PassthroughPolicy,
    Plugin,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Item(k) => k.label(),
            Kind::Server => "server",
            Kind::Issuer => "issuer",
            Kind::Policy => "policy",
            Kind::Limits => "limits",
            Kind::DefaultLimits => "default limits",
            Kind::PassthroughPolicy => "passthrough policy",
            Kind::Plugin => "plugin",
        }
    }
}

fn kind_of(label: &str) -> Kind {
    match label {
        "gateway" => Kind::Gateway,
        "server" => Kind::Server,
        "issuer" => Kind::Issuer,
        "policy" => Kind::Policy,
        "limits" => Kind::Limits,
        "default limits" => Kind::DefaultLimits,
        "passthrough policy" => Kind::PassthroughPolicy,
        "plugin" => Kind::Plugin,
        other => CatalogKind::ALL
            .into_iter()
            .find(|k| k.label() == other)
            .map_or(Kind::Server, Kind::Item),
    }
}

async fn exists(store: &Store, kind: Kind, name: &str) -> Result<Option<String>, StoreError> {
    Ok(match kind {
        Kind::Gateway => store.find_gateway_by_name(name).await?.map(|g| g.id),
        Kind::Item(k) => store.item_id_by_name(k, name).await?,
        Kind::Server => server_by_name(store, name).await?,
        Kind::Issuer => edge::stored(store, EdgeKind::Issuer, name).await?,
        Kind::Plugin => edge::stored(store, EdgeKind::Plugin, name).await?,
        Kind::DefaultLimits => edge::stored(store, EdgeKind::Limits, DEFAULT_LIMITS).await?,
        Kind::PassthroughPolicy => {
            edge::stored(store, EdgeKind::Policy, crate::snapshot::PASSTHROUGH_POLICY).await?
        }
        Kind::Policy | Kind::Limits => {
            let Some(id) = server_by_name(store, name).await? else {
                return Ok(None);
            };
            let kind = if kind == Kind::Policy {
                EdgeKind::Policy
            } else {
                EdgeKind::Limits
            };
            edge::stored(store, kind, &id).await?
        }
    })
}

async fn server_by_name(store: &Store, name: &str) -> Result<Option<String>, StoreError> {
    Ok(store
        .all_servers()
        .await?
        .into_iter()
        .find(|s| s.name == *name)
        .map(|s| s.id))
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

/// A gateway entry, parsed.
struct ParsedGateway {
    /// The name it gets (a create's, possibly renamed); `None` for an update.
    name: Option<GatewayName>,
    url: UpstreamUrl,
    transport: Transport,
    description: Option<String>,
    tags: Tags,
    enabled: bool,
    auth_type: AuthType,
    identity: crate::model::GatewayIdentity,
    /// Pinning policy, baselined, approved definitions (hashes checked).
    pinning: Option<(crate::pinning::PinPolicy, bool, Vec<ImportedPin>)>,
}

/// An item entry, parsed.
struct ParsedItem<S> {
    name: Option<ItemName>,
    original_name: String,
    gateway: Option<String>,
    uri: Option<String>,
    description: Option<String>,
    spec: S,
    tags: Tags,
    enabled: bool,
}

/// A virtual server entry, parsed.
struct ParsedServer {
    name: Option<ItemName>,
    description: Option<String>,
    icon: Option<String>,
    tags: Tags,
    enabled: bool,
    naming: Naming,
    allowed_origins: AllowedOrigins,
}

/// Every planned entry, parsed.
#[derive(Default)]
struct Parsed {
    gateways: HashMap<String, ParsedGateway>,
    tools: HashMap<String, ParsedItem<ToolSpec>>,
    resources: HashMap<String, ParsedItem<ResourceSpec>>,
    prompts: HashMap<String, ParsedItem<PromptSpec>>,
    servers: HashMap<String, ParsedServer>,
    edge: edge::ParsedEdge,
}

/// Where a kind's parsed items sit.
trait ParsedKind: DocumentKind {
    fn parsed_mut(p: &mut Parsed) -> &mut HashMap<String, ParsedItem<Self>>;
}

impl ParsedKind for ToolSpec {
    fn parsed_mut(p: &mut Parsed) -> &mut HashMap<String, ParsedItem<Self>> {
        &mut p.tools
    }
}

impl ParsedKind for ResourceSpec {
    fn parsed_mut(p: &mut Parsed) -> &mut HashMap<String, ParsedItem<Self>> {
        &mut p.resources
    }
}

impl ParsedKind for PromptSpec {
    fn parsed_mut(p: &mut Parsed) -> &mut HashMap<String, ParsedItem<Self>> {
        &mut p.prompts
    }
}

/// Imports a document: plan, parse, then apply everything in one write transaction.
/// `ratelimit` is the rate-limit service global limits go to (none: they are refused, as
/// `PUT /limits` refuses them).
pub async fn import(
    store: &Store,
    settings: &FederationSettings,
    ratelimit: Option<&RateLimitService>,
    body: Value,
    q: &ImportQuery,
) -> Result<ImportReport, ImportError> {
    let parsed_doc = parse_document(body, &settings.separator)?;
    let doc = parsed_doc.document;
    let types = parse_types(q.types.as_deref())?;
    let strategy = q.conflict_strategy.unwrap_or_default();
    let dry_run = q.dry_run.unwrap_or(false);
    let mut report = ImportReport {
        dry_run,
        source: parsed_doc.source.into(),
        warnings: parsed_doc.warnings,
        ..Default::default()
    };

    // ---- plan ------------------------------------------------------------------------
    let mut names: Vec<Key> = Vec::new();
    if types.contains("gateways") {
        names.extend(doc.gateways.iter().map(|g| (Kind::Gateway, g.name.clone())));
    }
    for (kind, items) in [
        (CatalogKind::Tool, &doc.tools),
        (CatalogKind::Resource, &doc.resources),
        (CatalogKind::Prompt, &doc.prompts),
    ] {
        if types.contains(kind.plural()) {
            names.extend(items.iter().map(|i| (Kind::Item(kind), i.name.clone())));
        }
    }
    if types.contains("servers") {
        names.extend(doc.servers.iter().map(|s| (Kind::Server, s.name.clone())));
    }
    names.extend(edge::names(&doc, &types));
    let mut plan: HashMap<Key, Step> = HashMap::new();
    let mut planned_names: HashSet<Key> = HashSet::new();
    let mut conflicts = Vec::new();
    // Entries a Kubernetes resource owns: read-only here as through the API.
    let mut owned: HashMap<Key, String> = HashMap::new();
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
        if let Some(why) = edge::left_alone(*kind, name) {
            report
                .warnings
                .push(format!("{} {name}: {why}", kind.label()));
            report.entries.push(ImportEntry {
                kind: kind.label().into(),
                name: name.clone(),
                action: "skip".into(),
                new_name: None,
                detail: Some(why),
            });
            plan.insert((*kind, name.clone()), Step::Skip);
            continue;
        }
        let existing = match kind {
            // A policy or limits follows its server: one this import creates has none.
            Kind::Policy | Kind::Limits
                if matches!(
                    plan.get(&(Kind::Server, name.clone())),
                    Some(Step::Create(_))
                ) =>
            {
                None
            }
            _ => exists(store, *kind, name).await?,
        };
        let one_per_server = matches!(
            kind,
            Kind::Policy | Kind::Limits | Kind::DefaultLimits | Kind::PassthroughPolicy
        );
        let (step, entry) = match (existing, strategy) {
            (Some(_), ConflictStrategy::Rename) if one_per_server => (
                Step::Skip,
                (
                    "skip",
                    None,
                    Some("exists; rename does not apply: a server has one (it follows a renamed server)".to_owned()),
                ),
            ),
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
        if !matches!(step, Step::Skip)
            && let Some(owner) = owned_by(store, &plan, &step, *kind, name).await?
        {
            owned.insert(
                (*kind, name.clone()),
                format!("owned by {owner}; change it with kubectl"),
            );
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
        report.entries.extend(parsed_doc.left_out);
    }

    // ---- parse: the API's rules, before anything is written --------------------------
    let (parsed, mut errors) = parse(store, settings, ratelimit, &doc, &types, &plan).await?;
    for (key, why) in owned {
        errors.entry(key).or_insert(why);
    }
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
    if let Err((key, e)) = apply(store, &mut tx, &doc, &types, &plan, parsed, &mut report).await {
        // Dropping the transaction rolls everything back.
        drop(tx);
        return Err(match e {
            StoreError::Database(_) | StoreError::Corrupt(_) | StoreError::Sealed(_) => {
                ImportError::Store(e)
            }
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

/// The Kubernetes resource owning what a planned step writes, if one does: an updated
/// gateway or server, or the policy or limits of a server one owns (the controller writes
/// those from its `MCPPolicy` resources).
async fn owned_by(
    store: &Store,
    plan: &HashMap<Key, Step>,
    step: &Step,
    kind: Kind,
    name: &str,
) -> Result<Option<crate::store::k8s::K8sOwner>, StoreError> {
    match (kind, step) {
        (Kind::Gateway, Step::Update(id)) => store.k8s_owner(OwnedObject::Gateway, id).await,
        (Kind::Server, Step::Update(id)) => store.k8s_owner(OwnedObject::Server, id).await,
        (Kind::Policy | Kind::Limits, _) => {
            if matches!(
                plan.get(&(Kind::Server, name.to_owned())),
                Some(Step::Create(_))
            ) {
                return Ok(None);
            }
            match exists(store, Kind::Server, name).await? {
                Some(id) => store.k8s_owner(OwnedObject::Server, &id).await,
                None => Ok(None),
            }
        }
        _ => Ok(None),
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

/// Parses every planned entry with the rules the API applies to the same fields. Returns
/// the parsed entries and those that fail, with why.
async fn parse(
    store: &Store,
    settings: &FederationSettings,
    ratelimit: Option<&RateLimitService>,
    doc: &ExportDocument,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
) -> Result<(Parsed, HashMap<Key, String>), StoreError> {
    let mut parsed = Parsed::default();
    let mut errors: HashMap<Key, String> = HashMap::new();
    if types.contains("gateways") {
        for g in &doc.gateways {
            let key = (Kind::Gateway, g.name.clone());
            let (name, current) = match plan.get(&key) {
                None | Some(Step::Skip) => continue,
                Some(Step::Create(name)) => (Some(name.as_str()), None),
                Some(Step::Update(id)) => (None, Some(store.get_gateway(id).await?)),
            };
            let entry = async {
                let out = ParsedGateway {
                    name: name
                        .map(|n| GatewayName::parse_input(n, &settings.separator))
                        .transpose()?,
                    url: UpstreamUrl::parse(&g.url)?,
                    transport: g.transport,
                    description: g.description.clone(),
                    tags: Tags::parse(&g.tags)?,
                    enabled: g.enabled,
                    auth_type: g.auth_type,
                    identity: {
                        g.identity.check()?;
                        g.identity.clone()
                    },
                    pinning: g.pinning.as_ref().map(edge::parse_pinning).transpose()?,
                };
                // An update carries no credentials: the stored ones may not move to
                // another origin (the redacted URL of an export is no move).
                if let Some(cur) = &current
                    && !cur.url.is_redacted_form(out.url.as_str())
                {
                    cur.check_move(&out.url)?;
                }
                // The SSRF guard of POST /gateways and PUT /gateways/{id}.
                check_upstream_url(&out.url, settings.ssrf, settings.timeout)
                    .await
                    .map_err(|e| FieldInvalid::new("url", e.to_string()))?;
                Ok::<_, FieldInvalid>(out)
            };
            match entry.await {
                Ok(p) => {
                    parsed.gateways.insert(g.name.clone(), p);
                }
                Err(e) => {
                    errors.insert(key, e.to_string());
                }
            }
        }
    }
    parse_items::<ToolSpec>(store, doc, types, plan, &mut parsed, &mut errors).await?;
    parse_items::<ResourceSpec>(store, doc, types, plan, &mut parsed, &mut errors).await?;
    parse_items::<PromptSpec>(store, doc, types, plan, &mut parsed, &mut errors).await?;
    if types.contains("servers") {
        for s in &doc.servers {
            let key = (Kind::Server, s.name.clone());
            let name = match plan.get(&key) {
                None | Some(Step::Skip) => continue,
                Some(Step::Create(name)) => Some(name.as_str()),
                Some(Step::Update(_)) => None,
            };
            let entry = || -> Result<ParsedServer, FieldInvalid> {
                Ok(ParsedServer {
                    name: name.map(ItemName::parse).transpose()?,
                    description: s.description.clone(),
                    icon: s.icon.clone(),
                    tags: Tags::parse(&s.tags)?,
                    enabled: s.enabled,
                    naming: s.naming,
                    allowed_origins: AllowedOrigins::parse(&s.allowed_origins)?,
                })
            };
            match entry() {
                Ok(p) => {
                    parsed.servers.insert(s.name.clone(), p);
                }
                Err(e) => {
                    errors.insert(key, e.to_string());
                }
            }
        }
    }
    parsed.edge = edge::parse(store, ratelimit, doc, types, plan, &mut errors).await?;
    Ok((parsed, errors))
}

async fn parse_items<S: ParsedKind>(
    store: &Store,
    doc: &ExportDocument,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
    parsed: &mut Parsed,
    errors: &mut HashMap<Key, String>,
) -> Result<(), StoreError> {
    let kind = S::KIND;
    if !types.contains(kind.plural()) {
        return Ok(());
    }
    for i in S::entries(doc) {
        let key = (Kind::Item(kind), i.name.clone());
        let name = match plan.get(&key) {
            None | Some(Step::Skip) => continue,
            Some(Step::Create(name)) => Some(name.as_str()),
            Some(Step::Update(_)) => None,
        };
        let mut entry = parse_item::<S>(i, name).map_err(|e| e.to_string());
        if entry.is_ok()
            && let Some(gname) = &i.gateway
            && !parsed.gateways.contains_key(gname)
            && store.find_gateway_by_name(gname).await?.is_none()
        {
            entry = Err(format!(
                "gateway: {gname} is neither imported nor registered"
            ));
        }
        match entry {
            Ok(p) => {
                S::parsed_mut(parsed).insert(i.name.clone(), p);
            }
            Err(e) => {
                errors.insert(key, e);
            }
        }
    }
    Ok(())
}

fn parse_item<S: CatalogSpec>(
    i: &ExportItem,
    name: Option<&str>,
) -> Result<ParsedItem<S>, FieldInvalid> {
    let name = name.map(ItemName::parse).transpose()?;
    validate_uri(S::KIND, &i.uri).map_err(|e| match e {
        StoreError::Invalid { field, reason } => FieldInvalid::new(field, reason),
        other => FieldInvalid::new("uri", other.to_string()),
    })?;
    Ok(ParsedItem {
        name,
        original_name: i.original_name.clone(),
        gateway: i.gateway.clone(),
        uri: i.uri.clone(),
        description: i.description.clone(),
        spec: S::from_json(i.spec.clone())?,
        tags: Tags::parse(&i.tags)?,
        enabled: i.enabled,
    })
}

/// Applies the plan in `tx` from the parsed entries; the first failure names its entry.
async fn apply(
    store: &Store,
    tx: &mut WriteTx<'_>,
    doc: &ExportDocument,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
    mut parsed: Parsed,
    report: &mut ImportReport,
) -> Result<(), (Key, StoreError)> {
    // Document name of a gateway -> its name here (differs when renamed).
    let mut gateway_names: HashMap<String, String> = HashMap::new();
    if types.contains("gateways") {
        for g in &doc.gateways {
            let key = (Kind::Gateway, g.name.clone());
            let at = |e| (key.clone(), e);
            let step = match plan.get(&key) {
                None | Some(Step::Skip) => continue,
                Some(s) => s,
            };
            let Some(p) = parsed.gateways.remove(&g.name) else {
                continue;
            };
            match (step, p.name) {
                (Step::Create(_), Some(name)) => {
                    let came_redacted = p.url.as_str().contains(crate::model::REDACTED);
                    // Credentials are never in a document: the gateway starts without.
                    let id = store
                        .insert_gateway_tx(
                            tx,
                            NewGateway {
                                id: crate::store::new_id(),
                                name: name.clone(),
                                url: p.url,
                                transport: p.transport,
                                description: p.description,
                                tags: p.tags,
                                enabled: p.enabled,
                                auth_type: AuthType::None,
                                auth_sealed: None,
                                identity: p.identity.clone(),
                                identity_sealed: None,
                            },
                        )
                        .await
                        .map_err(at)?;
                    if came_redacted {
                        report.warnings.push(format!(
                            "gateway {name}: its URL came with redacted (***) values; give the real one (PUT /gateways/{id} with url)"
                        ));
                    }
                    if p.auth_type != AuthType::None {
                        report.warnings.push(format!(
                            "gateway {name}: credentials are not exported; re-enter its {} credentials (PUT /gateways/{id})",
                            p.auth_type.as_str()
                        ));
                    }
                    if p.identity.mode == crate::model::IdentityMode::TokenExchange {
                        report.warnings.push(format!(
                            "gateway {name}: its token exchange's client secret is not exported; the Envoys leave it out until it is given (PUT /gateways/{id} with identity.client_secret)"
                        ));
                    }
                    if let Some((policy, baselined, pins)) = &p.pinning {
                        crate::store::pins::put_pinning_tx(tx, &id, *policy, *baselined, pins)
                            .await
                            .map_err(at)?;
                    }
                    report.created_gateways.push(id);
                    gateway_names.insert(g.name.clone(), name.to_string());
                }
                (Step::Update(id), _) => {
                    // An export shows the URL redacted: importing it back keeps the
                    // stored one (and its query secrets).
                    let current = store.get_gateway(id).await.map_err(at)?;
                    let url = (!current.url.is_redacted_form(p.url.as_str())).then_some(p.url);
                    // A changed identity replaces the stored one (a token exchange keeps
                    // its stored client secret; without one the entry fails).
                    let identity = (current.identity != p.identity).then_some((p.identity, None));
                    // No `auth`: the stored credentials stay as they are.
                    store
                        .update_gateway_tx(
                            tx,
                            id,
                            GatewayPatch {
                                url,
                                transport: Some(p.transport),
                                description: p.description,
                                tags: Some(p.tags),
                                enabled: Some(p.enabled),
                                identity,
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(at)?;
                    if let Some((policy, baselined, pins)) = &p.pinning {
                        crate::store::pins::put_pinning_tx(tx, id, *policy, *baselined, pins)
                            .await
                            .map_err(at)?;
                    }
                    report.updated_gateways.push(id.clone());
                }
                _ => {}
            }
        }
    }
    apply_items::<ToolSpec>(store, tx, doc, types, plan, &mut parsed, &gateway_names).await?;
    apply_items::<ResourceSpec>(store, tx, doc, types, plan, &mut parsed, &gateway_names).await?;
    apply_items::<PromptSpec>(store, tx, doc, types, plan, &mut parsed, &gateway_names).await?;
    if types.contains("servers") {
        for s in &doc.servers {
            let key = (Kind::Server, s.name.clone());
            let at = |e| (key.clone(), e);
            let step = match plan.get(&key) {
                None | Some(Step::Skip) => continue,
                Some(s) => s,
            };
            let Some(p) = parsed.servers.remove(&s.name) else {
                continue;
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
            match (step, p.name) {
                (Step::Create(_), Some(name)) => {
                    store
                        .insert_server_tx(
                            tx,
                            NewServer {
                                name,
                                description: p.description,
                                icon: p.icon,
                                tags: p.tags,
                                enabled: p.enabled,
                                naming: p.naming,
                                allowed_origins: p.allowed_origins,
                                tools,
                                resources,
                                prompts,
                            },
                        )
                        .await
                        .map_err(at)?;
                }
                (Step::Update(id), _) => {
                    store
                        .update_server_tx(
                            tx,
                            id,
                            ServerPatch {
                                description: p.description,
                                icon: p.icon,
                                tags: Some(p.tags),
                                enabled: Some(p.enabled),
                                naming: Some(p.naming),
                                allowed_origins: Some(p.allowed_origins),
                                tools: Some(tools),
                                resources: Some(resources),
                                prompts: Some(prompts),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(at)?;
                }
                _ => {}
            }
        }
    }
    edge::apply(store, tx, doc, plan, parsed.edge, report).await?;
    Ok(())
}

async fn apply_items<S: ParsedKind>(
    store: &Store,
    tx: &mut WriteTx<'_>,
    doc: &ExportDocument,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
    parsed: &mut Parsed,
    gateway_names: &HashMap<String, String>,
) -> Result<(), (Key, StoreError)> {
    let kind = S::KIND;
    if !types.contains(kind.plural()) {
        return Ok(());
    }
    for i in S::entries(doc) {
        let key = (Kind::Item(kind), i.name.clone());
        let at = |e| (key.clone(), e);
        let step = match plan.get(&key) {
            None | Some(Step::Skip) => continue,
            Some(s) => s,
        };
        let Some(p) = S::parsed_mut(parsed).remove(&i.name) else {
            continue;
        };
        // Items of a disabled gateway are disabled, as discovery makes them.
        let (gateway_id, gateway_enabled) = match &p.gateway {
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
        match (step, p.name) {
            (Step::Create(_), Some(name)) => {
                insert_item(
                    tx,
                    NewItem {
                        name,
                        original_name: p.original_name,
                        gateway_id,
                        uri: p.uri,
                        description: p.description,
                        spec: p.spec,
                        tags: p.tags,
                        enabled: p.enabled && gateway_enabled,
                    },
                )
                .await
                .map_err(at)?;
            }
            (Step::Update(id), _) => {
                // The document's spec replaces the stored one whole.
                update_item_tx(
                    tx,
                    id,
                    ItemPatch::<S> {
                        uri: p.uri,
                        description: p.description,
                        spec: SpecChange::Replace(p.spec),
                        tags: Some(p.tags),
                        enabled: Some(p.enabled && gateway_enabled),
                        ..Default::default()
                    },
                )
                .await
                .map_err(at)?;
            }
            _ => {}
        }
    }
    Ok(())
}
