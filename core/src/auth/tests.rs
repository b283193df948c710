//! Table tests of every identity decision: authentication of a verified payload, the
//! permission and rule decisions, list visibility, challenges, metadata, and the
//! configuration errors of `auth`.

use super::*;
use crate::jsonrpc::stream::{Body, MessageParser, Options};
use crate::snapshot::ConfigError;
use serde_json::json;

pub(crate) const NOW: u64 = 1_800_000_000;
pub(crate) const RESOURCE: &str = "https://gw.example.com/servers/team/mcp";
pub(crate) const ISS: &str = "https://idp.example.com";

/// A snapshot with issuers `idp` (RS256, groups mapped) and `other`, and virtual servers
/// `team` (requires a token, rules), `open` (token optional) and `plain` (no auth).
pub(crate) fn snapshot_json() -> Value {
    json!({
        "auth": {
            "issuers": {
                "idp": {
                    "issuer": ISS,
                    "algorithms": ["RS256"],
                    "audiences": ["api://shared"],
                    "claims": {
                        "group_teams": {"g-eng": ["eng"]},
                        "group_roles": {"g-dev": ["developer"], "g-view": ["viewer"]}
                    }
                },
                "other": {"issuer": "https://other.example.com", "algorithms": ["ES256"]}
            },
            "revoked": ["revoked-jti"]
        },
        "upstreams": {"u": {"cluster": "c"}},
        "servers": {
            "team": {
                "name": "Team",
                "tools": [tool("time__now"), tool("fs__write"), tool("admin__wipe")],
                "prompts": [{"name": "greet", "upstream": "u", "upstream_name": "greet", "item": {"name": "greet"}}],
                "auth": {
                    "resource": RESOURCE,
                    "issuers": ["idp"],
                    "scopes": ["tools.read", "tools.execute"],
                    "rules": [
                        {"name": "eng-tools", "when": "'eng' in principal.teams && !request.name.startsWith('admin__')"},
                        {"name": "admins", "when": "'platform_admin' in principal.roles"},
                        {"name": "prompts", "when": "request.method == 'prompts/get'"},
                        {"name": "no-etc", "effect": "deny",
                         "when": "request.name == 'fs__write' && has(args.path) && args.path.startsWith('/etc')"},
                        {"name": "fs-needs-path", "effect": "deny",
                         "when": "request.name == 'fs__write' && !has(args.path)"}
                    ]
                }
            },
            "open": {"name": "Open", "tools": [tool("time__now")],
                     "auth": {"resource": "https://gw.example.com/servers/open/mcp", "required": false}},
            "plain": {"name": "Plain", "tools": [tool("time__now")]}
        }
    })
}

fn tool(name: &str) -> Value {
    json!({"name": name, "upstream": "u", "upstream_name": name, "item": {"name": name}})
}

pub(crate) fn access() -> Access {
    let s = Snapshot::from_json(snapshot_json().to_string().as_bytes()).unwrap();
    Access::new(&s)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Claims of a valid token for `team`, with `extra` merged in (`null` removes a claim).
pub(crate) fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": ISS, "sub": "alice", "aud": RESOURCE, "exp": NOW + 600, "nbf": NOW - 10,
        "iat": NOW - 10, "jti": "t-1", "email": "alice@example.com", "groups": ["g-eng", "g-dev"]
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c
}

/// `Bearer <header>.<payload>.<signature>` for `claims` signed (notionally) with `alg`.
pub(crate) fn bearer(alg: &str, claims: &Value) -> String {
    format!(
        "Bearer {}.{}.c2ln",
        b64(&json!({"alg": alg, "kid": "k1", "typ": "JWT"})),
        b64(claims)
    )
}

pub(crate) fn payload(claims: &Value) -> String {
    b64(claims)
}

fn auth(
    a: &Access,
    server: &str,
    authorization: Option<&str>,
    payload: Option<&str>,
) -> Result<Option<Rc<Principal>>, Failure> {
    a.authenticate(
        a.server(server).unwrap(),
        authorization.map(str::as_bytes),
        payload.map(str::as_bytes),
        NOW,
    )
}

