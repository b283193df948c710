//! The custom resources of `mcpgw.io/v1alpha1`, as Rust types: the CRD YAML under `crds/` is
//! generated from them (`mcpgw crds`), never written by hand.
//!
//! Field docs become the schema's descriptions (what `kubectl explain` shows). CEL rules
//! (`x-kubernetes-validations`) catch at admission what would otherwise only surface as a
//! failed reconcile: a backend with both or neither of `url` and `serviceRef`, a URL that is
//! not http(s), a header credential without a header name. The reconciler checks the same
//! things again ([`MCPBackendSpec::endpoint`]), since an API server may run with validation
//! rules off or an object may predate them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every mcpgw resource.
pub const GROUP: &str = "mcpgw.io";
/// The one version served so far.
pub const VERSION: &str = "v1alpha1";

// ---- MCPBackend ----------------------------------------------------------------------

/// An upstream MCP server or a peer gateway: where it is, how to speak to it, and with
/// which credential. Reconciled into one registry gateway named after the resource.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "mcpgw.io",
    version = "v1alpha1",
    kind = "MCPBackend",
    plural = "mcpbackends",
    singular = "mcpbackend",
    shortname = "mcpb",
    category = "mcpgw",
    namespaced,
    status = "BackendStatus",
    doc = "An upstream MCP server or peer gateway that mcpgw federates.",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Tools","type":"integer","jsonPath":".status.discoveredTools"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","priority":1,"jsonPath":".status.pendingToolChanges"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.url) != has(self.serviceRef)").message("set exactly one of url and serviceRef"))]
#[serde(rename_all = "camelCase")]
pub struct MCPBackendSpec {
    /// Absolute URL of the upstream's MCP endpoint (`http://` or `https://`), for upstreams
    /// outside the cluster. Exactly one of `url` and `serviceRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must start with http:// or https://"))]
    pub url: Option<String>,
    /// An in-cluster Service serving the upstream. Exactly one of `url` and `serviceRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ref: Option<ServiceRef>,
    /// The MCP transport the upstream speaks.
    #[serde(default)]
    pub transport: BackendTransport,
    /// The credential mcpgw presents to the upstream, read from a Secret in the backend's
    /// namespace; a change of the Secret reaches the edge without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsRef>,
    /// How the caller's identity is carried to the upstream.
    #[serde(default)]
    pub upstream_identity: UpstreamIdentity,
    /// Whether the backend (and everything discovered from it) is served.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Free text shown in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Registry tags of the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The registry name of the gateway (the prefix of its tools' names); default: the
    /// resource's name. Two backends with one name conflict: the younger is not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')").message("letters, digits, '_', '.', '-'; at most 64"))]
    pub registry_name: Option<String>,
}

impl MCPBackendSpec {
    /// The Secrets (in the backend's namespace) the backend reads.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let credentials = self
            .credentials
            .as_ref()
            .map(|c| c.secret_ref.name.as_str());
        let exchange = self
            .upstream_identity
            .token_exchange
            .as_ref()
            .map(|t| t.client_secret_ref.name.as_str());
        credentials.into_iter().chain(exchange)
    }
}

fn yes() -> bool {
    true
}

/// A Service serving an MCP endpoint.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// The Service's name.
    pub name: String,
    /// Its namespace; default: the backend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port (its `port`, not the target port).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Path of the MCP endpoint; default `/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Speak TLS to the Service (`https`); default plain HTTP, as inside an Istio mesh
    /// whose sidecars add mTLS.
    #[serde(default)]
    pub tls: bool,
}

/// MCP transports.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum BackendTransport {
    /// Streamable HTTP (MCP 2025-03-26 and later).
    #[default]
    #[serde(rename = "streamable_http")]
    StreamableHttp,
    /// The legacy HTTP+SSE transport (2024-11-05).
    #[serde(rename = "sse")]
    Sse,
}

/// A credential read from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'header' || has(self.header)").message("a header credential names its header"))]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// The Secret and its key holding the value.
    pub secret_ref: SecretKeyRef,
    /// How the value is sent: `bearer` (`Authorization: Bearer <value>`), `basic` (the value
    /// is `user:password`) or `header` (the value as the header `header`).
    #[serde(default, rename = "type")]
    pub kind: CredentialKind,
    /// The header's name, for `type: header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub header: Option<String>,
}

