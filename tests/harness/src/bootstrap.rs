//! Envoy bootstraps, as JSON documents (which Envoy reads as YAML too): a static one (admin
//! and one HTTP listener on ephemeral ports, HTTP filters before the router, routes, static
//! clusters, the `stats_tags` of docs/filter.md) and ADS ones that know only where the
//! control plane listens.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::artifacts::Artifacts;

/// Name (and stat prefix) of the static bootstrap's HTTP listener.
pub const LISTENER: &str = "mcp";

/// A bootstrap with one HTTP listener and static clusters; admin and the listener on
/// ephemeral ports of 127.0.0.1.
#[derive(Debug, Clone, Default)]
pub struct StaticBootstrap {
    /// HTTP filters, in order; the router follows them.
    pub http_filters: Vec<Value>,
    /// Routes of the listener's one virtual host (every domain), matched in order.
    pub routes: Vec<Value>,
    /// Clusters ([`static_cluster`]).
    pub clusters: Vec<Value>,
    /// The listener's `per_connection_buffer_limit_bytes`; `None` keeps Envoy's 1 MiB.
    pub buffer_limit: Option<u32>,
    /// The connection manager's `stream_idle_timeout`; `None` keeps Envoy's 5 minutes.
    pub stream_idle_timeout: Option<String>,
}

impl StaticBootstrap {
    /// The bootstrap document.
    pub fn to_json(&self) -> Value {
        let mut http_filters = self.http_filters.clone();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let mut manager = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": LISTENER,
            "route_config": {
                "name": LISTENER,
                "virtual_hosts": [{"name": LISTENER, "domains": ["*"], "routes": self.routes}]
            },
            "http_filters": http_filters
        });
        if let Some(timeout) = &self.stream_idle_timeout {
            manager["stream_idle_timeout"] = json!(timeout);
        }
        let mut listener = json!({
            "name": LISTENER,
            "address": socket(([127, 0, 0, 1], 0).into()),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": manager
            }]}]
        });
        if let Some(limit) = self.buffer_limit {
            listener["per_connection_buffer_limit_bytes"] = json!(limit);
        }
        json!({
            "admin": {"address": socket(([127, 0, 0, 1], 0).into())},
            "stats_config": {"stats_tags": stats_tags()},
            "static_resources": {"listeners": [listener], "clusters": self.clusters}
        })
    }
}

/// The `stats_tags` from docs/filter.md that turn the filter's stat names into labels.
pub fn stats_tags() -> Value {
    json!([
        {"tag_name": "mcp_method", "regex": "(_mcp_method=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_tool", "regex": "(_mcp_tool=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_reason", "regex": "(_mcp_reason=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_plugin", "regex": "(_mcp_plugin=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_hook", "regex": "(_mcp_hook=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_effect", "regex": "(_mcp_effect=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_limit", "regex": "(_mcp_limit=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_limit_kind", "regex": "(_mcp_limit_kind=\\.=(.*?);\\.;)"},
        {"tag_name": "mcp_outcome", "regex": "(_mcp_outcome=\\.=(.*?);\\.;)"}
    ])
}

/// A wasm HTTP filter entry as docs/filter.md shows it: `name` is also its root id and VM
/// id, `configuration` the plugin configuration text, `module` the `.wasm` file.
pub fn wasm_filter(name: &str, configuration: &str, module: &Path) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                },
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": module.display().to_string()}}
                }
            }
        }
    })
}

/// A `STATIC` cluster `name` with one endpoint, `addr`.
pub fn static_cluster(name: &str, addr: SocketAddr, connect_timeout: &str) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(addr)}}]}]
        }
    })
}

/// A `socket_address`.
pub fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// A minimal ADS bootstrap: node `node_id` of cluster `node_cluster`, admin on an ephemeral
/// port, clusters and listeners over ADS of `api_type` (`GRPC`, `DELTA_GRPC`) from `xds`
/// (plaintext HTTP/2), nothing static but the xDS cluster.
pub fn ads(node_id: &str, node_cluster: &str, xds: SocketAddr, api_type: &str) -> Value {
    json!({
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": {"address": socket(([127, 0, 0, 1], 0).into())},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [{
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": socket(xds)
            }}]}]}
        }]}
    })
}