#[test]
fn tokens_are_accepted_or_refused_with_a_reason() {
    let a = access();
    let good = claims(json!({}));
    let p = auth(
        &a,
        "team",
        Some(&bearer("RS256", &good)),
        Some(&payload(&good)),
    )
    .unwrap()
    .unwrap();
    assert_eq!(p.subject, "alice");
    assert_eq!(p.email.as_deref(), Some("alice@example.com"));
    assert_eq!(p.teams, ["eng"]);
    assert_eq!(p.roles, ["developer"]);
    assert!(p.has(Permission::ToolsExecute) && p.has(Permission::PromptsRead));
    // Istio without `forwardOriginalToken`: the payload alone.
    assert!(
        auth(&a, "team", None, Some(&payload(&good)))
            .unwrap()
            .is_some()
    );
    // Padded payloads (Envoy's `pad_forward_payload_header`) read the same.
    let padded = format!("{}==", payload(&good));
    assert!(auth(&a, "team", None, Some(&padded)).is_ok());

    let invalid = |c: &Value| auth(&a, "team", Some(&bearer("RS256", c)), Some(&payload(c)));
    type Outcome = Result<Option<Rc<Principal>>, Failure>;
    let cases: Vec<(&str, Outcome, &str)> = vec![
        ("missing", auth(&a, "team", None, None), "missing"),
        (
            "refused by jwt_authn (token left, no payload)",
            auth(&a, "team", Some("Bearer x.y.z"), None),
            "not valid here",
        ),
        (
            "expired",
            invalid(&claims(json!({"exp": NOW - 31}))),
            "expired",
        ),
        (
            "expired exactly at the skew",
            invalid(&claims(json!({"exp": NOW - 30}))),
            "expired",
        ),
        (
            "no expiry",
            invalid(&claims(json!({"exp": null}))),
            "no expiry",
        ),
        (
            "not yet valid",
            invalid(&claims(json!({"nbf": NOW + 31}))),
            "not valid yet",
        ),
        (
            "nbf not a number",
            invalid(&claims(json!({"nbf": "soon"}))),
            "not valid yet",
        ),
        (
            "wrong audience",
            invalid(&claims(
                json!({"aud": "https://gw.example.com/servers/open/mcp"}),
            )),
            "audience",
        ),
        (
            "no audience",
            invalid(&claims(json!({"aud": null}))),
            "audience",
        ),
        (
            "wrong issuer",
            invalid(&claims(json!({"iss": "https://evil.example.com"}))),
            "issuer",
        ),
        (
            "issuer not trusted by this server",
            invalid(&claims(json!({"iss": "https://other.example.com"}))),
            "issuer",
        ),
        (
            "revoked",
            invalid(&claims(json!({"jti": "revoked-jti"}))),
            "revoked",
        ),
        (
            "no subject",
            invalid(&claims(json!({"sub": null}))),
            "subject",
        ),
        (
            "empty subject",
            invalid(&claims(json!({"sub": ""}))),
            "subject",
        ),
        (
            "alg none",
            auth(
                &a,
                "team",
                Some(&bearer("none", &good)),
                Some(&payload(&good)),
            ),
            "algorithm",
        ),
        (
            "HS256 (key confusion)",
            auth(
                &a,
                "team",
                Some(&bearer("HS256", &good)),
                Some(&payload(&good)),
            ),
            "algorithm",
        ),
        (
            "the token sent is not the one verified",
            auth(
                &a,
                "team",
                Some(&bearer("RS256", &claims(json!({"sub": "mallory"})))),
                Some(&payload(&good)),
            ),
            "not the one verified",
        ),
        (
            "not a bearer token",
            auth(&a, "team", Some("Basic YTpi"), Some(&payload(&good))),
            "bearer",
        ),
        (
            "two parts",
            auth(&a, "team", Some("Bearer a.b"), Some(&payload(&good))),
            "JWS",
        ),
        (
            "four parts, the verified payload second",
            auth(
                &a,
                "team",
                Some(&format!("{}.x", bearer("RS256", &good))),
                Some(&payload(&good)),
            ),
            "JWS",
        ),
        (
            "the verified payload a prefix of the token's",
            auth(
                &a,
                "team",
                Some(&bearer("RS256", &good).replacen(".c2ln", "Zm9v.c2ln", 1)),
                Some(&payload(&good)),
            ),
            "not the one verified",
        ),
        (
            "the verified payload spanning two segments",
            auth(&a, "team", Some("Bearer eA.a.b.c2ln"), Some("a.b")),
            "JWS",
        ),
        (
            "payload not base64",
            auth(&a, "team", None, Some("!!")),
            "malformed",
        ),
        (
            "payload not an object",
            auth(&a, "team", None, Some(&b64(&json!([1])))),
            "malformed",
        ),
    ];
    for (name, got, want) in cases {
        match (got, want) {
            (Err(Failure::Missing), "missing") => {}
            (Err(Failure::Invalid(why)), want) if why.contains(want) => {}
            (other, _) => panic!("{name}: {other:?}"),
        }
    }
    // Within the skew, and an audience the issuer lists for every server.
    assert!(invalid(&claims(json!({"exp": NOW - 29}))).is_ok());
    assert!(invalid(&claims(json!({"nbf": NOW + 29}))).is_ok());
    assert!(invalid(&claims(json!({"aud": ["x", "api://shared"]}))).is_ok());
    assert!(invalid(&claims(json!({"aud": ["x", RESOURCE]}))).is_ok());
}