/// A key of a Secret in the referring resource's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key within its `data`.
    pub key: String,
}

/// How a credential is presented.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// `Authorization: Bearer <value>`.
    #[default]
    Bearer,
    /// `Authorization: Basic`, the value being `user:password`.
    Basic,
    /// A header of its own.
    Header,
}

/// How the caller's identity reaches the upstream.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[x_kube(validation = Rule::new("(self.mode == 'token-exchange') == has(self.tokenExchange)").message("tokenExchange is set with mode token-exchange, and only then"))]
#[serde(rename_all = "camelCase")]
pub struct UpstreamIdentity {
    /// `none`: the upstream sees mcpgw only; `static`: the backend's credential; `identity-header`:
    /// a signed header naming the caller; `token-exchange`: an RFC 8693 token per caller.
    #[serde(default)]
    pub mode: IdentityMode,
    /// With mode `token-exchange` (and only then): where and how the caller's token is
    /// exchanged for one scoped to this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchange>,
}

/// An RFC 8693 token exchange at an authorization server. The Envoys authenticate to its
/// token endpoint with `clientId` and the Secret's value (HTTP Basic); the secret never
/// reaches the filter's configuration.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("has(self.audience) || has(self.resource)").message("an exchange names its target: audience, resource or both"))]
#[serde(rename_all = "camelCase")]
pub struct TokenExchange {
    /// The authorization server's token endpoint (`http://` or `https://`).
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("tokenEndpoint must start with http:// or https://"))]
    pub token_endpoint: String,
    /// mcpgw's OAuth client id at that server.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains(':')").message("clientId travels in HTTP Basic: no ':'"))]
    pub client_id: String,
    /// The Secret (in the backend's namespace) and key holding the client secret; a change
    /// of the Secret reaches the edge without a restart.
    pub client_secret_ref: SecretKeyRef,
    /// `audience` to ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// `resource` to ask for (RFC 8707), e.g. the upstream's MCP URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub resource: Option<String>,
    /// `scope` to ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub scope: Option<String>,
}

/// Upstream identity modes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    /// No identity beyond the backend's credential, if any.
    #[default]
    None,
    /// The backend's credential.
    Static,
    /// A signed identity header.
    IdentityHeader,
    /// RFC 8693 token exchange.
    TokenExchange,
}

/// What the controller observed of a backend.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// `Accepted` (the spec is valid and the name is ours), `Ready` (in the registry, its
    /// Service and Secret found, discovered), `Degraded` (served, but the last discovery
    /// or health check failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The registry id of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// The URL the gateway is reached at (the resolved Service URL for `serviceRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Tools discovered from the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered_tools: Option<i64>,
    /// Tool-definition changes announced by the upstream and not yet merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_tool_changes: Option<i64>,
}

// ---- MCPVirtualServer ----------------------------------------------------------------

/// A virtual server: one MCP endpoint composed of tools, resources and prompts of backends.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "mcpgw.io",
    version = "v1alpha1",
    kind = "MCPVirtualServer",
    plural = "mcpvirtualservers",
    singular = "mcpvirtualserver",
    shortname = "mcpvs",
    category = "mcpgw",
    namespaced,
    status = "VirtualServerStatus",
    doc = "A virtual MCP server composed of backends' tools, resources and prompts.",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".status.serverId"}"#,
    printcolumn = r#"{"name":"Tools","type":"integer","jsonPath":".status.tools"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MCPVirtualServerSpec {
    /// Backends (in this namespace) by name, each with what to take from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendSelection>,
    /// Backends (in this namespace) by label: everything each serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_selector: Option<LabelSelector>,
    /// `prefixed`: tools and prompts as `{backend}{separator}{name}`, so any set composes;
    /// `upstream`: the upstreams' own names (two members may not expose one name).
    #[serde(default)]
    pub naming: NamingMode,
    /// Browser `Origin`s admitted besides the listener's: `scheme://host[:port]`, `:*` for
    /// any port, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_origins: Vec<String>,
    /// Whether the server is served.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Free text shown in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Registry tags of the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The registry name of the server (its endpoint is `/servers/{id}/mcp`); default: the
    /// resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_name: Option<String>,
}

/// What a virtual server takes from one backend. A list left out takes everything of that
/// kind; an empty list takes nothing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendSelection {
    /// The MCPBackend's name (same namespace).
    pub name: String,
    /// Tools by the upstream's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Resources by URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    /// Prompts by the upstream's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Vec<String>>,
}

