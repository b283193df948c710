//! What the edge enforces besides the catalog: `/issuers` (token issuers), `/revocations`
//! (token ids refused until they expire), `/policies`
//! (authorization per virtual server), `/limits` (request limits per virtual server, and
//! the default) and `/plugins` (guardrails).
//!
//! Bodies are the filter snapshot's own types (`mcpgw_core::snapshot::{auth, limits,
//! plugins}`), so the API takes exactly what the edge reads; each write is checked with the
//! filter's own validation (rule conditions also checked as CEL, `crate::rules`) against
//! what is stored now, and refused with a 422 naming the field of the body, the store unchanged. Every
//! write bumps the registry version: the Envoys get it with the next push.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mcpgw_core::snapshot::auth::{Auth, Issuer, Rule, ServerAuth};
use mcpgw_core::snapshot::limits::ServerLimits;
use mcpgw_core::snapshot::plugins::Plugin;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use super::problem::ApiJson;
use super::{ApiError, AppState, Problem};
use crate::edge_config::{RefreshError, Refreshed};
use crate::snapshot::{
    PASSTHROUGH_POLICY, check_server_limits, check_written_server_auth, policy_prefix,
};
use crate::store::policies::{DEFAULT_LIMITS, EdgeKind, EdgeRecord};

type Answer<T> = Result<T, ApiError>;

/// A list answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EdgeItems {
    /// The items, by name.
    pub items: Vec<EdgeItem>,
}

/// A stored item: its name, its settings (`spec`, what a PUT takes) and timestamps.
#[derive(Debug, Serialize, ToSchema)]
pub struct EdgeItem {
    /// Issuer or plugin name, virtual server id, or `default`.
    pub name: String,
    /// The settings, in the schema of the filter snapshot's type for this kind.
    #[schema(value_type = Object)]
    pub spec: Value,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it was last written (RFC 3339).
    pub updated_at: String,
}

