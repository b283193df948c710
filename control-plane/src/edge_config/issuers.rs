//! The keys of token issuers, for Envoy's `jwt_authn`: fetched by the control plane (never by
//! an Envoy, never per request) from each issuer's OpenID Connect discovery document and its
//! `jwks_uri`, refreshed, and put into the snapshot's `auth.issuers.*.jwks`, from where the
//! translation inlines them ([`super::jwt_authn`]).
//!
//! An issuer whose snapshot entry already has `jwks` (given in configuration) is not
//! fetched. The control plane's own issuer (the admin side signs its tokens and serves
//! `/.well-known/jwks.json`) hands its keys in with [`IssuerKeys::set`] instead of being
//! fetched over the network: the hook for it.
//!
//! A failed refresh keeps the last good keys (an issuer that is down for a while must not
//! lock every client out); keys are filtered to public keys of the families the issuer's
//! algorithms use, so a JWKS that also lists a symmetric or an encryption key still serves.
//!
//! When: each issuer on its own schedule ([`refresh_interval`]): at most its
//! `refresh_seconds` (default [`REFRESH_INTERVAL`]) after the last fetch, sooner when its JWKS
//! answer says so (`Cache-Control: max-age`), never more often than every
//! [`MIN_REFRESH_INTERVAL`]; a failed fetch is tried again after [`RETRY_INTERVAL`]. An
//! operator who knows a provider has published a new key (or sees tokens with an unknown
//! `kid`) asks for a fetch at once ([`IssuerKeys::refresh_one`], `POST
//! /issuers/{name}/refresh`), at most once per [`MIN_REFRESH_INTERVAL`] per issuer.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use mcpgw_core::snapshot::Snapshot;
use mcpgw_core::snapshot::auth::{Auth, Issuer, REFRESH_SECONDS_MIN, key_type, parse_url};
use serde_json::Value;

/// Largest discovery document or JWKS accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often keys are fetched again unless the issuer's `refresh_seconds` or its JWKS's
/// `max-age` says sooner: providers publish a new key well before they sign with it (OpenID
/// Connect Core 10.1.1), usually hours; a quarter of an hour picks it up long before the
/// first token it signs arrives.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// The shortest interval between two fetches of one issuer's keys, whatever its JWKS's
/// `max-age` says, and the most often an operator may ask for one.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(REFRESH_SECONDS_MIN as u64);
/// How long an issuer whose keys could not be fetched waits before the next try (builds
/// follow every registry change; an issuer that is down must not slow each one).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Why an issuer's keys could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The issuer, its discovery document or its `jwks_uri` is unusable.
    #[error("issuer {issuer}: {reason}")]
    Discovery {
        /// The issuer URL.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// A request failed.
    #[error("issuer {issuer}: fetching {what}: {reason}")]
    Fetch {
        /// The issuer URL.
        issuer: String,
        /// What was fetched (`discovery document`, `jwks`).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The JWKS has no public key the issuer's algorithms can use.
    #[error("issuer {issuer}: the JWKS has no public key for {algorithms}")]
    NoKeys {
        /// The issuer URL.
        issuer: String,
        /// The algorithms looked for.
        algorithms: String,
    },
}

impl KeyError {
    /// A low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            KeyError::Discovery { .. } => "discovery",
            KeyError::Fetch { .. } => "fetch",
            KeyError::NoKeys { .. } => "no_keys",
        }
    }
}

/// Why an operator's refresh of one issuer's keys did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The issuer's keys are not fetched: given in configuration, or the control plane's own.
    #[error(
        "issuer {0}: its keys are not fetched (given in configuration, or the control plane's own)"
    )]
    NotFetched(String),
    /// An operator's last refresh was less than [`MIN_REFRESH_INTERVAL`] ago.
    #[error("issuer {issuer}: a refresh was asked for less than {}s ago; try again in {}s", MIN_REFRESH_INTERVAL.as_secs(), retry_after.as_secs())]
    TooSoon {
        /// The issuer URL.
        issuer: String,
        /// When a fetch is allowed again.
        retry_after: Duration,
    },
    /// The fetch failed (the last good keys stay).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Nothing fetches keys (the control plane has no HTTP client for it, or the edge
    /// configuration is not being published).
    #[error("issuer keys are not being fetched by this control plane")]
    Unavailable,
}

