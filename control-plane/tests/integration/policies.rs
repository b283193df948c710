//! `/issuers`, `/policies`, `/limits` and `/plugins` over real HTTP, on SQLite and
//! PostgreSQL: what is written reaches the snapshot, what the edge would refuse is refused
//! with a 422 naming the field (and nothing changes), and an issuer's keys are fetched
//! from a real OpenID provider's discovery document (`tests/py/oidc_discovery.py`).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use super::envoy::repo_path;
use super::harness::{ChildGuard, TestCp, TestDb, both_backends, eventually, settings};

const RSA_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","n":"sXch","e":"AQAB","alg":"RS256"}]}"#;

fn corp() -> Value {
    json!({"issuer": "https://idp.example.com/realms/corp", "algorithms": ["RS256"],
           "jwks": serde_json::from_str::<Value>(RSA_JWKS).unwrap(),
           "claims": {"groups": "groups", "group_roles": {"mcp-users": ["developer"]}}})
}

async fn version(cp: &TestCp) -> i64 {
    cp.get("/registry").await.1["registry_version"]
        .as_i64()
        .unwrap()
}

/// `PUT path body` is refused with 422 naming `field`, and the registry is unchanged.
async fn refused(cp: &TestCp, path: &str, body: Value, field: &str) {
    let before = version(cp).await;
    let listed_before = cp.get(&list_of(path)).await.1;
    let (s, v) = cp.put(path, body.clone()).await;
    assert_eq!(s, 422, "PUT {path} {body}: {v}");
    assert_eq!(v["errors"][0]["field"], field, "PUT {path} {body}: {v}");
    assert_eq!(
        version(cp).await,
        before,
        "PUT {path} {body} changed the registry"
    );
    assert_eq!(cp.get(&list_of(path)).await.1, listed_before);
}

fn list_of(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').split('/');
    format!("/{}", parts.next().unwrap_or_default())
}

