//! External guardrails: plugins of kind `external` ask a service outside the gateway,
//! over gRPC, to judge a call or its result (`proto/mcpgw/guard/v1/guard.proto`,
//! `mcpgw.guard.v1.Guardrail/Check`).
//!
//! This module holds what is host-independent: the plugin's settings checked
//! ([`compile`]), the `CheckRequest` encoded and the `CheckResponse` decoded by hand, as
//! the rate-limit messages are ([`crate::limits::ratelimit`]: `core` carries no protobuf
//! runtime), and the verdict checked against the contract ([`Verdict`]). The exchange
//! runs the calls (`exchange/external.rs`).

use crate::limits::ratelimit::{Reader, Value, bytes_field, varint_field};
use crate::snapshot::plugins::{External, GuardFailureMode, Hook, MAX_EXTERNAL_TIMEOUT_MS};

/// The gRPC service.
pub const SERVICE: &str = "mcpgw.guard.v1.Guardrail";
/// Its method.
pub const METHOD: &str = "Check";

/// Most headers one mutation may add.
pub const MAX_HEADERS: usize = 16;
/// Longest deny reason kept (bytes).
pub const MAX_REASON_BYTES: usize = 256;
/// Longest header value a mutation may set (bytes).
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// An `external` plugin's service, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The Envoy cluster the filter calls.
    pub cluster: String,
    /// How long a call waits.
    pub timeout_ms: u64,
    /// What a call gets when the service fails.
    pub failure_mode: GuardFailureMode,
}

/// Checks `e` (the plugin at `field`); `Err` names the field and what is wrong.
pub(crate) fn compile(e: &External, field: &str) -> Result<Service, (String, String)> {
    let f = |name: &str| format!("{field}.external.{name}");
    let cluster = match (&e.target, &e.cluster) {
        (Some(_), Some(_)) => {
            return Err((
                format!("{field}.external"),
                "sets both target and cluster (one names the service)".into(),
            ));
        }
        (None, None) => {
            return Err((
                format!("{field}.external"),
                "needs target or cluster".into(),
            ));
        }
        (Some(target), None) => {
            check_target(target).map_err(|why| (f("target"), why.to_owned()))?;
            External::cluster_for(target)
        }
        (None, Some(cluster)) => {
            let ok = !cluster.is_empty()
                && cluster.len() <= 200
                && cluster.bytes().all(|c| c.is_ascii_graphic());
            if !ok {
                return Err((
                    f("cluster"),
                    "must be 1 to 200 visible ASCII characters".into(),
                ));
            }
            cluster.clone()
        }
    };
    if e.timeout_ms == 0 || e.timeout_ms > MAX_EXTERNAL_TIMEOUT_MS {
        return Err((
            f("timeout_ms"),
            format!("must be 1 to {MAX_EXTERNAL_TIMEOUT_MS}"),
        ));
    }
    Ok(Service {
        cluster,
        timeout_ms: u64::from(e.timeout_ms),
        failure_mode: e.failure_mode,
    })
}

/// Checks a `host:port` target: a DNS name, an IPv4 address or a bracketed IPv6 address,
/// and a port from 1 to 65535.
pub fn check_target(target: &str) -> Result<(), &'static str> {
    let Some((host, port)) = target.rsplit_once(':') else {
        return Err("must be host:port");
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("must end in a port from 1 to 65535");
    }
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
            && host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
    };
    if ok {
        Ok(())
    } else {
        Err("must be host:port with a DNS name or an IP address (no scheme, no path)")
    }
}

/// `mcpgw.guard.v1.Hook` of a hook.
fn hook_number(hook: Hook) -> u64 {
    match hook {
        Hook::ToolPreInvoke => 1,
        Hook::ToolPostInvoke => 2,
        Hook::PromptPreFetch => 3,
        Hook::PromptPostFetch => 4,
        Hook::ResourcePreFetch => 5,
        Hook::ResourcePostFetch => 6,
    }
}

