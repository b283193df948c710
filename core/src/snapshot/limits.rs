//! The request limits of a [`Snapshot`](super::Snapshot), as configured (the wire form).
//! They are checked here ([`Limits::check`], naming the field of any mistake) and compiled
//! once, at configure time, by [`Limiter::new`](crate::limits::Limiter::new).
//!
//! ```json
//! {"default": {},
//!  "servers": {"support": {
//!     "rates": [{"name": "per-user-tool", "by": ["principal", "tool"],
//!                "requests": 100, "per_seconds": 60},
//!               {"name": "team-day", "by": ["team"], "requests": 5000,
//!                "per_seconds": 86400, "global": true}],
//!     "concurrency": [{"name": "in-flight-per-tool", "by": ["tool"], "max": 10}]}},
//!  "service": {"cluster": "mcpgw-ratelimit", "failure_mode": "allow"}}
//! ```
//!
//! A server entry that leaves out `rates` or `concurrency` gets ContextForge's defaults
//! for it: 100 tool calls per minute per principal and tool, and 10 calls in flight per
//! tool. `"default": {}` gives every virtual server without an entry those defaults; a
//! snapshot without `limits` limits nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The request limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Limits of every virtual server without an entry in `servers`; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<ServerLimits>,
    /// Limits of virtual servers by id (instead of `default`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, ServerLimits>,
    /// The rate-limit service (Envoy's `envoy.service.ratelimit.v3`) that limits marked
    /// `global` are checked against, so every Envoy shares their budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<RateLimitService>,
}

impl Limits {
    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.servers.is_empty() && self.service.is_none()
    }
}

/// The limits of one virtual server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLimits {
    /// Request rates (token buckets); left out: 100 tool calls per minute per principal
    /// and tool.
    #[serde(default = "default_rates")]
    pub rates: Vec<RateLimit>,
    /// Calls in flight; left out: 10 per tool.
    #[serde(default = "default_concurrency")]
    pub concurrency: Vec<ConcurrencyLimit>,
}

impl Default for ServerLimits {
    /// ContextForge's defaults.
    fn default() -> Self {
        ServerLimits {
            rates: default_rates(),
            concurrency: default_concurrency(),
        }
    }
}

/// Name of the default rate limit.
pub const DEFAULT_RATE_NAME: &str = "calls-per-principal-per-tool";
/// Name of the default concurrency limit.
pub const DEFAULT_CONCURRENCY_NAME: &str = "in-flight-per-tool";
/// Requests per minute of the default rate limit (ContextForge's `TOOL_RATE_LIMIT`).
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 100;
/// Calls in flight per tool of the default concurrency limit (ContextForge's
/// `TOOL_CONCURRENT_LIMIT`).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10;
/// Default of [`ConcurrencyLimit::hold_seconds`]: 15 minutes.
pub const DEFAULT_HOLD_SECONDS: u32 = 15 * 60;

fn default_rates() -> Vec<RateLimit> {
    vec![RateLimit {
        name: DEFAULT_RATE_NAME.to_owned(),
        by: vec![KeyPart::Principal, KeyPart::Tool],
        methods: Vec::new(),
        requests: DEFAULT_REQUESTS_PER_MINUTE,
        per_seconds: 60,
        burst: None,
        cost: 1,
        global: false,
    }]
}

fn default_concurrency() -> Vec<ConcurrencyLimit> {
    vec![ConcurrencyLimit {
        name: DEFAULT_CONCURRENCY_NAME.to_owned(),
        by: vec![KeyPart::Tool],
        max: DEFAULT_MAX_IN_FLIGHT,
        hold_seconds: DEFAULT_HOLD_SECONDS,
    }]
}

fn one() -> u32 {
    1
}

fn default_hold() -> u32 {
    DEFAULT_HOLD_SECONDS
}

/// What a limit keeps one budget for: each distinct combination of the parts it is keyed
/// by has its own. A limit keyed by a part the request lacks (`tool` on anything but
/// `tools/call`) does not apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The authenticated principal (`anonymous` without one).
    Principal,
    /// The principal's team (`none` without one).
    Team,
    /// The virtual server.
    Server,
    /// The JSON-RPC method.
    Method,
    /// The tool a `tools/call` names (the virtual server's name of it).
    Tool,
}

