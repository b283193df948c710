//! Every bad-input row of docs/filter.md "Requests", with the default (empty) configuration:
//! exact HTTP status, JSON-RPC code and id.

use serde_json::{Value, json};

use super::support::{
    JsonGateway, Rejection, assert_rows, check_rejection, http, post, send, tools_call,
};

fn rej(status: u16, code: i64, id: Value) -> Rejection {
    Rejection { status, code, id }
}

/// One POST row: (name, body, extra headers, expected answer).
type PostRow = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    Rejection,
);

/// POST rows.
fn post_rows() -> Vec<PostRow> {
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_owned();
    vec![
        ("POST with Content-Type text/plain", ping.clone(), vec![("content-type", "text/plain")], rej(415, -32600, Value::Null)),
        ("POST without Content-Type", ping.clone(), vec![("content-type", "")], rej(415, -32600, Value::Null)),
        ("POST with Accept text/html", ping.clone(), vec![("accept", "text/html")], rej(406, -32600, Value::Null)),
        ("POST with Accept application/xml", ping.clone(), vec![("accept", "application/xml")], rej(406, -32600, Value::Null)),
        ("MCP-Protocol-Version 1999-01-01", ping.clone(), vec![("mcp-protocol-version", "1999-01-01")], rej(400, -32600, Value::Null)),
        ("MCP-Protocol-Version 2024-11-05", ping.clone(), vec![("mcp-protocol-version", "2024-11-05")], rej(400, -32600, Value::Null)),
        ("body not JSON", "this is not json".into(), vec![], rej(400, -32700, Value::Null)),
        ("truncated JSON", r#"{"jsonrpc":"2.0","id":1,"meth"#.into(), vec![], rej(400, -32700, Value::Null)),
        ("empty body", String::new(), vec![], rej(400, -32700, Value::Null)),
        ("no jsonrpc member (id known)", r#"{"id":1,"method":"ping"}"#.into(), vec![], rej(400, -32600, json!(1))),
        ("jsonrpc 1.0 (id known)", r#"{"jsonrpc":"1.0","id":"a","method":"ping"}"#.into(), vec![], rej(400, -32600, json!("a"))),
        ("id is an object", r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#.into(), vec![], rej(400, -32600, Value::Null)),
        ("id is a bool", r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#.into(), vec![], rej(400, -32600, Value::Null)),
        ("no method/result/error", r#"{"jsonrpc":"2.0","id":3}"#.into(), vec![], rej(400, -32600, json!(3))),
        ("method not a string", r#"{"jsonrpc":"2.0","id":4,"method":7}"#.into(), vec![], rej(400, -32600, json!(4))),
        ("JSON scalar", "42".into(), vec![], rej(400, -32600, Value::Null)),
        (
            "batch under 2025-06-18",
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#.into(),
            vec![("mcp-protocol-version", "2025-06-18")],
            rej(400, -32600, Value::Null),
        ),
        (
            "batch under 2025-11-25",
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.into(),
            vec![("mcp-protocol-version", "2025-11-25")],
            rej(400, -32600, Value::Null),
        ),
        ("tools/call without params", r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#.into(), vec![], rej(400, -32602, json!(5))),
        ("tools/call without params.name", r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"arguments":{}}}"#.into(), vec![], rej(400, -32602, json!(5))),
        ("tools/call with numeric name", r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":12}}"#.into(), vec![], rej(400, -32602, json!(6))),
        ("resources/read without params.uri", r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{}}"#.into(), vec![], rej(400, -32602, json!(7))),
        ("prompts/get without params.name", r#"{"jsonrpc":"2.0","id":"p","method":"prompts/get","params":{"arguments":{}}}"#.into(), vec![], rej(400, -32602, json!("p"))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_exact_status_and_jsonrpc_code() -> anyhow::Result<()> {
    let gw = JsonGateway::start("{}").await?;
    let url = gw.envoy.mcp_url();
    let mut failures = Vec::new();
    for (name, body, extra, want) in post_rows() {
        let reply = post(&url, body, &extra).await?;
        if let Err(e) = check_rejection(&reply, &want) {
            failures.push(format!("{name}: {e}"));
        }
    }

    // GET whose Accept lacks text/event-stream.
    let reply = send(http().get(&url).header("accept", "application/json")).await?;
    if let Err(e) = check_rejection(&reply, &rej(406, -32600, Value::Null)) {
        failures.push(format!("GET with Accept application/json: {e}"));
    }

    // Other HTTP methods: 405 with Allow.
    for method in [reqwest::Method::PUT, reqwest::Method::PATCH] {
        let reply = send(
            http()
                .request(method.clone(), &url)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await?;
        let allow = reply.header("allow");
        if reply.status != 405 || allow != "GET, POST, DELETE" {
            failures.push(format!(
                "{method}: status {} allow {allow:?} (want 405, \"GET, POST, DELETE\")",
                reply.status
            ));
        }
    }

    // The same gateway still serves a valid call.
    let ok = post(
        &url,
        tools_call(9, "echo", json!({"message": "still here"})),
        &[],
    )
    .await?;
    if ok.status != 200 || super::support::tool_text(&ok.response(&json!(9))?) != "still here" {
        failures.push(format!(
            "valid call after bad input: {} {}",
            ok.status,
            ok.text()
        ));
    }
    assert_rows(failures);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_wildcards_count() -> anyhow::Result<()> {
    let gw = JsonGateway::start("{}").await?;
    let url = gw.envoy.mcp_url();
    // The filter must pass these on (the upstream may still be stricter and refuse `*/*`
    // itself, so the filter's own verdict is read from its metrics, not the status).
    for accept in [
        "*/*",
        "application/*, text/*",
        "text/event-stream, application/json;q=0.9",
        "*/*;q=0.8, text/event-stream",
    ] {
        post(
            &url,
            tools_call(1, "add", json!({"a": 2, "b": 3})),
            &[("accept", accept)],
        )
        .await?;
    }
    // Lacking text/event-stream is the filter's own 406.
    let lacking = post(
        &url,
        tools_call(2, "add", json!({"a": 2, "b": 3})),
        &[("accept", "application/json")],
    )
    .await?;
    let samples = super::support::parse_prometheus(&gw.envoy.prometheus().await?)?;
    let rejected: f64 = samples
        .iter()
        .filter(|s| s.name == "mcpgw_rejected_total")
        .map(|s| s.value)
        .sum();
    let passed = super::support::sample(
        &samples,
        "mcpgw_requests_total",
        &[("mcp_method", "tools/call"), ("mcp_tool", "add")],
    );
    let mut failures = Vec::new();
    if let Err(e) = check_rejection(&lacking, &rej(406, -32600, Value::Null)) {
        failures.push(format!("Accept application/json only: {e}"));
    }
    if rejected != 1.0 {
        failures.push(format!("wildcard Accepts: mcpgw_rejected_total is {rejected}, want 1 (only the application/json-only request)"));
    }
    if passed != Some(4.0) {
        failures.push(format!(
            "wildcard Accepts: mcpgw_requests_total{{tools/call,add}} is {passed:?}, want 4"
        ));
    }
    assert_rows(failures);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_default_limit_gets_413() -> anyhow::Result<()> {
    let gw = JsonGateway::start("{}").await?;
    let url = gw.envoy.mcp_url();
    // 4194304 is the documented default; send 5 MB (by Content-Length).
    let big = tools_call(1, "echo", json!({"message": "x".repeat(5 * 1024 * 1024)}));
    let reply = post(&url, big, &[]).await?;
    check_rejection(&reply, &rej(413, -32600, Value::Null))
        .or_else(|e| check_rejection(&reply, &rej(413, -32600, json!(1))).map_err(|_| e))
        .map_err(|e| anyhow::anyhow!("5 MB body: {e}"))?;
    Ok(())
}
