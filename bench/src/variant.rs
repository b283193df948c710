//! The Envoy configurations and requests under comparison.

use crate::catalog;
use crate::load::{self, Workload};
use std::fmt;
use std::str::FromStr;

/// One Envoy setup in front of the same upstream, and the request its client repeats.
///
/// The first four send the same 1 KB `tools/call` to `/mcp` and compare filters against
/// plain Envoy. The last four compare a virtual server served by the mcpgw filter with
/// plain Envoy forwarding the same request to the upstream: `tools/list` answered at the
/// edge, and a namespaced `tools/call` routed (and renamed) by the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Envoy with only the router: the baseline the filters are compared with.
    Plain,
    /// Envoy's native C++ `envoy.filters.http.mcp` (parsing, early termination, routing on
    /// the tool name through dynamic metadata).
    Native,
    /// A wasm filter that only buffers the body and sets one header: the wasm floor.
    Floor,
    /// The mcpgw wasm filter with parsing, a tool route and metrics: the realistic path.
    Mcpgw,
    /// Plain Envoy forwarding `tools/list` to the upstream, which answers the 100-tool page.
    PlainList,
    /// The mcpgw filter answering `tools/list` of a virtual server from its snapshot.
    EdgeList,
    /// The mcpgw filter (as in `mcpgw`) in front of the upstream's `tools/list`: the
    /// 100-tool page is observed on its way back, for the result counter.
    McpgwList,
    /// Plain Envoy forwarding the 1 KB `tools/call` (the `plain` setup, its own Envoy).
    PlainCall,
    /// The mcpgw filter routing the 1 KB `tools/call` of a virtual server's namespaced tool
    /// to the upstream, with `:path` and the tool name rewritten.
    EdgeCall,
    /// Plain Envoy forwarding the 1 KB `tools/call` of MCP 2026-07-28 (envelope in `_meta`,
    /// `Mcp-Method`/`Mcp-Name` headers).
    PlainCallModern,
    /// The mcpgw filter routing that 2026-07-28 call of the virtual server's namespaced tool
    /// to a 2026-era upstream: headers checked against the body, name rewritten in both.
    EdgeCallModern,
    /// `edge-call` with the virtual server under local limits that never refuse: a token
    /// bucket per principal and tool and a count of calls in flight per tool, both in
    /// shared data (the cost of the limits stage).
    LimitLocal,
    /// `limit-local` with only its token bucket (no limit on calls in flight): the rate's
    /// share of the limits stage.
    LimitLocalRate,
    /// `limit-local` with only its limit on calls in flight (no rate): the share of a place
    /// taken at the call and given back at its end.
    LimitLocalFlight,
    /// `edge-call` on a protected virtual server: Envoy's `jwt_authn` verifies the client's
    /// token (cached after the first request), the filter checks its claims and decides with
    /// ten rules.
    EdgeCallAuth,
    /// `edge-call-auth` with a token `jwt_authn` has not seen (or has evicted) on every
    /// request: its RS256 signature verified each time, as for clients that each send their
    /// token once.
    EdgeCallAuthFresh,
    /// `edge-call` with the PII plugin (every detector, masking) on the call's arguments
    /// and its result.
    EdgeCallPii,
    /// `edge-call` with the regex plugin (two search-and-replace rules) on the call's
    /// arguments and its result.
    EdgeCallRegex,
    /// `edge-call` under the full policy set of issue 14's benchmark: identity as in
    /// `edge-call-auth`, the local limits of `limit-local`, PII and regex on the call and
    /// its result.
    EdgeCallFull,
    /// `edge-call` with the client's token on every request and nothing reading it: the
    /// cost of the token's bytes through Envoy and the filter (which removes it).
    EdgeCallToken,
    /// `edge-call` as the generated listener runs it when no issuer has keys.
    EdgeCallEmptyJwt,
    /// `edge-call-token` with Envoy's `jwt_authn` verifying the token (cached) and adding the
    /// payload header, on a virtual server without `auth`: `jwt_authn`'s share.
    EdgeCallJwt,
    /// `edge-call-auth` with one allow rule that reads nothing of the call: the filter's
    /// identity stage without the ten rules.
    EdgeCallAuthOneRule,
}