/// The node id in `envoy/ads-bootstrap.yaml`.
pub const COMMITTED_NODE: &str = "mcpgw-envoy-0";

/// The committed `envoy/ads-bootstrap.yaml` (what `make run` and the docs use) as node
/// `node_id` over ADS of `api_type` (`GRPC`, `DELTA_GRPC`) from `xds`, its admin on an
/// ephemeral port. Fails when the file no longer has what is substituted.
pub fn committed_ads(
    artifacts: &Artifacts,
    xds: SocketAddr,
    node_id: &str,
    api_type: &str,
) -> anyhow::Result<String> {
    let path = artifacts.repo_file("envoy/ads-bootstrap.yaml")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (xds_port, admin_port, node, api) = (
        "port_value: 18000 }",
        "port_value: 9901 }",
        format!("id: {COMMITTED_NODE} "),
        "api_type: GRPC",
    );
    ensure!(
        [xds_port, admin_port, &node, api, "address: 127.0.0.1"]
            .iter()
            .all(|s| text.contains(s)),
        "envoy/ads-bootstrap.yaml no longer has the ports, node id and API type the harness substitutes"
    );
    Ok(text
        .replace(xds_port, &format!("port_value: {} }}", xds.port()))
        .replace(admin_port, "port_value: 0 }")
        .replace(&node, &format!("id: {node_id} "))
        .replace(api, &format!("api_type: {api_type}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_reaches_the_filter_unchanged() {
        let config = r#"{"a":"it's \"quoted\""}"#;
        let filter = wasm_filter("x", config, Path::new("/x.wasm"));
        let parsed: Value = serde_json::from_str(&filter.to_string()).unwrap();
        let inner = &parsed["typed_config"]["config"];
        assert_eq!(inner["configuration"]["value"], config);
        assert_eq!(inner["vm_config"]["code"]["local"]["filename"], "/x.wasm");
        assert_eq!(inner["root_id"], "x");
    }

    #[test]
    fn the_static_listener_ends_with_the_router_and_keeps_envoy_defaults_unless_asked() {
        let up = SocketAddr::from(([127, 0, 0, 1], 9));
        let plain = StaticBootstrap {
            http_filters: vec![json!({"name": "first"})],
            routes: vec![json!({"match": {"prefix": "/"}, "route": {"cluster": "c"}})],
            clusters: vec![static_cluster("c", up, "1s")],
            ..StaticBootstrap::default()
        };
        let doc = plain.to_json();
        let listener = &doc["static_resources"]["listeners"][0];
        let manager = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        let filters = manager["http_filters"].as_array().unwrap();
        assert_eq!(filters[0]["name"], "first");
        assert_eq!(filters[1]["name"], "envoy.filters.http.router");
        assert_eq!(listener["name"], LISTENER);
        assert!(listener.get("per_connection_buffer_limit_bytes").is_none());
        assert!(manager.get("stream_idle_timeout").is_none());
        let cluster = &doc["static_resources"]["clusters"][0];
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            9
        );

        let tuned = StaticBootstrap {
            buffer_limit: Some(7),
            stream_idle_timeout: Some("0s".into()),
            ..plain
        }
        .to_json();
        let listener = &tuned["static_resources"]["listeners"][0];
        assert_eq!(listener["per_connection_buffer_limit_bytes"], 7);
        assert_eq!(
            listener["filter_chains"][0]["filters"][0]["typed_config"]["stream_idle_timeout"],
            "0s"
        );
    }

    #[test]
    fn the_committed_ads_bootstrap_is_pointed_at_the_control_plane() {
        let a = Artifacts::from_env();
        let xds = SocketAddr::from(([127, 0, 0, 1], 4321));
        let text = committed_ads(&a, xds, "edge-7", "DELTA_GRPC").unwrap();
        assert!(text.contains("port_value: 4321 }"), "{text}");
        assert!(text.contains("port_value: 0 }"), "{text}");
        assert!(text.contains("id: edge-7 "), "{text}");
        assert!(text.contains("api_type: DELTA_GRPC"), "{text}");
        assert!(
            !text.contains("port_value: 18000") && !text.contains("port_value: 9901"),
            "{text}"
        );
    }
}
