//! The session relay behind a real Envoy: the legacy SSE pair (`/servers/{id}/sse` +
//! `/message`) with the Python SDK's `sse_client` and with raw HTTP for bad input, and the
//! GET stream of a session over two stateful upstreams, merged.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::mpsc;

use super::super::harness::{TestCp, TestDb, eventually};
use super::super::upstream::{Running, TestUpstream};
use super::clients::composed_upstreams;
use super::{Rig, add_gateway, add_server, python, repo_path};

/// A rig whose control plane runs the relay (on any port).
async fn relay_rig(base_id: u32) -> Rig {
    relay_rig_with(base_id, |_| {}).await
}

/// [`relay_rig`] with the relay's limits changed by `tweak`.
async fn relay_rig_with(base_id: u32, tweak: impl FnOnce(&mut mcpgw::relay::Limits)) -> Rig {
    Rig::start_with(base_id, |s| {
        s.relay_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        tweak(&mut s.relay_limits);
    })
    .await
}

/// A control plane with the relay on and no Envoy (for requests straight to the relay).
async fn relay_only(db: &TestDb, tweak: impl FnOnce(&mut mcpgw::relay::Limits)) -> TestCp {
    super::control_plane_with(db, 0, |s| {
        s.relay_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        tweak(&mut s.relay_limits);
    })
    .await
}

/// The secret this test's control planes' Envoys add on the relay route (the dev key's).
fn relay_secret() -> String {
    mcpgw::crypto::SecretBox::dev().relay_auth()
}

/// A request straight to the relay as an Envoy of this control plane would send it: with
/// the secret, edge address `edge` and, when given, client address `client`.
fn as_envoy(
    req: reqwest::RequestBuilder,
    edge: SocketAddr,
    client: Option<&str>,
) -> reqwest::RequestBuilder {
    let req = req
        .header("mcpgw-relay-auth", relay_secret())
        .header("mcpgw-edge-address", edge.to_string());
    match client {
        Some(c) => req.header("mcpgw-client-address", c),
        None => req,
    }
}

