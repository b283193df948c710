//! The external-guardrail stage of the exchange: after the local plugins' pre hooks passed
//! a request, each `external` plugin that applies is asked in turn
//! ([`crate::guard::external`]): the request waits ([`Step::Check`]) and goes on in
//! [`Exchange::on_check_answer`] with the next plugin, or, when all have answered, the way
//! it was going (routed to its virtual server's upstream, or forwarded on the passthrough
//! path) with the arguments and headers the services' mutations gave it.
//!
//! A deny answers the request with the service's reason; a service that fails (no answer
//! in time, unreachable, an answer that breaks the contract) lets it pass or refuses it by
//! the plugin's failure mode. Permissive plugins are asked too; what they would do is
//! only counted and logged.

use std::rc::Rc;

use super::guard::Edit;
use super::{Exchange, GrpcCall, Header, Host, Phase, Reply, Step};
use crate::edge::Answer;
use crate::guard::external::{self, Broken, CheckRequest, Verdict};
use crate::guard::{Hook, error_data};
use crate::jsonrpc::{Message, error_response_with, write_json_string};
use crate::reason::Reason;
use crate::snapshot::plugins::GuardFailureMode;

/// Where a request goes once the services have passed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Then {
    /// To the upstream of its virtual server that owns what it calls.
    Edge,
    /// On the passthrough path, to `cluster` (the policy's route) if any.
    Passthrough { cluster: Option<String> },
}

/// A request waiting for an external guardrail's verdict.
pub(super) struct Guarding {
    msg: Box<Message>,
    hook: Hook,
    /// The plugin asked now.
    asking: usize,
    /// The plugins to ask after it, last first.
    rest: Vec<usize>,
    /// The arguments as the plugins so far left them (`None`: the request has none).
    args: Option<Vec<u8>>,
    /// The body range the arguments replace: the request's `arguments` (or, if it has
    /// none, an insertion after the `{` of its params).
    span: Option<(u64, u64)>,
    /// Whether the arguments changed.
    changed: bool,
    /// Headers the services added.
    headers: Vec<(String, String)>,
    then: Then,
}

/// How a service failed, for logs.
enum Failure {
    /// No answer (timeout, unreachable, a gRPC error).
    NoAnswer,
    /// An answer that breaks the contract.
    Broken(Broken),
}

impl Failure {
    fn as_str(&self) -> &'static str {
        match self {
            Failure::NoAnswer => "no answer (timeout, unreachable or a gRPC error)",
            Failure::Broken(b) => b.as_str(),
        }
    }
}

impl Exchange {
    /// Asks the `external` plugins that apply to `msg` (which the local pre hooks let
    /// through with `edit`, if they masked its arguments); `None` when none applies.
    pub(super) fn ask_externals(
        &mut self,
        msg: &Message,
        edit: Option<&Edit>,
        then: Then,
        host: &mut impl Host,
    ) -> Option<Step> {
        let config = Rc::clone(&self.config);
        let (post_hook, post) = config.guard.externals(&self.guard_call(), msg, false);
        if !post.is_empty() {
            self.post_external = Some(super::external_post::PostExternals::new(
                post_hook, post, msg,
            ));
        }
        let (hook, mut plugins) = config.guard.externals(&self.guard_call(), msg, true);
        if plugins.is_empty() {
            return None;
        }
        plugins.reverse();
        let asking = plugins.pop()?;
        let (span, args) = match (edit, msg.arguments_span) {
            (Some((start, end, with)), _) => (Some((*start, *end)), Some(with.clone())),
            (None, Some((start, end))) => {
                let bytes = usize::try_from(start)
                    .ok()
                    .zip(usize::try_from(end).ok())
                    .and_then(|(s, e)| self.body.get(s..e))
                    .map(<[u8]>::to_vec);
                (Some((start, end)), bytes)
            }
            (None, None) => (msg.params_open.map(|o| (o + 1, o + 1)), None),
        };
        let guarding = Guarding {
            msg: Box::new(msg.clone()),
            hook,
            asking,
            rest: plugins,
            args,
            span,
            changed: edit.is_some(),
            headers: Vec::new(),
            then,
        };
        Some(self.ask(guarding, host))
    }

