//! Why the relay refuses a request: one enum, each with its HTTP status, JSON-RPC code and
//! metric label, answered as a JSON-RPC error.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mcpgw_core::edge::{
    EDGE_ADDRESS_HEADER, RELAY_AUTH_HEADER, RELAY_ERAS_HEADER, RELAY_UPSTREAMS_HEADER,
};
use serde_json::{Value, json};

use super::MAX_IN_FLIGHT;

/// JSON-RPC "invalid request".
const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC "parse error".
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "internal error" (also used for capacity refusals, as before).
const INTERNAL_ERROR: i64 = -32603;
/// JSON-RPC "invalid params".
const INVALID_PARAMS: i64 = -32602;

/// What a refusal is about (for limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Legacy SSE sessions.
    SseSessions,
    /// Merged GET streams.
    MergedStreams,
    /// `subscriptions/listen` streams.
    ListenStreams,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Held::SseSessions => "SSE sessions",
            Held::MergedStreams => "merged streams",
            Held::ListenStreams => "listen streams",
        })
    }
}

/// A request the relay does not serve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RelayError {
    /// No relay secret, or a wrong one: not from an Envoy of this control plane.
    #[error(
        "missing or wrong {RELAY_AUTH_HEADER}: the relay serves only requests that come through this control plane's Envoys"
    )]
    Unauthenticated,
    /// An authenticated request without a usable edge address.
    #[error(
        "no valid {EDGE_ADDRESS_HEADER} header: the relay serves requests that come through an mcpgw Envoy route"
    )]
    NotThroughEdge,
    /// A part of the request is malformed.
    #[error("{field}: {reason}")]
    FieldInvalid {
        /// What (`id`, `mcpgw-relay-upstreams`, …).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A posted message is not declared JSON.
    #[error("Content-Type must be application/json (got {got:?})")]
    UnsupportedMediaType {
        /// The content type sent ("" when none).
        got: String,
    },
    /// One client holds as many streams as it may.
    #[error("this client holds its maximum of {limit} {held}; close one first")]
    ClientLimit {
        /// What.
        held: Held,
        /// The limit.
        limit: usize,
    },
    /// The relay holds as many streams as it may.
    #[error("the relay holds its maximum of {limit} {held}; retry later")]
    Full {
        /// What.
        held: Held,
        /// The limit.
        limit: usize,
    },
    /// A message POST without `session_id`.
    #[error("missing session_id query parameter (it comes in the stream's endpoint event)")]
    MissingSessionId,
    /// A message POST to a session this relay does not hold (or of another server).
    #[error("session not found: open a new stream at /servers/{{id}}/sse")]
    UnknownSession,
    /// The body could not be read.
    #[error("unreadable message body (at most {limit} bytes): {reason}")]
    Body {
        /// The status axum chose (413 over the limit, 400 otherwise).
        status: u16,
        /// The byte limit.
        limit: usize,
        /// Why.
        reason: String,
    },
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {limit_seconds} s")]
    BodyTimedOut {
        /// The limit.
        limit_seconds: u64,
    },
    /// The body is not JSON.
    #[error("parse error: {0}")]
    Parse(String),
    /// The body is JSON but not one JSON-RPC message.
    #[error("expected one JSON-RPC message (an object)")]
    NotOneMessage,
    /// Too many messages of one session are being relayed.
    #[error("{MAX_IN_FLIGHT} messages of this session are already being relayed")]
    InFlight {
        /// The id of the refused request.
        id: Option<Value>,
    },
    /// A merged GET without `Mcp-Session-Id`.
    #[error("missing Mcp-Session-Id")]
    MissingMcpSession,
    /// A merged GET without the upstreams to merge.
    #[error("no {RELAY_UPSTREAMS_HEADER} header: the filter names the streams to merge")]
    NoUpstreams,
    /// None of the streams to merge could be opened.
    #[error("no upstream stream of this session could be opened")]
    NoStreamOpened,
    /// A body handed over as a `subscriptions/listen` that is not one (with an id).
    #[error("expected a subscriptions/listen request with an id")]
    NotAListen {
        /// The request's id, if it has a usable one.
        id: Option<Value>,
    },
    /// A `subscriptions/listen` whose filter is malformed or too large.
    #[error("invalid subscriptions/listen params: {reason}")]
    ListenParams {
        /// The listen request's id.
        id: Option<Value>,
        /// Why.
        reason: String,
    },
    /// A `mcpgw-relay-eras` header that does not match the upstreams.
    #[error("{RELAY_ERAS_HEADER}: {reason}")]
    Eras {
        /// Why.
        reason: String,
    },
    /// A path the relay does not serve.
    #[error(
        "the relay serves /servers/{{id}}/sse, /servers/{{id}}/message, and merged GET streams and subscriptions/listen of /servers/{{id}}/mcp"
    )]
    NoSuchRoute,
    /// A method the path does not serve.
    #[error("only {allowed} is served here")]
    WrongMethod {
        /// The one method.
        allowed: &'static str,
    },
}

