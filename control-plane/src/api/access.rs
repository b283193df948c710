//! The admin API's access layer: every route has one [`Rule`], and this middleware
//! enforces it before the handler runs. A route without a rule is refused (403), so a
//! new endpoint is closed until someone says who may call it.
//!
//! Answers: no credential → 401 `unauthenticated`; a bad, expired or revoked one → 401
//! `invalid-token` (both with `WWW-Authenticate: Bearer`); an API token used from outside
//! its IP ranges → 403 `token-address-refused`; a registry item, team or token the caller
//! may not even see → 404, as if it did not exist; one it sees but may not change → 403
//! `forbidden`, naming the permission it lacks.

use std::net::SocketAddr;

use axum::RequestExt as _;
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, Problem};
use crate::auth::AuthError;
use crate::auth::rbac::{Ownership, Permission, Principal, Target, Visibility};
use crate::store::identity::OwnedKind;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, without a credential.
    Open,
    /// `/metrics`: open or [`Permission::AdminMetrics`], as configured.
    Metrics,
    /// Any authenticated caller.
    Authenticated,
    /// Holding the permission in some scope.
    Anywhere(Permission),
    /// Holding the permission at global scope.
    Global(Permission),
    /// A list of a registry kind: shows what the caller may read (holding it somewhere).
    List(OwnedKind, Permission),
    /// Creating an item of a kind in the team of `?team_id=` (default: the caller's
    /// personal team) with `?visibility=` (default `team`).
    Create(OwnedKind, Permission),
    /// Something done to the item `{id}`.
    Item(OwnedKind, Permission),
    /// Something done to the team `{id}`.
    Team(Permission),
    /// Something done to the API token `{id}`: its own user, or an `admin.users` holder.
    Token(Permission),
}

/// The read permission of a kind.
pub fn read_permission(kind: OwnedKind) -> Permission {
    match kind {
        OwnedKind::Gateway => Permission::GatewaysRead,
        OwnedKind::Tool => Permission::ToolsRead,
        OwnedKind::Resource => Permission::ResourcesRead,
        OwnedKind::Prompt => Permission::PromptsRead,
        OwnedKind::Server => Permission::ServersRead,
    }
}

/// The write permissions (create, update, delete) of a kind. Catalog items (tools,
/// resources, prompts) are part of a gateway's catalog: writing them takes `gateways.*`.
pub fn write_permissions(kind: OwnedKind) -> [Permission; 3] {
    match kind {
        OwnedKind::Server => [
            Permission::ServersCreate,
            Permission::ServersUpdate,
            Permission::ServersDelete,
        ],
        _ => [
            Permission::GatewaysCreate,
            Permission::GatewaysUpdate,
            Permission::GatewaysDelete,
        ],
    }
}

const KINDS: [(&str, OwnedKind); 5] = [
    ("/gateways", OwnedKind::Gateway),
    ("/tools", OwnedKind::Tool),
    ("/resources", OwnedKind::Resource),
    ("/prompts", OwnedKind::Prompt),
    ("/servers", OwnedKind::Server),
];

