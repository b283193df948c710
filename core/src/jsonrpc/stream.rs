//! An incremental JSON-RPC envelope parser.
//!
//! [`MessageParser`] is fed the body chunk by chunk as Envoy delivers it. It validates the
//! JSON syntax of everything it reads (UTF-8 included) with a byte-level pushdown automaton,
//! builds no tree, and captures only the envelope fields the gateway routes and decides on
//! (`jsonrpc`, `method`, `id`, `params.name`, `params.uri`, `params._meta.*`, `error.code`).
//! With [`Options::stop_when_routable`] it stops as soon as a single request carries
//! everything needed to route it, so the rest of a large body (tool arguments) streams
//! through without being buffered or read — the trade-off Envoy's native MCP filter makes
//! with `early_terminate_when_routable`: bytes after that point are not validated.
//!
//! Keys that decide routing (`method`, `params.name`, …) are always checked for duplicates,
//! because different parsers resolve `{"method":"a","method":"b"}` differently; with
//! [`Options::reject_duplicate_keys`] every object in the body is checked.

use super::{Id, Kind, Message, Meta, RequestError};
use crate::mcp::{Method, Target};
use std::collections::HashSet;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 128;
/// Longest captured envelope string (method, tool name, URI, trace context), in bytes.
pub const MAX_CAPTURE: usize = 8192;

/// Parser settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Reject any object, anywhere in the body, that repeats a key.
    pub reject_duplicate_keys: bool,
    /// Stop reading once a single (non-batch) request is routable. Ignored when
    /// `reject_duplicate_keys` is set, which needs the whole body.
    pub stop_when_routable: bool,
    /// Skim containers no envelope field lies in (a response's `result`, `error.data`):
    /// only their strings and brackets are followed, to find where they end; nothing in
    /// them is validated. For observing responses, which are not the gateway's to
    /// validate: a large result costs a few instructions per byte instead of a full
    /// parse. Ignored when `reject_duplicate_keys` is set.
    pub skim: bool,
    /// Stop reading a single (non-batch) message at its first top-level `result` or
    /// `error` key: [`Progress::Settled`] says which. What follows, and whether it is
    /// well-formed, is not read. For counting responses by kind, which is all an
    /// observer needs of a large one.
    pub settle: bool,
    /// Most elements a batch may have (0: no limit). The parser stops at the first one
    /// over, before holding it: a body of a million tiny messages costs nothing.
    pub max_batch_messages: u32,
}

/// Where parsing stands after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More input is needed.
    NeedMore,
    /// The request is routable; [`MessageParser::routable`] has it. Stop feeding.
    Routable,
    /// A complete JSON value has been read; only whitespace may follow.
    Complete,
    /// ([`Options::settle`]) A single message's kind is known from its first `result` or
    /// `error` key; the parser has stopped reading. Stop feeding.
    Settled(Kind),
}

/// A parsed body.
#[derive(Debug, Clone, PartialEq, Eq)]
// One per request body, moved once: boxing the single message would cost an allocation
// per request to save stack space nobody needs.
#[allow(clippy::large_enum_variant)]
pub enum Body {
    /// One message.
    Single(Message),
    /// A JSON-RPC batch.
    Batch(Vec<Message>),
}

impl Body {
    /// The messages of the body, in order.
    pub fn messages(&self) -> &[Message] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(ms) => ms,
        }
    }
}

/// What an object or array is, as far as the envelope is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Batch,
    Message,
    Params,
    Meta,
    Ref,
    ErrorObj,
    /// An object whose byte span is recorded.
    Spanned(Span),
    Other,
}

