//! The guardrail stage of the exchange: the plugins' pre hooks on a routed request, and the
//! plan for its response's post hooks (which the rewriter runs, see `rewrite.rs`).

use std::rc::Rc;

use super::external::Then;
use super::{Exchange, Host, Step};
use crate::guard::{Call, Effect, Finding, Pre};
use crate::jsonrpc::Message;
use crate::reason::{Reason, Rejection};

/// A replacement of a byte range of the request body (start, end, with).
pub(super) type Edit = (u64, u64, Vec<u8>);

impl Exchange {
    /// Where the request is made, for plugin conditions (no principal until identity).
    pub(super) fn guard_call(&self) -> Call<'_> {
        Call {
            server: self.server.as_deref(),
            principal: None,
        }
    }

    /// Runs the pre hooks on `msg` (a single request about to be routed) and plans the
    /// post hooks of its response. `Err` holds the answer when a plugin blocks it; `Ok`
    /// the rewrite of its arguments a mask asks for, if any.
    pub(super) fn guard_request(
        &mut self,
        msg: &Message,
        then: Then,
        host: &mut impl Host,
    ) -> Result<Option<Edit>, Step> {
        if self.config.guard.is_empty() {
            return Ok(None);
        }
        let config = Rc::clone(&self.config);
        let mut findings = Vec::new();
        let verdict = config
            .guard
            .pre(&self.guard_call(), msg, &self.body, &mut findings);
        self.report(&findings, host);
        match verdict {
            Pre::Block(r) => Err(self.reject(&r, host)),
            Pre::Pass => {
                self.post_plan = config.guard.post_plan(&self.guard_call(), msg);
                match self.ask_externals(msg, None, then, host) {
                    Some(step) => Err(step),
                    None => Ok(None),
                }
            }
            Pre::Edit { start, end, with } => {
                self.post_plan = config.guard.post_plan(&self.guard_call(), msg);
                let edit = (start, end, with);
                match self.ask_externals(msg, Some(&edit), then, host) {
                    Some(step) => Err(step),
                    None => Ok(Some(edit)),
                }
            }
        }
    }

    /// A batch whose calls a plugin would inspect is refused: its messages would be
    /// rewritten and its response checked one by one, which a batch cannot be.
    pub(super) fn guard_batch(
        &mut self,
        messages: &[Message],
        host: &mut impl Host,
    ) -> Option<Step> {
        if self.config.guard.is_empty() {
            return None;
        }
        let config = Rc::clone(&self.config);
        let call = self.guard_call();
        let inspected = messages.iter().any(|m| config.guard.inspects(&call, m));
        inspected.then(|| {
            let r = Rejection::new(
                Reason::BatchNotAllowed,
                None,
                "a batch may not carry calls that guardrail plugins inspect: send them one per request",
            );
            self.reject(&r, host)
        })
    }

    /// Counts (and, for permissive plugins, logs) what the plugins found.
    pub(super) fn report(&self, findings: &[Finding], host: &mut impl Host) {
        for f in findings {
            let name = self.config.guard.plugin_name(f.plugin);
            host.count_plugin(name, f.hook.as_str(), f.effect.as_str());
            if matches!(f.effect, Effect::WouldBlock | Effect::WouldMask) {
                host.warn(&format!(
                    "mcpgw: plugin {name:?} (permissive) at {}: {} ({})",
                    f.hook.as_str(),
                    f.effect.as_str(),
                    f.what
                ));
            }
        }
    }
}
