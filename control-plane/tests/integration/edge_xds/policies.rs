//! Identity, limits and guardrails configured through the REST API only, enforced by a real
//! Envoy that follows the control plane over ADS: the control plane's own issuer (its
//! session tokens, keys handed in by the publisher), a policy, a rate limit and a PII
//! plugin on one virtual server, driven by the official Python SDK client
//! (`tests/py/mcp_token_calls.py`).

use serde_json::{Value, json};

use super::super::upstream::TestUpstream;
use super::{Rig, add_gateway, add_server, python, repo_path, team_member_token};

/// The control plane's `jwt_issuer` in this test: an identifier, never fetched.
const OWN_ISSUER: &str = "http://localhost/mcpgw";
const EMAIL: &str = "alice@example.com";

/// Runs the Python SDK client: `n` calls of `tool` with `token` ("-": none).
async fn sdk_calls(url: &str, token: &str, tool: &str, n: usize) -> Value {
    let (python, url, token, tool) = (python(), url.to_owned(), token.to_owned(), tool.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(repo_path("tests/py/mcp_token_calls.py"))
            .args([
                url.as_str(),
                token.as_str(),
                tool.as_str(),
                "{}",
                &n.to_string(),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_a_limit_and_a_pii_plugin_set_through_the_api_hold_at_the_edge() {
    let mut rig = Rig::start_with(71, |s| {
        s.auth.jwt.issuer = OWN_ISSUER.into();
    })
    .await;
    let up = TestUpstream::with_tools(&["whoami"]).with_label(&format!("mailto {EMAIL} now"));
    let running = up.serve(0).await;
    let (_, tools) = add_gateway(&rig.cp, "up", &running.url).await;
    let sid = add_server(
        &rig.cp,
        "guarded",
        json!({"associated_tools": [tools["up__whoami"]]}),
    )
    .await;

    // A member of a team, signed in: the control plane's session token names the team,
    // and its issuer maps the team to the developer role.
    let (team, token) = team_member_token(&rig.cp, &rig.http, OWN_ISSUER, EMAIL).await;
    let mcp = rig.mcp(&sid);
    let (s, v) = rig.cp
        .put(
            &format!("/policies/{sid}"),
            json!({"resource": mcp, "issuers": ["mcpgw"],
                   "rules": [{"name": "agents-only", "when": format!("'{team}' in principal.teams")}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = rig
        .cp
        .put(
            &format!("/limits/{sid}"),
            json!({"rates": [{"name": "three-calls", "by": ["principal"], "methods": ["tools/call"],
                              "requests": 3, "per_seconds": 3600}],
                   "concurrency": []}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = rig.cp
        .put(
            "/plugins/mask-pii",
            json!({"conditions": {"servers": [sid]}, "pii": {"action": "mask", "detectors": ["email"]}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let node = rig.synced().await;
    eprintln!("node synced: {}", node["types"]);
    let snapshot = rig.cp.current_snapshot().await;
    let jwks = &snapshot["auth"]["issuers"]["mcpgw"]["jwks"]["keys"];
    assert_eq!(
        jwks[0]["kty"], "EC",
        "the control plane's own key: {snapshot}"
    );

    // No token: 401 with the challenge naming the metadata.
    let r = rig
        .http
        .post(&mcp)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("resource_metadata="),
        "{challenge}"
    );
    let out = sdk_calls(&mcp, "-", "up__whoami", 1).await;
    assert_eq!(out["connect_error"]["status"], 401, "{out}");

    // The control plane's token: calls work, the result's email masked, until the limit.
    let out = sdk_calls(&mcp, &token, "up__whoami", 4).await;
    assert!(out["connect_error"].is_null(), "{out}");
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 4, "{out}");
    for call in &calls[..3] {
        assert_eq!(call["is_error"], false, "{out}");
        let text = call["text"][0].as_str().unwrap();
        assert!(
            text.starts_with("mailto ") && text.ends_with(" now"),
            "{out}"
        );
        assert!(!text.contains(EMAIL), "the email reached the client: {out}");
    }
    assert_eq!(
        calls[3]["status"], 429,
        "the fourth call is over the limit: {out}"
    );

    // Signing out revokes the token at the edge too (its id in the snapshot's `revoked`).
    let r = rig
        .http
        .post(rig.cp.url("/auth/logout"))
        .bearer_auth(&token)
        .header(mcpgw::api::cross_site::REQUEST_HEADER, "1")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    rig.synced().await;
    let out = sdk_calls(&mcp, &token, "up__whoami", 1).await;
    assert_eq!(out["connect_error"]["status"], 401, "{out}");

    rig.cp.stop().await;
    running.stop().await;
}
