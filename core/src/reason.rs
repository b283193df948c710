//! Every way the filter refuses a request: one [`Reason`] each, which fixes the HTTP
//! status, the JSON-RPC error code and the metric label, so the three never disagree.

use crate::jsonrpc::{Id, RequestError, code, error_response_with, write_json_string};

/// Why the filter answered a request itself with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `POST` without `Content-Type: application/json` (415).
    UnsupportedMediaType,
    /// `Accept` refuses what the answer may be (406).
    NotAcceptable,
    /// `MCP-Protocol-Version` names no version the gateway speaks (400).
    BadProtocolVersion,
    /// `Content-Length` is not a number (400).
    BadContentLength,
    /// The body exceeds `policy.max_body_bytes` (413).
    TooLarge,
    /// An HTTP method MCP's transport does not use (405, `Allow: GET, POST, DELETE`).
    HttpMethodNotAllowed,
    /// The body is not JSON (400, -32700).
    ParseError,
    /// JSON, but not a JSON-RPC message (400, -32600).
    InvalidRequest,
    /// A JSON-RPC request whose MCP parameters are unusable (400, -32602).
    InvalidParams,
    /// A batch under a protocol version that has none (400).
    BatchNotAllowed,
    /// A batch whose calls route to different clusters (400).
    BatchSpansUpstreams,
    /// A method the policy does not allow: a request is answered 200 with the error, a
    /// notification 400 (-32601).
    MethodDenied {
        /// Whether the refused message was a notification.
        notification: bool,
    },
    /// A tool the policy denies (403, -32003).
    ToolDenied,
    /// A virtual server's request without a valid token where one is required, or with a
    /// bad one (401, -32001, `WWW-Authenticate: Bearer`).
    Unauthenticated,
    /// A request whose principal lacks the permission its method needs (403, -32003,
    /// `WWW-Authenticate: Bearer error="insufficient_scope"`).
    InsufficientScope,
    /// A use of a tool, prompt or resource the server's rules do not allow (403, -32003).
    AccessDenied,
    /// A path under `/servers/` that names no virtual server or endpoint (404).
    UnknownServer,
    /// `GET` or `DELETE` at a virtual server with nothing to stream or end (405, `Allow: POST`).
    NoStream,
    /// The relay would serve this, and none is configured (404).
    NoRelay,
    /// A `GET` picking an upstream the session holds no part of (404).
    UnknownStream,
    /// An `Mcp-Session-Id` that does not verify (404: MCP's answer to an unknown session).
    UnknownSession,
    /// A batch sent to a virtual server (400).
    VirtualServerBatch,
    /// The filter failed (500, -32603).
    Internal,
    /// A 2026-era request whose `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` or
    /// `Mcp-Param-*` header is missing, repeated or disagrees with the body (400, -32020).
    HeaderMismatch,
    /// A 2026-era request without the required `params._meta` envelope (400, -32602).
    MissingEnvelope,
    /// A protocol version the gateway does not speak (400, -32022, naming the supported).
    UnsupportedVersion,
    /// A method the 2026-07-28 revision does not have, asked in that era (404, -32601).
    GoneInModernEra,
    /// `GET` or `DELETE` in the 2026 era, which has no streams or sessions to reach with
    /// them (405, `Allow: POST`).
    ModernGetOrDelete,
    /// A 2026-era body that is not one request or notification (400, -32600).
    NotOneMessage,
    /// An `Origin` the listener or virtual server does not allow (403).
    ForbiddenOrigin,
    /// A `Host` the listener or virtual server does not serve (421).
    ForbiddenHost,
    /// A client's response to a request no upstream of its session made (400).
    UnknownResponse,
    /// A guardrail plugin blocked the request (403, -32003, `data` naming the plugin).
    PluginBlocked,
    /// A tool's arguments do not match its `inputSchema` (400, -32602, `data` naming the
    /// plugin).
    PluginInvalidArguments,
    /// A limit refused the request (429 with `Retry-After`, -32005, `data` naming the
    /// limit).
    RateLimited,
    /// The authorization server refused to exchange the client's token for the upstream's
    /// (or there was none to exchange): 401, -32001.
    UpstreamIdentityRefused,
    /// The token exchange for the upstream failed (endpoint down, error, unusable answer):
    /// 502, -32603.
    UpstreamIdentityFailed,
}

