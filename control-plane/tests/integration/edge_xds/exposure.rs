//! What a virtual server exposes at a real Envoy configured over xDS, as the control plane
//! decides it: `upstream` naming (a transparent front, completion refs included), an
//! upstream found to speak the stateless era only (its versions steer the filter, which
//! bridges a 2025 client's calls), and the listener's and the server's `Origin` and `Host`
//! allow-lists.

use serde_json::{Value, json};

use super::super::upstream::PythonPeer;
use super::{Rig, add_gateway, add_server, rpc, session};

/// A POST of `body` to `url` with `headers`; the status and the JSON answer (the first SSE
/// `data:` line of a stream).
async fn post(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Value) {
    let mut req = http
        .post(url)
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find(|d| !d.trim().is_empty())
        .unwrap_or(&text)
        .trim()
        .to_owned();
    (
        status,
        serde_json::from_str(&json).unwrap_or(Value::String(text)),
    )
}

fn text(v: &Value) -> &str {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transparent_front_of_a_stateless_era_upstream_behind_origin_and_host_checks() {
    let peer = PythonPeer::start("modern").await;
    let mut rig = Rig::start_with(61, |s| {
        // The listener's port is picked by Envoy: any port of this name.
        s.edge_policy.allowed_hosts = vec!["127.0.0.1:*".into()];
        s.edge_policy.allowed_origins = vec!["http://localhost:*".into()];
    })
    .await;
    let (gid, tools) = add_gateway(&rig.cp, "modern", &peer.url).await;
    let (_, prompts) = rig.cp.get(&format!("/prompts?gateway_id={gid}")).await;
    let (_, resources) = rig.cp.get(&format!("/resources?gateway_id={gid}")).await;
    let ids = |page: &Value| -> Vec<Value> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].clone())
            .collect()
    };
    let sid = add_server(
        &rig.cp,
        "front",
        json!({"naming": "upstream", "allowed_origins": ["https://app.example.com"],
               "associated_tools": [tools["modern__echo"], tools["modern__add"]],
               "associated_prompts": ids(&prompts), "associated_resources": ids(&resources)}),
    )
    .await;
    rig.tools_become(&sid, &["add", "echo"]).await;
    let snap = rig.cp.current_snapshot().await;
    assert_eq!(
        snap["upstreams"][&gid]["protocol_versions"],
        json!(["2026-07-28"]),
        "what discovery found"
    );
    let mcp = rig.mcp(&sid);

    // A 2025 client, by the upstream's own names, bridged to the 2026-only upstream.
    let s = session(&rig.http, &mcp).await;
    let v = rig
        .call(&sid, &s, "echo", json!({"message": "through"}))
        .await;
    assert_eq!(text(&v), "through", "{v}");
    let get = json!({"jsonrpc": "2.0", "id": 8, "method": "prompts/get",
        "params": {"name": "greet", "arguments": {"name": "Ada"}}});
    let (st, v) = rpc(&rig.http, &mcp, &get, Some(&s)).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["result"]["messages"][0]["content"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Ada")),
        "{v}"
    );
    let complete = json!({"jsonrpc": "2.0", "id": 9, "method": "completion/complete",
        "params": {"ref": {"type": "ref/prompt", "name": "greet"},
                   "argument": {"name": "name", "value": "A"}}});
    let (st, v) = rpc(&rig.http, &mcp, &complete, Some(&s)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["result"]["completion"]["values"],
        json!(["Ada", "Alan"]),
        "{v}"
    );
    let complete = json!({"jsonrpc": "2.0", "id": 10, "method": "completion/complete",
        "params": {"ref": {"type": "ref/resource", "uri": "peer://items/{name}"},
                   "argument": {"name": "name", "value": "ap"}}});
    let (st, v) = rpc(&rig.http, &mcp, &complete, Some(&s)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["result"]["completion"]["values"],
        json!(["apple", "apricot"]),
        "{v}"
    );

    // A 2026-07-28 client, directly in its era.
    let call = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 2, "b": 3}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "exposure-test", "version": "1"}}}});
    let modern = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "add"),
    ];
    let (st, v) = post(&rig.http, &mcp, &modern, &call).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(text(&v), "5", "{v}");

    // Browsers: the server's own origin and the listener's pass, others get 403.
    let list = json!({"jsonrpc": "2.0", "id": 12, "method": "tools/list"});
    let legacy = ("mcp-protocol-version", "2025-11-25");
    for (origin, want) in [
        ("https://app.example.com", 200),
        ("http://localhost:6274", 200),
        ("https://evil.example", 403),
        ("http://app.example.com", 403),
    ] {
        let (st, v) = post(&rig.http, &mcp, &[legacy, ("origin", origin)], &list).await;
        assert_eq!(st, want, "{origin}: {v}");
        if want == 403 {
            assert!(v["error"]["code"].is_i64(), "a JSON-RPC error: {v}");
        }
    }
    // Another server does not admit this one's origin.
    let other = add_server(
        &rig.cp,
        "other",
        json!({"associated_tools": [tools["modern__echo"]]}),
    )
    .await;
    rig.tools_become(&other, &["modern__echo"]).await;
    let (st, v) = post(
        &rig.http,
        &rig.mcp(&other),
        &[legacy, ("origin", "https://app.example.com")],
        &list,
    )
    .await;
    assert_eq!(st, 403, "{v}");
    // A Host the listener does not answer for (a rebound name).
    let (st, v) = post(
        &rig.http,
        &mcp,
        &[legacy, ("host", "attacker.example")],
        &list,
    )
    .await;
    assert_eq!(st, 421, "{v}");
}
