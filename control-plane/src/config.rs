//! Configuration of `mcpgw serve`: flags > environment > optional TOML file > defaults,
//! validated once at start into [`Settings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::crypto::{CryptoError, SecretBox};
use crate::edge_config::{
    ClusterNaming, ControlPlaneTls, DEFAULT_CLUSTER_DOMAIN, DEFAULT_ENVOY_LISTEN,
    DEFAULT_FILTER_WASM, DEFAULT_UPSTREAM_CA_FILE, EdgeSettings, RemoteModule, UpstreamEndpoint,
};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags (and their environment variables) of `mcpgw serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Optional TOML file with the same keys as the long flags (snake_case).
    #[arg(long, env = "MCPGW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin API listen address [default: 127.0.0.1:4444].
    #[arg(long, env = "MCPGW_LISTEN")]
    pub listen: Option<String>,
    /// Data directory for the default SQLite database; created if missing [default: ./mcpgw-data].
    #[arg(long, env = "MCPGW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `sqlite:…` or `postgres://…` [default: SQLite in the data directory].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "MCPGW_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, `tracing` env-filter syntax [default: info].
    #[arg(long, env = "MCPGW_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Development mode: allows starting without MCPGW_ENCRYPTION_KEY (uses a fixed, public key).
    #[arg(long, env = "MCPGW_DEV")]
    pub dev: bool,
    /// Separator between gateway name and item name [default: __].
    #[arg(long, env = "MCPGW_NAME_SEPARATOR")]
    pub name_separator: Option<String>,
    /// Seconds between upstream health checks [default: 60].
    #[arg(long, env = "MCPGW_HEALTH_INTERVAL")]
    pub health_interval: Option<u64>,
    /// Failed health checks in a row before a gateway is marked unreachable [default: 3].
    #[arg(long, env = "MCPGW_HEALTH_FAILURE_THRESHOLD")]
    pub health_failure_threshold: Option<u32>,
    /// Seconds between full catalog resyncs of every gateway; 0 disables [default: 300].
    #[arg(long, env = "MCPGW_RESYNC_INTERVAL")]
    pub resync_interval: Option<u64>,
    /// Timeout in seconds of every upstream call [default: 10].
    #[arg(long, env = "MCPGW_UPSTREAM_TIMEOUT")]
    pub upstream_timeout: Option<u64>,
    /// Most items (tools, resources, templates, prompts together) one gateway may list; a
    /// discovery that finds more fails and keeps the catalog [default: 5000].
    #[arg(long, env = "MCPGW_MAX_DISCOVERED_ITEMS")]
    pub max_discovered_items: Option<usize>,
    /// Largest definition of one discovered item, in bytes of JSON; larger ones are skipped
    /// and reported [default: 65536].
    #[arg(long, env = "MCPGW_MAX_DISCOVERED_ITEM_BYTES")]
    pub max_discovered_item_bytes: Option<usize>,
    /// Most bytes (JSON) one gateway's discovered catalog may hold, and one list answer may
    /// have; a discovery past it fails and keeps the catalog [default: 8388608].
    #[arg(long, env = "MCPGW_MAX_DISCOVERED_BYTES")]
    pub max_discovered_bytes: Option<usize>,
    /// Least seconds between two rediscoveries a gateway's list_changed notifications
    /// trigger; notifications meanwhile fold into the next one [default: 2].
    #[arg(long, env = "MCPGW_LIST_CHANGED_INTERVAL")]
    pub list_changed_interval: Option<u64>,
    /// Allow upstream URLs resolving to loopback addresses (SSRF guard).
    #[arg(long, env = "MCPGW_ALLOW_LOOPBACK_UPSTREAMS")]
    pub allow_loopback_upstreams: bool,
    /// Allow upstream URLs resolving to link-local and cloud metadata addresses (SSRF guard).
    #[arg(long, env = "MCPGW_ALLOW_LINK_LOCAL_UPSTREAMS")]
    pub allow_link_local_upstreams: bool,
    /// Refuse upstream URLs resolving to private addresses (RFC 1918, fc00::/7, fec0::/10,
    /// 100.64.0.0/10), allowed by default (SSRF guard).
    #[arg(long, env = "MCPGW_DENY_PRIVATE_UPSTREAMS")]
    pub deny_private_upstreams: bool,
    /// xDS (ADS gRPC) listen address for Envoys, or `off` [default: 127.0.0.1:18000].
    #[arg(long, env = "MCPGW_XDS_LISTEN")]
    pub xds_listen: Option<String>,
    /// Address the Envoys' MCP listener binds (sent over xDS) [default: 127.0.0.1:8080].
    #[arg(long, env = "MCPGW_ENVOY_LISTEN")]
    pub envoy_listen: Option<String>,
    /// The URL clients reach the Envoys' MCP listener at (`https://mcp.example.com`, with a
    /// path prefix if a proxy adds one): a policy written without `resource` gets
    /// `{public_url}/servers/{id}/mcp` [default: none; policies name their resource].
    #[arg(long, env = "MCPGW_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Path of the filter's .wasm module on the Envoys' hosts (sent over xDS)
    /// [default: target/wasm32-wasip1/release/mcpgw_filter.wasm].
    #[arg(long, env = "MCPGW_FILTER_WASM")]
    pub filter_wasm: Option<String>,
    /// URL (`http`/`https`) Envoys download the filter's .wasm module from, instead of
    /// reading `filter_wasm` on their hosts; with `wasm_sha256`. Envoy fetches it itself
    /// through the cluster `mcpgw-wasm` (sent over xDS; an Istio gateway gets it from the
    /// overlay's EnvoyFilter) and runs it only if the digest matches.
    #[arg(long, env = "MCPGW_WASM_URL")]
    pub wasm_url: Option<String>,
    /// SHA-256 (64 hex digits) of the module at `wasm_url`.
    #[arg(long, env = "MCPGW_WASM_SHA256")]
    pub wasm_sha256: Option<String>,
    /// How upstream clusters are named: `mcpgw` (`mcpgw-gw-{id}`; the control plane sends
    /// them to its own Envoys) or `istio` (`outbound|{port}||{host}`: an Istio gateway routes
    /// to the clusters istiod gives it for the Service or ServiceEntry) [default: mcpgw].
    #[arg(long, env = "MCPGW_CLUSTER_NAMING")]
    pub cluster_naming: Option<String>,
    /// The Kubernetes cluster's DNS domain, which completes `name.namespace.svc` upstream
    /// hosts in Istio cluster names [default: cluster.local].
    #[arg(long, env = "MCPGW_CLUSTER_DOMAIN")]
    pub cluster_domain: Option<String>,
    /// CA bundle on the Envoys' hosts to verify https upstreams with, or `off` (no
    /// verification) [default: /etc/ssl/certs/ca-certificates.crt].
    #[arg(long, env = "MCPGW_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<String>,
    /// `Host`s the Envoys' MCP listener answers to, comma-separated: `host`, `host:port`,
    /// `host:*` or `*.domain` (any subdomain and port); `*` for any. Another `Host` gets 421
    /// (DNS rebinding) [default: the listener's loopback names at its port when
    /// envoy_listen is a loopback address, else any].
    #[arg(long, env = "MCPGW_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s every virtual server admits, comma-separated:
    /// `scheme://host[:port]`, `:*` for any port, `*` for any origin, or `none`. A request
    /// with another `Origin` gets 403; one without (not a browser) passes. Virtual servers
    /// add their own (`allowed_origins`) [default: http://127.0.0.1:*, http://localhost:*
    /// and http://[::1]:* when envoy_listen is a loopback address, else none].
    #[arg(long, env = "MCPGW_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// JSON file with the request policy every Envoy's filter enforces (the snapshot's
    /// `policy`: allowed methods, denied tools, body limit, page size, …; docs/filter.md)
    /// [default: the filter's documented defaults].
    #[arg(long, env = "MCPGW_EDGE_POLICY")]
    pub edge_policy: Option<PathBuf>,
    /// Name of the registered gateway the edge's passthrough endpoint (`/mcp`) fronts: a
    /// client's `/mcp` request goes to it (at its URL's path and authority) under the
    /// filter's passthrough governance (edge policy, `tool_routes`, plugins; no
    /// authentication or limits, which are per virtual server) [default: none; `/mcp`
    /// answers a JSON-RPC 404].
    #[arg(long, env = "MCPGW_EDGE_PASSTHROUGH")]
    pub edge_passthrough: Option<String>,
    /// Seconds a virtual server's MCP session lives after `initialize` (60 to 2592000); the
    /// client then gets 404 and starts a new one [default: 86400].
    #[arg(long, env = "MCPGW_MCP_SESSION_TTL")]
    pub mcp_session_ttl: Option<u64>,
    /// Seconds an upstream session behind a virtual server may go unused before the
    /// gateway ends it (60 to 2592000) [default: 1800].
    #[arg(long, env = "MCPGW_MCP_SESSION_IDLE")]
    pub mcp_session_idle: Option<u64>,
    /// Listen address of the session relay (the legacy SSE pair `/servers/{id}/sse` +
    /// `/message`, GET streams over several upstreams), or `off` [default: 127.0.0.1:18001].
    #[arg(long, env = "MCPGW_RELAY_LISTEN")]
    pub relay_listen: Option<String>,
    /// `host:port` at which Envoys reach the relay (sent over xDS) [default: the listen
    /// address; required when that binds every interface].
    #[arg(long, env = "MCPGW_RELAY_ADVERTISE")]
    pub relay_advertise: Option<String>,
    /// Listen address of the rate-limit service (Envoy's `envoy.service.ratelimit.v3`
    /// gRPC, counting in Redis) that filters check global limits against, or `off`
    /// [default: 127.0.0.1:18002].
    #[arg(long, env = "MCPGW_RATELIMIT_LISTEN")]
    pub ratelimit_listen: Option<String>,
    /// `host:port` at which Envoys reach the rate-limit service (sent over xDS) [default:
    /// the listen address; required when that binds every interface].
    #[arg(long, env = "MCPGW_RATELIMIT_ADVERTISE")]
    pub ratelimit_advertise: Option<String>,
    /// Redis the rate-limit service counts in [default: redis://127.0.0.1:6379].
    #[arg(long, env = "MCPGW_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Certificate chain (PEM) the control plane presents on the listeners Envoys connect to
    /// (xDS, the relay, the rate-limit service); with `tls_key` and `tls_client_ca`.
    #[arg(long, env = "MCPGW_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    #[arg(long, env = "MCPGW_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that Envoys' client certificates must chain to on xDS and the relay.
    #[arg(long, env = "MCPGW_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve xDS and the relay without TLS on a non-loopback address. Anyone who reaches
    /// them then gets every Envoy's configuration (upstream credentials included) and can
    /// use the relay: only for networks where nothing else can connect.
    #[arg(long, env = "MCPGW_INSECURE_XDS")]
    pub insecure_xds: bool,
    /// CA bundle on the Envoys' hosts that the control plane's certificate is verified
    /// against (sent over xDS, for the relay cluster); with `envoy_tls_cert` and `envoy_tls_key`.
    #[arg(long, env = "MCPGW_ENVOY_TLS_CA")]
    pub envoy_tls_ca: Option<String>,
    /// Client certificate on the Envoys' hosts that Envoys present to the control plane.
    #[arg(long, env = "MCPGW_ENVOY_TLS_CERT")]
    pub envoy_tls_cert: Option<String>,
    /// Private key on the Envoys' hosts of `envoy_tls_cert`.
    #[arg(long, env = "MCPGW_ENVOY_TLS_KEY")]
    pub envoy_tls_key: Option<String>,
    /// Serve `/metrics` without a credential (by default it needs `admin.metrics`).
    #[arg(long, env = "MCPGW_METRICS_OPEN")]
    pub metrics_open: bool,
    /// Algorithm of the session tokens the control plane signs: es256, rs256 (with
    /// `jwt_rsa_key_file`) or hs256 [default: es256].
    #[arg(long, env = "MCPGW_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// PKCS#8 PEM file of the RSA private key for rs256; replacing the file rotates the key.
    #[arg(long, env = "MCPGW_JWT_RSA_KEY_FILE")]
    pub jwt_rsa_key_file: Option<PathBuf>,
    /// `iss` of session tokens [default: mcpgw].
    #[arg(long, env = "MCPGW_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Lifetime of a session token in seconds [default: 28800].
    #[arg(long, env = "MCPGW_SESSION_TTL")]
    pub session_ttl: Option<u64>,
    /// Seconds a rotated-out signing key still verifies; at least `session_ttl`
    /// [default: 86400].
    #[arg(long, env = "MCPGW_JWT_KEY_GRACE")]
    pub jwt_key_grace: Option<u64>,
    /// Failed logins in a row before an email is locked out [default: 5].
    #[arg(long, env = "MCPGW_LOGIN_MAX_FAILURES")]
    pub login_max_failures: Option<u32>,
    /// Seconds a lockout lasts [default: 900].
    #[arg(long, env = "MCPGW_LOGIN_LOCKOUT")]
    pub login_lockout: Option<u64>,
    /// What an empty scope list of an API token means: deny (nothing) or inherit (all its
    /// user has) [default: deny].
    #[arg(long, env = "MCPGW_TOKEN_EMPTY_SCOPES")]
    pub token_empty_scopes: Option<String>,
    /// Email of the platform admin created at start if missing (with
    /// `admin_password_file` or MCPGW_ADMIN_PASSWORD); an existing user is left as it is.
    #[arg(long, env = "MCPGW_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// File holding that admin's password (one line; readable by its owner only).
    #[arg(long, env = "MCPGW_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// The admin's password from MCPGW_ADMIN_PASSWORD (read by `main`, never a flag: a
    /// flag shows in the process list).
    #[arg(skip)]
    pub admin_password: Option<String>,
    /// `--dev` only: where to write the platform-admin API token minted at start (0600)
    /// [default: admin.token in the data directory, or ./mcpgw-admin.token with a
    /// database URL].
    #[arg(long, env = "MCPGW_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Run the Kubernetes controller: reconcile `mcpgw.io` resources into the registry (the
    /// replica holding the Lease writes; every replica serves). Reads the in-cluster
    /// configuration (or KUBECONFIG), POD_NAME and POD_NAMESPACE.
    #[arg(long, env = "MCPGW_KUBERNETES")]
    pub kubernetes: bool,
    /// The namespace the controller watches [default: all].
    #[arg(long, env = "MCPGW_KUBERNETES_NAMESPACE")]
    pub kubernetes_namespace: Option<String>,
}

