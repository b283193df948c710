//! Request policy decisions: what the filter answers for a request's head and body.
//!
//! [`Gate`] is the configured policy compiled once (in `on_configure`) into lookup sets;
//! every per-request decision is a plain function of the request and the gate.

use crate::jsonrpc::stream::Options;
use crate::jsonrpc::{Kind, Message};
use crate::mcp::{self, Method};
pub use crate::reason::{Reason, Rejection};
use crate::snapshot::Snapshot;
use std::collections::HashSet;

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct Gate {
    snapshot: Snapshot,
    allowed_methods: Option<HashSet<String>>,
    denied_tools: HashSet<String>,
    parse: Options,
}

/// The parts of a request head the policy looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Head<'a> {
    /// HTTP method (`:method`).
    pub method: &'a str,
    /// `content-type`.
    pub content_type: Option<&'a str>,
    /// `accept`.
    pub accept: Option<&'a str>,
    /// `mcp-protocol-version`.
    pub protocol_version: Option<&'a str>,
    /// `content-length`.
    pub content_length: Option<&'a str>,
}

/// What to do with a request after its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadVerdict {
    /// A POST: read the body (until routable) before deciding.
    InspectBody {
        /// Whether the parser may stop once the request is routable.
        early_terminate: bool,
    },
    /// Let it through untouched (GET stream, DELETE session end).
    Pass,
    /// Answer it locally.
    Reject(Rejection),
}

/// What to do with a request after (enough of) its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyVerdict {
    /// Forward it, setting the route header to `cluster` if there is one.
    Forward {
        /// The cluster `policy.tool_routes` chose.
        cluster: Option<String>,
    },
    /// Answer it locally.
    Reject(Rejection),
}

impl Gate {
    /// Compiles a validated snapshot.
    pub fn new(snapshot: Snapshot) -> Self {
        let p = &snapshot.policy;
        let allowed_methods = p
            .allowed_methods
            .as_ref()
            .map(|m| m.iter().cloned().collect());
        let denied_tools: HashSet<String> = p.denied_tools.iter().cloned().collect();
        // Early termination leaves the rest of the body unread, so a later duplicate key
        // (`"params":{"name":"allowed"},"params":{"name":"denied"}`) could smuggle a
        // different tool past a deny decision to an upstream whose parser keeps the last
        // key. It is only used when the policy denies nothing.
        let denies =
            allowed_methods.is_some() || !denied_tools.is_empty() || !p.allow_unknown_methods;
        let parse = Options {
            reject_duplicate_keys: p.reject_duplicate_keys,
            stop_when_routable: p.early_terminate && !denies,
            skim: false,
            settle: false,
            max_batch_messages: p.max_batch_messages,
        };
        Gate {
            snapshot,
            allowed_methods,
            denied_tools,
            parse,
        }
    }

    /// Parser options for request bodies.
    pub fn parse_options(&self) -> Options {
        self.parse
    }

    /// Largest accepted request body.
    pub fn max_body_bytes(&self) -> u64 {
        self.snapshot.policy.max_body_bytes
    }

    /// Whether `tools/call` of `name` is something the policy names (a route or a denial):
    /// such names are labelled in metrics as they are.
    pub fn knows_tool(&self, name: &str) -> bool {
        self.snapshot.policy.tool_routes.contains_key(name) || self.denied_tools.contains(name)
    }

    /// The policy as configured.
    pub fn policy(&self) -> &crate::snapshot::Policy {
        &self.snapshot.policy
    }

    /// Whether the client's credentials go upstream (`policy.forward_client_credentials`).
    pub fn forwards_client_credentials(&self) -> bool {
        self.snapshot.policy.forward_client_credentials
    }

    /// The route header name.
    pub fn route_header(&self) -> &str {
        &self.snapshot.policy.route_header
    }

