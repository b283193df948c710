//! Reads a ContextForge export (`{"version", "exported_at", "entities": {…}}`) into an
//! mcpgw export document. ContextForge exports only locally defined entities (REST tools,
//! gateways, servers, prompts, resources); MCP tools come back by discovering the
//! gateways. Its credentials are sealed with its own key and cannot be carried over.

use serde_json::{Map, Value, json};

use super::{ExportDocument, ExportGateway, ExportItem, ExportServer, FORMAT, ImportError};
use crate::model::{AuthType, Transport};

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn active(v: &Value) -> bool {
    v.get("is_active")
        .or_else(|| v.get("enabled"))
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// Tags are strings in older exports and `{id, label}` objects in newer ones.
fn tags(v: &Value) -> Vec<String> {
    v.get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| match t {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o
                        .get("label")
                        .or_else(|| o.get("id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    _ => None,
                })
                .map(|t| {
                    t.to_lowercase()
                        .chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || "_.:/-".contains(c) {
                                c
                            } else {
                                '-'
                            }
                        })
                        .collect()
                })
                .filter(|t: &String| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// ContextForge gateway names are free text; mcpgw's prefix item names, so slugify.
fn gateway_name(v: &Value) -> Option<String> {
    let raw = s(v, "slug").or_else(|| s(v, "name"))?;
    let slug: String = raw
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let slug = slug.trim_matches('-').chars().take(64).collect::<String>();
    (!slug.is_empty()).then_some(slug)
}

fn list<'a>(entities: &'a Value, key: &str) -> &'a [Value] {
    entities
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Converts; returns the document and warnings.
pub(super) fn convert(body: &Value) -> Result<(ExportDocument, Vec<String>), ImportError> {
    let entities = body
        .get("entities")
        .ok_or_else(|| ImportError::Format("ContextForge export without entities".into()))?;
    let mut warnings = Vec::new();
    let mut doc = ExportDocument {
        format: FORMAT.into(),
        version: 1,
        exported_at: s(body, "exported_at").unwrap_or_default(),
        ..Default::default()
    };
    for (i, g) in list(entities, "gateways").iter().enumerate() {
        let (Some(name), Some(url)) = (gateway_name(g), s(g, "url")) else {
            warnings.push(format!("gateways[{i}]: no name or url; left out"));
            continue;
        };
        let transport = match s(g, "transport").map(|t| t.to_ascii_uppercase()).as_deref() {
            Some("SSE") => Transport::Sse,
            _ => Transport::StreamableHttp,
        };
        if g.get("auth_type").is_some_and(|t| !t.is_null()) {
            warnings.push(format!(
                "gateway {name}: ContextForge credentials are sealed with its key; re-enter them (PUT /gateways/{{id}})"
            ));
        }
        doc.gateways.push(ExportGateway {
            name,
            url,
            transport,
            description: s(g, "description"),
            tags: tags(g),
            enabled: active(g),
            auth_type: AuthType::None,
            auth_sealed: None,
        });
    }
    let mut mcp_tools = 0;
    for (i, t) in list(entities, "tools").iter().enumerate() {
        let Some(name) = s(t, "name") else {
            warnings.push(format!("tools[{i}]: no name; left out"));
            continue;
        };
        let integration = s(t, "integration_type").unwrap_or_else(|| "REST".into());
        if integration.eq_ignore_ascii_case("MCP") {
            mcp_tools += 1;
            continue;
        }
        let mut spec = Map::new();
        spec.insert("integration_type".into(), json!("REST"));
        spec.insert(
            "input_schema".into(),
            t.get("input_schema")
                .filter(|v| v.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
        );
        if let Some(a) = t
            .get("annotations")
            .filter(|a| a.as_object().is_some_and(|o| !o.is_empty()))
        {
            spec.insert("annotations".into(), a.clone());
        }
        if let Some(u) = s(t, "url") {
            spec.insert("url".into(), json!(u));
        }
        spec.insert(
            "request_type".into(),
            json!(
                s(t, "request_type")
                    .unwrap_or_else(|| "POST".into())
                    .to_uppercase()
            ),
        );
        doc.tools.push(ExportItem {
            original_name: name.clone(),
            name,
            gateway: None,
            uri: None,
            description: s(t, "description"),
            spec,
            tags: tags(t),
            enabled: active(t),
        });
    }
    if mcp_tools > 0 {
        warnings.push(format!(
            "{mcp_tools} MCP tools left out: they are discovered again from their gateways"
        ));
    }
    for (i, r) in list(entities, "resources").iter().enumerate() {
        let (Some(name), Some(uri)) = (s(r, "name"), s(r, "uri")) else {
            warnings.push(format!("resources[{i}]: no name or uri; left out"));
            continue;
        };
        let mut spec = Map::new();
        spec.insert("is_template".into(), json!(uri.contains('{')));
        if let Some(m) = s(r, "mime_type") {
            spec.insert("mime_type".into(), json!(m));
        }
        if let Some(c) = s(r, "content").or_else(|| s(r, "text_content")) {
            spec.insert("content".into(), json!(c));
        }
        doc.resources.push(ExportItem {
            original_name: name.clone(),
            name,
            gateway: None,
            uri: Some(uri),
            description: s(r, "description"),
            spec,
            tags: tags(r),
            enabled: active(r),
        });
    }
    for (i, p) in list(entities, "prompts").iter().enumerate() {
        let Some(name) = s(p, "name") else {
            warnings.push(format!("prompts[{i}]: no name; left out"));
            continue;
        };
        // ContextForge exports arguments as a JSON Schema; MCP wants a list.
        let schema = p.get("input_schema").cloned().unwrap_or(Value::Null);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut args = Vec::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (arg, def) in props {
                let mut a = Map::new();
                a.insert("name".into(), json!(arg));
                if let Some(d) = def
                    .get("description")
                    .and_then(Value::as_str)
                    .filter(|d| !d.is_empty())
                {
                    a.insert("description".into(), json!(d));
                }
                a.insert("required".into(), json!(required.contains(&arg.as_str())));
                args.push(Value::Object(a));
            }
        }
        let mut spec = Map::new();
        if let Some(t) = s(p, "template") {
            spec.insert("template".into(), json!(t));
        }
        spec.insert("arguments".into(), Value::Array(args));
        doc.prompts.push(ExportItem {
            original_name: name.clone(),
            name,
            gateway: None,
            uri: None,
            description: s(p, "description"),
            spec,
            tags: tags(p),
            enabled: active(p),
        });
    }
    for (i, srv) in list(entities, "servers").iter().enumerate() {
        let Some(name) = s(srv, "name") else {
            warnings.push(format!("servers[{i}]: no name; left out"));
            continue;
        };
        let names = |key: &str| -> Vec<String> {
            srv.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        // ContextForge lists its own tool ids (or names); ids unknown here are reported
        // by the import as left out.
        let mut tools = names("tool_ids");
        tools.extend(names("associated_tools"));
        doc.servers.push(ExportServer {
            name,
            description: s(srv, "description"),
            icon: s(srv, "icon"),
            tags: tags(srv),
            enabled: active(srv),
            tools,
            resources: names("associated_resources"),
            prompts: names("associated_prompts"),
        });
    }
    Ok((doc, warnings))
}
