//! Federation against real MCP servers: the in-process rmcp server, the reference
//! server-everything, and misbehaving upstreams.

use std::time::Duration;

use serde_json::{Value, json};

use super::harness::{TestCp, TestDb, eventually, settings};
use super::upstream::{Everything, Misbehavior, TestUpstream, broken_upstream, broken_upstream_at};

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
    assert!(
        g["gateway"]["server_info"]["name"].as_str().is_some(),
        "{g}"
    );
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

async fn registry_version(cp: &TestCp) -> i64 {
    cp.get("/registry").await.1["registry_version"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_upstreams_leave_the_registry_consistent() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    // A stream cut mid-event may be reported as a failure or, while the client waits
    // for a resumption that never comes, as a timeout; either way the API answers.
    for (kind, want) in [
        (Misbehavior::Hang, &[504][..]),
        (Misbehavior::Garbage, &[502][..]),
        (Misbehavior::CloseMidStream, &[502, 504][..]),
    ] {
        let (url, task) = broken_upstream(kind).await;
        let name = format!("{kind:?}").to_lowercase();
        let v0 = registry_version(&cp).await;
        // While a registration hangs on the upstream, the API keeps answering, store
        // reads included.
        let create = cp.post("/gateways", json!({"name": name, "url": url}));
        let probe = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cp.get("/gateways").await
        };
        let ((s, body), (ps, listed)) = tokio::join!(create, probe);
        assert_eq!(ps, 200, "{kind:?}: API blocked: {listed}");
        assert!(want.contains(&s), "{kind:?}: {s} {body}");
        let (_, gws) = cp.get("/gateways").await;
        assert!(
            names(&gws).is_empty(),
            "{kind:?}: nothing stored on failure"
        );
        assert_eq!(
            registry_version(&cp).await,
            v0,
            "{kind:?}: a failed registration changes no registry version"
        );
        task.abort();

        // A discovered gateway whose upstream turns bad keeps its catalog and records
        // the error.
        let good = TestUpstream::with_tools(&["keep1", "keep2"]);
        let running = good.serve(0).await;
        let port = running.addr.port();
        let (s, g) = cp
            .post("/gateways", json!({"name": name, "url": running.url}))
            .await;
        assert_eq!(s, 201, "{g}");
        let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
        let (_, before) = cp.get(&format!("/tools?gateway_id={gid}")).await;
        assert_eq!(
            names(&before),
            vec![format!("{name}__keep1"), format!("{name}__keep2")]
        );
        running.stop().await;
        let (_, task) = broken_upstream_at(port, kind).await;
        let v1 = registry_version(&cp).await;
        let (s, r) = cp
            .post(&format!("/gateways/{gid}/refresh"), json!({}))
            .await;
        assert!(want.contains(&s), "{kind:?}: {s} {r}");
        let (_, after) = cp.get(&format!("/tools?gateway_id={gid}")).await;
        assert_eq!(names(&after), names(&before), "{kind:?}: catalog kept");
        assert!(
            after["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["reachable"] == true && t["enabled"] == true),
            "{kind:?}: one failure is below the threshold: {after}"
        );
        let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
        assert!(gw["last_error"].as_str().is_some(), "{gw}");
        assert_eq!(gw["consecutive_failures"], 1);
        assert_eq!(gw["reachable"], true);
        assert_eq!(
            registry_version(&cp).await,
            v1,
            "{kind:?}: a failed refresh below the threshold changes nothing a snapshot contains"
        );
        let (s, _) = cp.delete(&format!("/gateways/{gid}")).await;
        assert_eq!(s, 204);
        task.abort();
    }
    let (_, tools) = cp.get("/tools").await;
    assert!(names(&tools).is_empty());
    assert_eq!(cp.get("/ready").await.0, 200);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_gateways_leave_the_catalog_alone() {
    let up = TestUpstream::with_tools(&["one", "two"]);
    let running = up.serve(0).await;
    let other = TestUpstream::with_tools(&["x"]).serve(0).await;
    let db = TestDb::postgres().await;
    let cp = TestCp::start(settings(&db)).await;
    let all_enabled = |page: &Value, want: bool| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["enabled"] == want)
    };

    // Registered disabled: the discovered catalog is stored disabled, no session kept.
    let (s, g) = cp
        .post(
            "/gateways",
            json!({"name": "off", "url": running.url, "enabled": false}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let off = g["gateway"]["id"].as_str().unwrap().to_owned();
    let (_, tools) = cp.get(&format!("/tools?gateway_id={off}")).await;
    assert_eq!(names(&tools).len(), 2);
    assert!(all_enabled(&tools, false), "{tools}");
    for kind in ["resources", "prompts"] {
        let (_, items) = cp.get(&format!("/{kind}?gateway_id={off}")).await;
        assert!(all_enabled(&items, false), "{kind}: {items}");
    }
    assert!(!cp.federation.has_live_session(&off).await);

    // A refresh of a disabled gateway is refused, clearly.
    let (s, p) = cp
        .post(&format!("/gateways/{off}/refresh"), json!({}))
        .await;
    assert_eq!(s, 409, "{p}");
    assert_eq!(p["type"], "urn:mcpgw:problem:gateway-disabled");
    assert!(p["detail"].as_str().unwrap().contains("disabled"), "{p}");

    // An enabled gateway holds a session; disabling it drops the session, and a
    // list_changed afterwards changes nothing.
    let (s, g) = cp
        .post("/gateways", json!({"name": "on", "url": running.url}))
        .await;
    assert_eq!(s, 201, "{g}");
    let on = g["gateway"]["id"].as_str().unwrap().to_owned();
    assert!(cp.federation.has_live_session(&on).await);
    let (s, gw) = cp
        .post(&format!("/gateways/{on}/state?activate=false"), json!({}))
        .await;
    assert_eq!((s, gw["enabled"].as_bool()), (200, Some(false)), "{gw}");
    assert!(!cp.federation.has_live_session(&on).await);
    let v = cp.get("/registry").await.1;
    up.set_tools(&["one", "two", "three"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, tools) = cp.get(&format!("/tools?gateway_id={on}")).await;
    assert_eq!(names(&tools), vec!["on__one", "on__two"]);
    assert!(all_enabled(&tools, false), "{tools}");
    assert_eq!(cp.get("/registry").await.1, v, "nothing changed");

    // Enabled again, a refresh follows the upstream; then a new URL drops the session.
    let (s, _) = cp
        .put(&format!("/gateways/{on}"), json!({"enabled": true}))
        .await;
    assert_eq!(s, 200);
    let (s, r) = cp.post(&format!("/gateways/{on}/refresh"), json!({})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["sync"]["added"], 1, "{r}");
    assert!(cp.federation.has_live_session(&on).await);
    let (s, gw) = cp
        .put(&format!("/gateways/{on}"), json!({"url": other.url}))
        .await;
    assert_eq!(s, 200, "{gw}");
    assert!(
        !cp.federation.has_live_session(&on).await,
        "a session to the old URL is dropped"
    );
    let (s, _) = cp
        .put(&format!("/gateways/{on}"), json!({"enabled": false}))
        .await;
    assert_eq!(s, 200);
    cp.stop().await;
    running.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collisions_from_templates_and_background_resyncs_are_visible() {
    // The template is named like a resource: both would be `up__doc0`.
    let up = TestUpstream::with_tools(&["alpha"]).with_template_name("doc0");
    let running = up.serve(0).await;
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let (s, g) = cp
        .post("/gateways", json!({"name": "up", "url": running.url}))
        .await;
    assert_eq!(s, 201, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let want = json!([{"kind": "resource", "name": "up__doc0", "existing_gateway_id": gid}]);
    assert_eq!(g["sync"]["collisions"], want, "{g}");
    assert_eq!(g["gateway"]["collisions"], want, "{g}");
    let (_, res) = cp.get(&format!("/resources?gateway_id={gid}")).await;
    let doc0: Vec<&Value> = res["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "up__doc0")
        .collect();
    assert_eq!(doc0.len(), 1);
    assert_eq!(doc0[0]["is_template"], false, "the first listed is kept");

    // A hand-made tool takes a name the upstream adds later: the list_changed resync
    // stores the collision on the gateway, where the API shows it.
    let (s, _) = cp
        .post(
            "/tools",
            json!({"name": "up__zulu", "url": "https://api.example/z"}),
        )
        .await;
    assert_eq!(s, 201);
    up.set_tools(&["alpha", "zulu"]).await;
    let gw = eventually(
        "the resync's collision on the gateway",
        Duration::from_secs(20),
        || async {
            let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
            let c = gw["collisions"].as_array().cloned().unwrap_or_default();
            c.iter().any(|c| c["name"] == "up__zulu").then_some(gw)
        },
    )
    .await;
    let zulu = gw["collisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "up__zulu")
        .unwrap()
        .clone();
    assert_eq!(
        zulu,
        json!({"kind": "tool", "name": "up__zulu", "existing_gateway_id": null})
    );
    cp.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_health_loop_marks_a_gateway_down_and_up() {
    let up = TestUpstream::with_tools(&["one"]);
    let running = up.serve(0).await;
    let port = running.addr.port();
    let db = TestDb::sqlite();
    let mut s = settings(&db);
    s.federation.health_interval = Duration::from_millis(200);
    s.federation.failure_threshold = 1;
    // Long, so that a health pass stuck on a hanging upstream (below) lasts long.
    s.federation.timeout = Duration::from_secs(20);
    let cp = TestCp::start(s).await;
    let (st, g) = cp
        .post("/gateways", json!({"name": "looped", "url": running.url}))
        .await;
    assert_eq!(st, 201, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let reachable = |want: bool| {
        let cp = &cp;
        let gid = gid.clone();
        move || {
            let gid = gid.clone();
            async move {
                let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
                (gw["reachable"] == want).then_some(gw)
            }
        }
    };

    running.stop().await;
    let gw = eventually(
        "the health loop to mark the gateway unreachable",
        Duration::from_secs(15),
        reachable(false),
    )
    .await;
    assert!(gw["last_error"].as_str().is_some(), "{gw}");
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    assert_eq!(tools["items"][0]["reachable"], false, "{tools}");

    let again = up.serve(port).await;
    eventually(
        "the health loop to mark the gateway reachable again",
        Duration::from_secs(15),
        reachable(true),
    )
    .await;
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    assert_eq!(tools["items"][0]["reachable"], true, "{tools}");

    // A gateway that hangs keeps every health pass busy for the whole timeout; a
    // list_changed meanwhile is still handled at once, not after the pass.
    let (stuck_url, stuck) = broken_upstream(Misbehavior::Hang).await;
    let (st, g) = cp
        .post(
            "/gateways",
            json!({"name": "stuck", "url": stuck_url, "discover": false}),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    up.set_tools(&["one", "two"]).await;
    eventually(
        "list_changed to be handled during a stuck health pass",
        Duration::from_secs(3),
        || async {
            let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
            (names(&tools) == ["looped__one", "looped__two"]).then_some(())
        },
    )
    .await;
    cp.stop().await;
    again.stop().await;
    stuck.abort();
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

#[tokio::test]
async fn connection_failures_do_not_tell_refused_from_unreachable() {
    let db = TestDb::sqlite();
    let mut s = settings(&db);
    // Longer than a failed neighbour discovery takes to report "no route".
    s.federation.timeout = Duration::from_secs(10);
    let cp = TestCp::start(s).await;
    let closed = super::harness::free_port();
    let refused = format!("http://127.0.0.1:{closed}/mcp?token=s3cret");
    let (s, body) = cp
        .post("/gateways", json!({"name": "refused", "url": refused}))
        .await;
    assert_eq!(s, 502, "{body}");
    let detail = body["detail"].as_str().unwrap().to_owned();
    assert_eq!(
        detail, "upstream initialize failed: no connection to the upstream",
        "no OS error, address or port in the answer"
    );
    // A host without a route fails alike (where this machine has no route to the
    // documentation prefix, which it reports at once; elsewhere it would time out).
    let unreachable = "http://[2001:db8::1]:9/mcp";
    let fast = std::net::TcpStream::connect_timeout(
        &"[2001:db8::1]:9".parse().unwrap(),
        Duration::from_secs(8),
    )
    .map_err(|e| e.kind());
    if matches!(
        fast,
        Err(std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable)
    ) {
        let (s, body) = cp
            .post(
                "/gateways",
                json!({"name": "unroutable", "url": unreachable}),
            )
            .await;
        assert_eq!(
            (s, body["detail"].as_str()),
            (502, Some(detail.as_str())),
            "{body}"
        );
    }
    cp.stop().await;
}

const V1_SEALED_BY_THE_OLD_CODE: &str = "v1:UrV8+ImSMdqmXIu1Dd05sTSEqXYRX0ym7qd4Fz9DS/gOXqzv1fNFtFRsCZrJ0jfc8SEJ1mvg9tHTd6krRX5J8PVr81RC9z0=";

async fn sql(db: &TestDb, statement: &str, binds: &[&str]) {
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    let mut q = sqlx::query(statement);
    for b in binds {
        q = q.bind(*b);
    }
    q.execute(&mut conn).await.unwrap();
}

async fn sealed_of(db: &TestDb, id: &str) -> String {
    use sqlx::Row as _;
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    sqlx::query("SELECT auth_sealed FROM gateways WHERE id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .try_get("auth_sealed")
        .unwrap()
}

/// Stored credentials reach only the origin they were given for: a new URL on another
/// origin must bring them again (or drop them), through the API and through imports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_credentials_do_not_follow_a_url_to_another_origin() {
    let token = "Bearer only-for-a";
    let a = TestUpstream::with_tools(&["one"]).with_required_auth(token);
    let a_up = a.serve(0).await;
    let b = TestUpstream::with_tools(&["one"]);
    let b_up = b.serve(0).await;
    let db = TestDb::postgres().await;
    let cp = TestCp::start(settings(&db)).await;
    let (s, g) = cp
        .post(
            "/gateways",
            json!({"name": "a", "url": a_up.url, "auth_type": "bearer", "auth_token": "only-for-a"}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();

    // Another origin without credentials: refused, saying why; nothing changes.
    let (s, p) = cp
        .put(&format!("/gateways/{gid}"), json!({"url": b_up.url}))
        .await;
    assert_eq!(s, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], "auth_type", "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("give them again"),
        "{p}"
    );
    assert_eq!(cp.get(&format!("/gateways/{gid}")).await.1["url"], a_up.url);
    // The same origin (another path or query): the credentials stay and keep working.
    let same_origin = format!("{}?tenant=x", a_up.url);
    let (s, v) = cp
        .put(&format!("/gateways/{gid}"), json!({"url": same_origin}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, r) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    // An import moving it elsewhere is refused for that entry, dry run included.
    let doc = json!({"format": "mcpgw-export", "version": 1, "gateways": [
        {"name": "a", "url": b_up.url, "transport": "streamable_http",
         "enabled": true, "auth_type": "bearer", "description": null}]});
    let (s, plan) = cp
        .post("/import?dry_run=true&conflict_strategy=update", doc.clone())
        .await;
    assert_eq!((s, plan["failed"].as_u64()), (200, Some(1)), "{plan}");
    let (s, p) = cp.post("/import?conflict_strategy=update", doc).await;
    assert_eq!(s, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], "gateway a", "{p}");
    assert!(
        p["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("auth_type"),
        "{p}"
    );
    // Dropping them moves it; giving new ones for the new origin does too.
    let (s, v) = cp
        .put(
            &format!("/gateways/{gid}"),
            json!({"url": b_up.url, "auth_type": "none"}),
        )
        .await;
    assert_eq!((s, v["auth_type"].as_str()), (200, Some("none")), "{v}");
    let (s, r) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, v) = cp
        .put(
            &format!("/gateways/{gid}"),
            json!({"url": a_up.url, "auth_type": "bearer", "auth_token": "only-for-a"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, r) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    // B never saw the token.
    assert!(
        !b.auth_seen().iter().any(|h| h.contains("only-for-a")),
        "{:?}",
        b.auth_seen()
    );
    cp.stop().await;
    a_up.stop().await;
    b_up.stop().await;
}

/// A sealed value is bound to its gateway and origin: copied to another row, or left in
/// place while the URL is changed behind the API's back, it does not open, and no
/// upstream receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_credentials_do_not_open_for_another_gateway_or_origin() {
    for (backend, db) in super::harness::both_backends().await {
        let a = TestUpstream::with_tools(&["one"]).with_required_auth("Bearer secret-of-a");
        let a_up = a.serve(0).await;
        let b = TestUpstream::with_tools(&["one"]);
        let b_up = b.serve(0).await;
        let cp = TestCp::start(settings(&db)).await;
        let mut ids = Vec::new();
        for (name, url, token) in [("a", &a_up.url, "secret-of-a"), ("b", &b_up.url, "for-b")] {
            let (s, g) = cp
                .post(
                    "/gateways",
                    json!({"name": name, "url": url, "auth_type": "bearer", "auth_token": token}),
                )
                .await;
            assert_eq!(s, 201, "{backend}: {g}");
            ids.push(g["gateway"]["id"].as_str().unwrap().to_owned());
        }
        let (ga, gb) = (&ids[0], &ids[1]);
        // A's sealed credentials copied into B's row.
        let stolen = sealed_of(&db, ga).await;
        sql(
            &db,
            "UPDATE gateways SET auth_sealed = $1 WHERE id = $2",
            &[&stolen, gb],
        )
        .await;
        let (s, p) = cp.post(&format!("/gateways/{gb}/refresh"), json!({})).await;
        assert_eq!(s, 500, "{backend}: {p}");
        assert_eq!(p["type"], "urn:mcpgw:problem:credentials-unreadable", "{p}");
        assert!(
            cp.store
                .gateway_credentials(gb, &mcpgw::crypto::SecretBox::dev())
                .await
                .is_err(),
            "{backend}"
        );
        // A's URL changed in the database to B's origin: A's credentials stay closed.
        sql(
            &db,
            "UPDATE gateways SET url = $1 WHERE id = $2",
            &[&b_up.url, ga],
        )
        .await;
        let (s, p) = cp.post(&format!("/gateways/{ga}/refresh"), json!({})).await;
        assert_eq!(s, 500, "{backend}: {p}");
        assert!(
            !b.auth_seen().iter().any(|h| h.contains("secret-of-a")),
            "{backend}: {:?}",
            b.auth_seen()
        );
        cp.stop().await;
        a_up.stop().await;
        b_up.stop().await;
    }
}

/// A credential sealed by the first format (the code of that time, under the dev key) is
/// re-sealed bound at start, and one written later (an older replica) on first read; both
/// keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_credential_written_by_the_old_code_still_works_after_the_upgrade() {
    for (backend, db) in super::harness::both_backends().await {
        let up = TestUpstream::with_tools(&["one"]).with_required_auth("Bearer legacy-v1-token");
        let running = up.serve(0).await;
        let cp = TestCp::start(settings(&db)).await;
        let (s, g) = cp
            .post(
                "/gateways",
                json!({"name": "old", "url": running.url, "discover": false}),
            )
            .await;
        assert_eq!(s, 201, "{backend}: {g}");
        let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
        cp.stop().await;
        // As the old code left it.
        sql(
            &db,
            "UPDATE gateways SET auth_type = 'bearer', auth_sealed = $1 WHERE id = $2",
            &[V1_SEALED_BY_THE_OLD_CODE, &gid],
        )
        .await;

        // Upgrade: the new code starts on that database.
        let cp = TestCp::start(settings(&db)).await;
        let sealed = sealed_of(&db, &gid).await;
        assert!(
            sealed.starts_with("v2:"),
            "{backend}: re-sealed at start: {sealed}"
        );
        let (s, r) = cp
            .post(&format!("/gateways/{gid}/refresh"), json!({}))
            .await;
        assert_eq!(s, 200, "{backend}: {r}");
        // (The health loop's first pass may have discovered it already.)
        let sync = &r["sync"];
        assert_eq!(
            sync["added"].as_u64().unwrap() + sync["unchanged"].as_u64().unwrap(),
            6,
            "{backend}: {r}"
        );

        // An older replica writes the first format again: the first read re-seals it.
        sql(
            &db,
            "UPDATE gateways SET auth_sealed = $1 WHERE id = $2",
            &[V1_SEALED_BY_THE_OLD_CODE, &gid],
        )
        .await;
        let (s, r) = cp
            .post(&format!("/gateways/{gid}/refresh"), json!({}))
            .await;
        assert_eq!(s, 200, "{backend}: {r}");
        assert!(sealed_of(&db, &gid).await.starts_with("v2:"), "{backend}");
        cp.stop().await;
        running.stop().await;
    }
}

fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An upstream that floods list_changed costs one rediscovery per interval, not one per
/// notification: here the interval is an hour, so after the first, every notification of
/// the flood folds into one pending run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_changed_flood_costs_one_rediscovery_per_interval() {
    let up = TestUpstream::with_tools(&["one"]);
    let running = up.serve(0).await;
    let db = TestDb::sqlite();
    let mut s = settings(&db);
    s.federation.list_changed_interval = Duration::from_secs(3600);
    let cp = TestCp::start(s).await;
    let (st, g) = cp
        .post("/gateways", json!({"name": "noisy", "url": running.url}))
        .await;
    assert_eq!(st, 201, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let listed_at_registration = up.tool_lists();

    const FLOOD: u64 = 300;
    up.set_tools(&["one", "two"]).await;
    up.flood_list_changed(FLOOD as usize - 1).await;
    // Every notification reached the control plane…
    let m = eventually(
        "every notification of the flood to be counted",
        // Generous: 300 notifications on a loaded 2-core CI machine.
        Duration::from_secs(60),
        || async {
            let (_, m) = cp.get("/metrics").await;
            let m = m.as_str().unwrap_or_default().to_owned();
            let total = metric(
                &m,
                "mcpgw_federation_list_changed_total{outcome=\"scheduled\"}",
            ) + metric(
                &m,
                "mcpgw_federation_list_changed_total{outcome=\"coalesced\"}",
            );
            (total == FLOOD).then_some(m)
        },
    )
    .await;
    assert!(
        metric(
            &m,
            "mcpgw_federation_list_changed_total{outcome=\"coalesced\"}"
        ) >= FLOOD - 2,
        "{m}"
    );
    // …the first one rediscovered the catalog…
    eventually("the first rediscovery", Duration::from_secs(20), || async {
        let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
        (names(&tools) == ["noisy__one", "noisy__two"]).then_some(())
    })
    .await;
    // …and the rest wait, folded into one run an interval later.
    assert!(cp.federation.change_pending(&gid));
    assert_eq!(
        up.tool_lists(),
        listed_at_registration + 1,
        "one tools/list per rediscovery (one page each)"
    );
    cp.stop().await;
    running.stop().await;
}

/// What an upstream lists is held to the rules hand-made entries follow, and to size
/// caps: a name the API would refuse or a definition over the item limit is left out and
/// reported; a catalog over the count limit fails the discovery, clearly, and keeps what
/// was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_items_are_validated_and_capped() {
    let big_schema = json!({"type": "object", "description": "x".repeat(20_000)});
    let raw = vec![
        json!({"name": "fine", "inputSchema": {"type": "object"}}),
        json!({"name": "", "inputSchema": {"type": "object"}}),
        json!({"name": "bell\u{7}name", "inputSchema": {"type": "object"}}),
        json!({"name": "x".repeat(300), "inputSchema": {"type": "object"}}),
        json!({"name": "huge", "inputSchema": big_schema}),
    ];
    let up = TestUpstream::with_tools(&[]).with_raw_tools(raw);
    let running = up.serve(0).await;
    let db = TestDb::postgres().await;
    let mut s = settings(&db);
    s.federation.limits.max_item_bytes = 16 * 1024;
    s.federation.limits.max_items = 12;
    let cp = TestCp::start(s).await;
    let (st, g) = cp
        .post("/gateways", json!({"name": "raw", "url": running.url}))
        .await;
    assert_eq!(st, 201, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    assert_eq!(names(&tools), ["raw__fine"]);
    let skipped = g["sync"]["skipped"].as_array().unwrap();
    let reasons: Vec<(&str, &str)> = skipped
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|(n, r)| n.is_empty() && r.contains("empty")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(n, r)| *n == "bell\\u{7}name" && r.contains("control")),
        "printable in the report: {reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(n, r)| n.ends_with('…') && r.contains("255")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(n, r)| *n == "huge" && r.contains("16384")),
        "{reasons:?}"
    );
    assert_eq!(
        g["gateway"]["skipped"], g["sync"]["skipped"],
        "kept on the gateway"
    );
    let (_, m) = cp.get("/metrics").await;
    let m = m.as_str().unwrap();
    assert_eq!(
        metric(
            m,
            "mcpgw_federation_skipped_items_total{reason=\"invalid_name\"}"
        ),
        3,
        "{m}"
    );
    assert_eq!(
        metric(
            m,
            "mcpgw_federation_skipped_items_total{reason=\"too_large\"}"
        ),
        1,
        "{m}"
    );

    // Over the count cap (12 items, 3 resources and a template included): the refresh fails
    // with a clear error, recorded on the gateway, and the catalog stays.
    let many: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("t{i}"), "inputSchema": {"type": "object"}}))
        .collect();
    let flooding = TestUpstream::with_tools(&[]).with_raw_tools(many);
    let (s, p) = {
        running.stop().await;
        let again = flooding.serve(0).await;
        let (s, v) = cp
            .put(&format!("/gateways/{gid}"), json!({"url": again.url}))
            .await;
        assert_eq!(s, 200, "{v}");
        let r = cp
            .post(&format!("/gateways/{gid}/refresh"), json!({}))
            .await;
        again.stop().await;
        r
    };
    assert_eq!(s, 502, "{p}");
    assert_eq!(p["type"], "urn:mcpgw:problem:upstream-limit", "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("more than 12 items"),
        "{p}"
    );
    let (_, gw) = cp.get(&format!("/gateways/{gid}")).await;
    assert!(
        gw["last_error"]
            .as_str()
            .unwrap()
            .contains("more than 12 items"),
        "{gw}"
    );
    let (_, tools) = cp.get(&format!("/tools?gateway_id={gid}")).await;
    assert_eq!(names(&tools), ["raw__fine"], "catalog kept");
    // A registration over the cap stores nothing.
    let flood_up = flooding.serve(0).await;
    let (s, p) = cp
        .post("/gateways", json!({"name": "many", "url": flood_up.url}))
        .await;
    assert_eq!(
        (s, p["type"].as_str()),
        (502, Some("urn:mcpgw:problem:upstream-limit")),
        "{p}"
    );
    assert!(cp.get("/gateways").await.1.to_string().contains("\"raw\""));
    assert!(!cp.get("/gateways").await.1.to_string().contains("\"many\""));
    cp.stop().await;
    flood_up.stop().await;
}

/// A key rotation: the control plane restarted with a new key and the old one as a previous
/// key re-seals stored credentials with the new key at start, and they keep working; after
/// that the old key can go. A key that never sealed them opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_re_seals_stored_credentials_and_the_old_key_can_then_go() {
    use mcpgw::crypto::SecretBox;
    let old_key = [0x11; 32];
    let new_key = [0x22; 32];
    let encoded = |k: [u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let up = TestUpstream::with_tools(&["one"]).with_required_auth("Bearer rotated-token");
    let running = up.serve(0).await;
    let db = TestDb::postgres().await;
    let with_key = |key: [u8; 32], previous: Option<[u8; 32]>| {
        let mut s = settings(&db);
        s.secrets = SecretBox::from_key(key);
        if let Some(p) = previous {
            s.secrets = s.secrets.with_previous(&encoded(p)).unwrap();
        }
        s
    };

    let cp = TestCp::start(with_key(old_key, None)).await;
    let (s, g) = cp
        .post(
            "/gateways",
            json!({"name": "rotated", "url": running.url, "auth_type": "bearer", "auth_token": "rotated-token"}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    cp.stop().await;
    let sealed_by_old = sealed_of(&db, &gid).await;

    // The old key alone does not open what the new key will seal, and vice versa: without
    // the old key as a previous one, the new key cannot use the stored credentials.
    let cp = TestCp::start(with_key(new_key, None)).await;
    let (s, r) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(s, 500, "the new key alone opens nothing yet: {r}");
    cp.stop().await;
    assert_eq!(sealed_of(&db, &gid).await, sealed_by_old, "left as it was");

    // Rotation: new key, old key as previous. Re-sealed at start, and working.
    let cp = TestCp::start(with_key(new_key, Some(old_key))).await;
    let sealed_by_new = sealed_of(&db, &gid).await;
    assert!(sealed_by_new.starts_with("v2:") && sealed_by_new != sealed_by_old);
    let (s, r) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    cp.stop().await;

    // The old key can go now.
    let cp = TestCp::start(with_key(new_key, None)).await;
    let (s, r) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        up.auth_seen().iter().all(|h| h == "Bearer rotated-token"),
        "{:?}",
        up.auth_seen()
    );
    cp.stop().await;
    // And the old key alone no longer opens them.
    let cp = TestCp::start(with_key(old_key, None)).await;
    let (s, _) = cp
        .post(&format!("/gateways/{gid}/refresh"), json!({}))
        .await;
    assert_eq!(s, 500);
    cp.stop().await;
    running.stop().await;
}
