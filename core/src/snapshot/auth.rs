//! Identity at the edge, as the snapshot carries it: the token issuers the edge trusts, the
//! token ids revoked before they expire ([`Auth`], the snapshot's `auth`), and per virtual
//! server whether it requires a token, the resource it is (RFC 8707/9728) and who may use
//! what of it ([`ServerAuth`], a server's `auth`).
//!
//! Signatures are not checked here: Envoy's `jwt_authn` filter, which the control plane puts
//! in front of the mcpgw filter with each issuer's keys inlined (`jwks`), verifies them and
//! hands the filter the verified payload. The filter then checks what a signature does not
//! say (issuer trusted by this server, audience, expiry, revocation, algorithm) and decides
//! with the rules (`crate::auth`). The checks here are what serde cannot express; every error
//! names its field.

use crate::catalog::RawJson;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The snapshot's `auth`: issuers and revocations shared by every virtual server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Issuers whose tokens the edge accepts, by name (the name of Envoy's `jwt_authn`
    /// provider for it: letters, digits, `-`, `_`, `.`).
    pub issuers: BTreeMap<String, Issuer>,
    /// Ids (`jti`) of tokens revoked before their expiry: refused with 401.
    pub revoked: Vec<String>,
    /// Seconds a token's `exp` and `nbf` may be off (clock skew between the issuer and the
    /// Envoys); at most [`MAX_CLOCK_SKEW_SECONDS`].
    pub clock_skew_seconds: u64,
    /// Identity on the passthrough path (every request that is not for a virtual server:
    /// the one upstream the listener's own route reaches, such as the server behind an
    /// Istio sidecar or a control plane's `--edge-passthrough` gateway), as a virtual
    /// server's `auth` says it: the token is checked at the head, each request authorized
    /// by the rules (`request.server` is empty). `None`: the passthrough path asks for no
    /// token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<ServerAuth>,
}

/// Default of [`Auth::clock_skew_seconds`].
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 30;
/// Largest [`Auth::clock_skew_seconds`]: more would stretch every token's life noticeably.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 300;

impl Default for Auth {
    fn default() -> Self {
        Auth {
            issuers: BTreeMap::new(),
            revoked: Vec::new(),
            clock_skew_seconds: DEFAULT_CLOCK_SKEW_SECONDS,
            passthrough: None,
        }
    }
}

impl Auth {
    /// Whether this is the default (nothing configured): left out of serialized snapshots.
    pub fn is_empty(&self) -> bool {
        *self == Auth::default()
    }
}

/// A token issuer (an OpenID provider, or the control plane itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// `iss` exactly as its tokens carry it: an `https` URL (`http` only on a loopback
    /// host, for development).
    pub issuer: String,
    /// Audiences accepted from this issuer on every virtual server that trusts it, besides
    /// the server's own resource URI. For providers that cannot put the resource (RFC 8707)
    /// in `aud`; empty (the default) binds every token to one server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Signature algorithms accepted (`RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`,
    /// `ES256`, `ES384`, `ES512`, `EdDSA`). Never `none`; no `HS*`: a symmetric key would
    /// have to be handed to every Envoy, and HS next to RS is the key-confusion attack.
    pub algorithms: Vec<String>,
    /// The issuer's JSON Web Key Set (public keys only), which the control plane inlines
    /// into Envoy's `jwt_authn`. The filter does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<RawJson>,
    /// How its tokens' claims become a principal.
    #[serde(default)]
    pub claims: ClaimMapping,
    /// The longest time, in seconds, between two fetches of the issuer's keys by the
    /// control plane ([`REFRESH_SECONDS_MIN`]..=[`REFRESH_SECONDS_MAX`]; default 900). A
    /// shorter `Cache-Control: max-age` on its JWKS is honoured, down to the minimum. The
    /// filter does not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_seconds: Option<u32>,
}

/// The shortest interval between two fetches of an issuer's keys (also the most often an
/// operator may ask for one).
pub const REFRESH_SECONDS_MIN: u32 = 30;
/// The longest interval an issuer's `refresh_seconds` may set (a day).
pub const REFRESH_SECONDS_MAX: u32 = 86_400;