/// The value of metric `name` (a line `name value` or `name{labels} value`) in the control
/// plane's `/metrics`; 0 when absent.
async fn metric(rig: &Rig, name: &str) -> f64 {
    let text = rig
        .cp
        .http
        .get(rig.cp.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// POSTs `body` as JSON to `url`: the status and the body (JSON, else as a string).
async fn post(http: &reqwest::Client, url: String, body: &'static str) -> (u16, Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
    )
}

/// A client for long-lived streams: no overall timeout.
fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Reads an event stream in the background: every event as (event name, data).
fn events(response: reqwest::Response) -> mpsc::UnboundedReceiver<(String, String)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut buf = String::new();
        loop {
            // Stop reading (closing the connection) once the receiver is dropped.
            let chunk = tokio::select! {
                c = body.next() => c,
                () = tx.closed() => return,
            };
            let Some(Ok(chunk)) = chunk else { return };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() && tx.send((name, data.join("\n"))).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next event within 20 s.
async fn next_event(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .expect("the stream stays open")
}

/// The Python SDK's legacy SSE client through Envoy and the relay: initialize →
/// tools/list → tools/call with progress (an SSE response of upstream `one`, its progress
/// notifications relayed as stream events) → resources/read → prompts/get → a
/// server-initiated notification from `one` (its GET stream, opened by the relay) → close,
/// which ends the session at the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_session_over_the_legacy_sse_pair() {
    let mut rig = relay_rig(10).await;
    let (sid, [one, _two], running) = composed_upstreams(&mut rig).await;
    let python = python();
    let url = format!("http://{}/servers/{sid}/sse", rig.listener);
    let mut child = tokio::process::Command::new(python)
        .arg(repo_path("tests/py/mcp_sse_flow.py"))
        .args([
            url.as_str(),
            "one__echo",
            r#"{"x": "sse"}"#,
            "test://doc/2",
            "one__greet",
            r#"{"who": "sse"}"#,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(90), lines.next_line()).await;
    let Ok(Ok(Some(first))) = first else {
        let _ = child.kill().await;
        panic!(
            "the Python client did not reach the waiting stage: {first:?}\n{}",
            errors.await.unwrap()
        );
    };
    assert!(first.contains("waiting"), "{first}");
    // The client now waits for a server-initiated message: `one` sends one until it ends.
    let announcing = async {
        loop {
            one.announce("doc-9").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let last = tokio::select! {
        l = tokio::time::timeout(Duration::from_secs(60), lines.next_line()) => l,
        () = announcing => unreachable!(),
    };
    let status = child.wait().await.unwrap();
    let stderr = errors.await.unwrap();
    let last = match last {
        Ok(Ok(Some(l))) => l,
        other => panic!("no result from the Python client ({status}): {other:?}\n{stderr}"),
    };
    assert!(
        status.success(),
        "the Python client failed ({status}):\n{last}\n{stderr}"
    );
    let out: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(out["server_name"], "clients", "{out}");
    assert_eq!(
        out["tools"],
        json!(["one__echo", "one__whoami", "two__echo", "two__whoami"])
    );
    assert_eq!(out["call_is_error"], false, "{out}");
    assert_eq!(out["call_text"], json!(["one:echo"]), "{out}");
    assert_eq!(
        out["progress"],
        json!(["one: step 1 of 2", "one: step 2 of 2"]),
        "progress inside the SSE response reaches the legacy client: {out}"
    );
    assert_eq!(out["resource_text"], json!(["one: doc 2"]), "{out}");
    assert_eq!(out["prompt_text"], json!(["Hello, sse! (one)"]), "{out}");
    assert!(
        out["updated"]
            .as_array()
            .unwrap()
            .contains(&json!("test://one/doc-9")),
        "a server-initiated message reaches the legacy client: {out}"
    );
    let exchanges = out["exchanges"].as_array().unwrap();
    for e in exchanges {
        let want = if e["method"] == "GET" { 200 } else { 202 };
        assert_eq!(e["status"], want, "{e} (all: {exchanges:?})");
    }
    assert!(
        exchanges.len() >= 7,
        "the stream and six messages: {exchanges:?}"
    );
    // Every message went through the edge and was answered there.
    assert!(metric(&rig, "mcpgw_relay_messages_total{outcome=\"ok\"}").await >= 6.0);
    // The client closed its stream: the relay forgot the session.
    eventually(
        "the relay to drop the closed session",
        Duration::from_secs(10),
        || async { (metric(&rig, "mcpgw_relay_sse_sessions").await == 0.0).then_some(()) },
    )
    .await;
    for r in running {
        r.stop().await;
    }
}

/// Raw HTTP at the legacy pair: the endpoint event, answers on the stream, and every kind
/// of bad input answered with the precise status and JSON-RPC code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_sse_pair_answers_on_the_stream_and_refuses_bad_input() {
    let mut rig = relay_rig(11).await;
    let (sid, _, running) = composed_upstreams(&mut rig).await;
    let base = format!("http://{}", rig.listener);
    let streams = stream_client();
    let r = streams
        .get(format!("{base}/servers/{sid}/sse"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut rx = events(r);
    let (name, endpoint) = next_event(&mut rx).await;
    assert_eq!(name, "endpoint");
    let prefix = format!("/servers/{sid}/message?session_id=");
    assert!(endpoint.starts_with(&prefix), "{endpoint}");
    let post = |path: String, body: &'static str| post(&rig.http, format!("{base}{path}"), body);
    // A request is accepted, and its answer (from the edge) arrives on the stream.
    let (s, _) = post(
        endpoint.clone(),
        r#"{"jsonrpc":"2.0","id":"p1","method":"ping"}"#,
    )
    .await;
    assert_eq!(s, 202);
    let (name, data) = next_event(&mut rx).await;
    assert_eq!(name, "message");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"jsonrpc": "2.0", "id": "p1", "result": {}})
    );
    // The edge's errors come back the same way.
    let (s, _) = post(
        endpoint.clone(),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"nope","arguments":{}}}"#,
    )
    .await;
    assert_eq!(s, 202);
    let (_, data) = next_event(&mut rx).await;
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["id"], 2, "{v}");
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );
    // Bad input is refused at once, with nothing sent on.
    let (s, v) = post(endpoint.clone(), "not json").await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32700)), "{v}");
    let (s, v) = post(endpoint.clone(), "[1]").await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32600)), "{v}");
    let huge = rig
        .http
        .post(format!("{base}{endpoint}"))
        .header("content-type", "application/json")
        .body(vec![b' '; mcpgw::relay::MAX_MESSAGE_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let v: Value = huge.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    let (s, v) = post(format!("/servers/{sid}/message"), "{}").await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32600)), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("session_id"),
        "{v}"
    );
    let (s, v) = post(format!("/servers/{sid}/message?session_id=nope"), "{}").await;
    assert_eq!((s, v["error"]["code"].as_i64()), (404, Some(-32600)), "{v}");
    // A session is bound to its server.
    let other = endpoint.replacen(&sid, "other-server", 1);
    let (s, _) = post(other, "{}").await;
    assert_eq!(s, 404);
    let r = rig
        .http
        .get(format!("{base}{endpoint}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = rig
        .http
        .get(format!("{base}/servers/nope/sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "an unknown server is the filter's 404");
    // A message must be declared JSON (checked before its body is read).
    for content_type in [Some("text/plain"), Some("application/jsonx"), None] {
        let mut req = rig
            .http
            .post(format!("{base}{endpoint}"))
            .body(r#"{"jsonrpc":"2.0","id":"ct","method":"ping"}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], -32600, "{v}");
    }
    // Parameters of the media type are fine.
    let r = rig
        .http
        .post(format!("{base}{endpoint}"))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(r#"{"jsonrpc":"2.0","id":"p1b","method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, data) = next_event(&mut rx).await;
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["id"], "p1b");
    // The relay itself serves only what comes through this control plane's Envoys.
    let relay = rig.cp.relay_addr.expect("relay enabled");
    let r = rig
        .http
        .get(format!("http://{relay}/servers/{sid}/sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcpgw-relay-auth"),
        "{v}"
    );
    // Nothing above disturbed the stream.
    let (s, _) = post(
        endpoint.clone(),
        r#"{"jsonrpc":"2.0","id":"p2","method":"ping"}"#,
    )
    .await;
    assert_eq!(s, 202);
    let (_, data) = next_event(&mut rx).await;
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["id"], "p2");
    assert_eq!(metric(&rig, "mcpgw_relay_sse_sessions").await, 1.0);
    for r in running {
        r.stop().await;
    }
}

/// A session over two stateful upstreams: its GET stream is both upstreams' streams
/// merged by the relay; one of them can be picked; a pick outside the session is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_get_stream_of_a_session_over_two_stateful_upstreams_is_merged() {
    let mut rig = relay_rig(12).await;
    let a = TestUpstream::with_tools(&["echo"]).with_label("a");
    let b = TestUpstream::with_tools(&["echo"]).with_label("b");
    let running = [a.serve(0).await, b.serve(0).await];
    let mut tools = Vec::new();
    let mut gateways = Vec::new();
    for (label, r) in ["a", "b"].iter().zip(&running) {
        let (gid, ids) = add_gateway(&rig.cp, label, &r.url).await;
        gateways.push(gid);
        tools.extend(ids.into_values());
    }
    let sid = add_server(&rig.cp, "merged", json!({"associated_tools": tools})).await;
    rig.tools_become(&sid, &["a__echo", "b__echo"]).await;
    rig.synced().await;
    let session = rig.session(&sid).await;
    let streams = stream_client();
    let get = |pick: Option<&str>, token: &str| {
        let mut req = streams
            .get(rig.mcp(&sid))
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header("mcp-session-id", token);
        if let Some(p) = pick {
            req = req.header("mcpgw-upstream", p);
        }
        req.send()
    };
    let r = get(None, &session).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut rx = events(r);
    assert_eq!(metric(&rig, "mcpgw_relay_merged_streams").await, 1.0);
    // Both upstreams announce until each one's message has come through the one stream.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages of both upstreams on the merged stream; saw {seen:?}"
        );
        a.announce("x").await;
        b.announce("y").await;
        while let Ok(Some((_, data))) =
            tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
        {
            let v: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(v["method"], "notifications/resources/updated", "{v}");
            seen.insert(v["params"]["uri"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["test://a/x", "test://b/y"]
    );
    // One upstream's stream alone, picked by its id.
    let r = get(Some(&gateways[1]), &session).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    // A pick outside the session, and a forged session, are refused.
    let r = get(Some("nope"), &session).await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );
    let r = get(None, "mcpgw1.e30.AAAA").await.unwrap();
    assert_eq!(r.status(), 404);
    // The client goes away: the merged stream ends at the relay.
    drop(rx);
    eventually(
        "the merged stream to close",
        Duration::from_secs(10),
        || async { (metric(&rig, "mcpgw_relay_merged_streams").await == 0.0).then_some(()) },
    )
    .await;
    for r in running {
        r.stop().await;
    }
}

/// A legacy session may have [`mcpgw::relay::MAX_IN_FLIGHT`] messages being relayed at
/// once; one more is refused with 429 and a JSON-RPC error, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_session_with_too_many_messages_in_flight_is_told_to_slow_down() {
    let mut rig = relay_rig(13).await;
    let slow = TestUpstream::with_tools(&["slow"]).with_label("s");
    // Stateless: calls need no `initialize` first.
    let running = slow.serve_stateless(0).await;
    let (_, tools) = add_gateway(&rig.cp, "s", &running.url).await;
    let sid = add_server(
        &rig.cp,
        "slow",
        json!({"associated_tools": tools.into_values().collect::<Vec<_>>()}),
    )
    .await;
    rig.tools_become(&sid, &["s__slow"]).await;
    rig.synced().await;
    let base = format!("http://{}", rig.listener);
    let r = stream_client()
        .get(format!("{base}/servers/{sid}/sse"))
        .send()
        .await
        .unwrap();
    let mut rx = events(r);
    let (_, endpoint) = next_event(&mut rx).await;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"s__slow","arguments":{"ms":30000}}}"#;
    let limit = mcpgw::relay::MAX_IN_FLIGHT;
    for _ in 0..limit {
        let (s, v) = post(&rig.http, format!("{base}{endpoint}"), call).await;
        assert_eq!(s, 202, "{v}");
    }
    // Every permitted call has reached the upstream and is held there.
    eventually(
        "the calls to reach the upstream",
        Duration::from_secs(20),
        || async { (slow.slow_started() == limit).then_some(()) },
    )
    .await;
    let (s, v) = post(&rig.http, format!("{base}{endpoint}"), call).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["id"], 1, "{v}");
    assert_eq!(v["error"]["code"], -32603, "{v}");
    // Released, every held call answers on the stream, and the session takes messages again.
    for _ in 0..limit {
        slow.release_slow();
    }
    for _ in 0..limit {
        let (_, data) = next_event(&mut rx).await;
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["result"]["content"][0]["text"], "s:slow", "{v}");
    }
    let (s, v) = post(
        &rig.http,
        format!("{base}{endpoint}"),
        r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#,
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        serde_json::from_str::<Value>(&next_event(&mut rx).await.1).unwrap()["id"],
        "p"
    );
    running.stop().await;
}

