//! `edge_passthrough`: one registered gateway behind the edge's passthrough endpoint
//! (`/mcp`), under the filter's passthrough governance (here: the edge policy's denied
//! tools and `tool_routes`, the latter naming a gateway), through a real Envoy following
//! the control plane over ADS. While the gateway does not exist, and after it is deleted,
//! `/mcp` is the JSON-RPC 404 and the metric says so.

use serde_json::json;

use super::super::harness::TestDb;
use super::super::upstream::TestUpstream;
use super::{Envoy, Rig, bootstrap, call_text, control_plane_with, rpc, tool_names};

/// `mcpgw_edge_passthrough_unresolved` in the control plane's `/metrics`.
async fn unresolved(rig: &Rig) -> String {
    let (_, metrics) = rig.cp.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find(|l| l.starts_with("mcpgw_edge_passthrough_unresolved "))
        .unwrap_or_else(|| panic!("no passthrough gauge in:\n{text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passthrough_gateway_serves_mcp_under_the_edge_policy_and_tool_routes_name_gateways() {
    let db = TestDb::sqlite();
    let cp = control_plane_with(&db, 0, |s| {
        s.edge.passthrough = Some("docs".into());
        s.edge_policy.denied_tools = vec!["charlie".into()];
        s.edge_policy
            .tool_routes
            .insert("bravo".into(), "other".into());
    })
    .await;
    // New tests' Envoys: 66 000 + pid % 1000.
    let envoy = Envoy::spawn(
        &bootstrap(cp.xds_addr.expect("xDS enabled")),
        66_000 + std::process::id() % 1000,
    )
    .await;
    let mut rig = Rig::around(cp, envoy, db, Vec::new()).await;
    rig.synced().await;
    let mcp = format!("http://{}/mcp", rig.listener);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let call = |id: u64, name: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": name, "arguments": {}}})
    };

    // No gateway named `docs` yet: the 404, and the gauge says why.
    let (s, v) = rpc(&rig.http, &mcp, &list, None).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["message"], "no upstream serves this request");
    assert_eq!(
        unresolved(&rig).await,
        "mcpgw_edge_passthrough_unresolved 1"
    );

    let docs = TestUpstream::with_tools(&["alpha", "bravo", "charlie"]).with_label("docs");
    let other = TestUpstream::with_tools(&["bravo"]).with_label("other");
    let (docs_run, other_run) = (
        docs.serve_stateless(0).await,
        other.serve_stateless(0).await,
    );
    for (name, url) in [("docs", &docs_run.url), ("other", &other_run.url)] {
        let (s, g) = rig
            .cp
            .post("/gateways", json!({"name": name, "url": url}))
            .await;
        assert_eq!(s, 201, "{g}");
    }
    rig.synced().await;
    assert_eq!(
        unresolved(&rig).await,
        "mcpgw_edge_passthrough_unresolved 0"
    );
    // The snapshot's tool route names the cluster of the gateway named `other`.
    let (_, snap) = rig.cp.get("/snapshot").await;
    let route = snap["policy"]["tool_routes"]["bravo"].as_str().unwrap();
    assert!(route.starts_with("mcpgw-gw-"), "{snap}");
    assert!(
        snap["upstreams"]
            .as_object()
            .unwrap()
            .values()
            .any(|u| u["cluster"] == route),
        "{snap}"
    );

    // `/mcp` is the docs server's own endpoint now: its own names, no prefix, its own
    // pages (two tools each).
    let (s, v) = rpc(&rig.http, &mcp, &list, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tool_names(&v), ["alpha", "bravo"], "{v}");
    assert_eq!(v["result"]["nextCursor"], "2", "{v}");
    let (s, v) = rpc(&rig.http, &mcp, &call(2, "alpha"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "docs:alpha", "{v}");
    // `tool_routes` sends bravo to the gateway named `other`.
    let (s, v) = rpc(&rig.http, &mcp, &call(3, "bravo"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "other:bravo", "{v}");
    // The edge policy holds on the passthrough path.
    let (_, v) = rpc(&rig.http, &mcp, &call(4, "charlie"), None).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"charlie\" is denied by policy")),
        "{v}"
    );
    // Only `/mcp` is the passthrough endpoint.
    let (s, v) = rpc(
        &rig.http,
        &format!("http://{}/other", rig.listener),
        &list,
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");

    // The gateway goes: back to the 404.
    let (_, gateways) = rig.cp.get("/gateways").await;
    let id = gateways["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "docs")
        .and_then(|g| g["id"].as_str())
        .unwrap()
        .to_owned();
    let (s, _) = rig.cp.delete(&format!("/gateways/{id}")).await;
    assert!(s == 200 || s == 204, "delete: {s}");
    rig.synced().await;
    let (s, v) = rpc(&rig.http, &mcp, &list, None).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(
        unresolved(&rig).await,
        "mcpgw_edge_passthrough_unresolved 1"
    );
    docs_run.stop().await;
    other_run.stop().await;
}
