//! Identity and access at the edge, per request, with no network call.
//!
//! Envoy's `jwt_authn` filter runs before the mcpgw filter (the control plane generates it,
//! or an Istio `RequestAuthentication` plays its part in a mesh): it checks a bearer token's
//! signature, expiry and issuer against keys it holds, and on success hands the token's
//! payload to the filter in [`PAYLOAD_HEADER`] (base64url JSON). No client can set that
//! header: the listener removes it from every request before `jwt_authn` runs.
//!
//! [`Access`] is the snapshot's identity configuration compiled once (in `on_configure`).
//! Per request, for a virtual server with `auth`:
//! 1. [`Access::authenticate`] turns the verified payload into a [`Principal`], checking
//!    again what the signature does not cover for this server: an issuer it trusts, its
//!    resource among the audiences (RFC 8707), expiry and not-before with a small skew,
//!    the token id not revoked, and (when the token itself is present) its algorithm on
//!    the issuer's allow-list and its payload the one verified. A missing or bad token is
//!    answered 401 with a `WWW-Authenticate` challenge naming the server's metadata.
//! 2. [`ServerPolicy::authorize`] decides a request: the permission its method needs
//!    (from the principal's roles and scopes; 403 `insufficient_scope` without it), then
//!    the server's rules ([`rules`]) for the tool, prompt or resource it uses (403).
//! 3. Lists answered at the edge show only what [`ServerPolicy::visible`] admits.
//!
//! The OAuth protected resource metadata (RFC 9728) of each such server is pre-rendered
//! here and served by the filter ([`Access::metadata`]).

pub mod rules;

#[cfg(test)]
pub(crate) mod tests;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::fasthash::{Fnv, NameMap};
use crate::jsonrpc::Message;
use crate::mcp::Method;
use crate::snapshot::Snapshot;
use crate::snapshot::auth::{ClaimMapping, Effect, Issuer, ServerAuth, parse_url};
use rules::{Args, Env, Expr, Outcome};

/// Request header carrying the verified token payload (base64url of its JSON), set by
/// Envoy's `jwt_authn` (`forward_payload_header`) or Istio's `RequestAuthentication`
/// (`outputPayloadToHeader`). Removed from client requests by the listener.
pub const PAYLOAD_HEADER: &str = "x-mcpgw-jwt-payload";

/// Path of the OAuth protected resource metadata (RFC 9728): alone (the root form), or
/// followed by a resource's path.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// A permission a request to a virtual server may need (the control plane's names; an
/// OAuth scope of the same name grants it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Call tools.
    ToolsExecute,
    /// List tools.
    ToolsRead,
    /// List and read resources.
    ResourcesRead,
    /// List and get prompts.
    PromptsRead,
}

impl Permission {
    /// Every permission the edge checks.
    pub const ALL: [Permission; 4] = [
        Permission::ToolsExecute,
        Permission::ToolsRead,
        Permission::ResourcesRead,
        Permission::PromptsRead,
    ];

    /// The permission's (and scope's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ToolsExecute => "tools.execute",
            Permission::ToolsRead => "tools.read",
            Permission::ResourcesRead => "resources.read",
            Permission::PromptsRead => "prompts.read",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Permission::ToolsExecute => 1,
            Permission::ToolsRead => 2,
            Permission::ResourcesRead => 4,
            Permission::PromptsRead => 8,
        }
    }

    /// The permission named `name`.
    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// The edge permissions of a role (the control plane's fixed role table, restricted to
/// what the edge checks).
fn role_permissions(role: &str) -> u8 {
    let reads = Permission::ToolsRead.bit()
        | Permission::ResourcesRead.bit()
        | Permission::PromptsRead.bit();
    match role {
        "platform_admin" | "team_admin" | "developer" => reads | Permission::ToolsExecute.bit(),
        "viewer" => reads,
        _ => 0,
    }
}

