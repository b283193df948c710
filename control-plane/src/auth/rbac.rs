//! Roles, permissions and the one decision function of the admin API: may this principal
//! do this to that?
//!
//! - A **role** is held at **global** scope (over every team) or in one **team** (a user's
//!   personal team is a team whose only member is its user, as `team_admin`).
//! - A role stands for a fixed set of **permissions** ([`Role::permissions`]).
//! - Registry items are **owned** by a team (and remember the user who created them) and
//!   have a **visibility**: `private` (its creator, and the team's admins), `team` (the
//!   team's members), `public` (anyone holding the read permission anywhere; only reads).
//! - An API token narrows its user's rights ([`TokenScope`]): to the permissions, teams and
//!   virtual servers it lists (an empty list, or a missing one, grants nothing; `"*"` grants
//!   all the user has) and to the IP ranges it lists (empty: any address).
//!
//! Rights are computed per request from the store, not from claims inside a token: a role
//! taken away or a token revoked counts from the next request.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, everywhere.
    PlatformAdmin,
    /// Everything about a team's items, members and tokens.
    TeamAdmin,
    /// Registers and changes items; uses tools.
    Developer,
    /// Reads.
    Viewer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [
        Role::PlatformAdmin,
        Role::TeamAdmin,
        Role::Developer,
        Role::Viewer,
    ];

    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform_admin",
            Role::TeamAdmin => "team_admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The fixed permission set of the role.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::PlatformAdmin => &Permission::ALL,
            Role::TeamAdmin => &[
                GatewaysRead,
                GatewaysCreate,
                GatewaysUpdate,
                GatewaysDelete,
                ServersRead,
                ServersCreate,
                ServersUpdate,
                ServersDelete,
                ToolsRead,
                ToolsExecute,
                ResourcesRead,
                PromptsRead,
                TeamsRead,
                TeamsCreate,
                TeamsUpdate,
                TeamsDelete,
                TeamsMembers,
                TokensRead,
                TokensCreate,
                TokensRevoke,
            ],
            Role::Developer => &[
                GatewaysRead,
                GatewaysCreate,
                GatewaysUpdate,
                ServersRead,
                ServersCreate,
                ServersUpdate,
                ToolsRead,
                ToolsExecute,
                ResourcesRead,
                PromptsRead,
                TeamsRead,
                TeamsCreate,
                TokensRead,
                TokensCreate,
                TokensRevoke,
            ],
            Role::Viewer => &[
                GatewaysRead,
                ServersRead,
                ToolsRead,
                ResourcesRead,
                PromptsRead,
                TeamsRead,
                TokensRead,
                TokensCreate,
                TokensRevoke,
            ],
        }
    }

    /// Whether the role grants `p`.
    pub fn grants(self, p: Permission) -> bool {
        self.permissions().contains(&p)
    }
}

macro_rules! permissions {
    ($($variant:ident = $name:literal: $doc:literal,)*) => {
        /// A permission of the fixed set.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Permission {
            $(#[doc = $doc] $variant,)*
        }

        impl Permission {
            /// Every permission.
            pub const ALL: [Permission; [$($name),*].len()] = [$(Permission::$variant),*];

            /// The permission's name (`area.action`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Permission::$variant => $name,)*
                }
            }
        }
    };
}

