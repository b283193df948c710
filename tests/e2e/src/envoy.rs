//! A real Envoy with a generated bootstrap: one listener, the mcpgw wasm filter (optional),
//! the router, static clusters, admin, and the `stats_tags` of docs/filter.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::artifacts::Artifacts;
use crate::ports::wait_until;
use crate::process::ChildGuard;
use crate::workdir::{Workdir, unique_id};

/// How long Envoy may take to become ready (compiling the wasm module included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The listener's `per_connection_buffer_limit_bytes` (16 MiB).
pub const LISTENER_BUFFER_LIMIT: u32 = 16 * 1024 * 1024;

/// One static upstream cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Cluster name (what `policy.tool_routes` names).
    pub name: String,
    /// Where the upstream listens.
    pub addr: SocketAddr,
}

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
    /// Routes; when empty, `/` goes to the first cluster.
    pub routes: Vec<Route>,
}

impl EnvoyConfig {
    /// Envoy with the filter configured by `filter_config` (JSON text) in front of `upstream`.
    pub fn with_filter(filter_config: &str, upstream: SocketAddr) -> Self {
        Self {
            filter_config: Some(filter_config.to_owned()),
            clusters: vec![Cluster {
                name: "upstream".into(),
                addr: upstream,
            }],
            routes: Vec::new(),
        }
    }

    /// Adds a static cluster.
    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.push(Cluster {
            name: name.into(),
            addr,
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
        let mut http_filters = Vec::new();
        if let Some(config) = &self.filter_config {
            http_filters.push(wasm_filter(config, wasm));
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let clusters: Vec<Value> = self.clusters.iter().map(cluster_json).collect();
        Ok(json!({
            "admin": {"address": socket(([127, 0, 0, 1], 0).into())},
            "stats_config": {"stats_tags": stats_tags()},
            "static_resources": {
                "listeners": [{
                    "name": "mcp",
                    "address": socket(([127, 0, 0, 1], 0).into()),
                    // Above any max_body_bytes the tests use, so the filter's own 413 applies
                    // (docs/filter.md: Envoy answers a plain 413 past this buffer limit).
                    "per_connection_buffer_limit_bytes": LISTENER_BUFFER_LIMIT,
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "mcp",
                            "stream_idle_timeout": "0s",
                            "route_config": {
                                "name": "mcp",
                                "virtual_hosts": [{"name": "mcp", "domains": ["*"], "routes": routes}]
                            },
                            "http_filters": http_filters
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        }))
    }
}

/// The `stats_tags` from docs/filter.md that turn the filter's stat names into labels.
pub fn stats_tags() -> Value {
    json!([
        {"tag_name": "mcp_method", "regex": "(_mcp_method=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_tool", "regex": "(_mcp_tool=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_reason", "regex": "(_mcp_reason=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_plugin", "regex": "(_mcp_plugin=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_hook", "regex": "(_mcp_hook=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_effect", "regex": "(_mcp_effect=\\.=(.*?);\\.;)"}
    ])
}

/// The wasm filter entry exactly as docs/filter.md shows it.
pub fn wasm_filter(config: &str, wasm: &Path) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "mcpgw",
                "root_id": "mcpgw",
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config
                },
                "vm_config": {
                    "vm_id": "mcpgw",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                }
            }
        }
    })
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
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

fn cluster_json(c: &Cluster) -> Value {
    json!({
        "name": c.name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": c.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(c.addr)}}]}]
        }
    })
}

/// A running Envoy; killed on drop.
#[derive(Debug)]
pub struct Envoy {
    child: ChildGuard,
    /// Address of the MCP listener.
    pub listener: SocketAddr,
    /// Address of the admin interface.
    pub admin: SocketAddr,
    http: reqwest::Client,
    _dir: Workdir,
}

