//! Real MCP clients in whole sessions against a virtual server that Envoy got over xDS:
//! the `rmcp` client (with progress notifications inside SSE responses) and the official
//! Python SDK (`tests/py/mcp_client_flow.py`).

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, ClientConfig, GetPromptRequestParams, ProgressNotificationParam,
    ProtocolVersion, ReadResourceRequestParams,
};
use rmcp::service::NotificationContext;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

use super::super::upstream::{Running, TestUpstream};
use super::{Rig, add_gateway, add_server, python, repo_path};

/// Upstream `one` (sessions, SSE) and `two` (stateless, JSON) with colliding tool names,
/// and a virtual server over both: their tools and prompts, and `one`'s resources.
async fn composed(rig: &mut Rig) -> (String, [Running; 2]) {
    let (sid, _, running) = composed_upstreams(rig).await;
    (sid, running)
}

/// [`composed`], with the upstreams (to make them send server-initiated messages).
pub(super) async fn composed_upstreams(rig: &mut Rig) -> (String, [TestUpstream; 2], [Running; 2]) {
    let one = TestUpstream::with_tools(&["echo", "whoami"]).with_label("one");
    let two = TestUpstream::with_tools(&["echo", "whoami"]).with_label("two");
    // `TestUpstream::serve`, not rmcp's `ServiceExt::serve` (in scope for the client).
    let running = [
        TestUpstream::serve(&one, 0).await,
        two.serve_stateless(0).await,
    ];
    let mut body = json!({"associated_tools": [], "associated_resources": [],
        "associated_prompts": []});
    for (label, r) in ["one", "two"].iter().zip(&running) {
        let (gid, tools) = add_gateway(&rig.cp, label, &r.url).await;
        for id in tools.values() {
            body["associated_tools"]
                .as_array_mut()
                .unwrap()
                .push(json!(id));
        }
        let kinds: &[&str] = if label.eq(&"one") {
            &["resources", "prompts"]
        } else {
            &["prompts"]
        };
        for kind in kinds {
            let (_, page) = rig.cp.get(&format!("/{kind}?gateway_id={gid}")).await;
            for item in page["items"].as_array().unwrap() {
                body[format!("associated_{kind}")]
                    .as_array_mut()
                    .unwrap()
                    .push(item["id"].clone());
            }
        }
    }
    let sid = add_server(&rig.cp, "clients", body).await;
    rig.tools_become(
        &sid,
        &["one__echo", "one__whoami", "two__echo", "two__whoami"],
    )
    .await;
    rig.synced().await;
    (sid, [one, two], running)
}

/// An rmcp client handler that keeps the progress notifications it receives.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<Vec<ProgressNotificationParam>>>);

impl Progress {
    /// The messages of the notifications that upstream `label` sent, sorted (rmcp may
    /// run the handlers of two notifications concurrently).
    fn from(&self, label: &str) -> Vec<String> {
        let mut m: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| p.message.clone())
            .filter(|m| m.starts_with(&format!("{label}:")))
            .collect();
        m.sort();
        m
    }
}

impl ClientHandler for Progress {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.0.lock().unwrap().push(params);
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.protocol_version = ProtocolVersion::V_2025_06_18;
        info
    }
}

fn text(v: &impl serde::Serialize, pointer: &str) -> String {
    serde_json::to_value(v)
        .unwrap()
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The rmcp client: initialize (answered at the edge) → tools/list → tools/call on each
/// upstream with a progress token (both answers are SSE streams carrying two progress
/// notifications, passed through by the filter) → resources/read → prompts/get → close
/// (DELETE of the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_session_through_an_xds_configured_envoy() {
    rmcp_session(&mut Rig::start(8).await).await;
}

