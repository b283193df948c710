//! Keeps the published edge configuration current with the registry and with the
//! addresses upstream names resolve to.
//!
//! One build: read the registry ([`RegistryView::read`]), read each live gateway's access
//! ([`upstream_access`]: URL and credentials), resolve and check its addresses, assemble
//! the snapshot from all of it ([`assemble`]: the one place it is put together and
//! validated), translate it ([`resources_passing`]) and publish both. A gateway that cannot be
//! served (bad URL, credentials that do not open, no permitted address) is left out with
//! a warning and a metric; the rest is published.
//!
//! Token issuers' keys ([`IssuerKeys`]): a build fetches the keys of issuers that have none
//! yet (a new issuer is published with its keys), each issuer's keys are fetched again on its
//! own schedule (at most its `refresh_seconds`, default [`REFRESH_INTERVAL`], sooner when its
//! JWKS's `max-age` says so; a failure keeps the last good keys), an operator's request
//! ([`Edge::refresh_issuer`]) fetches one issuer's at once, and the control plane's own signing
//! keys are handed in for the issuer entry that names its own `jwt_issuer`, so the tokens it
//! signs are accepted at the edge (checked every poll: a key rotation is published within
//! seconds).
//!
//! One debounce: registry changes are gathered for [`DEBOUNCE`] before a build (the read
//! is what a burst costs); the xDS server pushes what it is given.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mcpgw_core::snapshot::{Policy, SessionSettings, Snapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[cfg(doc)]
use super::issuers::REFRESH_INTERVAL;
use super::issuers::{IssuerKeys, RefreshError, Refreshed, key_client};
use super::resolve::{AddressError, checked_addresses};
use super::translate::{
    EdgeError, EdgeSettings, EdgeUpstream, EdgeUpstreams, RATELIMIT_CLUSTER, RELAY_CLUSTER,
    resources_passing,
};
use super::upstream::{UpstreamAccess, upstream_access};
use crate::config::SsrfPolicy;
use crate::crypto::SecretBox;
use crate::model::AuthType;
use crate::snapshot::{RegistryView, Shadowed, SnapshotInputs, assemble_reporting};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::xds::{AdsServer, Published, ResourceSet};

/// The key of a gateway's token endpoint among the resolved addresses.
fn token_key(id: &str) -> String {
    format!("{id}#token")
}

/// How long registry changes are gathered before one rebuild: the first change after a
/// quiet period starts the timer, every change until it fires is folded into one build.
/// A leading timer rather than a trailing one that restarts on every change: a registry
/// that never stops changing still gets a build every `DEBOUNCE`, instead of never.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the registry version is polled besides the in-process change notifications:
/// catches writes by other control-plane replicas sharing a PostgreSQL database, and
/// retries a failed build.
const POLL: Duration = Duration::from_secs(5);
/// How often the issuers' key schedules are looked at (a fetch happens only for an issuer
/// that is due; the shortest interval between two is 30 s).
const KEY_CHECK: Duration = Duration::from_secs(5);

/// An operator's request to fetch one issuer's keys now, and where the answer goes.
type RefreshRequest = (
    mcpgw_core::snapshot::auth::Issuer,
    tokio::sync::oneshot::Sender<Result<Refreshed, RefreshError>>,
);

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

/// What the operator decides about every snapshot, and the key that opens credentials.
#[derive(Debug, Clone)]
pub struct EdgeInputs {
    /// The request policy every filter enforces.
    pub policy: Policy,
    /// Signs virtual-server sessions (`None`: stateless virtual servers).
    pub session: Option<SessionSettings>,
    /// What the Envoys are told besides the snapshot.
    pub settings: EdgeSettings,
    /// Opens the gateways' sealed credentials.
    pub secrets: SecretBox,
    /// Which upstream addresses Envoys may connect to.
    pub ssrf: SsrfPolicy,
}

/// One successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The registry version it was built from.
    pub version: i64,
    /// Gateways left out, with why (`EdgeError::label`).
    pub left_out: Vec<(String, &'static str)>,
    /// Entries virtual servers left out because another member exposes the same name.
    pub shadowed: Vec<Shadowed>,
    /// Why the `edge_passthrough` gateway is not served (`None`: it is, or none is set):
    /// the passthrough path answers 404 meanwhile.
    pub passthrough_unresolved: Option<String>,
}

