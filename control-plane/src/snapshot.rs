//! Turns the registry into the filter's [`Snapshot`]: the one document every Envoy runs.
//!
//! Building is two steps so each can be measured and tested on its own:
//! [`RegistryView::read`] loads what a snapshot needs (consistently: it retries until the
//! registry version is the same before and after reading), and [`assemble`] is a pure
//! function from that view to the snapshot. Each catalog entry's MCP list item is rendered
//! here, once per registry version, so the filter answers lists by copying bytes.
//!
//! What a virtual server exposes: its associated tools, resources and prompts that are
//! enabled, federated from an enabled and reachable gateway. Items defined by hand (no
//! gateway) have no upstream the filter could route to and are left out.

use std::collections::{BTreeMap, HashSet};

use mcpgw_core::catalog::{Entry, RawJson, Upstream, Upstreams, VirtualServer};
use mcpgw_core::snapshot::{Policy, SessionSettings, Snapshot};
use serde_json::{Map, Value};

use crate::crypto::SecretBox;
use crate::model::{CatalogItem, CatalogKind, Gateway, Server};
use crate::store::{Store, StoreError};

/// How often [`RegistryView::read`] retries when writes land while it reads.
const READ_ATTEMPTS: usize = 8;

/// The Envoy cluster name of a gateway's upstream (also what xDS names the cluster).
pub fn cluster_name(gateway_id: &str) -> String {
    format!("mcpgw-gw-{gateway_id}")
}

/// Everything a snapshot is built from, read at one registry version.
#[derive(Debug, Clone, Default)]
pub struct RegistryView {
    /// Registry version the rows belong to.
    pub version: i64,
    /// All gateways.
    pub gateways: Vec<Gateway>,
    /// All tools, ordered by name.
    pub tools: Vec<CatalogItem>,
    /// All resources and resource templates, ordered by name.
    pub resources: Vec<CatalogItem>,
    /// All prompts, ordered by name.
    pub prompts: Vec<CatalogItem>,
    /// All virtual servers.
    pub servers: Vec<Server>,
}

impl RegistryView {
    /// Reads the registry. The reads are separate queries, so a write could land between
    /// them; the version is compared before and after, and the read repeated until no
    /// write interleaved (every write bumps the version in its own transaction).
    pub async fn read(store: &Store) -> Result<RegistryView, StoreError> {
        let mut last_err = None;
        for _ in 0..READ_ATTEMPTS {
            let before = store.registry_version().await?;
            let view = RegistryView {
                version: before,
                gateways: store.all_gateways().await?,
                tools: store.all_items(CatalogKind::Tool).await?,
                resources: store.all_items(CatalogKind::Resource).await?,
                prompts: store.all_items(CatalogKind::Prompt).await?,
                servers: store.all_servers().await?,
            };
            let after = store.registry_version().await?;
            if before == after {
                return Ok(view);
            }
            last_err = Some(after);
        }
        Err(StoreError::Corrupt(format!(
            "the registry kept changing while a snapshot was read ({READ_ATTEMPTS} attempts, last version {})",
            last_err.unwrap_or_default()
        )))
    }
}

/// The snapshot's session settings: the sealing key derived from the encryption key, so
/// every Envoy (and every control-plane replica sharing the key) seals alike.
pub fn session_settings(secrets: &SecretBox) -> mcpgw_core::snapshot::SessionSettings {
    mcpgw_core::snapshot::SessionSettings::with_keys(vec![secrets.session_key().to_owned()])
}

/// What a snapshot is made of besides the registry: the operator's policy and what the
/// edge decided. All of it goes into [`assemble`], the one place a snapshot is put
/// together and validated.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInputs {
    /// The request policy every filter enforces.
    pub policy: Policy,
    /// Signs virtual-server sessions (`None`: stateless virtual servers).
    pub session: Option<SessionSettings>,
    /// The relay's cluster (`None`: no relay).
    pub relay: Option<String>,
    /// How the filter reaches each gateway the edge can serve, by gateway id: a gateway
    /// without an entry (bad URL, credentials that do not open, no permitted address) is
    /// left out, with what it serves.
    pub upstreams: Upstreams,
}

impl SnapshotInputs {
    /// Inputs with `policy` and nothing else.
    pub fn new(policy: Policy) -> SnapshotInputs {
        SnapshotInputs {
            policy,
            ..SnapshotInputs::default()
        }
    }
}

