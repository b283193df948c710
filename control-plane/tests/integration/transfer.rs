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
        gws["items"][0]["auth_type"], "basic",
        "same key: credentials carried over"
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
                {"name": "upstream_echo", "integration_type": "MCP", "tags": []}
            ],
            "gateways": [
                {"name": "My Time Server", "url": "http://127.0.0.1:9/mcp", "transport": "STREAMABLEHTTP",
                 "description": "time", "is_active": false, "tags": ["time"], "auth_type": "bearer", "auth_value": "opaque"}
            ],
            "servers": [
                {"name": "weather-srv", "description": "w", "tool_ids": ["get_weather", "cf-id-unknown"], "is_active": true, "tags": []}
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
    assert_eq!(rep["created"], 5, "{rep}");
    let warnings = rep["warnings"].to_string();
    assert!(warnings.contains("MCP tools left out"), "{warnings}");
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
    let t = &tools["items"][0];
    assert_eq!(
        (t["name"].as_str(), t["request_type"].as_str()),
        (Some("get_weather"), Some("GET"))
    );
    assert_eq!(t["tags"], json!(["ops"]));
    let (_, prompts) = cp.get("/prompts").await;
    assert_eq!(
        prompts["items"][0]["arguments"],
        json!([{"name": "text", "description": "input", "required": true}])
    );
    let (_, servers) = cp.get("/servers").await;
    assert_eq!(servers["items"][0]["associated_tools"], json!([t["id"]]));
    cp.stop().await;
}
