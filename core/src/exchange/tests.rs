//! Table tests of the exchange: every decision the filter used to make, driven natively
//! through the same calls the filter makes.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::*;
use crate::header_map::serialize;
use crate::session::SessionKey;
use base64::Engine as _;
use serde_json::{Value, json};

/// What the exchange told its host.
#[derive(Default, Debug)]
struct Recorder {
    requests: Vec<(String, Option<String>)>,
    responses: Vec<(String, String, bool)>,
    rejected: Vec<&'static str>,
    internal: u32,
    warnings: Vec<String>,
}

impl Host for Recorder {
    fn count_request(&mut self, method: &str, tool: Option<&str>) {
        self.requests
            .push((method.to_owned(), tool.map(str::to_owned)));
    }
    fn count_response(&mut self, method: &str, tool: &str, error: bool) {
        self.responses
            .push((method.to_owned(), tool.to_owned(), error));
    }
    fn count_rejected(&mut self, reason: Reason) {
        self.rejected.push(reason.label());
    }
    fn count_internal_error(&mut self) {
        self.internal += 1;
    }
    fn warn(&mut self, message: &str) {
        self.warnings.push(message.to_owned());
    }
}

const KEY: [u8; 32] = [7; 32];

fn key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(KEY)
}

/// A snapshot with tool routes (passthrough) and virtual server `s1` over upstreams `a`
/// and `b`, with `extra` merged in at the top level.
fn config(extra: Value) -> Rc<Config> {
    let mut doc = json!({
        "policy": {"tool_routes": {"echo": "c-echo"}, "denied_tools": ["rm"]},
        "upstreams": {
            "a": {"cluster": "ca", "path": "/a/mcp", "authority": "a.internal:8080"},
            "b": {"cluster": "cb"}
        },
        "servers": {"s1": {
            "name": "one",
            "tools": [
                {"name": "a__t0", "upstream": "a", "upstream_name": "t0", "item": {"name": "a__t0"}},
                {"name": "b__same", "upstream": "b", "upstream_name": "b__same", "item": {"name": "b__same"}}
            ],
            "prompts": [{"name": "b__greet", "upstream": "b", "upstream_name": "greet", "item": {"name": "b__greet"}}]
        }}
    });
    if let (Value::Object(d), Value::Object(e)) = (&mut doc, extra) {
        for (k, v) in e {
            d.insert(k, v);
        }
    }
    Rc::new(Config::from_bytes(doc.to_string().as_bytes()).unwrap())
}

fn with_sessions() -> Rc<Config> {
    config(json!({"session": {"signing_key": key_b64()}, "relay": "relay-cluster"}))
}

const POST_HEADERS: [(&str, &str); 3] = [
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
    ("mcp-protocol-version", "2025-06-18"),
];

fn post_head(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = vec![(":method", "POST"), (":path", path)];
    // Headers in `extra` replace the defaults of the same name.
    h.extend(
        POST_HEADERS
            .iter()
            .filter(|(n, _)| !extra.iter().any(|(e, _)| e == n)),
    );
    h.extend(extra);
    serialize(&h)
}

/// Runs a POST of `body` to `path` through a new exchange, in one chunk.
fn post(
    config: &Rc<Config>,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> (Exchange, Step, Recorder) {
    let mut host = Recorder::default();
    let mut x = Exchange::new(Rc::clone(config));
    let step = x.on_request_head(&post_head(path, extra), false, &mut host);
    assert_eq!(step, Step::ReadBody, "{path}: {body}");
    let bytes = body.as_bytes().to_vec();
    let step = x.on_request_body(
        bytes.len(),
        true,
        |start, len| bytes.get(start..start + len).map(<[u8]>::to_vec),
        &mut host,
    );
    (x, step, host)
}

fn reply_of(step: &Step) -> (u16, Value) {
    match step {
        Step::Reply(r) => (
            r.status,
            r.body
                .as_ref()
                .map_or(Value::Null, |b| serde_json::from_slice(b).unwrap()),
        ),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn forward_of(step: Step) -> Forward {
    match step {
        Step::Forward(f) => f,
        other => panic!("expected a forward, got {other:?}"),
    }
}

fn set(f: &Forward, h: Header) -> Option<Option<&str>> {
    f.headers
        .iter()
        .rev()
        .find(|(n, _)| *n == h)
        .map(|(_, v)| v.as_deref())
}

fn call(id: u32, name: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {"x": 1}}})
        .to_string()
}