impl<T: Serialize> From<EdgeRecord<T>> for EdgeItem {
    fn from(r: EdgeRecord<T>) -> Self {
        EdgeItem {
            name: r.name,
            spec: serde_json::to_value(&r.spec).unwrap_or(Value::Null),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The body of `PUT /policies/{id}`: a virtual server's authorization (the snapshot's
/// `servers.{id}.auth`, `resource` optional where the control plane can derive it).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// Whether every request needs a verified token (default `true`). When `false` a token
    /// is optional and nothing is authorized.
    #[serde(default = "yes")]
    pub required: bool,
    /// The server's resource identifier (RFC 8707): the absolute URL clients reach its MCP
    /// endpoint at, e.g. `https://mcp.example.com/servers/{id}/mcp`. Tokens must carry it
    /// in `aud` (or an audience their issuer lists). Default: `{public_url}/servers/{id}/mcp`
    /// when the control plane runs with `--public-url`, derived when the policy is written;
    /// required otherwise.
    #[serde(default)]
    pub resource: Option<String>,
    /// Names of the issuers (`/issuers`) whose tokens the server accepts; empty: every one.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Scopes clients should ask for (metadata and 401 challenge).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Authorization rules: `{"name", "effect": "allow"|"deny", "when": "<CEL subset>"}`.
    /// A use needs the permission its method needs, one allow rule that holds and no deny
    /// rule that holds; no rule allows nothing.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<Rule>,
}

fn yes() -> bool {
    true
}

impl PolicyBody {
    /// The snapshot's form for server `id`; `public_url` supplies a missing `resource`.
    fn into_server_auth(self, id: &str, public_url: Option<&str>) -> Result<ServerAuth, Problem> {
        let resource = match (self.resource, public_url) {
            (Some(r), _) => r,
            (None, Some(base)) if id == PASSTHROUGH_POLICY => format!("{base}/mcp"),
            (None, Some(base)) => format!("{base}/servers/{id}/mcp"),
            (None, None) => {
                return Err(Problem::invalid_field(
                    "resource",
                    "required: the MCP endpoint's public URL, e.g. https://mcp.example.com/servers/{id}/mcp (or run the control plane with --public-url)",
                ));
            }
        };
        Ok(ServerAuth {
            required: self.required,
            resource,
            issuers: self.issuers,
            scopes: self.scopes,
            rules: self.rules,
        })
    }
}

impl From<ServerAuth> for PolicyBody {
    fn from(a: ServerAuth) -> Self {
        PolicyBody {
            required: a.required,
            resource: Some(a.resource),
            issuers: a.issuers,
            scopes: a.scopes,
            rules: a.rules,
        }
    }
}

/// A 422 for a field the filter's validation names, as a field of the body: `prefix` (the
/// snapshot's path to the item) is cut off.
fn refused(field: &str, reason: impl Into<String>, prefix: &str) -> ApiError {
    // The item as a whole (`plugins[0]`: two kinds at once) is the body.
    let field = match field
        .strip_prefix(prefix)
        .map(|f| f.trim_start_matches('.'))
    {
        Some("") => "body",
        Some(f) => f,
        None => field,
    };
    Problem::invalid_field(field, reason).into()
}

fn conflict(detail: String) -> ApiError {
    Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail).into()
}

fn created(was: bool) -> StatusCode {
    if was {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// The issuers stored now, as the snapshot's `auth` (keys are the publisher's).
async fn stored_auth(s: &AppState) -> Answer<Auth> {
    let mut auth = Auth::default();
    for r in s.store.edge_items::<Issuer>(EdgeKind::Issuer).await? {
        auth.issuers.insert(r.name, r.spec);
    }
    Ok(auth)
}

// ---- issuers ---------------------------------------------------------------------------

/// Token issuers the edge accepts tokens from.
#[utoipa::path(get, path = "/issuers", tag = "policies",
    responses((status = 200, body = EdgeItems)))]
pub async fn list_issuers(State(s): State<AppState>) -> Answer<Json<EdgeItems>> {
    let items = s.store.edge_items::<Issuer>(EdgeKind::Issuer).await?;
    Ok(Json(EdgeItems {
        items: items.into_iter().map(EdgeItem::from).collect(),
    }))
}

/// One issuer.
#[utoipa::path(get, path = "/issuers/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = EdgeItem),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_issuer(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Answer<Json<EdgeItem>> {
    let r = s.store.edge_item::<Issuer>(EdgeKind::Issuer, &name).await?;
    Ok(Json(r.into()))
}

