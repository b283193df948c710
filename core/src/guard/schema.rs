//! A subset of JSON Schema (draft 2020-12) for tool arguments and structured results,
//! compiled once per tool at configure time.
//!
//! Keywords checked: `type` (a name or a list; `integer` is a number without a fraction),
//! `enum`, `const` (numbers compare by value), `properties`, `required`,
//! `additionalProperties` (`false` or a schema), `minProperties`, `maxProperties`, `items`
//! (a schema for every item), `prefixItems`, `minItems`, `maxItems`, `minimum`, `maximum`,
//! `exclusiveMinimum`, `exclusiveMaximum` (numbers), `multipleOf`, `minLength`, `maxLength`
//! (in characters), `pattern` (when `regex-lite` compiles it), `allOf`, `anyOf`, `oneOf`,
//! `not`, and the boolean schemas `true` and `false`. Every other keyword (`$ref`, `format`,
//! `uniqueItems`, `if`/`then`, `dependentRequired`, …) is ignored: the subset never refuses
//! what a full validator accepts, it only accepts some of what one would refuse. A schema
//! nested deeper than [`MAX_DEPTH`] or with a malformed keyword (`"type": 5`) is not used
//! at all.

use regex_lite::Regex;
use serde_json::{Map, Value};

/// Deepest schema compiled.
pub const MAX_DEPTH: usize = 32;

/// A compiled schema.
#[derive(Debug)]
pub enum Schema {
    /// `true` (anything) or `false` (nothing).
    Bool(bool),
    /// An object schema.
    Rules(Box<Rules>),
}

/// The keywords of an object schema that are checked.
#[derive(Debug, Default)]
pub struct Rules {
    types: u8,
    enumeration: Option<Vec<Value>>,
    constant: Option<Value>,
    properties: Vec<(String, Schema)>,
    required: Vec<String>,
    additional: Option<Schema>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    items: Option<Schema>,
    prefix_items: Vec<Schema>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    multiple_of: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<Regex>,
    all_of: Vec<Schema>,
    any_of: Vec<Schema>,
    one_of: Vec<Schema>,
    not: Option<Schema>,
}

const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const OBJECT: u8 = 4;
const ARRAY: u8 = 8;
const NUMBER: u8 = 16;
const INTEGER: u8 = 32;
const STRING: u8 = 64;

fn type_bit(name: &str) -> Option<u8> {
    Some(match name {
        "null" => NULL,
        "boolean" => BOOLEAN,
        "object" => OBJECT,
        "array" => ARRAY,
        "number" => NUMBER,
        "integer" => INTEGER,
        "string" => STRING,
        _ => return None,
    })
}

/// Why a schema is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable(pub String);

impl Schema {
    /// Compiles `value` as a schema.
    pub fn compile(value: &Value) -> Result<Schema, Unusable> {
        compile(value, 0)
    }

    /// The first way `instance` fails the schema: `(JSON pointer, problem)`. The problem
    /// names the keyword and the schema's numbers, never the instance's values.
    pub fn check(&self, instance: &Value) -> Option<(String, String)> {
        let mut path = String::new();
        check(self, instance, &mut path).map(|problem| {
            let at = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            (at, problem)
        })
    }
}

