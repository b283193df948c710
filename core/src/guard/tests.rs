//! The pipeline: configuration errors, conditions, priorities and modes, and the pre and
//! post hooks on realistic calls.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::*;
use crate::jsonrpc::stream::{Body, MessageParser, Options};
use serde_json::{Value, json};

/// A snapshot with virtual server `s1` (tools `crm__lookup` with schemas, `crm__note`) and
/// `plugins`.
fn snapshot(plugins: Value) -> Snapshot {
    let doc = json!({
        "upstreams": {"crm": {"cluster": "c"}},
        "servers": {"s1": {"name": "one", "tools": [
            {"name": "crm__lookup", "upstream": "crm", "upstream_name": "lookup", "item": {
                "name": "crm__lookup",
                "inputSchema": {"type": "object", "properties": {
                    "email": {"type": "string"}, "limit": {"type": "integer", "maximum": 50}
                }, "required": ["email"], "additionalProperties": false},
                "outputSchema": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
            }},
            {"name": "crm__note", "upstream": "crm", "upstream_name": "note", "item": {"name": "crm__note", "inputSchema": {"type": "object"}}}
        ]}},
        "plugins": plugins
    });
    Snapshot::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap()
}

fn guard(plugins: Value) -> Guard {
    Guard::try_from(&snapshot(plugins)).unwrap()
}

fn request(body: &str) -> Message {
    let mut p = MessageParser::new(Options::default());
    p.feed(body.as_bytes()).unwrap();
    match p.finish().unwrap() {
        Body::Single(m) => m,
        Body::Batch(_) => panic!("batch"),
    }
}

fn call(arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"crm__lookup","arguments":{arguments}}}}}"#
    )
}

const S1: Call<'static> = Call {
    server: Some("s1"),
    principal: None,
};

/// Runs the pre hooks; the forwarded body (or the rejection).
fn pre(g: &Guard, at: &Call<'_>, body: &str) -> (Result<String, Rejection>, Vec<Finding>) {
    let msg = request(body);
    let mut findings = Vec::new();
    let out = match g.pre(at, &msg, body.as_bytes(), &mut findings) {
        Pre::Pass => Ok(body.to_owned()),
        Pre::Edit { start, end, with } => {
            let mut b = body.as_bytes().to_vec();
            b.splice(start as usize..end as usize, with);
            Ok(String::from_utf8(b).unwrap())
        }
        Pre::Block(r) => Err(r),
    };
    (out, findings)
}

#[test]
fn configuration_errors_name_the_field() {
    let cases = [
        (json!([{"name": "", "pii": {}}]), "plugins[0].name"),
        (json!([{"name": "a b", "pii": {}}]), "plugins[0].name"),
        (json!([{"name": "a"}]), "plugins[0]"),
        (
            json!([{"name": "a", "pii": {}, "secrets": {}}]),
            "plugins[0]",
        ),
        (
            json!([{"name": "a", "pii": {}}, {"name": "a", "secrets": {}}]),
            "plugins[1].name",
        ),
        (
            json!([{"name": "a", "resource_filter": {"allowed_schemes": ["https"]}, "hooks": ["tool_pre_invoke"]}]),
            "plugins[0].hooks[0]",
        ),
        (
            json!([{"name": "a", "schema": {}, "hooks": ["tool_post_invoke", "tool_post_invoke"]}]),
            "plugins[0].hooks[1]",
        ),
        (
            json!([{"name": "a", "pii": {}, "conditions": {"tools": ["ok", ""]}}]),
            "plugins[0].conditions.tools[1]",
        ),
        (
            json!([{"name": "a", "regex": {"rules": [{"pattern": "[unclosed"}]}}]),
            "plugins[0].regex.rules[0].pattern",
        ),
    ];
    for (plugins, want) in cases {
        let doc = serde_json::to_vec(&json!({ "plugins": plugins })).unwrap();
        match Snapshot::from_json(&doc) {
            Err(ConfigError::FieldInvalid { field, .. }) => assert_eq!(field, want, "{plugins}"),
            other => panic!("{plugins}: {other:?}"),
        }
    }
    // Unknown fields and values are parse errors that name where they are.
    for (doc, at) in [
        (
            r#"{"plugins":[{"name":"a","pii":{"actoin":"mask"}}]}"#,
            "plugins[0].pii",
        ),
        (
            r#"{"plugins":[{"name":"a","pii":{"detectors":["emial"]}}]}"#,
            "plugins[0].pii.detectors[0]",
        ),
        (
            r#"{"plugins":[{"name":"a","mode":"audit","pii":{}}]}"#,
            "plugins[0].mode",
        ),
        (
            r#"{"plugins":[{"name":"a","pii":{},"hooks":["tool_post"]}]}"#,
            "plugins[0].hooks[0]",
        ),
    ] {
        match Snapshot::from_json(doc.as_bytes()) {
            Err(ConfigError::Parse(m)) => assert!(m.contains(at), "{doc}: {m}"),
            other => panic!("{doc}: {other:?}"),
        }
    }
}

