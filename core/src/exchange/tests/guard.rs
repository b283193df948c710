//! The guardrail stage of the exchange: pre hooks on routed requests (block, mask) in the
//! passthrough and virtual-server paths, and post hooks on JSON and SSE responses.

use super::*;

/// The test catalog with `plugins`, and tool `a__lookup` declaring an input schema.
fn guarded(plugins: Value) -> Rc<Config> {
    config(json!({
        "plugins": plugins,
        "servers": {"s1": {"name": "one", "tools": [
            {"name": "a__t0", "upstream": "a", "upstream_name": "t0", "item": {"name": "a__t0"}},
            {"name": "a__lookup", "upstream": "a", "upstream_name": "lookup", "item": {
                "name": "a__lookup",
                "inputSchema": {"type": "object", "properties": {"email": {"type": "string"}},
                                "required": ["email"], "additionalProperties": false}
            }}
        ]}}
    }))
}

fn call_with(id: u32, name: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
        .to_string()
}

fn plugins_of(host: &Recorder) -> Vec<(&str, &str, &str)> {
    host.plugins
        .iter()
        .map(|(p, h, e)| (p.as_str(), h.as_str(), e.as_str()))
        .collect()
}

#[test]
fn a_pre_hook_block_answers_before_anything_is_routed() {
    let cfg = guarded(json!([{"name": "deny", "deny_list": {"words": ["rm -rf"]}}]));
    let body = call_with(4, "echo", json!({"cmd": "please RM -RF /"}));
    for path in ["/mcp", "/servers/s1/mcp"] {
        let body = if path == "/mcp" {
            body.clone()
        } else {
            call_with(4, "a__t0", json!({"cmd": "please RM -RF /"}))
        };
        let (x, step, host) = post(&cfg, path, &[], &body);
        let (status, reply) = reply_of(&step);
        assert_eq!(status, 403, "{path}");
        assert_eq!(reply["id"], 4);
        assert_eq!(reply["error"]["code"], -32003);
        assert_eq!(
            reply["error"]["data"],
            json!({"plugin": "deny", "hook": "tool_pre_invoke", "reason": "word"})
        );
        assert!(!reply.to_string().to_lowercase().contains("rm -rf"));
        assert_eq!(host.rejected, ["plugin_blocked"]);
        assert_eq!(
            plugins_of(&host),
            [("deny", "tool_pre_invoke", "blocked")],
            "{path}"
        );
        assert_eq!(x.response_body_need(), BodyNeed::Nothing, "own reply");
    }
}

#[test]
fn a_pre_hook_mask_rewrites_the_forwarded_arguments() {
    let cfg = guarded(json!([{"name": "pii", "pii": {"detectors": ["email"]}}]));
    // Passthrough: routed by the policy, arguments masked, length set.
    let body = call_with(1, "echo", json!({"to": "jane.doe@example.com", "n": 1}));
    let (_, step, host) = post(&cfg, "/mcp", &[], &body);
    let f = forward_of(step);
    let sent = f.body.as_deref().unwrap();
    assert_eq!(
        String::from_utf8_lossy(sent),
        body.replace("jane.doe@example.com", "[REDACTED:email]")
    );
    assert_eq!(
        set(&f, Header::Named("content-length")),
        Some(Some(sent.len().to_string().as_str()))
    );
    assert_eq!(set(&f, Header::Route), Some(Some("c-echo")));
    assert_eq!(plugins_of(&host), [("pii", "tool_pre_invoke", "masked")]);
    // A virtual server: the mask and the rename in one rewrite.
    let body = call_with(2, "a__t0", json!({"to": "jane.doe@example.com"}));
    let (_, step, _) = post(&cfg, "/servers/s1/mcp", &[], &body);
    let f = forward_of(step);
    let sent: Value = serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
    assert_eq!(sent["params"]["name"], "t0");
    assert_eq!(
        sent["params"]["arguments"],
        json!({"to": "[REDACTED:email]"})
    );
    assert_eq!(
        set(&f, Header::Named("content-length")),
        Some(Some(f.body.as_ref().unwrap().len().to_string().as_str()))
    );
    // Nothing to mask: the passthrough body is not touched.
    let (_, step, host) = post(&cfg, "/mcp", &[], &call(3, "echo"));
    assert_eq!(forward_of(step).body, None);
    assert!(host.plugins.is_empty());
}

#[test]
fn arguments_that_fail_the_input_schema_are_refused_at_the_edge() {
    let cfg = guarded(json!([{"name": "schema", "schema": {}}]));
    let (_, step, host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(5, "a__lookup", json!({"mail": "x"})),
    );
    let (status, reply) = reply_of(&step);
    assert_eq!(
        (status, reply["error"]["code"].as_i64()),
        (400, Some(-32602))
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/email: is required"),
        "{reply}"
    );
    assert_eq!(host.rejected, ["plugin_invalid_arguments"]);
    let (_, step, _) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(6, "a__lookup", json!({"email": "x"})),
    );
    assert!(matches!(step, Step::Forward(_)));
}

