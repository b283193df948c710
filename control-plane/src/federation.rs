//! Federation: connects to upstream MCP servers with the official Rust SDK (`rmcp`),
//! discovers their tools, resources, resource templates and prompts, keeps one live
//! session per gateway for `notifications/*/list_changed`, and checks health.
//!
//! Every upstream call runs under the configured timeout, and discovery results are
//! merged into the store in one transaction, so a hanging or broken upstream can delay
//! only its own refresh and never leaves a half-updated catalog.

mod changes;
pub(crate) mod sse;
mod ssrf;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use rmcp::model::{
    ClientConfig, ClientRequest, PingRequest, ProtocolVersion, RequestMetaObject,
    SubscriptionFilterBuilder,
};
use rmcp::service::{NotificationContext, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub use changes::{Changes, Noted};
pub use ssrf::{SsrfError, check_upstream_url};

use crate::config::FederationSettings;
use crate::crypto::{CryptoError, SecretBox};
use rmcp::model::PaginatedRequestParams;

use crate::model::{
    CatalogKind, Credentials, Discovered, DiscoveredItem, Gateway, GatewayName, IntegrationType,
    ItemName, NewGateway, PromptArgument, PromptSpec, ResourceSpec, SkippedItem, SyncReport,
    ToolSpec, Transport, UpstreamUrl,
};
use crate::store::{HealthTransition, Store, StoreError};
use crate::telemetry::Metrics;

/// Errors of federation, classified for the API.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The URL is refused by the SSRF guard or cannot be resolved.
    #[error(transparent)]
    Ssrf(#[from] SsrfError),
    /// An upstream step took longer than the timeout.
    #[error("upstream {step} timed out after {timeout:?}")]
    Timeout {
        /// Which step.
        step: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// The upstream could not be reached or spoke no valid MCP.
    #[error("upstream {step} failed: {reason}")]
    Upstream {
        /// Which step.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// The upstream listed more than a discovery may bring (items, bytes or pages).
    #[error("upstream {step}: {what}; discovery stopped, the catalog is kept as it was")]
    Limit {
        /// Which step.
        step: &'static str,
        /// Which limit, with its value.
        what: String,
    },
    /// The gateway is disabled: federation leaves it (and its catalog) alone.
    #[error("gateway {0} is disabled; enable it before refreshing")]
    Disabled(String),
    /// Credentials could not be built.
    #[error("invalid credentials: {0}")]
    Credentials(String),
    /// Stored credentials cannot be decrypted.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FederationError {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ssrf(_) => "ssrf",
            Self::Timeout { .. } => "timeout",
            Self::Upstream { .. } => "upstream",
            Self::Limit { .. } => "limit",
            Self::Disabled(_) => "disabled",
            Self::Credentials(_) => "credentials",
            Self::Crypto(_) => "crypto",
            Self::Store(_) => "store",
        }
    }
}

/// Receives upstream notifications of one live session.
#[derive(Clone)]
struct UpstreamHandler {
    /// Set once the gateway row exists (a registration discovers before inserting).
    gateway_id: Arc<OnceLock<String>>,
    changes: Arc<Changes>,
    metrics: Arc<Metrics>,
}

impl UpstreamHandler {
    fn notify(&self) {
        if let Some(id) = self.gateway_id.get() {
            self.metrics.list_changed(self.changes.notify(id).label());
        }
    }
}

impl ClientHandler for UpstreamHandler {
    /// `initialize` asks for the newest version that has it: it is how discovery finds
    /// the session era's version (`server/discover` finds the stateless era's).
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default().with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        self.notify();
    }

    async fn on_resource_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        self.notify();
    }

    async fn on_prompt_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        self.notify();
    }
}

type Session = RunningService<RoleClient, UpstreamHandler>;

/// Most protocol versions kept from one upstream's `server/discover`.
const MAX_PROTOCOL_VERSIONS: usize = 16;

/// Whether `v` looks like an MCP protocol version (`YYYY-MM-DD`): what an upstream lists is
/// kept only if it does.
fn is_version(v: &str) -> bool {
    v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// Every version found, well-formed ones only, without duplicates, newest first.
fn protocol_versions<'a>(found: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = found
        .into_iter()
        .filter(|v| is_version(v))
        .map(str::to_owned)
        .collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    out.dedup();
    out.truncate(MAX_PROTOCOL_VERSIONS);
    out
}

