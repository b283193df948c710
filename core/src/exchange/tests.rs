//! Table tests of the exchange: every decision the filter used to make, driven natively
//! through the same calls the filter makes.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::type_complexity
)]

use super::*;
use crate::header_map::serialize;
use crate::mirror;
use crate::session::SessionKeys;
use crate::session::table::{Slot, slot_key};
use base64::Engine as _;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::HashMap;

/// The shared data of one Envoy: value and compare-and-swap token per key.
type Table = Rc<RefCell<HashMap<String, (Vec<u8>, u32)>>>;

/// What the exchange told its host; its clock, randomness and shared data.
#[derive(Default, Debug)]
struct Recorder {
    /// (plugin, hook, effect) of every guardrail finding.
    plugins: Vec<(String, String, String)>,
    requests: Vec<(String, Option<String>)>,
    responses: Vec<(String, String, bool)>,
    rejected: Vec<&'static str>,
    internal: u32,
    warnings: Vec<String>,
    now: u64,
    table: Table,
    /// (limit, kind) of every request a limit refused.
    limited: Vec<(String, String)>,
    /// (milliseconds, outcome) of every check by the rate-limit service.
    limit_service: Vec<(u64, String)>,
}

const NOW: u64 = 1_000_000;

impl Recorder {
    fn on(table: &Table) -> Recorder {
        Recorder {
            now: NOW,
            table: Rc::clone(table),
            ..Recorder::default()
        }
    }
}

fn label(tool: ToolLabel<'_>) -> Option<String> {
    match tool {
        ToolLabel::None => None,
        ToolLabel::Known(n) | ToolLabel::Unvetted(n) => Some(n.to_owned()),
        ToolLabel::Unknown => Some(crate::metrics::OTHER.to_owned()),
    }
}

