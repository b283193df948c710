//! Raw streamable HTTP sessions through the gateway: initialize, notifications, tools/call
//! (SSE and JSON responses), the GET stream, and DELETE ending the session upstream.

use std::time::Duration;

use serde_json::json;

use super::support::{
    EverythingGateway, JsonGateway, Reply, http, initialize, post, send, tool_text, tools_call,
};
use mcpgw_e2e::{Artifacts, Envoy, EnvoyConfig, RmcpServer, RmcpServerMode};

const VERSION: &str = "2025-11-25";

/// initialize + notifications/initialized; returns the session id.
async fn open_session(url: &str) -> anyhow::Result<String> {
    let init = post(url, initialize(1, VERSION), &[]).await?;
    assert_eq!(init.status, 200, "initialize: {}", init.text());
    let session = init.header("mcp-session-id");
    assert!(
        !session.is_empty(),
        "initialize answered without Mcp-Session-Id: {:?}",
        init.headers
    );
    let result = init.response(&json!(1))?;
    assert!(
        result["result"]["protocolVersion"].is_string(),
        "initialize result: {result}"
    );
    let note = post(
        url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", VERSION),
        ],
    )
    .await?;
    assert_eq!(
        note.status,
        202,
        "notifications/initialized: {}",
        note.text()
    );
    Ok(session)
}

async fn call_in(
    url: &str,
    session: &str,
    id: i64,
    tool: &str,
    args: serde_json::Value,
) -> anyhow::Result<Reply> {
    post(
        url,
        tools_call(id, tool, args),
        &[
            ("mcp-session-id", session),
            ("mcp-protocol-version", VERSION),
        ],
    )
    .await
}

/// The GET stream opens (headers only; the stream stays open, so don't read the body).
async fn open_get_stream(url: &str, session: &str) -> anyhow::Result<()> {
    let r = http()
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", VERSION)
        .timeout(Duration::from_secs(20))
        .send()
        .await?;
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(r.status().as_u16(), 200, "GET stream status");
    assert!(
        ct.starts_with("text/event-stream"),
        "GET stream content-type {ct}"
    );
    Ok(())
}

async fn delete(url: &str, session: &str) -> anyhow::Result<Reply> {
    send(
        http()
            .delete(url)
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", VERSION),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_session_server_everything_sse_and_delete() -> anyhow::Result<()> {
    let gw = EverythingGateway::start("{}").await?;
    let url = gw.envoy.mcp_url();
    let session = open_session(&url).await?;

    let call = call_in(
        &url,
        &session,
        2,
        "echo",
        json!({"message": "through envoy"}),
    )
    .await?;
    assert_eq!(call.status, 200, "tools/call: {}", call.text());
    assert!(
        call.header("content-type").starts_with("text/event-stream"),
        "server-everything answers tools/call as SSE, got {}",
        call.header("content-type")
    );
    assert_eq!(tool_text(&call.response(&json!(2))?), "Echo: through envoy");

    open_get_stream(&url, &session).await?;

    let del = delete(&url, &session).await?;
    assert_eq!(del.status, 200, "DELETE: {}", del.text());
    // The upstream forgot the session: it answers its own "no valid session" error.
    let after = call_in(&url, &session, 3, "echo", json!({"message": "gone"})).await?;
    assert_eq!(after.status, 400, "call after DELETE: {}", after.text());
    let v: serde_json::Value = serde_json::from_slice(&after.body)?;
    assert_eq!(
        v["error"]["code"], -32000,
        "server-everything's own error after DELETE: {v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_session_rmcp_sse_and_delete() -> anyhow::Result<()> {
    let upstream = RmcpServer::start("primary", RmcpServerMode::SessionSse).await?;
    let envoy = Envoy::start(
        &Artifacts::from_env(),
        &EnvoyConfig::with_filter("{}", upstream.addr),
    )
    .await?;
    let url = envoy.mcp_url();
    let session = open_session(&url).await?;

    let call = call_in(&url, &session, 2, "add", json!({"a": 20, "b": 22})).await?;
    assert_eq!(call.status, 200, "tools/call: {}", call.text());
    assert!(
        call.header("content-type").starts_with("text/event-stream"),
        "rmcp session mode streams SSE"
    );
    assert_eq!(tool_text(&call.response(&json!(2))?), "42");

    let read = post(
        &url,
        r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"mcpgw://greeting"}}"#,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", VERSION),
        ],
    )
    .await?;
    assert_eq!(
        read.response(&json!(3))?["result"]["contents"][0]["text"],
        "greetings from primary"
    );

    open_get_stream(&url, &session).await?;

    let del = delete(&url, &session).await?;
    assert!(
        (200..300).contains(&del.status),
        "DELETE: {} {}",
        del.status,
        del.text()
    );
    let after = call_in(&url, &session, 4, "add", json!({"a": 1, "b": 1})).await?;
    assert_eq!(
        after.status,
        404,
        "a deleted session is unknown upstream: {}",
        after.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_stateless_rmcp_answers_json() -> anyhow::Result<()> {
    let gw = JsonGateway::start("{}").await?;
    let url = gw.envoy.mcp_url();
    let init = post(&url, initialize(1, VERSION), &[]).await?;
    assert_eq!(init.status, 200, "initialize: {}", init.text());
    let call = post(
        &url,
        tools_call(2, "echo", json!({"message": "json please"})),
        &[("mcp-protocol-version", VERSION)],
    )
    .await?;
    assert_eq!(call.status, 200, "tools/call: {}", call.text());
    assert!(
        call.header("content-type").starts_with("application/json"),
        "stateless rmcp answers application/json, got {}",
        call.header("content-type")
    );
    assert_eq!(tool_text(&call.response(&json!(2))?), "json please");
    Ok(())
}
