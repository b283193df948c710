//! The Istio overlay's data path, end to end, without a cluster: a real Envoy started from
//! the representative Istio ingress-gateway configuration (`tests/manifests/
//! istio-gateway.yaml`) with the overlay's EnvoyFilter patches applied by the same applier
//! `make test-manifests` uses (`tests/manifests/envoyfilter.py`), against a real control
//! plane running with `cluster_naming = istio` and the module named by URL and sha256, the
//! module served over HTTP by the test, and a real MCP server behind an Istio-named
//! cluster. `tools/list` and `tools/call` go through: the path that answered 404 while a
//! WasmPlugin put a second, unconfigured filter in front of the configured one.
//!
//! What stands in for Istio: istiod's ADS is dropped from the bootstrap and the upstream's
//! `outbound|PORT||HOST` cluster is added as istiod would generate it for a ServiceEntry;
//! istio-agent's SDS certificates are dropped (plaintext on loopback).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mcpgw::edge_config::{ClusterNaming, RemoteModule, WASM_CLUSTER};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::super::harness::{TestCp, TestDb};
use super::super::upstream::TestUpstream;
use super::{
    ECDS, Envoy, add_gateway, add_server, call_text, control_plane_with, filter_wasm, python,
    registry_version, repo_path, rpc, session, tool_names, wait_tools,
};

/// The gateway's labels the EnvoyFilter selects.
const GATEWAY_LABELS: &str = r#"{"istio": "ingressgateway", "app": "istio-ingressgateway"}"#;
/// The MCP listener of the representative gateway.
const GATEWAY_LISTENER: &str = "0.0.0.0_8080";

/// The representative gateway configuration with the overlay's EnvoyFilter applied, as JSON.
fn patched_gateway() -> Value {
    let script = format!(
        "import json, sys, yaml\n\
         sys.path.insert(0, {dir:?})\n\
         import envoyfilter\n\
         gateway = yaml.safe_load(open({gateway:?}))\n\
         patches = yaml.safe_load(open({patches:?}))\n\
         print(json.dumps(envoyfilter.apply(gateway, patches, {GATEWAY_LABELS})))\n",
        dir = repo_path("tests/manifests").display().to_string(),
        gateway = repo_path("tests/manifests/istio-gateway.yaml")
            .display()
            .to_string(),
        patches = repo_path("manifests/istio/envoyfilter.yaml")
            .display()
            .to_string(),
    );
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the EnvoyFilter applier failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A STATIC cluster of one loopback endpoint, as istiod or the EnvoyFilter would name it.
fn loopback_cluster(name: &str, port: u16, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    c
}

/// The patched gateway, made runnable here: no istiod (its ADS dropped), the control
/// plane's clusters in plaintext on loopback (`xds`), the module's cluster at `wasm`, the
/// upstream's Istio-named cluster `upstream_cluster` at `upstream`, ephemeral listener and
/// admin ports.
fn runnable(
    mut config: Value,
    xds: SocketAddr,
    wasm: SocketAddr,
    upstream_cluster: &str,
    upstream: u16,
) -> Value {
    config.as_object_mut().unwrap().remove("dynamic_resources");
    config["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    let clusters = config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap();
    let names: Vec<String> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    for wanted in ["mcpgw-xds", "mcpgw-relay", "mcpgw-ratelimit", WASM_CLUSTER] {
        assert!(
            names.iter().any(|n| n == wanted),
            "the EnvoyFilter adds no {wanted}"
        );
    }
    clusters.retain(|c| !c["name"].as_str().unwrap().starts_with("mcpgw-"));
    clusters.push(loopback_cluster("mcpgw-xds", xds.port(), true));
    // Nothing listens there: the snapshot names them only when the relay and the
    // rate-limit service are on, and they are off here.
    clusters.push(loopback_cluster("mcpgw-relay", 9, false));
    clusters.push(loopback_cluster("mcpgw-ratelimit", 9, true));
    clusters.push(loopback_cluster(WASM_CLUSTER, wasm.port(), false));
    clusters.push(loopback_cluster(upstream_cluster, upstream, false));
    for l in config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        l["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": 0});
    }
    config
}

