//! Identity endpoints: login and sessions (`/auth/*`), the JWKS, API tokens (`/tokens`),
//! teams, members and invitations (`/teams`, `/invitations`), users (`/users`), and the
//! owner of registry items (`/{kind}/{id}/owner`). Who may call which is `api::access`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::auth_error;
use super::problem::ApiJson;
use super::{ApiError, AppState, Problem};
use crate::auth::rbac::{Credential, Ownership, Permission, Principal, Role, Target, Visibility};
use crate::auth::token::Scopes;
use crate::auth::{AuthError, normalize_email};
use crate::model::FieldInvalid;
use crate::store::identity::{Invitation, Member, OwnedKind, Team, TokenRecord, User};

fn auth(e: AuthError) -> axum::response::Response {
    auth_error(e)
}

type Answer<T> = Result<T, axum::response::Response>;

fn api(e: impl Into<ApiError>) -> axum::response::Response {
    axum::response::IntoResponse::into_response(e.into())
}

// ---- types ------------------------------------------------------------------------------

/// `POST /auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
}

/// A session token.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// The JWT to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// The user.
    pub user: UserView,
}

/// A user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// Id.
    pub id: String,
    /// Email.
    pub email: String,
    /// Display name.
    pub full_name: Option<String>,
    /// Whether the user may sign in.
    pub active: bool,
    /// Whether a password is set.
    pub has_password: bool,
    /// Roles at global scope.
    pub global_roles: Vec<Role>,
    /// The personal team.
    pub personal_team: Option<String>,
    /// Created (RFC 3339).
    pub created_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            email: u.email,
            full_name: u.full_name,
            active: u.active,
            has_password: u.has_password,
            global_roles: u.global_roles,
            personal_team: u.personal_team,
            created_at: u.created_at,
        }
    }
}

/// A role at a scope.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    /// The role.
    pub role: Role,
    /// `global`, `team` or `personal`.
    pub scope: String,
    /// The team (team and personal scopes).
    pub team_id: Option<String>,
}

/// `GET /auth/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The user.
    pub user: UserView,
    /// Every role held.
    pub roles: Vec<GrantView>,
    /// `session` or `api_token`.
    pub credential: String,
    /// The API token's id, when the request came with one.
    pub token_id: Option<String>,
}

/// `POST /auth/password` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The current password (may be empty when none is set).
    pub current_password: String,
    /// The new one (at least 12 characters).
    pub new_password: String,
}

/// `POST /auth/keys/rotate` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    /// The new signing key's id.
    pub kid: String,
}

/// `POST /tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// Name, unique among the user's tokens.
    pub name: String,
    /// Days until it expires (1-3650, default 90).
    pub expires_in_days: Option<u32>,
    /// What it is limited to. Empty or missing lists grant nothing.
    #[serde(default)]
    pub scopes: Scopes,
}

/// An API token (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Owner.
    pub user_id: String,
    /// Scopes.
    pub scopes: Scopes,
    /// Expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// When revoked.
    pub revoked_at: Option<String>,
    /// Last use (to the minute).
    pub last_used_at: Option<String>,
    /// Created.
    pub created_at: String,
}

impl From<TokenRecord> for TokenView {
    fn from(t: TokenRecord) -> Self {
        TokenView {
            scopes: serde_json::from_str(&t.scopes).unwrap_or_default(),
            id: t.id,
            name: t.name,
            user_id: t.user_id,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            last_used_at: t.last_used_at,
            created_at: t.created_at,
        }
    }
}

/// A new token: the secret is shown here, once.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    /// The secret, to send as `Authorization: Bearer …`. Not shown again.
    pub token: String,
    /// The token.
    #[serde(flatten)]
    pub record: TokenView,
}

/// A list of tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// Tokens, newest first.
    pub items: Vec<TokenView>,
}

/// `GET /tokens` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Every user's tokens (needs `admin.users`).
    #[serde(default)]
    pub all: bool,
}

/// A team.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeamView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// A user's personal team.
    pub personal: bool,
    /// Created.
    pub created_at: String,
}

impl From<Team> for TeamView {
    fn from(t: Team) -> Self {
        TeamView {
            id: t.id,
            name: t.name,
            description: t.description,
            personal: t.personal,
            created_at: t.created_at,
        }
    }
}

/// A list of teams.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeamList {
    /// Teams by name.
    pub items: Vec<TeamView>,
}

