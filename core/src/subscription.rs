//! The filter's own subscription to its configuration, for a filter that Envoy was given
//! without it: on an Istio gateway the filter is an extension configuration istiod serves
//! (the overlay's EnvoyFilter), whose plugin configuration is static and only says where the
//! real one lives (the same JSON shape a WasmPlugin's `pluginConfig` would render to). The root context
//! then opens a gRPC stream to the control plane's ECDS
//! (`ExtensionConfigDiscoveryService.StreamExtensionConfigs`), asks for the same
//! `TypedExtensionConfig` the control plane serves to Envoys that load the filter through
//! ECDS themselves, takes the snapshot out of it and ACKs or NACKs each response.
//!
//! Host-independent: [`Source`] is that plugin configuration, [`Subscription`] the stream's state
//! (requests to send, responses read, reconnection backoff), [`wire`] the few protobuf
//! messages by hand (`core` has no protobuf runtime). The filter carries out the host calls.

pub mod wire;

use serde::Deserialize;

/// The gRPC service the filter subscribes with (served beside ADS on the xDS port).
pub const SERVICE: &str = "envoy.service.extension.v3.ExtensionConfigDiscoveryService";
/// Its state-of-the-world streaming method.
pub const METHOD: &str = "StreamExtensionConfigs";
/// The resource type: an extension configuration (ECDS).
pub const TYPE_URL: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// The control plane's name for the filter's configuration.
pub const DEFAULT_RESOURCE: &str = "mcpgw.filter";
/// Longest node id the control plane accepts (its registry refuses longer ones).
pub const MAX_NODE_ID_BYTES: usize = 512;
/// First reconnection delay after a stream ends; doubled per failure up to [`MAX_BACKOFF_MS`].
pub const MIN_BACKOFF_MS: u64 = 1_000;
/// Longest reconnection delay.
pub const MAX_BACKOFF_MS: u64 = 30_000;

/// The answer to an MCP request while the filter has no configuration yet (fail closed).
pub const UNCONFIGURED_BODY: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"the gateway has no configuration yet: it is waiting for the mcpgw control plane"}}"#;
/// The answer to an MCP request when the plugin configuration itself is invalid.
pub const MISCONFIGURED_BODY: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"the gateway's mcpgw filter is misconfigured (its plugin configuration): see the proxy's log"}}"#;

/// Where the configuration lives: the `xds` object of the plugin configuration
/// (`{"xds": {"cluster": "mcpgw-xds"}}`).
///
/// No credential: the control plane's xDS authenticates the connection (mutual TLS, done by
/// the Envoy cluster named here), not the messages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The Envoy cluster of the control plane's xDS port (gRPC, HTTP/2); the overlay's
    /// EnvoyFilter adds it as `mcpgw-xds`.
    pub cluster: String,
    /// The name of the ECDS resource to ask for [default: `mcpgw.filter`].
    #[serde(default = "default_resource")]
    pub resource: String,
    /// The node id the control plane lists this Envoy under (`GET /xds/nodes`) [default:
    /// the Envoy's own node id].
    #[serde(default)]
    pub node_id: Option<String>,
}

fn default_resource() -> String {
    DEFAULT_RESOURCE.to_owned()
}

/// The whole pluginConfig: one `xds` object and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginConfig {
    xds: Source,
}

/// Only says whether a document has a top-level `xds` key (every other key skipped).
#[derive(Deserialize)]
struct Probe {
    xds: Option<serde::de::IgnoredAny>,
}

/// Why a pluginConfig naming a configuration source is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pluginConfig {field}: {reason}")]
pub struct SourceError {
    /// The field (`xds`, `xds.cluster`, …).
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl Source {
    /// The source a plugin configuration names: `None` when it names none (it is a
    /// snapshot, or not JSON), else the source or why it is invalid.
    ///
    /// Called only after the document failed to parse as a snapshot, so that a snapshot
    /// is never scanned twice.
    pub fn from_plugin_configuration(bytes: &[u8]) -> Option<Result<Source, SourceError>> {
        serde_json::from_slice::<Probe>(bytes).ok()?.xds?;
        Some(Self::parse(bytes))
    }

    fn parse(bytes: &[u8]) -> Result<Source, SourceError> {
        let config: PluginConfig = serde_json::from_slice(bytes).map_err(|e| SourceError {
            field: "xds",
            reason: e.to_string(),
        })?;
        let source = config.xds;
        if source.cluster.trim().is_empty() {
            return Err(SourceError {
                field: "xds.cluster",
                reason: "empty: name the Envoy cluster of the control plane's xDS".into(),
            });
        }
        if source.resource.trim().is_empty() {
            return Err(SourceError {
                field: "xds.resource",
                reason: "empty".into(),
            });
        }
        if let Some(id) = &source.node_id
            && (id.is_empty() || id.len() > MAX_NODE_ID_BYTES)
        {
            return Err(SourceError {
                field: "xds.node_id",
                reason: format!("must be 1 to {MAX_NODE_ID_BYTES} bytes"),
            });
        }
        Ok(source)
    }
}

/// What a response asks of the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A configuration to compile and install; then [`Subscription::ack`] or
    /// [`Subscription::nack`] with this version and nonce.
    Configuration {
        /// The response's version.
        version: String,
        /// The response's nonce.
        nonce: String,
        /// The plugin configuration in it (the snapshot's JSON).
        configuration: Vec<u8>,
    },
    /// A response that carries no usable configuration: NACK it (the request to send).
    Rejected {
        /// The NACK.
        request: Vec<u8>,
        /// Why, for the log.
        error: String,
    },
    /// Not a response (undecodable and without a nonce to NACK): nothing to send.
    Garbage(String),
}

