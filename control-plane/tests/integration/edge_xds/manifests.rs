//! The standalone Kubernetes overlay's Envoy bootstrap (`manifests/standalone/
//! envoy-bootstrap.yaml`, shipped as the ConfigMap `mcpgw-envoy-bootstrap`) is the file a
//! real Envoy starts from here: pointed at this test's control plane (xDS over mutual TLS)
//! instead of the `mcpgw-xds` Service, it gets the registry and serves MCP: the core
//! cases (tools/list, initialize, tools/call, ping, a tool not exposed, an unknown virtual
//! server, a client's own route header). Only what differs between a pod and this machine is substituted: the
//! Service's name and port, the admin port and the Secret's mount directory.

use std::net::SocketAddr;
use std::path::Path;

use mcpgw::config::ServerTls;
use serde_json::json;

use super::super::harness::TestDb;
use super::super::upstream::TestUpstream;
use super::tls::Pki;
use super::{
    Envoy, NODE, Rig, add_gateway, add_server, call_text, control_plane_with, node_acked,
    registry_version, repo_path, rpc, session, wait_tools,
};

/// The standalone overlay's bootstrap, pointed at `xds`, an ephemeral admin port and the
/// certificate files in `tls_dir` (named as the Secret `mcpgw-envoy-tls` names them).
pub(super) fn manifest_bootstrap(xds: SocketAddr, tls_dir: &Path) -> String {
    let text =
        std::fs::read_to_string(repo_path("manifests/standalone/envoy-bootstrap.yaml")).unwrap();
    let (service, admin, files) = (
        "address: mcpgw-xds.mcpgw.svc.cluster.local, port_value: 18000 }",
        "port_value: 9901 }",
        "/etc/mcpgw/tls/",
    );
    assert!(
        [
            service,
            admin,
            files,
            "type: STRICT_DNS",
            &format!("id: {NODE} ")
        ]
        .iter()
        .all(|s| text.contains(s)),
        "manifests/standalone/envoy-bootstrap.yaml no longer has what this test substitutes"
    );
    text.replace(
        service,
        &format!("address: 127.0.0.1, port_value: {} }}", xds.port()),
    )
    .replace(admin, "port_value: 0 }")
    .replace(files, &format!("{}/", tls_dir.display()))
}

/// A PKI, the directory the Secret `mcpgw-envoy-tls` would be mounted at (its key names,
/// cert-manager's: `ca.crt`, `tls.crt`, `tls.key`), and the control plane's TLS settings.
pub(super) fn secret_files() -> (Pki, tempfile::TempDir, ServerTls) {
    let pki = Pki::new();
    let secret = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("ca.pem", "ca.crt"),
        ("envoy.pem", "tls.crt"),
        ("envoy.key", "tls.key"),
    ] {
        std::fs::copy(pki.path(from), secret.path().join(to)).unwrap();
    }
    let tls = ServerTls {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: pki.path("ca.pem"),
    };
    (pki, secret, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_manifest_bootstrap_serves_mcp() {
    let (_pki, secret, tls) = secret_files();
    let db = TestDb::sqlite();
    let cp = control_plane_with(&db, 0, move |s| s.tls = Some(tls)).await;
    let xds = cp.xds_addr.expect("xDS enabled");
    let mut envoy = Envoy::spawn(
        &manifest_bootstrap(xds, secret.path()),
        50_000 + std::process::id() % 10_000 + 47,
    )
    .await;
    let up = TestUpstream::with_tools(&["alpha", "bravo"]).with_label("k8s");
    let running = up.serve(0).await;
    let (_, tools) = add_gateway(&cp, "up", &running.url).await;
    let sid = add_server(
        &cp,
        "standalone",
        json!({"associated_tools": [tools["up__alpha"]]}),
    )
    .await;
    let version = registry_version(&cp).await;
    let node = node_acked(&cp, &mut envoy, &version).await;
    assert_eq!(node["node_id"], NODE);
    let listener = envoy.listener(mcpgw::edge_config::LISTENER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mcp = format!("http://{listener}/servers/{sid}/mcp");
    wait_tools(&mut envoy, &http, &mcp, &["up__alpha"]).await;
    let session = session(&http, &mcp).await;
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "up__alpha", "arguments": {}}});
    let (s, v) = rpc(&http, &mcp, &call, Some(&session)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "k8s:alpha", "{v}");

    // The other core answers of the data path, through the same bootstrap:
    // ping from the filter itself;
    let ping = json!({"jsonrpc": "2.0", "id": 4, "method": "ping"});
    let (s, v) = rpc(&http, &mcp, &ping, Some(&session)).await;
    assert_eq!((s, &v["result"]), (200, &json!({})), "{v}");
    // a tool the virtual server does not expose is refused, never forwarded;
    let other = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "up__bravo", "arguments": {}}});
    let (_, v) = rpc(&http, &mcp, &other, Some(&session)).await;
    assert!(
        v["error"].is_object() || v["result"]["isError"] == true,
        "{v}"
    );
    assert_ne!(call_text(&v), "k8s:bravo", "{v}");
    // an unknown virtual server is a JSON-RPC 404, never "all tools";
    let list = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"});
    let (s, v) = rpc(
        &http,
        &format!("http://{listener}/servers/nope/mcp"),
        &list,
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].is_object(), "{v}");
    // a client's own route header picks no cluster.
    let spoofed = http
        .get(format!("http://{listener}/mcp"))
        .header("x-mcpgw-cluster", "mcpgw-gw-anything")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status().as_u16(), 404);
    running.stop().await;
}

/// The official SDK clients' whole sessions (the rmcp client with progress notifications
/// on SSE, the Python SDK with its session DELETE) through an Envoy started from the
/// standalone overlay's bootstrap: the scenarios of `clients.rs`, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_manifest_bootstrap_runs_the_rmcp_client_session() {
    let mut rig = Rig::standalone(50_000 + std::process::id() % 10_000 + 48).await;
    super::clients::rmcp_session(&mut rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_manifest_bootstrap_runs_the_python_sdk_session() {
    let mut rig = Rig::standalone(50_000 + std::process::id() % 10_000 + 49).await;
    super::clients::python_sdk_session(&mut rig).await;
}
