//! Snapshot → xDS resources (pure).
//!
//! Every timeout and limit the generated configuration sets is a named constant below,
//! with the reason for its value; `docs/control-plane.md` lists them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::common::mutation_rules::v3 as mutation_rules;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, AsyncDataSource, BackoffStrategy, ConfigSource,
    DataSource, ExtensionConfigSource, HeaderValue, HeaderValueOption, Http1ProtocolOptions,
    Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions, HttpUri,
    KeyValueAppend, KeyValueMutation, KeyValuePair, RemoteDataSource, RetryPolicy, SocketAddress,
    TransportSocket, TypedExtensionConfig, address, async_data_source, config_source, data_source,
    header_value_option, http_uri, key_value_append, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation as UpstreamHeaderMutation, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::http::early_header_mutation::header_mutation::v3::HeaderMutation as EarlyHeaderMutation;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration, StringValue, UInt32Value, UInt64Value,
};
use mcpgw_core::catalog::Upstream;
use mcpgw_core::edge::{
    CLIENT_ADDRESS_HEADER, EDGE_ADDRESS_HEADER, RELAY_AUTH_HEADER, RELAY_ERAS_HEADER,
    RELAY_UPSTREAMS_HEADER, STREAM_HEADER,
};
use mcpgw_core::snapshot::Snapshot;

use super::resolve::{AddressError, EdgeResolver};
use super::upstream::{TokenEndpoint, UpstreamAccess, token_cluster_name};
use crate::model::IdentityMode;
use crate::xds::{ResourceSet, ResourceSetError};

/// Name of the MCP listener (LDS).
pub const LISTENER: &str = "mcpgw";
/// Name of the listener's route configuration (RDS).
pub const ROUTES: &str = "mcpgw";
/// Name of the mcpgw filter's configuration (ECDS), also the filter's name in the chain.
pub const FILTER: &str = "mcpgw.filter";
/// Name of the session relay's cluster (the snapshot's `relay`).
pub const RELAY_CLUSTER: &str = "mcpgw-relay";
/// Name of the rate-limit service's cluster (the snapshot's `limits.service.cluster`).
pub const RATELIMIT_CLUSTER: &str = "mcpgw-ratelimit";
/// Name of the cluster Envoy fetches the filter's module from when the module is named by
/// URL ([`RemoteModule`]). The control plane sends it over CDS to its own Envoys; an Istio
/// gateway gets it from the EnvoyFilter (`manifests/istio/envoyfilter.yaml`).
pub const WASM_CLUSTER: &str = "mcpgw-wasm";
/// How long one fetch of the module may take (a few MB over a slow link).
pub const WASM_FETCH_TIMEOUT_S: i64 = 60;
/// Fetches of the module after a failed one, with a backoff from 1 s up to 30 s: a
/// registry or file server that is briefly away does not leave the filter unconfigured.
pub const WASM_FETCH_RETRIES: u32 = 10;
/// The wasm VM's id and the plugin's root id: constant, so a reconfiguration reuses the VM.
const VM_ID: &str = "mcpgw";
/// How long an upstream connection attempt may take. Long enough for a TLS handshake across
/// regions, short enough that a dead upstream fails the call before a client gives up.
pub const CONNECT_TIMEOUT_S: i64 = 5;
/// How long an idle upstream connection is kept: below the keep-alive timeouts common MCP
/// servers (uvicorn: 5 s is the default, but most deployments raise it) and proxies (60 s)
/// use, so Envoy closes first instead of racing a request into a closing socket.
pub const UPSTREAM_IDLE_TIMEOUT_S: i64 = 50;
/// How long a client may take to send its request headers: a client that trickles them
/// (slowloris) holds a connection and a buffer; every real client sends them at once.
pub const REQUEST_HEADERS_TIMEOUT_S: i64 = 10;
/// How long a client may take to send its whole request (headers and a body up to the
/// policy's limit; the filter's upstream `initialize` runs inside it as well).
pub const REQUEST_TIMEOUT_S: i64 = 60;
/// How long a stream may pass no bytes either way before Envoy resets it (Envoy's own
/// default, made explicit: it was disabled). A `tools/call` whose SSE response stays
/// silent this long while the tool runs is cut: tools that run longer should send
/// progress notifications, which MCP provides for exactly this.
pub const STREAM_IDLE_TIMEOUT_S: i64 = 300;
/// The whole of one POST or DELETE exchange, response included (an SSE response too):
/// generous for slow tools (ContextForge's default tool timeout is 60 s), bounded so a
/// hung upstream cannot hold a stream forever.
pub const ROUTE_TIMEOUT_S: i64 = 300;
/// Idle limit of a GET stream (the server-to-client SSE stream, and the legacy SSE
/// session through the relay): no overall deadline, since such a stream lasts as long as
/// the session, but one that passes nothing for an hour is dropped (clients reconnect,
/// resuming with `Last-Event-ID`).
pub const STREAM_ROUTE_IDLE_TIMEOUT_S: i64 = 3600;
/// How long a client connection without any stream is kept open.
pub const DOWNSTREAM_IDLE_TIMEOUT_S: i64 = 300;
/// Concurrent streams per HTTP/2 client connection (Envoy's default is 2^31 - 1): one
/// connection must not be able to open unbounded work.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Client connections the MCP listener accepts at once, per Envoy (beyond it new ones are
/// closed). Each holds buffers up to the body limit; the bootstraps' overload manager caps
/// all listeners together and sheds load on memory pressure.
pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 10_000;
/// Circuit breakers of each upstream cluster, per Envoy. Envoy's defaults (1,024 each)
/// would cap an upstream at 1,024 concurrent requests, and every open SSE stream (a GET
/// stream, a streaming tool call) is one: 8,192 concurrent requests and connections
/// (HTTP/1.1: one request per connection), far below file-descriptor limits.
pub const CLUSTER_MAX_REQUESTS: u32 = 8192;
/// Requests waiting for a connection to an upstream (Envoy's default, made explicit): a
/// queue longer than this means the upstream is not keeping up, and waiting longer helps
/// nobody.
pub const CLUSTER_MAX_PENDING_REQUESTS: u32 = 1024;
/// Concurrent retries per upstream (Envoy's default; routes configure no retries).
pub const CLUSTER_MAX_RETRIES: u32 = 3;
/// Client headers removed before a request reaches any upstream: the client's credentials
/// are for the gateway, never for the servers behind it (MCP forbids token passthrough).
pub const CLIENT_CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];
/// Headers only Envoy's routes and the relay may set: removed from every client request
/// before any filter sees it. (`mcpgw-upstream` is not among them: the relay legitimately
/// sends it back through the listener, and the filter checks it against the session.)
pub const INTERNAL_HEADERS: [&str; 6] = [
    RELAY_AUTH_HEADER,
    EDGE_ADDRESS_HEADER,
    CLIENT_ADDRESS_HEADER,
    RELAY_UPSTREAMS_HEADER,
    RELAY_ERAS_HEADER,
    STREAM_HEADER,
];
/// Headers only the listener's own filters may set: removed from every client request
/// before any filter sees it (`jwt_authn` adds the verified token payload after that), and
/// from every request to an upstream (what the edge verified is for the edge).
pub const IDENTITY_HEADERS: [&str; 1] = [super::jwt::PAYLOAD_HEADER];
/// Default of [`EdgeSettings::resolve_interval`]: how stale an upstream's addresses may be.
/// Short enough to follow a planned address change within a minute, long enough that a
/// thousand upstreams cost a few lookups a second.
pub const DEFAULT_RESOLVE_INTERVAL: StdDuration = StdDuration::from_secs(30);
/// JSON-RPC body of the fallback route (the filter let a request through without routing it).
const NOT_ROUTED_BODY: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"no upstream serves this request"}}"#;

