//! Rewriting a response on its way to the client, for what a virtual server must change in
//! it: the fields a 2026-era client requires on a result from a 2025-era upstream
//! (`resultType`, and the cache hints on lists and reads), and the ids of the requests an
//! upstream sends its client inside an event stream (sampling, elicitation, roots), so that
//! the client's answer can be routed back to the upstream that asked; and, on a bridged
//! call's stream, the notifications a 2026-era client must not get there (see
//! [`Notifications`]).
//!
//! A single JSON response is rewritten as it streams: only the bytes up to the `{` of its
//! `result` are looked at, and the fields are inserted there. An event stream is rewritten
//! event by event: each event is held until its blank line, parsed, changed if it must be,
//! and let go; events larger than [`MAX_EVENT_BYTES`] are let go unchanged.
//!
//! Guardrail post hooks ([`Guarded`]) see every result before the client does: a JSON
//! response is held whole (here, in the module's memory, not in Envoy's buffer, whose
//! limit would answer with a plain-text error), then passed, masked or replaced by an
//! error; an event stream's events go through them one by one, and an event is let go only
//! once they are done with it. What is too large to hold ([`MAX_EVENT_BYTES`]) is refused
//! when a plugin enforces (the rest of the stream is dropped), and passes when all are
//! permissive; an unterminated event at the end of a guarded stream is dropped (SSE clients
//! discard one anyway).

use crate::config::Config;
use crate::guard::{Finding, Post, PostPlan};
use crate::jsonrpc::stream::{Body, MessageParser, Options, Progress};
use crate::jsonrpc::{Kind, Message};
use crate::mcp::{self, Method};
use crate::sniff::{BodyKind, sniff};
use std::rc::Rc;

/// Largest event held for rewriting; a larger one passes unchanged.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Gives the new id (JSON text) of a request an upstream sends its client.
pub(crate) type RequestIdRewrite = Box<dyn Fn(&str) -> Option<String>>;

/// What to change in the messages of a response.
pub(crate) struct Changes {
    /// Inserted first into a result object (`"key":value` members, no trailing comma).
    pub(crate) result_fields: Option<Vec<u8>>,
    /// Rewrites the id of a request the upstream sends the client: the new id's JSON text.
    pub(crate) request_id: Option<RequestIdRewrite>,
    /// Drops the notifications the client must not get on this stream.
    pub(crate) notifications: Option<Notifications>,
    /// Runs the guardrail post hooks on every result.
    pub(crate) guard: Option<Guarded>,
}

/// The post hooks a response goes through.
pub(crate) struct Guarded {
    /// The configuration whose plugins run.
    pub(crate) config: Rc<Config>,
    /// Which of them, decided with the request.
    pub(crate) plan: PostPlan,
}

/// Which notifications of a 2025-era upstream's stream reach a 2026-era client. That era
/// sends `notifications/message` only at or above the level the request asked for (none
/// without one), and `list_changed`/`resources/updated` only on `subscriptions/listen`
/// streams; URL elicitation has no completion notice in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Notifications {
    /// Rank ([`mcp::log_level_rank`]) of the least severe message that passes; `None`:
    /// the request asked for no messages.
    pub(crate) log_floor: Option<u8>,
}

impl Notifications {
    /// Whether `msg` (a notification, `data` its JSON) passes.
    fn pass(self, data: &[u8], msg: &Message) -> bool {
        match msg.method {
            Some(
                Method::NotificationsToolsListChanged
                | Method::NotificationsPromptsListChanged
                | Method::NotificationsResourcesListChanged
                | Method::NotificationsResourcesUpdated
                | Method::NotificationsElicitationComplete,
            ) => false,
            Some(Method::NotificationsMessage) => {
                let Some(floor) = self.log_floor else {
                    return false;
                };
                // Messages are rare and small: reading one whole is fine.
                serde_json::from_slice::<serde_json::Value>(data)
                    .ok()
                    .and_then(|v| mcp::log_level_rank(v.pointer("/params/level")?.as_str()?))
                    .is_some_and(|rank| rank >= floor)
            }
            _ => true,
        }
    }
}

