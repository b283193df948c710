use super::wire::DiscoveryResponse;
use super::*;
use crate::limits::ratelimit::bytes_field;

fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(&mut out, 1, type_url.as_bytes());
    bytes_field(&mut out, 2, value);
    out
}

/// A `TypedExtensionConfig` named `name`: a Wasm filter whose configuration is a
/// `StringValue` holding `json`.
fn extension(name: &str, json: &str) -> Vec<u8> {
    let mut string = Vec::new();
    bytes_field(&mut string, 1, json.as_bytes());
    let mut plugin = Vec::new();
    bytes_field(&mut plugin, 1, b"mcpgw");
    bytes_field(&mut plugin, 2, b"mcpgw");
    bytes_field(
        &mut plugin,
        4,
        &any("type.googleapis.com/google.protobuf.StringValue", &string),
    );
    let mut wasm = Vec::new();
    bytes_field(&mut wasm, 1, &plugin);
    let mut out = Vec::new();
    bytes_field(&mut out, 1, name.as_bytes());
    bytes_field(
        &mut out,
        2,
        &any(
            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            &wasm,
        ),
    );
    out
}

fn response(version: &str, nonce: &str, type_url: &str, resources: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(&mut out, 1, version.as_bytes());
    for r in resources {
        bytes_field(&mut out, 2, &any(TYPE_URL, r));
    }
    bytes_field(&mut out, 4, type_url.as_bytes());
    bytes_field(&mut out, 5, nonce.as_bytes());
    out
}

fn source() -> Source {
    Source {
        cluster: "mcpgw-xds".into(),
        resource: DEFAULT_RESOURCE.into(),
        node_id: None,
    }
}

/// What a plugin configuration should give: no source, a source, or an error on a field.
type Want = Option<Result<Source, &'static str>>;

#[test]
fn plugin_configurations_name_a_source_or_none() {
    let cases: &[(&str, &str, Want)] = &[
        (
            "cluster only",
            r#"{"xds": {"cluster": "mcpgw-xds"}}"#,
            Some(Ok(source())),
        ),
        (
            "every field",
            r#"{"xds": {"cluster": "c", "resource": "r", "node_id": "n"}}"#,
            Some(Ok(Source {
                cluster: "c".into(),
                resource: "r".into(),
                node_id: Some("n".into()),
            })),
        ),
        ("a snapshot", r#"{"schema": 1, "version": "v"}"#, None),
        ("not JSON", "{", None),
        ("empty", "", None),
        (
            "misspelt field",
            r#"{"xds": {"clustr": "c"}}"#,
            Some(Err("xds")),
        ),
        (
            "another key beside xds",
            r#"{"xds": {"cluster": "c"}, "schema": 1}"#,
            Some(Err("xds")),
        ),
        (
            "empty cluster",
            r#"{"xds": {"cluster": " "}}"#,
            Some(Err("xds.cluster")),
        ),
        (
            "empty resource",
            r#"{"xds": {"cluster": "c", "resource": ""}}"#,
            Some(Err("xds.resource")),
        ),
        (
            "empty node id",
            r#"{"xds": {"cluster": "c", "node_id": ""}}"#,
            Some(Err("xds.node_id")),
        ),
        (
            "xds not an object",
            r#"{"xds": "mcpgw-xds"}"#,
            Some(Err("xds")),
        ),
    ];
    for (name, json, want) in cases {
        let got = Source::from_plugin_configuration(json.as_bytes());
        match (got, want) {
            (None, None) => {}
            (Some(Ok(s)), Some(Ok(w))) => assert_eq!(&s, w, "{name}"),
            (Some(Err(e)), Some(Err(field))) => {
                assert_eq!(e.field, *field, "{name}: {e}");
                assert!(e.to_string().starts_with("pluginConfig "), "{name}: {e}");
            }
            (got, _) => panic!("{name}: {got:?}"),
        }
    }
}

#[test]
fn a_subscription_sends_its_node_once_and_acks_what_it_installed() {
    let mut sub = Subscription::new(source(), "router~10.0.0.1~gw.istio-system~cluster.local");
    assert!(sub.due(0));
    let first = sub.opened();
    assert!(!sub.due(u64::MAX));
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("router~10.0.0.1~gw.istio-system~cluster.local"));
    assert!(text.contains(wire::USER_AGENT));
    assert!(text.contains(DEFAULT_RESOURCE));
    assert!(text.contains(TYPE_URL));

    let bytes = response(
        "v1",
        "1",
        TYPE_URL,
        &[extension("mcpgw.filter", "{\"schema\":1}")],
    );
    let Received::Configuration {
        version,
        nonce,
        configuration,
    } = sub.on_response(&bytes)
    else {
        panic!("no configuration")
    };
    assert_eq!((version.as_str(), nonce.as_str()), ("v1", "1"));
    assert_eq!(configuration, b"{\"schema\":1}");
    let ack = sub.ack(&version, &nonce);
    // The node went with the first request only.
    assert!(!String::from_utf8_lossy(&ack).contains("router~"));
    assert_eq!(sub.accepted(), "v1");

    // A NACK quotes the accepted version and says why.
    let nack = sub.nack("2", "bad snapshot");
    let nack = String::from_utf8_lossy(&nack);
    assert!(
        nack.contains("v1") && nack.contains("bad snapshot"),
        "{nack}"
    );

    // A new stream sends the node again, with the version held.
    sub.closed(10);
    let again = sub.opened();
    let again = String::from_utf8_lossy(&again);
    assert!(again.contains("router~") && again.contains("v1"), "{again}");
}

