//! Login to the admin API through OpenID Connect providers (Keycloak, Okta, Entra ID, Google,
//! any certified provider): authorization code with PKCE (S256), `state` and `nonce`, the ID
//! token verified with the provider's keys, users made on first login, and the provider's
//! groups mapped to team memberships and roles at every login.
//!
//! The flow ([`Oidc::begin`], [`Oidc::complete`]):
//! 1. `GET /auth/oidc/{provider}/login`: a pending login is stored (the hash of a random
//!    `state`, a `nonce`, the PKCE verifier; ten minutes, single use) and the browser is sent
//!    to the provider's authorization endpoint.
//! 2. `GET /auth/oidc/{provider}/callback?code&state&iss`: the pending login is taken (a
//!    second use of the same `state` finds nothing); `iss` (RFC 9207), when the provider sends
//!    it or says it does, must be the provider's issuer (mix-up defence); the code is
//!    redeemed at the token endpoint with the verifier and the client's credentials; the ID
//!    token's signature is checked against the keys of the provider's `jwks_uri` (fetched
//!    through its discovery document, as the edge's issuer keys are), then `iss`, `aud`
//!    (and `azp`), `exp`, `iat` and `nonce`.
//! 3. The subject is looked up by (provider, `sub`); unknown, a user is made with its email
//!    and personal team (an existing user with that email is linked only when the provider
//!    is configured to and says the email is verified). Mapped teams and roles are applied;
//!    the answer is the same session token `POST /auth/login` gives.
//!
//! For the CLI, the login may name a loopback `return_to` and a PKCE challenge of its own:
//! the callback then sends the browser to `return_to` with a one-time handoff code (one
//! minute), which only the holder of the CLI's verifier can exchange for the session
//! (`POST /auth/oidc/token`). The session token never travels in a URL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest as _;

use super::jwt::{self, Algorithm};
use super::rbac::Role;
use crate::store::oidc::{MappedGrant, PendingLogin};
use crate::store::{Store, StoreError};

/// How long a pending login waits for its callback.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// How long the CLI's handoff code may wait to be exchanged.
pub const HANDOFF_TTL: Duration = Duration::from_secs(60);
/// How long a discovery document and JWKS are used before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(15 * 60);
/// Least time between two JWKS fetches for an unknown `kid` (a rotation at the provider).
const KEY_REFETCH: Duration = Duration::from_secs(10);
/// Largest answer read from a provider.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Clock skew tolerated on `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;

/// One OpenID provider the admin API accepts logins from (a table `[oidc_providers.NAME]` of
/// the configuration file).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The issuer, exactly as its ID tokens carry it (`https`; `http` only on a loopback
    /// host). Its discovery document is `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The client id registered at the provider.
    pub client_id: String,
    /// File with the client secret (one line, readable by its owner only); none: a public
    /// client (PKCE only).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Read from `client_secret_file` at start (never from the configuration itself).
    #[serde(skip)]
    pub client_secret: Option<ClientSecret>,
    /// The callback registered at the provider: this API's
    /// `{public URL}/auth/oidc/{NAME}/callback`.
    pub redirect_uri: String,
    /// Scopes requested [default: openid email profile]; `openid` is always sent.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// ID token algorithms accepted (RS256, ES256) [default: both].
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Which claims say who the user is.
    #[serde(default)]
    pub claims: ClaimNames,
    /// Group → teams (by name; made when missing) the group's members join, with a role.
    #[serde(default)]
    pub group_teams: BTreeMap<String, Vec<TeamGrant>>,
    /// Group → roles at global scope (`platform_admin`, …).
    #[serde(default)]
    pub group_roles: BTreeMap<String, Vec<Role>>,
    /// When not empty, only members of one of these groups may log in.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Link the first login of a subject to an existing user with the same email (only when
    /// the ID token says `email_verified: true`) [default: false: such a login is refused,
    /// since whoever controls the provider could otherwise take over a password account].
    #[serde(default)]
    pub link_existing_by_email: bool,
}

/// A client secret: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(pub String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

/// The claims that name the user. A name starting with `/` is a JSON Pointer into the ID
/// token (`/realm_access/roles`); any other is a top-level claim.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    /// The subject (stable id at the provider) [default: sub].
    pub subject: String,
    /// The email [default: email].
    pub email: String,
    /// The groups: an array of strings or one space-separated string [default: groups].
    pub groups: String,
    /// The display name [default: name].
    pub name: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            subject: "sub".into(),
            email: "email".into(),
            groups: "groups".into(),
            name: "name".into(),
        }
    }
}

/// A team a group's members join.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeamGrant {
    /// The team's name.
    pub team: String,
    /// The member's role in it (`team_admin`, `developer`, `viewer`) [default: developer].
    #[serde(default = "default_team_role")]
    pub role: Role,
}

fn default_team_role() -> Role {
    Role::Developer
}

