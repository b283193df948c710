//! How virtual servers expose what they serve: `naming` (prefixed, or the upstreams' own
//! names with collisions refused) and `allowed_origins`, through the API, the snapshot and
//! export/import; and a collision that appears later, at rediscovery, which leaves one
//! entry out instead of failing the publish.

use mcpgw::crypto::SecretBox;
use mcpgw::edge_config::{EdgeInputs, EdgeSettings, Publisher};
use mcpgw::model::{
    AllowedOrigins, AuthType, GatewayName, ItemName, Naming, NewGateway, ResourceSpec, Tags,
    Transport, UpstreamUrl,
};
use mcpgw::store::{Discovered, DiscoveredItem, NewServer};
use mcpgw::telemetry::Metrics;
use serde_json::{Value, json};

use super::harness::{TestCp, TestDb, both_backends, settings};
use super::upstream::PythonPeer;

/// Ids of gateway `gw`'s items of `kind`, by their upstream name.
async fn ids(cp: &TestCp, kind: &str, gw: &str) -> std::collections::HashMap<String, String> {
    let (s, page) = cp.get(&format!("/{kind}?gateway_id={gw}&limit=500")).await;
    assert_eq!(s, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["original_name"].as_str().unwrap().to_owned(),
                i["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn names(entries: &Value) -> Vec<&str> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_naming_is_a_transparent_front_and_refuses_colliding_members() {
    // One peer registered twice: every name of one gateway collides with the other's.
    let peer = PythonPeer::start("both").await;
    let db = TestDb::postgres().await;
    let cp = TestCp::start(settings(&db)).await;
    let mut gw = Vec::new();
    for name in ["one", "two"] {
        let (s, g) = cp
            .post("/gateways", json!({"name": name, "url": peer.url}))
            .await;
        assert_eq!(s, 201, "{g}");
        gw.push(g["gateway"]["id"].as_str().unwrap().to_owned());
    }
    let tools = [
        ids(&cp, "tools", &gw[0]).await,
        ids(&cp, "tools", &gw[1]).await,
    ];
    let res = [
        ids(&cp, "resources", &gw[0]).await,
        ids(&cp, "resources", &gw[1]).await,
    ];
    let prompts = [
        ids(&cp, "prompts", &gw[0]).await,
        ids(&cp, "prompts", &gw[1]).await,
    ];

    // A transparent front of gateway one: its own names, its origins.
    let (s, srv) = cp
        .post(
            "/servers",
            json!({"name": "front", "naming": "upstream",
                   "allowed_origins": ["https://app.example.com", "http://localhost:*"],
                   "associated_tools": [tools[0]["echo"], tools[0]["add"]],
                   "associated_resources": [res[0]["greeting"], res[0]["item"]],
                   "associated_prompts": [prompts[0]["greet"]]}),
        )
        .await;
    assert_eq!(s, 201, "{srv}");
    assert_eq!(srv["naming"], "upstream");
    assert_eq!(
        srv["allowed_origins"],
        json!(["https://app.example.com", "http://localhost:*"])
    );
    let sid = srv["id"].as_str().unwrap().to_owned();
    let snap = cp.current_snapshot().await;
    let front = &snap["servers"][&sid];
    assert_eq!(names(&front["tools"]), ["add", "echo"], "{front}");
    for e in front["tools"].as_array().unwrap() {
        assert_eq!(e["upstream_name"], e["name"], "no rename: {e}");
        assert_eq!(e["item"]["name"], e["name"], "listed as exposed: {e}");
        assert_eq!(e["upstream"], gw[0].as_str());
    }
    assert_eq!(names(&front["prompts"]), ["greet"]);
    assert_eq!(names(&front["resources"]), ["peer://greeting"]);
    assert_eq!(names(&front["resource_templates"]), ["peer://items/{name}"]);
    assert_eq!(
        front["allowed_origins"],
        json!(["https://app.example.com", "http://localhost:*"])
    );

    // Adding gateway two's echo: refused, naming both, and nothing changes.
    let (s, p) = cp
        .put(
            &format!("/servers/{sid}"),
            json!({"associated_tools": [tools[0]["echo"], tools[0]["add"], tools[1]["echo"]]}),
        )
        .await;
    assert_eq!(s, 422, "{p}");
    assert_eq!(p["type"], "urn:mcpgw:problem:name-collision");
    assert_eq!(p["errors"].as_array().unwrap().len(), 1, "{p}");
    assert_eq!(p["errors"][0]["field"], "associated_tools[2]");
    let reason = p["errors"][0]["reason"].as_str().unwrap();
    for part in [
        "tool name \"echo\"",
        "\"one__echo\"",
        "\"two__echo\"",
        tools[0]["echo"].as_str(),
        tools[1]["echo"].as_str(),
        "naming \"prefixed\"",
    ] {
        assert!(reason.contains(part), "{part:?} in {reason}");
    }
    let (_, same) = cp.get(&format!("/servers/{sid}")).await;
    assert_eq!(
        same["version"], srv["version"],
        "the refused update is undone"
    );
    assert_eq!(same["associated_tools"].as_array().unwrap().len(), 2);

    // Prompts, resources and templates alike, each reported at its entry.
    let (s, p) = cp
        .post(
            "/servers",
            json!({"name": "clash", "naming": "upstream",
                   "associated_resources": [res[0]["greeting"], res[1]["greeting"], res[0]["item"], res[1]["item"]],
                   "associated_prompts": [prompts[1]["greet"], prompts[0]["greet"]]}),
        )
        .await;
    assert_eq!(s, 422, "{p}");
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields.len(), 3, "{p}");
    assert!(
        fields.iter().any(|f| f.starts_with("associated_prompts[")),
        "{p}"
    );
    let detail = p["detail"].as_str().unwrap();
    for part in [
        "prompt name \"greet\"",
        "resource URI \"peer://greeting\"",
        "resource template URI \"peer://items/{name}\"",
    ] {
        assert!(detail.contains(part), "{part:?} in {detail}");
    }
    let (_, all) = cp.get("/servers").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1, "nothing stored");

    // The same members are fine prefixed; switching that server to upstream is refused on
    // `naming`, since the request names no members.
    let (s, both) = cp
        .post(
            "/servers",
            json!({"name": "both", "associated_tools": [tools[0]["echo"], tools[1]["echo"]]}),
        )
        .await;
    assert_eq!(s, 201, "{both}");
    assert_eq!(both["naming"], "prefixed", "the default");
    let bid = both["id"].as_str().unwrap().to_owned();
    let snap = cp.current_snapshot().await;
    assert_eq!(
        names(&snap["servers"][&bid]["tools"]),
        ["one__echo", "two__echo"]
    );
    let (s, p) = cp
        .put(&format!("/servers/{bid}"), json!({"naming": "upstream"}))
        .await;
    assert_eq!(s, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], "naming");
    // Dropping one of them in the same request makes it valid.
    let (s, ok) = cp
        .put(
            &format!("/servers/{bid}"),
            json!({"naming": "upstream", "associated_tools": [tools[1]["echo"]]}),
        )
        .await;
    assert_eq!(s, 200, "{ok}");
    let snap = cp.current_snapshot().await;
    assert_eq!(names(&snap["servers"][&bid]["tools"]), ["echo"]);
    assert_eq!(
        snap["servers"][&bid]["tools"][0]["upstream"],
        gw[1].as_str()
    );

    // Origins are checked as the filter checks them.
    for (bad, field) in [
        (json!(["app.example.com"]), "allowed_origins[0]"),
        (
            json!(["https://ok.example", "https://a.example/path"]),
            "allowed_origins[1]",
        ),
        (json!(["https://user@a.example"]), "allowed_origins[0]"),
    ] {
        let (s, p) = cp
            .put(&format!("/servers/{sid}"), json!({"allowed_origins": bad}))
            .await;
        assert_eq!(s, 422, "{bad}: {p}");
        assert_eq!(p["type"], "urn:mcpgw:problem:validation");
        assert_eq!(p["errors"][0]["field"], field, "{p}");
    }
    let (s, p) = cp
        .post("/servers", json!({"name": "x", "naming": "transparent"}))
        .await;
    assert_eq!(s, 422, "an unknown naming mode: {p}");

    // Export and import keep both.
    let (s, doc) = cp.get("/export?types=servers").await;
    assert_eq!(s, 200);
    let exported = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "front")
        .unwrap()
        .clone();
    assert_eq!(exported["naming"], "upstream");
    assert_eq!(
        exported["allowed_origins"],
        json!(["https://app.example.com", "http://localhost:*"])
    );
    let (s, _) = cp.delete(&format!("/servers/{sid}")).await;
    assert_eq!(s, 204);
    let (s, r) = cp.post("/import?conflict_strategy=skip", doc).await;
    assert_eq!(s, 200, "{r}");
    let (_, all) = cp.get("/servers").await;
    let back = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "front")
        .unwrap_or_else(|| panic!("imported: {all}"));
    assert_eq!(back["naming"], "upstream");
    assert_eq!(back["allowed_origins"], exported["allowed_origins"]);
    assert_eq!(back["associated_tools"].as_array().unwrap().len(), 2);
    cp.stop().await;
}