/// Opens a stateless-era (2026-07-28) session with `server/discover`, and asks for every
/// version the upstream lists there. `None` when the upstream does not speak that era (or
/// does not answer within `timeout`): a session-era server answers the probe with an error.
async fn discover_modern(
    handler: UpstreamHandler,
    transport: StreamableHttpClientTransport<reqwest::Client>,
    timeout: Duration,
) -> Option<(Session, Vec<String>)> {
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let info = handler.get_info();
    let session =
        match tokio::time::timeout(timeout, handler.serve_with_lifecycle(transport, lifecycle))
            .await
        {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                tracing::debug!(error = %chain(&e), "upstream does not speak the stateless era");
                return None;
            }
            Err(_) => {
                tracing::debug!("upstream did not answer server/discover in time");
                return None;
            }
        };
    let chosen = session.peer_info()?.protocol_version.clone();
    // Discovery keeps only the version it chose; the list comes with the result.
    let meta =
        RequestMetaObject::with_client_context(chosen.clone(), info.client_info, info.capabilities);
    let listed = match tokio::time::timeout(timeout, session.peer().discover(meta)).await {
        Ok(Ok(r)) => r.supported_versions,
        _ => vec![chosen.clone()],
    };
    let versions = protocol_versions(
        listed
            .iter()
            .map(ProtocolVersion::as_str)
            .chain([chosen.as_str()]),
    );
    Some((session, versions))
}

/// The federation service. Share it behind an `Arc`.
pub struct Federation {
    store: Store,
    settings: FederationSettings,
    secrets: SecretBox,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, Session>>,
    refresh_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    changes: Arc<Changes>,
    /// Set when the loops start (they run once).
    started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The `User-Agent` of every request the control plane makes to an upstream (discovery,
/// health pings, list_changed refreshes), so the upstream (and its logs) can tell them from
/// the edge's, which carry their client's (a gateway's credential headers may override it).
pub const USER_AGENT: &str = concat!("mcpgw-control-plane/", env!("CARGO_PKG_VERSION"));

fn headers_for(creds: Option<&Credentials>) -> Result<HeaderMap, FederationError> {
    let mut h = HeaderMap::new();
    let bad = |e: &dyn std::fmt::Display| FederationError::Credentials(e.to_string());
    match creds {
        None => {}
        Some(Credentials::Bearer { token }) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| bad(&e))?;
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        Some(Credentials::Basic { username, password }) => {
            use base64::Engine as _;
            let raw =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            let mut v = HeaderValue::from_str(&format!("Basic {raw}")).map_err(|e| bad(&e))?;
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        Some(Credentials::Headers { headers }) => {
            for p in headers {
                let name = HeaderName::from_bytes(p.key.as_bytes()).map_err(|e| bad(&e))?;
                let mut v = HeaderValue::from_str(&p.value).map_err(|e| bad(&e))?;
                v.set_sensitive(true);
                h.insert(name, v);
            }
        }
    }
    Ok(h)
}

/// An MCP sub-object (annotations, icons, `_meta`) as stored: passed through untouched.
fn json<T: serde::Serialize>(v: &Option<T>) -> Option<Value> {
    v.as_ref()
        .and_then(|x| serde_json::to_value(x).ok())
        .filter(|v| !v.is_null())
}

/// A listed tool as stored.
fn tool_item(t: &rmcp::model::Tool) -> DiscoveredItem<ToolSpec> {
    DiscoveredItem {
        original_name: t.name.to_string(),
        uri: None,
        description: t.description.as_deref().map(str::to_owned),
        spec: ToolSpec {
            title: t.title.clone(),
            input_schema: (*t.input_schema).clone(),
            output_schema: t.output_schema.as_deref().cloned(),
            annotations: json(&t.annotations),
            icons: json(&t.icons),
            meta: json(&t.meta),
            integration_type: IntegrationType::Mcp,
            url: None,
            request_type: None,
        },
    }
}

/// A listed resource as stored.
fn resource_item(r: &rmcp::model::Resource) -> DiscoveredItem<ResourceSpec> {
    DiscoveredItem {
        original_name: r.name.clone(),
        uri: Some(r.uri.clone()),
        description: r.description.clone(),
        spec: ResourceSpec {
            is_template: false,
            title: r.title.clone(),
            mime_type: r.mime_type.clone(),
            size: r.size.and_then(|s| i64::try_from(s).ok()),
            content: None,
            annotations: json(&r.annotations),
            icons: json(&r.icons),
            meta: json(&r.meta),
        },
    }
}

/// A listed resource template as stored.
fn template_item(t: &rmcp::model::ResourceTemplate) -> DiscoveredItem<ResourceSpec> {
    DiscoveredItem {
        original_name: t.name.clone(),
        uri: Some(t.uri_template.clone()),
        description: t.description.clone(),
        spec: ResourceSpec {
            is_template: true,
            title: t.title.clone(),
            mime_type: t.mime_type.clone(),
            size: None,
            content: None,
            annotations: json(&t.annotations),
            icons: json(&t.icons),
            meta: json(&t.meta),
        },
    }
}

/// A listed prompt as stored.
fn prompt_item(p: &rmcp::model::Prompt) -> DiscoveredItem<PromptSpec> {
    DiscoveredItem {
        original_name: p.name.clone(),
        uri: None,
        description: p.description.clone(),
        spec: PromptSpec {
            title: p.title.clone(),
            template: None,
            arguments: p.arguments.as_ref().map(|args| {
                args.iter()
                    .map(|a| PromptArgument {
                        name: a.name.clone(),
                        title: a.title.clone(),
                        description: a.description.clone(),
                        required: a.required,
                    })
                    .collect()
            }),
            icons: json(&p.icons),
            meta: json(&p.meta),
        },
    }
}

/// What went wrong at an upstream, as the API caller and `last_error` see it: one of a few
/// fixed phrases. The error chain itself (OS errors, addresses, the URL with its query) goes
/// to the log only, URLs redacted: the API does not tell a refused port from an unreachable
/// host (no port scanning through `POST /gateways`), and it never echoes a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection: refused, unreachable, reset, or the TLS handshake failed.
    Connect,
    /// An HTTP error status.
    Status(u16),
    /// A JSON-RPC error answer.
    JsonRpc(i32),
    /// Anything else: not MCP as expected (content type, JSON, a stream cut short).
    Protocol,
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect => f.write_str("no connection to the upstream"),
            Self::Status(s) => write!(f, "the upstream answered HTTP {s}"),
            Self::JsonRpc(c) => write!(f, "the upstream answered JSON-RPC error {c}"),
            Self::Protocol => f.write_str("the upstream did not answer as an MCP server"),
        }
    }
}

