//! Authorization rules: a condition the control plane accepts ([`mcpgw::rules::check`]) is
//! decided at the edge as CEL decides it. A corpus of conditions (every construct of the
//! edge's subset) is evaluated over a set of activations by the `cel` crate's interpreter
//! and by the edge's evaluator (`mcpgw_core::auth::rules`), and then decided by the edge's
//! whole authorization stage (`ServerPolicy::authorize`, arguments parsed as the filter
//! parses them) as an allow rule and as a deny rule: an evaluation error never allows and
//! always denies. What the edge would read differently is refused when written, named.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cel::{Context, Value as CelValue};
use mcpgw::rules::check;
use mcpgw_core::auth::rules::{Args, Env, Expr, Outcome};
use mcpgw_core::auth::{Access, Decision, Permission, Principal};
use mcpgw_core::jsonrpc::stream::{Body, MessageParser, Options};
use mcpgw_core::snapshot::Snapshot;
use serde_json::{Value, json};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://idp.example.com";
const RESOURCE: &str = "https://gw.example.com/servers/team/mcp";
const SERVER: &str = "team";
const TOOLS: [&str; 3] = ["time__now", "fs__write", "admin__wipe"];

/// Every construct of the subset, over values that hold, fail, do not exist or have
/// another type than the rule expects.
const CORPUS: &[&str] = &[
    // comparisons, literals, numbers across int and double
    "principal.sub == 'alice'",
    "principal.sub != \"alice\"",
    "principal.iss == 'https://idp.example.com'",
    "claims.level > 2",
    "claims.level >= 3 && claims.level <= 10",
    "claims.level < 3.5",
    "claims.level == 3.0",
    "-claims.level < -2",
    "claims.ratio == 0.5",
    "claims.ratio < 1",
    "claims.level == claims.ratio",
    "claims.big > 1000000",
    "claims.sub < 'b'",
    "claims.sub >= 'bob'",
    "claims.level == 'x'",
    "claims.level < 'x'",
    "claims.admin == true",
    "claims.admin",
    "!claims.admin",
    "claims.admin == null",
    "claims.admin != null",
    "claims.admin > false",
    "principal.email == null",
    "principal.email != null && principal.email.endsWith('@example.com')",
    "null == null",
    "claims.missing == 1",
    "claims.missing",
    "claims.level",
    "claims.sub",
    // logic, with CEL's error absorption
    "claims.missing || principal.sub == 'alice'",
    "principal.sub == 'alice' || claims.missing",
    "claims.missing && false",
    "false && claims.missing",
    "claims.missing && true",
    "!(claims.missing)",
    "(principal.sub == 'alice') == true",
    "claims.level > 2 ? claims.admin : true",
    "claims.missing ? true : false",
    "principal.sub == 'alice' ? claims.missing : false",
    "'eng' in principal.teams && !request.name.startsWith('admin__')",
    // in
    "'eng' in principal.teams",
    "'hr' in principal.teams",
    "'developer' in principal.roles && 'tools.execute' in principal.permissions",
    "'level' in claims",
    "'missing' in claims",
    "claims.level in [1, 2, 3]",
    "claims.level in [3.0]",
    "claims.sub in ['alice', 'bob']",
    "'a' in args.tags",
    "'path' in args",
    "args.n in args",
    "claims.admin in claims",
    "claims.nested in claims",
    "'x' in claims.level",
    "principal.sub in claims.tags",
    "null in claims.tags",
    // has, size
    "has(claims.email)",
    "has(claims.nested.a)",
    "has(claims.nested.a.b)",
    "has(args.path)",
    "has(args.opts.force)",
    "has(request.name)",
    "has(principal.email)",
    "has(claims.level.x)",
    "size(principal.teams) > 1",
    "principal.teams.size() == 0",
    "size(claims.sub) == 5",
    "size('héllo') == 5",
    "size(args) == 0",
    "size(claims.nested) == 1",
    "size(claims.level) == 1",
    "size(principal) == 6",
    // strings
    "request.name.startsWith('fs__')",
    "request.name.endsWith('__now')",
    "request.name.contains('__')",
    "claims.sub.startsWith('')",
    "args.path.startsWith('/etc')",
    "args.path.contains('passwd')",
    "claims.level.startsWith('3')",
    "claims.sub.endsWith(claims.level)",
    // indexing
    "args['path'] == '/tmp/x'",
    "args.tags[0] == 'a'",
    "args.tags[1.0] == 'b'",
    "args.tags[5] == 'a'",
    "args.tags[-1] == 'a'",
    "args.tags[0.5] == 'a'",
    "claims['nested']['a']['b'] == 'c'",
    "principal['sub'] == 'alice'",
    "request['method'] == 'tools/call'",
    "principal.teams[0] == 'eng'",
    "args.tags[claims.level] == 'x'",
    "['a', 'b', 'c', 'd'][claims.level] == 'd'",
    "claims[claims.sub] == 1",
    // lists, maps
    "[1, 'a', null] == [1, 'a', null]",
    "principal.teams == ['eng', 'ops']",
    "[1, 2] == [1.0, 2.0]",
    "args.tags == ['a', 'b']",
    "[] == []",
    "[claims.missing, 1] == [1, 1]",
    "size([claims.level, 1]) == 2",
    "claims.nested.a.b == 'c'",
    "claims.nested == claims.nested",
    "claims.nested == claims.same",
    "args.opts == claims.opts",
    "args.opts.force",
    "args.opts.force == true",
    "claims.tags == args.tags",
    // quantifiers
    "principal.teams.exists(t, t.startsWith('o'))",
    "principal.teams.all(t, t != 'hr')",
    "args.tags.exists(t, t == 'a')",
    "args.tags.all(t, t.size() == 1)",
    "claims.nested.exists(k, k == 'a')",
    "args.exists(k, k == 'path')",
    "[1, 2, 3].all(x, x > 0)",
    "[0, 1].exists(x, x == 1 ? true : claims.missing)",
    "[0, 1].all(x, x == 0 ? false : claims.missing)",
    "[1, 2].exists(x, claims.missing)",
    "[].all(x, claims.missing)",
    "principal.teams.exists(t, principal.roles.exists(r, r == t))",
    "claims.level.exists(x, true)",
    "args.tags.exists(t, t > 'a')",
    "args.tags.exists(t, args.tags.exists(t, t == 'b'))",
    // request
    "request.method == 'tools/call'",
    "request.server == 'team'",
    "request.name == 'fs__write' && has(args.path) && args.path.startsWith('/etc')",
    "request.name == 'fs__write' && !has(args.path)",
];

