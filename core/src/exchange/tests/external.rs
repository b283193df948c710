//! The external-guardrail stage: a pre hook's call to the service, and what the request
//! becomes with each verdict, with a failed service, and with several services in turn.

use super::external_post::MAX_HELD_BYTES;
use super::*;
use crate::guard::external::{METHOD, SERVICE};

/// A length-delimited protobuf field.
fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(n << 3) | 2];
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push(u8::try_from(len & 0x7f).unwrap() | 0x80);
        len >>= 7;
    }
    out.push(u8::try_from(len).unwrap());
    out.extend_from_slice(bytes);
    out
}

fn pass() -> Vec<u8> {
    field(1, &[])
}

fn deny(reason: &str) -> Vec<u8> {
    field(3, &field(1, reason.as_bytes()))
}

fn mutate(params: Value, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut m = field(1, params.to_string().as_bytes());
    for (n, v) in headers {
        m.extend(field(
            3,
            &[field(1, n.as_bytes()), field(2, v.as_bytes())].concat(),
        ));
    }
    field(2, &m)
}

/// The test catalog with `plugins`.
fn guarded(plugins: Value) -> Rc<Config> {
    config(json!({"plugins": plugins}))
}

fn external(name: &str, failure_mode: &str) -> Value {
    json!({"name": name, "external": {"target": "guard.svc:50051", "timeout_ms": 150,
                                      "failure_mode": failure_mode}})
}

fn call_with(id: u32, name: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
        .to_string()
}

fn check_of(step: &Step) -> &GrpcCall {
    match step {
        Step::Check(call) => call,
        other => panic!("expected a check, got {other:?}"),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn plugins_of(host: &Recorder) -> Vec<(&str, &str, &str)> {
    host.plugins
        .iter()
        .map(|(p, h, e)| (p.as_str(), h.as_str(), e.as_str()))
        .collect()
}

#[test]
fn a_call_waits_for_the_service_and_goes_on_when_it_passes() {
    let cfg = guarded(json!([external("ext", "closed")]));
    let (mut x, step, mut host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(3, "a__t0", json!({"q": "hi"})),
    );
    let call = check_of(&step);
    assert_eq!(call.cluster, "mcpgw-guard-guard.svc_50051");
    assert_eq!((call.service, call.method), (SERVICE, METHOD));
    assert_eq!(call.timeout_ms, 150);
    for part in [
        &b"ext"[..],
        b"tools/call",
        b"s1",
        b"a__t0",
        br#"{"name":"a__t0","arguments":{"q":"hi"}}"#,
    ] {
        assert!(
            contains(&call.message, part),
            "{}",
            String::from_utf8_lossy(part)
        );
    }
    let f = forward_of(x.on_check_answer(Some(&pass()), &mut host));
    assert_eq!(set(&f, Header::Route), Some(Some("ca")));
    let body: Value = serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body["params"],
        json!({"name": "t0", "arguments": {"q": "hi"}})
    );
    assert!(host.plugins.is_empty(), "a pass is not a finding");
}

#[test]
fn a_deny_answers_with_the_services_reason_and_nothing_is_routed() {
    let cfg = guarded(json!([external("ext", "open")]));
    for path in ["/mcp", "/servers/s1/mcp"] {
        let tool = if path == "/mcp" { "echo" } else { "a__t0" };
        let (mut x, step, mut host) =
            post(&cfg, path, &[], &call_with(5, tool, json!({"q": "drop"})));
        check_of(&step);
        let answer = field(
            3,
            &[
                field(1, b"policy: no drops"),
                vec![
                    0x10, 0xf6, 0x85, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
            ]
            .concat(),
        );
        let step = x.on_check_answer(Some(&answer), &mut host);
        let (status, reply) = reply_of(&step);
        assert_eq!(status, 403, "{path}");
        assert_eq!(reply["id"], 5);
        assert_eq!(reply["error"]["code"], -32010);
        assert_eq!(
            reply["error"]["message"],
            "request denied by plugin \"ext\": policy: no drops"
        );
        assert_eq!(
            reply["error"]["data"],
            json!({"plugin": "ext", "hook": "tool_pre_invoke", "reason": "policy: no drops"})
        );
        assert_eq!(host.rejected, ["plugin_blocked"]);
        assert_eq!(plugins_of(&host), [("ext", "tool_pre_invoke", "blocked")]);
        assert_eq!(x.response_body_need(), BodyNeed::Nothing);
    }
}

#[test]
fn a_mutation_replaces_the_arguments_and_adds_headers() {
    let cfg = guarded(json!([external("ext", "closed")]));
    // The virtual server's path: the name is rewritten too.
    let (mut x, step, mut host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(3, "a__t0", json!({"q": "secret"})),
    );
    check_of(&step);
    let answer = mutate(
        json!({"name": "ignored", "arguments": {"q": "[redacted]", "n": 2}}),
        &[("x-guard-verdict", "mutated")],
    );
    let f = forward_of(x.on_check_answer(Some(&answer), &mut host));
    let body = f.body.as_deref().unwrap();
    let doc: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        doc["params"],
        json!({"name": "t0", "arguments": {"q": "[redacted]", "n": 2}})
    );
    assert_eq!(
        set(&f, Header::Named("content-length")),
        Some(Some(body.len().to_string().as_str()))
    );
    assert_eq!(
        set(&f, Header::Added("x-guard-verdict".into())),
        Some(Some("mutated"))
    );
    assert_eq!(plugins_of(&host), [("ext", "tool_pre_invoke", "masked")]);
    // The passthrough path.
    let (mut x, step, mut host) = post(
        &cfg,
        "/mcp",
        &[],
        &call_with(3, "echo", json!({"q": "secret"})),
    );
    check_of(&step);
    let answer = mutate(json!({"arguments": {"q": "x"}}), &[]);
    let f = forward_of(x.on_check_answer(Some(&answer), &mut host));
    let doc: Value = serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        doc["params"],
        json!({"name": "echo", "arguments": {"q": "x"}})
    );
    assert_eq!(set(&f, Header::Route), Some(Some("c-echo")));
    // A call without arguments gains them.
    let body =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}});
    let (mut x, step, mut host) = post(&cfg, "/mcp", &[], &body.to_string());
    assert!(contains(&check_of(&step).message, br#"{"name":"echo"}"#));
    let f = forward_of(x.on_check_answer(Some(&answer), &mut host));
    let doc: Value = serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        doc["params"],
        json!({"name": "echo", "arguments": {"q": "x"}})
    );
}