/// Who makes a request: the verified token, read through its issuer's claim mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// `iss`.
    pub issuer: String,
    /// The subject.
    pub subject: String,
    /// The email address, when the token has one.
    pub email: Option<String>,
    /// Teams (claimed, and mapped from groups).
    pub teams: Vec<String>,
    /// Roles (claimed, and mapped from groups).
    pub roles: Vec<String>,
    permissions: u8,
    /// The verified payload (`claims` in rules).
    pub claims: Value,
    /// The principal as rules see it (`principal`).
    object: Value,
    /// Binds sessions to the principal: base64url of the first 16 bytes of
    /// SHA-256(issuer ‖ 0 ‖ subject).
    pub digest: String,
    /// What the rules that read no arguments decided for this principal's uses of items.
    verdicts: Verdicts,
}

/// The verdict of a server's rules that read no arguments on one use of an item (a method
/// and a name): it depends only on the principal (its object and its verified claims),
/// the server, the method and the name, so a principal's repeated calls of a tool decide
/// it once. Kept per principal, so per verified token and per configuration (a new
/// configuration starts with an empty token cache and so with new principals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fixed {
    /// Some allow rule that reads no arguments holds.
    allowed: bool,
    /// The first deny rule that reads no arguments and does not evaluate to false.
    deny: Option<usize>,
}

/// Most verdicts a principal keeps (then they are all dropped and decided again): a client
/// calls a handful of tools.
const MAX_VERDICTS: usize = 32;
/// Longest key kept (server, method and name): a longer name is decided every time, so
/// what a principal keeps stays within a few kilobytes whatever names clients send.
const MAX_VERDICT_KEY: usize = 192;

/// A principal's [`Fixed`] verdicts, keyed by `server ‖ 0 ‖ method ‖ 0 ‖ name`. A cache:
/// not part of the principal's identity (equal whatever it holds, cloned empty).
#[derive(Default)]
struct Verdicts(RefCell<HashMap<Box<[u8]>, Fixed, BuildHasherDefault<Fnv>>>);

impl Verdicts {
    fn get_or_insert(
        &self,
        server: &str,
        method: &str,
        name: &str,
        decide: impl FnOnce() -> Fixed,
    ) -> Fixed {
        let len = server.len() + method.len() + name.len() + 2;
        if len > MAX_VERDICT_KEY {
            return decide();
        }
        let mut key = Vec::with_capacity(len);
        for (i, part) in [server, method, name].into_iter().enumerate() {
            if i > 0 {
                key.push(0);
            }
            key.extend_from_slice(part.as_bytes());
        }
        if let Some(f) = self.0.borrow().get(key.as_slice()) {
            return *f;
        }
        let f = decide();
        let mut map = self.0.borrow_mut();
        if map.len() >= MAX_VERDICTS {
            map.clear();
        }
        map.insert(key.into_boxed_slice(), f);
        f
    }
}

impl Clone for Verdicts {
    fn clone(&self) -> Self {
        Verdicts::default()
    }
}

impl PartialEq for Verdicts {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Verdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verdicts({})", self.0.borrow().len())
    }
}

