use super::*;
use crate::model::{AllowedOrigins, AuthType, GatewayName, ItemName, Tags, Transport, UpstreamUrl};
use serde_json::json;

fn gateway(id: &str, url: &str, enabled: bool, reachable: bool) -> Gateway {
    Gateway {
        id: id.into(),
        name: GatewayName::parse(id).unwrap(),
        url: UpstreamUrl::parse(url).unwrap(),
        transport: Transport::default(),
        description: None,
        tags: Tags::default(),
        enabled,
        reachable,
        auth_type: AuthType::None,
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

fn item<S: CatalogSpec>(id: &str, gw: Option<&str>, original: &str, spec: Value) -> CatalogItem<S> {
    CatalogItem {
        id: id.into(),
        name: ItemName::parse(&match gw {
            Some(g) => format!("{g}__{original}"),
            None => original.into(),
        })
        .unwrap(),
        original_name: original.into(),
        gateway_id: gw.map(Into::into),
        uri: None,
        description: Some(format!("{original} does things")),
        spec: S::from_json(spec.as_object().cloned().unwrap_or_default()).unwrap(),
        tags: Tags::default(),
        enabled: true,
        reachable: true,
        created_at: String::new(),
        updated_at: String::new(),
        version: 1,
    }
}

fn server(id: &str, tools: &[&str], resources: &[&str], prompts: &[&str]) -> Server {
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Server {
        id: id.into(),
        name: ItemName::parse(&format!("server {id}")).unwrap(),
        description: None,
        icon: None,
        tags: Tags::default(),
        enabled: true,
        naming: Naming::Prefixed,
        allowed_origins: AllowedOrigins::default(),
        associated_tools: ids(tools),
        associated_resources: ids(resources),
        associated_prompts: ids(prompts),
        created_at: String::new(),
        updated_at: String::new(),
        version: 1,
    }
}

fn view() -> RegistryView {
    let mut res = item::<ResourceSpec>(
        "r1",
        Some("a"),
        "readme",
        json!({"mime_type": "text/plain", "is_template": false}),
    );
    res.uri = Some("file:///readme".into());
    let mut tpl = item::<ResourceSpec>("r2", Some("a"), "files", json!({"is_template": true}));
    tpl.uri = Some("file:///{path}".into());
    let mut dup = item::<ResourceSpec>("r3", Some("b"), "readme", json!({}));
    dup.uri = Some("file:///readme".into());
    let mut disabled = item::<ToolSpec>("t4", Some("a"), "off", json!({}));
    disabled.enabled = false;
    RegistryView {
        version: 42,
        gateways: vec![
            gateway("a", "http://10.0.0.1:8080/mcp", true, true),
            gateway("b", "https://b.example/v1/mcp?x=1", true, true),
            gateway("down", "http://10.0.0.3/mcp", true, false),
        ],
        tools: vec![
            item::<ToolSpec>(
                "t1",
                Some("a"),
                "echo",
                json!({"input_schema": {"type": "object", "properties": {"m": {"type": "string"}}}, "title": "Echo", "annotations": {"readOnlyHint": true}}),
            ),
            item::<ToolSpec>("t2", Some("b"), "echo", json!({})),
            item::<ToolSpec>("t3", Some("down"), "slow", json!({})),
            disabled,
            item::<ToolSpec>("t5", None, "by-hand", json!({})),
        ],
        resources: vec![res, tpl, dup],
        prompts: vec![item::<PromptSpec>(
            "p1",
            Some("b"),
            "greet",
            json!({"arguments": [{"name": "who", "required": true}]}),
        )],
        servers: vec![
            server(
                "s1",
                &["t1", "t2", "t3", "t4", "t5"],
                &["r1", "r2", "r3"],
                &["p1"],
            ),
            server("s2", &["t2"], &[], &[]),
        ],
        edge: Default::default(),
    }
}

/// Inputs with `policy` and an upstream entry for every gateway whose URL the edge can use.
fn inputs(view: &RegistryView, policy: Policy) -> SnapshotInputs {
    SnapshotInputs {
        upstreams: view
            .gateways
            .iter()
            .filter_map(|g| {
                let t = crate::edge_config::UpstreamTarget::parse(g).ok()?;
                Some((
                    g.id.clone(),
                    t.snapshot_entry(cluster_name(&g.id), Default::default()),
                ))
            })
            .collect(),
        ..SnapshotInputs::new(policy)
    }
}

fn names(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

#[test]
fn servers_expose_only_servable_items_rendered_as_mcp_list_entries() {
    let snap = assemble(&view(), &inputs(&view(), Policy::default())).unwrap();
    assert_eq!(snap.version, "42");
    let s1 = &snap.servers["s1"];
    // t3: gateway unreachable; t4: disabled; t5: defined by hand, no upstream to route to.
    assert_eq!(names(&s1.tools), ["a__echo", "b__echo"]);
    assert_eq!(s1.tools[0].upstream, "a");
    assert_eq!(s1.tools[0].upstream_name, "echo");
    let t: Value = serde_json::from_str(s1.tools[0].item.get()).unwrap();
    assert_eq!(
        t,
        json!({"name": "a__echo", "title": "Echo", "description": "echo does things",
               "annotations": {"readOnlyHint": true},
               "inputSchema": {"type": "object", "properties": {"m": {"type": "string"}}}})
    );
    let t2: Value = serde_json::from_str(s1.tools[1].item.get()).unwrap();
    assert_eq!(
        t2["inputSchema"],
        json!({"type": "object"}),
        "MCP requires an input schema"
    );
    // Resources by URI; the duplicate URI from gateway b is left out; templates apart.
    assert_eq!(names(&s1.resources), ["file:///readme"]);
    assert_eq!(s1.resources[0].upstream, "a");
    let r: Value = serde_json::from_str(s1.resources[0].item.get()).unwrap();
    assert_eq!(r["uri"], "file:///readme");
    assert_eq!(r["mimeType"], "text/plain");
    assert_eq!(names(&s1.resource_templates), ["file:///{path}"]);
    let tpl: Value = serde_json::from_str(s1.resource_templates[0].item.get()).unwrap();
    assert_eq!(tpl["uriTemplate"], "file:///{path}");
    assert!(tpl.get("uri").is_none());
    let p: Value = serde_json::from_str(s1.prompts[0].item.get()).unwrap();
    assert_eq!(p["arguments"][0]["name"], "who");
    assert_eq!(names(&snap.servers["s2"].tools), ["b__echo"]);
}

#[test]
fn upstreams_are_the_live_gateways_with_cluster_path_and_authority() {
    let snap = assemble(&view(), &inputs(&view(), Policy::default())).unwrap();
    assert_eq!(snap.upstreams.keys().collect::<Vec<_>>(), ["a", "b"]);
    let a = &snap.upstreams["a"];
    assert_eq!(a.cluster, cluster_name("a"));
    assert_eq!(a.path, "/mcp");
    assert_eq!(a.authority.as_deref(), Some("10.0.0.1:8080"));
    // The query may hold a token: it is added by the cluster, never in the snapshot.
    assert_eq!(snap.upstreams["b"].path, "/v1/mcp");
    assert!(!serde_json::to_string(&snap).unwrap().contains("x=1"));
    assert_eq!(snap.upstreams["b"].authority.as_deref(), Some("b.example"));
}

#[test]
fn disabled_servers_are_absent_and_the_result_parses_as_the_filter_reads_it() {
    let mut v = view();
    v.servers[1].enabled = false;
    let policy = Policy {
        denied_tools: vec!["a__echo".into()],
        ..Policy::default()
    };
    let snap = assemble(&v, &inputs(&v, policy)).unwrap();
    assert!(!snap.servers.contains_key("s2"));
    let json = serde_json::to_vec(&snap).unwrap();
    let back = Snapshot::from_json(&json).unwrap();
    assert_eq!(back, snap);
    assert_eq!(back.policy.denied_tools, ["a__echo"]);
}

#[test]
fn a_gateway_the_edge_cannot_reach_is_left_out_with_what_it_serves() {
    let v = view();
    let mut i = inputs(&v, Policy::default());
    i.upstreams.remove("a");
    let snap = assemble(&v, &i).unwrap();
    assert_eq!(snap.upstreams.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(names(&snap.servers["s1"].tools), ["b__echo"]);
}

#[test]
fn session_and_relay_are_inputs_of_the_one_assembly() {
    let v = view();
    let i = SnapshotInputs {
        session: Some(session_settings(
            &SecretBox::dev(),
            crate::config::McpSessionTimes::default(),
        )),
        relay: Some("mcpgw-relay".into()),
        ..inputs(&v, Policy::default())
    };
    let snap = assemble(&v, &i).unwrap();
    assert_eq!(snap.relay.as_deref(), Some("mcpgw-relay"));
    assert_eq!(
        snap.session.unwrap().keys,
        [SecretBox::dev().session_key().to_owned()]
    );
}

#[test]
fn upstream_naming_exposes_the_upstreams_own_names_and_routes_them_unrenamed() {
    let mut v = view();
    v.servers[0].naming = Naming::Upstream;
    // One tool per name: t2 (b's echo) would collide with t1 (a's echo); leave it out.
    v.servers[0].associated_tools = vec!["t1".into()];
    v.servers[0].allowed_origins =
        AllowedOrigins::parse(&["https://app.example.com", "http://localhost:*"]).unwrap();
    let snap = assemble(&v, &inputs(&v, Policy::default())).unwrap();
    let s1 = &snap.servers["s1"];
    assert_eq!(names(&s1.tools), ["echo"]);
    assert_eq!(s1.tools[0].upstream_name, "echo", "no rename on the way up");
    let t: Value = serde_json::from_str(s1.tools[0].item.get()).unwrap();
    assert_eq!(t["name"], "echo", "the list item carries the exposed name");
    assert_eq!(names(&s1.prompts), ["greet"]);
    let p: Value = serde_json::from_str(s1.prompts[0].item.get()).unwrap();
    assert_eq!(p["name"], "greet");
    // Resources keep their URI as the key; their display name is the upstream's.
    assert_eq!(names(&s1.resources), ["file:///readme"]);
    let r: Value = serde_json::from_str(s1.resources[0].item.get()).unwrap();
    assert_eq!(r["name"], "readme");
    assert_eq!(
        s1.allowed_origins,
        ["https://app.example.com", "http://localhost:*"]
    );
    // The other server is untouched: prefixed names.
    assert_eq!(names(&snap.servers["s2"].tools), ["b__echo"]);
    assert!(snap.servers["s2"].allowed_origins.is_empty());
}

#[test]
fn a_name_two_members_expose_stays_with_the_one_registered_first() {
    let mut v = view();
    v.servers[0].naming = Naming::Upstream;
    // a's and b's echo collide under upstream naming (as after a rediscovery or a
    // hand-edited row: the API refuses such a server). b's is older: it keeps the name.
    v.tools[0].created_at = "2026-01-02T00:00:00.000Z".into();
    v.tools[1].created_at = "2026-01-01T00:00:00.000Z".into();
    // The duplicate resource URI: r3 (b) is older than r1 (a) too.
    v.resources[0].created_at = "2026-01-02T00:00:00.000Z".into();
    v.resources[2].created_at = "2026-01-01T00:00:00.000Z".into();
    let (snap, shadowed) = assemble_reporting(&v, &inputs(&v, Policy::default())).unwrap();
    let s1 = &snap.servers["s1"];
    assert_eq!(names(&s1.tools), ["echo"]);
    assert_eq!(s1.tools[0].upstream, "b");
    assert_eq!(s1.resources[0].upstream, "b");
    assert_eq!(
        shadowed,
        [
            Shadowed {
                server: "s1".into(),
                list: "tools",
                name: "echo".into(),
                item: "t1".into(),
                kept: "t2".into(),
            },
            Shadowed {
                server: "s1".into(),
                list: "resources",
                name: "file:///readme".into(),
                item: "r1".into(),
                kept: "r3".into(),
            },
        ]
    );
    // Prefixed naming: only the URI collides.
    v.servers[0].naming = Naming::Prefixed;
    let (snap, shadowed) = assemble_reporting(&v, &inputs(&v, Policy::default())).unwrap();
    assert_eq!(names(&snap.servers["s1"].tools), ["a__echo", "b__echo"]);
    assert_eq!(shadowed.len(), 1);
    assert_eq!(shadowed[0].list, "resources");
}

#[test]
fn upstreams_carry_every_protocol_version_discovery_found() {
    let mut v = view();
    v.gateways[0].protocol_version = Some("2025-11-25".into());
    v.gateways[0].protocol_versions = vec!["2026-07-28".into(), "2025-11-25".into()];
    // Not rediscovered since versions were recorded: its negotiated one.
    v.gateways[1].protocol_version = Some("2025-06-18".into());
    let snap = assemble(&v, &inputs(&v, Policy::default())).unwrap();
    assert_eq!(
        snap.upstreams["a"].protocol_versions,
        ["2026-07-28", "2025-11-25"]
    );
    assert!(snap.upstreams["a"].speaks_modern() && snap.upstreams["a"].speaks_legacy());
    assert_eq!(snap.upstreams["b"].protocol_versions, ["2025-06-18"]);
    assert!(!snap.upstreams["b"].speaks_modern());
}

/// Stored edge settings reach the snapshot; a server whose policy or limits do not validate
/// any more is left out (never served unprotected), an unusable issuer too, and limits of
/// servers the snapshot does not serve are dropped.
#[test]
fn edge_settings_are_assembled_and_unusable_ones_fail_closed() {
    let mut v = view();
    let issuer = |iss: &str| -> Issuer {
        serde_json::from_value(json!({"issuer": iss, "algorithms": ["RS256"]})).unwrap()
    };
    v.edge
        .issuers
        .insert("corp".into(), issuer("https://idp.example.com"));
    v.edge
        .issuers
        .insert("broken".into(), issuer("http://idp.example.com"));
    let policy = |issuers: Value| -> ServerAuth {
        serde_json::from_value(json!({"resource": "https://gw.example.com/servers/s/mcp",
            "issuers": issuers, "rules": [{"name": "all", "when": "true"}]}))
        .unwrap()
    };
    v.edge.policies.insert("s1".into(), policy(json!(["corp"])));
    v.edge
        .policies
        .insert("s2".into(), policy(json!(["broken"])));
    v.edge
        .limits
        .insert(DEFAULT_LIMITS.into(), ServerLimits::default());
    v.edge.limits.insert("s1".into(), ServerLimits::default());
    v.edge.limits.insert("gone".into(), ServerLimits::default());
    v.edge.plugins.push(
        serde_json::from_value(
            json!({"name": "mask", "pii": {}, "conditions": {"servers": ["s1"]}}),
        )
        .unwrap(),
    );
    v.edge.revoked.push("jti-1".into());
    let s = assemble(&v, &inputs(&v, Policy::default())).unwrap();
    assert_eq!(s.auth.issuers.keys().collect::<Vec<_>>(), ["corp"]);
    assert_eq!(s.auth.revoked, ["jti-1"]);
    assert_eq!(
        s.servers["s1"].auth.as_ref().unwrap().issuers,
        ["corp".to_owned()]
    );
    assert!(
        !s.servers.contains_key("s2"),
        "a server whose issuer is unusable is not served"
    );
    assert!(s.limits.default.is_some());
    assert_eq!(s.limits.servers.keys().collect::<Vec<_>>(), ["s1"]);
    assert_eq!(s.plugins[0].name, "mask");
    // What the filter reads back is the same.
    let text = serde_json::to_vec(&s).unwrap();
    assert_eq!(Snapshot::from_json(&text).unwrap(), s);
}