/// What the edge has for the gateways of one registry read: their access, and the last
/// addresses resolved for each.
#[derive(Debug, Default)]
struct Edges {
    view: Option<Arc<RegistryView>>,
    access: BTreeMap<String, Result<UpstreamAccess, EdgeError>>,
    addresses: BTreeMap<String, Result<Vec<IpAddr>, AddressError>>,
}

/// What the control plane currently serves to Envoys, as the admin API sees it.
#[derive(Debug, Clone)]
pub struct Edge {
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    ads: Option<AdsServer>,
    refresh: tokio::sync::mpsc::Sender<RefreshRequest>,
    public_url: Option<String>,
}

impl Edge {
    /// The URL clients reach the MCP listener at, if the operator set one
    /// ([`super::EdgeSettings::public_url`]).
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    /// The last snapshot built successfully (`None` until the first build succeeds).
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    /// The xDS server, if xDS is enabled.
    pub fn ads(&self) -> Option<&AdsServer> {
        self.ads.as_ref()
    }

    /// Fetches `issuer`'s keys now and, if they changed, publishes the edge configuration
    /// before answering ([`IssuerKeys::refresh_one`]: at most once per 30 s per issuer).
    pub async fn refresh_issuer(
        &self,
        issuer: mcpgw_core::snapshot::auth::Issuer,
    ) -> Result<Refreshed, RefreshError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.refresh
            .send((issuer, reply))
            .await
            .map_err(|_| RefreshError::Unavailable)?;
        answer.await.map_err(|_| RefreshError::Unavailable)?
    }
}

/// Rebuilds the snapshot and its xDS resources after registry changes (and upstream
/// address changes) and publishes them.
#[derive(Debug)]
pub struct Publisher {
    store: Store,
    inputs: EdgeInputs,
    /// Subscribed at creation, so no change between the first build and [`Publisher::spawn`]
    /// is missed.
    versions: watch::Receiver<i64>,
    sets: watch::Sender<Published>,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    /// What the last build read. A `std` mutex: never held across an `.await`.
    edges: Mutex<Edges>,
    /// Token issuers' keys, fetched or set.
    keys: Arc<IssuerKeys>,
    /// Fetches issuers' keys (`None`: the client could not be built; issuers without inline
    /// keys then get none).
    key_http: Option<reqwest::Client>,
    /// The control plane's own token signer, whose keys an issuer entry naming its
    /// `jwt_issuer` gets.
    own: Option<Arc<crate::auth::Auth>>,
    /// Operators' refresh requests ([`Edge::refresh_issuer`]), served by the task.
    refresh_requests: tokio::sync::mpsc::Receiver<RefreshRequest>,
    refresh_sender: tokio::sync::mpsc::Sender<RefreshRequest>,
}

impl Publisher {
    /// A publisher with nothing published yet: no resource set (xDS answers nothing until
    /// the first good build), no snapshot.
    pub fn new(store: Store, inputs: EdgeInputs) -> Publisher {
        let mut versions = store.subscribe();
        versions.borrow_and_update();
        let (refresh_sender, refresh_requests) = tokio::sync::mpsc::channel(16);
        Publisher {
            refresh_requests,
            refresh_sender,
            store,
            inputs,
            versions,
            sets: watch::Sender::new(None),
            snapshots: watch::Sender::new(None),
            edges: Mutex::new(Edges::default()),
            keys: Arc::new(IssuerKeys::new()),
            key_http: key_client()
                .inspect_err(|e| tracing::error!(error = %e, "no HTTP client for issuers' keys"))
                .ok(),
            own: None,
        }
    }

    /// Hands the control plane's own signing keys to the issuer entry whose `issuer` is its
    /// `jwt_issuer` (tokens it signs are then accepted at the edge).
    pub fn with_own_issuer(mut self, auth: Arc<crate::auth::Auth>) -> Publisher {
        self.own = Some(auth);
        self
    }

    /// The issuers' keys this publisher holds.
    pub fn issuer_keys(&self) -> Arc<IssuerKeys> {
        Arc::clone(&self.keys)
    }

