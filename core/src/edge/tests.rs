//! Unit tests of `edge`; compiled only under `#[cfg(test)]` (the parent declares the module).

use super::*;
use crate::jsonrpc::stream::{Body, MessageParser, Options};
use crate::mcp::Era;
use serde_json::{Value, json};

fn snapshot(page: u32) -> Snapshot {
    let tools: Vec<Value> = (0..5)
        .map(|i| {
            json!({"name": format!("a__t{i}"), "upstream": "a", "upstream_name": format!("t{i}"),
                   "item": {"name": format!("a__t{i}"), "inputSchema": {"type": "object"}}})
        })
        .collect();
    let doc = json!({
        "policy": {"list_page_size": page},
        "upstreams": {"a": {"cluster": "ca", "path": "/mcp", "authority": "a.internal:8080"},
                      "b": {"cluster": "cb"}},
        "servers": {"s1": {
            "name": "Team one", "version": "7", "instructions": "Use \"t0\" first",
            "tools": tools,
            "prompts": [{"name": "b__greet", "upstream": "b", "upstream_name": "greet", "item": {"name": "b__greet"}}],
            "resources": [{"name": "file:///readme", "upstream": "b", "upstream_name": "file:///readme", "item": {"uri": "file:///readme", "name": "b__readme"}}],
            "resource_templates": [{"name": "docs://{path}.md", "upstream": "a", "upstream_name": "docs://{path}.md", "item": {"uriTemplate": "docs://{path}.md", "name": "a__docs"}}]
        }}
    });
    Snapshot::from_json(doc.to_string().as_bytes()).unwrap()
}

fn msg(body: &str) -> Message {
    let mut p = MessageParser::new(Options::default());
    p.feed(body.as_bytes()).unwrap();
    match p.finish().unwrap() {
        Body::Single(m) => m,
        Body::Batch(_) => panic!("batch"),
    }
}

fn reply(edge: &Edge, body: &str) -> Value {
    match edge.answer("s1", &msg(body), Era::Legacy) {
        Some(Answer::Reply(bytes)) => serde_json::from_slice(&bytes).unwrap(),
        other => panic!("{body}: expected a reply, got {other:?}"),
    }
}

#[test]
fn paths_name_the_virtual_server() {
    assert_eq!(endpoint("/servers/s1/mcp"), Some(Endpoint::Mcp("s1")));
    assert_eq!(endpoint("/servers/s1/mcp?x=1"), Some(Endpoint::Mcp("s1")));
    assert_eq!(endpoint("/servers/s1/sse"), Some(Endpoint::Sse("s1")));
    assert_eq!(
        endpoint("/servers/s1/message?session_id=ab"),
        Some(Endpoint::Message("s1"))
    );
    assert_eq!(endpoint("/servers/s1/mcp/x"), Some(Endpoint::Other("s1")));
    assert_eq!(endpoint("/servers//mcp"), None);
    assert_eq!(endpoint("/mcp"), None);
}

#[test]
fn initialize_and_ping_are_answered_from_the_snapshot() {
    let edge = Edge::take(&mut snapshot(2));
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":"a\"b","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
    );
    assert_eq!(r["id"], "a\"b", "string ids come back as sent");
    assert_eq!(r["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(
        r["result"]["serverInfo"],
        json!({"name": "Team one", "version": "7"})
    );
    assert_eq!(r["result"]["instructions"], "Use \"t0\" first");
    assert!(r["result"]["capabilities"]["tools"].is_object());
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#,
    );
    assert_eq!(
        r["result"]["protocolVersion"],
        *mcp::PROTOCOL_VERSIONS.last().unwrap()
    );
    assert_eq!(
        reply(&edge, r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#),
        json!({"jsonrpc":"2.0","id":9,"result":{}})
    );
    assert_eq!(
        edge.answer(
            "s1",
            &msg(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Era::Legacy
        ),
        Some(Answer::Accepted)
    );
    assert_eq!(
        edge.answer(
            "nope",
            &msg(r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#),
            Era::Legacy
        ),
        None
    );
}

#[test]
fn lists_page_through_every_entry_with_cursors() {
    let edge = Edge::take(&mut snapshot(2));
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let params = cursor.as_ref().map_or(String::new(), |c| {
            format!(r#","params":{{"cursor":"{c}"}}"#)
        });
        let r = reply(
            &edge,
            &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list"{params}}}"#),
        );
        pages += 1;
        for t in r["result"]["tools"].as_array().unwrap() {
            names.push(t["name"].as_str().unwrap().to_owned());
        }
        match r["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["a__t0", "a__t1", "a__t2", "a__t3", "a__t4"]);
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/templates/list"}"#,
    );
    assert_eq!(
        r["result"]["resourceTemplates"][0]["uriTemplate"],
        "docs://{path}.md"
    );
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"mcpgw:99"}}"#,
    );
    assert_eq!(r["error"]["code"], -32602);
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"somebody else's"}}"#,
    );
    assert_eq!(r["error"]["code"], -32602);
}

