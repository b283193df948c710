//! Importing what the edge enforces: issuers, policies, limits, plugins, with the checks of
//! their `PUT`s (`crate::api::policies`): the filter's own validation, rule conditions
//! checked as CEL, limits against the rate-limit service, plugins compiled as the filter
//! does. References are by name in the document: a policy's or limits' server, a policy's
//! issuers and a plugin's `conditions.servers` follow what this import renames, and become
//! ids when written.

use std::collections::{HashMap, HashSet};

use mcpgw_core::snapshot::ConfigError;
use mcpgw_core::snapshot::auth::{Auth, Issuer, ServerAuth};
use mcpgw_core::snapshot::limits::{RateLimitService, ServerLimits};
use mcpgw_core::snapshot::plugins::Plugin;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Key, Kind, Step};
use crate::model::{CatalogSpec, DiscoveredItem, FieldInvalid, ToolSpec};
use crate::pinning::{self, PinPolicy};
use crate::snapshot::{
    PASSTHROUGH_POLICY, check_server_limits, check_written_server_auth, policy_prefix,
};
use crate::store::pins::ImportedPin;
use crate::store::policies::{DEFAULT_LIMITS, EdgeKind, put_edge_item_tx};
use crate::store::{Store, StoreError, WriteTx};
use crate::transfer::{ExportDocument, ExportPinning, ImportReport};

/// The prefix of the plugins the Kubernetes controller writes from `MCPPolicy` resources.
const K8S_PLUGIN_PREFIX: &str = "k8s:";

/// The edge entries of a document, parsed and checked.
#[derive(Default)]
pub(super) struct ParsedEdge {
    /// By the issuer's name in the document.
    issuers: HashMap<String, Issuer>,
    /// By the server's name in the document; issuers renamed already.
    /// By the server's name in the document (`None`: the passthrough path's).
    policies: HashMap<Option<String>, ServerAuth>,
    /// By the server's name in the document (`None`: the default limits).
    limits: HashMap<Option<String>, ServerLimits>,
    /// By the plugin's name in the document; `conditions.servers` still by document name.
    plugins: HashMap<String, Plugin>,
}

/// `Some(name)` when the item `name` of `kind` is stored (a row that no longer parses
/// counts: it is there).
pub(super) async fn stored(
    store: &Store,
    kind: EdgeKind,
    name: &str,
) -> Result<Option<String>, StoreError> {
    match store.edge_item::<Value>(kind, name).await {
        Ok(_) | Err(StoreError::Corrupt(_)) => Ok(Some(name.to_owned())),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The document's edge entries of the kinds in `types`, as plan keys.
pub(super) fn names(doc: &ExportDocument, types: &HashSet<&str>) -> Vec<Key> {
    let mut out = Vec::new();
    if types.contains("issuers") {
        out.extend(doc.issuers.iter().map(|i| (Kind::Issuer, i.name.clone())));
    }
    if types.contains("policies") {
        out.extend(doc.policies.iter().map(policy_key));
    }
    if types.contains("limits") {
        out.extend(doc.limits.iter().map(limits_key));
    }
    if types.contains("plugins") {
        out.extend(doc.plugins.iter().map(|p| (Kind::Plugin, p.name.clone())));
    }
    out
}

fn policy_key(p: &crate::transfer::ExportPolicy) -> Key {
    match &p.server {
        Some(s) => (Kind::Policy, s.clone()),
        None => (Kind::PassthroughPolicy, PASSTHROUGH_POLICY.to_owned()),
    }
}

fn limits_key(l: &crate::transfer::ExportLimits) -> Key {
    match &l.server {
        Some(s) => (Kind::Limits, s.clone()),
        None => (Kind::DefaultLimits, DEFAULT_LIMITS.to_owned()),
    }
}

/// Why an entry is not imported whatever the strategy, if it is not: the plugins the
/// Kubernetes controller writes (their names are not ones `PUT /plugins` accepts, and
/// their `MCPPolicy` is their source).
pub(super) fn left_alone(kind: Kind, name: &str) -> Option<String> {
    (kind == Kind::Plugin && name.starts_with(K8S_PLUGIN_PREFIX)).then(|| {
        "written by the Kubernetes controller from an MCPPolicy, not imported: apply that MCPPolicy, \
         or put the plugin under a plain name (PUT /plugins/{name})"
            .to_owned()
    })
}

/// The name an entry gets here: its new one when renamed.
fn final_name(plan: &HashMap<Key, Step>, kind: Kind, name: &str) -> String {
    match plan.get(&(kind, name.to_owned())) {
        Some(Step::Create(n)) => n.clone(),
        _ => name.to_owned(),
    }
}

/// The step planned for `key`, when it writes: the name it writes under.
fn planned(plan: &HashMap<Key, Step>, key: &Key) -> Option<String> {
    match plan.get(key) {
        None | Some(Step::Skip) => None,
        Some(Step::Create(n)) => Some(n.clone()),
        Some(Step::Update(_)) => Some(key.1.clone()),
    }
}

/// A document value that does not parse as `T`: where, and why.
fn parse_spec<T: DeserializeOwned>(spec: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(spec.clone()).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "spec".to_owned() } else { path };
        format!("{field}: {}", e.into_inner())
    })
}

