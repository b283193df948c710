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
use crate::model::{Credentials, Gateway, IdentityMode};
use mcpgw_core::upstream_identity::{self as core_identity, UpstreamIdentity};

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
        Self::parse_url(&gateway.id, &gateway.url)
    }

    /// Parses gateway `id`'s URL `raw` (its own, or its token endpoint).
    pub fn parse_url(
        id: &str,
        raw: &crate::model::UpstreamUrl,
    ) -> Result<UpstreamTarget, EdgeError> {
        let bad = |reason: String| EdgeError::BadUrl {
            gateway: id.to_owned(),
            reason,
        };
        let endpoint = UpstreamEndpoint::from_url(raw.as_str()).map_err(bad)?;
        let url = url::Url::parse(raw.as_str()).map_err(|e| bad(e.to_string()))?;
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

    /// The snapshot's entry for this upstream (no secret in it but the identity-header
    /// key, which only Envoys are served).
    pub fn snapshot_entry(&self, cluster: String, identity: UpstreamIdentity) -> Upstream {
        Upstream {
            cluster,
            path: self.path.clone(),
            authority: Some(self.authority.clone()),
            protocol_versions: Vec::new(),
            identity,
        }
    }
}

/// Everything the edge needs to reach one gateway as itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAccess {
    /// Where it is.
    pub target: UpstreamTarget,
    /// The gateway's own credentials, as headers the cluster adds (after removing the
    /// client's `authorization`, `proxy-authorization` and `cookie`). Empty unless its
    /// identity mode is `static`.
    pub headers: Vec<SecretPair>,
    /// Its identity mode.
    pub mode: IdentityMode,
    /// With mode token-exchange: the token endpoint, reached as the gateway's OAuth client.
    pub token_endpoint: Option<TokenEndpoint>,
}

/// A token endpoint as the edge reaches it: where, and the gateway's client authentication
/// (HTTP Basic) that its cluster adds. Never in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEndpoint {
    /// Host, port, TLS, path (with any query, which is sent as is).
    pub target: UpstreamTarget,
    /// `authorization: Basic …` of the gateway's client id and secret.
    pub headers: Vec<SecretPair>,
    /// `audience`, `resource`, `scope` asked for.
    pub settings: crate::model::TokenExchangeSettings,
}

/// The cluster of gateway cluster `cluster`'s token endpoint.
pub fn token_cluster_name(cluster: &str) -> String {
    format!("{cluster}-token")
}

/// `iss` of identity headers.
pub const IDENTITY_ISSUER: &str = "mcpgw";

/// Gateway `id`'s identity-header key and how headers signed with it read: derived from
/// the encryption key (HKDF, a label per gateway), so it changes when that key is rotated
/// (its `kid` says which one signed).
pub fn identity_header(secrets: &SecretBox, gateway_id: &str) -> core_identity::IdentityHeader {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::Digest as _;
    let key = secrets.derive(&crate::model::identity_key_label(gateway_id));
    let digest = sha2::Sha256::digest(key);
    core_identity::IdentityHeader {
        key: core_identity::SigningKey(key),
        kid: URL_SAFE_NO_PAD.encode(digest.get(..12).unwrap_or_default()),
        audience: gateway_id.to_owned(),
        issuer: IDENTITY_ISSUER.to_owned(),
        ttl_seconds: 60,
    }
}

impl UpstreamAccess {
    /// The snapshot's identity of this upstream (cluster `cluster`).
    pub fn snapshot_identity(
        &self,
        gateway_id: &str,
        cluster: &str,
        secrets: &SecretBox,
    ) -> UpstreamIdentity {
        match (self.mode, &self.token_endpoint) {
            (IdentityMode::None, _) => UpstreamIdentity::None,
            (IdentityMode::Static, _) => UpstreamIdentity::Static,
            (IdentityMode::IdentityHeader, _) => {
                UpstreamIdentity::IdentityHeader(identity_header(secrets, gateway_id))
            }
            (IdentityMode::TokenExchange, Some(t)) => {
                UpstreamIdentity::TokenExchange(core_identity::TokenExchange {
                    cluster: token_cluster_name(cluster),
                    path: t.target.path.clone(),
                    authority: t.target.authority.clone(),
                    audience: t.settings.audience.clone(),
                    resource: t.settings.resource.clone(),
                    scope: t.settings.scope.clone(),
                })
            }
            // `upstream_access` gives every token-exchange gateway its endpoint.
            (IdentityMode::TokenExchange, None) => UpstreamIdentity::None,
        }
    }
}

/// Reads one gateway's access: its URL parsed, its sealed credentials (`sealed`, as
/// stored) opened with `secrets` and turned into headers.
///
/// The only call into the credential cipher on the edge's side: when sealing binds a value
/// to its gateway (and origin), this is the one call to adapt.
pub fn upstream_access(
    gateway: &Gateway,
    sealed: Option<&str>,
    identity_sealed: Option<&str>,
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
    let mode = gateway.identity.mode;
    let headers = if mode == IdentityMode::Static {
        credential_headers(&gateway.id, credentials.as_ref())?
    } else {
        Vec::new()
    };
    let token_endpoint = match (&gateway.identity.token_exchange, mode) {
        (Some(settings), IdentityMode::TokenExchange) => {
            Some(token_endpoint(gateway, settings, identity_sealed, secrets)?)
        }
        (_, IdentityMode::TokenExchange) => {
            return Err(EdgeError::Credentials {
                gateway: gateway.id.clone(),
                reason: "identity token-exchange without its settings".into(),
            });
        }
        _ => None,
    };
    Ok(UpstreamAccess {
        target,
        headers,
        mode,
        token_endpoint,
    })
}

/// The token endpoint of a token-exchange gateway, with its client authentication opened.
fn token_endpoint(
    gateway: &Gateway,
    settings: &crate::model::TokenExchangeSettings,
    sealed: Option<&str>,
    secrets: &SecretBox,
) -> Result<TokenEndpoint, EdgeError> {
    let fail = |reason: String| EdgeError::Credentials {
        gateway: gateway.id.clone(),
        reason: format!("token exchange: {reason}"),
    };
    let url = settings.endpoint().map_err(|e| fail(e.reason.clone()))?;
    let mut target = UpstreamTarget::parse_url(&gateway.id, &url)?;
    // The token endpoint's query is part of its address, not a secret of the upstream.
    target.path = url.path_and_query();
    target.query = Vec::new();
    let sealed = sealed.ok_or_else(|| fail("no client secret is stored".into()))?;
    let (secret, _) = secrets
        .open_for(
            crate::model::CLIENT_SECRET_LABEL,
            gateway.id.as_bytes(),
            sealed,
        )
        .map_err(|e| fail(format!("client secret: {e}")))?;
    let secret =
        String::from_utf8(secret).map_err(|_| fail("client secret is not UTF-8".into()))?;
    // RFC 6749 §2.3.1: both form-encoded before Basic.
    let form = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let raw = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form(&settings.client_id),
        form(&secret)
    ));
    Ok(TokenEndpoint {
        target,
        headers: vec![SecretPair {
            name: "authorization".into(),
            value: Secret::new(format!("Basic {raw}")),
        }],
        settings: settings.clone(),
    })
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
