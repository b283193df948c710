//! MCP's vocabulary: protocol versions and the method table.

/// Protocol versions of the session era, negotiated with `initialize`, oldest first.
pub const PROTOCOL_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// Protocol versions of the stateless era: no `initialize`, no sessions; every request
/// carries its version in `params._meta` and in `MCP-Protocol-Version`.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

/// Every version the gateway serves, newest first (what `server/discover` and a -32022
/// answer list).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];

/// `_meta` key of a 2026-era request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key of a 2026-era request's client capabilities.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key of a 2026-era request's client info.
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta` key of a 2026-era result's server info.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// `_meta` key of a 2026-era request's log level: the server may send
/// `notifications/message` at or above it on that request's stream, and none without it.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";

/// MCP's log levels (RFC 5424 severities), least severe first.
pub const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// The severity rank of log level `level` (0 = `debug`), `None` for an unknown level.
pub fn log_level_rank(level: &str) -> Option<u8> {
    LOG_LEVELS
        .iter()
        .position(|l| *l == level)
        .and_then(|i| u8::try_from(i).ok())
}

/// Which era of the protocol a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2025-03-26 to 2025-11-25: `initialize`, sessions, server-to-client requests.
    Legacy,
    /// 2026-07-28: stateless; every request carries its version and the client's
    /// declarations in `_meta`, and mirrors its method and target in headers.
    Modern,
}

/// Whether `version` belongs to the stateless era.
pub fn is_modern(version: &str) -> bool {
    MODERN_VERSIONS.contains(&version)
}

/// The version a server must assume when a request carries no `MCP-Protocol-Version`
/// header (streamable HTTP transport, 2025-06-18 and later).
pub const DEFAULT_PROTOCOL_VERSION: &str = "2025-03-26";

/// Whether `version` is one the gateway accepts in `MCP-Protocol-Version`.
pub fn is_supported_version(version: &str) -> bool {
    PROTOCOL_VERSIONS.contains(&version) || is_modern(version)
}

/// Whether JSON-RPC batches are allowed under `version` (they were removed in 2025-06-18).
pub fn batches_allowed(version: &str) -> bool {
    version == "2025-03-26"
}

/// Which request parameter, if any, names the thing a method acts on (and routes by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The method acts on the whole server.
    None,
    /// `params.name` (tools/call, prompts/get).
    Name,
    /// `params.uri` (resources/read, resources/subscribe, resources/unsubscribe).
    Uri,
}

/// Which side sends a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the client to the server.
    ClientToServer,
    /// Sent by the server to the client (inside SSE streams).
    ServerToClient,
    /// Sent by either side.
    Both,
}

/// One entry of the MCP method table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// The method.
    pub method: Method,
    /// The method name on the wire.
    pub name: &'static str,
    /// Whether it is a notification (no response expected).
    pub notification: bool,
    /// Which side sends it.
    pub direction: Direction,
    /// Which parameter names its target.
    pub target: Target,
}

const fn req(
    method: Method,
    name: &'static str,
    direction: Direction,
    target: Target,
) -> MethodInfo {
    MethodInfo {
        method,
        name,
        notification: false,
        direction,
        target,
    }
}

const fn note(method: Method, name: &'static str, direction: Direction) -> MethodInfo {
    MethodInfo {
        method,
        name,
        notification: true,
        direction,
        target: Target::None,
    }
}

use Direction::{Both, ClientToServer as C2S, ServerToClient as S2C};

/// A JSON-RPC method, as the parser reads it: MCP's methods by name, anything else kept as
/// text. Decisions match on this instead of comparing strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each variant is the method of the same name on the wire
pub enum Method {
    Initialize,
    Ping,
    ToolsList,
    ToolsCall,
    ResourcesList,
    ResourcesTemplatesList,
    ResourcesRead,
    ResourcesSubscribe,
    ResourcesUnsubscribe,
    PromptsList,
    PromptsGet,
    CompletionComplete,
    LoggingSetLevel,
    TasksGet,
    TasksResult,
    TasksList,
    TasksCancel,
    SamplingCreateMessage,
    ElicitationCreate,
    RootsList,
    NotificationsInitialized,
    NotificationsCancelled,
    NotificationsProgress,
    NotificationsMessage,
    NotificationsResourcesUpdated,
    NotificationsResourcesListChanged,
    NotificationsToolsListChanged,
    NotificationsPromptsListChanged,
    NotificationsRootsListChanged,
    NotificationsTasksStatus,
    NotificationsElicitationComplete,
    ServerDiscover,
    SubscriptionsListen,
    NotificationsSubscriptionsAcknowledged,
    /// A method MCP does not define.
    Other(Box<str>),
}

/// Every method of MCP 2025-03-26, 2025-06-18, 2025-11-25 and 2026-07-28.
pub const METHODS: &[MethodInfo] = &[
    req(Method::Initialize, "initialize", C2S, Target::None),
    req(Method::Ping, "ping", Both, Target::None),
    req(Method::ToolsList, "tools/list", C2S, Target::None),
    req(Method::ToolsCall, "tools/call", C2S, Target::Name),
    req(Method::ResourcesList, "resources/list", C2S, Target::None),
    req(
        Method::ResourcesTemplatesList,
        "resources/templates/list",
        C2S,
        Target::None,
    ),
    req(Method::ResourcesRead, "resources/read", C2S, Target::Uri),
    req(
        Method::ResourcesSubscribe,
        "resources/subscribe",
        C2S,
        Target::Uri,
    ),
    req(
        Method::ResourcesUnsubscribe,
        "resources/unsubscribe",
        C2S,
        Target::Uri,
    ),
    req(Method::PromptsList, "prompts/list", C2S, Target::None),
    req(Method::PromptsGet, "prompts/get", C2S, Target::Name),
    req(
        Method::CompletionComplete,
        "completion/complete",
        C2S,
        Target::None,
    ),
    req(
        Method::LoggingSetLevel,
        "logging/setLevel",
        C2S,
        Target::None,
    ),
    req(Method::TasksGet, "tasks/get", Both, Target::None),
    req(Method::TasksResult, "tasks/result", Both, Target::None),
    req(Method::TasksList, "tasks/list", Both, Target::None),
    req(Method::TasksCancel, "tasks/cancel", Both, Target::None),
    req(
        Method::SamplingCreateMessage,
        "sampling/createMessage",
        S2C,
        Target::None,
    ),
    req(
        Method::ElicitationCreate,
        "elicitation/create",
        S2C,
        Target::None,
    ),
    req(Method::RootsList, "roots/list", S2C, Target::None),
    note(
        Method::NotificationsInitialized,
        "notifications/initialized",
        C2S,
    ),
    note(
        Method::NotificationsCancelled,
        "notifications/cancelled",
        Both,
    ),
    note(
        Method::NotificationsProgress,
        "notifications/progress",
        Both,
    ),
    note(Method::NotificationsMessage, "notifications/message", S2C),
    note(
        Method::NotificationsResourcesUpdated,
        "notifications/resources/updated",
        S2C,
    ),
    note(
        Method::NotificationsResourcesListChanged,
        "notifications/resources/list_changed",
        S2C,
    ),
    note(
        Method::NotificationsToolsListChanged,
        "notifications/tools/list_changed",
        S2C,
    ),
    note(
        Method::NotificationsPromptsListChanged,
        "notifications/prompts/list_changed",
        S2C,
    ),
    note(
        Method::NotificationsRootsListChanged,
        "notifications/roots/list_changed",
        C2S,
    ),
    note(
        Method::NotificationsTasksStatus,
        "notifications/tasks/status",
        Both,
    ),
    note(
        Method::NotificationsElicitationComplete,
        "notifications/elicitation/complete",
        S2C,
    ),
    req(Method::ServerDiscover, "server/discover", C2S, Target::None),
    req(
        Method::SubscriptionsListen,
        "subscriptions/listen",
        C2S,
        Target::None,
    ),
    note(
        Method::NotificationsSubscriptionsAcknowledged,
        "notifications/subscriptions/acknowledged",
        S2C,
    ),
];

impl Method {
    /// Whether a 2026-era request of this method must carry `Mcp-Name` (the tool or
    /// prompt name, or the resource URI).
    pub fn names_its_target(&self) -> bool {
        matches!(
            self,
            Method::ToolsCall | Method::PromptsGet | Method::ResourcesRead
        )
    }

    /// Whether the stateless era dropped this method (a 2026-era request of it gets -32601).
    pub fn gone_in_modern_era(&self) -> bool {
        matches!(
            self,
            Method::Initialize
                | Method::Ping
                | Method::LoggingSetLevel
                | Method::ResourcesSubscribe
                | Method::ResourcesUnsubscribe
                | Method::TasksGet
                | Method::TasksResult
                | Method::TasksList
                | Method::TasksCancel
        )
    }

    /// The method named `name` on the wire.
    pub fn parse(name: &str) -> Method {
        match METHODS.iter().find(|m| m.name == name) {
            Some(m) => m.method.clone(),
            None => Method::Other(name.into()),
        }
    }

    /// Its entry in MCP's method table (`None` for [`Method::Other`]).
    pub fn info(&self) -> Option<&'static MethodInfo> {
        match self {
            Method::Other(_) => None,
            known => METHODS.iter().find(|m| m.method == *known),
        }
    }

    /// The name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(name) => name,
            known => known.info().map_or("", |m| m.name),
        }
    }

    /// Which parameter names the method's target (and routes it).
    pub fn target(&self) -> Target {
        self.info().map_or(Target::None, |m| m.target)
    }

    /// Whether MCP defines the method.
    pub fn is_known(&self) -> bool {
        !matches!(self, Method::Other(_))
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Looks a method up in the MCP method table by its wire name.
pub fn method_info(name: &str) -> Option<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name)
}

/// The target parameter of `name`; unknown methods have none.
pub fn target_of(name: &str) -> Target {
    method_info(name).map_or(Target::None, |m| m.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_table_has_unique_names() {
        for (i, a) in METHODS.iter().enumerate() {
            for b in &METHODS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn targets() {
        assert_eq!(target_of("tools/call"), Target::Name);
        assert_eq!(target_of("prompts/get"), Target::Name);
        assert_eq!(target_of("resources/read"), Target::Uri);
        assert_eq!(target_of("resources/unsubscribe"), Target::Uri);
        assert_eq!(target_of("tools/list"), Target::None);
        assert_eq!(target_of("no/such"), Target::None);
        assert!(method_info("notifications/initialized").is_some_and(|m| m.notification));
    }

    #[test]
    fn methods_parse_and_print_as_on_the_wire() {
        for m in METHODS {
            assert_eq!(Method::parse(m.name), m.method);
            assert_eq!(m.method.as_str(), m.name);
            assert_eq!(m.method.info(), Some(m));
        }
        assert_eq!(Method::parse("x/y"), Method::Other("x/y".into()));
        assert_eq!(Method::parse("x/y").as_str(), "x/y");
        assert_eq!(Method::parse("x/y").target(), Target::None);
        assert_eq!(Method::ToolsCall.target(), Target::Name);
        assert!(
            !Method::parse("Tools/Call").is_known(),
            "names are case-sensitive"
        );
    }

    #[test]
    fn versions() {
        assert!(is_supported_version("2025-06-18"));
        assert!(!is_supported_version("2024-11-05x"));
        assert!(batches_allowed(DEFAULT_PROTOCOL_VERSION));
        assert!(!batches_allowed("2025-11-25"));
    }
}