/// The rule of a route (`None`: no rule, refused).
pub fn rule(method: &Method, path: &str) -> Option<Rule> {
    use Permission::*;
    let m = method.as_str();
    let fixed = match (m, path) {
        ("GET", "/health" | "/ready" | "/version") => Some(Rule::Open),
        ("GET", "/.well-known/jwks.json") | ("POST", "/auth/login") => Some(Rule::Open),
        // How a credential is obtained through an OpenID provider.
        (
            "GET",
            "/auth/oidc" | "/auth/oidc/{provider}/login" | "/auth/oidc/{provider}/callback",
        )
        | ("POST", "/auth/oidc/token") => Some(Rule::Open),
        ("GET", "/metrics") => Some(Rule::Metrics),
        ("GET", "/registry" | "/openapi.json" | "/auth/me" | "/invitations") => {
            Some(Rule::Authenticated)
        }
        ("POST", "/auth/logout" | "/auth/password" | "/invitations/{id}/accept") => {
            Some(Rule::Authenticated)
        }
        ("POST", "/auth/keys/rotate") => Some(Rule::Global(AdminKeys)),
        ("GET", "/xds/nodes" | "/snapshot") => Some(Rule::Global(AdminSystem)),
        ("GET", "/export") | ("POST", "/import") => Some(Rule::Global(AdminTransfer)),
        ("POST", "/gateways/{id}/refresh") => Some(Rule::Item(OwnedKind::Gateway, GatewaysUpdate)),
        ("GET", "/gateways/{id}/changes" | "/gateways/{id}/pinning") => {
            Some(Rule::Item(OwnedKind::Gateway, GatewaysRead))
        }
        ("POST", "/gateways/{id}/changes/{change_id}/approve")
        | ("POST", "/gateways/{id}/changes/{change_id}/reject")
        | ("PUT", "/gateways/{id}/pinning") => Some(Rule::Item(OwnedKind::Gateway, GatewaysUpdate)),
        // The key lets its holder speak for any principal to the upstream.
        ("GET", "/gateways/{id}/identity-key") => {
            Some(Rule::Item(OwnedKind::Gateway, GatewaysUpdate))
        }
        ("GET", "/tokens") => Some(Rule::Anywhere(TokensRead)),
        ("POST", "/tokens") => Some(Rule::Anywhere(TokensCreate)),
        ("GET", "/tokens/{id}") => Some(Rule::Token(TokensRead)),
        ("DELETE", "/tokens/{id}") => Some(Rule::Token(TokensRevoke)),
        ("GET", "/teams") => Some(Rule::Anywhere(TeamsRead)),
        ("POST", "/teams") => Some(Rule::Anywhere(TeamsCreate)),
        ("GET", "/teams/{id}" | "/teams/{id}/members") => Some(Rule::Team(TeamsRead)),
        ("PUT", "/teams/{id}") => Some(Rule::Team(TeamsUpdate)),
        ("DELETE", "/teams/{id}") => Some(Rule::Team(TeamsDelete)),
        ("PUT" | "DELETE", "/teams/{id}/members/{user_id}") => Some(Rule::Team(TeamsMembers)),
        ("GET" | "POST", "/teams/{id}/invitations") => Some(Rule::Team(TeamsMembers)),
        ("DELETE", "/teams/{id}/invitations/{invitation_id}") => Some(Rule::Team(TeamsMembers)),
        ("GET" | "POST", "/users") => Some(Rule::Global(AdminUsers)),
        ("GET" | "PUT" | "DELETE", "/users/{id}") => Some(Rule::Global(AdminUsers)),
        ("POST", "/users/{id}/unlock") => Some(Rule::Global(AdminUsers)),
        // What the edge enforces (`api::policies`). Trusting a token issuer is trusting
        // its keys, and revoking its tokens is distrusting them: who manages the control
        // plane's own signing keys decides. A server's
        // policy and limits are part of the server; plugins and the default limits apply
        // across servers, so they need the server permissions at global scope.
        ("GET", "/issuers" | "/issuers/{name}")
        | ("PUT" | "DELETE", "/issuers/{name}")
        | ("POST", "/issuers/{name}/refresh")
        | ("GET", "/revocations")
        | ("PUT", "/revocations/{jti}") => Some(Rule::Global(AdminKeys)),
        ("GET", "/policies/{id}" | "/limits/{id}") => {
            Some(Rule::Item(OwnedKind::Server, ServersRead))
        }
        ("PUT" | "DELETE", "/policies/{id}" | "/limits/{id}") => {
            Some(Rule::Item(OwnedKind::Server, ServersUpdate))
        }
        ("GET", "/policies" | "/limits" | "/limits/default" | "/plugins" | "/plugins/{name}") => {
            Some(Rule::Global(ServersRead))
        }
        ("PUT" | "DELETE", "/limits/default" | "/plugins/{name}") => {
            Some(Rule::Global(ServersUpdate))
        }
        _ => None,
    };
    if fixed.is_some() {
        return fixed;
    }
    let (prefix, kind) = KINDS.iter().find(|(p, _)| path.starts_with(p))?;
    let read = read_permission(*kind);
    let [create, update, delete] = write_permissions(*kind);
    match (m, &path[prefix.len()..]) {
        ("GET", "") => Some(Rule::List(*kind, read)),
        ("POST", "") => Some(Rule::Create(*kind, create)),
        ("GET", "/{id}" | "/{id}/owner") => Some(Rule::Item(*kind, read)),
        ("PUT", "/{id}" | "/{id}/owner") => Some(Rule::Item(*kind, update)),
        ("POST", "/{id}/state" | "/{id}/toggle") => Some(Rule::Item(*kind, update)),
        ("DELETE", "/{id}") => Some(Rule::Item(*kind, delete)),
        _ => None,
    }
}

/// The owner a create gives its item (inserted for the handler by the middleware).
#[derive(Debug, Clone)]
pub struct NewOwner(pub Ownership);

/// `?team_id=&visibility=` of a create (other parameters are the handler's).
struct OwnerQuery {
    team_id: Option<String>,
    visibility: Option<String>,
}