impl Principal {
    /// Whether the principal holds `p`.
    pub fn has(&self, p: Permission) -> bool {
        self.permissions & p.bit() != 0
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No token, where one is required.
    Missing,
    /// A token that is not accepted here, and why (safe to tell the client).
    Invalid(&'static str),
}

/// A request's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on.
    Allow,
    /// The principal lacks the permission (403 `insufficient_scope`, naming it).
    InsufficientScope(Permission),
    /// The rules refuse it: the deny rule that held, or `None` when no allow rule did.
    Deny(Option<String>),
}

struct CompiledIssuer {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<String>,
    claims: ClaimMapping,
}

struct CompiledRule {
    name: String,
    effect: Effect,
    when: Expr,
}

/// A virtual server's identity policy, compiled.
pub struct ServerPolicy {
    required: bool,
    resource: String,
    /// Indices into [`Access::issuers`] of the issuers it trusts.
    issuers: Vec<usize>,
    /// The `scope` of its 401 challenge (space-separated; empty: none).
    scope: String,
    metadata_url: String,
    metadata: Vec<u8>,
    rules: Vec<CompiledRule>,
    reads_args: bool,
    /// The fields of a call's arguments the rules read (`None`: all of them).
    arg_fields: Option<Vec<String>>,
}

/// Verified tokens a worker keeps what it read from (each live token is decoded, parsed and
/// mapped to a principal once): Envoy's `jwt_authn` caches as many per worker.
pub const MAX_CACHED_TOKENS: usize = 4096;

/// What a verified token says, as read once (the per-request checks use it).
struct Verified {
    /// The verified payload (the cache's key, compared in full on every hit).
    payload: Box<[u8]>,
    /// The JOSE header segment it came with (empty: no token was on the request).
    header: Box<[u8]>,
    /// That header's `alg`.
    alg: Option<String>,
    /// Index into [`Access::issuers`].
    issuer: usize,
    exp: Option<u64>,
    /// `Err`: an `nbf` that is not a number.
    nbf: Result<Option<u64>, ()>,
    audiences: Vec<String>,
    jti: Option<String>,
    /// `None`: no subject.
    principal: Option<Rc<Principal>>,
}

/// Verified payloads by [`token_hash`]; an entry is used only when its payload and header
/// are the request's, byte for byte (two payloads with one hash take turns).
type TokenCache = HashMap<u64, Rc<Verified>, BuildHasherDefault<Fnv>>;

/// The key of the passthrough path's policy (`auth.passthrough`) among the servers'; no
/// virtual server id is empty.
pub const PASSTHROUGH: &str = "";
/// The `resource_name` of the passthrough path's metadata.
const PASSTHROUGH_NAME: &str = "MCP server";

/// The snapshot's identity configuration, compiled. See the module docs.
#[derive(Default)]
pub struct Access {
    issuers: Vec<CompiledIssuer>,
    revoked: HashSet<String>,
    skew: u64,
    servers: NameMap<ServerPolicy>,
    /// Metadata path → server id.
    metadata_paths: NameMap<String>,
    /// Whether the passthrough path has its own policy (the path then reads it; else it
    /// costs one test of this flag).
    passthrough: bool,
    /// The server the root form of the metadata describes: the only one with `auth` (the
    /// passthrough path counting as one).
    root: Option<String>,
    /// Verified payloads → what they say. A `RefCell`: a worker's requests run one at a
    /// time, and a new configuration starts with an empty cache.
    cache: RefCell<TokenCache>,
}

impl Access {
    /// Compiles the identity configuration of a validated snapshot (before its catalog moves
    /// into the edge). A rule that does not parse (which validation refuses) never holds:
    /// an allow rule then allows nothing and a deny rule denies everything.
    pub fn new(snapshot: &Snapshot) -> Access {
        let auth = &snapshot.auth;
        let names: Vec<&String> = auth.issuers.keys().collect();
        let issuers = auth.issuers.values().map(compile_issuer).collect();
        let mut access = Access {
            issuers,
            revoked: auth.revoked.iter().cloned().collect(),
            skew: auth.clock_skew_seconds,
            ..Access::default()
        };
        let passthrough = auth
            .passthrough
            .as_ref()
            .map(|a| (PASSTHROUGH, PASSTHROUGH_NAME, a));
        let servers = snapshot
            .servers
            .iter()
            .filter_map(|(id, s)| Some((id.as_str(), s.name.as_str(), s.auth.as_ref()?)));
        for (id, name, a) in passthrough.into_iter().chain(servers) {
            let trusted: Vec<usize> = if a.issuers.is_empty() {
                (0..names.len()).collect()
            } else {
                a.issuers
                    .iter()
                    .filter_map(|n| names.iter().position(|k| *k == n))
                    .collect()
            };
            let policy = compile_server(a, name, &trusted, &access.issuers);
            if let Ok(url) = parse_url(&a.resource) {
                access
                    .metadata_paths
                    .insert(metadata_path(url.path), id.to_owned());
            }
            if id != PASSTHROUGH {
                access
                    .metadata_paths
                    .insert(format!("{METADATA_PATH}/servers/{id}/mcp"), id.to_owned());
            }
            access.servers.insert(id.to_owned(), policy);
        }
        access.passthrough = access.servers.contains_key(PASSTHROUGH);
        if access.servers.len() == 1 {
            access.root = access.servers.keys().next().cloned();
        }
        access
    }

