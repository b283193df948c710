//! The registry as the edge serves it: how soon a write shows, edits and deletions, virtual
//! servers composed over upstreams whose tool names collide, and an Envoy that joins late.

use std::time::Instant;

use serde_json::{Value, json};

use super::super::upstream::TestUpstream;
use super::{
    ECDS, Envoy, NODE, Rig, add_gateway, add_server, call_text, edge_tools, mcp_url, node_acked_as,
    registry_version, rpc, session, try_rpc, wait_tools,
};

/// The ids of `names` in `tools` (name → id).
fn ids(tools: &std::collections::BTreeMap<String, String>, names: &[&str]) -> Vec<Value> {
    names
        .iter()
        .map(|n| {
            json!(
                tools
                    .get(*n)
                    .unwrap_or_else(|| panic!("no tool {n} in {tools:?}"))
            )
        })
        .collect()
}

/// The JSON-RPC error of calling an unknown name: -32602 naming it.
fn assert_unknown_tool(v: &Value, name: &str) {
    assert_eq!(v["error"]["code"], -32602, "{name}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(name),
        "the error names {name}: {v}"
    );
}

/// From the API writes (POST /gateways, POST /servers) to Envoy answering `tools/list` with
/// the new tools. The time is printed, not asserted: the bound is the harness's generous
/// timeout, so a busy machine does not fail the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tools_reach_the_edge_soon_after_the_api_write() {
    let mut rig = Rig::start(1).await;
    rig.synced().await;
    let up = TestUpstream::with_tools(&["echo", "whoami"]).with_label("fresh");
    let running = up.serve(0).await;

    let start = Instant::now();
    let (_, tools) = add_gateway(&rig.cp, "fresh", &running.url).await;
    let sid = add_server(
        &rig.cp,
        "fresh",
        json!({"associated_tools": ids(&tools, &["fresh__echo", "fresh__whoami"])}),
    )
    .await;
    let written = start.elapsed();
    rig.tools_become(&sid, &["fresh__echo", "fresh__whoami"])
        .await;
    let served = start.elapsed();
    eprintln!(
        "API write → edge tools/list: {served:?} from POST /gateways ({written:?} of it in the \
         two API calls, {:?} after POST /servers returned)",
        served.saturating_sub(written)
    );

    let session = rig.session(&sid).await;
    let v = rig.call(&sid, &session, "fresh__whoami", json!({})).await;
    assert_eq!(call_text(&v), "fresh", "{v}");
    running.stop().await;
}

