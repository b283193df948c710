//! A control plane with a 10,000-tool registry, in process: what both control-plane
//! benchmarks (`mcpgw-bench-registry`, `mcpgw-bench-xds`) set up before they measure.
//!
//! [`setup`] starts `mcpgw::serve` on a fresh SQLite file or PostgreSQL schema (xDS on
//! 127.0.0.1:0 when asked), then populates it through the store: `gateways × tools`
//! federated tools (each with a 3-property input schema), 10 resources and 5 prompts per
//! gateway, one virtual server per ten gateways and one with every tool.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mcpgw::config::Settings;
use mcpgw::model::{AuthType, CatalogKind, NewGateway, Transport};
use mcpgw::store::{Discovered, DiscoveredItem, NewServer, Store};
use mcpgw::xds::AdsServer;
use serde_json::json;

/// Separator of namespaced names (`gateway__tool`).
const SEPARATOR: &str = "__";

/// Reads a knob from the environment, `default` when unset.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

/// `VmRSS` and `VmHWM` of `/proc/<pid>/status` (`self` for this process), in KiB.
pub fn memory_of(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
pub fn memory() -> (u64, u64) {
    memory_of("self")
}

/// What the registry holds.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Upstream gateways.
    pub gateways: usize,
    /// Tools per gateway.
    pub tools: usize,
}

/// Where the registry lives.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh schema in this PostgreSQL database.
    Postgres {
        /// Connection URL of the database.
        url: String,
    },
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }
}

/// One backend's registry and the control plane serving it; stop it with [`Bed::stop`].
pub struct Bed {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// The control plane's store.
    pub store: Store,
    /// The admin API.
    pub addr: SocketAddr,
    /// The xDS server's address, if xDS was asked for.
    pub xds_addr: Option<SocketAddr>,
    /// The xDS server, if xDS was asked for.
    pub xds: Option<AdsServer>,
    /// Id of one tool (the one benchmarks rename).
    pub first_tool: String,
    /// How long populating the registry took.
    pub populate: Duration,
    /// This process's RSS after populating, in KiB.
    pub rss_after_setup: u64,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Bed {
    /// Stops the control plane and drops the PostgreSQL schema, if any.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some((base, schema)) = self.pg.take()
            && let Ok(mut c) = <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await
        {
            let _ = sqlx::Executor::execute(
                &mut c,
                sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")),
            )
            .await;
        }
    }
}

