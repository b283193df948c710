//! The xDS server over real gRPC on 127.0.0.1:0: envoy-types' generated ADS client for
//! state-of-the-world and delta streams, and a real Envoy with an ADS-only bootstrap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::common::mutation_rules::v3 as rules;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, ExtensionConfigSource,
    HeaderValue, HeaderValueOption, Node, SocketAddress, TypedExtensionConfig, address,
    config_source, data_source, socket_address,
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
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use envoy_types::pb::google::rpc;
use mcpgw::xds::{self, AdsServer, ResourceSet, TypeUrl, XdsConfig};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::envoy::Envoy;

/// Generous: CI machines are busy.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

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

fn clusters(version: &str, list: &[(&str, i64)]) -> ResourceSet {
    let mut b = ResourceSet::builder(version);
    for (name, t) in list {
        b.insert(*name, &cluster(name, *t)).unwrap();
    }
    b.build()
}

fn decode_cluster(any: &Any) -> Cluster {
    assert_eq!(any.type_url, TypeUrl::Cluster.as_str());
    Cluster::decode(any.value.as_slice()).unwrap()
}

/// A running server, its input, and its shutdown trigger.
struct Server {
    ads: AdsServer,
    input: watch::Sender<Arc<ResourceSet>>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), xds::XdsError>>,
}

impl Server {
    async fn start(initial: ResourceSet, debounce: Duration) -> Server {
        let (input, rx) = watch::channel(Arc::new(initial));
        let ads = AdsServer::new(
            rx,
            XdsConfig {
                debounce,
                ..Default::default()
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(xds::serve(listener, ads.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            ads,
            input,
            addr,
            stop: Some(stop),
            done,
        }
    }

    fn publish(&self, set: ResourceSet) {
        self.input.send_replace(Arc::new(set));
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
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

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_owned(),
        cluster: "test-cluster".to_owned(),
        ..Default::default()
    })
}

fn nack(message: &str) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: 3,
        message: message.to_owned(),
        details: vec![],
    })
}

/// A state-of-the-world stream: a request sender and the response stream.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(server: &Server) -> Sotw {
        let (tx, reqs) = mpsc::channel(16);
        let rx = server
            .client()
            .await
            .stream_aggregated_resources(ReceiverStream::new(reqs))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }

    async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        next(&mut self.rx).await
    }

    /// ACK (or NACK with `error`) `r`.
    async fn answer(&self, r: &DiscoveryResponse, version: &str, error: Option<&str>) {
        self.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: version.to_owned(),
            response_nonce: r.nonce.clone(),
            error_detail: error.and_then(nack),
            ..Default::default()
        })
        .await;
    }
}

async fn next<T>(rx: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, rx.message())
        .await
        .expect("no response in time")
        .expect("stream failed")
        .expect("stream ended")
}

async fn quiet<T: std::fmt::Debug>(rx: &mut Streaming<T>) {
    if let Ok(m) = tokio::time::timeout(QUIET, rx.message()).await {
        panic!("expected no message, got {m:?}");
    }
}

fn cds_request(node_id: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(node_id),
        type_url: TypeUrl::Cluster.as_str().to_owned(),
        ..Default::default()
    }
}

fn cds_status(s: &xds::NodeStatus) -> Option<&xds::TypeStatus> {
    s.types.get(TypeUrl::Cluster.as_str())
}