enum State {
    /// No body byte seen yet.
    Sniff,
    /// A single JSON message: reading until its `result` opens.
    Json {
        parser: Box<MessageParser>,
        /// Bytes fed so far.
        fed: u64,
    },
    /// The `{` of `result` was the last byte let go: the members go before whatever comes
    /// next, with a comma unless that is `}`.
    JsonPending,
    /// An event stream.
    Sse {
        /// The current event's raw bytes, held.
        event: Vec<u8>,
        /// Whether the last byte held was a CR (a following LF belongs to it).
        after_cr: bool,
        /// The current line is empty so far.
        line_empty: bool,
        /// The last event went out ending in a CR whose LF, if one follows, goes out too.
        lf_goes_out: bool,
    },
    /// Nothing more to change: bytes pass as they come.
    Through,
    /// A guarded JSON response, held whole until it ends.
    Held(Vec<u8>),
    /// A guarded response too large to inspect: the rest is dropped (and a JSON one is
    /// answered with this error when it ends).
    Refused(Option<Vec<u8>>),
}

/// A response being rewritten.
pub(crate) struct Rewriter {
    changes: Changes,
    state: State,
    /// What the post hooks found since the last [`Rewriter::take_findings`].
    findings: Vec<Finding>,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Rewriter {
    pub(crate) fn new(changes: Changes) -> Rewriter {
        Rewriter {
            changes,
            state: State::Sniff,
            findings: Vec::new(),
        }
    }

    /// What the post hooks found so far (taken: each finding is reported once).
    pub(crate) fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// The error that replaces a guarded response too large to inspect, if a plugin
    /// enforces.
    fn too_large(&self) -> Option<Vec<u8>> {
        let g = self.changes.guard.as_ref()?;
        g.config.guard.too_large(&g.plan, MAX_EVENT_BYTES)
    }

    /// A whole guarded JSON response: through the post hooks, then the other changes.
    fn finish_held(&mut self, body: Vec<u8>) -> Vec<u8> {
        let Some(g) = &self.changes.guard else {
            return body;
        };
        let body = match g.config.guard.post_body(&g.plan, &body, &mut self.findings) {
            Post::Pass => body,
            Post::Masked(new) | Post::Blocked(new) => new,
        };
        if self.changes.result_fields.is_none() {
            return body;
        }
        let mut parser = MessageParser::new(Options::default());
        match parser.feed(&body).and_then(|_| parser.finish()) {
            Ok(Body::Single(msg)) => self.rewrite_message(&body, &msg).unwrap_or(body),
            _ => body,
        }
    }

    /// Takes the next chunk; returns the bytes to send in its place (possibly fewer: an
    /// event stream's partial event is held until it ends, or until `end_of_stream`).
    pub(crate) fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        if matches!(self.state, State::Sniff) {
            self.state = match sniff(chunk) {
                Some(BodyKind::Json) if self.changes.guard.is_some() => State::Held(Vec::new()),
                Some(BodyKind::Json) if self.changes.result_fields.is_some() => State::Json {
                    parser: Box::new(MessageParser::new(Options {
                        skim: true,
                        settle: true,
                        ..Options::default()
                    })),
                    fed: 0,
                },
                Some(BodyKind::EventStream) => State::Sse {
                    event: Vec::new(),
                    after_cr: false,
                    line_empty: true,
                    lf_goes_out: false,
                },
                Some(_) => State::Through,
                None if end_of_stream => State::Through,
                None => return chunk.to_vec(),
            };
        }
        match &mut self.state {
            State::Sniff | State::Through => chunk.to_vec(),
            State::Held(body) => {
                body.extend_from_slice(chunk);
                if body.len() > MAX_EVENT_BYTES {
                    let held = std::mem::take(body);
                    return match self.too_large() {
                        Some(error) => {
                            self.state = State::Refused(Some(error));
                            self.feed(&[], end_of_stream)
                        }
                        // Only permissive plugins: it goes on uninspected.
                        None => {
                            self.state = State::Through;
                            held
                        }
                    };
                }
                if !end_of_stream {
                    return Vec::new();
                }
                let body = std::mem::take(body);
                self.state = State::Through;
                self.finish_held(body)
            }
            State::Refused(error) if end_of_stream => error.take().unwrap_or_default(),
            State::Refused(_) => Vec::new(),
            State::JsonPending => {
                let out = self.insert_at(chunk, 0);
                self.state = State::Through;
                out
            }
            State::Json { parser, fed } => {
                let progress = parser.feed(chunk);
                let before = *fed;
                *fed += chunk.len() as u64;
                let open = parser.result_open();
                match (progress, open) {
                    (Ok(Progress::Settled(Kind::Result)), Some(open)) if open >= before => {
                        let at = usize::try_from(open - before).unwrap_or(usize::MAX);
                        self.state = State::Through;
                        self.insert_after(chunk, at)
                    }
                    (Ok(Progress::NeedMore), _) if !end_of_stream => chunk.to_vec(),
                    _ => {
                        self.state = State::Through;
                        chunk.to_vec()
                    }
                }
            }
            State::Sse { .. } => self.feed_sse(chunk, end_of_stream),
        }
    }

