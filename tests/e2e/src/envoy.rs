//! The gateway under test: a real Envoy with the mcpgw wasm filter (optional), the router,
//! static clusters, admin, and the `stats_tags` of docs/filter.md, on the shared harness.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::anyhow;
use mcpgw_harness::bootstrap::{self, LISTENER, StaticBootstrap};
use mcpgw_harness::{Launch, envoy};
use serde_json::{Value, json};

use crate::artifacts::Artifacts;
use crate::standalone::{EdgeMode, Standalone};

pub use mcpgw_harness::bootstrap::stats_tags;
pub use mcpgw_harness::envoy::READY_TIMEOUT;

/// The listener's `per_connection_buffer_limit_bytes` (16 MiB).
pub const LISTENER_BUFFER_LIMIT: u32 = 16 * 1024 * 1024;

/// One static upstream cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Cluster name (what `policy.tool_routes` names).
    pub name: String,
    /// Where the upstream listens.
    pub addr: SocketAddr,
    /// Request headers its upstream filters remove, then add (as the control plane's
    /// clusters replace the client's credentials with a gateway's own).
    pub headers: Option<HeaderRules>,
}

/// Request headers a cluster's upstream filters remove, then add (`(name, value)`).
pub type HeaderRules = (Vec<String>, Vec<(String, String)>);

/// One route of the listener's virtual host, matched in order.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix to match.
    pub prefix: String,
    /// Rewrite the matched prefix to this (e.g. `/everything/mcp` → `/mcp`).
    pub prefix_rewrite: Option<String>,
    /// Also require this exact request header value.
    pub header: Option<(String, String)>,
    /// Target cluster.
    pub cluster: String,
}

/// What to put in front of the upstreams.
#[derive(Debug, Clone, Default)]
pub struct EnvoyConfig {
    /// Plugin configuration JSON for the mcpgw filter; `None` runs Envoy without the filter.
    pub filter_config: Option<String>,
    /// Static clusters.
    pub clusters: Vec<Cluster>,
    /// Static HTTP/2 clusters (gRPC services the filter calls).
    pub grpc_clusters: Vec<Cluster>,
    /// Routes; when empty, `/` goes to the first cluster.
    pub routes: Vec<Route>,
    /// HTTP filters before the mcpgw filter (e.g. `jwt_authn`).
    pub before_filter: Vec<Value>,
    /// Request headers removed before any filter runs (the connection manager's early
    /// header mutation), as the generated listener removes its internal headers.
    pub strip_headers: Vec<String>,
}

impl EnvoyConfig {
    /// Envoy with the filter configured by `filter_config` (JSON text) in front of `upstream`.
    pub fn with_filter(filter_config: &str, upstream: SocketAddr) -> Self {
        Self {
            filter_config: Some(filter_config.to_owned()),
            clusters: vec![Cluster {
                name: "upstream".into(),
                addr: upstream,
                headers: None,
            }],
            grpc_clusters: Vec::new(),
            routes: Vec::new(),
            before_filter: Vec::new(),
            strip_headers: Vec::new(),
        }
    }