    /// The control plane's own public keys, as a JWKS text, with the issuer they are for.
    async fn own_keys(&self) -> Option<(String, String)> {
        let auth = self.own.as_ref()?;
        let issuer = auth.settings().jwt.issuer.clone();
        Some((issuer, auth.jwks().await.to_string()))
    }

    /// Sets the control plane's own keys; whether they changed.
    async fn set_own_keys(&self) -> bool {
        match self.own_keys().await {
            Some((issuer, jwks)) => {
                let changed = self.keys.get(&issuer).as_deref() != Some(jwks.as_str());
                if changed {
                    self.keys.set(&issuer, jwks);
                }
                changed
            }
            None => false,
        }
    }

    /// Fetches the keys of the view's issuers that have none yet.
    async fn fetch_missing_keys(&self, view: &RegistryView) {
        let Some(http) = &self.key_http else {
            return;
        };
        let auth = mcpgw_core::snapshot::auth::Auth {
            issuers: view.edge.issuers.clone(),
            ..Default::default()
        };
        for e in self.keys.fetch_missing(http, &auth).await {
            tracing::warn!(error = %e, label = e.label(), "issuer keys not fetched; retried shortly");
        }
    }

    /// Fetches the keys of the issuers that are due again; whether any changed.
    async fn refresh_keys(&self) -> bool {
        let view = self.edges().view.clone();
        let (Some(http), Some(view)) = (&self.key_http, view) else {
            return false;
        };
        let auth = mcpgw_core::snapshot::auth::Auth {
            issuers: view.edge.issuers.clone(),
            ..Default::default()
        };
        let before = self.keys.held();
        for e in self.keys.refresh_due(http, &auth).await {
            tracing::warn!(error = %e, label = e.label(), "issuer keys not refreshed; the last good ones stay");
        }
        self.keys.held() != before
    }

    /// The published resource sets (the xDS server's input).
    pub fn sets(&self) -> watch::Receiver<Published> {
        self.sets.subscribe()
    }

    /// The published snapshots (the session relay follows the catalogs in them).
    pub fn snapshots(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshots.subscribe()
    }

    /// The admin API's view, serving through `ads` if xDS is enabled.
    pub fn edge(&self, ads: Option<AdsServer>) -> Edge {
        Edge {
            snapshot: self.snapshots.subscribe(),
            ads,
            refresh: self.refresh_sender.clone(),
            public_url: self.inputs.settings.public_url.clone(),
        }
    }

    /// Reads each live gateway's access: its URL, and its credentials where it has some.
    async fn read_access(
        &self,
        view: &RegistryView,
    ) -> Result<BTreeMap<String, Result<UpstreamAccess, EdgeError>>, StoreError> {
        let mut out = BTreeMap::new();
        for g in view.gateways.iter().filter(|g| g.enabled && g.reachable) {
            let sealed = if g.auth_type == AuthType::None {
                None
            } else {
                self.store.gateway_auth(&g.id).await?.1
            };
            let identity_sealed = if g.identity.mode == crate::model::IdentityMode::TokenExchange {
                self.store.gateway_identity_secret(&g.id).await?
            } else {
                None
            };
            out.insert(
                g.id.clone(),
                upstream_access(
                    g,
                    sealed.as_deref(),
                    identity_sealed.as_deref(),
                    &self.inputs.secrets,
                ),
            );
        }
        Ok(out)
    }

