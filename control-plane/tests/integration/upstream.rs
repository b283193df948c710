//! Real upstream peers: an in-process rmcp streamable-HTTP server whose catalog tests can
//! change (with list_changed notifications), the reference server-everything (node), and
//! misbehaving HTTP servers (hang, garbage, close mid-stream).
//!
//! The rmcp server answers calls so tests can tell which upstream a request reached: every
//! tool returns `<label>:<tool>` (`whoami` returns the label alone); `slow` first waits for
//! [`TestUpstream::release_slow`] (at most `arguments.ms`, default 2000); and a call that
//! carries a progress token first sends two progress notifications, which makes the
//! response an SSE stream with notifications in it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    PromptMessage, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, ResourceContents, ResourceUpdatedNotificationParam, Role, ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::harness::{ChildGuard, free_port};

/// Page size of the test server's lists (small, to exercise pagination).
pub const PAGE: usize = 2;

#[derive(Default)]
struct Catalog {
    /// What calls answer with (`whoami`), so tests can tell upstreams apart.
    label: String,
    tools: Vec<String>,
    /// Tool definitions listed as they are, instead of those built from `tools`.
    raw_tools: Option<Vec<Value>>,
    /// `tools/list` requests answered.
    tool_lists: usize,
    template_name: String,
    peers: Vec<Peer<RoleServer>>,
}

/// Shared, mutable catalog of the test server.
#[derive(Clone)]
pub struct TestUpstream {
    catalog: Arc<Mutex<Catalog>>,
    /// `Authorization` value every request must carry (`None`: no check); others get 401.
    required_auth: Arc<Mutex<Option<String>>>,
    /// Every `Authorization` value received (absent ones as `""`), in order.
    auth_seen: Arc<Mutex<Vec<String>>>,
    /// `slow` calls that have started.
    slow_started: Arc<AtomicUsize>,
    /// One permit lets one `slow` call finish (a semaphore: a release before the call
    /// waits is not lost).
    slow_gate: Arc<Semaphore>,
}

impl Default for TestUpstream {
    fn default() -> Self {
        TestUpstream {
            catalog: Arc::default(),
            required_auth: Arc::default(),
            auth_seen: Arc::default(),
            slow_started: Arc::default(),
            slow_gate: Arc::new(Semaphore::new(0)),
        }
    }
}

fn page<T: Clone>(all: &[T], req: &Option<PaginatedRequestParams>) -> (Vec<T>, Option<String>) {
    let start: usize = req
        .as_ref()
        .and_then(|r| r.cursor.as_ref())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let end = (start + PAGE).min(all.len());
    let next = (end < all.len()).then(|| end.to_string());
    (all[start.min(end)..end].to_vec(), next)
}

impl TestUpstream {
    pub fn with_tools(names: &[&str]) -> Self {
        let u = TestUpstream::default();
        {
            let mut c = u.catalog.lock().unwrap();
            c.tools = names.iter().map(|s| s.to_string()).collect();
            c.template_name = "doc-by-id".into();
            c.label = "test-upstream".into();
        }
        u
    }

    /// Names this upstream in call results (`whoami` returns it).
    pub fn with_label(self, label: &str) -> Self {
        self.catalog.lock().unwrap().label = label.into();
        self
    }

    /// Names the resource template (`doc0`..`doc2` are the resources' names).
    pub fn with_template_name(self, name: &str) -> Self {
        self.catalog.lock().unwrap().template_name = name.into();
        self
    }

    /// Refuses (401) every request whose `Authorization` is not `value`.
    pub fn with_required_auth(self, value: &str) -> Self {
        *self.required_auth.lock().unwrap() = Some(value.to_owned());
        self
    }

    /// Every `Authorization` header value this upstream received (`""` when absent).
    pub fn auth_seen(&self) -> Vec<String> {
        self.auth_seen.lock().unwrap().clone()
    }

    /// Lists these tool definitions as they are (names and sizes an API would refuse
    /// included).
    pub fn with_raw_tools(self, tools: Vec<Value>) -> Self {
        self.catalog.lock().unwrap().raw_tools = Some(tools);
        self
    }

