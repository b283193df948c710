//! What the Envoys are served: each node's xDS status, and the filter snapshot.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, Problem};
use crate::xds::NodeStatus;

/// What `GET /snapshot` shows instead of secrets.
const REDACTED: &str = "<redacted>";

/// Every Envoy connected over xDS (or disconnected recently): versions sent and acked per
/// resource type, and the last rejection with Envoy's error.
#[utoipa::path(get, path = "/xds/nodes", tag = "xds", responses(
    (status = 200, body = Vec<NodeStatus>),
    (status = 404, body = Problem, content_type = "application/problem+json",
     description = "xDS is disabled (`--xds-listen off`)")))]
pub async fn nodes(State(s): State<AppState>) -> Result<Json<Vec<NodeStatus>>, Problem> {
    let ads = s.edge.ads().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "xds-disabled",
            "xDS disabled",
            "this control plane serves no xDS (started with --xds-listen off)",
        )
    })?;
    Ok(Json(ads.nodes()))
}

/// The filter snapshot the Envoys are served now (the wasm filter's plugin configuration):
/// virtual servers with their catalogs, upstreams, policy. Its `version` is the registry
/// version it was built from. The session signing key is redacted.
#[utoipa::path(get, path = "/snapshot", tag = "xds", responses(
    (status = 200, body = Object, content_type = "application/json",
     description = "The snapshot (schema: `mcpgw_core::snapshot::Snapshot`)"),
    (status = 503, body = Problem, content_type = "application/problem+json",
     description = "No snapshot has been built yet (the registry could not be read)")))]
pub async fn snapshot(State(s): State<AppState>) -> Result<Response, Problem> {
    let snapshot = s.edge.snapshot().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-snapshot",
            "No snapshot yet",
            "no snapshot has been built yet; see the control plane's log",
        )
    })?;
    let internal = |e: serde_json::Error| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            e.to_string(),
        )
    };
    let mut doc = serde_json::to_value(&*snapshot).map_err(internal)?;
    if let Some(serde_json::Value::Array(keys)) = doc.pointer_mut("/session/keys") {
        for key in keys {
            *key = serde_json::Value::from(REDACTED);
        }
    }
    // Identity-header keys, like the session keys, are for Envoys only.
    if let Some(serde_json::Value::Object(ups)) = doc.get_mut("upstreams") {
        for up in ups.values_mut() {
            if let Some(key) = up.pointer_mut("/identity/key") {
                *key = serde_json::Value::from(REDACTED);
            }
        }
    }
    let body = serde_json::to_vec(&doc).map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
