//! Building the export document from the registry.

use std::collections::{HashMap, HashSet};

use mcpgw_core::snapshot::auth::{Issuer, ServerAuth};
use mcpgw_core::snapshot::limits::ServerLimits;
use mcpgw_core::snapshot::plugins::Plugin;
use serde::Serialize;
use serde_json::Value;

use super::{
    CREDENTIALS_NOTE, DocumentKind, EDGE_NOTE, ExportDocument, ExportGateway, ExportIssuer,
    ExportItem, ExportLimits, ExportPin, ExportPinning, ExportPlugin, ExportPolicy, ExportServer,
    FORMAT, VERSION,
};
use crate::model::{CatalogKind, CatalogSpec, PromptSpec, ResourceSpec, ToolSpec};
use crate::store::policies::{DEFAULT_LIMITS, EdgeKind};
use crate::store::{Store, StoreError};

/// Builds the export document of the kinds in `types`. Gateway URLs are exported redacted,
/// as the API shows them: a query secret does not leave the installation either way.
pub async fn export(store: &Store, types: &HashSet<&str>) -> Result<ExportDocument, StoreError> {
    let registry_version = store.registry_version().await?;
    let gateways = store.all_gateways().await?;
    let gw_names: HashMap<String, String> = gateways
        .iter()
        .map(|g| (g.id.clone(), g.name.to_string()))
        .collect();
    let mut doc = ExportDocument {
        format: FORMAT.into(),
        version: VERSION,
        exported_at: crate::store::now(),
        registry_version,
        ..Default::default()
    };
    if types.contains("gateways") {
        doc.notes.push(CREDENTIALS_NOTE.to_owned());
        for g in &gateways {
            let pinning = store.pinning_state(&g.id).await?.map(|p| ExportPinning {
                on_change: p.policy.on_change,
                new_tools: p.policy.new_tools,
                first_discovery: p.policy.first_discovery,
                baselined: p.baselined,
                pins: p
                    .pins
                    .into_iter()
                    .map(|(pin, item)| ExportPin {
                        tool: pin.tool,
                        hash: pin.hash,
                        description: item.description,
                        spec: item.spec.to_json(),
                        approved_at: pin.approved_at,
                        approved_by: pin.approved_by,
                    })
                    .collect(),
            });
            doc.gateways.push(ExportGateway {
                pinning,
                name: g.name.to_string(),
                url: g.url.redacted(),
                transport: g.transport,
                description: g.description.clone(),
                tags: g.tags.to_strings(),
                enabled: g.enabled,
                auth_type: g.auth_type,
                identity: g.identity.clone(),
            });
        }
    }
    let mut item_names: HashMap<(CatalogKind, String), String> = HashMap::new();
    export_kind::<ToolSpec>(store, types, &gw_names, &mut item_names, &mut doc).await?;
    export_kind::<ResourceSpec>(store, types, &gw_names, &mut item_names, &mut doc).await?;
    export_kind::<PromptSpec>(store, types, &gw_names, &mut item_names, &mut doc).await?;
    let servers = store.all_servers().await?;
    let server_names: HashMap<String, String> = servers
        .iter()
        .map(|s| (s.id.clone(), s.name.to_string()))
        .collect();
    if types.contains("servers") {
        for s in servers {
            let names = |kind: CatalogKind, ids: &[String]| -> Vec<String> {
                ids.iter()
                    .filter_map(|id| item_names.get(&(kind, id.clone())).cloned())
                    .collect()
            };
            doc.servers.push(ExportServer {
                tools: names(CatalogKind::Tool, &s.associated_tools),
                resources: names(CatalogKind::Resource, &s.associated_resources),
                prompts: names(CatalogKind::Prompt, &s.associated_prompts),
                name: s.name.to_string(),
                id: Some(s.id),
                description: s.description,
                icon: s.icon,
                tags: s.tags.to_strings(),
                enabled: s.enabled,
                naming: s.naming,
                allowed_origins: s.allowed_origins.to_vec(),
            });
        }
    }
    export_edge(store, types, &server_names, &mut doc).await?;
    Ok(doc)
}