impl ProviderConfig {
    /// Checks the configuration of provider `name`; reads the client secret file.
    pub fn validate(&mut self, name: &str) -> Result<(), String> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a provider name is 1-64 letters, digits, '-' or '_'".into());
        }
        mcpgw_core::snapshot::auth::parse_url(&self.issuer).map_err(|e| format!("issuer: {e}"))?;
        if self.client_id.trim().is_empty() {
            return Err("client_id: must not be empty".into());
        }
        let redirect =
            url::Url::parse(&self.redirect_uri).map_err(|e| format!("redirect_uri: {e}"))?;
        if !redirect
            .path()
            .ends_with(&format!("/auth/oidc/{name}/callback"))
        {
            return Err(format!(
                "redirect_uri: must end with /auth/oidc/{name}/callback (this API's callback)"
            ));
        }
        mcpgw_core::snapshot::auth::parse_url(&self.redirect_uri)
            .map_err(|e| format!("redirect_uri: {e}"))?;
        if let Some(a) = self
            .algorithms
            .iter()
            .find(|a| !matches!(a.as_str(), "RS256" | "ES256"))
        {
            return Err(format!("algorithms: {a} is not RS256 or ES256"));
        }
        if self.algorithms.is_empty() {
            return Err("algorithms: name at least one".into());
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            self.scopes.insert(0, "openid".into());
        }
        for (group, grants) in &self.group_teams {
            for g in grants {
                if g.role == Role::PlatformAdmin {
                    return Err(format!(
                        "group_teams.{group}: platform_admin is a global role (use group_roles)"
                    ));
                }
                if g.team.trim().is_empty() || g.team.starts_with("personal:") {
                    return Err(format!(
                        "group_teams.{group}: a team name, not empty and not a personal team"
                    ));
                }
            }
        }
        for (label, claim) in [
            ("subject", &self.claims.subject),
            ("email", &self.claims.email),
        ] {
            if claim.is_empty() {
                return Err(format!("claims.{label}: must name a claim"));
            }
        }
        if let Some(path) = &self.client_secret_file {
            let secret = crate::cli::read_secret_file(path)
                .map_err(|e| format!("client_secret_file: {e:#}"))?;
            self.client_secret = Some(ClientSecret(secret));
        }
        Ok(())
    }
}

/// Why an OIDC login failed. Each is its own problem type at the API.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// No provider of that name is configured.
    #[error("no OpenID provider {0:?} is configured")]
    UnknownProvider(String),
    /// The `state` is unknown, used already, expired, or of another provider.
    #[error("the login state is unknown, used or expired: start the login again")]
    BadState,
    /// The provider answered the authorization request with an error.
    #[error("the provider refused the login: {0}")]
    Denied(String),
    /// The authorization response names another issuer (RFC 9207: a mix-up).
    #[error("the authorization response comes from issuer {got:?}, not {want:?}")]
    IssuerMismatch {
        /// The `iss` parameter (empty: missing).
        got: String,
        /// The provider's issuer.
        want: String,
    },
    /// The token endpoint refused the code (used, expired, another client's, PKCE mismatch).
    #[error("the provider refused the authorization code: {0}")]
    CodeRefused(String),
    /// The ID token is not valid.
    #[error("the ID token is not valid: {0}")]
    IdToken(String),
    /// The ID token's nonce is not the login's.
    #[error("the ID token's nonce is not the one this login sent (a replayed or injected token)")]
    Nonce,
    /// A claim the mapping needs is missing or malformed.
    #[error("the ID token lacks a usable claim: {0}")]
    Claims(String),
    /// The user is in none of `allowed_groups`, or disabled.
    #[error("{0}")]
    NotAllowed(String),
    /// The email belongs to a user that is not linked to this provider's subject.
    #[error(
        "the email {0} belongs to an existing user that is not linked to this provider; an admin may enable link_existing_by_email"
    )]
    AccountConflict(String),
    /// The provider could not be reached or its metadata is unusable.
    #[error("the OpenID provider is unavailable: {0}")]
    Unavailable(String),
    /// The CLI's handoff code is unknown, used, expired, or its verifier does not match.
    #[error("the handoff code is unknown, used, expired, or the code_verifier does not match")]
    BadHandoff,
    /// Bad input.
    #[error("{}: {}", .0.field, .0.reason)]
    Field(crate::model::FieldInvalid),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing the session failed.
    #[error(transparent)]
    Auth(#[from] Box<super::AuthError>),
}