/// Builds the snapshot of `view` under `inputs` (pure; no I/O), and validates it with the
/// filter's own rules.
pub fn assemble(view: &RegistryView, inputs: &SnapshotInputs) -> Result<Snapshot, StoreError> {
    let live: BTreeMap<&str, (&Gateway, &Upstream)> = view
        .gateways
        .iter()
        .filter(|g| g.enabled && g.reachable)
        .filter_map(|g| Some((g.id.as_str(), (g, inputs.upstreams.get(&g.id)?))))
        .collect();
    let upstreams: Upstreams = live
        .iter()
        .map(|(id, (g, u))| {
            let mut u = (*u).clone();
            // What discovery negotiated: the filter calls it in that era (or bridges).
            u.protocol_versions = g.protocol_version.iter().cloned().collect();
            ((*id).to_owned(), u)
        })
        .collect();
    let servable = |item: &CatalogItem| {
        item.enabled
            && item.reachable
            && item
                .gateway_id
                .as_deref()
                .is_some_and(|id| live.contains_key(id))
    };
    let mut servers = BTreeMap::new();
    for s in view.servers.iter().filter(|s| s.enabled) {
        let tools: HashSet<&str> = s.associated_tools.iter().map(String::as_str).collect();
        let resources: HashSet<&str> = s.associated_resources.iter().map(String::as_str).collect();
        let prompts: HashSet<&str> = s.associated_prompts.iter().map(String::as_str).collect();
        let mut server = VirtualServer {
            name: s.name.clone(),
            version: view.version.to_string(),
            instructions: s.description.clone(),
            tools: Vec::new(),
            resources: Vec::new(),
            resource_templates: Vec::new(),
            prompts: Vec::new(),
            allowed_origins: Vec::new(),
        };
        for item in view.tools.iter().filter(|i| tools.contains(i.id.as_str())) {
            if servable(item) {
                server.tools.push(entry(item, render_tool(item))?);
            }
        }
        // Resource URIs are not unique across gateways; the first (by name) wins.
        let mut uris = HashSet::new();
        for item in view
            .resources
            .iter()
            .filter(|i| resources.contains(i.id.as_str()))
        {
            if !servable(item) {
                continue;
            }
            let Some(uri) = item.uri.clone() else {
                continue;
            };
            if !uris.insert(uri.clone()) {
                tracing::warn!(
                    server = %s.id,
                    resource = %item.name,
                    %uri,
                    "resource left out of the server's catalog: another resource has the same uri"
                );
                continue;
            }
            let mut e = entry(item, render_resource(item, &uri))?;
            e.name.clone_from(&uri);
            e.upstream_name = uri;
            if is_template(item) {
                server.resource_templates.push(e);
            } else {
                server.resources.push(e);
            }
        }
        for item in view
            .prompts
            .iter()
            .filter(|i| prompts.contains(i.id.as_str()))
        {
            if servable(item) {
                server.prompts.push(entry(item, render_prompt(item))?);
            }
        }
        servers.insert(s.id.clone(), server);
    }
    let snapshot = Snapshot {
        version: view.version.to_string(),
        policy: inputs.policy.clone(),
        servers,
        upstreams,
        session: inputs.session.clone(),
        relay: inputs.relay.clone(),
        ..Snapshot::default()
    };
    snapshot
        .validate()
        .map_err(|e| StoreError::Corrupt(format!("assembled snapshot is invalid: {e}")))?;
    Ok(snapshot)
}

fn entry(item: &CatalogItem, rendered: Map<String, Value>) -> Result<Entry, StoreError> {
    let item_json = RawJson::to_raw(&rendered)
        .map_err(|e| StoreError::Corrupt(format!("{} {}: {e}", item.kind.label(), item.id)))?;
    Ok(Entry {
        name: item.name.clone(),
        // `servable` admitted only items with a gateway.
        upstream: item.gateway_id.clone().unwrap_or_default(),
        upstream_name: item.original_name.clone(),
        item: item_json,
    })
}

fn is_template(item: &CatalogItem) -> bool {
    item.spec
        .get("is_template")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Copies `spec[from]` (snake_case, as stored) to `out[to]` (MCP's camelCase).
fn copy(spec: &Map<String, Value>, from: &str, out: &mut Map<String, Value>, to: &str) {
    if let Some(v) = spec.get(from).filter(|v| !v.is_null()) {
        out.insert(to.to_owned(), v.clone());
    }
}

fn common(item: &CatalogItem, out: &mut Map<String, Value>) {
    copy(&item.spec, "title", out, "title");
    if let Some(d) = &item.description {
        out.insert("description".into(), Value::from(d.as_str()));
    }
    copy(&item.spec, "annotations", out, "annotations");
    copy(&item.spec, "icons", out, "icons");
    copy(&item.spec, "meta", out, "_meta");
}

/// A `tools/list` entry.
fn render_tool(item: &CatalogItem) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("name".into(), Value::from(item.name.as_str()));
    common(item, &mut out);
    let schema = item
        .spec
        .get("input_schema")
        .filter(|v| v.is_object())
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"type": "object"}));
    out.insert("inputSchema".into(), schema);
    copy(&item.spec, "output_schema", &mut out, "outputSchema");
    out
}

/// A `resources/list` or `resources/templates/list` entry.
fn render_resource(item: &CatalogItem, uri: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let key = if is_template(item) {
        "uriTemplate"
    } else {
        "uri"
    };
    out.insert(key.into(), Value::from(uri));
    out.insert("name".into(), Value::from(item.name.as_str()));
    common(item, &mut out);
    copy(&item.spec, "mime_type", &mut out, "mimeType");
    if !is_template(item) {
        copy(&item.spec, "size", &mut out, "size");
    }
    out
}

/// A `prompts/list` entry.
fn render_prompt(item: &CatalogItem) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("name".into(), Value::from(item.name.as_str()));
    common(item, &mut out);
    copy(&item.spec, "arguments", &mut out, "arguments");
    out
}

#[cfg(test)]
mod tests;
