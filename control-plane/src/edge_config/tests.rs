#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::common::mutation_rules::v3::header_mutation;
use envoy_types::pb::envoy::config::core::v3::{
    TypedExtensionConfig, address, async_data_source, data_source, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::http::early_header_mutation::header_mutation::v3::HeaderMutation;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use envoy_types::pb::google::protobuf::{Any, StringValue};
use mcpgw_core::catalog::Upstream;
use mcpgw_core::snapshot::Snapshot;
use prost::Message;

use envoy_types::pb::envoy::config::core::v3::header_value_option;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation as UpstreamHeaderMutation, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;

use super::*;
use crate::crypto::SecretBox;
use crate::model::{AuthType, Credentials, Gateway};
use crate::xds::{ResourceSet, TypeUrl};

fn decode<M: Message + Default + prost::Name>(any: &Any) -> M {
    assert_eq!(any.type_url, M::type_url());
    M::decode(any.value.as_slice()).unwrap()
}

fn get<M: Message + Default + prost::Name>(set: &ResourceSet, t: TypeUrl, name: &str) -> M {
    let r = set
        .get(t, name)
        .unwrap_or_else(|| panic!("no {t} {name:?}"));
    decode(r.body())
}

fn settings() -> EdgeSettings {
    EdgeSettings {
        envoy_listen: "0.0.0.0:10000".parse().unwrap(),
        filter_wasm: "/opt/mcpgw/filter.wasm".into(),
        upstream_ca_file: Some("/etc/ca.pem".into()),
        ..EdgeSettings::default()
    }
}

/// What a gateway's credentials are sealed to.
fn binding(g: &Gateway) -> crate::crypto::CredentialBinding<'_> {
    // The origin outlives the call through a leak: a test's few bytes.
    let origin: &'static str = Box::leak(g.url.origin().into_boxed_str());
    crate::crypto::CredentialBinding {
        gateway_id: &g.id,
        origin,
    }
}

fn gateway(id: &str, url: &str, auth_type: AuthType) -> Gateway {
    Gateway {
        id: id.into(),
        name: crate::model::GatewayName::parse(id).unwrap(),
        url: crate::model::UpstreamUrl::parse(url).unwrap(),
        transport: crate::model::Transport::default(),
        description: None,
        tags: crate::model::Tags::default(),
        enabled: true,
        reachable: true,
        auth_type,
        identity: Default::default(),
        capabilities: None,
        server_info: None,
        protocol_version: None,
        protocol_versions: vec![],
        last_seen: None,
        last_error: None,
        consecutive_failures: 0,
        collisions: vec![],
        skipped: vec![],
        created_at: String::new(),
        updated_at: String::new(),
        version: 1,
    }
}

/// The edge's view of gateways `(id, url, addresses)`, without credentials.
fn endpoints_of(list: &[(&str, &str, &[&str])]) -> EdgeUpstreams {
    list.iter()
        .map(|(id, url, addrs)| {
            let g = gateway(id, url, AuthType::None);
            let access = upstream_access(&g, None, None, &SecretBox::dev()).unwrap();
            let addresses = addrs.iter().map(|a| a.parse().unwrap()).collect();
            (
                (*id).to_owned(),
                EdgeUpstream {
                    access,
                    addresses,
                    token_addresses: Vec::new(),
                },
            )
        })
        .collect()
}

fn snapshot(version: &str) -> Snapshot {
    let mut s = Snapshot {
        version: version.into(),
        ..Snapshot::default()
    };
    for (id, path) in [("g1", "/mcp"), ("g2", "/v1/mcp")] {
        s.upstreams.insert(
            id.into(),
            Upstream {
                cluster: crate::snapshot::cluster_name(id),
                path: path.into(),
                authority: None,
                protocol_versions: Vec::new(),
                identity: Default::default(),
            },
        );
    }
    s
}

fn two_endpoints() -> EdgeUpstreams {
    endpoints_of(&[
        ("g1", "http://127.0.0.1:9000/mcp", &["127.0.0.1"]),
        (
            "g2",
            "https://mcp.example.com/v1/mcp",
            &["93.184.216.34", "93.184.216.35"],
        ),
    ])
}

fn endpoint_of(c: &Cluster) -> (String, u32, String) {
    endpoints_in(c).swap_remove(0)
}

/// Every endpoint of a cluster: (address, port, hostname).
fn endpoints_in(c: &Cluster) -> Vec<(String, u32, String)> {
    let la = c.load_assignment.as_ref().unwrap();
    la.endpoints[0]
        .lb_endpoints
        .iter()
        .map(endpoint_parts)
        .collect()
}

fn endpoint_parts(
    lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
) -> (String, u32, String) {
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
        panic!("no endpoint");
    };
    let Some(address::Address::SocketAddress(sa)) = &e.address.as_ref().unwrap().address else {
        panic!("no socket address");
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
        panic!("no port");
    };
    (sa.address.clone(), port, e.hostname.clone())
}

fn tls_of(c: &Cluster) -> Option<UpstreamTlsContext> {
    let ts = c.transport_socket.as_ref()?;
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        panic!("tls without typed config");
    };
    Some(decode(any))
}

#[test]
fn clusters_one_per_upstream_plain_and_tls() {
    let set = resources(&snapshot("7"), &two_endpoints(), &settings()).unwrap();
    assert_eq!(set.version(), "7");
    assert_eq!(set.len(TypeUrl::Cluster), 2);
    assert_eq!(set.len(TypeUrl::ClusterLoadAssignment), 0);

    let plain: Cluster = get(&set, TypeUrl::Cluster, "mcpgw-gw-g1");
    assert_eq!(
        plain.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32
        ))
    );
    assert_eq!(plain.connect_timeout.unwrap().seconds, 5);
    assert_eq!(
        endpoint_of(&plain),
        ("127.0.0.1".into(), 9000, "127.0.0.1".into())
    );
    assert!(tls_of(&plain).is_none());
    let http: HttpProtocolOptions = decode(
        &plain.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
    );
    assert!(matches!(
        http.upstream_protocol_options,
        Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(_)
                )
            }
        ))
    ));
    assert!(
        http.common_http_protocol_options
            .unwrap()
            .idle_timeout
            .is_some()
    );

    // A name: static endpoints on the addresses the control plane checked (Envoy never
    // resolves it itself, so it cannot be rebound past the SSRF guard); TLS stays on the
    // name.
    let secure: Cluster = get(&set, TypeUrl::Cluster, "mcpgw-gw-g2");
    assert_eq!(
        secure.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32
        ))
    );
    assert_eq!(
        endpoints_in(&secure),
        [
            ("93.184.216.34".into(), 443, "mcp.example.com".into()),
            ("93.184.216.35".into(), 443, "mcp.example.com".into())
        ]
    );
    let tls = tls_of(&secure).unwrap();
    assert_eq!(tls.sni, "mcp.example.com");
    let ctx = tls.common_tls_context.unwrap();
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        ctx.validation_context_type
    else {
        panic!("no validation context");
    };
    assert_eq!(
        v.trusted_ca.unwrap().specifier,
        Some(data_source::Specifier::Filename("/etc/ca.pem".into()))
    );
    let san = &v.match_typed_subject_alt_names[0];
    assert_eq!(san.san_type, subject_alt_name_matcher::SanType::Dns as i32);
    assert_eq!(
        san.matcher.as_ref().unwrap().match_pattern,
        Some(string_matcher::MatchPattern::Exact(
            "mcp.example.com".into()
        ))
    );
}