impl Envoy {
    /// Writes the bootstrap, starts Envoy (`--concurrency 1`, unique `--base-id`) and waits
    /// until admin `/ready` says LIVE. Fails with Envoy's log tail if it exits or hangs.
    pub async fn start(artifacts: &Artifacts, config: &EnvoyConfig) -> anyhow::Result<Self> {
        let (mut child, dir) = spawn(artifacts, config)?;
        let admin_path = dir.file("admin.addr");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("build HTTP client")?;
        let admin = {
            let c = &mut child;
            let found = wait_until(
                READY_TIMEOUT,
                || c.exited().map(|s| format!("exited with {s}")),
                || {
                    let p = admin_path.clone();
                    async move {
                        let text = std::fs::read_to_string(&p).ok()?;
                        text.trim().parse::<SocketAddr>().ok()
                    }
                },
            )
            .await;
            match found {
                Ok(a) => a,
                Err(why) => {
                    return Err(child.failure(&format!("admin address never written: {why}")));
                }
            }
        };
        let ready_url = format!("http://{admin}/ready");
        let ready = {
            let c = &mut child;
            wait_until(
                READY_TIMEOUT,
                || c.exited().map(|s| format!("exited with {s}")),
                || {
                    let (http, url) = (http.clone(), ready_url.clone());
                    async move {
                        let r = http.get(&url).send().await.ok()?;
                        let ok = r.status().is_success();
                        let body = r.text().await.ok()?;
                        (ok && body.trim() == "LIVE").then_some(())
                    }
                },
            )
            .await
        };
        if let Err(why) = ready {
            return Err(child.failure(&format!("never became ready: {why}")));
        }
        let listener = match listener_addr(&http, admin).await {
            Ok(a) => a,
            Err(e) => return Err(child.failure(&format!("no listener address: {e:#}"))),
        };
        Ok(Self {
            child,
            listener,
            admin,
            http,
            _dir: dir,
        })
    }

    /// Starts Envoy with a config it is expected to reject; returns its exit status and log.
    /// Fails if Envoy becomes ready instead.
    pub async fn start_rejected(
        artifacts: &Artifacts,
        config: &EnvoyConfig,
    ) -> anyhow::Result<(ExitStatus, String)> {
        let (mut child, dir) = spawn(artifacts, config)?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        let admin_path = dir.file("admin.addr");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.exited() {
                return Ok((status, child.log()));
            }
            if let Some(admin) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|t| t.trim().parse::<SocketAddr>().ok())
            {
                let live = match http.get(format!("http://{admin}/ready")).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.text().await.map(|b| b.trim() == "LIVE").unwrap_or(false)
                    }
                    _ => false,
                };
                if live {
                    bail!(
                        "Envoy accepted a config it should reject; log:\n{}",
                        child.log_tail(40)
                    );
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(child.failure("neither rejected the config nor became ready"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `envoy --mode validate -c <file>`: the exit status and output.
    pub fn validate(
        artifacts: &Artifacts,
        bootstrap: &Path,
    ) -> anyhow::Result<(ExitStatus, String)> {
        let out = Command::new(artifacts.envoy()?)
            .args(["--mode", "validate", "--base-id"])
            .arg(unique_id().to_string())
            .arg("-c")
            .arg(bootstrap)
            .output()
            .context("run envoy --mode validate")?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status, text))
    }

    /// `http://<listener>/mcp`.
    pub fn mcp_url(&self) -> String {
        self.url("/mcp")
    }

    /// `http://<listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    /// Admin `/stats/prometheus`.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        self.admin_get("/stats/prometheus").await
    }

    /// GET an admin path, as text.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .with_context(|| format!("admin {path}"))?;
        Ok(r.text().await?)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// `Some(status)` if Envoy has exited (it must not: a crashed filter VM may take it down).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.exited()
    }

    /// Envoy's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn spawn(artifacts: &Artifacts, config: &EnvoyConfig) -> anyhow::Result<(ChildGuard, Workdir)> {
    let envoy = artifacts.envoy()?;
    let wasm: PathBuf = if config.filter_config.is_some() {
        artifacts.wasm()?.to_owned()
    } else {
        artifacts.wasm.clone()
    };
    let dir = Workdir::new("envoy")?;
    let bootstrap = dir.file("bootstrap.json");
    std::fs::write(
        &bootstrap,
        serde_json::to_vec_pretty(&config.bootstrap(&wasm)?)?,
    )?;
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(&bootstrap)
        .args(["--concurrency", "1", "--log-level", "info", "--base-id"])
        .arg(unique_id().to_string())
        .arg("--admin-address-path")
        .arg(dir.file("admin.addr"));
    let child = ChildGuard::spawn("envoy", cmd, &dir.file("envoy.log"))?;
    Ok((child, dir))
}

async fn listener_addr(http: &reqwest::Client, admin: SocketAddr) -> anyhow::Result<SocketAddr> {
    let v: Value = http
        .get(format!("http://{admin}/listeners?format=json"))
        .send()
        .await?
        .json()
        .await?;
    let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
    let ip = sa["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no address in {v}"))?;
    let port = sa["port_value"]
        .as_u64()
        .ok_or_else(|| anyhow!("no port in {v}"))?;
    Ok(SocketAddr::new(ip.parse()?, u16::try_from(port)?))
}
