//! No token passthrough, and each upstream's own credentials on the data path: real
//! upstreams that refuse requests without their token (an rmcp server behind a guard that
//! checks `Authorization`, one that checks a query parameter), reached through a real
//! Envoy configured over xDS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

use super::super::upstream::TestUpstream;
use super::{Rig, add_server, call_text};

/// What a guarded upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    authorization: Option<String>,
    cookie: Option<String>,
    query: Option<String>,
    admitted: bool,
}

/// Admits a request only if it carries `want` (a header value or a query string part).
#[derive(Clone)]
struct Guard {
    want_authorization: Option<&'static str>,
    want_query: Option<&'static str>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Guard {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// The guard as an axum middleware: records the request, refuses it without the token.
async fn check(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    // Nothing that borrows the request (not `Sync`) may live across the `.await` below.
    let header = |req: &Request, n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header(&req, "authorization");
    let cookie = header(&req, "cookie");
    let query = req.uri().query().map(str::to_owned);
    {
        let admitted = guard
            .want_authorization
            .is_none_or(|w| authorization.as_deref() == Some(w))
            && guard
                .want_query
                .is_none_or(|w| query.as_deref().is_some_and(|q| q.contains(w)));
        guard.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            authorization,
            cookie,
            query,
            admitted,
        });
        if !admitted {
            return (StatusCode::UNAUTHORIZED, "token required").into_response();
        }
    }
    next.run(req).await
}

/// Serves `upstream` (stateful, sessions and SSE) at `/mcp` behind `guard`; its address.
async fn serve_guarded(upstream: &TestUpstream, guard: Guard) -> SocketAddr {
    let me = upstream.clone();
    let service = StreamableHttpService::new(
        move || Ok(me.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let router = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(guard, check));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// Registers a gateway with `body` (name, url, credentials); its id and its tools' ids.
async fn register(rig: &Rig, body: Value) -> (String, Vec<Value>) {
    let (s, g) = rig.cp.post("/gateways", body).await;
    assert_eq!(s, 201, "{g}");
    let gid = g["gateway"]["id"].as_str().unwrap().to_owned();
    let (_, tools) = rig.cp.get(&format!("/tools?gateway_id={gid}")).await;
    let ids = tools["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    (gid, ids)
}

/// `initialize` with the client's own credentials; the status and the session id.
async fn initialize(rig: &Rig, mcp: &str) -> (u16, Option<String>) {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "edge-credentials-test", "version": "1"}}});
    let r = rig
        .http
        .post(mcp)
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer client-secret")
        .header("cookie", "sid=client-cookie")
        .json(&init)
        .send()
        .await
        .unwrap();
    let session = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status().as_u16(), session)
}

/// `tools/call` of `name` with the client's own credentials: status and JSON-RPC answer.
async fn call(rig: &Rig, mcp: &str, session: &str, name: &str) -> (u16, Value) {
    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": name, "arguments": {}}});
    let r = rig
        .http
        .post(mcp)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", session)
        .header("authorization", "Bearer client-secret")
        .header("proxy-authorization", "Basic Y2xpZW50OnNlY3JldA==")
        .header("cookie", "sid=client-cookie")
        .json(&call)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find(|d| !d.trim().is_empty())
        .unwrap_or(&text)
        .trim()
        .to_owned();
    (
        status,
        serde_json::from_str(&json).unwrap_or(Value::String(text)),
    )
}