/// Envoys are told of a relay exactly when this control plane runs one: at its advertised
/// address, else where it is bound; with the relay off, an advertised address is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_are_told_of_the_relay_only_when_it_runs() {
    let advertised = mcpgw::edge_config::UpstreamEndpoint {
        host: "relay.mcpgw.svc".into(),
        port: 18001,
        tls: false,
    };
    for (listen, advertise, want) in [
        (true, None, true),
        (true, Some(advertised.clone()), true),
        (false, Some(advertised.clone()), false),
    ] {
        let db = super::super::harness::TestDb::sqlite();
        let cp = super::control_plane_with(&db, 0, |s| {
            s.relay_listen = listen.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            s.relay_advertise = advertise.clone();
        })
        .await;
        assert_eq!(cp.relay_addr.is_some(), listen);
        let (s, snap) = cp.get("/snapshot").await;
        assert_eq!(s, 200, "{snap}");
        let want_relay = want.then_some("mcpgw-relay");
        assert_eq!(
            snap["relay"].as_str(),
            want_relay,
            "{listen} {advertise:?}: {snap}"
        );
        cp.stop().await;
    }
}

/// The relay is no open proxy. Before, a request straight to it chose the "edge"
/// (`mcpgw-edge-address`) and climbed out of `/servers/{id}/mcp` with `..%2F`: with the
/// admin API as the edge and `..%2F..%2Fgateways%3Fx%3D` as the id, a posted message became
/// `POST /gateways` on the loopback-only admin API, which created a gateway and whose answer
/// came back on the SSE stream. Now only requests with the relay secret are served, ids
/// are checked as path segments, and nothing reaches the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_only_its_envoys_and_cannot_be_steered_off_the_edge() {
    let db = TestDb::sqlite();
    let cp = relay_only(&db, |_| {}).await;
    let relay = cp.relay_addr.expect("relay enabled");
    let http = stream_client();
    let hostile = "..%2F..%2Fgateways%3Fx%3D";
    let payload = r#"{"name":"pwned","url":"http://127.0.0.1:9/mcp","discover":false}"#;
    let paths = [
        format!("/servers/{hostile}/sse"),
        format!("/servers/{hostile}/message?session_id=x"),
        format!("/servers/{hostile}/mcp"),
        "/servers/s/sse".to_owned(),
        "/anything".to_owned(),
    ];
    // Without the secret, or with a wrong one (or two copies), nothing is served: 403.
    let wrong = format!("{}0", &relay_secret()[1..]);
    let right = relay_secret();
    let secrets: [&[&str]; 4] = [
        &[],
        &[wrong.as_str()],
        &[""],
        &[right.as_str(), right.as_str()],
    ];
    for secrets in secrets {
        for path in &paths {
            for method in [reqwest::Method::GET, reqwest::Method::POST] {
                let mut req = http
                    .request(method.clone(), format!("http://{relay}{path}"))
                    .header("mcpgw-edge-address", cp.addr.to_string())
                    .header("content-type", "application/json")
                    .body(payload);
                for s in secrets {
                    req = req.header("mcpgw-relay-auth", *s);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 403, "{method} {path} with {secrets:?}");
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], -32600, "{v}");
            }
        }
    }
    // With the secret, an id that is not one path segment is refused before anything is
    // opened or sent, on each route, and so are the upstream ids of a merged stream.
    let r = as_envoy(
        http.get(format!("http://{relay}/servers/{hostile}/sse")),
        cp.addr,
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with("id: "),
        "{v}"
    );
    let r = as_envoy(
        http.post(format!(
            "http://{relay}/servers/{hostile}/message?session_id=x"
        )),
        cp.addr,
        None,
    )
    .header("content-type", "application/json")
    .body(payload)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    for (server, upstreams) in [
        (hostile, "a"),
        ("s", "a,..%2F..%2Fgateways"),
        ("s", "a,../x"),
    ] {
        let r = as_envoy(
            http.get(format!("http://{relay}/servers/{server}/mcp")),
            cp.addr,
            None,
        )
        .header("mcp-session-id", "t")
        .header("mcpgw-relay-upstreams", upstreams)
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 400, "{server} {upstreams}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], -32600, "{v}");
    }
    // Nothing reached the admin API.
    let (s, gateways) = cp.get("/gateways").await;
    assert_eq!(s, 200);
    assert_eq!(gateways["items"], json!([]), "{gateways}");
    assert!(metric_of(&cp, "mcpgw_relay_refused_total{reason=\"unauthenticated\"}").await >= 40.0);
    assert!(metric_of(&cp, "mcpgw_relay_refused_total{reason=\"field_invalid\"}").await >= 5.0);
    cp.stop().await;
}