impl UpstreamFailure {
    /// Classifies an error chain.
    pub fn of(err: &(dyn std::error::Error + 'static)) -> Self {
        use rmcp::service::ClientInitializeError;
        use rmcp::transport::streamable_http_client::StreamableHttpError;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(r) = e.downcast_ref::<reqwest::Error>() {
                return Self::of_reqwest(r);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Self::of_io(io);
            }
            if let Some(h) = e.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
                return match h {
                    StreamableHttpError::Client(r) => Self::of_reqwest(r),
                    StreamableHttpError::Io(io) => Self::of_io(io),
                    StreamableHttpError::HttpStatus(s) => Self::Status(s.status),
                    StreamableHttpError::AuthRequired(_) => Self::Status(401),
                    StreamableHttpError::InsufficientScope(_) => Self::Status(403),
                    StreamableHttpError::SessionExpired => Self::Status(404),
                    _ => Self::Protocol,
                };
            }
            match e.downcast_ref::<ClientInitializeError>() {
                Some(ClientInitializeError::JsonRpcError(d)) => return Self::JsonRpc(d.code.0),
                // Its transport error is a field, not a `source`.
                Some(ClientInitializeError::TransportError { error, .. }) => {
                    return Self::of(error.error.as_ref());
                }
                _ => {}
            }
            if let Some(ServiceError::McpError(d)) = e.downcast_ref::<ServiceError>() {
                return Self::JsonRpc(d.code.0);
            }
            cur = e.source();
        }
        Self::Protocol
    }

    fn of_reqwest(r: &reqwest::Error) -> Self {
        match r.status() {
            Some(s) => Self::Status(s.as_u16()),
            None if r.is_connect() => Self::Connect,
            None => match std::error::Error::source(r) {
                Some(inner) => Self::of(inner),
                None => Self::Protocol,
            },
        }
    }

    fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
            | K::BrokenPipe => Self::Connect,
            _ => Self::Protocol,
        }
    }
}

/// The error chain of `err` on one line, every URL in it redacted (for the log).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    crate::model::redact_urls(&out)
}

async fn timed<T, E: std::error::Error + 'static>(
    step: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, FederationError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(FederationError::Timeout { step, timeout }),
        Ok(Err(e)) => {
            let failure = UpstreamFailure::of(&e);
            tracing::info!(step, %failure, error = %chain(&e), "upstream step failed");
            Err(FederationError::Upstream {
                step,
                reason: failure.to_string(),
            })
        }
        Ok(Ok(v)) => Ok(v),
    }
}

/// Most skipped items kept in a report (and on the gateway): the first ones, then a count.
const MAX_SKIPPED_REPORTED: usize = 100;

/// What one discovery run may still bring, and what it left out.
struct Budget<'a> {
    limits: crate::config::DiscoveryLimits,
    gateway: &'a GatewayName,
    items: usize,
    bytes: usize,
    /// Items left out, with the metric label of why.
    skipped: Vec<(SkippedItem, &'static str)>,
}

impl<'a> Budget<'a> {
    fn new(limits: crate::config::DiscoveryLimits, gateway: &'a GatewayName) -> Self {
        Budget {
            limits,
            gateway,
            items: 0,
            bytes: 0,
            skipped: Vec::new(),
        }
    }

