//! Token exchange configured through the REST API only: the gateway in mode
//! `token-exchange` (`POST /gateways`, client secret write-only), the provider as an issuer
//! (`PUT /issuers`, keys fetched by discovery) and the server's policy (`PUT /policies`),
//! enforced by a real Envoy following the control plane over ADS, against a real OpenID
//! provider (`oidc-provider`): the upstream sees only the token the provider issued for it.

use serde_json::json;

use super::super::oidc::Issuer;
use super::super::upstream::TestUpstream;
use super::{Rig, add_server};

const UPSTREAM_AUDIENCE: &str = "https://upstream.mcpgw.test/mcp";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_configured_through_the_api_reaches_the_upstream() {
    let mut rig = Rig::start(56).await;
    let issuer = Issuer::start(json!({})).await;
    let upstream = TestUpstream::with_tools(&["echo"]);
    let running = upstream.serve_stateless(0).await;

    let (s, g) = rig
        .cp
        .post(
            "/gateways",
            json!({"name": "g1", "url": running.url,
                   "identity": {"mode": "token-exchange",
                                "token_exchange": {"token_endpoint": format!("{}/token", issuer.url),
                                                   "client_id": "mcpgw-gateway",
                                                   "audience": UPSTREAM_AUDIENCE},
                                "client_secret": "gateway-secret"}}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    assert!(
        !g.to_string().contains("gateway-secret"),
        "the client secret is write-only: {g}"
    );
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let (_, tools) = rig.cp.get(&format!("/tools?gateway_id={gid}")).await;
    let tool = tools["items"][0]["id"].as_str().unwrap().to_owned();
    let sid = add_server(&rig.cp, "team", json!({"associated_tools": [tool]})).await;
    let resource = rig.mcp(&sid);

    let (s, v) = rig
        .cp
        .put(
            "/issuers/idp",
            json!({"issuer": issuer.url, "algorithms": ["RS256"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = rig
        .cp
        .put(
            &format!("/policies/{sid}"),
            json!({"resource": resource, "issuers": ["idp"],
                   "rules": [{"name": "echo", "when": "request.name == 'g1__echo'"}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    rig.synced().await;

    let token = issuer.machine_token(&resource, "tools.execute").await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "g1__echo", "arguments": {}}});
    let post = |token: Option<&str>| {
        let mut req = rig
            .http
            .post(&resource)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(call.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token");
    for i in 0..2 {
        let r = post(Some(&token)).await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "call {i}: {body}\n{}", rig.envoy.log());
        assert!(body.contains("result"), "{body}");
    }

    let done: serde_json::Value = reqwest::get(format!("{}/debug/exchanges", issuer.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["count"], 1, "two calls, one exchange: {done}");
    let issued = done["issued"][0].as_str().unwrap();
    let seen = upstream.auth_seen();
    // Discovery (the control plane's own session) may have reached the upstream too; the
    // two calls through the edge carry the exchanged token and never the client's.
    let from_edge: Vec<&String> = seen
        .iter()
        .filter(|a| a.as_str() == format!("Bearer {issued}"))
        .collect();
    assert_eq!(from_edge.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|a| !a.contains(&token)),
        "the client's token reached the upstream: {seen:?}"
    );
    running.stop().await;
}