#[test]
fn optional_servers_take_anonymous_requests_but_not_bad_tokens() {
    let a = access();
    assert_eq!(auth(&a, "open", None, None), Ok(None));
    assert!(matches!(
        auth(&a, "open", Some("Bearer x.y.z"), None),
        Err(Failure::Invalid(_))
    ));
    let c = claims(json!({"aud": "https://gw.example.com/servers/open/mcp"}));
    let p = auth(&a, "open", None, Some(&payload(&c))).unwrap().unwrap();
    // Nothing is authorized on a server that does not require a token.
    let policy = a.server("open").unwrap();
    let call = message(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#);
    assert_eq!(
        policy.authorize(Some(&p), "open", &call, Args::None),
        Decision::Allow
    );
    assert_eq!(
        policy.authorize(None, "open", &call, Args::None),
        Decision::Allow
    );
    assert!(policy.visible(None, "open", "tools/call", "x"));
    assert!(a.server("plain").is_none());
}

pub(crate) fn message(json: &str) -> Message {
    let mut p = MessageParser::new(Options::default());
    p.feed(json.as_bytes()).unwrap();
    match p.finish().unwrap() {
        Body::Single(m) => m,
        Body::Batch(_) => panic!("batch"),
    }
}

fn principal_with(extra: Value) -> Rc<Principal> {
    let a = access();
    let c = claims(extra);
    auth(&a, "team", None, Some(&payload(&c))).unwrap().unwrap()
}

#[test]
fn permissions_then_rules_decide_each_use() {
    let a = access();
    let team = a.server("team").unwrap();
    let dev = principal_with(json!({}));
    let viewer = principal_with(json!({"groups": ["g-eng", "g-view"]}));
    let admin = principal_with(json!({"groups": [], "roles": ["platform_admin"]}));
    let nobody = principal_with(json!({"groups": []}));
    let outsider = principal_with(json!({"groups": ["g-dev"]}));
    let scoped = principal_with(json!({"groups": ["g-eng"], "scope": "openid tools.execute"}));
    let call = |name: &str| {
        message(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
        ))
    };
    let list = message(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    let ping = message(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    let prompt =
        message(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet"}}"#);
    let read = message(
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#,
    );
    let (now, write, wipe) = (call("time__now"), call("fs__write"), call("admin__wipe"));
    let path = |p: &str| json!({"path": p});
    let etc = path("/etc/passwd");
    let tmp = path("/tmp/x");
    let deny = |r: &str| Decision::Deny(Some(r.to_owned()));
    let cases: Vec<(&str, &Principal, &Message, Args<'_>, Decision)> = vec![
        (
            "developer in eng calls a tool",
            &dev,
            &now,
            Args::None,
            Decision::Allow,
        ),
        (
            "no rule allows admin tools to eng",
            &dev,
            &wipe,
            Args::None,
            Decision::Deny(None),
        ),
        (
            "platform admin calls admin tools",
            &admin,
            &wipe,
            Args::None,
            Decision::Allow,
        ),
        (
            "viewer may not execute",
            &viewer,
            &now,
            Args::None,
            Decision::InsufficientScope(Permission::ToolsExecute),
        ),
        ("viewer lists", &viewer, &list, Args::None, Decision::Allow),
        (
            "no roles: no listing",
            &nobody,
            &list,
            Args::None,
            Decision::InsufficientScope(Permission::ToolsRead),
        ),
        (
            "no roles: ping needs nothing",
            &nobody,
            &ping,
            Args::None,
            Decision::Allow,
        ),
        (
            "a scope grants its permission",
            &scoped,
            &now,
            Args::None,
            Decision::Allow,
        ),
        (
            "the scope grants only itself",
            &scoped,
            &list,
            Args::None,
            Decision::InsufficientScope(Permission::ToolsRead),
        ),
        (
            "argument rule: /etc denied",
            &dev,
            &write,
            Args::Json(&etc),
            deny("no-etc"),
        ),
        (
            "argument rule: /etc denied to admins too",
            &admin,
            &write,
            Args::Json(&etc),
            deny("no-etc"),
        ),
        (
            "argument rule: /tmp allowed",
            &dev,
            &write,
            Args::Json(&tmp),
            Decision::Allow,
        ),
        (
            "argument rule: path required",
            &dev,
            &write,
            Args::None,
            deny("fs-needs-path"),
        ),
        ("prompt rule", &viewer, &prompt, Args::None, Decision::Allow),
        (
            "eng reads resources too",
            &dev,
            &read,
            Args::None,
            Decision::Allow,
        ),
        (
            "no rule allows outsiders",
            &outsider,
            &read,
            Args::None,
            Decision::Deny(None),
        ),
    ];
    for (name, who, msg, args, want) in cases {
        assert_eq!(team.authorize(Some(who), "team", msg, args), want, "{name}");
    }
}

#[test]
fn kept_verdicts_decide_as_every_rule_in_turn_does() {
    // Rules that read no arguments are decided once per principal, method and name; the
    // argument rules still run on every call, and the first deny rule in order still wins.
    let mut doc = snapshot_json();
    doc["servers"]["team"]["auth"]["rules"] = json!([
        {"name": "all", "when": "true"},
        {"name": "no-etc", "effect": "deny", "when": "has(args.path) && args.path == '/etc'"},
        {"name": "no-x", "effect": "deny", "when": "request.name == 'x'"},
        {"name": "no-count", "effect": "deny", "when": "has(args.count)"},
        {"name": "suspended", "effect": "deny", "when": "claims.suspended == true"}
    ]);
    let s = Snapshot::from_json(doc.to_string().as_bytes()).unwrap();
    let a = Access::new(&s);
    let team = a.server("team").unwrap();
    let principal = |extra: Value| {
        let c = claims(extra);
        let token = bearer("RS256", &c);
        // A fresh `Access` each time: a principal with nothing kept.
        let fresh = Access::new(&s);
        let kept = a.authenticate(
            team,
            Some(token.as_bytes()),
            Some(payload(&c).as_bytes()),
            NOW,
        );
        let new = fresh.authenticate(
            fresh.server("team").unwrap(),
            Some(token.as_bytes()),
            Some(payload(&c).as_bytes()),
            NOW,
        );
        (kept.unwrap().unwrap(), new.unwrap().unwrap())
    };
    let call = |name: &str| {
        message(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
        ))
    };
    let (x, y) = (call("x"), call("y"));
    let (etc, count, none) = (json!({"path": "/etc"}), json!({"count": 1}), json!({}));
    let deny = |r: &str| Decision::Deny(Some(r.to_owned()));
    let (user, _) = principal(json!({"suspended": false}));
    let (suspended, _) = principal(json!({"suspended": true}));
    let cases: Vec<(&Principal, &Message, &Value, Decision)> = vec![
        (&user, &x, &etc, deny("no-etc")),
        (&user, &x, &none, deny("no-x")),
        (&user, &x, &count, deny("no-x")),
        (&user, &y, &count, deny("no-count")),
        (&user, &y, &none, Decision::Allow),
        (&user, &y, &etc, deny("no-etc")),
        (&suspended, &y, &none, deny("suspended")),
        (&suspended, &y, &etc, deny("no-etc")),
        (&suspended, &y, &count, deny("no-count")),
    ];
    // A name too long to keep is decided every time, the same way.
    let long = call(&"y".repeat(300));
    for _ in 0..2 {
        assert_eq!(
            team.authorize(Some(&suspended), "team", &long, Args::Json(&none)),
            deny("suspended")
        );
        assert_eq!(
            team.authorize(Some(&user), "team", &long, Args::Json(&etc)),
            deny("no-etc")
        );
    }
    // Twice over: decided, then from what was kept.
    for round in 0..2 {
        for (who, msg, args, want) in &cases {
            let got = team.authorize(Some(who), "team", msg, Args::Json(args));
            assert_eq!(&got, want, "round {round}: {:?} {args}", msg.name);
            // A principal with nothing kept decides the same.
            let (_, fresh) = principal(who.claims.clone());
            assert_eq!(
                team.authorize(Some(&fresh), "team", msg, Args::Json(args)),
                got
            );
        }
    }
}

#[test]
fn lists_show_what_some_call_could_be_allowed() {
    let a = access();
    let team = a.server("team").unwrap();
    let dev = principal_with(json!({}));
    let admin = principal_with(json!({"groups": [], "roles": ["platform_admin"]}));
    let outsider = principal_with(json!({"groups": ["g-dev"]}));
    let visible = |p: &Principal| -> Vec<&str> {
        ["time__now", "fs__write", "admin__wipe"]
            .into_iter()
            .filter(|t| team.visible(Some(p), "team", "tools/call", t))
            .collect()
    };
    // fs__write depends on its arguments: listed, decided per call.
    assert_eq!(visible(&dev), ["time__now", "fs__write"]);
    assert_eq!(visible(&admin), ["time__now", "fs__write", "admin__wipe"]);
    assert!(visible(&outsider).is_empty());
    assert!(!team.visible(None, "team", "tools/call", "time__now"));
}

#[test]
fn challenges_and_metadata() {
    let a = access();
    let team = a.server("team").unwrap();
    let md = "https://gw.example.com/.well-known/oauth-protected-resource/servers/team/mcp";
    assert_eq!(team.metadata_url(), md);
    assert_eq!(
        team.challenge(&Failure::Missing),
        format!(r#"Bearer resource_metadata="{md}", scope="tools.read tools.execute""#)
    );
    assert_eq!(
        team.challenge(&Failure::Invalid("the token has expired")),
        format!(
            r#"Bearer error="invalid_token", error_description="the token has expired", resource_metadata="{md}", scope="tools.read tools.execute""#
        )
    );
    assert_eq!(
        team.insufficient_scope(Permission::ToolsExecute),
        format!(
            r#"Bearer error="insufficient_scope", scope="tools.execute", resource_metadata="{md}""#
        )
    );
    let open = a.server("open").unwrap();
    assert!(!open.challenge(&Failure::Missing).contains("scope="));

    let doc: Value = serde_json::from_slice(
        a.metadata("/.well-known/oauth-protected-resource/servers/team/mcp?x=1")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        doc,
        json!({"resource": RESOURCE, "authorization_servers": [ISS],
               "bearer_methods_supported": ["header"], "resource_name": "Team",
               "scopes_supported": ["tools.read", "tools.execute"]})
    );
    let open_doc: Value = serde_json::from_slice(
        a.metadata("/.well-known/oauth-protected-resource/servers/open/mcp")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        open_doc["authorization_servers"],
        json!([ISS, "https://other.example.com"]),
        "every issuer when the server names none"
    );
    // Two servers with auth: the root form describes neither.
    assert_eq!(
        a.metadata("/.well-known/oauth-protected-resource"),
        Some(None)
    );
    assert_eq!(
        a.metadata("/.well-known/oauth-protected-resource/servers/plain/mcp"),
        Some(None)
    );
    assert_eq!(a.metadata("/.well-known/oauth-protected-resourcex"), None);
    assert_eq!(a.metadata("/servers/team/mcp"), None);
}

#[test]
fn the_root_form_describes_the_only_protected_server_and_resource_paths_are_served() {
    let mut doc = snapshot_json();
    doc["servers"]["open"]["auth"] = Value::Null;
    doc["servers"]["team"]["auth"]["resource"] = json!("https://mcp.example.com/");
    let s = Snapshot::from_json(doc.to_string().as_bytes()).unwrap();
    let a = Access::new(&s);
    let team = a.server("team").unwrap();
    assert_eq!(
        team.metadata_url(),
        "https://mcp.example.com/.well-known/oauth-protected-resource"
    );
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/",
        "/.well-known/oauth-protected-resource/servers/team/mcp",
    ] {
        assert!(a.metadata(path).unwrap().is_some(), "{path}");
    }
}

#[test]
fn sessions_bind_to_issuer_and_subject() {
    let alice = principal_with(json!({}));
    let again = principal_with(json!({"jti": "t-2", "groups": []}));
    let bob = principal_with(json!({"sub": "bob"}));
    assert_eq!(alice.digest, again.digest);
    assert_ne!(alice.digest, bob.digest);
    assert_eq!(alice.digest.len(), 22);
}

#[test]
fn claim_mappings_read_pointers_strings_and_arrays() {
    let mut doc = snapshot_json();
    doc["auth"]["issuers"]["idp"]["claims"] = json!({
        "subject": "/user/id", "email": "", "groups": "/realm/groups", "roles": "",
        "scope": "scp", "group_teams": {"a": ["t1"], "b": ["t1", "t2"]}
    });
    let s = Snapshot::from_json(doc.to_string().as_bytes()).unwrap();
    let a = Access::new(&s);
    let c = claims(json!({"user": {"id": "u-7"}, "realm": {"groups": "a b"},
                          "roles": ["platform_admin"], "scp": ["tools.read"]}));
    let p = auth(&a, "team", None, Some(&payload(&c))).unwrap().unwrap();
    assert_eq!((p.subject.as_str(), p.email.as_deref()), ("u-7", None));
    assert_eq!(p.teams, ["t1", "t2"]);
    assert!(p.roles.is_empty(), "the roles claim is not read");
    assert!(p.has(Permission::ToolsRead) && !p.has(Permission::ToolsExecute));
}

fn config_error(doc: &Value) -> (String, String) {
    match Snapshot::from_json(doc.to_string().as_bytes()) {
        Err(ConfigError::FieldInvalid { field, reason }) => (field, reason),
        other => panic!("{doc}: {other:?}"),
    }
}

#[test]
fn auth_errors_name_the_field() {
    type Edit = fn(&mut Value);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |d| d["auth"]["issuers"]["idp"]["algorithms"] = json!(["RS256", "none"]),
            "auth.issuers.idp.algorithms[1]",
        ),
        (
            |d| d["auth"]["issuers"]["idp"]["algorithms"] = json!(["HS256"]),
            "auth.issuers.idp.algorithms[0]",
        ),
        (
            |d| d["auth"]["issuers"]["idp"]["algorithms"] = json!([]),
            "auth.issuers.idp.algorithms",
        ),
        (
            |d| d["auth"]["issuers"]["idp"]["issuer"] = json!("http://idp.example.com"),
            "auth.issuers.idp.issuer",
        ),
        (
            |d| d["auth"]["issuers"]["other"]["issuer"] = json!(ISS),
            "auth.issuers.other.issuer",
        ),
        (
            |d| {
                d["auth"]["issuers"]["idp"]["jwks"] =
                    json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
            },
            "auth.issuers.idp.jwks",
        ),
        (
            |d| d["auth"]["issuers"]["idp"]["claims"]["group_roles"] = json!({"g": ["root"]}),
            "auth.issuers.idp.claims.group_roles.g[0]",
        ),
        (
            |d| d["auth"]["issuers"]["idp"]["claims"]["subject"] = json!(""),
            "auth.issuers.idp.claims.subject",
        ),
        (
            |d| d["auth"]["issuers"]["idp"]["audiences"] = json!([""]),
            "auth.issuers.idp.audiences[0]",
        ),
        (|d| d["auth"]["revoked"] = json!([""]), "auth.revoked[0]"),
        (
            |d| d["auth"]["clock_skew_seconds"] = json!(3600),
            "auth.clock_skew_seconds",
        ),
        (
            |d| {
                let idp = d["auth"]["issuers"]["idp"].take();
                d["auth"]["issuers"] = json!({"bad name": idp});
            },
            "auth.issuers.bad name",
        ),
        (
            |d| d["servers"]["team"]["auth"]["resource"] = json!("/servers/team/mcp"),
            "servers.team.auth.resource",
        ),
        (
            |d| d["servers"]["team"]["auth"]["issuers"] = json!(["idp", "nope"]),
            "servers.team.auth.issuers[1]",
        ),
        (
            |d| d["servers"]["team"]["auth"]["scopes"] = json!(["a b"]),
            "servers.team.auth.scopes[0]",
        ),
        (
            |d| d["servers"]["team"]["auth"]["rules"][1]["name"] = json!("eng-tools"),
            "servers.team.auth.rules[1].name",
        ),
        (
            |d| d["servers"]["team"]["auth"]["rules"][2]["when"] = json!("request.method = 'x'"),
            "servers.team.auth.rules[2].when",
        ),
        (
            |d| d["auth"]["issuers"] = json!({}),
            "servers.open.auth.issuers",
        ),
    ];
    for (edit, want) in cases {
        let mut doc = snapshot_json();
        edit(&mut doc);
        let (field, reason) = config_error(&doc);
        assert_eq!(field, want, "{reason}");
    }
    // Serde errors name the field too.
    let mut doc = snapshot_json();
    doc["servers"]["team"]["auth"]["rules"][0]["effect"] = json!("maybe");
    match Snapshot::from_json(doc.to_string().as_bytes()) {
        Err(ConfigError::Parse(m)) => {
            assert!(m.contains("servers.team.auth.rules[0].effect"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // A round trip keeps everything.
    let s = Snapshot::from_json(snapshot_json().to_string().as_bytes()).unwrap();
    let again = Snapshot::from_json(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(again, s);
    assert!(
        !serde_json::to_string(&Snapshot::default())
            .unwrap()
            .contains("auth")
    );
}

#[test]
fn the_token_cache_never_skips_a_per_request_check() {
    let a = access();
    let good = claims(json!({}));
    let (token, body) = (bearer("RS256", &good), payload(&good));
    let at = |now: u64, server: &str, authorization: &str| {
        a.authenticate(
            a.server(server).unwrap(),
            Some(authorization.as_bytes()),
            Some(body.as_bytes()),
            now,
        )
    };
    let first = at(NOW, "team", &token).unwrap().unwrap();
    let again = at(NOW + 1, "team", &token).unwrap().unwrap();
    assert!(Rc::ptr_eq(&first, &again), "read once");
    assert_eq!(
        at(NOW + 700, "team", &token),
        Err(Failure::Invalid("the token has expired"))
    );
    assert_eq!(
        at(NOW, "open", &token),
        Err(Failure::Invalid("the token's audience is not this server"))
    );
    // The same payload under another header is read again, and its algorithm refused.
    assert_eq!(
        at(NOW, "team", &bearer("none", &good)),
        Err(Failure::Invalid("the token's algorithm is not accepted"))
    );
    assert!(at(NOW, "team", &token).is_ok());
    // Payloads of one length that differ in one byte, early or in the last word, are
    // different tokens.
    for (x, y) in [("alice", "alicf"), ("bob-a", "cob-a")] {
        let (cx, cy) = (
            claims(json!({"sub": x, "jti": "t-0123456789"})),
            claims(json!({"sub": y, "jti": "t-0123456789"})),
        );
        let (px, py) = (payload(&cx), payload(&cy));
        assert_eq!(px.len(), py.len());
        let read = |c: &Value, p: &str| {
            a.authenticate(
                a.server("team").unwrap(),
                Some(bearer("RS256", c).as_bytes()),
                Some(p.as_bytes()),
                NOW,
            )
            .unwrap()
            .unwrap()
        };
        for _ in 0..2 {
            assert_eq!(read(&cx, &px).subject, x);
            assert_eq!(read(&cy, &py).subject, y);
        }
    }
}
