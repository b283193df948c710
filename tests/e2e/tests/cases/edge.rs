//! Virtual servers at the edge: `/servers/{id}/mcp` is answered from the snapshot's catalog
//! (initialize, ping, paginated lists) and calls are routed to the owning upstream with the
//! namespaced name rewritten. Two rmcp upstreams both have a tool `whoami` (each returns its
//! own label), so which upstream answered proves the routing and the rewrite.

use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, ClientConfig, GetPromptRequestParams, ProtocolVersion,
    ReadResourceRequestParams,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use super::support::{artifacts, http, post, send, tool_text, tools_call};
use mcpgw_e2e::{Envoy, EnvoyConfig, RmcpServer, RmcpServerMode};

fn tool(up: &str, name: &str) -> Value {
    json!({"name": format!("{up}__{name}"), "upstream": up, "upstream_name": name,
           "item": {"name": format!("{up}__{name}"), "description": format!("{name} at {up}"),
                    "inputSchema": {"type": "object"}}})
}

/// Session signing key of the tests (32 bytes, base64).
const KEY: &str = "bWNwZ3ctZTJlLXNlc3Npb24ta2V5LTMyLWJ5dGVzISE=";

/// The snapshot a control plane would send: one virtual server over both upstreams.
fn snapshot(page_size: u32) -> String {
    snapshot_with(page_size, None)
}

fn snapshot_with(page_size: u32, key: Option<&str>) -> String {
    let mut doc = json!({
        "version": "e2e-1",
        "policy": {"list_page_size": page_size, "denied_tools": ["primary__add"]},
        "upstreams": {
            "primary": {"cluster": "upstream", "path": "/mcp"},
            "second": {"cluster": "second", "path": "/mcp"}
        },
        "servers": {"team": {
            "name": "Team server", "version": "1",
            // By name, as the control plane orders a catalog.
            "tools": [tool("primary", "add"), tool("primary", "whoami"), tool("second", "echo"), tool("second", "whoami")],
            "resources": [{"name": "mcpgw://greeting", "upstream": "second", "upstream_name": "mcpgw://greeting",
                           "item": {"uri": "mcpgw://greeting", "name": "second__greeting"}}],
            "prompts": [{"name": "second__greet", "upstream": "second", "upstream_name": "greet",
                         "item": {"name": "second__greet", "arguments": [{"name": "name", "required": true}]}}]
        }}
    });
    if let Some(key) = key {
        doc["session"] = json!({"keys": [key]});
    }
    doc.to_string()
}

async fn gateway(page_size: u32) -> anyhow::Result<(Envoy, RmcpServer, RmcpServer)> {
    gateway_with(&snapshot(page_size), RmcpServerMode::StatelessJson).await
}