impl Host for Recorder {
    fn count_request(&mut self, method: &str, tool: ToolLabel<'_>) {
        self.requests.push((method.to_owned(), label(tool)));
    }
    fn count_response(&mut self, method: &str, tool: ToolLabel<'_>, error: bool) {
        self.responses
            .push((method.to_owned(), label(tool).unwrap_or_default(), error));
    }
    fn now(&self) -> u64 {
        if self.now == 0 { NOW } else { self.now }
    }
    fn random(&mut self, out: &mut [u8]) -> bool {
        // Distinct across hosts of one test run, as a real source would be.
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        for b in out.iter_mut() {
            *b = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        true
    }
    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.table.borrow().get(key) {
            // As the filter's host reads it: zero bytes come back as no value.
            Some((v, cas)) if v.is_empty() => (None, Some(*cas)),
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut t = self.table.borrow_mut();
        let current = t.get(key).map(|(_, c)| *c);
        // As Envoy's: a token is checked only against a key that exists.
        if current.is_some() && cas.is_some() && cas != current {
            return false;
        }
        let next = current.unwrap_or(0) + 1;
        t.insert(key.to_owned(), (value.to_vec(), next));
        true
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
    fn count_plugin(&mut self, plugin: &str, hook: &str, effect: &str) {
        self.plugins
            .push((plugin.to_owned(), hook.to_owned(), effect.to_owned()));
    }
    fn count_limited(&mut self, limit: &str, kind: &str) {
        self.limited.push((limit.to_owned(), kind.to_owned()));
    }
    fn observe_limit_service(&mut self, ms: u64, outcome: &str) {
        self.limit_service.push((ms, outcome.to_owned()));
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
    config(json!({"session": {"keys": [key_b64()], "idle_seconds": 600}, "relay": "relay-cluster"}))
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
    post_on(&Table::default(), config, path, extra, body)
}

/// Like [`post`], on the Envoy whose shared data is `table`.
fn post_on(
    table: &Table,
    config: &Rc<Config>,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> (Exchange, Step, Recorder) {
    let mut host = Recorder::on(table);
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
            "unknown version on a GET",
            vec![
                (":method", "GET"),
                ("accept", "text/event-stream"),
                ("mcp-protocol-version", "2099-01-01"),
            ],
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

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{},"roots":{"listChanged":true}},"clientInfo":{"name":"t","version":"1"}}}"#;

fn keys() -> SessionKeys {
    SessionKeys::from_base64(&[key_b64()]).unwrap()
}

/// `initialize` on the Envoy whose shared data is `table`: the session token.
fn initialize(table: &Table) -> String {
    let (_, step, _) = post_on(table, &with_sessions(), "/servers/s1/mcp", &[], INIT);
    let Step::Reply(r) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(r.status, 200);
    header(r, "mcp-session-id").unwrap().to_owned()
}

fn call_header<'a>(c: &'a Call, name: &str) -> Option<&'a str> {
    c.headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// Answers every call the exchange makes until it decides: `initialize` with the session
/// id `sids` gives the call's cluster (`None`: stateless; absent: HTTP 500), the rest 200.
fn drive(
    x: &mut Exchange,
    host: &mut Recorder,
    first: Step,
    sids: &[(&str, Option<&str>)],
) -> (Step, Vec<Call>) {
    let mut queue = std::collections::VecDeque::new();
    let mut made = Vec::new();
    let mut last = first;
    loop {
        match last {
            Step::Call(calls) => queue.extend(calls),
            Step::Wait => {}
            done => {
                assert!(queue.is_empty(), "decided with calls in flight");
                return (done, made);
            }
        }
        let call = queue.pop_front().expect("waiting without calls in flight");
        let body: Value = call
            .body
            .as_ref()
            .map_or(Value::Null, |b| serde_json::from_slice(b).unwrap());
        let answer = if body["method"] == "initialize" {
            match sids.iter().find(|(c, _)| *c == call.cluster) {
                Some((_, sid)) => CallAnswer {
                    status: Some(200),
                    session_id: sid.map(str::to_owned),
                    body: None,
                },
                None => CallAnswer {
                    status: Some(500),
                    session_id: None,
                    body: None,
                },
            }
        } else {
            CallAnswer {
                status: Some(200),
                session_id: None,
                body: None,
            }
        };
        last = x.on_call_answer(call.tag, answer, host);
        made.push(call);
    }
}

/// A POST in session `token` on `table`'s Envoy, driven to its decision.
fn in_session(
    table: &Table,
    token: &str,
    body: &str,
    sids: &[(&str, Option<&str>)],
) -> (Step, Vec<Call>, Recorder) {
    let (mut x, step, mut host) = post_on(
        table,
        &with_sessions(),
        "/servers/s1/mcp",
        &[("mcp-session-id", token)],
        body,
    );
    let (step, calls) = drive(&mut x, &mut host, step, sids);
    (step, calls, host)
}

fn record(table: &Table, token: &str) -> Option<crate::session::table::Record> {
    let claims = keys().open(token, "s1", NOW).unwrap();
    let t = table.borrow();
    Slot::parse(t.get(&slot_key(&claims.id)).map(|(v, _)| v.as_slice()))
        .get(&claims.id)
        .cloned()
}

#[test]
fn initialize_issues_a_sealed_token_and_opens_nothing_yet() {
    let table = Table::default();
    let token = initialize(&table);
    assert!(token.starts_with("mcpgw2."), "{token}");
    let claims = keys().open(&token, "s1", NOW).unwrap();
    assert_eq!(claims.protocol_version, "2025-06-18");
    assert_eq!(
        (claims.issued_at, claims.expires_at),
        (NOW, NOW + crate::snapshot::DEFAULT_SESSION_TTL_SECONDS)
    );
    assert_eq!(
        claims.capabilities.as_ref().map(|c| c.get()),
        Some(r#"{"sampling":{},"roots":{"listChanged":true}}"#),
        "the client's capabilities, byte for byte"
    );
    assert_eq!(
        claims.client_info.as_ref().map(|c| c.get()),
        Some(r#"{"name":"t","version":"1"}"#)
    );
    assert!(
        table.borrow().is_empty(),
        "no upstream session is opened at initialize"
    );
    assert_ne!(
        initialize(&table),
        token,
        "every session its own id and nonce"
    );
}

#[test]
fn a_call_opens_its_upstreams_session_once_with_the_clients_declarations() {
    let table = Table::default();
    let token = initialize(&table);
    let (step, calls, _) = in_session(&table, &token, &call(2, "a__t0"), &[("ca", Some("sid-a"))]);
    assert_eq!(calls.len(), 2, "initialize, then notifications/initialized");
    let init: Value = serde_json::from_slice(calls[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(init["method"], "initialize");
    assert_eq!(init["params"]["protocolVersion"], "2025-06-18");
    assert_eq!(
        init["params"]["capabilities"],
        json!({"sampling": {}, "roots": {"listChanged": true}})
    );
    assert_eq!(
        init["params"]["clientInfo"],
        json!({"name": "t", "version": "1"})
    );
    assert_eq!(calls[0].cluster, "ca");
    assert_eq!(call_header(&calls[1], "mcp-session-id"), Some("sid-a"));
    let f = forward_of(step);
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        Some(Some("sid-a"))
    );
    assert_eq!(set(&f, Header::Route), Some(Some("ca")));
    let body: Value = serde_json::from_slice(f.body.as_ref().unwrap()).unwrap();
    assert_eq!(body["params"]["name"], "t0");

    // The next call finds it in the table: no calls.
    let (step, calls, _) = in_session(&table, &token, &call(3, "a__t0"), &[]);
    assert!(calls.is_empty());
    assert_eq!(
        set(&forward_of(step), Header::Named("mcp-session-id")),
        Some(Some("sid-a"))
    );
    // Another Envoy has its own table: it opens its own upstream session.
    let other = Table::default();
    let (step, calls, _) = in_session(&other, &token, &call(4, "a__t0"), &[("ca", Some("sid-a2"))]);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        set(&forward_of(step), Header::Named("mcp-session-id")),
        Some(Some("sid-a2"))
    );

    // A stateless upstream is initialized once too; its calls carry no session, and the
    // client's token header never reaches it.
    let (step, calls, _) = in_session(&table, &token, &call(5, "b__same"), &[("cb", None)]);
    assert_eq!(calls.len(), 1, "no notification without a session");
    assert_eq!(
        set(&forward_of(step), Header::Named("mcp-session-id")),
        Some(None)
    );
    let (step, calls, _) = in_session(&table, &token, &call(6, "b__same"), &[]);
    assert!(calls.is_empty());
    assert_eq!(
        set(&forward_of(step), Header::Named("mcp-session-id")),
        Some(None)
    );
    let r = record(&table, &token).unwrap();
    assert_eq!(r.upstreams["a"].session_id.as_deref(), Some("sid-a"));
    assert_eq!(r.upstreams["b"].session_id, None);
}

#[test]
fn an_upstream_that_fails_to_open_is_called_without_and_tried_again() {
    let table = Table::default();
    let token = initialize(&table);
    let (step, calls, host) = in_session(&table, &token, &call(2, "a__t0"), &[]);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        set(&forward_of(step), Header::Named("mcp-session-id")),
        Some(None)
    );
    assert_eq!(host.warnings.len(), 1, "{:?}", host.warnings);
    assert!(record(&table, &token).is_none(), "nothing recorded");
    let (_, calls, _) = in_session(&table, &token, &call(3, "a__t0"), &[("ca", Some("sid-a"))]);
    assert_eq!(calls.len(), 2, "tried again");
}

#[test]
fn bad_expired_and_foreign_tokens_get_404_before_anything_is_read() {
    let table = Table::default();
    let token = initialize(&table);
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    let other_key =
        SessionKeys::from_base64(&[base64::engine::general_purpose::STANDARD.encode([8u8; 32])])
            .unwrap();
    let claims = keys().open(&token, "s1", NOW).unwrap();
    let foreign = other_key.seal(&claims, [1; 12]).unwrap();
    let cases: [(&str, String, u64); 5] = [
        ("tampered", tampered, NOW),
        ("sealed with another key", foreign, NOW),
        ("the old format", "mcpgw1.e30.AAAA".into(), NOW),
        ("made up", "uuid".into(), NOW),
        (
            "expired",
            token.clone(),
            NOW + crate::snapshot::DEFAULT_SESSION_TTL_SECONDS,
        ),
    ];
    for (name, bad, now) in cases {
        let mut host = Recorder::on(&table);
        host.now = now;
        let mut x = Exchange::new(with_sessions());
        let step = x.on_request_head(
            &post_head("/servers/s1/mcp", &[("mcp-session-id", &bad)]),
            false,
            &mut host,
        );
        assert_eq!(reply_of(&step).0, 404, "{name}");
        assert_eq!(host.rejected, ["unknown_session"], "{name}");
    }
}

fn get_on(
    table: &Table,
    extra: &[(&str, &str)],
    sids: &[(&str, Option<&str>)],
) -> (Step, Vec<Call>) {
    let mut h = vec![
        (":method", "GET"),
        (":path", "/servers/s1/mcp"),
        ("accept", "text/event-stream"),
    ];
    h.extend(extra);
    let mut host = Recorder::on(table);
    let mut x = Exchange::new(with_sessions());
    let step = x.on_request_head(&serialize(&h), true, &mut host);
    drive(&mut x, &mut host, step, sids)
}

#[test]
fn the_get_stream_opens_what_it_needs_then_goes_to_one_upstream_or_the_relay() {
    let table = Table::default();
    let token = initialize(&table);
    let (step, calls) = get_on(
        &table,
        &[("mcp-session-id", &token)],
        &[("ca", Some("sid-a")), ("cb", None)],
    );
    let inits: Vec<&str> = calls
        .iter()
        .filter(|c| call_header(c, "mcp-session-id").is_none())
        .map(|c| c.cluster.as_str())
        .collect();
    assert_eq!(
        inits,
        ["ca", "cb"],
        "every upstream of the server is opened"
    );
    let f = forward_of(step);
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
    let (again, calls) = get_on(&table, &[("mcp-session-id", &token)], &[]);
    assert!(calls.is_empty(), "all open now");
    assert_eq!(
        set(&forward_of(again), Header::Named("mcp-session-id")),
        Some(Some("sid-a"))
    );

    let two = Table::default();
    let token2 = initialize(&two);
    let (step, _) = get_on(
        &two,
        &[("mcp-session-id", &token2)],
        &[("ca", Some("sid-a")), ("cb", Some("sid-b"))],
    );
    let f = forward_of(step);
    assert_eq!(
        set(&f, Header::Named(edge::RELAY_UPSTREAMS_HEADER)),
        Some(Some("a,b"))
    );
    assert_eq!(set(&f, Header::Route), Some(Some("relay-cluster")));
    let (step, _) = get_on(
        &two,
        &[("mcp-session-id", &token2), (edge::UPSTREAM_HEADER, "b")],
        &[],
    );
    assert_eq!(
        set(&forward_of(step), Header::Named("mcp-session-id")),
        Some(Some("sid-b"))
    );
    let (step, _) = get_on(
        &two,
        &[("mcp-session-id", &token2), (edge::UPSTREAM_HEADER, "z")],
        &[],
    );
    assert_eq!(reply_of(&step).0, 404);

    let none = Table::default();
    let token3 = initialize(&none);
    let (step, _) = get_on(
        &none,
        &[("mcp-session-id", &token3)],
        &[("ca", None), ("cb", None)],
    );
    let Step::Reply(r) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(
        (r.status, header(r, "allow")),
        (405, Some("POST")),
        "nothing to stream"
    );
    assert_eq!(reply_of(&get_on(&none, &[], &[]).0).0, 405, "no session");
}

#[test]
fn a_picked_stream_opens_only_the_picked_upstream() {
    let table = Table::default();
    let token = initialize(&table);
    // The relay's listen over a 2025-era upstream: a fresh session, one upstream picked.
    let (step, calls) = get_on(
        &table,
        &[("mcp-session-id", &token), (edge::UPSTREAM_HEADER, "b")],
        &[("ca", Some("sid-a")), ("cb", Some("sid-b"))],
    );
    let inits: Vec<&str> = calls
        .iter()
        .filter(|c| call_header(c, "mcp-session-id").is_none())
        .map(|c| c.cluster.as_str())
        .collect();
    assert_eq!(inits, ["cb"], "only the picked upstream is opened");
    let f = forward_of(step);
    assert_eq!(set(&f, Header::Route), Some(Some("cb")));
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        Some(Some("sid-b"))
    );
    // Opened now: the same pick opens nothing more; a pick that is no upstream is 404.
    let (again, calls) = get_on(
        &table,
        &[("mcp-session-id", &token), (edge::UPSTREAM_HEADER, "b")],
        &[],
    );
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(set(&forward_of(again), Header::Route), Some(Some("cb")));
    let (step, calls) = get_on(
        &table,
        &[("mcp-session-id", &token), (edge::UPSTREAM_HEADER, "z")],
        &[],
    );
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(reply_of(&step).0, 404);
    // A picked upstream without a session (stateless) has no stream: 404 as before.
    let other = Table::default();
    let token = initialize(&other);
    let (step, _) = get_on(
        &other,
        &[("mcp-session-id", &token), (edge::UPSTREAM_HEADER, "a")],
        &[("ca", None)],
    );
    assert_eq!(reply_of(&step).0, 404);
}

#[test]
fn delete_ends_the_session_and_every_upstream_session_it_opened() {
    let table = Table::default();
    let token = initialize(&table);
    in_session(&table, &token, &call(2, "a__t0"), &[("ca", Some("sid-a"))]);
    in_session(&table, &token, &call(3, "b__same"), &[("cb", None)]);
    let mut host = Recorder::on(&table);
    let mut x = Exchange::new(with_sessions());
    let head = serialize(&[
        (":method", "DELETE"),
        (":path", "/servers/s1/mcp"),
        ("mcp-session-id", &token),
    ]);
    let step = x.on_request_head(&head, true, &mut host);
    let (step, calls) = drive(&mut x, &mut host, step, &[]);
    assert_eq!(reply_of(&step), (200, Value::Null));
    assert_eq!(
        calls.len(),
        1,
        "only the stateful upstream has a session to end"
    );
    assert_eq!(call_header(&calls[0], ":method"), Some("DELETE"));
    assert_eq!(call_header(&calls[0], "mcp-session-id"), Some("sid-a"));
    assert!(record(&table, &token).unwrap().ended);
    // The token is refused from now on, on this Envoy, before the body is read.
    let mut host = Recorder::on(&table);
    let step = Exchange::new(with_sessions()).on_request_head(
        &post_head("/servers/s1/mcp", &[("mcp-session-id", &token)]),
        false,
        &mut host,
    );
    assert_eq!(reply_of(&step).0, 404);
    assert_eq!(host.rejected, ["unknown_session"]);
    // Without a session there is nothing to end.
    let head = serialize(&[(":method", "DELETE"), (":path", "/servers/s1/mcp")]);
    let step =
        Exchange::new(with_sessions()).on_request_head(&head, true, &mut Recorder::on(&table));
    assert_eq!(reply_of(&step).0, 405);
}

#[test]
fn the_sweep_ends_idle_upstream_sessions_and_forgets_expired_sessions() {
    let table = Table::default();
    let token = initialize(&table);
    in_session(&table, &token, &call(2, "a__t0"), &[("ca", Some("sid-a"))]);
    let claims = keys().open(&token, "s1", NOW).unwrap();
    let key = slot_key(&claims.id);
    let value = || table.borrow().get(&key).map(|(v, _)| v.clone());
    let cfg = with_sessions();
    assert_eq!(
        sweep(&cfg, value().as_deref(), NOW + 599, 0),
        sessions::Sweep::default(),
        "not idle yet"
    );
    let s = sweep(&cfg, value().as_deref(), NOW + 600, 41);
    assert_eq!(s.calls.len(), 1);
    assert_eq!(s.calls[0].tag, 42);
    assert_eq!(s.calls[0].cluster, "ca");
    assert_eq!(call_header(&s.calls[0], ":method"), Some("DELETE"));
    assert_eq!(call_header(&s.calls[0], "mcp-session-id"), Some("sid-a"));
    assert!(!s.empty, "the session itself lives on");
    let after = Slot::parse(s.value.as_deref());
    assert!(after.get(&claims.id).unwrap().upstreams.is_empty());
    let gone = sweep(&cfg, s.value.as_deref(), claims.expires_at, 0);
    assert!(gone.empty && gone.calls.is_empty());
    assert_eq!(
        sweep(&config(json!({})), value().as_deref(), NOW + 600, 0),
        sessions::Sweep::default(),
        "no sessions, no sweep"
    );
}

#[test]
fn a_call_after_a_while_stamps_its_upstream_session_as_used() {
    let table = Table::default();
    let token = initialize(&table);
    in_session(&table, &token, &call(2, "a__t0"), &[("ca", Some("sid-a"))]);
    let (mut x, _, _) = (Exchange::new(with_sessions()), (), ());
    let mut host = Recorder::on(&table);
    host.now = NOW + 120;
    let step = x.on_request_head(
        &post_head("/servers/s1/mcp", &[("mcp-session-id", &token)]),
        false,
        &mut host,
    );
    assert_eq!(step, Step::ReadBody);
    let body = call(3, "a__t0").into_bytes();
    let step = x.on_request_body(
        body.len(),
        true,
        |s, l| body.get(s..s + l).map(<[u8]>::to_vec),
        &mut host,
    );
    assert!(matches!(step, Step::Forward(_)));
    assert_eq!(
        record(&table, &token).unwrap().upstreams["a"].last_used,
        NOW + 120
    );
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

/// A snapshot with a 2026-era upstream `m` beside the 2025-era `a` and `b`, and a tool
/// that mirrors its `region` argument into a header.
fn modern_config(extra: Value) -> Rc<Config> {
    let mut doc = json!({
        "policy": {"list_ttl_ms": 5000, "allowed_origins": ["https://app.example"], "allowed_hosts": ["gw.example:*", "localhost:*"]},
        "upstreams": {
            "a": {"cluster": "ca", "path": "/a/mcp"},
            "m": {"cluster": "cm", "path": "/mcp", "protocol_versions": ["2026-07-28"]}
        },
        "servers": {"s1": {
            "name": "one", "version": "7",
            "allowed_origins": ["https://s1.example"],
            "tools": [
                {"name": "a__t0", "upstream": "a", "upstream_name": "t0", "item": {"name": "a__t0"}},
                {"name": "m__echo", "upstream": "m", "upstream_name": "echo", "item": {"name": "m__echo"}},
                {"name": "m__deploy", "upstream": "m", "upstream_name": "deploy", "item": {"name": "m__deploy",
                  "inputSchema": {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}}}
            ]
        }}
    });
    if let (Value::Object(d), Value::Object(e)) = (&mut doc, extra) {
        for (k, v) in e {
            d.insert(k, v);
        }
    }
    Rc::new(Config::from_bytes(doc.to_string().as_bytes()).unwrap())
}

const MODERN: &str = "2026-07-28";

/// A 2026-era request body: `method` with `params` and the required envelope.
fn modern_body(id: u32, method: &str, mut params: Value) -> String {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}, "experimental": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "modern", "version": "1"}
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// The headers a 2026-era client sends with `method` (and `name`).
fn modern_headers<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("mcp-protocol-version", MODERN), ("mcp-method", method)];
    if let Some(n) = name {
        h.push(("mcp-name", n));
    }
    h
}

