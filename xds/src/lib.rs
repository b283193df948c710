//! The mcpgw xDS server: an Aggregated Discovery Service (state of the world and delta)
//! that serves whatever [`ResourceSet`] is published on a `watch` channel to every
//! connected Envoy, and tracks what each node was sent, acknowledged and rejected.
//!
//! It knows nothing of the registry: someone else turns the registry into resource sets
//! and publishes them (debouncing bursts of changes before it builds, which is where a
//! burst costs: one registry read per build); this crate pushes to each stream only what
//! changed for it, and keeps the per-node status behind `GET /xds/nodes`.
//!
//! Until a first set is published the server answers nothing: a reconnecting Envoy keeps
//! what it has instead of being told that the configuration is empty.

#![warn(missing_docs)]

mod delta;
mod resources;
mod sotw;
mod status;
mod stream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::{
    ExtensionConfigDiscoveryService, ExtensionConfigDiscoveryServiceServer,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

pub use resources::{
    Resource, ResourceDiff, ResourceSet, ResourceSetBuilder, ResourceSetError, TypeUrl,
    UnknownTypeUrl,
};
pub use status::{
    MAX_NACK_DETAIL_BYTES, MAX_NODE_ID_BYTES, NackStatus, NodeRefused, NodeRegistry, NodeStatus,
    StreamKind, TypeStatus, XdsCounts, XdsMetrics,
};

/// What the server is given to serve: `None` until the first good build, so that an
/// Envoy connecting before it is told nothing (rather than an empty configuration).
pub type Published = Option<Arc<ResourceSet>>;

/// Tunables of the xDS server.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// How long a disconnected node stays in [`AdsServer::nodes`].
    pub status_retention: Duration,
    /// How many nodes (connected, or disconnected within the retention) the registry
    /// holds; a stream from a new node past it is refused with `RESOURCE_EXHAUSTED`.
    /// Node ids are chosen by clients: without a cap, each new id costs memory forever
    /// (well, for `status_retention`).
    pub max_nodes: usize,
    /// HTTP/2 keepalive ping interval (dead Envoys are noticed after interval + timeout).
    pub keepalive_interval: Duration,
    /// How long to wait for a keepalive ping's answer.
    pub keepalive_timeout: Duration,
    /// How long [`serve`] lets connections drain after shutdown before dropping them.
    pub shutdown_grace: Duration,
    /// TLS with client-certificate verification (`None`: plaintext).
    pub tls: Option<XdsTls>,
}

/// Default of [`XdsConfig::max_nodes`]: far above any one control plane's fleet (every
/// Envoy is one node), low enough that the registry stays a few MB when ids are junk.
pub const DEFAULT_MAX_NODES: usize = 4096;

impl Default for XdsConfig {
    fn default() -> Self {
        XdsConfig {
            status_retention: Duration::from_secs(600),
            max_nodes: DEFAULT_MAX_NODES,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// The ADS listener's TLS: the server's identity and the CA every client certificate must
/// chain to (a client without one is refused in the handshake). PEM contents, not paths:
/// the caller reads its files.
#[derive(Clone)]
pub struct XdsTls {
    /// Certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Private key (PEM).
    pub key_pem: Vec<u8>,
    /// CA bundle (PEM) client certificates are verified against.
    pub client_ca_pem: Vec<u8>,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XdsTls { .. }")
    }
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the xDS server stopped.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The gRPC transport failed (or its TLS configuration was refused).
    #[error("xDS gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// State every stream shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The published resource sets (`None` until the first).
    sets: watch::Receiver<Published>,
    registry: NodeRegistry,
    metrics: XdsMetrics,
    /// `true` once streams must end (graceful shutdown).
    shutdown: watch::Sender<bool>,
    config: XdsConfig,
}

/// The ADS service: cheap to clone; every clone serves the same resource sets and
/// reports into the same node registry.
#[derive(Debug, Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl AdsServer {
    /// Serves the sets published on `input`.
    ///
    /// Spawns the task that forwards publications (skipping sets identical to the last
    /// one), so it must be called inside a Tokio runtime; the task ends when `input`'s
    /// sender is dropped or every clone of this server is.
    pub fn new(input: watch::Receiver<Published>, config: XdsConfig) -> Self {
        let initial = input.borrow().clone();
        let (tx, rx) = watch::channel(initial);
        let shared = Arc::new(Shared {
            sets: rx,
            registry: NodeRegistry::new(config.status_retention, config.max_nodes),
            metrics: XdsMetrics::default(),
            shutdown: watch::Sender::new(false),
            config,
        });
        tokio::spawn(forward(input, tx, Arc::downgrade(&shared)));
        AdsServer { shared }
    }

    /// Every known node (connected, or disconnected within the retention), sorted by id.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.shared.registry.nodes()
    }

    /// The node registry.
    pub fn registry(&self) -> &NodeRegistry {
        &self.shared.registry
    }

