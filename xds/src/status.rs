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
    /// Envoy's error detail (`error_detail.message`), at most 4 KiB: a longer one ends with
    /// `… [truncated: N bytes in all]`.
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
    max_nodes: usize,
}

/// Longest node id accepted (bytes). Envoy's ids are host or pod names with a few
/// decorations (Istio's `sidecar~ip~pod.ns~ns.svc.cluster.local` is about 100).
pub const MAX_NODE_ID_BYTES: usize = 512;

/// Longest NACK detail kept per node and type (bytes). Envoy's messages name the resource
/// and the field; a few KB hold any real one, while a client could send megabytes.
pub const MAX_NACK_DETAIL_BYTES: usize = 4096;

/// Longest `node.cluster` kept (bytes); longer ones are truncated.
const MAX_NODE_CLUSTER_BYTES: usize = 256;

/// Why a stream's node was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeRefused {
    /// The node id is longer than [`MAX_NODE_ID_BYTES`].
    #[error("node.id is {len} bytes; at most {MAX_NODE_ID_BYTES} are accepted")]
    IdTooLong {
        /// Its length.
        len: usize,
    },
    /// The registry holds its maximum of nodes and this one is new.
    #[error(
        "this control plane already tracks {max} xDS nodes (connected or recently disconnected); a new node id is refused until one expires"
    )]
    Full {
        /// The cap.
        max: usize,
    },
}

impl NodeRefused {
    /// A low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            NodeRefused::IdTooLong { .. } => "node_id_too_long",
            NodeRefused::Full { .. } => "node_cap",
        }
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), with a marker saying it
/// was cut and how long it was.
fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated: {} bytes in all]", &text[..end], text.len())
}

impl NodeRegistry {
    /// A registry that forgets disconnected nodes after `retention` and holds at most
    /// `max_nodes`.
    pub fn new(retention: Duration, max_nodes: usize) -> Self {
        NodeRegistry {
            nodes: Mutex::new(HashMap::new()),
            retention,
            max_nodes,
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

    /// Records a stream of `node_id`; refuses an overlong id, and a new node once the
    /// registry is full (a node it knows may always reconnect).
    pub(crate) fn connected(
        &self,
        node_id: &str,
        cluster: &str,
        kind: StreamKind,
    ) -> Result<(), NodeRefused> {
        if node_id.len() > MAX_NODE_ID_BYTES {
            return Err(NodeRefused::IdTooLong { len: node_id.len() });
        }
        let cluster = truncated(cluster, MAX_NODE_CLUSTER_BYTES);
        let now = SystemTime::now();
        let mut nodes = self.lock();
        self.prune(&mut nodes, now);
        if !nodes.contains_key(node_id) && nodes.len() >= self.max_nodes {
            return Err(NodeRefused::Full {
                max: self.max_nodes,
            });
        }
        let n = nodes
            .entry(node_id.to_owned())
            .or_insert_with(|| NodeEntry {
                cluster: cluster.clone(),
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
        n.cluster = cluster;
        Ok(())
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

    /// Records a NACK; `error` is kept up to [`MAX_NACK_DETAIL_BYTES`], marked when cut.
    pub(crate) fn nacked(&self, node_id: &str, type_url: TypeUrl, version: &str, error: &str) {
        let at = rfc3339(SystemTime::now());
        let error = truncated(error, MAX_NACK_DETAIL_BYTES);
        self.update(node_id, type_url, |s| {
            s.last_nack = Some(NackStatus {
                version: version.to_owned(),
                error,
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
    /// Resource sets published to streams (identical consecutive sets not counted).
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
    refused: Family<Labels, Counter>,
    publishes: Counter,
    totals: [AtomicU64; 3],
}

impl XdsMetrics {
    /// Registers the families under `registry` (`xds_pushes`, `xds_acks`, `xds_nacks`,
    /// `xds_streams`, `xds_streams_refused`, `xds_publishes`).
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
            "xds_streams_refused",
            "ADS streams refused for their node (reason: node_cap, node_id_too_long)",
            self.refused.clone(),
        );
        registry.register(
            "xds_publishes",
            "Resource sets published to ADS streams (identical consecutive sets not counted)",
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

    pub(crate) fn refused(&self, reason: &NodeRefused) {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), reason.label().to_owned())])
            .inc();
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
        let r = NodeRegistry::new(Duration::ZERO, 8);
        r.connected("n1", "c", StreamKind::Delta).unwrap();
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

    #[test]
    fn new_nodes_past_the_cap_are_refused_and_known_ones_reconnect() {
        let r = NodeRegistry::new(Duration::from_secs(60), 2);
        r.connected("a", "c", StreamKind::Delta).unwrap();
        r.connected("b", "c", StreamKind::Delta).unwrap();
        assert_eq!(
            r.connected("c", "c", StreamKind::Delta),
            Err(NodeRefused::Full { max: 2 })
        );
        // Disconnected but retained: still counted, and may come back.
        r.disconnected("a");
        assert!(r.connected("c", "c", StreamKind::Delta).is_err());
        r.connected("a", "c", StreamKind::StateOfTheWorld).unwrap();
        assert_eq!(r.nodes().len(), 2);
        let long = "x".repeat(MAX_NODE_ID_BYTES + 1);
        assert_eq!(
            NodeRegistry::new(Duration::ZERO, 8).connected(&long, "c", StreamKind::Delta),
            Err(NodeRefused::IdTooLong {
                len: MAX_NODE_ID_BYTES + 1
            })
        );
    }

    #[test]
    fn nack_detail_is_cut_and_marked() {
        let r = NodeRegistry::new(Duration::from_secs(60), 8);
        r.connected("n", "c", StreamKind::Delta).unwrap();
        // Multi-byte characters across the cut: the cut stays on a character boundary.
        let long = "é".repeat(MAX_NACK_DETAIL_BYTES);
        r.nacked("n", TypeUrl::Cluster, "1", &long);
        let error = r.node("n").unwrap().types[TypeUrl::Cluster.as_str()]
            .last_nack
            .clone()
            .unwrap()
            .error;
        let marker = format!("… [truncated: {} bytes in all]", long.len());
        assert!(error.ends_with(&marker), "{error}");
        assert!(error.len() <= MAX_NACK_DETAIL_BYTES + marker.len());
        assert!(error.starts_with("éé"));
        r.nacked("n", TypeUrl::Cluster, "2", "short");
        let kept = r.node("n").unwrap().types[TypeUrl::Cluster.as_str()]
            .last_nack
            .clone()
            .unwrap()
            .error;
        assert_eq!(kept, "short");
    }
}