#[test]
fn tls_to_an_ip_sends_no_sni_and_may_skip_verification() {
    let s = EdgeSettings {
        upstream_ca_file: None,
        ..settings()
    };
    let ends = endpoints_of(&[
        ("g1", "https://10.0.0.1:8443/mcp", &["10.0.0.1"]),
        ("g2", "https://[::1]/mcp", &["::1"]),
    ]);
    let set = resources(&snapshot("1"), &ends, &s).unwrap();
    let c: Cluster = get(&set, TypeUrl::Cluster, "mcpgw-gw-g1");
    assert_eq!(endpoint_of(&c).1, 8443);
    let tls = tls_of(&c).unwrap();
    assert_eq!(tls.sni, "");
    assert!(
        tls.common_tls_context
            .unwrap()
            .validation_context_type
            .is_none()
    );
    let c: Cluster = get(&set, TypeUrl::Cluster, "mcpgw-gw-g2");
    assert_eq!(endpoint_of(&c).0, "::1");
}

#[test]
fn filter_config_carries_the_snapshot_over_a_fixed_vm() {
    let snap = snapshot("7");
    let set = resources(&snap, &two_endpoints(), &settings()).unwrap();
    let ecds: TypedExtensionConfig = get(&set, TypeUrl::ExtensionConfig, FILTER);
    assert_eq!(ecds.name, FILTER);
    let wasm: Wasm = decode(ecds.typed_config.as_ref().unwrap());
    let plugin = wasm.config.unwrap();
    assert_eq!(plugin.root_id, "mcpgw");
    assert_eq!(
        plugin.allow_on_headers_stop_iteration.map(|b| b.value),
        Some(true)
    );
    let Some(plugin_config::Vm::VmConfig(vm)) = &plugin.vm else {
        panic!("no vm_config");
    };
    assert_eq!(vm.vm_id, "mcpgw");
    assert_eq!(vm.runtime, "envoy.wasm.runtime.v8");
    let Some(async_data_source::Specifier::Local(local)) = &vm.code.as_ref().unwrap().specifier
    else {
        panic!("code is not local");
    };
    assert_eq!(
        local.specifier,
        Some(data_source::Specifier::Filename(
            "/opt/mcpgw/filter.wasm".into()
        ))
    );
    let json: StringValue = decode(plugin.configuration.as_ref().unwrap());
    assert_eq!(Snapshot::from_config(json.value.as_bytes()).unwrap(), snap);

    // A new catalog changes only the filter's configuration: same VM, same listener,
    // routes and clusters (so only ECDS is pushed, and the VM is not restarted).
    let mut next = snapshot("8");
    next.upstreams.get_mut("g1").unwrap().path = "/other".into();
    let set2 = resources(&next, &two_endpoints(), &settings()).unwrap();
    let diff = set2.diff(&set);
    assert_eq!(
        diff.changed,
        vec![(TypeUrl::ExtensionConfig, FILTER.to_owned())]
    );
    let ecds2: TypedExtensionConfig = get(&set2, TypeUrl::ExtensionConfig, FILTER);
    let plugin2 = decode::<Wasm>(ecds2.typed_config.as_ref().unwrap())
        .config
        .unwrap();
    assert_eq!(plugin2.vm, plugin.vm);
    assert_ne!(plugin2.configuration, plugin.configuration);
}

#[test]
fn large_catalogs_travel_compressed_and_small_ones_stay_readable() {
    let config_of = |snap: &Snapshot| {
        let set = resources(snap, &two_endpoints(), &settings()).unwrap();
        let ecds: TypedExtensionConfig = get(&set, TypeUrl::ExtensionConfig, FILTER);
        let plugin = decode::<Wasm>(ecds.typed_config.as_ref().unwrap())
            .config
            .unwrap();
        decode::<StringValue>(plugin.configuration.as_ref().unwrap()).value
    };
    let small = snapshot("1");
    assert!(
        config_of(&small).starts_with('{'),
        "small snapshots stay JSON"
    );

    let mut large = snapshot("2");
    large.policy.denied_tools = (0..20_000).map(|i| format!("g1__tool_{i:05}")).collect();
    let json_len = serde_json::to_string(&large).unwrap().len();
    assert!(json_len > super::translate::COMPRESS_ABOVE_BYTES);
    let sent = config_of(&large);
    assert!(
        sent.starts_with(mcpgw_core::snapshot::COMPRESSED_PREFIX),
        "{:.40}",
        sent
    );
    assert!(
        sent.len() < json_len / 4,
        "{} bytes sent for {json_len} of JSON",
        sent.len()
    );
    assert_eq!(Snapshot::from_config(sent.as_bytes()).unwrap(), large);
}

#[test]
fn routes_follow_the_filters_header_else_answer_404() {
    let mut snap = snapshot("1");
    snap.policy.route_header = "x-route".into();
    let set = resources(&snap, &two_endpoints(), &settings()).unwrap();
    let rc: RouteConfiguration = get(&set, TypeUrl::RouteConfiguration, ROUTES);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, vec!["*"]);
    // GET streams and POSTs the filter marks as streams (a listen): no deadline, an idle
    // limit; everything else: a deadline.
    for (i, name, kind, timeout, idle) in [
        (
            0,
            "routed-stream",
            "get",
            0,
            Some(STREAM_ROUTE_IDLE_TIMEOUT_S),
        ),
        (
            1,
            "routed-listen",
            "marked",
            0,
            Some(STREAM_ROUTE_IDLE_TIMEOUT_S),
        ),
        (2, "routed", "other", ROUTE_TIMEOUT_S, None),
    ] {
        let routed = &vh.routes[i];
        assert_eq!(routed.name, name);
        let m = routed.r#match.as_ref().unwrap();
        assert_eq!(m.headers[0].name, "x-route");
        assert_eq!(
            m.headers[0].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
        );
        if kind == "marked" {
            assert_eq!(m.headers[1].name, mcpgw_core::edge::STREAM_HEADER);
            assert!(!m.headers[1].invert_match);
        } else {
            assert_eq!(m.headers[1].name, ":method");
            assert_eq!(m.headers[1].invert_match, kind == "other", "{name}");
        }
        // The marker never reaches an upstream.
        assert_eq!(
            routed.request_headers_to_remove,
            vec![mcpgw_core::edge::STREAM_HEADER.to_owned()]
        );
        let Some(route::Action::Route(action)) = &routed.action else {
            panic!("{name} does not route");
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::ClusterHeader(
                "x-route".into()
            ))
        );
        assert_eq!(action.timeout.unwrap().seconds, timeout, "{name}");
        assert_eq!(action.idle_timeout.map(|d| d.seconds), idle, "{name}");
    }
    let fallback: Vec<_> = vh.routes[3..]
        .iter()
        .map(|r| {
            let Some(route_match::PathSpecifier::Prefix(p)) =
                &r.r#match.as_ref().unwrap().path_specifier
            else {
                panic!("not a prefix");
            };
            let Some(route::Action::DirectResponse(d)) = &r.action else {
                panic!("fallback {p} is not a direct response");
            };
            let Some(data_source::Specifier::InlineString(body)) =
                &d.body.as_ref().unwrap().specifier
            else {
                panic!("no body");
            };
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["jsonrpc"], "2.0");
            (p.as_str(), d.status)
        })
        .collect();
    assert_eq!(fallback, vec![("/servers/", 404), ("/", 404)]);
}

/// The routing action of the route named `name`.
fn action_of<'a>(
    rc: &'a RouteConfiguration,
    name: &str,
) -> &'a envoy_types::pb::envoy::config::route::v3::RouteAction {
    let r = rc.virtual_hosts[0]
        .routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name}"));
    let Some(route::Action::Route(a)) = &r.action else {
        panic!("{name} does not route");
    };
    a
}

