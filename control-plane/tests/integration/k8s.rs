//! The Kubernetes controller against kube's mock API service (`tower-test`): a small fake
//! API server answers what the reconcilers ask (Secrets, Services, Leases, list by label,
//! patches, Events), records every request, and can refuse a request with a chosen status
//! once. The registry is a real store (and, where discovery matters, a real control plane
//! with a real MCP upstream).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, Request, Response};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use mcpgw::crypto::SecretBox;
use mcpgw::k8s::controller::{
    Context, FINALIZER, reconcile_backend, reconcile_policy, reconcile_virtual_server,
};
use mcpgw::k8s::crd::{MCPBackend, MCPPolicy, MCPVirtualServer};
use mcpgw::k8s::lease::{Leadership, LeaseLock};
use mcpgw::model::{Credentials, ListFilter};
use mcpgw::store::Store;
use mcpgw::store::k8s::OwnedObject;
use mcpgw::store::policies::EdgeKind;
use mcpgw_core::snapshot::auth::ServerAuth;
use mcpgw_core::snapshot::limits::ServerLimits;
use mcpgw_core::snapshot::plugins::Plugin;
use serde_json::{Value, json};

use super::harness::{TestCp, TestDb, both_backends, settings};
use super::upstream::TestUpstream;

/// One request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// The fake API server's state.
#[derive(Default)]
struct Fake {
    /// `namespace/name` → object, by resource plural (`secrets`, `services`, `leases`,
    /// `mcpbackends`, …).
    objects: Mutex<BTreeMap<(String, String), Value>>,
    /// `(method, path fragment, status)`: the next matching request gets that status.
    refuse: Mutex<VecDeque<(Method, String, u16)>>,
    seen: Mutex<Vec<Seen>>,
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

impl Fake {
    fn put(&self, plural: &str, ns: &str, obj: Value) {
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        self.objects
            .lock()
            .unwrap()
            .insert((plural.to_owned(), format!("{ns}/{name}")), obj);
    }

    fn get(&self, plural: &str, key: &str) -> Option<Value> {
        self.objects
            .lock()
            .unwrap()
            .get(&(plural.to_owned(), key.to_owned()))
            .cloned()
    }

    fn refuse_once(&self, method: Method, fragment: &str, code: u16) {
        self.refuse
            .lock()
            .unwrap()
            .push_back((method, fragment.to_owned(), code));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    fn writes(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != Method::GET)
            .collect()
    }

    fn status_patches(&self) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == Method::PATCH && s.path.ends_with("/status"))
            .map(|s| s.body["status"].clone())
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == Method::POST && s.path.contains("/events"))
            .map(|s| s.body)
            .collect()
    }

    /// Answers one request: `(status, body)`.
    fn answer(&self, method: &Method, path: &str, query: &str, body: &Value) -> (u16, Value) {
        {
            let mut refuse = self.refuse.lock().unwrap();
            if let Some(i) = refuse
                .iter()
                .position(|(m, f, _)| m == method && path.contains(f.as_str()))
            {
                let (_, _, code) = refuse.remove(i).unwrap();
                return (code, status(code, "Conflict"));
            }
        }
        // /api/v1/namespaces/{ns}/{plural}[/{name}[/status]] or /apis/{g}/{v}/namespaces/…
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let at = parts.iter().position(|p| *p == "namespaces").unwrap();
        let ns = parts[at + 1];
        let plural = parts[at + 2];
        let name = parts.get(at + 3).copied();
        match (method.clone(), name) {
            (Method::POST, _) if plural == "events" => (201, body.clone()),
            (Method::GET, None) => {
                // A list by label: `labelSelector=k%3Dv` with one `k=v`.
                let selector = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("labelSelector="))
                    .map(|s| s.replace("%3D", "="))
                    .unwrap_or_default();
                let items: Vec<Value> = self
                    .objects
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|((p, key), _)| p == plural && key.starts_with(&format!("{ns}/")))
                    .map(|(_, v)| v.clone())
                    .filter(|v| {
                        selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
                            let (k, want) = kv.split_once('=').unwrap();
                            v["metadata"]["labels"][k] == want
                        })
                    })
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            (Method::GET, Some(n)) => match self.get(plural, &format!("{ns}/{n}")) {
                Some(v) => (200, v),
                None => (404, status(404, "NotFound")),
            },
            (Method::POST, None) => {
                let mut obj = body.clone();
                obj["metadata"]["resourceVersion"] = json!("1");
                if self
                    .get(
                        plural,
                        &format!("{ns}/{}", obj["metadata"]["name"].as_str().unwrap()),
                    )
                    .is_some()
                {
                    return (409, status(409, "AlreadyExists"));
                }
                self.put(plural, ns, obj.clone());
                (201, obj)
            }
            (Method::PUT, Some(n)) => {
                let key = format!("{ns}/{n}");
                let current = self.get(plural, &key);
                let rv = current
                    .as_ref()
                    .and_then(|c| c["metadata"]["resourceVersion"].as_str())
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap();
                if body["metadata"]["resourceVersion"].as_str() != Some(&rv.to_string()) {
                    return (409, status(409, "Conflict"));
                }
                let mut obj = body.clone();
                obj["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
                self.put(plural, ns, obj.clone());
                (200, obj)
            }
            (Method::PATCH, Some(n)) => {
                // Finalizer and status patches: answered with the object as it stands.
                let kind = match plural {
                    "mcpbackends" => "MCPBackend",
                    "mcpvirtualservers" => "MCPVirtualServer",
                    _ => "MCPPolicy",
                };
                (
                    200,
                    json!({"apiVersion": "mcpgw.io/v1alpha1", "kind": kind,
                           "metadata": {"name": n, "namespace": ns}, "spec": {}}),
                )
            }
            _ => (405, status(405, "MethodNotAllowed")),
        }
    }
}