/// The filter's side of one ECDS subscription, across stream reconnections.
#[derive(Debug, Clone)]
pub struct Subscription {
    source: Source,
    node_id: String,
    /// The version last accepted ("" before the first): sent again on a new stream.
    accepted: String,
    /// Whether the current stream has sent its first request (which carries the node).
    node_sent: bool,
    backoff_ms: u64,
    /// When (ms since the epoch) to reconnect; `None` while a stream is open.
    retry_at_ms: Option<u64>,
}

impl Subscription {
    /// A subscription for `source`; `envoy_node_id` (the Envoy's own) names the node
    /// unless the source does. Not connected: due at once.
    pub fn new(source: Source, envoy_node_id: &str) -> Subscription {
        let node_id = source
            .node_id
            .clone()
            .unwrap_or_else(|| envoy_node_id.to_owned());
        Subscription {
            source,
            node_id,
            accepted: String::new(),
            node_sent: false,
            backoff_ms: MIN_BACKOFF_MS,
            retry_at_ms: Some(0),
        }
    }

    /// Where the configuration lives.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The node id sent.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The version last accepted.
    pub fn accepted(&self) -> &str {
        &self.accepted
    }

    /// Whether a new stream should be opened at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.retry_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// A stream was opened: its first request (node, resource, the version already held).
    pub fn opened(&mut self) -> Vec<u8> {
        self.retry_at_ms = None;
        self.node_sent = false;
        let accepted = self.accepted.clone();
        self.request(&accepted, "", None)
    }

    /// The stream could not be opened or has ended: the next attempt is scheduled
    /// (doubling delays, reset by a response); its delay in ms.
    pub fn closed(&mut self, now_ms: u64) -> u64 {
        let delay = self.backoff_ms;
        self.retry_at_ms = Some(now_ms.saturating_add(delay));
        self.backoff_ms = (self.backoff_ms.saturating_mul(2)).min(MAX_BACKOFF_MS);
        delay
    }

    /// Reads a `DiscoveryResponse`.
    pub fn on_response(&mut self, bytes: &[u8]) -> Received {
        let response = match wire::DiscoveryResponse::decode(bytes) {
            Ok(r) => r,
            Err(e) => return Received::Garbage(format!("undecodable DiscoveryResponse: {e}")),
        };
        // The control plane answered: it is reachable again.
        self.backoff_ms = MIN_BACKOFF_MS;
        let configuration = if response.type_url != TYPE_URL {
            Err(format!("type {:?}, not {TYPE_URL}", response.type_url))
        } else {
            response.configuration_of(&self.source.resource)
        };
        match configuration {
            Ok(configuration) => Received::Configuration {
                version: response.version_info,
                nonce: response.nonce,
                configuration,
            },
            Err(error) => Received::Rejected {
                request: self.nack(&response.nonce, &error),
                error,
            },
        }
    }

    /// The ACK of a configuration installed: `version` is now the accepted one.
    pub fn ack(&mut self, version: &str, nonce: &str) -> Vec<u8> {
        self.accepted = version.to_owned();
        self.request(version, nonce, None)
    }

    /// The NACK of a response: the accepted version stays, `error` says why.
    pub fn nack(&mut self, nonce: &str, error: &str) -> Vec<u8> {
        let accepted = self.accepted.clone();
        self.request(&accepted, nonce, Some(error))
    }

    fn request(&mut self, version: &str, nonce: &str, error: Option<&str>) -> Vec<u8> {
        let node = (!self.node_sent).then_some(self.node_id.as_str());
        self.node_sent = true;
        wire::DiscoveryRequest {
            version_info: version,
            node_id: node,
            resource_name: &self.source.resource,
            type_url: TYPE_URL,
            response_nonce: nonce,
            error,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests;