/// What a refresh of one issuer's keys found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Refreshed {
    /// The issuer URL.
    pub issuer: String,
    /// The key ids now held for it (and published to the edge).
    pub kids: Vec<String>,
    /// Whether the keys differ from those held before.
    pub changed: bool,
    /// Seconds until the next scheduled fetch.
    pub next_refresh_seconds: u64,
}

/// The next interval between two fetches of an issuer's keys: its `refresh_seconds` (default
/// [`REFRESH_INTERVAL`]), or the JWKS answer's `max-age` if shorter, never below
/// [`MIN_REFRESH_INTERVAL`].
pub fn refresh_interval(configured: Option<u32>, max_age: Option<Duration>) -> Duration {
    let ceiling = configured
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(REFRESH_INTERVAL)
        .max(MIN_REFRESH_INTERVAL);
    max_age
        .map_or(ceiling, |age| age.min(ceiling))
        .max(MIN_REFRESH_INTERVAL)
}

/// The `max-age` of a `Cache-Control` header value (`no-cache`/`no-store`: zero, which
/// [`refresh_interval`] raises to its floor).
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

/// Keys fetched for one issuer, and for how long its JWKS answer says they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedKeys {
    /// The JWKS text to inline (usable keys only).
    pub jwks: String,
    /// The JWKS answer's `Cache-Control: max-age`, if any.
    pub max_age: Option<Duration>,
}

/// The last fetch of an issuer's keys: when, whether it failed, and the `max-age` its JWKS
/// answer had. When the next one is due follows from it and the issuer's current
/// `refresh_seconds`, so a changed setting applies at once.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    at: Instant,
    failed: bool,
    max_age: Option<Duration>,
}

impl Schedule {
    fn due(&self, refresh_seconds: Option<u32>) -> Instant {
        if self.failed {
            self.at + RETRY_INTERVAL
        } else {
            self.at + refresh_interval(refresh_seconds, self.max_age)
        }
    }
}

/// The keys last fetched (or set) per issuer URL.
#[derive(Debug, Default)]
pub struct IssuerKeys {
    /// Issuer URL → JWKS text, and whether it was set rather than fetched. A `std` mutex:
    /// never held across an `.await`.
    keys: Mutex<BTreeMap<String, (String, bool)>>,
    /// Issuer URL → its last fetch.
    schedule: Mutex<BTreeMap<String, Schedule>>,
    /// Issuer URL → when an operator last had its keys fetched.
    requested: Mutex<BTreeMap<String, Instant>>,
}

impl IssuerKeys {
    /// No keys yet.
    pub fn new() -> IssuerKeys {
        IssuerKeys::default()
    }

    /// Sets `issuer`'s keys (the control plane's own issuer, whose keys it holds): never
    /// fetched afterwards.
    pub fn set(&self, issuer: &str, jwks: String) {
        self.lock().insert(issuer.to_owned(), (jwks, true));
    }

    /// The keys held for `issuer`.
    pub fn get(&self, issuer: &str) -> Option<String> {
        self.lock().get(issuer).map(|(jwks, _)| jwks.clone())
    }