/// Settings of the translation: what is the same for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Address the MCP listener binds on each Envoy.
    pub envoy_listen: SocketAddr,
    /// Path of the filter's `.wasm` module as Envoy sees it (on the Envoy's host); unused
    /// when [`EdgeSettings::filter_remote`] is set.
    pub filter_wasm: String,
    /// The filter's module by URL and sha256, fetched by Envoy itself through
    /// [`WASM_CLUSTER`] (`None`: the local file [`EdgeSettings::filter_wasm`]).
    pub filter_remote: Option<RemoteModule>,
    /// How upstream clusters are named: the control plane's own names (it sends the
    /// clusters) or Istio's (an Istio gateway gets them from istiod).
    pub cluster_naming: ClusterNaming,
    /// CA bundle (on the Envoy's host) that https upstreams' certificates are verified
    /// against; `None` disables verification (encryption without authentication).
    pub upstream_ca_file: Option<String>,
    /// The gateway (by name) the filter's passthrough path ([`PASSTHROUGH_PATH`]) goes to
    /// (`edge_passthrough`; `None`: that path answers a JSON-RPC 404).
    pub passthrough: Option<String>,
    /// Where Envoys reach the session relay (`None`: no relay; the legacy SSE pair and
    /// multi-upstream GET streams are refused).
    pub relay: Option<UpstreamEndpoint>,
    /// The secret the relay route adds to every request it sends to the relay
    /// ([`mcpgw_core::edge::RELAY_AUTH_HEADER`]), which the relay checks.
    pub relay_auth: Option<String>,
    /// Where Envoys reach the control plane's rate-limit service, which checks global
    /// limits (`None`: none; a snapshot with global limits then needs its own).
    pub ratelimit: Option<UpstreamEndpoint>,
    /// Files on the Envoys' hosts for TLS towards the control plane (the relay and
    /// rate-limit clusters): `None` means plaintext.
    pub control_plane_tls: Option<ControlPlaneTls>,
    /// Resolves upstream names for the static endpoints Envoys get.
    pub resolver: EdgeResolver,
    /// How often upstream names are resolved and checked again.
    pub resolve_interval: StdDuration,
    /// The URL clients reach the Envoys' MCP listener at (scheme, host, optional port and
    /// path prefix; no trailing `/`): a policy written without `resource` gets
    /// `{public_url}/servers/{id}/mcp` (`None`: a policy names its `resource`).
    pub public_url: Option<String>,
}

/// Checks a public URL: absolute `http`/`https`, no user info, query or fragment; the
/// trailing `/` dropped.
pub fn public_url(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err("names no host".into());
    }
    if rest.contains(['@', '?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("no user info, query, fragment or whitespace".into());
    }
    UpstreamEndpoint::from_url(trimmed)?;
    Ok(trimmed.to_owned())
}

/// The filter's module named by URL: Envoy downloads it through [`WASM_CLUSTER`] and runs
/// it only if its SHA-256 digest is `sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteModule {
    /// `http` or `https` URL of the `.wasm` file.
    pub url: String,
    /// Where the URL points (the [`WASM_CLUSTER`]'s endpoint).
    pub endpoint: UpstreamEndpoint,
    /// Lower-case hex SHA-256 of the module.
    pub sha256: String,
}

impl RemoteModule {
    /// A module at `url` (`http`/`https`) whose digest is `sha256` (64 hex digits).
    pub fn new(url: &str, sha256: &str) -> Result<RemoteModule, String> {
        let endpoint = UpstreamEndpoint::from_url(url)?;
        let sha256 = sha256.trim().to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 must be 64 hexadecimal digits".into());
        }
        Ok(RemoteModule {
            url: url.to_owned(),
            endpoint,
            sha256,
        })
    }
}

