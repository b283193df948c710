//! Tests of the streaming parser; compiled only under `#[cfg(test)]` (the parent declares the module).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::jsonrpc::code;
use crate::mcp;
use proptest::prelude::*;

fn parse_with(opts: Options, body: &[u8]) -> Result<Body, RequestError> {
    let mut p = MessageParser::new(opts);
    p.feed(body)?;
    p.finish()
}

fn parse(body: &str) -> Result<Body, RequestError> {
    parse_with(Options::default(), body.as_bytes())
}

/// Feeds `body` split at every position, and byte by byte; all must agree with one chunk.
fn parse_all_splits(body: &[u8]) -> Result<Body, RequestError> {
    let whole = parse_with(Options::default(), body);
    for at in 0..=body.len() {
        let (a, b) = body.split_at(at);
        let mut p = MessageParser::new(Options::default());
        let r = p.feed(a).and_then(|_| p.feed(b)).and_then(|_| p.finish());
        assert_eq!(
            norm(&r),
            norm(&whole),
            "split at {at} of {}",
            String::from_utf8_lossy(body)
        );
    }
    let mut p = MessageParser::new(Options::default());
    let mut r = Ok(Progress::NeedMore);
    for b in body {
        r = p.feed(std::slice::from_ref(b));
        if r.is_err() {
            break;
        }
    }
    let r = r.and_then(|_| p.finish());
    assert_eq!(norm(&r), norm(&whole), "byte by byte");
    whole
}

/// Syntax errors compare by kind only: the offset differs with chunking only in position
/// reporting of the same byte, which must not differ either, so compare fully.
fn norm(r: &Result<Body, RequestError>) -> String {
    format!("{r:?}")
}

fn single(body: &str) -> Message {
    match parse_all_splits(body.as_bytes()) {
        Ok(Body::Single(m)) => m,
        other => panic!("{body}: expected one message, got {other:?}"),
    }
}

