//! Mutual TLS between Envoy and the control plane's xDS: the committed TLS bootstrap
//! (`envoy/tls/ads-bootstrap.yaml`) with certificates made here by the `openssl` CLI. (A
//! client without a certificate, or with one from another CA, is refused: tested in
//! `mcpgw-xds`, `xds/tests/ads.rs`.)

use std::net::SocketAddr;
use std::path::PathBuf;

use mcpgw::config::ServerTls;
use serde_json::json;

use super::super::harness::TestDb;
use super::super::upstream::TestUpstream;
use super::{
    Envoy, NODE, add_gateway, add_server, control_plane_with, node_acked, registry_version,
    repo_path, wait_tools,
};

/// The name the committed TLS bootstrap expects in the control plane's certificate.
pub const CONTROL_PLANE_NAME: &str = "mcpgw-control-plane";

/// A CA, a server certificate for [`CONTROL_PLANE_NAME`] and 127.0.0.1, and an Envoy
/// client certificate, in the file names the TLS bootstrap uses.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        mcpgw_harness::pki::issue(dir.path(), "mcpgw-test-ca", CONTROL_PLANE_NAME).unwrap();
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The committed TLS bootstrap, pointed at `xds`, these files and an ephemeral admin
    /// port.
    pub fn bootstrap(&self, xds: SocketAddr) -> String {
        let text = std::fs::read_to_string(repo_path("envoy/tls/ads-bootstrap.yaml")).unwrap();
        let (xds_port, admin_port, files) = (
            "port_value: 18000 }",
            "port_value: 9901 }",
            "/etc/mcpgw/tls/",
        );
        assert!(
            text.contains(xds_port) && text.contains(admin_port) && text.contains(files),
            "envoy/tls/ads-bootstrap.yaml no longer has what this test substitutes"
        );
        text.replace(xds_port, &format!("port_value: {} }}", xds.port()))
            .replace(admin_port, "port_value: 0 }")
            .replace(files, &format!("{}/", self.dir.path().display()))
    }
}

/// A control plane serving xDS over TLS with client certificates, and an Envoy started
/// from the committed TLS bootstrap: Envoy gets its configuration and serves the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_the_control_plane_over_mutual_tls() {
    let pki = Pki::new();
    let db = TestDb::sqlite();
    let tls = ServerTls {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: pki.path("ca.pem"),
    };
    let cp = control_plane_with(&db, 0, move |s| s.tls = Some(tls)).await;
    let xds = cp.xds_addr.expect("xDS enabled");
    let mut envoy = Envoy::spawn(
        &pki.bootstrap(xds),
        50_000 + std::process::id() % 10_000 + 33,
    )
    .await;
    let up = TestUpstream::with_tools(&["whoami"]).with_label("over-tls");
    let running = up.serve(0).await;
    let (_, tools) = add_gateway(&cp, "up", &running.url).await;
    let sid = add_server(
        &cp,
        "tls",
        json!({"associated_tools": [tools["up__whoami"]]}),
    )
    .await;
    let version = registry_version(&cp).await;
    let node = node_acked(&cp, &mut envoy, &version).await;
    assert_eq!(node["node_id"], NODE);
    let listener = envoy.listener(mcpgw::edge_config::LISTENER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_tools(
        &mut envoy,
        &http,
        &format!("http://{listener}/servers/{sid}/mcp"),
        &["up__whoami"],
    )
    .await;
    running.stop().await;
}
