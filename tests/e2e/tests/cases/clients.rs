//! Real MCP clients through the gateway: the `rmcp` client and the official Python SDK,
//! each doing initialize → tools/list → tools/call → resources/read → prompts/get → DELETE.

use std::process::Command;

use anyhow::{Context, bail};
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, ClientConfig, GetPromptRequestParams, ProtocolVersion,
    ReadResourceRequestParams,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use super::support::{EverythingGateway, artifacts};
use mcpgw_e2e::{Envoy, EnvoyConfig, RmcpServer, RmcpServerMode};

/// What one client session saw.
#[derive(Debug)]
struct Flow {
    tools: Vec<String>,
    call_text: String,
    resource_text: String,
    prompt_text: String,
}

fn object(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

async fn rmcp_flow(
    url: &str,
    tool: &str,
    args: Value,
    uri: &str,
    prompt: &str,
    prompt_args: Value,
) -> anyhow::Result<Flow> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    let mut info = ClientConfig::default();
    info.protocol_version = ProtocolVersion::V_2025_11_25;
    let client = info
        .serve(transport)
        .await
        .context("rmcp client: initialize through the gateway")?;
    let tools = client.list_all_tools().await.context("tools/list")?;
    let called = client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(object(args)))
        .await
        .context("tools/call")?;
    let read = client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .context("resources/read")?;
    let got = client
        .get_prompt(GetPromptRequestParams::new(prompt).with_arguments(object(prompt_args)))
        .await
        .context("prompts/get")?;
    // Ends the session (DELETE for a stateful server).
    client.cancel().await.context("close the session")?;
    let (called, read, got) = (
        serde_json::to_value(&called)?,
        serde_json::to_value(&read)?,
        serde_json::to_value(&got)?,
    );
    let mut tools: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    tools.sort();
    Ok(Flow {
        tools,
        call_text: called["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        resource_text: read["contents"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        prompt_text: got["messages"][0]["content"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    })
}

pub(super) fn python_flow(
    url: &str,
    tool: &str,
    args: Value,
    uri: &str,
    prompt: &str,
    prompt_args: Value,
) -> anyhow::Result<Value> {
    let a = artifacts();
    let script = a.repo_file("tests/py/mcp_client_flow.py")?;
    let out = Command::new(a.python()?)
        .arg(script)
        .args([
            url,
            tool,
            &args.to_string(),
            uri,
            prompt,
            &prompt_args.to_string(),
        ])
        .output()
        .context("run the Python MCP client")?;
    if !out.status.success() {
        bail!(
            "Python MCP client failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("Python client printed {stdout}"))
}

/// Asserts the Python client's HTTP exchanges: all succeeded, the session was deleted,
/// and the tools/call answers came as `want_ct`.
fn check_exchanges(out: &Value, want_ct: &str) {
    let ex = out["exchanges"].as_array().cloned().unwrap_or_default();
    assert!(!ex.is_empty(), "no HTTP exchanges recorded: {out}");
    for e in &ex {
        let status = e["status"].as_u64().unwrap_or(0);
        // The optional GET stream may be refused with 405 by servers without one.
        let ok = (200..300).contains(&status) || (e["method"] == "GET" && status == 405);
        assert!(
            ok,
            "HTTP exchange failed through the gateway: {e} (all: {ex:?})"
        );
    }
    assert!(
        ex.iter().any(|e| e["method"] == "POST"
            && e["content_type"]
                .as_str()
                .unwrap_or("")
                .starts_with(want_ct)),
        "expected a POST answered as {want_ct}: {ex:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_to_server_everything_sse() -> anyhow::Result<()> {
    let gw = EverythingGateway::start("{}").await?;
    let flow = rmcp_flow(
        &gw.envoy.mcp_url(),
        "echo",
        json!({"message": "hi from rmcp"}),
        "demo://resource/dynamic/text/1",
        "simple-prompt",
        json!({}),
    )
    .await?;
    assert!(
        flow.tools.iter().any(|t| t == "echo"),
        "tools/list: {:?}",
        flow.tools
    );
    assert_eq!(flow.call_text, "Echo: hi from rmcp");
    assert!(
        flow.resource_text.starts_with("Resource 1:"),
        "resources/read: {}",
        flow.resource_text
    );
    assert_eq!(
        flow.prompt_text,
        "This is a simple prompt without arguments."
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_to_rmcp_server_sse_session() -> anyhow::Result<()> {
    let upstream = RmcpServer::start("primary", RmcpServerMode::SessionSse).await?;
    let envoy = Envoy::start(&artifacts(), &EnvoyConfig::with_filter("{}", upstream.addr)).await?;
    let flow = rmcp_flow(
        &envoy.mcp_url(),
        "add",
        json!({"a": 2, "b": 40}),
        "mcpgw://greeting",
        "greet",
        json!({"name": "Ada"}),
    )
    .await?;
    assert_eq!(flow.tools, ["add", "echo", "whoami"]);
    assert_eq!(flow.call_text, "42");
    assert_eq!(flow.resource_text, "greetings from primary");
    assert_eq!(flow.prompt_text, "Hello, Ada! (primary)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_to_rmcp_server_json() -> anyhow::Result<()> {
    let upstream = RmcpServer::start("primary", RmcpServerMode::StatelessJson).await?;
    let envoy = Envoy::start(&artifacts(), &EnvoyConfig::with_filter("{}", upstream.addr)).await?;
    let flow = rmcp_flow(
        &envoy.mcp_url(),
        "echo",
        json!({"message": "plain json"}),
        "mcpgw://greeting",
        "greet",
        json!({"name": "Bob"}),
    )
    .await?;
    assert_eq!(flow.tools, ["add", "echo", "whoami"]);
    assert_eq!(flow.call_text, "plain json");
    assert_eq!(flow.resource_text, "greetings from primary");
    assert_eq!(flow.prompt_text, "Hello, Bob! (primary)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_server_everything_sse() -> anyhow::Result<()> {
    let gw = EverythingGateway::start("{}").await?;
    let url = gw.envoy.mcp_url();
    let out = tokio::task::spawn_blocking(move || {
        python_flow(
            &url,
            "echo",
            json!({"message": "hi from python"}),
            "demo://resource/dynamic/text/2",
            "simple-prompt",
            json!({}),
        )
    })
    .await??;
    assert!(
        out["tools"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("echo"))),
        "{out}"
    );
    assert_eq!(out["call_is_error"], false);
    assert_eq!(out["call_text"], json!(["Echo: hi from python"]));
    assert!(
        out["resource_text"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("Resource 2:"),
        "{out}"
    );
    assert_eq!(
        out["prompt_text"],
        json!(["This is a simple prompt without arguments."])
    );
    check_exchanges(&out, "text/event-stream");
    let ex = out["exchanges"].as_array().cloned().unwrap_or_default();
    assert!(
        ex.iter()
            .any(|e| e["method"] == "DELETE" && e["status"] == 200),
        "the SDK deletes its session on close, through the gateway: {ex:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_rmcp_servers_sse_and_json() -> anyhow::Result<()> {
    let sse = RmcpServer::start("sse", RmcpServerMode::SessionSse).await?;
    let json_up = RmcpServer::start("json", RmcpServerMode::StatelessJson).await?;
    let config = EnvoyConfig::with_filter("{}", sse.addr)
        .cluster("json", json_up.addr)
        .mount("/json/mcp", "json")
        .mount("/sse/mcp", "upstream");
    let envoy = Envoy::start(&artifacts(), &config).await?;
    for (path, label, ct) in [
        ("/sse/mcp", "sse", "text/event-stream"),
        ("/json/mcp", "json", "application/json"),
    ] {
        let url = envoy.url(path);
        let out = tokio::task::spawn_blocking(move || {
            python_flow(
                &url,
                "add",
                json!({"a": 1, "b": 2}),
                "mcpgw://greeting",
                "greet",
                json!({"name": "Py"}),
            )
        })
        .await??;
        assert_eq!(
            out["tools"],
            json!(["add", "echo", "whoami"]),
            "{label}: {out}"
        );
        assert_eq!(out["call_text"], json!(["3"]), "{label}");
        assert_eq!(
            out["resource_text"],
            json!([format!("greetings from {label}")])
        );
        assert_eq!(out["prompt_text"], json!([format!("Hello, Py! ({label})")]));
        check_exchanges(&out, ct);
        if label == "sse" {
            let ex = out["exchanges"].as_array().cloned().unwrap_or_default();
            assert!(
                ex.iter().any(|e| e["method"] == "DELETE"
                    && e["status"]
                        .as_u64()
                        .is_some_and(|s| (200..300).contains(&s))),
                "session DELETE through the gateway: {ex:?}"
            );
        }
    }
    Ok(())
}