impl OidcError {
    /// The problem type and HTTP status.
    pub fn kind(&self) -> (&'static str, u16) {
        match self {
            OidcError::UnknownProvider(_) => ("unknown-oidc-provider", 404),
            OidcError::BadState => ("oidc-state-invalid", 400),
            OidcError::Denied(_) => ("oidc-login-denied", 401),
            OidcError::IssuerMismatch { .. } => ("oidc-issuer-mismatch", 400),
            OidcError::CodeRefused(_) => ("oidc-code-refused", 401),
            OidcError::IdToken(_) => ("oidc-id-token-invalid", 401),
            OidcError::Nonce => ("oidc-nonce-mismatch", 401),
            OidcError::Claims(_) => ("oidc-claims-invalid", 401),
            OidcError::NotAllowed(_) => ("oidc-login-not-allowed", 403),
            OidcError::AccountConflict(_) => ("oidc-account-conflict", 409),
            OidcError::Unavailable(_) => ("oidc-provider-unavailable", 502),
            OidcError::BadHandoff => ("oidc-handoff-invalid", 400),
            OidcError::Field(_) => ("invalid-field", 422),
            OidcError::Store(_) | OidcError::Auth(_) => ("internal", 500),
        }
    }
}

impl From<super::AuthError> for OidcError {
    fn from(e: super::AuthError) -> Self {
        OidcError::Auth(Box::new(e))
    }
}

/// What discovery says about a provider.
#[derive(Debug, Clone)]
struct Metadata {
    authorization_endpoint: String,
    token_endpoint: String,
    /// Whether it sends `iss` in authorization responses (RFC 9207).
    iss_parameter: bool,
    /// JWKS (usable public keys).
    jwks: Value,
    fetched: Instant,
}

/// A configured provider with its cached metadata.
#[derive(Debug)]
struct Provider {
    config: ProviderConfig,
    /// A `std` mutex, never held across an `.await`.
    metadata: Mutex<Option<Metadata>>,
}

/// The login service.
#[derive(Debug)]
pub struct Oidc {
    providers: BTreeMap<String, Provider>,
    http: reqwest::Client,
}

/// Where the login starts: the URL the browser is sent to.
#[derive(Debug, Clone)]
pub struct Started {
    /// The provider's authorization URL.
    pub authorization_url: String,
}

/// The end of a successful callback.
#[derive(Debug)]
pub enum Completed {
    /// A session for the browser.
    Session(Box<super::Session>),
    /// A handoff code for the CLI, to give to `return_to` (or to show when there is none).
    Handoff {
        /// The code.
        code: String,
        /// Where to send it.
        return_to: Option<String>,
    },
}

/// The verified claims that matter.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The subject.
    pub subject: String,
    /// The email (lower case).
    pub email: String,
    /// Whether the provider says the email is verified.
    pub email_verified: bool,
    /// The display name.
    pub name: Option<String>,
    /// The groups.
    pub groups: Vec<String>,
}

fn random_b64(n: usize) -> Result<String, OidcError> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| OidcError::Unavailable("no randomness".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The S256 PKCE challenge of `verifier` (RFC 7636).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// Whether `s` has the shape of a PKCE verifier or S256 challenge (43-128 unreserved
/// characters).
fn pkce_shaped(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Checks a CLI's `return_to`: a loopback `http` URL with a port (RFC 8252 7.3).
pub fn check_return_to(raw: &str) -> Result<url::Url, crate::model::FieldInvalid> {
    let bad = || {
        crate::model::FieldInvalid::new(
            "return_to",
            "must be http://127.0.0.1:PORT/…, http://[::1]:PORT/… or http://localhost:PORT/… (a loopback redirect, RFC 8252)",
        )
    };
    let u = url::Url::parse(raw).map_err(|_| bad())?;
    let loopback = matches!(
        u.host(),
        Some(url::Host::Ipv4(ip)) if ip.is_loopback()
    ) || matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        || u.host_str() == Some("localhost");
    if u.scheme() != "http"
        || !loopback
        || u.port().is_none()
        || !u.username().is_empty()
        || u.password().is_some()
        || u.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(u)
}

/// A claim by name, or by JSON Pointer when it starts with `/`.
fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

/// The identity in verified ID token claims, as `names` says.
pub fn identity(claims: &Value, names: &ClaimNames) -> Result<Identity, OidcError> {
    let subject = claim(claims, &names.subject)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or_else(|| OidcError::Claims(format!("{} (the subject)", names.subject)))?
        .to_owned();
    let email = claim(claims, &names.email)
        .and_then(Value::as_str)
        .ok_or_else(|| OidcError::Claims(format!("{} (the email)", names.email)))?;
    let email = super::normalize_email(email)
        .map_err(|e| OidcError::Claims(format!("{}: {}", names.email, e.reason)))?;
    let groups = if names.groups.is_empty() {
        Vec::new()
    } else {
        match claim(claims, &names.groups) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|g| g.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    OidcError::Claims(format!("{}: groups must be strings", names.groups))
                })?,
            Some(_) => {
                return Err(OidcError::Claims(format!(
                    "{}: an array of strings or a space-separated string",
                    names.groups
                )));
            }
        }
    };
    Ok(Identity {
        subject,
        email,
        email_verified: claims.get("email_verified").and_then(Value::as_bool) == Some(true),
        name: claim(claims, &names.name)
            .and_then(Value::as_str)
            .map(|s| s.chars().take(255).collect()),
        groups,
    })
}