fn forbidden(p: Permission, what: &str) -> Response {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden",
        format!("this needs the permission {} {what}", p.as_str()),
    )
    .into_response()
}

fn not_found(kind: &str, id: &str) -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("{kind} {id} not found"),
    )
    .into_response()
}

/// The answer to a refused credential.
pub fn auth_error(e: AuthError) -> Response {
    let bearer = |error: Option<&str>| {
        let v = match error {
            Some(e) => format!("Bearer realm=\"mcpgw\", error=\"{e}\""),
            None => "Bearer realm=\"mcpgw\"".to_owned(),
        };
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("Bearer"))
    };
    match e {
        AuthError::Missing => (
            [(header::WWW_AUTHENTICATE, bearer(None))],
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "this endpoint needs a credential: Authorization: Bearer <session or API token> \
                 (POST /auth/login, or `mcpgw login`)",
            ),
        )
            .into_response(),
        AuthError::Invalid(why) => {
            tracing::debug!(reason = %why, "credential refused");
            (
                [(header::WWW_AUTHENTICATE, bearer(Some("invalid_token")))],
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid-token",
                    "Invalid credential",
                    "the token is malformed, expired, revoked, or its user is disabled",
                ),
            )
                .into_response()
        }
        AuthError::BadLogin => Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid-credentials",
            "Login failed",
            "wrong email or password",
        )
        .into_response(),
        AuthError::Locked(until) => {
            let secs = (until - chrono::Utc::now()).num_seconds().max(1);
            (
                [(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string())
                        .unwrap_or(HeaderValue::from_static("60")),
                )],
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "login-locked",
                    "Too many failed logins",
                    format!(
                        "logins for this email are locked after repeated failures; try again in {secs} s"
                    ),
                ),
            )
                .into_response()
        }
        AuthError::Address => Problem::new(
            StatusCode::FORBIDDEN,
            "token-address-refused",
            "Token not accepted from this address",
            "this API token is limited to IP ranges that do not include the client's address",
        )
        .into_response(),
        AuthError::Field(f) => Problem::invalid_field(f.field, f.reason).into_response(),
        AuthError::Conflict(why) => {
            Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", why).into_response()
        }
        AuthError::Store(s) => super::ApiError::Store(s).into_response(),
        AuthError::Keys(k) => {
            tracing::error!(error = %k, "signing keys failed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the signing keys failed; see the control plane log",
            )
            .into_response()
        }
    }
}

/// The `Authorization: Bearer` credential of a request (`None`: absent; `Some("")`: not Bearer).
fn bearer(req: &Request) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?;
    let s = v.to_str().unwrap_or("");
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    Some(if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_owned()
    } else {
        String::new()
    })
}

