//! One Envoy per variant: its bootstrap, and the process (the shared harness's, started
//! on ephemeral ports, killed on drop).

use crate::catalog;
use crate::variant::Variant;
use anyhow::{Context, bail};
use mcpgw_harness::bootstrap::{StaticBootstrap, static_cluster, wasm_filter};
use mcpgw_harness::{Launch, Workdir};
use serde_json::{Value, json};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use mcpgw_harness::envoy::version;

/// Cluster the tool route points at (same upstream; a distinct name proves the route was taken).
pub const TOOLS_CLUSTER: &str = "bench_tools";
/// Cluster name of the default route.
pub const DEFAULT_CLUSTER: &str = "bench_upstream";
/// Tool the benchmark calls and routes.
pub const ROUTED_TOOL: &str = "echo";

/// Paths of the wasm modules the variants load.
#[derive(Debug, Clone)]
pub struct Modules {
    /// The mcpgw filter.
    pub mcpgw: PathBuf,
    /// The floor filter.
    pub floor: PathBuf,
}

/// The mcpgw filter's configuration in the `mcpgw` variant: defaults (MCP validation,
/// parsing with early termination, metrics) plus one tool route.
pub fn mcpgw_config() -> String {
    format!(r#"{{"policy":{{"tool_routes":{{"{ROUTED_TOOL}":"{TOOLS_CLUSTER}"}}}}}}"#)
}

/// The Envoy bootstrap for `variant` in front of `upstream`.
///
/// Every variant that routes by request content gets a catch-all route answering 404, so a
/// filter that fails to route shows up as errors instead of silently passing.
pub fn bootstrap(variant: Variant, upstream: SocketAddr, modules: &Modules) -> Value {
    let to_default = json!({"match": {"prefix": "/"}, "route": {"cluster": DEFAULT_CLUSTER}});
    let not_routed = json!({
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": "not routed by the filter"}}
    });
    // The filter sets the route header to the chosen cluster; Envoy routes on it.
    let header_routed = vec![
        json!({
            "match": {"prefix": "/", "headers": [{"name": "x-mcpgw-cluster", "present_match": true}]},
            "route": {"cluster_header": "x-mcpgw-cluster"}
        }),
        not_routed.clone(),
    ];
    let mcpgw = |config: &str| wasm_filter("mcpgw", config, &modules.mcpgw);
    let (filters, routes) = match variant {
        Variant::Plain | Variant::PlainList | Variant::PlainCall | Variant::PlainCallModern => {
            (vec![], vec![to_default])
        }
        Variant::Native => (
            vec![json!({
                "name": "envoy.filters.http.mcp",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp",
                    "traffic_mode": "REJECT_NO_MCP",
                    "clear_route_cache": true,
                    "early_terminate_when_routable": true
                }
            })],
            vec![
                json!({
                    "match": {"prefix": "/", "dynamic_metadata": [{
                        "filter": "envoy.filters.http.mcp",
                        "path": [{"key": "params"}, {"key": "name"}],
                        "value": {"string_match": {"exact": ROUTED_TOOL}}
                    }]},
                    "route": {"cluster": TOOLS_CLUSTER}
                }),
                not_routed,
            ],
        ),
        Variant::Floor => (
            vec![wasm_filter("floor", "{}", &modules.floor)],
            vec![
                json!({
                    "match": {"prefix": "/", "headers": [{"name": "x-bench-floor", "present_match": true}]},
                    "route": {"cluster": TOOLS_CLUSTER}
                }),
                not_routed,
            ],
        ),
        Variant::Mcpgw => (vec![mcpgw(&mcpgw_config())], header_routed),
        // A list is not a routed tool: it takes the default route, and the filter's part
        // is reading the page on its way back (its counters prove it saw every request).
        Variant::McpgwList => (vec![mcpgw(&mcpgw_config())], vec![to_default]),
        // Calls the virtual server routes go to the tools cluster (a distinct name, as for
        // `mcpgw`, proves the filter chose it); lists never leave Envoy.
        Variant::EdgeList | Variant::EdgeCall => (
            vec![mcpgw(&catalog::snapshot(TOOLS_CLUSTER))],
            header_routed,
        ),
        // The same catalog under local limits: the cost of the limits stage.
        Variant::LimitLocal => (
            vec![mcpgw(&catalog::limited_snapshot(TOOLS_CLUSTER))],
            header_routed,
        ),
        // Its two limits one at a time: what each costs.
        Variant::LimitLocalRate | Variant::LimitLocalFlight => {
            let limits = if variant == Variant::LimitLocalRate {
                catalog::LOCAL_RATE
            } else {
                catalog::LOCAL_FLIGHT
            };
            (
                vec![mcpgw(&catalog::snapshot_under(TOOLS_CLUSTER, limits))],
                header_routed,
            )
        }
        // The same catalog, its upstream speaking 2026-07-28: a call of that era goes to it
        // stateless (a snapshot of its own, so older filters still load the others').
        Variant::EdgeCallModern => (
            vec![mcpgw(&catalog::modern_snapshot(TOOLS_CLUSTER))],
            header_routed,
        ),
        // Plugins on the same catalog: what each costs on its own.
        Variant::EdgeCallPii | Variant::EdgeCallRegex => {
            let plugin = if variant == Variant::EdgeCallPii {
                crate::policy_set::pii()
            } else {
                crate::policy_set::regex()
            };
            let config =
                crate::policy_set::with_policy(&catalog::snapshot(TOOLS_CLUSTER), &[plugin], false)
                    .unwrap_or_default();
            (vec![mcpgw(&config)], header_routed)
        }
        // `jwt_authn` first, as the generated listener has it. Without the fixture (not
        // prepared) the filter's configuration is empty and every call fails the probe.
        Variant::EdgeCallAuth
        | Variant::EdgeCallAuthFresh
        | Variant::EdgeCallFull
        | Variant::EdgeCallJwt
        | Variant::EdgeCallAuthOneRule => {
            let (jwks, config) = match crate::identity::fixture() {
                Some(f) => (
                    f.jwks.clone(),
                    match variant {
                        // The same catalog, no `auth`: `jwt_authn` alone.
                        Variant::EdgeCallJwt => catalog::snapshot(TOOLS_CLUSTER),
                        Variant::EdgeCallAuthOneRule => crate::identity::snapshot_with(
                            TOOLS_CLUSTER,
                            &f.jwks,
                            crate::identity::one_rule(),
                        )
                        .unwrap_or_default(),
                        _ => crate::identity::snapshot(TOOLS_CLUSTER, &f.jwks).unwrap_or_default(),
                    },
                ),
                None => (r#"{"keys":[]}"#.to_owned(), String::new()),
            };
            let config = if variant == Variant::EdgeCallFull && !config.is_empty() {
                crate::policy_set::with_policy(
                    &config,
                    &[crate::policy_set::pii(), crate::policy_set::regex()],
                    true,
                )
                .unwrap_or_default()
            } else {
                config
            };
            (
                vec![crate::identity::jwt_authn(&jwks), mcpgw(&config)],
                header_routed,
            )
        }
        // What the generated listener runs without issuers: `jwt_authn` with no provider
        // and no rule (its configuration comes over ECDS), then the filter.
        Variant::EdgeCallEmptyJwt => (
            vec![
                crate::identity::empty_jwt_authn(),
                mcpgw(&catalog::snapshot(TOOLS_CLUSTER)),
            ],
            header_routed,
        ),
        // The token on the request, nothing reading it.
        Variant::EdgeCallToken => (
            vec![mcpgw(&catalog::snapshot(TOOLS_CLUSTER))],
            header_routed,
        ),
    };
    let mut doc = StaticBootstrap {
        http_filters: filters,
        routes,
        clusters: vec![
            static_cluster(DEFAULT_CLUSTER, upstream, "1s"),
            static_cluster(TOOLS_CLUSTER, upstream, "1s"),
        ],
        ..StaticBootstrap::default()
    }
    .to_json();
    if variant.runs_jwt_authn() || variant == Variant::EdgeCallEmptyJwt {
        crate::identity::strip_payload_header(&mut doc);
    }
    doc
}

/// A variant's running Envoy, its listener bound; killed (and its work dir removed) on
/// drop.
pub struct Envoy {
    envoy: mcpgw_harness::Envoy,
    listener: SocketAddr,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (`--concurrency 1`), pinned to `cpu` with `taskset` if
    /// given and under `nice -n nice` if not 0, and waits until it is ready and its
    /// listener is bound.
    pub async fn start(
        envoy: &Path,
        name: &str,
        bootstrap: &str,
        cpu: Option<usize>,
        nice: i32,
    ) -> anyhow::Result<Envoy> {
        // nice and taskset exec what follows, so the pid stays Envoy's.
        let mut argv: Vec<OsString> = Vec::new();
        if nice != 0 {
            argv.extend(["nice".into(), "-n".into(), nice.to_string().into()]);
        }
        if let Some(cpu) = cpu {
            argv.extend(["taskset".into(), "-c".into(), cpu.to_string().into()]);
        }
        Envoy::start_with(Launch::new(envoy).wrapper(argv), name, bootstrap).await
    }

    /// Starts Envoy with `bootstrap` (`--concurrency 1`) as the last arguments of the
    /// command `launcher` returns for Envoy's work dir (empty: Envoy itself), and waits
    /// until it is ready and its listener is bound. The launcher must exec Envoy, so that
    /// [`Envoy::pid`] is the process that runs it.
    pub async fn start_under(
        envoy: &Path,
        name: &str,
        bootstrap: &str,
        launcher: impl FnOnce(&Path) -> Vec<OsString>,
    ) -> anyhow::Result<Envoy> {
        let dir = Workdir::new(name)?;
        let argv = launcher(dir.path());
        Envoy::start_with(Launch::new(envoy).wrapper(argv).dir(dir), name, bootstrap).await
    }

    /// Envoy once ready, and its first listener: the static one of [`bootstrap`], or the
    /// first a control plane sent.
    async fn start_with(launch: Launch, name: &str, bootstrap: &str) -> anyhow::Result<Envoy> {
        let launch = launch.name(name).log_level("warning");
        let envoy = mcpgw_harness::Envoy::start(launch, bootstrap)
            .await
            .with_context(|| format!("Envoy for `{name}` did not come up"))?;
        let listener = match envoy.listeners().await?.first() {
            Some((_, addr)) => *addr,
            None => bail!(
                "Envoy for `{name}` is ready without a bound listener; its log:\n{}",
                envoy.log_tail(30)
            ),
        };
        Ok(Envoy { envoy, listener })
    }

    /// The MCP listener.
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.envoy.pid()
    }

    /// Envoy's work dir (its bootstrap and log; removed on drop).
    pub fn dir(&self) -> &Path {
        self.envoy.dir()
    }

    /// Counter values whose stat name contains `filter`, summed.
    pub async fn counter_sum(&self, filter: &str) -> anyhow::Result<u64> {
        self.envoy.counter_sum(filter).await
    }

    /// The last lines of Envoy's log, for error messages.
    pub fn log_tail(&self) -> String {
        self.envoy.log_tail(30)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The plugin configuration of the bootstrap's first HTTP filter.
    fn configuration(doc: &Value) -> &str {
        doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
    }

    #[test]
    fn mcpgw_config_routes_the_benchmark_tool() {
        let doc: serde_json::Value = serde_json::from_str(&mcpgw_config()).unwrap();
        assert_eq!(doc["policy"]["tool_routes"][ROUTED_TOOL], TOOLS_CLUSTER);
    }

    #[test]
    fn content_routed_variants_have_a_not_routed_fallback() {
        let modules = Modules {
            mcpgw: "/m.wasm".into(),
            floor: "/f.wasm".into(),
        };
        let up = SocketAddr::from(([127, 0, 0, 1], 9));
        for v in [Variant::Plain, Variant::PlainList, Variant::PlainCall] {
            assert!(
                !bootstrap(v, up, &modules)
                    .to_string()
                    .contains("not routed"),
                "{v}"
            );
            assert!(
                !bootstrap(v, up, &modules).to_string().contains("wasm"),
                "{v}"
            );
        }
        for v in [
            Variant::Native,
            Variant::Floor,
            Variant::Mcpgw,
            Variant::EdgeList,
            Variant::EdgeCall,
        ] {
            let json = bootstrap(v, up, &modules).to_string();
            assert!(json.contains("not routed by the filter"), "{v}");
            assert!(json.contains(r#""port_value":9"#), "{v}");
        }
        assert!(
            bootstrap(Variant::Mcpgw, up, &modules)
                .to_string()
                .contains(r#""filename":"/m.wasm""#)
        );
    }

    #[test]
    fn edge_variants_load_the_catalog_snapshot() {
        let modules = Modules {
            mcpgw: "/m.wasm".into(),
            floor: "/f.wasm".into(),
        };
        let up = SocketAddr::from(([127, 0, 0, 1], 9));
        let limited_doc = bootstrap(Variant::LimitLocal, up, &modules);
        let limited = configuration(&limited_doc);
        assert_eq!(limited, catalog::limited_snapshot(TOOLS_CLUSTER));
        let parsed: serde_json::Value = serde_json::from_str(limited).unwrap();
        assert_eq!(
            parsed["limits"]["default"]["rates"][0]["name"], "bench",
            "{limited}"
        );
        // Its two limits one at a time, each the same as in `limit-local`.
        for (v, rates, concurrency) in [
            (Variant::LimitLocalRate, 1, 0),
            (Variant::LimitLocalFlight, 0, 1),
        ] {
            let doc = bootstrap(v, up, &modules);
            let parsed: serde_json::Value = serde_json::from_str(configuration(&doc)).unwrap();
            let limits = &parsed["limits"]["default"];
            assert_eq!(limits["rates"].as_array().unwrap().len(), rates, "{v}");
            assert_eq!(
                limits["concurrency"].as_array().unwrap().len(),
                concurrency,
                "{v}"
            );
            let all: serde_json::Value = serde_json::from_str(catalog::LOCAL_LIMITS).unwrap();
            for kind in ["rates", "concurrency"] {
                for l in limits[kind].as_array().unwrap() {
                    assert_eq!(l, &all["default"][kind][0], "{v}");
                }
            }
        }
        for v in [Variant::EdgeList, Variant::EdgeCall] {
            let doc = bootstrap(v, up, &modules);
            assert_eq!(configuration(&doc), catalog::snapshot(TOOLS_CLUSTER), "{v}");
            assert!(
                doc.to_string()
                    .contains(r#""cluster_header":"x-mcpgw-cluster""#),
                "{v}"
            );
        }
        let mcpgw = bootstrap(Variant::Mcpgw, up, &modules);
        assert!(!configuration(&mcpgw).contains(r#""servers""#));
        let list = bootstrap(Variant::McpgwList, up, &modules);
        assert_eq!(configuration(&list), mcpgw_config(), "{list}");
        assert!(
            list.to_string()
                .contains(&format!(r#""cluster":"{DEFAULT_CLUSTER}""#)),
            "{list}"
        );
    }
}
