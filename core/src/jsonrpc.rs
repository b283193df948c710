//! JSON-RPC 2.0 as MCP uses it: the message envelope, error codes, error replies, and the
//! incremental parser ([`stream::MessageParser`]) that extracts the envelope without
//! building a JSON tree.

pub mod stream;

/// JSON-RPC and gateway error codes.
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON, but not a valid JSON-RPC message.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist or is not allowed.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The gateway's policy forbids the request (server-defined range).
    pub const FORBIDDEN: i64 = -32003;
    /// A limit of the gateway refused the request (server-defined range).
    pub const RATE_LIMITED: i64 = -32005;
    /// The request needs a valid bearer token (HTTP 401; server-defined range).
    pub const UNAUTHORIZED: i64 = -32001;
    /// MCP 2026-07-28: a request header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP 2026-07-28: the request needs a client capability it did not declare.
    pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
    /// MCP 2026-07-28: a protocol version the server does not speak.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// A JSON-RPC id, kept as its JSON text (so it is echoed back byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    /// A string id; the JSON text including quotes and escapes as received.
    Str(String),
    /// A number id; its JSON text.
    Num(String),
    /// `null` (only valid in error responses).
    Null,
}

impl Id {
    /// The id as JSON text.
    pub fn as_json(&self) -> &str {
        match self {
            Id::Str(s) | Id::Num(s) => s,
            Id::Null => "null",
        }
    }
}

/// What a JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request: `method` and `id`.
    Request,
    /// A notification: `method`, no `id`.
    Notification,
    /// A successful response: `id` and `result`.
    Result,
    /// An error response: `id` and `error`.
    Error,
}

/// The routing-relevant attributes of one JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What the message is.
    pub kind: Kind,
    /// `method` (requests and notifications).
    pub method: Option<crate::mcp::Method>,
    /// `id` (requests and responses).
    pub id: Option<Id>,
    /// `params.name` (tools/call, prompts/get).
    pub name: Option<String>,
    /// `params.uri` (resources/read, resources/subscribe, resources/unsubscribe).
    pub uri: Option<String>,
    /// `params._meta.progressToken`, as JSON text.
    pub progress_token: Option<String>,
    /// `params._meta.traceparent` (W3C trace context).
    pub traceparent: Option<String>,
    /// `params._meta.tracestate` (W3C trace context).
    pub tracestate: Option<String>,
    /// `error.code` of an error response.
    pub error_code: Option<i64>,
    /// `params.cursor` (list methods).
    pub cursor: Option<String>,
    /// `params.protocolVersion` (`initialize`).
    pub protocol_version: Option<String>,
    /// Byte range of the `params.name` string literal (quotes included) in the body, so a
    /// gateway can rewrite the name without re-serializing the message.
    pub name_span: Option<(u64, u64)>,
    /// `params.ref.name` (`completion/complete` of a prompt argument).
    pub ref_name: Option<String>,
    /// `params.ref.uri` (`completion/complete` of a resource template argument).
    pub ref_uri: Option<String>,
    /// Byte range of the `params.ref.name` string literal, like [`Message::name_span`].
    pub ref_name_span: Option<(u64, u64)>,
    /// Byte range of the `params.capabilities` object (`initialize`).
    pub capabilities_span: Option<(u64, u64)>,
    /// Byte range of the `params.clientInfo` object (`initialize`).
    pub client_info_span: Option<(u64, u64)>,
    /// The 2026-07-28 per-request envelope in `params._meta`.
    pub meta: Meta,
    /// Byte range of the `params.arguments` object (`tools/call`).
    pub arguments_span: Option<(u64, u64)>,
    /// Byte range of the `id` value (string with quotes, or number).
    pub id_span: Option<(u64, u64)>,
    /// Offset of the `{` that opens `result` (a response).
    pub result_open: Option<u64>,
    /// Offset of the `{` that opens `params`.
    pub params_open: Option<u64>,
}