/// How the clusters of upstream gateways are named in the snapshot and in xDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterNaming {
    /// `mcpgw-gw-{gateway id}`: the control plane sends every cluster (standalone Envoys).
    Mcpgw,
    /// Istio's outbound names, `outbound|{port}||{host}`, so an Istio gateway routes to the
    /// clusters istiod already gives it: a Kubernetes Service's (`name.namespace.svc` is
    /// completed to `name.namespace.svc.{domain}`, as istiod names it) or a ServiceEntry's
    /// host. Istio then owns the connection (its mTLS, its DestinationRules); the cluster
    /// the control plane still puts in its own xDS answer under that name is what a
    /// non-Istio Envoy following this control plane would use.
    Istio {
        /// The cluster's DNS domain (`cluster.local`).
        domain: String,
    },
}

/// Default of the Istio cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

impl ClusterNaming {
    /// The cluster name of gateway `gateway_id`, reached at `endpoint`.
    pub fn cluster_name(&self, gateway_id: &str, endpoint: &UpstreamEndpoint) -> String {
        match self {
            ClusterNaming::Mcpgw => crate::snapshot::cluster_name(gateway_id),
            ClusterNaming::Istio { domain } => {
                let host = endpoint.host.trim_end_matches('.').to_ascii_lowercase();
                let host = if host.ends_with(".svc") {
                    format!("{host}.{domain}")
                } else {
                    host
                };
                format!("outbound|{}||{host}", endpoint.port)
            }
        }
    }
}

/// Files on an Envoy's host for TLS with a client certificate towards the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneTls {
    /// CA bundle the control plane's certificate is verified against.
    pub ca_file: String,
    /// Client certificate chain Envoy presents.
    pub cert_file: String,
    /// Its private key.
    pub key_file: String,
}

/// Default of [`EdgeSettings::envoy_listen`].
pub const DEFAULT_ENVOY_LISTEN: &str = "127.0.0.1:8080";
/// Default of [`EdgeSettings::filter_wasm`] (what `make wasm` builds, relative to Envoy's
/// working directory).
pub const DEFAULT_FILTER_WASM: &str = "target/wasm32-wasip1/release/mcpgw_filter.wasm";
/// Default of [`EdgeSettings::upstream_ca_file`]: the system bundle of Debian, Ubuntu (the
/// Envoy images) and Alpine.
pub const DEFAULT_UPSTREAM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            envoy_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            filter_wasm: DEFAULT_FILTER_WASM.to_owned(),
            filter_remote: None,
            cluster_naming: ClusterNaming::Mcpgw,
            upstream_ca_file: Some(DEFAULT_UPSTREAM_CA_FILE.to_owned()),
            relay: None,
            relay_auth: None,
            ratelimit: None,
            control_plane_tls: None,
            resolver: EdgeResolver::default(),
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            public_url: None,
            passthrough: None,
        }
    }
}

/// Why a snapshot cannot be translated, or one gateway cannot be served at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// A gateway's URL names no reachable endpoint. (The URL itself is not repeated: its
    /// query may hold a token.)
    #[error("gateway {gateway}: url: {reason}")]
    BadUrl {
        /// Gateway id.
        gateway: String,
        /// Why.
        reason: String,
    },
    /// A gateway's stored credentials cannot be opened or sent.
    #[error("gateway {gateway}: credentials: {reason}")]
    Credentials {
        /// Gateway id.
        gateway: String,
        /// Why.
        reason: String,
    },
    /// A gateway has no address Envoy may connect to.
    #[error("gateway {gateway}: {source}")]
    Address {
        /// Gateway id.
        gateway: String,
        /// Why.
        source: AddressError,
    },
    /// The snapshot has an upstream whose endpoint is unknown.
    #[error("upstream {0} has no endpoint")]
    MissingEndpoint(String),
    /// An external guardrail's target is not `host:port`.
    #[error("external guardrail target {0:?} is not host:port")]
    GuardTarget(String),
    /// The snapshot does not serialize.
    #[error("snapshot does not serialize: {0}")]
    Serialize(String),
    /// Two resources collide (e.g. two upstreams with one cluster name).
    #[error(transparent)]
    Resource(#[from] ResourceSetError),
}

impl EdgeError {
    /// A low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EdgeError::BadUrl { .. } => "bad_url",
            EdgeError::Credentials { .. } => "credentials",
            EdgeError::Address {
                source: AddressError::Forbidden(_),
                ..
            } => "forbidden_address",
            EdgeError::Address {
                source: AddressError::Unresolvable { .. },
                ..
            } => "unresolvable",
            EdgeError::MissingEndpoint(_) => "missing_endpoint",
            EdgeError::GuardTarget(_) => "guard_target",
            EdgeError::Serialize(_) => "serialize",
            EdgeError::Resource(_) => "resource",
        }
    }
}

/// Where an upstream gateway is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamEndpoint {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether to speak TLS (an `https` URL).
    pub tls: bool,
}

impl UpstreamEndpoint {
    /// The endpoint of an `http` or `https` URL.
    pub fn from_url(url: &str) -> Result<UpstreamEndpoint, String> {
        let u = url::Url::parse(url).map_err(|e| e.to_string())?;
        let tls = match u.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme {other:?} is not http or https")),
        };
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("no host".into()),
        };
        let port = u
            .port_or_known_default()
            .ok_or_else(|| "no port".to_owned())?;
        Ok(UpstreamEndpoint { host, port, tls })
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// One upstream as the edge reaches it: its access (where, as whom) and the checked
/// addresses Envoy connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeUpstream {
    /// Endpoint, path, credentials.
    pub access: UpstreamAccess,
    /// Addresses that passed the SSRF policy (at least one).
    pub addresses: Vec<IpAddr>,
    /// With identity mode token-exchange: the token endpoint's checked addresses.
    pub token_addresses: Vec<IpAddr>,
}

/// Upstreams the edge can serve, by gateway id.
pub type EdgeUpstreams = BTreeMap<String, EdgeUpstream>;

/// Filter configurations larger than this are sent compressed; smaller ones stay readable
/// JSON in Envoy's config dump.
pub const COMPRESS_ABOVE_BYTES: usize = 64 * 1024;

