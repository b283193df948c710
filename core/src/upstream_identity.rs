//! As whom the edge calls an upstream on a principal's behalf (DESIGN, "Upstream identity
//! per gateway"): the snapshot's [`UpstreamIdentity`] of each upstream, and the pure parts
//! of the two modes the filter carries out itself.
//!
//! - `none` and `static` are the cluster's: the client's credentials are removed on the way
//!   out and, for `static`, the gateway's stored credential added (the control plane writes
//!   both into the upstream cluster's header mutation). The filter does nothing more.
//! - `identity-header`: the filter adds [`IDENTITY_HEADER`], a compact JWS (HS256) whose
//!   claims say who the principal is ([`sign_identity`]). The key is the upstream's own,
//!   derived by the control plane and delivered in the snapshot, which only Envoys read.
//!   HMAC-SHA256 costs two SHA-256 compressions of ~300 bytes: no asymmetric signature per
//!   request in wasm (and no `ring` there).
//! - `token-exchange`: the filter trades the client's access token at the authorization
//!   server's token endpoint (RFC 8693) for one scoped to the upstream
//!   ([`exchange_request`], [`read_exchange_answer`]) and sends that as the upstream's
//!   `Authorization`. The gateway authenticates to the token endpoint as an OAuth client
//!   through the endpoint's cluster (the control plane adds its credentials there, as it
//!   adds a static credential to an upstream's cluster): no secret is in the snapshot. The
//!   answer is cached per principal and upstream in shared data ([`CachedToken`]) until it
//!   expires, less [`EXPIRY_SKEW_S`], and never past the client's own token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::Sha256;

use crate::auth::Principal;

/// The request header that carries the signed principal to an identity-header upstream.
pub const IDENTITY_HEADER: &str = "x-mcpgw-identity";
/// `grant_type` of a token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type of the client's token and of the one asked for (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// How long before its stated expiry an exchanged token is no longer used.
pub const EXPIRY_SKEW_S: u64 = 30;
/// Lifetime assumed for an exchanged token whose answer states none (`expires_in` is only
/// RECOMMENDED): short, so such a token is fetched again soon.
pub const DEFAULT_EXPIRES_IN_S: u64 = 60;
/// Longest lifetime an exchanged token is cached for, whatever the server says.
pub const MAX_CACHE_S: u64 = 24 * 60 * 60;
/// Largest exchanged token accepted (it travels in a request header).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// How long the filter waits for the token endpoint.
pub const EXCHANGE_TIMEOUT_MS: u64 = 5_000;
/// Prefix of the shared-data keys of cached exchanged tokens.
pub const CACHE_KEY_PREFIX: &str = "mcpgw.tx.";
/// Shortest identity-header lifetime.
pub const MIN_TTL_S: u64 = 5;
/// Longest identity-header lifetime.
pub const MAX_TTL_S: u64 = 600;

/// How the edge identifies itself (or the principal) to one upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum UpstreamIdentity {
    /// The upstream gets no credential (the cluster removes the client's).
    None,
    /// The gateway's stored credential, added by the cluster (the default).
    #[default]
    Static,
    /// The principal as a signed header.
    IdentityHeader(IdentityHeader),
    /// The client's token exchanged for one scoped to the upstream.
    TokenExchange(TokenExchange),
}

impl UpstreamIdentity {
    /// Whether this is the default (`static`): then the snapshot leaves the field out.
    pub fn is_static(&self) -> bool {
        matches!(self, UpstreamIdentity::Static)
    }