/// Naming modes of a virtual server.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NamingMode {
    /// `{backend}{separator}{name}`.
    #[default]
    Prefixed,
    /// The upstream's own names.
    Upstream,
}

/// What the controller observed of a virtual server.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServerStatus {
    /// `Accepted`, `Ready` (every referenced backend is in the registry), `Degraded` (some
    /// backend is missing or not ready; the rest is served).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The registry id of the server (its endpoint: `/servers/{id}/mcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Tools the server serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<i64>,
    /// Resources the server serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<i64>,
    /// Prompts the server serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<i64>,
    /// Tool-definition changes pending on its backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_tool_changes: Option<i64>,
}

// ---- MCPPolicy -----------------------------------------------------------------------

/// Authentication, authorization, rate limits and guardrails for virtual servers, attached
/// by `targetRefs` and `targetSelector` (the Gateway API policy-attachment pattern). How
/// several policies on one server combine: docs/kubernetes-crds.md.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "mcpgw.io",
    version = "v1alpha1",
    kind = "MCPPolicy",
    plural = "mcppolicies",
    singular = "mcppolicy",
    shortname = "mcpp",
    category = "mcpgw",
    namespaced,
    status = "PolicyStatus",
    doc = "Authentication, authorization, limits and guardrails attached to virtual servers.",
    printcolumn = r#"{"name":"Targets","type":"integer","jsonPath":".status.attachedServers"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("size(self.targetRefs) > 0 || has(self.targetSelector)").message("attach the policy with targetRefs or targetSelector"))]
#[serde(rename_all = "camelCase")]
pub struct MCPPolicySpec {
    /// Virtual servers (same namespace) the policy attaches to by name.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Virtual servers (same namespace) the policy attaches to by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_selector: Option<LabelSelector>,
    /// Who may connect: token issuers, whether a token is required, scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// What an authenticated caller may do: CEL rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Request rates and calls in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// Guardrail plugins (the snapshot's plugin form, see docs/plugins.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginSpec>,
}

/// A target of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("self.group == 'mcpgw.io' && self.kind == 'MCPVirtualServer'").message("a policy attaches to mcpgw.io MCPVirtualServer only"))]
pub struct PolicyTargetRef {
    /// `mcpgw.io`.
    #[schemars(length(max = 253))]
    pub group: String,
    /// `MCPVirtualServer`.
    #[schemars(length(max = 63))]
    pub kind: String,
    /// The virtual server's name.
    #[schemars(length(max = 253))]
    pub name: String,
}

/// Authentication of a virtual server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// Every request needs a verified token (401 without one).
    #[serde(default = "yes")]
    pub required: bool,
    /// Names of configured issuers whose tokens are accepted; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// Scopes clients should ask for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The server's resource identifier (RFC 8707): the absolute https URL clients reach it at.
    pub resource: String,
}

/// Authorization rules.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct Authorization {
    /// Rules: a use needs one `allow` that holds and no `deny` that holds.
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

/// One authorization rule.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct AuthorizationRule {
    /// Unique within the policy; names the rule in denials.
    pub name: String,
    /// `allow` or `deny`.
    #[serde(default)]
    pub effect: RuleEffect,
    /// A CEL condition over `principal`, `claims`, `request` and `args`.
    #[schemars(length(min = 1, max = 4096))]
    pub when: String,
}

/// What a rule does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleEffect {
    /// Allow.
    #[default]
    Allow,
    /// Deny.
    Deny,
}

/// Rate and concurrency limits.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
pub struct RateLimits {
    /// Token buckets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<RateLimitSpec>,
    /// Calls in flight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrency: Vec<ConcurrencySpec>,
}

/// Parts of a request a limit keeps one budget per.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// The principal.
    Principal,
    /// The principal's team.
    Team,
    /// The virtual server.
    Server,
    /// The JSON-RPC method.
    Method,
    /// The tool called.
    Tool,
}

/// A token bucket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Names the limit in 429 answers and metrics.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,64}$"))]
    pub name: String,
    /// What it keeps one budget for.
    #[serde(default)]
    pub by: Vec<LimitKey>,
    /// Methods counted; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Requests per period.
    #[schemars(range(min = 1))]
    pub requests: u32,
    /// The period in seconds.
    #[schemars(range(min = 1))]
    pub per_seconds: u32,
    /// Bucket size; default `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Tokens one request takes; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u32>,
    /// Counted by the shared rate-limit service instead of each Envoy.
    #[serde(default)]
    pub global: bool,
}

