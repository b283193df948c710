//! `/tools`, `/resources`, `/prompts`: one generic implementation, three typed faces.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::problem::{ApiJson, ApiQuery};
use super::{ApiError, AppState, Problem, PromptPage, ResourcePage, ToolPage};
use crate::model::{
    CatalogItem, CatalogKind, ItemPatch, ListQuery, NewItem, Prompt, PromptCreate, PromptUpdate,
    Resource, ResourceCreate, ResourceUpdate, StateQuery, Tool, ToolCreate, ToolUpdate,
};

fn put(spec: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        spec.insert(key.to_owned(), v);
    }
}

fn check_schema(field: &str, v: &Option<Value>) -> Result<(), Problem> {
    match v {
        Some(Value::Object(_)) | None => Ok(()),
        Some(_) => Err(Problem::invalid_field(
            field,
            "must be a JSON Schema object",
        )),
    }
}

fn check_http_url(field: &str, url: &str) -> Result<(), Problem> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(Problem::invalid_field(field, "must be an http(s) URL")),
    }
}

fn check_method(m: &str) -> Result<String, Problem> {
    let up = m.to_ascii_uppercase();
    match up.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" => Ok(up),
        _ => Err(Problem::invalid_field(
            "request_type",
            "one of GET, POST, PUT, PATCH, DELETE",
        )),
    }
}

fn check_arguments(args: &[Value]) -> Result<(), Problem> {
    for (i, a) in args.iter().enumerate() {
        if a.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(Problem::invalid_field(
                format!("arguments[{i}].name"),
                "each argument needs a name",
            ));
        }
    }
    Ok(())
}

/// Items discovered from a gateway: their upstream-owned fields are replaced by every
/// refresh, so only the operator's own fields may change.
fn guard_discovered(item: &CatalogItem, p: &ItemPatch) -> Result<(), Problem> {
    if item.gateway_id.is_some()
        && (!p.spec.is_empty() || p.description.is_some() || p.uri.is_some())
    {
        return Err(Problem::invalid_field(
            "body",
            "this item is discovered from a gateway: only name, tags and enabled can change (the rest follows the upstream)",
        ));
    }
    Ok(())
}

async fn update_item(
    s: &AppState,
    kind: CatalogKind,
    id: &str,
    p: ItemPatch,
) -> Result<CatalogItem, ApiError> {
    let cur = s.store.get_item(kind, id).await?;
    guard_discovered(&cur, &p)?;
    Ok(s.store.update_item(kind, id, p).await?)
}

async fn set_state(
    s: &AppState,
    kind: CatalogKind,
    id: &str,
    activate: bool,
) -> Result<CatalogItem, ApiError> {
    let p = ItemPatch {
        enabled: Some(activate),
        ..Default::default()
    };
    Ok(s.store.update_item(kind, id, p).await?)
}

// ---- tools ----------------------------------------------------------------------------