/// A `CheckRequest`, borrowed from the call it describes.
#[derive(Debug, Clone, Copy)]
pub struct CheckRequest<'a> {
    /// The plugin's name.
    pub plugin: &'a str,
    /// Where.
    pub hook: Hook,
    /// The MCP method.
    pub method: &'a str,
    /// The virtual server, if any.
    pub server: Option<&'a str>,
    /// The tool or prompt name, or the resource URI.
    pub name: Option<&'a str>,
    /// The caller's subject and teams, if known.
    pub principal: Option<(&'a str, &'a [String])>,
    /// Pre hooks: the params (JSON).
    pub params: &'a [u8],
    /// Post hooks: the result (JSON).
    pub result: &'a [u8],
    /// The request's JSON-RPC id as JSON text.
    pub request_id: Option<&'a str>,
}

impl CheckRequest<'_> {
    /// The message in protobuf (fields at their defaults are left out, as proto3 does).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.params.len() + self.result.len());
        let string = |out: &mut Vec<u8>, n: u32, s: &[u8]| {
            if !s.is_empty() {
                bytes_field(out, n, s);
            }
        };
        string(&mut out, 1, self.plugin.as_bytes());
        varint_field(&mut out, 2, hook_number(self.hook));
        string(&mut out, 3, self.method.as_bytes());
        string(&mut out, 4, self.server.unwrap_or_default().as_bytes());
        string(&mut out, 5, self.name.unwrap_or_default().as_bytes());
        if let Some((subject, teams)) = self.principal {
            let mut p = Vec::with_capacity(16 + subject.len());
            string(&mut p, 1, subject.as_bytes());
            for team in teams {
                bytes_field(&mut p, 2, team.as_bytes());
            }
            bytes_field(&mut out, 6, &p);
        }
        string(&mut out, 7, self.params);
        string(&mut out, 8, self.result);
        string(&mut out, 9, self.request_id.unwrap_or_default().as_bytes());
        out
    }
}

/// What the service answered, checked against the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on unchanged.
    Pass,
    /// Go on changed.
    Mutate {
        /// New params (a JSON object), if any.
        params: Option<Vec<u8>>,
        /// A new result (a JSON object), if any.
        result: Option<Vec<u8>>,
        /// Request headers to add (checked names and values).
        headers: Vec<(String, String)>,
    },
    /// Refuse.
    Deny {
        /// Why (cleaned: no control characters, at most [`MAX_REASON_BYTES`]).
        reason: String,
        /// The JSON-RPC error code (-32099..=-32000; -32003 when the service said 0 or
        /// something outside that range).
        code: i64,
    },
}

/// Why a `CheckResponse` cannot be used (the plugin's failure mode then decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Not protobuf, or not this message.
    Malformed,
    /// No verdict.
    NoVerdict,
    /// Params or a result that are not a JSON object.
    NotAnObject,
    /// A header the service may not set.
    Header,
}

impl Broken {
    /// Its label in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Broken::Malformed => "malformed answer",
            Broken::NoVerdict => "answer without a verdict",
            Broken::NotAnObject => "params or result that are not a JSON object",
            Broken::Header => "a header it may not set",
        }
    }
}

/// Headers a guardrail service may not add: framing, hop-by-hop, the client's credentials,
/// and the gateway's own.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "authorization",
    "proxy-authorization",
    "cookie",
    "accept",
];

/// Whether a service may add header `name` (`route_header`: the policy's route header).
pub fn header_allowed(name: &str, route_header: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        && !RESERVED_HEADERS.contains(&name)
        && !name.starts_with("mcp-")
        && !name.starts_with("x-mcpgw")
        && !name.starts_with("x-envoy-")
        && name != route_header
}

fn header_value_ok(v: &str) -> bool {
    v.len() <= MAX_HEADER_VALUE_BYTES && v.bytes().all(|c| c == b' ' || c.is_ascii_graphic())
}