fn modern_call(cfg: &Rc<Config>, extra: &[(&str, &str)], body: &str) -> (Step, Recorder) {
    let (_, step, host) = post(cfg, "/servers/s1/mcp", extra, body);
    (step, host)
}

#[test]
fn a_2026_request_whose_headers_disagree_with_its_body_is_refused() {
    let cfg = modern_config(json!({}));
    let body = modern_body(1, "tools/call", json!({"name": "a__t0", "arguments": {}}));
    let good = modern_headers("tools/call", Some("a__t0"));
    let with = |f: &dyn Fn(&mut Vec<(&str, &str)>)| {
        let mut h = good.clone();
        f(&mut h);
        h
    };
    let cases: Vec<(&str, Vec<(&str, &str)>, &str, u16, i64)> = vec![
        (
            "no version header",
            with(&|h| h.retain(|(n, _)| *n != "mcp-protocol-version")),
            &body,
            400,
            -32020,
        ),
        (
            "version differs",
            with(&|h| h[0] = ("mcp-protocol-version", "2099-01-01")),
            &body,
            400,
            -32020,
        ),
        (
            "no Mcp-Method",
            with(&|h| h.retain(|(n, _)| *n != "mcp-method")),
            &body,
            400,
            -32020,
        ),
        (
            "Mcp-Method differs",
            with(&|h| h[1] = ("mcp-method", "TOOLS/CALL")),
            &body,
            400,
            -32020,
        ),
        (
            "no Mcp-Name",
            with(&|h| h.retain(|(n, _)| *n != "mcp-name")),
            &body,
            400,
            -32020,
        ),
        (
            "Mcp-Name differs",
            with(&|h| h[2] = ("mcp-name", "m__echo")),
            &body,
            400,
            -32020,
        ),
        (
            "Mcp-Name twice",
            with(&|h| h.push(("mcp-name", "a__t0"))),
            &body,
            400,
            -32020,
        ),
        (
            "version twice",
            with(&|h| h.push(("mcp-protocol-version", MODERN))),
            &body,
            400,
            -32020,
        ),
    ];
    for (name, headers, body, status, code) in cases {
        let (step, host) = modern_call(&cfg, &headers, body);
        let (got, reply) = reply_of(&step);
        assert_eq!(
            (got, reply["error"]["code"].as_i64()),
            (status, Some(code)),
            "{name}: {reply}"
        );
        assert_eq!(host.rejected, ["header_mismatch"], "{name}");
        assert_eq!(reply["id"], 1, "{name}");
    }
    // An encoded Mcp-Name that decodes to the body's name is the same name.
    let encoded = mirror::encode("a__t0 ");
    let body = modern_body(2, "tools/call", json!({"name": "a__t0 ", "arguments": {}}));
    let (step, _) = modern_call(&cfg, &modern_headers("tools/call", Some(&encoded)), &body);
    assert_eq!(
        reply_of(&step).1["error"]["code"],
        -32602,
        "passes the headers, then the catalog says unknown"
    );
}

