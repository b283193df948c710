//! Federation against real MCP servers: the in-process rmcp server, the reference
//! server-everything, and misbehaving upstreams.

use std::time::Duration;

use serde_json::{Value, json};

use super::harness::{TestCp, TestDb, eventually, settings};
use super::upstream::{Everything, Misbehavior, TestUpstream, broken_upstream};

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_all_pages_follows_list_changed_and_reports_collisions() {
    let up = TestUpstream::with_tools(&["alpha", "bravo", "charlie", "delta", "echo"]);
    let running = up.serve(0).await;
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;

    let (s, g) = cp
        .post(
            "/gateways",
            json!({"name": "up", "url": running.url, "tags": ["test"]}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["sync"]["added"], 5 + 3 + 1 + 1, "{g}");
    assert_eq!(g["gateway"]["reachable"], true);
    assert_eq!(g["gateway"]["server_info"]["name"], "mcpgw-test-upstream");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();

    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    assert_eq!(
        names(&tools),
        ["alpha", "bravo", "charlie", "delta", "echo"].map(|n| format!("up__{n}"))
    );
    let t = &tools["items"][0];
    assert_eq!(t["original_name"], "alpha");
    assert_eq!(t["integration_type"], "MCP");
    assert_eq!(t["input_schema"]["properties"]["x"]["type"], "string");
    let (_, res) = cp.get("/resources").await;
    let templates: Vec<&Value> = res["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["is_template"] == true)
        .collect();
    assert_eq!(res["items"].as_array().unwrap().len(), 4);
    assert_eq!(templates[0]["uri"], "test://doc/{id}");
    let (_, prompts) = cp.get("/prompts").await;
    assert_eq!(names(&prompts), vec!["up__greet"]);
    assert_eq!(prompts["items"][0]["arguments"][0]["name"], "who");

    // Discovered items: upstream-owned fields are read-only, operator fields are not.
    let tid = t["id"].as_str().unwrap();
    let (s, _) = cp
        .put(&format!("/tools/{tid}"), json!({"description": "mine"}))
        .await;
    assert_eq!(s, 422);
    let (s, _) = cp
        .put(&format!("/tools/{tid}"), json!({"tags": ["Pinned"]}))
        .await;
    assert_eq!(s, 200);

    // The upstream changes its tools and notifies: the catalog follows, without a refresh call.
    let v_before = cp.get("/registry").await.1["registry_version"]
        .as_i64()
        .unwrap();
    up.set_tools(&["alpha", "foxtrot"]).await;
    let got = eventually(
        "list_changed to update the catalog",
        Duration::from_secs(20),
        || async {
            let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
            let n = names(&tools);
            (n == vec!["up__alpha", "up__foxtrot"]).then_some(n)
        },
    )
    .await;
    assert_eq!(got.len(), 2);
    let v_after = cp.get("/registry").await.1["registry_version"]
        .as_i64()
        .unwrap();
    assert!(v_after > v_before);
    // Operator fields survive the resync.
    let (_, alpha) = cp.get(&format!("/tools/{tid}")).await;
    assert_eq!(alpha["tags"], json!(["pinned"]));

    // Manual refresh with nothing new changes nothing.
    let (s, r) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["sync"]["added"], 0);
    assert_eq!(r["sync"]["removed"], 0);

    // A second gateway whose prefixed names are taken: collisions reported, nothing overwritten.
    let (s, _) = cp
        .post(
            "/tools",
            json!({"name": "dup__alpha", "url": "https://api.example/a"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, g2) = cp
        .post("/gateways", json!({"name": "dup", "url": running.url}))
        .await;
    assert_eq!(s, 201, "{g2}");
    let collisions = g2["sync"]["collisions"].as_array().unwrap();
    assert_eq!(collisions.len(), 1, "{g2}");
    assert_eq!(collisions[0]["name"], "dup__alpha");
    let (_, manual) = cp.get("/tools?tags=").await;
    let dup_alpha = manual["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "dup__alpha")
        .unwrap();
    assert_eq!(dup_alpha["integration_type"], "REST", "hand-made tool kept");

    // Deleting a gateway removes its catalog.
    let (s, _) = cp.delete(&format!("/gateways/{gid}")).await;
    assert_eq!(s, 204);
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    assert!(names(&tools).is_empty());
    cp.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_flap_gateway_and_items() {
    let up = TestUpstream::with_tools(&["one", "two"]);
    let running = up.serve(0).await;
    let port = running.addr.port();
    let db = TestDb::postgres().await;
    let mut s = settings(&db);
    s.federation.failure_threshold = 2;
    let cp = TestCp::start(s).await;
    let (st, g) = cp
        .post("/gateways", json!({"name": "flappy", "url": running.url}))
        .await;
    assert_eq!(st, 201, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();

    cp.federation.check_all().await;
    let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
    assert_eq!(gw["reachable"], true);

    running.stop().await;
    cp.federation.check_all().await;
    let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
    assert_eq!(gw["reachable"], true, "one failure is below the threshold");
    assert_eq!(gw["consecutive_failures"], 1);
    cp.federation.check_all().await;
    let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
    assert_eq!(gw["reachable"], false, "{gw}");
    assert!(gw["last_error"].as_str().is_some());
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    assert!(
        tools["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["reachable"] == false)
    );
    assert_eq!(
        tools["items"].as_array().unwrap().len(),
        2,
        "catalog kept while down"
    );

    // Back on the same port: one check restores gateway and items.
    let again = up.serve(port).await;
    cp.federation.check_all().await;
    let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
    assert_eq!(gw["reachable"], true, "{gw}");
    assert_eq!(gw["consecutive_failures"], 0);
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    assert!(
        tools["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["reachable"] == true)
    );
    let (_, metrics) = cp.get("/metrics").await;
    let m = metrics.as_str().unwrap();
    assert!(
        m.contains("mcpgw_gateway_health_transitions_total{to=\"unreachable\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("mcpgw_gateway_health_transitions_total{to=\"reachable\"} 1"),
        "{m}"
    );
    cp.stop().await;
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_everything_over_streamable_http() {
    everything_round("streamableHttp", "streamable_http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_server_everything_over_legacy_sse() {
    everything_round("sse", "sse").await;
}

async fn everything_round(mode: &str, transport: &str) {
    let every = Everything::start(mode).await;
    let db = TestDb::sqlite();
    let mut s = settings(&db);
    s.federation.timeout = Duration::from_secs(20);
    let cp = TestCp::start(s).await;
    let (st, g) = cp
        .post(
            "/gateways",
            json!({"name": "every", "url": every.url, "transport": transport}),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    assert_eq!(g["gateway"]["server_info"]["name"].as_str().is_some(), true);
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let all = |kind: &'static str| {
        let cp = &cp;
        let gid = gid.clone();
        async move {
            let (_, p) = cp.get(&format!("/{kind}?gateway_id={gid}&limit=500")).await;
            p["items"].as_array().cloned().unwrap_or_default()
        }
    };
    let tools = all("tools").await;
    assert!(
        tools.iter().any(|t| t["name"] == "every__echo"),
        "{tools:?}"
    );
    assert!(
        tools
            .iter()
            .all(|t| t["name"].as_str().unwrap().starts_with("every__"))
    );
    let resources = all("resources").await;
    assert!(!resources.is_empty(), "resources or templates discovered");
    assert!(
        resources
            .iter()
            .all(|r| r["uri"].as_str().is_some_and(|u| !u.is_empty()))
    );
    assert!(!all("prompts").await.is_empty());
    let (st, r) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["sync"]["added"], 0, "{r}");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_upstreams_leave_the_registry_consistent() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let v0 = cp.get("/registry").await.1["registry_version"].clone();
    // A stream cut mid-event may be reported as a failure or, while the client waits
    // for a resumption that never comes, as a timeout; either way the API answers.
    for (kind, want) in [
        (Misbehavior::Hang, &[504][..]),
        (Misbehavior::Garbage, &[502][..]),
        (Misbehavior::CloseMidStream, &[502, 504][..]),
    ] {
        let (url, task) = broken_upstream(kind).await;
        let name = format!("{kind:?}").to_lowercase();
        // While a registration hangs on the upstream, the API keeps answering.
        let create = cp.post("/gateways", json!({"name": name, "url": url}));
        let probe = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cp.get("/health").await
        };
        let ((s, body), (hs, _)) = tokio::join!(create, probe);
        assert_eq!(hs, 200, "{kind:?}: API blocked");
        assert!(want.contains(&s), "{kind:?}: {s} {body}");
        let (_, gws) = cp.get("/gateways").await;
        assert!(
            names(&gws).is_empty(),
            "{kind:?}: nothing stored on failure"
        );

        // An existing gateway that turns bad keeps its catalog and records the error.
        let (s, g) = cp
            .post(
                "/gateways",
                json!({"name": name, "url": url, "discover": false}),
            )
            .await;
        assert_eq!(s, 201, "{g}");
        let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
        let (s, _) = cp
            .post(&format!("/gateways/{gid}/refresh"), json!({}))
            .await;
        assert!(want.contains(&s), "{kind:?}: {s}");
        let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
        assert!(gw["last_error"].as_str().is_some(), "{gw}");
        assert_eq!(gw["consecutive_failures"], 1);
        cp.delete(&format!("/gateways/{gid}")).await;
        task.abort();
    }
    let (_, tools) = cp.get("/tools").await;
    assert!(names(&tools).is_empty());
    assert_eq!(cp.get("/ready").await.0, 200);
    assert_ne!(cp.get("/registry").await.1["registry_version"], v0);
    cp.stop().await;
}

#[tokio::test]
async fn ssrf_guard_refuses_loopback_unless_allowed() {
    let db = TestDb::sqlite();
    let mut s = settings(&db);
    s.federation.ssrf.allow_loopback = false;
    let cp = TestCp::start(s).await;
    for url in [
        "http://127.0.0.1:1/mcp",
        "http://localhost:1/mcp",
        "http://[::1]:1/mcp",
        "http://169.254.169.254/",
    ] {
        let (s, body) = cp.post("/gateways", json!({"name": "x", "url": url})).await;
        assert_eq!(s, 422, "{url}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("refused"),
            "{body}"
        );
    }
    cp.stop().await;
}
