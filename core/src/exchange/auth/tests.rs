//! The identity stage driven through the exchange as the filter drives it: metadata, 401s
//! with their challenges, 403s, the session bound to its principal, lists per principal.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::super::{Exchange, Forward, Host, Reply, Step};
use crate::auth::tests::{ISS, NOW, RESOURCE, bearer, claims, payload, snapshot_json};
use crate::config::Config;
use crate::header_map::serialize;
use crate::metrics::ToolLabel;
use crate::reason::Reason;
use base64::Engine as _;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Default)]
struct Recorder {
    rejected: Vec<&'static str>,
    table: RefCell<HashMap<String, (Vec<u8>, u32)>>,
}

impl Host for Recorder {
    fn count_request(&mut self, _: &str, _: ToolLabel<'_>) {}
    fn count_response(&mut self, _: &str, _: ToolLabel<'_>, _: bool) {}
    fn count_rejected(&mut self, reason: Reason) {
        self.rejected.push(reason.label());
    }
    fn count_internal_error(&mut self) {
        panic!("internal error");
    }
    fn warn(&mut self, _: &str) {}
    fn now(&self) -> u64 {
        NOW
    }
    fn random(&mut self, out: &mut [u8]) -> bool {
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        for b in out.iter_mut() {
            *b = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        true
    }
    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.table.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }
    fn shared_set(&mut self, key: &str, value: &[u8], _: Option<u32>) -> bool {
        let mut t = self.table.borrow_mut();
        let next = t.get(key).map_or(1, |(_, c)| c + 1);
        t.insert(key.to_owned(), (value.to_vec(), next));
        true
    }
}

fn config() -> Rc<Config> {
    let mut doc = snapshot_json();
    doc["session"] = json!({"keys": [base64::engine::general_purpose::STANDARD.encode([5u8; 32])]});
    Rc::new(Config::from_bytes(doc.to_string().as_bytes()).unwrap())
}

/// A token for `team` as the filter receives it after `jwt_authn`: the bearer token and the
/// payload header.
fn token(extra: Value) -> (String, String) {
    let c = claims(extra);
    (bearer("RS256", &c), payload(&c))
}

struct Request<'a> {
    method: &'a str,
    path: &'a str,
    token: Option<&'a (String, String)>,
    authorization_only: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    body: Option<String>,
}

fn req(path: &str) -> Request<'_> {
    Request {
        method: "POST",
        path,
        token: None,
        authorization_only: None,
        headers: vec![("mcp-protocol-version", "2025-11-25")],
        body: None,
    }
}

impl Request<'_> {
    fn send(&self, config: &Rc<Config>) -> (Step, Vec<&'static str>) {
        let mut host = Recorder::default();
        let mut h = vec![(":method", self.method), (":path", self.path)];
        if self.method == "POST" {
            h.push(("content-type", "application/json"));
            h.push(("accept", "application/json, text/event-stream"));
        }
        if let Some((bearer, payload)) = self.token {
            h.push(("authorization", bearer.as_str()));
            h.push((crate::auth::PAYLOAD_HEADER, payload.as_str()));
        }
        if let Some(a) = self.authorization_only {
            h.push(("authorization", a));
        }
        h.extend(self.headers.iter().copied());
        let mut x = Exchange::new(Rc::clone(config));
        let body = self.body.clone().unwrap_or_default();
        let step = x.on_request_head(&serialize(&h), body.is_empty(), &mut host);
        let step = match step {
            Step::ReadBody => {
                let bytes = body.into_bytes();
                x.on_request_body(
                    bytes.len(),
                    true,
                    |s, l| bytes.get(s..s + l).map(<[u8]>::to_vec),
                    &mut host,
                )
            }
            other => other,
        };
        (step, host.rejected)
    }
}