    /// Decides on a request head.
    pub fn check_head(&self, head: &Head<'_>) -> HeadVerdict {
        let reject =
            |reason, message: &str| HeadVerdict::Reject(Rejection::new(reason, None, message));
        // A POST's version is judged with its body: a 2026-era request's version error
        // (-32020, -32022) depends on what the body says.
        if let Some(v) = head.protocol_version
            && !mcp::is_supported_version(v.trim())
            && head.method != "POST"
        {
            let msg = format!(
                "unsupported MCP-Protocol-Version {:?}; supported: {}",
                v,
                mcp::PROTOCOL_VERSIONS.join(", ")
            );
            return reject(Reason::BadProtocolVersion, &msg);
        }
        match head.method {
            "POST" => {
                if !head
                    .content_type
                    .is_some_and(|ct| media_type_is(ct, "application/json"))
                {
                    return reject(
                        Reason::UnsupportedMediaType,
                        "Content-Type must be application/json",
                    );
                }
                let accept = head.accept.unwrap_or_default();
                if !(accepts(accept, "application/json") && accepts(accept, "text/event-stream")) {
                    return reject(
                        Reason::NotAcceptable,
                        "Accept must include application/json and text/event-stream",
                    );
                }
                let mut early_terminate = self.parse.stop_when_routable;
                match head.content_length.map(|v| v.trim().parse::<u64>()) {
                    Some(Ok(n)) if n > self.max_body_bytes() => {
                        return HeadVerdict::Reject(Rejection::too_large(self.max_body_bytes()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => {
                        return reject(Reason::BadContentLength, "invalid Content-Length");
                    }
                    // Without a length the size limit can only be enforced by reading it all.
                    None => early_terminate = false,
                }
                HeadVerdict::InspectBody { early_terminate }
            }
            "GET" => {
                if accepts(head.accept.unwrap_or_default(), "text/event-stream") {
                    HeadVerdict::Pass
                } else {
                    reject(
                        Reason::NotAcceptable,
                        "Accept must include text/event-stream",
                    )
                }
            }
            "DELETE" => HeadVerdict::Pass,
            other => HeadVerdict::Reject(Rejection::new(
                Reason::HttpMethodNotAllowed,
                None,
                format!(
                    "HTTP method {other} is not allowed; use {}",
                    Reason::HttpMethodNotAllowed.allow().unwrap_or_default()
                ),
            )),
        }
    }

    /// Decides on the parsed messages of a request body. `batch` says whether they came as
    /// a JSON-RPC batch; `protocol_version` is the request's `MCP-Protocol-Version`.
    pub fn check_messages(
        &self,
        messages: &[Message],
        batch: bool,
        protocol_version: Option<&str>,
    ) -> BodyVerdict {
        if batch && protocol_version.is_none() && !self.snapshot.policy.unversioned_batches {
            return BodyVerdict::Reject(Rejection::new(
                Reason::BatchNotAllowed,
                None,
                "a JSON-RPC batch needs MCP-Protocol-Version: 2025-03-26 (the only version with batches)",
            ));
        }
        let version = protocol_version.map_or(mcp::DEFAULT_PROTOCOL_VERSION, str::trim);
        if batch && !mcp::batches_allowed(version) {
            return BodyVerdict::Reject(Rejection::new(
                Reason::BatchNotAllowed,
                None,
                format!("JSON-RPC batches are not supported in MCP {version}"),
            ));
        }
        let mut cluster: Option<&String> = None;
        for (i, m) in messages.iter().enumerate() {
            if let Some(r) = self.check_message(m) {
                return BodyVerdict::Reject(r);
            }
            let here = self.route_of(m);
            if i > 0 && here != cluster {
                return BodyVerdict::Reject(Rejection::new(
                    Reason::BatchSpansUpstreams,
                    None,
                    "a batch must target a single upstream",
                ));
            }
            cluster = here;
        }
        BodyVerdict::Forward {
            cluster: cluster.cloned(),
        }
    }

    fn route_of(&self, m: &Message) -> Option<&String> {
        if m.method != Some(Method::ToolsCall) {
            return None;
        }
        m.name
            .as_ref()
            .and_then(|name| self.snapshot.policy.tool_routes.get(name))
    }

    fn check_message(&self, m: &Message) -> Option<Rejection> {
        if matches!(m.kind, Kind::Result | Kind::Error) {
            // A client's answer to a server request (sampling, elicitation, roots).
            return None;
        }
        let method = m.method.as_ref().map_or("", Method::as_str);
        let allowed = self
            .allowed_methods
            .as_ref()
            .is_none_or(|set| set.contains(method));
        let known = self.snapshot.policy.allow_unknown_methods
            || m.method.as_ref().is_some_and(Method::is_known);
        if !allowed || !known {
            return Some(Rejection::new(
                Reason::MethodDenied {
                    notification: m.kind == Kind::Notification,
                },
                m.id.clone(),
                format!("method {method:?} is not allowed"),
            ));
        }
        if m.method == Some(Method::ToolsCall)
            && let Some(name) = m.name.as_deref().filter(|n| self.denied_tools.contains(*n))
        {
            return Some(Rejection::new(
                Reason::ToolDenied,
                m.id.clone(),
                format!("tool {name:?} is denied by policy"),
            ));
        }
        None
    }
}

/// Whether a `Content-Type` value is `want` (parameters and case ignored).
fn media_type_is(value: &str, want: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
}

/// Whether an `Accept` value admits `want` (`type/subtype`), wildcards included.
/// An explicit `q=0` refuses.
fn accepts(accept: &str, want: &str) -> bool {
    let (want_type, _) = want.split_once('/').unwrap_or((want, ""));
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        let matches = media.eq_ignore_ascii_case(want)
            || media == "*/*"
            || media
                .strip_suffix("/*")
                .is_some_and(|t| t.eq_ignore_ascii_case(want_type));
        matches && !refused
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::code;
    use crate::jsonrpc::stream::{Body, MessageParser};

    fn gate(policy: &str) -> Gate {
        Gate::new(Snapshot::from_json(format!(r#"{{"policy":{policy}}}"#).as_bytes()).unwrap())
    }

    fn post<'a>() -> Head<'a> {
        Head {
            method: "POST",
            content_type: Some("application/json"),
            accept: Some("application/json, text/event-stream"),
            protocol_version: Some("2025-06-18"),
            content_length: Some("100"),
        }
    }

    fn status(v: &HeadVerdict) -> u16 {
        match v {
            HeadVerdict::Reject(r) => r.status(),
            _ => 0,
        }
    }

    #[test]
    fn head_checks() {
        let g = gate("{}");
        assert_eq!(
            g.check_head(&post()),
            HeadVerdict::InspectBody {
                early_terminate: true
            }
        );
        let cases: [(&str, Head<'_>, u16); 12] = [
            (
                "json with charset",
                Head {
                    content_type: Some("Application/JSON; charset=utf-8"),
                    ..post()
                },
                0,
            ),
            (
                "no content type",
                Head {
                    content_type: None,
                    ..post()
                },
                415,
            ),
            (
                "text/plain",
                Head {
                    content_type: Some("text/plain"),
                    ..post()
                },
                415,
            ),
            (
                "accept json only",
                Head {
                    accept: Some("application/json"),
                    ..post()
                },
                406,
            ),
            (
                "no accept",
                Head {
                    accept: None,
                    ..post()
                },
                406,
            ),
            (
                "accept */*",
                Head {
                    accept: Some("*/*"),
                    ..post()
                },
                0,
            ),
            (
                "accept q=0",
                Head {
                    accept: Some("application/json, text/event-stream;q=0"),
                    ..post()
                },
                406,
            ),
            (
                "bad version on a GET (a POST's is judged with its body)",
                Head {
                    method: "GET",
                    accept: Some("text/event-stream"),
                    protocol_version: Some("2099-01-01"),
                    ..post()
                },
                400,
            ),
            (
                "too large",
                Head {
                    content_length: Some("5000000"),
                    ..post()
                },
                413,
            ),
            (
                "bad length",
                Head {
                    content_length: Some("x"),
                    ..post()
                },
                400,
            ),
            (
                "GET without sse",
                Head {
                    method: "GET",
                    accept: Some("application/json"),
                    ..post()
                },
                406,
            ),
            (
                "PUT",
                Head {
                    method: "PUT",
                    ..post()
                },
                405,
            ),
        ];
        for (name, head, want) in cases {
            assert_eq!(status(&g.check_head(&head)), want, "{name}");
        }
        let get = Head {
            method: "GET",
            accept: Some("text/event-stream"),
            ..post()
        };
        assert_eq!(g.check_head(&get), HeadVerdict::Pass);
        assert_eq!(
            g.check_head(&Head {
                method: "DELETE",
                ..post()
            }),
            HeadVerdict::Pass
        );
        let chunked = Head {
            content_length: None,
            ..post()
        };
        assert_eq!(
            g.check_head(&chunked),
            HeadVerdict::InspectBody {
                early_terminate: false
            }
        );
    }

    fn body(json: &str) -> (Vec<Message>, bool) {
        let mut p = MessageParser::new(Options::default());
        p.feed(json.as_bytes()).unwrap();
        match p.finish().unwrap() {
            Body::Single(m) => (vec![m], false),
            Body::Batch(ms) => (ms, true),
        }
    }

    fn verdict(g: &Gate, json: &str, version: Option<&str>) -> BodyVerdict {
        let (ms, batch) = body(json);
        g.check_messages(&ms, batch, version)
    }

    fn rejected(v: &BodyVerdict) -> (u16, i64) {
        match v {
            BodyVerdict::Reject(r) => (r.status(), r.reason.code()),
            BodyVerdict::Forward { .. } => (0, 0),
        }
    }

    const CALL_ECHO: &str =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
    const CALL_ADD: &str =
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add"}}"#;
    const LIST: &str = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;

    #[test]
    fn body_decisions() {
        let g = gate(
            r#"{"denied_tools":["add"],"tool_routes":{"echo":"b"},"allowed_methods":["tools/call","tools/list","x/y"]}"#,
        );
        assert_eq!(
            verdict(&g, CALL_ECHO, None),
            BodyVerdict::Forward {
                cluster: Some("b".into())
            }
        );
        assert_eq!(
            verdict(&g, LIST, None),
            BodyVerdict::Forward { cluster: None }
        );
        assert_eq!(
            rejected(&verdict(&g, CALL_ADD, None)),
            (403, code::FORBIDDEN)
        );
        let ping = r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#;
        assert_eq!(
            rejected(&verdict(&g, ping, None)),
            (200, code::METHOD_NOT_FOUND)
        );
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(
            rejected(&verdict(&g, note, None)),
            (400, code::METHOD_NOT_FOUND)
        );
        let batch = format!("[{CALL_ECHO},{LIST}]");
        assert_eq!(
            rejected(&verdict(&g, &batch, Some("2025-03-26"))),
            (400, code::INVALID_REQUEST),
            "spans upstreams"
        );
        assert_eq!(
            rejected(&verdict(&g, &batch, Some("2025-06-18"))),
            (400, code::INVALID_REQUEST)
        );
        let batch = format!("[{CALL_ECHO},{CALL_ECHO}]");
        assert_eq!(
            verdict(&g, &batch, Some("2025-03-26")),
            BodyVerdict::Forward {
                cluster: Some("b".into())
            }
        );
        let batch = format!("[{LIST},{CALL_ADD}]");
        assert_eq!(
            rejected(&verdict(&g, &batch, Some("2025-03-26"))),
            (403, code::FORBIDDEN)
        );
        // A batch must say its version, unless the policy takes unversioned ones.
        let batch = format!("[{CALL_ECHO},{CALL_ECHO}]");
        match verdict(&g, &batch, None) {
            BodyVerdict::Reject(r) => assert_eq!(r.reason, Reason::BatchNotAllowed),
            other => panic!("{other:?}"),
        }
        let lenient = gate(r#"{"unversioned_batches":true,"tool_routes":{"echo":"b"}}"#);
        assert_eq!(
            verdict(&lenient, &batch, None),
            BodyVerdict::Forward {
                cluster: Some("b".into())
            }
        );
        // The reject carries the request id.
        match verdict(&g, CALL_ADD, None) {
            BodyVerdict::Reject(r) => {
                let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
                assert_eq!(v["id"], 2);
            }
            other => panic!("{other:?}"),
        }
        // Client responses to server requests pass.
        let resp = r#"{"jsonrpc":"2.0","id":"s1","result":{}}"#;
        assert_eq!(
            verdict(&g, resp, None),
            BodyVerdict::Forward { cluster: None }
        );
    }

    #[test]
    fn batches_longer_than_the_cap_are_refused_while_parsing() {
        let g = gate(r#"{"max_batch_messages":3}"#);
        let batch = |n: usize| {
            let items: Vec<&str> = std::iter::repeat_n(LIST, n).collect();
            format!("[{}]", items.join(","))
        };
        let mut p = MessageParser::new(g.parse_options());
        assert!(p.feed(batch(3).as_bytes()).is_ok());
        assert!(p.finish().is_ok());
        let mut p = MessageParser::new(g.parse_options());
        match p.feed(batch(4).as_bytes()) {
            Err(e) => {
                assert_eq!(e.code(), code::INVALID_REQUEST);
                assert!(e.to_string().contains("at most 3"), "{e}");
            }
            Ok(progress) => panic!("a batch of 4 parsed: {progress:?}"),
        }
        // Non-object elements count too.
        let mut p = MessageParser::new(g.parse_options());
        assert!(p.feed(b"[1,2,3,4]").is_err());
        assert_eq!(
            Gate::new(Snapshot::default())
                .parse_options()
                .max_batch_messages,
            32
        );
    }

    #[test]
    fn unknown_methods_and_early_termination() {
        let open = gate("{}");
        assert!(open.parse_options().stop_when_routable);
        assert_eq!(
            verdict(&open, r#"{"jsonrpc":"2.0","id":1,"method":"x/y"}"#, None),
            BodyVerdict::Forward { cluster: None }
        );
        let strict = gate(r#"{"allow_unknown_methods":false}"#);
        assert!(
            !strict.parse_options().stop_when_routable,
            "deny decisions need the whole body"
        );
        assert_eq!(
            rejected(&verdict(
                &strict,
                r#"{"jsonrpc":"2.0","id":1,"method":"x/y"}"#,
                None
            )),
            (200, code::METHOD_NOT_FOUND)
        );
        assert!(
            !gate(r#"{"denied_tools":["a"]}"#)
                .parse_options()
                .stop_when_routable
        );
        assert!(
            !gate(r#"{"early_terminate":false}"#)
                .parse_options()
                .stop_when_routable
        );
    }
}