/// A kube client whose every request the fake answers (on a task of its own).
fn client(fake: Arc<Fake>) -> kube::Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            fake.seen.lock().unwrap().push(Seen {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: body.clone(),
            });
            let (code, answer) = fake.answer(&method, &path, &query, &body);
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
    });
    kube::Client::new(service, "default")
}

fn context(fake: &Arc<Fake>, store: Store, leader: bool) -> Arc<Context> {
    Arc::new(Context {
        client: client(fake.clone()),
        store,
        secrets: SecretBox::dev(),
        separator: "__".to_owned(),
        federation: None,
        reporter: Reporter {
            controller: "mcpgw".to_owned(),
            instance: Some("test".to_owned()),
        },
        leader: Arc::new(AtomicBool::new(leader)),
    })
}

fn secret(ns: &str, name: &str, key: &str, value: &str) -> Value {
    use base64::Engine as _;
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
           "data": {key: base64::engine::general_purpose::STANDARD.encode(value)}})
}

fn backend(name: &str, spec: Value, finalized: bool) -> Arc<MCPBackend> {
    let mut obj = json!({
        "apiVersion": "mcpgw.io/v1alpha1", "kind": "MCPBackend",
        "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}"), "generation": 1,
                     "labels": {"tier": "gold"}},
        "spec": spec,
    });
    if finalized {
        obj["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    Arc::new(serde_json::from_value(obj).unwrap())
}

fn with_status<K: serde::Serialize + serde::de::DeserializeOwned>(
    obj: &K,
    status: Value,
) -> Arc<K> {
    let mut v = serde_json::to_value(obj).unwrap();
    v["status"] = status;
    Arc::new(serde_json::from_value(v).unwrap())
}

fn deleting<K: serde::Serialize + serde::de::DeserializeOwned>(obj: &K) -> Arc<K> {
    let mut v = serde_json::to_value(obj).unwrap();
    v["metadata"]["deletionTimestamp"] = json!("2026-12-06T12:00:00Z");
    Arc::new(serde_json::from_value(v).unwrap())
}

fn condition(status: &Value, kind: &str) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["reason"].as_str().unwrap().to_owned(),
    )
}

fn tokens(c: Option<Credentials>) -> Option<String> {
    match c {
        Some(Credentials::Bearer { token }) => Some(token),
        other => panic!("expected a bearer credential, got {other:?}"),
    }
}

/// Create, update and delete of a backend: the finalizer goes on first, the gateway is
/// created with the Secret's value sealed, the status says so; a new URL and a rotated
/// Secret reach the registry (bumping its version, which pushes a snapshot) without a
/// restart; deletion removes the gateway, then the finalizer.
#[tokio::test]
async fn a_backend_is_created_updated_rotated_and_deleted() {
    for (_, db) in both_backends().await {
        backend_lifecycle(db).await;
    }
}