#[test]
fn a_failed_service_passes_or_refuses_by_the_failure_mode() {
    let broken = mutate(json!({"arguments": [1]}), &[]);
    let header = mutate(json!({}), &[("host", "evil")]);
    for (mode, answer) in [
        ("open", None),
        ("closed", None),
        ("open", Some(&b"\x0a"[..])),
        ("closed", Some(&b"\x0a"[..])),
        ("closed", Some(&broken[..])),
        ("closed", Some(&header[..])),
        ("closed", Some(&b""[..])),
    ] {
        let cfg = guarded(json!([external("ext", mode)]));
        let (mut x, step, mut host) = post(
            &cfg,
            "/servers/s1/mcp",
            &[],
            &call_with(3, "a__t0", json!({"q": "hi"})),
        );
        check_of(&step);
        let step = x.on_check_answer(answer, &mut host);
        let what = format!("{mode} {answer:?}");
        if mode == "open" {
            let f = forward_of(step);
            assert_eq!(set(&f, Header::Route), Some(Some("ca")), "{what}");
            assert_eq!(
                plugins_of(&host),
                [("ext", "tool_pre_invoke", "failed_open")]
            );
        } else {
            let (status, reply) = reply_of(&step);
            assert_eq!(status, 503, "{what}");
            assert_eq!(reply["error"]["code"], -32603);
            assert_eq!(reply["error"]["data"]["reason"], "unavailable");
            assert_eq!(
                plugins_of(&host),
                [("ext", "tool_pre_invoke", "failed_closed")]
            );
        }
        assert_eq!(host.warnings.len(), 1, "{what}: {:?}", host.warnings);
    }
}