#[test]
fn head_rejections_have_their_status_code_and_allow_header() {
    let cfg = config(json!({}));
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: [Case<'_>; 6] = [
        (
            "no content type",
            vec![
                (":method", "POST"),
                ("accept", "application/json, text/event-stream"),
            ],
            415,
            "unsupported_media_type",
        ),
        (
            "accept json only",
            vec![
                (":method", "POST"),
                ("content-type", "application/json"),
                ("accept", "application/json"),
            ],
            406,
            "not_acceptable",
        ),
        (
            "unknown version",
            vec![(":method", "POST"), ("mcp-protocol-version", "2099-01-01")],
            400,
            "bad_protocol_version",
        ),
        (
            "length over the limit",
            vec![
                (":method", "POST"),
                ("content-type", "application/json"),
                ("accept", "*/*"),
                ("content-length", "99999999"),
            ],
            413,
            "too_large",
        ),
        (
            "GET without event-stream",
            vec![(":method", "GET"), ("accept", "application/json")],
            406,
            "not_acceptable",
        ),
        ("PUT", vec![(":method", "PUT")], 405, "method_not_allowed"),
    ];
    for (name, headers, status, label) in cases {
        let mut host = Recorder::default();
        let mut x = Exchange::new(Rc::clone(&cfg));
        let step = x.on_request_head(&serialize(&headers), false, &mut host);
        let (got, body) = reply_of(&step);
        assert_eq!(got, status, "{name}");
        assert_eq!(body["error"]["code"], -32600, "{name}");
        assert_eq!(host.rejected, [label], "{name}");
        if let Step::Reply(r) = &step {
            assert_eq!(
                header(r, "allow"),
                (status == 405).then_some("GET, POST, DELETE"),
                "{name}"
            );
        }
        assert!(!x.on_response_head().remove_session_id, "{name}");
        assert_eq!(
            x.response_body_need(),
            BodyNeed::Nothing,
            "own replies are not observed"
        );
    }
    // GET and DELETE outside virtual servers pass untouched.
    for method in ["GET", "DELETE"] {
        let mut x = Exchange::new(Rc::clone(&cfg));
        let head = serialize(&[(":method", method), ("accept", "text/event-stream")]);
        assert_eq!(
            x.on_request_head(&head, true, &mut Recorder::default()),
            Step::Continue
        );
    }
}

#[test]
fn passthrough_bodies_are_decided_by_the_policy() {
    let cfg = config(json!({}));
    // (name, body, expected step kind, status/code when answered)
    let routed = post(&cfg, "/mcp", &[], &call(1, "echo"));
    let f = forward_of(routed.1);
    assert_eq!(f.headers, [(Header::Route, Some("c-echo".to_owned()))]);
    assert_eq!(f.body, None, "routed passthrough bodies are not rewritten");
    assert_eq!(
        routed.2.requests,
        [("tools/call".to_owned(), Some("echo".to_owned()))]
    );

    let (_, step, _) = post(&cfg, "/mcp", &[], &call(2, "other"));
    assert_eq!(step, Step::Continue, "no route, nothing to rewrite");

    let cases: [(&str, String, u16, i64, &str); 5] = [
        ("not json", "{nope".into(), 400, -32700, "parse_error"),
        (
            "no jsonrpc",
            r#"{"id":1,"method":"ping"}"#.into(),
            400,
            -32600,
            "invalid_request",
        ),
        (
            "call without name",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#.into(),
            400,
            -32602,
            "invalid_params",
        ),
        ("denied tool", call(3, "rm"), 403, -32003, "tool_denied"),
        (
            "batch in 2025-06-18",
            format!("[{},{}]", call(4, "echo"), call(5, "echo")),
            400,
            -32600,
            "batch_not_allowed",
        ),
    ];
    for (name, body, status, code, label) in cases {
        let (_, step, host) = post(&cfg, "/mcp", &[], &body);
        let (got, reply) = reply_of(&step);
        assert_eq!(
            (got, reply["error"]["code"].as_i64()),
            (status, Some(code)),
            "{name}"
        );
        assert_eq!(host.rejected, [label], "{name}");
    }
    let strict = config(json!({"policy": {"allowed_methods": ["ping"]}}));
    let (_, step, _) = post(&strict, "/mcp", &[], &call(6, "echo"));
    let (status, reply) = reply_of(&step);
    assert_eq!(
        (status, reply["id"].clone()),
        (200, json!(6)),
        "a denied method answers the request"
    );
    assert_eq!(reply["error"]["code"], -32601);
}