/// The value of metric `name` in `cp`'s `/metrics` (0 when absent).
async fn metric_of(cp: &TestCp, name: &str) -> f64 {
    let (_, text) = cp.get("/metrics").await;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// An HTTP server on 127.0.0.1:0 answering every request with `answer`, and recording
/// each request's method, path and `authorization`.
async fn recording_server(
    answer: impl Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = {
        let seen = seen.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (seen, answer) = (seen.clone(), answer.clone());
            async move {
                seen.lock().unwrap().push(format!(
                    "{} {} {:?}",
                    req.method(),
                    req.uri(),
                    req.headers().get("authorization")
                ));
                answer()
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

/// A client's credentials go to its edge and nowhere else: the relay follows no redirect.
/// Before, an edge answer `307 Location: <elsewhere>` made the relay send the client's
/// message to that other server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_follows_no_redirect_away_from_the_edge() {
    use axum::response::IntoResponse as _;
    let (elsewhere, stolen) = recording_server(|| axum::http::StatusCode::OK.into_response()).await;
    let (edge, at_edge) = recording_server(move || {
        (
            axum::http::StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("http://{elsewhere}/stolen"))],
        )
            .into_response()
    })
    .await;
    let db = TestDb::sqlite();
    let cp = relay_only(&db, |_| {}).await;
    let relay = cp.relay_addr.expect("relay enabled");
    let r = as_envoy(
        stream_client().get(format!("http://{relay}/servers/s/sse")),
        edge,
        None,
    )
    .header("authorization", "Bearer client-token")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let mut rx = events(r);
    let (_, endpoint) = next_event(&mut rx).await;
    let r = as_envoy(
        // A client of its own: `cp.http` carries the admin API's token.
        reqwest::Client::new().post(format!("http://{relay}{endpoint}")),
        edge,
        None,
    )
    .header("content-type", "application/json")
    .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    // The client learns that its message got no JSON-RPC answer.
    let (_, data) = next_event(&mut rx).await;
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["id"], 1, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("307"),
        "{v}"
    );
    // The edge got the message with the client's credentials; nobody else got anything.
    assert_eq!(
        *at_edge.lock().unwrap(),
        ["POST /servers/s/mcp Some(\"Bearer client-token\")"]
    );
    assert_eq!(*stolen.lock().unwrap(), Vec::<String>::new());
    cp.stop().await;
}