#[test]
fn the_2026_envelope_and_version_are_checked_in_the_sdks_order() {
    let cfg = modern_config(json!({}));
    let bare = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}}).to_string();
    let (step, host) = modern_call(&cfg, &modern_headers("tools/list", None), &bare);
    let (status, reply) = reply_of(&step);
    assert_eq!(
        (status, reply["error"]["code"].as_i64()),
        (400, Some(-32602))
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("clientCapabilities"),
        "{reply}"
    );
    assert_eq!(host.rejected, ["missing_envelope"]);

    let future = modern_body(4, "tools/list", json!({})).replace(MODERN, "2099-01-01");
    let (step, host) = modern_call(
        &cfg,
        &[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/list"),
        ],
        &future,
    );
    let (status, reply) = reply_of(&step);
    assert_eq!(
        (status, reply["error"]["code"].as_i64()),
        (400, Some(-32022))
    );
    assert_eq!(reply["error"]["data"]["requested"], "2099-01-01");
    assert_eq!(reply["error"]["data"]["supported"][0], MODERN);
    assert_eq!(host.rejected, ["unsupported_protocol_version"]);
    // Header and body disagree: the mismatch comes first.
    let (step, _) = modern_call(
        &cfg,
        &[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/list"),
        ],
        &modern_body(5, "tools/list", json!({})),
    );
    assert_eq!(reply_of(&step).1["error"]["code"], -32020);
    // A 2025-era body under an unknown version stays the 2025 answer (400, -32600).
    let (_, step, _) = post(
        &cfg,
        "/mcp",
        &[("mcp-protocol-version", "1999-01-01")],
        r#"{"jsonrpc":"2.0","id":6,"method":"ping"}"#,
    );
    let (status, reply) = reply_of(&step);
    assert_eq!(
        (status, reply["error"]["code"].as_i64(), reply["id"].clone()),
        (400, Some(-32600), Value::Null)
    );
    // Not one message.
    let batch = format!("[{}]", modern_body(7, "tools/list", json!({})));
    let (step, _) = modern_call(&cfg, &modern_headers("tools/list", None), &batch);
    assert_eq!(
        reply_of(&step),
        (
            400,
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "a 2026-07-28 request body must be a single JSON-RPC request or notification object"}})
        )
    );
}