/// Serves `module` at `/mcpgw_filter.wasm` on 127.0.0.1:0; the address, and how many times
/// it was fetched.
async fn serve_module(module: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
    let fetched = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&fetched);
    let app = axum::Router::new().route(
        "/mcpgw_filter.wasm",
        axum::routing::get(move || {
            let counter = Arc::clone(&counter);
            let module = module.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                module
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, fetched)
}

/// Waits until node `node_id` acked ECDS at `version` (the gateway subscribes to nothing
/// else from the control plane); its status.
async fn ecds_acked(cp: &TestCp, envoy: &mut Envoy, node_id: &str, version: &str) -> Value {
    let (http, url) = (cp.http.clone(), cp.url("/xds/nodes"));
    envoy
        .wait(&format!("{node_id} to ack ECDS {version}"), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let nodes: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let node = nodes.as_array()?.iter().find(|n| n["node_id"] == node_id)?;
                (node["types"][ECDS]["version_acked"] == version).then(|| node.clone())
            }
        })
        .await
}

/// Lower-case hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `envoy --mode validate` loads `config`; its output.
fn envoy_validates(config: &Value, dir: &Path, base_id: u32) -> (bool, String) {
    let path = dir.join("merged.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    let out = Command::new(super::envoy_binary())
        .args([
            "--mode",
            "validate",
            "--base-id",
            &base_id.to_string(),
            "-c",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_gateway_patched_by_the_overlay_serves_mcp_from_a_remote_module() {
    let module = std::fs::read(filter_wasm()).unwrap();
    let sha256 = sha256_hex(&module);
    let (wasm, fetched) = serve_module(module).await;
    let up = TestUpstream::with_tools(&["alpha"]).with_label("istio");
    let running = up.serve(0).await;
    let upstream_port: u16 = url::Url::parse(&running.url)
        .unwrap()
        .port()
        .expect("the upstream's port");
    let db = TestDb::sqlite();
    let remote = RemoteModule::new(&format!("http://{wasm}/mcpgw_filter.wasm"), &sha256).unwrap();
    let cp = control_plane_with(&db, 0, move |s| {
        s.edge.filter_remote = Some(remote);
        s.edge.filter_wasm = "/nonexistent/mcpgw_filter.wasm".into();
        s.edge.cluster_naming = ClusterNaming::Istio {
            domain: "cluster.local".into(),
        };
    })
    .await;
    let xds = cp.xds_addr.expect("xDS enabled");

    let (gid, tools) = add_gateway(&cp, "up", &running.url).await;
    let sid = add_server(
        &cp,
        "istio",
        json!({"associated_tools": [tools["up__alpha"]]}),
    )
    .await;
    let upstream_cluster = format!("outbound|{upstream_port}||127.0.0.1");
    let gateway = patched_gateway();
    let node_id = gateway["node"]["id"].as_str().unwrap().to_owned();
    let config = runnable(gateway, xds, wasm, &upstream_cluster, upstream_port);
    let base = 50_000 + std::process::id() % 10_000;
    let mut envoy = Envoy::spawn(&serde_json::to_string(&config).unwrap(), base + 53).await;
    let version = registry_version(&cp).await;
    let node = ecds_acked(&cp, &mut envoy, &node_id, &version).await;
    assert!(node["types"][ECDS]["last_nack"].is_null(), "{node}");
    // The snapshot routes to the cluster istiod generates for the upstream's host and port.
    let (_, snapshot) = cp.get("/snapshot").await;
    assert_eq!(
        snapshot["upstreams"][&gid]["cluster"],
        upstream_cluster.as_str(),
        "{snapshot}"
    );

    assert!(
        fetched.load(Ordering::SeqCst) >= 1,
        "Envoy ran a module it did not fetch"
    );

    let listener = envoy.listener(GATEWAY_LISTENER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mcp = format!("http://{listener}/servers/{sid}/mcp");
    wait_tools(&mut envoy, &http, &mcp, &["up__alpha"]).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (s, v) = rpc(&http, &mcp, &list, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tool_names(&v), ["up__alpha"], "{v}");
    let session = session(&http, &mcp).await;
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "up__alpha", "arguments": {}}});
    let (s, v) = rpc(&http, &mcp, &call, Some(&session)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "istio:alpha", "{v}");

    // A client cannot pick a cluster itself: the overlay removes the route header before
    // Envoy picks the route, so this reaches the gateway's own route (httpbin, which does
    // not resolve here: 503 from Envoy), never the upstream (whose 404 it got while an
    // HTTP filter removed the header after the route was chosen).
    let spoofed = http
        .get(format!("http://{listener}/anything"))
        .header("x-mcpgw-cluster", &upstream_cluster)
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status().as_u16(), 503);
    assert!(
        spoofed
            .headers()
            .get("x-envoy-upstream-service-time")
            .is_none(),
        "{:?}",
        spoofed.headers()
    );

    // The same gateway with the control plane's filter configuration in place of ECDS (as
    // Envoy received it) loads in `envoy --mode validate`: the merged configuration.
    let (status, dump) =
        mcpgw_harness::admin::get(envoy.admin, "/config_dump?resource=ecds_filters")
            .await
            .unwrap();
    assert_eq!(status, 200);
    let dump: Value = serde_json::from_str(&dump).unwrap();
    let ecds = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ecds_filter"]["name"] == "mcpgw.filter")
        .unwrap_or_else(|| panic!("no mcpgw.filter in {dump}"))["ecds_filter"]["typed_config"]
        .clone();
    assert_eq!(
        ecds["config"]["vm_config"]["code"]["remote"]["sha256"],
        sha256.as_str(),
        "{ecds}"
    );
    let mut merged = config.clone();
    for l in merged["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        let hcm = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
        for f in hcm["http_filters"].as_array_mut().unwrap() {
            if f["name"] == "mcpgw.filter" {
                f.as_object_mut().unwrap().remove("config_discovery");
                f["typed_config"] = ecds.clone();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = envoy_validates(&merged, dir.path(), base + 54);
    assert!(ok, "{out}");
    // The check has teeth: a remote source with a misspelt field is refused.
    let mut broken = merged.clone();
    broken["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .filter(|f| f["name"] == "mcpgw.filter")
        .for_each(|f| {
            let remote = f["typed_config"]["config"]["vm_config"]["code"]["remote"]
                .as_object_mut()
                .unwrap();
            let digest = remote.remove("sha256").unwrap();
            remote.insert("sha265".into(), digest);
        });
    let (ok, out) = envoy_validates(&broken, dir.path(), base + 54);
    assert!(!ok, "{out}");

    drop(envoy);
    cp.stop().await;
    running.stop().await;
}

/// A module whose digest is not the configured one is never run: Envoy accepts the filter
/// configuration (it acks before it downloads), keeps fetching the module (each fetch fails
/// the digest check), and the MCP listener, waiting for its filter, accepts no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_gateway_refuses_a_module_with_the_wrong_digest() {
    let module = std::fs::read(filter_wasm()).unwrap();
    let wrong = sha256_hex(b"another module");
    let (wasm, fetched) = serve_module(module).await;
    let db = TestDb::sqlite();
    let remote = RemoteModule::new(&format!("http://{wasm}/mcpgw_filter.wasm"), &wrong).unwrap();
    let cp = control_plane_with(&db, 0, move |s| {
        s.edge.filter_remote = Some(remote);
        s.edge.cluster_naming = ClusterNaming::Istio {
            domain: "cluster.local".into(),
        };
    })
    .await;
    let xds = cp.xds_addr.expect("xDS enabled");
    let gateway = patched_gateway();
    let node_id = gateway["node"]["id"].as_str().unwrap().to_owned();
    let mut config = runnable(gateway, xds, wasm, "outbound|9||127.0.0.1", 9);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] =
        json!(port);
    let base = 50_000 + std::process::id() % 10_000;
    let mut envoy = Envoy::spawn(&serde_json::to_string(&config).unwrap(), base + 55).await;
    // The control plane sent the configuration and Envoy fetched the module more than
    // once: the first fetch failed its digest check.
    let (http, url) = (cp.http.clone(), cp.url("/xds/nodes"));
    let node = envoy
        .wait("the module to be fetched again", || {
            let (http, url, node_id) = (http.clone(), url.clone(), node_id.clone());
            let fetched = Arc::clone(&fetched);
            async move {
                let nodes: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let node = nodes.as_array()?.iter().find(|n| n["node_id"] == node_id)?;
                (fetched.load(Ordering::SeqCst) >= 2).then(|| node.clone())
            }
        })
        .await;
    assert!(node["types"][ECDS]["last_nack"].is_null(), "{node}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    match super::try_rpc(&http, &format!("http://127.0.0.1:{port}/mcp"), &list, None).await {
        Err(e) => assert!(e.is_connect(), "{e}"),
        Ok((s, v)) => panic!("the listener answered without its filter: {s} {v}"),
    }
    drop(envoy);
    cp.stop().await;
}