/// Creates (201) or replaces (200) an issuer. The body is the snapshot's
/// `auth.issuers.{name}`: `issuer` (its `iss`, https), `algorithms` (no `none`, no `HS*`),
/// optional `audiences`, optional inline `jwks` (public keys; otherwise the control plane
/// fetches them through OpenID discovery, or supplies its own when `issuer` is its own
/// `jwt_issuer`), `claims` (claim mapping) and `refresh_seconds` (the longest time between
/// two fetches of its keys, 30 to 86400, default 900; a shorter `Cache-Control: max-age` on
/// its JWKS is honoured).
#[utoipa::path(put, path = "/issuers/{name}", tag = "policies", params(("name" = String, Path)),
    request_body(content = Object, description = "mcpgw_core::snapshot::auth::Issuer"),
    responses((status = 200, body = EdgeItem), (status = 201, body = EdgeItem),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_issuer(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(issuer): ApiJson<Issuer>,
) -> Answer<(StatusCode, Json<EdgeItem>)> {
    let mut auth = stored_auth(&s).await?;
    auth.issuers.insert(name.clone(), issuer.clone());
    if let Err(e) = mcpgw_core::snapshot::auth::validate(&auth) {
        if e.field == format!("auth.issuers.{name}") {
            return Err(Problem::invalid_field("name", e.reason).into());
        }
        return Err(refused(&e.field, e.reason, &format!("auth.issuers.{name}")));
    }
    let (r, was) = s
        .store
        .put_edge_item(EdgeKind::Issuer, &name, &issuer)
        .await?;
    Ok((created(was), Json(r.into())))
}

/// Deletes an issuer. Refused (409) while a policy names it, or while policies exist and
/// it is the last issuer.
#[utoipa::path(delete, path = "/issuers/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_issuer(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Answer<StatusCode> {
    s.store.edge_item::<Issuer>(EdgeKind::Issuer, &name).await?;
    let policies = s.store.edge_items::<ServerAuth>(EdgeKind::Policy).await?;
    if let Some(p) = policies.iter().find(|p| p.spec.issuers.contains(&name)) {
        return Err(conflict(format!(
            "the policy of server {} names issuer {name}: change it first",
            p.name
        )));
    }
    let issuers = s.store.edge_items::<Issuer>(EdgeKind::Issuer).await?;
    if issuers.len() == 1 && !policies.is_empty() {
        return Err(conflict(format!(
            "{name} is the last issuer and {} virtual server(s) have a policy: no token could be accepted",
            policies.len()
        )));
    }
    s.store.delete_edge_item(EdgeKind::Issuer, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fetches the issuer's keys now (through OpenID discovery, as the periodic refresh does)
/// and, if they changed, publishes them to the Envoys before answering: for a provider that
/// has just published a new key, or tokens whose `kid` the edge does not know. At most once
/// per 30 s per issuer (429 with `Retry-After`); 409 for an issuer whose keys are not
/// fetched (given inline, or the control plane's own); 502 when the fetch fails (the last
/// good keys stay).
#[utoipa::path(post, path = "/issuers/{name}/refresh", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = Refreshed),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 429, body = Problem, content_type = "application/problem+json"),
              (status = 502, body = Problem, content_type = "application/problem+json"),
              (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn refresh_issuer(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Refreshed>, axum::response::Response> {
    use axum::response::IntoResponse as _;
    let r = s
        .store
        .edge_item::<Issuer>(EdgeKind::Issuer, &name)
        .await
        .map_err(|e| Problem::from(ApiError::from(e)).into_response())?;
    match s.edge.refresh_issuer(r.spec).await {
        Ok(done) => Ok(Json(done)),
        Err(e) => {
            let detail = e.to_string();
            let problem = |status, slug, title| Problem::new(status, slug, title, detail.clone());
            Err(match e {
                RefreshError::NotFetched(_) => {
                    problem(StatusCode::CONFLICT, "keys-not-fetched", "Keys not fetched")
                        .into_response()
                }
                RefreshError::TooSoon { retry_after, .. } => (
                    [(
                        axum::http::header::RETRY_AFTER,
                        retry_after.as_secs().to_string(),
                    )],
                    problem(
                        StatusCode::TOO_MANY_REQUESTS,
                        "refresh-too-soon",
                        "Refreshed too recently",
                    ),
                )
                    .into_response(),
                RefreshError::Key(_) => problem(
                    StatusCode::BAD_GATEWAY,
                    "issuer-unreachable",
                    "Issuer keys not fetched",
                )
                .into_response(),
                RefreshError::Unavailable => problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Keys not being fetched",
                )
                .into_response(),
            })
        }
    }
}

// ---- policies --------------------------------------------------------------------------

/// Authorization policies of virtual servers (by server id).
#[utoipa::path(get, path = "/policies", tag = "policies",
    responses((status = 200, body = EdgeItems)))]
pub async fn list_policies(State(s): State<AppState>) -> Answer<Json<EdgeItems>> {
    let items = s.store.edge_items::<ServerAuth>(EdgeKind::Policy).await?;
    Ok(Json(EdgeItems {
        items: items.into_iter().map(EdgeItem::from).collect(),
    }))
}

/// A virtual server's authorization policy.
#[utoipa::path(get, path = "/policies/{id}", tag = "policies", params(("id" = String, Path, description = "Virtual server id")),
    responses((status = 200, body = EdgeItem),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_policy(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Answer<Json<EdgeItem>> {
    let r = s
        .store
        .edge_item::<ServerAuth>(EdgeKind::Policy, &id)
        .await?;
    Ok(Json(r.into()))
}

/// Sets (201 created, 200 replaced) a virtual server's authorization policy: the server
/// then needs a token (when `required`) from one of its issuers, and its rules decide who
/// may use what. The id `passthrough` is the passthrough path's (`/mcp` of an
/// `--edge-passthrough` gateway, the server behind an Istio sidecar): the snapshot's
/// `auth.passthrough`, its resource by default `{public_url}/mcp`. Each rule's condition is checked as CEL (the `cel` crate's parser, the
/// names and types the edge provides, the subset it evaluates) and with the filter's
/// compiler: one that does not pass is a 422 naming it (`rules[i].when`) and saying where
/// (`line L, column C: …`).
#[utoipa::path(put, path = "/policies/{id}", tag = "policies", params(("id" = String, Path, description = "Virtual server id, or `passthrough`")),
    request_body = PolicyBody,
    responses((status = 200, body = EdgeItem), (status = 201, body = EdgeItem),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_policy(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Answer<(StatusCode, Json<EdgeItem>)> {
    if id != PASSTHROUGH_POLICY {
        s.store.get_server(&id).await?;
    }
    let a = body.into_server_auth(&id, s.edge.public_url())?;
    let auth = stored_auth(&s).await?;
    check_written_server_auth(&id, &a, &auth)
        .map_err(|e| refused(&e.field, e.reason, &policy_prefix(&id)))?;
    let (r, was) = s.store.put_edge_item(EdgeKind::Policy, &id, &a).await?;
    Ok((created(was), Json(r.into())))
}

/// Removes a virtual server's policy: it then needs no token.
#[utoipa::path(delete, path = "/policies/{id}", tag = "policies", params(("id" = String, Path, description = "Virtual server id")),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_policy(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    s.store.delete_edge_item(EdgeKind::Policy, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- revocations -----------------------------------------------------------------------

/// Longest token id accepted.
pub const MAX_JTI_BYTES: usize = 256;

/// A revoked token id.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revocation {
    /// The token's id (its `jti` claim).
    pub jti: String,
    /// Until when the edge refuses it (RFC 3339): the token's own expiry, after which the
    /// revocation is forgotten.
    pub expires_at: String,
}

/// The revoked token ids not expired yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revocations {
    /// By id.
    pub items: Vec<Revocation>,
}

/// The body of `PUT /revocations/{jti}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationBody {
    /// The token's `exp` claim (seconds since the Unix epoch): the edge refuses the token
    /// until then (it refuses it as expired afterwards).
    pub exp: i64,
}

/// Token ids the edge refuses until they expire (the snapshot's `auth.revoked`): the
/// control plane's session tokens ended by `POST /auth/logout`, and any issuer's tokens
/// revoked with `PUT /revocations/{jti}`.
#[utoipa::path(get, path = "/revocations", tag = "policies",
    responses((status = 200, body = Revocations)))]
