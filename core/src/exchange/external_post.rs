//! External guardrails on responses: the `*_post_*` hooks of `external` plugins.
//!
//! A service cannot be asked from inside a body callback and answered in the same one, so
//! the result of a request an `external` post hook applies to is held
//! ([`Exchange::holds_response`], [`Exchange::on_held_response_body`]) while the exchange
//! collects what the other changes (local post hooks, bridging) make of the response. When
//! the response ends, its result goes to each service in turn
//! ([`Exchange::on_response_check_answer`]); what they leave takes its place.
//!
//! A JSON body is held whole. An event stream is held from its result event on: every
//! complete event before it (progress, log messages, and the server's own requests, which
//! the client must answer before the call can finish) goes to the client as soon as it is
//! complete ([`Held::Pass`]); the result event, and anything after it, waits for the
//! services. A result larger than [`MAX_HELD_BYTES`] is not checked (the failure mode
//! decides).

use std::rc::Rc;

use super::{Exchange, GrpcCall, Host};
use crate::guard::external::{self, CheckRequest, Verdict};
use crate::guard::{Hook, error_data};
use crate::jsonrpc::stream::{Body, MessageParser, Options};
use crate::jsonrpc::{Id, Kind, Message, code, error_response_with};
use crate::snapshot::plugins::GuardFailureMode;

/// Most response bytes held for external post hooks.
pub const MAX_HELD_BYTES: usize = super::rewrite::MAX_EVENT_BYTES;

/// What the filter does with a held response.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// Keep buffering (return `Pause` from the body callback).
    Hold,
    /// Make this call and keep holding; its answer goes to
    /// [`Exchange::on_response_check_answer`].
    Check(GrpcCall),
    /// Replace the whole buffered body with this and let it go.
    Release(Vec<u8>),
    /// Replace what Envoy buffered with this and let it go now (possibly nothing); the
    /// rest of the response stays held in the exchange. Only from a body callback of an
    /// event stream, before the response ends.
    Pass(Vec<u8>),
}

/// The response side of the `external` plugins that apply to a request.
pub(super) struct PostExternals {
    pub(super) hook: Hook,
    /// Plugins still to ask, last first.
    pub(super) rest: Vec<usize>,
    /// The plugin asked now.
    asking: Option<usize>,
    /// The body as the other changes left it.
    held: Vec<u8>,
    /// More than [`MAX_HELD_BYTES`] held.
    too_large: bool,
    /// The response is an event stream (`None`: not known yet).
    stream: Option<bool>,
    /// Where the result's message sits in `held`, once found.
    target: Option<Target>,
    /// The request's tool or prompt name, or resource URI.
    name: Option<String>,
    /// The request's id.
    id: Option<Id>,
}

/// The message whose result the services judge.
struct Target {
    /// The message (JSON text).
    message: Vec<u8>,
    /// Where its `result` value lies in `message`.
    result: (usize, usize),
    /// Where the message lies in the held body: the whole body (JSON), or one event.
    span: (usize, usize),
    /// The event's other lines (`id:`, `event:`), kept when it is rebuilt; `None`: JSON.
    event_fields: Option<Vec<u8>>,
}

impl PostExternals {
    pub(super) fn new(hook: Hook, mut plugins: Vec<usize>, msg: &Message) -> PostExternals {
        plugins.reverse();
        let name = match hook {
            Hook::ResourcePostFetch => msg.uri.clone(),
            _ => msg.name.clone(),
        };
        PostExternals {
            hook,
            rest: plugins,
            asking: None,
            held: Vec::new(),
            too_large: false,
            stream: None,
            target: None,
            name,
            id: msg.id.clone(),
        }
    }
}

impl Exchange {
    /// Whether the response is held whole for external post hooks (the filter then calls
    /// [`Exchange::on_held_response_body`] instead of [`Exchange::on_response_body`]).
    pub fn holds_response(&self) -> bool {
        self.post_external.is_some() && matches!(self.phase, super::Phase::Forwarded)
    }

    /// Whether a service is being asked about the held response (its answer goes to
    /// [`Exchange::on_response_check_answer`], not [`Exchange::on_check_answer`]).
    pub fn checks_response(&self) -> bool {
        self.post_external
            .as_ref()
            .is_some_and(|p| p.asking.is_some())
    }