async fn backend_lifecycle(db: TestDb) {
    let store = db.store().await;
    let fake = Arc::new(Fake::default());
    fake.put(
        "secrets",
        "team",
        secret("team", "time-token", "token", "v1"),
    );
    let ctx = context(&fake, store.clone(), true);
    let spec = json!({"url": "http://time.example:8080/mcp",
                      "credentials": {"secretRef": {"name": "time-token", "key": "token"}},
                      "tags": ["k8s"]});

    // 1. Without the finalizer: it is added (a JSON patch testing the list), nothing else.
    let a = reconcile_backend(backend("time", spec.clone(), false), ctx.clone())
        .await
        .unwrap();
    assert_eq!(a, Action::await_change());
    let w = fake.writes();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].method, Method::PATCH);
    assert_eq!(
        w[0].path,
        "/apis/mcpgw.io/v1alpha1/namespaces/team/mcpbackends/time"
    );
    assert!(w[0].body.to_string().contains(FINALIZER), "{:?}", w[0].body);
    assert!(store.all_gateways().await.unwrap().is_empty());

    // 2. With it: the gateway, owned, with the sealed Secret value; the status.
    fake.clear();
    let be = backend("time", spec.clone(), true);
    let a = reconcile_backend(be.clone(), ctx.clone()).await.unwrap();
    assert_eq!(a, Action::requeue(mcpgw::k8s::controller::RESYNC));
    let gws = store.all_gateways().await.unwrap();
    assert_eq!(gws.len(), 1);
    let gw = &gws[0];
    assert_eq!(gw.name.as_str(), "time");
    assert_eq!(gw.url.as_str(), "http://time.example:8080/mcp");
    let owner = store
        .k8s_owner(OwnedObject::Gateway, &gw.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.to_string(), "MCPBackend team/time");
    let secrets = SecretBox::dev();
    assert_eq!(
        tokens(store.gateway_credentials(&gw.id, &secrets).await.unwrap()).as_deref(),
        Some("v1")
    );
    let statuses = fake.status_patches();
    assert_eq!(statuses.len(), 1);
    let st = &statuses[0];
    assert_eq!(st["gatewayId"], gw.id.as_str());
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["discoveredTools"], 0);
    assert_eq!(
        condition(st, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(condition(st, "Ready"), ("True".into(), "Reconciled".into()));
    assert_eq!(condition(st, "Degraded").0, "False");

    // 3. The same again (a resync): no registry write, no status write.
    fake.clear();
    let version = store.registry_version().await.unwrap();
    let be = with_status(be.as_ref(), st.clone());
    reconcile_backend(be.clone(), ctx.clone()).await.unwrap();
    assert_eq!(store.registry_version().await.unwrap(), version);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());

    // 4. Rotation: the Secret changes; the next reconcile (a Secret watch wakes it) seals
    //    the new value and moves the registry version: a new snapshot reaches the Envoys.
    fake.put(
        "secrets",
        "team",
        secret("team", "time-token", "token", "v2\n"),
    );
    reconcile_backend(be.clone(), ctx.clone()).await.unwrap();
    assert_eq!(
        tokens(store.gateway_credentials(&gw.id, &secrets).await.unwrap()).as_deref(),
        Some("v2"),
        "the trailing newline of a `kubectl create secret --from-file` value is dropped"
    );
    assert!(store.registry_version().await.unwrap() > version);

    // 5. Update: a new URL (the credential is sealed again for the new origin).
    let mut spec2 = spec.clone();
    spec2["url"] = json!("https://time.example/mcp");
    let be2 = with_status(backend("time", spec2, true).as_ref(), st.clone());
    reconcile_backend(be2.clone(), ctx.clone()).await.unwrap();
    let gw2 = store.get_gateway(&gw.id).await.unwrap();
    assert_eq!(gw2.url.as_str(), "https://time.example/mcp");
    assert_eq!(
        tokens(store.gateway_credentials(&gw.id, &secrets).await.unwrap()).as_deref(),
        Some("v2")
    );

    // 6. Delete: the gateway goes, then the finalizer (a JSON patch removing it).
    fake.clear();
    let a = reconcile_backend(deleting(be2.as_ref()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(a, Action::await_change());
    assert!(store.all_gateways().await.unwrap().is_empty());
    assert!(
        store
            .k8s_owner(OwnedObject::Gateway, &gw.id)
            .await
            .unwrap()
            .is_none()
    );
    let w = fake.writes();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].method, Method::PATCH);
    assert!(w[0].body.to_string().contains("remove"), "{:?}", w[0].body);
}

