//! The `mcpgw` command line: `serve`, and operator verbs that talk to the admin API
//! (`gateways`, `servers`, `tools`, `export`, `import`) with table, JSON or YAML output.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::config::ServeArgs;

mod edge;
pub use edge::{EdgeCmd, EdgeKind};

/// mcpgw control plane.
#[derive(Debug, Parser)]
#[command(
    name = "mcpgw",
    version,
    about = "mcpgw control plane and operator CLI"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (admin API, store, federation).
    Serve(Box<ServeArgs>),
    /// Print the OpenAPI document of the admin API.
    Openapi,
    /// Print the CustomResourceDefinitions of mcpgw.io (or write one file each into `--dir`).
    Crds {
        /// Write `mcpgw.io_{plural}.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Manage gateways (upstream MCP servers).
    Gateways {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: GatewayCmd,
    },
    /// Manage virtual servers.
    Servers {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: ServerCmd,
    },
    /// Inspect tools.
    Tools {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: ToolCmd,
    },
    /// Manage token issuers the edge accepts (admin.keys).
    Issuers {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: EdgeCmd,
    },
    /// Manage virtual servers' authorization policies.
    Policies {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: EdgeCmd,
    },
    /// Manage request limits (per virtual server, and `default`).
    Limits {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: EdgeCmd,
    },
    /// Manage guardrail plugins.
    Plugins {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: EdgeCmd,
    },
    /// Export the registry to stdout or a file.
    Export {
        #[command(flatten)]
        api: ApiArgs,
        /// Kinds to export (comma-separated: gateways,tools,resources,prompts,servers,issuers,
        /// policies,limits,plugins).
        #[arg(long)]
        types: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
    },
    /// Sign in to the admin API (email and password, or an API token) and keep the token
    /// in the user's config directory (0600) for the other commands.
    Login(LoginArgs),
    /// Forget the stored token (and end the session on the server).
    Logout {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Manage your API tokens.
    Tokens {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Administer users directly in the database (no API; for the first admin and recovery).
    Admin {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Import an mcpgw or ContextForge export file.
    Import {
        #[command(flatten)]
        api: ApiArgs,
        /// The export file.
        file: PathBuf,
        /// What to do with existing names.
        #[arg(long, value_enum, default_value = "update")]
        conflict_strategy: Strategy,
        /// Show the plan only.
        #[arg(long)]
        dry_run: bool,
        /// Kinds to import (comma-separated: gateways,tools,resources,prompts,servers,issuers,
        /// policies,limits,plugins).
        #[arg(long)]
        types: Option<String>,
    },
}

/// Where the API is and how to print.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Admin API base URL.
    #[arg(
        long,
        env = "MCPGW_API_URL",
        default_value = "http://127.0.0.1:4444",
        global = true
    )]
    pub api_url: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Output,
}

/// `mcpgw login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Email to sign in with; the password comes from `--password-file`, MCPGW_PASSWORD,
    /// or standard input when it is not a terminal.
    #[arg(long)]
    pub email: Option<String>,
    /// File holding the password (one line; readable by its owner only).
    #[arg(long, value_name = "PATH", requires = "email")]
    pub password_file: Option<PathBuf>,
    /// Store an API token instead (file with one line; readable by its owner only).
    #[arg(long, value_name = "PATH", conflicts_with = "email")]
    pub api_token_file: Option<PathBuf>,
    /// Log in through this OpenID provider (as the control plane names it): prints the URL
    /// to open in a browser and waits for the provider's redirect on a loopback port.
    #[arg(long, value_name = "PROVIDER", conflicts_with_all = ["email", "api_token_file"])]
    pub oidc: Option<String>,
    /// With `--oidc`: no loopback port (a browser on another machine); the page the login
    /// ends on shows a code to paste on standard input.
    #[arg(long, requires = "oidc")]
    pub paste: bool,
    /// With `--oidc`: seconds to wait for the login [default: 300].
    #[arg(long, requires = "oidc", default_value_t = 300)]
    pub wait: u64,
}

/// Where the registry database is (for `mcpgw admin`).
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Data directory of the default SQLite database [default: ./mcpgw-data].
    #[arg(long, env = "MCPGW_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `sqlite:…` or `postgres://…` [default: SQLite in the data directory].
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
}

/// `mcpgw admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Create a platform admin (the password from `--password-file` or MCPGW_ADMIN_PASSWORD).
    Create {
        /// Email.
        #[arg(long)]
        email: String,
        /// File holding the password (one line; readable by its owner only).
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
    },
    /// Set a user's password and lift its login lockout (recovery).
    SetPassword {
        /// Email.
        #[arg(long)]
        email: String,
        /// File holding the password (one line; readable by its owner only).
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
    },
}

