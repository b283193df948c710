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
//! gateway) have no upstream the filter could route to and are left out. Tools and prompts
//! are named `{gateway}{sep}{name}` (`prefixed` naming) or by the upstream's own name
//! (`upstream` naming); resources and templates by their URI. A name two members expose is
//! kept by the one registered first ([`assemble_reporting`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use mcpgw_core::catalog::{Entry, RawJson, Upstream, Upstreams, VirtualServer};
use mcpgw_core::snapshot::{Policy, SessionSettings, Snapshot};
use serde_json::{Map, Value};

use crate::crypto::SecretBox;
use crate::model::{
    CatalogItem, CatalogSpec, Gateway, Naming, PromptSpec, ResourceSpec, Server, ToolSpec,
};
use crate::store::policies::{DEFAULT_LIMITS, EdgeKind, EdgeRecord};
use crate::store::{Store, StoreError};
use mcpgw_core::snapshot::auth::{Auth, Issuer, ServerAuth};
use mcpgw_core::snapshot::limits::{Limits, RateLimitService, ServerLimits};
use mcpgw_core::snapshot::plugins::Plugin;

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
    /// Issuers, server policies, limits and plugins.
    pub edge: EdgePolicies,
}

/// What the edge enforces besides the catalog, as stored (`crate::store::policies`).
#[derive(Debug, Clone, Default)]
pub struct EdgePolicies {
    /// Token issuers by name (keys are added by the publisher).
    pub issuers: BTreeMap<String, Issuer>,
    /// Authorization per virtual server id.
    pub policies: BTreeMap<String, ServerAuth>,
    /// Limits per virtual server id, and [`DEFAULT_LIMITS`] for every other server.
    pub limits: BTreeMap<String, ServerLimits>,
    /// Guardrail plugins, by name.
    pub plugins: Vec<Plugin>,
    /// Ids of the control plane's own tokens revoked before their expiry.
    pub revoked: Vec<String>,
}

impl EdgePolicies {
    /// Reads them from `store`.
    pub async fn read(store: &Store) -> Result<EdgePolicies, StoreError> {
        Ok(EdgePolicies {
            issuers: by_name(store.edge_items(EdgeKind::Issuer).await?),
            policies: by_name(store.edge_items(EdgeKind::Policy).await?),
            limits: by_name(store.edge_items(EdgeKind::Limits).await?),
            plugins: store
                .edge_items::<Plugin>(EdgeKind::Plugin)
                .await?
                .into_iter()
                .map(|r| r.spec)
                .collect(),
            revoked: store.revoked_jwt_ids().await?,
        })
    }
}