#[test]
fn trace_context_from_meta_is_copied_unless_a_header_has_one() {
    let cfg = config(json!({}));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo",
        "_meta": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "a=b"}}})
    .to_string();
    let f = forward_of(post(&cfg, "/mcp", &[], &body).1);
    assert_eq!(
        set(&f, Header::Named("traceparent")),
        Some(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ))
    );
    assert_eq!(set(&f, Header::Named("tracestate")), Some(Some("a=b")));
    let f = forward_of(
        post(
            &cfg,
            "/mcp",
            &[(
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            )],
            &body,
        )
        .1,
    );
    assert_eq!(
        set(&f, Header::Named("traceparent")),
        None,
        "the header wins"
    );
}

#[test]
fn the_body_is_read_once_in_order_and_capped() {
    let cfg = config(json!({"policy": {"max_body_bytes": 100, "early_terminate": false}}));
    let body = call(1, "echo");
    let (first, second) = body.as_bytes().split_at(20);
    let mut host = Recorder::default();
    let mut x = Exchange::new(Rc::clone(&cfg));
    assert_eq!(
        x.on_request_head(&post_head("/mcp", &[]), false, &mut host),
        Step::ReadBody
    );
    let mut asked = Vec::new();
    let step = x.on_request_body(
        20,
        false,
        |s, l| {
            asked.push((s, l));
            Some(first.to_vec())
        },
        &mut host,
    );
    assert_eq!(step, Step::ReadBody);
    assert_eq!(x.body_read(), 20);
    let total = body.len();
    let step = x.on_request_body(
        total,
        true,
        |s, l| {
            asked.push((s, l));
            Some(second.to_vec())
        },
        &mut host,
    );
    assert_eq!(
        asked,
        [(0, 20), (20, total - 20)],
        "each byte is asked for once"
    );
    assert_eq!(step, Step::Continue, "parsed whole and let through");

    // Over the limit as it streams: refused without reading the chunk.
    let mut x = Exchange::new(Rc::clone(&cfg));
    x.on_request_head(&post_head("/mcp", &[]), false, &mut host);
    let step = x.on_request_body(101, false, |_, _| panic!("must not read"), &mut host);
    assert_eq!(reply_of(&step).0, 413);

    // A host that cannot deliver the body is an internal error.
    let mut host = Recorder::default();
    let mut x = Exchange::new(Rc::clone(&cfg));
    x.on_request_head(&post_head("/mcp", &[]), false, &mut host);
    let step = x.on_request_body(10, true, |_, _| None, &mut host);
    assert_eq!(reply_of(&step).0, 500);
    assert_eq!(
        (host.internal, host.rejected.as_slice()),
        (1, &["internal"][..])
    );

    // A POST whose head ends the stream has an empty body: a parse error.
    let mut x = Exchange::new(Rc::clone(&cfg));
    let step = x.on_request_head(&post_head("/mcp", &[]), true, &mut host);
    assert_eq!(reply_of(&step).1["error"]["code"], -32700);
}