    /// `chunk` with the result members inserted after its byte `at` (the `{`).
    fn insert_after(&mut self, chunk: &[u8], at: usize) -> Vec<u8> {
        let Some((head, tail)) = chunk.split_at_checked(at.saturating_add(1)) else {
            return chunk.to_vec();
        };
        if tail.iter().all(|b| is_ws(*b)) {
            // What follows the `{` decides the comma: wait for it.
            self.state = State::JsonPending;
            return chunk.to_vec();
        }
        let mut out = head.to_vec();
        out.extend(self.insert_at(tail, 0));
        out
    }

    /// `rest` with the members inserted before its first byte.
    fn insert_at(&self, rest: &[u8], _at: usize) -> Vec<u8> {
        let Some(fields) = &self.changes.result_fields else {
            return rest.to_vec();
        };
        let mut out = Vec::with_capacity(rest.len() + fields.len() + 1);
        out.extend_from_slice(fields);
        if rest.iter().find(|b| !is_ws(**b)) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        out
    }

    fn feed_sse(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        for &b in chunk {
            let State::Sse {
                event,
                after_cr,
                line_empty,
                lf_goes_out,
            } = &mut self.state
            else {
                break;
            };
            if *after_cr && b == b'\n' {
                // The LF of a CRLF: the line already ended. If it ended the event, the
                // event went out at its CR, and the LF goes out right behind it (dropped
                // when the event was rewritten: its lines then end in LF already), not
                // with the next event: a client whose parser waits for the LF after a
                // CR would see each event only when the next one comes.
                *after_cr = false;
                if !event.is_empty() {
                    event.push(b);
                } else if std::mem::take(lf_goes_out) {
                    out.push(b);
                }
                continue;
            }
            event.push(b);
            *after_cr = b == b'\r';
            if b == b'\n' || b == b'\r' {
                if *line_empty {
                    let whole = std::mem::take(event);
                    let flushed = self.rewrite_event(whole);
                    let ends_in_cr = flushed.last() == Some(&b'\r');
                    out.extend(flushed);
                    if let State::Sse { lf_goes_out, .. } = &mut self.state {
                        *lf_goes_out = ends_in_cr;
                    }
                } else {
                    *line_empty = true;
                }
                continue;
            }
            *line_empty = false;
            if event.len() > MAX_EVENT_BYTES {
                let held = std::mem::take(event);
                if let Some(error) = self.too_large() {
                    // Too large to inspect: refused, and the rest of the stream dropped.
                    out.extend(event_of(&error));
                    self.state = State::Refused(None);
                    break;
                }
                // Too large to hold: it and the rest of the stream pass unchanged.
                out.extend(held);
                self.state = State::Through;
            }
        }
        if end_of_stream && let State::Sse { event, .. } = &mut self.state {
            let rest = std::mem::take(event);
            // An unterminated event is not dispatched by SSE clients; a guarded stream
            // does not send one the hooks have not seen.
            if self.changes.guard.is_none() {
                out.extend(rest);
            }
        }
        out
    }

