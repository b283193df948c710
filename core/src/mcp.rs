//! MCP's vocabulary: protocol versions and the method table.

/// Protocol versions the gateway speaks, oldest first.
pub const PROTOCOL_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// The version a server must assume when a request carries no `MCP-Protocol-Version`
/// header (streamable HTTP transport, 2025-06-18 and later).
pub const DEFAULT_PROTOCOL_VERSION: &str = "2025-03-26";

/// Whether `version` is one the gateway accepts in `MCP-Protocol-Version`.
pub fn is_supported_version(version: &str) -> bool {
    PROTOCOL_VERSIONS.contains(&version)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The method name on the wire.
    pub name: &'static str,
    /// Whether it is a notification (no response expected).
    pub notification: bool,
    /// Which side sends it.
    pub direction: Direction,
    /// Which parameter names its target.
    pub target: Target,
}

const fn req(name: &'static str, direction: Direction, target: Target) -> MethodInfo {
    MethodInfo {
        name,
        notification: false,
        direction,
        target,
    }
}

const fn note(name: &'static str, direction: Direction) -> MethodInfo {
    MethodInfo {
        name,
        notification: true,
        direction,
        target: Target::None,
    }
}

use Direction::{Both, ClientToServer as C2S, ServerToClient as S2C};

/// Every method of MCP 2025-03-26, 2025-06-18 and 2025-11-25.
pub const METHODS: &[MethodInfo] = &[
    req("initialize", C2S, Target::None),
    req("ping", Both, Target::None),
    req("tools/list", C2S, Target::None),
    req("tools/call", C2S, Target::Name),
    req("resources/list", C2S, Target::None),
    req("resources/templates/list", C2S, Target::None),
    req("resources/read", C2S, Target::Uri),
    req("resources/subscribe", C2S, Target::Uri),
    req("resources/unsubscribe", C2S, Target::Uri),
    req("prompts/list", C2S, Target::None),
    req("prompts/get", C2S, Target::Name),
    req("completion/complete", C2S, Target::None),
    req("logging/setLevel", C2S, Target::None),
    req("tasks/get", Both, Target::None),
    req("tasks/result", Both, Target::None),
    req("tasks/list", Both, Target::None),
    req("tasks/cancel", Both, Target::None),
    req("sampling/createMessage", S2C, Target::None),
    req("elicitation/create", S2C, Target::None),
    req("roots/list", S2C, Target::None),
    note("notifications/initialized", C2S),
    note("notifications/cancelled", Both),
    note("notifications/progress", Both),
    note("notifications/message", S2C),
    note("notifications/resources/updated", S2C),
    note("notifications/resources/list_changed", S2C),
    note("notifications/tools/list_changed", S2C),
    note("notifications/prompts/list_changed", S2C),
    note("notifications/roots/list_changed", C2S),
    note("notifications/tasks/status", Both),
    note("notifications/elicitation/complete", S2C),
];

/// Looks a method up in the MCP method table.
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
    fn versions() {
        assert!(is_supported_version("2025-06-18"));
        assert!(!is_supported_version("2024-11-05x"));
        assert!(batches_allowed(DEFAULT_PROTOCOL_VERSION));
        assert!(!batches_allowed("2025-11-25"));
    }
}