/// A rule condition is checked as CEL when written: a syntax error, a name the edge does not
/// provide or a construct it does not evaluate is a 422 that names the rule's field and
/// says where (line and column) and what; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_the_edge_would_not_read_as_written_is_refused_with_its_position() {
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let (s, srv) = cp.post("/servers", json!({"name": "s1"})).await;
    assert_eq!(s, 201, "{srv}");
    let sid = srv["id"].as_str().unwrap().to_owned();
    let (s, v) = cp.put("/issuers/corp", corp()).await;
    assert_eq!(s, 201, "{v}");
    let path = format!("/policies/{sid}");
    let policy = |when: &str| {
        json!({"resource": "https://mcp.example.com/servers/s1/mcp", "issuers": ["corp"],
               "rules": [{"name": "devs", "when": "'developer' in principal.roles"},
                         {"name": "r", "effect": "deny", "when": when}]})
    };
    for (when, says) in [
        (
            "request.name ==",
            "line 1, column 16: Syntax error: mismatched input '<EOF>'",
        ),
        (
            "request.name == 'x' &&\n  claims.x.matches('^a')",
            "line 2, column 12: `matches` (regular expressions) is not supported at the edge",
        ),
        (
            "request.tool == 'x'",
            "line 1, column 9: request has no field `tool`: it has method, name, server",
        ),
        (
            "principal.sub > 1",
            "line 1, column 15: a string and an int have no order",
        ),
        (
            "args.n + 1 > 2",
            "line 1, column 8: arithmetic (`+`) is not supported at the edge",
        ),
        ("{'a': 1}.a == 1", "line 1, column 1: map literals"),
    ] {
        let before = version(&cp).await;
        let (s, v) = cp.put(&path, policy(when)).await;
        assert_eq!(s, 422, "{when}: {v}");
        assert_eq!(v["errors"][0]["field"], "rules[1].when", "{when}: {v}");
        let reason = v["errors"][0]["reason"].as_str().unwrap();
        assert!(reason.starts_with(says), "{when}: {reason}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{when}: {v}");
        assert_eq!(version(&cp).await, before, "{when} changed the registry");
    }
    let (s, v) = cp.get(&path).await;
    assert_eq!(s, 404, "nothing stored: {v}");
    let (s, v) = cp
        .put(&path, policy("request.name == 'x' && has(args.path)"))
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_policies_limits_and_plugins_are_validated_stored_and_published() {
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(settings(&db)).await;
        let (s, srv) = cp.post("/servers", json!({"name": "s1"})).await;
        assert_eq!(s, 201, "{srv}");
        let sid = srv["id"].as_str().unwrap().to_owned();

        // Issuers.
        let (s, v) = cp.put("/issuers/corp", corp()).await;
        assert_eq!(s, 201, "{backend}: {v}");
        assert_eq!(v["name"], "corp");
        assert_eq!(
            v["spec"]["claims"]["subject"], "sub",
            "defaults filled in: {v}"
        );
        let (s, _) = cp.put("/issuers/corp", corp()).await;
        assert_eq!(s, 200, "a second PUT replaces");
        let mut hs = corp();
        hs["algorithms"] = json!(["RS256", "HS256"]);
        refused(&cp, "/issuers/corp", hs, "algorithms[1]").await;
        let mut none = corp();
        none["issuer"] = json!("https://other.example.com");
        none["algorithms"] = json!(["none"]);
        refused(&cp, "/issuers/other", none, "algorithms[0]").await;
        let mut plain = corp();
        plain["issuer"] = json!("http://idp.example.com");
        refused(&cp, "/issuers/other", plain, "issuer").await;
        // The same `iss` under another name.
        refused(&cp, "/issuers/other", corp(), "issuer").await;
        let mut role = corp();
        role["issuer"] = json!("https://other.example.com");
        role["claims"]["group_roles"] = json!({"g": ["wizard"]});
        refused(&cp, "/issuers/other", role, "claims.group_roles.g[0]").await;
        let mut private = corp();
        private["issuer"] = json!("https://other.example.com");
        private["jwks"] = json!({"keys": [{"kty": "RSA", "n": "a", "e": "AQAB", "d": "x"}]});
        refused(&cp, "/issuers/other", private, "jwks").await;
        let mut unknown = corp();
        unknown["issuer"] = json!("https://other.example.com");
        unknown["bogus"] = json!(1);
        refused(&cp, "/issuers/other", unknown, "bogus").await;
        let mut renamed = corp();
        renamed["issuer"] = json!("https://other.example.com");
        refused(&cp, "/issuers/bad%20name", renamed, "name").await;

        // Policies.
        let resource = "https://mcp.example.com/servers/s1/mcp";
        let policy = json!({"resource": resource, "issuers": ["corp"], "scopes": ["mcp"],
            "rules": [{"name": "devs", "when": "'developer' in principal.roles"},
                      {"name": "no-drop", "effect": "deny", "when": "request.name == 'drop'"}]});
        refused(
            &cp,
            &format!("/policies/{sid}"),
            json!({"issuers": ["corp"]}),
            "resource",
        )
        .await;
        let mut bad_rule = policy.clone();
        bad_rule["rules"][1]["when"] = json!("request.name == ");
        refused(&cp, &format!("/policies/{sid}"), bad_rule, "rules[1].when").await;
        let mut regex = policy.clone();
        regex["rules"][0]["when"] = json!("principal.email.matches('.*')");
        refused(&cp, &format!("/policies/{sid}"), regex, "rules[0].when").await;
        let mut stranger = policy.clone();
        stranger["issuers"] = json!(["corp", "nobody"]);
        refused(&cp, &format!("/policies/{sid}"), stranger, "issuers[1]").await;
        let mut dup = policy.clone();
        dup["rules"][1]["name"] = json!("devs");
        refused(&cp, &format!("/policies/{sid}"), dup, "rules[1].name").await;
        let (s, v) = cp.put("/policies/nope", policy.clone()).await;
        assert_eq!(s, 404, "{v}");
        let (s, v) = cp.put(&format!("/policies/{sid}"), policy.clone()).await;
        assert_eq!(s, 201, "{backend}: {v}");
        assert_eq!(v["spec"]["required"], true);

        // Limits.
        let limits = json!({"rates": [{"name": "per-user", "by": ["principal", "tool"],
                                       "requests": 10, "per_seconds": 60}]});
        let mut zero = limits.clone();
        zero["rates"][0]["requests"] = json!(0);
        refused(&cp, &format!("/limits/{sid}"), zero, "rates[0].requests").await;
        let mut global = limits.clone();
        global["rates"][0]["global"] = json!(true);
        refused(&cp, &format!("/limits/{sid}"), global, "rates[0].global").await;
        let mut twice = limits.clone();
        twice["rates"][0]["by"] = json!(["tool", "tool"]);
        refused(&cp, &format!("/limits/{sid}"), twice, "rates[0].by[1]").await;
        let (s, v) = cp.put(&format!("/limits/{sid}"), limits.clone()).await;
        assert_eq!(s, 201, "{backend}: {v}");
        assert_eq!(
            v["spec"]["concurrency"][0]["max"], 10,
            "left out: the default concurrency: {v}"
        );
        let (s, v) = cp.put("/limits/default", json!({})).await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = cp.put("/limits/nope", limits.clone()).await;
        assert_eq!(s, 404, "{v}");

        // Plugins.
        let plugin = json!({"priority": 5, "conditions": {"servers": [sid]},
                            "pii": {"action": "mask", "detectors": ["email", "credit_card"]}});
        let mut two = plugin.clone();
        two["secrets"] = json!({});
        refused(&cp, "/plugins/mask-pii", two, "body").await;
        let mut detector = plugin.clone();
        detector["pii"]["detectors"] = json!(["email", "horoscope"]);
        refused(&cp, "/plugins/mask-pii", detector, "pii.detectors[1]").await;
        let mut regex = plugin.clone();
        regex.as_object_mut().unwrap().remove("pii");
        regex["regex"] = json!({"rules": [{"pattern": "(unclosed"}]});
        refused(&cp, "/plugins/mask-pii", regex, "regex.rules[0].pattern").await;
        let mut other = plugin.clone();
        other["name"] = json!("other");
        refused(&cp, "/plugins/mask-pii", other, "name").await;
        let (s, v) = cp.put("/plugins/mask-pii", plugin.clone()).await;
        assert_eq!(s, 201, "{backend}: {v}");
        assert_eq!(v["spec"]["name"], "mask-pii");

        // All of it in the snapshot.
        let snap = cp.current_snapshot().await;
        assert_eq!(
            snap["auth"]["issuers"]["corp"]["issuer"],
            "https://idp.example.com/realms/corp"
        );
        assert_eq!(
            snap["servers"][&sid]["auth"]["resource"], resource,
            "{snap}"
        );
        assert_eq!(snap["servers"][&sid]["auth"]["rules"][1]["effect"], "deny");
        assert_eq!(
            snap["limits"]["servers"][&sid]["rates"][0]["name"],
            "per-user"
        );
        assert!(snap["limits"]["default"].is_object(), "{snap}");
        assert_eq!(snap["plugins"][0]["name"], "mask-pii");
        let (_, listed) = cp.get("/policies").await;
        assert_eq!(listed["items"][0]["name"], sid.as_str());

        // An issuer a policy names cannot go; the policy can, then the issuer.
        let (s, v) = cp.delete("/issuers/corp").await;
        assert_eq!(s, 409, "{v}");
        let (s, _) = cp.delete(&format!("/policies/{sid}")).await;
        assert_eq!(s, 204);
        let (s, _) = cp.delete("/issuers/corp").await;
        assert_eq!(s, 204);
        let (s, _) = cp.delete("/issuers/corp").await;
        assert_eq!(s, 404);
        // Deleting the server takes its limits with it.
        let (s, _) = cp.delete(&format!("/servers/{sid}")).await;
        assert!(s == 200 || s == 204, "{s}");
        let (s, _) = cp.get(&format!("/limits/{sid}")).await;
        assert_eq!(s, 404);
        let (s, _) = cp.delete("/plugins/mask-pii").await;
        assert_eq!(s, 204);
        let snap = cp.current_snapshot().await;
        assert!(
            snap.get("plugins").is_none_or(|p| p == &json!([])),
            "{snap}"
        );
        cp.stop().await;
    }
}