    /// Sends `guarding`'s question to the plugin it asks now.
    fn ask(&mut self, guarding: Guarding, host: &mut impl Host) -> Step {
        let config = Rc::clone(&self.config);
        let Some(service) = config.guard.service(guarding.asking) else {
            return self.internal_error("an external plugin without a service", host);
        };
        let msg = &guarding.msg;
        let params = pre_params(msg, guarding.hook, guarding.args.as_deref());
        let id = msg.id.as_ref().map(crate::jsonrpc::Id::as_json);
        let principal = self
            .principal
            .as_deref()
            .map(|p| (p.subject.as_str(), p.teams.as_slice()));
        let message = CheckRequest {
            plugin: config.guard.plugin_name(guarding.asking),
            hook: guarding.hook,
            method: msg.method.as_ref().map_or("", |m| m.as_str()),
            server: self.server.as_deref(),
            name: match guarding.hook {
                Hook::ResourcePreFetch => msg.uri.as_deref(),
                _ => msg.name.as_deref(),
            },
            principal,
            params: &params,
            result: &[],
            request_id: id,
        }
        .encode();
        let call = GrpcCall {
            cluster: service.cluster.clone(),
            service: external::SERVICE,
            method: external::METHOD,
            message,
            timeout_ms: service.timeout_ms,
        };
        self.phase = Phase::Guarding(Box::new(guarding));
        Step::Check(call)
    }

    /// The external guardrail answered (`Some`: the message of a call that succeeded).
    pub(super) fn on_guard_answer(&mut self, answer: Option<&[u8]>, host: &mut impl Host) -> Step {
        let Phase::Guarding(mut g) = std::mem::replace(&mut self.phase, Phase::Forwarded) else {
            return Step::Wait;
        };
        let config = Rc::clone(&self.config);
        let plugin = g.asking;
        let name = config.guard.plugin_name(plugin).to_owned();
        let hook = g.hook;
        let enforce = config.guard.enforcing(plugin);
        let verdict = match answer {
            None => Err(Failure::NoAnswer),
            Some(bytes) => {
                external::decode(bytes, config.gate.route_header()).map_err(Failure::Broken)
            }
        };
        let outcome = verdict.and_then(|v| match v {
            // A mutation of arguments that are not an object breaks the contract.
            Verdict::Mutate {
                params: Some(p), ..
            } if arguments_of(&p).is_err() => Err(Failure::Broken(Broken::NotAnObject)),
            v => Ok(v),
        });
        match outcome {
            Err(failure) => {
                let closed = enforce
                    && config
                        .guard
                        .service(plugin)
                        .is_some_and(|s| s.failure_mode == GuardFailureMode::Closed);
                let effect = if closed {
                    "failed_closed"
                } else {
                    "failed_open"
                };
                host.count_plugin(&name, hook.as_str(), effect);
                host.warn(&format!(
                    "mcpgw: external plugin {name:?} at {}: {}; {}",
                    hook.as_str(),
                    failure.as_str(),
                    if closed { "refusing" } else { "passing" }
                ));
                if closed {
                    let message = format!(
                        "request refused: guardrail plugin {name:?} could not check it (its service failed)"
                    );
                    let data = error_data(&name, hook, "unavailable");
                    let code = crate::jsonrpc::code::INTERNAL_ERROR;
                    return self.refuse_guarded(&g.msg, 503, code, &message, &data, host);
                }
            }
            Ok(Verdict::Pass) => {}
            Ok(Verdict::Deny { reason, code }) if enforce => {
                host.count_plugin(&name, hook.as_str(), "blocked");
                let message = if reason.is_empty() {
                    format!("request denied by plugin {name:?}")
                } else {
                    format!("request denied by plugin {name:?}: {reason}")
                };
                let why = if reason.is_empty() { "denied" } else { &reason };
                let data = error_data(&name, hook, why);
                return self.refuse_guarded(&g.msg, 403, code, &message, &data, host);
            }
            Ok(Verdict::Deny { .. }) => {
                host.count_plugin(&name, hook.as_str(), "would_block");
                host.warn(&format!(
                    "mcpgw: plugin {name:?} (permissive) at {}: would_block (external)",
                    hook.as_str()
                ));
            }
            Ok(Verdict::Mutate {
                params, headers, ..
            }) => {
                // Resource URIs are not rewritten: a resource's mutation adds headers only.
                let args = params
                    .as_deref()
                    .and_then(|p| arguments_of(p).ok().flatten())
                    .filter(|_| hook != Hook::ResourcePreFetch && g.span.is_some());
                if args.is_some() || !headers.is_empty() {
                    let effect = if enforce { "masked" } else { "would_mask" };
                    host.count_plugin(&name, hook.as_str(), effect);
                }
                if enforce {
                    if let Some(new) = args {
                        g.args = Some(new);
                        g.changed = true;
                    }
                    g.headers.extend(headers);
                }
            }
        }
        if let Some(next) = g.rest.pop() {
            g.asking = next;
            return self.ask(*g, host);
        }
        self.go_on_guarded(*g, host)
    }