    /// How many `tools/list` requests (pages) this upstream answered.
    pub fn tool_lists(&self) -> usize {
        self.catalog.lock().unwrap().tool_lists
    }

    /// Sends `n` `notifications/tools/list_changed` to every connected client.
    pub async fn flood_list_changed(&self, n: usize) {
        let peers = self.catalog.lock().unwrap().peers.clone();
        for p in peers {
            for _ in 0..n {
                let _ = p.notify_tool_list_changed().await;
            }
        }
    }

    /// How many `slow` calls have reached this upstream.
    pub fn slow_started(&self) -> usize {
        self.slow_started.load(Ordering::SeqCst)
    }

    /// Lets one `slow` call (running or future) answer.
    pub fn release_slow(&self) {
        self.slow_gate.add_permits(1);
    }

    /// Replaces the tool list and notifies every connected client.
    pub async fn set_tools(&self, names: &[&str]) {
        let peers = {
            let mut c = self.catalog.lock().unwrap();
            c.tools = names.iter().map(|s| s.to_string()).collect();
            c.peers.clone()
        };
        for p in peers {
            let _ = p.notify_tool_list_changed().await;
        }
    }

    /// Replaces the listed tool definitions (as they are) and notifies every connected
    /// client with `notifications/tools/list_changed`.
    pub async fn set_raw_tools(&self, tools: Vec<Value>) {
        let peers = {
            let mut c = self.catalog.lock().unwrap();
            c.raw_tools = Some(tools);
            c.peers.clone()
        };
        for p in peers {
            let _ = p.notify_tool_list_changed().await;
        }
    }

    /// Sends `notifications/resources/updated` for `test://{label}/{what}` to every
    /// connected client (a server-initiated message: it travels on their GET streams).
    pub async fn announce(&self, what: &str) {
        let (uri, peers) = {
            let c = self.catalog.lock().unwrap();
            (format!("test://{}/{what}", c.label), c.peers.clone())
        };
        for p in peers {
            let _ = p
                .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri.clone()))
                .await;
        }
    }

    /// Serves on 127.0.0.1:`port` (0 = any) at `/mcp`, with sessions (`Mcp-Session-Id`)
    /// and SSE responses.
    pub async fn serve(&self, port: u16) -> Running {
        self.serve_with(port, StreamableHttpServerConfig::default())
            .await
    }

    /// Serves without sessions: every POST stands alone, and a response without
    /// notifications before it is plain `application/json`.
    pub async fn serve_stateless(&self, port: u16) -> Running {
        let config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true);
        self.serve_with(port, config).await
    }

    async fn serve_with(&self, port: u16, config: StreamableHttpServerConfig) -> Running {
        let me = self.clone();
        let sessions = config.cancellation_token.clone();
        let service = StreamableHttpService::new(
            move || Ok(me.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let required = self.required_auth.clone();
        let seen = self.auth_seen.clone();
        let router =
            axum::Router::new()
                .nest_service("/mcp", service)
                .layer(axum::middleware::from_fn(
                    move |req: axum::extract::Request, next: axum::middleware::Next| {
                        let required = required.lock().unwrap().clone();
                        let got = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        seen.lock().unwrap().push(got.clone());
                        async move {
                            match required {
                                Some(want) if want != got => {
                                    axum::http::StatusCode::UNAUTHORIZED.into_response()
                                }
                                _ => next.run(req).await,
                            }
                        }
                    },
                ));
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind test upstream");
        let addr = listener.local_addr().expect("addr");
        let stop = sessions.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Running {
            addr,
            url: format!("http://{addr}/mcp"),
            stop: Box::new(move || sessions.cancel()),
            task,
        }
    }
}

/// A running test upstream; stopped (sessions and listener) on `stop` or drop.
pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    stop: Box<dyn Fn() + Send + Sync>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Terminates every session and closes the port.
    pub async fn stop(mut self) {
        (self.stop)();
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        (self.stop)();
        self.task.abort();
    }
}

