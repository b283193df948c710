//! Tools, resources and prompts: one stored shape in three tables, generic over the kind's
//! spec; and the transactional merge of a discovery run into the catalog.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    ListSql, Store, StoreError, WriteTx, bind_all, get_bool, map_unique, new_id, now, parse_tags,
};
use crate::model::{
    CatalogItem, CatalogKind, CatalogSpec, Collision, Discovered, DiscoveredKind, Gateway,
    GatewayName, ItemName, ItemPatch, JsonObject, ListFilter, NewGateway, NewItem, Page,
    PromptSpec, ResourceSpec, SkippedItem, SpecChange, SyncReport, ToolSpec,
};

const COLS: &str = "id, name, original_name, gateway_id, uri, description, spec, tags, enabled, \
    reachable, created_at, updated_at, version";

pub(super) fn parse_spec<S: CatalogSpec>(raw: &str) -> Result<S, StoreError> {
    let object: JsonObject =
        serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("spec: {e}")))?;
    S::from_json(object).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn spec_text<S: CatalogSpec>(spec: &S) -> String {
    Value::Object(spec.to_json()).to_string()
}

fn row_to_item<S: CatalogSpec>(row: &AnyRow) -> Result<CatalogItem<S>, StoreError> {
    let spec: String = row.try_get("spec")?;
    let name: String = row.try_get("name")?;
    Ok(CatalogItem {
        id: row.try_get("id")?,
        name: ItemName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        original_name: row.try_get("original_name")?,
        gateway_id: row.try_get("gateway_id")?,
        uri: row.try_get("uri")?,
        description: row.try_get("description")?,
        spec: parse_spec(&spec)?,
        tags: parse_tags(row)?,
        enabled: get_bool(row, "enabled")?,
        reachable: get_bool(row, "reachable")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

/// Resources need a URI of 1–2048 characters; other kinds ignore it.
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
    pub async fn create_item<S: CatalogSpec>(
        &self,
        item: NewItem<S>,
    ) -> Result<CatalogItem<S>, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = insert_item(&mut tx, item).await?;
        tx.commit().await?;
        self.get_item(&id).await
    }

    /// One item.
    pub async fn get_item<S: CatalogSpec>(&self, id: &str) -> Result<CatalogItem<S>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM {} WHERE id = $1",
            S::KIND.table()
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: S::KIND.label(),
            id: id.to_owned(),
        })?;
        row_to_item(&row)
    }

    /// One item by exposed name.
    pub async fn find_item_by_name<S: CatalogSpec>(
        &self,
        name: &str,
    ) -> Result<Option<CatalogItem<S>>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM {} WHERE name = $1",
            S::KIND.table()
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(row_to_item).transpose()
    }

    /// Id of the item of `kind` named `name`.
    pub async fn item_id_by_name(
        &self,
        kind: CatalogKind,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(&format!("SELECT id FROM {} WHERE name = $1", kind.table()))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get("id")).transpose().map_err(Into::into)
    }

    /// A page of items, ordered by name (rows that do not parse left out).
    pub async fn list_items<S: CatalogSpec>(
        &self,
        q: &ListFilter,
    ) -> Result<Page<CatalogItem<S>>, StoreError> {
        let l = ListSql::new(q, true)?;
        let table = S::KIND.table();
        let sql = format!("SELECT {COLS} FROM {table}{}", l.tail());
        let rows = bind_all(sqlx::query(&sql), &l.args)
            .fetch_all(self.pool())
            .await?;
        l.page(rows, |r| self.keep_parsed(table, r, row_to_item(r)))
    }

    /// Every item of a kind, ordered by name (rows that do not parse left out).
    pub async fn all_items<S: CatalogSpec>(&self) -> Result<Vec<CatalogItem<S>>, StoreError> {
        let table = S::KIND.table();
        let rows = sqlx::query(&format!("SELECT {COLS} FROM {table} ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| self.keep_parsed(table, r, row_to_item(r)))
            .collect())
    }

    /// Applies a partial update with optimistic concurrency. With `expected_version` a
    /// concurrent change is a conflict; without it the update is retried on the new row
    /// (the caller asked for last-writer-wins on the fields it sets).
    pub async fn update_item<S: CatalogSpec>(
        &self,
        id: &str,
        p: ItemPatch<S>,
    ) -> Result<CatalogItem<S>, StoreError> {
        let mut attempts = 0;
        loop {
            match self.update_item_once(id, p.clone()).await {
                Err(StoreError::VersionConflict { .. })
                    if p.expected_version.is_none() && attempts < 20 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    async fn update_item_once<S: CatalogSpec>(
        &self,
        id: &str,
        p: ItemPatch<S>,
    ) -> Result<CatalogItem<S>, StoreError> {
        let mut tx = self.begin_write().await?;
        update_item_tx(&mut tx, id, p).await?;
        tx.commit().await?;
        self.get_item(id).await
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
        let name = GatewayName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (report, changed) = merge_catalog(&mut tx, id, &name, separator, discovered).await?;
        if changed {
            tx.commit().await?;
        } else {
            tx.commit_quiet().await?;
        }
        Ok(report)
    }
}

pub(crate) async fn insert_item<S: CatalogSpec>(
    tx: &mut WriteTx<'_>,
    item: NewItem<S>,
) -> Result<String, StoreError> {
    let kind = S::KIND;
    validate_uri(kind, &item.uri)?;
    let id = new_id();
    let ts = now();
    sqlx::query(&format!(
        "INSERT INTO {} (id, name, original_name, gateway_id, uri, description, spec, tags, enabled, \
         reachable, created_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10, 1)",
        kind.table()
    ))
    .bind(&id)
    .bind(item.name.as_str())
    .bind(&item.original_name)
    .bind(item.gateway_id)
    .bind(item.uri)
    .bind(item.description)
    .bind(spec_text(&item.spec))
    .bind(item.tags.to_json())
    .bind(i64::from(item.enabled))
    .bind(&ts)
    .execute(tx.conn())
    .await
    .map_err(map_unique(kind.label(), item.name.as_str()))?;
    Ok(id)
}

struct Existing {
    id: String,
    name: String,
    uri: Option<String>,
    description: Option<String>,
    /// The stored spec (rewritten by the merge when it does not parse).
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
    gateway_name: &GatewayName,
    separator: &str,
    d: &Discovered,
) -> Result<(SyncReport, bool), StoreError> {
    let mut report = SyncReport {
        skipped: d.skipped.clone(),
        ..SyncReport::default()
    };
    // New items follow the gateway's switch: a disabled gateway adds nothing enabled.
    let gateway_enabled = {
        let row = sqlx::query("SELECT enabled FROM gateways WHERE id = $1")
            .bind(gateway_id)
            .fetch_one(tx.conn())
            .await?;
        get_bool(&row, "enabled")?
    };
    let ts = now();
    let target = MergeTarget {
        gateway_id,
        gateway_name,
        separator,
        gateway_enabled,
        ts: &ts,
    };
    // Pinned tools: only approved definitions reach the catalog (see `pins`).
    let gated = super::pins::gate_tools(tx, gateway_id, &d.tools).await?;
    let approved = Discovered {
        tools: gated.tools,
        ..Discovered::default()
    };
    let mut changed = gated.changed;
    changed |= merge_kind::<ToolSpec>(tx, &target, &approved, &mut report).await?;
    changed |= merge_kind::<ResourceSpec>(tx, &target, d, &mut report).await?;
    changed |= merge_kind::<PromptSpec>(tx, &target, d, &mut report).await?;
    let row = sqlx::query(
        "SELECT reachable, capabilities, server_info, protocol_version, protocol_versions \
         FROM gateways WHERE id = $1",
    )
    .bind(gateway_id)
    .fetch_one(tx.conn())
    .await?;
    let caps = d.capabilities.as_ref().map(Value::to_string);
    let info = d.server_info.as_ref().map(Value::to_string);
    let old_caps: Option<String> = row.try_get("capabilities")?;
    let old_info: Option<String> = row.try_get("server_info")?;
    let old_proto: Option<String> = row.try_get("protocol_version")?;
    let old_versions: String = row.try_get("protocol_versions")?;
    let versions = serde_json::to_string(&d.protocol_versions)
        .map_err(|e| StoreError::Corrupt(format!("protocol_versions: {e}")))?;
    if !get_bool(&row, "reachable")?
        || old_caps != caps
        || old_info != info
        || old_proto != d.protocol_version
        || old_versions != versions
    {
        changed = true;
    }
    let collisions = serde_json::to_string(&report.collisions)
        .map_err(|e| StoreError::Corrupt(format!("collisions: {e}")))?;
    let skipped = serde_json::to_string(&report.skipped)
        .map_err(|e| StoreError::Corrupt(format!("skipped: {e}")))?;
    sqlx::query(
        "UPDATE gateways SET capabilities = $1, server_info = $2, protocol_version = $3, reachable = 1, \
         consecutive_failures = 0, last_seen = $4, last_error = NULL, collisions = $5, skipped = $6, \
         protocol_versions = $7 WHERE id = $8",
    )
    .bind(caps)
    .bind(info)
    .bind(d.protocol_version.clone())
    .bind(&ts)
    .bind(collisions)
    .bind(skipped)
    .bind(versions)
    .bind(gateway_id)
    .execute(tx.conn())
    .await?;
    Ok((report, changed))
}

/// The gateway a discovery run is merged into.
struct MergeTarget<'a> {
    gateway_id: &'a str,
    gateway_name: &'a GatewayName,
    separator: &'a str,
    gateway_enabled: bool,
    ts: &'a str,
}

/// Merges one kind's discovered items; returns whether anything changed.
async fn merge_kind<S: DiscoveredKind>(
    tx: &mut WriteTx<'_>,
    t: &MergeTarget<'_>,
    d: &Discovered,
    report: &mut SyncReport,
) -> Result<bool, StoreError> {
    let kind = S::KIND;
    let mut changed = false;
    let rows = sqlx::query(&format!(
        "SELECT id, name, original_name, uri, description, spec, reachable FROM {} WHERE gateway_id = $1",
        kind.table()
    ))
    .bind(t.gateway_id)
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
    for item in S::of(d) {
        let name = t.gateway_name.expose(t.separator, &item.original_name);
        if !seen.insert(item.original_name.as_str()) {
            // The upstream listed the name twice (for resources, typically a resource
            // and a template): the first one is kept, the other reported.
            report.collisions.push(Collision {
                kind,
                name,
                existing_gateway_id: Some(t.gateway_id.to_owned()),
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
                // Compared as typed values: a row an older version wrote (keys in another
                // order, fields since dropped) is not a change by itself.
                let same_spec = parse_spec::<S>(&e.spec).is_ok_and(|s| s == item.spec);
                let same = e.uri == item.uri
                    && e.description == item.description
                    && same_spec
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
                .bind(t.ts)
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
                // As the API would refuse it (a renamed gateway can make a name too long).
                if let Err(e) = ItemName::parse(&name) {
                    report.skipped.push(SkippedItem::new(
                        kind,
                        &item.original_name,
                        format!("its exposed name {}", e.reason),
                    ));
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
                .bind(t.gateway_id)
                .bind(item.uri.clone())
                .bind(item.description.clone())
                .bind(&spec)
                .bind(i64::from(t.gateway_enabled))
                .bind(t.ts)
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
    Ok(changed)
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
pub(crate) async fn update_item_tx<S: CatalogSpec>(
    tx: &mut WriteTx<'_>,
    id: &str,
    p: ItemPatch<S>,
) -> Result<(), StoreError> {
    let kind = S::KIND;
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
    let cur: CatalogItem<S> = row_to_item(&row)?;
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
    let uri = p.uri.or(cur.uri);
    validate_uri(kind, &uri)?;
    let tags = p.tags.unwrap_or(cur.tags);
    let spec = match p.spec {
        SpecChange::Keep => cur.spec,
        SpecChange::Merge(patch) => {
            let mut spec = cur.spec;
            spec.apply(patch);
            spec
        }
        SpecChange::Replace(spec) => spec,
    };
    let done = sqlx::query(&format!(
        "UPDATE {} SET name = $1, uri = $2, description = $3, spec = $4, tags = $5, enabled = $6, \
         updated_at = $7, version = version + 1 WHERE id = $8 AND version = $9",
        kind.table()
    ))
    .bind(name.as_str())
    .bind(uri)
    .bind(p.description.or(cur.description))
    .bind(spec_text(&spec))
    .bind(tags.to_json())
    .bind(i64::from(p.enabled.unwrap_or(cur.enabled)))
    .bind(now())
    .bind(id)
    .bind(cur.version)
    .execute(tx.conn())
    .await
    .map_err(map_unique(kind.label(), name.as_str()))?;
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
