//! The GET stream of a session over several stateful upstreams: the filter hands it over
//! with the upstreams' ids; the relay opens one GET per upstream (picked with
//! [`UPSTREAM_HEADER`], back through the edge) and merges their events into one stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use mcpgw_core::edge::{RELAY_UPSTREAMS_HEADER, UPSTREAM_HEADER};
use tokio::sync::{Notify, mpsc};

use super::auth::Caller;
use super::edge::{Edge, Id, pump, read_bounded};
use super::error::RelayError;
use super::legacy::keep_alive;
use super::limits::{Activity, Permit};
use super::{Inner, MAX_MERGED_UPSTREAMS, QUEUE, STREAM_OPEN_TIMEOUT, sse_response};

const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// Largest refusal of the edge the relay passes on (a JSON-RPC error).
const MAX_REFUSAL_BYTES: usize = 64 * 1024;

/// Uncounts the merged stream when its body is dropped.
struct Open {
    inner: Arc<Inner>,
    _permit: Permit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.inner.metrics.merged_streams.dec();
    }
}

/// `GET /servers/{id}/mcp` handed over by the filter.
pub(super) async fn open(
    State(inner): State<Arc<Inner>>,
    Extension(caller): Extension<Caller>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    match merge(&inner, &caller, &server, &headers).await {
        Ok(r) => r,
        Err(e) => inner.refuse(e),
    }
}

/// The upstream ids the filter named: at least one.
pub(super) fn upstreams(headers: &HeaderMap) -> Result<Vec<Id>, RelayError> {
    let ids = upstream_ids(headers)?;
    if ids.is_empty() {
        return Err(RelayError::NoUpstreams);
    }
    Ok(ids)
}

/// The upstream ids the filter named (none when it named none).
pub(super) fn upstream_ids(headers: &HeaderMap) -> Result<Vec<Id>, RelayError> {
    let field = RELAY_UPSTREAMS_HEADER;
    let raw = headers
        .get(field)
        .map(|v| {
            v.to_str().map_err(|_| RelayError::FieldInvalid {
                field,
                reason: "not ASCII".into(),
            })
        })
        .transpose()?
        .unwrap_or_default();
    let ids = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Id::parse(field, s))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_MERGED_UPSTREAMS {
        return Err(RelayError::FieldInvalid {
            field,
            reason: format!(
                "{} upstreams; at most {MAX_MERGED_UPSTREAMS} streams are merged",
                ids.len()
            ),
        });
    }
    Ok(ids)
}

async fn merge(
    inner: &Arc<Inner>,
    caller: &Caller,
    server: &str,
    headers: &HeaderMap,
) -> Result<Response, RelayError> {
    let edge_addr = caller.edge()?;
    let server = Id::parse("id", server)?;
    let token = headers
        .get(SESSION_ID)
        .cloned()
        .ok_or(RelayError::MissingMcpSession)?;
    let upstreams = upstreams(headers)?;
    let edge = Edge::new(edge_addr, &server, headers)?;
    // Counted before anything is opened: a client over its cap costs the edge nothing.
    let permit = inner.merged_caps.acquire(caller.client)?;
    let opens = upstreams.iter().map(|u| {
        let mut req = edge
            .request(&inner.http, reqwest::Method::GET, None)
            .header(header::ACCEPT, "text/event-stream")
            .header(SESSION_ID, token.clone())
            .header(UPSTREAM_HEADER, u.as_str());
        if let Some(v) = headers.get(PROTOCOL_VERSION) {
            req = req.header(PROTOCOL_VERSION, v.clone());
        }
        async move { tokio::time::timeout(STREAM_OPEN_TIMEOUT, req.send()).await }
    });
    let mut open = Vec::new();
    let mut refused = None;
    for (u, r) in upstreams.iter().zip(futures::future::join_all(opens).await) {
        let u = u.as_str();
        match r {
            Ok(Ok(r)) if r.status() == StatusCode::OK => open.push(r),
            Ok(Ok(r)) => {
                tracing::debug!(upstream = %u, status = %r.status(), "relay: an upstream refused its stream");
                refused.get_or_insert(r);
            }
            Ok(Err(e)) => {
                tracing::debug!(upstream = %u, error = %e, "relay: opening an upstream stream failed")
            }
            Err(_) => tracing::debug!(upstream = %u, "relay: opening an upstream stream timed out"),
        }
    }
    if open.is_empty() {
        // Pass the edge's own answer on (e.g. 404 for a session the filter refuses).
        let Some(r) = refused else {
            return Err(RelayError::NoStreamOpened);
        };
        let status = r.status();
        let ct = r.headers().get(header::CONTENT_TYPE).cloned();
        let body = tokio::time::timeout(STREAM_OPEN_TIMEOUT, read_bounded(r, MAX_REFUSAL_BYTES))
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(RelayError::NoStreamOpened)?;
        let mut resp = (status, body).into_response();
        if let Some(ct) = ct {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(resp);
    }
    // Refusals of the other upstreams are not read further.
    drop(refused);
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let activity = Arc::new(Activity::new());
    let close = Arc::new(Notify::new());
    let sse_limits = inner.limits.sse();
    for r in open {
        let (tx, activity, metrics) = (tx.clone(), activity.clone(), inner.metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = pump(r, &tx, sse_limits, &activity).await {
                tracing::debug!(error = %e, "relay: an upstream stream of a merged stream ended");
                metrics.closed(e.label());
            }
        });
    }
    {
        // Ends the merged stream once no upstream sent anything for the idle limit.
        let (idle, tx, activity, close, metrics) = (
            inner.limits.merged_idle_timeout,
            tx.clone(),
            activity.clone(),
            close.clone(),
            inner.metrics.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = activity.idle_for(idle) => {
                    metrics.closed("idle");
                    close.notify_one();
                }
                () = tx.closed() => {}
            }
        });
    }
    keep_alive(tx);
    inner.metrics.merged_streams.inc();
    let guard = Open {
        inner: inner.clone(),
        _permit: permit,
    };
    let body = tokio_stream::wrappers::ReceiverStream::new(rx)
        .take_until(async move { close.notified().await })
        .map(move |b| {
            let _ = &guard;
            Ok::<_, Infallible>(b)
        });
    Ok(sse_response(Body::from_stream(body)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn upstream_ids_are_checked_and_bounded() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RELAY_UPSTREAMS_HEADER, HeaderValue::from_str(v).unwrap());
            h
        };
        let ids = upstreams(&with(" a1, b-2 ,,")).unwrap();
        assert_eq!(
            ids.iter().map(Id::as_str).collect::<Vec<_>>(),
            ["a1", "b-2"]
        );
        assert_eq!(upstreams(&HeaderMap::new()), Err(RelayError::NoUpstreams));
        assert_eq!(upstreams(&with(" , ")), Err(RelayError::NoUpstreams));
        for bad in ["a,../x", "a,b/c", "a,%2e%2e"] {
            assert_eq!(
                upstreams(&with(bad)).unwrap_err().label(),
                "field_invalid",
                "{bad}"
            );
        }
        let many = vec!["u"; MAX_MERGED_UPSTREAMS + 1].join(",");
        assert_eq!(
            upstreams(&with(&many)).unwrap_err().label(),
            "field_invalid"
        );
    }
}
