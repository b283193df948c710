//! The filter's side of the hardening (issue 10), through a real Envoy with real upstreams
//! that record every request they receive: client credentials never travel upstream,
//! upstream sessions are opened lazily and ended with the client's session or when idle,
//! session tokens are sealed, batches are bounded, and made-up tool names cannot spend the
//! metric label budget.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::support::{
    artifacts, http, initialize, parse_prometheus, post, sample, send, tools_call,
};
use mcpgw_e2e::{Envoy, EnvoyConfig, RmcpServer, RmcpServerMode, Seen};

/// Session key of these tests (32 bytes, base64).
const KEY: &str = "bWNwZ3ctZTJlLWhhcmRlbmluZy1rZXktMzItYnl0ZXM=";
const VERSION: &str = "2025-11-25";
const CLIENT_CREDENTIALS: [(&str, &str); 3] = [
    ("authorization", "Bearer client-secret"),
    ("proxy-authorization", "Basic Y2xpZW50OnNlY3JldA=="),
    ("cookie", "sid=client-cookie"),
];

fn tool(up: &str, name: &str) -> Value {
    json!({"name": format!("{up}__{name}"), "upstream": up, "upstream_name": name,
           "item": {"name": format!("{up}__{name}"), "inputSchema": {"type": "object"}}})
}

/// A virtual server `team` over `primary` (stateful, SSE) and `second` (stateless JSON),
/// with a passthrough route for `/mcp`; `extra` is merged into the snapshot's top level.
fn snapshot(extra: Value) -> String {
    let mut doc = json!({
        "policy": {"tool_routes": {"echo": "second"}},
        "upstreams": {
            "primary": {"cluster": "upstream", "path": "/mcp"},
            "second": {"cluster": "second", "path": "/mcp"}
        },
        "servers": {"team": {"name": "Team", "tools": [tool("primary", "whoami"), tool("second", "whoami")]}}
    });
    if let (Value::Object(d), Value::Object(e)) = (&mut doc, extra) {
        for (k, v) in e {
            d.insert(k, v);
        }
    }
    doc.to_string()
}

async fn gateway(config: &str) -> anyhow::Result<(Envoy, RmcpServer, RmcpServer)> {
    let primary = RmcpServer::start("primary", RmcpServerMode::SessionSse).await?;
    let second = RmcpServer::start("second", RmcpServerMode::StatelessJson).await?;
    let config = EnvoyConfig::with_filter(config, primary.addr)
        .cluster("second", second.addr)
        .route_on_header("x-mcpgw-cluster", "second", "second");
    let envoy = Envoy::start(&artifacts(), &config).await?;
    Ok((envoy, primary, second))
}

fn credentials_seen(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .flat_map(|s| {
            CLIENT_CREDENTIALS
                .iter()
                .filter(|(name, _)| s.headers.contains_key(*name))
                .map(|(name, _)| format!("{} {:?}: {name}", s.method, s.rpc_method))
        })
        .collect()
}