/// `field` relative to the snapshot path `prefix` of the entry.
fn relative(field: &str, prefix: &str) -> String {
    match field
        .strip_prefix(prefix)
        .map(|f| f.trim_start_matches('.'))
    {
        Some("") => "spec".to_owned(),
        Some(f) => f.to_owned(),
        None => field.to_owned(),
    }
}

/// Whether a virtual server `name` will exist once the import is applied: one the
/// document carries (and the plan keeps), or one registered here.
async fn server_known(
    store: &Store,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
    name: &str,
) -> Result<bool, StoreError> {
    if types.contains("servers") && plan.contains_key(&(Kind::Server, name.to_owned())) {
        return Ok(true);
    }
    Ok(super::exists(store, Kind::Server, name).await?.is_some())
}

fn unknown_server(name: &str) -> String {
    format!("server: {name} is neither imported nor registered")
}

/// A gateway's pinning, its hashes checked against its definitions.
pub(super) fn parse_pinning(
    p: &ExportPinning,
) -> Result<(PinPolicy, bool, Vec<ImportedPin>), FieldInvalid> {
    let mut pins = Vec::with_capacity(p.pins.len());
    for (i, pin) in p.pins.iter().enumerate() {
        let at = |f: &str| format!("pinning.pins[{i}].{f}");
        let spec = ToolSpec::from_json(pin.spec.clone())
            .map_err(|e| FieldInvalid::new(at(&e.field), e.reason))?;
        let item = DiscoveredItem {
            original_name: pin.tool.clone(),
            uri: None,
            description: pin.description.clone(),
            spec,
        };
        let hash = pinning::hash(&pinning::definition(&item));
        if hash != pin.hash {
            return Err(FieldInvalid::new(
                at("hash"),
                format!(
                    "{} is not the hash of the pinned definition ({hash})",
                    pin.hash
                ),
            ));
        }
        pins.push(ImportedPin {
            item,
            hash,
            approved_at: pin.approved_at.clone(),
            approved_by: pin.approved_by.clone(),
        });
    }
    Ok((
        PinPolicy {
            on_change: p.on_change,
            new_tools: p.new_tools,
            first_discovery: p.first_discovery,
        },
        p.baselined,
        pins,
    ))
}

