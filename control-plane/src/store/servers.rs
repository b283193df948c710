//! Virtual servers and their associations with catalog items.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    ListSql, Store, StoreError, WriteTx, bind_all, get_bool, map_unique, new_id, now, parse_tags,
};
use crate::model::{
    AllowedOrigins, CatalogKind, FieldInvalid, ItemName, ListFilter, Naming, NewServer, Page,
    ResourceSpec, Server, ServerPatch,
};

const COLS: &str = "id, name, description, icon, tags, enabled, naming, allowed_origins, \
    created_at, updated_at, version";

fn parse_naming(row: &AnyRow) -> Result<Naming, StoreError> {
    let raw: String = row.try_get("naming")?;
    Naming::parse(&raw).ok_or_else(|| StoreError::Corrupt(format!("naming {raw:?}")))
}

fn parse_origins(row: &AnyRow) -> Result<AllowedOrigins, StoreError> {
    let raw: String = row.try_get("allowed_origins")?;
    let list: Vec<String> = serde_json::from_str(&raw)
        .map_err(|e| StoreError::Corrupt(format!("allowed_origins: {e}")))?;
    AllowedOrigins::parse(&list).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A member of a virtual server, as the name-collision check sees it.
struct Member {
    id: String,
    /// Its registry name (what `prefixed` naming exposes).
    name: String,
    /// What `upstream` naming exposes it as, and in which of the server's lists.
    exposed: String,
    list: Exposure,
}

/// The lists of a virtual server whose entries must have unique names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Exposure {
    Tool,
    Resource,
    ResourceTemplate,
    Prompt,
}

impl Exposure {
    fn what(self) -> &'static str {
        match self {
            Self::Tool => "tool name",
            Self::Resource => "resource URI",
            Self::ResourceTemplate => "resource template URI",
            Self::Prompt => "prompt name",
        }
    }

    fn kind(self) -> CatalogKind {
        match self {
            Self::Tool => CatalogKind::Tool,
            Self::Resource | Self::ResourceTemplate => CatalogKind::Resource,
            Self::Prompt => CatalogKind::Prompt,
        }
    }
}

/// The members of server `server_id` of `kind`, first registered first.
async fn members(
    tx: &mut WriteTx<'_>,
    server_id: &str,
    kind: CatalogKind,
) -> Result<Vec<Member>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT i.id, i.name, i.original_name, i.uri, i.spec FROM {} i JOIN {} m ON m.item_id = i.id \
         WHERE m.server_id = $1 ORDER BY i.created_at, i.id",
        kind.table(),
        kind.server_table()
    ))
    .bind(server_id)
    .fetch_all(tx.conn())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (exposed, list) = match kind {
            CatalogKind::Tool => (r.try_get("original_name")?, Exposure::Tool),
            CatalogKind::Prompt => (r.try_get("original_name")?, Exposure::Prompt),
            CatalogKind::Resource => {
                let Some(uri) = r.try_get::<Option<String>, _>("uri")? else {
                    continue;
                };
                let spec: String = r.try_get("spec")?;
                let template =
                    super::catalog::parse_spec::<ResourceSpec>(&spec).is_ok_and(|s| s.is_template);
                let list = if template {
                    Exposure::ResourceTemplate
                } else {
                    Exposure::Resource
                };
                (uri, list)
            }
        };
        out.push(Member {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            exposed,
            list,
        });
    }
    Ok(out)
}

