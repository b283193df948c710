//! The passthrough path in standalone mode. A static configuration sends whatever the
//! filter lets through unrouted to its first cluster (the default route `/`), and a call
//! the policy's `tool_routes` routes to the cluster its route header names. A control
//! plane does that with `--edge-passthrough <gateway>` (its routes send `/mcp` to that
//! gateway) and gateways named in `tool_routes` (it resolves each to its cluster). So:
//! the first cluster becomes the passthrough gateway, and every cluster a static route
//! names on the route header a gateway; `tool_routes` then names the gateways.
//!
//! A cluster some snapshot upstream already names is that upstream's gateway (its key);
//! any other becomes a gateway named after the cluster, at `/mcp` of its address (the
//! client's path, which the static route keeps: the cases post to `/mcp`).

use std::collections::BTreeMap;

use anyhow::{anyhow, ensure};
use serde_json::{Map, Value};

use super::GatewayPlan;
use crate::envoy::EnvoyConfig;

/// The route header's default (the policy's `route_header`).
const DEFAULT_ROUTE_HEADER: &str = "x-mcpgw-cluster";

/// What the passthrough path needs in the registry.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Passthrough {
    /// The gateway `/mcp` goes to (`--edge-passthrough`).
    pub gateway: String,
    /// Gateways to register for clusters no snapshot upstream names.
    pub gateways: Vec<GatewayPlan>,
}

/// The passthrough gateway of `config` (whose filter configuration is `doc`), the gateways
/// to add for the clusters it reaches, and `policy`'s `tool_routes` pointed at gateways.
/// `planned` are the gateways of the snapshot's upstreams (named by key).
pub(super) fn plan(
    config: &EnvoyConfig,
    doc: &Map<String, Value>,
    planned: &[GatewayPlan],
    policy: &mut Value,
) -> anyhow::Result<Passthrough> {
    // Cluster → the upstream key whose gateway reaches it.
    let mut by_cluster: BTreeMap<String, String> = BTreeMap::new();
    for (key, up) in doc
        .get("upstreams")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(cluster) = up["cluster"].as_str() {
            by_cluster
                .entry(cluster.to_owned())
                .or_insert_with(|| key.clone());
        }
    }
    let route_header = policy["route_header"]
        .as_str()
        .unwrap_or(DEFAULT_ROUTE_HEADER)
        .to_owned();
    let first = config
        .clusters
        .first()
        .ok_or_else(|| anyhow!("the Envoy config has no cluster"))?;
    let mut reached = vec![first.name.clone()];
    for route in &config.routes {
        let Some((header, value)) = &route.header else {
            continue;
        };
        ensure!(
            header.eq_ignore_ascii_case(&route_header) && *value == route.cluster,
            "static route {route:?}: a control plane routes on its route header {route_header:?} to the cluster it names, nothing else"
        );
        if !reached.contains(&route.cluster) {
            reached.push(route.cluster.clone());
        }
    }
    let mut gateways = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for cluster in &reached {
        let name = match by_cluster.get(cluster) {
            Some(key) => key.clone(),
            None => {
                ensure!(
                    !planned.iter().any(|g| g.name == *cluster),
                    "cluster {cluster:?} is named like an upstream of another cluster"
                );
                let c = config
                    .clusters
                    .iter()
                    .find(|c| c.name == *cluster)
                    .ok_or_else(|| anyhow!("static route to {cluster:?}, which is no cluster"))?;
                ensure!(
                    c.headers.is_none(),
                    "cluster {cluster:?} sets credentials: upstream credentials are gateway settings"
                );
                gateways.push(GatewayPlan {
                    name: cluster.clone(),
                    url: format!("http://{}/mcp", c.addr),
                });
                cluster.clone()
            }
        };
        names.insert(cluster.clone(), name);
    }
    // `tool_routes` name clusters; the control plane resolves gateway names to theirs.
    if let Some(routes) = policy.get_mut("tool_routes").and_then(Value::as_object_mut) {
        for (tool, target) in routes.iter_mut() {
            let cluster = target
                .as_str()
                .ok_or_else(|| anyhow!("policy.tool_routes.{tool} is not a string"))?;
            let name = names.get(cluster).ok_or_else(|| {
                anyhow!("policy.tool_routes.{tool}: no static route reaches cluster {cluster:?}")
            })?;
            *target = Value::String(name.clone());
        }
    }
    Ok(Passthrough {
        gateway: names[&first.name].clone(),
        gateways,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(snapshot: &Value) -> EnvoyConfig {
        EnvoyConfig::with_filter(&snapshot.to_string(), ([127, 0, 0, 1], 7).into())
            .cluster("second", ([127, 0, 0, 1], 8).into())
            .route_on_header("x-mcpgw-cluster", "second", "second")
    }

    #[test]
    fn the_first_cluster_is_the_passthrough_gateway_and_tool_routes_name_gateways() {
        let snapshot = json!({"policy": {"tool_routes": {"whoami": "second"}}});
        let mut policy = snapshot["policy"].clone();
        let doc = snapshot.as_object().unwrap();
        let p = plan(&config(&snapshot), doc, &[], &mut policy).unwrap();
        assert_eq!(p.gateway, "upstream");
        assert_eq!(
            p.gateways,
            [
                GatewayPlan {
                    name: "upstream".into(),
                    url: "http://127.0.0.1:7/mcp".into()
                },
                GatewayPlan {
                    name: "second".into(),
                    url: "http://127.0.0.1:8/mcp".into()
                }
            ]
        );
        assert_eq!(policy["tool_routes"]["whoami"], "second");
    }

    #[test]
    fn clusters_of_snapshot_upstreams_are_their_gateways() {
        let snapshot = json!({
            "policy": {"tool_routes": {"echo": "second"}},
            "upstreams": {"primary": {"cluster": "upstream"}, "two": {"cluster": "second"}}
        });
        let mut policy = snapshot["policy"].clone();
        let planned = [GatewayPlan {
            name: "primary".into(),
            url: "http://127.0.0.1:7/mcp".into(),
        }];
        let p = plan(
            &config(&snapshot),
            snapshot.as_object().unwrap(),
            &planned,
            &mut policy,
        )
        .unwrap();
        assert_eq!(p.gateway, "primary");
        assert!(p.gateways.is_empty(), "{:?}", p.gateways);
        assert_eq!(policy["tool_routes"]["echo"], "two");
    }

    #[test]
    fn routes_a_control_plane_cannot_make_are_refused() {
        let snapshot = json!({"policy": {"tool_routes": {"whoami": "elsewhere"}}});
        let mut policy = snapshot["policy"].clone();
        let doc = snapshot.as_object().unwrap();
        let err = plan(&config(&snapshot), doc, &[], &mut policy).unwrap_err();
        assert!(
            format!("{err}").contains("no static route reaches"),
            "{err}"
        );
        let other_header = EnvoyConfig::with_filter("{}", ([127, 0, 0, 1], 7).into())
            .cluster("second", ([127, 0, 0, 1], 8).into())
            .route_on_header("x-other", "second", "second");
        let err = plan(&other_header, &Map::new(), &[], &mut json!({})).unwrap_err();
        assert!(format!("{err}").contains("route header"), "{err}");
    }
}
