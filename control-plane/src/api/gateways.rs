//! `/gateways`: upstream MCP servers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::problem::{ApiJson, ApiQuery};
use super::{ApiError, AppState, GatewayPage, Problem};
use crate::crypto::SecretBox;
use crate::model::{
    AuthType, Credentials, Gateway, GatewayCreate, GatewayPatch, GatewaySync, GatewayUpdate,
    HeaderPair, ListQuery, NewGateway, StateQuery,
};

/// Credential fields of a create or update body.
pub(crate) struct AuthFields {
    pub auth_type: AuthType,
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub headers: Option<Vec<HeaderPair>>,
}

/// Validates credential fields against `auth_type` and builds the credentials.
pub(crate) fn credentials(a: AuthFields) -> Result<Option<Credentials>, Problem> {
    let stray = |field: &str| {
        Problem::invalid_field(
            field,
            format!("not used with auth_type {}", a.auth_type.as_str()),
        )
    };
    match a.auth_type {
        AuthType::None => {
            for (f, given) in [
                ("auth_token", a.token.is_some()),
                ("auth_username", a.username.is_some()),
                ("auth_password", a.password.is_some()),
                ("auth_headers", a.headers.is_some()),
            ] {
                if given {
                    return Err(stray(f));
                }
            }
            Ok(None)
        }
        AuthType::Bearer => {
            let token = a
                .token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Problem::invalid_field("auth_token", "required for bearer"))?;
            Ok(Some(Credentials::Bearer { token }))
        }
        AuthType::Basic => {
            let username = a
                .username
                .filter(|u| !u.is_empty() && !u.contains(':'))
                .ok_or_else(|| {
                    Problem::invalid_field("auth_username", "required for basic, without ':'")
                })?;
            let password = a
                .password
                .ok_or_else(|| Problem::invalid_field("auth_password", "required for basic"))?;
            Ok(Some(Credentials::Basic { username, password }))
        }
        AuthType::Headers => {
            let headers = a
                .headers
                .filter(|h| !h.is_empty())
                .ok_or_else(|| Problem::invalid_field("auth_headers", "required for headers"))?;
            for (i, h) in headers.iter().enumerate() {
                if reqwest::header::HeaderName::from_bytes(h.key.as_bytes()).is_err() {
                    return Err(Problem::invalid_field(
                        format!("auth_headers[{i}].key"),
                        "not a valid header name",
                    ));
                }
                if reqwest::header::HeaderValue::from_str(&h.value).is_err() {
                    return Err(Problem::invalid_field(
                        format!("auth_headers[{i}].value"),
                        "not a valid header value",
                    ));
                }
            }
            Ok(Some(Credentials::Headers { headers }))
        }
    }
}

pub(crate) fn seal(
    secrets: &SecretBox,
    creds: Option<&Credentials>,
) -> Result<Option<String>, Problem> {
    creds
        .map(|c| secrets.seal_credentials(c))
        .transpose()
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                e.to_string(),
            )
        })
}