/// Calls in flight.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencySpec {
    /// Names the limit.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,64}$"))]
    pub name: String,
    /// What it keeps one count for.
    #[serde(default)]
    pub by: Vec<LimitKey>,
    /// Most calls at once.
    #[schemars(range(min = 1))]
    pub max: u32,
    /// Longest a call holds its place, in seconds; default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<u32>,
}

/// A guardrail plugin: its name and its settings in the snapshot's plugin form (`priority`,
/// `mode`, `hooks`, `conditions` and exactly one kind field such as `pii` or `regex`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct PluginSpec {
    /// Unique name (letters, digits, `-`, `_`, `.`; at most 64).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,64}$"))]
    pub name: String,
    /// The plugin's settings, checked by the controller (the status names a bad field).
    #[serde(default)]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub config: BTreeMap<String, serde_json::Value>,
}

fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// What the controller observed of a policy.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `Accepted` (valid), `Ready` (attached to at least one server), `Degraded` (a target
    /// is missing, or a clash with another policy was resolved against this one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Virtual servers the policy is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_servers: Option<i64>,
}

// ---- generation ----------------------------------------------------------------------

/// The three CRDs as `(file name under crds/, YAML)`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml_ng::Error> {
    use kube::CustomResourceExt as _;
    let crds = [MCPBackend::crd(), MCPVirtualServer::crd(), MCPPolicy::crd()];
    crds.iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let plural = name.split('.').next().unwrap_or_default().to_owned();
            Ok((
                format!("{GROUP}_{plural}.yaml"),
                serde_yaml_ng::to_string(crd)?,
            ))
        })
        .collect()
}

/// All three CRDs as one multi-document YAML stream (what `mcpgw crds` prints).
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for (_, yaml) in crd_files()? {
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

/// `mcpgw crds`: prints the CRDs, or writes one file each into `dir`.
pub fn print_or_write(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    match dir {
        None => print!("{}", crds_yaml()?),
        Some(dir) => {
            for (file, yaml) in crd_files()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `crds/` holds what the types generate.
    #[test]
    fn committed_crds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        for (file, yaml) in crd_files().unwrap() {
            let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                committed == yaml,
                "crds/{file} is stale: regenerate with `cargo run -p mcpgw -- crds --dir crds`"
            );
        }
    }

    #[test]
    fn the_schemas_carry_the_cel_rules_and_status_subresource() {
        let yaml = crds_yaml().unwrap();
        for rule in [
            "has(self.url) != has(self.serviceRef)",
            "self.startsWith('http://') || self.startsWith('https://')",
            "self.type != 'header' || has(self.header)",
            "self.group == 'mcpgw.io' && self.kind == 'MCPVirtualServer'",
            "(self.mode == 'token-exchange') == has(self.tokenExchange)",
            "has(self.audience) || has(self.resource)",
        ] {
            assert!(yaml.contains(rule), "missing rule {rule}");
        }
        assert_eq!(yaml.matches("status: {}").count(), 3, "{yaml}");
        assert!(yaml.contains("x-kubernetes-preserve-unknown-fields: true"));
    }

    #[test]
    fn a_backend_reads_from_yaml_as_an_operator_writes_it() {
        let b: MCPBackendSpec = serde_yaml_ng::from_str(
            "serviceRef: {name: time, port: 8080}\ntransport: sse\ncredentials: {secretRef: {name: s, key: token}}\nupstreamIdentity: {mode: token-exchange, tokenExchange: {tokenEndpoint: 'https://idp/token', clientId: mcpgw, clientSecretRef: {name: x, key: secret}, audience: time}}",
        )
        .unwrap();
        let te = b.upstream_identity.token_exchange.as_ref().unwrap();
        assert_eq!(te.client_secret_ref.name, "x");
        assert_eq!(te.audience.as_deref(), Some("time"));
        assert!(b.enabled);
        assert_eq!(b.transport, BackendTransport::Sse);
        assert_eq!(b.upstream_identity.mode, IdentityMode::TokenExchange);
        assert_eq!(b.credentials.unwrap().kind, CredentialKind::Bearer);
    }
}