fn rpc_methods(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| s.rpc_method.clone().unwrap_or_else(|| s.method.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_never_reach_an_upstream() -> anyhow::Result<()> {
    let (envoy, primary, second) = gateway(&snapshot(json!({"session": {"keys": [KEY]}}))).await?;
    let mut with_creds = CLIENT_CREDENTIALS.to_vec();
    // Passthrough: routed to the stateless upstream by the policy.
    let r = post(
        &envoy.mcp_url(),
        tools_call(1, "echo", json!({"message": "hi"})),
        &with_creds,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    // A virtual server: a session, a call opening the stateful upstream's session (the
    // filter's own calls), a stateless one, the GET stream and the end of the session.
    let url = envoy.url("/servers/team/mcp");
    let init = post(&url, initialize(2, VERSION), &with_creds).await?;
    let token = init.header("mcp-session-id");
    with_creds.extend([
        ("mcp-session-id", token.as_str()),
        ("mcp-protocol-version", VERSION),
    ]);
    for (id, name) in [(3, "primary__whoami"), (4, "second__whoami")] {
        let r = post(&url, tools_call(id, name, json!({})), &with_creds).await?;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    let mut get = http()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &token)
        .header("mcp-protocol-version", VERSION);
    for (name, value) in CLIENT_CREDENTIALS {
        get = get.header(name, value);
    }
    let stream = get.send().await?;
    assert_eq!(stream.status(), 200);
    drop(stream);
    let mut delete = http().delete(&url).header("mcp-session-id", &token);
    for (name, value) in CLIENT_CREDENTIALS {
        delete = delete.header(name, value);
    }
    assert_eq!(send(delete).await?.status, 200);

    let (p, s) = (primary.seen(), second.seen());
    assert!(
        rpc_methods(&p).iter().any(|m| m == "tools/call") && !s.is_empty(),
        "the calls reached the upstreams: {:?} {:?}",
        rpc_methods(&p),
        rpc_methods(&s)
    );
    assert_eq!(credentials_seen(&p), Vec::<String>::new(), "primary");
    assert_eq!(credentials_seen(&s), Vec::<String>::new(), "second");

    // The test can tell: with the policy's explicit opt-in they do arrive.
    let (envoy, _primary, second) = gateway(&snapshot(
        json!({"policy": {"tool_routes": {"echo": "second"}, "forward_client_credentials": true}}),
    ))
    .await?;
    let r = post(
        &envoy.mcp_url(),
        tools_call(1, "echo", json!({"message": "hi"})),
        &CLIENT_CREDENTIALS,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(credentials_seen(&second.seen()).len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sessions_open_on_first_use_and_end_with_the_clients_session() -> anyhow::Result<()>
{
    let (envoy, primary, second) = gateway(&snapshot(json!({"session": {"keys": [KEY]}}))).await?;
    let url = envoy.url("/servers/team/mcp");
    let init = post(&url, initialize(1, VERSION), &[]).await?;
    assert_eq!(init.status, 200, "{}", init.text());
    let token = init.header("mcp-session-id");
    assert!(
        primary.seen().is_empty() && second.seen().is_empty(),
        "initialize opens nothing upstream"
    );
    // `seen` is what came from the edge: a control plane's own requests (in standalone
    // mode its discovery, before the edge started) carry its User-Agent and are left out;
    // in static mode there are none.
    assert_eq!(
        primary.seen_all().iter().any(Seen::from_control_plane),
        envoy.control_plane().is_some(),
        "{:?}",
        rpc_methods(&primary.seen_all())
    );

    // The token is sealed: nothing of the session can be read from it.
    let blob = token.rsplit('.').next().unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(blob)?;
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("team") && !text.contains(VERSION), "{text}");

    let session = [
        ("mcp-session-id", token.as_str()),
        ("mcp-protocol-version", VERSION),
    ];
    for id in [2, 3] {
        let r = post(&url, tools_call(id, "primary__whoami", json!({})), &session).await?;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.response(&json!(id))?["result"]["content"][0]["text"],
            "primary"
        );
    }
    assert_eq!(
        rpc_methods(&primary.seen()),
        [
            "initialize",
            "notifications/initialized",
            "tools/call",
            "tools/call"
        ],
        "opened once, on the first call that needed it"
    );
    assert!(
        second.seen().is_empty(),
        "an upstream no call needed stays untouched"
    );
    let upstream_sid = primary.seen()[2]
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(!upstream_sid.is_empty() && !token.contains(&upstream_sid));

    let end = send(http().delete(&url).header("mcp-session-id", &token)).await?;
    assert_eq!(end.status, 200, "{}", end.text());
    let last = primary.seen().pop().expect("requests");
    assert_eq!(last.method, "DELETE");
    assert_eq!(
        last.headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
        Some(upstream_sid.as_str())
    );
    // Ended: the token is refused from now on, and nothing reaches an upstream.
    let before = primary.seen().len();
    let after = post(&url, tools_call(4, "primary__whoami", json!({})), &session).await?;
    assert_eq!(after.status, 404, "{}", after.text());
    assert!(after.text().contains("ended"), "{}", after.text());
    assert_eq!(primary.seen().len(), before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_sessions_are_ended_by_the_gateway() -> anyhow::Result<()> {
    // The shortest idle time allowed; the sweep runs every 30 s.
    let (envoy, primary, _second) = gateway(&snapshot(
        json!({"session": {"keys": [KEY], "idle_seconds": 60}}),
    ))
    .await?;
    let url = envoy.url("/servers/team/mcp");
    let token = post(&url, initialize(1, VERSION), &[])
        .await?
        .header("mcp-session-id");
    let session = [
        ("mcp-session-id", token.as_str()),
        ("mcp-protocol-version", VERSION),
    ];
    let r = post(&url, tools_call(2, "primary__whoami", json!({})), &session).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(150);
    while !primary.seen().iter().any(|s| s.method == "DELETE") {
        assert!(
            Instant::now() < deadline,
            "no DELETE after 150 s: {:?}",
            rpc_methods(&primary.seen())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The client's session lives on: its next call opens a new upstream session.
    let r = post(&url, tools_call(3, "primary__whoami", json!({})), &session).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let methods = rpc_methods(&primary.seen());
    assert_eq!(
        methods.iter().filter(|m| *m == "initialize").count(),
        2,
        "{methods:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_must_name_their_version_and_stay_short() -> anyhow::Result<()> {
    let (envoy, _p, _s) = gateway(&snapshot(json!({}))).await?;
    let url = envoy.mcp_url();
    let batch = |n: usize| {
        let items: Vec<String> = (0..n)
            .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "ping"}).to_string())
            .collect();
        format!("[{}]", items.join(","))
    };
    let unversioned = post(&url, batch(2), &[]).await?;
    assert_eq!(unversioned.status, 400, "{}", unversioned.text());
    assert_eq!(unversioned.response(&Value::Null)?["error"]["code"], -32600);
    let long = post(&url, batch(33), &[("mcp-protocol-version", "2025-03-26")]).await?;
    assert_eq!(long.status, 400, "{}", long.text());
    assert!(long.text().contains("at most 32"), "{}", long.text());
    // The filter let a short, versioned batch through (what the upstream makes of a batch is
    // its business).
    let short = post(&url, batch(2), &[("mcp-protocol-version", "2025-03-26")]).await?;
    assert!(!short.text().contains("at most"), "{}", short.text());
    assert!(
        !short.text().contains("needs MCP-Protocol-Version"),
        "{}",
        short.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_tool_names_at_a_virtual_server_spend_no_label_budget() -> anyhow::Result<()> {
    let (envoy, _p, _s) = gateway(&snapshot(json!({}))).await?;
    let url = envoy.url("/servers/team/mcp");
    for i in 0..300 {
        let r = post(&url, tools_call(i, &format!("made-up-{i}"), json!({})), &[]).await?;
        assert_eq!(r.response(&json!(i))?["error"]["code"], -32602);
    }
    let r = post(&url, tools_call(999, "second__whoami", json!({})), &[]).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let samples = parse_prometheus(&envoy.prometheus().await?)?;
    let count = |tool: &str| {
        sample(
            &samples,
            "mcpgw_requests_total",
            &[("mcp_method", "tools/call"), ("mcp_tool", tool)],
        )
    };
    assert_eq!(count("_other"), Some(300.0));
    assert_eq!(
        count("second__whoami"),
        Some(1.0),
        "the catalog's name keeps its label"
    );
    assert_eq!(count("made-up-0"), None);
    Ok(())
}
