//! Snapshot → xDS resources (pure).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::common::mutation_rules::v3 as mutation_rules;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, AsyncDataSource, ConfigSource, DataSource,
    ExtensionConfigSource, HeaderValue, HeaderValueOption, Http1ProtocolOptions,
    HttpProtocolOptions as CommonHttpProtocolOptions, SocketAddress, TransportSocket,
    TypedExtensionConfig, address, async_data_source, config_source, data_source,
    header_value_option, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::http::early_header_mutation::header_mutation::v3::HeaderMutation as EarlyHeaderMutation;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
    common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{PluginConfig, VmConfig, plugin_config};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, StringValue, UInt32Value};
use mcpgw_core::snapshot::Snapshot;

use crate::model::Gateway;
use crate::xds::{ResourceSet, ResourceSetError};

/// Name of the MCP listener (LDS).
pub const LISTENER: &str = "mcpgw";
/// Name of the listener's route configuration (RDS).
pub const ROUTES: &str = "mcpgw";
/// Name of the mcpgw filter's configuration (ECDS), also the filter's name in the chain.
pub const FILTER: &str = "mcpgw.filter";
/// Name of the session relay's cluster (the snapshot's `relay`).
pub const RELAY_CLUSTER: &str = "mcpgw-relay";
/// The wasm VM's id and the plugin's root id: constant, so a reconfiguration reuses the VM.
const VM_ID: &str = "mcpgw";
/// How long an upstream connection attempt may take. Long enough for a TLS handshake across
/// regions, short enough that a dead upstream fails the call before a client gives up.
const CONNECT_TIMEOUT_S: i64 = 5;
/// How long an idle upstream connection is kept: below the keep-alive timeouts common MCP
/// servers (uvicorn: 5 s is the default, but most deployments raise it) and proxies (60 s)
/// use, so Envoy closes first instead of racing a request into a closing socket.
const UPSTREAM_IDLE_TIMEOUT_S: i64 = 50;
/// JSON-RPC body of the fallback route (the filter let a request through without routing it).
const NOT_ROUTED_BODY: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"no upstream serves this request"}}"#;

/// Settings of the translation: what is the same for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Address the MCP listener binds on each Envoy.
    pub envoy_listen: SocketAddr,
    /// Path of the filter's `.wasm` module as Envoy sees it (on the Envoy's host).
    pub filter_wasm: String,
    /// CA bundle (on the Envoy's host) that https upstreams' certificates are verified
    /// against; `None` disables verification (encryption without authentication).
    pub upstream_ca_file: Option<String>,
    /// Where Envoys reach the session relay (`None`: no relay; the legacy SSE pair and
    /// multi-upstream GET streams are refused).
    pub relay: Option<UpstreamEndpoint>,
    /// The secret the relay route adds to every request it sends to the relay
    /// ([`mcpgw_core::edge::RELAY_AUTH_HEADER`]), which the relay checks.
    pub relay_auth: Option<String>,
    /// Files on the Envoys' hosts for TLS towards the control plane (the relay cluster):
    /// `None` means plaintext.
    pub control_plane_tls: Option<ControlPlaneTls>,
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
            upstream_ca_file: Some(DEFAULT_UPSTREAM_CA_FILE.to_owned()),
            relay: None,
            relay_auth: None,
            control_plane_tls: None,
        }
    }
}

/// Why a snapshot cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// A gateway's URL names no reachable endpoint.
    #[error("gateway {gateway}: url {url:?}: {reason}")]
    BadUrl {
        /// Gateway id.
        gateway: String,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The snapshot has an upstream whose endpoint is unknown.
    #[error("upstream {0} has no endpoint")]
    MissingEndpoint(String),
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
            EdgeError::MissingEndpoint(_) => "missing_endpoint",
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

    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Upstream endpoints by gateway id, or why a gateway's URL has none.
pub type Endpoints = HashMap<String, Result<UpstreamEndpoint, EdgeError>>;

/// Filter configurations larger than this are sent compressed; smaller ones stay readable
/// JSON in Envoy's config dump.
pub const COMPRESS_ABOVE_BYTES: usize = 64 * 1024;

/// The endpoints of `gateways`. Only gateways the snapshot serves need one, so a gateway
/// with an unusable URL fails the translation only if the snapshot uses it.
pub fn endpoints(gateways: &[Gateway]) -> Endpoints {
    gateways
        .iter()
        .map(|g| {
            let e =
                UpstreamEndpoint::from_url(g.url.as_str()).map_err(|reason| EdgeError::BadUrl {
                    gateway: g.id.clone(),
                    url: g.url.redacted(),
                    reason,
                });
            (g.id.clone(), e)
        })
        .collect()
}

/// Translates `snapshot` into the resources every Envoy is served; the set's version is
/// the snapshot's.
pub fn resources(
    snapshot: &Snapshot,
    endpoints: &Endpoints,
    settings: &EdgeSettings,
) -> Result<ResourceSet, EdgeError> {
    let route_header = snapshot.policy.route_header.as_str();
    let mut b = ResourceSet::builder(snapshot.version.clone());
    // Upstreams are keyed by gateway id; walk them sorted so output is deterministic.
    let sorted: BTreeMap<_, _> = snapshot.upstreams.iter().collect();
    for (gateway, upstream) in sorted {
        let endpoint = match endpoints.get(gateway.as_str()) {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(e.clone()),
            None => return Err(EdgeError::MissingEndpoint(gateway.clone())),
        };
        b.insert(
            upstream.cluster.clone(),
            &upstream_cluster(&upstream.cluster, endpoint, settings),
        )?;
    }
    if let Some(relay) = &settings.relay {
        b.insert(
            RELAY_CLUSTER,
            &upstream_cluster(RELAY_CLUSTER, relay, settings),
        )?;
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
    b.insert(
        ROUTES,
        &route_configuration(route_header, settings.relay.is_some()),
    )?;
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
    let vm = VmConfig {
        vm_id: VM_ID.to_owned(),
        runtime: "envoy.wasm.runtime.v8".to_owned(),
        code: Some(AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::Filename(
                    settings.filter_wasm.clone(),
                )),
                ..Default::default()
            })),
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
            // The default failure policy, FAIL_CLOSED: a dead VM answers 503, never
            // lets requests pass unchecked.
            ..Default::default()
        }),
    };
    TypedExtensionConfig {
        name: FILTER.to_owned(),
        typed_config: Some(any(&wasm)),
    }
}