fn discovered(g: usize, tools: usize) -> Discovered {
    let tool = |t: usize| DiscoveredItem {
        original_name: format!("tool_{t:04}"),
        uri: None,
        description: Some(format!(
            "Tool {t} of gateway {g}: looks things up in the upstream system and returns a short summary of what it found."
        )),
        spec: json!({
            "input_schema": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                    "filters": {"type": "object", "additionalProperties": {"type": "string"}}
                },
                "required": ["query"]
            },
            "annotations": {"readOnlyHint": true},
            "integration_type": "MCP"
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    };
    let resource = |r: usize| DiscoveredItem {
        original_name: format!("doc_{r}"),
        uri: Some(format!("docs://gw{g}/doc/{r}")),
        description: Some("A document".into()),
        spec: json!({"mime_type": "text/markdown", "is_template": false})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    let prompt = |p: usize| DiscoveredItem {
        original_name: format!("prompt_{p}"),
        uri: None,
        description: Some("A prompt".into()),
        spec: json!({"arguments": [{"name": "topic", "required": true}]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    Discovered {
        tools: (0..tools).map(tool).collect(),
        resources: (0..10).map(resource).collect(),
        prompts: (0..5).map(prompt).collect(),
        capabilities: Some(json!({"tools": {"listChanged": true}})),
        server_info: Some(json!({"name": format!("upstream-{g}"), "version": "1.0.0"})),
        protocol_version: Some("2025-06-18".into()),
    }
}

/// Runs a control plane in this process (admin API on 127.0.0.1:0) until the returned
/// sender fires or is dropped.
pub async fn start_control_plane(
    settings: Settings,
) -> anyhow::Result<(mcpgw::ControlPlane, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(mcpgw::serve(
        settings,
        listener,
        async move {
            let _ = stop_rx.await;
        },
        move |cp| {
            let _ = ready_tx.send(cp);
        },
    ));
    let cp = ready_rx
        .await
        .context("the control plane did not start (see its log)")?;
    Ok((cp, stop_tx))
}

/// Starts a control plane on `backend` (serving xDS on 127.0.0.1:0 when `xds`) and
/// populates its registry.
pub async fn setup(backend: &Backend, shape: Shape, xds: bool) -> anyhow::Result<Bed> {
    let label = backend.label();
    let (url, dir, pg) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}/mcpgw.db?mode=rwc", dir.path().display());
            (url, Some(dir), None)
        }
        Backend::Postgres { url: base } => {
            sqlx::any::install_default_drivers();
            let schema = format!("bench_registry_{}", std::process::id());
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(base)
                .await
                .with_context(|| format!("PostgreSQL at {base}"))?;
            sqlx::Executor::execute(
                &mut conn,
                sqlx::raw_sql(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                )),
            )
            .await?;
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
            (url, None, Some((base.clone(), schema)))
        }
    };
    let mut settings = Settings::for_database(&url);
    settings.federation.health_interval = Duration::from_secs(86_400);
    settings.federation.resync_interval = None;
    if xds {
        settings.xds_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    let (cp, stop_tx) = start_control_plane(settings).await?;
    let store = cp.store.clone();

    let started = Instant::now();
    for g in 0..shape.gateways {
        let gw = NewGateway {
            name: format!("gw{g:03}"),
            url: format!("http://10.1.{}.{}:8080/mcp", g / 250, g % 250 + 1),
            transport: Transport::default(),
            description: None,
            tags: vec![format!("team-{}", g % 10)],
            enabled: true,
            auth_type: AuthType::None,
            auth_sealed: None,
        };
        store
            .create_gateway_with_catalog(gw, Some(&discovered(g, shape.tools)), SEPARATOR)
            .await
            .with_context(|| format!("{label}: creating gateway {g}"))?;
    }
    // Virtual servers: one per ten gateways, plus one with every tool.
    let by_gateway = |items: Vec<mcpgw::model::CatalogItem>| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in items {
            m.entry(i.gateway_id.unwrap_or_default())
                .or_default()
                .push(i.id);
        }
        m
    };
    let tools = by_gateway(store.all_items(CatalogKind::Tool).await?);
    let resources = by_gateway(store.all_items(CatalogKind::Resource).await?);
    let prompts = by_gateway(store.all_items(CatalogKind::Prompt).await?);
    let gateway_ids: Vec<String> = tools.keys().cloned().collect();
    let ids = |m: &BTreeMap<String, Vec<String>>, gws: &[String]| -> Vec<String> {
        gws.iter()
            .flat_map(|g| m.get(g).cloned().unwrap_or_default())
            .collect()
    };
    for (i, chunk) in gateway_ids.chunks(10).enumerate() {
        store
            .create_server(NewServer {
                name: format!("team-{i}"),
                description: None,
                icon: None,
                tags: vec![],
                enabled: true,
                tools: ids(&tools, chunk),
                resources: ids(&resources, chunk),
                prompts: ids(&prompts, chunk),
            })
            .await?;
    }
    store
        .create_server(NewServer {
            name: "everything".into(),
            description: None,
            icon: None,
            tags: vec![],
            enabled: true,
            tools: ids(&tools, &gateway_ids),
            resources: vec![],
            prompts: vec![],
        })
        .await?;
    let populate = started.elapsed();
    let first_tool = store
        .all_items(CatalogKind::Tool)
        .await?
        .into_iter()
        .next()
        .map(|t| t.id)
        .context("no tools were created")?;
    Ok(Bed {
        backend: label.to_owned(),
        store,
        addr: cp.addr,
        xds_addr: cp.xds_addr,
        xds: cp.xds,
        first_tool,
        populate,
        rss_after_setup: memory().0,
        _dir: dir,
        pg,
        stop: Some(stop_tx),
    })
}
