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

use super::*;
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
        relay: None,
        relay_auth: None,
        control_plane_tls: None,
    }
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
            },
        );
    }
    s
}

fn endpoints_of(list: &[(&str, &str)]) -> Endpoints {
    list.iter()
        .map(|(id, url)| {
            (
                (*id).to_owned(),
                UpstreamEndpoint::from_url(url).map_err(|reason| EdgeError::BadUrl {
                    gateway: (*id).into(),
                    url: (*url).into(),
                    reason,
                }),
            )
        })
        .collect()
}

fn two_endpoints() -> Endpoints {
    endpoints_of(&[
        ("g1", "http://127.0.0.1:9000/mcp"),
        ("g2", "https://mcp.example.com/v1/mcp"),
        ("unused", "ftp://nowhere"),
    ])
}

fn endpoint_of(c: &Cluster) -> (String, u32, String) {
    let la = c.load_assignment.as_ref().unwrap();
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
        &la.endpoints[0].lb_endpoints[0].host_identifier
    else {
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

    let secure: Cluster = get(&set, TypeUrl::Cluster, "mcpgw-gw-g2");
    assert_eq!(
        secure.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32
        ))
    );
    assert_eq!(
        endpoint_of(&secure),
        ("mcp.example.com".into(), 443, "mcp.example.com".into())
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
        ("g1", "https://10.0.0.1:8443/mcp"),
        ("g2", "https://[::1]/mcp"),
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
    let routed = &vh.routes[0];
    let m = routed.r#match.as_ref().unwrap();
    assert_eq!(m.headers[0].name, "x-route");
    assert_eq!(
        m.headers[0].header_match_specifier,
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
    );
    let Some(route::Action::Route(action)) = &routed.action else {
        panic!("first route does not route");
    };
    assert_eq!(
        action.cluster_specifier,
        Some(route_action::ClusterSpecifier::ClusterHeader(
            "x-route".into()
        ))
    );
    assert_eq!(action.timeout.unwrap().seconds, 0);
    let fallback: Vec<_> = vh.routes[1..]
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
    assert_eq!(routes.len(), 4, "relay, routed, two fallbacks");
    // First: the filter's hand-over to the relay (an exact match beats "present").
    let relay = &routes[0];
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
    assert_eq!(action.timeout.unwrap().seconds, 0);
    let added = relay.request_headers_to_add[0].header.as_ref().unwrap();
    assert_eq!(added.key, mcpgw_core::edge::EDGE_ADDRESS_HEADER);
    assert_eq!(added.value, "%DOWNSTREAM_LOCAL_ADDRESS%");
    assert_eq!(routes[1].name, "routed");
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
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        panic!("no HCM");
    };
    let hcm: HttpConnectionManager = decode(any);
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        panic!("routes not over RDS");
    };
    assert_eq!(rds.route_config_name, ROUTES);
    let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [FILTER, "envoy.filters.http.router"]);
    let Some(http_filter::ConfigType::ConfigDiscovery(ecds)) = &hcm.http_filters[0].config_type
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
    assert_eq!(
        strip.mutations[0].action,
        Some(header_mutation::Action::Remove("x-mcpgw-cluster".into()))
    );
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
    let cases = [
        (
            "bad url",
            endpoints_of(&[("g1", "ftp://x"), ("g2", "http://127.0.0.1:1")]),
            "bad_url",
            "g1",
        ),
        (
            "missing",
            endpoints_of(&[("g1", "http://127.0.0.1:1")]),
            "missing_endpoint",
            "g2",
        ),
    ];
    for (case, ends, label, gateway) in cases {
        let e = resources(&snapshot("1"), &ends, &settings()).unwrap_err();
        assert_eq!(e.label(), label, "{case}");
        assert!(e.to_string().contains(gateway), "{case}: {e}");
    }
}
