//! The generated listener with identity in a real Envoy: a snapshot with an issuer (keys made
//! by `tests/py/jwt_issuer.py`) and a protected virtual server, translated by
//! `edge_config::resources` (jwt_authn before the filter, the payload header stripped) and
//! served over ADS by the xDS server. Good tokens pass, bad ones and forged payload headers
//! get the filter's 401, and the upstream sees neither the client's token nor the payload.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mcpgw::crypto::SecretBox;
use mcpgw::edge_config::{
    EdgeSettings, EdgeUpstream, EdgeUpstreams, LISTENER, PAYLOAD_HEADER, resources, upstream_access,
};
use mcpgw::model::{AuthType, Gateway};
use mcpgw_core::snapshot::Snapshot;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use super::envoy::repo_path;
use super::upstream::TestUpstream;

const ISS: &str = "https://idp.mcpgw.test";
const RESOURCE: &str = "https://gw.mcpgw.test/servers/team/mcp";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keys and tokens for `claims` (each with `forge`, or signed) from the Python issuer.
async fn issue(tokens: &[(Value, Option<&str>)]) -> (Value, Vec<String>) {
    let spec: Vec<Value> = tokens
        .iter()
        .map(|(claims, forge)| match forge {
            Some(f) => json!({"claims": claims, "forge": f}),
            None => json!({"claims": claims}),
        })
        .collect();
    let python = mcpgw_harness::Artifacts::from_env()
        .python()
        .unwrap()
        .to_owned();
    let mut child = tokio::process::Command::new(python)
        .arg(repo_path("tests/py/jwt_issuer.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(json!({"tokens": spec}).to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "jwt_issuer.py failed");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = doc["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    (doc["jwks"].clone(), tokens)
}

pub fn gateway(id: &str, url: &str) -> Gateway {
    Gateway {
        id: id.into(),
        name: mcpgw::model::GatewayName::parse(id).unwrap(),
        url: mcpgw::model::UpstreamUrl::parse(url).unwrap(),
        transport: mcpgw::model::Transport::default(),
        description: None,
        tags: mcpgw::model::Tags::default(),
        enabled: true,
        reachable: true,
        auth_type: AuthType::None,
        identity: Default::default(),
        capabilities: None,
        server_info: None,
        protocol_version: None,
        protocol_versions: vec![],
        last_seen: None,
        last_error: None,
        consecutive_failures: 0,
        collisions: vec![],
        skipped: vec![],
        created_at: String::new(),
        updated_at: String::new(),
        version: 1,
    }
}

fn snapshot(jwks: &Value) -> Snapshot {
    let cluster = mcpgw::snapshot::cluster_name("g1");
    let tool = |n: &str| {
        json!({"name": format!("g1__{n}"), "upstream": "g1", "upstream_name": n,
               "item": {"name": format!("g1__{n}"), "inputSchema": {"type": "object"}}})
    };
    let doc = json!({
        "version": "identity-1",
        "auth": {"issuers": {"idp": {
            "issuer": ISS, "algorithms": ["RS256"], "jwks": jwks,
            "claims": {"group_roles": {"devs": ["developer"]}}
        }}},
        "upstreams": {"g1": {"cluster": cluster, "path": "/mcp"}},
        "servers": {"team": {
            "name": "Team",
            "tools": [tool("echo"), tool("whoami")],
            "auth": {"resource": RESOURCE,
                     "rules": [{"name": "echo-only", "when": "request.name == 'g1__echo'"}]}
        }}
    });
    Snapshot::from_json(doc.to_string().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_listener_verifies_tokens_before_the_filter() {
    let t = now();
    let claims = |extra: Value| {
        let mut c = json!({"iss": ISS, "sub": "alice", "aud": RESOURCE, "exp": t + 600,
                           "groups": ["devs"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let (jwks, tokens) = issue(&[
        (claims(json!({})), None),
        (claims(json!({"exp": t - 300})), None),
        (claims(json!({})), Some("hs256-with-public-key")),
        (claims(json!({})), Some("unknown-kid")),
    ])
    .await;
    let upstream = TestUpstream::with_tools(&["echo", "whoami"]);
    let running = upstream.serve_stateless(0).await;
    let snapshot = snapshot(&jwks);
    let mut upstreams = EdgeUpstreams::new();
    let access =
        upstream_access(&gateway("g1", &running.url), None, None, &SecretBox::dev()).unwrap();
    upstreams.insert(
        "g1".into(),
        EdgeUpstream {
            access,
            addresses: vec![running.addr.ip()],
            token_addresses: Vec::new(),
        },
    );
    let settings = EdgeSettings {
        envoy_listen: "127.0.0.1:0".parse().unwrap(),
        filter_wasm: super::envoy::filter_wasm_path(),
        upstream_ca_file: None,
        ..EdgeSettings::default()
    };
    let set = resources(&snapshot, &upstreams, &settings).unwrap();

    let (mut envoy, feed) = super::envoy::ads_edge(
        Arc::new(set),
        "mcpgw-identity",
        45_000 + std::process::id() % 10_000,
    )
    .await;
    let addr = envoy.listener(LISTENER).await;
    let url = format!("http://{addr}/servers/team/mcp");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |body: Value, headers: Vec<(&'static str, String)>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut req = http
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .body(body.to_string());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, challenge, r.text().await.unwrap())
        }
    };
    let call = |name: &str| {
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": name, "arguments": {}}})
    };
    let bearer = |i: usize| ("authorization", format!("Bearer {}", tokens[i]));

    // The filter's configuration may arrive a moment after the listener, and the listener
    // may refuse a connection while it warms: wait for the 401.
    let mut tries = 0;
    loop {
        let attempt = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(call("g1__echo").to_string())
            .send()
            .await;
        let status = attempt.as_ref().map(|r| r.status().as_u16()).ok();
        if status == Some(401) {
            let r = attempt.unwrap();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            assert!(challenge.contains("resource_metadata="), "{challenge}");
            break;
        }
        tries += 1;
        assert!(
            tries < 100,
            "no 401 from the filter: {status:?}\n{}",
            envoy.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _, body) = post(call("g1__echo"), vec![bearer(0)]).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(call("g1__whoami"), vec![bearer(0)]).await;
    assert_eq!(status, 403, "no rule allows whoami: {body}");
    for (i, name) in [
        (1, "expired"),
        (2, "HS256 with the public key"),
        (3, "unknown kid"),
    ] {
        let (status, challenge, body) = post(call("g1__echo"), vec![bearer(i)]).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert!(challenge.contains("invalid_token"), "{name}: {challenge}");
    }
    // A payload header the client sends is gone before jwt_authn.
    let payload = tokens[0].split('.').nth(1).unwrap().to_owned();
    let (status, _, body) = post(call("g1__echo"), vec![(PAYLOAD_HEADER, payload)]).await;
    assert_eq!(status, 401, "{body}");
    // Only the one good call reached the upstream, without the client's token.
    let seen = upstream.auth_seen();
    assert!(seen.iter().all(String::is_empty), "{seen:?}");
    drop(feed);
}