/// Parses and checks every planned edge entry, as their `PUT`s do; failures go to
/// `errors`, by entry.
pub(super) async fn parse(
    store: &Store,
    ratelimit: Option<&RateLimitService>,
    doc: &ExportDocument,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
    errors: &mut HashMap<Key, String>,
) -> Result<ParsedEdge, StoreError> {
    let mut out = ParsedEdge::default();

    // Issuers: checked together with the stored ones, as PUT /issuers checks one.
    let mut auth = Auth::default();
    for r in store.edge_items::<Issuer>(EdgeKind::Issuer).await? {
        auth.issuers.insert(r.name, r.spec);
    }
    let mut from_doc: HashMap<String, String> = HashMap::new(); // name here -> document name
    if types.contains("issuers") {
        for i in &doc.issuers {
            let key = (Kind::Issuer, i.name.clone());
            let Some(name) = planned(plan, &key) else {
                continue;
            };
            match parse_spec::<Issuer>(&i.spec) {
                Ok(issuer) => {
                    auth.issuers.insert(name.clone(), issuer.clone());
                    out.issuers.insert(i.name.clone(), issuer);
                    from_doc.insert(name, i.name.clone());
                }
                Err(e) => {
                    errors.insert(key, e);
                }
            }
        }
    }
    // The first mistake is reported per entry; the entry is set aside and the rest checked
    // again, so each bad issuer is named.
    while let Err(e) = mcpgw_core::snapshot::auth::validate(&auth) {
        let culprit = from_doc
            .keys()
            .filter(|n| {
                let at = format!("auth.issuers.{n}");
                e.field == at || e.field.starts_with(&format!("{at}."))
            })
            .max_by_key(|n| n.len())
            .cloned();
        let Some(here) = culprit else {
            break;
        };
        let at = format!("auth.issuers.{here}");
        let field = if e.field == at {
            "name".to_owned()
        } else {
            relative(&e.field, &at)
        };
        auth.issuers.remove(&here);
        if let Some(doc_name) = from_doc.remove(&here) {
            out.issuers.remove(&doc_name);
            errors.insert((Kind::Issuer, doc_name), format!("{field}: {}", e.reason));
        }
    }

    if types.contains("policies") {
        for p in &doc.policies {
            let key = policy_key(p);
            if planned(plan, &key).is_none() {
                continue;
            }
            if let Some(server) = &p.server
                && !server_known(store, types, plan, server).await?
            {
                errors.insert(key, unknown_server(server));
                continue;
            }
            let mut a = match parse_spec::<ServerAuth>(&p.spec) {
                Ok(a) => a,
                Err(e) => {
                    errors.insert(key, e);
                    continue;
                }
            };
            for n in &mut a.issuers {
                *n = final_name(plan, Kind::Issuer, n);
            }
            let id = p.server.as_deref().unwrap_or(PASSTHROUGH_POLICY);
            let prefix = policy_prefix(id);
            match check_written_server_auth(id, &a, &auth) {
                Ok(()) => {
                    out.policies.insert(p.server.clone(), a);
                }
                Err(e) => {
                    errors.insert(
                        key,
                        format!("{}: {}", relative(&e.field, &prefix), e.reason),
                    );
                }
            }
        }
    }

    if types.contains("limits") {
        for l in &doc.limits {
            let key = limits_key(l);
            if planned(plan, &key).is_none() {
                continue;
            }
            if let Some(s) = &l.server
                && !server_known(store, types, plan, s).await?
            {
                errors.insert(key, unknown_server(s));
                continue;
            }
            let limits = match parse_spec::<ServerLimits>(&l.spec) {
                Ok(v) => v,
                Err(e) => {
                    errors.insert(key, e);
                    continue;
                }
            };
            let name = l.server.as_deref().unwrap_or(DEFAULT_LIMITS);
            match check_server_limits(name, &limits, ratelimit) {
                Ok(()) => {
                    out.limits.insert(l.server.clone(), limits);
                }
                Err(ConfigError::FieldInvalid { field, reason }) => {
                    let reason = if field.ends_with(".global") {
                        "a global limit needs the rate-limit service: start the control plane with --ratelimit-listen (or configure ratelimit_listen)".to_owned()
                    } else {
                        reason
                    };
                    let field = relative(&field, &format!("limits.servers.{name}"));
                    errors.insert(key, format!("{field}: {reason}"));
                }
                Err(other) => {
                    errors.insert(key, format!("spec: {other}"));
                }
            }
        }
    }

    if types.contains("plugins") {
        for p in &doc.plugins {
            let key = (Kind::Plugin, p.name.clone());
            let Some(name) = planned(plan, &key) else {
                continue;
            };
            match parse_plugin(store, types, plan, &p.name, &name, &p.spec).await? {
                Ok(plugin) => {
                    out.plugins.insert(p.name.clone(), plugin);
                }
                Err(e) => {
                    errors.insert(key, e);
                }
            }
        }
    }
    Ok(out)
}

/// A plugin entry as `PUT /plugins/{name}` checks it (`doc_name` in the document, `name`
/// here); its `conditions.servers` must name servers that will exist.
async fn parse_plugin(
    store: &Store,
    types: &HashSet<&str>,
    plan: &HashMap<Key, Step>,
    doc_name: &str,
    name: &str,
    spec: &Value,
) -> Result<Result<Plugin, String>, StoreError> {
    let mut body = spec.clone();
    let Value::Object(fields) = &mut body else {
        return Ok(Err("spec: must be a JSON object".into()));
    };
    match fields.get("name") {
        None => {}
        Some(n) if n.as_str() == Some(doc_name) => {}
        Some(_) => return Ok(Err("name: must be the entry's name".into())),
    }
    fields.insert("name".into(), Value::from(name));
    let plugin: Plugin = match parse_spec(&body) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    for (i, s) in plugin.conditions.servers.iter().enumerate() {
        if !server_known(store, types, plan, s).await? {
            return Ok(Err(format!(
                "conditions.servers[{i}]: {s} is neither an imported nor a registered virtual server"
            )));
        }
    }
    if let Err(e) = mcpgw_core::guard::Guard::check(std::slice::from_ref(&plugin)) {
        return Ok(Err(match e {
            ConfigError::FieldInvalid { field, reason } => {
                format!("{}: {reason}", relative(&field, "plugins[0]"))
            }
            other => format!("spec: {other}"),
        }));
    }
    Ok(Ok(plugin))
}

