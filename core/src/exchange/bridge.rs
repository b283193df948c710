//! Calls between the protocol eras: a 2025-era client's call to a 2026-era upstream, and a
//! 2026-era client's call to a 2025-era upstream.
//!
//! What crosses: the catalog, tools, resources, prompts and completion. What cannot cross a
//! stateless gateway: a 2025 upstream's server-to-client requests (sampling, elicitation,
//! roots) towards a 2026 client, which has no stream to receive them on, and a 2026
//! upstream's `input_required` results towards a 2025 client, which would need the gateway
//! to hold the call while it asks. So the capabilities those need are never declared on a
//! bridged call: a well-behaved upstream then does without them or answers -32021
//! (missing required client capability) — a defined error, never a hang.

use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{Forward, Header};
use crate::config::Config;
use crate::jsonrpc::{Message, write_json_string};
use crate::mcp::{self, Method};
use crate::mirror;
use crate::session::Claims;
use crate::snapshot::DEFAULT_SESSION_TTL_SECONDS;

/// The version a 2026-era client's calls reach a 2025-era upstream under.
pub(crate) const LEGACY_VERSION: &str = "2025-11-25";
/// The 2026-era version a 2025-era client's calls reach a 2026-era upstream under.
const MODERN_VERSION: &str = "2026-07-28";
/// Client capabilities that need a stream back to the client, which a bridged call lacks.
const UNBRIDGEABLE: [&str; 3] = ["sampling", "elicitation", "roots"];

/// `capabilities` without those a bridged call cannot serve (an object; `{}` when absent
/// or unreadable).
fn bridgeable(capabilities: Option<&str>) -> String {
    let mut caps = capabilities
        .and_then(|c| serde_json::from_str::<serde_json::Map<String, Value>>(c).ok())
        .unwrap_or_default();
    for key in UNBRIDGEABLE {
        caps.remove(key);
    }
    serde_json::to_string(&caps).unwrap_or_else(|_| "{}".into())
}

/// The 2026-era envelope's members for a 2025-era client's call (`session`: its session,
/// whose token holds what it declared in `initialize`; `log_level`: what it last set with
/// `logging/setLevel`, which a 2026-era upstream takes per request).
pub(crate) fn envelope(session: Option<&Claims>, log_level: Option<&str>) -> Vec<u8> {
    let caps = bridgeable(
        session
            .and_then(|c| c.capabilities.as_ref())
            .map(|c| c.get()),
    );
    let mut out = Vec::with_capacity(160 + caps.len());
    out.push(b'"');
    out.extend_from_slice(mcp::META_PROTOCOL_VERSION.as_bytes());
    out.extend_from_slice(b"\":");
    write_json_string(&mut out, MODERN_VERSION);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(mcp::META_CLIENT_CAPABILITIES.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(caps.as_bytes());
    if let Some(info) = session.and_then(|c| c.client_info.as_ref()) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(mcp::META_CLIENT_INFO.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(info.get().as_bytes());
    }
    if let Some(level) = log_level.filter(|l| mcp::log_level_rank(l).is_some()) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(mcp::META_LOG_LEVEL.as_bytes());
        out.extend_from_slice(b"\":");
        write_json_string(&mut out, level);
    }
    out
}

