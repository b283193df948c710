//! Login through OpenID Connect providers: pending logins (single use), the link of a
//! provider's subject to a user, and what a provider's group mapping granted.
//!
//! Like the rest of identity, these writes do not bump the registry version.

use sqlx::Row;

use super::{Store, StoreError, map_unique, new_id, now};
use crate::auth::rbac::Role;

/// A login waiting for its callback, or a CLI handoff code waiting for its exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// The hash of the `state` (or `handoff:` and the hash of the handoff code).
    pub key: String,
    /// The provider's name.
    pub provider: String,
    /// The nonce sent in the authorization request.
    pub nonce: String,
    /// The PKCE verifier of the authorization request.
    pub code_verifier: String,
    /// The CLI's loopback redirect.
    pub return_to: Option<String>,
    /// The CLI's PKCE challenge (S256).
    pub client_challenge: Option<String>,
    /// A handoff's user.
    pub user_id: Option<String>,
    /// Expiry (RFC 3339).
    pub expires_at: String,
}

/// A membership or global role a group mapping grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedGrant {
    /// The team (`None`: global scope).
    pub team: Option<String>,
    /// The role.
    pub role: Role,
}

impl Store {
    /// Stores a pending login (and forgets expired ones).
    pub async fn insert_oidc_login(&self, p: &PendingLogin) -> Result<(), StoreError> {
        let ts = now();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM oidc_logins WHERE expires_at < $1")
            .bind(&ts)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO oidc_logins (login_key, provider, nonce, code_verifier, return_to, \
             client_challenge, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&p.key)
        .bind(&p.provider)
        .bind(&p.nonce)
        .bind(&p.code_verifier)
        .bind(&p.return_to)
        .bind(&p.client_challenge)
        .bind(&p.user_id)
        .bind(&ts)
        .bind(&p.expires_at)
        .execute(tx.conn())
        .await
        .map_err(map_unique("login", "state"))?;
        tx.commit_quiet().await
    }