#[test]
fn the_passthrough_gateway_gets_mcp_at_its_path_and_authority_and_tool_routes_their_upstreams() {
    let mut snap = snapshot("1");
    snap.upstreams.get_mut("g2").unwrap().authority = Some("mcp.example.com".into());
    snap.policy.route_header = "x-route".into();
    snap.policy
        .tool_routes
        .insert("echo".into(), crate::snapshot::cluster_name("g1"));
    let set = resources_passing(&snap, &two_endpoints(), &settings(), Some("g2")).unwrap();
    let rc: RouteConfiguration = get(&set, TypeUrl::RouteConfiguration, ROUTES);
    let names: Vec<&str> = rc.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let g1 = crate::snapshot::cluster_name("g1");
    assert_eq!(
        names,
        [
            format!("tool-routed-stream:{g1}").as_str(),
            &format!("tool-routed-listen:{g1}"),
            &format!("tool-routed:{g1}"),
            "routed-stream",
            "routed-listen",
            "routed",
            "passthrough-stream",
            "passthrough",
            "servers-not-routed",
            "not-routed"
        ]
    );
    // `/mcp` (the query aside) that the filter did not route: to g2, at /v1/mcp.
    for (name, timeout) in [("passthrough-stream", 0), ("passthrough", ROUTE_TIMEOUT_S)] {
        let r = rc.virtual_hosts[0]
            .routes
            .iter()
            .find(|r| r.name == name)
            .unwrap();
        let m = r.r#match.as_ref().unwrap();
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::Path("/mcp".into()))
        );
        assert!(m.headers.iter().all(|h| h.name != "x-route"), "{name}");
        assert_eq!(m.headers[0].name, ":method");
        let a = action_of(&rc, name);
        assert_eq!(
            a.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                crate::snapshot::cluster_name("g2")
            ))
        );
        let rw = a.regex_rewrite.as_ref().unwrap();
        assert_eq!(rw.pattern.as_ref().unwrap().regex, "^.*$");
        assert_eq!(rw.substitution, "/v1/mcp");
        assert_eq!(
            a.host_rewrite_specifier,
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
                "mcp.example.com".into()
            ))
        );
        assert_eq!(a.timeout.unwrap().seconds, timeout, "{name}");
    }
    // A call `tool_routes` sends to g1's cluster goes at g1's path; no authority to set.
    let a = action_of(&rc, &format!("tool-routed:{g1}"));
    assert_eq!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(g1.clone()))
    );
    assert_eq!(a.regex_rewrite.as_ref().unwrap().substitution, "/mcp");
    assert_eq!(a.host_rewrite_specifier, None);
    // Without a passthrough gateway, `/mcp` is the 404 it was; a passthrough gateway the
    // snapshot does not have is an error naming it.
    let set = resources(&snap, &two_endpoints(), &settings()).unwrap();
    let rc: RouteConfiguration = get(&set, TypeUrl::RouteConfiguration, ROUTES);
    assert!(
        rc.virtual_hosts[0]
            .routes
            .iter()
            .all(|r| !r.name.starts_with("passthrough"))
    );
    let err = resources_passing(&snap, &two_endpoints(), &settings(), Some("g9")).unwrap_err();
    assert_eq!(err, EdgeError::MissingEndpoint("g9".into()));
}

#[test]
fn a_relay_gets_a_cluster_and_a_route_that_names_the_listener() {
    let without = resources(&snapshot("1"), &two_endpoints(), &settings()).unwrap();
    assert!(without.get(TypeUrl::Cluster, RELAY_CLUSTER).is_none());
    let s = EdgeSettings {
        relay: Some(UpstreamEndpoint {
            host: "relay.mcpgw.svc".into(),
            port: 18001,
            tls: false,
        }),
        relay_auth: Some("relay-secret".into()),
        ..settings()
    };
    let mut snap = snapshot("1");
    snap.policy.route_header = "x-route".into();
    let set = resources(&snap, &two_endpoints(), &s).unwrap();
    let c: Cluster = get(&set, TypeUrl::Cluster, RELAY_CLUSTER);
    assert_eq!(
        endpoint_of(&c),
        ("relay.mcpgw.svc".into(), 18001, "relay.mcpgw.svc".into())
    );
    assert!(tls_of(&c).is_none());
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32
        ))
    );
    let rc: RouteConfiguration = get(&set, TypeUrl::RouteConfiguration, ROUTES);
    let routes = &rc.virtual_hosts[0].routes;
    assert_eq!(
        routes.len(),
        8,
        "relay (GET, listen, other), routed (GET, listen, other), two fallbacks"
    );
    // First: the filter's hand-over to the relay (an exact match beats "present").
    for (relay, timeout) in [
        (&routes[0], 0),
        (&routes[1], 0),
        (&routes[2], ROUTE_TIMEOUT_S),
    ] {
        let m = relay.r#match.as_ref().unwrap();
        assert_eq!(m.headers[0].name, "x-route");
        let Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)) =
            &m.headers[0].header_match_specifier
        else {
            panic!("relay route does not match the header's value");
        };
        assert_eq!(
            sm.match_pattern,
            Some(string_matcher::MatchPattern::Exact(RELAY_CLUSTER.into()))
        );
        let Some(route::Action::Route(action)) = &relay.action else {
            panic!("relay route does not route");
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                RELAY_CLUSTER.into()
            ))
        );
        assert_eq!(action.timeout.unwrap().seconds, timeout);
        // What the relay is told, overwriting whatever a client sent.
        let added: Vec<(&str, &str, i32)> = relay
            .request_headers_to_add
            .iter()
            .map(|h| {
                let hv = h.header.as_ref().unwrap();
                (hv.key.as_str(), hv.value.as_str(), h.append_action)
            })
            .collect();
        let overwrite = header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        assert_eq!(
            added,
            [
                (
                    mcpgw_core::edge::EDGE_ADDRESS_HEADER,
                    "%DOWNSTREAM_LOCAL_ADDRESS%",
                    overwrite
                ),
                (
                    mcpgw_core::edge::CLIENT_ADDRESS_HEADER,
                    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    overwrite
                ),
                (
                    mcpgw_core::edge::RELAY_AUTH_HEADER,
                    "relay-secret",
                    overwrite
                ),
            ]
        );
    }
    assert_eq!(routes[3].name, "routed-stream");
    // The relay's secret is in the routes only: not in the filter's configuration.
    let ecds = set.get(TypeUrl::ExtensionConfig, FILTER).unwrap();
    assert!(!contains(&ecds.body().value, b"relay-secret"));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_rate_limit_service_gets_an_http2_cluster_like_the_relays() {
    let without = resources(&snapshot("1"), &two_endpoints(), &settings()).unwrap();
    assert!(without.get(TypeUrl::Cluster, RATELIMIT_CLUSTER).is_none());
    let s = EdgeSettings {
        ratelimit: Some(UpstreamEndpoint {
            host: "10.1.2.3".into(),
            port: 18002,
            tls: false,
        }),
        control_plane_tls: Some(ControlPlaneTls {
            ca_file: "/etc/mcpgw/ca.pem".into(),
            cert_file: "/etc/mcpgw/envoy.pem".into(),
            key_file: "/etc/mcpgw/envoy.key".into(),
        }),
        ..settings()
    };
    let set = resources(&snapshot("1"), &two_endpoints(), &s).unwrap();
    let c: Cluster = get(&set, TypeUrl::Cluster, RATELIMIT_CLUSTER);
    assert_eq!(
        endpoint_of(&c),
        ("10.1.2.3".into(), 18002, "10.1.2.3".into())
    );
    let tls = tls_of(&c).expect("TLS towards the service");
    let ctx = tls.common_tls_context.unwrap();
    assert_eq!(ctx.alpn_protocols, ["h2"]);
    assert_eq!(
        ctx.tls_certificates.len(),
        1,
        "the Envoy's client certificate"
    );
    let options = &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    let options = HttpProtocolOptions::decode(options.value.as_slice()).unwrap();
    assert!(
        matches!(
            options.upstream_protocol_options,
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                    )
                }
            ))
        ),
        "{options:?}"
    );
    // The relay keeps HTTP/1.1.
    let relay = resources(
        &snapshot("1"),
        &two_endpoints(),
        &EdgeSettings {
            relay: s.ratelimit.clone(),
            ..s.clone()
        },
    )
    .unwrap();
    let c: Cluster = get(&relay, TypeUrl::Cluster, RELAY_CLUSTER);
    assert_eq!(
        tls_of(&c)
            .unwrap()
            .common_tls_context
            .unwrap()
            .alpn_protocols,
        ["http/1.1"]
    );
}

