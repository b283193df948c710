//! The Envoy configurations under comparison.

use std::fmt;
use std::str::FromStr;

/// One Envoy setup in front of the same upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Envoy with only the router: the baseline every ratio is relative to.
    Plain,
    /// Envoy's native C++ `envoy.filters.http.mcp` (parsing, early termination, routing on
    /// the tool name through dynamic metadata).
    Native,
    /// A wasm filter that only buffers the body and sets one header: the wasm floor.
    Floor,
    /// The mcpgw wasm filter with parsing, a tool route and metrics: the realistic path.
    Mcpgw,
}

impl Variant {
    /// Every variant, in table order.
    pub const ALL: [Variant; 4] = [
        Variant::Plain,
        Variant::Native,
        Variant::Floor,
        Variant::Mcpgw,
    ];

    /// Short name used in settings and tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Native => "native",
            Variant::Floor => "floor",
            Variant::Mcpgw => "mcpgw",
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
        write!(
            f,
            "unknown variant `{}` (expected plain, native, floor or mcpgw)",
            self.0
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
    }
}