#[tokio::test]
async fn sotw_pushes_changes_and_skips_identical_sets() {
    let server = Server::start(clusters("1", &[("a", 1), ("b", 1)]), Duration::ZERO).await;
    let mut s = Sotw::open(&server).await;
    s.send(cds_request("sotw-node")).await;
    let r1 = s.next().await;
    assert_eq!(r1.version_info, "1");
    assert_eq!(r1.type_url, TypeUrl::Cluster.as_str());
    let names: Vec<String> = r1
        .resources
        .iter()
        .map(|a| decode_cluster(a).name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    s.answer(&r1, "1", None).await;
    server
        .status_until("sotw-node", "v1 acked", |n| {
            cds_status(n).and_then(|t| t.version_acked.as_deref()) == Some("1")
        })
        .await;

    server.publish(clusters("2", &[("a", 1), ("b", 5)]));
    let r2 = s.next().await;
    assert_eq!(r2.version_info, "2");
    assert_ne!(r2.nonce, r1.nonce);
    let b = r2
        .resources
        .iter()
        .map(decode_cluster)
        .find(|c| c.name == "b")
        .unwrap();
    assert_eq!(b.connect_timeout.unwrap().seconds, 5);
    s.answer(&r2, "2", None).await;

    // Same content under a new version: nothing is pushed.
    server.publish(clusters("3", &[("a", 1), ("b", 5)]));
    quiet(&mut s.rx).await;
    let st = server
        .status_until("sotw-node", "v2 acked", |n| {
            cds_status(n).and_then(|t| t.version_acked.as_deref()) == Some("2")
        })
        .await;
    assert_eq!(st.cluster, "test-cluster");
    assert_eq!(st.connected_streams, 1);
    assert_eq!(st.stream_kind, xds::StreamKind::StateOfTheWorld);
    let counts = server.ads.metrics().counts();
    assert_eq!((counts.pushes, counts.acks, counts.nacks), (2, 2, 0));
}

#[tokio::test]
async fn sotw_nack_is_recorded_and_the_next_good_version_acked() {
    let server = Server::start(clusters("1", &[("a", 1)]), Duration::ZERO).await;
    let mut s = Sotw::open(&server).await;
    s.send(cds_request("nacker")).await;
    let r1 = s.next().await;
    s.answer(&r1, "1", None).await;

    server.publish(clusters("2", &[("a", 2)]));
    let r2 = s.next().await;
    // Envoy's NACK: the previous good version, the rejected response's nonce, the error.
    s.answer(&r2, "1", Some("cluster a: bad timeout")).await;
    let st = server
        .status_until("nacker", "NACK recorded", |n| {
            cds_status(n).is_some_and(|t| t.last_nack.is_some())
        })
        .await;
    let t = cds_status(&st).unwrap();
    assert_eq!(t.version_acked.as_deref(), Some("1"));
    assert_eq!(t.version_sent.as_deref(), Some("2"));
    let n = t.last_nack.as_ref().unwrap();
    assert_eq!(
        (n.version.as_str(), n.error.as_str()),
        ("2", "cluster a: bad timeout")
    );
    // The rejected content is not re-sent by itself.
    quiet(&mut s.rx).await;

    server.publish(clusters("3", &[("a", 3)]));
    let r3 = s.next().await;
    assert_eq!(r3.version_info, "3");
    s.answer(&r3, "3", None).await;
    let st = server
        .status_until("nacker", "v3 acked", |n| {
            cds_status(n).and_then(|t| t.version_acked.as_deref()) == Some("3")
        })
        .await;
    assert!(cds_status(&st).unwrap().last_nack.is_none());
    assert_eq!(server.ads.metrics().counts().nacks, 1);
    // The status serializes for `GET /xds/nodes`.
    let json = serde_json::to_value(server.ads.nodes()).unwrap();
    assert_eq!(
        json[0]["types"][TypeUrl::Cluster.as_str()]["version_acked"],
        "3"
    );
}

fn ecds(version: &str, list: &[(&str, &str)]) -> ResourceSet {
    let mut b = ResourceSet::builder(version);
    for (name, body) in list {
        let c = TypedExtensionConfig {
            name: (*name).to_owned(),
            typed_config: Some(Any {
                type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                value: body.as_bytes().to_vec(),
            }),
        };
        b.insert(*name, &c).unwrap();
    }
    b.build()
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(server: &Server) -> Delta {
        let (tx, reqs) = mpsc::channel(16);
        let rx = server
            .client()
            .await
            .delta_aggregated_resources(ReceiverStream::new(reqs))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        next(&mut self.rx).await
    }

    async fn answer(&self, r: &DeltaDiscoveryResponse, error: Option<&str>) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: error.and_then(nack),
            ..Default::default()
        })
        .await;
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn delta_sends_only_changes_and_removals() {
    let server = Server::start(
        ecds("1", &[("filter-a", "x"), ("filter-b", "x"), ("other", "x")]),
        Duration::ZERO,
    )
    .await;
    let mut d = Delta::open(&server).await;
    d.send(DeltaDiscoveryRequest {
        node: node("delta-node"),
        type_url: TypeUrl::ExtensionConfig.as_str().to_owned(),
        resource_names_subscribe: vec!["filter-a".into(), "filter-b".into()],
        ..Default::default()
    })
    .await;
    let r1 = d.next().await;
    assert_eq!(names(&r1), ["filter-a", "filter-b"]);
    assert_eq!(r1.system_version_info, "1");
    assert!(r1.resources.iter().all(|r| !r.version.is_empty()));
    let tec =
        TypedExtensionConfig::decode(r1.resources[0].resource.as_ref().unwrap().value.as_slice())
            .unwrap();
    assert_eq!(tec.name, "filter-a");
    d.answer(&r1, None).await;

    // Only filter-b changed (and `other`, which this stream did not subscribe to).
    server.publish(ecds(
        "2",
        &[("filter-a", "x"), ("filter-b", "y"), ("other", "y")],
    ));
    let r2 = d.next().await;
    assert_eq!(names(&r2), ["filter-b"]);
    assert!(r2.removed_resources.is_empty());
    assert_ne!(r2.resources[0].version, r1.resources[1].version);
    d.answer(&r2, Some("wasm: invalid plugin configuration"))
        .await;
    let st = server
        .status_until("delta-node", "NACK recorded", |n| {
            n.types
                .get(TypeUrl::ExtensionConfig.as_str())
                .is_some_and(|t| t.last_nack.is_some())
        })
        .await;
    let t = &st.types[TypeUrl::ExtensionConfig.as_str()];
    assert_eq!(t.version_acked.as_deref(), Some("1"));
    let n = t.last_nack.as_ref().unwrap();
    assert_eq!(
        (n.version.as_str(), n.error.as_str()),
        ("2", "wasm: invalid plugin configuration")
    );
    assert_eq!(st.stream_kind, xds::StreamKind::Delta);

    // filter-a disappears.
    server.publish(ecds("3", &[("filter-b", "y"), ("other", "y")]));
    let r3 = d.next().await;
    assert!(r3.resources.is_empty());
    assert_eq!(r3.removed_resources, ["filter-a"]);
    d.answer(&r3, None).await;
    server
        .status_until("delta-node", "v3 acked", |n| {
            n.types
                .get(TypeUrl::ExtensionConfig.as_str())
                .and_then(|t| t.version_acked.as_deref())
                == Some("3")
        })
        .await;
    // Nothing this stream holds changed.
    server.publish(ecds("4", &[("filter-b", "y"), ("other", "z")]));
    quiet(&mut d.rx).await;
}