/// `POST /teams` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamCreate {
    /// Unique name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
}

/// `PUT /teams/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
}

/// A member.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    /// User id.
    pub user_id: String,
    /// Email.
    pub email: String,
    /// Role in the team.
    pub role: Role,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        MemberView {
            user_id: m.user_id,
            email: m.email,
            role: m.role,
        }
    }
}

/// A list of members.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    /// Members by email.
    pub items: Vec<MemberView>,
}

/// `PUT /teams/{id}/members/{user_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSet {
    /// `team_admin`, `developer` or `viewer`.
    pub role: Role,
}

/// `POST /teams/{id}/invitations` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationCreate {
    /// Who is invited.
    pub email: String,
    /// Role on acceptance (`team_admin`, `developer` or `viewer`).
    pub role: Role,
    /// Days until it expires (1-90, default 7).
    pub expires_in_days: Option<u32>,
}

/// An invitation.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationView {
    /// Id (accept with `POST /invitations/{id}/accept`, signed in as the invited email).
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

impl From<Invitation> for InvitationView {
    fn from(i: Invitation) -> Self {
        InvitationView {
            id: i.id,
            team_id: i.team_id,
            email: i.email,
            role: i.role,
            invited_by: i.invited_by,
            created_at: i.created_at,
            expires_at: i.expires_at,
        }
    }
}

/// A list of invitations.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationList {
    /// Invitations, oldest first.
    pub items: Vec<InvitationView>,
}

/// `POST /users` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    /// Email (unique, compared in lower case).
    pub email: String,
    /// Password (at least 12 characters); none: API tokens only until one is set.
    pub password: Option<String>,
    /// Display name.
    pub full_name: Option<String>,
    /// Roles at global scope.
    #[serde(default)]
    pub global_roles: Vec<Role>,
}

/// `PUT /users/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// Display name.
    pub full_name: Option<String>,
    /// Whether the user may sign in and use tokens.
    pub active: Option<bool>,
    /// Roles at global scope (replaces them).
    pub global_roles: Option<Vec<Role>>,
    /// A new password (an admin's reset).
    pub password: Option<String>,
}

/// A list of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    /// Users by email.
    pub items: Vec<UserView>,
}

/// Who owns a registry item.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerView {
    /// Owning team.
    pub team_id: String,
    /// Who created it (read only).
    #[serde(default, skip_deserializing)]
    pub owner_user: Option<String>,
    /// `private`, `team` or `public`.
    pub visibility: Visibility,
    /// Whether it follows its gateway's owner (a discovered catalog item; read only).
    #[serde(default, skip_deserializing)]
    pub follows_gateway: bool,
}

fn days(field: &str, v: Option<u32>, default: u32, max: u32) -> Result<chrono::Duration, Problem> {
    let d = v.unwrap_or(default);
    if d == 0 || d > max {
        return Err(Problem::invalid_field(
            field,
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(chrono::Duration::days(i64::from(d)))
}

fn name(field: &str, v: &str) -> Result<String, Problem> {
    let t = v.trim();
    if t.is_empty() || t.len() > 255 || t.chars().any(char::is_control) {
        return Err(Problem::invalid_field(
            field,
            "must be 1-255 characters without control characters",
        ));
    }
    Ok(t.to_owned())
}

fn field(e: FieldInvalid) -> axum::response::Response {
    axum::response::IntoResponse::into_response(Problem::invalid_field(e.field, e.reason))
}

fn problem(p: Problem) -> axum::response::Response {
    axum::response::IntoResponse::into_response(p)
}

// ---- /auth ------------------------------------------------------------------------------

/// Signs in with email and password; answers a session token (JWT).
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    security(()),
    responses((status = 200, body = LoginResponse),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 429, body = Problem, content_type = "application/problem+json")))]
pub async fn login(
    State(s): State<AppState>,
    ApiJson(b): ApiJson<LoginRequest>,
) -> Answer<Json<LoginResponse>> {
    let session = s.auth.login(&b.email, &b.password).await.map_err(auth)?;
    Ok(Json(LoginResponse {
        access_token: session.token,
        token_type: "Bearer".into(),
        expires_in: session.expires_at - chrono::Utc::now().timestamp(),
        user: session.user.into(),
    }))
}

