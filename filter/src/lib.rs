//! The mcpgw proxy-wasm filter: a thin Envoy adapter; every decision is made in `mcpgw-core`.
//!
//! One [`Root`] per worker VM compiles the configuration once in `on_configure` into a
//! [`Config`] and hands each request's [`Request`] an `Rc` to it. Each request is an
//! [`Exchange`], core's per-request state machine: the filter feeds it what Envoy delivers
//! (headers, body chunks, call answers, the response) and carries out the [`Step`] it
//! returns with host calls. Metrics and logs reach the host through [`Host`].
//!
//! Callbacks never panic: every failure becomes a 500 with a JSON-RPC error and a metric.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[allow(unsafe_code)]
mod host;
mod metrics;

use mcpgw_core::config::Config;
use mcpgw_core::exchange::{BodyNeed, CallAnswer, Exchange, Header, Host, Step};
use mcpgw_core::reason::Reason;
use metrics::Metrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Per-VM state: the compiled configuration (the documented defaults until the first
/// `on_configure` succeeds) and the metric registry.
#[derive(Default)]
struct Root {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let started = self.get_current_time();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                let took = self
                    .get_current_time()
                    .duration_since(started)
                    .unwrap_or_default();
                log::info!(
                    "mcpgw: configured snapshot {:?} (schema {}, {} virtual servers, {} catalog tools, {} configuration bytes) in {:.1} ms",
                    config.version,
                    config.schema,
                    config.servers(),
                    config.tools(),
                    bytes.len(),
                    took.as_secs_f64() * 1000.0
                );
                self.config = Rc::new(config);
                true
            }
            Err(err) => {
                log::error!("mcpgw: rejecting configuration: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            exchange: Exchange::new(Rc::clone(&self.config)),
            metrics: Rc::clone(&self.metrics),
            calls: HashMap::new(),
            body_size: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The host as the exchange sees it: this worker's counters and Envoy's log.
struct FilterHost<'m>(&'m RefCell<Metrics>);

impl Host for FilterHost<'_> {
    fn count_request(&mut self, method: &str, tool: Option<&str>) {
        self.0.borrow_mut().request(method, tool);
    }

    fn count_response(&mut self, method: &str, tool: &str, error: bool) {
        self.0.borrow_mut().response(method, tool, error);
    }

    fn count_rejected(&mut self, reason: Reason) {
        self.0.borrow_mut().rejected(reason.label());
    }

    fn count_internal_error(&mut self) {
        self.0.borrow_mut().internal_error();
    }

    fn warn(&mut self, message: &str) {
        log::warn!("{message}");
    }
}

/// One HTTP request through the filter.
struct Request {
    exchange: Exchange,
    metrics: Rc<RefCell<Metrics>>,
    /// Calls in flight: host token → the exchange's tag.
    calls: HashMap<u32, u32>,
    /// Request body bytes Envoy has buffered (what a new body replaces).
    body_size: usize,
}

impl Request {
    /// Carries out `step`. `held`: the request is paused outside a header or body callback
    /// (waiting for calls), so going on needs an explicit resume.
    fn execute(&mut self, step: Step, held: bool) -> Action {
        match step {
            Step::Continue => self.go_on(held),
            Step::ReadBody | Step::Wait => Action::Pause,
            Step::Reply(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect();
                self.send_http_response(u32::from(reply.status), headers, reply.body.as_deref());
                Action::Pause
            }
            Step::Forward(forward) => {
                for (header, value) in &forward.headers {
                    let name = match header {
                        Header::Route => self.exchange.config().gate.route_header(),
                        Header::Named(name) => name,
                    };
                    self.set_http_request_header(name, value.as_deref());
                }
                if let Some(body) = &forward.body {
                    self.set_http_request_body(0, self.body_size, body);
                }
                self.go_on(held)
            }
            Step::Call(calls) => {
                let mut next = Step::Wait;
                for call in calls {
                    let headers: Vec<(&str, &str)> =
                        call.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    let timeout = Duration::from_millis(call.timeout_ms);
                    match self.dispatch_http_call(
                        &call.cluster,
                        headers,
                        call.body.as_deref(),
                        vec![],
                        timeout,
                    ) {
                        Ok(token) => {
                            self.calls.insert(token, call.tag);
                        }
                        Err(status) => {
                            log::warn!("mcpgw: cannot call cluster {}: {status:?}", call.cluster);
                            let metrics = Rc::clone(&self.metrics);
                            next = self.exchange.on_call_answer(
                                call.tag,
                                CallAnswer::default(),
                                &mut FilterHost(&metrics),
                            );
                        }
                    }
                }
                match next {
                    Step::Wait => Action::Pause,
                    // Every call failed at once: the exchange has decided without them.
                    next => self.execute(next, held),
                }
            }
        }
    }

    fn go_on(&mut self, held: bool) -> Action {
        if held {
            self.resume_http_request();
        }
        Action::Continue
    }
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let Some(tag) = self.calls.remove(&token) else {
            return;
        };
        let status = self
            .get_http_call_response_header_bytes(":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
        let session_id = self
            .get_http_call_response_header_bytes("mcp-session-id")
            .and_then(|v| String::from_utf8(v).ok());
        let metrics = Rc::clone(&self.metrics);
        let step = self.exchange.on_call_answer(
            tag,
            CallAnswer { status, session_id },
            &mut FilterHost(&metrics),
        );
        self.execute(step, true);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let metrics = Rc::clone(&self.metrics);
        let mut host = FilterHost(&metrics);
        // One host call for the whole map instead of one per header, read in place (see
        // `host`): each call crosses the VM boundary twice.
        let step = match host::request_header_map() {
            Ok(map) => self
                .exchange
                .on_request_head(&map, end_of_stream, &mut host),
            Err(_) => self
                .exchange
                .internal_error("request headers unavailable", &mut host),
        };
        self.execute(step, false)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.exchange.reads_body() {
            return Action::Continue;
        }
        self.body_size = body_size;
        let metrics = Rc::clone(&self.metrics);
        let mut host = FilterHost(&metrics);
        // While paused, Envoy buffers and `body_size` is everything so far: the exchange
        // reads only the new part, and only if it wants it.
        let step = self.exchange.on_request_body(
            body_size,
            end_of_stream,
            |start, len| {
                proxy_wasm::hostcalls::get_buffer(BufferType::HttpRequestBody, start, len)
                    .ok()
                    .flatten()
            },
            &mut host,
        );
        self.execute(step, false)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.exchange.on_response_head().remove_session_id {
            self.set_http_response_header("mcp-session-id", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let chunk = match self.exchange.response_body_need() {
            BodyNeed::Nothing => return Action::Continue,
            BodyNeed::End if !end_of_stream => return Action::Continue,
            BodyNeed::End => Vec::new(),
            BodyNeed::Bytes if body_size > 0 => self
                .get_http_response_body(0, body_size)
                .unwrap_or_default(),
            BodyNeed::Bytes => Vec::new(),
        };
        let metrics = Rc::clone(&self.metrics);
        self.exchange
            .on_response_body(&chunk, end_of_stream, &mut FilterHost(&metrics));
        Action::Continue
    }
}
