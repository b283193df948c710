//! The admin REST API (axum), shaped after ContextForge's: `/gateways`, `/tools`,
//! `/resources`, `/prompts`, `/servers` with CRUD, `POST /{kind}/{id}/state?activate=`,
//! cursor pagination and filters; RFC 9457 errors; OpenAPI 3.1 at `/openapi.json`.
//!
//! Each registry kind is one [`face::Face`] implementation plus one `registry_face!` line
//! (handlers, OpenAPI fragment and routes); the REST types and their conversions to the
//! domain live in [`types`].

pub mod access;
mod catalog;
pub mod changes;
pub mod cross_site;
pub mod face;
mod gateways;
pub mod identity;
pub mod k8s_owned;
pub mod oidc;
pub mod policies;
pub mod problem;
mod servers;
mod system;
mod transfer;
pub mod types;
mod xds;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use utoipa::OpenApi;

use crate::crypto::SecretBox;
use crate::edge_config::Edge;
use crate::federation::Federation;
use crate::model::FieldInvalid;
use crate::store::Store;
use crate::telemetry::Metrics;

pub use problem::{ApiError, Problem};

impl From<FieldInvalid> for ApiError {
    fn from(e: FieldInvalid) -> Self {
        ApiError::Problem(Problem::invalid_field(e.field, e.reason))
    }
}

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Registry store.
    pub store: Store,
    /// Federation service.
    pub federation: Arc<Federation>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Credential cipher.
    pub secrets: SecretBox,
    /// What Envoys are served (snapshot, xDS node status).
    pub edge: Edge,
    /// Authentication (keys, passwords, tokens).
    pub auth: Arc<crate::auth::Auth>,
}

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(title = "mcpgw admin API", description = "Registry of the mcpgw control plane: upstream gateways, their tools, resources and prompts, and virtual servers; users, teams and API tokens.\n\nEvery endpoint except `/health`, `/ready`, `/version`, `/auth/login`, `/auth/oidc/*` (login through an OpenID provider) and `/.well-known/jwks.json` (and `/metrics` when the control plane runs with `--metrics-open`) needs `Authorization: Bearer <token>`: a session token from `POST /auth/login`, or an API token from `POST /tokens`. Without one the answer is 401 `unauthenticated`; with a bad, expired or revoked one 401 `invalid-token`; without the permission the route needs, 403 `forbidden`; an item, team or token the caller may not see is 404, as if it did not exist.\n\nEvery POST, PUT and DELETE must carry `Content-Type: application/json` with a JSON body, or the header `X-Mcpgw-Request: 1` (body-less calls); requests a browser marks as cross-site (`Sec-Fetch-Site`, or a foreign `Origin`) are refused with 403 `cross-site-request`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        system::health, system::ready, system::version, system::metrics, system::registry,
        gateways::refresh, gateways::identity_key,
        transfer::export, transfer::import,
        xds::nodes, xds::snapshot,
    ),
    components(schemas(Problem, problem::FieldError)),
    tags(
        (name = "auth", description = "Login, sessions, password, signing keys"),
        (name = "tokens", description = "API tokens for machines: named, scoped, expiring, revocable"),
        (name = "teams", description = "Teams, members and invitations"),
        (name = "users", description = "Users and their global roles (platform admins)"),
        (name = "system", description = "Health, readiness, version, metrics"),
        (name = "gateways", description = "Upstream MCP servers and peer gateways"),
        (name = "tools", description = "Tools (discovered and defined by hand)"),
        (name = "resources", description = "Resources and resource templates"),
        (name = "prompts", description = "Prompts"),
        (name = "servers", description = "Virtual servers"),
        (name = "transfer", description = "Export and import of the registry"),
        (name = "xds", description = "What the Envoys are served: the filter snapshot, and each node's xDS status"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer security scheme every authenticated endpoint names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token (JWT) from POST /auth/login, or an API token (mcpgw_…) from POST /tokens.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The registry kinds' handlers, OpenAPI fragments and routes, in one list: adding a kind
/// is one line here (and its `registry_face!` invocation).
macro_rules! kinds {
    ($($($face:ident)::+),* $(,)?) => {
        /// The whole OpenAPI document: the fixed endpoints and every kind's fragment.
        pub fn openapi() -> utoipa::openapi::OpenApi {
            let mut doc = ApiDoc::openapi();
            doc.merge(identity::Doc::openapi());
            doc.merge(changes::Doc::openapi());
            doc.merge(policies::Doc::openapi());
            doc.merge(oidc::Doc::openapi());
            $(doc.merge($($face)::+::openapi());)*
            doc
        }

        fn kind_routes() -> Router<AppState> {
            Router::new()$(.merge($($face)::+::routes()))*
        }
    };
}

kinds!(
    gateways::handlers,
    catalog::tools,
    catalog::resources,
    catalog::prompts,
    servers::handlers,
);

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut s = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    metrics.http_request(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let access = state.clone();
    Router::new()
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .route("/version", get(system::version))
        .route("/metrics", get(system::metrics))
        .route("/registry", get(system::registry))
        .route("/openapi.json", get(system::openapi))
        .merge(kind_routes())
        .route("/gateways/{id}/refresh", post(gateways::refresh))
        .route("/gateways/{id}/identity-key", get(gateways::identity_key))
        .route("/xds/nodes", get(xds::nodes))
        .route("/snapshot", get(xds::snapshot))
        .route("/export", get(transfer::export))
        .route(
            "/import",
            post(transfer::import).layer(DefaultBodyLimit::max(64 * 1024 * 1024)),
        )
        .merge(identity::routes())
        .merge(changes::routes())
        .merge(policies::routes())
        .merge(oidc::routes())
        // Innermost of all: objects a Kubernetes resource owns are read-only here.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            k8s_owned::refuse_owned_writes,
        ))
        // Then: after routing (the rule is looked up by the matched route).
        .route_layer(axum::middleware::from_fn_with_state(
            access,
            access::enforce,
        ))
        .route_layer(axum::middleware::from_fn(cross_site::refuse_cross_site))
        // After routing, so the metrics see the matched route template.
        .route_layer(axum::middleware::from_fn_with_state(metrics, track))
        .fallback(|| async { Problem::no_route() })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this endpoint does not accept that method",
            )
        })
        .with_state(state)
}