/// Which claims of a token say who the principal is. A name starting with `/` is a JSON
/// Pointer into the payload (`/realm_access/roles`); any other is a top-level claim; an
/// empty one is not read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    /// The subject (a non-empty string is required).
    pub subject: String,
    /// The email address.
    pub email: String,
    /// Groups (an array of strings, or one space-separated string), mapped to teams and
    /// roles by `group_teams` and `group_roles`.
    pub groups: String,
    /// Team ids, taken as they are (the control plane's own tokens carry `teams`).
    pub teams: String,
    /// Role names, taken as they are.
    pub roles: String,
    /// OAuth scopes (a space-separated string, or an array as Entra ID's `scp`): a scope
    /// that names a permission (`tools.execute`, …) grants it.
    pub scope: String,
    /// Group → teams the group's members are in.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub group_teams: BTreeMap<String, Vec<String>>,
    /// Group → roles the group's members hold.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub group_roles: BTreeMap<String, Vec<String>>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            subject: "sub".into(),
            email: "email".into(),
            groups: "groups".into(),
            teams: "teams".into(),
            roles: "roles".into(),
            scope: "scope".into(),
            group_teams: BTreeMap::new(),
            group_roles: BTreeMap::new(),
        }
    }
}

/// A virtual server's `auth`: that it is an OAuth protected resource, and its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerAuth {
    /// Whether every request needs a verified token (401 without one). When `false` a token
    /// is optional: verified when sent (a bad one gets 401) and bound to the session, but
    /// nothing is authorized: permissions and rules apply only to servers that require a
    /// token.
    #[serde(default = "yes")]
    pub required: bool,
    /// The server's resource identifier (RFC 8707, RFC 9728): the absolute URL clients
    /// reach its MCP endpoint at, e.g. `https://mcp.example.com/servers/team/mcp`. A token
    /// must carry it in `aud` (or an audience its issuer lists); its metadata is served at
    /// the same origin under `/.well-known/oauth-protected-resource` + its path.
    pub resource: String,
    /// Names of the issuers (keys of the snapshot's `auth.issuers`) whose tokens this
    /// server accepts, in the order its metadata lists them as `authorization_servers`.
    /// Empty: every configured issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// Scopes clients should ask for: `scopes_supported` of the metadata and `scope` of the
    /// 401 challenge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Authorization rules (see `crate::auth::rules`): a use of a tool, prompt or resource
    /// needs the permission its method needs, at least one `allow` rule that holds and no
    /// `deny` rule that holds. No rule: nothing is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

fn yes() -> bool {
    true
}

/// One authorization rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Names the rule in denials and logs; unique within its server.
    pub name: String,
    /// What the rule does when its condition holds.
    #[serde(default)]
    pub effect: Effect,
    /// The condition: a boolean expression in the CEL subset of `crate::auth::rules`, over
    /// `principal`, `claims`, `request` and `args`.
    pub when: String,
}

/// What a rule does when its condition holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Allow the use (unless a `deny` rule holds).
    #[default]
    Allow,
    /// Refuse the use, whatever allows it. A deny rule whose condition cannot be evaluated
    /// (a missing field, a type error) refuses too: fail closed.
    Deny,
}

/// Signature algorithms an issuer may list.
pub const ALGORITHMS: [&str; 10] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
];

/// The roles a claim or group mapping may name (the control plane's fixed roles).
pub const ROLES: [&str; 4] = ["platform_admin", "team_admin", "developer", "viewer"];

/// A field of `auth` (or of a server's `auth`) that is unusable: its dotted path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// Dotted path, e.g. `auth.issuers.corp.algorithms[1]`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, AuthError> {
    Err(AuthError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// A URL as the edge reads identifiers: scheme, authority and path (no query or fragment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl<'a> {
    /// `https` or `http`.
    pub scheme: &'a str,
    /// `host[:port]`.
    pub authority: &'a str,
    /// The path, `/` at least.
    pub path: &'a str,
}

