//! How the relay talks to the edge (the Envoy listener a client reached), the only place
//! it sends requests to.
//!
//! A client's `authorization` and `cookie` travel with its messages on purpose: this is
//! still the client-to-edge hop, and the edge needs them to authenticate a legacy SSE
//! client as it would a direct one; the edge's filter strips them before any upstream.
//! They are carried only by an [`Edge`], whose URL is built from the authenticated edge
//! address and a checked server id, and the relay's HTTP client follows no redirect, so
//! they reach that Envoy listener and nothing else.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName};
use futures::StreamExt as _;
use mcpgw_core::catalog::is_path_segment;
use tokio::sync::mpsc;
use url::Url;

use super::error::RelayError;
use super::limits::Activity;
use crate::sse::{Parser, SseError, frame};

/// Client headers the relay's own requests to the edge carry on (credentials, trace
/// context, and the `Host` the client reached the listener by, which passed its allow-list
/// there: the listener's own address may not be on it behind a load balancer). The relay
/// secret is never among them.
const FORWARDED: [&str; 6] = [
    "authorization",
    "cookie",
    "host",
    "traceparent",
    "tracestate",
    "user-agent",
];

/// A checked id: one path segment by the snapshot's rule (no `/`, `%`, `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Id(String);

impl Id {
    /// Checks `raw` (what the router decoded, or a header's item) as an id.
    pub(super) fn parse(field: &'static str, raw: &str) -> Result<Id, RelayError> {
        if is_path_segment(raw) {
            Ok(Id(raw.to_owned()))
        } else {
            Err(RelayError::FieldInvalid {
                field,
                reason: format!(
                    "{:?} is not an id (ASCII letters, digits, '-', '_' and '.', not '.' or '..')",
                    raw.chars().take(64).collect::<String>()
                ),
            })
        }
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `/servers/{server}/{leaf}` at `base`, built segment by segment.
fn servers_url(mut base: Url, server: &Id, leaf: &str) -> Result<Url, RelayError> {
    base.path_segments_mut()
        .map_err(|()| RelayError::NotThroughEdge)?
        .clear()
        .extend(["servers", server.as_str(), leaf]);
    Ok(base)
}

/// The path (and query) of the message endpoint a legacy SSE stream announces.
pub(super) fn message_endpoint(server: &Id, session: &str) -> Result<String, RelayError> {
    let base = Url::parse("http://relay.invalid/").map_err(|_| RelayError::NotThroughEdge)?;
    let mut url = servers_url(base, server, "message")?;
    url.query_pairs_mut().append_pair("session_id", session);
    Ok(url[url::Position::BeforePath..].to_owned())
}

/// Where one client's relayed requests go, with the client's headers to carry on.
#[derive(Debug, Clone)]
pub(super) struct Edge {
    /// `http://{edge}/servers/{server}/mcp`.
    url: Url,
    /// The client's [`FORWARDED`] headers.
    headers: HeaderMap,
}

impl Edge {
    /// The virtual server `server` at the edge `addr`, for a client that sent `headers`.
    pub(super) fn new(
        addr: SocketAddr,
        server: &Id,
        headers: &HeaderMap,
    ) -> Result<Edge, RelayError> {
        let mut base =
            Url::parse("http://edge.invalid/").map_err(|_| RelayError::NotThroughEdge)?;
        base.set_ip_host(addr.ip())
            .map_err(|()| RelayError::NotThroughEdge)?;
        base.set_port(Some(addr.port()))
            .map_err(|()| RelayError::NotThroughEdge)?;
        Ok(Edge {
            url: servers_url(base, server, "mcp")?,
            headers: forwarded(headers),
        })
    }

    /// A request to the edge with the client's headers; `overrides` (a later message's
    /// own headers) replace those the stream was opened with.
    pub(super) fn request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        overrides: Option<&HeaderMap>,
    ) -> reqwest::RequestBuilder {
        let mut headers = self.headers.clone();
        if let Some(overrides) = overrides {
            let overrides = forwarded(overrides);
            for name in overrides.keys() {
                headers.remove(name);
            }
            headers.extend(overrides);
        }
        http.request(method, self.url.clone()).headers(headers)
    }
}

/// The client headers in [`FORWARDED`].
fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED {
        for v in headers.get_all(name) {
            out.append(HeaderName::from_static(name), v.clone());
        }
    }
    out
}