/// Routes: the filter's choice, else a JSON-RPC 404. With a relay, requests the filter hands
/// to it also carry the address of the listener the client reached: the relay sends the
/// session's messages back through that Envoy.
fn route_configuration(route_header: &str, relay: bool) -> RouteConfiguration {
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
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "content-type".into(),
                value: "application/json".into(),
                ..Default::default()
            }),
            append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let routed = Route {
        name: "routed".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            headers: vec![HeaderMatcher {
                name: route_header.to_owned(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(
                    true,
                )),
                ..Default::default()
            }],
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::ClusterHeader(
                route_header.to_owned(),
            )),
            // No overall deadline: responses may be SSE streams that last as long as the
            // tool runs. Dead connections are caught by the idle timeouts instead.
            timeout: secs(0),
            ..Default::default()
        })),
        ..Default::default()
    };
    let to_relay = Route {
        name: "relay".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            headers: vec![HeaderMatcher {
                name: route_header.to_owned(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(
                            RELAY_CLUSTER.to_owned(),
                        )),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                RELAY_CLUSTER.to_owned(),
            )),
            // The legacy SSE stream lasts as long as the client's session.
            timeout: secs(0),
            ..Default::default()
        })),
        request_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: mcpgw_core::edge::EDGE_ADDRESS_HEADER.into(),
                value: "%DOWNSTREAM_LOCAL_ADDRESS%".into(),
                ..Default::default()
            }),
            append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut routes = Vec::with_capacity(4);
    if relay {
        routes.push(to_relay);
    }
    routes.extend([
        routed,
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

/// The MCP listener: strip the route header, mcpgw filter (ECDS), router; routes over RDS.
fn listener(settings: &EdgeSettings, route_header: &str, max_body_bytes: u64) -> Listener {
    // A client-supplied route header would pick a cluster without the filter's say, and a
    // route computed before the filter runs would be cached with it: remove it before any
    // filter or route lookup sees the request.
    let strip = EarlyHeaderMutation {
        mutations: vec![mutation_rules::HeaderMutation {
            action: Some(mutation_rules::header_mutation::Action::Remove(
                route_header.to_owned(),
            )),
        }],
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
        // SSE streams may stay quiet for long: no stream idle timeout.
        stream_idle_timeout: secs(0),
        http_filters: vec![
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
        ],
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
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One upstream gateway's cluster: HTTP/1.1, one endpoint, TLS with SNI for https.
fn upstream_cluster(name: &str, e: &UpstreamEndpoint, settings: &EdgeSettings) -> Cluster {
    let is_ip = e.ip().is_some();
    let discovery = if is_ip {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    let protocol = HttpProtocolOptions {
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
        ..Default::default()
    };
    let transport_socket = e.tls.then(|| TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &upstream_tls(e, settings),
        ))),
    });
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
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: socket(&e.host, e.port),
                        // What active health checks (if an operator adds them) send as Host.
                        hostname: e.host.clone(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// TLS towards an https upstream: SNI = its host; certificate checked against the CA
/// bundle and the host (DNS or IP SAN) when a bundle is configured.
fn upstream_tls(e: &UpstreamEndpoint, settings: &EdgeSettings) -> UpstreamTlsContext {
    let validation = settings.upstream_ca_file.as_ref().map(|ca| {
        let san_type = if e.ip().is_some() {
            subject_alt_name_matcher::SanType::IpAddress
        } else {
            subject_alt_name_matcher::SanType::Dns
        };
        common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::Filename(ca.clone())),
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
    UpstreamTlsContext {
        // SNI must be a host name: none for an IP (RFC 6066).
        sni: if e.ip().is_some() {
            String::new()
        } else {
            e.host.clone()
        },
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["http/1.1".into()],
            validation_context_type: validation,
            ..Default::default()
        }),
        ..Default::default()
    }
}