#[test]
fn extracts_the_envelope_of_a_tools_call() {
    let m = single(
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{"name":"not me","x":[1,{"uri":"no"}]},"name":"echo","_meta":{"progressToken":"p-1","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"a=b"}}}"#,
    );
    assert_eq!(m.kind, Kind::Request);
    assert_eq!(
        m.method.as_ref().map(crate::mcp::Method::as_str),
        Some("tools/call")
    );
    assert_eq!(m.id, Some(Id::Num("7".into())));
    assert_eq!(m.name.as_deref(), Some("echo"));
    assert_eq!(m.uri, None);
    assert_eq!(m.progress_token.as_deref(), Some("\"p-1\""));
    assert_eq!(
        m.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(m.tracestate.as_deref(), Some("a=b"));
}

#[test]
fn decodes_escapes_in_captured_strings_and_keeps_raw_ids() {
    let m = single(
        r#"{"id":"a\"\u00e9\ud83d\ude00","method":"tools\/call","jsonrpc":"2.0","params":{"name":"t\u00e9st\n"}}"#,
    );
    assert_eq!(
        m.method.as_ref().map(crate::mcp::Method::as_str),
        Some("tools/call")
    );
    assert_eq!(m.name.as_deref(), Some("tést\n"));
    assert_eq!(m.id, Some(Id::Str(r#""a\"\u00e9\ud83d\ude00""#.into())));
    let m = single(
        r#" {"jsonrpc":"2.0","id":-1.5e3,"method":"resources/read","params":{"uri":"file:///ü"}} "#,
    );
    assert_eq!(m.id, Some(Id::Num("-1.5e3".into())));
    assert_eq!(m.uri.as_deref(), Some("file:///ü"));
}

#[test]
fn classifies_every_kind() {
    let cases = [
        (
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            Kind::Notification,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, Kind::Request),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#,
            Kind::Request,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, Kind::Result),
        (r#"{"jsonrpc":"2.0","id":1,"result":null}"#, Kind::Result),
        (
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#,
            Kind::Error,
        ),
    ];
    for (body, kind) in cases {
        assert_eq!(single(body).kind, kind, "{body}");
    }
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":"x","error":{"message":"m","code":-32601}}"#).error_code,
        Some(-32601)
    );
}

#[test]
fn batches() {
    let body = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add"}}]"#;
    match parse_all_splits(body.as_bytes()) {
        Ok(Body::Batch(ms)) => {
            let methods: Vec<_> = ms
                .iter()
                .map(|m| {
                    m.method
                        .as_ref()
                        .map(crate::mcp::Method::as_str)
                        .unwrap_or("")
                })
                .collect();
            assert_eq!(
                methods,
                ["tools/list", "notifications/progress", "tools/call"]
            );
            assert_eq!(ms[2].name.as_deref(), Some("add"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn syntax_errors_are_parse_errors() {
    let cases: &[&[u8]] = &[
        b"",
        b"   ",
        b"{",
        b"{\"jsonrpc\":\"2.0\",}",
        b"{\"a\" 1}",
        b"[1,]",
        b"{\"a\":01}",
        b"{\"a\":1.}",
        b"{\"a\":-}",
        b"{\"a\":tru}",
        b"{\"a\":nul",
        b"{\"a\":\"\x01\"}",
        b"{\"a\":\"\\x\"}",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":\"\\udc00\"}",
        b"{\"a\":\"\xff\"}",
        b"{\"a\":\"\xc0\xaf\"}",
        b"{\"a\":\"\xed\xa0\x80\"}",
        b"{} {}",
        b"{}x",
        b"]",
        b"{\"a\":1]",
        b"not json",
    ];
    for body in cases {
        match parse_all_splits(body) {
            Err(e @ RequestError::Parse { .. }) => assert_eq!(e.code(), code::PARSE_ERROR),
            other => panic!(
                "{}: expected a parse error, got {other:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }
}

#[test]
fn deep_nesting_is_refused_without_recursion() {
    let body = "[".repeat(100_000);
    assert!(matches!(
        parse(&body),
        Err(RequestError::Parse {
            reason: "nesting too deep",
            ..
        })
    ));
}

#[test]
fn invalid_requests_name_what_is_wrong() {
    let cases = [
        (r#"42"#, "expected an object or an array", None),
        (r#""x""#, "expected an object or an array", None),
        (r#"[]"#, "empty batch", None),
        (r#"[1]"#, "batch element must be an object", None),
        (r#"{}"#, "missing \"jsonrpc\"", None),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            "must be \"2.0\"",
            Some("1"),
        ),
        (
            r#"{"jsonrpc":2,"id":1,"method":"ping"}"#,
            "\"jsonrpc\" must be a string",
            Some("1"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            "\"method\" must be a string",
            Some("1"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
            "\"id\" must be a string or a number",
            None,
        ),
        (
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            "must not be null",
            Some("null"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1}"#,
            "no method, result or error",
            Some("1"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":1}"#,
            "must not carry result",
            Some("1"),
        ),
        (r#"{"jsonrpc":"2.0","result":1}"#, "needs an id", None),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/list"}"#,
            "duplicate key \"method\"",
            Some("1"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            "duplicate key \"params.name\"",
            Some("1"),
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":3}"#,
            "\"params\" must be",
            Some("1"),
        ),
    ];
    for (body, want, id) in cases {
        match parse_all_splits(body.as_bytes()) {
            Err(RequestError::Invalid { reason, id: got_id }) => {
                assert!(
                    reason.contains(want),
                    "{body}: {reason:?} does not contain {want:?}"
                );
                assert_eq!(got_id.as_ref().map(Id::as_json), id, "{body}");
            }
            other => panic!("{body}: expected invalid request, got {other:?}"),
        }
    }
}

#[test]
fn missing_or_mistyped_targets_are_invalid_params() {
    let cases = [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            "params.name",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
            "params.name",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#,
            "params.name must be a string",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":["x"]}"#,
            "params.name",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":null}}"#,
            "params.uri",
        ),
    ];
    for (body, want) in cases {
        match parse_all_splits(body.as_bytes()) {
            Err(e @ RequestError::InvalidParams { .. }) => {
                assert_eq!(e.code(), code::INVALID_PARAMS);
                assert!(e.to_string().contains(want), "{body}: {e}");
                assert_eq!(e.id(), Some(&Id::Num("1".into())));
            }
            other => panic!("{body}: expected invalid params, got {other:?}"),
        }
    }
}

#[test]
fn duplicate_keys_anywhere_when_asked() {
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1,"b":{"a":2},"a":3}}}"#;
    assert!(parse_with(Options::default(), body).is_ok());
    let opts = Options {
        reject_duplicate_keys: true,
        stop_when_routable: true,
        skim: false,
        settle: false,
        max_batch_messages: 0,
    };
    match parse_with(opts, body) {
        Err(RequestError::Invalid { reason, .. }) => {
            assert!(reason.contains("duplicate key \"a\""), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Same key in sibling objects is fine.
    let ok = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":{"k":1},"b":{"k":2}}}"#;
    assert!(parse_with(opts, ok).is_ok());
}

#[test]
fn duplicate_key_hashes_are_keyed_per_parser() {
    // A client who could compute the hashes could send two distinct keys with one hash
    // (a false "duplicate") or flood one bucket of the set: the hashes must depend on a
    // key the client does not know, so two parsers hash the same body differently.
    let opts = Options {
        reject_duplicate_keys: true,
        ..Options::default()
    };
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1,"b":2}}"#;
    let hashes = || {
        let mut p = MessageParser::new(opts);
        p.feed(body).unwrap();
        let mut h: Vec<u64> = p.keys.iter().copied().collect();
        h.sort_unstable();
        h
    };
    let (one, two) = (hashes(), hashes());
    assert_eq!(one.len(), 6, "every key of every object was hashed");
    assert_ne!(one, two);
}

#[test]
fn stops_once_routable() {
    let args = format!(r#"{{"blob":"{}"}}"#, "z".repeat(10_000));
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{args}}}}}"#
    );
    let opts = Options {
        reject_duplicate_keys: false,
        stop_when_routable: true,
        skim: false,
        settle: false,
        max_batch_messages: 0,
    };
    let mut p = MessageParser::new(opts);
    assert_eq!(p.feed(body.as_bytes()), Ok(Progress::Routable));
    assert!(p.offset() < 80, "stopped at {}", p.offset());
    let m = p.routable().expect("routable");
    assert_eq!(
        (
            m.method.as_ref().map(crate::mcp::Method::as_str),
            m.name.as_deref()
        ),
        (Some("tools/call"), Some("echo"))
    );

    // Chunked: routable arrives mid-way through the second chunk.
    let mut p = MessageParser::new(opts);
    let (a, b) = body.as_bytes().split_at(40);
    assert_eq!(p.feed(a), Ok(Progress::NeedMore));
    assert_eq!(p.feed(b), Ok(Progress::Routable));

    // Needs the id too: an id after the arguments means reading them.
    let late_id = format!(
        r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"name":"echo","arguments":{args}}},"id":2}}"#
    );
    let mut p = MessageParser::new(opts);
    assert_eq!(p.feed(late_id.as_bytes()), Ok(Progress::Routable));
    assert_eq!(p.offset() as usize, late_id.len() - 1);

    // Batches and duplicate-key checking read everything.
    let batch = format!("[{body}]");
    assert_eq!(
        MessageParser::new(opts).feed(batch.as_bytes()),
        Ok(Progress::Complete)
    );
    let strict = Options {
        reject_duplicate_keys: true,
        stop_when_routable: true,
        skim: false,
        settle: false,
        max_batch_messages: 0,
    };
    assert_eq!(
        MessageParser::new(strict).feed(body.as_bytes()),
        Ok(Progress::Complete)
    );
}

#[test]
fn overlong_captures_are_refused() {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{}"}}}}"#,
        "n".repeat(MAX_CAPTURE + 1)
    );
    match parse(&body) {
        Err(RequestError::Invalid { reason, .. }) => {
            assert!(reason.contains("params.name is longer"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_are_sticky() {
    let mut p = MessageParser::new(Options::default());
    assert!(p.feed(b"{x").is_err());
    assert!(p.feed(b"}").is_err());
    assert!(p.finish().is_err());
}

const SKIM: Options = Options {
    reject_duplicate_keys: false,
    stop_when_routable: false,
    skim: true,
    settle: false,
    max_batch_messages: 0,
};

/// Parses `body` in two chunks split at `cut`.
fn parse_split(opts: Options, body: &[u8], cut: usize) -> Result<Body, RequestError> {
    let (a, b) = body.split_at(cut.min(body.len()));
    let mut p = MessageParser::new(opts);
    p.feed(a)?;
    p.feed(b)?;
    p.finish()
}

#[test]
fn skimming_reads_responses_as_a_full_parse_does() {
    for body in [
        &br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"a } ] \" [ {"}],"isError":false}}"#[..],
        br#"{"jsonrpc":"2.0","result":[1,[2,[3]],{"a":{}}],"id":"x"}"#,
        br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"bad","data":{"why":["\\",{"}":"]"}]}}}"#,
        br#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"error":{"code":1,"message":"m"}}]"#,
        br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}"#,
        br#"{"jsonrpc":"2.0","id":1,"result":"plain string"}"#,
    ] {
        let full = parse_with(Options::default(), body);
        for cut in 0..=body.len() {
            assert_eq!(
                parse_split(SKIM, body, cut),
                full,
                "cut at {cut}: {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

#[test]
fn skimming_still_finds_the_end_and_what_follows() {
    // An unterminated result is still an incomplete body.
    let cut = br#"{"jsonrpc":"2.0","id":1,"result":{"a":[1,2"#;
    let mut p = MessageParser::new(SKIM);
    assert_eq!(p.feed(cut), Ok(Progress::NeedMore));
    assert!(p.finish().is_err());
    // Trailing garbage after the message is still a syntax error.
    assert!(matches!(
        parse_with(SKIM, br#"{"jsonrpc":"2.0","id":1,"result":{}} x"#),
        Err(RequestError::Parse { .. })
    ));
    // What is skimmed is not validated: that is the trade.
    assert!(parse_with(SKIM, br#"{"jsonrpc":"2.0","id":1,"result":{"a":tru}}"#).is_ok());
    assert!(
        parse_with(
            Options::default(),
            br#"{"jsonrpc":"2.0","id":1,"result":{"a":tru}}"#
        )
        .is_err()
    );
    // The envelope around a skimmed value is: a result and an error in one message.
    assert!(
        parse_with(
            SKIM,
            br#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}"#
        )
        .is_err()
    );
}

const SETTLE: Options = Options {
    reject_duplicate_keys: false,
    stop_when_routable: false,
    skim: true,
    settle: true,
    max_batch_messages: 0,
};

#[test]
fn a_single_response_settles_at_its_result_or_error() {
    let page = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{}]}}}}"#,
        vec![r#"{"name":"t"}"#; 500].join(",")
    );
    let mut p = MessageParser::new(SETTLE);
    assert_eq!(p.feed(page.as_bytes()), Ok(Progress::Settled(Kind::Result)));
    // It stopped at the result's first byte, not at the end of the page.
    assert!(p.offset() < 40, "read {} bytes", p.offset());
    // Feeding more changes nothing.
    assert_eq!(p.feed(b"anything"), Ok(Progress::Settled(Kind::Result)));

    let error =
        br#"{"id":"a","jsonrpc":"2.0","error":{"code":-32601,"message":"no","data":[1,2,3]}}"#;
    assert_eq!(
        MessageParser::new(SETTLE).feed(error),
        Ok(Progress::Settled(Kind::Error))
    );
    let scalar = br#"{"jsonrpc":"2.0","id":1,"result":42}"#;
    assert_eq!(
        MessageParser::new(SETTLE).feed(scalar),
        Ok(Progress::Settled(Kind::Result))
    );
    // The key may arrive in a later chunk.
    let mut p = MessageParser::new(SETTLE);
    assert_eq!(
        p.feed(br#"{"jsonrpc":"2.0","id":1,"res"#),
        Ok(Progress::NeedMore)
    );
    assert_eq!(
        p.feed(br#"ult":{"a":1}}"#),
        Ok(Progress::Settled(Kind::Result))
    );
}

#[test]
fn batches_and_messages_without_a_result_do_not_settle() {
    let batch = br#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"error":{"code":1,"message":"m"}}]"#;
    let mut p = MessageParser::new(SETTLE);
    assert_eq!(p.feed(batch), Ok(Progress::Complete));
    assert_eq!(p.finish().map(|b| b.messages().len()), Ok(2));
    let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":2}}"#;
    let mut p = MessageParser::new(SETTLE);
    assert_eq!(p.feed(note), Ok(Progress::Complete));
    assert!(p.finish().is_ok());
    // Without the option, a response is read to its end.
    let mut p = MessageParser::new(SKIM);
    assert_eq!(
        p.feed(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
        Ok(Progress::Complete)
    );
}

// --- properties -------------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "name",
            "uri",
            "method",
            "_meta",
            "tools/call",
            "\u{1F600}\"\\"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        let key = prop_oneof![
            "[a-z_]{0,6}".prop_map(String::from),
            prop::sample::select(vec![
                "jsonrpc",
                "id",
                "method",
                "params",
                "name",
                "uri",
                "_meta",
                "result",
                "error",
                "code",
                "progressToken"
            ])
            .prop_map(String::from),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_request() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::select(mcp::METHODS.iter().map(|m| m.name).collect::<Vec<_>>()),
        prop_oneof![
            any::<i32>().prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::from)
        ],
        "\\PC{1,10}",
        arb_json(),
    )
        .prop_map(|(method, id, name, args)| {
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method,
                "params": {"arguments": args, "name": name, "uri": name}})
        })
}

/// serde_json's syntax verdict, or `None` where it cannot judge: it stops at numbers
/// beyond f64 (`1e309`), which JSON's grammar allows and which we pass on untouched, so
/// the rest of such input is never examined by it.
fn serde_accepts(bytes: &[u8]) -> Option<bool> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(_) => Some(true),
        Err(e) if e.to_string().contains("number out of range") => None,
        Err(_) => Some(false),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any JSON document serde_json writes, we read without a syntax error, in any chunking.
    #[test]
    fn reads_what_serde_writes(v in arb_json(), pretty in any::<bool>(), cut in 0usize..4096) {
        let bytes = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
        let cut = cut.min(bytes.len());
        let mut p = MessageParser::new(Options::default());
        let r = p.feed(&bytes[..cut]).and_then(|_| p.feed(&bytes[cut..])).and_then(|_| p.finish());
        prop_assert!(!matches!(r, Err(RequestError::Parse { .. })), "{r:?} for {}", String::from_utf8_lossy(&bytes));
    }

    /// The envelope we extract equals what a full parse finds.
    #[test]
    fn extraction_matches_a_full_parse(v in arb_request(), early in any::<bool>()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let opts = Options { reject_duplicate_keys: false, stop_when_routable: early, skim: false, settle: false, max_batch_messages: 0 };
        let mut p = MessageParser::new(opts);
        let m = match p.feed(&bytes).unwrap() {
            Progress::Routable => p.routable().unwrap(),
            _ => match p.finish().unwrap() { Body::Single(m) => m, b => panic!("{b:?}") },
        };
        prop_assert_eq!(m.method.as_ref().map(crate::mcp::Method::as_str), v["method"].as_str());
        prop_assert_eq!(m.id.as_ref().map(|i| i.as_json().to_string()), Some(serde_json::to_string(&v["id"]).unwrap()));
        let target = mcp::target_of(v["method"].as_str().unwrap());
        if target == mcp::Target::Name || !early {
            prop_assert_eq!(m.name.as_deref(), v["params"]["name"].as_str());
        }
        if target == mcp::Target::Uri || !early {
            prop_assert_eq!(m.uri.as_deref(), v["params"]["uri"].as_str());
        }
    }

    /// On arbitrary bytes we never panic, and our syntax verdict agrees with serde_json's.
    #[test]
    fn syntax_verdict_matches_serde(bytes in prop::collection::vec(prop::sample::select(b"{}[]:,\"\\ 0123456789.eE+-truefalsnu\xc3\xa9\xff".to_vec()), 0..40)) {
        let theirs = serde_accepts(&bytes);
        prop_assume!(theirs.is_some());
        let ours = !matches!(parse_with(Options::default(), &bytes), Err(RequestError::Parse { .. }));
        prop_assert_eq!(Some(ours), theirs, "{:?}", String::from_utf8_lossy(&bytes));
    }

    /// A response with any result (or error data) reads the same skimmed as fully parsed,
    /// in any chunking.
    #[test]
    fn skimming_matches_a_full_parse(v in arb_json(), error in any::<bool>(), pretty in any::<bool>(), cut in 0usize..4096) {
        let msg = if error {
            serde_json::json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32000, "message": "m", "data": v}})
        } else {
            serde_json::json!({"jsonrpc": "2.0", "id": 3, "result": v})
        };
        let bytes = if pretty { serde_json::to_vec_pretty(&msg) } else { serde_json::to_vec(&msg) }.unwrap();
        let full = parse_with(Options::default(), &bytes);
        prop_assert!(full.is_ok(), "{full:?}");
        prop_assert_eq!(parse_split(SKIM, &bytes, cut), full);
    }

    /// A single response settles on the kind a full parse finds, in any chunking.
    #[test]
    fn settling_matches_a_full_parse(v in arb_json(), error in any::<bool>(), cut in 0usize..4096) {
        let msg = if error {
            serde_json::json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32000, "message": "m", "data": v}})
        } else {
            serde_json::json!({"jsonrpc": "2.0", "id": 3, "result": v})
        };
        let bytes = serde_json::to_vec(&msg).unwrap();
        let full = match parse_with(Options::default(), &bytes) {
            Ok(Body::Single(m)) => m.kind,
            other => panic!("{other:?}"),
        };
        let (a, b) = bytes.split_at(cut.min(bytes.len()));
        let mut p = MessageParser::new(SETTLE);
        let progress = match p.feed(a).unwrap() {
            Progress::NeedMore => p.feed(b).unwrap(),
            settled => settled,
        };
        prop_assert_eq!(progress, Progress::Settled(full));
    }

    /// Skimming any bytes never panics, in any chunking.
    #[test]
    fn skimming_never_panics(bytes in prop::collection::vec(prop::sample::select(b"{}[]:,\"\\ 0123456789truefalsnu\xff".to_vec()), 0..60), cut in 0usize..64) {
        let _ = parse_split(SKIM, &bytes, cut);
    }

    /// Mutating a valid request never panics, in any chunking.
    #[test]
    fn mutations_never_panic(v in arb_request(), pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut bytes = serde_json::to_vec(&v).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let cut = cut.index(bytes.len() + 1);
        let mut p = MessageParser::new(Options { reject_duplicate_keys: true, stop_when_routable: false, skim: false, settle: false, max_batch_messages: 0 });
        let r = p.feed(&bytes[..cut]).and_then(|_| p.feed(&bytes[cut..])).and_then(|_| p.finish());
        let ok_syntax = !matches!(r, Err(RequestError::Parse { .. }));
        let theirs = serde_accepts(&bytes);
        prop_assume!(theirs.is_some());
        prop_assert_eq!(Some(ok_syntax), theirs, "{:?}", String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn records_the_byte_span_of_params_name_for_rewriting() {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"name":"x"},"name": "gw__\u00e9cho" }}"#;
    let m = single(body);
    assert_eq!(m.name.as_deref(), Some("gw__écho"));
    let (start, end) = m.name_span.unwrap();
    assert_eq!(&body[start as usize..end as usize], r#""gw__\u00e9cho""#);
    // Splice in another name: the result is the same message with the new name.
    let rewritten = format!(
        r#"{}"echo"{}"#,
        &body[..start as usize],
        &body[end as usize..]
    );
    let again = single(&rewritten);
    assert_eq!(again.name.as_deref(), Some("echo"));
    assert_eq!(again.method, m.method);
}

#[test]
fn captures_list_cursors_and_the_requested_protocol_version() {
    let m = single(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"b2Zmc2V0OjEw"}}"#,
    );
    assert_eq!(m.cursor.as_deref(), Some("b2Zmc2V0OjEw"));
    assert_eq!(m.name_span, None);
    let m = single(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
    );
    assert_eq!(m.protocol_version.as_deref(), Some("2025-06-18"));
    // Only strings are captured; other types are left for the server to judge.
    let m = single(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":7}}"#);
    assert_eq!(m.cursor, None);
}

