//! Against a real OpenID provider (`oidc-provider`, run by `tests/node/oidc_issuer.mjs`)
//! through a real Envoy with the real filter: RFC 8693 token exchange (the upstream sees only
//! the token the provider issued for its audience, one exchange for two calls), and a signing
//! key rotation at the edge without a failed request.
//!
//! The snapshot and the Envoy's resources are built as the control plane builds them
//! (`upstream_access`, `IssuerKeys::refresh`/`apply`, `resources`) and served over ADS; the
//! control plane's schedule (each issuer's `refresh_seconds`, default 15 minutes) is replaced
//! by a call of `IssuerKeys::refresh` and a push. An operator's refresh of one issuer's keys
//! (`POST /issuers/{name}/refresh`, `mcpgw issuers refresh NAME`) runs against a whole
//! control plane.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use mcpgw::crypto::SecretBox;
use mcpgw::edge_config::{
    EdgeSettings, EdgeUpstream, EdgeUpstreams, IssuerKeys, LISTENER, key_client, resources,
    upstream_access,
};
use mcpgw_core::snapshot::Snapshot;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::envoy::Envoy;
use super::harness::{TestCp, TestDb, free_port, settings};
use super::oidc::Issuer;
use super::upstream::TestUpstream;

/// The audience the gateway asks the provider for.
const UPSTREAM_AUDIENCE: &str = "https://upstream.mcpgw.test/mcp";

/// A compact JWS's header and payload.
fn decode(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let raw = token.split('.').nth(i).unwrap_or_else(|| panic!("{token}"));
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw)
                .unwrap(),
        )
        .unwrap()
    };
    (part(0), part(1))
}