#[test]
fn unusable_responses_are_nacked_or_dropped() {
    let good = extension("mcpgw.filter", "{}");
    let cases: &[(&str, Vec<u8>, &str)] = &[
        (
            "another resource only",
            response("v", "n", TYPE_URL, &[extension("other", "{}")]),
            "does not carry",
        ),
        (
            "no resource",
            response("v", "n", TYPE_URL, &[]),
            "does not carry",
        ),
        (
            "another type",
            response(
                "v",
                "n",
                "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                &[good],
            ),
            "not type.googleapis.com",
        ),
        (
            "not a Wasm filter",
            response(
                "v",
                "n",
                TYPE_URL,
                &[{
                    let mut out = Vec::new();
                    bytes_field(&mut out, 1, b"mcpgw.filter");
                    bytes_field(&mut out, 2, &any("type.googleapis.com/x.Y", b""));
                    out
                }],
            ),
            "not a Wasm filter",
        ),
    ];
    for (name, bytes, error) in cases {
        let mut sub = Subscription::new(source(), "n");
        sub.opened();
        match sub.on_response(bytes) {
            Received::Rejected { request, error: e } => {
                assert!(e.contains(error), "{name}: {e}");
                assert!(String::from_utf8_lossy(&request).contains(error), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut sub = Subscription::new(source(), "n");
    assert!(matches!(
        sub.on_response(&[0x0a, 0xff]),
        Received::Garbage(_)
    ));
}

#[test]
fn reconnections_back_off_until_a_response_arrives() {
    let mut sub = Subscription::new(source(), "n");
    sub.opened();
    let delays: Vec<u64> = (0..7).map(|_| sub.closed(0)).collect();
    assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
    assert!(!sub.due(29_999));
    assert!(sub.due(30_000));
    sub.opened();
    let bytes = response("v1", "1", TYPE_URL, &[extension("mcpgw.filter", "{}")]);
    assert!(matches!(
        sub.on_response(&bytes),
        Received::Configuration { .. }
    ));
    assert_eq!(sub.closed(100), MIN_BACKOFF_MS);
}

#[test]
fn a_missing_configuration_means_the_defaults() {
    let mut plugin = Vec::new();
    bytes_field(&mut plugin, 1, b"mcpgw");
    let mut wasm = Vec::new();
    bytes_field(&mut wasm, 1, &plugin);
    let mut ext = Vec::new();
    bytes_field(&mut ext, 1, b"mcpgw.filter");
    bytes_field(
        &mut ext,
        2,
        &any(
            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            &wasm,
        ),
    );
    let r = DiscoveryResponse::decode(&response("v", "n", TYPE_URL, &[ext])).unwrap();
    assert_eq!(r.configuration_of("mcpgw.filter").unwrap(), b"");
}

#[test]
fn the_node_id_of_a_serialized_node() {
    let mut node = Vec::new();
    bytes_field(&mut node, 1, b"router~1~gw.ns~ns.svc.cluster.local");
    bytes_field(&mut node, 2, b"istio-ingressgateway");
    assert_eq!(
        wire::node_id(&node).as_deref(),
        Some("router~1~gw.ns~ns.svc.cluster.local")
    );
    let mut other = Vec::new();
    bytes_field(&mut other, 2, b"cluster only");
    assert_eq!(wire::node_id(&other), None);
    assert_eq!(wire::node_id(&[0x0a, 0x05, b'a']), None);
}
