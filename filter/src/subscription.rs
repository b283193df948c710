//! The filter subscribing itself to its configuration, when Envoy loaded it without one
//! (an Istio gateway: the plugin configuration names the control plane's xDS cluster,
//! [`mcpgw_core::subscription::Source`]). Each worker's root context keeps one gRPC stream
//! to the control plane's ECDS open, installs what arrives exactly as `on_configure`
//! installs a snapshot, and ACKs or NACKs it; a closed stream is reopened with backoff from
//! `on_tick`, the last good configuration serving meanwhile. Until the first arrives,
//! every request is answered 503 by [`Unconfigured`] (fail closed).
//!
//! What the stream is (messages, ACKs, backoff) is decided in core; this module makes the
//! host calls.

use mcpgw_core::subscription::{METHOD, Received, SERVICE, Source, Subscription};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};
use std::time::Duration;

/// How often a subscribed root ticks: reconnection attempts are checked this often.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// One worker's subscription and its stream.
pub(crate) struct Driver {
    subscription: Subscription,
    /// The open stream's token.
    stream: Option<u32>,
}

/// A configuration received, to install; then [`Driver::answer`].
pub(crate) struct Delivery {
    /// The response's version.
    pub(crate) version: String,
    nonce: String,
    /// The snapshot's JSON.
    pub(crate) configuration: Vec<u8>,
}

impl Driver {
    /// A subscription to `source` (not connected yet: [`Driver::tick`] connects).
    pub(crate) fn new(source: Source) -> Driver {
        let subscription = Subscription::new(source, &envoy_node_id().unwrap_or_default());
        Driver {
            subscription,
            stream: None,
        }
    }

    /// Where the configuration lives.
    pub(crate) fn source(&self) -> &Source {
        self.subscription.source()
    }

    /// Opens the stream when it is closed and its backoff has passed.
    pub(crate) fn tick(&mut self, now_ms: u64) {
        if self.stream.is_some() || !self.subscription.due(now_ms) {
            return;
        }
        let source = self.subscription.source().clone();
        if self.subscription.node_id().is_empty() {
            log::error!(
                "mcpgw: cannot subscribe to {}: Envoy has no node id and the plugin configuration names none (xds.node_id)",
                source.resource
            );
            self.subscription.closed(now_ms);
            return;
        }
        match hostcalls::open_grpc_stream(&source.cluster, SERVICE, METHOD, vec![]) {
            Ok(token) => {
                let first = self.subscription.opened();
                if let Err(status) = hostcalls::send_grpc_stream_message(token, Some(&first), false)
                {
                    log::warn!("mcpgw: cannot send on the xDS stream: {status:?}");
                }
                self.stream = Some(token);
                log::info!(
                    "mcpgw: subscribing to {} on cluster {} as node {} (holding version {:?})",
                    source.resource,
                    source.cluster,
                    self.subscription.node_id(),
                    self.subscription.accepted()
                );
            }
            Err(status) => {
                let delay = self.subscription.closed(now_ms);
                log::warn!(
                    "mcpgw: cannot open the xDS stream on cluster {}: {status:?}; retrying in {} s",
                    source.cluster,
                    delay / 1000
                );
            }
        }
    }

    /// A message on stream `token` (`size` bytes): a configuration to install, or `None`
    /// (already answered, or not this stream's).
    pub(crate) fn on_message(&mut self, token: u32, size: usize) -> Option<Delivery> {
        if self.stream != Some(token) {
            return None;
        }
        let bytes = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match self.subscription.on_response(&bytes) {
            Received::Configuration {
                version,
                nonce,
                configuration,
            } => {
                if version == self.subscription.accepted() && !version.is_empty() {
                    // The version this worker runs (a reconnection): acknowledged as is,
                    // not compiled again.
                    let ack = self.subscription.ack(&version, &nonce);
                    self.send(&ack);
                    return None;
                }
                Some(Delivery {
                    version,
                    nonce,
                    configuration,
                })
            }
            Received::Rejected { request, error } => {
                log::error!("mcpgw: rejecting the control plane's response: {error}");
                self.send(&request);
                None
            }
            Received::Garbage(error) => {
                log::error!("mcpgw: ignoring a message on the xDS stream: {error}");
                None
            }
        }
    }

    /// ACKs (`Ok`) or NACKs a delivery.
    pub(crate) fn answer(&mut self, delivery: &Delivery, installed: Result<(), String>) {
        let request = match installed {
            Ok(()) => self.subscription.ack(&delivery.version, &delivery.nonce),
            Err(error) => self.subscription.nack(&delivery.nonce, &error),
        };
        self.send(&request);
    }

    /// Stream `token` ended (gRPC `status`): a reconnection is scheduled.
    pub(crate) fn on_close(&mut self, token: u32, status: u32, now_ms: u64) {
        if self.stream != Some(token) {
            return;
        }
        self.stream = None;
        let delay = self.subscription.closed(now_ms);
        log::warn!(
            "mcpgw: the xDS stream to {} closed (gRPC status {status}); keeping version {:?}, reconnecting in {} s",
            self.subscription.source().cluster,
            self.subscription.accepted(),
            delay / 1000
        );
    }

    fn send(&mut self, request: &[u8]) {
        let Some(token) = self.stream else { return };
        if let Err(status) = hostcalls::send_grpc_stream_message(token, Some(request), false) {
            log::warn!("mcpgw: cannot send on the xDS stream: {status:?}");
        }
    }
}

/// The Envoy's node id: Envoy hands the `node` property over as a serialized `Node`.
fn envoy_node_id() -> Option<String> {
    [vec!["node"], vec!["xds", "node"]]
        .into_iter()
        .find_map(|path| {
            let node = hostcalls::get_property(path).ok().flatten()?;
            mcpgw_core::subscription::wire::node_id(&node)
        })
}

impl Drop for Driver {
    /// A replaced subscription's stream is cancelled, not left open.
    fn drop(&mut self) {
        if let Some(token) = self.stream.take() {
            let _ = hostcalls::cancel_grpc_stream(token);
        }
    }
}

/// A request while the worker has no configuration: 503 with a JSON-RPC error saying why.
pub(crate) struct Unconfigured(pub(crate) &'static str);

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.send_http_response(
            503,
            vec![("content-type", "application/json"), ("retry-after", "5")],
            Some(self.0.as_bytes()),
        );
        Action::Pause
    }
}