fn resource(name: &str, uri: &str) -> DiscoveredItem<ResourceSpec> {
    DiscoveredItem {
        original_name: name.into(),
        uri: Some(uri.into()),
        description: None,
        spec: ResourceSpec::default(),
    }
}

/// A rediscovery may give a member a URI another member already has: the registry takes
/// it (an upstream's catalog is never refused for a server's sake), and the snapshot keeps
/// the URI with the member registered first, leaving the other out and saying so.
#[tokio::test]
async fn a_collision_a_rediscovery_brings_leaves_the_later_entry_out() {
    for (backend, db) in both_backends().await {
        let store = db.store().await;
        let mut members = Vec::new();
        for (name, uri) in [("a", "docs://a"), ("b", "docs://b")] {
            let (g, _) = store
                .create_gateway_with_catalog(
                    NewGateway {
                        id: mcpgw::store::new_id(),
                        name: GatewayName::parse(name).unwrap(),
                        url: UpstreamUrl::parse(&format!("http://10.0.0.1/{name}")).unwrap(),
                        transport: Transport::StreamableHttp,
                        description: None,
                        tags: Tags::default(),
                        enabled: true,
                        auth_type: AuthType::None,
                        auth_sealed: None,
                        identity: Default::default(),
                        identity_sealed: None,
                    },
                    Some(&Discovered {
                        resources: vec![resource("doc", uri)],
                        ..Default::default()
                    }),
                    "__",
                )
                .await
                .unwrap();
            let id = store
                .item_id_by_name(mcpgw::model::CatalogKind::Resource, &format!("{name}__doc"))
                .await
                .unwrap()
                .unwrap();
            members.push((g.id, id));
        }
        let server = store
            .create_server(NewServer {
                name: ItemName::parse("front").unwrap(),
                description: None,
                icon: None,
                tags: Tags::default(),
                enabled: true,
                naming: Naming::Upstream,
                allowed_origins: AllowedOrigins::default(),
                tools: vec![],
                resources: members.iter().map(|(_, id)| id.clone()).collect(),
                prompts: vec![],
            })
            .await
            .unwrap();
        // b now serves a's URI.
        store
            .sync_gateway_catalog(
                &members[1].0,
                &Discovered {
                    resources: vec![resource("doc", "docs://a")],
                    ..Default::default()
                },
                "__",
            )
            .await
            .unwrap();
        // The publisher builds and counts it, as a running control plane does.
        let publisher = Publisher::new(
            store.clone(),
            EdgeInputs {
                policy: Default::default(),
                session: None,
                settings: EdgeSettings::default(),
                secrets: SecretBox::dev(),
                ssrf: Default::default(),
            },
        );
        let metrics = Metrics::new();
        let built = publisher.publish().await;
        mcpgw::edge_config::record(&built, &metrics);
        let shadowed = built.unwrap().shadowed;
        let snap = publisher.edge(None).snapshot().unwrap();
        let rendered = metrics.render(0).unwrap();
        assert!(
            rendered.contains("mcpgw_edge_entries_shadowed{list=\"resources\"} 1"),
            "{backend}: {rendered}"
        );
        // The first registered (creation time, then id: both may share a millisecond).
        let mut by_age = Vec::new();
        for (g, id) in &members {
            let item = store.get_item::<ResourceSpec>(id).await.unwrap();
            by_age.push(((item.created_at, id.clone()), g.clone()));
        }
        by_age.sort();
        let (((_, first), first_gw), ((_, later), _)) = (&by_age[0], &by_age[1]);
        let front = &snap.servers[&server.id];
        assert_eq!(front.resources.len(), 1, "{backend}");
        assert_eq!(&front.resources[0].upstream, first_gw, "{backend}");
        assert_eq!(shadowed.len(), 1, "{backend}: {shadowed:?}");
        assert_eq!(&shadowed[0].item, later, "{backend}");
        assert_eq!(&shadowed[0].kept, first, "{backend}");
        assert_eq!(shadowed[0].list, "resources", "{backend}");
        assert_eq!(shadowed[0].name, "docs://a", "{backend}");
        // The membership is untouched: b's resource comes back once the URIs differ again.
        let stored = store.get_server(&server.id).await.unwrap();
        assert_eq!(stored.associated_resources.len(), 2, "{backend}");
        store
            .sync_gateway_catalog(
                &members[1].0,
                &Discovered {
                    resources: vec![resource("doc", "docs://b2")],
                    ..Default::default()
                },
                "__",
            )
            .await
            .unwrap();
        let built = publisher.publish().await;
        mcpgw::edge_config::record(&built, &metrics);
        assert!(built.unwrap().shadowed.is_empty(), "{backend}");
        let snap = publisher.edge(None).snapshot().unwrap();
        assert_eq!(snap.servers[&server.id].resources.len(), 2, "{backend}");
        assert!(
            metrics
                .render(0)
                .unwrap()
                .contains("mcpgw_edge_entries_shadowed{list=\"resources\"} 0"),
            "{backend}"
        );
    }
}
