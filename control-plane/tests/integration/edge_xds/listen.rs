//! `subscriptions/listen` (MCP 2026-07-28) through a virtual server over two upstreams of
//! different eras, served by the session relay behind a real Envoy: two official Python
//! SDK peers (`tests/py/listen_peer.py`), one speaking both eras (the relay listens to
//! it) and one speaking only the 2025 era (the relay reads a session's GET stream there),
//! registered through the admin API; a raw 2026 client.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

use super::super::harness::eventually;
use super::{Rig, add_gateway, add_server, python, repo_path};

const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// A `tests/py/listen_peer.py` process; killed on drop.
struct ListenPeer {
    _child: tokio::process::Child,
    /// Its MCP endpoint.
    url: String,
}

impl ListenPeer {
    /// Starts a peer on any port; `legacy`: one that speaks the 2025 era only.
    async fn start(legacy: bool) -> ListenPeer {
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(repo_path("tests/py/listen_peer.py")).arg("0");
        if legacy {
            cmd.arg("--legacy");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the peer prints its URL within 60 s")
            .unwrap()
            .expect("the peer prints its URL");
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        ListenPeer { _child: child, url }
    }

    /// Announces changes (`listen_peer.py`'s `POST /announce`); what it reached.
    async fn announce(&self, what: Value) -> Value {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(self.url.replace("/mcp", "/announce"))
            .json(&what)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    }
}

/// The 2026-07-28 envelope every request of that era carries in `params._meta`.
fn envelope() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "listen-test", "version": "1"}
    })
}

/// POSTs a 2026-era `subscriptions/listen` with `notifications` to `url`.
async fn listen(url: &str, id: &str, notifications: Value) -> reqwest::Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
        "params": {"notifications": notifications, "_meta": envelope()}});
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Reads an event stream in the background: each JSON-RPC message (comments skipped).
/// Dropping the receiver closes the connection.
fn messages(response: reqwest::Response) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut buf = String::new();
        loop {
            let chunk = tokio::select! {
                c = body.next() => c,
                () = tx.closed() => return,
            };
            let Some(Ok(chunk)) = chunk else { return };
            buf.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let message = serde_json::from_str(&data.join("\n"))
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {block:?}"));
                if tx.send(message).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Messages from `rx` until `done` holds for what was seen (at most 30 s: a bound, so a
/// missing notification fails instead of hanging).
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Value>,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    while !done(&seen) {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(m)) => seen.push(m),
            Ok(None) => panic!("the stream ended before {what}; seen: {seen:#?}"),
            Err(_) => panic!("no {what} within 30 s; seen: {seen:#?}"),
        }
    }
    seen
}