/// Server `team` (resource `resource`, issuer `idp` = the provider) with tool `g1__echo` on
/// upstream `g1`.
fn snapshot(version: &str, issuer: &str, resource: &str) -> Snapshot {
    Snapshot::from_json(
        json!({
            "version": version,
            "auth": {"issuers": {"idp": {"issuer": issuer, "algorithms": ["RS256"]}}},
            "upstreams": {"g1": {"cluster": mcpgw::snapshot::cluster_name("g1"), "path": "/mcp"}},
            "servers": {"team": {
                "name": "Team",
                "tools": [{"name": "g1__echo", "upstream": "g1", "upstream_name": "echo",
                           "item": {"name": "g1__echo", "inputSchema": {"type": "object"}}}],
                "auth": {"resource": resource,
                         "rules": [{"name": "echo", "when": "request.name == 'g1__echo'"}]}
            }}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn edge_settings(envoy_port: u16) -> EdgeSettings {
    EdgeSettings {
        envoy_listen: format!("127.0.0.1:{envoy_port}").parse().unwrap(),
        filter_wasm: super::envoy::filter_wasm_path(),
        upstream_ca_file: None,
        ..EdgeSettings::default()
    }
}

/// `tools/call g1__echo` at `url` with `token`: the status and body (status 0: not
/// connected).
async fn call(http: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "g1__echo", "arguments": {}}})
            .to_string(),
        );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let Ok(r) = req.send().await else {
        return (0, String::new());
    };
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Waits until the filter answers 401 to a call without a token.
async fn wait_for_filter(envoy: &Envoy, http: &reqwest::Client, url: &str) {
    for _ in 0..300 {
        if call(http, url, None).await.0 == 401 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no 401 from the filter\n{}", envoy.log());
}

async fn exchanges(issuer: &Issuer) -> Value {
    reqwest::get(format!("{}/debug/exchanges", issuer.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A client's token for the server; the gateway in token-exchange mode at the provider's
/// token endpoint (client `mcpgw-gateway`): the upstream receives only the exchanged token
/// (issued by the provider for the upstream's audience, naming the client as subject and the
/// gateway as actor), and two calls cost one exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_only_the_providers_exchanged_token() {
    let envoy_port = free_port();
    let resource = format!("http://127.0.0.1:{envoy_port}/servers/team/mcp");
    let issuer = Issuer::start(json!({})).await;
    let upstream = TestUpstream::with_tools(&["echo"]);
    let running = upstream.serve_stateless(0).await;

    let secrets = SecretBox::dev();
    let mut gateway = super::edge_identity::gateway("g1", &running.url);
    gateway.identity = serde_json::from_value(json!({
        "mode": "token-exchange",
        "token_exchange": {"token_endpoint": format!("{}/token", issuer.url),
                           "client_id": "mcpgw-gateway", "audience": UPSTREAM_AUDIENCE},
    }))
    .unwrap();
    gateway.identity.check().unwrap();
    let sealed = secrets
        .seal_for(mcpgw::model::CLIENT_SECRET_LABEL, b"g1", b"gateway-secret")
        .unwrap();
    let access = upstream_access(&gateway, None, Some(&sealed), &secrets).unwrap();
    let cluster = mcpgw::snapshot::cluster_name("g1");
    let identity = access.snapshot_identity("g1", &cluster, &secrets);
    let mut snap = snapshot("tx-1", &issuer.url, &resource);
    snap.upstreams
        .insert("g1".into(), access.target.snapshot_entry(cluster, identity));
    let keys = IssuerKeys::new();
    let failures = keys.refresh(&key_client().unwrap(), &snap.auth).await;
    assert!(failures.is_empty(), "{failures:?}");
    keys.apply(&mut snap);
    snap.validate().unwrap();
    let mut upstreams = EdgeUpstreams::new();
    upstreams.insert(
        "g1".into(),
        EdgeUpstream {
            access,
            addresses: vec![running.addr.ip()],
            token_addresses: vec!["127.0.0.1".parse().unwrap()],
        },
    );
    let set = resources(&snap, &upstreams, &edge_settings(envoy_port)).unwrap();
    let (mut envoy, _feed) = super::envoy::ads_edge(
        Arc::new(set),
        "mcpgw-tx",
        36_000 + std::process::id() % 10_000,
    )
    .await;
    let addr = envoy.listener(LISTENER).await;
    let url = format!("http://{addr}/servers/team/mcp");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_for_filter(&envoy, &http, &url).await;
    assert_eq!(exchanges(&issuer).await["count"], 0);

    let token = issuer.machine_token(&resource, "tools.execute").await;
    for i in 0..2 {
        let (status, body) = call(&http, &url, Some(&token)).await;
        assert_eq!(status, 200, "call {i}: {body}\n{}", envoy.log());
        assert!(body.contains("result"), "{body}");
    }

    let done = exchanges(&issuer).await;
    assert_eq!(done["count"], 1, "two calls, one exchange: {done}");
    let issued = done["issued"][0].as_str().unwrap();
    let seen = upstream.auth_seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for auth in &seen {
        assert_eq!(
            auth,
            &format!("Bearer {issued}"),
            "only the exchanged token"
        );
        assert!(
            !auth.contains(&token),
            "the client's token reached the upstream"
        );
    }
    assert_ne!(issued, token);
    let (header, claims) = decode(issued);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["aud"], UPSTREAM_AUDIENCE, "{claims}");
    assert_eq!(claims["iss"], json!(issuer.url), "{claims}");
    assert_eq!(claims["subject"], "mcpgw-machine", "{claims}");
    assert_eq!(claims["act"]["sub"], "mcpgw-gateway", "{claims}");
    assert_eq!(claims["scope"], "tools.execute", "{claims}");
    let (_, client_claims) = decode(&token);
    assert_eq!(client_claims["aud"], json!(resource));
}

/// The provider rotates its signing key in two restarts (publish a new key beside the old
/// one, then sign with it); the control plane's key fetch picks each JWKS up and the Envoy
/// gets it over ADS, while a client calls without pause: every call succeeds, with tokens
/// signed by the old key before and by the new key after.
///
/// The client keeps one connection open throughout: it is the one that failed when the keys
/// were inlined in the listener (a changed listener is drained, and a kept-alive connection
/// keeps the old filter chain, hence the old keys, until it closes; the first token signed
/// by the new key got 401 there). The keys now travel over ECDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_rotation_fails_no_request() {
    let envoy_port = free_port();
    let resource = format!("http://127.0.0.1:{envoy_port}/servers/team/mcp");
    let issuer_port = free_port();
    let key_file = std::env::temp_dir().join(format!(
        "mcpgw-rotation-{}-{issuer_port}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&key_file);
    let config = |step: Option<&str>| {
        let mut c = json!({"key_file": key_file});
        if let Some(s) = step {
            c["key_step"] = json!(s);
        }
        c
    };
    let kids = || -> Vec<String> {
        let keys: Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
        keys.as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut issuer = Issuer::start_on(issuer_port, config(None)).await;
    let issuer_url = issuer.url.clone();
    let old_kid = kids()[0].clone();

    let upstream = TestUpstream::with_tools(&["echo"]);
    let running = upstream.serve_stateless(0).await;
    let secrets = SecretBox::dev();
    let mut upstreams = EdgeUpstreams::new();
    upstreams.insert(
        "g1".into(),
        EdgeUpstream {
            access: upstream_access(
                &super::edge_identity::gateway("g1", &running.url),
                None,
                None,
                &secrets,
            )
            .unwrap(),
            addresses: vec![running.addr.ip()],
            token_addresses: Vec::new(),
        },
    );
    let settings = edge_settings(envoy_port);
    // What the control plane's refresh does: fetch every issuer's keys, put them in the
    // snapshot, build the Envoy's resources.
    let keys = IssuerKeys::new();
    let build = |version: String| {
        let (keys, upstreams, settings) = (&keys, &upstreams, &settings);
        let (issuer_url, resource) = (issuer_url.clone(), resource.clone());
        async move {
            let mut snap = snapshot(&version, &issuer_url, &resource);
            let failures = keys.refresh(&key_client().unwrap(), &snap.auth).await;
            assert!(failures.is_empty(), "{failures:?}");
            keys.apply(&mut snap);
            snap.validate().unwrap();
            Arc::new(resources(&snap, upstreams, settings).unwrap())
        }
    };
    let (mut envoy, feed) = super::envoy::ads_edge(
        build("rot-1".into()).await,
        "mcpgw-rotation",
        37_000 + std::process::id() % 10_000,
    )
    .await;
    let addr = envoy.listener(LISTENER).await;
    let url = format!("http://{addr}/servers/team/mcp");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_for_filter(&envoy, &http, &url).await;
    envoy.dump_mentions(&old_kid, true).await;

    let old_token = issuer.machine_token(&resource, "tools.execute").await;
    assert_eq!(decode(&old_token).0["kid"], json!(old_kid));

    // The client: calls without pause with the current token, each result recorded.
    let current = Arc::new(Mutex::new(old_token.clone()));
    let results: Arc<Mutex<Vec<(u16, String, String)>>> = Arc::default();
    let (stop_calls, mut calls_stopped) = oneshot::channel::<()>();
    let client = {
        let (current, results, http, url) =
            (current.clone(), results.clone(), http.clone(), url.clone());
        tokio::spawn(async move {
            loop {
                let token = current.lock().unwrap().clone();
                let (status, body) = call(&http, &url, Some(&token)).await;
                let kid = decode(&token).0["kid"].as_str().unwrap().to_owned();
                results.lock().unwrap().push((status, kid, body));
                if calls_stopped.try_recv().is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let calls = || results.lock().unwrap().len();
    let wait_calls = |more: usize| {
        let from = calls();
        async move {
            for _ in 0..500 {
                if calls() >= from + more {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the client stalled at {} calls", calls());
        }
    };
    wait_calls(10).await;

    // 1. A new key published beside the old one, which still signs.
    drop(issuer);
    issuer = Issuer::start_on(issuer_port, config(Some("publish"))).await;
    let published = kids();
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(published[0], old_kid);
    let new_kid = published[1].clone();
    let still_old = issuer.machine_token(&resource, "tools.execute").await;
    assert_eq!(
        decode(&still_old).0["kid"],
        json!(old_kid),
        "the old key signs"
    );
    let mut pushes = vec![calls()];
    feed.input.send(Some(build("rot-2".into()).await)).unwrap();
    envoy.dump_mentions(&new_kid, true).await;
    *current.lock().unwrap() = still_old;
    wait_calls(10).await;

    // 2. The new key signs; the old one stays published.
    drop(issuer);
    issuer = Issuer::start_on(issuer_port, config(Some("sign"))).await;
    assert_eq!(kids(), vec![new_kid.clone(), old_kid.clone()]);
    let new_token = issuer.machine_token(&resource, "tools.execute").await;
    assert_eq!(
        decode(&new_token).0["kid"],
        json!(new_kid),
        "the new key signs"
    );
    // The edge has had the new key since the previous push.
    *current.lock().unwrap() = new_token;
    wait_calls(10).await;
    pushes.push(calls());
    feed.input.send(Some(build("rot-3".into()).await)).unwrap();
    wait_calls(10).await;
    // The old key's tokens still pass while it is published.
    let (status, body) = call(&http, &url, Some(&old_token)).await;
    assert_eq!(status, 200, "{body}");

    stop_calls.send(()).unwrap();
    client.await.unwrap();
    let results = results.lock().unwrap();
    let failed: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, (s, _, _))| *s != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed (old key {old_kid}, new key {new_kid}, pushes after calls \
         {pushes:?}): {failed:?}\n{}",
        failed.len(),
        results.len(),
        envoy.log()
    );
    let first_new = results
        .iter()
        .position(|(_, kid, _)| *kid == new_kid)
        .expect("no call with a new-key token");
    assert!(first_new >= 20, "{first_new} calls with old-key tokens");
    assert!(
        results[first_new..]
            .iter()
            .all(|(_, kid, _)| *kid == new_kid)
    );
    assert!(results.len() - first_new >= 10);
    drop(issuer);
    let _ = std::fs::remove_file(&key_file);
}

/// The key ids of issuer `name`'s keys in the control plane's current snapshot.
async fn published_kids(cp: &TestCp, name: &str) -> Vec<String> {
    let snap = cp.current_snapshot().await;
    snap["auth"]["issuers"][name]["jwks"]["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A provider publishes a new key; the issuer's keys are fetched every hour
/// (`refresh_seconds`), but the operator asks for a refresh (REST) and the new key is in the
/// published snapshot when the answer comes. A second refresh within 30 s is refused (429,
/// `Retry-After`), through the CLI too; an issuer with keys in configuration has none to
/// fetch (409), an unknown one is 404, and a `refresh_seconds` out of range is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_refresh_publishes_a_newly_published_key_at_once() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let port = free_port();
    let key_file =
        std::env::temp_dir().join(format!("mcpgw-refresh-{}-{port}.json", std::process::id()));
    let _ = std::fs::remove_file(&key_file);
    let kids = || -> Vec<String> {
        let keys: Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
        let mut kids: Vec<String> = keys
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        kids.sort();
        kids
    };
    let mut issuer = Issuer::start_on(port, json!({"key_file": key_file})).await;
    let old = kids();
    assert_eq!(old.len(), 1);

    let spec = |refresh: u32| json!({"issuer": issuer.url, "algorithms": ["RS256"], "refresh_seconds": refresh});
    let (status, body) = cp.put("/issuers/idp", spec(5)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "refresh_seconds", "{body}");
    let (status, body) = cp.put("/issuers/idp", spec(3600)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["spec"]["refresh_seconds"], 3600);
    assert_eq!(published_kids(&cp, "idp").await, old, "fetched when added");

    // The provider publishes a second key (the first still signs).
    drop(issuer);
    issuer = Issuer::start_on(port, json!({"key_file": key_file, "key_step": "publish"})).await;
    let both = kids();
    assert_eq!(both.len(), 2);
    assert_eq!(
        published_kids(&cp, "idp").await,
        old,
        "not fetched again before its hour"
    );
    let (status, body) = cp.post("/issuers/idp/refresh", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issuer"], json!(issuer.url));
    assert_eq!(body["changed"], true, "{body}");
    let mut got: Vec<String> = serde_json::from_value(body["kids"].clone()).unwrap();
    got.sort();
    assert_eq!(got, both);
    let mut published = published_kids(&cp, "idp").await;
    published.sort();
    assert_eq!(published, both, "published before the answer");

    // At once again: refused, saying when to come back.
    let r = cp
        .http
        .post(cp.url("/issuers/idp/refresh"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=31).contains(&retry), "Retry-After {retry}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcpgw"))
        .args(["issuers", "refresh", "idp"])
        .env("MCPGW_API_URL", cp.url(""))
        .env("MCPGW_TOKEN", cp.token.as_deref().unwrap())
        .env("MCPGW_CONFIG_DIR", std::env::temp_dir())
        .env_remove("MCPGW_TOKEN_FILE")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("(429)"), "{stderr}");

    let (status, body) = cp.post("/issuers/nobody/refresh", json!({})).await;
    assert_eq!(status, 404, "{body}");
    let inline = json!({"issuer": "https://given.example.com", "algorithms": ["RS256"],
                        "jwks": {"keys": [{"kty": "RSA", "kid": "k1", "n": "bg", "e": "AQAB"}]}});
    let (status, body) = cp.put("/issuers/given", inline).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = cp.post("/issuers/given/refresh", json!({})).await;
    assert_eq!(status, 409, "{body}");

    drop(issuer);
    let _ = std::fs::remove_file(&key_file);
    cp.stop().await;
}