#[test]
fn the_relay_cluster_presents_the_envoys_client_certificate_when_configured() {
    let s = EdgeSettings {
        relay: Some(UpstreamEndpoint {
            host: "10.1.2.3".into(),
            port: 18001,
            tls: false,
        }),
        control_plane_tls: Some(ControlPlaneTls {
            ca_file: "/etc/mcpgw/ca.pem".into(),
            cert_file: "/etc/mcpgw/envoy.pem".into(),
            key_file: "/etc/mcpgw/envoy.key".into(),
        }),
        ..settings()
    };
    let set = resources(&snapshot("1"), &two_endpoints(), &s).unwrap();
    let c: Cluster = get(&set, TypeUrl::Cluster, RELAY_CLUSTER);
    let tls = tls_of(&c).expect("TLS towards the relay");
    assert_eq!(tls.sni, "", "an IP gets no SNI");
    let ctx = tls.common_tls_context.unwrap();
    let cert = &ctx.tls_certificates[0];
    assert_eq!(
        cert.certificate_chain.as_ref().unwrap().specifier,
        Some(data_source::Specifier::Filename(
            "/etc/mcpgw/envoy.pem".into()
        ))
    );
    assert_eq!(
        cert.private_key.as_ref().unwrap().specifier,
        Some(data_source::Specifier::Filename(
            "/etc/mcpgw/envoy.key".into()
        ))
    );
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        ctx.validation_context_type
    else {
        panic!("the relay's certificate is not checked");
    };
    assert_eq!(
        v.trusted_ca.unwrap().specifier,
        Some(data_source::Specifier::Filename("/etc/mcpgw/ca.pem".into()))
    );
    let san = &v.match_typed_subject_alt_names[0];
    assert_eq!(
        san.san_type,
        subject_alt_name_matcher::SanType::IpAddress as i32
    );
}

#[test]
fn listener_takes_routes_and_filter_over_ads_and_strips_the_route_header() {
    let set = resources(&snapshot("1"), &two_endpoints(), &settings()).unwrap();
    assert_eq!(set.len(TypeUrl::Listener), 1);
    let l: Listener = get(&set, TypeUrl::Listener, LISTENER);
    let Some(address::Address::SocketAddress(sa)) = &l.address.as_ref().unwrap().address else {
        panic!("no address");
    };
    assert_eq!(sa.address, "0.0.0.0");
    assert_eq!(
        sa.port_specifier,
        Some(socket_address::PortSpecifier::PortValue(10000))
    );
    assert!(l.per_connection_buffer_limit_bytes.unwrap().value >= 4 * 1024 * 1024);
    let filters = &l.filter_chains[0].filters;
    assert_eq!(filters[0].name, "envoy.filters.network.connection_limit");
    let Some(filter::ConfigType::TypedConfig(any)) = &filters[0].config_type else {
        panic!("no connection limit");
    };
    let limit: ConnectionLimit = decode(any);
    assert_eq!(
        limit.max_connections.unwrap().value,
        MAX_DOWNSTREAM_CONNECTIONS
    );
    let Some(filter::ConfigType::TypedConfig(any)) = &filters[1].config_type else {
        panic!("no HCM");
    };
    let hcm: HttpConnectionManager = decode(any);
    let secs = |d: Option<envoy_types::pb::google::protobuf::Duration>| d.map(|d| d.seconds);
    assert_eq!(
        secs(hcm.request_headers_timeout),
        Some(REQUEST_HEADERS_TIMEOUT_S)
    );
    assert_eq!(secs(hcm.request_timeout), Some(REQUEST_TIMEOUT_S));
    assert_eq!(secs(hcm.stream_idle_timeout), Some(STREAM_IDLE_TIMEOUT_S));
    assert_eq!(
        secs(hcm.common_http_protocol_options.unwrap().idle_timeout),
        Some(DOWNSTREAM_IDLE_TIMEOUT_S)
    );
    assert_eq!(
        hcm.http2_protocol_options
            .unwrap()
            .max_concurrent_streams
            .unwrap()
            .value,
        MAX_CONCURRENT_STREAMS
    );
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        panic!("routes not over RDS");
    };
    assert_eq!(rds.route_config_name, ROUTES);
    let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [JWT_FILTER, FILTER, "envoy.filters.http.router"]);
    let Some(http_filter::ConfigType::ConfigDiscovery(ecds)) = &hcm.http_filters[1].config_type
    else {
        panic!("filter not over ECDS");
    };
    assert_eq!(ecds.type_urls, [<Wasm as prost::Name>::type_url()]);
    assert!(ecds.default_config.is_none());
    let strip: HeaderMutation = decode(
        hcm.early_header_mutation_extensions[0]
            .typed_config
            .as_ref()
            .unwrap(),
    );
    let removed: Vec<_> = strip
        .mutations
        .iter()
        .map(|m| match &m.action {
            Some(header_mutation::Action::Remove(h)) => h.as_str(),
            other => panic!("not a removal: {other:?}"),
        })
        .collect();
    assert_eq!(
        removed,
        [
            "x-mcpgw-cluster",
            "mcpgw-relay-auth",
            "mcpgw-edge-address",
            "mcpgw-client-address",
            "mcpgw-relay-upstreams",
            "mcpgw-relay-eras",
            "mcpgw-stream",
            "x-mcpgw-jwt-payload",
            "x-mcpgw-identity"
        ]
    );
    assert!(!removed.contains(&mcpgw_core::edge::UPSTREAM_HEADER));
}

