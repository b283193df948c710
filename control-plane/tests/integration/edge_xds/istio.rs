//! The Istio overlay's data path, end to end, without a cluster: a real Envoy started from
//! the representative Istio ingress-gateway configuration (`tests/manifests/
//! istio-gateway.yaml`) with the overlay's EnvoyFilter applied by the same code `make
//! test-manifests` uses (`tests/manifests/envoyfilter.py`: the filter's extension
//! configuration served as istiod serves it over ECDS, its module a local file as
//! istio-agent hands it over), against a real control plane running with `cluster_naming =
//! istio` and a real MCP server behind an Istio-named cluster. The filter subscribes itself
//! to its configuration over the EnvoyFilter's `mcpgw-xds` cluster
//! (`mcpgw_core::subscription`).
//!
//! What stands in for Istio: istiod's ADS is dropped from the bootstrap and the upstream's
//! `outbound|PORT||HOST` cluster is added as istiod would generate it for a ServiceEntry;
//! istio-agent's SDS certificates are dropped (plaintext on loopback).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use mcpgw::edge_config::ClusterNaming;
use serde_json::{Value, json};

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

/// The filter in the chain.
const PLUGIN_FILTER: &str = "mcpgw.filter";

/// The representative gateway configuration with the overlay's EnvoyFilter applied, its
/// extension configuration served (with `plugin_config` in place of the filter's plugin
/// configuration when given), the module the local filter `.wasm`; as JSON.
fn patched_gateway(plugin_config: Option<&Value>) -> Value {
    let plugin_config = plugin_config
        .map(|c| c.to_string())
        .unwrap_or_else(|| "null".into());
    let script = format!(
        "import json, sys, yaml\n\
         sys.path.insert(0, {dir:?})\n\
         import envoyfilter\n\
         gateway = yaml.safe_load(open({gateway:?}))\n\
         patches = yaml.safe_load(open({patches:?}))\n\
         config = json.loads({plugin_config:?})\n\
         for p in patches['spec']['configPatches']:\n\
         \x20   if config is not None and p['applyTo'] == 'EXTENSION_CONFIG':\n\
         \x20       p['patch']['value']['typed_config']['value']['config']['configuration']['value'] = json.dumps(config)\n\
         print(json.dumps(envoyfilter.apply(gateway, patches, {GATEWAY_LABELS}, {module:?})))\n",
        dir = repo_path("tests/manifests").display().to_string(),
        gateway = repo_path("tests/manifests/istio-gateway.yaml")
            .display()
            .to_string(),
        patches = repo_path("manifests/istio/envoyfilter.yaml")
            .display()
            .to_string(),
        module = filter_wasm().display().to_string(),
    );
    run_applier(&script)
}

/// Runs a Python `script` that prints an Envoy configuration made by the EnvoyFilter
/// applier (`tests/manifests/envoyfilter.py`), and parses it.
fn run_applier(script: &str) -> Value {
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
/// plane's clusters in plaintext on loopback (`xds`), the upstream's Istio-named cluster
/// `upstream_cluster` at `upstream`, the MCP listener on `listen` (0: any) and an
/// ephemeral admin port.
fn runnable(
    mut config: Value,
    xds: SocketAddr,
    upstream_cluster: &str,
    upstream: u16,
    listen: u16,
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
    for wanted in ["mcpgw-xds", "mcpgw-relay", "mcpgw-ratelimit"] {
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
    clusters.push(loopback_cluster(upstream_cluster, upstream, false));
    for l in config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        l["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": 0});
    }
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] =
        json!(listen);
    config
}

/// Waits until node `node_id` acked ECDS at `version` (the gateway's filter subscribes to
/// nothing else from the control plane); its status.
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

