//! Guardrail plugins in a real Envoy (docs/filter.md "Guardrail plugins"), in front of the
//! rmcp upstream in both of its modes: a tool result carrying an email reaches the client
//! masked, as a JSON response and as an SSE stream, and a call with a denied argument is
//! answered at the edge without reaching the upstream.

use serde_json::{Value, json};

use super::support::{
    Rejection, artifacts, check_rejection, initialize, parse_prometheus, post, sample,
    sse_messages, tool_text, tools_call,
};
use mcpgw_e2e::{Envoy, EnvoyConfig, RmcpServer, RmcpServerMode};

const PLUGINS: &str = r#"{"plugins": [
  {"name": "mask-pii", "pii": {"detectors": ["email"]}, "hooks": ["tool_post_invoke"]},
  {"name": "deny", "deny_list": {"words": ["launch codes"]}}
]}"#;

/// Opens a session when the upstream keeps them; the headers later requests carry.
async fn session(url: &str, mode: RmcpServerMode) -> anyhow::Result<Vec<(String, String)>> {
    let version = ("mcp-protocol-version".to_owned(), "2025-11-25".to_owned());
    if mode == RmcpServerMode::StatelessJson {
        return Ok(vec![version]);
    }
    let init = post(url, initialize(1, "2025-11-25"), &[]).await?;
    anyhow::ensure!(init.status == 200, "initialize: {}", init.text());
    let sid = init.header("mcp-session-id");
    anyhow::ensure!(!sid.is_empty(), "no session id: {:?}", init.headers);
    let headers = vec![version, ("mcp-session-id".to_owned(), sid)];
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let note = post(
        url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &h,
    )
    .await?;
    anyhow::ensure!(note.status == 202, "initialized: {}", note.text());
    Ok(headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_masked_and_denied_arguments_never_reach_the_upstream() -> anyhow::Result<()> {
    for (mode, content_type) in [
        (RmcpServerMode::StatelessJson, "application/json"),
        (RmcpServerMode::SessionSse, "text/event-stream"),
    ] {
        let upstream = RmcpServer::start("primary", mode).await?;
        let envoy = Envoy::start(
            &artifacts(),
            &EnvoyConfig::with_filter(PLUGINS, upstream.addr),
        )
        .await?;
        let url = envoy.mcp_url();
        let headers = session(&url, mode).await?;
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();

        // The upstream echoes the address back; the client sees it masked.
        let reply = post(
            &url,
            tools_call(
                2,
                "echo",
                json!({"message": "write to jane.doe@example.com today"}),
            ),
            &h,
        )
        .await?;
        assert_eq!(reply.status, 200, "{mode:?}: {}", reply.text());
        assert!(
            reply.header("content-type").starts_with(content_type),
            "{mode:?}: {:?}",
            reply.headers
        );
        let result = reply.response(&json!(2))?;
        assert_eq!(
            tool_text(&result),
            "write to [REDACTED:email] today",
            "{mode:?}"
        );
        assert!(
            !reply.text().contains("jane.doe"),
            "{mode:?}: {}",
            reply.text()
        );
        if mode == RmcpServerMode::SessionSse {
            // Every event of the stream is whole JSON-RPC (or a priming event without data).
            sse_messages(&reply.text())?;
        }

        // A denied argument is answered at the edge, naming the plugin, not the words.
        let calls_before = upstream
            .seen()
            .iter()
            .filter(|s| s.rpc_method.as_deref() == Some("tools/call"))
            .count();
        let denied = post(
            &url,
            tools_call(3, "echo", json!({"message": "here are the Launch Codes"})),
            &h,
        )
        .await?;
        check_rejection(
            &denied,
            &Rejection {
                status: 403,
                code: -32003,
                id: json!(3),
            },
        )
        .map_err(|e| anyhow::anyhow!("{mode:?}: denied argument: {e}"))?;
        let body: Value = serde_json::from_slice(&denied.body)?;
        assert_eq!(
            body["error"]["data"],
            json!({"plugin": "deny", "hook": "tool_pre_invoke", "reason": "word"})
        );
        assert!(!denied.text().to_lowercase().contains("launch codes"));
        let calls_after = upstream
            .seen()
            .iter()
            .filter(|s| s.rpc_method.as_deref() == Some("tools/call"))
            .count();
        assert_eq!(
            (calls_before, calls_after),
            (1, 1),
            "{mode:?}: the upstream received only the allowed call"
        );

        // Both counted per plugin.
        let samples = parse_prometheus(&envoy.prometheus().await?)?;
        let count = |plugin: &str, hook: &str, effect: &str| {
            sample(
                &samples,
                "mcpgw_plugin_actions_total",
                &[
                    ("mcp_plugin", plugin),
                    ("mcp_hook", hook),
                    ("mcp_effect", effect),
                ],
            )
        };
        assert_eq!(
            count("mask-pii", "tool_post_invoke", "masked"),
            Some(1.0),
            "{mode:?}"
        );
        assert_eq!(
            count("deny", "tool_pre_invoke", "blocked"),
            Some(1.0),
            "{mode:?}"
        );
    }
    Ok(())
}
