//! Policy rows of docs/filter.md: allowed methods, unknown methods, denied tools, body limit
//! (by Content-Length and while streaming), duplicate keys.

use futures::stream;
use serde_json::{Value, json};

use super::support::{
    JsonGateway, Rejection, assert_rows, check_rejection, post, tool_text, tools_call,
};

const POLICY: &str = r#"{
  "schema": 1,
  "version": "e2e-policy",
  "policy": {
    "allowed_methods": ["initialize", "notifications/initialized", "tools/list", "tools/call"],
    "denied_tools": ["whoami"],
    "max_body_bytes": 1024,
    "reject_duplicate_keys": true
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rejections_have_exact_status_and_code() -> anyhow::Result<()> {
    let gw = JsonGateway::start(POLICY).await?;
    let url = gw.envoy.mcp_url();
    let mut failures = Vec::new();
    let rows: Vec<(&str, String, Rejection)> = vec![
        (
            "request for a method outside allowed_methods",
            r#"{"jsonrpc":"2.0","id":7,"method":"resources/list"}"#.into(),
            Rejection { status: 200, code: -32601, id: json!(7) },
        ),
        (
            "notification outside allowed_methods",
            r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#.into(),
            Rejection { status: 400, code: -32601, id: Value::Null },
        ),
        (
            "denied tool",
            tools_call(8, "whoami", json!({})),
            Rejection { status: 403, code: -32003, id: json!(8) },
        ),
        (
            "duplicate key",
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","name":"whoami"}}"#.into(),
            Rejection { status: 400, code: -32600, id: json!(9) },
        ),
        (
            "body over max_body_bytes (Content-Length)",
            tools_call(10, "echo", json!({"message": "y".repeat(2000)})),
            Rejection { status: 413, code: -32600, id: Value::Null },
        ),
    ];
    for (name, body, want) in rows {
        let reply = post(&url, body, &[]).await?;
        if let Err(e) = check_rejection(&reply, &want) {
            failures.push(format!("{name}: {e}"));
        }
    }

    // Over the limit while streaming: chunked, no Content-Length; the id is in the first chunk,
    // so the answer may carry it.
    let head = r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":{"message":""#;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        std::iter::once(Ok(head.as_bytes().to_vec()))
            .chain((0..8).map(|_| Ok(vec![b'z'; 512])))
            .chain(std::iter::once(Ok(br#""}}}"#.to_vec())))
            .collect();
    let body = reqwest::Body::wrap_stream(stream::iter(chunks));
    match post(&url, body, &[]).await {
        Ok(reply) => {
            let a = check_rejection(
                &reply,
                &Rejection {
                    status: 413,
                    code: -32600,
                    id: json!(11),
                },
            );
            let b = check_rejection(
                &reply,
                &Rejection {
                    status: 413,
                    code: -32600,
                    id: Value::Null,
                },
            );
            if let (Err(e), Err(_)) = (a, b) {
                failures.push(format!("body over max_body_bytes (streamed): {e}"));
            }
        }
        Err(e) => failures.push(format!(
            "body over max_body_bytes (streamed): no answer: {e:#}"
        )),
    }

    // Allowed traffic still passes to the upstream.
    let ok = post(
        &url,
        tools_call(12, "echo", json!({"message": "allowed"})),
        &[],
    )
    .await?;
    match ok.response(&json!(12)) {
        Ok(r) if ok.status == 200 && tool_text(&r) == "allowed" => {}
        _ => failures.push(format!("allowed tools/call: {} {}", ok.status, ok.text())),
    }
    assert_rows(failures);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_rejected_only_when_policy_says_so() -> anyhow::Result<()> {
    let strict = JsonGateway::start(r#"{"policy":{"allow_unknown_methods":false}}"#).await?;
    let reply = post(
        &strict.envoy.mcp_url(),
        r#"{"jsonrpc":"2.0","id":"u","method":"acme/frobnicate"}"#,
        &[],
    )
    .await?;
    check_rejection(
        &reply,
        &Rejection {
            status: 200,
            code: -32601,
            id: json!("u"),
        },
    )
    .map_err(|e| anyhow::anyhow!("unknown method with allow_unknown_methods=false: {e}"))?;
    // MCP methods still pass.
    let ok = post(
        &strict.envoy.mcp_url(),
        tools_call(2, "add", json!({"a": 40, "b": 2})),
        &[],
    )
    .await?;
    assert_eq!(
        ok.status,
        200,
        "tools/call through strict gateway: {}",
        ok.text()
    );
    assert_eq!(tool_text(&ok.response(&json!(2))?), "42");

    // With the defaults the unknown method reaches the upstream, which answers it itself.
    let lax = JsonGateway::start("{}").await?;
    let reply = post(
        &lax.envoy.mcp_url(),
        r#"{"jsonrpc":"2.0","id":"u","method":"acme/frobnicate"}"#,
        &[],
    )
    .await?;
    let answer = reply.response(&json!("u"))?;
    assert!(
        answer["error"]["message"].as_str().is_some(),
        "upstream should answer the unknown method itself: {answer}"
    );
    let prom = lax.envoy.prometheus().await?;
    assert!(
        !prom
            .lines()
            .any(|l| l.starts_with("mcpgw_rejected_total") && !l.ends_with(" 0")),
        "default policy must not reject an unknown method:\n{prom}"
    );
    Ok(())
}