#[test]
fn virtual_server_paths_are_resolved_before_anything_else() {
    let plain = config(json!({}));
    let sessions = with_sessions();
    let cases: [(&str, &Rc<Config>, &str, Option<u16>); 5] = [
        ("unknown server", &plain, "/servers/nope/mcp", Some(404)),
        ("other endpoint", &plain, "/servers/s1/tools", Some(404)),
        (
            "legacy SSE without relay",
            &plain,
            "/servers/s1/sse",
            Some(404),
        ),
        ("legacy SSE with relay", &sessions, "/servers/s1/sse", None),
        (
            "legacy message with relay",
            &sessions,
            "/servers/s1/message?session_id=x",
            None,
        ),
    ];
    for (name, cfg, path, status) in cases {
        let mut host = Recorder::default();
        let mut x = Exchange::new(Rc::clone(cfg));
        let head = serialize(&[
            (":method", "GET"),
            (":path", path),
            ("accept", "text/event-stream"),
        ]);
        let step = x.on_request_head(&head, true, &mut host);
        match status {
            Some(s) => assert_eq!(reply_of(&step).0, s, "{name}"),
            None => {
                let f = forward_of(step);
                assert_eq!(
                    f.headers,
                    [(Header::Route, Some("relay-cluster".to_owned()))],
                    "{name}"
                );
                assert!(!x.on_response_head().remove_session_id, "{name}: relayed");
                assert_eq!(
                    x.response_body_need(),
                    BodyNeed::Nothing,
                    "{name}: not observed again"
                );
            }
        }
    }
    // Without virtual servers, /servers/ paths are like any other.
    let none = Rc::new(Config::default());
    let mut x = Exchange::new(none);
    let head = serialize(&[
        (":method", "GET"),
        (":path", "/servers/x/mcp"),
        ("accept", "text/event-stream"),
    ]);
    assert_eq!(
        x.on_request_head(&head, true, &mut Recorder::default()),
        Step::Continue
    );
}

#[test]
fn catalog_methods_are_answered_at_the_edge() {
    let cfg = config(json!({}));
    let (mut x, step, _) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    let (status, body) = reply_of(&step);
    assert_eq!(status, 200);
    assert_eq!(body["result"]["tools"][0]["name"], "a__t0");
    assert!(!x.on_response_head().remove_session_id);
    // Without a session key, initialize is answered at once, with no token.
    let (_, step, _) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
    );
    let Step::Reply(r) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(header(r, "mcp-session-id"), None);
    let (_, step, _) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(reply_of(&step), (202, Value::Null));
    let (_, step, _) = post(&cfg, "/servers/s1/mcp", &[], &call(2, "a__nope"));
    assert_eq!(reply_of(&step).1["error"]["code"], -32602);
    let (_, step, host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        &format!("[{}]", call(3, "a__t0")),
    );
    assert_eq!(reply_of(&step).0, 400);
    assert_eq!(
        host.rejected,
        ["batch_not_allowed"],
        "the version's rule comes first"
    );
    let (_, step, host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[("mcp-protocol-version", "2025-03-26")],
        &format!("[{}]", call(3, "a__t0")),
    );
    assert_eq!(reply_of(&step).0, 400);
    assert_eq!(host.rejected, ["batch"]);
}

