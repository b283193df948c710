//! Registry objects owned by a Kubernetes resource are read-only through the REST API: the
//! resource is their source of truth, and a change made here would be undone by the next
//! reconcile. A write to one is refused with 409 `owned-by-kubernetes`, naming the resource
//! (`owned by MCPBackend ns/name; change it with kubectl`). Reads, refreshes and ownership
//! (team) changes stay open.

use axum::RequestExt as _;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, Problem};
use crate::store::k8s::OwnedObject;

/// The object a write route changes, if it is one a resource can own.
fn owned_kind(method: &Method, route: &str) -> Option<OwnedObject> {
    if !matches!(
        *method,
        Method::PUT | Method::POST | Method::DELETE | Method::PATCH
    ) {
        return None;
    }
    let (kind, rest) = if let Some(rest) = route.strip_prefix("/gateways") {
        (OwnedObject::Gateway, rest)
    } else if let Some(rest) = route.strip_prefix("/servers") {
        (OwnedObject::Server, rest)
    } else {
        return None;
    };
    matches!(rest, "/{id}" | "/{id}/state" | "/{id}/toggle").then_some(kind)
}

/// The 409 for a write to an object `owner` owns.
pub fn owned_problem(owner: &crate::store::k8s::K8sOwner) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "owned-by-kubernetes",
        "Owned by a Kubernetes resource",
        format!("owned by {owner}; change it with kubectl"),
    )
}

/// Refuses writes to objects a Kubernetes resource owns (after access control: a caller
/// who may not see the object learns nothing here).
pub async fn refuse_owned_writes(
    State(s): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let Some(kind) = route.and_then(|r| owned_kind(req.method(), &r)) else {
        return next.run(req).await;
    };
    let id = match req.extract_parts::<RawPathParams>().await {
        Ok(params) => params
            .iter()
            .find(|(k, _)| *k == "id")
            .map(|(_, v)| v.to_owned()),
        Err(e) => return e.into_response(),
    };
    let Some(id) = id else {
        return next.run(req).await;
    };
    match s.store.k8s_owner(kind, &id).await {
        Ok(Some(owner)) => owned_problem(&owner).into_response(),
        Ok(None) => next.run(req).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_to_gateways_and_servers_are_checked() {
        let cases = [
            (Method::PUT, "/gateways/{id}", Some(OwnedObject::Gateway)),
            (Method::DELETE, "/gateways/{id}", Some(OwnedObject::Gateway)),
            (
                Method::POST,
                "/gateways/{id}/state",
                Some(OwnedObject::Gateway),
            ),
            (
                Method::POST,
                "/servers/{id}/toggle",
                Some(OwnedObject::Server),
            ),
            (Method::DELETE, "/servers/{id}", Some(OwnedObject::Server)),
            (Method::GET, "/gateways/{id}", None),
            (Method::POST, "/gateways/{id}/refresh", None),
            (Method::PUT, "/gateways/{id}/owner", None),
            (Method::POST, "/gateways", None),
            (Method::PUT, "/tools/{id}", None),
        ];
        for (m, route, want) in cases {
            assert_eq!(owned_kind(&m, route), want, "{m} {route}");
        }
    }
}
