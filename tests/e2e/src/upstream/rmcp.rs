//! An in-process MCP server written with the official Rust SDK `rmcp`, served over
//! streamable HTTP on 127.0.0.1 (port 0) at `/mcp`.
//!
//! Tools `echo`, `add`, `whoami` (returns the server's label, so tests can tell which
//! upstream answered), and on a gated server ([`RmcpServer::start_gated`]) `hold`, which
//! answers only when the test opens its [`Gate`] (calls in flight for as long as a test
//! needs, without timing); resource `mcpgw://greeting`; prompt `greet`. Every request it
//! receives is recorded ([`RmcpServer::seen`]): method, headers and JSON-RPC method, so
//! tests can assert what reached the upstream and what did not.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    ListResourcesResult, PaginatedRequestParams, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, Role, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{
    ErrorData, RoleServer, ServerHandler, prompt, prompt_handler, prompt_router, tool,
    tool_handler, tool_router,
};
use tokio_util::sync::CancellationToken;

/// URI of the one resource the server has.
pub const GREETING_URI: &str = "mcpgw://greeting";

/// How the server answers POSTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmcpServerMode {
    /// Sessions (`Mcp-Session-Id`, `DELETE` ends them); responses are SSE streams.
    SessionSse,
    /// No sessions; simple responses are `application/json`.
    StatelessJson,
}

/// Arguments of `echo`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// Text to send back.
    pub message: String,
}

/// Arguments of `add`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct AddArgs {
    /// Left operand.
    pub a: i64,
    /// Right operand.
    pub b: i64,
}

/// Arguments of the `greet` prompt.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct GreetArgs {
    /// Who to greet.
    pub name: String,
}

/// What `hold` calls wait for: each permit the test adds answers one of them.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
    arrived: Arc<AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            waiting: Arc::new(AtomicUsize::new(0)),
            arrived: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Gate {
    /// Lets `n` waiting (or later) `hold` calls answer.
    pub fn open(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// `hold` calls waiting now (one the server dropped, its client gone, stops waiting).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// `hold` calls that ever arrived.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    async fn pass(&self) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
    }
}

/// The handler: one instance per session.
#[derive(Debug, Clone)]
pub struct Handler {
    label: String,
    gate: Gate,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

#[tool_router]
impl Handler {
    /// A handler that calls itself `label`.
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            gate: Gate::default(),
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    /// A handler that also has `hold`, waiting on `gate`.
    pub fn gated(label: &str, gate: Gate) -> Self {
        let mut tool_router = Self::tool_router();
        tool_router.merge(Self::hold_router());
        Self {
            label: label.to_owned(),
            gate,
            tool_router,
            prompt_router: Self::prompt_router(),
        }
    }

    /// Echoes `message` back.
    #[tool(description = "Echoes back the input string")]
    fn echo(&self, Parameters(EchoArgs { message }): Parameters<EchoArgs>) -> String {
        message
    }

    /// `a + b`.
    #[tool(description = "Adds two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        a.saturating_add(b).to_string()
    }

    /// The server's label.
    #[tool(description = "Names the upstream that answered")]
    fn whoami(&self) -> String {
        self.label.clone()
    }
}

#[tool_router(router = hold_router)]
impl Handler {
    /// Answers once the test opens the gate.
    #[tool(description = "Answers when the test lets it")]
    async fn hold(&self) -> String {
        self.gate.pass().await;
        "released".to_owned()
    }
}

#[prompt_router]
impl Handler {
    /// A greeting prompt.
    #[prompt(name = "greet", description = "Greets someone")]
    async fn greet(
        &self,
        Parameters(GreetArgs { name }): Parameters<GreetArgs>,
    ) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(
            Role::User,
            format!("Hello, {name}! ({})", self.label),
        )]
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .build(),
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![Resource::new(
            GREETING_URI,
            "greeting",
        )]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != GREETING_URI {
            return Err(ErrorData::resource_not_found(
                format!("no resource {}", request.uri),
                None,
            ));
        }
        Ok(ReadResourceResult::new(vec![ResourceContents::text(
            format!("greetings from {}", self.label),
            request.uri,
        )])
        .into())
    }
}

/// One request an upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Request headers.
    pub headers: axum::http::HeaderMap,
    /// The JSON-RPC `method` of the body (a POST), if any.
    pub rpc_method: Option<String>,
}

/// What the `User-Agent` of a control plane's own requests to an upstream starts with
/// (`mcpgw::federation::USER_AGENT`); the edge's carry their client's.
pub const CONTROL_PLANE_USER_AGENT: &str = "mcpgw-control-plane/";

impl Seen {
    /// Whether a control plane made this request itself (discovery, health), not the edge.
    pub fn from_control_plane(&self) -> bool {
        self.headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with(CONTROL_PLANE_USER_AGENT))
    }
}

/// A running rmcp server; stopped on drop.
#[derive(Debug)]
pub struct RmcpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its label (what `whoami` returns).
    pub label: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    cancel: CancellationToken,
}

/// Records each request, then hands it on unchanged.
async fn record(
    axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<Seen>>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let rpc_method = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("method")?.as_str().map(str::to_owned));
    if let Ok(mut s) = seen.lock() {
        s.push(Seen {
            method: parts.method.to_string(),
            headers: parts.headers.clone(),
            rpc_method,
        });
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

impl RmcpServer {
    /// Binds 127.0.0.1:0 and serves `/mcp` on the current tokio runtime.
    pub async fn start(label: &str, mode: RmcpServerMode) -> anyhow::Result<Self> {
        Self::serve(label, mode, None).await
    }

    /// Like [`RmcpServer::start`], with tool `hold` waiting on the returned gate.
    pub async fn start_gated(label: &str, mode: RmcpServerMode) -> anyhow::Result<(Self, Gate)> {
        let gate = Gate::default();
        Ok((Self::serve(label, mode, Some(gate.clone())).await?, gate))
    }

    async fn serve(label: &str, mode: RmcpServerMode, gate: Option<Gate>) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        let config = match mode {
            RmcpServerMode::SessionSse => StreamableHttpServerConfig::default(),
            RmcpServerMode::StatelessJson => StreamableHttpServerConfig::default()
                .with_legacy_session_mode(false)
                .with_json_response(true),
        }
        .with_sse_keep_alive(None)
        .disable_allowed_hosts()
        .with_cancellation_token(cancel.child_token());
        let owned = label.to_owned();
        let service: StreamableHttpService<Handler, LocalSessionManager> =
            StreamableHttpService::new(
                move || {
                    Ok(match &gate {
                        Some(gate) => Handler::gated(&owned, gate.clone()),
                        None => Handler::new(&owned),
                    })
                },
                Default::default(),
                config,
            );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = axum::Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn_with_state(seen.clone(), record));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("rmcp server: bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled_owned().await })
                .await;
        });
        Ok(Self {
            addr,
            label: label.to_owned(),
            seen,
            cancel,
        })
    }

    /// Every request received so far from the edge, in order: those a control plane made
    /// itself (in standalone mode: discovery, health pings; they carry its `User-Agent`,
    /// [`CONTROL_PLANE_USER_AGENT`]) are left out. In static mode that is every request.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen_all()
            .into_iter()
            .filter(|s| !s.from_control_plane())
            .collect()
    }

    /// Every request received so far, in order, a control plane's included.
    pub fn seen_all(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// `http://<addr>/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Drop for RmcpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