/// The teams (by name, with the strongest role any group gives) and global roles `groups`
/// are mapped to.
pub fn mapped(
    config: &ProviderConfig,
    groups: &[String],
) -> (BTreeMap<String, Role>, BTreeSet<Role>) {
    let mut teams: BTreeMap<String, Role> = BTreeMap::new();
    let mut roles = BTreeSet::new();
    for g in groups {
        for grant in config.group_teams.get(g).into_iter().flatten() {
            teams
                .entry(grant.team.clone())
                .and_modify(|r| *r = (*r).min(grant.role))
                .or_insert(grant.role);
        }
        roles.extend(config.group_roles.get(g).into_iter().flatten().copied());
    }
    (teams, roles)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// What the ID token must be, besides well signed.
#[derive(Debug, Clone)]
pub struct IdTokenExpect<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// The client id (in `aud`; `azp` when `aud` has several).
    pub client_id: &'a str,
    /// The login's nonce.
    pub nonce: &'a str,
    /// Accepted algorithms.
    pub algorithms: &'a [String],
    /// Now (seconds since the epoch).
    pub now: i64,
}

/// Verifies an ID token (OpenID Connect Core 3.1.3.7) with the keys of `jwks`; returns its
/// claims.
pub fn verify_id_token(
    token: &str,
    jwks: &Value,
    expect: &IdTokenExpect<'_>,
) -> Result<Value, OidcError> {
    let bad = |why: &str| OidcError::IdToken(why.to_owned());
    let unb64 = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad("not base64url"))
    };
    if token.len() > 16 * 1024 {
        return Err(bad("longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a compact JWS"));
    };
    let header: Header =
        serde_json::from_slice(&unb64(head)?).map_err(|_| bad("malformed header"))?;
    let alg = Algorithm::parse(&header.alg)
        .filter(|a| *a != Algorithm::Hs256 && expect.algorithms.iter().any(|x| x == a.as_str()))
        .ok_or_else(|| bad(&format!("algorithm {:?} not accepted", header.alg)))?;
    let kty = if alg == Algorithm::Es256 { "EC" } else { "RSA" };
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let candidates: Vec<&Value> = keys
        .iter()
        .filter(|k| k.get("kty").and_then(Value::as_str) == Some(kty))
        .filter(
            |k| match (&header.kid, k.get("kid").and_then(Value::as_str)) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            },
        )
        .collect();
    if candidates.is_empty() {
        return Err(bad("no key of the provider's JWKS matches its kid"));
    }
    let sig = unb64(sig)?;
    let input = &token.as_bytes()[..head.len() + 1 + body.len()];
    let verified = candidates
        .iter()
        .any(|k| jwt::Verifier::from_jwk(k).is_ok_and(|v| v.verify(alg, input, &sig)));
    if !verified {
        return Err(bad("bad signature"));
    }
    let claims: Value =
        serde_json::from_slice(&unb64(body)?).map_err(|_| bad("malformed claims"))?;
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(bad(&format!(
            "issued by {:?}, not {:?}",
            claims.get("iss").and_then(Value::as_str).unwrap_or(""),
            expect.issuer
        )));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !audiences.contains(&expect.client_id) {
        return Err(bad("not issued for this client (aud)"));
    }
    if audiences.len() > 1 && claims.get("azp").and_then(Value::as_str) != Some(expect.client_id) {
        return Err(bad("several audiences and azp is not this client"));
    }
    let num = |k: &str| claims.get(k).and_then(Value::as_i64);
    match num("exp") {
        Some(exp) if exp + LEEWAY_SECS > expect.now => {}
        Some(_) => return Err(bad("expired")),
        None => return Err(bad("no exp")),
    }
    if num("iat").is_none_or(|iat| iat - LEEWAY_SECS > expect.now) {
        return Err(bad("no iat, or issued in the future"));
    }
    if num("nbf").is_some_and(|nbf| nbf - LEEWAY_SECS > expect.now) {
        return Err(bad("not yet valid"));
    }
    let nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        nonce.as_bytes(),
        expect.nonce.as_bytes(),
    )) {
        return Err(OidcError::Nonce);
    }
    Ok(claims)
}

