//! `edge_passthrough`: one registered gateway behind the edge's passthrough endpoint
//! (`/mcp`), under the filter's passthrough governance (here: the edge policy's denied
//! tools and `tool_routes`, the latter naming a gateway), through a real Envoy following
//! the control plane over ADS. While the gateway does not exist, and after it is deleted,
//! `/mcp` is the JSON-RPC 404 and the metric says so.

use serde_json::json;

use super::super::harness::TestDb;
use super::super::upstream::TestUpstream;
use super::{
    Envoy, Rig, bootstrap, call_text, control_plane_with, rpc, team_member_token, tool_names,
};

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

/// The control plane's `jwt_issuer` in the policy test: an identifier, never fetched.
const OWN_ISSUER: &str = "http://localhost/mcpgw";

/// `POST /mcp` with `token` (if any): the status, the `WWW-Authenticate` and the body.
async fn call_as(
    rig: &Rig,
    mcp: &str,
    body: &serde_json::Value,
    token: Option<&str>,
) -> (u16, String, serde_json::Value) {
    let mut req = rig
        .http
        .post(mcp)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = r.text().await.unwrap();
    (
        status,
        challenge,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// `/policies/passthrough` gives the passthrough path its own identity: no token is a 401
/// with a challenge, the team's token calls what the rules allow, a rule that does not
/// parse is a 422 naming it, and the policy's removal opens the path again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passthrough_policy_requires_a_token_and_applies_its_rules() {
    let db = TestDb::sqlite();
    let cp = control_plane_with(&db, 0, |s| {
        s.edge.passthrough = Some("docs".into());
        s.auth.jwt.issuer = OWN_ISSUER.into();
    })
    .await;
    let envoy = Envoy::spawn(
        &bootstrap(cp.xds_addr.expect("xDS enabled")),
        66_000 + std::process::id() % 1000 + 500,
    )
    .await;
    let mut rig = Rig::around(cp, envoy, db, Vec::new()).await;
    let docs = TestUpstream::with_tools(&["alpha", "wipe"]).with_label("docs");
    let docs_run = docs.serve_stateless(0).await;
    let (s, g) = rig
        .cp
        .post("/gateways", json!({"name": "docs", "url": docs_run.url}))
        .await;
    assert_eq!(s, 201, "{g}");

    // A member of a team, signed in, and the control plane's issuer trusted at the edge.
    let (team, token) =
        team_member_token(&rig.cp, &rig.http, OWN_ISSUER, "alice@example.com").await;

    let mcp = format!("http://{}/mcp", rig.listener);
    // A rule that does not parse: refused, naming it, and nothing stored.
    let (s, v) = rig
        .cp
        .put(
            "/policies/passthrough",
            json!({"resource": mcp, "rules": [{"name": "r", "when": "principal.teams =="}]}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("rules[0].when"), "{v}");
    let (s, _) = rig.cp.get("/policies/passthrough").await;
    assert_eq!(s, 404);
    let (s, v) = rig
        .cp
        .put(
            "/policies/passthrough",
            json!({"resource": mcp, "issuers": ["mcpgw"],
                   "rules": [{"name": "agents", "when": format!("'{team}' in principal.teams && request.name != 'wipe'")}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    rig.synced().await;
    let (_, snap) = rig.cp.get("/snapshot").await;
    assert_eq!(
        snap["auth"]["passthrough"]["resource"],
        mcp.as_str(),
        "{snap}"
    );

    let call = |id: u64, name: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": name, "arguments": {}}})
    };
    let (s, challenge, v) = call_as(&rig, &mcp, &call(1, "alpha"), None).await;
    assert_eq!(s, 401, "{v}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    let (s, _, v) = call_as(&rig, &mcp, &call(2, "alpha"), Some("not.a.token")).await;
    assert_eq!(s, 401, "{v}");
    let (s, _, v) = call_as(&rig, &mcp, &call(3, "alpha"), Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call_text(&v), "docs:alpha", "{v}");
    let (s, _, v) = call_as(&rig, &mcp, &call(4, "wipe"), Some(&token)).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["id"], 4, "{v}");

    // The policy goes: the path asks for nothing again.
    let (s, _) = rig.cp.delete("/policies/passthrough").await;
    assert_eq!(s, 204);
    rig.synced().await;
    let (s, _, v) = call_as(&rig, &mcp, &call(5, "wipe"), None).await;
    assert_eq!(s, 200, "{v}");
    docs_run.stop().await;
}
