//! The headers a 2026-era request mirrors from its body (`Mcp-Name`, `Mcp-Param-{Name}`):
//! their value encoding, the `x-mcp-header` annotations of a tool's input schema that say
//! which arguments are mirrored, and the check that each header says what the body says.
//!
//! A gateway that reads the body must refuse a request whose headers disagree with it
//! (HTTP 400, -32020): otherwise an intermediary that routes or authorizes on the headers
//! and a server that acts on the body would see two different requests.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

const SENTINEL_OPEN: &str = "=?base64?";
const SENTINEL_CLOSE: &str = "?=";

/// Encodes a header value as the 2026-07-28 transport does: as it is when it is plain
/// printable ASCII without edge whitespace, else `=?base64?{base64(UTF-8)}?=`.
pub fn encode(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim() == value
        && !(value.starts_with(SENTINEL_OPEN) && value.ends_with(SENTINEL_CLOSE));
    if plain {
        value.to_owned()
    } else {
        format!("{SENTINEL_OPEN}{}{SENTINEL_CLOSE}", STANDARD.encode(value))
    }
}

/// Decodes a header value: the sentinel form strictly (canonical base64 of UTF-8), else the
/// bytes as they are, which must be visible ASCII, space or tab. `None` when undecodable.
pub fn decode(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    if let Some(inner) = text
        .strip_prefix(SENTINEL_OPEN)
        .and_then(|t| t.strip_suffix(SENTINEL_CLOSE))
    {
        let bytes = STANDARD.decode(inner).ok()?;
        // Canonical only: a second encoding of one value would let two spellings pass.
        if STANDARD.encode(&bytes) != inner {
            return None;
        }
        return String::from_utf8(bytes).ok();
    }
    raw.iter()
        .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b))
        .then(|| text.to_owned())
}

/// The type of a mirrored argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON string, mirrored as it is.
    String,
    /// A JSON integer, mirrored in decimal (compared as a number).
    Integer,
    /// A JSON boolean, mirrored as `true` or `false`.
    Boolean,
}

/// One argument a tool's schema marks `x-mcp-header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// The `{Name}` of `Mcp-Param-{Name}`, lower-cased (header names are case-insensitive).
    pub name: String,
    /// Property names from the arguments object down to the value.
    pub path: Vec<String>,
    /// Its type.
    pub kind: Kind,
}

/// Largest integer a mirrored integer may be (JSON's safe range).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// The `x-mcp-header` arguments of `input_schema`, or none when any annotation breaks the
/// rules (then the schema validates nothing, as the reference SDK does): a non-empty HTTP
/// token, unique regardless of case, on a `string`, `integer` or `boolean` property reached
/// from the root through `properties` alone.
pub fn param_headers(input_schema: &Value) -> Vec<ParamHeader> {
    let mut found = Vec::new();
    if collect(input_schema, &mut Vec::new(), &mut found).is_err() {
        return Vec::new();
    }
    let mut names: Vec<&str> = found.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w.first() == w.get(1)) {
        return Vec::new();
    }
    found
}

fn collect(schema: &Value, path: &mut Vec<String>, out: &mut Vec<ParamHeader>) -> Result<(), ()> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (key, prop) in props {
        path.push(key.clone());
        if let Some(name) = prop.get("x-mcp-header") {
            let name = name.as_str().ok_or(())?;
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            let kind = match prop.get("type").and_then(Value::as_str) {
                Some("string") => Kind::String,
                Some("integer") => Kind::Integer,
                Some("boolean") => Kind::Boolean,
                _ => return Err(()),
            };
            if !token {
                return Err(());
            }
            out.push(ParamHeader {
                name: name.to_ascii_lowercase(),
                path: path.clone(),
                kind,
            });
        }
        collect(prop, path, out)?;
        path.pop();
    }
    Ok(())
}