fn rfc3339_in(d: Duration) -> String {
    (chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::minutes(10)))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Oidc {
    /// The service for `providers` (validated by the configuration).
    pub fn new(providers: &BTreeMap<String, ProviderConfig>) -> Result<Oidc, String> {
        let http = crate::edge_config::key_client().map_err(|e| e.to_string())?;
        Ok(Oidc {
            providers: providers
                .iter()
                .map(|(name, config)| {
                    (
                        name.clone(),
                        Provider {
                            config: config.clone(),
                            metadata: Mutex::new(None),
                        },
                    )
                })
                .collect(),
            http,
        })
    }

    /// The configured providers: name and issuer.
    pub fn providers(&self) -> Vec<(String, String)> {
        self.providers
            .iter()
            .map(|(n, p)| (n.clone(), p.config.issuer.clone()))
            .collect()
    }

    fn provider(&self, name: &str) -> Result<&Provider, OidcError> {
        self.providers
            .get(name)
            .ok_or_else(|| OidcError::UnknownProvider(name.to_owned()))
    }

    /// The provider's metadata (cached); `refresh_keys` fetches again when the cache is
    /// older than [`KEY_REFETCH`] (a `kid` the cached JWKS lacks).
    async fn metadata(&self, p: &Provider, refresh_keys: bool) -> Result<Metadata, OidcError> {
        let cached = p
            .metadata
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(m) = cached {
            let age = m.fetched.elapsed();
            if age < METADATA_TTL && !(refresh_keys && age > KEY_REFETCH) {
                return Ok(m);
            }
        }
        let m = self.fetch_metadata(&p.config).await?;
        *p.metadata
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(m.clone());
        Ok(m)
    }

    async fn fetch_metadata(&self, c: &ProviderConfig) -> Result<Metadata, OidcError> {
        let unavailable = |e: String| OidcError::Unavailable(e);
        let url = format!(
            "{}/.well-known/openid-configuration",
            c.issuer.trim_end_matches('/')
        );
        let doc = self
            .get_json(&url)
            .await
            .map_err(|e| unavailable(format!("discovery document: {e}")))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(c.issuer.as_str()) {
            return Err(unavailable(
                "the discovery document names another issuer".into(),
            ));
        }
        let endpoint = |k: &str| -> Result<String, OidcError> {
            let v = doc
                .get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| unavailable(format!("the discovery document has no {k}")))?;
            mcpgw_core::snapshot::auth::parse_url(v)
                .map_err(|e| unavailable(format!("{k}: {e}")))?;
            Ok(v.to_owned())
        };
        if let Some(methods) = doc
            .get("code_challenge_methods_supported")
            .and_then(Value::as_array)
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(unavailable(
                "the provider does not support PKCE S256".into(),
            ));
        }
        // The edge's key fetcher: discovery, the same-issuer check, `jwks_uri`, and only the
        // public signing keys of the accepted algorithms.
        let jwks = crate::edge_config::fetch_jwks(&self.http, &c.issuer, &c.algorithms)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(Metadata {
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
            iss_parameter: doc
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                == Some(true),
            jwks: serde_json::from_str(&jwks).map_err(|e| unavailable(e.to_string()))?,
            fetched: Instant::now(),
        })
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        read_json(r).await.map(|(_, v)| v)
    }

    /// Starts a login: stores the pending login, answers the provider's authorization URL.
    /// `cli` is the CLI's loopback `return_to` (optional) and PKCE challenge.
    pub async fn begin(
        &self,
        store: &Store,
        provider: &str,
        cli: Option<(Option<String>, String)>,
    ) -> Result<Started, OidcError> {
        let p = self.provider(provider)?;
        if let Some((return_to, challenge)) = &cli {
            if let Some(r) = return_to {
                check_return_to(r).map_err(OidcError::Field)?;
            }
            if !pkce_shaped(challenge) {
                return Err(OidcError::Field(crate::model::FieldInvalid::new(
                    "code_challenge",
                    "must be an S256 PKCE challenge (43-128 base64url characters)",
                )));
            }
        }
        let m = self.metadata(p, false).await?;
        let state = random_b64(32)?;
        let nonce = random_b64(32)?;
        let verifier = random_b64(48)?;
        let (return_to, client_challenge) = match cli {
            Some((r, c)) => (r, Some(c)),
            None => (None, None),
        };
        store
            .insert_oidc_login(&PendingLogin {
                key: super::token::hash(&state),
                provider: provider.to_owned(),
                nonce: nonce.clone(),
                code_verifier: verifier.clone(),
                return_to,
                client_challenge,
                user_id: None,
                expires_at: rfc3339_in(LOGIN_TTL),
            })
            .await?;
        let mut url = url::Url::parse(&m.authorization_endpoint)
            .map_err(|e| OidcError::Unavailable(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &p.config.client_id)
            .append_pair("redirect_uri", &p.config.redirect_uri)
            .append_pair("scope", &p.config.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(Started {
            authorization_url: url.into(),
        })
    }

    /// The pending login a callback's `state` names (taken: a second callback with it
    /// finds nothing).
    pub async fn take_state(
        &self,
        store: &Store,
        provider: &str,
        state: &str,
    ) -> Result<PendingLogin, OidcError> {
        self.provider(provider)?;
        let pending = store
            .take_oidc_login(&super::token::hash(state))
            .await?
            .ok_or(OidcError::BadState)?;
        if pending.provider != provider || pending.user_id.is_some() {
            return Err(OidcError::BadState);
        }
        Ok(pending)
    }

    /// Completes the login of `pending` (taken from the callback's `state`) with the
    /// callback's `code` and `iss`.
    pub async fn complete(
        &self,
        auth: &super::Auth,
        pending: PendingLogin,
        code: &str,
        iss: Option<&str>,
    ) -> Result<Completed, OidcError> {
        let p = self.provider(&pending.provider)?;
        let c = &p.config;
        let m = self.metadata(p, false).await?;
        match iss {
            Some(i) if i != c.issuer => {
                return Err(OidcError::IssuerMismatch {
                    got: i.to_owned(),
                    want: c.issuer.clone(),
                });
            }
            None if m.iss_parameter => {
                return Err(OidcError::IssuerMismatch {
                    got: String::new(),
                    want: c.issuer.clone(),
                });
            }
            _ => {}
        }
        let id_token = self.redeem(c, &m, code, &pending.code_verifier).await?;
        let expect = IdTokenExpect {
            issuer: &c.issuer,
            client_id: &c.client_id,
            nonce: &pending.nonce,
            algorithms: &c.algorithms,
            now: chrono::Utc::now().timestamp(),
        };
        let claims = match verify_id_token(&id_token, &m.jwks, &expect) {
            // A key the cached JWKS lacks: the provider may have rotated; fetch once more.
            Err(OidcError::IdToken(why)) if why.contains("kid") => {
                let m = self.metadata(p, true).await?;
                verify_id_token(&id_token, &m.jwks, &expect)?
            }
            other => other?,
        };
        let who = identity(&claims, &c.claims)?;
        let user = self
            .user_for(auth.store(), &pending.provider, c, &who)
            .await?;
        match pending.client_challenge {
            None => Ok(Completed::Session(Box::new(
                auth.issue_session(&user).await?,
            ))),
            Some(challenge) => {
                let code = random_b64(32)?;
                auth.store()
                    .insert_oidc_login(&PendingLogin {
                        key: handoff_key(&code),
                        provider: pending.provider.clone(),
                        nonce: String::new(),
                        code_verifier: String::new(),
                        return_to: None,
                        client_challenge: Some(challenge),
                        user_id: Some(user.id.clone()),
                        expires_at: rfc3339_in(HANDOFF_TTL),
                    })
                    .await?;
                Ok(Completed::Handoff {
                    code,
                    return_to: pending.return_to,
                })
            }
        }
    }

    /// Exchanges the CLI's handoff code and verifier for a session.
    pub async fn redeem_handoff(
        &self,
        auth: &super::Auth,
        code: &str,
        verifier: &str,
    ) -> Result<super::Session, OidcError> {
        let pending = auth
            .store()
            .take_oidc_login(&handoff_key(code))
            .await?
            .ok_or(OidcError::BadHandoff)?;
        let (Some(user_id), Some(challenge)) = (&pending.user_id, &pending.client_challenge) else {
            return Err(OidcError::BadHandoff);
        };
        let ok = pkce_shaped(verifier)
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                pkce_challenge(verifier).as_bytes(),
                challenge.as_bytes(),
            ));
        if !ok {
            return Err(OidcError::BadHandoff);
        }
        let user = auth.store().get_user(user_id).await?;
        if !user.active {
            return Err(OidcError::NotAllowed("the user is disabled".into()));
        }
        Ok(auth.issue_session(&user).await?)
    }

    /// Redeems `code` at the token endpoint; answers the ID token.
    async fn redeem(
        &self,
        c: &ProviderConfig,
        m: &Metadata,
        code: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        // The serializer is not `Send`: the body is made before any `.await`.
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &c.redirect_uri)
                .append_pair("code_verifier", verifier);
            if c.client_secret.is_none() {
                form.append_pair("client_id", &c.client_id);
            }
            form.finish()
        };
        let mut req = self
            .http
            .post(&m.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        // RFC 6749 2.3.1: both halves form-encoded before Basic.
        if let Some(secret) = &c.client_secret {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(&c.client_id),
                enc(&secret.0)
            ));
            req = req.header("authorization", format!("Basic {basic}"));
        }
        let r = req
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(format!("token endpoint: {e}")))?;
        let (status, body) = read_json(r)
            .await
            .map_err(|e| OidcError::Unavailable(format!("token endpoint: {e}")))?;
        if !(200..300).contains(&status) {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("error");
            let detail = body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(OidcError::CodeRefused(
                format!("{error} {detail}")
                    .trim()
                    .chars()
                    .take(300)
                    .collect(),
            ));
        }
        body.get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| OidcError::IdToken("the token response has no id_token".into()))
    }

    /// The user `who` is: linked, linked now by email (when allowed), or made. Applies the
    /// group mapping.
    async fn user_for(
        &self,
        store: &Store,
        provider: &str,
        c: &ProviderConfig,
        who: &Identity,
    ) -> Result<crate::store::identity::User, OidcError> {
        if !c.allowed_groups.is_empty() && !who.groups.iter().any(|g| c.allowed_groups.contains(g))
        {
            return Err(OidcError::NotAllowed(
                "the user is in none of the groups allowed to log in".into(),
            ));
        }
        let user = match store.find_oidc_identity(provider, &who.subject).await? {
            Some(id) => store.get_user(&id).await?,
            None => {
                let user = match store
                    .create_user(&who.email, who.name.as_deref(), None, &[])
                    .await
                {
                    Ok(u) => {
                        tracing::info!(email = %u.email, %provider, "user made at first OIDC login");
                        u
                    }
                    Err(StoreError::Duplicate { .. }) => {
                        let existing = store
                            .find_user_login(&who.email)
                            .await?
                            .ok_or_else(|| OidcError::AccountConflict(who.email.clone()))?;
                        if !(c.link_existing_by_email && who.email_verified) {
                            return Err(OidcError::AccountConflict(who.email.clone()));
                        }
                        existing.user
                    }
                    Err(e) => return Err(e.into()),
                };
                store
                    .link_oidc_identity(provider, &who.subject, &user.id)
                    .await?;
                user
            }
        };
        if !user.active {
            return Err(OidcError::NotAllowed("the user is disabled".into()));
        }
        store.touch_oidc_identity(provider, &who.subject).await?;
        let (teams, roles) = mapped(c, &who.groups);
        let mut grants: Vec<MappedGrant> = roles
            .into_iter()
            .map(|role| MappedGrant { team: None, role })
            .collect();
        for (team, role) in teams {
            grants.push(MappedGrant {
                team: Some(store.ensure_team(&team).await?),
                role,
            });
        }
        store.sync_oidc_grants(&user.id, provider, &grants).await?;
        Ok(store.get_user(&user.id).await?)
    }
}

