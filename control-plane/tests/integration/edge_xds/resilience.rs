//! The edge under change: a configuration Envoy refuses, and a request in flight while a
//! new configuration arrives.

use serde_json::{Value, json};

use super::super::upstream::TestUpstream;
use super::{
    Envoy, NODE, Rig, TYPES, WAIT, add_gateway, add_server, call_text, edge_tools,
    registry_version, rpc,
};
use crate::integration::harness::TestCp;

const CDS: &str = TYPES[0];

/// Polls `GET /xds/nodes` until [`NODE`]'s status satisfies `pred`; that status.
async fn node_until(
    cp: &TestCp,
    envoy: &mut Envoy,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let (http, url) = (cp.http.clone(), cp.url("/xds/nodes"));
    let pred = &pred;
    envoy
        .wait(what, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let nodes: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let node = nodes.as_array()?.iter().find(|n| n["node_id"] == NODE)?;
                pred(node).then(|| node.clone())
            }
        })
        .await
}

/// A NACK through the real pipeline. Nothing a REST write can put in the registry yields
/// a resource Envoy refuses while the settings are sound: URLs are parsed and resolved,
/// the snapshot is validated with the filter's own rules, and the xDS resources are
/// built from fixed templates. What Envoy does refuse is an operator's mistake around
/// it: here the CA bundle for https upstreams (`--upstream-ca-file`, a path on Envoy's
/// host) does not exist there. The first https gateway makes Envoy NACK its cluster;
/// `GET /xds/nodes` shows the rejected version with Envoy's reason, the filter's catalog
/// (ECDS) still updates, and the cluster Envoy kept keeps routing calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_cluster_is_reported_and_the_previous_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("absent-ca.pem").display().to_string();
    let ca_setting = ca.clone();
    let mut rig = Rig::start_with(6, move |s| s.edge.upstream_ca_file = Some(ca_setting)).await;
    let up = TestUpstream::with_tools(&["whoami"]).with_label("up");
    let running = up.serve(0).await;
    let (gid, tools) = add_gateway(&rig.cp, "up", &running.url).await;
    let sid = add_server(
        &rig.cp,
        "nack",
        json!({"associated_tools": [tools["up__whoami"]]}),
    )
    .await;
    rig.tools_become(&sid, &["up__whoami"]).await;
    let good = rig.synced().await;
    let good_cds = good["types"][CDS]["version_acked"].clone();

    // The gateway's URL becomes https (the API checks the address, not the scheme's
    // reachability): its cluster now verifies certificates against the absent bundle.
    let https = running.url.replacen("http://", "https://", 1);
    let (s, v) = rig
        .cp
        .put(&format!("/gateways/{gid}"), json!({"url": https}))
        .await;
    assert_eq!(s, 200, "{v}");
    let bad = registry_version(&rig.cp).await;
    let node = node_until(
        &rig.cp,
        &mut rig.envoy,
        "a NACK of the https cluster",
        |n| n["types"][CDS]["last_nack"]["version"] == bad.as_str(),
    )
    .await;
    let cds = &node["types"][CDS];
    assert_eq!(cds["version_acked"], good_cds, "{node}");
    let error = cds["last_nack"]["error"].as_str().unwrap();
    assert!(
        error.contains(&ca),
        "Envoy's reason names the bundle: {error}"
    );
    assert!(cds["last_nack"]["at"].is_string(), "{node}");
    eprintln!("NACK of version {bad} reported: {error}");
    // Only the clusters were refused: the filter's catalog of that version is running.
    let node = node_until(
        &rig.cp,
        &mut rig.envoy,
        "ECDS acked at the new version",
        |n| n["types"][super::ECDS]["version_acked"] == bad.as_str(),
    )
    .await;
    assert!(node["types"][super::ECDS]["last_nack"].is_null(), "{node}");
    let (_, metrics) = rig.cp.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mcpgw_xds_nacks_total{type=\"cds\"} ")),
        "{metrics}"
    );

    // Still serving: the catalog, and calls over the plain-http cluster Envoy kept.
    assert_eq!(
        edge_tools(&rig.http, &rig.mcp(&sid)).await,
        Some(vec!["up__whoami".to_owned()])
    );
    let session = rig.session(&sid).await;
    let v = rig.call(&sid, &session, "up__whoami", json!({})).await;
    assert_eq!(call_text(&v), "up", "{v}");

    // The operator reverts: acked again, the NACK cleared.
    let (s, v) = rig
        .cp
        .put(&format!("/gateways/{gid}"), json!({"url": running.url}))
        .await;
    assert_eq!(s, 200, "{v}");
    let node = rig.synced().await;
    assert!(node["types"][CDS]["last_nack"].is_null(), "{node}");
    let v = rig.call(&sid, &session, "up__whoami", json!({})).await;
    assert_eq!(call_text(&v), "up", "{v}");
    running.stop().await;
}