#[test]
fn plugins_that_read_requests_read_them_whole() {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"big":"{}"}}}}}}"#,
        "x".repeat(64)
    );
    let split = body.find("\"arguments\"").unwrap();
    let run = |cfg: &Rc<Config>| {
        let mut host = Recorder::default();
        let mut x = Exchange::new(Rc::clone(cfg));
        let len = body.len().to_string();
        let head = post_head("/mcp", &[("content-length", len.as_str())]);
        assert_eq!(x.on_request_head(&head, false, &mut host), Step::ReadBody);
        let bytes = body.as_bytes().to_vec();
        x.on_request_body(
            split,
            false,
            |start, len| bytes.get(start..start + len).map(<[u8]>::to_vec),
            &mut host,
        )
    };
    // A policy that denies nothing lets a request go once it is routable.
    let plain = |plugins: Value| {
        let doc = json!({"policy": {"tool_routes": {"echo": "c-echo"}}, "plugins": plugins});
        Rc::new(Config::from_bytes(doc.to_string().as_bytes()).unwrap())
    };
    // Without plugins the request is routable before its arguments and goes on.
    assert!(matches!(run(&plain(json!([]))), Step::Forward(_)));
    // Plugins on requests need all of it; plugins on responses only do not.
    assert_eq!(
        run(&plain(json!([{"name": "pii", "pii": {}}]))),
        Step::ReadBody
    );
    assert!(matches!(
        run(&plain(json!([{"name": "s", "secrets": {}}]))),
        Step::Forward(_)
    ));
}

#[test]
fn batches_with_inspected_calls_are_refused() {
    let cfg = guarded(json!([{"name": "pii", "pii": {}}]));
    let batch = format!("[{},{}]", call(1, "echo"), call(2, "echo"));
    let (_, step, host) = post(
        &cfg,
        "/mcp",
        &[("mcp-protocol-version", "2025-03-26")],
        &batch,
    );
    let (status, reply) = reply_of(&step);
    assert_eq!(
        (status, reply["error"]["code"].as_i64()),
        (400, Some(-32600))
    );
    assert_eq!(host.rejected, ["batch_not_allowed"]);
    // A batch of what no plugin looks at goes on.
    let list = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;
    let (_, step, _) = post(
        &cfg,
        "/mcp",
        &[("mcp-protocol-version", "2025-03-26")],
        &format!("[{list},{list}]"),
    );
    assert_eq!(step, Step::Continue);
}

/// Feeds `chunks` as the response of `x`; what the client receives.
fn respond(x: &mut Exchange, chunks: &[&[u8]], host: &mut Recorder) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(x.response_body_need(), BodyNeed::Bytes);
        match x.on_response_body(c, i + 1 == chunks.len(), host) {
            Some(bytes) => out.extend(bytes),
            None => out.extend_from_slice(c),
        }
    }
    out
}

#[test]
fn a_json_result_is_held_and_masked_before_the_client_sees_it() {
    let cfg = guarded(json!([{"name": "pii", "pii": {}, "hooks": ["tool_post_invoke"]}]));
    for path in ["/mcp", "/servers/s1/mcp"] {
        let name = if path == "/mcp" { "echo" } else { "a__t0" };
        let (mut x, step, _) = post(&cfg, path, &[], &call(7, name));
        assert!(matches!(step, Step::Forward(_)));
        let head = x.on_response_head();
        assert!(head.remove_content_length, "the length will change");
        let mut host = Recorder::default();
        let chunks: [&[u8]; 3] = [
            br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","#,
            br#""text":"Reach me at jane@exam"#,
            br#"ple.com or 415-555-2671"}]}}"#,
        ];
        let mut sent = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let out = x.on_response_body(c, i == 2, &mut host).unwrap();
            if i < 2 {
                assert!(out.is_empty(), "held until the body ends");
            }
            sent.extend(out);
        }
        let v: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(
            v["result"]["content"][0]["text"], "Reach me at [REDACTED:email] or [REDACTED:phone]",
            "{path}"
        );
        assert_eq!(plugins_of(&host), [("pii", "tool_post_invoke", "masked")]);
        assert_eq!(
            host.responses,
            [("tools/call".to_owned(), name.to_owned(), false)],
            "still counted"
        );
    }
    // Requests the plugins do not apply to stream as before.
    let (mut x, _, _) = post(
        &cfg,
        "/mcp",
        &[],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert!(!x.on_response_head().remove_content_length);
}

