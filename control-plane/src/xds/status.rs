//! What each connected Envoy has been sent and has accepted: the per-node status registry
//! behind `GET /xds/nodes`, and the xDS counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use utoipa::ToSchema;

use super::TypeUrl;

/// Which ADS variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// `StreamAggregatedResources`.
    StateOfTheWorld,
    /// `DeltaAggregatedResources`.
    Delta,
}

/// One Envoy (by node id), as `GET /xds/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NodeStatus {
    /// `node.id` of the Envoy.
    pub node_id: String,
    /// `node.cluster` of the Envoy (may be empty).
    pub cluster: String,
    /// ADS streams open now (0: disconnected, kept for a while for inspection).
    pub connected_streams: u32,
    /// The ADS variant of the most recent stream.
    pub stream_kind: StreamKind,
    /// When the first of the current streams opened, or the last one closed (RFC 3339).
    pub since: String,
    /// Per type URL: what was sent, acked, rejected.
    pub types: BTreeMap<String, TypeStatus>,
}

/// The xDS state of one resource type on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct TypeStatus {
    /// Version of the last response sent.
    pub version_sent: Option<String>,
    /// Last version the node acknowledged.
    pub version_acked: Option<String>,
    /// When the last ACK arrived (RFC 3339).
    pub acked_at: Option<String>,
    /// The last rejection, if the node rejected a response since its last ACK.
    pub last_nack: Option<NackStatus>,
}

/// A NACK: Envoy refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NackStatus {
    /// Version that was rejected.
    pub version: String,
    /// Envoy's error detail (`error_detail.message`).
    pub error: String,
    /// When the NACK arrived (RFC 3339).
    pub at: String,
}

fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug)]
struct NodeEntry {
    cluster: String,
    streams: u32,
    kind: StreamKind,
    since: SystemTime,
    types: BTreeMap<TypeUrl, TypeStatus>,
}

/// The per-node registry. Streams report into it; [`NodeRegistry::nodes`] reads it.
///
/// A `std` mutex, not an async one: every critical section is a few map operations and
/// never spans an `.await`, so contention costs less than an async lock's bookkeeping,
/// and readers need no runtime.
#[derive(Debug)]
pub struct NodeRegistry {
    nodes: Mutex<HashMap<String, NodeEntry>>,
    retention: Duration,
}

