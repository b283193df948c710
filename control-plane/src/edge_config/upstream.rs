//! How the edge reaches each upstream gateway: where (endpoint, path, `:authority`) and as
//! whom (the gateway's own credential headers and the secret query parameters of its URL).
//!
//! [`upstream_access`] is the one place that opens a gateway's sealed credentials for the
//! edge. What it returns goes into the gateway's Cluster only (an upstream HTTP filter
//! that replaces the client's credentials with these): never into the filter snapshot,
//! `/snapshot`, a log line or an API answer. [`Secret`] prints as `<redacted>`.

use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use mcpgw_core::catalog::Upstream;

use super::translate::{EdgeError, UpstreamEndpoint};
use crate::crypto::SecretBox;
use crate::model::{Credentials, Gateway};

/// A value that must reach only an Envoy's cluster: `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value in clear, for the one place it is written: the cluster resource.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A header or query parameter whose value is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPair {
    /// Header name (lower case) or query parameter key.
    pub name: String,
    /// Its value.
    pub value: Secret,
}

/// Where an upstream is and what the edge must send it, parsed from its URL (no secret
/// store involved): see [`UpstreamTarget::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// Host (name or IP literal), port, TLS.
    pub endpoint: UpstreamEndpoint,
    /// Path of the MCP endpoint, without the query.
    pub path: String,
    /// `:authority` to send: host, and port when the URL names one.
    pub authority: String,
    /// The URL's query parameters: tokens often travel there, so they are treated as
    /// secrets and added by the cluster, never written into the snapshot.
    pub query: Vec<SecretPair>,
}

impl UpstreamTarget {
    /// Parses a gateway's URL.
    pub fn parse(gateway: &Gateway) -> Result<UpstreamTarget, EdgeError> {
        let bad = |reason: String| EdgeError::BadUrl {
            gateway: gateway.id.clone(),
            reason,
        };
        let endpoint = UpstreamEndpoint::from_url(gateway.url.as_str()).map_err(bad)?;
        let url = url::Url::parse(gateway.url.as_str()).map_err(|e| bad(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            // The registry refuses these; a stored one must not travel in a Host header.
            return Err(bad(
                "credentials in the URL (userinfo) are not sent; use auth_headers".into(),
            ));
        }
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let query = url
            .query_pairs()
            .map(|(k, v)| SecretPair {
                name: k.into_owned(),
                value: Secret::new(v.into_owned()),
            })
            .collect();
        Ok(UpstreamTarget {
            endpoint,
            path: url.path().to_owned(),
            authority,
            query,
        })
    }

    /// The host as an IP address, when the URL names one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.endpoint.host.parse().ok()
    }

    /// The snapshot's entry for this upstream (no secret in it).
    pub fn snapshot_entry(&self, cluster: String) -> Upstream {
        Upstream {
            cluster,
            path: self.path.clone(),
            authority: Some(self.authority.clone()),
            protocol_versions: Vec::new(),
        }
    }
}

/// Everything the edge needs to reach one gateway as itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAccess {
    /// Where it is.
    pub target: UpstreamTarget,
    /// The gateway's own credentials, as headers the cluster adds (after removing the
    /// client's `authorization`, `proxy-authorization` and `cookie`).
    pub headers: Vec<SecretPair>,
}

/// Reads one gateway's access: its URL parsed, its sealed credentials (`sealed`, as
/// stored) opened with `secrets` and turned into headers.
///
/// The only call into the credential cipher on the edge's side: when sealing binds a value
/// to its gateway (and origin), this is the one call to adapt.
pub fn upstream_access(
    gateway: &Gateway,
    sealed: Option<&str>,
    secrets: &SecretBox,
) -> Result<UpstreamAccess, EdgeError> {
    let target = UpstreamTarget::parse(gateway)?;
    let credentials = match sealed {
        Some(s) if gateway.auth_type != crate::model::AuthType::None => Some(
            secrets
                .open_credentials(
                    s,
                    crate::crypto::CredentialBinding {
                        gateway_id: &gateway.id,
                        origin: &gateway.url.origin(),
                    },
                )
                .map_err(|e| EdgeError::Credentials {
                    gateway: gateway.id.clone(),
                    reason: e.to_string(),
                })?,
        ),
        _ => None,
    };
    let headers = credential_headers(&gateway.id, credentials.as_ref())?;
    Ok(UpstreamAccess { target, headers })
}

/// The headers that present `credentials`.
fn credential_headers(
    gateway: &str,
    credentials: Option<&Credentials>,
) -> Result<Vec<SecretPair>, EdgeError> {
    let authorization = |value: String| {
        vec![SecretPair {
            name: "authorization".into(),
            value: Secret::new(value),
        }]
    };
    let headers = match credentials {
        None => Vec::new(),
        Some(Credentials::Bearer { token }) => authorization(format!("Bearer {token}")),
        Some(Credentials::Basic { username, password }) => {
            let raw =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            authorization(format!("Basic {raw}"))
        }
        Some(Credentials::Headers { headers }) => headers
            .iter()
            .map(|h| SecretPair {
                name: h.key.to_ascii_lowercase(),
                value: Secret::new(h.value.clone()),
            })
            .collect(),
    };
    for h in &headers {
        let name_ok = !h.name.is_empty()
            && h.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        // Pseudo-headers and hop-by-hop names are Envoy's to set.
        let reserved = matches!(
            h.name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "te" | "upgrade"
        );
        let value_ok = h
            .value
            .expose()
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80);
        if !name_ok || reserved || !value_ok {
            return Err(EdgeError::Credentials {
                gateway: gateway.to_owned(),
                reason: format!("credential header {:?} cannot be sent", h.name),
            });
        }
    }
    Ok(headers)
}
