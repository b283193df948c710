//! Which protocol era a request belongs to, and the checks a 2026-07-28 request must pass
//! before anything acts on it: its `params._meta` envelope, the headers that mirror its
//! body (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`), and a version
//! the gateway speaks. Routing and policy then act on values known to agree.
//!
//! The order follows the reference SDK, so a client sees the same error from the gateway
//! as from the server behind it: a request that is not one message, a missing envelope
//! (-32602), repeated or disagreeing headers (-32020), then an unsupported version (-32022).

use crate::jsonrpc::{Kind, Message};
use crate::mcp::{self, Era, Method};
use crate::mirror::{self, ParamHeader};
use crate::reason::{Reason, Rejection};

/// The headers a 2026-era request mirrors from its body, kept from the head until the body
/// is read (owned: the header map is gone by then; absent on most 2025-era requests, so
/// nothing is copied for them).
#[derive(Debug, Default)]
pub(crate) struct Mirrored {
    pub(crate) method: Option<Vec<u8>>,
    pub(crate) name: Option<Vec<u8>>,
    pub(crate) params: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) repeated: Vec<&'static str>,
}

fn mismatch(msg: &Message, what: String) -> Rejection {
    Rejection::new(Reason::HeaderMismatch, msg.id.clone(), what)
}

/// The era of `messages` (a batch when `batch`), or why they are refused. `header` is the
/// request's `MCP-Protocol-Version`; `params` are the arguments a virtual server's catalog
/// says the named tool mirrors, with `arguments` reading them from the body.
pub(crate) fn classify(
    messages: &[Message],
    batch: bool,
    header: Option<&str>,
    mirrored: &Mirrored,
    params: &[ParamHeader],
    arguments: impl FnOnce() -> Option<serde_json::Value>,
) -> Result<Era, Rejection> {
    let header = header.map(str::trim);
    let header_modern = header.is_some_and(mcp::is_modern);
    let body_modern = messages.iter().any(|m| m.meta.protocol_version.is_some());
    if !(header_modern || body_modern) {
        return match header {
            // Neither era's: refused as an unknown version, as the 2025 era always has.
            Some(v) if !mcp::is_supported_version(v) => Err(Rejection::new(
                Reason::BadProtocolVersion,
                None,
                format!(
                    "unsupported MCP-Protocol-Version {v:?}; supported: {}",
                    mcp::SUPPORTED_VERSIONS.join(", ")
                ),
            )),
            _ => Ok(Era::Legacy),
        };
    }
    let [msg] = messages else {
        return Err(not_one_message());
    };
    if batch || matches!(msg.kind, Kind::Result | Kind::Error) {
        return Err(not_one_message());
    }
    if msg.kind == Kind::Notification {
        // The revision defines no header rules for notifications: only the version.
        return match header {
            Some(v) if !mcp::is_modern(v) => Err(Rejection::unsupported_version(None, v)),
            _ => Ok(Era::Modern),
        };
    }
    let meta = &msg.meta;
    let mut missing = Vec::new();
    if meta.protocol_version.is_none() {
        missing.push(mcp::META_PROTOCOL_VERSION);
    }
    if meta.capabilities_span.is_none() {
        missing.push(mcp::META_CLIENT_CAPABILITIES);
    }
    if !meta.object || !missing.is_empty() {
        return Err(Rejection::new(
            Reason::MissingEnvelope,
            msg.id.clone(),
            format!(
                "params._meta must be an object carrying {}",
                missing
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    if let Some(name) = mirrored.repeated.first() {
        return Err(mismatch(
            msg,
            format!("{name} header appears more than once"),
        ));
    }
    let body_version = meta.protocol_version.as_deref().unwrap_or_default();
    if header != Some(body_version) {
        return Err(mismatch(
            msg,
            "MCP-Protocol-Version header does not match the request's protocol version".into(),
        ));
    }
    let method = msg.method.as_ref().map_or("", Method::as_str);
    match mirrored.method.as_deref() {
        None => return Err(mismatch(msg, "missing required Mcp-Method header".into())),
        Some(m) if m != method.as_bytes() => {
            return Err(mismatch(
                msg,
                "Mcp-Method header does not match the body's method".into(),
            ));
        }
        Some(_) => {}
    }
    if msg.method.as_ref().is_some_and(Method::names_its_target) {
        let target = if msg.method == Some(Method::ResourcesRead) {
            msg.uri.as_deref()
        } else {
            msg.name.as_deref()
        };
        match (target, mirrored.name.as_deref()) {
            (Some(_), None) => {
                return Err(mismatch(
                    msg,
                    format!("missing required Mcp-Name header for {method}"),
                ));
            }
            (Some(t), Some(raw)) if mirror::decode(raw).as_deref() != Some(t) => {
                return Err(mismatch(
                    msg,
                    "Mcp-Name header does not match the body".into(),
                ));
            }
            _ => {}
        }
    }
    if !mcp::is_modern(body_version) {
        return Err(Rejection::unsupported_version(msg.id.clone(), body_version));
    }
    if !params.is_empty() {
        let headers: Vec<(&[u8], &[u8])> = mirrored
            .params
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        let args = arguments();
        mirror::check_params(params, args.as_ref(), &headers).map_err(|why| mismatch(msg, why))?;
    }
    Ok(Era::Modern)
}

fn not_one_message() -> Rejection {
    Rejection::new(
        Reason::NotOneMessage,
        None,
        "a 2026-07-28 request body must be a single JSON-RPC request or notification object",
    )
}