    /// Whether no virtual server has `auth` and the passthrough path has none either (the
    /// filter then never looks at identity).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Whether the passthrough path has its own identity (`auth.passthrough`).
    pub fn has_passthrough(&self) -> bool {
        self.passthrough
    }

    /// The identity policy of virtual server `id`, if it has one.
    pub fn server(&self, id: &str) -> Option<&ServerPolicy> {
        self.servers.get(id)
    }

    /// The metadata document served at `path` (query ignored): `Some(None)` for a metadata
    /// path that describes no server, `None` for a path that is not a metadata path.
    pub fn metadata(&self, path: &str) -> Option<Option<&[u8]>> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let rest = path.strip_prefix(METADATA_PATH)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let id = if rest.is_empty() || rest == "/" {
            self.root.as_ref()
        } else {
            self.metadata_paths.get(path)
        };
        Some(
            id.and_then(|id| self.servers.get(id))
                .map(|s| s.metadata.as_slice()),
        )
    }

    /// Authenticates a request to `server`: `authorization` is the request's
    /// `Authorization` header, `payload` the verified payload header, `now` seconds since
    /// the Unix epoch. `Ok(None)`: anonymous, on a server that does not require a token.
    pub fn authenticate(
        &self,
        server: &ServerPolicy,
        authorization: Option<&[u8]>,
        payload: Option<&[u8]>,
        now: u64,
    ) -> Result<Option<Rc<Principal>>, Failure> {
        let Some(payload) = payload else {
            return match authorization {
                // `jwt_authn` lets a token it refused through (the filter answers in MCP's
                // terms): it would have removed nothing and added no payload.
                Some(_) => Err(Failure::Invalid(
                    "the token is not valid here (signature, key, issuer or lifetime)",
                )),
                None if server.required => Err(Failure::Missing),
                None => Ok(None),
            };
        };
        let payload = trim_padding(payload);
        let header = match authorization {
            Some(a) => Some(token_header(a, payload)?),
            None => None,
        };
        let v = self.verified(header, payload)?;
        let issuer = self
            .issuers
            .get(v.issuer)
            .filter(|_| server.issuers.contains(&v.issuer))
            .ok_or(Failure::Invalid(
                "the token's issuer is not trusted by this server",
            ))?;
        if let Some(alg) = &v.alg
            && !issuer.algorithms.contains(alg)
        {
            return Err(Failure::Invalid("the token's algorithm is not accepted"));
        }
        match v.exp {
            None => return Err(Failure::Invalid("the token has no expiry")),
            Some(exp) if now >= exp.saturating_add(self.skew) => {
                return Err(Failure::Invalid("the token has expired"));
            }
            Some(_) => {}
        }
        match v.nbf {
            Err(()) => return Err(Failure::Invalid("the token is not valid yet")),
            Ok(Some(nbf)) if nbf > now.saturating_add(self.skew) => {
                return Err(Failure::Invalid("the token is not valid yet"));
            }
            Ok(_) => {}
        }
        let audience_ok =
            |aud: &String| *aud == server.resource || issuer.audiences.iter().any(|a| a == aud);
        if !v.audiences.iter().any(audience_ok) {
            return Err(Failure::Invalid("the token's audience is not this server"));
        }
        if !self.revoked.is_empty()
            && let Some(jti) = &v.jti
            && self.revoked.contains(jti)
        {
            return Err(Failure::Invalid("the token has been revoked"));
        }
        v.principal
            .clone()
            .map(Some)
            .ok_or(Failure::Invalid("the token names no subject"))
    }

