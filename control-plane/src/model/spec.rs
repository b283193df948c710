//! The kind-specific fields of catalog items, typed: one serde struct per kind, stored as
//! JSON in the `spec` column. Every field has a default and unknown keys are ignored, so rows
//! written by earlier versions read as they were; a row that still does not parse is skipped
//! by the store (with a warning and a metric), never half-read.
//!
//! MCP's own nested objects (JSON Schemas, annotations, icons, `_meta`) stay JSON values:
//! mcpgw passes them through to clients and does not interpret them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CatalogKind, FieldInvalid};

/// A JSON object.
pub type JsonObject = Map<String, Value>;

/// What a catalog kind's spec must offer the store and the API.
pub trait CatalogSpec:
    Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug + Default + Send + Sync + 'static
{
    /// The kind this spec belongs to.
    const KIND: CatalogKind;
    /// A partial change of the spec (`None` fields stay).
    type Patch: Clone + std::fmt::Debug + Default + PartialEq + Send + Sync + 'static;

    /// Applies a partial change.
    fn apply(&mut self, patch: Self::Patch);

    /// Whether a patch changes nothing.
    fn patch_is_empty(patch: &Self::Patch) -> bool {
        *patch == Self::Patch::default()
    }

    /// Reads a stored or exported spec object.
    fn from_json(object: JsonObject) -> Result<Self, FieldInvalid> {
        serde_json::from_value(Value::Object(object))
            .map_err(|e| FieldInvalid::new("spec", e.to_string()))
    }

    /// The stored form (a JSON object).
    fn to_json(&self) -> JsonObject {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => JsonObject::new(),
        }
    }
}

fn object_type() -> JsonObject {
    let mut m = JsonObject::new();
    m.insert("type".into(), Value::from("object"));
    m
}

/// How a tool is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntegrationType {
    /// Discovered from an upstream MCP server.
    #[default]
    #[serde(rename = "MCP")]
    Mcp,
    /// Defined by hand over a REST endpoint.
    #[serde(rename = "REST")]
    Rest,
}

impl IntegrationType {
    /// `MCP` or `REST`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mcp => "MCP",
            Self::Rest => "REST",
        }
    }

    /// Parses `MCP` or `REST`, any case.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_uppercase().as_str() {
            "MCP" => Some(Self::Mcp),
            "REST" => Some(Self::Rest),
            _ => None,
        }
    }
}

/// The HTTP method of a REST tool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET.
    Get,
    /// POST.
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl HttpMethod {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }

    /// Parses a method name, any case (field `request_type`).
    pub fn parse(raw: &str) -> Result<Self, FieldInvalid> {
        match raw.to_ascii_uppercase().as_str() {
            "GET" => Ok(Self::Get),
            "POST" => Ok(Self::Post),
            "PUT" => Ok(Self::Put),
            "PATCH" => Ok(Self::Patch),
            "DELETE" => Ok(Self::Delete),
            _ => Err(FieldInvalid::new(
                "request_type",
                "one of GET, POST, PUT, PATCH, DELETE",
            )),
        }
    }
}

/// A tool's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolSpec {
    /// Human title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// JSON Schema of the arguments.
    pub input_schema: JsonObject,
    /// JSON Schema of structured results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<JsonObject>,
    /// MCP tool annotations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    /// MCP icons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icons: Option<Value>,
    /// MCP `_meta`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// `MCP` (discovered) or `REST` (defined by hand).
    pub integration_type: IntegrationType,
    /// REST endpoint (REST tools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP method (REST tools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_type: Option<HttpMethod>,
}

impl Default for ToolSpec {
    fn default() -> Self {
        ToolSpec {
            title: None,
            input_schema: object_type(),
            output_schema: None,
            annotations: None,
            icons: None,
            meta: None,
            integration_type: IntegrationType::Mcp,
            url: None,
            request_type: None,
        }
    }
}

/// A partial change of a [`ToolSpec`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolPatch {
    /// New title.
    pub title: Option<String>,
    /// New input schema.
    pub input_schema: Option<JsonObject>,
    /// New output schema.
    pub output_schema: Option<JsonObject>,
    /// New annotations.
    pub annotations: Option<Value>,
    /// New REST endpoint.
    pub url: Option<String>,
    /// New HTTP method.
    pub request_type: Option<HttpMethod>,
}

impl CatalogSpec for ToolSpec {
    const KIND: CatalogKind = CatalogKind::Tool;
    type Patch = ToolPatch;

    fn apply(&mut self, p: ToolPatch) {
        let ToolPatch {
            title,
            input_schema,
            output_schema,
            annotations,
            url,
            request_type,
        } = p;
        if title.is_some() {
            self.title = title;
        }
        if let Some(s) = input_schema {
            self.input_schema = s;
        }
        if output_schema.is_some() {
            self.output_schema = output_schema;
        }
        if annotations.is_some() {
            self.annotations = annotations;
        }
        if url.is_some() {
            self.url = url;
        }
        if request_type.is_some() {
            self.request_type = request_type;
        }
    }
}

/// A resource's (or resource template's) fields; its URI is a column of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceSpec {
    /// True for a resource template (RFC 6570 URI).
    pub is_template: bool,
    /// Human title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// MIME type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Size in bytes, if the upstream said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Literal content of a resource defined by hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// MCP annotations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    /// MCP icons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icons: Option<Value>,
    /// MCP `_meta`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