#[tokio::test]
async fn two_nodes_have_separate_statuses() {
    let server = Server::start(clusters("1", &[("a", 1)]), Duration::ZERO).await;
    let mut one = Sotw::open(&server).await;
    one.send(cds_request("node-one")).await;
    let mut two = Delta::open(&server).await;
    two.send(DeltaDiscoveryRequest {
        node: node("node-two"),
        type_url: TypeUrl::Cluster.as_str().to_owned(),
        ..Default::default()
    })
    .await;
    let r1 = one.next().await;
    let r2 = two.next().await;
    assert_eq!(names(&r2), ["a"], "legacy wildcard on delta CDS");
    one.answer(&r1, "1", Some("rejected by node one")).await;
    two.answer(&r2, None).await;
    server
        .status_until("node-two", "node two acked", |n| {
            cds_status(n).and_then(|t| t.version_acked.as_deref()) == Some("1")
        })
        .await;
    let st1 = server
        .status_until("node-one", "node one nacked", |n| {
            cds_status(n).is_some_and(|t| t.last_nack.is_some())
        })
        .await;
    assert_eq!(cds_status(&st1).unwrap().version_acked, None);
    let st2 = server.ads.registry().node("node-two").unwrap();
    assert!(cds_status(&st2).unwrap().last_nack.is_none());
    let ids: Vec<String> = server.ads.nodes().into_iter().map(|n| n.node_id).collect();
    assert_eq!(ids, ["node-one", "node-two"]);

    drop(one);
    server
        .status_until("node-one", "node one disconnected", |n| {
            n.connected_streams == 0
        })
        .await;
    assert_eq!(
        server
            .ads
            .registry()
            .node("node-two")
            .unwrap()
            .connected_streams,
        1
    );
}

#[tokio::test]
async fn bursts_of_publications_are_debounced() {
    let server = Server::start(clusters("0", &[("a", 0)]), Duration::from_millis(100)).await;
    let mut s = Sotw::open(&server).await;
    s.send(cds_request("burst")).await;
    let first = s.next().await;
    s.answer(&first, "0", None).await;
    for i in 1..=20 {
        server.publish(clusters(&i.to_string(), &[("a", i)]));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut pushes = 0;
    loop {
        let r = s.next().await;
        pushes += 1;
        s.answer(&r, &r.version_info, None).await;
        if r.version_info == "20" {
            let c = decode_cluster(&r.resources[0]);
            assert_eq!(c.connect_timeout.unwrap().seconds, 20);
            break;
        }
    }
    quiet(&mut s.rx).await;
    assert!(pushes < 20, "{pushes} pushes for 20 publications");
    assert!(server.ads.metrics().counts().publishes < 20);
    assert_eq!(server.ads.current().version(), "20");
}

#[tokio::test]
async fn malformed_requests_end_the_stream_with_a_precise_status() {
    let server = Server::start(clusters("1", &[("a", 1)]), Duration::ZERO).await;
    let cases = [
        (
            "no node",
            DiscoveryRequest {
                type_url: TypeUrl::Cluster.as_str().to_owned(),
                ..Default::default()
            },
            "must carry node.id",
        ),
        (
            "no type",
            DiscoveryRequest {
                node: node("n"),
                ..Default::default()
            },
            "type_url is empty",
        ),
    ];
    for (case, request, message) in cases {
        let mut s = Sotw::open(&server).await;
        s.send(request).await;
        let e = tokio::time::timeout(WAIT, s.rx.message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{case}");
        assert!(e.message().contains(message), "{case}: {}", e.message());
    }
}

#[tokio::test]
async fn shutdown_closes_streams_and_stops_the_server() {
    let mut server = Server::start(clusters("1", &[("a", 1)]), Duration::ZERO).await;
    let mut s = Sotw::open(&server).await;
    s.send(cds_request("leaving")).await;
    s.next().await;
    let _ = server.stop.take().unwrap().send(());
    let e = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    tokio::time::timeout(WAIT, &mut server.done)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

// --- a real Envoy --------------------------------------------------------------------

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
        let bootstrap = serde_json::json!({
            "node": {"id": format!("envoy-{api_type}"), "cluster": "xds-test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
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
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": xds.port()}}
                }}]}]}
            }]}
        });
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
    let server = Server::start(edge("1", &e), Duration::from_millis(20)).await;
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
