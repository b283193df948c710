//! `/servers`: virtual servers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::problem::{ApiJson, ApiQuery};
use super::{ApiError, AppState, Problem, ServerPage};
use crate::model::{ListQuery, Server, ServerCreate, ServerUpdate, StateQuery};
use crate::store::{NewServer, ServerPatch};

/// List virtual servers.
#[utoipa::path(get, path = "/servers", tag = "servers", params(ListQuery),
    responses((status = 200, body = ServerPage),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ServerPage>, ApiError> {
    Ok(Json(s.store.list_servers(&q).await?.into()))
}

/// Create a virtual server from chosen tools, resources and prompts.
#[utoipa::path(post, path = "/servers", tag = "servers", request_body = ServerCreate,
    responses((status = 201, body = Server),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(b): ApiJson<ServerCreate>,
) -> Result<(StatusCode, Json<Server>), ApiError> {
    let created = s
        .store
        .create_server(NewServer {
            name: b.name,
            description: b.description,
            icon: b.icon,
            tags: b.tags,
            enabled: b.enabled.unwrap_or(true),
            tools: b.associated_tools,
            resources: b.associated_resources,
            prompts: b.associated_prompts,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Get a virtual server.
#[utoipa::path(get, path = "/servers/{id}", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = Server),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Server>, ApiError> {
    Ok(Json(s.store.get_server(&id).await?))
}

/// Update a virtual server (partial; association lists replace the stored ones).
#[utoipa::path(put, path = "/servers/{id}", tag = "servers", params(("id" = String, Path)),
    request_body = ServerUpdate,
    responses((status = 200, body = Server),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ServerUpdate>,
) -> Result<Json<Server>, ApiError> {
    let p = ServerPatch {
        name: b.name,
        description: b.description,
        icon: b.icon,
        tags: b.tags,
        enabled: b.enabled,
        tools: b.associated_tools,
        resources: b.associated_resources,
        prompts: b.associated_prompts,
        expected_version: b.version,
    };
    Ok(Json(s.store.update_server(&id, p).await?))
}

/// Delete a virtual server.
#[utoipa::path(delete, path = "/servers/{id}", tag = "servers", params(("id" = String, Path)),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_server(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable or disable a virtual server. `/servers/{id}/toggle` is an alias.
#[utoipa::path(post, path = "/servers/{id}/state", tag = "servers",
    params(("id" = String, Path), StateQuery),
    responses((status = 200, body = Server),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn set_state(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> Result<Json<Server>, ApiError> {
    let p = ServerPatch {
        enabled: Some(q.activate),
        ..Default::default()
    };
    Ok(Json(s.store.update_server(&id, p).await?))
}