    /// Counts one listed item against the gateway's caps (an error ends the discovery);
    /// `Ok(false)` leaves it out: a name the API would refuse, or a definition too large.
    fn admit<T: serde::Serialize>(
        &mut self,
        kind: CatalogKind,
        name: &str,
        item: &T,
    ) -> Result<bool, FederationError> {
        self.items += 1;
        if self.items > self.limits.max_items {
            return Err(FederationError::Limit {
                step: "discovery",
                what: format!(
                    "more than {} items listed (--max-discovered-items)",
                    self.limits.max_items
                ),
            });
        }
        let size = serde_json::to_vec(item).map_or(usize::MAX, |v| v.len());
        if size > self.limits.max_item_bytes {
            self.skip(
                kind,
                name,
                format!(
                    "its definition is {size} bytes, more than {} (--max-discovered-item-bytes)",
                    self.limits.max_item_bytes
                ),
                "too_large",
            );
            return Ok(false);
        }
        if let Err(e) = ItemName::parse(name) {
            self.skip(kind, name, format!("name {}", e.reason), "invalid_name");
            return Ok(false);
        }
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_total_bytes {
            return Err(FederationError::Limit {
                step: "discovery",
                what: format!(
                    "more than {} bytes of definitions listed (--max-discovered-bytes)",
                    self.limits.max_total_bytes
                ),
            });
        }
        Ok(true)
    }

    fn skip(&mut self, kind: CatalogKind, name: &str, reason: String, label: &'static str) {
        tracing::info!(gateway = %self.gateway, kind = kind.label(), name = %name.escape_debug(), %reason, "discovered item left out");
        self.skipped
            .push((SkippedItem::new(kind, name, reason), label));
    }

    /// The report: the first items left out, then how many more.
    fn into_skipped(self) -> Vec<SkippedItem> {
        let total = self.skipped.len();
        let mut out: Vec<SkippedItem> = self
            .skipped
            .into_iter()
            .take(MAX_SKIPPED_REPORTED)
            .map(|(s, _)| s)
            .collect();
        if total > MAX_SKIPPED_REPORTED {
            let kind = out.last().map_or(CatalogKind::Tool, |s| s.kind);
            out.push(SkippedItem::new(
                kind,
                "…",
                format!("and {} more left out", total - MAX_SKIPPED_REPORTED),
            ));
        }
        out
    }
}