/// Opens a legacy SSE stream straight at the relay as an Envoy would for `client`: the
/// status, and the events when it opened.
async fn open_legacy(
    http: &reqwest::Client,
    relay: SocketAddr,
    edge: SocketAddr,
    client: Option<&str>,
) -> (
    u16,
    Option<mpsc::UnboundedReceiver<(String, String)>>,
    Value,
) {
    let r = as_envoy(
        http.get(format!("http://{relay}/servers/s/sse")),
        edge,
        client,
    )
    .send()
    .await
    .unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        let mut rx = events(r);
        let (name, _) = next_event(&mut rx).await;
        assert_eq!(name, "endpoint");
        (status, Some(rx), Value::Null)
    } else {
        (status, None, r.json().await.unwrap())
    }
}

/// Legacy SSE sessions are capped per client (the `mcpgw-client-address` the relay route
/// adds; one shared bucket without it) and in total. Before, one client could hold every
/// session the relay had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sessions_are_capped_per_client_and_in_total() {
    let db = TestDb::sqlite();
    let cp = relay_only(&db, |l| {
        l.max_sse_sessions = 4;
        l.max_sse_sessions_per_client = 2;
    })
    .await;
    let relay = cp.relay_addr.expect("relay enabled");
    // No edge is contacted before a message is posted.
    let edge = SocketAddr::from(([127, 0, 0, 1], 9));
    let http = stream_client();
    let a1 = open_legacy(&http, relay, edge, Some("10.0.0.1")).await;
    // IPv6 clients count by /64; so the two addresses below are one client.
    let b1 = open_legacy(&http, relay, edge, Some("2001:db8::1")).await;
    let a2 = open_legacy(&http, relay, edge, Some("10.0.0.1")).await;
    let b2 = open_legacy(&http, relay, edge, Some("2001:db8::2")).await;
    for (name, opened) in [("a1", &a1), ("b1", &b1), ("a2", &a2), ("b2", &b2)] {
        assert_eq!(opened.0, 200, "{name}: {}", opened.2);
    }
    for client in [Some("10.0.0.1"), Some("2001:db8::ffff")] {
        let (s, _, v) = open_legacy(&http, relay, edge, client).await;
        assert_eq!(s, 429, "{client:?}: {v}");
        assert_eq!(v["error"]["code"], -32603, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maximum of 2"),
            "{v}"
        );
    }
    // A third client, and requests that name no client, find the relay full.
    for client in [Some("10.0.0.3"), None] {
        let (s, _, v) = open_legacy(&http, relay, edge, client).await;
        assert_eq!(s, 503, "{client:?}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maximum of 4"),
            "{v}"
        );
    }
    assert_eq!(metric_of(&cp, "mcpgw_relay_sse_sessions").await, 4.0);
    // A closed stream frees its place for its client.
    drop(a1);
    eventually(
        "a closed session to be forgotten",
        Duration::from_secs(10),
        || async { (metric_of(&cp, "mcpgw_relay_sse_sessions").await == 3.0).then_some(()) },
    )
    .await;
    let again = open_legacy(&http, relay, edge, Some("10.0.0.1")).await;
    assert_eq!(again.0, 200, "{}", again.2);
    // The shared bucket has the per-client cap too.
    drop((again, a2, b1, b2));
    eventually(
        "every session to be forgotten",
        Duration::from_secs(10),
        || async { (metric_of(&cp, "mcpgw_relay_sse_sessions").await == 0.0).then_some(()) },
    )
    .await;
    let shared = [
        open_legacy(&http, relay, edge, None).await,
        open_legacy(&http, relay, edge, Some("not an address")).await,
    ];
    assert!(shared.iter().all(|o| o.0 == 200));
    assert_eq!(open_legacy(&http, relay, edge, None).await.0, 429);
    cp.stop().await;
}

