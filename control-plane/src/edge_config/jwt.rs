//! Envoy's `jwt_authn` filter in front of the mcpgw filter: token signatures are checked
//! natively (C++, with a verified-token cache), never in wasm, and the filter gets the
//! verified payload.
//!
//! One provider per issuer of the snapshot's `auth` that has keys (`jwks`, inlined as
//! `local_jwks`: no Envoy fetches anything per request or at all). Each provider reads the
//! token from `Authorization: Bearer`, requires `exp`, allows the snapshot's `auth.clock_skew_seconds` of
//! skew, caches verified tokens, keeps the token on the request (`forward`: the
//! filter compares it with the payload and checks its algorithm; the mcpgw filter and the
//! upstream clusters remove it before any upstream) and adds the payload as
//! [`PAYLOAD_HEADER`].
//!
//! The requirement is any of the providers, else `allow_missing_or_failed` (naming the
//! providers is what turns their verified-token caches on): `jwt_authn` refuses nothing
//! itself. A
//! request without a token, or with one that fails (bad signature, unknown key or issuer,
//! expired, not yet valid), reaches the mcpgw filter without the payload header, and the
//! filter answers in MCP's terms: 401 with `WWW-Authenticate: Bearer resource_metadata=…`
//! (which clients follow to the authorization server) and a JSON-RPC error, only for the
//! virtual servers that require a token. `allow_missing` would answer a present-and-invalid
//! token with Envoy's own 401 (no `resource_metadata`, a plain-text body) on every path,
//! servers without `auth` included. The filter treats a token without a payload as
//! invalid, so nothing is let through that `allow_missing` would refuse on a protected
//! server.
//!
//! The listener removes [`PAYLOAD_HEADER`] from every client request before any filter runs
//! (early header mutation), so only `jwt_authn` can set it.
//!
//! The configuration travels over ECDS (resource [`JWT_FILTER`]), not inside the listener,
//! and the listener always has the filter (with no provider and no rule when no issuer has
//! keys: it then passes every request untouched). A listener whose filter chain changes is
//! replaced: Envoy drains the old chain, and every connection opened before the change keeps
//! the old `jwt_authn` until it closes, so a key published at the provider and pushed to the
//! edge would still be unknown on a client's kept-alive connection, and the first token it
//! signs would fail there. An ECDS update applies to the next request on every connection.

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, ExtensionConfigSource,
    TypedExtensionConfig, config_source, data_source,
};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtCacheConfig, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementOrList, RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Empty};
pub use mcpgw_core::auth::PAYLOAD_HEADER;
use mcpgw_core::snapshot::Snapshot;
use prost::Message as _;

/// Name of the `jwt_authn` filter in the listener (and its metadata namespace), and of its
/// ECDS resource.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Verified tokens each Envoy worker keeps (Envoy's default is 100): a token seen again is
/// not verified again until it expires. A few thousand active clients per worker fit.
pub const JWT_CACHE_SIZE: u32 = 4096;
/// Longest token `jwt_authn` caches (bytes); longer ones are verified on every request.
pub const JWT_CACHE_MAX_TOKEN_BYTES: u32 = 8192;

/// The `jwt_authn` filter of the listener: its configuration comes over ECDS
/// ([`jwt_authn`]), so new keys reach every connection, kept-alive ones included.
pub fn jwt_authn_filter() -> HttpFilter {
    HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(http_filter::ConfigType::ConfigDiscovery(
            ExtensionConfigSource {
                config_source: Some(ConfigSource {
                    resource_api_version: ApiVersion::V3 as i32,
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                type_urls: vec![<JwtAuthentication as prost::Name>::type_url()],
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The `jwt_authn` configuration for `snapshot`'s issuers (the ECDS resource [`JWT_FILTER`]):
/// one provider per issuer with keys; none, and no rule, when no issuer has keys (no token
/// could verify: the mcpgw filter then answers every protected request 401).
pub fn jwt_authn(snapshot: &Snapshot) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: JWT_FILTER.into(),
        typed_config: Some(Any {
            type_url: <JwtAuthentication as prost::Name>::type_url(),
            value: jwt_authentication(snapshot).encode_to_vec(),
        }),
    }
}

fn jwt_authentication(snapshot: &Snapshot) -> JwtAuthentication {
    let auth = &snapshot.auth;
    let skew = u32::try_from(auth.clock_skew_seconds).unwrap_or(u32::MAX);
    let providers: std::collections::HashMap<String, JwtProvider> = auth
        .issuers
        .iter()
        .filter_map(|(name, issuer)| {
            let jwks = issuer.jwks.as_ref()?;
            Some((
                name.clone(),
                JwtProvider {
                    issuer: issuer.issuer.clone(),
                    require_expiration: true,
                    // Kept for the filter (algorithm and payload checks, and the relay's
                    // requests back through the listener); stripped before any upstream.
                    forward: true,
                    from_headers: vec![JwtHeader {
                        name: "authorization".into(),
                        value_prefix: "Bearer ".into(),
                    }],
                    forward_payload_header: PAYLOAD_HEADER.into(),
                    clock_skew_seconds: skew,
                    jwt_cache_config: Some(JwtCacheConfig {
                        jwt_cache_size: JWT_CACHE_SIZE,
                        jwt_max_token_size: JWT_CACHE_MAX_TOKEN_BYTES,
                    }),
                    jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(
                        DataSource {
                            specifier: Some(data_source::Specifier::InlineString(
                                jwks.get().to_owned(),
                            )),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            ))
        })
        .collect();
    if providers.is_empty() {
        return JwtAuthentication {
            stat_prefix: "mcpgw".into(),
            ..Default::default()
        };
    }
    // Each provider by name, then `allow_missing_or_failed`: the same outcome as the latter
    // alone, but a provider named in a requirement uses its verified-token cache, and the
    // latter alone (no provider) never does (Envoy's authenticator looks the cache up only
    // for a named provider). Sorted, so the output is deterministic.
    let mut names: Vec<&String> = providers.keys().collect();
    names.sort();
    let requirement = |t| JwtRequirement {
        requires_type: Some(t),
    };
    let any = names
        .into_iter()
        .map(|n| requirement(jwt_requirement::RequiresType::ProviderName(n.clone())))
        .chain([requirement(
            jwt_requirement::RequiresType::AllowMissingOrFailed(Empty {}),
        )])
        .collect();
    JwtAuthentication {
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(requirement(
                jwt_requirement::RequiresType::RequiresAny(JwtRequirementOrList {
                    requirements: any,
                }),
            ))),
        }],
        providers,
        stat_prefix: "mcpgw".into(),
        ..Default::default()
    }
}