    /// Resolves and checks the addresses of every upstream in `access`. A name that does
    /// not resolve now keeps its previous addresses, if any (a DNS hiccup must not withdraw
    /// an upstream); a forbidden address withdraws it at once.
    async fn resolve(
        &self,
        access: &BTreeMap<String, Result<UpstreamAccess, EdgeError>>,
        previous: &BTreeMap<String, Result<Vec<IpAddr>, AddressError>>,
    ) -> BTreeMap<String, Result<Vec<IpAddr>, AddressError>> {
        let resolver = self.inputs.settings.resolver.0.clone();
        let ssrf = self.inputs.ssrf;
        // A token-exchange gateway's token endpoint is checked like its URL, under the key
        // `token_key(id)`.
        let lookups = access.iter().flat_map(|(id, a)| {
            let a = a.as_ref().ok();
            let own = a.map(|a| (id.clone(), a.target.endpoint.clone()));
            let token = a
                .and_then(|a| a.token_endpoint.as_ref())
                .map(|t| (token_key(id), t.target.endpoint.clone()));
            own.into_iter().chain(token).map(|(key, e)| {
                let resolver = resolver.clone();
                async move {
                    let got = checked_addresses(&*resolver, &e.host, e.port, ssrf).await;
                    (key, got)
                }
            })
        });
        let mut out = BTreeMap::new();
        for (id, got) in futures::future::join_all(lookups).await {
            let got = match (got, previous.get(&id)) {
                (Err(e @ AddressError::Unresolvable { .. }), Some(Ok(last))) => {
                    tracing::warn!(gateway = %id, error = %e, "keeping the upstream's last checked addresses");
                    Ok(last.clone())
                }
                (got, _) => got,
            };
            out.insert(id, got);
        }
        out
    }

    /// Assembles and translates what `edges` holds (no I/O).
    fn assemble(&self, edges: &Edges) -> Result<(Snapshot, ResourceSet, Built), PublishError> {
        let Some(view) = &edges.view else {
            return Err(StoreError::Corrupt("nothing read yet".into()).into());
        };
        let mut left_out = Vec::new();
        let mut upstreams = EdgeUpstreams::new();
        for (id, access) in &edges.access {
            let usable = access
                .clone()
                .and_then(|access| match edges.addresses.get(id) {
                    Some(Ok(addresses)) => {
                        let token_addresses =
                            match (&access.token_endpoint, edges.addresses.get(&token_key(id))) {
                                (None, _) => Vec::new(),
                                (Some(_), Some(Ok(a))) => a.clone(),
                                (Some(_), Some(Err(e))) => {
                                    return Err(EdgeError::Address {
                                        gateway: id.clone(),
                                        source: e.clone(),
                                    });
                                }
                                (Some(_), None) => {
                                    return Err(EdgeError::MissingEndpoint(id.clone()));
                                }
                            };
                        Ok(EdgeUpstream {
                            access,
                            addresses: addresses.clone(),
                            token_addresses,
                        })
                    }
                    Some(Err(e)) => Err(EdgeError::Address {
                        gateway: id.clone(),
                        source: e.clone(),
                    }),
                    None => Err(EdgeError::MissingEndpoint(id.clone())),
                });
            match usable {
                Ok(u) => {
                    upstreams.insert(id.clone(), u);
                }
                Err(e) => {
                    tracing::warn!(gateway = %id, error = %e, "gateway left out of the edge configuration");
                    left_out.push((id.clone(), e.label()));
                }
            }
        }
        let inputs = SnapshotInputs {
            policy: self.inputs.policy.clone(),
            session: self.inputs.session.clone(),
            relay: self
                .inputs
                .settings
                .relay
                .as_ref()
                .map(|_| RELAY_CLUSTER.to_owned()),
            ratelimit: self
                .inputs
                .settings
                .ratelimit
                .as_ref()
                .map(|_| RATELIMIT_CLUSTER.to_owned()),
            upstreams: upstreams
                .iter()
                .map(|(id, u)| {
                    let cluster = self
                        .inputs
                        .settings
                        .cluster_naming
                        .cluster_name(id, &u.access.target.endpoint);
                    let identity = u
                        .access
                        .snapshot_identity(id, &cluster, &self.inputs.secrets);
                    (
                        id.clone(),
                        u.access.target.snapshot_entry(cluster, identity),
                    )
                })
                .collect(),
        };
        let (mut snapshot, shadowed) = assemble_reporting(view, &inputs)?;
        self.keys.apply(&mut snapshot);
        route_tools_to_gateways(view, &mut snapshot);
        snapshot.validate().map_err(|e| {
            StoreError::Corrupt(format!("snapshot with the issuers' keys is invalid: {e}"))
        })?;
        for s in &shadowed {
            tracing::warn!(
                server = %s.server,
                list = s.list,
                name = %s.name,
                item = %s.item,
                kept = %s.kept,
                "entry left out of a virtual server: another member, registered first, exposes the same name"
            );
        }
        let passthrough =
            passthrough_gateway(self.inputs.settings.passthrough.as_deref(), view, &snapshot);
        if let Err(why) = &passthrough {
            tracing::warn!(reason = %why, "edge_passthrough: the passthrough path answers 404");
        }
        let set = resources_passing(
            &snapshot,
            &upstreams,
            &self.inputs.settings,
            passthrough.as_ref().ok().and_then(Option::as_deref),
        )?;
        let built = Built {
            version: view.version,
            left_out,
            shadowed,
            passthrough_unresolved: passthrough.err(),
        };
        Ok((snapshot, set, built))
    }