/// What the operator must fix is a condition and a Warning Event, not an error: a missing
/// Secret (retried soon), both `url` and `serviceRef` (not accepted), a missing Service port,
/// and a registry name another object holds.
#[tokio::test]
async fn backend_mistakes_become_conditions_and_events() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let fake = Arc::new(Fake::default());
    let ctx = context(&fake, store.clone(), true);
    fake.put(
        "services",
        "team",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "time", "namespace": "team"},
               "spec": {"ports": [{"port": 8080}]}}),
    );
    let cases = [
        (
            "missing Secret",
            json!({"url": "http://a.example/mcp", "credentials": {"secretRef": {"name": "nope", "key": "t"}}}),
            ("True", "SecretNotFound"),
            Action::requeue(mcpgw::k8s::controller::WAIT),
        ),
        (
            "url and serviceRef",
            json!({"url": "http://a.example/mcp", "serviceRef": {"name": "time", "port": 8080}}),
            ("False", "Invalid"),
            Action::await_change(),
        ),
        (
            "not http",
            json!({"url": "ftp://a.example/mcp"}),
            ("False", "Invalid"),
            Action::await_change(),
        ),
        (
            "no such port",
            json!({"serviceRef": {"name": "time", "port": 9090}}),
            ("True", "ServicePortNotFound"),
            Action::requeue(mcpgw::k8s::controller::WAIT),
        ),
    ];
    for (case, spec, (accepted, reason), action) in cases {
        fake.clear();
        let a = reconcile_backend(backend("b", spec, true), ctx.clone())
            .await
            .unwrap();
        assert_eq!(a, action, "{case}");
        let st = fake.status_patches().pop().unwrap();
        assert_eq!(condition(&st, "Accepted").0, accepted, "{case}: {st}");
        assert_eq!(
            condition(&st, "Ready"),
            ("False".into(), reason.into()),
            "{case}"
        );
        let events = fake.events();
        assert_eq!(events.len(), 1, "{case}");
        assert_eq!(events[0]["type"], "Warning");
        assert_eq!(events[0]["reason"], reason);
        assert_eq!(events[0]["regarding"]["name"], "b");
        assert!(store.all_gateways().await.unwrap().is_empty(), "{case}");
    }

    // A Service reference that resolves: the in-cluster URL.
    fake.clear();
    reconcile_backend(
        backend(
            "svc",
            json!({"serviceRef": {"name": "time", "port": 8080}}),
            true,
        ),
        ctx.clone(),
    )
    .await
    .unwrap();
    let gw = store.find_gateway_by_name("svc").await.unwrap().unwrap();
    assert_eq!(gw.url.as_str(), "http://time.team.svc:8080/mcp");

    // The name is taken by a gateway the REST API created: not accepted, nothing touched.
    let other = backend(
        "clash",
        json!({"url": "http://b.example/mcp", "registryName": "svc"}),
        true,
    );
    fake.clear();
    reconcile_backend(other, ctx.clone()).await.unwrap();
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(
        condition(&st, "Accepted"),
        ("False".into(), "NameConflict".into())
    );
    assert!(
        condition_message(&st, "Ready").contains("MCPBackend team/svc"),
        "{st}"
    );
    assert_eq!(store.all_gateways().await.unwrap().len(), 1);
}

/// Token exchange through the CRD: the settings reach the registry, the client secret is
/// read from its Secret and sealed (never stored or shown in clear), a rotated Secret is
/// sealed again, and a missing Secret or missing settings are conditions, not errors.
#[tokio::test]
async fn a_token_exchange_backend_reads_its_client_secret_from_a_secret() {
    for (_, db) in both_backends().await {
        token_exchange_backend(db).await;
    }
}

async fn token_exchange_backend(db: TestDb) {
    let store = db.store().await;
    let fake = Arc::new(Fake::default());
    let ctx = context(&fake, store.clone(), true);
    let spec = json!({"url": "http://time.example/mcp",
                      "upstreamIdentity": {"mode": "token-exchange", "tokenExchange": {
                          "tokenEndpoint": "https://idp.example/token", "clientId": "mcpgw",
                          "clientSecretRef": {"name": "idp", "key": "client-secret"},
                          "audience": "time", "scope": "read"}}});
    let secrets = SecretBox::dev();
    let client_secret = |id: String| {
        let store = store.clone();
        let secrets = secrets.clone();
        async move {
            let sealed = store.gateway_identity_secret(&id).await.unwrap()?;
            let (plain, _) = secrets
                .open_for(mcpgw::model::CLIENT_SECRET_LABEL, id.as_bytes(), &sealed)
                .unwrap();
            Some(String::from_utf8(plain).unwrap())
        }
    };

    // The Secret is missing: waiting for it, nothing in the registry.
    let a = reconcile_backend(backend("time", spec.clone(), true), ctx.clone())
        .await
        .unwrap();
    assert_eq!(a, Action::requeue(mcpgw::k8s::controller::WAIT));
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(
        condition(&st, "Ready"),
        ("False".into(), "SecretNotFound".into())
    );
    assert!(store.all_gateways().await.unwrap().is_empty());

    // With it: the gateway in mode token-exchange, the secret sealed.
    fake.put(
        "secrets",
        "team",
        secret("team", "idp", "client-secret", "cs-1\n"),
    );
    let be = backend("time", spec.clone(), true);
    reconcile_backend(be.clone(), ctx.clone()).await.unwrap();
    let gw = store.find_gateway_by_name("time").await.unwrap().unwrap();
    assert_eq!(gw.identity.mode, mcpgw::model::IdentityMode::TokenExchange);
    let te = gw.identity.token_exchange.as_ref().unwrap();
    assert_eq!(te.token_endpoint, "https://idp.example/token");
    assert_eq!(te.client_id, "mcpgw");
    assert_eq!(te.audience.as_deref(), Some("time"));
    assert_eq!(te.scope.as_deref(), Some("read"));
    assert_eq!(client_secret(gw.id.clone()).await.as_deref(), Some("cs-1"));
    assert!(
        !format!("{gw:?}").contains("cs-1"),
        "the secret is not part of the gateway as the API shows it"
    );

    // A resync writes nothing; a rotation seals the new value and moves the version.
    let version = store.registry_version().await.unwrap();
    reconcile_backend(be.clone(), ctx.clone()).await.unwrap();
    assert_eq!(store.registry_version().await.unwrap(), version);
    fake.put(
        "secrets",
        "team",
        secret("team", "idp", "client-secret", "cs-2"),
    );
    reconcile_backend(be.clone(), ctx.clone()).await.unwrap();
    assert_eq!(client_secret(gw.id.clone()).await.as_deref(), Some("cs-2"));
    assert!(store.registry_version().await.unwrap() > version);

    // Back to identity-header: the sealed secret is dropped.
    let mut header = spec.clone();
    header["upstreamIdentity"] = json!({"mode": "identity-header"});
    reconcile_backend(backend("time", header, true), ctx.clone())
        .await
        .unwrap();
    let gw = store.get_gateway(&gw.id).await.unwrap();
    assert_eq!(gw.identity.mode, mcpgw::model::IdentityMode::IdentityHeader);
    assert_eq!(client_secret(gw.id.clone()).await, None);

    // Settings without the mode, the mode without settings, or no target: not accepted.
    let te = spec["upstreamIdentity"]["tokenExchange"].clone();
    let mut no_target = te.clone();
    no_target.as_object_mut().unwrap().remove("audience");
    for (case, identity, field) in [
        (
            "settings without the mode",
            json!({"mode": "static", "tokenExchange": te}),
            "spec.upstreamIdentity.tokenExchange",
        ),
        (
            "the mode without settings",
            json!({"mode": "token-exchange"}),
            "spec.upstreamIdentity.tokenExchange",
        ),
        (
            "no audience or resource",
            json!({"mode": "token-exchange", "tokenExchange": no_target}),
            "audience",
        ),
    ] {
        fake.clear();
        let mut bad = spec.clone();
        bad["upstreamIdentity"] = identity;
        reconcile_backend(backend("bad", bad, true), ctx.clone())
            .await
            .unwrap();
        let st = fake.status_patches().pop().unwrap();
        assert_eq!(
            condition(&st, "Accepted"),
            ("False".into(), "Invalid".into()),
            "{case}"
        );
        assert!(
            condition_message(&st, "Ready").contains(field),
            "{case}: {st}"
        );
        assert!(
            store.find_gateway_by_name("bad").await.unwrap().is_none(),
            "{case}"
        );
    }
}

