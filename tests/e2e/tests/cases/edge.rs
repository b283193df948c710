//! Virtual servers at the edge: `/servers/{id}/mcp` is answered from the snapshot's catalog
//! (initialize, ping, paginated lists) and calls are routed to the owning upstream with the
//! namespaced name rewritten. Two rmcp upstreams both have a tool `whoami` (each returns its
//! own label), so which upstream answered proves the routing and the rewrite.

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig, GetPromptRequestParams, ProtocolVersion, ReadResourceRequestParams};
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

/// The snapshot a control plane would send: one virtual server over both upstreams.
fn snapshot(page_size: u32) -> String {
    json!({
        "version": "e2e-1",
        "policy": {"list_page_size": page_size, "denied_tools": ["primary__add"]},
        "upstreams": {
            "primary": {"cluster": "upstream", "path": "/mcp"},
            "second": {"cluster": "second", "path": "/mcp"}
        },
        "servers": {"team": {
            "name": "Team server", "version": "1",
            "tools": [tool("primary", "whoami"), tool("second", "whoami"), tool("second", "echo"), tool("primary", "add")],
            "resources": [{"name": "mcpgw://greeting", "upstream": "second", "upstream_name": "mcpgw://greeting",
                           "item": {"uri": "mcpgw://greeting", "name": "second__greeting"}}],
            "prompts": [{"name": "second__greet", "upstream": "second", "upstream_name": "greet",
                         "item": {"name": "second__greet", "arguments": [{"name": "name", "required": true}]}}]
        }}
    })
    .to_string()
}

async fn gateway(page_size: u32) -> anyhow::Result<(Envoy, RmcpServer, RmcpServer)> {
    let primary = RmcpServer::start("primary", RmcpServerMode::StatelessJson).await?;
    let second = RmcpServer::start("second", RmcpServerMode::StatelessJson).await?;
    let config = EnvoyConfig::with_filter(&snapshot(page_size), primary.addr)
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
    let server = client.peer_info().map(|i| serde_json::to_value(i)).transpose()?;
    assert_eq!(server.as_ref().map(|s| s["serverInfo"]["name"].clone()), Some(json!("Team server")));
    let tools = client.list_all_tools().await?;
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["primary__whoami", "second__whoami", "second__echo", "primary__add"]);
    for (name, want) in [("primary__whoami", "primary"), ("second__whoami", "second")] {
        let r = client.call_tool(CallToolRequestParams::new(name)).await?;
        assert_eq!(serde_json::to_value(&r)?["content"][0]["text"], want, "{name}");
    }
    let read = client
        .read_resource(ReadResourceRequestParams::new("mcpgw://greeting"))
        .await?;
    assert_eq!(serde_json::to_value(&read)?["contents"][0]["text"], "greetings from second");
    let mut args = serde_json::Map::new();
    args.insert("name".into(), json!("edge"));
    let prompt = client
        .get_prompt(GetPromptRequestParams::new("second__greet").with_arguments(args))
        .await?;
    assert_eq!(serde_json::to_value(&prompt)?["messages"][0]["content"]["text"], "Hello, edge! (second)");
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
        let r = post(&url, json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":params}).to_string(), &[]).await?;
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
    assert_eq!(names, ["primary__whoami", "second__whoami", "second__echo", "primary__add"]);

    let unknown = post(&url, tools_call(2, "second__add", json!({})), &[]).await?;
    let v = unknown.response(&json!(2))?;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("second__add"), "{v}");

    // The policy applies to the names clients see.
    let denied = post(&url, tools_call(3, "primary__add", json!({"a": 1, "b": 2})), &[]).await?;
    assert_eq!(denied.status, 403, "{}", denied.text());

    // The rewritten call carries the arguments through untouched.
    let echo = post(&url, tools_call(4, "second__echo", json!({"message": "through the edge é"})), &[]).await?;
    assert_eq!(tool_text(&echo.response(&json!(4))?), "through the edge é");

    let notification = post(&url, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, &[]).await?;
    assert_eq!(notification.status, 202);

    let get = send(http().get(&url).header("accept", "text/event-stream")).await?;
    assert_eq!((get.status, get.header("allow")), (405, "POST".to_owned()));
    let nowhere = post(&envoy.url("/servers/other/mcp"), tools_call(5, "x", json!({})), &[]).await?;
    assert_eq!(nowhere.status, 404, "{}", nowhere.text());
    let batch = post(&url, r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, &[("mcp-protocol-version", "2025-03-26")]).await?;
    assert_eq!(batch.status, 400, "{}", batch.text());

    // Paths outside /servers/ are untouched: the classic endpoint still reaches the upstream.
    let plain = post(&envoy.mcp_url(), tools_call(6, "whoami", json!({})), &[]).await?;
    assert_eq!(tool_text(&plain.response(&json!(6))?), "primary");
    Ok(())
}
