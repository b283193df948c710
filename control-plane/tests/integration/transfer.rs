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