/// Why mirrored parameter headers disagree with the arguments (the -32020 message).
pub fn check_params(
    params: &[ParamHeader],
    arguments: Option<&Value>,
    headers: &[(&[u8], &[u8])],
) -> Result<(), String> {
    for p in params {
        let mut matching = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(p.name.as_bytes()));
        let header = matching.next();
        if matching.next().is_some() {
            return Err(format!(
                "Mcp-Param-{} header appears more than once",
                p.name
            ));
        }
        let mut value = arguments;
        for key in &p.path {
            value = value.and_then(|v| v.get(key));
        }
        let value = value.filter(|v| !v.is_null());
        match (value, header) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(format!(
                    "Mcp-Param-{} header is missing but the argument is present",
                    p.name
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "Mcp-Param-{} header is present but the argument is absent",
                    p.name
                ));
            }
            (Some(v), Some((_, raw))) => {
                let Some(text) = decode(raw) else {
                    return Err(format!("Mcp-Param-{} header is not decodable", p.name));
                };
                let agrees = match p.kind {
                    Kind::String => v.as_str() == Some(text.as_str()),
                    Kind::Boolean => v.as_bool().map(|b| b.to_string()) == Some(text),
                    Kind::Integer => {
                        let body = v
                            .as_i64()
                            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64));
                        let head = text.trim().parse::<i64>().ok();
                        body.is_some_and(|b| b.abs() <= MAX_SAFE_INTEGER) && body == head
                    }
                };
                if !agrees {
                    return Err(format!(
                        "Mcp-Param-{} header does not match the argument in the body",
                        p.name
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_encode_and_decode_as_the_transport_says() {
        for (value, wire) in [
            ("get_weather", "get_weather"),
            ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
            (" padded", "=?base64?IHBhZGRlZA==?="),
            ("=?base64?eA==?=", "=?base64?PT9iYXNlNjQ/ZUE9PT89?="),
        ] {
            assert_eq!(encode(value), wire, "{value}");
            assert_eq!(decode(wire.as_bytes()).as_deref(), Some(value), "{wire}");
        }
        assert_eq!(decode(b"=?base64?!!?="), None, "bad base64");
        assert_eq!(decode(b"=?base64?eB==?="), None, "non-canonical base64");
        assert_eq!(decode(b"=?base64?/w==?="), None, "not UTF-8");
        assert_eq!(decode(b"a\x01b"), None, "control characters");
        assert_eq!(decode(&[0xE9]), None);
    }

    #[test]
    fn annotated_arguments_are_found_and_broken_schemas_validate_nothing() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {"dry": {"type": "boolean", "x-mcp-header": "Dry-Run"}}},
            "n": {"type": "integer", "x-mcp-header": "N"},
            "free": {"type": "string"}
        }});
        let mut found = param_headers(&schema);
        found.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<(&str, Vec<&str>, Kind)> = found
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.path.iter().map(String::as_str).collect(),
                    p.kind,
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("dry-run", vec!["opts", "dry"], Kind::Boolean),
                ("n", vec!["n"], Kind::Integer),
                ("region", vec!["region"], Kind::String)
            ]
        );
        for broken in [
            json!({"properties": {"x": {"type": "number", "x-mcp-header": "X"}}}),
            json!({"properties": {"x": {"type": "string", "x-mcp-header": "a b"}}}),
            json!({"properties": {"x": {"type": "string", "x-mcp-header": ""}}}),
            json!({"properties": {"x": {"type": "string", "x-mcp-header": "A"}, "y": {"type": "string", "x-mcp-header": "a"}}}),
        ] {
            assert!(param_headers(&broken).is_empty(), "{broken}");
        }
        assert!(param_headers(&json!({"type": "object"})).is_empty());
    }

    #[test]
    fn parameter_headers_must_say_what_the_arguments_say() {
        let params = param_headers(&json!({"properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "n": {"type": "integer", "x-mcp-header": "N"},
            "dry": {"type": "boolean", "x-mcp-header": "Dry"}
        }}));
        let args = json!({"region": "eu-west-1", "n": 42.0, "dry": false});
        let ok: [(&[u8], &[u8]); 3] =
            [(b"region", b"eu-west-1"), (b"N", b"42"), (b"dry", b"false")];
        assert_eq!(check_params(&params, Some(&args), &ok), Ok(()));
        type Case<'a> = (&'a str, Vec<(&'a [u8], &'a [u8])>, serde_json::Value);
        let cases: [Case<'_>; 5] = [
            (
                "mismatch",
                vec![(b"region", b"eu-west1"), (b"n", b"42"), (b"dry", b"false")],
                args.clone(),
            ),
            (
                "missing",
                vec![(b"n", b"42"), (b"dry", b"false")],
                args.clone(),
            ),
            (
                "twice",
                vec![
                    (b"region", b"eu-west-1"),
                    (b"region", b"eu-west-1"),
                    (b"n", b"42"),
                    (b"dry", b"false"),
                ],
                args.clone(),
            ),
            (
                "extra for a null",
                vec![(b"region", b"x")],
                json!({"region": null}),
            ),
            (
                "number as text",
                vec![(b"region", b"a"), (b"n", b"4x2"), (b"dry", b"false")],
                json!({"region": "a", "n": 42, "dry": false}),
            ),
        ];
        for (name, headers, args) in cases {
            assert!(
                check_params(&params, Some(&args), &headers).is_err(),
                "{name}"
            );
        }
        assert_eq!(
            check_params(&params, Some(&json!({})), &[]),
            Ok(()),
            "absent: no header"
        );
        let unknown: [(&[u8], &[u8]); 1] = [(b"other", b"x")];
        assert_eq!(
            check_params(&params, Some(&json!({})), &unknown),
            Ok(()),
            "unknown ones are ignored"
        );
    }
}