/// The rmcp client's session (see the test above) on `rig`.
pub(super) async fn rmcp_session(rig: &mut Rig) {
    let (sid, running) = composed(rig).await;
    let progress = Progress::default();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(rig.mcp(&sid)),
    );
    let client = progress.clone().serve(transport).await.unwrap();
    let info = serde_json::to_value(client.peer_info().unwrap()).unwrap();
    assert_eq!(info["serverInfo"]["name"], "clients", "{info}");

    let mut tools: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    tools.sort();
    assert_eq!(
        tools,
        ["one__echo", "one__whoami", "two__echo", "two__whoami"]
    );

    // rmcp puts a progress token of its own in every request, so each call's answer is
    // an SSE stream with the upstream's two progress notifications before the result.
    for label in ["one", "two"] {
        let result = client
            .call_tool(CallToolRequestParams::new(format!("{label}__whoami")))
            .await
            .unwrap();
        assert_eq!(text(&result, "/content/0/text"), label);
        // The notifications precede the result on the stream, but the handler may still
        // be running when the call returns.
        let deadline = std::time::Instant::now() + super::WAIT;
        while progress.from(label).len() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            progress.from(label),
            [
                format!("{label}: step 1 of 2"),
                format!("{label}: step 2 of 2")
            ]
        );
    }
    let result = client
        .call_tool(CallToolRequestParams::new("two__echo"))
        .await
        .unwrap();
    assert_eq!(text(&result, "/content/0/text"), "two:echo");

    let read = client
        .read_resource(ReadResourceRequestParams::new("test://doc/1"))
        .await
        .unwrap();
    assert_eq!(text(&read, "/contents/0/text"), "one: doc 1");
    let mut args = serde_json::Map::new();
    args.insert("who".into(), json!("rmcp"));
    for label in ["one", "two"] {
        let got = client
            .get_prompt(
                GetPromptRequestParams::new(format!("{label}__greet")).with_arguments(args.clone()),
            )
            .await
            .unwrap();
        assert_eq!(
            text(&got, "/messages/0/content/text"),
            format!("Hello, rmcp! ({label})")
        );
    }
    client.cancel().await.unwrap();
    for r in running {
        r.stop().await;
    }
}

/// The Python SDK's whole session (initialize → tools/list → tools/call →
/// resources/read → prompts/get → DELETE) against the same kind of virtual server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_session_through_an_xds_configured_envoy() {
    python_sdk_session(&mut Rig::start(9).await).await;
}

/// The Python SDK's session (see the test above) on `rig`.
pub(super) async fn python_sdk_session(rig: &mut Rig) {
    let (sid, running) = composed(rig).await;
    let python = python();
    let url = rig.mcp(&sid);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(repo_path("tests/py/mcp_client_flow.py"))
            .args([
                url.as_str(),
                "two__echo",
                r#"{"x": "py"}"#,
                "test://doc/2",
                "one__greet",
                r#"{"who": "py"}"#,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(out["server_name"], "clients", "{out}");
    assert_eq!(
        out["tools"],
        json!(["one__echo", "one__whoami", "two__echo", "two__whoami"])
    );
    assert_eq!(out["call_is_error"], false, "{out}");
    assert_eq!(out["call_text"], json!(["two:echo"]), "{out}");
    assert_eq!(out["resource_text"], json!(["one: doc 2"]), "{out}");
    assert_eq!(out["prompt_text"], json!(["Hello, py! (one)"]), "{out}");
    let exchanges = out["exchanges"].as_array().unwrap();
    for e in exchanges {
        let status = e["status"].as_u64().unwrap_or_default();
        // The SDK may try the optional GET stream, which virtual servers refuse with 405.
        let ok = (200..300).contains(&status) || (e["method"] == "GET" && status == 405);
        assert!(
            ok,
            "an exchange failed through the edge: {e} (all: {exchanges:?})"
        );
    }
    assert!(
        exchanges
            .iter()
            .any(|e| e["method"] == "DELETE" && e["status"] == 200),
        "the session is deleted through the edge: {exchanges:?}"
    );
    for r in running {
        r.stop().await;
    }
}
