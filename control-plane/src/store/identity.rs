//! Users, teams, role grants, invitations, API tokens, signing keys, revoked session
//! tokens, login failures, and who owns each registry item.
//!
//! Identity writes commit without bumping the registry version (no snapshot holds them);
//! a change of an item's owner or visibility bumps it.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, map_unique, new_id, now};
use crate::auth::rbac::{Grant, Ownership, Role, Visibility};

/// A user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: String,
    /// Email (lower case; unique).
    pub email: String,
    /// Display name.
    pub full_name: Option<String>,
    /// Whether the user may sign in and use tokens.
    pub active: bool,
    /// Whether a password is set.
    pub has_password: bool,
    /// Roles at global scope.
    pub global_roles: Vec<Role>,
    /// The personal team's id.
    pub personal_team: Option<String>,
    /// When the password was last set (sessions signed before are refused).
    pub password_changed_at: Option<String>,
    /// Created.
    pub created_at: String,
}

/// A user with the password hash (for login only).
#[derive(Debug, Clone)]
pub struct UserLogin {
    /// The user.
    pub user: User,
    /// PHC string.
    pub password_hash: Option<String>,
}

/// A team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    /// Id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// A user's personal team.
    pub personal: bool,
    /// Created.
    pub created_at: String,
}

/// A member of a team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// User id.
    pub user_id: String,
    /// Email.
    pub email: String,
    /// Role in the team.
    pub role: Role,
}

/// An invitation to a team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// Id.
    pub id: String,
    /// Team.
    pub team_id: String,
    /// Invited email.
    pub email: String,
    /// Role on acceptance.
    pub role: Role,
    /// Who invited.
    pub invited_by: Option<String>,
    /// Created.
    pub created_at: String,
    /// Expires.
    pub expires_at: String,
}

/// An API token's stored record (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Name (unique per user).
    pub name: String,
    /// Scopes (JSON, `auth::token::Scopes`).
    pub scopes: String,
    /// Expiry.
    pub expires_at: Option<String>,
    /// When revoked.
    pub revoked_at: Option<String>,
    /// Last use (to the minute).
    pub last_used_at: Option<String>,
    /// Created.
    pub created_at: String,
}

/// A stored signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Key id.
    pub kid: String,
    /// JOSE algorithm.
    pub alg: String,
    /// Sealed private half (ES256), if any.
    pub sealed_key: Option<String>,
    /// Public JWK (ES256, RS256).
    pub public_jwk: Option<String>,
    /// Created.
    pub created_at: String,
    /// When it stopped signing (`None`: it signs).
    pub retired_at: Option<String>,
}

/// The registry kinds that have an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnedKind {
    /// Gateways.
    Gateway,
    /// Tools.
    Tool,
    /// Resources.
    Resource,
    /// Prompts.
    Prompt,
    /// Virtual servers.
    Server,
}

impl OwnedKind {
    /// Its table.
    pub fn table(self) -> &'static str {
        match self {
            OwnedKind::Gateway => "gateways",
            OwnedKind::Tool => "tools",
            OwnedKind::Resource => "resources",
            OwnedKind::Prompt => "prompts",
            OwnedKind::Server => "servers",
        }
    }

    /// Its label in errors.
    pub fn label(self) -> &'static str {
        match self {
            OwnedKind::Gateway => "gateway",
            OwnedKind::Tool => "tool",
            OwnedKind::Resource => "resource",
            OwnedKind::Prompt => "prompt",
            OwnedKind::Server => "server",
        }
    }

    /// Whether its rows may follow a gateway.
    pub fn follows_gateway(self) -> bool {
        matches!(
            self,
            OwnedKind::Tool | OwnedKind::Resource | OwnedKind::Prompt
        )
    }
}

fn role(row: &AnyRow, col: &str) -> Result<Role, StoreError> {
    let raw: String = row.try_get(col)?;
    Role::parse(&raw).ok_or_else(|| StoreError::Corrupt(format!("{col}: unknown role {raw:?}")))
}