/// List gateways.
#[utoipa::path(get, path = "/gateways", tag = "gateways", params(ListQuery),
    responses((status = 200, body = GatewayPage),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<GatewayPage>, ApiError> {
    Ok(Json(s.store.list_gateways(&q).await?.into()))
}

/// Register a gateway: connects, initializes and discovers its catalog (unless
/// `discover` is false), storing gateway and catalog atomically.
#[utoipa::path(post, path = "/gateways", tag = "gateways", request_body = GatewayCreate,
    responses((status = 201, body = GatewaySync),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 502, body = Problem, content_type = "application/problem+json"),
              (status = 504, body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<GatewayCreate>,
) -> Result<(StatusCode, Json<GatewaySync>), ApiError> {
    let creds = credentials(AuthFields {
        auth_type: body.auth_type,
        token: body.auth_token,
        username: body.auth_username,
        password: body.auth_password,
        headers: body.auth_headers,
    })?;
    let sealed = seal(&s.secrets, creds.as_ref())?;
    if s.store.find_gateway_by_name(&body.name).await?.is_some() {
        return Err(crate::store::StoreError::Duplicate {
            kind: "gateway",
            name: body.name,
        }
        .into());
    }
    let g = NewGateway {
        name: body.name,
        url: body.url,
        transport: body.transport,
        description: body.description,
        tags: body.tags,
        enabled: body.enabled.unwrap_or(true),
        auth_type: body.auth_type,
        auth_sealed: sealed,
    };
    let (gateway, sync) = s
        .federation
        .register(g, creds.as_ref(), body.discover.unwrap_or(true))
        .await?;
    Ok((StatusCode::CREATED, Json(GatewaySync { gateway, sync })))
}

/// Get a gateway.
#[utoipa::path(get, path = "/gateways/{id}", tag = "gateways", params(("id" = String, Path)),
    responses((status = 200, body = Gateway),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Gateway>, ApiError> {
    Ok(Json(s.store.get_gateway(&id).await?))
}

/// Update a gateway (partial). Pass `version` to detect concurrent changes.
#[utoipa::path(put, path = "/gateways/{id}", tag = "gateways", params(("id" = String, Path)),
    request_body = GatewayUpdate,
    responses((status = 200, body = Gateway),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<GatewayUpdate>,
) -> Result<Json<Gateway>, ApiError> {
    let auth = match body.auth_type {
        Some(t) => {
            let creds = credentials(AuthFields {
                auth_type: t,
                token: body.auth_token,
                username: body.auth_username,
                password: body.auth_password,
                headers: body.auth_headers,
            })?;
            Some((t, seal(&s.secrets, creds.as_ref())?))
        }
        None => {
            if body.auth_token.is_some()
                || body.auth_username.is_some()
                || body.auth_password.is_some()
                || body.auth_headers.is_some()
            {
                return Err(Problem::invalid_field(
                    "auth_type",
                    "required when changing credentials",
                )
                .into());
            }
            None
        }
    };
    if let Some(url) = &body.url {
        crate::federation::check_upstream_url(
            url,
            s.federation.settings().ssrf,
            s.federation.settings().timeout,
        )
        .await
        .map_err(crate::federation::FederationError::from)?;
    }
    let credentials_changed = auth.is_some();
    let patch = GatewayPatch {
        name: body.name,
        url: body.url,
        transport: body.transport,
        description: body.description,
        tags: body.tags,
        enabled: body.enabled,
        auth,
        expected_version: body.version,
    };
    let before = s.store.get_gateway(&id).await?;
    let after = s.store.update_gateway(&id, patch).await?;
    drop_stale_session(&s, &before, &after, credentials_changed).await;
    Ok(Json(after))
}

/// A live session belongs to one enabled gateway at one URL with one transport (and
/// credentials): after any of these change, its notifications must not reach the
/// catalog. The next refresh or health check connects again if the gateway is enabled.
async fn drop_stale_session(
    s: &AppState,
    before: &Gateway,
    after: &Gateway,
    credentials_changed: bool,
) {
    let stale = !after.enabled
        || before.url != after.url
        || before.transport != after.transport
        || credentials_changed;
    if stale {
        s.federation.disconnect(&after.id).await;
    }
}

/// Delete a gateway and everything discovered from it.
#[utoipa::path(delete, path = "/gateways/{id}", tag = "gateways", params(("id" = String, Path)),
    responses((status = 204),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_gateway(&id).await?;
    s.federation.forget(&id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable or disable a gateway (and its items). `/gateways/{id}/toggle` is an alias.
#[utoipa::path(post, path = "/gateways/{id}/state", tag = "gateways",
    params(("id" = String, Path), StateQuery),
    responses((status = 200, body = Gateway),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn set_state(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StateQuery>,
) -> Result<Json<Gateway>, ApiError> {
    let patch = GatewayPatch {
        enabled: Some(q.activate),
        ..Default::default()
    };
    let gateway = s.store.update_gateway(&id, patch).await?;
    if !gateway.enabled {
        s.federation.disconnect(&id).await;
    }
    Ok(Json(gateway))
}

/// Re-discover a gateway's catalog now (409 when the gateway is disabled).
#[utoipa::path(post, path = "/gateways/{id}/refresh", tag = "gateways", params(("id" = String, Path)),
    responses((status = 200, body = GatewaySync),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 502, body = Problem, content_type = "application/problem+json"),
              (status = 504, body = Problem, content_type = "application/problem+json")))]
pub async fn refresh(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<GatewaySync>, ApiError> {
    let (gateway, report) = s.federation.refresh(&id).await?;
    Ok(Json(GatewaySync {
        gateway,
        sync: Some(report),
    }))
}
