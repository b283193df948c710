//! Export / import round trips, conflict strategies, dry run, ContextForge files.

use serde_json::{Value, json};

use super::harness::{TestCp, TestDb, settings};

async fn seed(cp: &TestCp) {
    let (s, g) = cp
        .post(
            "/gateways",
            json!({"name": "remote", "url": "http://127.0.0.1:9/mcp", "auth_type": "basic",
                   "auth_username": "u", "auth_password": "p", "discover": false, "tags": ["prod"]}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let (_, t) = cp
        .post(
            "/tools",
            json!({"name": "weather", "url": "https://api.example/w", "tags": ["ops"]}),
        )
        .await;
    let (_, r) = cp
        .post(
            "/resources",
            json!({"name": "readme", "uri": "file:///readme"}),
        )
        .await;
    let (_, p) = cp
        .post("/prompts", json!({"name": "hello", "template": "hi"}))
        .await;
    let (s, _) = cp
        .post("/servers", json!({"name": "all", "associated_tools": [t["id"]],
                                  "associated_resources": [r["id"]], "associated_prompts": [p["id"]]}))
        .await;
    assert_eq!(s, 201);
}

fn count(v: &Value, kind: &str) -> usize {
    v[kind].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn export_import_round_trip_with_strategies() {
    let src_db = TestDb::sqlite();
    let src = TestCp::start(settings(&src_db)).await;
    seed(&src).await;
    let (s, doc) = src.get("/export").await;
    assert_eq!(s, 200);
    assert_eq!(doc["format"], "mcpgw-export");
    for k in ["gateways", "tools", "resources", "prompts", "servers"] {
        assert_eq!(count(&doc, k), 1, "{k}");
    }
    assert_eq!(
        doc["servers"][0]["tools"],
        json!(["weather"]),
        "items by name"
    );
    assert!(!doc.to_string().contains("\"p\""), "no clear-text password");
    assert_eq!(doc["gateways"][0]["auth_type"], "basic");
    assert!(doc["gateways"][0].get("auth_sealed").is_none(), "{doc}");
    let (_, only_tools) = src.get("/export?types=tools").await;
    assert_eq!(
        (count(&only_tools, "tools"), count(&only_tools, "gateways")),
        (1, 0)
    );

    let dst_db = TestDb::postgres().await;
    let dst = TestCp::start(settings(&dst_db)).await;
    // Dry run: a plan, no change.
    let v0 = dst.get("/registry").await.1;
    let (s, plan) = dst.post("/import?dry_run=true", doc.clone()).await;
    assert_eq!(s, 200, "{plan}");
    assert_eq!(
        (plan["created"].as_u64(), plan["dry_run"].as_bool()),
        (Some(5), Some(true))
    );
    assert_eq!(dst.get("/registry").await.1, v0);
    assert_eq!(count(&dst.get("/tools").await.1, "items"), 0);

    let (s, rep) = dst.post("/import", doc.clone()).await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(rep["created"], 5, "{rep}");
    assert_eq!(rep["failed"], 0, "{rep}");
    let (_, servers) = dst.get("/servers").await;
    assert_eq!(
        servers["items"][0]["associated_tools"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, gws) = dst.get("/gateways").await;
    assert_eq!(
        gws["items"][0]["auth_type"], "none",
        "credentials are not exported"
    );
    assert!(
        rep["warnings"]
            .to_string()
            .contains("re-enter its basic credentials"),
        "{rep}"
    );

    // Again, per strategy.
    let (_, skip) = dst
        .post("/import?conflict_strategy=skip", doc.clone())
        .await;
    assert_eq!(skip["skipped"], 5, "{skip}");
    let (s, fail) = dst
        .post("/import?conflict_strategy=fail", doc.clone())
        .await;
    assert_eq!(s, 409, "{fail}");
    assert!(fail["detail"].as_str().unwrap().contains("tool weather"));
    let (_, upd) = dst
        .post("/import?conflict_strategy=update", doc.clone())
        .await;
    assert_eq!(upd["updated"], 5, "{upd}");
    let (_, ren) = dst
        .post("/import?conflict_strategy=rename", doc.clone())
        .await;
    assert_eq!(ren["renamed"], 5, "{ren}");
    let (_, tools) = dst.get("/tools").await;
    let names: Vec<&str> = tools["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["weather", "weather-1"]);
    let (_, servers) = dst.get("/servers").await;
    let renamed = servers["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "all-1")
        .unwrap();
    let (_, t1) = dst
        .get(&format!(
            "/tools/{}",
            renamed["associated_tools"][0].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        t1["name"], "weather-1",
        "renamed server points at the renamed tool"
    );

    // Garbage is refused precisely.
    let (s, bad) = dst.post("/import", json!({"hello": "world"})).await;
    assert_eq!(s, 422, "{bad}");
    src.stop().await;
    dst.stop().await;
}

#[tokio::test]
async fn imports_a_contextforge_export() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let cf = json!({
        "version": "2025-03-26",
        "exported_at": "2025-09-01T10:00:00Z",
        "exported_by": "admin",
        "source_gateway": "http://localhost:4444",
        "encryption_method": "AES-256-GCM",
        "entities": {
            "tools": [
                {"name": "get_weather", "url": "https://api.weather.example/v1", "integration_type": "REST",
                 "request_type": "get", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                 "annotations": {}, "tags": [{"id": "ops", "label": "Ops"}], "is_active": true},
                {"name": "upstream_echo", "integration_type": "MCP", "tags": []},
                {"id": "cf-tool-7", "name": "my-time-server-get-time", "original_name": "get_time",
                 "gateway_slug": "my-time-server", "integration_type": "MCP", "description": "Time",
                 "input_schema": {"type": "object"}, "tags": [], "is_active": true},
                {"id": "cf-tool-8", "name": "my-time-server-convert", "gateway_id": "cf-gw-1",
                 "integration_type": "MCP", "tags": [], "is_active": true}
            ],
            "gateways": [
                {"id": "cf-gw-1", "name": "My Time Server", "url": "http://127.0.0.1:9/mcp", "transport": "STREAMABLEHTTP",
                 "description": "time", "is_active": false, "tags": ["time"], "auth_type": "bearer", "auth_value": "opaque"}
            ],
            "servers": [
                {"name": "weather-srv", "description": "w", "tool_ids": ["get_weather", "cf-id-unknown", "cf-tool-7", "my-time-server-convert"], "is_active": true, "tags": []}
            ],
            "prompts": [
                {"name": "summarize", "template": "Summarize {{ text }}", "description": "s",
                 "input_schema": {"type": "object", "properties": {"text": {"type": "string", "description": "input"}}, "required": ["text"]},
                 "tags": [], "is_active": true}
            ],
            "resources": [
                {"name": "config", "uri": "config://app", "description": "c", "mime_type": "application/json", "tags": [], "is_active": true}
            ],
            "roots": []
        },
        "metadata": {"entity_counts": {"tools": 2}}
    });
    let (s, rep) = cp.post("/import", cf).await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(rep["source"], "contextforge");
    assert_eq!(rep["created"], 7, "{rep}");
    let left_out: Vec<&Value> = rep["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "skip")
        .collect();
    assert_eq!(left_out.len(), 1, "{rep}");
    assert_eq!(left_out[0]["name"], "upstream_echo");
    assert!(
        left_out[0]["detail"].as_str().unwrap().contains("gateway"),
        "{rep}"
    );
    let warnings = rep["warnings"].to_string();
    assert!(warnings.contains("re-enter"), "{warnings}");
    assert!(warnings.contains("cf-id-unknown"), "{warnings}");

    let (_, gws) = cp.get("/gateways").await;
    let g = &gws["items"][0];
    assert_eq!(
        (
            g["name"].as_str(),
            g["enabled"].as_bool(),
            g["auth_type"].as_str()
        ),
        (Some("my-time-server"), Some(false), Some("none"))
    );
    let (_, tools) = cp.get("/tools").await;
    assert_eq!(
        tools["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![
            "get_weather",
            "my-time-server__convert",
            "my-time-server__get_time"
        ]
    );
    let t = &tools["items"][0];
    assert_eq!(
        (t["name"].as_str(), t["request_type"].as_str()),
        (Some("get_weather"), Some("GET"))
    );
    assert_eq!(t["tags"], json!(["ops"]));
    let mcp = &tools["items"][2];
    assert_eq!(
        (
            mcp["original_name"].as_str(),
            mcp["gateway_id"].as_str(),
            mcp["integration_type"].as_str(),
            mcp["enabled"].as_bool()
        ),
        (Some("get_time"), g["id"].as_str(), Some("MCP"), Some(false)),
        "an MCP tool of the (disabled) gateway: {mcp}"
    );
    let (_, prompts) = cp.get("/prompts").await;
    assert_eq!(
        prompts["items"][0]["arguments"],
        json!([{"name": "text", "description": "input", "required": true}])
    );
    let (_, servers) = cp.get("/servers").await;
    let mut want: Vec<&str> = tools["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    want.sort();
    assert_eq!(
        servers["items"][0]["associated_tools"],
        json!(want),
        "the REST tool and both mapped MCP tools"
    );
    cp.stop().await;
}

async fn registry_version(cp: &TestCp) -> i64 {
    cp.get("/registry").await.1["registry_version"]
        .as_i64()
        .unwrap()
}

fn doc(gateways: Value, tools: Value) -> Value {
    json!({"format": "mcpgw-export", "version": 1, "gateways": gateways, "tools": tools,
           "servers": [{"name": "srv", "enabled": true, "tools": ["weather"]}]})
}

#[tokio::test]
async fn import_is_all_or_nothing_and_guards_gateway_urls() {
    for (backend, db) in super::harness::both_backends().await {
        let mut s = settings(&db);
        s.federation.ssrf.allow_loopback = false;
        let cp = TestCp::start(s).await;
        let good_gw = json!({"name": "pub", "url": "https://93.184.216.34/mcp", "transport": "streamable_http",
                             "enabled": true, "auth_type": "none", "description": null});
        let tool = json!({"name": "weather", "original_name": "weather", "gateway": null, "uri": null,
                          "description": null, "enabled": true, "spec": {"url": "https://api.example/w"}});
        let cases = [
            (
                "metadata url",
                doc(
                    json!([good_gw, {"name": "meta", "url": "http://169.254.169.254/latest", "transport": "sse",
                                    "enabled": true, "auth_type": "none", "description": null}]),
                    json!([tool]),
                ),
                "gateway meta",
            ),
            (
                "nat64 loopback url",
                doc(
                    json!([good_gw, {"name": "nat", "url": "http://[64:ff9b::7f00:1]:8080/mcp", "transport": "sse",
                                    "enabled": true, "auth_type": "none", "description": null}]),
                    json!([tool]),
                ),
                "gateway nat",
            ),
            (
                "bad tag on the last tool",
                doc(
                    json!([good_gw]),
                    json!([tool, {"name": "other", "original_name": "other", "gateway": null, "uri": null,
                                  "description": null, "enabled": true, "tags": ["not ok!"]}]),
                ),
                "tool other",
            ),
            (
                "unknown gateway",
                doc(
                    json!([good_gw]),
                    json!([tool, {"name": "orphan", "original_name": "orphan", "gateway": "nowhere", "uri": null,
                                  "description": null, "enabled": true}]),
                ),
                "tool orphan",
            ),
        ];
        for (name, body, culprit) in cases {
            let v0 = registry_version(&cp).await;
            let (s, plan) = cp.post("/import?dry_run=true", body.clone()).await;
            assert_eq!(s, 200, "{backend} {name}: {plan}");
            assert_eq!(plan["failed"], 1, "{backend} {name}: {plan}");
            let (s, p) = cp.post("/import", body).await;
            assert_eq!(s, 422, "{backend} {name}: {p}");
            assert_eq!(p["type"], "urn:mcpgw:problem:import-rejected", "{p}");
            assert_eq!(p["errors"][0]["field"], culprit, "{backend} {name}: {p}");
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap()
                    .contains("nothing was imported"),
                "{p}"
            );
            for kind in ["gateways", "tools", "servers"] {
                assert_eq!(
                    count(&cp.get(&format!("/{kind}")).await.1, "items"),
                    0,
                    "{backend} {name}: {kind} left behind"
                );
            }
            assert_eq!(registry_version(&cp).await, v0, "{backend} {name}");
        }
        // The same document without the bad entry goes in whole.
        let (s, rep) = cp
            .post("/import", doc(json!([good_gw]), json!([tool])))
            .await;
        assert_eq!(s, 200, "{backend}: {rep}");
        assert_eq!(rep["created"], 3, "{backend}: {rep}");
        cp.stop().await;
    }
}

#[tokio::test]
async fn update_keeps_existing_credentials() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    seed(&cp).await;
    let (_, gws) = cp.get("/gateways").await;
    let id = gws["items"][0]["id"].as_str().unwrap().to_owned();
    let (kind, sealed) = cp.store.gateway_auth(&id).await.unwrap();
    assert_eq!(kind, mcpgw::model::AuthType::Basic);
    let (_, mut exported) = cp.get("/export?types=gateways").await;
    exported["gateways"][0]["description"] = json!("moved");
    exported["gateways"][0]["auth_type"] = json!("none");
    let (s, rep) = cp.post("/import?conflict_strategy=update", exported).await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(rep["updated"], 1, "{rep}");
    let (_, gw) = cp.get(&format!("/gateways/{id}")).await;
    assert_eq!(
        (gw["description"].as_str(), gw["auth_type"].as_str()),
        (Some("moved"), Some("basic"))
    );
    assert_eq!(
        cp.store.gateway_auth(&id).await.unwrap(),
        (kind, sealed),
        "credentials untouched"
    );
    cp.stop().await;
}

const RSA_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","n":"sXch","e":"AQAB","alg":"RS256"}]}"#;

fn corp_issuer() -> Value {
    json!({"issuer": "https://idp.example.com/realms/corp", "algorithms": ["RS256"],
           "jwks": serde_json::from_str::<Value>(RSA_JWKS).unwrap(),
           "claims": {"groups": "groups", "group_roles": {"mcp-users": ["developer"]}}})
}

async fn fresh(backend: &str) -> TestDb {
    match backend {
        "sqlite" => TestDb::sqlite(),
        _ => TestDb::postgres().await,
    }
}

/// `GET path`'s items as `name -> spec`.
async fn specs(cp: &TestCp, path: &str) -> std::collections::BTreeMap<String, Value> {
    let (s, v) = cp.get(path).await;
    assert_eq!(s, 200, "{path}: {v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i["spec"].clone()))
        .collect()
}

/// Server id -> name.
async fn server_names(cp: &TestCp) -> std::collections::BTreeMap<String, String> {
    cp.get("/servers").await.1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The edge entries an import of `issuers,policies,limits,plugins` writes, as stored (by
/// name or server id): what such an import must leave alone when it changes nothing.
async fn edge_entries(cp: &TestCp) -> Value {
    let mut all = serde_json::Map::new();
    for path in ["/issuers", "/policies", "/limits", "/plugins"] {
        all.insert(path.into(), json!(specs(cp, path).await));
    }
    all.into()
}

/// What an installation enforces, with server ids replaced by names, as its API answers.
async fn enforcement(cp: &TestCp) -> Value {
    let names = server_names(cp).await;
    let by_name = |m: std::collections::BTreeMap<String, Value>| -> Value {
        m.into_iter()
            .map(|(k, v)| (names.get(&k).cloned().unwrap_or(k), v))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut policies = by_name(specs(cp, "/policies").await);
    for (server, p) in policies.as_object_mut().unwrap() {
        // The resource names the server's id: compare it by name.
        let id = names.iter().find(|(_, n)| *n == server).unwrap().0;
        let r = p["resource"].as_str().unwrap().replace(id.as_str(), server);
        p["resource"] = json!(r);
    }
    let mut plugins = specs(cp, "/plugins").await;
    for p in plugins.values_mut() {
        if let Some(list) = p["conditions"]["servers"].as_array_mut() {
            for s in list {
                *s = json!(names[s.as_str().unwrap()]);
            }
        }
    }
    let mut pinning = serde_json::Map::new();
    for g in cp.get("/gateways").await.1["items"].as_array().unwrap() {
        let (s, p) = cp
            .get(&format!("/gateways/{}/pinning", g["id"].as_str().unwrap()))
            .await;
        assert_eq!(s, 200, "{p}");
        pinning.insert(g["name"].as_str().unwrap().to_owned(), p);
    }
    json!({
        "issuers": specs(cp, "/issuers").await,
        "policies": policies,
        "limits": by_name(specs(cp, "/limits").await),
        "plugins": plugins,
        "pinning": pinning,
    })
}

/// An installation with every kind the edge enforces (issuer, policy with a rule, default
/// and per-server limits, a plugin limited to a server, a gateway's pinning with its pins)
/// exported and imported into a fresh one answers the same through the API: nothing it
/// enforced is lost on the way. Both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_settings_round_trip_into_a_fresh_installation() {
    for backend in ["sqlite", "postgres"] {
        let up = super::upstream::TestUpstream::with_tools(&["read", "add"]);
        let running = up.serve(0).await;
        let src_db = fresh(backend).await;
        let src = TestCp::start(settings(&src_db)).await;
        let (s, g) = src
            .post("/gateways", json!({"name": "up", "url": running.url}))
            .await;
        assert_eq!(s, 201, "{backend}: {g}");
        let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
        let (s, v) = src
            .put(
                &format!("/gateways/{gid}/pinning"),
                json!({"on_change": "withhold", "new_tools": "hold"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["pins"].as_array().unwrap().len(), 2, "{v}");
        let (s, srv) = src.post("/servers", json!({"name": "s1"})).await;
        assert_eq!(s, 201, "{srv}");
        let sid = srv["id"].as_str().unwrap().to_owned();
        let (s, _) = src.post("/servers", json!({"name": "s2"})).await;
        assert_eq!(s, 201);
        for (path, body) in [
            ("/issuers/corp".to_owned(), corp_issuer()),
            (
                format!("/policies/{sid}"),
                json!({"resource": format!("https://mcp.example.com/servers/{sid}/mcp"),
                       "issuers": ["corp"], "scopes": ["mcp"],
                       "rules": [{"name": "devs", "when": "'developer' in principal.roles"},
                                 {"name": "no-rm", "effect": "deny", "when": "request.name == 'rm'"}]}),
            ),
            (
                format!("/limits/{sid}"),
                json!({"rates": [{"name": "per-user", "by": ["principal", "tool"],
                                  "requests": 10, "per_seconds": 60}]}),
            ),
            ("/limits/default".to_owned(), json!({})),
            (
                "/plugins/mask-pii".to_owned(),
                json!({"priority": 5, "conditions": {"servers": [sid]},
                       "pii": {"action": "mask", "detectors": ["email"]}}),
            ),
        ] {
            let (s, v) = src.put(&path, body).await;
            assert_eq!(s, 201, "{backend} PUT {path}: {v}");
        }
        let want = enforcement(&src).await;
        let (s, doc) = src.get("/export").await;
        assert_eq!(s, 200, "{doc}");
        assert_eq!(doc["version"], 2);
        for k in ["issuers", "policies", "limits", "plugins"] {
            assert!(count(&doc, k) >= 1, "{k}: {doc}");
        }
        assert_eq!(doc["policies"][0]["server"], "s1", "by name: {doc}");
        assert_eq!(
            doc["plugins"][0]["spec"]["conditions"]["servers"],
            json!(["s1"]),
            "{doc}"
        );
        let (_, only) = src.get("/export?types=policies").await;
        assert_eq!((count(&only, "policies"), count(&only, "servers")), (1, 0));

        let dst_db = fresh(backend).await;
        let dst = TestCp::start(settings(&dst_db)).await;
        let v0 = registry_version(&dst).await;
        let (s, plan) = dst.post("/import?dry_run=true", doc.clone()).await;
        assert_eq!(s, 200, "{backend}: {plan}");
        assert_eq!(plan["failed"], 0, "{plan}");
        assert_eq!(
            registry_version(&dst).await,
            v0,
            "a dry run changes nothing"
        );
        assert!(specs(&dst, "/issuers").await.is_empty());
        let (s, rep) = dst.post("/import", doc.clone()).await;
        assert_eq!(s, 200, "{backend}: {rep}");
        assert_eq!(rep["failed"], 0, "{rep}");
        let got = enforcement(&dst).await;
        assert_eq!(got, want, "{backend}: what the API answers after the move");
        // The ids moved: the policy's resource and the plugin follow the new server.
        let new_sid = server_names(&dst)
            .await
            .into_iter()
            .find(|(_, n)| n == "s1")
            .unwrap()
            .0;
        assert_ne!(new_sid, sid);
        let (_, p) = dst.get(&format!("/policies/{new_sid}")).await;
        assert_eq!(
            p["spec"]["resource"],
            format!("https://mcp.example.com/servers/{new_sid}/mcp")
        );
        // The edge enforces it: the snapshot has the policy and the plugin for the new id.
        let snap = dst.current_snapshot().await;
        assert_eq!(
            snap["servers"][&new_sid]["auth"]["rules"][0]["name"], "devs",
            "{snap}"
        );

        // Again, per strategy: skip changes nothing, fail names the conflicts, rename
        // leaves one-per-server entries alone and renames the rest.
        // The registry version is no measure from here on: the imported gateway's discovery
        // and health checks bump it in the background. What an import would write is.
        let before = edge_entries(&dst).await;
        let (s, skip) = dst
            .post(
                "/import?conflict_strategy=skip&types=issuers,policies,limits,plugins",
                doc.clone(),
            )
            .await;
        assert_eq!(s, 200, "{skip}");
        assert_eq!(skip["skipped"], 5, "{skip}");
        assert_eq!(edge_entries(&dst).await, before, "skip changes nothing");
        let (s, fail) = dst
            .post("/import?conflict_strategy=fail&types=policies", doc.clone())
            .await;
        assert_eq!(s, 409, "{fail}");
        assert!(
            fail["detail"].as_str().unwrap().contains("policy s1"),
            "{fail}"
        );
        let (s, ren) = dst
            .post(
                "/import?conflict_strategy=rename&types=plugins,limits",
                doc.clone(),
            )
            .await;
        assert_eq!(s, 200, "{ren}");
        assert_eq!(
            (ren["renamed"].as_u64(), ren["skipped"].as_u64()),
            (Some(1), Some(2)),
            "{ren}"
        );
        assert!(specs(&dst, "/plugins").await.contains_key("mask-pii-1"));
        // A renamed server takes its policy and limits along, its resource following its id.
        let (s, ren) = dst
            .post(
                "/import?conflict_strategy=rename&types=servers,policies,limits",
                doc.clone(),
            )
            .await;
        assert_eq!(s, 200, "{ren}");
        let renamed = server_names(&dst)
            .await
            .into_iter()
            .find(|(_, n)| n == "s1-1")
            .unwrap()
            .0;
        let (s, p) = dst.get(&format!("/policies/{renamed}")).await;
        assert_eq!(s, 200, "{p}");
        assert_eq!(
            p["spec"]["resource"],
            format!("https://mcp.example.com/servers/{renamed}/mcp")
        );
        let (s, l) = dst.get(&format!("/limits/{renamed}")).await;
        assert_eq!(
            (s, &l["spec"]["rates"][0]["name"]),
            (200, &json!("per-user")),
            "{l}"
        );
        // Two issuers with one `iss` are refused, as PUT /issuers refuses them.
        let before = edge_entries(&dst).await;
        let (s, ren) = dst
            .post(
                "/import?conflict_strategy=rename&types=issuers",
                doc.clone(),
            )
            .await;
        assert_eq!(s, 422, "{ren}");
        assert_eq!(ren["errors"][0]["field"], "issuer corp", "{ren}");
        assert!(
            ren["errors"][0]["reason"]
                .as_str()
                .unwrap()
                .starts_with("issuer: "),
            "{ren}"
        );
        assert_eq!(
            edge_entries(&dst).await,
            before,
            "a refused import changes nothing"
        );
        src.stop().await;
        dst.stop().await;
        running.stop().await;
    }
}

/// A version 2 document with one server `s1`, the issuer `corp` and what `extra` adds.
fn edge_doc(extra: Value) -> Value {
    let mut d = json!({"format": "mcpgw-export", "version": 2,
        "servers": [{"name": "s1", "enabled": true}],
        "issuers": [{"name": "corp", "spec": corp_issuer()}]});
    for (k, v) in extra.as_object().unwrap() {
        d[k] = v.clone();
    }
    d
}

fn policy(server: &str, issuers: Value, when: &str) -> Value {
    json!({"server": server, "spec": {"required": true,
        "resource": "https://mcp.example.com/servers/s1/mcp", "issuers": issuers,
        "rules": [{"name": "r", "when": when}]}})
}

/// Bad edge entries are refused with the entry and the field (a rule with its line and
/// column), after a dry run that names them; nothing is imported. Both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_edge_entries_are_refused_precisely_and_nothing_changes() {
    let rates = |extra: Value| {
        let mut r = json!({"name": "per-user", "by": ["principal", "tool"], "requests": 10, "per_seconds": 60});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        json!({"rates": [r]})
    };
    let pii = |servers: Value, detectors: Value| {
        json!([{"name": "mask", "spec": {"conditions": {"servers": servers},
                                          "pii": {"action": "mask", "detectors": detectors}}}])
    };
    for (backend, db) in super::harness::both_backends().await {
        let cp = TestCp::start(settings(&db)).await;
        let cases = [
            (
                "unknown server in a policy",
                edge_doc(json!({"policies": [policy("s1", json!(["corp"]), "true"),
                                             policy("ghost", json!(["corp"]), "true")]})),
                "policy ghost",
                "server: ghost is neither imported nor registered",
            ),
            (
                "bad rule",
                edge_doc(json!({"policies": [policy("s1", json!(["corp"]), "request.name ==")]})),
                "policy s1",
                "rules[0].when: line 1, column 16: Syntax error",
            ),
            (
                "bad rule in the passthrough path's policy",
                edge_doc(
                    json!({"policies": [{"spec": {"resource": "https://mcp.example.com/mcp",
                    "issuers": ["corp"], "rules": [{"name": "r", "when": "request.name =="}]}}]}),
                ),
                "passthrough policy passthrough",
                "rules[0].when: line 1, column 16: Syntax error",
            ),
            (
                "unknown issuer",
                edge_doc(json!({"policies": [policy("s1", json!(["nobody"]), "true")]})),
                "policy s1",
                "issuers[0]: no issuer \"nobody\"",
            ),
            (
                "bad policy field",
                edge_doc(
                    json!({"policies": [{"server": "s1", "spec": {"resource": "https://mcp.example.com/x", "rules": [], "bogus": 1}}]}),
                ),
                "policy s1",
                "bogus: unknown field `bogus`",
            ),
            (
                "bad limit",
                edge_doc(
                    json!({"limits": [{"server": "s1", "spec": rates(json!({"requests": 0}))}]}),
                ),
                "limits s1",
                "rates[0].requests: ",
            ),
            (
                "global limit without the service",
                edge_doc(
                    json!({"limits": [{"server": "s1", "spec": rates(json!({"global": true}))}]}),
                ),
                "limits s1",
                "rates[0].global: a global limit needs the rate-limit service",
            ),
            (
                "default limits of the wrong type",
                edge_doc(json!({"limits": [{"spec": {"rates": "many"}}]})),
                "default limits default",
                "rates: invalid type",
            ),
            (
                "limits of an unknown server",
                edge_doc(json!({"limits": [{"server": "ghost", "spec": {}}]})),
                "limits ghost",
                "server: ghost is neither imported nor registered",
            ),
            (
                "plugin limited to an unknown server",
                edge_doc(json!({"plugins": pii(json!(["s1", "ghost"]), json!(["email"]))})),
                "plugin mask",
                "conditions.servers[1]: ghost is neither an imported nor a registered virtual server",
            ),
            (
                "plugin with a bad detector",
                edge_doc(json!({"plugins": pii(json!(["s1"]), json!(["email", "horoscope"]))})),
                "plugin mask",
                "pii.detectors[1]: ",
            ),
            (
                "issuer with a bad algorithm",
                edge_doc(
                    json!({"issuers": [{"name": "corp", "spec": {"issuer": "https://idp.example.com", "algorithms": ["HS256"]}}]}),
                ),
                "issuer corp",
                "algorithms[0]: ",
            ),
            (
                "pin whose hash is not its definition's",
                edge_doc(
                    json!({"gateways": [{"name": "g", "url": "http://127.0.0.1:9/mcp",
                    "transport": "streamable_http", "enabled": true, "auth_type": "none", "description": null,
                    "pinning": {"on_change": "withhold", "new_tools": "hold", "first_discovery": "hold",
                                "pins": [{"tool": "t", "hash": "sha256:00", "description": "d",
                                          "spec": {"inputSchema": {"type": "object"}},
                                          "approved_at": "2026-01-01T00:00:00Z"}]}}]}),
                ),
                "gateway g",
                "pinning.pins[0].hash: sha256:00 is not the hash of the pinned definition (sha256:",
            ),
        ];
        for (name, body, culprit, says) in cases {
            let v0 = registry_version(&cp).await;
            let (s, plan) = cp.post("/import?dry_run=true", body.clone()).await;
            assert_eq!(s, 200, "{backend} {name}: {plan}");
            assert_eq!(plan["failed"], 1, "{backend} {name}: {plan}");
            let (s, p) = cp.post("/import", body).await;
            assert_eq!(s, 422, "{backend} {name}: {p}");
            assert_eq!(p["type"], "urn:mcpgw:problem:import-rejected", "{p}");
            assert_eq!(p["errors"][0]["field"], culprit, "{backend} {name}: {p}");
            let reason = p["errors"][0]["reason"].as_str().unwrap();
            assert!(reason.starts_with(says), "{backend} {name}: {reason}");
            for kind in [
                "gateways", "servers", "issuers", "policies", "limits", "plugins",
            ] {
                assert_eq!(
                    count(&cp.get(&format!("/{kind}")).await.1, "items"),
                    0,
                    "{backend} {name}: {kind} left behind"
                );
            }
            assert_eq!(registry_version(&cp).await, v0, "{backend} {name}");
        }
        // A version 1 document is still read; an unknown version is refused.
        let (s, rep) = cp
            .post(
                "/import",
                json!({"format": "mcpgw-export", "version": 1,
                                    "servers": [{"name": "old", "enabled": true}]}),
            )
            .await;
        assert_eq!((s, rep["created"].as_u64()), (200, Some(1)), "{rep}");
        let (s, p) = cp
            .post("/import", json!({"format": "mcpgw-export", "version": 3}))
            .await;
        assert_eq!(s, 422, "{p}");
        assert!(
            p["errors"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("unsupported export version 3"),
            "{p}"
        );
        cp.stop().await;
    }
}

/// What a Kubernetes resource owns stays read-only through an import as through the API:
/// updating an owned server, or writing the policy or limits of one, is refused naming the
/// resource; `skip` leaves it alone; the plugins the controller writes are not imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_kubernetes_resource_owns_stay_read_only() {
    use mcpgw::model::{ItemName, NewServer};
    use mcpgw::store::k8s::K8sOwner;
    for (backend, db) in super::harness::both_backends().await {
        let cp = TestCp::start(settings(&db)).await;
        cp.store
            .create_owned_server(
                NewServer {
                    name: ItemName::parse("s1").unwrap(),
                    description: None,
                    icon: None,
                    tags: Default::default(),
                    enabled: true,
                    naming: Default::default(),
                    allowed_origins: Default::default(),
                    tools: vec![],
                    resources: vec![],
                    prompts: vec![],
                },
                &K8sOwner {
                    kind: "MCPVirtualServer".into(),
                    namespace: "ns".into(),
                    name: "s1".into(),
                    uid: "u1".into(),
                },
            )
            .await
            .unwrap();
        let v0 = registry_version(&cp).await;
        let owned = "owned by MCPVirtualServer ns/s1; change it with kubectl";
        for (body, culprit) in [
            (edge_doc(json!({"issuers": []})), "server s1"),
            (
                edge_doc(
                    json!({"servers": [], "policies": [policy("s1", json!(["corp"]), "true")]}),
                ),
                "policy s1",
            ),
            (
                edge_doc(json!({"servers": [], "limits": [{"server": "s1", "spec": {}}]})),
                "limits s1",
            ),
        ] {
            let (s, p) = cp.post("/import", body).await;
            assert_eq!(s, 422, "{backend}: {p}");
            assert_eq!(p["errors"][0]["field"], culprit, "{backend}: {p}");
            assert_eq!(p["errors"][0]["reason"], owned, "{backend}: {p}");
            assert_eq!(registry_version(&cp).await, v0, "{backend}");
        }
        let (s, rep) = cp
            .post(
                "/import?conflict_strategy=skip",
                edge_doc(json!({"plugins": [{"name": "k8s:ns:s1:mask",
                    "spec": {"pii": {"action": "mask", "detectors": ["email"]}}}]})),
            )
            .await;
        assert_eq!(s, 200, "{backend}: {rep}");
        assert_eq!(
            (rep["created"].as_u64(), rep["skipped"].as_u64()),
            (Some(1), Some(2)),
            "the issuer only: {rep}"
        );
        assert!(
            rep["warnings"]
                .to_string()
                .contains("plugin k8s:ns:s1:mask: written by the Kubernetes controller"),
            "{rep}"
        );
        assert!(specs(&cp, "/plugins").await.is_empty());
        cp.stop().await;
    }
}

/// The passthrough path's policy (`/policies/passthrough`) travels without a server: out as
/// a policy with no `server`, in as the passthrough path's again; skipped by `skip` when
/// the installation has one. Both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passthrough_policy_moves_too() {
    for (backend, db) in super::harness::both_backends().await {
        let src = TestCp::start(settings(&db)).await;
        let (s, v) = src.put("/issuers/corp", corp_issuer()).await;
        assert_eq!(s, 201, "{backend}: {v}");
        let policy = json!({"resource": "https://mcp.example.com/mcp", "issuers": ["corp"],
            "rules": [{"name": "devs", "when": "'developer' in principal.roles"}]});
        let (s, v) = src.put("/policies/passthrough", policy).await;
        assert_eq!(s, 201, "{backend}: {v}");
        let (_, want) = src.get("/policies/passthrough").await;
        let (s, doc) = src.get("/export?types=issuers,policies").await;
        assert_eq!(s, 200, "{doc}");
        assert_eq!(count(&doc, "policies"), 1, "{doc}");
        assert!(doc["policies"][0].get("server").is_none(), "{doc}");
        assert!(
            !doc["notes"].to_string().contains("left out"),
            "nothing is left out: {doc}"
        );

        let dst_db = fresh(backend).await;
        let dst = TestCp::start(settings(&dst_db)).await;
        let (s, rep) = dst.post("/import", doc.clone()).await;
        assert_eq!(s, 200, "{backend}: {rep}");
        assert_eq!(rep["failed"], 0, "{rep}");
        let (s, got) = dst.get("/policies/passthrough").await;
        assert_eq!(s, 200, "{got}");
        assert_eq!(got["spec"], want["spec"], "{backend}");
        let snap = dst.current_snapshot().await;
        assert_eq!(
            snap["auth"]["passthrough"]["rules"][0]["name"], "devs",
            "{snap}"
        );
        let (s, skip) = dst
            .post("/import?conflict_strategy=skip", doc.clone())
            .await;
        assert_eq!(s, 200, "{skip}");
        assert_eq!(skip["skipped"], 2, "{skip}");
        src.stop().await;
        dst.stop().await;
    }
}