/// Parses an `https` URL (or `http` on a loopback host) without query or fragment.
pub fn parse_url(text: &str) -> Result<HttpUrl<'_>, String> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| "must be an absolute URL".to_owned())?;
    if text.contains(['?', '#']) {
        return Err("must have no query or fragment".into());
    }
    if text
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b == b'"' || b.is_ascii_control())
    {
        return Err("must not contain spaces, quotes or control characters".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("must name a host (and no user info)".into());
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    match scheme {
        "https" => {}
        "http" if matches!(host, "localhost" | "127.0.0.1" | "::1") => {}
        "http" => return Err("must be https (http only on a loopback host)".into()),
        _ => return Err(format!("scheme {scheme:?} is not https")),
    }
    Ok(HttpUrl {
        scheme,
        authority,
        path,
    })
}

/// Checks the snapshot's `auth`.
pub fn validate(auth: &Auth) -> Result<(), AuthError> {
    if auth.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return err(
            "auth.clock_skew_seconds",
            format!("must be at most {MAX_CLOCK_SKEW_SECONDS}"),
        );
    }
    let mut seen = BTreeSet::new();
    for (name, issuer) in &auth.issuers {
        let at = |f: &str| format!("auth.issuers.{name}.{f}");
        if !crate::catalog::is_path_segment(name) {
            return err(
                format!("auth.issuers.{name}"),
                "issuer name must be letters, digits, '-', '_' or '.'",
            );
        }
        if let Err(reason) = parse_url(&issuer.issuer) {
            return err(at("issuer"), reason);
        }
        if !seen.insert(issuer.issuer.as_str()) {
            return err(
                at("issuer"),
                format!("issuer {:?} is configured twice", issuer.issuer),
            );
        }
        if let Some(i) = issuer.audiences.iter().position(String::is_empty) {
            return err(at(&format!("audiences[{i}]")), "must not be empty");
        }
        check_algorithms(&issuer.algorithms).map_err(|(i, reason)| AuthError {
            field: match i {
                Some(i) => at(&format!("algorithms[{i}]")),
                None => at("algorithms"),
            },
            reason,
        })?;
        if let Some(jwks) = &issuer.jwks {
            check_jwks(jwks.get(), &issuer.algorithms).map_err(|reason| AuthError {
                field: at("jwks"),
                reason,
            })?;
        }
        check_claims(&issuer.claims, &at("claims"))?;
        if let Some(secs) = issuer.refresh_seconds
            && !(REFRESH_SECONDS_MIN..=REFRESH_SECONDS_MAX).contains(&secs)
        {
            return err(
                at("refresh_seconds"),
                format!(
                    "must be between {REFRESH_SECONDS_MIN} and {REFRESH_SECONDS_MAX} seconds, not {secs}"
                ),
            );
        }
    }
    if let Some(i) = auth.revoked.iter().position(String::is_empty) {
        return err(format!("auth.revoked[{i}]"), "must not be empty");
    }
    Ok(())
}