/// Two stateful upstreams `a` and `b` and a virtual server over both; its id, the
/// upstreams (to announce) and their servers.
async fn two_stateful(rig: &mut Rig) -> (String, [TestUpstream; 2], [Running; 2]) {
    let a = TestUpstream::with_tools(&["echo"]).with_label("a");
    let b = TestUpstream::with_tools(&["echo"]).with_label("b");
    let running = [a.serve(0).await, b.serve(0).await];
    let mut tools = Vec::new();
    for (label, r) in ["a", "b"].iter().zip(&running) {
        let (_, ids) = add_gateway(&rig.cp, label, &r.url).await;
        tools.extend(ids.into_values());
    }
    let sid = add_server(&rig.cp, "merged", json!({"associated_tools": tools})).await;
    rig.tools_become(&sid, &["a__echo", "b__echo"]).await;
    rig.synced().await;
    (sid, [a, b], running)
}

/// A merged GET stream of `session` on server `sid` through the rig's Envoy.
async fn merged_get(rig: &Rig, sid: &str, session: &str) -> reqwest::Response {
    stream_client()
        .get(rig.mcp(sid))
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", session)
        .send()
        .await
        .unwrap()
}

/// Merged streams are capped per client and in total, and counted before any upstream
/// stream is opened. Before, there was no cap at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_streams_are_capped_per_client_and_in_total() {
    let mut rig = relay_rig_with(14, |l| {
        l.max_merged_streams = 1;
        l.max_merged_streams_per_client = 1;
    })
    .await;
    let (sid, _, running) = two_stateful(&mut rig).await;
    let session = rig.session(&sid).await;
    let first = merged_get(&rig, &sid, &session).await;
    assert_eq!(first.status(), 200);
    // The same client (through Envoy) is over its cap; the answer comes back through Envoy.
    let r = merged_get(&rig, &sid, &session).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32603, "{v}");
    // Another client finds the relay full.
    let relay = rig.cp.relay_addr.expect("relay enabled");
    let direct = || {
        as_envoy(
            stream_client().get(format!("http://{relay}/servers/{sid}/mcp")),
            rig.listener,
            Some("10.9.9.9"),
        )
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", &session)
        .header("mcpgw-relay-upstreams", "a,b")
        .send()
    };
    let r = direct().await.unwrap();
    assert_eq!(r.status(), 503);
    // The first stream ends: its place is free again.
    drop(first);
    eventually(
        "the merged stream to close",
        Duration::from_secs(10),
        || async { (metric(&rig, "mcpgw_relay_merged_streams").await == 0.0).then_some(()) },
    )
    .await;
    let r = merged_get(&rig, &sid, &session).await;
    assert_eq!(r.status(), 200);
    for r in running {
        r.stop().await;
    }
}

