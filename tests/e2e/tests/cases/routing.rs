//! `policy.tool_routes`: a tools/call is sent to another cluster by setting the route header
//! (Envoy routes on it; the filter clears the route cache). The upstreams name themselves.

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

use super::support::{artifacts, post, tool_text, tools_call};
use mcpgw_e2e::{Envoy, EnvoyConfig, RmcpServer, RmcpServerMode};

async fn two_upstreams(
    filter_config: &str,
    header: &str,
) -> anyhow::Result<(Envoy, RmcpServer, RmcpServer)> {
    let primary = RmcpServer::start("primary", RmcpServerMode::StatelessJson).await?;
    let second = RmcpServer::start("second", RmcpServerMode::StatelessJson).await?;
    let mut config =
        EnvoyConfig::with_filter(filter_config, primary.addr).cluster("second", second.addr);
    config = config.route_on_header(header, "second", "second");
    let envoy = Envoy::start(&artifacts(), &config).await?;
    Ok((envoy, primary, second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_routes_send_a_tool_to_its_cluster() -> anyhow::Result<()> {
    let (envoy, _p, _s) = two_upstreams(
        r#"{"policy":{"tool_routes":{"whoami":"second"}}}"#,
        "x-mcpgw-cluster",
    )
    .await?;
    let url = envoy.mcp_url();

    let routed = post(&url, tools_call(1, "whoami", json!({})), &[]).await?;
    assert_eq!(routed.status, 200, "{}", routed.text());
    assert_eq!(
        tool_text(&routed.response(&json!(1))?),
        "second",
        "whoami is routed to cluster `second`"
    );

    // Everything else stays on the route's own cluster.
    let read = post(
        &url,
        r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"mcpgw://greeting"}}"#,
        &[],
    )
    .await?;
    assert_eq!(
        read.response(&json!(2))?["result"]["contents"][0]["text"],
        "greetings from primary"
    );
    let prompt = post(&url, r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"greet","arguments":{"name":"x"}}}"#, &[]).await?;
    assert_eq!(
        prompt.response(&json!(3))?["result"]["messages"][0]["content"]["text"],
        "Hello, x! (primary)"
    );

    // A real client sees the same split.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.clone()),
    );
    let mut info = ClientConfig::default();
    info.protocol_version = ProtocolVersion::V_2025_11_25;
    let client = info.serve(transport).await?;
    let who = client
        .call_tool(CallToolRequestParams::new("whoami"))
        .await?;
    assert_eq!(serde_json::to_value(&who)?["content"][0]["text"], "second");
    client.cancel().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tool_routes_everything_goes_to_the_route_cluster() -> anyhow::Result<()> {
    let (envoy, _p, _s) = two_upstreams("{}", "x-mcpgw-cluster").await?;
    let routed = post(&envoy.mcp_url(), tools_call(1, "whoami", json!({})), &[]).await?;
    assert_eq!(tool_text(&routed.response(&json!(1))?), "primary");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_route_header() -> anyhow::Result<()> {
    let (envoy, _p, _s) = two_upstreams(
        r#"{"policy":{"route_header":"x-e2e-target","tool_routes":{"whoami":"second","add":"second"}}}"#,
        "x-e2e-target",
    )
    .await?;
    let url = envoy.mcp_url();
    let who = post(&url, tools_call(1, "whoami", json!({})), &[]).await?;
    assert_eq!(tool_text(&who.response(&json!(1))?), "second");
    let echo = post(&url, tools_call(2, "echo", json!({"message": "m"})), &[]).await?;
    assert_eq!(tool_text(&echo.response(&json!(2))?), "m");
    Ok(())
}