    /// A chunk of a held response.
    pub fn on_held_response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        host: &mut impl Host,
    ) -> Held {
        let out = self.on_response_body(chunk, end_of_stream, host);
        let Some(post) = self.post_external.as_mut() else {
            return Held::Release(out.unwrap_or_else(|| chunk.to_vec()));
        };
        let part = out.as_deref().unwrap_or(chunk);
        // Envoy buffers as much as this (its buffer limit bounds both); past
        // `MAX_HELD_BYTES` the result is not sent to the services, but it is kept to be
        // let go.
        post.held.extend_from_slice(part);
        if post.stream.is_none() {
            post.stream = post
                .held
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .map(|b| *b != b'{' && *b != b'[');
        }
        if post.stream == Some(true) && !end_of_stream {
            // Every complete event before the result goes now.
            let cut = releasable(&post.held);
            let pass: Vec<u8> = post.held.drain(..cut).collect();
            post.too_large |= post.held.len() > MAX_HELD_BYTES;
            return Held::Pass(pass);
        }
        post.too_large |= post.held.len() > MAX_HELD_BYTES;
        if !end_of_stream {
            return Held::Hold;
        }
        if post.too_large {
            return self.unchecked_response(host);
        }
        let held = std::mem::take(&mut post.held);
        post.target = find_result(&held);
        post.held = held;
        if post.target.is_none() {
            // No result (an error response, or nothing): nothing to judge.
            return self.release(host);
        }
        self.ask_next_post(host)
    }

    /// The service asked about the held response answered (`Some`: a call's message).
    pub fn on_response_check_answer(
        &mut self,
        answer: Option<&[u8]>,
        host: &mut impl Host,
    ) -> Held {
        let config = Rc::clone(&self.config);
        let Some(post) = self.post_external.as_mut() else {
            return Held::Release(Vec::new());
        };
        let Some(plugin) = post.asking.take() else {
            return Held::Hold;
        };
        let hook = post.hook;
        let name = config.guard.plugin_name(plugin).to_owned();
        let enforce = config.guard.enforcing(plugin);
        let verdict = match answer {
            None => Err("no answer (timeout, unreachable or a gRPC error)"),
            Some(bytes) => external::decode(bytes, config.gate.route_header())
                .map_err(external::Broken::as_str),
        };
        let Some(target) = post.target.as_mut() else {
            return self.release(host);
        };
        match verdict {
            Err(why) => {
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
                    "mcpgw: external plugin {name:?} at {}: {why}; {}",
                    hook.as_str(),
                    if closed {
                        "refusing the result"
                    } else {
                        "passing"
                    }
                ));
                if closed {
                    let message = format!(
                        "result withheld: guardrail plugin {name:?} could not check it (its service failed)"
                    );
                    let data = error_data(&name, hook, "unavailable");
                    return self.replace_with_error(code::INTERNAL_ERROR, &message, &data, host);
                }
            }
            Ok(Verdict::Pass) => {}
            Ok(Verdict::Deny { reason, code }) if enforce => {
                host.count_plugin(&name, hook.as_str(), "blocked");
                let message = if reason.is_empty() {
                    format!("result blocked by plugin {name:?}")
                } else {
                    format!("result blocked by plugin {name:?}: {reason}")
                };
                let why = if reason.is_empty() { "denied" } else { &reason };
                let data = error_data(&name, hook, why);
                return self.replace_with_error(code, &message, &data, host);
            }
            Ok(Verdict::Deny { .. }) => host.count_plugin(&name, hook.as_str(), "would_block"),
            Ok(Verdict::Mutate { result: None, .. }) => {}
            Ok(Verdict::Mutate {
                result: Some(new), ..
            }) => {
                host.count_plugin(
                    &name,
                    hook.as_str(),
                    if enforce { "masked" } else { "would_mask" },
                );
                if enforce {
                    let (start, end) = target.result;
                    let mut message = Vec::with_capacity(target.message.len() + new.len());
                    message.extend_from_slice(target.message.get(..start).unwrap_or_default());
                    let at = message.len();
                    message.extend_from_slice(&new);
                    target.result = (at, at + new.len());
                    message.extend_from_slice(target.message.get(end..).unwrap_or_default());
                    target.message = message;
                }
            }
        }
        self.ask_next_post(host)
    }

    /// Asks the next service about the result, or releases the body when none is left.
    fn ask_next_post(&mut self, host: &mut impl Host) -> Held {
        let config = Rc::clone(&self.config);
        let method = self
            .labels
            .as_ref()
            .map(|(m, _)| m.as_str().to_owned())
            .unwrap_or_default();
        let principal = self
            .principal
            .as_deref()
            .map(|p| (p.subject.as_str(), p.teams.as_slice()));
        let server = self.server.clone();
        let Some(post) = self.post_external.as_mut() else {
            return Held::Release(Vec::new());
        };
        let Some(plugin) = post.rest.pop() else {
            return self.release(host);
        };
        let (Some(service), Some(target)) = (config.guard.service(plugin), post.target.as_ref())
        else {
            return self.release(host);
        };
        let result = target
            .message
            .get(target.result.0..target.result.1)
            .unwrap_or_default();
        let request_id = post.id.as_ref().map(Id::as_json);
        let message = CheckRequest {
            plugin: config.guard.plugin_name(plugin),
            hook: post.hook,
            method: &method,
            server: server.as_deref(),
            name: post.name.as_deref(),
            principal,
            params: &[],
            result,
            request_id,
        }
        .encode();
        post.asking = Some(plugin);
        Held::Check(GrpcCall {
            cluster: service.cluster.clone(),
            service: external::SERVICE,
            method: external::METHOD,
            message,
            timeout_ms: service.timeout_ms,
        })
    }

    /// The held body, with the judged message as the services left it.
    fn release(&mut self, _host: &mut impl Host) -> Held {
        let Some(post) = self.post_external.take() else {
            return Held::Release(Vec::new());
        };
        let Some(target) = post.target else {
            return Held::Release(post.held);
        };
        Held::Release(splice_message(&post.held, &target, &target.message))
    }

    /// The held body with the judged message replaced by a JSON-RPC error.
    fn replace_with_error(
        &mut self,
        code: i64,
        message: &str,
        data: &str,
        host: &mut impl Host,
    ) -> Held {
        let Some(post) = self.post_external.take() else {
            return Held::Release(Vec::new());
        };
        let error = error_response_with(post.id.as_ref(), code, message, Some(data));
        host.count_rejected(crate::reason::Reason::PluginBlocked);
        match &post.target {
            Some(target) => Held::Release(splice_message(&post.held, target, &error)),
            None => Held::Release(error),
        }
    }

    /// A response too large to check: passed, or replaced by an error when a plugin that
    /// applies enforces and fails closed.
    fn unchecked_response(&mut self, host: &mut impl Host) -> Held {
        let config = Rc::clone(&self.config);
        let Some(post) = self.post_external.as_ref() else {
            return Held::Release(Vec::new());
        };
        let hook = post.hook;
        let closed = post.rest.iter().copied().find(|&i| {
            config.guard.enforcing(i)
                && config
                    .guard
                    .service(i)
                    .is_some_and(|s| s.failure_mode == GuardFailureMode::Closed)
        });
        for &i in &post.rest {
            let effect = if Some(i) == closed {
                "failed_closed"
            } else {
                "failed_open"
            };
            host.count_plugin(config.guard.plugin_name(i), hook.as_str(), effect);
        }
        match closed {
            Some(i) => {
                let name = config.guard.plugin_name(i).to_owned();
                let message = format!(
                    "result withheld: larger than {MAX_HELD_BYTES} bytes, plugin {name:?} could not check it"
                );
                let data = error_data(&name, hook, "too_large");
                let id = post.id.clone();
                let stream = post.stream == Some(true);
                self.post_external = None;
                let error =
                    error_response_with(id.as_ref(), code::FORBIDDEN, &message, Some(&data));
                host.count_rejected(crate::reason::Reason::PluginBlocked);
                if stream {
                    // The client reads events (and may have read some already): the error
                    // is the stream's last one.
                    let mut event = Vec::with_capacity(error.len() + 32);
                    push_event(&mut event, b"event: message\n", &error);
                    return Held::Release(event);
                }
                // The client's parser sees one JSON error however the response began.
                Held::Release(error)
            }
            None => self.release(host),
        }
    }
}