/// Refuses a server whose members, named as their upstreams name them, collide: one error
/// per member that exposes a name an earlier-registered member already exposes, naming
/// both. `given` are the id lists of this request, by kind (to point at the offending
/// entry); a collision among members the request did not list is reported on `naming`.
async fn check_upstream_names(
    tx: &mut WriteTx<'_>,
    server_id: &str,
    given: [Option<&[String]>; 3],
) -> Result<(), StoreError> {
    let mut errors = Vec::new();
    for (kind, given) in CatalogKind::ALL.into_iter().zip(given) {
        let mut seen: std::collections::HashMap<(Exposure, &str), &Member> =
            std::collections::HashMap::new();
        let all = members(tx, server_id, kind).await?;
        for m in &all {
            let Some(first) = seen.get(&(m.list, m.exposed.as_str())) else {
                seen.insert((m.list, m.exposed.as_str()), m);
                continue;
            };
            let field = match given.and_then(|ids| ids.iter().position(|id| *id == m.id)) {
                Some(i) => format!("{}[{i}]", kind.server_field()),
                None => "naming".to_owned(),
            };
            let label = m.list.kind().label();
            errors.push(FieldInvalid::new(
                field,
                format!(
                    "{} {:?} is exposed by both {label} {:?} (id {}) and {label} {:?} (id {}): \
                     with naming \"upstream\" a virtual server exposes each upstream's own names, \
                     which must be unique in it; leave one out, or use naming \"prefixed\"",
                    m.list.what(),
                    m.exposed,
                    first.name,
                    first.id,
                    m.name,
                    m.id,
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::NameCollisions(errors))
    }
}

async fn set_associations(
    tx: &mut WriteTx<'_>,
    server_id: &str,
    kind: CatalogKind,
    ids: &[String],
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "DELETE FROM {} WHERE server_id = $1",
        kind.server_table()
    ))
    .bind(server_id)
    .execute(tx.conn())
    .await?;
    let mut seen = std::collections::HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        if !seen.insert(id.as_str()) {
            continue;
        }
        let exists = sqlx::query(&format!("SELECT id FROM {} WHERE id = $1", kind.table()))
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
        if exists.is_none() {
            return Err(StoreError::invalid(
                format!("{}[{i}]", kind.server_field()),
                format!("no {} with id {id}", kind.label()),
            ));
        }
        sqlx::query(&format!(
            "INSERT INTO {} (server_id, item_id) VALUES ($1, $2)",
            kind.server_table()
        ))
        .bind(server_id)
        .bind(id)
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

impl Store {
    async fn server_from_row(
        &self,
        conn: &mut sqlx::AnyConnection,
        row: &AnyRow,
    ) -> Result<Server, StoreError> {
        let id: String = row.try_get("id")?;
        let mut assoc: [Vec<String>; 3] = Default::default();
        for (slot, kind) in assoc.iter_mut().zip(CatalogKind::ALL) {
            let rows = sqlx::query(&format!(
                "SELECT item_id FROM {} WHERE server_id = $1 ORDER BY item_id",
                kind.server_table()
            ))
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
            *slot = rows
                .iter()
                .map(|r| r.try_get::<String, _>("item_id"))
                .collect::<Result<_, _>>()?;
        }
        let [tools, resources, prompts] = assoc;
        let name: String = row.try_get("name")?;
        Ok(Server {
            id,
            name: ItemName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            description: row.try_get("description")?,
            icon: row.try_get("icon")?,
            tags: parse_tags(row)?,
            enabled: get_bool(row, "enabled")?,
            naming: parse_naming(row)?,
            allowed_origins: parse_origins(row)?,
            associated_tools: tools,
            associated_resources: resources,
            associated_prompts: prompts,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            version: row.try_get("version")?,
        })
    }

    /// Creates a virtual server; every associated id must exist.
    pub async fn create_server(&self, s: NewServer) -> Result<Server, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = self.insert_server_tx(&mut tx, s).await?;
        tx.commit().await?;
        self.get_server(&id).await
    }

    /// The id of the virtual server named `name`, in an open write transaction.
    pub(crate) async fn server_id_by_name_tx(
        &self,
        tx: &mut WriteTx<'_>,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT id FROM servers WHERE name = $1")
            .bind(name)
            .fetch_optional(tx.conn())
            .await?;
        row.map(|r| r.try_get("id").map_err(StoreError::from))
            .transpose()
    }

    /// [`Store::create_server`] in an open write transaction; returns the new id.
    pub(crate) async fn insert_server_tx(
        &self,
        tx: &mut WriteTx<'_>,
        s: NewServer,
    ) -> Result<String, StoreError> {
        let id = new_id();
        let ts = now();
        sqlx::query(
            "INSERT INTO servers (id, name, description, icon, tags, enabled, naming, allowed_origins, \
             created_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 1)",
        )
        .bind(&id)
        .bind(s.name.as_str())
        .bind(s.description)
        .bind(s.icon)
        .bind(s.tags.to_json())
        .bind(i64::from(s.enabled))
        .bind(s.naming.as_str())
        .bind(s.allowed_origins.to_json())
        .bind(&ts)
        .execute(tx.conn())
        .await
        .map_err(map_unique("server", s.name.as_str()))?;
        set_associations(tx, &id, CatalogKind::Tool, &s.tools).await?;
        set_associations(tx, &id, CatalogKind::Resource, &s.resources).await?;
        set_associations(tx, &id, CatalogKind::Prompt, &s.prompts).await?;
        if s.naming == Naming::Upstream {
            let given = [
                Some(s.tools.as_slice()),
                Some(s.resources.as_slice()),
                Some(s.prompts.as_slice()),
            ];
            check_upstream_names(tx, &id, given).await?;
        }
        Ok(id)
    }

    /// One virtual server.
    pub async fn get_server(&self, id: &str) -> Result<Server, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let row = sqlx::query(&format!("SELECT {COLS} FROM servers WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "server",
                id: id.to_owned(),
            })?;
        self.server_from_row(&mut conn, &row).await
    }

    /// A page of virtual servers (rows that do not parse left out).
    pub async fn list_servers(&self, q: &ListFilter) -> Result<Page<Server>, StoreError> {
        let l = ListSql::new(q, false)?;
        let sql = format!("SELECT {COLS} FROM servers{}", l.tail());
        let mut conn = self.pool().acquire().await?;
        let rows = bind_all(sqlx::query(&sql), &l.args)
            .fetch_all(&mut *conn)
            .await?;
        let mut parsed = Vec::with_capacity(rows.len());
        for r in rows.iter().take(l.limit as usize) {
            parsed.push(self.server_from_row(&mut conn, r).await);
        }
        let mut parsed = parsed.into_iter();
        l.page(rows, |r| {
            parsed
                .next()
                .and_then(|p| self.keep_parsed("servers", r, p))
        })
    }

    /// Every virtual server (rows that do not parse left out).
    pub async fn all_servers(&self) -> Result<Vec<Server>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let rows = sqlx::query(&format!("SELECT {COLS} FROM servers ORDER BY name"))
            .fetch_all(&mut *conn)
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let parsed = self.server_from_row(&mut conn, r).await;
            if let Some(s) = self.keep_parsed("servers", r, parsed) {
                items.push(s);
            }
        }
        Ok(items)
    }

    /// Applies a partial update with optimistic concurrency.
    pub async fn update_server(&self, id: &str, p: ServerPatch) -> Result<Server, StoreError> {
        let mut tx = self.begin_write().await?;
        self.update_server_tx(&mut tx, id, p).await?;
        tx.commit().await?;
        self.get_server(id).await
    }

    /// [`Store::update_server`] in an open write transaction.
    pub(crate) async fn update_server_tx(
        &self,
        tx: &mut WriteTx<'_>,
        id: &str,
        p: ServerPatch,
    ) -> Result<(), StoreError> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM servers WHERE id = $1"))
            .bind(id)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "server",
                id: id.to_owned(),
            })?;
        let version: i64 = row.try_get("version")?;
        if let Some(expected) = p.expected_version
            && expected != version
        {
            return Err(StoreError::VersionConflict {
                kind: "server",
                id: id.to_owned(),
                expected,
                current: version,
            });
        }
        let name: String = match p.name {
            Some(n) => n.as_str().to_owned(),
            None => row.try_get("name")?,
        };
        let tags = match p.tags {
            Some(t) => t,
            None => parse_tags(&row)?,
        };
        let description = match p.description {
            Some(d) => Some(d),
            None => row.try_get("description")?,
        };
        let icon = match p.icon {
            Some(i) => Some(i),
            None => row.try_get("icon")?,
        };
        let enabled = match p.enabled {
            Some(e) => e,
            None => get_bool(&row, "enabled")?,
        };
        let naming = match p.naming {
            Some(n) => n,
            None => parse_naming(&row)?,
        };
        let origins = match p.allowed_origins {
            Some(o) => o,
            None => parse_origins(&row)?,
        };
        let done = sqlx::query(
            "UPDATE servers SET name = $1, description = $2, icon = $3, tags = $4, enabled = $5, \
             naming = $6, allowed_origins = $7, updated_at = $8, version = version + 1 \
             WHERE id = $9 AND version = $10",
        )
        .bind(&name)
        .bind(description)
        .bind(icon)
        .bind(tags.to_json())
        .bind(i64::from(enabled))
        .bind(naming.as_str())
        .bind(origins.to_json())
        .bind(now())
        .bind(id)
        .bind(version)
        .execute(tx.conn())
        .await
        .map_err(map_unique("server", &name))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::VersionConflict {
                kind: "server",
                id: id.to_owned(),
                expected: version,
                current: version + 1,
            });
        }
        if let Some(ids) = &p.tools {
            set_associations(tx, id, CatalogKind::Tool, ids).await?;
        }
        if let Some(ids) = &p.resources {
            set_associations(tx, id, CatalogKind::Resource, ids).await?;
        }
        if let Some(ids) = &p.prompts {
            set_associations(tx, id, CatalogKind::Prompt, ids).await?;
        }
        if naming == Naming::Upstream {
            let given = [
                p.tools.as_deref(),
                p.resources.as_deref(),
                p.prompts.as_deref(),
            ];
            check_upstream_names(tx, id, given).await?;
        }
        Ok(())
    }

    /// Deletes a virtual server.
    pub async fn delete_server(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "server",
                id: id.to_owned(),
            });
        }
        // Its authorization policy and limits go with it.
        sqlx::query("DELETE FROM edge_policies WHERE kind IN ('policy', 'limits') AND name = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