fn ownership(row: &AnyRow) -> Result<Ownership, StoreError> {
    let vis: String = row.try_get("visibility")?;
    Ok(Ownership {
        team: row.try_get("owner_team")?,
        user: row.try_get("owner_user")?,
        visibility: Visibility::parse(&vis)
            .ok_or_else(|| StoreError::Corrupt(format!("visibility {vis:?}")))?,
    })
}

const USER_COLS: &str =
    "id, email, full_name, password_hash, active, password_changed_at, created_at";

/// Fails, naming `field`, when the change in `conn`'s transaction would leave the platform
/// without an active platform admin.
async fn still_an_admin(
    conn: &mut sqlx::AnyConnection,
    field: &'static str,
) -> Result<(), StoreError> {
    let admins = sqlx::query(
        "SELECT COUNT(*) AS n FROM user_roles r JOIN users u ON u.id = r.user_id \
         WHERE r.role = 'platform_admin' AND u.active = 1",
    )
    .fetch_one(conn)
    .await?;
    if admins.try_get::<i64, _>("n")? == 0 {
        return Err(StoreError::invalid(
            field,
            "this would leave no active platform_admin",
        ));
    }
    Ok(())
}

impl Store {
    async fn user_from_row(&self, row: &AnyRow) -> Result<UserLogin, StoreError> {
        let id: String = row.try_get("id")?;
        let roles = sqlx::query("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role")
            .bind(&id)
            .fetch_all(self.pool())
            .await?;
        let personal = sqlx::query(
            "SELECT t.id FROM teams t JOIN team_members m ON m.team_id = t.id \
             WHERE m.user_id = $1 AND t.personal = 1",
        )
        .bind(&id)
        .fetch_optional(self.pool())
        .await?;
        let password_hash: Option<String> = row.try_get("password_hash")?;
        Ok(UserLogin {
            user: User {
                email: row.try_get("email")?,
                full_name: row.try_get("full_name")?,
                active: super::get_bool(row, "active")?,
                has_password: password_hash.is_some(),
                global_roles: roles
                    .iter()
                    .map(|r| role(r, "role"))
                    .collect::<Result<_, _>>()?,
                personal_team: personal.map(|r| r.try_get("id")).transpose()?,
                password_changed_at: row.try_get("password_changed_at")?,
                created_at: row.try_get("created_at")?,
                id,
            },
            password_hash,
        })
    }