/// `held` with `target`'s message replaced by `message`.
fn splice_message(held: &[u8], target: &Target, message: &[u8]) -> Vec<u8> {
    let (start, end) = target.span;
    let mut out = Vec::with_capacity(held.len() + message.len());
    out.extend_from_slice(held.get(..start).unwrap_or_default());
    match &target.event_fields {
        None => out.extend_from_slice(message),
        Some(fields) => push_event(&mut out, fields, message),
    }
    out.extend_from_slice(held.get(end..).unwrap_or_default());
    out
}

/// Appends an event of `fields` (lines, each ending in `\n`) whose data is `message`.
fn push_event(out: &mut Vec<u8>, fields: &[u8], message: &[u8]) {
    out.extend_from_slice(fields);
    // One `data:` line per line of the message: JSON has line breaks only as whitespace
    // between tokens, never inside a string.
    for line in message.split(|b| *b == b'\n' || *b == b'\r') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// How many leading bytes of a held event stream may go to the client now: the complete
/// events before the first one whose data is a result.
fn releasable(held: &[u8]) -> usize {
    let mut cut = 0;
    for event in events(held) {
        if result_of(&event.data).is_some() {
            break;
        }
        cut = event.span.1;
    }
    cut
}

/// The result message in a held body: the body itself (JSON), or the last event of an
/// event stream whose data is a result.
fn find_result(held: &[u8]) -> Option<Target> {
    let start = held.iter().position(|b| !b.is_ascii_whitespace())?;
    if held.get(start) == Some(&b'{') {
        let (message, result) = result_of(held)?;
        return Some(Target {
            message,
            result,
            span: (0, held.len()),
            event_fields: None,
        });
    }
    let mut found = None;
    for event in events(held) {
        if let Some((message, result)) = result_of(&event.data) {
            found = Some(Target {
                message,
                result,
                span: event.span,
                event_fields: Some(event.fields),
            });
        }
    }
    found
}

/// A result message (`data` is one JSON-RPC message): its text and its result's span.
fn result_of(data: &[u8]) -> Option<(Vec<u8>, (usize, usize))> {
    let mut parser = MessageParser::new(Options {
        reject_duplicate_keys: true,
        ..Options::default()
    });
    let msg = match parser.feed(data).and_then(|_| parser.finish()) {
        Ok(Body::Single(m)) => m,
        _ => return None,
    };
    if msg.kind != Kind::Result {
        return None;
    }
    let open = usize::try_from(msg.result_open?).ok()?;
    let end = crate::guard::json::value_end(data, open).ok()?;
    Some((data.to_vec(), (open, end)))
}

/// One event of a held stream.
struct HeldEvent {
    /// Its bytes in the body, the blank line that ends it included.
    span: (usize, usize),
    /// Its `data` lines joined by `\n`.
    data: Vec<u8>,
    /// Its other lines, each ending in `\n`.
    fields: Vec<u8>,
}

/// The events of a whole event stream (lines end in LF, CRLF or CR; an unterminated last
/// event is not one).
fn events(body: &[u8]) -> Vec<HeldEvent> {
    let mut out = Vec::new();
    let (mut at, mut event_start) = (0, 0);
    let (mut data, mut fields, mut has_data) = (Vec::new(), Vec::new(), false);
    while at < body.len() {
        let rest = body.get(at..).unwrap_or_default();
        let (line_len, eol_len) = match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            Some(i) if rest.get(i) == Some(&b'\r') && rest.get(i + 1) == Some(&b'\n') => (i, 2),
            Some(i) => (i, 1),
            None => break,
        };
        let line = rest.get(..line_len).unwrap_or_default();
        at += line_len + eol_len;
        if line.is_empty() {
            if has_data || !fields.is_empty() {
                out.push(HeldEvent {
                    span: (event_start, at),
                    data: std::mem::take(&mut data),
                    fields: std::mem::take(&mut fields),
                });
            }
            has_data = false;
            event_start = at;
            continue;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            if has_data {
                data.push(b'\n');
            }
            data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
            has_data = true;
        } else {
            fields.extend_from_slice(line);
            fields.push(b'\n');
        }
    }
    out
}