#[test]
fn endpoints_come_from_gateway_urls() {
    let cases = [
        (
            "ip",
            "http://127.0.0.1:9000/mcp",
            Ok(("127.0.0.1", 9000, false)),
        ),
        (
            "default https port",
            "https://a.example/mcp",
            Ok(("a.example", 443, true)),
        ),
        (
            "default http port",
            "http://a.example",
            Ok(("a.example", 80, false)),
        ),
        ("ipv6", "http://[::1]:8080/", Ok(("::1", 8080, false))),
        ("scheme", "ftp://a.example/", Err(())),
        ("garbage", "not a url", Err(())),
    ];
    for (case, url, want) in cases {
        let got = UpstreamEndpoint::from_url(url)
            .map(|e| (e.host, e.port, e.tls))
            .map_err(|_| ());
        let want = want.map(|(h, p, t)| (h.to_owned(), p, t));
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn an_upstream_without_a_usable_endpoint_fails_naming_the_gateway() {
    // A URL the edge cannot use no longer reaches it: `UpstreamUrl` admits http(s) only.
    assert!(crate::model::UpstreamUrl::parse("ftp://x?token=hush").is_err());
    // An upstream of the snapshot the edge has no access for: the translation fails.
    let ends = endpoints_of(&[("g1", "http://127.0.0.1:1", &["127.0.0.1"])]);
    let e = resources(&snapshot("1"), &ends, &settings()).unwrap_err();
    assert_eq!(e.label(), "missing_endpoint");
    assert!(e.to_string().contains("g2"), "{e}");
}

/// The upstream filters of one gateway's cluster.
fn upstream_filters(
    c: &Cluster,
) -> Vec<
    envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
> {
    let http: HttpProtocolOptions = decode(
        &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
    );
    http.http_filters
}

fn mutations_of(c: &Cluster) -> Mutations {
    let filters = upstream_filters(c);
    let names: Vec<_> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.upstream_codec"
        ]
    );
    let Some(http_filter::ConfigType::TypedConfig(any)) = &filters[0].config_type else {
        panic!("no header mutation config");
    };
    decode::<UpstreamHeaderMutation>(any).mutations.unwrap()
}