/// A free TCP port on loopback (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// POSTs `tools/list` to `url`: the status and the body (JSON), or `None` while nothing
/// answers.
async fn probe(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    super::try_rpc(http, url, &list, None).await.ok()
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

/// The whole life of the filter on an Istio gateway: it answers 503 until its configuration
/// arrives (no control plane yet), subscribes itself, serves MCP through Istio's cluster,
/// follows a registry change, keeps serving while the control plane is away, and
/// resubscribes to the new one, which it then follows.
///
/// The filter must be allowed to stop iteration on the request headers: without
/// `allow_on_headers_stop_iteration` (as istiod renders a WasmPlugin) this test hangs at
/// the first `tools/list`, the body never reaching the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_gateway_runs_the_filter_which_subscribes_itself() {
    let up = TestUpstream::with_tools(&["alpha"]).with_label("istio");
    let running = up.serve(0).await;
    let upstream_port: u16 = url::Url::parse(&running.url)
        .unwrap()
        .port()
        .expect("the upstream's port");
    let upstream_cluster = format!("outbound|{upstream_port}||127.0.0.1");
    let gateway = patched_gateway(None);
    let node_id = gateway["node"]["id"].as_str().unwrap().to_owned();
    // Exactly one mcpgw filter, before the router, allowed to hold the request's headers
    // while it reads the body, its plugin configuration naming the control plane's cluster.
    let filters = gateway["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .clone();
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[names.len() - 2..],
        [PLUGIN_FILTER, "envoy.filters.http.router"]
    );
    assert_eq!(
        names.iter().filter(|n| n.contains("mcpgw")).count(),
        1,
        "{names:?}"
    );
    let plugin = &filters[names.len() - 2]["typed_config"]["config"];
    assert_eq!(plugin["failure_policy"], "FAIL_CLOSED");
    assert_eq!(plugin["allow_on_headers_stop_iteration"], true);
    let configuration: Value =
        serde_json::from_str(plugin["configuration"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(configuration, json!({"xds": {"cluster": "mcpgw-xds"}}));

    // The gateway starts before the control plane.
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = runnable(gateway, xds, &upstream_cluster, upstream_port, 0);
    let base = 63_000 + std::process::id() % 1000;
    let mut envoy = Envoy::spawn(&serde_json::to_string(&config).unwrap(), base).await;
    let listener = envoy.listener(GATEWAY_LISTENER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (s, v) = probe(&http, &format!("http://{listener}/mcp"))
        .await
        .expect("the listener answers");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], -32603, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("waiting for the mcpgw control plane"),
        "{v}"
    );

    let db = TestDb::sqlite();
    let istio = |s: &mut mcpgw::config::Settings| {
        s.edge.cluster_naming = ClusterNaming::Istio {
            domain: "cluster.local".into(),
        };
    };
    let cp = control_plane_with(&db, xds.port(), istio).await;
    let (gid, tools) = add_gateway(&cp, "up", &running.url).await;
    let sid = add_server(
        &cp,
        "istio",
        json!({"associated_tools": [tools["up__alpha"]]}),
    )
    .await;
    let version = registry_version(&cp).await;
    let node = ecds_acked(&cp, &mut envoy, &node_id, &version).await;
    assert!(node["types"][ECDS]["last_nack"].is_null(), "{node}");
    assert!(node["connected_streams"].as_u64().unwrap() >= 1, "{node}");
    // The snapshot routes to the cluster istiod generates for the upstream's host and port.
    let (_, snapshot) = cp.get("/snapshot").await;
    assert_eq!(
        snapshot["upstreams"][&gid]["cluster"],
        upstream_cluster.as_str(),
        "{snapshot}"
    );

    let mcp = format!("http://{listener}/servers/{sid}/mcp");
    wait_tools(&mut envoy, &http, &mcp, &["up__alpha"]).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (s, v) = rpc(&http, &mcp, &list, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tool_names(&v), ["up__alpha"], "{v}");
    let sess = session(&http, &mcp).await;
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "up__alpha", "arguments": {}}});
    let (s, v) = rpc(&http, &mcp, &call, Some(&sess)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "istio:alpha", "{v}");

    // A client cannot pick a cluster itself: the overlay removes the route header before
    // Envoy picks the route, so this reaches the gateway's own route (httpbin, which does
    // not resolve here: 503 from Envoy), never the upstream.
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

    // A registry change reaches the edge without a restart: a second virtual server.
    let second = add_server(
        &cp,
        "second",
        json!({"associated_tools": [tools["up__alpha"]]}),
    )
    .await;
    let mcp2 = format!("http://{listener}/servers/{second}/mcp");
    wait_tools(&mut envoy, &http, &mcp2, &["up__alpha"]).await;

    // The control plane goes away: the filter keeps its last configuration.
    cp.stop().await;
    let (s, v) = rpc(&http, &mcp2, &list, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tool_names(&v), ["up__alpha"], "{v}");
    let (s, v) = rpc(&http, &mcp, &call, Some(&sess)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "istio:alpha", "{v}");

    // A new control plane on the same address and database: the filter resubscribes and
    // follows it (the second server deleted there disappears at the edge).
    let cp = control_plane_with(&db, xds.port(), istio).await;
    let (s, _) = cp.delete(&format!("/servers/{second}")).await;
    assert!(s == 200 || s == 204, "delete: {s}");
    let version = registry_version(&cp).await;
    ecds_acked(&cp, &mut envoy, &node_id, &version).await;
    let (http2, url2) = (http.clone(), mcp2.clone());
    envoy
        .wait("the deleted server to be gone at the edge", || {
            let (http, url) = (http2.clone(), url2.clone());
            async move { (probe(&http, &url).await?.0 == 404).then_some(()) }
        })
        .await;
    let (s, v) = rpc(&http, &mcp, &list, None).await;
    assert_eq!(s, 200, "{v}");
    let log = envoy.log();
    assert!(
        log.contains("subscribing to mcpgw.filter on cluster mcpgw-xds"),
        "{log}"
    );
    assert!(log.contains("reconnecting in"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // The gateway as it ran (the served filter inline) loads in `envoy --mode
    // validate`; the check has teeth: a misspelt field of the filter is refused.
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = envoy_validates(&config, dir.path(), base + 1);
    assert!(ok, "{out}");
    let mut broken = config.clone();
    broken["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .filter(|f| f["name"] == PLUGIN_FILTER)
        .for_each(|f| {
            let c = f["typed_config"]["config"].as_object_mut().unwrap();
            let policy = c.remove("failure_policy").unwrap();
            c.insert("failure_polcy".into(), policy);
        });
    let (ok, out) = envoy_validates(&broken, dir.path(), base + 1);
    assert!(!ok, "{out}");

    drop(envoy);
    cp.stop().await;
    running.stop().await;
}

/// A plugin configuration the filter cannot read is logged with the field at fault, and the
/// listener answers 503 saying so (fail closed), without a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_plugin_config_is_logged_and_answered_503() {
    let gateway = patched_gateway(Some(&json!({"xds": {"clustr": "mcpgw-xds"}})));
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = runnable(gateway, xds, "outbound|9||127.0.0.1", 9, 0);
    let base = 63_000 + std::process::id() % 1000;
    let mut envoy = Envoy::spawn(&serde_json::to_string(&config).unwrap(), base + 2).await;
    let listener = envoy.listener(GATEWAY_LISTENER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in ["/mcp", "/servers/x/mcp"] {
        let (s, v) = probe(&http, &format!("http://{listener}{path}"))
            .await
            .expect("the listener answers");
        assert_eq!(s, 503, "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("misconfigured"),
            "{v}"
        );
    }
    // Each worker logs it when it configures the filter, before its first request.
    let log = envoy.log();
    assert!(
        log.contains("rejecting configuration: pluginConfig xds"),
        "{log}"
    );
    assert!(log.contains("clustr"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// The filter's hand-written xDS messages (`mcpgw_core::subscription::wire`) against the
/// generated types: what it sends decodes as the `DiscoveryRequest` it means, and it reads
/// the plugin configuration out of a `DiscoveryResponse` built as the control plane builds
/// its ECDS resource.
#[test]
fn the_filters_xds_messages_match_the_generated_types() {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    use envoy_types::pb::envoy::extensions::wasm::v3::PluginConfig;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use envoy_types::pb::google::protobuf::{Any, StringValue};
    use mcpgw_core::subscription::{DEFAULT_RESOURCE, Received, Source, Subscription, TYPE_URL};
    use prost::Message as _;

    fn any(type_url: &str, m: &impl prost::Message) -> Any {
        Any {
            type_url: format!("type.googleapis.com/{type_url}"),
            value: m.encode_to_vec(),
        }
    }
    let source = Source {
        cluster: "mcpgw-xds".into(),
        resource: DEFAULT_RESOURCE.into(),
        node_id: None,
    };
    let mut sub = Subscription::new(source, "router~1~gw.istio-system~cluster.local");
    let first = DiscoveryRequest::decode(sub.opened().as_slice()).unwrap();
    assert_eq!(
        first.node.as_ref().unwrap().id,
        "router~1~gw.istio-system~cluster.local"
    );
    assert_eq!(first.node.as_ref().unwrap().user_agent_name, "mcpgw-filter");
    assert_eq!(first.resource_names, [DEFAULT_RESOURCE]);
    assert_eq!(first.type_url, TYPE_URL);
    assert_eq!(
        (first.version_info.as_str(), first.response_nonce.as_str()),
        ("", "")
    );

    let snapshot = r#"{"schema":1,"version":"v7"}"#;
    let wasm = Wasm {
        config: Some(PluginConfig {
            name: "mcpgw".into(),
            root_id: "mcpgw".into(),
            configuration: Some(any(
                "google.protobuf.StringValue",
                &StringValue {
                    value: snapshot.into(),
                },
            )),
            ..Default::default()
        }),
    };
    let other = TypedExtensionConfig {
        name: "mcpgw.jwt".into(),
        typed_config: Some(any("google.protobuf.StringValue", &StringValue::default())),
    };
    let filter = TypedExtensionConfig {
        name: DEFAULT_RESOURCE.into(),
        typed_config: Some(any("envoy.extensions.filters.http.wasm.v3.Wasm", &wasm)),
    };
    let response = DiscoveryResponse {
        version_info: "7".into(),
        resources: vec![
            any("envoy.config.core.v3.TypedExtensionConfig", &other),
            any("envoy.config.core.v3.TypedExtensionConfig", &filter),
        ],
        type_url: TYPE_URL.into(),
        nonce: "3".into(),
        ..Default::default()
    };
    let Received::Configuration {
        version,
        nonce,
        configuration,
    } = sub.on_response(&response.encode_to_vec())
    else {
        panic!("no configuration read");
    };
    assert_eq!((version.as_str(), nonce.as_str()), ("7", "3"));
    assert_eq!(configuration, snapshot.as_bytes());

    let ack = DiscoveryRequest::decode(sub.ack(&version, &nonce).as_slice()).unwrap();
    assert!(ack.node.is_none());
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("7", "3")
    );
    assert!(ack.error_detail.is_none());
    let nack = DiscoveryRequest::decode(sub.nack("4", "bad snapshot").as_slice()).unwrap();
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("7", "4")
    );
    let error = nack.error_detail.unwrap();
    assert_eq!((error.code, error.message.as_str()), (3, "bad snapshot"));
}

/// The labels of the representative sidecar's pod (`tests/manifests/istio-sidecar.yaml`).
const SIDECAR_LABELS: &str =
    r#"{"app": "mcp-server", "mcpgw.io/filter": "enabled", "security.istio.io/tlsMode": "istio"}"#;
/// The cluster `local-route.yaml` lets through, as shipped (an example server's).
const SHIPPED_LOCAL_CLUSTER: &str = "outbound|8080||mcp-server.mcp-servers.svc.cluster.local";

/// The representative sidecar configuration with the sidecar component's EnvoyFilters
/// applied in istiod's order (the root namespace's, then the server's route, whose cluster
/// is set to `local_cluster` as an operator sets it for their server), the filter's
/// extension configuration served, the module the local filter `.wasm`; as JSON.
fn patched_sidecar(local_cluster: &str) -> Value {
    let script = format!(
        "import json, sys, yaml\n\
         sys.path.insert(0, {dir:?})\n\
         import envoyfilter\n\
         config = yaml.safe_load(open({sidecar:?}))\n\
         for path in ({filter:?}, {route:?}):\n\
         \x20   text = open(path).read().replace({shipped:?}, {local_cluster:?})\n\
         \x20   config = envoyfilter.apply(config, yaml.safe_load(text), {SIDECAR_LABELS}, {module:?}, proxy='sidecar')\n\
         print(json.dumps(config))\n",
        dir = repo_path("tests/manifests").display().to_string(),
        sidecar = repo_path("tests/manifests/istio-sidecar.yaml")
            .display()
            .to_string(),
        filter = repo_path("manifests/components/istio-sidecar/envoyfilter.yaml")
            .display()
            .to_string(),
        route = repo_path("manifests/components/istio-sidecar/local-route.yaml")
            .display()
            .to_string(),
        shipped = SHIPPED_LOCAL_CLUSTER,
        module = filter_wasm().display().to_string(),
    );
    run_applier(&script)
}

/// The patched sidecar, made runnable here: no istiod (its ADS dropped, and with it the
/// outbound listeners and EDS clusters that follow it), no iptables (the inbound listener
/// on 127.0.0.1:`listen`, the MCP port's chains matched on that port instead of the
/// original destination 8080), no istio-agent (the mutual-TLS inbound chain, whose
/// certificates come over SDS, dropped: the plaintext one, which PERMISSIVE keeps, is the
/// same chain without TLS; the control plane's clusters plaintext on loopback, `xds`); the
/// inbound cluster `inbound|8080||` is the server in the pod, `local`, and `outbound`
/// holds the mesh's clusters istiod would give every sidecar (name, port).
fn runnable_sidecar(
    mut config: Value,
    xds: SocketAddr,
    listen: u16,
    local: u16,
    outbound: &[(&str, u16)],
) -> Value {
    config.as_object_mut().unwrap().remove("dynamic_resources");
    config["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    let clusters = config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap();
    for wanted in [
        "mcpgw-xds",
        "mcpgw-relay",
        "mcpgw-ratelimit",
        "inbound|8080||",
    ] {
        assert!(
            clusters.iter().any(|c| c["name"] == wanted),
            "no cluster {wanted}"
        );
    }
    clusters.retain(|c| {
        let name = c["name"].as_str().unwrap();
        !name.starts_with("mcpgw-") && name != "inbound|8080||" && c["type"] != "EDS"
    });
    clusters.push(loopback_cluster("mcpgw-xds", xds.port(), true));
    clusters.push(loopback_cluster("mcpgw-relay", 9, false));
    clusters.push(loopback_cluster("mcpgw-ratelimit", 9, true));
    clusters.push(loopback_cluster("inbound|8080||", local, false));
    for (name, port) in outbound {
        clusters.push(loopback_cluster(name, *port, false));
    }
    let listeners = config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap();
    listeners.retain(|l| l["name"] == "virtualInbound");
    let inbound = &mut listeners[0];
    inbound["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": listen});
    let chains = inbound["filter_chains"].as_array_mut().unwrap();
    chains.retain(|fc| fc["filter_chain_match"]["transport_protocol"] != "tls");
    for fc in chains.iter_mut() {
        if fc["filter_chain_match"]["destination_port"] == 8080 {
            fc["filter_chain_match"]["destination_port"] = json!(listen);
        }
    }
    config
}

/// The filter on an MCP server's own sidecar (manifests/components/istio-sidecar): it
/// answers 503 until it has subscribed to the control plane, then serves the virtual
/// servers over the server behind it (lists from the catalog, tool calls let through to
/// the server by the server's route), refuses a call the filter routed to an upstream
/// elsewhere (421, never forwarded), passes the server's own path through, ignores a
/// client's own route header, and once a policy requires a token refuses requests without
/// a valid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_sidecar_runs_the_filter_in_front_of_its_server() {
    const OWN_ISSUER: &str = "http://localhost/mcpgw";
    // The server behind the sidecar keeps no sessions (what a sidecar serves best: see
    // docs/kubernetes.md, "Sidecars"), so its own path answers a lone tools/list.
    let local = TestUpstream::with_tools(&["alpha"]).with_label("local");
    let local = local.serve_stateless(0).await;
    let other = TestUpstream::with_tools(&["beta"]).with_label("other");
    let other = other.serve(0).await;
    let port = |url: &str| url::Url::parse(url).unwrap().port().unwrap();
    let (local_port, other_port) = (port(&local.url), port(&other.url));
    // The clusters the control plane names the two servers by (`cluster_naming = istio`).
    let local_cluster = format!("outbound|{local_port}||127.0.0.1");
    let other_cluster = format!("outbound|{other_port}||127.0.0.1");

    let sidecar = patched_sidecar(&local_cluster);
    let node_id = sidecar["node"]["id"].as_str().unwrap().to_owned();
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = free_port();
    let config = runnable_sidecar(
        sidecar,
        xds,
        listen,
        local_port,
        &[(&local_cluster, local_port), (&other_cluster, other_port)],
    );
    let base = 68_000 + std::process::id() % 1000;
    let mut envoy = Envoy::spawn(&serde_json::to_string(&config).unwrap(), base).await;
    let inbound = envoy.listener("virtualInbound").await;
    assert_eq!(inbound.port(), listen);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Before the control plane: the filter fails closed, on the server's own path too.
    let (s, v) = probe(&http, &format!("http://{inbound}/mcp"))
        .await
        .expect("the inbound listener answers");
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("waiting for the mcpgw control plane"),
        "{v}"
    );

    let db = TestDb::sqlite();
    let cp = control_plane_with(&db, xds.port(), |s| {
        s.edge.cluster_naming = ClusterNaming::Istio {
            domain: "cluster.local".into(),
        };
        s.auth.jwt.issuer = OWN_ISSUER.into();
    })
    .await;
    let (_, local_tools) = add_gateway(&cp, "local", &local.url).await;
    let (_, other_tools) = add_gateway(&cp, "other", &other.url).await;
    let own = add_server(
        &cp,
        "own",
        json!({"associated_tools": [local_tools["local__alpha"]]}),
    )
    .await;
    let mixed = add_server(
        &cp,
        "mixed",
        json!({"associated_tools": [local_tools["local__alpha"], other_tools["other__beta"]]}),
    )
    .await;
    let version = registry_version(&cp).await;
    let node = ecds_acked(&cp, &mut envoy, &node_id, &version).await;
    assert!(node["types"][ECDS]["last_nack"].is_null(), "{node}");

    // A virtual server over the server behind the sidecar: lists from the catalog, the
    // call let through to the server by its route.
    let own_mcp = format!("http://{inbound}/servers/{own}/mcp");
    wait_tools(&mut envoy, &http, &own_mcp, &["local__alpha"]).await;
    let sess = session(&http, &own_mcp).await;
    let call = |name: &str| {
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": name, "arguments": {}}})
    };
    let (s, v) = rpc(&http, &own_mcp, &call("local__alpha"), Some(&sess)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "local:alpha", "{v}");

    // A virtual server that also draws on a server elsewhere: its own server's tool works,
    // the other's is refused by the sidecar (421), never forwarded anywhere.
    let mixed_mcp = format!("http://{inbound}/servers/{mixed}/mcp");
    wait_tools(
        &mut envoy,
        &http,
        &mixed_mcp,
        &["local__alpha", "other__beta"],
    )
    .await;
    let sess = session(&http, &mixed_mcp).await;
    let (s, v) = rpc(&http, &mixed_mcp, &call("local__alpha"), Some(&sess)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "local:alpha", "{v}");
    let r = http
        .post(&mixed_mcp)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &sess)
        .json(&call("other__beta"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);
    assert!(
        r.headers().get("x-envoy-upstream-service-time").is_none(),
        "{:?}",
        r.headers()
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32603, "{v}");

    // The server's own path passes through to it (its own, unprefixed, names) ...
    let (s, v) = rpc(
        &http,
        &format!("http://{inbound}/mcp"),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tool_names(&v), ["alpha"], "{v}");
    // ... and a client's own route header is gone before the route is chosen: naming the
    // other server's cluster, the request still reaches only the server behind the sidecar
    // (not the 421 that a route header set by the filter would get).
    let spoofed = http
        .post(format!("http://{inbound}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("x-mcpgw-cluster", &other_cluster)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status().as_u16(), 200);
    let text = spoofed.text().await.unwrap();
    assert!(
        text.contains("\"alpha\"") && !text.contains("beta"),
        "{text}"
    );

    // A policy on the virtual server: a token is required, and none (or one no issuer
    // verified) gets 401.
    let (s, v) = cp
        .put(
            "/issuers/mcpgw",
            json!({"issuer": OWN_ISSUER, "algorithms": ["ES256"], "audiences": ["mcpgw-api"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = cp
        .put(&format!("/policies/{own}"), json!({"resource": own_mcp}))
        .await;
    assert_eq!(s, 201, "{v}");
    let version = registry_version(&cp).await;
    ecds_acked(&cp, &mut envoy, &node_id, &version).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    for token in [None, Some("Bearer not-a-token")] {
        let mut req = http
            .post(&own_mcp)
            .header("accept", "application/json, text/event-stream")
            .json(&list);
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{token:?}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let (s, v) = rpc(&http, &own_mcp, &call("local__alpha"), None).await;
        assert_eq!(s, 401, "{v}");
    }
    let log = envoy.log();
    assert!(
        log.contains("subscribing to mcpgw.filter on cluster mcpgw-xds"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // The sidecar as it ran loads in `envoy --mode validate`.
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = envoy_validates(&config, dir.path(), base + 1);
    assert!(ok, "{out}");

    drop(envoy);
    cp.stop().await;
    local.stop().await;
    other.stop().await;
}