/// Ends the session: its token is refused from now on.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn logout(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Answer<StatusCode> {
    match &p.credential {
        Credential::Session { jti, exp, .. } => {
            s.auth.logout(jti, *exp).await.map_err(auth)?;
            Ok(StatusCode::NO_CONTENT)
        }
        Credential::ApiToken { .. } => Err(problem(Problem::new(
            StatusCode::CONFLICT,
            "not-a-session",
            "Not a session",
            "this request came with an API token: revoke it with DELETE /tokens/{id}",
        ))),
    }
}

/// Who the caller is, and every role it holds.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn me(State(s): State<AppState>, Extension(p): Extension<Principal>) -> Answer<Json<Me>> {
    let user = s.store.get_user(&p.user_id).await.map_err(api)?;
    let roles = p
        .grants
        .iter()
        .map(|g| GrantView {
            role: g.role,
            scope: match &g.team {
                None => "global".into(),
                Some(t) if Some(t) == p.personal_team.as_ref() => "personal".into(),
                Some(_) => "team".into(),
            },
            team_id: g.team.clone(),
        })
        .collect();
    let (credential, token_id) = match &p.credential {
        Credential::Session { .. } => ("session", None),
        Credential::ApiToken { id } => ("api_token", Some(id.clone())),
    };
    Ok(Json(Me {
        user: user.into(),
        roles,
        credential: credential.into(),
        token_id,
    }))
}

/// Changes the caller's password (the current one is checked). Every session signed
/// before ends; the answer is a new one.
#[utoipa::path(post, path = "/auth/password", tag = "auth", request_body = PasswordChange,
    responses((status = 200, body = LoginResponse), (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn change_password(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(b): ApiJson<PasswordChange>,
) -> Answer<Json<LoginResponse>> {
    let user = s.store.get_user(&p.user_id).await.map_err(api)?;
    s.auth
        .change_password(&user, &b.current_password, &b.new_password)
        .await
        .map_err(auth)?;
    // Signed in the second of the change or later: it outlives the cut (whole seconds).
    let session = s.auth.issue_session(&user).await.map_err(auth)?;
    Ok(Json(LoginResponse {
        access_token: session.token,
        token_type: "Bearer".into(),
        expires_in: session.expires_at - chrono::Utc::now().timestamp(),
        user: session.user.into(),
    }))
}

/// The public keys that verify the control plane's session tokens (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", security(()),
    responses((status = 200, body = Object)))]
pub async fn jwks(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(s.auth.jwks().await)
}

/// Makes a new signing key current; tokens signed by the previous one stay valid for the
/// grace period (`--jwt-key-grace`).
#[utoipa::path(post, path = "/auth/keys/rotate", tag = "auth",
    responses((status = 200, body = RotatedKey), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn rotate_keys(State(s): State<AppState>) -> Answer<Json<RotatedKey>> {
    Ok(Json(RotatedKey {
        kid: s.auth.rotate_keys().await.map_err(auth)?,
    }))
}

// ---- /tokens ----------------------------------------------------------------------------

/// Creates an API token for the caller. The secret is in this answer only.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_token(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(b): ApiJson<TokenCreate>,
) -> Answer<(StatusCode, Json<TokenCreated>)> {
    let token_name = name("name", &b.name).map_err(problem)?;
    let ttl = days("expires_in_days", b.expires_in_days, 90, 3650).map_err(problem)?;
    let scope = b
        .scopes
        .parse(s.auth.settings().empty_scopes)
        .map_err(field)?;
    // A token made with a token stays within it: no wider than the one that made it.
    if let Some(caller) = &p.token {
        narrower(caller, &scope).map_err(field)?;
    }
    // A token never holds more than its creator: what it lists must be the creator's.
    if let crate::auth::rbac::PermissionSet::Only(perms) = &scope.permissions {
        for perm in perms {
            if !p.may(*perm, Target::Anywhere) {
                return Err(field(FieldInvalid::new(
                    "scopes.permissions",
                    format!("you do not hold {}", perm.as_str()),
                )));
            }
        }
    }
    if let crate::auth::rbac::ScopeSet::Only(teams) = &scope.teams {
        for t in teams {
            let exists = match s.store.get_team(t).await {
                Ok(_) => true,
                Err(crate::store::StoreError::NotFound { .. }) => false,
                Err(e) => return Err(api(e)),
            };
            // The user is in the team, or holds a role over every team.
            let reaches = p
                .grants
                .iter()
                .any(|g| g.team.as_deref().is_none_or(|gt| gt == t));
            if !exists || !reaches {
                return Err(field(FieldInvalid::new(
                    "scopes.teams",
                    format!("no team {t} that you are a member of"),
                )));
            }
        }
    }
    if let crate::auth::rbac::ScopeSet::Only(servers) = &scope.servers {
        for id in servers {
            if s.store
                .ownership(OwnedKind::Server, id)
                .await
                .map_err(api)?
                .is_none()
            {
                return Err(field(FieldInvalid::new(
                    "scopes.servers",
                    format!("no virtual server {id}"),
                )));
            }
        }
    }
    let user = s.store.get_user(&p.user_id).await.map_err(api)?;
    let (record, secret) = s
        .auth
        .create_token(
            &user,
            &token_name,
            &b.scopes,
            Some(chrono::Utc::now() + ttl),
        )
        .await
        .map_err(auth)?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token: secret,
            record: record.into(),
        }),
    ))
}