/// Each gateway's cluster replaces the client's credentials with the gateway's own, and
/// adds its URL's query parameters; the secrets are in that cluster and nowhere else.
#[test]
fn clusters_replace_client_credentials_with_the_gateways_own() {
    let secrets = SecretBox::dev();
    let with_token = gateway("g1", "http://127.0.0.1:9000/mcp", AuthType::Bearer);
    let sealed = secrets
        .seal_credentials(
            &Credentials::Bearer {
                token: "up-secret".into(),
            },
            binding(&with_token),
        )
        .unwrap();
    let with_query = gateway(
        "g2",
        "https://mcp.example.com/v1/mcp?api_key=q-secret&team=a",
        AuthType::None,
    );
    let mut ends = EdgeUpstreams::new();
    for (g, sealed, addr) in [
        (&with_token, Some(sealed.as_str()), "127.0.0.1"),
        (&with_query, None, "93.184.216.34"),
    ] {
        let access = upstream_access(g, sealed, None, &secrets).unwrap();
        assert!(
            !format!("{access:?}").contains("secret"),
            "Debug shows a secret: {access:?}"
        );
        ends.insert(
            g.id.clone(),
            EdgeUpstream {
                access,
                addresses: vec![addr.parse().unwrap()],
                token_addresses: Vec::new(),
            },
        );
    }
    let mut snap = snapshot("1");
    for (id, a) in &ends {
        snap.upstreams.insert(
            id.clone(),
            a.access
                .target
                .snapshot_entry(crate::snapshot::cluster_name(id), Default::default()),
        );
    }
    assert_eq!(
        snap.upstreams["g2"].path, "/v1/mcp",
        "no query in the snapshot"
    );
    let set = resources(&snap, &ends, &settings()).unwrap();

    let removed_then_added = |m: &Mutations| -> Vec<String> {
        m.request_mutations
            .iter()
            .map(|m| match &m.action {
                Some(header_mutation::Action::Remove(h)) => format!("-{h}"),
                Some(header_mutation::Action::Append(h)) => {
                    assert_eq!(
                        h.append_action,
                        header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                    );
                    let hv = h.header.as_ref().unwrap();
                    format!("+{}: {}", hv.key, hv.value)
                }
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let g1 = mutations_of(&get(&set, TypeUrl::Cluster, "mcpgw-gw-g1"));
    assert_eq!(
        removed_then_added(&g1),
        [
            "-authorization",
            "-proxy-authorization",
            "-cookie",
            "-x-mcpgw-jwt-payload",
            "-x-mcpgw-identity",
            "+authorization: Bearer up-secret"
        ]
    );
    assert!(g1.query_parameter_mutations.is_empty());
    let g2 = mutations_of(&get(&set, TypeUrl::Cluster, "mcpgw-gw-g2"));
    assert_eq!(
        removed_then_added(&g2),
        [
            "-authorization",
            "-proxy-authorization",
            "-cookie",
            "-x-mcpgw-jwt-payload",
            "-x-mcpgw-identity"
        ]
    );
    let query: Vec<(String, String)> = g2
        .query_parameter_mutations
        .iter()
        .map(|q| {
            let r = q.append.as_ref().unwrap().record.as_ref().unwrap();
            let Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(v)) =
                &r.value.as_ref().unwrap().kind
            else {
                panic!("not a string");
            };
            (r.key.clone(), v.clone())
        })
        .collect();
    assert_eq!(
        query,
        [
            ("api_key".to_owned(), "q-secret".to_owned()),
            ("team".to_owned(), "a".to_owned())
        ]
    );

    // The secrets travel in their clusters only.
    for t in TypeUrl::ALL {
        for r in set.resources(t) {
            let body = &r.body().value;
            let own =
                |id: &str| t == TypeUrl::Cluster && r.name() == crate::snapshot::cluster_name(id);
            assert_eq!(contains(body, b"up-secret"), own("g1"), "{t} {}", r.name());
            assert_eq!(contains(body, b"q-secret"), own("g2"), "{t} {}", r.name());
        }
    }
    let json = serde_json::to_string(&snap).unwrap();
    assert!(!json.contains("secret"), "{json}");

    // The edge policy's explicit opt-in to token passthrough: the client's credentials are
    // kept (the gateway's own still replace the header they name).
    snap.policy.forward_client_credentials = true;
    let set = resources(&snap, &ends, &settings()).unwrap();
    let g1 = mutations_of(&get(&set, TypeUrl::Cluster, "mcpgw-gw-g1"));
    assert_eq!(
        removed_then_added(&g1),
        [
            "-x-mcpgw-jwt-payload",
            "-x-mcpgw-identity",
            "+authorization: Bearer up-secret"
        ]
    );
    let g2 = mutations_of(&get(&set, TypeUrl::Cluster, "mcpgw-gw-g2"));
    assert_eq!(
        removed_then_added(&g2),
        ["-x-mcpgw-jwt-payload", "-x-mcpgw-identity"]
    );
}

/// Per identity mode: what each gateway's cluster removes and adds; a token-exchange
/// gateway's token endpoint gets its own cluster adding the client authentication; the
/// snapshot holds the identity (the header key, the exchange's cluster) and no secret.
#[test]
fn identity_modes_shape_the_clusters_and_the_snapshot() {
    use crate::model::{GatewayIdentity, IdentityMode, TokenExchangeSettings};
    use base64::Engine as _;
    use mcpgw_core::upstream_identity::UpstreamIdentity;
    let secrets = SecretBox::dev();
    let mut with_token = gateway("g1", "http://127.0.0.1:9000/mcp", AuthType::Bearer);
    let sealed = secrets
        .seal_credentials(
            &Credentials::Bearer {
                token: "up-secret".into(),
            },
            binding(&with_token),
        )
        .unwrap();
    let client_secret = secrets
        .seal_for(crate::model::CLIENT_SECRET_LABEL, b"g1", b"cs-secret")
        .unwrap();
    let exchange = GatewayIdentity {
        mode: IdentityMode::TokenExchange,
        token_exchange: Some(TokenExchangeSettings {
            token_endpoint: "http://127.0.0.1:9100/oauth/token?realm=a".into(),
            client_id: "gw one".into(),
            audience: Some("aud-1".into()),
            resource: None,
            scope: None,
        }),
    };
    let cases: [(&str, GatewayIdentity, &[&str]); 4] = [
        (
            "none",
            GatewayIdentity {
                mode: IdentityMode::None,
                token_exchange: None,
            },
            &[
                "-authorization",
                "-proxy-authorization",
                "-cookie",
                "-x-mcpgw-jwt-payload",
                "-x-mcpgw-identity",
            ],
        ),
        (
            "static",
            GatewayIdentity::default(),
            &[
                "-authorization",
                "-proxy-authorization",
                "-cookie",
                "-x-mcpgw-jwt-payload",
                "-x-mcpgw-identity",
                "+authorization: Bearer up-secret",
            ],
        ),
        (
            "identity-header",
            GatewayIdentity {
                mode: IdentityMode::IdentityHeader,
                token_exchange: None,
            },
            &[
                "-authorization",
                "-proxy-authorization",
                "-cookie",
                "-x-mcpgw-jwt-payload",
            ],
        ),
        (
            "token-exchange",
            exchange,
            &[
                "-proxy-authorization",
                "-cookie",
                "-x-mcpgw-jwt-payload",
                "-x-mcpgw-identity",
            ],
        ),
    ];
    let shown = |m: &Mutations| -> Vec<String> {
        m.request_mutations
            .iter()
            .map(|m| match &m.action {
                Some(header_mutation::Action::Remove(h)) => format!("-{h}"),
                Some(header_mutation::Action::Append(h)) => {
                    let hv = h.header.as_ref().unwrap();
                    format!("+{}: {}", hv.key, hv.value)
                }
                other => panic!("{other:?}"),
            })
            .collect()
    };
    for (name, identity, want) in cases {
        with_token.identity = identity;
        let access =
            upstream_access(&with_token, Some(&sealed), Some(&client_secret), &secrets).unwrap();
        let cluster = crate::snapshot::cluster_name("g1");
        let mut snap = snapshot("1");
        snap.upstreams.retain(|id, _| id == "g1");
        let entry_identity = access.snapshot_identity("g1", &cluster, &secrets);
        snap.upstreams.insert(
            "g1".into(),
            access
                .target
                .snapshot_entry(cluster.clone(), entry_identity),
        );
        let ends: EdgeUpstreams = [(
            "g1".to_owned(),
            EdgeUpstream {
                access,
                addresses: vec!["127.0.0.1".parse().unwrap()],
                token_addresses: vec!["127.0.0.1".parse().unwrap()],
            },
        )]
        .into();
        let set = resources(&snap, &ends, &settings()).unwrap();
        let c = mutations_of(&get(&set, TypeUrl::Cluster, &cluster));
        assert_eq!(shown(&c), want, "{name}");
        let token_cluster = crate::edge_config::token_cluster_name(&cluster);
        let has_token_cluster = set
            .resources(TypeUrl::Cluster)
            .any(|r| r.name() == token_cluster);
        assert_eq!(has_token_cluster, name == "token-exchange", "{name}");
        match &snap.upstreams["g1"].identity {
            UpstreamIdentity::TokenExchange(t) => {
                assert_eq!(t.cluster, token_cluster);
                assert_eq!(
                    (t.path.as_str(), t.authority.as_str()),
                    ("/oauth/token?realm=a", "127.0.0.1:9100")
                );
                assert_eq!(t.audience.as_deref(), Some("aud-1"));
                let tc = mutations_of(&get(&set, TypeUrl::Cluster, &token_cluster));
                // RFC 6749 §2.3.1: form-encoded, then Basic.
                let basic = base64::engine::general_purpose::STANDARD.encode("gw+one:cs-secret");
                assert_eq!(
                    shown(&tc).last().unwrap(),
                    &format!("+authorization: Basic {basic}")
                );
            }
            UpstreamIdentity::IdentityHeader(h) => {
                assert_eq!(h.audience, "g1");
                assert_eq!(h.key.0, secrets.derive("mcpgw/identity-header/v1/g1"));
            }
            other => assert_eq!(other.is_static(), name == "static", "{name}"),
        }
        // The secrets are in clusters only.
        let json = serde_json::to_string(&snap).unwrap();
        assert!(!json.contains("secret"), "{name}: {json}");
        for r in set.resources(TypeUrl::Listener) {
            assert!(!contains(&r.body().value, b"cs-secret"));
        }
    }
}

#[test]
fn credentials_become_headers_or_a_precise_error() {
    let secrets = SecretBox::dev();
    let bound = gateway("g", "http://127.0.0.1:1/mcp", AuthType::None);
    let seal = |c: Credentials| secrets.seal_credentials(&c, binding(&bound)).unwrap();
    let headers = |auth: AuthType, sealed: Option<String>| {
        upstream_access(
            &gateway("g", "http://127.0.0.1:1/mcp", auth),
            sealed.as_deref(),
            None,
            &secrets,
        )
        .map(|a| {
            a.headers
                .iter()
                .map(|h| format!("{}: {}", h.name, h.value.expose()))
                .collect::<Vec<_>>()
        })
        .map_err(|e| e.label())
    };
    let pair = |k: &str, v: &str| crate::model::HeaderPair {
        key: k.into(),
        value: v.into(),
    };
    type Case<'a> = (
        &'a str,
        Result<Vec<String>, &'a str>,
        Result<Vec<&'a str>, &'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        ("none", headers(AuthType::None, None), Ok(vec![])),
        (
            "bearer",
            headers(
                AuthType::Bearer,
                Some(seal(Credentials::Bearer { token: "t".into() })),
            ),
            Ok(vec!["authorization: Bearer t"]),
        ),
        (
            "basic",
            headers(
                AuthType::Basic,
                Some(seal(Credentials::Basic {
                    username: "u".into(),
                    password: "p".into(),
                })),
            ),
            Ok(vec!["authorization: Basic dTpw"]),
        ),
        (
            "headers",
            headers(
                AuthType::Headers,
                Some(seal(Credentials::Headers {
                    headers: vec![pair("X-Api-Key", "k"), pair("x-team", "a")],
                })),
            ),
            Ok(vec!["x-api-key: k", "x-team: a"]),
        ),
        (
            "a header Envoy owns",
            headers(
                AuthType::Headers,
                Some(seal(Credentials::Headers {
                    headers: vec![pair("Host", "evil")],
                })),
            ),
            Err("credentials"),
        ),
        (
            "a value with a newline",
            headers(
                AuthType::Headers,
                Some(seal(Credentials::Headers {
                    headers: vec![pair("x-k", "a\r\nb")],
                })),
            ),
            Err("credentials"),
        ),
        (
            "sealed under another key",
            headers(
                AuthType::Bearer,
                Some(
                    SecretBox::from_key([9; 32])
                        .seal_credentials(
                            &Credentials::Bearer { token: "t".into() },
                            binding(&bound),
                        )
                        .unwrap(),
                ),
            ),
            Err("credentials"),
        ),
    ];
    for (case, got, want) in cases {
        let want = want.map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>());
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn clusters_have_explicit_circuit_breakers() {
    const { assert!(CLUSTER_MAX_REQUESTS > 1024, "above Envoy's default") };
    let set = resources(&snapshot("1"), &two_endpoints(), &settings()).unwrap();
    for name in ["mcpgw-gw-g1", "mcpgw-gw-g2"] {
        let c: Cluster = get(&set, TypeUrl::Cluster, name);
        let t = &c.circuit_breakers.unwrap().thresholds[0];
        let v = |x: Option<envoy_types::pb::google::protobuf::UInt32Value>| x.unwrap().value;
        assert_eq!(v(t.max_requests), CLUSTER_MAX_REQUESTS, "{name}");
        assert_eq!(v(t.max_connections), CLUSTER_MAX_REQUESTS, "{name}");
        assert_eq!(
            v(t.max_pending_requests),
            CLUSTER_MAX_PENDING_REQUESTS,
            "{name}"
        );
        assert_eq!(v(t.max_retries), CLUSTER_MAX_RETRIES, "{name}");
    }
}

/// A resolver whose answers a test sets per name.
#[derive(Default)]
struct Answers(std::sync::Mutex<std::collections::HashMap<String, Vec<std::net::IpAddr>>>);

impl Resolver for Answers {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        _port: u16,
    ) -> futures::future::BoxFuture<'a, std::io::Result<Vec<std::net::IpAddr>>> {
        let got = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            got.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))
        })
    }
}

