//! The upstream-identity stage driven as the filter drives it: identity headers on routed
//! calls, the token exchange held, answered, cached per principal, and refused by step.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::super::{CallAnswer, Exchange, Forward, Header, Host, Step};
use crate::auth::tests::{NOW, bearer, claims, payload, snapshot_json};
use crate::config::Config;
use crate::header_map::serialize;
use crate::metrics::ToolLabel;
use crate::reason::Reason;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Default)]
struct Recorder {
    rejected: Vec<&'static str>,
    table: HashMap<String, Vec<u8>>,
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
        out.fill(3);
        true
    }
    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        (self.table.get(key).cloned(), None)
    }
    fn shared_set(&mut self, key: &str, value: &[u8], _: Option<u32>) -> bool {
        self.table.insert(key.to_owned(), value.to_vec());
        true
    }
}

fn config(identity: Value) -> Rc<Config> {
    let mut doc = snapshot_json();
    doc["upstreams"]["u"]["identity"] = identity;
    Rc::new(Config::from_bytes(doc.to_string().as_bytes()).unwrap())
}

fn exchange_mode() -> Value {
    json!({"mode": "token-exchange", "cluster": "tx", "path": "/token", "authority": "as.example",
           "audience": "upstream-u"})
}

/// Sends a `tools/call` of `time__now` to `team` as `sub`: the exchange and its step.
fn call(cfg: &Rc<Config>, sub: &str, host: &mut Recorder) -> (Exchange, Step, String) {
    let c = claims(json!({"sub": sub}));
    let token = bearer("RS256", &c);
    let p = payload(&c);
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "time__now", "arguments": {}}})
    .to_string();
    let h = [
        (":method", "POST"),
        (":path", "/servers/team/mcp"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-11-25"),
        ("authorization", token.as_str()),
        (crate::auth::PAYLOAD_HEADER, p.as_str()),
    ];
    let mut x = Exchange::new(Rc::clone(cfg));
    assert_eq!(
        x.on_request_head(&serialize(&h), false, host),
        Step::ReadBody
    );
    let bytes = body.into_bytes();
    let step = x.on_request_body(
        bytes.len(),
        true,
        |s, l| bytes.get(s..s + l).map(<[u8]>::to_vec),
        host,
    );
    (x, step, token.trim_start_matches("Bearer ").to_owned())
}

fn set<'a>(f: &'a Forward, name: &str) -> Option<Option<&'a str>> {
    f.headers
        .iter()
        .rev()
        .find(|(h, _)| *h == Header::Named(Box::leak(name.to_owned().into_boxed_str())))
        .map(|(_, v)| v.as_deref())
}

fn forward(step: &Step) -> &Forward {
    match step {
        Step::Forward(f) => f,
        other => panic!("expected a forward, got {other:?}"),
    }
}

#[test]
fn static_and_none_leave_it_to_the_cluster() {
    for identity in [json!({"mode": "static"}), json!({"mode": "none"})] {
        let cfg = config(identity);
        let (_, step, _) = call(&cfg, "alice", &mut Recorder::default());
        let f = forward(&step);
        assert_eq!(
            set(f, "authorization"),
            Some(None),
            "the client's token is removed"
        );
        assert_eq!(set(f, "x-mcpgw-identity"), None);
    }
}

#[test]
fn identity_header_carries_the_signed_principal() {
    let key = [9u8; 32];
    let cfg = config(
        json!({"mode": "identity-header", "key": URL_SAFE_NO_PAD.encode(key),
                            "kid": "u-1", "audience": "u", "issuer": "mcpgw"}),
    );
    let (_, step, _) = call(&cfg, "alice", &mut Recorder::default());
    let f = forward(&step);
    assert_eq!(
        set(f, "authorization"),
        Some(None),
        "the client's token is removed"
    );
    let jws = set(f, "x-mcpgw-identity").unwrap().unwrap();
    let parts: Vec<&str> = jws.split('.').collect();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        (claims["sub"].as_str(), claims["exp"].as_u64()),
        (Some("alice"), Some(NOW + 60))
    );
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    assert!(
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .is_ok()
    );
}

