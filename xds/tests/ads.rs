//! The xDS server over real gRPC on 127.0.0.1:0: envoy-types' generated ADS client for
//! state-of-the-world and delta streams. (A real Envoy following this server is tested in
//! the control plane's integration tests, which own the Envoy harness.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Node, TypedExtensionConfig};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_client::ExtensionConfigDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use envoy_types::pb::google::rpc;
use mcpgw_xds::{self as xds, AdsServer, ResourceSet, TypeUrl, XdsConfig};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

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
    input: watch::Sender<xds::Published>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), xds::XdsError>>,
}

impl Server {
    async fn start(initial: ResourceSet) -> Server {
        Server::start_with(Some(initial), XdsConfig::default()).await
    }

    /// A server with `config`, serving `initial` (`None`: nothing published yet).
    async fn start_with(initial: Option<ResourceSet>, config: XdsConfig) -> Server {
        let (input, rx) = watch::channel(initial.map(Arc::new));
        let ads = AdsServer::new(rx, config);
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
        self.input.send_replace(Some(Arc::new(set)));
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
    let server = Server::start(clusters("1", &[("a", 1), ("b", 1)])).await;
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
    let server = Server::start(clusters("1", &[("a", 1)])).await;
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
    let server = Server::start(ecds(
        "1",
        &[("filter-a", "x"), ("filter-b", "x"), ("other", "x")],
    ))
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
    let server = Server::start(clusters("1", &[("a", 1)])).await;
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
async fn malformed_requests_end_the_stream_with_a_precise_status() {
    let server = Server::start(clusters("1", &[("a", 1)])).await;
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
    let mut server = Server::start(clusters("1", &[("a", 1)])).await;
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

/// Before the first good build nothing is answered (a reconnecting Envoy keeps what it
/// has, instead of being served an empty configuration); the first publication answers
/// the requests that waited, on both ADS variants.
#[tokio::test]
async fn nothing_is_answered_before_the_first_publication() {
    let server = Server::start_with(None, XdsConfig::default()).await;
    let mut s = Sotw::open(&server).await;
    s.send(cds_request("early-sotw")).await;
    let mut d = Delta::open(&server).await;
    d.send(DeltaDiscoveryRequest {
        node: node("early-delta"),
        type_url: TypeUrl::Cluster.as_str().to_owned(),
        ..Default::default()
    })
    .await;
    // Both streams are registered (their requests were read) ...
    for n in ["early-sotw", "early-delta"] {
        server
            .status_until(n, "the stream to be registered", |s| {
                s.connected_streams == 1
            })
            .await;
    }
    // ... and held: no response, not even an empty one.
    quiet(&mut s.rx).await;
    quiet(&mut d.rx).await;
    assert!(server.ads.current().is_none());
    assert_eq!(server.ads.metrics().counts().pushes, 0);

    server.publish(clusters("7", &[("a", 1), ("b", 2)]));
    let r = s.next().await;
    assert_eq!((r.version_info.as_str(), r.resources.len()), ("7", 2));
    let r = d.next().await;
    assert_eq!(names(&r), ["a", "b"]);
    assert_eq!(server.ads.current().unwrap().version(), "7");
}

/// Node ids are chosen by clients: past `max_nodes` a new node is refused with a clear
/// `RESOURCE_EXHAUSTED` (and counted), while a known node may open more streams.
#[tokio::test]
async fn new_nodes_past_the_cap_are_refused() {
    let config = XdsConfig {
        max_nodes: 1,
        ..Default::default()
    };
    let server = Server::start_with(Some(clusters("1", &[("a", 1)])), config).await;
    let mut first = Sotw::open(&server).await;
    first.send(cds_request("known")).await;
    first.next().await;
    let mut refused = Sotw::open(&server).await;
    refused.send(cds_request("stranger")).await;
    let e = tokio::time::timeout(WAIT, refused.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("1 xDS nodes"), "{}", e.message());
    assert!(server.ads.registry().node("stranger").is_none());
    let mut again = Sotw::open(&server).await;
    again.send(cds_request("known")).await;
    assert_eq!(again.next().await.resources.len(), 1);
    // An overlong id is refused whatever the count.
    let mut long = Sotw::open(&server).await;
    long.send(cds_request(&"n".repeat(xds::MAX_NODE_ID_BYTES + 1)))
        .await;
    let e = tokio::time::timeout(WAIT, long.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}

/// A NACK's detail is client text: what the registry keeps of it is bounded and marked.
#[tokio::test]
async fn nack_detail_is_stored_truncated() {
    let server = Server::start(clusters("1", &[("a", 1)])).await;
    let mut s = Sotw::open(&server).await;
    s.send(cds_request("verbose")).await;
    let r = s.next().await;
    let detail = "x".repeat(200_000);
    s.answer(&r, "", Some(&detail)).await;
    let st = server
        .status_until("verbose", "the NACK to be recorded", |n| {
            cds_status(n).is_some_and(|t| t.last_nack.is_some())
        })
        .await;
    let error = &cds_status(&st).unwrap().last_nack.as_ref().unwrap().error;
    assert!(
        error.ends_with("… [truncated: 200000 bytes in all]"),
        "{}",
        &error[error.len().saturating_sub(80)..]
    );
    assert!(
        error.len() < xds::MAX_NACK_DETAIL_BYTES + 64,
        "{}",
        error.len()
    );
}

// --- TLS -----------------------------------------------------------------------------

/// Test PKI made by `mcpgw_harness::pki::issue` (the `openssl` CLI): a CA, a server
/// certificate for `localhost` and 127.0.0.1 and a client certificate (`envoy`), all
/// signed by the CA; and under `other/` a second CA's, whose client is a stranger here.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        mcpgw_harness::pki::issue(dir.path(), "ca", "localhost").unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        mcpgw_harness::pki::issue(&other, "other-ca", "localhost").unwrap();
        Pki { dir }
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }
}

async fn tls_client(
    addr: SocketAddr,
    pki: &Pki,
    client: Option<&str>,
) -> Result<AggregatedDiscoveryServiceClient<Channel>, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
        .domain_name("localhost");
    if let Some(name) = client {
        tls = tls.identity(Identity::from_pem(
            pki.read(&format!("{name}.pem")),
            pki.read(&format!("{name}.key")),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(AggregatedDiscoveryServiceClient::new(channel))
}

/// With TLS configured, a client presenting a certificate from the configured CA gets its
/// configuration; one without a certificate, or with one from another CA, gets nothing.
#[tokio::test]
async fn tls_requires_a_client_certificate_from_the_configured_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new();
    let config = XdsConfig {
        tls: Some(xds::XdsTls {
            cert_pem: pki.read("server.pem"),
            key_pem: pki.read("server.key"),
            client_ca_pem: pki.read("ca.pem"),
        }),
        ..Default::default()
    };
    let server = Server::start_with(Some(clusters("1", &[("a", 1)])), config).await;

    let (tx, reqs) = mpsc::channel(4);
    tx.send(cds_request("mtls")).await.unwrap();
    let mut rx = tls_client(server.addr, &pki, Some("envoy"))
        .await
        .unwrap()
        .stream_aggregated_resources(ReceiverStream::new(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut rx).await.resources.len(), 1);

    for who in [None, Some("other/envoy")] {
        let (tx, reqs) = mpsc::channel(4);
        tx.send(cds_request("intruder")).await.unwrap();
        // The handshake fails (at connect, or on the first call with TLS 1.3, where the
        // server checks the client's certificate after the client considers itself done).
        let refused = match tls_client(server.addr, &pki, who).await {
            Err(_) => true,
            Ok(mut c) => match c
                .stream_aggregated_resources(ReceiverStream::new(reqs))
                .await
            {
                Err(_) => true,
                Ok(r) => tokio::time::timeout(WAIT, r.into_inner().message())
                    .await
                    .unwrap()
                    .is_err(),
            },
        };
        assert!(refused, "client {who:?} was served");
    }
    assert!(server.ads.registry().node("intruder").is_none());

    // Plaintext gRPC gets nothing either.
    let plain = AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.addr)).await;
    if let Ok(mut c) = plain {
        let (tx, reqs) = mpsc::channel(4);
        tx.send(cds_request("intruder")).await.unwrap();
        assert!(
            c.stream_aggregated_resources(ReceiverStream::new(reqs))
                .await
                .is_err()
        );
    }
}

/// An Envoy whose ADS is someone else's (an Istio gateway) subscribes to the filter's
/// configuration alone over the ECDS service: it gets it, follows changes, and its ACK is
/// recorded like an ADS client's. The unary fetch is refused with a precise status.
#[tokio::test]
async fn the_ecds_service_serves_extension_configs_alone() {
    let server = Server::start(ecds("1", &[("mcpgw.filter", "one"), ("other", "x")])).await;
    let mut client =
        ExtensionConfigDiscoveryServiceClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap();
    let (tx, reqs) = mpsc::channel(16);
    let mut rx = client
        .stream_extension_configs(ReceiverStream::new(reqs))
        .await
        .unwrap()
        .into_inner();
    let ecds_type = TypeUrl::ExtensionConfig.as_str().to_owned();
    tx.send(DiscoveryRequest {
        node: node("gateway-1"),
        type_url: ecds_type.clone(),
        resource_names: vec!["mcpgw.filter".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let r1 = next(&mut rx).await;
    assert_eq!(
        (r1.version_info.as_str(), r1.type_url.as_str()),
        ("1", ecds_type.as_str())
    );
    let got: Vec<TypedExtensionConfig> = r1
        .resources
        .iter()
        .map(|a| TypedExtensionConfig::decode(a.value.as_slice()).unwrap())
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].name, "mcpgw.filter");
    assert_eq!(got[0].typed_config.as_ref().unwrap().value, b"one");
    tx.send(DiscoveryRequest {
        type_url: ecds_type.clone(),
        version_info: "1".into(),
        response_nonce: r1.nonce.clone(),
        resource_names: vec!["mcpgw.filter".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    server
        .status_until("gateway-1", "v1 acked", |n| {
            n.types
                .get(ecds_type.as_str())
                .and_then(|t| t.version_acked.as_deref())
                == Some("1")
        })
        .await;
    server.publish(ecds("2", &[("mcpgw.filter", "two"), ("other", "x")]));
    let r2 = next(&mut rx).await;
    assert_eq!(r2.version_info, "2");
    let two = TypedExtensionConfig::decode(r2.resources[0].value.as_slice()).unwrap();
    assert_eq!(two.typed_config.unwrap().value, b"two");
    let fetch = client
        .fetch_extension_configs(DiscoveryRequest {
            node: node("gateway-1"),
            type_url: ecds_type,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fetch.code(), tonic::Code::Unimplemented);
}
