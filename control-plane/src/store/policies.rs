//! What the edge enforces besides the catalog: token issuers, per-server authorization
//! policies, request limits and guardrail plugins (table `edge_policies`, migration 0006).
//!
//! Each row holds its settings as JSON in the schema of the snapshot's own types
//! ([`EdgeKind`] says which), so what is stored is exactly what the filter reads; the API
//! checks it with the filter's validation before writing. A row that no longer parses
//! (written by an older version, or by hand) is left out of every read with a warning and
//! the `mcpgw_store_rows_skipped_total` metric; the snapshot builder is fail-closed about
//! what that leaves out (see `crate::snapshot`).
//!
//! Every write bumps the registry version, so the edge is republished.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, WriteTx, now};

/// The kinds of edge settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// A token issuer, by name (`mcpgw_core::snapshot::auth::Issuer`).
    Issuer,
    /// A virtual server's authorization, by server id (`auth::ServerAuth`).
    Policy,
    /// A virtual server's limits, by server id or [`DEFAULT_LIMITS`]
    /// (`limits::ServerLimits`).
    Limits,
    /// A guardrail plugin, by name (`plugins::Plugin`).
    Plugin,
}

/// The name of the limits of every virtual server without its own.
pub const DEFAULT_LIMITS: &str = "default";

impl EdgeKind {
    /// Its value in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Issuer => "issuer",
            EdgeKind::Policy => "policy",
            EdgeKind::Limits => "limits",
            EdgeKind::Plugin => "plugin",
        }
    }

    /// Its name in errors.
    pub fn label(self) -> &'static str {
        match self {
            EdgeKind::Issuer => "issuer",
            EdgeKind::Policy => "policy of server",
            EdgeKind::Limits => "limits of server",
            EdgeKind::Plugin => "plugin",
        }
    }
}

/// One stored item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeRecord<T> {
    /// Its name (issuer or plugin name, server id, or `default`).
    pub name: String,
    /// Its settings.
    pub spec: T,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it was last written (RFC 3339).
    pub updated_at: String,
}

fn record<T: DeserializeOwned>(r: &AnyRow) -> Result<EdgeRecord<T>, StoreError> {
    let spec: String = r.try_get("spec")?;
    let name: String = r.try_get("name")?;
    Ok(EdgeRecord {
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("stored settings of {name}: {e}")))?,
        name,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const COLS: &str = "name AS id, name, spec, created_at, updated_at";

impl Store {
    /// Every item of `kind`, by name; rows that do not parse are left out.
    pub async fn edge_items<T: DeserializeOwned>(
        &self,
        kind: EdgeKind,
    ) -> Result<Vec<EdgeRecord<T>>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM edge_policies WHERE kind = $1 ORDER BY name"
        ))
        .bind(kind.as_str())
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| self.keep_parsed("edge_policies", r, record(r)))
            .collect())
    }

    /// The item `name` of `kind`.
    pub async fn edge_item<T: DeserializeOwned>(
        &self,
        kind: EdgeKind,
        name: &str,
    ) -> Result<EdgeRecord<T>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM edge_policies WHERE kind = $1 AND name = $2"
        ))
        .bind(kind.as_str())
        .bind(name)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: kind.label(),
            id: name.to_owned(),
        })?;
        record(&row)
    }

    /// Creates or replaces the item `name` of `kind`; the record, and whether it was
    /// created.
    pub async fn put_edge_item<T: Serialize + DeserializeOwned>(
        &self,
        kind: EdgeKind,
        name: &str,
        spec: &T,
    ) -> Result<(EdgeRecord<T>, bool), StoreError> {
        let text = serde_json::to_string(spec)
            .map_err(|e| StoreError::Corrupt(format!("settings of {name}: {e}")))?;
        let mut tx = self.begin_write().await?;
        let created = put_edge_item_tx(&mut tx, kind, name, &text).await?;
        tx.commit().await?;
        Ok((self.edge_item(kind, name).await?, created))
    }

    /// Deletes the item `name` of `kind`.
    pub async fn delete_edge_item(&self, kind: EdgeKind, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM edge_policies WHERE kind = $1 AND name = $2")
            .bind(kind.as_str())
            .bind(name)
            .execute(tx.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: kind.label(),
                id: name.to_owned(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Revoked token ids not expired yet, with their expiry (RFC 3339), by id: the control
    /// plane's session tokens revoked by a logout and any token an operator revoked.
    pub async fn revocations(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT jti, expires_at FROM revoked_jwts WHERE expires_at >= $1 ORDER BY jti",
        )
        .bind(now())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?)))
            .collect()
    }

    /// Ids (`jti`) of the control plane's session tokens revoked before their expiry and
    /// not expired yet: the edge refuses them too.
    pub async fn revoked_jwt_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT jti FROM revoked_jwts WHERE expires_at >= $1 ORDER BY jti")
            .bind(now())
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| r.try_get("jti").map_err(StoreError::from))
            .collect()
    }
}

/// Creates or replaces the item `name` of `kind` with the settings `text` (JSON) in `tx`;
/// whether it was created.
pub(crate) async fn put_edge_item_tx(
    tx: &mut WriteTx<'_>,
    kind: EdgeKind,
    name: &str,
    text: &str,
) -> Result<bool, StoreError> {
    let ts = now();
    let existing = sqlx::query("SELECT name FROM edge_policies WHERE kind = $1 AND name = $2")
        .bind(kind.as_str())
        .bind(name)
        .fetch_optional(tx.conn())
        .await?;
    let created = existing.is_none();
    if created {
        sqlx::query(
            "INSERT INTO edge_policies (kind, name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        )
    } else {
        sqlx::query(
            "UPDATE edge_policies SET spec = $3, updated_at = $4 WHERE kind = $1 AND name = $2",
        )
    }
    .bind(kind.as_str())
    .bind(name)
    .bind(text)
    .bind(&ts)
    .execute(tx.conn())
    .await?;
    Ok(created)
}