#[test]
fn token_exchange_holds_the_call_then_sends_the_exchanged_token_and_caches_it() {
    let cfg = config(exchange_mode());
    let mut host = Recorder::default();
    let (mut x, step, subject) = call(&cfg, "alice", &mut host);
    let Step::Call(calls) = step else {
        panic!("expected the exchange call, got {step:?}")
    };
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.cluster, "tx");
    let body = String::from_utf8(c.body.clone().unwrap()).unwrap();
    assert!(body.contains(&format!("subject_token={subject}")), "{body}");
    assert!(body.contains("audience=upstream-u"));
    assert!(x.reads_call_body(c.tag));
    let answer = CallAnswer {
        status: Some(200),
        session_id: None,
        body: Some(
            br#"{"access_token":"xt-alice","token_type":"Bearer","expires_in":600}"#.to_vec(),
        ),
    };
    let step = x.on_call_answer(c.tag, answer, &mut host);
    let f = forward(&step);
    assert_eq!(set(f, "authorization"), Some(Some("Bearer xt-alice")));
    assert_eq!(host.table.len(), 1, "cached once");

    // The same principal again: no exchange, the cached token.
    let (_, step, _) = call(&cfg, "alice", &mut host);
    assert_eq!(
        set(forward(&step), "authorization"),
        Some(Some("Bearer xt-alice"))
    );
    // Another principal: its own exchange.
    let (_, step, _) = call(&cfg, "bob", &mut host);
    assert!(matches!(step, Step::Call(_)), "{step:?}");
    // Past the cached token's use: exchanged again.
    let key = host.table.keys().next().unwrap().clone();
    host.table.insert(key, format!("{NOW}\nold").into_bytes());
    let (_, step, _) = call(&cfg, "alice", &mut host);
    assert!(matches!(step, Step::Call(_)), "{step:?}");
}

#[test]
fn token_exchange_failures_name_the_step_and_never_a_token() {
    let cfg = config(exchange_mode());
    let cases = [
        (
            "endpoint down",
            CallAnswer::default(),
            502,
            "token_exchange_failed",
            "did not answer",
        ),
        (
            "token refused",
            CallAnswer {
                status: Some(400),
                session_id: None,
                body: Some(br#"{"error":"invalid_grant"}"#.to_vec()),
            },
            401,
            "token_exchange_refused",
            "refused the client's token",
        ),
        (
            "gateway refused",
            CallAnswer {
                status: Some(401),
                session_id: None,
                body: Some(br#"{"error":"invalid_client"}"#.to_vec()),
            },
            502,
            "token_exchange_failed",
            "invalid_client",
        ),
    ];
    for (name, answer, status, label, says) in cases {
        let mut host = Recorder::default();
        let (mut x, step, subject) = call(&cfg, "alice", &mut host);
        let Step::Call(calls) = step else {
            panic!("{name}: {step:?}")
        };
        let Step::Reply(r) = x.on_call_answer(calls[0].tag, answer, &mut host) else {
            panic!("{name}: expected a reply")
        };
        assert_eq!(r.status, status, "{name}");
        assert_eq!(host.rejected, [label], "{name}");
        let body = String::from_utf8(r.body.unwrap()).unwrap();
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["id"], 7, "{name}");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("token exchange for upstream \"u\""),
            "{name}: {message}"
        );
        assert!(message.contains(says), "{name}: {message}");
        assert!(!body.contains(&subject), "{name}: the token leaked");
        assert!(host.table.is_empty(), "{name}: nothing cached");
    }
}

#[test]
fn token_exchange_without_a_principal_is_refused() {
    let mut doc = snapshot_json();
    doc["upstreams"]["u"]["identity"] = exchange_mode();
    let cfg = Rc::new(Config::from_bytes(doc.to_string().as_bytes()).unwrap());
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "time__now", "arguments": {}}})
    .to_string();
    let h = [
        (":method", "POST"),
        (":path", "/servers/plain/mcp"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let mut host = Recorder::default();
    let mut x = Exchange::new(cfg);
    x.on_request_head(&serialize(&h), false, &mut host);
    let bytes = body.into_bytes();
    let step = x.on_request_body(
        bytes.len(),
        true,
        |s, l| bytes.get(s..s + l).map(<[u8]>::to_vec),
        &mut host,
    );
    let Step::Reply(r) = step else {
        panic!("{step:?}")
    };
    assert_eq!(r.status, 401);
    assert_eq!(host.rejected, ["token_exchange_refused"]);
}