/// Translates `snapshot` into the resources every Envoy is served; the set's version is
/// the snapshot's. Every upstream of the snapshot must be in `upstreams`.
pub fn resources(
    snapshot: &Snapshot,
    upstreams: &EdgeUpstreams,
    settings: &EdgeSettings,
) -> Result<ResourceSet, EdgeError> {
    resources_passing(snapshot, upstreams, settings, None)
}

/// [`resources`], with the filter's passthrough path (a POST, GET or DELETE to
/// [`PASSTHROUGH_PATH`] that the filter lets through without routing it) sent to the
/// snapshot's upstream `passthrough` (a gateway id), at its path and authority (`None`: a
/// JSON-RPC 404, as for every request the filter does not route).
pub fn resources_passing(
    snapshot: &Snapshot,
    upstreams: &EdgeUpstreams,
    settings: &EdgeSettings,
    passthrough: Option<&str>,
) -> Result<ResourceSet, EdgeError> {
    let passthrough = match passthrough {
        Some(id) => Some(
            snapshot
                .upstreams
                .get(id)
                .ok_or_else(|| EdgeError::MissingEndpoint(id.to_owned()))?,
        ),
        None => None,
    };
    let route_header = snapshot.policy.route_header.as_str();
    let mut b = ResourceSet::builder(snapshot.version.clone());
    // Upstreams are keyed by gateway id; walk them sorted so output is deterministic.
    let sorted: BTreeMap<_, _> = snapshot.upstreams.iter().collect();
    let mut shared = std::collections::BTreeSet::new();
    for (gateway, upstream) in sorted {
        let edge = upstreams
            .get(gateway.as_str())
            .ok_or_else(|| EdgeError::MissingEndpoint(gateway.clone()))?;
        if matches!(settings.cluster_naming, ClusterNaming::Istio { .. }) {
            let access = &edge.access;
            if !access.headers.is_empty()
                || !access.target.query.is_empty()
                || access.token_endpoint.is_some()
            {
                tracing::warn!(
                    gateway = %gateway,
                    cluster = %upstream.cluster,
                    "the gateway's credentials (or token endpoint) live in its cluster, and an \
                     Istio gateway takes that cluster from istiod: they are not sent there \
                     (docs/kubernetes.md, \"Upstreams behind an Istio gateway\")"
                );
            }
            // Istio names a cluster by host and port: gateways on one server (different
            // paths) share it, and the first one's stands for all (an Istio gateway uses
            // istiod's).
            if !shared.insert(upstream.cluster.clone()) {
                continue;
            }
        }
        b.insert(
            upstream.cluster.clone(),
            &upstream_cluster(
                &upstream.cluster,
                edge,
                snapshot.policy.forward_client_credentials,
                settings,
            ),
        )?;
        if let Some(endpoint) = &edge.access.token_endpoint {
            let name = token_cluster_name(&upstream.cluster);
            let c = token_cluster(&name, endpoint, &edge.token_addresses, settings);
            b.insert(name, &c)?;
        }
    }
    if let Some(relay) = &settings.relay {
        b.insert(RELAY_CLUSTER, &relay_cluster(relay, settings))?;
    }
    if let Some(service) = &settings.ratelimit {
        b.insert(RATELIMIT_CLUSTER, &ratelimit_cluster(service, settings))?;
    }
    if let Some(module) = &settings.filter_remote {
        b.insert(WASM_CLUSTER, &wasm_cluster(&module.endpoint, settings))?;
    }
    // One cluster per external guardrail target (plugins that name a `cluster` bring
    // their own); several plugins on one target share it.
    let targets: std::collections::BTreeSet<&str> = snapshot
        .plugins
        .iter()
        .filter_map(|p| p.external.as_ref()?.target.as_deref())
        .collect();
    for target in targets {
        let name = mcpgw_core::snapshot::plugins::External::cluster_for(target);
        b.insert(name.clone(), &guard_cluster(&name, target)?)?;
    }
    let json = serde_json::to_string(snapshot).map_err(|e| EdgeError::Serialize(e.to_string()))?;
    // Large catalogs travel compressed (the filter reads both forms): each Envoy stream
    // gets its own copy on every push, so bytes here multiply by the fleet's size.
    let config = if json.len() > COMPRESS_ABOVE_BYTES {
        mcpgw_core::snapshot::compress(json.as_bytes())
    } else {
        json
    };
    b.insert(FILTER, &filter_config(config, settings))?;
    // The issuers' keys travel over ECDS, beside the filter's snapshot: a change reaches
    // the next request on every connection (see `jwt`), where a listener change would only
    // reach new connections.
    b.insert(super::jwt::JWT_FILTER, &super::jwt::jwt_authn(snapshot))?;
    let routes = Routes {
        route_header,
        passthrough,
        tool_routes: tool_route_targets(snapshot),
    };
    b.insert(ROUTES, &route_configuration(&routes, settings))?;
    b.insert(
        LISTENER,
        &listener(settings, route_header, snapshot.policy.max_body_bytes),
    )?;
    Ok(b.build())
}

fn any<M: prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

fn socket(host: &str, port: u16) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