    /// Adds a static HTTP/2 cluster (a gRPC service the filter calls).
    pub fn grpc_cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.grpc_clusters.push(Cluster {
            name: name.into(),
            addr,
            headers: None,
        });
        self
    }

    /// Adds a static cluster.
    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.push(Cluster {
            name: name.into(),
            addr,
            headers: None,
        });
        self
    }

    /// Adds a static cluster whose upstream filters remove `remove` and add `add` on every
    /// request (routed, or the filter's own calls).
    pub fn cluster_with_headers(
        mut self,
        name: &str,
        addr: SocketAddr,
        remove: &[&str],
        add: &[(&str, &str)],
    ) -> Self {
        self.clusters.push(Cluster {
            name: name.into(),
            addr,
            headers: Some((
                remove.iter().map(|h| (*h).to_owned()).collect(),
                add.iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
            )),
        });
        self
    }

    /// Adds a route by path prefix, rewriting the prefix to `/mcp`.
    pub fn mount(mut self, prefix: &str, cluster: &str) -> Self {
        self.routes.push(Route {
            prefix: prefix.into(),
            prefix_rewrite: Some("/mcp".into()),
            header: None,
            cluster: cluster.into(),
        });
        self
    }

    /// Adds a route taken when request header `name` equals `value`.
    pub fn route_on_header(mut self, name: &str, value: &str, cluster: &str) -> Self {
        self.routes.push(Route {
            prefix: "/".into(),
            prefix_rewrite: None,
            header: Some((name.into(), value.into())),
            cluster: cluster.into(),
        });
        self
    }

    /// The bootstrap document (JSON, which Envoy also reads as YAML).
    pub fn bootstrap(&self, wasm: &Path) -> anyhow::Result<Value> {
        let first = self
            .clusters
            .first()
            .ok_or_else(|| anyhow!("EnvoyConfig needs at least one cluster"))?;
        let mut routes: Vec<Value> = self.routes.iter().map(route_json).collect();
        if !self
            .routes
            .iter()
            .any(|r| r.prefix == "/" && r.header.is_none())
        {
            routes.push(route_json(&Route {
                prefix: "/".into(),
                prefix_rewrite: None,
                header: None,
                cluster: first.name.clone(),
            }));
        }
        let http_filters = self
            .before_filter
            .iter()
            .cloned()
            .chain(
                self.filter_config
                    .iter()
                    .map(|config| wasm_filter(config, wasm)),
            )
            .collect();
        let h2 = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }});
        let clusters = self
            .clusters
            .iter()
            .map(|c| {
                let mut cluster = bootstrap::static_cluster(&c.name, c.addr, "2s");
                if let Some((remove, add)) = &c.headers {
                    cluster["typed_extension_protocol_options"] = header_mutation(remove, add);
                }
                cluster
            })
            .chain(self.grpc_clusters.iter().map(|c| {
                let mut cluster = bootstrap::static_cluster(&c.name, c.addr, "1s");
                cluster["typed_extension_protocol_options"] = h2.clone();
                cluster
            }))
            .collect();
        let mut doc = StaticBootstrap {
            http_filters,
            routes,
            clusters,
            // Above any max_body_bytes the tests use, so the filter's own 413 applies
            // (docs/filter.md: Envoy answers a plain 413 past this buffer limit).
            buffer_limit: Some(LISTENER_BUFFER_LIMIT),
            stream_idle_timeout: Some("0s".into()),
        }
        .to_json();
        if !self.strip_headers.is_empty() {
            let mutations: Vec<Value> = self
                .strip_headers
                .iter()
                .map(|h| json!({"remove": h}))
                .collect();
            let manager = doc
                .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
                .ok_or_else(|| anyhow!("the bootstrap has no connection manager"))?;
            manager["early_header_mutation_extensions"] = json!([{
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    "mutations": mutations
                }
            }]);
        }
        Ok(doc)
    }

    /// The bootstrap for `artifacts`: the filter module must exist when the filter is on.
    fn bootstrap_text(&self, artifacts: &Artifacts) -> anyhow::Result<String> {
        let wasm: PathBuf = if self.filter_config.is_some() {
            artifacts.wasm()?.to_owned()
        } else {
            artifacts.wasm.clone()
        };
        Ok(serde_json::to_string_pretty(&self.bootstrap(&wasm)?)?)
    }
}

/// The mcpgw wasm filter entry exactly as docs/filter.md shows it.
pub fn wasm_filter(config: &str, wasm: &Path) -> Value {
    bootstrap::wasm_filter("mcpgw", config, wasm)
}

fn route_json(r: &Route) -> Value {
    let mut m = json!({"prefix": r.prefix});
    if let Some((name, value)) = &r.header {
        m["headers"] = json!([{"name": name, "string_match": {"exact": value}}]);
    }
    let mut route = json!({"cluster": r.cluster, "timeout": "0s"});
    if let Some(rw) = &r.prefix_rewrite {
        route["prefix_rewrite"] = json!(rw);
    }
    json!({"match": m, "route": route})
}

/// A running Envoy in front of the upstreams; killed on drop.
#[derive(Debug)]
pub struct Envoy {
    envoy: mcpgw_harness::Envoy,
    /// Address of the MCP listener.
    pub listener: SocketAddr,
    /// Address of the admin interface.
    pub admin: SocketAddr,
    /// In [`EdgeMode::Standalone`]: the control plane Envoy follows (dropped after Envoy).
    standalone: Option<Standalone>,
}