/// Claims of the three principals (merged into a valid token's).
fn principals() -> Vec<Value> {
    vec![
        json!({"sub": "alice", "email": "alice@example.com", "teams": ["eng", "ops"],
               "roles": ["developer"], "level": 3, "ratio": 0.5, "big": 18_446_744_073_709_551_615u64,
               "nested": {"a": {"b": "c"}, "n": 1}, "same": {"a": {"b": "c"}, "n": 1.0},
               "admin": false, "tags": ["a", "b"], "opts": {"force": true}}),
        json!({"sub": "bob", "teams": [], "roles": ["developer", "viewer"], "level": "3",
               "ratio": 1, "nested": {"a": 1}, "same": {"a": 2}, "admin": true,
               "tags": ["bob"], "opts": {}}),
        json!({"sub": "carol", "email": "carol@corp.example", "teams": ["ops"],
               "roles": ["platform_admin"], "level": 10, "nested": {}, "same": {},
               "admin": null, "tags": [], "opts": {"force": false}}),
    ]
}

/// Arguments of the calls, as the client sends them.
fn arguments() -> Vec<&'static str> {
    vec![
        r#"{"path": "/tmp/x", "n": 2, "tags": ["a", "b"], "opts": {"force": true}}"#,
        r#"{"path": "/etc/passwd", "n": 2.5, "tags": [], "opts": {}}"#,
        r#"{}"#,
        r#"{"path": 7, "n": "2", "tags": "a", "opts": null, "extra": [1, {"x": 1}]}"#,
    ]
}

/// A claims value as the edge reads it (and so as CEL gets it here): integers that fit
/// an `int` are ints, every other number a double.
fn to_cel(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => CelValue::Int(i),
            None => CelValue::Float(n.as_f64().unwrap()),
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(a) => CelValue::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<String, CelValue> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            CelValue::Map(map.into())
        }
    }
}