impl KeyPart {
    /// Its name in configurations and rate-limit descriptors.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPart::Principal => "principal",
            KeyPart::Team => "team",
            KeyPart::Server => "server",
            KeyPart::Method => "method",
            KeyPart::Tool => "tool",
        }
    }
}

/// A request rate: a token bucket of `burst` tokens refilled at `requests` per
/// `per_seconds`; each request takes `cost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Names the limit in the 429 answer and in metrics (letters, digits, `-`, `_`, `.`;
    /// at most 64; unique among a server's limits).
    pub name: String,
    /// What it keeps one budget for.
    #[serde(default)]
    pub by: Vec<KeyPart>,
    /// The JSON-RPC methods it counts; empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Requests per period.
    pub requests: u32,
    /// The period, in seconds (a global limit's: 1, 60, 3600 or 86400).
    pub per_seconds: u32,
    /// Most requests at once after an idle spell; absent: `requests` (local limits only:
    /// a global limit counts fixed windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Tokens one request takes.
    #[serde(default = "one")]
    pub cost: u32,
    /// Checked against the rate-limit service (`limits.service`), shared by every Envoy,
    /// instead of in this Envoy's memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
}

/// Calls in flight: at most `max` at once per key. A call holds its place until its
/// response ends or its stream is reset, and at most `hold_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    /// Names the limit, as a rate's name does.
    pub name: String,
    /// What it keeps one count for.
    #[serde(default)]
    pub by: Vec<KeyPart>,
    /// Most calls in flight per key.
    pub max: u32,
    /// Longest a call holds its place: a stream that outlives it (or a worker that died
    /// with it) stops counting then.
    #[serde(default = "default_hold")]
    pub hold_seconds: u32,
}

/// Where global limits are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitService {
    /// The Envoy cluster (HTTP/2) of the service.
    pub cluster: String,
    /// The descriptors' domain.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// How long the filter waits for an answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// What a request gets when the service does not answer in time (or at all).
    #[serde(default)]
    pub failure_mode: FailureMode,
}

impl RateLimitService {
    /// The service at Envoy cluster `cluster`, with the defaults.
    pub fn with_cluster(cluster: &str) -> RateLimitService {
        RateLimitService {
            cluster: cluster.to_owned(),
            domain: default_domain(),
            timeout_ms: DEFAULT_SERVICE_TIMEOUT_MS,
            failure_mode: FailureMode::default(),
        }
    }
}

/// Default of [`RateLimitService::domain`].
pub const DEFAULT_DOMAIN: &str = "mcpgw";
/// Default of [`RateLimitService::timeout_ms`].
pub const DEFAULT_SERVICE_TIMEOUT_MS: u32 = 250;

fn default_domain() -> String {
    DEFAULT_DOMAIN.to_owned()
}

fn default_timeout_ms() -> u32 {
    DEFAULT_SERVICE_TIMEOUT_MS
}

/// What an unanswered global check means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// The request passes (as Envoy's own `ratelimit` filter does by default).
    #[default]
    Allow,
    /// The request gets 429.
    Deny,
}

/// The periods a global limit may have: the units of Envoy's `RateLimitUnit`.
pub const GLOBAL_PERIODS: [u32; 4] = [1, 60, 3600, 86400];
/// Longest period of a local limit: 31 days.
pub const MAX_PER_SECONDS: u32 = 31 * 86400;
/// Most tokens a bucket holds, and most calls a concurrency limit admits.
pub const MAX_AMOUNT: u32 = 1_000_000;

fn invalid(field: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::FieldInvalid {
        field,
        reason: reason.into(),
    }
}

/// Whether `name` may name a limit.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_by(by: &[KeyPart], at: &str) -> Result<(), ConfigError> {
    for (i, part) in by.iter().enumerate() {
        if by.get(..i).is_some_and(|before| before.contains(part)) {
            return Err(invalid(format!("{at}.by[{i}]"), "repeats a key part"));
        }
    }
    Ok(())
}