/// `mcpgw tokens …`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an API token; its secret is printed once.
    Create {
        /// Name (unique among your tokens).
        #[arg(long)]
        name: String,
        /// Permission, `area.*` or `*` (repeatable); none: the token may do nothing.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// Team id or `*` (repeatable); none: no team's items.
        #[arg(long = "team")]
        teams: Vec<String>,
        /// Virtual server id or `*` (repeatable); none: no virtual server.
        #[arg(long = "server")]
        servers: Vec<String>,
        /// Client address or CIDR range the token is limited to (repeatable; none: any).
        #[arg(long = "ip-range")]
        ip_ranges: Vec<String>,
        /// Days until it expires (1-3650) [default: 90].
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List your API tokens.
    List,
    /// Revoke an API token by id.
    Revoke {
        /// Token id.
        id: String,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Import conflict strategies.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Strategy {
    /// Keep existing entries.
    Skip,
    /// Overwrite existing entries.
    Update,
    /// Import under a new name.
    Rename,
    /// Refuse the import on any conflict.
    Fail,
}

/// `mcpgw gateways …`
#[derive(Debug, Subcommand)]
pub enum GatewayCmd {
    /// Register a gateway and discover its catalog.
    Add(Box<GatewayAdd>),
    /// List gateways.
    List {
        /// Only with any of these tags (comma-separated).
        #[arg(long)]
        tags: Option<String>,
    },
    /// Show one gateway (id or name).
    Get {
        /// Id or name.
        gateway: String,
    },
    /// Delete a gateway (id or name) and its catalog.
    Rm {
        /// Id or name.
        gateway: String,
    },
    /// Re-discover a gateway now (id or name).
    Refresh {
        /// Id or name.
        gateway: String,
    },
    /// Enable a gateway.
    Enable {
        /// Id or name.
        gateway: String,
    },
    /// Disable a gateway.
    Disable {
        /// Id or name.
        gateway: String,
    },
    /// List a gateway's tool-definition changes held for review (with diff and findings).
    Changes {
        /// Id or name.
        gateway: String,
        /// pending (default), approved, rejected, superseded or all.
        #[arg(long)]
        status: Option<String>,
    },
    /// Approve a held tool-definition change: it is pinned and served.
    Approve {
        /// Id or name of the gateway.
        gateway: String,
        /// Change id (from `mcpgw gateways changes`).
        change: String,
        /// Approve a definition the hidden-instruction scan flagged.
        #[arg(long)]
        force: bool,
    },
    /// Reject a held tool-definition change: the approved definition stays.
    Reject {
        /// Id or name of the gateway.
        gateway: String,
        /// Change id.
        change: String,
    },
    /// Show (or, with options, set) a gateway's pinning policy and its pinned tools.
    Pinning {
        /// Id or name.
        gateway: String,
        /// serve-approved or withhold.
        #[arg(long)]
        on_change: Option<String>,
        /// auto-approve or hold.
        #[arg(long)]
        new_tools: Option<String>,
        /// approve or hold.
        #[arg(long)]
        first_discovery: Option<String>,
    },
    /// Show the key an upstream verifies the gateway's identity headers with (mode
    /// identity-header).
    IdentityKey {
        /// Id or name.
        gateway: String,
    },
}

/// `mcpgw gateways add`.
#[derive(Debug, Args)]
pub struct GatewayAdd {
    /// Unique name (prefixes discovered names).
    #[arg(long)]
    pub name: String,
    /// MCP endpoint URL.
    #[arg(long)]
    pub url: String,
    /// streamable_http or sse.
    #[arg(long, default_value = "streamable_http")]
    pub transport: String,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub auth: UpstreamAuthArgs,
    #[command(flatten)]
    pub identity: UpstreamIdentityArgs,
    /// Store only; discover on the next refresh.
    #[arg(long)]
    pub no_discover: bool,
}

/// Credentials of an upstream, from flags, owner-only files or the environment.
#[derive(Debug, Args)]
pub struct UpstreamAuthArgs {
    /// Bearer token for the upstream. Visible in the process list: prefer
    /// `--auth-token-file` or the `MCPGW_AUTH_TOKEN` environment variable.
    #[arg(long, env = "MCPGW_UPSTREAM_TOKEN", hide_env_values = true)]
    pub bearer_token: Option<String>,
    /// File holding the upstream's bearer token (one line; readable by its owner only).
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,
    /// Basic credentials `user:password`. Visible in the process list: prefer
    /// `--auth-username` with `--auth-password-file` or `MCPGW_AUTH_PASSWORD`.
    #[arg(long)]
    pub basic: Option<String>,
    /// User name for basic credentials; the password comes from `--auth-password-file`
    /// or the `MCPGW_AUTH_PASSWORD` environment variable.
    #[arg(long, value_name = "USER")]
    pub auth_username: Option<String>,
    /// File holding the basic password (one line; readable by its owner only).
    #[arg(long, value_name = "PATH", requires = "auth_username")]
    pub auth_password_file: Option<PathBuf>,
    /// Custom header `Name: value` (repeatable). Visible in the process list: prefer
    /// `--header-file`.
    #[arg(long)]
    pub header: Vec<String>,
    /// Custom header whose value is read from a file: `Name=PATH` (repeatable).
    #[arg(long, value_name = "NAME=PATH")]
    pub header_file: Vec<String>,
}

/// As whom the Envoys call the upstream on a principal's behalf.
#[derive(Debug, Args)]
pub struct UpstreamIdentityArgs {
    /// none, static (default: the stored credentials), identity-header (the principal as
    /// a signed header) or token-exchange (RFC 8693, with the --exchange-* flags).
    #[arg(long, value_name = "MODE")]
    pub identity: Option<String>,
    /// token-exchange: the authorization server's token endpoint.
    #[arg(long, value_name = "URL")]
    pub token_endpoint: Option<String>,
    /// token-exchange: the gateway's OAuth client id there.
    #[arg(long)]
    pub exchange_client_id: Option<String>,
    /// token-exchange: file holding the client secret (one line; owner-only), or the
    /// `MCPGW_EXCHANGE_CLIENT_SECRET` environment variable.
    #[arg(long, value_name = "PATH")]
    pub exchange_client_secret_file: Option<PathBuf>,
    /// token-exchange: `audience` to ask for.
    #[arg(long)]
    pub exchange_audience: Option<String>,
    /// token-exchange: `resource` to ask for.
    #[arg(long)]
    pub exchange_resource: Option<String>,
    /// token-exchange: `scope` to ask for.
    #[arg(long)]
    pub exchange_scope: Option<String>,
}

/// The `identity` of a gateway body from the flags (`None`: not given).
pub fn upstream_identity(
    a: UpstreamIdentityArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<Value>> {
    let exchange_flags = a.token_endpoint.is_some()
        || a.exchange_client_id.is_some()
        || a.exchange_client_secret_file.is_some()
        || a.exchange_audience.is_some()
        || a.exchange_resource.is_some()
        || a.exchange_scope.is_some();
    let Some(mode) = a.identity else {
        if exchange_flags {
            bail!("the --exchange-* and --token-endpoint flags need --identity token-exchange");
        }
        return Ok(None);
    };
    if crate::model::IdentityMode::parse(&mode).is_none() {
        bail!("--identity: none, static, identity-header or token-exchange, not {mode:?}");
    }
    if mode != "token-exchange" {
        if exchange_flags {
            bail!("the --exchange-* and --token-endpoint flags need --identity token-exchange");
        }
        return Ok(Some(json!({"mode": mode})));
    }
    let secret = match &a.exchange_client_secret_file {
        Some(path) => Some(read_secret_file(path)?),
        None => env("MCPGW_EXCHANGE_CLIENT_SECRET").filter(|s| !s.is_empty()),
    };
    let (Some(endpoint), Some(client_id), Some(secret)) =
        (a.token_endpoint, a.exchange_client_id, secret)
    else {
        bail!(
            "--identity token-exchange needs --token-endpoint, --exchange-client-id and \
             --exchange-client-secret-file (or MCPGW_EXCHANGE_CLIENT_SECRET)"
        );
    };
    Ok(Some(json!({
        "mode": mode,
        "token_exchange": {
            "token_endpoint": endpoint, "client_id": client_id,
            "audience": a.exchange_audience, "resource": a.exchange_resource,
            "scope": a.exchange_scope,
        },
        "client_secret": secret,
    })))
}

/// `mcpgw servers …`
#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// Create a virtual server.
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// Tool id or name (repeatable).
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// Resource id or name (repeatable).
        #[arg(long = "resource")]
        resources: Vec<String>,
        /// Prompt id or name (repeatable).
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        /// Tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// How tools and prompts are named: `prefixed` (`{gateway}{sep}{name}`) or
        /// `upstream` (each upstream's own names; colliding members are refused)
        /// [default: prefixed].
        #[arg(long, value_parser = ["prefixed", "upstream"])]
        naming: Option<String>,
        /// Browser origin admitted on the server, `scheme://host[:port]` (repeatable).
        #[arg(long = "allowed-origin")]
        allowed_origins: Vec<String>,
    },
    /// List virtual servers.
    List,
    /// Show one (id or name).
    Get {
        /// Id or name.
        server: String,
    },
    /// Delete one (id or name).
    Rm {
        /// Id or name.
        server: String,
    },
    /// Enable one.
    Enable {
        /// Id or name.
        server: String,
    },
    /// Disable one.
    Disable {
        /// Id or name.
        server: String,
    },
}

/// `mcpgw tools …`
#[derive(Debug, Subcommand)]
pub enum ToolCmd {
    /// List tools.
    List {
        /// Only tools of this gateway (id or name).
        #[arg(long)]
        gateway: Option<String>,
        /// Only with any of these tags.
        #[arg(long)]
        tags: Option<String>,
        /// Only enabled (true) or disabled (false).
        #[arg(long)]
        enabled: Option<bool>,
    },
}

/// Largest secret file read.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a secret from a file: one value, a trailing newline dropped. Refuses a file that
/// group or others may read or write (as ssh does with keys): a secret kept there is already
/// exposed, and saying so is better than using it quietly. Errors never quote the content.
pub fn read_secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is accessible by group or others (mode {mode:03o}); a secret file must be \
                 readable by its owner only: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        bail!(
            "{} is larger than {MAX_SECRET_FILE_BYTES} bytes",
            path.display()
        );
    }
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(raw)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    let value = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if value.is_empty() {
        bail!("{} is empty", path.display());
    }
    if value.contains(['\n', '\r']) {
        bail!("{} holds more than one line", path.display());
    }
    Ok(value.to_owned())
}