pub async fn list_revocations(State(s): State<AppState>) -> Answer<Json<Revocations>> {
    let items = s
        .store
        .revocations()
        .await?
        .into_iter()
        .map(|(jti, expires_at)| Revocation { jti, expires_at })
        .collect();
    Ok(Json(Revocations { items }))
}

/// Revokes a token by its id (`jti`) until its expiry (`exp`): the edge answers it 401 from
/// the next push on, whichever issuer signed it (for a token that leaked before it
/// expires). 201 when the id was not revoked, 200 when its expiry was replaced. 422 for an
/// empty or over-long id, or an `exp` already past.
#[utoipa::path(put, path = "/revocations/{jti}", tag = "policies", params(("jti" = String, Path)),
    request_body = RevocationBody,
    responses((status = 200, body = Revocation), (status = 201, body = Revocation),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_revocation(
    State(s): State<AppState>,
    Path(jti): Path<String>,
    ApiJson(body): ApiJson<RevocationBody>,
) -> Answer<(StatusCode, Json<Revocation>)> {
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES || jti.chars().any(char::is_control) {
        return Err(Problem::invalid_field(
            "jti",
            format!("1..={MAX_JTI_BYTES} bytes, no control characters"),
        )
        .into());
    }
    let until = chrono::DateTime::from_timestamp(body.exp, 0)
        .filter(|t| *t > chrono::Utc::now())
        .ok_or_else(|| {
            Problem::invalid_field(
                "exp",
                "must be in the future (seconds since the Unix epoch): an expired token is refused as expired",
            )
        })?;
    let expires_at = until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let was = s.store.jwt_revoked(&jti).await?;
    s.store.revoke_jwt(&jti, &expires_at).await?;
    Ok((created(!was), Json(Revocation { jti, expires_at })))
}

// ---- limits ----------------------------------------------------------------------------

/// Request limits: `default` (every virtual server without its own) and per server id.
#[utoipa::path(get, path = "/limits", tag = "policies",
    responses((status = 200, body = EdgeItems)))]
