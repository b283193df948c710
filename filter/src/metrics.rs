//! The filter's counters, defined lazily in Envoy and cached by stat name, so a request
//! costs one host call per counter increment.

use mcpgw_core::metrics::{Counter, LIMIT_SERVICE_DURATION, LabelBudget, ToolLabel, stat_name};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::collections::HashMap;

/// Label values → Envoy metric id, plus the label budget of this worker.
#[derive(Default)]
pub struct Metrics {
    /// Keyed by `counter \0 value \0 value`; looked up through `scratch`, so a hit costs
    /// no allocation.
    ids: HashMap<String, u32>,
    scratch: String,
    budget: LabelBudget,
    /// The rate-limit service's latency histogram, once defined.
    limit_service_ms: Option<u32>,
}

impl Metrics {
    fn bump(&mut self, counter: Counter, labels: &[(&str, &str)]) {
        self.scratch.clear();
        self.scratch.push_str(counter.name());
        for (_, value) in labels {
            self.scratch.push('\0');
            self.scratch.push_str(value);
        }
        let id = match self.ids.get(self.scratch.as_str()) {
            Some(id) => *id,
            None => {
                match hostcalls::define_metric(MetricType::Counter, &stat_name(counter, labels)) {
                    Ok(id) => {
                        self.ids.insert(self.scratch.clone(), id);
                        id
                    }
                    Err(status) => {
                        log::warn!("mcpgw: cannot define metric {}: {status:?}", counter.name());
                        return;
                    }
                }
            }
        };
        if let Err(status) = hostcalls::increment_metric(id, 1) {
            log::warn!(
                "mcpgw: cannot increment metric {}: {status:?}",
                counter.name()
            );
        }
    }

    fn labelled(&mut self, counter: Counter, method: &str, tool: ToolLabel<'_>) {
        let method = self.budget.method(method);
        let tool = if method == "tools/call" {
            self.budget.label(tool)
        } else {
            ""
        };
        self.bump(counter, &[("mcp_method", method), ("mcp_tool", tool)]);
    }

    /// A request or notification was seen.
    pub fn request(&mut self, method: &str, tool: ToolLabel<'_>) {
        self.labelled(Counter::Requests, method, tool);
    }

    /// A response message to a request of `method` (and `tool`) was seen.
    pub fn response(&mut self, method: &str, tool: ToolLabel<'_>, error: bool) {
        let counter = if error {
            Counter::ResponseErrors
        } else {
            Counter::Responses
        };
        self.labelled(counter, method, tool);
    }

    /// The filter answered a request itself.
    pub fn rejected(&mut self, reason: &'static str) {
        self.bump(Counter::Rejected, &[("mcp_reason", reason)]);
    }

    /// A guardrail plugin blocked or masked (or, permissive, would have).
    pub fn plugin(&mut self, plugin: &str, hook: &str, effect: &str) {
        self.bump(
            Counter::PluginActions,
            &[
                ("mcp_plugin", plugin),
                ("mcp_hook", hook),
                ("mcp_effect", effect),
            ],
        );
    }

    /// A limit refused a request.
    pub fn limited(&mut self, limit: &str, kind: &str) {
        self.bump(
            Counter::Limited,
            &[("mcp_limit", limit), ("mcp_limit_kind", kind)],
        );
    }

    /// The rate-limit service answered (or failed) after `ms`.
    pub fn limit_service(&mut self, ms: u64, outcome: &str) {
        self.bump(Counter::LimitServiceChecks, &[("mcp_outcome", outcome)]);
        let id = match self.limit_service_ms {
            Some(id) => id,
            None => match hostcalls::define_metric(MetricType::Histogram, LIMIT_SERVICE_DURATION) {
                Ok(id) => *self.limit_service_ms.insert(id),
                Err(status) => {
                    log::warn!("mcpgw: cannot define metric {LIMIT_SERVICE_DURATION}: {status:?}");
                    return;
                }
            },
        };
        if let Err(status) = hostcalls::record_metric(id, ms) {
            log::warn!("mcpgw: cannot record metric {LIMIT_SERVICE_DURATION}: {status:?}");
        }
    }

    /// The filter failed internally.
    pub fn internal_error(&mut self) {
        self.bump(Counter::InternalErrors, &[]);
    }
}
