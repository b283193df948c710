//! Login to the admin API through a real OpenID provider (`oidc-provider` from npm, run by
//! `tests/node/oidc_issuer.mjs`): the whole authorization code + PKCE flow driven without a
//! browser (redirects followed with a cookie jar through the provider's interaction), the
//! user made with its mapped teams and roles, the session working with exactly those rights;
//! each attack (bad or replayed state, replayed code, injected nonce, a response from another
//! issuer, a stolen handoff code) refused with its own error and no user made; and
//! `mcpgw login --oidc` as a process.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use super::harness::{ChildGuard, TestCp, TestDb, both_backends, free_port, settings};

/// `tests/node/oidc_issuer.mjs` on a free port.
pub struct Issuer {
    pub url: String,
    _child: ChildGuard,
}

fn node_modules() -> std::path::PathBuf {
    match std::env::var("MCPGW_NODE_MODULES") {
        Ok(p) if !p.is_empty() => p.into(),
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node/node_modules"),
    }
}

impl Issuer {
    /// Starts the provider with `config` (`redirect_uris`, `accounts`); waits for its ready
    /// line.
    pub async fn start(config: Value) -> Issuer {
        Issuer::start_on(free_port(), config).await
    }

    /// On `port` (a restart of the provider: same issuer, new signing key). Retries while
    /// the previous process still holds the port.
    pub async fn start_on(port: u16, config: Value) -> Issuer {
        for _ in 0..20 {
            if let Some(issuer) = Issuer::try_start(port, &config).await {
                return issuer;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("oidc-provider did not start on {port}");
    }

    async fn try_start(port: u16, config: &Value) -> Option<Issuer> {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node/oidc_issuer.mjs");
        let modules = node_modules();
        assert!(
            modules.join("oidc-provider").exists(),
            "{}/oidc-provider missing: run `make deps` (npm install --prefix tests/node)",
            modules.display()
        );
        let mut child = tokio::process::Command::new("node")
            .arg(&script)
            .arg(port.to_string())
            .arg(config.to_string())
            .env("MCPGW_NODE_MODULES", &modules)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed to run oidc-provider");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("oidc-provider ready ") {
                    return Some(url.to_owned());
                }
            }
            None
        })
        .await;
        let Ok(Some(url)) = ready else {
            return None;
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Issuer {
            url,
            _child: ChildGuard(Some(child)),
        })
    }

    /// A token for `resource` from the client_credentials client.
    pub async fn machine_token(&self, resource: &str, scope: &str) -> String {
        let body = format!(
            "grant_type=client_credentials&resource={}&scope={}",
            url::form_urlencoded::byte_serialize(resource.as_bytes()).collect::<String>(),
            url::form_urlencoded::byte_serialize(scope.as_bytes()).collect::<String>(),
        );
        let r = reqwest::Client::new()
            .post(format!("{}/token", self.url))
            .basic_auth("mcpgw-machine", Some("machine-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {v}"))
            .to_owned()
    }
}

/// A browser without UI: follows redirects by hand, keeps the provider's cookies, and logs
/// `account` in at the provider's interaction.
pub struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    /// GET `url` with the cookies; answers status, `Location` and body.
    pub async fn get(&mut self, url: &str) -> (u16, Option<String>, String) {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = self.http.get(url);
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        let r = req.send().await.unwrap();
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let pair = c.split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies.insert(k.trim().to_owned(), v.to_owned());
            }
        }
        let status = r.status().as_u16();
        let location = r.headers().get("location").map(|l| {
            let l = l.to_str().unwrap();
            url::Url::parse(url).unwrap().join(l).unwrap().to_string()
        });
        (status, location, r.text().await.unwrap())
    }

    /// Follows `url` (an authorization URL at `issuer`) through the provider's login as
    /// `account` until it redirects off the provider: answers that URL (the callback).
    pub async fn authorize(&mut self, issuer: &str, url: &str, account: &str) -> String {
        let mut next = url.to_owned();
        for _ in 0..10 {
            if !next.starts_with(issuer) {
                return next;
            }
            if next.starts_with(&format!("{issuer}/interaction/")) {
                next = format!("{next}?account={account}");
            }
            let (status, location, body) = self.get(&next).await;
            next =
                location.unwrap_or_else(|| panic!("{status} without a redirect at {next}: {body}"));
        }
        panic!("too many redirects at the provider");
    }
}