#[test]
fn a_virtual_server_answers_2026_clients_from_its_catalog() {
    let cfg = modern_config(json!({}));
    let (step, _) = modern_call(
        &cfg,
        &modern_headers("server/discover", None),
        &modern_body(1, "server/discover", json!({})),
    );
    let (status, r) = reply_of(&step);
    assert_eq!(status, 200, "{r}");
    let result = &r["result"];
    assert_eq!(result["supportedVersions"], json!(["2026-07-28"]), "{r}");
    assert!(result["capabilities"]["tools"].is_object());
    assert_eq!(
        (
            result["resultType"].as_str(),
            result["ttlMs"].as_u64(),
            result["cacheScope"].as_str()
        ),
        (Some("complete"), Some(5000), Some("public"))
    );
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"],
        json!({"name": "one", "version": "7"})
    );
    assert!(
        result.get("serverInfo").is_none(),
        "the identity lives in _meta in this era"
    );

    let (step, _) = modern_call(
        &cfg,
        &modern_headers("tools/list", None),
        &modern_body(2, "tools/list", json!({})),
    );
    let result = reply_of(&step).1["result"].clone();
    assert_eq!(result["tools"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        (
            result["resultType"].as_str(),
            result["ttlMs"].as_u64(),
            result["cacheScope"].as_str()
        ),
        (Some("complete"), Some(5000), Some("public"))
    );
    // A 2025 client's list has none of that.
    let (_, step, _) = post(
        &cfg,
        "/servers/s1/mcp",
        &[],
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
    );
    assert!(reply_of(&step).1["result"].get("resultType").is_none());

    for gone in [
        "ping",
        "initialize",
        "logging/setLevel",
        "resources/subscribe",
    ] {
        let (step, host) = modern_call(
            &cfg,
            &modern_headers(gone, None),
            &modern_body(4, gone, json!({"uri": "x", "level": "info"})),
        );
        let (status, r) = reply_of(&step);
        assert_eq!(
            (status, r["error"]["code"].as_i64()),
            (404, Some(-32601)),
            "{gone}: {r}"
        );
        assert_eq!(host.rejected, ["method_not_found"], "{gone}");
    }
    // Notifications are accepted; session ids are not this era's (a junk one is ignored).
    let note =
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
            .to_string();
    let (step, _) = modern_call(&cfg, &[("mcp-protocol-version", MODERN)], &note);
    assert_eq!(reply_of(&step), (202, Value::Null));
    let mut h = modern_headers("tools/list", None);
    h.push(("mcp-session-id", "not-a-token"));
    let (step, _) = modern_call(&cfg, &h, &modern_body(5, "tools/list", json!({})));
    assert_eq!(reply_of(&step).0, 200);
    // GET and DELETE are not this era's.
    for method in ["GET", "DELETE"] {
        let head = serialize(&[
            (":method", method),
            (":path", "/servers/s1/mcp"),
            ("accept", "text/event-stream"),
            ("mcp-protocol-version", MODERN),
        ]);
        let step =
            Exchange::new(Rc::clone(&cfg)).on_request_head(&head, true, &mut Recorder::default());
        let Step::Reply(r) = &step else {
            panic!("{step:?}")
        };
        assert_eq!(
            (r.status, header(r, "allow")),
            (405, Some("POST")),
            "{method}"
        );
    }
}