fn by_name<T>(records: Vec<EdgeRecord<T>>) -> BTreeMap<String, T> {
    records.into_iter().map(|r| (r.name, r.spec)).collect()
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
                tools: {
                    // A tool withheld by its pin (a changed definition pending review,
                    // `withhold` policy) is not served.
                    let withheld = store.withheld_tool_ids().await?;
                    let mut tools: Vec<CatalogItem<ToolSpec>> = store.all_items().await?;
                    tools.retain(|t| !withheld.contains(&t.id));
                    tools
                },
                resources: store.all_items().await?,
                prompts: store.all_items().await?,
                servers: store.all_servers().await?,
                edge: EdgePolicies::read(store).await?,
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
/// every Envoy (and every control-plane replica sharing the key) seals alike, and the
/// lifetimes from the configuration.
pub fn session_settings(
    secrets: &SecretBox,
    times: crate::config::McpSessionTimes,
) -> mcpgw_core::snapshot::SessionSettings {
    mcpgw_core::snapshot::SessionSettings {
        keys: secrets.session_keys(),
        ttl_seconds: times.ttl_seconds,
        idle_seconds: times.idle_seconds,
    }
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
    /// The rate-limit service's cluster (`None`: none), for the limits marked global.
    pub ratelimit: Option<String>,
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

/// A catalog entry a virtual server left out because another of its members exposes the
/// same name (resource URIs collide in either naming mode; tool and prompt names under
/// `upstream` naming, when a collision arose after the server was accepted: a resource's
/// URI changed at rediscovery, or an item was edited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// The virtual server.
    pub server: String,
    /// Its list: `tools`, `resources`, `resource_templates` or `prompts`.
    pub list: &'static str,
    /// The name (or URI) both expose.
    pub name: String,
    /// The item left out.
    pub item: String,
    /// The item that keeps the name: the one registered first.
    pub kept: String,
}

/// Builds the snapshot of `view` under `inputs` (pure; no I/O), and validates it with the
/// filter's own rules.
pub fn assemble(view: &RegistryView, inputs: &SnapshotInputs) -> Result<Snapshot, StoreError> {
    assemble_reporting(view, inputs).map(|(snapshot, _)| snapshot)
}

/// [`assemble`], also returning the entries left out because their name was taken.
///
/// Within one virtual server every name is unique per list. Where two members expose the
/// same one, the member registered first (`created_at`, then id) keeps it and the other is
/// left out of that server's lists, so a publish never fails and an upstream's change never
/// takes a name away from what already served it. The membership itself is untouched: the
/// item comes back once the collision is gone.
pub fn assemble_reporting(
    view: &RegistryView,
    inputs: &SnapshotInputs,
) -> Result<(Snapshot, Vec<Shadowed>), StoreError> {
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
            // What discovery found: the filter calls it in a client's era when it speaks
            // it, and bridges otherwise. A gateway not rediscovered since versions were
            // recorded has only its negotiated one.
            u.protocol_versions = if g.protocol_versions.is_empty() {
                g.protocol_version.iter().cloned().collect()
            } else {
                g.protocol_versions.clone()
            };
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
    let mut auth = edge_auth(&view.edge);
    if let Some(a) = view.edge.policies.get(PASSTHROUGH_POLICY) {
        match check_server_auth(PASSTHROUGH_POLICY, a, &auth) {
            Ok(()) => auth.passthrough = Some(a.clone()),
            // Fail closed: the control plane's passthrough route is withheld while its
            // policy is unusable (`edge_config::publish`).
            Err(e) => {
                tracing::warn!(field = %e.field, reason = %e.reason, "the passthrough path's policy is unusable: its route is withheld");
            }
        }
    }
    let service = inputs
        .ratelimit
        .as_ref()
        .map(|cluster| RateLimitService::with_cluster(cluster));
    let mut servers = BTreeMap::new();
    let mut shadowed = Vec::new();
    for s in view.servers.iter().filter(|s| s.enabled) {
        let server_auth = view.edge.policies.get(&s.id).cloned();
        if let Some(a) = &server_auth
            && let Err(e) = check_server_auth(&s.id, a, &auth)
        {
            // Fail closed: serving it without the policy would open it to anyone.
            tracing::warn!(server = %s.id, field = %e.field, reason = %e.reason, "virtual server left out of the edge: its authorization policy is unusable");
            continue;
        }
        if let Some(l) = view.edge.limits.get(&s.id)
            && let Err(e) = check_server_limits(&s.id, l, service.as_ref())
        {
            tracing::warn!(server = %s.id, error = %e, "virtual server left out of the edge: its limits are unusable");
            continue;
        }
        let tools: HashSet<&str> = s.associated_tools.iter().map(String::as_str).collect();
        let resources: HashSet<&str> = s.associated_resources.iter().map(String::as_str).collect();
        let prompts: HashSet<&str> = s.associated_prompts.iter().map(String::as_str).collect();
        let mut lists = Lists::default();
        for item in view.tools.iter().filter(|i| tools.contains(i.id.as_str())) {
            if servable(item.enabled, item.reachable, &item.gateway_id) {
                let e = entry(item, s.naming, |name| render_tool(item, name))?;
                lists.tools.push(Candidate::of(item, e));
            }
        }
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
            // Resources are named by their URI in every naming mode.
            let mut e = entry(item, s.naming, |name| render_resource(item, name, &uri))?;
            e.name.clone_from(&uri);
            e.upstream_name = uri;
            if item.spec.is_template {
                lists.resource_templates.push(Candidate::of(item, e));
            } else {
                lists.resources.push(Candidate::of(item, e));
            }
        }
        for item in view
            .prompts
            .iter()
            .filter(|i| prompts.contains(i.id.as_str()))
        {
            if servable(item.enabled, item.reachable, &item.gateway_id) {
                let e = entry(item, s.naming, |name| render_prompt(item, name))?;
                lists.prompts.push(Candidate::of(item, e));
            }
        }
        let server = VirtualServer {
            name: s.name.to_string(),
            version: view.version.to_string(),
            instructions: s.description.clone(),
            tools: claim(&s.id, "tools", lists.tools, &mut shadowed),
            resources: claim(&s.id, "resources", lists.resources, &mut shadowed),
            resource_templates: claim(
                &s.id,
                "resource_templates",
                lists.resource_templates,
                &mut shadowed,
            ),
            prompts: claim(&s.id, "prompts", lists.prompts, &mut shadowed),
            allowed_origins: s.allowed_origins.to_vec(),
            auth: server_auth,
        };
        servers.insert(s.id.clone(), server);
    }
    let snapshot = Snapshot {
        version: view.version.to_string(),
        policy: inputs.policy.clone(),
        upstreams,
        session: inputs.session.clone(),
        relay: inputs.relay.clone(),
        limits: Limits {
            default: view.edge.limits.get(DEFAULT_LIMITS).cloned(),
            servers: view
                .edge
                .limits
                .iter()
                .filter(|(id, _)| servers.contains_key(id.as_str()))
                .map(|(id, l)| (id.clone(), l.clone()))
                .collect(),
            service,
        },
        plugins: view.edge.plugins.clone(),
        auth,
        servers,
        ..Snapshot::default()
    };
    snapshot
        .validate()
        .map_err(|e| StoreError::Corrupt(format!("assembled snapshot is invalid: {e}")))?;
    Ok((snapshot, shadowed))
}