async fn gateway_with(
    config: &str,
    primary_mode: RmcpServerMode,
) -> anyhow::Result<(Envoy, RmcpServer, RmcpServer)> {
    let primary = RmcpServer::start("primary", primary_mode).await?;
    let second = RmcpServer::start("second", RmcpServerMode::StatelessJson).await?;
    let config = EnvoyConfig::with_filter(config, primary.addr)
        .cluster("second", second.addr)
        .route_on_header("x-mcpgw-cluster", "second", "second");
    let envoy = Envoy::start(&artifacts(), &config).await?;
    Ok((envoy, primary, second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_uses_a_virtual_server() -> anyhow::Result<()> {
    let (envoy, _p, _s) = gateway(100).await?;
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(envoy.url("/servers/team/mcp")),
    );
    let mut info = ClientConfig::default();
    info.protocol_version = ProtocolVersion::V_2025_06_18;
    let client = info.serve(transport).await?;
    let server = client.peer_info().map(serde_json::to_value).transpose()?;
    assert_eq!(
        server.as_ref().map(|s| s["serverInfo"]["name"].clone()),
        Some(json!("Team server"))
    );
    let tools = client.list_all_tools().await?;
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "primary__add",
            "primary__whoami",
            "second__echo",
            "second__whoami"
        ]
    );
    for (name, want) in [("primary__whoami", "primary"), ("second__whoami", "second")] {
        let r = client.call_tool(CallToolRequestParams::new(name)).await?;
        assert_eq!(
            serde_json::to_value(&r)?["content"][0]["text"],
            want,
            "{name}"
        );
    }
    let read = client
        .read_resource(ReadResourceRequestParams::new("mcpgw://greeting"))
        .await?;
    assert_eq!(
        serde_json::to_value(&read)?["contents"][0]["text"],
        "greetings from second"
    );
    let mut args = serde_json::Map::new();
    args.insert("name".into(), json!("edge"));
    let prompt = client
        .get_prompt(GetPromptRequestParams::new("second__greet").with_arguments(args))
        .await?;
    assert_eq!(
        serde_json::to_value(&prompt)?["messages"][0]["content"]["text"],
        "Hello, edge! (second)"
    );
    client.cancel().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_paginate_and_bad_requests_get_precise_answers() -> anyhow::Result<()> {
    let (envoy, _p, _s) = gateway(1).await?;
    let url = envoy.url("/servers/team/mcp");
    // Page size 1: four pages, each with a cursor to the next.
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        let r = post(
            &url,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":params}).to_string(),
            &[],
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.response(&json!(1))?;
        for t in v["result"]["tools"].as_array().cloned().unwrap_or_default() {
            names.push(t["name"].as_str().unwrap_or_default().to_owned());
        }
        match v["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        names,
        [
            "primary__add",
            "primary__whoami",
            "second__echo",
            "second__whoami"
        ]
    );

    let unknown = post(&url, tools_call(2, "second__add", json!({})), &[]).await?;
    let v = unknown.response(&json!(2))?;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("second__add"),
        "{v}"
    );

    // The policy applies to the names clients see.
    let denied = post(
        &url,
        tools_call(3, "primary__add", json!({"a": 1, "b": 2})),
        &[],
    )
    .await?;
    assert_eq!(denied.status, 403, "{}", denied.text());

    // The rewritten call carries the arguments through untouched.
    let echo = post(
        &url,
        tools_call(4, "second__echo", json!({"message": "through the edge é"})),
        &[],
    )
    .await?;
    assert_eq!(tool_text(&echo.response(&json!(4))?), "through the edge é");

    let notification = post(
        &url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &[],
    )
    .await?;
    assert_eq!(notification.status, 202);

    let get = send(http().get(&url).header("accept", "text/event-stream")).await?;
    assert_eq!((get.status, get.header("allow")), (405, "POST".to_owned()));
    let nowhere = post(
        &envoy.url("/servers/other/mcp"),
        tools_call(5, "x", json!({})),
        &[],
    )
    .await?;
    assert_eq!(nowhere.status, 404, "{}", nowhere.text());
    // The legacy SSE pair needs the control plane's session relay; this snapshot has none.
    for path in ["/servers/team/sse", "/servers/team/message?session_id=x"] {
        let legacy = send(
            http()
                .get(envoy.url(path))
                .header("accept", "text/event-stream"),
        )
        .await?;
        assert_eq!(legacy.status, 404, "{path}: {}", legacy.text());
        assert!(
            legacy.text().contains("session relay"),
            "{path}: {}",
            legacy.text()
        );
    }
    let batch = post(
        &url,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        &[("mcp-protocol-version", "2025-03-26")],
    )
    .await?;
    assert_eq!(batch.status, 400, "{}", batch.text());

    // Paths outside /servers/ are the filter's passthrough path: the classic endpoint still
    // reaches the upstream behind it (the harness's default route; a control plane's
    // `--edge-passthrough` gateway).
    let plain = post(&envoy.mcp_url(), tools_call(6, "whoami", json!({})), &[]).await?;
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(tool_text(&plain.response(&json!(6))?), "primary");
    Ok(())
}

/// With a signing key, `initialize` opens a session at every upstream (the filter calls
/// them itself) and hands the client one signed token; each call then carries the owning
/// upstream's own session. `primary` is stateful (it refuses calls without its session),
/// `second` stateless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_span_stateful_upstreams_and_refuse_forgeries() -> anyhow::Result<()> {
    let (envoy, _p, _s) =
        gateway_with(&snapshot_with(100, Some(KEY)), RmcpServerMode::SessionSse).await?;
    let url = envoy.url("/servers/team/mcp");
    let init = post(
        &url,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}"#,
        &[],
    )
    .await?;
    assert_eq!(init.status, 200, "{}", init.text());
    let token = init.header("mcp-session-id");
    assert!(token.starts_with("mcpgw2."), "session token: {token:?}");
    let with_session = [
        ("mcp-session-id", token.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];

    // The stateful upstream answers only inside its session, which the token carries.
    let who = post(
        &url,
        tools_call(2, "primary__whoami", json!({})),
        &with_session,
    )
    .await?;
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(tool_text(&who.response(&json!(2))?), "primary");
    assert!(
        who.headers.get("mcp-session-id").is_none(),
        "upstream session ids stay inside"
    );
    let second = post(
        &url,
        tools_call(3, "second__whoami", json!({})),
        &with_session,
    )
    .await?;
    assert_eq!(tool_text(&second.response(&json!(3))?), "second");
    // Without the token, the stateful upstream refuses (its session is unknown).
    let without = post(
        &url,
        tools_call(4, "primary__whoami", json!({})),
        &[("mcp-protocol-version", "2025-06-18")],
    )
    .await?;
    assert_ne!(
        without.status,
        200,
        "a stateful upstream needs its session: {}",
        without.text()
    );

    // Forged and tampered tokens are refused before anything reaches an upstream.
    let mut tampered = token.clone();
    let flip = if tampered.ends_with('A') { "B" } else { "A" };
    tampered.replace_range(tampered.len() - 1.., flip);
    for bad in [
        tampered.as_str(),
        "mcpgw1.e30.AAAA",
        "a-uuid-from-elsewhere",
    ] {
        let r = post(
            &url,
            tools_call(5, "primary__whoami", json!({})),
            &[("mcp-session-id", bad)],
        )
        .await?;
        assert_eq!(r.status, 404, "{bad}: {}", r.text());
    }

    // The GET stream (server-initiated messages) is the one stateful upstream's stream,
    // opened inside its session; a forged token gets nothing.
    let stream = http()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", token.as_str())
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await?;
    let content_type = stream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(stream.status(), 200, "GET stream: {content_type}");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    assert!(stream.headers().get("mcp-session-id").is_none());
    drop(stream);
    let forged = send(
        http()
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", tampered.as_str()),
    )
    .await?;
    assert_eq!(forged.status, 404, "{}", forged.text());

    // DELETE ends the upstream sessions: the stateful upstream forgets its part.
    let end = send(http().delete(&url).header("mcp-session-id", token.as_str())).await?;
    assert_eq!(end.status, 200, "{}", end.text());
    let after = post(
        &url,
        tools_call(6, "primary__whoami", json!({})),
        &with_session,
    )
    .await?;
    assert_ne!(
        after.status,
        200,
        "the upstream session was ended: {}",
        after.text()
    );

    // A real client runs a whole session through the edge.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.clone()),
    );
    let mut info = ClientConfig::default();
    info.protocol_version = ProtocolVersion::V_2025_06_18;
    let client = info.serve(transport).await?;
    let r = client
        .call_tool(CallToolRequestParams::new("primary__whoami"))
        .await?;
    assert_eq!(serde_json::to_value(&r)?["content"][0]["text"], "primary");
    client.cancel().await?;
    Ok(())
}

