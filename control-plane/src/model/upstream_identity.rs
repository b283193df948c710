//! As whom the Envoys call a gateway on a principal's behalf ([`GatewayIdentity`]): the
//! gateway's field `identity`, stored as JSON beside the gateway (its one secret, the token
//! exchange's client secret, sealed apart), delivered per upstream in the snapshot.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldInvalid, UpstreamUrl};

/// Longest `client_id`, `audience`, `resource` or `scope`.
pub const MAX_IDENTITY_FIELD: usize = 1024;

/// How the Envoys identify calls to a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    /// No credential: the client's are removed, none is added.
    None,
    /// The gateway's stored credential (`auth_type`), added by the Envoy's cluster.
    #[default]
    Static,
    /// The principal as a signed header (`x-mcpgw-identity`, a compact JWS HS256 with the
    /// gateway's own key: `GET /gateways/{id}/identity-key`).
    IdentityHeader,
    /// The client's access token exchanged (RFC 8693) for one scoped to this gateway,
    /// cached per principal until it expires.
    TokenExchange,
}

impl IdentityMode {
    /// The API and snapshot form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Static => "static",
            Self::IdentityHeader => "identity-header",
            Self::TokenExchange => "token-exchange",
        }
    }

    /// Parses the API form (the CLI's `--identity`).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::None,
            Self::Static,
            Self::IdentityHeader,
            Self::TokenExchange,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// Where and how a token is exchanged. The client secret is not part of it: it is
/// write-only, sealed at rest and sent only by the Envoys' token-endpoint cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenExchangeSettings {
    /// The authorization server's token endpoint (http or https; the SSRF policy applies to
    /// it as to gateway URLs).
    pub token_endpoint: String,
    /// The gateway's OAuth client id at that server (HTTP Basic client authentication,
    /// RFC 6749 §2.3.1).
    pub client_id: String,
    /// `audience` to ask for (RFC 8693); `audience` or `resource` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// `resource` to ask for (RFC 8707), e.g. the gateway's MCP URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `scope` to ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl TokenExchangeSettings {
    /// The token endpoint as a URL (checked by [`GatewayIdentity::check`]).
    pub fn endpoint(&self) -> Result<UpstreamUrl, FieldInvalid> {
        UpstreamUrl::parse(&self.token_endpoint)
            .map_err(|e| FieldInvalid::new("identity.token_exchange.token_endpoint", e.reason))
    }
}

/// A gateway's upstream identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct GatewayIdentity {
    /// The mode (default `static`).
    #[serde(default)]
    pub mode: IdentityMode,
    /// With mode `token-exchange` (and only then): the exchange's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchangeSettings>,
}

impl GatewayIdentity {
    /// Checks the settings against the mode.
    pub fn check(&self) -> Result<(), FieldInvalid> {
        match (self.mode, &self.token_exchange) {
            (IdentityMode::TokenExchange, None) => Err(FieldInvalid::new(
                "identity.token_exchange",
                "required with mode token-exchange",
            )),
            (IdentityMode::TokenExchange, Some(t)) => {
                t.endpoint()?;
                let at = |f: &str| format!("identity.token_exchange.{f}");
                if t.client_id.is_empty() || t.client_id.contains(':') {
                    return Err(FieldInvalid::new(
                        at("client_id"),
                        "required, without ':' (it travels in HTTP Basic)",
                    ));
                }
                if t.audience.is_none() && t.resource.is_none() {
                    return Err(FieldInvalid::new(
                        at("audience"),
                        "an exchange names its target: audience, resource or both",
                    ));
                }
                for (f, v) in [
                    ("client_id", Some(&t.client_id)),
                    ("audience", t.audience.as_ref()),
                    ("resource", t.resource.as_ref()),
                    ("scope", t.scope.as_ref()),
                ] {
                    if let Some(v) = v
                        && (v.is_empty()
                            || v.len() > MAX_IDENTITY_FIELD
                            || v.chars().any(char::is_control))
                    {
                        return Err(FieldInvalid::new(
                            at(f),
                            format!("1..={MAX_IDENTITY_FIELD} bytes, no control characters"),
                        ));
                    }
                }
                Ok(())
            }
            (_, Some(_)) => Err(FieldInvalid::new(
                "identity.token_exchange",
                format!("only with mode token-exchange, not {}", self.mode.as_str()),
            )),
            (_, None) => Ok(()),
        }
    }

    /// The stored form (JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"mode":"static"}"#.to_owned())
    }

    /// Reads the stored form.
    pub fn from_json(raw: &str) -> Result<GatewayIdentity, FieldInvalid> {
        let parsed: GatewayIdentity =
            serde_json::from_str(raw).map_err(|e| FieldInvalid::new("identity", e.to_string()))?;
        parsed.check()?;
        Ok(parsed)
    }
}

/// The HKDF label of gateway `id`'s identity-header key (derived from the encryption key).
pub fn identity_key_label(gateway_id: &str) -> String {
    format!("mcpgw/identity-header/v1/{gateway_id}")
}

/// The sealing label of token-exchange client secrets.
pub const CLIENT_SECRET_LABEL: &str = "mcpgw/token-exchange-client-secret/v1";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exchange(f: impl FnOnce(&mut TokenExchangeSettings)) -> GatewayIdentity {
        let mut t = TokenExchangeSettings {
            token_endpoint: "https://as.example.com/token".into(),
            client_id: "mcpgw".into(),
            audience: Some("upstream".into()),
            resource: None,
            scope: None,
        };
        f(&mut t);
        GatewayIdentity {
            mode: IdentityMode::TokenExchange,
            token_exchange: Some(t),
        }
    }

    #[test]
    fn identities_are_checked_against_their_mode() {
        assert!(GatewayIdentity::default().check().is_ok());
        assert!(exchange(|_| {}).check().is_ok());
        let cases = [
            (
                "missing settings",
                GatewayIdentity {
                    mode: IdentityMode::TokenExchange,
                    token_exchange: None,
                },
                "identity.token_exchange",
            ),
            (
                "settings without the mode",
                GatewayIdentity {
                    mode: IdentityMode::IdentityHeader,
                    ..exchange(|_| {})
                },
                "identity.token_exchange",
            ),
            (
                "bad endpoint",
                exchange(|t| t.token_endpoint = "ftp://x/token".into()),
                "identity.token_exchange.token_endpoint",
            ),
            (
                "userinfo endpoint",
                exchange(|t| t.token_endpoint = "https://a:b@x/token".into()),
                "identity.token_exchange.token_endpoint",
            ),
            (
                "colon in client id",
                exchange(|t| t.client_id = "a:b".into()),
                "identity.token_exchange.client_id",
            ),
            (
                "no target",
                exchange(|t| t.audience = None),
                "identity.token_exchange.audience",
            ),
            (
                "control character",
                exchange(|t| t.scope = Some("a\nb".into())),
                "identity.token_exchange.scope",
            ),
        ];
        for (name, identity, field) in cases {
            assert_eq!(identity.check().unwrap_err().field, field, "{name}");
        }
        let stored = exchange(|_| {}).to_json();
        assert_eq!(
            GatewayIdentity::from_json(&stored).unwrap(),
            exchange(|_| {})
        );
        assert_eq!(
            IdentityMode::parse("identity-header"),
            Some(IdentityMode::IdentityHeader)
        );
    }
}
