//! Keeps the published edge configuration current with the registry.

use std::sync::Arc;
use std::time::Duration;

use mcpgw_core::snapshot::{Policy, SessionSettings, Snapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::translate::{EdgeError, EdgeSettings, endpoints, resources};
use crate::snapshot::{RegistryView, assemble};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::xds::{AdsServer, Published, ResourceSet};

/// How long registry changes are gathered before one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the registry version is polled besides the in-process change notifications:
/// catches writes by other control-plane replicas sharing a PostgreSQL database, and
/// retries a failed build.
const POLL: Duration = Duration::from_secs(5);

/// Why one rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The registry could not be read or assembled.
    #[error("building the snapshot: {0}")]
    Store(#[from] StoreError),
    /// The snapshot could not be translated into xDS resources.
    #[error("translating the snapshot: {0}")]
    Edge(#[from] EdgeError),
}

impl PublishError {
    /// A low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            PublishError::Store(e) => e.label(),
            PublishError::Edge(e) => e.label(),
        }
    }
}

/// What the control plane currently serves to Envoys, as the admin API sees it.
#[derive(Debug, Clone)]
pub struct Edge {
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    ads: Option<AdsServer>,
}

impl Edge {
    /// The last snapshot built successfully (`None` until the first build succeeds).
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    /// The xDS server, if xDS is enabled.
    pub fn ads(&self) -> Option<&AdsServer> {
        self.ads.as_ref()
    }
}

/// Rebuilds the snapshot and its xDS resources after registry changes and publishes them.
#[derive(Debug)]
pub struct Publisher {
    store: Store,
    policy: Policy,
    session: Option<SessionSettings>,
    settings: EdgeSettings,
    /// Subscribed at creation, so no change between the first build and [`Publisher::spawn`]
    /// is missed.
    versions: watch::Receiver<i64>,
    sets: watch::Sender<Published>,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
}

impl Publisher {
    /// A publisher with nothing published yet: no resource set (xDS answers nothing until
    /// the first good build), no snapshot.
    /// `session` signs virtual-server sessions (`None`: stateless virtual servers).
    pub fn new(
        store: Store,
        policy: Policy,
        session: Option<SessionSettings>,
        settings: EdgeSettings,
    ) -> Publisher {
        let mut versions = store.subscribe();
        versions.borrow_and_update();
        Publisher {
            store,
            policy,
            session,
            settings,
            versions,
            sets: watch::Sender::new(None),
            snapshots: watch::Sender::new(None),
        }
    }

    /// The published resource sets (the xDS server's input).
    pub fn sets(&self) -> watch::Receiver<Published> {
        self.sets.subscribe()
    }

    /// The admin API's view, serving through `ads` if xDS is enabled.
    pub fn edge(&self, ads: Option<AdsServer>) -> Edge {
        Edge {
            snapshot: self.snapshots.subscribe(),
            ads,
        }
    }

    /// Reads the registry and translates it (no publishing).
    pub async fn build(&self) -> Result<(Snapshot, ResourceSet), PublishError> {
        let view = RegistryView::read(&self.store).await?;
        let mut snapshot = assemble(&view, &self.policy)?;
        snapshot.session.clone_from(&self.session);
        snapshot.relay = self
            .settings
            .relay
            .as_ref()
            .map(|_| super::translate::RELAY_CLUSTER.to_owned());
        let set = resources(&snapshot, &endpoints(&view.gateways), &self.settings)?;
        Ok((snapshot, set))
    }

    /// Builds and publishes once; returns the registry version published. On failure
    /// nothing is published: the last good set stays.
    pub async fn publish(&self) -> Result<i64, PublishError> {
        let started = std::time::Instant::now();
        let (snapshot, set) = self.build().await?;
        let version = snapshot.version.parse::<i64>().unwrap_or_default();
        tracing::debug!(
            version,
            servers = snapshot.servers.len(),
            upstreams = snapshot.upstreams.len(),
            ms = started.elapsed().as_millis(),
            "edge configuration built"
        );
        self.snapshots.send_replace(Some(Arc::new(snapshot)));
        self.sets.send_replace(Some(Arc::new(set)));
        Ok(version)
    }

    /// [`Publisher::publish`], logging and counting the outcome.
    pub async fn publish_counted(&self, metrics: &Metrics) -> Option<i64> {
        let outcome = self.publish().await;
        record(&outcome, metrics);
        outcome.ok()
    }

    /// Publishes after every registry change (debounced) until aborted. `built` is the
    /// version already published, if any.
    pub fn spawn(mut self, metrics: Arc<Metrics>, mut built: Option<i64>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                tokio::select! {
                    changed = self.versions.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tokio::time::sleep(DEBOUNCE).await;
                        self.versions.borrow_and_update();
                    }
                    _ = poll.tick() => {
                        match self.store.registry_version().await {
                            Ok(v) if Some(v) == built => continue,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "polling the registry version");
                                continue;
                            }
                        }
                    }
                }
                if let Some(v) = self.publish_counted(&metrics).await {
                    built = Some(v);
                }
            }
        })
    }
}

/// Logs and counts the outcome of one build.
pub fn record(outcome: &Result<i64, PublishError>, metrics: &Metrics) {
    match outcome {
        Ok(_) => metrics.edge_build("ok"),
        Err(e) => {
            tracing::error!(
                error = %e,
                "edge configuration not rebuilt; Envoys keep the last good one"
            );
            metrics.edge_build(e.label());
        }
    }
}