    /// Creates a user with its personal team (of which it is `team_admin`) and `roles` at
    /// global scope.
    pub async fn create_user(
        &self,
        email: &str,
        full_name: Option<&str>,
        password_hash: Option<&str>,
        roles: &[Role],
    ) -> Result<User, StoreError> {
        let id = new_id();
        let team_id = new_id();
        let ts = now();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (id, email, full_name, password_hash, active, password_changed_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $5, $5)",
        )
        .bind(&id)
        .bind(email)
        .bind(full_name)
        .bind(password_hash)
        .bind(&ts)
        .execute(tx.conn())
        .await
        .map_err(map_unique("user", email))?;
        sqlx::query(
            "INSERT INTO teams (id, name, description, personal, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, 1, $4, $5, $5)",
        )
        .bind(&team_id)
        .bind(format!("personal:{email}"))
        .bind(format!("Personal team of {email}"))
        .bind(&id)
        .bind(&ts)
        .execute(tx.conn())
        .await
        .map_err(map_unique("team", &format!("personal:{email}")))?;
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&team_id)
        .bind(&id)
        .bind(Role::TeamAdmin.as_str())
        .bind(&ts)
        .execute(tx.conn())
        .await?;
        for r in roles {
            sqlx::query("INSERT INTO user_roles (user_id, role, created_at) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(r.as_str())
                .bind(&ts)
                .execute(tx.conn())
                .await?;
        }
        tx.commit_quiet().await?;
        self.get_user(&id).await
    }

    /// One user.
    pub async fn get_user(&self, id: &str) -> Result<User, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "user",
                id: id.to_owned(),
            })?;
        Ok(self.user_from_row(&row).await?.user)
    }

    /// A user by email, with the password hash.
    pub async fn find_user_login(&self, email: &str) -> Result<Option<UserLogin>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE email = $1"))
            .bind(email)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(r) => Ok(Some(self.user_from_row(&r).await?)),
            None => Ok(None),
        }
    }

    /// A user's password hash.
    pub async fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "user",
                id: user_id.to_owned(),
            })?;
        Ok(row.try_get("password_hash")?)
    }

    /// Every user, by email.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY email"))
            .fetch_all(self.pool())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.user_from_row(r).await?.user);
        }
        Ok(out)
    }

    /// Sets a user's password hash.
    pub async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE users SET password_hash = $1, password_changed_at = $2, updated_at = $2 WHERE id = $3",
        )
        .bind(hash)
        .bind(now())
        .bind(user_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                id: user_id.to_owned(),
            });
        }
        tx.commit_quiet().await
    }

    /// Changes a user's name, activity and global roles (each when given).
    pub async fn update_user(
        &self,
        user_id: &str,
        full_name: Option<Option<&str>>,
        active: Option<bool>,
        roles: Option<&[Role]>,
    ) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query("SELECT id FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(tx.conn())
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                kind: "user",
                id: user_id.to_owned(),
            });
        }
        let ts = now();
        if let Some(name) = full_name {
            sqlx::query("UPDATE users SET full_name = $1, updated_at = $2 WHERE id = $3")
                .bind(name)
                .bind(&ts)
                .bind(user_id)
                .execute(tx.conn())
                .await?;
        }
        if let Some(a) = active {
            sqlx::query("UPDATE users SET active = $1, updated_at = $2 WHERE id = $3")
                .bind(i64::from(a))
                .bind(&ts)
                .bind(user_id)
                .execute(tx.conn())
                .await?;
        }
        if let Some(roles) = roles {
            sqlx::query("DELETE FROM user_roles WHERE user_id = $1")
                .bind(user_id)
                .execute(tx.conn())
                .await?;
            for r in roles {
                sqlx::query(
                    "INSERT INTO user_roles (user_id, role, created_at) VALUES ($1, $2, $3)",
                )
                .bind(user_id)
                .bind(r.as_str())
                .bind(&ts)
                .execute(tx.conn())
                .await?;
            }
        }
        // Never leave the platform without an active admin.
        still_an_admin(tx.conn(), "global_roles").await?;
        tx.commit_quiet().await?;
        self.get_user(user_id).await
    }

    /// Deletes a user (its personal team, memberships and tokens with it). Items it owned
    /// stay with their teams.
    pub async fn delete_user(&self, user_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let personal: Vec<String> = sqlx::query(
            "SELECT t.id FROM teams t JOIN team_members m ON m.team_id = t.id \
             WHERE m.user_id = $1 AND t.personal = 1",
        )
        .bind(user_id)
        .fetch_all(tx.conn())
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
        for t in &personal {
            if owns_items(tx.conn(), t).await? {
                return Err(StoreError::invalid(
                    "user",
                    "the user's personal team still owns registry items: delete them or move them to another team first",
                ));
            }
        }
        let n = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                id: user_id.to_owned(),
            });
        }
        for t in &personal {
            sqlx::query("DELETE FROM teams WHERE id = $1")
                .bind(t)
                .execute(tx.conn())
                .await?;
        }
        still_an_admin(tx.conn(), "user").await?;
        tx.commit_quiet().await
    }

    /// How many active platform admins exist.
    pub async fn count_platform_admins(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM user_roles r JOIN users u ON u.id = r.user_id \
             WHERE r.role = 'platform_admin' AND u.active = 1",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Every role a user holds: global ones and one per team.
    pub async fn grants(&self, user_id: &str) -> Result<Vec<Grant>, StoreError> {
        let mut out = Vec::new();
        for r in sqlx::query("SELECT role FROM user_roles WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(self.pool())
            .await?
        {
            out.push(Grant {
                role: role(&r, "role")?,
                team: None,
            });
        }
        for r in sqlx::query("SELECT team_id, role FROM team_members WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(self.pool())
            .await?
        {
            out.push(Grant {
                role: role(&r, "role")?,
                team: Some(r.try_get("team_id")?),
            });
        }
        Ok(out)
    }

    // ---- teams ----------------------------------------------------------------------

    fn team_from_row(row: &AnyRow) -> Result<Team, StoreError> {
        Ok(Team {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            personal: super::get_bool(row, "personal")?,
            created_at: row.try_get("created_at")?,
        })
    }

    /// Creates a team with `creator` as its `team_admin`.
    pub async fn create_team(
        &self,
        name: &str,
        description: Option<&str>,
        creator: &str,
    ) -> Result<Team, StoreError> {
        let id = new_id();
        let ts = now();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO teams (id, name, description, personal, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, 0, $4, $5, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(description)
        .bind(creator)
        .bind(&ts)
        .execute(tx.conn())
        .await
        .map_err(map_unique("team", name))?;
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(creator)
        .bind(Role::TeamAdmin.as_str())
        .bind(&ts)
        .execute(tx.conn())
        .await?;
        tx.commit_quiet().await?;
        self.get_team(&id).await
    }

    /// One team.
    pub async fn get_team(&self, id: &str) -> Result<Team, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, description, personal, created_at FROM teams WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "team",
            id: id.to_owned(),
        })?;
        Self::team_from_row(&row)
    }

    /// Teams by name: all (`None`), or those `user` is a member of.
    pub async fn list_teams(&self, member: Option<&str>) -> Result<Vec<Team>, StoreError> {
        let rows =
            match member {
                None => sqlx::query(
                    "SELECT id, name, description, personal, created_at FROM teams ORDER BY name",
                )
                .fetch_all(self.pool())
                .await?,
                Some(u) => {
                    sqlx::query(
                        "SELECT t.id, t.name, t.description, t.personal, t.created_at FROM teams t \
                 JOIN team_members m ON m.team_id = t.id WHERE m.user_id = $1 ORDER BY t.name",
                    )
                    .bind(u)
                    .fetch_all(self.pool())
                    .await?
                }
            };
        rows.iter().map(Self::team_from_row).collect()
    }

    /// Renames or describes a team.
    pub async fn update_team(
        &self,
        id: &str,
        name: Option<&str>,
        description: Option<Option<&str>>,
    ) -> Result<Team, StoreError> {
        let team = self.get_team(id).await?;
        if team.personal && name.is_some() {
            return Err(StoreError::invalid(
                "name",
                "a personal team keeps its name",
            ));
        }
        let mut tx = self.begin_write().await?;
        let ts = now();
        if let Some(n) = name {
            sqlx::query("UPDATE teams SET name = $1, updated_at = $2 WHERE id = $3")
                .bind(n)
                .bind(&ts)
                .bind(id)
                .execute(tx.conn())
                .await
                .map_err(map_unique("team", n))?;
        }
        if let Some(d) = description {
            sqlx::query("UPDATE teams SET description = $1, updated_at = $2 WHERE id = $3")
                .bind(d)
                .bind(&ts)
                .bind(id)
                .execute(tx.conn())
                .await?;
        }
        tx.commit_quiet().await?;
        self.get_team(id).await
    }

    /// Deletes a team that owns no registry items (not a personal team, not `global`).
    pub async fn delete_team(&self, id: &str) -> Result<(), StoreError> {
        let team = self.get_team(id).await?;
        if team.personal || id == "global" {
            return Err(StoreError::invalid(
                "id",
                "personal teams and the global team cannot be deleted",
            ));
        }
        let mut tx = self.begin_write().await?;
        if owns_items(tx.conn(), id).await? {
            return Err(StoreError::invalid(
                "id",
                "the team still owns registry items: delete them or move them to another team first",
            ));
        }
        sqlx::query("DELETE FROM teams WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        tx.commit_quiet().await
    }

    /// A team's members, by email.
    pub async fn list_members(&self, team_id: &str) -> Result<Vec<Member>, StoreError> {
        self.get_team(team_id).await?;
        let rows = sqlx::query(
            "SELECT m.user_id, u.email, m.role FROM team_members m JOIN users u ON u.id = m.user_id \
             WHERE m.team_id = $1 ORDER BY u.email",
        )
        .bind(team_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Member {
                    user_id: r.try_get("user_id")?,
                    email: r.try_get("email")?,
                    role: role(r, "role")?,
                })
            })
            .collect()
    }

    /// Adds a member or changes its role.
    pub async fn set_member(
        &self,
        team_id: &str,
        user_id: &str,
        r: Role,
    ) -> Result<(), StoreError> {
        if r == Role::PlatformAdmin {
            return Err(StoreError::invalid(
                "role",
                "platform_admin is a global role, not a team role",
            ));
        }
        let team = self.get_team(team_id).await?;
        if team.personal {
            return Err(StoreError::invalid(
                "team",
                "a personal team has its user as its only member",
            ));
        }
        self.get_user(user_id).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(r.as_str())
        .bind(now())
        .execute(tx.conn())
        .await?;
        last_admin_check(tx.conn(), team_id).await?;
        tx.commit_quiet().await
    }

    /// Removes a member (not the last team admin, not from a personal team).
    pub async fn remove_member(&self, team_id: &str, user_id: &str) -> Result<(), StoreError> {
        let team = self.get_team(team_id).await?;
        if team.personal {
            return Err(StoreError::invalid(
                "team",
                "a personal team keeps its user",
            ));
        }
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "member",
                id: user_id.to_owned(),
            });
        }
        last_admin_check(tx.conn(), team_id).await?;
        tx.commit_quiet().await
    }

    /// Invites `email` to a team (replacing an earlier invitation of the same email).
    pub async fn create_invitation(
        &self,
        team_id: &str,
        email: &str,
        r: Role,
        invited_by: &str,
        expires_at: &str,
    ) -> Result<Invitation, StoreError> {
        let team = self.get_team(team_id).await?;
        if team.personal {
            return Err(StoreError::invalid(
                "team",
                "nobody can be invited to a personal team",
            ));
        }
        if r == Role::PlatformAdmin {
            return Err(StoreError::invalid(
                "role",
                "platform_admin is a global role, not a team role",
            ));
        }
        let id = new_id();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM team_invitations WHERE team_id = $1 AND email = $2")
            .bind(team_id)
            .bind(email)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO team_invitations (id, team_id, email, role, invited_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(team_id)
        .bind(email)
        .bind(r.as_str())
        .bind(invited_by)
        .bind(now())
        .bind(expires_at)
        .execute(tx.conn())
        .await?;
        tx.commit_quiet().await?;
        self.get_invitation(&id).await
    }

    fn invitation_from_row(r: &AnyRow) -> Result<Invitation, StoreError> {
        Ok(Invitation {
            id: r.try_get("id")?,
            team_id: r.try_get("team_id")?,
            email: r.try_get("email")?,
            role: role(r, "role")?,
            invited_by: r.try_get("invited_by")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    }

    /// One invitation.
    pub async fn get_invitation(&self, id: &str) -> Result<Invitation, StoreError> {
        let row = sqlx::query(
            "SELECT id, team_id, email, role, invited_by, created_at, expires_at FROM team_invitations WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "invitation",
            id: id.to_owned(),
        })?;
        Self::invitation_from_row(&row)
    }

    /// Invitations of a team (`team`) or to an email (`email`).
    pub async fn list_invitations(
        &self,
        team: Option<&str>,
        email: Option<&str>,
    ) -> Result<Vec<Invitation>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, team_id, email, role, invited_by, created_at, expires_at FROM team_invitations \
             WHERE ($1 = '' OR team_id = $1) AND ($2 = '' OR email = $2) ORDER BY created_at",
        )
        .bind(team.unwrap_or(""))
        .bind(email.unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(Self::invitation_from_row).collect()
    }

    /// Accepts an invitation for `user_id`: membership with the invited role, invitation gone.
    pub async fn accept_invitation(&self, id: &str, user_id: &str) -> Result<(), StoreError> {
        let inv = self.get_invitation(id).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(&inv.team_id)
            .bind(user_id)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&inv.team_id)
        .bind(user_id)
        .bind(inv.role.as_str())
        .bind(now())
        .execute(tx.conn())
        .await?;
        sqlx::query("DELETE FROM team_invitations WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        last_admin_check(tx.conn(), &inv.team_id).await?;
        tx.commit_quiet().await
    }

    /// Deletes an invitation.
    pub async fn delete_invitation(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM team_invitations WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "invitation",
                id: id.to_owned(),
            });
        }
        tx.commit_quiet().await
    }

    // ---- API tokens -----------------------------------------------------------------

    fn token_from_row(r: &AnyRow) -> Result<TokenRecord, StoreError> {
        Ok(TokenRecord {
            id: r.try_get("id")?,
            user_id: r.try_get("user_id")?,
            name: r.try_get("name")?,
            scopes: r.try_get("scopes")?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
            last_used_at: r.try_get("last_used_at")?,
            created_at: r.try_get("created_at")?,
        })
    }

    /// Stores a new API token (its hash only).
    pub async fn create_token(
        &self,
        user_id: &str,
        name: &str,
        token_hash: &str,
        scopes: &str,
        expires_at: Option<&str>,
    ) -> Result<TokenRecord, StoreError> {
        let id = new_id();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, token_hash, scopes, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(name)
        .bind(token_hash)
        .bind(scopes)
        .bind(expires_at)
        .bind(now())
        .execute(tx.conn())
        .await
        .map_err(map_unique("token", name))?;
        tx.commit_quiet().await?;
        self.get_token(&id).await
    }

    /// One token's record.
    pub async fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let row = sqlx::query(
            "SELECT id, user_id, name, scopes, expires_at, revoked_at, last_used_at, created_at \
             FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "token",
            id: id.to_owned(),
        })?;
        Self::token_from_row(&row)
    }

    /// The token whose secret hashes to `hash`.
    pub async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, user_id, name, scopes, expires_at, revoked_at, last_used_at, created_at \
             FROM api_tokens WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(Self::token_from_row).transpose()
    }

    /// Tokens of a user (`Some`), or every token (`None`), newest first.
    pub async fn list_tokens(&self, user_id: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, name, scopes, expires_at, revoked_at, last_used_at, created_at \
             FROM api_tokens WHERE ($1 = '' OR user_id = $1) ORDER BY created_at DESC, id",
        )
        .bind(user_id.unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(Self::token_from_row).collect()
    }

    /// Revokes a token (idempotent).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit_quiet().await?;
        let t = self.get_token(id).await?;
        if n == 0 && t.revoked_at.is_none() {
            return Err(StoreError::NotFound {
                kind: "token",
                id: id.to_owned(),
            });
        }
        Ok(t)
    }

    /// Revokes every token of `user_id` named `name` (the dev token of a previous start).
    pub async fn revoke_tokens_named(&self, user_id: &str, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM api_tokens WHERE user_id = $1 AND name = $2")
            .bind(user_id)
            .bind(name)
            .execute(tx.conn())
            .await?;
        tx.commit_quiet().await
    }

    /// Records a token's use (callers throttle it).
    pub async fn touch_token(&self, id: &str, at: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    // ---- signing keys and revoked sessions ------------------------------------------

    /// Every stored signing key, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, sealed_key, public_jwk, created_at, retired_at FROM signing_keys \
             ORDER BY created_at DESC, kid",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    kid: r.try_get("kid")?,
                    alg: r.try_get("alg")?,
                    sealed_key: r.try_get("sealed_key")?,
                    public_jwk: r.try_get("public_jwk")?,
                    created_at: r.try_get("created_at")?,
                    retired_at: r.try_get("retired_at")?,
                })
            })
            .collect()
    }

    /// Makes `key` the signing key: every other one retires now, and keys retired before
    /// `forget_before` are deleted.
    pub async fn rotate_signing_key(
        &self,
        key: &KeyRecord,
        forget_before: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let ts = now();
        sqlx::query(
            "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL AND kid <> $2",
        )
        .bind(&ts)
        .bind(&key.kid)
        .execute(tx.conn())
        .await?;
        sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1")
            .bind(forget_before)
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(&key.kid)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_key, public_jwk, created_at, retired_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.sealed_key)
        .bind(&key.public_jwk)
        .bind(&ts)
        .execute(tx.conn())
        .await?;
        tx.commit_quiet().await
    }

    /// Revokes a session JWT until it would have expired anyway.
    pub async fn revoke_jwt(&self, jti: &str, expires_at: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM revoked_jwts WHERE expires_at < $1")
            .bind(now())
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM revoked_jwts WHERE jti = $1")
            .bind(jti)
            .execute(tx.conn())
            .await?;
        sqlx::query("INSERT INTO revoked_jwts (jti, expires_at) VALUES ($1, $2)")
            .bind(jti)
            .bind(expires_at)
            .execute(tx.conn())
            .await?;
        // The edge refuses revoked tokens too (snapshot `auth.revoked`): republish.
        tx.commit().await.map(drop)
    }

    /// Whether a session JWT was revoked.
    pub async fn jwt_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT jti FROM revoked_jwts WHERE jti = $1")
            .bind(jti)
            .fetch_optional(self.pool())
            .await?
            .is_some())
    }

    // ---- login failures -------------------------------------------------------------

    /// Until when `email` is locked out (RFC 3339), if it is.
    pub async fn locked_until(&self, email: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT locked_until FROM login_failures WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await?;
        Ok(row
            .map(|r| r.try_get::<Option<String>, _>("locked_until"))
            .transpose()?
            .flatten()
            .filter(|until| until.as_str() > now().as_str()))
    }

    /// Counts a failed login of `email`; at `max` failures in a row it is locked until
    /// `lock_until` (and the count starts again). Returns the lock, if one was set.
    pub async fn record_login_failure(
        &self,
        email: &str,
        max: u32,
        lock_until: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let ts = now();
        let row = sqlx::query("SELECT failures FROM login_failures WHERE email = $1")
            .bind(email)
            .fetch_optional(tx.conn())
            .await?;
        let failures = match &row {
            Some(r) => r.try_get::<i64, _>("failures")? + 1,
            None => 1,
        };
        let locked = failures >= i64::from(max);
        let (count, until) = if locked {
            (0, Some(lock_until.to_owned()))
        } else {
            (failures, None)
        };
        if row.is_some() {
            sqlx::query(
                "UPDATE login_failures SET failures = $1, locked_until = COALESCE($2, locked_until), updated_at = $3 WHERE email = $4",
            )
            .bind(count)
            .bind(until.as_deref())
            .bind(&ts)
            .bind(email)
            .execute(tx.conn())
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO login_failures (email, failures, locked_until, updated_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(email)
            .bind(count)
            .bind(until.as_deref())
            .bind(&ts)
            .execute(tx.conn())
            .await?;
        }
        tx.commit_quiet().await?;
        Ok(until)
    }

    /// Forgets `email`'s failed logins (after a success, or an admin's unlock).
    pub async fn clear_login_failures(&self, email: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM login_failures WHERE email = $1")
            .bind(email)
            .execute(tx.conn())
            .await?;
        tx.commit_quiet().await
    }

    // ---- ownership ------------------------------------------------------------------

    /// Who owns an item (`None`: no such item). Catalog items of a gateway follow it.
    pub async fn ownership(
        &self,
        kind: OwnedKind,
        id: &str,
    ) -> Result<Option<Ownership>, StoreError> {
        let sql = if kind.follows_gateway() {
            format!(
                "SELECT COALESCE(g.owner_team, i.owner_team) AS owner_team, \
                 CASE WHEN g.id IS NULL THEN i.owner_user ELSE g.owner_user END AS owner_user, \
                 COALESCE(g.visibility, i.visibility) AS visibility \
                 FROM {} i LEFT JOIN gateways g ON g.id = i.gateway_id WHERE i.id = $1",
                kind.table()
            )
        } else {
            format!(
                "SELECT owner_team, owner_user, visibility FROM {} WHERE id = $1",
                kind.table()
            )
        };
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(ownership).transpose()
    }

    /// Whether a catalog item belongs to a gateway (and so follows its owner).
    pub async fn follows_gateway(&self, kind: OwnedKind, id: &str) -> Result<bool, StoreError> {
        if !kind.follows_gateway() {
            return Ok(false);
        }
        let row = sqlx::query(&format!(
            "SELECT gateway_id FROM {} WHERE id = $1",
            kind.table()
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row
            .map(|r| r.try_get::<Option<String>, _>("gateway_id"))
            .transpose()?
            .flatten()
            .is_some())
    }

    /// Sets an item's owner and visibility (a registry change: the version moves).
    pub async fn set_ownership(
        &self,
        kind: OwnedKind,
        id: &str,
        owner: &Ownership,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(&format!(
            "UPDATE {} SET owner_team = $1, owner_user = $2, visibility = $3 WHERE id = $4",
            kind.table()
        ))
        .bind(&owner.team)
        .bind(owner.user.as_deref())
        .bind(owner.visibility.as_str())
        .bind(id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: kind.label(),
                id: id.to_owned(),
            });
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Whether a team owns any registry item.
async fn owns_items(conn: &mut sqlx::AnyConnection, team: &str) -> Result<bool, StoreError> {
    for kind in [
        OwnedKind::Gateway,
        OwnedKind::Tool,
        OwnedKind::Resource,
        OwnedKind::Prompt,
        OwnedKind::Server,
    ] {
        let row = sqlx::query(&format!(
            "SELECT id FROM {} WHERE owner_team = $1 LIMIT 1",
            kind.table()
        ))
        .bind(team)
        .fetch_optional(&mut *conn)
        .await?;
        if row.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuses a change that leaves a team without a `team_admin`.
async fn last_admin_check(conn: &mut sqlx::AnyConnection, team: &str) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM team_members WHERE team_id = $1 AND role = 'team_admin'",
    )
    .bind(team)
    .fetch_one(&mut *conn)
    .await?;
    let members = sqlx::query("SELECT COUNT(*) AS n FROM team_members WHERE team_id = $1")
        .bind(team)
        .fetch_one(&mut *conn)
        .await?;
    if row.try_get::<i64, _>("n")? == 0 && members.try_get::<i64, _>("n")? > 0 {
        return Err(StoreError::invalid(
            "role",
            "a team needs at least one team_admin",
        ));
    }
    Ok(())
}

/// The SQL condition (and its arguments, numbered after `args`) that keeps the rows a
/// [`crate::auth::rbac::ListScope`] may see.
pub(crate) fn visible_clause(
    kind_follows_gateway: bool,
    scope: &crate::auth::rbac::ListScope,
    args: &mut Vec<super::Arg>,
) -> Option<String> {
    fn param(v: &str, args: &mut Vec<super::Arg>) -> String {
        args.push(super::Arg::Text(v.to_owned()));
        format!("${}", args.len())
    }
    fn list(ts: &[String], args: &mut Vec<super::Arg>) -> String {
        if ts.is_empty() {
            // Matches nothing (a comparison with NULL is never true).
            "(NULL)".to_owned()
        } else {
            let ps: Vec<String> = ts.iter().map(|t| param(t, args)).collect();
            format!("({})", ps.join(", "))
        }
    }
    fn cond(p: &str, o: &crate::auth::rbac::OwnerScope, args: &mut Vec<super::Arg>) -> String {
        let teams_in = list(&o.teams, args);
        let admins_in = list(&o.admin_teams, args);
        let me = param(&o.user, args);
        let public = if o.public {
            format!("{p}visibility = 'public' OR ")
        } else {
            String::new()
        };
        format!(
            "({public}({p}owner_team IN {teams_in} AND ({p}visibility <> 'private' OR {p}owner_user = {me} OR {p}owner_team IN {admins_in})))"
        )
    }
    let mut clauses = Vec::new();
    if let Some(o) = &scope.owners {
        clauses.push(if kind_follows_gateway {
            let own = cond("", o, args);
            let via = cond("g.", o, args);
            format!(
                "((gateway_id IS NULL AND {own}) OR EXISTS (SELECT 1 FROM gateways g WHERE g.id = gateway_id AND {via}))"
            )
        } else {
            cond("", o, args)
        });
    }
    if let Some(ids) = &scope.ids {
        clauses.push(format!("id IN {}", list(ids, args)));
    }
    (!clauses.is_empty()).then(|| clauses.join(" AND "))
}