impl ServerHandler for TestUpstream {
    /// Session-based versions: list_changed reaches clients on their GET stream.
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Owned(vec![
            ProtocolVersion::V_2025_06_18,
            ProtocolVersion::V_2025_03_26,
        ])
    }

    fn get_info(&self) -> ServerConfig {
        serde_json::from_value(json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {
                "tools": {"listChanged": true},
                "resources": {"listChanged": true},
                "prompts": {"listChanged": true}
            },
            "serverInfo": {"name": "mcpgw-test-upstream", "version": "1.0.0"}
        }))
        .expect("server info")
    }

    async fn on_initialized(&self, ctx: NotificationContext<RoleServer>) {
        self.catalog.lock().unwrap().peers.push(ctx.peer);
    }

    async fn list_tools(
        &self,
        req: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (names, raw) = {
            let mut c = self.catalog.lock().unwrap();
            c.tool_lists += 1;
            (c.tools.clone(), c.raw_tools.clone())
        };
        let all: Vec<Value> = match raw {
            Some(raw) => raw,
            None => names
                .iter()
                .map(|n| {
                    json!({
                        "name": n,
                        "description": format!("the {n} tool"),
                        "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}
                    })
                })
                .collect(),
        };
        let (tools, next) = page(&all, &req);
        Ok(serde_json::from_value(json!({"tools": tools, "nextCursor": next})).expect("tools"))
    }

    async fn list_resources(
        &self,
        req: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let all: Vec<Value> = (0..3)
            .map(|i| json!({"uri": format!("test://doc/{i}"), "name": format!("doc{i}"), "mimeType": "text/plain"}))
            .collect();
        let (items, next) = page(&all, &req);
        Ok(
            serde_json::from_value(json!({"resources": items, "nextCursor": next}))
                .expect("resources"),
        )
    }

    async fn list_resource_templates(
        &self,
        _req: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let name = self.catalog.lock().unwrap().template_name.clone();
        Ok(serde_json::from_value(json!({
            "resourceTemplates": [{"uriTemplate": "test://doc/{id}", "name": name}]
        }))
        .expect("templates"))
    }

    async fn list_prompts(
        &self,
        _req: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(serde_json::from_value(json!({
            "prompts": [{"name": "greet", "description": "say hi",
                          "arguments": [{"name": "who", "required": true}]}]
        }))
        .expect("prompts"))
    }

    async fn call_tool(
        &self,
        req: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (label, known) = {
            let c = self.catalog.lock().unwrap();
            (c.label.clone(), c.tools.iter().any(|t| *t == req.name))
        };
        if !known {
            return Err(ErrorData::invalid_params(
                format!("{label}: no tool {}", req.name),
                None,
            ));
        }
        let token = ctx
            .meta
            .get_progress_token()
            .or_else(|| req.meta.as_ref().and_then(|m| m.get_progress_token()));
        if let Some(token) = token {
            for step in 1..=2u8 {
                let mut p = ProgressNotificationParam::new(token.clone(), f64::from(step));
                p.total = Some(2.0);
                p.message = Some(format!("{label}: step {step} of 2"));
                let _ = ctx.peer.notify_progress(p).await;
            }
        }
        let text = match req.name.as_ref() {
            "whoami" => label,
            "slow" => {
                let ms = req
                    .arguments
                    .as_ref()
                    .and_then(|a| a.get("ms"))
                    .and_then(Value::as_u64)
                    .unwrap_or(2000);
                self.slow_started.fetch_add(1, Ordering::SeqCst);
                let gate =
                    tokio::time::timeout(Duration::from_millis(ms), self.slow_gate.acquire());
                if let Ok(Ok(permit)) = gate.await {
                    permit.forget();
                }
                format!("{label}:slow")
            }
            other => format!("{label}:{other}"),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }

    async fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let label = self.catalog.lock().unwrap().label.clone();
        let Some(id) = req.uri.strip_prefix("test://doc/") else {
            return Err(ErrorData::resource_not_found(
                format!("{label}: no resource {}", req.uri),
                None,
            ));
        };
        let text = format!("{label}: doc {id}");
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, req.uri.clone())]).into())
    }

    async fn get_prompt(
        &self,
        req: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let label = self.catalog.lock().unwrap().label.clone();
        if req.name != "greet" {
            return Err(ErrorData::invalid_params(
                format!("{label}: no prompt {}", req.name),
                None,
            ));
        }
        let who = req
            .arguments
            .as_ref()
            .and_then(|a| a.get("who"))
            .and_then(Value::as_str)
            .unwrap_or("nobody")
            .to_owned();
        let message = PromptMessage::new_text(Role::User, format!("Hello, {who}! ({label})"));
        Ok(GetPromptResult::new(vec![message]).into())
    }
}

