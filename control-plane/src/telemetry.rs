//! Logs (`tracing`, text or JSON) and Prometheus metrics.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::LogFormat;
use crate::xds::XdsMetrics;

type Labels = Vec<(String, String)>;

/// The control plane's metrics.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<Labels, Counter>,
    http_duration: Family<Labels, Histogram>,
    registry_version: Gauge<i64, AtomicI64>,
    federation_refreshes: Family<Labels, Counter>,
    health_transitions: Family<Labels, Counter>,
    edge_builds: Family<Labels, Counter>,
    edge_left_out: Family<Labels, Gauge<i64, AtomicI64>>,
    edge_passthrough_unresolved: Gauge<i64, AtomicI64>,
    edge_shadowed: Family<Labels, Gauge<i64, AtomicI64>>,
    list_changed: Family<Labels, Counter>,
    discovery_skipped: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mcpgw");
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "Admin API requests by method, route and status",
            http_requests.clone(),
        );
        let http_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Admin API request latency by route",
            http_duration.clone(),
        );
        let registry_version = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "registry_version",
            "Current registry version (bumped by every registry change)",
            registry_version.clone(),
        );
        let federation_refreshes = Family::<Labels, Counter>::default();
        registry.register(
            "federation_refreshes",
            "Upstream discovery runs by outcome",
            federation_refreshes.clone(),
        );
        let health_transitions = Family::<Labels, Counter>::default();
        registry.register(
            "gateway_health_transitions",
            "Gateways becoming reachable or unreachable",
            health_transitions.clone(),
        );
        let edge_builds = Family::<Labels, Counter>::default();
        registry.register(
            "edge_builds",
            "Rebuilds of the edge configuration (snapshot and xDS resources) by outcome",
            edge_builds.clone(),
        );
        let edge_left_out = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "edge_upstreams_left_out",
            "Gateways the last edge build left out, by reason (bad_url, credentials, forbidden_address, unresolvable)",
            edge_left_out.clone(),
        );
        let edge_passthrough_unresolved = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "edge_passthrough_unresolved",
            "1 when edge_passthrough names a gateway the last edge build could not serve (none by that name, disabled, unreachable or left out): the passthrough path answers 404",
            edge_passthrough_unresolved.clone(),
        );
        let edge_shadowed = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "edge_entries_shadowed",
            "Entries the last edge build left out of virtual servers because another member, registered first, exposes the same name, by list (tools, resources, resource_templates, prompts)",
            edge_shadowed.clone(),
        );
        let list_changed = Family::<Labels, Counter>::default();
        registry.register(
            "federation_list_changed",
            "Upstream list_changed notifications by what became of them (scheduled: a rediscovery; coalesced: folded into a pending one)",
            list_changed.clone(),
        );
        let discovery_skipped = Family::<Labels, Counter>::default();
        registry.register(
            "federation_skipped_items",
            "Discovered items left out of the catalog, by reason (invalid_name, too_large)",
            discovery_skipped.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            registry_version,
            federation_refreshes,
            health_transitions,
            edge_builds,
            edge_left_out,
            edge_passthrough_unresolved,
            edge_shadowed,
            list_changed,
            discovery_skipped,
        }
    }

    /// Adds the xDS server's counters (`mcpgw_xds_*`) to what `/metrics` renders.
    pub fn register_xds(&mut self, xds: &XdsMetrics) {
        xds.register(&mut self.registry);
    }

    /// Adds the store's metrics (`mcpgw_store_*`).
    pub fn register_store(&mut self, store: &crate::store::StoreMetrics) {
        store.register(&mut self.registry);
    }

    /// Adds the session relay's metrics.
    pub fn register_relay(&mut self, relay: &crate::relay::RelayMetrics) {
        relay.register(&mut self.registry);
    }

    /// Counts one rebuild of the edge configuration (`ok` or an error label).
    pub fn edge_build(&self, outcome: &str) {
        self.edge_builds
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Sets the gateways the last edge build left out: one reason label per gateway.
    pub fn edge_left_out(&self, reasons: &[&'static str]) {
        for known in [
            "bad_url",
            "credentials",
            "forbidden_address",
            "unresolvable",
        ] {
            let n = reasons.iter().filter(|r| **r == known).count();
            self.edge_left_out
                .get_or_create(&vec![("reason".into(), known.into())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets whether the last edge build could not serve the `edge_passthrough` gateway.
    pub fn edge_passthrough_unresolved(&self, unresolved: bool) {
        self.edge_passthrough_unresolved.set(i64::from(unresolved));
    }

    /// Sets the entries the last edge build left out of virtual servers for a name another
    /// member exposes: one list label per entry.
    pub fn edge_shadowed(&self, lists: &[&'static str]) {
        for known in ["tools", "resources", "resource_templates", "prompts"] {
            let n = lists.iter().filter(|l| **l == known).count();
            self.edge_shadowed
                .get_or_create(&vec![("list".into(), known.into())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts one API request.
    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("route".into(), route.into()),
                ("status".into(), status.to_string()),
            ])
            .inc();
        self.http_duration
            .get_or_create(&vec![("route".into(), route.into())])
            .observe(seconds);
    }

    /// Counts one discovery run.
    pub fn federation_refresh(&self, outcome: &str) {
        self.federation_refreshes
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Counts one list_changed notification (`scheduled` or `coalesced`).
    pub fn list_changed(&self, outcome: &str) {
        self.list_changed
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Counts one discovered item left out (`invalid_name`, `too_large`).
    pub fn discovery_skipped(&self, reason: &str) {
        self.discovery_skipped
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// Counts a health transition (`reachable` or `unreachable`).
    pub fn health_transition(&self, to: &str) {
        self.health_transitions
            .get_or_create(&vec![("to".into(), to.into())])
            .inc();
    }

    /// Renders the Prometheus text format.
    pub fn render(&self, registry_version: i64) -> Result<String, std::fmt::Error> {
        self.registry_version.set(registry_version);
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Installs the global tracing subscriber. Returns an error if one is already set.
pub fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .try_init()
            .map_err(|e| anyhow::anyhow!("tracing init: {e}"))?,
        LogFormat::Json => builder
            .json()
            .try_init()
            .map_err(|e| anyhow::anyhow!("tracing init: {e}"))?,
    }
    Ok(())
}