/// Checks that `new` reaches no more than `caller`: permissions, teams and servers are
/// subsets, and its IP ranges lie within the caller's.
fn narrower(
    caller: &crate::auth::rbac::TokenScope,
    new: &crate::auth::rbac::TokenScope,
) -> Result<(), FieldInvalid> {
    use crate::auth::rbac::{PermissionSet, ScopeSet};
    let wider = |field: &str| {
        FieldInvalid::new(
            format!("scopes.{field}"),
            "reaches more than the API token this request came with",
        )
    };
    match (&caller.permissions, &new.permissions) {
        (PermissionSet::All, _) => {}
        (PermissionSet::Only(_), PermissionSet::All) => return Err(wider("permissions")),
        (PermissionSet::Only(c), PermissionSet::Only(n)) if !n.is_subset(c) => {
            return Err(wider("permissions"));
        }
        _ => {}
    }
    for (field, c, n) in [
        ("teams", &caller.teams, &new.teams),
        ("servers", &caller.servers, &new.servers),
    ] {
        match (c, n) {
            (ScopeSet::All, _) => {}
            (ScopeSet::Only(_), ScopeSet::All) => return Err(wider(field)),
            (ScopeSet::Only(c), ScopeSet::Only(n)) if !n.is_subset(c) => return Err(wider(field)),
            _ => {}
        }
    }
    if !caller.ip_ranges.is_empty()
        && (new.ip_ranges.is_empty()
            || !new
                .ip_ranges
                .iter()
                .all(|n| caller.ip_ranges.iter().any(|c| c.contains(n))))
    {
        return Err(wider("ip_ranges"));
    }
    Ok(())
}

/// The caller's API tokens (`?all=true`: everyone's, for `admin.users` holders).
#[utoipa::path(get, path = "/tokens", tag = "tokens", params(TokenQuery),
    responses((status = 200, body = TokenList), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    super::problem::ApiQuery(q): super::problem::ApiQuery<TokenQuery>,
) -> Answer<Json<TokenList>> {
    let user = if q.all {
        if !p.may(Permission::AdminUsers, Target::Global) {
            return Err(problem(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                "all=true needs the permission admin.users at global scope",
            )));
        }
        None
    } else {
        Some(p.user_id.as_str())
    };
    let items = s.store.list_tokens(user).await.map_err(api)?;
    Ok(Json(TokenList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// One API token (not its secret).
#[utoipa::path(get, path = "/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 200, body = TokenView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Answer<Json<TokenView>> {
    Ok(Json(s.store.get_token(&id).await.map_err(api)?.into()))
}

/// Revokes an API token: refused from the next request on.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 200, body = TokenView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Answer<Json<TokenView>> {
    Ok(Json(s.store.revoke_token(&id).await.map_err(api)?.into()))
}

// ---- /teams -----------------------------------------------------------------------------

/// Teams the caller belongs to (every team for global readers).
#[utoipa::path(get, path = "/teams", tag = "teams",
    responses((status = 200, body = TeamList)))]