#[test]
fn a_virtual_servers_call_is_renamed_and_pointed_at_its_upstream() {
    let cfg = config(json!({}));
    let (mut x, step, host) = post(&cfg, "/servers/s1/mcp", &[], &call(7, "a__t0"));
    let f = forward_of(step);
    let body: Value = serde_json::from_slice(f.body.as_ref().unwrap()).unwrap();
    assert_eq!(body["params"]["name"], "t0", "renamed by span");
    assert_eq!(
        body["params"]["arguments"],
        json!({"x": 1}),
        "the rest untouched"
    );
    assert_eq!(
        set(&f, Header::Named("content-length")),
        Some(Some(f.body.as_ref().unwrap().len().to_string().as_str()))
    );
    assert_eq!(set(&f, Header::Named(":path")), Some(Some("/a/mcp")));
    assert_eq!(
        set(&f, Header::Named(":authority")),
        Some(Some("a.internal:8080"))
    );
    assert_eq!(set(&f, Header::Route), Some(Some("ca")));
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        None,
        "no session header to touch"
    );
    assert_eq!(
        host.requests,
        [("tools/call".to_owned(), Some("a__t0".to_owned()))]
    );
    // The response is the upstream's: its session id goes, its messages are counted.
    assert!(x.on_response_head().remove_session_id);
    let mut host = Recorder::default();
    x.on_response_body(
        br#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#,
        true,
        &mut host,
    );
    assert_eq!(
        host.responses,
        [("tools/call".to_owned(), "a__t0".to_owned(), false)]
    );

    // A name the upstream shares is not rewritten; prompts route by their owner.
    let f = forward_of(post(&cfg, "/servers/s1/mcp", &[], &call(8, "b__same")).1);
    assert_eq!(f.body, None);
    assert_eq!(set(&f, Header::Route), Some(Some("cb")));
    assert_eq!(
        set(&f, Header::Named(":authority")),
        None,
        "no authority configured"
    );
    let f = forward_of(
        post(
            &cfg,
            "/servers/s1/mcp",
            &[],
            r#"{"jsonrpc":"2.0","id":9,"method":"prompts/get","params":{"name":"b__greet"}}"#,
        )
        .1,
    );
    let body: Value = serde_json::from_slice(f.body.as_ref().unwrap()).unwrap();
    assert_eq!(body["params"]["name"], "greet");
}

/// Opens a session on `with_sessions()`: the initialize calls, answered as `answers` says
/// (upstream id → session id, `None` for stateless), then the initialized notifications.
fn open(answers: &[(&str, Option<&str>)]) -> (String, Recorder) {
    let cfg = with_sessions();
    let (mut x, step, mut host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    let Step::Call(calls) = step else {
        panic!("{step:?}")
    };
    let clusters: Vec<&str> = calls.iter().map(|c| c.cluster.as_str()).collect();
    assert_eq!(clusters, ["ca", "cb"], "every upstream of the server, once");
    for c in &calls {
        let body: Value = serde_json::from_slice(c.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["method"], "initialize");
        assert_eq!(
            c.headers.iter().find(|(n, _)| *n == ":method").unwrap().1,
            "POST"
        );
    }
    let mut notifications = Vec::new();
    let mut last = Step::Wait;
    for (c, (up, sid)) in calls.iter().zip(answers) {
        let step = x.on_call_answer(
            c.tag,
            CallAnswer {
                status: Some(200),
                session_id: sid.map(str::to_owned),
            },
            &mut host,
        );
        match step {
            Step::Call(more) => {
                assert_eq!(more.len(), 1, "{up}");
                let n = &more[0];
                assert_eq!(
                    n.headers
                        .iter()
                        .find(|(h, _)| *h == "mcp-session-id")
                        .unwrap()
                        .1,
                    sid.unwrap()
                );
                notifications.push(n.tag);
            }
            other => last = other,
        }
    }
    for tag in notifications {
        last = x.on_call_answer(
            tag,
            CallAnswer {
                status: Some(202),
                session_id: None,
            },
            &mut host,
        );
    }
    let Step::Reply(r) = last else {
        panic!("{last:?}")
    };
    assert_eq!(r.status, 200);
    (header(&r, "mcp-session-id").unwrap().to_owned(), host)
}

#[test]
fn initialize_opens_a_session_on_every_upstream_and_seals_it() {
    let (token, _) = open(&[("a", Some("sid-a")), ("b", None)]);
    let session = SessionKey::from_base64(&key_b64())
        .unwrap()
        .open(&token, "s1")
        .unwrap();
    assert_eq!(
        session.upstreams.get("a").map(String::as_str),
        Some("sid-a")
    );
    assert!(
        !session.upstreams.contains_key("b"),
        "stateless upstreams hold nothing"
    );
    assert_eq!(session.protocol_version, "2025-06-18");
}

#[test]
fn calls_that_fail_or_go_unanswered_leave_their_upstream_out() {
    let cfg = with_sessions();
    let (mut x, step, mut host) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
    );
    let Step::Call(calls) = step else {
        panic!("{step:?}")
    };
    assert_eq!(
        x.on_call_answer(calls[0].tag, CallAnswer::default(), &mut host),
        Step::Wait
    );
    assert_eq!(
        x.on_call_answer(999, CallAnswer::default(), &mut host),
        Step::Wait,
        "unknown tags are ignored"
    );
    let last = x.on_call_answer(
        calls[1].tag,
        CallAnswer {
            status: Some(500),
            session_id: Some("x".into()),
        },
        &mut host,
    );
    let Step::Reply(r) = last else {
        panic!("{last:?}")
    };
    let token = header(&r, "mcp-session-id").unwrap();
    let session = SessionKey::from_base64(&key_b64())
        .unwrap()
        .open(token, "s1")
        .unwrap();
    assert!(session.upstreams.is_empty());
    assert_eq!(host.warnings.len(), 2, "{:?}", host.warnings);
}