/// Whether `bytes` is a JSON object.
fn is_object(bytes: &[u8]) -> bool {
    let t = bytes.trim_ascii_start();
    t.first() == Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(t).is_ok()
}

/// The reason, cleaned for the client.
fn clean_reason(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(raw.len().min(MAX_REASON_BYTES));
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_REASON_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// The JSON-RPC error code a deny answers with.
fn deny_code(raw: u64) -> i64 {
    // An `int32` travels as the 64-bit two's complement of its value.
    let code = i64::from(raw as u32 as i32);
    if (-32099..=-32000).contains(&code) {
        code
    } else {
        crate::jsonrpc::code::FORBIDDEN
    }
}

/// Reads a `CheckResponse`; `route_header` is the policy's route header (which a service
/// may not set).
pub fn decode(bytes: &[u8], route_header: &str) -> Result<Verdict, Broken> {
    let mut verdict = None;
    let mut r = Reader::new(bytes);
    while let Some(field) = r.next() {
        // A oneof's last member on the wire wins, as protobuf says.
        match field.map_err(|()| Broken::Malformed)? {
            (1, Value::Bytes(_)) => verdict = Some(Verdict::Pass),
            (2, Value::Bytes(m)) => verdict = Some(mutate(m, route_header)?),
            (3, Value::Bytes(d)) => verdict = Some(deny(d)?),
            (1..=3, _) => return Err(Broken::Malformed),
            _ => {}
        }
    }
    verdict.ok_or(Broken::NoVerdict)
}

fn mutate(bytes: &[u8], route_header: &str) -> Result<Verdict, Broken> {
    let (mut params, mut result, mut headers) = (None, None, Vec::new());
    let mut r = Reader::new(bytes);
    while let Some(field) = r.next() {
        match field.map_err(|()| Broken::Malformed)? {
            (1, Value::Bytes(p)) => params = (!p.is_empty()).then(|| p.to_vec()),
            (2, Value::Bytes(p)) => result = (!p.is_empty()).then(|| p.to_vec()),
            (3, Value::Bytes(h)) => {
                let (mut name, mut value) = (None, None);
                let mut hr = Reader::new(h);
                while let Some(f) = hr.next() {
                    match f.map_err(|()| Broken::Malformed)? {
                        (1, Value::Bytes(n)) => name = Some(n),
                        (2, Value::Bytes(v)) => value = Some(v),
                        (1 | 2, _) => return Err(Broken::Malformed),
                        _ => {}
                    }
                }
                let name =
                    std::str::from_utf8(name.unwrap_or_default()).map_err(|_| Broken::Header)?;
                let value =
                    std::str::from_utf8(value.unwrap_or_default()).map_err(|_| Broken::Header)?;
                if !header_allowed(name, route_header)
                    || !header_value_ok(value)
                    || headers.len() >= MAX_HEADERS
                {
                    return Err(Broken::Header);
                }
                headers.push((name.to_owned(), value.to_owned()));
            }
            (1..=3, _) => return Err(Broken::Malformed),
            _ => {}
        }
    }
    for json in [&params, &result].into_iter().flatten() {
        if !is_object(json) {
            return Err(Broken::NotAnObject);
        }
    }
    Ok(Verdict::Mutate {
        params,
        result,
        headers,
    })
}

fn deny(bytes: &[u8]) -> Result<Verdict, Broken> {
    let (mut reason, mut code) = (String::new(), 0);
    let mut r = Reader::new(bytes);
    while let Some(field) = r.next() {
        match field.map_err(|()| Broken::Malformed)? {
            (1, Value::Bytes(b)) => reason = clean_reason(b),
            (2, Value::Varint(c)) => code = c,
            (1 | 2, _) => return Err(Broken::Malformed),
            _ => {}
        }
    }
    Ok(Verdict::Deny {
        reason,
        code: deny_code(code),
    })
}

#[cfg(test)]
mod tests;
