//! The control plane drives a real Envoy: `mcpgw serve` with xDS on port 0, an Envoy
//! started from the committed ADS-only bootstrap (`envoy/ads-bootstrap.yaml`), the filter
//! `.wasm` that `make wasm` builds, and an in-process rmcp upstream registered through the
//! REST API.
//!
//! This file holds the harness and the round trip through a control-plane restart; the
//! scenarios around it live in the submodules.

mod catalog;
mod clients;
mod credentials;
mod dns;
mod exposure;
mod istio;
mod listen;
mod manifests;
mod passthrough;
mod pinning;
mod policies;
mod relay;
mod resilience;
mod tls;
mod token_exchange;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use mcpgw_harness::Artifacts;
use mcpgw_harness::bootstrap::committed_ads;

use super::envoy::{Envoy, WAIT, envoy_binary, repo_path, tail};
use super::harness::{TestCp, TestDb, settings};
use super::upstream::TestUpstream;

/// The node id in the committed bootstrap.
const NODE: &str = "mcpgw-envoy-0";
/// Type URLs whose versions the node status reports.
const TYPES: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
];
const ECDS: &str = TYPES[3];

/// The project's Python (with the MCP SDK), or `MCPGW_PYTHON`.
fn python() -> PathBuf {
    Artifacts::from_env().python().unwrap().to_owned()
}

fn filter_wasm() -> PathBuf {
    Artifacts::from_env()
        .wasm()
        .unwrap()
        .canonicalize()
        .unwrap()
}

/// The committed bootstrap, pointed at `xds` and with an ephemeral admin port.
fn bootstrap(xds: SocketAddr) -> String {
    committed_ads(&Artifacts::from_env(), xds, NODE, "GRPC").unwrap()
}

/// Envoys following this test's control plane over ADS.
impl Envoy {
    /// Envoy [`NODE`] over state-of-the-world ADS.
    async fn start(xds: SocketAddr, base_id: u32) -> Envoy {
        Envoy::start_as(xds, base_id, NODE, "GRPC").await
    }

    /// Envoy `node_id` over ADS of `api_type` (`GRPC`, `DELTA_GRPC`). `base_id` tells
    /// apart the shared-memory regions of Envoys running at the same time.
    async fn start_as(xds: SocketAddr, base_id: u32, node_id: &str, api_type: &str) -> Envoy {
        let text = committed_ads(&Artifacts::from_env(), xds, node_id, api_type).unwrap();
        Envoy::spawn(&text, 50_000 + std::process::id() % 10_000 + base_id).await
    }
}

