//! External guardrails on responses: a response held in Envoy's buffer while core collects
//! it (`Exchange::on_held_response_body`) and asks the guardrail services about its result;
//! what they leave replaces the buffered body, and the response goes on. An event stream's
//! events before its result go on as they complete (`Held::Pass`).
//!
//! Requests need nothing here: their checks are the exchange's [`Step::Check`], made and
//! answered like the rate-limit service's.
//!
//! [`Step::Check`]: mcpgw_core::exchange::Step::Check

use std::rc::Rc;
use std::time::Duration;

use mcpgw_core::exchange::{GrpcCall, Held};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use crate::{FilterHost, Request};

impl Request {
    /// A chunk of a response held for external post hooks. While the callback pauses,
    /// Envoy buffers the body and `body_size` is all of it since the callback last let
    /// the body go: only the new part is read.
    pub(crate) fn held_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let start = self.response_read.min(body_size);
        let chunk = if body_size > start {
            proxy_wasm::hostcalls::get_buffer(
                BufferType::HttpResponseBody,
                start,
                body_size - start,
            )
            .ok()
            .flatten()
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.response_read = body_size;
        let shared = Rc::clone(&self.shared);
        let held =
            self.exchange
                .on_held_response_body(&chunk, end_of_stream, &mut FilterHost(&shared));
        self.carry_out(held, false)
    }

    /// A guardrail service answered about the held response (`None`: it failed).
    pub(crate) fn response_check_answer(&mut self, message: Option<&[u8]>) {
        let shared = Rc::clone(&self.shared);
        let held = self
            .exchange
            .on_response_check_answer(message, &mut FilterHost(&shared));
        self.carry_out(held, true);
    }

    /// Carries out what the exchange decided about the held response. `resumed`: outside
    /// the body callback, so letting it go needs an explicit resume.
    fn carry_out(&mut self, mut held: Held, resumed: bool) -> Action {
        loop {
            match held {
                Held::Hold => return Action::Pause,
                Held::Release(body) => {
                    self.set_http_response_body(0, self.response_read, &body);
                    if resumed {
                        self.resume_http_response();
                    }
                    return Action::Continue;
                }
                Held::Pass(body) => {
                    // What Envoy buffered leaves with this callback: the next one starts
                    // from nothing.
                    self.set_http_response_body(0, self.response_read, &body);
                    self.response_read = 0;
                    if resumed {
                        self.resume_http_response();
                    }
                    return Action::Continue;
                }
                Held::Check(call) => match dispatch(self, &call) {
                    Ok(()) => return Action::Pause,
                    Err(()) => {
                        let shared = Rc::clone(&self.shared);
                        held = self
                            .exchange
                            .on_response_check_answer(None, &mut FilterHost(&shared));
                    }
                },
            }
        }
    }
}

/// Starts `call`; `Err` (logged) when Envoy refuses it (an unknown cluster).
fn dispatch(r: &mut Request, call: &GrpcCall) -> Result<(), ()> {
    r.dispatch_grpc_call(
        &call.cluster,
        call.service,
        call.method,
        vec![],
        Some(&call.message),
        Duration::from_millis(call.timeout_ms),
    )
    .map(|_| ())
    .map_err(|status| {
        log::warn!("mcpgw: cannot call cluster {}: {status:?}", call.cluster);
    })
}