pub async fn list_limits(State(s): State<AppState>) -> Answer<Json<EdgeItems>> {
    let items = s.store.edge_items::<ServerLimits>(EdgeKind::Limits).await?;
    Ok(Json(EdgeItems {
        items: items.into_iter().map(EdgeItem::from).collect(),
    }))
}

async fn get_limits_of(s: &AppState, name: &str) -> Answer<Json<EdgeItem>> {
    let r = s
        .store
        .edge_item::<ServerLimits>(EdgeKind::Limits, name)
        .await?;
    Ok(Json(r.into()))
}

async fn put_limits_of(
    s: &AppState,
    name: &str,
    limits: ServerLimits,
) -> Answer<(StatusCode, Json<EdgeItem>)> {
    let service = s
        .edge
        .snapshot()
        .and_then(|snapshot| snapshot.limits.service.clone());
    check_server_limits(name, &limits, service.as_ref()).map_err(|e| match e {
        mcpgw_core::snapshot::ConfigError::FieldInvalid { field, reason } => {
            let reason = if field.ends_with(".global") {
                "a global limit needs the rate-limit service: start the control plane with --ratelimit-listen (or configure ratelimit_listen)".to_owned()
            } else {
                reason
            };
            refused(&field, reason, &format!("limits.servers.{name}"))
        }
        other => Problem::invalid_field("body", other.to_string()).into(),
    })?;
    let (r, was) = s
        .store
        .put_edge_item(EdgeKind::Limits, name, &limits)
        .await?;
    Ok((created(was), Json(r.into())))
}