impl RelayError {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RelayError::Unauthenticated => "unauthenticated",
            RelayError::NotThroughEdge => "not_through_edge",
            RelayError::FieldInvalid { .. } => "field_invalid",
            RelayError::UnsupportedMediaType { .. } => "unsupported_media_type",
            RelayError::ClientLimit { .. } => "client_limit",
            RelayError::Full { .. } => "full",
            RelayError::MissingSessionId => "missing_session_id",
            RelayError::UnknownSession => "unknown_session",
            RelayError::Body { .. } => "body",
            RelayError::BodyTimedOut { .. } => "body_timed_out",
            RelayError::Parse(_) => "parse_error",
            RelayError::NotOneMessage => "invalid",
            RelayError::InFlight { .. } => "too_many",
            RelayError::MissingMcpSession => "missing_mcp_session",
            RelayError::NoUpstreams => "no_upstreams",
            RelayError::NoStreamOpened => "no_stream_opened",
            RelayError::NotAListen { .. } => "not_a_listen",
            RelayError::ListenParams { .. } => "listen_params",
            RelayError::Eras { .. } => "eras",
            RelayError::NoSuchRoute => "no_such_route",
            RelayError::WrongMethod { .. } => "wrong_method",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            RelayError::Unauthenticated => StatusCode::FORBIDDEN,
            RelayError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RelayError::ClientLimit { .. } | RelayError::InFlight { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            RelayError::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::UnknownSession | RelayError::NoSuchRoute => StatusCode::NOT_FOUND,
            RelayError::Body { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            RelayError::BodyTimedOut { .. } => StatusCode::REQUEST_TIMEOUT,
            RelayError::NoStreamOpened => StatusCode::BAD_GATEWAY,
            RelayError::WrongMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RelayError::NotThroughEdge
            | RelayError::FieldInvalid { .. }
            | RelayError::MissingSessionId
            | RelayError::Parse(_)
            | RelayError::NotOneMessage
            | RelayError::MissingMcpSession
            | RelayError::NoUpstreams
            | RelayError::NotAListen { .. }
            | RelayError::ListenParams { .. }
            | RelayError::Eras { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The id of the request refused, when the refusal answers one.
    pub fn request_id(&self) -> Option<&Value> {
        match self {
            RelayError::InFlight { id }
            | RelayError::NotAListen { id }
            | RelayError::ListenParams { id, .. } => id.as_ref(),
            _ => None,
        }
    }

    /// The JSON-RPC error code of the answer.
    pub fn code(&self) -> i64 {
        match self {
            RelayError::Parse(_) => PARSE_ERROR,
            RelayError::ListenParams { .. } => INVALID_PARAMS,
            RelayError::ClientLimit { .. }
            | RelayError::Full { .. }
            | RelayError::InFlight { .. }
            | RelayError::NoStreamOpened => INTERNAL_ERROR,
            _ => INVALID_REQUEST,
        }
    }
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        let body = error_message(self.request_id(), self.code(), &self.to_string());
        (
            self.status(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// A JSON-RPC error message.
pub(super) fn error_message(id: Option<&Value>, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": code, "message": message}})
    .to_string()
}

/// The code of an error the relay reports on a stream for a request it could not relay.
pub(super) const RELAY_FAILED: i64 = INTERNAL_ERROR;
