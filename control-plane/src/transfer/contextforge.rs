//! Reads a ContextForge export (`{"version", "exported_at", "entities": {…}}`) into an
//! mcpgw export document. ContextForge exports mostly locally defined entities (REST
//! tools, gateways, servers, prompts, resources). An MCP tool it does list is kept when
//! its gateway is in the same export: it becomes that gateway's item under the name
//! discovery will give it (`{gateway}{separator}{original_name}`), so virtual servers
//! keep it and the gateway's first discovery updates it in place. Other MCP tools are
//! reported as left out. Credentials are sealed with ContextForge's key and cannot be
//! carried over.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{
    ExportDocument, ExportGateway, ExportItem, ExportServer, FORMAT, ImportEntry, ImportError,
};
use crate::model::{
    AuthType, CatalogSpec, HttpMethod, IntegrationType, PromptArgument, PromptSpec, ResourceSpec,
    ToolSpec, Transport,
};

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
    slugify(&s(v, "slug").or_else(|| s(v, "name"))?)
}

fn slugify(raw: &str) -> Option<String> {
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

/// A converted ContextForge export.
pub(super) struct Converted {
    pub(super) document: ExportDocument,
    pub(super) warnings: Vec<String>,
    /// MCP tools that could not be tied to an exported gateway.
    pub(super) left_out: Vec<ImportEntry>,
}

/// The upstream name of a ContextForge MCP tool: `original_name`, or its name without
/// the gateway prefix (ContextForge's separator is configurable, `-` by default).
fn upstream_name(t: &Value, name: &str, gateway_slug: &str) -> String {
    if let Some(o) = s(t, "original_name").filter(|o| !o.is_empty()) {
        return o;
    }
    for sep in ["__", "-", "_", "."] {
        if let Some(rest) = name.strip_prefix(&format!("{gateway_slug}{sep}"))
            && !rest.is_empty()
        {
            return rest.to_owned();
        }
    }
    name.to_owned()
}

/// Converts; `separator` is mcpgw's, for the names of MCP tools.
pub(super) fn convert(body: &Value, separator: &str) -> Result<Converted, ImportError> {
    let entities = body
        .get("entities")
        .ok_or_else(|| ImportError::Format("ContextForge export without entities".into()))?;
    let mut warnings = Vec::new();
    let mut left_out = Vec::new();
    // ContextForge ids and names of tools -> names here, for virtual servers.
    let mut aliases: HashMap<String, String> = HashMap::new();
    // Gateways by ContextForge id, and the names they get here.
    let mut gateway_ids: HashMap<String, String> = HashMap::new();
    let mut gateway_names: HashSet<String> = HashSet::new();
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
        if let Some(id) = s(g, "id") {
            gateway_ids.insert(id, name.clone());
        }
        gateway_names.insert(name.clone());
        doc.gateways.push(ExportGateway {
            name,
            url,
            transport,
            description: s(g, "description"),
            tags: tags(g),
            enabled: active(g),
            auth_type: AuthType::None,
            identity: Default::default(),
            pinning: None,
        });
    }
    for (i, t) in list(entities, "tools").iter().enumerate() {
        let Some(name) = s(t, "name") else {
            warnings.push(format!("tools[{i}]: no name; left out"));
            continue;
        };
        let integration = s(t, "integration_type").unwrap_or_else(|| "REST".into());
        if integration.eq_ignore_ascii_case("MCP") {
            let gateway = s(t, "gateway_id")
                .and_then(|id| gateway_ids.get(&id).cloned())
                .or_else(|| {
                    ["gateway_slug", "gateway_name", "gateway"]
                        .iter()
                        .filter_map(|k| s(t, k).as_deref().and_then(slugify))
                        .find(|g| gateway_names.contains(g))
                });
            let Some(gateway) = gateway else {
                left_out.push(ImportEntry {
                    kind: "tool".into(),
                    name,
                    action: "skip".into(),
                    new_name: None,
                    detail: Some(
                        "MCP tool whose gateway is not in this export: left out (it is discovered when its gateway is registered; virtual servers that use it lose it)".into(),
                    ),
                });
                continue;
            };
            let original = upstream_name(t, &name, &gateway);
            let here = format!("{gateway}{separator}{original}");
            let mut spec = ToolSpec::default();
            if let Some(schema) = t.get("input_schema").and_then(Value::as_object) {
                spec.input_schema = schema.clone();
            }
            if let Some(id) = s(t, "id") {
                aliases.insert(id, here.clone());
            }
            aliases.insert(name, here.clone());
            doc.tools.push(ExportItem {
                name: here,
                original_name: original,
                gateway: Some(gateway),
                uri: None,
                description: s(t, "description"),
                spec: spec.to_json(),
                tags: tags(t),
                enabled: active(t),
            });
            continue;
        }
        if let Some(id) = s(t, "id") {
            aliases.insert(id, name.clone());
        }
        let method = s(t, "request_type").unwrap_or_else(|| "POST".into());
        let Ok(method) = HttpMethod::parse(&method) else {
            warnings.push(format!(
                "tool {name}: request_type {method:?} is not GET, POST, PUT, PATCH or DELETE; left out"
            ));
            continue;
        };
        let spec = ToolSpec {
            integration_type: IntegrationType::Rest,
            input_schema: t
                .get("input_schema")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_else(|| ToolSpec::default().input_schema),
            annotations: t
                .get("annotations")
                .filter(|a| a.as_object().is_some_and(|o| !o.is_empty()))
                .cloned(),
            url: s(t, "url"),
            request_type: Some(method),
            ..ToolSpec::default()
        };
        doc.tools.push(ExportItem {
            original_name: name.clone(),
            name,
            gateway: None,
            uri: None,
            description: s(t, "description"),
            spec: spec.to_json(),
            tags: tags(t),
            enabled: active(t),
        });
    }
    for (i, r) in list(entities, "resources").iter().enumerate() {
        let (Some(name), Some(uri)) = (s(r, "name"), s(r, "uri")) else {
            warnings.push(format!("resources[{i}]: no name or uri; left out"));
            continue;
        };
        let spec = ResourceSpec {
            is_template: uri.contains('{'),
            mime_type: s(r, "mime_type"),
            content: s(r, "content").or_else(|| s(r, "text_content")),
            ..ResourceSpec::default()
        };
        doc.resources.push(ExportItem {
            original_name: name.clone(),
            name,
            gateway: None,
            uri: Some(uri),
            description: s(r, "description"),
            spec: spec.to_json(),
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
                args.push(PromptArgument {
                    name: arg.clone(),
                    title: None,
                    description: def
                        .get("description")
                        .and_then(Value::as_str)
                        .filter(|d| !d.is_empty())
                        .map(str::to_owned),
                    required: Some(required.contains(&arg.as_str())),
                });
            }
        }
        let spec = PromptSpec {
            template: s(p, "template"),
            arguments: Some(args),
            ..PromptSpec::default()
        };
        doc.prompts.push(ExportItem {
            original_name: name.clone(),
            name,
            gateway: None,
            uri: None,
            description: s(p, "description"),
            spec: spec.to_json(),
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
        // ContextForge lists its own tool ids (or names): mapped to names here where the
        // export has the tool; the import reports the others as left out.
        let mut tools = names("tool_ids");
        tools.extend(names("associated_tools"));
        let tools = tools
            .into_iter()
            .map(|t| aliases.get(&t).cloned().unwrap_or(t))
            .collect();
        doc.servers.push(ExportServer {
            name,
            id: None,
            description: s(srv, "description"),
            icon: s(srv, "icon"),
            tags: tags(srv),
            enabled: active(srv),
            naming: crate::model::Naming::Prefixed,
            allowed_origins: Vec::new(),
            tools,
            resources: names("associated_resources"),
            prompts: names("associated_prompts"),
        });
    }
    Ok(Converted {
        document: doc,
        warnings,
        left_out,
    })
}