/// An issuer without inline keys gets them from its provider's discovery document and
/// JWKS (only its public signing keys), with the build that publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuers_keys_are_fetched_from_its_discovery_document() {
    let python = mcpgw_harness::Artifacts::from_env()
        .python()
        .unwrap()
        .to_owned();
    let mut child = tokio::process::Command::new(python)
        .arg(repo_path("tests/py/oidc_discovery.py"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = ChildGuard(Some(child));
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap();
    let provider: Value = serde_json::from_str(&line).unwrap();
    let issuer = provider["issuer"].as_str().unwrap();

    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let (s, v) = cp
        .put(
            "/issuers/keycloak",
            json!({"issuer": issuer, "algorithms": ["RS256"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let keys = eventually(
        "the provider's keys in the snapshot",
        Duration::from_secs(30),
        || async {
            let snap = cp.current_snapshot().await;
            let keys = snap["auth"]["issuers"]["keycloak"]["jwks"]["keys"].clone();
            keys.is_array().then_some(keys)
        },
    )
    .await;
    let kids: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [provider["kid"].as_str().unwrap()], "{keys}");
    cp.stop().await;
}

/// `mcpgw plugins|limits|policies|issuers` against a running API: set from a file (YAML),
/// get, list, refusal naming the field, rm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sets_gets_lists_and_removes() {
    const BIN: &str = env!("CARGO_BIN_EXE_mcpgw");
    let db = TestDb::sqlite();
    let cp = TestCp::start(settings(&db)).await;
    let (s, srv) = cp.post("/servers", json!({"name": "front"})).await;
    assert_eq!(s, 201, "{srv}");
    let sid = srv["id"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let api = format!("http://{}", cp.addr);
    let token = cp.token.clone().unwrap();
    let cli = |args: Vec<String>| {
        let (api, token, config) = (api.clone(), token.clone(), dir.path().join("config"));
        async move {
            let out = tokio::process::Command::new(BIN)
                .args(&args)
                .env("MCPGW_API_URL", &api)
                .env("MCPGW_TOKEN", &token)
                .env("MCPGW_CONFIG_DIR", &config)
                .env_remove("MCPGW_TOKEN_FILE")
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let plugin = dir.path().join("plugin.yaml");
    std::fs::write(
        &plugin,
        "conditions:\n  servers: [front]\npii:\n  action: mask\n  detectors: [email]\n",
    )
    .unwrap();
    let file = plugin.display().to_string();
    let (ok, out, err) = cli(args(&["plugins", "set", "mask", "-f", &file, "-o", "json"])).await;
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["pii"]["detectors"], json!(["email"]), "{v}");
    let (ok, out, _) = cli(args(&["plugins", "list"])).await;
    assert!(ok && out.contains("mask"), "{out}");

    // Limits by server name; a mistake names the field and writes nothing.
    let limits = dir.path().join("limits.json");
    std::fs::write(
        &limits,
        r#"{"rates": [{"name": "r", "requests": 0, "per_seconds": 60}]}"#,
    )
    .unwrap();
    let lfile = limits.display().to_string();
    let (ok, _, err) = cli(args(&["limits", "set", "front", "-f", &lfile])).await;
    assert!(!ok && err.contains("rates[0].requests"), "{err}");
    std::fs::write(
        &limits,
        r#"{"rates": [{"name": "r", "requests": 5, "per_seconds": 60}]}"#,
    )
    .unwrap();
    let (ok, out, err) = cli(args(&["limits", "set", "front", "-f", &lfile])).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(args(&["limits", "get", "front", "-o", "json"])).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], sid.as_str());
    assert_eq!(v["spec"]["rates"][0]["requests"], 5);
    let (ok, out, err) = cli(args(&["limits", "rm", "front"])).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(args(&["plugins", "rm", "mask"])).await;
    assert!(ok, "{out}{err}");
    let (_, listed) = cp.get("/plugins").await;
    assert_eq!(listed["items"], json!([]));
    cp.stop().await;
}

/// With `--public-url`, a policy written without `resource` gets the server's MCP URL
/// under it, in the stored policy and in the snapshot; one that names its own keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_url_supplies_a_policys_resource() {
    let db = TestDb::sqlite();
    let mut s = settings(&db);
    s.edge.public_url = Some("https://mcp.example.com/edge".into());
    let cp = TestCp::start(s).await;
    let (st, srv) = cp.post("/servers", json!({"name": "s1"})).await;
    assert_eq!(st, 201, "{srv}");
    let sid = srv["id"].as_str().unwrap().to_owned();
    let (st, v) = cp.put("/issuers/corp", corp()).await;
    assert_eq!(st, 201, "{v}");
    let rules = json!([{"name": "devs", "when": "'developer' in principal.roles"}]);

    let (st, v) = cp
        .put(
            &format!("/policies/{sid}"),
            json!({"issuers": ["corp"], "rules": rules}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let want = format!("https://mcp.example.com/edge/servers/{sid}/mcp");
    assert_eq!(v["spec"]["resource"], want.as_str(), "{v}");
    let snap = cp.current_snapshot().await;
    assert_eq!(
        snap["servers"][&sid]["auth"]["resource"],
        want.as_str(),
        "{snap}"
    );

    let own = "https://other.example.com/servers/s1/mcp";
    let (st, v) = cp
        .put(
            &format!("/policies/{sid}"),
            json!({"resource": own, "issuers": ["corp"], "rules": rules}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["spec"]["resource"], own, "{v}");
}

/// `PUT /revocations/{jti}` revokes any issuer's token by id until its `exp`: it reaches the
/// snapshot's `auth.revoked` (the edge answers it 401), a second PUT replaces the expiry,
/// and an empty or over-long id or an `exp` already past is a 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_id_reaches_the_edge_until_it_expires() {
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(settings(&db)).await;
        let now = chrono::Utc::now().timestamp();
        let (s, v) = cp
            .put("/revocations/leaked-1", json!({"exp": now + 600}))
            .await;
        assert_eq!(s, 201, "{backend}: {v}");
        assert_eq!(v["jti"], "leaked-1");
        let (s, v) = cp
            .put("/revocations/leaked-1", json!({"exp": now + 900}))
            .await;
        assert_eq!(s, 200, "a second PUT replaces: {v}");
        let expires = chrono::DateTime::from_timestamp(now + 900, 0).unwrap();
        assert_eq!(
            v["expires_at"],
            expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let (s, list) = cp.get("/revocations").await;
        assert_eq!(s, 200);
        assert_eq!(list["items"], json!([v]), "{backend}");
        let snapshot = cp.current_snapshot().await;
        assert_eq!(
            snapshot["auth"]["revoked"],
            json!(["leaked-1"]),
            "{snapshot}"
        );
        for (jti, body, field) in [
            ("past", json!({"exp": now - 1}), "exp"),
            ("long", json!({"exp": now + 60}), "jti"),
            ("unknown", json!({"exp": now + 60, "iat": now}), "iat"),
        ] {
            let path = if jti == "long" {
                format!("/revocations/{}", "x".repeat(257))
            } else {
                format!("/revocations/{jti}")
            };
            let (s, v) = cp.put(&path, body).await;
            assert_eq!(s, 422, "{jti}: {v}");
            assert_eq!(v["errors"][0]["field"], field, "{jti}: {v}");
        }
        assert_eq!(cp.get("/revocations").await.1["items"], list["items"]);
        cp.stop().await;
    }
}
