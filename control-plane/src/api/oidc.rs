//! Login through OpenID providers (`/auth/oidc/*`), all open (they are how a credential is
//! obtained): the list of providers, the start of a login (a redirect to the provider), its
//! callback (a session, or the CLI's handoff), and the CLI's exchange of its handoff code.
//! The flow and its checks are `auth::oidc`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::identity::LoginResponse;
use super::problem::ApiJson;
use super::{AppState, Problem};
use crate::auth::Session;
use crate::auth::oidc::{Completed, OidcError};

/// A configured provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    /// Its name (in the login path).
    pub name: String,
    /// Its issuer.
    pub issuer: String,
    /// Where a browser starts a login.
    pub login_path: String,
}

/// `GET /auth/oidc`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    /// The providers.
    pub providers: Vec<ProviderView>,
}

/// `GET /auth/oidc/{provider}/login` parameters. Both for the CLI, or neither.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    /// A loopback URL (`http://127.0.0.1:PORT/…`) the callback sends the browser to with a
    /// one-time `code` (the handoff), instead of answering the session.
    pub return_to: Option<String>,
    /// The CLI's PKCE challenge (S256) that the handoff code's exchange must match; without
    /// `return_to`, the callback shows the handoff code to paste.
    pub code_challenge: Option<String>,
    /// `S256` (the only method).
    pub code_challenge_method: Option<String>,
}

/// `GET /auth/oidc/{provider}/callback` parameters (the provider's authorization response).
#[derive(Debug, Deserialize, IntoParams)]
pub struct CallbackQuery {
    /// The authorization code.
    pub code: Option<String>,
    /// The state the login sent.
    pub state: Option<String>,
    /// The issuer of the response (RFC 9207).
    pub iss: Option<String>,
    /// An error from the provider.
    pub error: Option<String>,
    /// Its description.
    pub error_description: Option<String>,
}

/// A handoff code to paste into the CLI.
#[derive(Debug, Serialize, ToSchema)]
pub struct HandoffView {
    /// The code: `POST /auth/oidc/token` with it and the CLI's `code_verifier` within a minute.
    pub handoff_code: String,
}

/// `POST /auth/oidc/token` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffExchange {
    /// The handoff code the callback gave.
    pub code: String,
    /// The PKCE verifier whose S256 challenge the login named.
    pub code_verifier: String,
}

fn problem(e: &OidcError) -> Problem {
    if let OidcError::Field(f) = e {
        return Problem::invalid_field(f.field.clone(), f.reason.clone());
    }
    let (slug, status) = e.kind();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "OIDC login failed");
        "the login failed inside the control plane; see its log".to_owned()
    } else {
        tracing::info!(error = %e, "OIDC login refused");
        e.to_string()
    };
    Problem::new(
        status,
        slug,
        "Login through the OpenID provider failed",
        detail,
    )
}

fn refuse(e: OidcError) -> Response {
    problem(&e).into_response()
}

fn session(s: Session) -> Json<LoginResponse> {
    Json(LoginResponse {
        access_token: s.token,
        token_type: "Bearer".into(),
        expires_in: s.expires_at - chrono::Utc::now().timestamp(),
        user: s.user.into(),
    })
}

/// `return_to` with `params` added to its query.
fn with_query(return_to: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut u = url::Url::parse(return_to).ok()?;
    u.query_pairs_mut().extend_pairs(params);
    Some(u.into())
}

/// The OpenID providers users may log in through.
#[utoipa::path(get, path = "/auth/oidc", tag = "auth", security(()),
    responses((status = 200, body = ProviderList)))]
pub async fn providers(State(s): State<AppState>) -> Json<ProviderList> {
    Json(ProviderList {
        providers: s
            .auth
            .oidc()
            .providers()
            .into_iter()
            .map(|(name, issuer)| ProviderView {
                login_path: format!("/auth/oidc/{name}/login"),
                name,
                issuer,
            })
            .collect(),
    })
}

/// Starts a login: redirects (303) to the provider's authorization endpoint with `state`,
/// `nonce` and a PKCE S256 challenge.
#[utoipa::path(get, path = "/auth/oidc/{provider}/login", tag = "auth", security(()),
    params(("provider" = String, Path, description = "Provider name"), LoginQuery),
    responses((status = 303, description = "To the provider"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 502, body = Problem, content_type = "application/problem+json")))]
