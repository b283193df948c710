//! Upstream identity per gateway (issue 13) through a real Envoy with the real filter: one
//! protected virtual server over five upstreams that are one Python MCP server (official
//! SDK) reached through five clusters, each as the control plane generates it for a mode
//! (the client's credentials removed, the gateway's own added for `static`, the token
//! endpoint's cluster adding the gateway's client authentication). The upstream reports
//! what each call carried and checks the identity header's signature itself; a real
//! RFC 8693 token endpoint counts the exchanges.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::support::{artifacts, http, post, send, tool_text, tools_call};
use mcpgw_e2e::identity::{Forge, PAYLOAD_HEADER, issue, jwt_authn_filter};
use mcpgw_e2e::ports::wait_until;
use mcpgw_e2e::process::ChildGuard;
use mcpgw_e2e::workdir::Workdir;
use mcpgw_e2e::{Envoy, EnvoyConfig};

const ISS: &str = "https://idp.mcpgw.test";
const RESOURCE: &str = "https://gw.mcpgw.test/servers/team/mcp";
const VERSION: &str = "2025-11-25";
const SESSION_KEY: &str = "bWNwZ3ctZTJlLWlkZW50aXR5LWtleS0zMi1ieXRlcyE=";
const IDENTITY_KEY: [u8; 32] = [42; 32];
const CLIENT_ID: &str = "mcpgw-gateway";
const CLIENT_SECRET: &str = "exchange-client-secret";
const STATIC_TOKEN: &str = "Bearer gateway-static-secret";
/// The client's credentials, as the cluster of every mode removes them.
const CLIENT_CREDENTIALS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// `tests/py/identity_peer.py`: the MCP upstream and the token endpoint.
struct Peer {
    _child: ChildGuard,
    mcp: SocketAddr,
    token: SocketAddr,
    _dir: Workdir,
}