permissions! {
    GatewaysRead = "gateways.read": "See gateways, and the catalog they bring.",
    GatewaysCreate = "gateways.create": "Register gateways.",
    GatewaysUpdate = "gateways.update": "Change, refresh, enable and disable gateways and their catalog items (also hand-made tools, resources and prompts).",
    GatewaysDelete = "gateways.delete": "Delete gateways and catalog items.",
    ServersRead = "servers.read": "See virtual servers.",
    ServersCreate = "servers.create": "Create virtual servers.",
    ServersUpdate = "servers.update": "Change, enable and disable virtual servers.",
    ServersDelete = "servers.delete": "Delete virtual servers.",
    ToolsRead = "tools.read": "See tools.",
    ToolsExecute = "tools.execute": "Call tools (at the edge).",
    ResourcesRead = "resources.read": "See and read resources.",
    PromptsRead = "prompts.read": "See and get prompts.",
    TeamsRead = "teams.read": "See teams and their members.",
    TeamsCreate = "teams.create": "Create teams.",
    TeamsUpdate = "teams.update": "Rename and describe teams.",
    TeamsDelete = "teams.delete": "Delete teams.",
    TeamsMembers = "teams.members": "Invite, add, change and remove team members.",
    TokensRead = "tokens.read": "List API tokens.",
    TokensCreate = "tokens.create": "Create API tokens.",
    TokensRevoke = "tokens.revoke": "Revoke API tokens.",
    AdminUsers = "admin.users": "Create, change and delete users and their global roles.",
    AdminSystem = "admin.system": "See the control plane's state: registry version, xDS nodes, snapshot.",
    AdminMetrics = "admin.metrics": "Scrape the metrics.",
    AdminTransfer = "admin.transfer": "Export and import the registry.",
    AdminKeys = "admin.keys": "Rotate the keys that sign the control plane's JWTs.",
}

impl Permission {
    /// Parses a name, or a wildcard `area.*` into every permission of the area.
    pub fn parse_pattern(s: &str) -> Option<Vec<Permission>> {
        if let Some(area) = s.strip_suffix(".*") {
            let all: Vec<Permission> = Permission::ALL
                .into_iter()
                .filter(|p| p.as_str().split('.').next() == Some(area))
                .collect();
            return (!all.is_empty()).then_some(all);
        }
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .map(|p| vec![p])
    }

    /// Whether this permission only reads (and so reaches public items of other teams).
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Permission::GatewaysRead
                | Permission::ServersRead
                | Permission::ToolsRead
                | Permission::ResourcesRead
                | Permission::PromptsRead
        )
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Who may see a registry item besides its team's readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Its creator, and the owning team's admins.
    Private,
    /// The owning team's members.
    #[default]
    Team,
    /// Everyone who may read that kind of item anywhere (reads only).
    Public,
}

impl Visibility {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Team => "team",
            Visibility::Public => "public",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Visibility> {
        [Visibility::Private, Visibility::Team, Visibility::Public]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Who owns a registry item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Owning team.
    pub team: String,
    /// The user who created it (`None`: from before teams, imported, or the user is gone).
    pub user: Option<String>,
    /// Visibility.
    pub visibility: Visibility,
}

/// A role held at a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// `None`: global; else the team.
    pub team: Option<String>,
}

/// A set named by an API token: everything its user has (`"*"`), or only the listed ids.
/// An empty list grants nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeSet {
    /// `["*"]`.
    All,
    /// The listed ids (empty: none).
    Only(BTreeSet<String>),
}

impl ScopeSet {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: &str) -> bool {
        match self {
            ScopeSet::All => true,
            ScopeSet::Only(s) => s.contains(id),
        }
    }

    /// From a token's stored list: `["*"]` is all.
    pub fn from_list(list: &[String]) -> ScopeSet {
        if list.iter().any(|s| s == "*") {
            ScopeSet::All
        } else {
            ScopeSet::Only(list.iter().cloned().collect())
        }
    }
}

/// What an API token is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScope {
    /// Permissions (within its user's).
    pub permissions: PermissionSet,
    /// Teams whose items it reaches.
    pub teams: ScopeSet,
    /// Virtual servers it reaches.
    pub servers: ScopeSet,
    /// Client addresses it is accepted from (empty: any).
    pub ip_ranges: Vec<ipnet::IpNet>,
}

/// A token's permissions: all its user's, or the listed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionSet {
    /// `["*"]`.
    All,
    /// The listed ones (empty: none).
    Only(BTreeSet<Permission>),
}

impl PermissionSet {
    fn contains(&self, p: Permission) -> bool {
        match self {
            PermissionSet::All => true,
            PermissionSet::Only(s) => s.contains(&p),
        }
    }
}

impl TokenScope {
    /// Whether a request from `ip` may use the token.
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        if self.ip_ranges.is_empty() {
            return true;
        }
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = ip.map(|ip| match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        });
        ip.is_some_and(|ip| self.ip_ranges.iter().any(|r| r.contains(&ip)))
    }
}