    fn edges(&self) -> std::sync::MutexGuard<'_, Edges> {
        self.edges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the registry, resolves the upstreams and translates (no publishing).
    pub async fn build(&self) -> Result<(Snapshot, ResourceSet, Built), PublishError> {
        let view = RegistryView::read(&self.store).await?;
        self.set_own_keys().await;
        self.fetch_missing_keys(&view).await;
        let access = self.read_access(&view).await?;
        let previous = self.edges().addresses.clone();
        let addresses = self.resolve(&access, &previous).await;
        let edges = Edges {
            view: Some(Arc::new(view)),
            access,
            addresses,
        };
        let built = self.assemble(&edges);
        if built.is_ok() {
            *self.edges() = edges;
        }
        built
    }

    fn publish_built(&self, snapshot: Snapshot, set: ResourceSet) {
        self.snapshots.send_replace(Some(Arc::new(snapshot)));
        self.sets.send_replace(Some(Arc::new(set)));
    }

    /// Builds and publishes once. On failure nothing is published: the last good set
    /// stays (and before the first good one, xDS answers nothing).
    pub async fn publish(&self) -> Result<Built, PublishError> {
        let started = std::time::Instant::now();
        let (snapshot, set, built) = self.build().await?;
        tracing::debug!(
            version = built.version,
            servers = snapshot.servers.len(),
            upstreams = snapshot.upstreams.len(),
            left_out = built.left_out.len(),
            ms = started.elapsed().as_millis(),
            "edge configuration built"
        );
        self.publish_built(snapshot, set);
        Ok(built)
    }

    /// Resolves the upstreams of the last build again; publishes a new configuration if an
    /// upstream's addresses (or whether it has permitted ones) changed. `None`: nothing
    /// changed, or nothing was built yet.
    pub async fn refresh_addresses(&self) -> Option<Result<Built, PublishError>> {
        let (access, previous) = {
            let edges = self.edges();
            edges.view.as_ref()?;
            (edges.access.clone(), edges.addresses.clone())
        };
        let addresses = self.resolve(&access, &previous).await;
        if addresses == previous {
            return None;
        }
        let outcome = {
            let mut edges = self.edges();
            edges.addresses = addresses;
            self.assemble(&edges)
        };
        Some(outcome.map(|(snapshot, set, built)| {
            tracing::info!(
                version = built.version,
                "upstream addresses changed: edge configuration republished"
            );
            self.publish_built(snapshot, set);
            built
        }))
    }

    /// [`Publisher::publish`], logging and counting the outcome.
    pub async fn publish_counted(&self, metrics: &Metrics) -> Option<i64> {
        let outcome = self.publish().await;
        record(&outcome, metrics);
        outcome.ok().map(|b| b.version)
    }