#[test]
fn a_blocked_json_result_becomes_an_error_naming_the_plugin() {
    let cfg = guarded(json!([{"name": "no-keys", "secrets": {"action": "block"}}]));
    let (mut x, _, _) = post(&cfg, "/mcp", &[], &call(9, "echo"));
    x.on_response_head();
    let mut host = Recorder::default();
    let sent = respond(
        &mut x,
        &[br#"{"jsonrpc":"2.0","id":9,"result":{"content":[{"type":"text","text":"token ghp_16C7e42F292c6912E7710c838347Ae178B4a"}]}}"#],
        &mut host,
    );
    let v: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(v["id"], 9);
    assert_eq!(v["error"]["code"], -32003);
    assert_eq!(v["error"]["data"]["plugin"], "no-keys");
    assert!(!String::from_utf8_lossy(&sent).contains("ghp_"));
    assert_eq!(
        plugins_of(&host),
        [("no-keys", "tool_post_invoke", "blocked")]
    );
}

#[test]
fn sse_events_are_released_only_after_the_hooks() {
    let cfg = guarded(json!([
        {"name": "pii", "pii": {"detectors": ["email"]}, "hooks": ["tool_post_invoke"]},
        {"name": "no-keys", "secrets": {"action": "block"}}
    ]));
    let (mut x, _, _) = post(&cfg, "/servers/s1/mcp", &[], &call(3, "a__t0"));
    assert!(x.on_response_head().remove_content_length);
    let mut host = Recorder::default();
    let priming = b"id: 0\ndata: \n\n";
    let out = x.on_response_body(priming, false, &mut host).unwrap();
    assert_eq!(out, priming, "a priming event passes");
    let progress = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1,\"message\":\"mailing ops@corp.example\"}}\n\n";
    let first = x
        .on_response_body(progress.as_bytes(), false, &mut host)
        .unwrap();
    assert_eq!(first, progress.as_bytes(), "notifications are not results");
    // A result split across chunks: nothing of it leaves before its blank line.
    let part = x
        .on_response_body(
            b"id: 5\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ops@",
            false,
            &mut host,
        )
        .unwrap();
    assert!(part.is_empty(), "partial event held");
    let rest = x
        .on_response_body(b"corp.example\"}]}}\n\n", true, &mut host)
        .unwrap();
    let text = String::from_utf8(rest).unwrap();
    assert!(text.starts_with("id: 5\ndata: "), "{text}");
    assert!(
        text.contains("[REDACTED:email]") && !text.contains("ops@"),
        "{text}"
    );
    assert!(text.ends_with("\n\n"));
    assert_eq!(plugins_of(&host), [("pii", "tool_post_invoke", "masked")]);

    // A result with a key is replaced by an error event.
    let (mut x, _, _) = post(&cfg, "/servers/s1/mcp", &[], &call(4, "a__t0"));
    x.on_response_head();
    let mut host = Recorder::default();
    let sent = respond(
        &mut x,
        &[b"data: {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"AKIAIOSFODNN7EXAMPLE\"}]}}\n\n"],
        &mut host,
    );
    let text = String::from_utf8(sent).unwrap();
    let data = text.strip_prefix("data: ").unwrap().trim_end();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["error"]["data"]["plugin"], "no-keys");
    assert_eq!(v["id"], 4);
    // An unterminated event at the end of a guarded stream is not sent.
    let (mut x, _, _) = post(&cfg, "/servers/s1/mcp", &[], &call(5, "a__t0"));
    x.on_response_head();
    let sent = respond(
        &mut x,
        &[b"data: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"text\":\"AKIAIOSFODNN7EXAMPLE\"}}\n"],
        &mut Recorder::default(),
    );
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
}

#[test]
fn permissive_plugins_count_and_log_but_change_nothing() {
    let cfg = guarded(json!([{"name": "watch", "mode": "permissive", "pii": {}}]));
    let body = call_with(1, "echo", json!({"to": "jane@example.com"}));
    let (mut x, step, host) = post(&cfg, "/mcp", &[], &body);
    assert_eq!(forward_of(step).body, None, "forwarded unchanged");
    assert_eq!(
        plugins_of(&host),
        [("watch", "tool_pre_invoke", "would_mask")]
    );
    assert!(
        host.warnings[0].contains("\"watch\""),
        "{:?}",
        host.warnings
    );
    assert!(
        !host.warnings[0].contains("jane"),
        "logs never carry the text"
    );
    x.on_response_head();
    let mut host = Recorder::default();
    let result = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"jane@example.com"}]}}"#;
    assert_eq!(respond(&mut x, &[result], &mut host), result.to_vec());
    assert_eq!(
        plugins_of(&host),
        [("watch", "tool_post_invoke", "would_mask")]
    );
}

#[test]
fn a_response_too_large_to_inspect_is_refused_when_a_plugin_enforces() {
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
        "a".repeat(rewrite::MAX_EVENT_BYTES)
    );
    let chunks: Vec<&[u8]> = big.as_bytes().chunks(1 << 20).collect();
    let cfg = guarded(json!([{"name": "pii", "pii": {}}]));
    let (mut x, _, _) = post(&cfg, "/mcp", &[], &call(1, "echo"));
    x.on_response_head();
    let sent = respond(&mut x, &chunks, &mut Recorder::default());
    let v: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(v["error"]["data"]["reason"], "too_large");
    assert_eq!(v["id"], 1);
    // Permissive only: it goes on uninspected, whole.
    let cfg = guarded(json!([{"name": "pii", "mode": "permissive", "pii": {}}]));
    let (mut x, _, _) = post(&cfg, "/mcp", &[], &call(1, "echo"));
    x.on_response_head();
    let sent = respond(&mut x, &chunks, &mut Recorder::default());
    assert_eq!(sent.len(), big.len());
}