impl Reason {
    /// The HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self {
            Reason::UnsupportedMediaType => 415,
            Reason::NotAcceptable => 406,
            Reason::TooLarge => 413,
            Reason::HttpMethodNotAllowed | Reason::NoStream => 405,
            Reason::MethodDenied {
                notification: false,
            } => 200,
            Reason::ToolDenied | Reason::PluginBlocked => 403,
            Reason::UnknownServer | Reason::NoRelay | Reason::UnknownStream => 404,
            Reason::UnknownSession | Reason::GoneInModernEra => 404,
            Reason::ModernGetOrDelete => 405,
            Reason::ForbiddenOrigin => 403,
            Reason::Unauthenticated => 401,
            Reason::InsufficientScope | Reason::AccessDenied => 403,
            Reason::ForbiddenHost => 421,
            Reason::RateLimited => 429,
            Reason::Internal => 500,
            Reason::UpstreamIdentityRefused => 401,
            Reason::UpstreamIdentityFailed => 502,
            Reason::HeaderMismatch
            | Reason::MissingEnvelope
            | Reason::UnsupportedVersion
            | Reason::NotOneMessage
            | Reason::UnknownResponse
            | Reason::PluginInvalidArguments => 400,
            Reason::BadProtocolVersion
            | Reason::BadContentLength
            | Reason::ParseError
            | Reason::InvalidRequest
            | Reason::InvalidParams
            | Reason::BatchNotAllowed
            | Reason::BatchSpansUpstreams
            | Reason::MethodDenied { notification: true }
            | Reason::VirtualServerBatch => 400,
        }
    }

    /// The JSON-RPC error code of the answer.
    pub fn code(self) -> i64 {
        match self {
            Reason::ParseError => code::PARSE_ERROR,
            Reason::InvalidParams | Reason::MissingEnvelope | Reason::PluginInvalidArguments => {
                code::INVALID_PARAMS
            }
            Reason::MethodDenied { .. } | Reason::GoneInModernEra => code::METHOD_NOT_FOUND,
            Reason::HeaderMismatch => code::HEADER_MISMATCH,
            Reason::UnsupportedVersion => code::UNSUPPORTED_PROTOCOL_VERSION,
            Reason::ToolDenied | Reason::PluginBlocked => code::FORBIDDEN,
            Reason::Internal | Reason::UpstreamIdentityFailed => code::INTERNAL_ERROR,
            Reason::UpstreamIdentityRefused => code::UNAUTHORIZED,
            Reason::RateLimited => code::RATE_LIMITED,
            Reason::Unauthenticated => code::UNAUTHORIZED,
            Reason::InsufficientScope | Reason::AccessDenied => code::FORBIDDEN,
            _ => code::INVALID_REQUEST,
        }
    }

    /// A low-cardinality label for the `mcpgw_rejected_total` counter.
    pub fn label(self) -> &'static str {
        match self {
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::NotAcceptable => "not_acceptable",
            Reason::BadProtocolVersion => "bad_protocol_version",
            Reason::BadContentLength => "bad_content_length",
            Reason::TooLarge => "too_large",
            Reason::HttpMethodNotAllowed | Reason::MethodDenied { .. } | Reason::NoStream => {
                "method_not_allowed"
            }
            Reason::ParseError => "parse_error",
            Reason::InvalidRequest => "invalid_request",
            Reason::InvalidParams => "invalid_params",
            Reason::BatchNotAllowed => "batch_not_allowed",
            Reason::BatchSpansUpstreams => "batch_spans_upstreams",
            Reason::ToolDenied => "tool_denied",
            Reason::UnknownServer => "unknown_server",
            Reason::NoRelay => "no_relay",
            Reason::UnknownStream => "unknown_stream",
            Reason::UnknownSession => "unknown_session",
            Reason::VirtualServerBatch => "batch",
            Reason::Internal => "internal",
            Reason::HeaderMismatch => "header_mismatch",
            Reason::MissingEnvelope => "missing_envelope",
            Reason::UnsupportedVersion => "unsupported_protocol_version",
            Reason::GoneInModernEra => "method_not_found",
            Reason::ModernGetOrDelete => "method_not_allowed",
            Reason::NotOneMessage => "invalid_request",
            Reason::ForbiddenOrigin => "forbidden_origin",
            Reason::ForbiddenHost => "forbidden_host",
            Reason::Unauthenticated => "unauthenticated",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::AccessDenied => "access_denied",
            Reason::UnknownResponse => "unknown_response",
            Reason::PluginBlocked => "plugin_blocked",
            Reason::PluginInvalidArguments => "plugin_invalid_arguments",
            Reason::RateLimited => "rate_limited",
            Reason::UpstreamIdentityRefused => "token_exchange_refused",
            Reason::UpstreamIdentityFailed => "token_exchange_failed",
        }
    }

    /// The `Allow` header of a 405 answer.
    pub fn allow(self) -> Option<&'static str> {
        match self {
            Reason::HttpMethodNotAllowed => Some("GET, POST, DELETE"),
            Reason::NoStream | Reason::ModernGetOrDelete => Some("POST"),
            _ => None,
        }
    }
}

