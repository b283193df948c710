//! The xDS server: an Aggregated Discovery Service (state of the world and delta) that
//! serves whatever [`ResourceSet`] is published on a `watch` channel to every connected
//! Envoy, and tracks what each node was sent, acknowledged and rejected.
//!
//! It knows nothing of the registry: someone else turns the registry into resource sets
//! and publishes them; this module debounces bursts of publications, pushes to each
//! stream only what changed for it, and keeps the per-node status behind `GET /xds/nodes`.

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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

pub use resources::{
    Resource, ResourceDiff, ResourceSet, ResourceSetBuilder, ResourceSetError, TypeUrl,
    UnknownTypeUrl,
};
pub use status::{
    NackStatus, NodeRegistry, NodeStatus, StreamKind, TypeStatus, XdsCounts, XdsMetrics,
};

/// Tunables of the xDS server.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// How long to gather publications before pushing: the first change after a quiet
    /// period starts the timer, every change until it fires is folded into one push.
    pub debounce: Duration,
    /// How long a disconnected node stays in [`AdsServer::nodes`].
    pub status_retention: Duration,
    /// HTTP/2 keepalive ping interval (dead Envoys are noticed after interval + timeout).
    pub keepalive_interval: Duration,
    /// How long to wait for a keepalive ping's answer.
    pub keepalive_timeout: Duration,
    /// How long [`serve`] lets connections drain after shutdown before dropping them.
    pub shutdown_grace: Duration,
}

impl Default for XdsConfig {
    fn default() -> Self {
        XdsConfig {
            debounce: Duration::from_millis(100),
            status_retention: Duration::from_secs(600),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why the xDS server stopped.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The gRPC transport failed.
    #[error("xDS gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// State every stream shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The debounced resource sets.
    sets: watch::Receiver<Arc<ResourceSet>>,
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
    /// Serves the sets published on `input`, debounced by `config.debounce`.
    ///
    /// Spawns the debouncing task, so it must be called inside a Tokio runtime; the task
    /// ends when `input`'s sender is dropped or every clone of this server is.
    pub fn new(input: watch::Receiver<Arc<ResourceSet>>, config: XdsConfig) -> Self {
        let initial = input.borrow().clone();
        let (tx, rx) = watch::channel(initial);
        let shared = Arc::new(Shared {
            sets: rx,
            registry: NodeRegistry::new(config.status_retention),
            metrics: XdsMetrics::default(),
            shutdown: watch::Sender::new(false),
            config,
        });
        tokio::spawn(debounce(input, tx, Arc::downgrade(&shared)));
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

    /// The resource set streams are being served now (the last one through the debouncer).
    pub fn current(&self) -> Arc<ResourceSet> {
        self.shared.sets.borrow().clone()
    }

    /// The tonic service, to mount on a server of one's own (or use [`serve`]).
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// Ends every open stream with `UNAVAILABLE` (and refuses new ones), so that a
    /// graceful HTTP/2 shutdown does not wait forever for streams that never end.
    pub fn close_streams(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Forwards `input` to `out`, folding bursts: after a change, wait `debounce`, then
/// publish the latest set if its content differs from the last one published.
///
/// A leading timer rather than a trailing one that restarts on every change: a registry
/// that never stops changing still gets a push every `debounce`, instead of never.
async fn debounce(
    mut input: watch::Receiver<Arc<ResourceSet>>,
    out: watch::Sender<Arc<ResourceSet>>,
    shared: std::sync::Weak<Shared>,
) {
    loop {
        tokio::select! {
            changed = input.changed() => if changed.is_err() { return },
            _ = out.closed() => return,
        }
        let Some(delay) = shared.upgrade().map(|s| s.config.debounce) else {
            return;
        };
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = out.closed() => return,
            }
        }
        let next = input.borrow_and_update().clone();
        let previous = out.borrow().clone();
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
        out.send_replace(next);
        if let Some(s) = shared.upgrade() {
            s.metrics.published();
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

impl AdsServer {
    fn refuse_when_closing(&self) -> Result<(), Status> {
        if *self.shared.shutdown.borrow() {
            return Err(Status::unavailable("control plane shutting down"));
        }
        Ok(())
    }
}

/// Serves ADS on `listener` (HTTP/2 gRPC) until `shutdown` resolves; then ends the open
/// streams and lets connections drain for at most `shutdown_grace`.
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
        tracing::info!(%addr, "xDS server listening");
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(server.service())
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