#[test]
fn services_are_asked_in_turn_each_seeing_what_the_last_left() {
    let cfg = guarded(json!([
        {"name": "pii", "priority": 0, "pii": {"detectors": ["email"]}},
        {"name": "second", "priority": 20,
         "external": {"cluster": "guard-b", "failure_mode": "closed"}},
        {"name": "first", "priority": 10,
         "external": {"cluster": "guard-a", "failure_mode": "closed"}},
        {"name": "watch", "priority": 30, "mode": "permissive",
         "external": {"cluster": "guard-c"}},
        {"name": "off", "mode": "disabled", "external": {"cluster": "guard-d"}}
    ]));
    let (mut x, step, mut host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(3, "a__t0", json!({"to": "ann@example.com"})),
    );
    // The local mask came first.
    let first = check_of(&step);
    assert_eq!(first.cluster, "guard-a");
    assert!(!contains(&first.message, b"ann@example.com"));
    let step = x.on_check_answer(
        Some(&mutate(
            json!({"arguments": {"to": "team"}}),
            &[("x-a", "1")],
        )),
        &mut host,
    );
    let second = check_of(&step);
    assert_eq!(second.cluster, "guard-b");
    assert!(contains(&second.message, br#""arguments":{"to":"team"}"#));
    let step = x.on_check_answer(Some(&pass()), &mut host);
    assert_eq!(check_of(&step).cluster, "guard-c");
    // A permissive plugin's deny is only counted.
    let f = forward_of(x.on_check_answer(Some(&deny("no")), &mut host));
    let doc: Value = serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
    assert_eq!(doc["params"]["arguments"], json!({"to": "team"}));
    assert_eq!(set(&f, Header::Added("x-a".into())), Some(Some("1")));
    assert_eq!(
        plugins_of(&host),
        [
            ("pii", "tool_pre_invoke", "masked"),
            ("first", "tool_pre_invoke", "masked"),
            ("watch", "tool_pre_invoke", "would_block"),
        ]
    );
}

#[test]
fn conditions_and_methods_decide_whether_a_service_is_asked() {
    let cfg = guarded(json!([
        {"name": "ext", "conditions": {"tools": ["b__*"]},
         "external": {"cluster": "g"}}
    ]));
    let (_, step, _) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(3, "a__t0", json!({})),
    );
    assert!(matches!(step, Step::Forward(_)), "{step:?}");
    let (_, step, _) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(3, "b__same", json!({})),
    );
    check_of(&step);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let (_, step, _) = post(&cfg, "/servers/s1/mcp", &[], &list);
    assert!(matches!(step, Step::Reply(_)), "{step:?}");
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    for (plugin, field) in [
        (json!({"name": "e", "external": {}}), "plugins[0].external"),
        (
            json!({"name": "e", "external": {"target": "x", "timeout_ms": 5}}),
            "plugins[0].external.target",
        ),
        (
            json!({"name": "e", "external": {"cluster": "c", "timeout_ms": 0}}),
            "plugins[0].external.timeout_ms",
        ),
        (
            json!({"name": "e", "external": {"cluster": "c", "failure_mode": "maybe"}}),
            "",
        ),
    ] {
        let doc = json!({"plugins": [plugin]}).to_string();
        let Err(err) = Config::from_bytes(doc.as_bytes()) else {
            panic!("{field}: accepted")
        };
        let err = err.to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}

/// A guarded call at s1 whose response the plugins' post hooks hold.
fn held_call(cfg: &Rc<Config>) -> (Exchange, Recorder) {
    let (mut x, step, host) = post(
        cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(8, "a__t0", json!({"q": "hi"})),
    );
    forward_of(step);
    let head = x.on_response_head();
    assert!(head.remove_content_length);
    assert!(x.holds_response());
    assert_eq!(x.response_body_need(), BodyNeed::Bytes);
    (x, host)
}

fn post_plugin(name: &str, cluster: &str, failure_mode: &str) -> Value {
    json!({"name": name, "hooks": ["tool_post_invoke"],
           "external": {"cluster": cluster, "failure_mode": failure_mode}})
}

fn released(held: Held) -> Vec<u8> {
    match held {
        Held::Release(body) => body,
        other => panic!("expected a release, got {other:?}"),
    }
}

fn passed(held: Held) -> Vec<u8> {
    match held {
        Held::Pass(body) => body,
        other => panic!("expected a pass, got {other:?}"),
    }
}

fn checked(held: Held) -> GrpcCall {
    match held {
        Held::Check(call) => call,
        other => panic!("expected a check, got {other:?}"),
    }
}

#[test]
fn a_json_result_is_held_judged_and_replaced() {
    let cfg = guarded(json!([
        post_plugin("one", "g1", "closed"),
        post_plugin("two", "g2", "closed")
    ]));
    let (mut x, mut host) = held_call(&cfg);
    let body = br#"{"jsonrpc":"2.0","id":8,"result":{"content":[{"type":"text","text":"ssn 1"}]}}"#;
    let (a, b) = body.split_at(20);
    assert_eq!(x.on_held_response_body(a, false, &mut host), Held::Hold);
    let first = checked(x.on_held_response_body(b, true, &mut host));
    assert_eq!(first.cluster, "g1");
    assert!(contains(
        &first.message,
        br#"{"content":[{"type":"text","text":"ssn 1"}]}"#
    ));
    assert!(x.checks_response());
    let second = checked(x.on_response_check_answer(
        Some(&field(
            2,
            &field(2, br#"{"content":[{"type":"text","text":"ssn ***"}]}"#),
        )),
        &mut host,
    ));
    assert_eq!(second.cluster, "g2");
    assert!(
        contains(&second.message, b"ssn ***"),
        "the second sees the first's result"
    );
    let out = released(x.on_response_check_answer(Some(&pass()), &mut host));
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        doc,
        json!({"jsonrpc": "2.0", "id": 8, "result": {"content": [{"type": "text", "text": "ssn ***"}]}})
    );
    assert_eq!(plugins_of(&host), [("one", "tool_post_invoke", "masked")]);
    assert!(!x.checks_response());
}

#[test]
fn a_denied_or_unchecked_result_becomes_an_error_and_errors_are_not_sent() {
    let body = br#"{"jsonrpc":"2.0","id":8,"result":{"content":[]}}"#;
    // Denied.
    let cfg = guarded(json!([post_plugin("one", "g1", "open")]));
    let (mut x, mut host) = held_call(&cfg);
    checked(x.on_held_response_body(body, true, &mut host));
    let out = released(x.on_response_check_answer(Some(&deny("leaks")), &mut host));
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["id"], 8);
    assert_eq!(doc["error"]["code"], -32003);
    assert_eq!(
        doc["error"]["message"],
        "result blocked by plugin \"one\": leaks"
    );
    assert_eq!(doc["error"]["data"]["hook"], "tool_post_invoke");
    // Failed, open: as it was; closed: an error.
    let (mut x, mut host) = held_call(&cfg);
    checked(x.on_held_response_body(body, true, &mut host));
    assert_eq!(released(x.on_response_check_answer(None, &mut host)), body);
    assert_eq!(
        plugins_of(&host),
        [("one", "tool_post_invoke", "failed_open")]
    );
    let cfg = guarded(json!([post_plugin("one", "g1", "closed")]));
    let (mut x, mut host) = held_call(&cfg);
    checked(x.on_held_response_body(body, true, &mut host));
    let out = released(x.on_response_check_answer(Some(b"\x0a"), &mut host));
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["error"]["code"], -32603);
    assert_eq!(doc["error"]["data"]["reason"], "unavailable");
    // An error response has no result to judge.
    let (mut x, mut host) = held_call(&cfg);
    let error = br#"{"jsonrpc":"2.0","id":8,"error":{"code":-1,"message":"x"}}"#;
    assert_eq!(
        released(x.on_held_response_body(error, true, &mut host)),
        error
    );
}

