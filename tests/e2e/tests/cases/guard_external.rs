//! External guardrails in a real Envoy (docs/filter.md "External guardrails"): the
//! filter asks the reference service (`tests/py/guard_service.py`, Python grpcio, built from
//! `proto/mcpgw/guard/v1/guard.proto`) before a call reaches the rmcp upstream and before
//! its result reaches the client, as a JSON response and as an SSE stream: a pass, a deny
//! the upstream never sees, arguments and a result mutated, a slow service and a service
//! that is down, failing open and closed.

use serde_json::{Value, json};

use super::support::{Reply, artifacts, initialize, parse_prometheus, post, sample, tool_text};
use mcpgw_e2e::{Envoy, EnvoyConfig, GuardService, RmcpServer, RmcpServerMode};

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
    let h = borrowed(&headers);
    let note = post(
        url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &h,
    )
    .await?;
    anyhow::ensure!(note.status == 202, "initialized: {}", note.text());
    Ok(headers)
}

fn borrowed(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn call(id: i64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

/// The `tools/call` requests the upstream received.
fn tool_calls(upstream: &RmcpServer) -> Vec<mcpgw_e2e::Seen> {
    upstream
        .seen()
        .into_iter()
        .filter(|s| s.rpc_method.as_deref() == Some("tools/call"))
        .collect()
}

fn error_of(reply: &Reply, id: i64) -> anyhow::Result<Value> {
    let body: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| anyhow::anyhow!("{e}: {}", reply.text()))?;
    anyhow::ensure!(body["id"] == id, "{body}");
    Ok(body["error"].clone())
}

/// `mcpgw_plugin_actions_total` of (plugin, hook, effect).
async fn actions(envoy: &Envoy, plugin: &str, hook: &str, effect: &str) -> anyhow::Result<f64> {
    let samples = parse_prometheus(&envoy.prometheus().await?)?;
    Ok(sample(
        &samples,
        "mcpgw_plugin_actions_total",
        &[
            ("mcp_plugin", plugin),
            ("mcp_hook", hook),
            ("mcp_effect", effect),
        ],
    )
    .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_passes_denies_and_mutates_calls_and_results() -> anyhow::Result<()> {
    let guard = GuardService::start(&artifacts(), "drop", "ssn").await?;
    let plugins = json!({"plugins": [{
        "name": "ext", "hooks": ["tool_pre_invoke", "tool_post_invoke"],
        "external": {"cluster": "guard", "timeout_ms": 5000, "failure_mode": "closed"}
    }]})
    .to_string();
    for (mode, content_type) in [
        (RmcpServerMode::StatelessJson, "application/json"),
        (RmcpServerMode::SessionSse, "text/event-stream"),
    ] {
        let upstream = RmcpServer::start("primary", mode).await?;
        let config =
            EnvoyConfig::with_filter(&plugins, upstream.addr).grpc_cluster("guard", guard.addr);
        let envoy = Envoy::start(&artifacts(), &config).await?;
        let url = envoy.mcp_url();
        let headers = session(&url, mode).await?;
        let h = borrowed(&headers);
        let checks_before = guard.checks().len();

        // A pass: asked before and after, the call and its result unchanged.
        let reply = post(&url, call(2, "echo", json!({"message": "hello"})), &h).await?;
        assert_eq!(reply.status, 200, "{mode:?}: {}", reply.text());
        assert!(
            reply.header("content-type").starts_with(content_type),
            "{mode:?}"
        );
        assert_eq!(tool_text(&reply.response(&json!(2))?), "hello", "{mode:?}");
        let checks = guard.checks();
        let seen: Vec<(&str, &str)> = checks[checks_before..]
            .iter()
            .map(|c| {
                (
                    c["hook"].as_str().unwrap_or(""),
                    c["verdict"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("HOOK_TOOL_PRE_INVOKE", "pass"),
                ("HOOK_TOOL_POST_INVOKE", "pass")
            ],
            "{mode:?}"
        );
        let last = &checks[checks.len() - 1];
        assert_eq!(
            (
                &last["plugin"],
                &last["method"],
                &last["name"],
                &last["request_id"]
            ),
            (
                &json!("ext"),
                &json!("tools/call"),
                &json!("echo"),
                &json!("2")
            ),
            "{mode:?}"
        );

        // A deny: answered at the edge with the service's reason; the upstream sees nothing.
        let before = tool_calls(&upstream).len();
        let denied = post(
            &url,
            call(3, "echo", json!({"message": "please DROP it"})),
            &h,
        )
        .await?;
        assert_eq!(denied.status, 403, "{mode:?}: {}", denied.text());
        let error = error_of(&denied, 3)?;
        assert_eq!(error["code"], -32010, "{mode:?}");
        assert_eq!(
            error["data"],
            json!({"plugin": "ext", "hook": "tool_pre_invoke",
                   "reason": "an argument carries a denied word"})
        );
        assert!(
            !denied.text().to_lowercase().contains("drop"),
            "{}",
            denied.text()
        );
        assert_eq!(
            tool_calls(&upstream).len(),
            before,
            "{mode:?}: nothing reached the upstream"
        );

        // Arguments mutated: the upstream receives (and echoes) the redacted text, and the
        // header the service added.
        let reply = post(
            &url,
            call(4, "echo", json!({"message": "secret-abc123"})),
            &h,
        )
        .await?;
        assert_eq!(reply.status, 200, "{mode:?}: {}", reply.text());
        assert_eq!(
            tool_text(&reply.response(&json!(4))?),
            "[redacted]",
            "{mode:?}"
        );
        let calls = tool_calls(&upstream);
        let last = calls.last().ok_or_else(|| anyhow::anyhow!("no call"))?;
        assert_eq!(
            last.headers
                .get("x-guard-verdict")
                .and_then(|v| v.to_str().ok()),
            Some("redacted"),
            "{mode:?}"
        );

        // A result mutated: the client sees the service's version.
        let reply = post(
            &url,
            call(5, "echo", json!({"message": "the code is secret-xyz"})),
            &h,
        )
        .await?;
        assert_eq!(reply.status, 200, "{mode:?}: {}", reply.text());
        assert!(
            reply.header("content-type").starts_with(content_type),
            "{mode:?}"
        );
        assert_eq!(
            tool_text(&reply.response(&json!(5))?),
            "the code is [masked]",
            "{mode:?}"
        );
        assert!(
            !reply.text().contains("secret-xyz"),
            "{mode:?}: {}",
            reply.text()
        );

        for (hook, effect, n) in [
            ("tool_pre_invoke", "blocked", 1.0),
            ("tool_pre_invoke", "masked", 1.0),
            ("tool_post_invoke", "masked", 1.0),
        ] {
            assert_eq!(
                actions(&envoy, "ext", hook, effect).await?,
                n,
                "{mode:?} {hook} {effect}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_absent_service_fails_open_or_closed_per_plugin() -> anyhow::Result<()> {
    let mut guard = GuardService::start(&artifacts(), "drop", "ssn").await?;
    // `echo` is guarded by a plugin that fails open, `add` by one that fails closed.
    let plugins = json!({"plugins": [
        {"name": "lenient", "conditions": {"tools": ["echo"]}, "hooks": ["tool_pre_invoke"],
         "external": {"cluster": "guard", "timeout_ms": 300, "failure_mode": "open"}},
        {"name": "strict", "conditions": {"tools": ["add"]}, "hooks": ["tool_pre_invoke"],
         "external": {"cluster": "guard", "timeout_ms": 300, "failure_mode": "closed"}}
    ]})
    .to_string();
    let upstream = RmcpServer::start("primary", RmcpServerMode::StatelessJson).await?;
    let config =
        EnvoyConfig::with_filter(&plugins, upstream.addr).grpc_cluster("guard", guard.addr);
    let envoy = Envoy::start(&artifacts(), &config).await?;
    let url = envoy.mcp_url();
    let h = [("mcp-protocol-version", "2025-11-25")];

    // Answered in time: both pass.
    let reply = post(&url, call(1, "add", json!({"a": 1, "b": 2})), &h).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(tool_text(&reply.response(&json!(1))?), "3");

    for down in [false, true] {
        if down {
            guard.stop();
        }
        let what = if down { "down" } else { "slow" };
        // The service sleeps past the plugin's timeout (or is not there).
        let before = tool_calls(&upstream).len();
        let reply = post(
            &url,
            call(2, "echo", json!({"message": "late", "sleep_ms": 1500})),
            &h,
        )
        .await?;
        assert_eq!(reply.status, 200, "{what}: {}", reply.text());
        assert_eq!(tool_text(&reply.response(&json!(2))?), "late", "{what}");
        let reply = post(
            &url,
            call(3, "add", json!({"a": 1, "b": 2, "sleep_ms": 1500})),
            &h,
        )
        .await?;
        assert_eq!(reply.status, 503, "{what}: {}", reply.text());
        let error = error_of(&reply, 3)?;
        assert_eq!(error["code"], -32603, "{what}");
        assert_eq!(
            error["data"],
            json!({"plugin": "strict", "hook": "tool_pre_invoke", "reason": "unavailable"})
        );
        assert_eq!(
            tool_calls(&upstream).len(),
            before + 1,
            "{what}: only the open one went up"
        );
    }
    assert_eq!(
        actions(&envoy, "lenient", "tool_pre_invoke", "failed_open").await?,
        2.0
    );
    assert_eq!(
        actions(&envoy, "strict", "tool_pre_invoke", "failed_closed").await?,
        2.0
    );
    Ok(())
}