fn condition_message(status: &Value, kind: &str) -> String {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A 409 on the status write is retried (the object changed between read and write).
#[tokio::test]
async fn a_conflicting_status_write_is_retried() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let fake = Arc::new(Fake::default());
    let ctx = context(&fake, store.clone(), true);
    fake.refuse_once(Method::PATCH, "/mcpbackends/c/status", 409);
    fake.refuse_once(Method::PATCH, "/mcpbackends/c/status", 409);
    reconcile_backend(
        backend("c", json!({"url": "http://c.example/mcp"}), true),
        ctx,
    )
    .await
    .unwrap();
    let patches: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == Method::PATCH && s.path.ends_with("/status"))
        .collect();
    assert_eq!(patches.len(), 3, "two refusals, then success");
    assert_eq!(store.all_gateways().await.unwrap().len(), 1);

    // A refusal that does not go away ends in an error (retried by the controller later).
    let fake = Arc::new(Fake::default());
    let ctx = context(&fake, store.clone(), true);
    for _ in 0..mcpgw::k8s::controller::CONFLICT_ATTEMPTS {
        fake.refuse_once(Method::PATCH, "/mcpbackends/c/status", 409);
    }
    let e = reconcile_backend(
        backend("c", json!({"url": "http://d.example/mcp"}), true),
        ctx,
    )
    .await
    .unwrap_err();
    assert_eq!(e.label(), "finalizer", "{e}");
}

/// A follower writes nothing: not the registry, not Kubernetes.
#[tokio::test]
async fn a_follower_does_not_write() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let fake = Arc::new(Fake::default());
    let ctx = context(&fake, store.clone(), false);
    let a = reconcile_backend(
        backend("f", json!({"url": "http://f.example/mcp"}), true),
        ctx,
    )
    .await
    .unwrap();
    assert_eq!(a, Action::requeue(mcpgw::k8s::controller::WAIT));
    assert!(fake.seen().is_empty());
    assert!(store.all_gateways().await.unwrap().is_empty());
}

