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

/// The snapshot's session settings: the sealing key derived from the encryption key, so
/// every Envoy (and every control-plane replica sharing the key) seals alike.
pub fn session_settings(secrets: &SecretBox) -> mcpgw_core::snapshot::SessionSettings {
    mcpgw_core::snapshot::SessionSettings::with_keys(secrets.session_keys())
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
            allowed_origins: Vec::new(),
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
