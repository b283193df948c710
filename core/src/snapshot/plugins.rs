//! The guardrail plugins of a [`Snapshot`](super::Snapshot), as configured (the wire form).
//! They are checked and compiled once, at configure time, by
//! [`Guard::try_from`](crate::guard::Guard), which names the field of any mistake.
//!
//! A plugin is one object with the settings every plugin has (name, priority, mode, hooks,
//! conditions) and exactly one of the kind fields (`pii`, `secrets`, `deny_list`, `regex`,
//! `resource_filter`, `output_size`, `schema`, `external`) holding that kind's settings:
//!
//! ```json
//! {"name": "mask-pii", "priority": 10, "mode": "enforce",
//!  "conditions": {"servers": ["support"]},
//!  "pii": {"action": "mask", "detectors": ["email", "phone"]}}
//! ```

use crate::guard::detect::{Detector, Masking};
use serde::{Deserialize, Serialize};

/// One guardrail plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Unique name: errors a block answers with and metrics name the plugin by it (letters,
    /// digits, `-`, `_`, `.`; at most 64).
    pub name: String,
    /// Plugins run in ascending priority (ties in the order listed); a mask of one is what
    /// the next one sees, and the first block ends the run.
    #[serde(default)]
    pub priority: i32,
    /// What the plugin's findings do.
    #[serde(default)]
    pub mode: Mode,
    /// Where it runs; empty means its kind's default hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    /// Which requests it applies to; empty lists match everything.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// Personal data: mask or block what the detectors find.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<Detect>,
    /// Credentials: mask or block what the detectors find (by default on results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Detect>,
    /// Words and tool names that block a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_list: Option<DenyList>,
    /// Regular expressions that rewrite or block text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexRules>,
    /// Which resource URIs may be read, and how large their content may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_filter: Option<ResourceFilter>,
    /// How large a result may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_size: Option<OutputSize>,
    /// Tool arguments against the tool's `inputSchema`, `structuredContent` against its
    /// `outputSchema` (virtual servers' tools: the schemas come from their catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Schema>,
    /// A guardrail service outside the gateway, asked over gRPC (`proto/mcpgw/guard/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
}

/// What a plugin's findings do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Blocks block and masks mask.
    #[default]
    Enforce,
    /// Findings are only logged and counted (as `would_block` / `would_mask`); the request
    /// and its response pass unchanged.
    Permissive,
    /// The plugin does not run.
    Disabled,
}

/// A point of a call where plugins run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// `tools/call` arguments, before the upstream sees them.
    ToolPreInvoke,
    /// A `tools/call` result, before the client sees it.
    ToolPostInvoke,
    /// `prompts/get` arguments.
    PromptPreFetch,
    /// A `prompts/get` result.
    PromptPostFetch,
    /// A `resources/read` URI (text can only block here: a URI is not rewritten).
    ResourcePreFetch,
    /// A `resources/read` result.
    ResourcePostFetch,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 6] = [
        Hook::ToolPreInvoke,
        Hook::ToolPostInvoke,
        Hook::PromptPreFetch,
        Hook::PromptPostFetch,
        Hook::ResourcePreFetch,
        Hook::ResourcePostFetch,
    ];

    /// Its name in configurations and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::ToolPreInvoke => "tool_pre_invoke",
            Hook::ToolPostInvoke => "tool_post_invoke",
            Hook::PromptPreFetch => "prompt_pre_fetch",
            Hook::PromptPostFetch => "prompt_post_fetch",
            Hook::ResourcePreFetch => "resource_pre_fetch",
            Hook::ResourcePostFetch => "resource_post_fetch",
        }
    }

    /// Whether it runs on the request (else on the response).
    pub fn is_pre(self) -> bool {
        matches!(
            self,
            Hook::ToolPreInvoke | Hook::PromptPreFetch | Hook::ResourcePreFetch
        )
    }
}

/// Which requests a plugin applies to. Each list that is not empty must match; an empty one
/// matches everything. Names match exactly, or by prefix when the pattern ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conditions {
    /// Virtual server ids; requests outside virtual servers never match a non-empty list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Tool names as clients call them (tool hooks only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Prompt names as clients get them (prompt hooks only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Resource URIs (resource hooks only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Teams of the caller: a request whose principal is in none of them (or that has no
    /// principal) does not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    /// Principals (subjects) of the caller: a request without one does not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
}

impl Conditions {
    /// Whether every list is empty (the plugin applies everywhere).
    pub fn is_empty(&self) -> bool {
        self == &Conditions::default()
    }
}