/// The Lease: created when missing; renewed by its holder; left alone while another
/// replica's is fresh; taken over once it expired; and of two replicas that saw the same
/// expired Lease, the one whose write conflicts stays a follower.
#[tokio::test]
async fn leader_election_hands_over_only_after_expiry() {
    let fake = Arc::new(Fake::default());
    let c = client(fake.clone());
    let a = LeaseLock::new(c.clone(), "mcpgw-system", "mcpgw-controller", "pod-a");
    let b = LeaseLock::new(c.clone(), "mcpgw-system", "mcpgw-controller", "pod-b");
    let t0 = Timestamp::from_second(1_800_000_000).unwrap();
    let at = |s: i64| t0.checked_add(SignedDuration::from_secs(s)).unwrap();

    assert_eq!(
        a.try_acquire_or_renew(t0).await.unwrap(),
        Leadership::Leader
    );
    let lease = fake.get("leases", "mcpgw-system/mcpgw-controller").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "pod-a");

    // B, while A's lease is fresh: follower, and only a read.
    fake.clear();
    assert_eq!(
        b.try_acquire_or_renew(at(10)).await.unwrap(),
        Leadership::Follower {
            holder: Some("pod-a".into())
        }
    );
    assert!(fake.writes().is_empty());

    // A renews.
    assert_eq!(
        a.try_acquire_or_renew(at(10)).await.unwrap(),
        Leadership::Leader
    );
    let lease = fake.get("leases", "mcpgw-system/mcpgw-controller").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 0);

    // A stops renewing; 15 s after its last renewal B takes over.
    assert!(matches!(
        b.try_acquire_or_renew(at(24)).await.unwrap(),
        Leadership::Follower { .. }
    ));
    assert_eq!(
        b.try_acquire_or_renew(at(25)).await.unwrap(),
        Leadership::Leader
    );
    let lease = fake.get("leases", "mcpgw-system/mcpgw-controller").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "pod-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // A comes back: B's lease is fresh, A follows.
    assert!(matches!(
        a.try_acquire_or_renew(at(26)).await.unwrap(),
        Leadership::Follower { .. }
    ));

    // A race: A's write conflicts (B renewed in between): A stays a follower.
    fake.refuse_once(Method::PUT, "/leases/mcpgw-controller", 409);
    assert!(matches!(
        a.try_acquire_or_renew(at(100)).await.unwrap(),
        Leadership::Follower { .. }
    ));
    assert_eq!(
        fake.get("leases", "mcpgw-system/mcpgw-controller").unwrap()["spec"]["holderIdentity"],
        "pod-b"
    );
}

/// A virtual server takes what its backend refs and selector pick; a missing backend
/// degrades it; deletion removes the server; a policy is validated and counts its targets.
#[tokio::test]
async fn virtual_servers_and_policies_follow_their_backends() {
    for (_, db) in both_backends().await {
        virtual_servers_and_policies(db).await;
    }
}