/// Waits (at most 30 s) for the event stream behind `rx` to end.
async fn stream_ends(rx: &mut mpsc::UnboundedReceiver<(String, String)>) {
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the stream did not end within 30 s");
}

/// A legacy SSE session that receives no message and sends nothing, and a merged stream
/// that relays nothing, are closed after their idle timeouts (keepalive comments do not
/// count). Before, both stayed open for as long as the client kept the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_are_closed() {
    let mut rig = relay_rig_with(15, |l| {
        l.sse_idle_timeout = Duration::from_secs(2);
        l.merged_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let (sid, _, running) = two_stateful(&mut rig).await;
    let r = stream_client()
        .get(format!("http://{}/servers/{sid}/sse", rig.listener))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut legacy = events(r);
    let (_, endpoint) = next_event(&mut legacy).await;
    // A message is activity; its answer is too. Then nothing: the session is closed.
    let (s, _) = post(
        &rig.http,
        format!("http://{}{endpoint}", rig.listener),
        r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#,
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(
        serde_json::from_str::<Value>(&next_event(&mut legacy).await.1).unwrap()["id"],
        "p"
    );
    stream_ends(&mut legacy).await;
    let session = rig.session(&sid).await;
    let r = merged_get(&rig, &sid, &session).await;
    assert_eq!(r.status(), 200);
    let mut merged = events(r);
    stream_ends(&mut merged).await;
    eventually(
        "both streams to be forgotten",
        Duration::from_secs(10),
        || async {
            let gone = metric(&rig, "mcpgw_relay_sse_sessions").await == 0.0
                && metric(&rig, "mcpgw_relay_merged_streams").await == 0.0;
            gone.then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(&rig, "mcpgw_relay_streams_closed_total{reason=\"idle\"}").await,
        2.0
    );
    for r in running {
        r.stop().await;
    }
}

/// What the relay buffers or relays of the edge's answers is bounded: a JSON answer over
/// the limit, and an SSE event over it, become a JSON-RPC error for the request instead.
/// Before, the relay read any answer whole and any event of any size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_answers_over_the_relay_s_limit_become_errors() {
    let mut rig = relay_rig_with(16, |l| l.max_answer_bytes = 64).await;
    let (sid, _, running) = composed_upstreams(&mut rig).await;
    let base = format!("http://{}", rig.listener);
    let r = stream_client()
        .get(format!("{base}/servers/{sid}/sse"))
        .send()
        .await
        .unwrap();
    let mut rx = events(r);
    let (_, endpoint) = next_event(&mut rx).await;
    let send = |body: &'static str| post(&rig.http, format!("{base}{endpoint}"), body);
    // Small answers pass.
    assert_eq!(
        send(r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#)
            .await
            .0,
        202
    );
    let v: Value = serde_json::from_str(&next_event(&mut rx).await.1).unwrap();
    assert_eq!(v, json!({"jsonrpc": "2.0", "id": "p", "result": {}}));
    // A JSON answer over 64 bytes (the edge's initialize answer).
    let init = r#"{"jsonrpc":"2.0","id":"i","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    assert_eq!(send(init).await.0, 202);
    let v: Value = serde_json::from_str(&next_event(&mut rx).await.1).unwrap();
    assert_eq!(v["id"], "i", "{v}");
    assert_eq!(v["error"]["code"], -32603, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds 64 bytes"),
        "{v}"
    );
    assert_eq!(
        send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await
            .0,
        202
    );
    // An SSE answer (upstream `one` streams its results) whose event is over 64 bytes.
    let call = r#"{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"one__echo","arguments":{"x":"1"}}}"#;
    assert_eq!(send(call).await.0, 202);
    let v: Value = serde_json::from_str(&next_event(&mut rx).await.1).unwrap();
    assert_eq!(v["id"], "c", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds 64 bytes"),
        "{v}"
    );
    assert!(metric(&rig, "mcpgw_relay_messages_total{outcome=\"too_large\"}").await >= 1.0);
    assert!(
        metric(
            &rig,
            "mcpgw_relay_messages_total{outcome=\"sse_line_too_long\"}"
        )
        .await
            + metric(
                &rig,
                "mcpgw_relay_messages_total{outcome=\"sse_event_too_large\"}"
            )
            .await
            >= 1.0
    );
    for r in running {
        r.stop().await;
    }
}