/// The first byte at or after `at` that is not JSON whitespace.
fn next_token(body: &[u8], at: usize) -> Option<u8> {
    body.get(at..)?
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Where and what to insert so `body`'s `params._meta` holds `members`: into an existing
/// `_meta`, else a new `_meta` in `params`, else new `params` in the message.
pub(crate) fn insert_envelope(body: &[u8], msg: &Message, members: &[u8]) -> (u64, u64, Vec<u8>) {
    let open_of = |offset: Option<u64>| offset.and_then(|o| usize::try_from(o).ok());
    let insert = |at: usize, text: Vec<u8>| {
        let at = at as u64;
        (at, at, text)
    };
    if let Some(open) = open_of(msg.meta.open) {
        let mut text = members.to_vec();
        if next_token(body, open + 1) != Some(b'}') {
            text.push(b',');
        }
        return insert(open + 1, text);
    }
    let mut meta = b"\"_meta\":{".to_vec();
    meta.extend_from_slice(members);
    meta.push(b'}');
    if let Some(open) = open_of(msg.params_open) {
        if next_token(body, open + 1) != Some(b'}') {
            meta.push(b',');
        }
        return insert(open + 1, meta);
    }
    // No params: the message object always has members (`jsonrpc`, `method`).
    let start = body.iter().position(|b| *b == b'{').map_or(0, |p| p + 1);
    let mut text = b"\"params\":{".to_vec();
    text.extend_from_slice(&meta);
    text.extend_from_slice(b"},");
    insert(start, text)
}

/// The members of the 2026-era envelope, which a 2025-era upstream must not see: one that
/// also speaks the 2026 era would take the call for one of that era and refuse it for the
/// 2025 version header it comes with.
const ENVELOPE_MEMBERS: [&str; 4] = [
    mcp::META_PROTOCOL_VERSION,
    mcp::META_CLIENT_CAPABILITIES,
    mcp::META_CLIENT_INFO,
    mcp::META_LOG_LEVEL,
];

/// `body` (a 2026-era request) without its envelope members in `params._meta` (and without
/// `_meta` when nothing else is in it), for a 2025-era upstream. Bridged calls only: the
/// body is parsed and written again, which the common paths never do. `None` when the body
/// is not a JSON object.
pub(crate) fn strip_envelope(body: &[u8]) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    if let Some(params) = doc.get_mut("params").and_then(Value::as_object_mut)
        && let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut)
    {
        for member in ENVELOPE_MEMBERS {
            meta.remove(member);
        }
        if meta.is_empty() {
            params.remove("_meta");
        }
    }
    doc.is_object()
        .then(|| serde_json::to_vec(&doc).ok())
        .flatten()
}

/// `body` with the name at `rename`'s span replaced by its JSON string and `insert` (an
/// edit from [`insert_envelope`]) applied; `None` when a span lies outside the body. The
/// common case, a rename alone, is one copy into one buffer: it runs on every routed call.
pub(crate) fn rewrite(
    body: &[u8],
    rename: Option<((u64, u64), &str)>,
    insert: Option<(u64, u64, Vec<u8>)>,
) -> Option<Vec<u8>> {
    match (rename, insert) {
        (Some(((start, end), name)), None) => {
            let (start, end) = (usize::try_from(start).ok()?, usize::try_from(end).ok()?);
            let (head, tail) = (body.get(..start)?, body.get(end..)?);
            let mut out = Vec::with_capacity(body.len() + name.len() + 8);
            out.extend_from_slice(head);
            write_json_string(&mut out, name);
            out.extend_from_slice(tail);
            Some(out)
        }
        (rename, insert) => {
            let mut edits: Vec<(u64, u64, Vec<u8>)> = insert.into_iter().collect();
            if let Some(((start, end), name)) = rename {
                let mut literal = Vec::with_capacity(name.len() + 2);
                write_json_string(&mut literal, name);
                edits.push((start, end, literal));
            }
            splice(body, edits)
        }
    }
}