/// The `auth_*` fields of a gateway body from the credential flags, files and the
/// `MCPGW_AUTH_TOKEN` / `MCPGW_AUTH_PASSWORD` environment variables (read through `env`).
/// At most one kind of credentials may be given.
fn upstream_auth(
    a: UpstreamAuthArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Value> {
    let token = match (a.bearer_token, a.auth_token_file) {
        (Some(_), Some(_)) => bail!("give --bearer-token or --auth-token-file, not both"),
        (Some(t), None) => Some(t),
        (None, Some(f)) => Some(read_secret_file(&f)?),
        (None, None) => None,
    };
    let basic = match (a.basic, a.auth_username) {
        (Some(_), Some(_)) => bail!("give --basic or --auth-username, not both"),
        (Some(b), None) => {
            let (u, p) = b
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--basic wants user:password"))?;
            Some((u.to_owned(), p.to_owned()))
        }
        (None, Some(u)) => {
            let password = match a.auth_password_file {
                Some(f) => read_secret_file(&f)?,
                None => env("MCPGW_AUTH_PASSWORD").ok_or_else(|| {
                    anyhow::anyhow!(
                        "--auth-username needs --auth-password-file or MCPGW_AUTH_PASSWORD"
                    )
                })?,
            };
            Some((u, password))
        }
        (None, None) => None,
    };
    let mut headers = Vec::new();
    for h in &a.header {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header wants 'Name: value'"))?;
        headers.push(json!({"key": k.trim(), "value": v.trim()}));
    }
    for h in &a.header_file {
        let (k, path) = h
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--header-file wants NAME=PATH"))?;
        let value = read_secret_file(std::path::Path::new(path))?;
        headers.push(json!({"key": k.trim(), "value": value}));
    }
    // The environment counts only when no flag gave credentials.
    let token = match (&token, &basic, headers.is_empty()) {
        (None, None, true) => env("MCPGW_AUTH_TOKEN").filter(|t| !t.is_empty()),
        _ => token,
    };
    match (token, basic, headers.is_empty()) {
        (None, None, true) => Ok(json!({})),
        (Some(t), None, true) => Ok(json!({"auth_type": "bearer", "auth_token": t})),
        (None, Some((u, p)), true) => Ok(json!({
            "auth_type": "basic", "auth_username": u, "auth_password": p,
        })),
        (None, None, false) => Ok(json!({"auth_type": "headers", "auth_headers": headers})),
        _ => bail!("give one kind of upstream credentials: a bearer token, basic, or headers"),
    }
}

/// A small client of the admin API.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client that sends the caller's credential ([`credential`]).
    fn new(api: &ApiArgs) -> anyhow::Result<Self> {
        let base = api.api_url.trim_end_matches('/').to_owned();
        let token = credential(&base, &|n| std::env::var(n).ok())?;
        Self::with_token(&base, token.as_deref())
    }

    fn with_token(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        crate::tls::install_crypto_provider();
        // Every call says it comes from a program (`api::cross_site`).
        let mut headers = reqwest::header::HeaderMap::from_iter([(
            reqwest::header::HeaderName::from_static(crate::api::cross_site::REQUEST_HEADER),
            reqwest::header::HeaderValue::from_static("1"),
        )]);
        if let Some(t) = token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("the stored token is not a valid header value")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .default_headers(headers)
                .build()?,
            base: base.to_owned(),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).context("the API answered with invalid JSON");
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(p) => {
                let mut msg = format!(
                    "{} ({}): {}",
                    p["title"].as_str().unwrap_or("error"),
                    status.as_u16(),
                    p["detail"].as_str().unwrap_or("")
                );
                if let Some(errs) = p["errors"].as_array() {
                    for e in errs {
                        msg.push_str(&format!(
                            "\n  {}: {}",
                            e["field"].as_str().unwrap_or("?"),
                            e["reason"].as_str().unwrap_or("?")
                        ));
                    }
                }
                bail!(msg)
            }
            Err(_) => bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Follows `next_cursor` through every page.
    async fn all(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("limit", "500".into()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page = self
                .send(self.http.get(format!("{}{path}", self.base)).query(&q))
                .await?;
            if let Some(items) = page["items"].as_array() {
                out.extend(items.iter().cloned());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(out),
            }
        }
    }

    /// Accepts an id or a name.
    async fn resolve(&self, path: &str, key: &str) -> anyhow::Result<String> {
        let items = self.all(path, &[]).await?;
        items
            .iter()
            .find(|i| i["id"].as_str() == Some(key))
            .or_else(|| items.iter().find(|i| i["name"].as_str() == Some(key)))
            .and_then(|i| i["id"].as_str().map(str::to_owned))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no {} with id or name {key:?}",
                    path.trim_start_matches('/')
                )
            })
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Renders rows as aligned columns.
pub fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|(h, _)| h.to_string()).collect()];
    for r in rows {
        grid.push(
            columns
                .iter()
                .map(|(_, k)| {
                    let v = &r[*k];
                    if let Value::Array(a) = v
                        && k.starts_with("associated_")
                    {
                        return a.len().to_string();
                    }
                    cell(v)
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|c| grid.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in grid {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<width$}", width = *w))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn print(output: Output, v: &Value, columns: &[(&str, &str)]) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(v)?),
        Output::Table => {
            let rows = match v {
                Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            };
            print!("{}", table(&rows, columns));
        }
    }
    Ok(())
}

const CHANGE_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("TOOL", "tool"),
    ("KIND", "kind"),
    ("STATUS", "status"),
    ("CHANGED", "changed"),
    ("FINDINGS", "findings"),
    ("DETECTED", "detected_at"),
];

const PIN_COLS: &[(&str, &str)] = &[
    ("TOOL", "tool"),
    ("HASH", "hash"),
    ("WITHHELD", "withheld"),
    ("APPROVED", "approved_at"),
    ("BY", "approved_by"),
];

/// A change as a table row: the changed fields' paths and the findings, one cell each.
fn change_summary(c: &Value) -> Value {
    let mut row = c.clone();
    let changed: Vec<&str> = c["diff"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["path"].as_str())
        .collect();
    let findings: Vec<String> = c["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            format!(
                "{} {} at {}",
                cell(&f["kind"]),
                cell(&f["detail"]),
                cell(&f["path"])
            )
        })
        .collect();
    row["changed"] = Value::String(changed.join(" "));
    row["findings"] = Value::String(findings.join("; "));
    row
}