/// The official Python SDK runs a whole session through a virtual server: initialize (the
/// filter opens the upstream sessions), list, a call to the stateful upstream, a resource
/// and a prompt from the stateless one, and the DELETE at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_runs_a_session_through_a_virtual_server() -> anyhow::Result<()> {
    let (envoy, _p, _s) =
        gateway_with(&snapshot_with(100, Some(KEY)), RmcpServerMode::SessionSse).await?;
    let url = envoy.url("/servers/team/mcp");
    let out = tokio::task::spawn_blocking(move || {
        super::clients::python_flow(
            &url,
            "primary__whoami",
            json!({}),
            "mcpgw://greeting",
            "second__greet",
            json!({"name": "py"}),
        )
    })
    .await??;
    assert_eq!(out["server_name"], "Team server", "{out}");
    assert_eq!(
        out["tools"],
        json!([
            "primary__add",
            "primary__whoami",
            "second__echo",
            "second__whoami"
        ]),
        "{out}"
    );
    assert_eq!(out["call_text"], json!(["primary"]), "{out}");
    assert_eq!(
        out["resource_text"],
        json!(["greetings from second"]),
        "{out}"
    );
    assert_eq!(out["prompt_text"], json!(["Hello, py! (second)"]), "{out}");
    let exchanges = out["exchanges"].as_array().cloned().unwrap_or_default();
    let deleted = exchanges
        .iter()
        .any(|e| e["method"] == "DELETE" && e["status"] == 200);
    assert!(
        deleted,
        "the SDK ended the session with DELETE: {exchanges:?}"
    );
    Ok(())
}