#[tokio::test]
async fn addresses_are_checked_with_the_ssrf_policy() {
    let answers = Answers::default();
    let set = |host: &str, addrs: &[&str]| {
        answers.0.lock().unwrap().insert(
            host.into(),
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
        );
    };
    set(
        "public.test",
        &["93.184.216.34", "93.184.216.34", "2606:4700::1111"],
    );
    set("rebound.test", &["169.254.169.254"]);
    set("mixed.test", &["93.184.216.34", "127.0.0.1"]);
    set("empty.test", &[]);
    let deny = crate::config::SsrfPolicy::default();
    let loopback = crate::config::SsrfPolicy {
        allow_loopback: true,
        ..crate::config::SsrfPolicy::default()
    };
    let label = |r: Result<Vec<std::net::IpAddr>, AddressError>| match r {
        Ok(a) => Ok(a.iter().map(ToString::to_string).collect::<Vec<_>>()),
        Err(AddressError::Forbidden(_)) => Err("forbidden"),
        Err(AddressError::Unresolvable { .. }) => Err("unresolvable"),
    };
    let cases = [
        (
            "public",
            "public.test",
            deny,
            Ok(vec!["93.184.216.34", "2606:4700::1111"]),
        ),
        ("metadata", "rebound.test", loopback, Err("forbidden")),
        ("one bad address", "mixed.test", deny, Err("forbidden")),
        (
            "loopback allowed",
            "mixed.test",
            loopback,
            Ok(vec!["93.184.216.34", "127.0.0.1"]),
        ),
        ("no answer", "absent.test", deny, Err("unresolvable")),
        ("empty answer", "empty.test", deny, Err("unresolvable")),
        ("literal loopback", "127.0.0.1", deny, Err("forbidden")),
        (
            "literal public",
            "93.184.216.34",
            deny,
            Ok(vec!["93.184.216.34"]),
        ),
    ];
    for (case, host, policy, want) in cases {
        let got = label(checked_addresses(&answers, host, 443, policy).await);
        let want = want.map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>());
        assert_eq!(got, want, "{case}");
    }
}

fn listener_hcm(set: &ResourceSet) -> HttpConnectionManager {
    let l: Listener = get(set, TypeUrl::Listener, LISTENER);
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[1].config_type
    else {
        panic!("no HCM");
    };
    decode(any)
}

#[test]
fn issuers_with_keys_put_jwt_authn_before_the_filter_over_ecds() {
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
        JwtAuthentication, jwt_provider, jwt_requirement, requirement_rule,
    };
    let jwt_of = |set: &ResourceSet| -> JwtAuthentication {
        let c: TypedExtensionConfig = get(set, TypeUrl::ExtensionConfig, JWT_FILTER);
        decode(&c.typed_config.unwrap())
    };
    let plain = resources(&snapshot("1"), &two_endpoints(), &settings()).unwrap();
    let names = |hcm: &HttpConnectionManager| -> Vec<String> {
        hcm.http_filters.iter().map(|f| f.name.clone()).collect()
    };
    assert_eq!(
        names(&listener_hcm(&plain)),
        [JWT_FILTER, FILTER, "envoy.filters.http.router"]
    );
    // No issuer: no provider, no rule (every request passes untouched).
    let empty = jwt_of(&plain);
    assert!(
        empty.providers.is_empty() && empty.rules.is_empty(),
        "{empty:?}"
    );

    let mut s = snapshot("2");
    s.auth = serde_json::from_value(serde_json::json!({
        "issuers": {
            "idp": {"issuer": "https://idp.example.com", "algorithms": ["RS256"],
                    "jwks": {"keys": [{"kty": "RSA", "kid": "k1", "n": "bg", "e": "AQAB"}]}},
            "pending": {"issuer": "https://pending.example.com", "algorithms": ["ES256"]}
        },
        "clock_skew_seconds": 20
    }))
    .unwrap();
    s.validate().unwrap();
    let set = resources(&s, &two_endpoints(), &settings()).unwrap();
    let hcm = listener_hcm(&set);
    assert_eq!(
        names(&hcm),
        [JWT_FILTER, FILTER, "envoy.filters.http.router"],
        "jwt_authn first: the filter reads what it verified"
    );
    let Some(http_filter::ConfigType::ConfigDiscovery(ecds)) = &hcm.http_filters[0].config_type
    else {
        panic!("jwt_authn not over ECDS");
    };
    assert_eq!(
        ecds.type_urls,
        [<JwtAuthentication as prost::Name>::type_url()]
    );
    // The listener does not depend on the issuers or their keys: a rotation never drains
    // connections onto a stale jwt_authn.
    let l = |set: &ResourceSet| -> Listener { get(set, TypeUrl::Listener, LISTENER) };
    assert_eq!(l(&set), l(&plain));
    let jwt = jwt_of(&set);
    // An issuer without keys yet gets no provider: its tokens fail, as no key would verify
    // them.
    assert_eq!(jwt.providers.keys().collect::<Vec<_>>(), ["idp"]);
    let p = &jwt.providers["idp"];
    assert_eq!(p.issuer, "https://idp.example.com");
    assert!(p.require_expiration && p.forward);
    assert_eq!(p.forward_payload_header, PAYLOAD_HEADER);
    assert_eq!(p.clock_skew_seconds, 20);
    assert_eq!(p.jwt_cache_config.unwrap().jwt_cache_size, JWT_CACHE_SIZE);
    assert_eq!(
        (
            p.from_headers[0].name.as_str(),
            p.from_headers[0].value_prefix.as_str()
        ),
        ("authorization", "Bearer ")
    );
    assert!(p.from_params.is_empty(), "no tokens in query strings");
    let Some(jwt_provider::JwksSourceSpecifier::LocalJwks(ds)) = &p.jwks_source_specifier else {
        panic!("keys not inlined");
    };
    let Some(data_source::Specifier::InlineString(jwks)) = &ds.specifier else {
        panic!("keys not inline");
    };
    assert!(jwks.contains(r#""kid":"k1""#), "{jwks}");
    let Some(requirement_rule::RequirementType::Requires(req)) = &jwt.rules[0].requirement_type
    else {
        panic!("no requirement");
    };
    let Some(jwt_requirement::RequiresType::RequiresAny(any)) = &req.requires_type else {
        panic!("not requires_any: {req:?}");
    };
    let kinds: Vec<String> = any
        .requirements
        .iter()
        .map(|r| match &r.requires_type {
            Some(jwt_requirement::RequiresType::ProviderName(n)) => n.clone(),
            Some(jwt_requirement::RequiresType::AllowMissingOrFailed(_)) => "*".into(),
            other => panic!("{other:?}"),
        })
        .collect();
    // Named providers use their token caches; the last one lets missing and failed tokens
    // through for the filter to answer in MCP's terms.
    assert_eq!(kinds, ["idp", "*"]);
    // No issuer has keys: no provider.
    s.auth.issuers.remove("idp");
    let set = resources(&s, &two_endpoints(), &settings()).unwrap();
    assert_eq!(l(&set), l(&plain));
    assert!(jwt_of(&set).providers.is_empty());
}

#[test]
fn each_external_guardrail_target_gets_one_http2_cluster() {
    let mut snap = snapshot("1");
    let plugin = |name: &str, external: serde_json::Value| {
        serde_json::from_value::<mcpgw_core::snapshot::plugins::Plugin>(
            serde_json::json!({"name": name, "external": external}),
        )
        .unwrap()
    };
    snap.plugins = vec![
        plugin("a", serde_json::json!({"target": "guard.ns.svc:50051"})),
        plugin(
            "b",
            serde_json::json!({"target": "guard.ns.svc:50051", "failure_mode": "open"}),
        ),
        plugin("c", serde_json::json!({"target": "10.9.8.7:9000"})),
        plugin(
            "d",
            serde_json::json!({"cluster": "brought-by-the-operator"}),
        ),
    ];
    let set = resources(&snap, &two_endpoints(), &settings()).unwrap();
    let dns: Cluster = get(&set, TypeUrl::Cluster, "mcpgw-guard-guard.ns.svc_50051");
    assert_eq!(
        endpoint_of(&dns),
        ("guard.ns.svc".into(), 50051, "guard.ns.svc".into())
    );
    assert_eq!(
        dns.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32
        ))
    );
    assert!(tls_of(&dns).is_none(), "plaintext h2c");
    let options = &dns.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    let options = HttpProtocolOptions::decode(options.value.as_slice()).unwrap();
    assert!(
        format!("{options:?}").contains("Http2ProtocolOptions"),
        "{options:?}"
    );
    let ip: Cluster = get(&set, TypeUrl::Cluster, "mcpgw-guard-10.9.8.7_9000");
    assert_eq!(
        ip.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32
        ))
    );
    assert!(
        set.get(TypeUrl::Cluster, "brought-by-the-operator")
            .is_none()
    );
    let guards = set
        .resources(TypeUrl::Cluster)
        .filter(|r| r.name().starts_with("mcpgw-guard-"))
        .count();
    assert_eq!(guards, 2, "one per target");
}