impl ServerLimits {
    fn check<'a>(&'a self, at: &str, service: bool) -> Result<(), ConfigError> {
        let mut names: Vec<&str> = Vec::new();
        let mut named = |name: &'a str, field: String| {
            if !valid_name(name) {
                return Err(invalid(
                    field,
                    "must be 1 to 64 letters, digits, `-`, `_` or `.`",
                ));
            }
            if names.contains(&name) {
                return Err(invalid(field, "another limit of this server has this name"));
            }
            names.push(name);
            Ok(())
        };
        for (i, r) in self.rates.iter().enumerate() {
            let at = format!("{at}.rates[{i}]");
            named(&r.name, format!("{at}.name"))?;
            check_by(&r.by, &at)?;
            if let Some(j) = r.methods.iter().position(String::is_empty) {
                return Err(invalid(format!("{at}.methods[{j}]"), "must not be empty"));
            }
            if !(1..=MAX_AMOUNT).contains(&r.requests) {
                return Err(invalid(
                    format!("{at}.requests"),
                    format!("must be between 1 and {MAX_AMOUNT}"),
                ));
            }
            if !(1..=MAX_PER_SECONDS).contains(&r.per_seconds) {
                return Err(invalid(
                    format!("{at}.per_seconds"),
                    format!("must be between 1 and {MAX_PER_SECONDS} (31 days)"),
                ));
            }
            let burst = r.burst.unwrap_or(r.requests);
            if !(1..=MAX_AMOUNT).contains(&burst) {
                return Err(invalid(
                    format!("{at}.burst"),
                    format!("must be between 1 and {MAX_AMOUNT}"),
                ));
            }
            let most = if r.global { r.requests } else { burst };
            if r.cost == 0 || r.cost > most {
                return Err(invalid(
                    format!("{at}.cost"),
                    format!("must be between 1 and {most} (what the budget holds)"),
                ));
            }
            if r.global {
                if !service {
                    return Err(invalid(
                        format!("{at}.global"),
                        "a global limit needs `limits.service`",
                    ));
                }
                if !GLOBAL_PERIODS.contains(&r.per_seconds) {
                    return Err(invalid(
                        format!("{at}.per_seconds"),
                        "a global limit's period is 1, 60, 3600 or 86400 seconds",
                    ));
                }
                if r.burst.is_some() {
                    return Err(invalid(
                        format!("{at}.burst"),
                        "a global limit counts fixed windows: it has no burst",
                    ));
                }
            }
        }
        for (i, c) in self.concurrency.iter().enumerate() {
            let at = format!("{at}.concurrency[{i}]");
            named(&c.name, format!("{at}.name"))?;
            check_by(&c.by, &at)?;
            if !(1..=MAX_AMOUNT).contains(&c.max) {
                return Err(invalid(
                    format!("{at}.max"),
                    format!("must be between 1 and {MAX_AMOUNT}"),
                ));
            }
            if !(1..=MAX_PER_SECONDS).contains(&c.hold_seconds) {
                return Err(invalid(
                    format!("{at}.hold_seconds"),
                    format!("must be between 1 and {MAX_PER_SECONDS}"),
                ));
            }
        }
        Ok(())
    }
}

