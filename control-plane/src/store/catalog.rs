//! Tools, resources and prompts: one stored shape, three tables; and the transactional
//! merge of a discovery run into the catalog.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    ListSql, Store, StoreError, WriteTx, bind_all, get_bool, map_unique, new_id, normalize_tags,
    now, parse_tags, tags_json, validate_item_name,
};
use crate::model::{
    CatalogItem, CatalogKind, Collision, Gateway, ItemPatch, ListQuery, NewGateway, NewItem, Page,
    SyncReport,
};

const COLS: &str = "id, name, original_name, gateway_id, uri, description, spec, tags, enabled, \
    reachable, created_at, updated_at, version";

/// One item as an upstream listed it.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredItem {
    /// Name at the upstream.
    pub original_name: String,
    /// Resource URI or template.
    pub uri: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Kind-specific fields.
    pub spec: Map<String, Value>,
}

/// Everything one discovery run found at an upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovered {
    /// Tools.
    pub tools: Vec<DiscoveredItem>,
    /// Resources and resource templates.
    pub resources: Vec<DiscoveredItem>,
    /// Prompts.
    pub prompts: Vec<DiscoveredItem>,
    /// `capabilities` from `initialize`.
    pub capabilities: Option<Value>,
    /// `serverInfo` from `initialize`.
    pub server_info: Option<Value>,
    /// Negotiated protocol version.
    pub protocol_version: Option<String>,
}

impl Discovered {
    fn items(&self, kind: CatalogKind) -> &[DiscoveredItem] {
        match kind {
            CatalogKind::Tool => &self.tools,
            CatalogKind::Resource => &self.resources,
            CatalogKind::Prompt => &self.prompts,
        }
    }
}

