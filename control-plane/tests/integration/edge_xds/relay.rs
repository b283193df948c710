//! The session relay behind a real Envoy: the legacy SSE pair (`/servers/{id}/sse` +
//! `/message`) with the Python SDK's `sse_client` and with raw HTTP for bad input, and the
//! GET stream of a session over two stateful upstreams, merged.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::mpsc;

use super::super::harness::eventually;
use super::super::upstream::TestUpstream;
use super::clients::composed_upstreams;
use super::{Rig, add_gateway, add_server, python, repo_path};

/// A rig whose control plane runs the relay (on any port).
async fn relay_rig(base_id: u32) -> Rig {
    Rig::start_with(base_id, |s| {
        s.relay_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await
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
    // The relay itself serves only what comes through an mcpgw route.
    let relay = rig.cp.relay_addr.expect("relay enabled");
    let r = rig
        .http
        .get(format!("http://{relay}/servers/{sid}/sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mcpgw-edge-address"),
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
