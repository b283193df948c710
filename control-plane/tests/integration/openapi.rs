//! The committed OpenAPI document matches the code.

use super::harness::{TestCp, TestDb, settings};

#[tokio::test]
async fn committed_openapi_is_current_and_served() {
    let generated = mcpgw::api::openapi_json();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    if std::env::var_os("MCPGW_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: regenerate with `cargo run -p mcpgw -- openapi > docs/openapi.json` (or MCPGW_BLESS=1 cargo test -p mcpgw openapi)"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1"
    );
    for p in [
        "/gateways",
        "/gateways/{id}/refresh",
        "/tools/{id}/state",
        "/servers",
        "/export",
        "/import",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} documented");
    }
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let (s, served) = cp.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(served, doc);
    cp.stop().await;
}