/// The snapshot's `auth` from the stored issuers: each checked on its own, one that does not
/// validate left out with a warning (a server that names it is then left out too).
fn edge_auth(edge: &EdgePolicies) -> Auth {
    let mut auth = Auth {
        revoked: edge.revoked.clone(),
        ..Auth::default()
    };
    for (name, issuer) in &edge.issuers {
        let mut alone = Auth::default();
        alone.issuers.insert(name.clone(), issuer.clone());
        match mcpgw_core::snapshot::auth::validate(&alone) {
            Ok(()) => {
                auth.issuers.insert(name.clone(), issuer.clone());
            }
            Err(e) => {
                tracing::warn!(issuer = %name, field = %e.field, reason = %e.reason, "issuer left out of the edge: unusable");
            }
        }
    }
    auth
}

/// The policy id (`/policies/passthrough`) of the passthrough path: the snapshot's
/// `auth.passthrough`. No virtual server has it (their ids are 32 hex digits).
pub const PASSTHROUGH_POLICY: &str = "passthrough";

/// Where policy `id` lives in the snapshot, as errors name it.
pub fn policy_prefix(id: &str) -> String {
    if id == PASSTHROUGH_POLICY {
        "auth.passthrough".to_owned()
    } else {
        format!("servers.{id}.auth")
    }
}

/// Checks a server's policy as the filter will: against `auth`'s issuers, rules compiled.
pub fn check_server_auth(
    id: &str,
    a: &ServerAuth,
    auth: &Auth,
) -> Result<(), mcpgw_core::snapshot::auth::AuthError> {
    let at = policy_prefix(id);
    mcpgw_core::snapshot::auth::validate_server_at(&at, a, auth)?;
    mcpgw_core::auth::check_rules_at(&at, a)
}

/// Checks a server's policy as it is written (the API): as [`check_server_auth`] does, but
/// each rule condition with [`crate::rules::check`] (the `cel` crate's parser, the names
/// and types the edge provides, the edge's subset), which refuses more and says where.
/// What is published is checked again as the filter will, by [`check_server_auth`].
pub fn check_written_server_auth(
    id: &str,
    a: &ServerAuth,
    auth: &Auth,
) -> Result<(), mcpgw_core::snapshot::auth::AuthError> {
    let at = policy_prefix(id);
    mcpgw_core::snapshot::auth::validate_server_at(&at, a, auth)?;
    crate::rules::check_all(&a.rules).map_err(|(i, e)| mcpgw_core::snapshot::auth::AuthError {
        field: format!("{at}.rules[{i}].when"),
        reason: e.to_string(),
    })
}