    /// Checks the values a parse cannot (`Err`: field under `identity`, reason).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self {
            UpstreamIdentity::None | UpstreamIdentity::Static => Ok(()),
            UpstreamIdentity::IdentityHeader(h) => {
                if !(MIN_TTL_S..=MAX_TTL_S).contains(&h.ttl_seconds) {
                    return Err((
                        "ttl_seconds",
                        format!("must be between {MIN_TTL_S} and {MAX_TTL_S}"),
                    ));
                }
                if h.audience.is_empty() {
                    return Err(("audience", "must not be empty".into()));
                }
                Ok(())
            }
            UpstreamIdentity::TokenExchange(t) => {
                if t.cluster.is_empty() {
                    return Err(("cluster", "must not be empty".into()));
                }
                if !t.path.starts_with('/') {
                    return Err(("path", "must start with '/'".into()));
                }
                if t.audience.is_none() && t.resource.is_none() {
                    return Err((
                        "audience",
                        "an exchange names its target: audience, resource or both".into(),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A key for HMAC-SHA256, in the snapshot as base64url (32 bytes). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(pub [u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl Serialize for SigningKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl<'de> Deserialize<'de> for SigningKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(raw.as_bytes())
            .map_err(|_| serde::de::Error::custom("key: not base64url without padding"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("key: must be 32 bytes"))?;
        Ok(SigningKey(key))
    }
}

/// The `identity-header` mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeader {
    /// The upstream's key.
    pub key: SigningKey,
    /// `kid` of the JWS header: which key signed (it changes when the key does).
    pub kid: String,
    /// `aud`: the upstream (the gateway's id).
    pub audience: String,
    /// `iss`: who signs (the control plane's issuer name).
    pub issuer: String,
    /// Lifetime of each signed header.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    60
}

/// The `token-exchange` mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    /// The cluster of the token endpoint (its client authentication is added there).
    pub cluster: String,
    /// The token endpoint's path (and query).
    pub path: String,
    /// `:authority` of the token endpoint.
    pub authority: String,
    /// `audience` asked for (RFC 8693 §2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// `resource` asked for (RFC 8707).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `scope` asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The claims of an identity header for `principal`, signed with `h`'s key, issued `now`.
pub fn sign_identity(h: &IdentityHeader, principal: &Principal, now: u64) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        aud: &'a str,
        sub: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        email: Option<&'a str>,
        teams: &'a [String],
        roles: &'a [String],
        /// The issuer that authenticated the principal.
        idp: &'a str,
        iat: u64,
        exp: u64,
    }
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": h.kid});
    let claims = Claims {
        iss: &h.issuer,
        aud: &h.audience,
        sub: &principal.subject,
        email: principal.email.as_deref(),
        teams: &principal.teams,
        roles: &principal.roles,
        idp: &principal.issuer,
        iat: now,
        exp: now.saturating_add(h.ttl_seconds),
    };
    let mut out = String::with_capacity(512);
    URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&claims).unwrap_or_default(), &mut out);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&h.key.0)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(out.as_bytes());
    let tag = mac.finalize().into_bytes();
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut out);
    out
}

/// The shared-data key of the exchanged token of principal `digest` for `upstream`.
pub fn cache_key(upstream: &str, digest: &str) -> String {
    format!("{CACHE_KEY_PREFIX}{upstream}.{digest}")
}

/// An exchanged token as cached: until when it may be used, and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedToken {
    /// Seconds since the epoch after which it is not used.
    pub use_until: u64,
    /// The access token.
    pub token: String,
}

impl CachedToken {
    /// The stored form: `{use_until}\n{token}`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}\n{}", self.use_until, self.token).into_bytes()
    }

    /// Reads a stored value; `None` when it is not one, or no longer usable at `now`.
    pub fn decode(raw: &[u8], now: u64) -> Option<CachedToken> {
        let text = std::str::from_utf8(raw).ok()?;
        let (until, token) = text.split_once('\n')?;
        let use_until: u64 = until.parse().ok()?;
        (now < use_until && !token.is_empty()).then(|| CachedToken {
            use_until,
            token: token.to_owned(),
        })
    }
}

/// The token endpoint call for `subject_token` (the client's access token): headers
/// (pseudo-headers included) and the form body.
pub fn exchange_request(
    t: &TokenExchange,
    subject_token: &str,
) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let mut body = String::with_capacity(256 + subject_token.len());
    body.push_str("grant_type=");
    form_encode(&mut body, TOKEN_EXCHANGE_GRANT);
    body.push_str("&subject_token=");
    form_encode(&mut body, subject_token);
    body.push_str("&subject_token_type=");
    form_encode(&mut body, ACCESS_TOKEN_TYPE);
    body.push_str("&requested_token_type=");
    form_encode(&mut body, ACCESS_TOKEN_TYPE);
    for (name, value) in [
        ("audience", &t.audience),
        ("resource", &t.resource),
        ("scope", &t.scope),
    ] {
        if let Some(v) = value {
            body.push('&');
            body.push_str(name);
            body.push('=');
            form_encode(&mut body, v);
        }
    }
    let headers = vec![
        (":method", "POST".to_owned()),
        (":path", t.path.clone()),
        (":authority", t.authority.clone()),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("accept", "application/json".to_owned()),
    ];
    (headers, body.into_bytes())
}