/// The control plane's redirect (303) to the provider for a login with `query`.
async fn start_login(cp: &TestCp, provider: &str, query: &str) -> String {
    let mut b = Browser::new();
    let (status, location, body) = b
        .get(&cp.url(&format!("/auth/oidc/{provider}/login{query}")))
        .await;
    assert_eq!(status, 303, "{body}");
    location.unwrap()
}

fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn set_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    u.to_string()
}

/// GET without a credential; status and JSON body.
async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn with_token(
    token: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn accounts() -> Value {
    json!({
        "alice": {"email": "alice@example.com", "groups": ["platform-admins"]},
        "bob": {"email": "bob@example.com", "groups": ["developers", "staff"]},
        "erin": {"email": "erin@example.com", "groups": ["developers"]},
        "frank": {"email": "frank@example.com", "groups": ["staff"]},
        "gina": {"email": "gina@example.com", "groups": ["contractors"]}
    })
}

/// The provider's configuration in the control plane, as `[oidc_providers.test]` says it.
fn provider_config(issuer: &str, callback: &str) -> mcpgw::auth::oidc::ProviderConfig {
    let mut c: mcpgw::auth::oidc::ProviderConfig = serde_json::from_value(json!({
        "issuer": issuer,
        "client_id": "mcpgw-admin",
        "redirect_uri": callback,
        "scopes": ["openid", "email", "groups"],
        "algorithms": ["RS256"],
        "group_teams": {
            "developers": [{"team": "platform", "role": "developer"}],
            "staff": [{"team": "ops", "role": "viewer"}]
        },
        "group_roles": {"platform-admins": ["platform_admin"]},
        "allowed_groups": ["platform-admins", "developers", "staff"]
    }))
    .unwrap();
    c.client_secret = Some(mcpgw::auth::oidc::ClientSecret("admin-secret".into()));
    c.validate("test").unwrap();
    c
}

/// A control plane with provider `test` (and `other`, when given) and the issuer(s).
async fn setup(db: &TestDb, other: bool) -> (TestCp, Issuer, Option<Issuer>) {
    let (cp, issuer, other, _) = setup_with_callback(db, other).await;
    (cp, issuer, other)
}

async fn setup_with_callback(db: &TestDb, other: bool) -> (TestCp, Issuer, Option<Issuer>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{api}/auth/oidc/test/callback");
    let issuer = Issuer::start(json!({"redirect_uris": [callback], "accounts": accounts()})).await;
    let other = if other {
        // Another provider that knows the same client and redirect: a mix-up's second half.
        Some(Issuer::start(json!({"redirect_uris": [callback], "accounts": accounts()})).await)
    } else {
        None
    };
    let mut s = settings(db);
    s.auth
        .oidc_providers
        .insert("test".into(), provider_config(&issuer.url, &callback));
    let cp = TestCp::start_on(s, listener).await;
    (cp, issuer, other, callback)
}

async fn user_emails(cp: &TestCp) -> Vec<String> {
    let (s, v) = cp.get("/users").await;
    assert_eq!(s, 200, "{v}");
    v["items"]
        .as_array()
        .or(v.as_array())
        .unwrap_or_else(|| panic!("users list: {v}"))
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect()
}

/// Logs `account` in; answers the callback's status and body.
async fn login(cp: &TestCp, issuer: &Issuer, account: &str) -> (u16, Value) {
    let authorize = start_login(cp, "test", "").await;
    let callback = Browser::new()
        .authorize(&issuer.url, &authorize, account)
        .await;
    get_json(&callback).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oidc_login_makes_the_user_with_its_mapped_teams_and_roles() {
    for (backend, db) in both_backends().await {
        let (cp, issuer, _, redirect_uri) = setup_with_callback(&db, false).await;
        let (s, list) = get_json(&cp.url("/auth/oidc")).await;
        assert_eq!(s, 200);
        assert_eq!(
            list["providers"][0]["issuer"],
            json!(issuer.url),
            "{backend}"
        );

        // The authorization request: code flow, PKCE S256, state and nonce.
        let authorize = start_login(&cp, "test", "").await;
        assert!(
            authorize.starts_with(&format!("{}/auth?", issuer.url)),
            "{authorize}"
        );
        assert_eq!(
            param(&authorize, "code_challenge_method").as_deref(),
            Some("S256")
        );
        for p in ["state", "nonce", "code_challenge"] {
            assert!(param(&authorize, p).is_some_and(|v| v.len() >= 43), "{p}");
        }
        assert_eq!(param(&authorize, "response_type").as_deref(), Some("code"));

        let callback = Browser::new()
            .authorize(&issuer.url, &authorize, "bob")
            .await;
        assert_eq!(
            param(&callback, "iss").as_deref(),
            Some(issuer.url.as_str())
        );
        let (s, session) = get_json(&callback).await;
        assert_eq!(s, 200, "{backend}: {session}");
        let bob = session["access_token"].as_str().unwrap().to_owned();
        assert_eq!(session["user"]["email"], "bob@example.com");
        let bob_id = session["user"]["id"].as_str().unwrap().to_owned();

        // Bob's roles: his personal team, developer in `platform`, viewer in `ops`.
        let (s, me) = with_token(&bob, reqwest::Method::GET, &cp.url("/auth/me"), None).await;
        assert_eq!(s, 200, "{me}");
        let mut roles: Vec<(String, String)> = me["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["scope"].as_str().unwrap().to_owned(),
                    r["role"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        roles.sort();
        assert_eq!(
            roles,
            [
                ("personal".to_owned(), "team_admin".to_owned()),
                ("team".to_owned(), "developer".to_owned()),
                ("team".to_owned(), "viewer".to_owned()),
            ],
            "{backend}: {me}"
        );
        let (_, teams) = cp.get("/teams").await;
        let team_id = |name: &str| {
            teams["items"]
                .as_array()
                .or(teams.as_array())
                .unwrap()
                .iter()
                .find(|t| t["name"] == name)
                .unwrap_or_else(|| panic!("team {name}: {teams}"))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let (platform, ops) = (team_id("platform"), team_id("ops"));
        // What the mapping allows, and no more.
        let (s, _) = with_token(
            &bob,
            reqwest::Method::GET,
            &cp.url(&format!("/teams/{platform}/members")),
            None,
        )
        .await;
        assert_eq!(s, 200, "a developer reads its team");
        let (s, _) = with_token(
            &bob,
            reqwest::Method::PUT,
            &cp.url(&format!("/teams/{ops}")),
            Some(json!({"name": "ops2"})),
        )
        .await;
        assert_eq!(s, 403, "a viewer does not change its team");
        let (s, _) = with_token(&bob, reqwest::Method::GET, &cp.url("/users"), None).await;
        assert_eq!(s, 403, "no admin.users");

        // Alice is mapped to platform_admin.
        let (s, session) = login(&cp, &issuer, "alice").await;
        assert_eq!(s, 200, "{session}");
        let alice = session["access_token"].as_str().unwrap().to_owned();
        let (s, users) = with_token(&alice, reqwest::Method::GET, &cp.url("/users"), None).await;
        assert_eq!(s, 200, "{users}");
        assert!(users.to_string().contains("bob@example.com"));

        // A second login is the same user, not a new one, with the same rights.
        let before = user_emails(&cp).await;
        let (s, again) = login(&cp, &issuer, "bob").await;
        assert_eq!(s, 200, "{again}");
        assert_eq!(again["user"]["id"], json!(bob_id));
        assert_eq!(user_emails(&cp).await, before, "{backend}");

        // A membership granted by hand is the admin's, not the mapping's: a login keeps it.
        let (s, v) = cp
            .put(
                &format!("/teams/{ops}/members/{bob_id}"),
                json!({"role": "team_admin"}),
            )
            .await;
        assert!(s == 200 || s == 204, "{v}");
        let (s, _) = login(&cp, &issuer, "bob").await;
        assert_eq!(s, 200);
        let (_, members) = cp.get(&format!("/teams/{ops}/members")).await;
        assert!(members.to_string().contains("team_admin"), "{members}");

        // Bob leaves `developers` at the provider, which restarts with a new signing key
        // (the control plane fetches the JWKS again for the unknown kid, at most every
        // 10 s): the mapping takes back `platform`, and leaves the hand-made `ops`.
        let port: u16 = issuer.url.rsplit(':').next().unwrap().parse().unwrap();
        drop(issuer);
        let mut changed = accounts();
        changed["bob"]["groups"] = json!(["staff"]);
        let issuer = Issuer::start_on(
            port,
            json!({"redirect_uris": [redirect_uri], "accounts": changed}),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        let (s, v) = login(&cp, &issuer, "bob").await;
        assert_eq!(s, 200, "{backend}: after the key rotation: {v}");
        let (_, members) = cp.get(&format!("/teams/{platform}/members")).await;
        assert!(
            !members.to_string().contains(&bob_id),
            "{backend}: taken back: {members}"
        );
        let (_, members) = cp.get(&format!("/teams/{ops}/members")).await;
        assert!(
            members.to_string().contains(&bob_id) && members.to_string().contains("team_admin"),
            "{backend}: kept: {members}"
        );

        // Not in any allowed group: refused, and no user.
        let (s, v) = login(&cp, &issuer, "gina").await;
        assert_eq!(s, 403, "{v}");
        assert_eq!(v["type"], "urn:mcpgw:problem:oidc-login-not-allowed");
        assert!(
            !user_emails(&cp)
                .await
                .contains(&"gina@example.com".to_owned())
        );
        cp.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_attacks_are_refused_precisely_and_make_no_user() {
    let db = TestDb::sqlite();
    let (cp, issuer, other) = setup(&db, true).await;
    let other = other.unwrap();
    let users = user_emails(&cp).await;
    let problem = |v: &Value| v["type"].as_str().unwrap_or_default().to_owned();

    // No state, or one never issued.
    let (s, v) = get_json(&cp.url("/auth/oidc/test/callback?code=abc")).await;
    assert_eq!(
        (s, problem(&v).as_str()),
        (400, "urn:mcpgw:problem:oidc-state-invalid")
    );
    let (s, v) = get_json(&cp.url("/auth/oidc/test/callback?code=abc&state=forged")).await;
    assert_eq!(
        (s, problem(&v).as_str()),
        (400, "urn:mcpgw:problem:oidc-state-invalid")
    );

    // An unknown provider; a return_to off loopback; a return_to without a challenge.
    let (s, v) = get_json(&cp.url("/auth/oidc/nope/login")).await;
    assert_eq!(
        (s, problem(&v).as_str()),
        (404, "urn:mcpgw:problem:unknown-oidc-provider")
    );
    let challenge = mcpgw::auth::oidc::pkce_challenge(&"v".repeat(50));
    let (s, v) = get_json(&cp.url(&format!(
        "/auth/oidc/test/login?return_to=http://evil.example.com:80/cb&code_challenge={challenge}"
    )))
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, _) = get_json(&cp.url("/auth/oidc/test/login?return_to=http://127.0.0.1:9/cb")).await;
    assert_eq!(s, 422);

    // The provider refuses (the user cancelled): the state is used up either way.
    let authorize = start_login(&cp, "test", "").await;
    let state = param(&authorize, "state").unwrap();
    let (s, v) = get_json(&cp.url(&format!(
        "/auth/oidc/test/callback?error=access_denied&error_description=cancelled&state={state}"
    )))
    .await;
    assert_eq!(
        (s, problem(&v).as_str()),
        (401, "urn:mcpgw:problem:oidc-login-denied"),
        "{v}"
    );

    // An injected nonce: the ID token carries the attacker's, not the login's.
    let authorize = start_login(&cp, "test", "").await;
    let injected = set_param(
        &authorize,
        "nonce",
        Some("attacker-chosen-nonce-aaaaaaaaaaaaaaaaaaaaaaaa"),
    );
    let callback = Browser::new()
        .authorize(&issuer.url, &injected, "erin")
        .await;
    let (s, v) = get_json(&callback).await;
    assert_eq!(
        (s, problem(&v).as_str()),
        (401, "urn:mcpgw:problem:oidc-nonce-mismatch"),
        "{v}"
    );

    // The same callback again: the state is used up.
    let (s, v) = get_json(&callback).await;
    assert_eq!(
        (s, problem(&v).as_str()),
        (400, "urn:mcpgw:problem:oidc-state-invalid")
    );

    // A replayed code: a good login's code with a fresh state (whose PKCE verifier differs,
    // and the code is spent): the provider refuses it.
    let authorize = start_login(&cp, "test", "").await;
    let callback = Browser::new()
        .authorize(&issuer.url, &authorize, "frank")
        .await;
    let (s, v) = get_json(&callback).await;
    assert_eq!(s, 200, "frank logs in: {v}");
    let fresh = start_login(&cp, "test", "").await;
    let replay = set_param(&callback, "state", param(&fresh, "state").as_deref());
    let (s, v) = get_json(&replay).await;
    assert_eq!(
        (s, problem(&v).as_str()),
        (401, "urn:mcpgw:problem:oidc-code-refused"),
        "{v}"
    );

    // A response from another issuer (mix-up): the login is sent to another provider that
    // knows the same client; its `iss`, or its missing `iss`, gives it away.
    for strip_iss in [false, true] {
        let authorize = start_login(&cp, "test", "").await;
        let diverted = authorize.replacen(&issuer.url, &other.url, 1);
        let mut callback = Browser::new()
            .authorize(&other.url, &diverted, "erin")
            .await;
        assert_eq!(param(&callback, "iss").as_deref(), Some(other.url.as_str()));
        if strip_iss {
            callback = set_param(&callback, "iss", None);
        }
        let (s, v) = get_json(&callback).await;
        assert_eq!(
            (s, problem(&v).as_str()),
            (400, "urn:mcpgw:problem:oidc-issuer-mismatch"),
            "{v}"
        );
    }
    let mut expected = users.clone();
    expected.push("frank@example.com".into());
    expected.sort();
    let mut now = user_emails(&cp).await;
    now.sort();
    assert_eq!(now, expected, "only frank's good login made a user");

    // A password user's email: not taken over by the provider's first login.
    let (s, v) = cp
        .post(
            "/users",
            json!({"email": "erin@example.com", "password": "a long enough password 1"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = login(&cp, &issuer, "erin").await;
    assert_eq!(
        (s, problem(&v).as_str()),
        (409, "urn:mcpgw:problem:oidc-account-conflict"),
        "{v}"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_handoff_needs_the_cli_verifier_and_works_once() {
    let db = TestDb::sqlite();
    let (cp, issuer, _) = setup(&db, false).await;
    let verifier = "x".repeat(64);
    let challenge = mcpgw::auth::oidc::pkce_challenge(&verifier);
    // A loopback return_to that nobody listens on: the test reads the redirect itself.
    let return_to = format!("http://127.0.0.1:{}/callback", free_port());
    let authorize = start_login(
        &cp,
        "test",
        &format!("?return_to={return_to}&code_challenge={challenge}&code_challenge_method=S256"),
    )
    .await;
    let callback = Browser::new()
        .authorize(&issuer.url, &authorize, "bob")
        .await;
    let mut b = Browser::new();
    let (s, to, body) = b.get(&callback).await;
    assert_eq!(s, 303, "{body}");
    let to = to.unwrap();
    assert!(to.starts_with(&return_to), "{to}");
    assert!(!to.contains("eyJ"), "no token in the URL: {to}");
    let code = param(&to, "code").unwrap();
    let exchange = |code: String, verifier: String| {
        let url = cp.url("/auth/oidc/token");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&json!({"code": code, "code_verifier": verifier}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Another verifier: refused, and the code is spent (one try).
    let (s, v) = exchange(code.clone(), "y".repeat(64)).await;
    assert_eq!(
        (s, v["type"].as_str().unwrap()),
        (400, "urn:mcpgw:problem:oidc-handoff-invalid")
    );
    let (s, _) = exchange(code, verifier.clone()).await;
    assert_eq!(s, 400, "spent");

    // A fresh login: the right verifier gets the session, once.
    let authorize = start_login(
        &cp,
        "test",
        &format!("?return_to={return_to}&code_challenge={challenge}"),
    )
    .await;
    let callback = Browser::new()
        .authorize(&issuer.url, &authorize, "bob")
        .await;
    let (_, to, _) = Browser::new().get(&callback).await;
    let code = param(&to.unwrap(), "code").unwrap();
    let (s, v) = exchange(code.clone(), verifier.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user"]["email"], "bob@example.com");
    let (s, _) = exchange(code, verifier).await;
    assert_eq!(s, 400, "once");

    // A failed login tells the CLI on its port.
    let authorize = start_login(
        &cp,
        "test",
        &format!("?return_to={return_to}&code_challenge={challenge}"),
    )
    .await;
    let state = param(&authorize, "state").unwrap();
    let (s, to, _) = Browser::new()
        .get(&cp.url(&format!(
            "/auth/oidc/test/callback?error=access_denied&state={state}"
        )))
        .await;
    assert_eq!(s, 303);
    assert_eq!(
        param(&to.unwrap(), "error").as_deref(),
        Some("oidc-login-denied")
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcpgw_login_oidc_stores_the_session_like_a_password_login() {
    let db = TestDb::sqlite();
    let (cp, issuer, _) = setup(&db, false).await;
    let config = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcpgw"))
        .args(["login", "--oidc", "test", "--wait", "60"])
        .env("MCPGW_API_URL", cp.url(""))
        .env("MCPGW_CONFIG_DIR", config.path())
        .env_remove("MCPGW_TOKEN")
        .env_remove("MCPGW_TOKEN_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("http") {
                return line;
            }
        }
        panic!("the CLI printed no URL");
    })
    .await
    .unwrap();
    assert!(url.contains("/auth/oidc/test/login?"), "{url}");
    let mut b = Browser::new();
    let (s, authorize, body) = b.get(&url).await;
    assert_eq!(s, 303, "{body}");
    let callback = b.authorize(&issuer.url, &authorize.unwrap(), "bob").await;
    let (s, to, body) = b.get(&callback).await;
    assert_eq!(s, 303, "{body}");
    // The browser lands on the CLI's loopback port.
    let (s, _, page) = b.get(&to.unwrap()).await;
    assert_eq!(s, 200);
    assert!(page.contains("Logged in"), "{page}");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
    }
    assert!(status.success(), "{rest}");
    assert!(rest.contains("as bob@example.com"), "{rest}");
    let file = config.path().join("credentials.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = stored[cp.url("").trim_end_matches('/')]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{stored}"))
        .to_owned();
    let (s, me) = with_token(&token, reqwest::Method::GET, &cp.url("/auth/me"), None).await;
    assert_eq!(s, 200);
    assert_eq!(me["user"]["email"], "bob@example.com");
    cp.stop().await;
}

/// The edge accepts a real provider's access token: a virtual server whose snapshot trusts
/// the provider as an issuer, its keys fetched by the control plane's issuer-key fetcher
/// (discovery + JWKS of the running provider), served to a real Envoy over ADS. A
/// client_credentials token for the server's resource (RFC 8707: `aud` is the resource)
/// calls a tool; no token gets 401 naming the resource metadata; a token for another
/// resource gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_accepts_a_real_providers_access_token() {
    use mcpgw::crypto::SecretBox;
    use mcpgw::edge_config::{
        EdgeSettings, EdgeUpstream, EdgeUpstreams, IssuerKeys, LISTENER, key_client, resources,
        upstream_access,
    };
    use mcpgw_core::snapshot::Snapshot;
    use std::sync::Arc;

    // The server's resource is its URL at the Envoy (the Python SDK asks for a token for the
    // URL it calls), so the listener's port is chosen first.
    let envoy_port = free_port();
    let resource = format!("http://127.0.0.1:{envoy_port}/servers/team/mcp");
    let issuer = Issuer::start(json!({})).await;
    let upstream = super::upstream::TestUpstream::with_tools(&["echo", "whoami"]);
    let running = upstream.serve_stateless(0).await;
    let cluster = mcpgw::snapshot::cluster_name("g1");
    let tool = |n: &str| {
        json!({"name": format!("g1__{n}"), "upstream": "g1", "upstream_name": n,
               "item": {"name": format!("g1__{n}"), "inputSchema": {"type": "object"}}})
    };
    let mut snapshot = Snapshot::from_json(
        json!({
            "version": "oidc-edge-1",
            "auth": {"issuers": {"idp": {"issuer": issuer.url, "algorithms": ["RS256"]}}},
            "upstreams": {"g1": {"cluster": cluster, "path": "/mcp"}},
            "servers": {"team": {
                "name": "Team",
                "tools": [tool("echo"), tool("whoami")],
                "auth": {"resource": resource,
                         "rules": [{"name": "echo-only", "when": "request.name == 'g1__echo'"}]}
            }}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    // The control plane's fetcher, against the real provider.
    let keys = IssuerKeys::new();
    let failures = keys.refresh(&key_client().unwrap(), &snapshot.auth).await;
    assert!(failures.is_empty(), "{failures:?}");
    keys.apply(&mut snapshot);
    let jwks = snapshot.auth.issuers["idp"]
        .jwks
        .as_ref()
        .unwrap()
        .get()
        .to_owned();
    assert!(jwks.contains("\"RSA\""), "{jwks}");
    snapshot.validate().unwrap();

    let mut upstreams = EdgeUpstreams::new();
    let access = upstream_access(
        &super::edge_identity::gateway("g1", &running.url),
        None,
        None,
        &SecretBox::dev(),
    )
    .unwrap();
    upstreams.insert(
        "g1".into(),
        EdgeUpstream {
            access,
            addresses: vec![running.addr.ip()],
            token_addresses: Vec::new(),
        },
    );
    let settings = EdgeSettings {
        envoy_listen: format!("127.0.0.1:{envoy_port}").parse().unwrap(),
        filter_wasm: super::envoy::filter_wasm_path(),
        upstream_ca_file: None,
        ..EdgeSettings::default()
    };
    let set = resources(&snapshot, &upstreams, &settings).unwrap();
    let (mut envoy, feed) = super::envoy::ads_edge(
        Arc::new(set),
        "mcpgw-oidc-edge",
        35_000 + std::process::id() % 10_000,
    )
    .await;
    let addr = envoy.listener(LISTENER).await;
    let url = format!("http://{addr}/servers/team/mcp");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let call = |token: Option<String>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut req = http
                .post(&url)
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
            // 0: not connected (the listener may still be settling on a loaded machine).
            let Ok(r) = req.send().await else {
                return (0, String::new(), String::new());
            };
            let status = r.status().as_u16();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, challenge, r.text().await.unwrap())
        }
    };
    let mut tries = 0;
    loop {
        let (status, challenge, _) = call(None).await;
        if status == 401 {
            assert!(challenge.contains("resource_metadata="), "{challenge}");
            break;
        }
        tries += 1;
        assert!(
            tries < 300,
            "no 401 from the filter: {status}\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = issuer.machine_token(&resource, "tools.execute").await;
    let (status, _, body) = call(Some(token)).await;
    assert_eq!(status, 200, "{body}\n{}", envoy.log());
    assert!(body.contains("result"), "{body}");
    let elsewhere = issuer
        .machine_token(
            &format!("http://127.0.0.1:{envoy_port}/servers/other/mcp"),
            "tools.execute",
        )
        .await;
    let (status, challenge, body) = call(Some(elsewhere)).await;
    assert_eq!(status, 401, "a token for another resource: {body}");
    assert!(challenge.contains("invalid_token"), "{challenge}");

    // The official Python SDK finds its way alone: 401 → resource metadata → the provider's
    // metadata → a client_credentials token for the resource → the tool.
    let python = mcpgw_harness::Artifacts::from_env()
        .python()
        .unwrap()
        .to_owned();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg(super::envoy::repo_path("tests/py/oauth_client_flow.py"))
            .args([
                &url,
                &issuer.url,
                "mcpgw-machine",
                "machine-secret",
                "tools.execute",
                "g1__echo",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "oauth_client_flow.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        envoy.log()
    );
    let flow: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(flow["is_error"], false, "{flow}");
    let exchanges = flow["exchanges"].as_array().unwrap();
    let seen = |f: &dyn Fn(&Value) -> bool| exchanges.iter().any(f);
    assert!(
        seen(&|e| e["status"] == 401 && e["url"] == json!(url)),
        "{flow}"
    );
    assert!(
        seen(&|e| e["url"]
            .as_str()
            .unwrap()
            .contains("/.well-known/oauth-protected-resource")
            && e["status"] == 200),
        "{flow}"
    );
    assert!(
        seen(&|e| e["url"] == json!(format!("{}/token", issuer.url)) && e["status"] == 200),
        "{flow}"
    );
    // The upstream never saw a client's token.
    assert!(upstream.auth_seen().iter().all(String::is_empty));
    drop(feed);
}
