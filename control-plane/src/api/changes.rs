//! `/gateways/{id}/changes` and `/gateways/{id}/pinning`: tool-definition changes held for
//! review (with a field-by-field diff and the hidden-instruction findings), their approval
//! and rejection, and each gateway's pinning policy. See [`crate::pinning`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::problem::ApiJson;
use super::{ApiError, AppState, Problem};
use crate::auth::rbac::Principal;
use crate::pinning::{
    ChangeKind, ChangeStatus, FieldDiff, Finding, FindingKind, FirstDiscovery, NewTools, OnChange,
    PinPolicy,
};
use crate::store::pins::{ChangeError, PinPolicyPatch, ToolChange as Change, ToolPin};

/// A gateway's changes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeList {
    /// Newest first.
    pub items: Vec<Change>,
}

/// `?status=` of the change list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangeQuery {
    /// `pending` (default), `approved`, `rejected`, `superseded` or `all`.
    pub status: Option<String>,
}

/// `?force=` of an approval.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApproveQuery {
    /// Approve a definition the scan flagged (it is pinned and served as it is).
    pub force: Option<bool>,
}

/// Optional body of an approval (same meaning as the query parameter).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// Approve a definition the scan flagged.
    #[serde(default)]
    pub force: bool,
}

/// One approved tool definition.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pin {
    /// The tool's name at the upstream.
    pub tool: String,
    /// `sha256:…` of the canonical JSON of the pinned fields.
    pub hash: String,
    /// Left out of every virtual server while a change is pending (`withhold`).
    pub withheld: bool,
    /// When it was approved.
    pub approved_at: String,
    /// Who approved it (absent: approved on discovery by policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

impl From<ToolPin> for Pin {
    fn from(p: ToolPin) -> Self {
        let ToolPin {
            tool,
            hash,
            withheld,
            approved_at,
            approved_by,
        } = p;
        Pin {
            tool,
            hash,
            withheld,
            approved_at,
            approved_by,
        }
    }
}

/// A gateway's pinning policy and its pins.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pinning {
    /// What a changed pinned tool serves until decided: `serve-approved` (default) or
    /// `withhold`.
    pub on_change: OnChange,
    /// What a new tool of an approved gateway does: `auto-approve` (default) or `hold`.
    /// Flagged tools are held either way.
    pub new_tools: NewTools,
    /// What the gateway's first discovery does: `approve` (default) or `hold`.
    pub first_discovery: FirstDiscovery,
    /// The approved definitions.
    pub pins: Vec<Pin>,
}

/// A pinning policy change: the fields given are set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinningUpdate {
    /// `serve-approved` or `withhold`.
    pub on_change: Option<OnChange>,
    /// `auto-approve` or `hold`.
    pub new_tools: Option<NewTools>,
    /// `approve` or `hold`.
    pub first_discovery: Option<FirstDiscovery>,
}

fn change_problem(e: ChangeError) -> ApiError {
    match e {
        ChangeError::NotFound { .. } => Problem::new(
            StatusCode::NOT_FOUND,
            "change-not-found",
            "No such change",
            e.to_string(),
        )
        .into(),
        ChangeError::NotPending { .. } => Problem::new(
            StatusCode::CONFLICT,
            "change-decided",
            "Change already decided",
            e.to_string(),
        )
        .into(),
        ChangeError::Flagged { ref findings, .. } => {
            let mut p = Problem::new(
                StatusCode::CONFLICT,
                "change-flagged",
                "Hidden-instruction patterns found",
                e.to_string(),
            );
            p.errors = findings
                .iter()
                .map(|f| super::problem::FieldError {
                    field: f.path.clone(),
                    reason: format!(
                        "{}: {}",
                        match f.kind {
                            FindingKind::InvisibleUnicode => "invisible characters",
                            FindingKind::InjectionPhrase => "injection phrase",
                        },
                        f.detail
                    ),
                })
                .collect();
            p.into()
        }
        ChangeError::Store(s) => s.into(),
    }
}

/// List a gateway's tool-definition changes (default: the pending ones), each with a
/// field-by-field diff and the hidden-instruction findings.
#[utoipa::path(get, path = "/gateways/{id}/changes", tag = "gateways",
    params(("id" = String, Path), ChangeQuery),
    responses((status = 200, body = ChangeList),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ChangeQuery>,
) -> Result<Json<ChangeList>, ApiError> {
    let status = match q.status.as_deref() {
        None => Some(ChangeStatus::Pending),
        Some("all") => None,
        Some(v) => Some(ChangeStatus::parse(v).ok_or_else(|| {
            Problem::invalid_field(
                "status",
                "must be pending, approved, rejected, superseded or all",
            )
        })?),
    };
    let items = s.store.tool_changes(&id, status).await?;
    Ok(Json(ChangeList { items }))
}