const GATEWAY_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("URL", "url"),
    ("TRANSPORT", "transport"),
    ("ENABLED", "enabled"),
    ("REACHABLE", "reachable"),
    ("AUTH", "auth_type"),
    ("TAGS", "tags"),
];
const SERVER_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("ENABLED", "enabled"),
    ("NAMING", "naming"),
    ("TOOLS", "associated_tools"),
    ("RESOURCES", "associated_resources"),
    ("PROMPTS", "associated_prompts"),
    ("TAGS", "tags"),
];
const TOOL_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("GATEWAY", "gateway_id"),
    ("ENABLED", "enabled"),
    ("REACHABLE", "reachable"),
    ("DESCRIPTION", "description"),
];

fn sync_summary(v: &Value) -> Value {
    let mut g = v["gateway"].clone();
    if let Some(s) = v.get("sync").filter(|s| !s.is_null())
        && let Value::Object(m) = &mut g
    {
        m.insert(
            "sync".into(),
            json!(format!(
                "+{} ~{} -{} ={} collisions:{}",
                s["added"],
                s["updated"],
                s["removed"],
                s["unchanged"],
                s["collisions"].as_array().map_or(0, Vec::len)
            )),
        );
    }
    g
}

/// Where `mcpgw login` keeps tokens: `$MCPGW_CONFIG_DIR`, else `$XDG_CONFIG_HOME/mcpgw`, else
/// `$HOME/.config/mcpgw`.
pub fn config_dir(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    if let Some(d) = env("MCPGW_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = env("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("mcpgw"));
    }
    match env("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("mcpgw")),
        None => bail!("no config directory: set MCPGW_CONFIG_DIR, XDG_CONFIG_HOME or HOME"),
    }
}

