//! The request headers the exchange reads, borrowed from the host's serialized map.

use std::borrow::Cow;

use crate::edge;
use crate::header_map;

/// The request headers the exchange reads, borrowed from the header map.
#[derive(Debug, Default)]
pub struct RequestHead<'h> {
    /// `:method`.
    pub method: Option<&'h [u8]>,
    /// `:path`.
    pub path: Option<&'h [u8]>,
    /// `mcp-session-id`.
    pub session_id: Option<&'h [u8]>,
    /// `content-type`.
    pub content_type: Option<&'h [u8]>,
    /// Every `accept` value.
    pub accept: Vec<&'h [u8]>,
    /// `mcp-protocol-version`.
    pub protocol_version: Option<&'h [u8]>,
    /// `content-length`.
    pub content_length: Option<&'h [u8]>,
    /// `mcpgw-upstream`: the one upstream whose stream a GET asks for.
    pub upstream: Option<&'h [u8]>,
    /// Whether a `traceparent` header is present.
    pub traceparent: bool,
    /// Whether an `authorization` header is present.
    pub authorization: bool,
    /// Whether a `proxy-authorization` header is present.
    pub proxy_authorization: bool,
    /// Whether a `cookie` header is present.
    pub cookie: bool,
    /// `mcp-method` (2026-07-28).
    pub mcp_method: Option<&'h [u8]>,
    /// `mcp-name` (2026-07-28).
    pub mcp_name: Option<&'h [u8]>,
    /// Every `mcp-param-{name}`: (name after the prefix, value).
    pub mcp_params: Vec<(&'h [u8], &'h [u8])>,
    /// Names of the mirrored singleton headers that appear more than once.
    pub repeated: Vec<&'static str>,
    /// `origin`.
    pub origin: Option<&'h [u8]>,
    /// `:authority` (the `Host`).
    pub authority: Option<&'h [u8]>,
    /// The (first) `authorization` value.
    pub authorization_value: Option<&'h [u8]>,
    /// The verified token payload `jwt_authn` forwards ([`crate::auth::PAYLOAD_HEADER`]).
    pub verified_payload: Option<&'h [u8]>,
}

/// Prefix of a mirrored tool parameter's header.
const PARAM_PREFIX: &[u8] = b"mcp-param-";

impl<'h> RequestHead<'h> {
    /// Reads the headers the exchange needs from the host's serialized map (one pass; names
    /// arrive lower-cased). Read in place, as bytes: a copy per header would cost a host
    /// allocation each, and a non-UTF-8 value (obs-text is legal HTTP) is no error.
    pub fn read(map: &'h [u8]) -> RequestHead<'h> {
        let mut head = RequestHead::default();
        for (name, value) in header_map::pairs(map) {
            head.take(name, value);
        }
        head
    }

    /// Records `name: value` if it is one the exchange reads.
    fn take(&mut self, name: &'h [u8], value: &'h [u8]) {
        // Headers the 2026 era mirrors from the body must appear once: with two, an
        // intermediary and the server could each believe another.
        let (slot, mirrored) = match name {
            b"mcp-protocol-version" => (&mut self.protocol_version, "MCP-Protocol-Version"),
            b"mcp-method" => (&mut self.mcp_method, "Mcp-Method"),
            b"mcp-name" => (&mut self.mcp_name, "Mcp-Name"),
            name if name.len() > PARAM_PREFIX.len()
                && name
                    .get(..PARAM_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(PARAM_PREFIX)) =>
            {
                if let Some(suffix) = name.get(PARAM_PREFIX.len()..) {
                    self.mcp_params.push((suffix, value));
                }
                return;
            }
            _ => return self.take_plain(name, value),
        };
        if slot.is_some() {
            self.repeated.push(mirrored);
        } else {
            *slot = Some(value);
        }
    }

    fn take_plain(&mut self, name: &[u8], value: &'h [u8]) {
        let slot = match name {
            b":method" => &mut self.method,
            b":path" => &mut self.path,
            b"content-type" => &mut self.content_type,
            b"mcp-session-id" => &mut self.session_id,
            b"origin" => &mut self.origin,
            b":authority" => &mut self.authority,
            b"content-length" => &mut self.content_length,
            name if name == edge::UPSTREAM_HEADER.as_bytes() => &mut self.upstream,
            name if name == crate::auth::PAYLOAD_HEADER.as_bytes() => &mut self.verified_payload,
            b"accept" => {
                self.accept.push(value);
                return;
            }
            b"traceparent" => {
                self.traceparent = true;
                return;
            }
            b"authorization" => {
                self.authorization = true;
                &mut self.authorization_value
            }
            b"proxy-authorization" => {
                self.proxy_authorization = true;
                return;
            }
            b"cookie" => {
                self.cookie = true;
                return;
            }
            _ => return,
        };
        // A repeated singleton header keeps its first value, as Envoy's own lookups do.
        slot.get_or_insert(value);
    }

    /// `accept`; repeated headers mean their comma-joined list (RFC 9110, 5.3).
    pub fn accept(&self) -> Option<Cow<'h, str>> {
        match self.accept.as_slice() {
            [] => None,
            [one] => Some(lossy(one)),
            many => Some(Cow::Owned(
                many.iter().map(|v| lossy(v)).collect::<Vec<_>>().join(", "),
            )),
        }
    }
}

/// A header value as text; bytes that are not UTF-8 become U+FFFD, so they can never match
/// a media type or version and are answered as such.
pub fn lossy(value: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(value)
}
