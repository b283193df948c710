//! DNS rebinding past the SSRF guard: Envoy connects only to addresses the control plane
//! resolved and checked. A name that starts answering a forbidden address loses its
//! endpoint (that gateway alone); when it answers a permitted one again, it is back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use mcpgw::edge_config::{EdgeResolver, Resolver};
use serde_json::json;

use super::super::upstream::TestUpstream;
use super::{Rig, add_gateway, add_server, call_text, edge_tools};

/// A resolver whose answer for each name the test sets (what a rebinding DNS server does).
#[derive(Default)]
struct Answers(Mutex<HashMap<String, Vec<IpAddr>>>);

impl Answers {
    fn set(&self, host: &str, addrs: &[&str]) {
        self.0.lock().unwrap().insert(
            host.to_owned(),
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
        );
    }
}

impl Resolver for Answers {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        let got = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            got.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))
        })
    }
}

/// Sum of the samples of metric `name` with `label` in the control plane's `/metrics`.
async fn metric(rig: &Rig, name: &str, label: &str) -> Option<f64> {
    let (_, text) = rig.cp.get("/metrics").await;
    text.as_str()?
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_rebound_to_a_forbidden_address_withdraws_only_its_endpoint() {
    let answers = Arc::new(Answers::default());
    answers.set("localhost", &["127.0.0.1"]);
    let resolver = EdgeResolver(answers.clone());
    let mut rig = Rig::start_with(31, move |s| {
        s.edge.resolver = resolver;
        s.edge.resolve_interval = Duration::from_millis(200);
    })
    .await;
    let by_name = TestUpstream::with_tools(&["whoami"]).with_label("by-name");
    let by_ip = TestUpstream::with_tools(&["whoami"]).with_label("by-ip");
    let (named, literal) = (by_name.serve(0).await, by_ip.serve(0).await);
    let (gid, tools) = add_gateway(
        &rig.cp,
        "named",
        &format!("http://localhost:{}/mcp", named.addr.port()),
    )
    .await;
    let (_, ip_tools) = add_gateway(&rig.cp, "literal", &literal.url).await;
    let sid = add_server(
        &rig.cp,
        "dns",
        json!({"associated_tools": [tools["named__whoami"], ip_tools["literal__whoami"]]}),
    )
    .await;
    rig.tools_become(&sid, &["literal__whoami", "named__whoami"])
        .await;
    let cluster = format!("mcpgw-gw-{gid}");
    // Envoy never resolves the name: the cluster is static on the checked address.
    rig.envoy.dump_mentions("STRICT_DNS", false).await;
    let session = rig.session(&sid).await;
    let v = rig.call(&sid, &session, "named__whoami", json!({})).await;
    assert_eq!(call_text(&v), "by-name", "{v}");

    // The name now answers the cloud metadata address: its gateway is withdrawn from
    // the edge (cluster and catalog), the other one keeps serving.
    answers.set("localhost", &["169.254.169.254"]);
    rig.envoy.dump_mentions(&cluster, false).await;
    rig.tools_become(&sid, &["literal__whoami"]).await;
    let after = rig.session(&sid).await;
    let v = rig.call(&sid, &after, "literal__whoami", json!({})).await;
    assert_eq!(call_text(&v), "by-ip", "{v}");
    let left_out = metric(
        &rig,
        "mcpgw_edge_upstreams_left_out",
        "reason=\"forbidden_address\"",
    )
    .await;
    assert_eq!(left_out, Some(1.0));
    let (_, snapshot) = rig.cp.get("/snapshot").await;
    assert!(snapshot["upstreams"].get(&gid).is_none(), "{snapshot}");

    // A permitted answer again: back.
    answers.set("localhost", &["127.0.0.1"]);
    rig.envoy.dump_mentions(&cluster, true).await;
    rig.tools_become(&sid, &["literal__whoami", "named__whoami"])
        .await;
    let session = rig.session(&sid).await;
    let v = rig.call(&sid, &session, "named__whoami", json!({})).await;
    assert_eq!(call_text(&v), "by-name", "{v}");
    assert_eq!(
        edge_tools(&rig.http, &rig.mcp(&sid)).await.map(|t| t.len()),
        Some(2)
    );
    named.stop().await;
    literal.stop().await;
}
