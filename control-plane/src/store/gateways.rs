//! Gateways: registered upstream MCP servers, their sealed credentials and health.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    ListSql, Store, StoreError, WriteTx, bind_all, get_bool, map_unique, now, parse_json_opt,
    parse_tags,
};
use crate::crypto::{CredentialBinding, SecretBox};
use crate::model::{
    AuthType, Credentials, Gateway, GatewayIdentity, GatewayName, GatewayPatch, ListFilter,
    NewGateway, Page, Transport, UpstreamUrl,
};

const COLS: &str = "id, name, url, transport, description, tags, enabled, reachable, auth_type, \
    identity, capabilities, server_info, protocol_version, protocol_versions, last_seen, last_error, \
    consecutive_failures, \
    collisions, skipped, created_at, updated_at, version";

/// What a health check changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthTransition {
    /// Reachability did not change.
    Unchanged,
    /// The failure threshold was reached: gateway and items marked unreachable.
    BecameUnreachable,
    /// A check succeeded after the gateway was unreachable.
    BecameReachable,
}

fn row_to_gateway(row: &AnyRow) -> Result<Gateway, StoreError> {
    let corrupt = |e: crate::model::FieldInvalid| StoreError::Corrupt(e.to_string());
    let transport: String = row.try_get("transport")?;
    let auth: String = row.try_get("auth_type")?;
    let name: String = row.try_get("name")?;
    let url: String = row.try_get("url")?;
    Ok(Gateway {
        id: row.try_get("id")?,
        name: GatewayName::parse(&name).map_err(corrupt)?,
        url: UpstreamUrl::from_stored(&url).map_err(corrupt)?,
        transport: Transport::parse(&transport)
            .ok_or_else(|| StoreError::Corrupt(format!("transport {transport:?}")))?,
        description: row.try_get("description")?,
        tags: parse_tags(row)?,
        enabled: get_bool(row, "enabled")?,
        reachable: get_bool(row, "reachable")?,
        auth_type: AuthType::parse(&auth)
            .ok_or_else(|| StoreError::Corrupt(format!("auth_type {auth:?}")))?,
        identity: {
            let raw: String = row.try_get("identity")?;
            GatewayIdentity::from_json(&raw).map_err(corrupt)?
        },
        capabilities: parse_json_opt(row, "capabilities")?,
        server_info: parse_json_opt(row, "server_info")?,
        protocol_version: row.try_get("protocol_version")?,
        protocol_versions: {
            let raw: String = row.try_get("protocol_versions")?;
            serde_json::from_str(&raw)
                .map_err(|e| StoreError::Corrupt(format!("protocol_versions: {e}")))?
        },
        last_seen: row.try_get("last_seen")?,
        last_error: row.try_get("last_error")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        collisions: {
            let raw: String = row.try_get("collisions")?;
            serde_json::from_str(&raw)
                .map_err(|e| StoreError::Corrupt(format!("collisions: {e}")))?
        },
        skipped: {
            let raw: String = row.try_get("skipped")?;
            serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(format!("skipped: {e}")))?
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

impl Store {
    /// Inserts a gateway in an open write transaction (so discovery results can join it).
    pub(crate) async fn insert_gateway_tx(
        &self,
        tx: &mut WriteTx<'_>,
        g: NewGateway,
    ) -> Result<String, StoreError> {
        let id = g.id;
        let ts = now();
        sqlx::query(
            "INSERT INTO gateways (id, name, url, transport, description, tags, enabled, reachable, \
             auth_type, auth_sealed, identity, identity_sealed, created_at, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $12, $12, 1)",
        )
        .bind(&id)
        .bind(g.name.as_str())
        .bind(g.url.as_str())
        .bind(g.transport.as_str())
        .bind(g.description)
        .bind(g.tags.to_json())
        .bind(i64::from(g.enabled))
        .bind(g.auth_type.as_str())
        .bind(g.auth_sealed)
        .bind(g.identity.to_json())
        .bind(g.identity_sealed)
        .bind(&ts)
        .execute(tx.conn())
        .await
        .map_err(map_unique("gateway", g.name.as_str()))?;
        Ok(id)
    }

    /// `(id, enabled)` of the gateway named `name`, seen from inside a write transaction.
    pub(crate) async fn gateway_ref_tx(
        &self,
        tx: &mut WriteTx<'_>,
        name: &str,
    ) -> Result<Option<(String, bool)>, StoreError> {
        let row = sqlx::query("SELECT id, enabled FROM gateways WHERE name = $1")
            .bind(name)
            .fetch_optional(tx.conn())
            .await?;
        row.map(|r| Ok((r.try_get("id")?, get_bool(&r, "enabled")?)))
            .transpose()
    }

    /// Creates a gateway without discovery.
    pub async fn create_gateway(&self, g: NewGateway) -> Result<Gateway, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = self.insert_gateway_tx(&mut tx, g).await?;
        tx.commit().await?;
        self.get_gateway(&id).await
    }

    /// One gateway.
    pub async fn get_gateway(&self, id: &str) -> Result<Gateway, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM gateways WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            })?;
        row_to_gateway(&row)
    }

    /// One gateway by name.
    pub async fn find_gateway_by_name(&self, name: &str) -> Result<Option<Gateway>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM gateways WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(row_to_gateway).transpose()
    }

    /// The one way to read a gateway's credentials in clear: opens them for this gateway
    /// and its URL's origin, or fails ([`StoreError::Sealed`]) when they were sealed for
    /// another gateway or origin (a copied row, a URL changed behind the API's back) or with
    /// another key. A value of the first, unbound format is opened once with the legacy
    /// scheme and re-sealed bound, in one transaction that only writes if the row still holds
    /// that value (an older replica may have written it after this one started).
    pub async fn gateway_credentials(
        &self,
        id: &str,
        secrets: &SecretBox,
    ) -> Result<Option<Credentials>, StoreError> {
        let row = sqlx::query("SELECT url, auth_type, auth_sealed FROM gateways WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            })?;
        let auth: String = row.try_get("auth_type")?;
        let sealed: Option<String> = row.try_get("auth_sealed")?;
        let (AuthType::Bearer | AuthType::Basic | AuthType::Headers, Some(sealed)) = (
            AuthType::parse(&auth)
                .ok_or_else(|| StoreError::Corrupt(format!("auth_type {auth:?}")))?,
            sealed,
        ) else {
            return Ok(None);
        };
        let url: String = row.try_get("url")?;
        let origin = UpstreamUrl::from_stored(&url)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .origin();
        let binding = CredentialBinding {
            gateway_id: id,
            origin: &origin,
        };
        if SecretBox::is_legacy(&sealed) {
            let creds = secrets.open_legacy_credentials(&sealed)?;
            self.reseal(id, &sealed, &secrets.seal_credentials(&creds, binding)?)
                .await?;
            return Ok(Some(creds));
        }
        let (creds, stale) = secrets.open_current_or_previous(&sealed, binding)?;
        if stale {
            self.reseal(id, &sealed, &secrets.seal_credentials(&creds, binding)?)
                .await?;
        }
        Ok(Some(creds))
    }

    /// Replaces `old` with `new` if the row still holds `old` (bookkeeping: the registry
    /// version does not move, nothing a snapshot holds changed).
    async fn reseal(&self, id: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done =
            sqlx::query("UPDATE gateways SET auth_sealed = $1 WHERE id = $2 AND auth_sealed = $3")
                .bind(new)
                .bind(id)
                .bind(old)
                .execute(tx.conn())
                .await?;
        tx.commit_quiet().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Re-seals, in one transaction (at start), every credential not sealed with the current
    /// key as it should be: first-format (`v1:`) values, bound to their gateway and origin,
    /// and values sealed with a previous key (a rotation), with the current one. A value
    /// that opens with no known key is left as it is and reported: the gateway's refreshes
    /// fail until its credentials are given again. Returns how many were re-sealed.
    pub async fn reseal_credentials(&self, secrets: &SecretBox) -> Result<u32, StoreError> {
        let mut tx = self.begin_write().await?;
        let rows =
            sqlx::query("SELECT id, url, auth_sealed FROM gateways WHERE auth_sealed IS NOT NULL")
                .fetch_all(tx.conn())
                .await?;
        let mut done = 0;
        for r in &rows {
            let id: String = r.try_get("id")?;
            let sealed: String = r.try_get("auth_sealed")?;
            let url: String = r.try_get("url")?;
            let resealed = UpstreamUrl::from_stored(&url)
                .map_err(|e| e.to_string())
                .and_then(|u| {
                    let origin = u.origin();
                    let binding = CredentialBinding {
                        gateway_id: &id,
                        origin: &origin,
                    };
                    let creds = if SecretBox::is_legacy(&sealed) {
                        secrets.open_legacy_credentials(&sealed)
                    } else {
                        match secrets.open_current_or_previous(&sealed, binding) {
                            Ok((_, false)) => return Ok(None),
                            Ok((creds, true)) => Ok(creds),
                            Err(e) => Err(e),
                        }
                    }
                    .map_err(|e| e.to_string())?;
                    secrets
                        .seal_credentials(&creds, binding)
                        .map(Some)
                        .map_err(|e| e.to_string())
                });
            match resealed {
                Ok(None) => {}
                Ok(Some(new)) => {
                    sqlx::query("UPDATE gateways SET auth_sealed = $1 WHERE id = $2")
                        .bind(new)
                        .bind(&id)
                        .execute(tx.conn())
                        .await?;
                    done += 1;
                }
                Err(e) => {
                    tracing::warn!(gateway = %id, error = %e, "stored credentials not re-sealed")
                }
            }
        }
        // Token-exchange client secrets, bound to their gateway.
        let rows = sqlx::query(
            "SELECT id, identity_sealed FROM gateways WHERE identity_sealed IS NOT NULL",
        )
        .fetch_all(tx.conn())
        .await?;
        for r in &rows {
            let id: String = r.try_get("id")?;
            let sealed: String = r.try_get("identity_sealed")?;
            let label = crate::model::CLIENT_SECRET_LABEL;
            match secrets.open_for(label, id.as_bytes(), &sealed) {
                Ok((_, false)) => {}
                Ok((plain, true)) => {
                    let new = secrets.seal_for(label, id.as_bytes(), &plain)?;
                    sqlx::query("UPDATE gateways SET identity_sealed = $1 WHERE id = $2")
                        .bind(new)
                        .bind(&id)
                        .execute(tx.conn())
                        .await?;
                    done += 1;
                }
                Err(e) => {
                    tracing::warn!(gateway = %id, error = %e, "token exchange client secret not re-sealed")
                }
            }
        }
        tx.commit_quiet().await?;
        if done > 0 {
            tracing::info!(
                count = done,
                "re-sealed stored credentials with the current key, bound to their gateway and origin"
            );
        }
        Ok(done)
    }

    /// The sealed token-exchange client secret of a gateway, if it has one.
    pub async fn gateway_identity_secret(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT identity_sealed FROM gateways WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            })?;
        Ok(row.try_get("identity_sealed")?)
    }

    /// Sealed credentials of a gateway: `(auth_type, sealed)`.
    pub async fn gateway_auth(&self, id: &str) -> Result<(AuthType, Option<String>), StoreError> {
        let row = sqlx::query("SELECT auth_type, auth_sealed FROM gateways WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            })?;
        let t: String = row.try_get("auth_type")?;
        Ok((
            AuthType::parse(&t).ok_or_else(|| StoreError::Corrupt(format!("auth_type {t:?}")))?,
            row.try_get("auth_sealed")?,
        ))
    }

    /// A page of gateways, ordered by name (rows that do not parse left out).
    pub async fn list_gateways(&self, q: &ListFilter) -> Result<Page<Gateway>, StoreError> {
        let l = ListSql::new(q, false)?;
        let sql = format!("SELECT {COLS} FROM gateways{}", l.tail());
        let rows = bind_all(sqlx::query(&sql), &l.args)
            .fetch_all(self.pool())
            .await?;
        l.page(rows, |r| self.keep_parsed("gateways", r, row_to_gateway(r)))
    }

    /// Every gateway (for health checks, export, snapshots); rows that do not parse are
    /// left out.
    pub async fn all_gateways(&self) -> Result<Vec<Gateway>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM gateways ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| self.keep_parsed("gateways", r, row_to_gateway(r)))
            .collect())
    }

    /// Applies a partial update with optimistic concurrency. Disabling or enabling a
    /// gateway does the same to its items (as ContextForge does).
    pub async fn update_gateway(&self, id: &str, p: GatewayPatch) -> Result<Gateway, StoreError> {
        let mut tx = self.begin_write().await?;
        self.update_gateway_tx(&mut tx, id, p).await?;
        tx.commit().await?;
        self.get_gateway(id).await
    }

    /// [`Store::update_gateway`] in an open write transaction.
    pub(crate) async fn update_gateway_tx(
        &self,
        tx: &mut WriteTx<'_>,
        id: &str,
        p: GatewayPatch,
    ) -> Result<(), StoreError> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM gateways WHERE id = $1"))
            .bind(id)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            })?;
        let cur = row_to_gateway(&row)?;
        if let Some(expected) = p.expected_version
            && expected != cur.version
        {
            return Err(StoreError::VersionConflict {
                kind: "gateway",
                id: id.to_owned(),
                expected,
                current: cur.version,
            });
        }
        if let Some(url) = &p.url
            && p.auth.is_none()
        {
            cur.check_move(url)?;
        }
        let name = p.name.unwrap_or(cur.name);
        let url = p.url.unwrap_or(cur.url);
        let tags = p.tags.unwrap_or(cur.tags);
        let enabled = p.enabled.unwrap_or(cur.enabled);
        let transport = p.transport.unwrap_or(cur.transport);
        let description = p.description.or(cur.description);
        let done = match p.auth {
            Some((t, sealed)) => {
                sqlx::query(
                    "UPDATE gateways SET name = $1, url = $2, transport = $3, description = $4, tags = $5, \
                     enabled = $6, auth_type = $7, auth_sealed = $8, updated_at = $9, version = version + 1 \
                     WHERE id = $10 AND version = $11",
                )
                .bind(name.as_str())
                .bind(url.as_str())
                .bind(transport.as_str())
                .bind(description)
                .bind(tags.to_json())
                .bind(i64::from(enabled))
                .bind(t.as_str())
                .bind(sealed)
                .bind(now())
                .bind(id)
                .bind(cur.version)
                .execute(tx.conn())
                .await
            }
            None => {
                sqlx::query(
                    "UPDATE gateways SET name = $1, url = $2, transport = $3, description = $4, tags = $5, \
                     enabled = $6, updated_at = $7, version = version + 1 WHERE id = $8 AND version = $9",
                )
                .bind(name.as_str())
                .bind(url.as_str())
                .bind(transport.as_str())
                .bind(description)
                .bind(tags.to_json())
                .bind(i64::from(enabled))
                .bind(now())
                .bind(id)
                .bind(cur.version)
                .execute(tx.conn())
                .await
            }
        }
        .map_err(map_unique("gateway", name.as_str()))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::VersionConflict {
                kind: "gateway",
                id: id.to_owned(),
                expected: cur.version,
                current: cur.version + 1,
            });
        }
        if let Some((identity, sealed)) = p.identity {
            // Mode token-exchange without a new secret keeps the stored one (there must be
            // one); any other mode drops it.
            let keep =
                sealed.is_none() && identity.mode == crate::model::IdentityMode::TokenExchange;
            if keep {
                let stored: Option<String> =
                    sqlx::query("SELECT identity_sealed FROM gateways WHERE id = $1")
                        .bind(id)
                        .fetch_one(tx.conn())
                        .await?
                        .try_get("identity_sealed")?;
                if stored.is_none() {
                    return Err(crate::model::FieldInvalid::new(
                        "identity.client_secret",
                        "required with mode token-exchange (none is stored)",
                    )
                    .into());
                }
                sqlx::query("UPDATE gateways SET identity = $1 WHERE id = $2")
                    .bind(identity.to_json())
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
            } else {
                sqlx::query(
                    "UPDATE gateways SET identity = $1, identity_sealed = $2 WHERE id = $3",
                )
                .bind(identity.to_json())
                .bind(sealed)
                .bind(id)
                .execute(tx.conn())
                .await?;
            }
        }
        if enabled != cur.enabled {
            for kind in crate::model::CatalogKind::ALL {
                sqlx::query(&format!(
                    "UPDATE {} SET enabled = $1, updated_at = $2, version = version + 1 WHERE gateway_id = $3",
                    kind.table()
                ))
                .bind(i64::from(enabled))
                .bind(now())
                .bind(id)
                .execute(tx.conn())
                .await?;
            }
        }
        Ok(())
    }

    /// Deletes a gateway and (by cascade) everything discovered from it.
    pub async fn delete_gateway(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM gateways WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a health-check result. Crossing `threshold` failures in a row marks the
    /// gateway and its items unreachable; a success marks them reachable again. Only a
    /// reachability change bumps the registry version.
    pub async fn record_health(
        &self,
        id: &str,
        ok: bool,
        error: Option<&str>,
        threshold: u32,
    ) -> Result<HealthTransition, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT reachable, consecutive_failures FROM gateways WHERE id = $1")
            .bind(id)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "gateway",
                id: id.to_owned(),
            })?;
        let reachable = get_bool(&row, "reachable")?;
        let failures: i64 = row.try_get("consecutive_failures")?;
        let ts = now();
        let transition = if ok {
            sqlx::query(
                "UPDATE gateways SET consecutive_failures = 0, last_seen = $1, last_error = NULL, reachable = 1 WHERE id = $2",
            )
            .bind(&ts)
            .bind(id)
            .execute(tx.conn())
            .await?;
            if reachable {
                HealthTransition::Unchanged
            } else {
                HealthTransition::BecameReachable
            }
        } else {
            let failures = failures + 1;
            let down = failures >= i64::from(threshold.max(1));
            sqlx::query(
                "UPDATE gateways SET consecutive_failures = $1, last_error = $2, reachable = $3 WHERE id = $4",
            )
            .bind(failures)
            .bind(error.map(str::to_owned))
            .bind(i64::from(reachable && !down))
            .bind(id)
            .execute(tx.conn())
            .await?;
            if reachable && down {
                HealthTransition::BecameUnreachable
            } else {
                HealthTransition::Unchanged
            }
        };
        match transition {
            HealthTransition::Unchanged => tx.commit_quiet().await?,
            HealthTransition::BecameReachable | HealthTransition::BecameUnreachable => {
                let flag = i64::from(transition == HealthTransition::BecameReachable);
                for kind in crate::model::CatalogKind::ALL {
                    sqlx::query(&format!(
                        "UPDATE {} SET reachable = $1 WHERE gateway_id = $2",
                        kind.table()
                    ))
                    .bind(flag)
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                }
                sqlx::query("UPDATE gateways SET updated_at = $1 WHERE id = $2")
                    .bind(&ts)
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(transition)
    }

    /// Records a failed discovery without touching the catalog.
    pub async fn record_sync_error(&self, id: &str, error: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE gateways SET last_error = $1 WHERE id = $2")
            .bind(error)
            .bind(id)
            .execute(tx.conn())
            .await?;
        tx.commit_quiet().await
    }
}
