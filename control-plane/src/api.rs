//! The admin REST API (axum), shaped after ContextForge's: `/gateways`, `/tools`,
//! `/resources`, `/prompts`, `/servers` with CRUD, `POST /{kind}/{id}/state?activate=`,
//! cursor pagination and filters; RFC 9457 errors; OpenAPI 3.1 at `/openapi.json`.

mod catalog;
pub mod cross_site;
mod gateways;
pub mod problem;
mod servers;
mod system;
mod transfer;
mod xds;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::crypto::SecretBox;
use crate::edge_config::Edge;
use crate::federation::Federation;
use crate::model;
use crate::store::Store;
use crate::telemetry::Metrics;

pub use problem::{ApiError, Problem};

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
}

macro_rules! page_type {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
        pub struct $name {
            /// Items of this page, ordered by name.
            pub items: Vec<$item>,
            /// Cursor of the next page; absent on the last one.
            pub next_cursor: Option<String>,
        }

        impl<T: Into<$item>> From<model::Page<T>> for $name {
            fn from(p: model::Page<T>) -> Self {
                $name {
                    items: p.items.into_iter().map(Into::into).collect(),
                    next_cursor: p.next_cursor,
                }
            }
        }
    };
}

page_type!(GatewayPage, model::Gateway, "A page of gateways.");
page_type!(ToolPage, model::Tool, "A page of tools.");
page_type!(ResourcePage, model::Resource, "A page of resources.");
page_type!(PromptPage, model::Prompt, "A page of prompts.");
page_type!(ServerPage, model::Server, "A page of virtual servers.");

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(title = "mcpgw admin API", description = "Registry of the mcpgw control plane: upstream gateways, their tools, resources and prompts, and virtual servers.\n\nEvery POST, PUT and DELETE must carry `Content-Type: application/json` with a JSON body, or the header `X-Mcpgw-Request: 1` (body-less calls); requests a browser marks as cross-site (`Sec-Fetch-Site`, or a foreign `Origin`) are refused with 403 `cross-site-request`."),
    paths(
        system::health, system::ready, system::version, system::metrics, system::registry,
        gateways::list, gateways::create, gateways::get, gateways::update, gateways::delete,
        gateways::set_state, gateways::refresh,
        catalog::list_tools, catalog::create_tool, catalog::get_tool, catalog::update_tool,
        catalog::delete_tool, catalog::set_tool_state,
        catalog::list_resources, catalog::create_resource, catalog::get_resource,
        catalog::update_resource, catalog::delete_resource, catalog::set_resource_state,
        catalog::list_prompts, catalog::create_prompt, catalog::get_prompt, catalog::update_prompt,
        catalog::delete_prompt, catalog::set_prompt_state,
        servers::list, servers::create, servers::get, servers::update, servers::delete,
        servers::set_state,
        transfer::export, transfer::import,
        xds::nodes, xds::snapshot,
    ),
    components(schemas(Problem, problem::FieldError)),
    tags(
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

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
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
    Router::new()
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .route("/version", get(system::version))
        .route("/metrics", get(system::metrics))
        .route("/registry", get(system::registry))
        .route("/openapi.json", get(system::openapi))
        .route("/gateways", get(gateways::list).post(gateways::create))
        .route(
            "/gateways/{id}",
            get(gateways::get)
                .put(gateways::update)
                .delete(gateways::delete),
        )
        .route("/gateways/{id}/state", post(gateways::set_state))
        .route("/gateways/{id}/toggle", post(gateways::set_state))
        .route("/gateways/{id}/refresh", post(gateways::refresh))
        .route(
            "/tools",
            get(catalog::list_tools).post(catalog::create_tool),
        )
        .route(
            "/tools/{id}",
            get(catalog::get_tool)
                .put(catalog::update_tool)
                .delete(catalog::delete_tool),
        )
        .route("/tools/{id}/state", post(catalog::set_tool_state))
        .route("/tools/{id}/toggle", post(catalog::set_tool_state))
        .route(
            "/resources",
            get(catalog::list_resources).post(catalog::create_resource),
        )
        .route(
            "/resources/{id}",
            get(catalog::get_resource)
                .put(catalog::update_resource)
                .delete(catalog::delete_resource),
        )
        .route("/resources/{id}/state", post(catalog::set_resource_state))
        .route("/resources/{id}/toggle", post(catalog::set_resource_state))
        .route(
            "/prompts",
            get(catalog::list_prompts).post(catalog::create_prompt),
        )
        .route(
            "/prompts/{id}",
            get(catalog::get_prompt)
                .put(catalog::update_prompt)
                .delete(catalog::delete_prompt),
        )
        .route("/prompts/{id}/state", post(catalog::set_prompt_state))
        .route("/prompts/{id}/toggle", post(catalog::set_prompt_state))
        .route("/servers", get(servers::list).post(servers::create))
        .route(
            "/servers/{id}",
            get(servers::get)
                .put(servers::update)
                .delete(servers::delete),
        )
        .route("/servers/{id}/state", post(servers::set_state))
        .route("/servers/{id}/toggle", post(servers::set_state))
        .route("/xds/nodes", get(xds::nodes))
        .route("/snapshot", get(xds::snapshot))
        .route("/export", get(transfer::export))
        .route(
            "/import",
            post(transfer::import).layer(DefaultBodyLimit::max(64 * 1024 * 1024)),
        )
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