/// The file of stored tokens, one per API URL.
fn credentials_file(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    Ok(config_dir(env)?.join("credentials.json"))
}

fn read_credentials(path: &std::path::Path) -> anyhow::Result<serde_json::Map<String, Value>> {
    if !path.exists() {
        return Ok(serde_json::Map::new());
    }
    let text = read_secret_file_any(path)?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => bail!(
            "{} is not a JSON object; remove it and log in again",
            path.display()
        ),
    }
}

/// Like [`read_secret_file`], for a multi-line file.
fn read_secret_file_any(path: &std::path::Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is accessible by group or others (mode {mode:03o}): chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        bail!(
            "{} is larger than {MAX_SECRET_FILE_BYTES} bytes",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn store_credential(
    env: &dyn Fn(&str) -> Option<String>,
    api: &str,
    entry: Option<Value>,
) -> anyhow::Result<PathBuf> {
    let path = credentials_file(env)?;
    if let Some(dir) = path.parent() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir)?;
    }
    let mut all = read_credentials(&path)?;
    match entry {
        Some(e) => {
            all.insert(api.to_owned(), e);
        }
        None => {
            all.remove(api);
        }
    }
    crate::auth::write_private(
        &path,
        &(serde_json::to_string_pretty(&Value::Object(all))? + "\n"),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The credential of a command: `MCPGW_TOKEN`, else `MCPGW_TOKEN_FILE`, else what
/// `mcpgw login` stored for this API URL; none: the request goes without one (and the API
/// answers 401 except on its open endpoints).
pub fn credential(
    api: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<String>> {
    if let Some(t) = env("MCPGW_TOKEN").filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    if let Some(f) = env("MCPGW_TOKEN_FILE").filter(|t| !t.is_empty()) {
        return read_secret_file(std::path::Path::new(&f)).map(Some);
    }
    let path = credentials_file(env)?;
    let all = read_credentials(&path)?;
    Ok(all
        .get(api)
        .and_then(|e| e["token"].as_str())
        .map(str::to_owned))
}

/// A password from a file, an environment variable, or standard input (never a terminal:
/// it would echo).
fn password_from(
    file: Option<PathBuf>,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<String> {
    if let Some(f) = file {
        return read_secret_file(&f);
    }
    if let Some(p) = env(var).filter(|p| !p.is_empty()) {
        return Ok(p);
    }
    use std::io::{BufRead as _, IsTerminal as _};
    if std::io::stdin().is_terminal() {
        bail!(
            "no password: give --password-file, set {var}, or pipe it on standard input              (it is not read from a terminal, where it would show)"
        );
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let p = line.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        bail!("no password on standard input");
    }
    Ok(p)
}

/// The handoff code the control plane's callback sends to the CLI's loopback port.
async fn loopback_code(
    listener: tokio::net::TcpListener,
    wait: std::time::Duration,
) -> anyhow::Result<String> {
    use axum::extract::Query;
    use std::collections::HashMap;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<String, String>>(1);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(move |Query(q): Query<HashMap<String, String>>| {
            let tx = tx.clone();
            async move {
                let (answer, page) = match (q.get("code"), q.get("error")) {
                    (Some(code), None) => (
                        Ok(code.clone()),
                        "Logged in: you may close this window.".to_owned(),
                    ),
                    (_, Some(e)) => {
                        let why = format!(
                            "{e}: {}",
                            q.get("error_description").map_or("", String::as_str)
                        );
                        (Err(why.clone()), format!("Login failed ({why})."))
                    }
                    (None, None) => (
                        Err("the redirect has no code".to_owned()),
                        "Login failed.".to_owned(),
                    ),
                };
                let _ = tx.try_send(answer);
                page
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let got = tokio::time::timeout(wait, rx.recv()).await;
    // Let the browser's page go out before the listener closes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    server.abort();
    match got {
        Err(_) => bail!("no login within {} s", wait.as_secs()),
        Ok(None) => bail!("the loopback listener stopped"),
        Ok(Some(Err(why))) => bail!("the login failed: {why}"),
        Ok(Some(Ok(code))) => Ok(code),
    }
}

/// `mcpgw login --oidc PROVIDER`: the login runs in a browser; the control plane hands the
/// session over with a one-time code that only this process's PKCE verifier redeems.
async fn oidc_login(
    base: &str,
    provider: &str,
    paste: bool,
    wait: std::time::Duration,
) -> anyhow::Result<(String, Option<i64>)> {
    use base64::Engine as _;
    let mut bytes = [0u8; 48];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let challenge = crate::auth::oidc::pkce_challenge(&verifier);
    let mut url = url::Url::parse(base).context("the API URL")?;
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("the API URL cannot have a path"))?
        .pop_if_empty()
        .extend(["auth", "oidc", provider, "login"]);
    url.query_pairs_mut()
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    use std::io::Write as _;
    let code = if paste {
        println!(
            "Open this URL in a browser and log in; then paste the handoff_code the last page shows:\n{url}"
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        use std::io::BufRead as _;
        std::io::stdin().lock().read_line(&mut line)?;
        let code = line.trim().trim_matches('"').to_owned();
        if code.is_empty() {
            bail!("no code on standard input");
        }
        code
    } else {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port for the provider's redirect")?;
        let return_to = format!(
            "http://127.0.0.1:{}/callback",
            listener.local_addr()?.port()
        );
        url.query_pairs_mut().append_pair("return_to", &return_to);
        println!("Open this URL in a browser to log in through {provider}:\n{url}");
        std::io::stdout().flush()?;
        loopback_code(listener, wait).await?
    };
    let v = Client::with_token(base, None)?
        .post(
            "/auth/oidc/token",
            &json!({"code": code, "code_verifier": verifier}),
        )
        .await?;
    let t = v["access_token"]
        .as_str()
        .context("the API answered without a token")?
        .to_owned();
    Ok((t, v["expires_in"].as_i64()))
}

async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let env = |n: &str| std::env::var(n).ok();
    let base = a.api.api_url.trim_end_matches('/').to_owned();
    let (token, expires_in) = match (a.email, a.api_token_file) {
        _ if a.oidc.is_some() => {
            let provider = a.oidc.as_deref().unwrap_or_default();
            oidc_login(
                &base,
                provider,
                a.paste,
                std::time::Duration::from_secs(a.wait),
            )
            .await?
        }
        (Some(email), _) => {
            let password = password_from(a.password_file, "MCPGW_PASSWORD", &env)?;
            let c = Client::with_token(&base, None)?;
            let v = c
                .post(
                    "/auth/login",
                    &json!({"email": email, "password": password}),
                )
                .await?;
            let t = v["access_token"]
                .as_str()
                .context("the API answered without a token")?
                .to_owned();
            (t, v["expires_in"].as_i64())
        }
        (None, Some(f)) => (read_secret_file(&f)?, None),
        (None, None) => {
            bail!("give --email (with a password), --oidc PROVIDER or --api-token-file")
        }
    };
    let me = Client::with_token(&base, Some(&token))?
        .get("/auth/me")
        .await
        .context("the token does not work")?;
    let email = me["user"]["email"].as_str().unwrap_or("?").to_owned();
    let expires_at = expires_in.map(|s| {
        (chrono::Utc::now() + chrono::Duration::seconds(s))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let path = store_credential(
        &env,
        &base,
        Some(json!({"token": token, "email": email, "expires_at": expires_at})),
    )?;
    match expires_at {
        Some(e) => println!(
            "logged in to {base} as {email} until {e} (token in {})",
            path.display()
        ),
        None => println!(
            "logged in to {base} as {email} with an API token (in {})",
            path.display()
        ),
    }
    Ok(())
}

async fn admin(db: DbArgs, cmd: AdminCmd) -> anyhow::Result<()> {
    let env = |n: &str| std::env::var(n).ok();
    let url = match db.database_url {
        Some(u) => u,
        None => {
            let dir = db.data_dir.unwrap_or_else(|| PathBuf::from("mcpgw-data"));
            crate::store::prepare_data_dir(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("mcpgw.db");
            format!(
                "sqlite://{}?mode=rwc",
                path.to_str().context("the data directory must be UTF-8")?
            )
        }
    };
    let store = crate::store::Store::connect(&url)
        .await
        .context("opening the registry database")?;
    let hasher = crate::auth::password::Hasher::new(Default::default());
    let result = async {
        match cmd {
            AdminCmd::Create {
                email,
                password_file,
            } => {
                let email = crate::auth::normalize_email(&email)
                    .map_err(|e| anyhow::anyhow!("{}", e.reason))?;
                let pw = password_from(password_file, "MCPGW_ADMIN_PASSWORD", &env)?;
                let hash = hasher
                    .hash(&pw)
                    .await
                    .map_err(|e| anyhow::anyhow!("password: {e}"))?;
                let u = store
                    .create_user(
                        &email,
                        None,
                        Some(&hash),
                        &[crate::auth::rbac::Role::PlatformAdmin],
                    )
                    .await?;
                println!("created platform admin {} ({})", u.email, u.id);
                Ok(())
            }
            AdminCmd::SetPassword {
                email,
                password_file,
            } => {
                let email = crate::auth::normalize_email(&email)
                    .map_err(|e| anyhow::anyhow!("{}", e.reason))?;
                let u = store
                    .find_user_login(&email)
                    .await?
                    .with_context(|| format!("no user {email}"))?;
                let pw = password_from(password_file, "MCPGW_ADMIN_PASSWORD", &env)?;
                let hash = hasher
                    .hash(&pw)
                    .await
                    .map_err(|e| anyhow::anyhow!("password: {e}"))?;
                store.set_password_hash(&u.user.id, &hash).await?;
                store.clear_login_failures(&email).await?;
                println!("password of {email} set; login lockout lifted");
                Ok(())
            }
        }
    }
    .await;
    store.close().await;
    result
}

const TOKEN_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("EXPIRES", "expires_at"),
    ("REVOKED", "revoked_at"),
    ("LAST USED", "last_used_at"),
];

/// Runs an operator verb.
pub async fn run_client(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Issuers { api, cmd } => edge::run(EdgeKind::Issuers, &api, cmd).await,
        Command::Policies { api, cmd } => edge::run(EdgeKind::Policies, &api, cmd).await,
        Command::Limits { api, cmd } => edge::run(EdgeKind::Limits, &api, cmd).await,
        Command::Plugins { api, cmd } => edge::run(EdgeKind::Plugins, &api, cmd).await,
        Command::Serve(_) | Command::Openapi | Command::Crds { .. } => {
            bail!("not a client command")
        }
        Command::Login(a) => login(a).await,
        Command::Logout { api } => {
            let env = |n: &str| std::env::var(n).ok();
            let base = api.api_url.trim_end_matches('/').to_owned();
            if let Some(t) = credential(&base, &env)?
                && !crate::auth::token::is_api_token(&t)
            {
                // Best effort: an expired session is already over.
                let _ = Client::with_token(&base, Some(&t))?
                    .post("/auth/logout", &json!({}))
                    .await;
            }
            store_credential(&env, &base, None)?;
            println!("logged out of {base}");
            Ok(())
        }
        Command::Admin { db, cmd } => admin(db, cmd).await,
        Command::Tokens { api, cmd } => {
            let c = Client::new(&api)?;
            match cmd {
                TokenCmd::Create {
                    name,
                    permissions,
                    teams,
                    servers,
                    ip_ranges,
                    expires_in_days,
                } => {
                    let v = c
                        .post(
                            "/tokens",
                            &json!({
                                "name": name, "expires_in_days": expires_in_days,
                                "scopes": {"permissions": permissions, "teams": teams,
                                           "servers": servers, "ip_ranges": ip_ranges},
                            }),
                        )
                        .await?;
                    match api.output {
                        Output::Table => {
                            println!("{}", v["token"].as_str().unwrap_or(""));
                            eprintln!(
                                "token {} created; the secret above is not shown again",
                                v["id"].as_str().unwrap_or("?")
                            );
                            Ok(())
                        }
                        o => print(o, &v, TOKEN_COLS),
                    }
                }
                TokenCmd::List => {
                    let v = c.get("/tokens").await?;
                    print(api.output, &v["items"], TOKEN_COLS)
                }
                TokenCmd::Revoke { id } => {
                    let v = c.delete(&format!("/tokens/{id}")).await?;
                    print(api.output, &v, TOKEN_COLS)
                }
            }
        }
        Command::Gateways { api, cmd } => {
            let c = Client::new(&api)?;
            let mut cols = GATEWAY_COLS.to_vec();
            match cmd {
                GatewayCmd::Add(add) => {
                    let GatewayAdd {
                        name,
                        url,
                        transport,
                        description,
                        tags,
                        auth,
                        identity,
                        no_discover,
                    } = *add;
                    let mut body = json!({
                        "name": name, "url": url, "transport": transport,
                        "description": description, "tags": tags, "discover": !no_discover,
                    });
                    let auth = upstream_auth(auth, &|name| std::env::var(name).ok())?;
                    if let (Value::Object(b), Value::Object(a)) = (&mut body, auth) {
                        b.extend(a);
                    }
                    if let (Value::Object(b), Some(i)) = (
                        &mut body,
                        upstream_identity(identity, &|name| std::env::var(name).ok())?,
                    ) {
                        b.insert("identity".into(), i);
                    }
                    let v = c.post("/gateways", &body).await?;
                    cols.push(("SYNC", "sync"));
                    let shown = if api.output == Output::Table {
                        sync_summary(&v)
                    } else {
                        v
                    };
                    print(api.output, &shown, &cols)
                }
                GatewayCmd::List { tags } => {
                    let q: Vec<(&str, String)> = tags.map(|t| ("tags", t)).into_iter().collect();
                    let items = c.all("/gateways", &q).await?;
                    print(api.output, &Value::Array(items), &cols)
                }
                GatewayCmd::Get { gateway } => {
                    let id = c.resolve("/gateways", &gateway).await?;
                    print(api.output, &c.get(&format!("/gateways/{id}")).await?, &cols)
                }
                GatewayCmd::Rm { gateway } => {
                    let id = c.resolve("/gateways", &gateway).await?;
                    c.delete(&format!("/gateways/{id}")).await?;
                    println!("deleted gateway {id}");
                    Ok(())
                }
                GatewayCmd::Refresh { gateway } => {
                    let id = c.resolve("/gateways", &gateway).await?;
                    let v = c
                        .post(&format!("/gateways/{id}/refresh"), &json!({}))
                        .await?;
                    cols.push(("SYNC", "sync"));
                    let shown = if api.output == Output::Table {
                        sync_summary(&v)
                    } else {
                        v
                    };
                    print(api.output, &shown, &cols)
                }
                GatewayCmd::Enable { gateway } => {
                    set_state("gateways", &c, &api, &gateway, true, &cols).await
                }
                GatewayCmd::Disable { gateway } => {
                    set_state("gateways", &c, &api, &gateway, false, &cols).await
                }
                GatewayCmd::Changes { gateway, status } => {
                    let id = c.resolve("/gateways", &gateway).await?;
                    let q = status.map_or(String::new(), |s| format!("?status={s}"));
                    let v = c.get(&format!("/gateways/{id}/changes{q}")).await?;
                    let shown = if api.output == Output::Table {
                        Value::Array(
                            v["items"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(change_summary)
                                .collect(),
                        )
                    } else {
                        v
                    };
                    print(api.output, &shown, CHANGE_COLS)
                }
                GatewayCmd::Approve {
                    gateway,
                    change,
                    force,
                } => {
                    let id = c.resolve("/gateways", &gateway).await?;
                    let v = c
                        .post(
                            &format!("/gateways/{id}/changes/{change}/approve"),
                            &json!({"force": force}),
                        )
                        .await?;
                    let shown = if api.output == Output::Table {
                        change_summary(&v)
                    } else {
                        v
                    };
                    print(api.output, &shown, CHANGE_COLS)
                }
                GatewayCmd::Reject { gateway, change } => {
                    let id = c.resolve("/gateways", &gateway).await?;
                    let v = c
                        .post(
                            &format!("/gateways/{id}/changes/{change}/reject"),
                            &json!({}),
                        )
                        .await?;
                    let shown = if api.output == Output::Table {
                        change_summary(&v)
                    } else {
                        v
                    };
                    print(api.output, &shown, CHANGE_COLS)
                }
                GatewayCmd::Pinning {
                    gateway,
                    on_change,
                    new_tools,
                    first_discovery,
                } => {
                    let id = c.resolve("/gateways", &gateway).await?;
                    let path = format!("/gateways/{id}/pinning");
                    let v = if on_change.is_none()
                        && new_tools.is_none()
                        && first_discovery.is_none()
                    {
                        c.get(&path).await?
                    } else {
                        let mut body = serde_json::Map::new();
                        for (k, v) in [
                            ("on_change", on_change),
                            ("new_tools", new_tools),
                            ("first_discovery", first_discovery),
                        ] {
                            if let Some(v) = v {
                                body.insert(k.to_owned(), Value::String(v));
                            }
                        }
                        c.send(
                            c.http
                                .put(format!("{}{path}", c.base))
                                .json(&Value::Object(body)),
                        )
                        .await?
                    };
                    if api.output == Output::Table {
                        println!(
                            "on_change: {}  new_tools: {}  first_discovery: {}",
                            cell(&v["on_change"]),
                            cell(&v["new_tools"]),
                            cell(&v["first_discovery"])
                        );
                    }
                    let shown = if api.output == Output::Table {
                        v["pins"].clone()
                    } else {
                        v
                    };
                    print(api.output, &shown, PIN_COLS)
                }
                GatewayCmd::IdentityKey { gateway } => {
                    let id = c.resolve("/gateways", &gateway).await?;
                    let v = c.get(&format!("/gateways/{id}/identity-key")).await?;
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(())
                }
            }
        }
        Command::Servers { api, cmd } => {
            let c = Client::new(&api)?;
            match cmd {
                ServerCmd::Create {
                    name,
                    description,
                    tools,
                    resources,
                    prompts,
                    tags,
                    naming,
                    allowed_origins,
                } => {
                    let mut ids = Vec::new();
                    for (path, keys) in [
                        ("/tools", tools),
                        ("/resources", resources),
                        ("/prompts", prompts),
                    ] {
                        let mut out = Vec::new();
                        for k in keys {
                            out.push(c.resolve(path, &k).await?);
                        }
                        ids.push(out);
                    }
                    let body = json!({
                        "name": name, "description": description, "tags": tags,
                        "naming": naming, "allowed_origins": allowed_origins,
                        "associated_tools": ids[0], "associated_resources": ids[1],
                        "associated_prompts": ids[2],
                    });
                    print(api.output, &c.post("/servers", &body).await?, SERVER_COLS)
                }
                ServerCmd::List => {
                    let items = c.all("/servers", &[]).await?;
                    print(api.output, &Value::Array(items), SERVER_COLS)
                }
                ServerCmd::Get { server } => {
                    let id = c.resolve("/servers", &server).await?;
                    print(
                        api.output,
                        &c.get(&format!("/servers/{id}")).await?,
                        SERVER_COLS,
                    )
                }
                ServerCmd::Rm { server } => {
                    let id = c.resolve("/servers", &server).await?;
                    c.delete(&format!("/servers/{id}")).await?;
                    println!("deleted server {id}");
                    Ok(())
                }
                ServerCmd::Enable { server } => {
                    set_state("servers", &c, &api, &server, true, SERVER_COLS).await
                }
                ServerCmd::Disable { server } => {
                    set_state("servers", &c, &api, &server, false, SERVER_COLS).await
                }
            }
        }
        Command::Tools { api, cmd } => {
            let c = Client::new(&api)?;
            match cmd {
                ToolCmd::List {
                    gateway,
                    tags,
                    enabled,
                } => {
                    let mut q: Vec<(&str, String)> = Vec::new();
                    if let Some(g) = gateway {
                        q.push(("gateway_id", c.resolve("/gateways", &g).await?));
                    }
                    if let Some(t) = tags {
                        q.push(("tags", t));
                    }
                    if let Some(e) = enabled {
                        q.push(("enabled", e.to_string()));
                    }
                    let items = c.all("/tools", &q).await?;
                    print(api.output, &Value::Array(items), TOOL_COLS)
                }
            }
        }
        Command::Export { api, types, file } => {
            let c = Client::new(&api)?;
            let path = match types {
                Some(t) => format!("/export?types={t}"),
                None => "/export".to_owned(),
            };
            let doc = c.get(&path).await?;
            let text = match api.output {
                Output::Yaml => serde_yaml_ng::to_string(&doc)?,
                _ => serde_json::to_string_pretty(&doc)? + "\n",
            };
            match file {
                Some(f) => {
                    std::fs::write(&f, text).with_context(|| format!("writing {}", f.display()))?;
                    eprintln!("exported to {}", f.display());
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::Import {
            api,
            file,
            conflict_strategy,
            dry_run,
            types,
        } => {
            let c = Client::new(&api)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: Value = serde_json::from_str(&text)
                .or_else(|_| serde_yaml_ng::from_str(&text))
                .with_context(|| format!("{} is neither JSON nor YAML", file.display()))?;
            let strategy = format!("{conflict_strategy:?}").to_lowercase();
            let mut query = vec![
                ("conflict_strategy", strategy),
                ("dry_run", dry_run.to_string()),
            ];
            if let Some(t) = types {
                query.push(("types", t));
            }
            let report = c
                .send(
                    c.http
                        .post(format!("{}/import", c.base))
                        .query(&query)
                        .json(&body),
                )
                .await?;
            match api.output {
                Output::Table => {
                    let entries = report["entries"].as_array().cloned().unwrap_or_default();
                    print!(
                        "{}",
                        table(
                            &entries,
                            &[
                                ("KIND", "kind"),
                                ("NAME", "name"),
                                ("ACTION", "action"),
                                ("NEW NAME", "new_name"),
                                ("DETAIL", "detail")
                            ]
                        )
                    );
                    println!(
                        "created {} updated {} renamed {} skipped {} failed {}{}",
                        report["created"],
                        report["updated"],
                        report["renamed"],
                        report["skipped"],
                        report["failed"],
                        if dry_run { " (dry run)" } else { "" }
                    );
                    for w in report["warnings"].as_array().into_iter().flatten() {
                        println!("warning: {}", cell(w));
                    }
                    Ok(())
                }
                o => print(o, &report, &[]),
            }
        }
    }
}

/// Shared body of `enable` and `disable`.
async fn set_state(
    kind: &str,
    c: &Client,
    api: &ApiArgs,
    key: &str,
    activate: bool,
    cols: &[(&str, &str)],
) -> anyhow::Result<()> {
    let id = c.resolve(&format!("/{kind}"), key).await?;
    let v = c
        .post(
            &format!("/{kind}/{id}/state?activate={activate}"),
            &json!({}),
        )
        .await?;
    print(api.output, &v, cols)
}
