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

use mcpgw_core::catalog::{Entry, RawJson, Upstream, VirtualServer};
use mcpgw_core::snapshot::{Policy, Snapshot};
use serde_json::{Map, Value};

use crate::crypto::SecretBox;
use crate::model::{CatalogItem, CatalogSpec, Gateway, PromptSpec, ResourceSpec, Server, ToolSpec};
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
    pub tools: Vec<CatalogItem<ToolSpec>>,
    /// All resources and resource templates, ordered by name.
    pub resources: Vec<CatalogItem<ResourceSpec>>,
    /// All prompts, ordered by name.
    pub prompts: Vec<CatalogItem<PromptSpec>>,
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
                tools: store.all_items().await?,
                resources: store.all_items().await?,
                prompts: store.all_items().await?,
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

/// The snapshot's session settings: the signing key derived from the encryption key, so
/// every Envoy (and every control-plane replica sharing the key) signs alike.
pub fn session_settings(secrets: &SecretBox) -> mcpgw_core::snapshot::SessionSettings {
    mcpgw_core::snapshot::SessionSettings {
        signing_key: secrets.session_signing_key().to_owned(),
    }
}

/// Reads the registry and assembles its snapshot under `policy`.
pub async fn build(store: &Store, policy: &Policy) -> Result<Snapshot, StoreError> {
    let view = RegistryView::read(store).await?;
    assemble(&view, policy)
}

/// Builds the snapshot of `view` (pure; no I/O).
pub fn assemble(view: &RegistryView, policy: &Policy) -> Result<Snapshot, StoreError> {
    let live: BTreeMap<&str, &Gateway> = view
        .gateways
        .iter()
        .filter(|g| g.enabled && g.reachable)
        .map(|g| (g.id.as_str(), g))
        .collect();
    let mut upstreams = BTreeMap::new();
    for g in live.values() {
        upstreams.insert(g.id.clone(), upstream_of(g)?);
    }
    let servable = |enabled: bool, reachable: bool, gateway_id: &Option<String>| {
        enabled
            && reachable
            && gateway_id
                .as_deref()
                .is_some_and(|id| live.contains_key(id))
    };
    let mut servers = BTreeMap::new();
    for s in view.servers.iter().filter(|s| s.enabled) {
        let tools: HashSet<&str> = s.associated_tools.iter().map(String::as_str).collect();
        let resources: HashSet<&str> = s.associated_resources.iter().map(String::as_str).collect();
        let prompts: HashSet<&str> = s.associated_prompts.iter().map(String::as_str).collect();
        let mut server = VirtualServer {
            name: s.name.to_string(),
            version: view.version.to_string(),
            instructions: s.description.clone(),
            tools: Vec::new(),
            resources: Vec::new(),
            resource_templates: Vec::new(),
            prompts: Vec::new(),
        };
        for item in view.tools.iter().filter(|i| tools.contains(i.id.as_str())) {
            if servable(item.enabled, item.reachable, &item.gateway_id) {
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
            if !servable(item.enabled, item.reachable, &item.gateway_id) {
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
            if item.spec.is_template {
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
            if servable(item.enabled, item.reachable, &item.gateway_id) {
                server.prompts.push(entry(item, render_prompt(item))?);
            }
        }
        servers.insert(s.id.clone(), server);
    }
    let snapshot = Snapshot {
        version: view.version.to_string(),
        policy: policy.clone(),
        servers,
        upstreams,
        ..Snapshot::default()
    };
    snapshot
        .validate()
        .map_err(|e| StoreError::Corrupt(format!("assembled snapshot is invalid: {e}")))?;
    Ok(snapshot)
}

fn upstream_of(g: &Gateway) -> Result<Upstream, StoreError> {
    // The URL was parsed when it was stored and again when it was read (`UpstreamUrl`).
    Ok(Upstream {
        cluster: cluster_name(&g.id),
        path: g.url.path_and_query(),
        authority: Some(g.url.authority()),
    })
}

fn entry<S: CatalogSpec>(
    item: &CatalogItem<S>,
    rendered: Map<String, Value>,
) -> Result<Entry, StoreError> {
    let item_json = RawJson::to_raw(&rendered)
        .map_err(|e| StoreError::Corrupt(format!("{} {}: {e}", S::KIND.label(), item.id)))?;
    Ok(Entry {
        name: item.name.to_string(),
        // `servable` admitted only items with a gateway.
        upstream: item.gateway_id.clone().unwrap_or_default(),
        upstream_name: item.original_name.clone(),
        item: item_json,
    })
}

/// Inserts `v` under `key` when present (MCP's camelCase keys).
fn put(out: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v.filter(|v| !v.is_null()) {
        out.insert(key.to_owned(), v);
    }
}

/// The fields every kind's list entry shares.
fn common(
    out: &mut Map<String, Value>,
    title: &Option<String>,
    description: &Option<String>,
    annotations: &Option<Value>,
    icons: &Option<Value>,
    meta: &Option<Value>,
) {
    put(out, "title", title.clone().map(Value::from));
    put(out, "description", description.clone().map(Value::from));
    put(out, "annotations", annotations.clone());
    put(out, "icons", icons.clone());
    put(out, "_meta", meta.clone());
}

/// A `tools/list` entry.
fn render_tool(item: &CatalogItem<ToolSpec>) -> Map<String, Value> {
    let s = &item.spec;
    let mut out = Map::new();
    out.insert("name".into(), Value::from(item.name.as_str()));
    common(
        &mut out,
        &s.title,
        &item.description,
        &s.annotations,
        &s.icons,
        &s.meta,
    );
    out.insert("inputSchema".into(), Value::Object(s.input_schema.clone()));
    put(
        &mut out,
        "outputSchema",
        s.output_schema.clone().map(Value::Object),
    );
    out
}

/// A `resources/list` or `resources/templates/list` entry.
fn render_resource(item: &CatalogItem<ResourceSpec>, uri: &str) -> Map<String, Value> {
    let s = &item.spec;
    let mut out = Map::new();
    let key = if s.is_template { "uriTemplate" } else { "uri" };
    out.insert(key.into(), Value::from(uri));
    out.insert("name".into(), Value::from(item.name.as_str()));
    common(
        &mut out,
        &s.title,
        &item.description,
        &s.annotations,
        &s.icons,
        &s.meta,
    );
    put(&mut out, "mimeType", s.mime_type.clone().map(Value::from));
    if !s.is_template {
        put(&mut out, "size", s.size.map(Value::from));
    }
    out
}

/// A `prompts/list` entry.
fn render_prompt(item: &CatalogItem<PromptSpec>) -> Map<String, Value> {
    let s = &item.spec;
    let mut out = Map::new();
    out.insert("name".into(), Value::from(item.name.as_str()));
    common(
        &mut out,
        &s.title,
        &item.description,
        &None,
        &s.icons,
        &s.meta,
    );
    put(
        &mut out,
        "arguments",
        s.arguments
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok()),
    );
    out
}

#[cfg(test)]
mod tests;