impl Envoy {
    /// Writes the bootstrap, starts Envoy (`--concurrency 1`) and waits until admin
    /// `/ready` says LIVE. Fails with Envoy's log tail if it exits or hangs.
    pub async fn start(artifacts: &Artifacts, config: &EnvoyConfig) -> anyhow::Result<Self> {
        Self::start_workers(artifacts, config, 1).await
    }

    /// Like [`Envoy::start`], with `workers` worker threads (`--concurrency`).
    ///
    /// In [`EdgeMode::Standalone`] (`MCPGW_E2E_EDGE=standalone`) the same `config` is
    /// served by a control plane instead, to an Envoy started from the standalone overlay's
    /// bootstrap ([`crate::standalone`]); it fails when the registry cannot express it.
    pub async fn start_workers(
        artifacts: &Artifacts,
        config: &EnvoyConfig,
        workers: u32,
    ) -> anyhow::Result<Self> {
        if EdgeMode::from_env()? == EdgeMode::Standalone {
            let (standalone, envoy, listener) =
                Standalone::start(artifacts, config, workers).await?;
            return Ok(Self {
                admin: envoy.admin,
                envoy,
                listener,
                standalone: Some(standalone),
            });
        }
        let launch = Launch::new(artifacts.envoy()?).workers(workers);
        let mut envoy =
            mcpgw_harness::Envoy::start(launch, &config.bootstrap_text(artifacts)?).await?;
        let listener = envoy.listener(LISTENER).await?;
        Ok(Self {
            admin: envoy.admin,
            envoy,
            listener,
            standalone: None,
        })
    }

    /// Starts Envoy with a config it is expected to reject; returns its exit status and log.
    /// Fails if Envoy becomes ready instead.
    pub async fn start_rejected(
        artifacts: &Artifacts,
        config: &EnvoyConfig,
    ) -> anyhow::Result<(ExitStatus, String)> {
        anyhow::ensure!(
            EdgeMode::from_env()? == EdgeMode::Static,
            "a configuration Envoy rejects at start is a static bootstrap's: a control plane validates before it publishes"
        );
        let launch = Launch::new(artifacts.envoy()?);
        mcpgw_harness::Envoy::start_rejected(launch, &config.bootstrap_text(artifacts)?).await
    }

    /// `envoy --mode validate -c <file>`: the exit status and output.
    pub fn validate(
        artifacts: &Artifacts,
        bootstrap: &Path,
    ) -> anyhow::Result<(ExitStatus, String)> {
        envoy::Envoy::validate(artifacts.envoy()?, bootstrap)
    }

    /// `http://<listener>/mcp`.
    pub fn mcp_url(&self) -> String {
        self.url("/mcp")
    }

    /// `http://<listener><path>`; in standalone mode a virtual server's key in `path`
    /// (`/servers/{key}/…`) is replaced by the control plane's id for it.
    pub fn url(&self, path: &str) -> String {
        match &self.standalone {
            Some(s) => format!("http://{}{}", self.listener, s.path(path)),
            None => format!("http://{}{path}", self.listener),
        }
    }

    /// The control plane this Envoy follows (standalone mode only).
    pub fn control_plane(&self) -> Option<&Standalone> {
        self.standalone.as_ref()
    }

    /// Admin `/stats/prometheus`.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        self.envoy.prometheus().await
    }

    /// GET an admin path, as text.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        self.envoy.admin_get(path).await
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.envoy.log()
    }

    /// `Some(status)` if Envoy has exited (it must not: a crashed filter VM may take it down).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.envoy.exited()
    }

    /// Envoy's pid.
    pub fn pid(&self) -> u32 {
        self.envoy.pid()
    }
}

/// `typed_extension_protocol_options` of a cluster whose upstream HTTP filters remove
/// `remove` and add `add` to every request.
fn header_mutation(remove: &[String], add: &[(String, String)]) -> Value {
    let mutations: Vec<Value> = remove
        .iter()
        .map(|h| json!({"remove": h}))
        .chain(add.iter().map(|(k, v)| {
            json!({"append": {"header": {"key": k, "value": v},
                              "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}})
        }))
        .collect();
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http_protocol_options": {}},
        "http_filters": [
            {"name": "envoy.filters.http.header_mutation", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": mutations}}},
            {"name": "envoy.filters.http.upstream_codec", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}
        ]
    }})
}