/// A `tools/call` that is still running upstream while the registry changes (a gateway
/// and a server added: new clusters, a new filter configuration over ECDS) completes
/// normally once the upstream answers, and the session keeps working afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_survives_a_configuration_push() {
    let mut rig = Rig::start(7).await;
    let up = TestUpstream::with_tools(&["slow", "whoami"]).with_label("up");
    let running = up.serve(0).await;
    let (_, tools) = add_gateway(&rig.cp, "up", &running.url).await;
    let sid = add_server(
        &rig.cp,
        "first",
        json!({"associated_tools": [tools["up__slow"], tools["up__whoami"]]}),
    )
    .await;
    rig.tools_become(&sid, &["up__slow", "up__whoami"]).await;
    let before = rig.synced().await;
    let session = rig.session(&sid).await;

    // The upstream holds the call until released (at most two minutes).
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "up__slow", "arguments": {"ms": 120_000}}});
    let in_flight = tokio::spawn({
        let (http, mcp, session) = (rig.http.clone(), rig.mcp(&sid), session.clone());
        async move { rpc(&http, &mcp, &call, Some(&session)).await }
    });
    let probe = up.clone();
    rig.envoy
        .wait("the slow call to reach the upstream", || {
            let started = probe.slow_started();
            async move { (started == 1).then_some(()) }
        })
        .await;

    let other = TestUpstream::with_tools(&["whoami"]).with_label("other");
    let other_running = other.serve_stateless(0).await;
    let (_, other_tools) = add_gateway(&rig.cp, "other", &other_running.url).await;
    let sid2 = add_server(
        &rig.cp,
        "second",
        json!({"associated_tools": [other_tools["other__whoami"]]}),
    )
    .await;
    let after = rig.synced().await;
    assert_ne!(
        before["types"][super::ECDS]["version_acked"],
        after["types"][super::ECDS]["version_acked"]
    );
    rig.tools_become(&sid2, &["other__whoami"]).await;
    assert!(
        !in_flight.is_finished(),
        "the upstream has not answered the slow call yet"
    );

    up.release_slow();
    let (s, v) = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the slow call completes once released")
        .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], 9, "{v}");
    assert_eq!(call_text(&v), "up:slow", "{v}");
    let v = rig.call(&sid, &session, "up__whoami", json!({})).await;
    assert_eq!(call_text(&v), "up", "{v}");
    other_running.stop().await;
    running.stop().await;
}

