//! `GET /export`, `POST /import`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use super::problem::FieldError;
use super::problem::{ApiJson, ApiQuery};
use super::{ApiError, AppState, Problem};
use crate::transfer::{self, ExportDocument, ExportQuery, ImportError, ImportQuery, ImportReport};

/// Export the registry (or the kinds in `types`) as one JSON document.
#[utoipa::path(get, path = "/export", tag = "transfer", params(ExportQuery),
    responses((status = 200, body = ExportDocument),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn export(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Json<ExportDocument>, ApiError> {
    let types = transfer::parse_types(q.types.as_deref())?;
    Ok(Json(transfer::export(&s.store, &types).await?))
}

/// Import an mcpgw export or a ContextForge export file.
///
/// All or nothing: when any entry is invalid (422, one `errors` item per entry) nothing
/// is imported. Credentials are never part of a document: re-enter them afterwards.
#[utoipa::path(post, path = "/import", tag = "transfer", params(ImportQuery),
    request_body(content = ExportDocument, description = "An mcpgw export, or a ContextForge export (`entities` object)"),
    responses((status = 200, body = ImportReport),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn import(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<ImportReport>, ApiError> {
    let ratelimit = s
        .edge
        .snapshot()
        .and_then(|snapshot| snapshot.limits.service.clone());
    let report = match transfer::import(
        &s.store,
        s.federation.settings(),
        ratelimit.as_ref(),
        body,
        &q,
    )
    .await
    {
        Ok(r) => r,
        Err(ImportError::Store(e)) => return Err(e.into()),
        Err(ImportError::Rejected(entries)) => {
            let detail = ImportError::Rejected(entries.clone()).to_string();
            let mut p = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "import-rejected",
                "Import rejected",
                detail,
            );
            p.errors = entries
                .into_iter()
                .map(|e| FieldError {
                    field: format!("{} {}", e.kind, e.name),
                    reason: e.detail.unwrap_or_default(),
                })
                .collect();
            return Err(p.into());
        }
        Err(e @ ImportError::Format(_)) => {
            return Err(Problem::invalid_field("body", e.to_string()).into());
        }
        Err(e @ ImportError::Conflicts(_)) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "import-conflict",
                "Import conflicts",
                e.to_string(),
            )
            .into());
        }
    };
    // Updated gateways may point elsewhere now: drop their sessions (the health loop
    // reconnects). Imported gateways are discovered in the background; the import does
    // not wait.
    for id in &report.updated_gateways {
        s.federation.disconnect(id).await;
    }
    for id in report.created_gateways.clone() {
        let f = s.federation.clone();
        tokio::spawn(async move {
            if let Err(e) = f.refresh(&id).await {
                tracing::info!(gateway = %id, error = %e, "imported gateway not discovered yet");
            }
        });
    }
    Ok(Json(report))
}