impl NodeRegistry {
    /// A registry that forgets disconnected nodes after `retention`.
    pub fn new(retention: Duration) -> Self {
        NodeRegistry {
            nodes: Mutex::new(HashMap::new()),
            retention,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, NodeEntry>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn prune(&self, nodes: &mut HashMap<String, NodeEntry>, now: SystemTime) {
        nodes.retain(|_, n| {
            n.streams > 0
                || now
                    .duration_since(n.since)
                    .is_ok_and(|age| age < self.retention)
        });
    }

    /// Every known node, sorted by id.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let mut nodes = self.lock();
        self.prune(&mut nodes, SystemTime::now());
        let mut out: Vec<NodeStatus> = nodes
            .iter()
            .map(|(id, n)| NodeStatus {
                node_id: id.clone(),
                cluster: n.cluster.clone(),
                connected_streams: n.streams,
                stream_kind: n.kind,
                since: rfc3339(n.since),
                types: n
                    .types
                    .iter()
                    .map(|(t, s)| (t.as_str().to_owned(), s.clone()))
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// One node's status.
    pub fn node(&self, node_id: &str) -> Option<NodeStatus> {
        self.nodes().into_iter().find(|n| n.node_id == node_id)
    }

    pub(crate) fn connected(&self, node_id: &str, cluster: &str, kind: StreamKind) {
        let now = SystemTime::now();
        let mut nodes = self.lock();
        self.prune(&mut nodes, now);
        let n = nodes
            .entry(node_id.to_owned())
            .or_insert_with(|| NodeEntry {
                cluster: cluster.to_owned(),
                streams: 0,
                kind,
                since: now,
                types: BTreeMap::new(),
            });
        if n.streams == 0 {
            n.since = now;
        }
        n.streams += 1;
        n.kind = kind;
        n.cluster = cluster.to_owned();
    }

    pub(crate) fn disconnected(&self, node_id: &str) {
        if let Some(n) = self.lock().get_mut(node_id) {
            n.streams = n.streams.saturating_sub(1);
            if n.streams == 0 {
                n.since = SystemTime::now();
            }
        }
    }

    fn update(&self, node_id: &str, type_url: TypeUrl, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(n) = self.lock().get_mut(node_id) {
            f(n.types.entry(type_url).or_default());
        }
    }

    pub(crate) fn sent(&self, node_id: &str, type_url: TypeUrl, version: &str) {
        self.update(node_id, type_url, |s| {
            s.version_sent = Some(version.to_owned());
        });
    }

    pub(crate) fn acked(&self, node_id: &str, type_url: TypeUrl, version: &str) {
        let at = rfc3339(SystemTime::now());
        self.update(node_id, type_url, |s| {
            s.version_acked = Some(version.to_owned());
            s.acked_at = Some(at);
            s.last_nack = None;
        });
    }

    pub(crate) fn nacked(&self, node_id: &str, type_url: TypeUrl, version: &str, error: &str) {
        let at = rfc3339(SystemTime::now());
        self.update(node_id, type_url, |s| {
            s.last_nack = Some(NackStatus {
                version: version.to_owned(),
                error: error.to_owned(),
                at,
            });
        });
    }
}

type Labels = Vec<(String, String)>;

/// Totals of [`XdsMetrics`], for tests and status pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct XdsCounts {
    /// Responses sent.
    pub pushes: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
    /// Resource sets published to streams (after debouncing).
    pub publishes: u64,
}

/// xDS counters: per type (`type` label: `cds`, `lds`, …) for Prometheus, plus totals.
///
/// Prometheus families are not enumerable, so totals are kept beside them in plain
/// atomics (one extra relaxed add per event).
#[derive(Debug, Default)]
pub struct XdsMetrics {
    pushes: Family<Labels, Counter>,
    acks: Family<Labels, Counter>,
    nacks: Family<Labels, Counter>,
    streams: Gauge<i64, AtomicI64>,
    publishes: Counter,
    totals: [AtomicU64; 3],
}

impl XdsMetrics {
    /// Registers the families under `registry` (`xds_pushes`, `xds_acks`, `xds_nacks`,
    /// `xds_streams`, `xds_publishes`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_pushes",
            "xDS responses sent, by type",
            self.pushes.clone(),
        );
        registry.register("xds_acks", "xDS ACKs received, by type", self.acks.clone());
        registry.register(
            "xds_nacks",
            "xDS NACKs received (Envoy rejected a config), by type",
            self.nacks.clone(),
        );
        registry.register("xds_streams", "Open ADS streams", self.streams.clone());
        registry.register(
            "xds_publishes",
            "Resource sets published to ADS streams (after debouncing)",
            self.publishes.clone(),
        );
    }

    /// The totals so far.
    pub fn counts(&self) -> XdsCounts {
        XdsCounts {
            pushes: self.totals[0].load(Ordering::Relaxed),
            acks: self.totals[1].load(Ordering::Relaxed),
            nacks: self.totals[2].load(Ordering::Relaxed),
            publishes: self.publishes.get(),
        }
    }

    fn labels(t: TypeUrl) -> Labels {
        vec![("type".to_owned(), t.label().to_owned())]
    }

    pub(crate) fn pushed(&self, t: TypeUrl) {
        self.pushes.get_or_create(&Self::labels(t)).inc();
        self.totals[0].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn acked(&self, t: TypeUrl) {
        self.acks.get_or_create(&Self::labels(t)).inc();
        self.totals[1].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn nacked(&self, t: TypeUrl) {
        self.nacks.get_or_create(&Self::labels(t)).inc();
        self.totals[2].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn published(&self) {
        self.publishes.inc();
    }

    pub(crate) fn stream_opened(&self) {
        self.streams.inc();
    }

    pub(crate) fn stream_closed(&self) {
        self.streams.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_clears_nack_and_disconnected_nodes_expire() {
        let r = NodeRegistry::new(Duration::ZERO);
        r.connected("n1", "c", StreamKind::Delta);
        r.sent("n1", TypeUrl::Cluster, "1");
        r.nacked("n1", TypeUrl::Cluster, "1", "bad cluster");
        let s = &r.node("n1").unwrap().types[TypeUrl::Cluster.as_str()];
        assert_eq!(s.last_nack.as_ref().unwrap().error, "bad cluster");
        assert_eq!(s.version_acked, None);
        r.acked("n1", TypeUrl::Cluster, "2");
        let s = &r.node("n1").unwrap().types[TypeUrl::Cluster.as_str()];
        assert_eq!(s.version_acked.as_deref(), Some("2"));
        assert_eq!(s.last_nack, None);
        r.disconnected("n1");
        assert!(r.nodes().is_empty(), "zero retention forgets at once");
    }
}