    /// Publishes after every registry change (debounced), and re-resolves upstream names
    /// every [`EdgeSettings::resolve_interval`], until aborted. `built` is the version
    /// already published, if any.
    pub fn spawn(mut self, metrics: Arc<Metrics>, mut built: Option<i64>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            let mut resolve = tokio::time::interval(self.inputs.settings.resolve_interval);
            resolve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            resolve.tick().await;
            let mut keys = tokio::time::interval(KEY_CHECK);
            keys.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            keys.tick().await;
            let (_, idle) = tokio::sync::mpsc::channel(1);
            let mut requests = std::mem::replace(&mut self.refresh_requests, idle);
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
                        // A rotated signing key is published at once (tokens it signs
                        // must pass the edge).
                        let own_changed = self.set_own_keys().await;
                        match self.store.registry_version().await {
                            Ok(_) if own_changed => {}
                            Ok(v) if Some(v) == built => continue,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "polling the registry version");
                                continue;
                            }
                        }
                    }
                    _ = keys.tick() => {
                        if !self.refresh_keys().await {
                            continue;
                        }
                    }
                    Some((issuer, reply)) = requests.recv() => {
                        let got = match &self.key_http {
                            Some(http) => self.keys.refresh_one(http, &issuer).await,
                            None => Err(RefreshError::Unavailable),
                        };
                        // Published before the answer: "refreshed" means the Envoys are
                        // being sent the keys.
                        if matches!(&got, Ok(r) if r.changed)
                            && let Some(v) = self.publish_counted(&metrics).await
                        {
                            built = Some(v);
                        }
                        let _ = reply.send(got);
                        continue;
                    }
                    _ = resolve.tick() => {
                        if let Some(outcome) = self.refresh_addresses().await {
                            record(&outcome, &metrics);
                        }
                        continue;
                    }
                }
                if let Some(v) = self.publish_counted(&metrics).await {
                    built = Some(v);
                }
            }
        })
    }
}

/// The gateway id `name` (`edge_passthrough`) names, if the snapshot serves it; `Ok(None)`
/// when no passthrough gateway is set; otherwise why not.
fn passthrough_gateway(
    name: Option<&str>,
    view: &RegistryView,
    snapshot: &Snapshot,
) -> Result<Option<String>, String> {
    let Some(name) = name else {
        return Ok(None);
    };
    // Fail closed: a passthrough policy the snapshot could not take would leave the path
    // open to anyone.
    if view
        .edge
        .policies
        .contains_key(crate::snapshot::PASSTHROUGH_POLICY)
        && snapshot.auth.passthrough.is_none()
    {
        return Err(
            "its policy (/policies/passthrough) is unusable (see the warning about it)".to_owned(),
        );
    }
    let g = view
        .gateways
        .iter()
        .find(|g| g.name.as_str() == name)
        .ok_or_else(|| format!("no gateway is named {name:?}"))?;
    if snapshot.upstreams.contains_key(&g.id) {
        return Ok(Some(g.id.clone()));
    }
    Err(if !g.enabled {
        format!("gateway {name:?} is disabled")
    } else if !g.reachable {
        format!("gateway {name:?} is unreachable")
    } else {
        format!("gateway {name:?} is left out of the edge (see the warning about it)")
    })
}

/// Points the policy's `tool_routes` that name a gateway (by name) at that gateway's
/// cluster; a value naming no gateway is taken as a cluster name, as the filter reads it.
/// A gateway the edge does not serve keeps its name: the call finds no cluster (503).
fn route_tools_to_gateways(view: &RegistryView, snapshot: &mut Snapshot) {
    let Snapshot {
        policy, upstreams, ..
    } = snapshot;
    for (tool, target) in &mut policy.tool_routes {
        let Some(g) = view.gateways.iter().find(|g| g.name.as_str() == target) else {
            continue;
        };
        match upstreams.get(&g.id) {
            Some(up) => target.clone_from(&up.cluster),
            None => tracing::warn!(
                tool = %tool,
                gateway = %target,
                "policy.tool_routes names a gateway the edge does not serve (disabled, unreachable or left out): calls to the tool fail with 503"
            ),
        }
    }
}

/// Logs and counts the outcome of one build, and the gateways it left out.
pub fn record(outcome: &Result<Built, PublishError>, metrics: &Metrics) {
    match outcome {
        Ok(built) => {
            metrics.edge_build("ok");
            let reasons: Vec<&'static str> = built.left_out.iter().map(|(_, r)| *r).collect();
            metrics.edge_left_out(&reasons);
            let lists: Vec<&'static str> = built.shadowed.iter().map(|s| s.list).collect();
            metrics.edge_shadowed(&lists);
            metrics.edge_passthrough_unresolved(built.passthrough_unresolved.is_some());
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                "edge configuration not rebuilt; Envoys keep the last good one"
            );
            metrics.edge_build(e.label());
        }
    }
}
