//! RFC 9457 problem details: the one error format of the admin API, and the extractors
//! that turn malformed requests into it.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::federation::FederationError;
use crate::store::StoreError;

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// URI reference identifying the problem type.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// Per-field validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One invalid field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field.
    pub field: String,
    /// Why it is invalid.
    pub reason: String,
}

impl Problem {
    /// A problem of type `urn:mcpgw:problem:{slug}`.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("urn:mcpgw:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// A 422 naming one field.
    pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let field = field.into();
        let reason = reason.into();
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            format!("{field}: {reason}"),
        );
        p.errors.push(FieldError { field, reason });
        p
    }

    /// 404 for an unknown route.
    pub fn no_route() -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "no such endpoint",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// Errors a handler can return; each maps to one problem type.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// From federation.
    #[error(transparent)]
    Federation(#[from] FederationError),
    /// Already a problem.
    #[error("{}", .0.detail)]
    Problem(Problem),
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::Problem(p)
    }
}

fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::NotFound { .. } => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            e.to_string(),
        ),
        StoreError::Duplicate { .. } => Problem::new(
            StatusCode::CONFLICT,
            "duplicate-name",
            "Name already in use",
            e.to_string(),
        ),
        StoreError::VersionConflict { .. } => Problem::new(
            StatusCode::CONFLICT,
            "version-conflict",
            "Concurrent modification",
            e.to_string(),
        ),
        StoreError::Invalid { field, reason } => Problem::invalid_field(field, reason),
        StoreError::NameCollisions(collisions) => {
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "name-collision",
                "Names collide",
                collisions
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            p.errors = collisions
                .into_iter()
                .map(|c| FieldError {
                    field: c.field,
                    reason: c.reason,
                })
                .collect();
            p
        }
        StoreError::Sealed(_) => {
            tracing::error!(error = %e, "stored credentials do not open");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "credentials-unreadable",
                "Stored credentials unreadable",
                e.to_string(),
            )
        }
        StoreError::Corrupt(_) | StoreError::Database(_) => {
            tracing::error!(error = %e, "store failure");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the registry store failed; see the control plane log",
            )
        }
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Problem(p) => p,
            ApiError::Store(s) => store_problem(s),
            ApiError::Federation(f) => match f {
                FederationError::Store(s) => store_problem(s),
                FederationError::Ssrf(ref s) => match s {
                    crate::federation::SsrfError::Resolve { .. } => Problem::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream-unreachable",
                        "Upstream unreachable",
                        f.to_string(),
                    ),
                    _ => Problem::invalid_field("url", f.to_string()),
                },
                FederationError::Credentials(_) => Problem::invalid_field("auth", f.to_string()),
                FederationError::Limit { .. } => Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-limit",
                    "Upstream exceeds a discovery limit",
                    f.to_string(),
                ),
                FederationError::Disabled(_) => Problem::new(
                    StatusCode::CONFLICT,
                    "gateway-disabled",
                    "Gateway disabled",
                    f.to_string(),
                ),
                FederationError::Timeout { .. } => Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream-timeout",
                    "Upstream timed out",
                    f.to_string(),
                ),
                // The legacy SSE client still words its own failures; whatever it quotes,
                // no URL reaches the answer with its query secrets.
                FederationError::Upstream { .. } => Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-failed",
                    "Upstream failed",
                    crate::model::redact_urls(&f.to_string()),
                ),
                FederationError::Crypto(_) => {
                    tracing::error!(error = %f, "credential decryption failed");
                    Problem::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "credentials-unreadable",
                        "Stored credentials unreadable",
                        f.to_string(),
                    )
                }
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

/// JSON body extractor whose rejections are problem documents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(match rej {
                JsonRejection::JsonDataError(e) => {
                    // serde_path_to_error puts "path: message" in the body text.
                    let text = e.body_text();
                    let detail = text
                        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                        .unwrap_or(&text)
                        .to_owned();
                    let (field, reason) = match detail.split_once(": ") {
                        Some((f, r)) if !f.contains(' ') => (f.to_owned(), r.to_owned()),
                        _ => ("body".to_owned(), detail.clone()),
                    };
                    let mut p = Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "validation",
                        "Validation failed",
                        detail,
                    );
                    p.errors.push(FieldError { field, reason });
                    p
                }
                JsonRejection::JsonSyntaxError(e) => Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed-json",
                    "Malformed JSON",
                    e.body_text(),
                ),
                JsonRejection::MissingJsonContentType(_) => Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "Unsupported media type",
                    "expected Content-Type: application/json",
                ),
                other => Problem::new(
                    other.status(),
                    "bad-request",
                    "Bad request",
                    other.body_text(),
                ),
            }),
        }
    }
}

/// Query string extractor whose rejections are problem documents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                let mut p = Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-query",
                    "Invalid query parameters",
                    detail.clone(),
                );
                p.errors.push(FieldError {
                    field: "query".into(),
                    reason: detail,
                });
                Err(p)
            }
            Err(other) => Err(Problem::new(
                other.status(),
                "bad-request",
                "Bad request",
                other.body_text(),
            )),
        }
    }
}
