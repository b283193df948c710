//! The snapshot's guardrail `plugins` in standalone mode: each one `PUT /plugins/{name}`,
//! the registry's plugin being the snapshot's entry as it is, with two differences a
//! control plane makes:
//!
//! - an `external` plugin names its gRPC service by `target` (`host:port`: the control
//!   plane generates the HTTP/2 cluster), where a static bootstrap names a cluster it has
//!   (`cluster`, one of the harness's `grpc_clusters`): the cluster's address becomes the
//!   target;
//! - the registry lists plugins by name, and plugins of equal `priority` run in the order
//!   listed: when the snapshot's order of equal priorities is not the order of their
//!   names, each plugin's `priority` becomes its rank in the snapshot's run order (the
//!   same order, written out).

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::{Map, Value};

use super::Standalone;
use crate::envoy::EnvoyConfig;

/// The registry's plugins for `doc`'s `plugins` (in `config`, whose gRPC clusters they may
/// name). Every gRPC cluster must be an external plugin's.
pub(super) fn plan(config: &EnvoyConfig, doc: &Map<String, Value>) -> anyhow::Result<Vec<Value>> {
    let listed = match doc.get("plugins") {
        None => &Vec::new(),
        Some(Value::Array(listed)) => listed,
        Some(_) => bail!("`plugins` is not an array"),
    };
    let mut plugins = Vec::with_capacity(listed.len());
    let mut used = Vec::new();
    for p in listed {
        let mut p = p.clone();
        let name = p["name"]
            .as_str()
            .ok_or_else(|| anyhow!("a plugin without a name: {p}"))?
            .to_owned();
        if let Some(external) = p.get_mut("external").and_then(Value::as_object_mut)
            && let Some(cluster) = external.remove("cluster")
        {
            let cluster = cluster
                .as_str()
                .ok_or_else(|| anyhow!("plugin {name}: external.cluster is not a string"))?;
            let c = config
                .grpc_clusters
                .iter()
                .find(|c| c.name == cluster)
                .with_context(|| {
                    format!("plugin {name}: external.cluster {cluster:?} is no gRPC cluster of the config")
                })?;
            external.insert("target".into(), Value::String(c.addr.to_string()));
            used.push(cluster.to_owned());
        }
        plugins.push(p);
    }
    for c in &config.grpc_clusters {
        ensure!(
            used.contains(&c.name),
            "static gRPC cluster {:?} is no external plugin's: not a registry entry",
            c.name
        );
    }
    let priority = |p: &Value| p["priority"].as_i64().unwrap_or(0);
    let name = |p: &Value| p["name"].as_str().unwrap_or_default().to_owned();
    let mut run: Vec<usize> = (0..plugins.len()).collect();
    run.sort_by_key(|&i| priority(&plugins[i]));
    let mut registry = run.clone();
    registry.sort_by_key(|&i| (priority(&plugins[i]), name(&plugins[i])));
    if run != registry {
        for (rank, i) in run.into_iter().enumerate() {
            plugins[i]["priority"] = Value::from(rank);
        }
    }
    Ok(plugins)
}

impl Standalone {
    /// `PUT /plugins/{name}` for each of `plugins`.
    pub(super) async fn put_plugins(&mut self, plugins: &[Value]) -> anyhow::Result<()> {
        for p in plugins {
            let name = p["name"].as_str().unwrap_or_default();
            let req = self
                .admin
                .put(format!("{}/plugins/{name}", self.api))
                .json(p);
            self.call(req, 201, &format!("PUT /plugins/{name}")).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(plugins: Value) -> Map<String, Value> {
        json!({ "plugins": plugins }).as_object().unwrap().clone()
    }

    #[test]
    fn an_external_plugins_cluster_becomes_its_target() {
        let config = EnvoyConfig::with_filter("{}", ([127, 0, 0, 1], 7).into())
            .grpc_cluster("guard", ([127, 0, 0, 1], 9).into());
        let plugins = plan(
            &config,
            &doc(json!([{"name": "ext", "external": {"cluster": "guard", "timeout_ms": 300}}])),
        )
        .unwrap();
        assert_eq!(
            plugins,
            [json!({"name": "ext", "external": {"target": "127.0.0.1:9", "timeout_ms": 300}})]
        );
        let err = plan(&config, &doc(json!([]))).unwrap_err();
        assert!(format!("{err}").contains("no external plugin's"), "{err}");
        let err = plan(
            &config,
            &doc(json!([{"name": "x", "external": {"cluster": "nope"}}])),
        )
        .unwrap_err();
        assert!(format!("{err}").contains("no gRPC cluster"), "{err}");
    }

    #[test]
    fn the_run_order_survives_the_registrys_order_by_name() {
        let config = EnvoyConfig::with_filter("{}", ([127, 0, 0, 1], 7).into());
        let in_name_order =
            json!([{"name": "a", "pii": {}}, {"name": "b", "priority": 5, "pii": {}}]);
        assert_eq!(
            plan(&config, &doc(in_name_order.clone())).unwrap(),
            in_name_order.as_array().unwrap().clone()
        );
        let plugins = plan(
            &config,
            &doc(
                json!([{"name": "mask", "pii": {}}, {"name": "deny", "pii": {}},
                         {"name": "late", "priority": 9, "pii": {}}]),
            ),
        )
        .unwrap();
        let ranks: Vec<(&str, i64)> = plugins
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["priority"].as_i64().unwrap()))
            .collect();
        assert_eq!(ranks, [("mask", 0), ("deny", 1), ("late", 2)]);
    }
}