#[test]
fn a_sessions_calls_carry_the_upstreams_own_session() {
    let (token, _) = open(&[("a", Some("sid-a")), ("b", Some("sid-b"))]);
    let cfg = with_sessions();
    let f = forward_of(
        post(
            &cfg,
            "/servers/s1/mcp",
            &[("mcp-session-id", &token)],
            &call(2, "a__t0"),
        )
        .1,
    );
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        Some(Some("sid-a"))
    );
    let f = forward_of(
        post(
            &cfg,
            "/servers/s1/mcp",
            &[("mcp-session-id", &token)],
            &call(3, "b__same"),
        )
        .1,
    );
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        Some(Some("sid-b"))
    );
    // Forged, tampered or foreign tokens: 404, before anything is read.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    for bad in [tampered.as_str(), "mcpgw1.e30.AAAA", "uuid"] {
        let mut host = Recorder::default();
        let mut x = Exchange::new(Rc::clone(&cfg));
        let step = x.on_request_head(
            &post_head("/servers/s1/mcp", &[("mcp-session-id", bad)]),
            false,
            &mut host,
        );
        assert_eq!(reply_of(&step).0, 404, "{bad}");
        assert_eq!(host.rejected, ["unknown_session"]);
    }
}

fn get(cfg: &Rc<Config>, extra: &[(&str, &str)]) -> Step {
    let mut h = vec![
        (":method", "GET"),
        (":path", "/servers/s1/mcp"),
        ("accept", "text/event-stream"),
    ];
    h.extend(extra);
    Exchange::new(Rc::clone(cfg)).on_request_head(&serialize(&h), true, &mut Recorder::default())
}

#[test]
fn the_get_stream_goes_to_the_one_stateful_upstream_or_the_relay() {
    let cfg = with_sessions();
    let (one, _) = open(&[("a", Some("sid-a")), ("b", None)]);
    let f = forward_of(get(&cfg, &[("mcp-session-id", &one)]));
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        Some(Some("sid-a"))
    );
    assert_eq!(set(&f, Header::Route), Some(Some("ca")));
    assert_eq!(set(&f, Header::Named(":path")), Some(Some("/a/mcp")));
    assert_eq!(
        set(&f, Header::Named(edge::UPSTREAM_HEADER)),
        Some(None),
        "the pick is not forwarded"
    );

    let (two, _) = open(&[("a", Some("sid-a")), ("b", Some("sid-b"))]);
    let f = forward_of(get(&cfg, &[("mcp-session-id", &two)]));
    assert_eq!(
        set(&f, Header::Named(edge::RELAY_UPSTREAMS_HEADER)),
        Some(Some("a,b"))
    );
    assert_eq!(set(&f, Header::Route), Some(Some("relay-cluster")));
    let f = forward_of(get(
        &cfg,
        &[("mcp-session-id", &two), (edge::UPSTREAM_HEADER, "b")],
    ));
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        Some(Some("sid-b"))
    );
    assert_eq!(
        reply_of(&get(
            &cfg,
            &[("mcp-session-id", &two), (edge::UPSTREAM_HEADER, "z")]
        ))
        .0,
        404
    );

    let (none, _) = open(&[("a", None), ("b", None)]);
    let step = get(&cfg, &[("mcp-session-id", &none)]);
    let Step::Reply(r) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(
        (r.status, header(r, "allow")),
        (405, Some("POST")),
        "nothing to stream"
    );
    assert_eq!(reply_of(&get(&cfg, &[])).0, 405, "no session");
}