#[test]
fn captures_the_completion_ref_and_its_name_span() {
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{"argument":{"name":"who","value":"A"},"ref":{"type":"ref/prompt","name":"gw__greet"}}}"#;
    let m = single(body);
    assert_eq!(m.ref_name.as_deref(), Some("gw__greet"));
    assert_eq!(m.name, None, "argument.name is not params.name");
    let (start, end) = m.ref_name_span.unwrap();
    assert_eq!(&body[start as usize..end as usize], r#""gw__greet""#);
    let m = single(
        r#"{"jsonrpc":"2.0","id":4,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"docs://{p}"}}}"#,
    );
    assert_eq!(m.ref_uri.as_deref(), Some("docs://{p}"));
}

#[test]
fn the_2026_envelope_and_the_spans_a_gateway_rewrites_are_captured() {
    let body = br#"{"jsonrpc":"2.0","id":"r-1","method":"tools/call","params":{"name":"t","arguments":{"x":[1,{"y":2}]},"_meta":{"progressToken":1,"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"sampling":{}},"io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"},"io.modelcontextprotocol/logLevel":"info"}}}"#;
    let m = match parse_with(Options::default(), body).unwrap() {
        Body::Single(m) => m,
        other => panic!("{other:?}"),
    };
    let text = |span: Option<(u64, u64)>| {
        let (a, b) = span.unwrap();
        std::str::from_utf8(&body[a as usize..b as usize])
            .unwrap()
            .to_owned()
    };
    assert_eq!(m.meta.protocol_version.as_deref(), Some("2026-07-28"));
    assert_eq!(m.meta.log_level.as_deref(), Some("info"));
    assert!(m.meta.object);
    assert_eq!(text(m.meta.capabilities_span), r#"{"sampling":{}}"#);
    assert_eq!(
        text(m.meta.client_info_span),
        r#"{"name":"c","version":"1"}"#
    );
    assert_eq!(text(m.arguments_span), r#"{"x":[1,{"y":2}]}"#);
    assert_eq!(text(m.id_span), r#""r-1""#);
    assert_eq!(body[m.params_open.unwrap() as usize], b'{');
    assert_eq!(body[m.meta.open.unwrap() as usize], b'{');
    assert!(body[m.meta.open.unwrap() as usize..].starts_with(br#"{"progressToken""#));

    // A number id, a response's result, and a legacy request with no 2026 envelope.
    let r = br#"{"jsonrpc":"2.0","id":42 ,"result":{"a":1}}"#;
    let m = match parse_with(Options::default(), r).unwrap() {
        Body::Single(m) => m,
        other => panic!("{other:?}"),
    };
    let (a, b) = m.id_span.unwrap();
    assert_eq!(&r[a as usize..b as usize], b"42");
    assert!(r[m.result_open.unwrap() as usize..].starts_with(br#"{"a":1}"#));
    let legacy =
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"progressToken":"p"}}}"#;
    let m = match parse_with(Options::default(), legacy).unwrap() {
        Body::Single(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        m.meta.protocol_version, None,
        "a bare _meta is no 2026 evidence"
    );
    assert!(m.meta.object);
    // The envelope keys of the wrong type read as absent.
    let wrong = br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":7,"io.modelcontextprotocol/clientCapabilities":"x"}}}"#;
    let m = match parse_with(Options::default(), wrong).unwrap() {
        Body::Single(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (m.meta.protocol_version, m.meta.capabilities_span),
        (None, None)
    );
}