    /// What the verified `payload` (with the bearer token's JOSE `header` segment, when the
    /// token is on the request) says, from this worker's cache or read now and cached.
    fn verified(&self, header: Option<&[u8]>, payload: &[u8]) -> Result<Rc<Verified>, Failure> {
        let header_key = header.unwrap_or_default();
        let key = token_hash(payload);
        if let Some(v) = self.cache.borrow().get(&key)
            && same(&v.payload, payload)
            && same(&v.header, header_key)
        {
            return Ok(Rc::clone(v));
        }
        let claims: Value = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .filter(Value::is_object)
            .ok_or(Failure::Invalid("the verified token payload is malformed"))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let index = self
            .issuers
            .iter()
            .position(|i| i.issuer == iss)
            .ok_or(Failure::Invalid(
                "the token's issuer is not trusted by this server",
            ))?;
        let issuer = self.issuers.get(index).ok_or(Failure::Invalid(
            "the token's issuer is not trusted by this server",
        ))?;
        let alg = match header {
            Some(header) => Some(algorithm(header)?),
            None => None,
        };
        let audiences = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let v = Rc::new(Verified {
            payload: payload.into(),
            header: header_key.into(),
            alg,
            issuer: index,
            exp: claims.get("exp").and_then(Value::as_u64),
            nbf: match claims.get("nbf") {
                None => Ok(None),
                Some(n) => n.as_u64().map(Some).ok_or(()),
            },
            audiences,
            jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            principal: principal(&issuer.issuer, claims, &issuer.claims).map(Rc::new),
        });
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= MAX_CACHED_TOKENS {
            // Simpler than an LRU, and a worker that sees more live tokens than this pays
            // one payload parse per request, no more than without a cache.
            cache.clear();
        }
        cache.insert(key, Rc::clone(&v));
        Ok(v)
    }
}

impl ServerPolicy {
    /// Whether every request needs a token.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The resource identifier (the audience tokens must carry).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The URL of its metadata document.
    pub fn metadata_url(&self) -> &str {
        &self.metadata_url
    }

    /// Whether a decision may read a `tools/call`'s arguments (only then are they parsed).
    pub fn reads_args(&self) -> bool {
        self.reads_args
    }

    /// Parses a `tools/call`'s arguments as far as the rules read them
    /// ([`rules::parse_args`]); `None`: not JSON.
    pub fn parse_args(&self, bytes: &[u8]) -> Option<Value> {
        rules::parse_args(bytes, self.arg_fields.as_deref())
    }

    /// The `WWW-Authenticate` value of a 401 for `failure` (RFC 6750, RFC 9728).
    pub fn challenge(&self, failure: &Failure) -> String {
        let mut c = String::from("Bearer ");
        if let Failure::Invalid(why) = failure {
            c.push_str("error=\"invalid_token\", error_description=\"");
            c.push_str(why);
            c.push_str("\", ");
        }
        c.push_str("resource_metadata=\"");
        c.push_str(&self.metadata_url);
        c.push('"');
        if !self.scope.is_empty() {
            c.push_str(", scope=\"");
            c.push_str(&self.scope);
            c.push('"');
        }
        c
    }