/// The default limits: of every virtual server without its own.
#[utoipa::path(get, path = "/limits/default", tag = "policies",
    responses((status = 200, body = EdgeItem),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_default_limits(State(s): State<AppState>) -> Answer<Json<EdgeItem>> {
    get_limits_of(&s, DEFAULT_LIMITS).await
}

/// Sets the default limits (the snapshot's `limits.default`): `rates` and `concurrency`,
/// each left out meaning ContextForge's defaults (100 tool calls per minute per principal
/// and tool; 10 in flight per tool).
#[utoipa::path(put, path = "/limits/default", tag = "policies",
    request_body(content = Object, description = "mcpgw_core::snapshot::limits::ServerLimits"),
    responses((status = 200, body = EdgeItem), (status = 201, body = EdgeItem),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_default_limits(
    State(s): State<AppState>,
    ApiJson(limits): ApiJson<ServerLimits>,
) -> Answer<(StatusCode, Json<EdgeItem>)> {
    put_limits_of(&s, DEFAULT_LIMITS, limits).await
}

/// Removes the default limits: servers without their own are then not limited.
#[utoipa::path(delete, path = "/limits/default", tag = "policies",
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_default_limits(State(s): State<AppState>) -> Answer<StatusCode> {
    s.store
        .delete_edge_item(EdgeKind::Limits, DEFAULT_LIMITS)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A virtual server's limits.
#[utoipa::path(get, path = "/limits/{id}", tag = "policies", params(("id" = String, Path, description = "Virtual server id")),
    responses((status = 200, body = EdgeItem),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_limits(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Answer<Json<EdgeItem>> {
    get_limits_of(&s, &id).await
}

/// Sets a virtual server's limits (instead of the default): rate limits (token buckets,
/// `global` ones checked against the rate-limit service) and concurrency limits.
#[utoipa::path(put, path = "/limits/{id}", tag = "policies", params(("id" = String, Path, description = "Virtual server id")),
    request_body(content = Object, description = "mcpgw_core::snapshot::limits::ServerLimits"),
    responses((status = 200, body = EdgeItem), (status = 201, body = EdgeItem),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_limits(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(limits): ApiJson<ServerLimits>,
) -> Answer<(StatusCode, Json<EdgeItem>)> {
    s.store.get_server(&id).await?;
    put_limits_of(&s, &id, limits).await
}

/// Removes a virtual server's limits: the default ones apply again.
#[utoipa::path(delete, path = "/limits/{id}", tag = "policies", params(("id" = String, Path, description = "Virtual server id")),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_limits(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    s.store.delete_edge_item(EdgeKind::Limits, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- plugins ---------------------------------------------------------------------------

/// Guardrail plugins.
#[utoipa::path(get, path = "/plugins", tag = "policies",
    responses((status = 200, body = EdgeItems)))]
pub async fn list_plugins(State(s): State<AppState>) -> Answer<Json<EdgeItems>> {
    let items = s.store.edge_items::<Plugin>(EdgeKind::Plugin).await?;
    Ok(Json(EdgeItems {
        items: items.into_iter().map(EdgeItem::from).collect(),
    }))
}

/// One plugin.
#[utoipa::path(get, path = "/plugins/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = EdgeItem),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_plugin(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Answer<Json<EdgeItem>> {
    let r = s.store.edge_item::<Plugin>(EdgeKind::Plugin, &name).await?;
    Ok(Json(r.into()))
}

/// Creates (201) or replaces (200) a plugin: the snapshot's `plugins[]` entry (its `name`
/// is the path's and may be left out): `priority`, `mode`, `hooks`, `conditions`
/// (`servers`, `tools`, …) and exactly one kind (`pii`, `secrets`, `deny_list`, `regex`,
/// `resource_filter`, `output_size`, `schema`). Checked and compiled as the filter does.
#[utoipa::path(put, path = "/plugins/{name}", tag = "policies", params(("name" = String, Path)),
    request_body(content = Object, description = "mcpgw_core::snapshot::plugins::Plugin"),
    responses((status = 200, body = EdgeItem), (status = 201, body = EdgeItem),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_plugin(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(mut body): ApiJson<Value>,
) -> Answer<(StatusCode, Json<EdgeItem>)> {
    let Value::Object(fields) = &mut body else {
        return Err(Problem::invalid_field("body", "must be a JSON object").into());
    };
    match fields.get("name") {
        None => {
            fields.insert("name".into(), Value::from(name.clone()));
        }
        Some(n) if n.as_str() == Some(name.as_str()) => {}
        Some(_) => {
            return Err(Problem::invalid_field("name", "must be the name in the path").into());
        }
    }
    let plugin: Plugin = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::from(Problem::invalid_field(field, e.into_inner().to_string()))
    })?;
    mcpgw_core::guard::Guard::check(std::slice::from_ref(&plugin)).map_err(|e| match e {
        mcpgw_core::snapshot::ConfigError::FieldInvalid { field, reason } => {
            refused(&field, reason, "plugins[0]")
        }
        other => Problem::invalid_field("body", other.to_string()).into(),
    })?;
    let (r, was) = s
        .store
        .put_edge_item(EdgeKind::Plugin, &name, &plugin)
        .await?;
    Ok((created(was), Json(r.into())))
}

/// Deletes a plugin.
#[utoipa::path(delete, path = "/plugins/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_plugin(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Answer<StatusCode> {
    s.store.delete_edge_item(EdgeKind::Plugin, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI fragment of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(
        list_issuers, get_issuer, put_issuer, delete_issuer, refresh_issuer,
        list_policies, get_policy, put_policy, delete_policy,
        list_limits, get_default_limits, put_default_limits, delete_default_limits,
        get_limits, put_limits, delete_limits,
        list_plugins, get_plugin, put_plugin, delete_plugin,
        list_revocations, put_revocation,
    ),
    components(schemas(EdgeItem, EdgeItems, PolicyBody, Refreshed, Revocation, Revocations, RevocationBody)),
    tags((name = "policies", description = "What the edge enforces: token issuers, revoked tokens, authorization per virtual server, request limits, guardrail plugins"))
)]
pub struct Doc;

/// The routes.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/issuers", get(list_issuers))
        .route(
            "/issuers/{name}",
            get(get_issuer).put(put_issuer).delete(delete_issuer),
        )
        .route(
            "/issuers/{name}/refresh",
            axum::routing::post(refresh_issuer),
        )
        .route("/policies", get(list_policies))
        .route(
            "/policies/{id}",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route("/limits", get(list_limits))
        .route(
            "/limits/default",
            get(get_default_limits)
                .put(put_default_limits)
                .delete(delete_default_limits),
        )
        .route(
            "/limits/{id}",
            get(get_limits).put(put_limits).delete(delete_limits),
        )
        .route("/revocations", get(list_revocations))
        .route("/revocations/{jti}", axum::routing::put(put_revocation))
        .route("/plugins", get(list_plugins))
        .route(
            "/plugins/{name}",
            get(get_plugin).put(put_plugin).delete(delete_plugin),
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_paths_become_body_fields() {
        let field = |e: ApiError| match e {
            ApiError::Problem(p) => p.errors[0].field.clone(),
            other => panic!("{other}"),
        };
        for (path, prefix, want) in [
            (
                "auth.issuers.corp.algorithms[1]",
                "auth.issuers.corp",
                "algorithms[1]",
            ),
            (
                "servers.s1.auth.rules[0].when",
                "servers.s1.auth",
                "rules[0].when",
            ),
            ("plugins[0].pii.detectors", "plugins[0]", "pii.detectors"),
            ("elsewhere", "plugins[0]", "elsewhere"),
            ("plugins[0]", "plugins[0]", "body"),
        ] {
            assert_eq!(field(refused(path, "x", prefix)), want, "{path}");
        }
    }

    #[test]
    fn a_policy_needs_a_resource_and_keeps_its_rules() {
        let body: PolicyBody = serde_json::from_value(serde_json::json!({
            "rules": [{"name": "all", "when": "true"}]
        }))
        .unwrap();
        assert!(body.required);
        assert_eq!(
            body.clone().into_server_auth("s", None).unwrap_err().errors[0].field,
            "resource"
        );
        // With a public URL, the resource is derived from it and the server id.
        let derived = body
            .clone()
            .into_server_auth("s1", Some("https://mcp.example.com/edge"))
            .unwrap();
        assert_eq!(
            derived.resource,
            "https://mcp.example.com/edge/servers/s1/mcp"
        );
        // One given wins over the public URL.
        let mut body = body;
        body.resource = Some("https://gw.example.com/servers/s/mcp".into());
        let a = body
            .into_server_auth("s", Some("https://mcp.example.com"))
            .unwrap();
        assert_eq!(a.resource, "https://gw.example.com/servers/s/mcp");
        assert_eq!(a.rules[0].effect, mcpgw_core::snapshot::auth::Effect::Allow);
    }
}
