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

mod guard_call;
#[allow(unsafe_code)]
mod host;
mod metrics;
mod subscription;

use mcpgw_core::config::Config;
use mcpgw_core::exchange::{self, BodyNeed, CallAnswer, Exchange, Header, Host, Step};
use mcpgw_core::metrics::ToolLabel;
use mcpgw_core::reason::Reason;
use mcpgw_core::session::table::KEY_PREFIX;
use mcpgw_core::subscription::{MISCONFIGURED_BODY, Source, UNCONFIGURED_BODY};
use metrics::Metrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// How often a worker sweeps the session-table slots it wrote (idle upstream sessions are
/// ended, expired records removed).
const SWEEP_PERIOD: Duration = Duration::from_secs(30);

/// What a worker's requests share: its counters and the session-table slots it wrote
/// (which its root sweeps).
#[derive(Default)]
struct Shared {
    metrics: RefCell<Metrics>,
    slots: RefCell<BTreeSet<String>>,
}

/// Per-VM state: the compiled configuration (the documented defaults until the first
/// `on_configure` succeeds), and what its requests share.
#[derive(Default)]
struct Root {
    config: Rc<Config>,
    shared: Rc<Shared>,
    sweep_tags: u32,
    /// Set when the plugin configuration only says where the configuration lives (Istio's
    /// gateway): the stream that fetches it (`subscription`).
    subscription: Option<subscription::Driver>,
    /// While set, every request is answered 503 with this body: subscribed and no
    /// configuration received yet, or a plugin configuration it cannot read.
    unconfigured: Option<&'static str>,
    /// When the session sweep is next due while subscribed (ticks are frequent then).
    next_sweep_ms: u64,
}

impl Context for Root {
    /// A response on the subscription's stream: installed like `on_configure`'s, answered.
    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let Some(delivery) = self
            .subscription
            .as_mut()
            .and_then(|d| d.on_message(token, size))
        else {
            return;
        };
        let started = self.get_current_time();
        let installed = match Config::from_bytes(&delivery.configuration) {
            Ok(config) => {
                self.install(config, delivery.configuration.len(), started);
                Ok(())
            }
            Err(err) => {
                log::error!(
                    "mcpgw: rejecting configuration {:?} from the control plane: {err}",
                    delivery.version
                );
                Err(err.to_string())
            }
        };
        if let Some(driver) = self.subscription.as_mut() {
            driver.answer(&delivery, installed);
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        if let Some(driver) = self.subscription.as_mut() {
            driver.on_close(token, status, now_ms());
        }
    }
}