/// The operator's edge policy (`--edge-policy`) is in every snapshot and enforced by every
/// Envoy: a denied tool is refused at the edge with 403 while its neighbour still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_policy_reaches_every_envoy() {
    let mut rig = Rig::start_with(17, |s| {
        s.edge_policy.denied_tools = vec!["up__whoami".into()];
    })
    .await;
    let up = TestUpstream::with_tools(&["whoami", "echo"]).with_label("up");
    let running = up.serve(0).await;
    let (_, tools) = add_gateway(&rig.cp, "up", &running.url).await;
    let sid = add_server(
        &rig.cp,
        "policed",
        json!({"associated_tools": [tools["up__whoami"], tools["up__echo"]]}),
    )
    .await;
    rig.tools_become(&sid, &["up__echo", "up__whoami"]).await;
    let (s, snap) = rig.cp.get("/snapshot").await;
    assert_eq!(s, 200);
    assert_eq!(
        snap["policy"]["denied_tools"],
        json!(["up__whoami"]),
        "{snap}"
    );
    let session = rig.session(&sid).await;
    let denied = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "up__whoami", "arguments": {}}});
    let (status, v) = rpc(&rig.http, &rig.mcp(&sid), &denied, Some(&session)).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], -32003, "{v}");
    let echo = rig.call(&sid, &session, "up__echo", json!({})).await;
    assert_eq!(call_text(&echo), "up:echo", "{echo}");
}

/// A control plane whose first build fails (here: a registry table it cannot read) serves
/// nothing rather than an empty configuration: the Envoy that reconnects to it keeps its
/// listener and clusters and goes on serving, and gets the registry once a build works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_build_serves_nothing_and_envoy_keeps_its_configuration() {
    let db = super::super::harness::TestDb::sqlite();
    let cp = super::control_plane(&db, 0).await;
    let xds = cp.xds_addr.expect("xDS enabled");
    let mut envoy = Envoy::start_as(xds, 32, NODE, "GRPC").await;
    let up = TestUpstream::with_tools(&["whoami"]).with_label("kept");
    let running = up.serve(0).await;
    let (_, tools) = add_gateway(&cp, "up", &running.url).await;
    let sid = add_server(
        &cp,
        "kept",
        json!({"associated_tools": [tools["up__whoami"]]}),
    )
    .await;
    let version = registry_version(&cp).await;
    super::node_acked(&cp, &mut envoy, &version).await;
    let listener = envoy.listener(mcpgw::edge_config::LISTENER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mcp = super::mcp_url(listener, &sid);
    assert_eq!(
        edge_tools(&http, &mcp).await,
        Some(vec!["up__whoami".to_owned()])
    );
    cp.stop().await;

    // The registry cannot be read: every build fails until the table is back.
    let rename = |from: &'static str, to: &'static str| {
        let url = db.url().to_owned();
        async move {
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::raw_sql(&format!("ALTER TABLE {from} RENAME TO {to}"))
                .execute(&mut c)
                .await
                .unwrap();
        }
    };
    rename("prompts", "prompts_held").await;
    let cp = super::control_plane(&db, xds.port()).await;
    let (_, metrics) = cp.get("/metrics").await;
    assert!(
        !metrics
            .as_str()
            .unwrap_or_default()
            .contains("mcpgw_edge_builds_total{outcome=\"ok\"}"),
        "the first build was meant to fail: {metrics}"
    );
    // Envoy reconnects and subscribes; it is sent nothing.
    let node = node_until(&cp, &mut envoy, "Envoy to reconnect", |n| {
        n["connected_streams"].as_u64().is_some_and(|c| c >= 1) && n["types"].is_object()
    })
    .await;
    assert!(
        node["types"]
            .as_object()
            .unwrap()
            .values()
            .all(|t| t["version_sent"].is_null()),
        "a response was sent before any good build: {node}"
    );
    // ... and keeps serving what it had.
    assert_eq!(
        edge_tools(&http, &mcp).await,
        Some(vec!["up__whoami".to_owned()])
    );
    let session = super::session(&http, &mcp).await;
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "up__whoami", "arguments": {}}});
    let (s, v) = rpc(&http, &mcp, &call, Some(&session)).await;
    assert_eq!((s, call_text(&v)), (200, "kept"), "{v}");

    // The table is back: the next build (the publisher retries on its poll) is served.
    rename("prompts_held", "prompts").await;
    let version = registry_version(&cp).await;
    super::node_acked(&cp, &mut envoy, &version).await;
    assert_eq!(
        edge_tools(&http, &mcp).await,
        Some(vec!["up__whoami".to_owned()])
    );
    cp.stop().await;
    running.stop().await;
}