/// The objects whose byte span the parser records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// `params.capabilities` (`initialize`).
    Capabilities,
    /// `params.clientInfo` (`initialize`).
    ClientInfo,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]` (2026-07-28).
    MetaCapabilities,
    /// `params._meta["io.modelcontextprotocol/clientInfo"]` (2026-07-28).
    MetaClientInfo,
    /// `params.arguments` (`tools/call`).
    Arguments,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    object: bool,
    ctx: Ctx,
    serial: u32,
}

/// The grammar position between tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Value,
    FirstValueOrEnd,
    FirstKeyOrEnd,
    Key,
    Colon,
    CommaOrEnd,
    Trailing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Hex {
        n: u8,
        val: u16,
    },
    /// After a high surrogate: a `\` must follow.
    LowBackslash,
    /// After a high surrogate and `\`: a `u` must follow.
    LowU,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Ws,
    Str,
    Num(Num),
    Lit {
        word: &'static [u8],
        pos: u8,
    },
    /// Inside a skimmed container ([`Options::skim`]): `depth` brackets open.
    Skim {
        depth: u32,
        in_str: bool,
        esc: bool,
    },
}

/// The envelope field a value fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Skip,
    Root,
    BatchElement,
    Jsonrpc,
    Method,
    Id,
    Params,
    Result,
    Error,
    Name,
    Uri,
    Meta,
    ProgressToken,
    Traceparent,
    Tracestate,
    ErrorCode,
    Cursor,
    ProtocolVersion,
    Ref,
    RefName,
    RefUri,
    Capabilities,
    ClientInfo,
    MetaVersion,
    MetaCapabilities,
    MetaClientInfo,
    MetaLogLevel,
    Arguments,
}

impl Slot {
    fn field(self) -> &'static str {
        match self {
            Slot::Jsonrpc => "jsonrpc",
            Slot::Method => "method",
            Slot::Id => "id",
            Slot::Params => "params",
            Slot::Result => "result",
            Slot::Error => "error",
            Slot::Name => "params.name",
            Slot::Uri => "params.uri",
            Slot::Meta => "params._meta",
            Slot::ProgressToken => "params._meta.progressToken",
            Slot::Traceparent => "params._meta.traceparent",
            Slot::Tracestate => "params._meta.tracestate",
            Slot::ErrorCode => "error.code",
            Slot::Cursor => "params.cursor",
            Slot::ProtocolVersion => "params.protocolVersion",
            Slot::Ref => "params.ref",
            Slot::RefName => "params.ref.name",
            Slot::RefUri => "params.ref.uri",
            Slot::Capabilities => "params.capabilities",
            Slot::ClientInfo => "params.clientInfo",
            Slot::MetaVersion => "params._meta.io.modelcontextprotocol/protocolVersion",
            Slot::MetaCapabilities => "params._meta.io.modelcontextprotocol/clientCapabilities",
            Slot::MetaClientInfo => "params._meta.io.modelcontextprotocol/clientInfo",
            Slot::MetaLogLevel => "params._meta.io.modelcontextprotocol/logLevel",
            Slot::Arguments => "params.arguments",
            Slot::Skip | Slot::Root | Slot::BatchElement => "",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// How a scalar in this slot is captured.
    fn capture(self) -> Capture {
        match self {
            Slot::Jsonrpc
            | Slot::Method
            | Slot::Name
            | Slot::Uri
            | Slot::Traceparent
            | Slot::Tracestate
            | Slot::Cursor
            | Slot::ProtocolVersion
            | Slot::RefName
            | Slot::RefUri
            | Slot::MetaVersion
            | Slot::MetaLogLevel => Capture::Decoded,
            Slot::Id | Slot::ProgressToken | Slot::ErrorCode => Capture::Raw,
            _ => Capture::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    None,
    Decoded,
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Str,
    Num,
    Bool,
    Null,
}

/// The envelope of the message being read.
#[derive(Debug, Default)]
struct Envelope {
    jsonrpc_ok: Option<bool>,
    method: Option<Method>,
    id: Option<Id>,
    name: Option<String>,
    uri: Option<String>,
    progress_token: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    cursor: Option<String>,
    protocol_version: Option<String>,
    name_start: u64,
    name_span: Option<(u64, u64)>,
    ref_name: Option<String>,
    ref_uri: Option<String>,
    ref_name_span: Option<(u64, u64)>,
    span_start: u64,
    /// Spans of the objects in [`Span`] order.
    spans: [Option<(u64, u64)>; 5],
    meta_version: Option<String>,
    meta_log_level: Option<String>,
    meta_object: bool,
    id_start: u64,
    id_span: Option<(u64, u64)>,
    result_open: Option<u64>,
    params_open: Option<u64>,
    meta_open: Option<u64>,
    has_params_object: bool,
    has_result: bool,
    has_error: bool,
    error_code: Option<i64>,
    seen: u32,
    invalid: Option<String>,
    invalid_params: Option<String>,
}

impl Envelope {
    fn span(&self, which: Span) -> Option<(u64, u64)> {
        self.spans.get(which as usize).copied().flatten()
    }

    fn mark_invalid(&mut self, reason: String) {
        self.invalid.get_or_insert(reason);
    }

    /// Whether a request has everything routing needs (and nothing known to be wrong).
    fn routable(&self) -> bool {
        if self.invalid.is_some() || self.invalid_params.is_some() || self.jsonrpc_ok != Some(true)
        {
            return false;
        }
        let (Some(method), Some(id)) = (&self.method, &self.id) else {
            return false;
        };
        if *id == Id::Null {
            return false;
        }
        match method.target() {
            Target::None => true,
            Target::Name => self.name.is_some(),
            Target::Uri => self.uri.is_some(),
        }
    }

    fn into_message(self) -> Result<Message, RequestError> {
        // Array of five, indexed by constants: in bounds.
        #[allow(clippy::indexing_slicing)]
        let spans = [
            self.span(Span::Capabilities),
            self.span(Span::ClientInfo),
            self.span(Span::MetaCapabilities),
            self.span(Span::MetaClientInfo),
            self.span(Span::Arguments),
        ];
        let id = self.id;
        if let Some(reason) = self.invalid {
            return Err(RequestError::Invalid { id, reason });
        }
        match self.jsonrpc_ok {
            None => {
                return Err(RequestError::Invalid {
                    id,
                    reason: "missing \"jsonrpc\": \"2.0\"".into(),
                });
            }
            Some(false) => {
                return Err(RequestError::Invalid {
                    id,
                    reason: "\"jsonrpc\" must be \"2.0\"".into(),
                });
            }
            Some(true) => {}
        }
        let kind = match (&self.method, &id, self.has_result, self.has_error) {
            (Some(_), _, false, false) if id.is_none() => Kind::Notification,
            (Some(_), Some(Id::Null), false, false) => {
                return Err(RequestError::Invalid {
                    id,
                    reason: "a request id must not be null".into(),
                });
            }
            (Some(_), Some(_), false, false) => Kind::Request,
            (None, Some(_), true, false) => Kind::Result,
            (None, Some(_), false, true) => Kind::Error,
            (Some(_), _, _, _) => {
                return Err(RequestError::Invalid {
                    id,
                    reason: "a request must not carry result or error".into(),
                });
            }
            (None, _, true, true) => {
                return Err(RequestError::Invalid {
                    id,
                    reason: "a response carries both result and error".into(),
                });
            }
            (None, None, true, _) | (None, None, _, true) => {
                return Err(RequestError::Invalid {
                    id,
                    reason: "a response needs an id".into(),
                });
            }
            (None, _, false, false) => {
                return Err(RequestError::Invalid {
                    id,
                    reason: "not a JSON-RPC message: no method, result or error".into(),
                });
            }
        };
        if matches!(kind, Kind::Request | Kind::Notification) {
            if let Some(reason) = self.invalid_params {
                return Err(RequestError::InvalidParams { id, reason });
            }
            let method = self.method.as_ref().map_or("", Method::as_str);
            let missing = match self.method.as_ref().map_or(Target::None, Method::target) {
                Target::Name if self.name.is_none() => Some("params.name"),
                Target::Uri if self.uri.is_none() => Some("params.uri"),
                _ => None,
            };
            if let Some(field) = missing {
                let shape = if self.has_params_object {
                    ""
                } else {
                    " (params must be an object)"
                };
                return Err(RequestError::InvalidParams {
                    id,
                    reason: format!("{method} requires a string {field}{shape}"),
                });
            }
        }
        Ok(Message {
            kind,
            method: self.method,
            id,
            name: self.name,
            uri: self.uri,
            progress_token: self.progress_token,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            error_code: self.error_code,
            cursor: self.cursor,
            protocol_version: self.protocol_version,
            name_span: self.name_span,
            ref_name: self.ref_name,
            ref_uri: self.ref_uri,
            ref_name_span: self.ref_name_span,
            capabilities_span: spans[0],
            client_info_span: spans[1],
            meta: Meta {
                protocol_version: self.meta_version,
                log_level: self.meta_log_level,
                object: self.meta_object,
                capabilities_span: spans[2],
                client_info_span: spans[3],
                open: self.meta_open,
            },
            arguments_span: spans[4],
            id_span: self.id_span,
            result_open: self.result_open,
            params_open: self.params_open,
        })
    }
}

/// Identity hasher for keys that are already hashes: safe because those hashes are keyed
/// (SipHash under a per-process random key), so a client cannot choose colliding keys.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The incremental parser. See the module docs.
#[derive(Debug)]
pub struct MessageParser {
    opts: Options,
    offset: u64,
    failed: Option<RequestError>,
    stack: Vec<Frame>,
    expect: Expect,
    lex: Lex,
    // String state.
    esc: Esc,
    utf8_need: u8,
    utf8_lo: u8,
    utf8_hi: u8,
    high_surrogate: u16,
    str_is_key: bool,
    // Key being read.
    key_buf: [u8; 48],
    key_len: usize,
    key_long: bool,
    /// With `reject_duplicate_keys`: the random key of the key hashes, and the hash of the
    /// key being read. Keyed, so a body cannot be built to collide two distinct keys (a
    /// false duplicate) or to flood one hash-set bucket.
    key_state: Option<RandomState>,
    key_hash: Option<DefaultHasher>,
    // Value being read.
    slot: Slot,
    capture: Capture,
    cap: Vec<u8>,
    cap_overflow: bool,
    // Envelope.
    batch: Option<bool>,
    env: Envelope,
    messages: Vec<Message>,
    invalid: Option<RequestError>,
    routable: bool,
    settled: Option<Kind>,
    serial: u32,
    batch_len: u32,
    keys: HashSet<u64, BuildHasherDefault<PreHashed>>,
}

type Step = Result<(), RequestError>;

impl MessageParser {
    /// A parser for one body.
    pub fn new(opts: Options) -> Self {
        MessageParser {
            opts,
            offset: 0,
            failed: None,
            stack: Vec::new(),
            expect: Expect::Value,
            lex: Lex::Ws,
            esc: Esc::None,
            utf8_need: 0,
            utf8_lo: 0,
            utf8_hi: 0,
            high_surrogate: 0,
            str_is_key: false,
            key_buf: [0; 48],
            key_len: 0,
            key_long: false,
            key_state: opts.reject_duplicate_keys.then(RandomState::new),
            key_hash: None,
            slot: Slot::Root,
            capture: Capture::None,
            cap: Vec::new(),
            cap_overflow: false,
            batch: None,
            env: Envelope::default(),
            messages: Vec::new(),
            invalid: None,
            routable: false,
            settled: None,
            serial: 0,
            batch_len: 0,
            keys: HashSet::default(),
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds the next chunk. After [`Progress::Routable`] the parser has stopped reading
    /// (the rest of the chunk was not examined); call [`MessageParser::routable`].
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Progress, RequestError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.routable {
            return Ok(Progress::Routable);
        }
        if let Some(kind) = self.settled {
            return Ok(Progress::Settled(kind));
        }
        match self.run(chunk) {
            Ok(()) if self.routable => Ok(Progress::Routable),
            Ok(()) if let Some(kind) = self.settled => Ok(Progress::Settled(kind)),
            Ok(()) if self.expect == Expect::Trailing && self.lex == Lex::Ws => {
                Ok(Progress::Complete)
            }
            Ok(()) => Ok(Progress::NeedMore),
            Err(err) => {
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Offset of the `{` that opens the `result` of the message being read (after
    /// [`Progress::Settled`] with [`Kind::Result`]: where a gateway may insert members).
    pub fn result_open(&self) -> Option<u64> {
        self.env.result_open
    }

    /// The routable request after [`Progress::Routable`].
    pub fn routable(&self) -> Option<Message> {
        if !self.routable {
            return None;
        }
        let env = &self.env;
        Some(Message {
            kind: Kind::Request,
            method: env.method.clone(),
            id: env.id.clone(),
            name: env.name.clone(),
            uri: env.uri.clone(),
            progress_token: env.progress_token.clone(),
            traceparent: env.traceparent.clone(),
            tracestate: env.tracestate.clone(),
            error_code: None,
            cursor: env.cursor.clone(),
            protocol_version: env.protocol_version.clone(),
            name_span: env.name_span,
            ref_name: env.ref_name.clone(),
            ref_uri: env.ref_uri.clone(),
            ref_name_span: env.ref_name_span,
            capabilities_span: env.span(Span::Capabilities),
            client_info_span: env.span(Span::ClientInfo),
            meta: Meta {
                protocol_version: env.meta_version.clone(),
                log_level: env.meta_log_level.clone(),
                object: env.meta_object,
                capabilities_span: env.span(Span::MetaCapabilities),
                client_info_span: env.span(Span::MetaClientInfo),
                open: env.meta_open,
            },
            arguments_span: env.span(Span::Arguments),
            id_span: env.id_span,
            result_open: env.result_open,
            params_open: env.params_open,
        })
    }

    /// Ends the body: checks that it was one complete JSON value and a valid JSON-RPC
    /// message or batch.
    pub fn finish(mut self) -> Result<Body, RequestError> {
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        if let Lex::Num(state) = self.lex {
            // A number at the root ends at end of input.
            if !num_complete(state) {
                return Err(self.syntax("unexpected end of input in a number"));
            }
            self.lex = Lex::Ws;
            self.value_done(Scalar::Num)?;
        }
        if self.expect != Expect::Trailing || self.lex != Lex::Ws {
            return Err(self.syntax("unexpected end of input"));
        }
        if let Some(err) = self.invalid {
            return Err(err);
        }
        match self.batch {
            Some(true) if self.messages.is_empty() => Err(RequestError::Invalid {
                id: None,
                reason: "empty batch".into(),
            }),
            Some(true) => Ok(Body::Batch(self.messages)),
            Some(false) => match self.messages.pop() {
                Some(m) => Ok(Body::Single(m)),
                None => Err(RequestError::Invalid {
                    id: None,
                    reason: "empty message".into(),
                }),
            },
            None => Err(RequestError::Invalid {
                id: None,
                reason: "not a JSON-RPC message: expected an object or an array".into(),
            }),
        }
    }

    fn syntax(&self, reason: &'static str) -> RequestError {
        RequestError::Parse {
            offset: self.offset,
            reason,
        }
    }

    fn run(&mut self, chunk: &[u8]) -> Step {
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            match self.lex {
                Lex::Ws => {
                    self.token(b)?;
                    i += 1;
                    self.offset += 1;
                    if self.stopped() {
                        return Ok(());
                    }
                }
                Lex::Str => {
                    // Fast path: plain ASCII string content that is not captured.
                    if self.esc == Esc::None && self.utf8_need == 0 && !self.capturing_str() {
                        let rest = chunk.get(i..).unwrap_or_default();
                        let plain = rest
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
                            .unwrap_or(rest.len());
                        if plain > 0 {
                            if self.str_is_key {
                                for &c in rest.get(..plain).unwrap_or_default() {
                                    self.key_byte(c);
                                }
                            }
                            i += plain;
                            self.offset += plain as u64;
                            continue;
                        }
                    }
                    self.string_byte(b)?;
                    i += 1;
                    self.offset += 1;
                    if self.stopped() {
                        return Ok(());
                    }
                }
                Lex::Num(state) => {
                    if let Some(next) = num_step(state, b) {
                        self.lex = Lex::Num(next);
                        if self.capture == Capture::Raw {
                            self.cap_push(b);
                        }
                        i += 1;
                        self.offset += 1;
                    } else {
                        if !num_complete(state) {
                            return Err(self.syntax("invalid number"));
                        }
                        self.lex = Lex::Ws;
                        self.value_done(Scalar::Num)?;
                        if self.stopped() {
                            return Ok(());
                        }
                        // Re-read `b` as the token after the number.
                    }
                }
                Lex::Skim {
                    mut depth,
                    mut in_str,
                    mut esc,
                } => {
                    let rest = chunk.get(i..).unwrap_or_default();
                    let mut k = 0;
                    // Jump from one byte that matters to the next: in a string, a quote
                    // or a backslash; outside, a quote or a bracket.
                    while depth > 0 && k < rest.len() {
                        if esc {
                            esc = false;
                            k += 1;
                            continue;
                        }
                        let tail = rest.get(k..).unwrap_or_default();
                        let next = if in_str {
                            tail.iter().position(|&c| c == b'"' || c == b'\\')
                        } else {
                            tail.iter()
                                .position(|&c| matches!(c, b'"' | b'{' | b'}' | b'[' | b']'))
                        };
                        let Some(at) = next else {
                            k = rest.len();
                            break;
                        };
                        k += at + 1;
                        match tail.get(at) {
                            Some(b'\\') => esc = true,
                            Some(b'"') => in_str = !in_str,
                            Some(b'{' | b'[') => depth = depth.saturating_add(1),
                            _ => depth = depth.saturating_sub(1),
                        }
                    }
                    i += k;
                    self.offset += k as u64;
                    if depth == 0 {
                        self.lex = Lex::Ws;
                        self.after_value();
                    } else {
                        self.lex = Lex::Skim { depth, in_str, esc };
                    }
                }
                Lex::Lit { word, pos } => {
                    if word.get(usize::from(pos)) != Some(&b) {
                        return Err(self.syntax("invalid literal"));
                    }
                    i += 1;
                    self.offset += 1;
                    let pos = pos + 1;
                    if usize::from(pos) == word.len() {
                        self.lex = Lex::Ws;
                        let kind = if word == b"null" {
                            Scalar::Null
                        } else {
                            Scalar::Bool
                        };
                        self.value_done(kind)?;
                        if self.stopped() {
                            return Ok(());
                        }
                    } else {
                        self.lex = Lex::Lit { word, pos };
                    }
                }
            }
        }
        Ok(())
    }

    /// Reading stops here: the request is routable, or the response settled.
    fn stopped(&self) -> bool {
        self.routable || self.settled.is_some()
    }

    /// A single message's `result` or `error` was reached: with [`Options::settle`], its
    /// kind is known.
    fn settle(&mut self, kind: Kind) {
        if self.opts.settle && self.batch == Some(false) && self.settled.is_none() {
            self.settled = Some(kind);
        }
    }

    fn capturing_str(&self) -> bool {
        !self.str_is_key && self.capture != Capture::None
    }

    /// A byte between tokens.
    fn token(&mut self, b: u8) -> Step {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return Ok(());
        }
        match self.expect {
            Expect::Value | Expect::FirstValueOrEnd => {
                if b == b']' && self.expect == Expect::FirstValueOrEnd {
                    return self.close(false);
                }
                self.begin_value(b)
            }
            Expect::FirstKeyOrEnd | Expect::Key => match b {
                b'"' => {
                    self.begin_string(true);
                    Ok(())
                }
                b'}' if self.expect == Expect::FirstKeyOrEnd => self.close(true),
                _ => Err(self.syntax("expected an object key")),
            },
            Expect::Colon => {
                if b == b':' {
                    self.expect = Expect::Value;
                    Ok(())
                } else {
                    Err(self.syntax("expected ':'"))
                }
            }
            Expect::CommaOrEnd => {
                let object = self.stack.last().is_some_and(|f| f.object);
                match b {
                    b',' if object => {
                        self.expect = Expect::Key;
                        Ok(())
                    }
                    b',' => {
                        self.slot = self.element_slot();
                        self.expect = Expect::Value;
                        Ok(())
                    }
                    b'}' if object => self.close(true),
                    b']' if !object => self.close(false),
                    _ => Err(self.syntax("expected ',' or the end of the container")),
                }
            }
            Expect::Trailing => Err(self.syntax("trailing characters after the JSON value")),
        }
    }

    fn element_slot(&self) -> Slot {
        match self.stack.last() {
            Some(Frame {
                ctx: Ctx::Batch, ..
            }) => Slot::BatchElement,
            _ => Slot::Skip,
        }
    }

    fn begin_value(&mut self, b: u8) -> Step {
        if self.slot == Slot::BatchElement {
            self.count_batch_element()?;
        }
        if self.slot == Slot::Id {
            self.env.id_start = self.offset;
        }
        match b {
            b'{' | b'[' => self.open(b == b'{'),
            b'"' => {
                if matches!(self.slot, Slot::Name | Slot::RefName) {
                    self.env.name_start = self.offset;
                }
                self.begin_scalar();
                self.begin_string(false);
                Ok(())
            }
            b'-' | b'0'..=b'9' => {
                self.begin_scalar();
                if self.capture == Capture::Raw {
                    self.cap_push(b);
                }
                self.lex = Lex::Num(if b == b'-' {
                    Num::Minus
                } else if b == b'0' {
                    Num::Zero
                } else {
                    Num::Int
                });
                Ok(())
            }
            b't' | b'f' | b'n' => {
                self.begin_scalar();
                let word: &'static [u8] = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.lex = Lex::Lit { word, pos: 1 };
                Ok(())
            }
            _ => Err(self.syntax("expected a JSON value")),
        }
    }

    fn begin_scalar(&mut self) {
        self.capture = self.slot.capture();
        self.cap.clear();
        self.cap_overflow = false;
    }

    fn begin_string(&mut self, key: bool) {
        self.lex = Lex::Str;
        self.esc = Esc::None;
        self.utf8_need = 0;
        self.str_is_key = key;
        if key {
            self.key_len = 0;
            self.key_long = false;
            self.key_hash = self.key_state.as_ref().map(RandomState::build_hasher);
        } else if self.capture == Capture::Raw {
            self.cap_push(b'"');
        }
    }

    fn open(&mut self, object: bool) -> Step {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.syntax("nesting too deep"));
        }
        let ctx = match (self.slot, object) {
            (Slot::Root, true) => {
                self.batch = Some(false);
                self.env = Envelope::default();
                Ctx::Message
            }
            (Slot::Root, false) => {
                self.batch = Some(true);
                Ctx::Batch
            }
            (Slot::BatchElement, true) => {
                self.env = Envelope::default();
                Ctx::Message
            }
            (Slot::BatchElement, false) => {
                self.note_invalid(None, "a batch element must be an object".into());
                Ctx::Other
            }
            (Slot::Params, true) => {
                self.env.has_params_object = true;
                self.env.params_open = Some(self.offset);
                Ctx::Params
            }
            (Slot::Meta, true) => {
                self.env.meta_object = true;
                self.env.meta_open = Some(self.offset);
                Ctx::Meta
            }
            (Slot::Ref, true) => Ctx::Ref,
            (
                slot @ (Slot::Capabilities
                | Slot::ClientInfo
                | Slot::MetaCapabilities
                | Slot::MetaClientInfo
                | Slot::Arguments),
                true,
            ) => {
                self.env.span_start = self.offset;
                Ctx::Spanned(match slot {
                    Slot::Capabilities => Span::Capabilities,
                    Slot::ClientInfo => Span::ClientInfo,
                    Slot::MetaCapabilities => Span::MetaCapabilities,
                    Slot::MetaClientInfo => Span::MetaClientInfo,
                    _ => Span::Arguments,
                })
            }
            (Slot::Error, true) => {
                self.env.has_error = true;
                self.settle(Kind::Error);
                Ctx::ErrorObj
            }
            (Slot::Result, _) => {
                self.env.has_result = true;
                if object {
                    self.env.result_open = Some(self.offset);
                }
                self.settle(Kind::Result);
                Ctx::Other
            }
            (
                Slot::Skip
                | Slot::Params
                | Slot::Meta
                | Slot::Ref
                | Slot::Capabilities
                | Slot::ClientInfo
                | Slot::MetaCapabilities
                | Slot::MetaClientInfo
                | Slot::Arguments,
                _,
            ) => Ctx::Other,
            (slot, _) => {
                self.type_error(slot);
                Ctx::Other
            }
        };
        if ctx == Ctx::Other && self.opts.skim && !self.opts.reject_duplicate_keys {
            // Nothing in it is captured: find its end, and read on from there.
            self.lex = Lex::Skim {
                depth: 1,
                in_str: false,
                esc: false,
            };
            return Ok(());
        }
        self.serial = self.serial.wrapping_add(1);
        self.stack.push(Frame {
            object,
            ctx,
            serial: self.serial,
        });
        self.expect = if object {
            Expect::FirstKeyOrEnd
        } else {
            Expect::FirstValueOrEnd
        };
        self.slot = if object {
            Slot::Skip
        } else {
            self.element_slot()
        };
        Ok(())
    }

    fn count_batch_element(&mut self) -> Step {
        self.batch_len = self.batch_len.saturating_add(1);
        let max = self.opts.max_batch_messages;
        if max > 0 && self.batch_len > max {
            return Err(RequestError::Invalid {
                id: None,
                reason: format!("a batch may hold at most {max} messages"),
            });
        }
        Ok(())
    }

    fn close(&mut self, object: bool) -> Step {
        let Some(frame) = self.stack.pop() else {
            return Err(self.syntax("unbalanced container"));
        };
        if frame.object != object {
            return Err(self.syntax("mismatched container end"));
        }
        if let Ctx::Spanned(span) = frame.ctx
            && let Some(slot) = self.env.spans.get_mut(span as usize)
        {
            *slot = Some((self.env.span_start, self.offset + 1));
        }
        if frame.ctx == Ctx::Message {
            let env = std::mem::take(&mut self.env);
            match env.into_message() {
                Ok(m) => self.messages.push(m),
                Err(e) => {
                    if self.invalid.is_none() {
                        self.invalid = Some(e);
                    }
                }
            }
        }
        self.after_value();
        Ok(())
    }

    fn after_value(&mut self) {
        self.expect = if self.stack.is_empty() {
            Expect::Trailing
        } else {
            Expect::CommaOrEnd
        };
        self.capture = Capture::None;
    }

    fn note_invalid(&mut self, id: Option<Id>, reason: String) {
        if self.invalid.is_none() {
            self.invalid = Some(RequestError::Invalid { id, reason });
        }
    }

    fn type_error(&mut self, slot: Slot) {
        let field = slot.field();
        match slot {
            Slot::Name | Slot::Uri => {
                self.env
                    .invalid_params
                    .get_or_insert_with(|| format!("{field} must be a string"));
            }
            Slot::Jsonrpc | Slot::Method => self
                .env
                .mark_invalid(format!("\"{field}\" must be a string")),
            Slot::Id => self
                .env
                .mark_invalid("\"id\" must be a string or a number".into()),
            Slot::Error => self.env.mark_invalid("\"error\" must be an object".into()),
            Slot::ErrorCode => self
                .env
                .mark_invalid("\"error.code\" must be an integer".into()),
            _ => {}
        }
    }

    /// A scalar value (string, number, literal) ended.
    fn value_done(&mut self, kind: Scalar) -> Step {
        let slot = self.slot;
        if self.cap_overflow {
            let field = slot.field();
            self.env
                .mark_invalid(format!("{field} is longer than {MAX_CAPTURE} bytes"));
        } else {
            match (slot, kind) {
                (Slot::Root, _) => self.note_invalid(
                    None,
                    "not a JSON-RPC message: expected an object or an array".into(),
                ),
                (Slot::BatchElement, _) => {
                    self.note_invalid(None, "a batch element must be an object".into())
                }
                (Slot::Jsonrpc, Scalar::Str) => self.env.jsonrpc_ok = Some(self.cap == b"2.0"),
                (Slot::Method, Scalar::Str) => {
                    self.env.method = Some(Method::parse(&self.take_string()));
                }
                (Slot::Id, Scalar::Str) => {
                    self.env.id = Some(Id::Str(self.take_string()));
                    self.env.id_span = Some((self.env.id_start, self.offset + 1));
                }
                (Slot::Id, Scalar::Num) => {
                    self.env.id = Some(Id::Num(self.take_string()));
                    // A number ends at the byte after it.
                    self.env.id_span = Some((self.env.id_start, self.offset));
                }
                (Slot::Id, Scalar::Null) => self.env.id = Some(Id::Null),
                (Slot::Name, Scalar::Str) => {
                    self.env.name = Some(self.take_string());
                    self.env.name_span = Some((self.env.name_start, self.offset + 1));
                }
                (Slot::Cursor, Scalar::Str) => self.env.cursor = Some(self.take_string()),
                (Slot::RefName, Scalar::Str) => {
                    self.env.ref_name = Some(self.take_string());
                    self.env.ref_name_span = Some((self.env.name_start, self.offset + 1));
                }
                (Slot::RefUri, Scalar::Str) => self.env.ref_uri = Some(self.take_string()),
                (Slot::ProtocolVersion, Scalar::Str) => {
                    self.env.protocol_version = Some(self.take_string())
                }
                (Slot::Uri, Scalar::Str) => self.env.uri = Some(self.take_string()),
                (Slot::ProgressToken, Scalar::Str | Scalar::Num) => {
                    self.env.progress_token = Some(self.take_string())
                }
                (Slot::Traceparent, Scalar::Str) => self.env.traceparent = Some(self.take_string()),
                (Slot::MetaVersion, Scalar::Str) => {
                    self.env.meta_version = Some(self.take_string());
                }
                (Slot::MetaLogLevel, Scalar::Str) => {
                    self.env.meta_log_level = Some(self.take_string());
                }
                // Of the wrong type: absent, as far as the envelope is concerned.
                (
                    Slot::MetaVersion
                    | Slot::MetaLogLevel
                    | Slot::MetaCapabilities
                    | Slot::MetaClientInfo
                    | Slot::Arguments
                    | Slot::Capabilities
                    | Slot::ClientInfo,
                    _,
                ) => {}
                (Slot::Tracestate, Scalar::Str) => self.env.tracestate = Some(self.take_string()),
                (Slot::ErrorCode, Scalar::Num) => match std::str::from_utf8(&self.cap)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    Some(code) => self.env.error_code = Some(code),
                    None => self.type_error(Slot::ErrorCode),
                },
                (Slot::Result, _) => {
                    self.env.has_result = true;
                    self.settle(Kind::Result);
                }
                (Slot::Params, Scalar::Null) => {}
                (Slot::Params, _) => self
                    .env
                    .mark_invalid("\"params\" must be an object or an array".into()),
                (Slot::Meta | Slot::Ref | Slot::Skip | Slot::ProgressToken, _) => {}
                (slot, _) => self.type_error(slot),
            }
        }
        self.after_value();
        if self.opts.stop_when_routable
            && !self.opts.reject_duplicate_keys
            && self.batch == Some(false)
            && slot != Slot::Skip
            && self.env.routable()
        {
            self.routable = true;
        }
        Ok(())
    }

    fn take_string(&mut self) -> String {
        let bytes = std::mem::take(&mut self.cap);
        // The bytes were validated as UTF-8 while scanning; the lossy path never allocates
        // a replacement in practice but keeps this panic-free.
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    fn cap_push(&mut self, b: u8) {
        if self.cap.len() < MAX_CAPTURE {
            self.cap.push(b);
        } else {
            self.cap_overflow = true;
        }
    }

    fn key_byte(&mut self, b: u8) {
        if let Some(slot) = self.key_buf.get_mut(self.key_len) {
            *slot = b;
            self.key_len += 1;
        } else {
            self.key_long = true;
        }
        if let Some(h) = self.key_hash.as_mut() {
            h.write_u8(b);
        }
    }

    /// A decoded byte of string content.
    fn content_byte(&mut self, b: u8) {
        if self.str_is_key {
            self.key_byte(b);
        } else if self.capture == Capture::Decoded {
            self.cap_push(b);
        }
    }

    fn content_char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            self.content_byte(b);
        }
    }

    fn string_byte(&mut self, b: u8) -> Step {
        if self.capture == Capture::Raw && !self.str_is_key {
            self.cap_push(b);
        }
        match self.esc {
            Esc::Backslash => {
                self.esc = Esc::None;
                let c = match b {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        self.esc = Esc::Hex { n: 0, val: 0 };
                        return Ok(());
                    }
                    _ => return Err(self.syntax("invalid escape")),
                };
                self.content_char(c);
                return Ok(());
            }
            Esc::Hex { n, val } => {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    b'A'..=b'F' => b - b'A' + 10,
                    _ => return Err(self.syntax("invalid \\u escape")),
                };
                let val = (val << 4) | u16::from(digit);
                if n < 3 {
                    self.esc = Esc::Hex { n: n + 1, val };
                    return Ok(());
                }
                self.esc = Esc::None;
                return self.code_unit(val);
            }
            Esc::LowBackslash => {
                if b != b'\\' {
                    return Err(self.syntax("lone leading surrogate"));
                }
                self.esc = Esc::LowU;
                return Ok(());
            }
            Esc::LowU => {
                if b != b'u' {
                    return Err(self.syntax("lone leading surrogate"));
                }
                self.esc = Esc::Hex { n: 0, val: 0 };
                return Ok(());
            }
            Esc::None => {}
        }
        if self.utf8_need > 0 {
            if b < self.utf8_lo || b > self.utf8_hi {
                return Err(self.syntax("invalid UTF-8"));
            }
            self.utf8_need -= 1;
            self.utf8_lo = 0x80;
            self.utf8_hi = 0xBF;
            self.content_byte(b);
            return Ok(());
        }
        match b {
            b'"' => self.end_string(),
            b'\\' => {
                self.esc = Esc::Backslash;
                Ok(())
            }
            0x00..=0x1F => Err(self.syntax("control character in string")),
            0x20..=0x7F => {
                self.content_byte(b);
                Ok(())
            }
            _ => {
                let (need, lo, hi) = match b {
                    0xC2..=0xDF => (1, 0x80, 0xBF),
                    0xE0 => (2, 0xA0, 0xBF),
                    0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
                    0xED => (2, 0x80, 0x9F),
                    0xF0 => (3, 0x90, 0xBF),
                    0xF1..=0xF3 => (3, 0x80, 0xBF),
                    0xF4 => (3, 0x80, 0x8F),
                    _ => return Err(self.syntax("invalid UTF-8")),
                };
                self.utf8_need = need;
                self.utf8_lo = lo;
                self.utf8_hi = hi;
                self.content_byte(b);
                Ok(())
            }
        }
    }

    fn code_unit(&mut self, unit: u16) -> Step {
        if self.high_surrogate != 0 {
            let high = std::mem::replace(&mut self.high_surrogate, 0);
            if !(0xDC00..=0xDFFF).contains(&unit) {
                return Err(self.syntax("lone leading surrogate"));
            }
            let code = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
            let c = char::from_u32(code).ok_or_else(|| self.syntax("invalid surrogate pair"))?;
            self.content_char(c);
            return Ok(());
        }
        match unit {
            0xD800..=0xDBFF => {
                self.high_surrogate = unit;
                self.esc = Esc::LowBackslash;
                Ok(())
            }
            0xDC00..=0xDFFF => Err(self.syntax("lone trailing surrogate")),
            _ => {
                let c = char::from_u32(u32::from(unit))
                    .ok_or_else(|| self.syntax("invalid \\u escape"))?;
                self.content_char(c);
                Ok(())
            }
        }
    }

    fn end_string(&mut self) -> Step {
        self.lex = Lex::Ws;
        if !self.str_is_key {
            return self.value_done(Scalar::Str);
        }
        self.str_is_key = false;
        self.expect = Expect::Colon;
        let Some(frame) = self.stack.last().copied() else {
            return Err(self.syntax("key outside an object"));
        };
        if let Some(mut h) = self.key_hash.take() {
            // The object's serial number makes equal keys of different objects distinct.
            h.write_u32(frame.serial);
            if !self.keys.insert(h.finish()) {
                let reason = format!("duplicate key \"{}\"", self.key_text());
                // Objects outside a message make the body invalid anyway.
                self.env.mark_invalid(reason);
            }
        }
        let key: &[u8] = if self.key_long {
            b""
        } else {
            self.key_buf.get(..self.key_len).unwrap_or_default()
        };
        let slot = match (frame.ctx, key) {
            (Ctx::Message, b"jsonrpc") => Slot::Jsonrpc,
            (Ctx::Message, b"method") => Slot::Method,
            (Ctx::Message, b"id") => Slot::Id,
            (Ctx::Message, b"params") => Slot::Params,
            (Ctx::Message, b"result") => Slot::Result,
            (Ctx::Message, b"error") => Slot::Error,
            (Ctx::Params, b"name") => Slot::Name,
            (Ctx::Params, b"uri") => Slot::Uri,
            (Ctx::Params, b"_meta") => Slot::Meta,
            (Ctx::Params, b"cursor") => Slot::Cursor,
            (Ctx::Params, b"protocolVersion") => Slot::ProtocolVersion,
            (Ctx::Params, b"ref") => Slot::Ref,
            (Ctx::Params, b"capabilities") => Slot::Capabilities,
            (Ctx::Params, b"clientInfo") => Slot::ClientInfo,
            (Ctx::Params, b"arguments") => Slot::Arguments,
            (Ctx::Meta, b"io.modelcontextprotocol/protocolVersion") => Slot::MetaVersion,
            (Ctx::Meta, b"io.modelcontextprotocol/clientCapabilities") => Slot::MetaCapabilities,
            (Ctx::Meta, b"io.modelcontextprotocol/clientInfo") => Slot::MetaClientInfo,
            (Ctx::Meta, b"io.modelcontextprotocol/logLevel") => Slot::MetaLogLevel,
            (Ctx::Ref, b"name") => Slot::RefName,
            (Ctx::Ref, b"uri") => Slot::RefUri,
            (Ctx::Meta, b"progressToken") => Slot::ProgressToken,
            (Ctx::Meta, b"traceparent") => Slot::Traceparent,
            (Ctx::Meta, b"tracestate") => Slot::Tracestate,
            (Ctx::ErrorObj, b"code") => Slot::ErrorCode,
            _ => Slot::Skip,
        };
        if slot != Slot::Skip {
            if self.env.seen & slot.bit() != 0 {
                self.env
                    .mark_invalid(format!("duplicate key \"{}\"", slot.field()));
            }
            self.env.seen |= slot.bit();
        }
        self.slot = slot;
        Ok(())
    }

    fn key_text(&self) -> String {
        let key = self.key_buf.get(..self.key_len).unwrap_or_default();
        let mut s = String::from_utf8_lossy(key).into_owned();
        if self.key_long {
            s.push('…');
        }
        s
    }
}

fn num_step(state: Num, b: u8) -> Option<Num> {
    use Num::*;
    match (state, b) {
        (Minus, b'0') => Some(Zero),
        (Minus, b'1'..=b'9') => Some(Int),
        (Int, b'0'..=b'9') => Some(Int),
        (Zero | Int, b'.') => Some(Dot),
        (Zero | Int | Frac, b'e' | b'E') => Some(Exp),
        (Dot | Frac, b'0'..=b'9') => Some(Frac),
        (Exp, b'+' | b'-') => Some(ExpSign),
        (Exp | ExpSign | ExpDigits, b'0'..=b'9') => Some(ExpDigits),
        _ => None,
    }
}

fn num_complete(state: Num) -> bool {
    matches!(state, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
}

#[cfg(test)]
mod tests;