/// The reference server `@modelcontextprotocol/server-everything` over streamable HTTP.
pub struct Everything {
    pub url: String,
    _child: ChildGuard,
}

fn node_modules() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("MCPGW_NODE_MODULES") {
        return p.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node/node_modules")
}

impl Everything {
    /// `mode` is `streamableHttp` (serves `/mcp`) or `sse` (serves `/sse`).
    pub async fn start(mode: &str) -> Everything {
        let script = node_modules().join("@modelcontextprotocol/server-everything/dist/index.js");
        assert!(
            script.exists(),
            "{} missing: run `make deps` (installs the npm test peers)",
            script.display()
        );
        let port = free_port();
        let child = tokio::process::Command::new("node")
            .arg(&script)
            .arg(mode)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed to run server-everything");
        let guard = ChildGuard(Some(child));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server-everything did not listen on {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Everything {
            url: format!(
                "http://127.0.0.1:{port}/{}",
                if mode == "sse" { "sse" } else { "mcp" }
            ),
            _child: guard,
        }
    }
}

/// `tests/py/peer_server.py`: an MCP server written with the official Python SDK (`mcp`
/// 2.x), speaking the protocol eras `era` names (`both`, `legacy`: 2025 only, `modern`:
/// 2026-07-28 only) on `/mcp`. Tools `echo`, `add`, `log_levels`, `sample`,
/// `ask_profile`, `open_url`, `list_roots`, `count`; resource `peer://greeting`; template
/// `peer://items/{name}`; prompt `greet`.
pub struct PythonPeer {
    pub url: String,
    _child: ChildGuard,
}

impl PythonPeer {
    /// Starts it on a port it picks and waits for the URL it prints once it accepts
    /// connections (generously: importing the SDK takes a while on a busy machine).
    pub async fn start(era: &str) -> PythonPeer {
        use tokio::io::AsyncBufReadExt as _;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = std::env::var_os("MCPGW_PYTHON")
            .map_or_else(|| root.join(".venv/bin/python"), std::path::PathBuf::from);
        assert!(
            python.exists(),
            "Python not found at {} (run `make deps`, or set MCPGW_PYTHON)",
            python.display()
        );
        let mut child = tokio::process::Command::new(python)
            .arg(root.join("tests/py/peer_server.py"))
            .args(["0", "--era", era, "--name", &format!("peer-{era}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start peer_server.py");
        let stdout = child.stdout.take().expect("stdout");
        let guard = ChildGuard(Some(child));
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("http://") {
                    return Some(line.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("peer_server.py --era {era} never printed its URL"));
        PythonPeer { url, _child: guard }
    }
}

/// How a broken upstream misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Misbehavior {
    /// Accepts and never answers.
    Hang,
    /// Answers 200 with a body that is not JSON.
    Garbage,
    /// Starts an SSE response and closes the connection mid-event.
    CloseMidStream,
}

/// A raw TCP server that misbehaves on every connection.
pub async fn broken_upstream(kind: Misbehavior) -> (String, tokio::task::JoinHandle<()>) {
    broken_upstream_at(0, kind).await
}

/// [`broken_upstream`] on 127.0.0.1:`port` (e.g. where a good upstream used to be).
pub async fn broken_upstream_at(
    port: u16,
    kind: Misbehavior,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                match kind {
                    Misbehavior::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Misbehavior::Garbage => {
                        let body = "{\"jsonrpc\": \"2.0\", \"id\": 0, \"result\": <<<garbage";
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                    }
                    Misbehavior::CloseMidStream => {
                        let resp = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n20\r\nevent: message\r\ndata: {\"jsonrpc\":";
                        let _ = sock.write_all(resp.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/mcp"), task)
}
