//! Client sessions of virtual servers at the edge: issuing tokens, opening upstream sessions
//! lazily (on the first request that needs one), ending sessions, and the periodic sweep
//! that ends upstream sessions nobody uses.
//!
//! Which upstream sessions a client session holds is kept in the session table
//! ([`crate::session::table`]) in shared data; every change to it is a compare-and-swap on
//! the session's slot, retried a few times when another worker wrote first.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde_json::value::RawValue;

use super::{Call, Exchange, Forward, Header, Host, Phase, Step, point_at, upstream_call};
use crate::config::Config;
use crate::edge;
use crate::jsonrpc::{Message, write_json_string};
use crate::mcp::{Era, Method};
use crate::reason::{Reason, Rejection};
use crate::session::table::{Record, Slot, TOUCH_AFTER_SECS, UpstreamSession, slot_key};
use crate::session::{Claims, MAX_CLIENT_BYTES, SessionError, session_id};

/// Compare-and-swap attempts on a slot before giving up (each lost attempt means another
/// worker wrote the same slot at the same moment).
const CAS_ATTEMPTS: usize = 8;

/// Calls to upstreams a request waits for.
pub(crate) struct Pending {
    /// What happens when every call has answered.
    kind: PendingKind,
    /// Protocol version of the calls.
    version: String,
    /// Outstanding calls: tag → (upstream id, what it is).
    pub(super) calls: HashMap<u32, (String, Stage)>,
    /// Upstream sessions opened so far: upstream id → its session id (`None`: stateless).
    opened: BTreeMap<String, Option<String>>,
}

enum PendingKind {
    /// Opening `upstream`'s session for a call, which then goes on as `forward`.
    Route { forward: Forward, upstream: String },
    /// Passing a client's notification or `logging/setLevel` to the session's upstreams,
    /// then answering the client with `reply` (status, body).
    Broadcast { reply: (u16, Option<Vec<u8>>) },
    /// Opening the upstream sessions of a GET stream, which then picks `pick` (or chooses).
    Stream { pick: Option<String> },
    /// Ending the session's upstream sessions (`DELETE`).
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Initialize,
    Initialized,
    SetLevel,
    Delete,
    Broadcast,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Initialize => "initialize",
            Stage::Initialized => "notifications/initialized",
            Stage::SetLevel => "logging/setLevel",
            Stage::Delete => "DELETE",
            Stage::Broadcast => "a client's message",
        }
    }
}

impl Pending {
    fn new(kind: PendingKind, version: String) -> Pending {
        Pending {
            kind,
            version,
            calls: HashMap::new(),
            opened: BTreeMap::new(),
        }
    }
}

/// The client's `capabilities` and `clientInfo` from an `initialize` body, kept in its
/// session token so upstream sessions open with them; dropped when larger than
/// [`MAX_CLIENT_BYTES`] together (a token travels on every request).
fn client_declarations(
    body: &[u8],
    msg: &Message,
) -> (Option<Box<RawValue>>, Option<Box<RawValue>>) {
    let raw = |span: Option<(u64, u64)>| {
        let (start, end) = span?;
        let bytes = body.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
        Some(std::str::from_utf8(bytes).ok()?.to_owned())
    };
    let (caps, info) = (raw(msg.capabilities_span), raw(msg.client_info_span));
    let size = caps.as_ref().map_or(0, String::len) + info.as_ref().map_or(0, String::len);
    if size > MAX_CLIENT_BYTES {
        return (None, None);
    }
    let value = |text: Option<String>| text.and_then(|t| RawValue::from_string(t).ok());
    (value(caps), value(info))
}