/// POSTs one JSON-RPC request to `url`; the status and the parsed body (JSON or the first
/// non-empty SSE `data:` line).
async fn rpc(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    session: Option<&str>,
) -> (u16, Value) {
    try_rpc(http, url, body, session)
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// [`rpc`], with the transport error (for probes that retry).
async fn try_rpc(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    session: Option<&str>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let r = req.json(body).send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find(|d| !d.trim().is_empty())
        .unwrap_or(&text)
        .trim()
        .to_owned();
    let value = serde_json::from_str(&json).unwrap_or(Value::String(text));
    Ok((status, value))
}

fn tool_names(v: &Value) -> Vec<String> {
    v["result"]["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A control plane with xDS on 127.0.0.1:`xds_port` (0: any) over `db`.
async fn control_plane(db: &TestDb, xds_port: u16) -> TestCp {
    control_plane_with(db, xds_port, |_| {}).await
}

/// [`control_plane`] with `tweak` applied to its settings.
async fn control_plane_with(
    db: &TestDb,
    xds_port: u16,
    tweak: impl FnOnce(&mut mcpgw::config::Settings),
) -> TestCp {
    let mut s = settings(db);
    s.xds_listen = Some(SocketAddr::from(([127, 0, 0, 1], xds_port)));
    s.edge.envoy_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    s.edge.filter_wasm = filter_wasm().display().to_string();
    s.edge.upstream_ca_file = None;
    tweak(&mut s);
    TestCp::start(s).await
}

async fn registry_version(cp: &TestCp) -> String {
    cp.get("/registry").await.1["registry_version"]
        .as_i64()
        .unwrap()
        .to_string()
}

/// Waits until the node has acked every type, ECDS at `ecds_version`, without a NACK.
async fn node_acked(cp: &TestCp, envoy: &mut Envoy, ecds_version: &str) -> Value {
    node_acked_as(cp, envoy, NODE, ecds_version).await
}

/// [`node_acked`] for node `node_id`.
async fn node_acked_as(cp: &TestCp, envoy: &mut Envoy, node_id: &str, ecds_version: &str) -> Value {
    let (http, url) = (cp.http.clone(), cp.url("/xds/nodes"));
    envoy
        .wait(
            &format!("{node_id} to ack ECDS version {ecds_version}"),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let nodes: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                    let node = nodes.as_array()?.iter().find(|n| n["node_id"] == node_id)?;
                    let types = &node["types"];
                    let all_acked = TYPES.iter().all(|t| {
                        types[*t]["version_acked"].is_string() && types[*t]["last_nack"].is_null()
                    });
                    (all_acked && types[ECDS]["version_acked"] == ecds_version)
                        .then(|| node.clone())
                }
            },
        )
        .await
}

/// Registers the upstream and a virtual server over its tools; (gateway id, server id).
async fn register(cp: &TestCp, upstream_url: &str) -> (String, String) {
    let (s, g) = cp
        .post("/gateways", json!({"name": "up", "url": upstream_url}))
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["gateway"]["reachable"], true, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    let ids: Vec<Value> = tools["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "{tools}");
    let (s, srv) = cp
        .post("/servers", json!({"name": "edge", "associated_tools": ids}))
        .await;
    assert_eq!(s, 201, "{srv}");
    (gid, srv["id"].as_str().unwrap().to_owned())
}

/// The whole round: register → Envoy converges and serves the virtual server (tools/list
/// from the snapshot, a call routed through the gateway's cluster) → the control plane stops and Envoy keeps its config →
/// a new control plane on the same database and port resyncs it → deleting the gateway
/// removes its cluster.
async fn round(base_id: u32) {
    let up = TestUpstream::with_tools(&["alpha", "bravo"]);
    let running = up.serve(0).await;
    let db = TestDb::sqlite();
    let cp = control_plane(&db, 0).await;
    let xds = cp.xds_addr.expect("xDS enabled");
    let mut envoy = Envoy::start(xds, base_id).await;

    let (gid, sid) = register(&cp, &running.url).await;
    let cluster = format!("mcpgw-gw-{gid}");
    let registered = Instant::now();
    let version = registry_version(&cp).await;
    let node = node_acked(&cp, &mut envoy, &version).await;
    eprintln!(
        "Envoy acked registry version {version} {:?} after the server was created",
        registered.elapsed()
    );
    assert_eq!(node["cluster"], "mcpgw");
    assert!(node["connected_streams"].as_u64().unwrap() >= 1, "{node}");
    envoy.dump_mentions(&cluster, true).await;
    let (s, snapshot) = cp.get("/snapshot").await;
    assert_eq!(s, 200);
    assert_eq!(snapshot["version"], version);
    assert_eq!(snapshot["upstreams"][&gid]["cluster"], cluster.as_str());
    assert_eq!(snapshot["session"]["keys"], json!(["<redacted>"]));
    assert!(snapshot["servers"][&sid].is_object(), "{snapshot}");
    let (_, metrics) = cp.get("/metrics").await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(metrics.contains("mcpgw_xds_acks_total"), "{metrics}");
    assert!(
        metrics.contains("mcpgw_edge_builds_total{outcome=\"ok\"}"),
        "{metrics}"
    );

    let listener = envoy.listener("mcpgw").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // A client cannot pick a cluster itself: the route header is stripped before routing,
    // so this falls through to the JSON-RPC 404 instead of reaching the upstream.
    let spoofed = http
        .get(format!("http://{listener}/mcp"))
        .header("x-mcpgw-cluster", &cluster)
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status().as_u16(), 404);
    let body: Value = spoofed.json().await.unwrap();
    assert_eq!(body["error"]["message"], "no upstream serves this request");

    let mcp = format!("http://{listener}/servers/{sid}/mcp");
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (s, v) = rpc(&http, &mcp, &list, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tool_names(&v), ["up__alpha", "up__bravo"], "{v}");
    // A call goes through the gateway's cluster: the filter opens the upstream session
    // over it on initialize, then routes the call with the upstream's own tool name.
    let init = json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "edge-xds-test", "version": "1"}}});
    let r = http
        .post(&mcp)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let session = r
        .headers()
        .get("mcp-session-id")
        .expect("a signed session id")
        .to_str()
        .unwrap()
        .to_owned();
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "up__alpha", "arguments": {"x": "1"}}});
    let (s, v) = rpc(&http, &mcp, &call, Some(&session)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], 3, "{v}");
    assert_eq!(call_text(&v), "test-upstream:alpha", "{v}");

    // The control plane goes away: Envoy keeps serving what it has.
    cp.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    envoy.dump_mentions(&cluster, true).await;
    let (s, v) = rpc(&http, &mcp, &list, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tool_names(&v), ["up__alpha", "up__bravo"], "{v}");

    // It comes back on the same address: Envoy reconnects and follows it again.
    let cp = control_plane(&db, xds.port()).await;
    let (s, _) = cp.delete(&format!("/gateways/{gid}")).await;
    assert!(s == 200 || s == 204, "delete: {s}");
    let version = registry_version(&cp).await;
    node_acked(&cp, &mut envoy, &version).await;
    envoy.dump_mentions(&cluster, false).await;
    let (_, v) = rpc(&http, &mcp, &list, None).await;
    assert!(tool_names(&v).is_empty(), "{v}");
    cp.stop().await;
    running.stop().await;
    drop(envoy);
}