/// A notification `method` of subscription `id` with `params` (besides `_meta`).
fn stamped(method: &str, id: &str, mut params: Value) -> Value {
    params["_meta"] = json!({SUBSCRIPTION_ID: id});
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// The value of gauge or counter `name` in the control plane's `/metrics` (0 if absent).
async fn metric(rig: &Rig, name: &str) -> f64 {
    let (_, text) = rig.cp.get("/metrics").await;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Makes sure the snapshot says gateway `gid` speaks the stateless era, as discovery
/// records for an upstream that answers `server/discover`. Federation on this branch
/// negotiates with `initialize` only (rmcp's legacy handshake), so it records the session
/// era even for a peer that speaks both; this records what `server/discover` would have
/// found, in the registry row, as another control-plane replica's write would (the
/// publisher's poll picks it up), and waits until Envoy serves it.
async fn speaks_modern(rig: &mut Rig, gid: &str) {
    let versions = |s: &Value| s["upstreams"][gid]["protocol_versions"].clone();
    let (_, snapshot) = rig.cp.get("/snapshot").await;
    if versions(&snapshot)
        .as_array()
        .is_some_and(|v| v.contains(&json!("2026-07-28")))
    {
        return;
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(rig._db.url()).await.unwrap();
    sqlx::query("UPDATE gateways SET protocol_version = '2026-07-28' WHERE id = $1")
        .bind(gid)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE registry_meta SET version = version + 1 WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let cp = &rig.cp;
    eventually(
        "the snapshot to say the peer speaks 2026-07-28",
        Duration::from_secs(30),
        || async {
            let (_, snapshot) = cp.get("/snapshot").await;
            (versions(&snapshot) == json!(["2026-07-28"])).then_some(())
        },
    )
    .await;
    rig.synced().await;
}

/// Item ids of `kind` (`tools`, `resources`, `prompts`) of gateway `gid`, by name.
async fn items(rig: &Rig, kind: &str, gid: &str) -> Vec<(String, String)> {
    let (_, page) = rig.cp.get(&format!("/{kind}?gateway_id={gid}")).await;
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{kind}: {page}"))
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_owned(),
                i["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_hears_a_2026_and_a_2025_upstream_and_the_catalog_through_a_virtual_server() {
    let mut rig = Rig::start_with(40, |s| {
        s.relay_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let (modern, legacy) = tokio::join!(ListenPeer::start(false), ListenPeer::start(true));
    let (mgid, mtools) = add_gateway(&rig.cp, "modern", &modern.url).await;
    let (lgid, ltools) = add_gateway(&rig.cp, "legacy", &legacy.url).await;
    // The server: every tool of both but `modern__add` (added later through the API),
    // both prompts, the 2025 peer's resources (the peers' URIs are the same).
    let held_back = mtools
        .keys()
        .find(|n| n.ends_with("add"))
        .cloned()
        .expect("the peer's add tool");
    let mut tools: Vec<(String, String)> = mtools.into_iter().chain(ltools).collect();
    tools.sort();
    let initial: Vec<&(String, String)> = tools.iter().filter(|(n, _)| *n != held_back).collect();
    let mut prompts = items(&rig, "prompts", &mgid).await;
    prompts.extend(items(&rig, "prompts", &lgid).await);
    let resources = items(&rig, "resources", &lgid).await;
    let ids = |v: &[&(String, String)]| v.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>();
    let sid = add_server(
        &rig.cp,
        "listening",
        json!({
            "associated_tools": ids(&initial),
            "associated_prompts": ids(&prompts.iter().collect::<Vec<_>>()),
            "associated_resources": ids(&resources.iter().collect::<Vec<_>>()),
        }),
    )
    .await;
    let names: Vec<&str> = initial.iter().map(|(n, _)| n.as_str()).collect();
    rig.tools_become(&sid, &names).await;
    rig.synced().await;
    speaks_modern(&mut rig, &mgid).await;
    // One upstream of each era: the filter hands the listen to the relay.
    let (_, snapshot) = rig.cp.get("/snapshot").await;
    assert_eq!(
        snapshot["upstreams"][&mgid]["protocol_versions"],
        json!(["2026-07-28"]),
        "{snapshot}"
    );
    assert_eq!(
        snapshot["upstreams"][&lgid]["protocol_versions"],
        json!(["2025-11-25"]),
        "{snapshot}"
    );

    // The server's creation was announced (to no listen yet): what follows is this test's.
    eventually(
        "the relay to announce the server's creation",
        Duration::from_secs(30),
        || async { (metric(&rig, "mcpgw_relay_catalog_changes_total").await >= 1.0).then_some(()) },
    )
    .await;

    let filter = json!({"toolsListChanged": true, "promptsListChanged": true,
        "resourceSubscriptions": ["peer://greeting", "peer://items/modern"]});
    let response = listen(&rig.mcp(&sid), "sub-7", filter.clone()).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut rx = messages(response);
    let first = until(&mut rx, "the acknowledgement", |s| !s.is_empty()).await;
    assert_eq!(
        first[0],
        stamped(
            "notifications/subscriptions/acknowledged",
            "sub-7",
            json!({"notifications": filter})
        ),
        "the acknowledgement is the first frame, honoring every kind asked for"
    );
    assert_eq!(metric(&rig, "mcpgw_relay_listen_streams").await, 1.0);

    // The catalog changes (a tool added through the admin API): the relay says so once
    // Envoy serves the new list.
    let mut all = ids(&tools.iter().collect::<Vec<_>>());
    all.sort();
    let (s, v) = rig
        .cp
        .put(&format!("/servers/{sid}"), json!({"associated_tools": all}))
        .await;
    assert_eq!(s, 200, "{v}");
    let tools_changed = stamped("notifications/tools/list_changed", "sub-7", json!({}));
    let seen = until(&mut rx, "tools/list_changed", |s| {
        s.contains(&tools_changed)
    })
    .await;
    assert_eq!(
        seen,
        std::slice::from_ref(&tools_changed),
        "nothing but the catalog's change"
    );
    let every: Vec<&str> = tools.iter().map(|(n, _)| n.as_str()).collect();
    rig.tools_become(&sid, &every).await;

    // Each upstream announces: the 2026 peer on its listen stream (the SDK stamps and
    // filters it), the 2025 peer on its sessions' GET streams (unstamped, unfiltered).
    let reached = modern
        .announce(json!({"tools": true, "resources": true, "updated": ["peer://items/modern"]}))
        .await;
    assert_eq!(
        reached["listeners"], 1,
        "the relay listens to the 2026 peer: {reached}"
    );
    let reached = legacy
        .announce(json!({"prompts": true, "resources": true,
            "updated": ["peer://greeting", "peer://items/other"]}))
        .await;
    assert_eq!(
        reached["subscribed"]["peer://greeting"], 1,
        "the relay's session subscribed to the client's URI at the 2025 peer: {reached}"
    );
    let legacy_sessions = reached["sessions"].as_u64().unwrap();
    let wanted = [
        tools_changed.clone(),
        stamped("notifications/prompts/list_changed", "sub-7", json!({})),
        stamped(
            "notifications/resources/updated",
            "sub-7",
            json!({"uri": "peer://items/modern"}),
        ),
        stamped(
            "notifications/resources/updated",
            "sub-7",
            json!({"uri": "peer://greeting"}),
        ),
    ];
    let seen = until(&mut rx, "every upstream's notifications", |s| {
        wanted.iter().all(|w| s.contains(w))
    })
    .await;
    // The 2025 peer sent resources/list_changed before its update: the client did not ask
    // for it, so it never came.
    for m in &seen {
        assert!(
            wanted.contains(m),
            "unexpected on the stream: {m}\n(all: {seen:#?})"
        );
    }

    // The client goes away: the relay forgets the listen, ends its listen at the 2026
    // peer and its session at the edge, which ends the 2025 peer's session.
    drop(rx);
    eventually(
        "the relay to drop the closed listen",
        Duration::from_secs(20),
        || async { (metric(&rig, "mcpgw_relay_listen_streams").await == 0.0).then_some(()) },
    )
    .await;
    eventually(
        "the 2026 peer's listen stream to end",
        Duration::from_secs(20),
        || async { (modern.announce(json!({})).await["listeners"] == 0).then_some(()) },
    )
    .await;
    eventually(
        "the 2025 peer's session to end",
        Duration::from_secs(20),
        || async {
            let sessions = legacy.announce(json!({})).await["sessions"].as_u64();
            (sessions == Some(legacy_sessions - 1)).then_some(())
        },
    )
    .await;

    // With no URI to subscribe to, the 2025 peer's session is opened by its GET stream.
    let response = listen(
        &rig.mcp(&sid),
        "sub-10",
        json!({"promptsListChanged": true}),
    )
    .await;
    assert_eq!(response.status().as_u16(), 200);
    let mut rx = messages(response);
    until(&mut rx, "the acknowledgement", |s| !s.is_empty()).await;
    let reached = legacy.announce(json!({"prompts": true})).await;
    assert_eq!(reached["sessions"], legacy_sessions, "{reached}");
    let changed = stamped("notifications/prompts/list_changed", "sub-10", json!({}));
    until(&mut rx, "prompts/list_changed", |s| s.contains(&changed)).await;
    drop(rx);

    // Bad input through the same path gets a JSON-RPC error naming the request.
    let r = listen(&rig.mcp(&sid), "sub-8", json!({"toolsListChanged": "yes"})).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["id"], "sub-8", "{body}");
    assert_eq!(body["error"]["code"], -32602, "{body}");

    // A server with nothing in it yet is listened to for its catalog alone.
    let empty = add_server(&rig.cp, "empty", json!({})).await;
    rig.synced().await;
    let response = listen(&rig.mcp(&empty), "sub-9", json!({"toolsListChanged": true})).await;
    assert_eq!(response.status().as_u16(), 200);
    let mut rx = messages(response);
    let ack = until(&mut rx, "the acknowledgement", |s| !s.is_empty()).await;
    assert_eq!(
        ack[0]["method"], "notifications/subscriptions/acknowledged",
        "{ack:?}"
    );
    let (s, v) = rig
        .cp
        .put(
            &format!("/servers/{empty}"),
            json!({"associated_tools": [tools[0].1]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let changed = stamped("notifications/tools/list_changed", "sub-9", json!({}));
    let seen = until(&mut rx, "tools/list_changed", |s| s.contains(&changed)).await;
    assert_eq!(seen, [changed]);
}