#[test]
fn delete_ends_every_upstream_session() {
    let cfg = with_sessions();
    let (token, _) = open(&[("a", Some("sid-a")), ("b", Some("sid-b"))]);
    let mut host = Recorder::default();
    let mut x = Exchange::new(Rc::clone(&cfg));
    let head = serialize(&[
        (":method", "DELETE"),
        (":path", "/servers/s1/mcp"),
        ("mcp-session-id", &token),
    ]);
    let Step::Call(calls) = x.on_request_head(&head, true, &mut host) else {
        panic!()
    };
    let sids: Vec<&str> = calls
        .iter()
        .map(|c| {
            assert_eq!(
                c.headers.iter().find(|(n, _)| *n == ":method").unwrap().1,
                "DELETE"
            );
            c.headers
                .iter()
                .find(|(n, _)| *n == "mcp-session-id")
                .unwrap()
                .1
                .as_str()
        })
        .collect();
    assert_eq!(sids, ["sid-a", "sid-b"]);
    assert_eq!(
        x.on_call_answer(
            calls[0].tag,
            CallAnswer {
                status: Some(200),
                session_id: None
            },
            &mut host
        ),
        Step::Wait
    );
    let last = x.on_call_answer(
        calls[1].tag,
        CallAnswer {
            status: Some(404),
            session_id: None,
        },
        &mut host,
    );
    assert_eq!(reply_of(&last), (200, Value::Null));
    // Without a session there is nothing to end.
    let head = serialize(&[(":method", "DELETE"), (":path", "/servers/s1/mcp")]);
    let step = Exchange::new(cfg).on_request_head(&head, true, &mut host);
    assert_eq!(reply_of(&step).0, 405);
}

#[test]
fn responses_are_counted_per_message_in_json_and_sse() {
    let cfg = config(json!({}));
    let observe = |chunks: &[&[u8]]| {
        let (mut x, _, _) = post(&cfg, "/mcp", &[], &call(1, "echo"));
        assert!(!x.on_response_head().remove_session_id);
        let mut host = Recorder::default();
        for (i, c) in chunks.iter().enumerate() {
            if x.response_body_need() == BodyNeed::Nothing {
                break;
            }
            let last = i + 1 == chunks.len();
            let bytes: &[u8] = if x.response_body_need() == BodyNeed::End {
                b""
            } else {
                c
            };
            x.on_response_body(bytes, last, &mut host);
        }
        host.responses
    };
    let ok = ("tools/call".to_owned(), "echo".to_owned(), false);
    let err = ("tools/call".to_owned(), "echo".to_owned(), true);
    assert_eq!(
        observe(&[br#"{"jsonrpc":"2.0","id":1,"result":{}}"#]),
        vec![ok.clone()]
    );
    assert_eq!(
        observe(&[
            br#"{"jsonrpc":"2.0","id":1,"#,
            br#""error":{"code":1,"message":"x"}}"#
        ]),
        vec![err.clone()]
    );
    // Settled after the first key: the rest is not read, but only a whole body counts.
    assert_eq!(
        observe(&[br#"{"jsonrpc":"2.0","id":1,"result":{"a":"#, b"[1,2]}}"]),
        vec![ok.clone()]
    );
    assert_eq!(
        observe(&[br#"{"jsonrpc":"2.0","id":1,"result":{"a":"#]),
        vec![ok.clone()]
    );
    let sse: &[&[u8]] = &[
        b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
        b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
    ];
    assert_eq!(observe(sse), [ok]);
    assert!(
        observe(&[b"<html>"]).is_empty(),
        "not JSON-RPC: not counted"
    );
}
