//! The bad-input classes of the 2026-07-28 era and of browser protection, at a virtual
//! server in a real Envoy: a request whose headers disagree with its body, a missing
//! required header or envelope, an unsupported version, a foreign `Origin` or `Host`, a
//! client response to a request no upstream made. Each with its exact HTTP status,
//! JSON-RPC code and id; and what is allowed still passes.

use serde_json::{Value, json};

use super::support::{
    Rejection, artifacts, assert_rows, check_rejection, http, initialize, post, send,
};
use mcpgw_e2e::{Envoy, EnvoyConfig, RmcpServer, RmcpServerMode};

/// Session key of these tests (32 bytes, base64).
const KEY: &str = "bWNwZ3ctZTJlLXNlc3Npb24ta2V5LTMyLWJ5dGVzISE=";

fn snapshot() -> String {
    let tool = json!({"name": "echo", "upstream": "primary", "upstream_name": "echo",
                      "item": {"name": "echo", "inputSchema": {"type": "object"}}});
    json!({
        "version": "e2e-era-bad-input",
        "policy": {
            "allowed_hosts": ["127.0.0.1:*"],
            "allowed_origins": ["https://app.example"]
        },
        "session": {"keys": [KEY]},
        "upstreams": {"primary": {"cluster": "upstream", "path": "/mcp"}},
        "servers": {
            "team": {"name": "Team", "version": "1", "tools": [tool.clone()],
                     "allowed_origins": ["https://team.example"]},
            "other": {"name": "Other", "version": "1", "tools": [tool]}
        }
    })
    .to_string()
}

fn rej(status: u16, code: i64, id: Value) -> Rejection {
    Rejection { status, code, id }
}

/// A 2026-07-28 `tools/call` of `echo` whose envelope says `version`.
fn modern_call(version: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "hi"},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}
        }
    }})
    .to_string()
}

const MODERN: &str = "2026-07-28";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_class_gets_its_exact_status_and_code() -> anyhow::Result<()> {
    let primary = RmcpServer::start("primary", RmcpServerMode::StatelessJson).await?;
    let envoy = Envoy::start(
        &artifacts(),
        &EnvoyConfig::with_filter(&snapshot(), primary.addr),
    )
    .await?;
    let team = envoy.url("/servers/team/mcp");
    let other = envoy.url("/servers/other/mcp");
    let call = modern_call(MODERN);
    let headers = |method: &'static str, name: &'static str| {
        vec![
            ("mcp-protocol-version", MODERN),
            ("mcp-method", method),
            ("mcp-name", name),
        ]
    };
    let without_envelope = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                  "params": {"name": "echo", "arguments": {}}})
    .to_string();
    type Row = (
        &'static str,
        &'static str,
        String,
        Vec<(&'static str, &'static str)>,
        Rejection,
    );
    let rows: Vec<Row> = vec![
        (
            "Mcp-Method disagrees with the body",
            "team",
            call.clone(),
            headers("tools/list", "echo"),
            rej(400, -32020, json!(1)),
        ),
        (
            "Mcp-Method missing",
            "team",
            call.clone(),
            headers("", "echo"),
            rej(400, -32020, json!(1)),
        ),
        (
            "Mcp-Name missing",
            "team",
            call.clone(),
            headers("tools/call", ""),
            rej(400, -32020, json!(1)),
        ),
        (
            "Mcp-Name disagrees with the body",
            "team",
            call.clone(),
            headers("tools/call", "other"),
            rej(400, -32020, json!(1)),
        ),
        (
            "MCP-Protocol-Version disagrees with the envelope",
            "team",
            call.clone(),
            vec![
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
            rej(400, -32020, json!(1)),
        ),
        (
            "2026 header without the _meta envelope",
            "team",
            without_envelope,
            headers("tools/call", "echo"),
            rej(400, -32602, json!(1)),
        ),
        (
            "unsupported version in header and envelope",
            "team",
            modern_call("2027-01-01"),
            vec![
                ("mcp-protocol-version", "2027-01-01"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
            rej(400, -32022, json!(1)),
        ),
        (
            "foreign Origin",
            "team",
            call.clone(),
            [
                headers("tools/call", "echo"),
                vec![("origin", "https://evil.example")],
            ]
            .concat(),
            rej(403, -32600, Value::Null),
        ),
        (
            "another server's Origin",
            "other",
            call.clone(),
            [
                headers("tools/call", "echo"),
                vec![("origin", "https://team.example")],
            ]
            .concat(),
            rej(403, -32600, Value::Null),
        ),
        (
            "foreign Host (DNS rebinding)",
            "team",
            call.clone(),
            [
                headers("tools/call", "echo"),
                vec![("host", "rebound.example")],
            ]
            .concat(),
            rej(421, -32600, Value::Null),
        ),
        (
            "a client response no upstream asked for",
            "team",
            r#"{"jsonrpc":"2.0","id":"mcpgw-77","result":{}}"#.into(),
            vec![("mcp-protocol-version", "2025-11-25")],
            rej(400, -32600, Value::Null),
        ),
    ];
    let mut failures = Vec::new();
    for (name, server, body, extra, want) in rows {
        let url = if server == "team" { &team } else { &other };
        let reply = post(url, body, &extra).await?;
        if let Err(e) = check_rejection(&reply, &want) {
            failures.push(format!("{name}: {e}"));
        }
        if want.code == -32022 {
            let text = reply.text();
            if !text.contains(MODERN) || !text.contains("2025-11-25") {
                failures.push(format!(
                    "{name}: the supported versions are not named: {text}"
                ));
            }
        }
    }

    // A 2026-era GET or DELETE: 405, Allow: POST.
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let reply = send(
            http()
                .request(method.clone(), &team)
                .header("accept", "text/event-stream")
                .header("mcp-protocol-version", MODERN),
        )
        .await?;
        if reply.status != 405 || reply.header("allow") != "POST" {
            failures.push(format!(
                "2026 {method}: {} allow {:?}: {}",
                reply.status,
                reply.header("allow"),
                reply.text()
            ));
        }
    }

    // A client response inside a session, to an id no upstream of it used.
    let init = post(&team, initialize(1, "2025-11-25"), &[]).await?;
    let session = init.header("mcp-session-id");
    if init.status != 200 || session.is_empty() {
        failures.push(format!("initialize: {} {}", init.status, init.text()));
    } else {
        let reply = post(
            &team,
            r#"{"jsonrpc":"2.0","id":"mcpgw-77","result":{}}"#,
            &[
                ("mcp-session-id", &session),
                ("mcp-protocol-version", "2025-11-25"),
            ],
        )
        .await?;
        if let Err(e) = check_rejection(&reply, &rej(400, -32600, Value::Null)) {
            failures.push(format!(
                "a response in a session to an id no upstream used: {e}"
            ));
        }
    }

    // What is allowed passes: no Origin, the listener's Origin, the server's own Origin.
    for (what, url, origin) in [
        ("no Origin", &team, None),
        ("the listener's Origin", &other, Some("https://app.example")),
        (
            "the server's own Origin",
            &team,
            Some("https://team.example"),
        ),
    ] {
        let mut extra = headers("tools/call", "echo");
        if let Some(o) = origin {
            extra.push(("origin", o));
        }
        let reply = post(url, call.clone(), &extra).await?;
        let answer = reply.response(&json!(1));
        let text = answer
            .as_ref()
            .map(super::support::tool_text)
            .unwrap_or_default();
        if reply.status != 200 || text != "hi" {
            failures.push(format!("{what}: {} {}", reply.status, reply.text()));
        }
    }
    assert_rows(failures);
    Ok(())
}