fn row_to_item(kind: CatalogKind, row: &AnyRow) -> Result<CatalogItem, StoreError> {
    let spec: String = row.try_get("spec")?;
    let spec: Map<String, Value> =
        serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(format!("spec: {e}")))?;
    Ok(CatalogItem {
        kind,
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        original_name: row.try_get("original_name")?,
        gateway_id: row.try_get("gateway_id")?,
        uri: row.try_get("uri")?,
        description: row.try_get("description")?,
        spec,
        tags: parse_tags(row)?,
        enabled: get_bool(row, "enabled")?,
        reachable: get_bool(row, "reachable")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

fn spec_text(spec: &Map<String, Value>) -> String {
    Value::Object(spec.clone()).to_string()
}

pub(crate) fn validate_uri(kind: CatalogKind, uri: &Option<String>) -> Result<(), StoreError> {
    match (kind, uri) {
        (CatalogKind::Resource, None) => Err(StoreError::invalid("uri", "resources need a uri")),
        (CatalogKind::Resource, Some(u)) if u.trim().is_empty() || u.len() > 2048 => {
            Err(StoreError::invalid("uri", "must be 1-2048 characters"))
        }
        _ => Ok(()),
    }
}

impl Store {
    /// Creates an item defined by hand (or imported).
    pub async fn create_item(
        &self,
        kind: CatalogKind,
        item: NewItem,
    ) -> Result<CatalogItem, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = insert_item(&mut tx, kind, item).await?;
        tx.commit().await?;
        self.get_item(kind, &id).await
    }

    /// One item.
    pub async fn get_item(&self, kind: CatalogKind, id: &str) -> Result<CatalogItem, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM {} WHERE id = $1",
            kind.table()
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: kind.label(),
            id: id.to_owned(),
        })?;
        row_to_item(kind, &row)
    }

    /// One item by exposed name.
    pub async fn find_item_by_name(
        &self,
        kind: CatalogKind,
        name: &str,
    ) -> Result<Option<CatalogItem>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM {} WHERE name = $1",
            kind.table()
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(|r| row_to_item(kind, r)).transpose()
    }

    /// A page of items, ordered by name.
    pub async fn list_items(
        &self,
        kind: CatalogKind,
        q: &ListQuery,
    ) -> Result<Page<CatalogItem>, StoreError> {
        let l = ListSql::new(q, true)?;
        let sql = format!("SELECT {COLS} FROM {}{}", kind.table(), l.tail());
        let rows = bind_all(sqlx::query(&sql), &l.args)
            .fetch_all(self.pool())
            .await?;
        let items = rows
            .iter()
            .map(|r| row_to_item(kind, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(l.page(items, |i| &i.name))
    }

    /// Every item of a kind, ordered by name.
    pub async fn all_items(&self, kind: CatalogKind) -> Result<Vec<CatalogItem>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM {} ORDER BY name",
            kind.table()
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| row_to_item(kind, r)).collect()
    }

    /// Applies a partial update with optimistic concurrency. With `expected_version` a
    /// concurrent change is a conflict; without it the update is retried on the new row
    /// (the caller asked for last-writer-wins on the fields it sets).
    pub async fn update_item(
        &self,
        kind: CatalogKind,
        id: &str,
        p: ItemPatch,
    ) -> Result<CatalogItem, StoreError> {
        let mut attempts = 0;
        loop {
            match self.update_item_once(kind, id, p.clone()).await {
                Err(StoreError::VersionConflict { .. })
                    if p.expected_version.is_none() && attempts < 20 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    async fn update_item_once(
        &self,
        kind: CatalogKind,
        id: &str,
        p: ItemPatch,
    ) -> Result<CatalogItem, StoreError> {
        let mut tx = self.begin_write().await?;
        update_item_tx(&mut tx, kind, id, p).await?;
        tx.commit().await?;
        self.get_item(kind, id).await
    }

    /// Deletes an item (and its virtual-server associations).
    pub async fn delete_item(&self, kind: CatalogKind, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(&format!("DELETE FROM {} WHERE id = $1", kind.table()))
            .bind(id)
            .execute(tx.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: kind.label(),
                id: id.to_owned(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates a gateway and, when given, its discovered catalog, in one transaction.
    pub async fn create_gateway_with_catalog(
        &self,
        g: NewGateway,
        discovered: Option<&Discovered>,
        separator: &str,
    ) -> Result<(Gateway, Option<SyncReport>), StoreError> {
        let mut tx = self.begin_write().await?;
        let name = g.name.clone();
        let id = self.insert_gateway_tx(&mut tx, g).await?;
        let report = match discovered {
            Some(d) => Some(merge_catalog(&mut tx, &id, &name, separator, d).await?.0),
            None => None,
        };
        tx.commit().await?;
        Ok((self.get_gateway(&id).await?, report))
    }

    /// Merges a discovery run into the catalog of gateway `id`: adds new items, updates
    /// changed ones, removes vanished ones, reports (and skips) name collisions, and marks
    /// the gateway reachable. The registry version moves only if something changed.
    pub async fn sync_gateway_catalog(
        &self,
        id: &str,
        discovered: &Discovered,
        separator: &str,
    ) -> Result<SyncReport, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT name FROM gateways WHERE id = $1")
            .bind(id)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            })?;
        let name: String = row.try_get("name")?;
        let (report, changed) = merge_catalog(&mut tx, id, &name, separator, discovered).await?;
        if changed {
            tx.commit().await?;
        } else {
            tx.commit_quiet().await?;
        }
        Ok(report)
    }
}

pub(crate) async fn insert_item(
    tx: &mut WriteTx<'_>,
    kind: CatalogKind,
    item: NewItem,
) -> Result<String, StoreError> {
    validate_item_name(&item.name, "name")?;
    validate_uri(kind, &item.uri)?;
    let tags = normalize_tags(item.tags, "tags")?;
    let id = new_id();
    let ts = now();
    sqlx::query(&format!(
        "INSERT INTO {} (id, name, original_name, gateway_id, uri, description, spec, tags, enabled, \
         reachable, created_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10, 1)",
        kind.table()
    ))
    .bind(&id)
    .bind(&item.name)
    .bind(&item.original_name)
    .bind(item.gateway_id)
    .bind(item.uri)
    .bind(item.description)
    .bind(spec_text(&item.spec))
    .bind(tags_json(&tags))
    .bind(i64::from(item.enabled))
    .bind(&ts)
    .execute(tx.conn())
    .await
    .map_err(map_unique(kind.label(), &item.name))?;
    Ok(id)
}

struct Existing {
    id: String,
    name: String,
    uri: Option<String>,
    description: Option<String>,
    spec: String,
    reachable: bool,
}

async fn owner_of(
    tx: &mut WriteTx<'_>,
    kind: CatalogKind,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT gateway_id FROM {} WHERE name = $1",
        kind.table()
    ))
    .bind(name)
    .fetch_optional(tx.conn())
    .await?;
    Ok(match row {
        Some(r) => r.try_get("gateway_id")?,
        None => None,
    })
}