/// The wasm filter with the snapshot as its plugin configuration.
fn filter_config(snapshot_json: String, settings: &EdgeSettings) -> TypedExtensionConfig {
    let code = match &settings.filter_remote {
        None => async_data_source::Specifier::Local(DataSource {
            specifier: Some(data_source::Specifier::Filename(
                settings.filter_wasm.clone(),
            )),
            ..Default::default()
        }),
        Some(module) => async_data_source::Specifier::Remote(RemoteDataSource {
            http_uri: Some(HttpUri {
                uri: module.url.clone(),
                timeout: secs(WASM_FETCH_TIMEOUT_S),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                    WASM_CLUSTER.to_owned(),
                )),
            }),
            sha256: module.sha256.clone(),
            retry_policy: Some(RetryPolicy {
                retry_back_off: Some(BackoffStrategy {
                    base_interval: secs(1),
                    max_interval: secs(30),
                }),
                num_retries: u32_value(WASM_FETCH_RETRIES),
                ..Default::default()
            }),
        }),
    };
    let vm = VmConfig {
        vm_id: VM_ID.to_owned(),
        runtime: "envoy.wasm.runtime.v8".to_owned(),
        code: Some(AsyncDataSource {
            specifier: Some(code),
        }),
        ..Default::default()
    };
    let wasm = Wasm {
        config: Some(PluginConfig {
            name: VM_ID.to_owned(),
            root_id: VM_ID.to_owned(),
            vm: Some(plugin_config::Vm::VmConfig(vm)),
            configuration: Some(any(&StringValue {
                value: snapshot_json,
            })),
            // Required: the filter pauses headers to read the body (see DESIGN.md).
            allow_on_headers_stop_iteration: Some(BoolValue { value: true }),
            // Fail closed: a dead VM answers 503, never lets requests pass unchecked
            // (mcpgw authenticates, authorizes and limits; FAIL_OPEN would skip all of
            // it). FAIL_RELOAD would restart the VM after a runtime error, but a module
            // that traps once will trap again on the same input; a trap is a bug to see.
            failure_policy: FailurePolicy::FailClosed as i32,
            ..Default::default()
        }),
    };
    TypedExtensionConfig {
        name: FILTER.to_owned(),
        typed_config: Some(any(&wasm)),
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn u32_value(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// What a route matches besides its route header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// GET: a session's stream.
    Get,
    /// A POST the filter marked as answered by a stream ([`STREAM_HEADER`]: a listen).
    MarkedStream,
    /// Everything else: an exchange.
    Exchange,
}

impl Kind {
    /// Whether the response is a long-lived stream (no deadline, an idle limit).
    fn streams(self) -> bool {
        self != Kind::Exchange
    }
}

/// Matches requests whose route header names `cluster` (`None`: any value), and of `kind`.
fn route_match(route_header: &str, cluster: Option<&str>, kind: Kind) -> RouteMatch {
    let by_cluster = HeaderMatcher {
        name: route_header.to_owned(),
        header_match_specifier: Some(match cluster {
            None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
            Some(c) => header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(c.to_owned())),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let by_kind = match kind {
        Kind::Get | Kind::Exchange => HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact("GET".into())),
                    ..Default::default()
                },
            )),
            invert_match: kind == Kind::Exchange,
            ..Default::default()
        },
        Kind::MarkedStream => HeaderMatcher {
            name: STREAM_HEADER.into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
            ..Default::default()
        },
    };
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
        headers: vec![by_cluster, by_kind],
        ..Default::default()
    }
}

/// What a route does with the requests it matches: to `cluster`, with the limits of a
/// stream or of an exchange.
fn route_action(cluster: route_action::ClusterSpecifier, kind: Kind) -> route::Action {
    let (timeout, idle_timeout) = if kind.streams() {
        // A stream lasts as long as the session (or the listen): no deadline, only an idle
        // limit.
        (secs(0), secs(STREAM_ROUTE_IDLE_TIMEOUT_S))
    } else {
        (secs(ROUTE_TIMEOUT_S), None)
    };
    route::Action::Route(RouteAction {
        cluster_specifier: Some(cluster),
        timeout,
        idle_timeout,
        ..Default::default()
    })
}

/// The path of the edge's passthrough endpoint: what a client posts to when it speaks to
/// the upstream behind the edge (`edge_passthrough`) rather than to a virtual server.
pub const PASSTHROUGH_PATH: &str = "/mcp";

/// What the routes are built from besides the settings.
#[derive(Debug, Clone)]
struct Routes<'a> {
    route_header: &'a str,
    /// The upstream the filter's passthrough path goes to (`None`: a 404).
    passthrough: Option<&'a Upstream>,
    /// The upstreams `policy.tool_routes` sends passthrough calls to, each the only one on
    /// its cluster.
    tool_routes: Vec<&'a Upstream>,
}

/// The upstreams `policy.tool_routes` names by cluster. A cluster several upstreams share
/// (Istio naming: one host and port, several paths) is left out: which path a call is for
/// cannot be told from the cluster alone, and the call keeps the client's path.
fn tool_route_targets(snapshot: &Snapshot) -> Vec<&Upstream> {
    let named: std::collections::BTreeSet<&str> = snapshot
        .policy
        .tool_routes
        .values()
        .map(String::as_str)
        .collect();
    named
        .into_iter()
        .filter_map(|cluster| {
            let mut on = snapshot.upstreams.values().filter(|u| u.cluster == cluster);
            match (on.next(), on.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        })
        .collect()
}

/// A route's rewrite of a request to `up`: its path (whatever the client's was; the query
/// is kept) and its authority.
fn point_at(action: &mut route::Action, up: &Upstream) {
    if let route::Action::Route(r) = action {
        r.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(RegexMatcher {
                regex: "^.*$".into(),
                ..Default::default()
            }),
            // RE2 reads a backslash in the substitution as an escape (`\1` is a group).
            substitution: up.path.replace('\\', "\\\\"),
        });
        if let Some(authority) = &up.authority {
            r.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()),
            );
        }
    }
}