#[test]
fn calls_route_to_the_owning_upstream_with_the_name_rewritten() {
    let edge = Edge::take(&mut snapshot(100));
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a__t3","arguments":{}}}"#;
    let Some(Answer::Route(to)) = edge.answer("s1", &msg(body), Era::Legacy) else {
        panic!("not routed");
    };
    assert_eq!(to.upstream.cluster, "ca");
    assert_eq!(to.upstream.authority.as_deref(), Some("a.internal:8080"));
    let ((start, end), name) = to.rename.unwrap();
    assert_eq!(&body[start as usize..end as usize], "\"a__t3\"");
    assert_eq!(name, "t3");
    let Some(Answer::Route(to)) = edge.answer(
        "s1",
        &msg(r#"{"jsonrpc":"2.0","id":4,"method":"prompts/get","params":{"name":"b__greet"}}"#),
        Era::Legacy,
    ) else {
        panic!("prompt not routed");
    };
    assert_eq!(
        (to.upstream.cluster.as_str(), to.rename.map(|r| r.1)),
        ("cb", Some("greet"))
    );
    let Some(Answer::Route(to)) = edge.answer("s1", &msg(r#"{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"docs://guide/intro.md"}}"#), Era::Legacy) else {
        panic!("templated resource not routed");
    };
    assert_eq!((to.upstream.cluster.as_str(), to.rename), ("ca", None));
}

#[test]
fn unknown_names_and_methods_get_json_rpc_errors_naming_them() {
    let edge = Edge::take(&mut snapshot(100));
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"b__t0"}}"#,
    );
    assert_eq!(r["error"]["code"], -32602);
    assert!(
        r["error"]["message"].as_str().unwrap().contains("b__t0"),
        "{r}"
    );
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///nope"}}"#,
    );
    assert_eq!(r["error"]["code"], -32002);
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":8,"method":"completion/complete","params":{}}"#,
    );
    assert_eq!(r["error"]["code"], -32602);
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":9,"method":"logging/setLevel","params":{"level":"info"}}"#,
    );
    assert_eq!(r["error"]["code"], -32601);
}

#[test]
fn completions_route_to_the_owner_of_the_prompt_or_template() {
    let edge = Edge::take(&mut snapshot(100));
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"b__greet"},"argument":{"name":"who","value":"A"}}}"#;
    let Some(Answer::Route(to)) = edge.answer("s1", &msg(body), Era::Legacy) else {
        panic!("prompt completion not routed");
    };
    assert_eq!(to.upstream.cluster, "cb");
    let ((start, end), name) = to.rename.unwrap();
    assert_eq!(&body[start as usize..end as usize], "\"b__greet\"");
    assert_eq!(name, "greet");
    let body = r#"{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"docs://{path}.md"},"argument":{"name":"path","value":"g"}}}"#;
    let Some(Answer::Route(to)) = edge.answer("s1", &msg(body), Era::Legacy) else {
        panic!("template completion not routed");
    };
    assert_eq!((to.upstream.cluster.as_str(), to.rename), ("ca", None));
    let r = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"nope"}}}"#,
    );
    assert_eq!(r["error"]["code"], -32602);
    let init = reply(
        &edge,
        r#"{"jsonrpc":"2.0","id":4,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
    );
    assert!(
        init["result"]["capabilities"]["completions"].is_object(),
        "{init}"
    );
}