/// A partial change of a [`ResourceSpec`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourcePatch {
    /// New title.
    pub title: Option<String>,
    /// New MIME type.
    pub mime_type: Option<String>,
    /// New content.
    pub content: Option<String>,
}

impl CatalogSpec for ResourceSpec {
    const KIND: CatalogKind = CatalogKind::Resource;
    type Patch = ResourcePatch;

    fn apply(&mut self, p: ResourcePatch) {
        let ResourcePatch {
            title,
            mime_type,
            content,
        } = p;
        if title.is_some() {
            self.title = title;
        }
        if mime_type.is_some() {
            self.mime_type = mime_type;
        }
        if content.is_some() {
            self.content = content;
        }
    }
}

/// One argument of a prompt (MCP `PromptArgument`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptArgument {
    /// Name (required, not empty).
    pub name: String,
    /// Human title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether the argument must be given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

impl PromptArgument {
    /// Parses the arguments of a request body: objects with a non-empty `name` (field
    /// `arguments[i]…`).
    pub fn parse_list(raw: Vec<Value>) -> Result<Vec<PromptArgument>, FieldInvalid> {
        raw.into_iter()
            .enumerate()
            .map(|(i, a)| {
                let named = a
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty());
                if !named {
                    return Err(FieldInvalid::new(
                        format!("arguments[{i}].name"),
                        "each argument needs a name",
                    ));
                }
                serde_json::from_value(a)
                    .map_err(|e| FieldInvalid::new(format!("arguments[{i}]"), e.to_string()))
            })
            .collect()
    }
}

/// A prompt's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptSpec {
    /// Human title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Template text of a prompt defined by hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Arguments (absent when the upstream listed none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Vec<PromptArgument>>,
    /// MCP icons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icons: Option<Value>,
    /// MCP `_meta`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

/// A partial change of a [`PromptSpec`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptPatch {
    /// New title.
    pub title: Option<String>,
    /// New template.
    pub template: Option<String>,
    /// New arguments.
    pub arguments: Option<Vec<PromptArgument>>,
}

impl CatalogSpec for PromptSpec {
    const KIND: CatalogKind = CatalogKind::Prompt;
    type Patch = PromptPatch;

    fn apply(&mut self, p: PromptPatch) {
        let PromptPatch {
            title,
            template,
            arguments,
        } = p;
        if title.is_some() {
            self.title = title;
        }
        if template.is_some() {
            self.template = template;
        }
        if arguments.is_some() {
            self.arguments = arguments;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Specs as earlier versions stored them (free maps) read as typed structs.
    #[test]
    fn existing_rows_read() {
        let tool: ToolSpec = serde_json::from_value(json!({
            "title": "Echo", "input_schema": {"type": "object", "properties": {}},
            "annotations": {"readOnlyHint": true}, "integration_type": "MCP",
            "meta": {"k": 1}, "something_new": true
        }))
        .unwrap();
        assert_eq!(tool.title.as_deref(), Some("Echo"));
        assert_eq!(tool.integration_type, IntegrationType::Mcp);
        let rest: ToolSpec = serde_json::from_value(json!({
            "integration_type": "REST", "url": "https://api.example/x", "request_type": "GET",
            "input_schema": {"type": "object"}
        }))
        .unwrap();
        assert_eq!(rest.request_type, Some(HttpMethod::Get));
        // An empty spec (a REST tool imported without one) gets the defaults.
        let empty: ToolSpec = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty.input_schema, object_type());
        let res: ResourceSpec = serde_json::from_value(
            json!({"is_template": true, "mime_type": "text/plain", "size": 12}),
        )
        .unwrap();
        assert!(res.is_template);
        let p: PromptSpec = serde_json::from_value(
            json!({"template": "hi", "arguments": [{"name": "who", "required": true}]}),
        )
        .unwrap();
        assert_eq!(p.arguments.unwrap()[0].name, "who");
        // What cannot be read is an error, not a guess.
        assert!(
            ToolSpec::from_json(
                json!({"request_type": "BREW"})
                    .as_object()
                    .cloned()
                    .unwrap()
            )
            .is_err()
        );
        assert!(
            PromptSpec::from_json(json!({"arguments": "x"}).as_object().cloned().unwrap()).is_err()
        );
    }

    #[test]
    fn round_trip_and_patches() {
        let mut t = ToolSpec {
            integration_type: IntegrationType::Rest,
            url: Some("https://a".into()),
            request_type: Some(HttpMethod::Post),
            ..ToolSpec::default()
        };
        assert_eq!(ToolSpec::from_json(t.to_json()).unwrap(), t);
        assert!(ToolSpec::patch_is_empty(&ToolPatch::default()));
        t.apply(ToolPatch {
            request_type: Some(HttpMethod::Get),
            ..ToolPatch::default()
        });
        assert_eq!(t.request_type, Some(HttpMethod::Get));
        assert_eq!(t.url.as_deref(), Some("https://a"), "untouched");
        let args =
            PromptArgument::parse_list(vec![json!({"name": "a"}), json!({"description": "x"})]);
        assert_eq!(args.unwrap_err().field, "arguments[1].name");
    }
}