/// Renaming, disabling and removing a tool through the API change `tools/list` at the
/// edge; a renamed tool still reaches the upstream under its own name; a deleted virtual
/// server answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_edits_and_a_deleted_server_are_reflected_at_the_edge() {
    let mut rig = Rig::start(2).await;
    let up = TestUpstream::with_tools(&["alpha", "bravo", "charlie"]).with_label("up");
    let running = up.serve(0).await;
    let (_, tools) = add_gateway(&rig.cp, "up", &running.url).await;
    let all = ids(&tools, &["up__alpha", "up__bravo", "up__charlie"]);
    let sid = add_server(&rig.cp, "edits", json!({"associated_tools": all})).await;
    rig.tools_become(&sid, &["up__alpha", "up__bravo", "up__charlie"])
        .await;

    // Rename: the new name is listed and routed to the upstream's own `alpha`.
    let alpha = &tools["up__alpha"];
    let (s, v) = rig
        .cp
        .put(&format!("/tools/{alpha}"), json!({"name": "first"}))
        .await;
    assert_eq!(s, 200, "{v}");
    rig.tools_become(&sid, &["first", "up__bravo", "up__charlie"])
        .await;
    let session = rig.session(&sid).await;
    let v = rig.call(&sid, &session, "first", json!({})).await;
    assert_eq!(call_text(&v), "up:alpha", "{v}");
    let v = rig.call(&sid, &session, "up__alpha", json!({})).await;
    assert_unknown_tool(&v, "up__alpha");

    // Disable: gone from the list, and calling it is refused at the edge.
    let bravo = &tools["up__bravo"];
    let (s, v) = rig
        .cp
        .post(&format!("/tools/{bravo}/state?activate=false"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    rig.tools_become(&sid, &["first", "up__charlie"]).await;
    let v = rig.call(&sid, &session, "up__bravo", json!({})).await;
    assert_unknown_tool(&v, "up__bravo");

    // Remove from the server: only what is still associated (and enabled) remains.
    let (s, v) = rig
        .cp
        .put(
            &format!("/servers/{sid}"),
            json!({"associated_tools": ids(&tools, &["up__alpha", "up__bravo"])}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    rig.tools_become(&sid, &["first"]).await;
    let v = rig.call(&sid, &session, "up__charlie", json!({})).await;
    assert_unknown_tool(&v, "up__charlie");

    // Delete the server: its endpoint is gone.
    let (s, _) = rig.cp.delete(&format!("/servers/{sid}")).await;
    assert_eq!(s, 204);
    let (http, mcp) = (rig.http.clone(), rig.mcp(&sid));
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let body = rig
        .envoy
        .wait(&format!("{mcp} to answer 404"), || {
            let (http, mcp, list) = (http.clone(), mcp.clone(), list.clone());
            async move {
                let (s, v) = try_rpc(&http, &mcp, &list, None).await.ok()?;
                (s == 404).then_some(v)
            }
        })
        .await;
    assert!(body["error"].is_object(), "a JSON-RPC error: {body}");
    running.stop().await;
}

/// Three upstreams whose tools share names (`whoami`, `echo`), one of them stateless;
/// server A composes upstreams one and two, server B two and three. Each lists its
/// upstreams' tools under namespaced names, each call reaches the upstream its name
/// says, and a tool of an upstream the server does not compose is refused, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_virtual_servers_over_three_upstreams_with_colliding_tool_names() {
    let mut rig = Rig::start(3).await;
    let ups: Vec<TestUpstream> = ["one", "two", "three"]
        .iter()
        .map(|label| TestUpstream::with_tools(&["echo", "whoami"]).with_label(label))
        .collect();
    let running = [
        ups[0].serve(0).await,
        ups[1].serve_stateless(0).await,
        ups[2].serve(0).await,
    ];
    let mut tools = std::collections::BTreeMap::new();
    for (label, r) in ["one", "two", "three"].iter().zip(&running) {
        tools.extend(add_gateway(&rig.cp, label, &r.url).await.1);
    }
    let a = add_server(
        &rig.cp,
        "A",
        json!({"associated_tools": ids(&tools, &["one__echo", "one__whoami", "two__echo", "two__whoami"])}),
    )
    .await;
    let b = add_server(
        &rig.cp,
        "B",
        json!({"associated_tools": ids(&tools, &["two__echo", "two__whoami", "three__echo", "three__whoami"])}),
    )
    .await;
    rig.tools_become(
        &a,
        &["one__echo", "one__whoami", "two__echo", "two__whoami"],
    )
    .await;
    rig.tools_become(
        &b,
        &["three__echo", "three__whoami", "two__echo", "two__whoami"],
    )
    .await;

    for (sid, members, stranger) in [(&a, ["one", "two"], "three"), (&b, ["two", "three"], "one")] {
        let session = rig.session(sid).await;
        for label in members {
            let v = rig
                .call(sid, &session, &format!("{label}__whoami"), json!({}))
                .await;
            assert_eq!(call_text(&v), label, "{v}");
            let v = rig
                .call(sid, &session, &format!("{label}__echo"), json!({"x": "1"}))
                .await;
            assert_eq!(call_text(&v), format!("{label}:echo"), "{v}");
        }
        let name = format!("{stranger}__whoami");
        let v = rig.call(sid, &session, &name, json!({})).await;
        assert_unknown_tool(&v, &name);
    }
    for r in running {
        r.stop().await;
    }
}

/// An Envoy that connects after the registry has content (another node id, and
/// incremental xDS) converges on the same catalog, and `GET /xds/nodes` reports both
/// nodes with every type acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_started_later_converges_and_both_nodes_are_listed() {
    const LATE: &str = "mcpgw-envoy-late";
    let mut rig = Rig::start(4).await;
    let up = TestUpstream::with_tools(&["echo", "whoami"]).with_label("up");
    let running = up.serve(0).await;
    let (_, tools) = add_gateway(&rig.cp, "up", &running.url).await;
    let sid = add_server(
        &rig.cp,
        "shared",
        json!({"associated_tools": ids(&tools, &["up__echo", "up__whoami"])}),
    )
    .await;
    rig.tools_become(&sid, &["up__echo", "up__whoami"]).await;
    let version = registry_version(&rig.cp).await;
    rig.synced().await;

    let mut late = Envoy::start_as(rig.cp.xds_addr.unwrap(), 5, LATE, "DELTA_GRPC").await;
    let listener = late.listener(mcpgw::edge_config::LISTENER).await;
    let mcp = mcp_url(listener, &sid);
    wait_tools(&mut late, &rig.http, &mcp, &["up__echo", "up__whoami"]).await;
    assert_eq!(
        edge_tools(&rig.http, &mcp).await,
        edge_tools(&rig.http, &rig.mcp(&sid)).await,
        "both Envoys serve the same catalog"
    );
    let s = session(&rig.http, &mcp).await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "up__whoami", "arguments": {}}});
    let (status, v) = rpc(&rig.http, &mcp, &call, Some(&s)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(call_text(&v), "up", "{v}");

    let late_node = node_acked_as(&rig.cp, &mut late, LATE, &version).await;
    assert_eq!(late_node["types"][ECDS]["version_acked"], version.as_str());
    let (s, nodes) = rig.cp.get("/xds/nodes").await;
    assert_eq!(s, 200);
    let mut ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [NODE, LATE], "{nodes}");
    for n in nodes.as_array().unwrap() {
        let kind = if n["node_id"] == LATE {
            "delta"
        } else {
            "state_of_the_world"
        };
        assert_eq!(n["stream_kind"], kind, "{n}");
        assert_eq!(n["cluster"], "mcpgw", "{n}");
        assert!(n["connected_streams"].as_u64().unwrap() >= 1, "{n}");
        assert_eq!(n["types"][ECDS]["version_acked"], version.as_str(), "{n}");
    }
    drop(late);
    running.stop().await;
}