/// What one evaluation is over.
struct Activation {
    principal: Value,
    claims: Value,
    name: &'static str,
    args: Value,
}

/// The `cel` crate's verdict: true, false, or an error (an evaluation error, or a value
/// that is not a bool).
fn cel_outcome(env: &Arc<cel::Env>, rule: &str, a: &Activation) -> Outcome {
    let program = env.compile(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    run_cel(env, &program, a)
}

fn run_cel(env: &Arc<cel::Env>, program: &cel::Program, a: &Activation) -> Outcome {
    let mut ctx = Context::with_env(Arc::clone(env));
    ctx.add_variable_from_value("principal", to_cel(&a.principal));
    ctx.add_variable_from_value("claims", to_cel(&a.claims));
    ctx.add_variable_from_value(
        "request",
        to_cel(&json!({"method": "tools/call", "name": a.name, "server": SERVER})),
    );
    ctx.add_variable_from_value("args", to_cel(&a.args));
    match program.execute(&ctx) {
        Ok(CelValue::Bool(b)) => Outcome::Bool(b),
        _ => Outcome::Error,
    }
}

fn edge_outcome(rule: &str, a: &Activation) -> Outcome {
    let expr = Expr::parse(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    expr.eval(&Env {
        principal: &a.principal,
        claims: &a.claims,
        method: "tools/call",
        name: Some(a.name),
        server: SERVER,
        args: Args::Json(&a.args),
    })
}

/// The edge's identity configuration with one virtual server whose rules are `rules`.
fn access(rules: Value) -> Access {
    let doc = json!({
        "auth": {"issuers": {"idp": {"issuer": ISS, "algorithms": ["RS256"]}}},
        "upstreams": {"u": {"cluster": "c"}},
        "servers": {SERVER: {
            "name": "Team",
            "tools": TOOLS.iter().map(|t| json!({"name": t, "upstream": "u", "upstream_name": t, "item": {"name": t}})).collect::<Vec<_>>(),
            "auth": {"resource": RESOURCE, "issuers": ["idp"], "rules": rules},
        }},
    });
    Access::new(&Snapshot::from_json(doc.to_string().as_bytes()).unwrap())
}

fn token(extra: &Value) -> String {
    let mut claims = json!({"iss": ISS, "aud": RESOURCE, "exp": NOW + 600, "nbf": NOW - 10,
                            "iat": NOW - 10, "jti": "t-1"});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
}

fn principal(access: &Access, claims: &Value) -> std::rc::Rc<Principal> {
    let server = access.server(SERVER).unwrap();
    access
        .authenticate(server, None, Some(token(claims).as_bytes()), NOW)
        .unwrap()
        .unwrap()
}

/// `principal` as rules see it, from what the edge authenticated.
fn principal_object(p: &Principal) -> Value {
    let permissions: Vec<&str> = Permission::ALL
        .iter()
        .filter(|x| p.has(**x))
        .map(|x| x.as_str())
        .collect();
    json!({"sub": p.subject, "iss": p.issuer, "email": p.email, "teams": p.teams,
           "roles": p.roles, "permissions": permissions})
}

/// How the edge decides a call of `name` with `args` (JSON text), parsing the arguments as
/// the filter does (only the fields the rules read).
fn decide(access: &Access, claims: &Value, name: &str, args: &str) -> Decision {
    let server = access.server(SERVER).unwrap();
    let p = principal(access, claims);
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{args}}}}}"#
    );
    let mut parser = MessageParser::new(Options::default());
    parser.feed(call.as_bytes()).unwrap();
    let Body::Single(msg) = parser.finish().unwrap() else {
        panic!("batch")
    };
    let parsed = server.parse_args(args.as_bytes()).unwrap();
    server.authorize(Some(&p), SERVER, &msg, Args::Json(&parsed))
}