impl Peer {
    async fn start() -> anyhow::Result<Peer> {
        let a = artifacts();
        let dir = Workdir::new("identity-peer")?;
        let mut cmd = Command::new(a.python()?);
        cmd.arg(a.repo_file("tests/py/identity_peer.py")?)
            .args(["--identity-key", &URL_SAFE_NO_PAD.encode(IDENTITY_KEY)])
            .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]);
        let log = dir.file("out.log");
        let mut child = ChildGuard::spawn("identity_peer.py", cmd, &log)?;
        let addr = |text: &str, prefix: &str, suffix: &str| -> Option<SocketAddr> {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
        };
        let found = {
            let c = &mut child;
            wait_until(
                Duration::from_secs(120),
                || c.exited().map(|s| format!("exited with {s}")),
                || {
                    let log = log.clone();
                    async move {
                        let text = std::fs::read_to_string(log).ok()?;
                        Some((
                            addr(&text, "mcp http://", "/mcp")?,
                            addr(&text, "token http://", "/oauth/token")?,
                        ))
                    }
                },
            )
            .await
        };
        match found {
            Ok((mcp, token)) => Ok(Peer {
                _child: child,
                mcp,
                token,
                _dir: dir,
            }),
            Err(why) => Err(child.failure(&format!("never reported its URLs: {why}"))),
        }
    }

    /// Every exchange the token endpoint answered: `(sub, audience)`.
    async fn exchanges(&self) -> anyhow::Result<Vec<(String, String)>> {
        let r = send(http().get(format!("http://{}/exchanges", self.token))).await?;
        let list: Vec<Value> = serde_json::from_slice(&r.body)?;
        Ok(list
            .iter()
            .map(|e| {
                (
                    e["sub"].as_str().unwrap_or_default().to_owned(),
                    e["audience"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn claims(sub: &str) -> Value {
    let t = now();
    json!({"iss": ISS, "sub": sub, "aud": RESOURCE, "exp": t + 600, "iat": t - 5,
           "nbf": t - 5, "jti": format!("{sub}-{t}"), "email": format!("{sub}@mcpgw.test"),
           "groups": ["g-eng", "g-dev"]})
}

fn tool(upstream: &str) -> Value {
    json!({"name": format!("{upstream}__credentials"), "upstream": upstream,
           "upstream_name": "credentials",
           "item": {"name": format!("{upstream}__credentials"), "inputSchema": {"type": "object"}}})
}

fn exchange_identity(cluster: &str) -> Value {
    json!({"mode": "token-exchange", "cluster": cluster, "path": "/oauth/token",
           "authority": "as.mcpgw.test", "audience": "upstream-tx"})
}

/// Five upstreams, one per mode (`down`: a token exchange whose endpoint is not there).
fn snapshot(jwks: &Value) -> String {
    let up = |cluster: &str, identity: Value| json!({"cluster": cluster, "path": "/mcp", "identity": identity});
    let tools: Vec<Value> = ["none", "static", "header", "tx", "down"]
        .into_iter()
        .map(tool)
        .collect();
    json!({
        "session": {"keys": [SESSION_KEY]},
        "auth": {"issuers": {"idp": {
            "issuer": ISS, "algorithms": ["RS256"], "jwks": jwks,
            "claims": {"group_teams": {"g-eng": ["eng"]}, "group_roles": {"g-dev": ["developer"]}}
        }}},
        "upstreams": {
            "none": up("c-none", json!({"mode": "none"})),
            "static": up("c-static", json!({"mode": "static"})),
            "header": up("c-header", json!({"mode": "identity-header",
                "key": URL_SAFE_NO_PAD.encode(IDENTITY_KEY), "kid": "k1",
                "audience": "gw-header", "issuer": "mcpgw", "ttl_seconds": 60})),
            "tx": up("c-tx", exchange_identity("c-tx-token")),
            "down": up("c-down", exchange_identity("c-down-token")),
        },
        "servers": {"team": {
            "name": "Team",
            "tools": tools,
            "auth": {"resource": RESOURCE, "scopes": ["tools.read", "tools.execute"],
                     "rules": [{"name": "eng", "when": "'eng' in principal.teams"}]}
        }}
    })
    .to_string()
}

/// A port nothing listens on.
fn closed_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Calls `{upstream}__credentials` as the holder of `token`; the status and the JSON-RPC
/// answer.
async fn credentials(url: &str, upstream: &str, token: &str) -> anyhow::Result<(u16, Value)> {
    let auth = format!("Bearer {token}");
    let r = post(
        url,
        tools_call(7, &format!("{upstream}__credentials"), json!({})),
        &[
            ("authorization", auth.as_str()),
            ("cookie", "sid=client-cookie"),
            ("x-mcpgw-identity", "forged.by.client"),
            ("mcp-protocol-version", VERSION),
        ],
    )
    .await?;
    let answer = r.response(&json!(7)).unwrap_or(Value::Null);
    Ok((r.status, answer))
}

fn seen(answer: &Value) -> anyhow::Result<Value> {
    serde_json::from_str(&tool_text(answer)).with_context(|| format!("not a report: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstream_is_called_as_its_identity_mode_says() -> anyhow::Result<()> {
    let peer = Peer::start().await?;
    let issued = issue(
        &artifacts(),
        &[
            (claims("alice"), Forge::Signed),
            (claims("bob"), Forge::Signed),
        ],
    )
    .await?;
    let (alice, bob) = (&issued.tokens[0], &issued.tokens[1]);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let mut config = EnvoyConfig::with_filter(&snapshot(&issued.jwks), peer.mcp);
    config.clusters.clear();
    let no_identity = ["x-mcpgw-identity"];
    let strip = |keep_authorization: bool, keep_identity: bool| -> Vec<&'static str> {
        CLIENT_CREDENTIALS
            .iter()
            .copied()
            .filter(|h| !(keep_authorization && *h == "authorization"))
            .chain(no_identity.iter().copied().filter(|_| !keep_identity))
            .chain([PAYLOAD_HEADER])
            .collect()
    };
    config = config
        .cluster_with_headers("c-none", peer.mcp, &strip(false, false), &[])
        .cluster_with_headers(
            "c-static",
            peer.mcp,
            &strip(false, false),
            &[("authorization", STATIC_TOKEN)],
        )
        .cluster_with_headers("c-header", peer.mcp, &strip(false, true), &[])
        .cluster_with_headers("c-tx", peer.mcp, &strip(true, false), &[])
        .cluster_with_headers(
            "c-tx-token",
            peer.token,
            &[],
            &[("authorization", basic.as_str())],
        )
        .cluster_with_headers("c-down", peer.mcp, &strip(true, false), &[])
        .cluster_with_headers(
            "c-down-token",
            closed_port()?,
            &[],
            &[("authorization", basic.as_str())],
        );
    for c in ["c-none", "c-static", "c-header", "c-tx", "c-down"] {
        config = config.route_on_header("x-mcpgw-cluster", c, c);
    }
    config.before_filter = vec![jwt_authn_filter(&[("idp", ISS, &issued.jwks)], 30)];
    config.strip_headers = vec![PAYLOAD_HEADER.to_owned(), "x-mcpgw-identity".to_owned()];
    let envoy = Envoy::start(&artifacts(), &config).await?;
    let url = envoy.url("/servers/team/mcp");

    // none: nothing of the client's, nothing of the gateway's.
    let (s, a) = credentials(&url, "none", alice).await?;
    assert_eq!(s, 200, "{a}");
    let got = seen(&a)?;
    assert_eq!(
        (&got["authorization"], &got["cookie"], &got["identity"]),
        (&Value::Null, &Value::Null, &Value::Null),
        "none: {got}"
    );

    // static: the gateway's stored credential, never the client's token.
    let (s, a) = credentials(&url, "static", alice).await?;
    assert_eq!(s, 200, "{a}");
    let got = seen(&a)?;
    assert_eq!(got["authorization"], STATIC_TOKEN, "static: {got}");
    assert_eq!(got["identity"], Value::Null, "static: {got}");

    // identity-header: signed by the gateway, verified by the upstream, carrying the
    // principal; the client's own token and forged header never arrive.
    let (s, a) = credentials(&url, "header", alice).await?;
    assert_eq!(s, 200, "{a}");
    let got = seen(&a)?;
    assert_eq!(got["identity_valid"], true, "identity-header: {got}");
    assert_eq!(got["authorization"], Value::Null, "identity-header: {got}");
    let c = &got["identity_claims"];
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["email"], "alice@mcpgw.test");
    assert_eq!(c["teams"], json!(["eng"]));
    assert_eq!(c["roles"], json!(["developer"]));
    assert_eq!(c["idp"], ISS);
    assert_eq!(
        (&c["iss"], &c["aud"]),
        (&json!("mcpgw"), &json!("gw-header"))
    );
    let ttl = c["exp"].as_u64().unwrap_or(0) - c["iat"].as_u64().unwrap_or(0);
    assert_eq!(ttl, 60);

    // token-exchange: one exchange for two calls of one principal, its own for another;
    // the upstream sees only exchanged tokens.
    for _ in 0..2 {
        let (s, a) = credentials(&url, "tx", alice).await?;
        assert_eq!(s, 200, "{a}");
        assert_eq!(seen(&a)?["authorization"], "Bearer xt-alice-1", "{a}");
    }
    let (s, a) = credentials(&url, "tx", bob).await?;
    assert_eq!(s, 200, "{a}");
    assert_eq!(seen(&a)?["authorization"], "Bearer xt-bob-2", "{a}");
    assert_eq!(
        peer.exchanges().await?,
        [
            ("alice".to_owned(), "upstream-tx".to_owned()),
            ("bob".to_owned(), "upstream-tx".to_owned())
        ],
        "one exchange per principal"
    );

    // The token endpoint is not there: a precise error, the step named, no token in it.
    let r = post(
        &url,
        tools_call(9, "down__credentials", json!({})),
        &[
            ("authorization", format!("Bearer {alice}").as_str()),
            ("mcp-protocol-version", VERSION),
        ],
    )
    .await?;
    assert_eq!(r.status, 502, "{}", r.text());
    let err = &r.response(&json!(9))?["error"];
    assert_eq!(err["code"], -32603, "{err}");
    // Envoy answers a refused connection itself (503), or the call fails.
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("token exchange for upstream \"down\": the token endpoint ")
            && (message.ends_with("did not answer") || message.contains("failed (HTTP 503")),
        "{err}"
    );
    assert!(!r.text().contains(alice.as_str()), "the token leaked");
    assert_eq!(
        peer.exchanges().await?.len(),
        2,
        "nothing more was exchanged"
    );
    Ok(())
}