    /// The xDS counters.
    pub fn metrics(&self) -> &XdsMetrics {
        &self.shared.metrics
    }

    /// The resource set streams are being served now (`None` before the first).
    pub fn current(&self) -> Published {
        self.shared.sets.borrow().clone()
    }

    /// The tonic service, to mount on a server of one's own (or use [`serve`]).
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// The ECDS service on the same resource sets: for an Envoy whose other configuration
    /// comes from elsewhere (an Istio gateway, whose ADS is istiod's) and which subscribes
    /// to the filter's configuration alone, with a `config_discovery` source naming this
    /// server (`api_type: GRPC`). Its streams are tracked like ADS streams.
    pub fn extension_config_service(&self) -> ExtensionConfigDiscoveryServiceServer<AdsServer> {
        ExtensionConfigDiscoveryServiceServer::new(self.clone())
    }

    /// Ends every open stream with `UNAVAILABLE` (and refuses new ones), so that a
    /// graceful HTTP/2 shutdown does not wait forever for streams that never end.
    pub fn close_streams(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Forwards `input` to `out`, skipping sets whose content equals the last one forwarded.
///
/// No delay here: bursts are folded where they cost, before the publisher's build.
async fn forward(
    mut input: watch::Receiver<Published>,
    out: watch::Sender<Published>,
    shared: std::sync::Weak<Shared>,
) {
    loop {
        tokio::select! {
            changed = input.changed() => if changed.is_err() { return },
            _ = out.closed() => return,
        }
        let Some(next) = input.borrow_and_update().clone() else {
            continue;
        };
        if let Some(previous) = out.borrow().clone() {
            let diff = next.diff(&previous);
            if diff.is_empty() {
                tracing::debug!(
                    version = next.version(),
                    "resource set unchanged; nothing to push"
                );
                continue;
            }
            tracing::info!(
                version = next.version(),
                added = diff.added.len(),
                changed = diff.changed.len(),
                removed = diff.removed.len(),
                "publishing resource set to xDS streams"
            );
        } else {
            tracing::info!(
                version = next.version(),
                "first resource set: answering the streams that were waiting for it"
            );
        }
        out.send_replace(Some(next));
        match shared.upgrade() {
            Some(s) => s.metrics.published(),
            None => return,
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.refuse_when_closing()?;
        let rx = stream::spawn::<sotw::Sotw>(self.shared.clone(), request.into_inner());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.refuse_when_closing()?;
        let rx = stream::spawn::<delta::Delta>(self.shared.clone(), request.into_inner());
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// ECDS streams are served by the same machinery as ADS streams: the requests and
/// responses are the same messages, and a client of this service asks for
/// `TypedExtensionConfig`s only.
#[tonic::async_trait]
impl ExtensionConfigDiscoveryService for AdsServer {
    type StreamExtensionConfigsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaExtensionConfigsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_extension_configs(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamExtensionConfigsStream>, Status> {
        self.stream_aggregated_resources(request).await
    }

    async fn delta_extension_configs(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaExtensionConfigsStream>, Status> {
        self.delta_aggregated_resources(request).await
    }

    async fn fetch_extension_configs(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "unary ECDS fetch is not served: use the streaming ECDS (api_type GRPC or DELTA_GRPC)",
        ))
    }
}

impl AdsServer {
    fn refuse_when_closing(&self) -> Result<(), Status> {
        if *self.shared.shutdown.borrow() {
            return Err(Status::unavailable("control plane shutting down"));
        }
        Ok(())
    }
}

/// Serves ADS on `listener` (HTTP/2 gRPC, over TLS with client certificates when
/// [`XdsConfig::tls`] is set) until `shutdown` resolves; then ends the open streams and
/// lets connections drain for at most `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    server: AdsServer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), XdsError> {
    let config = server.shared.config.clone();
    let closer = server.clone();
    let (draining, drained) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("xDS server shutting down");
        closer.close_streams();
        let _ = draining.send(());
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = config.tls.is_some(), "xDS server listening");
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        // Client certificates are required (tonic's default once a client CA is set):
        // xDS hands out every Envoy's configuration, upstream credentials included.
        builder = builder.tls_config(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .client_ca_root(Certificate::from_pem(&tls.client_ca_pem))
                .timeout(TLS_HANDSHAKE_TIMEOUT),
        )?;
    }
    let serving = builder
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(server.service())
        .add_service(server.extension_config_service())
        .serve_with_incoming_shutdown(incoming, signal);
    // A client that neither reads nor closes would keep a graceful shutdown waiting
    // forever: past the grace period, connections are dropped.
    let deadline = async move {
        if drained.await.is_ok() {
            tokio::time::sleep(config.shutdown_grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serving => served?,
        _ = deadline => tracing::warn!("xDS connections still open after the shutdown grace period; dropping them"),
    }
    Ok(())
}