#[test]
fn in_an_event_stream_the_result_event_is_judged_and_rebuilt() {
    let cfg = guarded(json!([post_plugin("one", "g1", "closed")]));
    let (mut x, mut host) = held_call(&cfg);
    let stream = concat!(
        "id: p0\r\ndata: \r\n\r\n",
        "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\r\n\r\n",
        "event: message\nid: e7\ndata: {\"jsonrpc\":\"2.0\",\"id\":8,\n",
        "data: \"result\":{\"v\":\"secret-1\"}}\n\n"
    );
    let (a, b) = stream.as_bytes().split_at(70);
    // The priming event is complete in the first chunk: it goes at once.
    let mut out = passed(x.on_held_response_body(a, false, &mut host));
    assert_eq!(out, b"id: p0\r\ndata: \r\n\r\n");
    let call = checked(x.on_held_response_body(b, true, &mut host));
    assert!(contains(&call.message, br#"{"v":"secret-1"}"#));
    out.extend(released(x.on_response_check_answer(
        Some(&field(2, &field(2, br#"{"v":"[masked]"}"#))),
        &mut host,
    )));
    let text = String::from_utf8(out).unwrap();
    let (before, last) = text.split_at(text.find("event: message\nid: e7").unwrap());
    assert_eq!(before, &stream[..before.len()], "earlier events untouched");
    assert_eq!(
        last,
        "event: message\nid: e7\ndata: {\"jsonrpc\":\"2.0\",\"id\":8,\ndata: \"result\":{\"v\":\"[masked]\"}}\n\n"
    );
}

#[test]
fn a_post_hook_is_asked_after_the_pre_hook_of_the_same_plugin() {
    let cfg = guarded(json!([external("ext", "closed")]));
    let (mut x, step, mut host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &call_with(3, "a__t0", json!({"q": "hi"})),
    );
    assert!(contains(&check_of(&step).message, b"tools/call"));
    forward_of(x.on_check_answer(Some(&pass()), &mut host));
    x.on_response_head();
    let body = br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#;
    let call = checked(x.on_held_response_body(body, true, &mut host));
    assert_eq!(call.cluster, "mcpgw-guard-guard.svc_50051");
    assert_eq!(
        released(x.on_response_check_answer(Some(&pass()), &mut host)),
        body
    );
}

#[test]
fn a_result_too_large_to_check_passes_or_is_withheld_by_the_failure_mode() {
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":8,"result":{{"text":"{}"}}}}"#,
        "a".repeat(MAX_HELD_BYTES)
    );
    let (a, b) = big.as_bytes().split_at(big.len() / 2);
    for mode in ["open", "closed"] {
        let cfg = guarded(json!([post_plugin("one", "g1", mode)]));
        let (mut x, mut host) = held_call(&cfg);
        assert_eq!(x.on_held_response_body(a, false, &mut host), Held::Hold);
        let out = released(x.on_held_response_body(b, true, &mut host));
        if mode == "open" {
            assert_eq!(out, big.as_bytes());
            assert_eq!(
                plugins_of(&host),
                [("one", "tool_post_invoke", "failed_open")]
            );
        } else {
            let doc: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(doc["id"], 8);
            assert_eq!(doc["error"]["data"]["reason"], "too_large");
            assert_eq!(
                plugins_of(&host),
                [("one", "tool_post_invoke", "failed_closed")]
            );
        }
    }
}

#[test]
fn events_before_the_result_go_as_they_complete_and_the_result_waits_for_the_services() {
    // A server's request mid-call (the client must answer it before the tool can finish)
    // and a progress notification reach the client before the stream ends; the result
    // waits for the service.
    let cfg = guarded(json!([post_plugin("one", "g1", "closed")]));
    let (mut x, mut host) = held_call(&cfg);
    let ask = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"elicitation/create\",\"params\":{\"message\":\"name?\"}}\n\n";
    let progress = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n";
    let result = "data: {\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{\"v\":\"ssn 1\"}}\n\n";
    let trailer = ": bye\n\n";
    // Half an event: nothing yet.
    let (ask_a, ask_b) = ask.split_at(30);
    assert_eq!(
        passed(x.on_held_response_body(ask_a.as_bytes(), false, &mut host)),
        b""
    );
    assert_eq!(
        passed(x.on_held_response_body(ask_b.as_bytes(), false, &mut host)),
        ask.as_bytes()
    );
    assert_eq!(
        passed(x.on_held_response_body(progress.as_bytes(), false, &mut host)),
        progress.as_bytes()
    );
    assert!(!x.checks_response());
    // The result and what follows it are held until the stream ends.
    let both = format!("{result}{trailer}");
    assert_eq!(
        passed(x.on_held_response_body(both.as_bytes(), false, &mut host)),
        b""
    );
    let call = checked(x.on_held_response_body(b"", true, &mut host));
    assert!(contains(&call.message, br#"{"v":"ssn 1"}"#));
    let rest = released(
        x.on_response_check_answer(Some(&field(2, &field(2, br#"{"v":"ssn ***"}"#))), &mut host),
    );
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        format!(
            "data: {{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{{\"v\":\"ssn ***\"}}}}\n\n{trailer}"
        )
    );
}

#[test]
fn a_stream_result_too_large_to_check_fails_closed_as_an_event() {
    let cfg = guarded(json!([post_plugin("one", "g1", "closed")]));
    let (mut x, mut host) = held_call(&cfg);
    let progress = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n";
    assert_eq!(
        passed(x.on_held_response_body(progress.as_bytes(), false, &mut host)),
        progress.as_bytes()
    );
    let big = format!(
        "data: {{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{{\"text\":\"{}\"}}}}\n\n",
        "a".repeat(MAX_HELD_BYTES)
    );
    assert_eq!(
        passed(x.on_held_response_body(big.as_bytes(), false, &mut host)),
        b""
    );
    let out = String::from_utf8(released(x.on_held_response_body(b"", true, &mut host))).unwrap();
    let data = out
        .strip_prefix("event: message\ndata: ")
        .and_then(|d| d.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not one event: {out:?}"));
    let doc: Value = serde_json::from_str(data).unwrap();
    assert_eq!(doc["id"], 8);
    assert_eq!(doc["error"]["data"]["reason"], "too_large");
}

#[test]
fn a_json_result_is_held_whole_even_when_it_looks_like_events() {
    let cfg = guarded(json!([post_plugin("one", "g1", "closed")]));
    let (mut x, mut host) = held_call(&cfg);
    let body = "  {\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{\"t\":\"data: x\\n\\n\"}}";
    let (a, b) = body.as_bytes().split_at(40);
    assert_eq!(x.on_held_response_body(a, false, &mut host), Held::Hold);
    checked(x.on_held_response_body(b, true, &mut host));
    assert_eq!(
        released(x.on_response_check_answer(Some(&pass()), &mut host)),
        body.as_bytes()
    );
}
