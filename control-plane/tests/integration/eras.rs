//! Protocol eras found by discovery: real peers written with the official Python SDK
//! (`tests/py/peer_server.py`) that speak both eras, the 2025 one only, or 2026-07-28 only;
//! what each gateway records, what the snapshot tells the filter, and an upstream of the
//! stateless era only federated with that era's requests.

use serde_json::{Value, json};

use super::harness::{TestCp, TestDb, settings};
use super::upstream::PythonPeer;

/// The peer's catalog, by kind, as a gateway named `gw` exposes it.
async fn catalog(cp: &TestCp, gw_id: &str) -> [Vec<String>; 3] {
    let mut out: [Vec<String>; 3] = Default::default();
    for (slot, kind) in out.iter_mut().zip(["tools", "resources", "prompts"]) {
        let (s, page) = cp
            .get(&format!("/{kind}?gateway_id={gw_id}&limit=500"))
            .await;
        assert_eq!(s, 200, "{page}");
        *slot = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["original_name"].as_str().unwrap().to_owned())
            .collect();
        slot.sort();
    }
    out
}

async fn register(cp: &TestCp, name: &str, url: &str) -> Value {
    let (s, gw) = cp
        .post("/gateways", json!({"name": name, "url": url}))
        .await;
    assert_eq!(s, 201, "{name}: {gw}");
    gw["gateway"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_records_every_era_and_federates_an_upstream_of_the_stateless_era_only() {
    let (both, legacy, modern) = tokio::join!(
        PythonPeer::start("both"),
        PythonPeer::start("legacy"),
        PythonPeer::start("modern"),
    );
    let db = TestDb::postgres().await;
    let cp = TestCp::start(settings(&db)).await;

    let gw_both = register(&cp, "both", &both.url).await;
    assert_eq!(
        gw_both["protocol_versions"],
        json!(["2026-07-28", "2025-11-25"])
    );
    assert_eq!(gw_both["protocol_version"], "2025-11-25", "initialize's");
    let gw_legacy = register(&cp, "legacy", &legacy.url).await;
    assert_eq!(gw_legacy["protocol_versions"], json!(["2025-11-25"]));
    let gw_modern = register(&cp, "modern", &modern.url).await;
    assert_eq!(gw_modern["protocol_versions"], json!(["2026-07-28"]));
    assert_eq!(
        gw_modern["protocol_version"], "2026-07-28",
        "server/discover's"
    );
    assert_eq!(gw_modern["server_info"]["name"], "peer-modern");
    assert!(
        gw_modern["capabilities"]["tools"].is_object(),
        "{gw_modern}"
    );

    // The same catalog, listed in either era.
    let id = |g: &Value| g["id"].as_str().unwrap().to_owned();
    let listed_2025 = catalog(&cp, &id(&gw_both)).await;
    let listed_2026 = catalog(&cp, &id(&gw_modern)).await;
    assert_eq!(listed_2026, listed_2025);
    assert_eq!(
        listed_2026[0],
        [
            "add",
            "ask_profile",
            "count",
            "echo",
            "list_roots",
            "log_levels",
            "open_url",
            "sample"
        ]
    );
    assert_eq!(listed_2026[1], ["greeting", "item"]);
    assert_eq!(listed_2026[2], ["greet"]);
    let (_, tmpl) = cp
        .get(&format!("/resources?gateway_id={}", id(&gw_modern)))
        .await;
    let uris: Vec<&str> = tmpl["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert!(uris.contains(&"peer://items/{name}"), "{uris:?}");

    // A rediscovery in the stateless era changes nothing, and the session it keeps lives.
    let (s, r) = cp
        .post(&format!("/gateways/{}/refresh", id(&gw_modern)), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["sync"]["added"], 0, "{r}");
    assert_eq!(r["sync"]["removed"], 0, "{r}");
    assert_eq!(r["gateway"]["protocol_versions"], json!(["2026-07-28"]));
    assert!(cp.federation.has_live_session(&id(&gw_modern)).await);
    // Health checks keep it up (2026-07-28 has no ping: its error is an answer).
    cp.federation.check_all().await;
    let (_, after) = cp.get(&format!("/gateways/{}", id(&gw_modern))).await;
    assert_eq!(after["reachable"], true, "{after}");
    assert_eq!(after["consecutive_failures"], 0, "{after}");
    assert!(after["last_error"].is_null(), "{after}");
    assert!(cp.federation.has_live_session(&id(&gw_modern)).await);

    // The filter is told what each upstream speaks.
    let snap = cp.current_snapshot().await;
    let versions = |g: &Value| snap["upstreams"][id(g)]["protocol_versions"].clone();
    assert_eq!(versions(&gw_both), json!(["2026-07-28", "2025-11-25"]));
    assert_eq!(versions(&gw_legacy), json!(["2025-11-25"]));
    assert_eq!(versions(&gw_modern), json!(["2026-07-28"]));
    cp.stop().await;
}