/// Applies byte-range replacements (start, end, with) to `body`; `None` when one lies
/// outside it or they overlap.
pub(crate) fn splice(body: &[u8], mut edits: Vec<(u64, u64, Vec<u8>)>) -> Option<Vec<u8>> {
    edits.sort_by_key(|(start, _, _)| *start);
    let extra: usize = edits.iter().map(|(_, _, w)| w.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0usize;
    for (start, end, with) in edits {
        let (start, end) = (usize::try_from(start).ok()?, usize::try_from(end).ok()?);
        if start < at || end < start {
            return None;
        }
        out.extend_from_slice(body.get(at..start)?);
        out.extend_from_slice(&with);
        at = end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(out)
}

/// The headers a 2026-era upstream requires of a 2025-era client's call: its version, its
/// method, and its target (the upstream's name for it when `renamed`).
pub(crate) fn mirror_headers(msg: &Message, renamed: Option<&str>, forward: &mut Forward) {
    forward.headers.push((
        Header::Named("mcp-protocol-version"),
        Some(MODERN_VERSION.to_owned()),
    ));
    if let Some(method) = &msg.method {
        forward.headers.push((
            Header::Named("mcp-method"),
            Some(method.as_str().to_owned()),
        ));
        if method.names_its_target() {
            let target = if *method == Method::ResourcesRead {
                msg.uri.as_deref()
            } else {
                renamed.or(msg.name.as_deref())
            };
            if let Some(target) = target {
                forward
                    .headers
                    .push((Header::Named("mcp-name"), Some(mirror::encode(target))));
            }
        }
    }
}

/// The session a 2026-era client's calls to 2025-era upstream `upstream` of `server` run
/// in: one per (server, upstream, what the client declares, the log level it asks for),
/// shared by every such client of this Envoy, since the era has no sessions of its own to
/// tell them apart. The level is the session's (`logging/setLevel` when it opens), so
/// clients asking for different levels never share one. On a virtual server with identity,
/// the principal (`principal`: its digest) is part of the identity too: principals never
/// share an upstream session.
pub(crate) fn stateless_client_session(
    config: &Config,
    server: &str,
    upstream: &str,
    body: &[u8],
    msg: &Message,
    now: u64,
    principal: Option<&str>,
) -> Claims {
    let raw = |span: Option<(u64, u64)>| {
        let (a, b) = span?;
        let bytes = body.get(usize::try_from(a).ok()?..usize::try_from(b).ok()?)?;
        Some(std::str::from_utf8(bytes).ok()?.to_owned())
    };
    let caps = bridgeable(raw(msg.meta.capabilities_span).as_deref());
    let info = raw(msg.meta.client_info_span).filter(|i| i.len() <= 1024);
    let level = log_level(msg).unwrap_or_default();
    let mut digest = Sha256::new();
    for part in [
        server,
        upstream,
        &caps,
        info.as_deref().unwrap_or_default(),
        level,
        principal.unwrap_or_default(),
    ] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    let id: String = digest
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let ttl = config
        .edge
        .sessions()
        .map_or(DEFAULT_SESSION_TTL_SECONDS, |s| s.ttl_seconds);
    Claims {
        id,
        server: server.to_owned(),
        protocol_version: LEGACY_VERSION.to_owned(),
        issued_at: now,
        expires_at: now.saturating_add(ttl),
        capabilities: RawValue::from_string(caps).ok(),
        client_info: info.and_then(|i| RawValue::from_string(i).ok()),
        principal: principal.map(str::to_owned),
    }
}

/// The log level a 2026-era request asks for, if it names a known one.
pub(crate) fn log_level(msg: &Message) -> Option<&str> {
    msg.meta
        .log_level
        .as_deref()
        .filter(|l| mcp::log_level_rank(l).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::stream::{Body, MessageParser, Options};

    #[test]
    fn a_bridged_call_loses_the_envelope_and_keeps_the_rest_of_meta() {
        let strip = |body: &str| -> Value {
            serde_json::from_slice(&strip_envelope(body.as_bytes()).unwrap()).unwrap()
        };
        let envelope = r#""io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"},"io.modelcontextprotocol/logLevel":"info""#;
        let with_more = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"n":0.1}},"_meta":{{{envelope},"progressToken":7}}}}}}"#
        );
        assert_eq!(
            strip(&with_more),
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                "params":{"name":"echo","arguments":{"n":0.1},"_meta":{"progressToken":7}}})
        );
        let only = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{{{envelope}}}}}}}"#
        );
        assert_eq!(
            strip(&only),
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}})
        );
        assert!(strip_envelope(b"[1]").is_none());
        assert!(strip_envelope(b"not json").is_none());
    }

    fn parse(body: &str) -> Message {
        let mut p = MessageParser::new(Options::default());
        p.feed(body.as_bytes()).unwrap();
        match p.finish().unwrap() {
            Body::Single(m) => m,
            Body::Batch(_) => panic!("batch"),
        }
    }

    #[test]
    fn the_envelope_goes_into_meta_params_or_a_new_params() {
        let members = br#""k":1"#;
        for (body, want) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":2}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"k":1,"progressToken":2}}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{ }}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"k":1 }}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"k":1},"name":"t"}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"k":1}}}"#,
            ),
            (
                r#" {"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                r#" {"params":{"_meta":{"k":1}},"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            ),
        ] {
            let msg = parse(body);
            let edit = insert_envelope(body.as_bytes(), &msg, members);
            let out = splice(body.as_bytes(), vec![edit]).unwrap();
            assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
            serde_json::from_slice::<Value>(&out).unwrap();
        }
    }

    #[test]
    fn splices_apply_in_order_and_refuse_overlaps() {
        let body = b"0123456789";
        let out = splice(
            body,
            vec![
                (8, 9, b"X".to_vec()),
                (2, 4, b"ab".to_vec()),
                (5, 5, b"+".to_vec()),
            ],
        );
        assert_eq!(out.as_deref(), Some(&b"01ab4+567X9"[..]));
        assert_eq!(splice(body, vec![(2, 5, vec![]), (4, 6, vec![])]), None);
        assert_eq!(splice(body, vec![(2, 20, vec![])]), None);
    }

    #[test]
    fn bridged_calls_never_declare_what_they_cannot_serve() {
        let caps = r#"{"sampling":{},"elicitation":{"form":{}},"roots":{"listChanged":true},"experimental":{"x":1}}"#;
        let claims = Claims {
            id: "0".into(),
            server: "s".into(),
            protocol_version: "2025-11-25".into(),
            issued_at: 0,
            expires_at: 1,
            capabilities: RawValue::from_string(caps.into()).ok(),
            client_info: RawValue::from_string(r#"{"name":"c","version":"1"}"#.into()).ok(),
            principal: None,
        };
        let text = format!(
            "{{{}}}",
            String::from_utf8(envelope(Some(&claims), Some("warning"))).unwrap()
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v[mcp::META_PROTOCOL_VERSION], "2026-07-28");
        assert_eq!(
            v[mcp::META_CLIENT_CAPABILITIES],
            serde_json::json!({"experimental": {"x": 1}})
        );
        assert_eq!(v[mcp::META_CLIENT_INFO]["name"], "c");
        assert_eq!(v[mcp::META_LOG_LEVEL], "warning");
        let bare: Value = serde_json::from_str(&format!(
            "{{{}}}",
            String::from_utf8(envelope(None, Some("loud\""))).unwrap()
        ))
        .unwrap();
        assert_eq!(bare[mcp::META_CLIENT_CAPABILITIES], serde_json::json!({}));
        assert_eq!(
            bare.get(mcp::META_LOG_LEVEL),
            None,
            "unknown levels stay out"
        );
    }

    #[test]
    fn clients_declaring_alike_share_one_upstream_session() {
        let config = Config::default();
        let call_at = |caps: &str, level: &str| {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{caps}{level}}}}}}}"#
            );
            let msg = parse(&body);
            stateless_client_session(&config, "s", "u", body.as_bytes(), &msg, 100, None)
        };
        let call = |caps: &str| call_at(caps, "");
        let a = call(r#"{"sampling":{}}"#);
        let info = r#","io.modelcontextprotocol/logLevel":"info""#;
        assert_ne!(
            a.id,
            call_at("{}", info).id,
            "another level, another session"
        );
        assert_eq!(call_at("{}", info).id, call_at(r#"{"roots":{}}"#, info).id);
        let bogus = r#","io.modelcontextprotocol/logLevel":"loud""#;
        assert_eq!(a.id, call_at("{}", bogus).id, "unknown levels do not count");
        assert_eq!(a.id, call("{}").id, "what cannot be bridged does not count");
        assert_ne!(a.id, call(r#"{"experimental":{}}"#).id);
        assert_eq!(a.protocol_version, LEGACY_VERSION);
        assert_eq!(a.capabilities.as_ref().map(|c| c.get()), Some("{}"));
    }
}