#[test]
fn the_configuration_round_trips() {
    let s = snapshot(json!([
        {"name": "pii", "priority": 5, "mode": "permissive", "hooks": ["tool_pre_invoke"],
         "conditions": {"servers": ["s1"], "tools": ["crm__*"], "teams": ["support"]},
         "pii": {"action": "block", "detectors": ["email"], "masking": "partial"}},
        {"name": "size", "output_size": {"max_bytes": 100, "action": "truncate"}},
        {"name": "re", "regex": {"rules": [{"pattern": "x+", "replacement": "y"}]}}
    ]));
    let json = serde_json::to_vec(&s).unwrap();
    assert_eq!(Snapshot::from_json(&json).unwrap(), s);
}

#[test]
fn pre_hooks_mask_arguments_in_place() {
    let g = guard(json!([{"name": "pii", "pii": {}}]));
    let (out, findings) = pre(
        &g,
        &S1,
        &call(r#"{"email": "jane.doe@example.com", "limit": 5}"#),
    );
    assert_eq!(
        out.unwrap(),
        call(r#"{"email": "[REDACTED:email]", "limit": 5}"#)
    );
    assert_eq!(
        findings,
        [Finding {
            plugin: 0,
            hook: Hook::ToolPreInvoke,
            effect: Effect::Masked,
            what: "masked"
        }]
    );
    // Nothing found: nothing changes, nothing is reported.
    let (out, findings) = pre(&g, &S1, &call(r#"{"email": "nobody"}"#));
    assert_eq!(out.unwrap(), call(r#"{"email": "nobody"}"#));
    assert!(findings.is_empty());
}

#[test]
fn a_block_names_the_plugin_and_never_the_text() {
    let g = guard(json!([{"name": "no-ssn", "pii": {"action": "block", "detectors": ["ssn"]}}]));
    let (out, findings) = pre(
        &g,
        &S1,
        &call(r#"{"email": "x", "note": "ssn 123-45-6789"}"#),
    );
    let r = out.unwrap_err();
    assert_eq!((r.status(), r.reason.code()), (403, -32003));
    assert_eq!(r.reason.label(), "plugin_blocked");
    let body: Value = serde_json::from_slice(&r.body()).unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(
        body["error"]["data"],
        json!({"plugin": "no-ssn", "hook": "tool_pre_invoke", "reason": "ssn"})
    );
    assert!(!String::from_utf8(r.body()).unwrap().contains("6789"));
    assert_eq!(findings[0].effect, Effect::Blocked);
}

#[test]
fn priorities_order_plugins_and_the_first_block_wins() {
    // The regex runs first (priority 1) and rewrites the email before pii sees it.
    let g = guard(json!([
        {"name": "pii", "priority": 10, "pii": {"action": "block", "detectors": ["email"]}},
        {"name": "alias", "priority": 1, "regex": {"rules": [{"pattern": "@example\\.com", "replacement": " at example"}]}}
    ]));
    let (out, _) = pre(&g, &S1, &call(r#"{"email": "jane@example.com"}"#));
    assert_eq!(out.unwrap(), call(r#"{"email": "jane at example"}"#));
    let g = guard(json!([
        {"name": "pii", "priority": 1, "pii": {"action": "block", "detectors": ["email"]}},
        {"name": "alias", "priority": 10, "regex": {"rules": [{"pattern": "@example\\.com", "replacement": " at example"}]}}
    ]));
    let (out, findings) = pre(&g, &S1, &call(r#"{"email": "jane@example.com"}"#));
    assert!(out.is_err());
    assert_eq!(findings.len(), 1, "the run ended at the block");
}

/// (plugin name, effect, what) of each finding.
fn named(g: &Guard, findings: &[Finding]) -> Vec<(String, Effect, &'static str)> {
    findings
        .iter()
        .map(|f| (g.plugin_name(f.plugin).to_owned(), f.effect, f.what))
        .collect()
}

fn n(name: &str, effect: Effect, what: &'static str) -> (String, Effect, &'static str) {
    (name.to_owned(), effect, what)
}

/// The text plugins of a hook read each string in one walk: these pin that the result is
/// what running them one after the other over the whole text gives.
#[test]
fn text_plugins_in_one_walk_see_what_the_ones_before_left() {
    // The second plugin reads the first one's mask, in arguments and in results.
    let g = guard(json!([
        {"name": "pii", "priority": 10, "pii": {"detectors": ["email"]}},
        {"name": "tag", "priority": 20, "regex": {"rules": [
            {"pattern": "\\[REDACTED:email\\]", "replacement": "<someone>"}
        ]}}
    ]));
    let (out, findings) = pre(
        &g,
        &S1,
        &call(r#"{"email": "jane@example.com", "limit": 5, "cc": ["ops@example.com", "x"]}"#),
    );
    assert_eq!(
        out.unwrap(),
        call(r#"{"email": "<someone>", "limit": 5, "cc": ["<someone>", "x"]}"#)
    );
    assert_eq!(
        named(&g, &findings),
        [
            n("pii", Effect::Masked, "masked"),
            n("tag", Effect::Masked, "regex")
        ]
    );
    let response = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"mail jane@example.com"}]}}"#;
    let (out, findings) = post(&g, &call("{}"), response);
    assert_eq!(
        masked(out)["result"]["content"][0]["text"],
        "mail <someone>"
    );
    assert_eq!(findings.len(), 2);
    // In the other order the regex reads the text before the mask: nothing to replace.
    let g = guard(json!([
        {"name": "pii", "priority": 20, "pii": {"detectors": ["email"]}},
        {"name": "tag", "priority": 10, "regex": {"rules": [
            {"pattern": "\\[REDACTED:email\\]", "replacement": "<someone>"}
        ]}}
    ]));
    let (out, findings) = pre(&g, &S1, &call(r#"{"email": "jane@example.com"}"#));
    assert_eq!(out.unwrap(), call(r#"{"email": "[REDACTED:email]"}"#));
    assert_eq!(named(&g, &findings), [n("pii", Effect::Masked, "masked")]);
    // A permissive plugin's mask is not what the next one reads.
    let g = guard(json!([
        {"name": "pii", "priority": 10, "mode": "permissive", "pii": {"detectors": ["email"]}},
        {"name": "tag", "priority": 20, "regex": {"rules": [
            {"pattern": "\\[REDACTED:email\\]", "replacement": "<someone>"}
        ]}}
    ]));
    let body = call(r#"{"email": "jane@example.com"}"#);
    let (out, findings) = pre(&g, &S1, &body);
    assert_eq!(out.unwrap(), body);
    assert_eq!(
        named(&g, &findings),
        [n("pii", Effect::WouldMask, "masked")]
    );
}

#[test]
fn a_block_after_a_mask_names_the_blocking_plugin_and_leaks_neither_text() {
    // The deny list blocks on a word the mask wrote: it read the masked text.
    let g = guard(json!([
        {"name": "pii", "priority": 10, "pii": {"detectors": ["email"]}},
        {"name": "deny", "priority": 20, "deny_list": {"words": ["redacted"]}}
    ]));
    let (out, findings) = pre(&g, &S1, &call(r#"{"email": "jane@example.com"}"#));
    let r = out.unwrap_err();
    let body = String::from_utf8(r.body()).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"]["data"],
        json!({"plugin": "deny", "hook": "tool_pre_invoke", "reason": "word"})
    );
    assert!(!body.contains("jane"), "{body}");
    assert_eq!(
        named(&g, &findings),
        [
            n("pii", Effect::Masked, "masked"),
            n("deny", Effect::Blocked, "word")
        ]
    );
    // The block comes in a string before the one the mask changes: the mask is still
    // reported (the masking plugin read the whole text, as it would have alone), and
    // nothing after the blocking plugin ran.
    let g = guard(json!([
        {"name": "pii", "priority": 10, "pii": {"detectors": ["email"]}},
        {"name": "deny", "priority": 20, "deny_list": {"words": ["drop table"]}},
        {"name": "after", "priority": 30, "mode": "permissive", "regex": {"rules": [{"pattern": "limit"}]}}
    ]));
    let (out, findings) = pre(
        &g,
        &S1,
        &call(r#"{"q": "DROP   table users", "email": "jane@example.com", "r": "limit"}"#),
    );
    assert!(out.is_err());
    assert_eq!(
        named(&g, &findings),
        [
            n("pii", Effect::Masked, "masked"),
            n("deny", Effect::Blocked, "word")
        ]
    );
    // An earlier plugin's block later in the text wins over a later plugin's block
    // earlier in it: the earlier plugin runs first.
    let g = guard(json!([
        {"name": "first", "priority": 10, "regex": {"rules": [{"pattern": "forbidden"}]}},
        {"name": "second", "priority": 20, "deny_list": {"words": ["drop table"]}}
    ]));
    let (out, findings) = pre(&g, &S1, &call(r#"{"q": "drop table", "r": "forbidden"}"#));
    let v: Value = serde_json::from_slice(&out.unwrap_err().body()).unwrap();
    assert_eq!(v["error"]["data"]["plugin"], "first");
    assert_eq!(named(&g, &findings), [n("first", Effect::Blocked, "regex")]);
    // A denied tool blocks before any text is read; the plugins before it still run.
    let g = guard(json!([
        {"name": "pii", "priority": 10, "pii": {"detectors": ["email"]}},
        {"name": "deny", "priority": 20, "deny_list": {"tools": ["crm__lookup"]}}
    ]));
    let (out, findings) = pre(&g, &S1, &call(r#"{"email": "jane@example.com"}"#));
    assert!(out.is_err());
    assert_eq!(
        named(&g, &findings),
        [
            n("pii", Effect::Masked, "masked"),
            n("deny", Effect::Blocked, "tool")
        ]
    );
    // On a result: masked, then blocked by the next plugin; the error names it and holds
    // neither the original nor the masked text.
    let g = guard(json!([
        {"name": "pii", "priority": 10, "pii": {"detectors": ["email"]}},
        {"name": "no-mail", "priority": 20, "hooks": ["tool_post_invoke"], "regex": {"rules": [{"pattern": "REDACTED:email"}]}}
    ]));
    let response = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"mail jane@example.com"}]}}"#;
    let (out, findings) = post(&g, &call("{}"), response);
    let v = blocked(out);
    assert_eq!(
        v["error"]["data"],
        json!({"plugin": "no-mail", "hook": "tool_post_invoke", "reason": "regex"})
    );
    assert!(!v.to_string().contains("jane") && !v.to_string().contains("REDACTED"));
    assert_eq!(
        named(&g, &findings),
        [
            n("pii", Effect::Masked, "masked"),
            n("no-mail", Effect::Blocked, "regex")
        ]
    );
}

#[test]
fn a_result_is_read_as_strictly_as_a_strict_parser_would() {
    let g = guard(json!([{"name": "pii", "pii": {}}]));
    for bad in [
        // A repeated member name: a client keeps one, a plugin might read the other.
        r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok","text":"jane@example.com"}]}}"#,
        r#"{"jsonrpc":"2.0","id":7,"result":{"a":1,"\u0061":"jane@example.com"}}"#,
        // Text a lenient parser reads as a string, the walk would not.
        r#"{"jsonrpc":"2.0","id":7,"result":{"text":'jane@example.com'}}"#,
        r#"{"jsonrpc":"2.0","id":7,"result":{"a":1,}}"#,
        r#"{"jsonrpc":"2.0","id":7,"result":{"a":01}}"#,
    ] {
        let v = blocked(post(&g, &call("{}"), bad).0);
        assert_eq!(v["error"]["data"]["reason"], "uninspectable", "{bad}");
    }
    // Nesting the parser would refuse, which its skim of the result does not count.
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":7,"result":{{"a":{}{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(
        blocked(post(&g, &call("{}"), &deep).0)["error"]["data"]["reason"],
        "uninspectable"
    );
    // Whatever comes after the result is still read by the parser.
    let bad = r#"{"jsonrpc":"2.0","id":7,"result":{"text":"x"},"extra":[1,]}"#;
    assert_eq!(
        blocked(post(&g, &call("{}"), bad).0)["error"]["data"]["reason"],
        "uninspectable"
    );
    // Schema or size plugins before the text plugins: the same strict read.
    let g = guard(json!([
        {"name": "size", "priority": 1, "output_size": {"max_bytes": 100000}},
        {"name": "pii", "priority": 2, "pii": {}}
    ]));
    let dup = r#"{"jsonrpc":"2.0","id":7,"result":{"t":"a","t":"jane@example.com"}}"#;
    assert_eq!(
        blocked(post(&g, &call("{}"), dup).0)["error"]["data"]["reason"],
        "uninspectable"
    );
    let fine = r#"{"jsonrpc":"2.0","id":7,"result":{"t":"jane@example.com"},"x":1}"#;
    assert_eq!(
        masked(post(&g, &call("{}"), fine).0),
        json!({"jsonrpc":"2.0","id":7,"result":{"t":"[REDACTED:email]"},"x":1})
    );
}

#[test]
fn permissive_plugins_only_report_and_disabled_ones_do_not_run() {
    let g = guard(json!([
        {"name": "watch", "mode": "permissive", "pii": {"action": "block"}},
        {"name": "mask", "mode": "permissive", "secrets": {}, "hooks": ["tool_pre_invoke"]},
        {"name": "off", "mode": "disabled", "deny_list": {"words": ["jane"]}}
    ]));
    let body = call(r#"{"email": "jane@example.com", "key": "AKIAIOSFODNN7EXAMPLE"}"#);
    let (out, findings) = pre(&g, &S1, &body);
    assert_eq!(out.unwrap(), body, "unchanged");
    let effects: Vec<(&str, Effect)> = findings
        .iter()
        .map(|f| (g.plugin_name(f.plugin), f.effect))
        .collect();
    assert_eq!(
        effects,
        [("watch", Effect::WouldBlock), ("mask", Effect::WouldMask)]
    );
}

#[test]
fn conditions_select_servers_tools_and_principals() {
    let g = guard(json!([
        {"name": "s2-only", "conditions": {"servers": ["s2"]}, "deny_list": {"words": ["x"]}},
        {"name": "notes", "conditions": {"tools": ["crm__n*"]}, "deny_list": {"words": ["y"]}},
        {"name": "team", "conditions": {"teams": ["support"]}, "deny_list": {"words": ["z"]}},
        {"name": "alice", "conditions": {"principals": ["alice"]}, "deny_list": {"words": ["w"]}}
    ]));
    let note = |arg: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"crm__note","arguments":{{"t":"{arg}"}}}}}}"#
        )
    };
    let blocked_by = |at: &Call<'_>, body: &str| -> Option<String> {
        pre(&g, at, body).0.err().map(|r| {
            serde_json::from_slice::<Value>(&r.body()).unwrap()["error"]["data"]["plugin"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    };
    assert_eq!(blocked_by(&S1, &note("x")), None, "other server");
    assert_eq!(blocked_by(&S1, &note("y")).as_deref(), Some("notes"));
    assert_eq!(blocked_by(&S1, &call(r#"{"t":"y"}"#)), None, "other tool");
    // Without identity, team and principal conditions never match.
    assert_eq!(blocked_by(&S1, &note("z")), None);
    assert_eq!(blocked_by(&S1, &note("w")), None);
    let alice = Principal {
        subject: "alice".into(),
        teams: vec!["dev".into(), "support".into()],
    };
    let as_alice = Call {
        server: Some("s1"),
        principal: Some(&alice),
    };
    assert_eq!(blocked_by(&as_alice, &note("z")).as_deref(), Some("team"));
    assert_eq!(blocked_by(&as_alice, &note("w")).as_deref(), Some("alice"));
    // Outside virtual servers a servers condition never matches; others still do.
    let direct = Call::default();
    assert_eq!(blocked_by(&direct, &note("x")), None);
    assert_eq!(blocked_by(&direct, &note("y")).as_deref(), Some("notes"));
}

#[test]
fn deny_list_tools_and_resource_uris() {
    let g = guard(json!([
        {"name": "deny", "deny_list": {"tools": ["crm__note"], "words": ["secret-project"]}},
        {"name": "files", "resource_filter": {"allowed_schemes": ["https"]}}
    ]));
    let note = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"crm__note"}}"#;
    assert_eq!(
        pre(&g, &S1, note).0.unwrap_err().reason,
        Reason::PluginBlocked
    );
    let read = |uri: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{{"uri":"{uri}"}}}}"#
        )
    };
    assert!(pre(&g, &S1, &read("https://docs.example.com/a")).0.is_ok());
    let r = pre(&g, &S1, &read("file:///etc/passwd")).0.unwrap_err();
    assert!(
        r.message.contains("\"files\"") && r.message.contains("scheme"),
        "{}",
        r.message
    );
    assert!(pre(&g, &S1, &read("https://x/secret-project")).0.is_err());
    // A prompt named like a denied tool is not a tool.
    let prompt = r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"crm__note","arguments":{"a":"b"}}}"#;
    assert!(pre(&g, &S1, prompt).0.is_ok());
    let prompt = r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"p","arguments":{"a":"the Secret-Project plan"}}}"#;
    assert!(pre(&g, &S1, prompt).0.is_err());
    // Other methods have no hooks.
    let list =
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"cursor":"secret-project"}}"#;
    assert!(pre(&g, &S1, list).0.is_ok());
}

#[test]
fn arguments_are_validated_against_the_tools_input_schema() {
    let g = guard(json!([{"name": "schema", "schema": {}}]));
    assert!(
        pre(&g, &S1, &call(r#"{"email": "a", "limit": 50}"#))
            .0
            .is_ok()
    );
    let cases = [
        (call(r#"{"limit": 5}"#), "/email: is required"),
        (
            call(r#"{"email": "a", "limit": 51}"#),
            "/limit: is above the maximum 50",
        ),
        (
            call(r#"{"email": "a", "extra": true}"#),
            "/extra: is not a declared property",
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"crm__lookup"}}"#
                .to_owned(),
            "/email: is required",
        ),
    ];
    for (body, want) in cases {
        let r = pre(&g, &S1, &body).0.unwrap_err();
        assert_eq!((r.status(), r.reason.code()), (400, -32602), "{body}");
        assert!(r.message.contains(want), "{body}: {}", r.message);
        assert!(r.message.contains("\"schema\""), "names the plugin");
    }
    // Tools without a schema, and calls outside virtual servers, are not validated.
    let note = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"crm__note","arguments":{"x":1}}}"#;
    assert!(pre(&g, &S1, note).0.is_ok());
    assert!(
        pre(&g, &Call::default(), &call(r#"{"limit": 500}"#))
            .0
            .is_ok()
    );
}

fn post(g: &Guard, request_body: &str, response: &str) -> (Post, Vec<Finding>) {
    let plan = g.post_plan(&S1, &request(request_body)).expect("a plan");
    let mut findings = Vec::new();
    (
        g.post_body(&plan, response.as_bytes(), &mut findings),
        findings,
    )
}

fn masked(p: Post) -> Value {
    match p {
        Post::Masked(b) => serde_json::from_slice(&b).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn blocked(p: Post) -> Value {
    match p {
        Post::Blocked(b) => serde_json::from_slice(&b).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn post_hooks_mask_results_and_leave_the_envelope_alone() {
    let g = guard(json!([{"name": "pii", "pii": {}}, {"name": "secrets", "secrets": {}}]));
    let response = r#"{"jsonrpc":"2.0","id":"a@b.example.com","result":{"content":[{"type":"text","text":"Owner: ops@corp.example (key AKIAIOSFODNN7EXAMPLE)"}],"structuredContent":{"owner":"ops@corp.example"},"isError":false}}"#;
    let (out, findings) = post(&g, &call("{}"), response);
    let v = masked(out);
    assert_eq!(v["id"], "a@b.example.com", "the id is not content");
    assert_eq!(
        v["result"]["content"][0]["text"],
        "Owner: [REDACTED:email] (key [REDACTED:aws_access_key])"
    );
    assert_eq!(
        v["result"]["structuredContent"]["owner"],
        "[REDACTED:email]"
    );
    assert_eq!(findings.len(), 2);
    // Errors, and results with nothing to mask, pass.
    let error =
        r#"{"jsonrpc":"2.0","id":7,"error":{"code":-1,"message":"ops@corp.example failed"}}"#;
    assert_eq!(post(&g, &call("{}"), error).0, Post::Pass);
    let clean = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;
    assert_eq!(post(&g, &call("{}"), clean).0, Post::Pass);
}

#[test]
fn post_hook_blocks_replace_the_result_with_an_error() {
    let g = guard(json!([{"name": "no-keys", "secrets": {"action": "block"}}]));
    let response = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"}]}}"#;
    let v = blocked(post(&g, &call("{}"), response).0);
    assert_eq!(v["id"], 7);
    assert_eq!(v["error"]["code"], -32003);
    assert_eq!(
        v["error"]["data"],
        json!({"plugin": "no-keys", "hook": "tool_post_invoke", "reason": "private_key"})
    );
    assert!(!v.to_string().contains("MIIE"));
}

#[test]
fn what_cannot_be_inspected_is_refused_when_a_plugin_enforces() {
    let g = guard(json!([{"name": "pii", "pii": {}}]));
    for bad in [
        r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]},"result":{"text":"jane@example.com"}}"#,
        r#"{"jsonrpc":"2.0","id":7,"result":{"content":["#,
        r#"[{"jsonrpc":"2.0","id":7,"result":{}}]"#,
    ] {
        let v = blocked(post(&g, &call("{}"), bad).0);
        assert_eq!(v["id"], 7, "the request's id: {bad}");
        assert_eq!(v["error"]["data"]["reason"], "uninspectable");
    }
    let watch = guard(json!([{"name": "pii", "mode": "permissive", "pii": {}}]));
    let bad = r#"{"jsonrpc":"2.0","id":7,"result":"#;
    assert_eq!(post(&watch, &call("{}"), bad).0, Post::Pass);
}

#[test]
fn structured_content_is_validated_against_the_output_schema() {
    let g = guard(json!([{"name": "schema", "schema": {}}]));
    let ok = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"structuredContent":{"id":3}}}"#;
    assert_eq!(post(&g, &call("{}"), ok).0, Post::Pass);
    for (bad, why) in [
        (
            r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"structuredContent":{"id":"3"}}}"#,
            "structuredContent/id: must be integer",
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#,
            "structuredContent is missing",
        ),
    ] {
        let v = blocked(post(&g, &call("{}"), bad).0);
        assert_eq!(v["error"]["code"], -32603);
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
    }
    let tool_error = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#;
    assert_eq!(post(&g, &call("{}"), tool_error).0, Post::Pass);
}

#[test]
fn output_size_and_resource_content_limits() {
    let g = guard(json!([
        {"name": "cap", "output_size": {"max_bytes": 64, "action": "truncate"}},
        {"name": "files", "resource_filter": {"max_content_bytes": 8}}
    ]));
    let long = format!(
        r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
        "word ".repeat(40)
    );
    let v = masked(post(&g, &call("{}"), &long).0);
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.ends_with("[truncated]"), "{text}");
    assert!(serde_json::to_vec(&v["result"]).unwrap().len() <= 64);
    let read = r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a"}}"#;
    let big = r#"{"jsonrpc":"2.0","id":2,"result":{"contents":[{"uri":"file:///a","text":"0123456789"}]}}"#;
    let v = blocked(post(&g, read, big).0);
    assert_eq!(v["error"]["data"]["reason"], "size");
    assert_eq!(v["error"]["data"]["hook"], "resource_post_fetch");
}

#[test]
fn plans_exist_only_where_plugins_apply() {
    let g = guard(
        json!([{"name": "pii", "pii": {}, "hooks": ["tool_post_invoke"], "conditions": {"tools": ["crm__lookup"]}}]),
    );
    assert!(g.post_plan(&S1, &request(&call("{}"))).is_some());
    let note = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"crm__note"}}"#;
    assert!(g.post_plan(&S1, &request(note)).is_none());
    let prompt = r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"p"}}"#;
    assert!(g.post_plan(&S1, &request(prompt)).is_none());
    assert!(!g.has_pre_hooks());
    assert!(Guard::default().is_empty());
    let plan = g.post_plan(&S1, &request(&call("{}"))).unwrap();
    assert!(plan.enforcing());
    // An SSE event's data is checked like a body.
    let mut findings = Vec::new();
    let event = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"mail ops@corp.example"}]}}"#;
    assert!(matches!(
        g.post_event(&plan, event, &mut findings),
        Post::Masked(_)
    ));
    assert_eq!(
        g.post_event(&plan, b"", &mut findings),
        Post::Pass,
        "a priming event"
    );
}
