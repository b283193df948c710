//! Who may use the relay: requests that carry the relay secret, which only the relay route
//! of this control plane's Envoys adds. Everything else in a request (the edge address,
//! the client address) is read only once the secret matched.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use mcpgw_core::edge::{CLIENT_ADDRESS_HEADER, EDGE_ADDRESS_HEADER, RELAY_AUTH_HEADER};
use subtle::ConstantTimeEq as _;

use super::Inner;
use super::error::RelayError;
use super::limits::ClientKey;

/// The relay secrets (never printed): the current one first, then those of previous keys.
pub(super) struct Secret(Vec<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    pub(super) fn new(secret: String) -> Secret {
        Secret(vec![secret.into_bytes()])
    }

    /// Also admits `others` (secrets of previous keys, during a rotation).
    pub(super) fn also(&mut self, others: Vec<String>) {
        for other in others {
            let other = other.into_bytes();
            if !self.0.contains(&other) {
                self.0.push(other);
            }
        }
    }

    /// Whether `headers` carry exactly one copy of the secret. The comparison takes the
    /// same time wherever the first wrong byte is (the length is no secret: it is fixed).
    fn admits(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(RELAY_AUTH_HEADER).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        self.0
            .iter()
            .filter(|s| !s.is_empty())
            .fold(false, |hit, s| {
                hit | bool::from(s.as_slice().ct_eq(value.as_bytes()))
            })
    }
}

/// Who sent an authenticated request: what the Envoy's relay route said about it.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    /// The Envoy listener the client reached (`None`: the route did not say).
    pub(super) edge: Option<SocketAddr>,
    /// The client, for per-client limits.
    pub(super) client: ClientKey,
}

impl Caller {
    fn from_headers(headers: &HeaderMap) -> Caller {
        let edge = headers
            .get(EDGE_ADDRESS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let client = headers
            .get(CLIENT_ADDRESS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .map_or(ClientKey::Shared, ClientKey::of);
        Caller { edge, client }
    }

    /// The edge address, required.
    pub(super) fn edge(&self) -> Result<SocketAddr, RelayError> {
        self.edge.ok_or(RelayError::NotThroughEdge)
    }
}

/// Refuses (403) a request without the secret; otherwise removes the secret from the
/// request (nothing can forward it) and hands the handlers the [`Caller`].
pub(super) async fn authenticate(
    State(inner): State<Arc<Inner>>,
    mut request: Request,
    next: Next,
) -> Response {
    if !inner.secret.admits(request.headers()) {
        return inner.refuse(RelayError::Unauthenticated);
    }
    request.headers_mut().remove(RELAY_AUTH_HEADER);
    let caller = Caller::from_headers(request.headers());
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_previous_key_s_secret_admits_too() {
        let mut secret = Secret::new("current".into());
        secret.also(vec!["current".into(), "previous".into(), String::new()]);
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(RELAY_AUTH_HEADER, HeaderValue::from_static(v));
            h
        };
        assert!(secret.admits(&with("current")));
        assert!(secret.admits(&with("previous")));
        assert!(!secret.admits(&with("other")));
        assert!(!secret.admits(&with("")));
        assert!(!secret.admits(&HeaderMap::new()));
    }

    #[test]
    fn only_one_exact_copy_of_a_non_empty_secret_admits() {
        let secret = Secret::new("00ff".repeat(16));
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(RELAY_AUTH_HEADER, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let right = "00ff".repeat(16);
        let cases: &[(&str, &[&str], bool)] = &[
            ("the secret", &[&right], true),
            ("none", &[], false),
            ("empty", &[""], false),
            ("wrong last byte", &[&format!("{}0", &right[..63])], false),
            ("a prefix", &[&right[..32]], false),
            ("longer", &[&format!("{right}0")], false),
            ("twice", &[&right, &right], false),
            ("a wrong one first", &["x", &right], false),
        ];
        for (name, values, want) in cases {
            assert_eq!(secret.admits(&with(values)), *want, "{name}");
        }
        // An empty secret admits nobody, not even an empty header.
        assert!(!Secret::new(String::new()).admits(&with(&[""])));
    }

    #[test]
    fn the_caller_is_read_from_the_route_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            EDGE_ADDRESS_HEADER,
            HeaderValue::from_static("127.0.0.1:8080"),
        );
        h.insert(CLIENT_ADDRESS_HEADER, HeaderValue::from_static("10.0.0.7"));
        let c = Caller::from_headers(&h);
        assert_eq!(c.edge, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.client, ClientKey::of("10.0.0.7".parse().unwrap()));
        // Unusable values: no edge (refused by the handlers), the shared client bucket.
        h.insert(EDGE_ADDRESS_HEADER, HeaderValue::from_static("envoy:8080"));
        h.insert(CLIENT_ADDRESS_HEADER, HeaderValue::from_static("somewhere"));
        let c = Caller::from_headers(&h);
        assert_eq!((c.edge, c.client), (None, ClientKey::Shared));
        assert_eq!(c.edge(), Err(RelayError::NotThroughEdge));
    }
}