#[test]
fn mirrored_tool_parameters_must_match_the_arguments() {
    let cfg = modern_config(json!({}));
    let body = modern_body(
        1,
        "tools/call",
        json!({"name": "m__deploy", "arguments": {"region": "eu-west-1"}}),
    );
    let mut h = modern_headers("tools/call", Some("m__deploy"));
    let (step, _) = modern_call(&cfg, &h, &body);
    assert_eq!(
        reply_of(&step).1["error"]["code"],
        -32020,
        "missing Mcp-Param-Region"
    );
    h.push(("mcp-param-region", "us-east-1"));
    let (step, _) = modern_call(&cfg, &h, &body);
    assert_eq!(
        reply_of(&step).1["error"]["code"],
        -32020,
        "a different region"
    );
    h.pop();
    h.push(("Mcp-Param-Region", "eu-west-1"));
    h.push(("mcp-param-unknown", "kept"));
    let (step, _) = modern_call(&cfg, &h, &body);
    let f = forward_of(step);
    assert_eq!(
        set(&f, Header::Named("mcp-name")),
        Some(Some("deploy")),
        "renamed, and the header with it"
    );
    assert_eq!(set(&f, Header::Route), Some(Some("cm")));
}

#[test]
fn calls_cross_the_eras_in_both_directions() {
    let table = Table::default();
    let cfg = modern_config(json!({"session": {"keys": [key_b64()]}}));
    // 2026 client → 2026 upstream: stateless, no upstream initialize.
    let (_, step, _) = post_on(
        &table,
        &cfg,
        "/servers/s1/mcp",
        &modern_headers("tools/call", Some("m__echo")),
        &modern_body(1, "tools/call", json!({"name": "m__echo", "arguments": {}})),
    );
    let f = forward_of(step);
    assert_eq!(set(&f, Header::Named("mcp-name")), Some(Some("echo")));
    assert_eq!(set(&f, Header::Named("mcp-session-id")), None);

    // 2026 client → 2025 upstream: a session the gateway keeps for such clients, opened
    // with what can be bridged (not sampling), under the 2025 version.
    let body = modern_body(2, "tools/call", json!({"name": "a__t0", "arguments": {}}));
    let (mut x, step, mut host) = post_on(
        &table,
        &cfg,
        "/servers/s1/mcp",
        &modern_headers("tools/call", Some("a__t0")),
        &body,
    );
    let (step, calls) = drive(&mut x, &mut host, step, &[("ca", Some("sid-bridge"))]);
    let init: Value = serde_json::from_slice(calls[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(init["params"]["protocolVersion"], "2025-11-25");
    assert_eq!(
        init["params"]["capabilities"],
        json!({"experimental": {}}),
        "sampling cannot be bridged"
    );
    assert_eq!(init["params"]["clientInfo"]["name"], "modern");
    let f = forward_of(step);
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        Some(Some("sid-bridge"))
    );
    assert_eq!(
        set(&f, Header::Named("mcp-protocol-version")),
        Some(Some("2025-11-25"))
    );
    // Another 2026 client declaring the same reuses that upstream session.
    let (_, step, _) = post_on(
        &table,
        &cfg,
        "/servers/s1/mcp",
        &modern_headers("tools/call", Some("a__t0")),
        &body,
    );
    assert_eq!(
        set(&forward_of(step), Header::Named("mcp-session-id")),
        Some(Some("sid-bridge"))
    );

    // 2025 client (in a session) → 2026 upstream: the envelope goes into the body, the
    // mirrored headers onto the request, and nothing is initialized upstream.
    let token = {
        let (_, step, _) = post_on(&table, &cfg, "/servers/s1/mcp", &[], INIT);
        let Step::Reply(r) = &step else { panic!() };
        header(r, "mcp-session-id").unwrap().to_owned()
    };
    let legacy = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "m__echo", "arguments": {"x": 1}}}).to_string();
    let (mut x, step, mut host) = post_on(
        &table,
        &cfg,
        "/servers/s1/mcp",
        &[("mcp-session-id", &token)],
        &legacy,
    );
    let (step, calls) = drive(&mut x, &mut host, step, &[]);
    assert!(calls.is_empty(), "no initialize for a stateless upstream");
    let f = forward_of(step);
    let sent: Value = serde_json::from_slice(f.body.as_ref().unwrap()).unwrap();
    assert_eq!(sent["params"]["name"], "echo");
    assert_eq!(sent["params"]["arguments"], json!({"x": 1}));
    let meta = &sent["params"]["_meta"];
    assert_eq!(meta["io.modelcontextprotocol/protocolVersion"], MODERN);
    assert_eq!(
        meta["io.modelcontextprotocol/clientCapabilities"],
        json!({}),
        "sampling and roots stay behind"
    );
    assert_eq!(meta["io.modelcontextprotocol/clientInfo"]["name"], "t");
    for (name, want) in [
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ] {
        assert_eq!(set(&f, Header::Named(name)), Some(Some(want)), "{name}");
    }
    assert_eq!(
        set(&f, Header::Named("mcp-session-id")),
        Some(None),
        "the token stays here"
    );
}

