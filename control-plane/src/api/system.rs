//! Health, readiness, version, metrics, registry version and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::types::RegistryVersion;
use super::{ApiError, AppState, Problem};

/// Liveness / readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `healthy` or `ready`.
    pub status: String,
}

/// Build and runtime information.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    /// Program name.
    pub name: String,
    /// Program version.
    pub version: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// Current registry version.
    pub registry_version: i64,
    /// Separator between gateway and item names.
    pub name_separator: String,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "system", security(()), responses((status = 200, body = Status)))]
pub async fn health() -> Json<Status> {
    Json(Status {
        status: "healthy".into(),
    })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/ready", tag = "system", security(()), responses(
    (status = 200, body = Status),
    (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn ready(State(s): State<AppState>) -> Result<Json<Status>, Problem> {
    match s.store.ping().await {
        Ok(()) => Ok(Json(Status {
            status: "ready".into(),
        })),
        Err(e) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            format!("database unavailable: {}", e.label()),
        )),
    }
}

/// Version, backend and registry version.
#[utoipa::path(get, path = "/version", tag = "system", security(()), responses((status = 200, body = VersionInfo)))]
pub async fn version(State(s): State<AppState>) -> Result<Json<VersionInfo>, ApiError> {
    Ok(Json(VersionInfo {
        name: "mcpgw".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: match s.store.backend() {
            crate::store::Backend::Sqlite => "sqlite".into(),
            crate::store::Backend::Postgres => "postgres".into(),
        },
        registry_version: s.store.registry_version().await?,
        name_separator: s.federation.settings().separator.clone(),
    }))
}

/// Current registry version: poll it to know when to rebuild a snapshot.
#[utoipa::path(get, path = "/registry", tag = "system", responses((status = 200, body = RegistryVersion)))]
pub async fn registry(State(s): State<AppState>) -> Result<Json<RegistryVersion>, ApiError> {
    Ok(Json(RegistryVersion {
        registry_version: s.store.registry_version().await?,
    }))
}

/// Prometheus metrics (text exposition format). Needs `admin.metrics` unless the control
/// plane runs with `--metrics-open`.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let v = s.store.registry_version().await?;
    let text = s.metrics.render(v).map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            e.to_string(),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The OpenAPI 3.1 document.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
        .into_response()
}