/// Lists every page of one kind (each within the upstream timeout, all of them within
/// it too), admitting each item through `admit`: a repeated cursor or more pages than the
/// item cap ends the discovery instead of looping.
async fn list_pages<T, U, Fut>(
    timeout: Duration,
    step: &'static str,
    budget: &mut Budget<'_>,
    page: impl Fn(Option<String>) -> Fut,
    mut admit: impl FnMut(&mut Budget<'_>, T) -> Result<Option<U>, FederationError>,
) -> Result<Vec<U>, FederationError>
where
    Fut: Future<Output = Result<(Vec<T>, Option<String>), ServiceError>>,
{
    let run = async {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        let mut pages = 0usize;
        loop {
            pages += 1;
            if pages > budget.limits.max_items.saturating_add(1) {
                return Err(FederationError::Limit {
                    step,
                    what: format!("more than {} pages", budget.limits.max_items),
                });
            }
            let (items, next) = match page(cursor.take()).await {
                Ok(p) => p,
                Err(e) => {
                    let failure = UpstreamFailure::of(&e);
                    tracing::info!(step, %failure, error = %chain(&e), "upstream step failed");
                    return Err(FederationError::Upstream {
                        step,
                        reason: failure.to_string(),
                    });
                }
            };
            for item in items {
                if let Some(u) = admit(budget, item)? {
                    out.push(u);
                }
            }
            match next {
                None => return Ok(out),
                Some(c) if !seen.insert(c.clone()) => {
                    return Err(FederationError::Upstream {
                        step,
                        reason: "the upstream's pagination repeats a cursor".into(),
                    });
                }
                Some(c) => cursor = Some(c),
            }
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(FederationError::Timeout { step, timeout }),
        Ok(r) => r,
    }
}

impl Federation {
    /// Builds the service; call [`Federation::spawn`] to start health checks and resyncs.
    pub fn new(
        store: Store,
        settings: FederationSettings,
        secrets: SecretBox,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        crate::tls::install_crypto_provider();
        let changes = Arc::new(Changes::new(settings.list_changed_interval));
        Arc::new(Self {
            store,
            settings,
            secrets,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            refresh_locks: Mutex::new(HashMap::new()),
            changes,
            started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &FederationSettings {
        &self.settings
    }

    /// Connects, initializes and lists everything (all pages). Returns the live session.
    async fn discover(
        &self,
        gateway_id: Arc<OnceLock<String>>,
        gateway_name: &GatewayName,
        url: &UpstreamUrl,
        transport: Transport,
        creds: Option<&Credentials>,
    ) -> Result<(Session, Discovered), FederationError> {
        let t = self.settings.timeout;
        let target = check_upstream_url(url, self.settings.ssrf, t).await?;
        // No proxy: a proxy from HTTP(S)_PROXY would resolve the host itself and bypass
        // the address pinning below, which is what makes the SSRF check binding.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(t)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .default_headers(headers_for(creds)?);
        if let Some((host, addrs)) = &target.pinned {
            // Pin the addresses the guard checked, so DNS cannot change them afterwards.
            builder = builder.resolve_to_addrs(host, addrs);
        }
        let client = builder.build().map_err(|e| FederationError::Upstream {
            step: "connect",
            reason: e.to_string(),
        })?;
        let handler = UpstreamHandler {
            gateway_id,
            changes: self.changes.clone(),
            metrics: self.metrics.clone(),
        };
        let limits = self.settings.limits;
        let (session, modern_versions) = match transport {
            Transport::StreamableHttp => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                // No single answer may be larger than a whole catalog is allowed to be.
                config.max_json_response_size = limits.max_total_bytes;
                config.max_sse_event_size = limits.max_total_bytes;
                let transport =
                    || StreamableHttpClientTransport::with_client(client.clone(), config.clone());
                // Both eras at once, each on its own connection: `initialize` finds the
                // session era's version, `server/discover` the stateless era's.
                let (legacy, modern) = tokio::join!(
                    timed("initialize", t, handler.clone().serve(transport())),
                    discover_modern(handler.clone(), transport(), t),
                );
                match (legacy, modern) {
                    // The session era's session stays the live one, as before the
                    // stateless era: its notifications arrive on its GET stream.
                    (Ok(session), Some((probe, versions))) => {
                        tokio::spawn(async move {
                            let _ = probe.cancel().await;
                        });
                        (session, versions)
                    }
                    (Ok(session), None) => (session, Vec::new()),
                    // An upstream of the stateless era only: listed with its requests.
                    (Err(_), Some((session, versions))) => (session, versions),
                    (Err(e), None) => return Err(e),
                }
            }
            Transport::Sse => {
                let halves = sse::connect(client, url.as_str(), t).await?;
                (
                    timed("initialize", t, handler.serve(halves)).await?,
                    Vec::new(),
                )
            }
        };
        let info = session.peer_info();
        let caps = info
            .as_ref()
            .map(|i| i.capabilities.clone())
            .unwrap_or_default();
        let protocol_version = info.as_ref().and_then(|i| {
            serde_json::to_value(&i.protocol_version)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
        });
        let mut d = Discovered {
            capabilities: info
                .as_ref()
                .and_then(|i| serde_json::to_value(&i.capabilities).ok()),
            server_info: info
                .as_ref()
                .and_then(|i| serde_json::to_value(&i.server_info).ok()),
            protocol_versions: protocol_versions(
                protocol_version
                    .as_deref()
                    .into_iter()
                    .chain(modern_versions.iter().map(String::as_str)),
            ),
            protocol_version,
            ..Default::default()
        };
        let peer = session.peer().clone();
        let mut budget = Budget::new(limits, gateway_name);
        if caps.tools.is_some() {
            d.tools = list_pages(
                t,
                "tools/list",
                &mut budget,
                |c| {
                    let peer = peer.clone();
                    async move {
                        let r = peer
                            .list_tools(Some(PaginatedRequestParams::default().with_cursor(c)))
                            .await?;
                        Ok((r.tools, r.next_cursor))
                    }
                },
                |b, tool: rmcp::model::Tool| {
                    b.admit(CatalogKind::Tool, &tool.name, &tool)
                        .map(|ok| ok.then(|| tool_item(&tool)))
                },
            )
            .await?;
        }
        if caps.resources.is_some() {
            d.resources = list_pages(
                t,
                "resources/list",
                &mut budget,
                |c| {
                    let peer = peer.clone();
                    async move {
                        let r = peer
                            .list_resources(Some(PaginatedRequestParams::default().with_cursor(c)))
                            .await?;
                        Ok((r.resources, r.next_cursor))
                    }
                },
                |b, r: rmcp::model::Resource| {
                    b.admit(CatalogKind::Resource, &r.name, &r)
                        .map(|ok| ok.then(|| resource_item(&r)))
                },
            )
            .await?;
            let templates = list_pages(
                t,
                "resources/templates/list",
                &mut budget,
                |c| {
                    let peer = peer.clone();
                    async move {
                        let r = peer
                            .list_resource_templates(Some(
                                PaginatedRequestParams::default().with_cursor(c),
                            ))
                            .await?;
                        Ok((r.resource_templates, r.next_cursor))
                    }
                },
                |b, r: rmcp::model::ResourceTemplate| {
                    b.admit(CatalogKind::Resource, &r.name, &r)
                        .map(|ok| ok.then(|| template_item(&r)))
                },
            )
            .await?;
            d.resources.extend(templates);
        }
        if caps.prompts.is_some() {
            d.prompts = list_pages(
                t,
                "prompts/list",
                &mut budget,
                |c| {
                    let peer = peer.clone();
                    async move {
                        let r = peer
                            .list_prompts(Some(PaginatedRequestParams::default().with_cursor(c)))
                            .await?;
                        Ok((r.prompts, r.next_cursor))
                    }
                },
                |b, p: rmcp::model::Prompt| {
                    b.admit(CatalogKind::Prompt, &p.name, &p)
                        .map(|ok| ok.then(|| prompt_item(&p)))
                },
            )
            .await?;
        }
        for s in &budget.skipped {
            self.metrics.discovery_skipped(s.1);
        }
        d.skipped = budget.into_skipped();
        Ok((session, d))
    }

    /// On 2026-07-28 connections list_changed notifications arrive only on a
    /// `subscriptions/listen` stream; earlier versions deliver them to the handler.
    fn watch_changes(&self, session: &Session, id: Arc<OnceLock<String>>) {
        let modern = session
            .peer_info()
            .is_some_and(|i| i.protocol_version == ProtocolVersion::V_2026_07_28);
        if !modern {
            return;
        }
        let peer = session.peer().clone();
        let changes = self.changes.clone();
        let metrics = self.metrics.clone();
        let t = self.settings.timeout;
        tokio::spawn(async move {
            let filter = SubscriptionFilterBuilder::default()
                .tools_list_changed()
                .resources_list_changed()
                .prompts_list_changed()
                .build();
            let mut sub = match tokio::time::timeout(t, peer.listen(filter)).await {
                Ok(Ok(sub)) => sub,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "upstream refused subscriptions/listen");
                    return;
                }
                Err(_) => return,
            };
            while let Ok(Some(_)) = sub.next().await {
                if let Some(id) = id.get() {
                    metrics.list_changed(changes.notify(id).label());
                }
            }
        });
    }

    /// Registers a gateway: with `discover`, connects and stores it together with its
    /// catalog in one transaction (nothing is stored when the upstream fails).
    pub async fn register(
        &self,
        g: NewGateway,
        creds: Option<&Credentials>,
        discover: bool,
    ) -> Result<(Gateway, Option<SyncReport>), FederationError> {
        if !discover {
            check_upstream_url(&g.url, self.settings.ssrf, self.settings.timeout).await?;
            let (gw, _) = self
                .store
                .create_gateway_with_catalog(g, None, &self.settings.separator)
                .await?;
            return Ok((gw, None));
        }
        // The id is not known before the insert; the handler learns it afterwards.
        let id_slot = Arc::new(OnceLock::new());
        let (session, found) = match self
            .discover(id_slot.clone(), &g.name, &g.url, g.transport, creds)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.metrics.federation_refresh(e.label());
                return Err(e);
            }
        };
        let (gw, report) = self
            .store
            .create_gateway_with_catalog(g, Some(&found), &self.settings.separator)
            .await?;
        self.metrics.federation_refresh("ok");
        if gw.enabled {
            let _ = id_slot.set(gw.id.clone());
            self.watch_changes(&session, id_slot);
            self.sessions.lock().await.insert(gw.id.clone(), session);
        }
        Ok((gw, report))
    }

    async fn refresh_lock(&self, id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.refresh_locks.lock().await;
        locks
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone()
    }

    /// Re-discovers a gateway and merges the result. A failure counts as a failed health
    /// check and leaves the catalog as it was. A disabled gateway is refused.
    pub async fn refresh(&self, id: &str) -> Result<(Gateway, SyncReport), FederationError> {
        let lock = self.refresh_lock(id).await;
        let _held = lock.lock().await;
        let gw = self.store.get_gateway(id).await?;
        if !gw.enabled {
            self.disconnect(id).await;
            return Err(FederationError::Disabled(gw.name.to_string()));
        }
        let creds = self.store.gateway_credentials(id, &self.secrets).await?;
        let id_slot = Arc::new(OnceLock::from(id.to_owned()));
        match self
            .discover(
                id_slot.clone(),
                &gw.name,
                &gw.url,
                gw.transport,
                creds.as_ref(),
            )
            .await
        {
            Ok((session, found)) => {
                let report = self
                    .store
                    .sync_gateway_catalog(id, &found, &self.settings.separator)
                    .await?;
                if !report.collisions.is_empty() {
                    // Also stored on the gateway (`collisions`), where the API shows them.
                    tracing::warn!(gateway = %gw.name, collisions = ?report.collisions, "name collisions: items not stored");
                }
                let now = self.store.get_gateway(id).await?;
                // Disabled or repointed while we were discovering: that session is stale.
                if now.enabled && now.url == gw.url && now.transport == gw.transport {
                    self.watch_changes(&session, id_slot);
                    self.sessions.lock().await.insert(id.to_owned(), session);
                }
                self.metrics.federation_refresh("ok");
                if !gw.reachable {
                    self.note_transition(gw.name.as_str(), HealthTransition::BecameReachable);
                }
                Ok((now, report))
            }
            Err(e) => {
                self.metrics.federation_refresh(e.label());
                self.sessions.lock().await.remove(id);
                let msg = crate::model::redact_urls(&e.to_string());
                if let Ok(t) = self
                    .store
                    .record_health(id, false, Some(&msg), self.settings.failure_threshold)
                    .await
                {
                    self.note_transition(gw.name.as_str(), t);
                }
                Err(e)
            }
        }
    }

    fn note_transition(&self, name: &str, t: HealthTransition) {
        match t {
            HealthTransition::BecameUnreachable => {
                tracing::warn!(gateway = %name, "gateway unreachable");
                self.metrics.health_transition("unreachable");
            }
            HealthTransition::BecameReachable => {
                tracing::info!(gateway = %name, "gateway reachable again");
                self.metrics.health_transition("reachable");
            }
            HealthTransition::Unchanged => {}
        }
    }

    /// Forgets the live session of a deleted gateway.
    pub async fn forget(&self, id: &str) {
        self.changes.forget(id);
        self.sessions.lock().await.remove(id);
        self.refresh_locks.lock().await.remove(id);
    }

    /// Drops the live session of a gateway (disabled, or its URL or transport changed):
    /// its notifications must no longer reach the catalog.
    pub async fn disconnect(&self, id: &str) {
        if let Some(session) = self.sessions.lock().await.remove(id) {
            // Cancel rather than drop: the session's task ends now, not when it notices.
            tokio::spawn(async move {
                let _ = session.cancel().await;
            });
        }
    }

    /// Stored gateway names that contain the name separator (accepted before it was
    /// refused, or the separator changed since): each may collide with another gateway's
    /// exposed names. Warned about at start.
    pub async fn names_with_separator(&self) -> Vec<String> {
        match self.store.all_gateways().await {
            Ok(all) => all
                .into_iter()
                .filter(|g| g.name.check_separator(&self.settings.separator).is_err())
                .map(|g| g.name.to_string())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check gateway names for the separator");
                Vec::new()
            }
        }
    }

    /// Whether a live upstream session is held for the gateway.
    pub async fn has_live_session(&self, id: &str) -> bool {
        self.sessions
            .lock()
            .await
            .get(id)
            .is_some_and(|s| !s.is_closed())
    }

    /// One health check: ping on the live session, or reconnect and resync.
    pub async fn check_health(&self, gw: &Gateway) -> Result<(), FederationError> {
        let session_peer = {
            let sessions = self.sessions.lock().await;
            sessions
                .get(&gw.id)
                .filter(|s| !s.is_closed())
                .map(|s| s.peer().clone())
        };
        let Some(peer) = session_peer else {
            // No live session: a full refresh reconnects (and records the outcome).
            return self.refresh(&gw.id).await.map(|_| ());
        };
        let ping = tokio::time::timeout(
            self.settings.timeout,
            peer.send_request(ClientRequest::PingRequest(PingRequest::default())),
        )
        .await;
        let alive = match ping {
            Ok(Ok(_)) => true,
            // The server answered, if only with an error (e.g. no `ping` in 2026-07-28).
            Ok(Err(ServiceError::McpError(_))) => true,
            _ => false,
        };
        if alive {
            let t = self
                .store
                .record_health(&gw.id, true, None, self.settings.failure_threshold)
                .await?;
            self.note_transition(gw.name.as_str(), t);
            if t == HealthTransition::BecameReachable {
                self.refresh(&gw.id).await?;
            }
            Ok(())
        } else {
            self.sessions.lock().await.remove(&gw.id);
            // The session died; try a fresh connection before counting a failure.
            self.refresh(&gw.id).await.map(|_| ())
        }
    }

    /// Checks every enabled gateway once, concurrently.
    pub async fn check_all(self: &Arc<Self>) {
        let gateways = match self.store.all_gateways().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "health check: cannot list gateways");
                return;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for gw in gateways.into_iter().filter(|g| g.enabled) {
            let me = self.clone();
            tasks.spawn(async move {
                if let Err(e) = me.check_health(&gw).await {
                    tracing::debug!(gateway = %gw.name, error = %e, "health check failed");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Refreshes every enabled gateway once, concurrently.
    pub async fn resync_all(self: &Arc<Self>) {
        let gateways = match self.store.all_gateways().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "resync: cannot list gateways");
                return;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for gw in gateways.into_iter().filter(|g| g.enabled) {
            let me = self.clone();
            tasks.spawn(async move {
                if let Err(e) = me.refresh(&gw.id).await {
                    tracing::debug!(gateway = %gw.name, error = %e, "resync failed");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Starts the background loops: health checks, periodic resync and list_changed
    /// handling, each its own task so that a slow health pass never delays a
    /// list_changed refresh. A pass runs to completion before the next of its kind starts
    /// (ticks missed meanwhile are delayed, not stacked). Abort the handle to stop them:
    /// the tasks live in a `JoinSet` owned by the handle's task and die with it.
    pub async fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        for name in self.names_with_separator().await {
            tracing::warn!(
                gateway = %name,
                separator = %self.settings.separator,
                "gateway name contains the name separator: what it serves may collide with \
                 another gateway's names; rename it (PUT /gateways/{{id}})"
            );
        }
        let first = !self.started.swap(true, std::sync::atomic::Ordering::SeqCst);
        let me = self.clone();
        tokio::spawn(async move {
            if !first {
                tracing::error!("federation loops already started");
                return;
            }
            let mut loops = tokio::task::JoinSet::new();
            loops.spawn(me.clone().health_loop());
            if let Some(every) = me.settings.resync_interval {
                loops.spawn(me.clone().resync_loop(every));
            }
            let refresher = me.clone();
            loops.spawn(me.changes.clone().run(move |id: String| {
                let me = refresher.clone();
                async move {
                    if let Err(e) = me.refresh(&id).await {
                        tracing::debug!(gateway = %id, error = %e, "list_changed refresh failed");
                    }
                }
            }));
            while let Some(done) = loops.join_next().await {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a federation loop panicked");
                }
            }
        })
    }

    async fn health_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check_all().await;
        }
    }

    async fn resync_loop(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.resync_all().await;
        }
    }

    /// Whether a list_changed rediscovery of the gateway is pending or running.
    pub fn change_pending(&self, id: &str) -> bool {
        self.changes.pending(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn protocol_versions_are_well_formed_unique_and_newest_first() {
        assert_eq!(
            protocol_versions([
                "2025-11-25",
                "2026-07-28",
                "2025-11-25",
                "draft",
                "2026-7-28",
                "2026-07-28\n",
                "",
            ]),
            ["2026-07-28", "2025-11-25"]
        );
        let many: Vec<String> = (1..=40).map(|d| format!("2025-01-{d:02}")).collect();
        let kept = protocol_versions(many.iter().map(String::as_str));
        assert_eq!(kept.len(), MAX_PROTOCOL_VERSIONS);
        assert_eq!(kept[0], "2025-01-40");
        assert!(protocol_versions([]).is_empty());
    }

    /// An error whose cause is `source`, as transports wrap socket errors.
    #[derive(Debug, thiserror::Error)]
    #[error("transport failed for url http://h/mcp?token=s3cret")]
    struct Wrapped(#[source] std::io::Error);

    #[tokio::test]
    async fn connection_failures_read_alike() {
        crate::tls::install_crypto_provider();
        // A real refused connection, as reqwest reports it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let refused = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/mcp"))
            .send()
            .await
            .unwrap_err();
        use std::io::ErrorKind as K;
        let io = |k: K| Wrapped(std::io::Error::from(k));
        let cases: Vec<(&str, Box<dyn std::error::Error + 'static>, UpstreamFailure)> = vec![
            (
                "refused (reqwest)",
                Box::new(refused),
                UpstreamFailure::Connect,
            ),
            (
                "refused",
                Box::new(io(K::ConnectionRefused)),
                UpstreamFailure::Connect,
            ),
            (
                "host unreachable",
                Box::new(io(K::HostUnreachable)),
                UpstreamFailure::Connect,
            ),
            (
                "network unreachable",
                Box::new(io(K::NetworkUnreachable)),
                UpstreamFailure::Connect,
            ),
            (
                "reset",
                Box::new(io(K::ConnectionReset)),
                UpstreamFailure::Connect,
            ),
            (
                "bad data",
                Box::new(io(K::InvalidData)),
                UpstreamFailure::Protocol,
            ),
            (
                "json-rpc error",
                Box::new(ServiceError::McpError(
                    rmcp::model::ErrorData::method_not_found::<rmcp::model::ListToolsRequestMethod>(
                    ),
                )),
                UpstreamFailure::JsonRpc(-32601),
            ),
        ];
        for (name, e, want) in &cases {
            assert_eq!(UpstreamFailure::of(e.as_ref()), *want, "{name}");
        }
        // What the API shows for each connection failure is one and the same text.
        let texts: std::collections::HashSet<String> = cases
            .iter()
            .filter(|(_, _, w)| *w == UpstreamFailure::Connect)
            .map(|(_, e, _)| UpstreamFailure::of(e.as_ref()).to_string())
            .collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        // The log line keeps the detail, with the URL's secrets redacted.
        let logged = chain(&io(K::ConnectionRefused));
        assert!(
            logged.contains("token=***") && !logged.contains("s3cret"),
            "{logged}"
        );
    }
}