/// The optional TOML file: same keys as the long flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    dev: Option<bool>,
    name_separator: Option<String>,
    health_interval: Option<u64>,
    health_failure_threshold: Option<u32>,
    resync_interval: Option<u64>,
    upstream_timeout: Option<u64>,
    max_discovered_items: Option<usize>,
    max_discovered_item_bytes: Option<usize>,
    max_discovered_bytes: Option<usize>,
    list_changed_interval: Option<u64>,
    allow_loopback_upstreams: Option<bool>,
    allow_link_local_upstreams: Option<bool>,
    deny_private_upstreams: Option<bool>,
    xds_listen: Option<String>,
    envoy_listen: Option<String>,
    public_url: Option<String>,
    filter_wasm: Option<String>,
    wasm_url: Option<String>,
    wasm_sha256: Option<String>,
    cluster_naming: Option<String>,
    cluster_domain: Option<String>,
    upstream_ca_file: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    edge_policy: Option<PathBuf>,
    edge_passthrough: Option<String>,
    mcp_session_ttl: Option<u64>,
    mcp_session_idle: Option<u64>,
    relay_listen: Option<String>,
    relay_advertise: Option<String>,
    ratelimit_listen: Option<String>,
    ratelimit_advertise: Option<String>,
    redis_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    insecure_xds: Option<bool>,
    envoy_tls_ca: Option<String>,
    envoy_tls_cert: Option<String>,
    envoy_tls_key: Option<String>,
    metrics_open: Option<bool>,
    jwt_algorithm: Option<String>,
    jwt_rsa_key_file: Option<PathBuf>,
    jwt_issuer: Option<String>,
    session_ttl: Option<u64>,
    jwt_key_grace: Option<u64>,
    login_max_failures: Option<u32>,
    login_lockout: Option<u64>,
    token_empty_scopes: Option<String>,
    admin_email: Option<String>,
    admin_password_file: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    /// `[oidc_providers.NAME]` tables: OpenID providers for admin login (file only: a table
    /// per provider does not fit a flag).
    oidc_providers: Option<std::collections::BTreeMap<String, crate::auth::oidc::ProviderConfig>>,
    kubernetes: Option<bool>,
    kubernetes_namespace: Option<String>,
}

/// A configuration error naming the offending setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is invalid.
    #[error("invalid {field}: {reason}")]
    FieldInvalid {
        /// Setting name.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No encryption key outside dev mode.
    #[error(
        "MCPGW_ENCRYPTION_KEY is not set: upstream credentials are encrypted at rest and need a key \
         (generate one with `openssl rand -base64 32`), or start with --dev for a throwaway setup"
    )]
    MissingKey,
    /// The key is malformed.
    #[error(transparent)]
    Key(#[from] CryptoError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::FieldInvalid {
        field,
        reason: reason.into(),
    }
}

/// SSRF policy for upstream URLs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SsrfPolicy {
    /// Loopback (127.0.0.0/8, ::1) allowed.
    pub allow_loopback: bool,
    /// Link-local (169.254.0.0/16, fe80::/10; includes cloud metadata) allowed.
    pub allow_link_local: bool,
    /// Private networks (RFC 1918, fc00::/7, fec0::/10, 100.64.0.0/10) refused; by default
    /// they are allowed, as self-hosted upstreams live there.
    pub deny_private: bool,
}

/// How much one gateway's discovery may bring: an upstream that lists without end, or
/// lists huge definitions, costs a bounded amount of memory and storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryLimits {
    /// Most items (all kinds together) per gateway; past it the discovery fails.
    pub max_items: usize,
    /// Largest definition of one item (JSON bytes); larger items are skipped and reported.
    pub max_item_bytes: usize,
    /// Most JSON bytes of one gateway's catalog, and of one list answer; past it the
    /// discovery fails.
    pub max_total_bytes: usize,
}

impl Default for DiscoveryLimits {
    fn default() -> Self {
        DiscoveryLimits {
            max_items: 5000,
            max_item_bytes: 64 * 1024,
            max_total_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Federation settings.
#[derive(Debug, Clone)]
pub struct FederationSettings {
    /// Separator between gateway and item names.
    pub separator: String,
    /// Interval between health checks.
    pub health_interval: Duration,
    /// Failures in a row before a gateway is unreachable.
    pub failure_threshold: u32,
    /// Interval between full resyncs (`None`: disabled).
    pub resync_interval: Option<Duration>,
    /// Timeout of every upstream call.
    pub timeout: Duration,
    /// SSRF policy.
    pub ssrf: SsrfPolicy,
    /// Caps on what one discovery may bring.
    pub limits: DiscoveryLimits,
    /// Least time between two rediscoveries of one gateway triggered by list_changed.
    pub list_changed_interval: Duration,
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            separator: "__".into(),
            health_interval: Duration::from_secs(60),
            failure_threshold: 3,
            resync_interval: Some(Duration::from_secs(300)),
            timeout: Duration::from_secs(10),
            ssrf: SsrfPolicy::default(),
            limits: DiscoveryLimits::default(),
            list_changed_interval: Duration::from_secs(2),
        }
    }
}

/// TLS of the listeners Envoys connect to (xDS, relay): the control plane's identity and the
/// CA its Envoys' client certificates chain to. Files are read when the listeners start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA bundle (PEM) for client certificates.
    pub client_ca: PathBuf,
}