#[test]
fn browsers_from_other_sites_and_rebound_hosts_are_refused() {
    let cfg = modern_config(json!({}));
    let cases: [(&str, Vec<(&str, &str)>, Option<u16>); 7] = [
        ("no Origin: not a browser", vec![], None),
        (
            "listed for every endpoint",
            vec![("origin", "https://app.example")],
            None,
        ),
        (
            "listed for this server",
            vec![("origin", "https://s1.example")],
            None,
        ),
        (
            "foreign",
            vec![("origin", "https://evil.example")],
            Some(403),
        ),
        ("null", vec![("origin", "null")], Some(403)),
        (
            "rebound host",
            vec![(":authority", "evil.example:8080")],
            Some(421),
        ),
        ("allowed host", vec![(":authority", "gw.example:443")], None),
    ];
    for (name, extra, status) in cases {
        let mut host = Recorder::default();
        let mut x = Exchange::new(Rc::clone(&cfg));
        let step = x.on_request_head(&post_head("/servers/s1/mcp", &extra), false, &mut host);
        match status {
            None => assert_eq!(step, Step::ReadBody, "{name}"),
            Some(s) => {
                let (got, r) = reply_of(&step);
                assert_eq!(got, s, "{name}");
                assert_eq!(r["error"]["code"], -32600, "{name}");
            }
        }
    }
    // The server's own list applies to its own endpoint only.
    let mut x = Exchange::new(Rc::clone(&cfg));
    let step = x.on_request_head(
        &post_head("/mcp", &[("origin", "https://s1.example")]),
        false,
        &mut Recorder::default(),
    );
    assert_eq!(reply_of(&step).0, 403);
}

#[test]
fn two_requests_opening_one_upstream_at_once_end_up_in_one_session() {
    let table = Table::default();
    let token = initialize(&table);
    // Both find no upstream session and open one each, interleaved.
    let (mut first, step1, mut host1) = post_on(
        &table,
        &with_sessions(),
        "/servers/s1/mcp",
        &[("mcp-session-id", &token)],
        &call(2, "a__t0"),
    );
    let (mut second, step2, mut host2) = post_on(
        &table,
        &with_sessions(),
        "/servers/s1/mcp",
        &[("mcp-session-id", &token)],
        &call(3, "a__t0"),
    );
    let (step1, _) = drive(&mut first, &mut host1, step1, &[("ca", Some("sid-first"))]);
    assert_eq!(
        set(&forward_of(step1), Header::Named("mcp-session-id")),
        Some(Some("sid-first"))
    );
    let (step2, calls) = drive(
        &mut second,
        &mut host2,
        step2,
        &[("ca", Some("sid-second"))],
    );
    let deleted: Vec<_> = calls
        .iter()
        .filter(|c| call_header(c, ":method") == Some("DELETE"))
        .map(|c| call_header(c, "mcp-session-id"))
        .collect();
    assert_eq!(
        deleted,
        [Some("sid-second")],
        "the loser's own session is ended"
    );
    assert_eq!(
        set(&forward_of(step2), Header::Named("mcp-session-id")),
        Some(Some("sid-first")),
        "and the call joins the stored one"
    );
}

