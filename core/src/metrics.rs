//! Metric names: labels encoded Istio-style in the stat name (`name_label=.=value;.;`),
//! which Envoy's `stats_tags` turn into Prometheus labels, with cardinality bounded
//! against hostile clients.

use std::collections::HashSet;

/// Distinct tool names a worker labels before counting the rest as [`OTHER`].
pub const MAX_TOOL_LABELS: usize = 256;
/// The label value for tools beyond [`MAX_TOOL_LABELS`] and methods not in MCP.
pub const OTHER: &str = "_other";

/// A counter the filter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Requests and notifications seen.
    Requests,
    /// JSON-RPC results seen in responses.
    Responses,
    /// JSON-RPC errors seen in responses.
    ResponseErrors,
    /// Requests the filter answered itself with an error.
    Rejected,
    /// Guardrail plugin findings, by plugin, hook and effect (`blocked`, `masked`,
    /// `would_block`, `would_mask`). Plugin names come from the configuration, so the
    /// label set is the operator's.
    PluginActions,
    /// Requests a limit refused, by limit and kind (`rate`, `concurrency`, `global`).
    /// Limit names come from the configuration.
    Limited,
    /// Checks of global limits by the rate-limit service, by outcome (`ok`, `over_limit`,
    /// `failed`).
    LimitServiceChecks,
    /// Internal failures.
    InternalErrors,
}

impl Counter {
    /// The metric name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Requests => "mcpgw_requests_total",
            Counter::Responses => "mcpgw_responses_total",
            Counter::ResponseErrors => "mcpgw_response_errors_total",
            Counter::Rejected => "mcpgw_rejected_total",
            Counter::PluginActions => "mcpgw_plugin_actions_total",
            Counter::Limited => "mcpgw_limited_total",
            Counter::LimitServiceChecks => "mcpgw_limit_service_checks_total",
            Counter::InternalErrors => "mcpgw_internal_errors_total",
        }
    }
}

/// The histogram of the rate-limit service's latency, in milliseconds.
pub const LIMIT_SERVICE_DURATION: &str = "mcpgw_limit_service_duration_ms";

/// The stat name for `counter` with `labels` (name, value) pairs.
pub fn stat_name(counter: Counter, labels: &[(&str, &str)]) -> String {
    let mut name = String::from(counter.name());
    for (label, value) in labels {
        name.push('_');
        name.push_str(label);
        name.push_str("=.=");
        name.extend(value.chars().map(|c| {
            if c.is_ascii_alphanumeric() || "/_-.@:".contains(c) {
                c
            } else {
                '_'
            }
        }));
        name.push_str(";.;");
    }
    name
}

/// The tool a counted message names, and whether the name is vetted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolLabel<'a> {
    /// No tool (not `tools/call`).
    None,
    /// A name from the configuration (a virtual server's catalog, `tool_routes`,
    /// `denied_tools`): always its own label, and no budget spent.
    Known(&'a str),
    /// A name only the client vouches for: labelled while the budget lasts.
    Unvetted(&'a str),
    /// A name a virtual server's catalog does not have: never its own label.
    Unknown,
}

/// Bounds the set of label values one worker emits.
#[derive(Debug, Default)]
pub struct LabelBudget {
    tools: HashSet<String>,
}

impl LabelBudget {
    /// The label for JSON-RPC method `method`: itself if MCP defines it, else [`OTHER`].
    pub fn method<'a>(&self, method: &'a str) -> &'a str {
        if crate::mcp::method_info(method).is_some() {
            method
        } else {
            OTHER
        }
    }

    /// The label for `tool`: known names as they are, unvetted ones while the budget lasts,
    /// anything else [`OTHER`].
    pub fn label<'a>(&mut self, tool: ToolLabel<'a>) -> &'a str {
        match tool {
            ToolLabel::None => "",
            ToolLabel::Known(name) => name,
            ToolLabel::Unvetted(name) => self.tool(name),
            ToolLabel::Unknown => OTHER,
        }
    }

    /// The label for tool `name`: itself while the budget lasts, else [`OTHER`].
    pub fn tool<'a>(&mut self, name: &'a str) -> &'a str {
        if self.tools.contains(name) {
            return name;
        }
        if self.tools.len() < MAX_TOOL_LABELS && name.len() <= 128 {
            self.tools.insert(name.to_string());
            return name;
        }
        OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_labels_safely() {
        assert_eq!(
            stat_name(
                Counter::Requests,
                &[("mcp_method", "tools/call"), ("mcp_tool", "a;b=.=c d")]
            ),
            "mcpgw_requests_total_mcp_method=.=tools/call;.;_mcp_tool=.=a_b_._c_d;.;"
        );
        assert_eq!(
            stat_name(Counter::InternalErrors, &[]),
            "mcpgw_internal_errors_total"
        );
        assert_eq!(
            stat_name(
                Counter::PluginActions,
                &[
                    ("mcp_plugin", "mask-pii.v2"),
                    ("mcp_hook", "tool_post_invoke"),
                    ("mcp_effect", "masked")
                ]
            ),
            "mcpgw_plugin_actions_total_mcp_plugin=.=mask-pii.v2;.;_mcp_hook=.=tool_post_invoke;.;_mcp_effect=.=masked;.;"
        );
    }

    #[test]
    fn budget_caps_tool_labels() {
        let mut b = LabelBudget::default();
        let names: Vec<String> = (0..MAX_TOOL_LABELS + 5).map(|i| format!("t{i}")).collect();
        let labels: Vec<&str> = names.iter().map(|n| b.tool(n)).collect();
        assert_eq!(labels[0], "t0");
        assert_eq!(
            labels[MAX_TOOL_LABELS - 1],
            format!("t{}", MAX_TOOL_LABELS - 1)
        );
        assert_eq!(labels[MAX_TOOL_LABELS], OTHER);
        assert_eq!(b.tool("t3"), "t3", "known names keep their label");
        assert_eq!(
            b.label(ToolLabel::Known("catalog-tool")),
            "catalog-tool",
            "no budget needed"
        );
        assert_eq!(b.label(ToolLabel::Unvetted("t999")), OTHER);
        assert_eq!(b.label(ToolLabel::Unknown), OTHER);
        assert_eq!(b.label(ToolLabel::None), "");
        assert_eq!(b.method("tools/call"), "tools/call");
        assert_eq!(b.method("evil/123"), OTHER);
    }
}