/// `application/x-www-form-urlencoded` encoding of `value`, appended to `out`.
fn form_encode(out: &mut String, value: &str) {
    let hex = |n: u8| {
        char::from_digit(u32::from(n), 16)
            .unwrap_or('0')
            .to_ascii_uppercase()
    };
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(hex(b >> 4));
                out.push(hex(b & 0xf));
            }
        }
    }
}

/// Why a token exchange gave no token. The messages name the step, never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeFailure {
    /// The client's request has no bearer token to exchange.
    NoSubjectToken,
    /// The token endpoint could not be reached, or did not answer in time.
    Unreachable,
    /// The authorization server refused the client's token (`invalid_grant`, …): the
    /// client should get a new one.
    Refused {
        /// HTTP status of the token endpoint.
        status: u16,
        /// Its OAuth `error` code, when it gave a well-formed one.
        error: Option<String>,
    },
    /// The token endpoint failed, or refused the gateway itself (`invalid_client`).
    Failed {
        /// HTTP status of the token endpoint.
        status: u16,
        /// Its OAuth `error` code, when it gave a well-formed one.
        error: Option<String>,
    },
    /// A 200 whose body is not a usable token response.
    BadAnswer(&'static str),
}

impl ExchangeFailure {
    /// Whether the client's own token is at fault (401), rather than the exchange (502).
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ExchangeFailure::NoSubjectToken | ExchangeFailure::Refused { .. }
        )
    }

    /// What went wrong, for the client's JSON-RPC error and the log.
    pub fn message(&self, upstream: &str) -> String {
        let step = format!("token exchange for upstream {upstream:?}");
        let code = |e: &Option<String>| {
            e.as_deref()
                .map_or(String::new(), |e| format!(", error {e:?}"))
        };
        match self {
            ExchangeFailure::NoSubjectToken => {
                format!("{step}: the request carries no bearer token to exchange")
            }
            ExchangeFailure::Unreachable => {
                format!("{step}: the token endpoint did not answer")
            }
            ExchangeFailure::Refused { status, error } => format!(
                "{step}: the authorization server refused the client's token (HTTP {status}{})",
                code(error)
            ),
            ExchangeFailure::Failed { status, error } => format!(
                "{step}: the token endpoint failed (HTTP {status}{})",
                code(error)
            ),
            ExchangeFailure::BadAnswer(why) => {
                format!("{step}: the token endpoint's answer is unusable: {why}")
            }
        }
    }
}

/// Reads the token endpoint's answer (`status`, `body`) at `now`: the token to use and
/// until when (never past `client_exp`, the client token's own expiry).
pub fn read_exchange_answer(
    status: Option<u16>,
    body: Option<&[u8]>,
    now: u64,
    client_exp: Option<u64>,
) -> Result<CachedToken, ExchangeFailure> {
    let Some(status) = status else {
        return Err(ExchangeFailure::Unreachable);
    };
    let json: Option<Value> = body.and_then(|b| serde_json::from_slice(b).ok());
    if status != 200 {
        // Only a short OAuth error code is repeated (RFC 6749 §5.2: printable ASCII).
        let error = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(Value::as_str)
            .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned);
        // 400 invalid_grant: the subject token; 401 invalid_client: the gateway.
        let client_fault = status == 400
            && matches!(
                error.as_deref(),
                Some("invalid_grant" | "invalid_target" | "invalid_scope")
            )
            || status == 403;
        return Err(if client_fault {
            ExchangeFailure::Refused { status, error }
        } else {
            ExchangeFailure::Failed { status, error }
        });
    }
    let json = json.ok_or(ExchangeFailure::BadAnswer("not JSON"))?;
    let token = json
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or(ExchangeFailure::BadAnswer("no access_token"))?;
    if token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ExchangeFailure::BadAnswer(
            "access_token is not a usable bearer token",
        ));
    }
    let bearer = json
        .get("token_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"));
    if !bearer {
        return Err(ExchangeFailure::BadAnswer("token_type is not Bearer"));
    }
    let expires_in = match json.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_EXPIRES_IN_S,
        Some(v) => v.as_u64().ok_or(ExchangeFailure::BadAnswer(
            "expires_in is not a number of seconds",
        ))?,
    };
    let mut use_until =
        now.saturating_add(expires_in.min(MAX_CACHE_S).saturating_sub(EXPIRY_SKEW_S));
    if let Some(exp) = client_exp {
        use_until = use_until.min(exp);
    }
    Ok(CachedToken {
        use_until,
        token: token.to_owned(),
    })
}

/// The bearer token of an `Authorization` header value (`None`: not a bearer token).
pub fn bearer_token(authorization: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(authorization).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests;