fn json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The id of the server a document names (by its name here), in `tx`.
async fn server_id(
    store: &Store,
    tx: &mut WriteTx<'_>,
    plan: &HashMap<Key, Step>,
    name: &str,
) -> Result<String, StoreError> {
    let here = final_name(plan, Kind::Server, name);
    store
        .server_id_by_name_tx(tx, &here)
        .await?
        .ok_or_else(|| StoreError::invalid("server", unknown_server(name)))
}

/// Writes the parsed edge entries in `tx` (after the servers they name).
pub(super) async fn apply(
    store: &Store,
    tx: &mut WriteTx<'_>,
    doc: &ExportDocument,
    plan: &HashMap<Key, Step>,
    mut parsed: ParsedEdge,
    report: &mut ImportReport,
) -> Result<(), (Key, StoreError)> {
    for i in &doc.issuers {
        let key = (Kind::Issuer, i.name.clone());
        let Some(issuer) = parsed.issuers.remove(&i.name) else {
            continue;
        };
        let at = |e| (key.clone(), e);
        let name = final_name(plan, Kind::Issuer, &i.name);
        put_edge_item_tx(tx, EdgeKind::Issuer, &name, &json(&issuer).map_err(at)?)
            .await
            .map_err(at)?;
    }
    for p in &doc.policies {
        let key = policy_key(p);
        let Some(mut a) = parsed.policies.remove(&p.server) else {
            continue;
        };
        let at = |e| (key.clone(), e);
        let Some(server) = &p.server else {
            put_edge_item_tx(
                tx,
                EdgeKind::Policy,
                PASSTHROUGH_POLICY,
                &json(&a).map_err(at)?,
            )
            .await
            .map_err(at)?;
            continue;
        };
        let id = server_id(store, tx, plan, server).await.map_err(at)?;
        // A resource naming the server's id where it was exported names the id it has here.
        let old = doc
            .servers
            .iter()
            .find(|s| s.name == *server)
            .and_then(|s| s.id.as_deref());
        if let Some(old) = old
            && old != id
            && let Some(base) = a.resource.strip_suffix(&format!("/servers/{old}/mcp"))
        {
            a.resource = format!("{base}/servers/{id}/mcp");
            report.warnings.push(format!(
                "policy {}: its resource now names the server's id here: {}",
                server, a.resource
            ));
        }
        put_edge_item_tx(tx, EdgeKind::Policy, &id, &json(&a).map_err(at)?)
            .await
            .map_err(at)?;
    }
    for l in &doc.limits {
        let key = limits_key(l);
        let Some(limits) = parsed.limits.remove(&l.server) else {
            continue;
        };
        let at = |e| (key.clone(), e);
        let name = match &l.server {
            Some(s) => server_id(store, tx, plan, s).await.map_err(at)?,
            None => DEFAULT_LIMITS.to_owned(),
        };
        put_edge_item_tx(tx, EdgeKind::Limits, &name, &json(&limits).map_err(at)?)
            .await
            .map_err(at)?;
    }
    for p in &doc.plugins {
        let key = (Kind::Plugin, p.name.clone());
        let Some(mut plugin) = parsed.plugins.remove(&p.name) else {
            continue;
        };
        let at = |e| (key.clone(), e);
        let mut ids = Vec::with_capacity(plugin.conditions.servers.len());
        for s in &plugin.conditions.servers {
            ids.push(server_id(store, tx, plan, s).await.map_err(at)?);
        }
        plugin.conditions.servers = ids;
        put_edge_item_tx(
            tx,
            EdgeKind::Plugin,
            &plugin.name,
            &json(&plugin).map_err(at)?,
        )
        .await
        .map_err(at)?;
    }
    Ok(())
}