/// Through Envoy, each upstream gets its own credentials (a header for one, a query
/// parameter for the other), on the filter's own upstream `initialize` as on routed calls,
/// and never the client's `Authorization`, `Proxy-Authorization` or `Cookie`. The secrets
/// reach neither `/snapshot` nor an API answer. Without the stored credential the call
/// fails: the upstream really refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_get_their_own_credentials_and_never_the_clients() {
    let mut rig = Rig::start(30).await;
    let bearer = Guard {
        want_authorization: Some("Bearer up-secret"),
        want_query: None,
        seen: Arc::default(),
    };
    let keyed = Guard {
        want_authorization: None,
        want_query: Some("key=q-secret"),
        seen: Arc::default(),
    };
    let a = serve_guarded(
        &TestUpstream::with_tools(&["whoami"]).with_label("guarded"),
        bearer.clone(),
    )
    .await;
    let b = serve_guarded(
        &TestUpstream::with_tools(&["whoami"]).with_label("keyed"),
        keyed.clone(),
    )
    .await;
    let (ga, tools_a) = register(
        &rig,
        json!({"name": "guarded", "url": format!("http://{a}/mcp"),
               "auth_type": "bearer", "auth_token": "up-secret"}),
    )
    .await;
    let (_gb, tools_b) = register(
        &rig,
        json!({"name": "keyed", "url": format!("http://{b}/mcp?key=q-secret")}),
    )
    .await;
    let tools: Vec<Value> = tools_a.into_iter().chain(tools_b).collect();
    let sid = add_server(&rig.cp, "creds", json!({"associated_tools": tools})).await;
    rig.tools_become(&sid, &["guarded__whoami", "keyed__whoami"])
        .await;
    rig.synced().await;

    // The secrets are nowhere the API shows. (The query token is still in the gateway's
    // `url` as the gateway API returns it: redacting it there is the registry's part.)
    for (path, secrets) in [
        ("/snapshot".to_owned(), &["up-secret", "q-secret"][..]),
        ("/xds/nodes".to_owned(), &["up-secret", "q-secret"][..]),
        (format!("/gateways/{ga}"), &["up-secret"][..]),
        ("/gateways".to_owned(), &["up-secret"][..]),
    ] {
        let (s, v) = rig.cp.get(&path).await;
        assert_eq!(s, 200, "{path}: {v}");
        let text = v.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "{path} shows {secret}: {text}");
        }
    }

    bearer.clear();
    keyed.clear();
    let mcp = rig.mcp(&sid);
    let (s, session) = initialize(&rig, &mcp).await;
    assert_eq!(s, 200);
    let session = session.expect("a session id");
    for (tool, label) in [("guarded__whoami", "guarded"), ("keyed__whoami", "keyed")] {
        let (s, v) = call(&rig, &mcp, &session, tool).await;
        assert_eq!(s, 200, "{tool}: {v}");
        assert_eq!(call_text(&v), label, "{tool}: {v}");
    }
    for (name, guard) in [("guarded", &bearer), ("keyed", &keyed)] {
        let seen = guard.seen();
        // The filter's own upstream initialize (dispatch_http_call) and the routed call.
        assert!(
            seen.iter().filter(|r| r.method == "POST").count() >= 2,
            "{name}: {seen:?}"
        );
        for r in &seen {
            assert!(r.admitted, "{name} refused a request from the edge: {r:?}");
            assert!(r.cookie.is_none(), "{name} got the client's cookie: {r:?}");
            assert_ne!(
                r.authorization.as_deref(),
                Some("Bearer client-secret"),
                "{name} got the client's token"
            );
        }
    }
    assert!(keyed.seen().iter().all(|r| r.authorization.is_none()));
    assert!(
        keyed
            .seen()
            .iter()
            .all(|r| r.query.as_deref() == Some("key=q-secret"))
    );

    // Without the stored credential, the same call is refused by the upstream.
    let (s, v) = rig
        .cp
        .put(&format!("/gateways/{ga}"), json!({"auth_type": "none"}))
        .await;
    assert_eq!(s, 200, "{v}");
    rig.synced().await;
    bearer.clear();
    let (s, v) = call(&rig, &mcp, &session, "guarded__whoami").await;
    assert!(
        s != 200 || v.get("error").is_some() || call_text(&v) != "guarded",
        "the call succeeded without the upstream's token: {s} {v}"
    );
    let seen = bearer.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|r| !r.admitted),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|r| r.authorization.is_none()),
        "the client's token went through: {seen:?}"
    );
    // The other upstream still answers.
    let (s, v) = call(&rig, &mcp, &session, "keyed__whoami").await;
    assert_eq!((s, call_text(&v)), (200, "keyed"), "{v}");
}