async fn virtual_servers_and_policies(db: TestDb) {
    let store = db.store().await;
    let fake = Arc::new(Fake::default());
    let ctx = context(&fake, store.clone(), true);
    for name in ["alpha", "beta"] {
        let be = backend(
            name,
            json!({"url": format!("http://{name}.example/mcp")}),
            true,
        );
        fake.put(
            "mcpbackends",
            "team",
            serde_json::to_value(be.as_ref()).unwrap(),
        );
        reconcile_backend(be, ctx.clone()).await.unwrap();
    }
    // Tools as discovery would have stored them.
    for (gw, tools) in [("alpha", ["a1", "a2"]), ("beta", ["b1", "b2"])] {
        let g = store.find_gateway_by_name(gw).await.unwrap().unwrap();
        let found = mcpgw::store::Discovered {
            tools: tools
                .iter()
                .map(|t| mcpgw::store::DiscoveredItem {
                    original_name: (*t).to_owned(),
                    uri: None,
                    description: None,
                    spec: mcpgw::model::ToolSpec::default(),
                })
                .collect(),
            ..Default::default()
        };
        store
            .sync_gateway_catalog(&g.id, &found, "__")
            .await
            .unwrap();
    }

    let vs = |spec: Value| -> Arc<MCPVirtualServer> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "mcpgw.io/v1alpha1", "kind": "MCPVirtualServer",
                "metadata": {"name": "support", "namespace": "team", "uid": "uid-vs", "generation": 2,
                             "finalizers": [FINALIZER], "labels": {"app": "support"}},
                "spec": spec,
            }))
            .unwrap(),
        )
    };
    // alpha's a1 only, plus everything of backends labelled tier=gold (alpha and beta), plus
    // a backend that does not exist.
    fake.clear();
    let v = vs(
        json!({"backendRefs": [{"name": "alpha", "tools": ["a1"]}, {"name": "ghost"}],
                      "naming": "prefixed", "allowedOrigins": ["https://app.example"]}),
    );
    reconcile_virtual_server(v.clone(), ctx.clone())
        .await
        .unwrap();
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(st["tools"], 1, "{st}");
    assert_eq!(condition(&st, "Ready").0, "True");
    assert_eq!(
        condition(&st, "Degraded"),
        ("True".into(), "BackendNotReady".into())
    );
    let id = st["serverId"].as_str().unwrap().to_owned();
    let server = store.get_server(&id).await.unwrap();
    assert_eq!(server.name.as_str(), "support");
    assert_eq!(server.allowed_origins.to_vec(), ["https://app.example"]);
    assert_eq!(server.associated_tools.len(), 1);

    fake.clear();
    let v2 = vs(json!({"backendRefs": [{"name": "alpha", "tools": ["a1"]}],
                       "backendSelector": {"matchLabels": {"tier": "gold"}}}));
    reconcile_virtual_server(v2.clone(), ctx.clone())
        .await
        .unwrap();
    let list = fake
        .seen()
        .into_iter()
        .find(|s| s.method == Method::GET && s.path.ends_with("/mcpbackends"))
        .unwrap();
    assert_eq!(list.query, "&labelSelector=tier%3Dgold");
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(
        st["tools"], 4,
        "the selector takes all of alpha and beta: {st}"
    );
    assert_eq!(condition(&st, "Degraded").0, "False");
    assert_eq!(
        store.get_server(&id).await.unwrap().associated_tools.len(),
        4
    );

    // A policy: one target found, one not; a bad one is not accepted.
    let policy = |spec: Value| -> Arc<MCPPolicy> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "mcpgw.io/v1alpha1", "kind": "MCPPolicy",
                "metadata": {"name": "p", "namespace": "team", "uid": "uid-p", "generation": 1},
                "spec": spec,
            }))
            .unwrap(),
        )
    };
    fake.clear();
    let limited = policy(json!({"targetRefs": [
            {"group": "mcpgw.io", "kind": "MCPVirtualServer", "name": "support"},
            {"group": "mcpgw.io", "kind": "MCPVirtualServer", "name": "nope"}],
            "rateLimits": {"rates": [{"name": "r", "requests": 5, "perSeconds": 1}]}}));
    fake.put(
        "mcppolicies",
        "team",
        serde_json::to_value(limited.as_ref()).unwrap(),
    );
    fake.put(
        "mcpvirtualservers",
        "team",
        serde_json::to_value(v2.as_ref()).unwrap(),
    );
    reconcile_policy(limited, ctx.clone()).await.unwrap();
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(st["attachedServers"], 1);
    assert_eq!(condition(&st, "Accepted").0, "True");
    assert_eq!(
        condition(&st, "Degraded"),
        ("True".into(), "TargetNotFound".into())
    );
    // What it adds up to is in the registry, where the snapshot builder reads it.
    let limits = store
        .edge_item::<ServerLimits>(EdgeKind::Limits, &id)
        .await
        .unwrap();
    assert_eq!(limits.spec.rates.len(), 1);
    assert_eq!(limits.spec.rates[0].name, "r");
    assert!(
        store
            .edge_item::<ServerAuth>(EdgeKind::Policy, &id)
            .await
            .is_err()
    );

    // A second policy, attached by label: its authentication and plugin apply; its rate
    // limit of the same name loses to the policy attached by name, and says so.
    fake.clear();
    let guarded = Arc::new(
        serde_json::from_value::<MCPPolicy>(json!({
            "apiVersion": "mcpgw.io/v1alpha1", "kind": "MCPPolicy",
            "metadata": {"name": "guard", "namespace": "team", "uid": "uid-g", "generation": 1},
            "spec": {"targetSelector": {"matchLabels": {"app": "support"}},
                     "authentication": {"resource": "https://mcp.example/servers/support/mcp"},
                     "authorization": {"rules": [{"name": "all", "when": "true"}]},
                     "rateLimits": {"rates": [{"name": "r", "requests": 1, "perSeconds": 1}]},
                     "plugins": [{"name": "mask-pii", "config": {"pii": {"action": "mask", "detectors": ["email"]}}}]},
        }))
        .unwrap(),
    );
    fake.put(
        "mcppolicies",
        "team",
        serde_json::to_value(guarded.as_ref()).unwrap(),
    );
    reconcile_policy(guarded, ctx.clone()).await.unwrap();
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(
        condition(&st, "Degraded"),
        ("True".into(), "Overridden".into()),
        "{st}"
    );
    assert!(
        condition_message(&st, "Degraded").contains("rate limit r on support"),
        "{st}"
    );
    let auth = store
        .edge_item::<ServerAuth>(EdgeKind::Policy, &id)
        .await
        .unwrap();
    assert_eq!(
        auth.spec.resource,
        "https://mcp.example/servers/support/mcp"
    );
    assert_eq!(auth.spec.rules[0].name, "all");
    let limits = store
        .edge_item::<ServerLimits>(EdgeKind::Limits, &id)
        .await
        .unwrap();
    assert_eq!(limits.spec.rates[0].requests, 5, "the named policy's limit");
    let plugins = store.edge_items::<Plugin>(EdgeKind::Plugin).await.unwrap();
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0].name, "k8s:team:support:mask-pii");
    assert_eq!(
        plugins[0].spec.conditions.servers,
        std::slice::from_ref(&id)
    );
    let version = store.registry_version().await.unwrap();
    // A resync with nothing changed writes nothing.
    reconcile_virtual_server(v2.clone(), ctx.clone())
        .await
        .unwrap();
    assert_eq!(store.registry_version().await.unwrap(), version);

    // The label policy goes (deleted: its server's reconcile, which the deletion wakes,
    // takes back what it gave).
    fake.objects
        .lock()
        .unwrap()
        .remove(&("mcppolicies".to_owned(), "team/guard".to_owned()));
    reconcile_virtual_server(v2.clone(), ctx.clone())
        .await
        .unwrap();
    assert!(
        store
            .edge_item::<ServerAuth>(EdgeKind::Policy, &id)
            .await
            .is_err()
    );
    assert!(
        store
            .edge_items::<Plugin>(EdgeKind::Plugin)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .edge_item::<ServerLimits>(EdgeKind::Limits, &id)
            .await
            .unwrap()
            .spec
            .rates[0]
            .requests,
        5
    );
    fake.clear();
    reconcile_policy(
        policy(json!({"targetRefs": [{"group": "mcpgw.io", "kind": "MCPVirtualServer", "name": "support"}],
                      "plugins": [{"name": "x", "config": {"nonsense": true}}]})),
        ctx.clone(),
    )
    .await
    .unwrap();
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(
        condition(&st, "Accepted"),
        ("False".into(), "Invalid".into())
    );
    assert!(
        condition_message(&st, "Accepted").contains("spec.plugins[0]"),
        "{st}"
    );
    // A rule the edge would not read as written: the condition names the rule, the line
    // and column, and the construct.
    fake.clear();
    reconcile_policy(
        policy(json!({"targetRefs": [{"group": "mcpgw.io", "kind": "MCPVirtualServer", "name": "support"}],
                      "authentication": {"resource": "https://mcp.example/servers/support/mcp"},
                      "authorization": {"rules": [{"name": "ok", "when": "true"},
                                                  {"name": "re", "when": "claims.email.matches('@corp$')"}]}})),
        ctx.clone(),
    )
    .await
    .unwrap();
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(
        condition(&st, "Accepted"),
        ("False".into(), "Invalid".into())
    );
    assert!(
        condition_message(&st, "Accepted").contains(
            "spec.authorization.rules[1].when: line 1, column 14: `matches` (regular expressions) is not supported at the edge"
        ),
        "{st}"
    );

    // Deleting the virtual server removes the registry server.
    reconcile_virtual_server(deleting(v2.as_ref()), ctx.clone())
        .await
        .unwrap();
    assert!(store.get_server(&id).await.is_err());
    assert!(
        store
            .list_servers(&ListFilter::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// With a real control plane and a real upstream that requires a token: a Secret holding
/// the wrong one leaves the backend Degraded; rotating the Secret makes the next reconcile
/// discover the tools, with no restart. The REST API refuses to change the gateway, naming
/// the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_reaches_the_upstream_and_owned_objects_are_read_only() {
    let up = TestUpstream::with_tools(&["now", "zone"]).with_required_auth("Bearer right");
    let running = up.serve(0).await;
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let fake = Arc::new(Fake::default());
    fake.put("secrets", "team", secret("team", "tok", "token", "wrong"));
    let ctx = Arc::new(Context {
        federation: Some(cp.federation.clone()),
        ..Arc::try_unwrap(context(&fake, cp.store.clone(), true)).unwrap()
    });
    let be = backend(
        "time",
        json!({"url": running.url, "credentials": {"secretRef": {"name": "tok", "key": "token"}}}),
        true,
    );
    reconcile_backend(be.clone(), ctx.clone()).await.unwrap();
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(
        condition(&st, "Degraded"),
        ("True".into(), "UpstreamFailing".into()),
        "{st}"
    );
    assert!(
        fake.events()
            .iter()
            .any(|e| e["reason"] == "DiscoveryFailed")
    );

    fake.put("secrets", "team", secret("team", "tok", "token", "right"));
    fake.clear();
    reconcile_backend(with_status(be.as_ref(), st), ctx.clone())
        .await
        .unwrap();
    let st = fake.status_patches().pop().unwrap();
    assert_eq!(st["discoveredTools"], 2, "{st}");
    assert_eq!(condition(&st, "Degraded").0, "False", "{st}");

    let id = st["gatewayId"].as_str().unwrap();
    for (method, path, body) in [
        (
            "PUT",
            format!("/gateways/{id}"),
            json!({"description": "x"}),
        ),
        ("DELETE", format!("/gateways/{id}"), json!({})),
        (
            "POST",
            format!("/gateways/{id}/state?activate=false"),
            json!({}),
        ),
    ] {
        let (s, p) = match method {
            "PUT" => cp.put(&path, body).await,
            "DELETE" => cp.delete(&path).await,
            _ => cp.post(&path, body).await,
        };
        assert_eq!(s, 409, "{method} {path}: {p}");
        assert_eq!(p["type"], "urn:mcpgw:problem:owned-by-kubernetes");
        assert_eq!(
            p["detail"],
            "owned by MCPBackend team/time; change it with kubectl"
        );
    }
    let (s, g) = cp.get(&format!("/gateways/{id}")).await;
    assert_eq!(s, 200, "{g}");
    assert!(g["enabled"].as_bool().unwrap());
    tokio::time::timeout(Duration::from_secs(5), cp.stop())
        .await
        .unwrap();
    running.stop().await;
}
