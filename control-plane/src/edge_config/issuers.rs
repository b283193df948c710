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

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use mcpgw_core::snapshot::Snapshot;
use mcpgw_core::snapshot::auth::{Auth, key_type, parse_url};
use serde_json::Value;

/// Largest discovery document or JWKS accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often keys are fetched again: providers publish a new key well before they sign
/// with it (OpenID Connect Core 10.1.1), usually hours; a quarter of an hour picks it up
/// long before the first token it signs arrives.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// How long an issuer whose keys could not be fetched yet waits before a build tries again
/// (builds follow every registry change; an issuer that is down must not slow each one).
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

/// The keys last fetched (or set) per issuer URL.
#[derive(Debug, Default)]
pub struct IssuerKeys {
    /// Issuer URL → JWKS text, and whether it was set rather than fetched. A `std` mutex:
    /// never held across an `.await`.
    keys: Mutex<BTreeMap<String, (String, bool)>>,
    /// Issuer URL → when a fetch of its keys last failed.
    failed: Mutex<BTreeMap<String, Instant>>,
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

    /// Fetches the keys of the issuers of `auth` that have none yet (none in configuration,
    /// none set, none fetched), except those whose last fetch failed less than
    /// [`RETRY_INTERVAL`] ago: a newly added issuer gets its keys with the build that
    /// publishes it. The periodic [`refresh`](IssuerKeys::refresh) renews the others.
    pub async fn fetch_missing(&self, http: &reqwest::Client, auth: &Auth) -> Vec<KeyError> {
        let mut failures = Vec::new();
        for issuer in auth.issuers.values().filter(|i| i.jwks.is_none()) {
            if self.get(&issuer.issuer).is_some() {
                continue;
            }
            let recent = self
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&issuer.issuer)
                .is_some_and(|at| at.elapsed() < RETRY_INTERVAL);
            if recent {
                continue;
            }
            match fetch_jwks(http, &issuer.issuer, &issuer.algorithms).await {
                Ok(jwks) => {
                    self.lock().insert(issuer.issuer.clone(), (jwks, false));
                }
                Err(e) => {
                    self.failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(issuer.issuer.clone(), Instant::now());
                    failures.push(e);
                }
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
        for issuer in auth.issuers.values().filter(|i| i.jwks.is_none()) {
            if self.is_set(&issuer.issuer) {
                continue;
            }
            match fetch_jwks(http, &issuer.issuer, &issuer.algorithms).await {
                Ok(jwks) => {
                    self.lock().insert(issuer.issuer.clone(), (jwks, false));
                }
                Err(e) => failures.push(e),
            }
        }
        failures
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

async fn get_json(
    http: &reqwest::Client,
    issuer: &str,
    what: &'static str,
    url: &str,
) -> Result<Value, KeyError> {
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
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(fail(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
    }
    serde_json::from_slice(&body).map_err(|e| fail(format!("not JSON: {e}")))
}

/// Fetches `issuer`'s discovery document (`{issuer}/.well-known/openid-configuration`),
/// checks that it names the same issuer, fetches its `jwks_uri` and keeps the public keys
/// `algorithms` can use: the JWKS text to inline.
pub async fn fetch_jwks(
    http: &reqwest::Client,
    issuer: &str,
    algorithms: &[String],
) -> Result<String, KeyError> {
    let discovery_error = |reason: String| KeyError::Discovery {
        issuer: issuer.to_owned(),
        reason,
    };
    parse_url(issuer).map_err(discovery_error)?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = get_json(http, issuer, "discovery document", &url).await?;
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
    let jwks = get_json(http, issuer, "jwks", jwks_uri).await?;
    let keys = usable_keys(&jwks, algorithms);
    if keys.is_empty() {
        return Err(KeyError::NoKeys {
            issuer: issuer.to_owned(),
            algorithms: algorithms.join(", "),
        });
    }
    Ok(serde_json::json!({ "keys": keys }).to_string())
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