    /// The `WWW-Authenticate` value of a 403 for a missing permission (step-up: the scope
    /// to ask for).
    pub fn insufficient_scope(&self, needed: Permission) -> String {
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{}\"",
            needed.as_str(),
            self.metadata_url
        )
    }

    /// Decides `msg` (a request to virtual server `server`) for `principal`; `args` are a
    /// `tools/call`'s arguments. Servers that do not require a token authorize nothing.
    pub fn authorize(
        &self,
        principal: Option<&Principal>,
        server: &str,
        msg: &Message,
        args: Args<'_>,
    ) -> Decision {
        if !self.required {
            return Decision::Allow;
        }
        let Some(principal) = principal else {
            // Authentication answered already; never reached.
            return Decision::Deny(None);
        };
        let Some(method) = &msg.method else {
            return Decision::Allow;
        };
        let (needed, target) = needs(method, msg);
        if let Some(p) = needed
            && !principal.has(p)
        {
            return Decision::InsufficientScope(p);
        }
        let Some(name) = target else {
            return Decision::Allow;
        };
        let env = Env {
            principal: &principal.object,
            claims: &principal.claims,
            method: method.as_str(),
            name: Some(name),
            server,
            args,
        };
        let fixed = principal
            .verdicts
            .get_or_insert(server, method.as_str(), name, || self.fixed(&env));
        // Same order and outcome as every rule in turn: the first deny rule that holds
        // (or fails) wins, so the rules reading arguments after the first fixed deny do not
        // matter; allow rules only add up.
        let end = fixed.deny.unwrap_or(self.rules.len());
        let mut allowed = fixed.allowed;
        for rule in self.rules.iter().take(end).filter(|r| r.when.reads_args) {
            let outcome = rule.when.eval(&env);
            match rule.effect {
                // Fail closed: a deny rule that cannot be decided denies.
                Effect::Deny if outcome != Outcome::Bool(false) => {
                    return Decision::Deny(Some(rule.name.clone()));
                }
                Effect::Allow => allowed |= outcome == Outcome::Bool(true),
                Effect::Deny => {}
            }
        }
        if let Some(rule) = fixed.deny.and_then(|i| self.rules.get(i)) {
            return Decision::Deny(Some(rule.name.clone()));
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny(None)
        }
    }

    /// The verdict of the rules that read no arguments (see [`Fixed`]).
    fn fixed(&self, env: &Env<'_>) -> Fixed {
        let mut fixed = Fixed {
            allowed: false,
            deny: None,
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.when.reads_args {
                continue;
            }
            let outcome = rule.when.eval(env);
            match rule.effect {
                Effect::Deny if outcome != Outcome::Bool(false) => {
                    fixed.deny = Some(i);
                    break;
                }
                Effect::Allow => fixed.allowed |= outcome == Outcome::Bool(true),
                Effect::Deny => {}
            }
        }
        fixed
    }

    /// Whether a list answered at the edge shows item `name` to `principal`: whether some
    /// use of it (`method`, arguments unknown) could be allowed by the rules.
    pub fn visible(
        &self,
        principal: Option<&Principal>,
        server: &str,
        method: &str,
        name: &str,
    ) -> bool {
        if !self.required {
            return true;
        }
        let Some(principal) = principal else {
            return false;
        };
        let env = Env {
            principal: &principal.object,
            claims: &principal.claims,
            method,
            name: Some(name),
            server,
            args: Args::Unknown,
        };
        let mut allowed = false;
        for rule in &self.rules {
            let outcome = rule.when.eval(&env);
            match rule.effect {
                // Hidden when a deny rule holds whatever the arguments (or fails without
                // them, which denies every call).
                Effect::Deny if matches!(outcome, Outcome::Bool(true) | Outcome::Error) => {
                    return false;
                }
                Effect::Allow => {
                    allowed |= matches!(outcome, Outcome::Bool(true) | Outcome::Unknown);
                }
                Effect::Deny => {}
            }
        }
        allowed
    }
}

/// The permission `method` needs, and the item it uses (which the rules then decide).
fn needs<'m>(method: &Method, msg: &'m Message) -> (Option<Permission>, Option<&'m str>) {
    use Permission::*;
    match method {
        Method::ToolsCall => (
            Some(ToolsExecute),
            Some(msg.name.as_deref().unwrap_or_default()),
        ),
        Method::ToolsList => (Some(ToolsRead), None),
        Method::PromptsGet => (
            Some(PromptsRead),
            Some(msg.name.as_deref().unwrap_or_default()),
        ),
        Method::PromptsList => (Some(PromptsRead), None),
        Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => (
            Some(ResourcesRead),
            Some(msg.uri.as_deref().unwrap_or_default()),
        ),
        Method::ResourcesList | Method::ResourcesTemplatesList => (Some(ResourcesRead), None),
        Method::CompletionComplete => match (&msg.ref_name, &msg.ref_uri) {
            (Some(name), _) => (Some(PromptsRead), Some(name)),
            (None, Some(uri)) => (Some(ResourcesRead), Some(uri)),
            (None, None) => (Some(PromptsRead), None),
        },
        Method::TasksGet | Method::TasksResult | Method::TasksList | Method::TasksCancel => {
            (Some(ToolsExecute), None)
        }
        _ => (None, None),
    }
}