impl Root {
    /// Makes `config` the one new requests get (`bytes`: its size, for the log).
    fn install(&mut self, config: Config, bytes: usize, started: SystemTime) {
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
            bytes,
            took.as_secs_f64() * 1000.0
        );
        let sessions = config.edge.sessions().is_some();
        self.config = Rc::new(config);
        self.unconfigured = None;
        let period = match (&self.subscription, sessions) {
            (Some(_), _) => subscription::TICK,
            (None, true) => SWEEP_PERIOD,
            (None, false) => Duration::ZERO,
        };
        if let Err(status) = proxy_wasm::hostcalls::set_tick_period(period) {
            log::warn!("mcpgw: cannot schedule the session sweep: {status:?}");
        }
    }

    /// Starts fetching the configuration from `source`; until it arrives requests get 503.
    fn subscribe(&mut self, source: Source) {
        if self
            .subscription
            .as_ref()
            .is_some_and(|d| d.source() == &source)
        {
            return;
        }
        self.unconfigured = Some(UNCONFIGURED_BODY);
        let mut driver = subscription::Driver::new(source);
        driver.tick(now_ms());
        self.subscription = Some(driver);
        if let Err(status) = proxy_wasm::hostcalls::set_tick_period(subscription::TICK) {
            log::warn!("mcpgw: cannot schedule reconnections: {status:?}");
        }
    }

    /// Sweeps the session-table slots this worker wrote: idle upstream sessions are ended
    /// (`DELETE`, answers ignored), expired records removed.
    fn sweep(&mut self) {
        let now = now_secs();
        let slots: Vec<String> = self.shared.slots.borrow().iter().cloned().collect();
        for key in slots {
            let (value, cas) = host::shared_get(&key);
            let sweep = exchange::sweep(&self.config, value.as_deref(), now, self.sweep_tags);
            let Some(new_value) = sweep.value else {
                continue;
            };
            // Lost to a writer: the next tick sweeps again.
            if !host::shared_set(&key, &new_value, cas) {
                continue;
            }
            if sweep.empty {
                // Nothing left in it: no longer this worker's to sweep.
                self.shared.slots.borrow_mut().remove(&key);
            }
            for call in sweep.calls {
                self.sweep_tags = self.sweep_tags.max(call.tag);
                let headers: Vec<(&str, &str)> =
                    call.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                if let Err(status) = self.dispatch_http_call(
                    &call.cluster,
                    headers,
                    None,
                    vec![],
                    Duration::from_millis(call.timeout_ms),
                ) {
                    log::warn!(
                        "mcpgw: cannot end an idle upstream session on {}: {status:?}",
                        call.cluster
                    );
                }
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let started = self.get_current_time();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                self.install(config, bytes.len(), started);
                true
            }
            // Not a snapshot: perhaps a plugin configuration naming where it lives.
            Err(err) => match Source::from_plugin_configuration(&bytes) {
                Some(Ok(source)) => {
                    self.subscribe(source);
                    true
                }
                // Accepted, to answer 503 saying so: refused, Envoy would not start (or
                // not serve the listener), and the operator sees only its own error.
                Some(Err(invalid)) => {
                    log::error!("mcpgw: rejecting configuration: {invalid}");
                    self.subscription = None;
                    self.unconfigured = Some(MISCONFIGURED_BODY);
                    true
                }
                None => {
                    log::error!("mcpgw: rejecting configuration: {err}");
                    false
                }
            },
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if let Some(body) = self.unconfigured {
            return Some(Box::new(subscription::Unconfigured(body)));
        }
        Some(Box::new(Request {
            exchange: Exchange::new(Rc::clone(&self.config)),
            shared: Rc::clone(&self.shared),
            calls: HashMap::new(),
            body_size: 0,
            response_read: 0,
        }))
    }

    /// Reopens the subscription's stream when due; sweeps the session table.
    fn on_tick(&mut self) {
        if let Some(driver) = self.subscription.as_mut() {
            let now = now_ms();
            driver.tick(now);
            // Subscribed roots tick every second; the sweep keeps its own period.
            if self.config.edge.sessions().is_none() || now < self.next_sweep_ms {
                return;
            }
            self.next_sweep_ms =
                now.saturating_add(u64::try_from(SWEEP_PERIOD.as_millis()).unwrap_or(u64::MAX));
        }
        self.sweep();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Seconds since the Unix epoch, by Envoy's clock.
fn now_secs() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch, by Envoy's clock.
fn now_ms() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The host as the exchange sees it: this worker's counters and session slots, Envoy's
/// log, clock, randomness and shared data.
struct FilterHost<'s>(&'s Shared);

impl Host for FilterHost<'_> {
    fn count_request(&mut self, method: &str, tool: ToolLabel<'_>) {
        self.0.metrics.borrow_mut().request(method, tool);
    }

    fn count_response(&mut self, method: &str, tool: ToolLabel<'_>, error: bool) {
        self.0.metrics.borrow_mut().response(method, tool, error);
    }

    fn count_rejected(&mut self, reason: Reason) {
        self.0.metrics.borrow_mut().rejected(reason.label());
    }

    fn count_internal_error(&mut self) {
        self.0.metrics.borrow_mut().internal_error();
    }

    fn count_plugin(&mut self, plugin: &str, hook: &str, effect: &str) {
        self.0.metrics.borrow_mut().plugin(plugin, hook, effect);
    }

    fn count_limited(&mut self, limit: &str, kind: &str) {
        self.0.metrics.borrow_mut().limited(limit, kind);
    }

    fn observe_limit_service(&mut self, ms: u64, outcome: &str) {
        self.0.metrics.borrow_mut().limit_service(ms, outcome);
    }

    fn warn(&mut self, message: &str) {
        log::warn!("{message}");
    }

    fn now(&self) -> u64 {
        now_secs()
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn random(&mut self, out: &mut [u8]) -> bool {
        host::random(out)
    }

    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        host::shared_get(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let stored = host::shared_set(key, value, cas);
        if stored && key.starts_with(KEY_PREFIX) && !self.0.slots.borrow().contains(key) {
            self.0.slots.borrow_mut().insert(key.to_owned());
        }
        stored
    }
}

/// One HTTP request through the filter.
struct Request {
    exchange: Exchange,
    shared: Rc<Shared>,
    /// Calls in flight: host token → the exchange's tag.
    calls: HashMap<u32, u32>,
    /// Request body bytes Envoy has buffered (what a new body replaces).
    body_size: usize,
    /// Response body bytes read while it is held for guardrails (`guard_call`).
    response_read: usize,
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
                        Header::Added(name) => name.as_str(),
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
                            let shared = Rc::clone(&self.shared);
                            next = self.exchange.on_call_answer(
                                call.tag,
                                CallAnswer::default(),
                                &mut FilterHost(&shared),
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
            Step::Check(call) => {
                match self.dispatch_grpc_call(
                    &call.cluster,
                    call.service,
                    call.method,
                    vec![],
                    Some(&call.message),
                    Duration::from_millis(call.timeout_ms),
                ) {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        log::warn!("mcpgw: cannot call cluster {}: {status:?}", call.cluster);
                        let shared = Rc::clone(&self.shared);
                        let next = self
                            .exchange
                            .on_check_answer(None, &mut FilterHost(&shared));
                        self.execute(next, held)
                    }
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
    /// The rate-limit service or a guardrail service answered (gRPC status 0) or failed.
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, size: usize) {
        let message = (status == 0)
            .then(|| {
                proxy_wasm::hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
                    .ok()
                    .flatten()
            })
            .flatten();
        // An empty message is a valid one (every field at its default).
        let message = match (status, message) {
            (0, None) => Some(Vec::new()),
            (_, m) => m,
        };
        if self.exchange.checks_response() {
            return self.response_check_answer(message.as_deref());
        }
        let shared = Rc::clone(&self.shared);
        let step = self
            .exchange
            .on_check_answer(message.as_deref(), &mut FilterHost(&shared));
        self.execute(step, true);
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
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
        // Only the token endpoint's answer is read (`token_exchange`).
        let body = self
            .exchange
            .reads_call_body(tag)
            .then(|| self.get_http_call_response_body(0, body_size))
            .flatten();
        let shared = Rc::clone(&self.shared);
        let step = self.exchange.on_call_answer(
            tag,
            CallAnswer {
                status,
                session_id,
                body,
            },
            &mut FilterHost(&shared),
        );
        self.execute(step, true);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let mut host = FilterHost(&shared);
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
        let shared = Rc::clone(&self.shared);
        let mut host = FilterHost(&shared);
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

    /// Every stream ends here, answered, reset or timed out: what it holds under the
    /// limits is released (the exchange makes that idempotent).
    fn on_log(&mut self) {
        let shared = Rc::clone(&self.shared);
        self.exchange.on_stream_end(&mut FilterHost(&shared));
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let head = self.exchange.on_response_head();
        if head.remove_session_id {
            self.set_http_response_header("mcp-session-id", None);
        }
        if head.remove_content_length {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.exchange.holds_response() {
            return self.held_response_body(body_size, end_of_stream);
        }
        let chunk = match self.exchange.response_body_need() {
            BodyNeed::Nothing => return Action::Continue,
            BodyNeed::End if !end_of_stream => return Action::Continue,
            BodyNeed::End => Vec::new(),
            BodyNeed::Bytes if body_size > 0 => self
                .get_http_response_body(0, body_size)
                .unwrap_or_default(),
            BodyNeed::Bytes => Vec::new(),
        };
        let shared = Rc::clone(&self.shared);
        // A rewriter that let the chunk go unchanged (a guarded result with nothing to
        // mask) costs no host call.
        if let Some(rewritten) =
            self.exchange
                .on_response_body(&chunk, end_of_stream, &mut FilterHost(&shared))
            && (rewritten != chunk || chunk.len() != body_size)
        {
            self.set_http_response_body(0, body_size, &rewritten);
        }
        Action::Continue
    }
}