fn compile(value: &Value, depth: usize) -> Result<Schema, Unusable> {
    if depth > MAX_DEPTH {
        return Err(Unusable(format!("nested deeper than {MAX_DEPTH}")));
    }
    let obj = match value {
        Value::Bool(b) => return Ok(Schema::Bool(*b)),
        Value::Object(obj) => obj,
        _ => return Err(Unusable("a schema is an object or a boolean".into())),
    };
    let sub = |v: &Value| compile(v, depth + 1);
    let list = |key: &str| -> Result<Vec<Schema>, Unusable> {
        match obj.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(sub).collect(),
            Some(_) => Err(Unusable(format!("`{key}` is not an array"))),
        }
    };
    let count = |key: &str| -> Result<Option<u64>, Unusable> {
        match obj.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .map(Some)
                .ok_or_else(|| Unusable(format!("`{key}` is not a non-negative integer"))),
        }
    };
    let number = |key: &str| -> Result<Option<f64>, Unusable> {
        match obj.get(key) {
            None => Ok(None),
            // Draft 4's boolean `exclusiveMinimum` is not this draft's: ignored.
            Some(Value::Bool(_)) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Unusable(format!("`{key}` is not a number"))),
        }
    };
    let mut r = Rules {
        types: match obj.get("type") {
            None => 0,
            Some(Value::String(t)) => {
                type_bit(t).ok_or_else(|| Unusable(format!("unknown type {t:?}")))?
            }
            Some(Value::Array(ts)) => ts.iter().try_fold(0, |bits, t| {
                t.as_str()
                    .and_then(type_bit)
                    .map(|b| bits | b)
                    .ok_or_else(|| Unusable("`type` lists something that is not a type".into()))
            })?,
            Some(_) => return Err(Unusable("`type` is not a string or a list".into())),
        },
        enumeration: match obj.get("enum") {
            None => None,
            Some(Value::Array(values)) => Some(values.clone()),
            Some(_) => return Err(Unusable("`enum` is not an array".into())),
        },
        constant: obj.get("const").cloned(),
        min_properties: count("minProperties")?,
        max_properties: count("maxProperties")?,
        min_items: count("minItems")?,
        max_items: count("maxItems")?,
        min_length: count("minLength")?,
        max_length: count("maxLength")?,
        minimum: number("minimum")?,
        maximum: number("maximum")?,
        exclusive_minimum: number("exclusiveMinimum")?,
        exclusive_maximum: number("exclusiveMaximum")?,
        multiple_of: number("multipleOf")?.filter(|m| *m > 0.0),
        // A pattern this engine cannot compile (look-around, Unicode classes) is ignored.
        pattern: obj
            .get("pattern")
            .and_then(Value::as_str)
            .and_then(|p| crate::guard::plugin::compile_regex(p).ok()),
        all_of: list("allOf")?,
        any_of: list("anyOf")?,
        one_of: list("oneOf")?,
        prefix_items: list("prefixItems")?,
        ..Rules::default()
    };
    if let Some(props) = obj.get("properties") {
        let props: &Map<String, Value> = props
            .as_object()
            .ok_or_else(|| Unusable("`properties` is not an object".into()))?;
        for (name, s) in props {
            r.properties.push((name.clone(), sub(s)?));
        }
    }
    if let Some(required) = obj.get("required") {
        r.required = required
            .as_array()
            .and_then(|names| {
                names
                    .iter()
                    .map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .ok_or_else(|| Unusable("`required` is not a list of names".into()))?;
    }
    if let Some(a) = obj.get("additionalProperties") {
        r.additional = Some(sub(a)?);
    }
    // Draft 2020-12's `items` is one schema; an array (the older tuple form) is ignored.
    if let Some(items) = obj.get("items").filter(|v| !v.is_array()) {
        r.items = Some(sub(items)?);
    }
    if let Some(not) = obj.get("not") {
        r.not = Some(sub(not)?);
    }
    Ok(Schema::Rules(Box::new(r)))
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn type_of(v: &Value) -> u8 {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Object(_) => OBJECT,
        Value::Array(_) => ARRAY,
        Value::String(_) => STRING,
        Value::Number(n) => {
            let integral = n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0);
            if integral { NUMBER | INTEGER } else { NUMBER }
        }
    }
}