/// Approve a pending change: its definition is pinned and served (a new tool joins the
/// catalog). A flagged definition needs `force` (query or body), else 409 `change-flagged`
/// naming the findings; a decided change is 409 `change-decided`.
#[utoipa::path(post, path = "/gateways/{id}/changes/{change_id}/approve", tag = "gateways",
    params(("id" = String, Path), ("change_id" = String, Path), ApproveQuery),
    request_body(content = ApproveBody, description = "Optional: `{\"force\": true}` (same as the query parameter)."),
    responses((status = 200, body = Change),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn approve(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, change_id)): Path<(String, String)>,
    Query(q): Query<ApproveQuery>,
    body: Bytes,
) -> Result<Json<Change>, ApiError> {
    let body: ApproveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Problem::invalid_field("body", e.to_string()))?
    };
    let force = q.force.unwrap_or(false) || body.force;
    let c = s
        .store
        .approve_change(
            &id,
            &change_id,
            force,
            &p.email,
            &s.federation.settings().separator,
        )
        .await
        .map_err(change_problem)?;
    tracing::info!(gateway = %id, change = %change_id, tool = %c.tool, by = %p.email, force, "tool definition approved");
    Ok(Json(c))
}

/// Reject a pending change: the approved definition keeps being served (a withheld tool
/// comes back), and the same definition is not raised again; the upstream changing again
/// is a new change.
#[utoipa::path(post, path = "/gateways/{id}/changes/{change_id}/reject", tag = "gateways",
    params(("id" = String, Path), ("change_id" = String, Path)),
    responses((status = 200, body = Change),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn reject(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, change_id)): Path<(String, String)>,
) -> Result<Json<Change>, ApiError> {
    let c = s
        .store
        .reject_change(&id, &change_id, &p.email)
        .await
        .map_err(change_problem)?;
    tracing::info!(gateway = %id, change = %change_id, tool = %c.tool, by = %p.email, "tool definition rejected");
    Ok(Json(c))
}

async fn pinning_view(s: &AppState, id: &str, policy: PinPolicy) -> Result<Pinning, ApiError> {
    let pins = s.store.tool_pins(id).await?;
    Ok(Pinning {
        on_change: policy.on_change,
        new_tools: policy.new_tools,
        first_discovery: policy.first_discovery,
        pins: pins.into_iter().map(Pin::from).collect(),
    })
}

/// A gateway's pinning policy and the approved definitions (hashes) of its tools.
#[utoipa::path(get, path = "/gateways/{id}/pinning", tag = "gateways",
    params(("id" = String, Path)),
    responses((status = 200, body = Pinning),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_pinning(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Pinning>, ApiError> {
    let policy = s.store.pin_policy(&id).await?;
    Ok(Json(pinning_view(&s, &id, policy).await?))
}

/// Set a gateway's pinning policy (partial). To hold a gateway's first discovery, register
/// it with `discover: false`, set `first_discovery: hold`, then refresh it.
#[utoipa::path(put, path = "/gateways/{id}/pinning", tag = "gateways",
    params(("id" = String, Path)), request_body = PinningUpdate,
    responses((status = 200, body = Pinning),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn put_pinning(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<PinningUpdate>,
) -> Result<Json<Pinning>, ApiError> {
    let policy = s
        .store
        .set_pin_policy(
            &id,
            PinPolicyPatch {
                on_change: b.on_change,
                new_tools: b.new_tools,
                first_discovery: b.first_discovery,
            },
        )
        .await?;
    Ok(Json(pinning_view(&s, &id, policy).await?))
}

/// The documented paths of this module.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, approve, reject, get_pinning, put_pinning),
    components(schemas(
        Change,
        ChangeList,
        ApproveBody,
        Pin,
        Pinning,
        PinningUpdate,
        FieldDiff,
        Finding,
        FindingKind,
        ChangeKind,
        ChangeStatus,
        OnChange,
        NewTools,
        FirstDiscovery
    ))
)]
pub struct Doc;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/gateways/{id}/changes", get(list))
        .route("/gateways/{id}/changes/{change_id}/approve", post(approve))
        .route("/gateways/{id}/changes/{change_id}/reject", post(reject))
        .route("/gateways/{id}/pinning", get(get_pinning).put(put_pinning))
}
