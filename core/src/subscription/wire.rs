//! The xDS messages of the filter's subscription, in protobuf by hand (the field numbers of
//! `envoy.service.discovery.v3`, `envoy.config.core.v3`, `envoy.extensions.filters.http.wasm.v3`,
//! `envoy.extensions.wasm.v3` and `google.protobuf`; the control plane's tests check them
//! against the generated types). Only the fields the filter sends or reads; the rest are
//! skipped. Same primitives as the rate-limit service's messages.

use crate::limits::ratelimit::{Reader, Value, bytes_field, varint_field};

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK.
const INVALID_ARGUMENT: u64 = 3;
/// The `user_agent_name` the filter sends in its node.
pub const USER_AGENT: &str = "mcpgw-filter";

const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const BYTES_VALUE: &str = "type.googleapis.com/google.protobuf.BytesValue";

/// A `DiscoveryRequest` for one resource.
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryRequest<'a> {
    /// Field 1: the version accepted last.
    pub version_info: &'a str,
    /// Field 2 (`node.id`, with `node.user_agent_name`): on a stream's first request only.
    pub node_id: Option<&'a str>,
    /// Field 3: the one resource name.
    pub resource_name: &'a str,
    /// Field 4.
    pub type_url: &'a str,
    /// Field 5: the nonce of the response answered ("" on the first request).
    pub response_nonce: &'a str,
    /// Field 6 (`error_detail.message`, code INVALID_ARGUMENT): set on a NACK.
    pub error: Option<&'a str>,
}

impl DiscoveryRequest<'_> {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.error.map_or(0, str::len));
        if !self.version_info.is_empty() {
            bytes_field(&mut out, 1, self.version_info.as_bytes());
        }
        if let Some(id) = self.node_id {
            let mut node = Vec::with_capacity(id.len() + USER_AGENT.len() + 4);
            bytes_field(&mut node, 1, id.as_bytes());
            bytes_field(&mut node, 6, USER_AGENT.as_bytes());
            bytes_field(&mut out, 2, &node);
        }
        bytes_field(&mut out, 3, self.resource_name.as_bytes());
        bytes_field(&mut out, 4, self.type_url.as_bytes());
        if !self.response_nonce.is_empty() {
            bytes_field(&mut out, 5, self.response_nonce.as_bytes());
        }
        if let Some(message) = self.error {
            let mut status = Vec::with_capacity(message.len() + 4);
            varint_field(&mut status, 1, INVALID_ARGUMENT);
            bytes_field(&mut status, 2, message.as_bytes());
            bytes_field(&mut out, 6, &status);
        }
        out
    }
}

/// The fields of a `DiscoveryResponse` the filter reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryResponse {
    /// Field 1.
    pub version_info: String,
    /// Field 2: the resources, each an `Any`'s (type URL, value).
    pub resources: Vec<(String, Vec<u8>)>,
    /// Field 4.
    pub type_url: String,
    /// Field 5.
    pub nonce: String,
}

/// Iterates over the fields of `bytes`, failing on a malformed one.
fn fields(bytes: &[u8]) -> impl Iterator<Item = Result<(u64, Value<'_>), String>> {
    let mut reader = Reader::new(bytes);
    std::iter::from_fn(move || reader.next()).map(|f| f.map_err(|()| "malformed field".to_owned()))
}

fn text(field: &str, bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{field} is not UTF-8"))
}

/// An `Any`: (type URL, value).
fn any(bytes: &[u8]) -> Result<(String, Vec<u8>), String> {
    let (mut type_url, mut value) = (String::new(), Vec::new());
    for f in fields(bytes) {
        match f? {
            (1, Value::Bytes(b)) => type_url = text("Any.type_url", b)?,
            (2, Value::Bytes(b)) => value = b.to_vec(),
            _ => {}
        }
    }
    Ok((type_url, value))
}

/// The one length-delimited field `number` of `bytes` (the last, as protobuf merges).
fn message(bytes: &[u8], number: u64) -> Result<Option<&[u8]>, String> {
    let mut found = None;
    for f in fields(bytes) {
        if let (n, Value::Bytes(b)) = f?
            && n == number
        {
            found = Some(b);
        }
    }
    Ok(found)
}

/// The `id` of a serialized `envoy.config.core.v3.Node` (Envoy's `node` property); `None`
/// when it has none or is malformed.
pub fn node_id(node: &[u8]) -> Option<String> {
    let mut id = None;
    for f in fields(node) {
        if let (1, Value::Bytes(b)) = f.ok()? {
            id = String::from_utf8(b.to_vec()).ok();
        }
    }
    id.filter(|id| !id.is_empty())
}

impl DiscoveryResponse {
    /// Reads one; an error names what is malformed.
    pub fn decode(bytes: &[u8]) -> Result<DiscoveryResponse, String> {
        let mut out = DiscoveryResponse::default();
        for f in fields(bytes) {
            match f? {
                (1, Value::Bytes(b)) => out.version_info = text("version_info", b)?,
                (2, Value::Bytes(b)) => out.resources.push(any(b)?),
                (4, Value::Bytes(b)) => out.type_url = text("type_url", b)?,
                (5, Value::Bytes(b)) => out.nonce = text("nonce", b)?,
                _ => {}
            }
        }
        Ok(out)
    }

    /// The plugin configuration inside the `TypedExtensionConfig` named `name`:
    /// `typed_config` (a `Wasm` filter) → `config` (`PluginConfig`) → `configuration`
    /// (`StringValue` or `BytesValue`) → its value. The module (`vm_config`) is ignored:
    /// the filter already runs.
    pub fn configuration_of(&self, name: &str) -> Result<Vec<u8>, String> {
        let mut names = Vec::new();
        for (_, extension) in &self.resources {
            let mut this = String::new();
            let mut typed = None;
            for f in fields(extension) {
                match f? {
                    (1, Value::Bytes(b)) => this = text("TypedExtensionConfig.name", b)?,
                    (2, Value::Bytes(b)) => typed = Some(any(b)?),
                    _ => {}
                }
            }
            if this != name {
                names.push(this);
                continue;
            }
            let (type_url, wasm) = typed.ok_or_else(|| format!("{name} has no typed_config"))?;
            if type_url != WASM {
                return Err(format!("{name} is a {type_url:?}, not a Wasm filter"));
            }
            let plugin =
                message(&wasm, 1)?.ok_or_else(|| format!("{name}: Wasm without config"))?;
            let Some(configuration) = message(plugin, 4)? else {
                // No configuration: the documented defaults (as Envoy would pass "").
                return Ok(Vec::new());
            };
            let (type_url, value) = any(configuration)?;
            if type_url != STRING_VALUE && type_url != BYTES_VALUE {
                return Err(format!(
                    "{name}: configuration is a {type_url:?}, not a StringValue or BytesValue"
                ));
            }
            return Ok(message(&value, 1)?.map(<[u8]>::to_vec).unwrap_or_default());
        }
        Err(format!(
            "the response does not carry {name:?} (it carries {names:?})"
        ))
    }
}