#[test]
fn the_edge_decides_every_accepted_rule_as_cel_does() {
    let env = Arc::new(cel::Env::stdlib());
    let plain = access(json!([]));
    let mut disagree = Vec::new();
    let mut verdicts = [0usize; 3];
    for rule in CORPUS {
        if let Err(e) = check(rule) {
            disagree.push(format!("{rule}: refused when written: {e}"));
            continue;
        }
        let allow = access(json!([{"name": "r", "when": rule}]));
        let deny = access(json!([{"name": "r", "effect": "deny", "when": rule},
                                 {"name": "all", "when": "true"}]));
        for claims in principals() {
            let who = principal(&plain, &claims);
            for name in TOOLS {
                for args in arguments() {
                    let a = Activation {
                        principal: principal_object(&who),
                        claims: who.claims.clone(),
                        name,
                        args: serde_json::from_str(args).unwrap(),
                    };
                    let want = cel_outcome(&env, rule, &a);
                    verdicts[match want {
                        Outcome::Bool(true) => 0,
                        Outcome::Bool(false) => 1,
                        _ => 2,
                    }] += 1;
                    let at = format!("{rule} [{} {name} {args}]", claims["sub"]);
                    let got = edge_outcome(rule, &a);
                    if got != want {
                        disagree.push(format!("{at}: cel {want:?}, edge {got:?}"));
                    }
                    // An allow rule allows only when it holds.
                    let allowed = decide(&allow, &claims, name, args) == Decision::Allow;
                    if allowed != (want == Outcome::Bool(true)) {
                        disagree.push(format!("{at}: cel {want:?}, allow rule allowed: {allowed}"));
                    }
                    // A deny rule denies unless it is false: an error denies.
                    let denied =
                        decide(&deny, &claims, name, args) == Decision::Deny(Some("r".into()));
                    if denied != (want != Outcome::Bool(false)) {
                        disagree.push(format!("{at}: cel {want:?}, deny rule denied: {denied}"));
                    }
                }
            }
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
    // The corpus exercises all three verdicts, each often.
    assert!(verdicts.iter().all(|n| *n > 300), "{verdicts:?}");
}

#[test]
fn what_the_edge_would_read_differently_is_refused_named_and_placed() {
    // (condition, line, column, what the reason says)
    let cases: &[(&str, usize, usize, &str)] = &[
        ("principal.sub ==", 1, 17, "Syntax error"),
        (
            "principal.sub == 'alice' &&\n  claims.x +",
            2,
            13,
            "Syntax error",
        ),
        ("has(claims)", 1, 5, "has()"),
        ("principal.teams.exists(1, true)", 1, 24, "simple name"),
        ("request.nmae == 'x'", 1, 9, "request has no field `nmae`"),
        (
            "request['nope'] == 'x'",
            1,
            9,
            "request has no field `nope`",
        ),
        (
            "principal.groups == ['a']",
            1,
            11,
            "principal has no field `groups`",
        ),
        (
            "has(principal.group)",
            1,
            15,
            "principal has no field `group`",
        ),
        ("foo == 1", 1, 1, "unknown name `foo`"),
        ("request == request", 1, 1, "`request` is read by field"),
        ("'method' in request", 1, 13, "`request` is read by field"),
        ("principal.sub > 1", 1, 15, "have no order"),
        ("principal.sub == 1", 1, 15, "never equal"),
        ("1 < 2 < 3", 1, 7, "have no order"),
        (
            "principal.teams.startsWith('e')",
            1,
            17,
            "`startsWith` is a string's method",
        ),
        (
            "claims.s.startsWith(1)",
            1,
            21,
            "the argument of `startsWith` is an int",
        ),
        (
            "principal.teams['x'] == 'a'",
            1,
            17,
            "a list's index is a number",
        ),
        ("args[1] == 1", 1, 6, "a map's keys are strings"),
        ("1 in claims", 1, 3, "a map's keys are strings"),
        ("1 in principal.teams", 1, 3, "never in"),
        ("size(1) == 1", 1, 6, "`size` takes"),
        ("!principal.sub", 1, 2, "the operand of ! is a string"),
        ("principal.sub", 1, 1, "a rule is a condition"),
        (
            "principal.sub == 'a' ? 1 : 2",
            1,
            1,
            "a rule is a condition",
        ),
        ("claims.x.matches('^a')", 1, 10, "`matches`"),
        ("args.n + 1 > 2", 1, 8, "arithmetic (`+`)"),
        ("args.n % 2 == 0", 1, 8, "arithmetic (`%`)"),
        ("{'a': 1}.a == 1", 1, 1, "map literals"),
        (
            "google.protobuf.Value{} == null",
            1,
            22,
            "message construction",
        ),
        ("int(claims.x) == 1", 1, 1, "type conversions (`int(…)`)"),
        ("string(claims.x) == '1'", 1, 1, "type conversions"),
        ("claims.t.exists_one(x, true)", 1, 10, "`exists_one` macro"),
        ("claims.t.map(x, x).size() > 0", 1, 10, "`map` macro"),
        (
            "claims.t.filter(x, true).size() > 0",
            1,
            10,
            "`filter` macro",
        ),
        (
            "claims.x.lowerAscii() == 'a'",
            1,
            10,
            "unknown method `lowerAscii`",
        ),
        ("max(1, 2) == 2", 1, 1, "unknown function `max`"),
        ("claims.n == 1u", 1, 13, "unsigned integers"),
        ("claims.b == b'x'", 1, 13, "bytes literals"),
        ("claims.n == 0x10", 1, 13, "hexadecimal"),
        ("claims.n == 1e3", 1, 13, "digits.digits"),
        ("claims.s == r'a'", 1, 13, "raw strings"),
        ("claims.s == '''a'''", 1, 13, "triple-quoted"),
        ("claims.s == 'é\\x41'", 1, 15, "escapes"),
        (
            "principal.teams.exists(claims, true)",
            1,
            24,
            "`claims` cannot name a variable",
        ),
        ("principal.teams.exists(t, t > 1)", 1, 29, "have no order"),
        (
            "claims.x == -9223372036854775808",
            1,
            14,
            "the edge refuses it",
        ),
    ];
    let mut wrong = Vec::new();
    for (src, line, column, says) in cases {
        match check(src) {
            Ok(()) => wrong.push(format!("{src}: accepted")),
            Err(e) if (e.line, e.column) != (*line, *column) || !e.reason.contains(says) => {
                wrong.push(format!("{src}: {e} (want {line}:{column} {says})"))
            }
            Err(_) => {}
        }
    }
    let deep = format!("{}true{}", "(".repeat(60), ")".repeat(60));
    match check(&deep) {
        Err(e) if e.reason.contains("nested too deeply") => {}
        other => wrong.push(format!("60 parentheses: {other:?}")),
    }
    let long = format!("'{}' == claims.x", "a".repeat(5000));
    match check(&long) {
        Err(e) if e.reason.contains("longer than 4096 bytes") => {}
        other => wrong.push(format!("a 5 kB rule: {other:?}")),
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Conditions combined two by two (`&&`, `||`, `!`, `?:`, inside `exists`), so errors and
/// absorption meet every kind of operand: a deterministic sample of the pairs.
#[test]
fn combined_conditions_decide_as_cel_does() {
    let env = Arc::new(cel::Env::stdlib());
    let plain = access(json!([]));
    let mut activations = Vec::new();
    for claims in principals() {
        let who = principal(&plain, &claims);
        for (i, args) in arguments().into_iter().enumerate() {
            activations.push(Activation {
                principal: principal_object(&who),
                claims: who.claims.clone(),
                name: TOOLS[i % TOOLS.len()],
                args: serde_json::from_str(args).unwrap(),
            });
        }
    }
    let n = CORPUS.len();
    let mut disagree = Vec::new();
    let mut checked = 0;
    for k in 0..400 {
        // `a` walks the corpus (three times over), `b` jumps through it.
        let (a, b) = (CORPUS[k % n], CORPUS[(k * 37 + 11) % n]);
        let rule = match k % 5 {
            0 => format!("({a}) && ({b})"),
            1 => format!("({a}) || ({b})"),
            2 => format!("!({a}) || !({b})"),
            3 => format!("({a}) ? ({b}) : !({b})"),
            _ => format!("[1, 2].exists(x, x == 1 ? ({a}) : ({b}))"),
        };
        if let Err(e) = check(&rule) {
            disagree.push(format!("{rule}: refused when written: {e}"));
            continue;
        }
        let program = env.compile(&rule).unwrap();
        for act in &activations {
            let (want, got) = (run_cel(&env, &program, act), edge_outcome(&rule, act));
            checked += 1;
            if want != got {
                disagree.push(format!(
                    "{rule} [{} {} {}]: cel {want:?}, edge {got:?}",
                    act.claims["sub"], act.name, act.args
                ));
            }
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
    assert_eq!(checked, 400 * activations.len());
}
