//! The plugin configuration: an invalid document makes Envoy reject the filter (with a log
//! line naming the field); an empty one means the documented defaults.

use serde_json::json;

use super::support::{JsonGateway, post, tool_text, tools_call};
use mcpgw_e2e::{Envoy, EnvoyConfig, RmcpServer, RmcpServerMode};

async fn rejected(config: &str, must_mention: &str) -> Result<(), String> {
    let upstream = RmcpServer::start("primary", RmcpServerMode::StatelessJson)
        .await
        .map_err(|e| e.to_string())?;
    let (status, log) = Envoy::start_rejected(
        &super::support::artifacts(),
        &EnvoyConfig::with_filter(config, upstream.addr),
    )
    .await
    .map_err(|e| format!("{e:#}"))?;
    if status.success() {
        return Err(format!(
            "Envoy exited 0 on an invalid filter config {config}"
        ));
    }
    if !log.contains(must_mention) {
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        return Err(format!(
            "Envoy rejected {config} but its log never names `{must_mention}`:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_are_rejected_naming_the_field() -> anyhow::Result<()> {
    let cases = [
        (r#"{"policy":{"max_body_bytes":"lots"}}"#, "max_body_bytes"),
        (r#"{"policy":{"no_such_knob":true}}"#, "no_such_knob"),
        (r#"{"surprise":1}"#, "surprise"),
        (r#"{"policy":{"denied_tools":"echo"}}"#, "denied_tools"),
        (r#"{"policy":{"tool_routes":{"echo":7}}}"#, "tool_routes"),
        (r#"{"policy":{"allowed_methods":[1]}}"#, "allowed_methods"),
    ];
    let mut failures = Vec::new();
    for (config, field) in cases {
        if let Err(e) = rejected(config, field).await {
            failures.push(e);
        }
    }
    if !failures.is_empty() {
        panic!(
            "{} invalid config(s) not rejected as documented:\n{}",
            failures.len(),
            failures.join("\n---\n")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_that_is_not_json_is_rejected() -> anyhow::Result<()> {
    let upstream = RmcpServer::start("primary", RmcpServerMode::StatelessJson).await?;
    let (status, _log) = Envoy::start_rejected(
        &super::support::artifacts(),
        &EnvoyConfig::with_filter("{not json", upstream.addr),
    )
    .await?;
    assert!(
        !status.success(),
        "Envoy must refuse a filter whose config is not JSON"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_config_means_defaults() -> anyhow::Result<()> {
    for config in ["", "{}", r#"{"schema":1,"version":"v-empty","policy":{}}"#] {
        let gw = JsonGateway::start(config).await?;
        let reply = post(
            &gw.envoy.mcp_url(),
            tools_call(1, "echo", json!({"message": "defaults"})),
            &[],
        )
        .await?;
        assert_eq!(reply.status, 200, "config {config:?}: {}", reply.text());
        assert_eq!(tool_text(&reply.response(&json!(1))?), "defaults");
        // Defaults still validate MCP.
        let bad = post(&gw.envoy.mcp_url(), "nope", &[]).await?;
        assert_eq!(
            bad.status,
            400,
            "config {config:?} must still validate: {}",
            bad.text()
        );
    }
    Ok(())
}