    /// One whole event (blank line included): rewritten if one of its messages must change.
    fn rewrite_event(&mut self, raw: Vec<u8>) -> Vec<u8> {
        let mut data = Vec::new();
        let mut others: Vec<&[u8]> = Vec::new();
        let mut has_data = false;
        for line in raw.split(|b| *b == b'\n' || *b == b'\r') {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix(b"data:") {
                if has_data {
                    data.push(b'\n');
                }
                has_data = true;
                data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
            } else {
                others.push(line);
            }
        }
        if !has_data {
            return raw;
        }
        let mut guarded = false;
        // The message as the post hooks parsed it (not parsed twice).
        let mut parsed = None;
        if let Some(g) = &self.changes.guard {
            let (post, msg) = g
                .config
                .guard
                .post_event_parsed(&g.plan, &data, &mut self.findings);
            match post {
                Post::Pass => parsed = msg,
                Post::Masked(new) => {
                    data = new;
                    guarded = true;
                    parsed = msg;
                }
                Post::Blocked(new) => {
                    data = new;
                    guarded = true;
                }
            }
        }
        let msg = match parsed {
            Some(msg) => msg,
            None => {
                let mut parser = MessageParser::new(Options::default());
                let parsed = parser.feed(&data).and_then(|_| parser.finish());
                let Ok(Body::Single(msg)) = parsed else {
                    return raw;
                };
                msg
            }
        };
        if msg.kind == Kind::Notification
            && let Some(n) = self.changes.notifications
            && !n.pass(&data, &msg)
        {
            return Vec::new();
        }
        let new_data = match self.rewrite_message(&data, &msg) {
            Some(new) => new,
            None if guarded => data,
            None => return raw,
        };
        let mut out = Vec::with_capacity(new_data.len() + 64);
        for line in others {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        for line in new_data.split(|b| *b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
        out
    }

    /// `data` (one message) changed, or `None` when nothing in it must change.
    fn rewrite_message(&self, data: &[u8], msg: &Message) -> Option<Vec<u8>> {
        let at = |o: u64| usize::try_from(o).ok();
        match msg.kind {
            Kind::Request => {
                let (start, end) = msg.id_span?;
                let (start, end) = (at(start)?, at(end)?);
                let id = std::str::from_utf8(data.get(start..end)?).ok()?;
                let new_id = (self.changes.request_id.as_ref()?)(id)?;
                let mut out = data.get(..start)?.to_vec();
                out.extend_from_slice(new_id.as_bytes());
                out.extend_from_slice(data.get(end..)?);
                Some(out)
            }
            Kind::Result => {
                let fields = self.changes.result_fields.as_ref()?;
                let open = at(msg.result_open?)?;
                let (head, tail) = data.split_at_checked(open + 1)?;
                let mut out = head.to_vec();
                out.extend_from_slice(fields);
                if tail.iter().find(|b| !is_ws(**b)) != Some(&b'}') {
                    out.push(b',');
                }
                out.extend_from_slice(tail);
                Some(out)
            }
            Kind::Notification | Kind::Error => None,
        }
    }
}

/// An SSE event carrying `data` (one JSON message, no newlines in it).
fn event_of(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn fields() -> Changes {
        Changes {
            result_fields: Some(br#""resultType":"complete""#.to_vec()),
            request_id: Some(Box::new(|id: &str| {
                Some(format!("\"gw:{}\"", id.trim_matches('"')))
            })),
            notifications: None,
            guard: None,
        }
    }

    /// Feeds `chunks` in order; the concatenated output.
    fn run(changes: Changes, chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = Rewriter::new(changes);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend(r.feed(c, i + 1 == chunks.len()));
        }
        out
    }

    #[test]
    fn a_json_result_gets_its_fields_wherever_the_chunks_split() {
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"x"}]}}"#;
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            let out = run(fields(), &[a, b]);
            let v: Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{split}: {e} {}", String::from_utf8_lossy(&out)));
            assert_eq!(v["result"]["resultType"], "complete", "{split}");
            assert_eq!(v["result"]["content"][0]["text"], "x");
        }
        let empty = run(
            fields(),
            &[br#"{"jsonrpc":"2.0","id":1,"result":{"#, b" }}"],
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).unwrap()["result"],
            json!({"resultType": "complete"})
        );
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}}"#;
        assert_eq!(
            run(fields(), &[error]),
            error.to_vec(),
            "errors pass unchanged"
        );
    }

    #[test]
    fn event_streams_are_rewritten_event_by_event() {
        let stream = concat!(
            "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\r\n\r\n",
            ": comment\n\n",
            "id: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"sampling/createMessage\",\"params\":{}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\n",
            "data: \"id\":1,\"result\":{}}\n\n"
        );
        for split in 1..stream.len() {
            let (a, b) = stream.as_bytes().split_at(split);
            let out = String::from_utf8(run(fields(), &[a, b])).unwrap();
            assert!(out.starts_with("event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\""), "{out}");
            assert!(out.contains(": comment\n\n"), "{out}");
            assert!(out.contains("id: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"gw:3\",\"method\":\"sampling/createMessage\""), "{out}");
            assert!(out.contains("data: {\"jsonrpc\":\"2.0\",\ndata: \"id\":1,\"result\":{\"resultType\":\"complete\"}}\n\n"), "{split}: {out}");
        }
        // An event that ends in CRLF goes out whole with the chunk that ends it, whether
        // it is rewritten (its lines then end in LF) or passes unchanged, and whether the
        // chunk ends between the CR and the LF or not.
        let rewritten =
            b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\n";
        let unchanged =
            b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\r\n\r\n";
        let ping = b": ping\r\n\r\n";
        for (event, ends) in [
            (&rewritten[..], &b"{\"resultType\":\"complete\"}}\n\n"[..]),
            (&unchanged[..], &b"}\r\n\r\n"[..]),
        ] {
            let mut r = Rewriter::new(fields());
            let out = r.feed(event, false);
            assert!(out.ends_with(ends), "{}", String::from_utf8_lossy(&out));
            assert_eq!(r.feed(ping, false), ping);
            let (head, lf) = event.split_at(event.len() - 1);
            let mut r = Rewriter::new(fields());
            let mut out = r.feed(head, false);
            out.extend(r.feed(lf, false));
            assert!(out.ends_with(ends), "{}", String::from_utf8_lossy(&out));
            assert_eq!(r.feed(ping, false), ping);
        }
        // A partial event is held until it ends.
        let mut r = Rewriter::new(fields());
        assert!(
            r.feed(b"data: {\"jsonrpc\":\"2.0\",\"id\":1,", false)
                .is_empty()
        );
        assert!(!r.feed(b"\"result\":{}}\n\n", false).is_empty());
    }

    #[test]
    fn a_guarded_stream_is_masked_and_rewritten_from_one_parse_per_event() {
        let config = Rc::new(
            Config::from_bytes(
                json!({
                    "servers": {"s1": {"name": "one", "tools": []}},
                    "plugins": [{"name": "pii", "pii": {"detectors": ["email"]}}]
                })
                .to_string()
                .as_bytes(),
            )
            .unwrap(),
        );
        let request = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{}}}"#;
        let mut parser = MessageParser::new(Options::default());
        parser.feed(request.as_bytes()).unwrap();
        let Ok(Body::Single(msg)) = parser.finish() else {
            panic!("a request");
        };
        let call = crate::guard::Call {
            server: Some("s1"),
            principal: None,
        };
        let plan = config.guard.post_plan(&call, &msg).expect("a plan");
        let changes = Changes {
            guard: Some(Guarded { config, plan }),
            ..fields()
        };
        let stream = concat!(
            "id: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"sampling/createMessage\",\"params\":{\"m\":\"a@b.example\"}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"mail jane@example.com\"}]}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n\n",
        );
        let out = String::from_utf8(run(changes, &[stream.as_bytes()])).unwrap();
        let events: Vec<&str> = out.split("\n\n").collect();
        // A request to the client: its id renamed, nothing of it masked (not a result).
        assert!(
            events[0].starts_with("id: 7\ndata: ")
                && events[0].contains(r#""id":"gw:3""#)
                && events[0].contains("a@b.example"),
            "{out}"
        );
        // A result: masked, and given its fields.
        let v: Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["result"]["content"][0]["text"], "mail [REDACTED:email]");
        assert_eq!(v["result"]["resultType"], "complete");
        let v: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["result"], json!({"resultType": "complete"}));
    }

    #[test]
    fn nothing_to_change_passes_unchanged() {
        let none = || Changes {
            result_fields: None,
            request_id: None,
            notifications: None,
            guard: None,
        };
        let stream = b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"roots/list\"}\n\n";
        assert_eq!(run(none(), &[stream]), stream.to_vec());
        let json = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert_eq!(run(none(), &[json]), json.to_vec());
        assert_eq!(
            run(fields(), &[b"<html>oops</html>"]),
            b"<html>oops</html>".to_vec()
        );
        let bad = b"data: {not json\n\n";
        assert_eq!(run(fields(), &[bad]), bad.to_vec());
    }

    #[test]
    fn a_bridged_stream_keeps_only_what_the_2026_client_asked_for() {
        let event = |method: &str, params: &str| {
            format!("data: {{\"jsonrpc\":\"2.0\",\"method\":\"{method}\",\"params\":{params}}}\n\n")
        };
        let log = |level: &str| {
            event(
                "notifications/message",
                &format!("{{\"level\":\"{level}\",\"data\":\"x\"}}"),
            )
        };
        let stream: String = [
            log("debug"),
            log("warning"),
            event("notifications/progress", r#"{"progress":1}"#),
            event("notifications/tools/list_changed", "{}"),
            event("notifications/resources/updated", r#"{"uri":"a"}"#),
            event(
                "notifications/elicitation/complete",
                r#"{"elicitationId":"e"}"#,
            ),
            log("emergency"),
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n".to_owned(),
        ]
        .concat();
        let with_floor = |floor: Option<&str>| {
            let changes = Changes {
                notifications: Some(Notifications {
                    log_floor: floor.and_then(mcp::log_level_rank),
                }),
                ..fields()
            };
            String::from_utf8(run(changes, &[stream.as_bytes()])).unwrap()
        };
        let warning = with_floor(Some("warning"));
        assert!(!warning.contains("debug"), "{warning}");
        assert!(
            warning.contains("\"warning\"") && warning.contains("emergency"),
            "{warning}"
        );
        assert!(warning.contains("notifications/progress"), "{warning}");
        for listen_only in ["list_changed", "resources/updated", "elicitation/complete"] {
            assert!(!warning.contains(listen_only), "{listen_only}: {warning}");
        }
        assert!(
            warning.ends_with("\"result\":{\"resultType\":\"complete\"}}\n\n"),
            "{warning}"
        );
        let silent = with_floor(None);
        assert!(!silent.contains("notifications/message"), "{silent}");
        assert!(silent.contains("notifications/progress"), "{silent}");
    }
}