/// Returns the report and whether anything a snapshot contains changed.
async fn merge_catalog(
    tx: &mut WriteTx<'_>,
    gateway_id: &str,
    gateway_name: &str,
    separator: &str,
    d: &Discovered,
) -> Result<(SyncReport, bool), StoreError> {
    let mut report = SyncReport::default();
    let mut changed = false;
    let ts = now();
    // New items follow the gateway's switch: a disabled gateway adds nothing enabled.
    let gateway_enabled = {
        let row = sqlx::query("SELECT enabled FROM gateways WHERE id = $1")
            .bind(gateway_id)
            .fetch_one(tx.conn())
            .await?;
        get_bool(&row, "enabled")?
    };
    for kind in CatalogKind::ALL {
        let rows = sqlx::query(&format!(
            "SELECT id, name, original_name, uri, description, spec, reachable FROM {} WHERE gateway_id = $1",
            kind.table()
        ))
        .bind(gateway_id)
        .fetch_all(tx.conn())
        .await?;
        let mut existing: HashMap<String, Existing> = HashMap::new();
        for r in &rows {
            existing.insert(
                r.try_get("original_name")?,
                Existing {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    uri: r.try_get("uri")?,
                    description: r.try_get("description")?,
                    spec: r.try_get("spec")?,
                    reachable: get_bool(r, "reachable")?,
                },
            );
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for item in d.items(kind) {
            let name = format!("{gateway_name}{separator}{}", item.original_name);
            if !seen.insert(item.original_name.as_str()) {
                // The upstream listed the name twice (for resources, typically a resource
                // and a template): the first one is kept, the other reported.
                report.collisions.push(Collision {
                    kind,
                    name,
                    existing_gateway_id: Some(gateway_id.to_owned()),
                });
                continue;
            }
            let spec = spec_text(&item.spec);
            match existing.get(&item.original_name) {
                Some(e) => {
                    let mut new_name = e.name.clone();
                    if e.name != name {
                        // The gateway was renamed: follow it unless the name is taken.
                        let owner = owner_of(tx, kind, &name).await?;
                        let taken = owner.is_some() || name_taken(tx, kind, &name).await?;
                        if taken {
                            report.collisions.push(Collision {
                                kind,
                                name: name.clone(),
                                existing_gateway_id: owner,
                            });
                        } else {
                            new_name = name.clone();
                        }
                    }
                    let same = e.uri == item.uri
                        && e.description == item.description
                        && e.spec == spec
                        && e.name == new_name;
                    if same && e.reachable {
                        report.unchanged += 1;
                        continue;
                    }
                    sqlx::query(&format!(
                        "UPDATE {} SET name = $1, uri = $2, description = $3, spec = $4, reachable = 1, \
                         updated_at = $5, version = version + 1 WHERE id = $6",
                        kind.table()
                    ))
                    .bind(&new_name)
                    .bind(item.uri.clone())
                    .bind(item.description.clone())
                    .bind(&spec)
                    .bind(&ts)
                    .bind(&e.id)
                    .execute(tx.conn())
                    .await
                    .map_err(map_unique(kind.label(), &new_name))?;
                    changed = true;
                    if same {
                        report.unchanged += 1;
                    } else {
                        report.updated += 1;
                    }
                }
                None => {
                    if validate_item_name(&name, "name").is_err() {
                        report.collisions.push(Collision {
                            kind,
                            name,
                            existing_gateway_id: None,
                        });
                        continue;
                    }
                    let done = sqlx::query(&format!(
                        "INSERT INTO {} (id, name, original_name, gateway_id, uri, description, spec, tags, \
                         enabled, reachable, created_at, updated_at, version) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, '[]', $8, 1, $9, $9, 1) ON CONFLICT (name) DO NOTHING",
                        kind.table()
                    ))
                    .bind(new_id())
                    .bind(&name)
                    .bind(&item.original_name)
                    .bind(gateway_id)
                    .bind(item.uri.clone())
                    .bind(item.description.clone())
                    .bind(&spec)
                    .bind(i64::from(gateway_enabled))
                    .bind(&ts)
                    .execute(tx.conn())
                    .await?;
                    if done.rows_affected() == 0 {
                        let owner = owner_of(tx, kind, &name).await?;
                        report.collisions.push(Collision {
                            kind,
                            name,
                            existing_gateway_id: owner,
                        });
                    } else {
                        report.added += 1;
                        changed = true;
                    }
                }
            }
        }
        for (original, e) in &existing {
            if !seen.contains(original.as_str()) {
                sqlx::query(&format!("DELETE FROM {} WHERE id = $1", kind.table()))
                    .bind(&e.id)
                    .execute(tx.conn())
                    .await?;
                report.removed += 1;
                changed = true;
            }
        }
    }
    let row = sqlx::query(
        "SELECT reachable, capabilities, server_info, protocol_version FROM gateways WHERE id = $1",
    )
    .bind(gateway_id)
    .fetch_one(tx.conn())
    .await?;
    let caps = d.capabilities.as_ref().map(Value::to_string);
    let info = d.server_info.as_ref().map(Value::to_string);
    let old_caps: Option<String> = row.try_get("capabilities")?;
    let old_info: Option<String> = row.try_get("server_info")?;
    let old_proto: Option<String> = row.try_get("protocol_version")?;
    if !get_bool(&row, "reachable")?
        || old_caps != caps
        || old_info != info
        || old_proto != d.protocol_version
    {
        changed = true;
    }
    let collisions = serde_json::to_string(&report.collisions)
        .map_err(|e| StoreError::Corrupt(format!("collisions: {e}")))?;
    sqlx::query(
        "UPDATE gateways SET capabilities = $1, server_info = $2, protocol_version = $3, reachable = 1, \
         consecutive_failures = 0, last_seen = $4, last_error = NULL, collisions = $5 WHERE id = $6",
    )
    .bind(caps)
    .bind(info)
    .bind(d.protocol_version.clone())
    .bind(&ts)
    .bind(collisions)
    .bind(gateway_id)
    .execute(tx.conn())
    .await?;
    Ok((report, changed))
}

async fn name_taken(
    tx: &mut WriteTx<'_>,
    kind: CatalogKind,
    name: &str,
) -> Result<bool, StoreError> {
    let row = sqlx::query(&format!("SELECT id FROM {} WHERE name = $1", kind.table()))
        .bind(name)
        .fetch_optional(tx.conn())
        .await?;
    Ok(row.is_some())
}

/// [`Store::update_item`] (one attempt) in an open write transaction.
pub(crate) async fn update_item_tx(
    tx: &mut WriteTx<'_>,
    kind: CatalogKind,
    id: &str,
    p: ItemPatch,
) -> Result<(), StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM {} WHERE id = $1",
        kind.table()
    ))
    .bind(id)
    .fetch_optional(tx.conn())
    .await?
    .ok_or_else(|| StoreError::NotFound {
        kind: kind.label(),
        id: id.to_owned(),
    })?;
    let cur = row_to_item(kind, &row)?;
    if let Some(expected) = p.expected_version
        && expected != cur.version
    {
        return Err(StoreError::VersionConflict {
            kind: kind.label(),
            id: id.to_owned(),
            expected,
            current: cur.version,
        });
    }
    let name = p.name.unwrap_or(cur.name);
    validate_item_name(&name, "name")?;
    let uri = p.uri.or(cur.uri);
    validate_uri(kind, &uri)?;
    let tags = match p.tags {
        Some(t) => normalize_tags(t, "tags")?,
        None => cur.tags,
    };
    let mut spec = cur.spec;
    for (k, v) in p.spec {
        if v.is_null() {
            spec.remove(&k);
        } else {
            spec.insert(k, v);
        }
    }
    let done = sqlx::query(&format!(
        "UPDATE {} SET name = $1, uri = $2, description = $3, spec = $4, tags = $5, enabled = $6, \
         updated_at = $7, version = version + 1 WHERE id = $8 AND version = $9",
        kind.table()
    ))
    .bind(&name)
    .bind(uri)
    .bind(p.description.or(cur.description))
    .bind(spec_text(&spec))
    .bind(tags_json(&tags))
    .bind(i64::from(p.enabled.unwrap_or(cur.enabled)))
    .bind(now())
    .bind(id)
    .bind(cur.version)
    .execute(tx.conn())
    .await
    .map_err(map_unique(kind.label(), &name))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::VersionConflict {
            kind: kind.label(),
            id: id.to_owned(),
            expected: cur.version,
            current: cur.version + 1,
        });
    }
    Ok(())
}

/// Id of the item named `name`, seen from inside a write transaction.
pub(crate) async fn item_id_by_name(
    tx: &mut WriteTx<'_>,
    kind: CatalogKind,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(&format!("SELECT id FROM {} WHERE name = $1", kind.table()))
        .bind(name)
        .fetch_optional(tx.conn())
        .await?;
    row.map(|r| r.try_get("id")).transpose().map_err(Into::into)
}