/// Who is asking, with what they hold. Built per request from the store.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User id.
    pub user_id: String,
    /// The user's email.
    pub email: String,
    /// The user's personal team.
    pub personal_team: Option<String>,
    /// Roles held, at their scopes.
    pub grants: Vec<Grant>,
    /// `Some` when the request came with an API token: what it is limited to.
    pub token: Option<TokenScope>,
    /// How the request authenticated.
    pub credential: Credential,
}

/// The credential a request came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A JWT from `POST /auth/login`.
    Session {
        /// Its id.
        jti: String,
        /// When it was signed (seconds since the epoch).
        iat: i64,
        /// Its expiry (seconds since the epoch).
        exp: i64,
    },
    /// An API token.
    ApiToken {
        /// The token's id.
        id: String,
    },
}

/// What a check is about.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Nothing owned: holding the permission in any scope suffices (lists, team creation).
    Anywhere,
    /// Something only global roles may do (`admin.*`).
    Global,
    /// A team (its members, its settings, creating items in it).
    Team(&'a str),
    /// A registry item.
    Item(&'a Ownership),
    /// A virtual server (an item, also subject to a token's `servers`).
    Server {
        /// Its id.
        id: &'a str,
        /// Its owner.
        owner: &'a Ownership,
    },
}

impl Principal {
    /// Whether the user is a platform admin (and not limited by a token to less).
    pub fn is_platform_admin(&self) -> bool {
        self.grants
            .iter()
            .any(|g| g.role == Role::PlatformAdmin && g.team.is_none())
            && self
                .token
                .as_ref()
                .is_none_or(|t| t.permissions == PermissionSet::All && t.teams == ScopeSet::All)
    }

    fn token_allows_permission(&self, p: Permission) -> bool {
        self.token
            .as_ref()
            .is_none_or(|t| t.permissions.contains(p))
    }

    fn token_allows_team(&self, team: &str) -> bool {
        self.token.as_ref().is_none_or(|t| t.teams.contains(team))
    }

    /// Whether a global grant gives `p` (a token reaches global rights only with `teams: ["*"]`).
    pub fn holds_globally(&self, p: Permission) -> bool {
        self.token_allows_permission(p)
            && self.token.as_ref().is_none_or(|t| t.teams == ScopeSet::All)
            && self
                .grants
                .iter()
                .any(|g| g.team.is_none() && g.role.grants(p))
    }

    /// Whether the principal holds `p` for `team`: by a global role or a role in the team,
    /// and its token (if any) reaching that team.
    pub fn holds_in(&self, p: Permission, team: &str) -> bool {
        self.token_allows_permission(p)
            && self.token_allows_team(team)
            && self
                .grants
                .iter()
                .any(|g| g.team.as_deref().is_none_or(|t| t == team) && g.role.grants(p))
    }

    /// The teams a token lists (empty without a token, or for `"*"`).
    fn token_teams(&self) -> Vec<String> {
        match self.token.as_ref().map(|t| &t.teams) {
            Some(ScopeSet::Only(set)) => set.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the principal holds `p` in some scope its token reaches.
    pub fn holds_anywhere(&self, p: Permission) -> bool {
        self.teams_holding(p).is_none_or(|teams| !teams.is_empty())
    }

    /// The teams in which the principal holds `p` (its token permitting); `None`: every
    /// team (a global grant, with a token that does not narrow it).
    pub fn teams_holding(&self, p: Permission) -> Option<Vec<String>> {
        if self.holds_globally(p) {
            return None;
        }
        let mut teams: Vec<String> = self
            .grants
            .iter()
            .filter_map(|g| g.team.clone())
            .chain(self.token_teams())
            .filter(|t| self.holds_in(p, t))
            .collect();
        teams.sort();
        teams.dedup();
        Some(teams)
    }

    /// Whether the principal is an admin of `team` (sees its private items).
    pub fn admins_team(&self, team: &str) -> bool {
        self.holds_in(Permission::TeamsMembers, team)
    }

    /// The decision: may the principal do `p` to `target`?
    pub fn may(&self, p: Permission, target: Target<'_>) -> bool {
        match target {
            Target::Anywhere => self.holds_anywhere(p),
            Target::Global => self.holds_globally(p),
            Target::Team(team) => self.holds_in(p, team),
            Target::Item(owner) => self.may_item(p, owner),
            Target::Server { id, owner } => {
                self.token.as_ref().is_none_or(|t| t.servers.contains(id))
                    && self.may_item(p, owner)
            }
        }
    }

    fn may_item(&self, p: Permission, owner: &Ownership) -> bool {
        if self.holds_globally(p) {
            return true;
        }
        if owner.visibility == Visibility::Public && p.is_read() && self.holds_anywhere(p) {
            return true;
        }
        if !self.holds_in(p, &owner.team) {
            return false;
        }
        match owner.visibility {
            Visibility::Private => {
                owner.user.as_deref() == Some(self.user_id.as_str())
                    || self.admins_team(&owner.team)
            }
            Visibility::Team | Visibility::Public => true,
        }
    }

    /// What a list may show: the SQL-side form of [`Principal::may`] for `read`.
    pub fn list_scope(&self, read: Permission) -> ListScope {
        let owners = self.teams_holding(read).map(|teams| OwnerScope {
            admin_teams: teams
                .iter()
                .filter(|t| self.admins_team(t))
                .cloned()
                .collect(),
            teams,
            user: self.user_id.clone(),
            public: self.holds_anywhere(read),
        });
        ListScope { owners, ids: None }
    }

    /// The virtual servers a token is limited to (`None`: not limited).
    pub fn server_ids(&self) -> Option<Vec<String>> {
        match self.token.as_ref().map(|t| &t.servers) {
            Some(ScopeSet::Only(set)) => Some(set.iter().cloned().collect()),
            _ => None,
        }
    }
}

/// Which rows of a list a principal may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListScope {
    /// By owner (`None`: every owner).
    pub owners: Option<OwnerScope>,
    /// Only these ids (`None`: any; a token's `servers` for the list of virtual servers).
    pub ids: Option<Vec<String>>,
}

/// The rows a principal sees by their owner: public ones (if `public`), those of `teams`
/// that are not private, private ones the user created in those teams, and every one of
/// `admin_teams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerScope {
    /// Teams where the principal reads.
    pub teams: Vec<String>,
    /// Teams the principal administers.
    pub admin_teams: Vec<String>,
    /// The user.
    pub user: String,
    /// Public items of any team.
    pub public: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(team: &str, user: Option<&str>, visibility: Visibility) -> Ownership {
        Ownership {
            team: team.into(),
            user: user.map(Into::into),
            visibility,
        }
    }

    fn principal(grants: &[(Role, Option<&str>)], token: Option<TokenScope>) -> Principal {
        Principal {
            user_id: "u1".into(),
            email: "u1@example.com".into(),
            personal_team: None,
            grants: grants
                .iter()
                .map(|(role, team)| Grant {
                    role: *role,
                    team: team.map(Into::into),
                })
                .collect(),
            token,
            credential: Credential::ApiToken { id: "t".into() },
        }
    }

    #[test]
    fn wildcards_expand_to_their_area() {
        assert_eq!(
            Permission::parse_pattern("tokens.*").unwrap(),
            [
                Permission::TokensRead,
                Permission::TokensCreate,
                Permission::TokensRevoke
            ]
        );
        assert_eq!(
            Permission::parse_pattern("tools.execute").unwrap(),
            [Permission::ToolsExecute]
        );
        assert!(Permission::parse_pattern("tools.write").is_none());
        assert!(Permission::parse_pattern("*").is_none());
    }

    #[test]
    fn items_by_role_visibility_and_token() {
        use Permission::*;
        let team_a = owner("a", Some("u2"), Visibility::Team);
        let private_a = owner("a", Some("u2"), Visibility::Private);
        let mine_private_a = owner("a", Some("u1"), Visibility::Private);
        let public_b = owner("b", Some("u2"), Visibility::Public);
        let team_b = owner("b", None, Visibility::Team);
        let only = |perms: &[Permission], teams: &[&str]| TokenScope {
            permissions: PermissionSet::Only(perms.iter().copied().collect()),
            teams: ScopeSet::Only(teams.iter().map(|t| t.to_string()).collect()),
            servers: ScopeSet::Only(BTreeSet::new()),
            ip_ranges: vec![],
        };
        type Case<'a> = (&'a str, Principal, Permission, &'a Ownership, bool);
        let cases: Vec<Case<'_>> = vec![
            (
                "viewer reads its team",
                principal(&[(Role::Viewer, Some("a"))], None),
                GatewaysRead,
                &team_a,
                true,
            ),
            (
                "viewer cannot change",
                principal(&[(Role::Viewer, Some("a"))], None),
                GatewaysUpdate,
                &team_a,
                false,
            ),
            (
                "viewer misses another's private",
                principal(&[(Role::Viewer, Some("a"))], None),
                GatewaysRead,
                &private_a,
                false,
            ),
            (
                "creator sees own private",
                principal(&[(Role::Developer, Some("a"))], None),
                GatewaysRead,
                &mine_private_a,
                true,
            ),
            (
                "team admin sees private",
                principal(&[(Role::TeamAdmin, Some("a"))], None),
                GatewaysDelete,
                &private_a,
                true,
            ),
            (
                "developer cannot delete",
                principal(&[(Role::Developer, Some("a"))], None),
                GatewaysDelete,
                &team_a,
                false,
            ),
            (
                "public read from another team",
                principal(&[(Role::Viewer, Some("a"))], None),
                GatewaysRead,
                &public_b,
                true,
            ),
            (
                "public is read only",
                principal(&[(Role::TeamAdmin, Some("a"))], None),
                GatewaysUpdate,
                &public_b,
                false,
            ),
            (
                "team items of others hidden",
                principal(&[(Role::TeamAdmin, Some("a"))], None),
                GatewaysRead,
                &team_b,
                false,
            ),
            (
                "global viewer reads all",
                principal(&[(Role::Viewer, None)], None),
                GatewaysRead,
                &team_b,
                true,
            ),
            (
                "platform admin does all",
                principal(&[(Role::PlatformAdmin, None)], None),
                GatewaysDelete,
                &private_a,
                true,
            ),
            (
                "token within scope",
                principal(
                    &[(Role::Developer, Some("a"))],
                    Some(only(&[GatewaysRead], &["a"])),
                ),
                GatewaysRead,
                &team_a,
                true,
            ),
            (
                "token lacks permission",
                principal(
                    &[(Role::Developer, Some("a"))],
                    Some(only(&[GatewaysRead], &["a"])),
                ),
                GatewaysUpdate,
                &team_a,
                false,
            ),
            (
                "token lacks team",
                principal(
                    &[(Role::Developer, Some("a"))],
                    Some(only(&[GatewaysRead], &["b"])),
                ),
                GatewaysRead,
                &team_a,
                false,
            ),
            (
                "empty token denies",
                principal(&[(Role::Developer, Some("a"))], Some(only(&[], &[]))),
                GatewaysRead,
                &team_a,
                false,
            ),
            (
                "token never exceeds its user",
                principal(
                    &[(Role::Viewer, Some("a"))],
                    Some(only(&[GatewaysUpdate], &["a"])),
                ),
                GatewaysUpdate,
                &team_a,
                false,
            ),
            (
                "admin's team-limited token loses global",
                principal(
                    &[(Role::PlatformAdmin, None)],
                    Some(only(&[GatewaysRead], &["a"])),
                ),
                GatewaysRead,
                &team_b,
                false,
            ),
        ];
        for (name, p, perm, o, want) in cases {
            assert_eq!(p.may(perm, Target::Item(o)), want, "{name}");
        }
    }

    #[test]
    fn token_ip_ranges() {
        let scope = TokenScope {
            permissions: PermissionSet::All,
            teams: ScopeSet::All,
            servers: ScopeSet::All,
            ip_ranges: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(scope.admits(ip("10.1.2.3")));
        assert!(scope.admits(ip("::ffff:10.1.2.3")));
        assert!(scope.admits(ip("::1")));
        assert!(!scope.admits(ip("127.0.0.1")));
        assert!(!scope.admits(None));
    }
}