/// Checks a server's limits as the filter will (`service`: where global limits go).
pub fn check_server_limits(
    id: &str,
    l: &ServerLimits,
    service: Option<&RateLimitService>,
) -> Result<(), mcpgw_core::snapshot::ConfigError> {
    let mut limits = Limits {
        service: service.cloned(),
        ..Limits::default()
    };
    limits.servers.insert(id.to_owned(), l.clone());
    limits.check(|_| true)
}

/// An entry a server may list, with what decides who keeps a name two of them expose.
struct Candidate<'a> {
    created_at: &'a str,
    id: &'a str,
    entry: Entry,
}

impl<'a> Candidate<'a> {
    fn of<S>(item: &'a CatalogItem<S>, entry: Entry) -> Self {
        Candidate {
            created_at: &item.created_at,
            id: &item.id,
            entry,
        }
    }
}

/// One server's candidate entries, list by list, in view order (by registry name).
#[derive(Default)]
struct Lists<'a> {
    tools: Vec<Candidate<'a>>,
    resources: Vec<Candidate<'a>>,
    resource_templates: Vec<Candidate<'a>>,
    prompts: Vec<Candidate<'a>>,
}

/// The entries of one list that keep their name: of those exposing the same one, the
/// member registered first (timestamps are RFC 3339 UTC, so they order as text); the others
/// go to `shadowed`. The list keeps the view's order.
fn claim(
    server: &str,
    list: &'static str,
    candidates: Vec<Candidate<'_>>,
    shadowed: &mut Vec<Shadowed>,
) -> Vec<Entry> {
    let mut by_age: Vec<usize> = (0..candidates.len()).collect();
    by_age.sort_by_key(|&i| (candidates[i].created_at, candidates[i].id));
    let mut owner: HashMap<&str, usize> = HashMap::with_capacity(candidates.len());
    let mut keep = vec![false; candidates.len()];
    for i in by_age {
        let c = &candidates[i];
        match owner.get(c.entry.name.as_str()) {
            Some(&first) => shadowed.push(Shadowed {
                server: server.to_owned(),
                list,
                name: c.entry.name.clone(),
                item: c.id.to_owned(),
                kept: candidates[first].id.to_owned(),
            }),
            None => {
                owner.insert(c.entry.name.as_str(), i);
                keep[i] = true;
            }
        }
    }
    candidates
        .into_iter()
        .zip(keep)
        .filter_map(|(c, keep)| keep.then_some(c.entry))
        .collect()
}

/// The name a server in `naming` exposes `item` under.
fn exposed_name<S>(item: &CatalogItem<S>, naming: Naming) -> &str {
    match naming {
        Naming::Prefixed => item.name.as_str(),
        Naming::Upstream => &item.original_name,
    }
}

/// `item`'s entry in a server that names it per `naming`; `render` builds its list item
/// under that name.
fn entry<S: CatalogSpec>(
    item: &CatalogItem<S>,
    naming: Naming,
    render: impl FnOnce(&str) -> Map<String, Value>,
) -> Result<Entry, StoreError> {
    let name = exposed_name(item, naming);
    let item_json = RawJson::to_raw(&render(name))
        .map_err(|e| StoreError::Corrupt(format!("{} {}: {e}", S::KIND.label(), item.id)))?;
    Ok(Entry {
        name: name.to_owned(),
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

/// A `tools/list` entry, named `name`.
fn render_tool(item: &CatalogItem<ToolSpec>, name: &str) -> Map<String, Value> {
    let s = &item.spec;
    let mut out = Map::new();
    out.insert("name".into(), Value::from(name));
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

/// A `resources/list` or `resources/templates/list` entry, named `name`.
fn render_resource(item: &CatalogItem<ResourceSpec>, name: &str, uri: &str) -> Map<String, Value> {
    let s = &item.spec;
    let mut out = Map::new();
    let key = if s.is_template { "uriTemplate" } else { "uri" };
    out.insert(key.into(), Value::from(uri));
    out.insert("name".into(), Value::from(name));
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

/// A `prompts/list` entry, named `name`.
fn render_prompt(item: &CatalogItem<PromptSpec>, name: &str) -> Map<String, Value> {
    let s = &item.spec;
    let mut out = Map::new();
    out.insert("name".into(), Value::from(name));
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
