//! API tokens for machines: `mcpgw_` and 43 base64url characters (256 random bits). Only
//! the SHA-256 of a token is stored: with that much entropy a plain hash is as good as a
//! slow one, and a lookup by hash needs no per-token salt. The secret is shown once, when
//! the token is created.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use utoipa::ToSchema;

use super::rbac::{Permission, PermissionSet, ScopeSet, TokenScope};
use crate::model::FieldInvalid;

/// The prefix every API token starts with (secret scanners key on it).
pub const PREFIX: &str = "mcpgw_";

/// A new token secret.
pub fn generate() -> Result<String, ring::error::Unspecified> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)?;
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

/// The stored form of a token: hex SHA-256.
pub fn hash(secret: &str) -> String {
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a bearer credential looks like an API token (rather than a JWT).
pub fn is_api_token(bearer: &str) -> bool {
    bearer.starts_with(PREFIX)
}

/// What to make of an empty scope list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmptyScopes {
    /// Grants nothing (the default).
    #[default]
    Deny,
    /// Means everything the user has, as `["*"]` does.
    Inherit,
}

/// What a token is limited to, as created and stored. Lists of ids or names; `"*"` means
/// everything the token's user has. An empty or missing list grants nothing (unless the
/// control plane runs with `--token-empty-scopes inherit`), except `ip_ranges`, which
/// restricts: empty means any address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scopes {
    /// Permissions (`gateways.read`, `tokens.*`, or `*`).
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Team ids whose items the token reaches (or `*`).
    #[serde(default)]
    pub teams: Vec<String>,
    /// Virtual server ids the token reaches (or `*`).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Client addresses or CIDR ranges the token is accepted from (empty: any).
    #[serde(default)]
    pub ip_ranges: Vec<String>,
}

impl Scopes {
    /// Validates and turns the lists into a [`TokenScope`].
    pub fn parse(&self, empty: EmptyScopes) -> Result<TokenScope, FieldInvalid> {
        let permissions = if self.permissions.iter().any(|p| p == "*")
            || self.permissions.is_empty() && empty == EmptyScopes::Inherit
        {
            PermissionSet::All
        } else {
            let mut set = std::collections::BTreeSet::new();
            for (i, p) in self.permissions.iter().enumerate() {
                let all = Permission::parse_pattern(p).ok_or_else(|| {
                    FieldInvalid::new(
                        format!("scopes.permissions[{i}]"),
                        format!("{p:?} is not a permission (e.g. gateways.read, tokens.*, *)"),
                    )
                })?;
                set.extend(all);
            }
            PermissionSet::Only(set)
        };
        let ids = |list: &[String], field: &str| -> Result<ScopeSet, FieldInvalid> {
            for (i, id) in list.iter().enumerate() {
                if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
                    return Err(FieldInvalid::new(
                        format!("scopes.{field}[{i}]"),
                        "must be an id of 1-255 characters without control characters, or *",
                    ));
                }
            }
            Ok(if list.is_empty() && empty == EmptyScopes::Inherit {
                ScopeSet::All
            } else {
                ScopeSet::from_list(list)
            })
        };
        let mut ip_ranges = Vec::new();
        for (i, r) in self.ip_ranges.iter().enumerate() {
            let net = r
                .parse::<ipnet::IpNet>()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    FieldInvalid::new(
                        format!("scopes.ip_ranges[{i}]"),
                        format!("{r:?} is not an IP address or CIDR range"),
                    )
                })?;
            ip_ranges.push(net.trunc());
        }
        Ok(TokenScope {
            permissions,
            teams: ids(&self.teams, "teams")?,
            servers: ids(&self.servers, "servers")?,
            ip_ranges,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_only_hashed() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43, "{a}");
        assert!(is_api_token(&a) && !is_api_token("eyJhbGciOi.x.y"));
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn empty_lists_deny_unless_configured_and_bad_entries_name_their_field() {
        let empty = Scopes::default();
        let s = empty.parse(EmptyScopes::Deny).unwrap();
        assert_eq!(s.permissions, PermissionSet::Only(Default::default()));
        assert_eq!(s.teams, ScopeSet::Only(Default::default()));
        let s = empty.parse(EmptyScopes::Inherit).unwrap();
        assert_eq!(s.permissions, PermissionSet::All);
        assert_eq!(s.teams, ScopeSet::All);
        let star = Scopes {
            permissions: vec!["*".into()],
            teams: vec!["*".into()],
            ..Default::default()
        };
        assert_eq!(star.parse(EmptyScopes::Deny).unwrap().teams, ScopeSet::All);
        for (scopes, field) in [
            (
                Scopes {
                    permissions: vec!["gateways.read".into(), "gateways.fly".into()],
                    ..Default::default()
                },
                "scopes.permissions[1]",
            ),
            (
                Scopes {
                    ip_ranges: vec!["10.0.0.0/33".into()],
                    ..Default::default()
                },
                "scopes.ip_ranges[0]",
            ),
            (
                Scopes {
                    teams: vec!["".into()],
                    ..Default::default()
                },
                "scopes.teams[0]",
            ),
        ] {
            assert_eq!(scopes.parse(EmptyScopes::Deny).unwrap_err().field, field);
        }
        let one_ip = Scopes {
            ip_ranges: vec!["192.0.2.7".into()],
            ..Default::default()
        };
        assert_eq!(
            one_ip.parse(EmptyScopes::Deny).unwrap().ip_ranges[0].to_string(),
            "192.0.2.7/32"
        );
    }
}
