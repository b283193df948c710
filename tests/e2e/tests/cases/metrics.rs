//! Metrics on `/stats/prometheus` after known traffic (docs/filter.md "Metrics"), with the
//! documented `stats_tags` in the bootstrap. Counts are exact: each test owns its Envoy.

use serde_json::json;

use super::support::{artifacts, initialize, parse_prometheus, post, sample, tools_call};
use mcpgw_e2e::{Envoy, EnvoyConfig, RmcpServer, RmcpServerMode, ServerEverything};

const VERSION: &str = "2025-11-25";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_per_method_and_tool() -> anyhow::Result<()> {
    let json_up = RmcpServer::start("json", RmcpServerMode::StatelessJson).await?;
    let everything = ServerEverything::start(&artifacts()).await?;
    let config =
        EnvoyConfig::with_filter(r#"{"policy":{"denied_tools":["get-env"]}}"#, json_up.addr)
            .cluster("everything", everything.addr)
            .mount("/sse/mcp", "everything")
            .mount("/json/mcp", "upstream");
    let envoy = Envoy::start(&artifacts(), &config).await?;
    let (json_url, sse_url) = (envoy.url("/json/mcp"), envoy.url("/sse/mcp"));

    // JSON upstream: 3 × echo, 1 × unknown tool (a JSON-RPC error from upstream).
    for id in [1, 2] {
        let r = post(
            &json_url,
            tools_call(id, "echo", json!({"message": "m"})),
            &[],
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A large answer reaches the filter in several chunks: it is counted once, from its
    // `result` key, and passes through whole.
    let big = "x".repeat(256 * 1024);
    let r = post(
        &json_url,
        tools_call(4, "echo", json!({"message": big})),
        &[],
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.response(&json!(4))?["result"]["content"][0]["text"]
            .as_str()
            .map(str::len),
        Some(big.len()),
        "{:.300}",
        r.text()
    );
    let r = post(&json_url, tools_call(3, "no-such-tool", json!({})), &[]).await?;
    assert!(
        r.response(&json!(3))?.get("error").is_some()
            || r.response(&json!(3))?["result"]["isError"] == true,
        "{}",
        r.text()
    );

    // SSE upstream: one session, 1 × echo answered as an SSE frame.
    let init = post(&sse_url, initialize(10, VERSION), &[]).await?;
    let session = init.header("mcp-session-id");
    post(
        &sse_url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", VERSION),
        ],
    )
    .await?;
    let call = post(
        &sse_url,
        tools_call(11, "echo", json!({"message": "sse"})),
        &[
            ("mcp-session-id", &session),
            ("mcp-protocol-version", VERSION),
        ],
    )
    .await?;
    assert!(call.header("content-type").starts_with("text/event-stream"));
    call.response(&json!(11))?;

    // Rejections: one parse error, one denied tool.
    assert_eq!(post(&json_url, "not json", &[]).await?.status, 400);
    assert_eq!(
        post(
            &sse_url,
            tools_call(12, "get-env", json!({})),
            &[("mcp-session-id", &session)]
        )
        .await?
        .status,
        403
    );

    let text = envoy.prometheus().await?;
    let samples = parse_prometheus(&text)?;
    let mut failures = Vec::new();
    let mut expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        let got = sample(&samples, name, labels);
        if got != Some(want) {
            failures.push(format!("{name}{labels:?}: got {got:?}, want {want}"));
        }
    };
    expect(
        "mcpgw_requests_total",
        &[("mcp_method", "tools/call"), ("mcp_tool", "echo")],
        4.0,
    );
    expect(
        "mcpgw_responses_total",
        &[("mcp_method", "tools/call"), ("mcp_tool", "echo")],
        4.0,
    );
    expect(
        "mcpgw_requests_total",
        &[("mcp_method", "tools/call"), ("mcp_tool", "no-such-tool")],
        1.0,
    );
    expect(
        "mcpgw_requests_total",
        &[("mcp_method", "initialize"), ("mcp_tool", "")],
        1.0,
    );
    expect(
        "mcpgw_responses_total",
        &[("mcp_method", "initialize"), ("mcp_tool", "")],
        1.0,
    );
    expect(
        "mcpgw_requests_total",
        &[
            ("mcp_method", "notifications/initialized"),
            ("mcp_tool", ""),
        ],
        1.0,
    );
    // rmcp answers an unknown tool with a JSON-RPC error.
    expect(
        "mcpgw_response_errors_total",
        &[("mcp_method", "tools/call"), ("mcp_tool", "no-such-tool")],
        1.0,
    );
    let rejected: f64 = samples
        .iter()
        .filter(|s| s.name == "mcpgw_rejected_total" && s.labels.contains_key("mcp_reason"))
        .map(|s| s.value)
        .sum();
    if rejected != 2.0 {
        failures.push(format!(
            "mcpgw_rejected_total summed over mcp_reason: got {rejected}, want 2"
        ));
    }
    if !text.contains("# TYPE mcpgw_requests_total counter") {
        failures.push("mcpgw_requests_total is not exposed as a counter".into());
    }
    if !failures.is_empty() {
        let ours: Vec<&str> = text.lines().filter(|l| l.contains("mcpgw")).collect();
        panic!(
            "metrics differ from docs/filter.md:\n  {}\nmcpgw lines:\n{}",
            failures.join("\n  "),
            ours.join("\n")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_label_cardinality_is_capped() -> anyhow::Result<()> {
    let upstream = RmcpServer::start("json", RmcpServerMode::StatelessJson).await?;
    let envoy = Envoy::start(&artifacts(), &EnvoyConfig::with_filter("{}", upstream.addr)).await?;
    let url = envoy.mcp_url();
    let client = super::support::http();
    for i in 0..300 {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", super::support::ACCEPT_BOTH)
            .body(tools_call(i, &format!("tool-{i}"), json!({})))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await?;
    }
    let samples = parse_prometheus(&envoy.prometheus().await?)?;
    let tools: Vec<&str> = samples
        .iter()
        .filter(|s| {
            s.name == "mcpgw_requests_total"
                && s.labels.get("mcp_method").map(String::as_str) == Some("tools/call")
        })
        .filter_map(|s| s.labels.get("mcp_tool").map(String::as_str))
        .collect();
    assert_eq!(
        tools.len(),
        257,
        "256 distinct tool labels plus _other, got {}",
        tools.len()
    );
    assert_eq!(
        sample(
            &samples,
            "mcpgw_requests_total",
            &[("mcp_method", "tools/call"), ("mcp_tool", "_other")]
        ),
        Some(44.0)
    );
    Ok(())
}