/// Validated settings of a running control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Admin API address.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Data directory to create before opening a SQLite file in it.
    pub data_dir: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Development mode.
    pub dev: bool,
    /// Credential cipher.
    pub secrets: SecretBox,
    /// Federation.
    pub federation: FederationSettings,
    /// xDS listen address (`None`: xDS disabled).
    pub xds_listen: Option<SocketAddr>,
    /// What the Envoys are told (listener address, filter module, upstream CA).
    pub edge: EdgeSettings,
    /// The request policy in every snapshot.
    pub edge_policy: mcpgw_core::snapshot::Policy,
    /// Virtual-server MCP sessions: seconds a session lives, seconds an upstream session may
    /// go unused.
    pub mcp_sessions: McpSessionTimes,
    /// The session relay's listen address (`None`: no relay).
    pub relay_listen: Option<SocketAddr>,
    /// Where Envoys reach the relay (`None`: its bound address).
    pub relay_advertise: Option<UpstreamEndpoint>,
    /// The rate-limit service's listen address (`None`: no service).
    pub ratelimit_listen: Option<SocketAddr>,
    /// Where Envoys reach the rate-limit service (`None`: its bound address).
    pub ratelimit_advertise: Option<UpstreamEndpoint>,
    /// The Redis the rate-limit service counts in.
    pub redis_url: String,
    /// TLS with client certificates on xDS and the relay (`None`: plaintext, allowed only
    /// on loopback unless `insecure_xds`).
    pub tls: Option<ServerTls>,
    /// The operator allowed plaintext xDS and relay listeners off loopback.
    pub insecure_xds: bool,
    /// The session relay's caps, idle timeouts, read limits and HTTP timeouts (defaults:
    /// the `crate::relay::DEFAULT_*` constants; not flags).
    pub relay_limits: crate::relay::Limits,
    /// Header-read and request-body timeouts of the admin API (defaults:
    /// `crate::serving::DEFAULT_*`; not flags).
    pub api_timeouts: crate::serving::Timeouts,
    /// Authentication and authorization of the admin API.
    pub auth: crate::auth::AuthSettings,
    /// The Kubernetes controller (`None`: off).
    pub kubernetes: Option<crate::k8s::KubeSettings>,
}

impl Settings {
    /// Settings for tests and embedding: given database, dev key, defaults elsewhere.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            data_dir: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            dev: true,
            secrets: SecretBox::dev(),
            federation: FederationSettings::default(),
            xds_listen: None,
            edge: EdgeSettings::default(),
            edge_policy: mcpgw_core::snapshot::Policy::default(),
            mcp_sessions: McpSessionTimes::default(),
            relay_listen: None,
            relay_advertise: None,
            ratelimit_listen: None,
            ratelimit_advertise: None,
            redis_url: crate::ratelimit::DEFAULT_REDIS_URL.to_owned(),
            tls: None,
            insecure_xds: false,
            relay_limits: crate::relay::Limits::default(),
            api_timeouts: crate::serving::Timeouts::default(),
            // Dev mode: an admin API token is minted at start (`ControlPlane::dev_token`).
            auth: crate::auth::AuthSettings {
                dev_token: Some(None),
                ..Default::default()
            },
            kubernetes: None,
        }
    }
}

/// Default of the relay's listen address.
pub const DEFAULT_RELAY_LISTEN: &str = "127.0.0.1:18001";

/// Parses an `ip:port` setting.
fn socket_addr(field: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse()
        .map_err(|_| invalid(field, format!("{raw:?} is not an ip:port address")))
}

/// A path Envoy reads: non-empty, one line.
/// Reads and validates the edge policy file with the filter's own rules, so a policy the
/// filter would reject never leaves the control plane.
fn read_edge_policy(path: &std::path::Path) -> Result<mcpgw_core::snapshot::Policy, ConfigError> {
    let text = std::fs::read(path)
        .map_err(|e| invalid("edge_policy", format!("{}: {e}", path.display())))?;
    let mut doc = b"{\"policy\":".to_vec();
    doc.extend_from_slice(&text);
    doc.push(b'}');
    mcpgw_core::snapshot::Snapshot::from_json(&doc)
        .map(|s| s.policy)
        .map_err(|e| invalid("edge_policy", format!("{}: {e}", path.display())))
}

/// The listener's `Host` allow-list: `raw` as given (`*` alone: any), else what the edge
/// policy file says, else the loopback names at the listener's port when it is on loopback
/// (also without a port on port 80, which clients leave out), else any.
fn allowed_hosts(
    raw: Option<Vec<String>>,
    from_policy: Vec<String>,
    listen: SocketAddr,
) -> Result<Vec<String>, ConfigError> {
    if let Some(list) = raw {
        let list: Vec<String> = list.into_iter().map(|h| h.trim().to_owned()).collect();
        if list.iter().any(|h| h == "*") {
            if list.len() > 1 {
                return Err(invalid(
                    "allowed_hosts",
                    "* (any host) stands alone, not in a list",
                ));
            }
            return Ok(Vec::new());
        }
        for h in &list {
            mcpgw_core::origin::check_host_pattern(h).map_err(|reason| {
                invalid(
                    "allowed_hosts",
                    format!("{reason}, e.g. mcp.example.com, mcp.example.com:8443, *.example.com"),
                )
            })?;
        }
        return Ok(list);
    }
    if !from_policy.is_empty() || !listen.ip().is_loopback() {
        return Ok(from_policy);
    }
    let port = match listen.port() {
        0 => "*".to_owned(),
        p => p.to_string(),
    };
    let mut names = vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "[::1]".to_owned(),
    ];
    let own = match listen.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    if !names.contains(&own) {
        names.push(own);
    }
    let mut out: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    if listen.port() == 80 {
        out.extend(names);
    }
    Ok(out)
}

/// The origins every virtual server admits: `raw` as given (`none` alone: none), else what
/// the edge policy file says, else a browser on this machine (any port) when the listener
/// is on loopback (what the MCP Python SDK admits on loopback), else none.
fn allowed_origins(
    raw: Option<Vec<String>>,
    from_policy: Vec<String>,
    listen: SocketAddr,
) -> Result<Vec<String>, ConfigError> {
    if let Some(list) = raw {
        let list: Vec<String> = list.into_iter().map(|o| o.trim().to_owned()).collect();
        if list.iter().any(|o| o.eq_ignore_ascii_case("none")) {
            if list.len() > 1 {
                return Err(invalid(
                    "allowed_origins",
                    "none (no browser origin) stands alone, not in a list",
                ));
            }
            return Ok(Vec::new());
        }
        for o in &list {
            mcpgw_core::origin::check_origin_pattern(o).map_err(|reason| {
                invalid(
                    "allowed_origins",
                    format!("{reason}, e.g. https://app.example.com or http://localhost:*"),
                )
            })?;
        }
        return Ok(list);
    }
    if !from_policy.is_empty() || !listen.ip().is_loopback() {
        return Ok(from_policy);
    }
    Ok(
        ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
            .map(str::to_owned)
            .to_vec(),
    )
}

fn envoy_path(field: &'static str, raw: String) -> Result<String, ConfigError> {
    if raw.trim().is_empty() || raw.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must be a non-empty path without control characters",
        ));
    }
    Ok(raw)
}

/// How long virtual-server MCP sessions last (the snapshot's `session.ttl_seconds` and
/// `session.idle_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McpSessionTimes {
    /// Seconds a session token is valid after `initialize`.
    pub ttl_seconds: u64,
    /// Seconds an upstream session may go unused before the gateway ends it.
    pub idle_seconds: u64,
}

impl Default for McpSessionTimes {
    fn default() -> Self {
        McpSessionTimes {
            ttl_seconds: mcpgw_core::snapshot::DEFAULT_SESSION_TTL_SECONDS,
            idle_seconds: mcpgw_core::snapshot::DEFAULT_SESSION_IDLE_SECONDS,
        }
    }
}

fn secs(field: &'static str, v: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    if v < min || v > max {
        return Err(invalid(
            field,
            format!("must be between {min} and {max} seconds"),
        ));
    }
    Ok(Duration::from_secs(v))
}