fn trim_padding(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    b.get(..end).unwrap_or_default()
}

/// The JOSE header segment of the bearer token in `authorization`, which must carry the
/// verified `payload`.
fn token_header<'a>(authorization: &'a [u8], payload: &[u8]) -> Result<&'a [u8], Failure> {
    let token = authorization
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| authorization.get(7..))
        .map(<[u8]>::trim_ascii)
        .ok_or(Failure::Invalid("the credential is not a bearer token"))?;
    // The common case in a few instructions per word: `header.payload.signature`, the
    // payload the verified one, no other dot.
    if !payload.contains(&b'.')
        && let Some(dot) = token.iter().position(|&b| b == b'.')
        && let (Some(header), Some(rest)) = (token.get(..dot), token.get(dot + 1..))
        && rest
            .get(..payload.len())
            .is_some_and(|body| same(body, payload))
        && rest.get(payload.len()) == Some(&b'.')
        && rest
            .get(payload.len() + 1..)
            .is_some_and(|signature| !signature.contains(&b'.'))
    {
        return Ok(header);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(body), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Invalid("the bearer token is not a JWS"));
    };
    if body != payload {
        return Err(Failure::Invalid("the bearer token is not the one verified"));
    }
    Ok(header)
}

/// Whether `a` and `b` are equal, compared eight bytes at a time: `==` on byte slices is a
/// byte loop in wasm, and tokens are compared on every request.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    wa.remainder() == wb.remainder() && wa.zip(wb).all(|(x, y)| word(x) == word(y))
}

fn word(chunk: &[u8]) -> u64 {
    chunk.try_into().map_or(0, u64::from_le_bytes)
}

/// A 64-bit hash of a verified payload, eight bytes at a time (FNV-1a takes one): only
/// the issuer's signed tokens reach the cache, and a hit is checked byte for byte.
fn token_hash(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let words = b.chunks_exact(8);
    let mut last = [0u8; 8];
    for (d, s) in last.iter_mut().zip(words.remainder()) {
        *d = *s;
    }
    let mut h = b.len() as u64;
    for w in words.map(word).chain([u64::from_le_bytes(last)]) {
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    h
}

/// The token's `alg`, from its JOSE `header` segment.
fn algorithm(header: &[u8]) -> Result<String, Failure> {
    URL_SAFE_NO_PAD
        .decode(trim_padding(header))
        .ok()
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned))
        .ok_or(Failure::Invalid("the token's header is malformed"))
}

/// Reads claim `name` (a JSON Pointer when it starts with `/`; empty: not read).
fn claim<'v>(claims: &'v Value, name: &str) -> Option<&'v Value> {
    if name.is_empty() {
        None
    } else if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