/// The middleware: authenticate, then enforce the route's rule.
pub async fn enforce(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let Some(rule) = rule(req.method(), &path) else {
        tracing::error!(method = %req.method(), %path, "route without an access rule refused");
        return Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "this endpoint has no access rule",
        )
        .into_response();
    };
    if rule == Rule::Open || rule == Rule::Metrics && s.auth.settings().metrics_open {
        return next.run(req).await;
    }
    let Some(credential) = bearer(&req) else {
        return auth_error(AuthError::Missing);
    };
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let principal = match s.auth.authenticate(&credential, ip).await {
        Ok(p) => p,
        Err(e) => return auth_error(e),
    };
    let params: Vec<(String, String)> = match req.extract_parts::<RawPathParams>().await {
        Ok(p) => p
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        Err(_) => Vec::new(),
    };
    let id = params
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // The passthrough path's policy belongs to no server: like the default limits, it
    // applies across servers, so it needs the server permission at global scope.
    let rule = match rule {
        Rule::Item(OwnedKind::Server, perm)
            if path == "/policies/{id}" && id == crate::snapshot::PASSTHROUGH_POLICY =>
        {
            Rule::Global(perm)
        }
        other => other,
    };
    match check(&s, &principal, rule, &id, &mut req).await {
        Ok(()) => {}
        Err(resp) => return resp,
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

async fn check(
    s: &AppState,
    p: &Principal,
    rule: Rule,
    id: &str,
    req: &mut Request,
) -> Result<(), Response> {
    let store_err = |e: crate::store::StoreError| super::ApiError::Store(e).into_response();
    match rule {
        Rule::Open | Rule::Authenticated => Ok(()),
        Rule::Metrics => allow(
            p.may(Permission::AdminMetrics, Target::Global),
            Permission::AdminMetrics,
            "at global scope",
        ),
        Rule::Anywhere(perm) => allow(p.may(perm, Target::Anywhere), perm, "in some team"),
        Rule::Global(perm) => allow(p.may(perm, Target::Global), perm, "at global scope"),
        Rule::List(kind, perm) => {
            allow(p.may(perm, Target::Anywhere), perm, "in some team")?;
            let mut scope = p.list_scope(perm);
            if kind == OwnedKind::Server {
                scope.ids = p.server_ids();
            }
            req.extensions_mut().insert(scope);
            Ok(())
        }
        Rule::Create(_, perm) => {
            let q = owner_query(req.uri().query().unwrap_or(""));
            let team = q
                .team_id
                .or_else(|| p.personal_team.clone())
                .unwrap_or_else(|| "global".to_owned());
            let visibility = match q.visibility.as_deref() {
                None => Visibility::Team,
                Some(v) => Visibility::parse(v).ok_or_else(|| {
                    Problem::invalid_field("visibility", "must be private, team or public")
                        .into_response()
                })?,
            };
            match s.store.get_team(&team).await {
                Ok(_) => {}
                Err(crate::store::StoreError::NotFound { .. }) => {
                    return Err(Problem::invalid_field("team_id", format!("no team {team}"))
                        .into_response());
                }
                Err(e) => return Err(store_err(e)),
            }
            allow(
                p.may(perm, Target::Team(&team)),
                perm,
                &format!("in team {team}"),
            )?;
            req.extensions_mut().insert(NewOwner(Ownership {
                team,
                user: Some(p.user_id.clone()),
                visibility,
            }));
            Ok(())
        }
        Rule::Item(kind, perm) => {
            let owner = match s.store.ownership(kind, id).await {
                Ok(Some(o)) => o,
                // The handler answers 404 for what does not exist.
                Ok(None) => return Ok(()),
                Err(e) => return Err(store_err(e)),
            };
            let target = match kind {
                OwnedKind::Server => Target::Server { id, owner: &owner },
                _ => Target::Item(&owner),
            };
            if !p.may(read_permission(kind), target) {
                return Err(not_found(kind.label(), id));
            }
            allow(
                p.may(perm, target),
                perm,
                &format!("for this {}", kind.label()),
            )
        }
        Rule::Team(perm) => {
            if !p.may(Permission::TeamsRead, Target::Team(id)) {
                return Err(not_found("team", id));
            }
            allow(p.may(perm, Target::Team(id)), perm, "in this team")
        }
        Rule::Token(perm) => {
            let t = match s.store.get_token(id).await {
                Ok(t) => t,
                Err(crate::store::StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(store_err(e)),
            };
            let own = t.user_id == p.user_id && p.may(perm, Target::Anywhere);
            if own || p.may(Permission::AdminUsers, Target::Global) {
                Ok(())
            } else {
                Err(not_found("token", id))
            }
        }
    }
}

// The refusal is the answer, sent at once: boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
fn allow(ok: bool, p: Permission, what: &str) -> Result<(), Response> {
    if ok { Ok(()) } else { Err(forbidden(p, what)) }
}

fn owner_query(q: &str) -> OwnerQuery {
    let mut out = OwnerQuery {
        team_id: None,
        visibility: None,
    };
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        match k.as_ref() {
            "team_id" => out.team_id = Some(v.into_owned()),
            "visibility" => out.visibility = Some(v.into_owned()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_route_has_a_rule_and_unknown_ones_do_not() {
        for (prefix, _) in KINDS {
            for (m, suffix) in [
                (Method::GET, ""),
                (Method::POST, ""),
                (Method::GET, "/{id}"),
                (Method::PUT, "/{id}"),
                (Method::DELETE, "/{id}"),
                (Method::POST, "/{id}/state"),
                (Method::POST, "/{id}/toggle"),
                (Method::GET, "/{id}/owner"),
                (Method::PUT, "/{id}/owner"),
            ] {
                assert!(
                    rule(&m, &format!("{prefix}{suffix}")).is_some(),
                    "{m} {prefix}{suffix}"
                );
            }
        }
        // Every documented operation has a rule (the middleware refuses the rest).
        let doc = serde_json::to_value(crate::api::openapi()).unwrap_or_default();
        let mut n = 0;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, _) in item.as_object().into_iter().flatten() {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                assert!(rule(&m, path).is_some(), "{m} {path} has no rule");
                n += 1;
            }
        }
        assert!(n > 70, "{n} operations");
        assert_eq!(
            rule(&Method::GET, "/openapi.json"),
            Some(Rule::Authenticated)
        );
        assert_eq!(rule(&Method::GET, "/nope"), None);
        assert_eq!(rule(&Method::PATCH, "/gateways/{id}"), None);
        assert_eq!(rule(&Method::GET, "/health"), Some(Rule::Open));
    }
}
