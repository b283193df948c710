//! A real Envoy following the xDS server (crate `mcpgw-xds`) over state-of-the-world and
//! delta ADS: live route, filter (ECDS) and cluster changes, and a NACK. The server's
//! protocol tests without Envoy live in that crate (`xds/tests/ads.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::common::mutation_rules::v3 as rules;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, ExtensionConfigSource,
    HeaderValue, HeaderValueOption, SocketAddress, TypedExtensionConfig, address, config_source,
    data_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost, route, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use mcpgw::xds::{self, AdsServer, ResourceSet, TypeUrl, XdsConfig};
use mcpgw_harness::bootstrap::ads;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::envoy::Envoy;

/// Generous: CI machines are busy.
const WAIT: Duration = Duration::from_secs(10);

fn cluster(name: &str, timeout_s: i64) -> Cluster {
    Cluster {
        name: name.to_owned(),
        connect_timeout: Some(PbDuration {
            seconds: timeout_s,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A running server and its input; stopped when dropped.
struct Server {
    ads: AdsServer,
    input: watch::Sender<xds::Published>,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Server {
    async fn start(initial: ResourceSet) -> Server {
        let (input, rx) = watch::channel(Some(Arc::new(initial)));
        let ads = AdsServer::new(rx, XdsConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(xds::serve(listener, ads.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            ads,
            input,
            addr,
            _stop: stop,
        }
    }

    fn publish(&self, set: ResourceSet) {
        self.input.send_replace(Some(Arc::new(set)));
    }

    /// Polls the node registry until `check` holds for `node`.
    async fn status_until(
        &self,
        node: &str,
        what: &str,
        check: impl Fn(&xds::NodeStatus) -> bool,
    ) -> xds::NodeStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.ads.registry().node(node)
                && check(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: node status now {:?}",
                self.ads.registry().node(node)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn cds_status(s: &xds::NodeStatus) -> Option<&xds::TypeStatus> {
    s.types.get(TypeUrl::Cluster.as_str())
}

fn socket(port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn any<M: prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn ads_source() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

/// What the real Envoy is served.
struct Edge<'a> {
    /// Body of the direct response (RDS).
    body: &'a str,
    /// Value of the `x-ecds` response header (set by a filter configured over ECDS).
    header: &'a str,
    /// The cluster's connect timeout: ≤ 0 makes it invalid.
    timeout_s: i64,
}

/// A listener on an ephemeral port whose routes come over RDS and whose header filter
/// comes over ECDS, a route answering directly, and a static cluster.
fn edge(version: &str, e: &Edge<'_>) -> ResourceSet {
    let headers = HeaderMutation {
        mutations: Some(Mutations {
            response_mutations: vec![rules::HeaderMutation {
                action: Some(rules::header_mutation::Action::Append(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-ecds".into(),
                        value: e.header.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let filter_config = TypedExtensionConfig {
        name: "edge-headers".into(),
        typed_config: Some(any(&headers)),
    };
    let hcm = HttpConnectionManager {
        stat_prefix: "edge".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: ads_source(),
            route_config_name: "edge-routes".into(),
        })),
        http_filters: vec![
            HttpFilter {
                name: "edge-headers".into(),
                config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                    ExtensionConfigSource {
                        config_source: ads_source(),
                        type_urls: vec![<HeaderMutation as prost::Name>::type_url()],
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(
                    any(&Router::default()),
                )),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let listener = Listener {
        name: "edge".into(),
        address: socket(0),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: "edge-routes".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::DirectResponse(DirectResponseAction {
                    status: 200,
                    body: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineString(e.body.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let upstream = Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "upstream".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: socket(9),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..cluster("upstream", e.timeout_s)
    };
    let mut b = ResourceSet::builder(version);
    b.insert("edge", &listener).unwrap();
    b.insert("edge-routes", &routes).unwrap();
    b.insert("upstream", &upstream).unwrap();
    b.insert("edge-headers", &filter_config).unwrap();
    b.build()
}

/// Envoys of these tests: minimal ADS bootstraps, no mcpgw filter.
impl Envoy {
    async fn with_ads(xds: SocketAddr, api_type: &str) -> Envoy {
        let bootstrap = ads(&format!("envoy-{api_type}"), "xds-test", xds, api_type);
        // A base id of our own, so that concurrent Envoys' shared memory does not collide.
        let base_id = 40_000 + std::process::id() % 10_000 + u32::from(api_type == "DELTA_GRPC");
        Envoy::spawn(&bootstrap.to_string(), base_id).await
    }

    /// Waits until the listener answers with `body` and the ECDS filter's header.
    async fn answers(
        &mut self,
        http: &reqwest::Client,
        addr: SocketAddr,
        body: &str,
        header: &str,
    ) {
        let url = format!("http://{addr}/anything");
        self.wait(
            &format!("the listener to answer {body:?} with x-ecds: {header}"),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let r = http.get(&url).send().await.ok()?;
                    let h = r.headers().get("x-ecds")?.to_str().ok()?.to_owned();
                    (h == header && r.text().await.ok()? == body).then_some(())
                }
            },
        )
        .await;
    }
}

async fn envoy_converges(api_type: &str) {
    let mut e = Edge {
        body: "hello from xds",
        header: "one",
        timeout_s: 1,
    };
    let server = Server::start(edge("1", &e)).await;
    let mut envoy = Envoy::with_ads(server.addr, api_type).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let addr = envoy.listener("edge").await;
    envoy.answers(&http, addr, e.body, e.header).await;
    let node_id = format!("envoy-{api_type}");
    // Per type, the version of the last push that type got: a type is pushed only when
    // its resources change.
    let acked = |cds: &'static str, lds: &'static str, rds: &'static str, ecds: &'static str| {
        move |n: &xds::NodeStatus| {
            [
                (TypeUrl::Cluster, cds),
                (TypeUrl::Listener, lds),
                (TypeUrl::RouteConfiguration, rds),
                (TypeUrl::ExtensionConfig, ecds),
            ]
            .into_iter()
            .all(|(t, v)| {
                n.types
                    .get(t.as_str())
                    .and_then(|s| s.version_acked.as_deref())
                    == Some(v)
            })
        }
    };
    server
        .status_until(&node_id, "Envoy acked v1", acked("1", "1", "1", "1"))
        .await;

    // A live route change: only the route configuration is pushed.
    e.body = "updated";
    server.publish(edge("2", &e));
    envoy.answers(&http, addr, e.body, e.header).await;
    server
        .status_until(&node_id, "Envoy acked v2", acked("1", "1", "2", "1"))
        .await;

    // A filter configuration change over ECDS: the listener is not touched.
    e.header = "two";
    server.publish(edge("3", &e));
    envoy.answers(&http, addr, e.body, e.header).await;
    server
        .status_until(&node_id, "Envoy acked v3", acked("1", "1", "2", "3"))
        .await;

    // An invalid cluster (connect_timeout must be > 0): Envoy NACKs and keeps serving.
    e.timeout_s = -1;
    server.publish(edge("4", &e));
    let st = server
        .status_until(&node_id, "Envoy NACKed v4", |n| {
            cds_status(n).is_some_and(|t| t.last_nack.is_some())
        })
        .await;
    let t = cds_status(&st).unwrap();
    assert_eq!(t.version_acked.as_deref(), Some("1"));
    let n = t.last_nack.as_ref().unwrap();
    assert_eq!(n.version, "4");
    assert!(n.error.contains("duration"), "NACK detail: {}", n.error);
    envoy.answers(&http, addr, e.body, e.header).await;
    let dump: serde_json::Value = http
        .get(format!("http://{}/config_dump", envoy.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dump = dump.to_string();
    assert!(dump.contains("edge-routes") && dump.contains("edge-headers"));
}

#[tokio::test]
async fn real_envoy_converges_over_sotw_ads() {
    envoy_converges("GRPC").await;
}

#[tokio::test]
async fn real_envoy_converges_over_delta_ads() {
    envoy_converges("DELTA_GRPC").await;
}

/// The one debounce on the publish path is the publisher's, before its build: a burst of
/// registry writes is folded into a few builds (each one registry read), and the last
/// write is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_registry_changes_are_folded_into_few_builds() {
    use super::harness::{TestCp, TestDb, settings};
    let db = TestDb::sqlite();
    let mut s = settings(&db);
    s.xds_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let cp = TestCp::start(s).await;
    let builds = |text: &serde_json::Value| -> u64 {
        text.as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("mcpgw_edge_builds_total{outcome=\"ok\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = builds(&cp.get("/metrics").await.1);
    let writes = (0..20).map(|i| {
        let cp = &cp;
        async move {
            let (s, v) = cp
                .post(
                    "/servers",
                    serde_json::json!({"name": format!("burst-{i}")}),
                )
                .await;
            assert_eq!(s, 201, "{v}");
        }
    });
    futures::future::join_all(writes).await;
    let version = cp.get("/registry").await.1["registry_version"]
        .as_i64()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, snap) = cp.get("/snapshot").await;
        if snap["version"] == version.as_str() {
            assert_eq!(snap["servers"].as_object().map(|s| s.len()), Some(20));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "version {version} never published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = builds(&cp.get("/metrics").await.1) - before;
    assert!((1..20).contains(&n), "{n} builds for 20 writes");
}