#[test]
fn a_log_level_set_before_an_upstream_opens_reaches_it_when_it_does() {
    let table = Table::default();
    let token = initialize(&table);
    let set_level =
        r#"{"jsonrpc":"2.0","id":5,"method":"logging/setLevel","params":{"level":"warning"}}"#;
    let (step, calls, _) = in_session(&table, &token, set_level, &[]);
    assert!(calls.is_empty(), "no upstream session open yet");
    assert_eq!(
        reply_of(&step),
        (200, json!({"jsonrpc": "2.0", "id": 5, "result": {}}))
    );
    assert_eq!(
        record(&table, &token).unwrap().log_level.as_deref(),
        Some("warning")
    );
    let (_, calls, _) = in_session(&table, &token, &call(6, "a__t0"), &[("ca", Some("sid-a"))]);
    let levels: Vec<Value> = calls
        .iter()
        .filter_map(|c| serde_json::from_slice::<Value>(c.body.as_ref()?).ok())
        .filter(|b| b["method"] == "logging/setLevel")
        .collect();
    assert_eq!(levels.len(), 1, "{calls:?}");
    assert_eq!(levels[0]["params"]["level"], "warning");
    // Set again with the session open: it reaches the open upstream session now.
    let (_, calls, _) = in_session(&table, &token, set_level, &[]);
    assert_eq!(calls.len(), 1);
    assert_eq!(call_header(&calls[0], "mcp-session-id"), Some("sid-a"));
}

#[test]
fn a_2026_listen_goes_to_the_relay_a_picked_modern_upstream_or_a_lone_one() {
    let listen = modern_body(
        3,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
    );
    let headers = modern_headers("subscriptions/listen", None);
    let with_pick = |pick: &'static str| {
        let mut h = headers.clone();
        h.push((edge::UPSTREAM_HEADER, pick));
        h
    };

    // With a relay: handed over, naming every upstream and its era.
    let cfg = modern_config(json!({"relay": "relay-cluster"}));
    let (step, _) = modern_call(&cfg, &headers, &listen);
    let f = forward_of(step);
    assert_eq!(set(&f, Header::Route), Some(Some("relay-cluster")));
    assert_eq!(
        set(&f, Header::Named(edge::RELAY_UPSTREAMS_HEADER)),
        Some(Some("a,m"))
    );
    assert_eq!(
        set(&f, Header::Named(edge::RELAY_ERAS_HEADER)),
        Some(Some("legacy,modern"))
    );
    assert_eq!(f.body, None, "the listen goes on as the client sent it");
    let stream = Header::Named(edge::STREAM_HEADER);
    assert_eq!(
        set(&f, stream.clone()),
        Some(Some("listen")),
        "a stream's route limits"
    );

    // The relay's own listen, picked at the 2026-era upstream: straight there.
    let (step, _) = modern_call(&cfg, &with_pick("m"), &listen);
    let f = forward_of(step);
    assert_eq!(set(&f, Header::Route), Some(Some("cm")));
    assert_eq!(set(&f, stream.clone()), Some(Some("listen")));
    assert_eq!(set(&f, Header::Named(":path")), Some(Some("/mcp")));
    assert_eq!(
        set(&f, Header::Named(edge::UPSTREAM_HEADER)),
        Some(None),
        "the pick is not forwarded"
    );
    // A pick that cannot answer a listen: a 2025-era upstream, or none of the server's.
    for pick in ["a", "zz"] {
        let (step, host) = modern_call(&cfg, &with_pick(pick), &listen);
        let (status, body) = reply_of(&step);
        assert_eq!(status, 404, "{pick}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(pick)),
            "{body}"
        );
        assert_eq!(host.rejected, ["unknown_stream"]);
    }

    // Without a relay: a server over one 2026-era upstream is listened to directly …
    let lone = modern_config(json!({"servers": {"s1": {"name": "one", "tools": [
        {"name": "m__echo", "upstream": "m", "upstream_name": "echo", "item": {"name": "m__echo"}}
    ]}}}));
    let (step, _) = modern_call(&lone, &headers, &listen);
    let f = forward_of(step);
    assert_eq!(set(&f, Header::Route), Some(Some("cm")));
    assert_eq!(set(&f, stream), Some(Some("listen")));
    // … and one over several, or a 2025-era one, needs the relay.
    let (step, host) = modern_call(&modern_config(json!({})), &headers, &listen);
    let (status, body) = reply_of(&step);
    assert_eq!(status, 404, "{body}");
    assert_eq!(host.rejected, ["no_relay"]);

    // A listen answers a stream: a client that cannot read one is refused first.
    let mut json_only = headers.clone();
    json_only.push(("accept", "application/json"));
    let mut host = Recorder::on(&Table::default());
    let mut x = Exchange::new(Rc::clone(&cfg));
    let step = x.on_request_head(&post_head("/servers/s1/mcp", &json_only), false, &mut host);
    assert_eq!(reply_of(&step).0, 406);
}

mod external;
mod guard;
mod limits;
