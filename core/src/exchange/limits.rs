//! The limits stage of the exchange: a virtual server's request is admitted by its limits
//! ([`crate::limits`]) before it is answered or routed, or refused with 429; the places it
//! holds among calls in flight are released when its stream ends.
//!
//! Local limits decide at once. Global ones are asked of the rate-limit service after the
//! local ones admitted the request: the request waits ([`Step::Check`]) and goes on in
//! [`Exchange::on_check_answer`], where a refusal gives back what the local ones took.

use std::rc::Rc;

use super::{Exchange, GrpcCall, Host, Phase, Step, Tool};
use crate::jsonrpc::{Kind, Message, write_json_string};
use crate::limits::store::Store;
use crate::limits::{Descriptor, Kind as LimitKind, Limited, Subject, ratelimit};
use crate::reason::{Reason, Rejection};
use crate::snapshot::limits::FailureMode;

/// A request waiting for the rate-limit service.
pub(super) struct Checking {
    msg: Box<Message>,
    descriptors: Vec<Descriptor>,
    /// When the call started (milliseconds), for its latency.
    started: u64,
}

/// Who makes a request, once the auth stage knows (`None` today: `anonymous`).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The principal.
    pub principal: &'a str,
    /// Its team, if it has one.
    pub team: Option<&'a str>,
}

/// The host's shared data as the limits' store.
struct Shared<'h, H>(&'h mut H);

impl<H: Host> Store for Shared<'_, H> {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.0.shared_get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.0.shared_set(key, value, cas)
    }
}

impl Exchange {
    /// Admits `msg` (a request to this exchange's virtual server) under the server's
    /// limits, as `caller`; `Some` holds the 429 when a limit refuses it.
    pub(super) fn limit(
        &mut self,
        msg: &Message,
        caller: Option<Caller<'_>>,
        host: &mut impl Host,
    ) -> Option<Step> {
        if msg.kind != Kind::Request || self.config.limits.is_empty() {
            return None;
        }
        let config = Rc::clone(&self.config);
        let server = self.server.as_deref()?;
        // Only names in the server's catalog key a budget: a made-up one is refused later
        // and must not cost shared data.
        let tool = match self.tool_of(msg) {
            Tool::Known(name) => Some(name),
            _ => None,
        };
        let subject = Subject {
            principal: caller.map(|c| c.principal),
            team: caller.and_then(|c| c.team),
            server,
            method: msg.method.as_ref().map_or("", |m| m.as_str()),
            tool: tool.as_deref(),
        };
        let now = host.now_ms();
        match config.limits.admit(&subject, now, &mut Shared(host)) {
            Ok(mut held) => {
                let descriptors = std::mem::take(&mut held.global);
                self.held = held;
                if descriptors.is_empty() {
                    return None;
                }
                let Some(service) = config.limits.service() else {
                    return Some(self.internal_error("a global limit without a service", host));
                };
                let call = GrpcCall {
                    cluster: service.cluster.clone(),
                    service: ratelimit::SERVICE,
                    method: ratelimit::METHOD,
                    message: ratelimit::request(&service.domain, &descriptors),
                    timeout_ms: service.timeout_ms,
                };
                self.phase = Phase::Limiting(Checking {
                    msg: Box::new(msg.clone()),
                    descriptors,
                    started: now,
                });
                Some(Step::Check(call))
            }
            Err(limited) => Some(self.refuse_limited(msg, &limited, host)),
        }
    }

    /// The rate-limit service or an external guardrail answered (`Some`: the response
    /// message of a call that succeeded; `None`: it failed, timed out, or could not be
    /// made).
    pub fn on_check_answer(&mut self, answer: Option<&[u8]>, host: &mut impl Host) -> Step {
        // The same host call carries an external guardrail's answer.
        if matches!(self.phase, Phase::Guarding(_)) {
            return self.on_guard_answer(answer, host);
        }
        let Phase::Limiting(checking) = std::mem::replace(&mut self.phase, Phase::Forwarded) else {
            return Step::Wait;
        };
        let config = Rc::clone(&self.config);
        let now = host.now_ms();
        let took = now.saturating_sub(checking.started);
        let first = checking.descriptors.first();
        let refused = match answer.and_then(ratelimit::answer) {
            None => {
                host.observe_limit_service(took, "failed");
                let deny = config
                    .limits
                    .service()
                    .is_some_and(|s| s.failure_mode == FailureMode::Deny);
                host.warn(&format!(
                    "mcpgw: the rate-limit service did not answer; {}",
                    if deny { "denying" } else { "allowing" }
                ));
                deny.then(|| Limited {
                    name: first.map(|d| d.name.clone()).unwrap_or_default(),
                    kind: LimitKind::Global,
                    retry_after: 1,
                    allows: "the rate-limit service did not answer".to_owned(),
                })
            }
            Some(a) if a.over_limit => {
                host.observe_limit_service(took, "over_limit");
                // The first descriptor over its limit names the refusal.
                let over = a.statuses.iter().position(|(over, _)| *over).unwrap_or(0);
                let d = checking.descriptors.get(over).or(first);
                let reset = a.statuses.get(over).map_or(0, |(_, reset)| *reset);
                Some(Limited {
                    name: d.map(|d| d.name.clone()).unwrap_or_default(),
                    kind: LimitKind::Global,
                    retry_after: reset.max(1),
                    allows: d.map_or_else(String::new, |d| {
                        format!(
                            "{} requests per {} s, over all gateways",
                            d.requests, d.per_seconds
                        )
                    }),
                })
            }
            Some(_) => {
                host.observe_limit_service(took, "ok");
                None
            }
        };
        match refused {
            None => self.serve_admitted(&checking.msg, host),
            Some(limited) => {
                config
                    .limits
                    .release(&mut self.held, now, &mut Shared(host));
                self.refuse_limited(&checking.msg, &limited, host)
            }
        }
    }

    /// The 429 for `msg`, refused by `limited`.
    fn refuse_limited(&mut self, msg: &Message, limited: &Limited, host: &mut impl Host) -> Step {
        host.count_limited(&limited.name, limited.kind.as_str());
        let mut data = Vec::with_capacity(64 + limited.name.len());
        data.extend_from_slice(b"{\"limit\":");
        write_json_string(&mut data, &limited.name);
        data.extend_from_slice(b",\"kind\":");
        write_json_string(&mut data, limited.kind.as_str());
        data.extend_from_slice(
            format!(",\"retryAfterSeconds\":{}}}", limited.retry_after).as_bytes(),
        );
        let mut r = Rejection::new(
            Reason::RateLimited,
            msg.id.clone(),
            format!(
                "limit {:?} exceeded ({}): retry after {} s",
                limited.name, limited.allows, limited.retry_after
            ),
        );
        r.data = String::from_utf8(data).ok();
        let mut step = self.reject(&r, host);
        if let Step::Reply(reply) = &mut step {
            reply
                .headers
                .push(("retry-after", limited.retry_after.to_string()));
        }
        step
    }

    /// The request's stream ended (its response ended, it was reset, or it timed out):
    /// the places it held among calls in flight are released. Idempotent.
    pub fn on_stream_end(&mut self, host: &mut impl Host) {
        if self.held.leases.is_empty() {
            return;
        }
        // The time it was admitted: no host call for the clock at every stream's end.
        let now = self.held.admitted_at();
        let config = Rc::clone(&self.config);
        config.limits.end(&mut self.held, now, &mut Shared(host));
    }
}