/// The per-request protocol fields MCP 2026-07-28 puts in `params._meta`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// `io.modelcontextprotocol/protocolVersion`: its presence marks a 2026-era request.
    pub protocol_version: Option<String>,
    /// `io.modelcontextprotocol/logLevel`.
    pub log_level: Option<String>,
    /// Whether `params._meta` is an object.
    pub object: bool,
    /// Byte range of `io.modelcontextprotocol/clientCapabilities` (an object).
    pub capabilities_span: Option<(u64, u64)>,
    /// Byte range of `io.modelcontextprotocol/clientInfo` (an object).
    pub client_info_span: Option<(u64, u64)>,
    /// Offset of the `{` that opens `params._meta`.
    pub open: Option<u64>,
}

/// Why a request body is refused, with the JSON-RPC code to answer it with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON (or not UTF-8): -32700.
    #[error("parse error at byte {offset}: {reason}")]
    Parse {
        /// Byte offset of the first invalid byte.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// JSON, but not a valid JSON-RPC message: -32600.
    #[error("invalid request: {reason}")]
    Invalid {
        /// The id of the offending message, when it was readable.
        id: Option<Id>,
        /// What was wrong.
        reason: String,
    },
    /// Valid JSON-RPC, invalid MCP parameters: -32602.
    #[error("invalid params: {reason}")]
    InvalidParams {
        /// The id of the offending request.
        id: Option<Id>,
        /// What was wrong.
        reason: String,
    },
}

impl RequestError {
    /// The JSON-RPC error code for this error.
    pub fn code(&self) -> i64 {
        match self {
            RequestError::Parse { .. } => code::PARSE_ERROR,
            RequestError::Invalid { .. } => code::INVALID_REQUEST,
            RequestError::InvalidParams { .. } => code::INVALID_PARAMS,
        }
    }

    /// The id to answer with (`None` means `null`).
    pub fn id(&self) -> Option<&Id> {
        match self {
            RequestError::Parse { .. } => None,
            RequestError::Invalid { id, .. } | RequestError::InvalidParams { id, .. } => {
                id.as_ref()
            }
        }
    }

    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RequestError::Parse { .. } => "parse_error",
            RequestError::Invalid { .. } => "invalid_request",
            RequestError::InvalidParams { .. } => "invalid_params",
        }
    }
}

/// Serializes a JSON-RPC error response: `{"jsonrpc":"2.0","id":…,"error":{"code":…,"message":…}}`.
pub fn error_response(id: Option<&Id>, code: i64, message: &str) -> Vec<u8> {
    error_response_with(id, code, message, None)
}

/// [`error_response`] with the error's `data` (JSON text, written as is).
pub fn error_response_with(
    id: Option<&Id>,
    code: i64,
    message: &str,
    data: Option<&str>,
) -> Vec<u8> {
    let id = id.map_or("null", Id::as_json);
    let extra = data.map_or(0, |d| d.len() + 8);
    let mut out = Vec::with_capacity(64 + id.len() + message.len() + extra);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"error\":{\"code\":");
    out.extend_from_slice(code.to_string().as_bytes());
    out.extend_from_slice(b",\"message\":");
    write_json_string(&mut out, message);
    if let Some(data) = data {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data.as_bytes());
    }
    out.extend_from_slice(b"}}");
    out
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_valid_json_rpc() {
        let id = Id::Str("\"a\\\"b\"".into());
        let body = error_response(Some(&id), code::FORBIDDEN, "tool \"x\"\n denied\u{1}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], "a\"b");
        assert_eq!(v["error"]["code"], -32003);
        assert_eq!(v["error"]["message"], "tool \"x\"\n denied\u{1}");
        let v: serde_json::Value =
            serde_json::from_slice(&error_response(None, code::PARSE_ERROR, "x")).unwrap();
        assert!(v["id"].is_null());
    }
}