/// Routes: the filter's choice, else the passthrough upstream for [`PASSTHROUGH_PATH`] if
/// there is one, else a JSON-RPC 404. A call the policy's `tool_routes` routes to an
/// upstream goes at that upstream's path and authority. With a relay, requests the filter
/// hands to it also carry the address of the listener the client reached (the relay sends
/// the session's messages back through that Envoy), the client's address, and the secret
/// that tells the relay the request came through an Envoy of this control plane.
fn route_configuration(r: &Routes<'_>, settings: &EdgeSettings) -> RouteConfiguration {
    let route_header = r.route_header;
    let not_routed = |name: &str, prefix: &str| Route {
        name: name.to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 404,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(
                    NOT_ROUTED_BODY.to_owned(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        })),
        response_headers_to_add: vec![header("content-type", "application/json")],
        ..Default::default()
    };
    let mut routes = Vec::with_capacity(8);
    if settings.relay.is_some() {
        let mut to_relay = vec![
            header(EDGE_ADDRESS_HEADER, "%DOWNSTREAM_LOCAL_ADDRESS%"),
            header(
                CLIENT_ADDRESS_HEADER,
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            ),
        ];
        if let Some(auth) = &settings.relay_auth {
            to_relay.push(header(RELAY_AUTH_HEADER, auth));
        }
        for (name, kind) in [
            ("relay-stream", Kind::Get),
            ("relay-listen", Kind::MarkedStream),
            ("relay", Kind::Exchange),
        ] {
            routes.push(Route {
                name: name.into(),
                r#match: Some(route_match(route_header, Some(RELAY_CLUSTER), kind)),
                action: Some(route_action(
                    route_action::ClusterSpecifier::Cluster(RELAY_CLUSTER.to_owned()),
                    kind,
                )),
                request_headers_to_add: to_relay.clone(),
                request_headers_to_remove: vec![STREAM_HEADER.to_owned()],
                ..Default::default()
            });
        }
    }
    // A passthrough call routed by the policy: the filter set only the cluster. (A
    // virtual server's request on that cluster already has the upstream's path and
    // authority: the same rewrite changes nothing.)
    for up in &r.tool_routes {
        for (name, kind) in [
            ("tool-routed-stream", Kind::Get),
            ("tool-routed-listen", Kind::MarkedStream),
            ("tool-routed", Kind::Exchange),
        ] {
            let mut action = route_action(
                route_action::ClusterSpecifier::Cluster(up.cluster.clone()),
                kind,
            );
            point_at(&mut action, up);
            routes.push(Route {
                name: format!("{name}:{}", up.cluster),
                r#match: Some(route_match(route_header, Some(&up.cluster), kind)),
                action: Some(action),
                request_headers_to_remove: vec![STREAM_HEADER.to_owned()],
                ..Default::default()
            });
        }
    }
    for (name, kind) in [
        ("routed-stream", Kind::Get),
        ("routed-listen", Kind::MarkedStream),
        ("routed", Kind::Exchange),
    ] {
        routes.push(Route {
            name: name.into(),
            r#match: Some(route_match(route_header, None, kind)),
            action: Some(route_action(
                route_action::ClusterSpecifier::ClusterHeader(route_header.to_owned()),
                kind,
            )),
            request_headers_to_remove: vec![STREAM_HEADER.to_owned()],
            ..Default::default()
        });
    }
    if let Some(up) = r.passthrough {
        for (name, kind) in [
            ("passthrough-stream", Kind::Get),
            ("passthrough", Kind::Exchange),
        ] {
            let mut action = route_action(
                route_action::ClusterSpecifier::Cluster(up.cluster.clone()),
                kind,
            );
            point_at(&mut action, up);
            let mut m = route_match(route_header, None, kind);
            // Not routed by the filter (a routed request matched above), to the path.
            m.headers.remove(0);
            m.path_specifier = Some(route_match::PathSpecifier::Path(PASSTHROUGH_PATH.into()));
            routes.push(Route {
                name: name.into(),
                r#match: Some(m),
                action: Some(action),
                ..Default::default()
            });
        }
    }
    routes.extend([
        not_routed("servers-not-routed", "/servers/"),
        not_routed("not-routed", "/"),
    ]);
    RouteConfiguration {
        name: ROUTES.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "mcpgw".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The MCP listener: strip the route header, the internal and the identity headers,
/// `jwt_authn` (ECDS), mcpgw filter (ECDS), router; routes over RDS; timeouts and
/// connection limits. Nothing in it depends on the issuers or their keys: a key rotation
/// never replaces the listener (whose old filter chain would live on in every kept-alive
/// connection).
fn listener(settings: &EdgeSettings, route_header: &str, max_body_bytes: u64) -> Listener {
    // A client-supplied route header would pick a cluster without the filter's say, and a
    // route computed before the filter runs would be cached with it; a client-supplied
    // relay header would speak for the edge. Remove them before any filter or route
    // lookup sees the request.
    let strip = EarlyHeaderMutation {
        mutations: std::iter::once(route_header)
            .chain(INTERNAL_HEADERS)
            .chain(IDENTITY_HEADERS)
            // Only the filter signs the principal for an upstream.
            .chain([mcpgw_core::upstream_identity::IDENTITY_HEADER])
            .map(|h| mutation_rules::HeaderMutation {
                action: Some(mutation_rules::header_mutation::Action::Remove(
                    h.to_owned(),
                )),
            })
            .collect(),
    };
    let hcm = HttpConnectionManager {
        stat_prefix: "mcpgw".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: ROUTES.to_owned(),
        })),
        early_header_mutation_extensions: vec![TypedExtensionConfig {
            name: "envoy.http.early_header_mutation.header_mutation".into(),
            typed_config: Some(any(&strip)),
        }],
        request_headers_timeout: secs(REQUEST_HEADERS_TIMEOUT_S),
        request_timeout: secs(REQUEST_TIMEOUT_S),
        // GET streams override it per route (STREAM_ROUTE_IDLE_TIMEOUT_S).
        stream_idle_timeout: secs(STREAM_IDLE_TIMEOUT_S),
        common_http_protocol_options: Some(CommonHttpProtocolOptions {
            idle_timeout: secs(DOWNSTREAM_IDLE_TIMEOUT_S),
            ..Default::default()
        }),
        http2_protocol_options: Some(Http2ProtocolOptions {
            max_concurrent_streams: u32_value(MAX_CONCURRENT_STREAMS),
            ..Default::default()
        }),
        http_filters: [super::jwt::jwt_authn_filter()]
            .into_iter()
            .chain([
                HttpFilter {
                    name: FILTER.to_owned(),
                    config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                        ExtensionConfigSource {
                            config_source: ads(),
                            type_urls: vec![<Wasm as prost::Name>::type_url()],
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
            ])
            .collect(),
        ..Default::default()
    };
    let limit = ConnectionLimit {
        stat_prefix: "mcpgw".into(),
        max_connections: Some(UInt64Value {
            value: MAX_DOWNSTREAM_CONNECTIONS,
        }),
        ..Default::default()
    };
    // The filter buffers whole request bodies up to the policy's limit; the connection
    // buffer must hold one (and the headers) or Envoy answers 413 before the filter can.
    let buffer = max_body_bytes
        .saturating_mul(2)
        .clamp(1024 * 1024, u64::from(u32::MAX));
    Listener {
        name: LISTENER.to_owned(),
        address: socket(
            &settings.envoy_listen.ip().to_string(),
            settings.envoy_listen.port(),
        ),
        per_connection_buffer_limit_bytes: Some(UInt32Value {
            value: u32::try_from(buffer).unwrap_or(u32::MAX),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![
                Filter {
                    name: "envoy.filters.network.connection_limit".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&limit))),
                },
                Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The upstream HTTP filters of a gateway's cluster: the client's credentials and the
/// verified token payload ([`IDENTITY_HEADERS`]) out, the
/// gateway's own in (and its URL's secret query parameters), then the codec. They run on
/// every request the cluster carries: routed calls and the filter's own
/// `dispatch_http_call`s (its upstream `initialize` and `DELETE`).
///
/// By identity mode: `static` adds the gateway's credentials; `none` adds nothing;
/// `identity-header` keeps the filter's signed `x-mcpgw-identity`; `token-exchange` keeps the
/// `authorization` the filter set to the exchanged token (the filter removes the client's
/// from every request it lets through, and its own calls never carry it). Every other
/// mode removes `x-mcpgw-identity` as well.
///
/// `forward_client`: the edge policy's `forward_client_credentials`, the operator's explicit
/// opt-in to token passthrough (the filter then keeps them too): the client's credentials
/// are not removed, though the gateway's own headers still replace those they name.
fn credential_filters(access: &UpstreamAccess, forward_client: bool) -> Vec<HttpFilter> {
    let mode = access.mode;
    let remove = CLIENT_CREDENTIAL_HEADERS
        .iter()
        .filter(|_| !forward_client)
        .filter(|h| !(mode == IdentityMode::TokenExchange && **h == "authorization"))
        .chain(&IDENTITY_HEADERS)
        .chain(
            (mode != IdentityMode::IdentityHeader)
                .then_some(&mcpgw_core::upstream_identity::IDENTITY_HEADER),
        )
        .map(|h| mutation_rules::HeaderMutation {
            action: Some(mutation_rules::header_mutation::Action::Remove(
                (*h).to_owned(),
            )),
        });
    let add = access
        .headers
        .iter()
        .map(|h| mutation_rules::HeaderMutation {
            action: Some(mutation_rules::header_mutation::Action::Append(header(
                &h.name,
                h.value.expose(),
            ))),
        });
    let query = access
        .target
        .query
        .iter()
        .map(|q| KeyValueMutation {
            append: Some(KeyValueAppend {
                record: Some(KeyValuePair {
                    key: q.name.clone(),
                    value: Some(envoy_types::pb::google::protobuf::Value {
                        kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                            q.value.expose().to_owned(),
                        )),
                    }),
                }),
                action: key_value_append::KeyValueAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let mutation = UpstreamHeaderMutation {
        mutations: Some(Mutations {
            request_mutations: remove.chain(add).collect(),
            query_parameter_mutations: query,
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        HttpFilter {
            name: "envoy.filters.http.header_mutation".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&mutation))),
            ..Default::default()
        },
        HttpFilter {
            name: "envoy.filters.http.upstream_codec".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                &UpstreamCodec::default(),
            ))),
            ..Default::default()
        },
    ]
}

