//! Hostile input never kills the filter's VM: after each, a valid request still succeeds
//! through the same Envoy (one worker, one VM).

use serde_json::json;

use super::support::{JsonGateway, ensure_alive, post, tool_text, tools_call};

async fn still_serves(gw: &mut JsonGateway, after: &str) -> anyhow::Result<()> {
    ensure_alive(&mut gw.envoy)?;
    let reply = post(
        &gw.envoy.mcp_url(),
        tools_call(99, "echo", json!({"message": "alive"})),
        &[],
    )
    .await?;
    anyhow::ensure!(
        reply.status == 200 && tool_text(&reply.response(&json!(99))?) == "alive",
        "after {after}: valid request got {} {}",
        reply.status,
        reply.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_never_kill_the_vm() -> anyhow::Result<()> {
    let mut gw = JsonGateway::start("{}").await?;
    let url = gw.envoy.mcp_url();
    let depth = 100_000;
    // (name, body, the expected (HTTP status, JSON-RPC code) when one is fixed)
    type Case = (&'static str, Vec<u8>, Option<(u16, i64)>);
    let cases: Vec<Case> = vec![
        ("deep array nesting", format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(), None),
        ("deep object nesting", "{\"a\":".repeat(depth).into_bytes(), None),
        (
            "deep nesting inside params",
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{}"#, "[".repeat(depth)).into_bytes(),
            None,
        ),
        (
            "invalid UTF-8 in a string",
            [&br#"{"jsonrpc":"2.0","id":1,"method":""#[..], &[0xff, 0xfe, 0xc3], &br#""}"#[..]].concat(),
            Some((400, -32700)),
        ),
        ("invalid UTF-8 body", vec![0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28], Some((400, -32700))),
        ("truncated JSON", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"na"#.to_vec(), Some((400, -32700))),
        ("NUL bytes", vec![0u8; 4096], Some((400, -32700))),
        ("lone surrogate escape", br#"{"jsonrpc":"2.0","id":1,"method":"\ud800"}"#.to_vec(), None),
        ("huge number id", format!(r#"{{"jsonrpc":"2.0","id":1{},"method":"ping"}}"#, "0".repeat(10_000)).into_bytes(), None),
        (
            "5 MB body",
            tools_call(1, "echo", json!({"message": "x".repeat(5 * 1024 * 1024)})).into_bytes(),
            Some((413, -32600)),
        ),
    ];
    let mut failures = Vec::new();
    for (name, body, want) in cases {
        match post(&url, body, &[]).await {
            Ok(reply) => {
                if let Some((status, code)) = want {
                    let v: serde_json::Value =
                        serde_json::from_slice(&reply.body).unwrap_or_default();
                    if reply.status != status || v["error"]["code"].as_i64() != Some(code) {
                        failures.push(format!(
                            "{name}: got {} {} (want {status}, {code})",
                            reply.status,
                            super::support::truncate(&reply.text(), 200)
                        ));
                    }
                } else if reply.status == 500 {
                    failures.push(format!(
                        "{name}: 500 (an internal failure) {}",
                        reply.text()
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: no answer: {e:#}")),
        }
        if let Err(e) = still_serves(&mut gw, name).await {
            failures.push(format!("{e:#}"));
        }
    }
    let prom = gw.envoy.prometheus().await?;
    if prom
        .lines()
        .any(|l| l.starts_with("mcpgw_internal_errors_total") && !l.ends_with(" 0"))
    {
        failures.push(format!(
            "internal errors counted: {}",
            prom.lines()
                .filter(|l| l.starts_with("mcpgw_internal"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    super::support::assert_rows(failures);
    Ok(())
}

/// Header values that are not UTF-8 (obs-text is legal HTTP, and Envoy passes it on) are
/// answered like any other wrong value; the proxy-wasm SDK's string getters would panic on
/// them, which is why the filter reads headers as bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_header_values_never_kill_the_vm() -> anyhow::Result<()> {
    use reqwest::header::HeaderValue;
    let mut gw = JsonGateway::start("{}").await?;
    let url = gw.envoy.mcp_url();
    let body = tools_call(1, "echo", json!({"message": "x"}));
    let obs = |prefix: &str| -> anyhow::Result<HeaderValue> {
        Ok(HeaderValue::from_bytes(
            &[prefix.as_bytes(), &[0xff, 0xfe, 0xe9]].concat(),
        )?)
    };
    let cases: Vec<(&str, &str, HeaderValue, u16)> = vec![
        (
            "content-type",
            "content-type",
            obs("application/json")?,
            415,
        ),
        (
            "accept",
            "accept",
            obs("application/json, text/event-stream")?,
            406,
        ),
        (
            "protocol version",
            "mcp-protocol-version",
            obs("2025-06-18")?,
            400,
        ),
        ("traceparent", "traceparent", obs("00-")?, 200),
        ("unrelated header", "x-anything", obs("")?, 200),
    ];
    let mut failures = Vec::new();
    for (name, header, value, want) in cases {
        let mut req = super::support::http()
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.clone());
        req = req.header(header, value);
        match super::support::send(req).await {
            Ok(reply) if reply.status == want => {}
            Ok(reply) => failures.push(format!(
                "{name}: got {} {} (want {want})",
                reply.status,
                super::support::truncate(&reply.text(), 200)
            )),
            Err(e) => failures.push(format!("{name}: no answer: {e:#}")),
        }
        if let Err(e) = still_serves(&mut gw, name).await {
            failures.push(format!("{e:#}"));
        }
    }
    // Repeated `Accept` headers mean their joined list: each half alone is not enough.
    let req = super::support::http()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("accept", "text/event-stream")
        .body(body.clone());
    match super::support::send(req).await {
        Ok(reply) if reply.status == 200 => {}
        Ok(reply) => failures.push(format!(
            "split Accept: got {} {}",
            reply.status,
            reply.text()
        )),
        Err(e) => failures.push(format!("split Accept: no answer: {e:#}")),
    }
    super::support::assert_rows(failures);
    Ok(())
}