/// List tools.
#[utoipa::path(get, path = "/tools", tag = "tools", params(ListQuery),
    responses((status = 200, body = ToolPage),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn list_tools(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ToolPage>, ApiError> {
    Ok(Json(
        s.store.list_items(CatalogKind::Tool, &q).await?.into(),
    ))
}

/// Define a tool by hand (a REST endpoint exposed as an MCP tool).
#[utoipa::path(post, path = "/tools", tag = "tools", request_body = ToolCreate,
    responses((status = 201, body = Tool),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_tool(
    State(s): State<AppState>,
    ApiJson(b): ApiJson<ToolCreate>,
) -> Result<(StatusCode, Json<Tool>), ApiError> {
    check_schema("input_schema", &b.input_schema)?;
    check_schema("output_schema", &b.output_schema)?;
    let integration = b
        .integration_type
        .unwrap_or_else(|| "REST".into())
        .to_uppercase();
    if integration != "REST" {
        return Err(Problem::invalid_field(
            "integration_type",
            "tools defined by hand are REST tools; MCP tools are discovered from gateways",
        )
        .into());
    }
    let url = b
        .url
        .ok_or_else(|| Problem::invalid_field("url", "required for REST tools"))?;
    check_http_url("url", &url)?;
    let method = check_method(b.request_type.as_deref().unwrap_or("POST"))?;
    let mut spec = Map::new();
    put(&mut spec, "title", b.title.map(Value::from));
    spec.insert(
        "input_schema".into(),
        b.input_schema.unwrap_or_else(|| json!({"type": "object"})),
    );
    put(&mut spec, "output_schema", b.output_schema);
    put(&mut spec, "annotations", b.annotations);
    spec.insert("integration_type".into(), Value::from(integration));
    spec.insert("url".into(), Value::from(url));
    spec.insert("request_type".into(), Value::from(method));
    let item = NewItem {
        original_name: b.name.clone(),
        name: b.name,
        gateway_id: None,
        uri: None,
        description: b.description,
        spec,
        tags: b.tags,
        enabled: b.enabled.unwrap_or(true),
    };
    let created = s.store.create_item(CatalogKind::Tool, item).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Get a tool.
#[utoipa::path(get, path = "/tools/{id}", tag = "tools", params(("id" = String, Path)),
    responses((status = 200, body = Tool),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_tool(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Tool>, ApiError> {
    Ok(Json(s.store.get_item(CatalogKind::Tool, &id).await?.into()))
}

/// Update a tool (partial). Discovered tools: name, tags and enabled only.
#[utoipa::path(put, path = "/tools/{id}", tag = "tools", params(("id" = String, Path)),
    request_body = ToolUpdate,
    responses((status = 200, body = Tool),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_tool(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ToolUpdate>,
) -> Result<Json<Tool>, ApiError> {
    check_schema("input_schema", &b.input_schema)?;
    check_schema("output_schema", &b.output_schema)?;
    if let Some(u) = &b.url {
        check_http_url("url", u)?;
    }
    let method = b.request_type.as_deref().map(check_method).transpose()?;
    let mut spec = Map::new();
    put(&mut spec, "title", b.title.map(Value::from));
    put(&mut spec, "input_schema", b.input_schema);
    put(&mut spec, "output_schema", b.output_schema);
    put(&mut spec, "annotations", b.annotations);
    put(&mut spec, "url", b.url.map(Value::from));
    put(&mut spec, "request_type", method.map(Value::from));
    let p = ItemPatch {
        name: b.name,
        uri: None,
        description: b.description,
        spec,
        tags: b.tags,
        enabled: b.enabled,
        expected_version: b.version,
    };
    Ok(Json(
        update_item(&s, CatalogKind::Tool, &id, p).await?.into(),
    ))
}

/// Delete a tool.
#[utoipa::path(delete, path = "/tools/{id}", tag = "tools", params(("id" = String, Path)),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_tool(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_item(CatalogKind::Tool, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable or disable a tool. `/tools/{id}/toggle` is an alias.
#[utoipa::path(post, path = "/tools/{id}/state", tag = "tools",
    params(("id" = String, Path), StateQuery),
    responses((status = 200, body = Tool),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn set_tool_state(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> Result<Json<Tool>, ApiError> {
    Ok(Json(
        set_state(&s, CatalogKind::Tool, &id, q.activate)
            .await?
            .into(),
    ))
}

// ---- resources ------------------------------------------------------------------------

/// List resources and resource templates.
#[utoipa::path(get, path = "/resources", tag = "resources", params(ListQuery),
    responses((status = 200, body = ResourcePage),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn list_resources(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ResourcePage>, ApiError> {
    Ok(Json(
        s.store.list_items(CatalogKind::Resource, &q).await?.into(),
    ))
}

/// Define a resource by hand.
#[utoipa::path(post, path = "/resources", tag = "resources", request_body = ResourceCreate,
    responses((status = 201, body = Resource),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_resource(
    State(s): State<AppState>,
    ApiJson(b): ApiJson<ResourceCreate>,
) -> Result<(StatusCode, Json<Resource>), ApiError> {
    if !b.uri.contains(':') {
        return Err(Problem::invalid_field("uri", "must be an absolute URI (scheme:...)").into());
    }
    let mut spec = Map::new();
    spec.insert("is_template".into(), Value::from(b.is_template));
    put(&mut spec, "title", b.title.map(Value::from));
    put(&mut spec, "mime_type", b.mime_type.map(Value::from));
    put(&mut spec, "content", b.content.map(Value::from));
    let item = NewItem {
        original_name: b.name.clone(),
        name: b.name,
        gateway_id: None,
        uri: Some(b.uri),
        description: b.description,
        spec,
        tags: b.tags,
        enabled: b.enabled.unwrap_or(true),
    };
    let created = s.store.create_item(CatalogKind::Resource, item).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Get a resource.
#[utoipa::path(get, path = "/resources/{id}", tag = "resources", params(("id" = String, Path)),
    responses((status = 200, body = Resource),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_resource(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Resource>, ApiError> {
    Ok(Json(
        s.store.get_item(CatalogKind::Resource, &id).await?.into(),
    ))
}

/// Update a resource (partial).
#[utoipa::path(put, path = "/resources/{id}", tag = "resources", params(("id" = String, Path)),
    request_body = ResourceUpdate,
    responses((status = 200, body = Resource),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_resource(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ResourceUpdate>,
) -> Result<Json<Resource>, ApiError> {
    let mut spec = Map::new();
    put(&mut spec, "title", b.title.map(Value::from));
    put(&mut spec, "mime_type", b.mime_type.map(Value::from));
    put(&mut spec, "content", b.content.map(Value::from));
    let p = ItemPatch {
        name: b.name,
        uri: b.uri,
        description: b.description,
        spec,
        tags: b.tags,
        enabled: b.enabled,
        expected_version: b.version,
    };
    Ok(Json(
        update_item(&s, CatalogKind::Resource, &id, p).await?.into(),
    ))
}

/// Delete a resource.
#[utoipa::path(delete, path = "/resources/{id}", tag = "resources", params(("id" = String, Path)),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_resource(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_item(CatalogKind::Resource, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable or disable a resource. `/resources/{id}/toggle` is an alias.
#[utoipa::path(post, path = "/resources/{id}/state", tag = "resources",
    params(("id" = String, Path), StateQuery),
    responses((status = 200, body = Resource),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn set_resource_state(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> Result<Json<Resource>, ApiError> {
    Ok(Json(
        set_state(&s, CatalogKind::Resource, &id, q.activate)
            .await?
            .into(),
    ))
}

// ---- prompts --------------------------------------------------------------------------

/// List prompts.
#[utoipa::path(get, path = "/prompts", tag = "prompts", params(ListQuery),
    responses((status = 200, body = PromptPage),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn list_prompts(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<PromptPage>, ApiError> {
    Ok(Json(
        s.store.list_items(CatalogKind::Prompt, &q).await?.into(),
    ))
}

/// Define a prompt by hand.
#[utoipa::path(post, path = "/prompts", tag = "prompts", request_body = PromptCreate,
    responses((status = 201, body = Prompt),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create_prompt(
    State(s): State<AppState>,
    ApiJson(b): ApiJson<PromptCreate>,
) -> Result<(StatusCode, Json<Prompt>), ApiError> {
    check_arguments(&b.arguments)?;
    let mut spec = Map::new();
    put(&mut spec, "title", b.title.map(Value::from));
    put(&mut spec, "template", b.template.map(Value::from));
    spec.insert("arguments".into(), Value::Array(b.arguments));
    let item = NewItem {
        original_name: b.name.clone(),
        name: b.name,
        gateway_id: None,
        uri: None,
        description: b.description,
        spec,
        tags: b.tags,
        enabled: b.enabled.unwrap_or(true),
    };
    let created = s.store.create_item(CatalogKind::Prompt, item).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Get a prompt.
#[utoipa::path(get, path = "/prompts/{id}", tag = "prompts", params(("id" = String, Path)),
    responses((status = 200, body = Prompt),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_prompt(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Prompt>, ApiError> {
    Ok(Json(
        s.store.get_item(CatalogKind::Prompt, &id).await?.into(),
    ))
}

/// Update a prompt (partial).
#[utoipa::path(put, path = "/prompts/{id}", tag = "prompts", params(("id" = String, Path)),
    request_body = PromptUpdate,
    responses((status = 200, body = Prompt),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update_prompt(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<PromptUpdate>,
) -> Result<Json<Prompt>, ApiError> {
    if let Some(a) = &b.arguments {
        check_arguments(a)?;
    }
    let mut spec = Map::new();
    put(&mut spec, "title", b.title.map(Value::from));
    put(&mut spec, "template", b.template.map(Value::from));
    put(&mut spec, "arguments", b.arguments.map(Value::Array));
    let p = ItemPatch {
        name: b.name,
        uri: None,
        description: b.description,
        spec,
        tags: b.tags,
        enabled: b.enabled,
        expected_version: b.version,
    };
    Ok(Json(
        update_item(&s, CatalogKind::Prompt, &id, p).await?.into(),
    ))
}

/// Delete a prompt.
#[utoipa::path(delete, path = "/prompts/{id}", tag = "prompts", params(("id" = String, Path)),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_prompt(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_item(CatalogKind::Prompt, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable or disable a prompt. `/prompts/{id}/toggle` is an alias.
#[utoipa::path(post, path = "/prompts/{id}/state", tag = "prompts",
    params(("id" = String, Path), StateQuery),
    responses((status = 200, body = Prompt),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn set_prompt_state(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> Result<Json<Prompt>, ApiError> {
    Ok(Json(
        set_state(&s, CatalogKind::Prompt, &id, q.activate)
            .await?
            .into(),
    ))
}