/// HTTP/1.1 to an upstream, with `filters` as its upstream HTTP filters (none: Envoy's
/// default codec only).
fn http1_options(filters: Vec<HttpFilter>) -> HttpProtocolOptions {
    HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpProtocolOptions {
            idle_timeout: secs(UPSTREAM_IDLE_TIMEOUT_S),
            ..Default::default()
        }),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Http1ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        http_filters: filters,
        ..Default::default()
    }
}

/// HTTP/2 towards a gRPC service.
fn http2_options() -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    }
}

fn circuit_breakers() -> Option<CircuitBreakers> {
    Some(CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: u32_value(CLUSTER_MAX_REQUESTS),
            max_pending_requests: u32_value(CLUSTER_MAX_PENDING_REQUESTS),
            max_requests: u32_value(CLUSTER_MAX_REQUESTS),
            max_retries: u32_value(CLUSTER_MAX_RETRIES),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn tls_socket(tls: &UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(tls))),
    }
}

fn load_assignment(
    name: &str,
    hosts: &[String],
    port: u16,
    hostname: &str,
) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: hosts
                .iter()
                .map(|host| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: socket(host, port),
                        // What active health checks (if an operator adds them) send as Host.
                        hostname: hostname.to_owned(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One upstream gateway's cluster: HTTP/1.1 to the checked addresses (static endpoints:
/// Envoy never resolves the name itself), TLS with SNI and certificate checks on the name
/// for https, the gateway's credentials in its upstream filters, explicit limits.
fn upstream_cluster(
    name: &str,
    edge: &EdgeUpstream,
    forward_client: bool,
    settings: &EdgeSettings,
) -> Cluster {
    endpoint_cluster(
        name,
        &edge.access.target.endpoint,
        &edge.addresses,
        credential_filters(&edge.access, forward_client),
        settings,
    )
}

/// The cluster of a token-exchange gateway's token endpoint: like an upstream's, with the
/// gateway's client authentication added to every request (the filter's exchange calls).
fn token_cluster(
    name: &str,
    endpoint: &TokenEndpoint,
    addresses: &[IpAddr],
    settings: &EdgeSettings,
) -> Cluster {
    let access = UpstreamAccess {
        target: endpoint.target.clone(),
        headers: endpoint.headers.clone(),
        mode: IdentityMode::Static,
        token_endpoint: None,
    };
    endpoint_cluster(
        name,
        &endpoint.target.endpoint,
        addresses,
        credential_filters(&access, false),
        settings,
    )
}

/// A cluster of `e` at the checked `addresses`, with upstream HTTP `filters`.
fn endpoint_cluster(
    name: &str,
    e: &UpstreamEndpoint,
    addresses: &[IpAddr],
    filters: Vec<HttpFilter>,
    settings: &EdgeSettings,
) -> Cluster {
    let hosts: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    let transport_socket = e
        .tls
        .then(|| tls_socket(&upstream_tls(e, settings.upstream_ca_file.as_deref(), None)));
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: secs(CONNECT_TIMEOUT_S),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&http1_options(filters)),
        )]
        .into_iter()
        .collect(),
        transport_socket,
        circuit_breakers: circuit_breakers(),
        load_assignment: Some(load_assignment(name, &hosts, e.port, &e.host)),
        ..Default::default()
    }
}