/// A claim's values: an array of strings, or a space-separated string.
fn values(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn push_new(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The principal a verified payload names, through `mapping` (`None` without a subject).
fn principal(iss: &str, claims: Value, mapping: &ClaimMapping) -> Option<Principal> {
    let subject = claim(&claims, &mapping.subject)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())?
        .to_owned();
    let email = claim(&claims, &mapping.email)
        .and_then(Value::as_str)
        .map(str::to_owned);
    let groups = values(claim(&claims, &mapping.groups));
    let mut teams = values(claim(&claims, &mapping.teams));
    let mut roles = values(claim(&claims, &mapping.roles));
    for g in &groups {
        if let Some(t) = mapping.group_teams.get(g) {
            push_new(&mut teams, t.iter().cloned());
        }
        if let Some(r) = mapping.group_roles.get(g) {
            push_new(&mut roles, r.iter().cloned());
        }
    }
    let mut permissions = roles.iter().fold(0, |acc, r| acc | role_permissions(r));
    for scope in values(claim(&claims, &mapping.scope)) {
        if let Some(p) = Permission::parse(&scope) {
            permissions |= p.bit();
        }
    }
    let granted: Vec<&str> = Permission::ALL
        .iter()
        .filter(|p| permissions & p.bit() != 0)
        .map(|p| p.as_str())
        .collect();
    let object = serde_json::json!({
        "sub": subject,
        "iss": iss,
        "email": email,
        "teams": teams,
        "roles": roles,
        "permissions": granted,
    });
    let mut h = Sha256::new();
    h.update(iss.as_bytes());
    h.update([0]);
    h.update(subject.as_bytes());
    let digest = URL_SAFE_NO_PAD.encode(h.finalize().get(..16).unwrap_or_default());
    Some(Principal {
        issuer: iss.to_owned(),
        subject,
        email,
        teams,
        roles,
        permissions,
        claims,
        object,
        digest,
        verdicts: Verdicts::default(),
    })
}

fn compile_issuer(i: &Issuer) -> CompiledIssuer {
    CompiledIssuer {
        issuer: i.issuer.clone(),
        audiences: i.audiences.clone(),
        algorithms: i.algorithms.clone(),
        claims: i.claims.clone(),
    }
}

/// The metadata path of a resource with path `path` (RFC 9728, 3.1: the well-known path
/// goes between the host and the resource's path, whose lone `/` is dropped).
fn metadata_path(path: &str) -> String {
    let path = if path == "/" { "" } else { path };
    format!("{METADATA_PATH}{path}")
}

fn compile_server(
    a: &ServerAuth,
    name: &str,
    trusted: &[usize],
    issuers: &[CompiledIssuer],
) -> ServerPolicy {
    let metadata_url = match parse_url(&a.resource) {
        Ok(u) => format!("{}://{}{}", u.scheme, u.authority, metadata_path(u.path)),
        Err(_) => String::new(),
    };
    let authorization_servers: Vec<&str> = trusted
        .iter()
        .filter_map(|&i| issuers.get(i))
        .map(|i| i.issuer.as_str())
        .collect();
    let mut doc = serde_json::json!({
        "resource": a.resource,
        "authorization_servers": authorization_servers,
        "bearer_methods_supported": ["header"],
        "resource_name": name,
    });
    if let (Value::Object(doc), false) = (&mut doc, a.scopes.is_empty()) {
        doc.insert("scopes_supported".into(), serde_json::json!(a.scopes));
    }
    let rules: Vec<CompiledRule> = a
        .rules
        .iter()
        .map(|r| CompiledRule {
            name: r.name.clone(),
            effect: r.effect,
            // Validated; a condition that does not parse never holds.
            when: Expr::parse(&r.when).unwrap_or_else(|_| Expr::never()),
        })
        .collect();
    ServerPolicy {
        required: a.required,
        resource: a.resource.clone(),
        issuers: trusted.to_vec(),
        scope: a.scopes.join(" "),
        metadata_url,
        metadata: serde_json::to_vec(&doc).unwrap_or_default(),
        reads_args: rules.iter().any(|r| r.when.reads_args),
        arg_fields: rules.iter().try_fold(Vec::new(), |mut all, r| {
            for f in r.when.arg_fields()? {
                if !all.contains(f) {
                    all.push(f.clone());
                }
            }
            Some(all)
        }),
        rules,
    }
}

/// Checks virtual server `id`'s rules parse, naming the field of the first that does not.
pub fn check_rules(id: &str, a: &ServerAuth) -> Result<(), crate::snapshot::auth::AuthError> {
    check_rules_at(&format!("servers.{id}.auth"), a)
}

/// [`check_rules`] for the `auth` at `prefix` (`auth.passthrough`), which errors name.
pub fn check_rules_at(
    prefix: &str,
    a: &ServerAuth,
) -> Result<(), crate::snapshot::auth::AuthError> {
    for (i, r) in a.rules.iter().enumerate() {
        if let Err(e) = Expr::parse(&r.when) {
            return Err(crate::snapshot::auth::AuthError {
                field: format!("{prefix}.rules[{i}].when"),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}