impl Limits {
    /// Checks what serde cannot: names, amounts, periods, servers that exist
    /// (`has_server`), and a service for every global limit.
    pub fn check(&self, has_server: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        if let Some(s) = &self.service {
            if s.cluster.is_empty() {
                return Err(invalid(
                    "limits.service.cluster".into(),
                    "must not be empty",
                ));
            }
            if s.domain.is_empty() {
                return Err(invalid("limits.service.domain".into(), "must not be empty"));
            }
            if !(1..=60_000).contains(&s.timeout_ms) {
                return Err(invalid(
                    "limits.service.timeout_ms".into(),
                    "must be between 1 and 60000",
                ));
            }
        }
        let service = self.service.is_some();
        if let Some(d) = &self.default {
            d.check("limits.default", service)?;
        }
        for (id, limits) in &self.servers {
            let at = format!("limits.servers.{id}");
            if !has_server(id) {
                return Err(invalid(at, "no such virtual server"));
            }
            limits.check(&at, service)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    fn check(doc: &str) -> Result<Limits, ConfigError> {
        let limits: Limits =
            serde_json::from_str(doc).map_err(|e| ConfigError::Parse(e.to_string()))?;
        limits.check(|id| id == "s1")?;
        Ok(limits)
    }

    #[test]
    fn an_entry_without_settings_gets_contextforge_defaults() {
        let l = check(r#"{"servers":{"s1":{}}}"#).unwrap();
        let s = &l.servers["s1"];
        assert_eq!(s, &ServerLimits::default());
        assert_eq!(s.rates[0].requests, 100);
        assert_eq!(s.rates[0].per_seconds, 60);
        assert_eq!(s.rates[0].by, [KeyPart::Principal, KeyPart::Tool]);
        assert_eq!(s.concurrency[0].max, 10);
        assert_eq!(s.concurrency[0].by, [KeyPart::Tool]);
        let none = check(r#"{"servers":{"s1":{"rates":[],"concurrency":[]}}}"#).unwrap();
        assert!(none.servers["s1"].rates.is_empty());
        assert!(Limits::default().is_empty());
    }

    #[test]
    fn mistakes_name_the_field() {
        let svc = r#","service":{"cluster":"rls"}"#;
        // One rate of server s1 with `fields`, and `top` appended to the document.
        let rate = |fields: &str, top: &str| {
            format!(r#"{{"servers":{{"s1":{{"rates":[{{"name":"r",{fields}}}]}}}}{top}}}"#)
        };
        let at = "limits.servers.s1.rates[0]";
        let cases = [
            (r#"{"servers":{"nope":{}}}"#.to_owned(), "limits.servers.nope".to_owned()),
            (rate(r#""requests":0,"per_seconds":60"#, ""), format!("{at}.requests")),
            (rate(r#""requests":5,"per_seconds":0"#, ""), format!("{at}.per_seconds")),
            (rate(r#""requests":5,"per_seconds":60,"burst":0"#, ""), format!("{at}.burst")),
            (rate(r#""requests":5,"per_seconds":60,"cost":6"#, ""), format!("{at}.cost")),
            (rate(r#""requests":5,"per_seconds":60,"by":["tool","tool"]"#, ""), format!("{at}.by[1]")),
            (rate(r#""requests":5,"per_seconds":60,"methods":[""]"#, ""), format!("{at}.methods[0]")),
            (rate(r#""requests":5,"per_seconds":60,"global":true"#, ""), format!("{at}.global")),
            (rate(r#""requests":5,"per_seconds":30,"global":true"#, svc), format!("{at}.per_seconds")),
            (rate(r#""requests":5,"per_seconds":60,"global":true,"burst":9"#, svc), format!("{at}.burst")),
            (
                r#"{"default":{"rates":[{"name":"a b","requests":1,"per_seconds":1}]}}"#.to_owned(),
                "limits.default.rates[0].name".to_owned(),
            ),
            (
                r#"{"default":{"concurrency":[{"name":"in-flight-per-tool","max":1}],"rates":[{"name":"in-flight-per-tool","requests":1,"per_seconds":1}]}}"#.to_owned(),
                "limits.default.concurrency[0].name".to_owned(),
            ),
            (
                r#"{"default":{"concurrency":[{"name":"c","max":0}]}}"#.to_owned(),
                "limits.default.concurrency[0].max".to_owned(),
            ),
            (
                r#"{"default":{"concurrency":[{"name":"c","max":1,"hold_seconds":0}]}}"#.to_owned(),
                "limits.default.concurrency[0].hold_seconds".to_owned(),
            ),
            (r#"{"service":{"cluster":""}}"#.to_owned(), "limits.service.cluster".to_owned()),
            (
                r#"{"service":{"cluster":"c","timeout_ms":0}}"#.to_owned(),
                "limits.service.timeout_ms".to_owned(),
            ),
        ];
        for (doc, want) in cases {
            match check(&doc) {
                Err(ConfigError::FieldInvalid { field, .. }) => assert_eq!(field, want, "{doc}"),
                other => panic!("{doc}: expected FieldInvalid({want}), got {other:?}"),
            }
        }
        let ok = rate(
            r#""requests":5,"per_seconds":3600,"global":true,"cost":2"#,
            svc,
        );
        let l = check(&ok).unwrap();
        assert_eq!(l.service.as_ref().unwrap().failure_mode, FailureMode::Allow);
        assert_eq!(l.service.as_ref().unwrap().domain, DEFAULT_DOMAIN);
    }
}