/// Why a read from the edge stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// The body is larger than the relay reads.
    #[error("the edge's answer exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// An event stream cannot be parsed further.
    #[error(transparent)]
    Sse(#[from] SseError),
    /// The connection failed.
    #[error("reading the edge's answer: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ReadError {
    /// Low-cardinality label for metrics.
    pub(super) fn label(&self) -> &'static str {
        match self {
            ReadError::TooLarge { .. } => "too_large",
            ReadError::Sse(e) => e.label(),
            ReadError::Transport(_) => "edge_read_failed",
        }
    }
}

/// The body of `response`, read whole up to `limit` bytes (refused early when the
/// declared length is over it).
pub(super) async fn read_bounded(
    response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Copies the messages of `response` (an event stream) to `out`, as `message` events,
/// until either side ends (`Ok`) or the stream breaks a limit or the connection fails.
/// Event ids are dropped (ids of merged streams would collide). Each relayed event counts
/// as activity.
pub(super) async fn pump(
    response: reqwest::Response,
    out: &mpsc::Sender<Bytes>,
    limits: crate::sse::Limits,
    activity: &Activity,
) -> Result<(), ReadError> {
    let mut parser = Parser::new(limits);
    let mut chunks = response.bytes_stream();
    loop {
        let chunk = tokio::select! {
            c = chunks.next() => c,
            () = out.closed() => return Ok(()),
        };
        let Some(chunk) = chunk else { return Ok(()) };
        for event in parser.feed(&chunk?)? {
            if event.data.is_empty() {
                continue;
            }
            activity.touch();
            if out
                .send(Bytes::from(frame(Some("message"), &event.data)))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn ids_are_single_path_segments() {
        for ok in ["abc", "a-b_c.d", "0f3a9c", "..."] {
            assert_eq!(Id::parse("id", ok).unwrap().as_str(), ok);
        }
        for bad in [
            "", ".", "..", "../admin", "a/b", "a%2Fb", "a?b", "a#b", "a b", "é", "a@b",
        ] {
            let e = Id::parse("id", bad).unwrap_err();
            assert_eq!(e.label(), "field_invalid", "{bad:?}");
        }
    }

    #[test]
    fn urls_are_built_from_parts() {
        let server = Id::parse("id", "srv-1").unwrap();
        let edge = Edge::new(
            "127.0.0.1:8080".parse().unwrap(),
            &server,
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(edge.url.as_str(), "http://127.0.0.1:8080/servers/srv-1/mcp");
        let v6 = Edge::new("[::1]:9".parse().unwrap(), &server, &HeaderMap::new()).unwrap();
        assert_eq!(v6.url.as_str(), "http://[::1]:9/servers/srv-1/mcp");
        assert_eq!(
            message_endpoint(&server, "0123abcd").unwrap(),
            "/servers/srv-1/message?session_id=0123abcd"
        );
    }

    #[test]
    fn forwarded_headers_are_the_listed_ones_and_a_message_s_own_win() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert("x-mcpgw-cluster", HeaderValue::from_static("evil"));
        h.insert("mcp-session-id", HeaderValue::from_static("s"));
        h.insert("mcpgw-relay-auth", HeaderValue::from_static("secret"));
        h.insert("host", HeaderValue::from_static("mcp.example.com"));
        let f = forwarded(&h);
        assert_eq!(f.len(), 2);
        assert_eq!(f["authorization"], "Bearer t");
        assert_eq!(f["host"], "mcp.example.com");

        let server = Id::parse("id", "s").unwrap();
        let edge = Edge::new("127.0.0.1:1".parse().unwrap(), &server, &h).unwrap();
        let mut later = HeaderMap::new();
        later.insert("authorization", HeaderValue::from_static("Bearer u"));
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::new();
        let req = edge
            .request(&http, reqwest::Method::POST, Some(&later))
            .build()
            .unwrap();
        let auth: Vec<_> = req.headers().get_all("authorization").iter().collect();
        assert_eq!(auth, ["Bearer u"]);
        assert_eq!(
            req.headers()["host"],
            "mcp.example.com",
            "the client's Host"
        );
        assert!(req.headers().get("mcpgw-relay-auth").is_none());
        assert!(req.headers().get("x-mcpgw-cluster").is_none());
    }
}