    /// Takes the pending login of `key` if it has not expired: it is deleted, so of two
    /// concurrent callbacks with one state only one gets it.
    pub async fn take_oidc_login(&self, key: &str) -> Result<Option<PendingLogin>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT login_key, provider, nonce, code_verifier, return_to, client_challenge, \
             user_id, expires_at FROM oidc_logins WHERE login_key = $1",
        )
        .bind(key)
        .fetch_optional(tx.conn())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let gone = sqlx::query("DELETE FROM oidc_logins WHERE login_key = $1")
            .bind(key)
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit_quiet().await?;
        let p = PendingLogin {
            key: row.try_get("login_key")?,
            provider: row.try_get("provider")?,
            nonce: row.try_get("nonce")?,
            code_verifier: row.try_get("code_verifier")?,
            return_to: row.try_get("return_to")?,
            client_challenge: row.try_get("client_challenge")?,
            user_id: row.try_get("user_id")?,
            expires_at: row.try_get("expires_at")?,
        };
        Ok((gone == 1 && p.expires_at.as_str() > now().as_str()).then_some(p))
    }

    /// The user a provider's subject is linked to.
    pub async fn find_oidc_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<String>, StoreError> {
        let row =
            sqlx::query("SELECT user_id FROM oidc_identities WHERE provider = $1 AND subject = $2")
                .bind(provider)
                .bind(subject)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.try_get("user_id")).transpose()?)
    }

    /// Links a provider's subject to a user.
    pub async fn link_oidc_identity(
        &self,
        provider: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<(), StoreError> {
        let ts = now();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO oidc_identities (provider, subject, user_id, created_at, last_login_at) \
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(provider)
        .bind(subject)
        .bind(user_id)
        .bind(&ts)
        .execute(tx.conn())
        .await
        .map_err(map_unique("identity", subject))?;
        tx.commit_quiet().await
    }

    /// Records a login of a linked subject.
    pub async fn touch_oidc_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE oidc_identities SET last_login_at = $1 WHERE provider = $2 AND subject = $3",
        )
        .bind(now())
        .bind(provider)
        .bind(subject)
        .execute(tx.conn())
        .await?;
        tx.commit_quiet().await
    }

    /// The id of the (non-personal) team named `name`, made when missing.
    pub async fn ensure_team(&self, name: &str) -> Result<String, StoreError> {
        let find = || async {
            let row = sqlx::query("SELECT id FROM teams WHERE name = $1 AND personal = 0")
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
            Ok::<_, StoreError>(row.map(|r| r.try_get::<String, _>("id")).transpose()?)
        };
        if let Some(id) = find().await? {
            return Ok(id);
        }
        let id = new_id();
        let ts = now();
        let mut tx = self.begin_write().await?;
        let made = sqlx::query(
            "INSERT INTO teams (id, name, description, personal, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, 0, NULL, $4, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind("Made for an OpenID provider's group mapping")
        .bind(&ts)
        .execute(tx.conn())
        .await
        .map_err(map_unique("team", name));
        match made {
            Ok(_) => {
                tx.commit_quiet().await?;
                Ok(id)
            }
            // Made meanwhile by another login (or it is someone's personal team name).
            Err(StoreError::Duplicate { .. }) => {
                drop(tx);
                find().await?.ok_or_else(|| {
                    StoreError::invalid("group_teams", format!("{name} is a personal team"))
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Makes what `provider`'s mapping grants `user_id` equal to `grants`: adds what is
    /// missing, takes back what an earlier login's mapping gave and this one does not. A
    /// membership or role granted by hand is never changed or removed; the last active
    /// platform admin keeps the role.
    pub async fn sync_oidc_grants(
        &self,
        user_id: &str,
        provider: &str,
        grants: &[MappedGrant],
    ) -> Result<(), StoreError> {
        let ts = now();
        let mut tx = self.begin_write().await?;
        let before: Vec<(String, String)> = sqlx::query(
            "SELECT team_id, role FROM oidc_mapped_grants WHERE user_id = $1 AND provider = $2",
        )
        .bind(user_id)
        .bind(provider)
        .fetch_all(tx.conn())
        .await?
        .iter()
        .map(|r| Ok((r.try_get("team_id")?, r.try_get("role")?)))
        .collect::<Result<_, StoreError>>()?;
        let key = |g: &MappedGrant| {
            (
                g.team.clone().unwrap_or_default(),
                g.role.as_str().to_owned(),
            )
        };
        let wanted: Vec<(String, String)> = grants.iter().map(key).collect();
        // Take back what the mapping gave before and gives no more (still as it gave it).
        for (team, role) in before.iter().filter(|b| !wanted.contains(b)) {
            if team.is_empty() {
                if role == Role::PlatformAdmin.as_str() {
                    let others = sqlx::query(
                        "SELECT COUNT(*) AS n FROM user_roles r JOIN users u ON u.id = r.user_id \
                         WHERE r.role = 'platform_admin' AND u.active = 1 AND u.id <> $1",
                    )
                    .bind(user_id)
                    .fetch_one(tx.conn())
                    .await?
                    .try_get::<i64, _>("n")?;
                    if others == 0 {
                        tracing::warn!(%user_id, "the group mapping no longer grants platform_admin, but this is the last active platform admin: kept");
                        continue;
                    }
                }
                sqlx::query("DELETE FROM user_roles WHERE user_id = $1 AND role = $2")
                    .bind(user_id)
                    .bind(role)
                    .execute(tx.conn())
                    .await?;
            } else if !wanted.iter().any(|(t, _)| t == team) {
                sqlx::query(
                    "DELETE FROM team_members WHERE team_id = $1 AND user_id = $2 AND role = $3",
                )
                .bind(team)
                .bind(user_id)
                .bind(role)
                .execute(tx.conn())
                .await?;
            }
        }
        sqlx::query("DELETE FROM oidc_mapped_grants WHERE user_id = $1 AND provider = $2")
            .bind(user_id)
            .bind(provider)
            .execute(tx.conn())
            .await?;
        for (team, role) in &wanted {
            let applied = if team.is_empty() {
                let has =
                    sqlx::query("SELECT 1 AS x FROM user_roles WHERE user_id = $1 AND role = $2")
                        .bind(user_id)
                        .bind(role)
                        .fetch_optional(tx.conn())
                        .await?;
                let given_before = before.contains(&(team.clone(), role.clone()));
                if has.is_none() {
                    sqlx::query(
                        "INSERT INTO user_roles (user_id, role, created_at) VALUES ($1, $2, $3)",
                    )
                    .bind(user_id)
                    .bind(role)
                    .bind(&ts)
                    .execute(tx.conn())
                    .await?;
                }
                has.is_none() || given_before
            } else {
                let current = sqlx::query(
                    "SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2",
                )
                .bind(team)
                .bind(user_id)
                .fetch_optional(tx.conn())
                .await?
                .map(|r| r.try_get::<String, _>("role"))
                .transpose()?;
                let given_before = before
                    .iter()
                    .any(|(t, r)| t == team && Some(r) == current.as_ref());
                match current {
                    None => {
                        sqlx::query(
                            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(team)
                        .bind(user_id)
                        .bind(role)
                        .bind(&ts)
                        .execute(tx.conn())
                        .await?;
                        true
                    }
                    // The mapping's own membership follows the mapping's role.
                    Some(_) if given_before => {
                        sqlx::query(
                            "UPDATE team_members SET role = $1 WHERE team_id = $2 AND user_id = $3",
                        )
                        .bind(role)
                        .bind(team)
                        .bind(user_id)
                        .execute(tx.conn())
                        .await?;
                        true
                    }
                    // Granted by hand: left as it is, and not the mapping's to take back.
                    Some(_) => false,
                }
            };
            if applied {
                sqlx::query(
                    "INSERT INTO oidc_mapped_grants (user_id, provider, team_id, role, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(user_id)
                .bind(provider)
                .bind(team)
                .bind(role)
                .bind(&ts)
                .execute(tx.conn())
                .await?;
            }
        }
        tx.commit_quiet().await
    }
}