    /// Every service passed the request: it goes on, changed as they said.
    fn go_on_guarded(&mut self, g: Guarding, host: &mut impl Host) -> Step {
        let edit = match (g.changed, g.span, g.args) {
            (true, Some((start, end)), Some(args)) if g.msg.arguments_span.is_none() => {
                // The request had no arguments: they go first in its params.
                let mut with = Vec::with_capacity(args.len() + 14);
                with.extend_from_slice(b"\"arguments\":");
                with.extend_from_slice(&args);
                with.push(b',');
                Some((start, end, with))
            }
            (true, Some((start, end)), Some(args)) => Some((start, end, args)),
            _ => None,
        };
        self.added_headers = g
            .headers
            .into_iter()
            .map(|(n, v)| (Header::Added(n), Some(v)))
            .collect();
        let msg = g.msg;
        match g.then {
            Then::Passthrough { cluster } => {
                self.forward_passthrough(std::slice::from_ref(&*msg), cluster, edit, host)
            }
            Then::Edge => {
                let config = Rc::clone(&self.config);
                let Some(server) = self.server.clone() else {
                    return self.internal_error("virtual server missing", host);
                };
                let answer = {
                    let visible = self.visibility();
                    let visible = visible.as_ref().map(|f| f as &dyn Fn(&str, &str) -> bool);
                    config.edge.answer_as(&server, &msg, self.era, visible)
                };
                match answer {
                    Some(Answer::Route(to)) => self.route_upstream(&msg, &to, edit, host),
                    _ => self.internal_error("a guarded call lost its route", host),
                }
            }
        }
    }

    /// Answers `msg` with a JSON-RPC error `code` and `message`, HTTP `status`.
    fn refuse_guarded(
        &mut self,
        msg: &Message,
        status: u16,
        code: i64,
        message: &str,
        data: &str,
        host: &mut impl Host,
    ) -> Step {
        self.phase = Phase::Replied;
        host.count_rejected(Reason::PluginBlocked);
        Step::Reply(Reply {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: Some(error_response_with(
                msg.id.as_ref(),
                code,
                message,
                Some(data),
            )),
        })
    }
}

/// The params a pre hook sends: `{"name":…,"arguments":…}` (tools, prompts) or
/// `{"uri":…}` (resources).
fn pre_params(msg: &Message, hook: Hook, args: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + args.map_or(0, <[u8]>::len));
    out.push(b'{');
    if hook == Hook::ResourcePreFetch {
        out.extend_from_slice(b"\"uri\":");
        write_json_string(&mut out, msg.uri.as_deref().unwrap_or_default());
    } else {
        out.extend_from_slice(b"\"name\":");
        write_json_string(&mut out, msg.name.as_deref().unwrap_or_default());
        if let Some(args) = args {
            out.extend_from_slice(b",\"arguments\":");
            out.extend_from_slice(args);
        }
    }
    out.push(b'}');
    out
}

/// The `arguments` of mutated params (a JSON object, as [`external::decode`] checked):
/// `Ok(None)` when they have none, `Err` when they are not an object.
fn arguments_of(params: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(params).map_err(|_| ())?;
    match value.get("arguments") {
        None => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => serde_json::to_vec(v).map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}