pub async fn login(
    State(s): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<LoginQuery>,
) -> Response {
    if q.code_challenge_method
        .as_deref()
        .is_some_and(|m| m != "S256")
    {
        return Problem::invalid_field("code_challenge_method", "must be S256").into_response();
    }
    let cli = match (q.return_to, q.code_challenge) {
        (None, None) => None,
        (return_to, Some(c)) => Some((return_to, c)),
        (Some(_), None) => {
            return Problem::invalid_field(
                "code_challenge",
                "return_to needs the CLI's PKCE challenge (S256)",
            )
            .into_response();
        }
    };
    match s.auth.oidc().begin(&s.store, &provider, cli).await {
        Ok(started) => (
            [(header::CACHE_CONTROL, "no-store")],
            Redirect::to(&started.authorization_url),
        )
            .into_response(),
        Err(e) => refuse(e),
    }
}

/// The provider's redirect back: checks `state`, `iss`, redeems the code (PKCE), verifies
/// the ID token (`nonce`), makes or finds the user, applies the group mapping, and answers
/// a session token — or, for the CLI, redirects to its loopback `return_to` with a handoff
/// code.
#[utoipa::path(get, path = "/auth/oidc/{provider}/callback", tag = "auth", security(()),
    params(("provider" = String, Path, description = "Provider name"), CallbackQuery),
    responses((status = 200, body = LoginResponse),
              (status = 303, description = "To the CLI's return_to, with a handoff code"),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 502, body = Problem, content_type = "application/problem+json")))]
pub async fn callback(
    State(s): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let oidc = s.auth.oidc();
    let Some(state) = q.state.as_deref() else {
        return refuse(OidcError::BadState);
    };
    let pending = match oidc.take_state(&s.store, &provider, state).await {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let return_to = pending.return_to.clone();
    let outcome = match (q.error, q.code) {
        (Some(error), _) => Err(OidcError::Denied(
            format!("{error} {}", q.error_description.unwrap_or_default())
                .trim()
                .chars()
                .take(300)
                .collect(),
        )),
        (None, None) => Err(OidcError::Field(crate::model::FieldInvalid::new(
            "code",
            "the authorization response has no code",
        ))),
        (None, Some(code)) => {
            oidc.complete(&s.auth, pending, &code, q.iss.as_deref())
                .await
        }
    };
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    match outcome {
        Ok(Completed::Session(session_)) => (no_store, session(*session_)).into_response(),
        Ok(Completed::Handoff { code, return_to }) => match return_to
            .as_deref()
            .and_then(|r| with_query(r, &[("code", &code)]))
        {
            Some(to) => (no_store, Redirect::to(&to)).into_response(),
            None => (no_store, Json(HandoffView { handoff_code: code })).into_response(),
        },
        Err(e) => {
            let p = problem(&e);
            // The CLI waits on its loopback port: tell it there.
            match return_to.as_deref().and_then(|r| {
                with_query(
                    r,
                    &[
                        ("error", p.type_uri.rsplit(':').next().unwrap_or("error")),
                        ("error_description", &p.detail),
                    ],
                )
            }) {
                Some(to) => Redirect::to(&to).into_response(),
                None => p.into_response(),
            }
        }
    }
}

/// Exchanges the CLI's handoff code and PKCE verifier for a session token (once, within a
/// minute of the callback).
#[utoipa::path(post, path = "/auth/oidc/token", tag = "auth", security(()),
    request_body = HandoffExchange,
    responses((status = 200, body = LoginResponse),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn exchange(State(s): State<AppState>, ApiJson(b): ApiJson<HandoffExchange>) -> Response {
    match s
        .auth
        .oidc()
        .redeem_handoff(&s.auth, &b.code, &b.code_verifier)
        .await
    {
        Ok(session_) => ([(header::CACHE_CONTROL, "no-store")], session(session_)).into_response(),
        Err(e) => refuse(e),
    }
}

/// The documented paths of this module.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(providers, login, callback, exchange),
    components(schemas(ProviderList, ProviderView, HandoffView, HandoffExchange))
)]
pub struct Doc;

/// The routes of this module.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/auth/oidc", get(providers))
        .route("/auth/oidc/{provider}/login", get(login))
        .route("/auth/oidc/{provider}/callback", get(callback))
        .route("/auth/oidc/token", post(exchange))
}