/// A local error answer: why, and the JSON-RPC error it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// The id of the request, when known.
    pub id: Option<Id>,
    /// Human-readable message.
    pub message: String,
    /// The error's `data` (JSON text), if any.
    pub data: Option<String>,
}

impl Rejection {
    /// A rejection for `reason` with `message`, answering request `id` (or `null`).
    pub fn new(reason: Reason, id: Option<Id>, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            id,
            message: message.into(),
            data: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.reason.status()
    }

    /// The JSON-RPC error response body.
    pub fn body(&self) -> Vec<u8> {
        error_response_with(
            self.id.as_ref(),
            self.reason.code(),
            &self.message,
            self.data.as_deref(),
        )
    }

    /// The answer to a protocol version the gateway does not speak: -32022 with
    /// `data: {"supported": [...], "requested": "..."}`.
    pub fn unsupported_version(id: Option<Id>, requested: &str) -> Self {
        let mut data = Vec::with_capacity(96);
        data.extend_from_slice(b"{\"supported\":[");
        for (i, v) in crate::mcp::SUPPORTED_VERSIONS.iter().enumerate() {
            if i > 0 {
                data.push(b',');
            }
            write_json_string(&mut data, v);
        }
        data.extend_from_slice(b"],\"requested\":");
        write_json_string(&mut data, requested);
        data.push(b'}');
        Rejection {
            reason: Reason::UnsupportedVersion,
            id,
            message: "Unsupported protocol version".into(),
            data: String::from_utf8(data).ok(),
        }
    }

    /// The answer to a body that failed to parse.
    pub fn from_parse(err: &RequestError) -> Self {
        let reason = match err {
            RequestError::Parse { .. } => Reason::ParseError,
            RequestError::Invalid { .. } => Reason::InvalidRequest,
            RequestError::InvalidParams { .. } => Reason::InvalidParams,
        };
        Rejection::new(reason, err.id().cloned(), err.to_string())
    }

    /// The answer to a body larger than `limit`.
    pub fn too_large(limit: u64) -> Self {
        Rejection::new(
            Reason::TooLarge,
            None,
            format!("request body exceeds {limit} bytes"),
        )
    }

    /// The answer when the filter itself failed.
    pub fn internal(what: &str) -> Self {
        Rejection::new(Reason::Internal, None, format!("internal error: {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_keep_their_code_label_and_id() {
        let cases = [
            (
                RequestError::Parse {
                    offset: 3,
                    reason: "x",
                },
                (400, -32700, "parse_error"),
            ),
            (
                RequestError::Invalid {
                    id: Some(Id::Num("7".into())),
                    reason: "y".into(),
                },
                (400, -32600, "invalid_request"),
            ),
            (
                RequestError::InvalidParams {
                    id: None,
                    reason: "z".into(),
                },
                (400, -32602, "invalid_params"),
            ),
        ];
        for (err, (status, code, label)) in cases {
            let r = Rejection::from_parse(&err);
            assert_eq!(
                (r.status(), r.reason.code(), r.reason.label()),
                (status, code, label)
            );
            assert_eq!(r.id.as_ref(), err.id());
            assert_eq!(err.code(), code, "the parser's code agrees");
        }
    }

    #[test]
    fn method_denials_answer_requests_200_and_notifications_400() {
        let req = Reason::MethodDenied {
            notification: false,
        };
        let note = Reason::MethodDenied { notification: true };
        assert_eq!((req.status(), note.status()), (200, 400));
        assert_eq!(req.code(), -32601);
        assert_eq!(Reason::NoStream.allow(), Some("POST"));
        assert_eq!(
            Reason::HttpMethodNotAllowed.allow(),
            Some("GET, POST, DELETE")
        );
        assert_eq!(Reason::TooLarge.allow(), None);
    }
}