/// Checks an algorithm allow-list: `Err((index, reason))`, the index of the bad entry.
fn check_algorithms(algorithms: &[String]) -> Result<(), (Option<usize>, String)> {
    if algorithms.is_empty() {
        return Err((None, "at least one algorithm is required".into()));
    }
    for (i, alg) in algorithms.iter().enumerate() {
        if alg.eq_ignore_ascii_case("none") {
            return Err((Some(i), "`none` (unsigned tokens) is never accepted".into()));
        }
        if alg.starts_with("HS") {
            return Err((
                Some(i),
                "symmetric algorithms are not accepted at the edge: the key would reach every Envoy, and HS next to RS/ES is the key-confusion attack; sign with ES256 or RS256".into(),
            ));
        }
        if !ALGORITHMS.contains(&alg.as_str()) {
            return Err((
                Some(i),
                format!(
                    "unknown algorithm {alg:?}; one of {}",
                    ALGORITHMS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The JWK key type an algorithm's keys have.
pub fn key_type(alg: &str) -> Option<&'static str> {
    match alg.get(..2)? {
        "RS" | "PS" => Some("RSA"),
        "ES" => Some("EC"),
        "Ed" => Some("OKP"),
        _ => None,
    }
}

/// Checks a JWKS: an object with `keys`, each a public key of a type the algorithms use
/// (a symmetric or private key is refused), with an `alg` among them when it names one.
pub fn check_jwks(text: &str, algorithms: &[String]) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("must be a JSON Web Key Set (an object with `keys`)")?;
    let types: BTreeSet<&str> = algorithms.iter().filter_map(|a| key_type(a)).collect();
    for (i, key) in keys.iter().enumerate() {
        let kty = key.get("kty").and_then(serde_json::Value::as_str);
        let Some(kty) = kty else {
            return Err(format!("keys[{i}] has no `kty`"));
        };
        if !types.contains(kty) {
            return Err(format!(
                "keys[{i}] is a {kty:?} key, which none of the issuer's algorithms uses"
            ));
        }
        // `d` is the private exponent (RSA) or key (EC, OKP).
        if key.get("d").is_some() {
            return Err(format!("keys[{i}] is a private key"));
        }
        if let Some(alg) = key.get("alg").and_then(serde_json::Value::as_str)
            && !algorithms.iter().any(|a| a == alg)
        {
            return Err(format!(
                "keys[{i}] is for {alg:?}, which is not in the issuer's algorithms"
            ));
        }
    }
    Ok(())
}

fn check_claims(c: &ClaimMapping, at: &str) -> Result<(), AuthError> {
    if c.subject.is_empty() {
        return err(format!("{at}.subject"), "the subject claim is required");
    }
    for (group, roles) in &c.group_roles {
        for (i, role) in roles.iter().enumerate() {
            if !ROLES.contains(&role.as_str()) {
                return err(
                    format!("{at}.group_roles.{group}[{i}]"),
                    format!("unknown role {role:?}; one of {}", ROLES.join(", ")),
                );
            }
        }
    }
    for (group, teams) in &c.group_teams {
        if let Some(i) = teams.iter().position(String::is_empty) {
            return err(
                format!("{at}.group_teams.{group}[{i}]"),
                "must not be empty",
            );
        }
    }
    Ok(())
}

/// Checks virtual server `id`'s `auth` against the snapshot's issuers. Rules are parsed
/// when the configuration is compiled (`crate::auth::Access`).
pub fn validate_server(id: &str, s: &ServerAuth, auth: &Auth) -> Result<(), AuthError> {
    validate_server_at(&format!("servers.{id}.auth"), s, auth)
}

/// [`validate_server`] for the `auth` at `prefix` (`servers.{id}.auth`, or
/// `auth.passthrough`), which errors name.
pub fn validate_server_at(prefix: &str, s: &ServerAuth, auth: &Auth) -> Result<(), AuthError> {
    let at = |f: &str| format!("{prefix}.{f}");
    if let Err(reason) = parse_url(&s.resource) {
        return err(at("resource"), reason);
    }
    if auth.issuers.is_empty() {
        return err(
            at("issuers"),
            "no issuer is configured (`auth.issuers`): no token could ever be accepted",
        );
    }
    for (i, name) in s.issuers.iter().enumerate() {
        if !auth.issuers.contains_key(name) {
            return err(
                at(&format!("issuers[{i}]")),
                format!("no issuer {name:?} in `auth.issuers`"),
            );
        }
    }
    for (i, scope) in s.scopes.iter().enumerate() {
        if scope.is_empty()
            || !scope
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return err(
                at(&format!("scopes[{i}]")),
                "a scope is printable ASCII without spaces, quotes or backslashes",
            );
        }
    }
    let mut names = BTreeSet::new();
    for (i, rule) in s.rules.iter().enumerate() {
        if rule.name.is_empty() {
            return err(at(&format!("rules[{i}].name")), "must not be empty");
        }
        if !names.insert(rule.name.as_str()) {
            return err(
                at(&format!("rules[{i}].name")),
                format!("duplicate rule name {:?}", rule.name),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = [
            (
                "https://gw.example.com/servers/a/mcp",
                "gw.example.com",
                "/servers/a/mcp",
            ),
            ("https://gw.example.com", "gw.example.com", "/"),
            ("http://127.0.0.1:8080/mcp", "127.0.0.1:8080", "/mcp"),
            ("http://[::1]:9/x", "[::1]:9", "/x"),
            ("http://localhost/", "localhost", "/"),
        ];
        for (text, authority, path) in ok {
            let u = parse_url(text).unwrap();
            assert_eq!((u.authority, u.path), (authority, path), "{text}");
        }
        for bad in [
            "gw.example.com/mcp",
            "http://gw.example.com/mcp",
            "ftp://x/",
            "https:///x",
            "https://a/x?y=1",
            "https://a/x#f",
            "https://u@a/x",
            "https://a/x y",
            "https://a/\"x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn algorithm_lists() {
        let list = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_algorithms(&list(&["RS256", "ES256"])).is_ok());
        assert_eq!(check_algorithms(&[]).unwrap_err().0, None);
        for (algs, bad) in [
            (&["RS256", "none"][..], 1),
            (&["NONE"][..], 0),
            (&["HS256"][..], 0),
            (&["RS256", "HS256"][..], 1),
            (&["RS255"][..], 0),
        ] {
            assert_eq!(
                check_algorithms(&list(algs)).unwrap_err().0,
                Some(bad),
                "{algs:?}"
            );
        }
    }

    #[test]
    fn jwks_hold_public_keys_of_the_listed_algorithms_only() {
        let rs = vec!["RS256".to_owned()];
        let rsa = r#"{"kty":"RSA","kid":"a","n":"xx","e":"AQAB"}"#;
        assert!(check_jwks(&format!(r#"{{"keys":[{rsa}]}}"#), &rs).is_ok());
        assert!(check_jwks(r#"{"keys":[]}"#, &rs).is_ok());
        for bad in [
            "[]".to_owned(),
            r#"{"keys":{}}"#.to_owned(),
            r#"{"keys":[{"kid":"a"}]}"#.to_owned(),
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.to_owned(),
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}"#.to_owned(),
            r#"{"keys":[{"kty":"RSA","n":"a","e":"AQAB","d":"private"}]}"#.to_owned(),
            r#"{"keys":[{"kty":"RSA","n":"a","e":"AQAB","alg":"RS512"}]}"#.to_owned(),
        ] {
            assert!(check_jwks(&bad, &rs).is_err(), "{bad}");
        }
    }
}