/// The cluster Envoy fetches a [`RemoteModule`] through: the URL's host (resolved by
/// Envoy), TLS with SNI and the certificate checked on the name for https.
fn wasm_cluster(e: &UpstreamEndpoint, settings: &EdgeSettings) -> Cluster {
    let discovery = if e.ip().is_some() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    let transport_socket = e
        .tls
        .then(|| tls_socket(&upstream_tls(e, settings.upstream_ca_file.as_deref(), None)));
    Cluster {
        name: WASM_CLUSTER.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: secs(CONNECT_TIMEOUT_S),
        transport_socket,
        load_assignment: Some(load_assignment(
            WASM_CLUSTER,
            std::slice::from_ref(&e.host),
            e.port,
            &e.host,
        )),
        ..Default::default()
    }
}

/// The session relay's cluster: the control plane itself, so its name (if it is one) is
/// resolved by Envoy; TLS with Envoy's client certificate when configured.
fn relay_cluster(relay: &UpstreamEndpoint, settings: &EdgeSettings) -> Cluster {
    control_plane_cluster(RELAY_CLUSTER, relay, settings, false)
}

/// The rate-limit service's cluster: the control plane's gRPC listener (HTTP/2), reached
/// as the relay is.
fn ratelimit_cluster(service: &UpstreamEndpoint, settings: &EdgeSettings) -> Cluster {
    control_plane_cluster(RATELIMIT_CLUSTER, service, settings, true)
}

/// The cluster of an external guardrail at `target` (`host:port`, checked by the
/// snapshot's validation): plaintext HTTP/2 (gRPC), its name resolved by Envoy.
fn guard_cluster(name: &str, target: &str) -> Result<Cluster, EdgeError> {
    let bad = || EdgeError::GuardTarget(target.to_owned());
    mcpgw_core::guard::external::check_target(target).map_err(|_| bad())?;
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port: u16 = port.parse().map_err(|_| bad())?;
    let discovery = if host.parse::<IpAddr>().is_ok() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    Ok(Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: secs(CONNECT_TIMEOUT_S),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&http2_options()),
        )]
        .into_iter()
        .collect(),
        circuit_breakers: circuit_breakers(),
        load_assignment: Some(load_assignment(
            name,
            std::slice::from_ref(&host),
            port,
            &host,
        )),
        ..Default::default()
    })
}

/// A cluster of the control plane's listener at `relay` (`http2`: gRPC).
fn control_plane_cluster(
    name: &str,
    relay: &UpstreamEndpoint,
    settings: &EdgeSettings,
    http2: bool,
) -> Cluster {
    let discovery = if relay.ip().is_some() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    let alpn = |mut tls: UpstreamTlsContext| {
        if http2 && let Some(common) = tls.common_tls_context.as_mut() {
            common.alpn_protocols = vec!["h2".into()];
        }
        tls
    };
    let transport_socket = match &settings.control_plane_tls {
        Some(files) => Some(tls_socket(&alpn(upstream_tls(
            relay,
            Some(&files.ca_file),
            Some(files),
        )))),
        None => relay.tls.then(|| {
            tls_socket(&alpn(upstream_tls(
                relay,
                settings.upstream_ca_file.as_deref(),
                None,
            )))
        }),
    };
    let protocol = if http2 {
        http2_options()
    } else {
        http1_options(Vec::new())
    };
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: secs(CONNECT_TIMEOUT_S),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&protocol),
        )]
        .into_iter()
        .collect(),
        transport_socket,
        circuit_breakers: circuit_breakers(),
        load_assignment: Some(load_assignment(
            name,
            std::slice::from_ref(&relay.host),
            relay.port,
            &relay.host,
        )),
        ..Default::default()
    }
}

/// TLS towards `e`: SNI = its host name; the certificate checked against the CA bundle
/// `ca` and the host (DNS or IP SAN) when one is given; `client` presents a certificate.
fn upstream_tls(
    e: &UpstreamEndpoint,
    ca: Option<&str>,
    client: Option<&ControlPlaneTls>,
) -> UpstreamTlsContext {
    let validation = ca.map(|ca| {
        let san_type = if e.ip().is_some() {
            subject_alt_name_matcher::SanType::IpAddress
        } else {
            subject_alt_name_matcher::SanType::Dns
        };
        common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::Filename(ca.to_owned())),
                ..Default::default()
            }),
            match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                san_type: san_type as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(e.host.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
    });
    let file = |path: &str| {
        Some(DataSource {
            specifier: Some(data_source::Specifier::Filename(path.to_owned())),
            ..Default::default()
        })
    };
    UpstreamTlsContext {
        // SNI must be a host name: none for an IP (RFC 6066).
        sni: if e.ip().is_some() {
            String::new()
        } else {
            e.host.clone()
        },
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["http/1.1".into()],
            tls_certificates: client
                .map(|c| TlsCertificate {
                    certificate_chain: file(&c.cert_file),
                    private_key: file(&c.key_file),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            validation_context_type: validation,
            ..Default::default()
        }),
        ..Default::default()
    }
}