fn type_names(bits: u8) -> String {
    let names = [
        "null", "boolean", "object", "array", "number", "integer", "string",
    ];
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Appends a JSON pointer segment for member `name` (or item index) to `path`.
fn push(path: &mut String, seg: &str) -> usize {
    let len = path.len();
    path.push('/');
    path.push_str(&seg.replace('~', "~0").replace('/', "~1"));
    len
}

fn check(s: &Schema, v: &Value, path: &mut String) -> Option<String> {
    let r = match s {
        Schema::Bool(true) => return None,
        Schema::Bool(false) => return Some("is not allowed here".into()),
        Schema::Rules(r) => r,
    };
    if r.types != 0 {
        let t = type_of(v);
        // `number` admits integers; `integer` admits only them.
        let ok = r.types & t != 0 || (r.types & NUMBER != 0 && t & NUMBER != 0);
        if !ok {
            return Some(format!("must be {}", type_names(r.types)));
        }
    }
    if let Some(values) = &r.enumeration
        && !values.iter().any(|e| same(e, v))
    {
        return Some("must be one of the values `enum` lists".into());
    }
    if let Some(c) = &r.constant
        && !same(c, v)
    {
        return Some("must be the value `const` gives".into());
    }
    let problem = match v {
        Value::Object(map) => check_object(r, map, path),
        Value::Array(items) => check_array(r, items, path),
        Value::String(text) => check_string(r, text),
        Value::Number(n) => n.as_f64().and_then(|x| check_number(r, x)),
        _ => None,
    };
    if problem.is_some() {
        return problem;
    }
    for sub in &r.all_of {
        if let Some(p) = check(sub, v, path) {
            return Some(p);
        }
    }
    let passes = |sub: &Schema| check(sub, v, &mut String::new()).is_none();
    if !r.any_of.is_empty() && !r.any_of.iter().any(passes) {
        return Some("matches none of the `anyOf` schemas".into());
    }
    if !r.one_of.is_empty() && r.one_of.iter().filter(|s| passes(s)).count() != 1 {
        return Some("does not match exactly one of the `oneOf` schemas".into());
    }
    if let Some(not) = &r.not
        && passes(not)
    {
        return Some("matches the `not` schema".into());
    }
    None
}

fn check_object(r: &Rules, map: &Map<String, Value>, path: &mut String) -> Option<String> {
    let n = map.len() as u64;
    if r.min_properties.is_some_and(|m| n < m) {
        return Some(format!(
            "needs at least {} properties",
            r.min_properties.unwrap_or(0)
        ));
    }
    if r.max_properties.is_some_and(|m| n > m) {
        return Some(format!(
            "has more than {} properties",
            r.max_properties.unwrap_or(0)
        ));
    }
    for name in &r.required {
        if !map.contains_key(name) {
            push(path, name);
            return Some("is required".into());
        }
    }
    for (name, value) in map {
        let declared = r.properties.iter().find(|(p, _)| p == name);
        let schema = match (declared, &r.additional) {
            (Some((_, s)), _) => s,
            (None, Some(a)) => a,
            (None, None) => continue,
        };
        let len = push(path, name);
        if let Some(p) = check(schema, value, path) {
            if declared.is_none() && matches!(schema, Schema::Bool(false)) {
                return Some("is not a declared property".into());
            }
            return Some(p);
        }
        path.truncate(len);
    }
    None
}

fn check_array(r: &Rules, items: &[Value], path: &mut String) -> Option<String> {
    let n = items.len() as u64;
    if let Some(m) = r.min_items.filter(|m| n < *m) {
        return Some(format!("needs at least {m} items"));
    }
    if let Some(m) = r.max_items.filter(|m| n > *m) {
        return Some(format!("has more than {m} items"));
    }
    for (i, item) in items.iter().enumerate() {
        let schema = match r.prefix_items.get(i) {
            Some(s) => s,
            None => match &r.items {
                Some(s) => s,
                None => continue,
            },
        };
        let len = push(path, &i.to_string());
        if let Some(p) = check(schema, item, path) {
            return Some(p);
        }
        path.truncate(len);
    }
    None
}

fn check_string(r: &Rules, text: &str) -> Option<String> {
    let chars = text.chars().count() as u64;
    if let Some(m) = r.min_length.filter(|m| chars < *m) {
        return Some(format!("is shorter than {m} characters"));
    }
    if let Some(m) = r.max_length.filter(|m| chars > *m) {
        return Some(format!("is longer than {m} characters"));
    }
    if let Some(p) = &r.pattern
        && !p.is_match(text)
    {
        return Some("does not match `pattern`".into());
    }
    None
}

fn check_number(r: &Rules, x: f64) -> Option<String> {
    if let Some(m) = r.minimum.filter(|m| x < *m) {
        return Some(format!("is below the minimum {m}"));
    }
    if let Some(m) = r.maximum.filter(|m| x > *m) {
        return Some(format!("is above the maximum {m}"));
    }
    if let Some(m) = r.exclusive_minimum.filter(|m| x <= *m) {
        return Some(format!("must be greater than {m}"));
    }
    if let Some(m) = r.exclusive_maximum.filter(|m| x >= *m) {
        return Some(format!("must be less than {m}"));
    }
    if let Some(m) = r.multiple_of {
        let q = x / m;
        if (q - q.round()).abs() > 1e-9 {
            return Some(format!("is not a multiple of {m}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problem(schema: Value, instance: Value) -> Option<(String, String)> {
        Schema::compile(&schema).unwrap().check(&instance)
    }

    #[test]
    fn a_realistic_tool_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 20},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                "order": {"enum": ["asc", "desc"]},
                "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "maxItems": 3},
                "filter": {
                    "type": "object",
                    "properties": {"since": {"type": "string"}},
                    "additionalProperties": false
                },
                "version": {"const": 2}
            },
            "required": ["query"],
            "additionalProperties": false
        });
        let s = Schema::compile(&schema).unwrap();
        let ok = json!({"query": "mcp", "limit": 10.0, "order": "asc", "tags": ["a", "b"], "filter": {"since": "x"}, "version": 2.0});
        assert_eq!(s.check(&ok), None);
        let cases = [
            (json!({}), "/query", "is required"),
            (json!({"query": 5}), "/query", "must be string"),
            (
                json!({"query": ""}),
                "/query",
                "is shorter than 1 characters",
            ),
            (
                json!({"query": "ééééééééééééééééééééé"}),
                "/query",
                "is longer than 20 characters",
            ),
            (
                json!({"query": "q", "limit": 0}),
                "/limit",
                "is below the minimum 1",
            ),
            (
                json!({"query": "q", "limit": 2.5}),
                "/limit",
                "must be integer",
            ),
            (
                json!({"query": "q", "order": "up"}),
                "/order",
                "must be one of the values `enum` lists",
            ),
            (
                json!({"query": "q", "tags": ["ok", "NO"]}),
                "/tags/1",
                "does not match `pattern`",
            ),
            (
                json!({"query": "q", "tags": ["a", "b", "c", "d"]}),
                "/tags",
                "has more than 3 items",
            ),
            (
                json!({"query": "q", "filter": {"until": "y"}}),
                "/filter/until",
                "is not a declared property",
            ),
            (
                json!({"query": "q", "extra": 1}),
                "/extra",
                "is not a declared property",
            ),
            (
                json!({"query": "q", "version": 3}),
                "/version",
                "must be the value `const` gives",
            ),
            (json!([]), "/", "must be object"),
        ];
        for (instance, at, why) in cases {
            assert_eq!(
                s.check(&instance),
                Some((at.to_owned(), why.to_owned())),
                "{instance}"
            );
        }
    }

    #[test]
    fn composition_and_boolean_schemas() {
        let any = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert_eq!(problem(any.clone(), json!(3)), None);
        assert!(problem(any, json!(1.5)).is_some());
        let one = json!({"oneOf": [{"minimum": 0}, {"maximum": 10}]});
        assert_eq!(problem(one.clone(), json!(-5)), None);
        assert!(problem(one, json!(5)).is_some(), "matches both");
        let all = json!({"allOf": [{"type": "number"}, {"exclusiveMaximum": 1}]});
        assert!(problem(all, json!(1)).is_some());
        assert!(problem(json!({"not": {"type": "null"}}), json!(null)).is_some());
        assert_eq!(problem(json!(true), json!({"x": 1})), None);
        assert!(problem(json!(false), json!(1)).is_some());
        assert_eq!(problem(json!({"multipleOf": 0.1}), json!(0.3)), None);
        assert!(problem(json!({"multipleOf": 2}), json!(3)).is_some());
        let tuple = json!({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}});
        assert_eq!(problem(tuple.clone(), json!(["a", 1, 2])), None);
        assert_eq!(
            problem(tuple, json!(["a", "b"])),
            Some(("/1".into(), "must be integer".into()))
        );
    }

    #[test]
    fn unknown_keywords_are_ignored_and_malformed_schemas_unused() {
        let lenient = json!({"type": "object", "$ref": "#/$defs/x", "format": "email", "uniqueItems": true, "items": [{"type": "string"}]});
        assert_eq!(problem(lenient, json!({"a": 1})), None);
        // A pattern regex-lite cannot compile is ignored, not fatal.
        assert_eq!(problem(json!({"pattern": "\\p{L}+"}), json!("1")), None);
        for bad in [
            json!({"type": 5}),
            json!({"type": "text"}),
            json!({"required": "a"}),
            json!({"properties": []}),
            json!({"minLength": -1}),
            json!(7),
        ] {
            assert!(Schema::compile(&bad).is_err(), "{bad}");
        }
        let mut deep = json!({"type": "string"});
        for _ in 0..(MAX_DEPTH + 1) {
            deep = json!({"properties": {"x": deep}});
        }
        assert!(Schema::compile(&deep).is_err());
    }
}
