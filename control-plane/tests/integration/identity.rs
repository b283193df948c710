//! Identity and access on the admin API, against the real control plane on SQLite and
//! PostgreSQL: closed by default, password login (Argon2id, rehash, lockout, change),
//! session JWTs checked against the JWKS and across a key rotation, API tokens (scopes,
//! IP ranges, expiry, revocation, only a hash stored), and the role × route × owner matrix.

use std::time::Duration;

use base64::Engine as _;
use mcpgw::auth::BootstrapAdmin;
use mcpgw::config::Settings;
use serde_json::{Value, json};

use super::harness::{TestCp, TestDb, both_backends, settings};

const ADMIN: &str = "root@example.com";
const ADMIN_PW: &str = "correct horse battery staple";

/// A control plane outside dev mode, with a bootstrap admin and no dev token.
fn closed(db: &TestDb) -> Settings {
    let mut s = settings(db);
    s.dev = false;
    s.auth.dev_token = None;
    s.auth.bootstrap = Some(BootstrapAdmin {
        email: ADMIN.into(),
        password: ADMIN_PW.into(),
    });
    s
}

/// One answer: status, body (JSON, or text as a string), headers.
struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

async fn call(
    cp: &TestCp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(m, cp.url(path)).header("x-mcpgw-request", "1");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else if ct.contains("json") {
        serde_json::from_slice(&bytes).unwrap()
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    if status >= 400 {
        assert!(
            ct.starts_with("application/problem+json"),
            "{method} {path}: {status} without problem+json: {body}"
        );
    }
    Answer {
        status,
        body,
        headers,
    }
}

async fn login(cp: &TestCp, email: &str, password: &str) -> Answer {
    call(
        cp,
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn session(cp: &TestCp, email: &str, password: &str) -> String {
    let a = login(cp, email, password).await;
    assert_eq!(a.status, 200, "login {email}: {}", a.body);
    a.body["access_token"].as_str().unwrap().to_owned()
}

fn problem_type(a: &Answer) -> String {
    a.body["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("urn:mcpgw:problem:")
        .to_owned()
}

fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// Every documented route but the open ones answers 401 without a credential, and with a
/// bad one; the open ones answer without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_closed_without_a_credential() {
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(closed(&db)).await;
        let doc: Value = serde_json::from_str(&mcpgw::api::openapi_json()).unwrap();
        let open = [
            ("GET", "/health"),
            ("GET", "/ready"),
            ("GET", "/version"),
            ("GET", "/.well-known/jwks.json"),
            ("POST", "/auth/login"),
            ("GET", "/auth/oidc"),
            ("GET", "/auth/oidc/{provider}/login"),
            ("GET", "/auth/oidc/{provider}/callback"),
            ("POST", "/auth/oidc/token"),
        ];
        let mut walked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "delete"] {
                let Some(op) = item.get(method) else { continue };
                let m = method.to_uppercase();
                let concrete = path
                    .replace("{id}", "x")
                    .replace("{user_id}", "u")
                    .replace("{invitation_id}", "i");
                let is_open = open.contains(&(m.as_str(), path.as_str()));
                // The document says the same: open routes have an empty security requirement.
                let declared_open = op["security"] == json!([{}]);
                assert_eq!(
                    is_open, declared_open,
                    "{backend}: {m} {path} security in OpenAPI"
                );
                let a = call(&cp, &m, &concrete, None, None).await;
                if is_open {
                    assert_ne!(a.status, 401, "{backend}: {m} {path}: {}", a.body);
                    continue;
                }
                walked += 1;
                assert_eq!(a.status, 401, "{backend}: {m} {path}: {}", a.body);
                assert_eq!(problem_type(&a), "unauthenticated", "{m} {path}");
                assert!(
                    a.headers
                        .get("www-authenticate")
                        .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
                    "{m} {path}"
                );
                for bad in ["garbage", "a.b.c", "mcpgw_not-a-token"] {
                    let a = call(&cp, &m, &concrete, Some(bad), None).await;
                    assert_eq!(a.status, 401, "{backend}: {m} {path} with {bad}");
                    assert_eq!(problem_type(&a), "invalid-token");
                    assert!(
                        a.headers["www-authenticate"]
                            .to_str()
                            .unwrap()
                            .contains("invalid_token")
                    );
                }
            }
        }
        assert!(walked > 60, "{walked} routes walked");
        for path in ["/metrics", "/openapi.json"] {
            assert_eq!(
                call(&cp, "GET", path, None, None).await.status,
                401,
                "{path}"
            );
        }
        let admin = session(&cp, ADMIN, ADMIN_PW).await;
        assert_eq!(
            call(&cp, "GET", "/metrics", Some(&admin), None)
                .await
                .status,
            200
        );
        cp.stop().await;
    }
    // `--metrics-open` opens /metrics, and nothing else.
    let db = TestDb::sqlite();
    let mut s = closed(&db);
    s.auth.metrics_open = true;
    let cp = TestCp::start(s).await;
    assert_eq!(call(&cp, "GET", "/metrics", None, None).await.status, 200);
    assert_eq!(call(&cp, "GET", "/gateways", None, None).await.status, 401);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_lockout_change_and_logout() {
    for (backend, db) in both_backends().await {
        let mut s = closed(&db);
        s.auth.max_login_failures = 3;
        let cp = TestCp::start(s).await;
        // Wrong password, unknown email: the same 401, never which one was wrong.
        for (email, pw) in [(ADMIN, "wrong password!"), ("nobody@example.com", ADMIN_PW)] {
            let a = login(&cp, email, pw).await;
            assert_eq!(a.status, 401, "{backend}: {}", a.body);
            assert_eq!(problem_type(&a), "invalid-credentials");
            assert_eq!(a.body["detail"], "wrong email or password");
        }
        for (body, field) in [
            (json!({"email": "not an email", "password": "x"}), "email"),
            (json!({"email": ADMIN}), "body"),
            (json!({"email": ADMIN, "password": "x", "extra": 1}), "body"),
        ] {
            let a = call(&cp, "POST", "/auth/login", None, Some(body)).await;
            assert_eq!(a.status, 422, "{backend}: {}", a.body);
            assert!(
                a.body["errors"][0]["field"].as_str().is_some(),
                "{field}: {}",
                a.body
            );
        }
        // A good login: an ES256 JWT naming its key, for this API, with the user's teams.
        let a = login(&cp, " ROOT@example.com ", ADMIN_PW).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let token = a.body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(a.body["token_type"], "Bearer");
        assert!(a.body["expires_in"].as_i64().unwrap() > 3600);
        let header = jwt_part(&token, 0);
        assert_eq!(header["alg"], "ES256");
        let claims = jwt_part(&token, 1);
        assert_eq!(claims["aud"], "mcpgw-api");
        assert_eq!(claims["email"], ADMIN);
        assert!(!claims.to_string().contains(ADMIN_PW));
        let me = call(&cp, "GET", "/auth/me", Some(&token), None).await;
        assert_eq!(me.status, 200);
        assert_eq!(me.body["user"]["email"], ADMIN);
        assert_eq!(me.body["credential"], "session");
        assert!(
            me.body["roles"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["role"] == "platform_admin" && r["scope"] == "global"),
            "{}",
            me.body
        );
        assert!(
            !me.body.to_string().contains("argon2"),
            "no hash in answers"
        );

        // Three failures in a row lock the email: 429 with Retry-After, even with the right
        // password, and for an email nobody has (no way to tell which exist).
        for email in [ADMIN, "ghost@example.com"] {
            for i in 0..3 {
                let a = login(&cp, email, "wrong password!").await;
                let want = if i < 2 { 401 } else { 429 };
                assert_eq!(a.status, want, "{backend} {email} failure {i}: {}", a.body);
            }
            let a = login(&cp, email, if email == ADMIN { ADMIN_PW } else { "x" }).await;
            assert_eq!(a.status, 429, "{backend}: locked {email}: {}", a.body);
            assert_eq!(problem_type(&a), "login-locked");
            let retry: i64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry > 0 && retry <= 900, "{retry}");
        }
        // A platform admin lifts the lock (its session is still good).
        let admin_id = me.body["user"]["id"].as_str().unwrap().to_owned();
        let a = call(
            &cp,
            "POST",
            &format!("/users/{admin_id}/unlock"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(a.status, 204, "{}", a.body);
        session(&cp, ADMIN, ADMIN_PW).await;

        // Password change: the current one is checked, the new one follows the policy.
        let cases = [
            (
                json!({"current_password": "wrong password!", "new_password": "another long password"}),
                "current_password",
            ),
            (
                json!({"current_password": ADMIN_PW, "new_password": "short"}),
                "new_password",
            ),
            (
                json!({"current_password": ADMIN_PW, "new_password": ADMIN_PW}),
                "new_password",
            ),
        ];
        for (body, field) in cases {
            let a = call(&cp, "POST", "/auth/password", Some(&token), Some(body)).await;
            assert_eq!(a.status, 422, "{}", a.body);
            assert_eq!(a.body["errors"][0]["field"], field, "{}", a.body);
        }
        let new_pw = "a brand new long passphrase";
        let a = call(
            &cp,
            "POST",
            "/auth/password",
            Some(&token),
            Some(json!({"current_password": ADMIN_PW, "new_password": new_pw})),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let after_change = a.body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(login(&cp, ADMIN, ADMIN_PW).await.status, 401);
        // Sessions signed before the change are over; the one it answered is good.
        let a = call(&cp, "GET", "/auth/me", Some(&token), None).await;
        assert_eq!(
            (a.status, problem_type(&a).as_str()),
            (401, "invalid-token")
        );
        let a = call(&cp, "GET", "/auth/me", Some(&after_change), None).await;
        assert_eq!(a.status, 200);
        let fresh = session(&cp, ADMIN, new_pw).await;

        // Logout revokes that session only.
        let a = call(&cp, "POST", "/auth/logout", Some(&fresh), None).await;
        assert_eq!(a.status, 204);
        let a = call(&cp, "GET", "/auth/me", Some(&fresh), None).await;
        assert_eq!(
            (a.status, problem_type(&a).as_str()),
            (401, "invalid-token")
        );
        let a = call(&cp, "GET", "/auth/me", Some(&after_change), None).await;
        assert_eq!(a.status, 200);
        cp.stop().await;
    }
}

/// A hash made with other parameters is replaced on the next good login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_rehashed_when_the_parameters_change() {
    let db = TestDb::sqlite();
    let mut s = closed(&db);
    s.auth.password = mcpgw::auth::password::PasswordParams {
        iterations: 1,
        memory_kib: 8 * 1024,
        parallelism: 1,
    };
    let cp = TestCp::start(s).await;
    let stored = |cp: &TestCp| {
        let store = cp.store.clone();
        async move {
            store
                .find_user_login(ADMIN)
                .await
                .unwrap()
                .unwrap()
                .password_hash
                .unwrap()
        }
    };
    let before = stored(&cp).await;
    assert!(
        before.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"),
        "{before}"
    );
    cp.stop().await;
    // Restarted with the defaults (t=3, m=64 MiB, p=1): the login upgrades the hash.
    let cp = TestCp::start(closed(&db)).await;
    assert_eq!(
        stored(&cp).await,
        before,
        "the bootstrap leaves an existing admin alone"
    );
    session(&cp, ADMIN, ADMIN_PW).await;
    let after = stored(&cp).await;
    assert!(
        after.starts_with("$argon2id$v=19$m=65536,t=3,p=1$"),
        "{after}"
    );
    session(&cp, ADMIN, ADMIN_PW).await;
    assert_eq!(stored(&cp).await, after, "no rehash when current");
    cp.stop().await;
}

/// Verifies an ES256 JWT with a key from the JWKS, independently of the control plane.
fn verify_with_jwks(token: &str, jwks: &Value) -> bool {
    let kid = jwt_part(token, 0)["kid"].as_str().unwrap().to_owned();
    let Some(jwk) = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
    else {
        return false;
    };
    let b = |s: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    match jwk["kty"].as_str().unwrap() {
        "EC" => {
            let mut point = vec![4u8];
            point.extend(b(&jwk["x"]));
            point.extend(b(&jwk["y"]));
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(input.as_bytes(), &sig)
            .is_ok()
        }
        "RSA" => ring::signature::RsaPublicKeyComponents {
            n: b(&jwk["n"]),
            e: b(&jwk["e"]),
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &sig,
        )
        .is_ok(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_verify_with_the_jwks_and_survive_a_rotation() {
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(closed(&db)).await;
        let jwks = call(&cp, "GET", "/.well-known/jwks.json", None, None).await;
        assert_eq!(jwks.status, 200);
        assert_eq!(
            jwks.body["keys"].as_array().unwrap().len(),
            1,
            "{}",
            jwks.body
        );
        let key = &jwks.body["keys"][0];
        assert_eq!(
            (key["kty"].as_str(), key["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        assert!(key.get("d").is_none(), "no private part: {key}");
        let old = session(&cp, ADMIN, ADMIN_PW).await;
        assert!(verify_with_jwks(&old, &jwks.body), "{backend}");

        // Tampered: another subject, same signature.
        let parts: Vec<&str> = old.split('.').collect();
        let mut claims = jwt_part(&old, 1);
        claims["sub"] = json!("someone-else");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            call(&cp, "GET", "/auth/me", Some(&forged), None)
                .await
                .status,
            401
        );
        // alg none.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
                r#"{{"alg":"none","kid":"{}"}}"#,
                jwt_part(&old, 0)["kid"].as_str().unwrap()
            )),
            parts[1]
        );
        assert_eq!(
            call(&cp, "GET", "/auth/me", Some(&none), None).await.status,
            401
        );

        // Rotation: a new kid signs; the old token still works (grace period).
        let r = call(&cp, "POST", "/auth/keys/rotate", Some(&old), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let new_kid = r.body["kid"].as_str().unwrap().to_owned();
        let new = session(&cp, ADMIN, ADMIN_PW).await;
        assert_eq!(jwt_part(&new, 0)["kid"], new_kid.as_str());
        assert_ne!(jwt_part(&old, 0)["kid"], new_kid.as_str());
        for t in [&old, &new] {
            assert_eq!(
                call(&cp, "GET", "/auth/me", Some(t), None).await.status,
                200
            );
        }
        let jwks = call(&cp, "GET", "/.well-known/jwks.json", None, None)
            .await
            .body;
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
        assert!(verify_with_jwks(&old, &jwks) && verify_with_jwks(&new, &jwks));
        cp.stop().await;
        // A restart keeps the keys (sealed in the store): both tokens still verify.
        let cp = TestCp::start(closed(&db)).await;
        for t in [&old, &new] {
            assert_eq!(
                call(&cp, "GET", "/auth/me", Some(t), None).await.status,
                200,
                "{backend}"
            );
        }
        cp.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_and_rs256_are_configurable() {
    // HS256: works, and nothing is published.
    let db = TestDb::sqlite();
    let mut s = closed(&db);
    s.auth.jwt.algorithm = mcpgw::auth::jwt::Algorithm::Hs256;
    let cp = TestCp::start(s).await;
    let t = session(&cp, ADMIN, ADMIN_PW).await;
    assert_eq!(jwt_part(&t, 0)["alg"], "HS256");
    assert_eq!(
        call(&cp, "GET", "/auth/me", Some(&t), None).await.status,
        200
    );
    let jwks = call(&cp, "GET", "/.well-known/jwks.json", None, None)
        .await
        .body;
    assert_eq!(jwks["keys"], json!([]));
    cp.stop().await;
    // Switching the algorithm retires the HS256 key; its tokens verify for the grace period.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("rsa.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = closed(&db);
    s.auth.jwt.algorithm = mcpgw::auth::jwt::Algorithm::Rs256;
    s.auth.jwt.rsa_key_file = Some(pem.clone());
    let cp = TestCp::start(s).await;
    let rs = session(&cp, ADMIN, ADMIN_PW).await;
    assert_eq!(jwt_part(&rs, 0)["alg"], "RS256");
    let jwks = call(&cp, "GET", "/.well-known/jwks.json", None, None)
        .await
        .body;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert!(verify_with_jwks(&rs, &jwks));
    for token in [&t, &rs] {
        assert_eq!(
            call(&cp, "GET", "/auth/me", Some(token), None).await.status,
            200
        );
    }
    // An RS256 key is not rotated by the API: replacing the file does it.
    let a = call(&cp, "POST", "/auth/keys/rotate", Some(&rs), None).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("jwt_rsa_key_file")
    );
    cp.stop().await;
}

async fn create_token(cp: &TestCp, auth: &str, body: Value) -> Answer {
    call(cp, "POST", "/tokens", Some(auth), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_scoped_hashed_expiring_and_revocable() {
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(closed(&db)).await;
        let admin = session(&cp, ADMIN, ADMIN_PW).await;
        let g = call(
            &cp,
            "POST",
            "/gateways?team_id=global",
            Some(&admin),
            Some(json!({"name": "g1", "url": "http://127.0.0.1:9/mcp", "discover": false})),
        )
        .await;
        assert_eq!(g.status, 201, "{}", g.body);
        let gid = g.body["gateway"]["id"].as_str().unwrap().to_owned();

        let a = create_token(
            &cp,
            &admin,
            json!({"name": "reader", "expires_in_days": 7,
                   "scopes": {"permissions": ["gateways.read"], "teams": ["global"]}}),
        )
        .await;
        assert_eq!(a.status, 201, "{backend}: {}", a.body);
        let secret = a.body["token"].as_str().unwrap().to_owned();
        let id = a.body["id"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("mcpgw_"));
        // Shown once: never in a list, a get, or the store.
        let listed = call(&cp, "GET", "/tokens", Some(&admin), None).await;
        assert_eq!(listed.status, 200);
        assert!(!listed.body.to_string().contains(&secret));
        assert_eq!(listed.body["items"][0]["id"], id.as_str());
        let one = call(&cp, "GET", &format!("/tokens/{id}"), Some(&admin), None).await;
        assert!(one.body.get("token").is_none() && !one.body.to_string().contains(&secret));
        let export = call(&cp, "GET", "/export", Some(&admin), None).await;
        assert!(!export.body.to_string().contains(&secret));

        // What it may do: read gateways of the global team, nothing else.
        assert_eq!(
            call(&cp, "GET", &format!("/gateways/{gid}"), Some(&secret), None)
                .await
                .status,
            200
        );
        let list = call(&cp, "GET", "/gateways", Some(&secret), None).await;
        assert_eq!(
            list.body["items"].as_array().unwrap().len(),
            1,
            "{}",
            list.body
        );
        let a = call(
            &cp,
            "PUT",
            &format!("/gateways/{gid}"),
            Some(&secret),
            Some(json!({"description": "x"})),
        )
        .await;
        assert_eq!(
            (a.status, problem_type(&a).as_str()),
            (403, "forbidden"),
            "{}",
            a.body
        );
        assert!(
            a.body["detail"]
                .as_str()
                .unwrap()
                .contains("gateways.update")
        );
        assert_eq!(
            call(&cp, "GET", "/users", Some(&secret), None).await.status,
            403
        );
        let me = call(&cp, "GET", "/auth/me", Some(&secret), None).await;
        assert_eq!(
            (me.body["credential"].as_str(), me.body["token_id"].as_str()),
            (Some("api_token"), Some(id.as_str()))
        );

        // Empty scopes grant nothing (and a missing teams list is the same as an empty one).
        let empty = create_token(&cp, &admin, json!({"name": "empty"})).await;
        assert_eq!(empty.status, 201, "{}", empty.body);
        let empty_secret = empty.body["token"].as_str().unwrap().to_owned();
        assert_eq!(
            call(&cp, "GET", "/gateways", Some(&empty_secret), None)
                .await
                .status,
            403
        );
        let no_teams = create_token(
            &cp,
            &admin,
            json!({"name": "no-teams", "scopes": {"permissions": ["gateways.read"]}}),
        )
        .await;
        let no_teams = no_teams.body["token"].as_str().unwrap().to_owned();
        let a = call(
            &cp,
            "GET",
            &format!("/gateways/{gid}"),
            Some(&no_teams),
            None,
        )
        .await;
        assert_eq!(
            a.status, 404,
            "a team-less token sees no team's items: {}",
            a.body
        );

        // IP ranges: outside them the token is refused; inside it works.
        for (name, range, want) in [("far", "10.0.0.0/8", 403), ("near", "127.0.0.1", 200)] {
            let t = create_token(
                &cp,
                &admin,
                json!({"name": name, "scopes": {"permissions": ["*"], "teams": ["*"], "ip_ranges": [range]}}),
            )
            .await;
            let t = t.body["token"].as_str().unwrap().to_owned();
            let a = call(&cp, "GET", "/gateways", Some(&t), None).await;
            assert_eq!(a.status, want, "{name}: {}", a.body);
            if want == 403 {
                assert_eq!(problem_type(&a), "token-address-refused");
            }
        }

        // Bad input names its field.
        let bad = [
            (json!({"name": "", "scopes": {}}), "name"),
            (
                json!({"name": "x", "expires_in_days": 0}),
                "expires_in_days",
            ),
            (
                json!({"name": "x", "scopes": {"permissions": ["gateways.fly"]}}),
                "scopes.permissions[0]",
            ),
            (
                json!({"name": "x", "scopes": {"ip_ranges": ["300.1.1.1"]}}),
                "scopes.ip_ranges[0]",
            ),
            (
                json!({"name": "x", "scopes": {"teams": ["no-such-team"]}}),
                "scopes.teams",
            ),
            (
                json!({"name": "x", "scopes": {"servers": ["no-such-server"]}}),
                "scopes.servers",
            ),
            (json!({"name": "x", "scopes": {"colour": []}}), "scopes"),
        ];
        for (body, field) in bad {
            let a = create_token(&cp, &admin, body.clone()).await;
            assert_eq!(a.status, 422, "{body}: {}", a.body);
            assert!(
                a.body["errors"][0]["field"]
                    .as_str()
                    .unwrap()
                    .starts_with(field),
                "{body}: {}",
                a.body
            );
        }
        // A token that may create tokens makes none wider than itself.
        let maker = create_token(
            &cp,
            &admin,
            json!({"name": "maker", "scopes": {"permissions": ["tokens.create", "gateways.read"],
                   "teams": ["global"], "ip_ranges": ["127.0.0.0/8"]}}),
        )
        .await;
        let maker = maker.body["token"].as_str().unwrap().to_owned();
        for (scopes, field) in [
            (
                json!({"permissions": ["*"], "teams": ["global"], "ip_ranges": ["127.0.0.1"]}),
                "scopes.permissions",
            ),
            (
                json!({"permissions": ["gateways.update"], "teams": ["global"], "ip_ranges": ["127.0.0.1"]}),
                "scopes.permissions",
            ),
            (
                json!({"permissions": ["gateways.read"], "teams": ["*"], "ip_ranges": ["127.0.0.1"]}),
                "scopes.teams",
            ),
            (
                json!({"permissions": ["gateways.read"], "teams": ["global"]}),
                "scopes.ip_ranges",
            ),
            (
                json!({"permissions": ["gateways.read"], "teams": ["global"], "ip_ranges": ["10.0.0.0/8"]}),
                "scopes.ip_ranges",
            ),
        ] {
            let a = create_token(&cp, &maker, json!({"name": "wider", "scopes": scopes})).await;
            assert_eq!(a.status, 422, "{scopes}: {}", a.body);
            assert_eq!(a.body["errors"][0]["field"], field, "{scopes}: {}", a.body);
        }
        let a = create_token(
            &cp,
            &maker,
            json!({"name": "narrower", "scopes": {"permissions": ["gateways.read"], "teams": ["global"], "ip_ranges": ["127.0.0.1"]}}),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let dup = create_token(&cp, &admin, json!({"name": "reader"})).await;
        assert_eq!(dup.status, 409, "{}", dup.body);

        // Expired (moved into the past in the store) and revoked tokens are refused.
        let exp = create_token(
            &cp,
            &admin,
            json!({"name": "soon", "scopes": {"permissions": ["*"], "teams": ["*"]}}),
        )
        .await;
        let exp_secret = exp.body["token"].as_str().unwrap().to_owned();
        let exp_id = exp.body["id"].as_str().unwrap().to_owned();
        assert_eq!(
            call(&cp, "GET", "/gateways", Some(&exp_secret), None)
                .await
                .status,
            200
        );
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
            .await
            .unwrap();
        sqlx::query("UPDATE api_tokens SET expires_at = '2001-01-01T00:00:00.000Z' WHERE id = $1")
            .bind(&exp_id)
            .execute(&mut conn)
            .await
            .unwrap();
        let a = call(&cp, "GET", "/gateways", Some(&exp_secret), None).await;
        assert_eq!(
            (a.status, problem_type(&a).as_str()),
            (401, "invalid-token")
        );
        // Only the hash is stored.
        let rows = sqlx::query("SELECT token_hash, scopes FROM api_tokens")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for r in &rows {
            let hash: String = sqlx::Row::get(r, "token_hash");
            assert_eq!(hash.len(), 64);
            for s in [&secret, &empty_secret, &exp_secret] {
                assert!(!hash.contains(s.as_str()));
            }
        }
        let a = call(&cp, "DELETE", &format!("/tokens/{id}"), Some(&admin), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body["revoked_at"].is_string());
        let a = call(&cp, "GET", "/gateways", Some(&secret), None).await;
        assert_eq!(
            (a.status, problem_type(&a).as_str()),
            (401, "invalid-token")
        );
        cp.stop().await;
    }
}

/// The role × route × owner matrix: each case is allowed (any answer but 401, 403 and
/// 404) or denied (403, or 404 for what the caller may not even see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_route_owner_matrix() {
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(closed(&db)).await;
        let admin = session(&cp, ADMIN, ADMIN_PW).await;
        let ok = |a: &Answer, what: &str| {
            assert!(a.status < 300, "{backend} {what}: {} {}", a.status, a.body)
        };
        let team_a = call(
            &cp,
            "POST",
            "/teams",
            Some(&admin),
            Some(json!({"name": "team-a"})),
        )
        .await;
        ok(&team_a, "team a");
        let team_a = team_a.body["id"].as_str().unwrap().to_owned();
        let team_b = call(
            &cp,
            "POST",
            "/teams",
            Some(&admin),
            Some(json!({"name": "team-b"})),
        )
        .await;
        let team_b = team_b.body["id"].as_str().unwrap().to_owned();
        let pw = "a long enough password";
        let mut users = std::collections::BTreeMap::new();
        for (name, global) in [
            ("ta", json!([])),
            ("dev", json!([])),
            ("viewer", json!([])),
            ("outsider", json!([])),
            ("gviewer", json!(["viewer"])),
            ("extra", json!([])),
        ] {
            let u = call(
                &cp,
                "POST",
                "/users",
                Some(&admin),
                Some(json!({"email": format!("{name}@example.com"), "password": pw, "global_roles": global})),
            )
            .await;
            ok(&u, name);
            users.insert(name, u.body["id"].as_str().unwrap().to_owned());
        }
        for (team, user, role) in [
            (&team_a, "ta", "team_admin"),
            (&team_a, "dev", "developer"),
            (&team_a, "viewer", "viewer"),
            (&team_b, "outsider", "viewer"),
        ] {
            let a = call(
                &cp,
                "PUT",
                &format!("/teams/{team}/members/{}", users[user]),
                Some(&admin),
                Some(json!({"role": role})),
            )
            .await;
            assert_eq!(a.status, 204, "{}", a.body);
        }
        let mut tokens = std::collections::BTreeMap::new();
        tokens.insert("admin", admin.clone());
        for name in ["ta", "dev", "viewer", "outsider", "gviewer"] {
            tokens.insert(name, session(&cp, &format!("{name}@example.com"), pw).await);
        }
        let gateway = |token: String, team: String, vis: &'static str, name: String| {
            let cp = &cp;
            async move {
                let a = call(
                    cp,
                    "POST",
                    &format!("/gateways?team_id={team}&visibility={vis}"),
                    Some(&token),
                    Some(json!({"name": name, "url": "http://127.0.0.1:9/mcp", "discover": false})),
                )
                .await;
                assert_eq!(a.status, 201, "{name}: {}", a.body);
                a.body["gateway"]["id"].as_str().unwrap().to_owned()
            }
        };
        let g_a = gateway(admin.clone(), team_a.clone(), "team", "ga".into()).await;
        let g_private = gateway(
            tokens["dev"].clone(),
            team_a.clone(),
            "private",
            "gp".into(),
        )
        .await;
        let g_public = gateway(admin.clone(), team_b.clone(), "public", "gpub".into()).await;
        let s_a = call(
            &cp,
            "POST",
            &format!("/servers?team_id={team_a}"),
            Some(&admin),
            Some(json!({"name": "sa"})),
        )
        .await;
        ok(&s_a, "server");
        let s_a = s_a.body["id"].as_str().unwrap().to_owned();
        // The server's limits exist, so reading them is allowed or denied, never 404.
        let a = call(
            &cp,
            "PUT",
            &format!("/limits/{s_a}"),
            Some(&admin),
            Some(json!({})),
        )
        .await;
        ok(&a, "limits");
        let owner = call(
            &cp,
            "GET",
            &format!("/gateways/{g_private}/owner"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(owner.body["team_id"], team_a.as_str());
        assert_eq!(owner.body["owner_user"], users["dev"].as_str());
        assert_eq!(owner.body["visibility"], "private");

        // Lists show what each may read.
        let all = ["ga", "gp", "gpub"];
        let lists: [(&str, &[&str]); 6] = [
            ("admin", &all),
            ("ta", &all),
            ("dev", &all),
            ("viewer", &["ga", "gpub"]),
            ("outsider", &["gpub"]),
            ("gviewer", &all),
        ];
        for (role, want) in lists {
            let a = call(&cp, "GET", "/gateways", Some(&tokens[role]), None).await;
            assert_eq!(a.status, 200, "{role}: {}", a.body);
            let mut got: Vec<&str> = a.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["name"].as_str().unwrap())
                .collect();
            got.sort();
            assert_eq!(got, want, "{backend}: {role} lists");
        }

        // (method, path, body, fresh item needed, expected per role: admin ta dev viewer outsider gviewer)
        let roles = ["admin", "ta", "dev", "viewer", "outsider", "gviewer"];
        #[derive(Clone, Copy)]
        enum Fresh {
            No,
            GatewayInA,
            ServerInA,
        }
        let y = true;
        let n = false;
        /// Method, path, body, what to make first, allowed per role.
        type Case<'a> = (&'a str, String, Option<Value>, Fresh, [bool; 6]);
        let cases: Vec<Case<'_>> = vec![
            (
                "GET",
                format!("/gateways/{g_a}"),
                None,
                Fresh::No,
                [y, y, y, y, n, y],
            ),
            (
                "PUT",
                format!("/gateways/{g_a}"),
                Some(json!({"description": "d"})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "POST",
                format!("/gateways/{g_a}/state?activate=true"),
                None,
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "GET",
                format!("/gateways/{g_a}/owner"),
                None,
                Fresh::No,
                [y, y, y, y, n, y],
            ),
            (
                "PUT",
                format!("/gateways/{g_a}/owner"),
                Some(json!({"team_id": team_a, "visibility": "team"})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "DELETE",
                "/gateways/{fresh}".into(),
                None,
                Fresh::GatewayInA,
                [y, y, n, n, n, n],
            ),
            (
                "GET",
                format!("/gateways/{g_private}"),
                None,
                Fresh::No,
                [y, y, y, n, n, y],
            ),
            (
                "PUT",
                format!("/gateways/{g_private}"),
                Some(json!({"description": "d"})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "GET",
                format!("/gateways/{g_public}"),
                None,
                Fresh::No,
                [y, y, y, y, y, y],
            ),
            (
                "PUT",
                format!("/gateways/{g_public}"),
                Some(json!({"description": "d"})),
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            (
                "POST",
                format!("/gateways?team_id={team_a}"),
                Some(json!({"url": "http://127.0.0.1:9/mcp", "discover": false})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "POST",
                format!("/gateways?team_id={team_b}"),
                Some(json!({"url": "http://127.0.0.1:9/mcp", "discover": false})),
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            // Tool-definition changes: reading takes gateways.read, deciding and the
            // policy gateways.update, on the owning team (an unknown change is 404
            // `change-not-found` once allowed: the route was reached).
            (
                "GET",
                format!("/gateways/{g_a}/changes"),
                None,
                Fresh::No,
                [y, y, y, y, n, y],
            ),
            (
                "GET",
                format!("/gateways/{g_a}/pinning"),
                None,
                Fresh::No,
                [y, y, y, y, n, y],
            ),
            (
                "PUT",
                format!("/gateways/{g_a}/pinning"),
                Some(json!({"on_change": "serve-approved"})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "POST",
                format!("/gateways/{g_a}/changes/none/approve"),
                Some(json!({})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "POST",
                format!("/gateways/{g_a}/changes/none/reject"),
                Some(json!({})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "GET",
                format!("/gateways/{g_private}/changes"),
                None,
                Fresh::No,
                [y, y, y, n, n, y],
            ),
            (
                "POST",
                format!("/gateways/{g_public}/changes/none/approve"),
                Some(json!({})),
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            ("GET", "/tools".into(), None, Fresh::No, [y, y, y, y, y, y]),
            (
                "GET",
                format!("/servers/{s_a}"),
                None,
                Fresh::No,
                [y, y, y, y, n, y],
            ),
            (
                "PUT",
                format!("/servers/{s_a}"),
                Some(json!({"description": "d"})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "DELETE",
                "/servers/{fresh}".into(),
                None,
                Fresh::ServerInA,
                [y, y, n, n, n, n],
            ),
            (
                "GET",
                format!("/teams/{team_a}"),
                None,
                Fresh::No,
                [y, y, y, y, n, y],
            ),
            (
                "GET",
                format!("/teams/{team_a}/members"),
                None,
                Fresh::No,
                [y, y, y, y, n, y],
            ),
            (
                "PUT",
                format!("/teams/{team_a}/members/{}", users["extra"]),
                Some(json!({"role": "viewer"})),
                Fresh::No,
                [y, y, n, n, n, n],
            ),
            (
                "PUT",
                format!("/teams/{team_a}"),
                Some(json!({"description": "d"})),
                Fresh::No,
                [y, y, n, n, n, n],
            ),
            (
                "POST",
                format!("/teams/{team_a}/invitations"),
                Some(json!({"email": "new@example.com", "role": "viewer"})),
                Fresh::No,
                [y, y, n, n, n, n],
            ),
            (
                "POST",
                "/teams".into(),
                Some(json!({"name": "made-by-someone"})),
                Fresh::No,
                [y, y, y, y, y, y],
            ),
            // What the edge enforces: a server's policy and limits go with the server;
            // plugins, default limits and issuers are global.
            (
                "GET",
                format!("/limits/{s_a}"),
                None,
                Fresh::No,
                [y, y, y, y, n, y],
            ),
            (
                "PUT",
                format!("/limits/{s_a}"),
                Some(json!({"concurrency": []})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            (
                "PUT",
                format!("/policies/{s_a}"),
                Some(json!({"resource": "https://mcp.example.com/servers/sa/mcp"})),
                Fresh::No,
                [y, y, y, n, n, n],
            ),
            ("GET", "/limits".into(), None, Fresh::No, [y, n, n, n, n, y]),
            (
                "PUT",
                "/limits/default".into(),
                Some(json!({})),
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            (
                "GET",
                "/plugins".into(),
                None,
                Fresh::No,
                [y, n, n, n, n, y],
            ),
            (
                "PUT",
                "/plugins/mask".into(),
                Some(json!({"pii": {}})),
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            (
                "GET",
                "/policies".into(),
                None,
                Fresh::No,
                [y, n, n, n, n, y],
            ),
            // The passthrough path's policy is no server's: global scope, as the default
            // limits.
            (
                "PUT",
                "/policies/passthrough".into(),
                Some(json!({"resource": "https://mcp.example.com/mcp"})),
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            (
                "GET",
                "/issuers".into(),
                None,
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            (
                "PUT",
                "/issuers/corp".into(),
                Some(json!({"issuer": "https://idp.example.com", "algorithms": ["ES256"]})),
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            ("GET", "/users".into(), None, Fresh::No, [y, n, n, n, n, n]),
            (
                "GET",
                "/xds/nodes".into(),
                None,
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            (
                "GET",
                "/snapshot".into(),
                None,
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            ("GET", "/export".into(), None, Fresh::No, [y, n, n, n, n, n]),
            (
                "GET",
                "/metrics".into(),
                None,
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            (
                "POST",
                "/auth/keys/rotate".into(),
                None,
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            (
                "GET",
                "/tokens?all=true".into(),
                None,
                Fresh::No,
                [y, n, n, n, n, n],
            ),
            ("GET", "/tokens".into(), None, Fresh::No, [y, y, y, y, y, y]),
            (
                "GET",
                "/auth/me".into(),
                None,
                Fresh::No,
                [y, y, y, y, y, y],
            ),
        ];
        let mut n_case = 0;
        for (method, path, body, fresh, want) in &cases {
            for (i, role) in roles.iter().enumerate() {
                n_case += 1;
                let path = match fresh {
                    Fresh::No => path.clone(),
                    Fresh::GatewayInA => {
                        let id = gateway(
                            admin.clone(),
                            team_a.clone(),
                            "team",
                            format!("fresh-{n_case}"),
                        )
                        .await;
                        path.replace("{fresh}", &id)
                    }
                    Fresh::ServerInA => {
                        let s = call(
                            &cp,
                            "POST",
                            &format!("/servers?team_id={team_a}"),
                            Some(&admin),
                            Some(json!({"name": format!("fresh-{n_case}")})),
                        )
                        .await;
                        path.replace("{fresh}", s.body["id"].as_str().unwrap())
                    }
                };
                let mut body = body.clone();
                // Names must be unique: each create gets its own.
                if let Some(Value::Object(b)) = &mut body
                    && method == &"POST"
                    && (path.starts_with("/gateways?") || path == "/teams")
                {
                    b.insert("name".into(), json!(format!("made-{n_case}")));
                }
                let a = call(&cp, method, &path, Some(&tokens[role]), body).await;
                // Denied: 403, or 404 not-found for what the caller may not see (every
                // target exists). Other answers (xds-disabled, 409, 422…) are the handler's.
                let allowed = !(matches!(a.status, 401 | 403)
                    || a.status == 404 && problem_type(&a) == "not-found");
                assert_eq!(
                    allowed, want[i],
                    "{backend}: {role} {method} {path} → {} {}",
                    a.status, a.body
                );
                if !allowed {
                    let t = problem_type(&a);
                    assert!(t == "forbidden" || t == "not-found", "{t}");
                }
            }
        }
        assert_eq!(n_case, cases.len() * roles.len());
        cp.stop().await;
    }
}

/// `mcpgw admin create` makes the first admin in the database; `mcpgw login` keeps its
/// token (0600) in the config directory, and the other verbs use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_admin_create_login_and_stored_token() {
    const BIN: &str = env!("CARGO_BIN_EXE_mcpgw");
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "the operator's long password\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args([
            "admin",
            "create",
            "--email",
            "ops@example.com",
            "--database-url",
            db.url(),
            "--password-file",
        ])
        .arg(&pw_file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = settings(&db);
    s.dev = false;
    s.auth.dev_token = None;
    let cp = TestCp::start(s).await;
    let api = format!("http://{}", cp.addr);
    let config = dir.path().join("config");
    let cli = |args: Vec<String>| {
        let config = config.clone();
        let api = api.clone();
        async move {
            let out = tokio::process::Command::new(BIN)
                .args(&args)
                .env("MCPGW_API_URL", &api)
                .env("MCPGW_CONFIG_DIR", &config)
                .env_remove("MCPGW_TOKEN")
                .env_remove("MCPGW_TOKEN_FILE")
                .env_remove("MCPGW_PASSWORD")
                .stdin(std::process::Stdio::null())
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
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (ok, _, err) = cli(s(&["gateways", "list"])).await;
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = cli(s(&[
        "login",
        "--email",
        "ops@example.com",
        "--password-file",
        pw_file.to_str().unwrap(),
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("logged in") && out.contains("ops@example.com"),
        "{out}"
    );
    let stored = config.join("credentials.json");
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !std::fs::read_to_string(&stored)
            .unwrap()
            .contains("long password")
    );
    let (ok, out, err) = cli(s(&["gateways", "list", "-o", "json"])).await;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
    // A token for a machine: created, stored by `login --api-token-file`, used, revoked.
    let (ok, out, err) = cli(s(&[
        "tokens",
        "create",
        "--name",
        "ci",
        "--permission",
        "gateways.read",
        "--team",
        "*",
    ]))
    .await;
    assert!(ok, "{err}");
    let token = out.trim().to_owned();
    assert!(
        token.starts_with("mcpgw_") && err.contains("not shown again"),
        "{out} {err}"
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, _, err) = cli(s(&["logout"])).await;
    assert!(ok, "{err}");
    let (ok, _, _) = cli(s(&["gateways", "list"])).await;
    assert!(!ok, "logged out");
    let (ok, out, err) = cli(s(&[
        "login",
        "--api-token-file",
        token_file.to_str().unwrap(),
    ]))
    .await;
    assert!(ok && out.contains("API token"), "{out} {err}");
    let (ok, _, err) = cli(s(&["gateways", "list"])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = cli(s(&["servers", "list"])).await;
    assert!(
        !ok && err.contains("403"),
        "a gateways.read token lists no servers: {err}"
    );
    // A loose credentials file is refused, not used.
    std::fs::set_permissions(&stored, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = cli(s(&["gateways", "list"])).await;
    assert!(!ok && err.contains("chmod 600"), "{err}");
    cp.stop().await;
}

/// Teams: a personal team per user, members with roles, invitations accepted only by the
/// invited email, the last team admin kept, a team that owns items kept; a token limited
/// to virtual servers sees only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_members_invitations_and_server_scoped_tokens() {
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(closed(&db)).await;
        let admin = session(&cp, ADMIN, ADMIN_PW).await;
        let pw = "a long enough password";
        let mut ids = std::collections::BTreeMap::new();
        for name in ["lead", "joiner", "stranger"] {
            let u = call(
                &cp,
                "POST",
                "/users",
                Some(&admin),
                Some(json!({"email": format!("{name}@example.com"), "password": pw})),
            )
            .await;
            assert_eq!(u.status, 201, "{backend}: {}", u.body);
            // Everyone has a personal team of their own.
            assert!(u.body["personal_team"].is_string(), "{}", u.body);
            ids.insert(name, u.body["id"].as_str().unwrap().to_owned());
        }
        let dup = call(
            &cp,
            "POST",
            "/users",
            Some(&admin),
            Some(json!({"email": "LEAD@example.com"})),
        )
        .await;
        assert_eq!(
            dup.status, 409,
            "emails compare in lower case: {}",
            dup.body
        );
        let lead = session(&cp, "lead@example.com", pw).await;
        let joiner = session(&cp, "joiner@example.com", pw).await;
        let stranger = session(&cp, "stranger@example.com", pw).await;

        // Any user creates a team and is its admin.
        let t = call(
            &cp,
            "POST",
            "/teams",
            Some(&lead),
            Some(json!({"name": "platform"})),
        )
        .await;
        assert_eq!(t.status, 201, "{}", t.body);
        let team = t.body["id"].as_str().unwrap().to_owned();
        let bad = call(
            &cp,
            "POST",
            "/teams",
            Some(&lead),
            Some(json!({"name": "personal:x"})),
        )
        .await;
        assert_eq!(bad.status, 422);
        let members = call(
            &cp,
            "GET",
            &format!("/teams/{team}/members"),
            Some(&lead),
            None,
        )
        .await;
        assert_eq!(members.body["items"][0]["role"], "team_admin");

        // An invitation: only the invited email sees and accepts it.
        let inv = call(
            &cp,
            "POST",
            &format!("/teams/{team}/invitations"),
            Some(&lead),
            Some(json!({"email": "Joiner@Example.com", "role": "developer"})),
        )
        .await;
        assert_eq!(inv.status, 201, "{}", inv.body);
        let inv_id = inv.body["id"].as_str().unwrap().to_owned();
        for (body, field) in [
            (json!({"email": "nope", "role": "viewer"}), "email"),
            (json!({"email": "a@b.c", "role": "platform_admin"}), "role"),
            (
                json!({"email": "a@b.c", "role": "viewer", "expires_in_days": 0}),
                "expires_in_days",
            ),
            (json!({"email": "a@b.c", "role": "owner"}), "role"),
        ] {
            let a = call(
                &cp,
                "POST",
                &format!("/teams/{team}/invitations"),
                Some(&lead),
                Some(body.clone()),
            )
            .await;
            assert_eq!(a.status, 422, "{body}: {}", a.body);
            assert!(
                a.body["errors"][0]["field"]
                    .as_str()
                    .unwrap()
                    .contains(field),
                "{body}: {}",
                a.body
            );
        }
        let mine = call(&cp, "GET", "/invitations", Some(&joiner), None).await;
        assert_eq!(mine.body["items"][0]["id"], inv_id.as_str());
        assert_eq!(
            call(&cp, "GET", "/invitations", Some(&stranger), None)
                .await
                .body["items"],
            json!([])
        );
        let a = call(
            &cp,
            "POST",
            &format!("/invitations/{inv_id}/accept"),
            Some(&stranger),
            None,
        )
        .await;
        assert_eq!(a.status, 404, "{}", a.body);
        // Invitations are the team admins' business.
        let a = call(
            &cp,
            "GET",
            &format!("/teams/{team}/invitations"),
            Some(&stranger),
            None,
        )
        .await;
        assert_eq!(
            a.status, 404,
            "a stranger does not see the team: {}",
            a.body
        );
        let a = call(
            &cp,
            "POST",
            &format!("/invitations/{inv_id}/accept"),
            Some(&joiner),
            None,
        )
        .await;
        assert_eq!(a.status, 204, "{}", a.body);
        let me = call(&cp, "GET", "/auth/me", Some(&joiner), None).await;
        assert!(
            me.body["roles"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["team_id"] == team.as_str()
                    && r["role"] == "developer"
                    && r["scope"] == "team"),
            "{}",
            me.body
        );
        let teams = call(&cp, "GET", "/teams", Some(&joiner), None).await;
        let names: Vec<&str> = teams.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"platform") && names.contains(&"personal:joiner@example.com"),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("stranger")), "{names:?}");

        // The last team admin stays; a developer cannot manage members.
        let a = call(
            &cp,
            "DELETE",
            &format!("/teams/{team}/members/{}", ids["lead"]),
            Some(&lead),
            None,
        )
        .await;
        assert_eq!(a.status, 422, "{}", a.body);
        let a = call(
            &cp,
            "PUT",
            &format!("/teams/{team}/members/{}", ids["stranger"]),
            Some(&joiner),
            Some(json!({"role": "viewer"})),
        )
        .await;
        assert_eq!(a.status, 403, "{}", a.body);

        // A team that owns items is kept; an empty one goes.
        let g = call(
            &cp,
            "POST",
            &format!("/gateways?team_id={team}"),
            Some(&joiner),
            Some(json!({"name": "team-gw", "url": "http://127.0.0.1:9/mcp", "discover": false})),
        )
        .await;
        assert_eq!(g.status, 201, "{}", g.body);
        let a = call(&cp, "DELETE", &format!("/teams/{team}"), Some(&lead), None).await;
        assert_eq!(a.status, 422, "{}", a.body);
        let gid = g.body["gateway"]["id"].as_str().unwrap();
        assert_eq!(
            call(
                &cp,
                "DELETE",
                &format!("/gateways/{gid}"),
                Some(&lead),
                None
            )
            .await
            .status,
            204
        );
        assert_eq!(
            call(&cp, "DELETE", &format!("/teams/{team}"), Some(&lead), None)
                .await
                .status,
            204
        );
        // Creating in a team one is not in is refused; in an unknown one, a 422.
        let a = call(
            &cp,
            "POST",
            &format!("/gateways?team_id={team}"),
            Some(&stranger),
            Some(json!({"name": "x", "url": "http://127.0.0.1:9/mcp", "discover": false})),
        )
        .await;
        assert_eq!(a.status, 422, "the team is gone: {}", a.body);
        let a = call(
            &cp,
            "POST",
            "/gateways?visibility=everyone",
            Some(&stranger),
            Some(json!({"name": "x", "url": "http://127.0.0.1:9/mcp", "discover": false})),
        )
        .await;
        assert_eq!(
            (a.status, a.body["errors"][0]["field"].as_str()),
            (422, Some("visibility"))
        );
        // Without team_id an item goes to the creator's personal team.
        let a = call(
            &cp,
            "POST",
            "/servers",
            Some(&stranger),
            Some(json!({"name": "mine"})),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let sid = a.body["id"].as_str().unwrap().to_owned();
        let o = call(
            &cp,
            "GET",
            &format!("/servers/{sid}/owner"),
            Some(&stranger),
            None,
        )
        .await;
        let me = call(&cp, "GET", "/auth/me", Some(&stranger), None).await;
        assert_eq!(o.body["team_id"], me.body["user"]["personal_team"]);
        assert_eq!(
            call(&cp, "GET", &format!("/servers/{sid}"), Some(&lead), None)
                .await
                .status,
            404
        );

        // A token limited to one virtual server lists and reaches only that one.
        let other = call(
            &cp,
            "POST",
            "/servers",
            Some(&stranger),
            Some(json!({"name": "other"})),
        )
        .await;
        let other = other.body["id"].as_str().unwrap().to_owned();
        let t = create_token(
            &cp,
            &stranger,
            json!({"name": "one-server", "scopes": {"permissions": ["servers.read"], "teams": ["*"], "servers": [sid]}}),
        )
        .await;
        assert_eq!(t.status, 201, "{}", t.body);
        let t = t.body["token"].as_str().unwrap().to_owned();
        let list = call(&cp, "GET", "/servers", Some(&t), None).await;
        let names: Vec<&str> = list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["mine"], "{backend}");
        assert_eq!(
            call(&cp, "GET", &format!("/servers/{sid}"), Some(&t), None)
                .await
                .status,
            200
        );
        assert_eq!(
            call(&cp, "GET", &format!("/servers/{other}"), Some(&t), None)
                .await
                .status,
            404
        );
        // A token may not hold what its user does not.
        let a = create_token(
            &cp,
            &stranger,
            json!({"name": "greedy", "scopes": {"permissions": ["admin.users"], "teams": ["*"]}}),
        )
        .await;
        assert_eq!(
            (a.status, a.body["errors"][0]["field"].as_str()),
            (422, Some("scopes.permissions"))
        );
        // Users are the platform admins' business; the last one stays.
        assert_eq!(
            call(&cp, "GET", "/users", Some(&lead), None).await.status,
            403
        );
        let root = call(&cp, "GET", "/auth/me", Some(&admin), None).await;
        let root_id = root.body["user"]["id"].as_str().unwrap();
        let a = call(
            &cp,
            "PUT",
            &format!("/users/{root_id}"),
            Some(&admin),
            Some(json!({"global_roles": []})),
        )
        .await;
        assert_eq!(a.status, 422, "{}", a.body);
        // A disabled user's sessions and tokens stop working.
        let a = call(
            &cp,
            "PUT",
            &format!("/users/{}", ids["stranger"]),
            Some(&admin),
            Some(json!({"active": false})),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            call(&cp, "GET", "/auth/me", Some(&stranger), None)
                .await
                .status,
            401
        );
        assert_eq!(
            call(&cp, "GET", "/servers", Some(&t), None).await.status,
            401
        );
        assert_eq!(login(&cp, "stranger@example.com", pw).await.status, 401);
        cp.stop().await;
    }
}

/// Discovered catalog items follow their gateway's owner and visibility: a team's viewers
/// see them, others do not until the gateway is made public; their own owner cannot be
/// set apart from the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_items_follow_their_gateway() {
    let up = super::upstream::TestUpstream::with_tools(&["a", "b"]);
    let running = up.serve(0).await;
    for (backend, db) in both_backends().await {
        let cp = TestCp::start(closed(&db)).await;
        let admin = session(&cp, ADMIN, ADMIN_PW).await;
        let team = call(
            &cp,
            "POST",
            "/teams",
            Some(&admin),
            Some(json!({"name": "owners"})),
        )
        .await;
        let team = team.body["id"].as_str().unwrap().to_owned();
        let pw = "a long enough password";
        let mut tokens = std::collections::BTreeMap::new();
        for name in ["member", "outsider"] {
            let u = call(
                &cp,
                "POST",
                "/users",
                Some(&admin),
                Some(json!({"email": format!("{name}@example.com"), "password": pw})),
            )
            .await;
            assert_eq!(u.status, 201, "{}", u.body);
            if name == "member" {
                let id = u.body["id"].as_str().unwrap();
                let a = call(
                    &cp,
                    "PUT",
                    &format!("/teams/{team}/members/{id}"),
                    Some(&admin),
                    Some(json!({"role": "viewer"})),
                )
                .await;
                assert_eq!(a.status, 204);
            }
            tokens.insert(name, session(&cp, &format!("{name}@example.com"), pw).await);
        }
        let g = call(
            &cp,
            "POST",
            &format!("/gateways?team_id={team}"),
            Some(&admin),
            Some(json!({"name": "up", "url": running.url})),
        )
        .await;
        assert_eq!(g.status, 201, "{backend}: {}", g.body);
        let gid = g.body["gateway"]["id"].as_str().unwrap().to_owned();
        let tools = |who: &'static str| {
            let cp = &cp;
            let token = tokens[who].clone();
            async move {
                let a = call(cp, "GET", "/tools", Some(&token), None).await;
                assert_eq!(a.status, 200, "{}", a.body);
                let mut names: Vec<String> = a.body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect();
                names.sort();
                names
            }
        };
        assert_eq!(tools("member").await, ["up__a", "up__b"], "{backend}");
        assert_eq!(tools("outsider").await, Vec::<String>::new(), "{backend}");
        let all = call(&cp, "GET", "/tools", Some(&admin), None).await;
        let tid = all.body["items"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(
            call(
                &cp,
                "GET",
                &format!("/tools/{tid}"),
                Some(&tokens["outsider"]),
                None
            )
            .await
            .status,
            404
        );
        let o = call(
            &cp,
            "GET",
            &format!("/tools/{tid}/owner"),
            Some(&tokens["member"]),
            None,
        )
        .await;
        assert_eq!(
            (
                o.body["team_id"].as_str(),
                o.body["follows_gateway"].as_bool()
            ),
            (Some(team.as_str()), Some(true))
        );
        let a = call(
            &cp,
            "PUT",
            &format!("/tools/{tid}/owner"),
            Some(&admin),
            Some(json!({"team_id": team, "visibility": "public"})),
        )
        .await;
        assert_eq!(
            (a.status, problem_type(&a).as_str()),
            (409, "owned-by-gateway"),
            "{}",
            a.body
        );
        // The gateway made public: its tools are readable by everyone who reads tools.
        let a = call(
            &cp,
            "PUT",
            &format!("/gateways/{gid}/owner"),
            Some(&admin),
            Some(json!({"team_id": team, "visibility": "public"})),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(tools("outsider").await, ["up__a", "up__b"], "{backend}");
        assert_eq!(
            call(
                &cp,
                "GET",
                &format!("/tools/{tid}"),
                Some(&tokens["outsider"]),
                None
            )
            .await
            .status,
            200
        );
        // Reading is all: the outsider cannot change them.
        let a = call(
            &cp,
            "POST",
            &format!("/tools/{tid}/state?activate=false"),
            Some(&tokens["outsider"]),
            None,
        )
        .await;
        assert_eq!(a.status, 403, "{}", a.body);
        cp.stop().await;
    }
}