fn to_value<T: Serialize>(v: &T, what: &str) -> Result<Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Adds what the edge enforces: issuers, policies, limits, plugins. A policy or limits of
/// a server that is gone (rows are keyed by server id) is left out with a note: nothing
/// could enforce it.
async fn export_edge(
    store: &Store,
    types: &HashSet<&str>,
    server_names: &HashMap<String, String>,
    doc: &mut ExportDocument,
) -> Result<(), StoreError> {
    let mut any = false;
    if types.contains("issuers") {
        for r in store.edge_items::<Issuer>(EdgeKind::Issuer).await? {
            doc.issuers.push(ExportIssuer {
                spec: to_value(&r.spec, &r.name)?,
                name: r.name,
            });
            any = true;
        }
    }
    if types.contains("policies") {
        for r in store.edge_items::<ServerAuth>(EdgeKind::Policy).await? {
            if r.name == crate::snapshot::PASSTHROUGH_POLICY {
                doc.policies.push(ExportPolicy {
                    server: None,
                    spec: to_value(&r.spec, &r.name)?,
                });
                any = true;
                continue;
            }
            let Some(server) = server_names.get(&r.name) else {
                doc.notes.push(format!(
                    "The policy of server id {} was left out: no such server.",
                    r.name
                ));
                continue;
            };
            doc.policies.push(ExportPolicy {
                server: Some(server.clone()),
                spec: to_value(&r.spec, &r.name)?,
            });
            any = true;
        }
    }
    if types.contains("limits") {
        for r in store.edge_items::<ServerLimits>(EdgeKind::Limits).await? {
            let server = if r.name == DEFAULT_LIMITS {
                None
            } else if let Some(n) = server_names.get(&r.name) {
                Some(n.clone())
            } else {
                doc.notes.push(format!(
                    "The limits of server id {} were left out: no such server.",
                    r.name
                ));
                continue;
            };
            doc.limits.push(ExportLimits {
                server,
                spec: to_value(&r.spec, &r.name)?,
            });
            any = true;
        }
    }
    if types.contains("plugins") {
        for r in store.edge_items::<Plugin>(EdgeKind::Plugin).await? {
            let mut p = r.spec;
            // Server ids mean nothing elsewhere: names do. An id of a server that is gone
            // stays as it is (the import refuses it: dropping it could widen the plugin's
            // reach to every server).
            for s in &mut p.conditions.servers {
                match server_names.get(s) {
                    Some(n) => *s = n.clone(),
                    None => doc.notes.push(format!(
                        "Plugin {} names server id {s}, which does not exist: fix its conditions.servers before importing.",
                        r.name
                    )),
                }
            }
            doc.plugins.push(ExportPlugin {
                spec: to_value(&p, &r.name)?,
                name: r.name,
            });
            any = true;
        }
    }
    if any {
        doc.notes.push(EDGE_NOTE.to_owned());
    }
    Ok(())
}

/// Adds one kind's items (and records every item's name, which servers refer to).
async fn export_kind<S: DocumentKind>(
    store: &Store,
    types: &HashSet<&str>,
    gw_names: &HashMap<String, String>,
    item_names: &mut HashMap<(CatalogKind, String), String>,
    doc: &mut ExportDocument,
) -> Result<(), StoreError> {
    let items = store.all_items::<S>().await?;
    for i in &items {
        item_names.insert((S::KIND, i.id.clone()), i.name.to_string());
    }
    if !types.contains(S::KIND.plural()) {
        return Ok(());
    }
    *S::entries_mut(doc) = items
        .into_iter()
        .map(|i| ExportItem {
            gateway: i.gateway_id.as_ref().and_then(|g| gw_names.get(g).cloned()),
            name: i.name.to_string(),
            original_name: i.original_name,
            uri: i.uri,
            description: i.description,
            spec: i.spec.to_json(),
            tags: i.tags.to_strings(),
            enabled: i.enabled,
        })
        .collect();
    Ok(())
}