#[test]
fn a_module_named_by_url_is_fetched_through_its_own_cluster_and_pinned_by_digest() {
    let sha = "0123456789ABCDEF".repeat(4);
    let s = EdgeSettings {
        filter_remote: Some(
            RemoteModule::new("https://wasm.example.com/m/mcpgw_filter.wasm", &sha).unwrap(),
        ),
        ..settings()
    };
    let set = resources(&snapshot("7"), &two_endpoints(), &s).unwrap();
    let ecds: TypedExtensionConfig = get(&set, TypeUrl::ExtensionConfig, FILTER);
    let plugin = decode::<Wasm>(ecds.typed_config.as_ref().unwrap())
        .config
        .unwrap();
    assert_eq!(
        plugin.failure_policy,
        envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy::FailClosed as i32
    );
    let Some(plugin_config::Vm::VmConfig(vm)) = &plugin.vm else {
        panic!("no vm_config");
    };
    let Some(async_data_source::Specifier::Remote(remote)) = &vm.code.as_ref().unwrap().specifier
    else {
        panic!("code is not remote");
    };
    assert_eq!(remote.sha256, sha.to_ascii_lowercase());
    let uri = remote.http_uri.as_ref().unwrap();
    assert_eq!(uri.uri, "https://wasm.example.com/m/mcpgw_filter.wasm");
    assert_eq!(
        uri.http_upstream_type,
        Some(
            envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                WASM_CLUSTER.into()
            )
        )
    );
    assert_eq!(
        remote
            .retry_policy
            .as_ref()
            .unwrap()
            .num_retries
            .map(|n| n.value),
        Some(WASM_FETCH_RETRIES)
    );
    // The cluster: the URL's host, resolved by Envoy, TLS checked on the name.
    let c: Cluster = get(&set, TypeUrl::Cluster, WASM_CLUSTER);
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32
        ))
    );
    assert_eq!(
        endpoint_of(&c),
        ("wasm.example.com".into(), 443, "wasm.example.com".into())
    );
    assert_eq!(tls_of(&c).unwrap().sni, "wasm.example.com");
    // A local module needs no such cluster.
    let local = resources(&snapshot("7"), &two_endpoints(), &settings()).unwrap();
    assert!(local.get(TypeUrl::Cluster, WASM_CLUSTER).is_none());
}

#[test]
fn a_remote_module_needs_an_http_url_and_a_full_digest() {
    let sha = "a".repeat(64);
    for (name, url, digest) in [
        ("short digest", "https://w/m.wasm", "abc"),
        ("not hex", "https://w/m.wasm", &"g".repeat(64)[..]),
        ("scheme", "file:///m.wasm", &sha[..]),
        ("no url", "not a url", &sha[..]),
    ] {
        assert!(RemoteModule::new(url, digest).is_err(), "{name}");
    }
    assert!(RemoteModule::new("http://10.0.0.1:8000/m.wasm", &sha).is_ok());
}

#[test]
fn istio_naming_names_upstream_clusters_as_istiod_does() {
    let istio = ClusterNaming::Istio {
        domain: "cluster.local".into(),
    };
    let endpoint = |url: &str| UpstreamEndpoint::from_url(url).unwrap();
    for (name, naming, url, want) in [
        (
            "a Service by its short name",
            &istio,
            "http://tools.mcp.svc:8080/mcp",
            "outbound|8080||tools.mcp.svc.cluster.local",
        ),
        (
            "a Service by its full name",
            &istio,
            "http://tools.mcp.svc.cluster.local/mcp",
            "outbound|80||tools.mcp.svc.cluster.local",
        ),
        (
            "a ServiceEntry host",
            &istio,
            "https://API.example.com/v1/mcp",
            "outbound|443||api.example.com",
        ),
        (
            "another domain",
            &ClusterNaming::Istio {
                domain: "corp.internal".into(),
            },
            "http://tools.mcp.svc:9000/",
            "outbound|9000||tools.mcp.svc.corp.internal",
        ),
        (
            "the control plane's own",
            &ClusterNaming::Mcpgw,
            "http://tools.mcp.svc:8080/mcp",
            "mcpgw-gw-g1",
        ),
    ] {
        assert_eq!(naming.cluster_name("g1", &endpoint(url)), want, "{name}");
    }
}

#[test]
fn istio_named_upstreams_on_one_server_share_one_cluster() {
    let s = EdgeSettings {
        cluster_naming: ClusterNaming::Istio {
            domain: "cluster.local".into(),
        },
        ..settings()
    };
    let ups = endpoints_of(&[
        ("g1", "http://127.0.0.1:9000/a/mcp", &["127.0.0.1"]),
        ("g2", "http://127.0.0.1:9000/b/mcp", &["127.0.0.1"]),
    ]);
    let mut snap = snapshot("7");
    for (id, u) in snap.upstreams.iter_mut() {
        u.cluster = s
            .cluster_naming
            .cluster_name(id, &ups[id.as_str()].access.target.endpoint);
    }
    let set = resources(&snap, &ups, &s).unwrap();
    let names: Vec<&str> = set.resources(TypeUrl::Cluster).map(|r| r.name()).collect();
    assert_eq!(names, ["outbound|9000||127.0.0.1"]);
}