impl Exchange {
    /// Opens the session token a virtual-server request carries and reads its record.
    /// Without session keys in the configuration, tokens are ignored.
    pub(super) fn resume_session(
        &mut self,
        token: &str,
        server: &str,
        host: &mut impl Host,
    ) -> Result<(), SessionError> {
        let config = Rc::clone(&self.config);
        let Some(sessions) = config.edge.sessions() else {
            return Ok(());
        };
        let claims = sessions.keys.open(token, server, host.now())?;
        // The session is its principal's alone: a stolen session id is no use without
        // the principal's token too.
        if claims.principal.as_deref() != self.principal.as_ref().map(|p| p.digest.as_str()) {
            return Err(SessionError::OtherPrincipal);
        }
        self.session = Some(claims);
        self.record = self.read_record(host);
        if self.record.as_ref().is_some_and(|r| r.ended) {
            return Err(SessionError::Ended);
        }
        Ok(())
    }

    /// This session's record in the session table, if it has one.
    pub(super) fn read_record(&self, host: &mut impl Host) -> Option<Record> {
        let claims = self.session.as_ref()?;
        let (value, _) = host.shared_get(&slot_key(&claims.id));
        Slot::parse(value.as_deref()).get(&claims.id).cloned()
    }

    /// A new session's token for `initialize` `msg` to `server` (`None` without session
    /// keys: the virtual server is served stateless).
    pub(super) fn new_session(
        &mut self,
        server: &str,
        msg: &Message,
        host: &mut impl Host,
    ) -> Result<Option<String>, &'static str> {
        let Some(sessions) = self.config.edge.sessions() else {
            return Ok(None);
        };
        let mut id = [0u8; 16];
        let mut nonce = [0u8; 12];
        // A predictable id or a repeated nonce would let tokens be guessed or opened.
        if !(host.random(&mut id) && host.random(&mut nonce)) {
            return Err("no randomness for a session id");
        }
        let now = host.now();
        let (capabilities, client_info) = client_declarations(&self.body, msg);
        let claims = Claims {
            id: session_id(id),
            server: server.to_owned(),
            protocol_version: edge::negotiate(msg.protocol_version.as_deref()).to_owned(),
            issued_at: now,
            expires_at: now.saturating_add(sessions.ttl_seconds),
            capabilities,
            client_info,
            principal: self.principal.as_ref().map(|p| p.digest.clone()),
        };
        sessions
            .keys
            .seal(&claims, nonce)
            .map(Some)
            .ok_or("a session token could not be sealed")
    }

    /// Sets the upstream's session on a forwarded request (or removes the client's).
    fn set_session_header(&self, forward: &mut Forward, session: Option<String>) {
        if session.is_some() || self.has_session_header {
            forward
                .headers
                .push((Header::Named("mcp-session-id"), session));
        }
    }

    /// Routes a call of the session to `upstream`, inside its upstream session: the one
    /// the table has, or a new one opened first.
    pub(super) fn route_in_session(
        &mut self,
        mut forward: Forward,
        upstream: String,
        host: &mut impl Host,
    ) -> Step {
        let known = self
            .record
            .as_ref()
            .and_then(|r| r.upstreams.get(&upstream))
            .cloned();
        if let Some(us) = known {
            if host.now().saturating_sub(us.last_used) >= TOUCH_AFTER_SECS {
                self.touch(&upstream, host);
            }
            if us.session_id.is_some() {
                self.routed_upstream = Some(upstream);
            }
            self.set_session_header(&mut forward, us.session_id);
            return Step::Forward(forward);
        }
        let version = self.session_version();
        let mut pending = Pending::new(
            PendingKind::Route {
                forward,
                upstream: upstream.clone(),
            },
            version,
        );
        let calls = self.initialize_calls(&mut pending, &[upstream], host);
        self.await_calls(pending, calls, host)
    }

    fn session_version(&self) -> String {
        self.session
            .as_ref()
            .map(|c| c.protocol_version.clone())
            .unwrap_or_default()
    }

    /// `initialize` calls to `upstreams`, on the client's behalf: its protocol version,
    /// capabilities and client info.
    fn initialize_calls(
        &mut self,
        pending: &mut Pending,
        upstreams: &[String],
        host: &mut impl Host,
    ) -> Vec<Call> {
        let mut calls = Vec::new();
        for id in upstreams {
            let body = self.initialize_body(&pending.version);
            if let Some(call) = self.call(id, None, &pending.version, "POST", Some(body), host) {
                pending
                    .calls
                    .insert(call.tag, (id.clone(), Stage::Initialize));
                calls.push(call);
            }
        }
        calls
    }

    fn initialize_body(&self, version: &str) -> Vec<u8> {
        let claims = self.session.as_ref();
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(
            br#"{"jsonrpc":"2.0","id":"mcpgw-init","method":"initialize","params":{"protocolVersion":"#,
        );
        write_json_string(&mut b, version);
        b.extend_from_slice(br#","capabilities":"#);
        match claims.and_then(|c| c.capabilities.as_ref()) {
            Some(caps) => b.extend_from_slice(caps.get().as_bytes()),
            None => b.extend_from_slice(b"{}"),
        }
        b.extend_from_slice(br#","clientInfo":"#);
        match claims.and_then(|c| c.client_info.as_ref()) {
            Some(info) => b.extend_from_slice(info.get().as_bytes()),
            None => {
                b.extend_from_slice(br#"{"name":"mcpgw","version":"#);
                write_json_string(&mut b, env!("CARGO_PKG_VERSION"));
                b.push(b'}');
            }
        }
        b.extend_from_slice(b"}}");
        b
    }

    /// Ends the client's session: marks it ended in the table (its token is refused from
    /// now on), then ends every upstream session it held.
    pub(super) fn end_session(&mut self, host: &mut impl Host) -> Step {
        let version = self.session_version();
        let held = self.mark_ended(host);
        let mut pending = Pending::new(PendingKind::Delete, version);
        let mut calls = Vec::new();
        for (up, us) in held {
            let Some(sid) = us.session_id else { continue };
            if let Some(call) =
                self.call(&up, Some(&sid), &us.protocol_version, "DELETE", None, host)
            {
                pending.calls.insert(call.tag, (up, Stage::Delete));
                calls.push(call);
            }
        }
        self.await_calls(pending, calls, host)
    }

    /// The client's GET stream: the upstream sessions it needs are opened first (every
    /// upstream of the server that the session has none at, or only the picked one), then
    /// it goes to the picked upstream (`mcpgw-upstream`), the only stateful one, or the
    /// relay for several. A pick opens its own upstream session: the relay's listen over a
    /// 2025-era upstream opens a session whose only use is that upstream's stream.
    pub(super) fn open_stream(&mut self, pick: Option<String>, host: &mut impl Host) -> Step {
        let config = Rc::clone(&self.config);
        let server = self.server.clone().unwrap_or_default();
        let missing: Vec<String> = config
            .edge
            .upstreams_of(&server)
            .into_iter()
            .map(|(id, _)| id.to_owned())
            .filter(|id| pick.as_ref().is_none_or(|p| p == id))
            .filter(|id| {
                !self
                    .record
                    .as_ref()
                    .is_some_and(|r| r.upstreams.contains_key(id))
            })
            .collect();
        if missing.is_empty() {
            return self.choose_stream(pick, host);
        }
        let mut pending = Pending::new(PendingKind::Stream { pick }, self.session_version());
        let calls = self.initialize_calls(&mut pending, &missing, host);
        self.await_calls(pending, calls, host)
    }

    fn choose_stream(&mut self, pick: Option<String>, host: &mut impl Host) -> Step {
        let stateful: Vec<(String, String)> = self
            .record
            .as_ref()
            .map(|r| {
                r.upstreams
                    .iter()
                    .filter_map(|(id, us)| Some((id.clone(), us.session_id.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let chosen = match (&pick, stateful.as_slice()) {
            (Some(id), _) => match stateful.iter().find(|(u, _)| u == id) {
                Some(found) => found.clone(),
                None => return self.reject(&edge::unknown_stream(id), host),
            },
            (None, [only]) => only.clone(),
            // No stateful upstream: nothing is ever server-initiated (the spec allows 405).
            (None, []) => return self.reject(&edge::method_not_allowed("GET"), host),
            (None, several) => {
                let ids: Vec<&str> = several.iter().map(|(u, _)| u.as_str()).collect();
                let headers = vec![(
                    Header::Named(edge::RELAY_UPSTREAMS_HEADER),
                    Some(ids.join(",")),
                )];
                return self.hand_to_relay(
                    "the GET stream of a session over several upstreams",
                    headers,
                    host,
                );
            }
        };
        let (id, sid) = chosen;
        let config = Rc::clone(&self.config);
        let Some(up) = config.edge.upstream(&id) else {
            return self.reject(&edge::unknown_stream(&id), host);
        };
        self.phase = Phase::Forwarded;
        self.routed_upstream = Some(id.clone());
        let mut forward = Forward {
            headers: vec![
                (Header::Named(edge::UPSTREAM_HEADER), None),
                (Header::Named("mcp-session-id"), Some(sid)),
            ],
            body: None,
        };
        self.strip_credentials(&mut forward);
        self.identify_upstream(&id, up, &mut forward, host);
        point_at(up, &mut forward);
        Step::Forward(forward)
    }

    /// Takes in one call's answer; returns the calls it leads to.
    pub(super) fn answered(
        &mut self,
        pending: &mut Pending,
        upstream: String,
        stage: Stage,
        answer: super::CallAnswer,
        host: &mut impl Host,
    ) -> Vec<Call> {
        let ok = answer.status.is_some_and(|s| (200..300).contains(&s));
        if !ok {
            host.warn(&format!(
                "mcpgw: upstream {upstream}: {} answered {:?}",
                stage.label(),
                answer.status
            ));
        }
        let mut more = Vec::new();
        if stage == Stage::Initialize && ok {
            // No session id: a stateless upstream, initialized with nothing to carry.
            let sid = answer.session_id.filter(|v| !v.is_empty());
            if let Some(sid) = &sid {
                let notification =
                    br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec();
                let version = pending.version.clone();
                if let Some(call) = self.call(
                    &upstream,
                    Some(sid),
                    &version,
                    "POST",
                    Some(notification),
                    host,
                ) {
                    pending
                        .calls
                        .insert(call.tag, (upstream.clone(), Stage::Initialized));
                    more.push(call);
                }
            }
            pending.opened.insert(upstream, sid);
        }
        more
    }

    /// Every call answered: record what was opened, then go on.
    pub(super) fn finish_pending(&mut self, pending: Pending, host: &mut impl Host) -> Step {
        if !pending.opened.is_empty() {
            self.store_opened(&pending.opened, &pending.version, host);
            // Another request of the session (a GET stream opening beside a call, or
            // another worker) may have stored its own upstream session first: the session
            // keeps one per upstream, so ours is ended and the stored one used, or an
            // upstream's request to the client and the client's answer would reach two
            // different upstream sessions.
            let stored = |up: &str| {
                self.record
                    .as_ref()
                    .and_then(|r| r.upstreams.get(up))
                    .and_then(|u| u.session_id.clone())
            };
            let losers: Vec<(String, String)> = pending
                .opened
                .iter()
                .filter_map(|(up, sid)| {
                    let sid = sid.clone()?;
                    (stored(up).as_ref() != Some(&sid)).then(|| (up.clone(), sid))
                })
                .collect();
            // The client set a log level (perhaps while these opened): tell the new ones.
            // The record was just written by compare-and-swap, so either the level was
            // already in it, or the `logging/setLevel` that stored it saw these sessions.
            let level = self.record.as_ref().and_then(|r| r.log_level.clone());
            let told: Vec<(String, String)> = match level {
                Some(_) => pending
                    .opened
                    .iter()
                    .filter_map(|(up, sid)| {
                        let sid = sid.clone()?;
                        (stored(up).as_ref() == Some(&sid)).then(|| (up.clone(), sid))
                    })
                    .collect(),
                None => Vec::new(),
            };
            if !losers.is_empty() || !told.is_empty() {
                let version = pending.version.clone();
                let mut next = Pending::new(pending.kind, version.clone());
                let mut calls = Vec::new();
                for (up, sid) in told {
                    let mut body = br#"{"jsonrpc":"2.0","id":"mcpgw-level","method":"logging/setLevel","params":{"level":"#
                        .to_vec();
                    write_json_string(&mut body, level.as_deref().unwrap_or_default());
                    body.extend_from_slice(b"}}");
                    if let Some(call) =
                        self.call(&up, Some(&sid), &version, "POST", Some(body), host)
                    {
                        next.calls.insert(call.tag, (up, Stage::SetLevel));
                        calls.push(call);
                    }
                }
                for (up, sid) in losers {
                    if let Some(call) = self.call(&up, Some(&sid), &version, "DELETE", None, host) {
                        next.calls.insert(call.tag, (up, Stage::Delete));
                        calls.push(call);
                    }
                }
                return self.await_calls(next, calls, host);
            }
        }
        match pending.kind {
            PendingKind::Route {
                mut forward,
                upstream,
            } => {
                // The session's upstream session, as the table holds it. One that failed
                // to open: the call goes without, and the upstream answers it as it answers
                // sessionless calls.
                let sid = self
                    .record
                    .as_ref()
                    .and_then(|r| r.upstreams.get(&upstream))
                    .and_then(|u| u.session_id.clone());
                if sid.is_some() {
                    self.routed_upstream = Some(upstream);
                }
                self.set_session_header(&mut forward, sid);
                self.phase = Phase::Forwarded;
                Step::Forward(forward)
            }
            PendingKind::Broadcast {
                reply: (status, body),
            } => self.reply(status, body),
            PendingKind::Stream { pick } => self.choose_stream(pick, host),
            PendingKind::Delete => self.reply(200, None),
        }
    }

    /// Updates this session's record with `change`, by compare-and-swap; returns what
    /// `change` returned, or `None` when every attempt lost to another writer.
    pub(super) fn update_record<T>(
        &mut self,
        host: &mut impl Host,
        mut change: impl FnMut(&mut Record, u64) -> T,
    ) -> Option<T> {
        let claims = self.session.as_ref()?;
        let (id, expires_at) = (claims.id.clone(), claims.expires_at);
        let key = slot_key(&id);
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = host.shared_get(&key);
            let mut slot = Slot::parse(value.as_deref());
            let now = host.now();
            let record = slot.entry(&id, expires_at);
            let out = change(record, now);
            let written = record.clone();
            if host.shared_set(&key, &slot.to_bytes(), cas) {
                self.record = Some(written);
                return Some(out);
            }
        }
        host.warn(&format!(
            "mcpgw: session table slot {key} kept changing; gave up updating session {id}"
        ));
        None
    }

    fn store_opened(
        &mut self,
        opened: &BTreeMap<String, Option<String>>,
        version: &str,
        host: &mut impl Host,
    ) {
        self.update_record(host, |record, now| {
            for (up, sid) in opened {
                record
                    .upstreams
                    .entry(up.clone())
                    .or_insert_with(|| UpstreamSession {
                        session_id: sid.clone(),
                        protocol_version: version.to_owned(),
                        last_used: now,
                    });
            }
        });
    }

    /// Stamps `upstream`'s session of this session as used now (one attempt: a lost race
    /// only means someone else stamped it).
    fn touch(&mut self, upstream: &str, host: &mut impl Host) {
        let Some(claims) = self.session.as_ref() else {
            return;
        };
        let key = slot_key(&claims.id);
        let (value, cas) = host.shared_get(&key);
        let mut slot = Slot::parse(value.as_deref());
        let now = host.now();
        let record = slot.entry(&claims.id, claims.expires_at);
        if let Some(us) = record.upstreams.get_mut(upstream) {
            us.last_used = now;
            host.shared_set(&key, &slot.to_bytes(), cas);
        }
    }

    /// Marks this session ended and takes the upstream sessions it held.
    fn mark_ended(&mut self, host: &mut impl Host) -> BTreeMap<String, UpstreamSession> {
        self.update_record(host, |record, _| {
            record.ended = true;
            std::mem::take(&mut record.upstreams)
        })
        .unwrap_or_default()
    }
}

impl Exchange {
    /// The session's open upstream sessions: (upstream id, session id, version).
    fn open_upstreams(&self) -> Vec<(String, String, String)> {
        self.record.as_ref().map_or_else(Vec::new, |r| {
            r.upstreams
                .iter()
                .filter_map(|(u, s)| {
                    Some((u.clone(), s.session_id.clone()?, s.protocol_version.clone()))
                })
                .collect()
        })
    }

    /// Sends `body` to every open upstream session of the client's session, then answers
    /// the client with `reply`.
    fn broadcast(
        &mut self,
        body: &[u8],
        reply: (u16, Option<Vec<u8>>),
        host: &mut impl Host,
    ) -> Step {
        let mut pending = Pending::new(PendingKind::Broadcast { reply }, self.session_version());
        let mut calls = Vec::new();
        for (up, sid, version) in self.open_upstreams() {
            if let Some(call) =
                self.call(&up, Some(&sid), &version, "POST", Some(body.to_vec()), host)
            {
                pending.calls.insert(call.tag, (up, Stage::Broadcast));
                calls.push(call);
            }
        }
        self.await_calls(pending, calls, host)
    }

    /// A client notification to a virtual server: the ones an upstream acts on (a
    /// cancellation, progress, changed roots) go to every upstream session of the client's
    /// session, which ignores what it did not ask about; the rest are acknowledged.
    pub(super) fn pass_notification(&mut self, msg: &Message, host: &mut impl Host) -> Step {
        let passed = matches!(
            msg.method,
            Some(
                Method::NotificationsCancelled
                    | Method::NotificationsProgress
                    | Method::NotificationsRootsListChanged
            )
        );
        if !passed || self.session.is_none() || self.era == Era::Modern {
            return self.reply(202, None);
        }
        let body = std::mem::take(&mut self.body);
        self.broadcast(&body, (202, None), host)
    }

    /// `logging/setLevel`: told to every open upstream session, remembered for those that
    /// open later, answered with an empty result.
    pub(super) fn set_level(&mut self, msg: &Message, host: &mut impl Host) -> Step {
        let reply = super::edge_result(msg.id.as_ref(), "{}");
        if self.session.is_none() {
            return self.reply(200, Some(reply));
        }
        let level = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.pointer("/params/level")?.as_str().map(str::to_owned));
        if let Some(level) = level {
            self.update_record(host, |record, _| record.log_level = Some(level.clone()));
        }
        let body = std::mem::take(&mut self.body);
        self.broadcast(&body, (200, Some(reply)), host)
    }

    /// A client's answer to a request an upstream sent it: back to that upstream's session
    /// with the id the upstream gave it.
    pub(super) fn route_response(&mut self, msg: &Message, host: &mut impl Host) -> Step {
        let refuse = |why: &str| {
            Rejection::new(
                Reason::UnknownResponse,
                None,
                format!("a response to a request no upstream of this session made: {why}"),
            )
        };
        let config = Rc::clone(&self.config);
        let (Some(keys), Some(session)) = (config.edge.sessions().map(|s| &s.keys), &self.session)
        else {
            return self.reject(&refuse("the client has no session"), host);
        };
        let id = msg.id.as_ref().map_or("", |i| i.as_json());
        let Some((upstream, original)) = open_server_request_id(keys, &session.id, id) else {
            return self.reject(&refuse("its id is not one the gateway gave"), host);
        };
        let Some((_, sid, _)) = self
            .open_upstreams()
            .into_iter()
            .find(|(u, _, _)| *u == upstream)
        else {
            return self.reject(&refuse("that upstream's session is gone"), host);
        };
        let Some(up) = config.edge.upstream(&upstream) else {
            return self.reject(&refuse("that upstream is gone"), host);
        };
        let body = std::mem::take(&mut self.body);
        let Some((start, end)) = msg.id_span else {
            return self.internal_error("response id span missing", host);
        };
        let Some(rewritten) =
            super::bridge::splice(&body, vec![(start, end, original.into_bytes())])
        else {
            return self.internal_error("response id span outside the body", host);
        };
        self.phase = Phase::Forwarded;
        let mut forward = Forward {
            headers: vec![
                (
                    Header::Named("content-length"),
                    Some(rewritten.len().to_string()),
                ),
                (Header::Named("mcp-session-id"), Some(sid)),
            ],
            body: Some(rewritten),
        };
        self.strip_credentials(&mut forward);
        point_at(up, &mut forward);
        Step::Forward(forward)
    }
}

/// Prefix of the ids the gateway gives upstreams' requests to clients.
const SERVER_REQUEST_PREFIX: &str = "mcpgw:";

/// The id a client sees on a request `upstream` sent it in `session` (`original`: the
/// upstream's id, as JSON text): a string naming the upstream and carrying the original,
/// tagged with the gateway's key so a client can neither forge one nor reuse it in another
/// session. Two upstreams that pick the same id never collide.
pub(super) fn server_request_id(
    keys: &crate::session::SessionKeys,
    session: &str,
    upstream: &str,
    original: &str,
) -> String {
    use base64::Engine as _;
    let packed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(original);
    let tag = keys.tag(&[session, upstream, original]);
    format!("\"{SERVER_REQUEST_PREFIX}{upstream}:{packed}:{tag}\"")
}

/// The upstream and original id behind an id from [`server_request_id`] (`id`: JSON text).
fn open_server_request_id(
    keys: &crate::session::SessionKeys,
    session: &str,
    id: &str,
) -> Option<(String, String)> {
    use base64::Engine as _;
    let inner = id.strip_prefix('"')?.strip_suffix('"')?;
    let mut parts = inner.strip_prefix(SERVER_REQUEST_PREFIX)?.split(':');
    let (upstream, packed, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let original = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(packed)
        .ok()?;
    let original = String::from_utf8(original).ok()?;
    let expected = keys.tag(&[session, upstream, &original]);
    // Compared in constant time: a tag is a secret-derived value.
    let agrees = expected.len() == tag.len()
        && expected
            .bytes()
            .zip(tag.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    agrees.then(|| (upstream.to_owned(), original))
}

/// What one sweep of a session-table slot does: the value to store (when anything
/// changed) and the `DELETE`s that end idle or expired upstream sessions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// The slot's new value; `None` when nothing changed.
    pub value: Option<Vec<u8>>,
    /// The slot holds no record any more.
    pub empty: bool,
    /// Calls ending upstream sessions; their answers need no handling.
    pub calls: Vec<Call>,
}

/// Sweeps one slot of the session table at `now` under `config` (nothing without sessions).
/// Call tags start after `first_tag`.
pub fn sweep(config: &Config, value: Option<&[u8]>, now: u64, first_tag: u32) -> Sweep {
    let Some(sessions) = config.edge.sessions() else {
        return Sweep::default();
    };
    let mut slot = Slot::parse(value);
    let before = slot.records.len();
    let ended = slot.sweep(now, sessions.idle_seconds);
    if ended.is_empty() && slot.records.len() == before {
        return Sweep::default();
    }
    let calls = ended
        .iter()
        .zip(first_tag.saturating_add(1)..)
        .filter_map(|(e, tag)| {
            upstream_call(
                config,
                tag,
                &e.upstream,
                Some(&e.session_id),
                &e.protocol_version,
                "DELETE",
                None,
            )
        })
        .collect();
    Sweep {
        value: Some(slot.to_bytes()),
        empty: slot.records.is_empty(),
        calls,
    }
}