impl ServeArgs {
    /// Merges flags, environment (already folded into the flags by clap), the optional
    /// file and defaults, and validates. `encryption_key` is `MCPGW_ENCRYPTION_KEY`.
    pub fn resolve(&self, encryption_key: Option<&str>) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let auth = {
            let dev = self.dev || file.dev.unwrap_or(false);
            let data_dir = match (&self.database_url, &file.database_url) {
                (None, None) => Some(
                    self.data_dir
                        .clone()
                        .or(file.data_dir.clone())
                        .unwrap_or_else(|| PathBuf::from("mcpgw-data")),
                ),
                _ => None,
            };
            self.resolve_auth(&file, dev, data_dir.as_deref())?
        };
        let listen_raw = self
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:4444".into());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_raw:?} is not an ip:port address"),
            )
        })?;
        let dev = self.dev || file.dev.unwrap_or(false);
        let (database_url, data_dir) = match self.database_url.clone().or(file.database_url) {
            Some(url) => {
                crate::store::Backend::from_url(&url).map_err(|_| {
                    invalid(
                        "database_url",
                        "must start with sqlite:, postgres:// or postgresql://",
                    )
                })?;
                (url, None)
            }
            None => {
                let dir = self
                    .data_dir
                    .clone()
                    .or(file.data_dir)
                    .unwrap_or_else(|| PathBuf::from("mcpgw-data"));
                let path = dir.join("mcpgw.db");
                let path = path
                    .to_str()
                    .ok_or_else(|| invalid("data_dir", "must be valid UTF-8"))?;
                (format!("sqlite://{path}?mode=rwc"), Some(dir))
            }
        };
        let log_format = self.log_format.or(file.log_format).unwrap_or_default();
        let log_level = self
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| invalid("log_level", e.to_string()))?;
        let separator = self
            .name_separator
            .clone()
            .or(file.name_separator)
            .unwrap_or_else(|| "__".into());
        if separator.is_empty()
            || separator.len() > 8
            || separator
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "name_separator",
                "must be 1-8 characters without whitespace",
            ));
        }
        let health_interval = secs(
            "health_interval",
            self.health_interval.or(file.health_interval).unwrap_or(60),
            1,
            86_400,
        )?;
        let failure_threshold = self
            .health_failure_threshold
            .or(file.health_failure_threshold)
            .unwrap_or(3);
        if !(1..=100).contains(&failure_threshold) {
            return Err(invalid(
                "health_failure_threshold",
                "must be between 1 and 100",
            ));
        }
        let resync = self.resync_interval.or(file.resync_interval).unwrap_or(300);
        let resync_interval = if resync == 0 {
            None
        } else {
            Some(secs("resync_interval", resync, 1, 604_800)?)
        };
        let timeout = secs(
            "upstream_timeout",
            self.upstream_timeout
                .or(file.upstream_timeout)
                .unwrap_or(10),
            1,
            600,
        )?;
        let defaults = DiscoveryLimits::default();
        let count = |field: &'static str, v: Option<usize>, default: usize, min: usize| match v {
            None => Ok(default),
            Some(n) if n >= min => Ok(n),
            Some(_) => Err(invalid(field, format!("must be at least {min}"))),
        };
        let limits = DiscoveryLimits {
            max_items: count(
                "max_discovered_items",
                self.max_discovered_items.or(file.max_discovered_items),
                defaults.max_items,
                1,
            )?,
            max_item_bytes: count(
                "max_discovered_item_bytes",
                self.max_discovered_item_bytes
                    .or(file.max_discovered_item_bytes),
                defaults.max_item_bytes,
                1024,
            )?,
            max_total_bytes: count(
                "max_discovered_bytes",
                self.max_discovered_bytes.or(file.max_discovered_bytes),
                defaults.max_total_bytes,
                64 * 1024,
            )?,
        };
        let list_changed_interval = secs(
            "list_changed_interval",
            self.list_changed_interval
                .or(file.list_changed_interval)
                .unwrap_or(2),
            0,
            3600,
        )?;
        let xds_raw = self
            .xds_listen
            .clone()
            .or(file.xds_listen)
            .unwrap_or_else(|| "127.0.0.1:18000".into());
        let xds_listen = if xds_raw.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(socket_addr("xds_listen", &xds_raw)?)
        };
        let envoy_listen = socket_addr(
            "envoy_listen",
            &self
                .envoy_listen
                .clone()
                .or(file.envoy_listen)
                .unwrap_or_else(|| DEFAULT_ENVOY_LISTEN.into()),
        )?;
        let filter_wasm = envoy_path(
            "filter_wasm",
            self.filter_wasm
                .clone()
                .or(file.filter_wasm)
                .unwrap_or_else(|| DEFAULT_FILTER_WASM.into()),
        )?;
        let filter_remote = match (
            self.wasm_url.clone().or(file.wasm_url),
            self.wasm_sha256.clone().or(file.wasm_sha256),
        ) {
            (None, None) => None,
            (Some(url), Some(sha256)) => Some(RemoteModule::new(&url, &sha256).map_err(|e| {
                invalid(
                    if e.starts_with("sha256") {
                        "wasm_sha256"
                    } else {
                        "wasm_url"
                    },
                    e,
                )
            })?),
            (Some(_), None) => return Err(invalid("wasm_sha256", "required with wasm_url")),
            (None, Some(_)) => return Err(invalid("wasm_url", "required with wasm_sha256")),
        };
        let domain = self
            .cluster_domain
            .clone()
            .or(file.cluster_domain)
            .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.into());
        if domain.is_empty()
            || !domain
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(invalid(
                "cluster_domain",
                "must be a DNS name like cluster.local",
            ));
        }
        let cluster_naming = match self
            .cluster_naming
            .clone()
            .or(file.cluster_naming)
            .as_deref()
        {
            None | Some("mcpgw") => ClusterNaming::Mcpgw,
            Some("istio") => ClusterNaming::Istio { domain },
            Some(other) => {
                return Err(invalid(
                    "cluster_naming",
                    format!("{other:?} is not mcpgw or istio"),
                ));
            }
        };
        let ca_raw = self
            .upstream_ca_file
            .clone()
            .or(file.upstream_ca_file)
            .unwrap_or_else(|| DEFAULT_UPSTREAM_CA_FILE.into());
        let upstream_ca_file = if ca_raw.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(envoy_path("upstream_ca_file", ca_raw)?)
        };
        let relay_raw = self
            .relay_listen
            .clone()
            .or(file.relay_listen)
            .unwrap_or_else(|| DEFAULT_RELAY_LISTEN.into());
        let relay_listen = if relay_raw.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(socket_addr("relay_listen", &relay_raw)?)
        };
        let relay_advertise = match self.relay_advertise.clone().or(file.relay_advertise) {
            Some(raw) => Some(
                UpstreamEndpoint::from_url(&format!("http://{raw}"))
                    .ok()
                    .filter(|_| raw.contains(':') && !raw.contains(['/', '@', '?', '#']))
                    .ok_or_else(|| {
                        invalid("relay_advertise", format!("{raw:?} is not a host:port"))
                    })?,
            ),
            None => None,
        };
        if let Some(listen) = relay_listen
            && listen.ip().is_unspecified()
            && relay_advertise.is_none()
        {
            return Err(invalid(
                "relay_advertise",
                format!(
                    "required when relay_listen binds every interface ({listen}): the address Envoys reach the relay at"
                ),
            ));
        }
        let ratelimit_raw = self
            .ratelimit_listen
            .clone()
            .or(file.ratelimit_listen)
            .unwrap_or_else(|| crate::ratelimit::DEFAULT_LISTEN.into());
        let ratelimit_listen = if ratelimit_raw.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(socket_addr("ratelimit_listen", &ratelimit_raw)?)
        };
        let ratelimit_advertise = match self
            .ratelimit_advertise
            .clone()
            .or(file.ratelimit_advertise)
        {
            Some(raw) => Some(
                UpstreamEndpoint::from_url(&format!("http://{raw}"))
                    .ok()
                    .filter(|_| raw.contains(':') && !raw.contains(['/', '@', '?', '#']))
                    .ok_or_else(|| {
                        invalid("ratelimit_advertise", format!("{raw:?} is not a host:port"))
                    })?,
            ),
            None => None,
        };
        if let Some(listen) = ratelimit_listen
            && listen.ip().is_unspecified()
            && ratelimit_advertise.is_none()
        {
            return Err(invalid(
                "ratelimit_advertise",
                format!(
                    "required when ratelimit_listen binds every interface ({listen}): the address Envoys reach the service at"
                ),
            ));
        }
        let redis_url = self
            .redis_url
            .clone()
            .or(file.redis_url)
            .unwrap_or_else(|| crate::ratelimit::DEFAULT_REDIS_URL.into());
        if redis::Client::open(redis_url.as_str()).is_err() {
            return Err(invalid(
                "redis_url",
                format!("{redis_url:?} is not a redis:// or rediss:// URL"),
            ));
        }
        let tls = match (
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
            self.tls_client_ca.clone().or(file.tls_client_ca),
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(client_ca)) => {
                for (field, path) in [
                    ("tls_cert", &cert),
                    ("tls_key", &key),
                    ("tls_client_ca", &client_ca),
                ] {
                    std::fs::metadata(path)
                        .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
                }
                Some(ServerTls {
                    cert,
                    key,
                    client_ca,
                })
            }
            _ => {
                return Err(invalid(
                    "tls_cert",
                    "tls_cert, tls_key and tls_client_ca are set together or not at all",
                ));
            }
        };
        let insecure_xds = self.insecure_xds || file.insecure_xds.unwrap_or(false);
        for (field, addr) in [
            ("xds_listen", xds_listen),
            ("relay_listen", relay_listen),
            ("ratelimit_listen", ratelimit_listen),
        ] {
            if let Some(addr) = addr
                && !addr.ip().is_loopback()
                && tls.is_none()
                && !insecure_xds
            {
                return Err(invalid(
                    field,
                    format!(
                        "{addr} is not a loopback address, and without TLS anyone who reaches it \
                         gets every Envoy's configuration or the relay: set tls_cert, tls_key and \
                         tls_client_ca, or say --insecure-xds"
                    ),
                ));
            }
        }
        let control_plane_tls = match (
            self.envoy_tls_ca.clone().or(file.envoy_tls_ca),
            self.envoy_tls_cert.clone().or(file.envoy_tls_cert),
            self.envoy_tls_key.clone().or(file.envoy_tls_key),
        ) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(ControlPlaneTls {
                ca_file: envoy_path("envoy_tls_ca", ca)?,
                cert_file: envoy_path("envoy_tls_cert", cert)?,
                key_file: envoy_path("envoy_tls_key", key)?,
            }),
            _ => {
                return Err(invalid(
                    "envoy_tls_ca",
                    "envoy_tls_ca, envoy_tls_cert and envoy_tls_key are set together or not at all",
                ));
            }
        };
        if tls.is_some() && relay_listen.is_some() && control_plane_tls.is_none() {
            return Err(invalid(
                "envoy_tls_ca",
                "required with tls_cert while the relay is on: the certificate files Envoys \
                 use to reach the relay over TLS",
            ));
        }
        if tls.is_some() && ratelimit_listen.is_some() && control_plane_tls.is_none() {
            return Err(invalid(
                "envoy_tls_ca",
                "required with tls_cert while the rate-limit service is on: the certificate \
                 files Envoys use to reach it over TLS",
            ));
        }
        if dev {
            let listeners = [
                ("listen", Some(listen)),
                ("xds_listen", xds_listen),
                ("relay_listen", relay_listen),
                ("ratelimit_listen", ratelimit_listen),
                ("envoy_listen", Some(envoy_listen)),
            ];
            for (field, addr) in listeners {
                if let Some(addr) = addr
                    && !addr.ip().is_loopback()
                {
                    return Err(invalid(
                        field,
                        format!(
                            "{addr} is not a loopback address: --dev uses a public, well-known key \
                             and is refused unless every listener is on loopback"
                        ),
                    ));
                }
            }
        }
        let mut edge_policy = match self.edge_policy.clone().or(file.edge_policy) {
            Some(path) => read_edge_policy(&path)?,
            None => mcpgw_core::snapshot::Policy::default(),
        };
        let given = |flag: &Vec<String>, file: Option<Vec<String>>| {
            if flag.is_empty() {
                file
            } else {
                Some(flag.clone())
            }
        };
        edge_policy.allowed_hosts = allowed_hosts(
            given(&self.allowed_hosts, file.allowed_hosts),
            std::mem::take(&mut edge_policy.allowed_hosts),
            envoy_listen,
        )?;
        edge_policy.allowed_origins = allowed_origins(
            given(&self.allowed_origins, file.allowed_origins),
            std::mem::take(&mut edge_policy.allowed_origins),
            envoy_listen,
        )?;
        let mcp_sessions = McpSessionTimes {
            ttl_seconds: secs(
                "mcp_session_ttl",
                self.mcp_session_ttl
                    .or(file.mcp_session_ttl)
                    .unwrap_or(mcpgw_core::snapshot::DEFAULT_SESSION_TTL_SECONDS),
                60,
                30 * 86_400,
            )?
            .as_secs(),
            idle_seconds: secs(
                "mcp_session_idle",
                self.mcp_session_idle
                    .or(file.mcp_session_idle)
                    .unwrap_or(mcpgw_core::snapshot::DEFAULT_SESSION_IDLE_SECONDS),
                60,
                30 * 86_400,
            )?
            .as_secs(),
        };
        let secrets = match encryption_key {
            Some(k) if !k.trim().is_empty() => SecretBox::from_encoded_key(k)?,
            _ if dev => SecretBox::dev(),
            _ => return Err(ConfigError::MissingKey),
        };
        let kubernetes = (self.kubernetes || file.kubernetes.unwrap_or(false)).then(|| {
            crate::k8s::KubeSettings::from_env(
                self.kubernetes_namespace
                    .clone()
                    .or(file.kubernetes_namespace.clone()),
                |n| std::env::var(n).ok(),
            )
        });
        Ok(Settings {
            listen,
            database_url,
            data_dir,
            log_format,
            log_level,
            dev,
            secrets,
            federation: FederationSettings {
                separator,
                health_interval,
                failure_threshold,
                resync_interval,
                timeout,
                ssrf: SsrfPolicy {
                    allow_loopback: self.allow_loopback_upstreams
                        || file.allow_loopback_upstreams.unwrap_or(false),
                    allow_link_local: self.allow_link_local_upstreams
                        || file.allow_link_local_upstreams.unwrap_or(false),
                    deny_private: self.deny_private_upstreams
                        || file.deny_private_upstreams.unwrap_or(false),
                },
                limits,
                list_changed_interval,
            },
            xds_listen,
            edge: EdgeSettings {
                envoy_listen,
                public_url: match self.public_url.clone().or(file.public_url) {
                    Some(raw) => Some(
                        crate::edge_config::public_url(&raw)
                            .map_err(|reason| invalid("public_url", reason))?,
                    ),
                    None => None,
                },
                filter_wasm,
                filter_remote,
                cluster_naming,
                upstream_ca_file,
                relay: None,
                relay_auth: None,
                control_plane_tls,
                passthrough: match self.edge_passthrough.clone().or(file.edge_passthrough) {
                    Some(raw) => Some(
                        crate::model::GatewayName::parse(&raw)
                            .map_err(|e| {
                                invalid(
                                    "edge_passthrough",
                                    format!("{raw:?}: {} (it names a gateway)", e.reason),
                                )
                            })?
                            .as_str()
                            .to_owned(),
                    ),
                    None => None,
                },
                ..EdgeSettings::default()
            },
            edge_policy,
            mcp_sessions,
            relay_listen,
            relay_advertise,
            ratelimit_listen,
            ratelimit_advertise,
            redis_url,
            tls,
            insecure_xds,
            relay_limits: crate::relay::Limits::default(),
            api_timeouts: crate::serving::Timeouts::default(),
            auth,
            kubernetes,
        })
    }

    /// The authentication settings (part of [`ServeArgs::resolve`]).
    fn resolve_auth(
        &self,
        file: &FileConfig,
        dev: bool,
        data_dir: Option<&std::path::Path>,
    ) -> Result<crate::auth::AuthSettings, ConfigError> {
        use crate::auth::jwt::Algorithm;
        use crate::auth::token::EmptyScopes;
        let defaults = crate::auth::AuthSettings::default();
        let algorithm = match self.jwt_algorithm.clone().or(file.jwt_algorithm.clone()) {
            None => Algorithm::Es256,
            Some(a) => Algorithm::parse(&a.to_ascii_uppercase())
                .ok_or_else(|| invalid("jwt_algorithm", "must be es256, rs256 or hs256"))?,
        };
        let rsa_key_file = self
            .jwt_rsa_key_file
            .clone()
            .or(file.jwt_rsa_key_file.clone());
        match (&rsa_key_file, algorithm) {
            (None, Algorithm::Rs256) => {
                return Err(invalid(
                    "jwt_rsa_key_file",
                    "rs256 needs the PKCS#8 PEM file of an RSA key (e.g. `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072`)",
                ));
            }
            (Some(path), Algorithm::Rs256) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid("jwt_rsa_key_file", format!("{}: {e}", path.display())))?;
                let der = crate::auth::jwt::pem_block(&text, "PRIVATE KEY").ok_or_else(|| {
                    invalid(
                        "jwt_rsa_key_file",
                        format!(
                            "{}: no -----BEGIN PRIVATE KEY----- (PKCS#8) block",
                            path.display()
                        ),
                    )
                })?;
                crate::auth::jwt::rsa_signer(&der)
                    .map_err(|e| invalid("jwt_rsa_key_file", format!("{}: {e}", path.display())))?;
            }
            (Some(_), _) => {
                return Err(invalid(
                    "jwt_rsa_key_file",
                    "only used with jwt_algorithm rs256",
                ));
            }
            (None, _) => {}
        }
        let issuer = self
            .jwt_issuer
            .clone()
            .or(file.jwt_issuer.clone())
            .unwrap_or_else(|| defaults.jwt.issuer.clone());
        if issuer.trim().is_empty() || issuer.len() > 255 {
            return Err(invalid("jwt_issuer", "must be 1-255 characters"));
        }
        let session_ttl = secs(
            "session_ttl",
            self.session_ttl.or(file.session_ttl).unwrap_or(28_800),
            60,
            30 * 86_400,
        )?;
        let key_grace = secs(
            "jwt_key_grace",
            self.jwt_key_grace.or(file.jwt_key_grace).unwrap_or(86_400),
            60,
            365 * 86_400,
        )?;
        if key_grace < session_ttl {
            return Err(invalid(
                "jwt_key_grace",
                "must be at least session_ttl, or sessions signed just before a rotation would end early",
            ));
        }
        let max_login_failures = self
            .login_max_failures
            .or(file.login_max_failures)
            .unwrap_or(5);
        if !(1..=100).contains(&max_login_failures) {
            return Err(invalid("login_max_failures", "must be between 1 and 100"));
        }
        let lockout = secs(
            "login_lockout",
            self.login_lockout.or(file.login_lockout).unwrap_or(900),
            1,
            86_400,
        )?;
        let empty_scopes = match self
            .token_empty_scopes
            .clone()
            .or(file.token_empty_scopes.clone())
            .as_deref()
        {
            None | Some("deny") => EmptyScopes::Deny,
            Some("inherit") => EmptyScopes::Inherit,
            Some(_) => return Err(invalid("token_empty_scopes", "must be deny or inherit")),
        };
        let email = self.admin_email.clone().or(file.admin_email.clone());
        let password = match (
            self.admin_password_file
                .clone()
                .or(file.admin_password_file.clone()),
            &self.admin_password,
        ) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "admin_password_file",
                    "give admin_password_file or MCPGW_ADMIN_PASSWORD, not both",
                ));
            }
            (Some(path), None) => Some(
                crate::cli::read_secret_file(&path)
                    .map_err(|e| invalid("admin_password_file", format!("{e:#}")))?,
            ),
            (None, Some(p)) if !p.is_empty() => Some(p.clone()),
            _ => None,
        };
        let bootstrap = match (email, password) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    "admin_email",
                    "an admin password is given without MCPGW_ADMIN_EMAIL",
                ));
            }
            (Some(e), None) if dev => {
                crate::auth::normalize_email(&e).map_err(|f| invalid("admin_email", f.reason))?;
                None
            }
            (Some(_), None) => {
                return Err(invalid(
                    "admin_password_file",
                    "MCPGW_ADMIN_EMAIL needs a password: MCPGW_ADMIN_PASSWORD_FILE or MCPGW_ADMIN_PASSWORD (there is no default password outside --dev)",
                ));
            }
            (Some(e), Some(p)) => {
                crate::auth::normalize_email(&e).map_err(|f| invalid("admin_email", f.reason))?;
                crate::auth::password::Hasher::check_policy(&p)
                    .map_err(|r| invalid("admin_password", r.to_string()))?;
                Some(crate::auth::BootstrapAdmin {
                    email: e,
                    password: p,
                })
            }
        };
        let token_file = self
            .admin_token_file
            .clone()
            .or(file.admin_token_file.clone());
        let dev_token = match (dev, token_file) {
            (true, Some(f)) => Some(Some(f)),
            (true, None) => Some(Some(match data_dir {
                Some(d) => d.join("admin.token"),
                None => PathBuf::from("mcpgw-admin.token"),
            })),
            (false, Some(_)) => {
                return Err(invalid(
                    "admin_token_file",
                    "only with --dev: outside it, create an admin (MCPGW_ADMIN_EMAIL) and log in",
                ));
            }
            (false, None) => None,
        };
        let mut oidc_providers = file.oidc_providers.clone().unwrap_or_default();
        for (name, p) in &mut oidc_providers {
            p.validate(name)
                .map_err(|reason| invalid("oidc_providers", format!("{name}: {reason}")))?;
        }
        Ok(crate::auth::AuthSettings {
            oidc_providers,
            metrics_open: self.metrics_open || file.metrics_open.unwrap_or(false),
            jwt: crate::auth::JwtSettings {
                algorithm,
                rsa_key_file,
                issuer,
                session_ttl,
                key_grace,
            },
            password: defaults.password,
            max_login_failures,
            lockout,
            empty_scopes,
            bootstrap,
            dev_token,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn defaults_are_sqlite_on_localhost_4444() {
        let s = ServeArgs::default().resolve(Some(KEY)).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:4444");
        assert!(s.database_url.starts_with("sqlite://mcpgw-data/mcpgw.db"));
        assert_eq!(s.federation.separator, "__");
        assert_eq!(s.federation.health_interval, Duration::from_secs(60));
        assert_eq!(s.xds_listen, Some("127.0.0.1:18000".parse().unwrap()));
        assert_eq!(s.ratelimit_listen, Some("127.0.0.1:18002".parse().unwrap()));
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(s.edge, EdgeSettings::default());
    }

    #[test]
    fn xds_settings_apply_and_off_disables() {
        let args = ServeArgs {
            xds_listen: Some("off".into()),
            envoy_listen: Some("0.0.0.0:10000".into()),
            filter_wasm: Some("/opt/mcpgw/filter.wasm".into()),
            upstream_ca_file: Some("OFF".into()),
            ..Default::default()
        };
        let s = args.resolve(Some(KEY)).unwrap();
        assert_eq!(s.xds_listen, None);
        assert_eq!(s.edge.envoy_listen.to_string(), "0.0.0.0:10000");
        assert_eq!(s.edge.filter_wasm, "/opt/mcpgw/filter.wasm");
        assert_eq!(s.edge.upstream_ca_file, None);
    }

    #[test]
    fn the_module_by_url_and_istio_cluster_names() {
        let sha = "AB".repeat(32);
        let s = ServeArgs {
            wasm_url: Some("https://wasm.example.com/mcpgw_filter.wasm".into()),
            wasm_sha256: Some(sha.clone()),
            cluster_naming: Some("istio".into()),
            cluster_domain: Some("corp.internal".into()),
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        let module = s.edge.filter_remote.unwrap();
        assert_eq!(module.sha256, sha.to_ascii_lowercase());
        assert_eq!(module.endpoint.host, "wasm.example.com");
        assert_eq!(module.endpoint.port, 443);
        assert_eq!(
            s.edge.cluster_naming,
            ClusterNaming::Istio {
                domain: "corp.internal".into()
            }
        );
        // Each bad value is refused naming its setting.
        let cases = [
            (
                "url without digest",
                Some("http://w/m.wasm"),
                None,
                None,
                None,
                "wasm_sha256",
            ),
            (
                "digest without url",
                None,
                Some(sha.as_str()),
                None,
                None,
                "wasm_url",
            ),
            (
                "short digest",
                Some("http://w/m.wasm"),
                Some("abc"),
                None,
                None,
                "wasm_sha256",
            ),
            (
                "ftp",
                Some("ftp://w/m.wasm"),
                Some(sha.as_str()),
                None,
                None,
                "wasm_url",
            ),
            (
                "naming",
                None,
                None,
                Some("linkerd"),
                None,
                "cluster_naming",
            ),
            (
                "domain",
                None,
                None,
                Some("istio"),
                Some("a..b"),
                "cluster_domain",
            ),
        ];
        for (name, url, digest, naming, domain, field) in cases {
            let err = ServeArgs {
                wasm_url: url.map(str::to_owned),
                wasm_sha256: digest.map(str::to_owned),
                cluster_naming: naming.map(str::to_owned),
                cluster_domain: domain.map(str::to_owned),
                ..Default::default()
            }
            .resolve(Some(KEY))
            .unwrap_err();
            assert!(
                matches!(&err, ConfigError::FieldInvalid { field: f, .. } if *f == field),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn refuses_to_start_without_key_unless_dev() {
        assert!(matches!(
            ServeArgs::default().resolve(None),
            Err(ConfigError::MissingKey)
        ));
        let dev = ServeArgs {
            dev: true,
            ..Default::default()
        };
        assert!(dev.resolve(None).is_ok());
    }

    #[test]
    fn the_edge_policy_file_is_validated_with_the_filters_rules() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("policy.json");
        std::fs::write(&good, r#"{"denied_tools":["gw__rm"],"list_page_size":25}"#).unwrap();
        let s = ServeArgs {
            edge_policy: Some(good),
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(s.edge_policy.denied_tools, ["gw__rm"]);
        assert_eq!(s.edge_policy.list_page_size, 25);
        for (body, names) in [
            (r#"{"denyed_tools":[]}"#, "denyed_tools"),
            (r#"{"max_body_bytes":0}"#, "policy.max_body_bytes"),
            ("not json", "edge_policy"),
        ] {
            let bad = dir.path().join("bad.json");
            std::fs::write(&bad, body).unwrap();
            let err = ServeArgs {
                edge_policy: Some(bad),
                ..Default::default()
            }
            .resolve(Some(KEY))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("edge_policy") && err.contains(names),
                "{body}: {err}"
            );
        }
        let missing = ServeArgs {
            edge_policy: Some(dir.path().join("absent.json")),
            ..Default::default()
        }
        .resolve(Some(KEY));
        assert!(missing.is_err());
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases: Vec<(&str, ServeArgs, &str)> = vec![
            (
                "listen",
                ServeArgs {
                    listen: Some("nope".into()),
                    ..Default::default()
                },
                "listen",
            ),
            (
                "db",
                ServeArgs {
                    database_url: Some("mysql://x".into()),
                    ..Default::default()
                },
                "database_url",
            ),
            (
                "sep",
                ServeArgs {
                    name_separator: Some("a b".into()),
                    ..Default::default()
                },
                "name_separator",
            ),
            (
                "interval",
                ServeArgs {
                    health_interval: Some(0),
                    ..Default::default()
                },
                "health_interval",
            ),
            (
                "threshold",
                ServeArgs {
                    health_failure_threshold: Some(0),
                    ..Default::default()
                },
                "health_failure_threshold",
            ),
            (
                "log",
                ServeArgs {
                    log_level: Some("[[[".into()),
                    ..Default::default()
                },
                "log_level",
            ),
            (
                "xds",
                ServeArgs {
                    xds_listen: Some("18000".into()),
                    ..Default::default()
                },
                "xds_listen",
            ),
            (
                "envoy listen",
                ServeArgs {
                    envoy_listen: Some("localhost:8080".into()),
                    ..Default::default()
                },
                "envoy_listen",
            ),
            (
                "wasm",
                ServeArgs {
                    filter_wasm: Some(" ".into()),
                    ..Default::default()
                },
                "filter_wasm",
            ),
            (
                "ca",
                ServeArgs {
                    upstream_ca_file: Some("a\nb".into()),
                    ..Default::default()
                },
                "upstream_ca_file",
            ),
            (
                "relay listen",
                ServeArgs {
                    relay_listen: Some("relay:18001".into()),
                    ..Default::default()
                },
                "relay_listen",
            ),
            (
                "relay advertise without port",
                ServeArgs {
                    relay_advertise: Some("relay.mcpgw.svc".into()),
                    ..Default::default()
                },
                "relay_advertise",
            ),
            (
                "relay advertise with a path",
                ServeArgs {
                    relay_advertise: Some("relay:18001/x".into()),
                    ..Default::default()
                },
                "relay_advertise",
            ),
            (
                "public url without a scheme",
                ServeArgs {
                    public_url: Some("mcp.example.com".into()),
                    ..Default::default()
                },
                "public_url",
            ),
            (
                "public url with a query",
                ServeArgs {
                    public_url: Some("https://mcp.example.com/?k=v".into()),
                    ..Default::default()
                },
                "public_url",
            ),
            (
                "public url with user info",
                ServeArgs {
                    public_url: Some("https://u:p@mcp.example.com".into()),
                    ..Default::default()
                },
                "public_url",
            ),
            (
                "a host with a path",
                ServeArgs {
                    allowed_hosts: vec!["mcp.example.com/mcp".into()],
                    ..Default::default()
                },
                "allowed_hosts",
            ),
            (
                "any host in a list",
                ServeArgs {
                    allowed_hosts: vec!["a.example".into(), "*".into()],
                    ..Default::default()
                },
                "allowed_hosts",
            ),
            (
                "an origin without a scheme",
                ServeArgs {
                    allowed_origins: vec!["app.example.com".into()],
                    ..Default::default()
                },
                "allowed_origins",
            ),
            (
                "an origin with a path",
                ServeArgs {
                    allowed_origins: vec!["https://app.example.com/".into()],
                    ..Default::default()
                },
                "allowed_origins",
            ),
            (
                "none in a list",
                ServeArgs {
                    allowed_origins: vec!["none".into(), "https://a.example".into()],
                    ..Default::default()
                },
                "allowed_origins",
            ),
            (
                "relay on every interface, unadvertised",
                ServeArgs {
                    relay_listen: Some("0.0.0.0:18001".into()),
                    ..Default::default()
                },
                "relay_advertise",
            ),
        ];
        for (name, args, field) in cases {
            match args.resolve(Some(KEY)) {
                Err(ConfigError::FieldInvalid { field: f, .. }) => assert_eq!(f, field, "{name}"),
                other => panic!("{name}: expected FieldInvalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_public_url_is_optional_and_loses_its_trailing_slash() {
        let s = ServeArgs::default().resolve(Some(KEY)).unwrap();
        assert_eq!(s.edge.public_url, None);
        let s = ServeArgs {
            public_url: Some("https://mcp.example.com/edge/".into()),
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(
            s.edge.public_url.as_deref(),
            Some("https://mcp.example.com/edge")
        );
    }

    #[test]
    fn the_relay_is_on_by_default_and_can_be_advertised_or_turned_off() {
        let s = ServeArgs::default().resolve(Some(KEY)).unwrap();
        assert_eq!(s.relay_listen, Some(DEFAULT_RELAY_LISTEN.parse().unwrap()));
        assert_eq!(s.relay_advertise, None);
        let s = ServeArgs {
            relay_listen: Some("0.0.0.0:18001".into()),
            relay_advertise: Some("relay.mcpgw.svc:18001".into()),
            insecure_xds: true,
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(
            s.relay_advertise,
            Some(UpstreamEndpoint {
                host: "relay.mcpgw.svc".into(),
                port: 18001,
                tls: false
            })
        );
        let s = ServeArgs {
            relay_listen: Some("OFF".into()),
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(s.relay_listen, None);
    }

    #[test]
    fn listeners_envoys_reach_off_loopback_need_tls_or_an_explicit_insecure_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "pem").unwrap();
            p
        };
        let (cert, key, ca) = (file("cert.pem"), file("key.pem"), file("ca.pem"));
        let public_xds = || ServeArgs {
            xds_listen: Some("0.0.0.0:18000".into()),
            relay_listen: Some("off".into()),
            ratelimit_listen: Some("off".into()),
            ..Default::default()
        };
        match public_xds().resolve(Some(KEY)) {
            Err(ConfigError::FieldInvalid { field, reason }) => {
                assert_eq!(field, "xds_listen");
                assert!(reason.contains("--insecure-xds"), "{reason}");
            }
            other => panic!("plaintext xDS off loopback: {other:?}"),
        }
        let s = ServeArgs {
            insecure_xds: true,
            ..public_xds()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert!(s.insecure_xds && s.tls.is_none());
        let s = ServeArgs {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            tls_client_ca: Some(ca.clone()),
            ..public_xds()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(s.tls.unwrap().client_ca, ca);
        let public_relay = ServeArgs {
            relay_listen: Some("10.1.2.3:18001".into()),
            ..Default::default()
        };
        assert!(matches!(
            public_relay.resolve(Some(KEY)),
            Err(ConfigError::FieldInvalid {
                field: "relay_listen",
                ..
            })
        ));
        let public_ratelimit = ServeArgs {
            ratelimit_listen: Some("10.1.2.3:18002".into()),
            ..Default::default()
        };
        assert!(matches!(
            public_ratelimit.resolve(Some(KEY)),
            Err(ConfigError::FieldInvalid {
                field: "ratelimit_listen",
                ..
            })
        ));
        let tls_ratelimit_only = ServeArgs {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            tls_client_ca: Some(ca.clone()),
            relay_listen: Some("off".into()),
            ..Default::default()
        };
        match tls_ratelimit_only.resolve(Some(KEY)) {
            Err(ConfigError::FieldInvalid { field, reason }) => {
                assert_eq!(field, "envoy_tls_ca");
                assert!(reason.contains("rate-limit service"), "{reason}");
            }
            other => panic!("TLS without the Envoys' files: {other:?}"),
        }
        // With TLS on and the relay on, Envoys need the files to reach the relay with.
        let tls_relay = ServeArgs {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            tls_client_ca: Some(ca.clone()),
            ..Default::default()
        };
        assert!(matches!(
            tls_relay.clone().resolve(Some(KEY)),
            Err(ConfigError::FieldInvalid {
                field: "envoy_tls_ca",
                ..
            })
        ));
        let s = ServeArgs {
            envoy_tls_ca: Some("/etc/mcpgw/ca.pem".into()),
            envoy_tls_cert: Some("/etc/mcpgw/envoy.pem".into()),
            envoy_tls_key: Some("/etc/mcpgw/envoy.key".into()),
            ..tls_relay
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(
            s.edge.control_plane_tls.unwrap().cert_file,
            "/etc/mcpgw/envoy.pem"
        );
        let partial = ServeArgs {
            tls_cert: Some(cert),
            ..Default::default()
        };
        assert!(matches!(
            partial.resolve(Some(KEY)),
            Err(ConfigError::FieldInvalid {
                field: "tls_cert",
                ..
            })
        ));
        let missing = ServeArgs {
            tls_cert: Some(dir.path().join("absent.pem")),
            tls_key: Some(key),
            tls_client_ca: Some(ca),
            ..Default::default()
        };
        assert!(matches!(
            missing.resolve(Some(KEY)),
            Err(ConfigError::FieldInvalid {
                field: "tls_cert",
                ..
            })
        ));
    }

    #[test]
    fn dev_mode_is_refused_unless_every_listener_is_on_loopback() {
        let dev = |f: fn(&mut ServeArgs)| {
            let mut a = ServeArgs {
                dev: true,
                ..Default::default()
            };
            f(&mut a);
            a.resolve(None)
        };
        assert!(dev(|_| {}).is_ok());
        type Edit = fn(&mut ServeArgs);
        let cases: [(&str, Edit); 4] = [
            ("listen", |a| a.listen = Some("0.0.0.0:4444".into())),
            ("xds_listen", |a| {
                a.xds_listen = Some("10.0.0.1:18000".into());
                a.insecure_xds = true;
            }),
            ("relay_listen", |a| {
                a.relay_listen = Some("0.0.0.0:18001".into());
                a.relay_advertise = Some("relay:18001".into());
                a.insecure_xds = true;
            }),
            ("envoy_listen", |a| {
                a.envoy_listen = Some("0.0.0.0:8080".into())
            }),
        ];
        for (want, f) in cases {
            match dev(f) {
                Err(ConfigError::FieldInvalid { field, reason }) => {
                    assert_eq!(field, want);
                    assert!(reason.contains("--dev"), "{reason}");
                }
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn authentication_settings_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "a long enough password\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Defaults: ES256, 8 h sessions, closed /metrics, no bootstrap, no dev token.
        let s = ServeArgs::default().resolve(Some(KEY)).unwrap();
        assert_eq!(s.auth.jwt.algorithm, crate::auth::jwt::Algorithm::Es256);
        assert!(!s.auth.metrics_open && s.auth.bootstrap.is_none() && s.auth.dev_token.is_none());
        let s = ServeArgs {
            admin_email: Some("ops@example.com".into()),
            admin_password_file: Some(pw.clone()),
            jwt_algorithm: Some("HS256".into()),
            metrics_open: true,
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(
            s.auth.bootstrap.as_ref().unwrap().password,
            "a long enough password"
        );
        assert!(!format!("{:?}", s.auth).contains("a long enough password"));
        assert_eq!(s.auth.jwt.algorithm, crate::auth::jwt::Algorithm::Hs256);
        // Dev mode mints a token, written to the data directory.
        let s = ServeArgs {
            dev: true,
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        }
        .resolve(None)
        .unwrap();
        assert_eq!(
            s.auth.dev_token,
            Some(Some(dir.path().join("data").join("admin.token")))
        );
        type Edit = fn(&mut ServeArgs);
        let cases: [(&str, Edit); 9] = [
            ("admin_password_file", |a| {
                a.admin_email = Some("ops@example.com".into())
            }),
            ("admin_email", |a| {
                a.admin_password = Some("a long enough password".into())
            }),
            ("admin_email", |a| {
                a.admin_email = Some("not an email".into());
                a.admin_password = Some("a long enough password".into());
            }),
            ("admin_password", |a| {
                a.admin_email = Some("ops@example.com".into());
                a.admin_password = Some("short".into());
            }),
            ("admin_token_file", |a| {
                a.admin_token_file = Some("t".into())
            }),
            ("jwt_algorithm", |a| a.jwt_algorithm = Some("none".into())),
            ("jwt_rsa_key_file", |a| {
                a.jwt_algorithm = Some("rs256".into())
            }),
            ("jwt_key_grace", |a| {
                a.session_ttl = Some(7200);
                a.jwt_key_grace = Some(3600);
            }),
            ("token_empty_scopes", |a| {
                a.token_empty_scopes = Some("allow".into())
            }),
        ];
        for (want, edit) in cases {
            let mut a = ServeArgs::default();
            edit(&mut a);
            match a.resolve(Some(KEY)) {
                Err(ConfigError::FieldInvalid { field, .. }) => assert_eq!(field, want),
                other => panic!("{want}: {other:?}"),
            }
        }
        // A password file others can read is refused.
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ServeArgs {
            admin_email: Some("ops@example.com".into()),
            admin_password_file: Some(pw),
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap_err()
        .to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_loopback_listener_answers_its_loopback_names_and_browsers_on_this_machine() {
        let s = ServeArgs::default().resolve(Some(KEY)).unwrap();
        assert_eq!(
            s.edge_policy.allowed_hosts,
            ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"]
        );
        assert_eq!(
            s.edge_policy.allowed_origins,
            ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
        );
        let hosts = |listen: &str| {
            ServeArgs {
                envoy_listen: Some(listen.into()),
                insecure_xds: true,
                ..Default::default()
            }
            .resolve(Some(KEY))
            .unwrap()
            .edge_policy
        };
        assert_eq!(
            hosts("127.0.0.2:9000").allowed_hosts,
            [
                "127.0.0.1:9000",
                "localhost:9000",
                "[::1]:9000",
                "127.0.0.2:9000"
            ]
        );
        assert_eq!(
            hosts("[::1]:80").allowed_hosts,
            [
                "127.0.0.1:80",
                "localhost:80",
                "[::1]:80",
                "127.0.0.1",
                "localhost",
                "[::1]"
            ],
            "port 80 is left out of Host by clients"
        );
        assert_eq!(
            hosts("127.0.0.1:0").allowed_hosts,
            ["127.0.0.1:*", "localhost:*", "[::1]:*"]
        );
        // Off loopback the names are unknown: any Host, no browser origin.
        let public = hosts("0.0.0.0:8080");
        assert!(public.allowed_hosts.is_empty());
        assert!(public.allowed_origins.is_empty());
        // What the defaults admit, with the filter's matcher.
        let p = hosts("127.0.0.1:8080");
        for (host, ok) in [
            ("127.0.0.1:8080", true),
            ("localhost:8080", true),
            ("[::1]:8080", true),
            ("localhost:8081", false),
            ("attacker.example:8080", false),
        ] {
            assert_eq!(
                mcpgw_core::origin::host_allowed(&p.allowed_hosts, host),
                ok,
                "{host}"
            );
        }
        for (origin, ok) in [
            ("http://localhost:6274", true),
            ("http://127.0.0.1:3000", true),
            ("https://attacker.example", false),
            ("http://localhost.attacker.example", false),
        ] {
            assert_eq!(
                mcpgw_core::origin::origin_allowed(&[&p.allowed_origins], origin),
                ok,
                "{origin}"
            );
        }
    }

    #[test]
    fn allowed_hosts_and_origins_come_from_flags_file_or_policy_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.json");
        std::fs::write(
            &policy,
            r#"{"allowed_hosts":["from-policy.example"],"allowed_origins":["https://policy.example"]}"#,
        )
        .unwrap();
        let config = dir.path().join("mcpgw.toml");
        std::fs::write(
            &config,
            "allowed_hosts = [\"from-file.example:443\", \"*.corp.example\"]\n",
        )
        .unwrap();
        let s = ServeArgs {
            edge_policy: Some(policy.clone()),
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(s.edge_policy.allowed_hosts, ["from-policy.example"]);
        assert_eq!(s.edge_policy.allowed_origins, ["https://policy.example"]);
        let s = ServeArgs {
            edge_policy: Some(policy.clone()),
            config: Some(config.clone()),
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(
            s.edge_policy.allowed_hosts,
            ["from-file.example:443", "*.corp.example"]
        );
        assert_eq!(s.edge_policy.allowed_origins, ["https://policy.example"]);
        let s = ServeArgs {
            edge_policy: Some(policy),
            config: Some(config),
            allowed_hosts: vec!["*".into()],
            allowed_origins: vec!["none".into()],
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert!(s.edge_policy.allowed_hosts.is_empty(), "* is any host");
        assert!(
            s.edge_policy.allowed_origins.is_empty(),
            "none is no origin"
        );
        let s = ServeArgs {
            allowed_origins: vec![" https://app.example.com".into(), "http://[::1]:*".into()],
            ..Default::default()
        }
        .resolve(Some(KEY))
        .unwrap();
        assert_eq!(
            s.edge_policy.allowed_origins,
            ["https://app.example.com", "http://[::1]:*"]
        );
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcpgw.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:5555\"\nname_separator = \"-\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            name_separator: Some("::".into()),
            ..Default::default()
        };
        let s = args.resolve(Some(KEY)).unwrap();
        assert_eq!(s.listen.port(), 5555);
        assert_eq!(s.federation.separator, "::");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(matches!(
            args.resolve(Some(KEY)),
            Err(ConfigError::File { .. })
        ));
    }

    #[test]
    fn oidc_providers_come_from_the_file_with_their_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        crate::auth::write_private(&secret, "s3cret\n").unwrap();
        let path = dir.path().join("mcpgw.toml");
        let provider = |issuer: &str| {
            format!(
                "[oidc_providers.corp]\nissuer = \"{issuer}\"\nclient_id = \"mcpgw\"\n\
                 client_secret_file = \"{}\"\n\
                 redirect_uri = \"https://gw.example.com/auth/oidc/corp/callback\"\n\
                 [oidc_providers.corp.group_roles]\nadmins = [\"platform_admin\"]\n",
                secret.display()
            )
        };
        std::fs::write(&path, provider("https://idp.example.com")).unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let s = args.resolve(Some(KEY)).unwrap();
        let corp = &s.auth.oidc_providers["corp"];
        assert_eq!(corp.client_secret.as_ref().unwrap().0, "s3cret");
        assert!(
            !format!("{:?}", s.auth).contains("s3cret"),
            "never in Debug"
        );
        std::fs::write(&path, provider("http://idp.example.com")).unwrap();
        let e = args.resolve(Some(KEY)).unwrap_err().to_string();
        assert!(e.contains("oidc_providers") && e.contains("corp"), "{e}");
    }

    #[test]
    fn mcp_session_times_come_from_flags_or_the_file_and_are_bounded() {
        let s = ServeArgs::default().resolve(Some(KEY)).unwrap();
        assert_eq!(s.mcp_sessions, McpSessionTimes::default());
        assert_eq!(s.mcp_sessions.ttl_seconds, 86_400);
        assert_eq!(s.mcp_sessions.idle_seconds, 1_800);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcpgw.toml");
        std::fs::write(&path, "mcp_session_ttl = 3600\nmcp_session_idle = 120\n").unwrap();
        let from_file = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let s = from_file.resolve(Some(KEY)).unwrap();
        assert_eq!(
            s.mcp_sessions,
            McpSessionTimes {
                ttl_seconds: 3600,
                idle_seconds: 120
            }
        );
        let flag_wins = ServeArgs {
            mcp_session_idle: Some(600),
            ..from_file
        };
        assert_eq!(
            flag_wins
                .resolve(Some(KEY))
                .unwrap()
                .mcp_sessions
                .idle_seconds,
            600
        );
        // The snapshot carries them, and validates them as the filter does.
        let settings = crate::snapshot::session_settings(&SecretBox::dev(), s.mcp_sessions);
        assert_eq!((settings.ttl_seconds, settings.idle_seconds), (3600, 120));
        let snap = mcpgw_core::snapshot::Snapshot {
            session: Some(settings),
            ..Default::default()
        };
        snap.validate().unwrap();
        for (field, edit) in [
            (
                "mcp_session_ttl",
                ServeArgs {
                    mcp_session_ttl: Some(59),
                    ..Default::default()
                },
            ),
            (
                "mcp_session_ttl",
                ServeArgs {
                    mcp_session_ttl: Some(30 * 86_400 + 1),
                    ..Default::default()
                },
            ),
            (
                "mcp_session_idle",
                ServeArgs {
                    mcp_session_idle: Some(0),
                    ..Default::default()
                },
            ),
        ] {
            match edit.resolve(Some(KEY)) {
                Err(ConfigError::FieldInvalid { field: f, reason }) => {
                    assert_eq!(f, field);
                    assert!(reason.contains("between 60 and 2592000"), "{reason}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_passthrough_gateway_is_named_by_flag_or_file_and_must_be_a_gateway_name() {
        let s = ServeArgs::default().resolve(Some(KEY)).unwrap();
        assert_eq!(s.edge.passthrough, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcpgw.toml");
        std::fs::write(&path, "edge_passthrough = \"docs\"\n").unwrap();
        let from_file = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert_eq!(
            from_file
                .resolve(Some(KEY))
                .unwrap()
                .edge
                .passthrough
                .as_deref(),
            Some("docs")
        );
        let flag_wins = ServeArgs {
            edge_passthrough: Some("search.v2".into()),
            ..from_file
        };
        assert_eq!(
            flag_wins
                .resolve(Some(KEY))
                .unwrap()
                .edge
                .passthrough
                .as_deref(),
            Some("search.v2")
        );
        for bad in ["", "a b", "https://mcp.example.com/mcp"] {
            let args = ServeArgs {
                edge_passthrough: Some(bad.into()),
                ..Default::default()
            };
            match args.resolve(Some(KEY)) {
                Err(ConfigError::FieldInvalid { field, reason }) => {
                    assert_eq!(field, "edge_passthrough");
                    assert!(
                        reason.contains(&format!("{bad:?}")) && reason.contains("names a gateway"),
                        "{reason}"
                    );
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