fn reply(step: &Step) -> &Reply {
    match step {
        Step::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn body(r: &Reply) -> Value {
    serde_json::from_slice(r.body.as_deref().unwrap_or(b"null")).unwrap()
}

fn rpc(id: u32, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

fn initialize() -> String {
    rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
    )
}

const MD: &str = "https://gw.example.com/.well-known/oauth-protected-resource/servers/team/mcp";

#[test]
fn protected_resource_metadata_is_served() {
    let cfg = config();
    let mut get = req("/.well-known/oauth-protected-resource/servers/team/mcp");
    get.method = "GET";
    let (step, _) = get.send(&cfg);
    let r = reply(&step);
    assert_eq!(r.status, 200);
    assert_eq!(header(r, "content-type"), Some("application/json"));
    assert_eq!(header(r, "access-control-allow-origin"), Some("*"));
    let doc = body(r);
    assert_eq!(doc["resource"], RESOURCE);
    assert_eq!(doc["authorization_servers"], json!([ISS]));
    // A 2026-era client's GET with its version header is served too.
    get.headers = vec![("mcp-protocol-version", "2026-07-28")];
    assert_eq!(reply(&get.send(&cfg).0).status, 200);
    // Two protected servers: the root form names neither.
    let mut root = req("/.well-known/oauth-protected-resource");
    root.method = "GET";
    let (step, rejected) = root.send(&cfg);
    assert_eq!(reply(&step).status, 404);
    assert_eq!(rejected, ["unknown_server"]);
    let (step, _) = req("/.well-known/oauth-protected-resource/servers/team/mcp").send(&cfg);
    let r = reply(&step);
    assert_eq!((r.status, header(r, "allow")), (405, Some("GET")));
    let mut head = req("/.well-known/oauth-protected-resource/servers/open/mcp");
    head.method = "HEAD";
    let (step, _) = head.send(&cfg);
    assert_eq!(
        (reply(&step).status, reply(&step).body.is_none()),
        (200, true)
    );
}

#[test]
fn missing_and_bad_tokens_get_401_with_a_challenge() {
    let cfg = config();
    let mut r = req("/servers/team/mcp");
    r.body = Some(initialize());
    let (step, rejected) = r.send(&cfg);
    let rep = reply(&step);
    assert_eq!(rep.status, 401);
    assert_eq!(rejected, ["unauthenticated"]);
    drop(rejected);
    assert_eq!(
        header(rep, "www-authenticate"),
        Some(
            format!(r#"Bearer resource_metadata="{MD}", scope="tools.read tools.execute""#)
                .as_str()
        )
    );
    assert_eq!(body(rep)["error"]["code"], -32001);
    assert_eq!(body(rep)["id"], Value::Null, "answered at the head");

    // A token jwt_authn did not accept: no payload header.
    r.authorization_only = Some("Bearer aaa.bbb.ccc");
    let (step, _) = r.send(&cfg);
    let rep = reply(&step);
    assert_eq!(rep.status, 401);
    let challenge = header(rep, "www-authenticate").unwrap();
    assert!(
        challenge.starts_with(r#"Bearer error="invalid_token""#),
        "{challenge}"
    );
    assert!(challenge.contains(MD), "{challenge}");

    // Verified, but not for this server, or revoked, or with a refused algorithm.
    let bad = [
        (
            "audience",
            token(json!({"aud": "https://gw.example.com/servers/open/mcp"})),
        ),
        ("revoked", token(json!({"jti": "revoked-jti"}))),
        ("expired", token(json!({"exp": NOW - 60}))),
    ];
    r.authorization_only = None;
    for (name, t) in &bad {
        r.token = Some(t);
        let (step, _) = r.send(&cfg);
        let rep = reply(&step);
        assert_eq!(rep.status, 401, "{name}");
        assert!(
            header(rep, "www-authenticate").unwrap().contains(name),
            "{name}"
        );
    }
    let c = claims(json!({}));
    let none = (bearer("none", &c), payload(&c));
    r.token = Some(&none);
    assert_eq!(reply(&r.send(&cfg).0).status, 401, "alg none");

    // GET and DELETE are refused the same way, before any session is looked at.
    for method in ["GET", "DELETE"] {
        let mut r = req("/servers/team/mcp");
        r.method = method;
        r.headers.push(("accept", "text/event-stream"));
        r.headers.push(("mcp-session-id", "mcpgw2.x.y"));
        assert_eq!(reply(&r.send(&cfg).0).status, 401, "{method}");
    }
    // The legacy SSE pair too, before the relay.
    let mut sse = req("/servers/team/sse");
    sse.method = "GET";
    assert_eq!(reply(&sse.send(&cfg).0).status, 401);
}

#[test]
fn servers_without_auth_and_optional_ones_serve_anonymous_clients() {
    let cfg = config();
    for path in ["/servers/plain/mcp", "/servers/open/mcp"] {
        let mut r = req(path);
        r.body = Some(initialize());
        let (step, _) = r.send(&cfg);
        assert_eq!(reply(&step).status, 200, "{path}");
    }
    // A bad token on an optional server is refused; on one without auth it is ignored
    // (and stripped before any upstream, as every credential is).
    let mut r = req("/servers/open/mcp");
    r.body = Some(initialize());
    r.authorization_only = Some("Bearer aaa.bbb.ccc");
    assert_eq!(reply(&r.send(&cfg).0).status, 401);
    let mut r = req("/servers/plain/mcp");
    r.body = Some(rpc(2, "tools/call", json!({"name": "time__now"})));
    r.authorization_only = Some("Bearer aaa.bbb.ccc");
    let (step, _) = r.send(&cfg);
    let Step::Forward(Forward { headers, .. }) = step else {
        panic!("{step:?}");
    };
    assert!(headers.contains(&(super::super::Header::Named("authorization"), None)));
}

fn session_of(step: &Step) -> String {
    header(reply(step), "mcp-session-id").unwrap().to_owned()
}

#[test]
fn a_session_is_its_principals_alone() {
    let cfg = config();
    let alice = token(json!({}));
    let alice_again = token(json!({"jti": "t-9", "groups": ["g-eng"]}));
    let bob = token(json!({"sub": "bob"}));
    let mut init = req("/servers/team/mcp");
    init.body = Some(initialize());
    init.token = Some(&alice);
    let (step, _) = init.send(&cfg);
    assert_eq!(reply(&step).status, 200);
    let session = session_of(&step);

    let ping = |t: Option<&(String, String)>| {
        let mut r = req("/servers/team/mcp");
        r.headers.push(("mcp-session-id", &session));
        r.body = Some(rpc(3, "ping", json!({})));
        r.token = t;
        r.send(&cfg)
    };
    assert_eq!(reply(&ping(Some(&alice)).0).status, 200);
    assert_eq!(
        reply(&ping(Some(&alice_again)).0).status,
        200,
        "another token of hers"
    );
    let (step, rejected) = ping(Some(&bob));
    assert_eq!(
        reply(&step).status,
        404,
        "another principal's session is unknown to him"
    );
    assert_eq!(rejected, ["unknown_session"]);
    assert!(
        body(reply(&step))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another principal")
    );
    assert_eq!(reply(&ping(None).0).status, 401);

    // On an optional server, an anonymous session is nobody's to take over either.
    let mut init = req("/servers/open/mcp");
    init.body = Some(initialize());
    let anonymous = session_of(&init.send(&cfg).0);
    let open = token(json!({"aud": "https://gw.example.com/servers/open/mcp"}));
    let mut r = req("/servers/open/mcp");
    r.headers.push(("mcp-session-id", &anonymous));
    r.body = Some(rpc(3, "ping", json!({})));
    assert_eq!(reply(&r.send(&cfg).0).status, 200);
    r.token = Some(&open);
    assert_eq!(reply(&r.send(&cfg).0).status, 404);
}

fn tool_names(step: &Step) -> Vec<String> {
    body(reply(step))["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn lists_differ_by_principal_and_are_private() {
    let cfg = config();
    let list = |t: &(String, String), version: &str| {
        let mut r = req("/servers/team/mcp");
        r.token = Some(t);
        r.headers = vec![("mcp-protocol-version", version)];
        let mut params = json!({});
        if version == "2026-07-28" {
            params = json!({"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}});
            r.headers.push(("mcp-method", "tools/list"));
        }
        r.body = Some(rpc(4, "tools/list", params));
        r.send(&cfg).0
    };
    let dev = token(json!({}));
    let admin = token(json!({"groups": [], "roles": ["platform_admin"]}));
    let outsider = token(json!({"groups": ["g-dev"]}));
    assert_eq!(
        tool_names(&list(&dev, "2025-11-25")),
        ["time__now", "fs__write"]
    );
    assert_eq!(
        tool_names(&list(&admin, "2025-11-25")),
        ["time__now", "fs__write", "admin__wipe"]
    );
    assert!(tool_names(&list(&outsider, "2025-11-25")).is_empty());
    let modern = list(&dev, "2026-07-28");
    assert_eq!(tool_names(&modern), ["time__now", "fs__write"]);
    assert_eq!(body(reply(&modern))["result"]["cacheScope"], "private");
    // Without a permission to list at all.
    let nobody = token(json!({"groups": []}));
    let step = list(&nobody, "2025-11-25");
    let r = reply(&step);
    assert_eq!(r.status, 403);
    assert!(
        header(r, "www-authenticate")
            .unwrap()
            .contains(r#"scope="tools.read""#)
    );
}

#[test]
fn lists_page_through_what_the_principal_may_see() {
    let mut doc = snapshot_json();
    doc["policy"] = json!({"list_page_size": 2});
    let tools: Vec<Value> = (0..7)
        .map(|i| {
            let name = if i % 2 == 0 {
                format!("ok__{i}")
            } else {
                format!("admin__{i}")
            };
            json!({"name": name, "upstream": "u", "upstream_name": name, "item": {"name": name}})
        })
        .collect();
    doc["servers"]["team"]["tools"] = json!(tools);
    let cfg = Rc::new(Config::from_bytes(doc.to_string().as_bytes()).unwrap());
    let dev = token(json!({}));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let mut r = req("/servers/team/mcp");
        r.token = Some(&dev);
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        r.body = Some(rpc(5, "tools/list", params));
        let step = r.send(&cfg).0;
        seen.extend(tool_names(&step));
        match body(reply(&step))["result"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["ok__0", "ok__2", "ok__4", "ok__6"]);
}

#[test]
fn calls_are_authorized_by_permission_and_rules() {
    let cfg = config();
    let call = |t: &(String, String), name: &str, args: Value| {
        let mut r = req("/servers/team/mcp");
        r.token = Some(t);
        r.body = Some(rpc(
            7,
            "tools/call",
            json!({"name": name, "arguments": args}),
        ));
        r.send(&cfg)
    };
    let dev = token(json!({}));
    let viewer = token(json!({"groups": ["g-eng", "g-view"]}));
    let (step, _) = call(&dev, "time__now", json!({}));
    assert!(matches!(step, Step::Forward(_) | Step::Call(_)), "{step:?}");
    let (step, _) = call(&dev, "fs__write", json!({"path": "/tmp/a"}));
    assert!(matches!(step, Step::Forward(_) | Step::Call(_)), "{step:?}");

    let (step, rejected) = call(&viewer, "time__now", json!({}));
    let r = reply(&step);
    assert_eq!(r.status, 403);
    assert_eq!(rejected, ["insufficient_scope"]);
    assert_eq!(
        header(r, "www-authenticate"),
        Some(format!(r#"Bearer error="insufficient_scope", scope="tools.execute", resource_metadata="{MD}""#).as_str())
    );
    assert_eq!(body(r)["id"], 7);
    assert_eq!(body(r)["error"]["code"], -32003);

    let (step, rejected) = call(&dev, "fs__write", json!({"path": "/etc/passwd"}));
    let r = reply(&step);
    assert_eq!((r.status, header(r, "www-authenticate")), (403, None));
    assert_eq!(rejected, ["access_denied"]);
    assert!(
        body(r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-etc")
    );
    let (step, _) = call(&dev, "admin__wipe", json!({}));
    assert_eq!(reply(&step).status, 403);
    // A tool the server does not have is refused like one it hides.
    let (step, _) = call(&token(json!({"groups": ["g-dev"]})), "nope", json!({}));
    assert_eq!(reply(&step).status, 403);
}

/// The passthrough path with its own identity (`auth.passthrough`): tokens bound to its
/// resource, requests authorized by its rules one message at a time, its metadata served.
fn passthrough_config() -> Rc<Config> {
    let mut doc = snapshot_json();
    doc["auth"]["passthrough"] = json!({
        "resource": PASSTHROUGH_RESOURCE,
        "issuers": ["idp"],
        "scopes": ["tools.execute"],
        "rules": [
            {"name": "eng", "when": "'eng' in principal.teams && !request.name.startsWith('admin__')"},
            {"name": "no-etc", "effect": "deny",
             "when": "request.name == 'fs__write' && has(args.path) && args.path.startsWith('/etc')"}
        ]
    });
    Rc::new(Config::from_bytes(doc.to_string().as_bytes()).unwrap())
}

const PASSTHROUGH_RESOURCE: &str = "https://gw.example.com/mcp";

#[test]
fn the_passthrough_path_can_require_a_token_and_apply_rules() {
    let cfg = passthrough_config();
    let ours = token(json!({"aud": PASSTHROUGH_RESOURCE}));
    let send = |t: Option<&(String, String)>, body: String| {
        let mut r = req("/mcp");
        r.token = t;
        r.body = Some(body);
        r.send(&cfg)
    };
    let forwarded = |step: &Step| matches!(step, Step::Forward(_));

    // No token: 401 at the head, with the passthrough resource's metadata in the challenge.
    let (step, rejected) = send(None, initialize());
    let r = reply(&step);
    assert_eq!(r.status, 401);
    assert_eq!(rejected, ["unauthenticated"]);
    assert!(
        header(r, "www-authenticate")
            .unwrap()
            .contains("https://gw.example.com/.well-known/oauth-protected-resource/mcp"),
        "{:?}",
        r.headers
    );
    // A token for a virtual server is not one for the passthrough path.
    let theirs = token(json!({}));
    assert_eq!(reply(&send(Some(&theirs), initialize()).0).status, 401);
    // GET streams too.
    let mut get = req("/mcp");
    get.method = "GET";
    get.headers.push(("accept", "text/event-stream"));
    assert_eq!(reply(&get.send(&cfg).0).status, 401);

    // With its token: forwarded, each call as the rules say.
    let (step, _) = send(Some(&ours), initialize());
    assert!(forwarded(&step), "{step:?}");
    let call =
        |name: &str, args: Value| rpc(7, "tools/call", json!({"name": name, "arguments": args}));
    let (step, _) = send(Some(&ours), call("time__now", json!({})));
    assert!(forwarded(&step), "{step:?}");
    let (step, rejected) = send(
        Some(&ours),
        call("fs__write", json!({"path": "/etc/passwd"})),
    );
    assert_eq!(reply(&step).status, 403);
    assert_eq!(rejected, ["access_denied"]);
    assert_eq!(body(reply(&step))["id"], 7);
    let (step, _) = send(Some(&ours), call("admin__wipe", json!({})));
    assert_eq!(reply(&step).status, 403);
    // Someone outside the team holds a valid token and still may call nothing.
    let stranger = token(json!({"aud": PASSTHROUGH_RESOURCE, "groups": ["g-dev"]}));
    let (step, _) = send(Some(&stranger), call("time__now", json!({})));
    assert_eq!(reply(&step).status, 403);
    // A 2025-03-26 batch with one refused call is refused whole: nothing is forwarded.
    let mut batch = req("/mcp");
    batch.token = Some(&ours);
    batch.headers = vec![("mcp-protocol-version", "2025-03-26")];
    batch.body = Some(format!(
        "[{},{}]",
        call("time__now", json!({})),
        rpc(
            8,
            "tools/call",
            json!({"name": "admin__wipe", "arguments": {}})
        )
    ));
    assert_eq!(reply(&batch.send(&cfg).0).status, 403);

    // Its metadata, at the path its resource gives.
    let mut md = req("/.well-known/oauth-protected-resource/mcp");
    md.method = "GET";
    let (step, _) = md.send(&cfg);
    let r = reply(&step);
    assert_eq!(r.status, 200);
    assert_eq!(body(r)["resource"], PASSTHROUGH_RESOURCE);
    assert_eq!(body(r)["authorization_servers"], json!([ISS]));

    // Virtual servers keep their own identity.
    let mut team = req("/servers/team/mcp");
    team.token = Some(&ours);
    team.body = Some(initialize());
    assert_eq!(
        reply(&team.send(&cfg).0).status,
        401,
        "audience of another resource"
    );

    // Without `auth.passthrough` the passthrough path asks for nothing (as before).
    let (step, _) = {
        let mut r = req("/mcp");
        r.body = Some(initialize());
        r.send(&config())
    };
    assert!(matches!(step, Step::Continue), "{step:?}");
}

#[test]
fn a_passthrough_identity_is_validated_naming_its_fields() {
    for (edit, field) in [
        (
            json!({"resource": "https://gw.example.com/mcp", "issuers": ["nope"]}),
            "auth.passthrough.issuers[0]",
        ),
        (
            json!({"resource": "not a url"}),
            "auth.passthrough.resource",
        ),
        (
            json!({"resource": "https://gw.example.com/mcp", "rules": [{"name": "r", "when": "principal.subject =="}]}),
            "auth.passthrough.rules[0].when",
        ),
    ] {
        let mut doc = snapshot_json();
        doc["auth"]["passthrough"] = edit;
        let err = match Config::from_bytes(doc.to_string().as_bytes()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{field}: accepted"),
        };
        assert!(err.contains(field), "{field}: {err}");
    }
}
