//! Building the export document from the registry.

use std::collections::{HashMap, HashSet};

use super::{
    CREDENTIALS_NOTE, DocumentKind, ExportDocument, ExportGateway, ExportItem, ExportServer, FORMAT,
};
use crate::model::{CatalogKind, PromptSpec, ResourceSpec, ToolSpec};
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
        version: 1,
        exported_at: crate::store::now(),
        registry_version,
        ..Default::default()
    };
    if types.contains("gateways") {
        doc.notes.push(CREDENTIALS_NOTE.to_owned());
        for g in &gateways {
            doc.gateways.push(ExportGateway {
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
                name: s.name.to_string(),
                description: s.description,
                icon: s.icon,
                tags: s.tags.to_strings(),
                enabled: s.enabled,
                naming: s.naming,
                allowed_origins: s.allowed_origins.to_vec(),
            });
        }
    }
    Ok(doc)
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
