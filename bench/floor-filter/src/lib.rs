//! Benchmark reference: the cheapest body-inspecting wasm filter.
//!
//! It pauses the request headers, waits for the whole body, reads it once and sets one
//! request header. That is the floor any wasm filter that must see the body before the
//! route is chosen pays (the host calls and the V8 transitions), so `make bench` can show
//! how far the real mcpgw filter is above it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot) });
}}

/// Header the filter sets; the benchmark's Envoy routes only requests carrying it.
const FLOOR_HEADER: &str = "x-bench-floor";

struct FloorRoot;

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor;

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        // Read the buffered body once, as any filter that inspects it must.
        let seen = self
            .get_http_request_body(0, body_size)
            .map_or(0, |body| body.len());
        self.set_http_request_header(FLOOR_HEADER, Some(if seen > 0 { "body" } else { "empty" }));
        Action::Continue
    }
}