/// The text of a `tools/call` result's first content item ("" when there is none).
fn call_text(v: &Value) -> &str {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

/// Registers a gateway named `name`; its id and its tools' ids by (namespaced) name.
async fn add_gateway(cp: &TestCp, name: &str, url: &str) -> (String, BTreeMap<String, String>) {
    let (s, g) = cp
        .post("/gateways", json!({"name": name, "url": url}))
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["gateway"]["reachable"], true, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    let ids = tools["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap().to_owned();
            (name, t["id"].as_str().unwrap().to_owned())
        })
        .collect();
    (gid, ids)
}

/// Creates a virtual server named `name` over `body` (the rest of the POST body); its id.
async fn add_server(cp: &TestCp, name: &str, mut body: Value) -> String {
    body["name"] = json!(name);
    let (s, srv) = cp.post("/servers", body).await;
    assert_eq!(s, 201, "{srv}");
    srv["id"].as_str().unwrap().to_owned()
}

/// A member (`developer`) of a new team `agents`, signed in, and the control plane's own
/// issuer (`mcpgw`, its session tokens' audience `mcpgw-api`, the team mapped to the
/// developer role) trusted at the edge: the team's id and the member's token. The control
/// plane must run with `auth.jwt.issuer = issuer`.
async fn team_member_token(
    cp: &TestCp,
    http: &reqwest::Client,
    issuer: &str,
    email: &str,
) -> (String, String) {
    let password = "a long enough password";
    let (s, team) = cp.post("/teams", json!({"name": "agents"})).await;
    assert_eq!(s, 201, "{team}");
    let team = team["id"].as_str().unwrap().to_owned();
    let (s, user) = cp
        .post("/users", json!({"email": email, "password": password}))
        .await;
    assert_eq!(s, 201, "{user}");
    let uid = user["id"].as_str().unwrap();
    let (s, v) = cp
        .put(
            &format!("/teams/{team}/members/{uid}"),
            json!({"role": "developer"}),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    let login = http
        .post(cp.url("/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 200);
    let login: Value = login.json().await.unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let (s, v) = cp
        .put(
            "/issuers/mcpgw",
            json!({"issuer": issuer, "algorithms": ["ES256"], "audiences": ["mcpgw-api"],
                   "claims": {"groups": "teams", "group_roles": {&team: ["developer"]}}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    (team, token)
}

/// A control plane (SQLite) with one Envoy following it over ADS, once Envoy has bound
/// the MCP listener; a client for that listener.
struct Rig {
    cp: TestCp,
    envoy: Envoy,
    listener: SocketAddr,
    http: reqwest::Client,
    _db: TestDb,
    /// What must outlive the rig besides the database (certificates, their directory).
    _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl Rig {
    async fn start(base_id: u32) -> Rig {
        Rig::start_with(base_id, |_| {}).await
    }

    async fn start_with(base_id: u32, tweak: impl FnOnce(&mut mcpgw::config::Settings)) -> Rig {
        let db = TestDb::sqlite();
        let cp = control_plane_with(&db, 0, tweak).await;
        let envoy = Envoy::start(cp.xds_addr.expect("xDS enabled"), base_id).await;
        Rig::around(cp, envoy, db, Vec::new()).await
    }

    /// The rig as the standalone Kubernetes overlay runs it: Envoy started from
    /// `manifests/standalone/envoy-bootstrap.yaml` itself (see [`manifests`]), following a
    /// control plane that serves xDS with mutual TLS.
    async fn standalone(base_id: u32) -> Rig {
        let (pki, secret, tls) = manifests::secret_files();
        let db = TestDb::sqlite();
        let cp = control_plane_with(&db, 0, move |s| s.tls = Some(tls)).await;
        let xds = cp.xds_addr.expect("xDS enabled");
        let envoy = Envoy::spawn(&manifests::manifest_bootstrap(xds, secret.path()), base_id).await;
        Rig::around(cp, envoy, db, vec![Box::new(pki), Box::new(secret)]).await
    }

    async fn around(
        cp: TestCp,
        mut envoy: Envoy,
        db: TestDb,
        keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Rig {
        let listener = envoy.listener(mcpgw::edge_config::LISTENER).await;
        Rig {
            cp,
            envoy,
            listener,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(WAIT)
                .build()
                .unwrap(),
            _db: db,
            _keep: keep,
        }
    }

    /// The MCP endpoint of virtual server `sid` on this rig's Envoy.
    fn mcp(&self, sid: &str) -> String {
        mcp_url(self.listener, sid)
    }

    /// Waits until Envoy acked the registry's current version (every type, no NACK).
    async fn synced(&mut self) -> Value {
        let version = registry_version(&self.cp).await;
        node_acked(&self.cp, &mut self.envoy, &version).await
    }

    /// Waits until `tools/list` of server `sid` at the edge names exactly `want`.
    async fn tools_become(&mut self, sid: &str, want: &[&str]) {
        let mcp = self.mcp(sid);
        wait_tools(&mut self.envoy, &self.http, &mcp, want).await;
    }

    /// Opens a session on server `sid` (the filter opens one on each upstream).
    async fn session(&self, sid: &str) -> String {
        session(&self.http, &self.mcp(sid)).await
    }

    /// `tools/call` of `name` on server `sid` in `session`: the JSON-RPC response.
    async fn call(&self, sid: &str, session: &str, name: &str, args: Value) -> Value {
        let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": args}});
        let (s, v) = rpc(&self.http, &self.mcp(sid), &call, Some(session)).await;
        assert_eq!(s, 200, "{name}: {v}");
        v
    }
}

fn mcp_url(listener: SocketAddr, sid: &str) -> String {
    format!("http://{listener}/servers/{sid}/mcp")
}

/// Sorted `tools/list` names of a virtual server at the edge; `None` unless 200.
async fn edge_tools(http: &reqwest::Client, mcp: &str) -> Option<Vec<String>> {
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (s, v) = match try_rpc(http, mcp, &list, None).await {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("tools/list at {mcp}: {e} (retrying)");
            return None;
        }
    };
    let mut names = tool_names(&v);
    names.sort();
    (s == 200 && v["result"].is_object()).then_some(names)
}

/// Polls `tools/list` at `mcp` until it names exactly `want` (in any order).
async fn wait_tools(envoy: &mut Envoy, http: &reqwest::Client, mcp: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let what = format!("tools/list at {mcp} to be {want:?}");
    envoy
        .wait(&what, || {
            let want = want.clone();
            async move { (edge_tools(http, mcp).await? == want).then_some(()) }
        })
        .await;
}

/// `initialize` on a virtual server; the signed session id.
async fn session(http: &reqwest::Client, mcp: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "edge-xds-test", "version": "1"}}});
    let r = http
        .post(mcp)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "initialize at {mcp}");
    r.headers()
        .get("mcp-session-id")
        .expect("a signed session id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// `--mcp-session-ttl` and `--mcp-session-idle` reach every snapshot's `session`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_mcp_session_times_reach_the_snapshot() {
    let db = TestDb::sqlite();
    let cp = control_plane_with(&db, 0, |s| {
        s.mcp_sessions = mcpgw::config::McpSessionTimes {
            ttl_seconds: 3600,
            idle_seconds: 120,
        };
    })
    .await;
    let (s, snapshot) = cp.get("/snapshot").await;
    assert_eq!(s, 200, "{snapshot}");
    assert_eq!(snapshot["session"]["ttl_seconds"], 3600, "{snapshot}");
    assert_eq!(snapshot["session"]["idle_seconds"], 120, "{snapshot}");
    assert_eq!(snapshot["session"]["keys"], json!(["<redacted>"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_the_registry_over_xds_and_keeps_it_without_the_control_plane() {
    round(0).await;
}

/// Every committed bootstrap passes `envoy --mode validate` (`envoy/tls/ads-bootstrap.yaml`
/// with certificate files made here in place of the paths it names), and so does the ADS
/// bootstrap as this test rewrites it.
#[test]
fn every_committed_bootstrap_validates() {
    let dir = tempfile::tempdir().unwrap();
    let rewritten = dir.path().join("ads-bootstrap.yaml");
    std::fs::write(&rewritten, bootstrap("127.0.0.1:18000".parse().unwrap())).unwrap();
    let pki = tls::Pki::new();
    let tls_bootstrap = dir.path().join("ads-bootstrap-tls.yaml");
    std::fs::write(
        &tls_bootstrap,
        pki.bootstrap("127.0.0.1:18000".parse().unwrap()),
    )
    .unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files.extend([rewritten, tls_bootstrap]);
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.contains("overload_manager:"),
            "{} has no overload manager",
            file.display()
        );
        let out = std::process::Command::new(envoy_binary())
            .args(["--mode", "validate", "--base-id"])
            .arg((50_100 + std::process::id() % 10_000 + 100 * i as u32).to_string())
            .arg("-c")
            .arg(file)
            .current_dir(repo_path(""))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not validate:\n{}",
            file.display(),
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
}