pub async fn list_teams(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Answer<Json<TeamList>> {
    let member = (!p.holds_globally(Permission::TeamsRead)).then_some(p.user_id.as_str());
    let teams = s.store.list_teams(member).await.map_err(api)?;
    Ok(Json(TeamList {
        items: teams
            .into_iter()
            .filter(|t| p.may(Permission::TeamsRead, Target::Team(&t.id)))
            .map(Into::into)
            .collect(),
    }))
}

/// Creates a team with the caller as its `team_admin`.
#[utoipa::path(post, path = "/teams", tag = "teams", request_body = TeamCreate,
    responses((status = 201, body = TeamView), (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_team(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(b): ApiJson<TeamCreate>,
) -> Answer<(StatusCode, Json<TeamView>)> {
    let n = name("name", &b.name).map_err(problem)?;
    if n.starts_with("personal:") {
        return Err(problem(Problem::invalid_field(
            "name",
            "names starting with personal: are kept for personal teams",
        )));
    }
    let t = s
        .store
        .create_team(&n, b.description.as_deref(), &p.user_id)
        .await
        .map_err(api)?;
    Ok((StatusCode::CREATED, Json(t.into())))
}

/// One team.
#[utoipa::path(get, path = "/teams/{id}", tag = "teams", params(("id" = String, Path)),
    responses((status = 200, body = TeamView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_team(State(s): State<AppState>, Path(id): Path<String>) -> Answer<Json<TeamView>> {
    Ok(Json(s.store.get_team(&id).await.map_err(api)?.into()))
}

/// Renames or describes a team.
#[utoipa::path(put, path = "/teams/{id}", tag = "teams", params(("id" = String, Path)), request_body = TeamUpdate,
    responses((status = 200, body = TeamView), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_team(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<TeamUpdate>,
) -> Answer<Json<TeamView>> {
    let n = b
        .name
        .as_deref()
        .map(|n| name("name", n))
        .transpose()
        .map_err(problem)?;
    if n.as_deref().is_some_and(|n| n.starts_with("personal:")) {
        return Err(problem(Problem::invalid_field(
            "name",
            "names starting with personal: are kept for personal teams",
        )));
    }
    let t = s
        .store
        .update_team(&id, n.as_deref(), b.description.as_deref().map(Some))
        .await
        .map_err(api)?;
    Ok(Json(t.into()))
}

/// Deletes a team that owns nothing (not a personal team, not `global`).
#[utoipa::path(delete, path = "/teams/{id}", tag = "teams", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_team(State(s): State<AppState>, Path(id): Path<String>) -> Answer<StatusCode> {
    s.store.delete_team(&id).await.map_err(api)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A team's members.
#[utoipa::path(get, path = "/teams/{id}/members", tag = "teams", params(("id" = String, Path)),
    responses((status = 200, body = MemberList), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn list_members(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Answer<Json<MemberList>> {
    let m = s.store.list_members(&id).await.map_err(api)?;
    Ok(Json(MemberList {
        items: m.into_iter().map(Into::into).collect(),
    }))
}

/// Adds a member to a team or changes its role.
#[utoipa::path(put, path = "/teams/{id}/members/{user_id}", tag = "teams",
    params(("id" = String, Path), ("user_id" = String, Path)), request_body = MemberSet,
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn set_member(
    State(s): State<AppState>,
    Path((id, user_id)): Path<(String, String)>,
    ApiJson(b): ApiJson<MemberSet>,
) -> Answer<StatusCode> {
    s.store
        .set_member(&id, &user_id, b.role)
        .await
        .map_err(api)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a member from a team.
#[utoipa::path(delete, path = "/teams/{id}/members/{user_id}", tag = "teams",
    params(("id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn remove_member(
    State(s): State<AppState>,
    Path((id, user_id)): Path<(String, String)>,
) -> Answer<StatusCode> {
    s.store.remove_member(&id, &user_id).await.map_err(api)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A team's open invitations.
#[utoipa::path(get, path = "/teams/{id}/invitations", tag = "teams", params(("id" = String, Path)),
    responses((status = 200, body = InvitationList)))]
pub async fn list_team_invitations(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Answer<Json<InvitationList>> {
    let items = s
        .store
        .list_invitations(Some(&id), None)
        .await
        .map_err(api)?;
    Ok(Json(InvitationList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Invites an email to a team.
#[utoipa::path(post, path = "/teams/{id}/invitations", tag = "teams", params(("id" = String, Path)),
    request_body = InvitationCreate,
    responses((status = 201, body = InvitationView), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn invite(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<InvitationCreate>,
) -> Answer<(StatusCode, Json<InvitationView>)> {
    let email = normalize_email(&b.email).map_err(field)?;
    let ttl = days("expires_in_days", b.expires_in_days, 7, 90).map_err(problem)?;
    let expires = (chrono::Utc::now() + ttl).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let inv = s
        .store
        .create_invitation(&id, &email, b.role, &p.user_id, &expires)
        .await
        .map_err(api)?;
    Ok((StatusCode::CREATED, Json(inv.into())))
}

/// Withdraws an invitation.
#[utoipa::path(delete, path = "/teams/{id}/invitations/{invitation_id}", tag = "teams",
    params(("id" = String, Path), ("invitation_id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn withdraw_invitation(
    State(s): State<AppState>,
    Path((id, invitation_id)): Path<(String, String)>,
) -> Answer<StatusCode> {
    let inv = s.store.get_invitation(&invitation_id).await.map_err(api)?;
    if inv.team_id != id {
        return Err(api(crate::store::StoreError::NotFound {
            kind: "invitation",
            id: invitation_id,
        }));
    }
    s.store
        .delete_invitation(&invitation_id)
        .await
        .map_err(api)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invitations to the caller's email.
#[utoipa::path(get, path = "/invitations", tag = "teams",
    responses((status = 200, body = InvitationList)))]
pub async fn my_invitations(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Answer<Json<InvitationList>> {
    let items = s
        .store
        .list_invitations(None, Some(&p.email))
        .await
        .map_err(api)?;
    Ok(Json(InvitationList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Accepts an invitation to the caller's email: membership with the invited role.
#[utoipa::path(post, path = "/invitations/{id}/accept", tag = "teams", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 410, body = Problem, content_type = "application/problem+json")))]
pub async fn accept_invitation(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    let not_found = || {
        api(crate::store::StoreError::NotFound {
            kind: "invitation",
            id: id.clone(),
        })
    };
    let inv = s.store.get_invitation(&id).await.map_err(|_| not_found())?;
    // Someone else's invitation does not exist for this caller.
    if inv.email != p.email {
        return Err(not_found());
    }
    // A token limited to less than its user cannot join teams on its behalf.
    if p.token.is_some() && !p.is_platform_admin() {
        return Err(problem(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "invitations are accepted in a session (POST /auth/login), not with an API token",
        )));
    }
    if inv.expires_at.as_str() <= crate::store::now().as_str() {
        return Err(problem(Problem::new(
            StatusCode::GONE,
            "invitation-expired",
            "Invitation expired",
            format!("the invitation expired at {}", inv.expires_at),
        )));
    }
    s.store
        .accept_invitation(&id, &p.user_id)
        .await
        .map_err(api)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- /users -----------------------------------------------------------------------------

/// Every user.
#[utoipa::path(get, path = "/users", tag = "users",
    responses((status = 200, body = UserList), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn list_users(State(s): State<AppState>) -> Answer<Json<UserList>> {
    let users = s.store.list_users().await.map_err(api)?;
    Ok(Json(UserList {
        items: users.into_iter().map(Into::into).collect(),
    }))
}

/// Creates a user (with a personal team).
#[utoipa::path(post, path = "/users", tag = "users", request_body = UserCreate,
    responses((status = 201, body = UserView), (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_user(
    State(s): State<AppState>,
    ApiJson(b): ApiJson<UserCreate>,
) -> Answer<(StatusCode, Json<UserView>)> {
    let email = normalize_email(&b.email).map_err(field)?;
    let hash = match &b.password {
        Some(pw) => Some(
            s.auth
                .hasher()
                .hash(pw)
                .await
                .map_err(|e| field(FieldInvalid::new("password", e.to_string())))?,
        ),
        None => None,
    };
    let u = s
        .store
        .create_user(
            &email,
            b.full_name.as_deref(),
            hash.as_deref(),
            &b.global_roles,
        )
        .await
        .map_err(api)?;
    Ok((StatusCode::CREATED, Json(u.into())))
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_user(State(s): State<AppState>, Path(id): Path<String>) -> Answer<Json<UserView>> {
    Ok(Json(s.store.get_user(&id).await.map_err(api)?.into()))
}

/// Changes a user: name, active, global roles, password.
#[utoipa::path(put, path = "/users/{id}", tag = "users", params(("id" = String, Path)), request_body = UserUpdate,
    responses((status = 200, body = UserView), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UserUpdate>,
) -> Answer<Json<UserView>> {
    if let Some(pw) = &b.password {
        let hash = s
            .auth
            .hasher()
            .hash(pw)
            .await
            .map_err(|e| field(FieldInvalid::new("password", e.to_string())))?;
        s.store.set_password_hash(&id, &hash).await.map_err(api)?;
    }
    let u = s
        .store
        .update_user(
            &id,
            b.full_name.as_deref().map(Some),
            b.active,
            b.global_roles.as_deref(),
        )
        .await
        .map_err(api)?;
    Ok(Json(u.into()))
}

/// Deletes a user, its personal team and its tokens.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_user(State(s): State<AppState>, Path(id): Path<String>) -> Answer<StatusCode> {
    s.store.delete_user(&id).await.map_err(api)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a login lockout of a user's email.
#[utoipa::path(post, path = "/users/{id}/unlock", tag = "users", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn unlock_user(State(s): State<AppState>, Path(id): Path<String>) -> Answer<StatusCode> {
    let u = s.store.get_user(&id).await.map_err(api)?;
    s.store.clear_login_failures(&u.email).await.map_err(api)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- owners of registry items -------------------------------------------------------------

/// The owner of an item (`kind` as in the path).
pub async fn get_owner(s: &AppState, kind: OwnedKind, id: &str) -> Result<OwnerView, ApiError> {
    let o =
        s.store
            .ownership(kind, id)
            .await?
            .ok_or_else(|| crate::store::StoreError::NotFound {
                kind: kind.label(),
                id: id.to_owned(),
            })?;
    Ok(OwnerView {
        team_id: o.team,
        owner_user: o.user,
        visibility: o.visibility,
        follows_gateway: s.store.follows_gateway(kind, id).await?,
    })
}

/// Moves an item to another team or changes its visibility; the caller must be allowed to
/// create such items in the new team.
pub async fn set_owner(
    s: &AppState,
    p: &Principal,
    kind: OwnedKind,
    id: &str,
    body: OwnerView,
) -> Result<OwnerView, ApiError> {
    if s.store.follows_gateway(kind, id).await? {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "owned-by-gateway",
            "Owned through its gateway",
            format!("this {} was discovered from a gateway and follows the gateway's owner: change the gateway's", kind.label()),
        )
        .into());
    }
    match s.store.get_team(&body.team_id).await {
        Ok(_) => {}
        Err(crate::store::StoreError::NotFound { .. }) => {
            return Err(
                Problem::invalid_field("team_id", format!("no team {}", body.team_id)).into(),
            );
        }
        Err(e) => return Err(e.into()),
    }
    let [create, ..] = super::access::write_permissions(kind);
    if !p.may(create, Target::Team(&body.team_id)) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!(
                "this needs the permission {} in team {}",
                create.as_str(),
                body.team_id
            ),
        )
        .into());
    }
    let before = s.store.ownership(kind, id).await?;
    let owner = Ownership {
        team: body.team_id,
        user: before.and_then(|o| o.user),
        visibility: body.visibility,
    };
    s.store.set_ownership(kind, id, &owner).await?;
    get_owner(s, kind, id).await
}

/// The documented paths of this module.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        login,
        logout,
        me,
        change_password,
        jwks,
        rotate_keys,
        create_token,
        list_tokens,
        get_token,
        revoke_token,
        list_teams,
        create_team,
        get_team,
        update_team,
        delete_team,
        list_members,
        set_member,
        remove_member,
        list_team_invitations,
        invite,
        withdraw_invitation,
        my_invitations,
        accept_invitation,
        list_users,
        create_user,
        get_user,
        update_user,
        delete_user,
        unlock_user,
    ),
    components(schemas(Role, Visibility, Scopes, OwnerView))
)]
pub struct Doc;

/// The routes of this module.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
        .route("/auth/password", post(change_password))
        .route("/auth/keys/rotate", post(rotate_keys))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", get(get_token).delete(revoke_token))
        .route("/teams", get(list_teams).post(create_team))
        .route(
            "/teams/{id}",
            get(get_team).put(update_team).delete(delete_team),
        )
        .route("/teams/{id}/members", get(list_members))
        .route(
            "/teams/{id}/members/{user_id}",
            put(set_member).delete(remove_member),
        )
        .route(
            "/teams/{id}/invitations",
            get(list_team_invitations).post(invite),
        )
        .route(
            "/teams/{id}/invitations/{invitation_id}",
            axum::routing::delete(withdraw_invitation),
        )
        .route("/invitations", get(my_invitations))
        .route("/invitations/{id}/accept", post(accept_invitation))
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
        )
        .route("/users/{id}/unlock", post(unlock_user))
}