/// What a detecting plugin does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Replace it (see [`Masking`]).
    #[default]
    Mask,
    /// Refuse the request, or replace the result with an error.
    Block,
}

/// Settings of `pii` and `secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detect {
    /// Mask or block.
    pub action: Action,
    /// Which detectors run; empty means the kind's defaults (`pii`: email, phone, ssn,
    /// credit_card, iban, ip_address; `secrets`: aws_access_key, api_key, private_key, jwt).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<Detector>,
    /// How a mask looks.
    pub masking: Masking,
}

/// Settings of `deny_list`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenyList {
    /// Words or phrases that block a text containing them: case-insensitive, whole words
    /// (`drop table` matches `DROP TABLE users`, `class` does not match `classic`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    /// Tool names (as clients call them) whose calls are blocked (`tool_pre_invoke`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

/// Settings of `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegexRules {
    /// Applied in order to every string.
    pub rules: Vec<RegexRule>,
}

/// One rule of `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRule {
    /// The expression (Rust `regex` syntax, as `regex-lite` implements it: no Unicode
    /// classes such as `\p{L}`; matching takes linear time).
    pub pattern: String,
    /// What a match becomes (`$1`, `${name}` insert groups); absent: a match blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

/// Settings of `resource_filter`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceFilter {
    /// URI schemes that may be read (lowercase, no `:`); empty: any not denied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_schemes: Vec<String>,
    /// URI schemes that may not be read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_schemes: Vec<String>,
    /// Hosts that may be read (`example.com`, or `*.example.com` for its subdomains);
    /// empty: any not denied. A URI without a host does not match a non-empty list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Hosts that may not be read (same patterns).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_hosts: Vec<String>,
    /// Largest content a read may return: the bytes of its `text` contents plus the decoded
    /// bytes of its `blob` contents (`resource_post_fetch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_content_bytes: Option<u64>,
}

/// Settings of `output_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSize {
    /// Largest result, in bytes of its JSON text.
    pub max_bytes: u64,
    /// What happens to a larger one.
    #[serde(default)]
    pub action: SizeAction,
}

/// What `output_size` does with a result that is too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeAction {
    /// Replace it with an error.
    #[default]
    Block,
    /// Shorten its `text` contents (the last first, each ending in `[truncated]`) until it
    /// fits; a result that still does not fit (large structured content) is blocked.
    Truncate,
}

/// Settings of `schema` (none yet: `{}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {}

/// Settings of `external`: a service implementing `mcpgw.guard.v1.Guardrail`
/// (`proto/mcpgw/guard/v1/guard.proto`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    /// The service's address, `host:port` (a DNS name or an IP address), reached in
    /// plaintext HTTP/2: the control plane generates an Envoy cluster for it, named by
    /// [`External::cluster_for`]. Set this or `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// An Envoy cluster (HTTP/2) of the service that the Envoy configuration already has
    /// (a static bootstrap, an Istio `ServiceEntry`). Set this or `target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// How long a call waits for the verdict (1 to 10000 ms).
    #[serde(default = "default_external_timeout_ms")]
    pub timeout_ms: u32,
    /// What a call gets when the service fails (no answer in time, unreachable, an
    /// answer that breaks the contract).
    #[serde(default)]
    pub failure_mode: GuardFailureMode,
}

/// Default of [`External::timeout_ms`].
pub const DEFAULT_EXTERNAL_TIMEOUT_MS: u32 = 200;
/// Largest [`External::timeout_ms`].
pub const MAX_EXTERNAL_TIMEOUT_MS: u32 = 10_000;

fn default_external_timeout_ms() -> u32 {
    DEFAULT_EXTERNAL_TIMEOUT_MS
}

impl External {
    /// The Envoy cluster the filter calls: `cluster`, or the one generated for `target`.
    pub fn envoy_cluster(&self) -> Option<String> {
        match (&self.cluster, &self.target) {
            (Some(cluster), _) => Some(cluster.clone()),
            (None, Some(target)) => Some(External::cluster_for(target)),
            (None, None) => None,
        }
    }

    /// The Envoy cluster the control plane generates for service `target` (`host:port`):
    /// `mcpgw-guard-` and the target with every character outside `[A-Za-z0-9.-]`
    /// replaced by `_`.
    pub fn cluster_for(target: &str) -> String {
        let mut out = String::with_capacity(12 + target.len());
        out.push_str("mcpgw-guard-");
        out.extend(target.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        }));
        out
    }
}

/// What a call gets when an external guardrail fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardFailureMode {
    /// Refused with an error naming the plugin (the safe default for a guardrail).
    #[default]
    Closed,
    /// Let through as if the service had passed it.
    Open,
}