/// A large catalog arrives compressed (as the control plane sends catalogs over 64 KiB):
/// the filter inflates it in `on_configure` and serves it like a plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_catalog_is_served_like_a_plain_one() -> anyhow::Result<()> {
    let mut doc: Value = serde_json::from_str(&snapshot(100))?;
    let filler: Vec<Value> = (0..2000)
        .map(|i| tool("primary", &format!("tool_{i:04}")))
        .collect();
    if let Some(tools) = doc["servers"]["team"]["tools"].as_array_mut() {
        tools.extend(filler);
    }
    let json = doc.to_string();
    let packed = mcpgw_core::snapshot::compress(json.as_bytes());
    assert!(
        packed.len() < json.len() / 4,
        "{} of {}",
        packed.len(),
        json.len()
    );
    let (envoy, _p, _s) = gateway_with(&packed, RmcpServerMode::StatelessJson).await?;
    let url = envoy.url("/servers/team/mcp");
    let list = post(
        &url,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[],
    )
    .await?;
    let v = list.response(&json!(1))?;
    assert_eq!(
        v["result"]["tools"].as_array().map(Vec::len),
        Some(100),
        "first page"
    );
    assert!(v["result"]["nextCursor"].is_string());
    let who = post(&url, tools_call(2, "second__whoami", json!({})), &[]).await?;
    assert_eq!(tool_text(&who.response(&json!(2))?), "second");
    Ok(())
}

/// A 10,000-tool catalog (as the control plane's benchmark registry builds it: every tool
/// in one server) loads in the filter and is served page by page to the end. The filter
/// logs how long `on_configure` took (inflate, parse, index); this prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_tool_catalog_loads_and_pages_to_the_end() -> anyhow::Result<()> {
    let mut doc: Value = serde_json::from_str(&snapshot(500))?;
    let tools: Vec<Value> = (0..10_000)
        .map(|i| {
            let name = format!("tool_{i:05}");
            json!({"name": format!("primary__{name}"), "upstream": "primary", "upstream_name": name,
                   "item": {"name": format!("primary__{name}"),
                            "description": format!("Tool {i}: looks things up in the upstream system and returns a short summary of what it found."),
                            "inputSchema": {"type": "object", "properties": {
                                "query": {"type": "string", "description": "What to look for"},
                                "limit": {"type": "integer", "minimum": 1, "maximum": 100}},
                                "required": ["query"]},
                            "annotations": {"readOnlyHint": true}}})
        })
        .collect();
    doc["servers"]["team"]["tools"] = Value::Array(tools);
    let json = doc.to_string();
    let packed = mcpgw_core::snapshot::compress(json.as_bytes());
    let (envoy, _p, _s) = gateway_with(&packed, RmcpServerMode::StatelessJson).await?;
    let url = envoy.url("/servers/team/mcp");
    let (mut seen, mut pages, mut cursor) = (0usize, 0usize, None::<String>);
    let mut last = String::new();
    loop {
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        let r = post(
            &url,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":params}).to_string(),
            &[],
        )
        .await?;
        let v = r.response(&json!(1))?;
        let page = v["result"]["tools"].as_array().cloned().unwrap_or_default();
        seen += page.len();
        pages += 1;
        if let Some(t) = page.last() {
            last = t["name"].as_str().unwrap_or_default().to_owned();
        }
        match v["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        (seen, pages, last.as_str()),
        (10_000, 20, "primary__tool_09999")
    );
    let log = envoy.log();
    let configured = log
        .lines()
        .find(|l| l.contains("configured snapshot \"e2e-1\""))
        .unwrap_or("(no configure line in the Envoy log)");
    println!(
        "10,000 tools: {} bytes of JSON, {} compressed; {}",
        json.len(),
        packed.len(),
        configured.rsplit("mcpgw: ").next().unwrap_or(configured)
    );
    assert!(configured.contains("10000 catalog tools"), "{configured}");
    Ok(())
}