    /// Every issuer's keys held (to tell whether a refresh changed anything).
    pub fn held(&self) -> BTreeMap<String, String> {
        self.lock()
            .iter()
            .map(|(issuer, (jwks, _))| (issuer.clone(), jwks.clone()))
            .collect()
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Schedule>> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetches `issuer`'s keys once and records the outcome: new keys and the next due time,
    /// or (failure) the last good keys kept and a retry after [`RETRY_INTERVAL`].
    async fn fetch_one(&self, http: &reqwest::Client, issuer: &Issuer) -> Result<(), KeyError> {
        let at = Instant::now();
        let got = fetch_keys(http, &issuer.issuer, &issuer.algorithms).await;
        let schedule = Schedule {
            at,
            failed: got.is_err(),
            max_age: got.as_ref().ok().and_then(|f| f.max_age),
        };
        self.schedule().insert(issuer.issuer.clone(), schedule);
        let fetched = got?;
        self.lock()
            .insert(issuer.issuer.clone(), (fetched.jwks, false));
        Ok(())
    }

    /// The issuers of `auth` whose keys are fetched: none in configuration, not set.
    fn fetched<'a>(&self, auth: &'a Auth) -> Vec<&'a Issuer> {
        auth.issuers
            .values()
            .filter(|i| i.jwks.is_none() && !self.is_set(&i.issuer))
            .collect()
    }

    /// Fetches the keys of the issuers of `auth` that have none yet (none in configuration,
    /// none set, none fetched), except those whose last fetch failed less than
    /// [`RETRY_INTERVAL`] ago: a newly added issuer gets its keys with the build that
    /// publishes it. [`refresh_due`](IssuerKeys::refresh_due) renews the others.
    pub async fn fetch_missing(&self, http: &reqwest::Client, auth: &Auth) -> Vec<KeyError> {
        let mut failures = Vec::new();
        for issuer in self.fetched(auth) {
            if self.get(&issuer.issuer).is_some() {
                continue;
            }
            let waiting = self
                .schedule()
                .get(&issuer.issuer)
                .is_some_and(|s| s.due(issuer.refresh_seconds) > Instant::now());
            if waiting {
                continue;
            }
            if let Err(e) = self.fetch_one(http, issuer).await {
                failures.push(e);
            }
        }
        failures
    }

    fn is_set(&self, issuer: &str) -> bool {
        self.lock().get(issuer).is_some_and(|(_, set)| *set)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, bool)>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetches the keys of every issuer of `auth` that has none in configuration and was
    /// not [`set`](IssuerKeys::set); one that fails keeps its last good keys and is
    /// reported.
    pub async fn refresh(&self, http: &reqwest::Client, auth: &Auth) -> Vec<KeyError> {
        let mut failures = Vec::new();
        for issuer in self.fetched(auth) {
            if let Err(e) = self.fetch_one(http, issuer).await {
                failures.push(e);
            }
        }
        failures
    }

    /// [`refresh`](IssuerKeys::refresh) for the issuers whose keys are due (each on its
    /// own schedule, see [`refresh_interval`]; one never fetched is due).
    pub async fn refresh_due(&self, http: &reqwest::Client, auth: &Auth) -> Vec<KeyError> {
        let now = Instant::now();
        let mut failures = Vec::new();
        for issuer in self.fetched(auth) {
            let due = self
                .schedule()
                .get(&issuer.issuer)
                .is_none_or(|s| s.due(issuer.refresh_seconds) <= now);
            if due && let Err(e) = self.fetch_one(http, issuer).await {
                failures.push(e);
            }
        }
        failures
    }

    /// Fetches `issuer`'s keys now, at an operator's request (a provider published a new
    /// key, a token names an unknown `kid`): refused when its keys are not fetched, or when
    /// an operator had them fetched less than [`MIN_REFRESH_INTERVAL`] ago (scheduled fetches
    /// do not count: they are at most one per interval anyway).
    pub async fn refresh_one(
        &self,
        http: &reqwest::Client,
        issuer: &Issuer,
    ) -> Result<Refreshed, RefreshError> {
        if issuer.jwks.is_some() || self.is_set(&issuer.issuer) {
            return Err(RefreshError::NotFetched(issuer.issuer.clone()));
        }
        {
            let mut requested = self
                .requested
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(elapsed) = requested.get(&issuer.issuer).map(Instant::elapsed)
                && elapsed < MIN_REFRESH_INTERVAL
            {
                return Err(RefreshError::TooSoon {
                    issuer: issuer.issuer.clone(),
                    // Rounded up: a client that waits this long is let through.
                    retry_after: Duration::from_secs(
                        (MIN_REFRESH_INTERVAL - elapsed).as_secs() + 1,
                    ),
                });
            }
            requested.insert(issuer.issuer.clone(), Instant::now());
        }
        let before = self.get(&issuer.issuer);
        self.fetch_one(http, issuer).await?;
        let now = self.get(&issuer.issuer);
        let kids = now
            .as_deref()
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .and_then(|doc| {
                doc.get("keys").and_then(Value::as_array).map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.get("kid").and_then(Value::as_str).map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default();
        let next = self
            .schedule()
            .get(&issuer.issuer)
            .map_or(Duration::ZERO, |s| {
                s.due(issuer.refresh_seconds)
                    .saturating_duration_since(Instant::now())
            });
        Ok(Refreshed {
            issuer: issuer.issuer.clone(),
            kids,
            changed: before != now,
            next_refresh_seconds: next.as_secs(),
        })
    }

    /// Puts the keys held into `snapshot`'s issuers that have none in configuration: those
    /// of them its algorithms can use (keys that were set hold every key of their owner,
    /// whose algorithm the issuer entry may not list). An issuer left without a usable key
    /// gets none: no `jwt_authn` provider, so its tokens are refused.
    pub fn apply(&self, snapshot: &mut Snapshot) {
        let keys = self.lock();
        for issuer in snapshot.auth.issuers.values_mut() {
            if issuer.jwks.is_none()
                && let Some((jwks, _)) = keys.get(&issuer.issuer)
                && let Ok(doc) = serde_json::from_str::<Value>(jwks)
            {
                let usable = usable_keys(&doc, &issuer.algorithms);
                if !usable.is_empty() {
                    let text = serde_json::json!({ "keys": usable }).to_string();
                    issuer.jwks = mcpgw_core::catalog::RawJson::from_string(text).ok();
                }
            }
        }
    }
}

/// A client for fetching keys: no proxy, no redirects, bounded time.
pub fn key_client() -> reqwest::Result<reqwest::Client> {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .build()
}

/// The JSON document at `url`, and its `Cache-Control: max-age`.
async fn get_json(
    http: &reqwest::Client,
    issuer: &str,
    what: &'static str,
    url: &str,
) -> Result<(Value, Option<Duration>), KeyError> {
    let fail = |reason: String| KeyError::Fetch {
        issuer: issuer.to_owned(),
        what,
        reason,
    };
    let mut response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    let age = response
        .headers()
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(max_age)
        .min();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(fail(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
    }
    let doc = serde_json::from_slice(&body).map_err(|e| fail(format!("not JSON: {e}")))?;
    Ok((doc, age))
}

/// Fetches `issuer`'s discovery document (`{issuer}/.well-known/openid-configuration`),
/// checks that it names the same issuer, fetches its `jwks_uri` and keeps the public keys
/// `algorithms` can use: the JWKS text to inline.
pub async fn fetch_jwks(
    http: &reqwest::Client,
    issuer: &str,
    algorithms: &[String],
) -> Result<String, KeyError> {
    fetch_keys(http, issuer, algorithms).await.map(|f| f.jwks)
}

/// [`fetch_jwks`], with how long the JWKS answer says its keys hold (`max-age`).
pub async fn fetch_keys(
    http: &reqwest::Client,
    issuer: &str,
    algorithms: &[String],
) -> Result<FetchedKeys, KeyError> {
    let discovery_error = |reason: String| KeyError::Discovery {
        issuer: issuer.to_owned(),
        reason,
    };
    parse_url(issuer).map_err(discovery_error)?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let (doc, _) = get_json(http, issuer, "discovery document", &url).await?;
    // OpenID Connect Discovery 4.3: the document must name the issuer it was fetched for.
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(discovery_error(
            "the discovery document names another issuer".into(),
        ));
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| discovery_error("the discovery document has no jwks_uri".into()))?;
    parse_url(jwks_uri).map_err(|e| discovery_error(format!("jwks_uri: {e}")))?;
    let (jwks, max_age) = get_json(http, issuer, "jwks", jwks_uri).await?;
    let keys = usable_keys(&jwks, algorithms);
    if keys.is_empty() {
        return Err(KeyError::NoKeys {
            issuer: issuer.to_owned(),
            algorithms: algorithms.join(", "),
        });
    }
    Ok(FetchedKeys {
        jwks: serde_json::json!({ "keys": keys }).to_string(),
        max_age,
    })
}

/// The keys of `jwks` a token signed with one of `algorithms` may name: signing keys (no
/// `use` or `use: sig`) of the algorithms' key types, public (no `d`), with no `alg` or one
/// of `algorithms`.
pub fn usable_keys(jwks: &Value, algorithms: &[String]) -> Vec<Value> {
    let types: Vec<&str> = algorithms.iter().filter_map(|a| key_type(a)).collect();
    jwks.get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter(|k| {
                    let kty = k.get("kty").and_then(Value::as_str).unwrap_or_default();
                    let alg_ok = k
                        .get("alg")
                        .and_then(Value::as_str)
                        .is_none_or(|alg| algorithms.iter().any(|a| a == alg));
                    let signing = k
                        .get("use")
                        .and_then(Value::as_str)
                        .is_none_or(|u| u == "sig");
                    types.contains(&kty) && k.get("d").is_none() && alg_ok && signing
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Json;
    use axum::routing::get;
    use mcpgw_core::snapshot::auth::check_jwks;
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn algs(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_public_signing_keys_of_the_algorithms_are_kept() {
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "r1", "n": "n", "e": "AQAB", "alg": "RS256", "use": "sig"},
            {"kty": "RSA", "kid": "r2", "n": "n", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "n": "n", "e": "AQAB", "use": "enc"},
            {"kty": "RSA", "kid": "ps", "n": "n", "e": "AQAB", "alg": "PS512"},
            {"kty": "RSA", "kid": "priv", "n": "n", "e": "AQAB", "d": "secret"},
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": "x", "y": "y"}
        ]});
        let kids = |keys: Vec<Value>| -> Vec<String> {
            keys.iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(kids(usable_keys(&jwks, &algs(&["RS256"]))), ["r1", "r2"]);
        assert_eq!(
            kids(usable_keys(&jwks, &algs(&["RS256", "ES256"]))),
            ["r1", "r2", "e1"]
        );
        let kept = json!({"keys": usable_keys(&jwks, &algs(&["RS256"]))}).to_string();
        assert!(
            check_jwks(&kept, &algs(&["RS256"])).is_ok(),
            "what is kept validates"
        );
    }

    /// An OpenID provider on a loopback port: its discovery document names `issuer` (the
    /// real one unless `lie`), its JWKS is `jwks`; it answers 503 once `down` is set.
    async fn provider_with(jwks: Value, lie: bool, down: Arc<AtomicBool>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let issuer = format!("{base}/realms/test");
        let named = if lie {
            "https://elsewhere.example.com".to_owned()
        } else {
            issuer.clone()
        };
        let doc = json!({"issuer": named, "jwks_uri": format!("{base}/certs")});
        let app = axum::Router::new()
            .route(
                "/realms/test/.well-known/openid-configuration",
                get(move || async move { Json(doc) }),
            )
            .route(
                "/certs",
                get(move || async move {
                    if down.load(Ordering::SeqCst) {
                        Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                    } else {
                        Ok(Json(jwks))
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        issuer
    }

    async fn provider(jwks: Value, lie: bool) -> String {
        provider_with(jwks, lie, Arc::default()).await
    }

    #[tokio::test]
    async fn keys_are_fetched_through_discovery_and_kept_when_a_refresh_fails() {
        let rsa = json!({"kty": "RSA", "kid": "k1", "n": "n", "e": "AQAB"});
        let down = Arc::new(AtomicBool::new(false));
        let issuer = provider_with(
            json!({"keys": [rsa, {"kty": "oct", "k": "x"}]}),
            false,
            Arc::clone(&down),
        )
        .await;
        let http = key_client().unwrap();
        let jwks = fetch_jwks(&http, &issuer, &algs(&["RS256"])).await.unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&jwks).unwrap(),
            json!({"keys": [rsa]})
        );

        let mut snapshot: Snapshot = serde_json::from_value(json!({"auth": {"issuers": {
            "idp": {"issuer": issuer, "algorithms": ["RS256"]},
            "own": {"issuer": "https://gw.example.com", "algorithms": ["ES256"]},
            "given": {"issuer": "https://given.example.com", "algorithms": ["RS256"],
                      "jwks": {"keys": []}}
        }}}))
        .unwrap();
        let keys = IssuerKeys::new();
        // The control plane's own issuer is set, not fetched (nothing listens there).
        let own = json!({"kty": "EC", "kid": "own", "crv": "P-256", "x": "x", "y": "y",
                         "alg": "ES256", "use": "sig"});
        let own_rsa = json!({"kty": "RSA", "kid": "old", "n": "n", "e": "AQAB", "alg": "RS256"});
        keys.set(
            "https://gw.example.com",
            json!({"keys": [own, own_rsa]}).to_string(),
        );
        let failures = keys.refresh(&http, &snapshot.auth).await;
        assert!(failures.is_empty(), "{failures:?}");
        keys.apply(&mut snapshot);
        let jwks_of = |s: &Snapshot, name: &str| {
            s.auth.issuers[name]
                .jwks
                .as_ref()
                .map(|j| j.get().to_owned())
        };
        assert_eq!(jwks_of(&snapshot, "idp"), Some(jwks.clone()));
        // Only the keys its algorithms can use.
        assert_eq!(
            jwks_of(&snapshot, "own").map(|j| serde_json::from_str::<Value>(&j).unwrap()),
            Some(json!({"keys": [own]}))
        );
        assert_eq!(
            jwks_of(&snapshot, "given").as_deref(),
            Some(r#"{"keys":[]}"#)
        );
        snapshot.validate().unwrap();

        // The provider fails: the last good keys stay.
        down.store(true, Ordering::SeqCst);
        let mut again: Snapshot = serde_json::from_value(json!({"auth": {"issuers": {
            "idp": {"issuer": issuer, "algorithms": ["RS256"]}
        }}}))
        .unwrap();
        let failures = keys.refresh(&http, &again.auth).await;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].to_string().contains("503"), "{}", failures[0]);
        keys.apply(&mut again);
        assert_eq!(jwks_of(&again, "idp"), Some(jwks));
    }

    #[test]
    fn the_refresh_interval_honours_max_age_between_a_floor_and_the_issuers_ceiling() {
        let s = Duration::from_secs;
        let cases = [
            ("default", None, None, 900),
            ("a shorter max-age", None, Some(s(120)), 120),
            ("a max-age beyond the ceiling", None, Some(s(86_400)), 900),
            ("a max-age below the floor", None, Some(s(5)), 30),
            ("no-cache", None, Some(Duration::ZERO), 30),
            ("the issuer's ceiling", Some(3600), Some(s(7200)), 3600),
            ("the issuer's ceiling, no max-age", Some(60), None, 60),
            (
                "a shorter max-age than the issuer's",
                Some(3600),
                Some(s(300)),
                300,
            ),
        ];
        for (case, configured, age, want) in cases {
            assert_eq!(refresh_interval(configured, age), s(want), "{case}");
        }
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let s = |n| Some(Duration::from_secs(n));
        let cases = [
            ("public, max-age=300", s(300)),
            ("Max-Age=60, must-revalidate", s(60)),
            ("s-maxage=10, max-age=20", s(20)),
            ("no-store", s(0)),
            ("private", None),
            ("max-age=soon", None),
        ];
        for (header, want) in cases {
            assert_eq!(max_age(header), want, "{header}");
        }
    }

    #[tokio::test]
    async fn an_operators_refresh_is_refused_too_soon_and_for_keys_not_fetched() {
        let rsa = json!({"kty": "RSA", "kid": "k1", "n": "n", "e": "AQAB"});
        let url = provider(json!({"keys": [rsa]}), false).await;
        let http = key_client().unwrap();
        let issuer: Issuer =
            serde_json::from_value(json!({"issuer": url, "algorithms": ["RS256"]})).unwrap();
        let keys = IssuerKeys::new();
        let got = keys.refresh_one(&http, &issuer).await.unwrap();
        assert_eq!(got.kids, ["k1"]);
        assert!(got.changed, "nothing was held before");
        // Scheduled by the default ceiling (the provider sends no max-age).
        assert!(
            got.next_refresh_seconds < REFRESH_INTERVAL.as_secs()
                && got.next_refresh_seconds > MIN_REFRESH_INTERVAL.as_secs(),
            "{got:?}"
        );
        let Err(RefreshError::TooSoon { retry_after, .. }) = keys.refresh_one(&http, &issuer).await
        else {
            panic!("a second refresh at once went through");
        };
        assert!(retry_after <= MIN_REFRESH_INTERVAL + Duration::from_secs(1));

        let given: Issuer = serde_json::from_value(
            json!({"issuer": "https://given.example.com", "algorithms": ["RS256"],
                   "jwks": {"keys": [rsa]}}),
        )
        .unwrap();
        assert_eq!(
            keys.refresh_one(&http, &given).await,
            Err(RefreshError::NotFetched(given.issuer.clone()))
        );
    }

    #[tokio::test]
    async fn a_provider_that_names_another_issuer_or_has_no_keys_is_refused() {
        let http = key_client().unwrap();
        let liar = provider(json!({"keys": []}), true).await;
        let e = fetch_jwks(&http, &liar, &algs(&["RS256"]))
            .await
            .unwrap_err();
        assert!(matches!(e, KeyError::Discovery { .. }), "{e}");
        let empty = provider(json!({"keys": [{"kty": "oct", "k": "x"}]}), false).await;
        let e = fetch_jwks(&http, &empty, &algs(&["RS256"]))
            .await
            .unwrap_err();
        assert_eq!(e.label(), "no_keys", "{e}");
        let e = fetch_jwks(&http, "http://idp.example.com", &algs(&["RS256"]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
    }
}