/// The stored key of a handoff code (apart from states: a state is never a handoff).
fn handoff_key(code: &str) -> String {
    format!("handoff:{}", super::token::hash(code))
}

/// Status and JSON body of a response, bounded in size.
async fn read_json(mut r: reqwest::Response) -> Result<(u16, Value), String> {
    let status = r.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            return Err("answer too large".into());
        }
    }
    let v = serde_json::from_slice(&body).map_err(|_| format!("HTTP {status}: not JSON"))?;
    Ok((status, v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn key(kid: &str) -> jwt::Key {
        let (signer, verifier) = jwt::ec_signer(&jwt::generate_ec_pkcs8().unwrap()).unwrap();
        jwt::Key {
            kid: kid.into(),
            alg: Algorithm::Es256,
            signer: Some(signer),
            verifier,
        }
    }

    /// Signs arbitrary claims with `key` (jwt::sign takes session claims only).
    fn sign(key: &jwt::Key, claims: &Value) -> String {
        let head = b64(json!({"alg": "ES256", "kid": key.kid})
            .to_string()
            .as_bytes());
        let body = b64(claims.to_string().as_bytes());
        let input = format!("{head}.{body}");
        let jwt::Signer::Ec(kp) = key.signer.as_ref().unwrap() else {
            unreachable!()
        };
        let sig = kp
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    #[test]
    fn id_tokens_are_checked_as_openid_connect_core_says() {
        let now = 1_800_000_000;
        let k = key("k1");
        let jwks = json!({"keys": [k.verifier.jwk("k1", Algorithm::Es256).unwrap()]});
        let algorithms = vec!["ES256".to_owned()];
        let expect = IdTokenExpect {
            issuer: "https://idp.example.com",
            client_id: "mcpgw",
            nonce: "n-1",
            algorithms: &algorithms,
            now,
        };
        let good = json!({"iss": "https://idp.example.com", "aud": "mcpgw", "sub": "u1",
                          "exp": now + 300, "iat": now, "nonce": "n-1", "email": "A@x.org"});
        let claims = verify_id_token(&sign(&k, &good), &jwks, &expect).unwrap();
        assert_eq!(claims["sub"], "u1");
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = good.clone();
            f(&mut c);
            sign(&k, &c)
        };
        let other_key = key("k1");
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "another issuer",
                with(&|c| c["iss"] = json!("https://evil.example.com")),
                "issued by",
            ),
            (
                "another client",
                with(&|c| c["aud"] = json!("other")),
                "aud",
            ),
            (
                "several audiences without azp",
                with(&|c| c["aud"] = json!(["mcpgw", "x"])),
                "azp",
            ),
            ("expired", with(&|c| c["exp"] = json!(now - 120)), "expired"),
            (
                "issued in the future",
                with(&|c| c["iat"] = json!(now + 600)),
                "future",
            ),
            ("wrong nonce", with(&|c| c["nonce"] = json!("n-2")), "nonce"),
            (
                "no nonce",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("nonce");
                }),
                "nonce",
            ),
            (
                "signed by another key",
                sign(&other_key, &good),
                "signature",
            ),
            ("unknown kid", sign(&key("k9"), &good), "kid"),
            ("garbage", "a.b".into(), "compact"),
        ];
        for (name, token, want) in cases {
            let e = verify_id_token(&token, &jwks, &expect).unwrap_err();
            assert!(e.to_string().contains(want), "{name}: {e}");
        }
        // alg none and HS256 are never accepted.
        let signed = sign(&k, &good);
        let parts: Vec<&str> = signed.split('.').collect();
        for alg in ["none", "HS256", "RS256"] {
            let head = b64(json!({"alg": alg, "kid": "k1"}).to_string().as_bytes());
            let t = format!("{head}.{}.{}", parts[1], parts[2]);
            let e = verify_id_token(&t, &jwks, &expect).unwrap_err();
            assert!(e.to_string().contains("not accepted"), "{alg}: {e}");
        }
        // Several audiences with azp naming this client pass.
        let t = with(&|c| {
            c["aud"] = json!(["mcpgw", "x"]);
            c["azp"] = json!("mcpgw");
        });
        assert!(verify_id_token(&t, &jwks, &expect).is_ok());
    }

    fn provider() -> ProviderConfig {
        toml::from_str(
            r#"
            issuer = "https://idp.example.com"
            client_id = "mcpgw"
            redirect_uri = "https://gw.example.com/auth/oidc/corp/callback"
            [claims]
            groups = "/realm_access/roles"
            [group_teams]
            devs = [{ team = "platform" }]
            leads = [{ team = "platform", role = "team_admin" }, { team = "ops", role = "viewer" }]
            [group_roles]
            admins = ["platform_admin"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn claims_and_group_mappings() {
        let mut c = provider();
        c.validate("corp").unwrap();
        assert_eq!(c.scopes, ["openid", "email", "profile"]);
        let claims = json!({"sub": "s1", "email": "Bob@Example.com", "email_verified": true,
                            "realm_access": {"roles": ["devs", "leads"]}});
        let who = identity(&claims, &c.claims).unwrap();
        assert_eq!(who.email, "bob@example.com");
        assert!(who.email_verified);
        assert_eq!(who.groups, ["devs", "leads"]);
        let (teams, roles) = mapped(&c, &who.groups);
        // The strongest role any group gives.
        assert_eq!(teams["platform"], Role::TeamAdmin);
        assert_eq!(teams["ops"], Role::Viewer);
        assert!(roles.is_empty());
        let (_, roles) = mapped(&c, &["admins".to_owned()]);
        assert_eq!(roles.into_iter().collect::<Vec<_>>(), [Role::PlatformAdmin]);
        // A space-separated string is a list; a missing claim is none.
        let spaced = json!({"sub": "s", "email": "a@b.c", "realm_access": {"roles": "a b"}});
        assert_eq!(identity(&spaced, &c.claims).unwrap().groups, ["a", "b"]);
        let none = json!({"sub": "s", "email": "a@b.c"});
        assert!(identity(&none, &c.claims).unwrap().groups.is_empty());
        for (name, bad) in [
            ("no subject", json!({"email": "a@b.c"})),
            ("no email", json!({"sub": "s"})),
            ("not an email", json!({"sub": "s", "email": "nope"})),
            (
                "groups of numbers",
                json!({"sub": "s", "email": "a@b.c", "realm_access": {"roles": [1]}}),
            ),
        ] {
            assert!(
                matches!(identity(&bad, &c.claims), Err(OidcError::Claims(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn provider_configuration_is_validated() {
        type Edit = fn(&mut ProviderConfig);
        let cases: [(&str, Edit, &str); 5] = [
            (
                "http issuer off loopback",
                |c| c.issuer = "http://idp.example.com".into(),
                "issuer",
            ),
            (
                "callback of another provider",
                |c| c.redirect_uri = "https://gw.example.com/auth/oidc/x/callback".into(),
                "redirect_uri",
            ),
            (
                "HS256",
                |c| c.algorithms = vec!["HS256".into()],
                "algorithms",
            ),
            (
                "platform_admin in a team",
                |c| {
                    c.group_teams.insert(
                        "g".into(),
                        vec![TeamGrant {
                            team: "t".into(),
                            role: Role::PlatformAdmin,
                        }],
                    );
                },
                "global role",
            ),
            (
                "a personal team",
                |c| {
                    c.group_teams.insert(
                        "g".into(),
                        vec![TeamGrant {
                            team: "personal:a@b.c".into(),
                            role: Role::Viewer,
                        }],
                    );
                },
                "personal",
            ),
        ];
        for (name, edit, want) in cases {
            let mut c = provider();
            edit(&mut c);
            let e = c.validate("corp").unwrap_err();
            assert!(e.contains(want), "{name}: {e}");
        }
        assert!(provider().validate("bad name").is_err());
    }

    #[test]
    fn return_to_must_be_a_loopback_redirect() {
        for ok in [
            "http://127.0.0.1:5000/cb",
            "http://[::1]:1/x",
            "http://localhost:8080/",
        ] {
            assert!(check_return_to(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:5000/cb",
            "http://127.0.0.1/cb",
            "http://evil.example.com:80/cb",
            "http://user@127.0.0.1:5/cb",
            "javascript:alert(1)",
        ] {
            assert!(check_return_to(bad).is_err(), "{bad}");
        }
        let v = "a".repeat(43);
        assert!(pkce_shaped(&v) && !pkce_shaped("short") && !pkce_shaped(&"a+".repeat(30)));
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