impl Variant {
    /// Every variant, in table order.
    pub const ALL: [Variant; 23] = [
        Variant::Plain,
        Variant::Native,
        Variant::Floor,
        Variant::Mcpgw,
        Variant::PlainList,
        Variant::EdgeList,
        Variant::McpgwList,
        Variant::PlainCall,
        Variant::EdgeCall,
        Variant::PlainCallModern,
        Variant::EdgeCallModern,
        Variant::LimitLocal,
        Variant::LimitLocalRate,
        Variant::LimitLocalFlight,
        Variant::EdgeCallAuth,
        Variant::EdgeCallAuthFresh,
        Variant::EdgeCallPii,
        Variant::EdgeCallRegex,
        Variant::EdgeCallFull,
        Variant::EdgeCallToken,
        Variant::EdgeCallEmptyJwt,
        Variant::EdgeCallJwt,
        Variant::EdgeCallAuthOneRule,
    ];

    /// Short name used in settings and tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Native => "native",
            Variant::Floor => "floor",
            Variant::Mcpgw => "mcpgw",
            Variant::PlainList => "plain-list",
            Variant::EdgeList => "edge-list",
            Variant::McpgwList => "mcpgw-list",
            Variant::PlainCall => "plain-call",
            Variant::EdgeCall => "edge-call",
            Variant::PlainCallModern => "plain-call-2026",
            Variant::EdgeCallModern => "edge-call-2026",
            Variant::LimitLocal => "limit-local",
            Variant::LimitLocalRate => "limit-local-rate",
            Variant::LimitLocalFlight => "limit-local-flight",
            Variant::EdgeCallAuth => "edge-call-auth",
            Variant::EdgeCallAuthFresh => "edge-call-auth-fresh",
            Variant::EdgeCallPii => "edge-call-pii",
            Variant::EdgeCallRegex => "edge-call-regex",
            Variant::EdgeCallFull => "edge-call-full",
            Variant::EdgeCallToken => "edge-call-token",
            Variant::EdgeCallEmptyJwt => "edge-call-empty-jwt",
            Variant::EdgeCallJwt => "edge-call-jwt",
            Variant::EdgeCallAuthOneRule => "edge-call-auth-1",
        }
    }

    /// One line on what this variant runs, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Variant::Plain => "Envoy, router only",
            Variant::Native => {
                "native `envoy.filters.http.mcp`: REJECT_NO_MCP, early_terminate_when_routable, \
                 clear_route_cache, route on `params.name` dynamic metadata"
            }
            Variant::Floor => {
                "wasm floor: buffers the body, reads it once, sets one header; route on the header"
            }
            Variant::Mcpgw => {
                "mcpgw wasm filter: MCP validation + parsing (early termination), `tool_routes` → \
                 `x-mcpgw-cluster` header → `cluster_header` route, metrics on"
            }
            Variant::PlainList => {
                "Envoy, router only, forwarding `tools/list` to `/mcp`; the upstream answers the \
                 100-tool page"
            }
            Variant::EdgeList => {
                "mcpgw wasm filter with a snapshot holding virtual server `bench` (100 tools, page \
                 size 100): `tools/list` at `/servers/bench/mcp` answered by the filter, no upstream \
                 request"
            }
            Variant::McpgwList => {
                "mcpgw wasm filter as in `mcpgw`, forwarding `tools/list` to `/mcp` on the default \
                 route (not a routed tool) and observing the 100-tool page it answers: the cost of \
                 reading a large response"
            }
            Variant::PlainCall => {
                "Envoy, router only, forwarding the 1 KB `tools/call` of `echo` to `/mcp` (the \
                 `plain` setup in its own Envoy, measured as edge-call's baseline)"
            }
            Variant::EdgeCall => {
                "mcpgw wasm filter, same snapshot: `tools/call` of `bench__echo` at \
                 `/servers/bench/mcp`, whole body parsed, name rewritten to `echo`, `:path` to \
                 `/mcp`, `x-mcpgw-cluster` header → `cluster_header` route, metrics on"
            }
            Variant::PlainCallModern => {
                "Envoy, router only, forwarding the 1 KB MCP 2026-07-28 `tools/call` of `echo` \
                 (envelope in `_meta`, `Mcp-Method`/`Mcp-Name` headers) to `/mcp`"
            }
            Variant::LimitLocal => {
                "mcpgw wasm filter as in `edge-call`, the virtual server under local limits that \
                 never refuse (1,000,000 calls per second per principal and tool, 1,000,000 in \
                 flight per tool): two compare-and-swap updates of shared data per call and one \
                 at its end"
            }
            Variant::LimitLocalRate => {
                "`limit-local` with only its rate (1,000,000 calls per second per principal and \
                 tool): one compare-and-swap update of shared data per call"
            }
            Variant::LimitLocalFlight => {
                "`limit-local` with only its limit on calls in flight (1,000,000 per tool): one \
                 compare-and-swap update of shared data per call and one at its end"
            }
            Variant::EdgeCallModern => {
                "mcpgw wasm filter, the snapshot's upstream speaking 2026-07-28: that era's \
                 `tools/call` of `bench__echo` at `/servers/bench/mcp`, envelope read, \
                 `MCP-Protocol-Version`/`Mcp-Method`/`Mcp-Name` checked against the body, name \
                 rewritten to `echo` in the body and `Mcp-Name`, routed as `edge-call`"
            }
            Variant::EdgeCallAuth => {
                "`edge-call` with identity: `jwt_authn` (RS256, JWKS inline, verified-token \
                 cache) before the filter, the same token on every request; the filter checks \
                 issuer, audience, expiry, revocation and algorithm, then the permission and \
                 ten rules (arguments parsed for the deny rules)"
            }
            Variant::EdgeCallAuthFresh => {
                "`edge-call-auth` with a token `jwt_authn` has not cached on every request \
                 (5,000 distinct tokens in turn, more than its 4,096-token cache): an RS256 \
                 verification per request"
            }
            Variant::EdgeCallPii => {
                "`edge-call` with the PII plugin (every detector: emails, phones, SSNs, cards \
                 with Luhn, IBANs with mod-97, IPs, AWS and generic keys, private keys, JWTs; \
                 masking) on `tool_pre_invoke` and `tool_post_invoke`"
            }
            Variant::EdgeCallRegex => {
                "`edge-call` with the regex plugin (two search-and-replace rules) on \
                 `tool_pre_invoke` and `tool_post_invoke`"
            }
            Variant::EdgeCallFull => {
                "`edge-call` under the full policy set: identity as in `edge-call-auth` (cached \
                 JWT, ten rules), local limits as in `limit-local`, PII and regex on the call \
                 and its result"
            }
            Variant::EdgeCallToken => {
                "`edge-call` with the client's `Authorization: Bearer` token on every request, \
                 no `jwt_authn` and no `auth`: the token's bytes through Envoy, the filter \
                 removing it before the upstream"
            }
            Variant::EdgeCallEmptyJwt => {
                "`edge-call` as the generated listener runs it when no issuer has keys: an \
                 empty `jwt_authn` (no provider, no rule) before the filter and the early \
                 header mutation that removes the payload header"
            }
            Variant::EdgeCallJwt => {
                "`edge-call-token` with `jwt_authn` as in `edge-call-auth` (cached token, \
                 payload header added) and a virtual server without `auth`: `jwt_authn`'s share"
            }
            Variant::EdgeCallAuthOneRule => {
                "`edge-call-auth` with one allow rule that reads neither the arguments nor the \
                 claims: the filter's identity stage without the ten rules"
            }
        }
    }

    /// The variant whose requests/s this one's ratio is taken to: plain Envoy sending the
    /// same request (a baseline is its own).
    pub fn baseline(self) -> Variant {
        match self {
            Variant::Plain | Variant::Native | Variant::Floor | Variant::Mcpgw => Variant::Plain,
            Variant::PlainList | Variant::EdgeList | Variant::McpgwList => Variant::PlainList,
            Variant::PlainCall
            | Variant::EdgeCall
            | Variant::LimitLocal
            | Variant::LimitLocalRate
            | Variant::LimitLocalFlight
            | Variant::EdgeCallAuth
            | Variant::EdgeCallAuthFresh
            | Variant::EdgeCallPii
            | Variant::EdgeCallRegex
            | Variant::EdgeCallFull
            | Variant::EdgeCallToken
            | Variant::EdgeCallEmptyJwt
            | Variant::EdgeCallJwt
            | Variant::EdgeCallAuthOneRule => Variant::PlainCall,
            Variant::PlainCallModern | Variant::EdgeCallModern => Variant::PlainCallModern,
        }
    }

    /// Whether this variant belongs to the edge comparison (a virtual server vs forwarding).
    pub fn is_edge_comparison(self) -> bool {
        self.baseline() != Variant::Plain
    }

    /// Whether Envoy runs the mcpgw filter (and so counts `mcpgw_requests_total`).
    pub fn runs_mcpgw(self) -> bool {
        matches!(
            self,
            Variant::Mcpgw
                | Variant::EdgeList
                | Variant::McpgwList
                | Variant::EdgeCall
                | Variant::EdgeCallModern
                | Variant::LimitLocal
                | Variant::LimitLocalRate
                | Variant::LimitLocalFlight
                | Variant::EdgeCallAuth
                | Variant::EdgeCallAuthFresh
                | Variant::EdgeCallPii
                | Variant::EdgeCallRegex
                | Variant::EdgeCallFull
                | Variant::EdgeCallToken
                | Variant::EdgeCallEmptyJwt
                | Variant::EdgeCallJwt
                | Variant::EdgeCallAuthOneRule
        )
    }

    /// Whether the client sends a bearer token (made by [`crate::identity::prepare`]).
    pub fn sends_token(self) -> bool {
        matches!(
            self,
            Variant::EdgeCallAuth
                | Variant::EdgeCallAuthFresh
                | Variant::EdgeCallFull
                | Variant::EdgeCallToken
                | Variant::EdgeCallJwt
                | Variant::EdgeCallAuthOneRule
        )
    }

    /// Whether Envoy runs `jwt_authn` before the filter.
    pub fn runs_jwt_authn(self) -> bool {
        self.sends_token() && self != Variant::EdgeCallToken
    }

    /// Whether the client sends `tools/list` (otherwise the 1 KB `tools/call`).
    pub fn lists(self) -> bool {
        matches!(
            self,
            Variant::PlainList | Variant::EdgeList | Variant::McpgwList
        )
    }

    /// Whether requests reach the upstream at all: every variant's but `edge-list`'s.
    pub fn reaches_upstream(self) -> bool {
        self != Variant::EdgeList
    }

    /// The request this variant's client repeats.
    pub fn workload(self) -> Workload {
        match self {
            Variant::PlainList | Variant::McpgwList => {
                Workload::new(load::MCP_PATH, catalog::tools_list_body())
            }
            Variant::EdgeList => Workload::new(catalog::ENDPOINT, catalog::tools_list_body()),
            Variant::EdgeCall
            | Variant::EdgeCallEmptyJwt
            | Variant::LimitLocal
            | Variant::LimitLocalRate
            | Variant::LimitLocalFlight
            | Variant::EdgeCallPii
            | Variant::EdgeCallRegex => Workload::new(
                catalog::ENDPOINT,
                load::tools_call_body(catalog::NAMESPACED_CALLED_TOOL),
            ),
            Variant::EdgeCallAuth
            | Variant::EdgeCallFull
            | Variant::EdgeCallToken
            | Variant::EdgeCallJwt
            | Variant::EdgeCallAuthOneRule => Workload::new(
                catalog::ENDPOINT,
                load::tools_call_body(catalog::NAMESPACED_CALLED_TOOL),
            )
            .authorized(crate::identity::fixture().map(|f| f.authorization.as_str())),
            Variant::EdgeCallAuthFresh => Workload::new(
                catalog::ENDPOINT,
                load::tools_call_body(catalog::NAMESPACED_CALLED_TOOL),
            )
            .authorized_in_turn(crate::identity::fixture().map(|f| f.fresh.as_slice())),
            Variant::PlainCallModern => Workload::modern_call(
                load::MCP_PATH,
                catalog::CALLED_TOOL,
                load::modern_tools_call_body(catalog::CALLED_TOOL),
            ),
            Variant::EdgeCallModern => Workload::modern_call(
                catalog::ENDPOINT,
                catalog::NAMESPACED_CALLED_TOOL,
                load::modern_tools_call_body(catalog::NAMESPACED_CALLED_TOOL),
            ),
            Variant::Plain
            | Variant::Native
            | Variant::Floor
            | Variant::Mcpgw
            | Variant::PlainCall => {
                Workload::new(load::MCP_PATH, load::tools_call_body(catalog::CALLED_TOOL))
            }
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A variant name that is not one of [`Variant::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariant(pub String);

impl fmt::Display for UnknownVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
        write!(
            f,
            "unknown variant `{}` (expected one of {})",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownVariant {}

impl FromStr for Variant {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s.trim())
            .ok_or_else(|| UnknownVariant(s.trim().to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>(), Ok(v));
        }
        assert_eq!(
            "nginx".parse::<Variant>(),
            Err(UnknownVariant("nginx".into()))
        );
        assert!(UnknownVariant("x".into()).to_string().contains("edge-list"));
    }

    #[test]
    fn each_variant_is_compared_with_plain_envoy_sending_the_same_request() {
        for v in Variant::ALL {
            let base = v.baseline();
            assert_eq!(base.baseline(), base, "{v}: a baseline is its own");
            assert!(!base.runs_mcpgw(), "{v}: the baseline is plain Envoy");
            assert_eq!(v.lists(), base.lists(), "{v}: same method as its baseline");
            assert_eq!(
                v.workload().body.len(),
                base.workload().body.len(),
                "{v}: same body size as its baseline"
            );
        }
        assert!(!Variant::Mcpgw.is_edge_comparison());
        assert!(Variant::EdgeCall.is_edge_comparison());
    }

    #[test]
    fn edge_variants_address_the_virtual_server() {
        for v in Variant::ALL {
            let path = v.workload().path;
            let at_edge = matches!(
                v,
                Variant::EdgeList
                    | Variant::EdgeCall
                    | Variant::EdgeCallModern
                    | Variant::LimitLocal
                    | Variant::LimitLocalRate
                    | Variant::LimitLocalFlight
                    | Variant::EdgeCallAuth
                    | Variant::EdgeCallAuthFresh
                    | Variant::EdgeCallPii
                    | Variant::EdgeCallRegex
                    | Variant::EdgeCallFull
                    | Variant::EdgeCallToken
                    | Variant::EdgeCallEmptyJwt
                    | Variant::EdgeCallJwt
                    | Variant::EdgeCallAuthOneRule
            );
            assert_eq!(path == catalog::ENDPOINT, at_edge, "{v}: {path}");
        }
        let call = Variant::EdgeCall.workload().body;
        assert!(
            std::str::from_utf8(&call)
                .unwrap()
                .contains(r#""params":{"name":"bench__echo","#)
        );
        assert!(!Variant::EdgeList.reaches_upstream());
        assert!(Variant::PlainList.reaches_upstream());
    }
}
